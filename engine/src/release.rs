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
use cohort_anonymizer::accountant::{Amount, Charge};
use cohort_anonymizer::dp::{KeyThreshold, Privacy};
use cohort_query_planner::policy::{
    ColumnPolicy, Contribution, DomainValue, Execution, ReleaseTiming, Sampling, TablePolicy,
};
use cohort_query_planner::{StudyPolicy, sources};
use serde::Serialize;

use crate::sql::{self, DataCheck, Door, Remaining, SqlOutcome, SqlQuery, Study};
use crate::{Error, Result};

mod checks;
mod outcome;
mod translate;

pub use crate::budget::{BudgetLock, Debit, load_budget, new_query_id, save_budget};
use checks::precheck;
use outcome::outcome_of;
use translate::planned;

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

#[cfg(test)]
mod tests;
