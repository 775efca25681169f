//! `task_results` (shared/spec/tags.md, "Task results"), on hand-made touches and orders with
//! the expected rows worked out from the spec; then the same rows through `tagflow tasks` and
//! the lookup API's `/v1/tasks`.

use std::path::Path;

use arrow::array::RecordBatch;
use tagflow::publish::tasks::{task_report, TaskFigures, TaskResult};
use tagflow::sources::schema::Schemas;

use crate::http::Client;
use crate::serve::serve_fixture;
use crate::support::*;
use crate::tag_cases::{events_batch, parse_table};

const AS_OF: &str = "2026-11-20T12:00:00Z";

/// Events of `stream` written as a case-file table (docs/adding-a-tag.md), typed by its schema.
fn stream_batch(stream: &str, rows: &str) -> RecordBatch {
    let schemas = Schemas::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas")).expect("schemas");
    let table = parse_table(rows.trim_start_matches('\n'), 1).expect("a table");
    events_batch(&schemas.streams[stream], &table).expect("a batch")
}

/// The landing zone of the worked example (see each line's comment).
fn land(fx: &Fixture) {
    let batch = stream_batch(
        "touches",
        "
event_id | customer_id | event_time                  | task_id | task_type  | action
# t1's earliest sends tie at 10:00: t-01 (the smaller event id) gives the task type
t-02     | c1          | 2026-11-01T10:00:00Z        | t1      | repurchase | sent
t-01     | c4          | 2026-11-01T10:00:00Z        | t1      | precision  | sent
# c1's reply came before their send: not a reply to it
t-03     | c1          | 2026-11-01T09:00:00Z        | t1      | repurchase | replied
# c2 is sent to twice (s = the first) and replies between the sends
t-04     | c2          | 2026-11-02T10:00:00Z        | t1      | repurchase | sent
t-05     | c2          | 2026-11-03T10:00:00Z        | t1      | repurchase | sent
t-06     | c2          | 2026-11-02T11:00:00Z        | t1      | repurchase | replied
t-07     | c3          | 2026-11-05T08:00:00Z        | t1      | repurchase | sent
# c5 only replied: not sent to
t-08     | c5          | 2026-11-05T08:00:00Z        | t1      | repurchase | replied
# t2 has replies only, t3 a send after T: neither has a row
t-09     | c1          | 2026-11-05T08:00:00Z        | t2      | repurchase | replied
t-10     | c1          | 2026-11-20T12:00:00.000001Z | t3      | repurchase | sent
# t4 (no type) sends to c1 a day before their order A: A counts for t1 and for t4
t-11     | c1          | 2026-11-07T10:00:00Z        | t4      |            | sent
",
    );
    write_parquet(&fx.landing_dir().join("touches/dt=2026-11-20/a.parquet"), &batch);
    // a re-sent file: its events count once
    write_parquet(&fx.landing_dir().join("touches/dt=2026-11-20/a-again.parquet"), &batch);
    fx.orders(
        "dt=2026-11-20/a.parquet",
        &[
            // A: placed exactly 7 days after c1's send (attributed), paid for 48 of 50
            order("o-01", "c1", "2026-11-08T10:00:00Z", "A", "placed", 50.0),
            paid("o-02", "c1", "2026-11-09T10:00:00Z", "A", 48.0),
            // B: 7 days and 1 µs after c2's first send: not attributed (though within 7 days
            // of the second send, s is the first)
            order("o-03", "c2", "2026-11-09T10:00:00.000001Z", "B", "placed", 70.0),
            // C: at c2's send, not after it: not attributed
            order("o-04", "c2", "2026-11-02T10:00:00Z", "C", "placed", 20.0),
            // D: c3, placed and never paid
            order("o-05", "c3", "2026-11-06T10:00:00Z", "D", "placed", 30.0),
        ],
    );
}

fn figures(counts: [i64; 5], order_amount: f64, paid_amount: f64) -> TaskFigures {
    let [sent, replied, ordered, orders, paid_orders] = counts;
    TaskFigures {
        sent,
        replied,
        ordered,
        orders,
        order_amount,
        paid_orders,
        paid_amount,
        reply_rate: replied as f64 / sent as f64,
        order_rate: ordered as f64 / sent as f64,
    }
}

fn expected() -> Vec<TaskResult> {
    vec![
        TaskResult {
            task_id: "t4".into(),
            task_type: None,
            first_sent_at: "2026-11-07T10:00:00Z".into(),
            figures: figures([1, 0, 1, 1, 1], 50.0, 48.0),
        },
        TaskResult {
            task_id: "t1".into(),
            task_type: Some("precision".into()),
            first_sent_at: "2026-11-01T10:00:00Z".into(),
            // sent c1 c2 c3 c4; replied c2; ordered c1 (A) and c3 (D)
            figures: figures([4, 1, 2, 2, 1], 80.0, 48.0),
        },
    ]
}

#[tokio::test]
async fn task_results_follow_the_spec_and_reach_the_cli_and_the_api() {
    let fx = Fixture::new();
    land(&fx);
    fx.run(AS_OF).await;
    let warehouse = location(&fx.warehouse_dir());
    let report = task_report(&warehouse, None, None).await.expect("task_results");
    assert_eq!(report.tasks, expected());
    assert_eq!(report.as_of.as_deref(), Some(AS_OF));
    // per day and per ISO week (2026-11-01 is a Sunday: its week starts on 2026-10-26)
    let days: Vec<(&str, i64, i64)> = report
        .days
        .iter()
        .map(|d| (d.period.as_str(), d.tasks, d.figures.sent))
        .collect();
    assert_eq!(days, [("2026-11-07", 1, 1), ("2026-11-01", 1, 4)]);
    let weeks: Vec<(&str, i64, i64, i64)> = report
        .weeks
        .iter()
        .map(|w| (w.period.as_str(), w.tasks, w.figures.ordered, w.figures.sent))
        .collect();
    assert_eq!(weeks, [("2026-11-02", 1, 1, 1), ("2026-10-26", 1, 2, 4)]);
    let since = task_report(
        &warehouse,
        Some(
            chrono::DateTime::parse_from_rfc3339("2026-11-02T00:00:00Z")
                .unwrap()
                .to_utc(),
        ),
        None,
    )
    .await
    .expect("since");
    assert_eq!(
        since.tasks.iter().map(|t| t.task_id.as_str()).collect::<Vec<_>>(),
        ["t4"]
    );

    // the CLI prints the same rows
    let out = fx
        .command(&["tasks", "--json", "--since", "2026-11-01"])
        .output()
        .expect("tagflow tasks");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(json["tasks"][1]["task_id"], "t1");
    assert_eq!(json["tasks"][1]["ordered"], 2);
    assert_eq!(json["tasks"][1]["order_rate"], 0.5);
    let text = fx.command(&["tasks"]).output().expect("tagflow tasks");
    assert!(String::from_utf8_lossy(&text.stdout).contains("precision"));

    // and the API
    let (server, stop) = serve_fixture(&fx, AS_OF, None).await;
    let mut client = Client::new(server.addr);
    let one = client.get("/v1/tasks/t1").await;
    assert_eq!(one.status, 200, "{}", one.text());
    assert_eq!(one.json()["paid_amount"], 48.0);
    assert_eq!(one.json()["task_type"], "precision");
    let missing = client.get("/v1/tasks/t2").await;
    assert_eq!((missing.status, missing.error_code()), (404, "not_found".to_string()));
    let all = client.get("/v1/tasks?since=2026-11-05T00:00:00Z").await;
    assert_eq!(all.status, 200, "{}", all.text());
    assert_eq!(all.json()["tasks"].as_array().map(Vec::len), Some(1));
    let _ = stop.send(());
}

/// A landing zone without the v2 streams still runs; the task table is empty.
#[tokio::test]
async fn without_touches_there_are_no_tasks() {
    let fx = Fixture::new();
    fx.orders("a.parquet", &[paid("o-1", "c1", "2026-11-01T10:00:00Z", "A", 10.0)]);
    fx.run(AS_OF).await;
    let report = task_report(&location(&fx.warehouse_dir()), None, None)
        .await
        .expect("task_results");
    assert!(report.tasks.is_empty() && report.days.is_empty());
}
