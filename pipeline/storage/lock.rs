//! The warehouse run lock: at most one tagflow run writes a warehouse at a time.
//!
//! Owns: `<warehouse>/_tagflow/run.lock` and its recovery markers.
//! Must not: touch tables or landing files.
//!
//! Acquiring is an atomic create of the lock object (conditional put: local files and S3
//! alike). The holder renews `expires_at` every `ttl / 3` while it runs. A lock is stale,
//! and may be taken over, when it expired or when its holder ran on this host and that
//! process is gone (a killed run). Taking over is itself guarded: only the process that
//! creates the takeover marker for that stale lock's id may replace it, so two recoverers
//! never both believe they hold the lock.

use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use object_store::path::Path;
use object_store::{ObjectStoreExt, PutMode, PutOptions, PutPayload};
use serde::{Deserialize, Serialize};
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::storage::units::Bounded;
use crate::storage::Location;

const LOCK_FILE: &str = "_tagflow/run.lock";

/// `lock_ttl_secs`: how long a lock lives without renewal. A run renews it every third of
/// that; a killed run's lock frees at once on the same host and after this long elsewhere.
pub const LOCK_TTL_SECS: Bounded<u64> = Bounded {
    default: 600,
    min: 3,
    max: 86_400,
};

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("another run holds the warehouse lock {url}: run {} (pid {} on {}) since {}, until {} unless renewed", holder.run_id, holder.pid, holder.host, holder.acquired_at.to_rfc3339(), holder.expires_at.to_rfc3339())]
    Held { url: String, holder: Box<LockInfo> },
    #[error("warehouse lock {url}: {source}")]
    Storage {
        url: String,
        #[source]
        source: object_store::Error,
    },
    #[error("warehouse lock {url} is unreadable: {message}")]
    Corrupt { url: String, message: String },
}

/// What the lock object says about its holder.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LockInfo {
    pub run_id: String,
    pub pid: u32,
    pub host: String,
    pub acquired_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
}

impl LockInfo {
    fn is_stale(&self, now: DateTime<Utc>, host: &str) -> bool {
        now > self.expires_at || (self.host == host && !process_alive(self.pid))
    }
}

/// A held lock. Call [`RunLock::release`] when done; a process that dies without releasing
/// leaves a lock that the next run recovers.
pub struct RunLock {
    warehouse: Location,
    path: Path,
    info: LockInfo,
    renewer: JoinHandle<()>,
}

impl RunLock {
    /// Take the lock or fail with [`LockError::Held`] naming the holder.
    pub async fn acquire(warehouse: &Location, run_id: &str, ttl: Duration) -> Result<RunLock, LockError> {
        let path = warehouse.path(LOCK_FILE);
        let url = warehouse.display(&path);
        let storage = |source| LockError::Storage {
            url: url.clone(),
            source,
        };
        let host = host_name();
        let info = LockInfo {
            run_id: run_id.to_string(),
            pid: std::process::id(),
            host: host.clone(),
            acquired_at: Utc::now(),
            expires_at: expiry(ttl),
        };
        for _ in 0..2 {
            match create(warehouse, &path, &info).await {
                Ok(()) => {
                    info!(lock = %url, "warehouse lock acquired");
                    let renewer = spawn_renewer(warehouse.clone(), path.clone(), info.clone(), ttl);
                    return Ok(RunLock {
                        warehouse: warehouse.clone(),
                        path,
                        info,
                        renewer,
                    });
                }
                Err(object_store::Error::AlreadyExists { .. }) => {}
                Err(source) => return Err(storage(source)),
            }
            let holder = read(warehouse, &path, &url).await?;
            let Some(holder) = holder else { continue }; // released meanwhile: try again
            if !holder.is_stale(Utc::now(), &host) {
                return Err(LockError::Held {
                    url,
                    holder: Box::new(holder),
                });
            }
            // Only one recoverer may replace this stale lock: the one that creates its marker.
            let marker = warehouse.path(&format!("{LOCK_FILE}.takeover-{}", holder.run_id));
            match create(warehouse, &marker, &info).await {
                Ok(()) => {
                    warn!(lock = %url, stale_run = %holder.run_id, pid = holder.pid, host = %holder.host, "recovering a stale warehouse lock");
                    warehouse.store.delete(&path).await.map_err(storage)?;
                }
                Err(object_store::Error::AlreadyExists { .. }) => {
                    return Err(LockError::Held {
                        url,
                        holder: Box::new(holder),
                    })
                }
                Err(source) => return Err(storage(source)),
            }
        }
        let holder = read(warehouse, &path, &url).await?.unwrap_or(info);
        Err(LockError::Held {
            url,
            holder: Box::new(holder),
        })
    }

    pub fn info(&self) -> &LockInfo {
        &self.info
    }

    /// Give the lock up (only if it is still ours).
    pub async fn release(self) -> Result<(), LockError> {
        self.renewer.abort();
        let url = self.warehouse.display(&self.path);
        if let Some(current) = read(&self.warehouse, &self.path, &url).await? {
            if current.run_id == self.info.run_id {
                self.warehouse
                    .store
                    .delete(&self.path)
                    .await
                    .map_err(|source| LockError::Storage { url, source })?;
            }
        }
        Ok(())
    }
}

/// Read the holder, `None` if there is no lock.
async fn read(warehouse: &Location, path: &Path, url: &str) -> Result<Option<LockInfo>, LockError> {
    let bytes = match warehouse.store.get(path).await {
        Ok(result) => result.bytes().await,
        Err(object_store::Error::NotFound { .. }) => return Ok(None),
        Err(e) => Err(e),
    }
    .map_err(|source| LockError::Storage {
        url: url.to_string(),
        source,
    })?;
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| LockError::Corrupt {
            url: url.to_string(),
            message: e.to_string(),
        })
}

/// Path of the lock object under a warehouse (for tools and tests).
pub fn lock_path(warehouse: &Location) -> Path {
    warehouse.path(LOCK_FILE)
}

async fn create(warehouse: &Location, path: &Path, info: &LockInfo) -> Result<(), object_store::Error> {
    let body = Bytes::from(serde_json::to_vec_pretty(info).expect("lock info serialises"));
    let options = PutOptions {
        mode: PutMode::Create,
        ..Default::default()
    };
    warehouse
        .store
        .put_opts(path, PutPayload::from(body), options)
        .await
        .map(|_| ())
}

/// Renew `expires_at` every `ttl / 3` while the run goes on.
fn spawn_renewer(warehouse: Location, path: Path, mut info: LockInfo, ttl: Duration) -> JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(ttl / 3).await;
            info.expires_at = expiry(ttl);
            let body = Bytes::from(serde_json::to_vec_pretty(&info).expect("lock info serialises"));
            if let Err(error) = warehouse.store.put(&path, PutPayload::from(body)).await {
                warn!(%error, "cannot renew the warehouse lock");
            }
        }
    })
}

fn expiry(ttl: Duration) -> DateTime<Utc> {
    Utc::now() + chrono::TimeDelta::from_std(ttl).unwrap_or(chrono::TimeDelta::MAX / 2)
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "unknown".to_string())
}

/// Whether a process of this host is still running (Linux: `/proc/<pid>` exists).
fn process_alive(pid: u32) -> bool {
    if cfg!(target_os = "linux") {
        std::path::Path::new(&format!("/proc/{pid}")).exists()
    } else {
        true // elsewhere only expiry frees a lock
    }
}
