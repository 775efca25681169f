//! Publishing benchmark: 200 micro-batches on one warehouse, on generated data and local
//! files. A first run publishes the history; then every batch lands one more landing file and
//! runs `tagflow run` (incremental: merge of what changed, change feed, compaction by the
//! default policy). Every 20 batches it prints what readers meet: the table's version, data
//! files of `customer_tags` and `tag_changes`, the last checkpoint, and the time to open the
//! latest version (delta-rs, cold: a new process-less open from the log) and read one
//! customer; plus the batches' publish time and rows written.
//!
//! `cargo bench --bench publish`; `TAGFLOW_BENCH_CUSTOMERS=N` (default 20,000) scales the data.

use std::path::Path;
use std::time::Instant;

use chrono::NaiveDate;
use tagflow::config::{CliSettings, Settings};
use tagflow::generate::{generate, GenerateOptions};
use tagflow::publish::{open_published, query_published, TAGS_TABLE};
use tagflow::storage::Location;

const BATCHES: usize = 200;
const DAYS: u32 = 120;

fn main() {
    let customers: usize = std::env::var("TAGFLOW_BENCH_CUSTOMERS")
        .map(|n| n.parse().expect("TAGFLOW_BENCH_CUSTOMERS is a number"))
        .unwrap_or(20_000);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().expect("tempdir");
    let source = dir.path().join("source");
    let landing = dir.path().join("landing");
    let warehouse = dir.path().join("warehouse");
    let end = NaiveDate::from_ymd_opt(2026, 10, 1).unwrap();
    runtime.block_on(async {
        let options = GenerateOptions {
            customers,
            days: DAYS,
            seed: 3,
            end,
            bad_input: false,
        };
        generate(&location(&source), &options).await.expect("generate");
    });
    let mut files = files_under(&source);
    // By event day (the `dt=` folder), so the arrivals are the most recent days' files.
    files.sort_by_key(|f| (f.split("dt=").nth(1).unwrap_or_default().to_string(), f.clone()));
    assert!(files.len() > BATCHES, "{} files: need more than {BATCHES}", files.len());
    // The last BATCHES files arrive one per batch.
    let (history, arrivals) = files.split_at(files.len() - BATCHES);
    for f in history {
        copy(&source.join(f), &landing.join(f));
    }
    let as_of = format!("{}T23:59:59Z", end);
    // Forced: one random file per batch moves small segments (a few hundred customers) by
    // more than the drift gates allow now and then; this bench measures publishing.
    let mut settings = Settings::resolve(&CliSettings {
        landing: Some(landing.to_string_lossy().into_owned()),
        warehouse: Some(warehouse.to_string_lossy().into_owned()),
        as_of: Some(as_of.clone()),
        sql_dir: Some(Path::new(env!("CARGO_MANIFEST_DIR")).join("sql")),
        schemas_dir: Some(Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas")),
        config: None,
        ..Default::default()
    })
    .expect("settings");
    settings.force = true;
    let first = runtime.block_on(tagflow::app::run::run(&settings)).expect("first run");
    println!(
        "\n== publishing: {customers} customers, {} history files, then {BATCHES} micro-batches of one file each",
        history.len()
    );
    println!(
        "first publish: {} rows, {} files, {} ms",
        first.published.rows,
        first.published.files,
        first.stages_ms.get("publish").copied().unwrap_or_default()
    );
    println!(
        "{:>6} {:>8} {:>10} {:>11} {:>10} {:>10} {:>14} {:>16} {:>16}",
        "batch",
        "version",
        "tag files",
        "feed files",
        "checkpoint",
        "open ms",
        "lookup ms",
        "publish ms p50/max",
        "rows written avg"
    );
    let mut publish_ms: Vec<u64> = Vec::new();
    let mut written: Vec<usize> = Vec::new();
    let mut compactions = 0;
    for (i, file) in arrivals.iter().enumerate() {
        copy(&source.join(file), &landing.join(file));
        let report = runtime.block_on(tagflow::app::run::run(&settings)).expect("batch");
        publish_ms.push(report.stages_ms.get("publish").copied().unwrap_or_default());
        written.push(report.published.rows_written);
        compactions += usize::from(report.compaction.is_some());
        if (i + 1) % 20 == 0 {
            let wh = location(&warehouse);
            let opened = Instant::now();
            let table = runtime.block_on(open_published(&wh, TAGS_TABLE, None)).expect("open");
            let open_ms = opened.elapsed().as_secs_f64() * 1000.0;
            let tag_files = tagflow::publish::file_count(&table);
            let feed = runtime
                .block_on(open_published(&wh, "tag_changes", None))
                .expect("open feed");
            let looked_up = Instant::now();
            runtime
                .block_on(query_published(
                    &wh,
                    TAGS_TABLE,
                    None,
                    "SELECT tag, value FROM customer_tags WHERE customer_id = 'c000042'",
                ))
                .expect("lookup");
            let lookup_ms = looked_up.elapsed().as_secs_f64() * 1000.0;
            let mut recent = publish_ms[publish_ms.len() - 20..].to_vec();
            recent.sort();
            let avg_written = written[written.len() - 20..].iter().sum::<usize>() / 20;
            println!(
                "{:>6} {:>8} {:>10} {:>11} {:>10} {:>10.1} {:>14.1} {:>9}/{:<6} {:>16}",
                i + 1,
                report.published.version,
                tag_files,
                tagflow::publish::file_count(&feed),
                last_checkpoint(&warehouse.join(TAGS_TABLE)),
                open_ms,
                lookup_ms,
                recent[recent.len() / 2],
                recent[recent.len() - 1],
                avg_written
            );
        }
    }
    println!(
        "{compactions} compactions by policy; table {} rows",
        runtime
            .block_on(tagflow::app::run::run(&settings))
            .expect("last")
            .published
            .rows
    );
}

fn location(path: &Path) -> Location {
    Location::parse(&path.to_string_lossy(), &Default::default()).expect("location")
}

fn last_checkpoint(table: &Path) -> String {
    std::fs::read_to_string(table.join("_delta_log/_last_checkpoint"))
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .and_then(|v| v["version"].as_u64())
        .map(|v| format!("v{v}"))
        .unwrap_or_else(|| "-".into())
}

fn files_under(root: &Path) -> Vec<String> {
    fn walk(dir: &Path, root: &Path, out: &mut Vec<String>) {
        for entry in std::fs::read_dir(dir).expect("read dir") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                walk(&path, root, out);
            } else {
                let relative = path.strip_prefix(root).expect("under root");
                let relative = relative.to_string_lossy().replace('\\', "/");
                if !relative.split('/').any(|s| s.starts_with('_') || s.starts_with('.')) {
                    out.push(relative);
                }
            }
        }
    }
    let mut out = Vec::new();
    walk(root, root, &mut out);
    out
}

fn copy(from: &Path, to: &Path) {
    std::fs::create_dir_all(to.parent().expect("parent")).expect("mkdir");
    std::fs::copy(from, to).expect("copy");
}
