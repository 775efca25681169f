//! Preview of a definition change: evaluate a new or edited tag (or measure) definition
//! against the committed state, at the state's as-of time (the time the live snapshot was
//! evaluated at), and compare each affected tag with its live rows: per value, how many
//! customers would enter, exit and stay, with a sample of each, and whether the tag's
//! quality checks would pass.
//!
//! A measure's preview shows the tags that read it; a tag's shows it and the tags that
//! read it (`marketing_blacklist` reads the risk tags). State jobs cannot be previewed:
//! their change needs a rebuild from the landing zone (`run --full`).
//!
//! Owns: the comparison and its rendering.
//! Must not: write anything (no state, no table, no run record).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write;
use std::path::Path;

use arrow::array::{Array, StringArray};
use chrono::{DateTime, Utc};
use serde::Serialize;
use tracing::{info_span, Instrument};

use crate::app::error::Error;
use crate::app::prepare::{check_locations, prepare_with};
use crate::config::Settings;
use crate::jobs::{evaluate_checks, run_jobs, Baseline, CatalogError, GateReport, JobKind, JobRun};
use crate::publish::snapshots;
use crate::publish::{query_published, PublishError, TAGS_TABLE};
use crate::state::State;

/// Why a preview cannot be made.
#[derive(Debug, thiserror::Error)]
pub enum PreviewError {
    #[error("{file}: '{job}' is a state job; a change to it needs a rebuild from the landing zone (`tagflow run --full`), which a preview does not do")]
    StateJob { file: String, job: String },
    #[error("nothing to preview against in {warehouse}: no committed state yet (run `tagflow run` first)")]
    NoState { warehouse: String },
    #[error("the state jobs under {dir} differ from the ones the committed state was built with; run `tagflow run` with them first")]
    StateChanged { dir: String },
}

#[derive(Debug, Clone, Serialize)]
pub struct Preview {
    pub file: String,
    pub job: String,
    /// The as-of time both sides are evaluated at (the committed state's).
    pub as_of: DateTime<Utc>,
    pub state_version: u64,
    /// The live `customer_tags` version compared against (none: nothing published yet).
    pub live_version: Option<u64>,
    pub tags: Vec<TagPreview>,
    /// The affected tags' checks on the new rows, with drift against the live snapshot.
    pub gates: GateReport,
}

#[derive(Debug, Clone, Serialize)]
pub struct TagPreview {
    pub tag: String,
    pub customers_before: usize,
    pub customers_after: usize,
    pub values: Vec<ValueFlow>,
}

/// One value of a tag: customers who would enter it, leave it, or keep it.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ValueFlow {
    pub value: String,
    pub before: usize,
    pub after: usize,
    pub enter: usize,
    pub exit: usize,
    pub stay: usize,
    /// Up to `sample` customer ids of each (smallest ids first).
    pub sample_enter: Vec<String>,
    pub sample_exit: Vec<String>,
    pub sample_stay: Vec<String>,
}

/// Preview `file` with `sample` customer ids per flow.
pub async fn preview(settings: &Settings, file: &Path, sample: usize) -> Result<Preview, Error> {
    let warehouse = settings.warehouse()?;
    check_locations(&[warehouse]).await?;
    let span = info_span!("preview", file = %file.display());
    async {
        let mut project = prepare_with(settings, Some(file)).await?;
        let catalog = &mut project.catalog;
        let job = catalog
            .jobs
            .iter()
            .find(|j| j.file == file)
            .cloned()
            .ok_or_else(|| CatalogError::UnknownJob {
                name: file.display().to_string(),
            })?;
        if job.kind == JobKind::State {
            return Err(PreviewError::StateJob {
                file: file.display().to_string(),
                job: job.name,
            }
            .into());
        }
        let state = State::load(warehouse)
            .instrument(info_span!("load_state"))
            .await?
            .ok_or_else(|| PreviewError::NoState {
                warehouse: warehouse.url.to_string(),
            })?;
        if state.fingerprint != catalog.state_fingerprint() {
            return Err(PreviewError::StateChanged {
                dir: settings.sql_dir.display().to_string(),
            }
            .into());
        }
        // The job and every job that reads it, directly or not (in run order).
        let mut affected: BTreeSet<String> = BTreeSet::from([job.name.clone()]);
        for j in &catalog.jobs {
            if j.reads().any(|r| affected.contains(r)) {
                affected.insert(j.name.clone());
            }
        }
        catalog.select(&affected.iter().cloned().collect::<Vec<_>>())?;
        let as_of = state.as_of.unwrap_or(settings.as_of);
        let output = run_jobs(catalog, &state.tables, as_of, None, None)
            .instrument(info_span!("jobs"))
            .await?;
        let tags: Vec<&JobRun> = output
            .runs
            .iter()
            .filter(|r| r.job.kind == JobKind::Tag && affected.contains(&r.job.name))
            .collect();

        let live = snapshots::latest_publish(warehouse).await?;
        let before = match &live {
            Some(_) => live_values(warehouse, tags.iter().map(|r| r.job.name.as_str())).await?,
            None => HashMap::new(),
        };
        let empty = HashMap::new();
        let previews = tags
            .iter()
            .map(|run| compare(run, before.get(&run.job.name).unwrap_or(&empty), sample))
            .collect();
        // A changed definition is judged against the live one; a tag whose definition is
        // the live one's only reports how the data moved it, as a run would.
        let baseline = live.as_ref().map(|s| Baseline {
            version: s.version,
            segments: &s.segments,
            definitions: &s.definitions,
        });
        let gates = evaluate_checks(tags.iter().copied(), baseline, &catalog.definitions());
        Ok(Preview {
            file: file.display().to_string(),
            job: job.name,
            as_of,
            state_version: state.version,
            live_version: live.map(|s| s.version),
            tags: previews,
            gates,
        })
    }
    .instrument(span)
    .await
}

/// Live value per customer, per tag.
async fn live_values<'a>(
    warehouse: &crate::storage::Location,
    tags: impl Iterator<Item = &'a str>,
) -> Result<HashMap<String, HashMap<String, String>>, PublishError> {
    let list: Vec<String> = tags.map(|t| format!("'{}'", t.replace('\'', "''"))).collect();
    let sql = format!(
        "SELECT tag, customer_id, value FROM {TAGS_TABLE} WHERE tag IN ({})",
        list.join(", ")
    );
    let mut out: HashMap<String, HashMap<String, String>> = HashMap::new();
    for batch in query_published(warehouse, TAGS_TABLE, None, &sql).await? {
        let column = |i: usize| batch.column(i).as_any().downcast_ref::<StringArray>().expect("utf8");
        let (tags, ids, values) = (column(0), column(1), column(2));
        for i in 0..batch.num_rows() {
            out.entry(tags.value(i).to_string())
                .or_default()
                .insert(ids.value(i).to_string(), values.value(i).to_string());
        }
    }
    Ok(out)
}

/// A tag's new rows against its live values.
fn compare(run: &JobRun, before: &HashMap<String, String>, sample: usize) -> TagPreview {
    let mut after: HashMap<String, String> = HashMap::new();
    for batch in &run.output.to_batches() {
        let column = |i: usize| {
            batch
                .column(i)
                .as_any()
                .downcast_ref::<StringArray>()
                .expect("normalised")
        };
        let (ids, values) = (column(0), column(1));
        for i in 0..batch.num_rows() {
            after.insert(ids.value(i).to_string(), values.value(i).to_string());
        }
    }
    // Per value: the customers entering, exiting and staying (sorted, for stable samples).
    let mut flows: BTreeMap<&str, [BTreeSet<&str>; 3]> = BTreeMap::new();
    for (customer, value) in &after {
        let kind = match before.get(customer) {
            Some(old) if old == value => 2,
            _ => 0,
        };
        flows.entry(value.as_str()).or_default()[kind].insert(customer.as_str());
    }
    for (customer, value) in before {
        if after.get(customer) != Some(value) {
            flows.entry(value.as_str()).or_default()[1].insert(customer.as_str());
        }
    }
    let take = |set: &BTreeSet<&str>| set.iter().take(sample).map(|s| s.to_string()).collect();
    let values = flows
        .into_iter()
        .map(|(value, [enter, exit, stay])| ValueFlow {
            value: value.to_string(),
            before: exit.len() + stay.len(),
            after: enter.len() + stay.len(),
            enter: enter.len(),
            exit: exit.len(),
            stay: stay.len(),
            sample_enter: take(&enter),
            sample_exit: take(&exit),
            sample_stay: take(&stay),
        })
        .collect();
    TagPreview {
        tag: run.job.name.clone(),
        customers_before: before.len(),
        customers_after: after.len(),
        values,
    }
}

impl Preview {
    /// A human-readable preview.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let w = &mut out;
        let live = self.live_version.map_or("nothing published yet".to_string(), |v| {
            format!("customer_tags version {v}")
        });
        let _ = writeln!(
            w,
            "preview of {} ({}) as of {}: state version {}, against {live}; nothing is written",
            self.job,
            self.file,
            self.as_of.to_rfc3339(),
            self.state_version
        );
        for tag in &self.tags {
            let _ = writeln!(
                w,
                "\n{}: {} customers -> {}",
                tag.tag, tag.customers_before, tag.customers_after
            );
            let _ = writeln!(
                w,
                "  {:<24} {:>8} {:>8} {:>8} {:>8} {:>8}",
                "value", "before", "after", "enter", "exit", "stay"
            );
            for v in &tag.values {
                let _ = writeln!(
                    w,
                    "  {:<24} {:>8} {:>8} {:>8} {:>8} {:>8}",
                    v.value, v.before, v.after, v.enter, v.exit, v.stay
                );
                for (label, sample) in [
                    ("enter", &v.sample_enter),
                    ("exit", &v.sample_exit),
                    ("stay", &v.sample_stay),
                ] {
                    if !sample.is_empty() {
                        let _ = writeln!(w, "      {label:<5} e.g. {}", sample.join(", "));
                    }
                }
            }
        }
        let _ = writeln!(
            w,
            "\nquality checks: {} evaluated, {}",
            self.gates.checks,
            match self.gates.failures.len() {
                0 => "all would pass".to_string(),
                n => format!("{n} would FAIL (a run would not publish without --force)"),
            }
        );
        for failure in &self.gates.failures {
            let _ = writeln!(w, "  {failure}");
        }
        out
    }
}
