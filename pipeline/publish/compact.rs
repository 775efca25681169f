//! Compaction: keeps the warehouse's Delta tables quick to open and read as micro-batches
//! pile up. Per table: bin-packing of small files (and, for `customer_tags`, a z-order by
//! `customer_id` inside each `tag` partition, so one customer's row of a tag sits in one
//! file whose statistics let readers skip the others), a checkpoint, and a vacuum of the
//! files no retained version needs. Runs by policy after a publish and on demand
//! (`tagflow compact`).
//!
//! Owns: optimize, checkpoint and vacuum calls and the policy deciding when they run.
//! Must not: change what any version holds. Optimize commits rewrite files without changing
//! rows; vacuum deletes only files removed from the table longer ago than the retention, so
//! every version that was current within the retention stays readable.

use std::num::NonZeroU64;
use std::time::{Duration, Instant};

use deltalake::operations::optimize::OptimizeType;
use deltalake::operations::vacuum::VacuumMode;
use tracing::{info, info_span, warn, Instrument};

use crate::publish::tables::{CHANGES_TABLE, RUNS_TABLE, TAGS_TABLE};
use crate::publish::{file_count, open_or_new, table_url, PublishError};
use crate::storage::Location;

/// When and how compaction runs (`[compaction]` in the config).
#[derive(Debug, Clone)]
pub struct CompactionSettings {
    /// After a publish, compact when the new `customer_tags` version is a multiple of this.
    pub every_versions: u64,
    /// ... or when `customer_tags` has more data files than this.
    pub max_files: usize,
    /// Target size of a compacted file, in bytes.
    pub target_file_size: u64,
    /// Removed files younger than this stay for readers of older versions.
    pub retention: Duration,
    /// A Delta checkpoint every this many commits (set on tables tagflow creates).
    pub checkpoint_interval: u32,
}

impl Default for CompactionSettings {
    fn default() -> Self {
        CompactionSettings {
            every_versions: 25,
            max_files: 200,
            target_file_size: 128 * 1024 * 1024,
            retention: Duration::from_secs(7 * 86_400),
            checkpoint_interval: 10,
        }
    }
}

impl CompactionSettings {
    /// Whether a publish that produced `version` with `files` data files should compact.
    pub fn due(&self, version: u64, files: usize) -> bool {
        (version > 0 && version.is_multiple_of(self.every_versions)) || files > self.max_files
    }

    pub fn table_settings(&self) -> crate::publish::tags::TableSettings {
        crate::publish::tags::TableSettings {
            checkpoint_interval: self.checkpoint_interval,
            file_retention: self.retention,
        }
    }
}

/// What compaction did to one table.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TableCompaction {
    pub table: String,
    pub version_before: u64,
    pub version_after: u64,
    pub files_before: usize,
    pub files_after: usize,
    pub files_removed: u64,
    pub files_added: u64,
    pub files_vacuumed: usize,
    /// The version the checkpoint written now covers.
    pub checkpoint_version: u64,
    pub duration_ms: u64,
}

/// What `tagflow compact` (or a policy compaction) did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CompactReport {
    pub tables: Vec<TableCompaction>,
    pub duration_ms: u64,
}

impl CompactReport {
    pub fn render(&self) -> String {
        let mut out = String::new();
        for t in &self.tables {
            out.push_str(&format!(
                "{:<14} v{} -> v{}  files {} -> {} (removed {}, added {}), vacuumed {}, checkpoint at v{}, {} ms\n",
                t.table,
                t.version_before,
                t.version_after,
                t.files_before,
                t.files_after,
                t.files_removed,
                t.files_added,
                t.files_vacuumed,
                t.checkpoint_version,
                t.duration_ms
            ));
        }
        out
    }
}

/// Compact every table tagflow writes under `warehouse` that exists. The caller holds the
/// warehouse lock, so no tagflow publish races the rewrite.
pub async fn compact(warehouse: &Location, settings: &CompactionSettings) -> Result<CompactReport, PublishError> {
    let started = Instant::now();
    let mut tables = Vec::new();
    let layouts = [
        (TAGS_TABLE, OptimizeType::ZOrder(vec!["customer_id".to_string()])),
        (CHANGES_TABLE, OptimizeType::Compact),
        (RUNS_TABLE, OptimizeType::Compact),
    ];
    for (table, layout) in layouts {
        if table == TAGS_TABLE && has_live_changes(warehouse).await? {
            warn!("customer_tags has live changes not merged yet (a follow session stopped before its merge); not compacted: the next follow batch or run merges them");
            continue;
        }
        let span = info_span!("compact", table);
        if let Some(done) = compact_table(warehouse, table, layout, settings)
            .instrument(span)
            .await?
        {
            tables.push(done);
        }
    }
    Ok(CompactReport {
        tables,
        duration_ms: started.elapsed().as_millis() as u64,
    })
}

/// Whether changes are published live on top of `customer_tags`' latest version.
async fn has_live_changes(warehouse: &Location) -> Result<bool, PublishError> {
    let (tags, feed) = tokio::try_join!(
        open_or_new(warehouse, TAGS_TABLE),
        open_or_new(warehouse, CHANGES_TABLE)
    )?;
    match tags.version() {
        Some(version) => Ok(!crate::publish::live::view_rows(&feed, version).await?.is_empty()),
        None => Ok(false),
    }
}

async fn compact_table(
    warehouse: &Location,
    table: &str,
    layout: OptimizeType,
    settings: &CompactionSettings,
) -> Result<Option<TableCompaction>, PublishError> {
    let started = Instant::now();
    let delta = open_or_new(warehouse, table).await?;
    let Some(version_before) = delta.version() else {
        return Ok(None);
    };
    let url = table_url(warehouse, table).to_string();
    let failed = |source| PublishError::Commit {
        url: url.clone(),
        source,
    };
    let files_before = file_count(&delta);
    let target = NonZeroU64::new(settings.target_file_size.max(1)).expect("at least 1");
    let (delta, metrics) = delta
        .optimize()
        .with_type(layout)
        .with_target_size(target)
        .await
        .map_err(failed)?;
    deltalake::checkpoints::create_checkpoint(&delta, None)
        .await
        .map_err(failed)?;
    let checkpoint_version = delta.version().unwrap_or_default();
    let retention = chrono::Duration::from_std(settings.retention).unwrap_or(chrono::Duration::MAX);
    let (delta, vacuumed) = delta
        .vacuum()
        .with_retention_period(retention)
        .with_enforce_retention_duration(false)
        // Full mode lists the files: a checkpoint drops tombstones older than the
        // retention, and the files they named would never be found from the log alone.
        .with_mode(VacuumMode::Full)
        .await
        .map_err(failed)?;
    let done = TableCompaction {
        table: table.to_string(),
        version_before,
        version_after: delta.version().unwrap_or_default(),
        files_before,
        files_after: file_count(&delta),
        files_removed: metrics.num_files_removed,
        files_added: metrics.num_files_added,
        files_vacuumed: vacuumed.files_deleted.len(),
        checkpoint_version,
        duration_ms: started.elapsed().as_millis() as u64,
    };
    info!(
        files_before = done.files_before,
        files_after = done.files_after,
        vacuumed = done.files_vacuumed,
        checkpoint = done.checkpoint_version,
        "compacted"
    );
    Ok(Some(done))
}
