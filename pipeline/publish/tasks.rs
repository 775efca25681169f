//! Reading `task_results` (任务转化分析): each marketing task's rates, and totals per day and
//! per ISO week of the tasks' first sends, for `tagflow tasks` and the lookup API's
//! `/v1/tasks`. The table itself is the catalog's measure `sql/tasks/task_results.sql`,
//! published by [`super::measures`].
//!
//! Owns: the report's shape and its totals. Must not: compute attribution (that is SQL).

use std::collections::BTreeMap;

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Float64Type, Int64Type, TimeUnit, TimestampMicrosecondType};
use chrono::{DateTime, Datelike, Days, NaiveDate, Utc};

use super::tables::TASKS_TABLE;
use super::{query_published, PublishError};
use crate::storage::Location;

/// One task's row of `task_results`, with its rates.
#[derive(Debug, Clone, PartialEq, serde::Serialize, utoipa::ToSchema)]
pub struct TaskResult {
    pub task_id: String,
    pub task_type: Option<String>,
    /// RFC 3339.
    pub first_sent_at: String,
    #[serde(flatten)]
    pub figures: TaskFigures,
}

/// What a task, or the tasks of a period, achieved.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, utoipa::ToSchema)]
pub struct TaskFigures {
    /// Customers sent to.
    pub sent: i64,
    /// Of those, customers who replied at or after their first send.
    pub replied: i64,
    /// Of those, customers with an attributed order.
    pub ordered: i64,
    /// Attributed orders, their amount, the paid ones and their paid amount.
    pub orders: i64,
    pub order_amount: f64,
    pub paid_orders: i64,
    pub paid_amount: f64,
    /// replied / sent and ordered / sent (0 when nobody was sent to).
    pub reply_rate: f64,
    pub order_rate: f64,
}

/// Totals of the tasks first sent in one period.
#[derive(Debug, Clone, PartialEq, serde::Serialize, utoipa::ToSchema)]
pub struct PeriodTotals {
    /// The day (`YYYY-MM-DD`), or the Monday starting the ISO week.
    pub period: String,
    pub tasks: i64,
    #[serde(flatten)]
    pub figures: TaskFigures,
}

/// The tasks, newest first, with per-day and per-week totals (newest first).
#[derive(Debug, Clone, PartialEq, serde::Serialize, utoipa::ToSchema)]
pub struct TaskReport {
    /// The as-of time of the run that published the rows (RFC 3339; none without tasks).
    pub as_of: Option<String>,
    pub tasks: Vec<TaskResult>,
    pub days: Vec<PeriodTotals>,
    pub weeks: Vec<PeriodTotals>,
}

/// The report of the tasks first sent at or after `since` (all without), optionally of one
/// task only. A warehouse without `task_results` yet has no tasks.
pub async fn task_report(
    warehouse: &Location,
    since: Option<DateTime<Utc>>,
    task_id: Option<&str>,
) -> Result<TaskReport, PublishError> {
    let mut filters = Vec::new();
    if let Some(since) = since {
        filters.push(format!(
            "first_sent_at >= to_timestamp_micros({})",
            since.timestamp_micros()
        ));
    }
    if let Some(task) = task_id {
        filters.push(format!("task_id = '{}'", task.replace('\'', "''")));
    }
    let filter = match filters.is_empty() {
        true => String::new(),
        false => format!(" WHERE {}", filters.join(" AND ")),
    };
    let sql = format!("SELECT * FROM {TASKS_TABLE}{filter} ORDER BY first_sent_at DESC, task_id");
    let batches = match query_published(warehouse, TASKS_TABLE, None, &sql).await {
        Err(PublishError::NotFound { .. }) => Vec::new(),
        other => other?,
    };
    let (tasks, as_of) = decode(&batches).map_err(|e| PublishError::Read {
        url: super::table_url(warehouse, TASKS_TABLE).to_string(),
        source: e.into(),
    })?;
    let days = totals(&tasks, |day| day);
    let weeks = totals(&tasks, |day| {
        day - Days::new(u64::from(day.weekday().num_days_from_monday()))
    });
    Ok(TaskReport {
        as_of,
        tasks,
        days,
        weeks,
    })
}

/// The rows as tasks, and the as-of of the rows.
fn decode(batches: &[RecordBatch]) -> Result<(Vec<TaskResult>, Option<String>), arrow::error::ArrowError> {
    let mut tasks = Vec::new();
    let mut as_of = None;
    let time = DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()));
    for batch in batches {
        let column = |name: &str, to: &DataType| -> Result<_, arrow::error::ArrowError> {
            let array = batch
                .column_by_name(name)
                .ok_or_else(|| arrow::error::ArrowError::SchemaError(format!("task_results has no column '{name}'")))?;
            cast(array, to)
        };
        let (ids, types) = (
            column("task_id", &DataType::Utf8)?,
            column("task_type", &DataType::Utf8)?,
        );
        let (ids, types) = (ids.as_string::<i32>(), types.as_string::<i32>());
        let first = column("first_sent_at", &time)?;
        let first = first.as_primitive::<TimestampMicrosecondType>();
        let stamps = column("as_of", &time)?;
        let stamps = stamps.as_primitive::<TimestampMicrosecondType>();
        let counts: Vec<_> = ["sent", "replied", "ordered", "orders", "paid_orders"]
            .iter()
            .map(|name| column(name, &DataType::Int64))
            .collect::<Result<_, _>>()?;
        let counts: Vec<_> = counts.iter().map(|c| c.as_primitive::<Int64Type>()).collect();
        let amounts: Vec<_> = ["order_amount", "paid_amount"]
            .iter()
            .map(|name| column(name, &DataType::Float64))
            .collect::<Result<_, _>>()?;
        let amounts: Vec<_> = amounts.iter().map(|c| c.as_primitive::<Float64Type>()).collect();
        for i in 0..batch.num_rows() {
            let count = |c: usize| if counts[c].is_valid(i) { counts[c].value(i) } else { 0 };
            let amount = |c: usize| {
                if amounts[c].is_valid(i) {
                    amounts[c].value(i)
                } else {
                    0.0
                }
            };
            as_of = as_of.or_else(|| rfc3339(stamps.value(i)));
            tasks.push(TaskResult {
                task_id: ids.value(i).to_string(),
                task_type: types.is_valid(i).then(|| types.value(i).to_string()),
                first_sent_at: rfc3339(first.value(i)).unwrap_or_default(),
                figures: TaskFigures {
                    sent: count(0),
                    replied: count(1),
                    ordered: count(2),
                    orders: count(3),
                    paid_orders: count(4),
                    order_amount: amount(0),
                    paid_amount: amount(1),
                    reply_rate: 0.0,
                    order_rate: 0.0,
                }
                .with_rates(),
            });
        }
    }
    Ok((tasks, as_of))
}

fn rfc3339(micros: i64) -> Option<String> {
    DateTime::<Utc>::from_timestamp_micros(micros).map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true))
}

impl TaskFigures {
    fn with_rates(mut self) -> Self {
        let share = |part: i64| {
            if self.sent > 0 {
                part as f64 / self.sent as f64
            } else {
                0.0
            }
        };
        (self.reply_rate, self.order_rate) = (share(self.replied), share(self.ordered));
        self
    }

    fn add(&mut self, other: &TaskFigures) {
        self.sent += other.sent;
        self.replied += other.replied;
        self.ordered += other.ordered;
        self.orders += other.orders;
        self.order_amount += other.order_amount;
        self.paid_orders += other.paid_orders;
        self.paid_amount += other.paid_amount;
    }
}

/// The tasks' figures summed per period of their first send's UTC day, newest first.
fn totals(tasks: &[TaskResult], period_of: impl Fn(NaiveDate) -> NaiveDate) -> Vec<PeriodTotals> {
    let mut periods: BTreeMap<NaiveDate, (i64, TaskFigures)> = BTreeMap::new();
    for task in tasks {
        let Ok(first) = DateTime::parse_from_rfc3339(&task.first_sent_at) else {
            continue;
        };
        let entry = periods.entry(period_of(first.date_naive())).or_default();
        entry.0 += 1;
        entry.1.add(&task.figures);
    }
    periods
        .into_iter()
        .rev()
        .map(|(period, (tasks, figures))| PeriodTotals {
            period: period.to_string(),
            tasks,
            figures: figures.with_rates(),
        })
        .collect()
}
