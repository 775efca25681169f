//! Rows in Arrow batches with some rows masked out: a holder of many rows that replaces a
//! few of them at a time (the live view of `customer_tags`, a state table's segments) marks
//! the replaced rows in a mask instead of copying the rest around them (at 1M customers,
//! millions of rows per micro-batch). When masked rows outnumber kept ones, or parts pile
//! up, the kept rows are copied once into whole batches ([`MaskedRows::compacted`]).
//!
//! Owns: the batches, their masks, and spreading a copy over the cores. Must not: decide
//! which rows are replaced (the caller's mask does) or know what a row means; how a row is
//! copied is the caller's [`Copier`] (the jobs layer's keeps its customer numbers).

use arrow::array::BooleanArray;
use arrow::buffer::BooleanBuffer;
use arrow::compute::filter_record_batch;
use arrow::record_batch::RecordBatch;

/// How rows are copied out of batches: a plain filter ([`Plain`]), or one that carries what
/// its owner knows about the rows along (the jobs layer's customer numbering).
pub trait Copier: Sync {
    /// The rows of `batch` that `mask` selects (some, neither none nor all).
    fn select(&self, batch: &RecordBatch, mask: &BooleanArray) -> RecordBatch;
    /// `batches` (at least two, of one schema) as one batch.
    fn concat(&self, batches: &[RecordBatch]) -> RecordBatch;
}

/// Copies rows and nothing else.
pub struct Plain;

impl Copier for Plain {
    fn select(&self, batch: &RecordBatch, mask: &BooleanArray) -> RecordBatch {
        filter_record_batch(batch, mask).expect("a mask of the batch's length")
    }

    fn concat(&self, batches: &[RecordBatch]) -> RecordBatch {
        arrow::compute::concat_batches(&batches[0].schema(), batches).expect("batches of one schema")
    }
}

/// Parts beyond which the rows are compacted, even with few masked rows: each replacement
/// adds a part or two, and every later one looks at every part.
const MAX_PARTS: usize = 512;

/// Rows a part holds at least once small parts are joined ([`MaskedRows::joined`]).
const JOINED_ROWS: usize = 1 << 16;

/// Rows in batches, some masked out.
#[derive(Clone, Default, Debug)]
pub struct MaskedRows {
    parts: Vec<Part>,
}

#[derive(Clone, Debug)]
struct Part {
    batch: RecordBatch,
    /// The rows still kept; `None`: all of them.
    kept: Option<BooleanBuffer>,
}

impl Part {
    fn kept_rows(&self) -> usize {
        self.kept.as_ref().map_or(self.batch.num_rows(), |k| k.count_set_bits())
    }

    /// Which of the part's kept rows `selects` marks.
    fn marked(&self, selects: impl Fn(&RecordBatch) -> BooleanArray) -> BooleanBuffer {
        let marked = selects(&self.batch);
        match &self.kept {
            None => marked.values().clone(),
            Some(kept) => marked.values() & kept,
        }
    }

    /// The part's rows in `rows` (a mask of its length), through `copier` (`None`: none).
    fn copy(&self, copier: &dyn Copier, rows: BooleanBuffer) -> Option<RecordBatch> {
        match rows.count_set_bits() {
            0 => None,
            n if n == self.batch.num_rows() => Some(self.batch.clone()),
            _ => Some(copier.select(&self.batch, &BooleanArray::from(rows))),
        }
    }

    /// The part's kept rows, through `copier` (`None`: none).
    fn kept_copy(&self, copier: &dyn Copier) -> Option<RecordBatch> {
        match &self.kept {
            None => Some(self.batch.clone()),
            Some(kept) => self.copy(copier, kept.clone()),
        }
    }
}

impl MaskedRows {
    pub fn from_batches(batches: Vec<RecordBatch>) -> Self {
        let mut rows = MaskedRows::default();
        rows.extend(batches);
        rows
    }

    /// Add whole batches (empty ones are left out).
    pub fn extend(&mut self, batches: impl IntoIterator<Item = RecordBatch>) {
        self.parts.extend(
            batches
                .into_iter()
                .filter(|b| b.num_rows() > 0)
                .map(|batch| Part { batch, kept: None }),
        );
    }

    /// The batches the rows are in, masked rows included (for numbering them ahead).
    pub fn batches(&self) -> impl Iterator<Item = &RecordBatch> {
        self.parts.iter().map(|p| &p.batch)
    }

    /// Each batch with the mask of its kept rows (`None`: all of them).
    pub fn parts(&self) -> impl Iterator<Item = (&RecordBatch, Option<&BooleanBuffer>)> {
        self.parts.iter().map(|p| (&p.batch, p.kept.as_ref()))
    }

    /// Kept rows.
    pub fn row_count(&self) -> usize {
        self.parts.iter().map(Part::kept_rows).sum()
    }

    /// Whether any row is masked out.
    #[cfg(test)]
    pub fn is_masked(&self) -> bool {
        self.parts.iter().any(|p| p.kept.is_some())
    }

    /// The kept rows as batches (masked parts copied).
    pub fn to_batches(&self) -> Vec<RecordBatch> {
        self.kept_batches(&Plain)
    }

    /// The kept rows as batches, masked parts copied through `copier`.
    pub fn kept_batches(&self, copier: &dyn Copier) -> Vec<RecordBatch> {
        self.parts.iter().filter_map(|p| p.kept_copy(copier)).collect()
    }

    /// The kept rows that `selects` marks in each batch, copied through `copier`.
    pub fn select_with(&self, copier: &dyn Copier, selects: impl Fn(&RecordBatch) -> BooleanArray) -> Vec<RecordBatch> {
        self.parts
            .iter()
            .filter_map(|part| part.copy(copier, part.marked(&selects)))
            .collect()
    }

    /// The kept rows that `selects` marks in each batch, copied once (a merge's rows of the
    /// tags it rewrites: millions of rows at 1M customers, so the parts are shared out over
    /// the cores).
    pub fn select(&self, selects: impl Fn(&RecordBatch) -> BooleanArray + Sync) -> Vec<RecordBatch> {
        let parts = &self.parts;
        let selects = &selects;
        let work = |i: usize| {
            (parts[i].batch.num_rows(), move || {
                parts[i].copy(&Plain, parts[i].marked(selects))
            })
        };
        on_all_cores((0..parts.len()).collect(), work)
            .into_iter()
            .filter_map(|(_, rows)| rows)
            .collect()
    }

    /// Take out the kept rows `covers` marks in each batch: they are returned (copied
    /// through `copier`) and masked out. Returns them and how many there are.
    pub fn take(&mut self, copier: &dyn Copier, covers: impl Fn(&RecordBatch) -> BooleanArray) -> Vec<RecordBatch> {
        let mut taken = Vec::new();
        for part in &mut self.parts {
            let marked = part.marked(&covers);
            if marked.count_set_bits() == 0 {
                continue;
            }
            taken.extend(part.copy(copier, marked.clone()));
            let kept = match &part.kept {
                None => !&marked,
                Some(kept) => kept & &!&marked,
            };
            part.kept = Some(kept);
        }
        self.parts.retain(|p| p.kept_rows() > 0);
        taken
    }

    /// Add `batches` as one part (joined through `copier`): one replacement adds one part,
    /// however many batches its rows came in.
    pub fn extend_joined(&mut self, copier: &dyn Copier, batches: Vec<RecordBatch>) {
        let batches: Vec<RecordBatch> = batches.into_iter().filter(|b| b.num_rows() > 0).collect();
        match batches.len() {
            0 | 1 => self.extend(batches),
            _ => self.extend([copier.concat(&batches)]),
        }
    }

    /// The rows after copying some parts' kept rows into whole batches, to free the masked
    /// ones. At most `budget` rows are copied (callers: twice the rows they took), most
    /// masked parts first and none masked less than a quarter, so the copying follows the
    /// change and is spread over the replacements instead of one copying everything; when
    /// masked rows outnumber kept ones anyway, every part masked more than half is copied.
    /// More than [`MAX_PARTS`] parts are joined ([`Self::joined`]).
    pub fn compacted(self, copier: &dyn Copier, budget: usize) -> MaskedRows {
        let total: usize = self.parts.iter().map(|p| p.batch.num_rows()).sum();
        let kept = self.row_count();
        let over = total - kept > kept;
        let masked_share = |p: &Part| 1.0 - p.kept_rows() as f64 / p.batch.num_rows() as f64;
        let mut order: Vec<usize> = (0..self.parts.len()).collect();
        order.sort_by(|&a, &b| masked_share(&self.parts[b]).total_cmp(&masked_share(&self.parts[a])));
        let mut copy = vec![false; self.parts.len()];
        let mut copied = 0;
        for i in order {
            let (share, rows) = (masked_share(&self.parts[i]), self.parts[i].kept_rows());
            let due = (over && share > 0.5) || (share >= 0.25 && copied + rows <= budget);
            if !due {
                continue;
            }
            copy[i] = true;
            copied += rows;
        }
        let _span = tracing::debug_span!(
            "compact_masked_rows",
            parts = self.parts.len(),
            kept,
            masked = total - kept,
            copied
        )
        .entered();
        let mut rows = MaskedRows::default();
        for (part, copy) in self.parts.into_iter().zip(copy) {
            match copy {
                true => rows.extend(part.kept_copy(copier)),
                false => rows.parts.push(part),
            }
        }
        match rows.parts.len() > MAX_PARTS {
            true => rows.joined(copier),
            false => rows,
        }
    }

    /// The rows with runs of adjacent parts of fewer than [`JOINED_ROWS`] kept rows joined
    /// into parts of at least that many (kept rows only, in their order), through `copier`.
    pub fn joined(self, copier: &dyn Copier) -> MaskedRows {
        let mut rows = MaskedRows::default();
        let mut run: Vec<RecordBatch> = Vec::new();
        let flush = |run: &mut Vec<RecordBatch>, rows: &mut MaskedRows| rows.extend_joined(copier, std::mem::take(run));
        for part in self.parts {
            if part.kept_rows() >= JOINED_ROWS {
                flush(&mut run, &mut rows);
                rows.parts.push(part);
                continue;
            }
            run.extend(part.kept_copy(copier));
            if run.iter().map(|b| b.num_rows()).sum::<usize>() >= JOINED_ROWS {
                flush(&mut run, &mut rows);
            }
        }
        flush(&mut run, &mut rows);
        rows
    }
}

/// Run the work of each item (a size and a closure, from `work`), spread over the cores;
/// the results come back in the order of `items`.
pub fn on_all_cores<I: Copy + Send + Sync, F: FnOnce() -> T + Send, T: Send>(
    items: Vec<I>,
    work: impl Fn(I) -> (usize, F),
) -> Vec<(I, T)> {
    let cores = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(items.len())
        .max(1);
    // The largest items first, each to the least loaded core.
    let mut sized: Vec<(usize, usize, F)> = items
        .iter()
        .enumerate()
        .map(|(k, item)| {
            let (size, f) = work(*item);
            (size, k, f)
        })
        .collect();
    sized.sort_by_key(|s| std::cmp::Reverse(s.0));
    let mut shares: Vec<(usize, Vec<(usize, F)>)> = (0..cores).map(|_| (0, Vec::new())).collect();
    for (size, k, f) in sized {
        let share = shares.iter_mut().min_by_key(|s| s.0).expect("at least one core");
        share.0 += size;
        share.1.push((k, f));
    }
    let run = |share: Vec<(usize, F)>| share.into_iter().map(|(k, f)| (k, f())).collect::<Vec<_>>();
    let mut shares = shares.into_iter().map(|s| s.1);
    let first = shares.next().unwrap_or_default();
    let mut results: Vec<(usize, T)> = std::thread::scope(|scope| {
        let others: Vec<_> = shares.map(|share| scope.spawn(move || run(share))).collect();
        let mut results = run(first);
        for other in others {
            results.extend(other.join().unwrap_or_else(|e| std::panic::resume_unwind(e)));
        }
        results
    });
    results.sort_by_key(|r| r.0);
    results.into_iter().map(|(k, t)| (items[k], t)).collect()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::StringArray;
    use arrow::datatypes::{DataType, Field, Schema};

    use super::*;

    fn batch(ids: &[&str]) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![Field::new("customer_id", DataType::Utf8, false)]));
        RecordBatch::try_new(schema, vec![Arc::new(StringArray::from(ids.to_vec()))]).unwrap()
    }

    fn ids(batches: &[RecordBatch]) -> Vec<String> {
        batches
            .iter()
            .flat_map(|b| {
                let ids = b.column(0).as_any().downcast_ref::<StringArray>().unwrap();
                (0..b.num_rows()).map(|i| ids.value(i).to_string()).collect::<Vec<_>>()
            })
            .collect()
    }

    /// A mask of the rows whose id is in `set`.
    fn of<'a>(set: &'a [&'a str]) -> impl Fn(&RecordBatch) -> BooleanArray + Sync + 'a {
        move |b: &RecordBatch| {
            let ids = b.column(0).as_any().downcast_ref::<StringArray>().unwrap();
            ids.iter().map(|id| Some(set.contains(&id.unwrap()))).collect()
        }
    }

    #[test]
    fn taken_rows_leave_and_masks_compose() {
        let mut rows = MaskedRows::from_batches(vec![batch(&["a", "b", "c"]), batch(&["d", "a"])]);
        let taken = rows.take(&Plain, of(&["a"]));
        assert_eq!(ids(&taken), ["a", "a"]);
        assert_eq!(ids(&rows.to_batches()), ["b", "c", "d"]);
        assert_eq!(rows.row_count(), 3);
        assert!(rows.is_masked());
        // A masked row is not taken twice; the mask of a later take composes with it.
        let taken = rows.take(&Plain, of(&["a", "c"]));
        assert_eq!(ids(&taken), ["c"]);
        rows.extend([batch(&["c"])]);
        assert_eq!(ids(&rows.to_batches()), ["b", "d", "c"]);
        assert_eq!(ids(&rows.select(of(&["c", "d"]))), ["d", "c"]);
        assert_eq!(ids(&rows.select_with(&Plain, of(&["c", "d"]))), ["d", "c"]);
        // Compaction keeps the rows and their order.
        let compacted = rows.clone().compacted(&Plain, usize::MAX);
        assert_eq!(ids(&compacted.to_batches()), ["b", "d", "c"]);
        assert!(!compacted.is_masked());
        // A budget of no rows copies nothing while masked rows do not outnumber kept ones.
        let kept = rows.clone().compacted(&Plain, 0);
        assert_eq!(kept.batches().count(), rows.batches().count());
        assert_eq!(ids(&kept.to_batches()), ["b", "d", "c"]);
        rows.take(&Plain, of(&["b", "d", "c"]));
        assert_eq!(rows.row_count(), 0);
        assert!(rows.to_batches().is_empty());
    }

    #[test]
    fn compaction_copies_the_most_masked_parts_within_its_budget() {
        let mut rows = MaskedRows::from_batches(vec![batch(&["a", "b", "c", "d"]), batch(&["e", "f", "g", "h"])]);
        rows.take(&Plain, of(&["a", "b", "e"]));
        let sizes = |rows: &MaskedRows| rows.batches().map(|b| b.num_rows()).collect::<Vec<_>>();
        // Half of the first part is masked, a quarter of the second: a budget of two rows
        // copies the first part's two kept rows only.
        let compacted = rows.clone().compacted(&Plain, 2);
        assert_eq!(sizes(&compacted), [2, 4]);
        assert_eq!(ids(&compacted.to_batches()), ["c", "d", "f", "g", "h"]);
        // With room for both, both; with none, neither (masked rows do not outnumber kept ones).
        assert_eq!(sizes(&rows.clone().compacted(&Plain, 5)), [2, 3]);
        assert_eq!(sizes(&rows.compacted(&Plain, 0)), [4, 4]);
    }

    #[test]
    fn many_parts_are_joined_into_one() {
        let names: Vec<String> = (0..MAX_PARTS + 10).map(|i| format!("c{i}")).collect();
        let parts: Vec<RecordBatch> = names.iter().map(|n| batch(&[n.as_str()])).collect();
        let rows = MaskedRows::from_batches(parts).compacted(&Plain, 0);
        assert_eq!(rows.batches().count(), 1);
        assert_eq!(ids(&rows.to_batches()), names);
    }
}
