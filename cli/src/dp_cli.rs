//! `cohort dp`, `cohort budget` and `cohort query FILE`: differentially
//! private releases and SQL over tables a policy file names.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::bail;
use clap::Subcommand;
use cohort_query_planner::distributed::RemoteEngine;
use serde::Serialize;

use crate::Cli;
use crate::cli_common::{emit, render_table, short};

/// `cohort query`: private SQL over a study's view, or over the tables a
/// policy file names.
#[derive(clap::Args)]
pub(crate) struct QueryArgs {
    #[command(flatten)]
    pub(crate) engine: EngineArgs,
    /// A study id on the ledger, or a study policy file (TOML) whose tables
    /// name their data with `source = "file.parquet"` (then --budget is the budget file).
    pub(crate) study: String,
    /// The SQL; prefix it with `EXPLAIN PRIVACY` to see the private plan without running it.
    #[arg(required_unless_present = "sql_file")]
    pub(crate) sql: Option<String>,
    /// Read the SQL from this file instead (an OHDSI analysis, say).
    #[arg(long, conflicts_with = "sql")]
    pub(crate) sql_file: Option<PathBuf>,
    /// Show the private plan (bounds, mechanisms, scales, cost, error) and spend nothing.
    #[arg(long)]
    pub(crate) explain: bool,
    /// ε of this query (else the policy's `query.epsilon`).
    #[arg(long)]
    pub(crate) epsilon: Option<String>,
    /// ρ of this query, for a zCDP budget (else the policy's `query.rho`).
    #[arg(long, conflicts_with = "epsilon")]
    pub(crate) rho: Option<String>,
    /// δ for DP key selection of GROUP BY keys without a public domain.
    #[arg(long)]
    pub(crate) delta: Option<String>,
    /// How to split the cost between outputs: `name=weight,...` (default: equal).
    #[arg(long, value_delimiter = ',')]
    pub(crate) split: Vec<String>,
    /// A budget file (`cohort budget init`) to debit; refused if it cannot pay.
    #[arg(long)]
    pub(crate) budget: Option<PathBuf>,
    /// The query's id: repeating it returns the stored answer, never new noise.
    #[arg(long)]
    pub(crate) query_id: Option<String>,
    /// The SQL's dialect: `standard`, or `ohdsi` for SqlRender's (what ATLAS,
    /// Achilles and HADES emit: `@cdmDatabaseSchema.person`, `COUNT_BIG`,
    /// `DATEDIFF`, `SELECT ... INTO #temp`), translated before planning.
    #[arg(long, value_enum, default_value_t = Dialect::Standard)]
    pub(crate) dialect: Dialect,
    /// A SqlRender parameter for `--dialect ohdsi`: `name=value` (repeatable).
    #[arg(long = "param", requires = "dialect")]
    pub(crate) params: Vec<String>,
}

/// Where a query's exact part runs (docs/BALLISTA.md).
#[derive(clap::Args, Debug, Clone)]
pub(crate) struct EngineArgs {
    /// Run the plan's exact part on this Ballista scheduler
    /// (`http://host:port` or `df://host:port`); the noise is drawn here.
    /// Default: the local engine.
    #[arg(long = "engine-scheduler", env = "COHORT_ENGINE_SCHEDULER")]
    pub(crate) scheduler: Option<String>,
    /// Partitions of a plan on the cluster (its executors' task slots).
    #[arg(
        long = "engine-partitions",
        env = "COHORT_ENGINE_PARTITIONS",
        default_value_t = 2
    )]
    pub(crate) partitions: usize,
}

impl EngineArgs {
    /// The cluster the flags name (checked to answer), if any.
    pub(crate) fn remote(&self) -> anyhow::Result<Option<Arc<dyn RemoteEngine>>> {
        self.scheduler
            .as_deref()
            .map(|s| crate::ballista_cli::cluster(s, self.partitions))
            .transpose()
    }
}

/// The SQL dialects `cohort query` reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Dialect {
    /// The planner's own SQL.
    Standard,
    /// OHDSI's SqlRender dialect (docs/OMOP.md).
    Ohdsi,
}

/// The query's SQL in the planner's dialect (an `EXPLAIN PRIVACY` prefix
/// is kept as is).
pub(crate) fn query_sql(a: &QueryArgs) -> anyhow::Result<String> {
    let sql = match (&a.sql, &a.sql_file) {
        (Some(sql), _) => sql.clone(),
        (None, Some(file)) => std::fs::read_to_string(file)
            .map_err(|e| anyhow::anyhow!("--sql-file {}: {e}", file.display()))?,
        (None, None) => bail!("give the SQL, or --sql-file"),
    };
    if a.dialect == Dialect::Standard {
        if !a.params.is_empty() {
            bail!("--param is for --dialect ohdsi");
        }
        return Ok(sql);
    }
    let mut params = std::collections::BTreeMap::new();
    for item in &a.params {
        let (name, value) = item
            .split_once('=')
            .ok_or_else(|| anyhow::anyhow!("--param {item}: expected name=value"))?;
        params.insert(name.trim().to_string(), value.to_string());
    }
    let trimmed = sql.trim_start();
    let prefix = "EXPLAIN PRIVACY";
    let (explain, body) = match trimmed.get(..prefix.len()) {
        Some(head) if head.eq_ignore_ascii_case(prefix) => (true, &trimmed[prefix.len()..]),
        _ => (false, trimmed),
    };
    let translated = cohort_query_planner::dialect::ohdsi(body, &params)
        .map_err(|e| anyhow::anyhow!("--dialect ohdsi: {e}"))?;
    Ok(if explain {
        format!("{prefix} {translated}")
    } else {
        translated
    })
}

/// `cohort dp`: one DP statistic from a CSV or Parquet table.
#[derive(clap::Args)]
pub(crate) struct DpArgs {
    /// The table (.csv or .parquet).
    #[arg(long)]
    pub(crate) input: PathBuf,
    /// Pure ε-DP (discrete Laplace noise).
    #[arg(long, required_unless_present = "rho")]
    pub(crate) epsilon: Option<f64>,
    /// ρ-zCDP (discrete Gaussian noise).
    #[arg(long, conflicts_with = "epsilon")]
    pub(crate) rho: Option<f64>,
    /// The privacy-unit column (the patient); without it every row is a unit.
    #[arg(long)]
    pub(crate) unit: Option<String>,
    /// The most rows one unit contributes (the first ones in file order).
    #[arg(long, default_value_t = 1)]
    pub(crate) max_rows: u32,
    /// A budget file (`cohort budget init`) to debit; refused if it cannot pay.
    #[arg(long)]
    pub(crate) budget: Option<PathBuf>,
    /// The debit's id in the budget file (a retry with the same id pays once).
    #[arg(long)]
    pub(crate) query_id: Option<String>,
    /// Release the outcome no earlier than this many milliseconds after the
    /// request, so that its timing says nothing of the data (0: at once).
    #[arg(long, default_value_t = 1_000)]
    pub(crate) deadline_ms: u64,
    #[command(subcommand)]
    pub(crate) statistic: StatisticCmd,
}

#[derive(Subcommand)]
pub(crate) enum StatisticCmd {
    /// The number of rows.
    Count,
    /// The sum of a column, values clamped to [lower, upper].
    Sum {
        #[arg(long)]
        column: String,
        #[arg(long, allow_hyphen_values = true)]
        lower: f64,
        #[arg(long, allow_hyphen_values = true)]
        upper: f64,
    },
    /// The mean of a column, values clamped to [lower, upper].
    Mean {
        #[arg(long)]
        column: String,
        #[arg(long, allow_hyphen_values = true)]
        lower: f64,
        #[arg(long, allow_hyphen_values = true)]
        upper: f64,
    },
    /// Counts per value over a public domain (comma-separated).
    Histogram {
        #[arg(long)]
        column: String,
        #[arg(long, value_delimiter = ',', required = true)]
        domain: Vec<String>,
    },
    /// The values frequent enough to publish, when the domain is not public.
    Keys {
        #[arg(long)]
        column: String,
        /// The δ of the noisy threshold.
        #[arg(long)]
        delta: f64,
    },
    /// A quantile (0.5: the median), chosen among candidate values.
    Quantile {
        #[arg(long)]
        column: String,
        #[arg(long, default_value_t = 0.5)]
        alpha: f64,
        /// Candidate values, comma-separated.
        #[arg(
            long,
            value_delimiter = ',',
            required = true,
            allow_hyphen_values = true
        )]
        candidates: Vec<f64>,
    },
}

#[derive(Subcommand)]
pub(crate) enum BudgetCmd {
    /// Create a budget file: pure ε, (ε, δ) or ρ-zCDP.
    Init {
        /// The file to create.
        #[arg(long)]
        file: PathBuf,
        /// Total ε.
        #[arg(long, required_unless_present = "rho")]
        epsilon: Option<String>,
        /// Total δ (with --epsilon).
        #[arg(long, requires = "epsilon")]
        delta: Option<String>,
        /// Total ρ.
        #[arg(long, conflicts_with = "epsilon")]
        rho: Option<String>,
    },
    /// What a budget file holds: total, committed, reserved, remaining.
    Show {
        /// The budget file.
        #[arg(long)]
        file: PathBuf,
    },
    /// Cancel a reservation left by a run that stopped before committing
    /// (`cohort dp` prints nothing before it commits, so nothing was released).
    Release {
        /// The budget file.
        #[arg(long)]
        file: PathBuf,
        /// The query id whose reservation to cancel.
        #[arg(long)]
        query_id: String,
    },
}

pub(crate) fn dp_release(cli: &Cli, a: &DpArgs) -> anyhow::Result<ExitCode> {
    use cohort_anonymizer::dp::Privacy;
    use cohort_engine::release::{self, Request, Statistic};

    let privacy = match (a.epsilon, a.rho) {
        (Some(epsilon), None) => Privacy::Pure { epsilon },
        (None, Some(rho)) => Privacy::Zcdp { rho },
        _ => bail!("give --epsilon or --rho"),
    };
    let statistic = match &a.statistic {
        StatisticCmd::Count => Statistic::Count,
        StatisticCmd::Sum {
            column,
            lower,
            upper,
        } => Statistic::Sum {
            column: column.clone(),
            lower: *lower,
            upper: *upper,
        },
        StatisticCmd::Mean {
            column,
            lower,
            upper,
        } => Statistic::Mean {
            column: column.clone(),
            lower: *lower,
            upper: *upper,
        },
        StatisticCmd::Histogram { column, domain } => Statistic::Histogram {
            column: column.clone(),
            domain: domain.clone(),
        },
        StatisticCmd::Keys { column, delta } => Statistic::Keys {
            column: column.clone(),
            delta: *delta,
        },
        StatisticCmd::Quantile {
            column,
            alpha,
            candidates,
        } => Statistic::Quantile {
            column: column.clone(),
            alpha: *alpha,
            candidates: candidates.clone(),
        },
    };
    let request = Request {
        statistic,
        unit: a.unit.clone(),
        max_rows: a.max_rows,
        privacy,
        deadline: (a.deadline_ms > 0).then(|| std::time::Duration::from_millis(a.deadline_ms)),
        budget: a.budget.clone(),
        query_id: a.query_id.clone(),
    };
    request.charge()?;
    let table = cohort_engine::storage::tabular::read(&a.input)?;
    let outcome = release::release(&table, &request)?;
    emit(cli, &outcome, || {
        let mut lines = vec![
            format!("{} = {}", outcome.statistic, outcome.value),
            format!(
                "  {} noise, scale {:.4}, 95% within ±{:.4}; cost {}",
                outcome.mechanism, outcome.scale, outcome.accuracy_95, outcome.charge
            ),
        ];
        if let Some(d) = &outcome.debit {
            lines.push(format!(
                "  debited as {}; remaining {}",
                d.query_id, d.remaining
            ));
        }
        lines.join("\n")
    });
    Ok(ExitCode::SUCCESS)
}

/// `--epsilon`, `--rho`, `--delta` and `--split` of `cohort query`, parsed.
pub(crate) struct QueryOptions {
    pub(crate) epsilon: Option<cohort_anonymizer::accountant::Amount>,
    pub(crate) rho: Option<cohort_anonymizer::accountant::Amount>,
    pub(crate) delta: Option<cohort_anonymizer::accountant::Amount>,
    pub(crate) weights: std::collections::BTreeMap<String, u32>,
}

pub(crate) fn query_options(a: &QueryArgs) -> anyhow::Result<QueryOptions> {
    use cohort_anonymizer::accountant::Amount;
    let amount = |name: &str, v: &Option<String>| -> anyhow::Result<Option<Amount>> {
        v.as_deref()
            .map(|v| {
                v.parse::<Amount>()
                    .map_err(|e| anyhow::anyhow!("--{name} {v}: {e}"))
            })
            .transpose()
    };
    let mut weights = std::collections::BTreeMap::new();
    for item in &a.split {
        let (name, weight) = item
            .rsplit_once('=')
            .ok_or_else(|| anyhow::anyhow!("--split {item}: expected name=weight"))?;
        let weight: u32 = weight
            .parse()
            .map_err(|_| anyhow::anyhow!("--split {item}: the weight must be a whole number"))?;
        weights.insert(name.to_string(), weight);
    }
    Ok(QueryOptions {
        epsilon: amount("epsilon", &a.epsilon)?,
        rho: amount("rho", &a.rho)?,
        delta: amount("delta", &a.delta)?,
        weights,
    })
}

pub(crate) fn sql_query(cli: &Cli, a: &QueryArgs) -> anyhow::Result<ExitCode> {
    use cohort_engine::sql::{self, SqlQuery, SqlRequest};

    let QueryOptions {
        epsilon,
        rho,
        delta,
        weights,
    } = query_options(a)?;
    let request = SqlRequest {
        study: PathBuf::from(&a.study),
        query: SqlQuery {
            sql: query_sql(a)?,
            budget: a.budget.clone(),
            query_id: a.query_id.clone(),
            epsilon,
            rho,
            delta,
            weights,
            explain: a.explain,
            engine: a.engine.remote()?,
        },
    };
    let outcome = sql::query(&request)?;
    emit(cli, &outcome, || {
        if let Some(explain) = &outcome.explain {
            return explain.trim_end().to_string();
        }
        let mut lines = render_table(&outcome.columns, &outcome.rows);
        lines.push(String::new());
        lines.push("each release with its 95% error:".into());
        for r in &outcome.releases {
            let parts: Vec<String> = r
                .groups
                .iter()
                .zip(r.values.iter().zip(&r.error_95))
                .map(|(g, (v, e))| {
                    let label = if g.is_empty() {
                        String::new()
                    } else {
                        format!("{g}: ")
                    };
                    if v.is_nan() {
                        format!("{label}withheld (small cell)")
                    } else {
                        format!("{label}{} ± {}", short(*v), short(*e))
                    }
                })
                .collect();
            lines.push(format!("  {}  {}", r.output, parts.join("; ")));
        }
        let mut summary = format!("cost {}", outcome.cost);
        if let Some(d) = &outcome.debit {
            summary.push_str(&format!(
                "; debited as {}, remaining {}",
                d.query_id, d.remaining
            ));
        }
        lines.push(summary);
        lines.join("\n")
    });
    Ok(ExitCode::SUCCESS)
}

pub(crate) fn budget(cli: &Cli, cmd: &BudgetCmd) -> anyhow::Result<ExitCode> {
    use cohort_anonymizer::accountant::{Accountant, Amount, Budget};
    use cohort_engine::release::{load_budget, save_budget};

    let amount = |name: &str, v: &str| -> anyhow::Result<Amount> {
        v.parse::<Amount>()
            .map_err(|e| anyhow::anyhow!("--{name} {v}: {e}"))
    };
    let accountant = match cmd {
        BudgetCmd::Init {
            file,
            epsilon,
            delta,
            rho,
        } => {
            if file.exists() {
                bail!(
                    "{} exists; a budget file is never overwritten (it records spending)",
                    file.display()
                );
            }
            let budget = match (epsilon, delta, rho) {
                (Some(e), None, None) => Budget::Pure {
                    epsilon: amount("epsilon", e)?,
                },
                (Some(e), Some(d), None) => Budget::Approx {
                    epsilon: amount("epsilon", e)?,
                    delta: amount("delta", d)?,
                },
                (None, None, Some(r)) => Budget::Zcdp {
                    rho: amount("rho", r)?,
                },
                _ => bail!("give --epsilon [--delta] or --rho"),
            };
            let a = Accountant::new(budget);
            save_budget(file, &a)?;
            a
        }
        BudgetCmd::Show { file } => load_budget(file)?,
        BudgetCmd::Release { file, query_id } => {
            let mut a = load_budget(file)?;
            a.release(&cohort_anonymizer::accountant::QueryId::new(
                query_id.as_str(),
            ))?;
            save_budget(file, &a)?;
            a
        }
    };
    #[derive(Serialize)]
    struct Summary {
        budget: String,
        committed: String,
        reserved: String,
        remaining: String,
        queries: usize,
    }
    let s = Summary {
        budget: accountant.budget().to_string(),
        committed: accountant.committed().to_string(),
        reserved: accountant.reserved().to_string(),
        remaining: accountant.remaining().to_string(),
        queries: accountant.committed_queries().count(),
    };
    emit(cli, &s, || {
        format!(
            "budget {}\n  committed {} over {} queries\n  reserved  {}\n  remaining {}",
            s.budget, s.committed, s.queries, s.reserved, s.remaining
        )
    });
    Ok(ExitCode::SUCCESS)
}
