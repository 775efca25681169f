//! Risk tags (refund_risk, low_credit, shared_device, marketing_blacklist) on hand-made events.
//! Every expected row is derived from `/work/shared/spec/tags.md`, not from the SQL. As of
//! T = 2026-11-20T12:00:00Z: the 365-day window starts 2025-11-21, the 30-day one 2026-10-22.

use std::collections::BTreeSet;

use crate::support::*;

/// `n` paid orders `<customer>-1..n` of `customer`, one on the first day of each month of 2026.
fn monthly_paid_orders(customer: &str, n: usize) -> Vec<Order> {
    (1..=n)
        .map(|i| {
            paid(
                &format!("o-{customer}-{i}"),
                customer,
                &format!("2026-{i:02}-01T10:00:00Z"),
                &format!("{customer}-{i}"),
                20.0,
            )
        })
        .collect()
}

fn refunded(id: &str, customer: &str, time: &str, order_id: &str) -> Order {
    order(id, customer, time, order_id, "refunded", 20.0)
}

/// A product view on `device`.
fn on_device(id: &str, customer: &str, time: &str, device: &str) -> Click {
    view(id, customer, time).device(device)
}

#[tokio::test]
async fn refund_risk_needs_two_refunds_and_a_ratio_of_orders_365() {
    // ratio = refunded orders (refund time in 365 days) / max(orders_365, 1), tagged when ≥ 2 refunds
    // and ratio ≥ 0.3.
    let fx = Fixture::new();
    let mut orders = Vec::new();
    // rr_half: 4 paid, 2 refunded → 0.5.
    orders.extend(monthly_paid_orders("rr_half", 4));
    orders.extend([
        refunded("r-h1", "rr_half", "2026-10-01T10:00:00Z", "rr_half-1"),
        refunded("r-h2", "rr_half", "2026-10-02T10:00:00Z", "rr_half-2"),
    ]);
    // rr_low: 7 paid, 2 refunded → 2/7 < 0.3: absent.
    orders.extend(monthly_paid_orders("rr_low", 7));
    orders.extend([
        refunded("r-l1", "rr_low", "2026-10-01T10:00:00Z", "rr_low-1"),
        refunded("r-l2", "rr_low", "2026-10-02T10:00:00Z", "rr_low-2"),
    ]);
    // rr_exact: 10 paid, 3 refunded → exactly 0.3.
    orders.extend(monthly_paid_orders("rr_exact", 10));
    orders.extend([
        refunded("r-e1", "rr_exact", "2026-10-10T10:00:00Z", "rr_exact-1"),
        refunded("r-e2", "rr_exact", "2026-10-11T10:00:00Z", "rr_exact-2"),
        refunded("r-e3", "rr_exact", "2026-10-12T10:00:00Z", "rr_exact-3"),
    ]);
    orders.extend([
        // rr_no_orders: orders paid in 2024, refunded in 2026: orders_365 = 0 → 2 / max(0, 1) = 2.
        paid("o-n1", "rr_no_orders", "2024-05-01T10:00:00Z", "n1", 20.0),
        paid("o-n2", "rr_no_orders", "2024-06-01T10:00:00Z", "n2", 20.0),
        refunded("r-n1", "rr_no_orders", "2026-10-01T10:00:00Z", "n1"),
        refunded("r-n2", "rr_no_orders", "2026-10-02T10:00:00Z", "n2"),
        // rr_one: a single refund: absent.
        paid("o-o1", "rr_one", "2024-05-01T10:00:00Z", "one1", 20.0),
        refunded("r-o1", "rr_one", "2026-10-01T10:00:00Z", "one1"),
        // rr_two_events: two refund events of the same order are one refunded order: absent.
        paid("o-t1", "rr_two_events", "2026-05-01T10:00:00Z", "t1", 20.0),
        refunded("r-t1", "rr_two_events", "2026-06-01T10:00:00Z", "t1"),
        refunded("r-t2", "rr_two_events", "2026-06-02T10:00:00Z", "t1"),
    ]);
    fx.orders("dt=2026-11-20/a.parquet", &orders);
    let tags = fx.run(T).await;

    assert_eq!(
        tags.customers("refund_risk"),
        sorted(&["rr_exact", "rr_half", "rr_no_orders"])
    );
    assert_tag(&tags, "rr_half", "refund_risk", "true", Some(0.5));
    assert_tag(&tags, "rr_exact", "refund_risk", "true", Some(0.3));
    assert_tag(&tags, "rr_no_orders", "refund_risk", "true", Some(2.0));
}

#[tokio::test]
async fn refund_risk_window_uses_each_orders_earliest_refund() {
    let fx = Fixture::new();
    fx.orders(
        "dt=2026-11-20/a.parquet",
        &[
            // rw_window: orders paid 2025-06-01 (orders_365 = 0), refunded at 2025-11-21T00:00Z and at
            // T (count), 1 µs before the window and after T (do not) → 2 / 1 = 2.
            paid("o-w1", "rw_window", "2025-06-01T10:00:00Z", "w1", 20.0),
            paid("o-w2", "rw_window", "2025-06-01T10:00:00Z", "w2", 20.0),
            paid("o-w3", "rw_window", "2025-06-01T10:00:00Z", "w3", 20.0),
            paid("o-w4", "rw_window", "2025-06-01T10:00:00Z", "w4", 20.0),
            refunded("r-w1", "rw_window", FIRST_365, "w1"),
            refunded("r-w2", "rw_window", T, "w2"),
            refunded("r-w3", "rw_window", BEFORE_365, "w3"),
            refunded("r-w4", "rw_window", AFTER_T, "w4"),
            // rw_earliest: order a1 first refunded on 2025-11-20 (outside), again on 2026-01-05: the
            // earliest decides; only b1 counts → 1 refund: absent.
            refunded("r-a1", "rw_earliest", "2025-11-20T20:00:00Z", "a1"),
            refunded("r-a2", "rw_earliest", "2026-01-05T10:00:00Z", "a1"),
            refunded("r-b1", "rw_earliest", "2026-02-01T10:00:00Z", "b1"),
            // rw_paid_ratio: 3 orders paid in the window, 2 before it; 2 refunds → 2 / 3 (orders_365, not orders_all).
            paid("o-p1", "rw_paid_ratio", "2026-03-01T10:00:00Z", "p1", 20.0),
            paid("o-p2", "rw_paid_ratio", "2026-04-01T10:00:00Z", "p2", 20.0),
            paid("o-p3", "rw_paid_ratio", "2026-05-01T10:00:00Z", "p3", 20.0),
            paid("o-p4", "rw_paid_ratio", "2025-03-01T10:00:00Z", "p4", 20.0),
            paid("o-p5", "rw_paid_ratio", BEFORE_365, "p5", 20.0),
            refunded("r-p1", "rw_paid_ratio", "2026-06-01T10:00:00Z", "p1"),
            refunded("r-p2", "rw_paid_ratio", "2026-06-02T10:00:00Z", "p2"),
        ],
    );
    // rw_late: two refunds of 2026-10-01 landing in a dt=2026-11-20 file → 2 / 1 = 2.
    fx.orders(
        "dt=2026-11-20/late.parquet",
        &[
            refunded("r-l1", "rw_late", "2026-10-01T10:00:00Z", "l1"),
            refunded("r-l2", "rw_late", "2026-10-01T11:00:00Z", "l2"),
        ],
    );
    let tags = fx.run(T).await;

    assert_eq!(
        tags.customers("refund_risk"),
        sorted(&["rw_late", "rw_paid_ratio", "rw_window"])
    );
    assert_tag(&tags, "rw_window", "refund_risk", "true", Some(2.0));
    assert_tag(&tags, "rw_paid_ratio", "refund_risk", "true", Some(2.0 / 3.0));
    assert_tag(&tags, "rw_late", "refund_risk", "true", Some(2.0));
}

#[tokio::test]
async fn low_credit_counts_cancelled_and_failed_events_in_30_days() {
    let fx = Fixture::new();
    fx.orders(
        "dt=2026-11-20/a.parquet",
        &[
            // lc_three: at 2026-10-22T00:00Z, mid-window and at T → 3.
            order("o-01", "lc_three", FIRST_30, "a1", "cancelled", 10.0),
            order("o-02", "lc_three", "2026-11-05T10:00:00Z", "a2", "payment_failed", 10.0),
            order("o-03", "lc_three", T, "a3", "cancelled", 10.0),
            // lc_out: 1 µs before the window and after T do not count → 2: absent.
            order("o-04", "lc_out", BEFORE_30, "b1", "cancelled", 10.0),
            order("o-05", "lc_out", "2026-11-01T10:00:00Z", "b2", "payment_failed", 10.0),
            order("o-06", "lc_out", "2026-11-10T10:00:00Z", "b3", "cancelled", 10.0),
            order("o-07", "lc_out", AFTER_T, "b4", "payment_failed", 10.0),
            // lc_dup: 2 events, one re-sent in another file → 2: absent.
            order("o-08", "lc_dup", "2026-11-01T10:00:00Z", "c1", "cancelled", 10.0),
            order("o-09", "lc_dup", "2026-11-02T10:00:00Z", "c2", "cancelled", 10.0),
            // lc_same_order: events, not orders, are counted: 3 on one order → 3.
            order(
                "o-10",
                "lc_same_order",
                "2026-11-01T10:00:00Z",
                "d1",
                "payment_failed",
                10.0,
            ),
            order(
                "o-11",
                "lc_same_order",
                "2026-11-01T10:05:00Z",
                "d1",
                "payment_failed",
                10.0,
            ),
            order("o-12", "lc_same_order", "2026-11-01T10:10:00Z", "d1", "cancelled", 10.0),
            // lc_other_status: placed / paid / refunded events do not count → 2: absent.
            order("o-13", "lc_other_status", "2026-11-01T10:00:00Z", "e1", "placed", 10.0),
            order("o-14", "lc_other_status", "2026-11-01T10:05:00Z", "e1", "paid", 10.0),
            order(
                "o-15",
                "lc_other_status",
                "2026-11-02T10:00:00Z",
                "e1",
                "refunded",
                10.0,
            ),
            order("o-16", "lc_other_status", "2026-11-03T10:00:00Z", "e2", "placed", 10.0),
            order(
                "o-17",
                "lc_other_status",
                "2026-11-03T10:05:00Z",
                "e2",
                "cancelled",
                10.0,
            ),
            order("o-18", "lc_other_status", "2026-11-04T10:00:00Z", "e3", "placed", 10.0),
            order(
                "o-19",
                "lc_other_status",
                "2026-11-04T10:05:00Z",
                "e3",
                "payment_failed",
                10.0,
            ),
        ],
    );
    fx.orders(
        "dt=2026-11-20/resent.parquet",
        &[order("o-09", "lc_dup", "2026-11-02T10:00:00Z", "c2", "cancelled", 10.0)],
    );
    // lc_late: 4 failures of 2026-11-01 landing in a dt=2026-11-20 file → 4.
    let late: Vec<Order> = (1..=4)
        .map(|i| {
            order(
                &format!("o-late-{i}"),
                "lc_late",
                "2026-11-01T10:00:00Z",
                &format!("f{i}"),
                "payment_failed",
                10.0,
            )
        })
        .collect();
    fx.orders("dt=2026-11-20/late.parquet", &late);
    let tags = fx.run(T).await;

    assert_eq!(
        tags.customers("low_credit"),
        sorted(&["lc_late", "lc_same_order", "lc_three"])
    );
    assert_tag(&tags, "lc_three", "low_credit", "true", Some(3.0));
    assert_tag(&tags, "lc_same_order", "low_credit", "true", Some(3.0));
    assert_tag(&tags, "lc_late", "low_credit", "true", Some(4.0));
}

#[tokio::test]
async fn shared_device_needs_five_distinct_customers_and_scores_the_largest_device() {
    // dev-5: s1..s5 through clicks, a cart add and an order (s4 twice) → 5 customers.
    // dev-6: s1 and u1..u5 → 6. dev-4: t1..t4 (t1 three times) → 4, not enough.
    // Scores: s1 max(5, 6) = 6, s2..s5 5, u1..u5 6.
    let fx = Fixture::new();
    let mut clicks = vec![
        on_device("k-s1", "s1", "2026-11-01T10:00:00Z", "dev-5"),
        on_device("k-s4a", "s4", "2026-11-02T10:00:00Z", "dev-5"),
        on_device("k-s4b", "s4", "2026-11-02T11:00:00Z", "dev-5"),
        on_device("k-s5", "s5", "2026-11-03T10:00:00Z", "dev-5"),
        on_device("k-s1b", "s1", "2026-11-03T10:00:00Z", "dev-6"),
        on_device("k-t1a", "t1", "2026-11-05T10:00:00Z", "dev-4"),
        on_device("k-t1b", "t1", "2026-11-05T11:00:00Z", "dev-4"),
        on_device("k-t1c", "t1", "2026-11-05T12:00:00Z", "dev-4"),
        on_device("k-t3", "t3", "2026-11-06T10:00:00Z", "dev-4"),
    ];
    clicks.extend((1..=5).map(|i| on_device(&format!("k-u{i}"), &format!("u{i}"), "2026-11-04T10:00:00Z", "dev-6")));
    fx.clicks("dt=2026-11-20/a.parquet", &clicks);
    fx.carts(
        "dt=2026-11-20/a.parquet",
        &[
            cart_add("c-s2", "s2", "2026-11-06T10:00:00Z", 1, Some(5.0)).device("dev-5"),
            cart_add("c-t2", "t2", "2026-11-07T10:00:00Z", 1, Some(5.0)).device("dev-4"),
        ],
    );
    fx.orders(
        "dt=2026-11-20/a.parquet",
        &[
            order("o-s3", "s3", "2026-11-08T10:00:00Z", "s3-1", "placed", 5.0).device("dev-5"),
            order("o-t4", "t4", "2026-11-08T10:00:00Z", "t4-1", "placed", 5.0).device("dev-4"),
        ],
    );
    let tags = fx.run(T).await;

    assert_eq!(
        tags.customers("shared_device"),
        sorted(&["s1", "s2", "s3", "s4", "s5", "u1", "u2", "u3", "u4", "u5"])
    );
    assert_tag(&tags, "s1", "shared_device", "true", Some(6.0));
    for c in ["s2", "s3", "s4", "s5"] {
        assert_tag(&tags, c, "shared_device", "true", Some(5.0));
    }
    for c in ["u1", "u2", "u3", "u4", "u5"] {
        assert_tag(&tags, c, "shared_device", "true", Some(6.0));
    }
}

#[tokio::test]
async fn shared_device_counts_only_device_use_in_30_days_and_ignores_null_devices() {
    // dev-w: w1 at 2026-10-22T00:00Z, w2 (cart), w3 (order at T), w4, w5 → 5, each scored 5;
    // v_old used dev-w only 1 µs before the window: not tagged, and not counted (5, not 6).
    // dev-x: x1..x4 in the window, x5 1 µs before it, x6 after T → 4: nobody tagged.
    // n1..n5: events without a device in all streams: nobody tagged.
    let fx = Fixture::new();
    let mut clicks = vec![
        on_device("k-w1", "w1", FIRST_30, "dev-w"),
        on_device("k-w4", "w4", "2026-11-12T10:00:00Z", "dev-w"),
        on_device("k-w5", "w5", "2026-11-13T10:00:00Z", "dev-w"),
        on_device("k-v", "v_old", BEFORE_30, "dev-w"),
        on_device("k-x5", "x5", BEFORE_30, "dev-x"),
        on_device("k-x6", "x6", AFTER_T, "dev-x"),
    ];
    clicks.extend((1..=4).map(|i| on_device(&format!("k-x{i}"), &format!("x{i}"), "2026-11-10T10:00:00Z", "dev-x")));
    clicks.extend((1..=5).map(|i| view(&format!("k-n{i}"), &format!("n{i}"), "2026-11-10T10:00:00Z")));
    fx.clicks("dt=2026-11-20/a.parquet", &clicks);
    let mut carts = vec![cart_add("c-w2", "w2", "2026-11-10T10:00:00Z", 1, Some(5.0)).device("dev-w")];
    carts.extend((1..=5).map(|i| {
        cart_add(
            &format!("c-n{i}"),
            &format!("n{i}"),
            "2026-11-11T10:00:00Z",
            1,
            Some(5.0),
        )
    }));
    fx.carts("dt=2026-11-20/a.parquet", &carts);
    let mut orders = vec![order("o-w3", "w3", T, "w3-1", "placed", 5.0).device("dev-w")];
    orders.extend((1..=5).map(|i| {
        order(
            &format!("o-n{i}"),
            &format!("n{i}"),
            "2026-11-12T10:00:00Z",
            &format!("n{i}-1"),
            "placed",
            5.0,
        )
    }));
    fx.orders("dt=2026-11-20/a.parquet", &orders);
    let tags = fx.run(T).await;

    assert_eq!(tags.customers("shared_device"), sorted(&["w1", "w2", "w3", "w4", "w5"]));
    for c in ["w1", "w2", "w3", "w4", "w5"] {
        assert_tag(&tags, c, "shared_device", "true", Some(5.0));
    }
    assert_no_tag(&tags, "v_old", "shared_device");
}

#[tokio::test]
async fn marketing_blacklist_is_the_union_of_the_risk_tags_with_null_score() {
    // mb_refund: 2 refunds, no orders in 365 days → refund_risk. mb_credit: 3 cancels → low_credit.
    // dev-x: mb_device, mb_all, x1, x2, x3 → shared_device. mb_all has all three (one blacklist row).
    // mb_clean: 1 refund of 2 orders, 2 cancels, dev-y shared by 4 → no risk tag, not blacklisted.
    let fx = Fixture::new();
    fx.orders(
        "dt=2026-11-20/a.parquet",
        &[
            refunded("r-1", "mb_refund", "2026-10-01T10:00:00Z", "rf1"),
            refunded("r-2", "mb_refund", "2026-10-02T10:00:00Z", "rf2"),
            order("o-1", "mb_credit", "2026-11-01T10:00:00Z", "cr1", "cancelled", 10.0),
            order("o-2", "mb_credit", "2026-11-02T10:00:00Z", "cr2", "cancelled", 10.0),
            order(
                "o-3",
                "mb_credit",
                "2026-11-03T10:00:00Z",
                "cr3",
                "payment_failed",
                10.0,
            ),
            refunded("r-3", "mb_all", "2026-10-01T10:00:00Z", "al1"),
            refunded("r-4", "mb_all", "2026-10-02T10:00:00Z", "al2"),
            order("o-4", "mb_all", "2026-11-01T10:00:00Z", "al3", "cancelled", 10.0),
            order("o-5", "mb_all", "2026-11-02T10:00:00Z", "al4", "cancelled", 10.0),
            order("o-6", "mb_all", "2026-11-03T10:00:00Z", "al5", "cancelled", 10.0),
            paid("o-7", "mb_clean", "2026-06-01T10:00:00Z", "cl1", 10.0),
            paid("o-8", "mb_clean", "2026-06-02T10:00:00Z", "cl2", 10.0),
            refunded("r-5", "mb_clean", "2026-07-01T10:00:00Z", "cl1"),
            order("o-9", "mb_clean", "2026-11-01T10:00:00Z", "cl3", "cancelled", 10.0),
            order("o-10", "mb_clean", "2026-11-02T10:00:00Z", "cl4", "cancelled", 10.0),
        ],
    );
    let clicks: Vec<Click> = ["mb_device", "mb_all", "x1", "x2", "x3"]
        .iter()
        .map(|c| on_device(&format!("k-{c}"), c, "2026-11-10T10:00:00Z", "dev-x"))
        .chain(
            ["mb_clean", "y1", "y2", "y3"]
                .iter()
                .map(|c| on_device(&format!("k-{c}"), c, "2026-11-10T10:00:00Z", "dev-y")),
        )
        .collect();
    fx.clicks("dt=2026-11-20/a.parquet", &clicks);
    let tags = fx.run(T).await;

    assert_eq!(tags.customers("refund_risk"), sorted(&["mb_all", "mb_refund"]));
    assert_eq!(tags.customers("low_credit"), sorted(&["mb_all", "mb_credit"]));
    assert_eq!(
        tags.customers("shared_device"),
        sorted(&["mb_all", "mb_device", "x1", "x2", "x3"])
    );
    let expected = sorted(&["mb_all", "mb_credit", "mb_device", "mb_refund", "x1", "x2", "x3"]);
    assert_eq!(tags.customers("marketing_blacklist"), expected);
    let union: BTreeSet<String> = ["refund_risk", "low_credit", "shared_device"]
        .iter()
        .flat_map(|t| tags.customers(t))
        .collect();
    assert_eq!(union.into_iter().collect::<Vec<_>>(), expected);
    for c in &expected {
        assert_tag(&tags, c, "marketing_blacklist", "true", None);
    }
    assert_no_tag(&tags, "mb_clean", "marketing_blacklist");
}

#[tokio::test]
async fn risk_thresholds_follow_config_overrides_and_the_blacklist_follows_them() {
    // refund_risk: 30-day window (from 2026-10-22), 1 refund, ratio 0.5. low_credit: 7 days (from
    // 2026-11-14), 2 events. shared_device: 7 days, 3 customers.
    let config = r#"
[params.refund_risk]
window_days = 30
min_refunds = 1
min_ratio = 0.5

[params.low_credit]
window_days = 7
min_events = 2

[params.shared_device]
window_days = 7
min_customers = 3
"#;
    let fx = Fixture::new();
    fx.orders(
        "dt=2026-11-20/a.parquet",
        &[
            // orr_one: 2 orders paid in the last 30 days, 1 refunded → 1/2 = 0.5.
            paid("o-1", "orr_one", "2026-10-25T10:00:00Z", "a1", 20.0),
            paid("o-2", "orr_one", "2026-10-26T10:00:00Z", "a2", 20.0),
            refunded("r-1", "orr_one", "2026-11-01T10:00:00Z", "a1"),
            // orr_edge: 1 order, refunded at 2026-10-22T00:00Z → 1/1 = 1.
            paid("o-3", "orr_edge", "2026-10-21T10:00:00Z", "b1", 20.0),
            refunded("r-2", "orr_edge", FIRST_30, "b1"),
            // orr_out: refunds 1 µs before the window and in September → 0 in 30 days: absent.
            refunded("r-3", "orr_out", BEFORE_30, "c1"),
            refunded("r-4", "orr_out", "2026-09-01T10:00:00Z", "c2"),
            // orr_ratio: 3 orders in the last 30 days, 1 refunded → 1/3 < 0.5: absent.
            paid("o-4", "orr_ratio", "2026-11-01T10:00:00Z", "d1", 20.0),
            paid("o-5", "orr_ratio", "2026-11-02T10:00:00Z", "d2", 20.0),
            paid("o-6", "orr_ratio", "2026-11-03T10:00:00Z", "d3", 20.0),
            refunded("r-5", "orr_ratio", "2026-11-05T10:00:00Z", "d1"),
            // olc_two: failures at 2026-11-14T00:00Z and at T → 2.
            order("o-7", "olc_two", FIRST_7, "e1", "cancelled", 10.0),
            order("o-8", "olc_two", T, "e2", "payment_failed", 10.0),
            // olc_out: 1 µs before the 7 days, 2026-11-01, and 2026-11-18 → 1: absent.
            order("o-9", "olc_out", BEFORE_7, "f1", "cancelled", 10.0),
            order("o-10", "olc_out", "2026-11-01T10:00:00Z", "f2", "cancelled", 10.0),
            order("o-11", "olc_out", "2026-11-18T10:00:00Z", "f3", "payment_failed", 10.0),
        ],
    );
    fx.clicks(
        "dt=2026-11-20/a.parquet",
        &[
            // dev-3: sd_a at 2026-11-14T00:00Z, sd_b, sd_c at T → 3 each.
            on_device("k-1", "sd_a", FIRST_7, "dev-3"),
            on_device("k-2", "sd_b", "2026-11-18T10:00:00Z", "dev-3"),
            on_device("k-3", "sd_c", T, "dev-3"),
            // dev-5: 5 customers in 30 days but only sf1, sf2 in the last 7: absent.
            on_device("k-4", "sf1", "2026-11-18T10:00:00Z", "dev-5"),
            on_device("k-5", "sf2", "2026-11-18T10:00:00Z", "dev-5"),
            on_device("k-6", "sf3", "2026-11-10T10:00:00Z", "dev-5"),
            on_device("k-7", "sf4", "2026-11-10T10:00:00Z", "dev-5"),
            on_device("k-8", "sf5", "2026-11-10T10:00:00Z", "dev-5"),
        ],
    );
    let tags = fx.run_with(T, Some(config)).await;

    assert_eq!(tags.customers("refund_risk"), sorted(&["orr_edge", "orr_one"]));
    assert_tag(&tags, "orr_one", "refund_risk", "true", Some(0.5));
    assert_tag(&tags, "orr_edge", "refund_risk", "true", Some(1.0));
    assert_eq!(tags.customers("low_credit"), vec!["olc_two"]);
    assert_tag(&tags, "olc_two", "low_credit", "true", Some(2.0));
    assert_eq!(tags.customers("shared_device"), sorted(&["sd_a", "sd_b", "sd_c"]));
    for c in ["sd_a", "sd_b", "sd_c"] {
        assert_tag(&tags, c, "shared_device", "true", Some(3.0));
    }
    assert_eq!(
        tags.customers("marketing_blacklist"),
        sorted(&["olc_two", "orr_edge", "orr_one", "sd_a", "sd_b", "sd_c"])
    );
}
