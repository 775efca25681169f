//! Synthetic landing data: writes realistic raw event files (clicks, carts, orders) into a
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
    /// Parquet files written per stream ("clicks", "carts", "orders"), re-sent and late files
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
    let bad_plan = if opts.bad_input {
        plan_bad_rows(&world)
    } else {
        BadPlan::new()
    };

    let mut out = Output::new(landing, &world);
    write_stream(&mut out, clicks, &bad_plan).await?;
    write_stream(&mut out, carts, &bad_plan).await?;
    write_stream(&mut out, orders, &bad_plan).await?;
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
// Rates and sizes. Shares are of all customers unless the name says otherwise.
// ---------------------------------------------------------------------------------------------

// Time.
const SECOND_MS: i64 = 1_000;
const HOUR_MS: i64 = 3_600 * SECOND_MS;
const DAY_MS: i64 = 24 * HOUR_MS;
/// Latest generated time of day (23:59:59.000): every event of `end` counts for a run evaluated
/// as of `end` 23:59:59. Times are whole milliseconds, so the millisecond writer loses nothing.
const LAST_MS_OF_DAY: i64 = DAY_MS - SECOND_MS;
/// Sessions end at least this long before midnight, so immediate follow-ups (the payment
/// result) stay on the same day, and on `end` are not cut off.
const SESSION_END_MARGIN_MS: i64 = 5 * 60 * SECOND_MS;
/// Traffic by hour of day (UTC): quiet nights, evening peak.
const HOUR_WEIGHTS: [u32; 24] = [
    3, 2, 1, 1, 1, 1, 2, 4, 6, 7, 8, 9, 10, 9, 8, 8, 9, 10, 12, 14, 15, 14, 10, 6,
];

// The catalog's windows, in days (today included).
const RECENT_DAYS: u32 = 30;
const DORMANT_DAYS: u32 = 90;
const YEAR_DAYS: u32 = 365;
const ABANDON_DAYS: u32 = 3;

// Limits of the options.
const MAX_CUSTOMERS: usize = 100_000_000;
const MAX_DAYS: u32 = 3_660;

// Volume: about EVENTS_PER_CUSTOMER_DAY * customers * days events in total.
const EVENTS_PER_CUSTOMER_DAY: f64 = 0.25;
/// Spread of the per-customer activity (log-normal): most customers visit about once a month,
/// the top 1% some 20 times more often.
const ACTIVITY_SIGMA: f64 = 1.3;
const MAX_SESSIONS_PER_DAY: f64 = 3.0;
const CALIBRATION_ROUNDS: usize = 6;

// Lifecycle mix (the rest is churned). Each stage is pinned by a forced first and last visit.
const NEW_SHARE: f64 = 0.12;
const ACTIVE_SHARE: f64 = 0.46;
const DORMANT_SHARE: f64 = 0.16;

// Tastes.
const TWO_FAVOURITES_SHARE: f64 = 0.55;
/// Loyal customers buy one brand of their first favourite category most of the time, which
/// makes `brand_enthusiast` once they have 3 orders.
const LOYAL_SHARE: f64 = 0.30;
const LOYAL_CATEGORY_PROB: f64 = 0.85;
const LOYAL_BRAND_PROB: f64 = 0.90;
const FAVOURITE_CATEGORY_PROB: f64 = 0.75;
const PREFERRED_BRAND_PROB: f64 = 0.50;
/// Share of product views in the session's category (the rest is cross-browsing).
const SESSION_CATEGORY_VIEW_PROB: f64 = 0.85;
/// Brand popularity inside a category, by rank.
const BRAND_RANK_WEIGHTS: [u32; 5] = [50, 25, 15, 10, 6];
/// Products are numbered 0..=MAX_ITEM per (category, brand); the price grows exponentially with
/// the number, and each customer shops around a personal price tier. Together with category
/// base prices from 6 to 780 this gives heavy-tailed prices and order amounts.
const MAX_ITEM: u8 = 119;
const PRICE_STEP: f64 = 0.03;
const PRICE_FLOOR_FACTOR: f64 = 0.25;
const PRICE_TIER_MEAN: f64 = 40.0;
const PRICE_TIER_SD: f64 = 15.0;
const ITEM_SPREAD: f64 = 10.0;

// Devices and channels.
const SECOND_DEVICE_PROB: f64 = 0.45;
const THIRD_DEVICE_PROB: f64 = 0.15;
const PRIMARY_DEVICE_PROB: f64 = 0.70;
/// Own devices are numbered `customer * DEVICE_STRIDE + k`; shared ones from SHARED_DEVICE_BASE.
const DEVICE_STRIDE: u32 = 4;
const SHARED_DEVICE_BASE: u32 = 0xC000_0000;
const CHANNELS: [&str; 3] = ["web", "app", "mini_program"];
const CHANNEL_WEIGHTS: [u32; 3] = [40, 45, 15];
const CHANNEL_WEB: u8 = 0;
const SECOND_ADDRESS_PROB: f64 = 0.2;
const PAYMENT_METHODS: [&str; 5] = ["card", "wallet", "bank_transfer", "cash_on_delivery", "gift_card"];
const PAYMENT_WEIGHTS: [u32; 5] = [45, 35, 8, 8, 4];
const PREFERRED_PAYMENT_PROB: f64 = 0.8;

// Funnel.
/// "Browsers" look a lot and rarely buy; they make most `prospect`s and `awareness`/`interest`.
const BROWSER_SHARE: f64 = 0.25;
const BROWSER_CART_PROB: (f64, f64) = (0.05, 0.15);
const BROWSER_BUY_PROB: (f64, f64) = (0.10, 0.25);
const SHOPPER_CART_PROB: (f64, f64) = (0.35, 0.65);
const SHOPPER_BUY_PROB: (f64, f64) = (0.45, 0.85);
const NULL_SESSION_SHARE: f64 = 0.01;
const MORE_VIEWS_PROB: f64 = 0.65;
const MAX_VIEWS: u32 = 12;
const NAV_PAGE_PROB: f64 = 0.25;
const PROMO_PAGE_PROB: f64 = 0.05;
const PROMO_LOVER_PROMO_PAGE_PROB: f64 = 0.35;
/// Landing pages other than promo: home, search, category.
const LANDING_WEIGHTS: [u32; 3] = [45, 25, 30];
/// Pages between product views: category, search, other.
const NAV_WEIGHTS: [u32; 3] = [60, 30, 10];
const SECOND_ADD_PROB: f64 = 0.40;
const THIRD_ADD_PROB: f64 = 0.15;
const QUANTITY_WEIGHTS: [u32; 3] = [80, 15, 5];
const REMOVE_PROB: f64 = 0.15;

// Orders.
const PROMO_LOVER_SHARE: f64 = 0.12;
const PROMO_LOVER_BUY_BOOST: f64 = 1.15;
const PROMO_LOVER_DISCOUNT_PROB: f64 = 0.85;
const DISCOUNT_PROB: f64 = 0.08;
const DISCOUNT_RATE: (f64, f64) = (0.05, 0.30);
const FAIL_PROB: f64 = 0.03;
const CANCEL_PROB: f64 = 0.05;
const RETRY_AFTER_FAIL_PROB: f64 = 0.5;
const CANCEL_AFTER_FAIL_PROB: f64 = 0.5;
const REFUND_PROB: f64 = 0.04;
const REFUND_DELAY_DAYS: (u32, u32) = (2, 20);

// Archetypes.
/// Refund abusers (among active and dormant customers): several paid orders in the last year,
/// most of them refunded -> `refund_risk`.
const ABUSER_SHARE_OF_ELIGIBLE: f64 = 0.07;
const ABUSER_REFUND_PROB: f64 = 0.6;
const ABUSER_ACTIVITY_BOOST: f64 = 2.0;
const ABUSER_PURCHASES: (u32, u32) = (3, 6);
const ABUSER_FORCED_REFUNDS: u32 = 2;
/// Big-ticket buyers (among active and dormant customers): rare visits, expensive electronics,
/// one or two orders a year that still reach the top monetary quintile -> `big_spender`
/// (without them, long histories leave the top quintile to frequent buyers only).
const BIG_TICKET_SHARE_OF_ELIGIBLE: f64 = 0.07;
const BIG_TICKET_CATEGORIES: [u8; 2] = [0, 1];
const BIG_TICKET_TIER_MEAN: f64 = 85.0;
const BIG_TICKET_TIER_SD: f64 = 10.0;
const BIG_TICKET_ACTIVITY: f64 = 0.3;
/// Low-credit buyers (among new and active customers): a burst of failed or cancelled orders
/// in the last 30 days -> `low_credit`.
const LOW_CREDIT_SHARE_OF_RECENT: f64 = 0.06;
const LOW_CREDIT_ATTEMPTS: (u32, u32) = (4, 7);
const LOW_CREDIT_MIN_FAILURES: u32 = 3;
const LOW_CREDIT_FAIL_PROB: f64 = 0.25;
const LOW_CREDIT_CANCEL_PROB: f64 = 0.15;
const FAILED_ORDER_PAYMENT_FAILED_PROB: f64 = 0.6;
/// Cart abandoners (among new and active customers): a focused session in the last 3 days
/// ending with items in the cart -> `cart_abandoner`, usually `category_intent` too.
const ABANDONER_SHARE_OF_RECENT: f64 = 0.10;
/// Shared devices (family tablets, shop terminals, fraud rings): each used by 5-12 customers
/// within one 30-day window. Three groups in four use the last 30 days (-> `shared_device`),
/// the others an older window (must not tag).
const SHARED_GROUPS_PER_CUSTOMER: f64 = 1.0 / 120.0;
const SHARED_GROUP_SIZE: (u32, u32) = (5, 12);
const SHARED_VISITS: (u32, u32) = (1, 2);
const OLD_SHARED_GROUP_EVERY: u32 = 4;

// Delivery.
const LATE_SHARE: f64 = 0.02;
const LATE_MAX_DAYS: u32 = 10;
const RESEND_SHARE: f64 = 0.01;
const REPEAT_TAIL_SHARE: f64 = 0.05;
const REPEAT_TAIL_MAX: usize = 5;
const SMALL_DAY_ROWS: usize = 500;
const MIN_FILE_ROWS: usize = 200;
const MAX_FILES_PER_DAY: u32 = 3;
const SPARK_LIKE_SHARE: f64 = 0.10;
const DICTIONARY_SHARE: f64 = 0.10;
const PROGRESS_EVERY_FILES: usize = 50;

// Bad input (only with `bad_input`): placed in the first file of a random day of the last two
// weeks of the stream.
const BAD_ROW_DAYS: u32 = 14;
const BAD_ROWS: [(Stream, BadKind); 10] = [
    (Stream::Clicks, BadKind::NullCustomer),
    (Stream::Clicks, BadKind::UnknownPageType),
    (Stream::Clicks, BadKind::UnknownPageType),
    (Stream::Clicks, BadKind::Year1999),
    (Stream::Carts, BadKind::ZeroQuantity),
    (Stream::Carts, BadKind::ZeroQuantity),
    (Stream::Carts, BadKind::Year1999),
    (Stream::Orders, BadKind::NegativeAmount),
    (Stream::Orders, BadKind::NegativeAmount),
    (Stream::Orders, BadKind::NullCustomer),
];
const UNKNOWN_PAGE_TYPE: &str = "flash_sale_v2";
const CORRUPT_FILE_BYTES: &[u8] =
    b"{\"event_id\":\"export-1\",\"note\":\"a JSON export that landed in the parquet folder\"}\n\
{\"event_id\":\"export-2\",\"note\":\"not a parquet file\"}\n";

// Salts of the random streams.
const SALT_PROFILE: u64 = 0x7072_6f66;
const SALT_SETTLE: u64 = 0x7365_7474;
const SALT_SESSIONS: u64 = 0x7365_7373;
const SALT_SHARED: u64 = 0x7368_6172;
const SALT_BAD: u64 = 0x6261_6472;
const SALT_DEVICE_ID: u64 = 0x6465_7669;
const SALT_ADDRESS: u64 = 0x6164_6472;

// ---------------------------------------------------------------------------------------------
// Catalog
// ---------------------------------------------------------------------------------------------

struct CategoryInfo {
    name: &'static str,
    base_price: f64,
    /// Weight when choosing favourites and cross-browsing.
    popularity: u32,
    /// Indexes into BRANDS, most popular first.
    brands: &'static [u8],
}

const CATEGORIES: [CategoryInfo; 12] = [
    category("electronics/phones", 420.0, 10, &[0, 1, 4, 23]),
    category("electronics/computers", 780.0, 5, &[2, 0, 4, 23]),
    category("electronics/audio", 95.0, 6, &[3, 1, 0, 23]),
    category("apparel/shoes", 75.0, 9, &[6, 5, 15, 9]),
    category("apparel/womens", 45.0, 9, &[7, 8, 9, 23]),
    category("apparel/mens", 40.0, 7, &[8, 9, 5, 23]),
    category("home/kitchen", 35.0, 8, &[10, 11, 22, 23]),
    category("beauty/skincare", 22.0, 8, &[12, 13, 14]),
    category("sports/outdoor", 60.0, 6, &[15, 16, 5]),
    category("books/fiction", 12.0, 5, &[17, 18, 20]),
    category("toys/games", 25.0, 5, &[19, 20, 23]),
    category("grocery/snacks", 6.0, 6, &[21, 22, 23]),
];

const fn category(name: &'static str, base_price: f64, popularity: u32, brands: &'static [u8]) -> CategoryInfo {
    CategoryInfo {
        name,
        base_price,
        popularity,
        brands,
    }
}

/// Fictional brands and their price premium.
const BRANDS: [(&str, f64); 24] = [
    ("Lumio", 1.3),
    ("Voltra", 1.0),
    ("Nordpeak", 1.2),
    ("Sonique", 1.1),
    ("Kairo", 0.8),
    ("Stridewell", 1.1),
    ("Fleetfoot", 0.9),
    ("Maison Vert", 1.5),
    ("Atelier Nine", 1.2),
    ("Urbanthread", 0.8),
    ("Copperpot", 1.2),
    ("Hearthly", 0.9),
    ("Glowra", 1.3),
    ("Dermaleaf", 1.0),
    ("Solstice Labs", 1.6),
    ("Trailmark", 1.1),
    ("Peakform", 1.0),
    ("Inkwell Press", 1.0),
    ("Paper Lantern", 0.9),
    ("Blockbuddy", 1.0),
    ("Puzzlewood", 1.1),
    ("Crunchery", 1.0),
    ("Nutmeg & Co", 1.2),
    ("Basics+", 0.7),
];

const PAGE_TYPES: [&str; 7] = ["home", "category", "product", "search", "promo", "checkout", "other"];
const PAGE_HOME: u8 = 0;
const PAGE_CATEGORY: u8 = 1;
const PAGE_PRODUCT: u8 = 2;
const PAGE_SEARCH: u8 = 3;
const PAGE_PROMO: u8 = 4;
const PAGE_CHECKOUT: u8 = 5;
const PAGE_OTHER: u8 = 6;

const ACTIONS: [&str; 2] = ["add", "remove"];
const ACTION_ADD: u8 = 0;
const ACTION_REMOVE: u8 = 1;

const STATUSES: [&str; 5] = ["placed", "paid", "payment_failed", "cancelled", "refunded"];
const STATUS_PLACED: u8 = 0;
const STATUS_PAID: u8 = 1;
const STATUS_PAYMENT_FAILED: u8 = 2;
const STATUS_CANCELLED: u8 = 3;
const STATUS_REFUNDED: u8 = 4;

/// "No value" in the compact rows below.
const NONE_U8: u8 = u8::MAX;
const NO_DEVICE: u32 = u32::MAX;
const NO_SESSION: u64 = u64::MAX;

/// A product, or only a category (category pages), or nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Product {
    category: u8,
    brand: u8,
    item: u8,
}

impl Product {
    const NONE: Product = Product {
        category: NONE_U8,
        brand: NONE_U8,
        item: NONE_U8,
    };

    fn category_only(category: u8) -> Self {
        Product {
            category,
            ..Product::NONE
        }
    }

    fn category_name(self) -> Option<&'static str> {
        (self.category != NONE_U8).then(|| CATEGORIES[usize::from(self.category)].name)
    }

    fn brand_name(self) -> Option<&'static str> {
        (self.brand != NONE_U8).then(|| BRANDS[usize::from(self.brand)].0)
    }

    fn price(self) -> Option<f64> {
        (self.item != NONE_U8).then(|| unit_price(self))
    }
}

/// Listed price of a product: fixed per product (the same on every view and order).
fn unit_price(product: Product) -> f64 {
    let category = &CATEGORIES[usize::from(product.category)];
    let premium = BRANDS[usize::from(product.brand)].1;
    let key = (u64::from(product.category) << 16) | (u64::from(product.brand) << 8) | u64::from(product.item);
    let jitter = 0.85 + 0.3 * unit_interval(mix64(key));
    let raw =
        category.base_price * PRICE_FLOOR_FACTOR * (PRICE_STEP * f64::from(product.item)).exp() * premium * jitter;
    shelf_price(raw)
}

/// Prices as shops show them: x.99 above 10, cents below.
fn shelf_price(raw: f64) -> f64 {
    if raw >= 10.0 {
        raw.floor() + 0.99
    } else {
        cents(raw.max(0.5))
    }
}

fn cents(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

// ---------------------------------------------------------------------------------------------
// The simulated world: dates, time, random streams
// ---------------------------------------------------------------------------------------------

struct World {
    seed: u64,
    customers: usize,
    days: u32,
    /// Index of `end` (days are numbered from the first day, 0).
    last: u32,
    day0_ms: i64,
    /// Latest allowed event time: `end` 23:59:59.000.
    end_ms: i64,
    /// Midnight of 1999-07-01, for bad rows.
    year_1999_ms: i64,
    /// `YYYY-MM-DD` of every day.
    dates: Vec<String>,
}

impl World {
    fn new(opts: &GenerateOptions) -> Result<Self, GenerateError> {
        let invalid = |reason: String| Err(GenerateError::InvalidOptions(reason));
        if opts.customers == 0 || opts.customers > MAX_CUSTOMERS {
            return invalid(format!("customers must be 1..={MAX_CUSTOMERS}, got {}", opts.customers));
        }
        if opts.days == 0 || opts.days > MAX_DAYS {
            return invalid(format!("days must be 1..={MAX_DAYS}, got {}", opts.days));
        }
        let earliest = date(2000, 1, 2);
        let first_day = match opts.end.checked_sub_days(Days::new(u64::from(opts.days - 1))) {
            Some(day) if day >= earliest => day,
            _ => {
                return invalid(format!(
                    "{} days ending {} start before {earliest}; events before 2000 are bad input",
                    opts.days, opts.end
                ))
            }
        };
        let epoch = date(1970, 1, 1);
        let day0_ms = first_day.signed_duration_since(epoch).num_days() * DAY_MS;
        let last = opts.days - 1;
        let dates = (0..opts.days)
            .map(|d| (first_day + Days::new(u64::from(d))).to_string())
            .collect();
        Ok(World {
            seed: opts.seed,
            customers: opts.customers,
            days: opts.days,
            last,
            day0_ms,
            end_ms: day0_ms + i64::from(last) * DAY_MS + LAST_MS_OF_DAY,
            year_1999_ms: date(1999, 7, 1).signed_duration_since(epoch).num_days() * DAY_MS,
            dates,
        })
    }

    fn day_start_ms(&self, day: u32) -> i64 {
        self.day0_ms + i64::from(day) * DAY_MS
    }

    /// Day index of a time between the first day and `end`.
    fn day_of(&self, ms: i64) -> usize {
        ((ms - self.day0_ms) / DAY_MS) as usize
    }

    /// First day of the window "the last `n` days" as of `end`.
    fn window_start(&self, n: u32) -> u32 {
        self.last.saturating_sub(n - 1)
    }

    /// A random stream for one purpose.
    fn rng(&self, salt: u64) -> ChaCha8Rng {
        ChaCha8Rng::seed_from_u64(mix64(self.seed ^ mix64(salt)))
    }

    /// A random stream for one purpose and one customer: customers do not shift each other.
    fn customer_rng(&self, customer: u32, salt: u64) -> ChaCha8Rng {
        ChaCha8Rng::seed_from_u64(mix64(self.seed ^ mix64(mix64(salt) ^ u64::from(customer))))
    }
}

fn date(year: i32, month: u32, day: u32) -> NaiveDate {
    NaiveDate::from_ymd_opt(year, month, day).expect("valid constant date")
}

/// SplitMix64 finaliser: a bijection on u64, so distinct inputs give distinct ids.
fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn unit_interval(hash: u64) -> f64 {
    (hash >> 11) as f64 / (1u64 << 53) as f64
}

/// Uniform integer in `lo..=hi` (`lo` if the range is empty).
fn between(rng: &mut ChaCha8Rng, lo: u32, hi: u32) -> u32 {
    if hi <= lo {
        lo
    } else {
        rng.random_range(lo..=hi)
    }
}

fn uniform(rng: &mut ChaCha8Rng, (lo, hi): (f64, f64)) -> f64 {
    rng.random_range(lo..hi)
}

/// Index drawn with the given weights.
fn weighted(rng: &mut ChaCha8Rng, weights: &[u32]) -> usize {
    let total: u32 = weights.iter().sum();
    let mut x = rng.random_range(0..total);
    for (i, &w) in weights.iter().enumerate() {
        if x < w {
            return i;
        }
        x -= w;
    }
    weights.len() - 1
}

/// Standard normal (Box-Muller).
fn normal(rng: &mut ChaCha8Rng) -> f64 {
    let u1 = 1.0 - rng.random::<f64>();
    let u2 = rng.random::<f64>();
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

fn poisson(rng: &mut ChaCha8Rng, mean: f64) -> u32 {
    if mean <= 0.0 {
        0
    } else if mean < 30.0 {
        // Knuth: count uniforms until their product drops below e^-mean.
        let limit = (-mean).exp();
        let mut product = rng.random::<f64>();
        let mut n = 0;
        while product > limit {
            product *= rng.random::<f64>();
            n += 1;
        }
        n
    } else {
        (mean + mean.sqrt() * normal(rng)).round().max(0.0) as u32
    }
}

/// Whole days of an exponential gap with `rate` per day, truncated to `0..=max`.
fn truncated_exp_days(rng: &mut ChaCha8Rng, rate: f64, max: u32) -> u32 {
    if max == 0 {
        return 0;
    }
    if rate <= 1e-9 {
        return between(rng, 0, max);
    }
    let mass = 1.0 - (-rate * (f64::from(max) + 1.0)).exp();
    let x = -(1.0 - rng.random::<f64>() * mass).ln() / rate;
    (x.floor() as u32).min(max)
}

/// A random gap of at least `min_s` seconds, `mean_extra_s` more on average, in whole ms.
fn gap_ms(rng: &mut ChaCha8Rng, min_s: f64, mean_extra_s: f64) -> i64 {
    let extra = (-mean_extra_s * (1.0 - rng.random::<f64>()).ln()).min(8.0 * mean_extra_s);
    ((min_s + extra) * 1000.0).round() as i64
}

fn weighted_category(rng: &mut ChaCha8Rng) -> u8 {
    let total: u32 = CATEGORIES.iter().map(|c| c.popularity).sum();
    let mut x = rng.random_range(0..total);
    for (i, category) in CATEGORIES.iter().enumerate() {
        if x < category.popularity {
            return i as u8;
        }
        x -= category.popularity;
    }
    (CATEGORIES.len() - 1) as u8
}

fn popular_brand(rng: &mut ChaCha8Rng, category: u8) -> u8 {
    let brands = CATEGORIES[usize::from(category)].brands;
    brands[weighted(rng, &BRAND_RANK_WEIGHTS[..brands.len()])]
}

// ---------------------------------------------------------------------------------------------
// Customers
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Lifecycle {
    New,
    Active,
    Dormant,
    Churned,
}

/// Everything that makes one customer behave differently from another.
#[derive(Clone, Debug)]
struct Profile {
    lifecycle: Lifecycle,
    /// First and last day with a visit (day indexes); all own sessions fall in between.
    start: u32,
    stop: u32,
    /// Heavy-tailed raw activity; scaled into `sessions_per_day` by `calibrate_activity`.
    activity_weight: f64,
    sessions_per_day: f64,
    /// First favourite, second favourite (equal to the first for one-category customers).
    favourites: [u8; 2],
    /// Preferred brand in each favourite category.
    preferred_brands: [u8; 2],
    /// Strongly loyal to `preferred_brands[0]`.
    loyal: bool,
    price_tier: f64,
    cart_prob: f64,
    buy_prob: f64,
    refund_prob: f64,
    fail_prob: f64,
    cancel_prob: f64,
    promo_lover: bool,
    abuser: bool,
    big_ticket: bool,
    low_credit: bool,
    abandoner: bool,
    devices: u8,
    device_channels: [u8; 3],
    addresses: u8,
    payment: u8,
}

fn draw_profile(world: &World, customer: u32) -> Profile {
    let rng = &mut world.customer_rng(customer, SALT_PROFILE);
    let lifecycle = pick_lifecycle(rng, world.last);
    let (start, stop) = lifecycle_span(rng, lifecycle, world.last);
    let recent = matches!(lifecycle, Lifecycle::New | Lifecycle::Active);
    let settled = matches!(lifecycle, Lifecycle::Active | Lifecycle::Dormant);

    let abuser = settled && rng.random_bool(ABUSER_SHARE_OF_ELIGIBLE);
    let big_ticket = settled && !abuser && rng.random_bool(BIG_TICKET_SHARE_OF_ELIGIBLE);
    let low_credit = recent && rng.random_bool(LOW_CREDIT_SHARE_OF_RECENT);
    let abandoner = recent && rng.random_bool(ABANDONER_SHARE_OF_RECENT);
    let promo_lover = rng.random_bool(PROMO_LOVER_SHARE);

    // Big-ticket buyers browse like browsers; their purchase is forced (see `buy_big_ticket`).
    let browser = !abuser && (big_ticket || rng.random_bool(BROWSER_SHARE));
    let (cart_prob, mut buy_prob) = if browser {
        (uniform(rng, BROWSER_CART_PROB), uniform(rng, BROWSER_BUY_PROB))
    } else {
        (uniform(rng, SHOPPER_CART_PROB), uniform(rng, SHOPPER_BUY_PROB))
    };
    if promo_lover {
        // Deal hunters convert more easily.
        buy_prob = (buy_prob * PROMO_LOVER_BUY_BOOST).min(0.9);
    }

    let (favourites, tier) = if big_ticket {
        let category = BIG_TICKET_CATEGORIES[rng.random_range(0..BIG_TICKET_CATEGORIES.len())];
        (
            [category, category],
            BIG_TICKET_TIER_MEAN + BIG_TICKET_TIER_SD * normal(rng),
        )
    } else {
        let first = weighted_category(rng);
        let second = if rng.random_bool(TWO_FAVOURITES_SHARE) {
            weighted_category(rng)
        } else {
            first
        };
        ([first, second], PRICE_TIER_MEAN + PRICE_TIER_SD * normal(rng))
    };
    let preferred_brands = [popular_brand(rng, favourites[0]), popular_brand(rng, favourites[1])];
    let loyal = rng.random_bool(LOYAL_SHARE);

    let devices = 1 + u8::from(rng.random_bool(SECOND_DEVICE_PROB)) + u8::from(rng.random_bool(THIRD_DEVICE_PROB));
    let device_channels = [
        weighted(rng, &CHANNEL_WEIGHTS) as u8,
        weighted(rng, &CHANNEL_WEIGHTS) as u8,
        weighted(rng, &CHANNEL_WEIGHTS) as u8,
    ];
    let addresses = 1 + u8::from(rng.random_bool(SECOND_ADDRESS_PROB));
    let payment = weighted(rng, &PAYMENT_WEIGHTS) as u8;

    let mut activity_weight = (ACTIVITY_SIGMA * normal(rng)).exp();
    if abuser {
        activity_weight *= ABUSER_ACTIVITY_BOOST;
    }
    if big_ticket {
        activity_weight *= BIG_TICKET_ACTIVITY;
    }

    Profile {
        lifecycle,
        start,
        stop,
        activity_weight,
        sessions_per_day: 0.0,
        favourites,
        preferred_brands,
        loyal,
        price_tier: tier.clamp(0.0, f64::from(MAX_ITEM)),
        cart_prob,
        buy_prob,
        refund_prob: if abuser { ABUSER_REFUND_PROB } else { REFUND_PROB },
        fail_prob: if low_credit { LOW_CREDIT_FAIL_PROB } else { FAIL_PROB },
        cancel_prob: if low_credit {
            LOW_CREDIT_CANCEL_PROB
        } else {
            CANCEL_PROB
        },
        promo_lover,
        abuser,
        big_ticket,
        low_credit,
        abandoner,
        devices,
        device_channels,
        addresses,
        payment,
    }
}

fn pick_lifecycle(rng: &mut ChaCha8Rng, last: u32) -> Lifecycle {
    let u = rng.random::<f64>();
    let mut stage = if u < NEW_SHARE {
        Lifecycle::New
    } else if u < NEW_SHARE + ACTIVE_SHARE {
        Lifecycle::Active
    } else if u < NEW_SHARE + ACTIVE_SHARE + DORMANT_SHARE {
        Lifecycle::Dormant
    } else {
        Lifecycle::Churned
    };
    // A short history cannot hold every stage: fall back to a younger one.
    loop {
        let feasible = match stage {
            Lifecycle::New => true,
            Lifecycle::Active | Lifecycle::Dormant => last >= RECENT_DAYS,
            Lifecycle::Churned => last >= DORMANT_DAYS,
        };
        if feasible {
            return stage;
        }
        stage = match stage {
            Lifecycle::Churned => Lifecycle::Dormant,
            Lifecycle::Dormant => Lifecycle::Active,
            _ => Lifecycle::New,
        };
    }
}

/// First and last visit day for a lifecycle stage. For new and active customers the last
/// visit is provisional (`last`) until `settle_last_visits`.
fn lifecycle_span(rng: &mut ChaCha8Rng, lifecycle: Lifecycle, last: u32) -> (u32, u32) {
    match lifecycle {
        // First seen in the last 30 days.
        Lifecycle::New => (between(rng, last.saturating_sub(RECENT_DAYS - 1), last), last),
        // First seen before the last 30 days, seen again within them.
        Lifecycle::Active => (between(rng, 0, last - RECENT_DAYS), last),
        // Last seen 30-89 days ago.
        Lifecycle::Dormant => {
            let stop = between(rng, last.saturating_sub(DORMANT_DAYS - 1), last - RECENT_DAYS);
            (between(rng, 0, stop), stop)
        }
        // Last seen 90 or more days ago.
        Lifecycle::Churned => {
            let stop = between(rng, 0, last - DORMANT_DAYS);
            (between(rng, 0, stop), stop)
        }
    }
}

/// Rough number of events of one ordinary session of this customer.
fn expected_events_per_session(p: &Profile) -> f64 {
    let views = 1.0 / (1.0 - MORE_VIEWS_PROB);
    let clicks = 1.0 + views * (1.0 + NAV_PAGE_PROB);
    let adds = 1.0 + SECOND_ADD_PROB + THIRD_ADD_PROB;
    let carts = p.cart_prob * (adds + REMOVE_PROB);
    let orders = p.cart_prob * p.buy_prob;
    // checkout click + placed + outcome (+ refund)
    clicks + carts + orders * (3.0 + p.refund_prob)
}

/// Sessions every customer gets regardless of activity (first / last visit, archetypes).
fn forced_sessions(p: &Profile) -> f64 {
    let mean = |(lo, hi): (u32, u32)| f64::from(lo + hi) / 2.0;
    1.0 + f64::from(u8::from(p.stop > p.start))
        + f64::from(u8::from(p.abandoner))
        + if p.low_credit { mean(LOW_CREDIT_ATTEMPTS) } else { 0.0 }
        + if p.abuser { mean(ABUSER_PURCHASES) } else { 0.0 }
        + f64::from(u8::from(p.big_ticket))
}

/// Scale the heavy-tailed activity weights so that the total volume is about
/// `EVENTS_PER_CUSTOMER_DAY * customers * days`.
fn calibrate_activity(world: &World, profiles: &mut [Profile]) {
    let target = EVENTS_PER_CUSTOMER_DAY * world.customers as f64 * f64::from(world.days);
    let mut forced = 0.0;
    // Per customer: (activity weight, events per unit of sessions_per_day).
    let mut units = Vec::with_capacity(profiles.len());
    for p in profiles.iter() {
        let per_session = expected_events_per_session(p);
        forced += forced_sessions(p) * per_session;
        units.push((p.activity_weight, f64::from(p.stop - p.start + 1) * per_session));
    }
    let budget = (target - forced).max(0.0);
    let volume = |k: f64| -> f64 { units.iter().map(|&(w, u)| (k * w).min(MAX_SESSIONS_PER_DAY) * u).sum() };
    let uncapped: f64 = units.iter().map(|&(w, u)| w * u).sum();
    let mut k = if uncapped > 0.0 { budget / uncapped } else { 0.0 };
    // The cap on very active customers loses some volume: spread it over the others.
    for _ in 0..CALIBRATION_ROUNDS {
        let got = volume(k);
        if got <= 0.0 {
            break;
        }
        k *= budget / got;
    }
    for p in profiles.iter_mut() {
        p.sessions_per_day = (k * p.activity_weight).min(MAX_SESSIONS_PER_DAY);
    }
}

/// Last visit of new and active customers: a few days before `end`, fewer for busy customers.
fn settle_last_visits(world: &World, profiles: &mut [Profile]) {
    for (customer, p) in profiles.iter_mut().enumerate() {
        if matches!(p.lifecycle, Lifecycle::New | Lifecycle::Active) {
            let rng = &mut world.customer_rng(customer as u32, SALT_SETTLE);
            let max_gap = (RECENT_DAYS - 1).min(world.last - p.start);
            p.stop = world.last - truncated_exp_days(rng, p.sessions_per_day, max_gap);
        }
    }
}

/// Shared devices: customer -> (day, device) visits made on a device shared with others.
fn assign_shared_devices(world: &World, profiles: &[Profile]) -> BTreeMap<u32, Vec<(u32, u32)>> {
    let mut rng = world.rng(SALT_SHARED);
    let rng = &mut rng;
    let mut visits: BTreeMap<u32, Vec<(u32, u32)>> = BTreeMap::new();
    let recent: Vec<u32> = (0..profiles.len() as u32)
        .filter(|&c| matches!(profiles[c as usize].lifecycle, Lifecycle::New | Lifecycle::Active))
        .collect();
    let groups = (profiles.len() as f64 * SHARED_GROUPS_PER_CUSTOMER).round() as u32;
    for group in 0..groups {
        let device = SHARED_DEVICE_BASE + group;
        let size = between(rng, SHARED_GROUP_SIZE.0, SHARED_GROUP_SIZE.1) as usize;
        let old_window =
            group % OLD_SHARED_GROUP_EVERY == OLD_SHARED_GROUP_EVERY - 1 && world.last >= 2 * RECENT_DAYS - 1;
        let (from, to) = if old_window {
            // A 30-day window that ends before the last 30 days.
            let from = between(rng, 0, world.last - (2 * RECENT_DAYS - 1));
            (from, from + RECENT_DAYS - 1)
        } else {
            (world.window_start(RECENT_DAYS), world.last)
        };
        let mut members: Vec<u32> = Vec::with_capacity(size);
        for _ in 0..size * 20 {
            if members.len() == size {
                break;
            }
            let candidate = if old_window {
                rng.random_range(0..profiles.len() as u32)
            } else if recent.is_empty() {
                break;
            } else {
                recent[rng.random_range(0..recent.len())]
            };
            let p = &profiles[candidate as usize];
            let overlaps = p.start <= to && p.stop >= from;
            if overlaps && !members.contains(&candidate) {
                members.push(candidate);
            }
        }
        if members.len() < SHARED_GROUP_SIZE.0 as usize {
            continue; // too few customers in that window to share a device
        }
        for &customer in &members {
            let p = &profiles[customer as usize];
            let (lo, hi) = (p.start.max(from), p.stop.min(to));
            for _ in 0..between(rng, SHARED_VISITS.0, SHARED_VISITS.1) {
                visits.entry(customer).or_default().push((between(rng, lo, hi), device));
            }
        }
    }
    visits
}

// ---------------------------------------------------------------------------------------------
// Events
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug)]
struct Click {
    time: i64,
    id: u64,
    session: u64,
    customer: u32,
    device: u32,
    product: Product,
    page: u8,
    channel: u8,
}

#[derive(Clone, Copy, Debug)]
struct CartEvent {
    time: i64,
    id: u64,
    session: u64,
    customer: u32,
    device: u32,
    product: Product,
    action: u8,
    quantity: u8,
}

#[derive(Clone, Copy, Debug)]
struct OrderEvent {
    time: i64,
    id: u64,
    order: u64,
    amount: f64,
    discount: f64,
    customer: u32,
    device: u32,
    item_count: u16,
    category: u8,
    brand: u8,
    status: u8,
    payment: u8,
    address: u8,
}

/// All simulated events, bucketed by stream and day of `event_time`.
struct Sink {
    clicks: Vec<Vec<Click>>,
    carts: Vec<Vec<CartEvent>>,
    orders: Vec<Vec<OrderEvent>>,
    next_click: u64,
    next_cart: u64,
    next_order_event: u64,
    next_session: u64,
    next_order: u64,
}

impl Sink {
    fn new(days: u32) -> Self {
        Sink {
            clicks: (0..days).map(|_| Vec::new()).collect(),
            carts: (0..days).map(|_| Vec::new()).collect(),
            orders: (0..days).map(|_| Vec::new()).collect(),
            next_click: 0,
            next_cart: 0,
            next_order_event: 0,
            next_session: 0,
            next_order: 0,
        }
    }

    fn new_session(&mut self) -> u64 {
        self.next_session += 1;
        self.next_session
    }

    fn new_order(&mut self) -> u64 {
        self.next_order += 1;
        self.next_order
    }
}

fn simulate(world: &World) -> Sink {
    let mut profiles: Vec<Profile> = (0..world.customers).map(|c| draw_profile(world, c as u32)).collect();
    calibrate_activity(world, &mut profiles);
    settle_last_visits(world, &mut profiles);
    let shared = assign_shared_devices(world, &profiles);

    let mut sink = Sink::new(world.days);
    for (customer, profile) in profiles.iter().enumerate() {
        let customer = customer as u32;
        let visits = shared.get(&customer).map_or(&[][..], Vec::as_slice);
        CustomerSim::new(world, customer, profile).run(&mut sink, visits);
    }
    info!(
        clicks = sink.next_click,
        carts = sink.next_cart,
        orders = sink.next_order_event,
        sessions = sink.next_session,
        "generate: events simulated"
    );
    sink
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SessionKind {
    /// An ordinary visit: browse, maybe cart, maybe buy.
    Browse,
    /// A focused visit that ends with items left in the cart.
    Abandon,
    /// An order attempt that fails or is cancelled.
    FailedOrder,
    /// A purchase that is paid, and refunded if `refund`.
    Purchase { refund: bool },
}

#[derive(Clone, Copy)]
struct SessionCtx {
    session: u64,
    device: u32,
    channel: u8,
}

#[derive(Clone, Copy)]
struct Line {
    product: Product,
    quantity: u8,
}

/// One customer's simulation. Event times in `scratch` are relative to the session start until
/// the session is delivered to the sink.
struct CustomerSim<'a> {
    world: &'a World,
    profile: &'a Profile,
    customer: u32,
    rng: ChaCha8Rng,
    clicks: Vec<Click>,
    carts: Vec<CartEvent>,
    orders: Vec<OrderEvent>,
    viewed: Vec<Product>,
    basket: Vec<Line>,
}

impl<'a> CustomerSim<'a> {
    fn new(world: &'a World, customer: u32, profile: &'a Profile) -> Self {
        CustomerSim {
            world,
            profile,
            customer,
            rng: world.customer_rng(customer, SALT_SESSIONS),
            clicks: Vec::new(),
            carts: Vec::new(),
            orders: Vec::new(),
            viewed: Vec::new(),
            basket: Vec::new(),
        }
    }

    fn run(mut self, sink: &mut Sink, shared_visits: &[(u32, u32)]) {
        let p = self.profile;
        // The first and the last visit pin first_seen and last_seen, i.e. the lifecycle stage.
        self.session(sink, p.start, SessionKind::Browse, None);
        if p.stop > p.start {
            self.session(sink, p.stop, SessionKind::Browse, None);
        }
        let expected = p.sessions_per_day * f64::from(p.stop - p.start + 1);
        for _ in 0..poisson(&mut self.rng, expected) {
            let day = between(&mut self.rng, p.start, p.stop);
            self.session(sink, day, SessionKind::Browse, None);
        }
        for &(day, device) in shared_visits {
            self.session(sink, day, SessionKind::Browse, Some(device));
        }
        if p.abandoner {
            self.abandon_cart(sink);
        }
        if p.low_credit {
            self.fail_orders(sink);
        }
        if p.abuser {
            self.buy_and_refund(sink);
        }
        if p.big_ticket {
            self.buy_big_ticket(sink);
        }
    }

    /// One expensive paid order in the last year (`big_spender`, with few orders).
    fn buy_big_ticket(&mut self, sink: &mut Sink) {
        let p = self.profile;
        let from = p.start.max(self.world.window_start(YEAR_DAYS));
        if from <= p.stop {
            let day = between(&mut self.rng, from, p.stop);
            self.session(sink, day, SessionKind::Purchase { refund: false }, None);
        }
    }

    /// A session in the last 3 days ending with a full cart (`cart_abandoner`). It may fall
    /// after the provisional last visit: the customer is new or active either way.
    fn abandon_cart(&mut self, sink: &mut Sink) {
        let from = self.profile.start.max(self.world.window_start(ABANDON_DAYS));
        let day = between(&mut self.rng, from, self.world.last);
        self.session(sink, day, SessionKind::Abandon, None);
    }

    /// Several failed or cancelled orders in the last 30 days (`low_credit`).
    fn fail_orders(&mut self, sink: &mut Sink) {
        let from = self.profile.start.max(self.world.window_start(RECENT_DAYS));
        let attempts = between(&mut self.rng, LOW_CREDIT_ATTEMPTS.0, LOW_CREDIT_ATTEMPTS.1);
        for attempt in 0..attempts {
            let day = between(&mut self.rng, from, self.world.last);
            let kind = if attempt < LOW_CREDIT_MIN_FAILURES || self.rng.random_bool(0.5) {
                SessionKind::FailedOrder
            } else {
                SessionKind::Browse
            };
            self.session(sink, day, kind, None);
        }
    }

    /// Paid orders in the last year, most of them refunded (`refund_risk`). Purchases end early
    /// enough for the refund to arrive by `end` when the history allows it.
    fn buy_and_refund(&mut self, sink: &mut Sink) {
        let p = self.profile;
        let from = p.start.max(self.world.window_start(YEAR_DAYS));
        let mut to = p.stop.min(self.world.last.saturating_sub(REFUND_DELAY_DAYS.1));
        if to < from {
            to = p.stop;
        }
        if to < from {
            return;
        }
        let purchases = between(&mut self.rng, ABUSER_PURCHASES.0, ABUSER_PURCHASES.1);
        for purchase in 0..purchases {
            let day = between(&mut self.rng, from, to);
            let refund = purchase < ABUSER_FORCED_REFUNDS || self.rng.random_bool(ABUSER_REFUND_PROB);
            self.session(sink, day, SessionKind::Purchase { refund }, None);
        }
    }

    /// One visit: landing page, product views, maybe a cart and an order.
    fn session(&mut self, sink: &mut Sink, day: u32, kind: SessionKind, shared_device: Option<u32>) {
        let (device, channel) = match shared_device {
            Some(device) => (device, CHANNEL_WEB),
            None => self.own_device(),
        };
        // A few trackers lose the session cookie.
        let session = if self.rng.random_bool(NULL_SESSION_SHARE) {
            NO_SESSION
        } else {
            sink.new_session()
        };
        let ctx = SessionCtx {
            session,
            device,
            channel,
        };
        let category = self.session_category(kind);

        let mut t = 0;
        let (page, product) = self.landing_page(kind, category);
        self.click(t, &ctx, page, product);

        self.viewed.clear();
        for _ in 0..self.view_count(kind) {
            t += gap_ms(&mut self.rng, 4.0, 20.0);
            if self.rng.random_bool(NAV_PAGE_PROB) {
                let (page, product) = self.nav_page(category);
                self.click(t, &ctx, page, product);
                t += gap_ms(&mut self.rng, 3.0, 12.0);
            }
            let view_category = if self.rng.random_bool(SESSION_CATEGORY_VIEW_PROB) {
                category
            } else {
                weighted_category(&mut self.rng)
            };
            let product = self.pick_product(view_category);
            self.click(t, &ctx, PAGE_PRODUCT, product);
            self.viewed.push(product);
        }

        self.basket.clear();
        let wants_cart = match kind {
            SessionKind::Browse => self.rng.random_bool(self.profile.cart_prob),
            _ => true,
        };
        if wants_cart {
            t = self.fill_cart(t, &ctx, kind);
        }

        let buys = !self.basket.is_empty()
            && match kind {
                SessionKind::Browse => self.rng.random_bool(self.profile.buy_prob),
                SessionKind::Abandon => false,
                SessionKind::FailedOrder | SessionKind::Purchase { .. } => true,
            };
        if buys {
            t += gap_ms(&mut self.rng, 4.0, 15.0);
            self.click(t, &ctx, PAGE_CHECKOUT, Product::NONE);
            t += gap_ms(&mut self.rng, 20.0, 40.0);
            self.place_order(sink, t, &ctx, kind);
        }
        self.deliver(sink, day, t);
    }

    fn own_device(&mut self) -> (u32, u8) {
        let p = self.profile;
        let k = if p.devices == 1 || self.rng.random_bool(PRIMARY_DEVICE_PROB) {
            0
        } else {
            self.rng.random_range(1..p.devices)
        };
        (
            self.customer * DEVICE_STRIDE + u32::from(k),
            p.device_channels[usize::from(k)],
        )
    }

    /// Mostly a favourite category; loyal customers stick to their first one.
    fn session_category(&mut self, kind: SessionKind) -> u8 {
        let p = self.profile;
        if kind != SessionKind::Browse {
            return p.favourites[0];
        }
        if p.loyal && self.rng.random_bool(LOYAL_CATEGORY_PROB) {
            return p.favourites[0];
        }
        if self.rng.random_bool(FAVOURITE_CATEGORY_PROB) {
            p.favourites[self.rng.random_range(0..2usize)]
        } else {
            weighted_category(&mut self.rng)
        }
    }

    fn landing_page(&mut self, kind: SessionKind, category: u8) -> (u8, Product) {
        if kind != SessionKind::Browse {
            return (PAGE_HOME, Product::NONE);
        }
        let promo = if self.profile.promo_lover {
            PROMO_LOVER_PROMO_PAGE_PROB
        } else {
            PROMO_PAGE_PROB
        };
        if self.rng.random_bool(promo) {
            return (PAGE_PROMO, Product::NONE);
        }
        match weighted(&mut self.rng, &LANDING_WEIGHTS) {
            0 => (PAGE_HOME, Product::NONE),
            1 => (PAGE_SEARCH, Product::NONE),
            _ => (PAGE_CATEGORY, Product::category_only(category)),
        }
    }

    fn nav_page(&mut self, category: u8) -> (u8, Product) {
        match weighted(&mut self.rng, &NAV_WEIGHTS) {
            0 => (PAGE_CATEGORY, Product::category_only(category)),
            1 => (PAGE_SEARCH, Product::NONE),
            _ => (PAGE_OTHER, Product::NONE),
        }
    }

    fn view_count(&mut self, kind: SessionKind) -> u32 {
        match kind {
            SessionKind::Browse => {
                let mut views = 1;
                while views < MAX_VIEWS && self.rng.random_bool(MORE_VIEWS_PROB) {
                    views += 1;
                }
                views
            }
            // Enough views and adds of one category for `category_intent` (3 views + 3 x 1 add).
            SessionKind::Abandon => between(&mut self.rng, 3, 6),
            SessionKind::FailedOrder | SessionKind::Purchase { .. } => between(&mut self.rng, 1, 3),
        }
    }

    fn pick_product(&mut self, category: u8) -> Product {
        let p = self.profile;
        let brand = match p.favourites.iter().position(|&f| f == category) {
            Some(0) if p.loyal && self.rng.random_bool(LOYAL_BRAND_PROB) => p.preferred_brands[0],
            Some(k) if self.rng.random_bool(PREFERRED_BRAND_PROB) => p.preferred_brands[k],
            _ => popular_brand(&mut self.rng, category),
        };
        let item = (p.price_tier + ITEM_SPREAD * normal(&mut self.rng))
            .round()
            .clamp(0.0, f64::from(MAX_ITEM)) as u8;
        Product { category, brand, item }
    }

    /// Add viewed products to the cart, sometimes remove one again. Returns the time cursor.
    fn fill_cart(&mut self, mut t: i64, ctx: &SessionCtx, kind: SessionKind) -> i64 {
        let adds = match kind {
            SessionKind::Browse => {
                1 + u32::from(self.rng.random_bool(SECOND_ADD_PROB)) + u32::from(self.rng.random_bool(THIRD_ADD_PROB))
            }
            _ => between(&mut self.rng, 1, 2),
        };
        for _ in 0..adds {
            let index = self.rng.random_range(0..self.viewed.len());
            let product = self.viewed[index];
            let quantity = 1 + weighted(&mut self.rng, &QUANTITY_WEIGHTS) as u8;
            t += gap_ms(&mut self.rng, 5.0, 15.0);
            self.cart(t, ctx, ACTION_ADD, product, quantity);
            match self.basket.iter_mut().find(|line| line.product == product) {
                Some(line) => line.quantity += quantity,
                None => self.basket.push(Line { product, quantity }),
            }
        }
        // Abandoned carts keep at least one line; ordinary carts may be emptied.
        let keep = usize::from(kind != SessionKind::Browse);
        if self.basket.len() > keep && self.rng.random_bool(REMOVE_PROB) {
            let index = self.rng.random_range(0..self.basket.len());
            let line = self.basket.remove(index);
            t += gap_ms(&mut self.rng, 5.0, 20.0);
            self.cart(t, ctx, ACTION_REMOVE, line.product, line.quantity);
        }
        t
    }

    fn place_order(&mut self, sink: &mut Sink, t: i64, ctx: &SessionCtx, kind: SessionKind) {
        let p = self.profile;
        let (subtotal, item_count, main) = basket_totals(&self.basket);
        let discount_prob = if p.promo_lover {
            PROMO_LOVER_DISCOUNT_PROB
        } else {
            DISCOUNT_PROB
        };
        let discount = if self.rng.random_bool(discount_prob) {
            cents(subtotal * uniform(&mut self.rng, DISCOUNT_RATE))
        } else {
            0.0
        };
        let payment = if self.rng.random_bool(PREFERRED_PAYMENT_PROB) {
            p.payment
        } else {
            weighted(&mut self.rng, &PAYMENT_WEIGHTS) as u8
        };
        let placed = OrderEvent {
            time: t,
            id: 0,
            order: sink.new_order(),
            amount: cents(subtotal - discount),
            discount,
            customer: self.customer,
            device: ctx.device,
            item_count,
            category: main.category,
            brand: main.brand,
            status: STATUS_PLACED,
            payment,
            address: self.rng.random_range(0..p.addresses),
        };
        self.orders.push(placed);
        self.order_outcome(placed, kind);
    }

    /// `paid` (usually), `payment_failed` (maybe retried) or `cancelled`, a little later.
    fn order_outcome(&mut self, placed: OrderEvent, kind: SessionKind) {
        let t = placed.time;
        match kind {
            SessionKind::FailedOrder => {
                let status = if self.rng.random_bool(FAILED_ORDER_PAYMENT_FAILED_PROB) {
                    STATUS_PAYMENT_FAILED
                } else {
                    STATUS_CANCELLED
                };
                let at = t + gap_ms(&mut self.rng, 5.0, 30.0);
                self.order_status(placed, status, at);
            }
            SessionKind::Purchase { refund } => {
                let at = t + gap_ms(&mut self.rng, 3.0, 40.0);
                self.pay(placed, at, Some(refund));
            }
            SessionKind::Browse | SessionKind::Abandon => {
                let u = self.rng.random::<f64>();
                if u < self.profile.fail_prob {
                    let failed_at = t + gap_ms(&mut self.rng, 5.0, 30.0);
                    self.order_status(placed, STATUS_PAYMENT_FAILED, failed_at);
                    if self.rng.random_bool(RETRY_AFTER_FAIL_PROB) {
                        let at = failed_at + gap_ms(&mut self.rng, 60.0, 240.0);
                        self.pay(placed, at, None);
                    } else if self.rng.random_bool(CANCEL_AFTER_FAIL_PROB) {
                        let at = failed_at + gap_ms(&mut self.rng, 600.0, 1800.0);
                        self.order_status(placed, STATUS_CANCELLED, at);
                    }
                } else if u < self.profile.fail_prob + self.profile.cancel_prob {
                    let at = t + gap_ms(&mut self.rng, 60.0, 1800.0);
                    self.order_status(placed, STATUS_CANCELLED, at);
                } else {
                    let at = t + gap_ms(&mut self.rng, 3.0, 40.0);
                    self.pay(placed, at, None);
                }
            }
        }
    }

    /// `paid`, and days later perhaps `refunded` (decided by `refund`, or by the customer's
    /// refund rate). Refunds come from the back office: no device.
    fn pay(&mut self, placed: OrderEvent, at: i64, refund: Option<bool>) {
        self.order_status(placed, STATUS_PAID, at);
        let refund = match refund {
            Some(refund) => refund,
            None => self.rng.random_bool(self.profile.refund_prob),
        };
        if refund {
            let days = between(&mut self.rng, REFUND_DELAY_DAYS.0, REFUND_DELAY_DAYS.1);
            let refund_at = at + i64::from(days) * DAY_MS + self.rng.random_range(0..DAY_MS / 2);
            self.orders.push(OrderEvent {
                time: refund_at,
                status: STATUS_REFUNDED,
                device: NO_DEVICE,
                ..placed
            });
        }
    }

    fn order_status(&mut self, placed: OrderEvent, status: u8, at: i64) {
        self.orders.push(OrderEvent {
            time: at,
            status,
            ..placed
        });
    }

    fn click(&mut self, t: i64, ctx: &SessionCtx, page: u8, product: Product) {
        self.clicks.push(Click {
            time: t,
            id: 0,
            session: ctx.session,
            customer: self.customer,
            device: ctx.device,
            product,
            page,
            channel: ctx.channel,
        });
    }

    fn cart(&mut self, t: i64, ctx: &SessionCtx, action: u8, product: Product, quantity: u8) {
        self.carts.push(CartEvent {
            time: t,
            id: 0,
            session: ctx.session,
            customer: self.customer,
            device: ctx.device,
            product,
            action,
            quantity,
        });
    }

    /// Place the session on its day (diurnal start, ending before midnight) and move its events
    /// into the sink. Events after `end` 23:59:59 (late refunds) have not happened yet: dropped.
    fn deliver(&mut self, sink: &mut Sink, day: u32, span: i64) {
        let world = self.world;
        let hour = weighted(&mut self.rng, &HOUR_WEIGHTS) as i64;
        let start = hour * HOUR_MS + self.rng.random_range(0..HOUR_MS);
        let latest_start = (LAST_MS_OF_DAY - SESSION_END_MARGIN_MS - span).max(0);
        let base = world.day_start_ms(day) + start.min(latest_start);
        deliver_rows(world, &mut self.clicks, base, &mut sink.clicks, &mut sink.next_click);
        deliver_rows(world, &mut self.carts, base, &mut sink.carts, &mut sink.next_cart);
        deliver_rows(
            world,
            &mut self.orders,
            base,
            &mut sink.orders,
            &mut sink.next_order_event,
        );
    }
}

/// Subtotal, item count and main line (largest value) of a non-empty basket.
fn basket_totals(basket: &[Line]) -> (f64, u16, Product) {
    let mut subtotal = 0.0;
    let mut items = 0u16;
    let mut main = basket[0].product;
    let mut main_value = f64::MIN;
    for line in basket {
        let value = unit_price(line.product) * f64::from(line.quantity);
        subtotal += value;
        items += u16::from(line.quantity);
        if value > main_value {
            main = line.product;
            main_value = value;
        }
    }
    (cents(subtotal), items, main)
}

fn deliver_rows<R: EventRow>(
    world: &World,
    scratch: &mut Vec<R>,
    base_ms: i64,
    buckets: &mut [Vec<R>],
    next_id: &mut u64,
) {
    for mut row in scratch.drain(..) {
        let time = base_ms + row.time();
        if time > world.end_ms {
            continue;
        }
        *next_id += 1;
        row.stamp(time, *next_id);
        buckets[world.day_of(time)].push(row);
    }
}

// ---------------------------------------------------------------------------------------------
// Bad input
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum BadKind {
    NullCustomer,
    UnknownPageType,
    NegativeAmount,
    ZeroQuantity,
    Year1999,
}

/// (stream, day) -> bad rows to put into the first file of that day.
type BadPlan = BTreeMap<(Stream, u32), Vec<BadKind>>;

fn plan_bad_rows(world: &World) -> BadPlan {
    let mut rng = world.rng(SALT_BAD);
    let mut plan = BadPlan::new();
    let from = world.window_start(BAD_ROW_DAYS);
    for (stream, kind) in BAD_ROWS {
        let day = between(&mut rng, from, world.last);
        plan.entry((stream, day)).or_default().push(kind);
    }
    plan
}

/// Bad rows of one file: (row index, kind), at most one kind per row.
#[derive(Default)]
struct BadRows(Vec<(usize, BadKind)>);

impl BadRows {
    /// Spread `kinds` over rows `first..len` (rows before `first` repeat the previous file).
    fn place(kinds: &[BadKind], first: usize, len: usize) -> Self {
        if kinds.is_empty() || len <= first {
            return BadRows::default();
        }
        let room = len - first;
        let n = kinds.len().min(room);
        BadRows((0..n).map(|j| (first + j * room / n, kinds[j])).collect())
    }

    fn kind_at(&self, row: usize) -> Option<BadKind> {
        self.0.iter().find(|(i, _)| *i == row).map(|&(_, kind)| kind)
    }

    fn is(&self, row: usize, kind: BadKind) -> bool {
        self.kind_at(row) == Some(kind)
    }

    fn len(&self) -> usize {
        self.0.len()
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

// ---------------------------------------------------------------------------------------------
// Streams and their columns
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Stream {
    Clicks,
    Carts,
    Orders,
}

impl Stream {
    const ALL: [Stream; 3] = [Stream::Clicks, Stream::Carts, Stream::Orders];

    fn name(self) -> &'static str {
        match self {
            Stream::Clicks => "clicks",
            Stream::Carts => "carts",
            Stream::Orders => "orders",
        }
    }

    fn id_prefix(self) -> &'static str {
        match self {
            Stream::Clicks => "c",
            Stream::Carts => "k",
            Stream::Orders => "o",
        }
    }

    fn salt(self) -> u64 {
        0x7772_6974_0000 + self as u64
    }
}

/// One Arrow column before the writer flavour is applied.
struct Column {
    name: &'static str,
    array: ArrayRef,
    /// Nullable per the contract (schemas/*.toml).
    nullable: bool,
}

impl Column {
    fn required(name: &'static str, array: ArrayRef) -> Self {
        Column {
            name,
            array,
            nullable: false,
        }
    }

    fn optional(name: &'static str, array: ArrayRef) -> Self {
        Column {
            name,
            array,
            nullable: true,
        }
    }
}

/// A compact event row of one stream.
trait EventRow: Copy + Send + Sync + 'static {
    const STREAM: Stream;
    fn time(&self) -> i64;
    fn id(&self) -> u64;
    fn customer(&self) -> u32;
    fn stamp(&mut self, time: i64, id: u64);
    /// The stream's own columns, after event_id, customer_id and event_time, in schema order.
    fn stream_columns(rows: &[Self], bad: &BadRows, world: &World) -> Vec<Column>;
}

impl EventRow for Click {
    const STREAM: Stream = Stream::Clicks;

    fn time(&self) -> i64 {
        self.time
    }

    fn id(&self) -> u64 {
        self.id
    }

    fn customer(&self) -> u32 {
        self.customer
    }

    fn stamp(&mut self, time: i64, id: u64) {
        self.time = time;
        self.id = id;
    }

    fn stream_columns(rows: &[Self], bad: &BadRows, world: &World) -> Vec<Column> {
        let pages = rows.iter().enumerate().map(|(i, r)| {
            Some(if bad.is(i, BadKind::UnknownPageType) {
                UNKNOWN_PAGE_TYPE
            } else {
                PAGE_TYPES[usize::from(r.page)]
            })
        });
        vec![
            Column::optional("session_id", session_ids(rows.iter().map(|r| r.session), world.seed)),
            Column::required("page_type", strings(pages)),
            Column::optional("product_id", product_ids(rows.iter().map(|r| r.product))),
            Column::optional("category", strings(rows.iter().map(|r| r.product.category_name()))),
            Column::optional("brand", strings(rows.iter().map(|r| r.product.brand_name()))),
            Column::optional(
                "price",
                Arc::new(rows.iter().map(|r| r.product.price()).collect::<Float64Array>()),
            ),
            Column::optional(
                "channel",
                strings(rows.iter().map(|r| Some(CHANNELS[usize::from(r.channel)]))),
            ),
            Column::optional("device_id", device_ids(rows.iter().map(|r| r.device), world.seed)),
        ]
    }
}

impl EventRow for CartEvent {
    const STREAM: Stream = Stream::Carts;

    fn time(&self) -> i64 {
        self.time
    }

    fn id(&self) -> u64 {
        self.id
    }

    fn customer(&self) -> u32 {
        self.customer
    }

    fn stamp(&mut self, time: i64, id: u64) {
        self.time = time;
        self.id = id;
    }

    fn stream_columns(rows: &[Self], bad: &BadRows, world: &World) -> Vec<Column> {
        let quantities = rows.iter().enumerate().map(|(i, r)| {
            if bad.is(i, BadKind::ZeroQuantity) {
                0
            } else {
                i32::from(r.quantity)
            }
        });
        vec![
            Column::optional("session_id", session_ids(rows.iter().map(|r| r.session), world.seed)),
            Column::required(
                "action",
                strings(rows.iter().map(|r| Some(ACTIONS[usize::from(r.action)]))),
            ),
            Column::required("product_id", product_ids(rows.iter().map(|r| r.product))),
            Column::optional("category", strings(rows.iter().map(|r| r.product.category_name()))),
            Column::optional("brand", strings(rows.iter().map(|r| r.product.brand_name()))),
            Column::required("quantity", Arc::new(Int32Array::from_iter_values(quantities))),
            Column::optional(
                "unit_price",
                Arc::new(rows.iter().map(|r| r.product.price()).collect::<Float64Array>()),
            ),
            Column::optional("device_id", device_ids(rows.iter().map(|r| r.device), world.seed)),
        ]
    }
}

impl EventRow for OrderEvent {
    const STREAM: Stream = Stream::Orders;

    fn time(&self) -> i64 {
        self.time
    }

    fn id(&self) -> u64 {
        self.id
    }

    fn customer(&self) -> u32 {
        self.customer
    }

    fn stamp(&mut self, time: i64, id: u64) {
        self.time = time;
        self.id = id;
    }

    fn stream_columns(rows: &[Self], bad: &BadRows, world: &World) -> Vec<Column> {
        let seed = world.seed;
        let mut order_ids = StringBuilder::new();
        for r in rows {
            let _ = write!(order_ids, "ord-{seed}-{}", r.order);
            order_ids.append_value("");
        }
        let amounts = rows.iter().enumerate().map(|(i, r)| {
            if bad.is(i, BadKind::NegativeAmount) {
                -r.amount.max(1.0)
            } else {
                r.amount
            }
        });
        let address_salt = mix64(seed ^ SALT_ADDRESS);
        let mut addresses = StringBuilder::new();
        for r in rows {
            let key = (u64::from(r.customer) << 2) | u64::from(r.address);
            let _ = write!(addresses, "{:016x}", mix64(address_salt ^ key));
            addresses.append_value("");
        }
        let product = |r: &OrderEvent| Product {
            category: r.category,
            brand: r.brand,
            item: NONE_U8,
        };
        vec![
            Column::required("order_id", Arc::new(order_ids.finish())),
            Column::required(
                "status",
                strings(rows.iter().map(|r| Some(STATUSES[usize::from(r.status)]))),
            ),
            Column::required("amount", Arc::new(Float64Array::from_iter_values(amounts))),
            Column::optional(
                "item_count",
                Arc::new(
                    rows.iter()
                        .map(|r| Some(i32::from(r.item_count)))
                        .collect::<Int32Array>(),
                ),
            ),
            Column::optional("category", strings(rows.iter().map(|r| product(r).category_name()))),
            Column::optional("brand", strings(rows.iter().map(|r| product(r).brand_name()))),
            Column::optional(
                "discount_amount",
                Arc::new(rows.iter().map(|r| Some(r.discount)).collect::<Float64Array>()),
            ),
            Column::optional(
                "payment_method",
                strings(rows.iter().map(|r| Some(PAYMENT_METHODS[usize::from(r.payment)]))),
            ),
            Column::optional("device_id", device_ids(rows.iter().map(|r| r.device), seed)),
            Column::optional("shipping_address_hash", Arc::new(addresses.finish())),
        ]
    }
}

/// A Utf8 column of constant strings (`None` = null).
fn strings<'s>(values: impl Iterator<Item = Option<&'s str>>) -> ArrayRef {
    let mut builder = StringBuilder::new();
    for value in values {
        builder.append_option(value);
    }
    Arc::new(builder.finish())
}

fn session_ids(sessions: impl Iterator<Item = u64>, seed: u64) -> ArrayRef {
    let mut builder = StringBuilder::new();
    for session in sessions {
        if session == NO_SESSION {
            builder.append_null();
        } else {
            let _ = write!(builder, "sess-{seed}-{session}");
            builder.append_value("");
        }
    }
    Arc::new(builder.finish())
}

/// Opaque device ids: a bijective hash of the device number, so ids never collide.
fn device_ids(devices: impl Iterator<Item = u32>, seed: u64) -> ArrayRef {
    let salt = mix64(seed ^ SALT_DEVICE_ID);
    let mut builder = StringBuilder::new();
    for device in devices {
        if device == NO_DEVICE {
            builder.append_null();
        } else {
            let _ = write!(builder, "d-{:016x}", mix64(salt ^ u64::from(device)));
            builder.append_value("");
        }
    }
    Arc::new(builder.finish())
}

fn product_ids(products: impl Iterator<Item = Product>) -> ArrayRef {
    let mut builder = StringBuilder::new();
    for p in products {
        if p.item == NONE_U8 {
            builder.append_null();
        } else {
            let _ = write!(builder, "p-{:02}{:02}{:03}", p.category, p.brand, p.item);
            builder.append_value("");
        }
    }
    Arc::new(builder.finish())
}

// ---------------------------------------------------------------------------------------------
// Writer flavours and Parquet encoding
// ---------------------------------------------------------------------------------------------

/// Which upstream writer a file pretends to come from (all accepted by the contract).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum WriterVariant {
    /// Timestamp(µs, "UTC"), Utf8, Int32, Float64: exactly schemas/*.toml.
    Standard,
    /// A Spark-style job: Timestamp(ms) without time zone, LargeUtf8, Int64, all nullable.
    SparkLike,
    /// A connector: Timestamp(ns, "UTC") and dictionary-encoded strings.
    Dictionary,
}

impl WriterVariant {
    fn pick(rng: &mut ChaCha8Rng) -> Self {
        let u = rng.random::<f64>();
        if u < SPARK_LIKE_SHARE {
            WriterVariant::SparkLike
        } else if u < SPARK_LIKE_SHARE + DICTIONARY_SHARE {
            WriterVariant::Dictionary
        } else {
            WriterVariant::Standard
        }
    }

    fn event_times(self, ms: Vec<i64>) -> ArrayRef {
        match self {
            WriterVariant::Standard => Arc::new(
                TimestampMicrosecondArray::from(ms.into_iter().map(|t| t * 1_000).collect::<Vec<_>>())
                    .with_timezone("UTC"),
            ),
            WriterVariant::SparkLike => Arc::new(TimestampMillisecondArray::from(ms)),
            WriterVariant::Dictionary => Arc::new(
                TimestampNanosecondArray::from(ms.into_iter().map(|t| t * 1_000_000).collect::<Vec<_>>())
                    .with_timezone("UTC"),
            ),
        }
    }

    /// Retype string and integer columns the way this writer does.
    fn convert(self, array: ArrayRef) -> Result<ArrayRef, ArrowError> {
        let target = match (self, array.data_type()) {
            (WriterVariant::SparkLike, DataType::Utf8) => DataType::LargeUtf8,
            (WriterVariant::SparkLike, DataType::Int32) => DataType::Int64,
            (WriterVariant::Dictionary, DataType::Utf8) => {
                DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8))
            }
            _ => return Ok(array),
        };
        cast(array.as_ref(), &target)
    }

    fn properties(self) -> WriterProperties {
        let (compression, created_by) = match self {
            WriterVariant::Standard => (Compression::SNAPPY, "tagflow generate (tracker writer)"),
            WriterVariant::SparkLike => (Compression::SNAPPY, "tagflow generate (spark-like writer)"),
            WriterVariant::Dictionary => (
                Compression::ZSTD(ZstdLevel::default()),
                "tagflow generate (connector writer)",
            ),
        };
        WriterProperties::builder()
            .set_compression(compression)
            .set_created_by(created_by.to_string())
            .build()
    }

    fn write_parquet(self, columns: Vec<Column>) -> Result<Vec<u8>, GenerateError> {
        let mut fields = Vec::with_capacity(columns.len());
        let mut arrays = Vec::with_capacity(columns.len());
        for column in columns {
            let array = self.convert(column.array)?;
            // Spark declares everything nullable; a file with a bad null must declare it too.
            let nullable = self == WriterVariant::SparkLike || column.nullable || array.null_count() > 0;
            fields.push(Field::new(column.name, array.data_type().clone(), nullable));
            arrays.push(array);
        }
        let schema = Arc::new(Schema::new(fields));
        let batch = RecordBatch::try_new(schema.clone(), arrays)?;
        let mut buffer = Vec::new();
        let mut writer = ArrowWriter::try_new(&mut buffer, schema, Some(self.properties()))?;
        writer.write(&batch)?;
        writer.close()?;
        Ok(buffer)
    }
}

fn encode_file<R: EventRow>(
    rows: &[R],
    bad: &BadRows,
    variant: WriterVariant,
    world: &World,
) -> Result<Vec<u8>, GenerateError> {
    let seed = world.seed;
    let prefix = R::STREAM.id_prefix();
    let mut event_ids = StringBuilder::new();
    let mut customer_ids = StringBuilder::new();
    let mut times = Vec::with_capacity(rows.len());
    for (i, row) in rows.iter().enumerate() {
        let _ = write!(event_ids, "{prefix}-{seed}-{}", row.id());
        event_ids.append_value("");
        if bad.is(i, BadKind::NullCustomer) {
            customer_ids.append_null();
        } else {
            let _ = write!(customer_ids, "cust-{:06}", u64::from(row.customer()) + 1);
            customer_ids.append_value("");
        }
        times.push(if bad.is(i, BadKind::Year1999) {
            world.year_1999_ms + row.time().rem_euclid(DAY_MS)
        } else {
            row.time()
        });
    }
    let mut columns = vec![
        Column::required("event_id", Arc::new(event_ids.finish())),
        Column::required("customer_id", Arc::new(customer_ids.finish())),
        Column::required("event_time", variant.event_times(times)),
    ];
    columns.extend(R::stream_columns(rows, bad, world));
    variant.write_parquet(columns)
}

// ---------------------------------------------------------------------------------------------
// Landing layout and delivery
// ---------------------------------------------------------------------------------------------

struct Output<'a> {
    landing: &'a Location,
    world: &'a World,
    summary: GenerateSummary,
    objects_written: usize,
}

impl<'a> Output<'a> {
    fn new(landing: &'a Location, world: &'a World) -> Self {
        let mut summary = GenerateSummary::default();
        for stream in Stream::ALL {
            summary.files.insert(stream.name().to_string(), 0);
            summary.events.insert(stream.name().to_string(), 0);
        }
        Output {
            landing,
            world,
            summary,
            objects_written: 0,
        }
    }

    async fn store(&mut self, relative: &str, payload: PutPayload) -> Result<(), GenerateError> {
        let path = self.landing.path(relative);
        self.landing
            .store
            .put_opts(&path, payload, PutOptions::default())
            .await
            .map_err(|source| GenerateError::Storage {
                path: self.landing.display(&path),
                source,
            })?;
        self.objects_written += 1;
        if self.objects_written.is_multiple_of(PROGRESS_EVERY_FILES) {
            info!(
                files = self.objects_written,
                last = relative,
                "generate: writing landing files"
            );
        }
        Ok(())
    }

    /// Encode and store one event file; re-send it under a second name if asked.
    async fn write_file<R: EventRow>(
        &mut self,
        relative: &str,
        rows: &[R],
        bad: &BadRows,
        variant: WriterVariant,
        resend: bool,
    ) -> Result<(), GenerateError> {
        let payload = PutPayload::from(encode_file(rows, bad, variant, self.world)?);
        let copies = if resend { 2 } else { 1 };
        self.store(relative, payload.clone()).await?;
        if resend {
            let resent = relative.replace(".parquet", "-resend.parquet");
            self.store(&resent, payload).await?;
            self.summary.duplicate_files += 1;
        }
        let stream = R::STREAM.name();
        *self.summary.files.entry(stream.to_string()).or_default() += copies;
        *self.summary.events.entry(stream.to_string()).or_default() += copies * rows.len();
        self.summary.bad_rows += bad.len();
        Ok(())
    }

    async fn write_corrupt_file(&mut self) -> Result<(), GenerateError> {
        let relative = format!(
            "clicks/dt={}/corrupt-0000.parquet",
            self.world.dates[self.world.last as usize]
        );
        self.store(&relative, PutPayload::from_static(CORRUPT_FILE_BYTES))
            .await?;
        self.summary.bad_files += 1;
        Ok(())
    }
}

/// Write one stream, day by day: on-time files, occasional re-sends and repeated events, and
/// the late events that other days handed over to this day's folder.
async fn write_stream<R: EventRow>(
    out: &mut Output<'_>,
    buckets: Vec<Vec<R>>,
    bad_plan: &BadPlan,
) -> Result<(), GenerateError> {
    let world = out.world;
    let stream = R::STREAM;
    let mut rng = world.rng(stream.salt());
    let mut late: Vec<Vec<R>> = (0..buckets.len()).map(|_| Vec::new()).collect();
    let mut previous_tail: Vec<R> = Vec::new();

    for (day, mut rows) in buckets.into_iter().enumerate() {
        let dt = &world.dates[day];
        let day = day as u32;
        sort_rows(&mut rows);
        let rows = hold_back_late(&mut rng, world, day, rows, &mut late);
        let planned_bad = bad_plan.get(&(stream, day)).map_or(&[][..], Vec::as_slice);

        for (part, chunk) in split_into_files(&mut rng, &rows).into_iter().enumerate() {
            let mut file_rows: Vec<R> = Vec::with_capacity(chunk.len() + REPEAT_TAIL_MAX);
            // At-least-once delivery: a writer restarts and repeats the end of its last file.
            if !previous_tail.is_empty() && rng.random_bool(REPEAT_TAIL_SHARE) {
                let repeat = between(&mut rng, 1, previous_tail.len() as u32) as usize;
                file_rows.extend_from_slice(&previous_tail[previous_tail.len() - repeat..]);
            }
            let repeated = file_rows.len();
            file_rows.extend_from_slice(chunk);

            let bad = if part == 0 {
                BadRows::place(planned_bad, repeated, file_rows.len())
            } else {
                BadRows::default()
            };
            // Files with bad rows are never re-sent, so every bad row is written exactly once.
            let resend = bad.is_empty() && rng.random_bool(RESEND_SHARE);
            let variant = WriterVariant::pick(&mut rng);
            let relative = format!("{}/dt={dt}/part-{part:04}.parquet", stream.name());
            out.write_file(&relative, &file_rows, &bad, variant, resend).await?;
            previous_tail = tail(&file_rows, &bad);
        }

        let mut arrivals = std::mem::take(&mut late[day as usize]);
        if !arrivals.is_empty() {
            sort_rows(&mut arrivals);
            let variant = WriterVariant::pick(&mut rng);
            let relative = format!("{}/dt={dt}/late-0000.parquet", stream.name());
            out.write_file(&relative, &arrivals, &BadRows::default(), variant, false)
                .await?;
            out.summary.late_files += 1;
            previous_tail = tail(&arrivals, &BadRows::default());
        }
    }
    Ok(())
}

fn sort_rows<R: EventRow>(rows: &mut [R]) {
    rows.sort_unstable_by_key(|r| (r.time(), r.id()));
}

/// Move about LATE_SHARE of a day's events to the late file of a later day (1-10 days later,
/// never after `end`); return the rest.
fn hold_back_late<R: EventRow>(
    rng: &mut ChaCha8Rng,
    world: &World,
    day: u32,
    rows: Vec<R>,
    late: &mut [Vec<R>],
) -> Vec<R> {
    let max_delay = (world.last - day).min(LATE_MAX_DAYS);
    if max_delay == 0 {
        return rows;
    }
    let mut on_time = Vec::with_capacity(rows.len());
    for row in rows {
        if rng.random_bool(LATE_SHARE) {
            let delay = between(rng, 1, max_delay);
            late[(day + delay) as usize].push(row);
        } else {
            on_time.push(row);
        }
    }
    on_time
}

/// 1-3 consecutive time slices per day; one file for small days; none for empty ones.
fn split_into_files<'r, R>(rng: &mut ChaCha8Rng, rows: &'r [R]) -> Vec<&'r [R]> {
    if rows.is_empty() {
        return Vec::new();
    }
    let files = if rows.len() < SMALL_DAY_ROWS {
        1
    } else {
        let most = (rows.len() / MIN_FILE_ROWS).max(1) as u32;
        between(rng, 1, MAX_FILES_PER_DAY).min(most) as usize
    };
    rows.chunks(rows.len().div_ceil(files)).collect()
}

/// The last rows of a file, which the next file may repeat. Bad rows are left out: a bad row
/// must not come back clean under the same event_id.
fn tail<R: Copy>(rows: &[R], bad: &BadRows) -> Vec<R> {
    let from = rows.len().saturating_sub(REPEAT_TAIL_MAX);
    (from..rows.len())
        .filter(|&i| bad.kind_at(i).is_none())
        .map(|i| rows[i])
        .collect()
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
