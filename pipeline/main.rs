//! The `tagflow` command line. Parses flags (clap), sets up logging, calls the library and
//! turns its typed errors into exit codes (see `error::exit`).

use std::path::PathBuf;
use std::process::ExitCode;

use chrono::NaiveDate;
use clap::{Args, Parser, Subcommand, ValueEnum};
use tagflow::config::{CliSettings, ConfigError, Settings};
use tagflow::error::{exit, Error};
use tagflow::generate::{generate, GenerateOptions};
use tagflow::history::RUNS_TABLE;
use tagflow::publish::{query_published, TAGS_TABLE};
use tagflow::quarantine::Quarantine;
use tagflow::{demo, run, snapshots};

#[derive(Parser)]
#[command(
    name = "tagflow",
    version,
    about = "Near-real-time customer tagging: landing Parquet -> SQL tag jobs -> Delta table"
)]
struct Cli {
    /// Config file (default: ./tagflow.toml when present).
    #[arg(long, global = true, env = "TAGFLOW_CONFIG")]
    config: Option<PathBuf>,
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Human, env = "TAGFLOW_LOG_FORMAT")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Human,
    Json,
}

#[derive(Args, Default, Clone)]
struct Locations {
    /// Landing zone: local path or URL (file://, s3://).
    #[arg(long, env = "TAGFLOW_LANDING")]
    landing: Option<String>,
    /// Warehouse: local path or URL; `customer_tags` is published under it.
    #[arg(long, env = "TAGFLOW_WAREHOUSE")]
    warehouse: Option<String>,
    /// Folder of SQL tag jobs.
    #[arg(long, env = "TAGFLOW_SQL_DIR")]
    sql_dir: Option<PathBuf>,
    /// Folder of stream schemas.
    #[arg(long, env = "TAGFLOW_SCHEMAS_DIR")]
    schemas_dir: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Command {
    /// Read the landing zone, run every tag job and publish a new version of customer_tags.
    Run {
        #[command(flatten)]
        locations: Locations,
        /// Evaluate tags as of this time (RFC 3339, default: now).
        #[arg(long, env = "TAGFLOW_AS_OF")]
        as_of: Option<String>,
        /// Print the run report as JSON on stdout.
        #[arg(long)]
        json: bool,
        /// Run only these jobs (comma-separated) and what they depend on; the other tags
        /// keep their published rows.
        #[arg(long, value_delimiter = ',')]
        jobs: Vec<String>,
        /// Recompute from every landing file and rebuild the state, instead of reading only
        /// the files not processed yet.
        #[arg(long)]
        full: bool,
        /// Publish even if a tag's declared quality checks fail; the run report and
        /// job_runs record that it was forced. Built-in checks (one row per customer) still hold.
        #[arg(long)]
        force: bool,
    },
    /// Watch the landing zone and publish after every micro-batch of new files, until
    /// SIGINT or SIGTERM (which end the session after the current batch).
    Follow {
        #[command(flatten)]
        locations: Locations,
        /// Time between batch starts: `500ms`, `2s`, `1m`.
        #[arg(long, default_value = "2s", value_parser = parse_interval)]
        interval: std::time::Duration,
        /// Print each published batch's report as one JSON line on stdout.
        #[arg(long)]
        json: bool,
        /// Serve Prometheus metrics on this address at /metrics (port 0 picks a free port;
        /// the address is logged).
        #[arg(long, env = "TAGFLOW_METRICS_LISTEN")]
        metrics_listen: Option<std::net::SocketAddr>,
        /// Publish every batch even if a tag's declared quality checks fail (each such batch
        /// is recorded as forced). Built-in checks (one row per customer) still hold.
        #[arg(long)]
        force: bool,
    },
    /// Recompute the tags as they stood at the end of each day from --from to --to and
    /// write them to <warehouse>/customer_tags_history, one snapshot per day, in order.
    /// Re-running replaces those days. The live table and state are not touched.
    Backfill {
        #[command(flatten)]
        locations: Locations,
        /// First day (UTC), e.g. 2026-01-01.
        #[arg(long)]
        from: NaiveDate,
        /// Last day (UTC), included.
        #[arg(long)]
        to: NaiveDate,
        /// Days between snapshots: 1d, 7d.
        #[arg(long, default_value = "1d", value_parser = parse_interval)]
        every: std::time::Duration,
        /// Write a day even if its quality checks fail (recorded as forced).
        #[arg(long)]
        force: bool,
        /// Print the report as JSON on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Evaluate a new or edited tag (or measure) definition against the committed state,
    /// without writing anything, and show per value how many customers would enter, exit
    /// and stay compared with the live table, with samples, and whether its checks pass.
    Preview {
        /// The job file (it replaces the catalog's job of the same name, or is added).
        file: PathBuf,
        #[command(flatten)]
        locations: Locations,
        /// Customer ids to show per value and flow.
        #[arg(long, default_value_t = 5)]
        sample: usize,
        #[arg(long)]
        json: bool,
    },
    /// Write realistic sample landing files.
    Generate {
        /// Landing zone to write into (local path or URL; default: the configured landing,
        /// with its `[storage.landing]` options).
        #[arg(long, env = "TAGFLOW_LANDING")]
        out: Option<String>,
        #[arg(long, default_value_t = 1000)]
        customers: usize,
        #[arg(long, default_value_t = 365)]
        days: u32,
        #[arg(long, default_value_t = 42)]
        seed: u64,
        /// Last day of generated events (default: yesterday, UTC).
        #[arg(long)]
        end: Option<NaiveDate>,
        /// Also write a few bad rows and a corrupt file.
        #[arg(long)]
        bad_input: bool,
    },
    /// Generate sample data into a local folder, run the pipeline and show segment sizes.
    Demo {
        #[arg(long, default_value = "demo-data")]
        dir: PathBuf,
        #[arg(long, default_value_t = 2000)]
        customers: usize,
        #[arg(long, default_value_t = 400)]
        days: u32,
        #[arg(long, default_value_t = 7)]
        seed: u64,
    },
    /// Inspect the tag job catalog.
    Jobs {
        #[command(subcommand)]
        command: JobsCommand,
    },
    /// Inspect the quarantine area.
    Quarantine {
        #[command(subcommand)]
        command: QuarantineCommand,
    },
    /// Show the latest runs recorded in <warehouse>/job_runs (newest first).
    Runs {
        #[command(flatten)]
        locations: Locations,
        #[arg(long, default_value_t = 20)]
        limit: usize,
        /// Print the rows as a JSON array.
        #[arg(long)]
        json: bool,
    },
    /// Show a customer's tags in the published table.
    Tags {
        customer_id: String,
        #[command(flatten)]
        locations: Locations,
        /// Read this table version instead of the latest.
        #[arg(long, conflicts_with = "at")]
        version: Option<u64>,
        /// Read the latest version evaluated at or before this as-of time (RFC 3339).
        #[arg(long)]
        at: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Compact the warehouse's Delta tables now: bin-pack and z-order small files, write a
    /// checkpoint, vacuum files older than the retention that no version needs.
    Compact {
        #[command(flatten)]
        locations: Locations,
        #[arg(long)]
        json: bool,
    },
    /// List the versions of customer_tags: as-of time, rows, customers, changes, rows per tag.
    Snapshots {
        #[command(flatten)]
        locations: Locations,
        #[arg(long)]
        json: bool,
    },
    /// Serve the tag lookup API (HTTP/JSON) from the latest published snapshot, reloading
    /// new versions as they are published, until SIGINT or SIGTERM. A bearer token, if
    /// wanted, comes from TAGFLOW_SERVE_TOKEN or `[serve] token` (never from a flag).
    Serve {
        #[command(flatten)]
        locations: Locations,
        /// Address to listen on (default 127.0.0.1:8080; port 0 picks a free port).
        #[arg(long, env = "TAGFLOW_LISTEN")]
        listen: Option<String>,
    },
    /// Per published version, tag and value: segment size, inflow and outflow.
    Segments {
        #[command(flatten)]
        locations: Locations,
        /// Only versions evaluated at or after this as-of time (RFC 3339).
        #[arg(long)]
        since: Option<String>,
        /// Only this tag.
        #[arg(long)]
        tag: Option<String>,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum JobsCommand {
    /// List jobs in run order.
    List {
        #[command(flatten)]
        locations: Locations,
    },
    /// Parse, order and plan every job without running anything.
    Validate {
        #[command(flatten)]
        locations: Locations,
    },
    /// Show one job: header, effective parameters and SQL as it runs today.
    Show {
        job: String,
        #[command(flatten)]
        locations: Locations,
    },
    /// Print one job's DataFusion logical and physical plans.
    Explain {
        job: String,
        #[command(flatten)]
        locations: Locations,
    },
}

#[derive(Subcommand)]
enum QuarantineCommand {
    /// List quarantined files and rows with their reasons.
    List {
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        locations: Locations,
    },
}

fn main() -> ExitCode {
    keep_freed_memory();
    let cli = Cli::parse();
    init_logging(cli.log_format);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    match runtime.block_on(execute(cli)) {
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

/// `500ms`, `2s`, `1m`: a number and a unit, longer than zero.
fn parse_interval(text: &str) -> Result<std::time::Duration, String> {
    let duration = tagflow::config::parse_duration(text)?;
    if duration.is_zero() {
        return Err("the interval must be longer than zero".into());
    }
    Ok(duration)
}

/// An RFC 3339 time given on the command line with `option`.
fn parse_time(option: &'static str, text: &str) -> Result<chrono::DateTime<chrono::Utc>, ConfigError> {
    chrono::DateTime::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&chrono::Utc))
        .map_err(|_| ConfigError::Time {
            option,
            value: text.to_string(),
        })
}

/// SIGINT and SIGTERM, caught from the moment [`StopSignals::install`] returns: a signal
/// that arrives while the command is still preparing or in its first batch is kept and ends
/// the command at its next stopping point, instead of killing the process by the signal's
/// default action. Only commands that stop cleanly install it (`follow`, `serve`); the
/// others keep the default action, which their crash safety covers.
struct StopSignals {
    interrupt: tokio::signal::unix::Signal,
    terminate: tokio::signal::unix::Signal,
}

impl StopSignals {
    /// Register both handlers now (not when first awaited). Needs the Tokio runtime.
    fn install() -> Result<Self, Error> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(StopSignals {
            interrupt: signal(SignalKind::interrupt()).map_err(Error::Signals)?,
            terminate: signal(SignalKind::terminate()).map_err(Error::Signals)?,
        })
    }

    /// Resolves on the first SIGINT or SIGTERM, received before or after this call.
    async fn received(mut self) {
        tokio::select! {
            _ = self.interrupt.recv() => tracing::info!("SIGINT: stopping once the work in progress is done"),
            _ = self.terminate.recv() => tracing::info!("SIGTERM: stopping once the work in progress is done"),
        }
    }
}

fn settings(config: &Option<PathBuf>, locations: Locations, as_of: Option<String>) -> Result<Settings, ConfigError> {
    Settings::resolve(&CliSettings {
        config: config.clone(),
        landing: locations.landing,
        warehouse: locations.warehouse,
        as_of,
        sql_dir: locations.sql_dir,
        schemas_dir: locations.schemas_dir,
        ..Default::default()
    })
}

async fn execute(cli: Cli) -> Result<(), Error> {
    match cli.command {
        Command::Run {
            locations,
            as_of,
            json,
            jobs,
            full,
            force,
        } => {
            let mut settings = settings(&cli.config, locations, as_of)?;
            settings.jobs = jobs;
            settings.full = full;
            settings.force = force;
            settings.progress = tagflow::progress::wanted(json);
            let report = run::run(&settings).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report).expect("report serialises"));
            } else {
                print!("{}", report.render());
            }
        }
        Command::Follow {
            locations,
            interval,
            json,
            metrics_listen,
            force,
        } => {
            let stop = StopSignals::install()?;
            let mut settings = settings(&cli.config, locations, None)?;
            settings.force = force;
            let print = |report: &tagflow::report::RunReport| {
                if json {
                    println!("{}", serde_json::to_string(report).expect("report serialises"));
                }
            };
            let metrics = std::sync::Arc::new(tagflow::follow_metrics::FollowMetrics::default());
            let endpoint = match metrics_listen {
                Some(listen) => {
                    let (addr, task) = tagflow::follow_metrics::serve(listen, metrics.clone()).await?;
                    tracing::info!("metrics at http://{addr}/metrics");
                    Some(task)
                }
                None => None,
            };
            let outcome = run::follow(
                &settings,
                interval,
                stop.received(),
                &metrics,
                print,
                chrono::Utc::now,
            )
            .await;
            if let Some(task) = endpoint {
                task.abort();
            }
            outcome?;
        }
        Command::Backfill {
            locations,
            from,
            to,
            every,
            force,
            json,
        } => {
            let mut settings = settings(&cli.config, locations, None)?;
            settings.force = force;
            settings.progress = tagflow::progress::wanted(json);
            let range = tagflow::backfill::Range::new(from, to, every)?;
            let report = tagflow::backfill::backfill(&settings, range, |_, _| {}).await?;
            match json {
                true => println!("{}", serde_json::to_string_pretty(&report).expect("report serialises")),
                false => print!("{}", report.render()),
            }
        }
        Command::Preview {
            file,
            locations,
            sample,
            json,
        } => {
            let settings = settings(&cli.config, locations, None)?;
            let preview = tagflow::preview::preview(&settings, &file, sample).await?;
            match json {
                true => println!(
                    "{}",
                    serde_json::to_string_pretty(&preview).expect("preview serialises")
                ),
                false => print!("{}", preview.render()),
            }
        }
        Command::Generate {
            out,
            customers,
            days,
            seed,
            end,
            bad_input,
        } => {
            let locations = Locations {
                landing: out,
                ..Default::default()
            };
            let settings = settings(&cli.config, locations, None)?;
            let landing = settings.landing()?;
            run::check_locations(&[landing]).await?;
            let end = end.unwrap_or_else(|| (chrono::Utc::now() - chrono::Duration::days(1)).date_naive());
            let options = GenerateOptions {
                customers,
                days,
                seed,
                end,
                bad_input,
            };
            let summary = generate(landing, &options).await?;
            println!(
                "{}",
                serde_json::to_string_pretty(&summary).expect("summary serialises")
            );
        }
        Command::Demo {
            dir,
            customers,
            days,
            seed,
        } => {
            let settings = settings(&cli.config, Locations::default(), None)?;
            let options = demo::DemoOptions {
                dir,
                customers,
                days,
                seed,
            };
            let result = demo::demo(&options, settings).await?;
            print!("{}", result.render());
        }
        Command::Jobs { command } => {
            let (JobsCommand::List { locations }
            | JobsCommand::Validate { locations }
            | JobsCommand::Show { locations, .. }
            | JobsCommand::Explain { locations, .. }) = &command;
            let settings = settings(&cli.config, locations.clone(), None)?;
            let project = run::prepare(&settings).await?;
            match command {
                JobsCommand::List { .. } => {
                    println!(
                        "{:<20} {:<8} {:<10} {:<40} description",
                        "job", "kind", "family", "reads"
                    );
                    for job in &project.catalog.jobs {
                        let reads: Vec<&str> = job.reads().map(String::as_str).collect();
                        println!(
                            "{:<20} {:<8} {:<10} {:<40} {}",
                            job.name,
                            format!("{:?}", job.kind).to_lowercase(),
                            job.family.as_deref().unwrap_or("-"),
                            reads.join(","),
                            job.description
                        );
                    }
                }
                JobsCommand::Show { job, .. } => {
                    let found = project.catalog.jobs.iter().find(|j| j.name == job);
                    let job = found.ok_or(tagflow::jobs::CatalogError::UnknownJob { name: job.clone() })?;
                    println!("{}", serde_json::to_string_pretty(job).expect("job serialises"));
                    println!("\n{}", job.render_sql(settings.as_of).trim_start_matches('\n'));
                }
                JobsCommand::Explain { job, .. } => {
                    let (logical, physical) = project.catalog.explain(&project.schemas, &job).await?;
                    println!("logical plan:\n{logical}\n\nphysical plan:\n{physical}");
                }
                JobsCommand::Validate { .. } => {
                    println!(
                        "ok: {} jobs in {} plan ({} tags)",
                        project.catalog.jobs.len(),
                        project.catalog.dir.display(),
                        project.catalog.tags().count()
                    );
                }
            }
        }
        Command::Quarantine { command } => {
            let QuarantineCommand::List { json, locations } = command;
            let settings = settings(&cli.config, locations, None)?;
            let warehouse = settings.warehouse()?;
            let entries = Quarantine::new(warehouse).list().await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&entries).expect("entries serialise"));
            } else if entries.is_empty() {
                println!("quarantine is empty ({})", Quarantine::new(warehouse).url());
            } else {
                for e in &entries {
                    println!(
                        "{:<7} {:<5} rows={:<6} {}\n        reason: {}\n        kept at: {}",
                        e.stream,
                        format!("{:?}", e.kind).to_lowercase(),
                        e.rows,
                        e.source,
                        e.reason,
                        e.data
                    );
                }
            }
        }
        Command::Tags {
            customer_id,
            locations,
            version,
            at,
            json,
        } => {
            let settings = settings(&cli.config, locations, None)?;
            let warehouse = settings.warehouse()?;
            let version = match at {
                Some(at) => Some(snapshots::version_at(warehouse, parse_time("--at", &at)?).await?),
                None => version,
            };
            let sql = format!(
                "SELECT family, tag, value, score, as_of FROM {TAGS_TABLE} WHERE customer_id = '{}' ORDER BY family, tag",
                customer_id.replace('\'', "''")
            );
            let batches = query_published(warehouse, TAGS_TABLE, version, &sql).await?;
            if batches.iter().all(|b| b.num_rows() == 0) {
                eprintln!("no tags for customer '{customer_id}'");
            }
            print_rows(&batches, json);
        }
        Command::Serve { locations, listen } => {
            let stop = StopSignals::install()?;
            let settings = Settings::resolve(&CliSettings {
                config: cli.config.clone(),
                warehouse: locations.warehouse,
                listen,
                serve_token: std::env::var("TAGFLOW_SERVE_TOKEN").ok(),
                ..Default::default()
            })?;
            let warehouse = settings.warehouse()?.clone();
            run::check_locations(&[&warehouse]).await?;
            tagflow::hold::point("serve").await;
            let server = tagflow::serve::start(warehouse, settings.serve, stop.received()).await?;
            // Scripts and tests read the bound address (useful with port 0) from this line.
            println!("listening on http://{}", server.addr);
            server.wait().await?;
        }
        Command::Compact { locations, json } => {
            let settings = settings(&cli.config, locations, None)?;
            let report = run::compact(&settings).await?;
            match json {
                true => println!("{}", serde_json::to_string_pretty(&report).expect("report serialises")),
                false => print!("{}", report.render()),
            }
        }
        Command::Snapshots { locations, json } => {
            let settings = settings(&cli.config, locations, None)?;
            let list = snapshots::list(settings.warehouse()?).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&list).expect("snapshots serialise"));
            } else {
                println!(
                    "{:>7}  {:<25} {:<13} {:<25} {:>9} {:>9} {:>8} {:>8} {:>8}  rows per tag",
                    "version", "committed", "operation", "as_of", "rows", "customers", "entered", "exited", "changed"
                );
                for s in &list {
                    let time = |t: Option<chrono::DateTime<chrono::Utc>>| {
                        t.map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
                            .unwrap_or_else(|| "-".into())
                    };
                    let count = |n: Option<u64>| n.map(|n| n.to_string()).unwrap_or_else(|| "-".into());
                    let changes = s.changes.unwrap_or_default();
                    let per_tag: Vec<String> = s
                        .segments
                        .iter()
                        .map(|(tag, values)| format!("{tag}={}", values.values().sum::<u64>()))
                        .collect();
                    println!(
                        "{:>7}  {:<25} {:<13} {:<25} {:>9} {:>9} {:>8} {:>8} {:>8}  {}",
                        s.version,
                        time(s.committed_at),
                        s.operation,
                        time(s.as_of),
                        count(s.rows),
                        count(s.customers),
                        count(s.changes.map(|_| changes.entered as u64)),
                        count(s.changes.map(|_| changes.exited as u64)),
                        count(s.changes.map(|_| changes.changed as u64)),
                        per_tag.join(" ")
                    );
                }
            }
        }
        Command::Segments {
            locations,
            since,
            tag,
            json,
        } => {
            let settings = settings(&cli.config, locations, None)?;
            let since = since.as_deref().map(|since| parse_time("--since", since)).transpose()?;
            let rows: Vec<snapshots::SegmentFlow> = snapshots::segments(settings.warehouse()?, since)
                .await?
                .into_iter()
                .filter(|r| tag.as_ref().is_none_or(|t| &r.tag == t))
                .collect();
            if json {
                println!("{}", serde_json::to_string_pretty(&rows).expect("segments serialise"));
            } else {
                println!(
                    "{:>7}  {:<25} {:<20} {:<20} {:>9} {:>8} {:>8}",
                    "version", "as_of", "tag", "value", "size", "inflow", "outflow"
                );
                for r in &rows {
                    println!(
                        "{:>7}  {:<25} {:<20} {:<20} {:>9} {:>8} {:>8}",
                        r.version,
                        r.as_of.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                        r.tag,
                        r.value,
                        r.size,
                        r.inflow,
                        r.outflow
                    );
                }
            }
        }
        Command::Runs { locations, limit, json } => {
            let settings = settings(&cli.config, locations, None)?;
            let warehouse = settings.warehouse()?;
            let sql = format!(
                "SELECT run_id, status, exit_code, as_of, started_at, finished_at, files_read, events, \
                 files_quarantined, rows_quarantined, published_version, error, jobs \
                 FROM {RUNS_TABLE} ORDER BY started_at DESC LIMIT {limit}"
            );
            let batches = query_published(warehouse, RUNS_TABLE, None, &sql).await?;
            print_rows(&batches, json);
        }
    }
    Ok(())
}

/// Rows as tab-separated text with a header, or as a JSON array.
fn print_rows(batches: &[arrow::record_batch::RecordBatch], json: bool) {
    if json {
        let mut writer = arrow::json::ArrayWriter::new(Vec::new());
        let batches: Vec<&arrow::record_batch::RecordBatch> = batches.iter().collect();
        writer.write_batches(&batches).expect("rows serialise");
        writer.finish().expect("rows serialise");
        let out = writer.into_inner();
        println!(
            "{}",
            if out.is_empty() {
                "[]"
            } else {
                std::str::from_utf8(&out).expect("utf8")
            }
        );
        return;
    }
    if let Some(first) = batches.first() {
        let names: Vec<&str> = first.schema_ref().fields().iter().map(|f| f.name().as_str()).collect();
        println!("{}", names.join("\t"));
    }
    for batch in batches {
        for row in 0..batch.num_rows() {
            let cells: Vec<String> = batch
                .columns()
                .iter()
                .map(|c| arrow::util::display::array_value_to_string(c, row).unwrap_or_default())
                .collect();
            println!("{}", cells.join("\t"));
        }
    }
}
