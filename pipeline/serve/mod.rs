//! Serve: the tag lookup API (`tagflow serve`). Answers "what are customer X's tags right
//! now?" from an in-memory index of the latest merged `customer_tags` version with the
//! change feed's rows since applied ([`live`]): each reload applies what a new feed version
//! changed, and a newer merged version is indexed in the background and swapped atomically.
//! Beside it: every customer's changes in publish order, paged and as Server-Sent Events
//! ([`changes`]), and the PostgreSQL wire protocol for BI tools ([`pg`]).
//!
//! Owns: the HTTP server (axum), the served index and its reloads, auth, limits, metrics.
//! Must not: write to the warehouse. It only reads published snapshots: a request takes one
//! index (`Arc`) when it starts and answers wholly from it, so no response mixes versions,
//! requests in flight finish on theirs, and an old index is freed when its last reader ends.

mod api;
pub mod changes;
mod console;
pub mod error;
pub mod index;
pub mod live;
pub(crate) mod metrics;
pub mod overview;
pub mod pg;
pub mod query;

use std::collections::VecDeque;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use deltalake::DeltaTable;
use tokio::sync::watch;

use crate::publish::background::at_lowest_priority;
pub use api::ApiDoc;
use error::ApiError;
use index::{SharedIndex, TagIndex};
use live::LiveView;
use metrics::{Metrics, ReloadLabels};
use query::QueryLimits;

use crate::publish::{self, open_published, PublishError, CHANGES_TABLE, TAGS_TABLE};
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
    /// The PostgreSQL wire protocol front (`--pg-listen`), if wanted.
    pub pg: Option<pg::PgSettings>,
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
            pg: None,
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
    #[error("cannot use {path} for TLS: {message}")]
    Tls { path: std::path::PathBuf, message: String },
}

/// What every request handler shares.
pub struct AppState {
    warehouse: Location,
    settings: ServeSettings,
    current: RwLock<Option<SharedIndex>>,
    /// What customer lookups answer from: the latest merged version loaded (`current`)
    /// with the change feed's rows since applied. A reload applies a feed version's rows
    /// under the write lock, so a lookup sees all of them or none.
    live: RwLock<Option<LiveView>>,
    /// Indexes of pinned versions, most recently used first.
    pinned: Mutex<VecDeque<SharedIndex>>,
    metrics: Metrics,
    /// The change feed's version the live view has applied: change streams wait on it.
    feed_seen: watch::Sender<Option<u64>>,
    /// True once the server shuts down (change streams end).
    stopping: watch::Receiver<bool>,
    /// Segment flows per version, for the overviews.
    flows: overview::FlowCache,
    /// Change feed pages shared between readers at the same position.
    pages: changes::Pages,
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

    /// Bring the served view up to date; true if it changed. The first time (or after an
    /// error) the latest `customer_tags` version is loaded whole, with the live changes on
    /// top of it; then each new feed version's rows are applied to it (the cost of what
    /// changed), and a merged version newer than the loaded one is loaded in the
    /// background for segment pages.
    async fn reload(&self, tables: &mut Tables) -> Result<bool, PublishError> {
        let mut swapped = self.swap_rebuilt_base(tables).await?;
        let Some((_, feed_version)) = self.live_position() else {
            return self.load_whole(tables).await;
        };
        let feed = match &mut tables.feed {
            Some(feed) => feed,
            None => match open_published(&self.warehouse, CHANGES_TABLE, None).await {
                Ok(feed) => tables.feed.insert(feed),
                Err(PublishError::NotFound { .. }) => return Ok(swapped),
                Err(error) => return Err(error),
            },
        };
        let latest = feed.get_latest_version().await.map_err(|source| PublishError::Open {
            url: feed.table_url().to_string(),
            source,
        })?;
        if Some(latest as u64) != feed_version {
            let started = Instant::now();
            feed.update_incremental(None)
                .await
                .map_err(|source| PublishError::Open {
                    url: feed.table_url().to_string(),
                    source,
                })?;
            let (position, live_as_of) = self.feed_position().expect("loaded above");
            let changes = crate::publish::live::changes_after(feed, position, live_as_of).await?;
            let covered = self.covered_if_ahead(feed, &changes).await?;
            let rows: usize = changes.iter().map(|b| b.num_rows()).sum();
            let mut live = self.live.write().expect("live lock");
            let view = live.as_mut().expect("loaded above");
            view.apply(&changes, feed.version(), covered);
            self.feed_seen.send_replace(feed.version());
            self.metrics.reload_seconds.observe(started.elapsed().as_secs_f64());
            tracing::debug!(
                version = view.version,
                feed_version = view.feed_version,
                rows,
                changed_customers = view.changed_customers(),
                ms = started.elapsed().as_millis() as u64,
                "applied the change feed"
            );
            swapped = true;
        }
        self.rebuild_base_if_behind(tables);
        Ok(swapped)
    }

    /// Size, inflow and outflow per published version, tag and value, read once per
    /// served position and shared (the daily overview and the PostgreSQL `segments` table).
    async fn segment_flows(&self) -> Result<Arc<Vec<publish::snapshots::SegmentFlow>>, ApiError> {
        let (version, feed_version) = self.live_position().ok_or(ApiError::NotReady)?;
        self.flows.flows(&self.warehouse, (version, feed_version)).await
    }

    /// `(version, feed version)` the live view answers from.
    fn live_position(&self) -> Option<(u64, Option<u64>)> {
        let live = self.live.read().expect("live lock");
        live.as_ref().map(|v| (v.version, v.feed_version))
    }

    /// The version `feed` marks covered, read (a scan of its log) only when the view has
    /// applied rows on a version past the one it is named by: rows published while a merge
    /// was writing that version, which a later feed commit marks covered.
    async fn covered_if_ahead(
        &self,
        feed: &DeltaTable,
        changes: &[arrow::record_batch::RecordBatch],
    ) -> Result<Option<u64>, PublishError> {
        let (named, position) = {
            let live = self.live.read().expect("live lock");
            let view = live.as_ref().expect("loaded");
            (view.version, view.position)
        };
        let to_versions = changes.iter().filter_map(|b| {
            let to = b.column_by_name("to_version")?;
            arrow::compute::max(to.as_any().downcast_ref::<arrow::array::Int64Array>()?)
        });
        let ahead = position.max(to_versions.max().unwrap_or_default().max(0) as u64) > named;
        match ahead {
            true => crate::publish::tags::covered_version(feed).await,
            false => Ok(None),
        }
    }

    /// How far the live view has applied the feed: `(position, as-of of the live rows on it)`.
    fn feed_position(&self) -> Option<(u64, Option<i64>)> {
        let live = self.live.read().expect("live lock");
        live.as_ref().map(|v| (v.position, v.live_as_of))
    }

    /// Load the latest `customer_tags` version whole, with the live changes on top of it.
    async fn load_whole(&self, tables: &mut Tables) -> Result<bool, PublishError> {
        let started = Instant::now();
        let table = open_published(&self.warehouse, TAGS_TABLE, None).await?;
        let base = Arc::new(TagIndex::from_table(&table).await?);
        let feed = match open_published(&self.warehouse, CHANGES_TABLE, None).await {
            Ok(feed) => Some(feed),
            Err(PublishError::NotFound { .. }) => None,
            Err(error) => return Err(error),
        };
        let mut view = LiveView::new(base.clone(), feed.as_ref().and_then(DeltaTable::version));
        if let Some(feed) = &feed {
            let changes = crate::publish::live::changes_after(feed, base.version, None).await?;
            let covered = crate::publish::tags::covered_version(feed).await?;
            view.apply(&changes, feed.version(), covered);
        }
        self.metrics.reload_seconds.observe(started.elapsed().as_secs_f64());
        self.metrics.snapshot_version.set(base.version as i64);
        self.metrics.snapshot_customers.set(base.customer_count() as i64);
        tracing::info!(
            version = view.version,
            feed_version = view.feed_version,
            customers = base.customer_count(),
            rows = base.row_count(),
            seconds = started.elapsed().as_secs_f64(),
            "serving a new snapshot"
        );
        tables.feed = feed;
        // The swap: new requests see the new index; the old one lives until its last reader ends.
        *self.current.write().expect("index lock") = Some(base);
        *self.live.write().expect("live lock") = Some(view);
        self.feed_seen
            .send_replace(tables.feed.as_ref().and_then(DeltaTable::version));
        Ok(true)
    }

    /// Start loading the merged version the live view stands on when it is newer than the
    /// loaded base (segment pages answer from the base), one load at a time.
    fn rebuild_base_if_behind(&self, tables: &mut Tables) {
        let Some(version) = self.live_position().map(|(v, _)| v) else {
            return;
        };
        let base_version = self.current().map(|b| b.version);
        if tables.rebuilding.is_some() || base_version >= Some(version) {
            return;
        }
        tables.rebuilding = Some(load_in_background(self.warehouse.clone(), version));
    }

    /// Serve a base loaded in the background once it is ready; true if it swapped.
    async fn swap_rebuilt_base(&self, tables: &mut Tables) -> Result<bool, PublishError> {
        if !tables.rebuilding.as_ref().is_some_and(|task| task.is_finished()) {
            return Ok(false);
        }
        let task = tables.rebuilding.take().expect("checked");
        let base = task.join().expect("loading a base does not panic")?;
        self.metrics.snapshot_version.set(base.version as i64);
        self.metrics.snapshot_customers.set(base.customer_count() as i64);
        tracing::info!(
            version = base.version,
            "segment pages now answer from a newer merged version"
        );
        if let Some(view) = self.live.write().expect("live lock").as_mut() {
            view.rebase(base.clone());
        }
        *self.current.write().expect("index lock") = Some(base);
        Ok(true)
    }

    /// Answer from the live view: `f` sees it whole (no reload applies rows meanwhile).
    pub(crate) fn with_live<T>(&self, f: impl FnOnce(&LiveView) -> T) -> Result<T, ApiError> {
        let live = self.live.read().expect("live lock");
        live.as_ref().map(f).ok_or(ApiError::NotReady)
    }
}

/// What the reload loop keeps between reloads.
#[derive(Default)]
struct Tables {
    feed: Option<DeltaTable>,
    rebuilding: Option<std::thread::JoinHandle<Result<SharedIndex, PublishError>>>,
}

/// Load a merged version (for segment pages) on a thread of its own at the lowest CPU
/// priority. At 1M customers indexing a version takes seconds of a core, which lookups
/// and a `follow` session beside this server need first: on the runtime's threads it
/// also held up requests, and at normal priority it slowed the next micro-batches.
fn load_in_background(warehouse: Location, version: u64) -> std::thread::JoinHandle<Result<SharedIndex, PublishError>> {
    at_lowest_priority("tagflow-base-load", move || async move {
        TagIndex::load(&warehouse, Some(version)).await.map(Arc::new)
    })
}

/// A running server.
pub struct Server {
    /// The address it listens on (the real port when the setting asked for port 0).
    pub addr: SocketAddr,
    /// The PostgreSQL front's address, when it was asked for.
    pub pg_addr: Option<SocketAddr>,
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
    let (listener, addr) = bind(settings.listen).await?;
    let (stop, stopped) = watch::channel(false);
    let state = Arc::new(AppState {
        warehouse,
        settings,
        current: RwLock::new(None),
        live: RwLock::new(None),
        pinned: Mutex::new(VecDeque::new()),
        metrics: Metrics::default(),
        feed_seen: watch::Sender::new(None),
        stopping: stopped.clone(),
        flows: overview::FlowCache::default(),
        pages: changes::Pages::default(),
    });
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop.send(true);
    });
    let pg_addr = match state.settings.pg.clone() {
        Some(pg) => Some(pg::start(state.clone(), pg, stopped.clone()).await?),
        None => None,
    };
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
    Ok(Server {
        addr,
        pg_addr,
        state,
        task,
    })
}

/// Listen on `addr`; also returns the bound address (the real port when `addr` asked for 0).
async fn bind(addr: SocketAddr) -> Result<(tokio::net::TcpListener, SocketAddr), ServeError> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| ServeError::Bind { addr, source })?;
    let bound = listener.local_addr().map_err(ServeError::Server)?;
    Ok((listener, bound))
}

/// Check for a new version every `reload_interval` until shutdown.
async fn reload_loop(state: Arc<AppState>, mut stopped: watch::Receiver<bool>) {
    let mut tables = Tables::default();
    let mut waiting_logged = false;
    loop {
        match state.reload(&mut tables).await {
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
                // Open the tables again next time (the view keeps serving meanwhile).
                tables = Tables::default();
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(state.settings.reload_interval) => {}
            _ = stopped.wait_for(|stop| *stop) => return,
        }
    }
}
