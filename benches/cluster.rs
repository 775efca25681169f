//! The cluster engine against the embedded one (issue 27): a full run of a generated history
//! (`TAGFLOW_BENCH_EVENTS`, default 10M events, over `TAGFLOW_BENCH_DAYS` days, default 365,
//! or `TAGFLOW_BENCH_CUSTOMERS` customers over those days) on the embedded engine, then on a Ballista
//! cluster of `tagflow cluster` processes on this machine with one executor (two slots) and
//! with two executors (one slot each). Prints per run: wall time, the time to read the
//! landing zone and build the state (in the driver, or on the cluster), the jobs stage, the
//! driver's peak RSS, each executor's peak RSS and the shuffle bytes the executors wrote.
//!
//! Every process is the real release binary; each one's peak RSS is its own (`wait4`).
//! Two cores cannot show a speed-up: the figures show the cluster's overhead and where the
//! memory sits.

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use chrono::NaiveDate;
use tagflow::generate::{generate, GenerateOptions};
use tagflow::storage::Location;

/// The generator writes about this many events per customer and day.
const EVENTS_PER_CUSTOMER_DAY: f64 = 0.25;
const AS_OF: &str = "2026-11-19T23:59:59Z";

fn main() {
    let events: usize = std::env::var("TAGFLOW_BENCH_EVENTS")
        .map(|n| n.parse().expect("TAGFLOW_BENCH_EVENTS is a number"))
        .unwrap_or(10_000_000);
    // Fewer days of history at the same customers: fewer events, the same tag rows.
    let days: u32 = std::env::var("TAGFLOW_BENCH_DAYS")
        .map(|n| n.parse().expect("TAGFLOW_BENCH_DAYS is a number"))
        .unwrap_or(365);
    let customers: usize = match std::env::var("TAGFLOW_BENCH_CUSTOMERS") {
        Ok(n) => n.parse().expect("TAGFLOW_BENCH_CUSTOMERS is a number"),
        Err(_) => (events as f64 / (days as f64 * EVENTS_PER_CUSTOMER_DAY)).ceil() as usize,
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let landing = dir.path().join("landing");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let started = Instant::now();
    let generated = runtime
        .block_on(generate(
            &Location::parse(&landing.to_string_lossy(), &Default::default()).unwrap(),
            &GenerateOptions {
                customers,
                days,
                seed: 1,
                end: NaiveDate::from_ymd_opt(2026, 11, 19).unwrap(),
                bad_input: false,
            },
        ))
        .expect("generate");
    let written: usize = generated.events.values().sum();
    println!(
        "\n== full run on the embedded engine and on a cluster: {customers} customers x {days} days -> {written} events (generated in {:.1}s)",
        started.elapsed().as_secs_f64()
    );
    // SAFETY: sync(2) takes no arguments; the generated files are written out before timing.
    unsafe { libc::sync() };

    println!(
        "| engine | wall | read and state (where) | jobs stage | driver peak RSS | executors' peak RSS | shuffle written |"
    );
    println!("|---|---|---|---|---|---|---|");
    let run = full_run(&landing, &dir.path().join("embedded"), "embedded");
    println!(
        "| embedded | {:.1} s | {:.1} s (driver) | {:.1} s | {:.0} MiB | | |",
        run.wall,
        run.stage("read") + run.stage("fold_state"),
        run.stage("jobs"),
        run.peak_mib
    );
    for (executors, slots) in [(1, 2), (2, 1)] {
        let warehouse = dir.path().join(format!("cluster-{executors}"));
        let cluster = Cluster::start(dir.path(), executors, slots);
        let run = full_run(&landing, &warehouse, &cluster.url);
        let (executor_peaks, shuffle) = cluster.stop();
        let peaks: Vec<String> = executor_peaks.iter().map(|p| format!("{p:.0}")).collect();
        println!(
            "| {executors} executor(s) x {slots} slot(s) | {:.1} s | {:.1} s (cluster) | {:.1} s | {:.0} MiB | {} MiB | {:.1} MiB |",
            run.wall,
            run.stage("rebuild_state"),
            run.stage("jobs"),
            run.peak_mib,
            peaks.join(" + "),
            shuffle as f64 / 1_048_576.0
        );
    }
}

/// One `tagflow run --full` and what it measured.
struct Run {
    wall: f64,
    peak_mib: f64,
    report: serde_json::Value,
}

impl Run {
    /// A stage's seconds, from the run report.
    fn stage(&self, name: &str) -> f64 {
        self.report["stages_ms"][name].as_f64().unwrap_or(f64::NAN) / 1000.0
    }
}

// The child is reaped by `wait4` in `wait_measured` (which also reads its own peak RSS).
#[allow(clippy::zombie_processes)]
fn full_run(landing: &Path, warehouse: &Path, engine: &str) -> Run {
    let report = warehouse.with_extension("json");
    let started = Instant::now();
    let child = tagflow()
        .args(["run", "--full", "--json", "--as-of", AS_OF, "--landing"])
        .arg(landing)
        .arg("--warehouse")
        .arg(warehouse)
        .env("TAGFLOW_ENGINE", engine)
        .stdout(std::fs::File::create(&report).unwrap())
        .spawn()
        .expect("run tagflow");
    let (status, peak_mib) = wait_measured(&child);
    assert!(status == 0, "tagflow run on {engine} exited {status}");
    Run {
        wall: started.elapsed().as_secs_f64(),
        peak_mib,
        report: serde_json::from_slice(&std::fs::read(&report).unwrap()).expect("JSON report"),
    }
}

/// A scheduler and executors on this machine, each with a work folder for its shuffle files.
struct Cluster {
    scheduler: Child,
    executors: Vec<(Child, PathBuf)>,
    url: String,
}

impl Cluster {
    fn start(dir: &Path, executors: usize, slots: usize) -> Cluster {
        let mut scheduler = tagflow()
            .args(["cluster", "scheduler", "--listen", "127.0.0.1:0"])
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the scheduler");
        let line = BufReader::new(scheduler.stdout.take().unwrap())
            .lines()
            .map_while(Result::ok)
            .find_map(|l| l.strip_prefix("listening on df://").map(str::to_string))
            .expect("the scheduler's address");
        let executors = (0..executors)
            .map(|i| {
                let work = dir.join(format!("executor-{}-{i}", uuid::Uuid::new_v4().simple()));
                std::fs::create_dir_all(&work).unwrap();
                let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
                let child = tagflow()
                    .args([
                        "cluster",
                        "executor",
                        "--scheduler",
                        &line,
                        "--slots",
                        &slots.to_string(),
                    ])
                    .arg("--listen")
                    .arg(format!("127.0.0.1:{port}"))
                    .arg("--work-dir")
                    .arg(&work)
                    .stdout(Stdio::null())
                    .spawn()
                    .expect("start an executor");
                (child, work)
            })
            .collect();
        std::thread::sleep(Duration::from_secs(1));
        Cluster {
            scheduler,
            executors,
            url: format!("df://{line}"),
        }
    }

    /// Stop the processes: each executor's peak RSS (MiB), and the bytes of shuffle files
    /// they wrote.
    fn stop(mut self) -> (Vec<f64>, u64) {
        let mut peaks = Vec::new();
        let mut shuffle = 0;
        for (executor, work) in &self.executors {
            shuffle += bytes_under(work);
            // SAFETY: kill(2) of a child this bench spawned and has not reaped.
            unsafe { libc::kill(executor.id() as i32, libc::SIGTERM) };
            peaks.push(wait_measured(executor).1);
        }
        let _ = self.scheduler.kill();
        let _ = self.scheduler.wait();
        (peaks, shuffle)
    }
}

/// Wait for `child`: its exit status and its own peak RSS in MiB.
fn wait_measured(child: &Child) -> (i32, f64) {
    let mut status = 0;
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: wait4 on a child this bench spawned; it writes into values we own.
    let pid = unsafe { libc::wait4(child.id() as i32, &mut status, 0, &mut usage) };
    assert_eq!(pid, child.id() as i32, "wait4");
    let code = if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else {
        -1
    };
    (code, usage.ru_maxrss as f64 / 1024.0)
}

/// Bytes of the files under `dir`.
fn bytes_under(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.file_type().map(|t| t.is_dir()) {
            Ok(true) => bytes_under(&e.path()),
            _ => e.metadata().map(|m| m.len()).unwrap_or(0),
        })
        .sum()
}

fn tagflow() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_tagflow"));
    command
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("TAGFLOW_LOG", "warn");
    command
}
