//! `tagflow forget`: erase customers from everything tagflow keeps, and keep them out.
//!
//! Owns: the order of an erasure's steps, its request record and its report. Must not: erase
//! anything itself; each stage removes its own rows (`state`, `sources::quarantine`,
//! `publish::erasure`), and `storage::erasure` keeps the records.
//!
//! Under the warehouse lock:
//! 1. the request is recorded first (its salted hashes added to the suppression list, the
//!    request saved as pending), so from then on every read of the landing zone drops the
//!    customers' events, whatever happens next;
//! 2. the customers leave the state (a new state version; the files that held them are
//!    deleted), the quarantine area, `customer_tags` (a new version; the feed records their
//!    exits without their ids), `tag_changes` and `customer_tags_history`;
//! 3. with `--purge-history`, every older version of those tables is made unreadable and its
//!    files deleted; otherwise the request says when the retention lets a vacuum do it;
//! 4. the landing files still holding them are listed, and the request is marked completed.
//!
//! Every step is idempotent and finds its rows by hash, so a killed erasure is completed by
//! the next `forget` (which first completes every pending request, or `forget --resume`).

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::Serialize;
use tracing::{info, info_span, Instrument};

use super::run::release;
use super::Steps;
use crate::app::error::Error;
use crate::app::prepare::check_locations;
use crate::config::Settings;
use crate::publish::erasure::{self, ErasedTable, ERASED_TABLES};
use crate::publish::{CHANGES_TABLE, HISTORY_TABLE};
use crate::sources::quarantine::Quarantine;
use crate::sources::schema::Schemas;
use crate::state::State;
use crate::storage::erasure::{request_id, ErasureRequest, Forgotten, RequestStatus, Suppression};
use crate::storage::lock::RunLock;
use crate::storage::Location;

/// Delta's default log retention (`delta.logRetentionDuration`): older log entries, which
/// carry file statistics, are cleaned up at checkpoints after it.
const LOG_RETENTION: Duration = Duration::from_secs(30 * 86_400);

/// Bad input to `forget`: nothing was recorded or erased.
#[derive(Debug, thiserror::Error)]
pub enum ForgetError {
    #[error(
        "no customer to forget: give --customer ID or --from-file FILE (or --resume to complete pending erasures)"
    )]
    Empty,
    #[error("{path}:{line}: {reason}")]
    Malformed { path: String, line: usize, reason: String },
    #[error("cannot read {path}: {source}")]
    File {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{count} of the {total} customers given are unknown to this warehouse and its landing zone (positions {positions} of the list): nothing was erased; check the ids")]
    Unknown {
        count: usize,
        total: usize,
        positions: String,
    },
}

/// What `forget` did.
#[derive(Debug, Clone, Serialize)]
pub struct ForgetReport {
    /// The requests completed by this run (a new one, and pending ones resumed).
    pub requests: Vec<String>,
    /// Customers newly forgotten by this run.
    pub customers: usize,
    /// Customers given that were forgotten before (nothing more to do for them).
    pub already_forgotten: usize,
    /// Rows (or files) removed per table or area.
    pub removed: BTreeMap<String, u64>,
    /// Per Delta table, the data files its erasure rewrote (only those that held them).
    pub files_rewritten: BTreeMap<String, u64>,
    /// The state version without them (none: no state).
    pub state_version: Option<u64>,
    /// The `customer_tags` version without them.
    pub tags_version: Option<u64>,
    /// Landing files that still hold them: for the landing zone's owner to delete.
    pub landing_files: Vec<String>,
    /// With `--purge-history`: per table, the first version still readable.
    pub first_readable_version: BTreeMap<String, u64>,
    /// Without it: older versions hold them until a vacuum after this time.
    pub history_until: Option<DateTime<Utc>>,
    /// Milliseconds per step: `check` (ids against the state and the landing zone, and the
    /// request recorded), `state`, `quarantine`, each table, `purge`, `landing`.
    pub stages_ms: BTreeMap<String, u64>,
    pub duration_ms: u64,
}

/// The ids of a `--from-file` list: one per line, surrounding blanks trimmed, empty lines
/// and `#` comments skipped. A line with blanks or control characters inside is malformed.
pub fn read_id_file(path: &Path) -> Result<Vec<String>, ForgetError> {
    let display = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|source| ForgetError::File {
        path: display.clone(),
        source,
    })?;
    let text = String::from_utf8(bytes).map_err(|e| {
        let line = 1 + e.as_bytes()[..e.utf8_error().valid_up_to()]
            .iter()
            .filter(|b| **b == b'\n')
            .count();
        ForgetError::Malformed {
            path: display.clone(),
            line,
            reason: "not UTF-8 text".into(),
        }
    })?;
    let mut ids = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let id = line.trim();
        if id.is_empty() || id.starts_with('#') {
            continue;
        }
        check_id(id).map_err(|reason| ForgetError::Malformed {
            path: display.clone(),
            line: i + 1,
            reason,
        })?;
        ids.push(id.to_string());
    }
    Ok(ids)
}

/// An id is one token: no blanks or control characters inside.
pub fn check_id(id: &str) -> Result<(), String> {
    if id.is_empty() {
        return Err("an empty customer id".into());
    }
    if let Some(c) = id.chars().find(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!("a customer id holds {c:?}: one id per line, nothing else"));
    }
    Ok(())
}

/// `tagflow forget`: complete every pending erasure, then forget `ids` (none: only resume).
pub async fn forget(settings: &Settings, ids: Vec<String>, purge_history: bool) -> Result<ForgetReport, Error> {
    let started = Instant::now();
    let warehouse = settings.warehouse()?;
    let landing = settings.landing().ok();
    let mut locations = vec![warehouse];
    locations.extend(landing);
    check_locations(&locations).await?;
    for id in &ids {
        check_id(id).map_err(|reason| ForgetError::Malformed {
            path: "--customer".into(),
            line: 1,
            reason,
        })?;
    }
    let schemas = Schemas::load(&settings.schemas_dir)?;
    let id = request_id(Utc::now());
    let lock = RunLock::acquire(warehouse, &id, settings.lock_ttl).await?;
    let outcome = async {
        let mut suppression = Suppression::load_or_salt(warehouse).await?;
        let mut requests: Vec<ErasureRequest> = ErasureRequest::list(warehouse)
            .await?
            .into_iter()
            .filter(|r| r.status == RequestStatus::Pending)
            .collect();
        if ids.is_empty() && requests.is_empty() {
            return Err(ForgetError::Empty.into());
        }
        let check = Instant::now();
        let mut state = State::load(warehouse).await?;
        let resumed = !requests.is_empty();
        let (new, already, holding) = record_request(
            (warehouse, landing, &schemas),
            &mut suppression,
            state.as_ref(),
            (&id, ids.clone(), purge_history),
            settings.read_concurrency,
        )
        .await?;
        let check_ms = check.elapsed().as_millis() as u64;
        requests.extend(new);
        // The landing zone was just read for these customers; resumed ones need a new look.
        let landing_files = holding.filter(|_| !resumed);
        let mut report = erase(
            (warehouse, landing, &schemas),
            settings,
            &suppression,
            &mut state,
            (&mut requests, ids, landing_files),
        )
        .await?;
        report.already_forgotten = already;
        report.stages_ms.insert("check".into(), check_ms);
        report.duration_ms = started.elapsed().as_millis() as u64;
        Ok(report)
    }
    .instrument(info_span!("forget", request = %id))
    .await;
    release(lock).await;
    outcome
}

/// Check the new ids and record them as a pending request (suppression list first): the
/// request, if any ids are new, how many were forgotten before, and the landing files that
/// hold any of them (if the landing zone was read). Unknown ids (in neither the state, the
/// suppression list nor the landing zone) refuse the whole list.
async fn record_request(
    (warehouse, landing, schemas): (&Location, Option<&Location>, &Schemas),
    suppression: &mut Suppression,
    state: Option<&State>,
    (id, ids, purge_history): (&str, Vec<String>, bool),
    concurrency: usize,
) -> Result<(Option<ErasureRequest>, usize, Option<Vec<String>>), Error> {
    let mut seen = HashSet::new();
    let ids: Vec<String> = ids.into_iter().filter(|i| seen.insert(i.clone())).collect();
    if ids.is_empty() {
        return Ok((None, 0, None));
    }
    let hashes: Vec<u128> = ids.iter().map(|i| suppression.hash(i)).collect();
    let already = hashes.iter().filter(|h| suppression.contains_hash(**h)).count();
    let candidates = Arc::new(Forgotten::new(suppression, hashes.iter().copied(), ids.clone()));
    let mut known: HashSet<u128> = state.map(|s| s.find(&candidates)).unwrap_or_default();
    let mut landing_files = None;
    if let Some(landing) = landing {
        let holding = crate::sources::files_holding(landing, schemas, &candidates, concurrency).await?;
        known.extend(holding.customers);
        landing_files = Some(holding.files);
    }
    let unknown: Vec<usize> = hashes
        .iter()
        .enumerate()
        .filter(|(_, h)| !suppression.contains_hash(**h) && !known.contains(h))
        .map(|(i, _)| i + 1)
        .collect();
    if !unknown.is_empty() {
        return Err(ForgetError::Unknown {
            count: unknown.len(),
            total: ids.len(),
            positions: positions(&unknown),
        }
        .into());
    }
    let new: Vec<u128> = hashes.into_iter().filter(|h| !suppression.contains_hash(*h)).collect();
    if new.is_empty() {
        return Ok((None, already, landing_files));
    }
    let request = ErasureRequest {
        id: id.to_string(),
        requested_at: Utc::now(),
        customers: new.len(),
        hashes: new.iter().map(|h| format!("{h:032x}")).collect(),
        purge_history,
        status: RequestStatus::Pending,
        completed_at: None,
        removed: BTreeMap::new(),
        landing_files: Vec::new(),
        versions_gone: BTreeMap::new(),
        history_until: None,
    };
    // The suppression list first: from here on no read brings them back.
    suppression.add(warehouse, &new).await?;
    request.save(warehouse).await?;
    info!(customers = new.len(), "erasure recorded");
    Ok((Some(request), already, landing_files))
}

/// "1, 4-6, 9": list positions, runs collapsed (at most 20 shown).
fn positions(list: &[usize]) -> String {
    let mut runs: Vec<(usize, usize)> = Vec::new();
    for &p in list {
        match runs.last_mut() {
            Some((_, end)) if *end + 1 == p => *end = p,
            _ => runs.push((p, p)),
        }
    }
    let shown: Vec<String> = runs
        .iter()
        .take(20)
        .map(|&(a, b)| if a == b { a.to_string() } else { format!("{a}-{b}") })
        .collect();
    let more = if runs.len() > 20 { ", ..." } else { "" };
    format!("{}{more}", shown.join(", "))
}

/// Erase the customers of every request in `requests` (pending ones) everywhere, in one pass,
/// saving each request's progress after each step; then mark them completed. `ids` are the
/// ids given now, for what can only be searched as bytes (a corrupt quarantined file);
/// `landing_files`, the landing files holding the customers if already known.
async fn erase(
    (warehouse, landing, schemas): (&Location, Option<&Location>, &Schemas),
    settings: &Settings,
    suppression: &Suppression,
    state: &mut Option<State>,
    (requests, ids, landing_files): (&mut [ErasureRequest], Vec<String>, Option<Vec<String>>),
) -> Result<ForgetReport, Error> {
    let mut hashes = Vec::new();
    for request in requests.iter() {
        hashes.extend(request.hash_values()?);
    }
    let forgotten = Arc::new(Forgotten::new(suppression, hashes, ids));
    // What earlier, interrupted passes removed: this pass adds to it.
    let before: Vec<BTreeMap<String, u64>> = requests.iter().map(|r| r.removed.clone()).collect();
    let request_id = requests.last().map(|r| r.id.clone()).unwrap_or_default();
    let mut removed: BTreeMap<String, u64> = BTreeMap::new();

    let mut stages = Steps::start();
    let state_version = erase_state(warehouse, state, &forgotten, &request_id, &mut removed)
        .instrument(info_span!("state"))
        .await?;
    save_progress(warehouse, requests, &before, &removed).await?;
    stages.done("state");

    let quarantine = Quarantine::new(warehouse).erase(&forgotten).await?;
    removed.insert("quarantine rows".into(), quarantine.rows as u64);
    removed.insert("quarantine files".into(), quarantine.files as u64);
    save_progress(warehouse, requests, &before, &removed).await?;
    stages.done("quarantine");

    let table_settings = settings.compaction.table_settings();
    let mut erased: Vec<ErasedTable> = Vec::new();
    for table in ERASED_TABLES {
        let done = match table {
            CHANGES_TABLE | HISTORY_TABLE => erasure::erase_rows(warehouse, table, &forgotten, &request_id).await?,
            _ => erasure::erase_tags(warehouse, &forgotten, &request_id, &table_settings).await?,
        };
        erased.push(done);
        stages.done(table);
    }
    removed.extend(erasure::removed_by_table(&erased));
    save_progress(warehouse, requests, &before, &removed).await?;

    let purge = requests.iter().any(|r| r.purge_history);
    let mut first_readable_version = BTreeMap::new();
    let mut history_until = None;
    if purge {
        for table in ERASED_TABLES {
            if let Some(version) = erasure::purge_history(warehouse, table, &table_settings).await? {
                first_readable_version.insert(table.to_string(), version);
            }
        }
        stages.done("purge");
    } else {
        let retention = settings.compaction.retention.max(LOG_RETENTION);
        history_until = Some(Utc::now() + chrono::Duration::from_std(retention).unwrap_or(chrono::Duration::MAX));
    }

    let landing_files = match (landing_files, landing) {
        (Some(files), _) => files,
        (None, Some(landing)) => {
            crate::sources::files_holding(landing, schemas, &forgotten, settings.read_concurrency)
                .await?
                .files
        }
        (None, None) => Vec::new(),
    };
    stages.done("landing");
    let completed_at = Utc::now();
    for request in requests.iter_mut() {
        request.status = RequestStatus::Completed;
        request.completed_at = Some(completed_at);
        request.landing_files = landing_files.clone();
        request.versions_gone = first_readable_version
            .iter()
            .map(|(t, v)| (t.clone(), format!("before {v}")))
            .collect();
        request.history_until = history_until;
        request.save(warehouse).await?;
    }
    if purge {
        mark_history_purged(warehouse, &first_readable_version, completed_at).await?;
    }
    info!(
        requests = requests.len(),
        customers = forgotten.len(),
        "erasure completed"
    );
    Ok(ForgetReport {
        requests: requests.iter().map(|r| r.id.clone()).collect(),
        customers: requests.iter().map(|r| r.customers).sum(),
        already_forgotten: 0,
        removed,
        files_rewritten: erased.iter().map(|e| (e.table.clone(), e.files_rewritten)).collect(),
        state_version,
        tags_version: erased.first().and_then(|e| e.version),
        landing_files,
        first_readable_version,
        history_until,
        stages_ms: stages.ms,
        duration_ms: 0,
    })
}

/// The state without the customers: a new version when it held any; either way no file of
/// an older version is left (a killed erasure may have committed without collecting).
async fn erase_state(
    warehouse: &Location,
    state: &mut Option<State>,
    forgotten: &Forgotten,
    request_id: &str,
    removed: &mut BTreeMap<String, u64>,
) -> Result<Option<u64>, Error> {
    let Some(state) = state.as_mut() else {
        return Ok(None);
    };
    let rows = state.erase(&|id| forgotten.contains(id));
    let count: usize = rows.values().sum();
    removed.insert("state".into(), count as u64);
    match count {
        0 => state.collect_unreferenced(warehouse).await?,
        _ => {
            state.commit_erasure(warehouse, request_id).await?;
        }
    }
    Ok(Some(state.version))
}

/// A purge of the history also completes the earlier requests still waiting for a vacuum:
/// they are marked purged.
async fn mark_history_purged(
    warehouse: &Location,
    first_readable_version: &BTreeMap<String, u64>,
    at: DateTime<Utc>,
) -> Result<(), Error> {
    for mut request in ErasureRequest::list(warehouse).await? {
        if request.status == RequestStatus::Completed && request.history_until.is_some_and(|until| until > at) {
            request.history_until = None;
            request.versions_gone = first_readable_version
                .iter()
                .map(|(t, v)| (t.clone(), format!("before {v}")))
                .collect();
            request.save(warehouse).await?;
        }
    }
    Ok(())
}

/// Record in every request what it had removed `before` this pass plus what this pass has
/// `removed` so far.
async fn save_progress(
    warehouse: &Location,
    requests: &mut [ErasureRequest],
    before: &[BTreeMap<String, u64>],
    removed: &BTreeMap<String, u64>,
) -> Result<(), Error> {
    for (request, before) in requests.iter_mut().zip(before) {
        request.removed = before.clone();
        for (table, count) in removed {
            *request.removed.entry(table.clone()).or_default() += count;
        }
        request.save(warehouse).await?;
    }
    Ok(())
}

/// `tagflow forget --status`: every request, oldest first.
pub async fn status(settings: &Settings) -> Result<Vec<ErasureRequest>, Error> {
    let warehouse = settings.warehouse()?;
    check_locations(&[warehouse]).await?;
    Ok(ErasureRequest::list(warehouse).await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_collapse_runs() {
        assert_eq!(positions(&[1, 2, 3, 5, 7, 8]), "1-3, 5, 7-8");
        assert_eq!(positions(&[4]), "4");
    }

    #[test]
    fn ids_are_single_tokens() {
        assert!(check_id("c000123").is_ok());
        assert!(check_id("c 1").is_err());
        assert!(check_id("c\u{0}1").is_err());
        assert!(check_id("").is_err());
    }
}
