//! tagflow: near-real-time customer tagging.
//!
//! Layers, bottom to top; a module imports only from its own layer and those below it
//! (`tests/it/layers.rs` checks this on every test run):
//!
//! 1. [`storage`]: object-store locations, state files, the warehouse lock and small units.
//! 2. [`sources`]: the landing zone: listing, schemas, normalising, quarantine.
//! 3. [`state`]: the incremental state (segments and their manifest).
//! 4. [`jobs`]: the catalog of SQL jobs, their execution and quality checks.
//! 5. [`publish`]: writers and readers of the Delta tables (table names in
//!    [`publish::tables`]), snapshots and compaction.
//! 6. [`serve`]: the lookup API over the latest published snapshot.
//! 7. [`config`]: composes each stage's settings from `tagflow.toml`, environment and flags.
//! 8. [`app`]: the application: prepare, run, follow, backfill, preview, demo, reports,
//!    errors and exit codes.
//!
//! The command line (`main.rs` and `cli/`) sits on top, in the binary. The data generator
//! ([`generate`]) stands beside the layers: it depends on [`storage`] only, and only the
//! application and the CLI use it.

pub mod storage;

pub mod sources;

pub mod state;

pub mod jobs;

pub mod publish;

pub mod serve;

pub mod config;

pub mod app;

pub mod generate;

pub use app::error::Error;
