//! Every customer's changes in publish order, for services that catch up
//! (`GET /v1/changes`) or listen (`GET /v1/changes/stream`, Server-Sent Events).
//!
//! **Order and position.** The feed's rows are read in one total order: by `to_version`,
//! then `as_of` (together: the publish that wrote them; a merge and the live batches on top
//! of a version each have their own as-of time), then customer, family, tag and values. A
//! [`Position`] is the publish of the last row delivered and how many of that publish's
//! rows were delivered, so a page or an event resumes exactly after it: nothing is skipped
//! or repeated, whatever was published meanwhile (publishes only append).
//!
//! **Shared pages.** Readers that follow the feed closely ask for the same page at the same
//! moment (a publish wakes every stream at the position it caught up to), so a page is read
//! once per (filter, position, limit, feed version the server has loaded) and shared:
//! the first reader reads it, the others wait for that read ([`Pages`]). A page read under
//! an older feed version is never given out under a newer one, so a reader sees what a
//! fresh read would have shown when it asked, or more.
//!
//! Owns: positions and their text form (`next_cursor`, SSE event ids), reading and sharing
//! pages, the event stream.
//! Must not: keep pages past the feed version after the one they were read under.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};

use arrow::array::{Int64Array, TimestampMicrosecondArray};
use arrow::record_batch::RecordBatch;
use axum::response::sse::Event;
use futures::Stream;

use super::error::ApiError;
use super::metrics::PageLabels;
use super::query::rows_json;
use super::AppState;
use crate::publish::tables::CHANGES_TABLE;
use crate::publish::{query_published, PublishError};
use crate::storage::rows::typed_column;
use crate::storage::Location;

/// What a reader asks for: the whole feed, or the changes after `customer_tags` version
/// `since_version` (`from_version >= since_version`; the rows that made version 0 have
/// none), optionally of one tag and one value (entering or leaving it).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Filter {
    pub since_version: Option<u64>,
    pub tag: Option<String>,
    pub value: Option<String>,
}

/// Where a reader stands: after `delivered` rows of the publish `(to_version, as_of)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Position {
    pub to_version: i64,
    /// Microseconds since the epoch.
    pub as_of: i64,
    pub delivered: usize,
}

impl Position {
    /// Before every row.
    pub const START: Position = Position {
        to_version: -1,
        as_of: 0,
        delivered: 0,
    };

    /// The text of a cursor or an event id: the position and a check of the filter it was
    /// read with, so it cannot be resumed under another filter.
    pub fn encode(&self, filter: &Filter) -> String {
        format!(
            "{}.{}.{}.{:016x}",
            self.to_version,
            self.as_of,
            self.delivered,
            filter.check()
        )
    }

    pub fn decode(text: &str, filter: &Filter) -> Result<Self, ApiError> {
        let bad = |why: &str| {
            ApiError::BadRequest(format!(
                "invalid position '{text}': {why}; pass a `next_cursor` or an event id as returned"
            ))
        };
        let parts: Vec<&str> = text.split('.').collect();
        let [to_version, as_of, delivered, check] = parts[..] else {
            return Err(bad("not four parts"));
        };
        let number = |part: &str| part.parse::<i64>().map_err(|_| bad("not numbers"));
        if u64::from_str_radix(check, 16).ok() != Some(filter.check()) {
            return Err(bad("it was read with another since_version, tag or value"));
        }
        Ok(Position {
            to_version: number(to_version)?,
            as_of: number(as_of)?,
            delivered: number(delivered)?.try_into().map_err(|_| bad("negative"))?,
        })
    }
}

impl Filter {
    fn check(&self) -> u64 {
        let mut hasher = siphasher::sip::SipHasher13::new();
        (self.since_version, &self.tag, &self.value).hash(&mut hasher);
        hasher.finish()
    }
}

/// Up to `limit` changes after `from`, in feed order.
#[derive(Debug)]
pub struct Page {
    pub rows: Vec<RecordBatch>,
    pub count: usize,
    /// After the page's last row (`from` when the page is empty).
    pub next: Position,
}

impl Page {
    pub fn json(&self) -> Result<Vec<serde_json::Value>, ApiError> {
        rows_json(&self.rows)
    }
}

/// A page as readers receive it: its rows as a JSON array (the text of an SSE event).
#[derive(Debug)]
pub struct SharedPage {
    pub json: String,
    pub count: usize,
    pub next: Position,
}

/// Most pages kept: beyond them the oldest are dropped (they are read again if asked for).
const MAX_SHARED_PAGES: usize = 1024;

type PageKey = (Filter, Position, usize, Option<u64>);
type PageSlot = Arc<tokio::sync::OnceCell<Arc<SharedPage>>>;

/// Pages shared between readers (see the module head).
#[derive(Default)]
pub(crate) struct Pages {
    slots: Mutex<(HashMap<PageKey, PageSlot>, VecDeque<PageKey>)>,
}

impl Pages {
    /// The page of `filter` after `from` under feed version `feed`: shared if another
    /// reader read it or is reading it, else read now (then the flag is true). A failed
    /// read is not kept.
    pub async fn get(
        &self,
        warehouse: &Location,
        filter: &Filter,
        from: Position,
        limit: usize,
        feed: Option<u64>,
    ) -> Result<(Arc<SharedPage>, bool), ApiError> {
        let slot = self.slot((filter.clone(), from, limit, feed));
        let mut read = false;
        let page = slot
            .get_or_try_init(|| async {
                read = true;
                let page = page(warehouse, filter, from, limit).await?;
                let json = serde_json::to_string(&page.json()?)
                    .map_err(|e| ApiError::BadRequest(format!("cannot encode the changes as JSON: {e}")))?;
                Ok::<_, ApiError>(Arc::new(SharedPage {
                    json,
                    count: page.count,
                    next: page.next,
                }))
            })
            .await?;
        Ok((page.clone(), read))
    }

    /// The slot of `key`, made if new; pages of feed versions before `key`'s previous one
    /// and the oldest beyond [`MAX_SHARED_PAGES`] are dropped.
    fn slot(&self, key: PageKey) -> PageSlot {
        let mut guard = self.slots.lock().expect("pages lock");
        let (slots, order) = &mut *guard;
        if let Some(slot) = slots.get(&key) {
            return slot.clone();
        }
        let feed = key.3;
        let stale = |k: &PageKey| k.3.unwrap_or(0) + 1 < feed.unwrap_or(0);
        slots.retain(|k, _| !stale(k));
        order.retain(|k| !stale(k));
        while order.len() >= MAX_SHARED_PAGES {
            if let Some(oldest) = order.pop_front() {
                slots.remove(&oldest);
            }
        }
        let slot = PageSlot::default();
        slots.insert(key.clone(), slot.clone());
        order.push_back(key);
        slot
    }
}

/// Read the page of `filter` after `from`.
pub async fn page(warehouse: &Location, filter: &Filter, from: Position, limit: usize) -> Result<Page, ApiError> {
    let quote = |text: &str| text.replace('\'', "''");
    let mut conditions = vec![format!(
        "(to_version > {v} OR (to_version = {v} AND CAST(as_of AS BIGINT) >= {t}))",
        v = from.to_version,
        t = from.as_of
    )];
    if let Some(since) = filter.since_version {
        conditions.push(format!("from_version >= {since}"));
    }
    if let Some(tag) = &filter.tag {
        conditions.push(format!("tag = '{}'", quote(tag)));
    }
    if let Some(value) = &filter.value {
        conditions.push(format!("(new_value = '{v}' OR old_value = '{v}')", v = quote(value)));
    }
    // The first publish's rows come first; `delivered` of them were read already.
    let sql = format!(
        "SELECT customer_id, family, tag, change, old_value, new_value, old_score, new_score, \
                from_version, to_version, as_of \
         FROM {CHANGES_TABLE} WHERE {} \
         ORDER BY to_version, as_of, customer_id, family, tag, old_value NULLS FIRST, new_value NULLS FIRST \
         LIMIT {limit} OFFSET {}",
        conditions.join(" AND "),
        from.delivered
    );
    let rows = match query_published(warehouse, CHANGES_TABLE, None, &sql).await {
        Err(PublishError::NotFound { .. }) => Vec::new(),
        other => other?,
    };
    let count = rows.iter().map(|b| b.num_rows()).sum();
    let next = next_position(&rows, from);
    Ok(Page { rows, count, next })
}

/// The position after the last of `rows`, which start at `from`.
fn next_position(rows: &[RecordBatch], from: Position) -> Position {
    let publishes: Vec<(i64, i64)> = rows
        .iter()
        .flat_map(|batch| {
            let versions = typed_column::<Int64Array>(batch, "to_version");
            let as_ofs = typed_column::<TimestampMicrosecondArray>(batch, "as_of");
            (0..batch.num_rows()).map(move |i| (versions.value(i), as_ofs.value(i)))
        })
        .collect();
    let Some(&(to_version, as_of)) = publishes.last() else {
        return from;
    };
    let of_last = publishes
        .iter()
        .rev()
        .take_while(|p| **p == (to_version, as_of))
        .count();
    let delivered = if (to_version, as_of) == (from.to_version, from.as_of) {
        from.delivered + of_last
    } else {
        of_last
    };
    Position {
        to_version,
        as_of,
        delivered,
    }
}

/// The stream of `changes` events from `from`: pages while there are changes, then a wait
/// for the next feed version the server loads; it ends when the server shuts down.
pub fn stream(
    state: Arc<AppState>,
    filter: Filter,
    from: Position,
    limit: usize,
) -> impl Stream<Item = Result<Event, Infallible>> {
    let feed = state.feed_seen.subscribe();
    let stopping = state.stopping.clone();
    futures::stream::unfold(
        (state, feed, stopping, from),
        move |(state, mut feed, mut stopping, from)| {
            let filter = filter.clone();
            async move {
                loop {
                    if *stopping.borrow() {
                        return None;
                    }
                    // Mark the feed version seen before reading: a publish landing during
                    // the read wakes the wait below.
                    let seen = *feed.borrow_and_update();
                    let read = state.pages.get(&state.warehouse, &filter, from, limit, seen).await;
                    if let Ok((_, fresh)) = &read {
                        let source = if *fresh { "read" } else { "shared" };
                        state.metrics.feed_pages.get_or_create(&PageLabels { source }).inc();
                    }
                    match read {
                        Ok((page, _)) if page.count > 0 => {
                            let event = Event::default()
                                .event("changes")
                                .id(page.next.encode(&filter))
                                .data(page.json.as_str());
                            return Some((Ok(event), (state, feed, stopping, page.next)));
                        }
                        Ok(_) => {}
                        Err(error) => tracing::warn!(%error, "change stream: cannot read the feed; retrying"),
                    }
                    tokio::select! {
                        _ = feed.changed() => {}
                        _ = stopping.wait_for(|stop| *stop) => return None,
                        // Also look again now and then: a feed written before serve saw it.
                        _ = tokio::time::sleep(state.settings.reload_interval * 10) => {}
                    }
                }
            }
        },
    )
}
