//! Storage locations: turns a `--landing` / `--warehouse` setting (a local path or an
//! object-store URL) into an [`ObjectStore`] plus a root prefix.
//!
//! Owns: URL parsing, the choice of object-store backend and its options (typed
//! `[storage.*]` keys), the reachability check, and telling storage faults apart (refused
//! credentials, missing bucket, unreachable endpoint) for messages and exit codes.
//! Also the Parquet encode/decode helpers shared by the stages that keep their own files.
//! Must not: interpret any data; stages above decide what to read or write.

use arrow::buffer::Buffer;
use arrow::datatypes::SchemaRef;
use arrow::error::ArrowError;
use arrow::ipc::convert::fb_to_schema;
use arrow::ipc::reader::{read_footer_length, FileDecoder};
use arrow::ipc::writer::{FileWriter, IpcWriteOptions};
use arrow::ipc::{root_as_footer, Block};
use arrow::record_batch::RecordBatch;
use bytes::Bytes;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::errors::ParquetError;
use std::collections::BTreeMap;
use std::sync::Arc;

use deltalake::logstore::{object_store_factories, StorageConfig};
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{GetResult, GetResultPayload, ObjectStore};
use serde::Deserialize;
use url::Url;

pub mod dedup;
pub mod erasure;
pub mod hold;
pub mod lock;
pub mod masked;
pub mod progress;
pub mod rows;
pub mod segments;
pub mod units;

/// Retries of a failed object-store request, unless `max_retries` says otherwise.
pub const DEFAULT_MAX_RETRIES: usize = 6;
/// Time after which a request stops being retried, unless `retry_timeout` says otherwise.
pub const DEFAULT_RETRY_TIMEOUT: &str = "60s";

/// Errors turning a setting into a store, and storage failures worth their own message.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("invalid location '{location}': {reason}")]
    InvalidLocation { location: String, reason: String },
    #[error("unsupported URL scheme '{scheme}' in '{location}' (supported: s3://, s3a://, file://, or a local path)")]
    UnsupportedScheme { scheme: String, location: String },
    #[error("cannot configure object store for {url}: {message}")]
    Configure { url: String, message: String },
    #[error("access to {url} was refused{endpoint}: check the credentials (access_key_id / secret_access_key in [storage.*], AWS_* variables or the AWS profile) and their permissions ({detail})")]
    Denied {
        url: String,
        endpoint: String,
        detail: String,
    },
    #[error("the bucket of {url} does not exist{endpoint} ({detail})")]
    MissingBucket {
        url: String,
        endpoint: String,
        detail: String,
    },
    #[error("cannot reach the object store of {url}{endpoint}, retries exhausted: {detail}")]
    Unreachable {
        url: String,
        endpoint: String,
        detail: String,
    },
    #[error("cannot list {url}{endpoint}: {detail}")]
    Unavailable {
        url: String,
        endpoint: String,
        detail: String,
    },
}

/// Options of one object-store location: `[storage.landing]` or `[storage.warehouse]`.
///
/// A key left out falls back to the standard `AWS_*` environment variables
/// (`AWS_ENDPOINT_URL`, `AWS_REGION`, `AWS_ACCESS_KEY_ID`, ...); without an endpoint, the
/// AWS SDK's chain also applies (`AWS_PROFILE` and `~/.aws`, SSO, instance roles).
#[derive(Default, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreOptions {
    /// S3-compatible endpoint, e.g. `http://127.0.0.1:8333` (default: AWS).
    pub endpoint: Option<String>,
    pub region: Option<String>,
    /// Path-style requests (`endpoint/bucket/key`), as MinIO and SeaweedFS expect.
    pub path_style: Option<bool>,
    /// Allow plain `http://` endpoints (local test servers only).
    pub allow_http: Option<bool>,
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
    pub session_token: Option<String>,
    /// Retries of a failed request, with exponential backoff (default 6).
    pub max_retries: Option<usize>,
    /// Stop retrying a request after this long: `30s`, `2m` (default 60s).
    pub retry_timeout: Option<String>,
}

impl std::fmt::Debug for StoreOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print secrets: only whether they are set.
        let set = |v: &Option<String>| v.as_ref().map(|_| "<set>");
        f.debug_struct("StoreOptions")
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("path_style", &self.path_style)
            .field("allow_http", &self.allow_http)
            .field("access_key_id", &set(&self.access_key_id))
            .field("secret_access_key", &set(&self.secret_access_key))
            .field("session_token", &set(&self.session_token))
            .field("max_retries", &self.max_retries)
            .field("retry_timeout", &self.retry_timeout)
            .finish()
    }
}

impl StoreOptions {
    /// The options in the form object_store and delta-rs read (`aws_endpoint`, ...).
    fn to_map(&self) -> Result<BTreeMap<String, String>, String> {
        let retry_timeout = units::parse_duration(self.retry_timeout.as_deref().unwrap_or(DEFAULT_RETRY_TIMEOUT))
            .map_err(|message| format!("retry_timeout: {message}"))?;
        let mut map = BTreeMap::new();
        let mut put = |key: &str, value: Option<String>| {
            if let Some(value) = value {
                map.insert(key.to_string(), value);
            }
        };
        put("aws_endpoint", self.endpoint.clone());
        put("aws_region", self.region.clone());
        put(
            "aws_virtual_hosted_style_request",
            self.path_style.map(|path_style| (!path_style).to_string()),
        );
        put("aws_allow_http", self.allow_http.map(|b| b.to_string()));
        put("aws_access_key_id", self.access_key_id.clone());
        put("aws_secret_access_key", self.secret_access_key.clone());
        put("aws_session_token", self.session_token.clone());
        put(
            "max_retries",
            Some(self.max_retries.unwrap_or(DEFAULT_MAX_RETRIES).to_string()),
        );
        put("retry_timeout", Some(format!("{}ms", retry_timeout.as_millis())));
        Ok(map)
    }
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
    /// Backend options (for S3: endpoint, region, ...) in object_store's keys, passed on
    /// to delta-rs so that tables are read and written through the same configuration.
    pub options: BTreeMap<String, String>,
}

impl std::fmt::Debug for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Options may hold secrets: never print them.
        f.debug_struct("Location").field("url", &self.url.as_str()).finish()
    }
}

/// The object stores of `locations` as a DataFusion registry (the local file system is
/// always in it): what a cluster's scheduler and executors read the landing zone and the
/// warehouse through, with the same options as every other reader here.
pub fn object_store_registry(
    locations: &[&Location],
) -> Arc<datafusion::execution::object_store::DefaultObjectStoreRegistry> {
    use datafusion::execution::object_store::ObjectStoreRegistry;
    let registry = datafusion::execution::object_store::DefaultObjectStoreRegistry::new();
    for location in locations.iter().filter(|l| !l.is_local()) {
        let root = Url::parse(&format!(
            "{}://{}",
            location.url.scheme(),
            location.url.host_str().unwrap_or_default()
        ))
        .expect("a scheme and a bucket make a URL");
        registry.register_store(&root, location.store.clone());
    }
    Arc::new(registry)
}

/// Register delta-rs's S3 handlers once: they build every S3 store tagflow uses.
pub fn register_object_stores() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| deltalake::aws::register_handlers(None));
}

impl Location {
    /// Resolve a setting: a local path (relative paths are made absolute) or a URL.
    pub fn parse(location: &str, options: &StoreOptions) -> Result<Self, StorageError> {
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
                if *options != StoreOptions::default() {
                    return Err(invalid(
                        "[storage.*] options apply to s3:// locations, and this is a local path".into(),
                    ));
                }
                let prefix = local_prefix(&url).map_err(invalid)?;
                Ok(Location {
                    url,
                    store: Arc::new(LocalFileSystem::new()),
                    prefix,
                    options: BTreeMap::new(),
                })
            }
            "s3" | "s3a" => {
                if url.host_str().is_none_or(str::is_empty) {
                    return Err(invalid("an S3 URL needs a bucket: s3://bucket/prefix".into()));
                }
                let configure = |message: String| StorageError::Configure {
                    url: url.to_string(),
                    message,
                };
                // The same factory delta-rs uses for tables: one credential chain, one
                // retry policy, for landing files, state files and Delta tables alike.
                register_object_stores();
                let map = options.to_map().map_err(invalid)?;
                let config = StorageConfig::parse_options(map.clone()).map_err(|e| configure(e.to_string()))?;
                let scheme = Url::parse(&format!("{}://", url.scheme())).expect("scheme URL");
                let factory = object_store_factories()
                    .get(&scheme)
                    .map(|entry| entry.value().clone())
                    .ok_or_else(|| configure("no S3 support registered".into()))?;
                let (store, prefix) = factory
                    .parse_url_opts(&url, &config)
                    .map_err(|e| configure(e.to_string()))?;
                Ok(Location {
                    url,
                    store,
                    prefix,
                    options: map,
                })
            }
            other => Err(StorageError::UnsupportedScheme {
                scheme: other.to_string(),
                location: location.to_string(),
            }),
        }
    }

    /// A location at `url` served by `store`: how a cluster's executor opens the landing
    /// zone and the warehouse a plan names, through the stores its own settings built (no
    /// option or secret travels with a plan).
    pub fn with_store(url: &str, store: Arc<dyn ObjectStore>) -> Result<Self, StorageError> {
        let invalid = |reason: String| StorageError::InvalidLocation {
            location: url.to_string(),
            reason,
        };
        let url = trim_trailing_slash(Url::parse(url).map_err(|e| invalid(e.to_string()))?);
        let prefix = match url.scheme() {
            "file" => local_prefix(&url).map_err(invalid)?,
            _ => Path::from_url_path(url.path()).map_err(|e| invalid(e.to_string()))?,
        };
        Ok(Location {
            url,
            store,
            prefix,
            options: BTreeMap::new(),
        })
    }

    /// The endpoint this location talks to, for messages (` (endpoint http://...)`).
    fn endpoint_note(&self) -> String {
        // As the store resolves it: the option first, then the environment.
        let endpoint = self.options.get("aws_endpoint").cloned().or_else(|| {
            ["AWS_ENDPOINT_URL", "AWS_ENDPOINT"]
                .iter()
                .find_map(|name| std::env::var(name).ok())
        });
        match endpoint {
            Some(endpoint) => format!(" (endpoint {endpoint})"),
            None if self.is_local() => String::new(),
            None => " (AWS S3)".into(),
        }
    }

    /// Check, with one listing request, that the location is reachable, exists and the
    /// credentials are accepted; the error says which of these failed. Local folders are
    /// not checked (a missing one reads as empty and is reported by the stage using it).
    pub async fn check(&self) -> Result<(), StorageError> {
        if self.is_local() {
            return Ok(());
        }
        let prefix = (!self.prefix.as_ref().is_empty()).then_some(&self.prefix);
        match self.store.list_with_delimiter(prefix).await {
            Ok(_) => Ok(()),
            Err(error) => Err(self.classify(&error)),
        }
    }

    /// Turn a failed request on this location into the error a user can act on.
    fn classify(&self, error: &(dyn std::error::Error + 'static)) -> StorageError {
        let url = self.url.to_string();
        let endpoint = self.endpoint_note();
        let chain = error_chain(error);
        let detail = s3_error_code(&chain).unwrap_or(chain);
        match fault(error) {
            Some(Fault::Denied) => StorageError::Denied { url, endpoint, detail },
            Some(Fault::MissingBucket) => StorageError::MissingBucket { url, endpoint, detail },
            Some(Fault::Unreachable) => StorageError::Unreachable { url, endpoint, detail },
            None => StorageError::Unavailable { url, endpoint, detail },
        }
    }

    /// A folder on this machine's file system (not an object store over the network).
    pub fn is_local(&self) -> bool {
        self.url.scheme() == "file"
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
    pub fn relative(&self, path: &Path) -> Option<String> {
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

/// The store path of a `file://` URL's folder.
fn local_prefix(url: &Url) -> Result<Path, String> {
    let fs_path = url
        .to_file_path()
        .map_err(|_| "file URL without a local path".to_string())?;
    Path::from_absolute_path(&fs_path).map_err(|e| e.to_string())
}

fn trim_trailing_slash(mut url: Url) -> Url {
    let path = url.path().trim_end_matches('/').to_string();
    url.set_path(if path.is_empty() { "/" } else { &path });
    url
}

impl StorageError {
    /// The fault this error reports, if it is one of those told apart.
    pub fn fault(&self) -> Option<Fault> {
        match self {
            StorageError::Denied { .. } => Some(Fault::Denied),
            StorageError::MissingBucket { .. } => Some(Fault::MissingBucket),
            StorageError::Unreachable { .. } => Some(Fault::Unreachable),
            _ => None,
        }
    }
}

/// The storage failures a user fixes differently, each with its own exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The credentials were refused (401/403: unknown key, bad signature, no permission).
    Denied,
    /// The bucket does not exist.
    MissingBucket,
    /// The endpoint could not be reached (connection refused, timed out, reset), or kept
    /// failing with server errors until the retries ran out.
    Unreachable,
}

/// The storage fault behind `error`, looking through its whole source chain.
///
/// object_store keeps its HTTP error type private, so statuses and S3 error codes are read
/// from the messages it documents ("Server returned non-2xx status code: 403 ...", and the
/// S3 error body), while transport failures are recognised by type.
pub fn fault(error: &(dyn std::error::Error + 'static)) -> Option<Fault> {
    let mut found = None;
    let mut next = Some(error);
    while let Some(error) = next {
        if let Some(error) = error.downcast_ref::<object_store::Error>() {
            if matches!(
                error,
                object_store::Error::PermissionDenied { .. } | object_store::Error::Unauthenticated { .. }
            ) {
                return Some(Fault::Denied);
            }
        }
        if error.downcast_ref::<object_store::client::HttpError>().is_some() {
            found = found.or(Some(Fault::Unreachable));
        }
        let text = error.to_string();
        if text.contains("NoSuchBucket") {
            return Some(Fault::MissingBucket);
        }
        if ["InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied"]
            .iter()
            .any(|code| text.contains(code))
            || text.contains("non-2xx status code: 403")
            || text.contains("non-2xx status code: 401")
        {
            return Some(Fault::Denied);
        }
        if text.contains("non-2xx status code: 5") || text.contains("error response: ") {
            found = found.or(Some(Fault::Unreachable));
        }
        next = error.source();
    }
    found
}

/// `Code: Message` of an S3 error body in `text`, the part of it a user can act on.
fn s3_error_code(text: &str) -> Option<String> {
    let tag = |name: &str| {
        let open = format!("<{name}>");
        let start = text.find(&open)? + open.len();
        let end = start + text[start..].find(&format!("</{name}>"))?;
        Some(text[start..end].to_string())
    };
    let code = tag("Code")?;
    Some(match tag("Message") {
        Some(message) => format!("S3 error {code}: {message}"),
        None => format!("S3 error {code}"),
    })
}

/// An error and its causes on one line (`a: b: c`), skipping causes already in the text.
fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut next = error.source();
    while let Some(cause) = next {
        let part = cause.to_string();
        if !text.contains(&part) {
            text = format!("{text}: {part}");
        }
        next = cause.source();
    }
    text
}

/// The whole object `result` is reading. A local file is mapped rather than read: its
/// pages come from the page cache as they are touched, with no buffer to allocate, zero
/// and fill (a state load maps ~100 MB on the benchmark). Only for tagflow's own files,
/// which are never changed once written: a file truncated while mapped would fault the
/// process, so landing files, which others write, are read.
pub async fn immutable_object_bytes(result: GetResult) -> object_store::Result<Bytes> {
    let whole = result.range.start == 0 && result.range.end == result.meta.size && result.meta.size > 0;
    match result.payload {
        GetResultPayload::File(file, path) if whole => {
            // SAFETY: the mapping is read-only and private, and nothing changes the file in
            // place: tagflow writes new files for new state versions, and object_store
            // replaces a file (its pointer) by renaming a new one over it, leaving this inode
            // as it is.
            let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|source| object_store::Error::Generic {
                store: "LocalFileSystem",
                source: format!("cannot map {}: {source}", path.display()).into(),
            })?;
            Ok(Bytes::from_owner(map))
        }
        _ => result.bytes().await,
    }
}

/// Encode batches as one Arrow IPC file. Uncompressed, writing and reading it back is
/// little more than a copy, where Parquet would encode every column; `compress` adds
/// per-buffer zstd (about a third of the bytes, for files that cross a network).
/// Readers need no flag: the file says how its buffers are compressed.
pub fn arrow_file_bytes(schema: SchemaRef, batches: &[RecordBatch], compress: bool) -> Result<Bytes, ArrowError> {
    let compression = compress.then_some(arrow::ipc::CompressionType::ZSTD);
    let options = IpcWriteOptions::default().try_with_compression(compression)?;
    let mut writer = FileWriter::try_new_with_options(Vec::new(), &schema, options)?;
    for batch in batches {
        writer.write(batch)?;
    }
    Ok(Bytes::from(writer.into_inner()?))
}

/// Decode a whole Arrow IPC file held in memory. The arrays point into `bytes` (no copy
/// of the file: a state load would otherwise allocate, zero and fill its size again);
/// a buffer that is not aligned for its type, or compressed, gets its own. The arrays are
/// validated as any other reader's; a truncated or corrupt file is an error.
pub fn arrow_file_batches(bytes: Bytes) -> Result<(SchemaRef, Vec<RecordBatch>), ArrowError> {
    let corrupt = |what: String| ArrowError::IpcError(format!("not a readable Arrow IPC file: {what}"));
    let buffer = Buffer::from(bytes);
    let trailer_start = buffer
        .len()
        .checked_sub(10)
        .ok_or_else(|| corrupt(format!("{} bytes", buffer.len())))?;
    let trailer: [u8; 10] = buffer[trailer_start..].try_into().expect("10 bytes");
    let footer_len = read_footer_length(trailer)?;
    let footer_start = trailer_start
        .checked_sub(footer_len)
        .ok_or_else(|| corrupt(format!("a footer of {footer_len} bytes in a file of {}", buffer.len())))?;
    let footer = root_as_footer(&buffer[footer_start..trailer_start]).map_err(|e| corrupt(e.to_string()))?;
    let schema = Arc::new(fb_to_schema(
        footer.schema().ok_or_else(|| corrupt("no schema".to_string()))?,
    ));
    let mut decoder = FileDecoder::new(schema.clone(), footer.version());
    let block_data = |block: &Block| {
        let start = usize::try_from(block.offset()).ok();
        let len = usize::try_from(block.bodyLength())
            .ok()
            .zip(usize::try_from(block.metaDataLength()).ok());
        match start.zip(len.map(|(body, meta)| body + meta)) {
            Some((start, len)) if start.checked_add(len).is_some_and(|end| end <= footer_start) => {
                Ok(buffer.slice_with_length(start, len))
            }
            _ => Err(corrupt(format!("a block out of the file's {} bytes", buffer.len()))),
        }
    };
    for block in footer.dictionaries().iter().flatten() {
        decoder.read_dictionary(block, &block_data(block)?)?;
    }
    let mut batches = Vec::new();
    for block in footer.recordBatches().iter().flatten() {
        if let Some(batch) = decoder.read_record_batch(block, &block_data(block)?)? {
            batches.push(batch);
        }
    }
    Ok((schema, batches))
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

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Decimal128Array, Int64Array, StringArray, TimestampMicrosecondArray};
    use arrow::datatypes::{DataType, Field, Schema, TimeUnit};

    fn batches() -> (SchemaRef, Vec<RecordBatch>) {
        let schema = Arc::new(Schema::new(vec![
            Field::new("customer_id", DataType::Utf8, false),
            Field::new("n", DataType::Int64, true),
            Field::new("amount", DataType::Decimal128(38, 9), true),
            Field::new(
                "at",
                DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
                true,
            ),
        ]));
        let batch = |ids: &[&str], first: i64| {
            let n = ids.len() as i64;
            RecordBatch::try_new(
                schema.clone(),
                vec![
                    Arc::new(StringArray::from_iter_values(ids.iter())),
                    Arc::new(Int64Array::from_iter(
                        (first..first + n).map(|i| (i % 3 != 0).then_some(i)),
                    )),
                    Arc::new(
                        Decimal128Array::from_iter_values((first..first + n).map(|i| i as i128 * 1_000_000_001))
                            .with_precision_and_scale(38, 9)
                            .unwrap(),
                    ),
                    Arc::new(TimestampMicrosecondArray::from_iter_values(first..first + n).with_timezone("UTC")),
                ],
            )
            .unwrap()
        };
        let batches = vec![batch(&["a", "bé", "c"], 0), batch(&[], 3), batch(&["dd", "e"], 3)];
        (schema, batches)
    }

    #[test]
    fn ipc_files_read_back_as_written_with_and_without_compression() {
        let (schema, written) = batches();
        for compress in [false, true] {
            let bytes = arrow_file_bytes(schema.clone(), &written, compress).unwrap();
            let (read_schema, read) = arrow_file_batches(bytes).unwrap();
            assert_eq!(read_schema, schema);
            assert_eq!(read, written, "compress: {compress}");
        }
        // A file whose buffers start at an odd address is read all the same (copied where
        // a type needs alignment).
        let bytes = arrow_file_bytes(schema.clone(), &written, false).unwrap();
        let mut shifted = vec![0u8];
        shifted.extend_from_slice(&bytes);
        let (_, read) = arrow_file_batches(Bytes::from(shifted).slice(1..)).unwrap();
        assert_eq!(read, written);
    }

    #[test]
    fn truncated_or_corrupt_ipc_files_are_errors_not_panics() {
        let (schema, written) = batches();
        let bytes = arrow_file_bytes(schema, &written, false).unwrap();
        let len = bytes.len();
        for cut in [0, 5, 9, 10, len / 2, len - 11, len - 1] {
            assert!(arrow_file_batches(bytes.slice(..cut)).is_err(), "cut at {cut} of {len}");
        }
        // A footer length pointing before the file's start.
        let mut bad = bytes.to_vec();
        bad[len - 10..len - 6].copy_from_slice(&(len as i32 + 100).to_le_bytes());
        assert!(arrow_file_batches(Bytes::from(bad)).is_err());
        // Garbage in the middle of the body: an error or the same rows, never a panic.
        let mut flipped = bytes.to_vec();
        for b in &mut flipped[len / 3..len / 3 + 16] {
            *b ^= 0xA5;
        }
        let _ = arrow_file_batches(Bytes::from(flipped));
    }
}
