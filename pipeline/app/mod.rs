//! The application: what a tagflow command does, composed from the stages below it.
//!
//! Owns: preparing a project ([`prepare`]), one run ([`run`]) and its batch, [`follow`],
//! backfills, erasures ([`forget`]), previews, the demo, run reports, the command error and its exit codes, and
//! `follow`'s metrics. Must not: be imported by any stage; the CLI alone sits above it.

pub mod backfill;
mod batch;
pub mod demo;
pub mod error;
pub mod follow;
pub mod forget;
pub mod metrics;
pub mod prepare;
pub mod preview;
pub mod report;
pub mod run;
