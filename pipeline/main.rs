//! The `tagflow` command line: parses flags, sets up logging and the runtime, and dispatches
//! to [`cli::commands`]. Errors become exit codes in one place, [`tagflow::app::error`].

mod cli;

use std::process::ExitCode;

use clap::Parser;
use tagflow::app::error::exit;

use cli::args::{Cli, LogFormat};

fn main() -> ExitCode {
    keep_freed_memory();
    let cli = Cli::parse();
    init_logging(cli.log_format);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    match runtime.block_on(cli::commands::execute(cli.config, cli.command)) {
        Ok(()) => ExitCode::from(exit::OK as u8),
        Err(err) => {
            let code = err.exit_code();
            eprintln!("error: {err}");
            let mut source = std::error::Error::source(&err);
            while let Some(cause) = source {
                eprintln!("  caused by: {cause}");
                source = cause.source();
            }
            ExitCode::from(code as u8)
        }
    }
}

/// mimalloc instead of glibc's malloc. A batch allocates and frees Arrow buffers of every
/// size from many threads; with glibc (even tuned to keep freed memory: mallopt thresholds
/// up to 32 MiB) a profile of one-file `follow` batches at 1M customers spent about a
/// quarter of its CPU time in the allocator (`_int_malloc`, `unlink_chunk`,
/// `malloc_consolidate`, page clearing). mimalloc keeps per-thread free lists and reuses
/// freed pages. The figures, side by side, are in docs/benchmarks.md.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `mi_option_purge_delay` in mimalloc 3's `mimalloc.h` (the version libmimalloc-sys 0.1.49
/// builds; the test below checks the index by the option's default).
const MI_OPTION_PURGE_DELAY: std::ffi::c_int = 15;

extern "C" {
    fn mi_option_set(option: std::ffi::c_int, value: std::ffi::c_long);
    #[cfg(test)]
    fn mi_option_get(option: std::ffi::c_int) -> std::ffi::c_long;
}

/// mimalloc gives freed memory back to the OS a second after it is freed (its purge delay),
/// and the next batch faults it in again, each huge page zeroed by the kernel: a profile of
/// one-file `follow` batches at 1M customers spent 16% of its CPU time in the kernel's page
/// clearing and 10% more in copies into fresh pages. Keeping freed memory (a purge delay of
/// -1) made those batches 29% faster at the median and 42% at p95, for 20% more peak memory
/// (docs/benchmarks.md). `MIMALLOC_PURGE_DELAY` in the environment still decides.
fn keep_freed_memory() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: sets one option's value, before any thread but this one exists.
        unsafe { mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
    }
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("TAGFLOW_LOG")
        // object_store logs each retry of a failed request at info: keep them visible.
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("tagflow=info,object_store::client::retry=info,warn"));
    // TAGFLOW_LOG_SPANS=1: also log each span's duration when it closes (where a run's time goes).
    let spans = match std::env::var_os("TAGFLOW_LOG_SPANS").is_some_and(|v| v != "0") {
        true => tracing_subscriber::fmt::format::FmtSpan::CLOSE,
        false => tracing_subscriber::fmt::format::FmtSpan::NONE,
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_span_events(spans)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match format {
        LogFormat::Human => builder.with_target(false).init(),
        LogFormat::Json => builder.json().with_current_span(true).init(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_purge_delay_option_is_found_and_kept_off() {
        // SAFETY: reads an option's value.
        let default = unsafe { mi_option_get(MI_OPTION_PURGE_DELAY) };
        assert_eq!(default, 1000, "option 15 is mimalloc 3's purge delay (default 1000 ms)");
        keep_freed_memory();
        // SAFETY: as above.
        assert_eq!(unsafe { mi_option_get(MI_OPTION_PURGE_DELAY) }, -1);
    }
}
