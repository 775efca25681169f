//! Run history: every run, succeeded or failed, is a row of `<warehouse>/job_runs`.

use std::process::Command;

use crate::support::*;

#[tokio::test]
async fn every_run_is_recorded_in_job_runs_and_listed_newest_first() {
    let fx = Fixture::new();
    fx.clicks(
        "a.parquet",
        &[
            view("k1", "c1", "2026-11-19T10:00:00Z"),
            view("k1", "c1", "2026-11-19T10:00:00Z"),
        ],
    );
    fx.raw("clicks/bad.parquet", b"nope");
    let report = fx.try_run("2026-11-20T00:00:00Z", None).await.unwrap();
    let failed = fx
        .try_run("2026-11-21T00:00:00Z", Some("[params.low_credit]\nmin_event = 2\n"))
        .await
        .expect_err("bad override");

    let out = Command::new(env!("CARGO_BIN_EXE_tagflow"))
        .args(["runs", "--json", "--warehouse"])
        .arg(fx.warehouse_dir())
        .env_remove("TAGFLOW_CONFIG")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let runs: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let runs = runs.as_array().unwrap();
    assert_eq!(runs.len(), 2);

    let (latest, first) = (&runs[0], &runs[1]);
    assert_eq!(latest["status"], "failed");
    assert_eq!(latest["exit_code"], failed.exit_code());
    assert!(latest["error"].as_str().unwrap().contains("min_event"));
    assert!(
        latest.get("published_version").is_none(),
        "no version for a failed run: {latest}"
    );

    assert_eq!(first["status"], "succeeded");
    assert_eq!(first["run_id"], report.run_id.as_str());
    assert_eq!(first["exit_code"], 0);
    assert_eq!(first["files_read"], 2);
    assert_eq!(first["events"], 1);
    assert_eq!(first["files_quarantined"], 1);
    assert_eq!(first["published_version"], 0);
    let jobs: serde_json::Value = serde_json::from_str(first["jobs"].as_str().unwrap()).unwrap();
    let lifecycle = jobs
        .as_array()
        .unwrap()
        .iter()
        .find(|j| j["job"] == "lifecycle")
        .unwrap();
    assert_eq!(lifecycle["rows"], 1);
    assert_eq!(jobs.as_array().unwrap().len(), 27, "19 tags and 8 measures");
}

/// A `job_runs` written before the freshness columns existed gains them with the next run;
/// its earlier rows read them as null.
#[tokio::test]
async fn a_job_runs_table_without_the_freshness_columns_gains_them() {
    use std::sync::Arc;

    use arrow::record_batch::RecordBatch;
    use tagflow::publish::runs::job_runs_schema;

    let fx = Fixture::new();
    fx.clicks("a.parquet", &[view("k1", "c1", "2026-11-19T10:00:00Z")]);
    fx.try_run("2026-11-20T00:00:00Z", None).await.unwrap();
    let warehouse = location(&fx.warehouse_dir());
    let all = tagflow::publish::query_published(&warehouse, "job_runs", None, "SELECT * FROM job_runs")
        .await
        .unwrap();
    // The same row as an older tagflow wrote it: without the last two columns (types as
    // Delta stores them).
    assert_eq!(all[0].num_columns(), job_runs_schema().fields().len());
    let old_fields: Vec<_> = all[0].schema().fields()[..15].to_vec();
    assert_eq!(old_fields.last().unwrap().name(), "jobs");
    let old_schema = Arc::new(arrow::datatypes::Schema::new(old_fields));
    let old_row = RecordBatch::try_new(old_schema, all[0].columns()[..15].to_vec()).unwrap();
    std::fs::remove_dir_all(fx.warehouse_dir().join("job_runs")).unwrap();
    tagflow::publish::append(&warehouse, "job_runs", vec![old_row], Default::default())
        .await
        .unwrap();

    let listed = tagflow::publish::runs::latest(&warehouse, 10)
        .await
        .expect("listed without the columns");
    assert_eq!(listed.iter().map(|b| b.num_rows()).sum::<usize>(), 1);

    fx.clicks("b.parquet", &[view("k2", "c1", "2026-11-20T10:00:00Z")]);
    let report = fx.try_run("2026-11-21T00:00:00Z", None).await.unwrap();
    let freshness = report.freshness.expect("the run read a file");
    let sql = "SELECT as_of, freshness_p95_ms IS NULL AS old, freshness_p95_ms AS p95, freshness_max_ms AS max \
               FROM job_runs ORDER BY as_of";
    let rows = tagflow::serve::query::rows_json(
        &tagflow::publish::query_published(&warehouse, "job_runs", None, sql)
            .await
            .unwrap(),
    )
    .unwrap();
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert_eq!(rows[0]["old"], true, "the older row has no freshness");
    // The new row records the run's landing-to-publish lag.
    assert_eq!(rows[1]["p95"], freshness.p95_ms);
    assert_eq!(rows[1]["max"], freshness.max_ms);
    let listed =
        tagflow::serve::query::rows_json(&tagflow::publish::runs::latest(&warehouse, 10).await.unwrap()).unwrap();
    assert_eq!(
        listed[0]["freshness_p95_ms"], freshness.p95_ms,
        "runs list the freshness"
    );
}
