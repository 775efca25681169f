//! tagflow: near-real-time customer tagging.
//!
//! Stages, one module each: [`sources`] read the landing zone, [`jobs`] plan and run the
//! SQL tag jobs, [`publish`] writes Delta tables, [`compact`] keeps them
//! small and fast to open, [`snapshots`] reads their versions, [`serve`] answers lookups over HTTP from the
//! latest published snapshot. [`run`] chains the batch stages and [`backfill`] replays them over past days; [`config`] resolves
//! settings; [`error`] maps failures to exit codes.

pub mod backfill;
pub mod compact;
pub mod config;
pub mod dedup;
pub mod demo;
pub mod error;
pub mod follow_metrics;
pub mod generate;
pub mod history;
pub mod hold;
pub mod jobs;
pub mod lock;
pub mod preview;
pub mod progress;
pub mod publish;
pub mod quarantine;
pub mod report;
pub mod run;
pub mod schema;
pub mod serve;
pub mod snapshots;
pub mod sources;
pub mod state;
pub mod storage;

pub use error::Error;
