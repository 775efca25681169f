//! The change feed for services: `GET /v1/changes` pages and the `/v1/changes/stream`
//! Server-Sent Events deliver every row of `tag_changes` exactly once, in publish order,
//! while publishes land: merged versions and live (unmerged) follow batches, across pages
//! and across a reconnect.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use serde_json::Value;
use tagflow::publish::query_published;
use tokio::sync::watch;

use crate::http::{Client, Events};
use crate::incremental::follow_at;
use crate::serve::{encode, serve_fixture, wait_for_version};
use crate::support::*;

/// A change as text, and its publish (`to_version`, `as_of`) for the order check.
fn key(row: &Value) -> (String, (i64, String)) {
    let text = |name: &str| row.get(name).map(|v| v.to_string()).unwrap_or_else(|| "null".into());
    let publish = (
        row["to_version"].as_i64().expect("to_version"),
        row["as_of"].as_str().expect("as_of").to_string(),
    );
    let names = [
        "customer_id",
        "family",
        "tag",
        "change",
        "old_value",
        "new_value",
        "from_version",
        "to_version",
        "as_of",
    ];
    (names.iter().map(|n| text(n)).collect::<Vec<_>>().join("|"), publish)
}

/// Read the stream until `target` rows arrived; the reader that `reconnects` drops its
/// connection after its second event and resumes from the last event id.
async fn read_stream(addr: SocketAddr, reconnects: bool, mut target: watch::Receiver<Option<usize>>) -> Vec<Value> {
    let path = "/v1/changes/stream?limit=4";
    let mut events = Events::open(addr, path, None).await;
    assert_eq!(events.status, 200);
    let (mut rows, mut seen_events) = (Vec::new(), 0);
    loop {
        if target.borrow().is_some_and(|n| rows.len() >= n) {
            return rows;
        }
        let event = tokio::select! {
            event = events.next() => event.expect("the stream stays open"),
            _ = target.changed() => continue,
            _ = tokio::time::sleep(Duration::from_secs(60)) => panic!("no event within 60 s after {} rows", rows.len()),
        };
        assert_eq!(event.event.as_deref(), Some("changes"));
        let batch: Vec<Value> = serde_json::from_str(&event.data).expect("a JSON array");
        assert!(
            !batch.is_empty() && batch.len() <= 4,
            "events hold 1 to `limit` changes"
        );
        rows.extend(batch);
        seen_events += 1;
        if reconnects && seen_events == 2 {
            drop(events);
            events = Events::open(addr, path, event.id.as_deref()).await;
            assert_eq!(events.status, 200);
        }
    }
}

/// Page through `/v1/changes` until `target` rows arrived, polling when caught up.
async fn poll(addr: SocketAddr, target: watch::Receiver<Option<usize>>) -> Vec<Value> {
    let mut client = Client::new(addr);
    let (mut rows, mut cursor) = (Vec::new(), None::<String>);
    let started = std::time::Instant::now();
    while !target.borrow().is_some_and(|n| rows.len() >= n) {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "the poller stalled at {} rows",
            rows.len()
        );
        let path = match &cursor {
            Some(c) => format!("/v1/changes?limit=3&cursor={}", encode(c)),
            None => "/v1/changes?limit=3".to_string(),
        };
        let reply = client.get(&path).await;
        assert_eq!(reply.status, 200, "{path}: {}", reply.text());
        let page = reply.json();
        rows.extend(page["changes"].as_array().expect("changes").iter().cloned());
        cursor = Some(page["next_cursor"].as_str().expect("next_cursor").to_string());
        if page["caught_up"].as_bool() == Some(true) {
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
    }
    rows
}

/// Change-stream pages sent so far, (read from the table, shared), from `/metrics`.
async fn stream_pages(client: &mut Client) -> (u64, u64) {
    let text = client.get("/metrics").await.text();
    let count = |source: &str| -> u64 {
        let prefix = format!("tagflow_change_stream_pages_total{{source=\"{source}\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(prefix.as_str()))
            .map_or(0, |n| n.trim().parse().expect("a count"))
    };
    (count("read"), count("shared"))
}

/// Every change exactly once (as a multiset equal to the table's rows), in publish order.
fn assert_exactly_once_in_order(who: &str, got: &[Value], expected: &BTreeMap<String, usize>) {
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for row in got {
        *counts.entry(key(row).0).or_default() += 1;
    }
    assert_eq!(&counts, expected, "{who}: every change once");
    let publishes: Vec<(i64, String)> = got.iter().map(|r| key(r).1).collect();
    assert!(
        publishes.windows(2).all(|w| w[0] <= w[1]),
        "{who}: changes come in publish order: {publishes:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_reader_gets_every_change_once_in_order_while_publishes_land() {
    let fx = Fixture::new();
    let first: Vec<Click> = (0..20)
        .map(|i| view(&format!("k{i}"), &format!("c{i}"), "2026-11-16T10:00:00Z").category("shoes"))
        .collect();
    fx.clicks("dt=2026-11-16/a.parquet", &first);
    let config = "[publish]\nmerge_every = \"1d\"\n";
    fx.try_run("2026-11-16T12:00:00Z", Some(config))
        .await
        .expect("version 0");
    let (server, stop) = serve_fixture(&fx, "2026-11-16T12:00:00Z", Some(config)).await;
    wait_for_version(&server, 0).await;

    let (target_tx, target) = watch::channel(None::<usize>);
    let readers: Vec<_> = (0..3)
        .map(|k| tokio::spawn(read_stream(server.addr, k == 0, target.clone())))
        .collect();
    let poller = tokio::spawn(poll(server.addr, target.clone()));

    // A new day (everyone evaluated, merged: version 1), two live batches on top of it,
    // then a run that merges them (version 2).
    let landings: Vec<(&str, Vec<Click>)> = vec![
        (
            "dt=2026-11-20/b.parquet",
            vec![
                view("k-c3", "c3", "2026-11-20T09:00:00Z").category("bags"),
                view("k-n1", "n1", "2026-11-20T09:10:00Z").category("bags"),
            ],
        ),
        (
            "dt=2026-11-20/c.parquet",
            (1..=5)
                .map(|i| view(&format!("kd{i}"), &format!("c{i}"), "2026-11-20T09:20:00Z").device("d1"))
                .collect(),
        ),
    ];
    let settings = fx.settings("2026-11-20T10:00:00Z", Some(config)).expect("settings");
    let times = ["2026-11-20T10:00:00Z", "2026-11-20T10:05:00Z", "2026-11-20T10:10:00Z"];
    let reports = follow_at(&settings, &times, |batch| {
        if let Some((file, clicks)) = landings.get(batch - 1) {
            fx.clicks(file, clicks);
        }
    })
    .await;
    assert!(reports[2].published.changes.is_some_and(|c| c.total() > 0));
    assert!(!reports[2].published.merged, "the last follow batch stays live");
    let merged = fx.try_run("2026-11-20T10:15:00Z", Some(config)).await.expect("merge");
    assert!(merged.published.merged);

    let sql = "SELECT * FROM tag_changes";
    let batches = query_published(&location(&fx.warehouse_dir()), "tag_changes", None, sql)
        .await
        .expect("the feed");
    let table = tagflow::serve::query::rows_json(&batches).expect("rows");
    let lives = table.iter().filter(|r| r["from_version"] == r["to_version"]).count();
    assert!(lives > 0, "the feed holds live changes");
    let mut expected: BTreeMap<String, usize> = BTreeMap::new();
    for row in &table {
        *expected.entry(key(row).0).or_default() += 1;
    }
    target_tx.send(Some(table.len())).expect("readers wait");
    for (k, reader) in readers.into_iter().enumerate() {
        let got = reader.await.expect("reader");
        assert_exactly_once_in_order(&format!("stream reader {k}"), &got, &expected);
    }
    assert_exactly_once_in_order("poller", &poller.await.expect("poller"), &expected);

    // Filters: after a version; one segment's inflow and outflow.
    let mut client = Client::new(server.addr);
    let page = client.get("/v1/changes?since_version=1&limit=1000").await.json();
    let after: Vec<&Value> = page["changes"].as_array().unwrap().iter().collect();
    assert_eq!(
        after.len(),
        table.iter().filter(|r| r["from_version"].as_i64() >= Some(1)).count()
    );
    assert!(after.iter().all(|r| r["from_version"].as_i64() >= Some(1)));
    let (tag, value) = ("shared_device", "true");
    let page = client
        .get(&format!("/v1/changes?tag={tag}&value={value}&limit=1000"))
        .await
        .json();
    let segment = page["changes"].as_array().unwrap();
    let in_table = table
        .iter()
        .filter(|r| r["tag"] == tag && (r["new_value"] == value || r["old_value"] == value))
        .count();
    assert!(in_table > 0, "the device batch moved customers into {tag}={value}");
    assert_eq!(segment.len(), in_table);

    // A cursor read under one filter is refused under another, and garbage is a 400.
    let cursor = page["next_cursor"].as_str().unwrap();
    let reply = client
        .get(&format!("/v1/changes?tag=risk&cursor={}", encode(cursor)))
        .await;
    assert_eq!(reply.status, 400, "{}", reply.text());
    assert_eq!(client.get("/v1/changes?cursor=nonsense").await.status, 400);
    assert_eq!(client.get("/v1/changes?limit=0").await.status, 400);
    let stream = Events::open(server.addr, "/v1/changes/stream", Some("1.2.3")).await;
    assert_eq!(stream.status, 400);

    // Streams at the same position share one read of the page (no publish lands now).
    let before = stream_pages(&mut client).await;
    let mut streams = Vec::new();
    for _ in 0..5 {
        streams.push(Events::open(server.addr, "/v1/changes/stream?limit=1000", None).await);
    }
    for stream in &mut streams {
        let event = stream.next().await.expect("the first page");
        let rows: Vec<Value> = serde_json::from_str(&event.data).expect("JSON");
        assert_eq!(rows.len(), table.len());
    }
    let after = stream_pages(&mut client).await;
    assert_eq!(
        (after.0 - before.0, after.1 - before.1),
        (1, 4),
        "read once, shared four times"
    );

    let _open = Events::open(server.addr, "/v1/changes/stream", None).await;
    let _ = stop.send(());
    server.wait().await.expect("the server stops with a stream open");
}
