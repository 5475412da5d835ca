//! Private SQL over table files, paid for from a budget file: what
//! `cohort query` runs for a study described by a policy file, before the
//! research views and the ledger take over (the research workflow).
//!
//! The policy file is the query planner's [`StudyPolicy`]; each table names
//! its data with `source = "file.parquet"` (or `.csv`), relative to the
//! policy file. It runs under the research path's invariant: a query is
//! planned and costed first (a refusal spends nothing), then, with the
//! budget file locked for the whole reserve-run-commit (two runs cannot
//! overspend), its cost is reserved, the plan runs against the deadline of
//! the policy's `[execution]` (from the plan and the policy's public
//! `population`), and the cost is committed whatever the ending: an error, a
//! resource limit or an overrun is the same charged, data-free failure,
//! and the outcome is released at the deadline.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{Array, RecordBatch};
use cohort_anonymizer::accountant::{Amount, Charge, QueryId};
use cohort_query_planner::{
    PlannedAggregate, QueryOptions, ReleasedAggregate, StudyPolicy, TableProvider, sources,
};
use serde::Serialize;

use crate::deadline::{self, Clock, SystemClock};
use crate::release::{BudgetLock, Debit, load_budget, save_budget};
use crate::{Error, Result};

/// What to ask, of which study, with what budget.
#[derive(Debug, Clone)]
pub struct SqlRequest {
    /// The study policy (TOML).
    pub study: PathBuf,
    /// The query, possibly prefixed by `EXPLAIN PRIVACY`.
    pub sql: String,
    /// A budget file (`cohort budget init`) to debit; without one nothing
    /// is accounted and the budget's kind follows the options.
    pub budget: Option<PathBuf>,
    /// The debit's id (a retry with the same id is refused by the budget).
    pub query_id: Option<String>,
    /// ε of the query (else the policy's).
    pub epsilon: Option<Amount>,
    /// ρ of the query (zCDP).
    pub rho: Option<Amount>,
    /// δ for DP key selection.
    pub delta: Option<Amount>,
    /// Split weights by output column.
    pub weights: BTreeMap<String, u32>,
    /// Only show the private plan (`--explain`).
    pub explain: bool,
}

/// What `cohort query` prints.
#[derive(Debug, Serialize)]
pub struct SqlOutcome {
    /// The answer's column names.
    pub columns: Vec<String>,
    /// The answer's rows.
    pub rows: Vec<Vec<serde_json::Value>>,
    /// Every noisy release with its 95% error per group.
    pub releases: Vec<ReleasedAggregate>,
    /// The plan's DP aggregates (bounds, mechanisms, scales, costs).
    pub plan: Vec<PlannedAggregate>,
    /// What the query cost.
    pub cost: String,
    /// When the outcome was released, in milliseconds after the request
    /// (absent when the policy releases immediately).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deadline_ms: Option<u64>,
    /// The debit, when a budget file was used.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub debit: Option<Debit>,
    /// The text of `EXPLAIN PRIVACY`, when only the plan was asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub explain: Option<String>,
}

/// Plans, pays for and runs `request`.
pub fn query(request: &SqlRequest) -> Result<SqlOutcome> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::io("starting the query runtime for", &request.study, e))?;
    runtime.block_on(run(request))
}

async fn run(request: &SqlRequest) -> Result<SqlOutcome> {
    let clock: Arc<dyn Clock> = Arc::new(SystemClock::new());
    let text = std::fs::read_to_string(&request.study)
        .map_err(|e| Error::io("reading", &request.study, e))?;
    let policy = StudyPolicy::from_toml(&text)?;
    let population = policy.execution.population.unwrap_or(0);
    let base = request.study.parent().unwrap_or(Path::new("."));
    let tables = load_tables(&policy, base).await?;
    let planner = cohort_query_planner::Planner::new(policy, tables)?;

    // Held from the budget's reading to its last write.
    let _lock = match &request.budget {
        Some(file) => Some(BudgetLock::acquire(file)?),
        None => None,
    };
    let mut accountant = match &request.budget {
        Some(file) => Some(load_budget(file)?),
        None => None,
    };
    let remaining = match &accountant {
        Some(accountant) => accountant.remaining(),
        None => unlimited(request),
    };
    let options = QueryOptions {
        remaining,
        epsilon: request.epsilon,
        rho: request.rho,
        delta: request.delta,
        weights: request.weights.clone(),
    };
    let plan = planner.plan(&request.sql, &options).await?;
    let aggregates = plan.aggregates();
    let deadline = plan.deadline(population);
    let deadline_ms = deadline.map(|d| d.as_millis() as u64);
    if request.explain || plan.is_explain() {
        return Ok(SqlOutcome {
            columns: vec![],
            rows: vec![],
            releases: vec![],
            plan: aggregates,
            cost: plan.cost().to_string(),
            deadline_ms,
            debit: None,
            explain: Some(plan.explain()),
        });
    }

    let cost = plan.cost();
    let debit = match (&mut accountant, &request.budget) {
        (Some(accountant), Some(file)) => {
            let id = QueryId::new(
                request
                    .query_id
                    .clone()
                    .unwrap_or_else(crate::release::new_query_id),
            );
            accountant.reserve(id.clone(), cost)?;
            save_budget(file, accountant)?;
            Some((id, file.clone()))
        }
        _ => None,
    };
    // Every ending after the reservation is charged, and released at the
    // deadline counted from here.
    let expires = deadline.map(|d| clock.now() + d);
    let ended = deadline::run_until(
        &clock,
        expires,
        &tokio::sync::Notify::new(),
        || {},
        plan.execute(),
    )
    .await;
    let query_id = debit.as_ref().map_or_else(
        || "(no budget)".to_string(),
        |(id, _)| id.as_str().to_string(),
    );
    let debit = match (debit, &mut accountant) {
        (Some((id, file)), Some(accountant)) => {
            accountant.commit(&id, None)?;
            save_budget(&file, accountant)?;
            Some(Debit {
                query_id: id.as_str().to_string(),
                remaining: accountant.remaining().to_string(),
            })
        }
        _ => None,
    };
    if let Some(at) = expires {
        clock.release_at(at).await;
    }
    let answer = ended.map_err(|_| Error::Charged {
        query_id,
        cost: cost.to_string(),
    })?;
    let (columns, rows) = table(&answer.batches)?;
    Ok(SqlOutcome {
        columns,
        rows,
        releases: answer.releases,
        plan: aggregates,
        cost: answer.cost.to_string(),
        deadline_ms,
        debit,
        explain: None,
    })
}

/// Without a budget file, the query may spend what it asks, in the kind
/// its options name: ρ-zCDP with `--rho`, (ε, δ) with `--delta`, else pure ε.
fn unlimited(request: &SqlRequest) -> Charge {
    if request.rho.is_some() {
        Charge::Zcdp { rho: Amount::MAX }
    } else if request.delta.is_some() {
        Charge::Approx {
            epsilon: Amount::MAX,
            delta: Amount::MAX,
        }
    } else {
        Charge::Pure {
            epsilon: Amount::MAX,
        }
    }
}

/// The policy's tables, from their `source` files.
async fn load_tables(
    policy: &StudyPolicy,
    base: &Path,
) -> Result<HashMap<String, Arc<dyn TableProvider>>> {
    let mut tables = HashMap::new();
    for (name, table) in &policy.tables {
        let source = table.source.as_ref().ok_or_else(|| {
            Error::Invalid(format!(
                "table `{name}` has no `source` file in the study policy"
            ))
        })?;
        let path = base.join(source);
        let provider = match path.extension().and_then(|e| e.to_str()) {
            Some("parquet") => sources::parquet(&path).await?,
            _ => {
                let batch = crate::storage::tabular::read(&path)?;
                sources::batches(batch.schema(), vec![batch])?
            }
        };
        tables.insert(name.clone(), provider);
    }
    Ok(tables)
}

/// Column names and rows of the answer as JSON values.
pub(crate) fn table(batches: &[RecordBatch]) -> Result<(Vec<String>, Vec<Vec<serde_json::Value>>)> {
    let columns = batches
        .first()
        .map(|b| {
            b.schema()
                .fields()
                .iter()
                .map(|f| f.name().clone())
                .collect()
        })
        .unwrap_or_default();
    let mut rows = Vec::new();
    for batch in batches {
        for row in 0..batch.num_rows() {
            let mut cells = Vec::with_capacity(batch.num_columns());
            for column in batch.columns() {
                cells.push(cell(column.as_ref(), row)?);
            }
            rows.push(cells);
        }
    }
    Ok((columns, rows))
}

fn cell(array: &dyn Array, row: usize) -> Result<serde_json::Value> {
    use arrow::array::AsArray;
    use arrow::datatypes::{DataType, Float64Type, Int64Type};
    use arrow::util::display::{ArrayFormatter, FormatOptions};

    if array.is_null(row) {
        return Ok(serde_json::Value::Null);
    }
    let data_type = array.data_type();
    Ok(if data_type.is_integer() {
        let values = arrow::compute::cast(&array.slice(row, 1), &DataType::Int64)?;
        values.as_primitive::<Int64Type>().value(0).into()
    } else if data_type.is_numeric() {
        let values = arrow::compute::cast(&array.slice(row, 1), &DataType::Float64)?;
        values.as_primitive::<Float64Type>().value(0).into()
    } else if let DataType::Boolean = data_type {
        array.as_boolean().value(row).into()
    } else {
        ArrayFormatter::try_new(array, &FormatOptions::default())?
            .value(row)
            .to_string()
            .into()
    })
}
