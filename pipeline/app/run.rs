//! A run, end to end: prepare (schemas, catalog, parameters, planning) → lock → load the
//! state → read the landing files it has not processed (while the state's tables load) →
//! fold them into the state → evaluate the tags → commit the state and, side by side,
//! publish `customer_tags` (the changed tags' partitions, and the change feed) → compact
//! when the policy says so → report. `follow` repeats the batch on an interval with the
//! state kept in memory.
//!
//! The state commit and the publish are independent writes, so a killed run may land one
//! without the other. A state newer than the table: the next run (which always publishes)
//! catches up. A table newer than the state: the next run reads the same files again into
//! the committed state, whose de-duplication memory has not seen their events, so they
//! count once and the table comes out the same. Either way nothing is counted twice.
//!
//! Owns: the order of the stages, the choice between incremental and full, and the run
//! report's numbers.
//! Must not: do any stage's work itself; each stage lives in its own module.

use std::collections::{BTreeMap, HashSet};
use std::time::Instant;

use arrow::array::{Array, StringArray};
use arrow::record_batch::RecordBatch;
use chrono::{DateTime, Utc};
use deltalake::DeltaTable;
use serde_json::json;
use tracing::{info, info_span, warn, Instrument};

use crate::compact;
use crate::config::ConfigError;
use crate::config::Settings;
use crate::error::Error;
use crate::follow_metrics::FollowMetrics;
use crate::history::{self, RunRecord, Summary};
use crate::jobs::{
    evaluate_checks, fold_state, run_jobs, Catalog, GateError, GateReport, JobKind, JobOutput, JobRun, Segments,
    StateRun, Table,
};
use crate::lock::RunLock;
use crate::publish;
use crate::publish::tags::{catch_up_feed, publish_tags, TagsBase, TagsUpdate};
use crate::quarantine::{EntryKind, Quarantine};
use crate::report::{
    Freshness, MeasureReport, Mode, QuarantineReport, RunReport, StateReport, StateTableReport, TagReport,
};
use crate::schema::Schemas;
use crate::snapshots;
use crate::sources::{self, LandingFile, StreamStats};
use crate::state::State;
use crate::storage::Location;

/// The project files a run needs, loaded and checked.
pub struct Project {
    pub schemas: Schemas,
    pub catalog: Catalog,
}

/// Load schemas and jobs, apply parameter overrides and plan every job. Any error here is
/// reported before anything is read or written.
pub async fn prepare(settings: &Settings) -> Result<Project, Error> {
    prepare_with(settings, None).await
}

/// [`prepare`] with a candidate job file in place of (or added to) the catalog's job of
/// the same name.
pub async fn prepare_with(settings: &Settings, candidate: Option<&std::path::Path>) -> Result<Project, Error> {
    let schemas = Schemas::load(&settings.schemas_dir)?;
    let streams: Vec<String> = schemas.streams.keys().cloned().collect();
    let mut catalog = Catalog::load_with(&settings.sql_dir, &streams, candidate)?;
    catalog.apply_overrides(&settings.params)?;
    catalog.validate(&schemas).await?;
    // Duplicates older than the memory's reach must not be able to change a table.
    for job in catalog.state_jobs() {
        let sums = job
            .state
            .as_ref()
            .is_some_and(|s| s.merge.values().any(|r| !r.is_idempotent()));
        let reach = job.retain_days().unwrap_or(i64::MAX);
        if sums && reach > i64::from(settings.dedup_days) {
            return Err(ConfigError::Invalid {
                key: "dedup_days",
                message: format!(
                    "{} days is shorter than what state job '{}' keeps ({}); a re-sent event older than the \
                     de-duplication memory would be counted twice. Raise dedup_days or give the job a shorter \
                     retain_days",
                    settings.dedup_days,
                    job.name,
                    if reach == i64::MAX {
                        "all time".to_string()
                    } else {
                        format!("{reach} days")
                    }
                ),
            }
            .into());
        }
    }
    if !settings.jobs.is_empty() {
        catalog.select(&settings.jobs)?;
    }
    Ok(Project { schemas, catalog })
}

/// Run the pipeline once (a batch under the warehouse lock) and record it in `job_runs`.
pub async fn run(settings: &Settings) -> Result<RunReport, Error> {
    let landing = settings.landing()?;
    let warehouse = settings.warehouse()?;
    check_locations(&[landing, warehouse]).await?;
    let run_id = uuid::Uuid::new_v4().to_string();
    let started_at = Utc::now();
    let span = info_span!("run", run_id = %run_id, as_of = %settings.as_of.to_rfc3339());
    let outcome = async {
        let started = Instant::now();
        let project = prepare(settings).instrument(info_span!("prepare")).await?;
        let prepare_ms = started.elapsed().as_millis() as u64;
        // One run at a time per warehouse; the lock is released whatever happens next.
        let lock = RunLock::acquire(warehouse, &run_id, settings.lock_ttl).await?;
        let batch = Batch {
            settings,
            project: &project,
            landing,
            warehouse,
            run_id: &run_id,
            started_at,
            as_of: settings.as_of,
            full: settings.full.then_some("--full"),
        };
        let outcome = batch.run(&mut Session::default(), false).await;
        release(lock).await;
        let mut report = outcome?.expect("a run that may not skip reports");
        report.stages_ms.insert("prepare".into(), prepare_ms);
        report.duration_ms = started.elapsed().as_millis() as u64;
        Ok(report)
    }
    .instrument(span.clone());
    // `job_runs` opens while the run works; if it cannot, recording tries again and warns.
    let (outcome, runs_table) = tokio::join!(outcome, history::open(warehouse).instrument(span.clone()));
    record(
        warehouse,
        &run_id,
        settings.as_of,
        started_at,
        outcome.as_ref().map(Summary::from),
        runs_table.ok(),
    )
    .instrument(span)
    .await;
    outcome
}

/// Check that the locations answer before anything else, so that a wrong endpoint, a
/// missing bucket or refused credentials are reported as such, with the URL, rather than
/// as whatever step met them first (and nothing, not even a run record, is attempted).
pub async fn check_locations(locations: &[&Location]) -> Result<(), Error> {
    for location in locations {
        location
            .check()
            .instrument(info_span!("check_storage", url = %location.url))
            .await?;
    }
    Ok(())
}

/// Release the warehouse lock; a failure is a warning (the outcome stands, and the lock
/// expires after lock_ttl_secs).
async fn release(lock: RunLock) {
    if let Err(error) = lock.release().await {
        warn!(%error, "cannot release the warehouse lock");
    }
}

/// `tagflow compact`: under the warehouse lock, bring the change feed up to date (its
/// catch-up reads versions that a vacuum may remove) and compact every table.
pub async fn compact(settings: &Settings) -> Result<compact::CompactReport, Error> {
    let warehouse = settings.warehouse()?;
    check_locations(&[warehouse]).await?;
    let id = uuid::Uuid::new_v4().to_string();
    let lock = RunLock::acquire(warehouse, &id, settings.lock_ttl).await?;
    let outcome = async {
        catch_up_feed(warehouse, &settings.compaction.table_settings()).await?;
        Ok(compact::compact(warehouse, &settings.compaction).await?)
    }
    .instrument(info_span!("compact"))
    .await;
    release(lock).await;
    outcome
}

/// Record a run (or a follow batch) in `job_runs`; a failure to record is a warning.
pub(crate) async fn record(
    warehouse: &Location,
    run_id: &str,
    as_of: DateTime<Utc>,
    started_at: DateTime<Utc>,
    outcome: Result<Summary, &Error>,
    opened: Option<DeltaTable>,
) {
    let record = RunRecord {
        run_id,
        as_of,
        started_at,
        outcome,
    };
    if let Err(error) = history::record(warehouse, &record, opened).await {
        warn!(%error, "cannot record the run in {}", history::RUNS_TABLE);
    }
}

/// Follow the landing zone until `stop` resolves: every `interval`, a batch reads the new
/// files, folds them into the state and publishes. The lock is held for the whole session
/// and the state stays in memory between batches. `stop` ends the session after the
/// current batch. Every batch is counted in `metrics`; `on_batch` sees the report of
/// every batch that published. `clock` gives each batch its as-of time (`tagflow follow`:
/// the wall clock; freshness is always measured on the wall clock). Returns the number of
/// batches that published.
pub async fn follow(
    settings: &Settings,
    interval: std::time::Duration,
    stop: impl std::future::Future<Output = ()>,
    metrics: &FollowMetrics,
    mut on_batch: impl FnMut(&RunReport),
    clock: impl Fn() -> DateTime<Utc>,
) -> Result<usize, Error> {
    let landing = settings.landing()?;
    let warehouse = settings.warehouse()?;
    check_locations(&[landing, warehouse]).await?;
    let project = prepare(settings).instrument(info_span!("prepare")).await?;
    let session = uuid::Uuid::new_v4().to_string();
    let lock = RunLock::acquire(warehouse, &session, settings.lock_ttl).await?;
    info!(interval_ms = interval.as_millis() as u64, "following the landing zone");
    tokio::pin!(stop);
    let next_full_after = |after: DateTime<Utc>| {
        let cron = settings.full_cron.as_ref()?;
        cron.find_next_occurrence(&after, false).ok()
    };
    // The first scheduled full recompute: the cron's next time after the first batch's.
    let (mut next_full, mut first_batch) = (None, true);
    let mut session = Session::default();
    let mut published = 0usize;
    let mut failures = 0u32;
    let outcome = loop {
        let tick = Instant::now();
        let run_id = uuid::Uuid::new_v4().to_string();
        let started_at = clock();
        if std::mem::take(&mut first_batch) {
            next_full = next_full_after(started_at);
        }
        let span = info_span!("batch", run_id = %run_id, as_of = %started_at.to_rfc3339());
        // A batch at or after the next scheduled time recomputes from every landing file.
        let full = next_full.filter(|t| started_at >= *t).map(|_| {
            next_full = next_full_after(started_at);
            info!(next = ?next_full.map(|t| t.to_rfc3339()), "scheduled full recompute ([follow] full_cron)");
            "scheduled by [follow] full_cron"
        });
        let batch = Batch {
            settings,
            project: &project,
            landing,
            warehouse,
            run_id: &run_id,
            started_at,
            as_of: started_at,
            full,
        };
        // The first batch, and the first after a failure, always publish: a crash or a failed
        // publish may have left the state newer than the table.
        let may_skip = published > 0 && failures == 0 && batch.full.is_none();
        let outcome = batch.run(&mut session, may_skip).instrument(span.clone()).await;
        match &outcome {
            Ok(None) => metrics.idle(),
            Ok(Some(report)) => {
                published += 1;
                failures = 0;
                metrics.published(report);
                on_batch(report);
                info!(
                    version = report.published.version,
                    files = report.streams.values().map(|s| s.files).sum::<usize>(),
                    events = report.streams.values().map(|s| s.events).sum::<usize>(),
                    freshness_p95_ms = report.freshness.as_ref().map(|f| f.p95_ms),
                    ms = report.duration_ms,
                    "batch published"
                );
            }
            Err(error) => {
                metrics.failed(error);
                // Drop what is in memory: the next batch starts from the committed state
                // and the published table.
                session = Session::default();
                failures += 1;
                warn!(%error, failures, "batch failed");
            }
        }
        if !matches!(outcome, Ok(None)) {
            record(
                warehouse,
                &run_id,
                started_at,
                started_at,
                outcome.as_ref().map(|r| Summary::from(r.as_ref().expect("some"))),
                None,
            )
            .instrument(span)
            .await;
        }
        if let Err(error) = outcome {
            if !retryable(&error) || failures >= MAX_FOLLOW_FAILURES {
                break Err(error);
            }
        }
        let pause = interval.saturating_sub(tick.elapsed());
        tokio::select! {
            _ = &mut stop => break Ok(published),
            _ = tokio::time::sleep(pause) => {}
        }
    };
    release(lock).await;
    info!(batches = published, "follow stopped");
    outcome
}

/// Consecutive failed batches after which `follow` gives up.
const MAX_FOLLOW_FAILURES: u32 = 5;

/// Failures a later batch may not meet again (storage hiccups, a job failing on data that a
/// new file may fix); configuration and lock errors end a follow session at once.
fn retryable(error: &Error) -> bool {
    !matches!(
        error.exit_code(),
        crate::error::exit::CONFIG | crate::error::exit::LOCKED
    )
}

/// What a batch leaves in memory for the next one of a `follow` session (a single run
/// starts with nothing): the state, loaded when `None`, and the base of the next publish.
#[derive(Default)]
struct Session {
    state: Option<State>,
    published: Option<TagsBase>,
}

/// One batch: what it needs to know.
struct Batch<'a> {
    settings: &'a Settings,
    project: &'a Project,
    landing: &'a Location,
    warehouse: &'a Location,
    run_id: &'a str,
    started_at: DateTime<Utc>,
    as_of: DateTime<Utc>,
    /// Why this batch must recompute from every landing file, if it must.
    full: Option<&'static str>,
}

impl Batch<'_> {
    /// Read the new landing files, fold them into the state, evaluate the tags, commit the
    /// state and publish. `session` holds what is in memory already (the rest is loaded).
    /// With `may_skip`, a batch with nothing to change (no new file, no held event due,
    /// same day) publishes nothing and returns `None`.
    async fn run(&self, session: &mut Session, may_skip: bool) -> Result<Option<RunReport>, Error> {
        crate::hold::point("batch").await;
        let started = Instant::now();
        let mut stages_ms = BTreeMap::new();
        let mut stage = |name: &str, since: Instant| {
            stages_ms.insert(name.to_string(), since.elapsed().as_millis() as u64);
            Instant::now()
        };
        let (settings, catalog, as_of) = (self.settings, &self.project.catalog, self.as_of);
        let fingerprint = catalog.state_fingerprint();

        // Two independent lines of work run side by side: the state's head, then its tables
        // beside the landing listing and the new files (which files are new depends only on
        // the head); and the published tags with their last publish (for the drift gates).
        let table_settings = settings.compaction.table_settings();
        let published = session.published.take();
        let published = async {
            let base = match published {
                Some(base) => base.refresh(self.warehouse, &table_settings).await?,
                None => TagsBase::open(self.warehouse, &table_settings).await?,
            };
            let baseline = match base.table() {
                Some(table) => {
                    snapshots::latest_publish_in(table)
                        .instrument(info_span!("baseline"))
                        .await?
                }
                None => None,
            };
            Ok::<_, Error>((base, baseline))
        }
        .instrument(info_span!("open_published"));
        let slot = &mut session.state;
        let read = async {
            // Until its tables are loaded too, a state loaded here is only its head: a
            // batch that fails or skips before then must not leave it in the session.
            let mut tables_to_load = false;
            if slot.is_none() {
                *slot = State::load_head(self.warehouse)
                    .instrument(info_span!("load_state"))
                    .await?;
                tables_to_load = slot.is_some();
            }
            let full_because = match slot.as_ref() {
                _ if self.full.is_some() => self.full.map(String::from),
                None => Some("no state yet".to_string()),
                Some(s) if s.fingerprint != fingerprint => {
                    Some("the state jobs or their parameters changed".to_string())
                }
                Some(s) if s.as_of.is_some_and(|t| as_of < t) => Some(format!(
                    "as-of is before the state's as-of {}",
                    s.as_of.expect("checked").to_rfc3339()
                )),
                Some(_) => None,
            };
            let state = slot.get_or_insert_with(|| State::empty(&fingerprint));
            if let Some(why) = &full_because {
                info!(because = %why, "full run: every landing file is read");
                state.reset(&fingerprint);
                tables_to_load = false;
            }
            // The state's tables load while the landing zone is listed and the new files
            // are read (which files are new depends only on the head).
            let head: &State = state;
            let new_files = async {
                let listing = sources::list_files(self.landing, &self.project.schemas)
                    .instrument(info_span!("list"))
                    .await?;
                let to_read: Vec<LandingFile> = match full_because {
                    Some(_) => listing.files,
                    None => listing
                        .files
                        .into_iter()
                        .filter(|f| !head.files.contains_key(&f.relative))
                        .collect(),
                };
                let same_day = head.as_of.is_some_and(|t| t.date_naive() == as_of.date_naive());
                let held_due = head.pending.values().flatten().any(|b| sources::any_due(b, as_of));
                if may_skip && !tables_to_load && full_because.is_none() && to_read.is_empty() && same_day && !held_due
                {
                    return Ok::<_, Error>(None);
                }
                // A file is ingested once: a rebuild judges it against its first ingest time.
                let ingest_times: Vec<DateTime<Utc>> = to_read
                    .iter()
                    .map(|f| head.files.get(&f.relative).copied().unwrap_or(self.started_at))
                    .collect();
                let decoded = sources::read_files(
                    self.landing,
                    self.warehouse,
                    &self.project.schemas,
                    &to_read,
                    &ingest_times,
                    settings.read_concurrency,
                    settings.progress,
                )
                .instrument(info_span!("read"))
                .await?;
                Ok(Some((listing.ignored, to_read, ingest_times, decoded)))
            };
            let tables = async {
                match tables_to_load {
                    true => head.load_tables(self.warehouse).await.map(Some),
                    false => Ok(None),
                }
            }
            .instrument(info_span!("load_tables"));
            let (new_files, tables) = tokio::join!(new_files, tables);
            let (new_files, tables) = match (new_files, tables) {
                (Ok(new_files), Ok(tables)) => (new_files, tables),
                (Err(error), _) => return Err(drop_head(slot, tables_to_load, error)),
                (_, Err(error)) => return Err(drop_head(slot, tables_to_load, error.into())),
            };
            let Some((ignored, to_read, ingest_times, decoded)) = new_files else {
                return Ok(None);
            };
            let state = slot.as_mut().expect("set above");
            if let Some(tables) = tables {
                state.tables = tables;
            }
            let seen_ids_loaded = state
                .load_days(self.warehouse, &decoded.days())
                .instrument(info_span!("load_seen"))
                .await?;
            let mut data = decoded.deduplicate(&mut state.seen);
            for (stream, ignored) in ignored {
                data.stats.entry(stream).or_default().files_ignored = ignored;
            }
            Ok::<_, Error>(Some((full_because, to_read, ingest_times, seen_ids_loaded, data)))
        };
        let (read, published) = tokio::join!(read, published);
        let (base, baseline) = published?;
        let Some((full_because, to_read, ingest_times, seen_ids_loaded, mut data)) = read? else {
            session.published = Some(base);
            return Ok(None);
        };
        let state = session.state.as_mut().expect("the read sets the state");
        let from_version = state.version;
        stage("read", started);

        let new_events = std::mem::take(&mut data.events);
        let evaluated = evaluate_at(
            self.project,
            state,
            new_events,
            &mut data.stats,
            as_of,
            baseline.as_ref().map(|s| (s.version, &s.segments)),
            settings.force,
        )
        .await?;
        let (output, state_runs, gates) = (evaluated.output, evaluated.state_runs, evaluated.gates);
        let evaluate_stages = evaluated.stages_ms;

        for (file, at) in to_read.iter().zip(ingest_times) {
            state.record_file(&file.relative, at);
        }
        let seen_from_day = (as_of.timestamp().div_euclid(86_400) - i64::from(settings.dedup_days) + 1) as i32;
        // The state commit and the publish run side by side (see the module doc for why
        // either may land without the other); the publish names the state version.
        let version = state.next_version();
        let commit = timed(
            state
                .commit(self.warehouse, self.run_id, as_of, seen_from_day)
                .instrument(info_span!("commit_state")),
        );

        let rows = publish::assemble(&output.runs, as_of);
        // A partial run (`--jobs`) replaces only its tags' rows.
        let scope = (!settings.jobs.is_empty()).then(|| catalog.tags().map(|j| j.name.clone()).collect());
        let metadata = json!({
            "tagflow.run_id": self.run_id,
            "tagflow.state_version": version,
        });
        let update = TagsUpdate {
            rows,
            scope,
            as_of,
            metadata: metadata.as_object().cloned().unwrap_or_default(),
        };
        let publish =
            timed(publish_tags(self.warehouse, base, update, &table_settings).instrument(info_span!("publish")));
        // The report's per-tag figures are counted meanwhile, off the runtime's threads.
        let tag_runs: Vec<JobRun> = output
            .runs
            .iter()
            .filter(|r| r.job.kind == JobKind::Tag)
            .cloned()
            .collect();
        // A whole-catalog publish counts the customers of its new version, which are the
        // tagged ones; a partial one keeps other tags' rows, so they are counted here.
        let partial = !settings.jobs.is_empty();
        let tag_figures = tokio::task::spawn_blocking(move || {
            let reports: Vec<TagReport> = tag_runs.iter().map(tag_report).collect();
            (partial.then(|| tagged_customers(&tag_runs)), reports)
        });
        let ((committed, commit_ms), (published, publish_ms), tag_figures) = tokio::join!(commit, publish, tag_figures);
        let (customers, tags) = tag_figures.expect("counting tag figures does not panic");
        let published_at = Utc::now();
        committed?;
        let (published, next_base) = published?;
        let customers = customers
            .or(published.customers)
            .expect("a publish of customer_tags counts its customers");
        session.published = Some(next_base);
        let mark = Instant::now();
        info!(
            version = published.version,
            rows = published.rows,
            rows_written = published.rows_written,
            changes = published.changes.map(|c| c.total()),
            "published"
        );
        let compaction = match settings.compaction.due(published.version, published.files) {
            true => Some(
                compact::compact(self.warehouse, &settings.compaction)
                    .instrument(info_span!("compact"))
                    .await?,
            ),
            false => None,
        };
        if compaction.is_some() {
            stage("compact", mark);
        }

        stages_ms.extend(evaluate_stages);
        stages_ms.insert("commit_state".to_string(), commit_ms);
        stages_ms.insert("publish".to_string(), publish_ms);
        let lags: Vec<u64> = to_read
            .iter()
            .map(|f| (published_at - f.appeared_at).num_milliseconds().max(0) as u64)
            .collect();
        let quarantine = QuarantineReport {
            location: Quarantine::new(self.warehouse).url(),
            files: data.quarantined.iter().filter(|e| e.kind == EntryKind::File).count(),
            rows: data
                .quarantined
                .iter()
                .filter(|e| e.kind == EntryKind::Rows)
                .map(|e| e.rows)
                .sum(),
            entries: data.quarantined,
        };
        Ok(Some(RunReport {
            run_id: self.run_id.to_string(),
            as_of,
            started_at: self.started_at,
            duration_ms: started.elapsed().as_millis() as u64,
            landing: self.landing.url.to_string(),
            warehouse: self.warehouse.url.to_string(),
            mode: if full_because.is_some() {
                Mode::Full
            } else {
                Mode::Incremental
            },
            full_because,
            streams: data.stats,
            state: StateReport {
                from_version,
                version,
                tables: state_runs
                    .iter()
                    .map(|r| {
                        let report = StateTableReport {
                            new_rows: r.new_rows,
                            rows_rewritten: r.rows_rewritten,
                            rows: r.rows,
                            duration_ms: r.duration.as_millis() as u64,
                        };
                        (r.job.clone(), report)
                    })
                    .collect(),
                held_events: state.pending_events(),
                seen_ids_loaded,
            },
            freshness: Freshness::of(lags),
            quarantine,
            customers,
            tags,
            measures: output
                .runs
                .iter()
                .filter(|r| r.job.kind == JobKind::Measure)
                .map(|r| MeasureReport {
                    measure: r.job.name.clone(),
                    rows: r.rows,
                    duration_ms: r.duration.as_millis() as u64,
                })
                .collect(),
            stages_ms,
            gates,
            published,
            compaction,
        }))
    }
}

/// `error`, after emptying `slot` if it holds a state whose tables were never loaded.
fn drop_head(slot: &mut Option<State>, tables_to_load: bool, error: Error) -> Error {
    if tables_to_load {
        *slot = None;
    }
    error
}

/// `future`'s output and the milliseconds it took.
async fn timed<T>(future: impl std::future::Future<Output = T>) -> (T, u64) {
    let started = Instant::now();
    let output = future.await;
    (output, started.elapsed().as_millis() as u64)
}

/// What [`evaluate_at`] produced.
pub(crate) struct Evaluated {
    pub output: JobOutput,
    pub state_runs: Vec<StateRun>,
    pub gates: GateReport,
    /// Milliseconds spent in `fold_state`, `jobs` and `gates`.
    pub stages_ms: BTreeMap<String, u64>,
}

/// Evaluate the tags at `as_of`: the events that count now (`new_events` and held ones
/// whose time has come; later ones are held in `state.pending`) are folded into the state
/// tables, the measure and tag jobs run, and the quality gates are checked against
/// `baseline` (the previous snapshot's version and segments). A failed gate is an error
/// unless `force`; the state in memory is then already folded, so a caller that stops
/// must drop it (nothing of it is committed).
pub(crate) async fn evaluate_at(
    project: &Project,
    state: &mut State,
    mut new_events: BTreeMap<String, Vec<RecordBatch>>,
    stats: &mut BTreeMap<String, StreamStats>,
    as_of: DateTime<Utc>,
    baseline: Option<(u64, &Segments)>,
    force: bool,
) -> Result<Evaluated, Error> {
    let mut counted = BTreeMap::new();
    for (name, schema) in &project.schemas.streams {
        let mut batches = state.pending.remove(name).unwrap_or_default();
        batches.extend(new_events.remove(name).unwrap_or_default());
        let (now, later) = sources::split_at(batches, as_of);
        let stats = stats.entry(name.clone()).or_default();
        stats.events += now.iter().map(|b| b.num_rows()).sum::<usize>();
        stats.after_as_of = later.iter().map(|b| b.num_rows()).sum();
        state.pending.insert(name.clone(), later);
        counted.insert(
            name.clone(),
            Table {
                schema: schema.arrow_schema(),
                batches: now,
            },
        );
    }
    let catalog = &project.catalog;
    let mut stages_ms = BTreeMap::new();
    let mut mark = Instant::now();
    let mut stage = |name: &str| {
        stages_ms.insert(name.to_string(), mark.elapsed().as_millis() as u64);
        mark = Instant::now();
    };
    let (tables, state_runs) = fold_state(catalog, &state.tables, &counted, as_of)
        .instrument(info_span!("fold_state"))
        .await?;
    drop(counted);
    state.tables = tables;
    stage("fold_state");
    let output = run_jobs(catalog, &state.tables, as_of)
        .instrument(info_span!("jobs"))
        .await?;
    stage("jobs");
    // Quality gates: a failure publishes nothing and commits no state (the next run reads
    // the same files again), unless forced.
    let mut gates = info_span!("gates").in_scope(|| evaluate_checks(&output.runs, baseline));
    stage("gates");
    if !gates.passed() {
        if !force {
            return Err(GateError { report: gates }.into());
        }
        gates.forced = true;
        for failure in &gates.failures {
            warn!(%failure, "quality check failed; publishing anyway (--force)");
        }
    }
    Ok(Evaluated {
        output,
        state_runs,
        gates,
        stages_ms,
    })
}

fn tag_report(run: &JobRun) -> TagReport {
    TagReport {
        tag: run.job.name.clone(),
        family: run.job.family.clone().unwrap_or_default(),
        rows: run.rows,
        values: run.values.clone(),
        duration_ms: run.duration.as_millis() as u64,
    }
}

/// Distinct customers in the rows of the tag runs among `runs`.
fn tagged_customers(runs: &[JobRun]) -> usize {
    let mut customers: HashSet<&str> = HashSet::new();
    for run in runs.iter().filter(|r| r.job.kind == JobKind::Tag) {
        for batch in &run.batches {
            let ids = batch
                .column(0)
                .as_any()
                .downcast_ref::<StringArray>()
                .expect("normalised id");
            customers.extend(ids.iter().flatten());
        }
    }
    customers.len()
}
