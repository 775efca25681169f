//! The job catalog: discovery, header validation, parameters and dependency order.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::datatypes::{DataType, Schema, SchemaRef};
use chrono::{DateTime, Utc};
use datafusion::catalog::MemTable;
use datafusion::logical_expr::LogicalPlan;
use datafusion::prelude::SessionContext;
use serde::{Deserialize, Serialize};

use super::checks::Checks;
use super::header::{self, header_line_mentioning, placeholders, substitute, Defaults};
use crate::sources::schema::Schemas;

/// The tables a state job's merge SQL reads: its current rows and the batch's new rows.
pub const CURRENT_ROWS: &str = "current_rows";
pub const NEW_ROWS: &str = "new_rows";

/// Built-in placeholders available to every job.
pub const BUILTIN_PARAMS: [&str; 2] = ["as_of", "as_of_day"];

/// The columns a tag job returns.
pub const TAG_OUTPUT_COLUMNS: [&str; 3] = ["customer_id", "value", "score"];

#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("cannot read job folder {dir}: {source}")]
    Io {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}:{line}: header error: {message}", file.display())]
    Header {
        file: PathBuf,
        line: usize,
        message: String,
    },
    #[error("{}:{line}: {message}", file.display())]
    Invalid {
        file: PathBuf,
        line: usize,
        message: String,
    },
    #[error("job '{name}' is defined twice: {} and {}", first.display(), second.display())]
    Duplicate {
        name: String,
        first: PathBuf,
        second: PathBuf,
    },
    #[error("dependency cycle between jobs: {}", jobs.join(" -> "))]
    Cycle { jobs: Vec<String> },
    #[error("{}:{line}: SQL does not plan: {message}", file.display())]
    Plan {
        file: PathBuf,
        line: usize,
        message: String,
    },
    #[error("parameter override [params.{job}] {param}: {message}")]
    Override {
        job: String,
        param: String,
        message: String,
    },
    #[error("no jobs (*.sql) found under {0}")]
    Empty(PathBuf),
    #[error("no job named '{name}' (see `tagflow jobs list`)")]
    UnknownJob { name: String },
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobKind {
    /// Produces `customer_id, value, score` rows of one tag.
    #[default]
    Tag,
    /// A shared intermediate table, computed once and read by other jobs.
    Measure,
    /// Durable per-customer state, folded batch by batch from new events: the only kind of
    /// job that reads event streams. See [`StateSpec`].
    State,
}

/// How two rows of a state table with the same key combine into one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum MergeRule {
    /// `"sum"`, `"min"` or `"max"`.
    Simple(MergeFn),
    /// `{ first_by = ["paid_time", "paid_event_id"] }`: the value of the row that sorts
    /// first by these columns (ascending, nulls last).
    FirstBy { first_by: Vec<String> },
    /// `{ last_by = ["event_time", "event_id"] }`: the value of the row that sorts last by
    /// these columns (the first descending, nulls last): the latest of a status.
    LastBy { last_by: Vec<String> },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MergeFn {
    Sum,
    Min,
    Max,
}

impl MergeRule {
    /// Merging the same row twice changes nothing (min, max, first_by), so duplicates of
    /// events the de-duplication memory no longer reaches cannot change the table.
    pub fn is_idempotent(&self) -> bool {
        !matches!(self, MergeRule::Simple(MergeFn::Sum))
    }

    /// A row-by-row rule's name and the columns it orders the rows by (`first_by`, `last_by`).
    fn order_columns(&self) -> Option<(&'static str, &[String])> {
        match self {
            MergeRule::Simple(_) => None,
            MergeRule::FirstBy { first_by } => Some(("first_by", first_by)),
            MergeRule::LastBy { last_by } => Some(("last_by", last_by)),
        }
    }

    fn to_sql(&self, column: &str) -> String {
        let ordered_by = |columns: &[String], direction: &str| {
            let order: Vec<String> = columns
                .iter()
                .map(|c| format!("{} {direction} NULLS LAST", quote(c)))
                .collect();
            format!("first_value({} ORDER BY {})", quote(column), order.join(", "))
        };
        match self {
            MergeRule::Simple(MergeFn::Sum) => format!("SUM({})", quote(column)),
            MergeRule::Simple(MergeFn::Min) => format!("MIN({})", quote(column)),
            MergeRule::Simple(MergeFn::Max) => format!("MAX({})", quote(column)),
            MergeRule::FirstBy { first_by } => ordered_by(first_by, "ASC"),
            MergeRule::LastBy { last_by } => ordered_by(last_by, "DESC"),
        }
    }
}

/// `at` as a SQL literal of the event times' type, `Timestamp(µs, "UTC")`.
pub fn timestamp_literal(at: DateTime<Utc>) -> String {
    format!("arrow_cast({}, 'Timestamp(µs, \"UTC\")')", at.timestamp_micros())
}

/// The parameter of a state job with a `day_column`: how many days of rows it keeps.
pub const RETAIN_DAYS_PARAM: &str = "retain_days";

/// What makes a job a state job: its key, merge rules and retention.
#[derive(Debug, Clone, Serialize)]
pub struct StateSpec {
    pub key: Vec<String>,
    pub merge: BTreeMap<String, MergeRule>,
    pub day_column: Option<String>,
}

pub(super) fn quote(identifier: &str) -> String {
    format!("\"{}\"", identifier.replace('"', "\"\""))
}

/// A parameter value, rendered into SQL as a literal.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum ParamValue {
    Int(i64),
    Float(f64),
    Text(String),
    Bool(bool),
}

impl ParamValue {
    fn from_toml(value: &toml::Value) -> Option<Self> {
        match value {
            toml::Value::Integer(i) => Some(ParamValue::Int(*i)),
            toml::Value::Float(f) if f.is_finite() => Some(ParamValue::Float(*f)),
            toml::Value::String(s) => Some(ParamValue::Text(s.clone())),
            toml::Value::Boolean(b) => Some(ParamValue::Bool(*b)),
            _ => None,
        }
    }

    /// A SQL literal of this value.
    pub fn to_sql(&self) -> String {
        match self {
            ParamValue::Int(i) => i.to_string(),
            // `{:?}` always keeps a decimal point or exponent, so DataFusion reads a float.
            ParamValue::Float(f) => format!("{f:?}"),
            ParamValue::Text(s) => format!("'{}'", s.replace('\'', "''")),
            ParamValue::Bool(b) => if *b { "TRUE" } else { "FALSE" }.to_string(),
        }
    }

    /// An override replaces a default of the same type (an integer may replace a float).
    fn accepts(&self, other: &ParamValue) -> Option<ParamValue> {
        match (self, other) {
            (ParamValue::Float(_), ParamValue::Int(i)) => Some(ParamValue::Float(*i as f64)),
            (a, b) if std::mem::discriminant(a) == std::mem::discriminant(b) => Some(b.clone()),
            _ => None,
        }
    }
}

impl std::fmt::Display for ParamValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ParamValue::Text(s) => write!(f, "{s:?}"),
            other => f.write_str(&other.to_sql()),
        }
    }
}

/// Parameter overrides from config: job name → parameter → value.
pub type ParamOverrides = BTreeMap<String, BTreeMap<String, toml::Value>>;

fn is_default(checks: &Checks) -> bool {
    *checks == Checks::default()
}

/// What a customer's output rows of a tag or measure job depend on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// Anything in its inputs (a percentile over every customer, customers sharing a
    /// device): the job is evaluated for everyone whenever anything changed. The default,
    /// so a job that declares nothing is always exact.
    #[default]
    All,
    /// Only the customer's own rows of its inputs (joins and groups by `customer_id`): a
    /// batch evaluates it for the customers whose inputs changed and keeps everyone
    /// else's rows. Every input and the output must have a `customer_id` column.
    Customer,
}

/// The tables tagflow publishes itself, which no measure may be published as (the names of
/// `publish::tables`, spelled here because jobs sit below publish).
const RESERVED_TABLES: [&str; 4] = ["customer_tags", "tag_changes", "customer_tags_history", "job_runs"];

/// Per tag, the fingerprint of its definition ([`Catalog::definitions`]).
pub type Definitions = BTreeMap<String, String>;

/// One job of the catalog.
#[derive(Debug, Clone, Serialize)]
pub struct Job {
    pub name: String,
    pub kind: JobKind,
    pub family: Option<String>,
    pub description: String,
    pub inputs: Vec<String>,
    pub depends_on: Vec<String>,
    /// Parameters with their effective values (defaults, then overrides).
    pub params: BTreeMap<String, ParamValue>,
    /// Key, merge rules and retention of a state job.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state: Option<StateSpec>,
    /// Quality gates on a tag's output.
    #[serde(skip_serializing_if = "is_default")]
    pub checks: Checks,
    /// What a customer's rows depend on (tag and measure jobs).
    pub scope: Scope,
    /// With scope "customer": the column linking customers (see the header's `linked_by`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub linked_by: Option<String>,
    /// A measure published as a Delta table of this name (see the header's `publish`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub publish: Option<String>,
    pub file: PathBuf,
    #[serde(skip)]
    header_lines: usize,
    #[serde(skip)]
    header_text: String,
    #[serde(skip)]
    body: String,
}

impl Job {
    /// Tables this job reads: its inputs, then the jobs it depends on.
    pub fn reads(&self) -> impl Iterator<Item = &String> {
        self.inputs.iter().chain(self.depends_on.iter())
    }

    /// Whether this job's output can change within a UTC day without its inputs changing:
    /// it reads the as-of time itself (`{{as_of}}`), not only the day, or the clock.
    pub fn reads_time_of_day(&self) -> bool {
        let body = self.body.to_lowercase();
        placeholders(&self.body).iter().any(|(name, _)| name == "as_of")
            || ["now()", "current_timestamp", "current_date", "current_time"]
                .iter()
                .any(|clock| body.contains(clock))
    }

    /// The SQL to run at `as_of`: placeholders replaced, header lines kept blank so that
    /// line numbers in DataFusion's messages match the file.
    pub fn render_sql(&self, as_of: DateTime<Utc>) -> String {
        let body = substitute(&self.body, |name| match name {
            "as_of" => timestamp_literal(as_of),
            "as_of_day" => as_of.timestamp().div_euclid(86_400).to_string(),
            other => self.params[other].to_sql(),
        });
        format!("{}{}", "\n".repeat(self.header_lines), body)
    }

    /// Days of rows a state job keeps (`None`: all).
    pub fn retain_days(&self) -> Option<i64> {
        match self.params.get(RETAIN_DAYS_PARAM) {
            Some(ParamValue::Int(days)) if self.state.as_ref().is_some_and(|s| s.day_column.is_some()) => Some(*days),
            _ => None,
        }
    }

    /// A state job's table from the rows of the query `derived` (its rows derived from
    /// events, or those with a table's current rows): merged by key by its rules, within its
    /// retention at `as_of`. The same rows as [`Job::merge_sql`] folding them into an empty
    /// table (a key's single row is its own merge). `columns` are the job's output columns,
    /// in order.
    pub fn rebuild_sql(&self, derived: &str, columns: &[String], as_of: DateTime<Utc>) -> String {
        let retention = self
            .retention_filter(as_of)
            .map(|filter| format!("\nWHERE {filter}"))
            .unwrap_or_default();
        format!(
            "SELECT * FROM (\n\
             SELECT {} FROM (\n{derived}\n) AS new_rows GROUP BY {}\n\
             ) AS merged_rows{retention}",
            self.merged_columns(columns),
            self.key_list()
        )
    }

    /// The select list merging a key's rows: each column by its rule, keys as they are.
    fn merged_columns(&self, columns: &[String]) -> String {
        let spec = self.state.as_ref().expect("a state job");
        let select: Vec<String> = columns
            .iter()
            .map(|c| match spec.merge.get(c) {
                Some(rule) => format!("{} AS {}", rule.to_sql(c), quote(c)),
                None => quote(c),
            })
            .collect();
        select.join(", ")
    }

    /// The condition a state table's rows meet at `as_of`: within its retention (`None`: a
    /// table kept whole).
    pub fn retention_filter(&self, as_of: DateTime<Utc>) -> Option<String> {
        let spec = self.state.as_ref()?;
        let (day, days) = (spec.day_column.as_ref()?, self.retain_days()?);
        Some(format!(
            "{} > {} - {days}",
            quote(day),
            as_of.timestamp().div_euclid(86_400)
        ))
    }

    /// The SQL that folds a state job's new rows (`new_rows`) into the current rows of the
    /// keys they touch (`current_rows`: the fold takes exactly those out of the table first,
    /// so no row here passes through untouched) at `as_of`: one row per key, each column
    /// merged by its rule, rows older than the retention dropped. A merge costs the batch,
    /// not the history. `columns` are the job's output columns, in order.
    ///
    /// With a `first_by` or `last_by` rule, only keys that occur more than once among the candidate rows
    /// are aggregated, and a key's single row passes through as it is (one row is its own
    /// merge). DataFusion evaluates `first_value(.. ORDER BY ..)` group by group, so this
    /// matters where most keys are new, as in `order_payments`; plain min/max/sum are
    /// vectorised, and for them the extra pass over the touched rows would cost more.
    pub fn merge_sql(&self, columns: &[String], as_of: DateTime<Utc>) -> String {
        let spec = self.state.as_ref().expect("a state job");
        let select = self.merged_columns(columns);
        let retention = self
            .retention_filter(as_of)
            .map(|filter| format!("\nWHERE {filter}"))
            .unwrap_or_default();
        let keys = self.key_list();
        let candidates =
            format!("WITH candidate_rows AS (SELECT * FROM {CURRENT_ROWS} UNION ALL SELECT * FROM {NEW_ROWS})");
        let row_by_row = spec.merge.values().any(|rule| rule.order_columns().is_some());
        if !row_by_row {
            return format!(
                "{candidates}\n\
                 SELECT * FROM (SELECT {select} FROM candidate_rows GROUP BY {keys}) AS kept_rows{retention}"
            );
        }
        let on_repeated = self.key_match("r");
        format!(
            "{candidates},\n\
             repeated_keys AS (SELECT {keys} FROM candidate_rows GROUP BY {keys} HAVING COUNT(*) > 1),\n\
             single_rows AS (SELECT c.* FROM candidate_rows c LEFT ANTI JOIN repeated_keys r ON {on_repeated}),\n\
             merged_rows AS (\n\
                 SELECT {select}\n\
                 FROM (SELECT c.* FROM candidate_rows c LEFT SEMI JOIN repeated_keys r ON {on_repeated}) AS repeated_rows\n\
                 GROUP BY {keys}\n\
             )\n\
             SELECT * FROM (SELECT * FROM single_rows UNION ALL SELECT * FROM merged_rows) AS kept_rows{retention}"
        )
    }

    /// The key columns, quoted, comma-separated.
    fn key_list(&self) -> String {
        let spec = self.state.as_ref().expect("a state job");
        let keys: Vec<String> = spec.key.iter().map(|k| quote(k)).collect();
        keys.join(", ")
    }

    /// Rows `c` of a table matched on the key with rows aliased `alias`.
    fn key_match(&self, alias: &str) -> String {
        let spec = self.state.as_ref().expect("a state job");
        let equal: Vec<String> = spec
            .key
            .iter()
            .map(|k| format!("c.{0} = {alias}.{0}", quote(k)))
            .collect();
        equal.join(" AND ")
    }

    /// Check a state job's planned output against its key and merge rules.
    fn check_state_output(&self, schema: &Schema) -> Result<(), CatalogError> {
        let spec = self.state.as_ref().expect("a state job");
        let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
        for column in spec.key.iter().chain(spec.merge.keys()) {
            if !names.contains(&column.as_str()) {
                return Err(self.invalid(
                    column,
                    format!("'{column}' is not a column of the job's output {names:?}"),
                ));
            }
        }
        for (rule, columns) in spec.merge.values().filter_map(MergeRule::order_columns) {
            if let Some(missing) = columns.iter().find(|c| !names.contains(&c.as_str())) {
                return Err(self.invalid(missing, format!("{rule} column '{missing}' is not an output column")));
            }
        }
        if let Some(column) = names
            .iter()
            .find(|n| !spec.key.iter().any(|k| k == *n) && !spec.merge.contains_key(**n))
        {
            return Err(self.invalid(
                "merge",
                format!("output column '{column}' is neither in `key` nor under [merge]: say how two rows combine"),
            ));
        }
        Ok(())
    }

    fn invalid(&self, needle: &str, message: String) -> CatalogError {
        CatalogError::Invalid {
            file: self.file.clone(),
            line: header_line_mentioning(&self.header_text, needle),
            message,
        }
    }

    fn plan_error(&self, message: String) -> CatalogError {
        // DataFusion's parser says "at Line: N, Column: M"; otherwise point at the body.
        let line = message
            .split("Line: ")
            .nth(1)
            .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(self.header_lines + 1);
        CatalogError::Plan {
            file: self.file.clone(),
            line,
            message,
        }
    }
}

/// All jobs, in an order where every job comes after what it reads.
#[derive(Debug, Clone)]
pub struct Catalog {
    pub jobs: Vec<Job>,
    pub dir: PathBuf,
}

impl Catalog {
    /// Discover every `*.sql` under `dir` (recursively), parse and order them.
    /// `streams` are the tables the landing zone provides.
    pub fn load(dir: &Path, streams: &[String]) -> Result<Self, CatalogError> {
        Self::load_with(dir, streams, None)
    }

    /// [`Catalog::load`], with `candidate` (a job file anywhere) in place of the job of the
    /// same name, or added to the catalog if it is new: a definition to preview.
    pub fn load_with(dir: &Path, streams: &[String], candidate: Option<&Path>) -> Result<Self, CatalogError> {
        let mut files = Vec::new();
        collect_sql_files(dir, &mut files)?;
        files.sort();
        if files.is_empty() {
            return Err(CatalogError::Empty(dir.to_path_buf()));
        }
        let mut jobs: BTreeMap<String, Job> = BTreeMap::new();
        for file in files {
            let text = std::fs::read_to_string(&file).map_err(|source| CatalogError::Io {
                dir: file.clone(),
                source,
            })?;
            let defaults = Defaults::for_folder(dir, file.parent().unwrap_or(dir))?;
            let job = parse_job(&file, &text, &defaults)?;
            if let Some(existing) = jobs.get(&job.name) {
                return Err(CatalogError::Duplicate {
                    name: job.name.clone(),
                    first: existing.file.clone(),
                    second: job.file,
                });
            }
            jobs.insert(job.name.clone(), job);
        }
        if let Some(file) = candidate {
            let text = std::fs::read_to_string(file).map_err(|source| CatalogError::Io {
                dir: file.to_path_buf(),
                source,
            })?;
            // The header defaults of the job it replaces, or of the catalog's folder.
            let stem = file.file_stem().and_then(|s| s.to_str()).unwrap_or_default();
            let folder = jobs.get(stem).and_then(|j| j.file.parent()).unwrap_or(dir);
            let defaults = Defaults::for_folder(dir, folder)?;
            let job = parse_job(file, &text, &defaults)?;
            jobs.insert(job.name.clone(), job);
        }
        for job in jobs.values() {
            for input in &job.inputs {
                let input_kind = jobs.get(input).map(|j| j.kind);
                let message = match (job.kind, input_kind) {
                    (JobKind::State, None) if streams.contains(input) => continue,
                    (JobKind::State, _) => format!("a state job reads event streams {streams:?} only, not '{input}'"),
                    (_, Some(JobKind::State | JobKind::Measure)) => continue,
                    (_, None) if streams.contains(input) => format!(
                        "'{input}' is an event stream: tag and measure jobs read state tables (kind = \"state\"), \
                         which are kept up to date batch by batch, or measures"
                    ),
                    _ => format!("unknown input '{input}' (inputs are state or measure jobs)"),
                };
                return Err(job.invalid(input, message));
            }
            if job.kind == JobKind::State && !job.depends_on.is_empty() {
                return Err(job.invalid("depends_on", "a state job reads event streams only".into()));
            }
            for dep in &job.depends_on {
                if !jobs.contains_key(dep) {
                    return Err(job.invalid(dep, format!("depends_on names unknown job '{dep}'")));
                }
            }
        }
        Ok(Catalog {
            jobs: order_by_dependencies(jobs)?,
            dir: dir.to_path_buf(),
        })
    }

    pub fn tags(&self) -> impl Iterator<Item = &Job> {
        self.jobs.iter().filter(|j| j.kind == JobKind::Tag)
    }

    pub fn state_jobs(&self) -> impl Iterator<Item = &Job> {
        self.jobs.iter().filter(|j| j.kind == JobKind::State)
    }

    /// Identifies what the state tables mean: every state job's SQL, key, merge rules and
    /// parameters. State written under another fingerprint is rebuilt from the landing zone.
    pub fn state_fingerprint(&self) -> String {
        let mut hasher = siphasher::sip128::SipHasher13::new();
        for job in self.state_jobs() {
            let described = serde_json::json!([job.name, job.inputs, job.params, job.state, job.body]);
            std::hash::Hash::hash(&described.to_string(), &mut hasher);
        }
        format!("{:032x}", siphasher::sip128::Hasher128::finish128(&hasher).as_u128())
    }

    /// What each tag means, as a fingerprint per tag: its SQL, kind, inputs, parameters and
    /// scope (which decides how a micro-batch computes it),
    /// and the fingerprints of every job it reads, directly or not (a changed measure or
    /// state job changes the tags that read it). Checks are not part of it. Two runs with the
    /// same fingerprint for a tag compute it the same way; its rows then move with the data
    /// alone.
    pub fn definitions(&self) -> Definitions {
        let mut of_job: BTreeMap<&str, String> = BTreeMap::new();
        // Jobs are in dependency order: whatever a job reads is fingerprinted before it.
        for job in &self.jobs {
            let upstream: Vec<&str> = job
                .reads()
                .filter_map(|r| of_job.get(r.as_str()).map(String::as_str))
                .collect();
            let mut described = serde_json::json!([
                job.name,
                job.kind,
                job.inputs,
                job.depends_on,
                job.params,
                job.state,
                job.scope,
                job.body,
                upstream
            ]);
            // Only where declared, so that other definitions keep their fingerprints.
            if let (Some(link), Some(parts)) = (&job.linked_by, described.as_array_mut()) {
                parts.push(serde_json::json!({ "linked_by": link }));
            }
            let mut hasher = siphasher::sip128::SipHasher13::new();
            std::hash::Hash::hash(&described.to_string(), &mut hasher);
            let fingerprint = format!("{:032x}", siphasher::sip128::Hasher128::finish128(&hasher).as_u128());
            of_job.insert(&job.name, fingerprint);
        }
        self.tags()
            .map(|j| (j.name.clone(), of_job[j.name.as_str()].clone()))
            .collect()
    }

    /// Keep only `names`, every job they read, directly or not, and every state job: state
    /// is folded from every batch whatever is evaluated (order is preserved).
    pub fn select(&mut self, names: &[String]) -> Result<(), CatalogError> {
        let mut wanted: BTreeSet<String> = BTreeSet::new();
        let mut pending: Vec<String> = names.to_vec();
        while let Some(name) = pending.pop() {
            let job = self
                .jobs
                .iter()
                .find(|j| j.name == name)
                .ok_or_else(|| CatalogError::UnknownJob { name: name.clone() })?;
            if wanted.insert(name) {
                pending.extend(job.reads().filter(|r| self.jobs.iter().any(|j| &j.name == *r)).cloned());
            }
        }
        self.jobs
            .retain(|j| j.kind == JobKind::State || wanted.contains(&j.name));
        Ok(())
    }

    /// Apply parameter overrides from config; unknown jobs or parameters and type
    /// mismatches are errors.
    pub fn apply_overrides(&mut self, overrides: &ParamOverrides) -> Result<(), CatalogError> {
        for (job_name, params) in overrides {
            let error = |param: &str, message: String| CatalogError::Override {
                job: job_name.clone(),
                param: param.to_string(),
                message,
            };
            let job = self
                .jobs
                .iter_mut()
                .find(|j| &j.name == job_name)
                .ok_or_else(|| error("*", format!("no job named '{job_name}'")))?;
            for (param, value) in params {
                let current = job.params.get(param).ok_or_else(|| {
                    error(
                        param,
                        format!(
                            "job '{job_name}' has no parameter '{param}' (it has: {:?})",
                            job.params.keys().collect::<Vec<_>>()
                        ),
                    )
                })?;
                let value = ParamValue::from_toml(value)
                    .and_then(|v| current.accepts(&v))
                    .ok_or_else(|| error(param, format!("expected a value like {current}, got {value}")))?;
                job.params.insert(param.clone(), value);
            }
        }
        Ok(())
    }

    /// Plan every job against empty tables of the right schemas, in order, so that SQL
    /// errors, undeclared tables and wrong tag outputs are found before anything runs.
    pub async fn validate(&self, schemas: &Schemas) -> Result<(), CatalogError> {
        self.plan_until(schemas, None).await.map(|_| ())
    }

    /// The DataFusion logical and physical plans of one job, as indented text.
    pub async fn explain(&self, schemas: &Schemas, job_name: &str) -> Result<(String, String), CatalogError> {
        let (job, ctx, plan) = self.plan_until(schemas, Some(job_name)).await?.expect("job planned");
        let physical = ctx
            .state()
            .create_physical_plan(&plan)
            .await
            .map_err(|e| job.plan_error(e.to_string()))?;
        let physical = datafusion::physical_plan::displayable(physical.as_ref())
            .indent(true)
            .to_string();
        let logical = plan.display_indent_schema().to_string();
        Ok((logical, physical))
    }

    /// Plan jobs in order against empty tables (each job sees only what it declares);
    /// stop at `stop_at` and return its context and logical plan.
    async fn plan_until(
        &self,
        schemas: &Schemas,
        stop_at: Option<&str>,
    ) -> Result<Option<(&Job, SessionContext, LogicalPlan)>, CatalogError> {
        if let Some(name) = stop_at.filter(|n| !self.jobs.iter().any(|j| j.name == *n)) {
            return Err(CatalogError::UnknownJob { name: name.to_string() });
        }
        let mut tables: BTreeMap<String, SchemaRef> = schemas
            .streams
            .iter()
            .map(|(name, s)| (name.clone(), s.arrow_schema()))
            .collect();
        let as_of = Utc::now();
        for job in &self.jobs {
            let ctx = SessionContext::new();
            super::functions::register(&ctx);
            for name in job.reads() {
                let table = MemTable::try_new(tables[name].clone(), vec![vec![]]).expect("empty table");
                ctx.register_table(name.as_str(), Arc::new(table))
                    .map_err(|e| job.plan_error(e.to_string()))?;
            }
            let plan = ctx
                .state()
                .create_logical_plan(&job.render_sql(as_of))
                .await
                .map_err(|e| job.plan_error(e.to_string()))?;
            let schema: Schema = plan.schema().as_arrow().clone();
            match job.kind {
                JobKind::Tag => check_tag_output(&schema).map_err(|m| job.plan_error(m))?,
                JobKind::State => job.check_state_output(&schema)?,
                JobKind::Measure => {}
            }
            if job.kind == JobKind::State {
                // The merge must plan too (e.g. first_value of a type, SUM of a string).
                let merge_ctx = SessionContext::new();
                for name in [CURRENT_ROWS, NEW_ROWS] {
                    let table = MemTable::try_new(Arc::new(state_schema(&schema)), vec![vec![]]).expect("empty table");
                    merge_ctx
                        .register_table(name, Arc::new(table))
                        .map_err(|e| job.plan_error(e.to_string()))?;
                }
                let columns: Vec<String> = schema.fields().iter().map(|f| f.name().clone()).collect();
                merge_ctx
                    .state()
                    .create_logical_plan(&job.merge_sql(&columns, as_of))
                    .await
                    .map_err(|e| job.invalid("merge", format!("the merge rules do not plan: {e}")))?;
            }
            if stop_at == Some(job.name.as_str()) {
                return Ok(Some((job, ctx, plan)));
            }
            tables.insert(job.name.clone(), Arc::new(schema));
        }
        Ok(None)
    }
}

/// The schema of a state table: the job's output with every column nullable (merged rows
/// keep the job's types; nullability is not a contract of state).
pub fn state_schema(planned: &Schema) -> Schema {
    Schema::new(
        planned
            .fields()
            .iter()
            .map(|f| f.as_ref().clone().with_nullable(true))
            .collect::<Vec<_>>(),
    )
}

/// A tag job returns exactly `customer_id` (string), `value` (any, published as text) and
/// `score` (numeric or null).
pub(super) fn check_tag_output(schema: &Schema) -> Result<(), String> {
    let names: BTreeSet<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
    let expected: BTreeSet<&str> = TAG_OUTPUT_COLUMNS.into_iter().collect();
    if names != expected {
        return Err(format!(
            "a tag job must return exactly the columns {TAG_OUTPUT_COLUMNS:?}, this one returns {:?}",
            schema.fields().iter().map(|f| f.name()).collect::<Vec<_>>()
        ));
    }
    let customer = schema.field_with_name("customer_id").expect("checked").data_type();
    if !matches!(customer, DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View) {
        return Err(format!("customer_id must be a string, not {customer}"));
    }
    let score = schema.field_with_name("score").expect("checked").data_type();
    if !(score.is_numeric() || *score == DataType::Null) {
        return Err(format!("score must be numeric or NULL, not {score}"));
    }
    Ok(())
}

fn collect_sql_files(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), CatalogError> {
    let io = |source| CatalogError::Io {
        dir: dir.to_path_buf(),
        source,
    };
    for entry in std::fs::read_dir(dir).map_err(io)? {
        let path = entry.map_err(io)?.path();
        if path.is_dir() {
            collect_sql_files(&path, out)?;
        } else if path.extension().is_some_and(|e| e == "sql") {
            out.push(path);
        }
    }
    Ok(())
}

fn parse_job(file: &Path, text: &str, defaults: &Defaults) -> Result<Job, CatalogError> {
    let parsed = header::parse(file, text, defaults)?;
    let h = parsed.header;
    let mut job = Job {
        name: h.name,
        kind: h.kind,
        family: h.family,
        description: h.description,
        inputs: h.inputs,
        depends_on: h.depends_on,
        params: BTreeMap::new(),
        state: None,
        checks: h.checks,
        scope: h.scope,
        linked_by: h.linked_by,
        publish: h.publish,
        file: file.to_path_buf(),
        header_lines: parsed.header_lines,
        header_text: parsed.header_text,
        body: parsed.body,
    };
    let stem = file.file_stem().and_then(|s| s.to_str()).unwrap_or_default();
    if job.name != stem {
        return Err(job.invalid(
            "name",
            format!("job name '{}' must match the file name '{stem}.sql'", job.name),
        ));
    }
    match (job.kind, &job.family) {
        (JobKind::Tag, None) => return Err(job.invalid("name", "a tag job needs a `family`".into())),
        (JobKind::Measure | JobKind::State, Some(_)) => {
            return Err(job.invalid("family", "only tag jobs have a `family`".into()))
        }
        _ => {}
    }
    if let Some((key, message)) = job.checks.problem(&job) {
        return Err(job.invalid(key, message));
    }
    if job.linked_by.is_some() && job.scope != Scope::Customer {
        return Err(job.invalid(
            "linked_by",
            "`linked_by` refines scope = \"customer\": a customer's rows read the rows linked to its own".into(),
        ));
    }
    if let Some(table) = &job.publish {
        if job.kind != JobKind::Measure {
            return Err(job.invalid(
                "publish",
                "only measure jobs are published as tables of their own (tags go to customer_tags)".into(),
            ));
        }
        let simple = table.starts_with(|c: char| c.is_ascii_lowercase())
            && table
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        if !simple || RESERVED_TABLES.contains(&table.as_str()) || table.starts_with('_') {
            return Err(job.invalid(
                "publish",
                format!("`publish = \"{table}\"`: a table name is lowercase letters, digits and `_`, and not one of {RESERVED_TABLES:?}"),
            ));
        }
    }
    if job.kind == JobKind::State && job.scope != Scope::All {
        return Err(job.invalid(
            "scope",
            "`scope` applies to tag and measure jobs (a state job is folded by its key)".into(),
        ));
    }
    let stateful = !h.key.is_empty() || !h.merge.is_empty() || h.day_column.is_some();
    if job.kind == JobKind::State {
        if h.key.is_empty() {
            return Err(job.invalid(
                "kind",
                "a state job needs a `key` (the columns that identify a row)".into(),
            ));
        }
        if let Some(day) = h.day_column.as_ref().filter(|d| !h.key.contains(d)) {
            return Err(job.invalid(
                "day_column",
                format!("day_column '{day}' must be one of the key columns"),
            ));
        }
        match (&h.day_column, h.params.get(RETAIN_DAYS_PARAM)) {
            (Some(_), Some(toml::Value::Integer(days))) if *days >= 1 => {}
            (Some(_), _) => {
                return Err(job.invalid(
                    "day_column",
                    format!("a state job with a day_column needs [params] {RETAIN_DAYS_PARAM} = <days, at least 1>"),
                ))
            }
            (None, Some(_)) => {
                return Err(job.invalid(RETAIN_DAYS_PARAM, format!("{RETAIN_DAYS_PARAM} needs a `day_column`")))
            }
            (None, None) => {}
        }
        if let Some(both) = h.key.iter().find(|k| h.merge.contains_key(*k)) {
            return Err(job.invalid(both, format!("'{both}' is a key column and cannot have a merge rule")));
        }
        job.state = Some(StateSpec {
            key: h.key,
            merge: h.merge,
            day_column: h.day_column,
        });
    } else if stateful {
        return Err(job.invalid(
            "kind",
            "key, merge and day_column belong to state jobs (kind = \"state\")".into(),
        ));
    }
    for (name, value) in &h.params {
        if BUILTIN_PARAMS.contains(&name.as_str()) {
            return Err(job.invalid(name, format!("parameter name '{name}' is reserved")));
        }
        let value = ParamValue::from_toml(value)
            .ok_or_else(|| job.invalid(name, format!("parameter '{name}' must be a number, string or boolean")))?;
        job.params.insert(name.clone(), value);
    }
    let used = placeholders(&job.body);
    for (name, body_line) in &used {
        if !job.params.contains_key(name) && !BUILTIN_PARAMS.contains(&name.as_str()) {
            return Err(CatalogError::Invalid {
                file: job.file.clone(),
                line: job.header_lines + body_line + 1,
                message: format!("unknown placeholder {{{{{name}}}}} (declare it under [params])"),
            });
        }
    }
    let retention = job.retain_days().map(|_| RETAIN_DAYS_PARAM);
    if let Some(unused) = job
        .params
        .keys()
        .find(|p| !used.iter().any(|(u, _)| u == *p) && Some(p.as_str()) != retention)
    {
        return Err(job.invalid(unused, format!("parameter '{unused}' is declared but never used")));
    }
    Ok(job)
}

/// Kahn's algorithm; ties broken by name so the order is stable.
fn order_by_dependencies(mut jobs: BTreeMap<String, Job>) -> Result<Vec<Job>, CatalogError> {
    let deps = |job: &Job, jobs: &BTreeMap<String, Job>| -> BTreeSet<String> {
        job.reads().filter(|n| jobs.contains_key(*n)).cloned().collect()
    };
    let mut pending: BTreeMap<String, BTreeSet<String>> =
        jobs.values().map(|j| (j.name.clone(), deps(j, &jobs))).collect();
    let mut ordered = Vec::with_capacity(jobs.len());
    while !pending.is_empty() {
        let ready: Vec<String> = pending
            .iter()
            .filter(|(_, d)| d.is_empty())
            .map(|(n, _)| n.clone())
            .collect();
        if ready.is_empty() {
            return Err(CatalogError::Cycle {
                jobs: find_cycle(&pending),
            });
        }
        for name in ready {
            pending.remove(&name);
            for d in pending.values_mut() {
                d.remove(&name);
            }
            ordered.push(jobs.remove(&name).expect("present"));
        }
    }
    Ok(ordered)
}

/// A cycle among the jobs that could not be ordered, for the error message.
fn find_cycle(pending: &BTreeMap<String, BTreeSet<String>>) -> Vec<String> {
    let mut path = vec![pending.keys().next().expect("non-empty").clone()];
    loop {
        let last = path.last().expect("non-empty");
        let next = pending[last]
            .iter()
            .next()
            .expect("blocked job has a pending dependency")
            .clone();
        if let Some(pos) = path.iter().position(|p| *p == next) {
            let mut cycle = path[pos..].to_vec();
            cycle.push(next);
            return cycle;
        }
        path.push(next);
    }
}
