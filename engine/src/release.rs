//! `cohort dp`: one differentially private statistic over a table file,
//! paid for from a budget file, for a data steward without a study policy.
//!
//! A thin front door over the planned path of [`crate::sql`], the one
//! `cohort query FILE` takes (the research path holds the same invariants
//! over a study's view): [`release`] turns the request into a
//! [`StudyPolicy`] for its one table and one SQL statement, and
//! [`sql::run`] plans, costs, pays for and runs them. So a refusal spends
//! nothing; the budget file is locked ([`BudgetLock`]) from its reading to
//! its last write, so two runs cannot both spend what only one may; once
//! the cost is reserved every ending is committed, a failure with a fixed
//! message ([`Error::Charged`]), because whether it failed could depend on
//! the data; and the outcome is released at `--deadline-ms`, a run past it
//! being that same charged failure. A run killed between reserving and
//! committing leaves a reservation (never an overspend), which
//! `cohort budget release` cancels.
//!
//! | statistic | SQL over the table `input` | the column in the policy |
//! |---|---|---|
//! | count | `SELECT COUNT(*)` | — |
//! | sum | `SELECT SUM(c)` | `lower`, `upper` |
//! | mean | `SELECT AVG(c)` | `lower`, `upper` |
//! | histogram | `SELECT c, COUNT(*) … GROUP BY c` | `domain`, public |
//! | keys | `SELECT c, COUNT(*) … WHERE c IS NOT NULL GROUP BY c` | none: DP key selection at `--delta` |
//! | quantile | `SELECT PERCENTILE_CONT(c, α)` | `candidates`, and bounds that clamp nothing |
//!
//! The column is read as `cohort dp` has always read it: as text for a
//! histogram or keys (a domain value matches the value as written), as
//! reals otherwise.
//!
//! Contribution bounding is the planner's. The privacy unit is the `--unit`
//! column or, without one, a row index added to the table, so that every
//! row is its own unit. A unit keeps at most `--max-rows` rows per group
//! (and, for a histogram or keys, at most `--max-rows` groups), the first
//! ones in file order: the planner keeps the first by that row index. The
//! order of a unit's own rows depends on nothing but that unit's data as
//! written, so the rows every other unit keeps do not change when one unit
//! is added or removed. A row whose unit is null fails the release after
//! the reservation (charged).
//!
//! Sums are the planner's fixed point (each clamped value rounded to 4
//! decimals, the integers summed exactly), so a sum does not depend on the
//! order of the rows and moves by at most the sensitivity between
//! neighbours (a floating-point sum can move by more: Casacuberta et al.,
//! CCS 2022).
//!
//! Noise: `--epsilon` gives discrete Laplace, `--rho` discrete Gaussian,
//! whatever the budget file holds: the plan is made in the request's kind
//! ([`Remaining::Options`]), and the reservation converts its cost into the
//! budget's kind, refusing for free what it cannot pay.
//!
//! The outcome carries no exact quantity (no count of rows used or dropped).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, Int64Array, RecordBatch};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Field, Schema};
use cohort_anonymizer::accountant::{Accountant, Amount, Charge};
use cohort_anonymizer::dp::{KeyThreshold, Privacy};
use cohort_query_planner::policy::{
    ColumnPolicy, Contribution, DomainValue, Execution, ReleaseTiming, Sampling, TablePolicy,
};
use cohort_query_planner::{StudyPolicy, sources};
use serde::Serialize;

use crate::sql::{self, DataCheck, Door, Remaining, SqlOutcome, SqlQuery, Study};
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

/// One release: the statistic, the bounding, the privacy parameter and
/// what pays for it.
#[derive(Debug, Clone)]
pub struct Request {
    /// What to compute.
    pub statistic: Statistic,
    /// The privacy-unit column (the patient), if rows are not units.
    pub unit: Option<String>,
    /// The most rows one unit contributes (per group).
    pub max_rows: u32,
    /// ε (discrete Laplace) or ρ (discrete Gaussian).
    pub privacy: Privacy,
    /// Release no earlier than this long after the reservation (`None`: at
    /// once); a run that is not done by then is the charged failure.
    pub deadline: Option<std::time::Duration>,
    /// A budget file (`cohort budget init`) to debit; without one nothing
    /// is accounted.
    pub budget: Option<PathBuf>,
    /// The debit's id (else a fresh one, [`new_query_id`]).
    pub query_id: Option<String>,
}

impl Request {
    /// What the release costs, before it runs (reserved first).
    pub fn charge(&self) -> Result<Charge> {
        match (&self.statistic, self.privacy) {
            (Statistic::Keys { delta, .. }, Privacy::Pure { epsilon }) => Ok(Charge::Approx {
                epsilon: Amount::from_f64_display(epsilon)?,
                delta: Amount::from_f64_display(*delta)?,
            }),
            _ => Ok(self.privacy.charge()?),
        }
    }
}

/// The table's name in the policy and the SQL.
const TABLE: &str = "input";

/// The most a run's operators may hold: the planner's default, or more for
/// a large table (which `cohort dp` has already read into memory), so that
/// the limit stops runaway work, never a table that fits.
const MEMORY_BASE_MB: u64 = 1_024;

/// Computes the requested statistic over `batch`, with noise, paid for from
/// the request's budget file: planned, reserved, run, committed and
/// released at the deadline by [`sql::run`].
pub fn release(batch: &RecordBatch, request: &Request) -> Result<Outcome> {
    request.charge()?;
    precheck(batch, request)?;
    let (study, query, door) = planned(batch, request)?;
    let outcome = sql::block_on(Path::new("cohort dp"), sql::run(study, &query, door))?;
    Ok(outcome_of(request, outcome))
}

/// The policy, the query and the door of `request` over `batch`.
fn planned(batch: &RecordBatch, request: &Request) -> Result<(Study, SqlQuery, Door)> {
    let (table, row) = table_for(batch, request)?;
    let unit = request.unit.clone().unwrap_or_else(|| row.clone());
    let q = quote;

    let mut columns = BTreeMap::from([
        (unit.clone(), ColumnPolicy::default()),
        (
            row.clone(),
            ColumnPolicy {
                identifier: true,
                ..ColumnPolicy::default()
            },
        ),
    ]);
    let mut max_groups = 1;
    let mut epsilon = None;
    let mut rho = None;
    let mut delta = None;
    match request.privacy {
        Privacy::Pure { epsilon: e } => epsilon = Some(Amount::from_f64_display(e)?),
        Privacy::Zcdp { rho: r } => rho = Some(Amount::from_f64_display(r)?),
    }
    let sql = match &request.statistic {
        Statistic::Count => format!("SELECT COUNT(*) FROM {}", q(TABLE)),
        Statistic::Sum {
            column,
            lower,
            upper,
        }
        | Statistic::Mean {
            column,
            lower,
            upper,
        } => {
            columns.insert(
                column.clone(),
                ColumnPolicy {
                    lower: Some(*lower),
                    upper: Some(*upper),
                    ..ColumnPolicy::default()
                },
            );
            let function = match request.statistic {
                Statistic::Sum { .. } => "SUM",
                _ => "AVG",
            };
            format!("SELECT {function}({}) FROM {}", q(column), q(TABLE))
        }
        Statistic::Histogram { column, domain } => {
            let mut values: Vec<DomainValue> = Vec::with_capacity(domain.len());
            for text in domain {
                let value = DomainValue::Text(text.clone());
                if !values.contains(&value) {
                    values.push(value);
                }
            }
            columns.insert(
                column.clone(),
                ColumnPolicy {
                    domain: Some(values),
                    ..ColumnPolicy::default()
                },
            );
            max_groups = request.max_rows;
            format!(
                "SELECT {c}, COUNT(*) FROM {t} GROUP BY {c}",
                c = q(column),
                t = q(TABLE)
            )
        }
        Statistic::Keys { column, delta: d } => {
            columns.insert(column.clone(), ColumnPolicy::default());
            max_groups = request.max_rows;
            delta = Some(Amount::from_f64_display(*d)?);
            format!(
                "SELECT {c}, COUNT(*) FROM {t} WHERE {c} IS NOT NULL GROUP BY {c}",
                c = q(column),
                t = q(TABLE)
            )
        }
        Statistic::Quantile {
            column,
            alpha,
            candidates,
        } => {
            // Bounds far outside every candidate: the values are not
            // clamped, so each candidate is scored on the values as they are.
            let (lower, upper) = (-f64::MAX / 4.0, f64::MAX / 4.0);
            columns.insert(
                column.clone(),
                ColumnPolicy {
                    lower: Some(lower),
                    upper: Some(upper),
                    candidates: Some(candidates.clone()),
                    ..ColumnPolicy::default()
                },
            );
            format!(
                "SELECT PERCENTILE_CONT({}, {alpha:?}) FROM {}",
                q(column),
                q(TABLE)
            )
        }
    };

    let bytes = u64::try_from(table.get_array_memory_size()).unwrap_or(u64::MAX);
    let policy = StudyPolicy {
        privacy_unit: unit.clone(),
        query: Default::default(),
        contribution: Contribution {
            max_rows: request.max_rows,
            max_groups,
            sampling: Sampling::FirstBy(vec![row]),
        },
        tables: BTreeMap::from([(
            TABLE.to_string(),
            TablePolicy {
                source: None,
                rows_per_unit: None,
                columns,
            },
        )]),
        execution: Execution {
            release: match request.deadline {
                Some(_) => ReleaseTiming::Deadline,
                None => ReleaseTiming::Immediate,
            },
            deadline_ms: request
                .deadline
                .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            per_patient_us: 0,
            memory_mb: MEMORY_BASE_MB
                .saturating_add(bytes.saturating_mul(8) >> 20)
                .min(1 << 20),
            population: None,
            ..Execution::default()
        },
    };
    let provider = sources::batches(table.schema(), vec![table.clone()])?;
    let study = Study {
        policy,
        tables: [(TABLE.to_string(), provider)].into(),
    };
    let query = SqlQuery {
        sql,
        budget: request.budget.clone(),
        query_id: request.query_id.clone(),
        epsilon,
        rho,
        delta,
        ..SqlQuery::default()
    };
    let door = Door {
        remaining: Remaining::Options,
        check: request
            .unit
            .as_ref()
            .map(|unit| no_null_units(&table, unit)),
    };
    Ok((study, query, door))
}

/// Fails when a row's unit is null (a row of no one, which the bounding
/// could not account for): after the reservation, so the failure is
/// charged and says nothing of the data.
fn no_null_units(table: &RecordBatch, unit: &str) -> DataCheck {
    let column = table.column_by_name(unit).cloned();
    let unit = unit.to_string();
    Box::new(move || match column {
        Some(column) if column.null_count() == 0 => Ok(()),
        _ => Err(Error::Invalid(format!(
            "the privacy unit column `{unit}` has a null value"
        ))),
    })
}

/// The table the planner is given: `batch` with the statistic's column
/// as `cohort dp` has always read it (text for a histogram or keys, whose
/// domain and keys are text; reals for the others, summed with 4 decimals
/// and scored against real candidates), and a row index column (first in
/// file order), whose name is returned: the unit of a table without one,
/// and the order in which a unit's rows are kept.
fn table_for(batch: &RecordBatch, request: &Request) -> Result<(RecordBatch, String)> {
    let cast_to = match &request.statistic {
        Statistic::Count => None,
        Statistic::Histogram { column, .. } | Statistic::Keys { column, .. } => {
            Some((column, DataType::Utf8))
        }
        Statistic::Sum { column, .. }
        | Statistic::Mean { column, .. }
        | Statistic::Quantile { column, .. } => Some((column, DataType::Float64)),
    };
    let schema = batch.schema();
    let mut fields: Vec<Arc<Field>> = Vec::with_capacity(schema.fields().len() + 1);
    let mut columns = Vec::with_capacity(schema.fields().len() + 1);
    for (field, array) in schema.fields().iter().zip(batch.columns()) {
        match &cast_to {
            Some((name, to)) if field.name() == *name && field.data_type() != to => {
                fields.push(Arc::new(Field::new(field.name(), to.clone(), true)));
                columns.push(cast(array, to)?);
            }
            _ => {
                fields.push(Arc::clone(field));
                columns.push(Arc::clone(array));
            }
        }
    }
    let mut name = String::from("dp_row");
    while schema.column_with_name(&name).is_some() {
        name.insert(0, '_');
    }
    let rows = i64::try_from(batch.num_rows())
        .map_err(|_| Error::Invalid("the table has too many rows".into()))?;
    fields.push(Arc::new(Field::new(&name, DataType::Int64, false)));
    columns.push(Arc::new(Int64Array::from_iter_values(0..rows)));
    let schema = Schema::new_with_metadata(fields, schema.metadata().clone());
    Ok((RecordBatch::try_new(Arc::new(schema), columns)?, name))
}

/// `name` as a quoted SQL identifier.
fn quote(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Checks what can be checked before anything is planned (bounds, the
/// unit, the columns' presence and types), with the messages `cohort dp`
/// has always given: a refusal here spends nothing.
fn precheck(batch: &RecordBatch, request: &Request) -> Result<()> {
    if request.max_rows == 0 {
        return Err(Error::Invalid("--max-rows must be at least 1".into()));
    }
    if request
        .deadline
        .is_some_and(|d| d > std::time::Duration::from_secs(24 * 3_600))
    {
        return Err(Error::Invalid(
            "--deadline-ms must be at most a day (86400000)".into(),
        ));
    }
    if let Some(unit) = &request.unit {
        column_of(batch, unit)?;
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
            if *lower == 0.0 && *upper == 0.0 {
                return Err(Error::Invalid(
                    "--lower 0 --upper 0 make the sum constant: there is nothing to release".into(),
                ));
            }
            numeric(batch, c)
        }
        Statistic::Keys { column: c, .. } | Statistic::Quantile { column: c, .. }
            if !matches!(request.privacy, Privacy::Pure { .. }) =>
        {
            Err(Error::Invalid(format!(
                "key selection and quantiles take --epsilon, not --rho (column `{c}`)"
            )))
        }
        Statistic::Quantile {
            column: c,
            alpha,
            candidates,
        } => {
            if candidates.is_empty()
                || candidates.iter().any(|c| !c.is_finite())
                || candidates.windows(2).any(|w| w[0] >= w[1])
            {
                return Err(Error::Invalid(
                    "--candidates must be finite and strictly increasing (sort them and remove \
                     duplicates)"
                        .into(),
                ));
            }
            if !(0.0..=1.0).contains(alpha) {
                return Err(Error::Invalid(format!(
                    "--alpha {alpha} must be in [0, 1]; 0.5 is the median"
                )));
            }
            numeric(batch, c)
        }
        Statistic::Histogram { column: c, .. } | Statistic::Keys { column: c, .. } => {
            column_of(batch, c).map(|_| ())
        }
    }
}

fn column_of<'a>(batch: &'a RecordBatch, name: &str) -> Result<&'a ArrayRef> {
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

fn numeric(batch: &RecordBatch, name: &str) -> Result<()> {
    let c = column_of(batch, name)?;
    if !c.data_type().is_numeric() {
        return Err(Error::Invalid(format!(
            "column `{name}` is {}, not numeric",
            c.data_type()
        )));
    }
    Ok(())
}

/// What `cohort dp` prints, from the planned path's outcome: the plan's one
/// release, its noisy value(s) and 95% error, its cost and the debit.
fn outcome_of(request: &Request, outcome: SqlOutcome) -> Outcome {
    let aggregate = outcome.plan.first();
    let planned = aggregate.and_then(|a| a.outputs.first());
    let released = outcome.releases.first();
    let scale = planned
        .and_then(|p| p.scale.first().copied())
        .unwrap_or(0.0);
    let accuracy_95 = released
        .and_then(|r| r.error_95.first().copied())
        .or_else(|| planned.map(|p| p.error_95.at_count(0.0)))
        .unwrap_or(0.0);
    let mechanism = match planned.map(|p| p.mechanism.as_str()) {
        _ if matches!(request.statistic, Statistic::Keys { .. }) => "LaplaceThreshold",
        Some(m) if m.starts_with("discrete Gaussian") => "DiscreteGaussian",
        Some(m) if m.starts_with("discrete Laplace") => "DiscreteLaplace",
        Some(m) if m.starts_with("exponential") => "ExponentialQuantile",
        Some(m) => m,
        None => "none",
    }
    .to_string();
    let first = released.and_then(|r| r.values.first().copied());
    let (statistic, value) = match &request.statistic {
        Statistic::Count => (
            "count".to_string(),
            serde_json::json!(first.map(|v| v as i64)),
        ),
        Statistic::Sum {
            column,
            lower,
            upper,
        } => (
            format!("sum({column}) clamped to [{lower}, {upper}]"),
            serde_json::json!(first),
        ),
        Statistic::Mean {
            column,
            lower,
            upper,
        } => (
            format!("mean({column}) clamped to [{lower}, {upper}]"),
            serde_json::json!(first),
        ),
        Statistic::Histogram { column, domain } => {
            let mut counts = serde_json::Map::new();
            for value in domain {
                let count = outcome
                    .rows
                    .iter()
                    .find(|row| row.first().and_then(|key| key.as_str()) == Some(value.as_str()))
                    .and_then(|row| row.get(1).cloned())
                    .unwrap_or(serde_json::Value::Null);
                counts.insert(value.clone(), count);
            }
            (
                format!("histogram({column}) over {} public values", domain.len()),
                counts.into(),
            )
        }
        Statistic::Keys { column, .. } => {
            let kept: serde_json::Map<String, serde_json::Value> = outcome
                .rows
                .iter()
                .filter_map(|row| {
                    let key = match row.first()? {
                        serde_json::Value::String(s) => s.clone(),
                        other => other.to_string(),
                    };
                    Some((key, row.get(1)?.clone()))
                })
                .collect();
            let threshold = aggregate.and_then(|a| match a.key_selection {
                Some(Charge::Approx { epsilon, delta }) => {
                    KeyThreshold::calibrate(a.max_groups, 1, epsilon, delta)
                        .ok()
                        .map(|t| t.threshold())
                }
                _ => None,
            });
            let statistic = match threshold {
                Some(t) => format!("frequent values of {column} (threshold {t})"),
                None => format!("frequent values of {column}"),
            };
            (statistic, kept.into())
        }
        Statistic::Quantile { column, alpha, .. } => (
            format!("quantile {alpha} of {column}"),
            serde_json::json!(first),
        ),
    };
    Outcome {
        statistic,
        value,
        mechanism,
        scale,
        accuracy_95,
        charge: outcome.cost,
        debit: outcome.debit,
    }
}

#[cfg(test)]
mod tests {
    use arrow::array::{Float64Array, StringArray};

    use super::*;

    /// Patient p0 has 50 visits, the first two of cost 100, the others of
    /// cost 0; p1..=p30 one visit of cost 10 each; and `nulls` rows have no
    /// patient.
    fn visits(nulls: usize) -> RecordBatch {
        let mut patients: Vec<Option<String>> = vec![Some("p0".into()); 50];
        let mut costs = vec![0.0; 50];
        costs[..2].fill(100.0);
        for i in 1..=30 {
            patients.push(Some(format!("p{i}")));
            costs.push(10.0);
        }
        for _ in 0..nulls {
            patients.push(None);
            costs.push(10.0);
        }
        let schema = Schema::new(vec![
            Field::new("patient", DataType::Utf8, true),
            Field::new("cost", DataType::Float64, true),
        ]);
        RecordBatch::try_new(
            Arc::new(schema),
            vec![
                Arc::new(StringArray::from(patients)),
                Arc::new(Float64Array::from(costs)),
            ],
        )
        .unwrap()
    }

    fn request(statistic: Statistic, epsilon: f64) -> Request {
        Request {
            statistic,
            unit: Some("patient".into()),
            max_rows: 2,
            privacy: Privacy::Pure { epsilon },
            deadline: None,
            budget: None,
            query_id: None,
        }
    }

    fn budget(dir: &Path, epsilon: &str) -> PathBuf {
        let file = dir.join("budget.json");
        let total = cohort_anonymizer::accountant::Budget::Pure {
            epsilon: epsilon.parse().unwrap(),
        };
        save_budget(&file, &Accountant::new(total)).unwrap();
        file
    }

    #[test]
    fn each_statistic_is_one_statement_over_a_one_table_policy() {
        let batch = visits(0);
        let sum = Statistic::Sum {
            column: "cost".into(),
            lower: 0.0,
            upper: 50.0,
        };
        let (study, query, door) = planned(&batch, &request(sum, 1.0)).unwrap();
        assert_eq!(query.sql, r#"SELECT SUM("cost") FROM "input""#);
        assert_eq!(door.remaining, Remaining::Options);
        assert!(door.check.is_some(), "null units are checked");
        let policy = &study.policy;
        assert_eq!(policy.privacy_unit, "patient");
        assert_eq!(policy.contribution.max_rows, 2);
        assert_eq!(
            policy.contribution.sampling,
            Sampling::FirstBy(vec!["dp_row".into()]),
            "a unit keeps its first rows in file order"
        );
        let cost = &policy.tables[TABLE].columns["cost"];
        assert_eq!((cost.lower, cost.upper), (Some(0.0), Some(50.0)));
        assert_eq!(policy.execution.release, ReleaseTiming::Immediate);

        // Without a unit, the row index is the unit: every row its own.
        let mut keys = request(
            Statistic::Keys {
                column: "patient".into(),
                delta: 1e-6,
            },
            1.0,
        );
        keys.unit = None;
        keys.deadline = Some(std::time::Duration::from_millis(250));
        let (study, query, door) = planned(&batch, &keys).unwrap();
        assert_eq!(
            query.sql,
            r#"SELECT "patient", COUNT(*) FROM "input" WHERE "patient" IS NOT NULL GROUP BY "patient""#
        );
        assert_eq!(query.delta, Some("0.000001".parse().unwrap()));
        assert!(door.check.is_none());
        assert_eq!(study.policy.privacy_unit, "dp_row");
        assert_eq!(study.policy.contribution.max_groups, 2);
        assert_eq!(study.policy.execution.release, ReleaseTiming::Deadline);
        assert_eq!(study.policy.execution.deadline_ms, 250);
    }

    #[test]
    fn a_count_is_bounded_per_unit_and_noised_by_the_planned_path() {
        let outcome = release(&visits(0), &request(Statistic::Count, 50.0)).unwrap();
        assert_eq!(outcome.statistic, "count");
        assert_eq!(outcome.mechanism, "DiscreteLaplace");
        assert_eq!(outcome.charge, "ε = 50");
        // Sensitivity is max_rows: scale = 2 / 50.
        assert!((outcome.scale - 0.04).abs() < 1e-9, "{outcome:?}");
        // p0 keeps 2 of its 50 rows.
        let value = outcome.value.as_i64().unwrap();
        assert!((value - 32).abs() <= 2, "{outcome:?}");
        assert!(outcome.debit.is_none());
    }

    #[test]
    fn a_unit_keeps_its_first_rows_in_file_order() {
        let mean = Statistic::Mean {
            column: "cost".into(),
            lower: 0.0,
            upper: 100.0,
        };
        // p0 keeps its 2 rows of 100, none of its 0s: (200 + 30 · 10) / 32.
        let outcome = release(&visits(0), &request(mean, 200.0)).unwrap();
        let value = outcome.value.as_f64().unwrap();
        assert!((value - 500.0 / 32.0).abs() < 0.5, "{outcome:?}");

        // A histogram: at most 2 rows in each of at most 2 groups per unit.
        // The column is read as text, as `cohort dp` always read it (10.0
        // is "10.0", not "10").
        let histogram = Statistic::Histogram {
            column: "cost".into(),
            domain: vec!["10.0".into(), "100.0".into(), "10".into()],
        };
        let outcome = release(&visits(0), &request(histogram, 400.0)).unwrap();
        assert_eq!(outcome.statistic, "histogram(cost) over 3 public values");
        let count = |value: &str| outcome.value[value].as_i64().unwrap();
        assert_eq!(
            (count("10.0"), count("100.0"), count("10")),
            (30, 2, 0),
            "{outcome:?}"
        );
    }

    #[test]
    fn a_quantile_chooses_among_its_candidates() {
        let quantile = Statistic::Quantile {
            column: "cost".into(),
            alpha: 0.5,
            candidates: vec![5.0, 10.0, 50.0],
        };
        let outcome = release(&visits(0), &request(quantile, 100.0)).unwrap();
        assert_eq!(outcome.mechanism, "ExponentialQuantile");
        assert_eq!(outcome.value.as_f64(), Some(10.0), "{outcome:?}");
    }

    #[test]
    fn a_null_unit_is_a_charged_failure_and_a_refusal_is_free() {
        let dir = tempfile::tempdir().unwrap();
        let file = budget(dir.path(), "1");
        let mut count = request(Statistic::Count, 0.25);
        count.budget = Some(file.clone());
        count.query_id = Some("nulls".into());
        let error = release(&visits(1), &count).unwrap_err();
        assert!(
            matches!(&error, Error::Charged { query_id, cost } if query_id == "nulls" && cost == "ε = 0.25"),
            "{error}"
        );
        assert_eq!(
            load_budget(&file).unwrap().remaining().to_string(),
            "ε = 0.75"
        );

        // Refused before anything is reserved: no such column, too much.
        let mut sum = request(
            Statistic::Sum {
                column: "weight".into(),
                lower: 0.0,
                upper: 1.0,
            },
            0.25,
        );
        sum.budget = Some(file.clone());
        let error = release(&visits(0), &sum).unwrap_err();
        assert!(error.to_string().contains("`weight`"), "{error}");
        count.query_id = None;
        count.privacy = Privacy::Pure { epsilon: 0.8 };
        let error = release(&visits(0), &count).unwrap_err();
        assert!(error.to_string().contains("budget exceeded"), "{error}");
        let accountant = load_budget(&file).unwrap();
        assert_eq!(accountant.remaining().to_string(), "ε = 0.75");
        assert_eq!(accountant.reserved().to_string(), "ε = 0");
    }
}
