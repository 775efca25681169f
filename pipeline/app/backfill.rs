//! Backfills: the tags as they stood at the end of each past day of a range, recomputed
//! from every landing file and written to `<warehouse>/customer_tags_history`, one
//! snapshot (partition) per day, in date order.
//!
//! The landing zone is read once; the events are then folded into a state kept in memory,
//! day by day, exactly as `follow` folds them when time passes (events after a day's end
//! are held until a later day reaches them), so day `D` equals a `run --full` as of the
//! end of `D` over the same files. On a cluster the read and each day's fold run there
//! (the state is files the executors wrote, a day's tables folded from the day before's),
//! and this process holds no event. What the landing zone holds now is taken as known then:
//! a backfill restates history with late events included.
//!
//! Each day's quality gates measure drift against the day before (the first day has no
//! baseline); a failing day stops the backfill unless forced, and the days before it stay
//! written.
//!
//! Owns: the series of as-of times and the order they are evaluated in.
//! Must not: touch the live state or `customer_tags`, nor take the run lock (a backfill
//! never changes what is served, so it may run beside `follow`).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use arrow::record_batch::RecordBatch;
use chrono::{DateTime, NaiveDate, TimeDelta, Utc};
use serde::Serialize;
use serde_json::json;
use tracing::{info, info_span, Instrument};

use crate::app::batch::{evaluate_at, Evaluation};
use crate::app::error::Error;
use crate::app::prepare::{check_cluster, check_locations, prepare};
use crate::app::run::record;
use crate::config::{ConfigError, Settings};
use crate::jobs::{Baseline, ClusterRun, Events, GateReport, JobKind, ReadInput, Segments};
use crate::publish;
use crate::publish::history::replace_day;
use crate::publish::runs::Summary;
use crate::publish::tables::HISTORY_TABLE;
use crate::sources::{self, StreamStats};
use crate::state::{State, Written};
use crate::storage::progress::Progress;

/// Which days to backfill.
#[derive(Debug, Clone, Copy)]
pub struct Range {
    pub from: NaiveDate,
    pub to: NaiveDate,
    /// Days between snapshots (1: every day).
    pub every_days: u32,
}

impl Range {
    /// Check the range before anything runs.
    pub fn new(from: NaiveDate, to: NaiveDate, every: std::time::Duration) -> Result<Self, ConfigError> {
        let invalid = |message: String| ConfigError::Invalid {
            key: "backfill",
            message,
        };
        if from > to {
            return Err(invalid(format!("--from {from} is after --to {to}")));
        }
        let secs = every.as_secs();
        if secs == 0 || !secs.is_multiple_of(86_400) || every.subsec_nanos() != 0 {
            return Err(invalid(format!(
                "--every must be a whole number of days (1d, 7d), not {every:?}: a snapshot is a day's end"
            )));
        }
        Ok(Range {
            from,
            to,
            every_days: (secs / 86_400) as u32,
        })
    }

    /// The days, in order.
    pub fn days(&self) -> Vec<NaiveDate> {
        let mut days = Vec::new();
        let mut day = self.from;
        while day <= self.to {
            days.push(day);
            day += TimeDelta::days(i64::from(self.every_days));
        }
        days
    }
}

/// The as-of time of a day's snapshot: the last microsecond of that day (UTC).
pub fn end_of(day: NaiveDate) -> DateTime<Utc> {
    (day + TimeDelta::days(1))
        .and_hms_opt(0, 0, 0)
        .expect("midnight")
        .and_utc()
        - TimeDelta::microseconds(1)
}

#[derive(Debug, Clone, Serialize)]
pub struct BackfillReport {
    pub run_id: String,
    pub table: String,
    pub from: NaiveDate,
    pub to: NaiveDate,
    pub every_days: u32,
    /// Per stream: files read, quarantined, duplicates dropped; `events` counts the events
    /// up to the last day's end.
    pub streams: BTreeMap<String, StreamStats>,
    pub days: Vec<BackfillDay>,
    pub duration_ms: u64,
}

/// One day's snapshot.
#[derive(Debug, Clone, Serialize)]
pub struct BackfillDay {
    pub date: NaiveDate,
    pub as_of: DateTime<Utc>,
    /// The history table's version holding it.
    pub version: u64,
    pub rows: usize,
    /// Rows per tag and value.
    pub segments: Segments,
    pub gates: GateReport,
    pub duration_ms: u64,
}

/// Backfill `range`; `on_day` sees each day once it is written (for progress).
pub async fn backfill(
    settings: &Settings,
    range: Range,
    mut on_day: impl FnMut(&BackfillDay, usize),
) -> Result<BackfillReport, Error> {
    let landing = settings.landing()?;
    let warehouse = settings.warehouse()?;
    check_locations(&[landing, warehouse]).await?;
    check_cluster(settings).await?;
    let run_id = uuid::Uuid::new_v4().to_string();
    let started_at = Utc::now();
    let span = info_span!("backfill", run_id = %run_id, from = %range.from, to = %range.to);
    let mut staged = Vec::new();
    let outcome = run_days(settings, range, &run_id, &mut on_day, &mut staged)
        .instrument(span.clone())
        .await;
    for run in staged {
        run.remove().await;
    }
    let summary = outcome.as_ref().map(|report| {
        let mut summary = Summary {
            published_version: report.days.last().map_or(0, |d| d.version),
            forced: report.days.iter().any(|d| d.gates.forced),
            ..Default::default()
        };
        summary.count_streams(report.streams.values());
        if let Some(last) = report.days.last() {
            summary.jobs = last
                .segments
                .iter()
                .map(|(tag, values)| json!({ "job": tag, "rows": values.values().sum::<u64>() }))
                .collect();
        }
        summary
    });
    let as_of = end_of(range.to);
    record(warehouse, &run_id, as_of, started_at, summary, None)
        .instrument(span)
        .await;
    outcome
}

/// The events a backfill folds day by day.
enum Input {
    /// Read here: folded in this process (the first day takes them all; later days take
    /// the held ones whose time came).
    Local(BTreeMap<String, Vec<RecordBatch>>),
    /// Read on the cluster and staged there: each day's fold runs on it.
    Cluster(Events),
}

/// Evaluate the days in order. Runs on a cluster are pushed to `staged` while their files
/// may still be read, for the caller to remove whatever happens.
async fn run_days(
    settings: &Settings,
    range: Range,
    run_id: &str,
    on_day: &mut impl FnMut(&BackfillDay, usize),
    staged: &mut Vec<Arc<ClusterRun>>,
) -> Result<BackfillReport, Error> {
    let started = Instant::now();
    let (landing, warehouse) = (settings.landing()?, settings.warehouse()?);
    let project = prepare(settings).instrument(info_span!("prepare")).await?;
    let days = range.days();

    // Every landing file, once, judged against the time it appeared.
    let listing = sources::list_files(landing, &project.schemas)
        .instrument(info_span!("list"))
        .await?;
    let appeared: Vec<DateTime<Utc>> = listing.files.iter().map(|f| f.appeared_at).collect();
    let mut state = State::empty(&project.catalog.state_fingerprint());
    let cluster = settings.cluster();
    let (mut input, mut stats) = match cluster {
        Some(cluster) => {
            let run = Arc::new(ClusterRun::new(cluster, warehouse, run_id));
            staged.push(run.clone());
            let read = ReadInput {
                streams: &project.schemas.streams,
                landing,
                files: &listing.files,
                ingest_times: &appeared,
                as_of: end_of(range.to),
            };
            let events = run.read_events(&read, None).instrument(info_span!("read")).await?;
            let stats = events.stats.clone();
            (Input::Cluster(events), stats)
        }
        None => {
            let decoded = sources::read_files(
                landing,
                warehouse,
                &project.schemas,
                &listing.files,
                &appeared,
                settings.read_concurrency,
                settings.progress,
            )
            .instrument(info_span!("read"))
            .await?;
            let mut data = decoded.deduplicate(&mut state.seen);
            (Input::Local(std::mem::take(&mut data.events)), data.stats)
        }
    };
    info!(
        files = listing.files.len(),
        days = days.len(),
        "landing zone read; evaluating the days in order"
    );

    let definitions = project.catalog.definitions();
    let mut previous: Option<(u64, Segments)> = None;
    let mut written = Vec::with_capacity(days.len());
    let progress = Progress::bar(settings.progress, "days", days.len());
    // The day before's run on the cluster (its state tables are the next fold's start).
    let mut day_before: Option<(Arc<ClusterRun>, DateTime<Utc>)> = None;
    for (i, date) in days.iter().copied().enumerate() {
        let day_started = Instant::now();
        let as_of = end_of(date);
        let span = info_span!("day", date = %date, n = i + 1, of = days.len());
        let day_run = cluster.map(|cluster| Arc::new(ClusterRun::new(cluster, warehouse, &format!("{run_id}-{date}"))));
        let (new_events, folded) = match (&mut input, &day_run) {
            (Input::Cluster(events), Some(run)) => {
                staged.push(run.clone());
                let (before, from) = day_before.as_ref().map(|(run, at)| (run.as_ref(), *at)).unzip();
                let (runs, tables) = run
                    .fold_day(&project.catalog, events, before, from, as_of)
                    .instrument(info_span!(parent: &span, "fold_state"))
                    .await?;
                state.adopt(Written {
                    tables,
                    ..Default::default()
                });
                (BTreeMap::new(), Some(runs))
            }
            (Input::Local(events), _) => (std::mem::take(events), None),
            (Input::Cluster(_), None) => unreachable!("a cluster read has a cluster"),
        };
        let evaluated = evaluate_at(
            &project,
            &mut state,
            new_events,
            &mut stats,
            Evaluation {
                as_of,
                // One definition for every day of a backfill: drift between days is the data's.
                baseline: previous.as_ref().map(|(version, segments)| Baseline {
                    version: *version,
                    segments,
                    definitions: &definitions,
                }),
                force: settings.force,
                previous: None,
                numbering: None,
                cluster: day_run.clone(),
                folded,
            },
        )
        .instrument(span.clone())
        .await?;
        let rows = publish::assemble(&evaluated.output.runs, as_of);
        let segments: Segments = evaluated
            .output
            .runs
            .iter()
            .filter(|r| r.job.kind == JobKind::Tag)
            .map(|r| (r.job.name.clone(), r.values.clone()))
            .collect();
        let metadata = json!({
            "tagflow.run_id": run_id,
            "tagflow.as_of": as_of.to_rfc3339(),
            "tagflow.snapshot_date": date.to_string(),
        });
        let published = replace_day(
            warehouse,
            date,
            &rows,
            &settings.compaction.table_settings(),
            metadata.as_object().cloned().unwrap_or_default(),
        )
        .instrument(span)
        .await?;
        let day = BackfillDay {
            date,
            as_of,
            version: published.version,
            rows: published.rows,
            segments,
            gates: evaluated.gates,
            duration_ms: day_started.elapsed().as_millis() as u64,
        };
        info!(date = %date, day = i + 1, of = days.len(), rows = day.rows, version = day.version, "day written");
        progress.inc();
        on_day(&day, days.len());
        previous = Some((day.version, day.segments.clone()));
        written.push(day);
        // The day before's tables are folded into this day's: its staged files go.
        if let Some(run) = day_run {
            if let Some((before, _)) = day_before.replace((run, as_of)) {
                before.remove().await;
                staged.retain(|r| !Arc::ptr_eq(r, &before));
            }
        }
    }
    progress.finish();
    Ok(BackfillReport {
        run_id: run_id.to_string(),
        table: publish::table_url(warehouse, HISTORY_TABLE).to_string(),
        from: range.from,
        to: range.to,
        every_days: range.every_days,
        streams: stats,
        days: written,
        duration_ms: started.elapsed().as_millis() as u64,
    })
}

impl BackfillReport {
    /// A human-readable report.
    pub fn render(&self) -> String {
        let mut out = format!(
            "tagflow backfill {} {} .. {} every {} day(s) into {}\n",
            self.run_id, self.from, self.to, self.every_days, self.table
        );
        for day in &self.days {
            let forced = if day.gates.forced { " (gates forced)" } else { "" };
            out.push_str(&format!(
                "  {}  version {:>4}  {:>8} rows  {:>6} ms{forced}\n",
                day.date, day.version, day.rows, day.duration_ms
            ));
        }
        let files: usize = self.streams.values().map(|s| s.files).sum();
        out.push_str(&format!(
            "  {} days, {files} landing files read once, {} ms\n",
            self.days.len(),
            self.duration_ms
        ));
        out
    }
}
