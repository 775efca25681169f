//! Incremental runs: only new landing files are read, the state carries the rest, and after
//! every run the published table equals a full recomputation at the same as-of time,
//! whatever order the files arrive in, re-sent or late, killed runs included.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::Ordering::SeqCst;
use std::time::{Duration, Instant};

use chrono::{NaiveDate, Utc};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tagflow::app::report::Mode;
use tagflow::generate::{generate, GenerateOptions};
use tagflow::publish::tasks::task_report;

use crate::support::*;

/// Last day of generated history.
fn end() -> NaiveDate {
    NaiveDate::from_ymd_opt(2026, 6, 30).expect("date")
}

/// As-of times of consecutive runs, with the share (%) of the arrivals landed by then.
/// They cross UTC days with and without new files, end a day at its last microsecond, and
/// reach past the history so that windows empty without any new event.
pub(crate) const SCHEDULE: [(&str, usize); 8] = [
    ("2026-06-01T12:00:00Z", 25),
    ("2026-06-11T00:00:00Z", 45),
    ("2026-06-11T06:00:00Z", 45),
    ("2026-06-25T23:59:59.999999Z", 70),
    ("2026-06-26T00:00:00Z", 70),
    ("2026-06-30T18:00:00Z", 90),
    ("2026-07-03T09:00:00Z", 100),
    ("2026-08-09T00:00:00Z", 100),
];

/// Every file under `root`, as sorted slash-separated relative paths.
fn files_under(root: &Path) -> Vec<String> {
    fn walk(dir: &Path, root: &Path, out: &mut Vec<String>) {
        for entry in std::fs::read_dir(dir).expect("read dir") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                walk(&path, root, out);
            } else {
                let relative = path.strip_prefix(root).expect("under root");
                out.push(relative.to_string_lossy().replace('\\', "/"));
            }
        }
    }
    let mut out = Vec::new();
    walk(root, root, &mut out);
    out.sort();
    out
}

fn is_hidden(relative: &str) -> bool {
    relative.split('/').any(|s| s.starts_with('_') || s.starts_with('.'))
}

fn copy_file(from: &Path, to: &Path) {
    std::fs::create_dir_all(to.parent().expect("parent")).expect("mkdir");
    std::fs::copy(from, to).expect("copy");
}

/// A generated history whose files arrive in a random order, with re-sent copies of some
/// files under other names.
pub(crate) struct Arrivals {
    source: PathBuf,
    order: Vec<String>,
}

impl Arrivals {
    pub(crate) async fn generate(fx: &Fixture, seed: u64, customers: usize, days: u32) -> Self {
        Self::generate_until(fx, seed, customers, days, end()).await
    }

    /// [`Arrivals::generate`] with a history of `days` days that ends on `end`.
    pub(crate) async fn generate_until(fx: &Fixture, seed: u64, customers: usize, days: u32, end: NaiveDate) -> Self {
        let source = fx.dir.path().join("source");
        let options = GenerateOptions {
            customers,
            days,
            seed,
            end,
            bad_input: true,
        };
        generate(&location(&source), &options).await.expect("generate");
        let mut order = files_under(&source);
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        order.shuffle(&mut rng);
        let originals: Vec<String> = order.iter().filter(|f| !is_hidden(f)).cloned().collect();
        for i in 0..6 {
            let original = &originals[rng.random_range(0..originals.len())];
            let stream = original.split('/').next().expect("stream folder");
            let copy = format!("{stream}/resent/copy-{i}.parquet");
            copy_file(&source.join(original), &source.join(&copy));
            let at = rng.random_range(0..=order.len());
            order.insert(at, copy);
        }
        Arrivals { source, order }
    }

    /// Land arrivals `from..to` into the fixture's landing zone; returns how many of them
    /// are event files (not `_`/`.` names).
    pub(crate) fn land(&self, fx: &Fixture, from: usize, to: usize) -> usize {
        for (file, relative) in self.files(from, to) {
            copy_file(&file, &fx.landing_dir().join(relative));
        }
        self.order[from..to].iter().filter(|f| !is_hidden(f)).count()
    }

    /// Arrivals `from..to`: each file's local path and its path in a landing zone.
    pub(crate) fn files(&self, from: usize, to: usize) -> impl Iterator<Item = (PathBuf, &str)> {
        self.order[from..to].iter().map(|f| (self.source.join(f), f.as_str()))
    }

    pub(crate) fn upto(&self, share: usize) -> usize {
        self.order.len() * share / 100
    }

    /// Random cut points through the arrivals, each chunk holding at least one event file
    /// (so that landing it makes the next `follow` batch publish); the last is the end.
    fn chunk_ends(&self, rng: &mut ChaCha8Rng, max_event_files: usize) -> Vec<usize> {
        let mut ends = Vec::new();
        let (mut event_files, mut want) = (0, rng.random_range(1..=max_event_files));
        for (i, file) in self.order.iter().enumerate() {
            if !is_hidden(file) {
                event_files += 1;
            }
            if event_files == want {
                ends.push(i + 1);
                (event_files, want) = (0, rng.random_range(1..=max_event_files));
            }
        }
        match ends.last_mut() {
            Some(last) if event_files == 0 => *last = self.order.len(),
            _ => ends.push(self.order.len()),
        }
        ends
    }
}

/// A full recomputation of the fixture's landing zone at `as_of`, in a warehouse of its own.
pub(crate) async fn full_tags(fx: &Fixture, as_of: &str) -> Tags {
    let warehouse = fx.dir.path().join("full-warehouse");
    let mut settings = fx.settings(as_of, None).expect("settings");
    settings.warehouse = Some(location(&warehouse));
    settings.full = true;
    let report = tagflow::app::run::run(&settings).await.expect("full run");
    assert_eq!(report.mode, Mode::Full);
    read_tags(&warehouse, None).await
}

/// The two tables have the same rows, values and scores exactly.
pub(crate) fn assert_same(incremental: &Tags, full: &Tags, context: &str) {
    if incremental.rows == full.rows {
        return;
    }
    let a: BTreeSet<String> = incremental.rows.iter().map(|r| format!("{r:?}")).collect();
    let b: BTreeSet<String> = full.rows.iter().map(|r| format!("{r:?}")).collect();
    let only_incremental: Vec<&String> = a.difference(&b).take(10).collect();
    let only_full: Vec<&String> = b.difference(&a).take(10).collect();
    panic!(
        "{context}: incremental ({} rows) and full ({} rows) differ\n only incremental: {only_incremental:#?}\n only full: {only_full:#?}",
        incremental.rows.len(),
        full.rows.len()
    );
}

/// Files arrive in random order (late, early, re-sent) across runs at increasing as-of
/// times; after every run the incremental table equals `--full` at that time.
async fn incremental_equals_full(seed: u64) {
    let fx = Fixture::new();
    let arrivals = Arrivals::generate(&fx, seed, 200, 100).await;
    let mut landed = 0;
    let mut tags_seen: BTreeSet<String> = BTreeSet::new();
    for (step, (as_of, share)) in SCHEDULE.iter().enumerate() {
        let upto = arrivals.upto(*share);
        let new_files = arrivals.land(&fx, landed, upto);
        landed = upto;
        let report = fx.try_run(as_of, None).await.expect("incremental run");
        let context = format!("seed {seed}, step {step}, as of {as_of}");
        if step > 0 {
            assert_eq!(report.mode, Mode::Incremental, "{context}: {:?}", report.full_because);
        }
        let read: usize = report.streams.values().map(|s| s.files).sum();
        assert_eq!(read, new_files, "{context}: an incremental run reads only new files");
        let incremental = fx.published(None).await;
        tags_seen.extend(incremental.rows.iter().map(|r| r.tag.clone()));
        assert_same(&incremental, &full_tags(&fx, as_of).await, &context);
        let tasks_of = |dir: std::path::PathBuf| async move {
            let report = task_report(&location(&dir), None, None).await.expect("task_results");
            report.tasks
        };
        let (incremental_tasks, full_tasks) = (
            tasks_of(fx.warehouse_dir()).await,
            tasks_of(fx.dir.path().join("full-warehouse")).await,
        );
        assert!(!full_tasks.is_empty(), "{context}: no marketing task");
        assert_eq!(incremental_tasks, full_tasks, "{context}: task_results");
    }
    // Not vacuous: the runs published (almost) every shipped tag along the way.
    assert!(tags_seen.len() >= 11, "seed {seed}: only {tags_seen:?} were exercised");
}

#[tokio::test]
async fn incremental_equals_full_seed_1() {
    incremental_equals_full(1).await;
}

#[tokio::test]
async fn incremental_equals_full_seed_2() {
    incremental_equals_full(2).await;
}

#[tokio::test]
async fn incremental_equals_full_seed_3() {
    incremental_equals_full(3).await;
}

/// Seeds of the randomised tests below: `TAGFLOW_TEST_SEEDS` (`7` or `1-200`) for a longer
/// soak, else `default`.
fn test_seeds(default: std::ops::RangeInclusive<u64>) -> std::ops::RangeInclusive<u64> {
    let Ok(spec) = std::env::var("TAGFLOW_TEST_SEEDS") else {
        return default;
    };
    let bound = |s: &str| s.trim().parse::<u64>().expect("TAGFLOW_TEST_SEEDS: `N` or `FROM-TO`");
    match spec.split_once('-') {
        Some((from, to)) => bound(from)..=bound(to),
        None => bound(&spec)..=bound(&spec),
    }
}

/// One step of a random schedule: run at `as_of` with the first `share`% of the arrivals
/// landed, incrementally or (`full`) recomputing in the same warehouse.
struct Step {
    as_of: String,
    share: usize,
    full: bool,
}

/// A random schedule over the history that [`Arrivals::generate`] makes (100 days ending
/// on [`end`]): as-of times that never go back, at random moments, midnights and the last
/// microsecond of a day; steps of hours to weeks, some with no new files, some past the
/// history; now and then a `--full` run in between.
fn random_schedule(rng: &mut ChaCha8Rng) -> Vec<Step> {
    let first_day = end() - chrono::Days::new(99);
    let mut at = first_day.and_hms_opt(0, 0, 0).expect("midnight").and_utc()
        + chrono::Duration::hours(rng.random_range(15 * 24..80 * 24));
    let mut share = 0;
    let mut steps = Vec::new();
    for _ in 0..rng.random_range(4..=9) {
        share = match rng.random_range(0..4) {
            // nothing new (a first run with no files at all is an error, tested elsewhere)
            0 if share > 0 => share,
            _ => (share + rng.random_range(1..=35)).min(100),
        };
        let before = at;
        at += match rng.random_range(0..5) {
            0 => chrono::Duration::minutes(rng.random_range(0..180)),
            1 | 2 => chrono::Duration::hours(rng.random_range(1..72)),
            _ => chrono::Duration::days(rng.random_range(3..25)),
        };
        let day = at.date_naive().and_hms_opt(0, 0, 0).expect("midnight").and_utc();
        at = match rng.random_range(0..4) {
            0 => day,
            1 => day + chrono::Duration::days(1) - chrono::Duration::microseconds(1),
            _ => at,
        }
        .max(before);
        steps.push(Step {
            as_of: at.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string(),
            share,
            full: rng.random_ratio(1, 8),
        });
    }
    steps
}

/// Like [`incremental_equals_full`], on a random schedule per seed: after every run the
/// table equals `--full` at that as-of time (in a warehouse of its own).
#[tokio::test]
async fn incremental_equals_full_on_random_schedules() {
    for seed in test_seeds(1..=2) {
        let fx = Fixture::new();
        let arrivals = Arrivals::generate(&fx, seed, 150, 100).await;
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x5eed);
        let schedule = random_schedule(&mut rng);
        let mut landed = 0;
        for (i, step) in schedule.iter().enumerate() {
            let upto = arrivals.upto(step.share);
            arrivals.land(&fx, landed, upto);
            landed = upto;
            let context = format!("seed {seed}, step {i} of {}, as of {}", schedule.len(), step.as_of);
            let mut settings = fx.settings(&step.as_of, None).expect("settings");
            settings.full = step.full;
            let report = tagflow::app::run::run(&settings).await.expect("run");
            // The first run has no state yet.
            let expected = match step.full || i == 0 {
                true => Mode::Full,
                false => Mode::Incremental,
            };
            assert_eq!(report.mode, expected, "{context}: {:?}", report.full_because);
            assert_same(&fx.published(None).await, &full_tags(&fx, &step.as_of).await, &context);
        }
    }
}

/// A second run with nothing new reads nothing, and a late file of old events updates the
/// windows it falls in; events after the as-of time are held, then counted when an as-of
/// time reaches them, without being read again.
#[tokio::test]
async fn late_and_future_events_are_counted_when_they_belong() {
    let fx = Fixture::new();
    fx.orders(
        "dt=2026-11-19/a.parquet",
        &[order("o1", "c1", "2026-11-19T10:00:00Z", "x1", "cancelled", 5.0)],
    );
    // two more failures: one tomorrow (after T), one late from last week
    fx.orders(
        "dt=2026-11-21/b.parquet",
        &[order("o2", "c1", "2026-11-21T08:00:00Z", "x2", "payment_failed", 5.0)],
    );
    let first = fx.try_run(T, None).await.unwrap();
    assert_eq!(first.state.held_events, 1);
    assert_eq!(fx.published(None).await.value("c1", "low_credit"), None);

    let again = fx.try_run(T, None).await.unwrap();
    assert_eq!(again.mode, Mode::Incremental);
    assert_eq!(again.streams.values().map(|s| s.files).sum::<usize>(), 0);

    fx.orders(
        "dt=2026-11-12/late.parquet",
        &[order("o3", "c1", "2026-11-12T09:00:00Z", "x3", "cancelled", 5.0)],
    );
    let late = fx.try_run("2026-11-21T09:00:00Z", None).await.unwrap();
    assert_eq!(late.mode, Mode::Incremental);
    assert_eq!(late.streams["orders"].files, 1, "only the late file is read");
    assert_eq!(late.state.held_events, 0, "the held event is due");
    let tags = fx.published(None).await;
    assert_eq!(tags.value("c1", "low_credit").as_deref(), Some("true"));
    assert_eq!(tags.score("c1", "low_credit"), Some(3.0));
}

/// An as-of time before the state's, or changed state jobs, make the run full (and say why).
#[tokio::test]
async fn going_back_in_time_or_changing_state_jobs_runs_full() {
    let fx = Fixture::new();
    fx.clicks("a.parquet", &[view("k1", "c1", "2026-11-19T10:00:00Z")]);
    fx.try_run(T, None).await.unwrap();
    let back = fx.try_run("2026-11-19T12:00:00Z", None).await.unwrap();
    assert_eq!(back.mode, Mode::Full);
    assert!(back.full_because.unwrap().contains("before the state's as-of"));

    let changed = fx
        .try_run(T, Some("[params.customer_days]\nretain_days = 40\n"))
        .await
        .unwrap();
    assert_eq!(changed.mode, Mode::Full);
    assert!(changed.full_because.unwrap().contains("state jobs"));
    let same = fx
        .try_run(T, Some("[params.customer_days]\nretain_days = 40\n"))
        .await
        .unwrap();
    assert_eq!(same.mode, Mode::Incremental);
}

/// Real `tagflow run` processes killed with SIGKILL at random moments, then run again: the
/// table converges to what uninterrupted runs publish, at every step.
#[test]
fn killed_runs_converge() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let fx = Fixture::new();
    let arrivals = runtime.block_on(Arrivals::generate(&fx, 11, 300, 60));
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    let run = |as_of: &str| {
        let mut cmd = tagflow();
        cmd.args(["run", "--as-of", as_of, "--landing"])
            .arg(fx.landing_dir())
            .arg("--warehouse")
            .arg(fx.warehouse_dir())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        cmd
    };
    let mut landed = 0;
    let mut kills = 0;
    for (step, (as_of, share)) in SCHEDULE.iter().enumerate().step_by(2) {
        let upto = arrivals.upto(*share);
        arrivals.land(&fx, landed, upto);
        landed = upto;
        // A clean run of this step takes some hundreds of milliseconds: kill within that.
        for _ in 0..3 {
            let mut child = run(as_of).spawn().unwrap();
            std::thread::sleep(Duration::from_millis(rng.random_range(20..600)));
            if child.try_wait().unwrap().is_none() {
                child.kill().unwrap(); // SIGKILL
                kills += 1;
            }
            child.wait().unwrap();
        }
        let started = Instant::now();
        let status = run(as_of).status().unwrap();
        assert!(
            status.success(),
            "step {step}: the run after the kills succeeds: {status}"
        );
        assert!(started.elapsed() < Duration::from_secs(120));
        let incremental = runtime.block_on(fx.published(None));
        let full = runtime.block_on(full_tags(&fx, as_of));
        assert_same(&incremental, &full, &format!("step {step}, as of {as_of}"));
    }
    assert!(
        kills >= 3,
        "only {kills} runs were killed before they ended: the test proves little"
    );
}

/// `tagflow follow` publishes each new file's effect, changes tags when time passes, and
/// ends cleanly on SIGTERM. The session keeps the published rows in memory between batches;
/// with a compaction every second version, a batch also meets a table compacted since the
/// one before, and the change feed still nets to every difference between versions.
#[test]
fn follow_publishes_new_files_until_sigterm() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let fx = Fixture::new();
    let now = Utc::now();
    let at = |minutes_ago: i64| (now - chrono::Duration::minutes(minutes_ago)).to_rfc3339();
    fx.clicks("dt=today/a.parquet", &[view("k1", "c1", &at(90))]);
    let config = fx.dir.path().join("tagflow.toml");
    std::fs::write(
        &config,
        "[compaction]\nevery_versions = 2\n[publish]\nmerge_every = \"0s\"\n",
    )
    .unwrap();
    let log = fx.dir.path().join("follow.log");
    let mut child = tagflow()
        .arg("follow")
        .arg("--config")
        .arg(&config)
        .args(["--interval", "200ms", "--landing"])
        .arg(fx.landing_dir())
        .arg("--warehouse")
        .arg(fx.warehouse_dir())
        .env("TAGFLOW_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let wait_for = |what: &str, check: &dyn Fn(&Tags) -> bool| {
        let started = Instant::now();
        loop {
            if fx.warehouse_dir().join("customer_tags/_delta_log").is_dir() {
                let tags = runtime.block_on(fx.published(None));
                if check(&tags) {
                    return;
                }
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "follow never published {what}:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    wait_for("c1", &|t| t.value("c1", "lifecycle").as_deref() == Some("new"));

    fx.carts("dt=today/b.parquet", &[cart_add("k2", "c2", &at(60), 2, Some(10.0))]);
    wait_for("c2's abandoned cart", &|t| {
        t.score("c2", "cart_abandoner") == Some(20.0)
    });

    fx.orders(
        "dt=today/c.parquet",
        &[order("k3", "c2", &at(30), "x1", "placed", 20.0)],
    );
    wait_for("c2's order", &|t| {
        t.value("c2", "cart_abandoner").is_none() && t.value("c2", "aipl_stage").is_some()
    });
    fx.clicks("dt=today/d.parquet", &[view("k4", "c3", &at(10))]);
    wait_for("c3", &|t| t.value("c3", "lifecycle").as_deref() == Some("new"));

    let status = stop_with(&mut child, libc::SIGTERM, Duration::from_secs(30));
    let log = std::fs::read_to_string(&log).unwrap();
    assert!(status.success(), "follow exits 0 on SIGTERM: {status}\n{log}");
    assert!(log.contains("SIGTERM"), "{log}");
    assert!(
        !fx.warehouse_dir().join("_tagflow/run.lock").exists(),
        "follow releases the lock"
    );
    let history = runtime
        .block_on(tagflow::publish::snapshots::list(&location(&fx.warehouse_dir())))
        .unwrap();
    let compacted_at = history
        .iter()
        .filter(|s| s.operation == "OPTIMIZE")
        .map(|s| s.version)
        .min();
    let last_publish = history.iter().filter(|s| s.is_publish()).map(|s| s.version).max();
    assert!(
        compacted_at.is_some_and(|c| Some(c) < last_publish),
        "a batch published after a compaction: {history:?}"
    );
    runtime.block_on(crate::publishing::assert_feed_matches_versions(
        &fx.warehouse_dir(),
        "follow",
    ));
}

/// `follow` keeps the state and the published rows in memory from batch to batch (a run
/// loads them): every version it publishes equals a full recomputation at that batch's
/// as-of time over the files landed before the batch. Files land between batches in random
/// chunks and order, re-sent and bad ones included. The batches' as-of times come from a
/// simulated clock that starts at today's midnight, where the history ends: it moves in
/// minutes until a batch holds events (after its as-of time), then minutes to days a
/// batch, so held events fall due and windows move across UTC days. (From midnight on, no
/// event is more than 24 h after a file's ingest time, simulated in `follow` and real in
/// the full runs, so both judge rows alike.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_follow_batch_equals_a_full_run() {
    for seed in test_seeds(41..=41) {
        let fx = Fixture::new();
        let today = Utc::now().date_naive();
        let arrivals = Arrivals::generate_until(&fx, seed, 150, 40, today).await;
        let ends = arrivals.chunk_ends(&mut ChaCha8Rng::seed_from_u64(seed), 12);
        assert!(ends.len() >= 4, "seed {seed}: several batches: {ends:?}");
        arrivals.land(&fx, 0, ends[0]);

        // Compactions between batches too (the batch after one reads the table again), and
        // micro-batches that publish live changes as well as ones that merge them.
        let config = "[compaction]\nevery_versions = 2\n[publish]\nmerge_max_changes = 40\n";
        let mut settings = fx.settings("2026-01-01T00:00:00Z", Some(config)).expect("settings");
        // The drift gates judge partial, random data; what is tested here is exactness.
        settings.force = true;
        // (version, as-of, arrivals landed) of every batch that published
        let mut batches: Vec<(tagflow::publish::Published, String, usize)> = Vec::new();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let mut stop_tx = Some(stop_tx);
        let metrics = tagflow::app::metrics::FollowMetrics::default();
        let (mut landed, mut next_chunk, mut compactions) = (ends[0], 1, 0);
        // Whether a batch has held events (after its as-of time) yet.
        let held = std::sync::atomic::AtomicBool::new(false);
        // Batches that evaluated some tags for the customers whose inputs changed only.
        let mut partial_evaluations = 0;
        // Batches whose changes stayed live (not merged into customer_tags), and those that
        // started a merge in the background.
        let (mut live_batches, mut background_merges) = (0, 0);
        let on_batch = |report: &tagflow::app::report::RunReport| {
            live_batches += usize::from(!report.published.merged);
            background_merges += usize::from(report.published.merge_started);
            let as_of = report.as_of.to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
            batches.push((report.published.clone(), as_of, landed));
            partial_evaluations += usize::from(report.tags.iter().any(|t| t.evaluated_customers.is_some()));
            held.fetch_or(report.state.held_events > 0, SeqCst);
            compactions += usize::from(report.compaction.is_some());
            if let Some(&end) = ends.get(next_chunk) {
                arrivals.land(&fx, landed, end);
                (landed, next_chunk) = (end, next_chunk + 1);
            } else if let Some(tx) = stop_tx.take() {
                tx.send(()).expect("the session is waiting");
            }
        };
        let stop = async {
            stop_rx.await.ok();
        };
        let midnight = today.and_hms_opt(0, 0, 0).expect("midnight").and_utc();
        let clock_state = std::sync::Mutex::new((ChaCha8Rng::seed_from_u64(seed ^ 0xc10c), midnight));
        // Within today, in steps of minutes, until a batch holds events; then up to days.
        let clock = || {
            let mut guard = clock_state.lock().expect("clock");
            let (rng, now) = &mut *guard;
            *now += match (held.load(SeqCst), rng.random_range(0..6)) {
                (false, _) => chrono::Duration::minutes(rng.random_range(0..30)),
                (true, 0) => chrono::Duration::days(rng.random_range(1..4)),
                (true, _) => chrono::Duration::minutes(rng.random_range(0..240)),
            };
            *now
        };
        let published = tokio::time::timeout(
            Duration::from_secs(300),
            tagflow::app::follow::follow(&settings, Duration::from_millis(20), stop, &metrics, on_batch, clock),
        )
        .await
        .expect("follow published every chunk within 5 minutes")
        .expect("follow");
        // A batch may also publish with nothing new, when a held event falls due or the day
        // changes.
        assert!(
            published >= ends.len(),
            "seed {seed}: {published} batches for {} chunks",
            ends.len()
        );
        assert!(
            held.load(SeqCst),
            "seed {seed}: some events were after a batch's as-of time"
        );
        assert!(compactions > 0, "seed {seed}: the policy compacted during the session");
        assert!(
            partial_evaluations > 0,
            "seed {seed}: some batches evaluated tags for the changed customers only"
        );
        assert!(
            live_batches > 0 && live_batches < published,
            "seed {seed}: {live_batches} of {published} batches kept their changes live, the others merged"
        );
        assert!(
            background_merges > 0,
            "seed {seed}: some merges ran in the background while batches published"
        );
        crate::publishing::assert_feed_matches_versions(&fx.warehouse_dir(), &format!("seed {seed}")).await;

        let reference = Fixture::new();
        let mut landed = 0;
        for (published, as_of, upto) in batches {
            arrivals.land(&reference, landed, upto);
            landed = upto;
            let version = (published.version, published.feed_version);
            assert_same(
                &fx.seen_after(&published).await,
                &full_tags(&reference, &as_of).await,
                &format!("seed {seed}: follow's version {version:?}, as of {as_of}, {upto} arrivals landed"),
            );
        }
    }
}

/// In `follow`, tags that change only because time passes change without any new file, at
/// the first batch after the UTC day changes, while a batch with nothing new on the same day
/// publishes nothing. The batches' as-of times come from a simulated clock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follow_publishes_when_the_utc_day_changes_without_new_files() {
    let fx = Fixture::new();
    fx.clicks("a.parquet", &[view("k1", "c1", "2026-11-10T09:00:00Z")]);
    fx.carts(
        "b.parquet",
        &[cart_add("k2", "c2", "2026-11-17T09:00:00Z", 1, Some(30.0))],
    );
    let batch_times = [
        "2026-11-19T10:00:00Z",        // the first batch publishes
        "2026-11-19T16:00:00Z",        // nothing new, same day: nothing to publish
        "2026-11-19T23:59:59.999999Z", // nor at the day's last microsecond
        "2026-11-20T00:00:01Z",        // a new UTC day
        "2026-11-20T08:00:00Z",        // nothing new again
    ];
    let batches_started = std::sync::atomic::AtomicUsize::new(0);
    let last_batch = tokio::sync::Notify::new();
    let clock = || {
        let k = batches_started.fetch_add(1, SeqCst);
        if k + 1 >= batch_times.len() {
            last_batch.notify_one(); // stop after this batch
        }
        let time = batch_times[k.min(batch_times.len() - 1)];
        chrono::DateTime::parse_from_rfc3339(time).expect("time").to_utc()
    };
    let mut published = Vec::new();
    let on_batch = |report: &tagflow::app::report::RunReport| published.push((report.as_of, report.published.version));
    let settings = fx.settings(batch_times[0], None).expect("settings");
    let metrics = tagflow::app::metrics::FollowMetrics::default();
    let batches = tokio::time::timeout(
        Duration::from_secs(120),
        tagflow::app::follow::follow(
            &settings,
            Duration::from_millis(10),
            last_batch.notified(),
            &metrics,
            on_batch,
            clock,
        ),
    )
    .await
    .expect("the session ends after its last batch")
    .expect("follow");
    assert_eq!(batches, 2);
    let as_ofs: Vec<String> = published.iter().map(|(t, _)| t.to_rfc3339()).collect();
    assert_eq!(as_ofs, ["2026-11-19T10:00:00+00:00", "2026-11-20T00:00:01+00:00"]);

    let (day_one, day_two) = (
        fx.published(Some(published[0].1)).await,
        fx.published(Some(published[1].1)).await,
    );
    // c1 was last seen on the 10th: 9, then 10 whole days ago.
    assert_eq!(day_one.score("c1", "lifecycle"), Some(9.0));
    assert_eq!(day_two.score("c1", "lifecycle"), Some(10.0));
    // c2's cart add of the 17th is within the last 3 days on the 19th (17, 18, 19), not on the 20th.
    assert_eq!(day_one.score("c2", "cart_abandoner"), Some(30.0));
    assert_eq!(day_two.value("c2", "cart_abandoner"), None);
    for ((as_of, _), tags) in published.iter().zip([&day_one, &day_two]) {
        assert_same(tags, &full_tags(&fx, &as_of.to_rfc3339()).await, &as_of.to_rfc3339());
    }
}

/// Counts of one customer and day that arrive in different runs add up (and a re-sent copy
/// in a later run does not): views, cart adds and their value, failed payments.
#[tokio::test]
async fn counts_split_across_runs_add_up() {
    let fx = Fixture::new();
    let day = "2026-11-19";
    let t = |hour: u32| format!("{day}T{hour:02}:00:00Z");
    fx.clicks("a.parquet", &[view("v1", "c1", &t(8)), view("v2", "c1", &t(9))]);
    fx.carts("a.parquet", &[cart_add("a1", "c2", &t(8), 1, Some(2.5))]);
    fx.orders(
        "a.parquet",
        &[
            order("f1", "c3", &t(8), "x1", "cancelled", 1.0),
            order("f2", "c3", &t(9), "x2", "payment_failed", 1.0),
        ],
    );
    let first = fx.run(T).await;
    assert_eq!(first.value("c1", "aipl_stage").as_deref(), Some("awareness"));
    assert_eq!(first.score("c2", "cart_abandoner"), Some(2.5));
    assert_eq!(first.value("c3", "low_credit"), None);

    fx.clicks("b.parquet", &[view("v3", "c1", &t(10)), view("v1", "c1", &t(8))]);
    fx.carts("b.parquet", &[cart_add("a2", "c2", &t(9), 3, Some(0.5))]);
    fx.orders("b.parquet", &[order("f3", "c3", &t(10), "x3", "cancelled", 1.0)]);
    let report = fx.try_run(T, None).await.unwrap();
    assert_eq!(report.mode, Mode::Incremental);
    assert_eq!(
        report.streams["clicks"].duplicates_dropped, 1,
        "v1 was counted in the first run"
    );
    let second = fx.published(None).await;
    assert_eq!(
        second.value("c1", "aipl_stage").as_deref(),
        Some("interest"),
        "2 + 1 views"
    );
    assert_eq!(second.score("c2", "cart_abandoner"), Some(4.0), "2.5 + 3 x 0.5");
    assert_eq!(second.score("c3", "low_credit"), Some(3.0));
}

/// The state commit and the publish run side by side, so a run can die after its publish
/// landed and before its state did. The next run reads the same files again into the
/// older state and publishes the same values: nothing is counted twice.
#[tokio::test]
async fn a_publish_whose_state_commit_did_not_land_is_not_counted_twice() {
    let fx = Fixture::new();
    let day = "2026-11-19";
    let t = |hour: u32| format!("{day}T{hour:02}:00:00Z");
    fx.clicks("a.parquet", &[view("v1", "c1", &t(8))]);
    fx.carts("a.parquet", &[cart_add("a1", "c2", &t(8), 1, Some(2.5))]);
    fx.run(T).await;
    let current = fx.warehouse_dir().join("_tagflow/state/CURRENT");
    let first_state = std::fs::read(&current).unwrap();

    fx.clicks("b.parquet", &[view("v2", "c1", &t(9)), view("v3", "c1", &t(10))]);
    fx.carts("b.parquet", &[cart_add("a2", "c2", &t(9), 3, Some(0.5))]);
    let published = fx.run(T).await;
    assert_eq!(
        published.value("c1", "aipl_stage").as_deref(),
        Some("interest"),
        "1 + 2 views"
    );
    assert_eq!(published.score("c2", "cart_abandoner"), Some(4.0), "2.5 + 3 x 0.5");
    // As if the second run's state commit had not landed: CURRENT names the first state.
    std::fs::write(&current, first_state).unwrap();

    let report = fx.try_run(T, None).await.unwrap();
    assert_eq!(report.mode, Mode::Incremental);
    assert_eq!(report.streams["clicks"].files, 1, "b.parquet is read again");
    assert_eq!(
        report.streams["clicks"].duplicates_dropped, 0,
        "its events were not remembered"
    );
    let again = fx.published(None).await;
    assert_eq!(again.value("c1", "aipl_stage").as_deref(), Some("interest"));
    assert_eq!(again.score("c2", "cart_abandoner"), Some(4.0), "not 2.5 + 2 x 1.5");
    assert_eq!(report.published.changes.map(|c| c.total()), Some(0), "the same table");
}

/// `order_payments` keeps each order's earliest `paid` event (`first_by`), whether the
/// repeats of an order come in one batch or in later ones.
#[tokio::test]
async fn an_orders_earliest_paid_event_wins_within_and_across_batches() {
    let fx = Fixture::new();
    let t = |hour: u32| format!("2026-11-19T{hour:02}:00:00Z");
    fx.orders(
        "a.parquet",
        &[
            order("p2", "c1", &t(10), "x1", "paid", 10.0).brand("A"),
            // x2 is paid twice in one batch: the earlier event (p4) wins
            order("p3", "c1", &t(11), "x2", "paid", 20.0).brand("B"),
            order("p4", "c1", &t(9), "x2", "paid", 30.0).brand("C"),
        ],
    );
    let first = fx.run(T).await;
    assert_eq!(first.score("c1", "rfm_tier"), Some(40.0), "x1 10 + x2 30");

    fx.orders(
        "b.parquet",
        &[
            // x1 was paid earlier than the first batch knew: now 50, brand D
            order("p1", "c1", &t(8), "x1", "paid", 50.0).brand("D"),
            // a later paid event of x2 changes nothing
            order("p5", "c1", &t(12), "x2", "paid", 99.0).brand("B"),
            order("p6", "c1", &t(13), "x3", "paid", 5.0).brand("D"),
        ],
    );
    let report = fx.try_run(T, None).await.unwrap();
    assert_eq!(report.mode, Mode::Incremental);
    let second = fx.published(None).await;
    assert_eq!(second.score("c1", "rfm_tier"), Some(85.0), "x1 50 + x2 30 + x3 5");
    assert_eq!(second.value("c1", "brand_enthusiast").as_deref(), Some("D"), "D, C, D");
    assert_close(second.score("c1", "brand_enthusiast"), 2.0 / 3.0);
}

/// A state committed by an older build (format 1: one Parquet file per table) is read as it
/// is, and the next commit rewrites it in the current format (Arrow IPC segments).
#[tokio::test]
async fn a_parquet_state_of_format_1_is_still_read() {
    let fx = Fixture::new();
    let day = "2026-11-19";
    let t = |hour: u32| format!("{day}T{hour:02}:00:00Z");
    fx.clicks("a.parquet", &[view("v1", "c1", &t(8)), view("v2", "c1", &t(9))]);
    fx.carts("a.parquet", &[cart_add("a1", "c2", &t(8), 1, Some(2.5))]);
    fx.run(T).await;

    let state = fx.warehouse_dir().join("_tagflow/state");
    let pointer: serde_json::Value = serde_json::from_slice(&std::fs::read(state.join("CURRENT")).unwrap()).unwrap();
    let manifest_path = state.join(pointer["manifest"].as_str().unwrap());
    let mut manifest: serde_json::Value = serde_json::from_slice(&std::fs::read(&manifest_path).unwrap()).unwrap();
    manifest["format"] = 1.into();
    let tables = manifest["tables"].as_object_mut().unwrap();
    assert!(!tables.is_empty());
    for (name, table) in tables.iter_mut() {
        // Format 1: the rows of every segment in one Parquet file.
        let parquet_file = format!("tables/{name}-1.parquet");
        let mut writer = None;
        for segment in table.as_array().expect("format 3 lists segments") {
            let arrow_file = state.join(segment["file"].as_str().unwrap());
            let reader = arrow::ipc::reader::FileReader::try_new(std::fs::File::open(&arrow_file).unwrap(), None)
                .expect("state segments are Arrow IPC files");
            let writer = writer.get_or_insert_with(|| {
                parquet::arrow::ArrowWriter::try_new(
                    std::fs::File::create(state.join(&parquet_file)).unwrap(),
                    reader.schema(),
                    None,
                )
                .unwrap()
            });
            for batch in reader {
                writer.write(&batch.unwrap()).unwrap();
            }
            std::fs::remove_file(arrow_file).unwrap();
        }
        writer.expect("a table has a segment").close().unwrap();
        *table = parquet_file.into();
    }
    std::fs::write(&manifest_path, serde_json::to_vec(&manifest).unwrap()).unwrap();

    fx.clicks("b.parquet", &[view("v3", "c1", &t(10))]);
    fx.carts("b.parquet", &[cart_add("a2", "c2", &t(9), 3, Some(0.5))]);
    let report = fx.try_run(T, None).await.unwrap();
    assert_eq!(report.mode, Mode::Incremental, "the Parquet state is read, not rebuilt");
    let tags = fx.published(None).await;
    assert_eq!(
        tags.value("c1", "aipl_stage").as_deref(),
        Some("interest"),
        "2 + 1 views"
    );
    assert_eq!(tags.score("c2", "cart_abandoner"), Some(4.0), "2.5 + 3 x 0.5");
    let rewritten: Vec<String> = files_under(&state.join("tables"));
    let arrow_files: Vec<&String> = rewritten.iter().filter(|f| f.ends_with(".arrow")).collect();
    assert!(
        !arrow_files.is_empty(),
        "the next commit writes Arrow IPC: {rewritten:?}"
    );
    let compression: Vec<_> = arrow_files
        .iter()
        .flat_map(|file| ipc_batch_compression(&std::fs::read(state.join("tables").join(file)).unwrap()))
        .collect();
    assert!(!compression.is_empty());
    assert!(compression.iter().all(Option::is_none), "uncompressed on local files");
}

/// A micro-batch within a UTC day evaluates the tags of `scope = "customer"` for the
/// customers whose state rows changed, and keeps everyone else's rows, and the table still
/// equals a full run: here a batch touches a handful of customers among 60, and reaches
/// untouched ones through a cross-customer dependency (a fifth customer on a device makes it
/// shared: `shared_device`, evaluated for the customers linked by a device to a changed one,
/// and `marketing_blacklist`, which reads it, change for the four who sent nothing) and
/// through an order whose earliest paid event now names another customer (the first payer
/// loses the order without a new event).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_micro_batch_evaluates_what_changed_and_equals_a_full_run() {
    let fx = Fixture::new();
    let mut first: Vec<Click> = (0..60)
        .map(|i| view(&format!("k{i}"), &format!("c{i}"), "2026-11-15T10:00:00Z").category("shoes"))
        .collect();
    first.extend((1..=4).map(|i| view(&format!("kd{i}"), &format!("s{i}"), "2026-11-16T10:00:00Z").device("d1")));
    fx.clicks("dt=2026-11-16/a.parquet", &first);
    fx.orders(
        "dt=2026-11-16/a.parquet",
        &[
            paid("o1", "p1", "2026-11-10T10:00:00Z", "order-1", 40.0),
            paid("o2", "p1", "2026-11-12T10:00:00Z", "order-2", 60.0),
        ],
    );
    let settings = fx.settings("2026-01-01T00:00:00Z", None).expect("settings");
    let times = ["2026-11-20T10:00:00Z", "2026-11-20T11:00:00Z"];
    let reports = follow_at(&settings, &times, |batch| {
        if batch == 1 {
            // The batch: a fifth customer on d1, an earlier paid event of order-1 by p2,
            // and one more view by c7.
            fx.clicks(
                "dt=2026-11-20/b.parquet",
                &[
                    view("kd5", "s5", "2026-11-20T09:00:00Z").device("d1"),
                    view("k-c7", "c7", "2026-11-20T09:30:00Z"),
                ],
            );
            fx.orders(
                "dt=2026-11-20/b.parquet",
                &[paid("o3", "p2", "2026-11-09T10:00:00Z", "order-1", 45.0)],
            );
        }
    })
    .await;
    assert_eq!(reports.len(), 2, "two batches published");
    let batch = &reports[1];

    let tags = fx.seen_after(&batch.published).await;
    assert_same(
        &tags,
        &full_tags(&fx, "2026-11-20T11:00:00Z").await,
        "after the micro-batch",
    );
    assert_eq!(
        tags.customers("marketing_blacklist"),
        ["s1", "s2", "s3", "s4", "s5"],
        "reached through the shared device"
    );

    let evaluated = |tag: &str| {
        batch
            .tags
            .iter()
            .find(|t| t.tag == tag)
            .unwrap_or_else(|| panic!("{tag} in the report"))
            .evaluated_customers
    };
    // The state rows of s5, c7, p2 and p1 (who lost order-1) changed; device_days also names
    // s5 only. Everything of scope "customer" is evaluated for those four.
    assert_eq!(evaluated("lifecycle"), Some(4));
    assert_eq!(evaluated("repurchaser"), Some(4));
    // Customers linked by a device: the four, and s1 to s4, who share d1 with s5.
    assert_eq!(evaluated("shared_device"), Some(8));
    // ... so, for the blacklist, s1 to s4 too, whose shared_device rows changed.
    assert_eq!(evaluated("marketing_blacklist"), Some(8));
    // p2's earlier payment moved the spend bar over every buyer: everyone.
    assert_eq!(evaluated("rfm_tier"), None);
    assert_eq!(
        reports[0]
            .tags
            .iter()
            .filter(|t| t.evaluated_customers.is_some())
            .count(),
        0
    );
}

/// A population's figure reaches customers who sent nothing: `rfm_tier` reads the 80th
/// percentile of spend (`spend_threshold`, one row for everyone). A micro-batch that leaves
/// it where it was evaluates `rfm_tier` for the changed customers only; one whose new order
/// moves it evaluates everyone, and a buyer who sent nothing drops from big_spender to
/// casual; what services see then equals a full run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_moved_percentile_reaches_untouched_customers_and_a_still_one_does_not() {
    let fx = Fixture::new();
    // Ten buyers of 10, 20, ..., 100: the nearest-rank 80th percentile is 80.
    let orders: Vec<_> = (1..=10)
        .map(|i| {
            paid(
                &format!("o{i}"),
                &format!("b{i}"),
                "2026-11-10T10:00:00Z",
                &format!("order-{i}"),
                10.0 * i as f64,
            )
        })
        .collect();
    fx.orders("dt=2026-11-10/a.parquet", &orders);
    let settings = fx.settings("2026-01-01T00:00:00Z", None).expect("settings");
    let times = ["2026-11-20T10:00:00Z", "2026-11-20T10:30:00Z", "2026-11-20T11:00:00Z"];
    let reports = follow_at(&settings, &times, |batch| match batch {
        // A visitor who buys nothing: the percentile stays.
        1 => {
            fx.clicks("dt=2026-11-20/b.parquet", &[view("k-v1", "v1", "2026-11-20T09:00:00Z")]);
        }
        // A new buyer of 1000: eleven buyers, the bar moves to 90.
        2 => {
            fx.orders(
                "dt=2026-11-20/c.parquet",
                &[paid("o-n1", "n1", "2026-11-20T09:30:00Z", "order-n1", 1000.0)],
            );
        }
        _ => {}
    })
    .await;
    assert_eq!(reports.len(), 3, "three batches published");
    let rfm_evaluated = |report: &tagflow::app::report::RunReport| {
        report
            .tags
            .iter()
            .find(|t| t.tag == "rfm_tier")
            .expect("rfm_tier ran")
            .evaluated_customers
    };
    assert_eq!(rfm_evaluated(&reports[1]), Some(1), "the percentile stayed: v1 only");
    assert_eq!(rfm_evaluated(&reports[2]), None, "the percentile moved: everyone");
    let (still, moved) = (
        fx.seen_after(&reports[1].published).await,
        fx.seen_after(&reports[2].published).await,
    );
    assert_eq!(still.value("b8", "rfm_tier").as_deref(), Some("big_spender"));
    assert_eq!(
        moved.value("b8", "rfm_tier").as_deref(),
        Some("casual"),
        "b8 sent nothing"
    );
    assert_same(
        &moved,
        &full_tags(&fx, "2026-11-20T11:00:00Z").await,
        "after the moving batch",
    );
}

/// A `follow` session in this process whose batches run at `times` (a simulated clock),
/// stopped after the last of them publishes; `after_batch(k)` runs once batch `k` (from 1)
/// has published, to land the next batch's files. The batches' reports, in order.
pub(crate) async fn follow_at(
    settings: &tagflow::config::Settings,
    times: &[&str],
    mut after_batch: impl FnMut(usize),
) -> Vec<tagflow::app::report::RunReport> {
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let mut stop_tx = Some(stop_tx);
    let mut reports: Vec<tagflow::app::report::RunReport> = Vec::new();
    let on_batch = |report: &tagflow::app::report::RunReport| {
        reports.push(report.clone());
        after_batch(reports.len());
        if reports.len() >= times.len() {
            if let Some(tx) = stop_tx.take() {
                tx.send(()).expect("the session is waiting");
            }
        }
    };
    let next_time = std::sync::atomic::AtomicUsize::new(0);
    let clock = || {
        let k = next_time.fetch_add(1, SeqCst).min(times.len() - 1);
        chrono::DateTime::parse_from_rfc3339(times[k])
            .unwrap()
            .with_timezone(&Utc)
    };
    let metrics = tagflow::app::metrics::FollowMetrics::default();
    let stop = async {
        stop_rx.await.ok();
    };
    tagflow::app::follow::follow(settings, Duration::from_millis(20), stop, &metrics, on_batch, clock)
        .await
        .expect("follow");
    reports
}
