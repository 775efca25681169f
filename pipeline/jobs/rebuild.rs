//! A full rebuild on a cluster: the landing files read, normalised and quarantined on the
//! executors ([`crate::sources::scan`]), de-duplicated in SQL, and the state tables, held
//! events and de-duplication ids written by the executors as the files of the next state
//! version ([`crate::state::sink`]). The driver plans the queries, lists what they wrote and
//! reads the per-file receipts (counts and quarantine entries); no event or state row passes
//! through it.
//!
//! Per stream, one query keeps the first copy of each event (by event day and `event_id`,
//! in landing path order, then row order: what a local read keeps) and writes the unique
//! events, split at the as-of time (due ones staged for the state jobs, later ones as the
//! state's held events); a second writes their ids, one file per event day. Then each
//! state job runs on the staged events and writes its table's segments (one per day of a
//! day-segmented table), which the measure and tag jobs then read in place. A state
//! table's rows are its job's rows derived from every event, merged by key by its rules,
//! within its retention ([`super::Job::rebuild_sql`]): what a local fold into an empty
//! table makes of them.
//!
//! Owns: the order of the rebuild's queries and the assembly of what they wrote.
//! Must not: commit the state (the application does) or publish.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use arrow::datatypes::SchemaRef;
use chrono::{DateTime, Utc};
use datafusion::catalog::TableProvider;
use datafusion::error::DataFusionError;
use futures::{StreamExt, TryStreamExt};
use object_store::ObjectStoreExt;
use tracing::{info, info_span, Instrument};

use super::catalog::{quote, state_schema, Catalog, Job};
use super::engine::{ClusterRun, EngineError, FileTable};
use super::exec::{JobError, StateRun};
use crate::sources::quarantine::Entry;
use crate::sources::scan::{LandingScan, LandingTable, Receipt, ScanFile};
use crate::sources::schema::{StreamSchema, EVENT_DAY};
use crate::sources::{LandingFile, StreamStats};
use crate::state::sink::{written_files, Sink, SinkKind, SinkTable, WrittenFile};
use crate::state::{Written, WrittenTable, STATE_DIR};
use crate::storage::arrow_file_bytes;

/// Tables registered in a query's session, by name.
type Tables<'a> = Vec<(&'a str, Arc<dyn TableProvider>)>;

/// Receipts read at once.
const RECEIPT_READS: usize = 16;

/// What a rebuild reads.
pub struct RebuildInput<'a> {
    pub streams: &'a BTreeMap<String, StreamSchema>,
    pub landing: &'a crate::storage::Location,
    /// Every landing file, in path order, and when each was first ingested.
    pub files: &'a [LandingFile],
    pub ingest_times: &'a [DateTime<Utc>],
    pub as_of: DateTime<Utc>,
    /// The state version the written files are for.
    pub version: u64,
}

/// What a rebuild wrote and counted.
pub struct Rebuilt {
    pub written: Written,
    pub stats: BTreeMap<String, StreamStats>,
    pub quarantined: Vec<Entry>,
    pub runs: Vec<StateRun>,
}

/// One stream's unique events, as the executors wrote them.
struct StreamRead {
    stream: String,
    due: FileTable,
    held: Vec<String>,
    held_rows: usize,
    seen: BTreeMap<i32, Vec<String>>,
    stats: StreamStats,
    quarantined: Vec<Entry>,
}

impl ClusterRun {
    /// Rebuild the state from every landing file on the cluster, as version
    /// `input.version`. The state tables stay registered for the jobs that read them.
    pub async fn rebuild_state(&self, catalog: &Catalog, input: RebuildInput<'_>) -> Result<Rebuilt, JobError> {
        let tag = format!("{}-{}", input.version, self.run_id);
        let reads = input.streams.values().map(|schema| {
            let span = info_span!("read_stream", stream = %schema.stream);
            self.read_stream(schema, &input, &tag).instrument(span)
        });
        let streams = futures::future::try_join_all(reads).await?;
        let due: BTreeMap<String, FileTable> = streams.iter().map(|s| (s.stream.clone(), s.due.clone())).collect();
        let builds = catalog.state_jobs().map(|job| {
            let span = info_span!("state", job = %job.name);
            self.build_table(job, &due, input.as_of, &tag).instrument(span)
        });
        let built = futures::future::try_join_all(builds).await?;
        let mut rebuilt = Rebuilt {
            written: Written::default(),
            stats: BTreeMap::new(),
            quarantined: Vec::new(),
            runs: Vec::new(),
        };
        for stream in streams {
            rebuilt.written.held_rows += stream.held_rows;
            if !stream.held.is_empty() {
                rebuilt.written.held.insert(stream.stream.clone(), stream.held);
            }
            if !stream.seen.is_empty() {
                rebuilt.written.seen.insert(stream.stream.clone(), stream.seen);
            }
            rebuilt.stats.insert(stream.stream, stream.stats);
            rebuilt.quarantined.extend(stream.quarantined);
        }
        for (run, schema, segments) in built {
            rebuilt
                .written
                .tables
                .insert(run.job.clone(), WrittenTable { schema, segments });
            rebuilt.runs.push(run);
        }
        Ok(rebuilt)
    }

    /// Read one stream's landing files on the cluster: the unique events (due ones staged,
    /// later ones held in the state), their ids, and the files' receipts.
    async fn read_stream(
        &self,
        schema: &StreamSchema,
        input: &RebuildInput<'_>,
        tag: &str,
    ) -> Result<StreamRead, JobError> {
        let stream = schema.stream.clone();
        let events_schema = schema.arrow_schema();
        let files: Vec<ScanFile> = input
            .files
            .iter()
            .zip(input.ingest_times)
            .enumerate()
            .filter(|(_, (file, _))| file.stream == stream)
            .map(|(seq, (file, at))| ScanFile {
                seq: seq as u64,
                relative: file.relative.clone(),
                ingested_at: *at,
            })
            .collect();
        let mut read = StreamRead {
            stream: stream.clone(),
            due: FileTable {
                schema: events_schema.clone(),
                files: Vec::new(),
            },
            held: Vec::new(),
            held_rows: 0,
            seen: BTreeMap::new(),
            stats: StreamStats::default(),
            quarantined: Vec::new(),
        };
        let failed = |source: DataFusionError| EngineError::Rebuild {
            stream: stream.clone(),
            url: self.cluster.url.clone(),
            source: Box::new(source),
        };
        let mut unique = 0;
        if !files.is_empty() {
            let receipts = format!("{}/receipts/{stream}", self.dir);
            let scan = LandingScan {
                schema: schema.clone(),
                landing: input.landing.url.to_string(),
                warehouse: self.warehouse.url.to_string(),
                receipts: receipts.clone(),
                files: files.clone(),
            };
            let events = Sink {
                kind: SinkKind::Events {
                    as_of_micros: input.as_of.timestamp_micros(),
                    held: format!("{STATE_DIR}/pending/{stream}/{tag}"),
                },
                warehouse: self.warehouse.url.to_string(),
                dir: format!("{}/events/{stream}", self.dir),
            };
            let columns: Vec<String> = events_schema.fields().iter().map(|f| quote(f.name())).collect();
            let sql = format!(
                "INSERT INTO unique_events\n\
                 SELECT {}\n\
                 FROM (SELECT *, row_number() OVER (PARTITION BY event_day, event_id ORDER BY _file, _row) AS copy_number\n\
                       FROM landing_rows) AS numbered_copies\n\
                 WHERE copy_number = 1",
                columns.join(", ")
            );
            let tables: Tables<'_> = vec![
                ("landing_rows", Arc::new(LandingTable { scan: Arc::new(scan) })),
                (
                    "unique_events",
                    Arc::new(SinkTable {
                        sink: Arc::new(events),
                        schema: events_schema.clone(),
                    }),
                ),
            ];
            let written = self
                .insert(&format!("read {stream}"), tables, &sql)
                .await
                .map_err(failed)?;
            unique = written.iter().map(|f| f.rows).sum();
            let (good, stats, quarantined) = self.receipts(&receipts, &files).await?;
            read.stats = stats;
            read.quarantined = quarantined;
            read.stats.duplicates_dropped = good - unique;
            let (held, due): (Vec<WrittenFile>, Vec<WrittenFile>) = written.into_iter().partition(|f| f.held);
            read.due.files = due.iter().map(|f| self.url(&f.path)).collect();
            read.held_rows = held.iter().map(|f| f.rows).sum();
            read.held = held.iter().map(|f| state_relative(&f.path)).collect();
            let held_urls: Vec<String> = held.iter().map(|f| self.url(&f.path)).collect();
            if unique > 0 {
                read.seen = self
                    .write_ids(&stream, &events_schema, &read, &held_urls, tag)
                    .await
                    .map_err(failed)?;
            }
        }
        if read.due.files.is_empty() {
            read.due = self.rows(&format!("events-{stream}"), &events_schema, &[]).await?;
        }
        read.stats.after_as_of = read.held_rows;
        read.stats.events = unique - read.held_rows;
        info!(
            files = files.len(),
            events = read.stats.events,
            held = read.held_rows,
            duplicates = read.stats.duplicates_dropped,
            "stream read on the cluster"
        );
        Ok(read)
    }

    /// Write the ids of a stream's unique events (due and held), one file per event day.
    async fn write_ids(
        &self,
        stream: &str,
        events_schema: &SchemaRef,
        read: &StreamRead,
        held_urls: &[String],
        tag: &str,
    ) -> Result<BTreeMap<i32, Vec<String>>, DataFusionError> {
        let dir = format!("{STATE_DIR}/seen/{stream}/{tag}");
        let ids_schema = Arc::new(
            events_schema.project(&[events_schema.index_of(EVENT_DAY)?, events_schema.index_of("event_id")?])?,
        );
        let counted = FileTable {
            schema: events_schema.clone(),
            files: read.due.files.iter().chain(held_urls).cloned().collect(),
        };
        let sink = Sink {
            kind: SinkKind::Seen,
            warehouse: self.warehouse.url.to_string(),
            dir: dir.clone(),
        };
        let tables: Tables<'_> = vec![
            ("counted_events", counted.provider()?),
            (
                "event_ids",
                Arc::new(SinkTable {
                    sink: Arc::new(sink),
                    schema: ids_schema,
                }),
            ),
        ];
        let written = self
            .insert(
                &format!("ids {stream}"),
                tables,
                "INSERT INTO event_ids SELECT event_day, event_id FROM counted_events",
            )
            .await?;
        let mut seen: BTreeMap<i32, Vec<String>> = BTreeMap::new();
        for file in written {
            let day = file
                .day
                .ok_or_else(|| DataFusionError::Internal(format!("an id file without its day: {}", file.path)))?;
            seen.entry(day as i32).or_default().push(state_relative(&file.path));
        }
        Ok(seen)
    }

    /// Run one state job on the staged events and write its table's segments.
    async fn build_table(
        &self,
        job: &Job,
        events: &BTreeMap<String, FileTable>,
        as_of: DateTime<Utc>,
        tag: &str,
    ) -> Result<(StateRun, SchemaRef, Vec<(String, Option<i64>)>), JobError> {
        let started = Instant::now();
        let failed = |source: DataFusionError| JobError::Cluster {
            job: job.name.clone(),
            file: job.file.clone(),
            url: self.cluster.url.clone(),
            source: Box::new(source),
        };
        let derived = job.render_sql(as_of);
        let inputs = || -> Result<Tables<'_>, DataFusionError> {
            job.reads()
                .map(|name| Ok((name.as_str(), events[name].provider()? as Arc<dyn TableProvider>)))
                .collect()
        };
        let schema = {
            let ctx = self
                .session(&job.name, inputs().map_err(failed)?)
                .await
                .map_err(failed)?;
            let frame = ctx.sql(&derived).await.map_err(failed)?;
            Arc::new(state_schema(frame.schema().as_arrow()))
        };
        let columns: Vec<String> = schema.fields().iter().map(|f| f.name().clone()).collect();
        let rebuilt = job.rebuild_sql(&derived, &columns, as_of);
        let dir = format!("{STATE_DIR}/tables/{}/{tag}", job.name);
        let day_column = job.state.as_ref().and_then(|s| s.day_column.clone());
        let sink = Sink {
            kind: SinkKind::Table {
                day_column: day_column.clone(),
            },
            warehouse: self.warehouse.url.to_string(),
            dir: dir.clone(),
        };
        let mut tables = inputs().map_err(failed)?;
        tables.push((
            "state_rows",
            Arc::new(SinkTable {
                sink: Arc::new(sink),
                schema: schema.clone(),
            }),
        ));
        let mut written = self
            .insert(&job.name, tables, &format!("INSERT INTO state_rows {rebuilt}"))
            .await
            .map_err(failed)?;
        let rows = written.iter().map(|f| f.rows).sum();
        if written.is_empty() {
            // An empty table still stores its schema.
            written.push(self.empty_segment(&dir, &schema).await?);
        }
        // Segments in a stable order (days first to last).
        written.sort_by(|a, b| (a.day, &a.path).cmp(&(b.day, &b.path)));
        let urls = written.iter().map(|f| self.url(&f.path)).collect();
        let segments = written.iter().map(|f| (state_relative(&f.path), f.day)).collect();
        self.written.lock().expect("not poisoned").insert(
            job.name.clone(),
            FileTable {
                schema: schema.clone(),
                files: urls,
            },
        );
        let run = StateRun {
            job: job.name.clone(),
            new_rows: rows,
            rows,
            rows_rewritten: rows,
            changed_customers: None,
            duration: started.elapsed(),
        };
        info!(rows, "state table written on the cluster");
        Ok((run, schema, segments))
    }

    /// A client session named for `what`, with `tables`.
    async fn session(
        &self,
        what: &str,
        tables: Tables<'_>,
    ) -> Result<datafusion::prelude::SessionContext, DataFusionError> {
        let ctx = self.cluster.context(what).await?;
        for (name, table) in tables {
            ctx.register_table(name, table)?;
        }
        Ok(ctx)
    }

    /// Run an `INSERT` into a sink; returns the files its result names.
    async fn insert(&self, what: &str, tables: Tables<'_>, sql: &str) -> Result<Vec<WrittenFile>, DataFusionError> {
        let ctx = self.session(what, tables).await?;
        let batches = ctx.sql(sql).await?.collect().await?;
        written_files(&batches)
    }

    /// The URL of a warehouse-relative path.
    fn url(&self, path: &str) -> String {
        self.warehouse.display(&self.warehouse.path(path))
    }

    /// Write a segment without rows under `dir`.
    async fn empty_segment(&self, dir: &str, schema: &SchemaRef) -> Result<WrittenFile, EngineError> {
        let relative = format!("{dir}/empty.arrow");
        let path = self.warehouse.path(&relative);
        let failed = |source: Box<dyn std::error::Error + Send + Sync>| EngineError::Staging {
            path: self.warehouse.display(&path),
            source,
        };
        let bytes =
            arrow_file_bytes(schema.clone(), &[], !self.warehouse.is_local()).map_err(|e| failed(Box::new(e)))?;
        self.warehouse
            .store
            .put(&path, bytes.into())
            .await
            .map_err(|e| failed(Box::new(e)))?;
        Ok(WrittenFile {
            path: relative,
            rows: 0,
            day: None,
            held: false,
        })
    }

    /// The receipts of `files`: good rows before de-duplication, the stream's counts and
    /// the quarantine entries.
    async fn receipts(&self, dir: &str, files: &[ScanFile]) -> Result<(usize, StreamStats, Vec<Entry>), EngineError> {
        let receipts: Vec<Receipt> = futures::stream::iter(files)
            .map(|file| async move {
                let path = self.warehouse.path(&LandingScan::receipt_path(dir, file.seq));
                let failed = |source: Box<dyn std::error::Error + Send + Sync>| EngineError::Staging {
                    path: self.warehouse.display(&path),
                    source,
                };
                let bytes = self
                    .warehouse
                    .store
                    .get(&path)
                    .await
                    .map_err(|e| failed(Box::new(e)))?
                    .bytes()
                    .await
                    .map_err(|e| failed(Box::new(e)))?;
                serde_json::from_slice::<Receipt>(&bytes).map_err(|e| failed(Box::new(e)))
            })
            .buffered(RECEIPT_READS)
            .try_collect()
            .await?;
        let mut stats = StreamStats::default();
        let mut good = 0;
        let mut quarantined = Vec::new();
        for receipt in receipts {
            stats.add(&receipt.counts);
            good += receipt.good_rows;
            quarantined.extend(receipt.quarantined);
        }
        Ok((good, stats, quarantined))
    }
}

/// A warehouse-relative path under the state, relative to the state.
fn state_relative(path: &str) -> String {
    path.strip_prefix(&format!("{STATE_DIR}/")).unwrap_or(path).to_string()
}
