//! Prometheus metrics of the lookup service (`GET /metrics`, OpenMetrics text): requests and
//! latency per route, the served snapshot's version and age, reloads.
//!
//! Owns: the metric registry and its encoding.
//! Must not: decide what a request returns.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub route: String,
    pub method: String,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReloadLabels {
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PageLabels {
    /// `read` (from the table) or `shared` (another reader's read).
    pub source: &'static str,
}

fn latency_histogram() -> Histogram {
    // 50 µs .. ~1.6 s
    Histogram::new(exponential_buckets(0.000_05, 2.0, 16))
}

pub struct Metrics {
    registry: Registry,
    pub requests: Family<RequestLabels, Counter>,
    pub latency: Family<RouteLabels, Histogram, fn() -> Histogram>,
    pub snapshot_version: Gauge,
    pub snapshot_age: Gauge<f64, AtomicU64>,
    pub snapshot_customers: Gauge,
    pub reloads: Family<ReloadLabels, Counter>,
    pub reload_seconds: Histogram,
    pub feed_pages: Family<PageLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("tagflow");
        let requests = Family::<RequestLabels, Counter>::default();
        let latency = Family::<RouteLabels, Histogram, fn() -> Histogram>::new_with_constructor(latency_histogram);
        let snapshot_version = Gauge::default();
        let snapshot_age = Gauge::<f64, AtomicU64>::default();
        let snapshot_customers = Gauge::default();
        let reloads = Family::<ReloadLabels, Counter>::default();
        let reload_seconds = Histogram::new(exponential_buckets(0.01, 2.0, 12));
        let feed_pages = Family::<PageLabels, Counter>::default();
        registry.register(
            "http_requests",
            "HTTP requests by route, method and status",
            requests.clone(),
        );
        registry.register(
            "http_request_duration_seconds",
            "Time to answer a request, by route",
            latency.clone(),
        );
        registry.register(
            "snapshot_version",
            "Version of customer_tags being served",
            snapshot_version.clone(),
        );
        registry.register(
            "snapshot_age_seconds",
            "Seconds since the served version was committed",
            snapshot_age.clone(),
        );
        registry.register(
            "snapshot_customers",
            "Customers in the served snapshot",
            snapshot_customers.clone(),
        );
        registry.register("snapshot_reloads", "Snapshot reloads by result", reloads.clone());
        registry.register(
            "snapshot_reload_duration_seconds",
            "Time to load and index a new version",
            reload_seconds.clone(),
        );
        registry.register(
            "change_stream_pages",
            "Change-stream pages sent, read from tag_changes or shared with readers at the same position",
            feed_pages.clone(),
        );
        Metrics {
            registry,
            requests,
            latency,
            snapshot_version,
            snapshot_age,
            snapshot_customers,
            reloads,
            reload_seconds,
            feed_pages,
        }
    }
}

impl Metrics {
    /// Record one answered request.
    pub fn observe(&self, route: &str, method: &str, status: u16, seconds: f64) {
        self.requests
            .get_or_create(&RequestLabels {
                route: route.to_string(),
                method: method.to_string(),
                status,
            })
            .inc();
        self.latency
            .get_or_create(&RouteLabels {
                route: route.to_string(),
            })
            .observe(seconds);
    }

    /// The registry as an OpenMetrics response.
    pub fn response(&self) -> axum::response::Response {
        openmetrics(&self.registry)
    }
}

/// A registry as an OpenMetrics text response (also `follow --metrics-listen`'s).
pub(crate) fn openmetrics(registry: &Registry) -> axum::response::Response {
    use axum::response::IntoResponse;
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, registry).expect("writing to a String");
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        out,
    )
        .into_response()
}
