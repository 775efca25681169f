//! Customers by number: each customer id a `follow` session meets gets a dense number once,
//! so a set of customers is a bitmap and selecting a table's rows of some customers is a
//! bit test per row instead of hashing every row's id. A micro-batch selects the rows of
//! the customers it changed from tables of every customer; with numbers, that selection
//! costs about a nanosecond a row, which keeps the part of a batch that grows with the
//! customer base small beside the part that grows with what changed.
//!
//! A column's numbers are kept as long as the column is (the state's kept segments and the
//! previous outputs are numbered once per session, not once per batch); rows selected from
//! a numbered column get their numbers by the same selection, without hashing.
//!
//! The values of a column that links customers (`linked_by`, e.g. `device_id`) are numbered
//! the same way, in a numbering of their own ([`Numbering::linked`]), so following links
//! is bit tests too.
//!
//! Owns: the numbering (in memory only, never stored) and row selection by customer.
//! Must not: decide which customers changed (the fold and the plan do).

use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::sync::{Arc, Mutex};

use arrow::array::{Array, ArrayRef, BooleanArray, StringArray, UInt32Array};
use arrow::buffer::BooleanBuffer;
use arrow::compute::{filter, filter_record_batch};
use arrow::record_batch::RecordBatch;
use foldhash::fast::RandomState;

use crate::storage::masked::{Copier, MaskedRows};
#[cfg(test)]
use crate::storage::rows::split_batch;
use crate::storage::rows::text_column;

/// The column that names a row's customer.
pub const CUSTOMER_ID: &str = "customer_id";

/// The `customer_id` column of `batch` as text, if it has one.
pub fn customer_ids(batch: &RecordBatch) -> Option<StringArray> {
    text_column(batch, CUSTOMER_ID)
}

/// Ids [`Inner::recent`] holds before it starts again (~4 MiB: a batch's customers at 1M).
const RECENT_IDS: usize = 1 << 17;

/// The number of a null value: in no set.
pub const NONE: u32 = u32::MAX;

/// Numbers for customer ids (or another column's values), and the numbers of the columns
/// seen so far. Shared by the jobs of a batch (they number their rows side by side) and
/// kept across batches.
pub struct Numbering {
    /// The column whose values are numbered.
    column: Box<str>,
    inner: Mutex<Inner>,
    /// The numberings of link columns, by column.
    links: Mutex<HashMap<String, Arc<Numbering>, RandomState>>,
}

impl Default for Numbering {
    /// The numbering of customers.
    fn default() -> Self {
        Numbering::of(CUSTOMER_ID)
    }
}

#[derive(Default)]
struct Inner {
    /// By a 64-bit hash of the id, not the id: a lookup compares two integers instead of
    /// following a pointer to compare strings, and an entry is 16 bytes, so more of the
    /// table stays in the CPU's caches (measured at 1M customers: most of a lookup is
    /// waiting for memory). Two ids with one hash (odds about 3e-6 in a session of 10M
    /// ids) would share a number; every selection goes by number, so both would be
    /// evaluated when either changes: more work, never a wrong row.
    ids: HashMap<u64, u32, KeyIsHash>,
    /// The ids numbered lately, by the same key: a micro-batch meets the same few
    /// customers again and again (in its events, its state rows, every job's fresh rows),
    /// and this table, small enough to stay in the CPU's cache, is asked before `ids`.
    recent: HashMap<u64, u32, KeyIsHash>,
    /// By the address of a `customer_id` column: the column (kept alive, so the address
    /// names it alone) and its rows' numbers.
    columns: HashMap<usize, (ArrayRef, UInt32Array), RandomState>,
}

/// The hash of an id (fixed seeds: numbers live in memory only, within one process).
fn id_key(id: &str) -> u64 {
    foldhash::quality::FixedState::with_seed(0x7461_6766_6c6f_7700).hash_one(id)
}

/// The tables of [`Inner`] are keyed by a hash already: their own hash is the key.
#[derive(Default, Clone, Copy)]
struct KeyIsHash;

impl std::hash::BuildHasher for KeyIsHash {
    type Hasher = KeyHasher;
    fn build_hasher(&self) -> KeyHasher {
        KeyHasher(0)
    }
}

#[derive(Default)]
struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, _: &[u8]) {
        unreachable!("keys are u64 hashes")
    }
    fn write_u64(&mut self, key: u64) {
        self.0 = key;
    }
}

/// A set of customers (or of a link's values) as one bit per number.
#[derive(Debug, Clone, Default)]
pub struct CustomerBits {
    words: Vec<u64>,
    len: usize,
}

impl CustomerBits {
    pub fn insert(&mut self, number: u32) {
        if number == NONE {
            return;
        }
        let (word, bit) = (number as usize / 64, number % 64);
        if word >= self.words.len() {
            self.words.resize(word + 1, 0);
        }
        if self.words[word] & (1 << bit) == 0 {
            self.words[word] |= 1 << bit;
            self.len += 1;
        }
    }

    pub fn contains(&self, number: u32) -> bool {
        self.words
            .get(number as usize / 64)
            .is_some_and(|w| w & (1 << (number % 64)) != 0)
    }

    /// Customers in the set.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Add every customer of `other`.
    pub fn add(&mut self, other: &CustomerBits) {
        if other.words.len() > self.words.len() {
            self.words.resize(other.words.len(), 0);
        }
        for (word, theirs) in self.words.iter_mut().zip(&other.words) {
            *word |= theirs;
        }
        self.len = self.words.iter().map(|w| w.count_ones() as usize).sum();
    }
}

impl Numbering {
    /// A numbering of the values of `column`.
    pub fn of(column: &str) -> Self {
        Numbering {
            column: column.into(),
            inner: Mutex::default(),
            links: Mutex::default(),
        }
    }

    /// The session's numbering of the values of a link column (kept as this one is).
    pub fn linked(&self, column: &str) -> Arc<Numbering> {
        let mut links = self.links.lock().expect("numbering lock");
        links
            .entry(column.to_string())
            .or_insert_with(|| Arc::new(Numbering::of(column)))
            .clone()
    }

    /// The customers with a row in `batches` (each batch names its customers).
    pub fn customers_in<'a>(&self, batches: impl IntoIterator<Item = &'a RecordBatch>) -> CustomerBits {
        let mut bits = CustomerBits::default();
        for batch in batches {
            for &number in self.numbers(batch).values().iter() {
                bits.insert(number);
            }
        }
        bits
    }

    /// The rows of `batches` whose customer is in `set`, and the others (empty batches
    /// left out), both numbered by the split; a side with every row of a batch is the
    /// batch itself. The tests' view of a selection and its complement.
    #[cfg(test)]
    pub fn split(&self, batches: &[RecordBatch], set: &CustomerBits) -> (Vec<RecordBatch>, Vec<RecordBatch>) {
        let (mut inside, mut outside) = (Vec::new(), Vec::new());
        for batch in batches.iter().filter(|b| b.num_rows() > 0) {
            let numbers = self.numbers(batch);
            let mask = members(&numbers, set);
            match mask.true_count() {
                n if n == 0 || n == batch.num_rows() => {
                    let (rows_in, rows_out) = split_batch(batch, &mask);
                    inside.extend(rows_in);
                    outside.extend(rows_out);
                }
                _ => {
                    let others = arrow::compute::not(&mask).expect("a mask");
                    inside.push(self.select_rows(batch, &numbers, &mask));
                    outside.push(self.select_rows(batch, &numbers, &others));
                }
            }
        }
        (inside, outside)
    }

    /// The rows of `batches` whose customer is in `set`.
    pub fn select(&self, batches: &[RecordBatch], set: &CustomerBits) -> Vec<RecordBatch> {
        let mut inside = Vec::new();
        for batch in batches.iter().filter(|b| b.num_rows() > 0) {
            let numbers = self.numbers(batch);
            let mask = members(&numbers, set);
            match mask.true_count() {
                0 => {}
                n if n == batch.num_rows() => inside.push(batch.clone()),
                _ => inside.push(self.select_rows(batch, &numbers, &mask)),
            }
        }
        inside
    }

    /// Numbered `batches` (at least one) as one batch, whose numbers are recorded.
    pub fn concat(&self, batches: &[RecordBatch]) -> RecordBatch {
        let numbers: Vec<UInt32Array> = batches.iter().map(|b| self.numbers(b)).collect();
        let rows = arrow::compute::concat_batches(&batches[0].schema(), batches).expect("batches of one schema");
        let refs: Vec<&dyn Array> = numbers.iter().map(|n| n as &dyn Array).collect();
        let numbers = arrow::compute::concat(&refs).expect("number arrays");
        let numbers = numbers.as_any().downcast_ref::<UInt32Array>().expect("numbers").clone();
        self.record(&rows, numbers);
        rows
    }

    /// The rows of a numbered `batch` that `mask` selects, their numbers recorded.
    /// The numbers of the links' columns go with the selection too, where they are known
    /// (a fold splitting `device_days` by customer keeps its device numbers).
    fn select_rows(&self, batch: &RecordBatch, numbers: &UInt32Array, mask: &BooleanArray) -> RecordBatch {
        let selected = filter_record_batch(batch, mask).expect("a mask of the batch's length");
        self.record(&selected, selected_numbers(numbers, mask));
        for link in self.links.lock().expect("numbering lock").values() {
            link.carry(batch, &selected, mask);
        }
        selected
    }

    /// Record `numbers` as those of `batch`'s numbered column.
    fn record(&self, batch: &RecordBatch, numbers: UInt32Array) {
        let column = batch.column_by_name(&self.column).expect("checked").clone();
        let mut inner = self.inner.lock().expect("numbering lock");
        inner.columns.insert(address(&column), (column, numbers));
    }

    /// For `selected`, the rows of `batch` that `mask` selects, record the numbers of
    /// `batch`'s rows if they are known.
    fn carry(&self, batch: &RecordBatch, selected: &RecordBatch, mask: &BooleanArray) {
        let Some(column) = batch.column_by_name(&self.column) else {
            return;
        };
        let known = self
            .inner
            .lock()
            .expect("numbering lock")
            .columns
            .get(&address(column))
            .map(|(_, n)| n.clone());
        if let Some(numbers) = known {
            self.record(selected, selected_numbers(&numbers, mask));
        }
    }

    /// The numbers of `batch`'s customers (or values), row by row, [`NONE`] for a null
    /// (hashing its values the first time the column is met).
    pub fn numbers(&self, batch: &RecordBatch) -> UInt32Array {
        let column = batch
            .column_by_name(&self.column)
            .expect("checked: the table has the numbered column")
            .clone();
        let mut inner = self.inner.lock().expect("numbering lock");
        if let Some((_, numbers)) = inner.columns.get(&address(&column)) {
            return numbers.clone();
        }
        tracing::debug!(
            column = %self.column,
            rows = batch.num_rows(),
            of = ?batch.schema().fields().iter().map(|f| f.name().as_str()).collect::<Vec<_>>(),
            "numbering a column met for the first time"
        );
        let values = text_column(batch, &self.column).expect("a numbered column casts to text");
        // Rows of one customer often come together (a state table's days, a fold's merged
        // rows): a repeated id reuses the number before it instead of hashing again.
        let mut last: Option<(&str, u32)> = None;
        let numbers: UInt32Array = values
            .iter()
            .map(|value| {
                let number = match (value, last) {
                    (None, _) => NONE,
                    (Some(value), Some((previous, number))) if value == previous => number,
                    (Some(value), _) => {
                        let number = inner.number(value);
                        last = Some((value, number));
                        number
                    }
                };
                Some(number)
            })
            .collect();
        inner.columns.insert(address(&column), (column, numbers.clone()));
        numbers
    }

    /// Forget the numbers of columns nobody else holds any more (the ids keep theirs).
    pub fn forget_dropped_columns(&self) {
        let mut inner = self.inner.lock().expect("numbering lock");
        inner.columns.retain(|_, (column, _)| Arc::strong_count(column) > 1);
        drop(inner);
        for link in self.links.lock().expect("numbering lock").values() {
            link.forget_dropped_columns();
        }
    }

    /// The numbers `to` gives the rows of `parts` (batches, each with the mask of the rows
    /// it keeps: `None`, all) whose number here is in `set`: e.g. the devices of some
    /// customers, or the customers of some devices.
    pub fn related<'a>(
        &self,
        parts: impl IntoIterator<Item = (&'a RecordBatch, Option<&'a BooleanBuffer>)>,
        set: &CustomerBits,
        to: &Numbering,
    ) -> CustomerBits {
        let mut found = CustomerBits::default();
        for (batch, kept) in parts {
            let (from, values) = (self.numbers(batch), to.numbers(batch));
            for (i, (number, value)) in from.values().iter().zip(values.values()).enumerate() {
                if set.contains(*number) && kept.is_none_or(|k| k.value(i)) {
                    found.insert(*value);
                }
            }
        }
        found
    }

    /// Customers (values) numbered so far.
    pub fn customers(&self) -> usize {
        self.inner.lock().expect("numbering lock").ids.len()
    }
}

/// Rows copied through the numbering keep their numbers: a holder of masked rows (the live
/// view, a state table's segments) copies them without hashing their ids again.
impl Copier for Numbering {
    fn select(&self, batch: &RecordBatch, mask: &BooleanArray) -> RecordBatch {
        self.select_rows(batch, &self.numbers(batch), mask)
    }

    fn concat(&self, batches: &[RecordBatch]) -> RecordBatch {
        Numbering::concat(self, batches)
    }
}

impl Numbering {
    /// The customers with a kept row in `rows`.
    pub fn customers_of(&self, rows: &MaskedRows) -> CustomerBits {
        let mut bits = CustomerBits::default();
        for (batch, kept) in rows.parts() {
            let numbers = self.numbers(batch);
            let values = numbers.values();
            match kept {
                None => values.iter().for_each(|&n| bits.insert(n)),
                Some(kept) => kept.set_indices().for_each(|i| bits.insert(values[i])),
            }
        }
        bits
    }

    /// The kept rows of `rows` whose customer is in `set`.
    pub fn select_masked(&self, rows: &MaskedRows, set: &CustomerBits) -> Vec<RecordBatch> {
        rows.select_with(self, |batch| members(&self.numbers(batch), set))
    }
}

/// Which of `numbers` are in `set`, row by row.
pub fn members(numbers: &UInt32Array, set: &CustomerBits) -> BooleanArray {
    let values = numbers.values();
    BooleanArray::from(BooleanBuffer::collect_bool(values.len(), |i| set.contains(values[i])))
}

impl Inner {
    fn number(&mut self, id: &str) -> u32 {
        let key = id_key(id);
        if let Some(&number) = self.recent.get(&key) {
            return number;
        }
        let next = u32::try_from(self.ids.len()).expect("fewer than 4 billion customers in a session");
        let number = *self.ids.entry(key).or_insert(next);
        if self.recent.len() >= RECENT_IDS {
            self.recent.clear();
        }
        self.recent.insert(key, number);
        number
    }
}

/// The numbers of the rows `mask` selects.
fn selected_numbers(numbers: &UInt32Array, mask: &BooleanArray) -> UInt32Array {
    let kept = filter(numbers, mask).expect("a mask of the numbers' length");
    kept.as_any().downcast_ref::<UInt32Array>().expect("numbers").clone()
}

/// A column's address: the same for clones of one column, different for distinct columns
/// alive at once.
fn address(column: &ArrayRef) -> usize {
    Arc::as_ptr(column) as *const () as usize
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::datatypes::{DataType, Field, Schema};

    fn batch(ids: &[&str]) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![Field::new(CUSTOMER_ID, DataType::Utf8, false)]));
        RecordBatch::try_new(schema, vec![Arc::new(StringArray::from(ids.to_vec()))]).unwrap()
    }

    fn ids(batches: &[RecordBatch]) -> Vec<String> {
        batches
            .iter()
            .flat_map(|b| {
                customer_ids(b)
                    .unwrap()
                    .iter()
                    .map(|s| s.unwrap().to_string())
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    #[test]
    fn split_selects_the_rows_of_the_set_and_keeps_numbers_of_what_it_selects() {
        let numbering = Numbering::default();
        let rows = vec![batch(&["a", "b", "c", "a"]), batch(&["d"]), batch(&["b"])];
        let set = numbering.customers_in(&[batch(&["a", "b"])]);
        assert_eq!(set.len(), 2);
        let (inside, outside) = numbering.split(&rows, &set);
        assert_eq!(ids(&inside), ["a", "b", "a", "b"]);
        assert_eq!(ids(&outside), ["c", "d"]);
        assert_eq!(ids(&numbering.select(&rows, &set)), ["a", "b", "a", "b"]);
        // The selected rows are numbered by the selection: the same numbers as their ids.
        let again = numbering.split(&inside, &numbering.customers_in(&[batch(&["a"])]));
        assert_eq!(ids(&again.0), ["a", "a"]);
        assert_eq!(ids(&again.1), ["b", "b"]);
        assert_eq!(numbering.customers(), 4);
        // A union counts each customer once.
        let mut union = set.clone();
        union.add(&numbering.customers_in(&[batch(&["b", "d"])]));
        assert_eq!(union.len(), 3);
        assert_eq!(numbering.customers_in(&rows).len(), 4);
    }

    #[test]
    fn repeated_ids_in_a_row_get_the_number_of_their_id() {
        let numbering = Numbering::default();
        let first = numbering.numbers(&batch(&["a", "a", "b", "a", "b", "b"]));
        let (a, b) = (first.value(0), first.value(2));
        assert_ne!(a, b);
        assert_eq!(first.values().to_vec(), [a, a, b, a, b, b]);
        // Met again in another column, each id keeps its number.
        assert_eq!(numbering.numbers(&batch(&["b", "a"])).values().to_vec(), [b, a]);
    }

    #[test]
    fn links_are_numbered_apart_and_followed_both_ways() {
        let schema = Arc::new(Schema::new(vec![
            Field::new(CUSTOMER_ID, DataType::Utf8, false),
            Field::new("device_id", DataType::Utf8, true),
        ]));
        let rows = RecordBatch::try_new(
            schema,
            vec![
                Arc::new(StringArray::from(vec!["a", "b", "c", "d", "e"])),
                Arc::new(StringArray::from(vec![Some("x"), Some("x"), Some("y"), None, None])),
            ],
        )
        .unwrap();
        let customers = Numbering::default();
        let devices = customers.linked("device_id");
        assert!(Arc::ptr_eq(&devices, &customers.linked("device_id")));
        // a's devices, then their customers: a and b share x; a null device links nobody.
        let of_a = customers.related([(&rows, None)], &customers.customers_in(&[batch(&["a"])]), &devices);
        assert_eq!(of_a.len(), 1);
        let sharing = devices.related([(&rows, None)], &of_a, &customers);
        let (inside, _) = customers.split(std::slice::from_ref(&rows), &sharing);
        assert_eq!(ids(&inside), ["a", "b"]);
        // The selection carries the device numbers along: they are known without hashing.
        let devices_of_inside = inside[0].column_by_name("device_id").unwrap();
        let known = devices
            .inner
            .lock()
            .unwrap()
            .columns
            .get(&address(devices_of_inside))
            .map(|(_, n)| n.clone());
        assert_eq!(known.map(|n| n.values().to_vec()), Some(vec![0, 0]));
        let of_d = customers.related([(&rows, None)], &customers.customers_in(&[batch(&["d"])]), &devices);
        assert!(of_d.is_empty());
        assert_eq!(devices.customers(), 2);
        // A masked row (b's, replaced by a later fold) links nobody.
        let kept = BooleanBuffer::from(vec![true, false, true, true, true]);
        let sharing = devices.related([(&rows, Some(&kept))], &of_a, &customers);
        assert_eq!(sharing.len(), 1);
    }

    /// Rows selected or counted past a mask: only the kept rows count, and copies keep
    /// their numbers.
    #[test]
    fn masked_rows_are_selected_and_counted_by_their_kept_rows() {
        let numbering = Numbering::default();
        let mut rows = MaskedRows::from_batches(vec![batch(&["a", "b", "c"]), batch(&["d", "a"])]);
        let of = |names: &[&str]| numbering.customers_in(&[batch(names)]);
        let b = of(&["b"]);
        let taken = rows.take(&numbering, |part| members(&numbering.numbers(part), &b));
        assert_eq!(ids(&taken), ["b"]);
        assert_eq!(numbering.customers_of(&rows).len(), 3);
        assert_eq!(ids(&numbering.select_masked(&rows, &of(&["a", "b"]))), ["a", "a"]);
        // A copy's numbers are recorded: counting it hashes no id.
        let joined = rows.compacted(&numbering, usize::MAX).joined(&numbering);
        let known = numbering.inner.lock().unwrap().columns.len();
        assert_eq!(numbering.customers_of(&joined).len(), 3);
        assert_eq!(numbering.inner.lock().unwrap().columns.len(), known);
    }

    #[test]
    fn an_id_never_met_is_outside_every_set_and_dropped_columns_are_forgotten() {
        let numbering = Numbering::default();
        let set = numbering.customers_in(&[batch(&["a"])]);
        let (inside, outside) = numbering.split(&[batch(&["z", "a"])], &set);
        assert_eq!(
            (ids(&inside), ids(&outside)),
            (vec!["a".to_string()], vec!["z".to_string()])
        );
        drop((inside, outside));
        numbering.forget_dropped_columns();
        assert_eq!(numbering.inner.lock().unwrap().columns.len(), 0);
    }
}
