//! Differential test against an oracle: the 19 tags of `shared/spec/tags.md` (v1 and v2), implemented
//! again in plain Rust (maps over rows, no SQL) from an independent reading of the spec, and
//! compared row for row with what the pipeline published.
//!
//! The oracle shares only the input with the pipeline: the counted events that
//! `tagflow::sources::read_landing` yields (de-duplicated, quarantined rows removed,
//! `event_time <= as_of`). Everything after that (order facts, measures, windows, tags) is
//! written from the spec, not from `sql/**`. Rows must agree on (customer_id, tag, value) and
//! family; scores must both be null or agree to 1e-9 relative. The predictive tags are
//! numerical (a model fit): the oracle computes each customer's purchase summary, p_alive and
//! E90 itself, from parameters fitted by `tagflow::jobs::bgnbd::fit` over its own summaries
//! (the fit is checked against the paper by `predictive::cdnow_fit_reproduces_the_paper`);
//! their scores agree to 1e-4, and a value may differ within 1e-4 of a band's edge.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::Path;

use arrow::array::{Array, Float64Array, Int32Array, StringArray, TimestampMicrosecondArray};
use arrow::record_batch::RecordBatch;
use chrono::{DateTime, Datelike, NaiveDate, Utc};
use tagflow::generate::{generate, GenerateOptions};
use tagflow::sources::schema::Schemas;
use tagflow::sources::{read_landing, LandingData};
use tagflow::storage::Location;

use crate::support::{Fixture, TagRow, Tags, SHIPPED_TAGS};

const MICROS_PER_DAY: i64 = 86_400_000_000;

/// Evaluation times of each fixture: the end of the generated history, then a time in the
/// middle of it (midnight: only events at exactly 00:00:00 count from day D).
const AS_OFS: [&str; 2] = ["2026-11-19T18:30:00Z", "2026-06-30T00:00:00Z"];

/// Differing rows shown per tag in a failure message.
const SHOWN_PER_TAG: usize = 10;

#[tokio::test]
async fn published_tags_match_the_reference_implementation_seed_1() {
    differential(1).await;
}

#[tokio::test]
async fn published_tags_match_the_reference_implementation_seed_2() {
    differential(20_261_119).await;
}

/// Generate a landing zone, run the pipeline at every time of [`AS_OFS`] and compare each
/// published version with the reference tags of the same counted events.
async fn differential(seed: u64) {
    let fx = Fixture::new();
    let landing = location(&fx.landing_dir());
    generate(
        &landing,
        &GenerateOptions {
            customers: 800,
            days: 400,
            seed,
            end: NaiveDate::from_ymd_opt(2026, 11, 19).expect("date"),
            bad_input: true,
        },
    )
    .await
    .expect("generate landing files");
    let schemas = Schemas::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas")).expect("load schemas");
    // Our own reads quarantine bad input too: keep those writes out of the pipeline's warehouse.
    let scratch = tempfile::tempdir().expect("scratch dir");

    let mut failures = Vec::new();
    for (i, as_of) in AS_OFS.iter().enumerate() {
        let at = AsOf::parse(as_of);
        fx.try_run(as_of, None)
            .await
            .unwrap_or_else(|e| panic!("seed {seed}: run as of {as_of} failed: {e}"));
        let published = fx.published(None).await;

        let warehouse = location(&scratch.path().join(format!("as-of-{i}")));
        let data = read_landing(&landing, &warehouse, &schemas, at.time, Utc::now(), 8)
            .await
            .expect("read the landing zone");
        let events = Events::from_landing(&data, &at);
        let expected = reference_tags(&events, &at);

        if i == 0 {
            // At the end of the history every tag must have rows, or the comparison is vacuous.
            for tag in SHIPPED_TAGS {
                if expected.get(tag).is_none_or(|rows| rows.is_empty()) {
                    failures.push(format!(
                        "seed {seed}, as of {as_of}: the reference has no {tag} row: the generated data does not exercise it"
                    ));
                }
            }
        }
        if let Some(diff) = compare(&expected, &published) {
            failures.push(format!("seed {seed}, as of {as_of}:\n{diff}"));
        }
        let published_tasks = tagflow::publish::tasks::task_report(&location(&fx.warehouse_dir()), None, None)
            .await
            .expect("read task_results");
        let expected_tasks = reference_tasks(&events);
        if expected_tasks.is_empty() {
            failures.push(format!(
                "seed {seed}, as of {as_of}: no marketing task in the generated data"
            ));
        }
        failures.extend(
            compare_tasks(&expected_tasks, &published_tasks.tasks)
                .into_iter()
                .map(|d| format!("seed {seed}, as of {as_of}: task_results: {d}")),
        );
    }
    assert!(
        failures.is_empty(),
        "published tags differ from the reference:\n{}",
        failures.join("\n")
    );
}

fn location(path: &Path) -> Location {
    Location::parse(&path.to_string_lossy(), &Default::default()).expect("location")
}

// ---------------------------------------------------------------------------------------------
// Evaluation time and counted events
// ---------------------------------------------------------------------------------------------

/// The as-of time `T` and its UTC date `D` (days since 1970-01-01).
#[derive(Clone, Copy, Debug)]
struct AsOf {
    time: DateTime<Utc>,
    micros: i64,
    day: i64,
}

impl AsOf {
    fn parse(text: &str) -> Self {
        let time = DateTime::parse_from_rfc3339(text)
            .unwrap_or_else(|e| panic!("bad as-of {text}: {e}"))
            .with_timezone(&Utc);
        let micros = time.timestamp_micros();
        AsOf {
            time,
            micros,
            day: micros.div_euclid(MICROS_PER_DAY),
        }
    }

    /// "In the last `n` days": the day is within [D − (n − 1), D]. (Counted events are all
    /// at or before T, so the time condition holds already.)
    fn in_last(&self, n: i64, day: i64) -> bool {
        day >= self.day - (n - 1) && day <= self.day
    }
}

fn day_of(micros: i64) -> i64 {
    micros.div_euclid(MICROS_PER_DAY)
}

/// (year, month) of a time, UTC.
fn year_month(micros: i64) -> (i32, u32) {
    let date = DateTime::<Utc>::from_timestamp_micros(micros)
        .expect("time in range")
        .date_naive();
    (date.year(), date.month())
}

struct ClickEvent {
    customer: String,
    time: i64,
    day: i64,
    channel: Option<String>,
    page_type: Option<String>,
    category: Option<String>,
    device: Option<String>,
}

struct CartEvent {
    customer: String,
    time: i64,
    day: i64,
    action: Option<String>,
    category: Option<String>,
    quantity: Option<i32>,
    unit_price: Option<f64>,
    device: Option<String>,
}

struct OrderEvent {
    event_id: String,
    customer: String,
    time: i64,
    day: i64,
    order_id: String,
    status: Option<String>,
    amount: Option<f64>,
    category: Option<String>,
    brand: Option<String>,
    discount: Option<f64>,
    device: Option<String>,
}

/// A marketing contact or a reply (`touches`).
struct TouchEvent {
    event_id: String,
    customer: String,
    time: i64,
    day: i64,
    task_id: String,
    task_type: Option<String>,
    sent: bool,
}

/// A consent change (`consents`).
struct ConsentEvent {
    event_id: String,
    customer: String,
    time: i64,
    channel: String,
    withdrawn: bool,
}

/// All counted events, as plain rows.
struct Events {
    clicks: Vec<ClickEvent>,
    carts: Vec<CartEvent>,
    orders: Vec<OrderEvent>,
    touches: Vec<TouchEvent>,
    consents: Vec<ConsentEvent>,
}

impl Events {
    fn from_landing(data: &LandingData, at: &AsOf) -> Self {
        let mut events = Events {
            clicks: Vec::new(),
            carts: Vec::new(),
            orders: Vec::new(),
            touches: Vec::new(),
            consents: Vec::new(),
        };
        for b in stream(data, "clicks") {
            let (customer, time) = (column::<StringArray>(b, "customer_id"), event_times(b));
            let (page_type, category, device, channel) = (
                column::<StringArray>(b, "page_type"),
                column::<StringArray>(b, "category"),
                column::<StringArray>(b, "device_id"),
                column::<StringArray>(b, "channel"),
            );
            for i in 0..b.num_rows() {
                let t = counted_time(time, i, at);
                events.clicks.push(ClickEvent {
                    customer: required(customer, i, "clicks.customer_id"),
                    time: t,
                    day: day_of(t),
                    channel: text(channel, i),
                    page_type: text(page_type, i),
                    category: text(category, i),
                    device: text(device, i),
                });
            }
        }
        for b in stream(data, "carts") {
            let (customer, time) = (column::<StringArray>(b, "customer_id"), event_times(b));
            let (action, category, device) = (
                column::<StringArray>(b, "action"),
                column::<StringArray>(b, "category"),
                column::<StringArray>(b, "device_id"),
            );
            let quantity = column::<Int32Array>(b, "quantity");
            let unit_price = column::<Float64Array>(b, "unit_price");
            for i in 0..b.num_rows() {
                let t = counted_time(time, i, at);
                events.carts.push(CartEvent {
                    customer: required(customer, i, "carts.customer_id"),
                    time: t,
                    day: day_of(t),
                    action: text(action, i),
                    category: text(category, i),
                    quantity: quantity.is_valid(i).then(|| quantity.value(i)),
                    unit_price: float(unit_price, i),
                    device: text(device, i),
                });
            }
        }
        for b in stream(data, "orders") {
            let (event_id, customer, time) = (
                column::<StringArray>(b, "event_id"),
                column::<StringArray>(b, "customer_id"),
                event_times(b),
            );
            let (order_id, status) = (column::<StringArray>(b, "order_id"), column::<StringArray>(b, "status"));
            let (category, brand, device) = (
                column::<StringArray>(b, "category"),
                column::<StringArray>(b, "brand"),
                column::<StringArray>(b, "device_id"),
            );
            let (amount, discount) = (
                column::<Float64Array>(b, "amount"),
                column::<Float64Array>(b, "discount_amount"),
            );
            for i in 0..b.num_rows() {
                let t = counted_time(time, i, at);
                events.orders.push(OrderEvent {
                    event_id: required(event_id, i, "orders.event_id"),
                    customer: required(customer, i, "orders.customer_id"),
                    time: t,
                    day: day_of(t),
                    order_id: required(order_id, i, "orders.order_id"),
                    status: text(status, i),
                    amount: float(amount, i),
                    category: text(category, i),
                    brand: text(brand, i),
                    discount: float(discount, i),
                    device: text(device, i),
                });
            }
        }
        for b in stream(data, "touches") {
            let (event_id, customer, time) = (
                column::<StringArray>(b, "event_id"),
                column::<StringArray>(b, "customer_id"),
                event_times(b),
            );
            let (task_id, task_type, action) = (
                column::<StringArray>(b, "task_id"),
                column::<StringArray>(b, "task_type"),
                column::<StringArray>(b, "action"),
            );
            for i in 0..b.num_rows() {
                let t = counted_time(time, i, at);
                events.touches.push(TouchEvent {
                    event_id: required(event_id, i, "touches.event_id"),
                    customer: required(customer, i, "touches.customer_id"),
                    time: t,
                    day: day_of(t),
                    task_id: required(task_id, i, "touches.task_id"),
                    task_type: text(task_type, i),
                    sent: required(action, i, "touches.action") == "sent",
                });
            }
        }
        for b in stream(data, "consents") {
            let (event_id, customer, time) = (
                column::<StringArray>(b, "event_id"),
                column::<StringArray>(b, "customer_id"),
                event_times(b),
            );
            let (channel, status) = (column::<StringArray>(b, "channel"), column::<StringArray>(b, "status"));
            for i in 0..b.num_rows() {
                events.consents.push(ConsentEvent {
                    event_id: required(event_id, i, "consents.event_id"),
                    customer: required(customer, i, "consents.customer_id"),
                    time: counted_time(time, i, at),
                    channel: required(channel, i, "consents.channel"),
                    withdrawn: required(status, i, "consents.status") == "withdrawn",
                });
            }
        }
        events
    }

    /// (customer, time) of every behaviour event (clicks, carts, orders).
    fn times(&self) -> impl Iterator<Item = (&str, i64)> + '_ {
        let clicks = self.clicks.iter().map(|e| (e.customer.as_str(), e.time));
        let carts = self.carts.iter().map(|e| (e.customer.as_str(), e.time));
        let orders = self.orders.iter().map(|e| (e.customer.as_str(), e.time));
        clicks.chain(carts).chain(orders)
    }

    /// (customer, day, device) of every event of every stream with a device.
    fn device_uses(&self) -> impl Iterator<Item = (&str, i64, &str)> + '_ {
        let clicks = self
            .clicks
            .iter()
            .map(|e| (e.customer.as_str(), e.day, e.device.as_deref()));
        let carts = self
            .carts
            .iter()
            .map(|e| (e.customer.as_str(), e.day, e.device.as_deref()));
        let orders = self
            .orders
            .iter()
            .map(|e| (e.customer.as_str(), e.day, e.device.as_deref()));
        clicks
            .chain(carts)
            .chain(orders)
            .filter_map(|(customer, day, device)| device.map(|d| (customer, day, d)))
    }
}

/// The counted batches of one stream.
fn stream<'a>(data: &'a LandingData, name: &str) -> &'a [RecordBatch] {
    data.events
        .get(name)
        .unwrap_or_else(|| panic!("no stream {name} in the landing data"))
        .as_slice()
}

fn column<'a, A: Array + 'static>(batch: &'a RecordBatch, name: &str) -> &'a A {
    let array = batch
        .column_by_name(name)
        .unwrap_or_else(|| panic!("counted events have no column '{name}'"));
    array
        .as_any()
        .downcast_ref::<A>()
        .unwrap_or_else(|| panic!("column '{name}' has the unexpected type {}", array.data_type()))
}

fn event_times(batch: &RecordBatch) -> &TimestampMicrosecondArray {
    column::<TimestampMicrosecondArray>(batch, "event_time")
}

/// The event time of row `i`, checked to be counted at `at`.
fn counted_time(times: &TimestampMicrosecondArray, i: usize, at: &AsOf) -> i64 {
    assert!(times.is_valid(i), "null event_time in counted events");
    let t = times.value(i);
    assert!(
        t <= at.micros,
        "read_landing returned an event after the as-of time: {t}"
    );
    t
}

fn text(array: &StringArray, i: usize) -> Option<String> {
    array.is_valid(i).then(|| array.value(i).to_string())
}

fn required(array: &StringArray, i: usize, what: &str) -> String {
    text(array, i).unwrap_or_else(|| panic!("null {what} in counted events"))
}

fn float(array: &Float64Array, i: usize) -> Option<f64> {
    array.is_valid(i).then(|| array.value(i))
}

fn status_is(order: &OrderEvent, statuses: &[&str]) -> bool {
    order.status.as_deref().is_some_and(|s| statuses.contains(&s))
}

// ---------------------------------------------------------------------------------------------
// Order facts and measures
// ---------------------------------------------------------------------------------------------

/// A paid order, with the facts of its earliest `paid` event.
struct PaidOrder<'a> {
    customer: &'a str,
    time: i64,
    day: i64,
    amount: f64,
    discount: Option<f64>,
    brand: Option<&'a str>,
    category: Option<&'a str>,
}

/// A refunded order, at the time of its earliest `refunded` event.
struct Refund<'a> {
    customer: &'a str,
    day: i64,
}

/// Per order_id, the earliest of `orders` (ties: the smallest event_id).
fn earliest_per_order<'a>(orders: impl Iterator<Item = &'a OrderEvent>) -> BTreeMap<&'a str, &'a OrderEvent> {
    let mut earliest: BTreeMap<&str, &OrderEvent> = BTreeMap::new();
    for o in orders {
        earliest
            .entry(o.order_id.as_str())
            .and_modify(|e| {
                if (o.time, &o.event_id) < (e.time, &e.event_id) {
                    *e = o;
                }
            })
            .or_insert(o);
    }
    earliest
}

fn paid_orders(ev: &Events) -> Vec<PaidOrder<'_>> {
    earliest_per_order(ev.orders.iter().filter(|o| status_is(o, &["paid"])))
        .into_values()
        .map(|o| PaidOrder {
            customer: &o.customer,
            time: o.time,
            day: o.day,
            amount: o.amount.expect("amount is required"),
            discount: o.discount,
            brand: o.brand.as_deref(),
            category: o.category.as_deref(),
        })
        .collect()
}

fn refunds(ev: &Events) -> Vec<Refund<'_>> {
    earliest_per_order(ev.orders.iter().filter(|o| status_is(o, &["refunded"])))
        .into_values()
        .map(|o| Refund {
            customer: &o.customer,
            day: o.day,
        })
        .collect()
}

/// The measures of one customer of the universe.
#[derive(Debug)]
struct Measures {
    orders_365: u32,
    monetary_365: f64,
    orders_all: u32,
    product_views_30: u32,
    cart_adds_30: u32,
    first_seen: i64,
    last_seen: i64,
}

/// Everything the tags are computed from.
struct Facts<'a> {
    at: AsOf,
    ev: &'a Events,
    paid: Vec<PaidOrder<'a>>,
    refunds: Vec<Refund<'a>>,
    /// One entry per customer of the universe.
    measures: BTreeMap<&'a str, Measures>,
}

impl<'a> Facts<'a> {
    fn new(ev: &'a Events, at: &AsOf) -> Self {
        let at = *at;
        let paid = paid_orders(ev);
        let mut measures: BTreeMap<&str, Measures> = BTreeMap::new();
        for (customer, time) in ev.times() {
            let m = measures.entry(customer).or_insert(Measures {
                orders_365: 0,
                monetary_365: 0.0,
                orders_all: 0,
                product_views_30: 0,
                cart_adds_30: 0,
                first_seen: time,
                last_seen: time,
            });
            m.first_seen = m.first_seen.min(time);
            m.last_seen = m.last_seen.max(time);
        }
        for p in &paid {
            let m = measures.get_mut(p.customer).expect("a paying customer has events");
            m.orders_all += 1;
            if at.in_last(365, p.day) {
                m.orders_365 += 1;
                m.monetary_365 += p.amount;
            }
        }
        for c in &ev.clicks {
            if c.page_type.as_deref() == Some("product") && at.in_last(30, c.day) {
                measures
                    .get_mut(c.customer.as_str())
                    .expect("universe")
                    .product_views_30 += 1;
            }
        }
        for c in &ev.carts {
            if c.action.as_deref() == Some("add") && at.in_last(30, c.day) {
                measures.get_mut(c.customer.as_str()).expect("universe").cart_adds_30 += 1;
            }
        }
        Facts {
            at,
            ev,
            refunds: refunds(ev),
            paid,
            measures,
        }
    }

    /// Paid orders whose paid time is in the last `n` days.
    fn paid_in_last(&self, n: i64) -> impl Iterator<Item = &PaidOrder<'a>> + '_ {
        self.paid.iter().filter(move |p| self.at.in_last(n, p.day))
    }

    fn orders_365(&self, customer: &str) -> u32 {
        self.measures.get(customer).map_or(0, |m| m.orders_365)
    }
}

// ---------------------------------------------------------------------------------------------
// Tags
// ---------------------------------------------------------------------------------------------

/// One expected row; the customer is its key in a [`TagTable`].
#[derive(Debug)]
struct Expected {
    family: &'static str,
    value: String,
    score: Option<f64>,
    /// Another value that is not wrong either. Only for `rfm_tier`, when `monetary_365` equals
    /// M80 up to the rounding of a float sum: whether `≥ M80` holds then depends on the order
    /// in which each side added the amounts. For the predictive tags: the band on the other
    /// side of an edge the score is within the tolerance of.
    also_ok: Option<String>,
    /// Absolute score tolerance (numerical tags); `None`: 1e-9 relative.
    tolerance: Option<f64>,
}

impl Expected {
    fn new(family: &'static str, value: impl Into<String>, score: Option<f64>) -> Self {
        Expected {
            family,
            value: value.into(),
            score,
            also_ok: None,
            tolerance: None,
        }
    }

    fn flag(family: &'static str, score: Option<f64>) -> Self {
        Expected::new(family, "true", score)
    }

    fn accepts(&self, row: &TagRow) -> bool {
        let value_ok = row.value == self.value || self.also_ok.as_deref() == Some(row.value.as_str());
        let score_ok = match (self.tolerance, self.score, row.score) {
            (Some(tolerance), Some(e), Some(g)) => (g - e).abs() <= tolerance,
            _ => same_score(self.score, row.score),
        };
        value_ok && row.family == self.family && score_ok
    }
}

/// Expected rows of one tag, by customer.
type TagTable = BTreeMap<String, Expected>;

fn reference_tags(ev: &Events, at: &AsOf) -> BTreeMap<&'static str, TagTable> {
    let f = Facts::new(ev, at);
    let mut tags = BTreeMap::new();
    tags.insert("rfm_tier", rfm_tier(&f));
    tags.insert("lifecycle", lifecycle(&f));
    tags.insert("aipl_stage", aipl_stage(&f));
    tags.insert("repurchaser", repurchaser(&f));
    tags.insert("brand_enthusiast", brand_enthusiast(&f));
    tags.insert("category_intent", category_intent(&f));
    tags.insert("cart_abandoner", cart_abandoner(&f));
    tags.insert("promo_sensitive", promo_sensitive(&f));
    tags.insert("refund_risk", refund_risk(&f));
    tags.insert("low_credit", low_credit(&f));
    tags.insert("shared_device", shared_device(&f));
    let blacklist = marketing_blacklist(&tags["refund_risk"], &tags["low_credit"], &tags["shared_device"]);
    tags.insert("marketing_blacklist", blacklist);
    tags.insert("preferred_channel", preferred_channel(&f));
    tags.insert("active_hour", active_hour(&f));
    let (churn, expected_orders) = predictive(&f);
    tags.insert("churn_risk", churn);
    tags.insert("expected_orders_90", expected_orders);
    tags.insert("opted_out", opted_out(&f));
    tags.insert("over_contacted", over_contacted(&f));
    let dnc = do_not_contact(&[
        &tags["marketing_blacklist"],
        &tags["opted_out"],
        &tags["over_contacted"],
    ]);
    tags.insert("do_not_contact", dnc);
    tags
}

/// 1. rfm_tier, for every customer.
fn rfm_tier(f: &Facts) -> TagTable {
    let mut buying: Vec<f64> = f
        .measures
        .values()
        .filter(|m| m.orders_365 >= 1)
        .map(|m| m.monetary_365)
        .collect();
    buying.sort_by(f64::total_cmp);
    let n = buying.len();
    // nearest rank: 1-based position ceil(0.8 n), in integers
    let m80 = (n > 0).then(|| buying[(80 * n).div_ceil(100) - 1]);
    let near_m80 = |m: f64| m80.is_some_and(|t| (m - t).abs() <= 1e-9 * t.abs().max(1.0));
    let ambiguous = buying.iter().filter(|&&m| near_m80(m)).count() > 1;

    let tier = |high_f: bool, high_m: bool| match (high_f, high_m) {
        (true, true) => "champion",
        (true, false) => "devoted",
        (false, true) => "big_spender",
        (false, false) => "casual",
    };
    let mut out = TagTable::new();
    for (&customer, m) in &f.measures {
        let row = if m.orders_all == 0 {
            Expected::new("behaviour", "prospect", Some(0.0))
        } else {
            let high_f = m.orders_365 >= 3;
            let high_m = m80.is_some_and(|t| m.monetary_365 >= t);
            let mut row = Expected::new("behaviour", tier(high_f, high_m), Some(m.monetary_365));
            if ambiguous && near_m80(m.monetary_365) {
                row.also_ok = Some(tier(high_f, !high_m).to_string());
            }
            row
        };
        out.insert(customer.to_string(), row);
    }
    out
}

/// 2. lifecycle, for every customer.
fn lifecycle(f: &Facts) -> TagTable {
    let mut out = TagTable::new();
    for (&customer, m) in &f.measures {
        let (first, last) = (day_of(m.first_seen), day_of(m.last_seen));
        let value = if f.at.in_last(30, first) {
            "new"
        } else if f.at.in_last(30, last) {
            "active"
        } else if f.at.in_last(90, last) {
            "dormant"
        } else {
            "churned"
        };
        let score = (f.at.day - last) as f64;
        out.insert(customer.to_string(), Expected::new("behaviour", value, Some(score)));
    }
    out
}

/// 3. aipl_stage, for every customer.
fn aipl_stage(f: &Facts) -> TagTable {
    let mut out = TagTable::new();
    for (&customer, m) in &f.measures {
        let value = if m.orders_365 >= 2 {
            "loyalty"
        } else if m.orders_365 == 1 {
            "purchase"
        } else if m.product_views_30 >= 3 || m.cart_adds_30 >= 1 {
            "interest"
        } else {
            "awareness"
        };
        out.insert(customer.to_string(), Expected::new("behaviour", value, None));
    }
    out
}

/// 4. repurchaser: paid orders of the last 365 days in ≥ 3 distinct UTC months.
fn repurchaser(f: &Facts) -> TagTable {
    let mut months: BTreeMap<&str, BTreeSet<(i32, u32)>> = BTreeMap::new();
    for p in f.paid_in_last(365) {
        months.entry(p.customer).or_default().insert(year_month(p.time));
    }
    months
        .into_iter()
        .filter(|(_, m)| m.len() >= 3)
        .map(|(customer, m)| (customer.to_string(), Expected::flag("behaviour", Some(m.len() as f64))))
        .collect()
}

/// 5. brand_enthusiast: the top brand of the last 365 days, if it has ≥ 0.6 of the orders.
fn brand_enthusiast(f: &Facts) -> TagTable {
    let mut per_brand: BTreeMap<&str, BTreeMap<&str, u32>> = BTreeMap::new();
    for p in f.paid_in_last(365) {
        if let Some(brand) = p.brand {
            *per_brand.entry(p.customer).or_default().entry(brand).or_default() += 1;
        }
    }
    let mut out = TagTable::new();
    for (customer, counts) in per_brand {
        let orders = f.orders_365(customer);
        if orders < 3 {
            continue;
        }
        if let Some((brand, count)) = top(&counts) {
            if count as f64 >= 0.6 * orders as f64 {
                let share = count as f64 / orders as f64;
                out.insert(customer.to_string(), Expected::new("behaviour", brand, Some(share)));
            }
        }
    }
    out
}

/// The key with the largest count; ties: the smallest key by byte order.
fn top<'k>(counts: &BTreeMap<&'k str, u32>) -> Option<(&'k str, u32)> {
    let mut best: Option<(&str, u32)> = None;
    // ascending keys, strictly larger counts only: the first of equal counts stays
    for (&key, &count) in counts {
        if best.is_none_or(|(_, c)| count > c) {
            best = Some((key, count));
        }
    }
    best
}

/// 6. category_intent: views + 3 × adds per category over 7 days, bought categories left out.
fn category_intent(f: &Facts) -> TagTable {
    let mut points: BTreeMap<&str, BTreeMap<&str, u32>> = BTreeMap::new();
    for c in &f.ev.clicks {
        if let (Some("product"), Some(category)) = (c.page_type.as_deref(), c.category.as_deref()) {
            if f.at.in_last(7, c.day) {
                *points
                    .entry(c.customer.as_str())
                    .or_default()
                    .entry(category)
                    .or_default() += 1;
            }
        }
    }
    for c in &f.ev.carts {
        if let (Some("add"), Some(category)) = (c.action.as_deref(), c.category.as_deref()) {
            if f.at.in_last(7, c.day) {
                *points
                    .entry(c.customer.as_str())
                    .or_default()
                    .entry(category)
                    .or_default() += 3;
            }
        }
    }
    let bought: BTreeSet<(&str, &str)> = f
        .paid_in_last(7)
        .filter_map(|p| p.category.map(|c| (p.customer, c)))
        .collect();
    let mut out = TagTable::new();
    for (customer, mut scores) in points {
        scores.retain(|category, _| !bought.contains(&(customer, *category)));
        if let Some((category, s)) = top(&scores) {
            if s >= 5 {
                out.insert(customer.to_string(), Expected::new("intent", category, Some(s as f64)));
            }
        }
    }
    out
}

/// 7. cart_abandoner: latest add in the last 3 days and no placed/paid order since.
fn cart_abandoner(f: &Facts) -> TagTable {
    let mut latest_add: BTreeMap<&str, i64> = BTreeMap::new();
    let mut value_3: BTreeMap<&str, f64> = BTreeMap::new();
    for c in f.ev.carts.iter().filter(|c| c.action.as_deref() == Some("add")) {
        let latest = latest_add.entry(c.customer.as_str()).or_insert(c.time);
        *latest = (*latest).max(c.time);
        if f.at.in_last(3, c.day) {
            let quantity = f64::from(c.quantity.expect("quantity is required"));
            *value_3.entry(c.customer.as_str()).or_default() += quantity * c.unit_price.unwrap_or(0.0);
        }
    }
    let mut ordering: BTreeMap<&str, Vec<i64>> = BTreeMap::new();
    for o in f.ev.orders.iter().filter(|o| status_is(o, &["placed", "paid"])) {
        ordering.entry(o.customer.as_str()).or_default().push(o.time);
    }
    let mut out = TagTable::new();
    for (customer, latest) in latest_add {
        if !f.at.in_last(3, day_of(latest)) {
            continue;
        }
        let ordered_since = ordering
            .get(customer)
            .is_some_and(|ts| ts.iter().any(|&t| latest <= t && t <= f.at.micros));
        if !ordered_since {
            let score = value_3.get(customer).copied().unwrap_or(0.0);
            out.insert(customer.to_string(), Expected::flag("intent", Some(score)));
        }
    }
    out
}

/// 8. promo_sensitive: ≥ 2 orders in 365 days, at least half of them discounted.
fn promo_sensitive(f: &Facts) -> TagTable {
    let mut discounted: BTreeMap<&str, u32> = BTreeMap::new();
    for p in f.paid_in_last(365) {
        let entry = discounted.entry(p.customer).or_default();
        if p.discount.is_some_and(|d| d > 0.0) {
            *entry += 1;
        }
    }
    let mut out = TagTable::new();
    for (customer, with_discount) in discounted {
        let orders = f.orders_365(customer);
        if orders < 2 {
            continue;
        }
        let share = with_discount as f64 / orders as f64;
        if share >= 0.5 {
            out.insert(customer.to_string(), Expected::flag("intent", Some(share)));
        }
    }
    out
}

/// 9. refund_risk: ≥ 2 refunds in 365 days and refunds / max(orders_365, 1) ≥ 0.3.
fn refund_risk(f: &Facts) -> TagTable {
    let mut count: BTreeMap<&str, u32> = BTreeMap::new();
    for r in f.refunds.iter().filter(|r| f.at.in_last(365, r.day)) {
        *count.entry(r.customer).or_default() += 1;
    }
    let mut out = TagTable::new();
    for (customer, refunds) in count {
        let ratio = refunds as f64 / f.orders_365(customer).max(1) as f64;
        if refunds >= 2 && ratio >= 0.3 {
            out.insert(customer.to_string(), Expected::flag("risk", Some(ratio)));
        }
    }
    out
}

/// 10. low_credit: ≥ 3 cancelled/payment_failed order events in 30 days.
fn low_credit(f: &Facts) -> TagTable {
    let mut count: BTreeMap<&str, u32> = BTreeMap::new();
    for o in &f.ev.orders {
        if status_is(o, &["cancelled", "payment_failed"]) && f.at.in_last(30, o.day) {
            *count.entry(o.customer.as_str()).or_default() += 1;
        }
    }
    count
        .into_iter()
        .filter(|(_, n)| *n >= 3)
        .map(|(customer, n)| (customer.to_string(), Expected::flag("risk", Some(n as f64))))
        .collect()
}

/// 11. shared_device: a device of the last 30 days used by ≥ 5 customers in those days.
fn shared_device(f: &Facts) -> TagTable {
    let mut users: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    let mut devices: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for (customer, day, device) in f.ev.device_uses() {
        if f.at.in_last(30, day) {
            users.entry(device).or_default().insert(customer);
            devices.entry(customer).or_default().insert(device);
        }
    }
    let mut out = TagTable::new();
    for (customer, own) in devices {
        let most = own.iter().map(|d| users[d].len()).max().unwrap_or(0);
        if most >= 5 {
            out.insert(customer.to_string(), Expected::flag("risk", Some(most as f64)));
        }
    }
    out
}

/// 12. marketing_blacklist: the union of the risk tags.
fn marketing_blacklist(refund_risk: &TagTable, low_credit: &TagTable, shared_device: &TagTable) -> TagTable {
    refund_risk
        .keys()
        .chain(low_credit.keys())
        .chain(shared_device.keys())
        .map(|customer| (customer.clone(), Expected::flag("risk", None)))
        .collect()
}

/// 13. preferred_channel: over ≥ 5 clicks of the last 30 days with a channel, the top channel.
fn preferred_channel(f: &Facts) -> TagTable {
    let mut clicks: BTreeMap<&str, BTreeMap<&str, u32>> = BTreeMap::new();
    for c in f.ev.clicks.iter().filter(|c| f.at.in_last(30, c.day)) {
        if let Some(channel) = c.channel.as_deref() {
            *clicks
                .entry(c.customer.as_str())
                .or_default()
                .entry(channel)
                .or_default() += 1;
        }
    }
    let mut out = TagTable::new();
    for (customer, counts) in clicks {
        let total: u32 = counts.values().sum();
        if let (true, Some((channel, n))) = (total >= 5, top(&counts)) {
            out.insert(
                customer.to_string(),
                Expected::new("behaviour", channel, Some(n as f64 / total as f64)),
            );
        }
    }
    out
}

/// 14. active_hour: over ≥ 5 behaviour events of the last 30 days, the top UTC hour.
fn active_hour(f: &Facts) -> TagTable {
    const MICROS_PER_HOUR: i64 = 3_600_000_000;
    let mut hours: BTreeMap<&str, BTreeMap<String, u32>> = BTreeMap::new();
    for (customer, time) in f.ev.times().filter(|(_, t)| f.at.in_last(30, day_of(*t))) {
        let hour = time.rem_euclid(MICROS_PER_DAY) / MICROS_PER_HOUR;
        *hours
            .entry(customer)
            .or_default()
            .entry(format!("{hour:02}"))
            .or_default() += 1;
    }
    let mut out = TagTable::new();
    for (customer, counts) in hours {
        let total: u32 = counts.values().sum();
        let counts: BTreeMap<&str, u32> = counts.iter().map(|(h, n)| (h.as_str(), *n)).collect();
        if let (true, Some((hour, n))) = (total >= 5, top(&counts)) {
            out.insert(
                customer.to_string(),
                Expected::new("behaviour", hour, Some(n as f64 / total as f64)),
            );
        }
    }
    out
}

/// 15 and 16. churn_risk and expected_orders_90: BG/NBD over the paid orders paid before D.
fn predictive(f: &Facts) -> (TagTable, TagTable) {
    use tagflow::jobs::bgnbd::{fit, Summary};
    const TOLERANCE: f64 = 1e-4;
    let mut paid_days: BTreeMap<&str, BTreeSet<i64>> = BTreeMap::new();
    for p in f.paid.iter().filter(|p| p.day < f.at.day) {
        paid_days.entry(p.customer).or_default().insert(p.day);
    }
    let summaries: BTreeMap<&str, (f64, f64, f64)> = paid_days
        .iter()
        .map(|(customer, days)| {
            let (first, last) = (days.first().expect("a day"), days.last().expect("a day"));
            let x = (days.len() - 1) as f64;
            (*customer, (x, (last - first) as f64, (f.at.day - first) as f64))
        })
        .collect();
    let (mut churn, mut expected) = (TagTable::new(), TagTable::new());
    if summaries.len() < 100 {
        return (churn, expected);
    }
    let input: Vec<Summary> = summaries
        .values()
        .map(|&(x, t_x, t)| Summary { x, t_x, t, weight: 1.0 })
        .collect();
    let model = fit(&input);
    assert!(
        model.converged,
        "the reference fit did not converge: {model:?} over {} customers",
        input.len()
    );
    let (r, alpha, a, b) = (model.params.r, model.params.alpha, model.params.a, model.params.b);
    // Written from the paper, apart from the pipeline's model code.
    let p_alive = |x: f64, t_x: f64, t: f64| match x > 0.0 {
        true => 1.0 / (1.0 + a / (b + x - 1.0) * ((alpha + t) / (alpha + t_x)).powf(r + x)),
        false => 1.0,
    };
    let e90 = |x: f64, t_x: f64, t: f64| {
        let z = 90.0 / (alpha + t + 90.0);
        let (ha, hb, hc) = (r + x, b + x, a + b + x - 1.0);
        let (mut term, mut sum, mut k) = (1.0_f64, 1.0_f64, 0.0);
        while term.abs() > 1e-17 * sum {
            term *= (ha + k) * (hb + k) / ((hc + k) * (k + 1.0)) * z;
            sum += term;
            k += 1.0;
        }
        let bracket = 1.0 - ((alpha + t) / (alpha + t + 90.0)).powf(r + x) * sum;
        // eq. 10's denominator, 1 + [x > 0] a/(b+x-1) ((α+T)/(α+t_x))^(r+x), is 1 / p_alive
        (a + b + x - 1.0) / (a - 1.0) * bracket * p_alive(x, t_x, t)
    };
    let banded = |score: f64, edges: [(f64, &'static str); 2], last: &'static str| {
        let band = |s: f64| edges.iter().find(|(edge, _)| s >= *edge).map_or(last, |(_, name)| name);
        let mut row = Expected::new("predictive", band(score), Some(score));
        row.tolerance = Some(TOLERANCE);
        let (low, high) = (band(score - TOLERANCE), band(score + TOLERANCE));
        row.also_ok = [low, high].into_iter().find(|b| *b != row.value).map(str::to_string);
        row
    };
    for (customer, &(x, t_x, t)) in &summaries {
        let p = p_alive(x, t_x, t);
        churn.insert(
            customer.to_string(),
            banded(p, [(0.7, "likely_active"), (0.3, "at_risk")], "likely_lost"),
        );
        expected.insert(
            customer.to_string(),
            banded(e90(x, t_x, t), [(1.0, "high"), (0.3, "medium")], "low"),
        );
    }
    (churn, expected)
}

/// 17. opted_out: the latest consent for all channels (ties: the largest event_id) withdrew.
fn opted_out(f: &Facts) -> TagTable {
    let mut latest: BTreeMap<&str, &ConsentEvent> = BTreeMap::new();
    for c in f.ev.consents.iter().filter(|c| c.channel == "all") {
        let entry = latest.entry(c.customer.as_str()).or_insert(c);
        if (c.time, &c.event_id) > (entry.time, &entry.event_id) {
            *entry = c;
        }
    }
    latest
        .into_iter()
        .filter(|(_, c)| c.withdrawn)
        .map(|(customer, _)| (customer.to_string(), Expected::flag("compliance", None)))
        .collect()
}

/// 18. over_contacted: ≥ 3 sent touches in the last 7 days.
fn over_contacted(f: &Facts) -> TagTable {
    let mut sent: BTreeMap<&str, u32> = BTreeMap::new();
    for t in f.ev.touches.iter().filter(|t| t.sent && f.at.in_last(7, t.day)) {
        *sent.entry(t.customer.as_str()).or_default() += 1;
    }
    sent.into_iter()
        .filter(|(_, n)| *n >= 3)
        .map(|(customer, n)| (customer.to_string(), Expected::flag("compliance", Some(n as f64))))
        .collect()
}

/// 19. do_not_contact: the union of marketing_blacklist, opted_out and over_contacted.
fn do_not_contact(tags: &[&TagTable]) -> TagTable {
    tags.iter()
        .flat_map(|t| t.keys())
        .map(|customer| (customer.clone(), Expected::flag("compliance", None)))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Task results
// ---------------------------------------------------------------------------------------------

/// One task's row of `task_results` as the spec defines it.
#[derive(Debug, Default)]
struct TaskExpected {
    task_type: Option<String>,
    first_sent_at: i64,
    first_event_id: String,
    sent: i64,
    replied: i64,
    ordered: i64,
    orders: i64,
    order_amount: f64,
    paid_orders: i64,
    paid_amount: f64,
}

/// task_results: per task with a sent touch, its customers' first sends `s`, replies at or
/// after `s`, and the orders whose earliest event falls in (s, s + 7 days].
fn reference_tasks(ev: &Events) -> BTreeMap<String, TaskExpected> {
    const ATTRIBUTION: i64 = 7 * MICROS_PER_DAY;
    // (task, customer) -> first send; (task, customer) -> reply times
    let mut first_send: BTreeMap<(&str, &str), i64> = BTreeMap::new();
    let mut replies: BTreeMap<(&str, &str), Vec<i64>> = BTreeMap::new();
    let mut tasks: BTreeMap<String, TaskExpected> = BTreeMap::new();
    for t in &ev.touches {
        let key = (t.task_id.as_str(), t.customer.as_str());
        if !t.sent {
            replies.entry(key).or_default().push(t.time);
            continue;
        }
        let s = first_send.entry(key).or_insert(t.time);
        *s = (*s).min(t.time);
        let task = tasks.entry(t.task_id.clone()).or_insert_with(|| TaskExpected {
            first_sent_at: i64::MAX,
            ..Default::default()
        });
        if (t.time, &t.event_id) < (task.first_sent_at, &task.first_event_id) {
            (task.first_sent_at, task.first_event_id) = (t.time, t.event_id.clone());
            task.task_type = t.task_type.clone();
        }
    }
    let starts = earliest_per_order(ev.orders.iter());
    let paid: BTreeMap<&str, f64> = earliest_per_order(ev.orders.iter().filter(|o| status_is(o, &["paid"])))
        .into_iter()
        .map(|(order, o)| (order, o.amount.expect("amount is required")))
        .collect();
    let mut orders_of: BTreeMap<&str, Vec<(&str, &OrderEvent)>> = BTreeMap::new();
    for (order, o) in &starts {
        orders_of.entry(o.customer.as_str()).or_default().push((order, o));
    }
    for ((task, customer), s) in first_send {
        let row = tasks.get_mut(task).expect("a sent task");
        row.sent += 1;
        if replies
            .get(&(task, customer))
            .is_some_and(|r| r.iter().any(|&t| t >= s))
        {
            row.replied += 1;
        }
        let attributed: Vec<&(&str, &OrderEvent)> = orders_of
            .get(customer)
            .map(|os| {
                os.iter()
                    .filter(|(_, o)| o.time > s && o.time <= s + ATTRIBUTION)
                    .collect()
            })
            .unwrap_or_default();
        row.ordered += i64::from(!attributed.is_empty());
        for (order, o) in attributed {
            row.orders += 1;
            row.order_amount += o.amount.expect("amount is required");
            if let Some(amount) = paid.get(order) {
                row.paid_orders += 1;
                row.paid_amount += amount;
            }
        }
    }
    tasks
}

/// One line per task whose published row differs from the expected one.
fn compare_tasks(
    expected: &BTreeMap<String, TaskExpected>,
    published: &[tagflow::publish::tasks::TaskResult],
) -> Vec<String> {
    let mut lines = Vec::new();
    let got: BTreeMap<&str, &tagflow::publish::tasks::TaskResult> =
        published.iter().map(|t| (t.task_id.as_str(), t)).collect();
    for (task, e) in expected {
        let Some(g) = got.get(task.as_str()) else {
            lines.push(format!("{task}: expected a row, published none"));
            continue;
        };
        let first = DateTime::parse_from_rfc3339(&g.first_sent_at).map(|t| t.timestamp_micros());
        let f = &g.figures;
        let same = g.task_type == e.task_type
            && first == Ok(e.first_sent_at)
            && (f.sent, f.replied, f.ordered, f.orders, f.paid_orders)
                == (e.sent, e.replied, e.ordered, e.orders, e.paid_orders)
            && same_score(Some(e.order_amount), Some(f.order_amount))
            && same_score(Some(e.paid_amount), Some(f.paid_amount))
            && same_score(Some(e.ordered as f64 / e.sent as f64), Some(f.order_rate));
        if !same {
            lines.push(format!("{task}: expected {e:?}, published {g:?}"));
        }
    }
    for task in got.keys().filter(|t| !expected.contains_key(**t)) {
        lines.push(format!("{task}: published a row the spec does not have"));
    }
    lines.truncate(SHOWN_PER_TAG);
    lines
}

// ---------------------------------------------------------------------------------------------
// Comparison
// ---------------------------------------------------------------------------------------------

fn same_score(expected: Option<f64>, got: Option<f64>) -> bool {
    match (expected, got) {
        (None, None) => true,
        (Some(e), Some(g)) => (g - e).abs() <= 1e-9 * e.abs().max(1.0),
        _ => false,
    }
}

fn show_score(score: Option<f64>) -> String {
    score.map_or_else(|| "null".to_string(), |s| s.to_string())
}

fn show_expected(row: Option<&Expected>) -> String {
    match row {
        None => "no row".to_string(),
        Some(e) => {
            let alt = e.also_ok.as_ref().map(|a| format!(" (or {a})")).unwrap_or_default();
            format!("{}{alt} score {} [{}]", e.value, show_score(e.score), e.family)
        }
    }
}

fn show_published(rows: &[&TagRow]) -> String {
    if rows.is_empty() {
        return "no row".to_string();
    }
    rows.iter()
        .map(|r| format!("{} score {} [{}]", r.value, show_score(r.score), r.family))
        .collect::<Vec<_>>()
        .join(" AND ")
}

/// `None` when the published rows are exactly the expected ones; otherwise a per-tag summary
/// and the first differing rows of each tag.
fn compare(expected: &BTreeMap<&'static str, TagTable>, published: &Tags) -> Option<String> {
    let mut got: BTreeMap<&str, BTreeMap<&str, Vec<&TagRow>>> = BTreeMap::new();
    for row in &published.rows {
        got.entry(row.tag.as_str())
            .or_default()
            .entry(row.customer_id.as_str())
            .or_default()
            .push(row);
    }
    let tags: BTreeSet<&str> = expected.keys().copied().chain(got.keys().copied()).collect();
    let no_rows = TagTable::new();
    let no_published = BTreeMap::new();

    let (mut summary, mut details, mut differing_total) = (String::new(), String::new(), 0usize);
    for tag in tags {
        let exp = expected.get(tag).unwrap_or(&no_rows);
        let pubd = got.get(tag).unwrap_or(&no_published);
        let customers: BTreeSet<&str> = exp.keys().map(String::as_str).chain(pubd.keys().copied()).collect();
        let mut differing = Vec::new();
        for customer in customers {
            let e = exp.get(customer);
            let g: &[&TagRow] = pubd.get(customer).map(Vec::as_slice).unwrap_or(&[]);
            let same = match (e, g) {
                (Some(e), [g]) => e.accepts(g),
                (None, []) => true,
                _ => false,
            };
            if !same {
                differing.push(format!(
                    "    {customer}: expected {}, got {}",
                    show_expected(e),
                    show_published(g)
                ));
            }
        }
        let published_rows: usize = pubd.values().map(Vec::len).sum();
        let _ = writeln!(
            summary,
            "  {tag:<20} expected {:>5}  published {:>5}  differing {:>5}",
            exp.len(),
            published_rows,
            differing.len()
        );
        if !differing.is_empty() {
            differing_total += differing.len();
            let _ = writeln!(details, "  {tag}: {} differing rows", differing.len());
            for line in differing.iter().take(SHOWN_PER_TAG) {
                let _ = writeln!(details, "{line}");
            }
            if differing.len() > SHOWN_PER_TAG {
                let _ = writeln!(details, "    ... and {} more", differing.len() - SHOWN_PER_TAG);
            }
        }
    }
    (differing_total > 0).then(|| format!("{summary}{details}"))
}
