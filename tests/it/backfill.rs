//! Backfills: one snapshot per day in `customer_tags_history`, each equal to a full run as
//! of that day's end; a re-run replaces days and never duplicates them; the live table and
//! state are not touched.

use std::collections::BTreeMap;

use arrow::array::{Array, Date32Array, Int64Array};
use chrono::NaiveDate;
use tagflow::app::backfill::{backfill, end_of, Range};
use tagflow::app::error::exit;
use tagflow::publish::query_published;
use tagflow::publish::tables::HISTORY_TABLE;

use crate::incremental::{assert_same, full_tags};
use crate::support::*;

fn day(text: &str) -> NaiveDate {
    text.parse().unwrap()
}

fn daily(from: &str, to: &str, every_days: u64) -> Range {
    Range::new(day(from), day(to), std::time::Duration::from_secs(86_400 * every_days)).unwrap()
}

/// The history table's rows of one day.
async fn history_day(fx: &Fixture, date: NaiveDate) -> Tags {
    let sql = format!(
        "SELECT customer_id, family, tag, value, score FROM {HISTORY_TABLE} \
         WHERE snapshot_date = DATE '{date}' ORDER BY tag, customer_id"
    );
    let batches = query_published(&location(&fx.warehouse_dir()), HISTORY_TABLE, None, &sql)
        .await
        .unwrap();
    tags_from(&batches)
}

/// Per snapshot_date: rows, distinct as-of times, distinct (customer, tag).
async fn days_in_history(fx: &Fixture) -> BTreeMap<i32, (i64, i64, i64)> {
    let sql = format!(
        "SELECT snapshot_date, count(*) AS n, count(DISTINCT as_of) AS as_ofs, \
         count(DISTINCT concat(customer_id, '/', tag)) AS keys FROM {HISTORY_TABLE} GROUP BY snapshot_date"
    );
    let batches = query_published(&location(&fx.warehouse_dir()), HISTORY_TABLE, None, &sql)
        .await
        .unwrap();
    let mut out = BTreeMap::new();
    for b in &batches {
        let dates = b.column(0).as_any().downcast_ref::<Date32Array>().unwrap();
        let int = |i: usize| b.column(i).as_any().downcast_ref::<Int64Array>().unwrap().clone();
        let (n, as_ofs, keys) = (int(1), int(2), int(3));
        for i in 0..b.num_rows() {
            out.insert(dates.value(i), (n.value(i), as_ofs.value(i), keys.value(i)));
        }
    }
    out
}

#[tokio::test]
async fn one_snapshot_per_day_equal_to_a_full_run_and_a_rerun_replaces() {
    let fx = Fixture::new();
    generate_into(&fx.landing_dir(), 200, 60, 8).await;
    let settings = fx.settings("2026-11-19T23:59:59Z", None).unwrap();
    let mut seen_days = Vec::new();
    let first = backfill(&settings, daily("2026-11-12", "2026-11-19", 1), |d, n| {
        seen_days.push((d.date, n))
    })
    .await
    .expect("backfill");
    assert_eq!(first.days.len(), 8);
    assert_eq!(seen_days.len(), 8, "progress sees every day");
    assert!(first
        .days
        .windows(2)
        .all(|w| w[0].date < w[1].date && w[0].version < w[1].version));

    // Each day equals a full run as of that day's end (spot checks: first, middle, last,
    // and the day after the data ends, when only time moves).
    for date in ["2026-11-12", "2026-11-15", "2026-11-19"] {
        let as_of = end_of(day(date)).to_rfc3339();
        assert_same(&history_day(&fx, day(date)).await, &full_tags(&fx, &as_of).await, date);
    }
    let before = days_in_history(&fx).await;
    assert_eq!(before.len(), 8);
    assert!(
        before
            .values()
            .all(|(n, as_ofs, keys)| *as_ofs == 1 && n == keys && *n > 0),
        "{before:?}"
    );

    // An overlapping re-run: its days are replaced, the others stay, none is doubled.
    let second = backfill(&settings, daily("2026-11-16", "2026-11-22", 2), |_, _| {})
        .await
        .expect("re-run");
    assert_eq!(
        second.days.iter().map(|d| d.date.to_string()).collect::<Vec<_>>(),
        ["2026-11-16", "2026-11-18", "2026-11-20", "2026-11-22"]
    );
    let after = days_in_history(&fx).await;
    assert_eq!(after.len(), 10, "8 days and 2 new ones: {after:?}");
    for (date, counts) in &before {
        assert_eq!(
            after.get(date),
            Some(counts),
            "day {date} replaced by the same snapshot"
        );
    }
    assert!(after.values().all(|(n, as_ofs, keys)| *as_ofs == 1 && n == keys));
    let as_of = end_of(day("2026-11-22")).to_rfc3339();
    assert_same(
        &history_day(&fx, day("2026-11-22")).await,
        &full_tags(&fx, &as_of).await,
        "2026-11-22",
    );

    // The live table and the state were never written (full_tags used its own warehouse).
    assert!(!fx.warehouse_dir().join("customer_tags").exists());
    assert!(!fx.warehouse_dir().join(tagflow::state::STATE_DIR).exists());
}

#[test]
fn backfill_ranges_are_checked_before_anything_runs() {
    let fx = Fixture::new();
    fx.clicks("a.parquet", &[view("k1", "c1", "2026-11-19T10:00:00Z")]);
    for (args, message) in [
        (
            ["--from", "2026-11-10", "--to", "2026-11-09", "--every", "1d"],
            "is after --to",
        ),
        (
            ["--from", "2026-11-01", "--to", "2026-11-09", "--every", "36h"],
            "whole number of days",
        ),
    ] {
        let out = fx.command(&["backfill"]).args(args).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(exit::CONFIG), "{stderr}");
        assert!(stderr.contains(message), "{stderr}");
        assert!(!fx.warehouse_dir().exists(), "nothing written");
    }
}

/// A terminal gets progress bars; a pipe, JSON or CI get none.
#[tokio::test]
async fn progress_bars_only_at_a_terminal() {
    let fx = Fixture::new();
    generate_into(&fx.landing_dir(), 50, 30, 9).await;
    let command = format!(
        "{} backfill --from 2026-11-10 --to 2026-11-19 --landing {} --warehouse {} 2>/dev/null",
        env!("CARGO_BIN_EXE_tagflow"),
        fx.landing_dir().display(),
        fx.warehouse_dir().display()
    );
    let pty = |ci: bool| {
        // `script` (util-linux) runs the command with a pseudo-terminal as its stdout.
        let transcript = fx.dir.path().join("pty.out");
        let mut script = std::process::Command::new("script");
        script
            .args(["-qec", &command])
            .arg(&transcript)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .stdout(std::process::Stdio::null());
        match ci {
            true => script.env("CI", "true"),
            false => script.env_remove("CI"),
        };
        assert!(script.status().expect("script (util-linux) runs").success());
        String::from_utf8_lossy(&std::fs::read(transcript).unwrap()).into_owned()
    };
    let at_terminal = pty(false);
    assert!(at_terminal.contains("days ["), "{at_terminal}");
    assert!(at_terminal.contains("2026-11-19  version"), "the report follows");
    assert!(!pty(true).contains("days ["), "no bars in CI");
    let piped = fx
        .command(&["backfill", "--from", "2026-11-10", "--to", "2026-11-12"])
        .env_remove("CI")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&piped.stdout);
    assert!(
        piped.status.success() && !stdout.contains('[') && !stdout.contains('\r'),
        "{stdout}"
    );
}
