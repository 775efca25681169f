//! What the BG/NBD fit behind `churn_risk` and `expected_orders_90` costs at size: buyers
//! drawn from a BG/NBD process (days as the unit, two years of history), their summaries
//! grouped into patterns as `sql/predictive/purchase_model.sql` does, then the fit through the
//! registered SQL aggregate (`bgnbd_fit`), a second call with the same input (the remembered
//! fit every micro-batch of a day meets), and the two predictions for every buyer through the
//! registered scalar functions. Prints, per size: patterns, fit time and cost evaluations,
//! the remembered call, predictions per second, and the process's peak RSS.
//!
//! `cargo bench --bench predictive`; `TAGFLOW_BENCH_SIZES=100000,1000000` (the default) sets
//! the buyers.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use arrow::array::{Float64Array, RecordBatch};
use arrow::datatypes::{DataType, Field, Schema};
use datafusion::catalog::MemTable;
use datafusion::prelude::SessionContext;
mod common;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Days of history the buyers' first purchases spread over.
const HISTORY_DAYS: u32 = 730;

/// A purchase pattern (x, t_x, t in days) and its customers.
type Pattern = ((u32, u32, u32), u64);

fn main() {
    let sizes = common::sizes();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    println!(
        "{:>9} {:>9} {:>9} {:>11} {:>12} {:>14} {:>16} {:>10}",
        "buyers", "patterns", "group ms", "fit ms", "evaluations", "remembered ms", "predictions/s", "peak MiB"
    );
    for buyers in sizes {
        runtime.block_on(measure(buyers));
    }
}

async fn measure(buyers: usize) {
    let summaries = draw_buyers(buyers, 20_261_204);
    let started = Instant::now();
    let mut patterns: HashMap<(u32, u32, u32), u64> = HashMap::new();
    for &s in &summaries {
        *patterns.entry(s).or_default() += 1;
    }
    let group_ms = started.elapsed().as_secs_f64() * 1e3;

    let ctx = SessionContext::new();
    tagflow::jobs::functions::register(&ctx);
    let column = |values: Vec<f64>| Arc::new(Float64Array::from(values)) as _;
    let table = |names: &[&str], columns: Vec<Vec<f64>>| {
        let schema = Arc::new(Schema::new(
            names
                .iter()
                .map(|n| Field::new(*n, DataType::Float64, false))
                .collect::<Vec<_>>(),
        ));
        let batch = RecordBatch::try_new(schema.clone(), columns.into_iter().map(column).collect()).unwrap();
        Arc::new(MemTable::try_new(schema, vec![vec![batch]]).unwrap())
    };
    let pick = |f: fn(&Pattern) -> f64| patterns.iter().map(|(k, v)| f(&(*k, *v))).collect::<Vec<f64>>();
    ctx.register_table(
        "patterns",
        table(
            &["x", "t_x", "t_c", "customers"],
            vec![
                pick(|p| f64::from(p.0 .0)),
                pick(|p| f64::from(p.0 .1)),
                pick(|p| f64::from(p.0 .2)),
                pick(|p| p.1 as f64),
            ],
        ),
    )
    .unwrap();
    let fit_sql = "SELECT m['r'] AS r, m['alpha'] AS alpha, m['a'] AS a, m['b'] AS b, m['converged'] AS converged \
                   FROM (SELECT bgnbd_fit(x, t_x, t_c, customers) AS m FROM patterns)";
    let started = Instant::now();
    let fitted = ctx.sql(fit_sql).await.unwrap().collect().await.unwrap();
    let fit_ms = started.elapsed().as_secs_f64() * 1e3;
    let started = Instant::now();
    ctx.sql(fit_sql).await.unwrap().collect().await.unwrap();
    let remembered_ms = started.elapsed().as_secs_f64() * 1e3;
    // The evaluations of that fit: fitting the same patterns directly counts them.
    let direct: Vec<tagflow::jobs::bgnbd::Summary> = patterns
        .iter()
        .map(|(&(x, t_x, t), &n)| tagflow::jobs::bgnbd::Summary {
            x: f64::from(x),
            t_x: f64::from(t_x),
            t: f64::from(t),
            weight: n as f64,
        })
        .collect();
    let evaluations = tagflow::jobs::bgnbd::fit(&direct).evaluations;
    let param = |name: &str| {
        fitted[0]
            .column_by_name(name)
            .unwrap()
            .as_any()
            .downcast_ref::<Float64Array>()
            .unwrap()
            .value(0)
    };
    let (r, alpha, a, b) = (param("r"), param("alpha"), param("a"), param("b"));

    ctx.register_table(
        "buyers",
        table(
            &["x", "t_x", "t_c"],
            vec![
                summaries.iter().map(|s| f64::from(s.0)).collect(),
                summaries.iter().map(|s| f64::from(s.1)).collect(),
                summaries.iter().map(|s| f64::from(s.2)).collect(),
            ],
        ),
    )
    .unwrap();
    let predict_sql = format!(
        "SELECT SUM(bgnbd_p_alive({r}, {alpha}, {a}, {b}, x, t_x, t_c)) AS alive, \
                SUM(bgnbd_expected({r}, {alpha}, {a}, {b}, x, t_x, t_c, 90)) AS expected FROM buyers"
    );
    let started = Instant::now();
    ctx.sql(&predict_sql).await.unwrap().collect().await.unwrap();
    let per_second = buyers as f64 / started.elapsed().as_secs_f64();
    println!(
        "{buyers:>9} {:>9} {group_ms:>9.0} {fit_ms:>11.0} {evaluations:>12} {remembered_ms:>14.1} {per_second:>16.0} {:>10}",
        patterns.len(),
        peak_rss_mib()
    );
    println!("          fit: r = {r:.4}, alpha = {alpha:.3}, a = {a:.4}, b = {b:.4}");
}

/// (x, t_x, T) in whole days of `buyers` customers drawn from a BG/NBD process.
fn draw_buyers(buyers: usize, seed: u64) -> Vec<(u32, u32, u32)> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let (r, alpha, a, b) = (0.6_f64, 25.0_f64, 0.7_f64, 2.5_f64);
    (0..buyers)
        .map(|_| {
            let rate = gamma(&mut rng, r) / alpha;
            let dropout = beta(&mut rng, a, b);
            let first = rng.random_range(1..=HISTORY_DAYS);
            let (mut t, mut days) = (0.0_f64, std::collections::BTreeSet::from([0_u32]));
            loop {
                t += -rng.random::<f64>().ln() / rate;
                if t >= f64::from(first) {
                    break;
                }
                days.insert(t as u32);
                if rng.random::<f64>() < dropout {
                    break;
                }
            }
            let t_x = *days.last().expect("the first purchase");
            (days.len() as u32 - 1, t_x, first)
        })
        .collect()
}

/// A Gamma(shape, 1) draw (Marsaglia and Tsang; shape < 1 by the boost `U^(1/shape)`).
fn gamma(rng: &mut ChaCha8Rng, shape: f64) -> f64 {
    if shape < 1.0 {
        return gamma(rng, shape + 1.0) * rng.random::<f64>().powf(1.0 / shape);
    }
    let d = shape - 1.0 / 3.0;
    let c = 1.0 / (9.0 * d).sqrt();
    loop {
        let (u1, u2): (f64, f64) = (rng.random(), rng.random());
        let z = (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos();
        let v = (1.0 + c * z).powi(3);
        if v > 0.0 && rng.random::<f64>().ln() < 0.5 * z * z + d - d * v - d * v.ln() {
            return d * v;
        }
    }
}

fn beta(rng: &mut ChaCha8Rng, a: f64, b: f64) -> f64 {
    let x = gamma(rng, a);
    x / (x + gamma(rng, b))
}

/// The process's peak resident set (Linux `VmHWM`), MiB.
fn peak_rss_mib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .map_or(0, |kib| kib / 1024)
}
