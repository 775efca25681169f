//! The PostgreSQL wire front of `serve`, with real clients: `psql` and psycopg read the
//! same rows as the Delta readers over the simple and the extended protocol, BI tools'
//! introspection queries answer, refusals carry PostgreSQL's SQLSTATEs and leave the session
//! usable, wrong credentials are refused, and an open cursor stays on its version while a
//! new one is published. `.ci/run` installs both clients; elsewhere the tests skip without
//! them unless TAGFLOW_TEST_PG_REQUIRED is set.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::process::{Command, Stdio};

use serde_json::{json, Value};
use tagflow::publish::snapshots;

use crate::serve::{wait_for_version, History};
use crate::support::*;

const PASSWORD: &str = "pg-secret-for-tests";
const CONFIG: &str = "[serve]\npg_listen = \"127.0.0.1:0\"\npg_password = \"pg-secret-for-tests\"\nquery_timeout = \"1s\"\nquery_memory_mb = 8\n";

/// psql and a python with psycopg, or None (the test skips) when they are missing.
fn clients(test: &str) -> Option<String> {
    let python = std::env::var("TAGFLOW_TEST_PYTHON").ok();
    let psycopg = python.as_ref().is_some_and(|p| {
        Command::new(p)
            .args(["-c", "import psycopg"])
            .status()
            .is_ok_and(|s| s.success())
    });
    let psql = Command::new("psql")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if psycopg && psql {
        return python;
    }
    let why = format!("{test}: needs psql and TAGFLOW_TEST_PYTHON with psycopg (see .ci/run)");
    assert!(std::env::var("TAGFLOW_TEST_PG_REQUIRED").is_err(), "{why}");
    eprintln!("SKIPPED {why}");
    None
}

fn env(cmd: &mut Command, addr: SocketAddr) -> &mut Command {
    cmd.env("PGHOST", addr.ip().to_string())
        .env("PGPORT", addr.port().to_string())
        .env("PGUSER", "tagflow")
        .env("PGDATABASE", "tagflow")
        .env("PGPASSWORD", PASSWORD)
        .env("PGCONNECT_TIMEOUT", "10")
}

/// `psql -At -c sql`: (exit ok, stdout, stderr).
fn psql(addr: SocketAddr, sql: &str) -> (bool, String, String) {
    let out = env(&mut Command::new("psql"), addr)
        .args(["-X", "-At", "-v", "ON_ERROR_STOP=1", "-c", sql])
        .output()
        .expect("psql runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn script() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/it/pg_clients.py")
}

/// Rows per tag of a published version, as `tag|count` lines.
fn counts(tags: &Tags) -> BTreeMap<String, i64> {
    let mut counts = BTreeMap::new();
    for r in &tags.rows {
        *counts.entry(r.tag.clone()).or_default() += 1;
    }
    counts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_and_psycopg_read_what_delta_readers_read() {
    let Some(python) = clients("psql_and_psycopg_read_what_delta_readers_read") else {
        return;
    };
    let mut history = History::new(61).await;
    history.publish(0).await;
    history.publish(1).await;
    let (server, stop) = history.serve(Some(CONFIG), Some(1)).await;
    let addr = server.pg_addr.expect("the PostgreSQL front listens");
    let published = read_tags(&history.fx.warehouse_dir(), Some(1)).await;

    // psql: a query, the table list and a table's columns.
    let (ok, out, err) = psql(
        addr,
        "SELECT tag, count(*) FROM customer_tags GROUP BY tag ORDER BY tag",
    );
    assert!(ok, "{err}");
    let got: BTreeMap<String, i64> = out
        .lines()
        .map(|l| {
            let (tag, n) = l.split_once('|').expect("tag|count");
            (tag.to_string(), n.parse().expect("a count"))
        })
        .collect();
    assert_eq!(got, counts(&published));
    let (ok, out, err) = psql(addr, "\\d");
    assert!(ok, "{err}");
    for table in ["customer_tags", "tag_changes", "job_runs", "segments"] {
        assert!(out.contains(table), "\\d lists {table}: {out}");
    }
    let (ok, out, err) = psql(addr, "\\dt");
    assert!(ok && out.contains("customer_tags"), "\\dt: {out} {err}");
    let (ok, out, err) = psql(addr, "\\d customer_tags");
    assert!(ok, "{err}");
    for column in ["customer_id", "family", "tag", "value", "score", "as_of"] {
        assert!(out.contains(column), "\\d customer_tags shows {column}: {out}");
    }
    let (ok, _, err) = psql(
        addr,
        "INSERT INTO customer_tags VALUES ('x', 'f', 't', 'v', 1.0, now())",
    );
    assert!(!ok && err.contains("read-only"), "{err}");

    // psycopg: rows, prepared statements, the segments view, introspection and refusals.
    let ids: Vec<String> = published
        .rows
        .iter()
        .map(|r| r.customer_id.clone())
        .take(40)
        .step_by(7)
        .collect();
    let out = env(&mut Command::new(&python), addr)
        .arg(script())
        .arg("check")
        .env("TAGFLOW_TEST_IDS", json!(ids).to_string())
        .output()
        .expect("python runs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: Value = serde_json::from_slice(&out.stdout).expect("a JSON report");

    let got: BTreeMap<String, i64> = report["counts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p[0].as_str().unwrap().to_string(), p[1].as_i64().unwrap()))
        .collect();
    assert_eq!(got, counts(&published), "psycopg reads version 1");
    for id in &ids {
        let mut expected: Vec<Value> = published
            .rows
            .iter()
            .filter(|r| &r.customer_id == id)
            .map(|r| json!([r.tag, r.value]))
            .collect();
        expected.sort_by_key(|v| v[0].as_str().unwrap().to_string());
        assert_eq!(report["customers"][id], json!(expected), "{id}");
    }
    let flows: Vec<Value> = snapshots::segments(&location(&history.fx.warehouse_dir()), None)
        .await
        .unwrap()
        .into_iter()
        .map(|f| json!([f.version, f.tag, f.value, f.size, f.inflow, f.outflow]))
        .collect();
    let mut flows = flows;
    flows.sort_by_key(|v| {
        (
            v[0].as_u64(),
            v[1].as_str().map(String::from),
            v[2].as_str().map(String::from),
        )
    });
    assert_eq!(report["segments"], json!(flows), "segments equals `tagflow segments`");
    assert!(report["job_runs"].as_i64() >= Some(2));
    assert_eq!(report["feed_max_version"].as_i64(), Some(1));
    for pair in report["introspection"].as_array().unwrap() {
        assert_eq!(pair[1], "ok", "{}", pair[0]);
    }
    for refusal in report["refusals"].as_array().unwrap() {
        assert_eq!(refusal[2], refusal[1], "SQLSTATE of {}", refusal[0]);
        assert_eq!(refusal[3], true, "the session answers after {}", refusal[0]);
    }
    for key in ["wrong_password", "wrong_user"] {
        let message = report[key].as_str().unwrap().to_lowercase();
        assert!(message.contains("password authentication failed"), "{key}: {message}");
    }
    let _ = stop.send(());
    server.wait().await.expect("server stops");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_cursor_stays_on_its_version_across_a_reload() {
    let Some(python) = clients("an_open_cursor_stays_on_its_version_across_a_reload") else {
        return;
    };
    let mut history = History::new(62).await;
    history.publish(0).await;
    history.publish(1).await;
    let (server, stop) = history.serve(Some(CONFIG), Some(1)).await;
    let addr = server.pg_addr.expect("the PostgreSQL front listens");
    let v1 = read_tags(&history.fx.warehouse_dir(), Some(1)).await;

    let mut child = env(&mut Command::new(&python), addr)
        .arg(script())
        .arg("cursor")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python runs");
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "fetched");

    history.publish(2).await;
    wait_for_version(&server, 2).await;
    let v2 = read_tags(&history.fx.warehouse_dir(), Some(2)).await;
    assert_ne!(counts(&v1), counts(&v2), "version 2 differs from version 1");
    // A new statement reads version 2 ...
    let (ok, out, err) = psql(addr, "SELECT count(*) FROM customer_tags");
    assert!(ok, "{err}");
    assert_eq!(out.trim().parse::<usize>().unwrap(), v2.rows.len());

    // ... while the cursor declared on version 1 reads version 1 to its end.
    writeln!(child.stdin.take().unwrap()).unwrap();
    line.clear();
    stdout.read_line(&mut line).unwrap();
    assert!(child.wait().unwrap().success());
    let report: Value = serde_json::from_str(&line).expect("JSON");
    let mut got: Vec<(String, String, String)> = report["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let s = |i: usize| r[i].as_str().unwrap().to_string();
            (s(0), s(1), s(2))
        })
        .collect();
    got.sort();
    let mut expected: Vec<(String, String, String)> = v1
        .rows
        .iter()
        .map(|r| (r.customer_id.clone(), r.tag.clone(), r.value.clone()))
        .collect();
    expected.sort();
    assert_eq!(got, expected, "the cursor read version 1 whole");
    let _ = stop.send(());
    server.wait().await.expect("server stops");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_channel_binding_and_a_clear_error_for_a_missing_certificate() {
    if clients("tls_with_channel_binding_and_a_clear_error_for_a_missing_certificate").is_none() {
        return;
    }
    let mut history = History::new(63).await;
    history.publish(0).await;
    let dir = history.fx.dir.path();
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let made = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl runs (.ci/run installs it)");
    assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));

    // A certificate that is not there: the server does not start, and says which file.
    let missing = dir.join("missing.pem");
    let config = format!(
        "{CONFIG}pg_tls_cert = {:?}\npg_tls_key = {:?}\n",
        missing.display().to_string(),
        key.display().to_string()
    );
    let settings = history
        .fx
        .settings("2026-06-20T00:00:00Z", Some(&config))
        .expect("settings");
    let error = tagflow::serve::start(
        settings.warehouse.clone().unwrap(),
        settings.serve,
        std::future::pending(),
    )
    .await
    .err()
    .expect("no server without its certificate");
    assert!(error.to_string().contains("missing.pem"), "{error}");

    // TLS, and SCRAM-SHA-256-PLUS bound to the TLS channel.
    let config = format!(
        "{CONFIG}pg_tls_cert = {:?}\npg_tls_key = {:?}\n",
        cert.display().to_string(),
        key.display().to_string()
    );
    let (server, stop) = history.serve(Some(&config), Some(0)).await;
    let addr = server.pg_addr.expect("the PostgreSQL front listens");
    let out = env(&mut Command::new("psql"), addr)
        .env("PGSSLMODE", "require")
        .env("PGCHANNELBINDING", "require")
        .args(["-X", "-At", "-c", "SELECT count(*) FROM customer_tags"])
        .output()
        .expect("psql runs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let published = read_tags(&history.fx.warehouse_dir(), Some(0)).await;
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        published.rows.len().to_string()
    );
    let _ = stop.send(());
    server.wait().await.expect("server stops");
}
