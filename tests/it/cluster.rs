//! The Ballista cluster engine (`--engine df://host:port`): a scheduler and two executors run
//! as separate `tagflow cluster` processes on loopback, with every shuffle read forced through
//! the executors' Flight services; `run --full` and `backfill` on the cluster publish the same
//! tables, row for row, as the embedded engine, on local files and on the S3 server; an
//! unreachable cluster fails with exit 5 and names its URL.

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use object_store::ObjectStoreExt;
use tagflow::jobs::engine::STAGING_DIR;
use tagflow::publish::{query_published, HISTORY_TABLE};
use tagflow::storage::Location;

use crate::incremental::assert_same;
use crate::s3::server as s3_server;
use crate::s3_server::S3;
use crate::support::*;

/// A cluster of `tagflow cluster` processes: one scheduler and executors of one slot each,
/// killed when dropped (a failed test stops them too).
struct Cluster {
    scheduler: Child,
    executors: Vec<Child>,
    /// Each executor's log so far (read as it is written: a full pipe would stall it).
    logs: Vec<Arc<Mutex<String>>>,
    url: String,
}

impl Cluster {
    /// Start the processes, each with the config file `config` (locations and storage).
    fn start(config: &Path, executors: usize) -> Cluster {
        let mut scheduler = tagflow()
            // A lost executor is found within seconds (Ballista's default waits three minutes).
            .args([
                "cluster",
                "scheduler",
                "--listen",
                "127.0.0.1:0",
                "--executor-timeout",
                "5s",
                "--config",
            ])
            .arg(config)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the scheduler");
        let addr = listening_on(&mut scheduler, "df");
        let executors: Vec<Child> = (0..executors)
            .map(|_| {
                tagflow()
                    .args(["cluster", "executor", "--slots", "1", "--scheduler"])
                    .arg(addr.to_string())
                    .arg("--listen")
                    .arg(format!("127.0.0.1:{}", free_port()))
                    .arg("--config")
                    .arg(config)
                    .env("TAGFLOW_LOG", "tagflow=info,ballista_executor=info,warn")
                    .stdout(Stdio::null())
                    .stderr(Stdio::piped())
                    .spawn()
                    .expect("start an executor")
            })
            .collect();
        let mut cluster = Cluster {
            scheduler,
            executors,
            logs: Vec::new(),
            url: format!("df://{addr}"),
        };
        for executor in &mut cluster.executors {
            let log = Arc::new(Mutex::new(String::new()));
            let (stderr, sink) = (executor.stderr.take().expect("piped"), log.clone());
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    let mut log = sink.lock().unwrap();
                    log.push_str(&line);
                    log.push('\n');
                }
            });
            cluster.logs.push(log);
        }
        cluster
    }

    /// Executor `i`'s log so far.
    fn log(&self, i: usize) -> String {
        self.logs[i].lock().unwrap().clone()
    }

    /// Stop every process (SIGTERM); each executor's log.
    fn stop(mut self) -> Vec<String> {
        for executor in &mut self.executors {
            stop_with(executor, libc::SIGTERM, Duration::from_secs(30));
        }
        stop_with(&mut self.scheduler, libc::SIGTERM, Duration::from_secs(30));
        (0..self.logs.len()).map(|i| self.log(i)).collect()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for child in self.executors.iter_mut().chain([&mut self.scheduler]) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The address a child prints as `listening on <scheme>://<addr>`.
fn listening_on(child: &mut Child, scheme: &str) -> SocketAddr {
    let stdout = child.stdout.take().expect("piped stdout");
    let prefix = format!("listening on {scheme}://");
    for line in BufReader::new(stdout).lines() {
        let line = line.expect("read stdout");
        if let Some(addr) = line.strip_prefix(&prefix) {
            return addr.parse().expect("an address");
        }
    }
    panic!("the process exited without printing '{prefix}...'");
}

/// A port nobody listens on now (an executor needs a fixed one).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// `tagflow <args> --config <config>` with `TAGFLOW_ENGINE=<engine>`: its stdout, or its
/// exit code and stderr.
fn run_tagflow(args: &[&str], config: &Path, engine: &str) -> Result<String, (i32, String)> {
    let output = tagflow()
        .args(args)
        .arg("--config")
        .arg(config)
        .env("TAGFLOW_ENGINE", engine)
        .output()
        .expect("run tagflow");
    match output.status.code() {
        Some(0) => Ok(String::from_utf8_lossy(&output.stdout).into_owned()),
        code => Err((code.unwrap_or(-1), String::from_utf8_lossy(&output.stderr).into_owned())),
    }
}

/// Every row of the history table, by day, tag and customer.
async fn history(warehouse: &Location) -> Tags {
    let sql = format!(
        "SELECT customer_id, family, tag, value, score FROM {HISTORY_TABLE} \
         ORDER BY snapshot_date, tag, customer_id"
    );
    tags_from(&query_published(warehouse, HISTORY_TABLE, None, &sql).await.unwrap())
}

/// Tasks an executor's log says it ran.
fn tasks_run(log: &str) -> usize {
    log.matches("Received task").count()
}

/// A config file at `path`: `body`, and every shuffle read through the network.
fn config_file(path: PathBuf, body: &str) -> PathBuf {
    std::fs::write(&path, format!("{body}\n[engine]\nremote_shuffle_reads = true\n")).unwrap();
    path
}

/// One side of the comparison: a config file (landing, warehouse, storage) and the
/// warehouse it names.
struct Side {
    config: PathBuf,
    warehouse: Location,
}

impl Side {
    /// `landing` and the warehouse `dir/name`, on local files.
    fn local(dir: &Path, landing: &Path, name: &str) -> Side {
        let warehouse = dir.join(name);
        let body = format!("landing = {landing:?}\nwarehouse = {warehouse:?}\n");
        Side {
            config: config_file(dir.join(format!("{name}.toml")), &body),
            warehouse: location(&warehouse),
        }
    }

    /// Whether a `customer_tags` table exists (local warehouses only).
    fn published(&self) -> bool {
        self.warehouse
            .url
            .to_file_path()
            .unwrap()
            .join("customer_tags")
            .exists()
    }
}

/// The quarantine entries of a run report, without where each copy is kept (each side
/// keeps its own) or when.
fn quarantined(report: &serde_json::Value) -> Vec<String> {
    let mut entries: Vec<String> = report["quarantine"]["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .map(|e| {
            format!(
                "{} {} {} {} {}",
                e["stream"], e["source"], e["kind"], e["reason"], e["rows"]
            )
        })
        .collect();
    entries.sort();
    entries
}

/// Copy the clicks files of the last generated day to `clicks/resent/`: every event in them
/// was counted already.
async fn resend_last_day_of_clicks(landing: &Location) {
    let day = format!("dt={}", end_day());
    for meta in landing.list_under(&landing.path("clicks")).await.unwrap() {
        let relative = landing.relative(&meta.location).unwrap();
        if relative.contains(&day) && relative.contains("part-") {
            let name = relative.rsplit('/').next().unwrap();
            let to = landing.path(&format!("clicks/resent/{name}"));
            landing.store.copy(&meta.location, &to).await.unwrap();
        }
    }
}

/// On `cluster` (with `on_cluster`'s config) and on the embedded engine: `run --full`, an
/// incremental run over re-sent files, then a backfill of four days. The tables must be
/// equal row for row, and so must the run reports' input counts, quarantine entries, held
/// events and state table sizes (the cluster read the landing files and wrote the state);
/// the staged inputs must be gone, and both executors must have run tasks.
async fn cluster_equals_embedded(cluster: Cluster, landing: &Location, on_cluster: &Side, embedded: &Side) {
    let run = |side: &Side, engine: &str, args: &[&str]| -> serde_json::Value {
        let args = [&["run", "--json"], args].concat();
        let out = run_tagflow(&args, &side.config, engine)
            .unwrap_or_else(|(code, stderr)| panic!("run on {engine} failed with exit {code}:\n{stderr}"));
        serde_json::from_str(&out).unwrap()
    };
    let full = ["--full", "--as-of", "2026-11-20T00:00:00Z"];
    let expected = run(embedded, "embedded", &full);
    let report = run(on_cluster, &cluster.url, &full);
    assert_eq!(report["mode"], "full", "{report}");
    assert_eq!(report["engine"], cluster.url.as_str(), "{report}");
    assert!(
        report["stages_ms"]["rebuild_state"].is_u64(),
        "the state was built on the cluster: {report}"
    );
    let (a, b) = (
        read_tags_at(&on_cluster.warehouse, None).await,
        read_tags_at(&embedded.warehouse, None).await,
    );
    assert!(a.rows.len() > 1000, "{} rows", a.rows.len());
    assert_same(&a, &b, "run --full: cluster vs embedded");
    assert_eq!(
        report["streams"], expected["streams"],
        "input counts: cluster vs embedded"
    );
    assert!(
        expected["streams"]["clicks"]["duplicates_dropped"].as_u64() > Some(0),
        "the history repeats events: {expected}"
    );
    assert!(!quarantined(&expected).is_empty(), "the history has bad input");
    assert_eq!(
        quarantined(&report),
        quarantined(&expected),
        "quarantine: cluster vs embedded"
    );
    assert_eq!(report["state"]["held_events"], expected["state"]["held_events"]);
    for (table, figures) in expected["state"]["tables"].as_object().unwrap() {
        assert_eq!(
            report["state"]["tables"][table]["rows"], figures["rows"],
            "state table {table}"
        );
    }

    // The state the executors wrote (segments, held events, ids) serves an incremental run:
    // a re-sent day of clicks is all duplicates there too.
    resend_last_day_of_clicks(landing).await;
    let later = ["--as-of", "2026-11-20T06:00:00Z"];
    let expected = run(embedded, "embedded", &later);
    let report = run(on_cluster, &cluster.url, &later);
    assert_eq!(report["mode"], "incremental", "{report}");
    assert_eq!(report["streams"], expected["streams"], "incremental input counts");
    let resent = &report["streams"]["clicks"];
    assert!(resent["duplicates_dropped"].as_u64() > Some(0), "{resent}");
    assert_eq!(resent["events"], 0, "{resent}");
    assert_same(
        &read_tags_at(&on_cluster.warehouse, None).await,
        &read_tags_at(&embedded.warehouse, None).await,
        "incremental run on the state the cluster wrote vs embedded",
    );

    let backfill = |side: &Side, engine: &str| -> serde_json::Value {
        let args = ["backfill", "--from", "2026-11-16", "--to", "2026-11-19", "--json"];
        let out = run_tagflow(&args, &side.config, engine)
            .unwrap_or_else(|(code, stderr)| panic!("backfill on {engine} failed with exit {code}:\n{stderr}"));
        serde_json::from_str(&out).unwrap()
    };
    let expected = backfill(embedded, "embedded");
    let report = backfill(on_cluster, &cluster.url);
    // Events after the last day are counted (not written) on the cluster.
    assert_eq!(report["streams"], expected["streams"], "backfill input counts");
    let (a, b) = (history(&on_cluster.warehouse).await, history(&embedded.warehouse).await);
    assert!(a.rows.len() > 4000, "{} rows", a.rows.len());
    assert_same(&a, &b, "backfill of 4 days: cluster vs embedded");

    let staged = on_cluster
        .warehouse
        .list_under(&on_cluster.warehouse.path(STAGING_DIR))
        .await
        .unwrap();
    assert!(staged.is_empty(), "staged files left behind: {staged:?}");
    for (i, log) in cluster.stop().iter().enumerate() {
        assert!(tasks_run(log) > 0, "executor {i} ran no task:\n{log}");
    }
}

/// The compared history: 300 customers over 45 days, with bad input.
async fn generate_history(landing: &Location) {
    let options = tagflow::generate::GenerateOptions {
        customers: 300,
        days: 45,
        seed: 11,
        end: end_day(),
        bad_input: true,
    };
    tagflow::generate::generate(landing, &options).await.expect("generate");
}

#[tokio::test(flavor = "multi_thread")]
async fn full_runs_and_backfills_on_a_cluster_equal_the_embedded_engine() {
    let dir = tempfile::tempdir().unwrap();
    let landing = dir.path().join("landing");
    generate_history(&location(&landing)).await;
    let (on_cluster, embedded) = (
        Side::local(dir.path(), &landing, "cluster"),
        Side::local(dir.path(), &landing, "embedded"),
    );
    let cluster = Cluster::start(&on_cluster.config, 2);
    cluster_equals_embedded(cluster, &location(&landing), &on_cluster, &embedded).await;
}

/// The same with the landing zone (with bad input) and both warehouses on the S3 server: the
/// scheduler and the executors read them with the config's `[storage.*]` options; each
/// query's stages have 3 partitions.
#[tokio::test(flavor = "multi_thread")]
async fn on_s3_full_runs_and_backfills_on_a_cluster_equal_the_embedded_engine() {
    let Some(s3) = s3_server("on_s3_full_runs_and_backfills_on_a_cluster_equal_the_embedded_engine") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let root = S3::unique("cluster");
    generate_history(&s3.location(&format!("{root}/landing"))).await;
    let body = s3.config(&root, &s3.endpoint, &s3.secret_access_key, "");
    let on_cluster = Side {
        config: config_file(dir.path().join("cluster.toml"), &body),
        warehouse: s3.location(&format!("{root}/warehouse")),
    };
    // The config file ends with its [engine] section.
    let with_partitions = std::fs::read_to_string(&on_cluster.config).unwrap() + "partitions = 3\n";
    std::fs::write(&on_cluster.config, with_partitions).unwrap();
    let embedded_body = body.replace(
        &s3.url(&format!("{root}/warehouse")),
        &s3.url(&format!("{root}/embedded")),
    );
    let embedded = Side {
        config: config_file(dir.path().join("embedded.toml"), &embedded_body),
        warehouse: s3.location(&format!("{root}/embedded")),
    };
    let cluster = Cluster::start(&on_cluster.config, 2);
    let landing = s3.location(&format!("{root}/landing"));
    cluster_equals_embedded(cluster, &landing, &on_cluster, &embedded).await;
}

#[test]
fn an_unreachable_cluster_fails_with_exit_5_and_names_its_url() {
    let dir = tempfile::tempdir().unwrap();
    let landing = dir.path().join("landing");
    std::fs::create_dir_all(&landing).unwrap();
    let side = Side::local(dir.path(), &landing, "warehouse");
    let url = format!("df://127.0.0.1:{}", free_port());
    let (code, stderr) = run_tagflow(&["run", "--full"], &side.config, &url).expect_err("no cluster there");
    assert_eq!(code, 5, "{stderr}");
    assert!(stderr.contains(&url), "{stderr}");
    assert!(!side.published(), "nothing is published");

    let (code, stderr) = run_tagflow(&["run", "--full"], &side.config, "http://x").expect_err("not df://");
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("df://host:port"), "{stderr}");

    // The config file ends with its [engine] section.
    let zero = dir.path().join("zero.toml");
    let body = std::fs::read_to_string(&side.config).unwrap();
    std::fs::write(&zero, format!("{body}partitions = 0\n")).unwrap();
    let (code, stderr) = run_tagflow(&["run", "--full"], &zero, &url).expect_err("no partition");
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("engine.partitions"), "{stderr}");
}

/// An executor killed (SIGKILL) while it runs a task of `run --full`: the run either still
/// publishes the exact table (Ballista runs the lost tasks again on the other executor) or
/// fails with exit 5, a message naming the cluster, and nothing published.
#[tokio::test(flavor = "multi_thread")]
async fn a_killed_executor_is_survived_or_fails_the_run_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let landing = dir.path().join("landing");
    generate_into(&landing, 1500, 60, 5).await;
    let (on_cluster, embedded) = (
        Side::local(dir.path(), &landing, "cluster"),
        Side::local(dir.path(), &landing, "embedded"),
    );
    let mut cluster = Cluster::start(&on_cluster.config, 2);
    let as_of = "2026-11-20T00:00:00Z";
    let mut run = tagflow()
        .args(["run", "--full", "--as-of", as_of, "--config"])
        .arg(&on_cluster.config)
        .env("TAGFLOW_ENGINE", &cluster.url)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("run.log")).unwrap())
        .spawn()
        .expect("start the run");
    // Kill the first executor as soon as it has a task.
    let started = std::time::Instant::now();
    while tasks_run(&cluster.log(0)) == 0 {
        assert!(
            run.try_wait().unwrap().is_none(),
            "the run ended before executor 0 got a task"
        );
        assert!(started.elapsed() < Duration::from_secs(120), "executor 0 got no task");
        std::thread::sleep(Duration::from_millis(20));
    }
    cluster.executors[0].kill().expect("kill the executor");
    let status = wait_within(&mut run, Duration::from_secs(300));
    let stderr = std::fs::read_to_string(dir.path().join("run.log")).unwrap();
    match status.code() {
        Some(0) => {
            run_tagflow(&["run", "--full", "--as-of", as_of], &embedded.config, "embedded").expect("embedded run");
            assert_same(
                &read_tags_at(&on_cluster.warehouse, None).await,
                &read_tags_at(&embedded.warehouse, None).await,
                "run --full with an executor killed: cluster vs embedded",
            );
            eprintln!("the run survived the killed executor");
        }
        code => {
            assert_eq!(code, Some(5), "{stderr}");
            assert!(stderr.contains(&cluster.url), "{stderr}");
            assert!(!on_cluster.published(), "nothing is published");
            eprintln!("the run failed cleanly: {stderr}");
        }
    }
}
