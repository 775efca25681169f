//! The command line's flags and subcommands (clap derive): what a user can type.
//!
//! Owns: flag names, defaults of flags, environment variables read by clap and their help.
//! Must not: do anything; [`super::commands`] runs what was parsed.

use std::path::PathBuf;

use chrono::NaiveDate;
use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Parser)]
#[command(
    name = "tagflow",
    version,
    about = "Near-real-time customer tagging: landing Parquet -> SQL tag jobs -> Delta table"
)]
pub struct Cli {
    /// Config file (default: ./tagflow.toml when present).
    #[arg(long, global = true, env = "TAGFLOW_CONFIG")]
    pub config: Option<PathBuf>,
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Human, env = "TAGFLOW_LOG_FORMAT")]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum LogFormat {
    Human,
    Json,
}

#[derive(Args, Default, Clone)]
pub struct Locations {
    /// Landing zone: local path or URL (file://, s3://).
    #[arg(long, env = "TAGFLOW_LANDING")]
    pub landing: Option<String>,
    /// Warehouse: local path or URL; `customer_tags` is published under it.
    #[arg(long, env = "TAGFLOW_WAREHOUSE")]
    pub warehouse: Option<String>,
    /// Folder of SQL tag jobs.
    #[arg(long, env = "TAGFLOW_SQL_DIR")]
    pub sql_dir: Option<PathBuf>,
    /// Folder of stream schemas.
    #[arg(long, env = "TAGFLOW_SCHEMAS_DIR")]
    pub schemas_dir: Option<PathBuf>,
}

#[derive(Subcommand)]
pub enum Command {
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
        /// Where a full evaluation runs its jobs: `embedded` (default) or a cluster's
        /// scheduler, `df://host:port` (see `tagflow cluster`).
        #[arg(long, env = "TAGFLOW_ENGINE")]
        engine: Option<String>,
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
        /// Where each day's jobs run: `embedded` (default) or a cluster's scheduler,
        /// `df://host:port` (see `tagflow cluster`).
        #[arg(long, env = "TAGFLOW_ENGINE")]
        engine: Option<String>,
    },
    /// Run a process of an Apache DataFusion Ballista cluster, on which `run --full` and
    /// `backfill --engine df://host:port` run their jobs. Each process reads the landing zone
    /// and the warehouse itself: give it the same locations and `[storage.*]` options.
    Cluster {
        #[command(subcommand)]
        command: ClusterCommand,
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
        /// Also speak the PostgreSQL wire protocol (read-only) on this address, e.g.
        /// 127.0.0.1:5433. The password comes from TAGFLOW_PG_PASSWORD or
        /// `[serve] pg_password` (never from a flag).
        #[arg(long, env = "TAGFLOW_PG_LISTEN")]
        pg_listen: Option<String>,
    },
    /// Did the marketing tasks work (task_results): each task's sends, replies, orders and
    /// rates, newest first, and totals per day and per ISO week of the tasks' first sends.
    Tasks {
        #[command(flatten)]
        locations: Locations,
        /// Only tasks first sent on or after this day (YYYY-MM-DD, UTC) or time (RFC 3339).
        #[arg(long)]
        since: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Forget customers (GDPR art. 17, PIPL art. 47): record them on the warehouse's
    /// suppression list (salted hashes) so no later read of the landing zone brings them
    /// back, then remove them from the state, the quarantine area, customer_tags, tag_changes
    /// and customer_tags_history. Completes any erasure a killed run left pending first.
    Forget {
        #[command(flatten)]
        locations: Locations,
        /// A customer id to forget (repeatable).
        #[arg(long = "customer", value_name = "ID")]
        customers: Vec<String>,
        /// A file of customer ids, one per line (`#` comments and blank lines skipped).
        #[arg(long, value_name = "FILE")]
        from_file: Option<PathBuf>,
        /// Also make every older version of the erased tables unreadable now: vacuum with
        /// zero retention, checkpoint, delete older log entries (time travel before the
        /// erasure is gone).
        #[arg(long)]
        purge_history: bool,
        /// Only complete the erasures a killed `forget` left pending.
        #[arg(long, conflicts_with_all = ["customers", "from_file", "status"])]
        resume: bool,
        /// List the erasure requests, pending and completed, with what they removed and when
        /// erasure is complete; changes nothing.
        #[arg(long, conflicts_with_all = ["customers", "from_file", "purge_history"])]
        status: bool,
        #[arg(long)]
        json: bool,
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
pub enum JobsCommand {
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
pub enum ClusterCommand {
    /// The scheduler: plans the jobs drivers submit and hands their tasks to executors.
    /// Prints `listening on df://<addr>` once bound.
    Scheduler {
        #[command(flatten)]
        locations: Locations,
        /// Address to listen on (port 0 picks a free port).
        #[arg(long, default_value = "127.0.0.1:50050")]
        listen: std::net::SocketAddr,
        /// An executor silent this long is taken as lost and its tasks run elsewhere: `30s`,
        /// `3m` (Ballista's default: 180s).
        #[arg(long, default_value = "180s", value_parser = parse_interval)]
        executor_timeout: std::time::Duration,
    },
    /// An executor: runs tasks, `--slots` at once, and serves its shuffle output to the
    /// others. One per machine.
    Executor {
        #[command(flatten)]
        locations: Locations,
        /// The scheduler, host:port.
        #[arg(long, default_value = "127.0.0.1:50050")]
        scheduler: String,
        /// Address of this executor's Flight service (a fixed port).
        #[arg(long, default_value = "127.0.0.1:50051")]
        listen: std::net::SocketAddr,
        /// The host name others reach this executor by (default: the --listen address).
        #[arg(long)]
        advertise: Option<String>,
        /// Tasks run at once (default: the cores).
        #[arg(long)]
        slots: Option<usize>,
        /// Where shuffle files are written (default: a temporary folder).
        #[arg(long)]
        work_dir: Option<PathBuf>,
        /// Seconds to keep trying to reach the scheduler at start.
        #[arg(long, default_value_t = 30)]
        connect_timeout: u16,
    },
}

#[derive(Subcommand)]
pub enum QuarantineCommand {
    /// List quarantined files and rows with their reasons.
    List {
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        locations: Locations,
    },
}

/// `500ms`, `2s`, `1m`: a number and a unit, longer than zero.
fn parse_interval(text: &str) -> Result<std::time::Duration, String> {
    let duration = tagflow::storage::units::parse_duration(text)?;
    if duration.is_zero() {
        return Err("the interval must be longer than zero".into());
    }
    Ok(duration)
}
