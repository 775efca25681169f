//! Sources: list and read the landing zone, normalise writer variants, quarantine bad input,
//! de-duplicate by `event_id` and keep the events that count at the as-of time.
//!
//! Owns: the interpretation of landing files against `schemas/` (the input contract).
//! Must not: write anything but the quarantine area (and, read on a cluster, the receipts of
//! [`scan`]), modify or delete landing files, or know any tag logic. Storage failures fail the read (they are not the file's fault); only bad
//! files and bad rows are quarantined.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, BooleanArray, Float64Array, Int32Array, StringArray, TimestampMicrosecondArray, UInt64Array,
};
use arrow::compute::{cast_with_options, filter_record_batch, CastOptions};
use arrow::datatypes::{DataType, Field, Schema};
use arrow::record_batch::RecordBatch;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::ObjectStoreExt;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ProjectionMask;
use parquet::errors::ParquetError;
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

pub mod quarantine;
pub mod scan;
pub mod schema;

use crate::storage::dedup::{event_id_hashes, DedupMemory};
use crate::storage::erasure::{drop_customers, Forgotten, Suppression};
use crate::storage::progress::Progress;
use crate::storage::units::Bounded;
use crate::storage::Location;
use quarantine::{Entry, Quarantine, QuarantineError};
use schema::{Schemas, StreamSchema, EVENT_DAY};

const MICROS_PER_DAY: i64 = 86_400_000_000;
const MICROS_PER_HOUR: i64 = 3_600_000_000;
const READ_BATCH_ROWS: usize = 64 * 1024;

/// `read_concurrency`: landing files fetched and decoded at once.
pub const READ_CONCURRENCY: Bounded<usize> = Bounded {
    default: 8,
    min: 1,
    max: 256,
};

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("cannot list landing files under {url}: {source}")]
    List {
        url: String,
        #[source]
        source: object_store::Error,
    },
    #[error("cannot fetch landing file {url}: {source}")]
    Fetch {
        url: String,
        #[source]
        source: object_store::Error,
    },
    #[error(
        "no landing files under {url} (expected <stream>/**/*.parquet for streams {streams:?}); nothing was published"
    )]
    NoFiles { url: String, streams: Vec<String> },
    #[error(transparent)]
    Quarantine(#[from] QuarantineError),
    #[error(transparent)]
    Erasure(#[from] crate::storage::erasure::ErasureError),
    #[error("reader task failed: {0}")]
    Task(String),
}

/// One listed landing file.
#[derive(Debug, Clone)]
pub struct LandingFile {
    pub stream: String,
    pub path: Path,
    /// Path relative to the landing root, e.g. `clicks/dt=2026-11-20/part-0.parquet`.
    pub relative: String,
    /// When the file appeared in the landing zone (the store's last-modified time).
    pub appeared_at: DateTime<Utc>,
}

/// Counts per stream for the run report.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct StreamStats {
    /// Landing files read (including quarantined ones).
    pub files: usize,
    /// Files quarantined whole.
    pub files_quarantined: usize,
    /// Names starting with `_` or `.`: not events, skipped.
    pub files_ignored: usize,
    /// Rows in readable files.
    pub rows_read: usize,
    /// Rows quarantined (their files are otherwise processed).
    pub rows_quarantined: usize,
    /// Good rows whose `event_id` was already seen.
    pub duplicates_dropped: usize,
    /// Rows of forgotten customers (`tagflow forget`), dropped before anything else.
    pub rows_forgotten: usize,
    /// Unique events read so far with `event_time` after the as-of time: kept in the state
    /// until an as-of time reaches them.
    pub after_as_of: usize,
    /// Events that became countable in this run: good, unique, at or before the as-of time
    /// (read from new files, or held from an earlier run's future).
    pub events: usize,
}

impl StreamStats {
    /// Add `other`'s counts to these.
    pub fn add(&mut self, other: &StreamStats) {
        self.files += other.files;
        self.files_quarantined += other.files_quarantined;
        self.files_ignored += other.files_ignored;
        self.rows_read += other.rows_read;
        self.rows_quarantined += other.rows_quarantined;
        self.duplicates_dropped += other.duplicates_dropped;
        self.rows_forgotten += other.rows_forgotten;
        self.after_as_of += other.after_as_of;
        self.events += other.events;
    }
}

/// What the landing zone yields for one run.
#[derive(Default)]
pub struct LandingData {
    /// Unique events per stream, normalised to the stream schema (+ `event_day`).
    pub events: BTreeMap<String, Vec<RecordBatch>>,
    pub stats: BTreeMap<String, StreamStats>,
    /// Quarantine entries written by this run.
    pub quarantined: Vec<Entry>,
}

/// The landing zone's files, in path order.
pub struct Listing {
    pub files: Vec<LandingFile>,
    /// Per stream, names skipped because they start with `_` or `.`.
    pub ignored: BTreeMap<String, usize>,
}

/// List the landing files of every declared stream, in path order. No file at all is an
/// error: a wrong path must not publish an empty table over the good one.
pub async fn list_files(landing: &Location, schemas: &Schemas) -> Result<Listing, SourceError> {
    let mut files = Vec::new();
    let mut ignored = BTreeMap::new();
    // The streams' folders are listed side by side.
    let listings = futures::future::try_join_all(schemas.streams.keys().map(|stream| async move {
        let prefix = landing.path(stream);
        match landing.list_under(&prefix).await {
            Ok(listed) => Ok((stream, listed)),
            Err(source) => Err(SourceError::List {
                url: landing.display(&prefix),
                source,
            }),
        }
    }))
    .await?;
    for (stream, listed) in listings {
        for meta in listed {
            let relative = landing
                .relative(&meta.location)
                .unwrap_or_else(|| meta.location.to_string());
            if is_hidden(&relative) {
                *ignored.entry(stream.clone()).or_insert(0) += 1;
                continue;
            }
            files.push(LandingFile {
                stream: stream.clone(),
                path: meta.location,
                relative,
                appeared_at: meta.last_modified,
            });
        }
    }
    info!(files = files.len(), "landing files listed");
    if files.is_empty() {
        return Err(SourceError::NoFiles {
            url: landing.url.to_string(),
            streams: schemas.streams.keys().cloned().collect(),
        });
    }
    files.sort_by(|a, b| a.relative.cmp(&b.relative));
    Ok(Listing { files, ignored })
}

/// `_SUCCESS`, `.part-0001.tmp`, `_temporary/...`: any path segment starting with `_` or `.`.
fn is_hidden(relative: &str) -> bool {
    relative
        .split('/')
        .any(|seg| seg.starts_with('_') || seg.starts_with('.'))
}

/// Read `files` (in path order), quarantine what is bad and keep the good rows with the hash
/// of each `event_id`. `ingested_at[i]` is the moment `files[i]` was first ingested: the
/// reference of the "event_time too far in the future" rule. Every read first loads the
/// warehouse's suppression list and drops the rows of forgotten customers (`tagflow forget`),
/// so no recompute brings them back.
pub async fn read_files(
    landing: &Location,
    warehouse: &Location,
    schemas: &Schemas,
    files: &[LandingFile],
    ingested_at: &[DateTime<Utc>],
    concurrency: usize,
    progress_bar: bool,
) -> Result<Decoded, SourceError> {
    let quarantine = Quarantine::new(warehouse);
    let suppression = Arc::new(Suppression::load(warehouse).await?);
    let total = files.len();
    let progress = Progress::bar(progress_bar, "landing files", total);
    let mut decoded = Decoded {
        good: Vec::new(),
        stats: schemas
            .streams
            .keys()
            .map(|s| (s.clone(), StreamStats::default()))
            .collect(),
        quarantined: Vec::new(),
    };

    // Files are fetched and decoded concurrently, but consumed in path order so that
    // de-duplication keeps the same copy of an event on every run.
    let mut outcomes = futures::stream::iter(files.iter().cloned().zip(ingested_at.iter().copied()))
        .map(|(file, ingested_at)| {
            let schema = schemas.streams[&file.stream].clone();
            let suppression = suppression.clone();
            async move {
                read_file(landing, &file, &schema, ingested_at, suppression)
                    .await
                    .map(|o| (file, o))
            }
        })
        .buffered(concurrency.max(1));
    let mut done = 0usize;
    while let Some(outcome) = outcomes.next().await {
        let (file, outcome) = outcome?;
        done += 1;
        progress.inc();
        if done.is_multiple_of(100) || done == total {
            info!(done, total, "landing files read");
        }
        let settled = settle(&quarantine, landing, &file, outcome, suppression.is_empty()).await?;
        decoded
            .stats
            .get_mut(&file.stream)
            .expect("declared stream")
            .add(&settled.counts);
        decoded.quarantined.extend(settled.quarantined);
        decoded
            .good
            .extend(settled.good.into_iter().map(|g| (file.stream.clone(), g)));
    }
    progress.finish();
    Ok(decoded)
}

/// One file's read, settled: its counts (`files`, `files_quarantined`, `rows_read`,
/// `rows_quarantined`, `rows_forgotten`), the quarantine entries written for it and its good
/// rows.
pub struct Settled {
    pub counts: StreamStats,
    pub quarantined: Vec<Entry>,
    pub good: Vec<GoodRows>,
}

/// Quarantine what `outcome` says is bad in `file` (a whole file, or rows) and count it:
/// the one place a read's outcome becomes quarantine entries and counts, in this process
/// and on a cluster's executors alike. `keep_copy`: no customer is forgotten, so a rejected
/// file's bytes may be kept.
pub async fn settle(
    quarantine: &Quarantine<'_>,
    landing: &Location,
    file: &LandingFile,
    outcome: FileOutcome,
    keep_copy: bool,
) -> Result<Settled, SourceError> {
    let mut settled = Settled {
        counts: StreamStats {
            files: 1,
            ..Default::default()
        },
        quarantined: Vec::new(),
        good: Vec::new(),
    };
    let source_url = landing.display(&file.path);
    match outcome {
        FileOutcome::Rejected { bytes, reason } => {
            warn!(file = %source_url, %reason, "file quarantined");
            settled.counts.files_quarantined = 1;
            settled.quarantined.push(
                quarantine
                    .put_file(
                        &file.stream,
                        &file.relative,
                        &source_url,
                        keep_copy.then_some(bytes),
                        &reason,
                    )
                    .await?,
            );
        }
        FileOutcome::Read {
            good,
            bad,
            rows,
            forgotten,
        } => {
            settled.counts.rows_read = rows;
            settled.counts.rows_forgotten = forgotten;
            if let Some(bad) = bad {
                settled.counts.rows_quarantined = bad.num_rows();
                let summary = reason_summary(&bad);
                warn!(file = %source_url, rows = bad.num_rows(), reasons = %summary, "rows quarantined");
                settled.quarantined.push(
                    quarantine
                        .put_rows(&file.stream, &file.relative, &source_url, &bad, &summary)
                        .await?,
                );
            }
            settled.good = good;
        }
    }
    Ok(settled)
}

/// Good rows of the files read, in path order, before de-duplication.
pub struct Decoded {
    good: Vec<(String, GoodRows)>,
    pub stats: BTreeMap<String, StreamStats>,
    /// Quarantine entries written while reading.
    pub quarantined: Vec<Entry>,
}

impl Decoded {
    /// The (stream, event day) pairs the rows fall in: the days of the de-duplication
    /// memory this batch needs.
    pub fn days(&self) -> BTreeSet<(String, i32)> {
        let mut days = BTreeSet::new();
        for (stream, rows) in &self.good {
            let mut last = None;
            for day in event_days(&rows.batch).values() {
                if last != Some(*day) {
                    days.insert((stream.clone(), *day));
                    last = Some(*day);
                }
            }
        }
        days
    }

    /// Drop every row whose `event_id` is in `memory` (seen in an earlier batch, or earlier in
    /// this one), recording the others. Returns the unique events per stream.
    pub fn deduplicate(self, memory: &mut DedupMemory) -> LandingData {
        let mut stats = self.stats;
        let mut events: BTreeMap<String, Vec<RecordBatch>> = stats.keys().map(|s| (s.clone(), Vec::new())).collect();
        for (stream, rows) in self.good {
            let days = event_days(&rows.batch);
            let keep = BooleanArray::from(memory.insert_all(&stream, days.values(), &rows.id_hashes));
            let kept = match keep.true_count() == keep.len() {
                true => rows.batch.clone(),
                false => filter_record_batch(&rows.batch, &keep).expect("filter with matching length"),
            };
            let stream_stats = stats.get_mut(&stream).expect("declared stream");
            stream_stats.duplicates_dropped += rows.batch.num_rows() - kept.num_rows();
            if kept.num_rows() > 0 {
                events.get_mut(&stream).expect("declared stream").push(kept);
            }
        }
        LandingData {
            events,
            stats,
            quarantined: self.quarantined,
        }
    }
}

/// Split events at `as_of`: those that count (`event_time <= as_of`) and those after it.
pub fn split_at(batches: Vec<RecordBatch>, as_of: DateTime<Utc>) -> (Vec<RecordBatch>, Vec<RecordBatch>) {
    let as_of = as_of.timestamp_micros();
    let (mut counted, mut later) = (Vec::new(), Vec::new());
    for batch in batches {
        let due: BooleanArray = event_times(&batch).iter().map(|t| t.map(|t| t <= as_of)).collect();
        // Usually every event of a batch is due: it is kept as it is, not copied.
        match due.true_count() {
            n if n == batch.num_rows() => counted.push(batch),
            0 => later.push(batch),
            _ => {
                let not_due = arrow::compute::not(&due).expect("same length");
                for (mask, out) in [(&due, &mut counted), (&not_due, &mut later)] {
                    let part = filter_record_batch(&batch, mask).expect("filter with matching length");
                    if part.num_rows() > 0 {
                        out.push(part);
                    }
                }
            }
        }
    }
    (counted, later)
}

/// Whether any event of `batch` has `event_time <= as_of`.
pub fn any_due(batch: &RecordBatch, as_of: DateTime<Utc>) -> bool {
    event_times(batch)
        .iter()
        .flatten()
        .any(|t| t <= as_of.timestamp_micros())
}

fn event_times(batch: &RecordBatch) -> &TimestampMicrosecondArray {
    batch
        .column_by_name("event_time")
        .and_then(|c| c.as_any().downcast_ref::<TimestampMicrosecondArray>())
        .expect("normalised event_time")
}

/// Read the whole landing zone as one batch and keep the events counted at `as_of`: what a
/// full run starts from (and what the reference test compares with).
pub async fn read_landing(
    landing: &Location,
    warehouse: &Location,
    schemas: &Schemas,
    as_of: DateTime<Utc>,
    ingested_at: DateTime<Utc>,
    concurrency: usize,
) -> Result<LandingData, SourceError> {
    let listed = list_files(landing, schemas).await?;
    let times = vec![ingested_at; listed.files.len()];
    let decoded = read_files(landing, warehouse, schemas, &listed.files, &times, concurrency, false).await?;
    let mut data = decoded.deduplicate(&mut DedupMemory::default());
    for (stream, batches) in data.events.iter_mut() {
        let (counted, later) = split_at(std::mem::take(batches), as_of);
        let stats = data.stats.get_mut(stream).expect("declared stream");
        stats.after_as_of = later.iter().map(|b| b.num_rows()).sum();
        stats.events = counted.iter().map(|b| b.num_rows()).sum();
        *batches = counted;
    }
    Ok(data)
}

fn event_days(batch: &RecordBatch) -> &Int32Array {
    batch
        .column_by_name(EVENT_DAY)
        .and_then(|c| c.as_any().downcast_ref::<Int32Array>())
        .expect("normalised event_day")
}

/// Normalised good rows of a file, with the 128-bit hash of each row's `event_id`
/// (computed where the file is decoded, in parallel; de-duplication only compares hashes).
pub struct GoodRows {
    pub batch: RecordBatch,
    pub id_hashes: Vec<u128>,
}

/// The result of reading one file.
pub enum FileOutcome {
    /// The file could not be used at all.
    Rejected { bytes: Bytes, reason: String },
    /// Normalised good rows, and the bad rows (with reasons) if any.
    Read {
        good: Vec<GoodRows>,
        bad: Option<RecordBatch>,
        rows: usize,
        /// Rows of forgotten customers, dropped (neither good nor bad).
        forgotten: usize,
    },
}

/// Fetch one file and normalise it. Storage errors are returned; bad content is an outcome.
/// `ingested_at` is the moment this run ingests the file: the reference of the
/// "event_time too far in the future" rule.
pub async fn read_file(
    landing: &Location,
    file: &LandingFile,
    schema: &StreamSchema,
    ingested_at: DateTime<Utc>,
    suppression: Arc<Suppression>,
) -> Result<FileOutcome, SourceError> {
    let bytes = fetch(landing, file).await?;
    let schema = schema.clone();
    let source = file.relative.clone();
    tokio::task::spawn_blocking(move || decode_file(bytes, &schema, ingested_at, &source, &suppression))
        .await
        .map_err(|e| SourceError::Task(e.to_string()))
}

/// The bytes of a landing file; a storage error names it.
async fn fetch(landing: &Location, file: &LandingFile) -> Result<Bytes, SourceError> {
    let failed = |source| SourceError::Fetch {
        url: landing.display(&file.path),
        source,
    };
    let result = landing.store.get(&file.path).await.map_err(failed)?;
    result.bytes().await.map_err(failed)
}

/// Decode a whole file in memory. Any decoding error rejects the whole file: nothing of a
/// file is used unless all of it could be read. Rows of customers on the suppression list
/// are dropped first, good or bad: they are neither counted nor quarantined.
pub fn decode_file(
    bytes: Bytes,
    schema: &StreamSchema,
    ingested_at: DateTime<Utc>,
    source: &str,
    suppression: &Suppression,
) -> FileOutcome {
    let reject = |bytes: Bytes, reason: String| FileOutcome::Rejected { bytes, reason };
    let builder = match ParquetRecordBatchReaderBuilder::try_new(bytes.clone()) {
        Ok(b) => b,
        Err(e) => return reject(bytes, format!("not a readable Parquet file: {e}")),
    };
    let file_schema = builder.schema().clone();
    if let Err(reason) = check_columns(&file_schema, schema) {
        return reject(bytes, reason);
    }
    let wanted: Vec<usize> = file_schema
        .fields()
        .iter()
        .enumerate()
        .filter(|(_, f)| schema.columns.iter().any(|c| &c.name == f.name()))
        .map(|(i, _)| i)
        .collect();
    let mask = ProjectionMask::roots(builder.parquet_schema(), wanted);
    let reader = match builder.with_projection(mask).with_batch_size(READ_BATCH_ROWS).build() {
        Ok(r) => r,
        Err(e) => return reject(bytes, format!("cannot read Parquet file: {e}")),
    };
    let (mut good, mut bad, mut rows, mut forgotten) = (Vec::new(), Vec::new(), 0usize, 0usize);
    for batch in reader {
        let batch = match batch {
            Ok(b) => b,
            Err(e) => return reject(bytes, format!("corrupt Parquet data after {rows} rows: {e}")),
        };
        match normalise_batch(&batch, schema, ingested_at, source, rows) {
            Ok((g, b)) => {
                rows += batch.num_rows();
                let (g, dropped) = drop_forgotten(g, suppression);
                forgotten += dropped;
                let id_hashes = event_id_hashes(string_column(&g, "event_id"));
                good.push(GoodRows { batch: g, id_hashes });
                if let Some(b) = b {
                    let (b, dropped) = drop_forgotten(b, suppression);
                    forgotten += dropped;
                    bad.extend((b.num_rows() > 0).then_some(b));
                }
            }
            Err(reason) => return reject(bytes, reason),
        }
    }
    let bad = match bad.len() {
        0 => None,
        _ => Some(arrow::compute::concat_batches(&bad[0].schema(), &bad).expect("same schema")),
    };
    FileOutcome::Read {
        good,
        bad,
        rows,
        forgotten,
    }
}

/// `batch` without the rows of suppressed customers, and how many were dropped.
fn drop_forgotten(batch: RecordBatch, suppression: &Suppression) -> (RecordBatch, usize) {
    if suppression.is_empty() {
        return (batch, 0);
    }
    let mut batches = [batch];
    let dropped = drop_customers(&mut batches, |id| suppression.is_suppressed(id));
    let [batch] = batches;
    (batch, dropped)
}

/// File-level checks: every required column present, every declared column convertible.
fn check_columns(file_schema: &Schema, schema: &StreamSchema) -> Result<(), String> {
    for column in &schema.columns {
        match file_schema.field_with_name(&column.name) {
            Err(_) if !column.nullable => {
                return Err(format!("required column '{}' is missing", column.name));
            }
            Err(_) => {}
            Ok(field) if !column.column_type.accepts(field.data_type()) => {
                return Err(format!(
                    "column '{}' has type {}, which cannot be converted to {}",
                    column.name,
                    field.data_type(),
                    column.column_type.arrow_type()
                ));
            }
            Ok(_) => {}
        }
    }
    Ok(())
}

/// Normalise one batch to the stream schema and split it into good rows and bad rows.
/// Bad rows carry `_reason`, `_source_file` and `_row_number` (0-based row in the file).
///
/// Long on purpose: every rule of the input contract flags rows in one shared `reasons`
/// vector, in the contract's order (the first reason a row meets is the one quarantined), so
/// the rules read top to bottom as `shared/spec/events.md` lists them.
pub fn normalise_batch(
    batch: &RecordBatch,
    schema: &StreamSchema,
    ingested_at: DateTime<Utc>,
    source: &str,
    first_row: usize,
) -> Result<(RecordBatch, Option<RecordBatch>), String> {
    let n = batch.num_rows();
    let mut reasons: Vec<Option<String>> = vec![None; n];
    let mut flag = |i: usize, reason: &dyn Fn() -> String| {
        if reasons[i].is_none() {
            reasons[i] = Some(reason());
        }
    };
    let cast_options = CastOptions {
        safe: true,
        ..Default::default()
    };
    let mut columns: Vec<ArrayRef> = Vec::with_capacity(schema.columns.len() + 1);
    for column in &schema.columns {
        let target = column.column_type.arrow_type();
        let array = match batch.column_by_name(&column.name) {
            None => arrow::array::new_null_array(&target, n),
            Some(source_array) => {
                let cast = cast_with_options(source_array, &target, &cast_options)
                    .map_err(|e| format!("column '{}' cannot be converted to {target}: {e}", column.name))?;
                if cast.null_count() > source_array.null_count() {
                    for i in (0..n).filter(|&i| source_array.is_valid(i) && cast.is_null(i)) {
                        flag(i, &|| format!("{}: value does not fit {target}", column.name));
                    }
                }
                cast
            }
        };
        if !column.nullable && array.null_count() > 0 {
            for i in (0..n).filter(|&i| array.is_null(i)) {
                flag(i, &|| format!("{}: null in a required column", column.name));
            }
        }
        if let Some(allowed) = &column.allowed {
            let values = array.as_any().downcast_ref::<StringArray>().expect("utf8");
            for i in (0..n).filter(|&i| values.is_valid(i) && !allowed.iter().any(|a| a == values.value(i))) {
                flag(i, &|| format!("{}: unknown value '{}'", column.name, values.value(i)));
            }
        }
        if column.greater_than.is_some() || column.at_least.is_some() {
            let values = numeric_values(&array);
            for (i, v) in values.iter().enumerate() {
                let Some(v) = *v else { continue };
                if let Some(bound) = column.greater_than.filter(|b| v <= *b) {
                    flag(i, &|| format!("{}: {v} is not > {bound}", column.name));
                }
                if let Some(bound) = column.at_least.filter(|b| v < *b) {
                    flag(i, &|| format!("{}: {v} is negative or below {bound}", column.name));
                }
            }
        }
        columns.push(array);
    }

    // event_time sanity, and the derived event_day.
    let time_index = schema
        .columns
        .iter()
        .position(|c| c.name == "event_time")
        .expect("validated schema");
    let times = columns[time_index]
        .as_any()
        .downcast_ref::<TimestampMicrosecondArray>()
        .expect("timestamp");
    let not_before = schema.event_time_not_before.timestamp_micros();
    let latest = ingested_at.timestamp_micros() + schema.event_time_max_ahead_of_ingest_hours * MICROS_PER_HOUR;
    let mut days = Vec::with_capacity(n);
    for i in 0..n {
        if times.is_null(i) {
            days.push(0);
            continue;
        }
        let t = times.value(i);
        if t < not_before {
            flag(i, &|| {
                format!("event_time: before {}", schema.event_time_not_before.to_rfc3339())
            });
        } else if t > latest {
            flag(i, &|| {
                format!(
                    "event_time: more than {} h after the file was ingested ({})",
                    schema.event_time_max_ahead_of_ingest_hours,
                    ingested_at.to_rfc3339()
                )
            });
        }
        days.push(t.div_euclid(MICROS_PER_DAY) as i32);
    }

    let bad_count = reasons.iter().filter(|r| r.is_some()).count();
    let good_mask: BooleanArray = reasons.iter().map(|r| Some(r.is_none())).collect();
    let mut good_columns = columns.clone();
    good_columns.push(Arc::new(Int32Array::from(days)));
    let all = RecordBatch::try_new(nullable(&schema.arrow_schema()), good_columns).map_err(|e| e.to_string())?;
    let good = filter_record_batch(&all, &good_mask).map_err(|e| e.to_string())?;
    let good = RecordBatch::try_new(schema.arrow_schema(), good.columns().to_vec()).map_err(|e| e.to_string())?;
    if bad_count == 0 {
        return Ok((good, None));
    }
    let bad_mask = arrow::compute::not(&good_mask).expect("not");
    let mut bad_fields: Vec<Field> = schema
        .columns
        .iter()
        .map(|c| Field::new(&c.name, c.column_type.arrow_type(), true))
        .collect();
    bad_fields.extend([
        Field::new("_reason", DataType::Utf8, false),
        Field::new("_source_file", DataType::Utf8, false),
        Field::new("_row_number", DataType::UInt64, false),
    ]);
    let mut bad_columns: Vec<ArrayRef> = columns
        .iter()
        .map(|c| arrow::compute::filter(c, &bad_mask).expect("filter"))
        .collect();
    let bad_rows: Vec<usize> = (0..n).filter(|&i| reasons[i].is_some()).collect();
    bad_columns.push(Arc::new(StringArray::from_iter_values(
        bad_rows.iter().map(|&i| reasons[i].clone().unwrap_or_default()),
    )));
    bad_columns.push(Arc::new(StringArray::from_iter_values(bad_rows.iter().map(|_| source))));
    bad_columns.push(Arc::new(UInt64Array::from_iter_values(
        bad_rows.iter().map(|&i| (first_row + i) as u64),
    )));
    let bad = RecordBatch::try_new(Arc::new(Schema::new(bad_fields)), bad_columns).map_err(|e| e.to_string())?;
    Ok((good, Some(bad)))
}

fn nullable(schema: &Schema) -> Arc<Schema> {
    Arc::new(Schema::new(
        schema
            .fields()
            .iter()
            .map(|f| f.as_ref().clone().with_nullable(true))
            .collect::<Vec<_>>(),
    ))
}

fn numeric_values(array: &ArrayRef) -> Vec<Option<f64>> {
    if let Some(a) = array.as_any().downcast_ref::<Int32Array>() {
        a.iter().map(|v| v.map(f64::from)).collect()
    } else if let Some(a) = array.as_any().downcast_ref::<Float64Array>() {
        a.iter().collect()
    } else {
        vec![None; array.len()]
    }
}

fn string_column<'a>(batch: &'a RecordBatch, name: &str) -> &'a StringArray {
    batch
        .column_by_name(name)
        .and_then(|c| c.as_any().downcast_ref::<StringArray>())
        .expect("normalised utf8 column")
}

/// "reason ×count; reason ×count" over the distinct reasons of a bad-rows batch.
fn reason_summary(bad: &RecordBatch) -> String {
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    let reasons = string_column(bad, "_reason");
    for i in 0..reasons.len() {
        *counts.entry(reasons.value(i)).or_default() += 1;
    }
    counts
        .iter()
        .map(|(r, c)| format!("{r} (x{c})"))
        .collect::<Vec<_>>()
        .join("; ")
}

/// The landing files that hold a row of one of the `forgotten` customers, and which of
/// them were found: what an erasure reports for the landing zone's owner to delete (tagflow
/// never modifies the landing zone). Reads only the `customer_id` column of each file.
#[derive(Debug, Default)]
pub struct Holding {
    /// URLs, in path order.
    pub files: Vec<String>,
    /// The salted hashes of the customers found.
    pub customers: HashSet<u128>,
}

pub async fn files_holding(
    landing: &Location,
    schemas: &Schemas,
    forgotten: &Arc<Forgotten>,
    concurrency: usize,
) -> Result<Holding, SourceError> {
    let listed = list_files(landing, schemas).await?;
    let found: Vec<(String, HashSet<u128>)> = futures::stream::iter(listed.files)
        .map(|file| {
            let forgotten = forgotten.clone();
            async move {
                let bytes = fetch(landing, &file).await?;
                let found = tokio::task::spawn_blocking(move || forgotten_in(bytes, &forgotten))
                    .await
                    .map_err(|e| SourceError::Task(e.to_string()))?;
                Ok::<_, SourceError>((landing.display(&file.path), found))
            }
        })
        .buffered(concurrency.max(1))
        .try_collect()
        .await?;
    let mut holding = Holding::default();
    for (url, customers) in found.into_iter().filter(|(_, c)| !c.is_empty()) {
        holding.files.push(url);
        holding.customers.extend(customers);
    }
    Ok(holding)
}

/// The `forgotten` customers a file's bytes hold: its `customer_id` column if it reads as
/// Parquet, otherwise (a corrupt file) the raw bytes, searched for each id known.
pub(crate) fn forgotten_in(bytes: Bytes, forgotten: &Forgotten) -> HashSet<u128> {
    let mut found = HashSet::new();
    let mut read = || -> Result<(), ParquetError> {
        let builder = ParquetRecordBatchReaderBuilder::try_new(bytes.clone())?;
        let Some(index) = builder.schema().fields().iter().position(|f| f.name() == "customer_id") else {
            return Ok(());
        };
        let mask = ProjectionMask::roots(builder.parquet_schema(), [index]);
        for batch in builder.with_projection(mask).build()? {
            let batch = batch.map_err(|e| ParquetError::General(e.to_string()))?;
            forgotten.find_in(batch.column(0), &mut found);
        }
        Ok(())
    };
    if read().is_err() {
        found = forgotten
            .ids()
            .filter(|id| !id.is_empty() && bytes.windows(id.len()).any(|w| w == id.as_bytes()))
            .map(|id| forgotten.hash(id))
            .collect();
    }
    found
}
