//! State tables are stored in segments: a fold writes the rows of the keys it touches as new
//! segments and keeps every older file as it was (a key's newest segment holds its row),
//! day tables per day, and joins segments where a day or a keyed table has too many.

use crate::incremental::{assert_same, full_tags};
use crate::support::*;

/// The committed state manifest.
fn manifest(fx: &Fixture) -> serde_json::Value {
    let state = fx.warehouse_dir().join("_tagflow/state");
    let read = |path: std::path::PathBuf| -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(&path).expect("state file")).expect("json")
    };
    let pointer = read(state.join("CURRENT"));
    read(state.join(pointer["manifest"].as_str().expect("manifest path")))
}

/// The segments of a state table in the committed manifest: (file, day).
fn segments(fx: &Fixture, table: &str) -> Vec<(String, Option<i64>)> {
    manifest(fx)["tables"][table]
        .as_array()
        .expect("a table lists its segments")
        .iter()
        .map(|s| (s["file"].as_str().expect("file").to_string(), s["day"].as_i64()))
        .collect()
}

fn day(date: &str) -> i64 {
    micros(&format!("{date}T00:00:00Z")).div_euclid(86_400_000_000)
}

/// (rows rewritten, rows) of a state table in a run's report.
fn folded(report: &tagflow::app::report::RunReport, table: &str) -> (usize, usize) {
    let t = &report.state.tables[table];
    (t.rows_rewritten, t.rows)
}

#[tokio::test]
async fn a_fold_rewrites_only_the_days_and_keys_it_touches() {
    let fx = Fixture::new();
    let (d1, d2, d3) = ("2026-11-17", "2026-11-18", "2026-11-19");
    fx.clicks(
        "a.parquet",
        &[
            view("v1", "c1", &format!("{d1}T08:00:00Z")),
            view("v2", "c1", &format!("{d2}T08:00:00Z")),
            view("v3", "c2", &format!("{d2}T09:00:00Z")),
        ],
    );
    fx.orders(
        "a.parquet",
        &[
            paid("p1", "c1", &format!("{d1}T10:00:00Z"), "x1", 10.0),
            paid("p2", "c2", &format!("{d2}T10:00:00Z"), "x2", 20.0),
        ],
    );
    let first = fx.try_run(&format!("{d2}T23:00:00Z"), None).await.unwrap();
    assert_eq!(folded(&first, "customer_days"), (3, 3));
    assert_eq!(folded(&first, "order_payments"), (2, 2));
    let days_1 = segments(&fx, "customer_days");
    assert_eq!(
        days_1.iter().map(|(_, d)| *d).collect::<Vec<_>>(),
        vec![Some(day(d1)), Some(day(d2))],
        "one segment per day"
    );
    let categories_1 = segments(&fx, "customer_category_days");
    assert_eq!(
        folded(&first, "customer_category_days"),
        (0, 0),
        "no view has a category"
    );
    assert_eq!(
        categories_1.len(),
        1,
        "an empty table keeps an empty segment (its schema)"
    );
    assert_eq!(categories_1[0].1, None);
    let orders_1 = segments(&fx, "order_payments");
    assert_eq!(orders_1.len(), 1);
    assert_eq!(orders_1[0].1, None, "a keyed table's segments have no day");

    // A new day and a new order: only they are written.
    fx.clicks(
        "b.parquet",
        &[view("v4", "c1", &format!("{d3}T08:00:00Z")).category("shoes")],
    );
    fx.orders("b.parquet", &[paid("p3", "c1", &format!("{d3}T10:00:00Z"), "x3", 5.0)]);
    let second = fx.try_run(&format!("{d3}T23:00:00Z"), None).await.unwrap();
    assert_eq!(folded(&second, "customer_days"), (1, 4));
    assert_eq!(folded(&second, "order_payments"), (1, 3));
    assert_eq!(folded(&second, "customer_category_days"), (1, 1));
    assert_eq!(
        segments(&fx, "customer_category_days")
            .iter()
            .map(|(_, d)| *d)
            .collect::<Vec<_>>(),
        vec![Some(day(d3))],
        "the empty segment is replaced"
    );
    let days_2 = segments(&fx, "customer_days");
    assert_eq!(days_2[..2], days_1[..], "the untouched days are the same files");
    assert_eq!(days_2[2].1, Some(day(d3)));
    let orders_2 = segments(&fx, "order_payments");
    assert_eq!(orders_2.len(), 2);
    assert_eq!(orders_2[0], orders_1[0], "the first segment is kept");

    // A late click of c2 on d1 adds a segment to d1 holding c2's row alone (c1's row of d1
    // stays in its file); an earlier paid event of x1 adds a segment holding x1 alone. Every older file is kept: their
    // stale rows of c1 on d1 and of x1 give way to the newer segments.
    let as_of = format!("{d3}T23:30:00Z");
    fx.clicks("c.parquet", &[view("v5", "c2", &format!("{d1}T12:00:00Z"))]);
    fx.orders("c.parquet", &[paid("p0", "c1", &format!("{d1}T09:00:00Z"), "x1", 50.0)]);
    let third = fx.try_run(&as_of, None).await.unwrap();
    assert_eq!(folded(&third, "customer_days"), (1, 5), "d1: c2's row only");
    assert_eq!(folded(&third, "order_payments"), (1, 3), "x1 merged, alone");
    let days_3 = segments(&fx, "customer_days");
    assert!(
        days_2.iter().all(|s| days_3.contains(s)),
        "no file is rewritten: {days_3:?}"
    );
    let added: Vec<_> = days_3.iter().filter(|s| !days_2.contains(s)).collect();
    assert_eq!(added.len(), 1);
    assert_eq!(added[0].1, Some(day(d1)), "a second segment of d1");
    let orders_3 = segments(&fx, "order_payments");
    assert!(orders_2.iter().all(|s| orders_3.contains(s)), "no file is rewritten");
    assert_eq!(orders_3.len(), 3);
    let tags = fx.published(None).await;
    assert_eq!(tags.score("c1", "rfm_tier"), Some(55.0), "x1 now 50, x3 5");
    assert_same(&tags, &full_tags(&fx, &as_of).await, "after a late event");

    // Past every window: the day segments expire without any new event, and the table
    // keeps an empty segment.
    let later = "2026-12-25T00:00:00Z";
    let fourth = fx.try_run(later, None).await.unwrap();
    assert_eq!(folded(&fourth, "customer_days"), (0, 0));
    assert_eq!(
        folded(&fourth, "order_payments"),
        (0, 3),
        "kept for all time, nothing rewritten"
    );
    let days_4 = segments(&fx, "customer_days");
    assert_eq!(days_4.len(), 1, "{days_4:?}");
    assert_eq!(days_4[0].1, None);
    assert_eq!(segments(&fx, "order_payments"), orders_3);
    assert_same(&fx.published(None).await, &full_tags(&fx, later).await, "after expiry");
}

#[tokio::test]
async fn a_keyed_table_merges_its_smallest_segments_past_eight() {
    let fx = Fixture::new();
    for i in 1..=10u32 {
        let order_id = format!("x{i}");
        fx.orders(
            &format!("{i}.parquet"),
            &[paid(
                &format!("p{i}"),
                "c1",
                &format!("2026-11-19T{i:02}:00:00Z"),
                &order_id,
                1.0,
            )],
        );
        let report = fx.try_run(T, None).await.unwrap();
        let (rewritten, rows) = folded(&report, "order_payments");
        assert_eq!(rows, i as usize);
        let count = segments(&fx, "order_payments").len();
        match i {
            1..=8 => {
                assert_eq!(rewritten, 1, "run {i}: only the new order");
                assert_eq!(count, i as usize, "run {i}");
            }
            _ => {
                assert_eq!(
                    rewritten, 3,
                    "run {i}: the new order, and the two smallest segments joined"
                );
                assert_eq!(count, 8, "run {i}");
            }
        }
    }
    let tags = fx.published(None).await;
    assert_eq!(tags.score("c1", "rfm_tier"), Some(10.0));
    assert_same(&tags, &full_tags(&fx, T).await, "after ten runs");
}

/// The committed manifest's list at `pointer` (a JSON pointer): segment files.
fn listed_segments(fx: &Fixture, pointer: &str) -> Vec<String> {
    manifest(fx)
        .pointer(pointer)
        .and_then(|list| list.as_array())
        .unwrap_or_else(|| panic!("the manifest lists {pointer}"))
        .iter()
        .map(|s| s.as_str().expect("file").to_string())
        .collect()
}

/// A list's `segments` after run `run`: those written whole are the first run's (kept in
/// `first_whole`), and there are at most `bound`.
fn assert_joined_segments(run: u32, segments: &[String], first_whole: &mut Vec<String>, bound: usize) {
    let whole: Vec<String> = segments.iter().filter(|f| f.contains("-all.")).cloned().collect();
    match run {
        1 => *first_whole = whole,
        _ => assert!(
            whole.iter().all(|f| first_whole.contains(f)),
            "run {run}: rewritten whole: {segments:?}"
        ),
    }
    assert!(segments.len() <= bound, "run {run}: {} segments", segments.len());
}

#[tokio::test]
async fn a_days_ids_and_the_processed_files_are_joined_newest_first_never_rewritten_whole() {
    let fx = Fixture::new();
    let state = fx.warehouse_dir().join("_tagflow/state");
    let runs = 24u32;
    // The first run starts the state and writes each list whole; none after it does. Past
    // 8 id segments a day (16 processed-file segments), the newest are joined: a binary
    // counter keeps at most that many plus log2(runs).
    let (mut first_ids, mut first_files) = (Vec::new(), Vec::new());
    for i in 1..=runs {
        fx.clicks(
            &format!("{i}.parquet"),
            &[view(
                &format!("v{i}"),
                "c1",
                &format!("2026-11-19T{:02}:{:02}:00Z", i / 60, i % 60),
            )],
        );
        let report = fx.try_run(T, None).await.unwrap();
        assert_eq!(report.streams["clicks"].duplicates_dropped, 0, "run {i}");

        let ids = listed_segments(&fx, &format!("/seen/clicks/{}", day("2026-11-19")));
        assert_joined_segments(i, &ids, &mut first_ids, 8 + 5);
        let count: u64 = ids
            .iter()
            .map(|f| std::fs::metadata(state.join(f)).expect("segment").len() / 16)
            .sum();
        assert_eq!(count, u64::from(i), "run {i}: each id once");
        if i > 8 {
            assert!(ids.len() < i as usize, "run {i}: id segments joined");
        }

        let files = listed_segments(&fx, "/files");
        assert_joined_segments(i, &files, &mut first_files, 16 + 5);
        let listed: Vec<String> = files
            .iter()
            .flat_map(|f| {
                let list: Vec<serde_json::Value> =
                    serde_json::from_slice(&std::fs::read(state.join(f)).expect("segment")).expect("json");
                list.into_iter().map(|p| p["path"].as_str().expect("path").to_string())
            })
            .collect();
        let distinct: std::collections::BTreeSet<&String> = listed.iter().collect();
        assert_eq!(
            (listed.len(), distinct.len()),
            (i as usize, i as usize),
            "run {i}: each file once"
        );
        if i > 16 {
            assert!(files.len() < i as usize, "run {i}: file segments joined");
        }
    }
    // Everything is still known after the joins, in runs that load the joined segments: a
    // re-sent event is dropped, and a landed file is not read again.
    fx.clicks("again.parquet", &[view("v3", "c1", "2026-11-19T00:03:00Z")]);
    let report = fx.try_run(T, None).await.unwrap();
    assert_eq!(report.streams["clicks"].duplicates_dropped, 1);
    assert_eq!(report.streams["clicks"].files, 1, "only the new file is read");
    assert_same(&fx.published(None).await, &full_tags(&fx, T).await, "after the joins");
}
