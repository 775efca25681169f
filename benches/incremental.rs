//! Incremental-refresh benchmark, on generated data and local files:
//!
//! 1. a full run on a 10M-event history (365 days), twice (the faster is compared with);
//! 2. an incremental run of 1M new events (the following days, whole days until a tenth of
//!    the history) on top of it, twice on local files (the second on a copy of the same
//!    warehouse; the faster is compared with), and a full run over the same 11M events;
//! 3. a `tagflow follow --interval 1s` session fed one 50k-event file per second for a
//!    minute: freshness (file appears → publish that includes it) p50/p95/max.
//!
//! Every run is the real binary in a child process; its peak memory is that child's max RSS.
//! `cargo bench --bench incremental`; `TAGFLOW_BENCH_EVENTS=N` scales the history (the
//! increment is a tenth of it), `TAGFLOW_BENCH_FOLLOW_SECS` the follow session.
//!
//! `TAGFLOW_BENCH_S3=1` puts landing and warehouse on the S3 server named by the
//! `TAGFLOW_TEST_S3_*` variables (`.ci/seaweedfs start DIR && source DIR/env`) instead of
//! local files: the same full and incremental runs (the follow session stays local).

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{ArrayRef, Float64Array, StringArray, TimestampMicrosecondArray};
use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use arrow::record_batch::RecordBatch;
use chrono::{Days, NaiveDate, Utc};
use tagflow::generate::{generate, GenerateOptions};
use tagflow::storage::Location;

#[path = "../tests/it/s3_server.rs"]
mod s3_server;
use s3_server::S3;

const DAYS: u32 = 365;
/// The generator writes about this many events per customer and day (measured: 9.82M
/// events for 109,590 customers over 365 days), so the history is close to the 10M events
/// asked for.
const EVENTS_PER_CUSTOMER_DAY: f64 = 0.2455;
const FOLLOW_FILE_EVENTS: usize = 50_000;

fn main() {
    let history: usize = std::env::var("TAGFLOW_BENCH_EVENTS")
        .map(|n| n.parse().expect("TAGFLOW_BENCH_EVENTS is a number"))
        .unwrap_or(10_000_000);
    let follow_secs: u64 = std::env::var("TAGFLOW_BENCH_FOLLOW_SECS")
        .map(|n| n.parse().expect("TAGFLOW_BENCH_FOLLOW_SECS is a number"))
        .unwrap_or(60);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().expect("tempdir");
    let local_landing = dir.path().join("landing");
    let staged = dir.path().join("increment");
    let target = Target::new(dir.path());
    let customers = (history as f64 / (DAYS as f64 * EVENTS_PER_CUSTOMER_DAY)).ceil() as usize;
    let end = NaiveDate::from_ymd_opt(2026, 10, 1).unwrap();
    let generated_days = (DAYS / 10).max(1) + 1;
    let generated_end = end.checked_add_days(Days::new(generated_days as u64)).unwrap();

    let started = Instant::now();
    let (history_events, history_files) = runtime.block_on(generate_into(&local_landing, customers, DAYS, 1, end));
    runtime.block_on(generate_into(&staged, customers, generated_days, 2, generated_end));
    // The generator spreads each customer's activity over the days it is given, so a short
    // range is denser than the history: keep whole days until a tenth of the history.
    let (increment_end, increment_events, increment_files) = keep_first_days(&staged, history_events / 10);
    // Write the generated files out now, so that no run pays for their writeback.
    unsafe { libc::sync() };
    let increment_days = (increment_end - end).num_days();
    println!(
        "\n== incremental refresh: {customers} customers; history {history_events} events in {history_files} files \
         ({DAYS} days to {end}); increment {increment_events} events in {increment_files} files ({increment_days} days \
         to {increment_end}); generated in {:.1}s",
        started.elapsed().as_secs_f64()
    );

    if let Target::S3 { landing, .. } = &target {
        let started = Instant::now();
        runtime.block_on(upload_tree(&local_landing, landing));
        println!(
            "uploaded the history to {} in {:.1}s",
            landing.url,
            started.elapsed().as_secs_f64()
        );
    }
    let as_of = |day: NaiveDate| format!("{day}T23:59:59Z");
    let full = target.run("warehouse", &as_of(end), &[]);
    full.print("full run, history");
    // The same full run again, into a scratch warehouse: on this VM the first full run
    // after generating is seconds slower than the same run repeated (11.4 s against 7.8 s,
    // the difference in reading; its system time varies by seconds with the machine's
    // memory and page cache state). The faster of the two is the one compared with.
    let full_again = target.run("warehouse-again", &as_of(end), &[]);
    full_again.print("full run, history, again");
    let full_best = full.wall.min(full_again.wall);

    match &target {
        Target::Local { .. } => move_tree(&staged, &local_landing),
        Target::S3 { landing, .. } => runtime.block_on(upload_tree(&staged, landing)),
    }
    // `--force`: the synthetic increment moves lifecycle and risk segments by far more than
    // the default drift gates allow (no customer is new in it, every one is active); the
    // gates are still evaluated and timed.
    // On local files the incremental run runs twice as well, the second time on a copy of
    // the same warehouse taken before the first, and the faster is compared with.
    if let Target::Local { root } = &target {
        copy_tree(&root.join("warehouse"), &root.join("warehouse-copy"));
    }
    let incremental = target.run("warehouse", &as_of(increment_end), &["--force"]);
    incremental.print("incremental run, increment on history");
    assert_eq!(incremental.report["mode"], "incremental");
    let incremental_best = match &target {
        Target::Local { .. } => {
            let again = target.run("warehouse-copy", &as_of(increment_end), &["--force"]);
            again.print("incremental run, again (on a copy of the history's warehouse)");
            assert_eq!(again.report["mode"], "incremental");
            incremental.wall.min(again.wall)
        }
        Target::S3 { .. } => incremental.wall,
    };

    let full_after = target.run("warehouse-full", &as_of(increment_end), &["--full"]);
    full_after.print("full run, history + increment");
    println!(
        "incremental / full   {:.1}% of the history's full run (the faster incremental run, {:.2} s, against the \
         faster full run, {:.2} s), {:.1}% of the full run over the same events",
        100.0 * incremental_best / full_best,
        incremental_best,
        full_best,
        100.0 * incremental_best / full_after.wall,
    );

    match &target {
        Target::Local { root } => follow(
            &local_landing,
            &root.join("warehouse"),
            customers,
            Duration::from_secs(follow_secs),
        ),
        Target::S3 { .. } => println!("\n(the follow session runs on local files only)"),
    }
}

/// Where the runs read and publish: local folders, or an S3 server.
enum Target {
    Local {
        root: std::path::PathBuf,
    },
    S3 {
        /// A `tagflow.toml` with the S3 options of both locations.
        config: std::path::PathBuf,
        landing: Location,
        /// `s3://bucket/prefix`: warehouses go under it.
        root: String,
    },
}

impl Target {
    fn new(dir: &Path) -> Target {
        if std::env::var("TAGFLOW_BENCH_S3").is_err() {
            return Target::Local {
                root: dir.to_path_buf(),
            };
        }
        let s3 = S3::from_env().expect("TAGFLOW_BENCH_S3 needs the TAGFLOW_TEST_S3_* variables (see README)");
        let prefix = S3::unique("bench");
        let config = dir.join("tagflow.toml");
        std::fs::write(&config, s3.config(&prefix, &s3.endpoint, &s3.secret_access_key, "")).expect("write config");
        println!("\n(on S3: {}, endpoint {})", s3.url(&prefix), s3.endpoint);
        Target::S3 {
            config,
            landing: s3.location(&format!("{prefix}/landing")),
            root: s3.url(&prefix),
        }
    }

    /// `tagflow run` against this target's landing and the warehouse `name`.
    fn run(&self, name: &str, as_of: &str, extra: &[&str]) -> Measured {
        match self {
            Target::Local { root } => {
                let (landing, warehouse) = (root.join("landing"), root.join(name));
                run(
                    &landing.to_string_lossy(),
                    &warehouse.to_string_lossy(),
                    None,
                    as_of,
                    extra,
                )
            }
            Target::S3 { config, landing, root } => run(
                landing.url.as_str(),
                &format!("{root}/{name}"),
                Some(config),
                as_of,
                extra,
            ),
        }
    }
}

/// Upload every file under `from` to the same relative path under `to`, 16 at a time.
async fn upload_tree(from: &Path, to: &Location) {
    use futures::StreamExt;
    use object_store::ObjectStoreExt;
    let mut files = Vec::new();
    let mut stack = vec![from.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                files.push(path);
            }
        }
    }
    futures::stream::iter(files)
        .map(|path| async move {
            let relative = path.strip_prefix(from).unwrap().to_string_lossy().replace('\\', "/");
            let bytes = std::fs::read(&path).unwrap();
            to.store.put(&to.path(&relative), bytes.into()).await.expect("upload");
        })
        .buffer_unordered(16)
        .collect::<Vec<()>>()
        .await;
}

struct Measured {
    wall: f64,
    peak_rss_mib: f64,
    report: serde_json::Value,
}

impl Measured {
    fn print(&self, title: &str) {
        let r = &self.report;
        let files: u64 = r["streams"]
            .as_object()
            .unwrap()
            .values()
            .map(|s| s["files"].as_u64().unwrap())
            .sum();
        let events: u64 = r["streams"]
            .as_object()
            .unwrap()
            .values()
            .map(|s| s["events"].as_u64().unwrap())
            .sum();
        let stages: Vec<String> = r["stages_ms"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| format!("{k} {:.2}s", v.as_f64().unwrap() / 1000.0))
            .collect();
        let state_rows: u64 = r["state"]["tables"]
            .as_object()
            .unwrap()
            .values()
            .map(|t| t["rows"].as_u64().unwrap())
            .sum();
        println!("\n-- {title} ({} mode)", r["mode"].as_str().unwrap());
        println!("files read         {files}");
        println!("events counted     {events}");
        println!("wall time          {:.2} s (process, including start-up)", self.wall);
        println!("throughput         {:.0} events/s", events as f64 / self.wall);
        println!("stages             {}", stages.join(", "));
        println!(
            "state rows         {state_rows} in {} tables",
            r["state"]["tables"].as_object().unwrap().len()
        );
        println!("seen ids loaded    {}", r["state"]["seen_ids_loaded"]);
        println!("rows published     {}", r["published"]["rows"]);
        println!("peak memory (RSS)  {:.0} MiB", self.peak_rss_mib);
    }
}

async fn generate_into(dir: &Path, customers: usize, days: u32, seed: u64, end: NaiveDate) -> (usize, usize) {
    let location = Location::parse(&dir.to_string_lossy(), &Default::default()).unwrap();
    let options = GenerateOptions {
        customers,
        days,
        seed,
        end,
        bad_input: false,
    };
    let summary = generate(&location, &options).await.expect("generate");
    (summary.events.values().sum(), summary.files.values().sum())
}

fn tagflow() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tagflow"));
    cmd.current_dir(env!("CARGO_MANIFEST_DIR"))
        .env_remove("TAGFLOW_CONFIG")
        .env("TAGFLOW_LOG", "warn");
    cmd
}

/// `tagflow run --json` as a child; wall time and the child's own peak RSS (wait4).
fn run(landing: &str, warehouse: &str, config: Option<&Path>, as_of: &str, extra: &[&str]) -> Measured {
    let started = Instant::now();
    let mut command = tagflow();
    if let Some(config) = config {
        command.arg("--config").arg(config);
    }
    #[allow(clippy::zombie_processes)] // reaped by wait4 in wait_with_rusage
    let mut child = command
        .args([
            "run",
            "--json",
            "--as-of",
            as_of,
            "--landing",
            landing,
            "--warehouse",
            warehouse,
        ])
        .args(extra)
        .stdout(Stdio::piped())
        .spawn()
        .expect("start tagflow");
    let mut stdout = String::new();
    child.stdout.take().unwrap().read_to_string(&mut stdout).unwrap();
    let (status, peak_rss_mib) = wait_with_rusage(child.id());
    let wall = started.elapsed().as_secs_f64();
    assert!(status == 0, "tagflow run failed with status {status}");
    Measured {
        wall,
        peak_rss_mib,
        report: serde_json::from_str(&stdout).expect("JSON report"),
    }
}

/// Reap child `pid`; its exit status and peak RSS in MiB.
fn wait_with_rusage(pid: u32) -> (i32, f64) {
    let mut status = 0;
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: wait4 writes only into the two values we own.
    let rc = unsafe { libc::wait4(pid as i32, &mut status, 0, &mut usage) };
    assert_eq!(rc, pid as i32, "wait4");
    (status, usage.ru_maxrss as f64 / 1024.0)
}

/// Delete the `dt=` folders of `landing` (all streams) after the first days whose events
/// add up to at least `events`; the last day kept, and the events and files kept.
fn keep_first_days(landing: &Path, events: usize) -> (NaiveDate, usize, usize) {
    use parquet::file::reader::{FileReader, SerializedFileReader};
    let mut days: std::collections::BTreeMap<NaiveDate, Vec<std::path::PathBuf>> = Default::default();
    for stream in std::fs::read_dir(landing).unwrap() {
        for day in std::fs::read_dir(stream.unwrap().path()).unwrap() {
            let day = day.unwrap().path();
            let name = day.file_name().unwrap().to_string_lossy().to_string();
            let date = NaiveDate::parse_from_str(name.trim_start_matches("dt="), "%Y-%m-%d").unwrap();
            days.entry(date).or_default().push(day);
        }
    }
    let (mut kept_events, mut kept_files, mut last) = (0, 0, None);
    for (date, folders) in days {
        if kept_events >= events {
            folders.iter().for_each(|f| std::fs::remove_dir_all(f).unwrap());
            continue;
        }
        for file in folders.iter().flat_map(|f| std::fs::read_dir(f).unwrap()) {
            let file = std::fs::File::open(file.unwrap().path()).unwrap();
            let rows = SerializedFileReader::new(file).map_or(0, |r| r.metadata().file_metadata().num_rows());
            kept_events += rows as usize;
            kept_files += 1;
        }
        last = Some(date);
    }
    (last.expect("an increment"), kept_events, kept_files)
}

/// Move every file under `from` to the same relative path under `to`.
fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let path = entry.unwrap().path();
        let target = to.join(path.file_name().unwrap());
        match path.is_dir() {
            true => copy_tree(&path, &target),
            false => {
                std::fs::copy(&path, &target).unwrap();
            }
        }
    }
}

fn move_tree(from: &Path, to: &Path) {
    for entry in std::fs::read_dir(from).unwrap() {
        let path = entry.unwrap().path();
        let target = to.join(path.file_name().unwrap());
        if path.is_dir() {
            std::fs::create_dir_all(&target).unwrap();
            move_tree(&path, &target);
        } else {
            std::fs::rename(&path, &target).unwrap();
        }
    }
}

/// A `follow` session fed one file of 50k product views per second; freshness per file.
fn follow(landing: &Path, warehouse: &Path, customers: usize, length: Duration) {
    let files = length.as_secs() as usize;
    let folder = landing.join("clicks/follow");
    std::fs::create_dir_all(&folder).unwrap();
    // `--force`: the history ends weeks before today and the feed (product views of random
    // customers) makes nearly everyone "interested" within seconds, so segments move far
    // more than the drift gates allow; the gates are still evaluated in every batch.
    #[allow(clippy::zombie_processes)] // reaped by wait4 in wait_with_rusage
    let mut child = tagflow()
        .args(["follow", "--json", "--force", "--interval", "1s", "--landing"])
        .arg(landing)
        .arg("--warehouse")
        .arg(warehouse)
        .stdout(Stdio::piped())
        .spawn()
        .expect("start tagflow follow");
    let stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        std::io::BufReader::new(stdout).read_to_string(&mut text).unwrap();
        text
    });
    std::thread::sleep(Duration::from_secs(2)); // the first batch catches up
    let started = Instant::now();
    for i in 0..files {
        let bytes = click_file(i, customers);
        // Written under a hidden name, then renamed: the file appears whole, its mtime now.
        let hidden = folder.join(format!(".part-{i:05}.tmp"));
        std::fs::write(&hidden, &bytes).unwrap();
        std::fs::rename(&hidden, folder.join(format!("part-{i:05}.parquet"))).unwrap();
        let next = started + Duration::from_secs(i as u64 + 1);
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
    }
    std::thread::sleep(Duration::from_secs(6)); // let the last files publish
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    let text = reader.join().unwrap();
    let (status, peak_rss_mib) = wait_with_rusage(child.id());
    assert_eq!(status, 0, "follow exits 0 on SIGTERM");

    // One file per batch (the interval matches the feed): a batch's max lag is its file's.
    let mut lags = Vec::new();
    let mut durations = Vec::new();
    let mut stages = std::collections::BTreeMap::new();
    for line in text.lines() {
        let report: serde_json::Value = serde_json::from_str(line).expect("JSON line");
        let Some(freshness) = report.get("freshness") else {
            continue;
        };
        let files = freshness["files"].as_u64().unwrap() as usize;
        lags.extend(std::iter::repeat_n(freshness["max_ms"].as_u64().unwrap(), files));
        durations.push(report["duration_ms"].as_u64().unwrap());
        for (stage, ms) in report["stages_ms"].as_object().unwrap() {
            stages
                .entry(stage.clone())
                .or_insert_with(Vec::new)
                .push(ms.as_u64().unwrap());
        }
    }
    lags.sort_unstable();
    durations.sort_unstable();
    let pct = |v: &[u64], p: usize| v[(v.len() * p).div_ceil(100).max(1) - 1];
    println!("\n-- follow: {files} files of {FOLLOW_FILE_EVENTS} events, one per second, interval 1s");
    println!(
        "files published    {} (each file counted at its batch's max lag)",
        lags.len()
    );
    println!(
        "freshness          p50 {} ms, p95 {} ms, max {} ms",
        pct(&lags, 50),
        pct(&lags, 95),
        lags.last().unwrap()
    );
    println!(
        "batch duration     p50 {} ms, p95 {} ms, max {} ms ({} batches)",
        pct(&durations, 50),
        pct(&durations, 95),
        durations.last().unwrap(),
        durations.len()
    );
    let stages: Vec<String> = stages
        .iter_mut()
        .map(|(stage, ms)| {
            ms.sort_unstable();
            format!("{stage} {}", pct(ms, 50))
        })
        .collect();
    println!("stages, p50 (ms)   {}", stages.join(", "));
    println!("peak memory (RSS)  {peak_rss_mib:.0} MiB");
}

/// 50k product views of random customers, in the last minute.
fn click_file(index: usize, customers: usize) -> Vec<u8> {
    let now = Utc::now().timestamp_micros();
    let rows = FOLLOW_FILE_EVENTS;
    let mut state = (index as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let mut next = move || {
        // xorshift64*: cheap, deterministic per file
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        state.wrapping_mul(0x2545_F491_4F6C_DD1D)
    };
    let picks: Vec<u64> = (0..rows).map(|_| next()).collect();
    let customer = |p: u64| p as usize % customers + 1;
    let column = |f: &dyn Fn(usize, u64) -> String| -> ArrayRef {
        Arc::new(StringArray::from_iter_values(
            picks.iter().enumerate().map(|(i, p)| f(i, *p)),
        ))
    };
    let schema = Arc::new(Schema::new(vec![
        Field::new("event_id", DataType::Utf8, false),
        Field::new("customer_id", DataType::Utf8, false),
        Field::new(
            "event_time",
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            false,
        ),
        Field::new("page_type", DataType::Utf8, false),
        Field::new("category", DataType::Utf8, true),
        Field::new("price", DataType::Float64, true),
        Field::new("device_id", DataType::Utf8, true),
    ]));
    let columns: Vec<ArrayRef> = vec![
        column(&|i, _| format!("follow-{index}-{i}")),
        column(&|_, p| format!("cust-{:06}", customer(p))),
        Arc::new(
            TimestampMicrosecondArray::from_iter_values(picks.iter().map(|p| now - (p % 60_000_000) as i64))
                .with_timezone("UTC"),
        ),
        column(&|_, _| "product".to_string()),
        // Each customer circles three of 40 categories and uses one or two own devices, as
        // the generator's customers do (a random device per event would make every
        // customer share devices with everyone).
        column(&|_, p| format!("category-{}", (customer(p) * 7 + (p >> 20) as usize % 3) % 40)),
        Arc::new(Float64Array::from_iter_values(
            picks.iter().map(|p| ((p >> 8) % 50_000) as f64 / 100.0),
        )),
        column(&|_, p| format!("device-{}-{}", customer(p), (p >> 32) % 2)),
    ];
    let batch = RecordBatch::try_new(schema.clone(), columns).unwrap();
    let mut bytes = Vec::new();
    let mut writer = parquet::arrow::ArrowWriter::try_new(&mut bytes, schema, None).unwrap();
    writer.write(&batch).unwrap();
    writer.close().unwrap();
    bytes
}
