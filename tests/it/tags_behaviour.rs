//! Behaviour tags (rfm_tier, lifecycle, aipl_stage, repurchaser, brand_enthusiast) on hand-made
//! events. Every expected row is derived from `/work/shared/spec/tags.md`, not from the SQL.
//!
//! All runs are as of T = 2026-11-20T12:00:00Z, so D = 2026-11-20 and "the last N days" starts on
//! D − (N − 1): 365 days → 2025-11-21, 90 → 2026-08-23, 30 → 2026-10-22, 7 → 2026-11-14,
//! 3 → 2026-11-18. The constants and assertion helpers below are shared with `tags_intent` and
//! `tags_risk` and live in `support.rs`.

use std::collections::{BTreeMap, BTreeSet};

use crate::support::*;

#[tokio::test]
async fn published_rows_carry_the_family_of_their_tag() {
    // One situation per tag so that each of the 12 shipped tags publishes rows: f_buyer (3 discounted
    // "acme" orders in 3 months), f_browser (5 shoe views + an open cart add), f_risky (3 cancels,
    // 2 refunds), f_shared1..5 on one device.
    let fx = Fixture::new();
    fx.orders(
        "dt=2026-11-20/a.parquet",
        &[
            paid("o-f1", "f_buyer", "2026-09-10T10:00:00Z", "fb1", 100.0)
                .brand("acme")
                .discount(5.0),
            paid("o-f2", "f_buyer", "2026-10-10T10:00:00Z", "fb2", 100.0)
                .brand("acme")
                .discount(5.0),
            paid("o-f3", "f_buyer", "2026-11-10T10:00:00Z", "fb3", 100.0)
                .brand("acme")
                .discount(5.0),
            order("o-f4", "f_risky", "2026-11-02T10:00:00Z", "fr1", "cancelled", 10.0),
            order("o-f5", "f_risky", "2026-11-03T10:00:00Z", "fr2", "cancelled", 10.0),
            order("o-f6", "f_risky", "2026-11-04T10:00:00Z", "fr3", "cancelled", 10.0),
            order("o-f7", "f_risky", "2026-11-05T10:00:00Z", "fr4", "refunded", 10.0),
            order("o-f8", "f_risky", "2026-11-06T10:00:00Z", "fr5", "refunded", 10.0),
        ],
    );
    let clicks: Vec<Click> =
        (1..=5)
            .map(|i| view(&format!("k-f{i}"), "f_browser", "2026-11-18T10:00:00Z").category("shoes"))
            .chain((1..=5).map(|i| {
                view(&format!("k-fs{i}"), &format!("f_shared{i}"), "2026-11-15T10:00:00Z").device("dev-shared")
            }))
            .collect();
    fx.clicks("dt=2026-11-20/a.parquet", &clicks);
    fx.carts(
        "dt=2026-11-19/a.parquet",
        &[cart_add("c-f1", "f_browser", "2026-11-19T10:00:00Z", 1, Some(30.0)).category("shoes")],
    );
    let tags = fx.run(T).await;

    let families: BTreeMap<&str, &str> = [
        ("rfm_tier", "behaviour"),
        ("lifecycle", "behaviour"),
        ("aipl_stage", "behaviour"),
        ("repurchaser", "behaviour"),
        ("brand_enthusiast", "behaviour"),
        ("category_intent", "intent"),
        ("cart_abandoner", "intent"),
        ("promo_sensitive", "intent"),
        ("refund_risk", "risk"),
        ("low_credit", "risk"),
        ("shared_device", "risk"),
        ("marketing_blacklist", "risk"),
    ]
    .into_iter()
    .collect();
    let published: BTreeSet<&str> = tags.rows.iter().map(|r| r.tag.as_str()).collect();
    assert_eq!(
        published,
        families.keys().copied().collect::<BTreeSet<_>>(),
        "published tags"
    );
    for row in &tags.rows {
        assert_eq!(
            Some(row.family.as_str()),
            families.get(row.tag.as_str()).copied(),
            "{row:?}"
        );
    }
}

#[tokio::test]
async fn every_counted_customer_gets_one_rfm_lifecycle_and_aipl_row() {
    // The universe is whoever has a counted event in any stream: u_click (a home page view),
    // u_cart (a cart remove), u_order (a placed order). u_after only has events after T: no rows.
    let fx = Fixture::new();
    fx.clicks(
        "dt=2026-11-19/a.parquet",
        &[
            view("k-u1", "u_click", "2026-11-19T08:00:00Z").page("home"),
            view("k-u2", "u_after", AFTER_T),
        ],
    );
    fx.carts(
        "dt=2026-05-01/a.parquet",
        &[
            cart_add("c-u1", "u_cart", "2026-05-01T08:00:00Z", 1, Some(5.0)).remove(),
            cart_add("c-u2", "u_after", AFTER_T, 1, Some(5.0)),
        ],
    );
    fx.orders(
        "dt=2026-09-01/a.parquet",
        &[
            order("o-u1", "u_order", "2026-09-01T08:00:00Z", "uo1", "placed", 20.0),
            paid("o-u2", "u_after", AFTER_T, "ua1", 20.0),
        ],
    );
    let tags = fx.run(T).await;

    let universe = sorted(&["u_cart", "u_click", "u_order"]);
    for tag in ["rfm_tier", "lifecycle", "aipl_stage"] {
        assert_eq!(tags.customers(tag), universe, "{tag}");
    }
    assert!(
        tags.rows.iter().all(|r| r.customer_id != "u_after"),
        "u_after has only events after T"
    );
    // Nobody has a paid order: all prospects with score 0, all at awareness.
    for c in ["u_cart", "u_click", "u_order"] {
        assert_tag(&tags, c, "rfm_tier", "prospect", Some(0.0));
        assert_tag(&tags, c, "aipl_stage", "awareness", None);
    }
    // Days from date(last_seen) to D: 2026-11-19 → 1, 2026-09-01 → 80, 2026-05-01 → 203.
    assert_tag(&tags, "u_click", "lifecycle", "new", Some(1.0));
    assert_tag(&tags, "u_order", "lifecycle", "dormant", Some(80.0));
    assert_tag(&tags, "u_cart", "lifecycle", "churned", Some(203.0));
}

#[tokio::test]
async fn rfm_tier_tiers_with_365_day_boundaries_and_tied_m80() {
    // Buyers' monetary_365: c_low 100, c_dev 200 (3 orders), c_tie_a 300, c_tie_b 300, c_champ 500
    // (3 orders: 100 at 2025-11-21T00:00Z + 150 + 250 at T; 1000 one µs before the window and 1000
    // after T do not count). n = 5 → M80 at position ceil(4.0) = 4 → 300, reached by both ties.
    // o_old's only paid order is 1 µs before the window: orders_all 1, monetary 0 → casual, 0.
    let fx = Fixture::new();
    fx.orders(
        "dt=2026-11-20/a.parquet",
        &[
            paid("o01", "c_champ", FIRST_365, "ch1", 100.0),
            paid("o02", "c_champ", "2026-07-15T09:00:00Z", "ch2", 150.0),
            paid("o03", "c_champ", T, "ch3", 250.0),
            paid("o04", "c_champ", BEFORE_365, "ch4", 1000.0),
            paid("o05", "c_champ", AFTER_T, "ch5", 1000.0),
            paid("o06", "c_dev", "2026-01-10T10:00:00Z", "dv1", 50.0),
            paid("o07", "c_dev", "2026-03-10T10:00:00Z", "dv2", 50.0),
            paid("o08", "c_dev", "2026-09-10T10:00:00Z", "dv3", 100.0),
            paid("o09", "c_tie_a", "2026-10-01T10:00:00Z", "ta1", 300.0),
            paid("o10", "c_tie_b", "2026-10-02T10:00:00Z", "tb1", 300.0),
            paid("o11", "c_low", "2026-02-02T10:00:00Z", "lw1", 100.0),
            order("o12", "p_unpaid", "2026-11-01T10:00:00Z", "pu1", "placed", 80.0),
            order("o13", "p_unpaid", "2026-11-02T10:00:00Z", "pu1", "cancelled", 80.0),
            order("o14", "p_unpaid", "2026-11-03T10:00:00Z", "pu2", "placed", 90.0),
            order("o15", "p_unpaid", "2026-11-03T10:05:00Z", "pu2", "payment_failed", 90.0),
            paid("o16", "o_old", BEFORE_365, "ol1", 5000.0),
            paid("o17", "p_future", AFTER_T, "pf1", 700.0),
        ],
    );
    fx.clicks(
        "dt=2026-11-10/a.parquet",
        &[view("k01", "p_click", "2026-11-10T10:00:00Z")],
    );
    let tags = fx.run(T).await;

    assert_tag(&tags, "c_champ", "rfm_tier", "champion", Some(500.0));
    assert_tag(&tags, "c_dev", "rfm_tier", "devoted", Some(200.0));
    assert_tag(&tags, "c_tie_a", "rfm_tier", "big_spender", Some(300.0));
    assert_tag(&tags, "c_tie_b", "rfm_tier", "big_spender", Some(300.0));
    assert_tag(&tags, "c_low", "rfm_tier", "casual", Some(100.0));
    assert_tag(&tags, "o_old", "rfm_tier", "casual", Some(0.0));
    assert_tag(&tags, "p_click", "rfm_tier", "prospect", Some(0.0));
    assert_tag(&tags, "p_unpaid", "rfm_tier", "prospect", Some(0.0));
    assert_no_tag(&tags, "p_future", "rfm_tier");
}

#[tokio::test]
async fn rfm_tier_m80_is_the_nearest_rank_value_at_ceil_0_8_n() {
    // n buyers nN_b01..nN_bNN spend 10·i each, so M80 = 10·ceil(0.8·n): n = 4 → position 4 (not
    // round(3.2) = 3), n = 5 → 4, n = 10 → 8, n = 35 → 28 (an interpolated percentile would fall
    // between two buyers). A prospect and a buyer of 2024 only are in the universe, not among the n.
    for (n, position) in [(4usize, 4usize), (5, 4), (10, 8), (35, 28)] {
        let fx = Fixture::new();
        let buyer = |i: usize| format!("n{n}_b{i:02}");
        let mut orders: Vec<Order> = (1..=n)
            .map(|i| {
                paid(
                    &format!("o-{i}"),
                    &buyer(i),
                    "2026-06-01T10:00:00Z",
                    &format!("ord-{i}"),
                    10.0 * i as f64,
                )
            })
            .collect();
        orders.push(paid(
            "o-old",
            &format!("n{n}_old"),
            "2024-06-01T10:00:00Z",
            "ord-old",
            10_000.0,
        ));
        fx.orders("dt=2026-06-01/a.parquet", &orders);
        fx.clicks(
            "dt=2026-11-20/a.parquet",
            &[view("k-1", &format!("n{n}_prospect"), "2026-11-20T08:00:00Z")],
        );
        let tags = fx.run(T).await;

        for i in 1..=n {
            let tier = if i >= position { "big_spender" } else { "casual" };
            assert_tag(&tags, &buyer(i), "rfm_tier", tier, Some(10.0 * i as f64));
        }
        assert_tag(&tags, &format!("n{n}_old"), "rfm_tier", "casual", Some(0.0));
        assert_tag(&tags, &format!("n{n}_prospect"), "rfm_tier", "prospect", Some(0.0));
    }
}

#[tokio::test]
async fn rfm_tier_without_buyers_or_with_a_zero_m80() {
    // No customer has orders_365 ≥ 1 (n = 0): high_m is false, so o_old (3 paid orders, all before
    // the window: orders_all 3, orders_365 0) is casual with score 0, not prospect nor devoted.
    let fx = Fixture::new();
    fx.orders(
        "dt=2025-11-20/a.parquet",
        &[
            paid("o-1", "o_old", "2025-01-10T10:00:00Z", "a1", 100.0),
            paid("o-2", "o_old", "2025-03-10T10:00:00Z", "a2", 100.0),
            paid("o-3", "o_old", BEFORE_365, "a3", 100.0),
        ],
    );
    fx.clicks(
        "dt=2026-11-20/a.parquet",
        &[view("k-1", "p_click", "2026-11-20T08:00:00Z")],
    );
    let tags = fx.run(T).await;
    assert_tag(&tags, "o_old", "rfm_tier", "casual", Some(0.0));
    assert_tag(&tags, "p_click", "rfm_tier", "prospect", Some(0.0));

    // The only buyer, z_free, paid 0: n = 1, M80 = 0. high_m = monetary_365 ≥ 0 holds for every
    // customer with orders_all ≥ 1, including o_old whose only order is from 2025-01-10.
    let fx = Fixture::new();
    fx.orders(
        "dt=2026-10-01/a.parquet",
        &[
            paid("o-1", "z_free", "2026-10-01T10:00:00Z", "z1", 0.0),
            paid("o-2", "o_old", "2025-01-10T10:00:00Z", "a1", 100.0),
        ],
    );
    fx.clicks(
        "dt=2026-11-20/a.parquet",
        &[view("k-1", "p_click", "2026-11-20T08:00:00Z")],
    );
    let tags = fx.run(T).await;
    assert_tag(&tags, "z_free", "rfm_tier", "big_spender", Some(0.0));
    assert_tag(&tags, "o_old", "rfm_tier", "big_spender", Some(0.0));
    assert_tag(&tags, "p_click", "rfm_tier", "prospect", Some(0.0));
}

#[tokio::test]
async fn paid_order_facts_come_from_the_earliest_paid_event() {
    // e_first_out: order fo1 is first paid at 2025-11-20T23:00Z (1 h before the 365-day window) and
    // paid again on 2026-11-01: the earliest decides → orders_365 0, orders_all 1 → casual 0, awareness.
    // e_tie: two paid events of ti1 at the same instant, 900 (o-ti-b) and 200 (o-ti-a): smallest
    // event_id → 200. e_dup: one paid event in two files → 300 once. e_late: a 2026-03-01 payment in
    // a dt=2026-11-20 file → 400. e_paid_after: placed before T, paid after T → prospect.
    // Buyers 200, 300, 400: n = 3, M80 at position ceil(2.4) = 3 → 400.
    let fx = Fixture::new();
    fx.orders(
        "dt=2026-09-05/a.parquet",
        &[
            paid("o-fo-a", "e_first_out", "2025-11-20T23:00:00Z", "fo1", 100.0),
            paid("o-fo-b", "e_first_out", "2026-11-01T10:00:00Z", "fo1", 100.0),
            paid("o-ti-b", "e_tie", "2026-09-01T08:00:00Z", "ti1", 900.0),
            paid("o-ti-a", "e_tie", "2026-09-01T08:00:00Z", "ti1", 200.0),
            paid("o-du-1", "e_dup", "2026-09-05T10:00:00Z", "du1", 300.0),
            order("o-pa-1", "e_paid_after", "2026-11-20T11:00:00Z", "pa1", "placed", 50.0),
            paid("o-pa-2", "e_paid_after", AFTER_T, "pa1", 50.0),
        ],
    );
    fx.orders(
        "dt=2026-11-20/resent.parquet",
        &[paid("o-du-1", "e_dup", "2026-09-05T10:00:00Z", "du1", 300.0)],
    );
    fx.orders(
        "dt=2026-11-20/late.parquet",
        &[paid("o-la-1", "e_late", "2026-03-01T10:00:00Z", "la1", 400.0)],
    );
    let tags = fx.run(T).await;

    assert_tag(&tags, "e_first_out", "rfm_tier", "casual", Some(0.0));
    assert_tag(&tags, "e_tie", "rfm_tier", "casual", Some(200.0));
    assert_tag(&tags, "e_dup", "rfm_tier", "casual", Some(300.0));
    assert_tag(&tags, "e_late", "rfm_tier", "big_spender", Some(400.0));
    assert_tag(&tags, "e_paid_after", "rfm_tier", "prospect", Some(0.0));
    assert_tag(&tags, "e_first_out", "aipl_stage", "awareness", None);
    for c in ["e_tie", "e_dup", "e_late"] {
        assert_tag(&tags, c, "aipl_stage", "purchase", None);
    }
    assert_tag(&tags, "e_paid_after", "aipl_stage", "awareness", None);
}

#[tokio::test]
async fn lifecycle_windows_and_days_since_last_seen() {
    // first_seen / last_seen over all streams; score = D − date(last_seen) in whole days.
    // new: first day ≥ 2026-10-22; active: last day ≥ 2026-10-22; dormant: last day ≥ 2026-08-23.
    let fx = Fixture::new();
    fx.clicks(
        "dt=2026-11-20/a.parquet",
        &[
            view("k-l1", "l_new_edge", FIRST_30),
            view("k-l2", "l_active", BEFORE_30),
            view("k-l3", "l_active_old_first", FIRST_30),
            view("k-l4", "l_dormant_after_t", "2026-06-01T10:00:00Z"),
            view("k-l5", "l_dormant_after_t", AFTER_T),
            view("k-l6", "l_dormant_edge", FIRST_90),
            view("k-l7", "l_churned", BEFORE_90),
            view("k-l8", "l_future", AFTER_T),
        ],
    );
    fx.carts(
        "dt=2026-11-20/a.parquet",
        &[
            cart_add("c-l1", "l_new_recent", "2026-11-19T23:00:00Z", 1, Some(1.0)),
            cart_add("c-l2", "l_active", T, 1, Some(1.0)),
            cart_add("c-l3", "l_churned_old", "2024-01-01T10:00:00Z", 1, Some(1.0)).remove(),
        ],
    );
    fx.orders(
        "dt=2026-11-20/a.parquet",
        &[
            order("o-l1", "l_new_recent", "2026-11-01T08:00:00Z", "nr1", "placed", 10.0),
            order("o-l3", "l_dormant_after_t", BEFORE_30, "da1", "placed", 10.0),
        ],
    );
    fx.orders(
        "dt=2026-11-20/late.parquet",
        &[paid("o-l2", "l_active_old_first", "2025-03-01T10:00:00Z", "ao1", 10.0)],
    );
    let tags = fx.run(T).await;

    // only event on 2026-10-22 → new, 29 days.
    assert_tag(&tags, "l_new_edge", "lifecycle", "new", Some(29.0));
    // first 2026-11-01, last 2026-11-19T23:00 (13 h before T, but one calendar day) → new, 1.
    assert_tag(&tags, "l_new_recent", "lifecycle", "new", Some(1.0));
    // first 1 µs before the window, last at T → active, 0.
    assert_tag(&tags, "l_active", "lifecycle", "active", Some(0.0));
    // first 2025-03-01 (late file), last 2026-10-22 → active, 29.
    assert_tag(&tags, "l_active_old_first", "lifecycle", "active", Some(29.0));
    // last counted 2026-10-21T23:59:59.999999 (the click after T is ignored) → dormant, 30.
    assert_tag(&tags, "l_dormant_after_t", "lifecycle", "dormant", Some(30.0));
    assert_tag(&tags, "l_dormant_edge", "lifecycle", "dormant", Some(89.0));
    assert_tag(&tags, "l_churned", "lifecycle", "churned", Some(90.0));
    // 2024-01-01 → 2026-11-20: 366 + 365 + 323 = 1054 days.
    assert_tag(&tags, "l_churned_old", "lifecycle", "churned", Some(1054.0));
    assert_eq!(
        tags.customers("lifecycle"),
        sorted(&[
            "l_active",
            "l_active_old_first",
            "l_churned",
            "l_churned_old",
            "l_dormant_after_t",
            "l_dormant_edge",
            "l_new_edge",
            "l_new_recent",
        ])
    );
}

#[tokio::test]
async fn aipl_stage_precedence_and_30_day_engagement_window() {
    // loyalty (orders_365 ≥ 2) > purchase (= 1) > interest (≥ 3 product views or ≥ 1 cart add in
    // 30 days) > awareness; score always null.
    let fx = Fixture::new();
    fx.orders(
        "dt=2026-11-20/a.parquet",
        &[
            // a_loyal: paid at the first instant of the 365-day window and at T → 2 orders.
            paid("o-1", "a_loyal", FIRST_365, "al1", 10.0),
            paid("o-2", "a_loyal", T, "al2", 10.0),
            // a_purchase: 1 order in the window, 1 just before it → purchase despite 5 views, 2 adds.
            paid("o-3", "a_purchase", "2026-05-05T10:00:00Z", "ap1", 10.0),
            paid("o-4", "a_purchase", BEFORE_365, "ap2", 10.0),
            // a_placed: a placed then cancelled order is no paid order.
            order("o-5", "a_placed", "2026-11-10T10:00:00Z", "apl1", "placed", 10.0),
            order("o-6", "a_placed", "2026-11-11T10:00:00Z", "apl1", "cancelled", 10.0),
        ],
    );
    let mut clicks: Vec<Click> = (1..=5)
        .map(|i| view(&format!("k-p{i}"), "a_purchase", "2026-11-12T10:00:00Z"))
        .collect();
    clicks.extend([
        // a_views: 3 product views in the window (first instant, mid, T); 1 before, 1 after → interest.
        view("k-v1", "a_views", FIRST_30),
        view("k-v2", "a_views", "2026-11-05T10:00:00Z"),
        view("k-v3", "a_views", T),
        view("k-v4", "a_views", BEFORE_30),
        view("k-v5", "a_views", AFTER_T),
        // a_views_two: 2 in the window, 1 before, 1 after → awareness.
        view("k-w1", "a_views_two", "2026-11-05T10:00:00Z"),
        view("k-w2", "a_views_two", "2026-11-06T10:00:00Z"),
        view("k-w3", "a_views_two", BEFORE_30),
        view("k-w4", "a_views_two", AFTER_T),
        // a_pages: 2 product views + 3 other pages → awareness.
        view("k-g1", "a_pages", "2026-11-05T10:00:00Z"),
        view("k-g2", "a_pages", "2026-11-06T10:00:00Z"),
        view("k-g3", "a_pages", "2026-11-07T10:00:00Z").page("home"),
        view("k-g4", "a_pages", "2026-11-07T10:01:00Z")
            .page("category")
            .category("shoes"),
        view("k-g5", "a_pages", "2026-11-07T10:02:00Z").page("search"),
    ]);
    fx.clicks("dt=2026-11-20/a.parquet", &clicks);
    fx.carts(
        "dt=2026-11-20/a.parquet",
        &[
            cart_add("c-1", "a_purchase", "2026-11-12T10:00:00Z", 1, Some(5.0)),
            cart_add("c-2", "a_purchase", "2026-11-12T10:01:00Z", 1, Some(5.0)),
            // a_cart: one add at the first instant of the window → interest.
            cart_add("c-3", "a_cart", FIRST_30, 1, Some(5.0)),
            // a_cart_out: an add 1 µs before the window, a remove inside, an add after T → awareness.
            cart_add("c-4", "a_cart_out", BEFORE_30, 1, Some(5.0)),
            cart_add("c-5", "a_cart_out", "2026-11-19T10:00:00Z", 1, Some(5.0)).remove(),
            cart_add("c-6", "a_cart_out", AFTER_T, 1, Some(5.0)),
        ],
    );
    let tags = fx.run(T).await;

    assert_tag(&tags, "a_loyal", "aipl_stage", "loyalty", None);
    assert_tag(&tags, "a_purchase", "aipl_stage", "purchase", None);
    assert_tag(&tags, "a_views", "aipl_stage", "interest", None);
    assert_tag(&tags, "a_cart", "aipl_stage", "interest", None);
    assert_tag(&tags, "a_views_two", "aipl_stage", "awareness", None);
    assert_tag(&tags, "a_pages", "aipl_stage", "awareness", None);
    assert_tag(&tags, "a_cart_out", "aipl_stage", "awareness", None);
    assert_tag(&tags, "a_placed", "aipl_stage", "awareness", None);
}

#[tokio::test]
async fn aipl_stage_counts_duplicates_once_and_late_files_in_their_window() {
    // d_dup: views k-d1, k-d2 + k-d2 re-sent in another file → 2 product views → awareness.
    // d_late: 3 views of 2026-10-25 in a dt=2026-11-20 file → interest.
    // d_paid_twice: order x1 has two paid events → 1 paid order → purchase, not loyalty.
    // d_dup_order: one paid event in two files → purchase; d_late_order: 2026-02-01 payment, late file → purchase.
    let fx = Fixture::new();
    fx.clicks(
        "dt=2026-11-11/a.parquet",
        &[
            view("k-d1", "d_dup", "2026-11-10T10:00:00Z"),
            view("k-d2", "d_dup", "2026-11-11T10:00:00Z"),
        ],
    );
    fx.clicks(
        "dt=2026-11-11/a-resent.parquet",
        &[view("k-d2", "d_dup", "2026-11-11T10:00:00Z")],
    );
    fx.clicks(
        "dt=2026-11-20/late.parquet",
        &[
            view("k-e1", "d_late", "2026-10-25T10:00:00Z"),
            view("k-e2", "d_late", "2026-10-25T11:00:00Z"),
            view("k-e3", "d_late", "2026-10-25T12:00:00Z"),
        ],
    );
    fx.orders(
        "dt=2026-05-02/a.parquet",
        &[
            paid("o-x1", "d_paid_twice", "2026-05-01T10:00:00Z", "x1", 10.0),
            paid("o-x2", "d_paid_twice", "2026-05-02T10:00:00Z", "x1", 10.0),
            paid("o-y1", "d_dup_order", "2026-05-02T10:00:00Z", "y1", 10.0),
        ],
    );
    fx.orders(
        "dt=2026-11-20/late.parquet",
        &[
            paid("o-y1", "d_dup_order", "2026-05-02T10:00:00Z", "y1", 10.0),
            paid("o-z1", "d_late_order", "2026-02-01T10:00:00Z", "z1", 10.0),
        ],
    );
    let tags = fx.run(T).await;

    assert_tag(&tags, "d_dup", "aipl_stage", "awareness", None);
    assert_tag(&tags, "d_late", "aipl_stage", "interest", None);
    assert_tag(&tags, "d_paid_twice", "aipl_stage", "purchase", None);
    assert_tag(&tags, "d_dup_order", "aipl_stage", "purchase", None);
    assert_tag(&tags, "d_late_order", "aipl_stage", "purchase", None);
}

#[tokio::test]
async fn repurchaser_counts_distinct_utc_months_of_paid_orders_in_365_days() {
    // r_year: Dec 2025, Jan 2026, Feb 2026 → 3 (across the year boundary).
    // r_nov: 2025-11-21T00:00Z, 2026-06-10, T → Nov 2025 ≠ Nov 2026 → 3.
    // r_two: 2026-03-01, 2026-03-31T23:59:59Z, 2026-04-01T00:00Z → Mar, Apr → 2: absent.
    // r_out: 1 µs before the window, Jan, Feb, and after T → 2: absent.
    // r_four: Jun (×2), Jul, Aug, Sep + an October order only placed → 4.
    // r_earliest: x1 first paid on Jan 31 (paid again Feb 2) and y1 on Mar 10 → Jan, Mar → 2: absent.
    let fx = Fixture::new();
    fx.orders(
        "dt=2026-11-20/a.parquet",
        &[
            paid("o-01", "r_year", "2025-12-15T10:00:00Z", "ry1", 10.0),
            paid("o-02", "r_year", "2026-01-10T10:00:00Z", "ry2", 10.0),
            paid("o-03", "r_year", "2026-02-01T10:00:00Z", "ry3", 10.0),
            paid("o-04", "r_nov", FIRST_365, "rn1", 10.0),
            paid("o-05", "r_nov", "2026-06-10T10:00:00Z", "rn2", 10.0),
            paid("o-06", "r_nov", T, "rn3", 10.0),
            paid("o-07", "r_two", "2026-03-01T10:00:00Z", "rt1", 10.0),
            paid("o-08", "r_two", "2026-03-31T23:59:59Z", "rt2", 10.0),
            paid("o-09", "r_two", "2026-04-01T00:00:00Z", "rt3", 10.0),
            paid("o-10", "r_out", BEFORE_365, "ro1", 10.0),
            paid("o-11", "r_out", "2026-01-15T10:00:00Z", "ro2", 10.0),
            paid("o-12", "r_out", "2026-02-15T10:00:00Z", "ro3", 10.0),
            paid("o-13", "r_out", AFTER_T, "ro4", 10.0),
            paid("o-14", "r_four", "2026-06-01T10:00:00Z", "rf1", 10.0),
            paid("o-15", "r_four", "2026-06-20T10:00:00Z", "rf2", 10.0),
            paid("o-16", "r_four", "2026-07-01T10:00:00Z", "rf3", 10.0),
            paid("o-17", "r_four", "2026-08-01T10:00:00Z", "rf4", 10.0),
            paid("o-18", "r_four", "2026-09-01T10:00:00Z", "rf5", 10.0),
            order("o-19", "r_four", "2026-10-01T10:00:00Z", "rf6", "placed", 10.0),
            paid("o-20", "r_earliest", "2026-01-31T10:00:00Z", "x1", 10.0),
            paid("o-21", "r_earliest", "2026-02-02T10:00:00Z", "x1", 10.0),
            paid("o-22", "r_earliest", "2026-03-10T10:00:00Z", "y1", 10.0),
        ],
    );
    let tags = fx.run(T).await;

    assert_eq!(tags.customers("repurchaser"), sorted(&["r_four", "r_nov", "r_year"]));
    assert_tag(&tags, "r_year", "repurchaser", "true", Some(3.0));
    assert_tag(&tags, "r_nov", "repurchaser", "true", Some(3.0));
    assert_tag(&tags, "r_four", "repurchaser", "true", Some(4.0));
}

#[tokio::test]
async fn brand_enthusiast_share_null_brands_window_and_earliest_paid_event() {
    // be_exact: acme 3 of 5 → 3 ≥ 0.6·5 → acme, 0.6. be_below: acme 2, bolt 2, cora 1 of 5 → absent.
    // be_nulls: acme 2 + 1 null brand of 3 → 2 ≥ 1.8 → acme, 2/3 (nulls still count in orders_365).
    // be_allnull: 3 orders without brand → absent. be_two: only 2 orders → absent.
    // be_window: acme at 2025-11-21T00:00Z, in May and at T, bolt in June (bolt 1 µs before the
    // window and after T ignored) → acme 3 of 4 = 0.75.
    // be_earliest: e1 has two paid events at one instant, bolt (o-be-b) and acme (o-be-a): the
    // smallest event_id gives acme; with e2 acme and e3 bolt → acme 2 of 3.
    // A tie on the top brand cannot reach 0.6 of the orders; ties are covered with overrides below.
    let fx = Fixture::new();
    let brand_orders = |customer: &str, brands: &[Option<&str>]| -> Vec<Order> {
        brands
            .iter()
            .enumerate()
            .map(|(i, brand)| {
                let o = paid(
                    &format!("o-{customer}-{i}"),
                    customer,
                    &format!("2026-0{}-01T10:00:00Z", i + 1),
                    &format!("{customer}-{i}"),
                    10.0,
                );
                match brand {
                    Some(b) => o.brand(b),
                    None => o,
                }
            })
            .collect()
    };
    let (acme, bolt, cora) = (Some("acme"), Some("bolt"), Some("cora"));
    let mut orders = Vec::new();
    orders.extend(brand_orders("be_exact", &[acme, bolt, acme, bolt, acme]));
    orders.extend(brand_orders("be_below", &[acme, bolt, cora, acme, bolt]));
    orders.extend(brand_orders("be_nulls", &[acme, None, acme]));
    orders.extend(brand_orders("be_allnull", &[None, None, None]));
    orders.extend(brand_orders("be_two", &[acme, acme]));
    orders.extend([
        paid("o-w1", "be_window", FIRST_365, "w1", 10.0).brand("acme"),
        paid("o-w2", "be_window", "2026-05-01T10:00:00Z", "w2", 10.0).brand("acme"),
        paid("o-w3", "be_window", "2026-06-01T10:00:00Z", "w3", 10.0).brand("bolt"),
        paid("o-w6", "be_window", T, "w6", 10.0).brand("acme"),
        paid("o-w4", "be_window", BEFORE_365, "w4", 10.0).brand("bolt"),
        paid("o-w5", "be_window", AFTER_T, "w5", 10.0).brand("bolt"),
        paid("o-be-b", "be_earliest", "2026-04-01T10:00:00Z", "e1", 10.0).brand("bolt"),
        paid("o-be-a", "be_earliest", "2026-04-01T10:00:00Z", "e1", 10.0).brand("acme"),
        paid("o-be-c", "be_earliest", "2026-05-01T10:00:00Z", "e2", 10.0).brand("acme"),
        paid("o-be-d", "be_earliest", "2026-06-01T10:00:00Z", "e3", 10.0).brand("bolt"),
    ]);
    fx.orders("dt=2026-11-20/a.parquet", &orders);
    let tags = fx.run(T).await;

    assert_eq!(
        tags.customers("brand_enthusiast"),
        sorted(&["be_earliest", "be_exact", "be_nulls", "be_window"])
    );
    assert_tag(&tags, "be_exact", "brand_enthusiast", "acme", Some(0.6));
    assert_tag(&tags, "be_nulls", "brand_enthusiast", "acme", Some(2.0 / 3.0));
    assert_tag(&tags, "be_window", "brand_enthusiast", "acme", Some(0.75));
    assert_tag(&tags, "be_earliest", "brand_enthusiast", "acme", Some(2.0 / 3.0));
}

#[tokio::test]
async fn behaviour_thresholds_follow_config_overrides() {
    // rfm: high_frequency_orders 2, percentile 50. Buyers 100 (ov_b), 200 (ov_a, 2 orders),
    // 300 (ov_c), 400 (ov_d): M50 at position ceil(0.5·4) = 2 → 200. ov_a champion, ov_c big_spender
    // (with the defaults: casual and casual).
    // aipl: loyalty from 1 order, interest from 2 product views or 2 cart adds.
    // repurchaser: 2 months (ov_a: Sep, Oct). brand_enthusiast: 2 orders, share 0.5 (ov_a: acme 1,
    // Zeta 1, a tie → "Zeta", which sorts before "acme" by bytes; score 0.5).
    // lifecycle: new 7 days (from 2026-11-14), active 14 (from 2026-11-07), dormant 60 (from 2026-09-22).
    let config = r#"
[params.rfm_tier]
high_frequency_orders = 2
high_monetary_percentile = 50

[params.lifecycle]
new_window_days = 7
active_window_days = 14
dormant_window_days = 60

[params.aipl_stage]
loyalty_orders = 1
interest_product_views = 2
interest_cart_adds = 2

[params.repurchaser]
min_months = 2

[params.brand_enthusiast]
min_orders = 2
min_share = 0.5
"#;
    let fx = Fixture::new();
    fx.orders(
        "dt=2026-11-20/a.parquet",
        &[
            paid("o-a1", "ov_a", "2026-09-10T10:00:00Z", "a1", 100.0).brand("acme"),
            paid("o-a2", "ov_a", "2026-10-10T10:00:00Z", "a2", 100.0).brand("Zeta"),
            paid("o-b1", "ov_b", "2026-10-01T10:00:00Z", "b1", 100.0).brand("acme"),
            paid("o-c1", "ov_c", "2026-10-01T10:00:00Z", "c1", 300.0),
            paid("o-d1", "ov_d", "2026-10-01T10:00:00Z", "d1", 400.0),
        ],
    );
    fx.clicks(
        "dt=2026-11-20/a.parquet",
        &[
            view("k-v1", "ov_v", "2026-11-10T10:00:00Z"),
            view("k-v2", "ov_v", "2026-11-11T10:00:00Z"),
            view("k-l1", "lc_new", FIRST_7),
            view("k-l2", "lc_not_new", BEFORE_7),
            view("k-l3", "lc_active_edge", "2026-11-07T00:00:00Z"),
            view("k-l4", "lc_dormant", "2026-11-06T23:59:59.999999Z"),
            view("k-l5", "lc_dormant_edge", "2026-09-22T00:00:00Z"),
            view("k-l6", "lc_churned", "2026-09-21T23:59:59.999999Z"),
        ],
    );
    fx.carts(
        "dt=2026-11-20/a.parquet",
        &[
            cart_add("c-1", "ov_k1", "2026-11-10T10:00:00Z", 1, Some(5.0)),
            cart_add("c-2", "ov_k2", "2026-11-10T10:00:00Z", 1, Some(5.0)),
            cart_add("c-3", "ov_k2", "2026-11-11T10:00:00Z", 1, Some(5.0)),
        ],
    );
    let tags = fx.run_with(T, Some(config)).await;

    assert_tag(&tags, "ov_a", "rfm_tier", "champion", Some(200.0));
    assert_tag(&tags, "ov_b", "rfm_tier", "casual", Some(100.0));
    assert_tag(&tags, "ov_c", "rfm_tier", "big_spender", Some(300.0));
    assert_tag(&tags, "ov_d", "rfm_tier", "big_spender", Some(400.0));

    for c in ["ov_a", "ov_b", "ov_c", "ov_d"] {
        assert_tag(&tags, c, "aipl_stage", "loyalty", None);
    }
    assert_tag(&tags, "ov_v", "aipl_stage", "interest", None);
    assert_tag(&tags, "ov_k1", "aipl_stage", "awareness", None);
    assert_tag(&tags, "ov_k2", "aipl_stage", "interest", None);

    assert_eq!(tags.customers("repurchaser"), vec!["ov_a"]);
    assert_tag(&tags, "ov_a", "repurchaser", "true", Some(2.0));
    assert_eq!(tags.customers("brand_enthusiast"), vec!["ov_a"]);
    assert_tag(&tags, "ov_a", "brand_enthusiast", "Zeta", Some(0.5));

    assert_tag(&tags, "lc_new", "lifecycle", "new", Some(6.0));
    assert_tag(&tags, "lc_not_new", "lifecycle", "active", Some(7.0));
    assert_tag(&tags, "lc_active_edge", "lifecycle", "active", Some(13.0));
    assert_tag(&tags, "lc_dormant", "lifecycle", "dormant", Some(14.0));
    assert_tag(&tags, "lc_dormant_edge", "lifecycle", "dormant", Some(59.0));
    assert_tag(&tags, "lc_churned", "lifecycle", "churned", Some(60.0));
}
