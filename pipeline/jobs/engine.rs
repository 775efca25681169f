//! Where the jobs' SQL runs: the embedded DataFusion engine in this process (the default),
//! or an Apache DataFusion Ballista cluster (`--engine df://host:port`, `[engine] url`,
//! `TAGFLOW_ENGINE`) for the jobs of full recomputes and backfills.
//!
//! On a cluster a job's SQL is planned by the scheduler and run by the executors, which read
//! its inputs from files: Ballista ships plans, not the driver's memory. The state tables
//! of a full rebuild are files the executors wrote ([`super::rebuild`]); any other input
//! (a job output that other jobs read, a state built in memory) is staged first, as an
//! Arrow IPC file under `<warehouse>/_tagflow/cluster/<run>/`. A table is registered by its
//! list of files (never a folder listing); the run's owner deletes the folder when its
//! jobs are done. Every process of a cluster uses tagflow's codecs ([`super::codec`]).
//!
//! Owns: the engine setting, the cluster's reachability check, the client session a job runs
//! in on a cluster, the staging of its inputs, and what every process of a cluster must
//! share to plan and run tagflow's SQL (its functions, [`cluster_session_state`]).
//! Must not: start or stop cluster processes (the application does) or decide which jobs run
//! where ([`super::exec`] does).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use ballista::prelude::{SessionConfigExt, SessionContextExt};
use datafusion::datasource::file_format::arrow::ArrowFormat;
use datafusion::datasource::listing::{ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl};
use datafusion::error::DataFusionError;
use datafusion::execution::SessionStateBuilder;
use datafusion::prelude::{SessionConfig, SessionContext};
use futures::{StreamExt, TryStreamExt};
use object_store::ObjectStoreExt;
use tracing::{info, warn};
use url::Url;

use crate::state::tables::StateTable;
use crate::storage::units::Bounded;
use crate::storage::{arrow_file_bytes, Location};

/// The default port of a Ballista scheduler.
pub const DEFAULT_PORT: u16 = 50050;
/// How long the reachability check waits for the scheduler to accept a connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// The folder under the warehouse where runs stage the files executors read.
pub const STAGING_DIR: &str = "_tagflow/cluster";

/// Where jobs run.
#[derive(Debug, Clone, Default)]
pub enum Engine {
    /// In this process (DataFusion).
    #[default]
    Embedded,
    /// On a Ballista cluster.
    Cluster(Cluster),
}

/// A Ballista cluster, by its scheduler's address.
#[derive(Debug, Clone, PartialEq)]
pub struct Cluster {
    /// `df://host:port`, as the user wrote it (port filled in).
    pub url: String,
    host: String,
    port: u16,
    /// Every shuffle read goes through the executors' Flight service, even between tasks of
    /// one executor (`[engine] remote_shuffle_reads`; tests use it to make every shuffle
    /// cross the network).
    pub remote_shuffle_reads: bool,
    /// Partitions of a query's stages (`[engine] partitions`; `None`: the driver's cores).
    pub partitions: Option<usize>,
}

/// `[engine] partitions`: by default this machine's cores (DataFusion's own default).
pub fn partitions() -> Bounded<usize> {
    Bounded {
        default: std::thread::available_parallelism().map_or(1, |n| n.get()),
        min: 1,
        max: 4096,
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("invalid engine '{url}': {message} (expected df://host:port, e.g. df://127.0.0.1:{DEFAULT_PORT})")]
    Invalid { url: String, message: String },
    #[error("cannot reach the cluster's scheduler at {url}: {detail}; nothing was run")]
    Unreachable { url: String, detail: String },
    /// Reading a stream's landing files, or writing the state from them, failed on the
    /// cluster: nothing was committed or published.
    #[error("building the state from stream '{stream}' failed on the cluster at {url}: {source}")]
    Rebuild {
        stream: String,
        url: String,
        #[source]
        source: Box<DataFusionError>,
    },
    #[error("cannot stage the inputs of the cluster's jobs at {path}: {source}")]
    Staging {
        path: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl Engine {
    /// Parse an engine setting: `embedded`, or a cluster's `df://host[:port]`.
    pub fn parse(text: &str, remote_shuffle_reads: bool) -> Result<Self, EngineError> {
        let invalid = |message: &str| EngineError::Invalid {
            url: text.to_string(),
            message: message.to_string(),
        };
        if text == "embedded" {
            return Ok(Engine::Embedded);
        }
        let url = Url::parse(text).map_err(|e| invalid(&e.to_string()))?;
        if url.scheme() != "df" {
            return Err(invalid("the scheme must be df://"));
        }
        let host = url
            .host_str()
            .filter(|h| !h.is_empty())
            .ok_or_else(|| invalid("no host"))?;
        if !(url.path().is_empty() || url.path() == "/") || url.query().is_some() {
            return Err(invalid("a scheduler's address has no path or query"));
        }
        let port = url.port().unwrap_or(DEFAULT_PORT);
        Ok(Engine::Cluster(Cluster {
            url: format!("df://{host}:{port}"),
            host: host.to_string(),
            port,
            remote_shuffle_reads,
            partitions: None,
        }))
    }
}

impl Cluster {
    /// Check that the scheduler accepts connections, before anything runs.
    pub async fn check(&self) -> Result<(), EngineError> {
        let address = (self.host.as_str(), self.port);
        let unreachable = |detail: String| EngineError::Unreachable {
            url: self.url.clone(),
            detail,
        };
        match tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(address)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(error)) => Err(unreachable(error.to_string())),
            Err(_) => Err(unreachable(format!("no answer in {CONNECT_TIMEOUT:?}"))),
        }
    }

    /// A client session on the cluster, with tagflow's functions, named for `job`.
    pub async fn context(&self, job: &str) -> Result<SessionContext, DataFusionError> {
        let mut config = SessionConfig::new_with_ballista();
        if let Some(partitions) = self.partitions {
            config = config.with_target_partitions(partitions);
        }
        let config = config
            .with_ballista_job_name(&format!("tagflow {job}"))
            .with_ballista_shuffle_reader_force_remote_read(self.remote_shuffle_reads)
            .with_ballista_logical_extension_codec(super::codec::logical())
            .with_ballista_physical_extension_codec(super::codec::physical());
        let state = SessionStateBuilder::new()
            .with_default_features()
            .with_config(config)
            .build();
        let ctx = SessionContext::remote_with_state(&self.url, state).await?;
        super::functions::register(&ctx);
        Ok(ctx)
    }
}

/// A table the executors read: its schema and its files' URLs.
#[derive(Debug, Clone)]
pub struct FileTable {
    pub schema: SchemaRef,
    pub files: Vec<String>,
}

impl FileTable {
    /// The table as a DataFusion listing table over exactly its files.
    pub fn provider(&self) -> Result<Arc<ListingTable>, DataFusionError> {
        let urls = self
            .files
            .iter()
            .map(ListingTableUrl::parse)
            .collect::<Result<Vec<_>, _>>()?;
        let options = ListingOptions::new(Arc::new(ArrowFormat)).with_file_extension(".arrow");
        let config = ListingTableConfig::new_with_multi_paths(urls)
            .with_listing_options(options)
            .with_schema(self.schema.clone());
        Ok(Arc::new(ListingTable::try_new(config)?))
    }
}

/// One run's jobs on a cluster: the cluster, and the files the run stages for its executors
/// under `<warehouse>/_tagflow/cluster/<run>/`.
pub struct ClusterRun {
    pub cluster: Cluster,
    pub(super) warehouse: Location,
    pub(super) run_id: String,
    /// The run's staging folder, relative to the warehouse.
    pub(super) dir: String,
    staged: std::sync::atomic::AtomicUsize,
    /// State tables the executors wrote ([`super::rebuild`]), read in place.
    pub(super) written: std::sync::Mutex<BTreeMap<String, FileTable>>,
}

impl ClusterRun {
    pub fn new(cluster: &Cluster, warehouse: &Location, run_id: &str) -> Self {
        ClusterRun {
            cluster: cluster.clone(),
            warehouse: warehouse.clone(),
            run_id: run_id.to_string(),
            dir: format!("{STAGING_DIR}/{run_id}"),
            staged: Default::default(),
            written: Default::default(),
        }
    }

    /// A state table as files: the segments the executors wrote, or else one staged file
    /// per segment. The cluster evaluates full runs and backfills only, whose state is
    /// built on it or in memory, with no segment of an earlier version (a stored one may
    /// also hold rows a later fold moved to a newer segment).
    pub async fn state_table(&self, name: &str, table: &StateTable) -> Result<FileTable, EngineError> {
        if let Some(written) = self.written.lock().expect("not poisoned").get(name) {
            return Ok(written.clone());
        }
        let mut files = Vec::with_capacity(table.segments.len());
        for segment in &table.segments {
            files.push(self.write(name, &table.schema, &segment.rows.to_batches()).await?);
        }
        Ok(FileTable {
            schema: table.schema.clone(),
            files,
        })
    }

    /// Rows (a job's output) as one staged file.
    pub async fn rows(
        &self,
        name: &str,
        schema: &SchemaRef,
        batches: &[RecordBatch],
    ) -> Result<FileTable, EngineError> {
        Ok(FileTable {
            schema: schema.clone(),
            files: vec![self.write(name, schema, batches).await?],
        })
    }

    /// Write `batches` as the next staged file of `name` and return its URL.
    async fn write(&self, name: &str, schema: &SchemaRef, batches: &[RecordBatch]) -> Result<String, EngineError> {
        let n = self.staged.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let relative = format!("{}/{name}/{n}.arrow", self.dir);
        let path = self.warehouse.path(&relative);
        let failed = |source: Box<dyn std::error::Error + Send + Sync>| EngineError::Staging {
            path: self.warehouse.display(&path),
            source,
        };
        let (schema, batches, compress) = (schema.clone(), batches.to_vec(), !self.warehouse.is_local());
        let bytes = tokio::task::spawn_blocking(move || arrow_file_bytes(schema, &batches, compress))
            .await
            .map_err(|e| failed(Box::new(e)))?
            .map_err(|e| failed(Box::new(e)))?;
        self.warehouse
            .store
            .put(&path, bytes.into())
            .await
            .map_err(|e| failed(Box::new(e)))?;
        Ok(self.warehouse.display(&path))
    }

    /// Delete the staged files (best effort: a leftover is only disk space, and the next
    /// run of the same id never comes).
    pub async fn remove(&self) {
        let prefix = self.warehouse.path(&self.dir);
        let removed = async {
            let listed = self.warehouse.list_under(&prefix).await?;
            futures::stream::iter(listed)
                .map(|meta| async move { self.warehouse.store.delete(&meta.location).await })
                .buffer_unordered(16)
                .try_collect::<Vec<()>>()
                .await
        };
        match removed.await {
            Ok(files) => info!(files = files.len(), "staged cluster inputs removed"),
            Err(error) => {
                warn!(%error, dir = %self.warehouse.display(&prefix), "cannot remove the staged cluster inputs")
            }
        }
    }
}

/// The session state a cluster's scheduler builds for a job: Ballista's default, with
/// tagflow's functions and `runtime`'s object stores (those of the landing zone and the
/// warehouse this process was given).
pub fn cluster_session_state(
    config: SessionConfig,
    runtime: Arc<datafusion::execution::runtime_env::RuntimeEnv>,
) -> Result<datafusion::execution::SessionState, DataFusionError> {
    let state = ballista_core::utils::default_session_builder(config)?;
    let (scalars, aggregates) = super::functions::all();
    let mut state = SessionStateBuilder::new_from_existing(state)
        .with_runtime_env(runtime)
        .build();
    use datafusion::execution::FunctionRegistry;
    for f in scalars {
        state.register_udf(Arc::new(f))?;
    }
    for f in aggregates {
        state.register_udaf(Arc::new(f))?;
    }
    Ok(state)
}

/// Tagflow's functions in the form a Ballista executor takes them.
pub fn executor_functions() -> ballista_core::registry::BallistaFunctionRegistry {
    let mut registry = ballista_core::registry::BallistaFunctionRegistry::default();
    let (scalars, aggregates) = super::functions::all();
    for f in scalars {
        registry.scalar_functions.insert(f.name().to_string(), Arc::new(f));
    }
    for f in aggregates {
        registry.aggregate_functions.insert(f.name().to_string(), Arc::new(f));
    }
    registry
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster_url(text: &str) -> String {
        match Engine::parse(text, false).expect(text) {
            Engine::Cluster(cluster) => cluster.url,
            Engine::Embedded => panic!("{text} is a cluster"),
        }
    }

    #[test]
    fn engine_settings_name_a_scheduler_or_the_embedded_engine() {
        assert!(matches!(Engine::parse("embedded", false), Ok(Engine::Embedded)));
        assert_eq!(cluster_url("df://sched:7000"), "df://sched:7000");
        assert_eq!(cluster_url("df://10.0.0.5"), format!("df://10.0.0.5:{DEFAULT_PORT}"));
        for bad in [
            "http://sched:50050",
            "df://",
            "df://sched:1/jobs",
            "sched:50050",
            "df://sched?x=1",
        ] {
            let error = Engine::parse(bad, false).expect_err(bad).to_string();
            assert!(
                error.contains(bad) && error.contains("df://host:port"),
                "{bad}: {error}"
            );
        }
    }
}
