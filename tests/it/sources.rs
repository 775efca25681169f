//! The input contract (shared/spec/events.md): accepted writer variants are normalised,
//! bad files and bad rows are quarantined with a reason, and never change the good rows.

use std::sync::Arc;

use arrow::array::{
    ArrayRef, DictionaryArray, Float64Array, Int64Array, LargeStringArray, StringArray, StringViewArray,
    TimestampMillisecondArray, TimestampNanosecondArray,
};
use arrow::datatypes::{DataType, Field, Int32Type, Schema, TimeUnit};
use arrow::record_batch::RecordBatch;
use tagflow::sources::quarantine::{EntryKind, Quarantine};
use tagflow::storage::Location;

use crate::support::*;

const T: &str = "2026-11-20T12:00:00Z";

fn warehouse(fx: &Fixture) -> Location {
    Location::parse(&fx.warehouse_dir().to_string_lossy(), &Default::default()).expect("warehouse")
}

/// Three good clicks of c1 so that `aipl_stage` says `interest` when all of them count.
fn good_clicks(prefix: &str) -> Vec<Click> {
    (0..3)
        .map(|i| view(&format!("{prefix}{i}"), "c1", "2026-11-19T10:00:00Z").category("books"))
        .collect()
}

#[tokio::test]
async fn corrupt_truncated_and_foreign_files_are_quarantined_and_good_files_still_count() {
    let fx = Fixture::new();
    fx.clicks("dt=2026-11-19/good.parquet", &good_clicks("g"));
    fx.raw("clicks/dt=2026-11-19/garbage.parquet", b"this is not parquet at all");
    fx.raw("orders/dt=2026-11-19/export.csv", b"event_id,customer_id\n1,c1\n");
    // A real Parquet file cut in half.
    let path = fx.landing_dir().join("carts/dt=2026-11-19/truncated.parquet");
    write_parquet(
        &path,
        &carts_batch(&[cart_add("k1", "c2", "2026-11-19T10:00:00Z", 1, Some(5.0))]),
    );
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();

    let report = fx.try_run(T, None).await.expect("a bad file never fails the run");
    assert_eq!(report.streams["clicks"].files, 2);
    assert_eq!(report.streams["clicks"].files_quarantined, 1);
    assert_eq!(report.streams["carts"].files_quarantined, 1);
    assert_eq!(report.streams["orders"].files_quarantined, 1);
    assert_eq!(report.streams["clicks"].events, 3);
    assert_eq!(report.quarantine.files, 3);

    let tags = fx.published(None).await;
    assert_eq!(tags.value("c1", "aipl_stage").as_deref(), Some("interest"));
    assert_eq!(
        tags.value("c2", "aipl_stage"),
        None,
        "nothing of a truncated file is used"
    );

    let entries = Quarantine::new(&warehouse(&fx)).list().await.unwrap();
    assert_eq!(entries.len(), 3);
    for entry in &entries {
        assert_eq!(entry.kind, EntryKind::File);
        assert!(entry.reason.contains("not a readable Parquet file"), "{}", entry.reason);
        let kept = entry.data.strip_prefix("file://").unwrap();
        assert!(std::path::Path::new(kept).is_file(), "a copy is kept at {kept}");
    }
    let garbage = entries.iter().find(|e| e.source.ends_with("garbage.parquet")).unwrap();
    assert_eq!(
        std::fs::read(garbage.data.strip_prefix("file://").unwrap()).unwrap(),
        b"this is not parquet at all"
    );
}

#[tokio::test]
async fn a_corrupt_file_never_changes_the_good_rows_tags() {
    let clean = Fixture::new();
    let dirty = Fixture::new();
    for fx in [&clean, &dirty] {
        fx.clicks("dt=2026-11-19/a.parquet", &good_clicks("g"));
        fx.orders(
            "dt=2026-11-19/a.parquet",
            &[
                order("o1", "c2", "2026-11-01T10:00:00Z", "A", "paid", 50.0),
                order("o2", "c2", "2026-11-02T10:00:00Z", "B", "paid", 70.0).discount(5.0),
            ],
        );
    }
    dirty.raw("orders/dt=2026-11-20/zzz.parquet", b"PAR1 but not really");
    dirty.raw("clicks/dt=2026-11-20/aaa.parquet", &[0u8; 64]);
    clean.try_run(T, None).await.unwrap();
    dirty.try_run(T, None).await.unwrap();
    assert_eq!(clean.published(None).await.rows, dirty.published(None).await.rows);
}

#[tokio::test]
async fn missing_required_column_or_unconvertible_type_quarantines_the_file() {
    let fx = Fixture::new();
    // orders without `status`
    let no_status = Schema::new(vec![
        Field::new("event_id", DataType::Utf8, false),
        Field::new("customer_id", DataType::Utf8, false),
        Field::new(
            "event_time",
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            false,
        ),
        Field::new("order_id", DataType::Utf8, false),
        Field::new("amount", DataType::Float64, false),
    ]);
    let batch = RecordBatch::try_new(
        Arc::new(no_status),
        vec![
            Arc::new(StringArray::from(vec!["o1"])),
            Arc::new(StringArray::from(vec!["c1"])),
            Arc::new(
                arrow::array::TimestampMicrosecondArray::from(vec![micros("2026-11-19T00:00:00Z")])
                    .with_timezone("UTC"),
            ),
            Arc::new(StringArray::from(vec!["A"])),
            Arc::new(Float64Array::from(vec![1.0])),
        ],
    )
    .unwrap();
    write_parquet(&fx.landing_dir().join("orders/no_status.parquet"), &batch);
    // clicks whose event_time is text
    let text_time = Schema::new(vec![
        Field::new("event_id", DataType::Utf8, false),
        Field::new("customer_id", DataType::Utf8, false),
        Field::new("event_time", DataType::Utf8, false),
        Field::new("page_type", DataType::Utf8, false),
    ]);
    let batch = RecordBatch::try_new(
        Arc::new(text_time),
        vec![
            Arc::new(StringArray::from(vec!["k1"])),
            Arc::new(StringArray::from(vec!["c1"])),
            Arc::new(StringArray::from(vec!["2026-11-19T00:00:00Z"])),
            Arc::new(StringArray::from(vec!["home"])),
        ],
    )
    .unwrap();
    write_parquet(&fx.landing_dir().join("clicks/text_time.parquet"), &batch);
    fx.clicks("good.parquet", &good_clicks("g"));

    let report = fx.try_run(T, None).await.unwrap();
    assert_eq!(report.streams["orders"].files_quarantined, 1);
    assert_eq!(report.streams["clicks"].files_quarantined, 1);
    assert_eq!(report.streams["clicks"].events, 3);
    let entries = Quarantine::new(&warehouse(&fx)).list().await.unwrap();
    let reasons: Vec<&str> = entries.iter().map(|e| e.reason.as_str()).collect();
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("required column 'status' is missing")),
        "{reasons:?}"
    );
    assert!(
        reasons.iter().any(|r| r.contains("column 'event_time' has type Utf8")),
        "{reasons:?}"
    );
}

#[tokio::test]
async fn bad_rows_are_quarantined_with_reasons_and_the_rest_of_the_file_counts() {
    let fx = Fixture::new();
    fx.clicks(
        "dt=2026-11-19/clicks.parquet",
        &[
            view("k1", "c1", "2026-11-19T10:00:00Z"),
            view("k2", "c1", "2026-11-19T10:00:00Z").no_customer(),
            view("k3", "c1", "2026-11-19T10:00:00Z").page("landing"),
            view("k4", "c1", "1999-12-31T23:59:59Z"),
            view("k5", "c1", "2000-01-01T00:00:00Z"),
        ],
    );
    fx.carts(
        "dt=2026-11-19/carts.parquet",
        &[
            cart_add("a1", "c2", "2026-11-19T10:00:00Z", 0, Some(1.0)),
            cart_add("a2", "c2", "2026-11-19T10:00:00Z", 2, Some(1.0)).action("wishlist"),
            cart_add("a3", "c2", "2026-11-19T10:00:00Z", 1, Some(1.0)),
        ],
    );
    fx.orders(
        "dt=2026-11-19/orders.parquet",
        &[
            order("o1", "c3", "2026-11-19T10:00:00Z", "A", "paid", -1.0),
            order("o2", "c3", "2026-11-19T10:00:00Z", "B", "shipped", 5.0),
            order("o3", "c3", "2026-11-19T10:00:00Z", "C", "paid", 0.0),
            // far in the future of the moment the file is ingested (now)
            order("o4", "c3", "2099-01-01T00:00:00Z", "D", "paid", 5.0),
        ],
    );
    let report = fx.try_run(T, None).await.unwrap();
    assert_eq!(report.streams["clicks"].rows_read, 5);
    assert_eq!(report.streams["clicks"].rows_quarantined, 3);
    assert_eq!(report.streams["clicks"].events, 2, "k1 and k5 (2000-01-01 is allowed)");
    assert_eq!(report.streams["carts"].rows_quarantined, 2);
    assert_eq!(report.streams["carts"].events, 1);
    assert_eq!(report.streams["orders"].rows_quarantined, 3);
    assert_eq!(report.streams["orders"].events, 1, "amount 0 is allowed");
    assert_eq!(report.quarantine.rows, 8);

    let entries = Quarantine::new(&warehouse(&fx)).list().await.unwrap();
    assert_eq!(entries.len(), 3);
    assert!(entries.iter().all(|e| e.kind == EntryKind::Rows));
    let all: String = entries.iter().map(|e| e.reason.clone()).collect::<Vec<_>>().join("\n");
    for expected in [
        "customer_id: null in a required column",
        "page_type: unknown value 'landing'",
        "event_time: before 2000-01-01",
        "quantity: 0 is not > 0",
        "action: unknown value 'wishlist'",
        "amount: -1 is negative",
        "status: unknown value 'shipped'",
        "event_time: more than 24 h after the file was ingested",
    ] {
        assert!(all.contains(expected), "missing reason {expected:?} in\n{all}");
    }
    // The rejected rows themselves are kept, with reason, file and row number.
    let orders = entries.iter().find(|e| e.stream == "orders").unwrap();
    let file = std::fs::File::open(orders.data.strip_prefix("file://").unwrap()).unwrap();
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
        .unwrap()
        .build()
        .unwrap();
    let batch = reader.map(|b| b.unwrap()).next().unwrap();
    let ids = batch
        .column_by_name("event_id")
        .unwrap()
        .as_any()
        .downcast_ref::<StringArray>()
        .unwrap();
    let rows = batch
        .column_by_name("_row_number")
        .unwrap()
        .as_any()
        .downcast_ref::<arrow::array::UInt64Array>()
        .unwrap();
    assert_eq!(ids.iter().flatten().collect::<Vec<_>>(), vec!["o1", "o2", "o4"]);
    assert_eq!(rows.values().to_vec(), vec![0, 1, 3]);

    let tags = fx.published(None).await;
    assert_eq!(tags.value("c3", "aipl_stage").as_deref(), Some("purchase"), "o3 counts");
}

#[tokio::test]
async fn hidden_files_are_not_events_and_duplicates_count_once() {
    let fx = Fixture::new();
    fx.clicks("dt=2026-11-19/a.parquet", &good_clicks("g"));
    // the same file re-sent under another name, and one overlapping event
    fx.clicks("dt=2026-11-19/a-resend.parquet", &good_clicks("g"));
    fx.clicks(
        "dt=2026-11-20/b.parquet",
        &[
            view("g0", "c1", "2026-11-19T10:00:00Z"),
            view("g9", "c1", "2026-11-19T11:00:00Z"),
        ],
    );
    fx.raw("clicks/dt=2026-11-19/_SUCCESS", b"");
    fx.raw("clicks/dt=2026-11-19/.part-0001.parquet.tmp", b"partial");
    fx.raw("clicks/_temporary/0/part.parquet", b"partial");
    let report = fx.try_run(T, None).await.unwrap();
    let clicks = &report.streams["clicks"];
    assert_eq!(clicks.files, 3);
    assert_eq!(clicks.files_ignored, 3);
    assert_eq!(clicks.files_quarantined, 0);
    assert_eq!(clicks.rows_read, 8);
    assert_eq!(clicks.duplicates_dropped, 4);
    assert_eq!(clicks.events, 4);
}

#[tokio::test]
async fn events_after_the_as_of_time_are_read_but_not_counted() {
    let fx = Fixture::new();
    fx.clicks(
        "a.parquet",
        &[
            view("k1", "c1", T),
            view("k2", "c1", "2026-11-20T12:00:00.000001Z"),
            view("k3", "c2", "2026-11-20T13:00:00Z"),
        ],
    );
    let report = fx.try_run(T, None).await.unwrap();
    assert_eq!(report.streams["clicks"].after_as_of, 2);
    assert_eq!(report.streams["clicks"].events, 1);
    let tags = fx.published(None).await;
    assert!(tags.value("c1", "lifecycle").is_some());
    assert_eq!(
        tags.value("c2", "lifecycle"),
        None,
        "c2 has no counted event: not in the universe"
    );
}

/// A clicks file written by "another writer": event_time in milliseconds without a time
/// zone, LargeUtf8 ids, Utf8View page types, dictionary categories, an extra column, and
/// no `device_id` column at all.
#[tokio::test]
async fn writer_variants_are_normalised() {
    let fx = Fixture::new();
    let schema = Schema::new(vec![
        Field::new("event_id", DataType::LargeUtf8, false),
        Field::new("customer_id", DataType::LargeUtf8, false),
        Field::new("event_time", DataType::Timestamp(TimeUnit::Millisecond, None), false),
        Field::new("page_type", DataType::Utf8View, false),
        Field::new(
            "category",
            DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8)),
            true,
        ),
        Field::new("tracker_version", DataType::Utf8, true),
    ]);
    let category: DictionaryArray<Int32Type> = vec!["books", "books", "books"].into_iter().collect();
    let batch = RecordBatch::try_new(
        Arc::new(schema),
        vec![
            Arc::new(LargeStringArray::from(vec!["v1", "v2", "v3"])) as ArrayRef,
            Arc::new(LargeStringArray::from(vec!["c1", "c1", "c1"])),
            Arc::new(TimestampMillisecondArray::from(vec![
                micros("2026-11-19T10:00:00Z")
                    / 1000;
                3
            ])),
            Arc::new(StringViewArray::from(vec!["product", "product", "product"])),
            Arc::new(category),
            Arc::new(StringArray::from(vec![Some("9.1"), None, None])),
        ],
    )
    .unwrap();
    write_parquet(&fx.landing_dir().join("clicks/variant.parquet"), &batch);

    // carts: quantity written as Int64 (one value does not fit Int32), time in ns with UTC
    let schema = Schema::new(vec![
        Field::new("event_id", DataType::Utf8, false),
        Field::new("customer_id", DataType::Utf8, false),
        Field::new(
            "event_time",
            DataType::Timestamp(TimeUnit::Nanosecond, Some("UTC".into())),
            false,
        ),
        Field::new("action", DataType::Utf8, false),
        Field::new("product_id", DataType::Utf8, false),
        Field::new("quantity", DataType::Int64, false),
        Field::new("unit_price", DataType::Float64, true),
    ]);
    let batch = RecordBatch::try_new(
        Arc::new(schema),
        vec![
            Arc::new(StringArray::from(vec!["a1", "a2"])) as ArrayRef,
            Arc::new(StringArray::from(vec!["c2", "c2"])),
            Arc::new(
                TimestampNanosecondArray::from(vec![micros("2026-11-19T10:00:00Z") * 1000; 2]).with_timezone("UTC"),
            ),
            Arc::new(StringArray::from(vec!["add", "add"])),
            Arc::new(StringArray::from(vec!["p1", "p2"])),
            Arc::new(Int64Array::from(vec![2, i64::from(i32::MAX) + 1])),
            Arc::new(Float64Array::from(vec![Some(10.0), None])),
        ],
    )
    .unwrap();
    write_parquet(&fx.landing_dir().join("carts/variant.parquet"), &batch);

    let report = fx.try_run(T, None).await.unwrap();
    assert_eq!(report.streams["clicks"].events, 3);
    assert_eq!(report.streams["clicks"].files_quarantined, 0);
    assert_eq!(report.streams["carts"].events, 1);
    assert_eq!(report.streams["carts"].rows_quarantined, 1, "2^31 does not fit Int32");
    let tags = fx.published(None).await;
    assert_eq!(tags.value("c1", "aipl_stage").as_deref(), Some("interest"));
    assert_eq!(tags.value("c2", "cart_abandoner").as_deref(), Some("true"));
    assert_close(tags.score("c2", "cart_abandoner"), 20.0);
}

/// Legacy INT96 timestamps (Spark, Hive) are read as UTC.
#[tokio::test]
async fn int96_timestamps_are_accepted() {
    use parquet::data_type::{ByteArray, ByteArrayType, Int96, Int96Type};
    use parquet::file::writer::SerializedFileWriter;

    let fx = Fixture::new();
    let schema = parquet::schema::parser::parse_message_type(
        "message spark_schema {
            required binary event_id (STRING);
            required binary customer_id (STRING);
            required int96 event_time;
            required binary page_type (STRING);
        }",
    )
    .unwrap();
    let path = fx.landing_dir().join("clicks/spark/part-00000.parquet");
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let file = std::fs::File::create(&path).unwrap();
    let mut writer = SerializedFileWriter::new(file, Arc::new(schema), Default::default()).unwrap();
    let mut group = writer.next_row_group().unwrap();
    let strings = |values: &[&str]| values.iter().map(|v| ByteArray::from(*v)).collect::<Vec<_>>();
    // 2026-11-19T10:00:00Z: Julian day 2440588 + days since epoch, nanoseconds of the day
    let days = micros("2026-11-19T00:00:00Z") / 86_400_000_000;
    let nanos: u64 = 10 * 3600 * 1_000_000_000;
    let mut t = Int96::new();
    t.set_data(nanos as u32, (nanos >> 32) as u32, (2_440_588 + days) as u32);
    for values in [strings(&["s1", "s2", "s3"]), strings(&["c1", "c1", "c1"])] {
        let mut col = group.next_column().unwrap().unwrap();
        col.typed::<ByteArrayType>().write_batch(&values, None, None).unwrap();
        col.close().unwrap();
    }
    let mut col = group.next_column().unwrap().unwrap();
    col.typed::<Int96Type>().write_batch(&[t, t, t], None, None).unwrap();
    col.close().unwrap();
    let mut col = group.next_column().unwrap().unwrap();
    col.typed::<ByteArrayType>()
        .write_batch(&strings(&["product", "product", "product"]), None, None)
        .unwrap();
    col.close().unwrap();
    group.close().unwrap();
    writer.close().unwrap();

    let report = fx.try_run(T, None).await.unwrap();
    assert_eq!(report.streams["clicks"].events, 3);
    let tags = fx.published(None).await;
    assert_eq!(tags.value("c1", "aipl_stage").as_deref(), Some("interest"));
    assert_close(tags.score("c1", "lifecycle"), 1.0);
}

#[tokio::test]
async fn rerunning_keeps_one_quarantine_entry_per_file() {
    let fx = Fixture::new();
    fx.clicks(
        "a.parquet",
        &[
            view("k1", "c1", "1990-01-01T00:00:00Z"),
            view("k2", "c1", "2026-11-19T00:00:00Z"),
        ],
    );
    fx.try_run(T, None).await.unwrap();
    fx.try_run(T, None).await.unwrap();
    let entries = Quarantine::new(&warehouse(&fx)).list().await.unwrap();
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].rows, 1);
}

/// Strings written as un-annotated binary (older Hive/Impala writers) are read as text;
/// bytes that are not UTF-8 make only their row bad.
#[tokio::test]
async fn binary_string_columns_are_accepted_and_invalid_utf8_rows_quarantined() {
    use arrow::array::BinaryArray;
    let fx = Fixture::new();
    let schema = Schema::new(vec![
        Field::new("event_id", DataType::Binary, false),
        Field::new("customer_id", DataType::Binary, false),
        Field::new("event_time", DataType::Timestamp(TimeUnit::Microsecond, None), false),
        Field::new("page_type", DataType::Binary, false),
    ]);
    let batch = RecordBatch::try_new(
        Arc::new(schema),
        vec![
            Arc::new(BinaryArray::from_vec(vec![b"b1", b"b2", b"b3", b"b4"])) as ArrayRef,
            Arc::new(BinaryArray::from_vec(vec![b"c1", b"c1", b"c1", b"c\xff"])),
            Arc::new(arrow::array::TimestampMicrosecondArray::from(vec![
                micros(
                    "2026-11-19T10:00:00Z"
                );
                4
            ])),
            Arc::new(BinaryArray::from_vec(vec![
                b"product", b"product", b"product", b"product",
            ])),
        ],
    )
    .unwrap();
    write_parquet(&fx.landing_dir().join("clicks/hive/000000_0.parquet"), &batch);
    let report = fx.try_run(T, None).await.unwrap();
    assert_eq!(report.streams["clicks"].events, 3);
    assert_eq!(report.streams["clicks"].rows_quarantined, 1);
    let tags = fx.published(None).await;
    assert_eq!(tags.value("c1", "aipl_stage").as_deref(), Some("interest"));
}
