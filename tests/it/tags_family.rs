//! The family column of published rows, checked against the spec's families of the 19 tags
//! (`shared/spec/tags.md`, v1 and v2), independently of the SQL headers. Every other hand-made tag case
//! is a case file beside its SQL (`sql/<family>/<tag>.cases.toml`, run by `tag_cases`).

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
        ("preferred_channel", "behaviour"),
        ("active_hour", "behaviour"),
        ("churn_risk", "predictive"),
        ("expected_orders_90", "predictive"),
        ("opted_out", "compliance"),
        ("over_contacted", "compliance"),
        ("do_not_contact", "compliance"),
    ]
    .into_iter()
    .collect();
    let published: BTreeSet<&str> = tags.rows.iter().map(|r| r.tag.as_str()).collect();
    // Every v1 tag, and of v2 those this data reaches (f_browser's 5 views make an active
    // hour; the blacklisted are not to be contacted). The rest: the case files.
    let expected: BTreeSet<&str> = SHIPPED_TAGS[..12]
        .iter()
        .copied()
        .chain(["active_hour", "do_not_contact"])
        .collect();
    assert_eq!(published, expected, "published tags");
    for row in &tags.rows {
        assert_eq!(
            Some(row.family.as_str()),
            families.get(row.tag.as_str()).copied(),
            "{row:?}"
        );
    }
}
