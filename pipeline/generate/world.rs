//! The simulated world: dates, time, random streams

use super::*;

pub(super) struct World {
    pub(super) seed: u64,
    pub(super) customers: usize,
    pub(super) days: u32,
    /// Index of `end` (days are numbered from the first day, 0).
    pub(super) last: u32,
    pub(super) day0_ms: i64,
    /// Latest allowed event time: `end` 23:59:59.000.
    pub(super) end_ms: i64,
    /// Midnight of 1999-07-01, for bad rows.
    pub(super) year_1999_ms: i64,
    /// `YYYY-MM-DD` of every day.
    pub(super) dates: Vec<String>,
}

impl World {
    pub(super) fn new(opts: &GenerateOptions) -> Result<Self, GenerateError> {
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

    pub(super) fn day_start_ms(&self, day: u32) -> i64 {
        self.day0_ms + i64::from(day) * DAY_MS
    }

    /// Day index of a time between the first day and `end`.
    pub(super) fn day_of(&self, ms: i64) -> usize {
        ((ms - self.day0_ms) / DAY_MS) as usize
    }

    /// First day of the window "the last `n` days" as of `end`.
    pub(super) fn window_start(&self, n: u32) -> u32 {
        self.last.saturating_sub(n - 1)
    }

    /// A random stream for one purpose.
    pub(super) fn rng(&self, salt: u64) -> ChaCha8Rng {
        ChaCha8Rng::seed_from_u64(mix64(self.seed ^ mix64(salt)))
    }

    /// A random stream for one purpose and one customer: customers do not shift each other.
    pub(super) fn customer_rng(&self, customer: u32, salt: u64) -> ChaCha8Rng {
        ChaCha8Rng::seed_from_u64(mix64(self.seed ^ mix64(mix64(salt) ^ u64::from(customer))))
    }
}

pub(super) fn date(year: i32, month: u32, day: u32) -> NaiveDate {
    NaiveDate::from_ymd_opt(year, month, day).expect("valid constant date")
}

/// SplitMix64 finaliser: a bijection on u64, so distinct inputs give distinct ids.
pub(super) fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

pub(super) fn unit_interval(hash: u64) -> f64 {
    (hash >> 11) as f64 / (1u64 << 53) as f64
}

/// Uniform integer in `lo..=hi` (`lo` if the range is empty).
pub(super) fn between(rng: &mut ChaCha8Rng, lo: u32, hi: u32) -> u32 {
    if hi <= lo {
        lo
    } else {
        rng.random_range(lo..=hi)
    }
}

pub(super) fn uniform(rng: &mut ChaCha8Rng, (lo, hi): (f64, f64)) -> f64 {
    rng.random_range(lo..hi)
}

/// Index drawn with the given weights.
pub(super) fn weighted(rng: &mut ChaCha8Rng, weights: &[u32]) -> usize {
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
pub(super) fn normal(rng: &mut ChaCha8Rng) -> f64 {
    let u1 = 1.0 - rng.random::<f64>();
    let u2 = rng.random::<f64>();
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

pub(super) fn poisson(rng: &mut ChaCha8Rng, mean: f64) -> u32 {
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
pub(super) fn truncated_exp_days(rng: &mut ChaCha8Rng, rate: f64, max: u32) -> u32 {
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
pub(super) fn gap_ms(rng: &mut ChaCha8Rng, min_s: f64, mean_extra_s: f64) -> i64 {
    let extra = (-mean_extra_s * (1.0 - rng.random::<f64>()).ln()).min(8.0 * mean_extra_s);
    ((min_s + extra) * 1000.0).round() as i64
}

pub(super) fn weighted_category(rng: &mut ChaCha8Rng) -> u8 {
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

pub(super) fn popular_brand(rng: &mut ChaCha8Rng, category: u8) -> u8 {
    let brands = CATEGORIES[usize::from(category)].brands;
    brands[weighted(rng, &BRAND_RANK_WEIGHTS[..brands.len()])]
}
