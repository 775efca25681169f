//! A full rebuild on a cluster: the landing files read, normalised and quarantined on the
//! executors ([`crate::sources::scan`]), de-duplicated in SQL, and the state tables, held
//! events and de-duplication ids written by the executors as the files of the next state
//! version ([`crate::state::sink`]). The driver plans the queries, takes the files their
//! results name and reads the per-file receipts (counts and quarantine entries); no event
//! or state row passes through it. A backfill reads the same way once, then folds each
//! day's events into the day before's tables on the cluster ([`ClusterRun::fold_day`]).
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

use super::catalog::{quote, state_schema, timestamp_literal, Catalog, Job, CURRENT_ROWS};
use super::engine::{ClusterRun, EngineError, FileTable};
use super::exec::{JobError, StateRun};
use crate::sources::quarantine::Entry;
use crate::sources::scan::{LandingScan, LandingTable, Receipt, ScanFile};
use crate::sources::schema::{StreamSchema, EVENT_DAY};
use crate::sources::{LandingFile, StreamStats};
use crate::state::sink::{sink_result, Sink, SinkKind, SinkResult, SinkTable, WrittenFile};
use crate::state::{Written, WrittenTable, STATE_DIR};
use crate::storage::arrow_file_bytes;

/// Tables registered in a query's session, by name.
type Tables<'a> = Vec<(&'a str, Arc<dyn TableProvider>)>;

/// Receipts read at once.
const RECEIPT_READS: usize = 16;

/// What a read of the landing zone on the cluster reads.
pub struct ReadInput<'a> {
    pub streams: &'a BTreeMap<String, StreamSchema>,
    pub landing: &'a crate::storage::Location,
    /// Every landing file, in path order, and when each was first ingested.
    pub files: &'a [LandingFile],
    pub ingest_times: &'a [DateTime<Utc>],
    /// Events up to this time count; later ones are held.
    pub as_of: DateTime<Utc>,
}

/// The landing zone read on the cluster: per stream, the unique events up to the as-of time,
/// staged as files, and the counts and quarantine entries of the read.
pub struct Events {
    due: BTreeMap<String, FileTable>,
    pub stats: BTreeMap<String, StreamStats>,
    pub quarantined: Vec<Entry>,
    /// The held events and ids, as files of a state version (a rebuild's read).
    pub written: Written,
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

/// Which events a state job folds, and into what.
struct Fold<'a> {
    /// Only the events after the first time (if any) and up to the second; `None`: every
    /// staged event.
    window: Option<(Option<DateTime<Utc>>, DateTime<Utc>)>,
    /// The table's rows before (`None`: it starts empty).
    current: Option<FileTable>,
    /// Where its segments go, relative to the warehouse.
    dir: String,
    events: &'a BTreeMap<String, FileTable>,
}

impl ClusterRun {
    /// Read every landing file on the cluster. With `state_version`, the held events and
    /// the ids of the unique events are written as files of that state version (a
    /// rebuild's); without, the held events are only counted (a backfill's).
    pub async fn read_events(&self, input: &ReadInput<'_>, state_version: Option<u64>) -> Result<Events, JobError> {
        let tag = state_version.map(|version| format!("{version}-{}", self.run_id));
        let reads = input.streams.values().map(|schema| {
            let span = info_span!("read_stream", stream = %schema.stream);
            self.read_stream(schema, input, tag.as_deref()).instrument(span)
        });
        let streams = futures::future::try_join_all(reads).await?;
        let mut events = Events {
            due: BTreeMap::new(),
            stats: BTreeMap::new(),
            quarantined: Vec::new(),
            written: Written::default(),
        };
        for stream in streams {
            events.written.held_rows += stream.held_rows;
            if !stream.held.is_empty() {
                events.written.held.insert(stream.stream.clone(), stream.held);
            }
            if !stream.seen.is_empty() {
                events.written.seen.insert(stream.stream.clone(), stream.seen);
            }
            events.due.insert(stream.stream.clone(), stream.due);
            events.stats.insert(stream.stream, stream.stats);
            events.quarantined.extend(stream.quarantined);
        }
        Ok(events)
    }

    /// Rebuild the state from every landing file on the cluster, as version `version`.
    /// The state tables stay registered for the jobs that read them.
    pub async fn rebuild_state(
        &self,
        catalog: &Catalog,
        input: ReadInput<'_>,
        version: u64,
    ) -> Result<Rebuilt, JobError> {
        let events = self.read_events(&input, Some(version)).await?;
        let tag = format!("{version}-{}", self.run_id);
        let folds = catalog.state_jobs().map(|job| Fold {
            window: None,
            current: None,
            dir: format!("{STATE_DIR}/tables/{}/{tag}", job.name),
            events: &events.due,
        });
        let runs = self.fold_tables(catalog, folds.collect(), input.as_of).await?;
        let mut written = events.written;
        let mut state_runs = Vec::new();
        for (run, table) in runs {
            written.tables.insert(run.job.clone(), table);
            state_runs.push(run);
        }
        Ok(Rebuilt {
            written,
            stats: events.stats,
            quarantined: events.quarantined,
            runs: state_runs,
        })
    }

    /// Fold the events of one backfill day (after `from`, if any, up to `as_of`) into the
    /// state tables `previous` (the day before's run) wrote, or into empty tables; this
    /// run's staging folder gets the day's tables, registered for its jobs.
    pub async fn fold_day(
        &self,
        catalog: &Catalog,
        events: &Events,
        previous: Option<&ClusterRun>,
        from: Option<DateTime<Utc>>,
        as_of: DateTime<Utc>,
    ) -> Result<(Vec<StateRun>, BTreeMap<String, WrittenTable>), JobError> {
        let folds = catalog.state_jobs().map(|job| Fold {
            window: Some((from, as_of)),
            current: previous.and_then(|run| run.written.lock().expect("not poisoned").get(&job.name).cloned()),
            dir: format!("{}/state/{}", self.dir, job.name),
            events: &events.due,
        });
        let runs = self.fold_tables(catalog, folds.collect(), as_of).await?;
        let mut tables = BTreeMap::new();
        let mut state_runs = Vec::new();
        for (run, table) in runs {
            tables.insert(run.job.clone(), table);
            state_runs.push(run);
        }
        Ok((state_runs, tables))
    }

    /// Each state job's fold (in catalog order), side by side.
    async fn fold_tables(
        &self,
        catalog: &Catalog,
        folds: Vec<Fold<'_>>,
        as_of: DateTime<Utc>,
    ) -> Result<Vec<(StateRun, WrittenTable)>, JobError> {
        let builds = catalog.state_jobs().zip(folds).map(|(job, fold)| {
            let span = info_span!("state", job = %job.name);
            self.build_table(job, fold, as_of).instrument(span)
        });
        futures::future::try_join_all(builds).await
    }

    /// Read one stream's landing files on the cluster: the unique events (due ones staged,
    /// later ones held in the state), their ids, and the files' receipts.
    async fn read_stream(
        &self,
        schema: &StreamSchema,
        input: &ReadInput<'_>,
        tag: Option<&str>,
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
                    held: tag.map(|tag| format!("{STATE_DIR}/pending/{stream}/{tag}")),
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
            unique = written.rows;
            let (good, stats, quarantined) = self.receipts(&receipts, &files).await?;
            read.stats = stats;
            read.quarantined = quarantined;
            read.stats.duplicates_dropped = good - unique;
            let (held, due): (Vec<WrittenFile>, Vec<WrittenFile>) = written.files.into_iter().partition(|f| f.held);
            read.due.files = due.iter().map(|f| self.url(&f.path)).collect();
            // Held events are counted whether written (a rebuild's) or not (a backfill's).
            read.held_rows = unique - due.iter().map(|f| f.rows).sum::<usize>();
            read.held = held.iter().map(|f| state_relative(&f.path)).collect();
            let held_urls: Vec<String> = held.iter().map(|f| self.url(&f.path)).collect();
            if let (Some(tag), true) = (tag, unique > 0) {
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
        for file in written.files {
            let day = file
                .day
                .ok_or_else(|| DataFusionError::Internal(format!("an id file without its day: {}", file.path)))?;
            seen.entry(day as i32).or_default().push(state_relative(&file.path));
        }
        Ok(seen)
    }

    /// Run one state job's fold on the cluster and write its table's segments.
    async fn build_table(
        &self,
        job: &Job,
        fold: Fold<'_>,
        as_of: DateTime<Utc>,
    ) -> Result<(StateRun, WrittenTable), JobError> {
        let started = Instant::now();
        let failed = |source: DataFusionError| JobError::Cluster {
            job: job.name.clone(),
            file: job.file.clone(),
            url: self.cluster.url.clone(),
            source: Box::new(source),
        };
        let (derived, sources) = derived_sql(job, &fold, as_of);
        let inputs = || -> Result<Tables<'_>, DataFusionError> {
            let mut tables: Tables<'_> = Vec::new();
            for (name, table) in &sources {
                tables.push((name.as_str(), table.provider()?));
            }
            if let Some(current) = &fold.current {
                tables.push((CURRENT_ROWS, current.provider()?));
            }
            Ok(tables)
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
        // Folding into current rows is merging their union with the new rows by key: one
        // aggregation (a key's single row is its own merge), which a cluster runs in one
        // shuffle, where the local fold's joins of touched keys would take several.
        let rebuilt = match fold.current {
            Some(_) => {
                let union =
                    format!("SELECT * FROM {CURRENT_ROWS}\nUNION ALL\nSELECT * FROM (\n{derived}\n) AS new_rows");
                job.rebuild_sql(&union, &columns, as_of)
            }
            None => job.rebuild_sql(&derived, &columns, as_of),
        };
        let dir = fold.dir.clone();
        let day_column = job.state.as_ref().and_then(|s| s.day_column.clone());
        let sink = Sink {
            kind: SinkKind::Table {
                day_column: day_column.clone(),
                keys: job.state.as_ref().map(|s| s.key.clone()).unwrap_or_default(),
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
        let result = self
            .insert(&job.name, tables, &format!("INSERT INTO state_rows {rebuilt}"))
            .await
            .map_err(failed)?;
        let (rows, mut written) = (result.rows, result.files);
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
        Ok((run, WrittenTable { schema, segments }))
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
    async fn insert(&self, what: &str, tables: Tables<'_>, sql: &str) -> Result<SinkResult, DataFusionError> {
        let ctx = self.session(what, tables).await?;
        let batches = ctx.sql(sql).await?.collect().await?;
        sink_result(&batches)
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

/// A state job's SQL over `fold`'s events, and the tables it reads by their registered
/// names. With a window, each stream it reads is its staged events in the window (a CTE of
/// the stream's name over the staged table `staged_<stream>`).
fn derived_sql<'a>(job: &Job, fold: &Fold<'a>, as_of: DateTime<Utc>) -> (String, Vec<(String, &'a FileTable)>) {
    let sql = job.render_sql(as_of);
    let Some((from, to)) = fold.window else {
        let sources = job.reads().map(|name| (name.clone(), &fold.events[name])).collect();
        return (sql, sources);
    };
    let after = from
        .map(|from| format!("event_time > {} AND ", timestamp_literal(from)))
        .unwrap_or_default();
    let mut ctes = Vec::new();
    let mut sources = Vec::new();
    for name in job.reads() {
        let staged = format!("staged_{name}");
        ctes.push(format!(
            "{} AS (SELECT * FROM {} WHERE {after}event_time <= {})",
            quote(name),
            quote(&staged),
            timestamp_literal(to)
        ));
        sources.push((staged, &fold.events[name]));
    }
    let sql = format!("WITH {}\nSELECT * FROM (\n{sql}\n) AS derived_rows", ctes.join(",\n"));
    (sql, sources)
}

/// A warehouse-relative path under the state, relative to the state.
fn state_relative(path: &str) -> String {
    path.strip_prefix(&format!("{STATE_DIR}/")).unwrap_or(path).to_string()
}
