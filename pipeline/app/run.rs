//! `tagflow run` and `tagflow compact`: one batch, or one compaction, under the warehouse
//! lock, recorded in `job_runs`.
//!
//! Owns: a single run's lifecycle (prepare, lock, batch, release, record). Must not: do a
//! batch's work (see [`super::batch`]) or loop (see [`super::follow`]).

use std::time::Instant;

use chrono::{DateTime, Utc};
use deltalake::DeltaTable;
use tracing::{info_span, warn, Instrument};

use super::batch::{Batch, Session};
use super::prepare::{check_cluster, check_locations, prepare};
use crate::app::error::Error;
use crate::app::report::RunReport;
use crate::config::Settings;
use crate::publish::compact;
use crate::publish::runs::{self, RunRecord, Summary};
use crate::publish::tables::RUNS_TABLE;
use crate::publish::tags::catch_up_feed;
use crate::storage::lock::RunLock;
use crate::storage::Location;

/// Run the pipeline once (a batch under the warehouse lock) and record it in `job_runs`.
pub async fn run(settings: &Settings) -> Result<RunReport, Error> {
    let landing = settings.landing()?;
    let warehouse = settings.warehouse()?;
    check_locations(&[landing, warehouse]).await?;
    check_cluster(settings).await?;
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
            cluster: settings.cluster(),
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
    let (outcome, runs_table) = tokio::join!(outcome, runs::open(warehouse).instrument(span.clone()));
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

/// Release the warehouse lock; a failure is a warning (the outcome stands, and the lock
/// expires after lock_ttl_secs).
pub(super) async fn release(lock: RunLock) {
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
        outcome: outcome.map_err(Error::run_failure),
    };
    if let Err(error) = runs::record(warehouse, &record, opened).await {
        warn!(%error, "cannot record the run in {RUNS_TABLE}");
    }
}
