//! `tagflow follow`: the Prometheus endpoint (`--metrics-listen`) counts what the batches
//! did, including quality-gate failures, which end the session with the gate's exit code
//! after the consecutive-failure limit; a cron schedule of full recomputes; Ctrl-C; the
//! numbering of customers after a batch that evaluated everyone.

use std::collections::BTreeMap;
use std::process::Stdio;
use std::time::{Duration, Instant};

use chrono::Utc;
use tagflow::app::error::exit;

use crate::http::Client;
use crate::support::*;

/// `name{labels}` -> value of an OpenMetrics text.
fn parse_metrics(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| {
            let (key, value) = l.rsplit_once(' ')?;
            Some((key.to_string(), value.parse().ok()?))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn follow_serves_metrics_and_a_failing_gate_ends_the_session_with_its_code() {
    let fx = Fixture::new();
    let now = Utc::now();
    let at = |minutes_ago: i64| (now - chrono::Duration::minutes(minutes_ago)).to_rfc3339();
    fx.clicks("a.parquet", &[view("k1", "c1", &at(90)), view("k2", "c2", &at(80))]);
    let sql = fx.dir.path().join("sql");
    copy_dir(&shipped_sql(), &sql);
    edit(
        &sql.join("behaviour/lifecycle.sql"),
        "-- [checks]\n",
        "-- [checks]\n-- max_rows = 2\n",
    );
    let log = fx.dir.path().join("follow.log");
    let mut child = fx
        .command(&["follow", "--interval", "500ms", "--metrics-listen", "127.0.0.1:0"])
        .arg("--sql-dir")
        .arg(&sql)
        .env("TAGFLOW_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let started = Instant::now();
    let log_text = || std::fs::read_to_string(&log).unwrap_or_default();
    let addr = loop {
        if let Some(rest) = log_text().split("metrics at http://").nth(1) {
            break rest.split('/').next().unwrap().parse().unwrap();
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "no metrics address:\n{}",
            log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let mut client = Client::new(addr);
    let mut wait_for = async |what: &str, done: &dyn Fn(&BTreeMap<String, f64>) -> bool| {
        let started = Instant::now();
        loop {
            let reply = client.get("/metrics").await;
            assert_eq!(reply.status, 200);
            let metrics = parse_metrics(std::str::from_utf8(&reply.body).unwrap());
            if done(&metrics) {
                return metrics;
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "{what} never seen: {metrics:#?}\n{}",
                log_text()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let published = r#"tagflow_follow_batches_total{result="published"}"#;
    let m = wait_for("the first publish", &|m| m.get(published).is_some_and(|n| *n >= 1.0)).await;
    assert_eq!(m["tagflow_follow_files_total"], 1.0);
    assert_eq!(m["tagflow_follow_events_total"], 2.0);
    assert_eq!(m["tagflow_follow_published_version"], 0.0);
    assert_eq!(m["tagflow_follow_freshness_seconds_count"], 1.0);
    assert!(m["tagflow_follow_freshness_lag_seconds"] > 0.0);
    assert!(m[r#"tagflow_follow_job_duration_seconds_count{job="rfm_tier"}"#] >= 1.0);

    // A third customer breaks lifecycle's max_rows: batches fail their gate, nothing more is
    // published, and the session ends with the gate's exit code.
    fx.carts("b.parquet", &[cart_add("k3", "c3", &at(60), 1, Some(5.0))]);
    let gate = r#"tagflow_follow_gate_failures_total{job="lifecycle",check="max_rows"}"#;
    let m = wait_for("a gate failure", &|m| m.get(gate).is_some_and(|n| *n >= 1.0)).await;
    assert!(m[r#"tagflow_follow_batches_total{result="gate_failed"}"#] >= 1.0);
    assert_eq!(m["tagflow_follow_published_version"], 0.0);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            started.elapsed() < Duration::from_secs(90),
            "follow did not stop:\n{}",
            log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(status.code(), Some(exit::GATE), "{}", log_text());
    assert!(
        log_text().contains("lifecycle: max_rows: 3 rows, at most 2 expected"),
        "{}",
        log_text()
    );
    assert_eq!(fx.published(None).await.customers("lifecycle"), ["c1", "c2"]);
}

#[test]
fn a_cron_schedule_runs_full_recomputes_inside_follow() {
    use std::io::BufRead;
    let fx = Fixture::new();
    let now = Utc::now();
    fx.clicks(
        "a.parquet",
        &[view("k1", "c1", &(now - chrono::Duration::minutes(5)).to_rfc3339())],
    );
    let config = fx.dir.path().join("tagflow.toml");
    std::fs::write(&config, "[follow]\nfull_cron = \"not a schedule\"\n").unwrap();
    let follow = || {
        fx.command(&[
            "follow",
            "--json",
            "--interval",
            "300ms",
            "--config",
            config.to_str().unwrap(),
        ])
    };
    let bad = follow().output().unwrap();
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert_eq!(bad.status.code(), Some(exit::CONFIG), "{stderr}");
    assert!(
        stderr.contains("follow.full_cron") && stderr.contains("not a schedule"),
        "{stderr}"
    );

    // Every second (6 fields, seconds first): with no new file, only the schedule makes
    // batches after the first publish.
    std::fs::write(&config, "[follow]\nfull_cron = \"* * * * * *\"\n").unwrap();
    let mut child = follow().stdout(Stdio::piped()).stderr(Stdio::null()).spawn().unwrap();
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let mut reasons = Vec::new();
    while reasons.len() < 3 {
        let line = lines.next().expect("a report line").unwrap();
        let report: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(report["mode"], "full");
        reasons.push(report["full_because"].as_str().unwrap().to_string());
    }
    assert!(stop_with(&mut child, libc::SIGTERM, Duration::from_secs(30)).success());
    assert_eq!(reasons[0], "no state yet");
    assert!(
        reasons[1..].iter().all(|r| r == "scheduled by [follow] full_cron"),
        "{reasons:?}"
    );
}

/// A session numbers the state's and the published view's customers after a batch that
/// evaluated everyone (its first), so the next batch selects rows by number at once: the
/// report's `number_ahead` step. An incremental batch that reuses the last evaluation does
/// not, and a single run (no next batch) does not either.
#[test]
fn follow_numbers_customers_ahead_after_a_batch_that_evaluated_everyone() {
    use std::io::BufRead;
    let fx = Fixture::new();
    let at = |minutes_ago: i64| (Utc::now() - chrono::Duration::minutes(minutes_ago)).to_rfc3339();
    fx.clicks("a.parquet", &[view("k1", "c1", &at(5))]);
    let run = fx.command(&["run", "--json"]).output().unwrap();
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let report: serde_json::Value = serde_json::from_slice(&run.stdout).unwrap();
    assert!(report["stages_ms"]["jobs"].is_u64(), "{report:#}");
    assert!(report["stages_ms"].get("number_ahead").is_none(), "{report:#}");

    let mut child = fx
        .command(&["follow", "--json", "--interval", "200ms"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let mut next_report =
        || -> serde_json::Value { serde_json::from_str(&lines.next().expect("a report line").unwrap()).unwrap() };
    let first = next_report();
    assert!(first["stages_ms"]["number_ahead"].is_u64(), "{first:#}");
    fx.clicks("b.parquet", &[view("k2", "c2", &at(1))]);
    let second = next_report();
    assert_eq!(second["mode"], "incremental", "{second:#}");
    assert!(second["stages_ms"].get("number_ahead").is_none(), "{second:#}");
    assert!(stop_with(&mut child, libc::SIGTERM, Duration::from_secs(30)).success());
}

/// Ctrl-C (SIGINT) ends a session as SIGTERM does: after the current batch, with exit code
/// 0, the lock released and what was published kept. The signal arrives while the first
/// batch is held at its start (a test hold point, so no timing decides the outcome): it must
/// be caught from the start of the command, not from the first wait between batches.
#[test]
fn follow_stops_cleanly_on_sigint_during_its_first_batch() {
    let fx = Fixture::new();
    let five_minutes_ago = (Utc::now() - chrono::Duration::minutes(5)).to_rfc3339();
    fx.clicks("a.parquet", &[view("k1", "c1", &five_minutes_ago)]);
    let log = fx.dir.path().join("follow.log");
    let hold = Hold::new(fx.dir.path(), "batch");
    let (hold_var, hold_value) = hold.env();
    let mut child = fx
        .command(&["follow", "--interval", "200ms"])
        .env("TAGFLOW_LOG", "info")
        .env(hold_var, hold_value)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let log_text = || std::fs::read_to_string(&log).unwrap_or_default();
    hold.reached(&log);
    send_signal(&child, libc::SIGINT);
    hold.release();
    let status = wait_within(&mut child, Duration::from_secs(60));
    assert!(status.success(), "follow exits 0 on SIGINT: {status}\n{}", log_text());
    assert!(log_text().contains("SIGINT"), "{}", log_text());
    assert!(
        log_text().contains("batch published"),
        "the held batch finished: {}",
        log_text()
    );
    assert!(
        !fx.warehouse_dir().join("_tagflow/run.lock").exists(),
        "the lock is released"
    );
    let runtime = tokio::runtime::Runtime::new().unwrap();
    assert_eq!(runtime.block_on(fx.published(None)).customers("lifecycle"), ["c1"]);
}
