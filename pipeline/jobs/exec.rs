//! Running the catalog on counted events.

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{Array, ArrayRef, StringArray};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use chrono::{DateTime, Utc};
use datafusion::catalog::MemTable;
use datafusion::execution::config::SessionConfig;
use datafusion::prelude::SessionContext;
use tracing::{info, info_span, Instrument};

use super::catalog::{check_tag_output, Catalog, Job, JobKind};

#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error("job '{job}' ({}) failed: {source}", file.display())]
    Execution {
        job: String,
        file: PathBuf,
        #[source]
        source: datafusion::error::DataFusionError,
    },
    #[error("job '{job}' ({}) returned bad rows: {message}", file.display())]
    Output {
        job: String,
        file: PathBuf,
        message: String,
    },
}

/// The rows and timing of one job.
pub struct JobRun {
    pub job: Job,
    pub duration: Duration,
    /// For tags: `customer_id, value, score` as Utf8, Utf8, Float64. For measures: as produced.
    pub batches: Vec<RecordBatch>,
    /// Schema of `batches` (known even when there are no rows).
    pub schema: SchemaRef,
    pub rows: usize,
}

/// Everything the jobs produced, in catalog order.
pub struct JobOutput {
    pub runs: Vec<JobRun>,
}

/// The normalised schema of a tag's rows.
pub fn tag_rows_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("customer_id", DataType::Utf8, false),
        Field::new("value", DataType::Utf8, false),
        Field::new("score", DataType::Float64, true),
    ]))
}

/// Run every job of `catalog` in order. `streams` holds the counted events per stream.
pub async fn run_jobs(
    catalog: &Catalog,
    streams: &BTreeMap<String, Vec<RecordBatch>>,
    stream_schemas: &BTreeMap<String, SchemaRef>,
    as_of: DateTime<Utc>,
) -> Result<JobOutput, JobError> {
    let partitions = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2);
    let mut tables: BTreeMap<String, Arc<MemTable>> = BTreeMap::new();
    for (name, batches) in streams {
        let table = mem_table(stream_schemas[name].clone(), batches.clone(), partitions);
        tables.insert(name.clone(), table);
    }
    let mut runs = Vec::with_capacity(catalog.jobs.len());
    for job in &catalog.jobs {
        let span = info_span!("job", job = %job.name, kind = ?job.kind);
        let run = run_one(job, &tables, as_of, partitions).instrument(span).await?;
        tables.insert(
            job.name.clone(),
            mem_table(run.schema.clone(), run.batches.clone(), partitions),
        );
        runs.push(run);
    }
    Ok(JobOutput { runs })
}

async fn run_one(
    job: &Job,
    tables: &BTreeMap<String, Arc<MemTable>>,
    as_of: DateTime<Utc>,
    partitions: usize,
) -> Result<JobRun, JobError> {
    let started = Instant::now();
    let failed = |source| JobError::Execution {
        job: job.name.clone(),
        file: job.file.clone(),
        source,
    };
    let config = SessionConfig::new().with_target_partitions(partitions);
    let ctx = SessionContext::new_with_config(config);
    for name in job.reads() {
        ctx.register_table(name.as_str(), tables[name].clone())
            .map_err(failed)?;
    }
    let frame = ctx.sql(&job.render_sql(as_of)).await.map_err(failed)?;
    let planned: SchemaRef = Arc::new(frame.schema().as_arrow().clone());
    let batches = frame.collect().await.map_err(failed)?;
    let (batches, schema) = match job.kind {
        JobKind::Measure => (batches, planned),
        JobKind::Tag => (normalise_tag_rows(job, batches)?, tag_rows_schema()),
    };
    let rows = batches.iter().map(|b| b.num_rows()).sum();
    let duration = started.elapsed();
    info!(rows, ms = duration.as_millis() as u64, "job done");
    Ok(JobRun {
        job: job.clone(),
        duration,
        batches,
        schema,
        rows,
    })
}

/// Cast a tag's output to `customer_id: Utf8, value: Utf8, score: Float64` and check that
/// it has one row per customer and no null ids or values.
fn normalise_tag_rows(job: &Job, batches: Vec<RecordBatch>) -> Result<Vec<RecordBatch>, JobError> {
    let bad = |message: String| JobError::Output {
        job: job.name.clone(),
        file: job.file.clone(),
        message,
    };
    let target = tag_rows_schema();
    let mut seen: HashSet<String> = HashSet::new();
    let mut out = Vec::with_capacity(batches.len());
    for batch in batches.into_iter().filter(|b| b.num_rows() > 0) {
        check_tag_output(&batch.schema()).map_err(&bad)?;
        let columns: Vec<ArrayRef> = target
            .fields()
            .iter()
            .map(|f| cast(batch.column_by_name(f.name()).expect("checked"), f.data_type()))
            .collect::<Result<_, _>>()
            .map_err(|e| bad(e.to_string()))?;
        for (i, name) in ["customer_id", "value"].iter().enumerate() {
            if columns[i].null_count() > 0 {
                return Err(bad(format!("{name} is null in {} rows", columns[i].null_count())));
            }
        }
        let ids = columns[0].as_any().downcast_ref::<StringArray>().expect("utf8");
        for id in ids.iter().flatten() {
            if !seen.insert(id.to_string()) {
                return Err(bad(format!("customer '{id}' has more than one row")));
            }
        }
        out.push(RecordBatch::try_new(target.clone(), columns).map_err(|e| bad(e.to_string()))?);
    }
    Ok(out)
}

fn mem_table(schema: SchemaRef, batches: Vec<RecordBatch>, partitions: usize) -> Arc<MemTable> {
    let mut parts: Vec<Vec<RecordBatch>> = vec![Vec::new(); partitions.max(1)];
    for (i, batch) in batches.into_iter().enumerate() {
        parts[i % partitions.max(1)].push(batch);
    }
    Arc::new(MemTable::try_new(schema, parts).expect("batches match their schema"))
}
