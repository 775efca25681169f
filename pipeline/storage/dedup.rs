//! The de-duplication memory: which `event_id`s have been counted, per stream and event day.
//!
//! Owns: the in-memory sets and the rule of what is a duplicate. An event is identified by a
//! 128-bit SipHash-1-3 of its `event_id`; the same id is the same event (input contract),
//! so a re-sent copy has the same `event_time` and is looked up under its own day only.
//! Must not: do I/O. `state` persists the sets and loads the days a batch touches.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::hash::{BuildHasherDefault, Hasher};

use arrow::array::{Array, StringArray};
use siphasher::sip128::SipHasher13;

use crate::storage::units::Bounded;

/// `dedup_days`: how many event days back (the as-of day counted) the memory reaches. It
/// must cover the retention of every state table that sums (checked when a run prepares).
pub const DEDUP_DAYS: Bounded<u32> = Bounded {
    default: 400,
    min: 1,
    max: 36_500,
};

/// Hashes of the event ids of one stream and day.
pub type SeenIds = HashSet<u128, BuildHasherDefault<PrehashedU128>>;

/// Keys of [`SeenIds`] are already uniform 128-bit hashes: use their low bits as is.
#[derive(Default)]
pub struct PrehashedU128(u64);

impl Hasher for PrehashedU128 {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // Only reached through `write_u128`'s default, which passes the 16 bytes of the key.
        let mut low = [0u8; 8];
        low.copy_from_slice(&bytes[..8]);
        self.0 = u64::from_le_bytes(low);
    }
    fn write_u128(&mut self, key: u128) {
        self.0 = key as u64;
    }
}

/// SipHash-1-3 (128-bit) of each id: stable and keyed, so two different ids collide with
/// probability ~2^-128 per pair.
pub fn event_id_hashes(ids: &StringArray) -> Vec<u128> {
    let hasher = SipHasher13::new_with_keys(0x7461_6766_6c6f_7700, 0x6576_656e_745f_6964);
    (0..ids.len())
        .map(|i| hasher.hash(ids.value(i).as_bytes()).as_u128())
        .collect()
}

/// The ids of one stream and day: those already persisted and those added since.
#[derive(Default)]
pub struct Day {
    pub ids: SeenIds,
    /// Added since the last time the state was saved (written as a new segment).
    pub added: Vec<u128>,
    /// The persisted segments of this day have been read into `ids`.
    pub loaded: bool,
    /// Names of the persisted segments (opaque here; `state` reads and writes them).
    pub segments: Vec<String>,
    /// The ids in each of `segments`, where known (once the day is loaded or written).
    pub sizes: Vec<usize>,
}

/// Every id seen, per stream and event day (days since 1970-01-01).
#[derive(Default)]
pub struct DedupMemory {
    pub streams: BTreeMap<String, BTreeMap<i32, Day>>,
}

impl DedupMemory {
    /// Record the events of a batch of one stream, the event with id hash `ids[i]` on day
    /// `days[i]`; for each, `false` if its id was seen before (a duplicate, within the batch
    /// too).
    pub fn insert_all(&mut self, stream: &str, days: &[i32], ids: &[u128]) -> Vec<bool> {
        assert_eq!(days.len(), ids.len(), "one day per id");
        let stream_days = match self.streams.get_mut(stream) {
            Some(days) => days,
            None => self.streams.entry(stream.to_string()).or_default(),
        };
        // Events come mostly in time order: one day lookup per run of equal days.
        let mut runs: Vec<(i32, std::ops::Range<usize>)> = Vec::new();
        for (i, &day) in days.iter().enumerate() {
            match runs.last_mut() {
                Some((last, range)) if *last == day => range.end = i + 1,
                _ => runs.push((day, i..i + 1)),
            }
        }
        // Room for the whole batch first: each day's set grows once, not by doubling.
        let mut counts: BTreeMap<i32, usize> = BTreeMap::new();
        for (day, range) in &runs {
            *counts.entry(*day).or_default() += range.len();
        }
        for (day, count) in counts {
            let entry = stream_days.entry(day).or_insert_with(|| Day {
                loaded: true, // a day nobody persisted has nothing to load
                ..Default::default()
            });
            debug_assert!(entry.loaded, "day {day} of {stream} inserted before it was loaded");
            entry.ids.reserve(count);
            entry.added.reserve(count);
        }
        let mut new = Vec::with_capacity(ids.len());
        for (day, range) in runs {
            let entry = stream_days.get_mut(&day).expect("made room above");
            for &id in &ids[range] {
                let first = entry.ids.insert(id);
                if first {
                    entry.added.push(id);
                }
                new.push(first);
            }
        }
        new
    }

    /// (stream, day) pairs that have persisted segments not read yet, among `wanted`.
    pub fn unloaded(&self, wanted: &BTreeSet<(String, i32)>) -> Vec<(String, i32)> {
        wanted
            .iter()
            .filter(|(stream, day)| {
                self.streams
                    .get(stream)
                    .and_then(|days| days.get(day))
                    .is_some_and(|d| !d.loaded)
            })
            .cloned()
            .collect()
    }

    /// Forget days before `first_day` (outside the memory's reach).
    pub fn forget_before(&mut self, first_day: i32) {
        for days in self.streams.values_mut() {
            days.retain(|day, _| *day >= first_day);
        }
    }

    pub fn ids(&self) -> usize {
        self.streams
            .values()
            .flat_map(|d| d.values())
            .map(|d| d.ids.len())
            .sum()
    }
}
