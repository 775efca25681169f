//! Full-run benchmark: generate N events, run the whole pipeline (read → jobs → publish)
//! on local files, print events/s, wall time per stage and peak memory.
//!
//! `cargo bench --bench full_run` runs 1M and 10M events. The run is the real `tagflow`
//! binary in a child process, so the peak-memory figure (max RSS) is the run's alone
//! (sizes run in ascending order, so the running maximum is the current size's). `TAGFLOW_BENCH_EVENTS=N` runs one
//! size. Generation is timed separately and not part of the figures.

use std::time::Instant;

use chrono::NaiveDate;
use tagflow::generate::{generate, GenerateOptions};
use tagflow::storage::Location;

const DAYS: u32 = 365;
/// The generator writes about this many events per customer and day.
const EVENTS_PER_CUSTOMER_DAY: f64 = 0.25;

fn main() {
    let sizes: Vec<usize> = match std::env::var("TAGFLOW_BENCH_EVENTS") {
        Ok(n) => vec![n.parse().expect("TAGFLOW_BENCH_EVENTS is a number")],
        Err(_) => vec![1_000_000, 10_000_000],
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    for size in sizes {
        runtime.block_on(bench(size));
    }
}

async fn bench(target_events: usize) {
    let dir = tempfile::tempdir().expect("tempdir");
    let landing_dir = dir.path().join("landing");
    let landing = Location::parse(&landing_dir.to_string_lossy(), &Default::default()).unwrap();
    let customers = (target_events as f64 / (DAYS as f64 * EVENTS_PER_CUSTOMER_DAY)).ceil() as usize;
    let end = NaiveDate::from_ymd_opt(2026, 11, 19).unwrap();
    let started = Instant::now();
    let generated = generate(
        &landing,
        &GenerateOptions {
            customers,
            days: DAYS,
            seed: 1,
            end,
            bad_input: false,
        },
    )
    .await
    .expect("generate");
    let written: usize = generated.events.values().sum();
    let files: usize = generated.files.values().sum();
    println!(
        "\n== full run, target {target_events} events: {customers} customers x {DAYS} days -> {written} events in {files} files (generated in {:.1}s)",
        started.elapsed().as_secs_f64()
    );

    // Write the generated files out now, so that the run does not pay for their writeback.
    unsafe { libc::sync() };

    // The run itself is the real binary in a child process, so that its peak memory is its own.
    let started = Instant::now();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_tagflow"))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(["run", "--json", "--as-of", "2026-11-19T23:59:59Z", "--landing"])
        .arg(&landing_dir)
        .arg("--warehouse")
        .arg(dir.path().join("warehouse"))
        .env("TAGFLOW_LOG", "warn")
        .output()
        .expect("run tagflow");
    let wall = started.elapsed().as_secs_f64();
    assert!(
        output.status.success(),
        "tagflow run failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).expect("JSON report");
    let rows_read: u64 = report["streams"]
        .as_object()
        .unwrap()
        .values()
        .map(|s| s["rows_read"].as_u64().unwrap())
        .sum();
    println!("events read        {rows_read}");
    println!("wall time          {wall:.2} s (process, including start-up)");
    println!("throughput         {:.0} events/s", rows_read as f64 / wall);
    for (stage, ms) in report["stages_ms"].as_object().unwrap() {
        println!("stage {stage:<12} {:>8.2} s", ms.as_f64().unwrap() / 1000.0);
    }
    let mut jobs: Vec<(String, u64)> = Vec::new();
    for t in report["tags"].as_array().unwrap() {
        jobs.push((t["tag"].as_str().unwrap().into(), t["duration_ms"].as_u64().unwrap()));
    }
    for m in report["measures"].as_array().unwrap() {
        jobs.push((
            m["measure"].as_str().unwrap().into(),
            m["duration_ms"].as_u64().unwrap(),
        ));
    }
    jobs.sort_by_key(|(_, ms)| std::cmp::Reverse(*ms));
    let top: Vec<String> = jobs.iter().take(5).map(|(n, ms)| format!("{n} {ms} ms")).collect();
    println!("slowest jobs       {}", top.join(", "));
    println!("customers          {}", report["customers"]);
    println!("rows published     {}", report["published"]["rows"]);
    println!("peak memory (RSS)  {:.0} MiB", child_peak_rss_mib());
}

/// Peak resident set size of the largest waited-for child process, in MiB.
fn child_peak_rss_mib() -> f64 {
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage only writes into the struct we own.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage) };
    if rc != 0 {
        return f64::NAN;
    }
    usage.ru_maxrss as f64 / 1024.0
}
