//! `tagflow forget`: a customer forgotten from a warehouse that has run, followed, compacted
//! and backfilled leaves no trace in any file under it (each read with the reader of its
//! format), does not come back with new events or a `--full` rebuild, and every other
//! customer's tags equal a full run over the landing zone without the forgotten events.
//! Bad input changes nothing; a killed erasure is completed by the next `forget`.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use arrow::array::{Array, AsArray};
use arrow::datatypes::DataType;
use arrow::record_batch::RecordBatch;
use bytes::Bytes;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use rand::{Rng, SeedableRng};
use tagflow::app::error::exit;

use crate::support::*;

const AS_OF: &str = "2026-11-20T12:00:00Z";

/// Generated history with bad input, run, backfilled, compacted, followed (a new file) and
/// merged by a run: every table and area tagflow keeps has been written.
async fn lived_in_warehouse(fx: &Fixture) {
    let options = tagflow::generate::GenerateOptions {
        customers: 150,
        days: 30,
        seed: 11,
        end: end_day(),
        bad_input: true,
    };
    tagflow::generate::generate(&location(&fx.landing_dir()), &options)
        .await
        .expect("generate");
    fx.try_run("2026-11-18T12:00:00Z", None).await.expect("first run");
    cli_ok(fx, &["backfill", "--from", "2026-11-15", "--to", "2026-11-17"]);
    cli_ok(fx, &["compact"]);
    follow_one_batch(fx, "2026-11-19T08:00:00Z");
    fx.try_run(AS_OF, None).await.expect("run that merges");
}

/// `tagflow <args>` on the fixture; it must succeed. Returns stdout.
fn cli_ok(fx: &Fixture, args: &[&str]) -> String {
    let out = fx.command(args).output().unwrap();
    assert!(
        out.status.success(),
        "tagflow {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Land a file of new clicks, let a `follow` session publish one batch, stop it (SIGTERM).
fn follow_one_batch(fx: &Fixture, time: &str) {
    fx.clicks(
        "followed.parquet",
        &[view("f1", "cust-000003", time), view("f2", "cust-000004", time)],
    );
    let mut child = fx
        .command(&["follow", "--interval", "200ms", "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = lines.next().expect("a batch report").unwrap();
    assert!(first.contains("\"published\""), "{first}");
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert!(child.wait().unwrap().success());
}

/// Every string value of an array, nested ones (structs, lists, maps) included.
fn strings_in(array: &dyn Array, out: &mut Vec<String>) {
    match array.data_type() {
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View | DataType::Dictionary(..) => {
            if let Ok(cast) = arrow::compute::cast(&arrow::array::make_array(array.to_data()), &DataType::Utf8) {
                out.extend(cast.as_string::<i32>().iter().flatten().map(str::to_string));
            }
        }
        DataType::Struct(_) => {
            for column in array.as_struct().columns() {
                strings_in(column.as_ref(), out);
            }
        }
        DataType::List(_) => strings_in(array.as_list::<i32>().values().as_ref(), out),
        DataType::Map(..) => {
            let map = array.as_map();
            strings_in(map.keys().as_ref(), out);
            strings_in(map.values().as_ref(), out);
        }
        _ => {}
    }
}

/// The files under `dir` (relative paths) in which one of `ids` appears ([`traces_in`]).
fn traces(dir: &Path, ids: &[String]) -> Vec<String> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(path) = stack.pop() {
        if path.is_dir() {
            stack.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
            continue;
        }
        let name = path.strip_prefix(dir).unwrap().to_string_lossy().into_owned();
        found.extend(traces_in(&name, Bytes::from(std::fs::read(&path).unwrap()), ids));
    }
    found.sort();
    found
}

/// "`name` holds `id`" for each of `ids` a file's bytes hold: raw bytes for every file (JSON
/// logs, manifests, text), and the decoded strings of a Parquet or Arrow IPC file
/// (compression would hide them from a byte search).
pub(crate) fn traces_in(name: &str, bytes: Bytes, ids: &[String]) -> Vec<String> {
    let batches: Vec<RecordBatch> = if name.ends_with(".parquet") {
        ParquetRecordBatchReaderBuilder::try_new(bytes.clone())
            .map(|b| b.build().unwrap().map(Result::unwrap).collect())
            .unwrap_or_default()
    } else if name.ends_with(".arrow") {
        tagflow::storage::arrow_file_batches(bytes.clone()).unwrap().1
    } else {
        Vec::new()
    };
    let mut strings = Vec::new();
    for batch in &batches {
        for column in batch.columns() {
            strings_in(column.as_ref(), &mut strings);
        }
    }
    ids.iter()
        .filter(|id| {
            bytes.windows(id.len()).any(|w| w == id.as_bytes()) || strings.iter().any(|s| s.contains(id.as_str()))
        })
        .map(|id| format!("{name} holds {id}"))
        .collect()
}

/// A copy of the landing zone without the rows of `ids` (files that are not Parquet are
/// copied as they are).
fn landing_without(from: &Path, to: &Path, ids: &[String]) {
    copy_dir(from, to);
    let mut stack = vec![to.to_path_buf()];
    while let Some(path) = stack.pop() {
        if path.is_dir() {
            stack.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
            continue;
        }
        let bytes = Bytes::from(std::fs::read(&path).unwrap());
        let Ok(builder) = ParquetRecordBatchReaderBuilder::try_new(bytes) else {
            continue;
        };
        let schema = builder.schema().clone();
        let kept: Vec<RecordBatch> = builder
            .build()
            .unwrap()
            .map(|batch| {
                let batch = batch.unwrap();
                let Some(column) = batch.column_by_name("customer_id") else {
                    return batch;
                };
                let cast = arrow::compute::cast(column, &DataType::Utf8).unwrap();
                let keep: arrow::array::BooleanArray = cast
                    .as_string::<i32>()
                    .iter()
                    .map(|id| Some(!id.is_some_and(|id| ids.iter().any(|f| f == id))))
                    .collect();
                arrow::compute::filter_record_batch(&batch, &keep).unwrap()
            })
            .collect();
        let mut out = Vec::new();
        let mut writer = parquet::arrow::ArrowWriter::try_new(&mut out, schema, None).unwrap();
        for batch in &kept {
            writer.write(batch).unwrap();
        }
        writer.close().unwrap();
        std::fs::write(&path, out).unwrap();
    }
}

fn forget_json(fx: &Fixture, args: &[&str]) -> serde_json::Value {
    let mut all = vec!["forget", "--json"];
    all.extend_from_slice(args);
    serde_json::from_str(&cli_ok(fx, &all)).unwrap()
}

/// Customers to forget: two with tags, one of whom also has quarantined rows and appears in
/// a corrupt landing file.
fn chosen(tags: &Tags) -> Vec<String> {
    let buyer = tags.customers("rfm_tier")[0].clone();
    let other = tags
        .customers("lifecycle")
        .into_iter()
        .find(|c| *c != buyer)
        .expect("a second customer");
    vec![buyer, other]
}

/// Rows of both that go to quarantine (unknown cart action), and a corrupt file naming one.
fn bad_input_of(fx: &Fixture, ids: &[String]) {
    let carts: Vec<Cart> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| cart_add(&format!("bad-{i}"), id, "2026-11-19T09:00:00Z", 1, Some(5.0)).action("teleport"))
        .collect();
    fx.carts("bad-rows.parquet", &carts);
    fx.raw(
        "clicks/corrupt.parquet",
        format!("not parquet; {} was here", ids[0]).as_bytes(),
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn forgotten_customers_leave_no_trace_and_do_not_come_back() {
    let fx = Fixture::new();
    let probe = Fixture::new();
    generate_into(&probe.landing_dir(), 150, 30, 11).await;
    let ids = chosen(&probe.run(AS_OF).await);
    bad_input_of(&fx, &ids);
    lived_in_warehouse(&fx).await;
    let warehouse = fx.warehouse_dir();
    let before = fx.published(None).await;
    assert!(before.rows.iter().any(|r| r.customer_id == ids[0]));
    assert!(
        !traces(&warehouse, &ids).is_empty(),
        "the customers are in the warehouse before"
    );

    let list = fx.dir.path().join("ids.txt");
    std::fs::write(&list, format!("# erasure ticket 42\n{}\n\n", ids[1])).unwrap();
    let report = forget_json(
        &fx,
        &[
            "--customer",
            &ids[0],
            "--from-file",
            list.to_str().unwrap(),
            "--purge-history",
        ],
    );
    assert_eq!(report["customers"], 2, "{report:#}");
    for area in [
        "state",
        "customer_tags",
        "tag_changes",
        "customer_tags_history",
        "quarantine rows",
    ] {
        assert!(report["removed"][area].as_u64().unwrap() > 0, "{area}: {report:#}");
    }
    assert_eq!(report["removed"]["quarantine files"], 1, "{report:#}");
    assert!(
        report["landing_files"].as_array().unwrap().len() >= 2,
        "the landing zone still holds them: {report:#}"
    );
    assert_eq!(traces(&warehouse, &ids), Vec::<String>::new());

    // Everyone else keeps their tags; the exits are in the feed without the ids.
    let after = fx.published(None).await;
    let others: Vec<&TagRow> = before.rows.iter().filter(|r| !ids.contains(&r.customer_id)).collect();
    assert_eq!(after.rows.iter().collect::<Vec<_>>(), others);
    let exits = tagflow::publish::query_published(
        &location(&warehouse),
        "tag_changes",
        None,
        "SELECT count(*) AS n FROM tag_changes WHERE customer_id LIKE 'erased:%' AND change = 'exited' AND old_score IS NULL",
    )
    .await
    .unwrap();
    let exited = exits[0]
        .column(0)
        .as_primitive::<arrow::datatypes::Int64Type>()
        .value(0);
    assert_eq!(exited as usize, before.rows.len() - others.len());

    // The purged tables still publish, compact and list their snapshots.
    cli_ok(&fx, &["compact"]);
    let snapshots: serde_json::Value = serde_json::from_str(&cli_ok(&fx, &["snapshots", "--json"])).unwrap();
    assert!(
        snapshots.as_array().unwrap().iter().any(|s| s["as_of"].is_string()),
        "{snapshots:#}"
    );

    // The status says it is complete and purged.
    let status = forget_json(&fx, &["--status"]);
    assert_eq!(status[0]["status"], "completed", "{status:#}");
    assert!(status[0]["versions_gone"]["customer_tags"].is_string(), "{status:#}");

    // New events of theirs are dropped at the door; a --full rebuild does not bring them back.
    fx.clicks(
        "after.parquet",
        &[
            view("n1", &ids[0], "2026-11-20T10:00:00Z"),
            view("n2", "cust-000005", "2026-11-20T10:00:00Z"),
        ],
    );
    let run = fx.try_run("2026-11-20T13:00:00Z", None).await.expect("run after");
    assert_eq!(run.streams["clicks"].rows_forgotten, 1);
    let rebuilt = fx
        .command(&["run", "--full", "--as-of", "2026-11-20T13:00:00Z"])
        .output()
        .unwrap();
    assert!(rebuilt.status.success(), "{}", String::from_utf8_lossy(&rebuilt.stderr));
    assert_eq!(traces(&warehouse, &ids), Vec::<String>::new());

    // ... and equals a full run over the landing zone without their events.
    let clean = Fixture::new();
    landing_without(&fx.landing_dir(), &clean.landing_dir(), &ids);
    clean.try_run("2026-11-20T13:00:00Z", None).await.expect("clean run");
    assert_eq!(fx.published(None).await.rows, clean.published(None).await.rows);
}

/// Bad input gets a clear message, the documented exit code, and changes no file.
#[tokio::test(flavor = "multi_thread")]
async fn bad_input_changes_nothing() {
    let fx = Fixture::new();
    generate_into(&fx.landing_dir(), 60, 10, 3).await;
    fx.try_run(AS_OF, None).await.expect("run");
    let snapshot = || -> BTreeMap<PathBuf, Vec<u8>> {
        let mut files = BTreeMap::new();
        let mut stack = vec![fx.warehouse_dir()];
        while let Some(path) = stack.pop() {
            if path.is_dir() {
                stack.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
            } else {
                files.insert(path.clone(), std::fs::read(&path).unwrap());
            }
        }
        files
    };
    let before = snapshot();
    let empty = fx.dir.path().join("empty.txt");
    std::fs::write(&empty, "# nobody\n\n").unwrap();
    let malformed = fx.dir.path().join("malformed.txt");
    std::fs::write(&malformed, "cust-000001\ncust-000002 cust-000003\n").unwrap();
    let cases: [(Vec<&str>, i32, &str); 4] = [
        (
            vec!["--customer", "nobody-here"],
            exit::INPUT,
            "1 of the 1 customers given are unknown",
        ),
        (
            vec!["--customer", "cust-000001", "--customer", "nobody-here"],
            exit::INPUT,
            "positions 2 of the list",
        ),
        (
            vec!["--from-file", empty.to_str().unwrap()],
            exit::CONFIG,
            "no customer to forget",
        ),
        (
            vec!["--from-file", malformed.to_str().unwrap()],
            exit::CONFIG,
            "malformed.txt:2: a customer id holds ' '",
        ),
    ];
    for (args, code, message) in cases {
        let mut all = vec!["forget"];
        all.extend(args.iter().copied());
        let out = fx.command(&all).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "{args:?}: {stderr}");
        assert!(stderr.contains(message), "{args:?}: {stderr}");
        assert!(!stderr.contains("nobody-here"), "ids are not echoed: {stderr}");
    }
    assert!(before == snapshot(), "a refused erasure changed the warehouse");
}

/// `forget` killed at random moments: the next `forget --resume` completes it, and the
/// result is the uninterrupted one.
#[tokio::test(flavor = "multi_thread")]
async fn a_killed_erasure_is_completed_by_the_next_forget() {
    let base = Fixture::new();
    generate_into(&base.landing_dir(), 120, 20, 5).await;
    let tags = base.run(AS_OF).await;
    let ids = chosen(&tags);
    let reference = Fixture::new();
    copy_dir(&base.dir.path().join("landing"), &reference.landing_dir());
    copy_dir(&base.warehouse_dir(), &reference.warehouse_dir());
    let started = Instant::now();
    forget_json(
        &reference,
        &["--customer", &ids[0], "--customer", &ids[1], "--purge-history"],
    );
    let full_time = started.elapsed();
    let expected = reference.published(None).await.rows;

    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(26);
    for trial in 0..4 {
        let fx = Fixture::new();
        copy_dir(&base.landing_dir(), &fx.landing_dir());
        copy_dir(&base.warehouse_dir(), &fx.warehouse_dir());
        let mut child = fx
            .command(&[
                "forget",
                "--customer",
                &ids[0],
                "--customer",
                &ids[1],
                "--purge-history",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let wait = Duration::from_millis(rng.random_range(50..full_time.as_millis().max(100) as u64));
        std::thread::sleep(wait);
        let _ = child.kill();
        let _ = child.wait();
        // The lock of the killed process expires, or is taken over (its pid is gone).
        let out = fx
            .command(&["forget", "--resume", "--json", "--purge-history"])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        let status = forget_json(&fx, &["--status"]);
        match status.as_array().map(Vec::len) {
            // Killed before the request was recorded: nothing to resume, nothing erased yet.
            Some(0) | None => {
                assert_eq!(out.status.code(), Some(exit::CONFIG), "trial {trial}: {stderr}");
                forget_json(&fx, &["--customer", &ids[0], "--customer", &ids[1], "--purge-history"]);
            }
            _ => assert!(
                out.status.success() || status[0]["status"] == "completed",
                "trial {trial}: {stderr}"
            ),
        }
        let status = forget_json(&fx, &["--status"]);
        assert_eq!(status[0]["status"], "completed", "trial {trial}: {status:#}");
        assert_eq!(fx.published(None).await.rows, expected, "trial {trial}");
        assert_eq!(traces(&fx.warehouse_dir(), &ids), Vec::<String>::new(), "trial {trial}");
    }
}

/// A running `serve` stops answering for a forgotten customer at its next reload.
#[tokio::test(flavor = "multi_thread")]
async fn serve_answers_404_for_a_forgotten_customer_after_its_reload() {
    let fx = Fixture::new();
    generate_into(&fx.landing_dir(), 60, 10, 9).await;
    let tags = fx.run(AS_OF).await;
    let id = tags.customers("lifecycle")[0].clone();
    let kept = tags.customers("lifecycle")[1].clone();
    let (server, _stop) = crate::serve::serve_fixture(&fx, AS_OF, None).await;
    crate::serve::wait_for_version(&server, 0).await;
    let mut client = crate::http::Client::new(server.addr);
    let path = |c: &str| format!("/v1/customers/{c}/tags");
    assert_eq!(client.get(&path(&id)).await.status, 200);
    forget_json(&fx, &["--customer", &id]);
    let started = Instant::now();
    while client.get(&path(&id)).await.status != 404 {
        assert!(started.elapsed() < Duration::from_secs(30), "still served after 30 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(client.get(&path(&kept)).await.status, 200);
}

/// An erasure without `--purge-history` waits for a vacuum (its status says until when); a
/// later purge completes it too.
#[tokio::test(flavor = "multi_thread")]
async fn a_later_purge_completes_earlier_erasures_history() {
    let fx = Fixture::new();
    generate_into(&fx.landing_dir(), 60, 10, 13).await;
    let ids = chosen(&fx.run(AS_OF).await);
    let first = forget_json(&fx, &["--customer", &ids[0]]);
    assert!(first["history_until"].is_string(), "{first:#}");
    let status = forget_json(&fx, &["--status"]);
    assert!(status[0]["history_until"].is_string(), "{status:#}");
    assert_eq!(status[0]["versions_gone"], serde_json::json!({}), "{status:#}");
    forget_json(&fx, &["--customer", &ids[1], "--purge-history"]);
    let status = forget_json(&fx, &["--status"]);
    for request in status.as_array().unwrap() {
        assert!(request["history_until"].is_null(), "{status:#}");
        assert!(request["versions_gone"]["customer_tags"].is_string(), "{status:#}");
    }
    assert_eq!(traces(&fx.warehouse_dir(), &ids), Vec::<String>::new());
}
