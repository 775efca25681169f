//! Test harness: write hand-made landing files, run the real pipeline (local files as the
//! object store, a real Delta table as output) and read the published tags back.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{ArrayRef, Float64Array, Int32Array, StringArray, TimestampMicrosecondArray};
use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use arrow::record_batch::RecordBatch;
use parquet::arrow::ArrowWriter;
use tagflow::app::report::RunReport;
use tagflow::config::{CliSettings, Settings};
use tagflow::publish::{query_published, TAGS_TABLE};
use tempfile::TempDir;

/// Microseconds since the epoch of an RFC 3339 time.
pub fn micros(time: &str) -> i64 {
    chrono::DateTime::parse_from_rfc3339(time)
        .unwrap_or_else(|e| panic!("bad time {time}: {e}"))
        .timestamp_micros()
}

/// A click (page view). `view(..)` makes a product view; builder methods set the rest.
#[derive(Clone, Debug)]
pub struct Click {
    pub event_id: Option<String>,
    pub customer_id: Option<String>,
    pub time: String,
    pub page_type: Option<String>,
    pub category: Option<String>,
    pub brand: Option<String>,
    pub price: Option<f64>,
    pub device_id: Option<String>,
}

pub fn view(id: &str, customer: &str, time: &str) -> Click {
    Click {
        event_id: Some(id.into()),
        customer_id: Some(customer.into()),
        time: time.into(),
        page_type: Some("product".into()),
        category: None,
        brand: None,
        price: None,
        device_id: None,
    }
}

impl Click {
    pub fn page(mut self, page_type: &str) -> Self {
        self.page_type = Some(page_type.into());
        self
    }
    pub fn category(mut self, category: &str) -> Self {
        self.category = Some(category.into());
        self
    }
    pub fn device(mut self, device: &str) -> Self {
        self.device_id = Some(device.into());
        self
    }
    pub fn no_customer(mut self) -> Self {
        self.customer_id = None;
        self
    }
}

/// A cart event. `cart_add(..)` makes an `add`; `.remove()` turns it into a `remove`.
#[derive(Clone, Debug)]
pub struct Cart {
    pub event_id: String,
    pub customer_id: String,
    pub time: String,
    pub action: String,
    pub product_id: String,
    pub category: Option<String>,
    pub quantity: i32,
    pub unit_price: Option<f64>,
    pub device_id: Option<String>,
}

pub fn cart_add(id: &str, customer: &str, time: &str, quantity: i32, unit_price: Option<f64>) -> Cart {
    Cart {
        event_id: id.into(),
        customer_id: customer.into(),
        time: time.into(),
        action: "add".into(),
        product_id: format!("p-{id}"),
        category: None,
        quantity,
        unit_price,
        device_id: None,
    }
}

impl Cart {
    pub fn remove(mut self) -> Self {
        self.action = "remove".into();
        self
    }
    pub fn action(mut self, action: &str) -> Self {
        self.action = action.into();
        self
    }
    pub fn category(mut self, category: &str) -> Self {
        self.category = Some(category.into());
        self
    }
    pub fn device(mut self, device: &str) -> Self {
        self.device_id = Some(device.into());
        self
    }
}

/// An order state change.
#[derive(Clone, Debug)]
pub struct Order {
    pub event_id: String,
    pub customer_id: String,
    pub time: String,
    pub order_id: String,
    pub status: String,
    pub amount: f64,
    pub category: Option<String>,
    pub brand: Option<String>,
    pub discount_amount: Option<f64>,
    pub device_id: Option<String>,
}

pub fn order(id: &str, customer: &str, time: &str, order_id: &str, status: &str, amount: f64) -> Order {
    Order {
        event_id: id.into(),
        customer_id: customer.into(),
        time: time.into(),
        order_id: order_id.into(),
        status: status.into(),
        amount,
        category: None,
        brand: None,
        discount_amount: None,
        device_id: None,
    }
}

impl Order {
    pub fn brand(mut self, brand: &str) -> Self {
        self.brand = Some(brand.into());
        self
    }
    pub fn category(mut self, category: &str) -> Self {
        self.category = Some(category.into());
        self
    }
    pub fn discount(mut self, discount: f64) -> Self {
        self.discount_amount = Some(discount);
        self
    }
    pub fn device(mut self, device: &str) -> Self {
        self.device_id = Some(device.into());
        self
    }
}

fn utf8(values: impl IntoIterator<Item = Option<String>>) -> ArrayRef {
    Arc::new(StringArray::from_iter(values))
}

fn times(values: impl IntoIterator<Item = String>) -> ArrayRef {
    Arc::new(TimestampMicrosecondArray::from_iter_values(values.into_iter().map(|t| micros(&t))).with_timezone("UTC"))
}

fn ts_field() -> Field {
    Field::new(
        "event_time",
        DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
        false,
    )
}

pub fn clicks_batch(rows: &[Click]) -> RecordBatch {
    let schema = Schema::new(vec![
        Field::new("event_id", DataType::Utf8, true),
        Field::new("customer_id", DataType::Utf8, true),
        ts_field(),
        Field::new("page_type", DataType::Utf8, true),
        Field::new("category", DataType::Utf8, true),
        Field::new("brand", DataType::Utf8, true),
        Field::new("price", DataType::Float64, true),
        Field::new("device_id", DataType::Utf8, true),
    ]);
    let r = rows;
    RecordBatch::try_new(
        Arc::new(schema),
        vec![
            utf8(r.iter().map(|c| c.event_id.clone())),
            utf8(r.iter().map(|c| c.customer_id.clone())),
            times(r.iter().map(|c| c.time.clone())),
            utf8(r.iter().map(|c| c.page_type.clone())),
            utf8(r.iter().map(|c| c.category.clone())),
            utf8(r.iter().map(|c| c.brand.clone())),
            Arc::new(Float64Array::from_iter(r.iter().map(|c| c.price))),
            utf8(r.iter().map(|c| c.device_id.clone())),
        ],
    )
    .expect("clicks batch")
}

pub fn carts_batch(rows: &[Cart]) -> RecordBatch {
    let schema = Schema::new(vec![
        Field::new("event_id", DataType::Utf8, false),
        Field::new("customer_id", DataType::Utf8, false),
        ts_field(),
        Field::new("action", DataType::Utf8, false),
        Field::new("product_id", DataType::Utf8, false),
        Field::new("category", DataType::Utf8, true),
        Field::new("quantity", DataType::Int32, false),
        Field::new("unit_price", DataType::Float64, true),
        Field::new("device_id", DataType::Utf8, true),
    ]);
    let r = rows;
    RecordBatch::try_new(
        Arc::new(schema),
        vec![
            utf8(r.iter().map(|c| Some(c.event_id.clone()))),
            utf8(r.iter().map(|c| Some(c.customer_id.clone()))),
            times(r.iter().map(|c| c.time.clone())),
            utf8(r.iter().map(|c| Some(c.action.clone()))),
            utf8(r.iter().map(|c| Some(c.product_id.clone()))),
            utf8(r.iter().map(|c| c.category.clone())),
            Arc::new(Int32Array::from_iter_values(r.iter().map(|c| c.quantity))),
            Arc::new(Float64Array::from_iter(r.iter().map(|c| c.unit_price))),
            utf8(r.iter().map(|c| c.device_id.clone())),
        ],
    )
    .expect("carts batch")
}

pub fn orders_batch(rows: &[Order]) -> RecordBatch {
    let schema = Schema::new(vec![
        Field::new("event_id", DataType::Utf8, false),
        Field::new("customer_id", DataType::Utf8, false),
        ts_field(),
        Field::new("order_id", DataType::Utf8, false),
        Field::new("status", DataType::Utf8, false),
        Field::new("amount", DataType::Float64, false),
        Field::new("category", DataType::Utf8, true),
        Field::new("brand", DataType::Utf8, true),
        Field::new("discount_amount", DataType::Float64, true),
        Field::new("device_id", DataType::Utf8, true),
    ]);
    let r = rows;
    RecordBatch::try_new(
        Arc::new(schema),
        vec![
            utf8(r.iter().map(|o| Some(o.event_id.clone()))),
            utf8(r.iter().map(|o| Some(o.customer_id.clone()))),
            times(r.iter().map(|o| o.time.clone())),
            utf8(r.iter().map(|o| Some(o.order_id.clone()))),
            utf8(r.iter().map(|o| Some(o.status.clone()))),
            Arc::new(Float64Array::from_iter_values(r.iter().map(|o| o.amount))),
            utf8(r.iter().map(|o| o.category.clone())),
            utf8(r.iter().map(|o| o.brand.clone())),
            Arc::new(Float64Array::from_iter(r.iter().map(|o| o.discount_amount))),
            utf8(r.iter().map(|o| o.device_id.clone())),
        ],
    )
    .expect("orders batch")
}

/// Write any batch as a Parquet file.
pub fn write_parquet(path: &Path, batch: &RecordBatch) {
    std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
    let file = std::fs::File::create(path).expect("create parquet");
    let mut writer = ArrowWriter::try_new(file, batch.schema(), None).expect("writer");
    writer.write(batch).expect("write");
    writer.close().expect("close");
}

/// One published tag row.
#[derive(Clone, Debug, PartialEq)]
pub struct TagRow {
    pub customer_id: String,
    pub family: String,
    pub tag: String,
    pub value: String,
    pub score: Option<f64>,
}

/// The tags of one published version.
#[derive(Debug)]
pub struct Tags {
    pub rows: Vec<TagRow>,
}

impl Tags {
    /// (value, score) of `tag` for `customer`, if the tag applies.
    pub fn get(&self, customer: &str, tag: &str) -> Option<(String, Option<f64>)> {
        let found: Vec<&TagRow> = self
            .rows
            .iter()
            .filter(|r| r.customer_id == customer && r.tag == tag)
            .collect();
        assert!(found.len() <= 1, "{customer} has {} rows of {tag}", found.len());
        found.first().map(|r| (r.value.clone(), r.score))
    }

    pub fn value(&self, customer: &str, tag: &str) -> Option<String> {
        self.get(customer, tag).map(|(v, _)| v)
    }

    pub fn score(&self, customer: &str, tag: &str) -> Option<f64> {
        self.get(customer, tag).and_then(|(_, s)| s)
    }

    /// Sorted customers carrying `tag`.
    pub fn customers(&self, tag: &str) -> Vec<String> {
        let mut c: Vec<String> = self
            .rows
            .iter()
            .filter(|r| r.tag == tag)
            .map(|r| r.customer_id.clone())
            .collect();
        c.sort();
        c
    }
}

/// Assert a float equals `expected` to 1e-9 relative.
pub fn assert_close(actual: Option<f64>, expected: f64) {
    let actual = actual.unwrap_or_else(|| panic!("expected score {expected}, got null"));
    let tolerance = 1e-9 * expected.abs().max(1.0);
    assert!((actual - expected).abs() <= tolerance, "score {actual} != {expected}");
}

/// A landing zone and a warehouse in a temporary folder.
pub struct Fixture {
    pub dir: TempDir,
}

impl Fixture {
    pub fn new() -> Self {
        Fixture {
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }

    pub fn landing_dir(&self) -> PathBuf {
        self.dir.path().join("landing")
    }

    pub fn warehouse_dir(&self) -> PathBuf {
        self.dir.path().join("warehouse")
    }

    /// Write `rows` as `landing/clicks/<name>` (name may contain sub-folders).
    pub fn clicks(&self, name: &str, rows: &[Click]) -> &Self {
        write_parquet(&self.landing_dir().join("clicks").join(name), &clicks_batch(rows));
        self
    }

    pub fn carts(&self, name: &str, rows: &[Cart]) -> &Self {
        write_parquet(&self.landing_dir().join("carts").join(name), &carts_batch(rows));
        self
    }

    pub fn orders(&self, name: &str, rows: &[Order]) -> &Self {
        write_parquet(&self.landing_dir().join("orders").join(name), &orders_batch(rows));
        self
    }

    /// Write raw bytes into the landing zone (corrupt or foreign files).
    pub fn raw(&self, relative: &str, bytes: &[u8]) -> &Self {
        let path = self.landing_dir().join(relative);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(path, bytes).expect("write raw");
        self
    }

    /// `tagflow <args> --landing <this landing> --warehouse <this warehouse>`.
    pub fn command(&self, args: &[&str]) -> std::process::Command {
        let mut cmd = tagflow();
        cmd.args(args)
            .arg("--landing")
            .arg(self.landing_dir())
            .arg("--warehouse")
            .arg(self.warehouse_dir());
        cmd
    }

    /// Settings for this fixture, with an optional config file body (e.g. param overrides).
    pub fn settings(&self, as_of: &str, config: Option<&str>) -> Result<Settings, tagflow::config::ConfigError> {
        std::fs::create_dir_all(self.landing_dir()).expect("landing dir");
        let config_path = config.map(|body| {
            let path = self.dir.path().join("tagflow.toml");
            std::fs::write(&path, body).expect("write config");
            path
        });
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        Settings::resolve(&CliSettings {
            config: config_path,
            landing: Some(self.landing_dir().to_string_lossy().into_owned()),
            warehouse: Some(self.warehouse_dir().to_string_lossy().into_owned()),
            as_of: Some(as_of.to_string()),
            sql_dir: Some(root.join("sql")),
            schemas_dir: Some(root.join("schemas")),
            ..Default::default()
        })
    }

    /// Run the pipeline as of `as_of` with `config` and return the report.
    pub async fn try_run(&self, as_of: &str, config: Option<&str>) -> Result<RunReport, tagflow::Error> {
        let settings = self.settings(as_of, config)?;
        tagflow::app::run::run(&settings).await
    }

    /// Run with the shipped defaults and read the published tags back from Delta.
    pub async fn run(&self, as_of: &str) -> Tags {
        self.run_with(as_of, None).await
    }

    /// Run with a config file body (e.g. `[params.low_credit]\nmin_events = 2`).
    pub async fn run_with(&self, as_of: &str, config: Option<&str>) -> Tags {
        self.try_run(as_of, config).await.expect("run succeeds");
        self.published(None).await
    }

    /// Read a published version (latest by default) of `customer_tags`.
    pub async fn published(&self, version: Option<u64>) -> Tags {
        read_tags(&self.warehouse_dir(), version).await
    }

    /// What services saw after the publish `published` reported.
    pub async fn seen_after(&self, published: &tagflow::publish::Published) -> Tags {
        read_view_at(
            &location(&self.warehouse_dir()),
            Some((published.version, published.feed_version)),
        )
        .await
    }
}

/// Read a published version (latest by default) of `customer_tags` under `warehouse`,
/// ordered by tag and customer.
pub async fn read_tags(warehouse: &Path, version: Option<u64>) -> Tags {
    read_tags_at(&location(warehouse), version).await
}

/// [`read_tags`] for a warehouse anywhere (a local folder or an object store).
pub async fn read_tags_at(warehouse: &tagflow::storage::Location, version: Option<u64>) -> Tags {
    if version.is_none() {
        // The latest: what services see, live changes of a follow session included.
        return read_view_at(warehouse, None).await;
    }
    let batches = query_published(
        warehouse,
        TAGS_TABLE,
        version,
        "SELECT customer_id, family, tag, value, score FROM customer_tags ORDER BY tag, customer_id",
    )
    .await
    .expect("read customer_tags");
    tags_from(&batches)
}

/// What services saw after a publish (`customer_tags` at its version with the live changes
/// of the feed at its version applied); `None`: now. Ordered by tag and customer.
pub async fn read_view_at(warehouse: &tagflow::storage::Location, at: Option<(u64, Option<u64>)>) -> Tags {
    let (_, rows) = tagflow::publish::tags::live_view(warehouse, at)
        .await
        .expect("read the live view");
    let mut tags = tags_from(&rows);
    tags.rows
        .sort_by(|a, b| (&a.tag, &a.customer_id).cmp(&(&b.tag, &b.customer_id)));
    tags
}

/// Rows of `customer_id, family, tag, value, score` as [`Tags`].
pub fn tags_from(batches: &[RecordBatch]) -> Tags {
    let mut rows = Vec::new();
    for b in batches {
        let s = |i: usize| {
            b.column(i)
                .as_any()
                .downcast_ref::<StringArray>()
                .expect("utf8")
                .clone()
        };
        let (c, f, t, v) = (s(0), s(1), s(2), s(3));
        let score = b.column(4).as_any().downcast_ref::<Float64Array>().expect("f64");
        for i in 0..b.num_rows() {
            rows.push(TagRow {
                customer_id: c.value(i).into(),
                family: f.value(i).into(),
                tag: t.value(i).into(),
                value: v.value(i).into(),
                score: arrow::array::Array::is_valid(score, i).then(|| score.value(i)),
            });
        }
    }
    Tags { rows }
}

/// The last day of the generated data sets the tests use.
pub fn end_day() -> chrono::NaiveDate {
    chrono::NaiveDate::from_ymd_opt(2026, 11, 19).unwrap()
}

/// Generate landing files (`tagflow generate`'s data) into a local folder.
pub async fn generate_into(dir: &Path, customers: usize, days: u32, seed: u64) {
    let options = tagflow::generate::GenerateOptions {
        customers,
        days,
        seed,
        end: end_day(),
        bad_input: false,
    };
    tagflow::generate::generate(&location(dir), &options)
        .await
        .expect("generate");
}

/// The shipped SQL catalog.
pub fn shipped_sql() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("sql")
}

/// Copy a folder tree (a catalog to break or extend).
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let path = entry.unwrap().path();
        let target = to.join(path.file_name().unwrap());
        if path.is_dir() {
            copy_dir(&path, &target);
        } else {
            std::fs::copy(&path, &target).unwrap();
        }
    }
}

/// Replace `from` by `to` in a file; the text must be there.
pub fn edit(path: &Path, from: &str, to: &str) {
    let text = std::fs::read_to_string(path).unwrap();
    assert!(text.contains(from), "{} has no {from:?}", path.display());
    std::fs::write(path, text.replacen(from, to, 1)).unwrap();
}

/// A local folder as a storage location.
pub fn location(path: &Path) -> tagflow::storage::Location {
    tagflow::storage::Location::parse(&path.to_string_lossy(), &Default::default()).expect("location")
}

/// The `tagflow` binary, run from the source tree with no TAGFLOW_* settings inherited.
pub fn tagflow() -> std::process::Command {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_tagflow"));
    for var in [
        "TAGFLOW_LANDING",
        "TAGFLOW_WAREHOUSE",
        "TAGFLOW_AS_OF",
        "TAGFLOW_CONFIG",
        "TAGFLOW_SQL_DIR",
        "TAGFLOW_SCHEMAS_DIR",
        "TAGFLOW_LISTEN",
        "TAGFLOW_SERVE_TOKEN",
    ] {
        cmd.env_remove(var);
    }
    cmd.current_dir(env!("CARGO_MANIFEST_DIR"));
    cmd
}

// ---- shared by the tag tests (tags_family, state_segments) ----

/// The as-of time of the hand-made tag fixtures (the tag case files use the same one).
pub const T: &str = "2026-11-20T12:00:00Z";

/// A `paid` order event.
pub fn paid(id: &str, customer: &str, time: &str, order_id: &str, amount: f64) -> Order {
    order(id, customer, time, order_id, "paid", amount)
}

/// The 19 tags of the shipped catalog (shared/spec/tags.md, v1 and v2).
pub const SHIPPED_TAGS: [&str; 19] = [
    "rfm_tier",
    "lifecycle",
    "aipl_stage",
    "repurchaser",
    "brand_enthusiast",
    "category_intent",
    "cart_abandoner",
    "promo_sensitive",
    "refund_risk",
    "low_credit",
    "shared_device",
    "marketing_blacklist",
    "preferred_channel",
    "active_hour",
    "churn_risk",
    "expected_orders_90",
    "opted_out",
    "over_contacted",
    "do_not_contact",
];

/// How each record batch of an Arrow IPC file is compressed (`None`: not compressed), read
/// from the messages the file's footer points at.
pub fn ipc_batch_compression(file: &[u8]) -> Vec<Option<arrow::ipc::CompressionType>> {
    let int_at = |at: usize| i32::from_le_bytes(file[at..at + 4].try_into().expect("4 bytes")) as usize;
    // ... footer, footer length (4 bytes), "ARROW1"
    let footer_end = file.len() - 10;
    let footer = arrow::ipc::root_as_footer(&file[footer_end - int_at(footer_end)..footer_end]).expect("IPC footer");
    footer
        .recordBatches()
        .expect("record batches")
        .iter()
        .map(|block| {
            // continuation marker, message length, message
            let start = block.offset() as usize + 8;
            let message = arrow::ipc::root_as_message(&file[start..start + int_at(start - 4)]).expect("IPC message");
            let batch = message.header_as_record_batch().expect("a record batch message");
            batch.compression().map(|c| c.codec())
        })
        .collect()
}

/// Send `signal` (e.g. `libc::SIGTERM`) to `child` and wait for it to exit, at most
/// `within`.
pub fn stop_with(
    child: &mut std::process::Child,
    signal: i32,
    within: std::time::Duration,
) -> std::process::ExitStatus {
    send_signal(child, signal);
    wait_within(child, within)
}

/// Send `signal` to `child`. The signal is pending in the child when this returns.
pub fn send_signal(child: &std::process::Child, signal: i32) {
    // SAFETY: a plain kill(2) of a child process this test spawned and has not reaped.
    let sent = unsafe { libc::kill(child.id() as i32, signal) };
    assert_eq!(sent, 0, "kill({}, {signal})", child.id());
}

/// Wait for `child` to exit, at most `within`.
pub fn wait_within(child: &mut std::process::Child, within: std::time::Duration) -> std::process::ExitStatus {
    let started = std::time::Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("wait for the child") {
            return status;
        }
        assert!(started.elapsed() < within, "the process did not exit within {within:?}");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// A test hold point (`tagflow::storage::hold`): while it is held, a process that reaches `point`
/// waits there. [`Hold::env`] is the variable to give the process; [`Hold::reached`] waits
/// until the process's log says it is waiting; [`Hold::release`] lets it go on.
pub struct Hold {
    point: &'static str,
    file: PathBuf,
}

impl Hold {
    pub fn new(dir: &Path, point: &'static str) -> Self {
        let file = dir.join(format!("hold-{point}"));
        std::fs::write(&file, b"").expect("create the hold file");
        Hold { point, file }
    }

    pub fn env(&self) -> (&'static str, String) {
        (
            tagflow::storage::hold::HOLD_VAR,
            format!("{}:{}", self.point, self.file.display()),
        )
    }

    /// Wait until `log` (the process's stderr, written to a file) shows the process held.
    pub fn reached(&self, log: &Path) {
        let started = std::time::Instant::now();
        loop {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            if text.contains("held at a test hold point") && text.contains(self.point) {
                return;
            }
            assert!(
                started.elapsed() < std::time::Duration::from_secs(60),
                "the process never reached hold point {}:\n{text}",
                self.point
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    pub fn release(&self) {
        std::fs::remove_file(&self.file).expect("remove the hold file");
    }
}
