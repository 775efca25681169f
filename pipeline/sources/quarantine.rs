//! The quarantine area under `<warehouse>/quarantine/`: where rejected landing files and
//! rejected rows are kept, with the reason, for an operator to list and inspect.
//!
//! Owns: the quarantine layout and its manifests.
//! Must not: decide what is bad (that is `sources`) or touch landing files or Delta tables.
//!
//! Layout, keyed by the landing file so that a re-run overwrites rather than duplicates:
//! ```text
//! quarantine/<landing path>                      copy of a rejected file
//! quarantine/<landing path>.rows.parquet         rejected rows (+ _reason, _source_file, _row_number)
//! quarantine/<landing path>.quarantine.json      manifest: what, why, how many, when
//! ```

use arrow::record_batch::RecordBatch;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use object_store::{ObjectStoreExt, PutPayload};
use parquet::arrow::ArrowWriter;
use serde::{Deserialize, Serialize};

use crate::storage::erasure::{drop_customers, Forgotten};
use crate::storage::{parquet_batches, Location};

pub const QUARANTINE_DIR: &str = "quarantine";
const MANIFEST_SUFFIX: &str = ".quarantine.json";

#[derive(Debug, thiserror::Error)]
pub enum QuarantineError {
    #[error("quarantine storage error at {path}: {source}")]
    Storage {
        path: String,
        #[source]
        source: object_store::Error,
    },
    #[error("cannot encode quarantined rows for {path}: {source}")]
    Encode {
        path: String,
        #[source]
        source: parquet::errors::ParquetError,
    },
    #[error("cannot read quarantined rows {path}: {source}")]
    Decode {
        path: String,
        #[source]
        source: parquet::errors::ParquetError,
    },
    #[error("unreadable quarantine manifest {path}: {source}")]
    Manifest {
        path: String,
        #[source]
        source: serde_json::Error,
    },
}

/// What was quarantined from one landing file.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct Entry {
    pub stream: String,
    /// The landing file, as a URL.
    pub source: String,
    /// `file` (the whole file) or `rows`.
    pub kind: EntryKind,
    /// The reason (for a file) or the distinct reasons with counts (for rows).
    pub reason: String,
    /// Rows kept in quarantine (0 for a whole file that could not be read).
    pub rows: usize,
    /// Where the quarantined data is kept.
    pub data: String,
    pub quarantined_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum EntryKind {
    File,
    Rows,
}

/// What an erasure removed from the quarantine area.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QuarantineErasure {
    /// Quarantined rows removed.
    pub rows: usize,
    /// Copies of whole rejected files deleted.
    pub files: usize,
}

/// Handle on the quarantine area of one warehouse.
pub struct Quarantine<'a> {
    warehouse: &'a Location,
}

impl<'a> Quarantine<'a> {
    pub fn new(warehouse: &'a Location) -> Self {
        Quarantine { warehouse }
    }

    /// URL of the quarantine area, for reports.
    pub fn url(&self) -> String {
        self.warehouse.child_url(QUARANTINE_DIR).to_string()
    }

    /// Keep a copy of a whole rejected file, or (`bytes` none) only record it: a file that
    /// cannot be read cannot be checked against the suppression list, so once a customer is
    /// forgotten no copy is kept (the landing file itself stays for inspection).
    pub async fn put_file(
        &self,
        stream: &str,
        landing_relative: &str,
        source_url: &str,
        bytes: Option<Bytes>,
        reason: &str,
    ) -> Result<Entry, QuarantineError> {
        let data = self.path(landing_relative, "");
        let (data, reason) = match bytes {
            Some(bytes) => {
                self.put(&data, bytes).await?;
                (self.warehouse.display(&data), reason.to_string())
            }
            None => (
                source_url.to_string(),
                format!("{reason} (no copy kept: the warehouse has forgotten customers)"),
            ),
        };
        let entry = Entry {
            stream: stream.to_string(),
            source: source_url.to_string(),
            kind: EntryKind::File,
            reason,
            rows: 0,
            data,
            quarantined_at: Utc::now(),
        };
        self.put_manifest(landing_relative, &entry).await?;
        Ok(entry)
    }

    /// Keep rejected rows of a file (the batch carries `_reason` and provenance columns).
    pub async fn put_rows(
        &self,
        stream: &str,
        landing_relative: &str,
        source_url: &str,
        rows: &RecordBatch,
        reason_summary: &str,
    ) -> Result<Entry, QuarantineError> {
        let data = self.path(landing_relative, ".rows.parquet");
        self.put(&data, self.encode(&data, rows)?).await?;
        let entry = Entry {
            stream: stream.to_string(),
            source: source_url.to_string(),
            kind: EntryKind::Rows,
            reason: reason_summary.to_string(),
            rows: rows.num_rows(),
            data: self.warehouse.display(&data),
            quarantined_at: Utc::now(),
        };
        self.put_manifest(landing_relative, &entry).await?;
        Ok(entry)
    }

    /// Remove the `forgotten` customers from the quarantine area: their rows from each
    /// `.rows.parquet` (rewritten without them, or deleted when none is left), and the copy
    /// of a whole rejected file that holds one of them (deleted: a rejected file cannot be
    /// rewritten row by row). Manifests say what was removed, never whose.
    pub async fn erase(&self, forgotten: &Forgotten) -> Result<QuarantineErasure, QuarantineError> {
        let mut erased = QuarantineErasure::default();
        for (manifest, mut entry) in self.manifests().await? {
            let landing_relative = manifest
                .strip_prefix(&format!("{QUARANTINE_DIR}/"))
                .and_then(|m| m.strip_suffix(MANIFEST_SUFFIX))
                .unwrap_or_default()
                .to_string();
            let data = match entry.kind {
                EntryKind::File => self.path(&landing_relative, ""),
                EntryKind::Rows => self.path(&landing_relative, ".rows.parquet"),
            };
            let Some(bytes) = self.get(&data).await? else {
                continue;
            };
            match entry.kind {
                EntryKind::File => {
                    if super::forgotten_in(bytes, forgotten).is_empty() {
                        continue;
                    }
                    self.delete(&data).await?;
                    entry.reason = format!("{} (copy deleted by an erasure)", entry.reason);
                    erased.files += 1;
                }
                EntryKind::Rows => {
                    let (schema, batches) = parquet_batches(bytes).map_err(|source| QuarantineError::Decode {
                        path: self.warehouse.display(&data),
                        source,
                    })?;
                    let mut kept = batches;
                    let removed = drop_customers(&mut kept, |id| forgotten.contains(id));
                    if removed == 0 {
                        continue;
                    }
                    let rows = arrow::compute::concat_batches(&schema, &kept).expect("same schema");
                    match rows.num_rows() {
                        0 => self.delete(&data).await?,
                        _ => self.put(&data, self.encode(&data, &rows)?).await?,
                    }
                    entry.rows = rows.num_rows();
                    entry.reason = format!("{} ({removed} rows removed by an erasure)", entry.reason);
                    erased.rows += removed;
                }
            }
            self.put_manifest(&landing_relative, &entry).await?;
        }
        Ok(erased)
    }

    /// Every entry in the quarantine area, ordered by source.
    pub async fn list(&self) -> Result<Vec<Entry>, QuarantineError> {
        let mut entries: Vec<Entry> = self.manifests().await?.into_iter().map(|(_, e)| e).collect();
        entries.sort_by(|a, b| a.source.cmp(&b.source));
        Ok(entries)
    }

    /// Every manifest (its path relative to the warehouse) with its entry.
    async fn manifests(&self) -> Result<Vec<(String, Entry)>, QuarantineError> {
        let root = self.warehouse.path(QUARANTINE_DIR);
        let store = &self.warehouse.store;
        let objects = self
            .warehouse
            .list_under(&root)
            .await
            .map_err(|source| QuarantineError::Storage {
                path: root.to_string(),
                source,
            })?;
        let mut entries = Vec::new();
        for meta in objects
            .iter()
            .filter(|m| m.location.as_ref().ends_with(MANIFEST_SUFFIX))
        {
            let path = meta.location.to_string();
            let storage = |source| QuarantineError::Storage {
                path: path.clone(),
                source,
            };
            let bytes = store
                .get(&meta.location)
                .await
                .map_err(storage)?
                .bytes()
                .await
                .map_err(storage)?;
            let entry: Entry =
                serde_json::from_slice(&bytes).map_err(|source| QuarantineError::Manifest { path, source })?;
            entries.push((self.warehouse.relative(&meta.location).unwrap_or_default(), entry));
        }
        Ok(entries)
    }

    async fn get(&self, path: &object_store::path::Path) -> Result<Option<Bytes>, QuarantineError> {
        let failed = |source| QuarantineError::Storage {
            path: self.warehouse.display(path),
            source,
        };
        match self.warehouse.store.get(path).await {
            Ok(result) => Ok(Some(result.bytes().await.map_err(failed)?)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(source) => Err(failed(source)),
        }
    }

    async fn delete(&self, path: &object_store::path::Path) -> Result<(), QuarantineError> {
        match self.warehouse.store.delete(path).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(source) => Err(QuarantineError::Storage {
                path: self.warehouse.display(path),
                source,
            }),
        }
    }

    fn encode(&self, data: &object_store::path::Path, rows: &RecordBatch) -> Result<Bytes, QuarantineError> {
        let encode = |source| QuarantineError::Encode {
            path: data.to_string(),
            source,
        };
        let mut buffer = Vec::new();
        let mut writer = ArrowWriter::try_new(&mut buffer, rows.schema(), None).map_err(encode)?;
        writer.write(rows).map_err(encode)?;
        writer.close().map_err(encode)?;
        Ok(Bytes::from(buffer))
    }

    fn path(&self, landing_relative: &str, suffix: &str) -> object_store::path::Path {
        self.warehouse
            .path(&format!("{QUARANTINE_DIR}/{landing_relative}{suffix}"))
    }

    async fn put_manifest(&self, landing_relative: &str, entry: &Entry) -> Result<(), QuarantineError> {
        let path = self.path(landing_relative, MANIFEST_SUFFIX);
        let json = serde_json::to_vec_pretty(entry).expect("entry serialises");
        self.put(&path, Bytes::from(json)).await
    }

    async fn put(&self, path: &object_store::path::Path, bytes: Bytes) -> Result<(), QuarantineError> {
        self.warehouse
            .store
            .put(path, PutPayload::from(bytes))
            .await
            .map(|_| ())
            .map_err(|source| QuarantineError::Storage {
                path: self.warehouse.display(path),
                source,
            })
    }
}
