//! Publishing: merges write only what changed, the change feed equals the difference
//! between any two versions, snapshots and segments agree with the versions, compaction and
//! vacuum keep every retained version readable (by tagflow and by the Python `deltalake`
//! reader), and killed or concurrent publishers never leave the tables inconsistent.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use arrow::array::{Array, ArrayRef, Float64Array, Int64Array, StringArray, TimestampMicrosecondArray};
use arrow::record_batch::RecordBatch;
use chrono::{DateTime, Utc};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tagflow::publish::query_published;
use tagflow::publish::snapshots;

use crate::incremental::{assert_same, full_tags, Arrivals, SCHEDULE};
use crate::support::*;

/// (customer, tag) → (family, value, score) of one version.
type TagMap = BTreeMap<(String, String), (String, String, Option<f64>)>;

fn tag_map(tags: &Tags) -> TagMap {
    tags.rows
        .iter()
        .map(|r| {
            (
                (r.customer_id.clone(), r.tag.clone()),
                (r.family.clone(), r.value.clone(), r.score),
            )
        })
        .collect()
}

/// One change: (customer, tag) → (change, old (value, score), new (value, score)).
/// A tag's value and score for one customer, or nothing when the customer lacks the tag.
type Side = Option<(String, Option<f64>)>;
type Change = (String, Side, Side);
type Changes = BTreeMap<(String, String), Change>;

/// What changed from `old` to `new`, worked out from the two tables.
fn difference(old: &TagMap, new: &TagMap) -> Changes {
    let mut out = Changes::new();
    for key in old.keys().chain(new.keys()).collect::<BTreeSet<_>>() {
        let (o, n) = (old.get(key), new.get(key));
        let change = match (o, n) {
            (None, Some(_)) => "entered",
            (Some(_), None) => "exited",
            (Some(o), Some(n)) if o != n => "changed",
            _ => continue,
        };
        let pair = |r: Option<&(String, String, Option<f64>)>| r.map(|(_, v, s)| (v.clone(), *s));
        out.insert(key.clone(), (change.to_string(), pair(o), pair(n)));
    }
    out
}

/// One row of `tag_changes`.
#[derive(Debug, Clone)]
struct FeedRow {
    key: (String, String),
    change: String,
    old: Side,
    new: Side,
    from: Option<i64>,
    to: i64,
    as_of: i64,
}

async fn read_feed(warehouse: &Path) -> Vec<FeedRow> {
    let batches = query_published(
        &location(warehouse),
        "tag_changes",
        None,
        "SELECT customer_id, tag, change, old_value, new_value, old_score, new_score, from_version, to_version, as_of \
         FROM tag_changes ORDER BY COALESCE(from_version, -1), to_version, as_of, tag, customer_id",
    )
    .await
    .expect("read tag_changes");
    let mut rows = Vec::new();
    for b in &batches {
        let s = |i: usize| {
            b.column(i)
                .as_any()
                .downcast_ref::<StringArray>()
                .expect("utf8")
                .clone()
        };
        let f = |i: usize| {
            b.column(i)
                .as_any()
                .downcast_ref::<Float64Array>()
                .expect("f64")
                .clone()
        };
        let n = |i: usize| b.column(i).as_any().downcast_ref::<Int64Array>().expect("i64").clone();
        let (customer, tag, change, old_value, new_value) = (s(0), s(1), s(2), s(3), s(4));
        let (old_score, new_score, from, to) = (f(5), f(6), n(7), n(8));
        let as_of = b
            .column(9)
            .as_any()
            .downcast_ref::<TimestampMicrosecondArray>()
            .expect("timestamp")
            .clone();
        let score = |a: &Float64Array, i: usize| a.is_valid(i).then(|| a.value(i));
        for i in 0..b.num_rows() {
            let side =
                |v: &StringArray, sc: &Float64Array| v.is_valid(i).then(|| (v.value(i).to_string(), score(sc, i)));
            rows.push(FeedRow {
                key: (customer.value(i).into(), tag.value(i).into()),
                change: change.value(i).into(),
                old: side(&old_value, &old_score),
                new: side(&new_value, &new_score),
                from: from.is_valid(i).then(|| from.value(i)),
                to: to.value(i),
                as_of: as_of.value(i),
            });
        }
    }
    rows
}

/// Net changes of the feed rows with `from <= from_version < to` (the first publish's rows
/// have no `from_version`: -1 here), per customer and tag: the changes between the two
/// versions, live rows on a version included (`publish::live`).
fn net_feed(feed: &[FeedRow], from: i64, to: i64) -> Changes {
    let mut first_old: BTreeMap<(String, String), Side> = BTreeMap::new();
    let mut last_new: BTreeMap<(String, String), Side> = BTreeMap::new();
    let on = |r: &FeedRow| r.from.unwrap_or(-1);
    for row in feed.iter().filter(|r| on(r) >= from && on(r) < to) {
        first_old.entry(row.key.clone()).or_insert(row.old.clone());
        last_new.insert(row.key.clone(), row.new.clone());
    }
    let mut out = Changes::new();
    for (key, old) in first_old {
        let new = last_new.remove(&key).expect("same keys");
        let change = match (&old, &new) {
            (None, Some(_)) => "entered",
            (Some(_), None) => "exited",
            (Some(o), Some(n)) if o != n => "changed",
            _ => continue,
        };
        out.insert(key, (change.to_string(), old, new));
    }
    out
}

fn latest_version(warehouse: &Path) -> u64 {
    latest_version_of(warehouse, "customer_tags")
}

/// Every version of `customer_tags` from `first` on, read with tagflow.
async fn versions(warehouse: &Path, first: u64) -> BTreeMap<u64, TagMap> {
    let mut out = BTreeMap::new();
    for v in first..=latest_version(warehouse) {
        out.insert(v, tag_map(&read_tags(warehouse, Some(v)).await));
    }
    out
}

/// The feed covers every version, and between any two versions it nets to their difference.
pub(crate) async fn assert_feed_matches_versions(warehouse: &Path, context: &str) {
    let tables = versions(warehouse, 0).await;
    let feed = read_feed(warehouse).await;
    let latest = *tables.keys().max().expect("versions") as i64;
    let empty = TagMap::new();
    for to in 0..=latest {
        for from in -1..to {
            let old = if from < 0 { &empty } else { &tables[&(from as u64)] };
            let expected = difference(old, &tables[&(to as u64)]);
            let actual = net_feed(&feed, from, to);
            assert!(
                actual == expected,
                "{context}: the feed from version {from} to {to} has {} changes, the versions differ by {}",
                actual.len(),
                expected.len()
            );
        }
    }
    // Each feed row joins the version before the one it leads to, or is live on a version.
    for row in &feed {
        let merged = row.from == (row.to > 0).then(|| row.to - 1);
        assert!(merged || row.from == Some(row.to), "{context}: {row:?}");
        let expected = match (&row.old, &row.new) {
            (None, Some(_)) => "entered",
            (Some(_), None) => "exited",
            _ => "changed",
        };
        assert_eq!(row.change, expected, "{context}: {row:?}");
    }
}

/// Tags named in the `add` actions of one commit of `customer_tags` (its partitions).
fn partitions_written(warehouse: &Path, version: u64) -> BTreeSet<String> {
    let path = warehouse.join(format!("customer_tags/_delta_log/{version:020}.json"));
    let text = std::fs::read_to_string(path).expect("commit file");
    text.lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter_map(|action| action["add"]["partitionValues"]["tag"].as_str().map(String::from))
        .collect()
}

#[tokio::test]
async fn a_partial_run_reports_the_customers_its_tags_tagged_and_the_publish_all_of_the_version() {
    let fx = Fixture::new();
    generate_into(&fx.landing_dir(), 250, 120, 5).await;
    let whole = fx.try_run("2026-11-19T12:00:00Z", None).await.expect("run");
    let mut settings = fx.settings("2026-11-20T08:00:00Z", None).unwrap();
    settings.jobs = vec!["repurchaser".into()];
    let partial = tagflow::app::run::run(&settings).await.expect("partial run");

    let tags = fx.published(None).await;
    let everyone: BTreeSet<String> = tags.rows.iter().map(|r| r.customer_id.clone()).collect();
    let repurchasers = tags.customers("repurchaser");
    assert!(!repurchasers.is_empty() && repurchasers.len() < everyone.len());
    assert_eq!(whole.customers, whole.published.customers.expect("counted"));
    assert_eq!(partial.customers, repurchasers.len());
    assert_eq!(partial.published.customers, Some(everyone.len()));
}

const AS_OFS: [&str; 5] = [
    "2026-11-19T12:00:00Z",
    "2026-11-20T08:00:00Z",
    "2026-11-20T09:00:00Z", // same day, after the last event: nothing changes
    "2026-11-23T08:00:00Z",
    "2026-12-20T08:00:00Z",
];

#[tokio::test]
async fn publishes_rewrite_only_changed_tags_and_the_feed_nets_to_every_difference() {
    let fx = Fixture::new();
    generate_into(&fx.landing_dir(), 250, 120, 5).await;
    let mut reports = Vec::new();
    for as_of in AS_OFS {
        reports.push(fx.try_run(as_of, None).await.expect("run"));
    }
    // A partial run changes one tag only, and leaves every other row as it was.
    let mut settings = fx.settings("2027-03-01T00:00:00Z", None).unwrap();
    settings.jobs = vec!["lifecycle".into()];
    reports.push(tagflow::app::run::run(&settings).await.expect("partial run"));

    let warehouse = fx.warehouse_dir();
    let tables = versions(&warehouse, 0).await;
    assert_eq!(tables.len(), reports.len(), "one version per publish");
    let feed = read_feed(&warehouse).await;
    for (v, report) in reports.iter().enumerate() {
        let v = v as u64;
        assert_eq!(report.published.version, v);
        let changes = report.published.changes.expect("counts");
        let in_feed: Vec<&FeedRow> = feed.iter().filter(|r| r.to == v as i64).collect();
        assert_eq!(
            in_feed.len(),
            changes.total(),
            "version {v}: feed rows = reported changes"
        );
        assert_eq!(report.published.rows, tables[&v].len(), "version {v}: reported rows");
        if v == 0 {
            continue;
        }
        // A publish rewrites exactly the partitions of the tags that changed and still have
        // rows (a tag whose rows all exited loses its files), with every row of those tags.
        let changed_tags: BTreeSet<String> = in_feed.iter().map(|r| r.key.1.clone()).collect();
        let still_there: BTreeSet<String> = tables[&v].keys().map(|(_, tag)| tag.clone()).collect();
        let expected: BTreeSet<String> = changed_tags.intersection(&still_there).cloned().collect();
        assert_eq!(partitions_written(&warehouse, v), expected, "version {v}");
        let rows_of_changed = tables[&v].keys().filter(|(_, tag)| changed_tags.contains(tag)).count();
        assert_eq!(report.published.rows_written, rows_of_changed, "version {v}");
    }
    // The publish counts every customer of its new version.
    for (v, report) in reports.iter().enumerate() {
        let in_table: BTreeSet<&String> = tables[&(v as u64)].keys().map(|(customer, _)| customer).collect();
        assert_eq!(report.published.customers, Some(in_table.len()), "version {v}");
    }
    // The same-day publish with no new event changed nothing and wrote nothing.
    assert_eq!(reports[2].published.changes.unwrap().total(), 0);
    assert_eq!(reports[2].published.rows_written, 0);
    // Later as-ofs do change tags (windows move), and the partial run touched only lifecycle.
    assert!(reports[3].published.changes.unwrap().total() > 0);
    let partial: BTreeSet<&str> = feed.iter().filter(|r| r.to == 5).map(|r| r.key.1.as_str()).collect();
    assert_eq!(partial, BTreeSet::from(["lifecycle"]));
    for ((customer, tag), row) in &tables[&5] {
        if tag != "lifecycle" {
            assert_eq!(tables[&4].get(&(customer.clone(), tag.clone())), Some(row));
        }
    }
    assert_feed_matches_versions(&warehouse, "publishes").await;

    // A row's as_of is the as-of time of the publish that gave it its value and score.
    let as_of_by_version: Vec<i64> = reports.iter().map(|r| r.as_of.timestamp_micros()).collect();
    for v in 0..reports.len() as u64 {
        let batches = query_published(
            &location(&warehouse),
            "customer_tags",
            Some(v),
            "SELECT customer_id, tag, as_of FROM customer_tags",
        )
        .await
        .unwrap();
        for b in &batches {
            let customers = b.column(0).as_any().downcast_ref::<StringArray>().unwrap();
            let tags = b.column(1).as_any().downcast_ref::<StringArray>().unwrap();
            let as_of = b
                .column(2)
                .as_any()
                .downcast_ref::<TimestampMicrosecondArray>()
                .unwrap();
            for i in 0..b.num_rows() {
                let key = (customers.value(i).to_string(), tags.value(i).to_string());
                let last_set = feed
                    .iter()
                    .filter(|r| r.key == key && r.to <= v as i64 && r.new.is_some())
                    .map(|r| r.as_of)
                    .max()
                    .expect("every row came through the feed");
                assert_eq!(as_of.value(i), last_set, "version {v}, {key:?}");
                assert!(as_of_by_version.contains(&last_set));
            }
        }
    }
}

#[tokio::test]
async fn snapshots_and_segments_agree_with_the_versions() {
    let fx = Fixture::new();
    generate_into(&fx.landing_dir(), 200, 90, 9).await;
    for as_of in AS_OFS {
        fx.try_run(as_of, None).await.expect("run");
    }
    let warehouse = location(&fx.warehouse_dir());
    let list = snapshots::list(&warehouse).await.unwrap();
    assert_eq!(list.len(), AS_OFS.len());
    let tables = versions(&fx.warehouse_dir(), 0).await;
    for snapshot in &list {
        let table = &tables[&snapshot.version];
        let expected_as_of: DateTime<Utc> = AS_OFS[snapshot.version as usize].parse().unwrap();
        assert_eq!(snapshot.as_of, Some(expected_as_of));
        assert_eq!(snapshot.rows, Some(table.len() as u64));
        let customers: BTreeSet<&String> = table.keys().map(|(c, _)| c).collect();
        assert_eq!(snapshot.customers, Some(customers.len() as u64));
        let mut sizes: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
        for ((_, tag), (_, value, _)) in table {
            *sizes.entry(tag.clone()).or_default().entry(value.clone()).or_default() += 1;
        }
        assert_eq!(snapshot.segments, sizes, "version {}", snapshot.version);
    }

    // Size moves by inflow minus outflow from one snapshot to the next.
    let flows = snapshots::segments(&warehouse, None).await.unwrap();
    let mut previous: BTreeMap<(String, String), u64> = BTreeMap::new();
    let mut moved = 0;
    for flow in &flows {
        let key = (flow.tag.clone(), flow.value.clone());
        let before = if flow.version == 0 {
            0
        } else {
            previous.get(&key).copied().unwrap_or(0)
        };
        assert_eq!(flow.size + flow.outflow, before + flow.inflow, "{flow:?}");
        moved += flow.inflow + flow.outflow;
        previous.insert(key, flow.size);
    }
    assert!(moved > 0);
    let since: DateTime<Utc> = AS_OFS[3].parse().unwrap();
    let recent = snapshots::segments(&warehouse, Some(since)).await.unwrap();
    assert!(recent.iter().all(|f| f.version >= 3) && !recent.is_empty());

    // `--at` picks the latest publish evaluated at or before the time.
    let at = |t: &str| snapshots::version_at(&warehouse, t.parse().unwrap());
    assert_eq!(at(AS_OFS[2]).await.unwrap(), 2);
    assert_eq!(at("2026-11-22T00:00:00Z").await.unwrap(), 2);
    assert_eq!(at("2030-01-01T00:00:00Z").await.unwrap(), 4);
    let before = at("2026-11-19T11:59:59Z").await.unwrap_err();
    assert_eq!(tagflow::Error::from(before).exit_code(), 3);

    // The CLI prints the same versions.
    let out = tagflow()
        .args(["snapshots", "--json", "--warehouse"])
        .arg(fx.warehouse_dir())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let printed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(printed.as_array().unwrap().len(), AS_OFS.len());
    let customer = tables[&2].keys().next().unwrap().0.clone();
    let out = tagflow()
        .args([
            "tags",
            &customer,
            "--json",
            "--at",
            "2026-11-22T00:00:00Z",
            "--warehouse",
        ])
        .arg(fx.warehouse_dir())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let expected = tables[&2].keys().filter(|(c, _)| *c == customer).count();
    assert_eq!(rows.as_array().unwrap().len(), expected);
}

/// Dump every version of both tables with the Python `deltalake` reader as sorted rows.
fn python_versions(python: &str, warehouse: &Path) -> serde_json::Value {
    let script = r#"
import os, sys, json
from deltalake import DeltaTable
out = {}
for name, cols in (("customer_tags", ["customer_id", "tag", "value", "score"]),
                   ("tag_changes", ["customer_id", "tag", "change", "old_value", "new_value", "to_version"])):
    path = os.path.join(sys.argv[1], name)
    latest = DeltaTable(path).version()
    versions = {}
    for v in range(latest + 1):
        try:
            t = DeltaTable(path, version=v).to_pyarrow_table()
            versions[v] = [list(r) for r in zip(*[t.column(c).to_pylist() for c in cols])]
        except Exception as e:
            versions[v] = {"error": type(e).__name__}
    out[name] = versions
print(json.dumps(out))
sys.stdout.flush()
os._exit(0)
"#;
    let output = Command::new(python)
        .arg("-c")
        .arg(script)
        .arg(warehouse)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "python failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

/// A float to 15 significant digits: Python writes the shortest text that reads back as the
/// same double, but serde_json's default parser may land one ulp off.
fn float_key(value: f64) -> serde_json::Value {
    format!("{value:.14e}").into()
}

/// `rows` with every float as [`float_key`] (integers stay numbers).
fn floats_as_keys(rows: serde_json::Value) -> serde_json::Value {
    match rows {
        serde_json::Value::Array(items) => items.into_iter().map(floats_as_keys).collect(),
        serde_json::Value::Number(n) if n.is_f64() => float_key(n.as_f64().expect("a float")),
        other => other,
    }
}

/// Rows of a version as tagflow reads them, in the Python dump's shape.
async fn tagflow_rows(warehouse: &Path, table: &str, version: u64) -> Result<serde_json::Value, tagflow::Error> {
    let sql = match table {
        "customer_tags" => "SELECT customer_id, tag, value, score FROM customer_tags",
        _ => "SELECT customer_id, tag, change, old_value, new_value, to_version FROM tag_changes",
    };
    let batches = query_published(&location(warehouse), table, Some(version), sql).await?;
    let mut rows: Vec<Vec<serde_json::Value>> = Vec::new();
    for b in &batches {
        for i in 0..b.num_rows() {
            rows.push(
                b.columns()
                    .iter()
                    .map(|c| {
                        if c.is_null(i) {
                            return serde_json::Value::Null;
                        }
                        if let Some(s) = c.as_any().downcast_ref::<StringArray>() {
                            return s.value(i).into();
                        }
                        if let Some(f) = c.as_any().downcast_ref::<Float64Array>() {
                            return float_key(f.value(i));
                        }
                        c.as_any().downcast_ref::<Int64Array>().expect("i64").value(i).into()
                    })
                    .collect(),
            );
        }
    }
    rows.sort_by_key(|r| serde_json::to_string(r).unwrap());
    Ok(serde_json::to_value(rows).unwrap())
}

fn compact_cli(fx: &Fixture) -> serde_json::Value {
    let out = tagflow()
        .args(["compact", "--json", "--config"])
        .arg(fx.dir.path().join("tagflow.toml"))
        .arg("--warehouse")
        .arg(fx.warehouse_dir())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "compact: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Compaction by policy and on demand: files shrink, checkpoints appear, every version
/// keeps its rows; vacuum removes only what no retained version needs, and the Python
/// reader opens every retained version of both tables with the same rows as tagflow.
#[tokio::test]
async fn compaction_and_vacuum_keep_retained_versions_readable_by_other_readers() {
    let fx = Fixture::new();
    generate_into(&fx.landing_dir(), 150, 60, 4).await;
    let config = "[compaction]\nevery_versions = 3\nvacuum_retention = \"5s\"\ncheckpoint_interval = 2\n";
    let mut before = BTreeMap::new();
    let as_ofs = ["2026-11-19T12:00:00Z", "2026-11-20T12:00:00Z", "2026-11-22T12:00:00Z"];
    for as_of in as_ofs {
        let report = fx.try_run(as_of, Some(config)).await.expect("run");
        before.insert(
            report.published.version,
            fx.published(Some(report.published.version)).await.rows,
        );
    }
    // The third publish (version 2) is not a multiple of 3; add one more to trigger the policy.
    let report = fx.try_run("2026-11-25T12:00:00Z", Some(config)).await.expect("run");
    assert_eq!(report.published.version, 3);
    let compaction = report.compaction.expect("version 3 is due for compaction");
    let tags = &compaction.tables[0];
    assert_eq!(tags.table, "customer_tags");
    assert!(tags.files_after <= tags.files_before && tags.files_removed > 0);
    let changes = &compaction.tables[1];
    assert_eq!(changes.table, "tag_changes");
    assert_eq!(changes.files_after, 1, "the feed's small files are packed into one");
    let warehouse = fx.warehouse_dir();
    assert!(warehouse.join("customer_tags/_delta_log/_last_checkpoint").is_file());
    // Compaction changed no version's rows (the vacuum kept everything: all removals are
    // younger than 5 s, unless this machine is very slow; then the read below fails loudly).
    for (version, rows) in &before {
        assert_eq!(&fx.published(Some(*version)).await.rows, rows, "version {version}");
    }
    assert_eq!(fx.published(None).await.rows, fx.published(Some(3)).await.rows);

    // Let the early versions' removed files age past the retention, publish once more and
    // compact on demand: versions superseded more than 5 s ago lose their files, the ones
    // current within the retention keep theirs.
    std::thread::sleep(Duration::from_millis(6_000));
    let last = fx.try_run("2026-12-24T12:00:00Z", Some(config)).await.expect("run");
    let compacted = compact_cli(&fx);
    let vacuumed: u64 = compacted["tables"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["files_vacuumed"].as_u64().unwrap())
        .sum();
    assert!(vacuumed > 0, "old files were vacuumed: {compacted}");
    let latest = latest_version(&warehouse);
    assert!(latest > last.published.version, "compaction committed new versions");
    // The version current until the last publish, and every later one, stay readable.
    let retained = last.published.version - 1..=latest;
    let python = std::env::var("TAGFLOW_TEST_PYTHON").ok();
    if python.is_none() {
        eprintln!("SKIPPED the Python reader part: set TAGFLOW_TEST_PYTHON to a python with `deltalake` (see .ci/run)");
    }
    let theirs = python.as_deref().map(|p| python_versions(p, &warehouse));
    for table in ["customer_tags", "tag_changes"] {
        let table_latest = match table {
            "customer_tags" => latest,
            _ => latest_version_of(&warehouse, table),
        };
        for version in 0..=table_latest {
            let ours = tagflow_rows(&warehouse, table, version).await;
            if table == "customer_tags" && retained.contains(&version) {
                assert!(ours.is_ok(), "{table} version {version} is retained: {:?}", ours.err());
            }
            if table == "customer_tags" && version == 0 {
                assert!(ours.is_err(), "version 0 was superseded long ago and vacuumed");
            }
            if let (Some(theirs), Ok(ours)) = (&theirs, &ours) {
                let mut rows: Vec<serde_json::Value> = theirs[table][version.to_string()]
                    .as_array()
                    .unwrap_or_else(|| panic!("python cannot read {table} version {version}: {theirs}"))
                    .iter()
                    .cloned()
                    .map(floats_as_keys)
                    .collect();
                rows.sort_by_key(|r| serde_json::to_string(r).unwrap());
                assert_eq!(&serde_json::Value::Array(rows), ours, "{table} version {version}");
            }
        }
    }
}

fn latest_version_of(warehouse: &Path, table: &str) -> u64 {
    std::fs::read_dir(warehouse.join(table).join("_delta_log"))
        .unwrap()
        .filter_map(|e| {
            e.ok()?
                .file_name()
                .to_string_lossy()
                .strip_suffix(".json")?
                .parse()
                .ok()
        })
        .max()
        .unwrap()
}

fn command(fx: &Fixture, args: &[&str]) -> Command {
    let mut cmd = tagflow();
    cmd.args(args)
        .arg("--config")
        .arg(fx.dir.path().join("tagflow.toml"))
        .arg("--landing")
        .arg(fx.landing_dir())
        .arg("--warehouse")
        .arg(fx.warehouse_dir())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    cmd
}

/// `run`, `compact` and `follow` killed at random moments: both tables always open at a
/// consistent version, and after a clean run the feed nets to every difference and the
/// table equals a full recomputation (nothing lost, nothing counted twice).
#[test]
fn killed_publishers_and_compactions_leave_consistent_tables() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let fx = Fixture::new();
    std::fs::write(fx.dir.path().join("tagflow.toml"), "[compaction]\nevery_versions = 2\n").unwrap();
    let arrivals = runtime.block_on(Arrivals::generate(&fx, 21, 200, 60));
    let mut rng = ChaCha8Rng::seed_from_u64(21);
    let mut landed = 0;
    let mut kills = BTreeMap::<&str, usize>::new();
    for (step, (as_of, share)) in SCHEDULE.iter().enumerate() {
        let upto = arrivals.upto(*share);
        arrivals.land(&fx, landed, upto);
        landed = upto;
        let run_args = ["run", "--as-of", as_of];
        let kinds: [(&str, &[&str]); 3] = [
            ("run", &run_args),
            ("compact", &["compact"]),
            ("follow", &["follow", "--interval", "100ms"]),
        ];
        let (kind, args) = kinds[step % 3];
        for _ in 0..2 {
            let mut child = command(&fx, args).spawn().unwrap();
            std::thread::sleep(Duration::from_millis(rng.random_range(30..700)));
            if child.try_wait().unwrap().is_none() {
                child.kill().unwrap(); // SIGKILL
                *kills.entry(kind).or_default() += 1;
            }
            child.wait().unwrap();
            if fx.warehouse_dir().join("customer_tags/_delta_log").is_dir() {
                // Whatever moment the kill hit, the latest versions open and read.
                let tags = runtime.block_on(fx.published(None));
                assert!(!tags.rows.is_empty() || step == 0);
                // The feed may lag a version (the next publish catches it up) but it opens.
                let feed = runtime.block_on(query_published(
                    &location(&fx.warehouse_dir()),
                    "tag_changes",
                    None,
                    "SELECT count(*) FROM tag_changes",
                ));
                assert!(
                    matches!(feed, Ok(_) | Err(tagflow::publish::PublishError::NotFound { .. })),
                    "the feed opens: {feed:?}"
                );
            }
        }
        let status = command(&fx, &run_args).status().unwrap();
        assert!(status.success(), "step {step}: the clean run succeeds: {status}");
        let published = runtime.block_on(fx.published(None));
        // Follow evaluates at the wall clock: compare after the clean run at the step's as-of.
        assert_same(
            &published,
            &runtime.block_on(full_tags(&fx, as_of)),
            &format!("step {step}"),
        );
    }
    runtime.block_on(assert_feed_matches_versions(&fx.warehouse_dir(), "after kills"));
    let total: usize = kills.values().sum();
    assert!(total >= 4, "only {kills:?} processes were killed before they ended");
}

/// Two refreshes and a compaction started at once: each either succeeds or stops with the
/// lock's exit code (6) and a message naming the holder; no refresh is lost (the next run
/// picks up what a stopped one did not do) and no table is corrupted.
#[test]
fn concurrent_refreshes_and_compactions_never_corrupt_or_lose_a_refresh() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let fx = Fixture::new();
    std::fs::write(fx.dir.path().join("tagflow.toml"), "").unwrap();
    let arrivals = runtime.block_on(Arrivals::generate(&fx, 31, 150, 60));
    let mut landed = 0;
    let mut outcomes = BTreeMap::<i32, usize>::new();
    for (step, (as_of, share)) in SCHEDULE.iter().enumerate().take(5) {
        let upto = arrivals.upto(*share);
        arrivals.land(&fx, landed, upto);
        landed = upto;
        let mut children = Vec::new();
        for args in [
            vec!["run", "--as-of", as_of],
            vec!["run", "--as-of", as_of],
            vec!["compact"],
        ] {
            let mut cmd = command(&fx, &args);
            cmd.stderr(Stdio::piped());
            children.push(cmd.spawn().unwrap());
        }
        for child in children {
            let out = child.wait_with_output().unwrap();
            let code = out.status.code().unwrap_or(-1);
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(code == 0 || code == 6, "step {step}: exit {code}: {stderr}");
            if code == 6 {
                assert!(stderr.contains("lock"), "step {step}: the refusal says why: {stderr}");
            }
            *outcomes.entry(code).or_default() += 1;
        }
        let status = command(&fx, &["run", "--as-of", as_of]).status().unwrap();
        assert!(status.success());
        assert_same(
            &runtime.block_on(fx.published(None)),
            &runtime.block_on(full_tags(&fx, as_of)),
            &format!("step {step}"),
        );
    }
    runtime.block_on(assert_feed_matches_versions(&fx.warehouse_dir(), "concurrent"));
    assert!(
        outcomes.get(&6).copied().unwrap_or(0) > 0,
        "the processes did overlap: {outcomes:?}"
    );
}

#[test]
fn bad_compaction_and_publish_config_is_refused_before_anything_runs() {
    let fx = Fixture::new();
    for (body, needle) in [
        (
            "[compaction]\nvacuum_retention = \"7 days\"\n",
            "compaction.vacuum_retention",
        ),
        ("[compaction]\nevery_versions = 0\n", "compaction.every_versions"),
        ("[compaction]\nevery_version = 3\n", "unknown field `every_version`"),
        ("[publish]\nmerge_every = \"soon\"\n", "publish.merge_every"),
        ("[publish]\nmerge_every = \"2d\"\n", "publish.merge_every"),
        ("[publish]\nmerge_max = 3\n", "unknown field `merge_max`"),
    ] {
        std::fs::write(fx.dir.path().join("tagflow.toml"), body).unwrap();
        let out = command(&fx, &["compact"]).stderr(Stdio::piped()).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{body}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(needle), "{body}: {stderr}");
    }
    assert!(!fx.warehouse_dir().exists(), "nothing was written");
}

/// A publish that died after its merge and before its feed commit: the next publish diffs
/// the missing version from the table's history, so the feed still nets to every difference.
#[tokio::test]
async fn a_feed_commit_lost_in_a_crash_is_caught_up_by_the_next_publish() {
    let fx = Fixture::new();
    generate_into(&fx.landing_dir(), 120, 60, 12).await;
    fx.try_run(AS_OFS[0], None).await.expect("run");
    fx.try_run(AS_OFS[1], None).await.expect("run");
    // The crash: version 1's feed commit never happened.
    let lost = fx
        .warehouse_dir()
        .join(format!("tag_changes/_delta_log/{:020}.json", 1));
    std::fs::remove_file(&lost).expect("the feed commit of version 1");
    assert!(read_feed(&fx.warehouse_dir()).await.iter().all(|r| r.to == 0));
    fx.try_run(AS_OFS[3], None).await.expect("run");
    let feed = read_feed(&fx.warehouse_dir()).await;
    assert!(feed.iter().any(|r| r.to == 1), "version 1's changes were recovered");
    assert_feed_matches_versions(&fx.warehouse_dir(), "after catch-up").await;
}

/// A `follow` session killed while its merge ran in the background leaves rows live on the
/// version the merge was writing, and no such version. The next opening writes that
/// version from the rows live on the one before (exactly what the merge was writing) and
/// marks it covered: readers see the same rows before and after, the feed nets to every
/// difference between versions, and the table ends equal to a full run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_merge_killed_in_the_background_is_written_from_its_rows_at_the_next_opening() {
    let fx = Fixture::new();
    let clicks = |batch: usize, at: &str| -> Vec<Click> {
        (0..4)
            .map(|k| {
                // New customers in every batch: each batch enters tags.
                let customer = format!("c{batch}-{k}");
                view(&format!("k{batch}-{k}"), &customer, at).category(["shoes", "bags"][k % 2])
            })
            .collect()
    };
    fx.clicks("dt=2026-11-20/a.parquet", &clicks(0, "2026-11-20T08:00:00Z"));
    let config = "[publish]\nmerge_every = \"1d\"\n";
    fx.try_run("2026-11-20T09:00:00Z", Some(config))
        .await
        .expect("version 0");
    // A session's first batch merges; the three after it stay live on its version.
    let settings = fx.settings("2026-11-20T09:00:00Z", Some(config)).expect("settings");
    let times = [
        "2026-11-20T10:00:00Z",
        "2026-11-20T10:05:00Z",
        "2026-11-20T10:10:00Z",
        "2026-11-20T10:15:00Z",
    ];
    let reports = crate::incremental::follow_at(&settings, &times, |batch| {
        if batch < times.len() {
            let at = format!("2026-11-20T09:{:02}:00Z", 10 + batch);
            fx.clicks(&format!("dt=2026-11-20/b{batch}.parquet"), &clicks(batch, &at));
        }
    })
    .await;
    let base = reports[0].published.version;
    for report in &reports[1..] {
        assert!(!report.published.merged && !report.published.merge_started);
        assert_eq!(report.published.version, base);
        assert!(
            report.published.changes.is_some_and(|c| c.total() > 0),
            "each batch changes tags"
        );
    }
    // What a kill during a merge of the first two live batches leaves: the last batch's
    // rows are on the version that merge was writing, which was never committed.
    let warehouse = location(&fx.warehouse_dir());
    let before = read_view_at(&warehouse, None).await;
    let last = reports[3].as_of.timestamp_micros();
    move_live_rows(&fx.warehouse_dir(), last, base as i64 + 1).await;
    assert_eq!(latest_version(&fx.warehouse_dir()), base, "no merged version yet");
    assert_eq!(
        read_view_at(&warehouse, None).await.rows,
        before.rows,
        "readers apply the rows on the version being merged"
    );

    // The next opening (a run) writes the merge's version, then publishes its own.
    let run = fx
        .try_run("2026-11-20T10:20:00Z", Some(config))
        .await
        .expect("the run after the kill");
    assert_eq!(run.published.version, base + 2, "the merge's version, then the run's");
    assert_same(
        &read_tags(&fx.warehouse_dir(), Some(base + 1)).await,
        &fx.seen_after(&reports[2].published).await,
        "the merge's version holds the rows that were live on the version before it",
    );
    assert_feed_matches_versions(&fx.warehouse_dir(), "after the killed merge").await;
    assert_same(
        &fx.published(None).await,
        &full_tags(&fx, "2026-11-20T10:20:00Z").await,
        "after the run",
    );
}

/// Move the feed's rows published at `as_of` (micros) onto version `on`, live, as a batch
/// publishing while a background merge wrote `on` put them (the feed rewritten whole).
async fn move_live_rows(warehouse: &Path, as_of: i64, on: i64) {
    let sql = "SELECT * FROM tag_changes";
    let rows = query_published(&location(warehouse), "tag_changes", None, sql)
        .await
        .expect("the feed");
    let schema = tagflow::publish::tags::tag_changes_schema();
    let mut moved = 0;
    let mut batches = Vec::new();
    for batch in &rows {
        let column = |name: &str| -> ArrayRef {
            let field = schema.field_with_name(name).expect("a feed column");
            arrow::compute::cast(batch.column_by_name(name).expect("a feed column"), field.data_type()).unwrap()
        };
        let times = column("as_of");
        let times = times.as_any().downcast_ref::<TimestampMicrosecondArray>().unwrap();
        let hit: Vec<bool> = (0..batch.num_rows()).map(|i| times.value(i) == as_of).collect();
        moved += hit.iter().filter(|h| **h).count();
        let columns: Vec<ArrayRef> = schema
            .fields()
            .iter()
            .map(|f| match f.name().as_str() {
                "from_version" | "to_version" => {
                    let old = column(f.name());
                    let old = old.as_any().downcast_ref::<Int64Array>().unwrap();
                    let moved = (0..old.len()).map(|i| match hit[i] {
                        true => Some(on),
                        false => old.is_valid(i).then(|| old.value(i)),
                    });
                    Arc::new(moved.collect::<Int64Array>()) as ArrayRef
                }
                name => column(name),
            })
            .collect();
        batches.push(RecordBatch::try_new(schema.clone(), columns).unwrap());
    }
    assert!(moved > 0, "the batch at {as_of} published rows");
    let url = url::Url::from_directory_path(warehouse.join("tag_changes")).unwrap();
    let feed = deltalake::open_table(url).await.expect("the feed opens");
    feed.write(batches)
        .with_save_mode(deltalake::protocol::SaveMode::Overwrite)
        .await
        .expect("the feed rewritten");
}
