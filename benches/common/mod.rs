//! What the benchmarks share: the real binary run as a child (wall time, peak RSS from
//! wait4, its JSON report), generated landing data, and a `follow` session fed one file of
//! 50k product views per second.

#![allow(dead_code)] // each bench uses part of it

#[path = "../../tests/it/http.rs"]
mod http;

use std::io::{BufRead, Read};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{ArrayRef, Float64Array, StringArray, TimestampMicrosecondArray};
use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use arrow::record_batch::RecordBatch;
use chrono::{NaiveDate, Utc};
use tagflow::generate::{generate, GenerateOptions};
use tagflow::storage::Location;

/// The length of a `follow` session, seconds: `TAGFLOW_BENCH_FOLLOW_SECS`, default 60.
pub fn follow_secs() -> u64 {
    std::env::var("TAGFLOW_BENCH_FOLLOW_SECS")
        .map(|n| n.parse().expect("TAGFLOW_BENCH_FOLLOW_SECS is a number"))
        .unwrap_or(60)
}

/// Files landed before a `follow` session's measured feed: `TAGFLOW_BENCH_FOLLOW_WARM`,
/// default 0. They land [`WARM_ROUND`] at a time, each round once follow has published the
/// one before, and are left out of the figures: the minute is then measured on a day whose
/// customers already have rows for today (each touched customer's rows, which a batch reads,
/// grow through a day until its hours, categories and devices are all there).
pub fn follow_warm_files() -> usize {
    std::env::var("TAGFLOW_BENCH_FOLLOW_WARM")
        .map(|n| n.parse().expect("TAGFLOW_BENCH_FOLLOW_WARM is a number"))
        .unwrap_or(0)
}

/// Warm-up files landed at once.
const WARM_ROUND: usize = 20;

/// Seconds between two files of a `follow` session: `TAGFLOW_BENCH_FOLLOW_EVERY`, default 1
/// (one file a second). At 10, every batch holds one file: a file's cost measured apart.
pub fn follow_every() -> u64 {
    std::env::var("TAGFLOW_BENCH_FOLLOW_EVERY")
        .map(|n| n.parse().expect("TAGFLOW_BENCH_FOLLOW_EVERY is a number"))
        .unwrap_or(1)
}

/// The customer counts a bench measures: `TAGFLOW_BENCH_SIZES`, default 100,000 and 1M.
pub fn sizes() -> Vec<usize> {
    std::env::var("TAGFLOW_BENCH_SIZES")
        .unwrap_or_else(|_| "100000,1000000".into())
        .split(',')
        .map(|n| {
            n.trim()
                .parse()
                .expect("TAGFLOW_BENCH_SIZES: customers, comma-separated")
        })
        .collect()
}

/// A multi-threaded Tokio runtime for the bench's own async work (generating data).
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Events in each file of a `follow` session.
pub const FOLLOW_FILE_EVENTS: usize = 50_000;

pub struct Measured {
    pub wall: f64,
    pub peak_rss_mib: f64,
    pub report: serde_json::Value,
}

impl Measured {
    pub fn print(&self, title: &str) {
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

pub async fn generate_into(dir: &Path, customers: usize, days: u32, seed: u64, end: NaiveDate) -> (usize, usize) {
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

pub fn tagflow() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tagflow"));
    cmd.current_dir(env!("CARGO_MANIFEST_DIR"))
        .env_remove("TAGFLOW_CONFIG")
        // `TAGFLOW_BENCH_LOG=tagflow::jobs=debug` to see what a run does, in its stderr.
        .env(
            "TAGFLOW_LOG",
            std::env::var("TAGFLOW_BENCH_LOG").unwrap_or_else(|_| "warn".into()),
        );
    cmd
}

/// `tagflow run --json` as a child; wall time and the child's own peak RSS (wait4).
pub fn run(landing: &str, warehouse: &str, config: Option<&Path>, as_of: &str, extra: &[&str]) -> Measured {
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
pub fn wait_with_rusage(pid: u32) -> (i32, f64) {
    let mut status = 0;
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: wait4 writes only into the two values we own.
    let rc = unsafe { libc::wait4(pid as i32, &mut status, 0, &mut usage) };
    assert_eq!(rc, pid as i32, "wait4");
    (status, usage.ru_maxrss as f64 / 1024.0)
}

/// What a `follow` session measured.
pub struct FollowFigures {
    pub files: usize,
    /// The session's first batch (everyone evaluated), before the feed started (ms).
    pub first_batch_ms: u64,
    /// Its stages (ms).
    pub first_stages: String,
    /// Per file: from its appearance to the publish that includes it (ms), sorted.
    pub lags_ms: Vec<u64>,
    /// Per published batch that read files (ms), sorted.
    pub batch_ms: Vec<u64>,
    /// Per stage: p50 over those batches (ms).
    pub stages_p50_ms: std::collections::BTreeMap<String, u64>,
    /// Per batch: the customers `lifecycle` (scope "customer") was evaluated for, sorted
    /// (a batch that evaluated everyone counts every customer of the report).
    pub evaluated: Vec<u64>,
    pub peak_rss_mib: f64,
    /// Per file: from its appearance until the lookup API answers for its probe customer
    /// (ms), sorted.
    pub lookup_lags_ms: Vec<u64>,
    /// Files landed before the measured feed ([`follow_warm_files`]).
    pub warm_files: usize,
    /// `tagflow serve`'s peak RSS (MiB).
    pub serve_peak_rss_mib: f64,
    /// Publishes that merged into `customer_tags` (the others stayed live).
    pub merges: usize,
    /// Publishes that started a merge in the background.
    pub background_merges: usize,
    /// Per tag and measure: p50 of its duration over the batches (ms).
    pub jobs_p50_ms: std::collections::BTreeMap<String, u64>,
}

/// The `p`th percentile (nearest rank) of sorted `values`.
pub fn pct(values: &[u64], p: usize) -> u64 {
    values[(values.len() * p).div_ceil(100).max(1) - 1]
}

/// Follow's idle wait between batches in the follow benches.
pub const FOLLOW_INTERVAL: &str = "250ms";
/// Serve's reload interval in the follow benches.
pub const SERVE_RELOAD: &str = "100ms";

/// A `tagflow follow` session (the shipped gates on) fed one file of 50k product views of
/// random customers every [`follow_every`] seconds for `length`, with `tagflow serve` beside it: each file also
/// holds one view by a new probe customer, and a prober asks the lookup API for it until it
/// answers (landing → lookup-API freshness).
pub fn follow(landing: &Path, warehouse: &Path, customers: usize, length: Duration) -> FollowFigures {
    let every = follow_every();
    let files = (length.as_secs() / every) as usize;
    let folder = landing.join("clicks/follow");
    std::fs::create_dir_all(&folder).unwrap();
    #[allow(clippy::zombie_processes)] // reaped by wait4 in wait_with_rusage
    let mut child = tagflow()
        .args(["follow", "--json", "--interval", FOLLOW_INTERVAL, "--landing"])
        .arg(landing)
        .arg("--warehouse")
        .arg(warehouse)
        .stdout(Stdio::piped())
        .spawn()
        .expect("start tagflow follow");
    // Follow's report lines, as they come: the first one is awaited before the feed starts.
    let stdout = child.stdout.take().unwrap();
    let (line_sender, lines) = std::sync::mpsc::channel::<String>();
    let reader = std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            if line_sender.send(line.unwrap()).is_err() {
                break;
            }
        }
    });
    let config = warehouse.with_extension("serve.toml");
    std::fs::write(&config, format!("[serve]\nreload_interval = \"{SERVE_RELOAD}\"\n")).unwrap();
    #[allow(clippy::zombie_processes)] // reaped by wait4 in wait_with_rusage
    let mut server = tagflow()
        .args(["serve", "--listen", "127.0.0.1:0", "--config"])
        .arg(&config)
        .arg("--warehouse")
        .arg(warehouse)
        .stdout(Stdio::piped())
        .spawn()
        .expect("start tagflow serve");
    let addr = http::listening_address(&mut server);
    let (probes, probed) = std::sync::mpsc::channel::<(usize, Instant)>();
    let prober = std::thread::spawn(move || probe_lookups(addr, probed));
    // The session's first batch evaluates everyone (a session starts with no evaluation to
    // reuse, and its day is new after the history's run): it is measured on its own, and
    // the feed starts once it has published.
    let first = lines
        .recv_timeout(Duration::from_secs(3600))
        .expect("follow's first batch reports within an hour");
    let first: serde_json::Value = serde_json::from_str(&first).expect("JSON line");
    let first_batch_ms = first["duration_ms"].as_u64().unwrap_or(0);
    let first_stages: Vec<String> = first["stages_ms"]
        .as_object()
        .map(|stages| stages.iter().map(|(s, ms)| format!("{s} {ms}")).collect())
        .unwrap_or_default();
    let warm = warm_up(&folder, customers, &lines);
    let started = Instant::now();
    for i in 0..files {
        land_file(&folder, warm.files + i, customers);
        probes.send((warm.files + i, Instant::now())).unwrap();
        let next = started + Duration::from_secs((i as u64 + 1) * every);
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
    }
    drop(probes);
    let mut lookup_lags_ms = prober.join().unwrap();
    lookup_lags_ms.sort_unstable();
    std::thread::sleep(Duration::from_secs(2)); // let the last batch's report out
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
        libc::kill(server.id() as i32, libc::SIGTERM);
    }
    reader.join().unwrap();
    let text: Vec<String> = lines.into_iter().collect();
    // `TAGFLOW_BENCH_REPORTS=<file>`: follow's run reports (one JSON line per batch), kept.
    if let Some(path) = std::env::var_os("TAGFLOW_BENCH_REPORTS") {
        std::fs::write(path, [warm.reports.as_slice(), text.as_slice()].concat().join("\n"))
            .expect("writing the run reports");
    }
    let (status, peak_rss_mib) = wait_with_rusage(child.id());
    assert_eq!(status, 0, "follow exits 0 on SIGTERM");
    let (_, serve_peak_rss_mib) = wait_with_rusage(server.id());

    let mut figures = FollowFigures {
        files,
        warm_files: warm.files,
        first_batch_ms,
        first_stages: first_stages.join(", "),
        lags_ms: Vec::new(),
        batch_ms: Vec::new(),
        stages_p50_ms: Default::default(),
        evaluated: Vec::new(),
        peak_rss_mib,
        lookup_lags_ms,
        serve_peak_rss_mib,
        merges: 0,
        background_merges: 0,
        jobs_p50_ms: Default::default(),
    };
    let mut jobs = std::collections::BTreeMap::new();
    let mut stages = std::collections::BTreeMap::new();
    for line in &text {
        let report: serde_json::Value = serde_json::from_str(line).expect("JSON line");
        let Some(freshness) = report.get("freshness") else {
            continue;
        };
        // A batch's files are counted at its max lag.
        let files = freshness["files"].as_u64().unwrap() as usize;
        figures
            .lags_ms
            .extend(std::iter::repeat_n(freshness["max_ms"].as_u64().unwrap(), files));
        figures.batch_ms.push(report["duration_ms"].as_u64().unwrap());
        figures.merges += usize::from(report["published"]["merged"].as_bool().unwrap_or(true));
        let started = &report["published"]["merge_started"];
        figures.background_merges += usize::from(started.as_bool().unwrap_or(false));
        for (stage, ms) in report["stages_ms"].as_object().unwrap() {
            stages
                .entry(stage.clone())
                .or_insert_with(Vec::new)
                .push(ms.as_u64().unwrap());
        }
        for job in report["tags"]
            .as_array()
            .unwrap()
            .iter()
            .chain(report["measures"].as_array().unwrap())
        {
            let name = job["tag"]
                .as_str()
                .or(job["measure"].as_str())
                .unwrap_or_default()
                .to_string();
            jobs.entry(name)
                .or_insert_with(Vec::new)
                .push(job["duration_ms"].as_u64().unwrap_or(0));
        }
        let lifecycle = report["tags"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["tag"] == "lifecycle");
        let evaluated = lifecycle.and_then(|t| t["evaluated_customers"].as_u64());
        figures
            .evaluated
            .push(evaluated.unwrap_or(report["customers"].as_u64().unwrap_or(0)));
    }
    figures.lags_ms.sort_unstable();
    figures.batch_ms.sort_unstable();
    figures.evaluated.sort_unstable();
    for (stage, mut ms) in stages {
        ms.sort_unstable();
        figures.stages_p50_ms.insert(stage, pct(&ms, 50));
    }
    for (job, mut ms) in jobs {
        ms.sort_unstable();
        figures.jobs_p50_ms.insert(job, pct(&ms, 50));
    }
    figures.print();
    figures
}

/// Land the feed's file number `index` ([`click_file`]) in `folder`: written under a hidden
/// name, then renamed, so it appears whole, its mtime now.
fn land_file(folder: &Path, index: usize, customers: usize) {
    let hidden = folder.join(format!(".part-{index:05}.tmp"));
    std::fs::write(&hidden, click_file(index, customers)).unwrap();
    std::fs::rename(&hidden, folder.join(format!("part-{index:05}.parquet"))).unwrap();
}

/// What the warm-up landed: its files, and follow's reports of them.
struct WarmUp {
    files: usize,
    reports: Vec<String>,
}

/// Land [`follow_warm_files`] files in `folder` ahead of the measured feed, a round at a
/// time, each once follow's `lines` have reported the files before it.
fn warm_up(folder: &Path, customers: usize, lines: &std::sync::mpsc::Receiver<String>) -> WarmUp {
    let files = follow_warm_files();
    let (started, mut reports, mut reported) = (Instant::now(), Vec::new(), 0);
    for round in (0..files).step_by(WARM_ROUND) {
        let landed = (round + WARM_ROUND).min(files);
        for i in round..landed {
            land_file(folder, i, customers);
        }
        while reported < landed {
            let line = lines
                .recv_timeout(Duration::from_secs(3600))
                .expect("follow reports the warm-up files within an hour");
            let report: serde_json::Value = serde_json::from_str(&line).expect("JSON line");
            reported += report["freshness"]["files"].as_u64().unwrap_or(0) as usize;
            reports.push(line);
        }
    }
    if files > 0 {
        println!(
            "warm-up            {files} files in {} batches, {:.0} s (left out of the figures)",
            reports.len(),
            started.elapsed().as_secs_f64()
        );
    }
    WarmUp { files, reports }
}

impl FollowFigures {
    pub fn print(&self) {
        println!(
            "\n-- follow: {} files of {FOLLOW_FILE_EVENTS} events, one every {} s, interval {FOLLOW_INTERVAL}, shipped gates; \
             serve beside it (reload {SERVE_RELOAD}){}",
            self.files,
            follow_every(),
            match self.warm_files {
                0 => String::new(),
                n => format!("; after {n} files of warm-up"),
            }
        );
        println!(
            "first batch        {} ms (the session's first: everyone evaluated; the feed started after it): {}",
            self.first_batch_ms, self.first_stages
        );
        println!(
            "files published    {} (each counted at its batch's max lag)",
            self.lags_ms.len()
        );
        println!(
            "freshness          p50 {} ms, p95 {} ms, max {} ms (landing -> published: feed, and customer_tags at its merges)",
            pct(&self.lags_ms, 50),
            pct(&self.lags_ms, 95),
            self.lags_ms.last().unwrap()
        );
        println!(
            "lookup freshness   p50 {} ms, p95 {} ms, max {} ms (landing -> the lookup API answers for the file's probe customer; {} files)",
            pct(&self.lookup_lags_ms, 50),
            pct(&self.lookup_lags_ms, 95),
            self.lookup_lags_ms.last().copied().unwrap_or_default(),
            self.lookup_lags_ms.len()
        );
        println!(
            "merges             {} of {} publishes merged into customer_tags in the batch, {} started a merge in the background (the others stayed live)",
            self.merges,
            self.batch_ms.len(),
            self.background_merges
        );
        println!(
            "batch duration     p50 {} ms, p95 {} ms, max {} ms ({} batches)",
            pct(&self.batch_ms, 50),
            pct(&self.batch_ms, 95),
            self.batch_ms.last().unwrap(),
            self.batch_ms.len()
        );
        println!(
            "evaluated for      p50 {} customers per batch (lifecycle)",
            pct(&self.evaluated, 50)
        );
        let stages: Vec<String> = self.stages_p50_ms.iter().map(|(s, ms)| format!("{s} {ms}")).collect();
        println!("stages, p50 (ms)   {}", stages.join(", "));
        let mut jobs: Vec<(&String, &u64)> = self.jobs_p50_ms.iter().collect();
        jobs.sort_by_key(|(_, ms)| std::cmp::Reverse(**ms));
        let jobs: Vec<String> = jobs.iter().take(8).map(|(j, ms)| format!("{j} {ms}")).collect();
        println!("slowest jobs, p50  {} (ms; jobs run side by side)", jobs.join(", "));
        println!(
            "peak memory (RSS)  follow {:.0} MiB, serve {:.0} MiB",
            self.peak_rss_mib, self.serve_peak_rss_mib
        );
    }
}

/// The id of the new customer whose one view file `index` holds.
pub fn probe_customer(index: usize) -> String {
    format!("probe-{index:05}")
}

/// For each file `(index, landed at)` in order, ask the lookup API for its probe customer
/// every 10 ms until it answers; the lags in ms, in file order.
fn probe_lookups(addr: std::net::SocketAddr, files: std::sync::mpsc::Receiver<(usize, Instant)>) -> Vec<u64> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let mut client = http::Client::new(addr);
        let mut lags = Vec::new();
        while let Ok((index, landed)) = files.recv() {
            let path = format!("/v1/customers/{}/tags", probe_customer(index));
            loop {
                if client.get(&path).await.status == 200 {
                    lags.push(landed.elapsed().as_millis() as u64);
                    break;
                }
                assert!(
                    landed.elapsed() < Duration::from_secs(600),
                    "file {index} never reached the lookup API"
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        lags
    })
}

/// 50k product views of random customers, in the last minute.
pub fn click_file(index: usize, customers: usize) -> Vec<u8> {
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
    // One more row: the file's probe customer (see `probe_lookups`).
    let picks: Vec<u64> = (0..=rows).map(|_| next()).collect();
    let customer = |p: u64| p as usize % customers + 1;
    let customer_id = |i: usize, p: u64| match i == rows {
        true => probe_customer(index),
        false => format!("cust-{:06}", customer(p)),
    };
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
        column(&|i, p| customer_id(i, p)),
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
