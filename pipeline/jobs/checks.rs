//! Quality gates: the checks a tag job's header declares on its output, and their
//! evaluation on a run's rows against the previous snapshot's segment sizes.
//!
//! ```toml
//! [checks]
//! not_null = ["score"]                      # customer_id and value are never null anyway
//! accepted_values = ["true"]
//! min_rows = 1
//! max_rows = 5_000_000
//! [checks.drift]                            # against the previous published snapshot
//! max_change_pct = 75                       # a value's customer count may move by at most 75%
//! min_base = 1000                           #   of its previous size, when that was >= 1000
//! max_change_customers = 50_000             # and by at most 50k customers, whatever its size
//! ```
//!
//! Drift tells a broken definition from moving data. It is judged (a failure stops the
//! publish) when the tag's definition changed since the baseline (its SQL, parameters or
//! anything it reads: [`Catalog::definitions`](super::Catalog::definitions)), or when the
//! baseline does not say which definition it was made with. With the same definition, the
//! rows moved with the data alone: the move is an observation (reported, counted, recorded)
//! and the publish goes on, unless the rule says `on_data = "stop"`.
//!
//! One row per customer and non-null `customer_id` and `value` are built in: every tag is
//! held to them (see `exec`), and `--force` cannot override them because `customer_tags`
//! holds one row per customer and tag.

use std::collections::BTreeMap;

use arrow::array::Array;
use serde::{Deserialize, Serialize};

use super::catalog::{Definitions, Job, JobKind};
use super::exec::JobRun;

/// Rows per tag and value of a published snapshot.
pub type Segments = BTreeMap<String, BTreeMap<String, u64>>;

/// The `[checks]` table of a tag job's header.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Checks {
    /// Output columns that must hold no null, besides the built-in `customer_id` and `value`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_null: Vec<String>,
    /// The only values the tag may take.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub accepted_values: Option<Vec<String>>,
    /// Bounds on the tag's row count (customers tagged).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_rows: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_rows: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub drift: Option<Drift>,
}

/// How far each value's customer count may move from the previous snapshot.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Drift {
    /// At most this many percent of the previous size, up or down...
    pub max_change_pct: Option<f64>,
    /// ...for values that had at least this many customers (small segments are noisy).
    #[serde(default)]
    pub min_base: u64,
    /// At most this many customers, up or down, whatever the size.
    pub max_change_customers: Option<u64>,
    /// What a move beyond the limits does when the definition is unchanged (the data moved).
    #[serde(default, skip_serializing_if = "OnData::is_report")]
    pub on_data: OnData,
}

/// What a drift rule does with a move of the data alone (the definition unchanged).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OnData {
    /// Report it (run report, metrics, `job_runs`) and publish.
    #[default]
    Report,
    /// Stop the publish, as for a changed definition.
    Stop,
}

impl OnData {
    fn is_report(&self) -> bool {
        *self == OnData::Report
    }
}

/// What drift is measured against: the previous snapshot's version, its segment sizes, and
/// the definitions its tags were made with (empty when it does not say).
#[derive(Debug, Clone, Copy)]
pub struct Baseline<'a> {
    pub version: u64,
    pub segments: &'a Segments,
    pub definitions: &'a Definitions,
}

impl Checks {
    /// Why these checks cannot be applied to `job`, if they cannot.
    pub(super) fn problem(&self, job: &Job) -> Option<(&'static str, String)> {
        if job.kind != JobKind::Tag && *self != Checks::default() {
            return Some(("checks", "[checks] apply to tag jobs only".into()));
        }
        if let Some(column) = self.not_null.iter().find(|c| c.as_str() != "score") {
            return Some((
                "not_null",
                format!("not_null: '{column}' is not a nullable output column (customer_id and value are never null; only \"score\" can be listed)"),
            ));
        }
        if let (Some(min), Some(max)) = (self.min_rows, self.max_rows) {
            if min > max {
                return Some(("min_rows", format!("min_rows ({min}) is above max_rows ({max})")));
            }
        }
        if self.accepted_values.as_ref().is_some_and(Vec::is_empty) {
            return Some(("accepted_values", "accepted_values is empty".into()));
        }
        if let Some(drift) = &self.drift {
            if drift.max_change_pct.is_none() && drift.max_change_customers.is_none() {
                return Some((
                    "drift",
                    "[checks.drift] needs max_change_pct or max_change_customers".into(),
                ));
            }
            if drift.max_change_pct.is_some_and(|p| !(p.is_finite() && p >= 0.0)) {
                return Some(("max_change_pct", "max_change_pct must be a number >= 0".into()));
            }
        }
        None
    }
}

/// One check that failed, with the numbers that made it fail.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CheckFailure {
    pub job: String,
    /// `not_null`, `accepted_values`, `min_rows`, `max_rows` or `drift`.
    pub check: String,
    /// The value concerned (drift, accepted_values), if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// What was seen and what was allowed, in words.
    pub detail: String,
}

impl std::fmt::Display for CheckFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.job, self.check)?;
        if let Some(value) = &self.value {
            write!(f, " [{value}]")?;
        }
        write!(f, ": {}", self.detail)
    }
}

/// The outcome of a run's gates.
#[derive(Debug, Clone, Default, Serialize)]
pub struct GateReport {
    /// Checks evaluated (a drift check counts once per value).
    pub checks: usize,
    pub failures: Vec<CheckFailure>,
    /// Drift beyond a rule's limits with the tag's definition unchanged: the data moved.
    /// Reported, not a failure (unless the rule says `on_data = "stop"`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub observed: Vec<CheckFailure>,
    /// The snapshot drift was measured against (none: no drift check ran).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub baseline_version: Option<u64>,
    /// The run published although checks failed (`--force`).
    pub forced: bool,
}

impl GateReport {
    pub fn passed(&self) -> bool {
        self.failures.is_empty()
    }
}

/// Checks failed and nothing was published.
#[derive(Debug, thiserror::Error)]
#[error("quality gate failed, nothing was published ({} of {} checks failed; `--force` publishes anyway):\n  {}",
    report.failures.len(), report.checks,
    report.failures.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n  "))]
pub struct GateError {
    pub report: GateReport,
}

/// Evaluate every tag's checks on its rows. `baseline` is what drift is measured against
/// (`None`: nothing published yet, drift is not checked); `definitions` are the current
/// definitions of the tags evaluated.
pub fn evaluate<'a>(
    runs: impl IntoIterator<Item = &'a JobRun>,
    baseline: Option<Baseline<'_>>,
    definitions: &Definitions,
) -> GateReport {
    let mut report = GateReport {
        baseline_version: baseline.map(|b| b.version),
        ..Default::default()
    };
    for run in runs.into_iter().filter(|r| r.job.kind == JobKind::Tag) {
        let job = &run.job;
        let checks = &job.checks;
        let mut observed = Vec::new();
        let mut fail = |check: &str, value: Option<&str>, detail: String| {
            report.failures.push(CheckFailure {
                job: job.name.clone(),
                check: check.to_string(),
                value: value.map(String::from),
                detail,
            })
        };
        let counts = &run.values;
        let rows = run.rows as u64;
        let mut checked = 0;
        if !checks.not_null.is_empty() {
            checked += 1;
            let nulls: usize = run.output.parts().map(|(b, kept)| nulls_kept(b.column(2), kept)).sum();
            if nulls > 0 {
                fail("not_null", None, format!("score is null in {nulls} of {rows} rows"));
            }
        }
        if let Some(accepted) = &checks.accepted_values {
            checked += 1;
            for (value, n) in counts.iter().filter(|(v, _)| !accepted.contains(v)) {
                fail(
                    "accepted_values",
                    Some(value),
                    format!("{n} customers have a value outside {accepted:?}"),
                );
            }
        }
        if let Some(min) = checks.min_rows {
            checked += 1;
            if rows < min {
                fail("min_rows", None, format!("{rows} rows, at least {min} expected"));
            }
        }
        if let Some(max) = checks.max_rows {
            checked += 1;
            if rows > max {
                fail("max_rows", None, format!("{rows} rows, at most {max} expected"));
            }
        }
        if let (Some(drift), Some(baseline)) = (&checks.drift, baseline) {
            let version = baseline.version;
            let same_definition = baseline
                .definitions
                .get(&job.name)
                .is_some_and(|d| definitions.get(&job.name) == Some(d));
            let judged = !same_definition || drift.on_data == OnData::Stop;
            let empty = BTreeMap::new();
            let before = baseline.segments.get(&job.name).unwrap_or(&empty);
            let values: std::collections::BTreeSet<&String> = before.keys().chain(counts.keys()).collect();
            for value in values {
                checked += 1;
                let old = before.get(value).copied().unwrap_or(0);
                let new = counts.get(value).copied().unwrap_or(0);
                let Some(detail) = drift.exceeded(old, new) else {
                    continue;
                };
                let detail = format!("{detail} (version {version}: {old}, now: {new})");
                match judged {
                    true => fail("drift", Some(value), detail),
                    false => observed.push(CheckFailure {
                        job: job.name.clone(),
                        check: "drift".into(),
                        value: Some(value.clone()),
                        detail,
                    }),
                }
            }
        }
        report.checks += checked;
        report.observed.extend(observed);
    }
    report
}

impl Drift {
    /// How a move from `old` to `new` customers breaks this rule, if it does.
    fn exceeded(&self, old: u64, new: u64) -> Option<String> {
        let moved = old.abs_diff(new);
        if let Some(limit) = self.max_change_customers {
            if moved > limit {
                return Some(format!("moved by {moved} customers, at most {limit} allowed"));
            }
        }
        match self.max_change_pct {
            Some(pct) if old >= self.min_base.max(1) && moved as f64 > pct / 100.0 * old as f64 => Some(format!(
                "moved by {:.1}%, at most {pct}% allowed",
                moved as f64 * 100.0 / old as f64
            )),
            _ => None,
        }
    }
}

/// Nulls among the kept rows of `column` (`kept`: the mask of them; `None`: all).
fn nulls_kept(column: &arrow::array::ArrayRef, kept: Option<&arrow::buffer::BooleanBuffer>) -> usize {
    match (column.logical_nulls(), kept) {
        (None, _) => 0,
        (Some(nulls), None) => nulls.null_count(),
        (Some(nulls), Some(kept)) => kept.count_set_bits() - (kept & nulls.inner()).count_set_bits(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tag's `not_null` check counts the nulls of the rows it keeps, not of the rows a
    /// micro-batch masked out.
    #[test]
    fn nulls_are_counted_among_kept_rows_only() {
        let scores: arrow::array::ArrayRef =
            std::sync::Arc::new(arrow::array::Float64Array::from(vec![Some(1.0), None, None, Some(2.0)]));
        assert_eq!(nulls_kept(&scores, None), 2);
        let kept = arrow::buffer::BooleanBuffer::from(vec![true, true, false, true]);
        assert_eq!(nulls_kept(&scores, Some(&kept)), 1);
    }

    #[test]
    fn drift_limits_are_inclusive_and_skip_small_segments() {
        let pct = Drift {
            max_change_pct: Some(50.0),
            min_base: 100,
            max_change_customers: None,
            on_data: OnData::Report,
        };
        assert_eq!(pct.exceeded(100, 150), None, "exactly 50% is allowed");
        assert!(pct.exceeded(100, 151).is_some());
        assert!(pct.exceeded(100, 49).is_some());
        assert_eq!(
            pct.exceeded(99, 0),
            None,
            "below min_base the percentage is not checked"
        );
        let abs = Drift {
            max_change_pct: None,
            min_base: 0,
            max_change_customers: Some(10),
            on_data: OnData::Report,
        };
        assert_eq!(abs.exceeded(0, 10), None);
        assert!(abs.exceeded(0, 11).unwrap().contains("11 customers"));
    }
}
