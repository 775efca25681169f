//! Test hold points: a test makes a process wait at a named point, so that it acts on the
//! process (sends a signal, kills it) at a moment it knows instead of racing a timer.
//!
//! Owns: the `TAGFLOW_TEST_HOLD` environment variable. Must not: change what the process
//! does once released; unset (always, outside tests), a hold point returns at once.
//!
//! `TAGFLOW_TEST_HOLD=<point>:<file>` makes the process wait at `<point>` for as long as
//! `<file>` exists. The points: `batch` (the start of every `follow` or `run` batch) and
//! `serve` (before `serve` binds its port).

use std::path::Path;
use std::time::Duration;

/// The environment variable that names a hold point and its file.
pub const HOLD_VAR: &str = "TAGFLOW_TEST_HOLD";

/// Wait here while the hold file of `point` exists (see the module head).
pub async fn point(point: &str) {
    let Some(spec) = std::env::var_os(HOLD_VAR) else {
        return;
    };
    let spec = spec.to_string_lossy();
    let Some((name, file)) = spec.split_once(':') else {
        return;
    };
    let file = Path::new(file);
    if name != point || !file.exists() {
        return;
    }
    tracing::warn!(point, file = %file.display(), "held at a test hold point until its file is removed");
    while file.exists() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
