//! State tables are stored in segments: a fold rewrites the segments its rows touch and
//! keeps the others (the same files), day tables per day, other tables per key.

use crate::incremental::{assert_same, full_tags};
use crate::support::*;

/// The segments of a state table in the committed manifest: (file, day).
fn segments(fx: &Fixture, table: &str) -> Vec<(String, Option<i64>)> {
    let state = fx.warehouse_dir().join("_tagflow/state");
    let read = |path: std::path::PathBuf| -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(&path).expect("state file")).expect("json")
    };
    let pointer = read(state.join("CURRENT"));
    let manifest = read(state.join(pointer["manifest"].as_str().expect("manifest path")));
    manifest["tables"][table]
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

    // A late click on d1 rewrites d1 alone; an earlier paid event of x1 rewrites the segment
    // holding x1 (x2 with it) and keeps the one holding x3.
    let as_of = format!("{d3}T23:30:00Z");
    fx.clicks("c.parquet", &[view("v5", "c2", &format!("{d1}T12:00:00Z"))]);
    fx.orders("c.parquet", &[paid("p0", "c1", &format!("{d1}T09:00:00Z"), "x1", 50.0)]);
    let third = fx.try_run(&as_of, None).await.unwrap();
    assert_eq!(folded(&third, "customer_days"), (2, 5), "d1: c1 and c2");
    assert_eq!(folded(&third, "order_payments"), (2, 3), "x1 merged, x2 carried along");
    let days_3 = segments(&fx, "customer_days");
    assert_eq!(days_3[1..], days_2[1..], "d2 and d3 are kept");
    assert_ne!(days_3[0], days_2[0], "d1 is rewritten");
    let orders_3 = segments(&fx, "order_payments");
    assert!(orders_3.contains(&orders_2[1]), "the segment of x3 is kept");
    assert!(!orders_3.contains(&orders_2[0]), "the segment of x1 is rewritten");
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
                assert_eq!(rewritten, 2, "run {i}: the new order and the smallest segment");
                assert_eq!(count, 8, "run {i}");
            }
        }
    }
    let tags = fx.published(None).await;
    assert_eq!(tags.score("c1", "rfm_tier"), Some(10.0));
    assert_same(&tags, &full_tags(&fx, T).await, "after ten runs");
}
