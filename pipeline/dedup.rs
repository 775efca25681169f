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
}

/// Every id seen, per stream and event day (days since 1970-01-01).
#[derive(Default)]
pub struct DedupMemory {
    pub streams: BTreeMap<String, BTreeMap<i32, Day>>,
}

impl DedupMemory {
    /// Record an event; `false` if its id was seen before (a duplicate).
    pub fn insert(&mut self, stream: &str, day: i32, id: u128) -> bool {
        let days = match self.streams.get_mut(stream) {
            Some(days) => days,
            None => self.streams.entry(stream.to_string()).or_default(),
        };
        let entry = days.entry(day).or_insert_with(|| Day {
            loaded: true, // a day nobody persisted has nothing to load
            ..Default::default()
        });
        debug_assert!(entry.loaded, "day {day} of {stream} inserted before it was loaded");
        let new = entry.ids.insert(id);
        if new {
            entry.added.push(id);
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
