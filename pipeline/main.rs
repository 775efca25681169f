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

/// Have glibc's allocator keep freed memory for reuse instead of handing it back to the
/// kernel. A run frees and allocates large Arrow buffers stage after stage; by default
/// each of them is a fresh mapping, faulted in and zeroed page by page, and that was a
/// tenth of the CPU time of an incremental run (7% of its wall time, measured). The cost:
/// the process keeps its peak memory until it exits (or, in `follow`, for the session).
fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets allocator parameters; it runs before any other thread.
    unsafe {
        // The largest threshold glibc accepts on 64-bit (32 MiB): buffers below it come
        // from the heap, which is not trimmed below 2 GiB and grows 256 MiB at a time.
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
        libc::mallopt(libc::M_TOP_PAD, 256 << 20);
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
