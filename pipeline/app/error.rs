//! The top-level error of a tagflow command and its process exit code: the one place where
//! layer errors become exit codes (documented in the README).

use crate::app::cluster::ClusterError;
use crate::app::forget::ForgetError;
use crate::app::preview::PreviewError;
use crate::config::ConfigError;
use crate::generate::GenerateError;
use crate::jobs::{CatalogError, GateError, JobError};
use crate::publish::runs::Failure;
use crate::publish::PublishError;
use crate::serve::ServeError;
use crate::sources::quarantine::QuarantineError;
use crate::sources::schema::SchemaError;
use crate::sources::SourceError;
use crate::state::StateError;
use crate::storage::erasure::ErasureError;
use crate::storage::lock::LockError;
use crate::storage::{self, Fault, StorageError};

/// Process exit codes.
pub mod exit {
    pub const OK: i32 = 0;
    /// An unexpected internal failure.
    pub const INTERNAL: i32 = 1;
    /// Bad flags, config file, schemas or SQL catalog: nothing ran.
    pub const CONFIG: i32 = 2;
    /// The data made a job fail or there is nothing to read: nothing was published.
    pub const INPUT: i32 = 3;
    /// A quality gate failed (a tag's declared checks, or a built-in one): nothing was
    /// published, the previous version stays live.
    pub const GATE: i32 = 4;
    /// Storage could not be listed, read or written (unreachable, or failing after the
    /// retries ran out): nothing was published. Worth retrying later.
    pub const STORAGE: i32 = 5;
    /// Another run holds the warehouse lock: nothing was done.
    pub const LOCKED: i32 = 6;
    /// The object store refused the credentials: nothing was done. Retrying will not help.
    pub const DENIED: i32 = 7;
    /// The bucket does not exist: nothing was done. Retrying will not help.
    pub const NO_BUCKET: i32 = 8;
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error(transparent)]
    Schema(#[from] SchemaError),
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error(transparent)]
    Quarantine(#[from] QuarantineError),
    #[error(transparent)]
    Job(#[from] JobError),
    #[error(transparent)]
    Gate(#[from] GateError),
    /// Boxed: a Delta error is the largest of all, and every `Result` of a command would
    /// carry its size.
    #[error(transparent)]
    Publish(Box<PublishError>),
    #[error(transparent)]
    Preview(#[from] PreviewError),
    #[error(transparent)]
    Generate(#[from] GenerateError),
    #[error(transparent)]
    Lock(#[from] LockError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Serve(#[from] ServeError),
    #[error(transparent)]
    Forget(#[from] ForgetError),
    #[error(transparent)]
    Erasure(#[from] ErasureError),
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    /// The SIGINT/SIGTERM handlers could not be registered.
    #[error("cannot catch SIGINT and SIGTERM: {0}")]
    Signals(#[source] std::io::Error),
}

impl From<PublishError> for Error {
    fn from(error: PublishError) -> Self {
        Error::Publish(Box::new(error))
    }
}

impl Error {
    pub fn exit_code(&self) -> i32 {
        // A storage fault decides, whichever layer met it.
        let fault = match self {
            Error::Storage(error) => error.fault(),
            _ => storage::fault(self),
        };
        match fault {
            Some(Fault::Denied) => return exit::DENIED,
            Some(Fault::MissingBucket) => return exit::NO_BUCKET,
            Some(Fault::Unreachable) => return exit::STORAGE,
            None => {}
        }
        match self {
            Error::Storage(StorageError::Unavailable { .. }) => exit::STORAGE,
            Error::Config(ConfigError::Storage(_)) | Error::Storage(_) => exit::CONFIG,
            Error::Config(_) | Error::Schema(_) | Error::Catalog(_) => exit::CONFIG,
            Error::Source(SourceError::Task(_)) => exit::INTERNAL,
            Error::Source(SourceError::NoFiles { .. }) => exit::INPUT,
            Error::Source(_) | Error::Quarantine(_) => exit::STORAGE,
            Error::Job(JobError::Check { .. }) | Error::Gate(_) => exit::GATE,
            // The cluster could not be reached, lost a job past its retries, or its inputs
            // could not be staged: nothing was published, worth retrying.
            Error::Job(JobError::Cluster { .. } | JobError::Engine(_)) => exit::STORAGE,
            Error::Job(_) => exit::INPUT,
            Error::Publish(error)
                if matches!(
                    **error,
                    PublishError::NotFound { .. } | PublishError::NoVersionAt { .. } | PublishError::Unmerged { .. }
                ) =>
            {
                exit::INPUT
            }
            Error::Publish(_) => exit::STORAGE,
            Error::Generate(GenerateError::InvalidOptions(_)) => exit::CONFIG,
            Error::Generate(_) => exit::STORAGE,
            Error::Lock(LockError::Held { .. }) => exit::LOCKED,
            Error::Lock(_) => exit::STORAGE,
            Error::State(_) => exit::STORAGE,
            Error::Preview(PreviewError::NoState { .. }) => exit::INPUT,
            Error::Preview(_) => exit::CONFIG,
            Error::Serve(ServeError::Bind { .. }) => exit::CONFIG,
            Error::Serve(_) | Error::Signals(_) => exit::INTERNAL,
            Error::Forget(ForgetError::Unknown { .. }) => exit::INPUT,
            Error::Forget(_) => exit::CONFIG,
            Error::Erasure(_) => exit::STORAGE,
            Error::Cluster(ClusterError::Bind { .. } | ClusterError::Invalid { .. }) => exit::CONFIG,
            Error::Cluster(ClusterError::Failed { .. }) => exit::INTERNAL,
        }
    }
}

impl Error {
    /// What `job_runs` records of a run that failed with this error.
    pub fn run_failure(&self) -> Failure<'_> {
        Failure {
            gate: self.exit_code() == exit::GATE,
            exit_code: self.exit_code(),
            message: self.to_string(),
            failed_checks: match self {
                Error::Gate(gate) => Some(&gate.report.failures),
                _ => None,
            },
        }
    }
}
