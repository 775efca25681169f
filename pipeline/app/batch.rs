//! One batch of a run or of `follow`, as named steps: open the published base → choose the
//! mode and read the new input (side by side) → fold and evaluate (with the gates) → commit
//! the state and publish (side by side) → compact when due → report.
//!
//! The state commit and the publish are independent writes, so a killed batch may land one
//! without the other. A state newer than the table: the next batch (the first of a run or a
//! session always publishes) catches up. A table newer than the state: the next batch reads
//! the same files again into the committed state, whose de-duplication memory has not seen
//! their events, so they count once and the table comes out the same. Either way nothing is
//! counted twice.
//!
//! Owns: the order of a batch's stages, the choice between incremental and full, and the
//! run report's numbers. Must not: do any stage's work itself; each stage lives in its own
//! layer below.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

use arrow::array::{Array, StringArray};
use arrow::record_batch::RecordBatch;
use chrono::{DateTime, Utc};
use serde_json::json;
use tracing::{info, info_span, warn, Instrument};

use super::prepare::Project;
use super::Steps;
use crate::app::error::Error;
use crate::app::report::{
    Freshness, MeasureReport, Mode, QuarantineReport, RunReport, StateReport, StateTableReport, TagReport,
};
use crate::config::Settings;
use crate::jobs::{
    evaluate_checks, fold_state, run_jobs, Baseline, Cluster, ClusterRun, CustomerBits, Definitions, GateError,
    GateReport, JobKind, JobOutput, JobRun, Numbering, ReadInput, Reuse, StateRun, CUSTOMER_ID,
};
use crate::publish::compact::{self, CompactReport};
use crate::publish::snapshots::{self, Snapshot};
use crate::publish::tags::{publish_tags, Narrowed, TagsBase, TagsUpdate, META_DEFINITIONS};
use crate::publish::{self, Published};
use crate::sources::quarantine::{EntryKind, Quarantine};
use crate::sources::{self, Decoded, LandingData, LandingFile, StreamStats};
use crate::state::tables::Table;
use crate::state::State;
use crate::storage::masked::MaskedRows;
use crate::storage::{hold, Location};

/// What a batch leaves in memory for the next one of a `follow` session (a single run
/// starts with nothing): the state, loaded when `None`, the base of the next publish, and
/// the last evaluation.
#[derive(Default)]
pub(super) struct Session {
    pub state: Option<State>,
    pub published: Option<TagsBase>,
    pub evaluated: Option<LastEvaluation>,
    /// The session's numbering of customers (the last evaluation's rows are numbered).
    pub numbering: Arc<Numbering>,
    /// Number the state's and the published view's customers in a batch that evaluated
    /// everyone (a `follow` session's: its next batches select rows by number; a single run
    /// has no next batch).
    pub number_ahead: bool,
}

impl Session {
    /// A `follow` session's (see [`Session::number_ahead`]).
    pub fn following() -> Self {
        Session {
            number_ahead: true,
            ..Session::default()
        }
    }
}

/// The tag and measure outputs of the last batch that published, and its as-of day: a
/// batch at the same day (whose tags read nothing else that moves) evaluates them only for
/// the customers whose inputs changed.
pub(super) struct LastEvaluation {
    day: i64,
    runs: BTreeMap<String, JobRun>,
}

/// Number the customers of the state's tables, of the last evaluation's outputs and of
/// the published view, then join the view's small parts (off the runtime's threads). A
/// batch that evaluated everyone leaves them unnumbered, and the next batch, which selects
/// its changed customers' rows by number, would hash every id first (at 1M customers: ~17M
/// rows, seconds, while new files wait) and join the view's thousands of parts.
async fn number_ahead(session: &mut Session) {
    let mut batches: Vec<RecordBatch> = session
        .published
        .as_ref()
        .map(|b| b.rows().batches().cloned().collect())
        .unwrap_or_default();
    if let Some(state) = &session.state {
        for table in state
            .tables
            .values()
            .filter(|t| t.schema.column_with_name(CUSTOMER_ID).is_some())
        {
            batches.extend(table.segments.iter().flat_map(|s| s.rows.batches().cloned()));
        }
    }
    // The last evaluation's outputs: the next batch splices its fresh rows into them.
    if let Some(evaluated) = &session.evaluated {
        for run in evaluated
            .runs
            .values()
            .filter(|r| r.schema.column_with_name(CUSTOMER_ID).is_some())
        {
            batches.extend(run.output.batches().cloned());
        }
    }
    let numbering = session.numbering.clone();
    let published = session.published.take();
    session.published = tokio::task::spawn_blocking(move || {
        numbering.customers_in(&batches);
        published.map(|mut base| {
            base.join_view(&numbering);
            base
        })
    })
    .await
    .expect("numbering does not panic");
}

/// One batch: what it needs to know.
pub(super) struct Batch<'a> {
    pub settings: &'a Settings,
    pub project: &'a Project,
    pub landing: &'a Location,
    pub warehouse: &'a Location,
    pub run_id: &'a str,
    pub started_at: DateTime<Utc>,
    pub as_of: DateTime<Utc>,
    /// Why this batch must recompute from every landing file, if it must.
    pub full: Option<&'static str>,
    /// Where a full evaluation runs its jobs (`run`'s engine; `follow` stays embedded).
    pub cluster: Option<&'a Cluster>,
}

/// The published side of a batch: the base of its publish and the last publish's snapshot,
/// the baseline of the drift gates.
struct PublishedBase {
    base: TagsBase,
    baseline: Option<Snapshot>,
}

/// The landing files a batch reads, and their events, de-duplicated against the state.
struct NewInput {
    /// Why every landing file is read, for a full batch.
    full_because: Option<String>,
    files: Vec<LandingFile>,
    /// When each file was first ingested (a rebuild judges a file by its first ingest).
    ingest_times: Vec<DateTime<Utc>>,
    /// De-duplication ids read from the state for the days the events fall on.
    seen_ids_loaded: usize,
    data: LandingData,
    /// The files are read on the cluster (a full rebuild there): `data` holds no events yet.
    on_cluster: bool,
}

/// The new landing files, listed and decoded, before de-duplication.
struct NewFiles {
    /// Per stream, names the listing skipped.
    ignored: BTreeMap<String, usize>,
    files: Vec<LandingFile>,
    ingest_times: Vec<DateTime<Utc>>,
    /// `None`: the files are left to the cluster to read.
    decoded: Option<Decoded>,
}

/// What the commit-and-publish step landed, with the figures counted beside it.
struct Landed {
    published: Published,
    /// The state versions before and after the commit.
    from_version: u64,
    state_version: u64,
    /// Events held in the state for a later as-of.
    held_events: usize,
    customers: usize,
    tags: Vec<TagReport>,
    commit_ms: u64,
    publish_ms: u64,
    published_at: DateTime<Utc>,
}

impl Batch<'_> {
    /// Read the new landing files, fold them into the state, evaluate the tags, commit the
    /// state and publish. `session` holds what is in memory already (the rest is loaded).
    /// With `may_skip`, a batch with nothing to change (no new file, no held event due,
    /// same day) publishes nothing and returns `None`.
    pub(super) async fn run(&self, session: &mut Session, may_skip: bool) -> Result<Option<RunReport>, Error> {
        hold::point("batch").await;
        let started = Instant::now();
        // Two independent lines of work run side by side: the state and the new input, and
        // the published tags with their last publish.
        let published = self
            .open_published(session.published.take())
            .instrument(info_span!("open_published"));
        let read = self.read_new_input(&mut session.state, may_skip);
        let (read, published) = tokio::join!(read, published);
        let PublishedBase { base, baseline } = published?;
        let Some(mut input) = read? else {
            session.published = Some(base);
            return Ok(None);
        };
        let state = session.state.as_mut().expect("the read sets the state");
        // The last evaluation serves an incremental batch of the whole catalog at its day.
        let day = self.as_of.timestamp().div_euclid(86_400);
        let last = session
            .evaluated
            .take()
            .filter(|last| last.day == day && input.full_because.is_none() && self.settings.jobs.is_empty());
        let mut stages_ms = BTreeMap::from([("read".to_string(), started.elapsed().as_millis() as u64)]);

        let cluster = self
            .cluster_for(input.full_because.is_some())
            .map(|cluster| Arc::new(ClusterRun::new(cluster, self.warehouse, self.run_id)));
        let folded = match (&cluster, input.on_cluster) {
            (Some(run), true) => {
                let (rebuilt, ms) = timed(self.rebuild_on(run, state, &mut input)).await;
                stages_ms.insert("rebuild_state".to_string(), ms);
                Some(rebuilt?)
            }
            _ => None,
        };
        let evaluated = evaluate_at(
            self.project,
            state,
            std::mem::take(&mut input.data.events),
            &mut input.data.stats,
            Evaluation {
                as_of: self.as_of,
                baseline: baseline.as_ref().map(|s| Baseline {
                    version: s.version,
                    segments: &s.segments,
                    definitions: &s.definitions,
                }),
                force: self.settings.force,
                previous: last.as_ref().map(|l| &l.runs),
                numbering: Some(session.numbering.clone()),
                cluster: cluster.clone(),
                folded,
            },
        )
        .await;
        if let Some(run) = &cluster {
            run.remove().await;
        }
        let evaluated = evaluated?;
        for (file, at) in input.files.iter().zip(&input.ingest_times) {
            state.record_file(&file.relative, *at);
        }
        let previous = baseline.map(|s| s.definitions).unwrap_or_default();
        let (landed, next_base) = self
            .commit_and_publish(state, &evaluated.output, base, previous, &session.numbering)
            .await?;
        session.published = Some(next_base);
        if input.on_cluster {
            // Its tables are files the executors wrote, not rows in memory: a later batch
            // of this process loads the committed state instead.
            session.state = None;
        }
        session.evaluated = Some(LastEvaluation {
            day,
            runs: evaluated
                .output
                .runs
                .iter()
                .map(|r| (r.job.name.clone(), r.clone()))
                .collect(),
        });
        let compaction = self.compact_if_due(&landed.published, &mut stages_ms).await?;
        if last.is_none() && session.number_ahead {
            let ((), ms) = timed(number_ahead(session).instrument(info_span!("number_ahead"))).await;
            stages_ms.insert("number_ahead".to_string(), ms);
        }
        stages_ms.extend(evaluated.stages_ms.clone());
        stages_ms.insert("commit_state".to_string(), landed.commit_ms);
        stages_ms.insert("publish".to_string(), landed.publish_ms);
        Ok(Some(
            self.report(started, input, evaluated, landed, compaction, stages_ms),
        ))
    }

    /// Rebuild the state on the cluster from every landing file (a full batch there): the
    /// state adopts the files the executors wrote, the read's counts and quarantine entries
    /// join `input`'s; returns the state jobs' runs.
    async fn rebuild_on(
        &self,
        run: &ClusterRun,
        state: &mut State,
        input: &mut NewInput,
    ) -> Result<Vec<StateRun>, Error> {
        let rebuilt = run
            .rebuild_state(
                &self.project.catalog,
                ReadInput {
                    streams: &self.project.schemas.streams,
                    landing: self.landing,
                    files: &input.files,
                    ingest_times: &input.ingest_times,
                    as_of: self.as_of,
                },
                state.next_version(),
            )
            .instrument(info_span!("rebuild_state"))
            .await;
        let rebuilt = match rebuilt {
            Ok(rebuilt) => rebuilt,
            Err(error) => {
                run.remove().await;
                return Err(error.into());
            }
        };
        for (stream, stats) in rebuilt.stats {
            input.data.stats.entry(stream).or_default().add(&stats);
        }
        input.data.quarantined.extend(rebuilt.quarantined);
        state.adopt(rebuilt.written);
        Ok(rebuilt.runs)
    }

    /// Open (or, in a session, refresh) the published tags and find the last publish.
    async fn open_published(&self, kept: Option<TagsBase>) -> Result<PublishedBase, Error> {
        let table_settings = self.settings.compaction.table_settings();
        let base = match kept {
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
        Ok(PublishedBase { base, baseline })
    }

    /// The cluster this batch's jobs run on: `run`'s engine, for a full evaluation (an
    /// incremental one follows what changed, in this process).
    fn cluster_for(&self, full: bool) -> Option<&Cluster> {
        self.cluster.filter(|_| full)
    }

    /// Why this batch must read every landing file, given the state in memory (if any):
    /// asked for, no state yet, changed state jobs, or an as-of before the state's.
    fn full_because(&self, state: Option<&State>, fingerprint: &str) -> Option<String> {
        match state {
            _ if self.full.is_some() => self.full.map(String::from),
            None => Some("no state yet".to_string()),
            Some(s) if s.fingerprint != fingerprint => Some("the state jobs or their parameters changed".to_string()),
            Some(s) if s.as_of.is_some_and(|t| self.as_of < t) => Some(format!(
                "as-of is before the state's as-of {}",
                s.as_of.expect("checked").to_rfc3339()
            )),
            Some(_) => None,
        }
    }

    /// Choose the mode and read the new input into the state in `slot` (loaded if empty):
    /// the state's tables load while the landing zone is listed and the new files are read,
    /// then the events are de-duplicated. `None`: `may_skip` and nothing to change.
    async fn read_new_input(&self, slot: &mut Option<State>, may_skip: bool) -> Result<Option<NewInput>, Error> {
        let fingerprint = self.project.catalog.state_fingerprint();
        // Until its tables are loaded too, a state loaded here is only its head: a batch
        // that fails or skips before then must not leave it in the session.
        let mut tables_to_load = false;
        if slot.is_none() {
            *slot = State::load_head(self.warehouse)
                .instrument(info_span!("load_state"))
                .await?;
            tables_to_load = slot.is_some();
        }
        let full_because = self.full_because(slot.as_ref(), &fingerprint);
        let state = slot.get_or_insert_with(|| State::empty(&fingerprint));
        if let Some(why) = &full_because {
            info!(because = %why, "full run: every landing file is read");
            state.reset(&fingerprint);
            tables_to_load = false;
        }
        let head: &State = state;
        let may_skip = may_skip && !tables_to_load && full_because.is_none();
        let new_files = self.read_new_files(head, full_because.is_some(), may_skip);
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
        let Some(new_files) = new_files else {
            return Ok(None);
        };
        let state = slot.as_mut().expect("set above");
        if let Some(tables) = tables {
            state.tables = tables;
        }
        let on_cluster = new_files.decoded.is_none();
        let (seen_ids_loaded, mut data) = match new_files.decoded {
            Some(decoded) => {
                let loaded = state
                    .load_days(self.warehouse, &decoded.days())
                    .instrument(info_span!("load_seen"))
                    .await?;
                (loaded, decoded.deduplicate(&mut state.seen))
            }
            None => (0, LandingData::default()),
        };
        for (stream, ignored) in new_files.ignored {
            data.stats.entry(stream).or_default().files_ignored = ignored;
        }
        Ok(Some(NewInput {
            full_because,
            files: new_files.files,
            ingest_times: new_files.ingest_times,
            seen_ids_loaded,
            data,
            on_cluster,
        }))
    }

    /// List the landing zone and decode the files `head` has not processed (every file when
    /// `full`). `None`: `may_skip` and nothing new, no held event due and the same day.
    async fn read_new_files(&self, head: &State, full: bool, may_skip: bool) -> Result<Option<NewFiles>, Error> {
        let listing = sources::list_files(self.landing, &self.project.schemas)
            .instrument(info_span!("list"))
            .await?;
        let files: Vec<LandingFile> = match full {
            true => listing.files,
            false => listing
                .files
                .into_iter()
                .filter(|f| !head.files.contains_key(&f.relative))
                .collect(),
        };
        let same_day = head.as_of.is_some_and(|t| t.date_naive() == self.as_of.date_naive());
        let held_due = head.pending.values().flatten().any(|b| sources::any_due(b, self.as_of));
        if may_skip && files.is_empty() && same_day && !held_due {
            return Ok(None);
        }
        // A file is ingested once: a rebuild judges it against its first ingest time.
        let ingest_times: Vec<DateTime<Utc>> = files
            .iter()
            .map(|f| head.files.get(&f.relative).copied().unwrap_or(self.started_at))
            .collect();
        let decoded = match self.cluster_for(full) {
            Some(_) => None,
            None => Some(
                sources::read_files(
                    self.landing,
                    self.warehouse,
                    &self.project.schemas,
                    &files,
                    &ingest_times,
                    self.settings.read_concurrency,
                    self.settings.progress,
                )
                .instrument(info_span!("read"))
                .await?,
            ),
        };
        Ok(Some(NewFiles {
            ignored: listing.ignored,
            files,
            ingest_times,
            decoded,
        }))
    }

    /// Commit the state and publish `customer_tags` side by side (see the module head for
    /// why either may land without the other; the publish names the state version), while
    /// the report's per-tag figures are counted off the runtime's threads.
    async fn commit_and_publish(
        &self,
        state: &mut State,
        output: &JobOutput,
        base: TagsBase,
        previous: Definitions,
        numbering: &Arc<Numbering>,
    ) -> Result<(Landed, TagsBase), Error> {
        let (settings, as_of) = (self.settings, self.as_of);
        let seen_from_day = (as_of.timestamp().div_euclid(86_400) - i64::from(settings.dedup_days) + 1) as i32;
        let (from_version, state_version) = (state.version, state.next_version());
        let held_events = state.pending_events();
        let commit = timed(
            state
                .commit(self.warehouse, self.run_id, as_of, seen_from_day)
                .instrument(info_span!("commit_state")),
        );
        // A partial run (`--jobs`) replaces only its tags' rows.
        let partial = !settings.jobs.is_empty();
        let scope = partial.then(|| self.project.catalog.tags().map(|j| j.name.clone()).collect());
        // The definitions of the rows this version holds: the evaluated tags' own, and, in
        // a partial run, which keeps other tags' rows, theirs from the version before.
        let mut definitions = if partial { previous } else { Definitions::new() };
        definitions.extend(self.project.catalog.definitions());
        let metadata = json!({
            "tagflow.run_id": self.run_id,
            "tagflow.state_version": state_version,
            META_DEFINITIONS: definitions,
        });
        let (rows, narrowed) = publish_rows(&output.runs, numbering, as_of);
        let update_metadata = metadata.as_object().cloned().unwrap_or_default();
        let update = TagsUpdate {
            rows,
            scope,
            as_of,
            metadata: update_metadata.clone(),
            narrowed,
            policy: settings.merge.clone(),
            compaction: Some(settings.compaction.clone()),
        };
        let table_settings = settings.compaction.table_settings();
        let publish =
            timed(publish_tags(self.warehouse, base, update, &table_settings).instrument(info_span!("publish")));
        let tag_runs: Vec<JobRun> = output
            .runs
            .iter()
            .filter(|r| r.job.kind == JobKind::Tag)
            .cloned()
            .collect();
        // A whole-catalog publish counts the customers of its new version, which are the
        // tagged ones; a partial one keeps other tags' rows, so they are counted here.
        let tag_figures = tokio::task::spawn_blocking(move || {
            let reports: Vec<TagReport> = tag_runs.iter().map(tag_report).collect();
            (partial.then(|| tagged_customers(&tag_runs)), reports)
        });
        let measures =
            publish::measures::replace_published_measures(self.warehouse, &output.runs, as_of, &update_metadata)
                .instrument(info_span!("publish_measures"));
        let ((committed, commit_ms), (published, publish_ms), tag_figures, measures) =
            tokio::join!(commit, publish, tag_figures, measures);
        let (customers, tags) = tag_figures.expect("counting tag figures does not panic");
        let published_at = Utc::now();
        committed?;
        let (published, next_base) = published?;
        for table in measures? {
            info!(table = %table.table, version = table.version, rows = table.rows, "published a measure");
        }
        let customers = customers
            .or(published.customers)
            .expect("a publish of customer_tags counts its customers");
        info!(
            version = published.version,
            rows = published.rows,
            rows_written = published.rows_written,
            changes = published.changes.map(|c| c.total()),
            "published"
        );
        let landed = Landed {
            published,
            from_version,
            state_version,
            held_events,
            customers,
            tags,
            commit_ms,
            publish_ms,
            published_at,
        };
        Ok((landed, next_base))
    }

    /// Compact the tables when the policy says this version is due; its time is a stage.
    async fn compact_if_due(
        &self,
        published: &Published,
        stages_ms: &mut BTreeMap<String, u64>,
    ) -> Result<Option<CompactReport>, Error> {
        let compaction = &self.settings.compaction;
        // Only right after a merge: live changes are on top of the latest version, which a
        // compaction would move.
        if !published.merged || !compaction.due(published.version, published.files) {
            return Ok(None);
        }
        let started = Instant::now();
        let report = compact::compact(self.warehouse, compaction)
            .instrument(info_span!("compact"))
            .await?;
        stages_ms.insert("compact".to_string(), started.elapsed().as_millis() as u64);
        Ok(Some(report))
    }

    /// The run report of a batch that published.
    fn report(
        &self,
        started: Instant,
        input: NewInput,
        evaluated: Evaluated,
        landed: Landed,
        compaction: Option<CompactReport>,
        stages_ms: BTreeMap<String, u64>,
    ) -> RunReport {
        let lags: Vec<u64> = input
            .files
            .iter()
            .map(|f| (landed.published_at - f.appeared_at).num_milliseconds().max(0) as u64)
            .collect();
        let quarantined = input.data.quarantined;
        let quarantine = QuarantineReport {
            location: Quarantine::new(self.warehouse).url(),
            files: quarantined.iter().filter(|e| e.kind == EntryKind::File).count(),
            rows: quarantined
                .iter()
                .filter(|e| e.kind == EntryKind::Rows)
                .map(|e| e.rows)
                .sum(),
            entries: quarantined,
        };
        let state_tables = evaluated.state_runs.iter().map(|r| {
            let report = StateTableReport {
                new_rows: r.new_rows,
                rows_rewritten: r.rows_rewritten,
                rows: r.rows,
                duration_ms: r.duration.as_millis() as u64,
            };
            (r.job.clone(), report)
        });
        let measures = evaluated.output.runs.iter().filter(|r| r.job.kind == JobKind::Measure);
        RunReport {
            run_id: self.run_id.to_string(),
            as_of: self.as_of,
            started_at: self.started_at,
            duration_ms: started.elapsed().as_millis() as u64,
            landing: self.landing.url.to_string(),
            warehouse: self.warehouse.url.to_string(),
            mode: match input.full_because {
                Some(_) => Mode::Full,
                None => Mode::Incremental,
            },
            engine: self
                .cluster_for(input.full_because.is_some())
                .map_or_else(|| "embedded".to_string(), |c| c.url.clone()),
            full_because: input.full_because,
            streams: input.data.stats,
            state: StateReport {
                from_version: landed.from_version,
                version: landed.state_version,
                tables: state_tables.collect(),
                held_events: landed.held_events,
                seen_ids_loaded: input.seen_ids_loaded,
            },
            freshness: Freshness::of(lags),
            quarantine,
            customers: landed.customers,
            tags: landed.tags,
            measures: measures
                .map(|r| MeasureReport {
                    measure: r.job.name.clone(),
                    rows: r.rows,
                    duration_ms: r.duration.as_millis() as u64,
                    evaluated_customers: r.evaluated_for.as_ref().map(|c| c.len()),
                    status: measure_status(r),
                })
                .collect(),
            stages_ms,
            gates: evaluated.gates,
            published: landed.published,
            compaction,
        }
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

/// How [`evaluate_at`] evaluates: at what time, against what, and from what.
pub(crate) struct Evaluation<'a> {
    pub as_of: DateTime<Utc>,
    /// What the drift gates compare with (see [`Baseline`]).
    pub baseline: Option<Baseline<'a>>,
    /// Publish although declared checks fail.
    pub force: bool,
    /// The last evaluation's outputs, made at the same as-of day from the state before
    /// this fold: jobs are then evaluated for the customers whose state rows changed where
    /// they can be (their rows are numbered by `numbering`, which reuse needs too).
    pub previous: Option<&'a BTreeMap<String, JobRun>>,
    /// A `follow` session's numbering of customers, kept across its batches.
    pub numbering: Option<Arc<Numbering>>,
    /// Run the jobs on this cluster (a full evaluation's; see [`run_jobs`]). The caller
    /// removes what the run staged.
    pub cluster: Option<Arc<ClusterRun>>,
    /// The state was built already (on the cluster, which wrote its tables): these are its
    /// state jobs' runs, and there is nothing to fold.
    pub folded: Option<Vec<StateRun>>,
}

/// Evaluate the tags as `how` says: the events that count now (`new_events` and held ones
/// whose time has come; later ones are held in `state.pending`) are folded into the state
/// tables, the measure and tag jobs run, and the quality gates are checked. A failed gate
/// is an error unless forced; the state in memory is then already folded, so a caller that
/// stops must drop it (nothing of it is committed).
pub(crate) async fn evaluate_at(
    project: &Project,
    state: &mut State,
    new_events: BTreeMap<String, Vec<RecordBatch>>,
    stats: &mut BTreeMap<String, StreamStats>,
    how: Evaluation<'_>,
) -> Result<Evaluated, Error> {
    let Evaluation {
        as_of,
        baseline,
        force,
        previous,
        numbering,
        cluster,
        folded,
    } = how;
    let mut steps = Steps::start();
    let state_runs = match folded {
        Some(runs) => runs,
        None => {
            let runs = fold_new_events(project, state, new_events, stats, as_of, numbering.as_ref())
                .instrument(info_span!("fold_state"))
                .await?;
            steps.done("fold_state");
            runs
        }
    };
    let catalog = &project.catalog;
    // Every state table must say whose rows it changed for any reuse to be exact.
    let changed: Option<CustomerBits> = state_runs.iter().try_fold(CustomerBits::default(), |mut all, run| {
        all.add(run.changed_customers.as_ref()?);
        Some(all)
    });
    let unchanged = state_runs
        .iter()
        .filter(|run| run.changed_customers.as_ref().is_some_and(|c| c.is_empty()))
        .map(|run| run.job.clone())
        .collect();
    let reuse = match (previous, changed, numbering) {
        (Some(previous), Some(changed), Some(numbering)) => Some(Reuse {
            previous,
            changed: Arc::new(changed),
            unchanged,
            numbering,
        }),
        _ => None,
    };
    let output = run_jobs(catalog, &state.tables, as_of, reuse, cluster)
        .instrument(info_span!("jobs"))
        .await?;
    steps.done("jobs");
    // Quality gates: a failure publishes nothing and commits no state (the next run reads
    // the same files again), unless forced.
    let definitions = catalog.definitions();
    let mut gates = info_span!("gates").in_scope(|| evaluate_checks(&output.runs, baseline, &definitions));
    for observed in &gates.observed {
        warn!(%observed, "the data moved a tag beyond its drift rule (definition unchanged): published, reported");
    }
    steps.done("gates");
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
        stages_ms: steps.ms,
    })
}

/// Fold the events that count at `as_of` (`new_events` and held ones whose time has come;
/// later ones are held in `state.pending`) into the state tables, counting them in `stats`.
async fn fold_new_events(
    project: &Project,
    state: &mut State,
    mut new_events: BTreeMap<String, Vec<RecordBatch>>,
    stats: &mut BTreeMap<String, StreamStats>,
    as_of: DateTime<Utc>,
    numbering: Option<&Arc<Numbering>>,
) -> Result<Vec<StateRun>, Error> {
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
    let (tables, state_runs) = fold_state(&project.catalog, &state.tables, &counted, as_of, numbering).await?;
    state.tables = tables;
    Ok(state_runs)
}

/// The rows a batch publishes: of a micro-batch, every row of the tags evaluated for
/// everyone and, of the others, the rows of the customers they were evaluated for (the
/// narrowing says so); else every row.
fn publish_rows(
    runs: &[JobRun],
    numbering: &Arc<Numbering>,
    as_of: DateTime<Utc>,
) -> (Vec<RecordBatch>, Option<Narrowed>) {
    let tag_runs: Vec<&JobRun> = runs.iter().filter(|r| r.job.kind == JobKind::Tag).collect();
    let mut evaluated_for: Vec<&Arc<CustomerBits>> = Vec::new();
    for set in tag_runs.iter().filter_map(|r| r.evaluated_for.as_ref()) {
        if !evaluated_for.iter().any(|s| Arc::ptr_eq(s, set)) {
            evaluated_for.push(set);
        }
    }
    if evaluated_for.is_empty() {
        return (publish::assemble(runs, as_of), None);
    }
    let mut customers = CustomerBits::default();
    for set in evaluated_for {
        customers.add(set);
    }
    let narrowed_runs: Vec<JobRun> = tag_runs
        .iter()
        .map(|r| match r.evaluated_for {
            None => (*r).clone(),
            Some(_) => JobRun {
                output: MaskedRows::from_batches(numbering.select_masked(&r.output, &customers)),
                ..(*r).clone()
            },
        })
        .collect();
    let narrowed = Narrowed {
        whole: tag_runs
            .iter()
            .filter(|r| r.evaluated_for.is_none())
            .map(|r| r.job.name.clone())
            .collect(),
        customers,
        numbering: numbering.clone(),
        segments: tag_runs
            .iter()
            .map(|r| (r.job.name.clone(), r.values.clone()))
            .collect(),
    };
    (publish::assemble(&narrowed_runs, as_of), Some(narrowed))
}

/// The `status` of a measure of one row that has a text column of that name.
fn measure_status(run: &JobRun) -> Option<String> {
    let batches = run.output.to_batches();
    let batch = batches.iter().find(|b| b.num_rows() > 0).filter(|_| run.rows == 1)?;
    let status = batch.column_by_name("status")?.as_any().downcast_ref::<StringArray>()?;
    status.is_valid(0).then(|| status.value(0).to_string())
}

fn tag_report(run: &JobRun) -> TagReport {
    TagReport {
        tag: run.job.name.clone(),
        family: run.job.family.clone().unwrap_or_default(),
        rows: run.rows,
        values: run.values.clone(),
        duration_ms: run.duration.as_millis() as u64,
        evaluated_customers: run.evaluated_for.as_ref().map(|c| c.len()),
    }
}

/// Distinct customers in the rows of the tag runs among `runs`.
fn tagged_customers(runs: &[JobRun]) -> usize {
    let batches: Vec<RecordBatch> = runs
        .iter()
        .filter(|r| r.job.kind == JobKind::Tag)
        .flat_map(|r| r.output.to_batches())
        .collect();
    let mut customers: HashSet<&str> = HashSet::new();
    for batch in &batches {
        let ids = batch
            .column(0)
            .as_any()
            .downcast_ref::<StringArray>()
            .expect("normalised id");
        customers.extend(ids.iter().flatten());
    }
    customers.len()
}
