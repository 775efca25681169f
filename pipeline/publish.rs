//! Publish: assemble the tag rows of a run and commit them as one new version of the Delta
//! table `<warehouse>/customer_tags`; read published versions back.
//!
//! Owns: the published table's schema and every write to Delta tables.
//! Must not: read landing files or run tag SQL. A failed publish leaves the previous version
//! live: the Delta commit is the single atomic step, data files written before it are
//! invisible to readers until it succeeds.

use std::collections::HashMap;
use std::sync::{Arc, Once};

use arrow::array::{ArrayRef, StringArray, TimestampMicrosecondArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use arrow::record_batch::RecordBatch;
use chrono::{DateTime, Utc};
use deltalake::kernel::transaction::CommitProperties;
use deltalake::protocol::SaveMode;
use deltalake::{DeltaTable, DeltaTableBuilder, DeltaTableError};
use url::Url;

use crate::jobs::{JobKind, JobRun};
use crate::storage::Location;

/// The published tag table, under the warehouse.
pub const TAGS_TABLE: &str = "customer_tags";

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
        for batch in &run.batches {
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

/// The latest published rows of every tag not in `tags` (none if nothing is published yet).
pub async fn rows_of_other_tags(warehouse: &Location, tags: &[&str]) -> Result<Vec<RecordBatch>, PublishError> {
    let listed: Vec<String> = tags.iter().map(|t| format!("'{}'", t.replace('\'', "''"))).collect();
    let filter = match listed.is_empty() {
        true => String::new(),
        false => format!("WHERE tag NOT IN ({})", listed.join(", ")),
    };
    let sql = format!("SELECT customer_id, family, tag, value, score, as_of FROM {TAGS_TABLE} {filter}");
    let batches = match query_published(warehouse, TAGS_TABLE, None, &sql).await {
        Err(PublishError::NotFound { .. }) => return Ok(Vec::new()),
        other => other?,
    };
    let schema = customer_tags_schema();
    Ok(batches
        .into_iter()
        .map(|b| RecordBatch::try_new(schema.clone(), b.columns().to_vec()).expect("published rows match their schema"))
        .collect())
}

/// The result of a publish.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Published {
    pub table: String,
    pub version: u64,
    pub rows: usize,
}

/// URL of a table under the warehouse.
pub fn table_url(warehouse: &Location, table: &str) -> Url {
    warehouse.child_url(table)
}

fn register_object_stores() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| deltalake::aws::register_handlers(None));
}

async fn open_or_new(warehouse: &Location, table: &str) -> Result<DeltaTable, PublishError> {
    register_object_stores();
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

/// Commit `batches` as the new content of `table` (one new version).
pub async fn publish(
    warehouse: &Location,
    table: &str,
    batches: Vec<RecordBatch>,
    metadata: serde_json::Map<String, serde_json::Value>,
) -> Result<Published, PublishError> {
    write(warehouse, table, batches, SaveMode::Overwrite, metadata).await
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

async fn write(
    warehouse: &Location,
    table: &str,
    batches: Vec<RecordBatch>,
    mode: SaveMode,
    metadata: serde_json::Map<String, serde_json::Value>,
) -> Result<Published, PublishError> {
    let url = table_url(warehouse, table).to_string();
    let rows = batches.iter().map(|b| b.num_rows()).sum();
    let delta = open_or_new(warehouse, table).await?;
    let commit = CommitProperties::default().with_metadata(metadata);
    let delta = delta
        .write(batches)
        .with_save_mode(mode)
        .with_table_name(table)
        .with_commit_properties(commit)
        .await
        .map_err(|source| PublishError::Commit { url, source })?;
    Ok(Published {
        table: table.to_string(),
        version: delta.version().unwrap_or_default(),
        rows,
    })
}

/// Open a published table at its latest version or at `version`.
pub async fn open_published(
    warehouse: &Location,
    table: &str,
    version: Option<u64>,
) -> Result<DeltaTable, PublishError> {
    let url = table_url(warehouse, table).to_string();
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
    let url = table_url(warehouse, table).to_string();
    let read = |source| PublishError::Read {
        url: url.clone(),
        source,
    };
    let delta = open_published(warehouse, table, version).await?;
    let ctx = datafusion::prelude::SessionContext::new();
    delta
        .update_datafusion_session(&ctx.state())
        .map_err(|e| read(e.into()))?;
    let provider = delta.table_provider().await.map_err(read)?;
    ctx.register_table(table, provider).map_err(read)?;
    let batches = ctx.sql(sql).await.map_err(read)?.collect().await.map_err(read)?;
    batches
        .iter()
        .map(|b| plain_strings(b).map_err(|e| read(e.into())))
        .collect()
}

/// delta-rs scans strings as `Utf8View`; callers get plain `Utf8` columns.
fn plain_strings(batch: &RecordBatch) -> Result<RecordBatch, arrow::error::ArrowError> {
    let mut fields = Vec::with_capacity(batch.num_columns());
    let mut columns = Vec::with_capacity(batch.num_columns());
    for (field, column) in batch.schema().fields().iter().zip(batch.columns()) {
        if matches!(field.data_type(), DataType::Utf8View | DataType::LargeUtf8) {
            fields.push(field.as_ref().clone().with_data_type(DataType::Utf8));
            columns.push(arrow::compute::cast(column, &DataType::Utf8)?);
        } else {
            fields.push(field.as_ref().clone());
            columns.push(column.clone());
        }
    }
    RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)
}
