//! Running the catalog: state jobs fold a batch of new events into the state tables; measure
//! and tag jobs are evaluated on the state tables.

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

use super::catalog::{check_tag_output, state_schema, Catalog, Job, JobKind, CURRENT_ROWS, NEW_ROWS};

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
    /// A built-in quality gate (one row per customer, no null id or value) failed; unlike
    /// the header's checks it cannot be forced, since `customer_tags` is keyed by customer
    /// and tag.
    #[error("quality gate failed, nothing was published: job '{job}' ({}): {check}: {message} (a built-in check, `--force` cannot override it)", file.display())]
    Check {
        job: String,
        file: PathBuf,
        check: &'static str,
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

/// The rows of one table: a state table, or a stream's events.
#[derive(Debug, Clone)]
pub struct Table {
    pub schema: SchemaRef,
    pub batches: Vec<RecordBatch>,
}

impl Table {
    pub fn empty(schema: SchemaRef) -> Self {
        Table {
            schema,
            batches: Vec::new(),
        }
    }

    pub fn rows(&self) -> usize {
        self.batches.iter().map(|b| b.num_rows()).sum()
    }
}

/// What folding one batch into a state table did.
#[derive(Debug, Clone)]
pub struct StateRun {
    pub job: String,
    /// Rows the job derived from the batch's events.
    pub new_rows: usize,
    /// Rows of the table after the merge (and retention).
    pub rows: usize,
    pub duration: Duration,
}

fn cores() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2)
}

/// Partitions of each of `concurrent` queries running at once: the cores shared out, at
/// least one. Several small queries side by side use the cores better than each query
/// split across all of them (no repartitioning of their rows).
fn share_of_cores(concurrent: usize) -> usize {
    (cores() / concurrent.max(1)).max(1)
}

/// Fold a batch of counted events into the state tables: each state job derives rows from
/// `events` (per stream), which are merged with its current table by the job's key and merge
/// rules, at `as_of` (rows past the job's retention are dropped). `current` lacks a table
/// when the state starts empty. Returns the new tables; `current` is left as it was.
///
/// State jobs read only the streams, so they fold concurrently (one task each).
pub async fn fold_state(
    catalog: &Catalog,
    current: &BTreeMap<String, Table>,
    events: &BTreeMap<String, Table>,
    as_of: DateTime<Utc>,
) -> Result<(BTreeMap<String, Table>, Vec<StateRun>), JobError> {
    let partitions = share_of_cores(catalog.state_jobs().count());
    let streams: Arc<BTreeMap<String, Arc<MemTable>>> = Arc::new(
        events
            .iter()
            .map(|(name, t)| (name.clone(), mem_table(t.schema.clone(), t.batches.clone(), partitions)))
            .collect(),
    );
    let folds = catalog.state_jobs().map(|job| {
        let span = info_span!("state", job = %job.name);
        let fold = fold_one(
            job.clone(),
            streams.clone(),
            current.get(&job.name).cloned(),
            as_of,
            partitions,
        );
        fold.instrument(span)
    });
    let mut tables = BTreeMap::new();
    let mut runs = Vec::new();
    for (table, run) in concurrently(folds).await? {
        tables.insert(run.job.clone(), table);
        runs.push(run);
    }
    Ok((tables, runs))
}

/// Fold the events into one state job's table (`current`; `None` when the state is empty).
async fn fold_one(
    job: Job,
    streams: Arc<BTreeMap<String, Arc<MemTable>>>,
    current: Option<Table>,
    as_of: DateTime<Utc>,
    partitions: usize,
) -> Result<(Table, StateRun), JobError> {
    let started = Instant::now();
    let derived = run_one(&job, &streams, as_of, partitions)
        .instrument(info_span!("derive"))
        .await?;
    let schema = Arc::new(state_schema(&derived.schema));
    let new_rows = conform(&job, derived.batches, &schema)?;
    check_keys(&job, &new_rows)?;
    let current_rows = match current {
        Some(table) => conform(&job, table.batches, &schema)?,
        None => Vec::new(),
    };
    let mut inputs = BTreeMap::new();
    inputs.insert(
        CURRENT_ROWS.to_string(),
        mem_table(schema.clone(), current_rows, partitions),
    );
    inputs.insert(NEW_ROWS.to_string(), mem_table(schema.clone(), new_rows, partitions));
    let columns: Vec<String> = schema.fields().iter().map(|f| f.name().clone()).collect();
    let merged = execute(&job, &inputs, &job.merge_sql(&columns, as_of), partitions)
        .instrument(info_span!("merge"))
        .await?;
    let table = Table {
        batches: conform(&job, merged.0, &schema)?,
        schema,
    };
    let run = StateRun {
        job: job.name.clone(),
        new_rows: derived.rows,
        rows: table.rows(),
        duration: started.elapsed(),
    };
    Ok((table, run))
}

/// Run `tasks` at once, each on its own tokio task; their outputs in order, or the first
/// error (the other tasks are then aborted).
async fn concurrently<T, F>(tasks: impl Iterator<Item = F>) -> Result<Vec<T>, JobError>
where
    F: std::future::Future<Output = Result<T, JobError>> + Send + 'static,
    T: Send + 'static,
{
    let mut running = tokio::task::JoinSet::new();
    for (i, task) in tasks.enumerate() {
        running.spawn(async move { task.await.map(|output| (i, output)) });
    }
    let mut out = Vec::with_capacity(running.len());
    while let Some(finished) = running.join_next().await {
        out.push(task_output(finished)?);
    }
    out.sort_by_key(|(i, _)| *i);
    Ok(out.into_iter().map(|(_, output)| output).collect())
}

/// A finished job task's output; a panic in the task resumes here.
fn task_output<T>(finished: Result<Result<T, JobError>, tokio::task::JoinError>) -> Result<T, JobError> {
    match finished {
        Ok(output) => output,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(e) => panic!("a job task was cancelled: {e}"),
    }
}

/// Key columns of state rows are never null (rows are matched on them by equality).
fn check_keys(job: &Job, batches: &[RecordBatch]) -> Result<(), JobError> {
    let keys = &job.state.as_ref().expect("a state job").key;
    for batch in batches {
        for key in keys {
            let nulls = batch.column_by_name(key).map_or(0, |c| c.null_count());
            if nulls > 0 {
                return Err(JobError::Output {
                    job: job.name.clone(),
                    file: job.file.clone(),
                    message: format!("key column '{key}' is null in {nulls} rows (filter them out in the query)"),
                });
            }
        }
    }
    Ok(())
}

/// Cast batches to a state table's schema (merges may widen types, e.g. SUM of Int32).
fn conform(job: &Job, batches: Vec<RecordBatch>, schema: &SchemaRef) -> Result<Vec<RecordBatch>, JobError> {
    let bad = |message: String| JobError::Output {
        job: job.name.clone(),
        file: job.file.clone(),
        message,
    };
    batches
        .into_iter()
        .filter(|b| b.num_rows() > 0)
        .map(|batch| {
            if batch.schema_ref() == schema {
                return Ok(batch);
            }
            let columns: Vec<ArrayRef> = schema
                .fields()
                .iter()
                .map(|f| {
                    let column = batch
                        .column_by_name(f.name())
                        .ok_or_else(|| bad(format!("state column '{}' is missing", f.name())))?;
                    cast(column, f.data_type()).map_err(|e| bad(format!("state column '{}': {e}", f.name())))
                })
                .collect::<Result<_, _>>()?;
            RecordBatch::try_new(schema.clone(), columns).map_err(|e| bad(e.to_string()))
        })
        .collect()
}

/// Evaluate the measure and tag jobs of `catalog` on the state tables. A job starts as soon
/// as every table it reads is there (state tables, jobs done), alongside the others that
/// can run. The runs come back in catalog order.
pub async fn run_jobs(
    catalog: &Catalog,
    state: &BTreeMap<String, Table>,
    as_of: DateTime<Utc>,
) -> Result<JobOutput, JobError> {
    // Every table in one partition: most jobs run with one (a share of the cores), and a
    // table split wider would be merged back by each of them (measured: a fifth of the
    // jobs' CPU time); the few that get more cores split their input themselves.
    let mut tables: BTreeMap<String, Arc<MemTable>> = state
        .iter()
        .map(|(name, t)| (name.clone(), mem_table(t.schema.clone(), t.batches.clone(), 1)))
        .collect();
    let mut waiting: Vec<&Job> = catalog.jobs.iter().filter(|j| j.kind != JobKind::State).collect();
    let mut running = tokio::task::JoinSet::new();
    let mut done: BTreeMap<String, JobRun> = BTreeMap::new();
    loop {
        let (ready, blocked): (Vec<&Job>, Vec<&Job>) = waiting
            .into_iter()
            .partition(|j| j.reads().all(|table| tables.contains_key(table)));
        waiting = blocked;
        let partitions = share_of_cores(running.len() + ready.len());
        for job in ready {
            let span = info_span!("job", job = %job.name, kind = ?job.kind);
            let reads: BTreeMap<String, Arc<MemTable>> = job.reads().map(|n| (n.clone(), tables[n].clone())).collect();
            let job = job.clone();
            running.spawn(async move { run_one(&job, &reads, as_of, partitions).await }.instrument(span));
        }
        let Some(finished) = running.join_next().await else {
            break;
        };
        let run = task_output(finished)?;
        tables.insert(
            run.job.name.clone(),
            mem_table(run.schema.clone(), run.batches.clone(), 1),
        );
        done.insert(run.job.name.clone(), run);
    }
    assert!(waiting.is_empty(), "the catalog checks that every job's inputs exist");
    let runs = catalog.jobs.iter().filter_map(|j| done.remove(&j.name)).collect();
    Ok(JobOutput { runs })
}

async fn run_one(
    job: &Job,
    tables: &BTreeMap<String, Arc<MemTable>>,
    as_of: DateTime<Utc>,
    partitions: usize,
) -> Result<JobRun, JobError> {
    let started = Instant::now();
    let reads: BTreeMap<String, Arc<MemTable>> = job.reads().map(|n| (n.clone(), tables[n].clone())).collect();
    let (batches, planned) = execute(job, &reads, &job.render_sql(as_of), partitions).await?;
    let (batches, schema) = match job.kind {
        JobKind::Measure | JobKind::State => (batches, planned),
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

/// Run `sql` for `job` in a session that holds only `tables`.
async fn execute(
    job: &Job,
    tables: &BTreeMap<String, Arc<MemTable>>,
    sql: &str,
    partitions: usize,
) -> Result<(Vec<RecordBatch>, SchemaRef), JobError> {
    let failed = |source| JobError::Execution {
        job: job.name.clone(),
        file: job.file.clone(),
        source,
    };
    let config = SessionConfig::new().with_target_partitions(partitions);
    let ctx = SessionContext::new_with_config(config);
    for (name, table) in tables {
        ctx.register_table(name.as_str(), table.clone()).map_err(failed)?;
    }
    let frame = ctx.sql(sql).await.map_err(failed)?;
    let planned: SchemaRef = Arc::new(frame.schema().as_arrow().clone());
    let batches = frame.collect().await.map_err(failed)?;
    Ok((batches, planned))
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
        let failed = |check, message| JobError::Check {
            job: job.name.clone(),
            file: job.file.clone(),
            check,
            message,
        };
        for (i, name) in ["customer_id", "value"].iter().enumerate() {
            if columns[i].null_count() > 0 {
                let message = format!("{name} is null in {} rows", columns[i].null_count());
                return Err(failed("not_null", message));
            }
        }
        let ids = columns[0].as_any().downcast_ref::<StringArray>().expect("utf8");
        for id in ids.iter().flatten() {
            if !seen.insert(id.to_string()) {
                return Err(failed("unique", format!("customer '{id}' has more than one row")));
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
