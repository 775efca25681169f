//! Rates and sizes. Shares are of all customers unless the name says otherwise.

use super::*;

// Time.
pub(super) const SECOND_MS: i64 = 1_000;
pub(super) const HOUR_MS: i64 = 3_600 * SECOND_MS;
pub(super) const DAY_MS: i64 = 24 * HOUR_MS;
/// Latest generated time of day (23:59:59.000): every event of `end` counts for a run evaluated
/// as of `end` 23:59:59. Times are whole milliseconds, so the millisecond writer loses nothing.
pub(super) const LAST_MS_OF_DAY: i64 = DAY_MS - SECOND_MS;
/// Sessions end at least this long before midnight, so immediate follow-ups (the payment
/// result) stay on the same day, and on `end` are not cut off.
pub(super) const SESSION_END_MARGIN_MS: i64 = 5 * 60 * SECOND_MS;
/// Traffic by hour of day (UTC): quiet nights, evening peak.
pub(super) const HOUR_WEIGHTS: [u32; 24] = [
    3, 2, 1, 1, 1, 1, 2, 4, 6, 7, 8, 9, 10, 9, 8, 8, 9, 10, 12, 14, 15, 14, 10, 6,
];

// The catalog's windows, in days (today included).
pub(super) const RECENT_DAYS: u32 = 30;
pub(super) const DORMANT_DAYS: u32 = 90;
pub(super) const YEAR_DAYS: u32 = 365;
pub(super) const ABANDON_DAYS: u32 = 3;

// Limits of the options.
pub(super) const MAX_CUSTOMERS: usize = 100_000_000;
pub(super) const MAX_DAYS: u32 = 3_660;

// Volume: about EVENTS_PER_CUSTOMER_DAY * customers * days events in total.
pub(super) const EVENTS_PER_CUSTOMER_DAY: f64 = 0.25;
/// Spread of the per-customer activity (log-normal): most customers visit about once a month,
/// the top 1% some 20 times more often.
pub(super) const ACTIVITY_SIGMA: f64 = 1.3;
pub(super) const MAX_SESSIONS_PER_DAY: f64 = 3.0;
pub(super) const CALIBRATION_ROUNDS: usize = 6;

// Lifecycle mix (the rest is churned). Each stage is pinned by a forced first and last visit.
pub(super) const NEW_SHARE: f64 = 0.12;
pub(super) const ACTIVE_SHARE: f64 = 0.46;
pub(super) const DORMANT_SHARE: f64 = 0.16;

// Tastes.
pub(super) const TWO_FAVOURITES_SHARE: f64 = 0.55;
/// Loyal customers buy one brand of their first favourite category most of the time, which
/// makes `brand_enthusiast` once they have 3 orders.
pub(super) const LOYAL_SHARE: f64 = 0.30;
pub(super) const LOYAL_CATEGORY_PROB: f64 = 0.85;
pub(super) const LOYAL_BRAND_PROB: f64 = 0.90;
pub(super) const FAVOURITE_CATEGORY_PROB: f64 = 0.75;
pub(super) const PREFERRED_BRAND_PROB: f64 = 0.50;
/// Share of product views in the session's category (the rest is cross-browsing).
pub(super) const SESSION_CATEGORY_VIEW_PROB: f64 = 0.85;
/// Brand popularity inside a category, by rank.
pub(super) const BRAND_RANK_WEIGHTS: [u32; 5] = [50, 25, 15, 10, 6];
/// Products are numbered 0..=MAX_ITEM per (category, brand); the price grows exponentially with
/// the number, and each customer shops around a personal price tier. Together with category
/// base prices from 6 to 780 this gives heavy-tailed prices and order amounts.
pub(super) const MAX_ITEM: u8 = 119;
pub(super) const PRICE_STEP: f64 = 0.03;
pub(super) const PRICE_FLOOR_FACTOR: f64 = 0.25;
pub(super) const PRICE_TIER_MEAN: f64 = 40.0;
pub(super) const PRICE_TIER_SD: f64 = 15.0;
pub(super) const ITEM_SPREAD: f64 = 10.0;

// Devices and channels.
pub(super) const SECOND_DEVICE_PROB: f64 = 0.45;
pub(super) const THIRD_DEVICE_PROB: f64 = 0.15;
pub(super) const PRIMARY_DEVICE_PROB: f64 = 0.70;
/// Own devices are numbered `customer * DEVICE_STRIDE + k`; shared ones from SHARED_DEVICE_BASE.
pub(super) const DEVICE_STRIDE: u32 = 4;
pub(super) const SHARED_DEVICE_BASE: u32 = 0xC000_0000;
pub(super) const CHANNELS: [&str; 3] = ["web", "app", "mini_program"];
pub(super) const CHANNEL_WEIGHTS: [u32; 3] = [40, 45, 15];
pub(super) const CHANNEL_WEB: u8 = 0;
pub(super) const SECOND_ADDRESS_PROB: f64 = 0.2;
pub(super) const PAYMENT_METHODS: [&str; 5] = ["card", "wallet", "bank_transfer", "cash_on_delivery", "gift_card"];
pub(super) const PAYMENT_WEIGHTS: [u32; 5] = [45, 35, 8, 8, 4];
pub(super) const PREFERRED_PAYMENT_PROB: f64 = 0.8;

// Funnel.
/// "Browsers" look a lot and rarely buy; they make most `prospect`s and `awareness`/`interest`.
pub(super) const BROWSER_SHARE: f64 = 0.25;
pub(super) const BROWSER_CART_PROB: (f64, f64) = (0.05, 0.15);
pub(super) const BROWSER_BUY_PROB: (f64, f64) = (0.10, 0.25);
pub(super) const SHOPPER_CART_PROB: (f64, f64) = (0.35, 0.65);
pub(super) const SHOPPER_BUY_PROB: (f64, f64) = (0.45, 0.85);
pub(super) const NULL_SESSION_SHARE: f64 = 0.01;
pub(super) const MORE_VIEWS_PROB: f64 = 0.65;
pub(super) const MAX_VIEWS: u32 = 12;
pub(super) const NAV_PAGE_PROB: f64 = 0.25;
pub(super) const PROMO_PAGE_PROB: f64 = 0.05;
pub(super) const PROMO_LOVER_PROMO_PAGE_PROB: f64 = 0.35;
/// Landing pages other than promo: home, search, category.
pub(super) const LANDING_WEIGHTS: [u32; 3] = [45, 25, 30];
/// Pages between product views: category, search, other.
pub(super) const NAV_WEIGHTS: [u32; 3] = [60, 30, 10];
pub(super) const SECOND_ADD_PROB: f64 = 0.40;
pub(super) const THIRD_ADD_PROB: f64 = 0.15;
pub(super) const QUANTITY_WEIGHTS: [u32; 3] = [80, 15, 5];
pub(super) const REMOVE_PROB: f64 = 0.15;

// Orders.
pub(super) const PROMO_LOVER_SHARE: f64 = 0.12;
pub(super) const PROMO_LOVER_BUY_BOOST: f64 = 1.15;
pub(super) const PROMO_LOVER_DISCOUNT_PROB: f64 = 0.85;
pub(super) const DISCOUNT_PROB: f64 = 0.08;
pub(super) const DISCOUNT_RATE: (f64, f64) = (0.05, 0.30);
pub(super) const FAIL_PROB: f64 = 0.03;
pub(super) const CANCEL_PROB: f64 = 0.05;
pub(super) const RETRY_AFTER_FAIL_PROB: f64 = 0.5;
pub(super) const CANCEL_AFTER_FAIL_PROB: f64 = 0.5;
pub(super) const REFUND_PROB: f64 = 0.04;
pub(super) const REFUND_DELAY_DAYS: (u32, u32) = (2, 20);

// Archetypes.
/// Refund abusers (among active and dormant customers): several paid orders in the last year,
/// most of them refunded -> `refund_risk`.
pub(super) const ABUSER_SHARE_OF_ELIGIBLE: f64 = 0.07;
pub(super) const ABUSER_REFUND_PROB: f64 = 0.6;
pub(super) const ABUSER_ACTIVITY_BOOST: f64 = 2.0;
pub(super) const ABUSER_PURCHASES: (u32, u32) = (3, 6);
pub(super) const ABUSER_FORCED_REFUNDS: u32 = 2;
/// Big-ticket buyers (among active and dormant customers): rare visits, expensive electronics,
/// one or two orders a year that still reach the top monetary quintile -> `big_spender`
/// (without them, long histories leave the top quintile to frequent buyers only).
pub(super) const BIG_TICKET_SHARE_OF_ELIGIBLE: f64 = 0.07;
pub(super) const BIG_TICKET_CATEGORIES: [u8; 2] = [0, 1];
pub(super) const BIG_TICKET_TIER_MEAN: f64 = 85.0;
pub(super) const BIG_TICKET_TIER_SD: f64 = 10.0;
pub(super) const BIG_TICKET_ACTIVITY: f64 = 0.3;
/// Low-credit buyers (among new and active customers): a burst of failed or cancelled orders
/// in the last 30 days -> `low_credit`.
pub(super) const LOW_CREDIT_SHARE_OF_RECENT: f64 = 0.06;
pub(super) const LOW_CREDIT_ATTEMPTS: (u32, u32) = (4, 7);
pub(super) const LOW_CREDIT_MIN_FAILURES: u32 = 3;
pub(super) const LOW_CREDIT_FAIL_PROB: f64 = 0.25;
pub(super) const LOW_CREDIT_CANCEL_PROB: f64 = 0.15;
pub(super) const FAILED_ORDER_PAYMENT_FAILED_PROB: f64 = 0.6;
/// Cart abandoners (among new and active customers): a focused session in the last 3 days
/// ending with items in the cart -> `cart_abandoner`, usually `category_intent` too.
pub(super) const ABANDONER_SHARE_OF_RECENT: f64 = 0.10;
/// Shared devices (family tablets, shop terminals, fraud rings): each used by 5-12 customers
/// within one 30-day window. Three groups in four use the last 30 days (-> `shared_device`),
/// the others an older window (must not tag).
pub(super) const SHARED_GROUPS_PER_CUSTOMER: f64 = 1.0 / 120.0;
pub(super) const SHARED_GROUP_SIZE: (u32, u32) = (5, 12);
pub(super) const SHARED_VISITS: (u32, u32) = (1, 2);
pub(super) const OLD_SHARED_GROUP_EVERY: u32 = 4;

// Delivery.
pub(super) const LATE_SHARE: f64 = 0.02;
pub(super) const LATE_MAX_DAYS: u32 = 10;
pub(super) const RESEND_SHARE: f64 = 0.01;
pub(super) const REPEAT_TAIL_SHARE: f64 = 0.05;
pub(super) const REPEAT_TAIL_MAX: usize = 5;
pub(super) const SMALL_DAY_ROWS: usize = 500;
pub(super) const MIN_FILE_ROWS: usize = 200;
pub(super) const MAX_FILES_PER_DAY: u32 = 3;
pub(super) const SPARK_LIKE_SHARE: f64 = 0.10;
pub(super) const DICTIONARY_SHARE: f64 = 0.10;
pub(super) const PROGRESS_EVERY_FILES: usize = 50;

// Bad input (only with `bad_input`): placed in the first file of a random day of the last two
// weeks of the stream.
pub(super) const BAD_ROW_DAYS: u32 = 14;
pub(super) const BAD_ROWS: [(Stream, BadKind); 10] = [
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
pub(super) const UNKNOWN_PAGE_TYPE: &str = "flash_sale_v2";
pub(super) const CORRUPT_FILE_BYTES: &[u8] =
    b"{\"event_id\":\"export-1\",\"note\":\"a JSON export that landed in the parquet folder\"}\n\
{\"event_id\":\"export-2\",\"note\":\"not a parquet file\"}\n";

// Salts of the random streams.
pub(super) const SALT_PROFILE: u64 = 0x7072_6f66;
pub(super) const SALT_SETTLE: u64 = 0x7365_7474;
pub(super) const SALT_SESSIONS: u64 = 0x7365_7373;
pub(super) const SALT_SHARED: u64 = 0x7368_6172;
pub(super) const SALT_BAD: u64 = 0x6261_6472;
pub(super) const SALT_DEVICE_ID: u64 = 0x6465_7669;
pub(super) const SALT_ADDRESS: u64 = 0x6164_6472;
