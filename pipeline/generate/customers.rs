//! Customers

use super::*;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Lifecycle {
    New,
    Active,
    Dormant,
    Churned,
}

/// Everything that makes one customer behave differently from another.
#[derive(Clone, Debug)]
pub(super) struct Profile {
    pub(super) lifecycle: Lifecycle,
    /// First and last day with a visit (day indexes); all own sessions fall in between.
    pub(super) start: u32,
    pub(super) stop: u32,
    /// Heavy-tailed raw activity; scaled into `sessions_per_day` by `calibrate_activity`.
    pub(super) activity_weight: f64,
    pub(super) sessions_per_day: f64,
    /// First favourite, second favourite (equal to the first for one-category customers).
    pub(super) favourites: [u8; 2],
    /// Preferred brand in each favourite category.
    pub(super) preferred_brands: [u8; 2],
    /// Strongly loyal to `preferred_brands[0]`.
    pub(super) loyal: bool,
    pub(super) price_tier: f64,
    pub(super) cart_prob: f64,
    pub(super) buy_prob: f64,
    pub(super) refund_prob: f64,
    pub(super) fail_prob: f64,
    pub(super) cancel_prob: f64,
    pub(super) promo_lover: bool,
    pub(super) abuser: bool,
    pub(super) big_ticket: bool,
    pub(super) low_credit: bool,
    pub(super) abandoner: bool,
    pub(super) devices: u8,
    pub(super) device_channels: [u8; 3],
    pub(super) addresses: u8,
    pub(super) payment: u8,
}

pub(super) fn draw_profile(world: &World, customer: u32) -> Profile {
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

pub(super) fn pick_lifecycle(rng: &mut ChaCha8Rng, last: u32) -> Lifecycle {
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
pub(super) fn lifecycle_span(rng: &mut ChaCha8Rng, lifecycle: Lifecycle, last: u32) -> (u32, u32) {
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
pub(super) fn expected_events_per_session(p: &Profile) -> f64 {
    let views = 1.0 / (1.0 - MORE_VIEWS_PROB);
    let clicks = 1.0 + views * (1.0 + NAV_PAGE_PROB);
    let adds = 1.0 + SECOND_ADD_PROB + THIRD_ADD_PROB;
    let carts = p.cart_prob * (adds + REMOVE_PROB);
    let orders = p.cart_prob * p.buy_prob;
    // checkout click + placed + outcome (+ refund)
    clicks + carts + orders * (3.0 + p.refund_prob)
}

/// Sessions every customer gets regardless of activity (first / last visit, archetypes).
pub(super) fn forced_sessions(p: &Profile) -> f64 {
    let mean = |(lo, hi): (u32, u32)| f64::from(lo + hi) / 2.0;
    1.0 + f64::from(u8::from(p.stop > p.start))
        + f64::from(u8::from(p.abandoner))
        + if p.low_credit { mean(LOW_CREDIT_ATTEMPTS) } else { 0.0 }
        + if p.abuser { mean(ABUSER_PURCHASES) } else { 0.0 }
        + f64::from(u8::from(p.big_ticket))
}

/// Scale the heavy-tailed activity weights so that the total volume is about
/// `EVENTS_PER_CUSTOMER_DAY * customers * days`.
pub(super) fn calibrate_activity(world: &World, profiles: &mut [Profile]) {
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
pub(super) fn settle_last_visits(world: &World, profiles: &mut [Profile]) {
    for (customer, p) in profiles.iter_mut().enumerate() {
        if matches!(p.lifecycle, Lifecycle::New | Lifecycle::Active) {
            let rng = &mut world.customer_rng(customer as u32, SALT_SETTLE);
            let max_gap = (RECENT_DAYS - 1).min(world.last - p.start);
            p.stop = world.last - truncated_exp_days(rng, p.sessions_per_day, max_gap);
        }
    }
}

/// Shared devices: customer -> (day, device) visits made on a device shared with others.
pub(super) fn assign_shared_devices(world: &World, profiles: &[Profile]) -> BTreeMap<u32, Vec<(u32, u32)>> {
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
