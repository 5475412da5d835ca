//! Private SQL over tables, paid for from a budget file: what
//! `cohort query FILE` runs for a study described by a policy file, and
//! what `cohort dp` runs for its one statistic ([`crate::release`] builds
//! the policy and the SQL), before the research views and the ledger take
//! over (the research workflow).
//!
//! The policy file is the query planner's [`StudyPolicy`]; each table names
//! its data with `source = "file.parquet"` (or `.csv`), relative to the
//! policy file ([`Study::load`]). Every query, whichever door it came in by,
//! runs through [`run`] under the research path's invariant: it is planned
//! and costed first (a refusal spends nothing), then, with the budget file
//! locked for the whole reserve-run-commit (two runs cannot overspend), its
//! cost is reserved, the plan runs against the deadline of the policy's
//! `[execution]` (from the plan and the policy's public `population`), and
//! the cost is committed whatever the ending: an error, a resource limit or
//! an overrun is the same charged, data-free failure, and the outcome is
//! released at the deadline.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{Array, RecordBatch};
use cohort_anonymizer::accountant::{Amount, Charge, QueryId};
use cohort_query_planner::{
    PlannedAggregate, QueryOptions, ReleasedAggregate, StudyPolicy, TableProvider, sources,
};
use serde::Serialize;

use crate::budget::{BudgetLock, Debit, load_budget, new_query_id, save_budget};
use crate::deadline::{self, Clock, SystemClock};
use crate::{Error, Result};

/// What to ask, of which study policy file.
#[derive(Debug, Clone)]
pub struct SqlRequest {
    /// The study policy (TOML).
    pub study: PathBuf,
    /// The query and how it is paid for.
    pub query: SqlQuery,
}

/// A query and how it is paid for, whatever its tables come from.
#[derive(Debug, Clone, Default)]
pub struct SqlQuery {
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
    /// Where the plan's exact part runs: a Ballista cluster, else here.
    pub engine: Option<Arc<dyn cohort_query_planner::distributed::RemoteEngine>>,
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

/// A study policy with its tables loaded: what [`run`] plans over.
pub struct Study {
    /// The policy.
    pub policy: StudyPolicy,
    /// Its tables, by the policy's names.
    pub tables: HashMap<String, Arc<dyn TableProvider>>,
    /// Its public tables (`[public.NAME] source = ...`), read in full.
    pub public: cohort_query_planner::policy::PublicTables,
}

impl Study {
    /// Reads the policy file and opens the tables its `source`s name.
    pub async fn load(policy_file: &Path) -> Result<Study> {
        let text = std::fs::read_to_string(policy_file)
            .map_err(|e| Error::io("reading", policy_file, e))?;
        let policy = StudyPolicy::from_toml(&text)?;
        let base = policy_file.parent().unwrap_or(Path::new("."));
        let tables = load_tables(&policy, base).await?;
        let mut public = cohort_query_planner::policy::PublicTables::new();
        for (name, table) in &policy.public {
            let source = table.source.as_ref().ok_or_else(|| {
                Error::Invalid(format!(
                    "public table `{name}` has no `source` file in the study policy"
                ))
            })?;
            public.insert(
                name.clone(),
                crate::storage::tabular::read(&base.join(source))?,
            );
        }
        Ok(Study {
            policy,
            tables,
            public,
        })
    }
}

/// What the planner is told is left of the budget, which decides the kind
/// of noise it plans.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Remaining {
    /// What the budget file has left: its kind picks the noise (pure ε or
    /// (ε, δ), which alone pays for DP key selection: discrete Laplace; ρ:
    /// discrete Gaussian), and the planner refuses, naming the rule, what
    /// it cannot pay (`cohort query FILE`).
    #[default]
    Budget,
    /// No limit, in the kind the query's options name (ρ: zCDP, δ: (ε, δ),
    /// else pure ε), so the options pick the noise; the reservation then
    /// converts the cost into the budget file's kind and refuses, spending
    /// nothing, what it cannot pay (`cohort dp`, whose `--epsilon` or
    /// `--rho` always picked the noise).
    Options,
}

/// A check of the data that runs after the reservation, as part of the
/// charged work: its failure is the charged, data-free failure.
pub type DataCheck = Box<dyn FnOnce() -> Result<()> + Send>;

/// What differs between the front doors that share [`run`].
#[derive(Default)]
pub struct Door {
    /// What the planner is told is left.
    pub remaining: Remaining,
    /// Run before the plan, under its charge and deadline.
    pub check: Option<DataCheck>,
}

/// Plans, pays for and runs `request` (`cohort query FILE`).
pub fn query(request: &SqlRequest) -> Result<SqlOutcome> {
    block_on(&request.study, async {
        let study = Study::load(&request.study).await?;
        run(study, &request.query, Door::default()).await
    })
}

/// Runs `work` on a runtime of its own (`what` names it in an error).
pub(crate) fn block_on<T>(what: &Path, work: impl Future<Output = Result<T>>) -> Result<T> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::io("starting the query runtime for", what, e))?;
    runtime.block_on(work)
}

/// Plans `query` over `study`, and unless it only explains, pays for it
/// and runs it: the one implementation of plan, reserve, run, commit and
/// release that `cohort query FILE` and `cohort dp` share.
pub async fn run(study: Study, query: &SqlQuery, door: Door) -> Result<SqlOutcome> {
    let clock: Arc<dyn Clock> = Arc::new(SystemClock::new());
    let population = study.policy.execution.population.unwrap_or(0);
    let planner = cohort_query_planner::Planner::with_public_tables(
        study.policy,
        study.tables,
        study.public,
    )?;

    // Held from the budget's reading to its last write.
    let _lock = match &query.budget {
        Some(file) => Some(BudgetLock::acquire(file)?),
        None => None,
    };
    let mut accountant = match &query.budget {
        Some(file) => Some(load_budget(file)?),
        None => None,
    };
    let remaining = match (&accountant, door.remaining) {
        (Some(accountant), Remaining::Budget) => accountant.remaining(),
        _ => unlimited(query),
    };
    let options = QueryOptions {
        remaining,
        epsilon: query.epsilon,
        rho: query.rho,
        delta: query.delta,
        weights: query.weights.clone(),
    };
    let plan = planner.plan(&query.sql, &options).await?;
    let aggregates = plan.aggregates();
    let deadline = plan.deadline(population);
    let deadline_ms = deadline.map(|d| d.as_millis() as u64);
    if query.explain || plan.is_explain() {
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
    let debit = match (&mut accountant, &query.budget) {
        (Some(accountant), Some(file)) => {
            let id = QueryId::new(query.query_id.clone().unwrap_or_else(new_query_id));
            accountant.reserve(id.clone(), cost)?;
            save_budget(file, accountant)?;
            Some((id, file.clone()))
        }
        _ => None,
    };
    // Every ending after the reservation is charged, and released at the
    // deadline counted from here.
    let expires = deadline.map(|d| clock.now() + d);
    let check = door.check;
    let engine = query.engine.clone();
    let work = async move {
        if let Some(check) = check {
            check()?;
        }
        plan.execute_on(engine).await.map_err(Error::from)
    };
    let ended =
        deadline::run_until(&clock, expires, &tokio::sync::Notify::new(), || {}, work).await;
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

/// Without a budget file (or with [`Remaining::Options`]), the planner lets
/// the query spend what it asks, in the kind its options name: ρ-zCDP with
/// `--rho`, (ε, δ) with `--delta`, else pure ε.
fn unlimited(query: &SqlQuery) -> Charge {
    if query.rho.is_some() {
        Charge::Zcdp { rho: Amount::MAX }
    } else if query.delta.is_some() {
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
