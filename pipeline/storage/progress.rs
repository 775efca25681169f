//! Progress bars on long work (landing files read, backfill days), for people watching a
//! terminal. Commands turn them on only when stdout is a terminal, the output is not JSON
//! and `CI` is not set; logs stay on stderr either way.
//!
//! Owns: drawing the bars. Must not: change what is computed or reported.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// A bar, or nothing when progress is off.
#[derive(Clone, Default)]
pub struct Progress(Option<ProgressBar>);

impl Progress {
    /// A bar of `total` steps labelled `what`, drawn only when `enabled`.
    pub fn bar(enabled: bool, what: &str, total: usize) -> Self {
        if !enabled || total == 0 {
            return Progress(None);
        }
        let bar = ProgressBar::with_draw_target(Some(total as u64), ProgressDrawTarget::stdout());
        let style = ProgressStyle::with_template("{msg:>14} [{bar:40}] {pos}/{len}  {per_sec}  eta {eta}")
            .expect("a valid template")
            .progress_chars("=> ");
        bar.set_style(style);
        bar.set_message(what.to_string());
        Progress(Some(bar))
    }

    pub fn inc(&self) {
        if let Some(bar) = &self.0 {
            bar.inc(1);
        }
    }

    /// Remove the bar (the report follows on stdout).
    pub fn finish(&self) {
        if let Some(bar) = &self.0 {
            bar.finish_and_clear();
        }
    }
}

/// Whether a command should draw bars: stdout is a terminal, its output is not JSON, and
/// it does not run in CI.
pub fn wanted(json: bool) -> bool {
    !json && std::io::IsTerminal::is_terminal(&std::io::stdout()) && std::env::var_os("CI").is_none()
}
