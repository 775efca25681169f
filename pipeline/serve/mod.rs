//! Serve: the tag lookup API (`tagflow serve`). Answers "what are customer X's tags right
//! now?" from an in-memory index of the latest published `customer_tags` version, reloads
//! within seconds of a new publish and swaps atomically.
//!
//! Owns: the HTTP server (axum), the served index and its reloads, auth, limits, metrics.
//! Must not: write to the warehouse. It only reads published snapshots: a request takes one
//! index (`Arc`) when it starts and answers wholly from it, so no response mixes versions,
//! requests in flight finish on theirs, and an old index is freed when its last reader ends.

mod api;
pub mod error;
pub mod index;
pub(crate) mod metrics;
pub mod query;

use std::collections::VecDeque;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use deltalake::DeltaTable;
use tokio::sync::watch;

pub use api::ApiDoc;
use error::ApiError;
use index::{SharedIndex, TagIndex};
use metrics::{Metrics, ReloadLabels};
use query::QueryLimits;

use crate::publish::{open_published, PublishError, TAGS_TABLE};
use crate::storage::Location;

/// `[serve]` settings, resolved (see `config::ServeConfig` for the file keys).
#[derive(Debug, Clone)]
pub struct ServeSettings {
    pub listen: SocketAddr,
    /// Bearer token required on `/v1/*` (none: no auth).
    pub token: Option<String>,
    /// How often the warehouse is checked for a new version.
    pub reload_interval: Duration,
    pub max_body_bytes: usize,
    /// Ids per `customers:batchGet`.
    pub max_batch: usize,
    /// Customers per segment page.
    pub max_page: usize,
    /// Pinned (non-latest) versions kept indexed in memory.
    pub pinned_versions: usize,
    pub query: QueryLimits,
}

impl Default for ServeSettings {
    fn default() -> Self {
        ServeSettings {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            token: None,
            reload_interval: Duration::from_secs(1),
            max_body_bytes: 1024 * 1024,
            max_batch: 1000,
            max_page: 1000,
            pinned_versions: 2,
            query: QueryLimits {
                max_rows: 10_000,
                timeout: Duration::from_secs(10),
                memory_bytes: 256 * 1024 * 1024,
            },
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("the HTTP server failed: {0}")]
    Server(#[source] std::io::Error),
}

/// What every request handler shares.
pub struct AppState {
    warehouse: Location,
    settings: ServeSettings,
    current: RwLock<Option<SharedIndex>>,
    /// Indexes of pinned versions, most recently used first.
    pinned: Mutex<VecDeque<SharedIndex>>,
    metrics: Metrics,
}

impl AppState {
    /// The index being served, if one is loaded.
    pub fn current(&self) -> Option<SharedIndex> {
        self.current.read().expect("index lock").clone()
    }

    fn latest(&self) -> Result<SharedIndex, ApiError> {
        self.current().ok_or(ApiError::NotReady)
    }

    /// The index of `version`: the served one, a cached pinned one, or loaded now.
    async fn version(&self, version: u64) -> Result<SharedIndex, ApiError> {
        let latest = self.latest()?;
        if latest.version == version {
            return Ok(latest);
        }
        if version > latest.version {
            return Err(ApiError::NotFound(format!(
                "version {version} is not published (the latest is {})",
                latest.version
            )));
        }
        {
            let mut pinned = self.pinned.lock().expect("pinned lock");
            if let Some(at) = pinned.iter().position(|i| i.version == version) {
                let index = pinned.remove(at).expect("found");
                pinned.push_front(index.clone());
                return Ok(index);
            }
        }
        let index =
            Arc::new(TagIndex::load(&self.warehouse, Some(version)).await.map_err(|e| {
                ApiError::Gone(format!("version {version} of customer_tags is no longer readable: {e}"))
            })?);
        let mut pinned = self.pinned.lock().expect("pinned lock");
        pinned.push_front(index.clone());
        pinned.truncate(self.settings.pinned_versions);
        Ok(index)
    }

    /// Load the latest version if it is newer than the served one; true if it swapped.
    async fn reload(&self, table: &mut Option<DeltaTable>) -> Result<bool, PublishError> {
        let served = self.current().map(|i| i.version);
        let delta = match table {
            Some(delta) => {
                let latest = delta.get_latest_version().await.map_err(|source| PublishError::Open {
                    url: delta.table_url().to_string(),
                    source,
                })?;
                if Some(latest as u64) == served {
                    return Ok(false);
                }
                delta
                    .update_incremental(None)
                    .await
                    .map_err(|source| PublishError::Open {
                        url: delta.table_url().to_string(),
                        source,
                    })?;
                delta
            }
            None => table.insert(open_published(&self.warehouse, TAGS_TABLE, None).await?),
        };
        if delta.version() == served {
            return Ok(false);
        }
        let started = Instant::now();
        let index = Arc::new(TagIndex::from_table(delta).await?);
        self.metrics.reload_seconds.observe(started.elapsed().as_secs_f64());
        self.metrics.snapshot_version.set(index.version as i64);
        self.metrics.snapshot_customers.set(index.customer_count() as i64);
        tracing::info!(
            version = index.version,
            customers = index.customer_count(),
            rows = index.row_count(),
            seconds = started.elapsed().as_secs_f64(),
            "serving a new snapshot"
        );
        // The swap: new requests see the new index; the old one lives until its last reader ends.
        *self.current.write().expect("index lock") = Some(index);
        Ok(true)
    }
}

/// A running server.
pub struct Server {
    /// The address it listens on (the real port when the setting asked for port 0).
    pub addr: SocketAddr,
    pub state: Arc<AppState>,
    task: tokio::task::JoinHandle<Result<(), ServeError>>,
}

impl Server {
    /// Wait until the server has shut down (after `shutdown` resolved and requests in flight
    /// finished).
    pub async fn wait(self) -> Result<(), ServeError> {
        self.task
            .await
            .map_err(|e| ServeError::Server(std::io::Error::other(e)))?
    }
}

/// Bind, start reloading snapshots from `warehouse` and serve until `shutdown` resolves.
pub async fn start(
    warehouse: Location,
    settings: ServeSettings,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<Server, ServeError> {
    let listener = tokio::net::TcpListener::bind(settings.listen)
        .await
        .map_err(|source| ServeError::Bind {
            addr: settings.listen,
            source,
        })?;
    let addr = listener.local_addr().map_err(ServeError::Server)?;
    let state = Arc::new(AppState {
        warehouse,
        settings,
        current: RwLock::new(None),
        pinned: Mutex::new(VecDeque::new()),
        metrics: Metrics::default(),
    });
    let (stop, stopped) = watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop.send(true);
    });
    tokio::spawn(reload_loop(state.clone(), stopped.clone()));
    let app = api::router(state.clone());
    let mut on_stop = stopped;
    let task = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = on_stop.wait_for(|stop| *stop).await;
            })
            .await
            .map_err(ServeError::Server)
    });
    tracing::info!(%addr, "tag lookup API listening");
    Ok(Server { addr, state, task })
}

/// Check for a new version every `reload_interval` until shutdown.
async fn reload_loop(state: Arc<AppState>, mut stopped: watch::Receiver<bool>) {
    let mut table = None;
    let mut waiting_logged = false;
    loop {
        match state.reload(&mut table).await {
            Ok(true) => {
                state
                    .metrics
                    .reloads
                    .get_or_create(&ReloadLabels { result: "ok" })
                    .inc();
            }
            Ok(false) => {}
            Err(PublishError::NotFound { url }) => {
                if !waiting_logged {
                    tracing::info!(%url, "waiting for a first publish");
                    waiting_logged = true;
                }
            }
            Err(error) => {
                state
                    .metrics
                    .reloads
                    .get_or_create(&ReloadLabels { result: "error" })
                    .inc();
                tracing::warn!(%error, "snapshot reload failed; still serving the previous one");
                // Start over from a fresh open next time.
                table = None;
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(state.settings.reload_interval) => {}
            _ = stopped.wait_for(|stop| *stop) => return,
        }
    }
}
