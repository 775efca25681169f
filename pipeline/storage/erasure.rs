//! Erasure records: which customers were forgotten, kept so that no later read of the
//! landing zone brings them back, and the requests that forgot them.
//!
//! Owns: the files under `<warehouse>/_tagflow/erasure/` and the salted hash of a customer id.
//! Must not: erase anything; the stages that keep customer data remove it themselves
//! (`state`, `sources::quarantine`, `publish`) and the application orders the steps.
//!
//! ```text
//! _tagflow/erasure/salt                 16 random bytes (hex): the key of the salted hash
//! _tagflow/erasure/suppressed.bin       the suppression list: salted hashes, 16 bytes each
//! _tagflow/erasure/requests/<id>.json   one erasure request: when, how many, what it removed
//! ```
//!
//! No file here holds a customer id: the suppression list and the requests hold keyed
//! SipHash-2-4 hashes (128 bits) of the ids, under a salt that lives with the warehouse, so
//! the list can answer "is this customer forgotten?" for an id met later and nothing else.

use std::collections::{BTreeMap, HashSet};
use std::hash::Hasher;

use arrow::array::{Array, BooleanArray};
use arrow::compute::filter_record_batch;
use arrow::record_batch::RecordBatch;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use object_store::{ObjectStoreExt, PutMode, PutOptions, PutPayload};
use serde::{Deserialize, Serialize};
use siphasher::sip128::{Hasher128, SipHasher24};

use super::rows::text;
use super::Location;

/// Folder of the erasure records under the warehouse.
pub const ERASURE_DIR: &str = "_tagflow/erasure";
const SALT: &str = "salt";
const SUPPRESSED: &str = "suppressed.bin";
const REQUESTS: &str = "requests";

#[derive(Debug, thiserror::Error)]
pub enum ErasureError {
    #[error("erasure records storage error at {path}: {source}")]
    Storage {
        path: String,
        #[source]
        source: object_store::Error,
    },
    #[error("erasure record {path} is unreadable: {message}")]
    Corrupt { path: String, message: String },
}

/// The customers of one erasure (or of every pending one): their salted hashes, and their
/// ids when the request that names them runs now (a resumed request knows only the hashes).
/// A row is theirs when the hash of its `customer_id` is in the set.
#[derive(Debug, Clone)]
pub struct Forgotten {
    key: [u8; 16],
    hashes: HashSet<u128>,
    ids: Vec<String>,
}

impl Forgotten {
    /// The customers `hashes` name under the salt of `suppression`, with their `ids` if known.
    pub fn new(suppression: &Suppression, hashes: impl IntoIterator<Item = u128>, ids: Vec<String>) -> Self {
        Forgotten {
            key: suppression.key,
            hashes: hashes.into_iter().collect(),
            ids,
        }
    }

    pub fn len(&self) -> usize {
        self.hashes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.hashes.is_empty()
    }

    pub fn contains(&self, id: &str) -> bool {
        self.hashes.contains(&salted_hash(&self.key, id))
    }

    pub fn hash(&self, id: &str) -> u128 {
        salted_hash(&self.key, id)
    }

    /// The ids, where known: only what cannot be read as rows (a corrupt file's bytes) is
    /// searched for them.
    pub fn ids(&self) -> impl Iterator<Item = &String> {
        self.ids.iter()
    }

    /// Add to `found` the hashes of the customers of this erasure that `column` holds.
    pub fn find_in(&self, column: &dyn Array, found: &mut HashSet<u128>) {
        let Some(strings) = text(column) else {
            return;
        };
        for id in strings.iter().flatten() {
            let hash = salted_hash(&self.key, id);
            if self.hashes.contains(&hash) {
                found.insert(hash);
            }
        }
    }
}

fn salted_hash(key: &[u8; 16], id: &str) -> u128 {
    let mut hasher = SipHasher24::new_with_key(key);
    hasher.write(id.as_bytes());
    hasher.finish128().as_u128()
}

/// The suppression list: the salted hashes of every forgotten customer.
#[derive(Debug, Clone, Default)]
pub struct Suppression {
    key: [u8; 16],
    hashes: HashSet<u128>,
    /// The salt is new, not stored yet.
    unsaved_salt: bool,
}

impl Suppression {
    /// The list of `warehouse` (empty when nobody was ever forgotten).
    pub async fn load(warehouse: &Location) -> Result<Self, ErasureError> {
        let Some(bytes) = get(warehouse, SUPPRESSED).await? else {
            return Ok(Suppression::default());
        };
        let key = match get(warehouse, SALT).await? {
            Some(salt) => parse_salt(&salt)?,
            None => {
                return Err(ErasureError::Corrupt {
                    path: display(warehouse, SALT),
                    message: "the suppression list exists but its salt is missing".into(),
                })
            }
        };
        if !bytes.len().is_multiple_of(16) {
            return Err(ErasureError::Corrupt {
                path: display(warehouse, SUPPRESSED),
                message: format!("{} bytes is not a whole number of 16-byte hashes", bytes.len()),
            });
        }
        let hashes = bytes
            .chunks_exact(16)
            .map(|c| u128::from_le_bytes(c.try_into().expect("16 bytes")))
            .collect();
        Ok(Suppression {
            key,
            hashes,
            unsaved_salt: false,
        })
    }

    /// The list of `warehouse` with its salt; when no salt is stored yet, a new one, stored
    /// by the first [`Suppression::add`] (so that checking ids changes nothing).
    pub async fn load_or_salt(warehouse: &Location) -> Result<Self, ErasureError> {
        let mut list = Suppression::load(warehouse).await?;
        if list.hashes.is_empty() {
            match get(warehouse, SALT).await? {
                Some(salt) => list.key = parse_salt(&salt)?,
                None => {
                    list.key = rand::random();
                    list.unsaved_salt = true;
                }
            }
        }
        Ok(list)
    }

    pub fn is_empty(&self) -> bool {
        self.hashes.is_empty()
    }

    /// The salted hash of a customer id.
    pub fn hash(&self, id: &str) -> u128 {
        salted_hash(&self.key, id)
    }

    pub fn is_suppressed(&self, id: &str) -> bool {
        !self.hashes.is_empty() && self.hashes.contains(&self.hash(id))
    }

    pub fn contains_hash(&self, hash: u128) -> bool {
        self.hashes.contains(&hash)
    }

    /// Add `hashes` and store the list (one atomic put; the caller holds the warehouse lock).
    pub async fn add(&mut self, warehouse: &Location, hashes: &[u128]) -> Result<(), ErasureError> {
        if self.unsaved_salt {
            store_salt(warehouse, &self.key).await?;
            self.unsaved_salt = false;
        }
        self.hashes.extend(hashes.iter().copied());
        let mut sorted: Vec<u128> = self.hashes.iter().copied().collect();
        sorted.sort_unstable();
        let mut out = Vec::with_capacity(sorted.len() * 16);
        for hash in sorted {
            out.extend_from_slice(&hash.to_le_bytes());
        }
        put(warehouse, SUPPRESSED, Bytes::from(out)).await
    }
}

/// The rows of a string column to keep: `None` when no row is dropped (the common case,
/// nothing to copy). Rows whose id `drop` says are dropped; nulls are kept. Any string
/// type is accepted (Utf8, LargeUtf8, Utf8View, dictionaries of them).
pub fn keep_mask(column: &dyn Array, drop: impl Fn(&str) -> bool) -> Option<BooleanArray> {
    let keep: BooleanArray = text(column)?.iter().map(|id| Some(!id.is_some_and(&drop))).collect();
    (keep.false_count() > 0).then_some(keep)
}

/// Drop from `batches` the rows whose `customer_id` `drop` names; returns how many. A batch
/// without such a row (or without the column) is kept as it is, not copied.
pub fn drop_customers(batches: &mut [RecordBatch], drop: impl Fn(&str) -> bool) -> usize {
    let mut dropped = 0;
    for batch in batches.iter_mut() {
        let keep = batch
            .column_by_name("customer_id")
            .and_then(|ids| keep_mask(ids, &drop));
        if let Some(keep) = keep {
            dropped += keep.false_count();
            *batch = filter_record_batch(batch, &keep).expect("mask of the batch's length");
        }
    }
    dropped
}

/// How far an erasure request got.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum RequestStatus {
    /// Recorded (the customers are suppressed); not every table is erased yet.
    Pending,
    /// Every table and file holds none of the customers at its current version; older
    /// Delta versions may still hold them until `history_until` (see `history_purged`).
    Completed,
}

/// One erasure request, as stored. It names no customer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErasureRequest {
    pub id: String,
    pub requested_at: DateTime<Utc>,
    pub customers: usize,
    /// The salted hashes of the customers, 32 hex digits each.
    pub hashes: Vec<String>,
    pub purge_history: bool,
    pub status: RequestStatus,
    #[serde(default)]
    pub completed_at: Option<DateTime<Utc>>,
    /// Rows (or files) removed, per table or area.
    #[serde(default)]
    pub removed: BTreeMap<String, u64>,
    /// Landing files that still hold one of the customers (for the upstream owner).
    #[serde(default)]
    pub landing_files: Vec<String>,
    /// Per Delta table, the versions no longer readable after `--purge-history`.
    #[serde(default)]
    pub versions_gone: BTreeMap<String, String>,
    /// Without `--purge-history`: older versions still hold the customers until a vacuum
    /// after this time.
    #[serde(default)]
    pub history_until: Option<DateTime<Utc>>,
}

impl ErasureRequest {
    pub fn hash_values(&self) -> Result<Vec<u128>, ErasureError> {
        self.hashes
            .iter()
            .map(|h| {
                u128::from_str_radix(h, 16).map_err(|e| ErasureError::Corrupt {
                    path: format!("{ERASURE_DIR}/{REQUESTS}/{}.json", self.id),
                    message: format!("hash '{h}': {e}"),
                })
            })
            .collect()
    }

    /// Store the request (a new one, or its progress).
    pub async fn save(&self, warehouse: &Location) -> Result<(), ErasureError> {
        let json = serde_json::to_vec_pretty(self).expect("serialisable");
        put(warehouse, &format!("{REQUESTS}/{}.json", self.id), Bytes::from(json)).await
    }

    /// Every request of `warehouse`, oldest first (ids sort by time).
    pub async fn list(warehouse: &Location) -> Result<Vec<ErasureRequest>, ErasureError> {
        let prefix = warehouse.path(&format!("{ERASURE_DIR}/{REQUESTS}"));
        let listed = warehouse
            .list_under(&prefix)
            .await
            .map_err(|source| ErasureError::Storage {
                path: warehouse.display(&prefix),
                source,
            })?;
        let mut requests = Vec::new();
        for meta in listed {
            let relative = warehouse.relative(&meta.location).unwrap_or_default();
            let Some(name) = relative.strip_prefix(&format!("{ERASURE_DIR}/")) else {
                continue;
            };
            if !name.ends_with(".json") {
                continue;
            }
            let bytes = get(warehouse, name).await?.unwrap_or_default();
            let request: ErasureRequest = serde_json::from_slice(&bytes).map_err(|e| ErasureError::Corrupt {
                path: warehouse.display(&meta.location),
                message: e.to_string(),
            })?;
            requests.push(request);
        }
        requests.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(requests)
    }
}

/// A new request id: its time (so ids sort by time) and a random suffix.
pub fn request_id(at: DateTime<Utc>) -> String {
    format!(
        "{}-{}",
        at.format("%Y%m%dT%H%M%S%6fZ"),
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    )
}

/// Store a new salt. Only the holder of the warehouse lock records erasures, but a salt
/// must never change once hashes use it: the put only creates.
async fn store_salt(warehouse: &Location, key: &[u8; 16]) -> Result<(), ErasureError> {
    let text: String = key.iter().map(|b| format!("{b:02x}")).collect();
    let path = warehouse.path(&format!("{ERASURE_DIR}/{SALT}"));
    let create = PutOptions {
        mode: PutMode::Create,
        ..Default::default()
    };
    warehouse
        .store
        .put_opts(&path, PutPayload::from(text.into_bytes()), create)
        .await
        .map(|_| ())
        .map_err(|source| ErasureError::Storage {
            path: warehouse.display(&path),
            source,
        })
}

fn parse_salt(bytes: &[u8]) -> Result<[u8; 16], ErasureError> {
    let corrupt = |message: String| ErasureError::Corrupt {
        path: format!("{ERASURE_DIR}/{SALT}"),
        message,
    };
    let text = std::str::from_utf8(bytes).map_err(|e| corrupt(e.to_string()))?.trim();
    let value = u128::from_str_radix(text, 16).map_err(|e| corrupt(format!("not 32 hex digits: {e}")))?;
    if text.len() != 32 {
        return Err(corrupt(format!("{} hex digits, not 32", text.len())));
    }
    Ok(value.to_be_bytes())
}

fn display(warehouse: &Location, relative: &str) -> String {
    warehouse.display(&warehouse.path(&format!("{ERASURE_DIR}/{relative}")))
}

async fn get(warehouse: &Location, relative: &str) -> Result<Option<Bytes>, ErasureError> {
    let path = warehouse.path(&format!("{ERASURE_DIR}/{relative}"));
    let failed = |source| ErasureError::Storage {
        path: warehouse.display(&path),
        source,
    };
    match warehouse.store.get(&path).await {
        Ok(result) => Ok(Some(result.bytes().await.map_err(failed)?)),
        Err(object_store::Error::NotFound { .. }) => Ok(None),
        Err(source) => Err(failed(source)),
    }
}

async fn put(warehouse: &Location, relative: &str, bytes: Bytes) -> Result<(), ErasureError> {
    let path = warehouse.path(&format!("{ERASURE_DIR}/{relative}"));
    warehouse
        .store
        .put(&path, PutPayload::from_bytes(bytes))
        .await
        .map(|_| ())
        .map_err(|source| ErasureError::Storage {
            path: warehouse.display(&path),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::StringArray;

    #[test]
    fn salted_hashes_differ_by_salt_and_by_id() {
        let a = Suppression {
            key: [1; 16],
            ..Default::default()
        };
        let b = Suppression {
            key: [2; 16],
            ..Default::default()
        };
        assert_ne!(a.hash("c1"), b.hash("c1"));
        assert_ne!(a.hash("c1"), a.hash("c2"));
        assert_eq!(a.hash("c1"), a.hash("c1"));
    }

    #[test]
    fn the_salt_reads_back_as_written() {
        let key: [u8; 16] = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 250];
        let text: String = key.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(parse_salt(text.as_bytes()).unwrap(), key);
        assert!(parse_salt(b"abc").is_err());
    }

    #[test]
    fn keep_mask_drops_only_matching_ids_and_keeps_nulls() {
        let ids = StringArray::from(vec![Some("a"), None, Some("b"), Some("c")]);
        let list = Suppression {
            key: [7; 16],
            ..Default::default()
        };
        let forgotten = Forgotten::new(&list, [list.hash("b")], vec!["b".into()]);
        let mut found = HashSet::new();
        forgotten.find_in(&ids, &mut found);
        assert_eq!(found, HashSet::from([list.hash("b")]));
        let keep = keep_mask(&ids, |id| forgotten.contains(id)).unwrap();
        assert_eq!(keep, BooleanArray::from(vec![true, true, false, true]));
        assert!(keep_mask(&ids, |_| false).is_none());
        let view = arrow::array::StringViewArray::from(vec!["b", "x"]);
        assert_eq!(
            keep_mask(&view, |id| forgotten.contains(id)).unwrap(),
            BooleanArray::from(vec![false, true])
        );
    }
}
