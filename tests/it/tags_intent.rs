//! Intent tags (category_intent, cart_abandoner, promo_sensitive) on hand-made events. Every
//! expected row is derived from `/work/shared/spec/tags.md`, not from the SQL. As of
//! T = 2026-11-20T12:00:00Z: the 7-day window starts 2026-11-14, the 3-day one 2026-11-18.

use crate::support::*;

/// `n` product views by `customer` at `time`, ids `<prefix>-1..n`, of `category` if given.
fn views(prefix: &str, customer: &str, time: &str, category: Option<&str>, n: usize) -> Vec<Click> {
    (1..=n)
        .map(|i| {
            let v = view(&format!("{prefix}-{i}"), customer, time);
            match category {
                Some(c) => v.category(c),
                None => v,
            }
        })
        .collect()
}

#[tokio::test]
async fn category_intent_points_windows_ties_and_nulls() {
    // s(c) = product views of c + 3 × cart adds of c, both in the 7 days from 2026-11-14.
    let fx = Fixture::new();
    let mut clicks = vec![
        // ci_views: shoes viewed at 2026-11-14T00:00Z, 3 times mid-window and at T → 5; the views
        // 1 µs before the window and after T do not count → shoes, 5.
        view("k-v1", "ci_views", FIRST_7).category("shoes"),
        view("k-v2", "ci_views", "2026-11-15T10:00:00Z").category("shoes"),
        view("k-v3", "ci_views", "2026-11-16T10:00:00Z").category("shoes"),
        view("k-v4", "ci_views", "2026-11-17T10:00:00Z").category("shoes"),
        view("k-v5", "ci_views", T).category("shoes"),
        view("k-v6", "ci_views", BEFORE_7).category("shoes"),
        view("k-v7", "ci_views", AFTER_T).category("shoes"),
    ];
    // ci_mix: 2 bag views + 1 bag add (quantity 4 still scores 3) → 5; a remove and an add 1 µs
    // before the window do not count → bags, 5.
    clicks.extend(views("k-m", "ci_mix", "2026-11-18T10:00:00Z", Some("bags"), 2));
    // ci_below: 4 product views of hats; 3 category-page clicks on hats are no product views → 4: absent.
    clicks.extend(views("k-b", "ci_below", "2026-11-18T10:00:00Z", Some("hats"), 4));
    clicks.extend((1..=3).map(|i| {
        view(&format!("k-bp{i}"), "ci_below", "2026-11-18T11:00:00Z")
            .page("category")
            .category("hats")
    }));
    // ci_tie: sports/bikes 5 views = 5; Sports/shoes 2 views + 1 add = 5 → tie → "Sports/shoes"
    // ('S' sorts before 's' by bytes), 5.
    clicks.extend(views("k-t", "ci_tie", "2026-11-18T10:00:00Z", Some("sports/bikes"), 5));
    clicks.extend(views("k-u", "ci_tie", "2026-11-18T10:00:00Z", Some("Sports/shoes"), 2));
    // ci_max: laptops 7 views = 7 beat phones 2 adds = 6 → laptops, 7.
    clicks.extend(views("k-x", "ci_max", "2026-11-18T10:00:00Z", Some("laptops"), 7));
    // ci_null: 6 views and 1 add without a category → nothing to score: absent.
    clicks.extend(views("k-n", "ci_null", "2026-11-18T10:00:00Z", None, 6));
    // ci_dup: 4 game views, one of them re-sent in a second file → 4: absent.
    clicks.extend(views("k-d", "ci_dup", "2026-11-18T10:00:00Z", Some("games"), 4));
    fx.clicks("dt=2026-11-18/a.parquet", &clicks);
    fx.clicks(
        "dt=2026-11-20/resent.parquet",
        &[view("k-d-1", "ci_dup", "2026-11-18T10:00:00Z").category("games")],
    );
    fx.carts(
        "dt=2026-11-19/a.parquet",
        &[
            cart_add("c-m1", "ci_mix", "2026-11-19T10:00:00Z", 4, Some(10.0)).category("bags"),
            cart_add("c-m2", "ci_mix", "2026-11-19T11:00:00Z", 1, Some(10.0))
                .category("bags")
                .remove(),
            cart_add("c-m3", "ci_mix", BEFORE_7, 1, Some(10.0)).category("bags"),
            cart_add("c-t1", "ci_tie", "2026-11-19T10:00:00Z", 1, Some(10.0)).category("Sports/shoes"),
            cart_add("c-x1", "ci_max", "2026-11-19T10:00:00Z", 1, Some(10.0)).category("phones"),
            cart_add("c-x2", "ci_max", "2026-11-19T11:00:00Z", 1, Some(10.0)).category("phones"),
            cart_add("c-n1", "ci_null", "2026-11-19T10:00:00Z", 1, Some(10.0)),
        ],
    );
    let tags = fx.run(T).await;

    assert_eq!(
        tags.customers("category_intent"),
        sorted(&["ci_max", "ci_mix", "ci_tie", "ci_views"])
    );
    assert_tag(&tags, "ci_views", "category_intent", "shoes", Some(5.0));
    assert_tag(&tags, "ci_mix", "category_intent", "bags", Some(5.0));
    assert_tag(&tags, "ci_tie", "category_intent", "Sports/shoes", Some(5.0));
    assert_tag(&tags, "ci_max", "category_intent", "laptops", Some(7.0));
}

#[tokio::test]
async fn category_intent_leaves_out_categories_paid_in_the_last_7_days() {
    // Each customer views shoes 6 times (s = 6); cb_bought and cb_first_cat also view bags 5 times.
    let fx = Fixture::new();
    let mut clicks = Vec::new();
    for c in [
        "cb_bought",
        "cb_old_buy",
        "cb_placed",
        "cb_after",
        "cb_all_bought",
        "cb_earliest",
        "cb_x",
        "cb_first_cat",
    ] {
        clicks.extend(views(&format!("k-{c}-s"), c, "2026-11-18T10:00:00Z", Some("shoes"), 6));
    }
    for c in ["cb_bought", "cb_first_cat"] {
        clicks.extend(views(&format!("k-{c}-b"), c, "2026-11-18T10:00:00Z", Some("bags"), 5));
    }
    fx.clicks("dt=2026-11-18/a.parquet", &clicks);
    fx.orders(
        "dt=2026-11-20/a.parquet",
        &[
            // shoes paid at the first instant of the window → left out → bags, 5.
            paid("o-1", "cb_bought", FIRST_7, "b1", 50.0).category("shoes"),
            // shoes paid 1 µs before the window → shoes stays, 6.
            paid("o-2", "cb_old_buy", BEFORE_7, "b2", 50.0).category("shoes"),
            // only placed, then cancelled: no paid order → shoes, 6.
            order("o-3", "cb_placed", "2026-11-18T09:00:00Z", "b3", "placed", 50.0).category("shoes"),
            order("o-4", "cb_placed", "2026-11-18T09:30:00Z", "b3", "cancelled", 50.0).category("shoes"),
            // paid after T: not counted → shoes, 6.
            paid("o-5", "cb_after", AFTER_T, "b5", 50.0).category("shoes"),
            // shoes paid at T, the only category → nothing left: absent.
            paid("o-6", "cb_all_bought", T, "b6", 50.0).category("shoes"),
            // order b7 first paid on 2026-11-10 (outside), paid again on 2026-11-18: the earliest
            // paid event decides → no paid order in the window → shoes, 6.
            paid("o-7", "cb_earliest", "2026-11-10T10:00:00Z", "b7", 50.0).category("shoes"),
            paid("o-8", "cb_earliest", "2026-11-18T10:00:00Z", "b7", 50.0).category("shoes"),
            // another customer's shoe purchase does not affect cb_x → shoes, 6.
            paid("o-9", "cb_y", "2026-11-18T10:00:00Z", "b9", 50.0).category("shoes"),
            // order b10: earliest paid event says bags, a later one says shoes → bags left out → shoes, 6.
            paid("o-10", "cb_first_cat", "2026-11-16T10:00:00Z", "b10", 50.0).category("bags"),
            paid("o-11", "cb_first_cat", "2026-11-17T10:00:00Z", "b10", 50.0).category("shoes"),
        ],
    );
    let tags = fx.run(T).await;

    assert_tag(&tags, "cb_bought", "category_intent", "bags", Some(5.0));
    for c in [
        "cb_old_buy",
        "cb_placed",
        "cb_after",
        "cb_earliest",
        "cb_x",
        "cb_first_cat",
    ] {
        assert_tag(&tags, c, "category_intent", "shoes", Some(6.0));
    }
    assert_no_tag(&tags, "cb_all_bought", "category_intent");
    assert_no_tag(&tags, "cb_y", "category_intent");
}

#[tokio::test]
async fn cart_abandoner_latest_add_against_orders_placed_or_paid_since() {
    // true when the latest add L is on/after 2026-11-18 and no placed/paid order has L ≤ time ≤ T.
    // score = Σ quantity × unit_price over adds since 2026-11-18.
    let fx = Fixture::new();
    fx.carts(
        "dt=2026-11-20/a.parquet",
        &[
            // ca_open: 2 × 10 at 2026-11-18T00:00Z + 1 × 5.5, no order → 25.5.
            cart_add("c-01", "ca_open", FIRST_3, 2, Some(10.0)),
            cart_add("c-02", "ca_open", "2026-11-19T10:00:00Z", 1, Some(5.5)),
            // ca_placed_after: an order placed an hour after the add: absent.
            cart_add("c-03", "ca_placed_after", "2026-11-19T10:00:00Z", 1, Some(10.0)),
            // ca_placed_equal: placed at the very instant of the add (L ≤ time): absent.
            cart_add("c-04", "ca_placed_equal", "2026-11-19T10:00:00Z", 1, Some(10.0)),
            // ca_paid_before: placed and paid the day before the add → 1 × 20 = 20.
            cart_add("c-05", "ca_paid_before", "2026-11-19T10:00:00Z", 1, Some(20.0)),
            // ca_order_between: add, order, then a later add: L is the later add → 1 × 10 + 2 × 7.5 = 25.
            cart_add("c-06", "ca_order_between", "2026-11-18T08:00:00Z", 1, Some(10.0)),
            cart_add("c-07", "ca_order_between", "2026-11-19T10:00:00Z", 2, Some(7.5)),
            // ca_remove_last: add, order, then a remove: a remove is no add, L is before the order: absent.
            cart_add("c-08", "ca_remove_last", "2026-11-19T08:00:00Z", 1, Some(10.0)),
            cart_add("c-09", "ca_remove_last", "2026-11-19T10:00:00Z", 1, Some(10.0)).remove(),
            // ca_failed_after: only cancelled / payment_failed / refunded events after L → 3 × 4 = 12.
            cart_add("c-10", "ca_failed_after", "2026-11-19T10:00:00Z", 3, Some(4.0)),
            // ca_order_after_t: the order placed after T is not counted → 1 × 9 = 9.
            cart_add("c-11", "ca_order_after_t", "2026-11-20T10:00:00Z", 1, Some(9.0)),
            // ca_paid_at_t: paid exactly at T (≤ T): absent.
            cart_add("c-12", "ca_paid_at_t", "2026-11-20T10:00:00Z", 1, Some(9.0)),
        ],
    );
    fx.orders(
        "dt=2026-11-20/a.parquet",
        &[
            order("o-01", "ca_placed_after", "2026-11-19T11:00:00Z", "pa1", "placed", 10.0),
            order("o-02", "ca_placed_equal", "2026-11-19T10:00:00Z", "pe1", "placed", 10.0),
            order("o-03", "ca_paid_before", "2026-11-18T08:00:00Z", "pb1", "placed", 20.0),
            paid("o-04", "ca_paid_before", "2026-11-18T09:00:00Z", "pb1", 20.0),
            order(
                "o-05",
                "ca_order_between",
                "2026-11-18T09:00:00Z",
                "ob1",
                "placed",
                10.0,
            ),
            order("o-06", "ca_remove_last", "2026-11-19T09:00:00Z", "rl1", "placed", 10.0),
            order(
                "o-07",
                "ca_failed_after",
                "2026-11-19T11:00:00Z",
                "fa1",
                "cancelled",
                12.0,
            ),
            order(
                "o-08",
                "ca_failed_after",
                "2026-11-19T12:00:00Z",
                "fa2",
                "payment_failed",
                12.0,
            ),
            order(
                "o-09",
                "ca_failed_after",
                "2026-11-19T13:00:00Z",
                "fa3",
                "refunded",
                12.0,
            ),
            order("o-10", "ca_order_after_t", AFTER_T, "oa1", "placed", 9.0),
            paid("o-11", "ca_paid_at_t", T, "pt1", 9.0),
        ],
    );
    let tags = fx.run(T).await;

    assert_eq!(
        tags.customers("cart_abandoner"),
        sorted(&[
            "ca_open",
            "ca_paid_before",
            "ca_order_between",
            "ca_failed_after",
            "ca_order_after_t"
        ])
    );
    assert_tag(&tags, "ca_open", "cart_abandoner", "true", Some(25.5));
    assert_tag(&tags, "ca_paid_before", "cart_abandoner", "true", Some(20.0));
    assert_tag(&tags, "ca_order_between", "cart_abandoner", "true", Some(25.0));
    assert_tag(&tags, "ca_failed_after", "cart_abandoner", "true", Some(12.0));
    assert_tag(&tags, "ca_order_after_t", "cart_abandoner", "true", Some(9.0));
}

#[tokio::test]
async fn cart_abandoner_3_day_window_null_prices_duplicates_and_late_files() {
    let fx = Fixture::new();
    fx.carts(
        "dt=2026-11-19/a.parquet",
        &[
            // cw_edge: only add at 2026-11-18T00:00Z, 2 × 3.25 → 6.5.
            cart_add("c-01", "cw_edge", FIRST_3, 2, Some(3.25)),
            // cw_out: only add 1 µs before the window: absent.
            cart_add("c-02", "cw_out", BEFORE_3, 1, Some(10.0)),
            // cw_out_score: an add on 2026-11-17 (outside) and one on 2026-11-19 → only 1 × 10 = 10.
            cart_add("c-03", "cw_out_score", "2026-11-17T23:00:00Z", 1, Some(100.0)),
            cart_add("c-04", "cw_out_score", "2026-11-19T10:00:00Z", 1, Some(10.0)),
            // cw_null_price: 2 × null counts 0, + 1 × 4 → 4.
            cart_add("c-05", "cw_null_price", "2026-11-19T10:00:00Z", 2, None),
            cart_add("c-06", "cw_null_price", "2026-11-19T11:00:00Z", 1, Some(4.0)),
            // cw_only_null: 5 × null → tagged with score 0 (not null).
            cart_add("c-07", "cw_only_null", "2026-11-19T10:00:00Z", 5, None),
            // cw_after_t: the add after T is ignored, so L = 2026-11-19T10:00 and the order of
            // 2026-11-20T11:00 came after it: absent.
            cart_add("c-08", "cw_after_t", "2026-11-19T10:00:00Z", 1, Some(5.0)),
            cart_add("c-09", "cw_after_t", AFTER_T, 1, Some(50.0)),
            // cw_at_t: an add exactly at T counts → 1 × 7 = 7.
            cart_add("c-10", "cw_at_t", T, 1, Some(7.0)),
            // cw_dup: one add (2 × 10) also re-sent in a later file → 20, not 40.
            cart_add("c-11", "cw_dup", "2026-11-19T10:00:00Z", 2, Some(10.0)),
            // cw_remove_only: only a remove: absent.
            cart_add("c-12", "cw_remove_only", "2026-11-19T10:00:00Z", 1, Some(10.0)).remove(),
        ],
    );
    fx.carts(
        "dt=2026-11-20/resent.parquet",
        &[cart_add("c-11", "cw_dup", "2026-11-19T10:00:00Z", 2, Some(10.0))],
    );
    // cw_late: an add of 2026-11-18 landing in a dt=2026-11-20 file still counts → 1 × 3 = 3.
    fx.carts(
        "dt=2026-11-20/late.parquet",
        &[cart_add("c-13", "cw_late", "2026-11-18T10:00:00Z", 1, Some(3.0))],
    );
    fx.orders(
        "dt=2026-11-20/a.parquet",
        &[order("o-1", "cw_after_t", "2026-11-20T11:00:00Z", "at1", "placed", 5.0)],
    );
    let tags = fx.run(T).await;

    assert_eq!(
        tags.customers("cart_abandoner"),
        sorted(&[
            "cw_edge",
            "cw_out_score",
            "cw_null_price",
            "cw_only_null",
            "cw_at_t",
            "cw_dup",
            "cw_late"
        ])
    );
    assert_tag(&tags, "cw_edge", "cart_abandoner", "true", Some(6.5));
    assert_tag(&tags, "cw_out_score", "cart_abandoner", "true", Some(10.0));
    assert_tag(&tags, "cw_null_price", "cart_abandoner", "true", Some(4.0));
    assert_tag(&tags, "cw_only_null", "cart_abandoner", "true", Some(0.0));
    assert_tag(&tags, "cw_at_t", "cart_abandoner", "true", Some(7.0));
    assert_tag(&tags, "cw_dup", "cart_abandoner", "true", Some(20.0));
    assert_tag(&tags, "cw_late", "cart_abandoner", "true", Some(3.0));
}

#[tokio::test]
async fn promo_sensitive_discounted_share_of_paid_orders_in_365_days() {
    // true when orders_365 ≥ 2 and (orders with discount_amount > 0) / orders_365 ≥ 0.5; score = share.
    let fx = Fixture::new();
    fx.orders(
        "dt=2026-11-20/a.parquet",
        &[
            // pr_half: discounted + null discount → 1/2 = 0.5.
            paid("o-01", "pr_half", "2026-03-01T10:00:00Z", "h1", 50.0).discount(5.0),
            paid("o-02", "pr_half", "2026-04-01T10:00:00Z", "h2", 50.0),
            // pr_zero_discount: a 0 discount is no discount → 1/2 = 0.5 (not 1.0).
            paid("o-03", "pr_zero_discount", "2026-03-01T10:00:00Z", "z1", 50.0).discount(0.0),
            paid("o-04", "pr_zero_discount", "2026-04-01T10:00:00Z", "z2", 50.0).discount(3.0),
            // pr_below: 1/3 < 0.5: absent.
            paid("o-05", "pr_below", "2026-03-01T10:00:00Z", "b1", 50.0).discount(5.0),
            paid("o-06", "pr_below", "2026-04-01T10:00:00Z", "b2", 50.0),
            paid("o-07", "pr_below", "2026-05-01T10:00:00Z", "b3", 50.0),
            // pr_one: a single discounted order (orders_365 < 2): absent.
            paid("o-08", "pr_one", "2026-03-01T10:00:00Z", "one1", 50.0).discount(5.0),
            // pr_window: discounted at 2025-11-21T00:00Z + undiscounted at T → 1/2; the discounted
            // orders 1 µs before the window and after T do not count → 0.5.
            paid("o-09", "pr_window", FIRST_365, "w1", 50.0).discount(2.0),
            paid("o-10", "pr_window", T, "w2", 50.0),
            paid("o-11", "pr_window", BEFORE_365, "w3", 50.0).discount(2.0),
            paid("o-12", "pr_window", AFTER_T, "w4", 50.0).discount(2.0),
            // pr_earliest: order e1's earliest paid event has no discount (a later one has 10);
            // e2 has none → 0/2: absent.
            paid("o-13", "pr_earliest", "2026-05-01T10:00:00Z", "e1", 50.0),
            paid("o-14", "pr_earliest", "2026-05-02T10:00:00Z", "e1", 50.0).discount(10.0),
            paid("o-15", "pr_earliest", "2026-06-01T10:00:00Z", "e2", 50.0),
            // pr_all: 3 of 4 discounted → 0.75.
            paid("o-16", "pr_all", "2026-03-01T10:00:00Z", "a1", 50.0).discount(1.0),
            paid("o-17", "pr_all", "2026-04-01T10:00:00Z", "a2", 50.0).discount(1.0),
            paid("o-18", "pr_all", "2026-05-01T10:00:00Z", "a3", 50.0).discount(1.0),
            paid("o-19", "pr_all", "2026-06-01T10:00:00Z", "a4", 50.0),
            // pr_placed: 2 undiscounted paid orders; its discounted orders were only placed → 0/2: absent.
            paid("o-20", "pr_placed", "2026-03-01T10:00:00Z", "p1", 50.0),
            paid("o-21", "pr_placed", "2026-04-01T10:00:00Z", "p2", 50.0),
            order("o-22", "pr_placed", "2026-05-01T10:00:00Z", "p3", "placed", 50.0).discount(9.0),
            order("o-23", "pr_placed", "2026-06-01T10:00:00Z", "p4", "placed", 50.0).discount(9.0),
        ],
    );
    let tags = fx.run(T).await;

    assert_eq!(
        tags.customers("promo_sensitive"),
        sorted(&["pr_all", "pr_half", "pr_window", "pr_zero_discount"])
    );
    assert_tag(&tags, "pr_half", "promo_sensitive", "true", Some(0.5));
    assert_tag(&tags, "pr_zero_discount", "promo_sensitive", "true", Some(0.5));
    assert_tag(&tags, "pr_window", "promo_sensitive", "true", Some(0.5));
    assert_tag(&tags, "pr_all", "promo_sensitive", "true", Some(0.75));
}

#[tokio::test]
async fn intent_thresholds_follow_config_overrides() {
    // category_intent: 3-day window (from 2026-11-18), 1 point per add, 2 points minimum.
    // cart_abandoner: 1-day window (from 2026-11-20). promo_sensitive: 3 orders, share 0.6.
    let config = r#"
[params.category_intent]
window_days = 3
cart_add_points = 1
min_points = 2

[params.cart_abandoner]
window_days = 1

[params.promo_sensitive]
min_orders = 3
min_share = 0.6
"#;
    let fx = Fixture::new();
    fx.clicks(
        "dt=2026-11-20/a.parquet",
        &[
            // oi_cat: 1 view at 2026-11-18T00:00Z (the one 1 µs earlier is outside) + 1 add × 1 → 2.
            view("k-1", "oi_cat", FIRST_3).category("shoes"),
            view("k-2", "oi_cat", BEFORE_3).category("shoes"),
            // oi_bought: 3 bag views; bags paid on 2026-11-17 is outside the (same) 3-day window,
            // so bags is not left out → bags, 3.
            view("k-3", "oi_bought", "2026-11-19T10:00:00Z").category("bags"),
            view("k-4", "oi_bought", "2026-11-19T11:00:00Z").category("bags"),
            view("k-5", "oi_bought", "2026-11-19T12:00:00Z").category("bags"),
        ],
    );
    fx.carts(
        "dt=2026-11-20/a.parquet",
        &[
            cart_add("c-1", "oi_cat", "2026-11-19T10:00:00Z", 1, Some(10.0)).category("shoes"),
            // oi_cart_today: adds at 2026-11-20T00:00Z (1 × 10) and 1 µs before (1 × 100) → 10.
            cart_add("c-2", "oi_cart_today", "2026-11-20T00:00:00Z", 1, Some(10.0)),
            cart_add("c-3", "oi_cart_today", "2026-11-19T23:59:59.999999Z", 1, Some(100.0)),
            // oi_cart_yesterday: latest add on 2026-11-19: absent.
            cart_add("c-4", "oi_cart_yesterday", "2026-11-19T20:00:00Z", 1, Some(10.0)),
        ],
    );
    let mut orders = vec![paid("o-b1", "oi_bought", "2026-11-17T10:00:00Z", "bb1", 30.0).category("bags")];
    // (customer, discounted flags): oi_promo2 2/2 (too few orders), oi_promo3 2/3, oi_promo5 3/5 = 0.6,
    // oi_promo_half 2/4 = 0.5 < 0.6.
    for (customer, flags) in [
        ("oi_promo2", &[true, true][..]),
        ("oi_promo3", &[true, true, false][..]),
        ("oi_promo5", &[true, false, true, false, true][..]),
        ("oi_promo_half", &[true, true, false, false][..]),
    ] {
        for (i, discounted) in flags.iter().enumerate() {
            let o = paid(
                &format!("o-{customer}-{i}"),
                customer,
                &format!("2026-0{}-01T10:00:00Z", i + 1),
                &format!("{customer}-{i}"),
                40.0,
            );
            orders.push(if *discounted { o.discount(4.0) } else { o });
        }
    }
    fx.orders("dt=2026-11-20/a.parquet", &orders);
    let tags = fx.run_with(T, Some(config)).await;

    assert_eq!(tags.customers("category_intent"), sorted(&["oi_bought", "oi_cat"]));
    assert_tag(&tags, "oi_cat", "category_intent", "shoes", Some(2.0));
    assert_tag(&tags, "oi_bought", "category_intent", "bags", Some(3.0));

    assert_eq!(tags.customers("cart_abandoner"), vec!["oi_cart_today"]);
    assert_tag(&tags, "oi_cart_today", "cart_abandoner", "true", Some(10.0));

    assert_eq!(tags.customers("promo_sensitive"), sorted(&["oi_promo3", "oi_promo5"]));
    assert_tag(&tags, "oi_promo3", "promo_sensitive", "true", Some(2.0 / 3.0));
    assert_tag(&tags, "oi_promo5", "promo_sensitive", "true", Some(0.6));
}
