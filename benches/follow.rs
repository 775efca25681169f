//! Real time at size (issue 26): a `tagflow follow` session on 60 days of history at
//! 100k and at 1M customers, fed one 50k-event file per second, with the shipped gates.
//! Per size: the initial full run, then per batch its duration by stage and the customers
//! it evaluated, landing → published freshness and landing → lookup-API freshness (a
//! `tagflow serve` runs beside follow; each file holds one view of a new probe customer)
//! p50/p95/max, and the peak RSS of follow and serve;
//! then the growth from the smallest to the largest size, side by side in one run, and the
//! projection to 10M customers from that growth.
//!
//! `cargo bench --bench follow`; `TAGFLOW_BENCH_SIZES=100000,1000000` (customers),
//! `TAGFLOW_BENCH_FOLLOW_SECS=60`; `TAGFLOW_BENCH_FOLLOW_EVERY=10` lands a file every 10 s
//! instead of every second, so each batch holds one file (its cost measured apart);
//! `TAGFLOW_BENCH_FOLLOW_WARM=200` lands 200 files before the measured feed (left out of
//! the figures), so the minute is measured on a day whose customers have rows for today;
//! `TAGFLOW_BENCH_KEEP=<dir>` keeps the history and its full run for the next bench run;
//! `TAGFLOW_BENCH_REPORTS=<file>` keeps follow's run reports (one JSON line per batch).

use std::time::{Duration, Instant};

use chrono::{Days, Utc};

mod common;
use common::*;

const DAYS: u32 = 60;

fn main() {
    let sizes = common::sizes();
    let follow_secs = follow_secs();
    let runtime = runtime();
    // The history ends yesterday: the session's batches are evaluated at the wall clock.
    let end = Utc::now().date_naive().checked_sub_days(Days::new(1)).unwrap();
    let mut measured = Vec::new();
    for &customers in &sizes {
        let dir = tempfile::tempdir().expect("tempdir");
        let (landing, warehouse) = (dir.path().join("landing"), dir.path().join("warehouse"));
        let as_of = format!("{end}T23:59:59Z");
        let kept = kept_history(customers, end);
        let full_wall = match kept.as_ref().filter(|k| k.join("warehouse").exists()) {
            Some(kept) => {
                copy_history(kept, &landing, &warehouse);
                println!(
                    "\n== follow at {customers} customers: the history and full run kept in {}",
                    kept.display()
                );
                f64::NAN
            }
            None => {
                let started = Instant::now();
                let (events, files) = runtime.block_on(generate_into(&landing, customers, DAYS, 1, end));
                unsafe { libc::sync() };
                println!(
                    "\n== follow at {customers} customers: history {events} events in {files} files ({DAYS} days to {end}); \
                     generated in {:.1}s",
                    started.elapsed().as_secs_f64()
                );
                let (landing_text, warehouse_text) = (landing.to_string_lossy(), warehouse.to_string_lossy());
                let full = run(&landing_text, &warehouse_text, None, &as_of, &[]);
                full.print("initial full run");
                if let Some(kept) = &kept {
                    copy_history(dir.path(), &kept.join("landing"), &kept.join("warehouse"));
                }
                full.wall
            }
        };
        let figures = follow(&landing, &warehouse, customers, Duration::from_secs(follow_secs));
        measured.push((customers, full_wall, figures));
    }
    compare(&measured);
}

/// Where the history of `customers` ending `end` and its full run are kept between bench
/// runs (`TAGFLOW_BENCH_KEEP=<dir>`): measuring follow again skips generating and the full
/// run (about 3 minutes at 1M).
fn kept_history(customers: usize, end: chrono::NaiveDate) -> Option<std::path::PathBuf> {
    let dir = std::env::var_os("TAGFLOW_BENCH_KEEP")?;
    Some(std::path::Path::new(&dir).join(format!("{customers}-{end}")))
}

/// Copy `from`'s landing and warehouse folders to `landing` and `warehouse`.
fn copy_history(from: &std::path::Path, landing: &std::path::Path, warehouse: &std::path::Path) {
    for (name, to) in [("landing", landing), ("warehouse", warehouse)] {
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        let status = std::process::Command::new("cp")
            .arg("-a")
            .arg(from.join(name))
            .arg(to)
            .status()
            .expect("cp");
        assert!(status.success(), "copying the kept history");
    }
}

/// Batch p50 divided by the files per batch (ms).
fn per_file_ms(f: &FollowFigures) -> f64 {
    pct(&f.batch_ms, 50) as f64 * f.batch_ms.len() as f64 / f.files.max(1) as f64
}

/// The sizes side by side, the growth from the smallest to the largest, and its projection
/// to 10M customers (the same growth per tenfold size).
fn compare(measured: &[(usize, f64, FollowFigures)]) {
    println!("\n== side by side (one run, one machine)");
    println!(
        "{:>10} {:>7} {:>9} {:>9} {:>7} {:>7} {:>9} {:>9} {:>10} {:>10} {:>9} {:>10} {:>9}",
        "customers",
        "full s",
        "batch p50",
        "batch p95",
        "ms/file",
        "us/cust",
        "pub p50",
        "pub p95",
        "lookup p50",
        "lookup p95",
        "evaluated",
        "follow MiB",
        "serve MiB"
    );
    for (customers, full, f) in measured {
        println!(
            "{customers:>10} {full:>7.1} {:>9} {:>9} {:>7.0} {:>7.1} {:>9} {:>9} {:>10} {:>10} {:>9} {:>10.0} {:>9.0}",
            pct(&f.batch_ms, 50),
            pct(&f.batch_ms, 95),
            per_file_ms(f),
            pct(&f.batch_ms, 50) as f64 * 1000.0 / pct(&f.evaluated, 50).max(1) as f64,
            pct(&f.lags_ms, 50),
            pct(&f.lags_ms, 95),
            pct(&f.lookup_lags_ms, 50),
            pct(&f.lookup_lags_ms, 95),
            pct(&f.evaluated, 50),
            f.peak_rss_mib,
            f.serve_peak_rss_mib
        );
    }
    let (Some((small, _, a)), Some((large, _, b))) = (measured.first(), measured.last()) else {
        return;
    };
    if small == large {
        return;
    }
    // A batch takes the files that landed while the one before it ran, so batches of a
    // slower session hold more files: the cost of a file is the figure to compare.
    let growth = per_file_ms(b) / per_file_ms(a).max(1.0);
    let tenfolds = (10_000_000f64 / *large as f64).log10() / (*large as f64 / *small as f64).log10();
    println!(
        "a file costs x{growth:.2} from {small} to {large} customers ({:.0} -> {:.0} ms: batch p50 over its files); \
         at that growth a file at 10M customers costs about {:.0} ms ({:.0} ms x {growth:.2}^{tenfolds:.2}); \
         batch p50 itself grows x{:.2}",
        per_file_ms(a),
        per_file_ms(b),
        per_file_ms(b) * growth.powf(tenfolds),
        per_file_ms(b),
        pct(&b.batch_ms, 50) as f64 / pct(&a.batch_ms, 50).max(1) as f64
    );
    let stages: std::collections::BTreeSet<&String> = a.stages_p50_ms.keys().chain(b.stages_p50_ms.keys()).collect();
    println!("stage p50 (ms)     {:>10} {:>10}", small, large);
    for stage in stages {
        let ms = |f: &FollowFigures| f.stages_p50_ms.get(stage).copied().unwrap_or(0);
        println!("  {stage:<16} {:>10} {:>10}", ms(a), ms(b));
    }
}
