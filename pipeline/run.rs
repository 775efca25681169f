//! A batch run, end to end: prepare (schemas, catalog, parameters, planning) → read the
//! landing zone → run the tag jobs → publish `customer_tags` → report.
//!
//! Owns: the order of the stages and the run report's numbers.
//! Must not: do any stage's work itself; each stage lives in its own module.

use std::collections::{BTreeMap, HashSet};
use std::time::Instant;

use arrow::array::{Array, StringArray};
use chrono::{DateTime, Utc};
use serde_json::json;
use tracing::{info, info_span, warn, Instrument};

use crate::config::Settings;
use crate::error::Error;
use crate::history::{self, RunRecord};
use crate::jobs::{run_jobs, Catalog, JobKind, JobRun};
use crate::lock::RunLock;
use crate::publish::{self, TAGS_TABLE};
use crate::quarantine::{EntryKind, Quarantine};
use crate::report::{MeasureReport, QuarantineReport, RunReport, TagReport};
use crate::schema::Schemas;
use crate::sources;
use crate::storage::Location;

/// The project files a run needs, loaded and checked.
pub struct Project {
    pub schemas: Schemas,
    pub catalog: Catalog,
}

/// Load schemas and jobs, apply parameter overrides and plan every job. Any error here is
/// reported before anything is read or written.
pub async fn prepare(settings: &Settings) -> Result<Project, Error> {
    let schemas = Schemas::load(&settings.schemas_dir)?;
    let streams: Vec<String> = schemas.streams.keys().cloned().collect();
    let mut catalog = Catalog::load(&settings.sql_dir, &streams)?;
    catalog.apply_overrides(&settings.params)?;
    catalog.validate(&schemas).await?;
    if !settings.jobs.is_empty() {
        catalog.select(&settings.jobs)?;
    }
    Ok(Project { schemas, catalog })
}

/// Run the whole pipeline once and publish a new version of `customer_tags`.
pub async fn run(settings: &Settings) -> Result<RunReport, Error> {
    let landing = settings.landing()?;
    let warehouse = settings.warehouse()?;
    let run_id = uuid::Uuid::new_v4().to_string();
    let as_of = settings.as_of;
    let started_at = Utc::now();
    let span = info_span!("run", run_id = %run_id, as_of = %as_of.to_rfc3339());
    let outcome = run_stages(settings, landing, warehouse, &run_id, started_at)
        .instrument(span.clone())
        .await;
    let record = RunRecord {
        run_id: &run_id,
        as_of,
        started_at,
        outcome: outcome.as_ref(),
    };
    if let Err(error) = history::record(warehouse, &record).instrument(span).await {
        warn!(%error, "cannot record the run in {}", history::RUNS_TABLE);
    }
    outcome
}

async fn run_stages(
    settings: &Settings,
    landing: &Location,
    warehouse: &Location,
    run_id: &str,
    started_at: DateTime<Utc>,
) -> Result<RunReport, Error> {
    let as_of = settings.as_of;
    let started = Instant::now();
    let mut stages_ms = BTreeMap::new();
    let mut stage = |name: &str, since: Instant| {
        stages_ms.insert(name.to_string(), since.elapsed().as_millis() as u64);
        Instant::now()
    };

    let project = prepare(settings).instrument(info_span!("prepare")).await?;
    let mark = stage("prepare", started);

    // One run at a time per warehouse; the lock is released whatever happens next.
    let lock = RunLock::acquire(warehouse, run_id, settings.lock_ttl).await?;
    let locked = async {
        let data = sources::read_landing(
            landing,
            warehouse,
            &project.schemas,
            as_of,
            started_at,
            settings.read_concurrency,
        )
        .instrument(info_span!("read"))
        .await?;
        let mark = stage("read", mark);

        let stream_schemas = project
            .schemas
            .streams
            .iter()
            .map(|(k, s)| (k.clone(), s.arrow_schema()))
            .collect();
        let output = run_jobs(&project.catalog, &data.events, &stream_schemas, as_of)
            .instrument(info_span!("jobs"))
            .await?;
        let data = sources::LandingData {
            events: Default::default(), // the events are no longer needed: free them
            ..data
        };
        let mark = stage("jobs", mark);

        let mut rows = publish::assemble(&output.runs, as_of);
        if !settings.jobs.is_empty() {
            // A partial run: the tags it did not run keep their published rows (and as_of).
            let ran: Vec<&str> = project.catalog.tags().map(|j| j.name.as_str()).collect();
            rows.extend(publish::rows_of_other_tags(warehouse, &ran).await?);
        }
        let metadata = json!({ "tagflow.run_id": run_id, "tagflow.as_of": as_of.to_rfc3339() });
        let published = publish::publish(
            warehouse,
            TAGS_TABLE,
            rows,
            metadata.as_object().cloned().unwrap_or_default(),
        )
        .instrument(info_span!("publish"))
        .await?;
        stage("publish", mark);
        info!(version = published.version, rows = published.rows, "published");
        Ok::<_, Error>((data, output, published))
    }
    .await;
    if let Err(error) = lock.release().await {
        // The run's outcome stands; the lock expires after lock_ttl_secs.
        warn!(%error, "cannot release the warehouse lock");
    }
    let (data, output, published) = locked?;

    let quarantine = QuarantineReport {
        location: Quarantine::new(warehouse).url(),
        files: data.quarantined.iter().filter(|e| e.kind == EntryKind::File).count(),
        rows: data
            .quarantined
            .iter()
            .filter(|e| e.kind == EntryKind::Rows)
            .map(|e| e.rows)
            .sum(),
        entries: data.quarantined,
    };
    Ok(RunReport {
        run_id: run_id.to_string(),
        as_of,
        started_at,
        duration_ms: started.elapsed().as_millis() as u64,
        landing: landing.url.to_string(),
        warehouse: warehouse.url.to_string(),
        streams: data.stats,
        quarantine,
        customers: tagged_customers(&output.runs),
        tags: output
            .runs
            .iter()
            .filter(|r| r.job.kind == JobKind::Tag)
            .map(tag_report)
            .collect(),
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
        published,
    })
}

fn tag_report(run: &JobRun) -> TagReport {
    let mut values: BTreeMap<String, usize> = BTreeMap::new();
    for batch in &run.batches {
        let column = batch
            .column(1)
            .as_any()
            .downcast_ref::<StringArray>()
            .expect("normalised value");
        for value in column.iter().flatten() {
            match values.get_mut(value) {
                Some(count) => *count += 1,
                None => {
                    values.insert(value.to_string(), 1);
                }
            }
        }
    }
    TagReport {
        tag: run.job.name.clone(),
        family: run.job.family.clone().unwrap_or_default(),
        rows: run.rows,
        values,
        duration_ms: run.duration.as_millis() as u64,
    }
}

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
