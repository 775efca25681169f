//! The warehouse run lock: one run at a time, and a killed run's lock is recovered.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use chrono::Utc;
use object_store::{ObjectStoreExt, PutPayload};
use tagflow::storage::lock::{lock_path, LockError, LockInfo, RunLock};
use tagflow::storage::Location;

use crate::support::*;

const TTL: Duration = Duration::from_secs(600);

fn warehouse(fx: &Fixture) -> Location {
    Location::parse(&fx.warehouse_dir().to_string_lossy(), &Default::default()).unwrap()
}

async fn plant_lock(warehouse: &Location, info: &LockInfo) {
    let body = serde_json::to_vec(info).unwrap();
    warehouse
        .store
        .put(&lock_path(warehouse), PutPayload::from(body))
        .await
        .unwrap();
}

fn lock_info(pid: u32, host: &str, expires_in: chrono::TimeDelta) -> LockInfo {
    LockInfo {
        run_id: format!("planted-{pid}-{host}"),
        pid,
        host: host.to_string(),
        acquired_at: Utc::now() - chrono::TimeDelta::minutes(1),
        expires_at: Utc::now() + expires_in,
    }
}

fn this_host() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap()
        .trim()
        .to_string()
}

/// The pid of a process that has exited.
fn dead_pid() -> u32 {
    let mut child = Command::new("true").spawn().unwrap();
    let pid = child.id();
    child.wait().unwrap();
    pid
}

#[tokio::test]
async fn a_held_lock_stops_a_second_run_with_its_own_exit_code() {
    let fx = Fixture::new();
    fx.clicks("a.parquet", &[view("k1", "c1", "2026-11-19T10:00:00Z")]);
    fx.run("2026-11-20T00:00:00Z").await;
    let wh = warehouse(&fx);
    let held = RunLock::acquire(&wh, "holder", TTL).await.unwrap();
    let err = RunLock::acquire(&wh, "second", TTL).await.err().expect("held");
    match &err {
        LockError::Held { holder, .. } => assert_eq!(holder.run_id, "holder"),
        other => panic!("unexpected {other}"),
    }
    assert!(err.to_string().contains("another run holds the warehouse lock"));

    let err = fx.try_run("2026-11-21T00:00:00Z", None).await.expect_err("locked");
    assert_eq!(err.exit_code(), tagflow::app::error::exit::LOCKED);
    assert_eq!(
        fx.published(None).await.rows,
        fx.published(Some(0)).await.rows,
        "nothing published"
    );
    held.release().await.unwrap();
    fx.try_run("2026-11-21T00:00:00Z", None).await.expect("free again");
    assert!(
        !fx.warehouse_dir().join("_tagflow/run.lock").exists(),
        "a run releases its lock"
    );
}

#[tokio::test]
async fn a_live_lock_of_another_host_is_respected_until_it_expires() {
    let fx = Fixture::new();
    let wh = warehouse(&fx);
    plant_lock(&wh, &lock_info(1, "other-host", chrono::TimeDelta::minutes(5))).await;
    assert!(matches!(
        RunLock::acquire(&wh, "me", TTL).await,
        Err(LockError::Held { .. })
    ));

    plant_lock(&wh, &lock_info(1, "other-host", chrono::TimeDelta::minutes(-1))).await;
    let lock = RunLock::acquire(&wh, "me", TTL)
        .await
        .expect("expired lock is recovered");
    assert_eq!(lock.info().run_id, "me");
    lock.release().await.unwrap();
}

#[tokio::test]
async fn a_lock_left_by_a_dead_process_on_this_host_is_recovered_at_once() {
    let fx = Fixture::new();
    fx.clicks("a.parquet", &[view("k1", "c1", "2026-11-19T10:00:00Z")]);
    let wh = warehouse(&fx);
    plant_lock(
        &wh,
        &lock_info(dead_pid(), &this_host(), chrono::TimeDelta::minutes(10)),
    )
    .await;
    fx.try_run("2026-11-20T00:00:00Z", None)
        .await
        .expect("stale lock recovered");
    // a live process on this host (this test) keeps its lock
    plant_lock(
        &wh,
        &lock_info(std::process::id(), &this_host(), chrono::TimeDelta::minutes(10)),
    )
    .await;
    assert!(matches!(
        RunLock::acquire(&wh, "me", TTL).await,
        Err(LockError::Held { .. })
    ));
}

#[tokio::test]
async fn only_one_of_two_recoverers_takes_over_a_stale_lock() {
    let fx = Fixture::new();
    let wh = warehouse(&fx);
    plant_lock(
        &wh,
        &lock_info(dead_pid(), &this_host(), chrono::TimeDelta::minutes(10)),
    )
    .await;
    let (a, b) = tokio::join!(RunLock::acquire(&wh, "a", TTL), RunLock::acquire(&wh, "b", TTL));
    assert!(
        a.is_ok() != b.is_ok(),
        "exactly one recoverer wins: {:?} / {:?}",
        a.as_ref().err(),
        b.as_ref().err()
    );
}

/// A real `tagflow run`, killed with SIGKILL while it holds the lock: the next run recovers
/// the lock and publishes.
#[test]
fn a_killed_run_leaves_a_lock_that_the_next_run_recovers() {
    let fx = Fixture::new();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let landing = Location::parse(&fx.landing_dir().to_string_lossy(), &Default::default()).unwrap();
    let options = tagflow::generate::GenerateOptions {
        customers: 400,
        days: 120,
        seed: 5,
        end: chrono::NaiveDate::from_ymd_opt(2026, 11, 19).unwrap(),
        bad_input: false,
    };
    runtime
        .block_on(tagflow::generate::generate(&landing, &options))
        .unwrap();
    let run = || {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_tagflow"));
        cmd.args(["run", "--as-of", "2026-11-19T23:00:00Z", "--landing"])
            .arg(fx.landing_dir())
            .arg("--warehouse")
            .arg(fx.warehouse_dir())
            .env_remove("TAGFLOW_CONFIG")
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        cmd
    };
    let lock_file = fx.warehouse_dir().join("_tagflow/run.lock");
    let mut child = run().spawn().unwrap();
    let started = Instant::now();
    while !lock_file.exists() {
        assert!(child.try_wait().unwrap().is_none(), "run ended before it was killed");
        assert!(started.elapsed() < Duration::from_secs(60), "no lock appeared");
        std::thread::sleep(Duration::from_millis(2));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert!(lock_file.exists(), "a killed run cannot release its lock");

    let status = run().status().unwrap();
    assert!(status.success(), "the next run recovers the lock: {status}");
    assert!(!lock_file.exists());
    let tags = runtime.block_on(fx.published(None));
    assert!(!tags.rows.is_empty());
}
