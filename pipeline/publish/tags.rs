//! Publishing tags: a run's tag rows become one new version of `customer_tags` by one Delta
//! write that replaces the partitions of the tags that changed, and the changes are appended
//! to the change feed `tag_changes` (one row per customer and tag that entered, exited or
//! changed). A `follow` micro-batch that is not due to merge appends its changes to the feed
//! only, as live changes on top of the latest version ([`super::live`]).
//!
//! `customer_tags` is partitioned by `tag`: a segment read opens one partition, and a publish
//! rewrites only the partitions of tags with changed rows. A row's
//! `as_of` is the as-of time of the publish that last gave it its value and score; the
//! snapshot's own as-of time is in its commit metadata (`tagflow.as_of`).
//!
//! The two tables cannot commit together. The feed commit carries a Delta application
//! transaction (`tagflow.tag_changes` = the `customer_tags` version it covers), so after a
//! crash between the two commits the next publish finds the versions the feed misses and
//! diffs them from the table's own history: the feed always converges to the versions.
//!
//! A publish starts from a [`TagsBase`]: both tables opened and the latest version's rows in
//! memory, read while the run does its other work (and kept by `follow` between batches).
//! The feed's files are written while the table writes, and committed after it.
//!
//! Owns: the base a publish starts from, the partition write, the feed's rows and its
//! catch-up (what changed is the `diff` module's).
//! Must not: compute tags, or change a published version (compaction does not either).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::IntoFuture;
use std::sync::Arc;

use arrow::array::{ArrayRef, Int64Array, TimestampMicrosecondArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use arrow::record_batch::RecordBatch;
use chrono::{DateTime, Utc};
use datafusion::prelude::SessionContext;
use deltalake::kernel::transaction::{CommitBuilder, CommitProperties};
use deltalake::kernel::{Action, Transaction};
use deltalake::protocol::{DeltaOperation, SaveMode};
use deltalake::writer::{DeltaWriter, RecordBatchWriter};
use deltalake::DeltaTable;
use futures::TryStreamExt;
use serde_json::{json, Map, Value};
use tracing::{info, info_span, warn, Instrument};

use super::diff::{self, Diff};
use super::live::{self, Live, MergePolicy};
use super::tables::CHANGES_TABLE;
pub use super::tables::TAGS_TABLE;
use super::{
    collect, customer_tags_schema, file_count, open_or_new, register, spread_input, table_url, writer_properties,
    PublishError, Published,
};
use crate::jobs::{members, CustomerBits, Numbering};
use crate::storage::masked::MaskedRows;
use crate::storage::rows::{split_batch, text_column};
use crate::storage::Location;

/// Application id of the feed's transactions: the `customer_tags` version covered so far.
const FEED_APP: &str = "tagflow.tag_changes";
/// Commit metadata keys of a tag publish.
pub const META_AS_OF: &str = "tagflow.as_of";
pub const META_SEGMENTS: &str = "tagflow.segments";
pub const META_ROWS: &str = "tagflow.rows";
pub const META_CUSTOMERS: &str = "tagflow.customers";
pub const META_CHANGES: &str = "tagflow.changes";
/// Commit metadata: per tag, the fingerprint of the definition its rows were made with.
pub const META_DEFINITIONS: &str = "tagflow.definitions";

/// Schema of `tag_changes`: a diff's columns, then the versions and the as-of.
pub fn tag_changes_schema() -> SchemaRef {
    let mut fields: Vec<Field> = diff::tag_diff_schema()
        .fields()
        .iter()
        .map(|f| f.as_ref().clone())
        .collect();
    fields.extend([
        Field::new("from_version", DataType::Int64, true),
        Field::new("to_version", DataType::Int64, false),
        Field::new(
            "as_of",
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            false,
        ),
    ]);
    Arc::new(Schema::new(fields))
}

/// How many rows entered, exited or changed in one publish.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct ChangeCounts {
    pub entered: usize,
    pub exited: usize,
    pub changed: usize,
}

impl ChangeCounts {
    pub fn total(&self) -> usize {
        self.entered + self.exited + self.changed
    }
}

/// Table-level settings applied when tagflow creates a table.
#[derive(Debug, Clone)]
pub struct TableSettings {
    /// Write a Delta checkpoint every this many commits.
    pub checkpoint_interval: u32,
    /// How long removed files stay for readers of older versions (vacuum retention).
    pub file_retention: std::time::Duration,
}

impl TableSettings {
    pub(crate) fn configuration(&self) -> HashMap<String, Option<String>> {
        HashMap::from([
            (
                "delta.checkpointInterval".to_string(),
                Some(self.checkpoint_interval.to_string()),
            ),
            (
                "delta.deletedFileRetentionDuration".to_string(),
                Some(format!("interval {} seconds", self.file_retention.as_secs())),
            ),
        ])
    }
}

/// A run's tag rows and what they replace.
pub struct TagsUpdate {
    /// `customer_tags` rows (every row's `as_of` is the run's as-of time).
    pub rows: Vec<RecordBatch>,
    /// The tags these rows replace; `None`: the whole table (a tag no longer in the catalog
    /// exits). A partial run (`--jobs`) leaves every other tag's rows as they are.
    pub scope: Option<Vec<String>>,
    pub as_of: DateTime<Utc>,
    /// Extra commit metadata (run id, state version).
    pub metadata: Map<String, Value>,
    /// A micro-batch's update: `rows` hold only what may have changed.
    pub narrowed: Option<Narrowed>,
    /// When live changes merge into `customer_tags`.
    pub policy: MergePolicy,
}

/// What a micro-batch's rows cover: every row of the tags in `whole` (evaluated for
/// everyone) and, of the other tags, the rows of `customers`; every other row of the base
/// stays as it is. The diff then covers these rows only.
pub struct Narrowed {
    pub whole: BTreeSet<String>,
    pub customers: CustomerBits,
    pub numbering: Arc<Numbering>,
    /// Customers per value of every tag after the batch (the jobs keep them up to date).
    pub segments: BTreeMap<String, BTreeMap<String, u64>>,
}

impl Narrowed {
    /// The rows of `rows` this update covers (copied out), and the view without them
    /// (masked, not copied: [`MaskedRows`]).
    fn split(&self, mut rows: MaskedRows) -> (Vec<RecordBatch>, MaskedRows) {
        let taken = rows.take(self.numbering.as_ref(), |batch| {
            let customers = members(&self.numbering.numbers(batch), &self.customers);
            if self.whole.is_empty() {
                return customers;
            }
            let whole = diff::tag_mask(batch, |tag| self.whole.contains(tag));
            arrow::compute::or(&customers, &whole).expect("masks of one batch")
        });
        (taken, rows)
    }
}

/// What a publish starts from: `customer_tags` and `tag_changes` opened at their latest
/// versions (the feed caught up with the table) and the rows of that `customer_tags`
/// version in memory. Opening it is independent of a run's other work, so a run opens it
/// while it reads; a publish returns the base of the next one, so `follow` reads the table
/// once per session instead of once per batch.
pub struct TagsBase {
    /// `None` while a local warehouse has no folder for either table: opening one would
    /// create it, and nothing is created before a run publishes.
    tables: Option<(DeltaTable, DeltaTable)>,
    /// The live view: the version's rows with the live changes on top of it applied.
    rows: MaskedRows,
    live: Live,
}

impl TagsBase {
    /// Join the live view's small parts (a whole evaluation's rows come in thousands of
    /// batches; [`MaskedRows::joined`]), so that the micro-batches after it do not.
    pub fn join_view(&mut self, numbering: &Numbering) {
        self.rows = std::mem::take(&mut self.rows).joined(numbering);
    }

    /// The live view's rows.
    pub fn rows(&self) -> &MaskedRows {
        &self.rows
    }

    /// Open both tables and read `customer_tags`' rows (none before the first publish).
    pub async fn open(warehouse: &Location, settings: &TableSettings) -> Result<Self, PublishError> {
        if [TAGS_TABLE, CHANGES_TABLE]
            .iter()
            .any(|t| warehouse.local_dir_missing(t))
        {
            return Ok(Self {
                tables: None,
                rows: MaskedRows::default(),
                live: Live::default(),
            });
        }
        Self::load(warehouse, settings).await
    }

    /// Open both tables (creating a missing local folder), catch the feed up and read the rows.
    async fn load(warehouse: &Location, settings: &TableSettings) -> Result<Self, PublishError> {
        let (table, feed) = open_tags_and_feed(warehouse).await?;
        Self::read(warehouse, table, feed, settings).await
    }

    async fn read(
        warehouse: &Location,
        table: DeltaTable,
        feed: DeltaTable,
        settings: &TableSettings,
    ) -> Result<Self, PublishError> {
        let (feed, _) = catch_up(warehouse, &table, feed, settings).await?;
        let (rows, live) = match table.version() {
            None => (MaskedRows::default(), Live::default()),
            Some(version) => {
                let (rows, changes) = tokio::try_join!(all_rows(&table), live::live_rows(&feed, version))?;
                (
                    MaskedRows::from_batches(live::apply(rows, &changes)),
                    Live::of(&changes),
                )
            }
        };
        Ok(Self {
            tables: Some((table, feed)),
            rows,
            live,
        })
    }

    /// Both tables and the rows; tables not opened yet are opened now.
    async fn into_parts(
        self,
        warehouse: &Location,
        settings: &TableSettings,
    ) -> Result<(DeltaTable, DeltaTable, MaskedRows, Live), PublishError> {
        let loaded = match self.tables {
            Some(_) => self,
            None => Self::load(warehouse, settings).await?,
        };
        let (table, feed) = loaded.tables.expect("a loaded base has its tables");
        Ok((table, feed, loaded.rows, loaded.live))
    }

    /// This base if neither table has a newer version, else the base read again. Only a
    /// holder of the warehouse lock writes them, so between two batches of one `follow`
    /// session that is a compaction at most (new files, the same rows).
    pub async fn refresh(self, warehouse: &Location, settings: &TableSettings) -> Result<Self, PublishError> {
        let Some((mut table, mut feed)) = self.tables else {
            return Self::open(warehouse, settings).await;
        };
        let known = (table.version(), feed.version());
        if known.0.is_none() || known.1.is_none() {
            return Self::load(warehouse, settings).await;
        }
        tokio::try_join!(
            async {
                table
                    .update_incremental(None)
                    .await
                    .map_err(|e| open_error(warehouse, TAGS_TABLE, e))
            },
            async {
                feed.update_incremental(None)
                    .await
                    .map_err(|e| open_error(warehouse, CHANGES_TABLE, e))
            },
        )?;
        if (table.version(), feed.version()) == known {
            return Ok(Self {
                tables: Some((table, feed)),
                rows: self.rows,
                live: self.live,
            });
        }
        Self::read(warehouse, table, feed, settings).await
    }

    /// `customer_tags` at the base's version, if it has a folder.
    pub fn table(&self) -> Option<&DeltaTable> {
        self.tables.as_ref().map(|(table, _)| table)
    }

    /// Whether changes are published on top of the latest `customer_tags` version and not
    /// merged into it yet.
    pub fn has_live_changes(&self) -> bool {
        !self.live.is_empty()
    }
}

/// Publish `update` on top of `base`: its changes go to `tag_changes`, and into
/// `customer_tags` as one new version when this batch merges (always, unless the update is
/// a micro-batch's and [`MergePolicy`] says the live changes can wait; see [`live`]).
/// Returns the publish and the base of the next one.
///
/// Long on purpose: diff, figures, data files, the two commits and the next base form one
/// sequence whose order is the crash-safety argument (data files first, then the table's
/// commit, then the feed's, which a later publish catches up); kept in one place so it reads
/// in that order.
pub async fn publish_tags(
    warehouse: &Location,
    base: TagsBase,
    update: TagsUpdate,
    settings: &TableSettings,
) -> Result<(Published, TagsBase), PublishError> {
    let (table, feed, old_rows, live) = base.into_parts(warehouse, settings).await?;
    let from_version = table.version();
    let new_rows = update.rows;
    let narrowed = update.narrowed.map(Arc::new);
    // A micro-batch compares only the rows it covers; the others stay as they are.
    let (old_covered, old_rest) = match &narrowed {
        Some(narrowed) => narrowed.split(old_rows),
        None => (old_rows.to_batches(), MaskedRows::default()),
    };
    // The comparison of the old and new rows serves the feed (the changed rows) and the
    // write (every new row of a changed tag); a whole update's next version's figures are
    // counted beside it. Both off the runtime's threads.
    let compare = {
        let (old, new, scope) = (old_covered.clone(), new_rows.clone(), update.scope.clone());
        let numbering = narrowed.as_ref().map(|n| n.numbering.clone());
        blocking(move || diff::diff(&old, &new, scope.as_deref(), numbering.as_deref()))
    };
    let count = {
        // A whole update covers every old row.
        let (old, new, scope) = (old_covered.clone(), new_rows.clone(), update.scope.clone());
        let whole = narrowed.is_none();
        blocking(move || whole.then(|| diff::figures(&old, &new, scope.as_deref())))
    };
    let (compared, stats) = tokio::join!(
        compare.instrument(info_span!("diff")),
        count.instrument(info_span!("stats"))
    );
    let Diff {
        changes,
        counts,
        changed_tags,
        next_rows,
    } = compared;
    // The next live view: the rows not covered, the covered rows of unchanged tags, and
    // every new row of a changed tag.
    let mut rows = old_rest;
    let mut added = diff::without_tags(&old_covered, &changed_tags);
    added.extend(next_rows.iter().cloned());
    rows = match &narrowed {
        Some(narrowed) => {
            rows.extend_joined(narrowed.numbering.as_ref(), added);
            let taken = old_covered.iter().map(|b| b.num_rows()).sum::<usize>();
            rows.compacted(narrowed.numbering.as_ref(), 2 * taken)
        }
        None => {
            rows.extend(added);
            rows
        }
    };
    let stats = match (stats, &narrowed) {
        (Some(stats), _) => stats,
        (None, Some(narrowed)) => diff::Figures {
            rows: rows.row_count(),
            customers: narrowed.numbering.customers_of(&rows).len(),
            segments: narrowed.segments.clone(),
        },
        (None, None) => unreachable!("a whole update counts its figures"),
    };
    let merge = from_version.is_none() || narrowed.is_none() || live.due(&update.policy, counts.total() as u64);
    if !merge {
        let batch = (&changes[..], counts, &changed_tags[..]);
        return publish_live(
            (warehouse, settings),
            (table, feed),
            rows,
            live,
            batch,
            stats,
            update.as_of,
        )
        .await;
    }

    let mut metadata = update.metadata;
    metadata.insert(META_AS_OF.into(), json!(update.as_of.to_rfc3339()));
    metadata.insert(META_ROWS.into(), json!(stats.rows));
    metadata.insert(META_CUSTOMERS.into(), json!(stats.customers));
    metadata.insert(META_SEGMENTS.into(), json!(stats.segments));
    metadata.insert(META_CHANGES.into(), json!(counts));
    let commit = CommitProperties::default().with_metadata(metadata);
    let url = table_url(warehouse, TAGS_TABLE).to_string();
    let commit_error = |source| PublishError::Commit {
        url: url.clone(),
        source,
    };

    // The feed's files are encoded while the table writes and committed after it: they
    // name the version the table commit gets, the next one (only the holder of the
    // warehouse lock writes), or are written again if it got another.
    let next_version = from_version.map_or(0, |v| v + 1);
    let appended = feed_rows(&changes, from_version, next_version, update.as_of);
    let staging = (feed.version().is_some() && !appended.is_empty())
        .then(|| Background::spawn(stage_feed(feed.clone(), appended.clone()).instrument(info_span!("stage_feed"))));
    // The partitions rewritten: the tags this batch changed, and those with live changes.
    let mut rewritten: BTreeSet<String> = changed_tags.iter().cloned().collect();
    rewritten.extend(live.tags.iter().cloned());
    let rewritten: Vec<String> = rewritten.into_iter().collect();
    // Each branch gives the table at its new version and the rows it wrote.
    let (table, rows_written) = match from_version {
        None => {
            let written = new_rows.iter().map(|b| b.num_rows()).sum();
            let table = table
                .write(new_rows.clone())
                .with_save_mode(SaveMode::ErrorIfExists)
                .with_table_name(TAGS_TABLE)
                .with_partition_columns(["tag"])
                .with_configuration(settings.configuration())
                .with_writer_properties(writer_properties())
                .with_commit_properties(commit)
                .await
                .map_err(commit_error)?;
            rows = MaskedRows::from_batches(new_rows);
            (table, written)
        }
        Some(_) if rewritten.is_empty() => (
            commit_actions(table, Vec::new(), commit).await.map_err(commit_error)?,
            0,
        ),
        Some(_) => {
            // The rewritten tags' partitions are replaced whole: cheaper than a row-level
            // merge when, as usual, most of a partition's rows are rewritten anyway.
            let mut written_rows = {
                let (view, tags) = (rows.clone(), rewritten.clone());
                blocking(move || view.select(|b| diff::tag_mask(b, |tag| tags.iter().any(|t| t == tag)))).await
            };
            if written_rows.is_empty() {
                // Every row of the rewritten tags exited: the partitions are replaced by nothing.
                written_rows.push(RecordBatch::new_empty(customer_tags_schema()));
            }
            let written = written_rows.iter().map(|b| b.num_rows()).sum();
            let input = spread_input(written_rows).map_err(|e| commit_error(e.into()))?;
            let table = table
                .write(Vec::new())
                .with_input_plan(input)
                .with_save_mode(SaveMode::Overwrite)
                .with_replace_where(format!("tag IN ({})", sql_list(&rewritten)))
                .with_writer_properties(writer_properties())
                .with_commit_properties(commit)
                .into_future()
                .instrument(info_span!("write"))
                .await
                .map_err(commit_error)?;
            (table, written)
        }
    };
    let version = table.version().unwrap_or_default();
    let staged = match staging {
        Some(staging) => Some(staging.result().await),
        None => None,
    };
    let feed = match version == next_version {
        true => append_feed(warehouse, feed, settings, appended, staged, from_version, version),
        false => {
            warn!(
                version,
                next_version, "customer_tags committed another version than expected; writing the feed again"
            );
            let appended = feed_rows(&changes, from_version, version, update.as_of);
            append_feed(warehouse, feed, settings, appended, None, from_version, version)
        }
    }
    .instrument(info_span!("feed"))
    .await?;
    let published = Published {
        table: TAGS_TABLE.to_string(),
        version,
        rows: stats.rows,
        rows_written,
        files: file_count(&table),
        changes: Some(counts),
        customers: Some(stats.customers),
        feed_version: feed.version(),
        merged: true,
    };
    let next = TagsBase {
        tables: Some((table, feed)),
        rows,
        live: Live::default(),
    };
    Ok((published, next))
}

/// Publish a micro-batch's changes as live changes on top of `customer_tags`' version: one
/// append to the feed (none when nothing changed), no new `customer_tags` version. Takes
/// `customer_tags` and the feed, the next live view's rows, the live changes so far, the
/// batch's changes with their counts and tags, and the figures of the view.
async fn publish_live(
    (warehouse, settings): (&Location, &TableSettings),
    (table, feed): (DeltaTable, DeltaTable),
    rows: MaskedRows,
    mut live: Live,
    (changes, counts, changed_tags): (&[RecordBatch], ChangeCounts, &[String]),
    stats: diff::Figures,
    as_of: DateTime<Utc>,
) -> Result<(Published, TagsBase), PublishError> {
    let version = table.version().expect("live changes are on top of a version");
    let appended = feed_rows(changes, Some(version), version, as_of);
    let feed = match appended.is_empty() {
        true => feed,
        false => {
            append_feed(warehouse, feed, settings, appended, None, Some(version), version)
                .instrument(info_span!("feed"))
                .await?
        }
    };
    live.add(changed_tags, counts.total() as u64);
    let published = Published {
        table: TAGS_TABLE.to_string(),
        version,
        rows: stats.rows,
        rows_written: 0,
        files: file_count(&table),
        changes: Some(counts),
        customers: Some(stats.customers),
        feed_version: feed.version(),
        merged: false,
    };
    let next = TagsBase {
        tables: Some((table, feed)),
        rows,
        live,
    };
    Ok((published, next))
}

/// A step of the publish run as its own task, so that it uses the other core while the
/// publish goes on; aborted if dropped before its result is taken.
struct Background<T>(tokio::task::JoinSet<T>);

impl<T: Send + 'static> Background<T> {
    fn spawn(step: impl std::future::Future<Output = T> + Send + 'static) -> Self {
        let mut task = tokio::task::JoinSet::new();
        task.spawn(step);
        Self(task)
    }

    async fn result(mut self) -> T {
        match self.0.join_next().await.expect("one task") {
            Ok(output) => output,
            Err(error) => std::panic::resume_unwind(error.into_panic()),
        }
    }
}

/// Run the CPU-bound `work` on the blocking pool, off the runtime's threads (a panic there
/// is resumed here).
async fn blocking<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> T {
    match tokio::task::spawn_blocking(work).await {
        Ok(output) => output,
        Err(error) => std::panic::resume_unwind(error.into_panic()),
    }
}

/// The columns of a `customer_tags` row, in the table's order.
const ROW_COLUMNS: &str = "customer_id, family, tag, value, score, as_of";

/// Rows with `customer_tags`' schema (the comparison's columns are nullable).
fn conform_rows(batches: Vec<RecordBatch>) -> Vec<RecordBatch> {
    let schema = customer_tags_schema();
    batches
        .into_iter()
        .map(|b| RecordBatch::try_new(schema.clone(), b.columns().to_vec()).expect("customer_tags columns"))
        .collect()
}

fn as_of_column(as_of: DateTime<Utc>, rows: usize) -> ArrayRef {
    Arc::new(TimestampMicrosecondArray::from(vec![as_of.timestamp_micros(); rows]).with_timezone("UTC"))
}

/// Commit `actions` (none: a commit that changes no row, which still gets its version and
/// its metadata) as an append to `table`; returns the table at its new version.
pub(crate) async fn commit_actions(
    table: DeltaTable,
    actions: Vec<Action>,
    commit: CommitProperties,
) -> Result<DeltaTable, deltalake::DeltaTableError> {
    let operation = DeltaOperation::Write {
        mode: SaveMode::Append,
        partition_by: None,
        predicate: None,
    };
    let snapshot = table.snapshot()?;
    CommitBuilder::from(commit)
        .with_actions(actions)
        .build(Some(snapshot), table.log_store(), operation)
        .await?;
    let mut table = table;
    table.update_incremental(None).await?;
    Ok(table)
}

/// The feed's rows for `changes` (rows of [`FEED_COLUMNS`]), the move of `customer_tags`
/// from version `from` to `to`.
pub(crate) fn feed_rows(changes: &[RecordBatch], from: Option<u64>, to: u64, as_of: DateTime<Utc>) -> Vec<RecordBatch> {
    let schema = tag_changes_schema();
    changes
        .iter()
        .filter(|b| b.num_rows() > 0)
        .map(|b| {
            let n = b.num_rows();
            let mut columns: Vec<ArrayRef> = ["customer_id", "family", "tag", "change", "old_value", "new_value"]
                .iter()
                .map(|c| {
                    Arc::new(
                        arrow::compute::cast(b.column_by_name(c).expect("diff column"), &DataType::Utf8)
                            .expect("strings"),
                    ) as ArrayRef
                })
                .collect();
            columns.push(b.column_by_name("old_score").expect("diff column").clone());
            columns.push(b.column_by_name("new_score").expect("diff column").clone());
            columns.push(Arc::new(Int64Array::from(vec![from.map(|v| v as i64); n])));
            columns.push(Arc::new(Int64Array::from(vec![to as i64; n])));
            columns.push(as_of_column(as_of, n));
            RecordBatch::try_new(schema.clone(), columns).expect("feed rows match the feed schema")
        })
        .collect()
}

/// Write `rows` as data files of the (existing) feed without committing them: they stay
/// invisible until [`append_feed`] commits their actions, and a vacuum removes them if it
/// never does.
async fn stage_feed(feed: DeltaTable, rows: Vec<RecordBatch>) -> Result<Vec<Action>, deltalake::DeltaTableError> {
    let mut writer = RecordBatchWriter::for_table(&feed)?.with_writer_properties(writer_properties());
    for batch in rows {
        writer.write(batch).await?;
    }
    Ok(writer.flush().await?.into_iter().map(Action::Add).collect())
}

/// Append `rows` (the changes from version `from` to `to`, already written as `staged` or
/// written now) to the feed, opened at its latest version, marking version `to` as
/// covered; live rows (`from` = `to`: on top of version `to`, not merged yet) leave the
/// version covered as it was. Returns the feed at its new version.
pub(crate) async fn append_feed(
    warehouse: &Location,
    feed: DeltaTable,
    settings: &TableSettings,
    rows: Vec<RecordBatch>,
    staged: Option<Result<Vec<Action>, deltalake::DeltaTableError>>,
    from: Option<u64>,
    to: u64,
) -> Result<DeltaTable, PublishError> {
    let url = table_url(warehouse, CHANGES_TABLE).to_string();
    let commit_error = |source| PublishError::Commit {
        url: url.clone(),
        source,
    };
    let live = from == Some(to);
    let metadata = json!({ "tagflow.from_version": from, "tagflow.to_version": to, "tagflow.live": live });
    let mut commit = CommitProperties::default().with_metadata(metadata.as_object().cloned().unwrap_or_default());
    if !live {
        commit = commit.with_application_transaction(Transaction::new(FEED_APP, to as i64));
    }
    if feed.version().is_none() {
        // The first append creates the feed (with its table settings), rows or not.
        let rows = match rows.is_empty() {
            true => vec![RecordBatch::new_empty(tag_changes_schema())],
            false => rows,
        };
        return feed
            .write(rows)
            .with_save_mode(SaveMode::Append)
            .with_table_name(CHANGES_TABLE)
            .with_configuration(settings.configuration())
            .with_writer_properties(writer_properties())
            .with_commit_properties(commit)
            .await
            .map_err(commit_error);
    }
    let actions = match staged {
        Some(staged) => staged,
        None => stage_feed(feed.clone(), rows).await,
    }
    .map_err(commit_error)?;
    commit_actions(feed, actions, commit).await.map_err(commit_error)
}

/// Mark `customer_tags` version `to` as covered by the feed, with no rows: for a commit that
/// changes no row and whose predecessors will not stay readable (an erasure's purge).
pub(crate) async fn cover_feed(warehouse: &Location, settings: &TableSettings, to: u64) -> Result<(), PublishError> {
    let feed = open_or_new(warehouse, CHANGES_TABLE).await?;
    append_feed(warehouse, feed, settings, Vec::new(), None, to.checked_sub(1), to).await?;
    Ok(())
}

/// Bring the feed up to the latest `customer_tags` version: every version it misses (a
/// publish that died after its merge) is diffed against the version before it. Versions
/// that cannot change rows (compaction, vacuum) need no feed rows. Returns the versions
/// caught up.
pub async fn catch_up_feed(warehouse: &Location, settings: &TableSettings) -> Result<usize, PublishError> {
    let (tags, feed) = open_tags_and_feed(warehouse).await?;
    Ok(catch_up(warehouse, &tags, feed, settings).await?.1)
}

/// `customer_tags` and `tag_changes` at their latest versions, opened side by side (each
/// replays its log).
async fn open_tags_and_feed(warehouse: &Location) -> Result<(DeltaTable, DeltaTable), PublishError> {
    tokio::try_join!(
        open_or_new(warehouse, TAGS_TABLE),
        open_or_new(warehouse, CHANGES_TABLE)
    )
}

/// [`catch_up_feed`] with both tables already opened at their latest versions; returns the
/// feed at its new version.
async fn catch_up(
    warehouse: &Location,
    tags: &DeltaTable,
    mut feed: DeltaTable,
    settings: &TableSettings,
) -> Result<(DeltaTable, usize), PublishError> {
    let Some(latest) = tags.version() else {
        return Ok((feed, 0));
    };
    let covered = match feed.version() {
        Some(_) => feed
            .snapshot()
            .map_err(|source| open_error(warehouse, CHANGES_TABLE, source))?
            .transaction_version(feed.log_store().as_ref(), FEED_APP)
            .await
            .map_err(|source| open_error(warehouse, CHANGES_TABLE, source))?,
        None => None,
    };
    let first = covered.map_or(0, |c| c as u64 + 1);
    if first > latest {
        return Ok((feed, 0));
    }
    let infos: Vec<deltalake::kernel::CommitInfo> = tags
        .history(Some((latest - first + 1) as usize))
        .try_collect()
        .await
        .map_err(|source| open_error(warehouse, TAGS_TABLE, source))?;
    let mut caught_up = 0;
    for (version, info) in (first..=latest).rev().zip(&infos).collect::<Vec<_>>().into_iter().rev() {
        let operation = info.operation.as_deref().unwrap_or_default();
        if matches!(operation, "OPTIMIZE" | "VACUUM START" | "VACUUM END") {
            continue;
        }
        let erasure = info.info.get(super::erasure::META_ERASURE).and_then(Value::as_str);
        match erasure {
            Some(_) => info!(version, "recording an erasure's exits in the change feed"),
            None => warn!(
                version,
                "the change feed misses this customer_tags version; diffing it from the table's history"
            ),
        }
        let as_of = info
            .info
            .get(META_AS_OF)
            .and_then(Value::as_str)
            .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
            .map(|t| t.with_timezone(&Utc))
            .or_else(|| info.timestamp.and_then(DateTime::from_timestamp_millis))
            .unwrap_or_else(Utc::now);
        let from = version.checked_sub(1);
        let new = rows_at(warehouse, version).await?;
        // The version before, with the changes published live on top of it (already in
        // the feed) applied: the feed misses only what came after them.
        let old = match from {
            Some(from) => live::apply(rows_at(warehouse, from).await?, &live::live_rows(&feed, from).await?),
            None => Vec::new(),
        };
        let changes = blocking(move || diff::diff(&old, &new, None, None).changes).await;
        let mut rows = feed_rows(&changes, from, version, as_of);
        // An erasure's version: its exits are recorded without naming the customers.
        if let Some(request) = erasure {
            rows = super::erasure::pseudonymise_exits(rows, request);
        }
        feed = append_feed(warehouse, feed, settings, rows, None, from, version).await?;
        caught_up += 1;
    }
    if caught_up > 0 {
        info!(versions = caught_up, "change feed caught up");
    }
    Ok((feed, caught_up))
}

/// What services see (read only): `customer_tags` at a version with the live changes on top
/// of it applied, as `customer_tags` rows. `at`: the `customer_tags` version and the feed
/// version a publish named (`Published::version`, `Published::feed_version`); `None`: the
/// latest of both. Returns the `customer_tags` version.
pub async fn live_view(
    warehouse: &Location,
    at: Option<(u64, Option<u64>)>,
) -> Result<(u64, Vec<RecordBatch>), PublishError> {
    let table = super::open_published(warehouse, TAGS_TABLE, at.map(|(v, _)| v)).await?;
    let version = table.version().unwrap_or_default();
    let feed_version = match at {
        Some((_, None)) => return Ok((version, all_rows(&table).await?)),
        Some((_, feed)) => feed,
        None => None,
    };
    let changes = live_changes_on(warehouse, version, feed_version).await?;
    Ok((version, live::apply(all_rows(&table).await?, &changes)))
}

/// The live rows on `customer_tags` version `version` in the feed at `feed_version` (the
/// latest if `None`); none without a feed.
async fn live_changes_on(
    warehouse: &Location,
    version: u64,
    feed_version: Option<u64>,
) -> Result<Vec<RecordBatch>, PublishError> {
    match super::open_published(warehouse, CHANGES_TABLE, feed_version).await {
        Ok(feed) => live::live_rows(&feed, version).await,
        Err(PublishError::NotFound { .. }) => Ok(Vec::new()),
        Err(error) => Err(error),
    }
}

/// Every row of `customer_tags` at `version`.
async fn rows_at(warehouse: &Location, version: u64) -> Result<Vec<RecordBatch>, PublishError> {
    all_rows(&super::open_published(warehouse, TAGS_TABLE, Some(version)).await?).await
}

/// Every row of `table` (`customer_tags` at the version it is loaded at).
pub(crate) async fn all_rows(table: &DeltaTable) -> Result<Vec<RecordBatch>, PublishError> {
    let ctx = SessionContext::new();
    register(&ctx, table, TAGS_TABLE).await?;
    let all = format!("SELECT {ROW_COLUMNS} FROM {TAGS_TABLE}");
    Ok(conform_rows(collect(&ctx, table, &all).await?))
}

fn open_error(warehouse: &Location, table: &str, source: deltalake::DeltaTableError) -> PublishError {
    PublishError::Open {
        url: table_url(warehouse, table).to_string(),
        source,
    }
}

/// `'a', 'b'`: tag names as a SQL list.
fn sql_list(names: &[String]) -> String {
    let quoted: Vec<String> = names.iter().map(|t| format!("'{}'", t.replace('\'', "''"))).collect();
    match quoted.is_empty() {
        true => "NULL".to_string(),
        false => quoted.join(", "),
    }
}

/// One customer's rows of `customer_tags` at `version`, by family and tag: `family, tag,
/// value, score, as_of`. `None`: now, with the live changes a `follow` session published on
/// top of the latest version (what the lookup API answers).
pub async fn customer_rows(
    warehouse: &Location,
    customer_id: &str,
    version: Option<u64>,
) -> Result<Vec<RecordBatch>, PublishError> {
    let id = customer_id.replace('\'', "''");
    let table = super::open_published(warehouse, TAGS_TABLE, version).await?;
    let ctx = SessionContext::new();
    register(&ctx, &table, TAGS_TABLE).await?;
    let rows = collect(
        &ctx,
        &table,
        &format!("SELECT {ROW_COLUMNS} FROM {TAGS_TABLE} WHERE customer_id = '{id}'"),
    )
    .await?;
    let mut rows = conform_rows(rows);
    if version.is_none() {
        let latest = table.version().unwrap_or_default();
        let changes = live_changes_on(warehouse, latest, None).await?;
        let own: Vec<RecordBatch> = changes
            .iter()
            .filter_map(|b| {
                let ids = text_column(b, "customer_id").expect("the feed's customer_id");
                let mine: arrow::array::BooleanArray = ids.iter().map(|v| Some(v == Some(customer_id))).collect();
                split_batch(b, &mine).0
            })
            .collect();
        rows = live::apply(rows, &own);
    }
    // By family and tag, without the id.
    let ctx = SessionContext::new();
    let schema = customer_tags_schema();
    let table = datafusion::datasource::MemTable::try_new(schema, vec![rows]).map_err(|source| PublishError::Read {
        url: table_url(warehouse, TAGS_TABLE).to_string(),
        source,
    })?;
    let read = |source| PublishError::Read {
        url: table_url(warehouse, TAGS_TABLE).to_string(),
        source,
    };
    ctx.register_table("rows", Arc::new(table)).map_err(read)?;
    ctx.sql("SELECT family, tag, value, score, as_of FROM rows ORDER BY family, tag")
        .await
        .map_err(read)?
        .collect()
        .await
        .map_err(read)
}
