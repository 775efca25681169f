//! Lookup API load benchmark: `tagflow serve` (a separate process, release build) over a
//! published `customer_tags` of 1M customers, and a load generator (hyper, HTTP/1.1
//! keep-alive connections) on the same 2 cores.
//!
//! It prints: publish and snapshot load time; the server's memory (RSS, peak RSS);
//! closed-loop single-customer lookups at several concurrency levels (requests/s, latency
//! p50/p99/max); and an open-loop run at a fixed rate (default 20,000 requests/s) whose
//! latencies count from each request's scheduled send time, so a stalled server cannot hide
//! its queueing (no coordinated omission). Tokio's timer fires on millisecond ticks, so the
//! paced requests leave in bursts up to a millisecond late; the open-loop lines therefore
//! also give the latency from each request's actual send.
//!
//! Then the same snapshot over the PostgreSQL wire protocol (pgbench point lookups, when
//! pgbench is installed) and a Server-Sent Events fan-out: 100 change streams, and a
//! publish that moves 1% of the customers' `rfm_tier`. Last, the console's API calls.
//!
//! `cargo bench --bench serve`. Environment: `TAGFLOW_BENCH_CUSTOMERS` (default 1,000,000),
//! `TAGFLOW_BENCH_RATE` (default 20000), `TAGFLOW_BENCH_SECONDS` per step (default 10).

#[path = "../tests/it/http.rs"]
mod http;

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{ArrayRef, Float64Array, StringArray, TimestampMicrosecondArray};
use arrow::record_batch::RecordBatch;
use chrono::{DateTime, Utc};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tagflow::publish::customer_tags_schema;
use tagflow::publish::tags::{publish_tags, TableSettings, TagsBase, TagsUpdate};
use tagflow::storage::Location;

use http::{listening_addresses, Client, Events};

const PG_PASSWORD: &str = "bench-password";

/// Point lookups over the PostgreSQL wire protocol with pgbench (when installed), at 1 and
/// 4 clients: the same question as `GET /v1/customers/{id}/tags`, answered by a scan of
/// the Delta snapshot instead of an index.
fn wire_lookups(pg: std::net::SocketAddr, customers: usize, seconds: Duration) {
    if Command::new("pgbench").arg("--version").output().is_err() {
        println!("PostgreSQL point lookups: skipped (no pgbench)");
        return;
    }
    let script = std::env::temp_dir().join("tagflow-bench-lookup.sql");
    std::fs::write(
        &script,
        format!(
            "\\set id random(0, {})\nSELECT tag, value FROM customer_tags WHERE customer_id = 'c' || lpad(CAST(:id AS VARCHAR), 8, '0');\n",
            customers - 1
        ),
    )
    .expect("script");
    println!("PostgreSQL point lookups (pgbench, simple protocol), {seconds:?} per step:");
    for clients in [1, 4] {
        let out = Command::new("pgbench")
            .args(["-n", "-M", "simple", "-j", "1", "-h"])
            .arg(pg.ip().to_string())
            .args([
                "-p",
                &pg.port().to_string(),
                "-U",
                "tagflow",
                "-c",
                &clients.to_string(),
            ])
            .args(["-T", &seconds.as_secs().max(1).to_string(), "-f"])
            .arg(&script)
            .arg("tagflow")
            .env("PGPASSWORD", PG_PASSWORD)
            .output()
            .expect("pgbench runs");
        let text = String::from_utf8_lossy(&out.stdout);
        let pick = |prefix: &str| {
            text.lines()
                .find(|l| l.starts_with(prefix))
                .map(|l| l.trim().to_string())
                .unwrap_or_else(|| format!("{prefix}: none ({})", String::from_utf8_lossy(&out.stderr).trim()))
        };
        println!("  {clients} clients: {}; {}", pick("tps"), pick("latency average"));
    }
}

/// Server-Sent Events fan-out: `clients` streams wait for the changes after version 0; a publish changes
/// `rfm_tier` for 1% of the customers; each stream's time from the commit to its first
/// change and to the last.
async fn fan_out(addr: std::net::SocketAddr, location: &Location, customers: usize, clients: usize) {
    let mut streams = Vec::new();
    for _ in 0..clients {
        let events = Events::open(addr, "/v1/changes/stream?since_version=0&limit=1000", None).await;
        assert_eq!(events.status, 200);
        streams.push(events);
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let as_of: DateTime<Utc> = "2026-11-21T00:00:00Z".parse().unwrap();
    let settings = TableSettings {
        checkpoint_interval: 10,
        file_retention: Duration::from_secs(7 * 86_400),
    };
    let base = TagsBase::open(location, &settings).await.expect("open customer_tags");
    let update = TagsUpdate {
        rows: moved(rows(customers, "2026-11-20T00:00:00Z".parse().unwrap())),
        scope: None,
        as_of,
        metadata: Default::default(),
        narrowed: None,
        policy: Default::default(),
        compaction: None,
    };
    let started = Instant::now();
    let published = publish_tags(location, base, update, &settings)
        .await
        .expect("publish")
        .0;
    let committed = started.elapsed();
    let expected = published.changes.map(|c| c.total()).unwrap_or(0) as usize;
    let tasks: Vec<_> = streams
        .into_iter()
        .map(|mut events| {
            tokio::spawn(async move {
                let (mut got, mut first) = (0usize, None);
                while got < expected {
                    let event = events.next().await.expect("the stream stays open");
                    let changes: Vec<serde_json::Value> = serde_json::from_str(&event.data).expect("JSON");
                    got += changes.len();
                    first.get_or_insert_with(|| started.elapsed());
                }
                (first.unwrap_or_default(), started.elapsed())
            })
        })
        .collect();
    let (mut firsts, mut lasts) = (Vec::new(), Vec::new());
    for task in tasks {
        let (first, last) = task.await.expect("stream task");
        firsts.push(first.as_micros() as u64);
        lasts.push(last.as_micros() as u64);
    }
    firsts.sort_unstable();
    lasts.sort_unstable();
    println!(
        "SSE fan-out to {clients} clients of a publish changing {expected} rows (commit {:.0} ms after its start):",
        committed.as_secs_f64() * 1000.0
    );
    println!("  first change received: {}", summary(&firsts));
    println!("  all changes received:  {}", summary(&lasts));
}

/// The calls the console (`/ui`) makes for its views, each 20 times in a row: the first
/// (cold: the daily flows are read on first use per version) and the p50 of the rest.
async fn console_calls(addr: std::net::SocketAddr) {
    println!("console calls (20 each, one connection):");
    let mut client = Client::new(addr);
    for path in [
        "/ui/app.js",
        "/v1/segments",
        "/v1/segments/rfm_tier/daily?days=90",
        "/v1/segments/rfm_tier?value=champion&limit=50",
        "/v1/runs?limit=20",
        "/v1/snapshots",
        "/v1/quarantine",
    ] {
        let mut times = Vec::new();
        for _ in 0..20 {
            let started = Instant::now();
            let reply = client.get(path).await;
            assert_eq!(reply.status, 200, "{path}: {}", reply.text());
            times.push(started.elapsed().as_micros() as u64);
        }
        let first = times[0];
        let mut rest = times[1..].to_vec();
        rest.sort_unstable();
        println!(
            "  {path:<48} first {:>9.3} ms, then p50 {:>9.3} ms",
            first as f64 / 1000.0,
            percentile(&rest, 50.0)
        );
    }
}

/// The rows with `rfm_tier` of every 100th customer moved to another value.
fn moved(batches: Vec<RecordBatch>) -> Vec<RecordBatch> {
    use arrow::array::AsArray;
    batches
        .into_iter()
        .map(|batch| {
            let ids = batch.column(0).as_string::<i32>();
            let tags = batch.column(2).as_string::<i32>();
            let values = batch.column(3).as_string::<i32>();
            let value: StringArray = (0..batch.num_rows())
                .map(|i| {
                    let every_100th = ids.value(i)[1..].parse::<usize>().is_ok_and(|n| n % 100 == 0);
                    Some(match (tags.value(i), every_100th) {
                        ("rfm_tier", true) if values.value(i) == "champion" => "prospect",
                        ("rfm_tier", true) => "champion",
                        _ => values.value(i),
                    })
                })
                .collect();
            let mut columns = batch.columns().to_vec();
            columns[3] = Arc::new(value);
            RecordBatch::try_new(batch.schema(), columns).expect("rows")
        })
        .collect()
}

/// (family, tag, values, share of customers carrying it).
const CATALOG: [(&str, &str, &[&str], f64); 12] = [
    (
        "behaviour",
        "rfm_tier",
        &["champion", "devoted", "big_spender", "casual", "prospect"],
        1.0,
    ),
    (
        "behaviour",
        "aipl_stage",
        &["awareness", "interest", "purchase", "loyalty"],
        1.0,
    ),
    ("behaviour", "lifecycle", &["new", "active", "dormant", "churned"], 0.9),
    ("behaviour", "repurchaser", &["true"], 0.3),
    (
        "behaviour",
        "brand_enthusiast",
        &["acme", "globex", "initech", "umbrella"],
        0.2,
    ),
    (
        "intent",
        "category_intent",
        &["shoes", "bags", "beauty", "electronics", "home"],
        0.4,
    ),
    ("intent", "cart_abandoner", &["true"], 0.15),
    ("intent", "promo_sensitive", &["true"], 0.25),
    ("risk", "refund_risk", &["high", "medium"], 0.05),
    ("risk", "shared_device", &["true"], 0.03),
    ("risk", "low_credit", &["true"], 0.02),
    ("risk", "marketing_blacklist", &["true"], 0.04),
];

fn customer_id(i: usize) -> String {
    format!("c{i:08}")
}

/// Tag rows for `customers` customers, a batch per 100k customers.
fn rows(customers: usize, as_of: DateTime<Utc>) -> Vec<RecordBatch> {
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let mut batches = Vec::new();
    for start in (0..customers).step_by(100_000) {
        let (mut c, mut f, mut t, mut v, mut s) = (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for i in start..(start + 100_000).min(customers) {
            for (family, tag, values, share) in CATALOG {
                if rng.random_bool(share) {
                    c.push(customer_id(i));
                    f.push(family);
                    t.push(tag);
                    v.push(values[rng.random_range(0..values.len())]);
                    s.push(rng.random_bool(0.7).then(|| rng.random_range(0.0..1.0)));
                }
            }
        }
        let n = c.len();
        let columns: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from(c)),
            Arc::new(StringArray::from(f)),
            Arc::new(StringArray::from(t)),
            Arc::new(StringArray::from(v)),
            Arc::new(Float64Array::from(s)),
            Arc::new(TimestampMicrosecondArray::from(vec![as_of.timestamp_micros(); n]).with_timezone("UTC")),
        ];
        batches.push(RecordBatch::try_new(customer_tags_schema(), columns).expect("rows"));
    }
    batches
}

/// (RSS, peak RSS) of a process in MiB.
fn memory_mib(pid: u32) -> (f64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<f64>().ok())
            .map(|kb| kb / 1024.0)
            .unwrap_or(f64::NAN)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank] as f64 / 1000.0
}

struct Step {
    requests: usize,
    errors: usize,
    seconds: f64,
    /// From the scheduled send time (open loop) or the send (closed loop) to the answer.
    latencies_us: Vec<u64>,
    /// From the actual send to the answer.
    service_us: Vec<u64>,
}

fn summary(latencies: &[u64]) -> String {
    let mut l = latencies.to_vec();
    l.sort_unstable();
    format!(
        "p50 {:>6.3} ms  p99 {:>6.3} ms  max {:>7.3} ms",
        percentile(&l, 50.0),
        percentile(&l, 99.0),
        l.last().map(|m| *m as f64 / 1000.0).unwrap_or(f64::NAN)
    )
}

impl Step {
    fn print(&self, label: &str, open_loop: bool) {
        println!(
            "{label:<28} {:>9.0} req/s  {}  errors {}",
            self.requests as f64 / self.seconds,
            summary(&self.latencies_us),
            self.errors
        );
        if open_loop {
            println!(
                "{:<28} {:>15}  {}  (from the actual send)",
                "",
                "",
                summary(&self.service_us)
            );
        }
    }
}

/// `connections` connections; each sends its next request when the previous answered
/// (closed loop), or at its scheduled time (`rate` requests/s over all connections).
async fn load(
    addr: std::net::SocketAddr,
    customers: usize,
    connections: usize,
    rate: Option<f64>,
    duration: Duration,
) -> Step {
    let started = Instant::now();
    let mut tasks = Vec::new();
    for worker in 0..connections {
        tasks.push(tokio::spawn(async move {
            let mut client = Client::new(addr);
            let mut rng = ChaCha8Rng::seed_from_u64(worker as u64);
            let (mut latencies, mut service, mut errors) = (Vec::new(), Vec::new(), 0usize);
            let interval = rate.map(|r| Duration::from_secs_f64(connections as f64 / r));
            let mut next = started
                + interval
                    .map(|i| i.mul_f64(worker as f64 / connections as f64))
                    .unwrap_or_default();
            while started.elapsed() < duration {
                if interval.is_some() {
                    tokio::time::sleep_until(next.into()).await;
                }
                let path = format!("/v1/customers/{}/tags", customer_id(rng.random_range(0..customers)));
                let sent = Instant::now();
                let scheduled = if interval.is_some() { next } else { sent };
                match client.try_send("GET", &path, None, Vec::new()).await {
                    Ok(reply) if reply.status == 200 => {
                        latencies.push(scheduled.elapsed().as_micros() as u64);
                        service.push(sent.elapsed().as_micros() as u64);
                    }
                    _ => errors += 1,
                }
                if let Some(interval) = interval {
                    next += interval;
                }
            }
            (latencies, service, errors)
        }));
    }
    let mut step = Step {
        requests: 0,
        errors: 0,
        seconds: 0.0,
        latencies_us: Vec::new(),
        service_us: Vec::new(),
    };
    for task in tasks {
        let (latencies, service, errors) = task.await.expect("load task");
        step.requests += latencies.len() + errors;
        step.errors += errors;
        step.latencies_us.extend(latencies);
        step.service_us.extend(service);
    }
    step.seconds = started.elapsed().as_secs_f64();
    step
}

fn main() {
    let env = |name: &str, default: f64| {
        std::env::var(name)
            .ok()
            .map(|v| v.parse::<f64>().unwrap_or_else(|_| panic!("{name} is a number")))
            .unwrap_or(default)
    };
    let customers = env("TAGFLOW_BENCH_CUSTOMERS", 1_000_000.0) as usize;
    let rate = env("TAGFLOW_BENCH_RATE", 20_000.0);
    let seconds = Duration::from_secs_f64(env("TAGFLOW_BENCH_SECONDS", 10.0));
    let dir = tempfile::tempdir().expect("tempdir");
    let warehouse = dir.path().join("warehouse");

    // The load generator gets one thread; the server (its own process) has two workers.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let started = Instant::now();
    let as_of: DateTime<Utc> = "2026-11-20T00:00:00Z".parse().unwrap();
    let location = Location::parse(&warehouse.to_string_lossy(), &Default::default()).expect("warehouse");
    let published = runtime.block_on(async {
        let update = TagsUpdate {
            rows: rows(customers, as_of),
            scope: None,
            as_of,
            metadata: Default::default(),
            narrowed: None,
            policy: Default::default(),
            compaction: None,
        };
        let settings = TableSettings {
            checkpoint_interval: 10,
            file_retention: Duration::from_secs(7 * 86_400),
        };
        let base = TagsBase::open(&location, &settings).await.expect("open customer_tags");
        publish_tags(&location, base, update, &settings)
            .await
            .expect("publish")
            .0
    });
    println!(
        "customer_tags: {customers} customers, {} rows, {} files, published in {:.1} s",
        published.rows,
        published.files,
        started.elapsed().as_secs_f64()
    );

    let started = Instant::now();
    let mut server = Command::new(env!("CARGO_BIN_EXE_tagflow"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--pg-listen",
            "127.0.0.1:0",
            "--warehouse",
        ])
        .arg(&warehouse)
        .env("TAGFLOW_LOG", "warn")
        .env("TAGFLOW_PG_PASSWORD", PG_PASSWORD)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start tagflow serve");
    let [addr, pg_addr] = listening_addresses(&mut server, &["http", "postgres"])[..] else {
        unreachable!("two schemes asked, two addresses read")
    };
    runtime.block_on(async {
        let mut client = Client::new(addr);
        while client.get("/readyz").await.status != 200 {
            assert!(started.elapsed() < Duration::from_secs(600), "not ready after 10 min");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let (rss, peak) = memory_mib(server.id());
    println!(
        "snapshot loaded and indexed in {:.1} s; server memory: RSS {rss:.0} MiB, peak {peak:.0} MiB",
        started.elapsed().as_secs_f64()
    );

    runtime.block_on(async {
        // Warm up connections and caches.
        load(addr, customers, 8, None, Duration::from_secs(2)).await;
        println!("closed loop (each connection sends when answered), {seconds:?} per step:");
        for connections in [1, 4, 16, 64] {
            let step = load(addr, customers, connections, None, seconds).await;
            step.print(&format!("  {connections} connections"), false);
        }
        println!("open loop at a fixed rate (latency from the scheduled send time):");
        for (connections, share) in [(32, 0.5), (32, 1.0), (64, 1.0)] {
            let step = load(addr, customers, connections, Some(rate * share), seconds).await;
            step.print(&format!("  {:.0} req/s, {connections} conns", rate * share), true);
        }
    });
    let (rss, peak) = memory_mib(server.id());
    println!("server memory after the load: RSS {rss:.0} MiB, peak {peak:.0} MiB");
    wire_lookups(pg_addr, customers, seconds);
    runtime.block_on(fan_out(addr, &location, customers, 100));
    runtime.block_on(console_calls(addr));
    unsafe { libc::kill(server.id() as i32, libc::SIGTERM) };
    let status = server.wait().expect("server exits");
    println!("server stopped: {status}");
}
