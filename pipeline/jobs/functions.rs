//! The DataFusion functions tagflow registers in every job's session, for what SQL cannot
//! say: a tag stays a SQL file that calls them, and a user's own tags can call them too.
//!
//! - `bgnbd_fit(x, t_x, t, customers)`: aggregate; fits the BG/NBD model to purchase
//!   summaries (`customers` of each, for summaries grouped first) and returns a struct
//!   `{r, alpha, a, b, log_likelihood, customers, converged}`.
//! - `bgnbd_p_alive(r, alpha, a, b, x, t_x, t)`: the probability that the customer is alive.
//! - `bgnbd_expected(r, alpha, a, b, x, t_x, t, horizon)`: expected repeat purchases in the
//!   `horizon` after `t`.
//! - `nearest_rank(value, percent)`: aggregate; the nearest-rank percentile of the rows,
//!   the value at 1-based position ceil(percent / 100 * rows) in ascending order (nulls
//!   counted as rows and ordered last, as `ROW_NUMBER() OVER (ORDER BY value)` does; null
//!   when that position holds a null or is outside the rows). One selection, no sort: a
//!   population's bar re-evaluated every micro-batch costs a pass over its rows.
//!
//! Owns: the functions' SQL signatures and their registration. Must not: hold model
//! arithmetic (that is [`super::bgnbd`]) or know any tag.
//!
//! A fit is remembered with its input: the same summaries fit again within the process (every
//! micro-batch of a day, see `sql/predictive/purchase_model.sql`) cost a comparison, not a fit.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use arrow::array::{Array, ArrayRef, AsArray, BooleanArray, Float64Array, ListArray};
use arrow::datatypes::{DataType, Field, Fields, Float64Type, Int64Type};
use datafusion::common::{DataFusionError, Result, ScalarValue};
use datafusion::logical_expr::{
    create_udaf, create_udf, Accumulator, AggregateUDF, ColumnarValue, ScalarUDF, Volatility,
};
use datafusion::prelude::SessionContext;
use tracing::info;

use super::bgnbd::{self, Fit, Params, Summary};

/// Register every tagflow function in `ctx`.
pub fn register(ctx: &SessionContext) {
    let (scalars, aggregates) = all();
    scalars.into_iter().for_each(|f| ctx.register_udf(f));
    aggregates.into_iter().for_each(|f| ctx.register_udaf(f));
}

/// Every tagflow function: the scalar ones and the aggregates. A cluster's scheduler and
/// executors register the same ones (`jobs::engine`), so a job plans and runs there as here.
pub fn all() -> (Vec<ScalarUDF>, Vec<AggregateUDF>) {
    let scalars = vec![
        create_udf(
            "bgnbd_p_alive",
            vec![DataType::Float64; 7],
            DataType::Float64,
            Volatility::Immutable,
            Arc::new(|args| per_row(args, |v| bgnbd::p_alive(&params(v), &summary(&v[4..7])))),
        ),
        create_udf(
            "bgnbd_expected",
            vec![DataType::Float64; 8],
            DataType::Float64,
            Volatility::Immutable,
            Arc::new(|args| {
                per_row(args, |v| {
                    bgnbd::expected_purchases(&params(v), &summary(&v[4..7]), v[7])
                })
            }),
        ),
    ];
    (scalars, vec![fit_function(), nearest_rank_function()])
}

/// The fields of `bgnbd_fit`'s result.
fn fit_fields() -> Fields {
    let float = |name: &str| Field::new(name, DataType::Float64, true);
    Fields::from(vec![
        float("r"),
        float("alpha"),
        float("a"),
        float("b"),
        float("log_likelihood"),
        float("customers"),
        Field::new("converged", DataType::Boolean, true),
    ])
}

fn fit_function() -> AggregateUDF {
    let list = DataType::List(Arc::new(Field::new_list_field(DataType::Float64, true)));
    create_udaf(
        "bgnbd_fit",
        vec![DataType::Float64; 4],
        Arc::new(DataType::Struct(fit_fields())),
        Volatility::Immutable,
        Arc::new(|_| Ok(Box::new(FitAccumulator::default()))),
        Arc::new(vec![list; 4]),
    )
}

fn nearest_rank_function() -> AggregateUDF {
    let list = DataType::List(Arc::new(Field::new_list_field(DataType::Float64, true)));
    create_udaf(
        "nearest_rank",
        vec![DataType::Float64, DataType::Int64],
        Arc::new(DataType::Float64),
        Volatility::Immutable,
        Arc::new(|_| Ok(Box::new(RankAccumulator::default()))),
        Arc::new(vec![list, DataType::Int64, DataType::Int64]),
    )
}

/// `nearest_rank`'s rows: the non-null values, the rows counted (nulls too), the percent.
#[derive(Debug, Default)]
struct RankAccumulator {
    values: Vec<f64>,
    rows: i64,
    percent: Option<i64>,
}

impl RankAccumulator {
    fn take_percent(&mut self, percents: &arrow::array::Int64Array) -> Result<()> {
        for percent in percents.iter().flatten() {
            match self.percent {
                Some(known) if known != percent => {
                    return Err(DataFusionError::Execution(format!(
                        "nearest_rank: the percent must be one value for all rows ({known} and {percent} met)"
                    )))
                }
                _ => self.percent = Some(percent),
            }
        }
        Ok(())
    }
}

impl Accumulator for RankAccumulator {
    fn update_batch(&mut self, values: &[ArrayRef]) -> Result<()> {
        let (column, percents) = (values[0].as_primitive::<Float64Type>(), values[1].as_primitive());
        self.take_percent(percents)?;
        self.rows += column.len() as i64;
        self.values.extend(column.iter().flatten());
        Ok(())
    }

    fn merge_batch(&mut self, states: &[ArrayRef]) -> Result<()> {
        let (lists, rows, percents) = (
            states[0].as_list::<i32>(),
            states[1].as_primitive::<Int64Type>(),
            states[2].as_primitive::<Int64Type>(),
        );
        self.take_percent(percents)?;
        self.rows += rows.iter().flatten().sum::<i64>();
        for list in lists.iter().flatten() {
            self.values.extend(list.as_primitive::<Float64Type>().iter().flatten());
        }
        Ok(())
    }

    fn state(&mut self) -> Result<Vec<ScalarValue>> {
        let values = Float64Array::from(self.values.clone());
        let list = ListArray::new(
            Arc::new(Field::new_list_field(DataType::Float64, true)),
            arrow::buffer::OffsetBuffer::from_lengths([values.len()]),
            Arc::new(values),
            None,
        );
        Ok(vec![
            ScalarValue::List(Arc::new(list)),
            ScalarValue::Int64(Some(self.rows)),
            ScalarValue::Int64(self.percent),
        ])
    }

    fn evaluate(&mut self) -> Result<ScalarValue> {
        let Some(percent) = self.percent else {
            return Ok(ScalarValue::Float64(None));
        };
        // 1-based, in exact integer arithmetic: ceil(percent * rows / 100).
        let rank = (self.rows * percent + 99).div_euclid(100);
        if rank < 1 || rank as usize > self.values.len() {
            return Ok(ScalarValue::Float64(None));
        }
        let (_, value, _) = self.values.select_nth_unstable_by(rank as usize - 1, f64::total_cmp);
        Ok(ScalarValue::Float64(Some(*value)))
    }

    fn size(&self) -> usize {
        std::mem::size_of_val(self) + self.values.capacity() * 8
    }
}

/// Apply `f` to each row of float arguments; a row with a null argument gives null.
fn per_row(args: &[ColumnarValue], f: impl Fn(&[f64]) -> f64) -> Result<ColumnarValue> {
    let arrays = ColumnarValue::values_to_arrays(args)?;
    let columns: Vec<&Float64Array> = arrays.iter().map(|a| a.as_primitive::<Float64Type>()).collect();
    let rows = arrays.first().map_or(0, |a| a.len());
    let mut values = vec![0.0; columns.len()];
    let out: Float64Array = (0..rows)
        .map(|i| {
            if columns.iter().any(|c| c.is_null(i)) {
                return None;
            }
            for (value, column) in values.iter_mut().zip(&columns) {
                *value = column.value(i);
            }
            Some(f(&values))
        })
        .collect();
    Ok(ColumnarValue::Array(Arc::new(out)))
}

fn params(v: &[f64]) -> Params {
    Params {
        r: v[0],
        alpha: v[1],
        a: v[2],
        b: v[3],
    }
}

fn summary(v: &[f64]) -> Summary {
    Summary {
        x: v[0],
        t_x: v[1],
        t: v[2],
        weight: 1.0,
    }
}

/// The summaries `bgnbd_fit` has met, as four columns (its state between partitions).
#[derive(Debug, Default)]
struct FitAccumulator {
    columns: [Vec<f64>; 4],
}

impl FitAccumulator {
    fn push_rows(&mut self, arrays: &[&Float64Array]) {
        let rows = arrays.first().map_or(0, |a| a.len());
        for i in (0..rows).filter(|&i| arrays.iter().all(|a| a.is_valid(i))) {
            for (column, array) in self.columns.iter_mut().zip(arrays) {
                column.push(array.value(i));
            }
        }
    }

    fn summaries(&self) -> Vec<Summary> {
        let [x, t_x, t, weight] = &self.columns;
        (0..x.len())
            .map(|i| Summary {
                x: x[i],
                t_x: t_x[i],
                t: t[i],
                weight: weight[i],
            })
            .collect()
    }
}

impl Accumulator for FitAccumulator {
    fn update_batch(&mut self, values: &[ArrayRef]) -> Result<()> {
        let arrays: Vec<&Float64Array> = values.iter().map(|a| a.as_primitive::<Float64Type>()).collect();
        self.push_rows(&arrays);
        Ok(())
    }

    fn merge_batch(&mut self, states: &[ArrayRef]) -> Result<()> {
        let lists: Vec<&ListArray> = states.iter().map(|a| a.as_list::<i32>()).collect();
        let rows = lists.first().map_or(0, |l| l.len());
        for row in 0..rows {
            let values: Vec<ArrayRef> = lists.iter().map(|l| l.value(row)).collect();
            let arrays: Vec<&Float64Array> = values.iter().map(|a| a.as_primitive::<Float64Type>()).collect();
            self.push_rows(&arrays);
        }
        Ok(())
    }

    fn state(&mut self) -> Result<Vec<ScalarValue>> {
        Ok(self
            .columns
            .iter()
            .map(|column| {
                let values = Float64Array::from(column.clone());
                ScalarValue::List(Arc::new(ListArray::new(
                    Arc::new(Field::new_list_field(DataType::Float64, true)),
                    arrow::buffer::OffsetBuffer::from_lengths([values.len()]),
                    Arc::new(values),
                    None,
                )))
            })
            .collect())
    }

    fn evaluate(&mut self) -> Result<ScalarValue> {
        let summaries = self.summaries();
        let customers: f64 = summaries.iter().map(|s| s.weight).sum();
        let fit = remembered_fit(summaries);
        let float = |v: f64| Arc::new(Float64Array::from(vec![v])) as ArrayRef;
        let columns: Vec<ArrayRef> = vec![
            float(fit.params.r),
            float(fit.params.alpha),
            float(fit.params.a),
            float(fit.params.b),
            float(fit.log_likelihood),
            float(customers),
            Arc::new(BooleanArray::from(vec![fit.converged])),
        ];
        let array = arrow::array::StructArray::try_new(fit_fields(), columns, None)
            .map_err(|e| DataFusionError::ArrowError(Box::new(e), None))?;
        Ok(ScalarValue::Struct(Arc::new(array)))
    }

    fn size(&self) -> usize {
        std::mem::size_of_val(self) + self.columns.iter().map(|c| c.capacity() * 8).sum::<usize>()
    }
}

/// Fits remembered with their sorted summaries, newest last.
static FITS: Mutex<VecDeque<(Vec<Summary>, Fit)>> = Mutex::new(VecDeque::new());
const FITS_REMEMBERED: usize = 4;

/// The fit of `summaries`, from memory when the same summaries (in any order) were fit before.
fn remembered_fit(mut summaries: Vec<Summary>) -> Fit {
    // A total order (NaN included), so the same summaries always sort, and fit, the same way.
    summaries.sort_by(|a, b| {
        a.x.total_cmp(&b.x)
            .then(a.t_x.total_cmp(&b.t_x))
            .then(a.t.total_cmp(&b.t))
            .then(a.weight.total_cmp(&b.weight))
    });
    let memory = FITS.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, fit)) = memory.iter().find(|(known, _)| *known == summaries) {
        return fit.clone();
    }
    drop(memory);
    let started = std::time::Instant::now();
    let fit = bgnbd::fit(&summaries);
    info!(
        summaries = summaries.len(),
        evaluations = fit.evaluations,
        converged = fit.converged,
        log_likelihood = fit.log_likelihood,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "fitted the BG/NBD model"
    );
    let mut memory = FITS.lock().unwrap_or_else(|e| e.into_inner());
    memory.push_back((summaries, fit.clone()));
    while memory.len() > FITS_REMEMBERED {
        memory.pop_front();
    }
    fit
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `nearest_rank(v, percent)` over `values` (a null: `None`), by SQL in a session with
    /// tagflow's functions.
    async fn nearest_rank(values: &[Option<f64>], percent: i64) -> Option<f64> {
        let ctx = SessionContext::new();
        register(&ctx);
        let rows: Vec<String> = values
            .iter()
            .map(|v| format!("({})", v.map_or("CAST(NULL AS DOUBLE)".into(), |v| format!("{v:?}"))))
            .collect();
        let sql = match rows.is_empty() {
            true => format!("SELECT nearest_rank(CAST(1.0 AS DOUBLE), {percent}) AS r WHERE false"),
            false => format!(
                "SELECT nearest_rank(v, {percent}) AS r FROM (VALUES {}) AS t(v)",
                rows.join(", ")
            ),
        };
        let batches = ctx.sql(&sql).await.unwrap().collect().await.unwrap();
        let column = batches[0].column(0).as_primitive::<Float64Type>().clone();
        column.is_valid(0).then(|| column.value(0))
    }

    #[tokio::test]
    async fn nearest_rank_is_the_value_at_the_ceiling_of_the_percent_of_the_rows() {
        let values: Vec<Option<f64>> = [5.0, 1.0, 4.0, 2.0, 3.0].map(Some).to_vec();
        // ceil(80% of 5) = 4th smallest; ceil(50% of 5) = 3rd; ceil(1% of 5) = 1st.
        assert_eq!(nearest_rank(&values, 80).await, Some(4.0));
        assert_eq!(nearest_rank(&values, 50).await, Some(3.0));
        assert_eq!(nearest_rank(&values, 1).await, Some(1.0));
        assert_eq!(nearest_rank(&values, 100).await, Some(5.0));
        // Ties hold one value; position 0 or past the rows is null.
        assert_eq!(nearest_rank(&[Some(2.0), Some(2.0), Some(1.0)], 50).await, Some(2.0));
        assert_eq!(nearest_rank(&values, 0).await, None);
        assert_eq!(nearest_rank(&values, 101).await, None);
        assert_eq!(nearest_rank(&[], 80).await, None);
    }

    #[tokio::test]
    async fn nulls_count_as_rows_and_order_last() {
        // 4 rows, one null: ceil(75% of 4) = 3rd = 3.0; ceil(80% of 4) = 4th = the null.
        let values = [Some(3.0), None, Some(1.0), Some(2.0)];
        assert_eq!(nearest_rank(&values, 75).await, Some(3.0));
        assert_eq!(nearest_rank(&values, 80).await, None);
    }
}
