//! Preparing a command: check that the locations answer, load the schemas and the job
//! catalog, apply parameter overrides and plan every job, before anything is read or
//! written.
//!
//! Owns: what makes a project ready to run, and the settings checks that need the catalog
//! (the de-duplication memory against what state jobs keep). Must not: read landing files
//! or touch the warehouse.

use tracing::{info_span, Instrument};

use crate::app::error::Error;
use crate::config::{ConfigError, Settings};
use crate::jobs::Catalog;
use crate::sources::schema::Schemas;
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

/// Check that the cluster the settings name (if any) answers, before anything is read: an
/// unreachable scheduler is reported with its URL.
pub async fn check_cluster(settings: &Settings) -> Result<(), Error> {
    if let Some(cluster) = settings.cluster() {
        cluster
            .check()
            .instrument(info_span!("check_cluster", url = %cluster.url))
            .await
            .map_err(crate::jobs::JobError::from)?;
    }
    Ok(())
}
