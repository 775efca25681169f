//! The live view's rows as a publish keeps them for the next one: Arrow batches, each with
//! the rows that later micro-batches replaced masked out. A micro-batch copies out only
//! the rows it covers (its customers' rows, a few percent of the view) and marks them in
//! the masks, instead of copying the rest of the view around them (at 1M customers, ~5M
//! rows per batch). When masked rows outnumber kept ones, or parts pile up, the view is
//! copied once into whole batches ([`View::compacted`]).
//!
//! Owns: the batches and their masks. Must not: decide which rows a batch covers (the
//! caller's mask does) or number customers (the [`Numbering`] does).

use arrow::array::BooleanArray;
use arrow::buffer::BooleanBuffer;
use arrow::compute::filter_record_batch;
use arrow::record_batch::RecordBatch;

use super::diff::on_all_cores;
use crate::jobs::{CustomerBits, Numbering};

/// Parts beyond which the view is compacted, even with few masked rows: each micro-batch
/// adds a part or two, and every later batch looks at every part.
const MAX_PARTS: usize = 512;

/// Rows a part holds at least once small parts are joined ([`View::joined`]).
const JOINED_ROWS: usize = 1 << 16;

/// Rows in batches, some masked out.
#[derive(Clone, Default)]
pub struct View {
    parts: Vec<Part>,
}

#[derive(Clone)]
struct Part {
    batch: RecordBatch,
    /// The rows still in the view; `None`: all of them.
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

    /// The part's kept rows that `selects` marks (`None`: none).
    fn select(&self, selects: impl Fn(&RecordBatch) -> BooleanArray) -> Option<RecordBatch> {
        let marked = self.marked(selects);
        match marked.count_set_bits() {
            0 => None,
            n if n == self.batch.num_rows() => Some(self.batch.clone()),
            _ => Some(
                filter_record_batch(&self.batch, &BooleanArray::from(marked)).expect("a mask of the batch's length"),
            ),
        }
    }
}

impl View {
    pub fn from_batches(batches: Vec<RecordBatch>) -> Self {
        let mut view = View::default();
        view.extend(batches);
        view
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

    /// The batches the view's rows are in, masked rows included (for numbering them ahead).
    pub fn batches(&self) -> impl Iterator<Item = &RecordBatch> {
        self.parts.iter().map(|p| &p.batch)
    }

    /// Rows in the view.
    pub fn row_count(&self) -> usize {
        self.parts.iter().map(Part::kept_rows).sum()
    }

    /// The view's rows as batches (masked parts copied).
    pub fn to_batches(&self) -> Vec<RecordBatch> {
        self.parts
            .iter()
            .filter_map(|part| match &part.kept {
                None => Some(part.batch.clone()),
                Some(kept) if kept.count_set_bits() == 0 => None,
                Some(kept) => Some(
                    filter_record_batch(&part.batch, &BooleanArray::from(kept.clone()))
                        .expect("a mask of the batch's length"),
                ),
            })
            .collect()
    }

    /// The view's rows that `selects` marks in each batch, copied once (a merge's rows of
    /// the tags it rewrites: millions of rows at 1M customers, so the parts are shared out
    /// over the cores).
    pub fn select(&self, selects: impl Fn(&RecordBatch) -> BooleanArray + Sync) -> Vec<RecordBatch> {
        let parts = &self.parts;
        let selects = &selects;
        let work = |i: usize| (parts[i].batch.num_rows(), move || parts[i].select(selects));
        on_all_cores((0..parts.len()).collect(), work)
            .into_iter()
            .filter_map(|(_, rows)| rows)
            .collect()
    }

    /// Take out the rows `covers` marks in each batch: they are returned (selected through
    /// `numbering`, so they keep their customer numbers) and masked out of the view.
    pub fn take(
        mut self,
        numbering: &Numbering,
        covers: impl Fn(&RecordBatch) -> BooleanArray,
    ) -> (Vec<RecordBatch>, View) {
        let mut taken = Vec::new();
        for part in &mut self.parts {
            let marked = part.marked(&covers);
            if marked.count_set_bits() == 0 {
                continue;
            }
            let numbers = numbering.numbers(&part.batch);
            taken.extend(numbering.select_by_mask(&part.batch, &numbers, &BooleanArray::from(marked.clone())));
            let kept = match &part.kept {
                None => !&marked,
                Some(kept) => kept & &!&marked,
            };
            part.kept = Some(kept);
        }
        self.parts.retain(|p| p.kept_rows() > 0);
        (taken, self)
    }

    /// The customers with a row in the view.
    pub fn customers(&self, numbering: &Numbering) -> CustomerBits {
        let mut bits = CustomerBits::default();
        for part in &self.parts {
            let numbers = numbering.numbers(&part.batch);
            let values = numbers.values();
            match &part.kept {
                None => values.iter().for_each(|&n| bits.insert(n)),
                Some(kept) => kept.set_indices().for_each(|i| bits.insert(values[i])),
            }
        }
        bits
    }

    /// Add `batches` as one part (joined through `numbering`, so the rows keep their
    /// numbers): a micro-batch adds one part, however many batches its rows came in.
    pub fn extend_joined(&mut self, numbering: &Numbering, batches: Vec<RecordBatch>) {
        let batches: Vec<RecordBatch> = batches.into_iter().filter(|b| b.num_rows() > 0).collect();
        match batches.len() {
            0 | 1 => self.extend(batches),
            _ => self.extend([numbering.concat(&batches)]),
        }
    }

    /// The view after copying some of its parts' kept rows into whole batches, to free the
    /// masked ones. A micro-batch copies at most `budget` rows (its callers: twice the rows
    /// it took), most masked parts first and none masked less than a quarter, so the copying
    /// follows the change and is spread over the batches instead of one batch copying the
    /// whole view; when masked rows outnumber kept ones anyway, every part masked more than
    /// half is copied. More than [`MAX_PARTS`] parts are joined ([`Self::joined`]).
    pub fn compacted(self, numbering: &Numbering, budget: usize) -> View {
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
            "compact_view",
            parts = self.parts.len(),
            kept,
            masked = total - kept,
            copied
        )
        .entered();
        let mut view = View::default();
        for (part, copy) in self.parts.into_iter().zip(copy) {
            match (copy, part.kept) {
                (true, Some(kept)) => {
                    let numbers = numbering.numbers(&part.batch);
                    view.extend(numbering.select_by_mask(&part.batch, &numbers, &BooleanArray::from(kept)));
                }
                (_, kept) => view.parts.push(Part {
                    batch: part.batch,
                    kept,
                }),
            }
        }
        match view.parts.len() > MAX_PARTS {
            true => view.joined(numbering),
            false => view,
        }
    }

    /// The view with runs of adjacent parts of fewer than [`JOINED_ROWS`] kept rows joined
    /// into parts of at least that many (kept rows only, in their order), through
    /// `numbering`, so the rows keep their numbers.
    pub fn joined(self, numbering: &Numbering) -> View {
        let mut view = View::default();
        let mut run: Vec<RecordBatch> = Vec::new();
        let flush = |run: &mut Vec<RecordBatch>, view: &mut View| view.extend_joined(numbering, std::mem::take(run));
        for part in self.parts {
            if part.kept_rows() >= JOINED_ROWS {
                flush(&mut run, &mut view);
                view.parts.push(part);
                continue;
            }
            run.extend(match &part.kept {
                None => Some(part.batch),
                Some(kept) => {
                    let numbers = numbering.numbers(&part.batch);
                    numbering.select_by_mask(&part.batch, &numbers, &BooleanArray::from(kept.clone()))
                }
            });
            if run.iter().map(|b| b.num_rows()).sum::<usize>() >= JOINED_ROWS {
                flush(&mut run, &mut view);
            }
        }
        flush(&mut run, &mut view);
        view
    }
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

    #[test]
    fn taken_rows_leave_the_view_and_masks_compose() {
        let numbering = Numbering::default();
        let numbering = &numbering;
        let view = View::from_batches(vec![batch(&["a", "b", "c"]), batch(&["d", "a"])]);
        let of = |set: &[&str]| {
            let set = numbering.customers_in(&[batch(set)]);
            move |b: &RecordBatch| crate::jobs::members(&numbering.numbers(b), &set)
        };
        let (taken, view) = view.take(numbering, of(&["a"]));
        assert_eq!(ids(&taken), ["a", "a"]);
        assert_eq!(ids(&view.to_batches()), ["b", "c", "d"]);
        assert_eq!(view.row_count(), 3);
        // A masked row is not taken twice; the mask of a later take composes with it.
        let (taken, mut view) = view.take(numbering, of(&["a", "c"]));
        assert_eq!(ids(&taken), ["c"]);
        view.extend([batch(&["c"])]);
        assert_eq!(ids(&view.to_batches()), ["b", "d", "c"]);
        assert_eq!(ids(&view.select(of(&["c", "d"]))), ["d", "c"]);
        assert_eq!(view.customers(numbering).len(), 3);
        // Compaction keeps the rows and their order.
        let compacted = view.clone().compacted(numbering, usize::MAX);
        assert_eq!(ids(&compacted.to_batches()), ["b", "d", "c"]);
        // A budget of no rows copies nothing while masked rows do not outnumber kept ones.
        let kept = view.clone().compacted(numbering, 0);
        assert_eq!(kept.batches().count(), view.batches().count());
        assert_eq!(ids(&kept.to_batches()), ["b", "d", "c"]);
        let (_, view) = view.take(numbering, of(&["b", "d", "c"]));
        assert_eq!(view.row_count(), 0);
        assert!(view.to_batches().is_empty());
    }

    #[test]
    fn compaction_copies_the_most_masked_parts_within_its_budget() {
        let numbering = Numbering::default();
        let numbering = &numbering;
        let view = View::from_batches(vec![batch(&["a", "b", "c", "d"]), batch(&["e", "f", "g", "h"])]);
        let set = numbering.customers_in(&[batch(&["a", "b", "e"])]);
        let (_, view) = view.take(numbering, |b| crate::jobs::members(&numbering.numbers(b), &set));
        let sizes = |view: &View| view.batches().map(|b| b.num_rows()).collect::<Vec<_>>();
        // Half of the first part is masked, a quarter of the second: a budget of two rows
        // copies the first part's two kept rows only.
        let compacted = view.clone().compacted(numbering, 2);
        assert_eq!(sizes(&compacted), [2, 4]);
        assert_eq!(ids(&compacted.to_batches()), ["c", "d", "f", "g", "h"]);
        // With room for both, both; with none, neither (masked rows do not outnumber kept ones).
        assert_eq!(sizes(&view.clone().compacted(numbering, 5)), [2, 3]);
        assert_eq!(sizes(&view.compacted(numbering, 0)), [4, 4]);
    }

    #[test]
    fn many_parts_are_joined_into_one_that_keeps_its_numbers() {
        let numbering = Numbering::default();
        let names: Vec<String> = (0..MAX_PARTS + 10).map(|i| format!("c{i}")).collect();
        let parts: Vec<RecordBatch> = names.iter().map(|n| batch(&[n.as_str()])).collect();
        let before = numbering.customers_in(&parts);
        let view = View::from_batches(parts).compacted(&numbering, 0);
        assert_eq!(view.batches().count(), 1);
        assert_eq!(ids(&view.to_batches()), names);
        // The one batch's numbers are those its rows had.
        let after = view.customers(&numbering);
        assert_eq!(after.len(), before.len());
        assert!((0..before.len() as u32).all(|n| after.contains(n)));
    }
}
