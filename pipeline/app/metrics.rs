//! Prometheus metrics of a `tagflow follow` session, served on `GET /metrics` (OpenMetrics
//! text) when `--metrics-listen` is given: batches by result, files, events and
//! quarantined rows processed, freshness lag, batch and job durations, gate failures.
//!
//! Owns: the session's metric registry, its HTTP endpoint and what each batch adds to it.
//! Must not: influence a batch (a metrics failure never fails the session).

use std::net::SocketAddr;
use std::sync::Arc;

use axum::routing::get;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::app::error::{exit, Error};
use crate::app::report::RunReport;
use crate::serve::metrics::openmetrics;
use crate::serve::ServeError;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    /// `published`, `idle` (nothing new), `gate_failed` or `failed`.
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct JobLabels {
    pub job: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CheckLabels {
    pub job: String,
    pub check: String,
}

fn seconds_histogram() -> Histogram {
    // 1 ms .. ~65 s
    Histogram::new(exponential_buckets(0.001, 2.0, 17))
}

pub struct FollowMetrics {
    registry: Registry,
    pub batches: Family<ResultLabels, Counter>,
    pub files: Counter,
    pub events: Counter,
    pub files_quarantined: Counter,
    pub rows_quarantined: Counter,
    pub freshness: Histogram,
    pub freshness_last_p95: Gauge<f64, std::sync::atomic::AtomicU64>,
    pub batch_seconds: Histogram,
    pub job_seconds: Family<JobLabels, Histogram, fn() -> Histogram>,
    pub gate_failures: Family<CheckLabels, Counter>,
    pub drift_observed: Family<JobLabels, Counter>,
    pub published_version: Gauge,
}

impl Default for FollowMetrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("tagflow_follow");
        let metrics = FollowMetrics {
            batches: Family::default(),
            files: Counter::default(),
            events: Counter::default(),
            files_quarantined: Counter::default(),
            rows_quarantined: Counter::default(),
            freshness: seconds_histogram(),
            freshness_last_p95: Gauge::default(),
            batch_seconds: seconds_histogram(),
            job_seconds: Family::new_with_constructor(seconds_histogram),
            gate_failures: Family::default(),
            drift_observed: Family::default(),
            published_version: Gauge::default(),
            registry: Registry::default(),
        };
        registry.register("batches", "Batches by result", metrics.batches.clone());
        registry.register("files", "Landing files processed", metrics.files.clone());
        registry.register(
            "events",
            "Events counted (unique, at or before the as-of time)",
            metrics.events.clone(),
        );
        registry.register(
            "quarantined_files",
            "Landing files quarantined whole",
            metrics.files_quarantined.clone(),
        );
        registry.register("quarantined_rows", "Rows quarantined", metrics.rows_quarantined.clone());
        registry.register(
            "freshness_seconds",
            "Per file: from its appearance in the landing zone to the publish that includes it",
            metrics.freshness.clone(),
        );
        registry.register(
            "freshness_lag_seconds",
            "p95 freshness of the last batch that read files",
            metrics.freshness_last_p95.clone(),
        );
        registry.register(
            "batch_duration_seconds",
            "Duration of published batches",
            metrics.batch_seconds.clone(),
        );
        registry.register(
            "job_duration_seconds",
            "Duration of each tag and measure job",
            metrics.job_seconds.clone(),
        );
        registry.register(
            "gate_failures",
            "Quality checks that failed, by job and check",
            metrics.gate_failures.clone(),
        );
        registry.register(
            "drift_observed",
            "Values the data moved beyond a tag's drift rule, definition unchanged (published)",
            metrics.drift_observed.clone(),
        );
        registry.register(
            "published_version",
            "Last customer_tags version published",
            metrics.published_version.clone(),
        );
        FollowMetrics { registry, ..metrics }
    }
}

impl FollowMetrics {
    /// Add a published batch.
    pub fn published(&self, report: &RunReport) {
        self.batches.get_or_create(&ResultLabels { result: "published" }).inc();
        for stream in report.streams.values() {
            self.files.inc_by(stream.files as u64);
            self.events.inc_by(stream.events as u64);
            self.files_quarantined.inc_by(stream.files_quarantined as u64);
            self.rows_quarantined.inc_by(stream.rows_quarantined as u64);
        }
        if let Some(freshness) = &report.freshness {
            for lag in &freshness.lags_ms {
                self.freshness.observe(*lag as f64 / 1000.0);
            }
            self.freshness_last_p95.set(freshness.p95_ms as f64 / 1000.0);
        }
        self.batch_seconds.observe(report.duration_ms as f64 / 1000.0);
        let jobs = report
            .tags
            .iter()
            .map(|t| (&t.tag, t.duration_ms))
            .chain(report.measures.iter().map(|m| (&m.measure, m.duration_ms)));
        for (job, ms) in jobs {
            self.job_seconds
                .get_or_create(&JobLabels { job: job.clone() })
                .observe(ms as f64 / 1000.0);
        }
        for failure in &report.gates.failures {
            self.gate_failure(&failure.job, &failure.check);
        }
        for observed in &report.gates.observed {
            self.drift_observed
                .get_or_create(&JobLabels {
                    job: observed.job.clone(),
                })
                .inc();
        }
        self.published_version.set(report.published.version as i64);
    }

    /// Add a batch that had nothing to do.
    pub fn idle(&self) {
        self.batches.get_or_create(&ResultLabels { result: "idle" }).inc();
    }

    /// Add a failed batch (and its failed checks, if a gate stopped it).
    pub fn failed(&self, error: &Error) {
        let result = match error.exit_code() {
            exit::GATE => "gate_failed",
            _ => "failed",
        };
        self.batches.get_or_create(&ResultLabels { result }).inc();
        if let Error::Gate(gate) = error {
            for failure in &gate.report.failures {
                self.gate_failure(&failure.job, &failure.check);
            }
        }
        if let Error::Job(crate::jobs::JobError::Check { job, check, .. }) = error {
            self.gate_failure(job, check);
        }
    }

    fn gate_failure(&self, job: &str, check: &str) {
        self.gate_failures
            .get_or_create(&CheckLabels {
                job: job.to_string(),
                check: check.to_string(),
            })
            .inc();
    }
}

/// Serve `GET /metrics` on `listen` until the returned task is dropped or aborted; returns
/// the bound address (port 0 picks a free port).
pub async fn serve(
    listen: SocketAddr,
    metrics: Arc<FollowMetrics>,
) -> Result<(SocketAddr, tokio::task::JoinHandle<()>), ServeError> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|source| ServeError::Bind { addr: listen, source })?;
    let addr = listener.local_addr().map_err(ServeError::Server)?;
    let app = axum::Router::new().route(
        "/metrics",
        get(move || {
            let metrics = metrics.clone();
            async move { openmetrics(&metrics.registry) }
        }),
    );
    let task = tokio::spawn(async move {
        if let Err(error) = axum::serve(listener, app).await {
            tracing::warn!(%error, "the metrics endpoint stopped");
        }
    });
    Ok((addr, task))
}
