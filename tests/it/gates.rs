//! Quality gates: a tag's declared checks (not null, accepted values, row bounds, drift
//! against the previous snapshot) block a publish unless forced; built-in checks (one row
//! per customer) cannot be forced; failures are recorded in job_runs with their numbers.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use arrow::array::{Array, Int32Array, StringArray};
use serde_json::Value;
use tagflow::app::error::{exit, Error};
use tagflow::publish::query_published;
use tagflow::publish::snapshots;
use tagflow::publish::tables::RUNS_TABLE;
use tagflow::serve;

use crate::support::*;

const AS_OF: &str = "2026-11-19T23:59:59Z";

/// A fixture with generated landing files and its own copy of the shipped catalog.
async fn generated(customers: usize, seed: u64) -> (Fixture, PathBuf) {
    let fx = Fixture::new();
    generate_into(&fx.landing_dir(), customers, 150, seed).await;
    let sql = fx.dir.path().join("sql");
    copy_dir(&shipped_sql(), &sql);
    (fx, sql)
}

/// `tagflow run --json` on the fixture with the catalog at `sql`.
fn cli_run(fx: &Fixture, sql: &Path, extra: &[&str]) -> std::process::Output {
    fx.command(&["run", "--json", "--as-of", AS_OF])
        .arg("--sql-dir")
        .arg(sql)
        .args(extra)
        .output()
        .expect("run tagflow")
}

fn report(output: &std::process::Output) -> Value {
    assert!(
        output.status.success(),
        "run failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("a JSON report")
}

/// Customers per value of `tag` in a JSON run report.
fn values(report: &Value, tag: &str) -> BTreeMap<String, u64> {
    let tag = report["tags"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["tag"] == tag)
        .expect("tag in report");
    serde_json::from_value(tag["values"].clone()).unwrap()
}

/// The newest job_runs row: status, exit code and the `jobs` JSON.
async fn last_run(fx: &Fixture) -> (String, i32, Value) {
    let batches = query_published(
        &location(&fx.warehouse_dir()),
        RUNS_TABLE,
        None,
        "SELECT status, exit_code, jobs FROM job_runs ORDER BY started_at DESC LIMIT 1",
    )
    .await
    .expect("job_runs");
    let b = &batches[0];
    let text = |i: usize| {
        b.column(i)
            .as_any()
            .downcast_ref::<StringArray>()
            .unwrap()
            .value(0)
            .to_string()
    };
    let code = b.column(1).as_any().downcast_ref::<Int32Array>().unwrap().value(0);
    (text(0), code, serde_json::from_str(&text(2)).unwrap())
}

/// (check, value) of the failed checks of `job` in a job_runs `jobs` JSON.
fn failed_checks(jobs: &Value, job: &str) -> BTreeSet<(String, Option<String>)> {
    jobs.as_array()
        .unwrap()
        .iter()
        .filter(|j| j["job"] == job)
        .flat_map(|j| j["failed_checks"].as_array().cloned().unwrap_or_default())
        .map(|c| {
            (
                c["check"].as_str().unwrap().to_string(),
                c["value"].as_str().map(String::from),
            )
        })
        .collect()
}

#[tokio::test]
async fn a_drift_gate_stops_a_broken_job_and_the_previous_version_stays_served() {
    let (fx, sql) = generated(1200, 21).await;
    let rfm = sql.join("behaviour/rfm_tier.sql");
    // The shipped rule (a value may move by at most 75%), applied to this data set's
    // segment sizes (the shipped floor of 1000 customers is above them).
    edit(&sql.join("defaults.toml"), "min_base = 1000", "min_base = 100");
    let first = report(&cli_run(&fx, &sql, &[]));
    let good_version = first["published"]["version"].as_u64().unwrap();
    let before = fx.published(None).await;

    // The deliberate break: high frequency from 1 order in 365 days instead of 3.
    edit(&rfm, "high_frequency_orders = 3", "high_frequency_orders = 1");
    let blocked = cli_run(&fx, &sql, &[]);
    let stderr = String::from_utf8_lossy(&blocked.stderr);
    assert_eq!(blocked.status.code(), Some(exit::GATE), "{stderr}");
    assert!(
        stderr.contains("quality gate failed, nothing was published"),
        "{stderr}"
    );
    assert!(stderr.contains("rfm_tier: drift ["), "{stderr}");
    assert!(blocked.stdout.is_empty(), "no report for a run that did not publish");

    // Nothing moved: the same version, the same rows, and a server still serves it.
    let live = snapshots::latest_publish(&location(&fx.warehouse_dir()))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(live.version, good_version);
    assert_eq!(fx.published(None).await.rows, before.rows);
    let settings = fx.settings(AS_OF, None).unwrap();
    let mut options = settings.serve.clone();
    options.listen = "127.0.0.1:0".parse().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = serve::start(settings.warehouse.clone().unwrap(), options, async move {
        let _ = stopped.await;
    })
    .await
    .unwrap();
    for _ in 0..300 {
        if server.state.current().is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(server.state.current().map(|i| i.version), Some(good_version));
    let _ = stop.send(());
    server.wait().await.unwrap();

    let (status, code, jobs) = last_run(&fx).await;
    assert_eq!((status.as_str(), code), ("gate_failed", exit::GATE));
    let recorded = failed_checks(&jobs, "rfm_tier");

    // --force publishes the broken job's rows and records that it did.
    let forced = report(&cli_run(&fx, &sql, &["--force"]));
    assert_eq!(forced["published"]["version"].as_u64(), Some(good_version + 1));
    assert_eq!(forced["gates"]["forced"], true);
    let (status, code, forced_jobs) = last_run(&fx).await;
    assert_eq!((status.as_str(), code), ("forced", exit::OK));
    assert_eq!(failed_checks(&forced_jobs, "rfm_tier"), recorded);

    // The failures are exactly the values whose size moved by more than 75% of a
    // previous size of at least 100, worked out from the two published reports.
    let (old, new) = (values(&first, "rfm_tier"), values(&forced, "rfm_tier"));
    let expected: BTreeSet<(String, Option<String>)> = old
        .keys()
        .chain(new.keys())
        .filter(|v| {
            let (o, n) = (old.get(*v).copied().unwrap_or(0), new.get(*v).copied().unwrap_or(0));
            o >= 100 && o.abs_diff(n) as f64 > 0.75 * o as f64
        })
        .map(|v| ("drift".to_string(), Some(v.clone())))
        .collect();
    assert!(!expected.is_empty(), "the break moves a segment: {old:?} -> {new:?}");
    assert_eq!(recorded, expected);
    let failures = forced["gates"]["failures"].as_array().unwrap();
    assert!(failures.iter().all(|f| f["job"] == "rfm_tier"), "{failures:?}");

    // The next run measures drift against the version now live, and passes.
    let after = report(&cli_run(&fx, &sql, &[]));
    assert_eq!(after["gates"]["failures"].as_array().map(Vec::len), Some(0));
    assert_eq!(last_run(&fx).await.0, "succeeded");
}

#[tokio::test]
async fn declared_checks_fail_with_their_numbers_and_publish_nothing() {
    let (fx, sql) = generated(300, 4).await;
    let mut settings = fx.settings(AS_OF, None).unwrap();
    settings.sql_dir = sql.clone();
    let good = tagflow::app::run::run(&settings).await.expect("first run");
    let rows = |tag: &str| good.tags.iter().find(|t| t.tag == tag).unwrap().rows;
    let prospects = good.tags.iter().find(|t| t.tag == "rfm_tier").unwrap().values["prospect"];
    assert!(prospects > 0 && rows("lifecycle") > 10 && rows("aipl_stage") > 0);

    edit(&sql.join("behaviour/rfm_tier.sql"), ", \"prospect\"]", "]");
    edit(
        &sql.join("behaviour/lifecycle.sql"),
        "-- [checks]\n",
        "-- [checks]\n-- max_rows = 10\n",
    );
    edit(
        &sql.join("behaviour/aipl_stage.sql"),
        "-- [checks]\n",
        "-- [checks]\n-- not_null = [\"score\"]\n",
    );
    let min = rows("repurchaser") + 1;
    edit(
        &sql.join("behaviour/repurchaser.sql"),
        "-- [checks]\n",
        &format!("-- [checks]\n-- min_rows = {min}\n"),
    );
    let err = tagflow::app::run::run(&settings).await.expect_err("gates fail");
    assert_eq!(err.exit_code(), exit::GATE);
    let Error::Gate(gate) = &err else { panic!("{err}") };
    let got: BTreeSet<(String, String, Option<String>, String)> = gate
        .report
        .failures
        .iter()
        .map(|f| (f.job.clone(), f.check.clone(), f.value.clone(), f.detail.clone()))
        .collect();
    let aipl = rows("aipl_stage");
    let expected = BTreeSet::from([
        (
            "aipl_stage".into(),
            "not_null".into(),
            None,
            format!("score is null in {aipl} of {aipl} rows"),
        ),
        (
            "lifecycle".into(),
            "max_rows".into(),
            None,
            format!("{} rows, at most 10 expected", rows("lifecycle")),
        ),
        (
            "repurchaser".into(),
            "min_rows".into(),
            None,
            format!("{} rows, at least {min} expected", min - 1),
        ),
        (
            "rfm_tier".into(),
            "accepted_values".into(),
            Some("prospect".into()),
            format!(
                "{prospects} customers have a value outside [\"champion\", \"devoted\", \"big_spender\", \"casual\"]"
            ),
        ),
    ]);
    assert_eq!(got, expected);
    assert_eq!(gate.report.baseline_version, Some(good.published.version));
    let live = snapshots::latest_publish(&location(&fx.warehouse_dir()))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(live.version, good.published.version, "nothing was published");
}

#[test]
fn built_in_checks_cannot_be_forced() {
    let fx = Fixture::new();
    fx.clicks("a.parquet", &[view("k1", "c1", "2026-11-19T10:00:00Z")]);
    let sql = fx.dir.path().join("sql");
    copy_dir(&shipped_sql(), &sql);
    std::fs::write(
        sql.join("behaviour/two_rows.sql"),
        "-- name = \"two_rows\"\n-- family = \"behaviour\"\n-- description = \"broken: two rows per customer\"\n\
         -- inputs = [\"customer_measures\"]\n\
         SELECT customer_id, 'a' AS value, 1.0 AS score FROM customer_measures\n\
         UNION ALL SELECT customer_id, 'b' AS value, 1.0 AS score FROM customer_measures\n",
    )
    .unwrap();
    let out = cli_run(&fx, &sql, &["--force"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(exit::GATE), "{stderr}");
    assert!(
        stderr.contains("two_rows") && stderr.contains("unique: customer 'c1' has more than one row"),
        "{stderr}"
    );
    assert!(stderr.contains("`--force` cannot override it"), "{stderr}");
    assert!(
        !fx.warehouse_dir().join("customer_tags").exists(),
        "nothing was published"
    );
}

#[test]
fn check_headers_are_validated_before_anything_runs() {
    let cases = [
        (
            "behaviour/lifecycle.sql",
            "-- [checks]\n",
            "-- [checks]\n-- max_row = 3\n",
            "unknown field `max_row`",
        ),
        (
            "behaviour/lifecycle.sql",
            "-- [checks]\n",
            "-- [checks]\n-- min_rows = 5\n-- max_rows = 4\n",
            "min_rows (5) is above max_rows (4)",
        ),
        (
            "behaviour/aipl_stage.sql",
            "-- [checks]\n",
            "-- [checks]\n-- not_null = [\"value\"]\n",
            "'value' is not a nullable output column",
        ),
        (
            "measures/customer_measures.sql",
            "-- engagement_window_days = 30\n",
            "-- engagement_window_days = 30\n-- [checks]\n-- min_rows = 1\n",
            "[checks] apply to tag jobs only",
        ),
    ];
    for (file, from, to, message) in cases {
        validation_fails(file, from, to, message, &format!("{file}:"));
    }
}

/// `tagflow jobs validate` on the shipped catalog with `from` replaced by `to` in `file`
/// exits 2 with `message`, naming `named`.
fn validation_fails(file: &str, from: &str, to: &str, message: &str, named: &str) {
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&shipped_sql(), dir.path());
    edit(&dir.path().join(file), from, to);
    let out = tagflow()
        .args(["jobs", "validate", "--sql-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(exit::CONFIG), "{file}: {stderr}");
    assert!(stderr.contains(message), "{file}: expected {message:?} in {stderr}");
    assert!(stderr.contains(named), "{file}: expected {named:?} named in {stderr}");
}

/// The drift rule every shipped tag shares comes from `sql/defaults.toml`, and a tag's own
/// header wins key by key. A broken defaults file stops the catalog with the file named.
#[test]
fn folder_defaults_fill_headers_and_a_header_wins() {
    let show = |dir: &std::path::Path| {
        let out = tagflow()
            .args(["jobs", "show", "rfm_tier", "--sql-dir"])
            .arg(dir)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let json_end = text.find("\n}\n").expect("the job as JSON") + 2;
        serde_json::from_str::<serde_json::Value>(&text[..json_end]).unwrap()
    };
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&shipped_sql(), dir.path());
    let drift = &show(dir.path())["checks"]["drift"];
    assert_eq!(
        (drift["max_change_pct"].as_f64(), drift["min_base"].as_u64()),
        (Some(75.0), Some(1000))
    );

    let rfm = dir.path().join("behaviour/rfm_tier.sql");
    edit(
        &rfm,
        "-- [checks]\n",
        "-- [checks.drift]\n-- min_base = 5\n-- [checks]\n",
    );
    let drift = &show(dir.path())["checks"]["drift"];
    assert_eq!(
        (drift["max_change_pct"].as_f64(), drift["min_base"].as_u64()),
        (Some(75.0), Some(5))
    );

    for (from, to, message, named) in [
        (
            "max_change_pct = 75\n",
            "",
            "needs max_change_pct or max_change_customers",
            "behaviour/active_hour.sql:",
        ),
        (
            "[tag.checks.drift]",
            "[tags.checks.drift]",
            "unknown table `tags`",
            "defaults.toml:",
        ),
    ] {
        validation_fails("defaults.toml", from, to, message, named);
    }
}

/// Move the landing files of days after `cutoff` (`<stream>/dt=YYYY-MM-DD/...`) into
/// `aside`, keeping their paths; returns how many folders moved.
fn hold_back_days_after(landing: &Path, aside: &Path, cutoff: &str) -> usize {
    let mut moved = 0;
    for stream in std::fs::read_dir(landing).unwrap() {
        let stream = stream.unwrap().path();
        for day in std::fs::read_dir(&stream).unwrap() {
            let day = day.unwrap().path();
            let name = day.file_name().unwrap().to_string_lossy().to_string();
            if name.strip_prefix("dt=").is_some_and(|d| d > cutoff) {
                let to = aside.join(stream.file_name().unwrap()).join(&name);
                std::fs::create_dir_all(to.parent().unwrap()).unwrap();
                std::fs::rename(&day, &to).unwrap();
                moved += 1;
            }
        }
    }
    moved
}

/// Put back what [`hold_back_days_after`] moved.
fn land_held_back(landing: &Path, aside: &Path) {
    for stream in std::fs::read_dir(aside).unwrap() {
        let stream = stream.unwrap().path();
        for day in std::fs::read_dir(&stream).unwrap() {
            let day = day.unwrap().path();
            std::fs::rename(
                &day,
                landing.join(stream.file_name().unwrap()).join(day.file_name().unwrap()),
            )
            .unwrap();
        }
    }
}

/// A month of late files landing at once moves segments far beyond the drift rule, with
/// every definition unchanged: the data moved, nothing is broken. The run publishes and
/// reports the moves (run report, job_runs); a rule with `on_data = "stop"` stops it.
#[tokio::test]
async fn a_month_of_late_files_publishes_and_its_drift_is_reported() {
    let (fx, sql) = generated(1200, 23).await;
    // A tighter rule than the shipped one, for this small data set's segment sizes.
    let defaults = sql.join("defaults.toml");
    edit(&defaults, "max_change_pct = 75", "max_change_pct = 50");
    edit(&defaults, "min_base = 1000", "min_base = 100");
    let aside = fx.dir.path().join("aside");
    assert!(hold_back_days_after(&fx.landing_dir(), &aside, "2026-10-19") > 0);
    let first = report(&cli_run(&fx, &sql, &[]));
    land_held_back(&fx.landing_dir(), &aside);

    // With on_data = "stop", the same data stops the run: the moves are real.
    edit(&defaults, "min_base = 100\n", "min_base = 100\non_data = \"stop\"\n");
    let stopped = cli_run(&fx, &sql, &[]);
    let stderr = String::from_utf8_lossy(&stopped.stderr);
    assert_eq!(stopped.status.code(), Some(exit::GATE), "{stderr}");
    assert!(stderr.contains(": drift ["), "{stderr}");

    // The shipped behaviour: published, the moves reported, none of them a failure.
    edit(&defaults, "on_data = \"stop\"\n", "");
    let late = report(&cli_run(&fx, &sql, &[]));
    assert_eq!(
        late["published"]["version"].as_u64(),
        Some(first["published"]["version"].as_u64().unwrap() + 1)
    );
    assert_eq!(late["gates"]["failures"].as_array().map(Vec::len), Some(0));
    assert_eq!(late["gates"]["forced"], false);
    let observed = late["gates"]["observed"].as_array().expect("observed drift").clone();
    assert!(!observed.is_empty());
    // Exactly the values that moved by more than 50% of a size of at least 100.
    let mut expected = BTreeSet::new();
    for tag in late["tags"].as_array().unwrap() {
        let name = tag["tag"].as_str().unwrap();
        let (old, new) = (values(&first, name), values(&late, name));
        for value in old.keys().chain(new.keys()) {
            let (o, n) = (
                old.get(value).copied().unwrap_or(0),
                new.get(value).copied().unwrap_or(0),
            );
            if o >= 100 && o.abs_diff(n) as f64 > 0.5 * o as f64 {
                expected.insert((name.to_string(), value.clone()));
            }
        }
    }
    let reported: BTreeSet<(String, String)> = observed
        .iter()
        .map(|o| {
            (
                o["job"].as_str().unwrap().to_string(),
                o["value"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(reported, expected);
    let (status, code, jobs) = last_run(&fx).await;
    assert_eq!((status.as_str(), code), ("succeeded", exit::OK));
    let recorded: BTreeSet<(String, String)> = jobs
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|j| {
            let job = j["job"].as_str().unwrap().to_string();
            j["observed_drift"]
                .as_array()
                .into_iter()
                .flatten()
                .map(move |o| (job.clone(), o["value"].as_str().unwrap().to_string()))
        })
        .collect();
    assert_eq!(recorded, expected, "job_runs records the observed drift");
}
