//! One-off differentially private statistics over a table file, paid for
//! from a budget file: what `cohort dp` runs for a data steward before the
//! SQL planner exists for the study.
//!
//! Contribution bounding: with a privacy-unit column (the patient), each unit
//! keeps at most `max_rows` rows, the first ones in file order; the order of
//! a unit's own rows depends on nothing but that unit's data as written, so
//! the bounded table changes by at most `max_rows` rows when one unit is
//! added or removed, which is the sensitivity every mechanism is given.
//! Without a unit column every row is its own unit.
//!
//! Sums are fixed point: each clamped value is rounded to [`SUM_DECIMALS`]
//! decimals and the integers are summed exactly, so the sum does not depend
//! on the order of the rows and moves by at most the sensitivity between
//! neighbours (a floating-point sum can move by more: Casacuberta et al.,
//! CCS 2022). The same fixed point as the SQL planner's sums.
//!
//! Budgets: the budget file is the study's [`Accountant`] as JSON, locked
//! ([`BudgetLock`]) from its reading to its last write, so two runs cannot
//! both spend what only one may. A release reserves its charge, computes,
//! and commits, whatever the ending: once reserved, a failed computation is
//! charged too, with a fixed message ([`Error::Charged`]), because whether
//! it failed could depend on the data. A run killed between reserving and
//! committing leaves a reservation (never an overspend), which
//! `cohort budget release` cancels.
//!
//! The outcome carries no exact quantity (no count of rows used or dropped),
//! and is released no earlier than the request's deadline, when one is set.

use std::collections::HashMap;
use std::path::Path;

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Float64Type};
use cohort_anonymizer::accountant::{Accountant, QueryId};
use cohort_anonymizer::dp::{self, Privacy};
use serde::Serialize;

use crate::{Error, Result};

/// The statistic to release.
#[derive(Debug, Clone)]
pub enum Statistic {
    /// The number of rows.
    Count,
    /// The sum of a column's values clamped to `[lower, upper]`.
    Sum {
        /// The column.
        column: String,
        /// Values below are raised to this.
        lower: f64,
        /// Values above are lowered to this.
        upper: f64,
    },
    /// The mean of a column's clamped values (noisy sum over noisy count).
    Mean {
        /// The column.
        column: String,
        /// Clamp bound.
        lower: f64,
        /// Clamp bound.
        upper: f64,
    },
    /// Counts per value over a declared, public domain.
    Histogram {
        /// The column.
        column: String,
        /// Its public domain; rows with other values are not counted.
        domain: Vec<String>,
    },
    /// The values of a column frequent enough to publish (domain not public).
    Keys {
        /// The column.
        column: String,
        /// The δ of the threshold.
        delta: f64,
    },
    /// A quantile, chosen among candidates by the exponential mechanism.
    Quantile {
        /// The column.
        column: String,
        /// 0.5 for the median.
        alpha: f64,
        /// The values it may return.
        candidates: Vec<f64>,
    },
}

/// What `cohort dp` prints: the noisy value and how it was made.
#[derive(Debug, Serialize)]
pub struct Outcome {
    /// The statistic, in words.
    pub statistic: String,
    /// The released value (a number, a list of counts or of keys).
    pub value: serde_json::Value,
    /// The mechanism.
    pub mechanism: String,
    /// The noise scale.
    pub scale: f64,
    /// Half-width of the 95% interval.
    pub accuracy_95: f64,
    /// The privacy cost.
    pub charge: String,
    /// The query id debited, and what remains, when a budget file is used.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub debit: Option<Debit>,
}

/// A debit recorded in a budget file.
#[derive(Debug, Serialize)]
pub struct Debit {
    /// The query id.
    pub query_id: String,
    /// What is left of the budget.
    pub remaining: String,
}

/// A fresh query id for a debit (`q-` and the time in nanoseconds).
pub fn new_query_id() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!("q-{nanos}")
}

/// The rows kept when each unit contributes at most `max_rows` (first in
/// file order); all rows when there is no unit column.
pub fn bounded_rows(batch: &RecordBatch, unit: Option<&str>, max_rows: u32) -> Result<Vec<usize>> {
    let Some(unit) = unit else {
        return Ok((0..batch.num_rows()).collect());
    };
    let ids = text_column(batch, unit)?;
    let ids = ids.as_string::<i32>();
    let mut seen: HashMap<&str, u32> = HashMap::new();
    let mut keep = Vec::new();
    for i in 0..ids.len() {
        if ids.is_null(i) {
            return Err(Error::Invalid(format!(
                "privacy unit column `{unit}` is null at row {i}"
            )));
        }
        let n = seen.entry(ids.value(i)).or_default();
        if *n < max_rows {
            *n += 1;
            keep.push(i);
        }
    }
    Ok(keep)
}

fn column<'a>(batch: &'a RecordBatch, name: &str) -> Result<&'a arrow::array::ArrayRef> {
    batch.column_by_name(name).ok_or_else(|| {
        let names: Vec<_> = batch
            .schema()
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .collect();
        Error::Invalid(format!(
            "column `{name}` is not in the table (it has: {})",
            names.join(", ")
        ))
    })
}

fn text_column(batch: &RecordBatch, name: &str) -> Result<arrow::array::ArrayRef> {
    Ok(cast(column(batch, name)?, &DataType::Utf8)?)
}

/// Decimals kept by a fixed-point sum (the planner's default precision).
pub const SUM_DECIMALS: i32 = 4;

/// The exact fixed-point sum of `xs` clamped to `[lower, upper]`, as the
/// real it stands for: each value rounded to [`SUM_DECIMALS`] decimals, the
/// integers summed exactly (`i128`), the total converted once.
pub fn fixed_point_sum(xs: &[f64], lower: f64, upper: f64) -> f64 {
    let scale = 10f64.powi(SUM_DECIMALS);
    let total: i128 = xs
        .iter()
        .map(|x| (x.clamp(lower, upper) * scale).round() as i128)
        .sum();
    total as f64 / scale
}

/// An exclusive lock on a budget file, held from its reading to its last
/// write (a `<file>.lock` beside it, released when dropped or when the
/// process dies).
pub struct BudgetLock {
    _file: std::fs::File,
}

impl BudgetLock {
    /// Waits for the lock of `budget_file`.
    pub fn acquire(budget_file: &Path) -> Result<BudgetLock> {
        let mut name = budget_file.as_os_str().to_owned();
        name.push(".lock");
        let path = std::path::PathBuf::from(name);
        let file = std::fs::File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| Error::io("opening the budget lock", &path, e))?;
        rustix::fs::flock(&file, rustix::fs::FlockOperation::LockExclusive)
            .map_err(|e| Error::io("locking the budget", &path, e.into()))?;
        Ok(BudgetLock { _file: file })
    }
}

/// The clamped values of `name` at `rows` (nulls skipped).
fn numbers(batch: &RecordBatch, name: &str, rows: &[usize]) -> Result<Vec<f64>> {
    let c = column(batch, name)?;
    if !c.data_type().is_numeric() {
        return Err(Error::Invalid(format!(
            "column `{name}` is {}, not numeric",
            c.data_type()
        )));
    }
    let f = cast(c, &DataType::Float64)?;
    let f = f.as_primitive::<Float64Type>();
    Ok(rows
        .iter()
        .filter(|&&r| f.is_valid(r))
        .map(|&r| f.value(r))
        .collect())
}

/// One release: the statistic, the bounding and the privacy parameter.
#[derive(Debug, Clone)]
pub struct Request {
    /// What to compute.
    pub statistic: Statistic,
    /// The privacy-unit column (the patient), if rows are not units.
    pub unit: Option<String>,
    /// The most rows one unit contributes.
    pub max_rows: u32,
    /// ε (discrete Laplace) or ρ (discrete Gaussian).
    pub privacy: Privacy,
    /// Release no earlier than this long after the request (`None`: at once).
    pub deadline: Option<std::time::Duration>,
}

impl Request {
    /// What the release costs, before it runs (reserved first).
    pub fn charge(&self) -> Result<cohort_anonymizer::accountant::Charge> {
        use cohort_anonymizer::accountant::{Amount, Charge};
        match (&self.statistic, self.privacy) {
            (Statistic::Keys { delta, .. }, Privacy::Pure { epsilon }) => Ok(Charge::Approx {
                epsilon: Amount::from_f64_display(epsilon)?,
                delta: Amount::from_f64_display(*delta)?,
            }),
            _ => Ok(self.privacy.charge()?),
        }
    }
}

/// Computes the requested statistic over `batch`, with noise.
pub fn release(batch: &RecordBatch, request: &Request) -> Result<Outcome> {
    let (statistic, unit, max_rows, privacy) = (
        &request.statistic,
        request.unit.as_deref(),
        request.max_rows,
        request.privacy,
    );
    if max_rows == 0 {
        return Err(Error::Invalid("--max-rows must be at least 1".into()));
    }
    let rows = bounded_rows(batch, unit, max_rows)?;
    let (statistic_name, value, mechanism, scale, accuracy, charge) = match statistic {
        Statistic::Count => {
            let r = dp::count(rows.len() as i64, max_rows, privacy)?;
            (
                "count".to_string(),
                to_json(r.value()),
                r.mechanism(),
                r.scale(),
                r.accuracy_95(),
                r.charge(),
            )
        }
        Statistic::Sum {
            column,
            lower,
            upper,
        } => {
            let xs = numbers(batch, column, &rows)?;
            let sum = fixed_point_sum(&xs, *lower, *upper);
            let r = dp::sum_f64(sum, *lower, *upper, max_rows, privacy)?;
            (
                format!("sum({column}) clamped to [{lower}, {upper}]"),
                to_json(r.value()),
                r.mechanism(),
                r.scale(),
                r.accuracy_95(),
                r.charge(),
            )
        }
        Statistic::Mean {
            column,
            lower,
            upper,
        } => {
            let xs = numbers(batch, column, &rows)?;
            let sum = fixed_point_sum(&xs, *lower, *upper);
            let r = dp::mean(sum, xs.len() as i64, *lower, *upper, max_rows, privacy)?;
            (
                format!("mean({column}) clamped to [{lower}, {upper}]"),
                to_json(r.value()),
                r.mechanism(),
                r.scale(),
                r.accuracy_95(),
                r.charge(),
            )
        }
        Statistic::Histogram { column, domain } => {
            let t = text_column(batch, column)?;
            let t = t.as_string::<i32>();
            let index: HashMap<&str, usize> = domain
                .iter()
                .enumerate()
                .map(|(i, v)| (v.as_str(), i))
                .collect();
            let mut counts = vec![0i64; domain.len()];
            for &r in &rows {
                if t.is_valid(r)
                    && let Some(&i) = index.get(t.value(r))
                {
                    counts[i] += 1;
                }
            }
            let r = dp::histogram(&counts, max_rows, max_rows, privacy)?;
            let value: serde_json::Map<String, serde_json::Value> = domain
                .iter()
                .cloned()
                .zip(r.value().iter().map(|c| serde_json::json!(c)))
                .collect();
            (
                format!("histogram({column}) over {} public values", domain.len()),
                value.into(),
                r.mechanism(),
                r.scale(),
                r.accuracy_95(),
                r.charge(),
            )
        }
        Statistic::Keys { column, delta } => {
            let Privacy::Pure { epsilon } = privacy else {
                return Err(Error::Invalid(
                    "key selection takes --epsilon (and --delta), not --rho".into(),
                ));
            };
            let t = text_column(batch, column)?;
            let t = t.as_string::<i32>();
            let mut counts: HashMap<String, i64> = HashMap::new();
            for &r in &rows {
                if t.is_valid(r) {
                    *counts.entry(t.value(r).to_string()).or_default() += 1;
                }
            }
            let r = dp::select_keys(counts, max_rows, max_rows, epsilon, *delta)?;
            let kept = &r.value().keys;
            let value: serde_json::Map<String, serde_json::Value> = kept
                .iter()
                .map(|(k, c)| (k.clone(), serde_json::json!(c)))
                .collect();
            (
                format!(
                    "frequent values of {column} (threshold {})",
                    r.value().threshold
                ),
                value.into(),
                r.mechanism(),
                r.scale(),
                r.accuracy_95(),
                r.charge(),
            )
        }
        Statistic::Quantile {
            column,
            alpha,
            candidates,
        } => {
            let Privacy::Pure { epsilon } = privacy else {
                return Err(Error::Invalid(
                    "the quantile takes --epsilon, not --rho".into(),
                ));
            };
            let xs = numbers(batch, column, &rows)?;
            let r = dp::quantile(&xs, candidates, *alpha, max_rows, epsilon)?;
            (
                format!("quantile {alpha} of {column}"),
                to_json(r.value()),
                r.mechanism(),
                r.scale(),
                r.accuracy_95(),
                r.charge(),
            )
        }
    };
    Ok(Outcome {
        statistic: statistic_name,
        value,
        mechanism: format!("{mechanism:?}"),
        scale,
        accuracy_95: accuracy,
        charge: charge.to_string(),
        debit: None,
    })
}

fn to_json<T: Serialize>(value: &T) -> serde_json::Value {
    serde_json::to_value(value).unwrap_or(serde_json::Value::Null)
}

/// Reads a budget file (an [`Accountant`] as JSON).
pub fn load_budget(path: &Path) -> Result<Accountant> {
    let text =
        std::fs::read_to_string(path).map_err(|e| Error::io("reading the budget file", path, e))?;
    serde_json::from_str(&text)
        .map_err(|e| Error::Invalid(format!("budget file {}: {e}", path.display())))
}

/// Writes a budget file atomically and durably.
pub fn save_budget(path: &Path, accountant: &Accountant) -> Result<()> {
    let json = serde_json::to_vec_pretty(accountant).map_err(|e| Error::Invalid(e.to_string()))?;
    crate::storage::fsutil::write_atomic(path, &json)
}

/// Checks what can be checked before anything is reserved (bounds, the
/// unit, the columns' presence and types): a refusal here spends nothing.
fn precheck(batch: &RecordBatch, request: &Request) -> Result<()> {
    if request.max_rows == 0 {
        return Err(Error::Invalid("--max-rows must be at least 1".into()));
    }
    if let Some(unit) = &request.unit {
        column(batch, unit)?;
    }
    match &request.statistic {
        Statistic::Count => Ok(()),
        Statistic::Sum {
            column: c,
            lower,
            upper,
        }
        | Statistic::Mean {
            column: c,
            lower,
            upper,
        } => {
            if !(lower.is_finite() && upper.is_finite() && lower <= upper) {
                return Err(Error::Invalid(format!(
                    "--lower {lower} --upper {upper}: finite bounds with lower ≤ upper"
                )));
            }
            numbers(batch, c, &[]).map(|_| ())
        }
        Statistic::Keys { column: c, .. } | Statistic::Quantile { column: c, .. }
            if !matches!(request.privacy, Privacy::Pure { .. }) =>
        {
            Err(Error::Invalid(format!(
                "key selection and quantiles take --epsilon, not --rho (column `{c}`)"
            )))
        }
        Statistic::Histogram { column: c, .. }
        | Statistic::Keys { column: c, .. }
        | Statistic::Quantile { column: c, .. } => column(batch, c).map(|_| ()),
    }
}

/// Reserves `privacy`'s charge in the budget file (locked throughout),
/// runs the release and commits, whatever the ending: a failure after the
/// reservation is charged and answered by [`Error::Charged`]. The outcome
/// is released no earlier than the request's deadline.
pub fn release_with_budget(
    budget_file: &Path,
    query_id: &str,
    batch: &RecordBatch,
    request: &Request,
) -> Result<Outcome> {
    let started = std::time::Instant::now();
    let charge = request.charge()?;
    precheck(batch, request)?;
    let _lock = BudgetLock::acquire(budget_file)?;
    let mut accountant = load_budget(budget_file)?;
    let id = QueryId::new(query_id);
    accountant.reserve(id.clone(), charge)?;
    save_budget(budget_file, &accountant)?;
    let ended = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| release(batch, request)))
        .unwrap_or_else(|_| Err(Error::Invalid("the release panicked".into())));
    accountant.commit(&id, None)?;
    save_budget(budget_file, &accountant)?;
    release_at(started, request.deadline);
    let mut outcome = ended.map_err(|_| Error::Charged {
        query_id: query_id.into(),
        cost: charge.to_string(),
    })?;
    outcome.debit = Some(Debit {
        query_id: query_id.into(),
        remaining: accountant.remaining().to_string(),
    });
    Ok(outcome)
}

/// A release without a budget file: the same fixed message for a failure,
/// the same deadline.
pub fn release_unbudgeted(batch: &RecordBatch, request: &Request) -> Result<Outcome> {
    let started = std::time::Instant::now();
    let charge = request.charge()?;
    precheck(batch, request)?;
    let ended = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| release(batch, request)))
        .unwrap_or_else(|_| Err(Error::Invalid("the release panicked".into())));
    release_at(started, request.deadline);
    ended.map_err(|_| Error::Charged {
        query_id: "(no budget)".into(),
        cost: charge.to_string(),
    })
}

/// Waits until `deadline` after `started` (the fixed-time release of a
/// steward's one-off statistic: its computation is bounded, so it is never
/// cut short).
fn release_at(started: std::time::Instant, deadline: Option<std::time::Duration>) {
    if let Some(d) = deadline {
        let left = d.saturating_sub(started.elapsed());
        if !left.is_zero() {
            std::thread::sleep(left);
        }
    }
}
