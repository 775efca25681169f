//! The console at `/ui`, in a real browser: `tagflow demo` makes a warehouse (with bad
//! input in quarantine and marketing tasks), `tagflow backfill` adds days of history, and
//! `tagflow serve` (with a token) serves it. `tests/console/console.mjs` drives headless
//! Chromium through every view, checks what it shows against the API and the accessibility
//! rules, and takes screenshots; here the sizes it read are checked against the Delta
//! table too. `.ci/run` installs Chromium and the script's packages; elsewhere the test
//! skips without them unless TAGFLOW_TEST_BROWSER_REQUIRED is set.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::Value;

use crate::http::listening_addresses;
use crate::support::*;

const TOKEN: &str = "console-test-token-0123456789";

/// The browser script's folder, or None (the test skips) when Node, its packages or
/// Chromium are missing.
fn browser(test: &str) -> Option<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/console");
    let chromium = std::env::var("TAGFLOW_TEST_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    let node = Command::new("node")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if node && dir.join("node_modules/playwright-core").exists() && Path::new(&chromium).exists() {
        return Some(dir);
    }
    let why = format!("{test}: needs node, chromium and `npm ci` in tests/console (see .ci/run)");
    assert!(std::env::var("TAGFLOW_TEST_BROWSER_REQUIRED").is_err(), "{why}");
    eprintln!("SKIPPED {why}");
    None
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().expect("tagflow runs");
    assert!(
        out.status.success(),
        "{cmd:?}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_shows_what_the_api_says_in_a_real_browser() {
    let Some(script_dir) = browser("the_console_shows_what_the_api_says_in_a_real_browser") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let demo = dir.path().join("demo");
    run(tagflow().args(["demo", "--customers", "300", "--dir"]).arg(&demo));
    let warehouse = demo.join("warehouse");
    let today = chrono::Utc::now().date_naive();
    let day = |back: i64| (today - chrono::Duration::days(back)).to_string();
    run(tagflow()
        .args(["backfill", "--force", "--from", &day(6), "--to", &day(3), "--landing"])
        .arg(demo.join("landing"))
        .arg("--warehouse")
        .arg(&warehouse));

    let mut server = tagflow()
        .args(["serve", "--listen", "127.0.0.1:0", "--warehouse"])
        .arg(&warehouse)
        .env("TAGFLOW_SERVE_TOKEN", TOKEN)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("serve starts");
    let addr = listening_addresses(&mut server, &["http"])[0];
    // TAGFLOW_TEST_CONSOLE_SHOTS keeps the screenshots (docs/console.png is segments.png).
    let shots = std::env::var_os("TAGFLOW_TEST_CONSOLE_SHOTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| dir.path().join("shots"));
    std::fs::create_dir_all(&shots).unwrap();
    let out = Command::new("node")
        .arg(script_dir.join("console.mjs"))
        .arg(format!("http://{addr}"))
        .arg(TOKEN)
        .arg(&shots)
        .current_dir(&script_dir)
        .output()
        .expect("node runs");
    let _ = server.kill();
    let _ = server.wait();
    assert!(
        out.status.success(),
        "the browser check failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).expect("a JSON report");
    eprintln!("console: {report}");

    // The sizes the page showed are the published table's.
    let published = read_tags(&warehouse, None).await;
    let mut sizes: BTreeMap<(String, String), i64> = BTreeMap::new();
    for row in &published.rows {
        *sizes.entry((row.tag.clone(), row.value.clone())).or_default() += 1;
    }
    let shown: BTreeMap<(String, String), i64> = report["segments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                (s[0].as_str().unwrap().to_string(), s[1].as_str().unwrap().to_string()),
                s[2].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(shown, sizes);
    // Four backfilled days reach the daily view beside the published day; the demo has
    // tasks, runs and quarantined input to show.
    assert!(report["history_rows"].as_u64() >= Some(4), "{report}");
    assert!(report["tasks"].as_u64() > Some(0), "{report}");
    assert!(report["runs"].as_u64() >= Some(2), "{report}");
    assert!(report["quarantined"].as_u64() > Some(0), "{report}");
    for shot in ["segments.png", "health.png"] {
        let bytes = std::fs::read(shots.join(shot)).expect("a screenshot");
        assert!(
            bytes.starts_with(b"\x89PNG\r\n\x1a\n") && bytes.len() > 10_000,
            "{shot}"
        );
    }
}
