//! Writer flavours and Parquet encoding

use super::*;

/// Which upstream writer a file pretends to come from (all accepted by the contract).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum WriterVariant {
    /// Timestamp(µs, "UTC"), Utf8, Int32, Float64: exactly schemas/*.toml.
    Standard,
    /// A Spark-style job: Timestamp(ms) without time zone, LargeUtf8, Int64, all nullable.
    SparkLike,
    /// A connector: Timestamp(ns, "UTC") and dictionary-encoded strings.
    Dictionary,
}

impl WriterVariant {
    pub(super) fn pick(rng: &mut ChaCha8Rng) -> Self {
        let u = rng.random::<f64>();
        if u < SPARK_LIKE_SHARE {
            WriterVariant::SparkLike
        } else if u < SPARK_LIKE_SHARE + DICTIONARY_SHARE {
            WriterVariant::Dictionary
        } else {
            WriterVariant::Standard
        }
    }

    pub(super) fn event_times(self, ms: Vec<i64>) -> ArrayRef {
        match self {
            WriterVariant::Standard => Arc::new(
                TimestampMicrosecondArray::from(ms.into_iter().map(|t| t * 1_000).collect::<Vec<_>>())
                    .with_timezone("UTC"),
            ),
            WriterVariant::SparkLike => Arc::new(TimestampMillisecondArray::from(ms)),
            WriterVariant::Dictionary => Arc::new(
                TimestampNanosecondArray::from(ms.into_iter().map(|t| t * 1_000_000).collect::<Vec<_>>())
                    .with_timezone("UTC"),
            ),
        }
    }

    /// Retype string and integer columns the way this writer does.
    pub(super) fn convert(self, array: ArrayRef) -> Result<ArrayRef, ArrowError> {
        let target = match (self, array.data_type()) {
            (WriterVariant::SparkLike, DataType::Utf8) => DataType::LargeUtf8,
            (WriterVariant::SparkLike, DataType::Int32) => DataType::Int64,
            (WriterVariant::Dictionary, DataType::Utf8) => {
                DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8))
            }
            _ => return Ok(array),
        };
        cast(array.as_ref(), &target)
    }

    pub(super) fn properties(self) -> WriterProperties {
        let (compression, created_by) = match self {
            WriterVariant::Standard => (Compression::SNAPPY, "tagflow generate (tracker writer)"),
            WriterVariant::SparkLike => (Compression::SNAPPY, "tagflow generate (spark-like writer)"),
            WriterVariant::Dictionary => (
                Compression::ZSTD(ZstdLevel::default()),
                "tagflow generate (connector writer)",
            ),
        };
        WriterProperties::builder()
            .set_compression(compression)
            .set_created_by(created_by.to_string())
            .build()
    }

    pub(super) fn write_parquet(self, columns: Vec<Column>) -> Result<Vec<u8>, GenerateError> {
        let mut fields = Vec::with_capacity(columns.len());
        let mut arrays = Vec::with_capacity(columns.len());
        for column in columns {
            let array = self.convert(column.array)?;
            // Spark declares everything nullable; a file with a bad null must declare it too.
            let nullable = self == WriterVariant::SparkLike || column.nullable || array.null_count() > 0;
            fields.push(Field::new(column.name, array.data_type().clone(), nullable));
            arrays.push(array);
        }
        let schema = Arc::new(Schema::new(fields));
        let batch = RecordBatch::try_new(schema.clone(), arrays)?;
        let mut buffer = Vec::new();
        let mut writer = ArrowWriter::try_new(&mut buffer, schema, Some(self.properties()))?;
        writer.write(&batch)?;
        writer.close()?;
        Ok(buffer)
    }
}

pub(super) fn encode_file<R: EventRow>(
    rows: &[R],
    bad: &BadRows,
    variant: WriterVariant,
    world: &World,
) -> Result<Vec<u8>, GenerateError> {
    let seed = world.seed;
    let prefix = R::STREAM.id_prefix();
    let mut event_ids = StringBuilder::new();
    let mut customer_ids = StringBuilder::new();
    let mut times = Vec::with_capacity(rows.len());
    for (i, row) in rows.iter().enumerate() {
        let _ = write!(event_ids, "{prefix}-{seed}-{}", row.id());
        event_ids.append_value("");
        if bad.is(i, BadKind::NullCustomer) {
            customer_ids.append_null();
        } else {
            let _ = write!(customer_ids, "cust-{:06}", u64::from(row.customer()) + 1);
            customer_ids.append_value("");
        }
        times.push(if bad.is(i, BadKind::Year1999) {
            world.year_1999_ms + row.time().rem_euclid(DAY_MS)
        } else {
            row.time()
        });
    }
    let mut columns = vec![
        Column::required("event_id", Arc::new(event_ids.finish())),
        Column::required("customer_id", Arc::new(customer_ids.finish())),
        Column::required("event_time", variant.event_times(times)),
    ];
    columns.extend(R::stream_columns(rows, bad, world));
    variant.write_parquet(columns)
}
