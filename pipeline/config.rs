//! Configuration: `tagflow.toml`, environment variables and flags, merged (flags win over
//! environment, which wins over the file) into typed, validated [`Settings`].
//!
//! Owns: the config file format and the resolution of every setting.
//! Must not: touch storage beyond building locations, or run anything.

use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::Deserialize;

use crate::jobs::{engine, Engine, ParamOverrides};
use crate::publish::compact::CompactionSettings;
use crate::publish::live::{self, MergePolicy};
use crate::serve::pg::PgSettings;
use crate::serve::query::QueryLimits;
use crate::serve::ServeSettings;
use crate::sources;
use crate::storage::units::{parse_duration, Bounded};
use crate::storage::{dedup, lock};
use crate::storage::{Location, StorageError, StoreOptions};

/// The default config file, read when present in the working directory.
pub const DEFAULT_CONFIG_FILE: &str = "tagflow.toml";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config file {}: {message}", path.display())]
    Parse { path: PathBuf, message: String },
    #[error("missing setting `{key}`: pass --{flag}, set {env}, or add `{key} = ...` to tagflow.toml")]
    Missing {
        key: &'static str,
        flag: &'static str,
        env: &'static str,
    },
    /// A time given on the command line (`option` names it: `--as-of`, `--at`, `--since`).
    #[error("invalid {option} '{value}': expected an RFC 3339 time such as 2026-11-20T00:00:00Z")]
    Time { option: &'static str, value: String },
    #[error("{key}: {message}")]
    Invalid { key: &'static str, message: String },
    #[error(transparent)]
    Storage(#[from] StorageError),
}

/// `tagflow.toml`. Unknown keys are rejected.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// Landing zone: a local path or URL (`file://`, `s3://`).
    pub landing: Option<String>,
    /// Warehouse: where `customer_tags` and the quarantine area live.
    pub warehouse: Option<String>,
    /// Folder of tag jobs (default: `./sql`, else the catalog shipped with the source).
    pub sql_dir: Option<PathBuf>,
    /// Folder of stream schemas (default: `./schemas`, else the shipped ones).
    pub schemas_dir: Option<PathBuf>,
    /// Landing files fetched and decoded at once (default 8).
    pub read_concurrency: Option<usize>,
    /// Lifetime of the warehouse run lock without renewal, in seconds (default 600). A run
    /// renews it every third of that; a killed run's lock frees at once on the same host
    /// and after this long elsewhere.
    pub lock_ttl_secs: Option<u64>,
    /// How many days back (event days, counting the as-of day) the de-duplication memory
    /// reaches (default 400). It must cover the retention of every state table that sums.
    pub dedup_days: Option<u32>,
    /// Parameter overrides: `[params.<job>] <param> = <value>`.
    #[serde(default)]
    pub params: ParamOverrides,
    /// Object-store options per location: `[storage.landing]`, `[storage.warehouse]`.
    #[serde(default)]
    pub storage: StorageConfig,
    /// When and how the published tables are compacted: `[compaction]`.
    #[serde(default)]
    pub compaction: CompactionConfig,
    /// The lookup API (`tagflow serve`): `[serve]`.
    #[serde(default)]
    pub serve: ServeConfig,
    /// `tagflow follow`'s schedule: `[follow]`.
    #[serde(default)]
    pub follow: FollowConfig,
    /// How `follow` publishes: `[publish]`.
    #[serde(default)]
    pub publish: PublishConfig,
    /// Where the jobs of full recomputes and backfills run: `[engine]`.
    #[serde(default)]
    pub engine: EngineConfig,
}

/// `[engine]`: every key is optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EngineConfig {
    /// `embedded` (the default: in this process), or an Apache DataFusion Ballista cluster's
    /// scheduler, `df://host:port` (or `--engine`, `TAGFLOW_ENGINE`): `run --full` and
    /// `backfill` run their jobs there.
    pub url: Option<String>,
    /// Every shuffle read goes through the executors' Flight service, even between tasks
    /// of one executor (default false; tests use it to make shuffles cross the network).
    pub remote_shuffle_reads: Option<bool>,
    /// Partitions of a query's stages on the cluster (default: the driver's cores), so also
    /// the share of the landing files, the events and the state one task holds.
    pub partitions: Option<usize>,
}

/// `[publish]`: every key is optional (defaults in [`live`]).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublishConfig {
    /// Merge the live changes of `follow`'s micro-batches into `customer_tags` at most this
    /// long after the oldest was published (default 60s; 0s: every batch merges). The
    /// change feed and the lookup API get every batch at once.
    pub merge_every: Option<String>,
    /// ... or as soon as this many changes wait (default 1000000).
    pub merge_max_changes: Option<u64>,
}

/// `[follow]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FollowConfig {
    /// Cron expression (UTC; 5 fields, or 6 with seconds first) for full recomputes inside a
    /// follow session, e.g. `"0 3 * * *"`: the first batch at or after each time rebuilds the
    /// state from every landing file.
    pub full_cron: Option<String>,
}

/// `[serve]`: every key is optional (defaults in [`ServeSettings`]).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServeConfig {
    /// Address to listen on (default 127.0.0.1:8080).
    pub listen: Option<String>,
    /// Bearer token required on `/v1/*` (or `TAGFLOW_SERVE_TOKEN`); none: no auth.
    pub token: Option<String>,
    /// How often to check for a new published version (default 1s).
    pub reload_interval: Option<String>,
    /// Largest request body in KiB (default 1024).
    pub max_body_kb: Option<usize>,
    /// Ids per `customers:batchGet` (default 1000).
    pub max_batch: Option<usize>,
    /// Customers per segment page (default 1000).
    pub max_page: Option<usize>,
    /// Pinned (`?version=`, `?as_of=`) versions kept indexed in memory (default 2).
    pub pinned_versions: Option<usize>,
    /// `POST /v1/query`: rows returned at most (default 10000).
    pub query_max_rows: Option<usize>,
    /// `POST /v1/query`: time limit (default 10s).
    pub query_timeout: Option<String>,
    /// `POST /v1/query`: memory limit in MiB (default 256).
    pub query_memory_mb: Option<usize>,
    /// Also speak the PostgreSQL wire protocol on this address (or `--pg-listen`); off
    /// when unset. Queries share the `query_*` limits.
    pub pg_listen: Option<String>,
    /// The PostgreSQL user (default `tagflow`).
    pub pg_user: Option<String>,
    /// Its password (or `TAGFLOW_PG_PASSWORD`, which wins); required with `pg_listen`.
    pub pg_password: Option<String>,
    /// TLS for the PostgreSQL front: a PEM certificate chain and its PKCS#8 key.
    pub pg_tls_cert: Option<PathBuf>,
    pub pg_tls_key: Option<PathBuf>,
}

/// `[compaction]`: every key is optional (defaults in [`CompactionSettings`]).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CompactionConfig {
    /// Compact after a publish whose version is a multiple of this (default 25).
    pub every_versions: Option<u64>,
    /// ... or when `customer_tags` has more data files than this (default 200).
    pub max_files: Option<usize>,
    /// Target size of a compacted file in MiB (default 128).
    pub target_file_mb: Option<u64>,
    /// How long files removed from a table stay for readers of older versions: `7d`, `12h`,
    /// `30m`, `10s` (default 7d).
    pub vacuum_retention: Option<String>,
    /// A Delta checkpoint every this many commits (default 10).
    pub checkpoint_interval: Option<u32>,
}

/// `[storage.landing]`, `[storage.warehouse]`: each location's object-store options.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageConfig {
    #[serde(default)]
    pub landing: StoreOptions,
    #[serde(default)]
    pub warehouse: StoreOptions,
}

/// Settings given on the command line or in the environment (already merged by clap).
#[derive(Debug, Default, Clone)]
pub struct CliSettings {
    pub config: Option<PathBuf>,
    pub landing: Option<String>,
    pub warehouse: Option<String>,
    pub as_of: Option<String>,
    pub sql_dir: Option<PathBuf>,
    pub schemas_dir: Option<PathBuf>,
    /// `tagflow serve --listen`.
    pub listen: Option<String>,
    /// `TAGFLOW_SERVE_TOKEN`.
    pub serve_token: Option<String>,
    /// `tagflow serve --pg-listen`.
    pub pg_listen: Option<String>,
    /// `TAGFLOW_PG_PASSWORD`.
    pub pg_password: Option<String>,
    /// `--engine`, `TAGFLOW_ENGINE`.
    pub engine: Option<String>,
}

/// Everything a command needs, resolved and validated.
#[derive(Debug)]
pub struct Settings {
    pub landing: Option<Location>,
    pub warehouse: Option<Location>,
    pub sql_dir: PathBuf,
    pub schemas_dir: PathBuf,
    pub as_of: DateTime<Utc>,
    pub params: ParamOverrides,
    /// Run only these jobs (and what they read); empty: all. Set by `tagflow run --jobs`.
    pub jobs: Vec<String>,
    pub read_concurrency: usize,
    pub lock_ttl: std::time::Duration,
    pub dedup_days: u32,
    /// Recompute from every landing file instead of the new ones (`tagflow run --full`).
    pub full: bool,
    /// Publish even when a tag's declared checks fail (recorded as forced).
    pub force: bool,
    /// Draw progress bars on stdout (set by commands run at a terminal, see `progress`).
    pub progress: bool,
    pub compaction: CompactionSettings,
    /// When `follow`'s live changes merge into `customer_tags` (`[publish]`).
    pub merge: MergePolicy,
    pub serve: ServeSettings,
    /// When `follow` runs a full recompute (`[follow] full_cron`).
    pub full_cron: Option<croner::Cron>,
    /// Where the jobs of full recomputes and backfills run (`[engine]`).
    pub engine: Engine,
    /// The config file that was read, if any.
    pub config_file: Option<PathBuf>,
}

impl Settings {
    /// Resolve settings from the config file (explicit or `./tagflow.toml`) and the CLI.
    pub fn resolve(cli: &CliSettings) -> Result<Self, ConfigError> {
        let (file, config_file) = load_file(cli.config.as_deref())?;
        let base = config_file
            .as_deref()
            .and_then(Path::parent)
            .map(Path::to_path_buf)
            .unwrap_or_default();
        // Relative local paths in the file are relative to the file's folder.
        let from_file = |s: &String| -> String {
            if s.contains("://") || Path::new(s).is_absolute() {
                s.clone()
            } else {
                base.join(s).to_string_lossy().into_owned()
            }
        };
        let landing = cli.landing.clone().or(file.landing.as_ref().map(from_file));
        let warehouse = cli.warehouse.clone().or(file.warehouse.as_ref().map(from_file));
        let landing = landing
            .map(|l| Location::parse(&l, &file.storage.landing))
            .transpose()?;
        let warehouse = warehouse
            .map(|w| Location::parse(&w, &file.storage.warehouse))
            .transpose()?;
        let as_of = match &cli.as_of {
            None => Utc::now(),
            Some(value) => DateTime::parse_from_rfc3339(value)
                .map_err(|_| ConfigError::Time {
                    option: "--as-of",
                    value: value.clone(),
                })?
                .with_timezone(&Utc),
        };
        let sql_dir = cli
            .sql_dir
            .clone()
            .or(file.sql_dir.map(|p| base.join(p)))
            .unwrap_or_else(|| default_dir("sql"));
        let schemas_dir = cli
            .schemas_dir
            .clone()
            .or(file.schemas_dir.map(|p| base.join(p)))
            .unwrap_or_else(|| default_dir("schemas"));
        for (key, dir) in [("sql_dir", &sql_dir), ("schemas_dir", &schemas_dir)] {
            if !dir.is_dir() {
                return Err(ConfigError::Invalid {
                    key,
                    message: format!("{} is not a folder", dir.display()),
                });
            }
        }
        let read_concurrency = within("read_concurrency", file.read_concurrency, sources::READ_CONCURRENCY)?;
        let lock_ttl_secs = within("lock_ttl_secs", file.lock_ttl_secs, lock::LOCK_TTL_SECS)?;
        let dedup_days = within("dedup_days", file.dedup_days, dedup::DEDUP_DAYS)?;
        let compaction = compaction_settings(&file.compaction)?;
        let merge = merge_policy(&file.publish)?;
        let serve = serve_settings(&file.serve, cli)?;
        let full_cron = file
            .follow
            .full_cron
            .as_deref()
            .map(|text| {
                text.parse::<croner::Cron>().map_err(|e| ConfigError::Invalid {
                    key: "follow.full_cron",
                    message: format!("'{text}' is not a cron expression: {e}"),
                })
            })
            .transpose()?;
        let mut engine = match cli.engine.as_ref().or(file.engine.url.as_ref()) {
            None => Engine::Embedded,
            Some(text) => Engine::parse(text, file.engine.remote_shuffle_reads.unwrap_or(false)).map_err(|e| {
                ConfigError::Invalid {
                    key: "engine",
                    message: e.to_string(),
                }
            })?,
        };
        if let Engine::Cluster(cluster) = &mut engine {
            cluster.partitions = Some(within(
                "engine.partitions",
                file.engine.partitions,
                engine::partitions(),
            )?);
        }
        Ok(Settings {
            landing,
            warehouse,
            sql_dir,
            schemas_dir,
            as_of,
            params: file.params,
            jobs: Vec::new(),
            read_concurrency,
            lock_ttl: std::time::Duration::from_secs(lock_ttl_secs),
            dedup_days,
            full: false,
            force: false,
            progress: false,
            compaction,
            merge,
            serve,
            full_cron,
            engine,
            config_file,
        })
    }

    /// The cluster full evaluations run their jobs on, if one is set.
    pub fn cluster(&self) -> Option<&crate::jobs::Cluster> {
        match &self.engine {
            Engine::Cluster(cluster) => Some(cluster),
            Engine::Embedded => None,
        }
    }

    pub fn landing(&self) -> Result<&Location, ConfigError> {
        self.landing.as_ref().ok_or(ConfigError::Missing {
            key: "landing",
            flag: "landing",
            env: "TAGFLOW_LANDING",
        })
    }

    pub fn warehouse(&self) -> Result<&Location, ConfigError> {
        self.warehouse.as_ref().ok_or(ConfigError::Missing {
            key: "warehouse",
            flag: "warehouse",
            env: "TAGFLOW_WAREHOUSE",
        })
    }
}

fn merge_policy(config: &PublishConfig) -> Result<MergePolicy, ConfigError> {
    let every = match &config.merge_every {
        Some(text) => parse_duration(text).map_err(|message| ConfigError::Invalid {
            key: "publish.merge_every",
            message,
        })?,
        None => std::time::Duration::from_secs(live::MERGE_EVERY_SECS.default),
    };
    let limit = live::MERGE_EVERY_SECS.max;
    if every.as_secs() > limit {
        return Err(ConfigError::Invalid {
            key: "publish.merge_every",
            message: format!("at most {limit}s (a day)"),
        });
    }
    Ok(MergePolicy {
        every,
        max_changes: within(
            "publish.merge_max_changes",
            config.merge_max_changes,
            live::MERGE_MAX_CHANGES,
        )?,
    })
}

fn compaction_settings(config: &CompactionConfig) -> Result<CompactionSettings, ConfigError> {
    let defaults = CompactionSettings::default();
    let positive = |key: &'static str, value: Option<u64>, default: u64| match value {
        Some(0) => Err(ConfigError::Invalid {
            key,
            message: "must be at least 1".into(),
        }),
        other => Ok(other.unwrap_or(default)),
    };
    let retention = match &config.vacuum_retention {
        Some(text) => parse_duration(text).map_err(|message| ConfigError::Invalid {
            key: "compaction.vacuum_retention",
            message,
        })?,
        None => defaults.retention,
    };
    Ok(CompactionSettings {
        every_versions: positive(
            "compaction.every_versions",
            config.every_versions,
            defaults.every_versions,
        )?,
        max_files: positive(
            "compaction.max_files",
            config.max_files.map(|v| v as u64),
            defaults.max_files as u64,
        )? as usize,
        target_file_size: positive(
            "compaction.target_file_mb",
            config.target_file_mb,
            defaults.target_file_size / (1024 * 1024),
        )? * 1024
            * 1024,
        retention,
        checkpoint_interval: positive(
            "compaction.checkpoint_interval",
            config.checkpoint_interval.map(u64::from),
            u64::from(defaults.checkpoint_interval),
        )?
        .min(u64::from(u32::MAX)) as u32,
    })
}

fn serve_settings(config: &ServeConfig, cli: &CliSettings) -> Result<ServeSettings, ConfigError> {
    let defaults = ServeSettings::default();
    let invalid = |key: &'static str, message: String| ConfigError::Invalid { key, message };
    let count = |key: &'static str, value: Option<usize>, default: usize, max: usize| match value {
        None => Ok(default),
        Some(n) if (1..=max).contains(&n) => Ok(n),
        Some(n) => Err(invalid(key, format!("{n} is outside 1..={max}"))),
    };
    let duration = |key: &'static str, value: &Option<String>, default: std::time::Duration| match value {
        None => Ok(default),
        Some(text) => match parse_duration(text) {
            Ok(d) if !d.is_zero() => Ok(d),
            Ok(_) => Err(invalid(key, "must be longer than zero".into())),
            Err(message) => Err(invalid(key, message)),
        },
    };
    let listen = match cli.listen.as_ref().or(config.listen.as_ref()) {
        None => defaults.listen,
        Some(text) => text.parse().map_err(|_| {
            invalid(
                "serve.listen",
                format!("'{text}' is not an address such as 127.0.0.1:8080"),
            )
        })?,
    };
    let token = cli.serve_token.clone().or(config.token.clone());
    if let Some(token) = &token {
        if token.len() < 16 || token.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(invalid(
                "serve.token",
                "must be at least 16 characters with no spaces (the token itself is not shown)".into(),
            ));
        }
    }
    Ok(ServeSettings {
        pg: pg_settings(config, cli)?,
        listen,
        token,
        reload_interval: duration(
            "serve.reload_interval",
            &config.reload_interval,
            defaults.reload_interval,
        )?,
        max_body_bytes: count(
            "serve.max_body_kb",
            config.max_body_kb,
            defaults.max_body_bytes / 1024,
            1024 * 1024,
        )? * 1024,
        max_batch: count("serve.max_batch", config.max_batch, defaults.max_batch, 100_000)?,
        max_page: count("serve.max_page", config.max_page, defaults.max_page, 100_000)?,
        pinned_versions: count(
            "serve.pinned_versions",
            config.pinned_versions,
            defaults.pinned_versions,
            64,
        )?,
        query: QueryLimits {
            max_rows: count(
                "serve.query_max_rows",
                config.query_max_rows,
                defaults.query.max_rows,
                10_000_000,
            )?,
            timeout: duration("serve.query_timeout", &config.query_timeout, defaults.query.timeout)?,
            memory_bytes: count(
                "serve.query_memory_mb",
                config.query_memory_mb,
                defaults.query.memory_bytes / (1024 * 1024),
                1024 * 1024,
            )? * 1024
                * 1024,
        },
    })
}

/// The PostgreSQL front's settings: none unless an address is given; then a password is
/// required, and TLS takes a certificate and a key together.
fn pg_settings(config: &ServeConfig, cli: &CliSettings) -> Result<Option<PgSettings>, ConfigError> {
    let invalid = |key: &'static str, message: &str| ConfigError::Invalid {
        key,
        message: message.to_string(),
    };
    let Some(text) = cli.pg_listen.as_ref().or(config.pg_listen.as_ref()) else {
        return Ok(None);
    };
    let listen = text.parse().map_err(|_| {
        invalid(
            "serve.pg_listen",
            &format!("'{text}' is not an address such as 127.0.0.1:5433"),
        )
    })?;
    let user = config.pg_user.clone().unwrap_or_else(|| "tagflow".into());
    if user.is_empty() || user.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(invalid("serve.pg_user", "must be a name without spaces"));
    }
    let Some(password) = cli.pg_password.clone().or(config.pg_password.clone()) else {
        return Err(invalid(
            "serve.pg_password",
            "the PostgreSQL front needs a password: set TAGFLOW_PG_PASSWORD or [serve] pg_password",
        ));
    };
    if password.len() < 8 {
        return Err(invalid(
            "serve.pg_password",
            "must be at least 8 characters (the password itself is not shown)",
        ));
    }
    let tls = match (&config.pg_tls_cert, &config.pg_tls_key) {
        (Some(cert), Some(key)) => Some((cert.clone(), key.clone())),
        (None, None) => None,
        _ => return Err(invalid("serve.pg_tls_cert", "pg_tls_cert and pg_tls_key go together")),
    };
    Ok(Some(PgSettings {
        listen,
        user,
        password,
        tls,
    }))
}

/// Read the config file: the explicit one (which must exist) or `./tagflow.toml` if present.
pub fn load_file(explicit: Option<&Path>) -> Result<(FileConfig, Option<PathBuf>), ConfigError> {
    let path = match explicit {
        Some(p) => p.to_path_buf(),
        None if Path::new(DEFAULT_CONFIG_FILE).is_file() => PathBuf::from(DEFAULT_CONFIG_FILE),
        None => return Ok((FileConfig::default(), None)),
    };
    let text = std::fs::read_to_string(&path).map_err(|source| ConfigError::Read {
        path: path.clone(),
        source,
    })?;
    let config = parse(&text).map_err(|message| ConfigError::Parse {
        path: path.clone(),
        message,
    })?;
    Ok((config, Some(path)))
}

/// Parse config text; the message names the key and line of any error.
pub fn parse(text: &str) -> Result<FileConfig, String> {
    toml::from_str(text).map_err(|e| {
        let line = e.span().map(|s| text[..s.start].matches('\n').count() + 1);
        match line {
            Some(line) => format!("line {line}: {}", e.message()),
            None => e.message().to_string(),
        }
    })
}

/// `./<name>` when present, else the folder shipped with the source tree.
fn default_dir(name: &str) -> PathBuf {
    let local = PathBuf::from(name);
    if local.is_dir() {
        local
    } else {
        Path::new(env!("CARGO_MANIFEST_DIR")).join(name)
    }
}

/// `value` (its default when unset), checked against what its stage accepts.
fn within<T>(key: &'static str, value: Option<T>, bounds: Bounded<T>) -> Result<T, ConfigError>
where
    T: PartialOrd + Copy + std::fmt::Display,
{
    bounds
        .check(value)
        .map_err(|message| ConfigError::Invalid { key, message })
}
