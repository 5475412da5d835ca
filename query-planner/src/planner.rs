//! The planner: SQL in, a costed private plan out.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use cohort_anonymizer::accountant::{Amount, Charge, PrivacyKind};
use cohort_anonymizer::dp::KeyThreshold;
use datafusion::catalog::TableProvider;
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::logical_expr::{Extension, LogicalPlan};
use datafusion::optimizer::decorrelate_predicate_subquery::DecorrelatePredicateSubquery;
use datafusion::optimizer::eliminate_cross_join::EliminateCrossJoin;
use datafusion::optimizer::extract_equijoin_predicate::ExtractEquijoinPredicate;
use datafusion::optimizer::replace_distinct_aggregate::ReplaceDistinctWithAggregate;
use datafusion::optimizer::scalar_subquery_to_join::ScalarSubqueryToJoin;
use datafusion::optimizer::{Optimizer, OptimizerRule};
use datafusion::prelude::SessionContext;
use datafusion::sql::parser::{DFParserBuilder, Statement as DfStatement};
use datafusion::sql::sqlparser::dialect::GenericDialect;
use futures::future::BoxFuture;

use crate::catalog;
use crate::encryption::{EncryptedExecutor, Executor};
use crate::error::{Error, Result, Rule};
use crate::nodes::{Keys, NoisyAggregate, Site};
use crate::plan::{PrivatePlan, output_names};
use crate::policy::{PublicTables, Scope, StudyPolicy};
use crate::release::{calibrate, split_weighted};
use crate::rules::{self, syntax};
use crate::typing::Typer;

/// Plans private queries over one study's tables.
///
/// Built once per study from its policy and its tables (any DataFusion
/// `TableProvider`: Parquet files of the research view, in-memory batches
/// in tests); each call to [`Planner::plan`] is independent.
pub struct Planner {
    policy: StudyPolicy,
    scope: Scope,
    context: SessionContext,
    executor: Option<Executor>,
}

/// What a query may spend and how to split it.
#[derive(Clone, Debug)]
pub struct QueryOptions {
    /// What is left of the study's budget. Its kind decides the noise:
    /// pure ε (discrete Laplace), (ε, δ) (Laplace, and δ for DP key
    /// selection) or ρ-zCDP (discrete Gaussian).
    pub remaining: Charge,
    /// ε of this query (else the policy's `query.epsilon`).
    pub epsilon: Option<Amount>,
    /// ρ of this query (else the policy's `query.rho`).
    pub rho: Option<Amount>,
    /// δ for key selection (else the policy's `query.delta`).
    pub delta: Option<Amount>,
    /// Relative weights of the query's releases, by output column (or
    /// aggregate) name; `keys` weighs DP key selection. Unnamed releases
    /// weigh 1, so the default is an equal split.
    pub weights: BTreeMap<String, u32>,
}

impl QueryOptions {
    /// Options for a study with `remaining` budget, everything else default.
    pub fn new(remaining: Charge) -> QueryOptions {
        QueryOptions {
            remaining,
            epsilon: None,
            rho: None,
            delta: None,
            weights: BTreeMap::new(),
        }
    }
}

/// The name under which [`QueryOptions::weights`] weighs key selection.
pub const KEY_SELECTION_WEIGHT: &str = "keys";

impl Planner {
    /// A planner for the study `policy` over `tables` (by study table name).
    /// Fails if the policy does not match the tables.
    pub fn new(
        policy: StudyPolicy,
        tables: HashMap<String, Arc<dyn TableProvider>>,
    ) -> Result<Planner> {
        Planner::with_public_tables(policy, tables, PublicTables::new())
    }

    /// A planner whose queries may also read `public` tables (no patient's
    /// rows: a vocabulary), at no privacy cost, and join them to the study's.
    pub fn with_public_tables(
        policy: StudyPolicy,
        mut tables: HashMap<String, Arc<dyn TableProvider>>,
        public: PublicTables,
    ) -> Result<Planner> {
        let schemas = tables
            .iter()
            .map(|(name, table)| (name.clone(), table.schema()))
            .collect();
        let scope = policy.resolve_with_public(&schemas, &public)?;
        for (name, batch) in public {
            tables.insert(name, crate::sources::batches(batch.schema(), vec![batch])?);
        }
        let context = catalog::session(&scope, &tables)?;
        Ok(Planner {
            policy,
            scope,
            context,
            executor: None,
        })
    }

    /// The planner with the engine's executor for encrypted columns; without
    /// one, a query over an encrypted column is planned and explained but
    /// cannot run.
    pub fn with_encryption(mut self, executor: Arc<dyn EncryptedExecutor>) -> Planner {
        self.executor = Some(Executor(executor));
        self
    }

    /// The study's policy.
    pub fn policy(&self) -> &StudyPolicy {
        &self.policy
    }

    /// Plans `sql` (optionally prefixed by `EXPLAIN PRIVACY`): checks it
    /// against every rule, rewrites it, splits and calibrates its cost and
    /// checks it against the per-query cap and the remaining budget.
    /// Nothing is run and nothing is spent.
    ///
    /// The future is boxed so that the planning state machine is compiled
    /// once, in this crate: an `async fn` body is otherwise compiled anew
    /// in every crate that awaits it, and this one reaches all of
    /// DataFusion's SQL planner.
    pub fn plan<'a>(
        &'a self,
        sql: &'a str,
        options: &'a QueryOptions,
    ) -> BoxFuture<'a, Result<PrivatePlan>> {
        Box::pin(self.plan_inner(sql, options))
    }

    async fn plan_inner(&self, sql: &str, options: &QueryOptions) -> Result<PrivatePlan> {
        let (explain, body) = strip_explain_privacy(sql);
        if body.to_ascii_lowercase().contains("__cohort") {
            return Err(Error::refused(
                Rule::UnsupportedSql,
                "`__cohort…`",
                "names starting with `__cohort` are reserved for the planner",
            ));
        }
        let mut statement = parse(body)?;
        let DfStatement::Statement(inner) = &mut statement else {
            return Err(Error::refused(
                Rule::UnsupportedSql,
                format!("`{}`", syntax::shorten(body)),
                "only SELECT queries can be asked of a study",
            ));
        };
        syntax::check(inner, &self.scope)?;
        rules::encrypted::rewrite(inner, &self.scope)?;

        let state = self.context.state();
        let plan = state
            .statement_to_plan(statement)
            .await
            .map_err(|error| self.scope_error(error))?;
        let plan = state
            .analyzer()
            .execute_and_check(plan, state.config_options(), |_, _| {})?;
        let plan = normalizer().optimize(plan, &state, |_, _| {})?;
        rules::subqueries::check(&plan)?;
        crate::guard::check(&plan)?;

        let mut typer = Typer::new(&self.scope, &self.policy.contribution);
        let plan = typer.query(plan)?;
        let sites = typer.sites;

        let names = output_names(&plan);
        let (sites, cost) = self.calibrate(sites, options, &names)?;
        let sites = self.equip(sites);
        let plan = install(plan, &sites)?;
        Ok(PrivatePlan::new(
            body.to_string(),
            explain,
            plan,
            sites,
            cost,
            options.remaining,
            self.cap(options.remaining.kind()),
            self.policy.execution.clone(),
            self.policy.tables.len(),
            self.context.clone(),
            names,
        ))
    }

    /// Maps DataFusion's "no field named" for a column outside the scope
    /// to a scope refusal.
    fn scope_error(&self, error: datafusion::error::DataFusionError) -> Error {
        let text = error.to_string();
        if let Some(rest) = text.split("No field named ").nth(1) {
            let column: String = rest
                .chars()
                .take_while(|c| !matches!(c, '.' | ' ') || *c == '.')
                .collect();
            let column = column.trim_end_matches('.').trim_matches('"').to_string();
            let approved: Vec<String> = self
                .scope
                .tables
                .iter()
                .flat_map(|(t, table)| table.columns.iter().map(move |(c, _)| format!("{t}.{c}")))
                .collect();
            return Error::refused(
                Rule::Scope,
                format!("`{column}`"),
                format!(
                    "not an approved column of this study; approved: {}",
                    approved.join(", ")
                ),
            );
        }
        Error::from(error)
    }

    /// The per-query cap in `kind`, from the policy.
    fn cap(&self, kind: PrivacyKind) -> Option<Charge> {
        let limits = &self.policy.query;
        match kind {
            PrivacyKind::Pure => limits.max_epsilon.map(|epsilon| Charge::Pure { epsilon }),
            PrivacyKind::Approx => limits.max_epsilon.map(|epsilon| Charge::Approx {
                epsilon,
                delta: limits.max_delta.unwrap_or(Amount::MAX),
            }),
            PrivacyKind::Zcdp => limits.max_rho.map(|rho| Charge::Zcdp { rho }),
        }
    }

    /// Splits the query's cost between its releases and calibrates them.
    /// Gives each site the executor and each encrypted release its estimate.
    fn equip(&self, sites: Vec<Arc<Site>>) -> Vec<Arc<Site>> {
        sites
            .into_iter()
            .map(|site| {
                if site.releases.iter().all(|r| r.encrypted.is_none()) {
                    return site;
                }
                let mut site = (*site).clone();
                site.executor = self.executor.clone();
                for release in &mut site.releases {
                    if let (Some(encrypted), Some(executor)) =
                        (&mut release.encrypted, &self.executor)
                    {
                        encrypted.estimate = Some(executor.0.estimate(
                            &encrypted.table,
                            &encrypted.column,
                            &encrypted.op,
                            site.max_rows,
                        ));
                    }
                }
                Arc::new(site)
            })
            .collect()
    }

    fn calibrate(
        &self,
        sites: Vec<Arc<Site>>,
        options: &QueryOptions,
        names: &HashMap<String, String>,
    ) -> Result<(Vec<Arc<Site>>, Charge)> {
        let kind = options.remaining.kind();
        let limits = &self.policy.query;
        let selects = sites
            .iter()
            .filter(|site| matches!(site.keys, Keys::Selected { .. }))
            .count();
        let releases: usize = sites.iter().map(|site| site.releases.len()).sum();
        if selects + releases == 0 {
            return Ok((sites, Charge::zero(kind)));
        }
        if selects > 0 && kind != PrivacyKind::Approx {
            let site = sites
                .iter()
                .find(|site| matches!(site.keys, Keys::Selected { .. }))
                .expect("a site selects keys");
            return Err(Error::refused(
                Rule::Budget,
                format!("`GROUP BY {}`", site.key_names.join(", ")),
                format!(
                    "these keys have no public domain, so the groups must be chosen by DP key \
                     selection, which spends δ; the study's budget is {kind}. Declare a \
                     `domain` for the key columns in the policy, or use an (ε, δ) budget"
                ),
            ));
        }
        let total = match kind {
            PrivacyKind::Pure | PrivacyKind::Approx => Charge::Pure {
                epsilon: options.epsilon.or(limits.epsilon).ok_or_else(|| {
                    Error::Options(
                        "no ε for this query: pass one, or set `query.epsilon` in the policy"
                            .into(),
                    )
                })?,
            },
            PrivacyKind::Zcdp => Charge::Zcdp {
                rho: options.rho.or(limits.rho).ok_or_else(|| {
                    Error::Options(
                        "no ρ for this query: pass one, or set `query.rho` in the policy".into(),
                    )
                })?,
            },
        };
        let delta = if selects > 0 {
            Some(options.delta.or(limits.delta).ok_or_else(|| {
                Error::Options(
                    "this query selects its GROUP BY keys with DP, which needs δ: pass one, or \
                     set `query.delta` in the policy"
                        .into(),
                )
            })?)
        } else {
            None
        };
        for name in options.weights.keys() {
            let known = name == crate::planner::KEY_SELECTION_WEIGHT
                || sites
                    .iter()
                    .flat_map(|s| &s.releases)
                    .any(|r| r.output == *name || names.get(&r.output).is_some_and(|n| n == name));
            if !known {
                return Err(Error::Options(format!(
                    "split weight for `{name}`, which is not an output of this query"
                )));
            }
        }
        let weight = |output: &str| {
            let shown = names.get(output).map(String::as_str).unwrap_or(output);
            options
                .weights
                .get(shown)
                .or_else(|| options.weights.get(output))
                .copied()
                .unwrap_or(1)
        };
        // Slots: per site, key selection (if any) then its releases.
        let mut weights = Vec::new();
        for site in &sites {
            if matches!(site.keys, Keys::Selected { .. }) {
                weights.push(
                    options
                        .weights
                        .get(KEY_SELECTION_WEIGHT)
                        .copied()
                        .unwrap_or(1),
                );
            }
            for release in &site.releases {
                weights.push(weight(&release.output));
            }
        }
        let mut shares = split_weighted(total, &weights)?.into_iter();
        let mut calibrated = Vec::with_capacity(sites.len());
        let mut charges = Vec::new();
        for site in sites {
            let mut site = Arc::unwrap_or_clone(site);
            if let Keys::Selected { units, .. } = site.keys {
                let Some(Charge::Pure { epsilon }) = shares.next() else {
                    unreachable!("ε shares are pure")
                };
                let delta = delta.expect("δ is known when keys are selected");
                let threshold = KeyThreshold::calibrate(site.max_groups, 1, epsilon, delta)?;
                charges.push(threshold.charge());
                site.keys = Keys::Selected {
                    units,
                    charge: Some(threshold.charge()),
                    threshold: Some(threshold),
                };
            }
            for release in &mut site.releases {
                let share = shares.next().expect("one share per release");
                let noise = calibrate(
                    &release.statistic,
                    &release.influence,
                    share,
                    site.max_groups,
                    site.max_rows,
                )?;
                release.noise = Some(noise);
                release.charge = Some(share);
                charges.push(share);
            }
            calibrated.push(Arc::new(site));
        }
        let cost = Charge::sequential(&charges, kind)?;
        if let Some(cap) = self.cap(kind)
            && !cost.is_within(&cap)
        {
            return Err(Error::OverBudget {
                cost,
                limit: format!("the study's per-query cap is {cap}"),
            });
        }
        if !cost.is_within(&options.remaining) {
            return Err(Error::OverBudget {
                cost,
                limit: format!("the study has only {} left", options.remaining),
            });
        }
        Ok((calibrated, cost))
    }
}

/// The optimizer rules run before typing: they turn `IN`/`EXISTS`
/// subqueries and comma joins into explicit joins, and `DISTINCT` into
/// grouping, so the typing pass sees joins and aggregates only.
fn normalizer() -> Optimizer {
    let rules: Vec<Arc<dyn OptimizerRule + Send + Sync>> = vec![
        Arc::new(ReplaceDistinctWithAggregate::new()),
        Arc::new(DecorrelatePredicateSubquery::new()),
        Arc::new(ScalarSubqueryToJoin::new()),
        Arc::new(ExtractEquijoinPredicate::new()),
        Arc::new(EliminateCrossJoin::new()),
    ];
    Optimizer::with_rules(rules)
}

/// Puts the calibrated sites into the plan's `NoisyAggregate` nodes.
fn install(plan: LogicalPlan, sites: &[Arc<Site>]) -> Result<LogicalPlan> {
    let plan = plan
        .transform_up(|node| {
            if let LogicalPlan::Extension(extension) = &node
                && let Some(noisy) = extension.node.as_any().downcast_ref::<NoisyAggregate>()
            {
                let site = Arc::clone(&sites[noisy.site.id]);
                let replaced = NoisyAggregate {
                    input: noisy.input.clone(),
                    schema: Arc::clone(&noisy.schema),
                    site,
                };
                return Ok(Transformed::yes(LogicalPlan::Extension(Extension {
                    node: Arc::new(replaced),
                })));
            }
            Ok(Transformed::no(node))
        })?
        .data;
    Ok(plan)
}

/// Splits off a leading `EXPLAIN PRIVACY`.
fn strip_explain_privacy(sql: &str) -> (bool, &str) {
    if let Some((first, after)) = first_word(sql.trim_start())
        && first.eq_ignore_ascii_case("explain")
        && let Some((second, body)) = first_word(after)
        && second.eq_ignore_ascii_case("privacy")
    {
        return (true, body.trim());
    }
    (false, sql.trim())
}

/// The first word of `s` and the rest, trimmed.
fn first_word(s: &str) -> Option<(&str, &str)> {
    s.find(char::is_whitespace)
        .map(|end| (&s[..end], s[end..].trim_start()))
}

fn parse(sql: &str) -> Result<DfStatement> {
    let dialect = GenericDialect {};
    let mut statements = DFParserBuilder::new(sql)
        .with_dialect(&dialect)
        .build()
        .and_then(|mut parser| parser.parse_statements())
        .map_err(|error| Error::Syntax(error.to_string()))?;
    match statements.len() {
        1 => Ok(statements.pop_front().expect("one statement")),
        0 => Err(Error::Syntax("empty query".into())),
        n => Err(Error::refused(
            Rule::UnsupportedSql,
            format!("{n} statements"),
            "send one SELECT at a time",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::strip_explain_privacy;

    #[test]
    fn explain_privacy_is_recognised_in_any_case() {
        assert_eq!(
            strip_explain_privacy("  explain   Privacy SELECT 1"),
            (true, "SELECT 1")
        );
        assert_eq!(
            strip_explain_privacy("EXPLAIN SELECT 1"),
            (false, "EXPLAIN SELECT 1")
        );
        assert_eq!(strip_explain_privacy("SELECT 1"), (false, "SELECT 1"));
    }
}
