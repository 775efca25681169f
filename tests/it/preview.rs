//! `tagflow preview`: a changed definition evaluated against the committed state, compared
//! with the live rows per value (enter, exit, stay, samples), with nothing written.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use tagflow::app::error::exit;
use tagflow::app::preview::{preview, ValueFlow};

use crate::support::*;

const AS_OF: &str = "2026-11-19T23:59:59Z";

/// Every file under `dir` with its size: what a read-only command must leave as it was.
fn listing(dir: &Path) -> BTreeSet<(PathBuf, u64)> {
    let mut out = BTreeSet::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(listing(&path));
        } else {
            out.insert((path.clone(), path.metadata().unwrap().len()));
        }
    }
    out
}

/// customer -> value of one tag.
fn values_of(tags: &Tags, tag: &str) -> BTreeMap<String, String> {
    tags.rows
        .iter()
        .filter(|r| r.tag == tag)
        .map(|r| (r.customer_id.clone(), r.value.clone()))
        .collect()
}

/// The flows worked out from two customer -> value maps, as the preview should report them.
fn expected_flows(
    before: &BTreeMap<String, String>,
    after: &BTreeMap<String, String>,
    sample: usize,
) -> Vec<ValueFlow> {
    let values: BTreeSet<&String> = before.values().chain(after.values()).collect();
    values
        .into_iter()
        .map(|v| {
            let has = |m: &BTreeMap<String, String>, c: &String| m.get(c) == Some(v);
            let customers: BTreeSet<&String> = before.keys().chain(after.keys()).collect();
            let enter: Vec<String> = customers
                .iter()
                .filter(|c| has(after, c) && !has(before, c))
                .map(|c| c.to_string())
                .collect();
            let exit: Vec<String> = customers
                .iter()
                .filter(|c| has(before, c) && !has(after, c))
                .map(|c| c.to_string())
                .collect();
            let stay: Vec<String> = customers
                .iter()
                .filter(|c| has(before, c) && has(after, c))
                .map(|c| c.to_string())
                .collect();
            ValueFlow {
                value: v.clone(),
                before: exit.len() + stay.len(),
                after: enter.len() + stay.len(),
                enter: enter.len(),
                exit: exit.len(),
                stay: stay.len(),
                sample_enter: enter.into_iter().take(sample).collect(),
                sample_exit: exit.into_iter().take(sample).collect(),
                sample_stay: stay.into_iter().take(sample).collect(),
            }
        })
        .collect()
}

fn same_flows(got: &[ValueFlow], expected: &[ValueFlow]) {
    let show = |f: &[ValueFlow]| serde_json::to_string_pretty(f).unwrap();
    assert_eq!(show(got), show(expected));
}

#[tokio::test]
async fn an_edited_tag_is_compared_with_the_live_rows_and_nothing_is_written() {
    let fx = Fixture::new();
    generate_into(&fx.landing_dir(), 300, 120, 31).await;
    let live = fx.run(AS_OF).await;
    let settings = fx.settings(AS_OF, None).unwrap();

    // The edit: high frequency from 2 orders instead of 3.
    let edited = fx.dir.path().join("rfm_tier.sql");
    std::fs::copy(shipped_sql().join("behaviour/rfm_tier.sql"), &edited).unwrap();
    edit(&edited, "high_frequency_orders = 3", "high_frequency_orders = 2");
    let files_before = listing(&fx.warehouse_dir());
    let result = preview(&settings, &edited, 4).await.expect("preview");
    assert_eq!(listing(&fx.warehouse_dir()), files_before, "a preview writes nothing");

    // The truth: a full run with the same change made by a parameter override.
    let other = fx.dir.path().join("override-warehouse");
    let mut with_override = fx
        .settings(AS_OF, Some("[params.rfm_tier]\nhigh_frequency_orders = 2\n"))
        .unwrap();
    with_override.warehouse = Some(location(&other));
    tagflow::app::run::run(&with_override).await.expect("override run");
    let after = read_tags(&other, None).await;

    // rfm_tier is read by no other tag: it is the only one shown.
    assert_eq!(
        result.tags.iter().map(|t| t.tag.as_str()).collect::<Vec<_>>(),
        ["rfm_tier"]
    );
    let (old, new) = (values_of(&live, "rfm_tier"), values_of(&after, "rfm_tier"));
    assert_ne!(old, new, "the edit moves customers");
    same_flows(&result.tags[0].values, &expected_flows(&old, &new, 4));
    assert_eq!(result.live_version, Some(0));
    assert_eq!(result.as_of.to_rfc3339(), "2026-11-19T23:59:59+00:00");
}

#[tokio::test]
async fn an_unchanged_measure_moves_nobody_in_any_tag_that_reads_it() {
    let fx = Fixture::new();
    generate_into(&fx.landing_dir(), 200, 90, 32).await;
    let live = fx.run(AS_OF).await;
    let settings = fx.settings(AS_OF, None).unwrap();
    let copy = fx.dir.path().join("customer_measures.sql");
    std::fs::copy(shipped_sql().join("measures/customer_measures.sql"), &copy).unwrap();
    let result = preview(&settings, &copy, 2).await.expect("preview");
    let shown: BTreeSet<&str> = result.tags.iter().map(|t| t.tag.as_str()).collect();
    for tag in ["rfm_tier", "lifecycle", "aipl_stage", "marketing_blacklist"] {
        assert!(
            shown.contains(tag),
            "{tag} reads customer_measures (directly or not): {shown:?}"
        );
    }
    for tag in &result.tags {
        let live_rows = values_of(&live, &tag.tag);
        same_flows(&tag.values, &expected_flows(&live_rows, &live_rows, 2));
    }
    assert!(result.gates.passed());
}

#[test]
fn a_new_tag_enters_everyone_and_state_jobs_or_no_state_are_refused() {
    let fx = Fixture::new();
    fx.clicks(
        "a.parquet",
        &[
            view("k1", "c1", "2026-11-19T10:00:00Z"),
            view("k2", "c2", "2026-11-19T11:00:00Z"),
        ],
    );
    let run = |args: &[&str]| fx.command(args).output().unwrap();
    let new_tag = fx.dir.path().join("everyone.sql");
    std::fs::write(
        &new_tag,
        "-- name = \"everyone\"\n-- family = \"behaviour\"\n-- description = \"every customer\"\n\
         -- inputs = [\"customer_measures\"]\nSELECT customer_id, 'yes' AS value, 1.0 AS score FROM customer_measures\n",
    )
    .unwrap();
    let no_state = run(&["preview", new_tag.to_str().unwrap()]);
    assert_eq!(
        no_state.status.code(),
        Some(exit::INPUT),
        "{}",
        String::from_utf8_lossy(&no_state.stderr)
    );
    assert!(String::from_utf8_lossy(&no_state.stderr).contains("run `tagflow run` first"));

    assert!(run(&["run", "--as-of", AS_OF]).status.success());
    let out = run(&["preview", new_tag.to_str().unwrap(), "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let flows = &json["tags"][0]["values"][0];
    assert_eq!(json["tags"][0]["tag"], "everyone");
    assert_eq!(
        (flows["value"].as_str(), flows["enter"].as_u64(), flows["exit"].as_u64()),
        (Some("yes"), Some(2), Some(0))
    );
    assert_eq!(flows["sample_enter"], serde_json::json!(["c1", "c2"]));

    let state_job = shipped_sql().join("state/customer_days.sql");
    let out = run(&["preview", state_job.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(exit::CONFIG), "{stderr}");
    assert!(
        stderr.contains("is a state job") && stderr.contains("run --full"),
        "{stderr}"
    );
}
