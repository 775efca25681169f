//! Publishing past snapshots: `customer_tags_history` holds the tags as they stood at the
//! end of past days, one partition per day (`snapshot_date`), written by backfills. A day
//! is written by one Delta commit that replaces that day's partition, so re-running a
//! backfill replaces its days and never duplicates them, and a backfill killed mid-way
//! leaves every day either as it was or fully rewritten.
//!
//! Owns: the history table's schema and its commits.
//! Must not: touch `customer_tags` (a backfill never changes what is served).

use std::sync::Arc;

use arrow::array::{ArrayRef, Date32Array};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use chrono::NaiveDate;
use deltalake::kernel::transaction::CommitProperties;
use deltalake::protocol::SaveMode;

use super::tables::HISTORY_TABLE;
use super::tags::TableSettings;
use super::{customer_tags_schema, file_count, open_or_new, table_url, PublishError, Published};
use crate::storage::Location;

/// `snapshot_date` (the day whose end the tags were evaluated at), then `customer_tags`'s
/// columns.
pub fn customer_tags_history_schema() -> SchemaRef {
    let mut fields = vec![Field::new("snapshot_date", DataType::Date32, false)];
    fields.extend(customer_tags_schema().fields().iter().map(|f| f.as_ref().clone()));
    Arc::new(Schema::new(fields))
}

/// Days since 1970-01-01 (Arrow's Date32).
fn date32(date: NaiveDate) -> i32 {
    (date - NaiveDate::from_ymd_opt(1970, 1, 1).expect("epoch")).num_days() as i32
}

/// Replace the snapshot of `date` by `rows` (`customer_tags` rows) in one commit.
pub async fn replace_day(
    warehouse: &Location,
    date: NaiveDate,
    rows: &[RecordBatch],
    settings: &TableSettings,
    metadata: serde_json::Map<String, serde_json::Value>,
) -> Result<Published, PublishError> {
    let schema = customer_tags_history_schema();
    let batches: Vec<RecordBatch> = rows
        .iter()
        .map(|b| {
            let mut columns: Vec<ArrayRef> = vec![Arc::new(Date32Array::from(vec![date32(date); b.num_rows()]))];
            columns.extend(b.columns().iter().cloned());
            RecordBatch::try_new(schema.clone(), columns).expect("customer_tags rows")
        })
        .collect();
    let written = batches.iter().map(|b| b.num_rows()).sum();
    let table = open_or_new(warehouse, HISTORY_TABLE).await?;
    let url = table_url(warehouse, HISTORY_TABLE).to_string();
    let commit = CommitProperties::default().with_metadata(metadata);
    let write = match table.version() {
        // The first day creates the table.
        None => table
            .write(batches)
            .with_save_mode(SaveMode::Append)
            .with_table_name(HISTORY_TABLE)
            .with_partition_columns(["snapshot_date"])
            .with_configuration(settings.configuration()),
        Some(_) => table
            .write(batches)
            .with_save_mode(SaveMode::Overwrite)
            .with_replace_where(format!("snapshot_date = DATE '{date}'")),
    };
    let table = write
        .with_commit_properties(commit)
        .await
        .map_err(|source| PublishError::Commit { url, source })?;
    Ok(Published {
        table: HISTORY_TABLE.to_string(),
        version: table.version().unwrap_or_default() as u64,
        rows: written,
        rows_written: written,
        files: file_count(&table),
        changes: None,
        customers: None,
        feed_version: None,
        merged: true,
        merge_started: false,
    })
}
