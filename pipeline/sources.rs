//! Sources: list and read the landing zone, normalise writer variants, quarantine bad input,
//! de-duplicate by `event_id` and keep the events that count at the as-of time.
//!
//! Owns: the interpretation of landing files against `schemas/` (the input contract).
//! Must not: write anything but the quarantine area, modify or delete landing files, or know
//! any tag logic. Storage failures fail the read (they are not the file's fault); only bad
//! files and bad rows are quarantined.

use std::collections::{BTreeMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};
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
use serde::Serialize;
use siphasher::sip128::SipHasher13;
use tracing::{info, info_span, warn, Instrument};

use crate::quarantine::{Entry, Quarantine, QuarantineError};
use crate::schema::{Schemas, StreamSchema};
use crate::storage::Location;

const MICROS_PER_DAY: i64 = 86_400_000_000;
const MICROS_PER_HOUR: i64 = 3_600_000_000;
const READ_BATCH_ROWS: usize = 64 * 1024;

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
}

/// Counts per stream for the run report.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
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
    /// Good, unique rows with `event_time` after the as-of time (not counted this run).
    pub after_as_of: usize,
    /// Events that count: good, unique, at or before the as-of time.
    pub events: usize,
}

/// What the landing zone yields for one run.
pub struct LandingData {
    /// Counted events per stream, normalised to the stream schema (+ `event_day`).
    pub events: BTreeMap<String, Vec<RecordBatch>>,
    pub stats: BTreeMap<String, StreamStats>,
    /// Quarantine entries written by this run.
    pub quarantined: Vec<Entry>,
}

/// List the landing files of every declared stream, in path order.
pub async fn list_files(
    landing: &Location,
    schemas: &Schemas,
) -> Result<(Vec<LandingFile>, BTreeMap<String, usize>), SourceError> {
    let mut files = Vec::new();
    let mut ignored = BTreeMap::new();
    for stream in schemas.streams.keys() {
        let prefix = landing.path(stream);
        let listed: Vec<_> = landing
            .store
            .list(Some(&prefix))
            .try_collect()
            .await
            .map_err(|source| SourceError::List {
                url: landing.display(&prefix),
                source,
            })?;
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
            });
        }
    }
    files.sort_by(|a, b| a.relative.cmp(&b.relative));
    Ok((files, ignored))
}

/// `_SUCCESS`, `.part-0001.tmp`, `_temporary/...`: any path segment starting with `_` or `.`.
fn is_hidden(relative: &str) -> bool {
    relative
        .split('/')
        .any(|seg| seg.starts_with('_') || seg.starts_with('.'))
}

/// Read every landing file, quarantine what is bad, de-duplicate and keep the events with
/// `event_time <= as_of`. `ingested_at` is when this run ingests the files.
pub async fn read_landing(
    landing: &Location,
    warehouse: &Location,
    schemas: &Schemas,
    as_of: DateTime<Utc>,
    ingested_at: DateTime<Utc>,
    concurrency: usize,
) -> Result<LandingData, SourceError> {
    let (files, ignored) = list_files(landing, schemas).instrument(info_span!("list")).await?;
    info!(files = files.len(), "landing files listed");
    if files.is_empty() {
        // A wrong path must not publish an empty table over the good one.
        return Err(SourceError::NoFiles {
            url: landing.url.to_string(),
            streams: schemas.streams.keys().cloned().collect(),
        });
    }
    let quarantine = Quarantine::new(warehouse);
    let total = files.len();
    let mut stats: BTreeMap<String, StreamStats> = schemas
        .streams
        .keys()
        .map(|s| {
            let ignored = ignored.get(s).copied().unwrap_or(0);
            (
                s.clone(),
                StreamStats {
                    files_ignored: ignored,
                    ..Default::default()
                },
            )
        })
        .collect();
    let mut events: BTreeMap<String, Vec<RecordBatch>> =
        schemas.streams.keys().map(|s| (s.clone(), Vec::new())).collect();
    let mut seen: BTreeMap<String, SeenIds> = BTreeMap::new();
    let mut quarantined = Vec::new();
    let as_of_micros = as_of.timestamp_micros();

    // Files are fetched and decoded concurrently, but consumed in path order so that
    // de-duplication keeps the same copy of an event on every run.
    let mut outcomes = futures::stream::iter(files.iter().cloned())
        .map(|file| {
            let schema = schemas.streams[&file.stream].clone();
            async move { read_file(landing, &file, &schema, ingested_at).await.map(|o| (file, o)) }
        })
        .buffered(concurrency.max(1));
    let mut done = 0usize;
    while let Some(outcome) = outcomes.next().await {
        let (file, outcome) = outcome?;
        done += 1;
        if done % 100 == 0 || done == total {
            info!(done, total, "landing files read");
        }
        let stream_stats = stats.get_mut(&file.stream).expect("declared stream");
        stream_stats.files += 1;
        let source_url = landing.display(&file.path);
        match outcome {
            FileOutcome::Rejected { bytes, reason } => {
                warn!(file = %source_url, %reason, "file quarantined");
                stream_stats.files_quarantined += 1;
                quarantined.push(
                    quarantine
                        .put_file(&file.stream, &file.relative, &source_url, bytes, &reason)
                        .await?,
                );
            }
            FileOutcome::Read { good, bad, rows } => {
                stream_stats.rows_read += rows;
                if let Some(bad) = bad {
                    stream_stats.rows_quarantined += bad.num_rows();
                    let summary = reason_summary(&bad);
                    warn!(file = %source_url, rows = bad.num_rows(), reasons = %summary, "rows quarantined");
                    quarantined.push(
                        quarantine
                            .put_rows(&file.stream, &file.relative, &source_url, &bad, &summary)
                            .await?,
                    );
                }
                let seen = seen.entry(file.stream.clone()).or_default();
                for rows in good {
                    let (batch, duplicates, late) = keep_counted(&rows, seen, as_of_micros);
                    stream_stats.duplicates_dropped += duplicates;
                    stream_stats.after_as_of += late;
                    stream_stats.events += batch.num_rows();
                    if batch.num_rows() > 0 {
                        events.get_mut(&file.stream).expect("declared stream").push(batch);
                    }
                }
            }
        }
    }
    Ok(LandingData {
        events,
        stats,
        quarantined,
    })
}

/// Hashes of the event ids seen so far in one stream.
type SeenIds = HashSet<u128, BuildHasherDefault<PrehashedU128>>;

/// Keys of [`SeenIds`] are already uniform 128-bit hashes: use their low bits as is.
#[derive(Default)]
struct PrehashedU128(u64);

impl Hasher for PrehashedU128 {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // Only reached through `write_u128`'s default, which passes the 16 bytes of the key.
        let mut low = [0u8; 8];
        low.copy_from_slice(&bytes[..8]);
        self.0 = u64::from_le_bytes(low);
    }
    fn write_u128(&mut self, key: u128) {
        self.0 = key as u64;
    }
}

/// SipHash-1-3 (128-bit) of each `event_id`: a stable, keyed hash, so two different ids
/// collide with probability ~2^-128 per pair.
fn event_id_hashes(batch: &RecordBatch) -> Vec<u128> {
    let hasher = SipHasher13::new_with_keys(0x7461_6766_6c6f_7700, 0x6576_656e_745f_6964);
    let ids = string_column(batch, "event_id");
    (0..ids.len())
        .map(|i| hasher.hash(ids.value(i).as_bytes()).as_u128())
        .collect()
}

/// Drop rows whose event_id was seen before (in this or an earlier file) and rows after
/// the as-of time. Returns the kept rows, the duplicates dropped and the rows after as-of.
fn keep_counted(rows: &GoodRows, seen: &mut SeenIds, as_of_micros: i64) -> (RecordBatch, usize, usize) {
    let batch = &rows.batch;
    let times = batch
        .column_by_name("event_time")
        .and_then(|c| c.as_any().downcast_ref::<TimestampMicrosecondArray>())
        .expect("normalised event_time");
    let (mut duplicates, mut late) = (0, 0);
    let keep: BooleanArray = rows
        .id_hashes
        .iter()
        .enumerate()
        .map(|(i, id)| {
            if !seen.insert(*id) {
                duplicates += 1;
                return Some(false);
            }
            if times.value(i) > as_of_micros {
                late += 1;
                return Some(false);
            }
            Some(true)
        })
        .collect();
    let kept = filter_record_batch(batch, &keep).expect("filter with matching length");
    (kept, duplicates, late)
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
) -> Result<FileOutcome, SourceError> {
    let fetch = |source| SourceError::Fetch {
        url: landing.display(&file.path),
        source,
    };
    let bytes = landing
        .store
        .get(&file.path)
        .await
        .map_err(fetch)?
        .bytes()
        .await
        .map_err(fetch)?;
    let schema = schema.clone();
    let source = file.relative.clone();
    tokio::task::spawn_blocking(move || decode_file(bytes, &schema, ingested_at, &source))
        .await
        .map_err(|e| SourceError::Task(e.to_string()))
}

/// Decode a whole file in memory. Any decoding error rejects the whole file: nothing of a
/// file is used unless all of it could be read.
pub fn decode_file(bytes: Bytes, schema: &StreamSchema, ingested_at: DateTime<Utc>, source: &str) -> FileOutcome {
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
    let (mut good, mut bad, mut rows) = (Vec::new(), Vec::new(), 0usize);
    for batch in reader {
        let batch = match batch {
            Ok(b) => b,
            Err(e) => return reject(bytes, format!("corrupt Parquet data after {rows} rows: {e}")),
        };
        match normalise_batch(&batch, schema, ingested_at, source, rows) {
            Ok((g, b)) => {
                rows += batch.num_rows();
                let id_hashes = event_id_hashes(&g);
                good.push(GoodRows { batch: g, id_hashes });
                bad.extend(b);
            }
            Err(reason) => return reject(bytes, reason),
        }
    }
    let bad = match bad.len() {
        0 => None,
        _ => Some(arrow::compute::concat_batches(&bad[0].schema(), &bad).expect("same schema")),
    };
    FileOutcome::Read { good, bad, rows }
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
