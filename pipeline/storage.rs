//! Storage locations: turns a `--landing` / `--warehouse` setting (a local path or an
//! object-store URL) into an [`ObjectStore`] plus a root prefix.
//!
//! Owns: URL parsing, the choice of object-store backend and its options.
//! Also the Parquet encode/decode helpers shared by the stages that keep their own files.
//! Must not: interpret any data; stages above decide what to read or write.

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use bytes::Bytes;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::errors::ParquetError;
use parquet::file::properties::WriterProperties;
use std::collections::BTreeMap;
use std::sync::Arc;

use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::ObjectStore;
use url::Url;

/// Errors turning a setting into a store.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("invalid location '{location}': {reason}")]
    InvalidLocation { location: String, reason: String },
    #[error("unsupported URL scheme '{scheme}' in '{location}' (supported: file://, s3://, or a local path)")]
    UnsupportedScheme { scheme: String, location: String },
    #[error("cannot configure object store for {url}: {source}")]
    Configure {
        url: String,
        #[source]
        source: object_store::Error,
    },
}

/// A resolved storage location: where it is, and how to talk to it.
#[derive(Clone)]
pub struct Location {
    /// Canonical URL (`file:///abs/path` or `s3://bucket/prefix`), without a trailing slash.
    pub url: Url,
    /// The store serving this location.
    pub store: Arc<dyn ObjectStore>,
    /// Root of the location inside `store`.
    pub prefix: Path,
    /// Backend options (for S3: endpoint, region, ...), passed on to delta-rs as well.
    pub options: BTreeMap<String, String>,
}

impl std::fmt::Debug for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Options may hold secrets: never print them.
        f.debug_struct("Location").field("url", &self.url.as_str()).finish()
    }
}

impl Location {
    /// Resolve a setting: a local path (relative paths are made absolute) or a URL.
    pub fn parse(location: &str, options: &BTreeMap<String, String>) -> Result<Self, StorageError> {
        let invalid = |reason: String| StorageError::InvalidLocation {
            location: location.to_string(),
            reason,
        };
        if location.trim().is_empty() {
            return Err(invalid("empty location".into()));
        }
        let url = match Url::parse(location) {
            Ok(url) if url.scheme().len() > 1 => url,
            // No scheme (or a Windows drive letter): a local path.
            _ => {
                let path = std::path::absolute(location).map_err(|e| invalid(e.to_string()))?;
                Url::from_directory_path(&path).map_err(|_| invalid("not an absolute path".into()))?
            }
        };
        let url = trim_trailing_slash(url);
        match url.scheme() {
            "file" => {
                let fs_path = url
                    .to_file_path()
                    .map_err(|_| invalid("file URL without a local path".into()))?;
                let prefix = Path::from_absolute_path(&fs_path).map_err(|e| invalid(e.to_string()))?;
                Ok(Location {
                    url,
                    store: Arc::new(LocalFileSystem::new()),
                    prefix,
                    options: options.clone(),
                })
            }
            "s3" | "s3a" => {
                let mut builder = object_store::aws::AmazonS3Builder::from_env().with_url(url.as_str());
                for (key, value) in options {
                    let key = key.parse().map_err(|e: object_store::Error| StorageError::Configure {
                        url: url.to_string(),
                        source: e,
                    })?;
                    builder = builder.with_config(key, value);
                }
                let store = builder.build().map_err(|e| StorageError::Configure {
                    url: url.to_string(),
                    source: e,
                })?;
                let prefix = Path::from(url.path().trim_start_matches('/'));
                Ok(Location {
                    url,
                    store: Arc::new(store),
                    prefix,
                    options: options.clone(),
                })
            }
            other => Err(StorageError::UnsupportedScheme {
                scheme: other.to_string(),
                location: location.to_string(),
            }),
        }
    }

    /// Path of `relative` (slash-separated) under this location.
    pub fn path(&self, relative: &str) -> Path {
        let mut path = self.prefix.clone();
        for part in relative.split('/').filter(|p| !p.is_empty()) {
            path = path.join(part);
        }
        path
    }

    /// Path of `path` relative to this location's root, slash-separated.
    pub fn relative<'a>(&self, path: &'a Path) -> Option<String> {
        path.prefix_match(&self.prefix)
            .map(|parts| parts.map(|p| p.as_ref().to_string()).collect::<Vec<_>>().join("/"))
    }

    /// URL of a child location (e.g. a Delta table folder under the warehouse).
    pub fn child_url(&self, name: &str) -> Url {
        let mut url = self.url.clone();
        url.path_segments_mut()
            .expect("hierarchical URL")
            .pop_if_empty()
            .push(name);
        url
    }

    /// Every object under `prefix` (recursively).
    pub async fn list_under(&self, prefix: &Path) -> Result<Vec<object_store::ObjectMeta>, object_store::Error> {
        futures::TryStreamExt::try_collect(self.store.list(Some(prefix))).await
    }

    /// A display form of a path inside this location, for messages and reports.
    pub fn display(&self, path: &Path) -> String {
        match self.relative(path) {
            Some(rel) if !rel.is_empty() => format!("{}/{}", self.url, rel),
            _ => self.url.to_string(),
        }
    }

    /// For local locations, whether the folder is missing (never true for object stores).
    pub fn local_dir_missing(&self, relative: &str) -> bool {
        self.url.to_file_path().is_ok_and(|mut dir| {
            dir.extend(relative.split('/').filter(|p| !p.is_empty()));
            !dir.is_dir()
        })
    }

    /// For local locations, make sure the folder exists (delta-rs requires it).
    pub fn ensure_local_dir(&self, relative: &str) -> std::io::Result<()> {
        if let Ok(mut dir) = self.url.to_file_path() {
            dir.extend(relative.split('/').filter(|p| !p.is_empty()));
            std::fs::create_dir_all(dir)?;
        }
        Ok(())
    }
}

fn trim_trailing_slash(mut url: Url) -> Url {
    let path = url.path().trim_end_matches('/').to_string();
    url.set_path(if path.is_empty() { "/" } else { &path });
    url
}

/// Encode batches as one Parquet file (LZ4-compressed: cheap to write and read back).
pub fn parquet_bytes(schema: SchemaRef, batches: &[RecordBatch]) -> Result<Bytes, ParquetError> {
    let properties = WriterProperties::builder()
        .set_compression(Compression::LZ4_RAW)
        .build();
    let mut buffer = Vec::new();
    let mut writer = ArrowWriter::try_new(&mut buffer, schema, Some(properties))?;
    for batch in batches {
        writer.write(batch)?;
    }
    writer.close()?;
    Ok(Bytes::from(buffer))
}

/// Decode a whole Parquet file held in memory.
pub fn parquet_batches(bytes: Bytes) -> Result<(SchemaRef, Vec<RecordBatch>), ParquetError> {
    let reader = ParquetRecordBatchReaderBuilder::try_new(bytes)?
        .with_batch_size(64 * 1024)
        .build()?;
    let schema = arrow::record_batch::RecordBatchReader::schema(&reader);
    let batches = reader.collect::<Result<Vec<_>, _>>()?;
    Ok((schema, batches))
}
