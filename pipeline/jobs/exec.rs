//! Running the catalog: state jobs fold a batch of new events into the state tables; measure
//! and tag jobs are evaluated on the state tables.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{Array, ArrayRef, BooleanArray, Int64Array, StringArray, UInt32Array};
use arrow::compute::{cast, take_record_batch};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use arrow::row::{RowConverter, SortField};
use chrono::{DateTime, Utc};
use datafusion::catalog::MemTable;
use datafusion::execution::config::SessionConfig;
use datafusion::prelude::SessionContext;
use foldhash::fast::RandomState;
use tracing::{info, info_span, Instrument};

use crate::state::tables::{null_keys, Segment, StateTable, Table};
use crate::storage::masked::{Copier, MaskedRows, Plain};
use crate::storage::rows::split_batch;
use crate::storage::segments::newest_to_join;

use super::catalog::{check_tag_output, state_schema, Catalog, Job, JobKind, Scope, CURRENT_ROWS, NEW_ROWS};
use super::customers::{customer_ids, members, CustomerBits, Numbering, CUSTOMER_ID};
use super::engine::{ClusterRun, EngineError, FileTable};

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
    /// A job's query failed on the cluster (a task failed past Ballista's retries, an
    /// executor was lost, the scheduler went away): nothing was published.
    #[error("job '{job}' ({}) failed on the cluster at {url}: {source}", file.display())]
    Cluster {
        job: String,
        file: PathBuf,
        url: String,
        #[source]
        source: Box<datafusion::error::DataFusionError>,
    },
    #[error(transparent)]
    Engine(#[from] EngineError),
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
#[derive(Clone)]
pub struct JobRun {
    pub job: Job,
    pub duration: Duration,
    /// For tags: `customer_id, value, score` as Utf8, Utf8, Float64. For measures: as
    /// produced. A micro-batch masks the rows it replaces ([`MaskedRows`]) instead of
    /// copying the others around them.
    pub output: MaskedRows,
    /// Schema of `output` (known even when there are no rows).
    pub schema: SchemaRef,
    pub rows: usize,
    /// For tags: customers per value, counted once for the gates, the report and the
    /// backfill's baselines. Empty for measures.
    pub values: BTreeMap<String, u64>,
    /// The customers it was evaluated for, the previous rows kept for everyone else
    /// (`None`: evaluated for everyone).
    pub evaluated_for: Option<Arc<CustomerBits>>,
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

/// A job `linked_by` a column is evaluated for the customers linked to the changed ones
/// while those are at most one in this many of the customers met; beyond, the linked
/// customers' rows are most of the input and evaluating everyone costs less. Following the
/// links is bit tests on numbered columns (three passes over the inputs).
const LINKED_AT_MOST_ONE_IN: usize = 2;

/// Segments a table without a `day_column` keeps before a fold joins its smallest ones.
pub const MAX_KEYED_SEGMENTS: usize = 8;
/// Segments one day of a day-segmented table keeps before a fold joins its newest ones.
pub const MAX_DAY_SEGMENTS: usize = 8;

/// What folding one batch into a state table did.
#[derive(Debug, Clone)]
pub struct StateRun {
    pub job: String,
    /// Rows the job derived from the batch's events.
    pub new_rows: usize,
    /// Rows of the table after the merge (and retention).
    pub rows: usize,
    /// Rows of the segments the fold wrote (new and joined ones; the others are kept as
    /// their files were).
    pub rows_rewritten: usize,
    /// The customers whose rows of the table the fold may have changed (see
    /// [`changed_customers`]), by the session's numbering; `None` when it cannot say (no
    /// numbering, no `customer_id` column, or rows dropped by retention).
    pub changed_customers: Option<CustomerBits>,
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
/// `events` (per stream), which are merged with the segments of its current table they
/// touch by the job's key and merge rules, at `as_of` (rows past the job's retention are
/// dropped). `current` lacks a table when the state starts empty. Returns the new tables;
/// `current` is left as it was.
///
/// State jobs read only the streams, so they fold concurrently (one task each). With a
/// `numbering` (a `follow` session's), the rows a fold touches in a table keyed by customer
/// are found by customer number first (see [`take_touched_rows`]).
pub async fn fold_state(
    catalog: &Catalog,
    current: &BTreeMap<String, StateTable>,
    events: &BTreeMap<String, Table>,
    as_of: DateTime<Utc>,
    numbering: Option<&Arc<Numbering>>,
) -> Result<(BTreeMap<String, StateTable>, Vec<StateRun>), JobError> {
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
            numbering.cloned(),
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
///
/// The current rows of the keys the new rows touch are taken out of their segments (in
/// memory: the stored files stay as they are) and merged with the new rows into new
/// segments, which come after every other: a stored key's newest segment holds its row, and
/// a state loaded from storage keeps only that one ([`newest_rows_only`]). So a fold costs
/// what it touched and writes only its new segments, however large the table; a day (or a
/// keyed table) with too many segments has them joined into one.
async fn fold_one(
    job: Job,
    streams: Arc<BTreeMap<String, Arc<MemTable>>>,
    current: Option<StateTable>,
    as_of: DateTime<Utc>,
    partitions: usize,
    numbering: Option<Arc<Numbering>>,
) -> Result<(StateTable, StateRun), JobError> {
    let started = Instant::now();
    let derived = run_one(&job, &Inputs::Memory(streams.as_ref().clone()), as_of, partitions)
        .instrument(info_span!("derive"))
        .await?;
    let schema = Arc::new(state_schema(&derived.schema));
    let new_rows = conform(&job, derived.output.to_batches(), &schema)?;
    check_keys(&job, &new_rows)?;
    let exclusive = current.as_ref().is_some_and(|t| t.exclusive);
    let mut segments = Vec::new();
    for segment in current.map(|t| t.segments).unwrap_or_default() {
        segments.push(conform_segment(&job, segment, &schema)?);
    }
    if !exclusive {
        newest_rows_only(&job, &mut segments);
    }
    let copier = copier_of(numbering.as_deref());
    let day_column = job.state.as_ref().and_then(|s| s.day_column.clone());
    // Retention: whole days past it go.
    let mut dropped = false;
    if day_column.is_some() {
        let oldest_kept = as_of.timestamp().div_euclid(86_400) - job.retain_days().expect("checked by the catalog") + 1;
        segments.retain(|s| {
            let kept = s.day.is_none_or(|day| day >= oldest_kept);
            dropped |= !kept && s.rows() > 0;
            kept
        });
    }
    let new_days = match &day_column {
        Some(column) => Some(day_values(&job, &new_rows, column)?),
        None => None,
    };
    // The current rows of the touched keys, out of their segments.
    let touched = take_touched_rows(&job, &mut segments, &new_rows, new_days.as_ref(), numbering.as_deref());
    let changed_customers = match (dropped, numbering.as_deref()) {
        (false, Some(numbering)) => changed_customers(&job, &new_rows, &touched, numbering),
        _ => None,
    };
    let mut merged = Vec::new();
    if !touched.is_empty() || !new_rows.is_empty() {
        let mut inputs = BTreeMap::new();
        inputs.insert(CURRENT_ROWS.to_string(), mem_table(schema.clone(), touched, partitions));
        inputs.insert(NEW_ROWS.to_string(), mem_table(schema.clone(), new_rows, partitions));
        let columns: Vec<String> = schema.fields().iter().map(|f| f.name().clone()).collect();
        let (batches, _) = execute(
            &job,
            &Inputs::Memory(inputs),
            &job.merge_sql(&columns, as_of),
            partitions,
        )
        .instrument(info_span!("merge"))
        .await?;
        merged = conform(&job, batches, &schema)?;
    }
    match &day_column {
        Some(column) => segments.extend(split_by_day(&job, merged, column)?),
        None if !merged.is_empty() => segments.push(Segment::new(None, merged)),
        None => {}
    }
    let mut kept = join_small_segments(segments, day_column.is_some(), copier);
    // The rows the next commit writes: the new segments and the joined ones.
    let rows_rewritten = kept.iter().filter(|s| s.stored.is_none()).map(Segment::rows).sum();
    if kept.is_empty() {
        // An empty table still stores its schema.
        kept.push(Segment::new(None, Vec::new()));
    }
    let table = StateTable {
        schema,
        segments: kept,
        exclusive: true,
    };
    let run = StateRun {
        job: job.name.clone(),
        new_rows: derived.rows,
        rows: table.rows(),
        rows_rewritten,
        changed_customers,
        duration: started.elapsed(),
    };
    Ok((table, run))
}

/// The key columns of `batch` in Arrow's row format (equal bytes exactly when the keys are).
fn key_rows(job: &Job, batch: &RecordBatch) -> arrow::row::Rows {
    let keys = &job.state.as_ref().expect("a state job").key;
    let columns: Vec<ArrayRef> = keys
        .iter()
        .map(|k| batch.column_by_name(k).expect("key column").clone())
        .collect();
    row_format(&columns)
}

/// Take the rows whose key one of `new_rows` has out of `segments` (those of the new rows'
/// days, for a day-segmented table) and return them: they are copied out and masked in
/// their segments, whose other rows are not copied ([`MaskedRows`]), so a fold costs what
/// it touched, not the size of today's rows. A segment masked enough is compacted, a part
/// at a time within twice the rows taken from it.
///
/// With a `numbering`, a table keyed by customer is searched by customer number first: only
/// the rows of the new rows' customers can match (a bit test per row) and the keys of those
/// rows alone are compared. Without one, every row's key is compared.
fn take_touched_rows(
    job: &Job,
    segments: &mut [Segment],
    new_rows: &[RecordBatch],
    new_days: Option<&BTreeSet<i64>>,
    numbering: Option<&Numbering>,
) -> Vec<RecordBatch> {
    if new_rows.is_empty() {
        return Vec::new();
    }
    let keys = &job.state.as_ref().expect("a state job").key;
    let by_customer = numbering
        .filter(|_| keys.iter().any(|k| k == CUSTOMER_ID))
        .map(|numbering| (numbering, numbering.customers_in(new_rows)));
    let customer_only = keys.len() == 1 && by_customer.is_some();
    let mut new_keys: HashSet<Vec<u8>, RandomState> = HashSet::default();
    if !customer_only {
        for batch in new_rows {
            new_keys.extend(key_rows(job, batch).iter().map(|r| r.as_ref().to_vec()));
        }
    }
    let copier = copier_of(numbering);
    let mut touched = Vec::new();
    for segment in segments.iter_mut() {
        let may_hold = match (new_days, segment.day) {
            (Some(days), Some(day)) => days.contains(&day),
            _ => true,
        };
        if !may_hold || segment.rows() == 0 {
            continue;
        }
        let taken = match &by_customer {
            Some((numbering, candidates)) => segment.rows.take(copier, |batch| {
                let hit = members(&numbering.numbers(batch), candidates);
                match customer_only || hit.true_count() == 0 {
                    true => hit,
                    false => keys_among(job, batch, &hit, &new_keys),
                }
            }),
            None => segment.rows.take(copier, |batch| {
                key_rows(job, batch)
                    .iter()
                    .map(|k| Some(new_keys.contains(k.as_ref())))
                    .collect()
            }),
        };
        let taken_rows: usize = taken.iter().map(|b| b.num_rows()).sum();
        if taken_rows > 0 {
            segment.rows = std::mem::take(&mut segment.rows).compacted(copier, 2 * taken_rows);
        }
        touched.extend(taken);
    }
    touched
}

/// How a fold copies rows out of segments: through a session's numbering, so copies keep
/// their customer numbers, or plainly.
fn copier_of(numbering: Option<&Numbering>) -> &dyn Copier {
    match numbering {
        Some(numbering) => numbering,
        None => &Plain,
    }
}

/// Of the rows of `batch` that `candidates` selects, those whose key is in `keys`: the key
/// columns of the candidates alone are copied and made key rows (the other columns of a
/// state row are not).
fn keys_among(
    job: &Job,
    batch: &RecordBatch,
    candidates: &BooleanArray,
    keys: &HashSet<Vec<u8>, RandomState>,
) -> BooleanArray {
    let key_columns: Vec<ArrayRef> = job
        .state
        .as_ref()
        .expect("a state job")
        .key
        .iter()
        .map(|k| {
            let column = batch.column_by_name(k).expect("key column");
            arrow::compute::filter(column, candidates).expect("a mask of the batch's length")
        })
        .collect();
    let candidate_keys = row_format(&key_columns);
    let mut hit = arrow::array::BooleanBufferBuilder::new(batch.num_rows());
    hit.append_n(batch.num_rows(), false);
    for (key, row) in candidate_keys.iter().zip(candidates.values().set_indices()) {
        if keys.contains(key.as_ref()) {
            hit.set_bit(row, true);
        }
    }
    BooleanArray::new(hit.finish(), None)
}

/// Keep each key's row of its newest segment only (segments in stored order: a fold writes
/// a touched key's new row in a new segment and leaves the older files as they were).
fn newest_rows_only(job: &Job, segments: &mut [Segment]) {
    let mut seen: HashSet<Vec<u8>, RandomState> = HashSet::default();
    for segment in segments.iter_mut().rev() {
        let mut kept = Vec::new();
        for batch in segment.rows.to_batches() {
            let keys = key_rows(job, &batch);
            let newest: BooleanArray = keys.iter().map(|k| Some(seen.insert(k.as_ref().to_vec()))).collect();
            kept.extend(split_batch(&batch, &newest).0);
        }
        segment.rows = MaskedRows::from_batches(kept);
    }
}

/// Segments with every key in one of them, joined where there are too many. Past
/// [`MAX_DAY_SEGMENTS`] in a day, its newest segment takes in the ones before it while it
/// holds at least half the rows of the next ([`newest_to_join`]), all copied once: a binary
/// counter, so a day of n folds keeps about
/// `MAX_DAY_SEGMENTS + log2(n)` segments and a row is written again about `log2(n)` times
/// (joining every segment of the day each time there were too many rewrote the whole day
/// every few folds: a `follow` session's commits grew with the day's events). Keyed
/// segments: the two smallest while more than [`MAX_KEYED_SEGMENTS`] remain. A joined
/// segment is new (the next commit writes it) and takes the place of its parts, its rows
/// copied through `copier`; an emptied one is dropped (newer segments hold all of its keys).
fn join_small_segments(segments: Vec<Segment>, by_day: bool, copier: &dyn Copier) -> Vec<Segment> {
    let mut segments: Vec<Segment> = segments.into_iter().filter(|s| s.rows() > 0).collect();
    if by_day {
        let mut days: BTreeMap<Option<i64>, Vec<Segment>> = BTreeMap::new();
        for segment in segments {
            days.entry(segment.day).or_default().push(segment);
        }
        let mut out = Vec::new();
        for (day, mut parts) in days {
            let newest = parts.pop().expect("a day has a segment");
            let older: Vec<usize> = parts.iter().map(Segment::rows).collect();
            let taken = newest_to_join(&older, MAX_DAY_SEGMENTS, newest.rows());
            let mut joined: Vec<Segment> = parts.drain(parts.len() - taken..).collect();
            joined.push(newest);
            parts.push(match joined.len() {
                1 => joined.pop().expect("the newest"),
                _ => joined_segment(day, joined, copier),
            });
            out.extend(parts);
        }
        return out;
    }
    while segments.len() > MAX_KEYED_SEGMENTS {
        let mut order: Vec<usize> = (0..segments.len()).collect();
        order.sort_by_key(|&i| segments[i].rows());
        let (later, earlier) = (order[0].max(order[1]), order[0].min(order[1]));
        let later = segments.remove(later);
        let earlier = segments.remove(earlier);
        segments.push(joined_segment(None, vec![later, earlier], copier));
    }
    segments
}

/// One new segment of `day` with the kept rows of `parts`, in order.
fn joined_segment(day: Option<i64>, parts: Vec<Segment>, copier: &dyn Copier) -> Segment {
    let batches = parts.iter().flat_map(|s| s.rows.kept_batches(copier)).collect();
    Segment::new(day, batches)
}

/// The customers whose rows a fold of `new_rows` (with `touched`, the current rows of their
/// keys) may change: those of the new rows and, where the key does not hold the customer (an
/// order's row names the customer of its earliest event), those of the touched rows. Rows of
/// other keys come out of the merge as they went in. `None` without a `customer_id` column,
/// or when a row names no customer.
fn changed_customers(
    job: &Job,
    new_rows: &[RecordBatch],
    touched: &[RecordBatch],
    numbering: &Numbering,
) -> Option<CustomerBits> {
    let keys = &job.state.as_ref().expect("a state job").key;
    let customer_keyed = keys.iter().any(|k| k == CUSTOMER_ID);
    let batches: Vec<&RecordBatch> = new_rows
        .iter()
        .chain(touched.iter().filter(|_| !customer_keyed))
        .collect();
    for batch in &batches {
        if batch.column_by_name(CUSTOMER_ID)?.null_count() > 0 {
            return None;
        }
    }
    Some(numbering.customers_in(batches))
}

/// Each row of `columns` as bytes that are equal exactly when the rows' values are
/// (nulls, types and separators included: Arrow's row format), to compare rows or keys by.
fn row_bytes(columns: &[ArrayRef]) -> Vec<Vec<u8>> {
    row_format(columns).iter().map(|row| row.as_ref().to_vec()).collect()
}

/// `columns` (of one batch) in Arrow's row format.
fn row_format(columns: &[ArrayRef]) -> arrow::row::Rows {
    let fields = columns.iter().map(|c| SortField::new(c.data_type().clone())).collect();
    let converter = RowConverter::new(fields).expect("row format supports state and job columns");
    converter.convert_columns(columns).expect("columns of one batch")
}

/// The distinct values of the day column of `batches`.
fn day_values(job: &Job, batches: &[RecordBatch], column: &str) -> Result<BTreeSet<i64>, JobError> {
    let mut days = BTreeSet::new();
    for batch in batches {
        days.extend(day_column(job, batch, column)?.values().iter().copied());
    }
    Ok(days)
}

/// Rows of `batches` as one segment per day.
fn split_by_day(job: &Job, batches: Vec<RecordBatch>, column: &str) -> Result<Vec<Segment>, JobError> {
    let mut days: BTreeMap<i64, Vec<RecordBatch>> = BTreeMap::new();
    for batch in batches {
        let values = day_column(job, &batch, column)?;
        let mut rows: BTreeMap<i64, Vec<u32>> = BTreeMap::new();
        for (i, day) in values.values().iter().enumerate() {
            rows.entry(*day).or_default().push(i as u32);
        }
        if rows.len() == 1 {
            days.entry(*rows.keys().next().expect("one day"))
                .or_default()
                .push(batch);
            continue;
        }
        for (day, indices) in rows {
            let taken = take_record_batch(&batch, &UInt32Array::from(indices)).expect("indices in range");
            days.entry(day).or_default().push(taken);
        }
    }
    Ok(days
        .into_iter()
        .map(|(day, batches)| Segment::new(Some(day), batches))
        .collect())
}

/// The day column of a state row batch as Int64 (the catalog keeps it a non-null key).
fn day_column(job: &Job, batch: &RecordBatch, column: &str) -> Result<Int64Array, JobError> {
    let values = batch.column_by_name(column).expect("the day column is a state column");
    let bad = |message: String| JobError::Output {
        job: job.name.clone(),
        file: job.file.clone(),
        message: format!("day column '{column}': {message}"),
    };
    let values = cast(values, &DataType::Int64).map_err(|e| bad(e.to_string()))?;
    let values = values
        .as_any()
        .downcast_ref::<Int64Array>()
        .expect("cast to Int64")
        .clone();
    if values.null_count() > 0 {
        return Err(bad(format!("null in {} rows", values.null_count())));
    }
    Ok(values)
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
    match null_keys(batches, keys) {
        Some(message) => Err(JobError::Output {
            job: job.name.clone(),
            file: job.file.clone(),
            message,
        }),
        None => Ok(()),
    }
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

/// A segment cast to a state table's schema; one already of it stays as it is (masks
/// included).
fn conform_segment(job: &Job, segment: Segment, schema: &SchemaRef) -> Result<Segment, JobError> {
    if segment.rows.batches().all(|b| b.schema_ref() == schema) {
        return Ok(segment);
    }
    let batches = conform(job, segment.rows.to_batches(), schema)?;
    Ok(Segment {
        rows: MaskedRows::from_batches(batches),
        ..segment
    })
}

/// What a batch may reuse from the batch before it at the same as-of day: every tag's and
/// measure's output then (made from the state before this batch's fold), the customers
/// whose state rows this batch's fold may have changed, and the session's numbering of
/// customers (the previous outputs' rows are numbered already).
pub struct Reuse<'a> {
    pub previous: &'a BTreeMap<String, JobRun>,
    pub changed: Arc<CustomerBits>,
    /// State tables whose fold changed nobody's rows (a batch of clicks leaves the order
    /// and contact tables as they were): jobs that read only such tables keep their rows.
    pub unchanged: BTreeSet<String>,
    pub numbering: Arc<Numbering>,
}

/// Customers a job is evaluated for, by number (shared: a set is recognised by identity).
type Dirty = Arc<CustomerBits>;

/// Every customer of `sets`.
fn union(sets: &[&Dirty]) -> Dirty {
    let mut all = CustomerBits::default();
    for set in sets {
        all.add(set);
    }
    Arc::new(all)
}

fn names_customers(schema: &SchemaRef) -> bool {
    schema.column_with_name(CUSTOMER_ID).is_some()
}

/// Whether two outputs of one job hold the same rows (as sets of rows).
fn same_rows(before: &JobRun, after: &JobRun) -> bool {
    let rows = |run: &JobRun| -> Vec<Vec<u8>> {
        let batches = run.output.to_batches();
        let mut rows: Vec<Vec<u8>> = batches.iter().flat_map(|b| row_bytes(b.columns())).collect();
        rows.sort_unstable();
        rows
    };
    before.schema == after.schema && rows(before) == rows(after)
}

/// How one job is evaluated in a batch.
enum Plan {
    /// For every customer, from its whole inputs.
    Everyone,
    /// For these customers only (their rows of the inputs), the previous rows kept for
    /// everyone else: a [`Scope::Customer`] job whose inputs changed for them alone.
    /// `narrowed`: the inputs' rows of these customers, already selected.
    Customers {
        dirty: Dirty,
        previous: Box<JobRun>,
        narrowed: Option<BTreeMap<String, Table>>,
        numbering: Arc<Numbering>,
    },
    /// Nobody's: nothing the job reads changed and it does not read the clock, so its rows
    /// are the previous ones.
    Unchanged { previous: Box<JobRun> },
    /// For the customers linked (by `link`, e.g. a device) to those whose inputs changed,
    /// the previous rows kept for everyone else: a job declaring `linked_by`.
    Linked {
        link: String,
        seed: Dirty,
        previous: Box<JobRun>,
        numbering: Arc<Numbering>,
    },
}

/// Run every measure and tag job on the state tables (each job once its inputs are ready;
/// independent jobs run concurrently). With `reuse`, a job of [`Scope::Customer`] is
/// evaluated only for the customers whose inputs changed (see [`plan`]); every job's output
/// is still whole: the same rows as evaluating everyone.
///
/// With a `cluster` and no `reuse` (a full evaluation), every job runs on the cluster; the
/// executors read the state tables and the outputs other jobs read from staged files (see
/// [`super::engine`]). Evaluations for some customers stay in
/// this process: their cost follows what changed, and a cluster's round trips would cost
/// more than they do.
pub async fn run_jobs(
    catalog: &Catalog,
    state: &BTreeMap<String, StateTable>,
    as_of: DateTime<Utc>,
    reuse: Option<Reuse<'_>>,
    cluster: Option<Arc<ClusterRun>>,
) -> Result<JobOutput, JobError> {
    let cluster = cluster.filter(|_| reuse.is_none());
    // Every table in one partition: most jobs run with one (a share of the cores), and a
    // table split wider would be merged back by each of them (measured: a fifth of the
    // jobs' CPU time); the few that get more cores split their input themselves.
    let mut tables: BTreeMap<String, Source> = state.iter().map(|(name, t)| (name.clone(), Source::state(t))).collect();
    // The customers whose state changed, and per table read so far the customers whose
    // rows may differ from the previous batch's (`None`: unknown, anyone's).
    let state_changed: Option<Dirty> = reuse.as_ref().map(|r| r.changed.clone());
    let mut changed: BTreeMap<String, Option<Dirty>> = state
        .keys()
        .map(|name| match &reuse {
            Some(r) if r.unchanged.contains(name) => (name.clone(), Some(Dirty::default())),
            _ => (name.clone(), state_changed.clone()),
        })
        .collect();
    // Each table's rows of the customers whose state changed, selected once per batch: most
    // jobs evaluated for some customers are evaluated for exactly those, and read these.
    let mut narrowed: BTreeMap<String, Table> = match (&state_changed, &reuse) {
        (Some(dirty), Some(reuse)) => {
            let wanted = narrowed_tables_read(catalog, &reuse.unchanged);
            narrow_tables(state, &wanted, dirty, &reuse.numbering)
                .instrument(info_span!("narrow"))
                .await
        }
        _ => BTreeMap::new(),
    };
    let read_by_others: HashSet<&str> = catalog
        .jobs
        .iter()
        .flat_map(|j| j.reads())
        .map(String::as_str)
        .collect();
    // On a cluster: every table a job reads, as files.
    let mut files: BTreeMap<String, FileTable> = BTreeMap::new();
    if let Some(run) = &cluster {
        for (name, table) in state.iter().filter(|(name, _)| read_by_others.contains(name.as_str())) {
            files.insert(name.clone(), run.state_table(name, table).await?);
        }
    }
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
            let reads: BTreeMap<String, Source> = job.reads().map(|n| (n.clone(), tables[n].clone())).collect();
            let plan = plan(job, &reads, &changed, reuse.as_ref(), state_changed.as_ref(), &narrowed);
            let previous = reuse.as_ref().and_then(|r| r.previous.get(&job.name).cloned());
            let diff_needed = read_by_others.contains(job.name.as_str());
            let numbering = reuse.as_ref().map(|r| r.numbering.clone());
            let on_cluster = cluster.as_ref().map(|run| Inputs::Cluster(run.clone(), files.clone()));
            let job = job.clone();
            running.spawn(
                async move {
                    let (run, evaluated_for, fresh) = match on_cluster {
                        Some(inputs) => (run_one(&job, &inputs, as_of, partitions).await?, None, None),
                        None => evaluate_job(&job, reads, plan, as_of, partitions).await?,
                    };
                    let changed = match (evaluated_for, previous, numbering) {
                        // Evaluated for some customers: theirs are the rows that may differ
                        // (the state's own set stays itself: the plan recognises it by identity).
                        (Some(dirty), _, _) => Some(dirty),
                        // A table of no customer in particular (a population's figure): no
                        // customer's input changed if its rows did not, everyone's if they did.
                        (None, Some(previous), Some(_)) if diff_needed && !names_customers(&run.schema) => {
                            same_rows(&previous, &run).then(Dirty::default)
                        }
                        (None, Some(previous), Some(numbering)) if diff_needed => {
                            Some(Arc::new(customers_with_other_rows(&previous, &run, &numbering)))
                        }
                        _ => None,
                    };
                    Ok::<_, JobError>((run, changed, fresh))
                }
                .instrument(span),
            );
        }
        let Some(finished) = running.join_next().await else {
            break;
        };
        let (run, run_changed, fresh) = task_output(finished)?;
        let for_state_changes = match (&run.evaluated_for, &state_changed) {
            (Some(dirty), Some(state)) => Arc::ptr_eq(dirty, state),
            _ => false,
        };
        if let (true, Some(fresh)) = (for_state_changes, fresh) {
            narrowed.insert(
                run.job.name.clone(),
                Table {
                    schema: run.schema.clone(),
                    batches: fresh,
                },
            );
        }
        if let (Some(cluster), true) = (&cluster, read_by_others.contains(run.job.name.as_str())) {
            let staged = cluster
                .rows(&run.job.name, &run.schema, &run.output.to_batches())
                .await?;
            files.insert(run.job.name.clone(), staged);
        }
        tables.insert(
            run.job.name.clone(),
            Source::rows(run.schema.clone(), run.output.clone()),
        );
        changed.insert(run.job.name.clone(), run_changed);
        done.insert(run.job.name.clone(), run);
    }
    assert!(waiting.is_empty(), "the catalog checks that every job's inputs exist");
    if let Some(reuse) = &reuse {
        reuse.numbering.forget_dropped_columns();
    }
    let runs = catalog.jobs.iter().filter_map(|j| done.remove(&j.name)).collect();
    Ok(JobOutput { runs })
}

/// The state tables whose rows of the changed customers some job may read as selected ahead
/// ([`narrow_tables`]): every table a job reads, except where each reader links customers
/// (`linked_by`: it selects its own rows) or reads only tables the fold left unchanged (its
/// rows stay the previous ones). A table left out that a job does read after all is
/// selected by that job itself: this saves copies, it never changes a row.
fn narrowed_tables_read<'a>(catalog: &'a Catalog, unchanged: &BTreeSet<String>) -> HashSet<&'a str> {
    let stays = |job: &Job| !job.reads_time_of_day() && job.reads().all(|t| unchanged.contains(t));
    catalog
        .jobs
        .iter()
        .filter(|job| job.kind != JobKind::State && job.linked_by.is_none() && !stays(job))
        .flat_map(|job| job.reads().map(String::as_str))
        .collect()
}

/// Each state table's rows of the `dirty` customers (of the tables that name their
/// customers; masked rows left out), selected side by side off the runtime's threads: no
/// job starts before they are ready, so one table after another would leave a core idle.
async fn narrow_tables(
    state: &BTreeMap<String, StateTable>,
    wanted: &HashSet<&str>,
    dirty: &Dirty,
    numbering: &Arc<Numbering>,
) -> BTreeMap<String, Table> {
    let mut selections = tokio::task::JoinSet::new();
    let selected = state
        .iter()
        .filter(|(name, t)| wanted.contains(name.as_str()) && names_customers(&t.schema));
    for (name, table) in selected {
        let (name, table, dirty, numbering) = (name.clone(), table.clone(), dirty.clone(), numbering.clone());
        selections.spawn_blocking(move || {
            let batches = table
                .segments
                .iter()
                .flat_map(|s| numbering.select_masked(&s.rows, &dirty))
                .collect();
            let schema = table.schema;
            (name, Table { schema, batches })
        });
    }
    let mut narrowed = BTreeMap::new();
    while let Some(selected) = selections.join_next().await {
        let (name, table) = selected.expect("selecting rows does not panic");
        narrowed.insert(name, table);
    }
    narrowed
}

/// A table a job reads: an earlier job's rows, or a state table, whose masked segments are
/// copied out only if a job reads it whole (once per batch, shared by its readers): a job
/// evaluated for some customers reads their rows only, selected past the masks.
#[derive(Clone)]
struct Source {
    schema: SchemaRef,
    rows: SourceRows,
}

#[derive(Clone)]
struct SourceRows {
    /// A job's output, or a state table's segments.
    parts: Arc<Vec<MaskedRows>>,
    /// Every row, copied out of the masked parts the first time a job reads them whole.
    whole: Arc<std::sync::OnceLock<Vec<RecordBatch>>>,
}

impl Source {
    fn rows(schema: SchemaRef, rows: MaskedRows) -> Self {
        Self::of(schema, vec![rows])
    }

    fn state(table: &StateTable) -> Self {
        let segments = table.segments.iter().map(|s| s.rows.clone()).collect();
        Self::of(table.schema.clone(), segments)
    }

    fn of(schema: SchemaRef, parts: Vec<MaskedRows>) -> Self {
        let rows = SourceRows {
            parts: Arc::new(parts),
            whole: Arc::default(),
        };
        Source { schema, rows }
    }

    /// Every row (masked parts copied, the first time).
    fn batches(&self) -> &[RecordBatch] {
        let parts = &self.rows.parts;
        self.rows
            .whole
            .get_or_init(|| parts.iter().flat_map(MaskedRows::to_batches).collect())
    }

    /// Each batch with the mask of its kept rows (`None`: all), none copied.
    fn parts(&self) -> Vec<(&RecordBatch, Option<&arrow::buffer::BooleanBuffer>)> {
        self.rows.parts.iter().flat_map(MaskedRows::parts).collect()
    }

    /// The rows whose value `numbering` numbers is in `set` (masked rows left out, none
    /// copied but these).
    fn select(&self, numbering: &Numbering, set: &CustomerBits) -> Vec<RecordBatch> {
        self.rows
            .parts
            .iter()
            .flat_map(|rows| numbering.select_masked(rows, set))
            .collect()
    }

    fn table(&self) -> Table {
        Table {
            schema: self.schema.clone(),
            batches: self.batches().to_vec(),
        }
    }
}

/// How to evaluate `job` in this batch: for the customers whose inputs changed when it is
/// of [`Scope::Customer`], has a previous output at this as-of day, reads the day only, and
/// every table it reads names its customers and says whose rows changed; else for everyone.
fn plan(
    job: &Job,
    reads: &BTreeMap<String, Source>,
    changed: &BTreeMap<String, Option<Dirty>>,
    reuse: Option<&Reuse<'_>>,
    state_changed: Option<&Dirty>,
    narrowed: &BTreeMap<String, Table>,
) -> Plan {
    let (Some(reuse), Some(state_changed)) = (reuse, state_changed) else {
        return Plan::Everyone;
    };
    let Some(previous) = reuse.previous.get(&job.name) else {
        return Plan::Everyone;
    };
    let unchanged = |name: &String| matches!(changed.get(name), Some(Some(dirty)) if dirty.is_empty());
    if !job.reads_time_of_day() && reads.keys().all(unchanged) {
        return Plan::Unchanged {
            previous: Box::new(previous.clone()),
        };
    }
    if job.scope != Scope::Customer || job.reads_time_of_day() || !names_customers(&previous.schema) {
        return Plan::Everyone;
    }
    let mut inputs_changed: Vec<&Dirty> = Vec::new();
    for (name, table) in reads {
        let Some(Some(dirty)) = changed.get(name) else {
            return Plan::Everyone;
        };
        match names_customers(&table.schema) {
            // An input nobody's rows of changed adds nobody (and keeps the state's set intact).
            true if dirty.is_empty() => {}
            true => inputs_changed.push(dirty),
            // A table of no customer in particular: read whole, and only while unchanged.
            false if dirty.is_empty() => {}
            false => return Plan::Everyone,
        }
    }
    let numbering = reuse.numbering.clone();
    let previous = Box::new(previous.clone());
    if let Some(link) = &job.linked_by {
        if !reads.values().all(|t| t.schema.column_with_name(link).is_some()) {
            return Plan::Everyone;
        }
        let seed = union(&inputs_changed);
        if seed.len() > numbering.customers() / LINKED_AT_MOST_ONE_IN {
            return Plan::Everyone;
        }
        return Plan::Linked {
            link: link.clone(),
            seed,
            previous,
            numbering,
        };
    }
    // The customers whose state changed, exactly: the inputs' rows are selected already.
    if inputs_changed.iter().all(|d| Arc::ptr_eq(d, state_changed)) {
        let selected: Option<BTreeMap<String, Table>> = reads
            .iter()
            .map(|(name, table)| match names_customers(&table.schema) {
                true => Some((name.clone(), narrowed.get(name)?.clone())),
                false => Some((name.clone(), table.table())),
            })
            .collect();
        return Plan::Customers {
            dirty: state_changed.clone(),
            previous,
            narrowed: selected,
            numbering,
        };
    }
    Plan::Customers {
        dirty: union(&inputs_changed),
        previous,
        narrowed: None,
        numbering,
    }
}

/// Evaluate one job as `plan` says. With some customers only, also returns the fresh rows
/// (the job's rows of those customers).
async fn evaluate_job(
    job: &Job,
    reads: BTreeMap<String, Source>,
    plan: Plan,
    as_of: DateTime<Utc>,
    partitions: usize,
) -> Result<(JobRun, Option<Dirty>, Option<Vec<RecordBatch>>), JobError> {
    let whole = |reads: &BTreeMap<String, Source>| -> BTreeMap<String, Table> {
        reads
            .iter()
            .map(|(name, source)| (name.clone(), source.table()))
            .collect()
    };
    let as_mem_tables = |tables: BTreeMap<String, Table>| -> BTreeMap<String, Arc<MemTable>> {
        tables
            .into_iter()
            .map(|(name, t)| (name, mem_table(t.schema, t.batches, 1)))
            .collect()
    };
    match plan {
        Plan::Unchanged { previous } => {
            let nobody: Dirty = Arc::default();
            let run = JobRun {
                duration: Duration::ZERO,
                evaluated_for: Some(nobody.clone()),
                ..*previous
            };
            Ok((run, Some(nobody), None))
        }
        Plan::Everyone => Ok((
            run_one(job, &Inputs::Memory(as_mem_tables(whole(&reads))), as_of, partitions).await?,
            None,
            None,
        )),
        Plan::Customers {
            dirty,
            previous,
            narrowed,
            numbering,
        } => {
            let started = Instant::now();
            let inputs = narrowed.unwrap_or_else(|| {
                reads
                    .into_iter()
                    .map(|(name, source)| {
                        let batches = match names_customers(&source.schema) {
                            true => source.select(&numbering, &dirty),
                            false => source.batches().to_vec(),
                        };
                        let schema = source.schema;
                        (name, Table { schema, batches })
                    })
                    .collect()
            });
            let fresh = match dirty.is_empty() {
                true => Vec::new(),
                false => run_one(job, &Inputs::Memory(as_mem_tables(inputs)), as_of, partitions)
                    .await?
                    .output
                    .to_batches(),
            };
            check_scope(job, &fresh, &dirty, &numbering)?;
            let run = splice(job, &previous, &dirty, &fresh, &numbering, started);
            Ok((run, Some(dirty), Some(fresh)))
        }
        Plan::Linked {
            link,
            seed,
            previous,
            numbering,
        } => {
            let started = Instant::now();
            // The customers linked to the changed ones (themselves included), and every
            // input row of the links those customers have.
            let links = numbering.linked(&link);
            let rows = || reads.values().flat_map(Source::parts);
            let seed_links = numbering.related(rows(), &seed, &links);
            let mut affected = links.related(rows(), &seed_links, &numbering);
            affected.add(&seed);
            let dirty: Dirty = Arc::new(affected);
            let dirty_links = numbering.related(rows(), &dirty, &links);
            let inputs: BTreeMap<String, Table> = reads
                .into_iter()
                .map(|(name, source)| {
                    let batches = source.select(&links, &dirty_links);
                    let schema = source.schema;
                    (name, Table { schema, batches })
                })
                .collect();
            let fresh = match dirty.is_empty() {
                true => Vec::new(),
                false => run_one(job, &Inputs::Memory(as_mem_tables(inputs)), as_of, partitions)
                    .await?
                    .output
                    .to_batches(),
            };
            // Rows of customers outside the linked ones (they share an unchanged link with
            // one of them) are as they were.
            let fresh = numbering.select(&fresh, &dirty);
            let run = splice(job, &previous, &dirty, &fresh, &numbering, started);
            Ok((run, Some(dirty), None))
        }
    }
}

/// `previous` with the rows of `dirty` replaced by `fresh` (counts per value updated from
/// the rows replaced and the fresh ones).
fn splice(
    job: &Job,
    previous: &JobRun,
    dirty: &Dirty,
    fresh: &[RecordBatch],
    numbering: &Numbering,
    started: Instant,
) -> JobRun {
    let mut output = previous.output.clone();
    let replaced = output.take(numbering, |batch| members(&numbering.numbers(batch), dirty));
    let replaced_rows: usize = replaced.iter().map(|b| b.num_rows()).sum();
    output.extend_joined(numbering, fresh.to_vec());
    let output = output.compacted(numbering, 2 * replaced_rows);
    let values = match job.kind {
        JobKind::Tag => {
            let mut values = previous.values.clone();
            subtract_counts(&mut values, value_counts(&replaced));
            for (value, n) in value_counts(fresh) {
                *values.entry(value).or_default() += n;
            }
            values
        }
        _ => BTreeMap::new(),
    };
    info!(
        customers = dirty.len(),
        "evaluated for the customers whose inputs changed"
    );
    JobRun {
        job: job.clone(),
        duration: started.elapsed(),
        rows: output.row_count(),
        output,
        schema: previous.schema.clone(),
        values,
        evaluated_for: Some(dirty.clone()),
    }
}

/// A job of scope "customer" answers for the customers it was given only; a row for anyone
/// else means it reads across customers, and splicing its rows would be wrong.
fn check_scope(job: &Job, fresh: &[RecordBatch], dirty: &Dirty, numbering: &Numbering) -> Result<(), JobError> {
    for batch in fresh {
        let numbers = numbering.numbers(batch);
        let Some(row) = numbers.values().iter().position(|&n| !dirty.contains(n)) else {
            continue;
        };
        let id = customer_ids(batch)
            .filter(|ids| ids.is_valid(row))
            .map(|ids| ids.value(row).to_string());
        return Err(JobError::Check {
            job: job.name.clone(),
            file: job.file.clone(),
            check: "scope",
            message: format!(
                "declared scope = \"customer\" but, evaluated for {} customers, returned a row for {} outside them: \
                 it reads other customers' rows; remove the scope",
                dirty.len(),
                id.map_or("a null customer_id".to_string(), |id| format!("customer '{id}'"))
            ),
        });
    }
    Ok(())
}

/// Take `removed` (customers per value) from `counts`; a value nobody holds any more goes.
fn subtract_counts(counts: &mut BTreeMap<String, u64>, removed: BTreeMap<String, u64>) {
    for (value, n) in removed {
        if let Some(count) = counts.get_mut(&value) {
            *count = count.saturating_sub(n);
            if *count == 0 {
                counts.remove(&value);
            }
        }
    }
}

/// The customers whose rows differ between two outputs of one job (as sets of rows).
fn customers_with_other_rows(before: &JobRun, after: &JobRun, numbering: &Numbering) -> CustomerBits {
    let rows_by_customer = |run: &JobRun| -> HashMap<u32, Vec<Vec<u8>>, RandomState> {
        let mut rows: HashMap<u32, Vec<Vec<u8>>, RandomState> = HashMap::default();
        for batch in &run.output.to_batches() {
            let numbers = numbering.numbers(batch);
            for (&number, bytes) in numbers.values().iter().zip(row_bytes(batch.columns())) {
                rows.entry(number).or_default().push(bytes);
            }
        }
        rows.values_mut().for_each(|r| r.sort());
        rows
    };
    let (old, new) = (rows_by_customer(before), rows_by_customer(after));
    let mut changed = CustomerBits::default();
    for (&customer, rows) in &old {
        if new.get(&customer) != Some(rows) {
            changed.insert(customer);
        }
    }
    for &customer in new.keys().filter(|c| !old.contains_key(*c)) {
        changed.insert(customer);
    }
    changed
}

async fn run_one(job: &Job, inputs: &Inputs, as_of: DateTime<Utc>, partitions: usize) -> Result<JobRun, JobError> {
    let started = Instant::now();
    let (batches, planned) = execute(job, &inputs.read_by(job), &job.render_sql(as_of), partitions).await?;
    let (batches, schema, values) = match job.kind {
        JobKind::Measure | JobKind::State => {
            let schema = nullable_as_batches_say(planned, &batches);
            (batches, schema, BTreeMap::new())
        }
        JobKind::Tag => {
            let batches = normalise_tag_rows(job, batches)?;
            let values = value_counts(&batches);
            (batches, tag_rows_schema(), values)
        }
    };
    let rows = batches.iter().map(|b| b.num_rows()).sum();
    let duration = started.elapsed();
    info!(rows, ms = duration.as_millis() as u64, "job done");
    Ok(JobRun {
        job: job.clone(),
        duration,
        output: MaskedRows::from_batches(batches),
        schema,
        rows,
        values,
        evaluated_for: None,
    })
}

/// The planned schema, with a column nullable wherever a batch says it may hold nulls:
/// DataFusion's plan can call a column non-null (`COALESCE(.., FALSE)`) that its execution
/// marks nullable, and a table must hold its batches.
fn nullable_as_batches_say(planned: SchemaRef, batches: &[RecordBatch]) -> SchemaRef {
    let nullable = |i: usize| {
        batches
            .iter()
            .any(|b| b.schema().fields().get(i).is_some_and(|f| f.is_nullable()))
    };
    if planned
        .fields()
        .iter()
        .enumerate()
        .all(|(i, f)| f.is_nullable() || !nullable(i))
    {
        return planned;
    }
    let fields: Vec<Field> = planned
        .fields()
        .iter()
        .enumerate()
        .map(|(i, f)| f.as_ref().clone().with_nullable(f.is_nullable() || nullable(i)))
        .collect();
    Arc::new(Schema::new_with_metadata(fields, planned.metadata().clone()))
}

/// Customers per value in a tag's normalised rows.
fn value_counts(batches: &[RecordBatch]) -> BTreeMap<String, u64> {
    let mut counts: HashMap<&str, u64, RandomState> = HashMap::default();
    for batch in batches {
        let values = batch
            .column(1)
            .as_any()
            .downcast_ref::<StringArray>()
            .expect("normalised value");
        for value in values.iter().flatten() {
            *counts.entry(value).or_default() += 1;
        }
    }
    counts.into_iter().map(|(value, n)| (value.to_string(), n)).collect()
}

/// A job's input tables, where its session reads them.
#[derive(Clone)]
enum Inputs {
    /// In this process's memory (the embedded engine).
    Memory(BTreeMap<String, Arc<MemTable>>),
    /// As files, which a cluster's executors read.
    Cluster(Arc<ClusterRun>, BTreeMap<String, FileTable>),
}

impl Inputs {
    /// The tables `job` reads, alone.
    fn read_by(&self, job: &Job) -> Inputs {
        match self {
            Inputs::Memory(tables) => Inputs::Memory(job.reads().map(|n| (n.clone(), tables[n].clone())).collect()),
            Inputs::Cluster(run, tables) => Inputs::Cluster(
                run.clone(),
                job.reads().map(|n| (n.clone(), tables[n].clone())).collect(),
            ),
        }
    }
}

/// Run `sql` for `job` in a session that holds only `inputs`: in this process, or on the
/// cluster (whose failures, past planning, are the cluster's: [`JobError::Cluster`]).
async fn execute(
    job: &Job,
    inputs: &Inputs,
    sql: &str,
    partitions: usize,
) -> Result<(Vec<RecordBatch>, SchemaRef), JobError> {
    let failed = |source| JobError::Execution {
        job: job.name.clone(),
        file: job.file.clone(),
        source,
    };
    let (ctx, cluster_url) = match inputs {
        Inputs::Memory(tables) => {
            let config = SessionConfig::new().with_target_partitions(partitions);
            let ctx = SessionContext::new_with_config(config);
            super::functions::register(&ctx);
            for (name, table) in tables {
                ctx.register_table(name.as_str(), table.clone()).map_err(failed)?;
            }
            (ctx, None)
        }
        Inputs::Cluster(run, tables) => {
            let ctx = run.cluster.context(&job.name).await.map_err(failed)?;
            for (name, table) in tables {
                ctx.register_table(name.as_str(), table.provider().map_err(failed)?)
                    .map_err(failed)?;
            }
            (ctx, Some(run.cluster.url.clone()))
        }
    };
    let frame = ctx.sql(sql).await.map_err(failed)?;
    let planned: SchemaRef = Arc::new(frame.schema().as_arrow().clone());
    let batches = frame.collect().await.map_err(|source| match &cluster_url {
        Some(url) => JobError::Cluster {
            job: job.name.clone(),
            file: job.file.clone(),
            url: url.clone(),
            source: Box::new(source),
        },
        None => failed(source),
    })?;
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
    let failed = |check, message| JobError::Check {
        job: job.name.clone(),
        file: job.file.clone(),
        check,
        message,
    };
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
                let message = format!("{name} is null in {} rows", columns[i].null_count());
                return Err(failed("not_null", message));
            }
        }
        out.push(RecordBatch::try_new(target.clone(), columns).map_err(|e| bad(e.to_string()))?);
    }
    let rows = out.iter().map(|b| b.num_rows()).sum();
    let mut seen: HashSet<&str, RandomState> = HashSet::with_capacity_and_hasher(rows, RandomState::default());
    for batch in &out {
        let ids = batch.column(0).as_any().downcast_ref::<StringArray>().expect("utf8");
        for id in ids.iter().flatten() {
            if !seen.insert(id) {
                return Err(failed("unique", format!("customer '{id}' has more than one row")));
            }
        }
    }
    Ok(out)
}

fn mem_table(schema: SchemaRef, batches: Vec<RecordBatch>, partitions: usize) -> Arc<MemTable> {
    // A job's rows of one batch may be nullable where an earlier evaluation's were not.
    let schema = nullable_as_batches_say(schema, &batches);
    let mut parts: Vec<Vec<RecordBatch>> = vec![Vec::new(); partitions.max(1)];
    for (i, batch) in batches.into_iter().enumerate() {
        parts[i % partitions.max(1)].push(batch);
    }
    Arc::new(MemTable::try_new(schema, parts).expect("batches match their schema"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(n: usize) -> Vec<RecordBatch> {
        let schema = Arc::new(Schema::new(vec![Field::new("k", DataType::Int64, false)]));
        let column = Int64Array::from_iter_values(0..n as i64);
        vec![RecordBatch::try_new(schema, vec![Arc::new(column)]).unwrap()]
    }

    /// A day folded into a thousand times, one small segment each time: it keeps few
    /// segments, and its rows are written again a few times each, not once per fold.
    #[test]
    fn a_days_segments_are_joined_as_a_binary_counter() {
        let (folds, per_fold) = (1000usize, 10usize);
        let mut segments: Vec<Segment> = Vec::new();
        let mut rewritten = 0;
        for _ in 0..folds {
            // What the commit found stored stays stored; the fold adds one new segment.
            for segment in segments.iter_mut() {
                segment.stored.get_or_insert_with(|| "stored".to_string());
            }
            segments.push(Segment::new(Some(1), rows(per_fold)));
            segments = join_small_segments(segments, true, &Plain);
            rewritten += segments
                .iter()
                .filter(|s| s.stored.is_none())
                .map(Segment::rows)
                .sum::<usize>();
            assert!(
                segments.len() <= MAX_DAY_SEGMENTS + 11,
                "{} segments after folds of 10 rows",
                segments.len()
            );
        }
        assert_eq!(segments.iter().map(Segment::rows).sum::<usize>(), folds * per_fold);
        let written_per_row = rewritten as f64 / (folds * per_fold) as f64;
        assert!(
            written_per_row <= 12.0,
            "each row written {written_per_row:.1} times on average (joining the whole day: ~60)"
        );
        // Up to the limit, a day's segments stay as they are.
        let few: Vec<Segment> = (0..MAX_DAY_SEGMENTS).map(|_| Segment::new(Some(2), rows(1))).collect();
        assert_eq!(join_small_segments(few, true, &Plain).len(), MAX_DAY_SEGMENTS);
    }
}
