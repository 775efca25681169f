//! Publish: every write to the warehouse's Delta tables. [`tags`] publishes a run's tag rows
//! into `<warehouse>/customer_tags` and appends what changed (`diff`) to
//! `<warehouse>/tag_changes`; this module holds what all tables share (open, write, query a
//! version).
//!
//! Owns: the published tables' schemas and every Delta commit that changes their content.
//! Must not: read landing files or run tag SQL. A failed publish leaves the previous version
//! live: the Delta commit is the single atomic step, data files written before it are
//! invisible to readers until it succeeds.

pub mod background;
pub mod compact;
mod diff;
pub mod erasure;
pub mod history;
pub mod live;
pub mod measures;
pub mod runs;
pub mod snapshots;
pub mod tables;
pub mod tags;
pub mod tasks;

pub use tables::{CHANGES_TABLE, HISTORY_TABLE, RUNS_TABLE, TAGS_TABLE, TASKS_TABLE};

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{ArrayRef, StringArray, TimestampMicrosecondArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use arrow::record_batch::RecordBatch;
use chrono::{DateTime, Utc};
use datafusion::catalog::MemTable;
use datafusion::datasource::provider_as_source;
use datafusion::error::DataFusionError;
use datafusion::logical_expr::{LogicalPlan, LogicalPlanBuilder};
use deltalake::kernel::transaction::CommitProperties;
use deltalake::operations::write::SchemaMode;
use deltalake::parquet::basic::Compression;
use deltalake::parquet::file::properties::WriterProperties;
use deltalake::parquet::schema::types::ColumnPath;
use deltalake::protocol::SaveMode;
use deltalake::{DeltaTable, DeltaTableBuilder, DeltaTableError};
use url::Url;

use crate::jobs::{JobKind, JobRun};
use crate::storage::Location;

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("cannot open Delta table {url}: {source}")]
    Open {
        url: String,
        #[source]
        source: DeltaTableError,
    },
    #[error("cannot commit a new version of {url}: {source}")]
    Commit {
        url: String,
        #[source]
        source: DeltaTableError,
    },
    #[error("cannot read Delta table {url}: {source}")]
    Read {
        url: String,
        #[source]
        source: datafusion::error::DataFusionError,
    },
    #[error("no Delta table at {url} (has `tagflow run` published yet?)")]
    NotFound { url: String },
    #[error("no published version of customer_tags was evaluated at or before {at}{}", earliest.as_ref().map(|e| format!(" (the earliest retained is as of {e})")).unwrap_or_default())]
    NoVersionAt { at: String, earliest: Option<String> },
    #[error("{url} has live changes not merged yet (a follow session stopped before its merge): run `tagflow run` to merge them, then erase")]
    Unmerged { url: String },
    #[error("customer_tags moved under this session: its background merge committed version {found:?}, not {expected} (only the holder of the warehouse lock writes it)")]
    Moved { expected: u64, found: Option<u64> },
    #[error("cannot prepare warehouse folder {url}: {source}")]
    Folder {
        url: String,
        #[source]
        source: std::io::Error,
    },
}

/// Schema of `customer_tags`.
pub fn customer_tags_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("customer_id", DataType::Utf8, false),
        Field::new("family", DataType::Utf8, false),
        Field::new("tag", DataType::Utf8, false),
        Field::new("value", DataType::Utf8, false),
        Field::new("score", DataType::Float64, true),
        Field::new(
            "as_of",
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            false,
        ),
    ]))
}

/// Turn the tag jobs' rows into `customer_tags` rows (measures are not published).
pub fn assemble(runs: &[JobRun], as_of: DateTime<Utc>) -> Vec<RecordBatch> {
    let schema = customer_tags_schema();
    let mut out = Vec::new();
    for run in runs.iter().filter(|r| r.job.kind == JobKind::Tag) {
        let family = run.job.family.as_deref().unwrap_or_default();
        for batch in run.output.to_batches() {
            let n = batch.num_rows();
            let columns: Vec<ArrayRef> = vec![
                batch.column(0).clone(),
                Arc::new(StringArray::from_iter_values(std::iter::repeat_n(family, n))),
                Arc::new(StringArray::from_iter_values(std::iter::repeat_n(
                    run.job.name.as_str(),
                    n,
                ))),
                batch.column(1).clone(),
                batch.column(2).clone(),
                Arc::new(TimestampMicrosecondArray::from(vec![as_of.timestamp_micros(); n]).with_timezone("UTC")),
            ];
            out.push(RecordBatch::try_new(schema.clone(), columns).expect("tag rows are normalised"));
        }
    }
    if out.is_empty() {
        out.push(RecordBatch::new_empty(schema));
    }
    out
}

/// The result of a publish.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Published {
    pub table: String,
    pub version: u64,
    /// Rows in the table at this version.
    pub rows: usize,
    /// Rows this commit wrote (a publish rewrites the partitions of the tags that changed).
    pub rows_written: usize,
    /// Active data files at this version.
    pub files: usize,
    /// Rows that entered, exited or changed value or score (customer_tags only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub changes: Option<tags::ChangeCounts>,
    /// Distinct customers in the table at this version (customer_tags only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub customers: Option<usize>,
    /// The change feed's version after this publish (customer_tags only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub feed_version: Option<u64>,
    /// Whether `customer_tags` got this publish as a new version; `false`: its changes
    /// are live (in the feed, on top of `version`) until the next merge.
    pub merged: bool,
    /// Whether this publish started merging the live changes into the next version in the
    /// background (see `live`).
    #[serde(default)]
    pub merge_started: bool,
}

/// Parquet settings of the files a publish writes: Snappy (delta-rs' default), and no
/// dictionary for `customer_id`, whose values hardly repeat within a file (encoding one
/// first and then falling back to plain costs time and saves nothing).
pub(crate) fn writer_properties() -> WriterProperties {
    WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .set_column_dictionary_enabled(ColumnPath::from("customer_id"), false)
        .build()
}

/// Rows to write, as a scan of one partition per core: delta-rs then writes the table's
/// partitions with as many writers at once (one partition: one writer encodes every file;
/// a merge of ~3.6M rows at 1M customers took over a second of one core).
pub(crate) fn spread_input(batches: Vec<RecordBatch>) -> Result<LogicalPlan, DataFusionError> {
    let schema = batches.first().map_or_else(customer_tags_schema, RecordBatch::schema);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut partitions = vec![Vec::new(); cores.min(batches.len()).max(1)];
    let count = partitions.len();
    for (i, batch) in batches.into_iter().enumerate() {
        partitions[i % count].push(batch);
    }
    let rows = MemTable::try_new(schema, partitions)?;
    LogicalPlanBuilder::scan("rows", provider_as_source(Arc::new(rows)), None)?.build()
}

/// URL of a table under the warehouse.
pub fn table_url(warehouse: &Location, table: &str) -> Url {
    warehouse.child_url(table)
}

pub(crate) async fn open_or_new(warehouse: &Location, table: &str) -> Result<DeltaTable, PublishError> {
    crate::storage::register_object_stores();
    let url = table_url(warehouse, table);
    let open = |source| PublishError::Open {
        url: url.to_string(),
        source,
    };
    warehouse
        .ensure_local_dir(table)
        .map_err(|source| PublishError::Folder {
            url: url.to_string(),
            source,
        })?;
    let options: HashMap<String, String> = warehouse.options.clone().into_iter().collect();
    let mut delta = DeltaTableBuilder::from_url(url.clone())
        .map_err(open)?
        .with_storage_options(options)
        .build()
        .map_err(open)?;
    // Load only an existing table: a new location is not an error, it gets version 0.
    if delta.verify_deltatable_existence().await.map_err(open)? {
        delta.load().await.map_err(open)?;
    }
    Ok(delta)
}

/// Append `batches` to `table` (one new version; appends from concurrent writers do not conflict).
pub async fn append(
    warehouse: &Location,
    table: &str,
    batches: Vec<RecordBatch>,
    metadata: serde_json::Map<String, serde_json::Value>,
) -> Result<Published, PublishError> {
    write(warehouse, table, batches, SaveMode::Append, metadata).await
}

/// Replace the rows of `table` with `batches` (one new version; the schema becomes theirs).
pub async fn replace(
    warehouse: &Location,
    table: &str,
    batches: Vec<RecordBatch>,
    metadata: serde_json::Map<String, serde_json::Value>,
) -> Result<Published, PublishError> {
    write(warehouse, table, batches, SaveMode::Overwrite, metadata).await
}

async fn write(
    warehouse: &Location,
    table: &str,
    batches: Vec<RecordBatch>,
    mode: SaveMode,
    metadata: serde_json::Map<String, serde_json::Value>,
) -> Result<Published, PublishError> {
    let delta = open_or_new(warehouse, table).await?;
    write_to(warehouse, table, delta, batches, mode, metadata).await
}

/// Append `batches` to `delta`, the table `table` opened earlier ([`open_or_new`]). Columns
/// the table lacks are added (a table written by an older tagflow gains them; its earlier
/// rows read them as null).
pub(crate) async fn append_to(
    warehouse: &Location,
    table: &str,
    delta: DeltaTable,
    batches: Vec<RecordBatch>,
    metadata: serde_json::Map<String, serde_json::Value>,
) -> Result<Published, PublishError> {
    write_to(warehouse, table, delta, batches, SaveMode::Append, metadata).await
}

async fn write_to(
    warehouse: &Location,
    table: &str,
    delta: DeltaTable,
    batches: Vec<RecordBatch>,
    mode: SaveMode,
    metadata: serde_json::Map<String, serde_json::Value>,
) -> Result<Published, PublishError> {
    let url = table_url(warehouse, table).to_string();
    let rows = batches.iter().map(|b| b.num_rows()).sum();
    let commit = CommitProperties::default().with_metadata(metadata);
    let mut write = delta.write(batches).with_save_mode(mode);
    match mode {
        SaveMode::Overwrite => write = write.with_schema_mode(SchemaMode::Overwrite),
        SaveMode::Append => write = write.with_schema_mode(SchemaMode::Merge),
        _ => {}
    }
    let delta = write
        .with_table_name(table)
        .with_commit_properties(commit)
        .await
        .map_err(|source| PublishError::Commit { url, source })?;
    Ok(Published {
        table: table.to_string(),
        version: delta.version().unwrap_or_default(),
        rows,
        rows_written: rows,
        files: file_count(&delta),
        changes: None,
        customers: None,
        feed_version: None,
        merged: true,
        merge_started: false,
    })
}

/// Open a published table at its latest version or at `version`.
pub async fn open_published(
    warehouse: &Location,
    table: &str,
    version: Option<u64>,
) -> Result<DeltaTable, PublishError> {
    let url = table_url(warehouse, table).to_string();
    // Readers never create anything, not even an empty local folder.
    if warehouse.local_dir_missing(table) {
        return Err(PublishError::NotFound { url });
    }
    let mut delta = open_or_new(warehouse, table).await?;
    if delta.version().is_none() {
        return Err(PublishError::NotFound { url });
    }
    if let Some(version) = version {
        delta
            .load_version(version)
            .await
            .map_err(|source| PublishError::Open { url, source })?;
    }
    Ok(delta)
}

/// Run a SQL query over a published table (registered under its own name).
pub async fn query_published(
    warehouse: &Location,
    table: &str,
    version: Option<u64>,
    sql: &str,
) -> Result<Vec<RecordBatch>, PublishError> {
    let delta = open_published(warehouse, table, version).await?;
    let ctx = datafusion::prelude::SessionContext::new();
    register(&ctx, &delta, table).await?;
    collect(&ctx, &delta, sql).await
}

/// Register an opened table (at its loaded version) in `ctx` under `name`. Its strings are
/// scanned as `Utf8`, which every caller wants, rather than as views cast back afterwards.
pub(crate) async fn register(
    ctx: &datafusion::prelude::SessionContext,
    delta: &DeltaTable,
    name: &str,
) -> Result<(), PublishError> {
    let read = |source| read_error(delta, source);
    ctx.state_ref()
        .write()
        .config_mut()
        .options_mut()
        .execution
        .parquet
        .schema_force_view_types = false;
    let session = ctx.state();
    delta.update_datafusion_session(&session).map_err(|e| read(e.into()))?;
    let provider = delta
        .table_provider()
        .with_session(Arc::new(session))
        .await
        .map_err(read)?;
    ctx.register_table(name, provider).map_err(read)?;
    Ok(())
}

/// Run `sql` in `ctx`; errors name `delta`'s URL. String columns come back as `Utf8`.
pub(crate) async fn collect(
    ctx: &datafusion::prelude::SessionContext,
    delta: &DeltaTable,
    sql: &str,
) -> Result<Vec<RecordBatch>, PublishError> {
    let read = |source| read_error(delta, source);
    let batches = ctx.sql(sql).await.map_err(read)?.collect().await.map_err(read)?;
    batches
        .iter()
        .map(|b| plain_strings(b).map_err(|e| read(e.into())))
        .collect()
}

fn read_error(delta: &DeltaTable, source: datafusion::error::DataFusionError) -> PublishError {
    PublishError::Read {
        url: delta.table_url().to_string(),
        source,
    }
}

/// Active data files of a loaded table.
pub fn file_count(delta: &DeltaTable) -> usize {
    delta.snapshot().map(|s| s.log_data().num_files()).unwrap_or_default()
}

/// delta-rs scans strings as `Utf8View` and partition columns as dictionaries; callers get
/// plain `Utf8` columns.
pub(crate) fn plain_strings(batch: &RecordBatch) -> Result<RecordBatch, arrow::error::ArrowError> {
    let mut fields = Vec::with_capacity(batch.num_columns());
    let mut columns = Vec::with_capacity(batch.num_columns());
    for (field, column) in batch.schema().fields().iter().zip(batch.columns()) {
        let text = |t: &DataType| matches!(t, DataType::Utf8View | DataType::LargeUtf8 | DataType::Utf8);
        let is_text = match field.data_type() {
            DataType::Utf8 => false,
            DataType::Dictionary(_, value) => text(value),
            other => text(other),
        };
        if is_text {
            fields.push(field.as_ref().clone().with_data_type(DataType::Utf8));
            columns.push(arrow::compute::cast(column, &DataType::Utf8)?);
        } else {
            fields.push(field.as_ref().clone());
            columns.push(column.clone());
        }
    }
    RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)
}
