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

use super::background::at_lowest_priority;
use super::compact::CompactionSettings;
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
    /// When a version is compacted after its merge: a micro-batch's merge whose version is
    /// due runs in the batch instead of the background, so that compaction follows it
    /// before any change is published on top (`None`: no version is).
    pub compaction: Option<CompactionSettings>,
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
    /// The live changes on the latest version, or, while a merge runs, on the version it
    /// writes.
    live: Live,
    /// A merge of the live changes writing the next version in the background.
    merging: Option<Merging>,
    /// A version a background merge committed that the feed does not mark covered yet (the
    /// next feed commit does).
    uncovered: Option<u64>,
}

/// A background merge: `customer_tags` version `version` being written from the live view
/// on the version before it, on a thread of its own at the lowest CPU priority.
struct Merging {
    version: u64,
    /// Gives the version it committed. It opens `customer_tags` on its own runtime and
    /// hands back no table: an object store's client keeps connections on the runtime
    /// that opened them, which ends with the thread.
    task: Option<std::thread::JoinHandle<Result<Option<u64>, PublishError>>>,
}

impl Merging {
    /// The merged version, once the merge is done (`wait`: waiting for it; else
    /// `Err(self)` while it runs).
    async fn finished(mut self, wait: bool) -> Result<Result<u64, PublishError>, Self> {
        let task = self.task.take().expect("a merge's task is taken once");
        if !wait && !task.is_finished() {
            self.task = Some(task);
            return Err(self);
        }
        let joined = tokio::task::spawn_blocking(move || task.join())
            .await
            .expect("joining a merge's thread does not panic");
        let committed = match joined {
            Ok(committed) => committed,
            Err(panic) => std::panic::resume_unwind(panic),
        };
        Ok(committed.and_then(|found| match found == Some(self.version) {
            true => Ok(self.version),
            false => Err(PublishError::Moved {
                expected: self.version,
                found,
            }),
        }))
    }
}

impl Merging {
    /// Start writing the version after `table`'s from `view` (the live view: `table` with
    /// the `live` changes on it), rewriting the partitions of the tags they touch, with
    /// `metadata`.
    fn start(
        warehouse: &Location,
        table: &DeltaTable,
        view: MaskedRows,
        live: &Live,
        metadata: Map<String, Value>,
    ) -> Self {
        let version = table.version().expect("a merge of live changes has a version under it") + 1;
        let tags: Vec<String> = live.tags.iter().cloned().collect();
        let (warehouse, url) = (warehouse.clone(), table_url(warehouse, TAGS_TABLE).to_string());
        let commit = CommitProperties::default().with_metadata(metadata);
        info!(
            version,
            changes = live.changes,
            "merging the live changes in the background"
        );
        let task = at_lowest_priority("tagflow-merge", move || async move {
            let table = super::open_published(&warehouse, TAGS_TABLE, Some(version - 1)).await?;
            let (table, _) = replace_partitions(table, view, tags, commit)
                .await
                .map_err(|source| PublishError::Commit { url, source })?;
            Ok(table.version())
        });
        Merging {
            version,
            task: Some(task),
        }
    }
}

impl Drop for Merging {
    /// A merge dropped unfinished (a failed batch, a stopped session) is waited for: the
    /// next base opened must see its version, or no new version at all, never a commit
    /// landing under it.
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            let _ = task.join();
        }
    }
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
                merging: None,
                uncovered: None,
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
        let (table, feed) = finish_merges(warehouse, table, feed, settings).await?;
        let (rows, live) = match table.version() {
            None => (MaskedRows::default(), Live::default()),
            Some(version) => {
                let (rows, changes) = tokio::try_join!(all_rows(&table), live::view_rows(&feed, version))?;
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
            merging: None,
            uncovered: None,
        })
    }

    /// Take a background merge's version if it is done (`wait`: once it is): the table
    /// moves to it, which the next feed commit marks covered.
    async fn settle(mut self, wait: bool) -> Result<Self, PublishError> {
        let Some(merging) = self.merging.take() else {
            return Ok(self);
        };
        match merging.finished(wait).await {
            Err(running) => self.merging = Some(running),
            Ok(merged) => {
                let version = merged?;
                let (mut table, feed) = self.tables.take().expect("a merging base has its tables");
                table
                    .update_incremental(Some(version))
                    .await
                    .map_err(|source| open_error_of(&table, source))?;
                self.tables = Some((table, feed));
                self.uncovered = Some(version);
                info!(version, "the background merge committed");
            }
        }
        Ok(self)
    }

    /// End a session: wait for a merge under way and mark its version covered in the feed.
    pub async fn finish(self, warehouse: &Location, settings: &TableSettings) -> Result<(), PublishError> {
        let mut base = self.settle(true).await?;
        if let (Some(version), Some((_, feed))) = (base.uncovered.take(), base.tables.take()) {
            append_live(warehouse, feed, settings, Vec::new(), version, Some(version)).await?;
        }
        Ok(())
    }

    /// Both tables and the rows; tables not opened yet are opened now.
    async fn into_parts(self, warehouse: &Location, settings: &TableSettings) -> Result<Parts, PublishError> {
        let mut loaded = match self.tables {
            Some(_) => self,
            None => Self::load(warehouse, settings).await?,
        };
        let (table, feed) = loaded.tables.take().expect("a loaded base has its tables");
        Ok(Parts {
            table,
            feed,
            rows: std::mem::take(&mut loaded.rows),
            live: std::mem::take(&mut loaded.live),
            merging: loaded.merging.take(),
            uncovered: loaded.uncovered.take(),
        })
    }

    /// This base if neither table has a newer version, else the base read again. Only a
    /// holder of the warehouse lock writes them, so between two batches of one `follow`
    /// session that is a compaction at most (new files, the same rows).
    pub async fn refresh(self, warehouse: &Location, settings: &TableSettings) -> Result<Self, PublishError> {
        // A merge of this session's writes the next version: nobody else does.
        if self.merging.is_some() {
            return Ok(self);
        }
        let mut this = self;
        let Some((mut table, mut feed)) = this.tables.take() else {
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
            this.tables = Some((table, feed));
            return Ok(this);
        }
        Self::read(warehouse, table, feed, settings).await
    }

    /// `customer_tags` at the base's version, if it has a folder.
    pub fn table(&self) -> Option<&DeltaTable> {
        self.tables.as_ref().map(|(table, _)| table)
    }
}

/// A base taken apart for a publish.
struct Parts {
    table: DeltaTable,
    feed: DeltaTable,
    rows: MaskedRows,
    live: Live,
    merging: Option<Merging>,
    uncovered: Option<u64>,
}

/// Publish `update` on top of `base`: its changes go to `tag_changes`, and into
/// `customer_tags` as one new version when the update is a whole evaluation's (or the
/// first publish). A micro-batch's changes stay live in the feed; when [`MergePolicy`]
/// says they have waited enough, a merge writes them into the next version in the
/// background while the next batches publish on top of it (see [`live`]). A whole update
/// waits for a merge under way first. Returns the publish and the base of the next one.
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
    let base = base.settle(update.narrowed.is_none()).await?;
    let Parts {
        table,
        feed,
        rows: old_rows,
        live,
        merging,
        uncovered,
    } = base.into_parts(warehouse, settings).await?;
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
    let mut metadata = update.metadata;
    metadata.insert(META_AS_OF.into(), json!(update.as_of.to_rfc3339()));
    metadata.insert(META_ROWS.into(), json!(stats.rows));
    metadata.insert(META_CUSTOMERS.into(), json!(stats.customers));
    metadata.insert(META_SEGMENTS.into(), json!(stats.segments));
    // A micro-batch publishes live, and merges in the background when the policy says so,
    // unless the merged version is due for compaction.
    let compacts_next = |version: u64| {
        let compaction = update.compaction.as_ref();
        compaction.is_some_and(|c| c.due(version + 1, file_count(&table)))
    };
    let merge_in_batch = from_version.is_some_and(|version| {
        merging.is_none() && live.due(&update.policy, counts.total() as u64) && compacts_next(version)
    });
    if from_version.is_some() && narrowed.is_some() && !merge_in_batch {
        let batch = LiveBatch {
            changes: &changes,
            counts,
            changed_tags: &changed_tags,
            stats,
            as_of: update.as_of,
        };
        let base = TagsBase {
            tables: Some((table, feed)),
            rows,
            live,
            merging,
            uncovered,
        };
        return publish_live((warehouse, settings), base, batch, update.policy, metadata).await;
    }
    assert!(merging.is_none(), "a whole update waits for the merge under way");

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
        Some(_) => replace_partitions(table, rows.clone(), rewritten, commit)
            .await
            .map_err(commit_error)?,
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
        merge_started: false,
    };
    let next = TagsBase {
        tables: Some((table, feed)),
        rows,
        live: Live::default(),
        merging: None,
        uncovered: None,
    };
    Ok((published, next))
}

/// Replace the partitions of `tags` in `customer_tags` by the rows of those tags in `rows`,
/// as one new version with `commit`: cheaper than a row-level merge when, as usual, most
/// of a partition's rows are rewritten anyway. Returns the table at its new version and
/// the rows written.
async fn replace_partitions(
    table: DeltaTable,
    rows: MaskedRows,
    tags: Vec<String>,
    commit: CommitProperties,
) -> Result<(DeltaTable, usize), deltalake::DeltaTableError> {
    if tags.is_empty() {
        return Ok((commit_actions(table, Vec::new(), commit).await?, 0));
    }
    let predicate = format!("tag IN ({})", sql_list(&tags));
    let mut written_rows =
        blocking(move || rows.select(|b| diff::tag_mask(b, |tag| tags.iter().any(|t| t == tag)))).await;
    if written_rows.is_empty() {
        // Every row of the rewritten tags exited: the partitions are replaced by nothing.
        written_rows.push(RecordBatch::new_empty(customer_tags_schema()));
    }
    let written = written_rows.iter().map(|b| b.num_rows()).sum();
    let input = spread_input(written_rows)?;
    let table = table
        .write(Vec::new())
        .with_input_plan(input)
        .with_save_mode(SaveMode::Overwrite)
        .with_replace_where(predicate)
        .with_writer_properties(writer_properties())
        .with_commit_properties(commit)
        .into_future()
        .instrument(info_span!("write"))
        .await?;
    Ok((table, written))
}

/// What a micro-batch publishes live: its changes with their counts and tags, the figures
/// of the view after it, and its as-of time.
struct LiveBatch<'a> {
    changes: &'a [RecordBatch],
    counts: ChangeCounts,
    changed_tags: &'a [String],
    stats: diff::Figures,
    as_of: DateTime<Utc>,
}

/// Publish a micro-batch's changes as live changes: one append to the feed (none when
/// nothing changed and no merged version waits to be covered), no new `customer_tags`
/// version. The rows go on the latest version, or on the version a merge under way
/// writes. When `policy` says the live changes have waited enough and no merge runs, a
/// merge of the view after this batch (`base.rows`) into the next version starts in the
/// background. `metadata`: that version's commit metadata.
async fn publish_live(
    (warehouse, settings): (&Location, &TableSettings),
    base: TagsBase,
    batch: LiveBatch<'_>,
    policy: MergePolicy,
    mut metadata: Map<String, Value>,
) -> Result<(Published, TagsBase), PublishError> {
    let TagsBase {
        tables,
        rows,
        mut live,
        mut merging,
        uncovered,
    } = base;
    let (table, feed) = tables.expect("a base taken apart has its tables");
    let version = table.version().expect("live changes are on top of a version");
    let on = merging.as_ref().map_or(version, |m| m.version);
    let appended = feed_rows(batch.changes, Some(on), on, batch.as_of);
    let feed = match appended.is_empty() && uncovered.is_none() {
        true => feed,
        false => {
            append_live(warehouse, feed, settings, appended, on, uncovered)
                .instrument(info_span!("feed"))
                .await?
        }
    };
    // Not in the publish that covers a merge: one merge at a time, each seen whole.
    let due = merging.is_none() && uncovered.is_none() && live.due(&policy, batch.counts.total() as u64);
    live.add(batch.changed_tags, batch.counts);
    if due {
        metadata.insert(META_CHANGES.into(), json!(live.counts));
        merging = Some(Merging::start(warehouse, &table, rows.clone(), &live, metadata));
        live = Live::default();
    }
    let published = Published {
        table: TAGS_TABLE.to_string(),
        version,
        rows: batch.stats.rows,
        rows_written: 0,
        files: file_count(&table),
        changes: Some(batch.counts),
        customers: Some(batch.stats.customers),
        feed_version: feed.version(),
        merged: false,
        merge_started: due,
    };
    let next = TagsBase {
        tables: Some((table, feed)),
        rows,
        live,
        merging,
        uncovered: None,
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
    let covers = (from != Some(to)).then_some(to);
    append_rows(warehouse, feed, settings, rows, staged, (from, to), covers).await
}

/// Append live rows on version `on` (none: a commit of no rows) to the feed, marking
/// version `covers` covered (a merge committed in the background). Returns the feed at its
/// new version.
async fn append_live(
    warehouse: &Location,
    feed: DeltaTable,
    settings: &TableSettings,
    rows: Vec<RecordBatch>,
    on: u64,
    covers: Option<u64>,
) -> Result<DeltaTable, PublishError> {
    append_rows(warehouse, feed, settings, rows, None, (Some(on), on), covers).await
}

/// Append `rows` (the changes `from` → `to`, already written as `staged` or written now),
/// marking `customer_tags` version `covers` covered.
async fn append_rows(
    warehouse: &Location,
    feed: DeltaTable,
    settings: &TableSettings,
    rows: Vec<RecordBatch>,
    staged: Option<Result<Vec<Action>, deltalake::DeltaTableError>>,
    (from, to): (Option<u64>, u64),
    covers: Option<u64>,
) -> Result<DeltaTable, PublishError> {
    let url = table_url(warehouse, CHANGES_TABLE).to_string();
    let commit_error = |source| PublishError::Commit {
        url: url.clone(),
        source,
    };
    let live = from == Some(to);
    let metadata = json!({ "tagflow.from_version": from, "tagflow.to_version": to, "tagflow.live": live });
    let mut commit = CommitProperties::default().with_metadata(metadata.as_object().cloned().unwrap_or_default());
    if let Some(covered) = covers {
        commit = commit.with_application_transaction(Transaction::new(FEED_APP, covered as i64));
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

/// The latest `customer_tags` version the feed (at its loaded version) marks covered: its
/// changes are in the feed and it is committed. `None` before the first.
pub async fn covered_version(feed: &DeltaTable) -> Result<Option<u64>, PublishError> {
    if feed.version().is_none() {
        return Ok(None);
    }
    let covered = feed
        .snapshot()
        .map_err(|source| open_error_of(feed, source))?
        .transaction_version(feed.log_store().as_ref(), FEED_APP)
        .await
        .map_err(|source| open_error_of(feed, source))?;
    Ok(covered.map(|c| c as u64))
}

/// Write the versions a background merge never committed (its session died while it
/// ran): while the feed has live rows on a version after the latest, that version is
/// written from the latest with the rows live on it (what the merge was writing) and
/// marked covered, so the rows on it are live on a version again. Returns both tables at
/// their new versions.
async fn finish_merges(
    warehouse: &Location,
    mut table: DeltaTable,
    mut feed: DeltaTable,
    settings: &TableSettings,
) -> Result<(DeltaTable, DeltaTable), PublishError> {
    loop {
        let Some(version) = table.version() else {
            return Ok((table, feed));
        };
        if live::view_rows(&feed, version + 1).await?.is_empty() {
            return Ok((table, feed));
        }
        warn!(
            version = version + 1,
            "a background merge did not commit; writing its version from the rows live on the one before"
        );
        let on = live::live_rows(&feed, version).await?;
        let rows = live::apply(all_rows(&table).await?, &on);
        let figures = {
            let rows = rows.clone();
            blocking(move || diff::figures(&[], &rows, None)).await
        };
        let newest = on
            .iter()
            .filter_map(|b| {
                b.column_by_name("as_of")?
                    .as_any()
                    .downcast_ref::<TimestampMicrosecondArray>()
                    .cloned()
            })
            .filter_map(|times| arrow::compute::max(&times))
            .max()
            .and_then(DateTime::from_timestamp_micros)
            .unwrap_or_else(Utc::now);
        let live = Live::of(&on);
        let metadata = json!({
            META_AS_OF: newest.to_rfc3339(),
            META_ROWS: figures.rows,
            META_CUSTOMERS: figures.customers,
            META_SEGMENTS: figures.segments,
            META_CHANGES: live.counts,
        });
        let commit = CommitProperties::default().with_metadata(metadata.as_object().cloned().unwrap_or_default());
        let tags = live.tags.into_iter().collect();
        let url = table_url(warehouse, TAGS_TABLE).to_string();
        table = replace_partitions(table, MaskedRows::from_batches(rows), tags, commit)
            .await
            .map_err(|source| PublishError::Commit { url, source })?
            .0;
        feed = append_live(warehouse, feed, settings, Vec::new(), version + 1, Some(version + 1)).await?;
    }
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
    let covered = covered_version(&feed).await?;
    let first = covered.map_or(0, |c| c + 1);
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

/// The live rows a reader of `customer_tags` version `version` applies ([`live::view_rows`])
/// in the feed at `feed_version` (the latest if `None`); none without a feed.
async fn live_changes_on(
    warehouse: &Location,
    version: u64,
    feed_version: Option<u64>,
) -> Result<Vec<RecordBatch>, PublishError> {
    match super::open_published(warehouse, CHANGES_TABLE, feed_version).await {
        Ok(feed) => live::view_rows(&feed, version).await,
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

/// An error opening `table` (at its own URL).
fn open_error_of(table: &DeltaTable, source: deltalake::DeltaTableError) -> PublishError {
    PublishError::Open {
        url: table.table_url().to_string(),
        source,
    }
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
