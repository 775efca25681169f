//! Measures published as tables of their own: a measure job whose header says
//! `publish = "<table>"` (the shipped one is `task_results`) becomes the Delta table
//! `<warehouse>/<table>`, its rows replaced by each run that publishes, with an `as_of`
//! column added.
//!
//! Owns: those tables' commits. Must not: run SQL or decide what a measure holds; a crash
//! between `customer_tags` and these commits leaves them at their previous version, and the
//! next publishing run replaces them.

use std::sync::Arc;

use arrow::array::{ArrayRef, TimestampMicrosecondArray};
use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use arrow::record_batch::RecordBatch;
use chrono::{DateTime, Utc};

use super::{replace, PublishError, Published};
use crate::jobs::JobRun;
use crate::storage::Location;

/// Replace every published measure's table with the rows of this run (side by side).
pub async fn replace_published_measures(
    warehouse: &Location,
    runs: &[JobRun],
    as_of: DateTime<Utc>,
    metadata: &serde_json::Map<String, serde_json::Value>,
) -> Result<Vec<Published>, PublishError> {
    let writes = runs.iter().filter_map(|run| {
        let table = run.job.publish.as_deref()?;
        let rows = with_as_of(run, as_of);
        Some(replace(warehouse, table, rows, metadata.clone()))
    });
    futures::future::try_join_all(writes).await
}

/// The run's rows with an `as_of` column (one empty batch when there are none, so the table
/// keeps its schema).
fn with_as_of(run: &JobRun, as_of: DateTime<Utc>) -> Vec<RecordBatch> {
    let mut fields: Vec<Field> = run.schema.fields().iter().map(|f| f.as_ref().clone()).collect();
    fields.push(Field::new(
        "as_of",
        DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
        false,
    ));
    let schema = Arc::new(Schema::new(fields));
    let mut out: Vec<RecordBatch> = run
        .output
        .to_batches()
        .into_iter()
        .filter(|b| b.num_rows() > 0)
        .map(|batch| {
            let times = TimestampMicrosecondArray::from(vec![as_of.timestamp_micros(); batch.num_rows()]);
            let mut columns: Vec<ArrayRef> = batch.columns().to_vec();
            columns.push(Arc::new(times.with_timezone("UTC")));
            RecordBatch::try_new(schema.clone(), columns).expect("the run's rows have the run's schema")
        })
        .collect();
    if out.is_empty() {
        out.push(RecordBatch::new_empty(schema));
    }
    out
}
