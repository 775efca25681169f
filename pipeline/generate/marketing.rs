//! Marketing contacts and consent: the catalog v2 streams `touches` and `consents`
//!
//! Every day each task type runs one task on its own channel (an auto-repurchase SMS, a
//! precision push, edge care over IM, a manual e-mail without a type) and sends it to an
//! audience: a few percent of the customers, and a small group that marketing contacts far
//! too often. Some orders follow a contact: a share of the placed orders get a send of a task
//! one to six days before them (the task worked), so the task table shows conversion; most
//! sends are followed by nothing. A share of the sends get a reply, mostly on IM. Some
//! customers leave consent records: granted for all channels, some later withdrawn (for all
//! or for SMS only), some granted again.
//!
//! Runs after the behaviour simulation and reads its placed orders; contacts never change
//! behaviour, so v1 data stays byte-identical.

use super::*;

/// Task types: (name, `task_type` value (`None`: null), channel, hour of the send).
pub(super) const TASK_TYPES: [(&str, Option<&str>, &str, i64); 4] = [
    ("repurchase", Some("repurchase"), "sms", 10),
    ("precision", Some("precision"), "push", 12),
    ("edge_care", Some("edge_care"), "im", 15),
    ("manual", None, "email", 19),
];
/// Share of the customers each task sends to.
const AUDIENCE_SHARE: f64 = 0.01;
/// Share of the customers marketing contacts too often, and the share of tasks reaching them.
const OVER_CONTACTED_SHARE: f64 = 0.02;
const OVER_CONTACTED_REACH: f64 = 0.25;
/// Share of placed orders preceded by a send (1-6 days before) that they are credited to.
const WORKED_SHARE: f64 = 0.3;
/// Share of the sends of each task type that get a reply.
const REPLY_SHARE: [f64; 4] = [0.03, 0.01, 0.2, 0.02];
/// Share of the customers with consent records, and of those that withdraw, re-grant, or
/// withdraw SMS only.
const CONSENT_SHARE: f64 = 0.1;
const WITHDRAW_SHARE: f64 = 0.4;
const REGRANT_SHARE: f64 = 0.3;
const SMS_ONLY_SHARE: f64 = 0.2;
pub(super) const CONSENT_CHANNELS: [&str; 2] = ["all", "sms"];
pub(super) const CONSENT_STATUSES: [&str; 2] = ["granted", "withdrawn"];
pub(super) const TOUCH_ACTIONS: [&str; 2] = ["sent", "replied"];
const SALT_TOUCHES: u64 = 0x746f_7563;
const SALT_CONSENTS: u64 = 0x636f_6e73;

#[derive(Clone, Copy, Debug)]
pub(super) struct Touch {
    pub(super) time: i64,
    pub(super) id: u64,
    pub(super) customer: u32,
    /// Day of the task's run (its id is the type and that day's date).
    pub(super) task_day: u32,
    pub(super) task_type: u8,
    pub(super) action: u8,
}

#[derive(Clone, Copy, Debug)]
pub(super) struct Consent {
    pub(super) time: i64,
    pub(super) id: u64,
    pub(super) customer: u32,
    pub(super) channel: u8,
    pub(super) status: u8,
}

/// The touches and consents of the world, bucketed by day of `event_time`.
pub(super) fn simulate_marketing(world: &World, orders: &[Vec<OrderEvent>]) -> (Vec<Vec<Touch>>, Vec<Vec<Consent>>) {
    let mut touches: Vec<Touch> = Vec::new();
    let mut rng = world.rng(SALT_TOUCHES);
    let customers = world.customers as u32;
    let regulars = ((f64::from(customers) * OVER_CONTACTED_SHARE) as u32).max(1);
    for day in 0..world.days {
        for (task_type, _) in TASK_TYPES.iter().enumerate() {
            let audience = (f64::from(customers) * AUDIENCE_SHARE).ceil() as u32;
            for _ in 0..audience {
                let customer = rng.random_range(0..customers);
                send(&mut touches, &mut rng, world, customer, day, task_type as u8);
            }
            // The over-contacted: the first customers' numbers, a quarter of the tasks each.
            for customer in 0..regulars {
                if rng.random_bool(OVER_CONTACTED_REACH) {
                    send(&mut touches, &mut rng, world, customer, day, task_type as u8);
                }
            }
        }
    }
    for order in orders.iter().flatten().filter(|o| o.status == STATUS_PLACED) {
        if !rng.random_bool(WORKED_SHARE) {
            continue;
        }
        let order_day = world.day_of(order.time) as u32;
        let before = between(&mut rng, 1, 6);
        if let Some(day) = order_day.checked_sub(before) {
            let task_type = rng.random_range(0..TASK_TYPES.len()) as u8;
            send(&mut touches, &mut rng, world, order.customer, day, task_type);
        }
    }
    (
        bucket(world, touches, |t| t.time),
        bucket(world, consents(world), |c| c.time),
    )
}

/// One send of the task of `task_type` on `day` to `customer`, and perhaps its reply.
fn send(touches: &mut Vec<Touch>, rng: &mut ChaCha8Rng, world: &World, customer: u32, day: u32, task_type: u8) {
    let hour = TASK_TYPES[usize::from(task_type)].3;
    let time = world.day_start_ms(day) + hour * HOUR_MS + rng.random_range(0..HOUR_MS);
    let touch = Touch {
        time,
        id: 0,
        customer,
        task_day: day,
        task_type,
        action: 0,
    };
    touches.push(touch);
    if rng.random_bool(REPLY_SHARE[usize::from(task_type)]) {
        let reply = time + rng.random_range(60_000..2 * DAY_MS);
        if reply <= world.end_ms {
            touches.push(Touch {
                time: reply,
                action: 1,
                ..touch
            });
        }
    }
}

/// Consent records: granted at a random time, perhaps withdrawn later (all channels or SMS
/// only), perhaps granted again.
fn consents(world: &World) -> Vec<Consent> {
    let mut rng = world.rng(SALT_CONSENTS);
    let mut out = Vec::new();
    let span = world.end_ms - world.day0_ms;
    for customer in 0..world.customers as u32 {
        if !rng.random_bool(CONSENT_SHARE) {
            continue;
        }
        let record = |time: i64, channel: u8, status: u8| Consent {
            time,
            id: 0,
            customer,
            channel,
            status,
        };
        let granted = world.day0_ms + rng.random_range(0..span);
        out.push(record(granted, 0, 0));
        if !rng.random_bool(WITHDRAW_SHARE) {
            continue;
        }
        let withdrawn = rng.random_range(granted..=world.end_ms);
        let channel = u8::from(rng.random_bool(SMS_ONLY_SHARE));
        out.push(record(withdrawn, channel, 1));
        if rng.random_bool(REGRANT_SHARE) {
            out.push(record(rng.random_range(withdrawn..=world.end_ms), channel, 0));
        }
    }
    out
}

/// Rows by day of their time, with event ids in time order.
fn bucket<R: EventRow>(world: &World, mut rows: Vec<R>, time: impl Fn(&R) -> i64) -> Vec<Vec<R>> {
    rows.sort_by_key(|r| (time(r), r.customer()));
    let mut buckets: Vec<Vec<R>> = (0..world.days).map(|_| Vec::new()).collect();
    for (n, mut row) in rows.into_iter().enumerate() {
        let at = time(&row);
        row.stamp(at, n as u64 + 1);
        buckets[world.day_of(at)].push(row);
    }
    buckets
}

impl EventRow for Touch {
    const STREAM: Stream = Stream::Touches;

    event_row_fields!();

    fn stream_columns(rows: &[Self], _bad: &BadRows, world: &World) -> Vec<Column> {
        let mut task_ids = StringBuilder::new();
        for r in rows {
            let (name, ..) = TASK_TYPES[usize::from(r.task_type)];
            let _ = write!(task_ids, "{name}-{}", world.dates[r.task_day as usize]);
            task_ids.append_value("");
        }
        let kind = |r: &Touch| TASK_TYPES[usize::from(r.task_type)];
        vec![
            Column::required("task_id", Arc::new(task_ids.finish())),
            Column::optional("task_type", strings(rows.iter().map(|r| kind(r).1))),
            Column::required(
                "action",
                strings(rows.iter().map(|r| Some(TOUCH_ACTIONS[usize::from(r.action)]))),
            ),
            Column::optional("channel", strings(rows.iter().map(|r| Some(kind(r).2)))),
        ]
    }
}

impl EventRow for Consent {
    const STREAM: Stream = Stream::Consents;

    event_row_fields!();

    fn stream_columns(rows: &[Self], _bad: &BadRows, _world: &World) -> Vec<Column> {
        vec![
            Column::required(
                "channel",
                strings(rows.iter().map(|r| Some(CONSENT_CHANNELS[usize::from(r.channel)]))),
            ),
            Column::required(
                "status",
                strings(rows.iter().map(|r| Some(CONSENT_STATUSES[usize::from(r.status)]))),
            ),
        ]
    }
}
