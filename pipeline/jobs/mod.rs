//! Jobs: discover the SQL tag jobs under `sql/`, order them by their dependencies, plan
//! them with DataFusion and run them at an as-of time.
//!
//! Owns: the job header format, parameters, dependency order, planning and execution, and
//! on a cluster the order of a full rebuild's queries ([`rebuild`]).
//! Must not: read landing files itself (it gets the counted events from `sources`, or, on a
//! cluster, plans `sources`' landing scan for the executors) or write anything (it hands
//! its rows to `publish`) but the input files it stages for a cluster's executors
//! ([`engine`]).
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
//! Three kinds of job:
//!
//! - `kind = "state"` reads event streams and derives rows of a durable state table. Each
//!   batch of new events is folded into the table by the header's `key` and `[merge]` rules
//!   (`sum`, `min`, `max`, `{ first_by = [...] }`, `{ last_by = [...] }`); a `day_column` with a `retain_days`
//!   parameter drops rows older than that many days. State is what makes a refresh cost
//!   what is new rather than the whole history; a fold also rewrites only the segments of
//!   the table its rows touch (days, or the segments holding its keys: [`StateTable`]).
//! - `kind = "measure"`: a shared table computed from state (once per run) and read by tags.
//! - the default kind, `tag`, reads state and measures and returns `customer_id, value,
//!   score`.
//!
//! What SQL cannot say is a function tagflow registers in every job's session
//! ([`functions`]: the BG/NBD fit and predictions), so tags stay SQL.

pub mod bgnbd;
mod catalog;
mod checks;
pub mod codec;
mod customers;
pub mod engine;
mod exec;
pub mod functions;
mod header;
mod rebuild;

pub use catalog::{
    timestamp_literal, Catalog, CatalogError, Definitions, Job, JobKind, MergeFn, MergeRule, ParamOverrides,
    ParamValue, Scope, StateSpec,
};
pub use checks::{
    evaluate as evaluate_checks, Baseline, CheckFailure, Checks, Drift, GateError, GateReport, OnData, Segments,
};
pub use customers::{members, CustomerBits, Numbering, CUSTOMER_ID};
pub use engine::{Cluster, ClusterRun, Engine, EngineError};
pub use exec::{fold_state, run_jobs, JobError, JobOutput, JobRun, Reuse, StateRun};
pub use rebuild::{Events, ReadInput, Rebuilt};
