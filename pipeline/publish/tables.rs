//! The names of the Delta tables tagflow publishes under the warehouse: the one place that
//! spells them.
//!
//! Owns: the table names. Must not: hold anything else.

/// The published tags: one row per customer and tag, the latest as-of.
pub const TAGS_TABLE: &str = "customer_tags";

/// What changed in `customer_tags` at each version (entered, exited, changed).
pub const CHANGES_TABLE: &str = "tag_changes";

/// The tags as they stood at the end of past days, one partition per day (backfills).
pub const HISTORY_TABLE: &str = "customer_tags_history";

/// One row per run, succeeded or failed.
pub const RUNS_TABLE: &str = "job_runs";

/// One row per marketing task: did it work (the catalog's measure `task_results`).
pub const TASKS_TABLE: &str = "task_results";
