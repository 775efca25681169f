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

use crate::jobs::{CustomerBits, Numbering};

/// Parts beyond which the view is compacted, even with few masked rows: each micro-batch
/// adds a part or two, and every later batch looks at every part.
const MAX_PARTS: usize = 512;

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
    /// the tags it rewrites).
    pub fn select(&self, selects: impl Fn(&RecordBatch) -> BooleanArray) -> Vec<RecordBatch> {
        self.parts
            .iter()
            .filter_map(|part| {
                let marked = selects(&part.batch);
                let marked = match &part.kept {
                    None => marked.values().clone(),
                    Some(kept) => marked.values() & kept,
                };
                match marked.count_set_bits() {
                    0 => None,
                    n if n == part.batch.num_rows() => Some(part.batch.clone()),
                    _ => Some(
                        filter_record_batch(&part.batch, &BooleanArray::from(marked))
                            .expect("a mask of the batch's length"),
                    ),
                }
            })
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
            let marked = covers(&part.batch);
            let marked = match &part.kept {
                None => marked.values().clone(),
                Some(kept) => marked.values() & kept,
            };
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

    /// This view, or, when its masked rows outnumber its kept ones or it has more than
    /// [`MAX_PARTS`] parts, the same rows copied into whole batches (selected through
    /// `numbering`, so they keep their numbers).
    pub fn compacted(self, numbering: &Numbering) -> View {
        let total: usize = self.parts.iter().map(|p| p.batch.num_rows()).sum();
        let kept = self.row_count();
        if total - kept <= kept && self.parts.len() <= MAX_PARTS {
            return self;
        }
        let _span =
            tracing::debug_span!("compact_view", parts = self.parts.len(), kept, masked = total - kept).entered();
        let mut batches = Vec::new();
        for part in self.parts {
            match part.kept {
                None => batches.push(part.batch),
                Some(kept) => {
                    let numbers = numbering.numbers(&part.batch);
                    batches.extend(numbering.select_by_mask(&part.batch, &numbers, &BooleanArray::from(kept)));
                }
            }
        }
        // Many small parts become one.
        if batches.len() > MAX_PARTS {
            batches = vec![numbering.concat(&batches)];
        }
        View::from_batches(batches)
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
        let compacted = view.clone().compacted(numbering);
        assert_eq!(ids(&compacted.to_batches()), ["b", "d", "c"]);
        let (_, view) = view.take(numbering, of(&["b", "d", "c"]));
        assert_eq!(view.row_count(), 0);
        assert!(view.to_batches().is_empty());
    }

    #[test]
    fn many_parts_are_compacted_into_one_that_keeps_its_numbers() {
        let numbering = Numbering::default();
        let names: Vec<String> = (0..MAX_PARTS + 10).map(|i| format!("c{i}")).collect();
        let parts: Vec<RecordBatch> = names.iter().map(|n| batch(&[n.as_str()])).collect();
        let before = numbering.customers_in(&parts);
        let view = View::from_batches(parts).compacted(&numbering);
        assert_eq!(view.batches().count(), 1);
        assert_eq!(ids(&view.to_batches()), names);
        // The one batch's numbers are those its rows had.
        let after = view.customers(&numbering);
        assert_eq!(after.len(), before.len());
        assert!((0..before.len() as u32).all(|n| after.contains(n)));
    }
}
