//! The live view the lookup API answers customers from: an index of a `customer_tags`
//! version (the base) with the change feed's rows since applied on top, customer by
//! customer. `follow` publishes every micro-batch to the feed at once and merges it into
//! `customer_tags` on a cadence (`publish::live`); `serve` applies each new feed version's
//! rows as they come, so a reload costs what changed, not the size of the base.
//!
//! A lookup names the `customer_tags` version and the feed version it answers from: the
//! rows a reader gets from `customer_tags` at `version` with the live feed rows of
//! `from_version >= version` of the feed at `feed_version` applied (`publish::live`): a
//! committed version always, while the feed may already hold rows on the version a
//! background merge is writing.
//!
//! Owns: the overlay of changed customers and applying feed rows to it. Must not: read the
//! warehouse (the server's reload does) or answer segment pages (those come from the base,
//! a merged version, refreshed after merges).

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{Array, Float64Array, StringArray, TimestampMicrosecondArray};
use arrow::record_batch::RecordBatch;
use chrono::{DateTime, SecondsFormat, Utc};
use foldhash::fast::RandomState;

use super::index::{SharedIndex, TagView};
use crate::storage::rows::text_column;

/// One tag row of a changed customer.
#[derive(Debug, Clone)]
struct LiveRow {
    family: Arc<str>,
    tag: Arc<str>,
    value: Arc<str>,
    score: Option<f64>,
    as_of: Arc<str>,
}

/// A base index with the feed's changes since applied.
pub struct LiveView {
    pub base: SharedIndex,
    /// Every row of each customer changed since the base (empty: no tags any more).
    changed: HashMap<Box<str>, Vec<LiveRow>, RandomState>,
    /// Interned strings of the changed rows.
    strings: HashMap<Box<str>, Arc<str>, RandomState>,
    /// The committed `customer_tags` version the view is named by, and the feed version
    /// applied.
    pub version: u64,
    pub feed_version: Option<u64>,
    /// How far the feed is applied: the highest `to_version` of the rows applied (a version
    /// a background merge may not have committed yet), and the latest as-of of the live
    /// rows on it (micros).
    pub position: u64,
    pub live_as_of: Option<i64>,
    /// The newest as-of applied, as RFC 3339 text (the base's when nothing was applied).
    as_of_text: Option<String>,
}

impl LiveView {
    pub fn new(base: SharedIndex, feed_version: Option<u64>) -> Self {
        LiveView {
            version: base.version,
            position: base.version,
            as_of_text: base.as_of_text().map(String::from),
            base,
            changed: HashMap::default(),
            strings: HashMap::default(),
            feed_version,
            live_as_of: None,
        }
    }

    /// Customers changed since the base.
    pub fn changed_customers(&self) -> usize {
        self.changed.len()
    }

    pub fn as_of_text(&self) -> Option<&str> {
        self.as_of_text.as_deref()
    }

    /// A customer's tags, ordered by family and tag; `None` for a customer with no tags.
    pub fn customer(&self, id: &str) -> Option<Vec<TagView<'_>>> {
        match self.changed.get(id) {
            Some(rows) if rows.is_empty() => None,
            Some(rows) => Some(
                rows.iter()
                    .map(|r| TagView {
                        family: &r.family,
                        tag: &r.tag,
                        value: &r.value,
                        score: r.score,
                        as_of: &r.as_of,
                    })
                    .collect(),
            ),
            None => self.base.customer(id),
        }
    }

    /// Apply feed rows (in publish order) read from the feed at `feed_version`, which marks
    /// `customer_tags` version `covered` covered (committed, its changes in the feed).
    pub fn apply(&mut self, changes: &[RecordBatch], feed_version: Option<u64>, covered: Option<u64>) {
        for batch in changes {
            let text = |name: &str| -> StringArray { text_column(batch, name).expect("a text column of the feed") };
            let (ids, families, tags, kinds, values) = (
                text("customer_id"),
                text("family"),
                text("tag"),
                text("change"),
                text("new_value"),
            );
            let scores = batch
                .column_by_name("new_score")
                .and_then(|c| c.as_any().downcast_ref::<Float64Array>().cloned())
                .expect("a float score");
            let as_ofs = batch
                .column_by_name("as_of")
                .and_then(|c| c.as_any().downcast_ref::<TimestampMicrosecondArray>().cloned())
                .expect("a timestamp as-of");
            let from = batch.column_by_name("from_version").expect("a feed column");
            let to = batch.column_by_name("to_version").expect("a feed column");
            let (from, to) = (int64(from), int64(to));
            for i in 0..batch.num_rows() {
                let id = ids.value(i);
                let tag = tags.value(i);
                let rows = self.rows_of(id);
                rows.retain(|r| r.tag.as_ref() != tag);
                if kinds.value(i) != "exited" {
                    let as_of = as_of_text(as_ofs.value(i));
                    let row = LiveRow {
                        family: self.intern(families.value(i)),
                        tag: self.intern(tag),
                        value: self.intern(values.value(i)),
                        score: scores.is_valid(i).then(|| scores.value(i)),
                        as_of: self.intern(&as_of),
                    };
                    let rows = self.changed.get_mut(id).expect("made above");
                    let at = rows
                        .binary_search_by(|r| (&r.family, &r.tag).cmp(&(&row.family, &row.tag)))
                        .unwrap_or_else(|at| at);
                    rows.insert(at, row);
                }
                let is_live = from.is_valid(i) && from.value(i) == to.value(i);
                let to = to.value(i) as u64;
                if to > self.position {
                    self.position = to;
                    self.live_as_of = None;
                }
                if is_live && to == self.position {
                    self.live_as_of = Some(self.live_as_of.unwrap_or(i64::MIN).max(as_ofs.value(i)));
                }
                self.as_of_text = Some(as_of_text(as_ofs.value(i)));
            }
        }
        self.feed_version = feed_version.or(self.feed_version);
        self.version = self.version.max(covered.unwrap_or_default());
    }

    /// The rows of a changed customer, made from the base the first time it changes.
    fn rows_of(&mut self, id: &str) -> &mut Vec<LiveRow> {
        if !self.changed.contains_key(id) {
            let base: Vec<(String, String, String, Option<f64>, String)> = self
                .base
                .customer(id)
                .unwrap_or_default()
                .into_iter()
                .map(|v| (v.family.into(), v.tag.into(), v.value.into(), v.score, v.as_of.into()))
                .collect();
            let rows = base
                .into_iter()
                .map(|(family, tag, value, score, as_of)| LiveRow {
                    family: self.intern(&family),
                    tag: self.intern(&tag),
                    value: self.intern(&value),
                    score,
                    as_of: self.intern(&as_of),
                })
                .collect();
            self.changed.insert(id.into(), rows);
        }
        self.changed.get_mut(id).expect("inserted above")
    }

    fn intern(&mut self, text: &str) -> Arc<str> {
        if let Some(shared) = self.strings.get(text) {
            return shared.clone();
        }
        let shared: Arc<str> = Arc::from(text);
        self.strings.insert(text.into(), shared.clone());
        shared
    }

    /// A view on a newer `base` (a merged version loaded since): the customers changed
    /// since the old base keep their rows, which are at least as new as the new base's.
    pub fn rebase(&mut self, base: SharedIndex) {
        self.base = base;
    }
}

fn int64(column: &arrow::array::ArrayRef) -> arrow::array::Int64Array {
    let cast = arrow::compute::cast(column, &arrow::datatypes::DataType::Int64).expect("a version column");
    cast.as_any()
        .downcast_ref::<arrow::array::Int64Array>()
        .expect("int64")
        .clone()
}

fn as_of_text(micros: i64) -> String {
    DateTime::<Utc>::from_timestamp_micros(micros)
        .unwrap_or_default()
        .to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{ArrayRef, Float64Array, Int64Array, StringArray, TimestampMicrosecondArray};
    use arrow::record_batch::RecordBatch;

    use super::LiveView;

    /// One feed row: `customer` entered `tag` = `value`, published on top of `from` (live
    /// when `from == to`).
    fn feed_row(customer: &str, value: &str, from: i64, to: i64) -> RecordBatch {
        let text = |v: Option<&str>| Arc::new(StringArray::from(vec![v])) as ArrayRef;
        let columns: Vec<ArrayRef> = vec![
            text(Some(customer)),
            text(Some("behaviour")),
            text(Some("lifecycle")),
            text(Some("entered")),
            text(None),
            text(Some(value)),
            Arc::new(Float64Array::from(vec![None::<f64>])),
            Arc::new(Float64Array::from(vec![None::<f64>])),
            Arc::new(Int64Array::from(vec![Some(from)])),
            Arc::new(Int64Array::from(vec![to])),
            Arc::new(TimestampMicrosecondArray::from(vec![1_000_000 * to]).with_timezone("UTC")),
        ];
        RecordBatch::try_new(crate::publish::tags::tag_changes_schema(), columns).unwrap()
    }

    /// Rows published while a background merge writes the next version apply at once, but
    /// the view keeps naming the last committed version until the feed marks the merged
    /// one covered.
    #[test]
    fn the_view_names_a_committed_version_while_rows_on_a_merge_under_way_apply() {
        let mut base = super::super::index::build(&[]);
        base.version = 3;
        let mut view = LiveView::new(Arc::new(base), Some(10));
        view.apply(&[feed_row("c1", "new", 3, 3)], Some(11), Some(3));
        assert_eq!((view.version, view.position), (3, 3));
        // On version 4, which a merge is writing: applied, named by version 3.
        view.apply(&[feed_row("c2", "active", 4, 4)], Some(12), Some(3));
        assert_eq!((view.version, view.position), (3, 4));
        assert_eq!(view.customer("c2").unwrap()[0].value, "active");
        assert_eq!(view.customer("c1").unwrap()[0].value, "new");
        // The merge committed and the feed marks it covered: named by it.
        view.apply(&[], Some(13), Some(4));
        assert_eq!((view.version, view.position, view.feed_version), (4, 4, Some(13)));
    }
}
