//! State files written where the rows are: a DataFusion sink (the target of an
//! `INSERT INTO`) with which a cluster's executors write the files of a state version
//! themselves, so a full rebuild on a cluster never brings the events or the state tables
//! through the driver. The driver names the folders (one per run and version, so no
//! leftover of another run is ever listed), lists them once the query is done, and commits
//! a manifest naming what it found ([`super::State`]).
//!
//! Each partition of the sink's input becomes files of its own, under new names, and the
//! sink's result is one row per partition: the rows it took (`count`, as every `INSERT`
//! returns) and the files it wrote (`written`, JSON). The driver takes the files the query's result
//! names, which are those of the tasks that succeeded: a task that failed after writing
//! some files and ran again elsewhere leaves files no result names, never read (and
//! collected with the state's other unreferenced files).
//!
//! Owns: the sink node and the files it writes (Arrow IPC segments, de-duplication ids).
//! Must not: commit anything (the driver does) or interpret landing files.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, Int64Array, StringArray, UInt32Array, UInt64Array};
use arrow::compute::{cast, take_record_batch};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use async_trait::async_trait;
use bytes::Bytes;
use chrono::DateTime;
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::datasource::TableType;
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::execution::TaskContext;
use datafusion::logical_expr::dml::InsertOp;
use datafusion::logical_expr::Expr;
use datafusion::physical_expr::expressions::col;
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, Distribution, ExecutionPlan, Partitioning, PlanProperties, SendableRecordBatchStream,
};
use futures::TryStreamExt;
use object_store::ObjectStoreExt;
use serde::{Deserialize, Serialize};

use super::encode_ids;
use super::tables::null_keys;
use crate::sources::scan::open_location;
use crate::sources::schema::EVENT_DAY;
use crate::sources::split_at;
use crate::storage::dedup::event_id_hashes;
use crate::storage::{arrow_file_bytes, Location};

/// What a sink writes.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum SinkKind {
    /// A stream's unique events: those at or before `as_of_micros` under `dir` (the state
    /// jobs' input), later ones, the state's held events, under `held`; with none (a
    /// backfill, which commits no state), later ones are counted, not written.
    Events { as_of_micros: i64, held: Option<String> },
    /// A state table's rows: one segment per value of `day_column` (the input is
    /// partitioned by it, so a day is in one partition), else one per partition. A null in
    /// a `keys` column fails the write, as it fails a local fold.
    Table {
        day_column: Option<String>,
        keys: Vec<String>,
    },
    /// A stream's de-duplication ids (input: `event_day`, `event_id`): the hashes of one
    /// event day per file.
    Seen,
}

/// A file a sink wrote, as its result names it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WrittenFile {
    /// Relative to the warehouse.
    pub path: String,
    pub rows: usize,
    /// The day of every row (a day-segmented table, ids).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub day: Option<i64>,
    /// Held events (an events sink's rows after the as-of time).
    #[serde(default)]
    pub held: bool,
}

/// What a sink's result says: the rows it took (its `count` column) and the files it wrote
/// (its `written` column).
pub struct SinkResult {
    pub rows: usize,
    pub files: Vec<WrittenFile>,
}

/// Read a sink's result.
pub fn sink_result(batches: &[RecordBatch]) -> DfResult<SinkResult> {
    let mut result = SinkResult {
        rows: 0,
        files: Vec::new(),
    };
    for batch in batches {
        let counts = batch
            .column_by_name("count")
            .and_then(|c| c.as_any().downcast_ref::<UInt64Array>())
            .ok_or_else(|| DataFusionError::Internal("a sink's result without `count`".into()))?;
        result.rows += counts.iter().flatten().sum::<u64>() as usize;
        let written = batch
            .column_by_name(WRITTEN)
            .and_then(|c| c.as_any().downcast_ref::<StringArray>())
            .ok_or_else(|| DataFusionError::Internal(format!("a sink's result without `{WRITTEN}`")))?;
        for json in written.iter().flatten() {
            let listed: Vec<WrittenFile> =
                serde_json::from_str(json).map_err(|e| DataFusionError::External(Box::new(e)))?;
            result.files.extend(listed);
        }
    }
    Ok(result)
}

/// A sink: what it writes, and where (folders relative to the warehouse, by URL).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Sink {
    pub kind: SinkKind,
    pub warehouse: String,
    pub dir: String,
}

/// The result's column naming the files written.
const WRITTEN: &str = "written";

/// A new file name under `dir`, for a file of `day` if any.
fn new_file(dir: &str, day: Option<i64>, extension: &str) -> String {
    let id = uuid::Uuid::new_v4();
    match day {
        Some(day) => format!("{dir}/{day}-{id}.{extension}"),
        None => format!("{dir}/{id}.{extension}"),
    }
}

/// A sink as the target of `INSERT INTO`: `schema` is the rows it takes.
#[derive(Debug)]
pub struct SinkTable {
    pub sink: Arc<Sink>,
    pub schema: SchemaRef,
}

#[async_trait]
impl TableProvider for SinkTable {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    async fn scan(
        &self,
        _state: &dyn Session,
        _projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        _limit: Option<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        Err(DataFusionError::Plan(format!(
            "the sink of {} is written, not read",
            self.sink.dir
        )))
    }

    async fn insert_into(
        &self,
        _state: &dyn Session,
        input: Arc<dyn ExecutionPlan>,
        _insert_op: InsertOp,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        Ok(Arc::new(SinkExec::new(self.sink.clone(), input)))
    }
}

/// The plan node: writes each input partition, returns its row count.
#[derive(Debug)]
pub struct SinkExec {
    pub sink: Arc<Sink>,
    pub input: Arc<dyn ExecutionPlan>,
    properties: Arc<PlanProperties>,
}

fn result_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("count", DataType::UInt64, false),
        Field::new(WRITTEN, DataType::Utf8, false),
    ]))
}

impl SinkExec {
    pub fn new(sink: Arc<Sink>, input: Arc<dyn ExecutionPlan>) -> Self {
        let partitions = input.properties().partitioning.partition_count();
        let properties = Arc::new(PlanProperties::new(
            EquivalenceProperties::new(result_schema()),
            Partitioning::UnknownPartitioning(partitions),
            EmissionType::Final,
            Boundedness::Bounded,
        ));
        SinkExec {
            sink,
            input,
            properties,
        }
    }

    /// The column whose values must not be split across partitions (one file per value).
    fn grouping_column(&self) -> Option<&str> {
        match &self.sink.kind {
            SinkKind::Table { day_column, .. } => day_column.as_deref(),
            SinkKind::Seen => Some(EVENT_DAY),
            SinkKind::Events { .. } => None,
        }
    }
}

impl DisplayAs for SinkExec {
    fn fmt_as(&self, _: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "SinkExec: dir={}", self.sink.dir)
    }
}

impl ExecutionPlan for SinkExec {
    fn name(&self) -> &str {
        "SinkExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn required_input_distribution(&self) -> Vec<Distribution> {
        let schema = self.input.schema();
        match self.grouping_column().map(|name| col(name, &schema)) {
            Some(Ok(column)) => vec![Distribution::KeyPartitioned(vec![column])],
            _ => vec![Distribution::UnspecifiedDistribution],
        }
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> DfResult<TreeNodeRecursion>,
    ) -> DfResult<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn with_new_children(self: Arc<Self>, children: Vec<Arc<dyn ExecutionPlan>>) -> DfResult<Arc<dyn ExecutionPlan>> {
        let [input] = <[_; 1]>::try_from(children)
            .map_err(|_| DataFusionError::Internal("SinkExec takes one input".to_string()))?;
        Ok(Arc::new(SinkExec::new(self.sink.clone(), input)))
    }

    fn execute(&self, partition: usize, context: Arc<TaskContext>) -> DfResult<SendableRecordBatchStream> {
        let rows = self.input.execute(partition, context.clone())?;
        let sink = self.sink.clone();
        let written = async move {
            let warehouse = open_location(&sink.warehouse, &context)?;
            let batches: Vec<RecordBatch> = rows.try_collect().await?;
            let count = batches.iter().map(|b| b.num_rows() as u64).sum::<u64>();
            let files = sink_files(&sink, batches)?;
            let written: Vec<WrittenFile> = files.iter().map(|f| f.written.clone()).collect();
            write_files(&warehouse, files).await?;
            let counts: ArrayRef = Arc::new(UInt64Array::from(vec![count]));
            let json = serde_json::to_string(&written).expect("serialisable");
            let written: ArrayRef = Arc::new(StringArray::from(vec![json]));
            Ok(RecordBatch::try_new(result_schema(), vec![counts, written])?)
        };
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            result_schema(),
            futures::stream::once(written),
        )))
    }
}

/// One file a partition writes.
struct SinkFile {
    written: WrittenFile,
    content: Content,
}

enum Content {
    Rows(SchemaRef, Vec<RecordBatch>),
    Ids(Vec<u128>),
}

/// The files one partition of `sink` writes for `batches` (none for no rows).
fn sink_files(sink: &Sink, batches: Vec<RecordBatch>) -> DfResult<Vec<SinkFile>> {
    let Some(schema) = batches.first().map(|b| b.schema()) else {
        return Ok(Vec::new());
    };
    let rows_file = |dir: &str, day: Option<i64>, held: bool, batches: Vec<RecordBatch>| SinkFile {
        written: WrittenFile {
            path: new_file(dir, day, "arrow"),
            rows: batches.iter().map(|b| b.num_rows()).sum(),
            day,
            held,
        },
        content: Content::Rows(schema.clone(), batches),
    };
    let dir = &sink.dir;
    let mut files = Vec::new();
    match &sink.kind {
        SinkKind::Events { as_of_micros, held } => {
            let as_of = DateTime::from_timestamp_micros(*as_of_micros).expect("an as-of time");
            let (due, later) = split_at(batches, as_of);
            files.push(rows_file(dir, None, false, due));
            if let Some(held) = held {
                files.push(rows_file(held, None, true, later));
            }
        }
        SinkKind::Table { day_column, keys } => {
            if let Some(message) = null_keys(&batches, keys) {
                return Err(DataFusionError::Execution(message));
            }
            match day_column {
                None => files.push(rows_file(dir, None, false, batches)),
                Some(column) => {
                    for (day, rows) in by_day(&batches, column)? {
                        files.push(rows_file(dir, Some(day), false, rows));
                    }
                }
            }
        }
        SinkKind::Seen => {
            for (day, rows) in by_day(&batches, EVENT_DAY)? {
                let mut ids = Vec::new();
                for batch in &rows {
                    let column = batch
                        .column_by_name("event_id")
                        .and_then(|c| c.as_any().downcast_ref::<StringArray>())
                        .ok_or_else(|| DataFusionError::Internal("ids sink: no utf8 event_id".into()))?;
                    ids.extend(event_id_hashes(column));
                }
                files.push(SinkFile {
                    written: WrittenFile {
                        path: new_file(dir, Some(day), "bin"),
                        rows: ids.len(),
                        day: Some(day),
                        held: false,
                    },
                    content: Content::Ids(ids),
                });
            }
        }
    }
    files.retain(|f| f.written.rows > 0);
    Ok(files)
}

/// `batches`' rows grouped by the value of `column` (an integer day).
fn by_day(batches: &[RecordBatch], column: &str) -> DfResult<BTreeMap<i64, Vec<RecordBatch>>> {
    let mut days: BTreeMap<i64, Vec<RecordBatch>> = BTreeMap::new();
    for batch in batches {
        let values = batch
            .column_by_name(column)
            .ok_or_else(|| DataFusionError::Internal(format!("sink: no column {column}")))?;
        let values = cast(values, &DataType::Int64)?;
        let values = values.as_any().downcast_ref::<Int64Array>().expect("cast to Int64");
        let mut rows: BTreeMap<i64, Vec<u32>> = BTreeMap::new();
        for (i, day) in values.iter().enumerate() {
            let day = day.ok_or_else(|| DataFusionError::Execution(format!("a null {column}")))?;
            rows.entry(day).or_default().push(i as u32);
        }
        for (day, indices) in rows {
            let part = match indices.len() == batch.num_rows() {
                true => batch.clone(),
                false => take_record_batch(batch, &UInt32Array::from(indices))?,
            };
            days.entry(day).or_default().push(part);
        }
    }
    Ok(days)
}

/// Encode and put `files` under the warehouse (compressed on an object store, as every
/// state file).
async fn write_files(warehouse: &Location, files: Vec<SinkFile>) -> DfResult<()> {
    let compress = !warehouse.is_local();
    for file in files {
        let bytes: Bytes = match file.content {
            Content::Rows(schema, batches) => {
                tokio::task::spawn_blocking(move || arrow_file_bytes(schema, &batches, compress))
                    .await
                    .map_err(|e| DataFusionError::External(Box::new(e)))??
            }
            Content::Ids(ids) => encode_ids(ids.iter()),
        };
        warehouse
            .store
            .put(&warehouse.path(&file.written.path), bytes.into())
            .await
            .map_err(|e| DataFusionError::External(Box::new(e)))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::Int32Array;

    fn rows(days: &[i32], keys: &[Option<&str>]) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![
            Field::new("customer_id", DataType::Utf8, true),
            Field::new("event_day", DataType::Int32, false),
        ]));
        let columns: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from(keys.to_vec())),
            Arc::new(Int32Array::from(days.to_vec())),
        ];
        RecordBatch::try_new(schema, columns).unwrap()
    }

    fn table_sink(day_column: Option<&str>) -> Sink {
        Sink {
            kind: SinkKind::Table {
                day_column: day_column.map(String::from),
                keys: vec!["customer_id".into(), "event_day".into()],
            },
            warehouse: "file:///w".into(),
            dir: "t".into(),
        }
    }

    #[test]
    fn a_day_segmented_table_gets_one_file_per_day_under_new_names() {
        let batch = rows(&[3, 1, 3, 3], &[Some("a"), Some("b"), Some("c"), Some("d")]);
        let files = sink_files(&table_sink(Some("event_day")), vec![batch.clone()]).unwrap();
        let mut days: Vec<(Option<i64>, usize)> = files.iter().map(|f| (f.written.day, f.written.rows)).collect();
        days.sort();
        assert_eq!(days, vec![(Some(1), 1), (Some(3), 3)]);
        assert!(files
            .iter()
            .all(|f| f.written.path.starts_with("t/") && !f.written.held));
        let again = sink_files(&table_sink(Some("event_day")), vec![batch]).unwrap();
        assert!(
            files
                .iter()
                .all(|f| again.iter().all(|g| g.written.path != f.written.path)),
            "a task run again writes new files, never over another's"
        );
        let whole = sink_files(&table_sink(None), vec![rows(&[3, 1], &[Some("a"), Some("b")])]).unwrap();
        assert_eq!(whole.len(), 1);
        assert_eq!((whole[0].written.day, whole[0].written.rows), (None, 2));
    }

    #[test]
    fn a_null_key_fails_the_write_as_it_fails_a_local_fold() {
        let error = sink_files(&table_sink(None), vec![rows(&[1, 2], &[Some("a"), None])])
            .err()
            .expect("a null key");
        assert!(
            error.to_string().contains("key column 'customer_id' is null in 1 rows"),
            "{error}"
        );
    }

    #[test]
    fn events_split_at_the_as_of_time_into_due_and_held_files() {
        use arrow::array::TimestampMicrosecondArray;
        let schema = Arc::new(Schema::new(vec![Field::new(
            "event_time",
            DataType::Timestamp(arrow::datatypes::TimeUnit::Microsecond, Some("UTC".into())),
            false,
        )]));
        let times: ArrayRef = Arc::new(TimestampMicrosecondArray::from(vec![10, 20, 30]).with_timezone("UTC"));
        let batch = RecordBatch::try_new(schema, vec![times]).unwrap();
        let sink = Sink {
            kind: SinkKind::Events {
                as_of_micros: 20,
                held: Some("held".into()),
            },
            warehouse: "file:///w".into(),
            dir: "due".into(),
        };
        let files = sink_files(&sink, vec![batch]).unwrap();
        let mut split: Vec<(bool, usize, bool)> = files
            .iter()
            .map(|f| {
                (
                    f.written.held,
                    f.written.rows,
                    f.written
                        .path
                        .starts_with(if f.written.held { "held/" } else { "due/" }),
                )
            })
            .collect();
        split.sort();
        assert_eq!(split, vec![(false, 2, true), (true, 1, true)]);
    }
}
