//! The HTTP routes of the lookup API, their request and response types and the OpenAPI
//! document generated from them (utoipa).
//!
//! Owns: parsing and validating requests, shaping responses.
//! Must not: reach storage except through the index, `snapshots`, `tasks` and `query`.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::{DefaultBodyLimit, FromRequest, FromRequestParts, MatchedPath, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use siphasher::sip::SipHasher13;
use utoipa::{IntoParams, OpenApi, ToSchema};

use super::error::{ApiError, ErrorBody};
use super::index::{SharedIndex, TagIndex, TagView};
use super::live::LiveView;
use super::overview::{self, DayFlow};
use super::query::{self, QueryResult};
use super::{changes, console, AppState};
use crate::publish::snapshots::{self, Snapshot};
use crate::publish::tables::CHANGES_TABLE;
use crate::publish::tags::ChangeCounts;
use crate::publish::tasks::{self, PeriodTotals, TaskFigures, TaskReport, TaskResult};
use crate::publish::{query_published, PublishError};
use crate::sources::quarantine::{Entry, EntryKind};

/// Longest customer id accepted.
const MAX_ID_BYTES: usize = 256;
/// Default page size of segment listings and change histories.
const DEFAULT_PAGE: usize = 100;

#[derive(OpenApi)]
#[openapi(
    info(title = "tagflow tag lookup API", description = "Customer tags from the latest (or a pinned) published customer_tags snapshot."),
    paths(customer_tags, batch_get, all_segments, segment, segment_summary, segment_daily, customer_changes, all_changes, change_stream, list_snapshots, list_runs, list_quarantine, list_tasks, one_task, run_query, healthz, readyz, metrics),
    components(schemas(CustomerTags, TagView, BatchGetRequest, BatchGetResponse, SegmentsOverview, SegmentPage, SegmentMember, SegmentSummary, ValueSize, SegmentDays, DayFlow, RunsPage, Entry, EntryKind, ChangesPage, FeedPage, QueryRequest, QueryResult, query::Column, Snapshot, ChangeCounts, TaskReport, TaskResult, TaskFigures, PeriodTotals, ErrorBody)),
    modifiers(&BearerAuth)
)]
pub struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
        openapi.security = Some(vec![SecurityRequirement::new("bearer", Vec::<String>::new())]);
    }
}

pub fn router(state: Arc<AppState>) -> Router {
    let v1 = Router::new()
        .route("/v1/customers/{customer_id}/tags", get(customer_tags))
        .route("/v1/customers:batchGet", post(batch_get))
        .route("/v1/customers/{customer_id}/changes", get(customer_changes))
        .route("/v1/segments", get(all_segments))
        .route("/v1/segments/{tag}", get(segment))
        .route("/v1/segments/{tag}/summary", get(segment_summary))
        .route("/v1/segments/{tag}/daily", get(segment_daily))
        .route("/v1/changes", get(all_changes))
        .route("/v1/changes/stream", get(change_stream))
        .route("/v1/snapshots", get(list_snapshots))
        .route("/v1/tasks", get(list_tasks))
        .route("/v1/tasks/{task_id}", get(one_task))
        .route("/v1/runs", get(list_runs))
        .route("/v1/quarantine", get(list_quarantine))
        .route("/v1/query", post(run_query))
        .route_layer(middleware::from_fn_with_state(state.clone(), authorize));
    Router::new()
        .merge(v1)
        .merge(console::routes())
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/openapi.json", get(openapi))
        .route_layer(middleware::from_fn_with_state(state.clone(), observe))
        .fallback(|| async { ApiError::NotFound("no such route".into()) })
        .method_not_allowed_fallback(|| async {
            ApiError::Rejected {
                status: StatusCode::METHOD_NOT_ALLOWED,
                message: "method not allowed on this route".into(),
            }
        })
        .layer(DefaultBodyLimit::max(state.settings.max_body_bytes))
        .with_state(state)
}

// ---- extractors that answer malformed input with a JSON 4xx ----

#[derive(FromRequest)]
#[from_request(via(axum::Json), rejection(ApiError))]
struct Json<T>(T);

#[derive(FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(ApiError))]
struct Query<T>(T);

#[derive(FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(ApiError))]
struct Path<T>(T);

impl<T: Serialize> IntoResponse for Json<T> {
    fn into_response(self) -> Response {
        axum::Json(self.0).into_response()
    }
}

// ---- middleware ----

async fn observe(State(state): State<Arc<AppState>>, route: MatchedPath, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = request.method().clone();
    let response = next.run(request).await;
    state.metrics.observe(
        route.as_str(),
        method.as_str(),
        response.status().as_u16(),
        started.elapsed().as_secs_f64(),
    );
    response
}

async fn authorize(State(state): State<Arc<AppState>>, request: Request, next: Next) -> Response {
    if let Some(token) = &state.settings.token {
        let given = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if !given.is_some_and(|given| same_secret(given.as_bytes(), token.as_bytes())) {
            return ApiError::Unauthorized.into_response();
        }
    }
    next.run(request).await
}

/// Compare without an early exit, so timing does not reveal how much of a token matched.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |diff, (x, y)| diff | (x ^ y)) == 0
}

// ---- pinning a version ----

/// `?version=` or `?as_of=`: read a retained snapshot instead of the latest.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct Pin {
    /// A retained version of customer_tags.
    version: Option<u64>,
    /// The latest version evaluated at or before this time (RFC 3339).
    as_of: Option<String>,
}

impl Pin {
    /// Neither a version nor a time: the latest, live.
    fn is_latest(&self) -> bool {
        self.version.is_none() && self.as_of.is_none()
    }

    async fn resolve(&self, state: &AppState) -> Result<SharedIndex, ApiError> {
        match (self.version, &self.as_of) {
            (Some(_), Some(_)) => Err(ApiError::BadRequest("give `version` or `as_of`, not both".into())),
            (Some(version), None) => state.version(version).await,
            (None, Some(text)) => {
                let at = DateTime::parse_from_rfc3339(text)
                    .map_err(|_| {
                        ApiError::BadRequest(format!(
                            "`as_of` '{text}' is not an RFC 3339 time such as 2026-11-20T00:00:00Z"
                        ))
                    })?
                    .with_timezone(&Utc);
                let version = snapshots::version_at(&state.warehouse, at).await?;
                state.version(version).await
            }
            (None, None) => state.latest(),
        }
    }
}

fn check_id(id: &str) -> Result<(), ApiError> {
    if id.is_empty() || id.len() > MAX_ID_BYTES || id.chars().any(char::is_control) {
        return Err(ApiError::BadRequest(format!(
            "invalid customer id {id:?}: expected 1 to {MAX_ID_BYTES} bytes without control characters"
        )));
    }
    Ok(())
}

fn check_limit(limit: Option<usize>, max: usize) -> Result<usize, ApiError> {
    match limit.unwrap_or(DEFAULT_PAGE.min(max)) {
        0 => Err(ApiError::BadRequest("`limit` must be at least 1".into())),
        n if n > max => Err(ApiError::BadRequest(format!(
            "`limit` {n} is over the maximum of {max}"
        ))),
        n => Ok(n),
    }
}

// ---- customers ----

/// A customer's tags at one version.
#[derive(Serialize, ToSchema)]
pub struct CustomerTags<'a> {
    pub customer_id: &'a str,
    /// The `customer_tags` version the answer stands on.
    pub version: u64,
    /// The `tag_changes` version whose live rows on `version` (`from_version = to_version
    /// = version`) the answer includes; absent for a pinned version, which has none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub feed_version: Option<u64>,
    /// As-of time of the newest publish the answer includes.
    pub as_of: Option<&'a str>,
    pub tags: Vec<TagView<'a>>,
}

fn customer<'a>(index: &'a SharedIndex, id: &'a str) -> Option<CustomerTags<'a>> {
    index.customer(id).map(|tags| CustomerTags {
        customer_id: id,
        version: index.version,
        feed_version: None,
        as_of: index.as_of_text(),
        tags,
    })
}

fn live_customer<'a>(view: &'a LiveView, id: &'a str) -> Option<CustomerTags<'a>> {
    view.customer(id).map(|tags| CustomerTags {
        customer_id: id,
        version: view.version,
        feed_version: view.feed_version,
        as_of: view.as_of_text(),
        tags,
    })
}

/// A customer's tags.
#[utoipa::path(get, path = "/v1/customers/{customer_id}/tags", params(("customer_id" = String, Path), Pin),
    responses((status = 200, body = CustomerTags), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn customer_tags(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    Query(pin): Query<Pin>,
) -> Result<Response, ApiError> {
    check_id(&id)?;
    if pin.is_latest() {
        // The live view: the latest version with the change feed applied.
        return state.with_live(|view| match live_customer(view, &id) {
            Some(found) => Ok(axum::Json(found).into_response()),
            None => Err(ApiError::NotFound(format!(
                "customer '{id}' has no tags at version {} (feed version {})",
                view.version,
                view.feed_version.map_or("none".to_string(), |v| v.to_string())
            ))),
        })?;
    }
    let index = pin.resolve(&state).await?;
    match customer(&index, &id) {
        Some(found) => Ok(axum::Json(found).into_response()),
        None => Err(ApiError::NotFound(format!(
            "customer '{id}' has no tags at version {}",
            index.version
        ))),
    }
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchGetRequest {
    /// Up to 1,000 customer ids (the configured `max_batch`).
    pub customer_ids: Vec<String>,
}

#[derive(Serialize, ToSchema)]
pub struct BatchGetResponse<'a> {
    pub version: u64,
    /// See [`CustomerTags::feed_version`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub feed_version: Option<u64>,
    pub as_of: Option<&'a str>,
    /// Customers with tags, in request order (each id once).
    pub customers: Vec<CustomerTags<'a>>,
    /// Requested ids with no tags at this version.
    pub not_found: Vec<&'a str>,
}

/// Tags of many customers from one snapshot.
#[utoipa::path(post, path = "/v1/customers:batchGet", params(Pin), request_body = BatchGetRequest,
    responses((status = 200, body = BatchGetResponse), (status = 400, body = ErrorBody), (status = 413, body = ErrorBody)))]
async fn batch_get(
    State(state): State<Arc<AppState>>,
    Query(pin): Query<Pin>,
    Json(request): Json<BatchGetRequest>,
) -> Result<Response, ApiError> {
    let max = state.settings.max_batch;
    if request.customer_ids.len() > max {
        return Err(ApiError::BadRequest(format!(
            "{} customer ids is over the maximum of {max} per request",
            request.customer_ids.len()
        )));
    }
    for id in &request.customer_ids {
        check_id(id)?;
    }
    let mut seen = HashSet::new();
    let ids: Vec<&str> = request
        .customer_ids
        .iter()
        .map(String::as_str)
        .filter(|id| seen.insert(*id))
        .collect();
    if pin.is_latest() {
        return state.with_live(|view| {
            let (customers, not_found) = found_or_not(ids.iter().map(|id| (*id, live_customer(view, id))));
            axum::Json(BatchGetResponse {
                version: view.version,
                feed_version: view.feed_version,
                as_of: view.as_of_text(),
                customers,
                not_found,
            })
            .into_response()
        });
    }
    let index = pin.resolve(&state).await?;
    let (customers, not_found) = found_or_not(ids.iter().map(|id| (*id, customer(&index, id))));
    Ok(axum::Json(BatchGetResponse {
        version: index.version,
        feed_version: None,
        as_of: index.as_of_text(),
        customers,
        not_found,
    })
    .into_response())
}

/// The customers found, and the ids of those not found.
fn found_or_not<'a>(
    answers: impl Iterator<Item = (&'a str, Option<CustomerTags<'a>>)>,
) -> (Vec<CustomerTags<'a>>, Vec<&'a str>) {
    let mut customers = Vec::new();
    let mut not_found = Vec::new();
    for (id, tags) in answers {
        match tags {
            Some(tags) => customers.push(tags),
            None => not_found.push(id),
        }
    }
    (customers, not_found)
}

// ---- segments ----

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct SegmentParams {
    /// Only customers with this value of the tag.
    value: Option<String>,
    /// Customers per page (default 100, at most `max_page`).
    limit: Option<usize>,
    /// `next_cursor` of the previous page: the next page, from the same snapshot.
    cursor: Option<String>,
    version: Option<u64>,
    as_of: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct SegmentMember<'a> {
    pub customer_id: &'a str,
    pub value: &'a str,
    pub score: Option<f64>,
}

#[derive(Serialize, ToSchema)]
pub struct SegmentPage<'a> {
    pub tag: &'a str,
    pub value: Option<&'a str>,
    pub version: u64,
    pub as_of: Option<&'a str>,
    /// Customers in the whole segment.
    pub total: usize,
    pub customers: Vec<SegmentMember<'a>>,
    /// Pass as `cursor` for the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

/// Where a page starts: the snapshot, the position, and a check of the tag and value.
struct Cursor {
    version: u64,
    position: usize,
    check: u64,
}

impl Cursor {
    fn check_of(tag: &str, value: Option<&str>) -> u64 {
        use std::hash::{Hash, Hasher};
        let mut hasher = SipHasher13::new();
        (tag, value).hash(&mut hasher);
        hasher.finish()
    }

    fn encode(&self) -> String {
        format!("{}.{}.{:016x}", self.version, self.position, self.check)
    }

    fn decode(text: &str) -> Result<Self, ApiError> {
        let bad = || ApiError::BadRequest(format!("invalid cursor '{text}': pass `next_cursor` as returned"));
        let mut parts = text.split('.');
        let (Some(version), Some(position), Some(check), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(bad());
        };
        Ok(Cursor {
            version: version.parse().map_err(|_| bad())?,
            position: position.parse().map_err(|_| bad())?,
            check: u64::from_str_radix(check, 16).map_err(|_| bad())?,
        })
    }
}

/// The customers in a segment, a page at a time.
#[utoipa::path(get, path = "/v1/segments/{tag}", params(("tag" = String, Path), SegmentParams),
    responses((status = 200, body = SegmentPage), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 410, body = ErrorBody)))]
async fn segment(
    State(state): State<Arc<AppState>>,
    Path(tag): Path<String>,
    Query(params): Query<SegmentParams>,
) -> Result<Response, ApiError> {
    let limit = check_limit(params.limit, state.settings.max_page)?;
    let value = params.value.as_deref();
    let check = Cursor::check_of(&tag, value);
    let (index, from) = match &params.cursor {
        Some(text) => {
            let cursor = Cursor::decode(text)?;
            if cursor.check != check {
                return Err(ApiError::BadRequest(
                    "the cursor belongs to another tag or value".into(),
                ));
            }
            if params.version.is_some_and(|v| v != cursor.version) || params.as_of.is_some() {
                return Err(ApiError::BadRequest(
                    "a cursor already pins its snapshot: drop `version`/`as_of`".into(),
                ));
            }
            (state.version(cursor.version).await?, cursor.position)
        }
        None => {
            let pin = Pin {
                version: params.version,
                as_of: params.as_of.clone(),
            };
            (pin.resolve(&state).await?, 0)
        }
    };
    let Some(members) = index.segment(&tag, value) else {
        return Err(ApiError::NotFound(format!(
            "no tag '{tag}' at version {}",
            index.version
        )));
    };
    let customers: Vec<SegmentMember> = members
        .page(from, limit)
        .map(|(customer_id, row)| SegmentMember {
            customer_id,
            value: row.value,
            score: row.score,
        })
        .collect();
    let next = from + customers.len();
    let next_cursor = (next < members.len()).then(|| {
        Cursor {
            version: index.version,
            position: next,
            check,
        }
        .encode()
    });
    Ok(axum::Json(SegmentPage {
        tag: &tag,
        value,
        version: index.version,
        as_of: index.as_of_text(),
        total: members.len(),
        customers,
        next_cursor,
    })
    .into_response())
}

#[derive(Serialize, ToSchema)]
pub struct ValueSize<'a> {
    pub value: &'a str,
    pub customers: usize,
}

#[derive(Serialize, ToSchema)]
pub struct SegmentSummary<'a> {
    pub tag: &'a str,
    pub family: &'a str,
    pub version: u64,
    pub as_of: Option<&'a str>,
    /// Customers carrying the tag.
    pub customers: usize,
    /// Segment size per value, in value order.
    pub values: Vec<ValueSize<'a>>,
}

/// Segment sizes of a tag, per value.
#[utoipa::path(get, path = "/v1/segments/{tag}/summary", params(("tag" = String, Path), Pin),
    responses((status = 200, body = SegmentSummary), (status = 404, body = ErrorBody)))]
async fn segment_summary(
    State(state): State<Arc<AppState>>,
    Path(tag): Path<String>,
    Query(pin): Query<Pin>,
) -> Result<Response, ApiError> {
    let index = pin.resolve(&state).await?;
    let Some(summary) = tag_summary(&index, &tag) else {
        return Err(ApiError::NotFound(format!(
            "no tag '{tag}' at version {}",
            index.version
        )));
    };
    Ok(axum::Json(summary).into_response())
}

/// The sizes of `tag` per value at `index`'s version; `None` for a tag it does not hold.
fn tag_summary<'a>(index: &'a TagIndex, tag: &'a str) -> Option<SegmentSummary<'a>> {
    let values = index.summary(tag)?;
    Some(SegmentSummary {
        tag,
        family: index.family_of(tag)?,
        version: index.version,
        as_of: index.as_of_text(),
        customers: values.iter().map(|(_, n)| n).sum(),
        values: values
            .into_iter()
            .map(|(value, customers)| ValueSize { value, customers })
            .collect(),
    })
}

#[derive(Serialize, ToSchema)]
pub struct SegmentsOverview<'a> {
    pub version: u64,
    pub as_of: Option<&'a str>,
    /// Customers with at least one tag.
    pub customers: usize,
    /// Every tag of the version, in name order, with its sizes per value.
    #[schema(value_type = Vec<SegmentSummary>)]
    pub tags: Vec<SegmentSummary<'a>>,
}

/// Every tag with its segment sizes per value (one version; `summary` for one tag).
#[utoipa::path(get, path = "/v1/segments", params(Pin),
    responses((status = 200, body = SegmentsOverview), (status = 400, body = ErrorBody)))]
async fn all_segments(State(state): State<Arc<AppState>>, Query(pin): Query<Pin>) -> Result<Response, ApiError> {
    let index = pin.resolve(&state).await?;
    let tags = index.tags().filter_map(|(tag, _)| tag_summary(&index, tag)).collect();
    Ok(axum::Json(SegmentsOverview {
        version: index.version,
        as_of: index.as_of_text(),
        customers: index.customer_count(),
        tags,
    })
    .into_response())
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct DailyParams {
    /// Only this value of the tag.
    value: Option<String>,
    /// Only the last this many days (default: every day known).
    days: Option<usize>,
}

#[derive(Serialize, ToSchema)]
pub struct SegmentDays {
    pub tag: String,
    pub value: Option<String>,
    /// The newest merged version the days stand on.
    pub version: u64,
    /// Per day and value, oldest day first: the size at the end of the day, and the
    /// inflow and outflow over its publishes (每日流入与流出).
    pub days: Vec<DayFlow>,
}

/// A tag's segments per UTC day: size at each day's last published version, and the
/// customers who flowed in and out over the day's publishes (live follow batches
/// included). Days before the oldest retained version come from `customer_tags_history`
/// (sizes only).
#[utoipa::path(get, path = "/v1/segments/{tag}/daily", params(("tag" = String, Path), DailyParams),
    responses((status = 200, body = SegmentDays), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn segment_daily(
    State(state): State<Arc<AppState>>,
    Path(tag): Path<String>,
    Query(params): Query<DailyParams>,
) -> Result<Json<SegmentDays>, ApiError> {
    if params.days == Some(0) {
        return Err(ApiError::BadRequest("`days` must be at least 1".into()));
    }
    let index = state.latest()?;
    if index.family_of(&tag).is_none() {
        return Err(ApiError::NotFound(format!(
            "no tag '{tag}' at version {}",
            index.version
        )));
    }
    let flows = state.segment_flows().await?;
    let value = params.value.as_deref();
    let published = overview::daily(&flows, &tag, value);
    let mut days = overview::with_history(&state.warehouse, published, &tag, value).await?;
    if let Some(keep) = params.days {
        let mut distinct: Vec<_> = days.iter().map(|d| d.day).collect();
        distinct.dedup();
        if let Some(first) = distinct.len().checked_sub(keep).map(|skip| distinct[skip]) {
            days.retain(|d| d.day >= first);
        }
    }
    Ok(Json(SegmentDays {
        tag,
        value: params.value,
        version: index.version,
        days,
    }))
}

// ---- history ----

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct ChangesParams {
    /// Newest changes first, at most this many (default 100, at most `max_page`).
    limit: Option<usize>,
    version: Option<u64>,
    as_of: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct ChangesPage {
    pub customer_id: String,
    /// Changes up to this version.
    pub version: u64,
    /// Rows of tag_changes: customer_id, family, tag, change, old/new value and score,
    /// from_version, to_version, as_of; newest first.
    #[schema(value_type = Vec<Object>)]
    pub changes: Vec<serde_json::Value>,
}

/// A customer's tag history from the change feed.
#[utoipa::path(get, path = "/v1/customers/{customer_id}/changes", params(("customer_id" = String, Path), ChangesParams),
    responses((status = 200, body = ChangesPage), (status = 400, body = ErrorBody)))]
async fn customer_changes(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    Query(params): Query<ChangesParams>,
) -> Result<Response, ApiError> {
    check_id(&id)?;
    let limit = check_limit(params.limit, state.settings.max_page)?;
    let pin = Pin {
        version: params.version,
        as_of: params.as_of,
    };
    let index = pin.resolve(&state).await?;
    let sql = format!(
        "SELECT * FROM {CHANGES_TABLE} WHERE customer_id = '{}' AND to_version <= {} \
         ORDER BY to_version DESC, family, tag LIMIT {limit}",
        id.replace('\'', "''"),
        index.version
    );
    let batches = match query_published(&state.warehouse, CHANGES_TABLE, None, &sql).await {
        Err(PublishError::NotFound { .. }) => Vec::new(),
        other => other?,
    };
    Ok(axum::Json(ChangesPage {
        customer_id: id,
        version: index.version,
        changes: query::rows_json(&batches)?,
    })
    .into_response())
}

// ---- the change feed ----

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct FeedParams {
    /// Changes after this customer_tags version: rows with `from_version >= since_version`,
    /// live ones included (default: the whole feed, from the rows that made version 0).
    since_version: Option<u64>,
    /// Only changes of this tag.
    tag: Option<String>,
    /// Only changes into or out of this value (with `tag`: one segment's inflow and outflow).
    value: Option<String>,
    /// Changes per page (default 100, at most `max_page`); per event for the stream.
    limit: Option<usize>,
    /// `next_cursor` of the previous page (not for the stream: it resumes from `Last-Event-ID`).
    cursor: Option<String>,
}

impl FeedParams {
    fn filter(&self) -> changes::Filter {
        changes::Filter {
            since_version: self.since_version,
            tag: self.tag.clone(),
            value: self.value.clone(),
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct FeedPage {
    /// Rows of tag_changes in feed order: customer_id, family, tag, change, old/new value
    /// and score, from_version, to_version, as_of.
    #[schema(value_type = Vec<Object>)]
    pub changes: Vec<serde_json::Value>,
    /// Pass as `cursor` to read on: always given, also when caught up (later publishes
    /// come after it).
    pub next_cursor: String,
    /// True when the page holds every change published so far (fewer than `limit`).
    pub caught_up: bool,
}

/// Every customer's changes after a version, in publish order, a page at a time: stable
/// under concurrent publishes (a cursor resumes exactly after its last change).
#[utoipa::path(get, path = "/v1/changes", params(FeedParams),
    responses((status = 200, body = FeedPage), (status = 400, body = ErrorBody)))]
async fn all_changes(
    State(state): State<Arc<AppState>>,
    Query(params): Query<FeedParams>,
) -> Result<Json<FeedPage>, ApiError> {
    let limit = check_limit(params.limit, state.settings.max_page)?;
    let filter = params.filter();
    let from = match &params.cursor {
        Some(text) => changes::Position::decode(text, &filter)?,
        None => changes::Position::START,
    };
    let page = changes::page(&state.warehouse, &filter, from, limit).await?;
    Ok(Json(FeedPage {
        changes: page.json()?,
        next_cursor: page.next.encode(&filter),
        caught_up: page.count < limit,
    }))
}

/// Server-Sent Events: the changes after a version, then each publish's changes as it
/// lands. Each `changes` event holds up to `limit` changes as a JSON array; its id is the
/// position after them, so a client reconnecting with `Last-Event-ID` resumes exactly
/// there.
#[utoipa::path(get, path = "/v1/changes/stream", params(FeedParams),
    responses((status = 200, description = "text/event-stream of `changes` events"), (status = 400, body = ErrorBody)))]
async fn change_stream(
    State(state): State<Arc<AppState>>,
    Query(params): Query<FeedParams>,
    headers: axum::http::HeaderMap,
) -> Result<Response, ApiError> {
    if params.cursor.is_some() {
        return Err(ApiError::BadRequest(
            "the stream resumes from the Last-Event-ID header, not from `cursor`".into(),
        ));
    }
    let limit = check_limit(params.limit, state.settings.max_page)?;
    let filter = params.filter();
    let from = match headers.get("last-event-id").map(|v| v.to_str()) {
        Some(Ok(text)) => changes::Position::decode(text, &filter)?,
        Some(Err(_)) => return Err(ApiError::BadRequest("Last-Event-ID is not text".into())),
        None => changes::Position::START,
    };
    let events = changes::stream(state, filter, from, limit);
    Ok(axum::response::sse::Sse::new(events)
        .keep_alive(axum::response::sse::KeepAlive::default())
        .into_response())
}

/// The versions of customer_tags in the log, newest first.
#[utoipa::path(get, path = "/v1/snapshots", responses((status = 200, body = Vec<Snapshot>)))]
async fn list_snapshots(State(state): State<Arc<AppState>>) -> Result<Response, ApiError> {
    Ok(axum::Json(snapshots::list(&state.warehouse).await?).into_response())
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct RunsParams {
    /// Newest runs first, at most this many (default 100, at most `max_page`).
    limit: Option<usize>,
}

#[derive(Serialize, ToSchema)]
pub struct RunsPage {
    /// Rows of job_runs, newest first: run_id, status, exit_code, as_of, started_at,
    /// finished_at, files_read, events, files_quarantined, rows_quarantined,
    /// published_version, error, jobs (per job: rows, ms and any failed checks),
    /// freshness_p95_ms, freshness_max_ms.
    #[schema(value_type = Vec<Object>)]
    pub runs: Vec<serde_json::Value>,
}

/// The latest runs, follow batches and backfills of `job_runs`, with their status, failed
/// checks and freshness (landing to publish).
#[utoipa::path(get, path = "/v1/runs", params(RunsParams),
    responses((status = 200, body = RunsPage), (status = 400, body = ErrorBody)))]
async fn list_runs(
    State(state): State<Arc<AppState>>,
    Query(params): Query<RunsParams>,
) -> Result<Json<RunsPage>, ApiError> {
    let limit = check_limit(params.limit, state.settings.max_page)?;
    Ok(Json(RunsPage {
        runs: overview::latest_runs(&state.warehouse, limit).await?,
    }))
}

/// The quarantine area: each rejected landing file or set of rows, newest first.
#[utoipa::path(get, path = "/v1/quarantine", responses((status = 200, body = Vec<Entry>)))]
async fn list_quarantine(State(state): State<Arc<AppState>>) -> Result<Json<Vec<Entry>>, ApiError> {
    Ok(Json(overview::quarantined(&state.warehouse).await?))
}

// ---- marketing tasks ----

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct TasksParams {
    /// Only tasks first sent at or after this time (RFC 3339).
    pub since: Option<DateTime<Utc>>,
}

/// Did the marketing tasks work: each task of task_results (newest first) with its rates,
/// and totals per day and per ISO week of the first sends.
#[utoipa::path(get, path = "/v1/tasks", params(TasksParams),
    responses((status = 200, body = TaskReport), (status = 400, body = ErrorBody)))]
async fn list_tasks(
    State(state): State<Arc<AppState>>,
    Query(params): Query<TasksParams>,
) -> Result<Json<TaskReport>, ApiError> {
    Ok(Json(tasks::task_report(&state.warehouse, params.since, None).await?))
}

/// One marketing task of task_results.
#[utoipa::path(get, path = "/v1/tasks/{task_id}", params(("task_id" = String, Path)),
    responses((status = 200, body = TaskResult), (status = 404, body = ErrorBody)))]
async fn one_task(
    State(state): State<Arc<AppState>>,
    Path(task_id): Path<String>,
) -> Result<Json<TaskResult>, ApiError> {
    check_id(&task_id)?;
    let report = tasks::task_report(&state.warehouse, None, Some(&task_id)).await?;
    report
        .tasks
        .into_iter()
        .next()
        .map(Json)
        .ok_or_else(|| ApiError::NotFound(format!("no task '{task_id}' in task_results")))
}

// ---- SQL ----

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct QueryRequest {
    /// One read-only SQL query over `customer_tags` and `tag_changes`.
    pub sql: String,
}

/// Read-only SQL over customer_tags (at the served or pinned version) and tag_changes.
#[utoipa::path(post, path = "/v1/query", params(Pin), request_body = QueryRequest,
    responses((status = 200, body = QueryResult), (status = 400, body = ErrorBody), (status = 408, body = ErrorBody), (status = 422, body = ErrorBody)))]
async fn run_query(
    State(state): State<Arc<AppState>>,
    Query(pin): Query<Pin>,
    Json(request): Json<QueryRequest>,
) -> Result<Json<QueryResult>, ApiError> {
    let index = pin.resolve(&state).await?;
    let version = index.version;
    drop(index);
    Ok(Json(
        query::run(&state.warehouse, version, &request.sql, &state.settings.query).await?,
    ))
}

// ---- operations ----

/// Liveness: the process answers.
#[utoipa::path(get, path = "/healthz", security(()), responses((status = 200, description = "ok")))]
async fn healthz() -> &'static str {
    "ok\n"
}

#[derive(Serialize)]
struct Ready {
    status: &'static str,
    version: u64,
    customers: usize,
}

/// Readiness: a snapshot is loaded.
#[utoipa::path(get, path = "/readyz", security(()), responses((status = 200, description = "ready"), (status = 503, body = ErrorBody)))]
async fn readyz(State(state): State<Arc<AppState>>) -> Result<Response, ApiError> {
    let index = state.latest()?;
    Ok(axum::Json(Ready {
        status: "ready",
        version: index.version,
        customers: index.customer_count(),
    })
    .into_response())
}

/// Prometheus metrics (OpenMetrics text).
#[utoipa::path(get, path = "/metrics", security(()), responses((status = 200, description = "OpenMetrics text")))]
async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    if let Some(committed) = state.current().and_then(|i| i.committed_at) {
        let age = (Utc::now() - committed).num_milliseconds() as f64 / 1000.0;
        state.metrics.snapshot_age.set(age.max(0.0));
    }
    state.metrics.response()
}

async fn openapi() -> Response {
    axum::Json(ApiDoc::openapi()).into_response()
}
