//! Live changes: a `follow` micro-batch publishes what it changed to the change feed
//! (`tag_changes`) at once, and `customer_tags` takes those changes in a merge on a cadence
//! ([`MergePolicy`]): Delta rewrites whole files, so merging a few thousand changed rows
//! into a table of millions every second would rewrite most of it every second.
//!
//! The feed rows of a batch that did not merge have `from_version = to_version = v`: they
//! are changes on top of `customer_tags` version `v`, published, not yet in a version. The
//! next merge writes version `v + 1`, which holds them, with the feed rows of its own batch
//! (`from_version = v`, `to_version = v + 1`). So:
//! - the changes from version `a` to version `b` are the feed rows with
//!   `a <= from_version < b`;
//! - what services see now (the live view) is `customer_tags` at its latest version `v`
//!   with the live feed rows (`from_version = to_version`) of `from_version >= v` applied
//!   in publish order (`from_version`, then `as_of`).
//!
//! A micro-batch's merge runs in the background ([`super::tags`]): the batch that is due
//! publishes its rows live on `v` and starts writing version `v + 1` from the live view
//! (`v` with every live row on it). The batches after it publish their rows live on
//! `v + 1` at once, before that version is committed: so `v + 1` holds exactly the rows
//! live on `v`, and a reader standing on `v` applies both. The next publish after the
//! merge's commit marks `v + 1` covered in the feed; a session that died before the merge
//! committed has it written again from the same rows when the tables are next opened.
//!
//! Owns: the merge policy, reading a version's live rows and applying feed rows to rows.
//! Must not: commit anything (`tags` does).

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use arrow::array::{Array, ArrayRef, BooleanArray, Float64Array, StringArray, TimestampMicrosecondArray};
use arrow::compute::filter_record_batch;
use arrow::record_batch::RecordBatch;
use datafusion::prelude::SessionContext;
use deltalake::DeltaTable;
use foldhash::fast::RandomState;

use super::tables::CHANGES_TABLE;
use super::tags::ChangeCounts;
use super::{collect, customer_tags_schema, register, PublishError};
use crate::storage::rows::text_column;
use crate::storage::units::Bounded;

/// `[publish] merge_every`: seconds between two merges of live changes into `customer_tags`.
pub const MERGE_EVERY_SECS: Bounded<u64> = Bounded {
    default: 60,
    min: 0,
    max: 86_400,
};
/// `[publish] merge_max_changes`: merge at once when this many live changes are waiting.
/// A merge rewrites every changed tag's partition (at 1M customers ~3.6M rows, 1.1-1.4 s
/// of a micro-batch): at 1M changes, a feed of 50k events a second merged every ~17 s; the
/// default leaves the cadence to `merge_every` and bounds a burst (a backlog of late files).
pub const MERGE_MAX_CHANGES: Bounded<u64> = Bounded {
    default: 5_000_000,
    min: 0,
    max: u64::MAX,
};

/// When a micro-batch merges the live changes into `customer_tags`. A batch that evaluated
/// everyone (a run, a new day, a full recompute) always merges.
#[derive(Debug, Clone)]
pub struct MergePolicy {
    /// Merge when the oldest waiting change is this old (0: every batch merges).
    pub every: Duration,
    /// ... or when this many changes are waiting.
    pub max_changes: u64,
}

impl Default for MergePolicy {
    fn default() -> Self {
        MergePolicy {
            every: Duration::from_secs(MERGE_EVERY_SECS.default),
            max_changes: MERGE_MAX_CHANGES.default,
        }
    }
}

/// The changes published on top of the latest `customer_tags` version, not merged yet.
#[derive(Debug, Clone, Default)]
pub struct Live {
    /// The tags they touch (the partitions the next merge rewrites).
    pub tags: BTreeSet<String>,
    /// Feed rows waiting.
    pub changes: u64,
    /// ... by kind.
    pub counts: ChangeCounts,
    /// Since when the oldest has waited.
    pub since: Option<Instant>,
}

impl Live {
    pub fn is_empty(&self) -> bool {
        self.changes == 0
    }

    /// Whether a batch adding `changes` more should merge.
    pub fn due(&self, policy: &MergePolicy, changes: u64) -> bool {
        let waited = self.since.map_or(Duration::ZERO, |since| since.elapsed());
        policy.every.is_zero() || waited >= policy.every || self.changes + changes >= policy.max_changes.max(1)
    }

    /// Record a batch's changes as waiting.
    pub fn add(&mut self, tags: &[String], counts: ChangeCounts) {
        if counts.total() == 0 {
            return;
        }
        self.tags.extend(tags.iter().cloned());
        self.changes += counts.total() as u64;
        self.counts.entered += counts.entered;
        self.counts.exited += counts.exited;
        self.counts.changed += counts.changed;
        self.since.get_or_insert_with(Instant::now);
    }

    /// The live changes of feed rows read back (a session starting on unmerged changes
    /// merges them within the policy's time).
    pub fn of(rows: &[RecordBatch]) -> Self {
        let mut live = Live::default();
        for batch in rows {
            let mut counts = ChangeCounts::default();
            for kind in text(batch, "change").iter().flatten() {
                match kind {
                    "entered" => counts.entered += 1,
                    "exited" => counts.exited += 1,
                    _ => counts.changed += 1,
                }
            }
            let tags: BTreeSet<String> = text(batch, "tag").iter().flatten().map(String::from).collect();
            live.add(&tags.into_iter().collect::<Vec<_>>(), counts);
        }
        live
    }
}

/// The feed rows on top of `version` (`from_version = to_version = version`), oldest first.
pub async fn live_rows(feed: &DeltaTable, version: u64) -> Result<Vec<RecordBatch>, PublishError> {
    let on = format!("from_version = {version} AND to_version = {version}");
    feed_rows_where(feed, &on, "as_of").await
}

/// The live feed rows a reader standing on `customer_tags` version `version` applies: those
/// on it and those on later versions a background merge has not committed yet
/// (`from_version = to_version >= version`), in publish order.
pub async fn view_rows(feed: &DeltaTable, version: u64) -> Result<Vec<RecordBatch>, PublishError> {
    let from = format!("from_version >= {version} AND to_version = from_version");
    feed_rows_where(feed, &from, "from_version, as_of").await
}

/// The feed's rows where `condition` holds, in `order` (none without a feed).
async fn feed_rows_where(feed: &DeltaTable, condition: &str, order: &str) -> Result<Vec<RecordBatch>, PublishError> {
    if feed.version().is_none() {
        return Ok(Vec::new());
    }
    let ctx = SessionContext::new();
    register(&ctx, feed, CHANGES_TABLE).await?;
    let sql = format!("SELECT * FROM {CHANGES_TABLE} WHERE {condition} ORDER BY {order}");
    collect(&ctx, feed, &sql).await
}

/// The feed rows a reader standing on `customer_tags` version `version` has not applied,
/// in publish order: those of later versions, and the live rows on `version` newer than
/// `live_as_of` (micros; `None`: all of them). Live rows on one version come from one
/// `follow` session's batches, whose as-of times (the wall clock) only grow.
pub async fn changes_after(
    feed: &DeltaTable,
    version: u64,
    live_as_of: Option<i64>,
) -> Result<Vec<RecordBatch>, PublishError> {
    let newer = live_as_of.map_or(String::new(), |micros| format!(" AND CAST(as_of AS BIGINT) > {micros}"));
    let after = format!("to_version > {version} OR (from_version = {version} AND to_version = {version}{newer})");
    feed_rows_where(feed, &after, "COALESCE(from_version, -1), to_version, as_of").await
}

/// `rows` (`customer_tags` rows) with the feed rows `changes` applied in order: the last
/// change of a customer and tag gives its row (none if it exited), with the change's as-of.
pub fn apply(rows: Vec<RecordBatch>, changes: &[RecordBatch]) -> Vec<RecordBatch> {
    // Per tag, per customer: the last change (batch, row).
    let mut last: HashMap<String, HashMap<String, (usize, usize), RandomState>, RandomState> = HashMap::default();
    for (b, batch) in changes.iter().enumerate() {
        let (ids, tags) = (text(batch, "customer_id"), text(batch, "tag"));
        for i in 0..batch.num_rows() {
            last.entry(tags.value(i).to_string())
                .or_default()
                .insert(ids.value(i).to_string(), (b, i));
        }
    }
    if last.is_empty() {
        return rows;
    }
    let mut out: Vec<RecordBatch> = rows
        .into_iter()
        .map(|batch| {
            let (ids, tags) = (text(&batch, "customer_id"), text(&batch, "tag"));
            let keep: BooleanArray = (0..batch.num_rows())
                .map(|i| Some(!last.get(tags.value(i)).is_some_and(|c| c.contains_key(ids.value(i)))))
                .collect();
            filter_record_batch(&batch, &keep).expect("a mask of the batch's length")
        })
        .filter(|b| b.num_rows() > 0)
        .collect();
    let mut entered: Vec<(usize, usize)> = last
        .into_values()
        .flat_map(HashMap::into_values)
        .filter(|&(b, i)| text(&changes[b], "change").value(i) != "exited")
        .collect();
    entered.sort_unstable();
    for (b, batch) in changes.iter().enumerate() {
        let picked: Vec<usize> = entered.iter().filter(|(cb, _)| *cb == b).map(|(_, i)| *i).collect();
        if picked.is_empty() {
            continue;
        }
        let take = |name: &str| -> ArrayRef {
            let indices = arrow::array::UInt32Array::from_iter_values(picked.iter().map(|&i| i as u32));
            arrow::compute::take(batch.column_by_name(name).expect("a feed column"), &indices, None)
                .expect("indices in range")
        };
        let columns: Vec<ArrayRef> = vec![
            take("customer_id"),
            take("family"),
            take("tag"),
            take("new_value"),
            take("new_score"),
            take("as_of"),
        ];
        out.push(row_batch(columns));
    }
    out
}

/// `customer_tags` rows from feed columns (the feed's value columns are nullable; an
/// entered or changed row always has its new value).
fn row_batch(columns: Vec<ArrayRef>) -> RecordBatch {
    let schema = customer_tags_schema();
    let casted: Vec<ArrayRef> = columns
        .into_iter()
        .zip(schema.fields())
        .map(|(c, f)| arrow::compute::cast(&c, f.data_type()).expect("feed columns cast to customer_tags'"))
        .collect();
    debug_assert!(casted[4].as_any().downcast_ref::<Float64Array>().is_some());
    debug_assert!(casted[5].as_any().downcast_ref::<TimestampMicrosecondArray>().is_some());
    RecordBatch::try_new(schema, casted).expect("customer_tags rows from the feed")
}

fn text(batch: &RecordBatch, name: &str) -> StringArray {
    text_column(batch, name).expect("a text column of the feed or customer_tags")
}
