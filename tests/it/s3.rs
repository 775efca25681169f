//! S3 end to end, against a real S3 server: SeaweedFS on loopback, started by `.ci/run` (or
//! by hand: `.ci/seaweedfs start DIR && source DIR/env`). Each test works under a prefix of
//! its own in the bucket. Without the `TAGFLOW_TEST_S3_*` variables the tests say on the
//! terminal that they are skipped; CI sets `TAGFLOW_TEST_S3_REQUIRED`, so there a missing
//! server fails them instead.

use std::io::Write;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arrow::array::{Int64Array, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use arrow::record_batch::RecordBatch;
use object_store::ObjectStoreExt;
use tagflow::app::report::Mode;
use tagflow::publish::{append, query_published, TAGS_TABLE};
use tagflow::serve;
use tagflow::storage::{Location, StoreOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::http::Client;
use crate::incremental::{assert_same, full_tags, Arrivals, SCHEDULE};
use crate::s3_server::S3;
use crate::serve::{api_rows, by_customer, encode};
use crate::support::*;

/// The S3 server for `test`, or `None` after telling the terminal that `test` is skipped.
pub(crate) fn server(test: &str) -> Option<S3> {
    if let Some(s3) = S3::from_env() {
        return Some(s3);
    }
    if std::env::var("TAGFLOW_TEST_S3_REQUIRED").is_ok() {
        panic!("TAGFLOW_TEST_S3_REQUIRED is set but TAGFLOW_TEST_S3_ENDPOINT/BUCKET/ACCESS_KEY_ID/SECRET_ACCESS_KEY are not");
    }
    // Straight to stderr, past the test harness's capture, so it is seen.
    let _ = writeln!(
        std::io::stderr(),
        "SKIPPED {test}: no S3 server configured (see README, \"Testing against S3\")"
    );
    None
}

/// Upload arrivals `from..to` into an S3 landing zone, and mirror them into the fixture's
/// local landing zone (which the local `--full` reference runs read).
async fn land_both(arrivals: &Arrivals, fx: &Fixture, landing: &Location, from: usize, to: usize) -> usize {
    for (file, relative) in arrivals.files(from, to) {
        let bytes = std::fs::read(&file).expect("read arrival");
        landing
            .store
            .put(&landing.path(relative), bytes.into())
            .await
            .expect("upload arrival");
    }
    arrivals.land(fx, from, to)
}

/// Settings that read `landing` and publish to `warehouse`, as of `as_of`.
fn settings_on(fx: &Fixture, as_of: &str, landing: &Location, warehouse: &Location) -> tagflow::config::Settings {
    let mut settings = fx.settings(as_of, None).expect("settings");
    settings.landing = Some(landing.clone());
    settings.warehouse = Some(warehouse.clone());
    settings
}

/// Write `body` as a config file in the fixture and run `tagflow <args> --config it`.
async fn cli(fx: &Fixture, body: &str, args: &[&str]) -> std::process::Output {
    cli_logging(fx, body, args, "info").await
}

/// [`cli`] with `TAGFLOW_LOG` set to `filter`.
async fn cli_logging(fx: &Fixture, body: &str, args: &[&str], filter: &str) -> std::process::Output {
    let path = fx.dir.path().join(format!("s3-{}.toml", uuid::Uuid::new_v4().simple()));
    std::fs::write(&path, body).expect("write config");
    let mut command = tokio::process::Command::from(tagflow());
    command.args(args).arg("--config").arg(&path).env("TAGFLOW_LOG", filter);
    command.output().await.expect("run tagflow")
}

fn stderr(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// generate → run → incremental runs → compaction → serve, landing and warehouse on S3; after
/// every run the table equals a local `--full` recomputation of the same files.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_end_to_end_incremental_runs_compaction_and_serve() {
    let Some(s3) = server("s3_end_to_end_incremental_runs_compaction_and_serve") else {
        return;
    };
    let fx = Fixture::new();
    let root = S3::unique("e2e");
    let (landing, warehouse) = (
        s3.location(&format!("{root}/landing")),
        s3.location(&format!("{root}/warehouse")),
    );

    // `tagflow generate` writes straight to S3 (the CLI, with the config's options).
    let config = s3.config(&format!("{root}/generated"), &s3.endpoint, &s3.secret_access_key, "");
    let generated = cli(
        &fx,
        &config,
        &["generate", "--customers", "40", "--days", "30", "--end", "2026-06-30"],
    )
    .await;
    assert!(generated.status.success(), "generate: {}", stderr(&generated));
    let summary: serde_json::Value = serde_json::from_slice(&generated.stdout).expect("summary");
    let generated_files = s3
        .location(&format!("{root}/generated/landing"))
        .list_under(&s3.location(&format!("{root}/generated/landing")).prefix)
        .await
        .expect("list");
    let written: u64 = summary["files"]
        .as_object()
        .expect("files")
        .values()
        .map(|n| n.as_u64().unwrap())
        .sum();
    assert_eq!(
        generated_files.len() as u64,
        written,
        "every generated file is in the bucket"
    );

    // Incremental runs on S3 at rising as-of times.
    let arrivals = Arrivals::generate(&fx, 71, 150, 100).await;
    let mut landed = 0;
    let mut version = 0;
    for (step, &(as_of, share)) in SCHEDULE.iter().enumerate().filter(|(i, _)| [0, 3, 5, 7].contains(i)) {
        let upto = arrivals.upto(share);
        let new_files = land_both(&arrivals, &fx, &landing, landed, upto).await;
        landed = upto;
        let report = tagflow::app::run::run(&settings_on(&fx, as_of, &landing, &warehouse))
            .await
            .expect("run on S3");
        let context = format!("step {step}, as of {as_of}");
        if step > 0 {
            assert_eq!(report.mode, Mode::Incremental, "{context}: {:?}", report.full_because);
        }
        let read: usize = report.streams.values().map(|s| s.files).sum();
        assert_eq!(read, new_files, "{context}: only new files are read");
        version = report.published.version;
        assert_same(
            &read_tags_at(&warehouse, None).await,
            &full_tags(&fx, as_of).await,
            &context,
        );
    }
    assert!(!fx.warehouse_dir().exists(), "nothing was written locally");
    // On an object store the state tables are zstd-compressed Arrow IPC (read back above).
    let tables = warehouse
        .list_under(&warehouse.path("_tagflow/state/tables"))
        .await
        .expect("list state tables");
    let mut compression = Vec::new();
    for table in tables {
        let bytes = warehouse
            .store
            .get(&table.location)
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        compression.extend(ipc_batch_compression(&bytes));
    }
    assert!(!compression.is_empty());
    assert!(
        compression
            .iter()
            .all(|c| *c == Some(arrow::ipc::CompressionType::ZSTD)),
        "{compression:?}"
    );

    // Compaction keeps the rows and adds a version.
    let last_as_of = SCHEDULE[7].0;
    let before = read_tags_at(&warehouse, None).await;
    let report = tagflow::app::run::compact(&settings_on(&fx, last_as_of, &landing, &warehouse))
        .await
        .expect("compact on S3");
    let tags = report
        .tables
        .iter()
        .find(|t| t.table == TAGS_TABLE)
        .expect("customer_tags compacted");
    assert_eq!(tags.version_before, version);
    assert!(tags.version_after > version, "{tags:?}");
    let after = read_tags_at(&warehouse, None).await;
    assert_same(&after, &before, "after compaction");

    // Another Delta reader (Python `deltalake`, when CI provides it) reads the S3 table.
    if let Ok(python) = std::env::var("TAGFLOW_TEST_PYTHON") {
        let script = r#"
import os, sys, json
from deltalake import DeltaTable
options = {key: os.environ[key] for key in
           ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION", "AWS_ALLOW_HTTP")}
table = DeltaTable(sys.argv[1], storage_options=options)
t = table.to_pyarrow_table()
rows = sorted(zip(t.column("customer_id").to_pylist(), t.column("tag").to_pylist(), t.column("value").to_pylist()))
print(json.dumps({"version": table.version(), "rows": rows}))
sys.stdout.flush()
os._exit(0)  # see end_to_end.rs: skip a finalisation abort of pyarrow + deltalake
"#;
        let output = tokio::process::Command::new(python)
            .arg("-c")
            .arg(script)
            .arg(warehouse.child_url(TAGS_TABLE).as_str())
            .env("AWS_ENDPOINT_URL", &s3.endpoint)
            .env("AWS_ACCESS_KEY_ID", &s3.access_key_id)
            .env("AWS_SECRET_ACCESS_KEY", &s3.secret_access_key)
            .env("AWS_REGION", "us-east-1")
            .env("AWS_ALLOW_HTTP", "true")
            .output()
            .await
            .expect("python");
        assert!(output.status.success(), "python: {}", stderr(&output));
        let read: serde_json::Value = serde_json::from_slice(&output.stdout).expect("json");
        assert_eq!(read["version"], tags.version_after);
        let mut expected: Vec<(String, String, String)> = after
            .rows
            .iter()
            .map(|r| (r.customer_id.clone(), r.tag.clone(), r.value.clone()))
            .collect();
        expected.sort();
        let theirs: Vec<(String, String, String)> = serde_json::from_value(read["rows"].clone()).expect("rows");
        assert_eq!(theirs, expected);
    }

    // The lookup API serves the S3 table, every customer exactly.
    let mut options = fx.settings(last_as_of, None).expect("settings").serve;
    options.listen = "127.0.0.1:0".parse().expect("addr");
    options.reload_interval = Duration::from_millis(100);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = serve::start(warehouse.clone(), options, async move {
        let _ = stopped.await;
    })
    .await
    .expect("serve starts");
    for _ in 0..300 {
        if server.state.current().is_some_and(|i| i.version == tags.version_after) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut client = Client::new(server.addr);
    let expected = by_customer(&after);
    assert!(expected.len() > 100, "{} customers", expected.len());
    for (customer, rows) in &expected {
        let reply = client.get(&format!("/v1/customers/{}/tags", encode(customer))).await;
        assert_eq!(reply.status, 200, "{customer}: {}", reply.text());
        let body = reply.json();
        assert_eq!(body["version"], tags.version_after);
        assert_eq!(&api_rows(&body), rows, "{customer}");
    }
    let _ = stop.send(());
    server.wait().await.expect("server stops");
}

/// Two publishers commit to one table on the same S3 warehouse at once (delta-rs commits
/// with conditional puts): every commit gets its own version, nothing is lost or doubled.
/// Two `tagflow run` processes at once take turns through the warehouse lock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_publishers_on_one_s3_warehouse_lose_nothing() {
    let Some(s3) = server("two_publishers_on_one_s3_warehouse_lose_nothing") else {
        return;
    };
    let root = S3::unique("publishers");
    let warehouse = format!("{root}/warehouse");
    let schema = Arc::new(Schema::new(vec![
        Field::new("writer", DataType::Utf8, false),
        Field::new("seq", DataType::Int64, false),
    ]));
    let row = |writer: &str, seq: i64| {
        RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(StringArray::from(vec![writer])),
                Arc::new(Int64Array::from(vec![seq])),
            ],
        )
        .expect("batch")
    };
    let first = s3.location(&warehouse);
    append(&first, "ledger", vec![row("setup", 0)], Default::default())
        .await
        .expect("create");
    const COMMITS: i64 = 8;
    let writer = |name: &'static str| {
        // Each publisher has its own client, as two processes would.
        let location = s3.location(&warehouse);
        async move {
            let mut versions = Vec::new();
            for seq in 0..COMMITS {
                let published = append(&location, "ledger", vec![row(name, seq)], Default::default())
                    .await
                    .expect("append");
                versions.push(published.version);
            }
            versions
        }
    };
    let (a, b) = tokio::join!(writer("a"), writer("b"));
    let mut versions: Vec<u64> = a.iter().chain(&b).copied().collect();
    versions.sort();
    assert_eq!(
        versions,
        (1..=2 * COMMITS as u64).collect::<Vec<_>>(),
        "one version per commit"
    );
    let count = |version: u64| {
        let first = first.clone();
        async move {
            let batches = query_published(&first, "ledger", Some(version), "SELECT count(*) AS n FROM ledger")
                .await
                .expect("read version");
            batches[0]
                .column(0)
                .as_any()
                .downcast_ref::<Int64Array>()
                .expect("count")
                .value(0)
        }
    };
    for version in 0..=2 * COMMITS as u64 {
        assert_eq!(
            count(version).await,
            version as i64 + 1,
            "version {version} adds exactly one row"
        );
    }
    let rows = query_published(
        &first,
        "ledger",
        None,
        "SELECT writer, seq FROM ledger WHERE writer <> 'setup' ORDER BY writer, seq",
    )
    .await
    .expect("read");
    let mut seen = Vec::new();
    for batch in &rows {
        let w = batch.column(0).as_any().downcast_ref::<StringArray>().expect("writer");
        let s = batch.column(1).as_any().downcast_ref::<Int64Array>().expect("seq");
        seen.extend((0..batch.num_rows()).map(|i| (w.value(i).to_string(), s.value(i))));
    }
    let expected: Vec<(String, i64)> = ["a", "b"]
        .iter()
        .flat_map(|w| (0..COMMITS).map(move |s| (w.to_string(), s)))
        .collect();
    assert_eq!(seen, expected);

    // Two runs at once: the S3 lock lets one publish at a time; the table is exact.
    let fx = Fixture::new();
    let arrivals = Arrivals::generate(&fx, 72, 60, 60).await;
    let landing = s3.location(&format!("{root}/landing"));
    land_both(&arrivals, &fx, &landing, 0, arrivals.upto(100)).await;
    let as_of = SCHEDULE[6].0;
    let config = s3.config(&root, &s3.endpoint, &s3.secret_access_key, "");
    let args = ["run", "--as-of", as_of];
    let (one, two) = tokio::join!(cli(&fx, &config, &args), cli(&fx, &config, &args));
    let mut codes = [one.status.code(), two.status.code()];
    codes.sort();
    assert!(
        codes == [Some(0), Some(0)] || codes == [Some(0), Some(6)],
        "exit codes {codes:?}: {} / {}",
        stderr(&one),
        stderr(&two)
    );
    assert_same(
        &read_tags_at(&first, None).await,
        &full_tags(&fx, as_of).await,
        "two runs at once",
    );
}

/// Wrong credentials, a missing bucket and an unreachable endpoint: each says what and
/// where (without secrets) and exits with its own code; the retries are in the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_failures_are_named_and_exit_distinctly() {
    let Some(s3) = server("s3_failures_are_named_and_exit_distinctly") else {
        return;
    };
    let fx = Fixture::new();
    let root = S3::unique("failures");
    let quick = "max_retries = 2\nretry_timeout = \"3s\"";
    let wrong_secret = "not-the-secret-0123456789";

    let denied = cli(&fx, &s3.config(&root, &s3.endpoint, wrong_secret, quick), &["run"]).await;
    let text = stderr(&denied);
    assert_eq!(denied.status.code(), Some(7), "{text}");
    assert!(text.contains(&s3.url(&format!("{root}/landing"))), "{text}");
    assert!(text.contains("refused") && text.contains(&s3.endpoint), "{text}");
    assert!(
        !text.contains(wrong_secret) && !text.contains(&s3.secret_access_key),
        "a secret was printed: {text}"
    );

    let missing = s3
        .config(&root, &s3.endpoint, &s3.secret_access_key, quick)
        .replace(&format!("s3://{}/", s3.bucket), "s3://tagflow-no-such-bucket/");
    let missing = cli(&fx, &missing, &["run"]).await;
    let text = stderr(&missing);
    assert_eq!(missing.status.code(), Some(8), "{text}");
    assert!(
        text.contains("s3://tagflow-no-such-bucket/") && text.contains("does not exist"),
        "{text}"
    );

    // A loopback port nobody listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let nowhere = format!("http://127.0.0.1:{port}");
    let unreachable = cli(&fx, &s3.config(&root, &nowhere, &s3.secret_access_key, quick), &["run"]).await;
    let text = stderr(&unreachable);
    assert_eq!(unreachable.status.code(), Some(5), "{text}");
    assert!(text.contains("cannot reach") && text.contains(&nowhere), "{text}");
    assert!(
        text.contains("retry 1 of 2") && text.contains("retry 2 of 2"),
        "retries are logged: {text}"
    );
    assert!(!text.contains(&s3.secret_access_key), "a secret was printed: {text}");

    // Even with every library's trace logs on, a run that reaches the store prints no secret
    // (an empty landing zone: exit 3, after listing it and taking the lock).
    let traced = cli_logging(
        &fx,
        &s3.config(&root, &s3.endpoint, &s3.secret_access_key, quick),
        &["run"],
        "trace",
    )
    .await;
    let text = stderr(&traced);
    let tail: String = text.chars().skip(text.chars().count().saturating_sub(2000)).collect();
    assert_eq!(traced.status.code(), Some(3), "{tail}");
    assert!(text.len() > 10_000, "trace logs were written");
    assert!(!text.contains(&s3.secret_access_key), "a secret was logged");
}

/// A TCP proxy in front of the S3 server that a test can cut: once `cut_after` request bytes
/// have passed, every open connection is dropped and new ones are refused, until restored.
struct Proxy {
    addr: SocketAddr,
    up: Arc<AtomicBool>,
    forwarded: Arc<AtomicU64>,
    cut_after: Arc<AtomicU64>,
    cuts: tokio::sync::watch::Sender<u64>,
}

impl Proxy {
    async fn start(upstream: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let proxy = Proxy {
            addr: listener.local_addr().expect("addr"),
            up: Arc::new(AtomicBool::new(true)),
            forwarded: Arc::new(AtomicU64::new(0)),
            cut_after: Arc::new(AtomicU64::new(u64::MAX)),
            cuts: tokio::sync::watch::channel(0).0,
        };
        let (up, forwarded, cut_after, cuts) = (
            proxy.up.clone(),
            proxy.forwarded.clone(),
            proxy.cut_after.clone(),
            proxy.cuts.clone(),
        );
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                if !up.load(Ordering::SeqCst) {
                    continue; // dropped: the connection closes at once
                }
                let Ok(server) = TcpStream::connect(upstream).await else {
                    continue;
                };
                let (up, forwarded, cut_after, cuts) = (up.clone(), forwarded.clone(), cut_after.clone(), cuts.clone());
                let mut cut = cuts.subscribe();
                tokio::spawn(async move {
                    let (mut client_read, mut client_write) = client.into_split();
                    let (mut server_read, mut server_write) = server.into_split();
                    let requests = async {
                        let mut buffer = vec![0u8; 16 * 1024];
                        loop {
                            let n = client_read.read(&mut buffer).await?;
                            if n == 0 {
                                return server_write.shutdown().await;
                            }
                            let total = forwarded.fetch_add(n as u64, Ordering::SeqCst) + n as u64;
                            if total > cut_after.load(Ordering::SeqCst) {
                                up.store(false, Ordering::SeqCst);
                                cuts.send_modify(|n| *n += 1);
                                return Ok(());
                            }
                            server_write.write_all(&buffer[..n]).await?;
                        }
                    };
                    let responses = tokio::io::copy(&mut server_read, &mut client_write);
                    tokio::select! {
                        _ = async { tokio::join!(requests, responses) } => {}
                        _ = cut.changed() => {}
                    }
                });
            }
        });
        proxy
    }

    fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Cut once `bytes` more request bytes have passed.
    fn cut_after(&self, bytes: u64) {
        self.forwarded.store(0, Ordering::SeqCst);
        self.cut_after.store(bytes, Ordering::SeqCst);
    }

    fn restore(&self) {
        self.cut_after.store(u64::MAX, Ordering::SeqCst);
        self.forwarded.store(0, Ordering::SeqCst);
        self.up.store(true, Ordering::SeqCst);
    }
}

/// The endpoint goes away in the middle of a run: the run fails with the storage exit code,
/// the published table stays at its last good version, and once the endpoint is back the
/// next run converges to the exact table (no event lost or counted twice).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_lost_mid_run_keeps_the_last_good_version() {
    let Some(s3) = server("an_endpoint_lost_mid_run_keeps_the_last_good_version") else {
        return;
    };
    let fx = Fixture::new();
    let root = S3::unique("outage");
    let proxy = Proxy::start(s3.upstream()).await;
    let config = s3.config(
        &root,
        &proxy.endpoint(),
        &s3.secret_access_key,
        "max_retries = 2\nretry_timeout = \"2s\"",
    );
    let landing = s3.location(&format!("{root}/landing"));
    let warehouse = s3.location(&format!("{root}/warehouse"));
    let arrivals = Arrivals::generate(&fx, 73, 120, 100).await;

    let first_as_of = SCHEDULE[3].0;
    land_both(&arrivals, &fx, &landing, 0, arrivals.upto(SCHEDULE[3].1)).await;
    proxy.cut_after(u64::MAX);
    let first = cli(&fx, &config, &["run", "--as-of", first_as_of]).await;
    assert!(first.status.success(), "{}", stderr(&first));
    let first_bytes = proxy.forwarded.load(Ordering::SeqCst);
    let good = read_tags_at(&warehouse, None).await;
    let good_version = tagflow::publish::snapshots::list(&warehouse)
        .await
        .expect("snapshots")
        .last()
        .expect("a version")
        .version;

    let as_of = SCHEDULE[6].0;
    land_both(
        &arrivals,
        &fx,
        &landing,
        arrivals.upto(SCHEDULE[3].1),
        arrivals.upto(100),
    )
    .await;
    let mut failed = 0;
    for share in [5, 25, 50, 75, 90] {
        proxy.cut_after(first_bytes * share / 100);
        let output = cli(&fx, &config, &["run", "--as-of", as_of]).await;
        proxy.restore();
        if output.status.success() {
            continue; // the run needed fewer bytes than the cut: nothing to check here
        }
        failed += 1;
        let text = stderr(&output);
        assert_eq!(output.status.code(), Some(5), "cut at {share}%: {text}");
        assert!(text.contains("s3://"), "the error names the location: {text}");
        let latest = tagflow::publish::snapshots::list(&warehouse).await.expect("snapshots");
        assert_eq!(
            latest.last().expect("a version").version,
            good_version,
            "cut at {share}%"
        );
        assert_same(
            &read_tags_at(&warehouse, None).await,
            &good,
            &format!("cut at {share}%"),
        );
    }
    assert!(failed >= 1, "no cut landed inside a run");

    let last = cli(&fx, &config, &["run", "--as-of", as_of]).await;
    assert!(last.status.success(), "{}", stderr(&last));
    assert_same(
        &read_tags_at(&warehouse, None).await,
        &full_tags(&fx, as_of).await,
        "after the outage",
    );
}

/// `[storage.*]` is typed and checked before anything runs (no server needed): unknown keys,
/// options on a local path, a bucket-less URL and a bad duration are config errors (exit 2),
/// and a location's `Debug` form never shows a secret.
#[test]
fn storage_options_are_typed_and_checked() {
    let fx = Fixture::new();
    let s3_warehouse = "warehouse = \"s3://bucket/w\"\n";
    for (body, expected) in [
        (
            format!("{s3_warehouse}[storage.warehouse]\naws_endpoint = \"http://x\"\n"),
            "unknown field `aws_endpoint`",
        ),
        (
            format!("{s3_warehouse}[storage.warehouse]\nretry_timeout = \"soon\"\n"),
            "retry_timeout",
        ),
        (
            "landing = \"local-landing\"\n[storage.landing]\nregion = \"eu-west-1\"\n".to_string(),
            "apply to s3:// locations",
        ),
        ("warehouse = \"s3:///no-bucket\"\n".to_string(), "needs a bucket"),
        (
            "warehouse = \"gs://bucket/w\"\n".to_string(),
            "unsupported URL scheme 'gs'",
        ),
    ] {
        let path = fx.dir.path().join("checked.toml");
        std::fs::write(&path, &body).expect("write");
        let error = tagflow::config::Settings::resolve(&tagflow::config::CliSettings {
            config: Some(path),
            ..Default::default()
        })
        .map_err(tagflow::Error::from)
        .expect_err(&body);
        assert!(error.to_string().contains(expected), "{body}: {error}");
        assert_eq!(error.exit_code(), tagflow::app::error::exit::CONFIG, "{body}");
    }
    let secret = "very-secret-value-123";
    let options = StoreOptions {
        access_key_id: Some("AKID".into()),
        secret_access_key: Some(secret.into()),
        session_token: Some(secret.into()),
        ..Default::default()
    };
    let location = Location::parse("s3://bucket/prefix", &options).expect("location");
    for shown in [format!("{location:?}"), format!("{options:?}")] {
        assert!(!shown.contains(secret), "{shown}");
    }
}

/// `tagflow forget --purge-history` on an S3 warehouse: no object under it holds the
/// customers afterwards (the state's zstd Arrow files decoded), and a later run drops their
/// new events.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_forget_leaves_no_trace() {
    let Some(s3) = server("s3_forget_leaves_no_trace") else {
        return;
    };
    let fx = Fixture::new();
    let (landing, warehouse) = s3.landing_and_warehouse("forget");
    let options = tagflow::generate::GenerateOptions {
        customers: 60,
        days: 10,
        seed: 5,
        end: end_day(),
        bad_input: false,
    };
    tagflow::generate::generate(&landing, &options)
        .await
        .expect("generate on S3");
    let as_of = "2026-11-20T12:00:00Z";
    tagflow::app::run::run(&settings_on(&fx, as_of, &landing, &warehouse))
        .await
        .expect("run on S3");
    let rows = query_published(
        &warehouse,
        TAGS_TABLE,
        None,
        "SELECT DISTINCT customer_id FROM customer_tags ORDER BY customer_id LIMIT 2",
    )
    .await
    .expect("read");
    let column = rows[0].column(0).as_any().downcast_ref::<StringArray>().expect("ids");
    let ids: Vec<String> = column.iter().flatten().map(str::to_string).collect();
    let settings = settings_on(&fx, as_of, &landing, &warehouse);
    let report = tagflow::app::forget::forget(&settings, ids.clone(), true)
        .await
        .expect("forget on S3");
    assert_eq!(report.customers, 2);
    assert!(report.removed["customer_tags"] > 0, "{report:?}");
    let mut found = Vec::new();
    for object in warehouse.list_under(&warehouse.prefix).await.expect("list") {
        let bytes = warehouse
            .store
            .get(&object.location)
            .await
            .expect("get")
            .bytes()
            .await
            .expect("bytes");
        found.extend(crate::forget::traces_in(object.location.as_ref(), bytes, &ids));
    }
    assert_eq!(found, Vec::<String>::new());

    fx.clicks("after.parquet", &[view("late-1", &ids[0], "2026-11-20T13:00:00Z")]);
    let bytes = std::fs::read(fx.landing_dir().join("clicks/after.parquet")).expect("file");
    landing
        .store
        .put(&landing.path("clicks/after.parquet"), bytes.into())
        .await
        .expect("upload");
    let run = tagflow::app::run::run(&settings_on(&fx, "2026-11-20T14:00:00Z", &landing, &warehouse))
        .await
        .expect("run after");
    assert_eq!(run.streams["clicks"].rows_forgotten, 1);
}

/// `follow` on S3 with every micro-batch due to merge: the merges run in the background on
/// a runtime of their own (which opens its own S3 client) while the next batches publish
/// on top of them, and what services see still equals a full run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_follow_merges_in_the_background() {
    let Some(s3) = server("s3_follow_merges_in_the_background") else {
        return;
    };
    let fx = Fixture::new();
    let (landing, warehouse) = s3.landing_and_warehouse("follow");
    let arrivals = Arrivals::generate(&fx, 72, 150, 100).await;
    let (as_of, _) = SCHEDULE[7];
    let start: chrono::DateTime<chrono::Utc> = as_of.parse().expect("an as-of time");
    let times: Vec<String> = (0..5)
        .map(|k| (start + chrono::Duration::minutes(k)).to_rfc3339())
        .collect();
    let times: Vec<&str> = times.iter().map(String::as_str).collect();
    let ends: Vec<usize> = (1..=times.len()).map(|k| arrivals.upto(20 * k)).collect();
    land_both(&arrivals, &fx, &landing, 0, ends[0]).await;
    let mut settings = settings_on(&fx, as_of, &landing, &warehouse);
    settings.merge.every = Duration::ZERO;
    settings.force = true;
    let reports = crate::incremental::follow_at(&settings, &times, |batch| {
        if let Some(&end) = ends.get(batch) {
            let upload = land_both(&arrivals, &fx, &landing, ends[batch - 1], end);
            tokio::task::block_in_place(|| tokio::runtime::Handle::current().block_on(upload));
        }
    })
    .await;
    assert!(
        reports.iter().any(|r| r.published.merge_started),
        "a merge ran in the background: {:?}",
        reports.iter().map(|r| &r.published).collect::<Vec<_>>()
    );
    assert_same(
        &read_tags_at(&warehouse, None).await,
        &full_tags(&fx, times[times.len() - 1]).await,
        "follow on S3 with merges in the background",
    );
    // The session waited for its last merge and marked it covered: customer_tags' latest
    // version is a merged one, and a reader of it sees the same as services.
    let last = reports.last().expect("reports");
    assert!(!last.published.merge_started || last.published.version < read_latest(&warehouse).await);
}

/// The latest version of `customer_tags` under `warehouse`.
async fn read_latest(warehouse: &Location) -> u64 {
    let table = tagflow::publish::open_published(warehouse, TAGS_TABLE, None)
        .await
        .expect("customer_tags opens");
    table.version().expect("a version")
}
