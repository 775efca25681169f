//! The application: what a tagflow command does, composed from the stages below it.
//!
//! Owns: preparing a project ([`prepare`]), one run ([`run`]) and its batch, [`follow`],
//! backfills, erasures ([`forget`]), previews, the demo, the cluster's processes ([`cluster`]), run reports, the command error and its exit codes, and
//! `follow`'s metrics. Must not: be imported by any stage; the CLI alone sits above it.

pub mod backfill;
mod batch;
pub mod cluster;
pub mod demo;
pub mod error;
pub mod follow;
pub mod forget;
pub mod metrics;
pub mod prepare;
pub mod preview;
pub mod report;
pub mod run;

/// Milliseconds per step of a command, each step timed from the end of the one before (a
/// run report's and an erasure report's `stages_ms`).
pub(crate) struct Steps {
    pub ms: std::collections::BTreeMap<String, u64>,
    since: std::time::Instant,
}

impl Steps {
    /// The clock of the first step starts now.
    pub fn start() -> Self {
        Steps {
            ms: Default::default(),
            since: std::time::Instant::now(),
        }
    }

    /// Record `step` as ending now; the next step starts now.
    pub fn done(&mut self, step: &str) {
        self.ms
            .insert(step.to_string(), self.since.elapsed().as_millis() as u64);
        self.since = std::time::Instant::now();
    }
}
