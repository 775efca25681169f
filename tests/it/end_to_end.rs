//! End to end: generated landing files → `tagflow run` → the Delta table, read back with
//! delta-rs (and with the Python `deltalake` package when available).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;

use crate::support::*;

const AS_OF: &str = "2026-11-19T23:59:59Z";

#[tokio::test]
async fn generated_landing_is_tagged_and_published_as_a_delta_table() {
    let fx = Fixture::new();
    generate_into(&fx.landing_dir(), 600, 200, 7).await;
    let report = fx.try_run(AS_OF, None).await.unwrap();
    let tags = fx.published(None).await;

    assert_eq!(report.published.rows, tags.rows.len());
    assert_eq!(report.published.version, 0);
    let events: usize = report.streams.values().map(|s| s.events).sum();
    assert!(events > 10_000, "{events} events");
    assert!(
        report.streams.values().map(|s| s.duplicates_dropped).sum::<usize>() > 0,
        "the generator re-sends files"
    );

    // every customer of the universe has exactly one tier, lifecycle and stage
    let universe = tags.customers("rfm_tier");
    assert_eq!(universe.len(), report.customers);
    assert_eq!(tags.customers("lifecycle"), universe);
    assert_eq!(tags.customers("aipl_stage"), universe);

    // every tag of the catalog comes out, every value of the enumerated ones
    let mut values: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for row in &tags.rows {
        values.entry(row.tag.as_str()).or_default().insert(row.value.as_str());
    }
    for tag in SHIPPED_TAGS {
        assert!(values.contains_key(tag), "no customer has {tag}");
    }
    let all = |tag: &str, expected: &[&str]| {
        let got: Vec<&str> = values[tag].iter().copied().collect();
        let mut expected = expected.to_vec();
        expected.sort();
        assert_eq!(got, expected, "{tag} values");
    };
    all(
        "rfm_tier",
        &["champion", "devoted", "big_spender", "casual", "prospect"],
    );
    all("lifecycle", &["new", "active", "dormant", "churned"]);
    all("aipl_stage", &["awareness", "interest", "purchase", "loyalty"]);

    // the blacklist is exactly the union of the risk tags
    let mut risky: BTreeSet<String> = BTreeSet::new();
    for tag in ["refund_risk", "low_credit", "shared_device"] {
        risky.extend(tags.customers(tag));
    }
    assert_eq!(
        tags.customers("marketing_blacklist"),
        risky.into_iter().collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn each_run_is_a_new_version_and_earlier_versions_stay_readable() {
    let fx = Fixture::new();
    fx.clicks("a.parquet", &[view("k1", "c1", "2026-11-01T10:00:00Z")]);
    fx.run("2026-11-02T00:00:00Z").await;
    let second = fx.try_run("2026-12-15T00:00:00Z", None).await.unwrap();
    assert_eq!(second.published.version, 1);
    let v0 = fx.published(Some(0)).await;
    let v1 = fx.published(Some(1)).await;
    assert_eq!(v0.value("c1", "lifecycle").as_deref(), Some("new"));
    assert_eq!(v1.value("c1", "lifecycle").as_deref(), Some("dormant"));
    assert_eq!(fx.published(None).await.rows, v1.rows);
}

#[tokio::test]
async fn the_generator_is_deterministic() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    generate_into(a.path(), 50, 30, 11).await;
    generate_into(b.path(), 50, 30, 11).await;
    let files = |root: &Path| -> BTreeMap<String, Vec<u8>> {
        walk(root)
            .into_iter()
            .map(|p| {
                (
                    p.strip_prefix(root).unwrap().display().to_string(),
                    std::fs::read(&p).unwrap(),
                )
            })
            .collect()
    };
    let (fa, fb) = (files(a.path()), files(b.path()));
    assert!(
        fa.keys().any(|k| k.starts_with("clicks/dt=")),
        "hive-style layout: {:?}",
        fa.keys().take(3).collect::<Vec<_>>()
    );
    assert_eq!(fa, fb);
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}

/// An independent Delta reader (the Python `deltalake` package) opens every published
/// version and reads the same rows. `.ci/run` installs it and sets TAGFLOW_TEST_PYTHON.
#[tokio::test]
async fn python_deltalake_reads_every_published_version() {
    let Ok(python) = std::env::var("TAGFLOW_TEST_PYTHON") else {
        eprintln!("SKIPPED python_deltalake_reads_every_published_version: set TAGFLOW_TEST_PYTHON to a python with `deltalake` (see .ci/run)");
        return;
    };
    let fx = Fixture::new();
    generate_into(&fx.landing_dir(), 200, 60, 3).await;
    fx.run("2026-11-18T12:00:00Z").await;
    fx.run(AS_OF).await;
    let table = fx.warehouse_dir().join("customer_tags");
    let script = r#"
import os, sys, json
from deltalake import DeltaTable
out = {}
for version in (0, 1):
    t = DeltaTable(sys.argv[1], version=version).to_pyarrow_table()
    rows = sorted(zip(t.column("customer_id").to_pylist(), t.column("tag").to_pylist(), t.column("value").to_pylist()))
    out[version] = {"rows": len(rows), "first": rows[:3], "schema": [f.name for f in t.schema]}
print(json.dumps(out))
sys.stdout.flush()
# pyarrow 26 + deltalake 1.6 can abort in interpreter finalisation ("terminate called
# without an active exception") after all work is done: skip finalisation.
os._exit(0)
"#;
    let output = Command::new(python).arg("-c").arg(script).arg(&table).output().unwrap();
    assert!(
        output.status.success(),
        "python failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let read: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    for version in [0u64, 1] {
        let ours = fx.published(Some(version)).await;
        let theirs = &read[version.to_string()];
        assert_eq!(theirs["rows"].as_u64().unwrap() as usize, ours.rows.len());
        let mut expected: Vec<(String, String, String)> = ours
            .rows
            .iter()
            .map(|r| (r.customer_id.clone(), r.tag.clone(), r.value.clone()))
            .collect();
        expected.sort();
        let first: Vec<(String, String, String)> = serde_json::from_value(theirs["first"].clone()).unwrap();
        assert_eq!(first, expected[..3].to_vec());
        assert_eq!(
            theirs["schema"],
            serde_json::json!(["customer_id", "family", "tag", "value", "score", "as_of"])
        );
    }
}

#[test]
fn cli_run_prints_a_json_report_and_exits_zero() {
    let fx = Fixture::new();
    fx.clicks("dt=2026-11-19/a.parquet", &[view("k1", "c1", "2026-11-19T10:00:00Z")]);
    fx.raw("clicks/dt=2026-11-19/bad.parquet", b"nope");
    let out = tagflow()
        .args(["run", "--json", "--as-of", "2026-11-20T00:00:00Z", "--landing"])
        .arg(fx.landing_dir())
        .arg("--warehouse")
        .arg(format!("file://{}", fx.warehouse_dir().display()))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("stdout is only the JSON report");
    assert_eq!(report["streams"]["clicks"]["events"], 1);
    assert_eq!(report["quarantine"]["files"], 1);
    assert_eq!(report["published"]["version"], 0);
    assert!(report["tags"]
        .as_array()
        .unwrap()
        .iter()
        .any(|t| t["tag"] == "lifecycle" && t["values"]["new"] == 1));

    let listed = tagflow()
        .args(["quarantine", "list", "--json", "--warehouse"])
        .arg(fx.warehouse_dir())
        .output()
        .unwrap();
    assert!(listed.status.success());
    let entries: serde_json::Value = serde_json::from_slice(&listed.stdout).unwrap();
    assert!(entries[0]["source"]
        .as_str()
        .unwrap()
        .ends_with("clicks/dt=2026-11-19/bad.parquet"));

    let shown = tagflow()
        .args(["tags", "c1", "--warehouse"])
        .arg(fx.warehouse_dir())
        .output()
        .unwrap();
    assert!(shown.status.success());
    assert!(String::from_utf8_lossy(&shown.stdout).contains("lifecycle\tnew"));
}

#[test]
fn cli_settings_come_from_flags_then_environment_then_file() {
    let fx = Fixture::new();
    fx.clicks("a.parquet", &[view("k1", "c1", "2026-11-19T10:00:00Z")]);
    let config = fx.dir.path().join("tagflow.toml");
    std::fs::write(&config, "landing = \"landing\"\nwarehouse = \"from-file\"\n").unwrap();
    // file only: relative paths are relative to the config file
    let out = tagflow()
        .args(["run", "--json", "--as-of", "2026-11-20T00:00:00Z", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(fx.dir.path().join("from-file/customer_tags/_delta_log").is_dir());
    // environment beats the file
    let out = tagflow()
        .args(["run", "--json", "--as-of", "2026-11-20T00:00:00Z", "--config"])
        .arg(&config)
        .env("TAGFLOW_WAREHOUSE", fx.dir.path().join("from-env"))
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(fx.dir.path().join("from-env/customer_tags/_delta_log").is_dir());
    // a flag beats both
    let out = tagflow()
        .args(["run", "--json", "--as-of", "2026-11-20T00:00:00Z", "--config"])
        .arg(&config)
        .env("TAGFLOW_WAREHOUSE", fx.dir.path().join("from-env"))
        .arg("--warehouse")
        .arg(fx.dir.path().join("from-flag"))
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(fx.dir.path().join("from-flag/customer_tags/_delta_log").is_dir());
}

#[test]
fn cli_errors_say_what_and_where_and_exit_non_zero() {
    let fx = Fixture::new();
    std::fs::create_dir_all(fx.landing_dir()).unwrap();
    let config = fx.dir.path().join("bad.toml");
    std::fs::write(&config, "landing = \"x\"\n\nwarehose = \"typo\"\n").unwrap();
    let out = tagflow().args(["run", "--config"]).arg(&config).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("bad.toml") && stderr.contains("line 3") && stderr.contains("warehose"),
        "{stderr}"
    );

    let out = tagflow()
        .args(["run", "--landing"])
        .arg(fx.landing_dir())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing setting `warehouse`"));

    let out = tagflow()
        .args(["run", "--landing", "ftp://host/x", "--warehouse", "w"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unsupported URL scheme 'ftp'"));

    let out = tagflow()
        .args(["run", "--as-of", "yesterday", "--landing", "l", "--warehouse", "w"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid --as-of 'yesterday'"));
    // The other time options name themselves.
    for (args, option) in [
        (&["tags", "c1", "--at", "noon"][..], "--at"),
        (&["segments", "--since", "noon"][..], "--since"),
    ] {
        let out = tagflow().args(args).arg("--warehouse").arg("w").output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(String::from_utf8_lossy(&out.stderr).contains(&format!("invalid {option} 'noon'")));
    }

    let out = tagflow()
        .args(["tags", "c1", "--warehouse"])
        .arg(fx.dir.path().join("empty"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no Delta table"));
}

#[test]
fn cli_jobs_list_and_validate() {
    let out = tagflow().args(["jobs", "validate"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("39 jobs"));
    let out = tagflow().args(["jobs", "list"]).output().unwrap();
    let listing = String::from_utf8_lossy(&out.stdout);
    assert!(
        listing.contains("marketing_blacklist") && listing.contains("refund_risk,low_credit,shared_device"),
        "{listing}"
    );
}
