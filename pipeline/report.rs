//! The run report: what a run read, quarantined, computed and published, as text for
//! people and as JSON for schedulers.
//!
//! Owns: the report's fields and rendering. Must not: compute anything it reports.

use std::collections::BTreeMap;
use std::fmt::Write;

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::publish::Published;
use crate::quarantine::Entry;
use crate::sources::StreamStats;

#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    pub run_id: String,
    pub as_of: DateTime<Utc>,
    pub started_at: DateTime<Utc>,
    pub duration_ms: u64,
    pub landing: String,
    pub warehouse: String,
    pub streams: BTreeMap<String, StreamStats>,
    pub quarantine: QuarantineReport,
    /// Customers with at least one tag.
    pub customers: usize,
    pub tags: Vec<TagReport>,
    pub measures: Vec<MeasureReport>,
    pub stages_ms: BTreeMap<String, u64>,
    pub published: Published,
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
    pub values: BTreeMap<String, usize>,
    pub duration_ms: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct MeasureReport {
    pub measure: String,
    pub rows: usize,
    pub duration_ms: u64,
}

impl RunReport {
    /// A human-readable report.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let w = &mut out;
        let _ = writeln!(w, "tagflow run {} as of {}", self.run_id, self.as_of.to_rfc3339());
        let _ = writeln!(w, "  landing   {}", self.landing);
        let _ = writeln!(
            w,
            "  published {} version {} ({} rows)",
            self.published.table, self.published.version, self.published.rows
        );
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
                "  {:<20} {:<10} {:>9} {:>9}",
                m.measure, "(measure)", m.rows, m.duration_ms
            );
        }
        let stages: Vec<String> = self.stages_ms.iter().map(|(k, v)| format!("{k} {v} ms")).collect();
        let _ = writeln!(w, "\n  stages: {}", stages.join(", "));
        out
    }
}
