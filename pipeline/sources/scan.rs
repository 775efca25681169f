//! The landing scan as a DataFusion plan node: how a cluster's executors read the landing
//! zone. A [`LandingTable`] names one stream's files (in path order, each with the moment it
//! was first ingested). Its plan is the scan node over a work list, an in-memory table of
//! the files (one partition per task-sized share): the scheduler gives each task its own
//! partitions of that list, as it does with any file scan, and the node reads the files its
//! input names with the same
//! [`read_file`] and [`settle`] as a run in this process, so writer variants are normalised
//! and bad files and rows are quarantined exactly as locally, on whichever executor runs the
//! task. Each good row carries its file's place in path order and its place in the file
//! (`_file`, `_row`), so that de-duplication, done in SQL after it, keeps the same copy of
//! an event as a local run. Each file leaves a receipt (its counts and quarantine entries)
//! in the warehouse, which the driver reads for the run report: a task run twice writes the
//! same receipt again.
//!
//! Owns: the scan node, its description (what a plan ships) and the receipts.
//! Must not: de-duplicate or write anything but quarantine and receipts.

use std::fmt;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, Int64Array, StringArray, UInt64Array};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::datasource::TableType;
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::execution::TaskContext;
use datafusion::logical_expr::Expr;
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, Partitioning, PlanProperties, SendableRecordBatchStream,
};
use futures::{StreamExt, TryStreamExt};
use object_store::ObjectStoreExt;
use serde::{Deserialize, Serialize};

use super::quarantine::{Entry, Quarantine};
use super::schema::StreamSchema;
use super::{read_file, settle, LandingFile, SourceError, StreamStats};
use crate::storage::erasure::Suppression;
use crate::storage::Location;

/// A good row's landing file, by its place in path order.
pub const FILE_COLUMN: &str = "_file";
/// A good row's place among its file's good rows.
pub const ROW_COLUMN: &str = "_row";

/// One landing file of a scan.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ScanFile {
    /// Its place in path order among every file of the run.
    pub seq: u64,
    /// Relative to the landing root.
    pub relative: String,
    /// When it was first ingested (the reference of the "too far in the future" rule).
    pub ingested_at: DateTime<Utc>,
}

/// What a scan reads and where it reports: everything an executor needs, by URL (each
/// process opens the stores with its own settings).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LandingScan {
    pub schema: StreamSchema,
    pub landing: String,
    pub warehouse: String,
    /// Warehouse-relative folder of the receipts.
    pub receipts: String,
    pub files: Vec<ScanFile>,
}

/// What reading one file did, as the driver counts it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Receipt {
    pub counts: StreamStats,
    /// Rows kept, before de-duplication.
    pub good_rows: usize,
    pub quarantined: Vec<Entry>,
}

impl LandingScan {
    /// The stream's normalised columns, then `_file` and `_row`.
    pub fn output_schema(&self) -> SchemaRef {
        let mut fields: Vec<Field> = self
            .schema
            .arrow_schema()
            .fields()
            .iter()
            .map(|f| f.as_ref().clone())
            .collect();
        fields.push(Field::new(FILE_COLUMN, DataType::UInt64, false));
        fields.push(Field::new(ROW_COLUMN, DataType::UInt64, false));
        Arc::new(Schema::new(fields))
    }

    /// The warehouse-relative path of file `seq`'s receipt.
    pub fn receipt_path(receipts: &str, seq: u64) -> String {
        format!("{receipts}/{seq}.json")
    }
}

/// One stream's landing files as a table (its scan runs where the plan runs).
#[derive(Debug)]
pub struct LandingTable {
    pub scan: Arc<LandingScan>,
}

#[async_trait]
impl TableProvider for LandingTable {
    fn schema(&self) -> SchemaRef {
        self.scan.output_schema()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        _limit: Option<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let partitions = state.config().target_partitions().min(self.scan.files.len()).max(1);
        let work = work_list(&self.scan.files, partitions)?;
        let scan = LandingScan {
            files: Vec::new(),
            ..self.scan.as_ref().clone()
        };
        Ok(Arc::new(LandingScanExec::new(
            Arc::new(scan),
            work,
            projection.cloned(),
        )))
    }
}

/// The work list's columns: a file's place in path order, its path, its ingest time (µs).
fn work_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("seq", DataType::UInt64, false),
        Field::new("relative", DataType::Utf8, false),
        Field::new("ingested_at", DataType::Int64, false),
    ]))
}

/// The files as a work list of `partitions` partitions: partition `p` holds every file whose
/// place in the list is `p` modulo the partition count, in path order.
fn work_list(files: &[ScanFile], partitions: usize) -> DfResult<Arc<dyn ExecutionPlan>> {
    let mut shares: Vec<Vec<RecordBatch>> = Vec::with_capacity(partitions);
    for p in 0..partitions {
        let share: Vec<&ScanFile> = files.iter().skip(p).step_by(partitions).collect();
        let columns: Vec<ArrayRef> = vec![
            Arc::new(UInt64Array::from_iter_values(share.iter().map(|f| f.seq))),
            Arc::new(StringArray::from_iter_values(share.iter().map(|f| f.relative.as_str()))),
            Arc::new(Int64Array::from_iter_values(
                share.iter().map(|f| f.ingested_at.timestamp_micros()),
            )),
        ];
        shares.push(vec![RecordBatch::try_new(work_schema(), columns)?]);
    }
    Ok(MemorySourceConfig::try_new_exec(&shares, work_schema(), None)?)
}

/// The plan node: reads the files its input (a work list) names, partition by partition.
#[derive(Debug)]
pub struct LandingScanExec {
    /// The scan (its `files` are in the work list, not here).
    pub scan: Arc<LandingScan>,
    pub work: Arc<dyn ExecutionPlan>,
    pub projection: Option<Vec<usize>>,
    schema: SchemaRef,
    properties: Arc<PlanProperties>,
}

impl LandingScanExec {
    pub fn new(scan: Arc<LandingScan>, work: Arc<dyn ExecutionPlan>, projection: Option<Vec<usize>>) -> Self {
        let full = scan.output_schema();
        let schema = match &projection {
            Some(columns) => Arc::new(full.project(columns).expect("a projection of the scan's columns")),
            None => full,
        };
        let properties = Arc::new(PlanProperties::new(
            EquivalenceProperties::new(schema.clone()),
            Partitioning::UnknownPartitioning(work.properties().partitioning.partition_count()),
            EmissionType::Incremental,
            Boundedness::Bounded,
        ));
        LandingScanExec {
            scan,
            work,
            projection,
            schema,
            properties,
        }
    }
}

impl DisplayAs for LandingScanExec {
    fn fmt_as(&self, _: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "LandingScanExec: stream={}", self.scan.schema.stream)
    }
}

impl ExecutionPlan for LandingScanExec {
    fn name(&self) -> &str {
        "LandingScanExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.work]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> DfResult<TreeNodeRecursion>,
    ) -> DfResult<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn with_new_children(self: Arc<Self>, children: Vec<Arc<dyn ExecutionPlan>>) -> DfResult<Arc<dyn ExecutionPlan>> {
        let [work] = <[_; 1]>::try_from(children)
            .map_err(|_| DataFusionError::Internal("LandingScanExec takes one input".to_string()))?;
        Ok(Arc::new(LandingScanExec::new(
            self.scan.clone(),
            work,
            self.projection.clone(),
        )))
    }

    fn execute(&self, partition: usize, context: Arc<TaskContext>) -> DfResult<SendableRecordBatchStream> {
        let work = self.work.execute(partition, context.clone())?;
        let (scan, projection) = (self.scan.clone(), self.projection.clone());
        let opened = futures::stream::once(async move {
            let files: Vec<RecordBatch> = work.try_collect().await?;
            let opened = Opened::open(scan, projection, &context).await?;
            Ok::<_, DataFusionError>((opened, scan_files(&files)?))
        });
        let batches = opened
            .map_ok(move |(opened, files)| {
                let opened = Arc::new(opened);
                futures::stream::iter(files)
                    .then(move |file| {
                        let opened = opened.clone();
                        async move { opened.read(file).await }
                    })
                    .map_ok(|batches| futures::stream::iter(batches.into_iter().map(Ok)))
                    .try_flatten()
            })
            .try_flatten();
        Ok(Box::pin(RecordBatchStreamAdapter::new(self.schema.clone(), batches)))
    }
}

/// The files a work list's batches name.
fn scan_files(batches: &[RecordBatch]) -> DfResult<Vec<ScanFile>> {
    let mut files = Vec::new();
    for batch in batches {
        let bad = || DataFusionError::Internal("a landing scan's work list has other columns".into());
        let seq = batch.column(0).as_any().downcast_ref::<UInt64Array>().ok_or_else(bad)?;
        let relative = batch.column(1).as_any().downcast_ref::<StringArray>().ok_or_else(bad)?;
        let at = batch.column(2).as_any().downcast_ref::<Int64Array>().ok_or_else(bad)?;
        for i in 0..batch.num_rows() {
            files.push(ScanFile {
                seq: seq.value(i),
                relative: relative.value(i).to_string(),
                ingested_at: DateTime::from_timestamp_micros(at.value(i)).ok_or_else(bad)?,
            });
        }
    }
    Ok(files)
}

/// A partition's scan, its stores open.
struct Opened {
    scan: Arc<LandingScan>,
    projection: Option<Vec<usize>>,
    landing: Location,
    warehouse: Location,
    suppression: Arc<Suppression>,
}

fn external(error: impl std::error::Error + Send + Sync + 'static) -> DataFusionError {
    DataFusionError::External(Box::new(error))
}

/// A location at `url` through this process's stores (those its settings configured).
pub fn open_location(url: &str, context: &TaskContext) -> DfResult<Location> {
    let parsed = url::Url::parse(url).map_err(external)?;
    let root = datafusion::execution::object_store::ObjectStoreUrl::parse(format!(
        "{}://{}",
        parsed.scheme(),
        parsed.host_str().unwrap_or_default()
    ))?;
    let store = context.runtime_env().object_store(root)?;
    Location::with_store(url, store).map_err(external)
}

impl Opened {
    async fn open(scan: Arc<LandingScan>, projection: Option<Vec<usize>>, context: &TaskContext) -> DfResult<Self> {
        let landing = open_location(&scan.landing, context)?;
        let warehouse = open_location(&scan.warehouse, context)?;
        let suppression = Arc::new(
            Suppression::load(&warehouse)
                .await
                .map_err(|e| external(SourceError::from(e)))?,
        );
        Ok(Opened {
            scan,
            projection,
            landing,
            warehouse,
            suppression,
        })
    }

    /// Read one file, quarantine what is bad, leave its receipt and return its good rows
    /// with their places.
    async fn read(&self, file: ScanFile) -> DfResult<Vec<RecordBatch>> {
        let landing_file = LandingFile {
            stream: self.scan.schema.stream.clone(),
            path: self.landing.path(&file.relative),
            relative: file.relative.clone(),
            appeared_at: file.ingested_at,
        };
        let outcome = read_file(
            &self.landing,
            &landing_file,
            &self.scan.schema,
            file.ingested_at,
            self.suppression.clone(),
        )
        .await
        .map_err(external)?;
        let quarantine = Quarantine::new(&self.warehouse);
        let settled = settle(
            &quarantine,
            &self.landing,
            &landing_file,
            outcome,
            self.suppression.is_empty(),
        )
        .await
        .map_err(external)?;
        let good_rows = settled.good.iter().map(|g| g.batch.num_rows()).sum();
        let receipt = Receipt {
            counts: settled.counts,
            good_rows,
            quarantined: settled.quarantined,
        };
        let path = self
            .warehouse
            .path(&LandingScan::receipt_path(&self.scan.receipts, file.seq));
        let json = serde_json::to_vec(&receipt).expect("serialisable");
        self.warehouse.store.put(&path, json.into()).await.map_err(external)?;
        let mut offset = 0u64;
        let mut batches = Vec::with_capacity(settled.good.len());
        for good in settled.good {
            let rows = good.batch.num_rows() as u64;
            let mut columns: Vec<ArrayRef> = good.batch.columns().to_vec();
            columns.push(Arc::new(UInt64Array::from(vec![file.seq; rows as usize])));
            columns.push(Arc::new(UInt64Array::from_iter_values(offset..offset + rows)));
            offset += rows;
            let batch = RecordBatch::try_new(self.scan.output_schema(), columns)?;
            batches.push(match &self.projection {
                Some(columns) => batch.project(columns)?,
                None => batch,
            });
        }
        Ok(batches)
    }
}
