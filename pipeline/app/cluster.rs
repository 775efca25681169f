//! `tagflow cluster scheduler` and `tagflow cluster executor`: the processes of an Apache
//! DataFusion Ballista cluster, on which `run --full` and `backfill` run their jobs
//! (`--engine df://host:port`). They are Ballista's own scheduler and executor (crates
//! `ballista-scheduler`, `ballista-executor`), started here so that they know tagflow's SQL
//! functions and read the landing zone and the warehouse with the same `[storage.*]`
//! options and credentials as every other tagflow process.
//!
//! Tasks are pulled: an executor asks the scheduler for work when it has a free slot, so an
//! executor needs the scheduler's address and one port of its own (its Flight service,
//! which serves shuffle partitions to other executors and results to the driver).
//!
//! Owns: the two processes' setup and lifetime. Must not: plan or run jobs (the driver's
//! `jobs::engine` submits them; Ballista runs them).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use ballista_core::config::TaskSchedulingPolicy;
use ballista_executor::executor_process::{start_executor_process, ExecutorProcessConfig};
use ballista_scheduler::cluster::BallistaCluster;
use ballista_scheduler::config::SchedulerConfig;
use ballista_scheduler::scheduler_process::{create_scheduler, start_grpc_service_with_listener};
use ballista_scheduler::scheduler_server::SchedulerServer;
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion_proto::protobuf::{LogicalPlanNode, PhysicalPlanNode};
use tracing::info;

use crate::config::Settings;
use crate::jobs::codec;
use crate::jobs::engine::{cluster_session_state, executor_functions};
use crate::storage::object_store_registry;

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{what}: {message}")]
    Invalid { what: &'static str, message: String },
    #[error("the {process} stopped: {message}")]
    Failed { process: &'static str, message: String },
}

/// A scheduler bound to its address, not serving yet.
pub struct Scheduler {
    pub addr: SocketAddr,
    listener: tokio::net::TcpListener,
    server: SchedulerServer<LogicalPlanNode, PhysicalPlanNode>,
}

impl Scheduler {
    /// Bind `listen` (port 0 picks a free port) and set up a scheduler whose sessions know
    /// tagflow's functions and `settings`' storage; an executor silent for
    /// `executor_timeout` is taken as lost (its tasks run again elsewhere).
    pub async fn bind(
        settings: &Settings,
        listen: SocketAddr,
        executor_timeout: std::time::Duration,
    ) -> Result<Self, ClusterError> {
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .map_err(|source| ClusterError::Bind {
                addr: listen.to_string(),
                source,
            })?;
        let addr = listener.local_addr().map_err(|source| ClusterError::Bind {
            addr: listen.to_string(),
            source,
        })?;
        let failed = |e: ballista_core::error::BallistaError| ClusterError::Failed {
            process: "scheduler",
            message: e.to_string(),
        };
        let runtime = runtime(settings, None).map_err(|e| failed(e.into()))?;
        let timeout = executor_timeout.as_secs().max(1);
        let config = SchedulerConfig {
            executor_timeout_seconds: timeout,
            // Look for lost executors often enough to honour a short timeout.
            expire_dead_executor_interval_seconds: (timeout / 3).clamp(1, 15),
            override_logical_codec: Some(codec::logical()),
            override_physical_codec: Some(codec::physical()),
            ..SchedulerConfig::default()
        }
        .with_scheduler_policy(TaskSchedulingPolicy::PullStaged)
        .with_hostname(addr.ip().to_string())
        .with_port(addr.port())
        .with_override_session_builder(Arc::new(move |config| cluster_session_state(config, runtime.clone())));
        let cluster = BallistaCluster::new_from_config(&config).await.map_err(failed)?;
        let server = create_scheduler(cluster, Arc::new(config)).await.map_err(failed)?;
        Ok(Scheduler { addr, listener, server })
    }

    /// Serve until `stop` completes (SIGINT, SIGTERM).
    pub async fn serve(self, stop: impl std::future::Future<Output = ()>) -> Result<(), ClusterError> {
        info!(addr = %self.addr, "cluster scheduler serving");
        tokio::select! {
            served = start_grpc_service_with_listener(self.listener, self.server) => served.map_err(|e| ClusterError::Failed {
                process: "scheduler",
                message: e.to_string(),
            }),
            () = stop => {
                info!("cluster scheduler stopping");
                Ok(())
            }
        }
    }
}

/// How an executor joins its cluster.
pub struct ExecutorOptions {
    /// The scheduler, `host:port`.
    pub scheduler: String,
    /// Where the executor's Flight service listens (a fixed port: the scheduler hands it to
    /// other executors and to drivers).
    pub listen: SocketAddr,
    /// The host others reach it by (default: the listen address's).
    pub advertise: Option<String>,
    /// Tasks run at once (default: the cores).
    pub slots: usize,
    /// Where shuffle files are written (default: a temporary folder).
    pub work_dir: Option<PathBuf>,
    /// Seconds to keep trying to reach the scheduler at start.
    pub connect_timeout_secs: u16,
}

/// Run an executor until SIGINT or SIGTERM (Ballista's own handlers) or until the scheduler
/// tells it to stop.
pub async fn executor(settings: &Settings, options: ExecutorOptions) -> Result<(), ClusterError> {
    let (scheduler_host, scheduler_port) = split_host_port(&options.scheduler)?;
    if options.listen.port() == 0 {
        return Err(ClusterError::Invalid {
            what: "--listen",
            message: "an executor needs a fixed port (the scheduler hands it to other executors and drivers)".into(),
        });
    }
    let failed = |e: datafusion::error::DataFusionError| ClusterError::Failed {
        process: "executor",
        message: e.to_string(),
    };
    let work_dir = options.work_dir.as_ref().map(|p| p.to_string_lossy().into_owned());
    let runtime = runtime(settings, work_dir.clone()).map_err(failed)?;
    let config = ExecutorProcessConfig {
        bind_host: options.listen.ip().to_string(),
        external_host: Some(
            options
                .advertise
                .clone()
                .unwrap_or_else(|| options.listen.ip().to_string()),
        ),
        port: options.listen.port(),
        scheduler_host,
        scheduler_port,
        scheduler_connect_timeout_seconds: options.connect_timeout_secs,
        vcores: options.slots,
        task_scheduling_policy: TaskSchedulingPolicy::PullStaged,
        work_dir,
        print_thread_info: false,
        override_function_registry: Some(Arc::new(executor_functions())),
        override_runtime_producer: Some(Arc::new(move |_| Ok(runtime.clone()))),
        override_logical_codec: Some(codec::logical()),
        override_physical_codec: Some(codec::physical()),
        ..Default::default()
    };
    info!(
        id = %config.executor_id,
        listen = %options.listen,
        scheduler = %options.scheduler,
        slots = options.slots,
        "cluster executor starting"
    );
    start_executor_process(Arc::new(config))
        .await
        .map_err(|e| ClusterError::Failed {
            process: "executor",
            message: e.to_string(),
        })
}

/// The runtime a cluster process runs tasks with: `settings`' landing zone and warehouse
/// stores, and spill files under `work_dir`.
fn runtime(
    settings: &Settings,
    work_dir: Option<String>,
) -> Result<Arc<datafusion::execution::runtime_env::RuntimeEnv>, datafusion::error::DataFusionError> {
    let locations: Vec<_> = [settings.landing.as_ref(), settings.warehouse.as_ref()]
        .into_iter()
        .flatten()
        .collect();
    let mut builder = RuntimeEnvBuilder::new().with_object_store_registry(object_store_registry(&locations));
    if let Some(dir) = work_dir {
        builder = builder.with_temp_file_path(dir);
    }
    builder.build_arc()
}

/// `host:port` of a scheduler (a `df://` prefix is accepted).
fn split_host_port(text: &str) -> Result<(String, u16), ClusterError> {
    let invalid = |message: String| ClusterError::Invalid {
        what: "--scheduler",
        message,
    };
    let bare = text.strip_prefix("df://").unwrap_or(text);
    let (host, port) = bare
        .rsplit_once(':')
        .ok_or_else(|| invalid(format!("'{text}' is not host:port")))?;
    let port = port.parse().map_err(|_| invalid(format!("'{port}' is not a port")))?;
    Ok((host.to_string(), port))
}
