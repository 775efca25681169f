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

use crate::storage::Location;

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
    #[error("unreadable quarantine manifest {path}: {source}")]
    Manifest {
        path: String,
        #[source]
        source: serde_json::Error,
    },
}

/// What was quarantined from one landing file.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
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

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum EntryKind {
    File,
    Rows,
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

    /// Keep a copy of a whole rejected file.
    pub async fn put_file(
        &self,
        stream: &str,
        landing_relative: &str,
        source_url: &str,
        bytes: Bytes,
        reason: &str,
    ) -> Result<Entry, QuarantineError> {
        let data = self.path(landing_relative, "");
        self.put(&data, bytes).await?;
        let entry = Entry {
            stream: stream.to_string(),
            source: source_url.to_string(),
            kind: EntryKind::File,
            reason: reason.to_string(),
            rows: 0,
            data: self.warehouse.display(&data),
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
        let encode = |source| QuarantineError::Encode {
            path: data.to_string(),
            source,
        };
        let mut buffer = Vec::new();
        let mut writer = ArrowWriter::try_new(&mut buffer, rows.schema(), None).map_err(encode)?;
        writer.write(rows).map_err(encode)?;
        writer.close().map_err(encode)?;
        self.put(&data, Bytes::from(buffer)).await?;
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

    /// Every entry in the quarantine area, ordered by source.
    pub async fn list(&self) -> Result<Vec<Entry>, QuarantineError> {
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
            entries.push(entry);
        }
        entries.sort_by(|a, b| a.source.cmp(&b.source));
        Ok(entries)
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
