//! `follow`: a batch on every interval, with the state and the published base kept in memory
//! between batches, under one warehouse lock for the whole session, until stopped.
//!
//! Owns: the session loop: scheduled full recomputes (`[follow] full_cron`), skipping
//! batches with nothing to change, retrying failed batches, and stopping. Must not: do a
//! batch's work (see [`super::batch`]).

use std::time::Instant;

use chrono::{DateTime, Utc};
use tracing::{info, info_span, warn, Instrument};

use super::batch::{Batch, Session};
use super::prepare::{check_locations, prepare};
use super::run::{record, release};
use crate::app::error::{exit, Error};
use crate::app::metrics::FollowMetrics;
use crate::app::report::RunReport;
use crate::config::Settings;
use crate::publish::runs::Summary;
use crate::storage::lock::RunLock;

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
    let mut session = Session::following();
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
            // Micro-batches follow what changed; a session's full recomputes stay embedded too
            // (a session keeps its state in memory between batches).
            cluster: None,
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
                session = Session::following();
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
    // A merge still writing in the background is waited for and marked covered: the next
    // reader finds its version whole (a killed session leaves that to the next opening).
    if let Some(base) = session.published.take() {
        let table_settings = settings.compaction.table_settings();
        if let Err(error) = base.finish(warehouse, &table_settings).await {
            warn!(%error, "the background merge did not finish; the next batch or run writes its version");
        }
    }
    release(lock).await;
    info!(batches = published, "follow stopped");
    outcome
}

/// Consecutive failed batches after which `follow` gives up.
const MAX_FOLLOW_FAILURES: u32 = 5;

/// Failures a later batch may not meet again (storage hiccups, a job failing on data that a
/// new file may fix); configuration and lock errors end a follow session at once.
fn retryable(error: &Error) -> bool {
    !matches!(error.exit_code(), exit::CONFIG | exit::LOCKED)
}
