//! The SQL job catalog: discovery, headers, dependency order, parameters and planning
//! errors reported with file and line before anything runs.

use std::path::Path;

use tagflow::jobs::{Catalog, CatalogError, JobKind};
use tagflow::sources::schema::Schemas;

use crate::support::*;

fn schemas() -> Schemas {
    Schemas::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas")).unwrap()
}

fn streams() -> Vec<String> {
    vec![
        "carts".into(),
        "clicks".into(),
        "consents".into(),
        "orders".into(),
        "touches".into(),
    ]
}

/// A copy of the shipped catalog in a temp folder, to break or extend.
fn catalog_copy() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&shipped_sql(), dir.path());
    dir
}

fn load_err(dir: &Path) -> CatalogError {
    Catalog::load(dir, &streams()).expect_err("catalog must be rejected")
}

#[tokio::test]
async fn shipped_catalog_has_nineteen_tags_in_dependency_order_and_plans() {
    let catalog = Catalog::load(&shipped_sql(), &streams()).unwrap();
    let tags: Vec<&str> = catalog.tags().map(|j| j.name.as_str()).collect();
    assert_eq!(tags.len(), SHIPPED_TAGS.len(), "{tags:?}");
    let mut measures: Vec<&str> = catalog
        .jobs
        .iter()
        .filter(|j| j.kind == JobKind::Measure)
        .map(|j| j.name.as_str())
        .collect();
    measures.sort_unstable();
    assert_eq!(
        measures,
        vec![
            "customer_measures",
            "paid_orders",
            "purchase_model",
            "purchase_predictions",
            "repeat_purchases",
            "spend_threshold",
            "task_customer_results",
            "task_results"
        ]
    );
    let position = |name: &str| catalog.jobs.iter().position(|j| j.name == name).unwrap();
    for risk in ["refund_risk", "low_credit", "shared_device"] {
        assert!(position(risk) < position("marketing_blacklist"));
    }
    for excluded in ["marketing_blacklist", "opted_out", "over_contacted"] {
        assert!(position(excluded) < position("do_not_contact"));
    }
    assert!(position("paid_orders") < position("customer_measures"));
    assert!(position("customer_measures") < position("spend_threshold"));
    assert!(position("spend_threshold") < position("rfm_tier"));
    assert!(position("repeat_purchases") < position("purchase_model"));
    assert!(position("purchase_model") < position("purchase_predictions"));
    assert!(position("purchase_predictions") < position("churn_risk"));
    assert!(position("task_customer_results") < position("task_results"));
    let published: Vec<(&str, &str)> = catalog
        .jobs
        .iter()
        .filter_map(|j| Some((j.name.as_str(), j.publish.as_deref()?)))
        .collect();
    assert_eq!(published, [("task_results", "task_results")]);
    catalog.validate(&schemas()).await.unwrap();
}

#[test]
fn a_dependency_cycle_is_reported_with_the_jobs_in_it() {
    let dir = catalog_copy();
    std::fs::write(
        dir.path().join("risk/a.sql"),
        "-- name = \"a\"\n-- family = \"risk\"\n-- description = \"d\"\n-- depends_on = [\"b\"]\nSELECT customer_id, value, score FROM b\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("risk/b.sql"),
        "-- name = \"b\"\n-- family = \"risk\"\n-- description = \"d\"\n-- depends_on = [\"a\"]\nSELECT customer_id, value, score FROM a\n",
    )
    .unwrap();
    let err = load_err(dir.path());
    assert!(matches!(err, CatalogError::Cycle { .. }), "{err}");
    let message = err.to_string();
    assert!(
        message.contains("a -> b -> a") || message.contains("b -> a -> b"),
        "{message}"
    );
}

#[test]
fn an_unknown_input_is_reported_with_file_and_line() {
    let dir = catalog_copy();
    let file = dir.path().join("intent/x.sql");
    std::fs::write(
        &file,
        "-- name = \"x\"\n-- family = \"intent\"\n-- description = \"d\"\n-- inputs = [\"customer_days\", \"sessions\"]\nSELECT 1\n",
    )
    .unwrap();
    let message = load_err(dir.path()).to_string();
    assert!(message.contains(&format!("{}:4:", file.display())), "{message}");
    assert!(message.contains("unknown input 'sessions'"), "{message}");
}

#[test]
fn header_errors_name_the_file_and_line() {
    let dir = catalog_copy();
    let file = dir.path().join("intent/x.sql");
    // unknown header key on line 3
    std::fs::write(
        &file,
        "-- name = \"x\"\n-- family = \"intent\"\n-- owner = \"me\"\n-- description = \"d\"\nSELECT 1\n",
    )
    .unwrap();
    let message = load_err(dir.path()).to_string();
    assert!(
        message.contains(&format!("{}:3: header error", file.display())),
        "{message}"
    );
    assert!(message.contains("owner"), "{message}");
    // no header at all
    std::fs::write(&file, "SELECT 1\n").unwrap();
    let message = load_err(dir.path()).to_string();
    assert!(message.contains("missing header"), "{message}");
    // name not matching the file
    std::fs::write(
        &file,
        "-- name = \"y\"\n-- family = \"intent\"\n-- description = \"d\"\nSELECT 1\n",
    )
    .unwrap();
    let message = load_err(dir.path()).to_string();
    assert!(message.contains("must match the file name"), "{message}");
}

#[test]
fn placeholders_must_be_declared_and_parameters_used() {
    let dir = catalog_copy();
    let file = dir.path().join("intent/x.sql");
    std::fs::write(
        &file,
        "-- name = \"x\"\n-- family = \"intent\"\n-- description = \"d\"\n-- inputs = [\"customer_days\"]\nSELECT customer_id, 'true' AS value,\n  CAST(NULL AS DOUBLE) AS score FROM customer_days WHERE event_day > {{as_of_day}} - {{window}}\n",
    )
    .unwrap();
    let message = load_err(dir.path()).to_string();
    assert!(message.contains(&format!("{}:6:", file.display())), "{message}");
    assert!(message.contains("unknown placeholder {{window}}"), "{message}");

    std::fs::write(
        &file,
        "-- name = \"x\"\n-- family = \"intent\"\n-- description = \"d\"\n-- inputs = [\"customer_days\"]\n-- [params]\n-- window = 3\nSELECT customer_id, 'true' AS value, CAST(NULL AS DOUBLE) AS score FROM customer_days\n",
    )
    .unwrap();
    let message = load_err(dir.path()).to_string();
    assert!(
        message.contains("parameter 'window' is declared but never used"),
        "{message}"
    );
}

#[tokio::test]
async fn sql_that_does_not_plan_is_reported_with_file_and_line_before_anything_runs() {
    let dir = catalog_copy();
    let file = dir.path().join("intent/x.sql");
    // `device_days` is not a declared input of this job: planning fails on line 6
    std::fs::write(
        &file,
        "-- name = \"x\"\n-- family = \"intent\"\n-- description = \"d\"\n-- inputs = [\"customer_days\"]\nSELECT c.customer_id, 'true' AS value, CAST(NULL AS DOUBLE) AS score\nFROM device_days c\n",
    )
    .unwrap();
    let catalog = Catalog::load(dir.path(), &streams()).unwrap();
    let message = catalog
        .validate(&schemas())
        .await
        .expect_err("must not plan")
        .to_string();
    assert!(message.contains(&file.display().to_string()), "{message}");
    assert!(message.to_lowercase().contains("device_days"), "{message}");

    // a syntax error points at its line
    std::fs::write(
        &file,
        "-- name = \"x\"\n-- family = \"intent\"\n-- description = \"d\"\n-- inputs = [\"customer_days\"]\nSELECT customer_id, 'true' AS value, CAST(NULL AS DOUBLE) AS score\nFROM customer_days\nWHERE customer_id = = 1\n",
    )
    .unwrap();
    let catalog = Catalog::load(dir.path(), &streams()).unwrap();
    let message = catalog
        .validate(&schemas())
        .await
        .expect_err("must not plan")
        .to_string();
    assert!(message.contains(&format!("{}:7:", file.display())), "{message}");

    // a tag that returns the wrong columns
    std::fs::write(
        &file,
        "-- name = \"x\"\n-- family = \"intent\"\n-- description = \"d\"\n-- inputs = [\"customer_days\"]\nSELECT customer_id, 'true' AS tag_value FROM customer_days\n",
    )
    .unwrap();
    let catalog = Catalog::load(dir.path(), &streams()).unwrap();
    let message = catalog
        .validate(&schemas())
        .await
        .expect_err("wrong columns")
        .to_string();
    assert!(message.contains("must return exactly the columns"), "{message}");
}

#[tokio::test]
async fn a_broken_catalog_fails_the_run_before_reading_and_keeps_the_published_table() {
    let fx = Fixture::new();
    fx.clicks("a.parquet", &[view("k1", "c1", "2026-11-19T10:00:00Z")]);
    fx.run("2026-11-20T00:00:00Z").await;
    let dir = catalog_copy();
    std::fs::write(
        dir.path().join("intent/x.sql"),
        "-- name = \"x\"\n-- family = \"intent\"\n-- description = \"d\"\nSELEC 1\n",
    )
    .unwrap();
    let mut settings = fx.settings("2026-11-21T00:00:00Z", None).unwrap();
    settings.sql_dir = dir.path().to_path_buf();
    let err = tagflow::app::run::run(&settings).await.expect_err("broken catalog");
    assert_eq!(err.exit_code(), tagflow::app::error::exit::CONFIG);
    let warehouse =
        tagflow::storage::Location::parse(&fx.warehouse_dir().to_string_lossy(), &Default::default()).unwrap();
    let table = tagflow::publish::open_published(&warehouse, "customer_tags", None)
        .await
        .unwrap();
    assert_eq!(table.version(), Some(0), "no new version was published");
}

#[tokio::test]
async fn parameter_overrides_are_validated() {
    let fx = Fixture::new();
    fx.clicks("a.parquet", &[view("k1", "c1", "2026-11-19T10:00:00Z")]);
    for (config, expected) in [
        ("[params.nope]\nx = 1\n", "no job named 'nope'"),
        ("[params.low_credit]\nmin_event = 2\n", "has no parameter 'min_event'"),
        ("[params.low_credit]\nmin_events = \"two\"\n", "expected a value like 3"),
        ("landing_zone = \"x\"\n", "unknown field `landing_zone`"),
    ] {
        let err = fx
            .try_run("2026-11-20T00:00:00Z", Some(config))
            .await
            .expect_err(config);
        assert!(err.to_string().contains(expected), "{config}: {err}");
        assert_eq!(err.exit_code(), tagflow::app::error::exit::CONFIG);
    }
    // an integer may replace a float default
    fx.try_run(
        "2026-11-20T00:00:00Z",
        Some("[params.brand_enthusiast]\nmin_share = 1\n"),
    )
    .await
    .unwrap();
}

/// Adding a tag is adding SQL files: no Rust code. A tag on a signal no state table keeps
/// yet comes with a state job that keeps it.
#[tokio::test]
async fn a_new_sql_file_is_a_new_published_tag() {
    let fx = Fixture::new();
    fx.clicks(
        "a.parquet",
        &[
            view("k1", "c1", "2026-11-19T10:00:00Z").page("search"),
            view("k2", "c2", "2026-11-19T10:00:00Z"),
        ],
    );
    let dir = catalog_copy();
    std::fs::write(
        dir.path().join("state/search_days.sql"),
        "-- name = \"search_days\"\n-- kind = \"state\"\n-- description = \"Searches per customer and day, the last 7 days.\"\n-- inputs = [\"clicks\"]\n-- key = [\"customer_id\", \"event_day\"]\n-- day_column = \"event_day\"\n-- [merge]\n-- searches = \"sum\"\n-- [params]\n-- retain_days = 7\nSELECT customer_id, event_day, COUNT(*) AS searches FROM clicks\nWHERE page_type = 'search'\nGROUP BY customer_id, event_day\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("intent/searcher.sql"),
        "-- name = \"searcher\"\n-- family = \"intent\"\n-- description = \"Searched in the last N days.\"\n-- inputs = [\"search_days\"]\n-- [params]\n-- window_days = 7\nWITH recent_searches AS (\n  SELECT customer_id, SUM(searches) AS searches FROM search_days\n  WHERE event_day > {{as_of_day}} - {{window_days}}\n  GROUP BY customer_id\n)\nSELECT customer_id, 'true' AS value, CAST(searches AS DOUBLE) AS score FROM recent_searches\n",
    )
    .unwrap();
    let mut settings = fx.settings("2026-11-20T00:00:00Z", None).unwrap();
    settings.sql_dir = dir.path().to_path_buf();
    let report = tagflow::app::run::run(&settings).await.unwrap();
    assert!(report.tags.iter().any(|t| t.tag == "searcher" && t.rows == 1));
    let tags = fx.published(None).await;
    assert_eq!(tags.customers("searcher"), vec!["c1"]);
    assert_eq!(tags.rows.iter().find(|r| r.tag == "searcher").unwrap().family, "intent");
}

/// `{{as_of}}` is the as-of instant as a UTC timestamp, comparable with `event_time`.
#[tokio::test]
async fn the_as_of_placeholder_is_a_utc_timestamp() {
    let fx = Fixture::new();
    fx.clicks(
        "a.parquet",
        &[
            view("k1", "c1", "2026-11-19T23:00:00Z"),
            view("k2", "c2", "2026-11-19T22:59:59Z"),
        ],
    );
    let dir = catalog_copy();
    std::fs::write(
        dir.path().join("intent/last_hour.sql"),
        "-- name = \"last_hour\"\n-- family = \"intent\"\n-- description = \"Seen in the hour before the as-of time.\"\n-- inputs = [\"customer_activity\"]\nSELECT customer_id, 'true' AS value, CAST(NULL AS DOUBLE) AS score\nFROM customer_activity WHERE last_seen >= {{as_of}} - INTERVAL '1 hour'\n",
    )
    .unwrap();
    let mut settings = fx.settings("2026-11-20T00:00:00Z", None).unwrap();
    settings.sql_dir = dir.path().to_path_buf();
    tagflow::app::run::run(&settings).await.unwrap();
    assert_eq!(fx.published(None).await.customers("last_hour"), vec!["c1"]);
}

/// `--jobs` runs the named jobs and what they read; every other tag keeps its published
/// rows, as_of included.
#[tokio::test]
async fn a_partial_run_replaces_only_the_jobs_it_ran() {
    let fx = Fixture::new();
    let failed = |id: &str, time: &str| order(id, "c1", time, id, "cancelled", 10.0);
    fx.orders(
        "a.parquet",
        &[
            failed("o1", "2026-11-10T10:00:00Z"),
            failed("o2", "2026-11-11T10:00:00Z"),
        ],
    );
    fx.run("2026-11-15T00:00:00Z").await;
    // a third failure makes c1 low_credit, hence blacklisted
    fx.orders("b.parquet", &[failed("o3", "2026-11-17T10:00:00Z")]);
    let mut settings = fx.settings("2026-11-20T00:00:00Z", None).unwrap();
    settings.jobs = vec!["marketing_blacklist".into()];
    let report = tagflow::app::run::run(&settings).await.unwrap();
    let ran: Vec<&str> = report.tags.iter().map(|t| t.tag.as_str()).collect();
    assert_eq!(ran.len(), 4, "the blacklist and the three risk tags it reads: {ran:?}");

    let before = fx.published(Some(0)).await;
    let after = fx.published(None).await;
    assert_eq!(after.value("c1", "low_credit").as_deref(), Some("true"));
    assert_eq!(after.value("c1", "marketing_blacklist").as_deref(), Some("true"));
    // lifecycle was not run: the row of 11-15 (4 days since 11-11), not 3 days since 11-17
    assert_eq!(after.get("c1", "lifecycle"), before.get("c1", "lifecycle"));
    assert_close(after.score("c1", "lifecycle"), 4.0);

    settings.jobs = vec!["nope".into()];
    let err = tagflow::app::run::run(&settings).await.expect_err("unknown job");
    assert!(err.to_string().contains("no job named 'nope'"));
}

/// Tags read state, never raw streams: a stream can only be read through a state job, which
/// is what keeps refreshes incremental.
#[test]
fn a_tag_reading_a_stream_is_told_to_read_state() {
    let dir = catalog_copy();
    let file = dir.path().join("intent/x.sql");
    std::fs::write(
        &file,
        "-- name = \"x\"\n-- family = \"intent\"\n-- description = \"d\"\n-- inputs = [\"clicks\"]\nSELECT 1\n",
    )
    .unwrap();
    let message = load_err(dir.path()).to_string();
    assert!(message.contains(&format!("{}:4:", file.display())), "{message}");
    assert!(message.contains("'clicks' is an event stream"), "{message}");
}

fn state_job(header: &str, body: &str) -> String {
    format!("-- name = \"x\"\n-- kind = \"state\"\n-- description = \"d\"\n-- inputs = [\"clicks\"]\n{header}{body}")
}

/// Each rule of a state job's header is checked, with file and line.
#[test]
fn linked_by_refines_scope_customer_only() {
    let dir = catalog_copy();
    let path = dir.path().join("risk/shared_device.sql");
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, text.replace("-- scope = \"customer\"\n", "")).unwrap();
    let message = load_err(dir.path()).to_string();
    assert!(message.contains("linked_by"), "{message}");
    assert!(message.contains("shared_device.sql:"), "{message}");
}

#[tokio::test]
async fn state_job_headers_are_checked() {
    let body = "SELECT customer_id, event_day, COUNT(*) AS views FROM clicks GROUP BY customer_id, event_day\n";
    let cases = [
        ("-- [merge]\n-- views = \"sum\"\n", "needs a `key`"),
        (
            "-- key = [\"customer_id\", \"event_day\"]\n-- day_column = \"event_day\"\n-- [merge]\n-- views = \"sum\"\n",
            "needs [params] retain_days",
        ),
        (
            "-- key = [\"customer_id\"]\n-- day_column = \"event_day\"\n-- [merge]\n-- views = \"sum\"\n-- [params]\n-- retain_days = 3\n",
            "day_column 'event_day' must be one of the key columns",
        ),
        (
            "-- key = [\"customer_id\", \"event_day\"]\n-- [merge]\n-- views = \"avg\"\n",
            "header error",
        ),
    ];
    for (header, expected) in cases {
        let dir = catalog_copy();
        std::fs::write(dir.path().join("state/x.sql"), state_job(header, body)).unwrap();
        let message = load_err(dir.path()).to_string();
        assert!(message.contains(expected), "{header}\n=> {message}");
        assert!(message.contains("x.sql:"), "{message}");
    }

    // Found when planning: a column without a merge rule, a rule on a missing column.
    let planned = [
        (
            "-- key = [\"customer_id\"]\n-- [merge]\n-- views = \"sum\"\n",
            "'event_day' is neither in `key` nor under [merge]",
        ),
        (
            "-- key = [\"customer_id\", \"event_day\"]\n-- [merge]\n-- views = \"sum\"\n-- clicks = \"max\"\n",
            "'clicks' is not a column",
        ),
        (
            "-- key = [\"customer_id\", \"event_day\"]\n-- [merge]\n-- views = { first_by = [\"seen_at\"] }\n",
            "first_by column 'seen_at'",
        ),
    ];
    for (header, expected) in planned {
        let dir = catalog_copy();
        std::fs::write(dir.path().join("state/x.sql"), state_job(header, body)).unwrap();
        let catalog = Catalog::load(dir.path(), &streams()).unwrap();
        let message = catalog.validate(&schemas()).await.expect_err(expected).to_string();
        assert!(message.contains(expected), "{header}\n=> {message}");
    }
}

/// A state table that sums must not keep more days than the de-duplication memory reaches.
#[tokio::test]
async fn dedup_days_must_cover_summing_state() {
    let fx = Fixture::new();
    fx.clicks("a.parquet", &[view("k1", "c1", "2026-11-19T10:00:00Z")]);
    let error = fx
        .try_run("2026-11-20T00:00:00Z", Some("dedup_days = 20\n"))
        .await
        .unwrap_err();
    let message = error.to_string();
    assert_eq!(error.exit_code(), 2, "{message}");
    assert!(
        message.contains("dedup_days") && message.contains("keeps (30 days)"),
        "{message}"
    );
}

/// A tag's definition fingerprint changes with its own SQL or parameters and with anything
/// it reads, directly or not, and with nothing else (not its checks, not other tags).
#[test]
fn a_definition_changes_with_what_the_tag_reads_and_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&shipped_sql(), dir.path());
    let definitions = || Catalog::load(dir.path(), &streams()).unwrap().definitions();
    let shipped = definitions();
    assert_eq!(shipped.len(), SHIPPED_TAGS.len());
    let changed = |before: &tagflow::jobs::Definitions, after: &tagflow::jobs::Definitions| -> Vec<String> {
        after
            .iter()
            .filter(|(tag, d)| before.get(*tag) != Some(*d))
            .map(|(tag, _)| tag.clone())
            .collect()
    };

    // A check is not the definition.
    edit(
        &dir.path().join("risk/low_credit.sql"),
        "-- [checks]\n",
        "-- [checks]\n-- min_rows = 0\n",
    );
    assert_eq!(changed(&shipped, &definitions()), Vec::<String>::new());
    // A tag's own parameter: that tag, and the tag that reads it.
    edit(
        &dir.path().join("risk/low_credit.sql"),
        "min_events = 3",
        "min_events = 4",
    );
    let after_low_credit = definitions();
    assert_eq!(
        changed(&shipped, &after_low_credit),
        ["do_not_contact", "low_credit", "marketing_blacklist"]
    );
    // A measure's parameter: every tag that reads the measure, directly or through a tag.
    edit(
        &dir.path().join("measures/customer_measures.sql"),
        "engagement_window_days = 30",
        "engagement_window_days = 31",
    );
    assert_eq!(
        changed(&after_low_credit, &definitions()),
        [
            "aipl_stage",
            "do_not_contact",
            "lifecycle",
            "marketing_blacklist",
            "promo_sensitive",
            "refund_risk",
            "rfm_tier"
        ]
    );
}
