//! Erasure benchmark (issue 29): forget 1,000 customers from a warehouse of N customers.
//!
//! Per size: generate N customers' history (`TAGFLOW_BENCH_DAYS`, default 14 days), run it
//! in full, then `tagflow forget --from-file` 1,000 customers spread over the id range (wall
//! time, peak RSS, rows removed per table, and how many of `customer_tags`' data files and
//! of the state's files were written anew: an erasure rewrites only what holds them), then
//! 1,000 more with `--purge-history`.
//!
//! `cargo bench --bench forget`; `TAGFLOW_BENCH_SIZES=100000,1000000` (the default) sets the
//! customer counts.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Stdio;
use std::time::Instant;

use arrow::array::AsArray;
use chrono::NaiveDate;
use common::{generate_into, run, runtime, tagflow, wait_with_rusage};
use tagflow::publish::{query_published, TAGS_TABLE};
use tagflow::storage::Location;

const FORGOTTEN: usize = 1_000;

fn main() {
    let sizes = common::sizes();
    let days: u32 = std::env::var("TAGFLOW_BENCH_DAYS")
        .map(|n| n.parse().expect("TAGFLOW_BENCH_DAYS is a number"))
        .unwrap_or(14);
    println!("forget {FORGOTTEN} customers; history of {days} days");
    for customers in sizes {
        bench_size(customers, days);
    }
}

fn bench_size(customers: usize, days: u32) {
    let dir = tempfile::tempdir().expect("tempdir");
    let (landing, warehouse) = (dir.path().join("landing"), dir.path().join("warehouse"));
    let end = NaiveDate::from_ymd_opt(2026, 11, 19).unwrap();
    let (events, files) = runtime().block_on(generate_into(&landing, customers, days, 7, end));
    let (l, w) = (landing.to_string_lossy(), warehouse.to_string_lossy());
    let full = run(&l, &w, None, "2026-11-20T00:00:00Z", &["--full"]);
    println!(
        "\n== {customers} customers: {events} events in {files} files; full run {:.1} s, {} tag rows",
        full.wall, full.report["published"]["rows"]
    );
    let known = known_customers(&warehouse);
    let step = known.len() / (2 * FORGOTTEN);
    let picked: Vec<&String> = known.iter().step_by(step.max(1)).take(2 * FORGOTTEN).collect();
    let (first, second) = picked.split_at(FORGOTTEN.min(picked.len() / 2));
    forget(dir.path(), &landing, &warehouse, first, false);
    forget(dir.path(), &landing, &warehouse, second, true);
}

/// Every customer with a `lifecycle` row (everyone with an event), sorted.
fn known_customers(warehouse: &Path) -> Vec<String> {
    let location = Location::parse(&warehouse.to_string_lossy(), &Default::default()).unwrap();
    let sql = "SELECT customer_id FROM customer_tags WHERE tag = 'lifecycle' ORDER BY customer_id";
    let batches = runtime()
        .block_on(query_published(&location, TAGS_TABLE, None, sql))
        .expect("read customer_tags");
    batches
        .iter()
        .flat_map(|b| {
            b.column(0)
                .as_string::<i32>()
                .iter()
                .flatten()
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .collect()
}

fn forget(dir: &Path, landing: &Path, warehouse: &Path, ids: &[&String], purge: bool) {
    let list = dir.join(format!("ids-{purge}.txt"));
    std::fs::write(&list, ids.iter().map(|i| format!("{i}\n")).collect::<String>()).unwrap();
    let tags_before = files_under(&warehouse.join("customer_tags"), ".parquet");
    let state_before = files_under(&warehouse.join("_tagflow/state"), "");
    let started = Instant::now();
    let mut command = tagflow();
    command
        .args(["forget", "--json", "--from-file"])
        .arg(&list)
        .arg("--landing")
        .arg(landing)
        .arg("--warehouse")
        .arg(warehouse);
    if purge {
        command.arg("--purge-history");
    }
    #[allow(clippy::zombie_processes)] // reaped by wait4 in wait_with_rusage
    let mut child = command.stdout(Stdio::piped()).spawn().expect("start tagflow");
    let mut stdout = String::new();
    std::io::Read::read_to_string(&mut child.stdout.take().unwrap(), &mut stdout).unwrap();
    let (status, rss) = wait_with_rusage(child.id());
    let wall = started.elapsed().as_secs_f64();
    assert_eq!(status, 0, "tagflow forget failed");
    let report: serde_json::Value = serde_json::from_str(&stdout).expect("JSON report");
    let tags_after = files_under(&warehouse.join("customer_tags"), ".parquet");
    let state_after = files_under(&warehouse.join("_tagflow/state"), "");
    let tags_live = tags_after.len();
    println!(
        "-- forget {} customers{}: {wall:.2} s, peak RSS {rss:.0} MiB",
        ids.len(),
        if purge { " --purge-history" } else { "" }
    );
    println!("   rows removed        {}", report["removed"]);
    println!("   steps (ms)          {}", report["stages_ms"]);
    println!(
        "   customer_tags files written {} (of {} data files on disk after)",
        tags_after.difference(&tags_before).count(),
        tags_live
    );
    println!(
        "   state files written {} (of {} after; {} deleted)",
        state_after.difference(&state_before).count(),
        state_after.len(),
        state_before.difference(&state_after).count()
    );
    println!(
        "   landing files holding them {}; first readable versions {}",
        report["landing_files"].as_array().map_or(0, Vec::len),
        report["first_readable_version"]
    );
}

fn files_under(dir: &Path, suffix: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(path) = stack.pop() {
        if path.is_dir() {
            stack.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
        } else if path.to_string_lossy().ends_with(suffix) {
            out.insert(path.to_string_lossy().into_owned());
        }
    }
    out
}
