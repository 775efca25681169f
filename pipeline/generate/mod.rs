//! Synthetic landing data: writes realistic raw event files (clicks, carts, orders, and the
//! catalog v2 streams touches and consents) into a
//! landing zone, the way upstream writers do (input contract: `shared/spec/events.md`), so that
//! demos, tests and benchmarks have data in which every tag of the catalog
//! (`shared/spec/tags.md`) finds customers.
//!
//! Owns:
//! - the customer model: lifecycle (new / active / dormant / churned), heavy-tailed activity,
//!   favourite categories and brands, price level, and a few archetypes (promo lovers, refund
//!   abusers, big-ticket buyers, low-credit buyers, cart abandoners, shared devices);
//! - the session funnel: views -> cart adds (and removes) -> order `placed` -> `paid` /
//!   `payment_failed` / `cancelled` -> sometimes `refunded` days later;
//! - marketing: daily tasks of several types and channels, replies, orders that follow some
//!   contacts, consent changes (`marketing`);
//! - the landing layout and delivery quirks: `<stream>/dt=YYYY-MM-DD/part-NNNN.parquet`,
//!   1-3 files per stream and day, re-sent files, files repeating events of the previous file,
//!   late files, three writer flavours (column types), and on request bad rows and a corrupt file.
//!
//! Must not: touch the warehouse, read anything back, or know how tags are computed. The rates
//! below are tuned against the catalog's windows (365 / 90 / 30 / 7 / 3 days) so that every tag
//! comes out for a visible share of customers as of `end` 23:59:59 UTC; nothing else depends on
//! them.
//!
//! Determinism: the same options give byte-identical files. All randomness comes from ChaCha8
//! generators seeded from `seed` (one per customer and one per written stream), iteration is over
//! vectors and `BTreeMap`s only, and the wall clock is never read.
//!
//! Memory: events are kept as small fixed-size rows bucketed by (stream, day) (about 40-56 bytes
//! an event) and turned into Arrow arrays one file at a time.
//!
//! Boundary: the generator stands beside tagflow's layers. It imports [`crate::storage`] only,
//! and only the application (`demo`) and the CLI (`generate`) call it, through this module's
//! public interface: [`generate`], [`GenerateOptions`], [`GenerateSummary`], [`GenerateError`].
//! Its parts, in the order data flows: `rates` (shares and sizes), `catalog` (categories,
//! brands, prices), `world` (dates, time, random streams), `customers`, `events` (sessions and
//! orders), `bad_input`, `streams` (columns), `writers` (writer flavours, Parquet), `layout`
//! (files and delivery).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, Float64Array, Int32Array, StringBuilder, TimestampMicrosecondArray, TimestampMillisecondArray,
    TimestampNanosecondArray,
};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Field, Schema};
use arrow::error::ArrowError;
use arrow::record_batch::RecordBatch;
use chrono::{Days, NaiveDate};
use object_store::{ObjectStore, PutOptions, PutPayload};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::errors::ParquetError;
use parquet::file::properties::WriterProperties;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tracing::info;

use crate::storage::Location;

mod bad_input;
mod catalog;
mod customers;
mod events;
mod layout;
mod marketing;
mod rates;
mod streams;
mod world;
mod writers;

use bad_input::*;
use catalog::*;
use customers::*;
use events::*;
use layout::*;
use marketing::*;
use rates::*;
use streams::*;
use world::*;
use writers::*;

// ---------------------------------------------------------------------------------------------
// Public interface
// ---------------------------------------------------------------------------------------------

/// What to generate.
#[derive(Debug, Clone)]
pub struct GenerateOptions {
    /// Number of customers (`cust-000001` ...).
    pub customers: usize,
    /// History length in days, ending on `end` inclusive.
    pub days: u32,
    /// Seed of every random choice; the same options give byte-identical files.
    pub seed: u64,
    /// Last UTC day of generated events.
    pub end: NaiveDate,
    /// Also write a few bad rows and one corrupt file (for demos / quarantine).
    pub bad_input: bool,
}

/// What was written.
#[derive(Debug, Default, serde::Serialize)]
pub struct GenerateSummary {
    /// Parquet files written per stream ("clicks", "carts", "orders", "touches", "consents"), re-sent and late files
    /// included; the corrupt file is counted in `bad_files` only.
    pub files: BTreeMap<String, usize>,
    /// Rows written per stream, duplicates (re-sent files, repeated events) and bad rows included.
    pub events: BTreeMap<String, usize>,
    /// Files re-sent under a second name (`part-NNNN-resend.parquet`).
    pub duplicate_files: usize,
    /// Files of late events (`late-NNNN.parquet`).
    pub late_files: usize,
    /// Files that are not Parquet at all.
    pub bad_files: usize,
    /// Rows that break a row rule of the contract.
    pub bad_rows: usize,
}

/// Why generating failed.
#[derive(Debug, thiserror::Error)]
pub enum GenerateError {
    #[error("cannot write landing object '{path}': {source}")]
    Storage {
        path: String,
        #[source]
        source: object_store::Error,
    },
    #[error("cannot encode Parquet: {0}")]
    Parquet(#[from] ParquetError),
    #[error("cannot build Arrow data: {0}")]
    Arrow(#[from] ArrowError),
    #[error("invalid generate options: {0}")]
    InvalidOptions(String),
}

/// Simulate the customers and write their events into `landing`.
///
/// Simulation and encoding are CPU-bound and run inline on the calling task (10M events take
/// well under a minute in a release build); only the object-store writes are awaited.
pub async fn generate(landing: &Location, opts: &GenerateOptions) -> Result<GenerateSummary, GenerateError> {
    let world = World::new(opts)?;
    info!(
        customers = opts.customers,
        days = opts.days,
        seed = opts.seed,
        end = %opts.end,
        landing = %landing.url,
        "generate: simulating customers"
    );
    let Sink {
        clicks, carts, orders, ..
    } = simulate(&world);
    let (touches, consents) = simulate_marketing(&world, &orders);
    let bad_plan = if opts.bad_input {
        plan_bad_rows(&world)
    } else {
        BadPlan::new()
    };

    let mut out = Output::new(landing, &world);
    write_stream(&mut out, clicks, &bad_plan).await?;
    write_stream(&mut out, carts, &bad_plan).await?;
    write_stream(&mut out, orders, &bad_plan).await?;
    write_stream(&mut out, touches, &bad_plan).await?;
    write_stream(&mut out, consents, &bad_plan).await?;
    if opts.bad_input {
        out.write_corrupt_file().await?;
    }

    let summary = out.summary;
    info!(
        files = ?summary.files,
        events = ?summary.events,
        duplicate_files = summary.duplicate_files,
        late_files = summary.late_files,
        bad_files = summary.bad_files,
        bad_rows = summary.bad_rows,
        "generate: done"
    );
    Ok(summary)
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------
#[cfg(test)]
mod tests {
    use super::*;
    use futures::TryStreamExt;
    use object_store::memory::InMemory;
    use object_store::path::Path;
    use object_store::GetOptions;
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

    fn memory_landing() -> Location {
        Location {
            url: url::Url::parse("memory:///landing").unwrap(),
            store: Arc::new(InMemory::new()),
            prefix: Path::from("landing"),
            options: BTreeMap::new(),
        }
    }

    fn options(bad_input: bool) -> GenerateOptions {
        GenerateOptions {
            customers: 120,
            days: 60,
            seed: 7,
            end: date(2026, 11, 20),
            bad_input,
        }
    }

    /// All objects as (relative path, bytes), sorted by path.
    async fn contents(landing: &Location) -> Vec<(String, Vec<u8>)> {
        let mut metas: Vec<_> = landing.store.list(Some(&landing.prefix)).try_collect().await.unwrap();
        metas.sort_by(|a, b| a.location.cmp(&b.location));
        let mut out = Vec::new();
        for meta in metas {
            let bytes = landing
                .store
                .get_opts(&meta.location, GetOptions::default())
                .await
                .unwrap()
                .bytes()
                .await
                .unwrap();
            out.push((landing.relative(&meta.location).unwrap(), bytes.to_vec()));
        }
        out
    }

    #[tokio::test]
    async fn same_options_give_identical_files() {
        let (a, b) = (memory_landing(), memory_landing());
        let summary_a = generate(&a, &options(true)).await.unwrap();
        let summary_b = generate(&b, &options(true)).await.unwrap();
        assert_eq!(summary_a.events, summary_b.events);
        assert_eq!(contents(&a).await, contents(&b).await);
    }

    #[tokio::test]
    async fn layout_and_summary_match() {
        let landing = memory_landing();
        let summary = generate(&landing, &options(true)).await.unwrap();
        let files = contents(&landing).await;
        let parquet_files: usize = summary.files.values().sum();
        assert_eq!(files.len(), parquet_files + summary.bad_files);
        assert_eq!(summary.bad_files, 1);
        assert!(summary.bad_rows > 0);
        for (path, _) in &files {
            let mut parts = path.split('/');
            let stream = parts.next().unwrap();
            assert!(Stream::ALL.iter().any(|s| s.name() == stream), "{path}");
            assert!(parts.next().unwrap().starts_with("dt="), "{path}");
            let name = parts.next().unwrap();
            assert!(
                name.starts_with("part-") || name.starts_with("late-") || name == "corrupt-0000.parquet",
                "{path}"
            );
        }

        // Every Parquet file reads back, and the row counts add up.
        let mut rows = 0;
        for (path, data) in files {
            if path.contains("corrupt-") {
                continue;
            }
            let reader = ParquetRecordBatchReaderBuilder::try_new(bytes::Bytes::from(data))
                .unwrap()
                .build()
                .unwrap();
            for batch in reader {
                rows += batch.unwrap().num_rows();
            }
        }
        assert_eq!(rows, summary.events.values().sum::<usize>());
    }

    #[test]
    fn rejects_history_before_2000() {
        let opts = GenerateOptions {
            end: date(2000, 3, 1),
            days: 365,
            ..options(false)
        };
        assert!(matches!(World::new(&opts), Err(GenerateError::InvalidOptions(_))));
    }
}
