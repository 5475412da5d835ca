//! A planned private query: the executable DataFusion plan, its releases
//! and their cost and expected error; `EXPLAIN PRIVACY` prints it.

use std::collections::HashMap;
use std::fmt::{self, Write};
use std::sync::Arc;

use arrow::array::RecordBatch;
use cohort_anonymizer::accountant::Charge;
use datafusion::logical_expr::{Expr, LogicalPlan};
use datafusion::prelude::SessionContext;
use futures::future::BoxFuture;
use serde::Serialize;

use crate::distributed::RemoteEngine;
use crate::encryption::EncryptedRelease;
use crate::error::Result;
use crate::facts::strip_alias;
use crate::nodes::{Keys, NoisyAggregate, ReleasedAggregate, Site};
use crate::policy::{Bounds, Execution, ReleaseTiming};
use crate::release::{ErrorBound, Noise, Statistic, round_sig, unit_scale};

/// A query's private plan. Executing it consumes it: every execution draws
/// fresh noise, so a plan is run at most once (a repeated query is a new
/// plan, and is paid for again).
pub struct PrivatePlan {
    sql: String,
    explain: bool,
    plan: LogicalPlan,
    sites: Vec<Arc<Site>>,
    cost: Charge,
    remaining: Charge,
    cap: Option<Charge>,
    execution: Execution,
    /// The study's tables (the deadline counts them).
    tables: usize,
    context: SessionContext,
    names: HashMap<String, String>,
}

/// One noisy release of a plan, as `EXPLAIN PRIVACY` shows it.
#[derive(Clone, Debug, Serialize)]
pub struct PlannedOutput {
    /// The output column it appears as.
    pub output: String,
    /// The aggregate, as written.
    pub aggregate: String,
    /// What is released.
    pub statistic: Statistic,
    /// The mechanism(s).
    pub mechanism: String,
    /// The clamping bounds, if any.
    pub bounds: Option<Bounds>,
    /// The L1 (pure) or L2 (zCDP) sensitivity of each noisy part, in the statistic's units.
    pub sensitivity: Vec<f64>,
    /// The noise scale of each part, in the statistic's units.
    pub scale: Vec<f64>,
    /// What it costs.
    pub charge: Charge,
    /// Its expected error (95%).
    pub error_95: ErrorBound,
    /// Set when it is computed under encryption: the layer and its cost.
    pub encrypted: Option<EncryptedRelease>,
}

/// The contribution bounding and keys of one DP aggregate.
#[derive(Clone, Debug, Serialize)]
pub struct PlannedAggregate {
    /// The `GROUP BY` keys, as written.
    pub keys: Vec<String>,
    /// How the released groups are chosen, in words.
    pub groups: String,
    /// Groups one patient adds to.
    pub max_groups: u32,
    /// Rows one patient adds to one group.
    pub max_rows: u32,
    /// How the kept rows are chosen.
    pub sampling: String,
    /// The privacy unit.
    pub unit: String,
    /// What key selection costs, when the keys are selected.
    pub key_selection: Option<Charge>,
    /// Its releases.
    pub outputs: Vec<PlannedOutput>,
}

/// The answer of an executed plan.
#[derive(Debug)]
pub struct PrivateAnswer {
    /// The result rows (the researcher's query over the noisy aggregates).
    pub batches: Vec<RecordBatch>,
    /// Every noisy release, per group, with its 95% error.
    pub releases: Vec<ReleasedAggregate>,
    /// What the answer cost.
    pub cost: Charge,
}

impl PrivatePlan {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        sql: String,
        explain: bool,
        plan: LogicalPlan,
        sites: Vec<Arc<Site>>,
        cost: Charge,
        remaining: Charge,
        cap: Option<Charge>,
        execution: Execution,
        tables: usize,
        context: SessionContext,
        names: HashMap<String, String>,
    ) -> PrivatePlan {
        PrivatePlan {
            sql,
            explain,
            plan,
            sites,
            cost,
            remaining,
            cap,
            execution,
            tables,
            context,
            names,
        }
    }

    /// Whether the query was `EXPLAIN PRIVACY ...` (show it, do not run it).
    pub fn is_explain(&self) -> bool {
        self.explain
    }

    /// The query, without `EXPLAIN PRIVACY`.
    pub fn sql(&self) -> &str {
        &self.sql
    }

    /// What running it costs, in the budget's kind.
    pub fn cost(&self) -> Charge {
        self.cost
    }

    /// The rewritten logical plan (before DataFusion's optimizer).
    pub fn logical_plan(&self) -> &LogicalPlan {
        &self.plan
    }

    /// When the outcome is released, counted from the start of execution:
    /// `None` when the policy releases immediately. A public function of
    /// the plan, the study's tables and `population`, the public number of
    /// patients (the consenting count), never of the data: the base, plus
    /// the per-patient time for every table of the study (a query's work
    /// includes loading the study's view, all of its tables), plus the
    /// encrypted work's estimate (from public sizes) times its factor.
    pub fn deadline(&self, population: u64) -> Option<std::time::Duration> {
        let e = &self.execution;
        if e.release == ReleaseTiming::Immediate {
            return None;
        }
        let mut seconds = e.deadline_ms as f64 / 1e3
            + e.per_patient_us as f64 * population as f64 * self.tables as f64 / 1e6;
        for site in &self.sites {
            let groups = match &site.keys {
                Keys::Public(domain) => domain.len().max(1),
                _ => 1,
            } as f64;
            for release in &site.releases {
                if let Some(estimate) = release.encrypted.as_ref().and_then(|e| e.estimate.as_ref())
                {
                    seconds += e.encrypted_factor * estimate.seconds * groups;
                }
            }
        }
        Some(std::time::Duration::from_secs_f64(seconds))
    }

    /// How the plan's work runs (memory, release timing).
    pub fn execution(&self) -> &Execution {
        &self.execution
    }

    /// The DP aggregates with their bounding and releases.
    pub fn aggregates(&self) -> Vec<PlannedAggregate> {
        self.sites
            .iter()
            .map(|site| PlannedAggregate {
                keys: site.key_names.clone(),
                groups: match &site.keys {
                    Keys::None => "one group (no GROUP BY)".to_string(),
                    Keys::Public(domain) => {
                        format!("public domain: all {} groups are released", domain.len())
                    }
                    Keys::Selected { threshold, .. } => match threshold {
                        Some(t) => format!(
                            "DP key selection: groups with a noisy patient count ≥ {} \
                             (Laplace scale {})",
                            t.threshold(),
                            round_sig(t.scale())
                        ),
                        None => "DP key selection".to_string(),
                    },
                },
                max_groups: site.max_groups,
                max_rows: site.max_rows,
                sampling: site.sampling.clone(),
                unit: site.unit.clone(),
                key_selection: match &site.keys {
                    Keys::Selected { charge, .. } => *charge,
                    _ => None,
                },
                outputs: site
                    .releases
                    .iter()
                    .filter_map(|release| {
                        let noise = release.noise.as_ref()?;
                        Some(PlannedOutput {
                            output: self
                                .names
                                .get(&release.output)
                                .cloned()
                                .unwrap_or_else(|| release.output.clone()),
                            aggregate: release.aggregate.clone(),
                            statistic: release.statistic.clone(),
                            mechanism: match &release.encrypted {
                                Some(e) => {
                                    format!("{} under {} encryption", noise.mechanism(), e.layer)
                                }
                                None => noise.mechanism(),
                            },
                            bounds: release.statistic.bounds(),
                            sensitivity: sensitivities(noise, &release.statistic),
                            scale: noise.scales(&release.statistic),
                            charge: release.charge?,
                            error_95: noise.error_bound(&release.statistic).ok()?,
                            encrypted: release.encrypted.clone(),
                        })
                    })
                    .collect(),
            })
            .collect()
    }

    /// The text of `EXPLAIN PRIVACY`.
    pub fn explain(&self) -> String {
        let mut out = String::new();
        let _ = self.write_explain(&mut out);
        out
    }

    fn write_explain(&self, out: &mut String) -> fmt::Result {
        writeln!(out, "EXPLAIN PRIVACY")?;
        writeln!(out, "query:     {}", self.sql)?;
        write!(out, "cost:      {}", self.cost)?;
        if let Some(cap) = self.cap {
            write!(out, " (per-query cap {cap})")?;
        }
        if unlimited(&self.remaining) {
            writeln!(out, "; no budget is debited")?;
        } else {
            writeln!(out, "; budget left before it: {}", self.remaining)?;
        }
        if self.sites.is_empty() {
            writeln!(out, "no patient data is read: nothing is released or spent")?;
        }
        if let Some(rules) = self.sites.iter().find_map(|site| site.small_cells.as_ref()) {
            writeln!(out, "small cells: {rules}")?;
        }
        for (index, aggregate) in self.aggregates().iter().enumerate() {
            writeln!(out)?;
            let keys = if aggregate.keys.is_empty() {
                "(no GROUP BY)".to_string()
            } else {
                format!("GROUP BY {}", aggregate.keys.join(", "))
            };
            writeln!(out, "aggregate {}: {keys}", index + 1)?;
            writeln!(out, "  groups:   {}", aggregate.groups)?;
            if let Some(charge) = aggregate.key_selection {
                writeln!(out, "            key selection costs {charge}")?;
            }
            writeln!(
                out,
                "  bounding: each {} adds to at most {} group(s), at most {} row(s) per group; \
                 rows kept: {}",
                aggregate.unit, aggregate.max_groups, aggregate.max_rows, aggregate.sampling
            )?;
            let header = [
                "output",
                "aggregate",
                "mechanism",
                "bounds",
                "sensitivity",
                "scale",
                "cost",
                "95% error",
            ];
            let rows: Vec<[String; 8]> = aggregate
                .outputs
                .iter()
                .map(|o| {
                    [
                        o.output.clone(),
                        o.aggregate.clone(),
                        o.mechanism.clone(),
                        o.bounds.map_or("-".to_string(), |b| b.to_string()),
                        list(&o.sensitivity),
                        list(&o.scale),
                        o.charge.to_string(),
                        o.error_95.to_string(),
                    ]
                })
                .collect();
            write_table(out, &header, &rows)?;
            for o in aggregate.outputs.iter() {
                let Some(e) = &o.encrypted else { continue };
                write!(
                    out,
                    "  encrypted: {} over {}.{} by {}",
                    o.output,
                    e.table,
                    e.column,
                    e.layer.describe()
                )?;
                match &e.estimate {
                    Some(c) => writeln!(
                        out,
                        "; about {} {}, {:.2} s expected on the reference machine (docs/BENCHMARKS.md)",
                        c.operations, c.operation, c.seconds
                    )?,
                    None => writeln!(
                        out,
                        "; no executor holds this study's keys, so it cannot run here"
                    )?,
                }
            }
        }
        writeln!(out)?;
        writeln!(out, "plan:")?;
        for line in self.plan.display_indent().to_string().lines() {
            writeln!(out, "  {line}")?;
        }
        Ok(())
    }

    /// Runs the plan: DataFusion executes the bounded exact aggregates,
    /// the noise is drawn, and the researcher's query runs over the noisy
    /// values. Consumes the plan.
    /// (Boxed, like [`crate::Planner::plan`], so that DataFusion's
    /// execution state machine is compiled once, in this crate.)
    pub fn execute(self) -> BoxFuture<'static, Result<PrivateAnswer>> {
        Box::pin(self.execute_inner(None))
    }

    /// Runs the plan with its exact part on `engine` (a Ballista cluster),
    /// its noisy releases here ([`crate::distributed`]); without an engine,
    /// like [`Self::execute`].
    pub fn execute_on(
        self,
        engine: Option<Arc<dyn RemoteEngine>>,
    ) -> BoxFuture<'static, Result<PrivateAnswer>> {
        Box::pin(self.execute_inner(engine))
    }

    async fn execute_inner(self, engine: Option<Arc<dyn RemoteEngine>>) -> Result<PrivateAnswer> {
        let context = self.bounded_context(engine.as_ref())?;
        let frame = context.execute_logical_plan(self.plan).await?;
        let batches = match engine {
            None => frame.collect().await?,
            Some(engine) => {
                let task = Arc::new(frame.task_ctx());
                let physical = frame.create_physical_plan().await?;
                let physical = crate::distributed::distribute(physical, &engine)?;
                datafusion::physical_plan::collect(physical, task).await?
            }
        };
        let releases = self.sites.iter().flat_map(|site| site.log.take()).collect();
        Ok(PrivateAnswer {
            batches,
            releases,
            cost: self.cost,
        })
    }

    /// The study's session with a memory pool of this query's own, of the
    /// policy's size, and no spilling to disk: running out of memory is an
    /// error (the charged outcome), never an abort or a slow spill.
    fn bounded_context(&self, engine: Option<&Arc<dyn RemoteEngine>>) -> Result<SessionContext> {
        use datafusion::execution::disk_manager::{DiskManagerBuilder, DiskManagerMode};
        use datafusion::execution::memory_pool::GreedyMemoryPool;
        use datafusion::execution::runtime_env::RuntimeEnvBuilder;
        use datafusion::execution::session_state::SessionStateBuilder;
        let bytes =
            usize::try_from(self.execution.memory_mb.saturating_mul(1 << 20)).unwrap_or(usize::MAX);
        let runtime = RuntimeEnvBuilder::new()
            .with_memory_pool(Arc::new(GreedyMemoryPool::new(bytes)))
            .with_disk_manager_builder(
                DiskManagerBuilder::default().with_mode(DiskManagerMode::Disabled),
            )
            .build_arc()?;
        // The catalog list is shared with the planner's session: a config
        // asking for a default catalog would replace the one holding the
        // study's tables.
        let config = self
            .context
            .state()
            .config()
            .clone()
            .with_create_default_catalog_and_schema(false);
        let config = match engine {
            // A cluster shuffles by patient so that its executors bound in
            // parallel, over as many partitions as it has task slots.
            // A cluster cuts a large file by bytes, as DataFusion does.
            Some(engine) => {
                let config = config.with_repartition_file_scans(true);
                match engine.partitions() {
                    Some(partitions) => config.with_target_partitions(partitions.max(1)),
                    None => config,
                }
            }
            // Here, the bounding gathers its input in one task, and a
            // Parquet file is cut in partitions by rows.
            None => config.with_extension(Arc::new(crate::nodes::GatherInOnePartition)),
        };
        let state = SessionStateBuilder::new_from_existing(self.context.state())
            .with_runtime_env(runtime)
            .with_config(config)
            .build();
        Ok(SessionContext::new_with_state(state))
    }

    /// The physical plan the local engine would run (for benchmarks and
    /// tests); creating it draws no noise.
    pub fn physical_plan(&self) -> BoxFuture<'_, Result<String>> {
        Box::pin(self.physical_plan_inner())
    }

    async fn physical_plan_inner(&self) -> Result<String> {
        let frame = self
            .bounded_context(None)?
            .execute_logical_plan(self.plan.clone())
            .await?;
        let physical = frame.create_physical_plan().await?;
        Ok(datafusion::physical_plan::displayable(physical.as_ref())
            .indent(false)
            .to_string())
    }
}

impl fmt::Debug for PrivatePlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PrivatePlan")
            .field("sql", &self.sql)
            .field("cost", &self.cost)
            .finish_non_exhaustive()
    }
}

/// Whether `remaining` is the "no budget" of a caller that accounts elsewhere.
fn unlimited(remaining: &Charge) -> bool {
    use cohort_anonymizer::accountant::Amount;
    match remaining {
        Charge::Pure { epsilon } => *epsilon == Amount::MAX,
        Charge::Approx { epsilon, .. } => *epsilon == Amount::MAX,
        Charge::Zcdp { rho } => *rho == Amount::MAX,
    }
}

/// Sensitivities of each noisy part, in the statistic's units.
fn sensitivities(noise: &Noise, statistic: &Statistic) -> Vec<f64> {
    let of = |n: &cohort_anonymizer::dp::IntegerNoise| match n.mechanism() {
        cohort_anonymizer::dp::MechanismKind::DiscreteGaussian => n.sensitivity().l2,
        _ => n.sensitivity().l1 as f64,
    };
    match (noise, statistic) {
        (Noise::Integer { noise }, Statistic::Sum { decimals, .. }) => {
            vec![of(noise) / unit_scale(*decimals)]
        }
        (Noise::Integer { noise }, _) => vec![of(noise)],
        (Noise::Mean { sum, count }, Statistic::Mean { decimals, .. }) => {
            vec![of(sum) / unit_scale(*decimals), of(count)]
        }
        (
            Noise::Variance {
                count,
                sum,
                squares,
            },
            Statistic::Variance {
                decimals,
                square_decimals,
                ..
            },
        ) => vec![
            of(count),
            of(sum) / unit_scale(*decimals),
            of(squares) / unit_scale(*square_decimals),
        ],
        (Noise::Quantile { .. }, _) => vec![],
        _ => vec![],
    }
}

fn list(values: &[f64]) -> String {
    if values.is_empty() {
        return "-".into();
    }
    values
        .iter()
        .map(|v| round_sig(*v))
        .collect::<Vec<_>>()
        .join(" / ")
}

fn write_table<const N: usize>(
    out: &mut String,
    header: &[&str; N],
    rows: &[[String; N]],
) -> fmt::Result {
    let mut widths = header.map(|h| h.chars().count());
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c}{}", " ".repeat(widths[i] - c.chars().count())))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_string()
    };
    writeln!(out, "  {}", line(header.to_vec()))?;
    for row in rows {
        writeln!(out, "  {}", line(row.iter().map(String::as_str).collect()))?;
    }
    Ok(())
}

/// For each DP aggregate output, the name it is shown under in the answer
/// (`AVG(x) AS m` shows `avg(t.x)` as `m`), following the projections,
/// sorts, limits and filters above it.
pub(crate) fn output_names(plan: &LogicalPlan) -> HashMap<String, String> {
    let mut names = HashMap::new();
    // Names at the current level → names in the answer (None: the same).
    let mut renames: Option<HashMap<String, String>> = None;
    let mut node = plan;
    loop {
        match node {
            LogicalPlan::Projection(projection) => {
                let mut next = HashMap::new();
                for expr in &projection.expr {
                    let shown = expr.schema_name().to_string();
                    let final_name = match &renames {
                        None => Some(shown),
                        Some(renames) => renames.get(&shown).cloned(),
                    };
                    if let (Expr::Column(column), Some(final_name)) =
                        (strip_alias(expr), final_name)
                    {
                        next.insert(column.name.clone(), final_name);
                    }
                }
                renames = Some(next);
                node = projection.input.as_ref();
            }
            LogicalPlan::Sort(_)
            | LogicalPlan::Limit(_)
            | LogicalPlan::Filter(_)
            | LogicalPlan::SubqueryAlias(_) => node = node.inputs()[0],
            LogicalPlan::Extension(extension) => {
                if let Some(noisy) = extension.node.as_any().downcast_ref::<NoisyAggregate>() {
                    for release in &noisy.site.releases {
                        if let Some(shown) = renames.as_ref().and_then(|r| r.get(&release.output)) {
                            names.insert(release.output.clone(), shown.clone());
                        }
                    }
                }
                return names;
            }
            _ => return names,
        }
    }
}
