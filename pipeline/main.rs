//! The `tagflow` command line: parses flags, sets up logging and the runtime, and dispatches
//! to [`cli::commands`]. Errors become exit codes in one place, [`tagflow::app::error`].

mod cli;

use std::process::ExitCode;

use clap::Parser;
use tagflow::app::error::exit;

use cli::args::{Cli, LogFormat};

fn main() -> ExitCode {
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
