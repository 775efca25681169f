//! Snapshots: what the published versions of `customer_tags` hold, read from their commit
//! metadata and from the change feed: the version list (`tagflow snapshots`), the version
//! at an as-of time (`tagflow tags --at`), and segment sizes with inflow and outflow
//! (`tagflow segments`).
//!
//! Owns: reading version history and the feed for these views.
//! Must not: write anything.

use std::collections::BTreeMap;

use arrow::array::{Array, Int64Array, StringArray};
use chrono::{DateTime, Utc};
use futures::{StreamExt, TryStreamExt};
use serde_json::Value;

use crate::jobs::Definitions;
use crate::publish::tables::{CHANGES_TABLE, TAGS_TABLE};
use crate::publish::tags::{
    ChangeCounts, META_AS_OF, META_CHANGES, META_CUSTOMERS, META_DEFINITIONS, META_ROWS, META_SEGMENTS,
};
use crate::publish::{open_published, query_published, PublishError};
use crate::storage::Location;
use deltalake::DeltaTable;

/// One version of `customer_tags`.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct Snapshot {
    pub version: u64,
    pub committed_at: Option<DateTime<Utc>>,
    /// `MERGE`, `WRITE` (a publish), `OPTIMIZE`, `VACUUM START`/`END` (compaction).
    pub operation: String,
    /// Set on publishes: the as-of time the tags were evaluated at.
    pub as_of: Option<DateTime<Utc>>,
    pub run_id: Option<String>,
    pub rows: Option<u64>,
    pub customers: Option<u64>,
    pub changes: Option<ChangeCounts>,
    /// Rows per tag and value.
    pub segments: BTreeMap<String, BTreeMap<String, u64>>,
    /// Per tag, a fingerprint of the definition its rows were made with (none on publishes
    /// that predate it, or on other operations).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub definitions: Definitions,
}

impl Snapshot {
    pub fn is_publish(&self) -> bool {
        self.as_of.is_some()
    }
}

/// Every version still in the log, newest first.
pub async fn list(warehouse: &Location) -> Result<Vec<Snapshot>, PublishError> {
    let table = open_published(warehouse, TAGS_TABLE, None).await?;
    history(&table, None).await
}

/// The versions of an opened `customer_tags` up to its loaded version, newest first (at most
/// `limit` of them), read from each version's own commit file so that versions committed
/// after the table was loaded never shift the numbering.
pub async fn history(table: &DeltaTable, limit: Option<usize>) -> Result<Vec<Snapshot>, PublishError> {
    let latest = table.version().unwrap_or_default();
    let log = table.log_store();
    let open_error = |source| PublishError::Open {
        url: table.table_url().to_string(),
        source,
    };
    let versions: Vec<u64> = (0..=latest).rev().take(limit.unwrap_or(usize::MAX)).collect();
    let reads = versions.clone().into_iter().map(|version| {
        let log = log.clone();
        async move { log.read_commit_entry(version).await }
    });
    let entries: Vec<Option<bytes::Bytes>> = futures::stream::iter(reads)
        .buffered(16)
        .try_collect()
        .await
        .map_err(open_error)?;
    Ok(versions
        .into_iter()
        .zip(entries)
        // Commit files removed by log cleanup end the history.
        .map_while(|(version, entry)| entry.map(|bytes| snapshot(version, &bytes)))
        .collect())
}

/// A version's snapshot from its commit file's `commitInfo` action.
fn snapshot(version: u64, commit: &[u8]) -> Snapshot {
    let info: Value = commit
        .split(|b| *b == b'\n')
        .filter_map(|line| serde_json::from_slice::<Value>(line).ok())
        .find_map(|action| action.get("commitInfo").cloned())
        .unwrap_or_default();
    let meta = |key: &str| info.get(key).cloned();
    Snapshot {
        version,
        committed_at: meta("timestamp")
            .as_ref()
            .and_then(Value::as_i64)
            .and_then(DateTime::from_timestamp_millis),
        operation: meta("operation")
            .as_ref()
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string(),
        as_of: meta(META_AS_OF)
            .as_ref()
            .and_then(Value::as_str)
            .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
            .map(|t| t.with_timezone(&Utc)),
        run_id: meta("tagflow.run_id")
            .as_ref()
            .and_then(Value::as_str)
            .map(String::from),
        rows: meta(META_ROWS).as_ref().and_then(Value::as_u64),
        customers: meta(META_CUSTOMERS).as_ref().and_then(Value::as_u64),
        changes: meta(META_CHANGES).and_then(|v| serde_json::from_value(v).ok()),
        segments: meta(META_SEGMENTS)
            .and_then(|v| serde_json::from_value(v).ok())
            .unwrap_or_default(),
        definitions: meta(META_DEFINITIONS)
            .and_then(|v| serde_json::from_value(v).ok())
            .unwrap_or_default(),
    }
}

/// The latest publish of `customer_tags` (the snapshot served now), if there is one.
pub async fn latest_publish(warehouse: &Location) -> Result<Option<Snapshot>, PublishError> {
    match open_published(warehouse, TAGS_TABLE, None).await {
        Err(PublishError::NotFound { .. }) => Ok(None),
        other => latest_publish_in(&other?).await,
    }
}

/// The latest publish of an opened `customer_tags` (none before the first).
pub async fn latest_publish_in(table: &DeltaTable) -> Result<Option<Snapshot>, PublishError> {
    if table.version().is_none() {
        return Ok(None);
    }
    // A compaction adds a few versions after a publish: look at the newest first.
    for limit in [Some(8), None] {
        if let Some(found) = history(table, limit).await?.into_iter().find(Snapshot::is_publish) {
            return Ok(Some(found));
        }
    }
    Ok(None)
}

/// The version to read for as-of time `at`: the latest publish evaluated at or before it.
pub async fn version_at(warehouse: &Location, at: DateTime<Utc>) -> Result<u64, PublishError> {
    let snapshots = list(warehouse).await?;
    snapshots
        .iter()
        .filter(|s| s.as_of.is_some_and(|t| t <= at))
        .map(|s| s.version)
        .max()
        .ok_or_else(|| PublishError::NoVersionAt {
            at: at.to_rfc3339(),
            earliest: snapshots.iter().filter_map(|s| s.as_of).min().map(|t| t.to_rfc3339()),
        })
}

/// One segment (tag and value) at one published version.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SegmentFlow {
    pub version: u64,
    pub as_of: DateTime<Utc>,
    pub tag: String,
    pub value: String,
    /// Customers in the segment at this version.
    pub size: u64,
    /// Customers who joined it with this version (entered the tag with this value, or
    /// changed to it).
    pub inflow: u64,
    /// Customers who left it with this version.
    pub outflow: u64,
}

/// Size, inflow and outflow per published version (as-of at or after `since`), tag and value,
/// oldest version first. A segment that emptied shows with size 0 at the version it did.
pub async fn segments(warehouse: &Location, since: Option<DateTime<Utc>>) -> Result<Vec<SegmentFlow>, PublishError> {
    let snapshots: Vec<Snapshot> = list(warehouse)
        .await?
        .into_iter()
        .filter(|s| s.as_of.is_some_and(|t| since.is_none_or(|since| t >= since)))
        .collect();
    let Some(oldest) = snapshots.iter().map(|s| s.version).min() else {
        return Ok(Vec::new());
    };
    let sql = format!(
        "SELECT to_version, tag, value, sum(inflow) AS inflow, sum(outflow) AS outflow FROM (
            SELECT to_version, tag, new_value AS value, 1 AS inflow, 0 AS outflow FROM {CHANGES_TABLE}
             WHERE new_value IS NOT NULL AND (old_value IS DISTINCT FROM new_value) AND to_version >= {oldest}
            UNION ALL
            SELECT to_version, tag, old_value AS value, 0 AS inflow, 1 AS outflow FROM {CHANGES_TABLE}
             WHERE old_value IS NOT NULL AND (old_value IS DISTINCT FROM new_value) AND to_version >= {oldest})
         GROUP BY to_version, tag, value"
    );
    let flows = match query_published(warehouse, CHANGES_TABLE, None, &sql).await {
        Err(PublishError::NotFound { .. }) => Vec::new(),
        other => other?,
    };
    let mut moves: BTreeMap<(u64, String, String), (u64, u64)> = BTreeMap::new();
    for batch in &flows {
        let int = |name: &str| {
            batch
                .column_by_name(name)
                .and_then(|c| c.as_any().downcast_ref::<Int64Array>().cloned())
        };
        let text = |name: &str| {
            batch
                .column_by_name(name)
                .and_then(|c| c.as_any().downcast_ref::<StringArray>().cloned())
        };
        let (Some(versions), Some(tags), Some(values), Some(inflow), Some(outflow)) = (
            int("to_version"),
            text("tag"),
            text("value"),
            int("inflow"),
            int("outflow"),
        ) else {
            continue;
        };
        for i in 0..batch.num_rows() {
            moves.insert(
                (
                    versions.value(i) as u64,
                    tags.value(i).to_string(),
                    values.value(i).to_string(),
                ),
                (inflow.value(i) as u64, outflow.value(i) as u64),
            );
        }
    }
    let mut out = Vec::new();
    for snapshot in snapshots.iter().rev() {
        let as_of = snapshot.as_of.expect("publishes only");
        let mut keys: Vec<(String, String)> = snapshot
            .segments
            .iter()
            .flat_map(|(tag, values)| values.keys().map(move |v| (tag.clone(), v.clone())))
            .collect();
        // Segments that emptied with this version still show their outflow.
        keys.extend(
            moves
                .keys()
                .filter(|(v, _, _)| *v == snapshot.version)
                .map(|(_, t, v)| (t.clone(), v.clone())),
        );
        keys.sort();
        keys.dedup();
        for (tag, value) in keys {
            let (inflow, outflow) = moves
                .get(&(snapshot.version, tag.clone(), value.clone()))
                .copied()
                .unwrap_or_default();
            let size = snapshot
                .segments
                .get(&tag)
                .and_then(|v| v.get(&value))
                .copied()
                .unwrap_or(0);
            out.push(SegmentFlow {
                version: snapshot.version,
                as_of,
                tag,
                value,
                size,
                inflow,
                outflow,
            });
        }
    }
    Ok(out)
}
