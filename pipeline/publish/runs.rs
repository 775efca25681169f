//! Run history: one row per `tagflow run`, follow batch or backfill, succeeded or failed,
//! appended to the Delta table `<warehouse>/job_runs` so that operators and schedulers can
//! see what ran.
//!
//! Owns: the `job_runs` schema and the rows recorded. Must not: decide a run's outcome (the
//! application hands it a [`Summary`] or a [`Failure`]); failing to record history never
//! fails a run (the caller logs it).

use std::sync::Arc;

use arrow::array::{ArrayRef, Int32Array, Int64Array, StringArray, TimestampMicrosecondArray, UInt64Array};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use arrow::record_batch::RecordBatch;
use chrono::{DateTime, Utc};
use deltalake::DeltaTable;
use serde_json::json;

use crate::jobs::CheckFailure;
use crate::publish::tables::RUNS_TABLE;
use crate::publish::{self, PublishError};
use crate::sources::StreamStats;
use crate::storage::Location;

/// Schema of `job_runs`. `status` is `succeeded`, `forced` (published although checks
/// failed), `gate_failed` or `failed`. `jobs` is JSON (`[{"job", "rows", "ms",
/// "failed_checks"?}]`) so that the table's schema does not change when the catalog does.
pub fn job_runs_schema() -> SchemaRef {
    let ts = || DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()));
    Arc::new(Schema::new(vec![
        Field::new("run_id", DataType::Utf8, false),
        Field::new("as_of", ts(), false),
        Field::new("started_at", ts(), false),
        Field::new("finished_at", ts(), false),
        Field::new("status", DataType::Utf8, false),
        Field::new("exit_code", DataType::Int32, false),
        Field::new("error", DataType::Utf8, true),
        Field::new("files_read", DataType::Int64, true),
        Field::new("events", DataType::Int64, true),
        Field::new("duplicates_dropped", DataType::Int64, true),
        Field::new("files_quarantined", DataType::Int64, true),
        Field::new("rows_quarantined", DataType::Int64, true),
        Field::new("customers", DataType::Int64, true),
        Field::new("published_version", DataType::UInt64, true),
        Field::new("jobs", DataType::Utf8, true),
        Field::new("freshness_p95_ms", DataType::Int64, true),
        Field::new("freshness_max_ms", DataType::Int64, true),
    ]))
}

/// What is known about a run when it ends.
pub struct RunRecord<'a> {
    pub run_id: &'a str,
    pub as_of: DateTime<Utc>,
    pub started_at: DateTime<Utc>,
    pub outcome: Result<Summary, Failure<'a>>,
}

/// Why a run did not publish, as `job_runs` records it. The application fills it from its
/// error: this table knows exit codes as numbers, not what they mean.
pub struct Failure<'a> {
    /// A quality gate stopped the run (status `gate_failed` rather than `failed`).
    pub gate: bool,
    pub exit_code: i32,
    pub message: String,
    /// The checks that failed, when the gate reported them (the `jobs` column lists them).
    pub failed_checks: Option<&'a [CheckFailure]>,
}

/// The numbers of a run that published (a run, a follow batch or a backfill).
#[derive(Debug, Clone, Default)]
pub struct Summary {
    pub files_read: usize,
    pub events: usize,
    pub duplicates_dropped: usize,
    pub files_quarantined: usize,
    pub rows_quarantined: usize,
    pub customers: usize,
    pub published_version: u64,
    /// Per job: `{"job", "rows", "ms", "failed_checks"?}`.
    pub jobs: Vec<serde_json::Value>,
    /// Published although checks failed (`--force`).
    pub forced: bool,
    /// Landing-to-publish lag of the files read, p95 and max (runs that read files).
    pub freshness_p95_ms: Option<u64>,
    pub freshness_max_ms: Option<u64>,
}

impl Summary {
    /// Stream counts summed over streams.
    pub fn count_streams<'s>(&mut self, streams: impl IntoIterator<Item = &'s StreamStats>) {
        for s in streams {
            self.files_read += s.files;
            self.events += s.events;
            self.duplicates_dropped += s.duplicates_dropped;
            self.files_quarantined += s.files_quarantined;
            self.rows_quarantined += s.rows_quarantined;
        }
    }
}

/// The failed checks of `job`, as recorded in the `jobs` column.
pub fn failed_checks(job: &str, failures: &[CheckFailure]) -> Vec<serde_json::Value> {
    failures
        .iter()
        .filter(|f| f.job == job)
        .map(|f| json!({ "check": f.check, "value": f.value, "detail": f.detail }))
        .collect()
}

/// Open `job_runs` (a new table if there is none yet). A run opens it while it works, so
/// that recording it at the end is only the append.
pub async fn open(warehouse: &Location) -> Result<DeltaTable, PublishError> {
    publish::open_or_new(warehouse, RUNS_TABLE).await
}

/// Append one row for a finished run to `job_runs`, opened by [`open`] or, if `opened` is
/// `None`, now.
pub async fn record(warehouse: &Location, run: &RunRecord<'_>, opened: Option<DeltaTable>) -> Result<(), PublishError> {
    let table = match opened {
        Some(table) => table,
        None => open(warehouse).await?,
    };
    let metadata = json!({ "tagflow.run_id": run.run_id });
    let metadata = metadata.as_object().cloned().unwrap_or_default();
    publish::append_to(warehouse, RUNS_TABLE, table, vec![row(run)], metadata)
        .await
        .map(|_| ())
}

fn row(run: &RunRecord<'_>) -> RecordBatch {
    let micros = |t: DateTime<Utc>| -> ArrayRef {
        Arc::new(TimestampMicrosecondArray::from(vec![t.timestamp_micros()]).with_timezone("UTC"))
    };
    let summary = run.outcome.as_ref().ok();
    let lag = |f: fn(&Summary) -> Option<u64>| -> ArrayRef {
        Arc::new(Int64Array::from(vec![summary.and_then(f).map(|ms| ms as i64)]))
    };
    let count =
        |f: fn(&Summary) -> usize| -> ArrayRef { Arc::new(Int64Array::from(vec![summary.map(|s| f(s) as i64)])) };
    let (status, exit_code, error) = match &run.outcome {
        Ok(s) if s.forced => ("forced", 0, None),
        Ok(_) => ("succeeded", 0, None),
        Err(f) => (
            if f.gate { "gate_failed" } else { "failed" },
            f.exit_code,
            Some(f.message.clone()),
        ),
    };
    // Per job: rows and duration, and the checks that failed (with their numbers) when a
    // gate stopped the run or was forced.
    let jobs = match &run.outcome {
        Ok(s) => Some(serde_json::Value::Array(s.jobs.clone()).to_string()),
        Err(Failure {
            failed_checks: Some(failures),
            ..
        }) => {
            let jobs: std::collections::BTreeSet<&str> = failures.iter().map(|f| f.job.as_str()).collect();
            let entries = jobs
                .into_iter()
                .map(|job| json!({ "job": job, "failed_checks": failed_checks(job, failures) }));
            Some(serde_json::Value::Array(entries.collect()).to_string())
        }
        Err(_) => None,
    };
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from(vec![run.run_id])),
        micros(run.as_of),
        micros(run.started_at),
        micros(Utc::now()),
        Arc::new(StringArray::from(vec![status])),
        Arc::new(Int32Array::from(vec![exit_code])),
        Arc::new(StringArray::from(vec![error])),
        count(|s| s.files_read),
        count(|s| s.events),
        count(|s| s.duplicates_dropped),
        count(|s| s.files_quarantined),
        count(|s| s.rows_quarantined),
        count(|s| s.customers),
        Arc::new(UInt64Array::from(vec![summary.map(|s| s.published_version)])),
        Arc::new(StringArray::from(vec![jobs])),
        lag(|s| s.freshness_p95_ms),
        lag(|s| s.freshness_max_ms),
    ];
    RecordBatch::try_new(job_runs_schema(), columns).expect("job_runs row matches its schema")
}

/// The latest `limit` runs, newest first, with the columns `tagflow runs` and `/v1/runs` show:
/// the named ones, then the later ones a table has (the freshness columns, which a table
/// written by an older tagflow gains with its next run).
pub async fn latest(warehouse: &Location, limit: usize) -> Result<Vec<RecordBatch>, PublishError> {
    let sql = format!(
        "SELECT run_id, status, exit_code, as_of, started_at, finished_at, files_read, events, \
         files_quarantined, rows_quarantined, published_version, error, jobs, \
         * EXCLUDE (run_id, status, exit_code, as_of, started_at, finished_at, files_read, events, \
                    files_quarantined, rows_quarantined, published_version, error, jobs, \
                    duplicates_dropped, customers) \
         FROM {RUNS_TABLE} ORDER BY started_at DESC LIMIT {limit}"
    );
    publish::query_published(warehouse, RUNS_TABLE, None, &sql).await
}
