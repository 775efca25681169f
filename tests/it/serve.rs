//! The lookup API (`tagflow serve`): every answer equals the published table at the version
//! it names, cursors stay on their snapshot, reloads under load never mix versions, SQL is
//! read-only and limited, and every refusal is a JSON 4xx that says what was wrong.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use tagflow::publish::query_published;
use tagflow::publish::snapshots;
use tagflow::serve::{self, Server};

use crate::http::{listening_address, Client};
use crate::incremental::{follow_at, Arrivals};
use crate::support::*;

const TOKEN: &str = "s3cret-token-for-tests";

/// As-of times of the three publishes, with the share (%) of arrivals landed by then.
const PUBLISHES: [(&str, usize); 3] = [
    ("2026-06-20T00:00:00Z", 50),
    ("2026-06-28T00:00:00Z", 75),
    ("2026-07-02T00:00:00Z", 100),
];

/// (family, tag, value, score) per customer at one version.
type CustomerRows = BTreeMap<String, BTreeSet<(String, String, String, Option<String>)>>;

/// A score to 15 significant digits: the API writes the shortest text that reads back as the
/// same double, but serde_json's default parser may land one ulp off.
fn score_key(score: f64) -> String {
    format!("{score:.14e}")
}

pub(crate) fn by_customer(tags: &Tags) -> CustomerRows {
    let mut out = CustomerRows::new();
    for r in &tags.rows {
        out.entry(r.customer_id.clone()).or_default().insert((
            r.family.clone(),
            r.tag.clone(),
            r.value.clone(),
            r.score.map(score_key),
        ));
    }
    out
}

/// The rows of one API `CustomerTags` object.
pub(crate) fn api_rows(customer: &Value) -> BTreeSet<(String, String, String, Option<String>)> {
    customer["tags"]
        .as_array()
        .expect("tags array")
        .iter()
        .map(|t| {
            (
                t["family"].as_str().expect("family").to_string(),
                t["tag"].as_str().expect("tag").to_string(),
                t["value"].as_str().expect("value").to_string(),
                t["score"].as_f64().map(score_key),
            )
        })
        .collect()
}

/// A generated history; `publish(i)` lands its share and runs publish `i` (version `i`).
pub(crate) struct History {
    pub fx: Fixture,
    arrivals: Arrivals,
    landed: usize,
}

impl History {
    pub async fn new(seed: u64) -> Self {
        let fx = Fixture::new();
        let arrivals = Arrivals::generate(&fx, seed, 150, 60).await;
        History {
            fx,
            arrivals,
            landed: 0,
        }
    }

    pub async fn publish(&mut self, i: usize) {
        let (as_of, share) = PUBLISHES[i];
        let upto = self.arrivals.upto(share);
        self.arrivals.land(&self.fx, self.landed, upto);
        self.landed = upto;
        let report = self.fx.try_run(as_of, None).await.expect("run");
        assert_eq!(report.published.version, i as u64);
    }

    /// Start a server on port 0 with `config` (a tagflow.toml body) and wait for `version`.
    pub async fn serve(
        &self,
        config: Option<&str>,
        version: Option<u64>,
    ) -> (Server, tokio::sync::oneshot::Sender<()>) {
        let (server, stop) = serve_fixture(&self.fx, PUBLISHES[0].0, config).await;
        if let Some(version) = version {
            wait_for_version(&server, version).await;
        }
        (server, stop)
    }
}

/// A server on port 0 over `fx`'s warehouse with `config` (a tagflow.toml body), reloading
/// every 100 ms; it stops when the returned sender is used or dropped.
pub(crate) async fn serve_fixture(
    fx: &Fixture,
    as_of: &str,
    config: Option<&str>,
) -> (Server, tokio::sync::oneshot::Sender<()>) {
    let settings = fx.settings(as_of, config).expect("settings");
    let mut options = settings.serve.clone();
    options.listen = "127.0.0.1:0".parse().expect("addr");
    options.reload_interval = Duration::from_millis(100);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = serve::start(settings.warehouse.expect("warehouse"), options, async move {
        let _ = stopped.await;
    })
    .await
    .expect("server starts");
    (server, stop)
}

pub(crate) async fn wait_for_version(server: &Server, version: u64) {
    for _ in 0..300 {
        if server.state.current().is_some_and(|i| i.version == version) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the server did not load version {version} within 15 s");
}

pub(crate) fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            other => format!("%{other:02X}"),
        })
        .collect()
}

/// Walk every page of a segment listing from `cursor` (or the start); returns (customer ids,
/// versions seen).
async fn all_pages(client: &mut Client, first: &str, cursor: Option<&str>) -> (Vec<String>, BTreeSet<u64>) {
    let (mut ids, mut versions) = (Vec::new(), BTreeSet::new());
    let mut path = match cursor {
        Some(cursor) => format!("{first}&cursor={}", encode(cursor)),
        None => first.to_string(),
    };
    loop {
        let reply = client.get(&path).await;
        assert_eq!(reply.status, 200, "{path}: {}", reply.text());
        let page = reply.json();
        versions.insert(page["version"].as_u64().expect("version"));
        for c in page["customers"].as_array().expect("customers") {
            ids.push(c["customer_id"].as_str().expect("id").to_string());
        }
        match page["next_cursor"].as_str() {
            Some(cursor) => path = format!("{}&cursor={}", first, encode(cursor)),
            None => return (ids, versions),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lookups_segments_and_history_match_the_published_versions() {
    let mut history = History::new(51).await;
    for i in 0..3 {
        history.publish(i).await;
    }
    let (server, _stop) = history.serve(None, Some(2)).await;
    let mut client = Client::new(server.addr);
    let warehouse = history.fx.warehouse_dir();
    let latest = read_tags(&warehouse, Some(2)).await;
    let expected = by_customer(&latest);
    let listed = snapshots::list(&location(&warehouse)).await.expect("snapshots");
    let as_of_of = |v: u64| {
        listed
            .iter()
            .find(|s| s.version == v)
            .and_then(|s| s.as_of)
            .expect("publish as-of")
    };

    // Every customer's tags, exactly.
    assert!(expected.len() > 50, "{} customers", expected.len());
    for (customer, rows) in &expected {
        let reply = client.get(&format!("/v1/customers/{}/tags", encode(customer))).await;
        assert_eq!(reply.status, 200, "{customer}: {}", reply.text());
        let body = reply.json();
        assert_eq!(body["version"], 2);
        assert_eq!(body["customer_id"], customer.as_str());
        let as_of: chrono::DateTime<chrono::Utc> = body["as_of"].as_str().expect("as_of").parse().expect("time");
        assert_eq!(as_of, as_of_of(2));
        assert_eq!(&api_rows(&body), rows, "{customer}");
    }
    let unknown = client.get("/v1/customers/nobody-at-all/tags").await;
    assert_eq!((unknown.status, unknown.error_code().as_str()), (404, "not_found"));
    for bad in [&"x".repeat(300), "bad%01id"] {
        let reply = client.get(&format!("/v1/customers/{bad}/tags")).await;
        assert_eq!(reply.status, 400, "{bad}");
        assert!(reply.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("invalid customer id"));
    }

    // A pinned version answers from that version.
    let first = by_customer(&read_tags(&warehouse, Some(0)).await);
    let changed: Vec<&String> = first
        .keys()
        .filter(|c| expected.get(*c) != first.get(*c))
        .take(5)
        .collect();
    assert!(!changed.is_empty(), "some customer changed between versions 0 and 2");
    for customer in changed {
        let pinned = client
            .get(&format!("/v1/customers/{customer}/tags?version=0"))
            .await
            .json();
        assert_eq!(pinned["version"], 0);
        assert_eq!(&api_rows(&pinned), &first[customer]);
        let at = as_of_of(0).to_rfc3339();
        let by_time = client
            .get(&format!("/v1/customers/{customer}/tags?as_of={}", encode(&at)))
            .await
            .json();
        assert_eq!(by_time["version"], 0);
    }
    let customer = expected.keys().next().unwrap();
    for (query, status) in [
        ("version=99", 404),
        ("version=0&as_of=2026-06-20T00:00:00Z", 400),
        ("as_of=yesterday", 400),
        ("as_of=2020-01-01T00:00:00Z", 404),
        ("verison=1", 400),
        ("version=-1", 400),
    ] {
        let reply = client.get(&format!("/v1/customers/{customer}/tags?{query}")).await;
        assert_eq!(reply.status, status, "{query}: {}", reply.text());
        assert!(!reply.error_code().is_empty(), "{query}: JSON error body");
    }

    // batchGet: request order, each id once, unknown ids listed.
    let ids: Vec<&String> = expected.keys().take(5).collect();
    let request = json!({"customer_ids": [ids[0], "ghost-1", ids[1], ids[0], ids[2], ids[3], ids[4], "ghost-2"]});
    let body = client.post("/v1/customers:batchGet", &request).await.json();
    assert_eq!(body["version"], 2);
    let found: Vec<&str> = body["customers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["customer_id"].as_str().unwrap())
        .collect();
    assert_eq!(found, ids.iter().map(|s| s.as_str()).collect::<Vec<_>>());
    for c in body["customers"].as_array().unwrap() {
        assert_eq!(&api_rows(c), &expected[c["customer_id"].as_str().unwrap()]);
    }
    assert_eq!(body["not_found"], json!(["ghost-1", "ghost-2"]));
    let too_many: Vec<String> = (0..1001).map(|i| format!("c{i}")).collect();
    let reply = client
        .post("/v1/customers:batchGet", &json!({ "customer_ids": too_many }))
        .await;
    assert_eq!(reply.status, 400);
    assert!(reply.text().contains("maximum of 1000"), "{}", reply.text());
    for (body, content_type, status) in [
        (r#"{"customer_ids": 5}"#, Some("application/json"), 400),
        ("not json", Some("application/json"), 400),
        (r#"{"customer_ids": [], "extra": 1}"#, Some("application/json"), 400),
        (r#"{"customer_ids": ["a"]}"#, None, 415),
        (r#"{"customer_ids": [""]}"#, Some("application/json"), 400),
    ] {
        let reply = client
            .send("POST", "/v1/customers:batchGet", content_type, body.as_bytes().to_vec())
            .await;
        assert_eq!(reply.status, status, "{body}: {}", reply.text());
        assert!(!reply.error_code().is_empty(), "{body}: JSON error body");
    }

    // Segments: every page walked gives exactly the segment, in id order, once each.
    let rfm_tier: BTreeMap<String, Vec<String>> =
        latest
            .rows
            .iter()
            .filter(|r| r.tag == "rfm_tier")
            .fold(BTreeMap::new(), |mut m, r| {
                m.entry(r.value.clone())
                    .or_insert_with(Vec::new)
                    .push(r.customer_id.clone());
                m
            });
    assert!(rfm_tier.len() >= 2, "several fan tiers: {:?}", rfm_tier.keys());
    for (value, mut members) in rfm_tier.clone() {
        members.sort();
        let (ids, versions) = all_pages(
            &mut client,
            &format!("/v1/segments/rfm_tier?value={value}&limit=7"),
            None,
        )
        .await;
        assert_eq!(ids, members, "rfm_tier={value}");
        assert_eq!(versions, BTreeSet::from([2]));
    }
    let (ids, _) = all_pages(&mut client, "/v1/segments/rfm_tier?limit=1000", None).await;
    assert_eq!(ids, latest.customers("rfm_tier"));
    let summary = client.get("/v1/segments/rfm_tier/summary").await.json();
    assert_eq!(summary["family"], "behaviour");
    let sizes: BTreeMap<String, usize> = summary["values"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            (
                v["value"].as_str().unwrap().to_string(),
                v["customers"].as_u64().unwrap() as usize,
            )
        })
        .collect();
    assert_eq!(sizes, rfm_tier.iter().map(|(v, m)| (v.clone(), m.len())).collect());
    let page = client.get("/v1/segments/rfm_tier?limit=2").await.json();
    let cursor = page["next_cursor"].as_str().unwrap().to_string();
    for (path, status) in [
        ("/v1/segments/no_such_tag".to_string(), 404),
        ("/v1/segments/no_such_tag/summary".to_string(), 404),
        ("/v1/segments/rfm_tier?limit=0".to_string(), 400),
        ("/v1/segments/rfm_tier?limit=5000".to_string(), 400),
        ("/v1/segments/rfm_tier?cursor=garbage".to_string(), 400),
        (
            format!("/v1/segments/rfm_tier?value=champion&cursor={}", encode(&cursor)),
            400,
        ),
        (
            format!("/v1/segments/rfm_tier?version=1&cursor={}", encode(&cursor)),
            400,
        ),
        ("/v1/segments/rfm_tier?color=red".to_string(), 400),
        ("/v1/nowhere".to_string(), 404),
    ] {
        let reply = client.get(&path).await;
        assert_eq!(reply.status, status, "{path}: {}", reply.text());
        assert!(!reply.error_code().is_empty(), "{path}: JSON error body");
    }
    let wrong_method = client.send("DELETE", "/v1/snapshots", None, Vec::new()).await;
    assert_eq!(wrong_method.status, 405);

    // Changes: the customer's rows of the feed, newest first, up to the version read.
    let customer = expected
        .keys()
        .find(|c| first.contains_key(*c) && first.get(*c) != expected.get(*c))
        .expect("a customer who changed");
    let feed = query_published(
        &location(&warehouse),
        "tag_changes",
        None,
        &format!("SELECT to_version FROM tag_changes WHERE customer_id = '{customer}' ORDER BY to_version DESC"),
    )
    .await
    .expect("feed");
    let feed_versions: Vec<i64> = feed
        .iter()
        .flat_map(|b| {
            let c = b.column(0).as_any().downcast_ref::<arrow::array::Int64Array>().unwrap();
            c.values().to_vec()
        })
        .collect();
    let changes = client.get(&format!("/v1/customers/{customer}/changes")).await.json();
    let api_versions: Vec<i64> = changes["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["to_version"].as_i64().unwrap())
        .collect();
    assert_eq!(api_versions, feed_versions);
    assert!(api_versions.contains(&0) && api_versions.iter().any(|v| *v > 0));
    let upto_0 = client
        .get(&format!("/v1/customers/{customer}/changes?version=0"))
        .await
        .json();
    assert!(upto_0["changes"]
        .as_array()
        .unwrap()
        .iter()
        .all(|c| c["to_version"] == 0));
    assert_eq!(
        upto_0["changes"].as_array().unwrap().len(),
        first[customer].len(),
        "version 0: every row entered"
    );

    // Snapshots, operations endpoints.
    let versions: Vec<u64> = client
        .get("/v1/snapshots")
        .await
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["version"].as_u64().unwrap())
        .collect();
    assert_eq!(versions, listed.iter().map(|s| s.version).collect::<Vec<_>>());
    assert_eq!(client.get("/healthz").await.status, 200);
    let ready = client.get("/readyz").await.json();
    assert_eq!(
        (ready["status"].as_str(), ready["version"].as_u64()),
        (Some("ready"), Some(2))
    );
    let openapi = client.get("/openapi.json").await.json();
    for path in [
        "/v1/customers/{customer_id}/tags",
        "/v1/customers:batchGet",
        "/v1/segments/{tag}",
        "/v1/segments/{tag}/summary",
        "/v1/customers/{customer_id}/changes",
        "/v1/snapshots",
        "/v1/query",
        "/healthz",
        "/readyz",
        "/metrics",
    ] {
        assert!(openapi["paths"].get(path).is_some(), "openapi lacks {path}");
    }
    let metrics = client.get("/metrics").await.text();
    let lookups = metrics
        .lines()
        .find(|l| {
            l.starts_with("tagflow_http_requests_total{")
                && l.contains("route=\"/v1/customers/{customer_id}/tags\"")
                && l.contains("status=\"200\"")
        })
        .unwrap_or_else(|| panic!("no lookup counter in\n{metrics}"));
    let count: f64 = lookups.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(count >= expected.len() as f64, "{lookups}");
    assert!(metrics.contains("tagflow_snapshot_version 2"), "{metrics}");
    assert!(
        metrics.contains("tagflow_http_request_duration_seconds_bucket{"),
        "{metrics}"
    );
    assert!(metrics.lines().any(|l| l.starts_with("tagflow_snapshot_age_seconds ")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cursor_stays_on_its_snapshot_and_reloads_never_mix_versions() {
    let mut history = History::new(52).await;
    history.publish(0).await;
    let (server, _stop) = history.serve(None, Some(0)).await;
    let first_index = Arc::downgrade(&server.state.current().expect("loaded"));
    let mut client = Client::new(server.addr);
    let page = client.get("/v1/segments/aipl_stage?limit=3").await.json();
    let cursor = page["next_cursor"].as_str().expect("more pages").to_string();

    // Clients hammer lookups while two more versions are published.
    let customers: Vec<String> = by_customer(&read_tags(&history.fx.warehouse_dir(), Some(0)).await)
        .keys()
        .cloned()
        .collect();
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut clients = Vec::new();
    for worker in 0..3usize {
        let (done, customers, addr) = (done.clone(), customers.clone(), server.addr);
        clients.push(tokio::spawn(async move {
            let mut client = Client::new(addr);
            let mut seen: Vec<(String, u64, Value)> = Vec::new();
            let mut i = worker;
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                let customer = &customers[i % customers.len()];
                i += 7;
                let reply = client
                    .try_send("GET", &format!("/v1/customers/{customer}/tags"), None, Vec::new())
                    .await
                    .expect("no connection error during reloads");
                assert!(
                    reply.status == 200 || reply.status == 404,
                    "{}: {}",
                    reply.status,
                    reply.text()
                );
                if reply.status == 200 {
                    let body = reply.json();
                    seen.push((customer.clone(), body["version"].as_u64().unwrap(), body));
                }
            }
            seen
        }));
    }
    history.publish(1).await;
    wait_for_version(&server, 1).await;
    history.publish(2).await;
    wait_for_version(&server, 2).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut versions = BTreeSet::new();
    let mut expected = BTreeMap::new();
    for v in 0..3u64 {
        expected.insert(v, by_customer(&read_tags(&history.fx.warehouse_dir(), Some(v)).await));
    }
    let mut answers = 0;
    for client in clients {
        let seen = client.await.expect("client task");
        let mut last = 0;
        for (customer, version, body) in seen {
            assert!(version >= last, "a client went back from version {last} to {version}");
            last = version;
            versions.insert(version);
            assert_eq!(
                &api_rows(&body),
                &expected[&version][&customer],
                "{customer} at {version}"
            );
            answers += 1;
        }
    }
    assert!(answers > 100, "only {answers} answers");
    assert_eq!(versions, BTreeSet::from([0, 1, 2]), "answers came from every version");

    // The cursor taken on version 0 still pages through version 0.
    let (mut ids, pinned) = all_pages(&mut client, "/v1/segments/aipl_stage?limit=3", Some(&cursor)).await;
    assert_eq!(pinned, BTreeSet::from([0]));
    let mut all: Vec<String> = page["customers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["customer_id"].as_str().unwrap().to_string())
        .collect();
    all.append(&mut ids);
    assert_eq!(
        all,
        read_tags(&history.fx.warehouse_dir(), Some(0))
            .await
            .customers("aipl_stage")
    );
    let fresh = client.get("/v1/segments/aipl_stage?limit=3").await.json();
    assert_eq!(fresh["version"], 2);

    // The index first served (version 0) is freed once nothing reads it (the cursor's
    // pages came from a separately loaded, pinned copy).
    assert!(first_index.upgrade().is_none(), "the old index is still alive");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_is_read_only_and_limited() {
    let mut history = History::new(53).await;
    history.publish(0).await;
    history.publish(1).await;
    let config = "[serve]\nquery_max_rows = 5\nquery_timeout = \"1s\"\nquery_memory_mb = 2\n";
    let (server, _stop) = history.serve(Some(config), Some(1)).await;
    let mut client = Client::new(server.addr);
    let query = |sql: &str| json!({ "sql": sql });

    let latest = read_tags(&history.fx.warehouse_dir(), Some(1)).await;
    let mut counts: BTreeMap<String, u64> = BTreeMap::new();
    for r in &latest.rows {
        *counts.entry(r.tag.clone()).or_default() += 1;
    }
    let body = client
        .post(
            "/v1/query",
            &query("SELECT tag, count(*) AS n FROM customer_tags GROUP BY tag ORDER BY tag"),
        )
        .await
        .json();
    assert_eq!(body["version"], 1);
    assert_eq!(body["columns"][0], json!({"name": "tag", "data_type": "Utf8"}));
    let got: BTreeMap<String, u64> = body["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["tag"].as_str().unwrap().to_string(), r["n"].as_u64().unwrap()))
        .collect();
    // Only 5 rows come back: the first five tags.
    assert_eq!(body["truncated"], counts.len() > 5);
    assert_eq!(got, counts.into_iter().take(5).collect());

    let v0_rows = read_tags(&history.fx.warehouse_dir(), Some(0)).await.rows.len();
    let pinned = client
        .post("/v1/query?version=0", &query("SELECT count(*) AS n FROM customer_tags"))
        .await
        .json();
    assert_eq!(pinned["rows"][0]["n"].as_u64(), Some(v0_rows as u64));
    let feed = client
        .post(
            "/v1/query?version=0",
            &query("SELECT max(to_version) AS v, count(*) AS n FROM tag_changes"),
        )
        .await
        .json();
    assert_eq!(
        (feed["rows"][0]["v"].as_i64(), feed["rows"][0]["n"].as_u64()),
        (Some(0), Some(v0_rows as u64)),
        "the feed stops at the version read"
    );

    let written = history.fx.dir.path().join("copied.parquet");
    for sql in [
        "INSERT INTO customer_tags VALUES ('c', 'f', 't', 'v', 1.0, now())",
        "DELETE FROM customer_tags",
        "UPDATE customer_tags SET value = 'x'",
        "CREATE TABLE x AS SELECT 1",
        "DROP TABLE customer_tags",
        "CREATE VIEW v AS SELECT 1",
        &format!(
            "CREATE EXTERNAL TABLE ext STORED AS PARQUET LOCATION '{}'",
            history.fx.landing_dir().display()
        ),
        &format!("COPY (SELECT 1 AS a) TO '{}'", written.display()),
        "SET datafusion.execution.batch_size = 1",
        "SELECT * FROM '/etc/passwd'",
        &format!(
            "SELECT * FROM '{}'",
            history.fx.warehouse_dir().join("customer_tags").display()
        ),
        "SELECT * FROM read_parquet('/tmp/x.parquet')",
        "SELECT * FROM information_schema.tables",
        "SELECT * FROM job_runs",
        "SELEKT 1",
        "",
    ] {
        let reply = client.post("/v1/query", &query(sql)).await;
        assert_eq!(reply.status, 400, "{sql}: {}", reply.text());
        assert_eq!(reply.error_code(), "bad_request", "{sql}");
        assert!(!reply.json()["error"]["message"].as_str().unwrap().is_empty());
    }
    assert!(!written.exists(), "COPY wrote a file");

    let slow = client
        .post(
            "/v1/query",
            &query("SELECT count(*) FROM generate_series(1, 100000000000)"),
        )
        .await;
    assert_eq!(
        (slow.status, slow.error_code().as_str()),
        (408, "query_timeout"),
        "{}",
        slow.text()
    );
    let big = client
        .post(
            "/v1/query",
            &query("SELECT v % 3000000 AS k, count(*) FROM generate_series(1, 3000000) AS t(v) GROUP BY 1 ORDER BY 1"),
        )
        .await;
    assert_eq!(
        (big.status, big.error_code().as_str()),
        (422, "query_too_large"),
        "{}",
        big.text()
    );
    // The server still answers after refusals.
    assert_eq!(client.get("/readyz").await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_readiness_and_body_limits() {
    let mut history = History::new(54).await;
    let config = format!("[serve]\ntoken = \"{TOKEN}\"\nmax_body_kb = 1\n");
    let (server, _stop) = history.serve(Some(&config), None).await;
    let mut anonymous = Client::new(server.addr);
    let mut authorized = Client::new(server.addr).with_token(TOKEN);
    assert_eq!(anonymous.get("/healthz").await.status, 200);
    let not_ready = anonymous.get("/readyz").await;
    assert_eq!((not_ready.status, not_ready.error_code().as_str()), (503, "not_ready"));
    let early = authorized.get("/v1/customers/c1/tags").await;
    assert_eq!((early.status, early.error_code().as_str()), (503, "not_ready"));

    history.publish(0).await;
    wait_for_version(&server, 0).await;
    assert_eq!(anonymous.get("/readyz").await.status, 200);
    let customer = by_customer(&read_tags(&history.fx.warehouse_dir(), None).await)
        .keys()
        .next()
        .cloned()
        .unwrap();
    let path = format!("/v1/customers/{customer}/tags");
    let refused = anonymous.get(&path).await;
    assert_eq!((refused.status, refused.error_code().as_str()), (401, "unauthorized"));
    assert_eq!(refused.headers.get("www-authenticate").unwrap(), "Bearer");
    assert!(!refused.text().contains(TOKEN));
    let mut wrong = Client::new(server.addr).with_token("s3cret-token-for-tesTS");
    assert_eq!(wrong.get(&path).await.status, 401);
    assert_eq!(authorized.get(&path).await.status, 200);
    assert_eq!(anonymous.get("/metrics").await.status, 200, "metrics need no token");

    let ids: Vec<String> = (0..200).map(|i| format!("customer-{i:05}")).collect();
    let large = authorized
        .post("/v1/customers:batchGet", &json!({ "customer_ids": ids }))
        .await;
    assert_eq!(
        (large.status, large.error_code().as_str()),
        (413, "payload_too_large"),
        "{}",
        large.text()
    );
    assert_eq!(
        authorized.get(&path).await.status,
        200,
        "the server answers after a refusal"
    );
}

#[test]
fn serve_cli_starts_reports_its_address_and_stops_on_sigterm() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let history = runtime.block_on(async {
        let mut history = History::new(55).await;
        history.publish(0).await;
        history
    });
    let warehouse = history.fx.warehouse_dir();

    // Bad settings: exit 2 before listening, and the token is never printed.
    for (config, expected) in [
        ("[serve]\nlisten = \"nowhere\"\n", "serve.listen"),
        ("[serve]\ntoken = \"short\"\n", "serve.token"),
        ("[serve]\nreload_interval = \"0s\"\n", "serve.reload_interval"),
        ("[serve]\nmax_batch = 0\n", "serve.max_batch"),
        ("[serve]\npg_listen = \"127.0.0.1:0\"\n", "serve.pg_password"),
        (
            "[serve]\npg_listen = \"127.0.0.1:0\"\npg_password = \"short\"\n",
            "serve.pg_password",
        ),
        ("[serve]\nlisen = \"127.0.0.1:1\"\n", "lisen"),
    ] {
        let path = history.fx.dir.path().join("bad.toml");
        std::fs::write(&path, config).unwrap();
        let out = tagflow()
            .args(["serve", "--warehouse"])
            .arg(&warehouse)
            .arg("--config")
            .arg(&path)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{config}: {stderr}");
        assert!(stderr.contains(expected), "{config}: {stderr}");
        assert!(!stderr.contains("short\""), "{stderr}");
    }

    let mut child = tagflow()
        .args(["serve", "--listen", "127.0.0.1:0", "--warehouse"])
        .arg(&warehouse)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let addr = listening_address(&mut child);
    let ready = runtime.block_on(async {
        let mut client = Client::new(addr);
        for _ in 0..200 {
            if client.get("/readyz").await.status == 200 {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    });
    assert!(ready, "the CLI server became ready");
    let status = stop_with(&mut child, libc::SIGTERM, Duration::from_secs(30));
    assert_eq!(status.code(), Some(0), "graceful shutdown exits 0");
}

/// SIGTERM that arrives before the server listens (held at the `serve` hold point, so no
/// timing decides) is caught, not fatal: the server stops cleanly with exit code 0.
#[test]
fn serve_stops_cleanly_on_sigterm_before_it_listens() {
    let fx = Fixture::new();
    fx.clicks("a.parquet", &[view("k1", "c1", "2026-11-20T10:00:00Z")]);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(fx.run(T));
    let log = fx.dir.path().join("serve.log");
    let hold = Hold::new(fx.dir.path(), "serve");
    let (hold_var, hold_value) = hold.env();
    let mut child = tagflow()
        .args(["serve", "--listen", "127.0.0.1:0", "--warehouse"])
        .arg(fx.warehouse_dir())
        .env("TAGFLOW_LOG", "info")
        .env(hold_var, hold_value)
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    hold.reached(&log);
    send_signal(&child, libc::SIGTERM);
    hold.release();
    let status = wait_within(&mut child, Duration::from_secs(30));
    let log_text = std::fs::read_to_string(&log).unwrap();
    assert_eq!(status.code(), Some(0), "serve exits 0 on SIGTERM: {status}\n{log_text}");
    assert!(log_text.contains("SIGTERM"), "{log_text}");
}

/// Issue 26: `follow`'s micro-batches reach the lookup API before `customer_tags` merges
/// them. With merges a day apart, every batch after the first keeps its changes live (in the
/// feed, on top of version 0); a running server applies each feed version, and every lookup
/// equals what a reader opens from the two versions it names (`customer_tags` at `version`
/// with the feed's live rows at `feed_version`), including customers reached only through a
/// shared device. A run then merges the live changes: `customer_tags` version 1 holds them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lookups_see_live_changes_before_customer_tags_merges_them() {
    let fx = Fixture::new();
    let mut first: Vec<Click> = (0..30)
        .map(|i| view(&format!("k{i}"), &format!("c{i}"), "2026-11-15T10:00:00Z").category("shoes"))
        .collect();
    first.extend((1..=4).map(|i| view(&format!("kd{i}"), &format!("s{i}"), "2026-11-16T10:00:00Z").device("d1")));
    fx.clicks("dt=2026-11-16/a.parquet", &first);
    let config = "[publish]\nmerge_every = \"1d\"\n";
    let settings = fx.settings("2026-01-01T00:00:00Z", Some(config)).expect("settings");
    let mut options = settings.serve.clone();
    options.listen = "127.0.0.1:0".parse().expect("addr");
    options.reload_interval = Duration::from_millis(50);
    let (stop_server, server_stopped) = tokio::sync::oneshot::channel::<()>();
    let server = serve::start(settings.warehouse.clone().expect("warehouse"), options, async move {
        let _ = server_stopped.await;
    })
    .await
    .expect("server starts");

    let landings: Vec<(&str, Vec<Click>)> = vec![
        // c3 views again, a new customer n1 appears.
        (
            "dt=2026-11-20/b.parquet",
            vec![
                view("k-c3", "c3", "2026-11-20T09:00:00Z"),
                view("k-n1", "n1", "2026-11-20T09:10:00Z").category("bags"),
            ],
        ),
        // A fifth customer on d1: s1..s5 now share a device.
        (
            "dt=2026-11-20/c.parquet",
            vec![view("kd5", "s5", "2026-11-20T09:20:00Z").device("d1")],
        ),
    ];
    let times = ["2026-11-20T10:00:00Z", "2026-11-20T10:05:00Z", "2026-11-20T10:10:00Z"];
    let reports = follow_at(&settings, &times, |batch| {
        if let Some((file, clicks)) = landings.get(batch - 1) {
            fx.clicks(file, clicks);
        }
    })
    .await;
    assert_eq!(reports.len(), 3, "three batches published");
    assert!(
        reports[0].published.merged,
        "the first batch evaluates everyone and merges"
    );
    for report in &reports[1..] {
        assert!(!report.published.merged, "a micro-batch keeps its changes live");
        assert_eq!(report.published.version, 0, "customer_tags has no new version");
        assert!(report.published.changes.is_some_and(|c| c.total() > 0));
    }
    let last = &reports[2].published;
    let seen = fx.seen_after(last).await;
    assert_eq!(
        seen.value("s1", "shared_device").as_deref(),
        Some("true"),
        "reached through the device"
    );
    assert!(seen.value("n1", "lifecycle").is_some(), "a new customer entered");
    assert_ne!(
        seen.rows,
        fx.published(Some(0)).await.rows,
        "the live changes are not in version 0"
    );

    // The server catches up with the feed, and each lookup equals the view it names.
    let mut client = Client::new(server.addr);
    let mut caught_up = false;
    for _ in 0..300 {
        let reply = client.get("/v1/customers/n1/tags").await;
        if reply.status == 200 && reply.json()["feed_version"].as_u64() == last.feed_version {
            caught_up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        caught_up,
        "the server applied the feed up to version {:?}",
        last.feed_version
    );
    let expected = by_customer(&seen);
    for (id, rows) in &expected {
        let reply = client.get(&format!("/v1/customers/{id}/tags")).await;
        assert_eq!(reply.status, 200, "{id}: {}", reply.text());
        let body = reply.json();
        assert_eq!(body["version"].as_u64(), Some(0));
        assert_eq!(body["feed_version"].as_u64(), last.feed_version);
        assert_eq!(&api_rows(&body), rows, "{id}");
    }
    let batch = client
        .post("/v1/customers:batchGet", &json!({ "customer_ids": ["s5", "nobody"] }))
        .await
        .json();
    assert_eq!(batch["feed_version"].as_u64(), last.feed_version);
    assert_eq!(api_rows(&batch["customers"][0]), expected["s5"]);
    assert_eq!(batch["not_found"], json!(["nobody"]));

    // `tagflow tags` (customer_rows) reads the same: live by default, a version as it was.
    let warehouse = location(&fx.warehouse_dir());
    let tags_of = |batches: Vec<arrow::record_batch::RecordBatch>| -> Vec<String> {
        batches
            .iter()
            .flat_map(|b| {
                let tags = b
                    .column(1)
                    .as_any()
                    .downcast_ref::<arrow::array::StringArray>()
                    .unwrap()
                    .clone();
                (0..b.num_rows()).map(move |i| tags.value(i).to_string())
            })
            .collect()
    };
    let now = tags_of(
        tagflow::publish::tags::customer_rows(&warehouse, "s1", None)
            .await
            .unwrap(),
    );
    let then = tags_of(
        tagflow::publish::tags::customer_rows(&warehouse, "s1", Some(0))
            .await
            .unwrap(),
    );
    assert!(now.contains(&"shared_device".to_string()), "{now:?}");
    assert!(!then.contains(&"shared_device".to_string()), "{then:?}");

    // A run merges the live changes into customer_tags.
    let report = fx.try_run("2026-11-20T10:10:00Z", Some(config)).await.expect("run");
    assert!(report.published.merged);
    assert_eq!(report.published.version, 1);
    assert_eq!(
        fx.published(Some(1)).await.rows,
        seen.rows,
        "version 1 holds what lookups saw"
    );
    let _ = stop_server.send(());
    server.wait().await.expect("server stops");
}

/// (tag, value) → customers of one published version.
fn members(tags: &Tags) -> BTreeMap<(String, String), BTreeSet<String>> {
    let mut members: BTreeMap<(String, String), BTreeSet<String>> = BTreeMap::new();
    for r in &tags.rows {
        members
            .entry((r.tag.clone(), r.value.clone()))
            .or_default()
            .insert(r.customer_id.clone());
    }
    members
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overviews_for_dashboards_match_the_tables() {
    let mut history = History::new(55).await;
    for i in 0..3 {
        history.publish(i).await;
    }
    let (server, _stop) = history.serve(None, Some(2)).await;
    let mut client = Client::new(server.addr);
    let warehouse = history.fx.warehouse_dir();
    let versions: Vec<_> = [
        read_tags(&warehouse, Some(0)).await,
        read_tags(&warehouse, Some(1)).await,
        read_tags(&warehouse, Some(2)).await,
    ]
    .iter()
    .map(members)
    .collect();

    // Every tag's sizes per value at the served version.
    let overview = client.get("/v1/segments").await.json();
    assert_eq!(overview["version"], 2);
    let mut shown = BTreeMap::new();
    for tag in overview["tags"].as_array().unwrap() {
        let mut sum = 0;
        for v in tag["values"].as_array().unwrap() {
            let n = v["customers"].as_u64().unwrap();
            sum += n;
            shown.insert(
                (
                    tag["tag"].as_str().unwrap().to_string(),
                    v["value"].as_str().unwrap().to_string(),
                ),
                n as usize,
            );
        }
        assert_eq!(tag["customers"].as_u64(), Some(sum));
    }
    let expected: BTreeMap<_, _> = versions[2].iter().map(|(k, ids)| (k.clone(), ids.len())).collect();
    assert_eq!(shown, expected);

    // Per day (each publish is on its own day): the size at the version, and who entered
    // and left the segment since the version before, worked out from the tables.
    let days: Vec<String> = PUBLISHES.iter().map(|(t, _)| t[..10].to_string()).collect();
    let tags: BTreeSet<String> = versions.iter().flat_map(|v| v.keys().map(|(t, _)| t.clone())).collect();
    let empty = BTreeSet::new();
    for tag in &tags {
        let body = client.get(&format!("/v1/segments/{tag}/daily")).await.json();
        let got: BTreeSet<(String, String, u64, u64, u64)> = body["days"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| {
                (
                    d["day"].as_str().unwrap().to_string(),
                    d["value"].as_str().unwrap().to_string(),
                    d["size"].as_u64().unwrap(),
                    d["inflow"].as_u64().unwrap(),
                    d["outflow"].as_u64().unwrap(),
                )
            })
            .collect();
        let mut want = BTreeSet::new();
        for (i, now) in versions.iter().enumerate() {
            let values: BTreeSet<&String> = now
                .keys()
                .chain(if i > 0 { versions[i - 1].keys() } else { now.keys() })
                .filter(|(t, _)| t == tag)
                .map(|(_, v)| v)
                .collect();
            for value in values {
                let key = (tag.clone(), value.clone());
                let at = now.get(&key).unwrap_or(&empty);
                let before = if i > 0 {
                    versions[i - 1].get(&key).unwrap_or(&empty)
                } else {
                    &empty
                };
                let (inflow, outflow) = (at.difference(before).count(), before.difference(at).count());
                if at.is_empty() && outflow == 0 {
                    continue;
                }
                want.insert((
                    days[i].clone(),
                    value.clone(),
                    at.len() as u64,
                    inflow as u64,
                    outflow as u64,
                ));
            }
        }
        assert_eq!(got, want, "{tag}");
        let last = client.get(&format!("/v1/segments/{tag}/daily?days=1")).await.json();
        assert!(
            last["days"]
                .as_array()
                .unwrap()
                .iter()
                .all(|d| d["day"] == days[2].as_str()),
            "{tag}: {last}"
        );
    }
    let unknown = client.get("/v1/segments/no_such_tag/daily").await;
    assert_eq!((unknown.status, unknown.error_code().as_str()), (404, "not_found"));

    // The runs, newest first, and the quarantine area.
    let runs = client.get("/v1/runs?limit=10").await.json();
    let runs = runs["runs"].as_array().unwrap();
    assert_eq!(
        runs.iter()
            .map(|r| (r["status"].as_str(), r["published_version"].as_u64()))
            .collect::<Vec<_>>(),
        [
            (Some("succeeded"), Some(2)),
            (Some("succeeded"), Some(1)),
            (Some("succeeded"), Some(0))
        ]
    );
    assert!(runs.iter().all(|r| r["jobs"].is_array()), "jobs as JSON");
    assert!(
        runs.iter()
            .all(|r| r["freshness_p95_ms"].is_u64() && r["freshness_max_ms"].is_u64()),
        "each run read files, so it has a freshness: {runs:?}"
    );
    let quarantine = client.get("/v1/quarantine").await.json();
    let entries = tagflow::sources::quarantine::Quarantine::new(&location(&warehouse))
        .list()
        .await
        .unwrap();
    assert_eq!(quarantine.as_array().unwrap().len(), entries.len());

    // The console's assets: no token needed, a policy that allows only this server.
    let page = client.get("/ui/").await;
    assert_eq!(page.status, 200);
    assert!(page.headers["content-type"].to_str().unwrap().starts_with("text/html"));
    assert!(page.headers["content-security-policy"]
        .to_str()
        .unwrap()
        .contains("script-src 'self'"));
    assert!(page.text().contains("app.js"));
    let script = client.get("/ui/app.js").await;
    assert!(script.headers["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/javascript"));
    assert_eq!(client.get("/ui/vendor/uPlot.LICENSE").await.status, 200);
    assert_eq!(client.get("/ui/../Cargo.toml").await.status, 404);
    assert_eq!(client.get("/ui/nothing.js").await.status, 404);
}
