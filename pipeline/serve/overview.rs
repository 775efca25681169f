//! Overviews for dashboards (and the console, [`super::console`]): segment sizes with their
//! daily inflow and outflow, the latest runs of `job_runs`, the quarantine area.
//!
//! Owns: turning the published versions, `customer_tags_history` and `job_runs` into those
//! overviews, and the cache of the per-version segment flows.
//! Must not: write anything, or shape HTTP responses (the routes in `api` do).

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::{Date32Array, Int64Array, StringArray};
use chrono::NaiveDate;
use serde::Serialize;
use utoipa::ToSchema;

use super::error::ApiError;
use super::query;
use crate::publish::snapshots::{self, SegmentFlow};
use crate::publish::tables::HISTORY_TABLE;
use crate::publish::{query_published, runs, PublishError};
use crate::sources::quarantine::{Entry, Quarantine};
use crate::storage::rows::try_typed_column;
use crate::storage::Location;

/// The per-version flows of every segment, computed once per served position (merged
/// version and feed version) and shared by the requests that ask at that position.
#[derive(Default)]
pub(crate) struct FlowCache {
    cached: tokio::sync::Mutex<Option<(Position, Arc<Vec<SegmentFlow>>)>>,
}

/// What the served view stands on: the merged version and the feed version applied.
pub(crate) type Position = (u64, Option<u64>);

impl FlowCache {
    /// The flows at `position`: cached, or read now (one reader at a time; the others wait
    /// for its answer rather than reading the same again).
    pub async fn flows(&self, warehouse: &Location, position: Position) -> Result<Arc<Vec<SegmentFlow>>, ApiError> {
        let mut cached = self.cached.lock().await;
        if let Some((at, flows)) = cached.as_ref() {
            if *at == position {
                return Ok(flows.clone());
            }
        }
        let flows = Arc::new(match snapshots::segments(warehouse, None).await {
            Err(PublishError::NotFound { .. }) => Vec::new(),
            other => other?,
        });
        *cached = Some((position, flows.clone()));
        Ok(flows)
    }
}

/// One value of a tag on one UTC day.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct DayFlow {
    /// The UTC day (`YYYY-MM-DD`) of the publishes' as-of times, or of a history snapshot.
    #[schema(value_type = String)]
    pub day: NaiveDate,
    pub value: String,
    /// Customers with the value at the end of the day: at the day's last published version,
    /// or in `customer_tags_history` for a day without a retained publish.
    pub size: u64,
    /// Customers who joined the value over the day's publishes (absent for a day known only
    /// from `customer_tags_history`).
    pub inflow: Option<u64>,
    /// Customers who left it over the day's publishes (absent likewise).
    pub outflow: Option<u64>,
    /// The day's last published version (absent for a history day).
    pub version: Option<u64>,
}

/// The flows of `tag` (and `value`, if given) per UTC day of the publishes' as-of times:
/// the size at each day's last version, the inflow and outflow summed over its versions.
/// `flows` are ordered oldest version first, as [`snapshots::segments`] returns them.
pub fn daily(flows: &[SegmentFlow], tag: &str, value: Option<&str>) -> Vec<DayFlow> {
    let wanted = flows
        .iter()
        .filter(|f| f.tag == tag && value.is_none_or(|v| f.value == v));
    // Per day: its last version, and per value the size at each version and the summed moves.
    let mut days: BTreeMap<NaiveDate, (u64, BTreeMap<&str, Moves>)> = BTreeMap::new();
    for flow in wanted {
        let (last, values) = days.entry(flow.as_of.date_naive()).or_default();
        *last = (*last).max(flow.version);
        let moves = values.entry(&flow.value).or_default();
        moves.inflow += flow.inflow;
        moves.outflow += flow.outflow;
        moves.sizes.push((flow.version, flow.size));
    }
    let mut out = Vec::new();
    for (day, (last, values)) in days {
        for (value, moves) in values {
            // A value missing from the day's last version has emptied by then.
            let size = moves.sizes.iter().find(|(v, _)| *v == last).map_or(0, |(_, n)| *n);
            out.push(DayFlow {
                day,
                value: value.to_string(),
                size,
                inflow: Some(moves.inflow),
                outflow: Some(moves.outflow),
                version: Some(last),
            });
        }
    }
    out
}

#[derive(Default)]
struct Moves {
    inflow: u64,
    outflow: u64,
    sizes: Vec<(u64, u64)>,
}

/// Add the days of `customer_tags_history` that `days` (from the publishes) lacks: sizes
/// only, as the backfill wrote them. Sorted by day and value.
pub async fn with_history(
    warehouse: &Location,
    mut days: Vec<DayFlow>,
    tag: &str,
    value: Option<&str>,
) -> Result<Vec<DayFlow>, ApiError> {
    let quote = |s: &str| s.replace('\'', "''");
    let value_filter = value.map_or(String::new(), |v| format!(" AND value = '{}'", quote(v)));
    let sql = format!(
        "SELECT snapshot_date, value, count(*) AS size FROM {HISTORY_TABLE} \
         WHERE tag = '{}'{value_filter} GROUP BY snapshot_date, value",
        quote(tag)
    );
    let batches = match query_published(warehouse, HISTORY_TABLE, None, &sql).await {
        Err(PublishError::NotFound { .. }) => Vec::new(),
        other => other?,
    };
    let published: std::collections::HashSet<NaiveDate> = days.iter().map(|d| d.day).collect();
    for batch in &batches {
        let (Some(dates), Some(values), Some(sizes)) = (
            try_typed_column::<Date32Array>(batch, "snapshot_date"),
            try_typed_column::<StringArray>(batch, "value"),
            try_typed_column::<Int64Array>(batch, "size"),
        ) else {
            return Err(ApiError::Unavailable(format!(
                "{HISTORY_TABLE} has an unexpected schema: {}",
                batch.schema()
            )));
        };
        for i in 0..batch.num_rows() {
            let Some(day) = dates.value_as_date(i) else { continue };
            if published.contains(&day) {
                continue;
            }
            days.push(DayFlow {
                day,
                value: values.value(i).to_string(),
                size: sizes.value(i) as u64,
                inflow: None,
                outflow: None,
                version: None,
            });
        }
    }
    days.sort_by(|a, b| (a.day, &a.value).cmp(&(b.day, &b.value)));
    Ok(days)
}

/// The latest `limit` rows of `job_runs`, newest first, as JSON objects; the `jobs` column
/// (JSON text in the table) is given as JSON.
pub async fn latest_runs(warehouse: &Location, limit: usize) -> Result<Vec<serde_json::Value>, ApiError> {
    let batches = match runs::latest(warehouse, limit).await {
        Err(PublishError::NotFound { .. }) => return Ok(Vec::new()),
        other => other?,
    };
    let mut rows = query::rows_json(&batches)?;
    for row in &mut rows {
        if let Some(jobs) = row.get_mut("jobs") {
            if let Some(parsed) = jobs.as_str().and_then(|text| serde_json::from_str(text).ok()) {
                *jobs = parsed;
            }
        }
    }
    Ok(rows)
}

/// Every quarantined landing file or set of rows, newest first.
pub async fn quarantined(warehouse: &Location) -> Result<Vec<Entry>, ApiError> {
    let mut entries = Quarantine::new(warehouse)
        .list()
        .await
        .map_err(|e| ApiError::Unavailable(format!("cannot read the quarantine area: {e}")))?;
    entries.sort_by(|a, b| b.quarantined_at.cmp(&a.quarantined_at).then(a.source.cmp(&b.source)));
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{TimeZone, Utc};

    fn flow(version: u64, day: u32, hour: u32, value: &str, size: u64, inflow: u64, outflow: u64) -> SegmentFlow {
        SegmentFlow {
            version,
            as_of: Utc.with_ymd_and_hms(2026, 11, day, hour, 0, 0).unwrap(),
            tag: "rfm_tier".into(),
            value: value.into(),
            size,
            inflow,
            outflow,
        }
    }

    #[test]
    fn a_day_has_its_last_versions_sizes_and_the_sum_of_its_moves() {
        let flows = vec![
            flow(0, 1, 0, "champion", 10, 10, 0),
            flow(0, 1, 0, "loyal", 5, 5, 0),
            // Same day, later: 2 champions leave for loyal, and loyal then empties.
            flow(1, 1, 12, "champion", 8, 0, 2),
            flow(1, 1, 12, "loyal", 7, 2, 0),
            flow(2, 2, 3, "champion", 9, 1, 0),
            flow(2, 2, 3, "loyal", 0, 0, 7),
            // Another tag is not counted.
            SegmentFlow {
                tag: "aipl_stage".into(),
                ..flow(2, 2, 3, "purchase", 3, 3, 0)
            },
        ];
        let day = |d: u32| NaiveDate::from_ymd_opt(2026, 11, d).unwrap();
        let got = daily(&flows, "rfm_tier", None);
        let want = vec![
            DayFlow {
                day: day(1),
                value: "champion".into(),
                size: 8,
                inflow: Some(10),
                outflow: Some(2),
                version: Some(1),
            },
            DayFlow {
                day: day(1),
                value: "loyal".into(),
                size: 7,
                inflow: Some(7),
                outflow: Some(0),
                version: Some(1),
            },
            DayFlow {
                day: day(2),
                value: "champion".into(),
                size: 9,
                inflow: Some(1),
                outflow: Some(0),
                version: Some(2),
            },
            DayFlow {
                day: day(2),
                value: "loyal".into(),
                size: 0,
                inflow: Some(0),
                outflow: Some(7),
                version: Some(2),
            },
        ];
        assert_eq!(got, want);
        let loyal = daily(&flows, "rfm_tier", Some("loyal"));
        assert_eq!(loyal, vec![want[1].clone(), want[3].clone()]);
    }

    #[test]
    fn a_value_absent_from_the_days_last_version_has_size_zero() {
        // Version 1 lists only champion: "loyal" was seen at version 0 the same day.
        let flows = vec![flow(0, 1, 0, "loyal", 4, 4, 0), flow(1, 1, 1, "champion", 4, 4, 0)];
        let got = daily(&flows, "rfm_tier", None);
        assert_eq!(
            got.iter().map(|d| (d.value.as_str(), d.size)).collect::<Vec<_>>(),
            [("champion", 4), ("loyal", 0)]
        );
    }
}
