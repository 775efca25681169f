//! Jobs: discover the SQL tag jobs under `sql/`, order them by their dependencies, plan
//! them with DataFusion and run them at an as-of time.
//!
//! Owns: the job header format, parameters, dependency order, planning and execution.
//! Must not: read landing files (it gets the counted events from `sources`) or write
//! anything (it hands its rows to `publish`).
//!
//! A job is a `.sql` file whose leading `--` comment block is a TOML header:
//!
//! ```sql
//! -- name = "low_credit"
//! -- family = "risk"
//! -- description = "3+ cancelled or failed payments in the last 30 days"
//! -- inputs = ["orders"]
//! -- [params]
//! -- window_days = 30
//! -- min_events = 3
//! SELECT customer_id, 'true' AS value, CAST(COUNT(*) AS DOUBLE) AS score
//! FROM orders WHERE ... event_day > {{as_of_day}} - {{window_days}} ...
//! ```
//!
//! `kind = "measure"` marks a shared measure (materialised once, read by tags through
//! `inputs`); the default kind is `tag`, whose output is `customer_id, value, score`.

mod catalog;
mod exec;
mod header;

pub use catalog::{Catalog, CatalogError, Job, JobKind, ParamOverrides, ParamValue};
pub use exec::{run_jobs, JobError, JobOutput, JobRun};
