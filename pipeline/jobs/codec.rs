//! How tagflow's own plan parts travel in a Ballista plan: the landing scan
//! ([`crate::sources::scan`]) and the state sink ([`crate::state::sink`]), as table
//! providers in the logical plan a driver sends and as plan nodes in the stages the
//! scheduler hands to executors. Every process of a cluster uses these codecs (the driver's
//! session, the scheduler and the executors); anything else is Ballista's and goes to its
//! codecs.
//!
//! A tagflow part is encoded as `tagflow:` and a JSON description: a landing scan names its
//! files by URL and a sink its folders, never data or credentials (each process opens the
//! stores with its own settings).
//!
//! Owns: the encoding of tagflow's plan parts. Must not: plan or run anything.

use std::any::Any;
use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use ballista_core::serde::{BallistaLogicalExtensionCodec, BallistaPhysicalExtensionCodec};
use datafusion::catalog::TableProvider;
use datafusion::common::TableReference;
use datafusion::datasource::file_format::FileFormatFactory;
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::TaskContext;
use datafusion::logical_expr::{Extension, LogicalPlan};
use datafusion::physical_plan::ExecutionPlan;
use datafusion_proto::logical_plan::LogicalExtensionCodec;
use datafusion_proto::physical_plan::{PhysicalExtensionCodec, PhysicalProtoConverterExtension};
use serde::{Deserialize, Serialize};

use crate::sources::scan::{LandingScan, LandingScanExec, LandingTable};
use crate::state::sink::{Sink, SinkExec, SinkTable};

const MAGIC: &[u8] = b"tagflow:";

/// A tagflow table provider, as described in a logical plan.
#[derive(Serialize, Deserialize)]
enum Provider {
    Landing(LandingScan),
    Sink(Sink),
}

/// A tagflow plan node, as described in a stage.
#[derive(Serialize, Deserialize)]
enum Node {
    LandingScan {
        scan: LandingScan,
        projection: Option<Vec<usize>>,
    },
    Sink(Sink),
}

fn encode(value: &impl Serialize, buf: &mut Vec<u8>) -> Result<()> {
    buf.extend_from_slice(MAGIC);
    serde_json::to_writer(buf, value).map_err(|e| DataFusionError::Internal(format!("tagflow codec: {e}")))
}

/// The description after the marker, if `buf` holds a tagflow part.
fn decode<T: serde::de::DeserializeOwned>(buf: &[u8]) -> Option<Result<T>> {
    let json = buf.strip_prefix(MAGIC)?;
    Some(serde_json::from_slice(json).map_err(|e| DataFusionError::Internal(format!("tagflow codec: {e}"))))
}

/// Logical plans: tagflow's table providers, then Ballista's codec.
#[derive(Debug, Default)]
pub struct LogicalCodec {
    ballista: BallistaLogicalExtensionCodec,
}

impl LogicalExtensionCodec for LogicalCodec {
    fn try_decode(&self, buf: &[u8], inputs: &[LogicalPlan], ctx: &TaskContext) -> Result<Extension> {
        self.ballista.try_decode(buf, inputs, ctx)
    }

    fn try_encode(&self, node: &Extension, buf: &mut Vec<u8>) -> Result<()> {
        self.ballista.try_encode(node, buf)
    }

    fn try_decode_table_provider(
        &self,
        buf: &[u8],
        table_ref: &TableReference,
        schema: SchemaRef,
        ctx: &TaskContext,
    ) -> Result<Arc<dyn TableProvider>> {
        match decode::<Provider>(buf) {
            Some(Ok(Provider::Landing(scan))) => Ok(Arc::new(LandingTable { scan: Arc::new(scan) })),
            Some(Ok(Provider::Sink(sink))) => Ok(Arc::new(SinkTable {
                sink: Arc::new(sink),
                schema,
            })),
            Some(Err(error)) => Err(error),
            None => self.ballista.try_decode_table_provider(buf, table_ref, schema, ctx),
        }
    }

    fn try_encode_table_provider(
        &self,
        table_ref: &TableReference,
        node: Arc<dyn TableProvider>,
        buf: &mut Vec<u8>,
    ) -> Result<()> {
        let any = node.as_ref() as &dyn Any;
        if let Some(table) = any.downcast_ref::<LandingTable>() {
            return encode(&Provider::Landing(table.scan.as_ref().clone()), buf);
        }
        if let Some(table) = any.downcast_ref::<SinkTable>() {
            return encode(&Provider::Sink(table.sink.as_ref().clone()), buf);
        }
        self.ballista.try_encode_table_provider(table_ref, node, buf)
    }

    fn try_decode_file_format(&self, buf: &[u8], ctx: &TaskContext) -> Result<Arc<dyn FileFormatFactory>> {
        self.ballista.try_decode_file_format(buf, ctx)
    }

    fn try_encode_file_format(&self, buf: &mut Vec<u8>, node: Arc<dyn FileFormatFactory>) -> Result<()> {
        self.ballista.try_encode_file_format(buf, node)
    }
}

/// Physical plans: tagflow's plan nodes, then Ballista's codec.
#[derive(Debug, Default)]
pub struct PhysicalCodec {
    ballista: BallistaPhysicalExtensionCodec,
}

impl PhysicalExtensionCodec for PhysicalCodec {
    fn try_decode(
        &self,
        buf: &[u8],
        inputs: &[Arc<dyn ExecutionPlan>],
        ctx: &TaskContext,
        proto_converter: &dyn PhysicalProtoConverterExtension,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        match decode::<Node>(buf) {
            Some(Ok(node)) => {
                let input = inputs
                    .first()
                    .cloned()
                    .ok_or_else(|| DataFusionError::Internal("a tagflow plan node without its input".into()))?;
                Ok(match node {
                    Node::LandingScan { scan, projection } => {
                        Arc::new(LandingScanExec::new(Arc::new(scan), input, projection))
                    }
                    Node::Sink(sink) => Arc::new(SinkExec::new(Arc::new(sink), input)),
                })
            }
            Some(Err(error)) => Err(error),
            None => self.ballista.try_decode(buf, inputs, ctx, proto_converter),
        }
    }

    fn try_encode(
        &self,
        node: Arc<dyn ExecutionPlan>,
        buf: &mut Vec<u8>,
        proto_converter: &dyn PhysicalProtoConverterExtension,
    ) -> Result<()> {
        if let Some(scan) = node.downcast_ref::<LandingScanExec>() {
            return encode(
                &Node::LandingScan {
                    scan: scan.scan.as_ref().clone(),
                    projection: scan.projection.clone(),
                },
                buf,
            );
        }
        if let Some(sink) = node.downcast_ref::<SinkExec>() {
            return encode(&Node::Sink(sink.sink.as_ref().clone()), buf);
        }
        self.ballista.try_encode(node, buf, proto_converter)
    }
}

/// The codecs every process of a cluster shares.
pub fn logical() -> Arc<dyn LogicalExtensionCodec> {
    Arc::new(LogicalCodec::default())
}

pub fn physical() -> Arc<dyn PhysicalExtensionCodec> {
    Arc::new(PhysicalCodec::default())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sources::scan::ScanFile;
    use crate::sources::schema::Schemas;
    use crate::state::sink::SinkKind;
    use datafusion::physical_plan::empty::EmptyExec;
    use datafusion::prelude::SessionContext;
    use datafusion_proto::physical_plan::DefaultPhysicalProtoConverter;

    fn scan() -> LandingScan {
        let schemas = Schemas::load(&std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas")).unwrap();
        LandingScan {
            schema: schemas.streams["clicks"].clone(),
            landing: "file:///landing".into(),
            warehouse: "s3://bucket/warehouse".into(),
            receipts: "_tagflow/cluster/run/receipts/clicks".into(),
            files: vec![ScanFile {
                seq: 7,
                relative: "clicks/dt=2026-11-19/part-0000.parquet".into(),
                ingested_at: chrono::DateTime::from_timestamp(1_763_500_000, 0).unwrap(),
            }],
        }
    }

    #[test]
    fn tagflow_table_providers_travel_and_others_go_to_ballista() {
        let ctx = SessionContext::new().task_ctx();
        let codec = LogicalCodec::default();
        let table = TableReference::bare("landing_rows");
        let landing: Arc<dyn TableProvider> = Arc::new(LandingTable { scan: Arc::new(scan()) });
        let mut buf = Vec::new();
        codec
            .try_encode_table_provider(&table, landing.clone(), &mut buf)
            .unwrap();
        let decoded = codec
            .try_decode_table_provider(&buf, &table, landing.schema(), &ctx)
            .unwrap();
        let decoded = (decoded.as_ref() as &dyn Any)
            .downcast_ref::<LandingTable>()
            .expect("a landing table");
        assert_eq!(decoded.scan.files[0].relative, "clicks/dt=2026-11-19/part-0000.parquet");
        assert_eq!(decoded.scan.files[0].seq, 7);
        assert_eq!(decoded.scan.schema.stream, "clicks");
        assert_eq!(decoded.schema(), landing.schema());

        let sink = Sink {
            kind: SinkKind::Seen,
            warehouse: "file:///w".into(),
            dir: "_tagflow/state/seen/clicks/1-run".into(),
        };
        let schema = landing.schema();
        let target: Arc<dyn TableProvider> = Arc::new(SinkTable {
            sink: Arc::new(sink),
            schema: schema.clone(),
        });
        let mut buf = Vec::new();
        codec.try_encode_table_provider(&table, target, &mut buf).unwrap();
        let decoded = codec.try_decode_table_provider(&buf, &table, schema, &ctx).unwrap();
        let decoded = (decoded.as_ref() as &dyn Any)
            .downcast_ref::<SinkTable>()
            .expect("a sink");
        assert_eq!(decoded.sink.dir, "_tagflow/state/seen/clicks/1-run");

        // Not tagflow's: Ballista's codec answers (and cannot read this).
        assert!(codec
            .try_decode_table_provider(b"\x01\x02", &table, landing.schema(), &ctx)
            .is_err());
    }

    #[test]
    fn tagflow_plan_nodes_travel_with_their_input() {
        let ctx = SessionContext::new().task_ctx();
        let codec = PhysicalCodec::default();
        let converter = DefaultPhysicalProtoConverter {};
        let input: Arc<dyn ExecutionPlan> = Arc::new(EmptyExec::new(Arc::new(arrow::datatypes::Schema::empty())));
        let node: Arc<dyn ExecutionPlan> =
            Arc::new(LandingScanExec::new(Arc::new(scan()), input.clone(), Some(vec![0, 1])));
        let mut buf = Vec::new();
        codec.try_encode(node.clone(), &mut buf, &converter).unwrap();
        let decoded = codec
            .try_decode(&buf, std::slice::from_ref(&input), &ctx, &converter)
            .unwrap();
        let decoded = decoded.downcast_ref::<LandingScanExec>().expect("a landing scan");
        assert_eq!(decoded.projection, Some(vec![0, 1]));
        assert_eq!(decoded.schema(), node.schema());

        let sink = Sink {
            kind: SinkKind::Table {
                day_column: Some("event_day".into()),
                keys: vec!["customer_id".into()],
            },
            warehouse: "file:///w".into(),
            dir: "t".into(),
        };
        let node: Arc<dyn ExecutionPlan> = Arc::new(SinkExec::new(Arc::new(sink), input.clone()));
        let mut buf = Vec::new();
        codec.try_encode(node, &mut buf, &converter).unwrap();
        let decoded = codec.try_decode(&buf, &[input], &ctx, &converter).unwrap();
        let decoded = decoded.downcast_ref::<SinkExec>().expect("a sink");
        assert!(
            matches!(&decoded.sink.kind, SinkKind::Table { day_column: Some(d), keys } if d == "event_day" && keys == &["customer_id"])
        );
    }
}
