//! The run report: what a run read, quarantined, computed and published, as text for
//! people and as JSON for schedulers.
//!
//! Owns: the report's fields and rendering. Must not: compute anything it reports.

use std::collections::BTreeMap;
use std::fmt::Write;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::json;

use crate::jobs::GateReport;
use crate::publish::compact::CompactReport;
use crate::publish::{runs, Published};
use crate::sources::quarantine::Entry;
use crate::sources::StreamStats;

#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    pub run_id: String,
    pub as_of: DateTime<Utc>,
    pub started_at: DateTime<Utc>,
    pub duration_ms: u64,
    pub landing: String,
    pub warehouse: String,
    /// `incremental` (new landing files only) or `full` (every landing file).
    pub mode: Mode,
    /// Why a run that could have been incremental was full.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub full_because: Option<String>,
    /// Where the measure and tag jobs ran: `embedded`, or the cluster's `df://host:port`.
    pub engine: String,
    /// Per stream, counts of this run's files (new files only, when incremental).
    pub streams: BTreeMap<String, StreamStats>,
    pub state: StateReport,
    /// From each file's appearance in the landing zone to the publish that includes it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub freshness: Option<Freshness>,
    pub quarantine: QuarantineReport,
    /// Customers with at least one tag.
    pub customers: usize,
    pub tags: Vec<TagReport>,
    pub measures: Vec<MeasureReport>,
    pub stages_ms: BTreeMap<String, u64>,
    /// The quality gates' outcome (checks evaluated, failures when forced).
    pub gates: GateReport,
    pub published: Published,
    /// Set when the compaction policy ran after the publish.
    pub compaction: Option<CompactReport>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Incremental,
    Full,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct StateReport {
    /// The state version this run started from (0: none) and the one it committed.
    pub from_version: u64,
    pub version: u64,
    /// Rows per state table after this run.
    pub tables: BTreeMap<String, StateTableReport>,
    /// Unique events held for a later as-of time.
    pub held_events: usize,
    /// Event ids read back from the de-duplication memory for this run's days.
    pub seen_ids_loaded: usize,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct StateTableReport {
    /// Rows the state job derived from this run's events.
    pub new_rows: usize,
    pub rows: usize,
    /// Rows of the segments rewritten (the rest of the table is kept as it was stored).
    pub rows_rewritten: usize,
    pub duration_ms: u64,
}

/// Milliseconds from a landing file's appearance to the publish that included it.
#[derive(Debug, Clone, Serialize)]
pub struct Freshness {
    pub files: usize,
    pub p50_ms: u64,
    pub p95_ms: u64,
    pub max_ms: u64,
    /// Every file's lag, ascending (for metrics; not in the JSON report).
    #[serde(skip)]
    pub lags_ms: Vec<u64>,
}

impl Freshness {
    /// Nearest-rank percentiles of `lags_ms`; `None` when there are none.
    pub fn of(mut lags_ms: Vec<u64>) -> Option<Self> {
        if lags_ms.is_empty() {
            return None;
        }
        lags_ms.sort_unstable();
        let rank = |p: usize| lags_ms[(lags_ms.len() * p).div_ceil(100).max(1) - 1];
        Some(Freshness {
            files: lags_ms.len(),
            p50_ms: rank(50),
            p95_ms: rank(95),
            max_ms: *lags_ms.last().expect("non-empty"),
            lags_ms,
        })
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct QuarantineReport {
    /// Where quarantined files and rows are kept (`tagflow quarantine list` shows them).
    pub location: String,
    pub files: usize,
    pub rows: usize,
    /// Entries written by this run.
    pub entries: Vec<Entry>,
}

#[derive(Debug, Clone, Serialize)]
pub struct TagReport {
    pub tag: String,
    pub family: String,
    pub rows: usize,
    /// Customers per value.
    pub values: BTreeMap<String, u64>,
    pub duration_ms: u64,
    /// Evaluated for this many customers only (those whose inputs changed), everyone
    /// else's rows kept; absent when evaluated for everyone.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub evaluated_customers: Option<usize>,
}

#[derive(Debug, Clone, Serialize)]
pub struct MeasureReport {
    pub measure: String,
    pub rows: usize,
    pub duration_ms: u64,
    /// As for a tag: the customers it was evaluated for, if not everyone.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub evaluated_customers: Option<usize>,
    /// What a measure of one row with a text column `status` says of itself (the BG/NBD
    /// fit: `fitted`, or why no predictive tag is published).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
}

impl RunReport {
    /// A human-readable report.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let w = &mut out;
        let _ = writeln!(w, "tagflow run {} as of {}", self.run_id, self.as_of.to_rfc3339());
        let _ = writeln!(w, "  landing   {}", self.landing);
        let mode = match (self.mode, &self.full_because) {
            (Mode::Full, Some(why)) => format!("full ({why})"),
            (Mode::Full, None) => "full".to_string(),
            (Mode::Incremental, _) => "incremental".to_string(),
        };
        let _ = writeln!(
            w,
            "  mode      {mode}, state version {} -> {}, {} events held for a later as-of",
            self.state.from_version, self.state.version, self.state.held_events
        );
        let _ = writeln!(w, "  engine    {}", self.engine);
        if let Some(f) = &self.freshness {
            let _ = writeln!(
                w,
                "  freshness {} files: p50 {} ms, p95 {} ms, max {} ms",
                f.files, f.p50_ms, f.p95_ms, f.max_ms
            );
        }
        let gates = &self.gates;
        let _ = writeln!(
            w,
            "  gates     {} checks{}",
            gates.checks,
            match (gates.failures.len(), gates.forced) {
                (0, _) => ", all passed".to_string(),
                (n, true) => format!(", {n} FAILED and forced through (--force)"),
                (n, false) => format!(", {n} failed"),
            }
        );
        for failure in &gates.failures {
            let _ = writeln!(w, "            {failure}");
        }
        for observed in &gates.observed {
            let _ = writeln!(
                w,
                "            observed (the data moved, definition unchanged): {observed}"
            );
        }
        let changes = self.published.changes.unwrap_or_default();
        let _ = writeln!(
            w,
            "  published {} version {} ({} rows; {} entered, {} exited, {} changed; {} rows written, {} files)",
            self.published.table,
            self.published.version,
            self.published.rows,
            changes.entered,
            changes.exited,
            changes.changed,
            self.published.rows_written,
            self.published.files
        );
        if let Some(compaction) = &self.compaction {
            for line in compaction.render().lines() {
                let _ = writeln!(w, "  compacted {line}");
            }
        }
        let _ = writeln!(
            w,
            "  customers {}   duration {:.2}s",
            self.customers,
            self.duration_ms as f64 / 1000.0
        );
        let _ = writeln!(w);
        let _ = writeln!(
            w,
            "  {:<8} {:>6} {:>6} {:>10} {:>10} {:>10} {:>10} {:>10}",
            "stream", "files", "q.files", "rows read", "q.rows", "dupes", "after T", "events"
        );
        for (stream, s) in &self.streams {
            let _ = writeln!(
                w,
                "  {:<8} {:>6} {:>6} {:>10} {:>10} {:>10} {:>10} {:>10}",
                stream,
                s.files,
                s.files_quarantined,
                s.rows_read,
                s.rows_quarantined,
                s.duplicates_dropped,
                s.after_as_of,
                s.events
            );
        }
        if self.quarantine.files + self.quarantine.rows > 0 {
            let _ = writeln!(
                w,
                "\n  quarantined: {} files, {} rows -> {} (see `tagflow quarantine list`)",
                self.quarantine.files, self.quarantine.rows, self.quarantine.location
            );
        }
        let _ = writeln!(w, "\n  {:<20} {:<10} {:>9} {:>9}", "tag", "family", "rows", "ms");
        for t in &self.tags {
            let _ = writeln!(w, "  {:<20} {:<10} {:>9} {:>9}", t.tag, t.family, t.rows, t.duration_ms);
        }
        for m in &self.measures {
            let _ = writeln!(
                w,
                "  {:<20} {:<10} {:>9} {:>9}{}",
                m.measure,
                "(measure)",
                m.rows,
                m.duration_ms,
                m.status.as_ref().map(|s| format!("  {s}")).unwrap_or_default()
            );
        }
        let stages: Vec<String> = self.stages_ms.iter().map(|(k, v)| format!("{k} {v} ms")).collect();
        let _ = writeln!(w, "\n  stages: {}", stages.join(", "));
        out
    }
}

/// What `job_runs` records of a run that published.
impl From<&RunReport> for runs::Summary {
    fn from(r: &RunReport) -> Self {
        let tags = r.tags.iter().map(|t| {
            let mut entry = json!({ "job": t.tag, "rows": t.rows, "ms": t.duration_ms });
            let failed = runs::failed_checks(&t.tag, &r.gates.failures);
            if !failed.is_empty() {
                entry["failed_checks"] = failed.into();
            }
            let observed = runs::failed_checks(&t.tag, &r.gates.observed);
            if !observed.is_empty() {
                entry["observed_drift"] = observed.into();
            }
            entry
        });
        let measures = r
            .measures
            .iter()
            .map(|m| json!({ "job": m.measure, "rows": m.rows, "ms": m.duration_ms }));
        let mut summary = runs::Summary {
            customers: r.customers,
            published_version: r.published.version,
            jobs: tags.chain(measures).collect(),
            forced: r.gates.forced,
            freshness_p95_ms: r.freshness.as_ref().map(|f| f.p95_ms),
            freshness_max_ms: r.freshness.as_ref().map(|f| f.max_ms),
            ..Default::default()
        };
        summary.count_streams(r.streams.values());
        summary
    }
}
