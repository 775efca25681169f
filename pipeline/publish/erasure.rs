//! Erasure in the published tables: the forgotten customers' rows leave `customer_tags`
//! (a new version, with the figures of a publish), `tag_changes` and
//! `customer_tags_history`, and, on request, every older version that held them.
//!
//! Owns: the DELETE commits of an erasure, the pseudonymous exits it adds to the feed, and the
//! purge of older versions (vacuum, checkpoint, log cleanup). Must not: decide whom to forget
//! or record the request (that is `storage::erasure`, driven by the application).
//!
//! A DELETE rewrites only the data files that hold a forgotten row (delta-rs finds them by
//! scanning; the rest keep their files). Its predicate is the function
//! `forgotten_customer(customer_id)`, evaluated against the ids in memory, so the Delta log,
//! which records a DELETE's predicate, never holds an id.

use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, BooleanArray, Float64Array, StringArray};
use arrow::datatypes::DataType;
use arrow::record_batch::RecordBatch;
use chrono::{DateTime, Utc};
use datafusion::common::Result as DfResult;
use datafusion::logical_expr::{
    col, ColumnarValue, Expr, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};
use deltalake::kernel::transaction::CommitProperties;
use deltalake::operations::vacuum::VacuumMode;
use deltalake::DeltaTable;
use futures::TryStreamExt;
use serde_json::{json, Map, Value};
use tracing::info;

use super::diff;
use super::tables::{CHANGES_TABLE, HISTORY_TABLE, TAGS_TABLE};
use super::tags::{self, TableSettings, META_AS_OF, META_CHANGES, META_CUSTOMERS, META_ROWS, META_SEGMENTS};
use super::{file_count, open_or_new, table_url, PublishError};
use crate::storage::erasure::{drop_customers, keep_mask, Forgotten};
use crate::storage::Location;

/// Commit metadata of an erasure's commits: the request id.
pub const META_ERASURE: &str = "tagflow.erasure";
/// The customer id of an erased customer's exits in the feed: this, then the request id.
pub const ERASED_PREFIX: &str = "erased:";

/// The tables an erasure removes customers from, in the order it does.
pub const ERASED_TABLES: [&str; 3] = [TAGS_TABLE, CHANGES_TABLE, HISTORY_TABLE];

/// What an erasure did to one table.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct ErasedTable {
    pub table: String,
    /// The version that no longer holds the customers (none: nothing to remove).
    pub version: Option<u64>,
    pub rows_removed: u64,
    pub files_rewritten: u64,
}

/// `forgotten_customer(customer_id)`: true for the customers of one erasure.
#[derive(Debug)]
struct ForgottenCustomer {
    forgotten: Arc<Forgotten>,
    signature: Signature,
}

impl PartialEq for ForgottenCustomer {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.forgotten, &other.forgotten)
    }
}

impl Eq for ForgottenCustomer {}

impl Hash for ForgottenCustomer {
    fn hash<H: Hasher>(&self, state: &mut H) {
        (Arc::as_ptr(&self.forgotten) as usize).hash(state);
    }
}

impl ScalarUDFImpl for ForgottenCustomer {
    fn name(&self) -> &str {
        "forgotten_customer"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _args: &[DataType]) -> DfResult<DataType> {
        Ok(DataType::Boolean)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        let ids = args.args[0].to_array(args.number_rows)?;
        let keep = keep_mask(&ids, |id| self.forgotten.contains(id));
        let forgotten = match keep {
            Some(keep) => arrow::compute::not(&keep)?,
            None => BooleanArray::from(vec![false; ids.len()]),
        };
        Ok(ColumnarValue::Array(Arc::new(forgotten)))
    }
}

/// The predicate of an erasure's DELETE: `forgotten_customer(customer_id)`.
fn forgotten_predicate(forgotten: &Arc<Forgotten>) -> Expr {
    let function = ScalarUDF::new_from_impl(ForgottenCustomer {
        forgotten: forgotten.clone(),
        signature: Signature::any(1, Volatility::Immutable),
    });
    function.call(vec![col("customer_id")])
}

/// Remove the customers from `customer_tags`: one DELETE commit that carries a publish's
/// figures (the as-of of the version before: the tags are as they were, minus these
/// customers), then their exits go to the feed, pseudonymous ([`pseudonymise_exits`]).
/// Only the forgotten rows are read into memory (the scan evaluates the predicate on every
/// row), and the figures are the previous publish's minus them. Refused while live changes
/// wait on top of the latest version: they would be left behind on the old version.
pub async fn erase_tags(
    warehouse: &Location,
    forgotten: &Arc<Forgotten>,
    request_id: &str,
    settings: &TableSettings,
) -> Result<ErasedTable, PublishError> {
    let table = open_or_new(warehouse, TAGS_TABLE).await?;
    let mut erased = ErasedTable {
        table: TAGS_TABLE.into(),
        ..Default::default()
    };
    let Some(version) = table.version() else {
        return Ok(erased);
    };
    let feed = open_or_new(warehouse, CHANGES_TABLE).await?;
    if !super::live::view_rows(&feed, version).await?.is_empty() {
        return Err(PublishError::Unmerged {
            url: table_url(warehouse, TAGS_TABLE).to_string(),
        });
    }
    // A feed behind the table (a publish, or an erasure, that died) catches up first.
    tags::catch_up_feed(warehouse, settings).await?;
    let rows = forgotten_rows(&table, forgotten).await?;
    if rows.iter().all(|b| b.num_rows() == 0) {
        erased.version = Some(version);
        return Ok(erased);
    }
    let previous = latest_publish(&table).await?.unwrap_or_default();
    let as_of = previous
        .get(META_AS_OF)
        .and_then(Value::as_str)
        .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
        .map(|t| t.with_timezone(&Utc));
    let metadata = match figures_without(&previous, &rows) {
        Some(metadata) => metadata,
        None => figures_of_all_but(&table, forgotten, as_of).await?,
    };
    let deleted = delete(warehouse, TAGS_TABLE, table, forgotten, request_id, metadata).await?;
    let to = deleted.version.unwrap_or_default();
    let exits = exits_of(&rows);
    let feed_rows = pseudonymise_exits(
        tags::feed_rows(&exits, Some(version), to, as_of.unwrap_or_else(Utc::now)),
        request_id,
    );
    let feed = open_or_new(warehouse, CHANGES_TABLE).await?;
    tags::append_feed(warehouse, feed, settings, feed_rows, None, Some(version), to).await?;
    Ok(deleted)
}

/// The rows of the forgotten customers: `customer_id, family, tag, value, score`.
async fn forgotten_rows(table: &DeltaTable, forgotten: &Arc<Forgotten>) -> Result<Vec<RecordBatch>, PublishError> {
    let ctx = datafusion::prelude::SessionContext::new();
    super::register(&ctx, table, TAGS_TABLE).await?;
    let predicate = forgotten_predicate(forgotten);
    let rows = ctx
        .table(TAGS_TABLE)
        .await
        .and_then(|df| df.filter(predicate))
        .and_then(|df| df.select_columns(&["customer_id", "family", "tag", "value", "score"]));
    let read = |source| PublishError::Read {
        url: table.table_url().to_string(),
        source,
    };
    let batches = rows.map_err(read)?.collect().await.map_err(read)?;
    batches
        .iter()
        .map(|b| super::plain_strings(b).map_err(|e| read(e.into())))
        .collect()
}

/// A publish's figures (`previous`, its commit metadata) without `rows`, which are every
/// row of the customers they name: none when `previous` has no figures.
fn figures_without(previous: &Map<String, Value>, rows: &[RecordBatch]) -> Option<Map<String, Value>> {
    let mut segments: BTreeMap<String, BTreeMap<String, u64>> =
        serde_json::from_value(previous.get(META_SEGMENTS)?.clone()).ok()?;
    let total = previous.get(META_ROWS)?.as_u64()?;
    let customers = previous.get(META_CUSTOMERS)?.as_u64()?;
    let mut removed = 0u64;
    let mut ids = std::collections::HashSet::new();
    for batch in rows {
        let column = |name: &str| {
            batch
                .column_by_name(name)
                .expect("selected")
                .as_any()
                .downcast_ref::<StringArray>()
                .cloned()
                .expect("strings")
        };
        let (id, tag, value) = (column("customer_id"), column("tag"), column("value"));
        for i in 0..batch.num_rows() {
            ids.insert(id.value(i).to_string());
            removed += 1;
            if let Some(values) = segments.get_mut(tag.value(i)) {
                if let Some(size) = values.get_mut(value.value(i)) {
                    *size = size.saturating_sub(1);
                }
                values.retain(|_, size| *size > 0);
            }
        }
    }
    segments.retain(|_, values| !values.is_empty());
    let mut metadata = previous.clone();
    metadata.insert(META_ROWS.into(), json!(total.saturating_sub(removed)));
    metadata.insert(META_CUSTOMERS.into(), json!(customers.saturating_sub(ids.len() as u64)));
    metadata.insert(META_SEGMENTS.into(), json!(segments));
    metadata.insert(
        META_CHANGES.into(),
        json!({"entered": 0, "exited": removed, "changed": 0}),
    );
    Some(metadata)
}

/// The figures counted from every row but the forgotten customers' (a table whose last
/// publish recorded none).
async fn figures_of_all_but(
    table: &DeltaTable,
    forgotten: &Forgotten,
    as_of: Option<DateTime<Utc>>,
) -> Result<Map<String, Value>, PublishError> {
    let mut kept = tags::all_rows(table).await?;
    let exited = drop_customers(&mut kept, |id| forgotten.contains(id));
    let figures = diff::figures(&[], &kept, None);
    let mut metadata = Map::new();
    if let Some(as_of) = as_of {
        metadata.insert(META_AS_OF.into(), json!(as_of.to_rfc3339()));
    }
    metadata.insert(META_ROWS.into(), json!(figures.rows));
    metadata.insert(META_CUSTOMERS.into(), json!(figures.customers));
    metadata.insert(META_SEGMENTS.into(), json!(figures.segments));
    metadata.insert(
        META_CHANGES.into(),
        json!({"entered": 0, "exited": exited, "changed": 0}),
    );
    Ok(metadata)
}

/// The exits of `rows` (every row of the forgotten customers), as diff rows.
fn exits_of(rows: &[RecordBatch]) -> Vec<RecordBatch> {
    let schema = diff::tag_diff_schema();
    rows.iter()
        .filter(|b| b.num_rows() > 0)
        .map(|b| {
            let n = b.num_rows();
            let column = |name: &str| b.column_by_name(name).expect("selected").clone();
            let columns: Vec<ArrayRef> = vec![
                column("customer_id"),
                column("family"),
                column("tag"),
                Arc::new(StringArray::from(vec!["exited"; n])),
                column("value"),
                Arc::new(StringArray::from(vec![None::<&str>; n])),
                column("score"),
                Arc::new(Float64Array::from(vec![None; n])),
            ];
            RecordBatch::try_new(schema.clone(), columns).expect("diff rows")
        })
        .collect()
}

/// Remove the customers from a table that is not `customer_tags` (`tag_changes`,
/// `customer_tags_history`): one DELETE commit, none when it holds none of them.
pub async fn erase_rows(
    warehouse: &Location,
    table: &str,
    forgotten: &Arc<Forgotten>,
    request_id: &str,
) -> Result<ErasedTable, PublishError> {
    let delta = open_or_new(warehouse, table).await?;
    if delta.version().is_none() {
        return Ok(ErasedTable {
            table: table.into(),
            ..Default::default()
        });
    }
    delete(warehouse, table, delta, forgotten, request_id, Map::new()).await
}

async fn delete(
    warehouse: &Location,
    name: &str,
    table: DeltaTable,
    forgotten: &Arc<Forgotten>,
    request_id: &str,
    mut metadata: Map<String, Value>,
) -> Result<ErasedTable, PublishError> {
    metadata.insert(META_ERASURE.into(), json!(request_id));
    let (table, metrics) = table
        .delete()
        .with_predicate(forgotten_predicate(forgotten))
        .with_writer_properties(super::writer_properties())
        .with_commit_properties(CommitProperties::default().with_metadata(metadata))
        .await
        .map_err(|source| PublishError::Commit {
            url: table_url(warehouse, name).to_string(),
            source,
        })?;
    info!(
        table = name,
        rows = metrics.num_deleted_rows,
        files = metrics.num_removed_files,
        "erased"
    );
    Ok(ErasedTable {
        table: name.into(),
        version: table.version(),
        rows_removed: metrics.num_deleted_rows.unwrap_or_default() as u64,
        files_rewritten: metrics.num_removed_files as u64,
    })
}

/// Commits searched back for the latest publish.
const PUBLISH_SEARCH: usize = 200;

/// The `tagflow.*` commit metadata of the latest publish (commits without an as-of time,
/// compaction's, are skipped) among the last [`PUBLISH_SEARCH`] commits.
async fn latest_publish(table: &DeltaTable) -> Result<Option<Map<String, Value>>, PublishError> {
    let infos: Vec<deltalake::kernel::CommitInfo> =
        table
            .history(Some(PUBLISH_SEARCH))
            .try_collect()
            .await
            .map_err(|source| PublishError::Open {
                url: table.table_url().to_string(),
                source,
            })?;
    Ok(infos
        .into_iter()
        .find(|info| info.info.contains_key(META_AS_OF))
        .map(|info| {
            info.info
                .into_iter()
                .filter(|(key, _)| key.starts_with("tagflow."))
                .collect()
        }))
}

/// The feed rows of an erasure's `customer_tags` version, made pseudonymous: each forgotten
/// customer's exit keeps its tag and old value (so segment sizes and outflows still add
/// up) under the customer id `erased:<request id>`, without its score.
pub(crate) fn pseudonymise_exits(rows: Vec<RecordBatch>, request_id: &str) -> Vec<RecordBatch> {
    let id = format!("{ERASED_PREFIX}{request_id}");
    rows.into_iter()
        .map(|batch| {
            let schema = batch.schema();
            let n = batch.num_rows();
            let columns: Vec<ArrayRef> = schema
                .fields()
                .iter()
                .zip(batch.columns())
                .map(|(field, column)| match field.name().as_str() {
                    "customer_id" => Arc::new(StringArray::from(vec![id.as_str(); n])) as ArrayRef,
                    "old_score" => Arc::new(Float64Array::from(vec![None; n])) as ArrayRef,
                    _ => column.clone(),
                })
                .collect();
            RecordBatch::try_new(schema, columns).expect("same schema")
        })
        .collect()
}

/// `--purge-history`: make the versions that held the customers unreadable now. Per table:
/// a vacuum with zero retention (every file the latest version does not use is deleted), a
/// checkpoint at the latest version, and the deletion of every log entry before it (older
/// log entries carry file statistics, which may name a customer). Returns the first version
/// still readable (the versions before it are gone), or none for a missing table.
pub async fn purge_history(
    warehouse: &Location,
    name: &str,
    settings: &TableSettings,
) -> Result<Option<u64>, PublishError> {
    let table = open_or_new(warehouse, name).await?;
    if table.version().is_none() {
        return Ok(None);
    }
    let failed = |source| PublishError::Commit {
        url: table_url(warehouse, name).to_string(),
        source,
    };
    // The latest publish's figures, repeated by a commit after the vacuum's (below).
    let published = match name {
        TAGS_TABLE => latest_publish(&table).await?,
        _ => None,
    };
    let (table, vacuumed) = table
        .vacuum()
        .with_retention_period(chrono::Duration::zero())
        .with_enforce_retention_duration(false)
        .with_mode(VacuumMode::Full)
        .await
        .map_err(failed)?;
    // The vacuum's own commits carry no as-of time: without this one, the only readable
    // version would be a vacuum's and `snapshots` (and `--at`) would find no publish.
    // The feed covers it (it changes no row), or its next catch-up would diff it against a
    // version that is gone.
    let table = match published {
        Some(metadata) => {
            let table = tags::commit_actions(table, Vec::new(), CommitProperties::default().with_metadata(metadata))
                .await
                .map_err(failed)?;
            tags::cover_feed(warehouse, settings, table.version().unwrap_or_default()).await?;
            table
        }
        None => table,
    };
    deltalake::checkpoints::create_checkpoint(&table, None)
        .await
        .map_err(failed)?;
    let checkpoint = table.version().unwrap_or_default();
    // Every entry older than the checkpoint, whatever its age (the cutoff is in the future).
    let cutoff = Utc::now().timestamp_millis() + 60_000;
    let logs = deltalake::checkpoints::cleanup_expired_logs_for(checkpoint, table.log_store().as_ref(), cutoff, None)
        .await
        .map_err(failed)?;
    info!(
        table = name,
        files = vacuumed.files_deleted.len(),
        logs,
        checkpoint,
        files_now = file_count(&table),
        "history purged"
    );
    Ok(Some(checkpoint))
}

/// Rows per published table holding a customer, for reports: `(table, rows removed)`.
pub fn removed_by_table(erased: &[ErasedTable]) -> BTreeMap<String, u64> {
    erased.iter().map(|e| (e.table.clone(), e.rows_removed)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::Int64Array;
    use arrow::datatypes::{Field, Schema};

    #[test]
    fn exits_lose_the_id_and_the_score_and_keep_the_value() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("customer_id", DataType::Utf8, false),
            Field::new("old_value", DataType::Utf8, true),
            Field::new("old_score", DataType::Float64, true),
            Field::new("to_version", DataType::Int64, true),
        ]));
        let batch = RecordBatch::try_new(
            schema,
            vec![
                Arc::new(StringArray::from(vec!["c1", "c2"])),
                Arc::new(StringArray::from(vec!["champion", "true"])),
                Arc::new(Float64Array::from(vec![Some(0.5), None])),
                Arc::new(Int64Array::from(vec![4, 4])),
            ],
        )
        .unwrap();
        let out = pseudonymise_exits(vec![batch], "r1");
        let ids = out[0].column(0).as_any().downcast_ref::<StringArray>().unwrap();
        assert_eq!(ids.iter().flatten().collect::<Vec<_>>(), ["erased:r1", "erased:r1"]);
        assert_eq!(
            out[0].column(1).as_ref(),
            &StringArray::from(vec!["champion", "true"]) as &dyn Array
        );
        assert_eq!(out[0].column(2).null_count(), 2);
        assert_eq!(out[0].column(3).as_ref(), &Int64Array::from(vec![4, 4]) as &dyn Array);
    }
}
