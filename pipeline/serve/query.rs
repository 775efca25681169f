//! `POST /v1/query`: read-only SQL over `customer_tags` (at the served or pinned version)
//! and `tag_changes` (up to that version), with row, time and memory limits.
//!
//! Owns: the sandbox a client's SQL runs in. Only the two tables exist in it; statements
//! that write, create, drop or set anything are refused before planning, URL tables are
//! off, no function reads files, and nothing spills to disk.
//! Must not: write anything or see any other table.

use std::time::Duration;

use arrow::record_batch::RecordBatch;
use datafusion::error::DataFusionError;
use datafusion::execution::disk_manager::{DiskManagerBuilder, DiskManagerMode};
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::prelude::{col, lit, SQLOptions, SessionConfig, SessionContext};
use futures::StreamExt;

use super::error::ApiError;
use crate::publish::tables::CHANGES_TABLE;
use crate::publish::{open_published, plain_strings, PublishError, TAGS_TABLE};
use crate::storage::Location;

/// Limits of one query.
#[derive(Debug, Clone)]
pub struct QueryLimits {
    pub max_rows: usize,
    pub timeout: Duration,
    pub memory_bytes: usize,
}

/// A query's answer: its columns and up to `max_rows` rows as JSON objects.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct QueryResult {
    /// The `customer_tags` version the query read.
    pub version: u64,
    pub columns: Vec<Column>,
    #[schema(value_type = Vec<Object>)]
    pub rows: Vec<serde_json::Value>,
    /// True when the result had more rows than the limit and was cut.
    pub truncated: bool,
}

#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct Column {
    pub name: String,
    /// Arrow data type, e.g. `Utf8`, `Float64`, `Int64`.
    pub data_type: String,
}

/// Run `sql` against `customer_tags` at `version` and the feed up to it.
pub async fn run(warehouse: &Location, version: u64, sql: &str, limits: &QueryLimits) -> Result<QueryResult, ApiError> {
    match tokio::time::timeout(limits.timeout, execute(warehouse, version, sql, limits)).await {
        Ok(result) => result,
        Err(_) => Err(ApiError::QueryTimeout(limits.timeout)),
    }
}

async fn execute(warehouse: &Location, version: u64, sql: &str, limits: &QueryLimits) -> Result<QueryResult, ApiError> {
    if sql.trim().is_empty() {
        return Err(ApiError::BadRequest("`sql` is empty".into()));
    }
    let ctx = sandbox(limits, false)?;
    let tags = open_published(warehouse, TAGS_TABLE, Some(version)).await?;
    tags.update_datafusion_session(&ctx.state())
        .map_err(|e| ApiError::Unavailable(e.to_string()))?;
    ctx.register_table(TAGS_TABLE, tags.table_provider().await.map_err(unavailable)?)
        .map_err(unavailable)?;
    match open_published(warehouse, CHANGES_TABLE, None).await {
        Ok(feed) => {
            feed.update_datafusion_session(&ctx.state())
                .map_err(|e| ApiError::Unavailable(e.to_string()))?;
            let provider = feed.table_provider().await.map_err(unavailable)?;
            let upto = ctx
                .read_table(provider)
                .and_then(|df| df.filter(col("to_version").lt_eq(lit(version as i64))))
                .map_err(unavailable)?;
            ctx.register_table(CHANGES_TABLE, upto.into_view())
                .map_err(unavailable)?;
        }
        Err(PublishError::NotFound { .. }) => {}
        Err(other) => return Err(other.into()),
    }
    let options = SQLOptions::new()
        .with_allow_ddl(false)
        .with_allow_dml(false)
        .with_allow_statements(false);
    let frame = ctx.sql_with_options(sql, options).await.map_err(query_error)?;
    let schema = frame.schema().as_arrow().clone();
    let mut stream = frame.execute_stream().await.map_err(query_error)?;
    let (mut kept, mut rows, mut truncated) = (Vec::new(), 0usize, false);
    while let Some(batch) = stream.next().await {
        let batch = plain_strings(&batch.map_err(query_error)?).map_err(|e| query_error(e.into()))?;
        let take = batch.num_rows().min(limits.max_rows - rows);
        kept.push(batch.slice(0, take));
        rows += take;
        if take < batch.num_rows() {
            truncated = true;
            break;
        }
    }
    let rows = rows_json(&kept)?;
    Ok(QueryResult {
        version,
        columns: schema
            .fields()
            .iter()
            .map(|f| Column {
                name: f.name().clone(),
                data_type: plain_type(f.data_type()),
            })
            .collect(),
        rows,
        truncated,
    })
}

/// Rows as JSON objects (column name to value; nulls left out).
pub fn rows_json(batches: &[RecordBatch]) -> Result<Vec<serde_json::Value>, ApiError> {
    let encode = |e: &dyn std::fmt::Display| ApiError::BadRequest(format!("cannot encode the result as JSON: {e}"));
    let mut writer = arrow::json::ArrayWriter::new(Vec::new());
    for batch in batches {
        writer.write(batch).map_err(|e| encode(&e))?;
    }
    writer.finish().map_err(|e| encode(&e))?;
    let bytes = writer.into_inner();
    if bytes.is_empty() {
        return Ok(Vec::new());
    }
    serde_json::from_slice(&bytes).map_err(|e| encode(&e))
}

/// A session with a memory cap, no spilling and no URL tables (the PostgreSQL front wants
/// the information schema that BI tools browse; the JSON endpoint does not).
pub(super) fn sandbox(limits: &QueryLimits, information_schema: bool) -> Result<SessionContext, ApiError> {
    let runtime = RuntimeEnvBuilder::new()
        .with_memory_limit(limits.memory_bytes, 1.0)
        .with_disk_manager_builder(DiskManagerBuilder::default().with_mode(DiskManagerMode::Disabled))
        .build_arc()
        .map_err(unavailable)?;
    let config = SessionConfig::new()
        .with_target_partitions(2)
        .with_information_schema(information_schema);
    Ok(SessionContext::new_with_config_rt(config, runtime))
}

fn plain_type(data_type: &arrow::datatypes::DataType) -> String {
    use arrow::datatypes::DataType;
    match data_type {
        DataType::Utf8View | DataType::LargeUtf8 => "Utf8".into(),
        DataType::Dictionary(_, value)
            if matches!(**value, DataType::Utf8 | DataType::Utf8View | DataType::LargeUtf8) =>
        {
            "Utf8".into()
        }
        other => other.to_string(),
    }
}

fn unavailable(error: DataFusionError) -> ApiError {
    ApiError::Unavailable(error.to_string())
}

/// The client's SQL failed: its fault (4xx) unless storage failed under it.
fn query_error(error: DataFusionError) -> ApiError {
    let message = error.to_string();
    match error.find_root() {
        DataFusionError::ResourcesExhausted(_) => {
            ApiError::QueryTooLarge(format!("the query needs more memory than its limit: {message}"))
        }
        DataFusionError::ObjectStore(_) | DataFusionError::IoError(_) => ApiError::Unavailable(message),
        _ => ApiError::BadRequest(message),
    }
}
