//! The rewrite of a DP aggregate.
//!
//! ```text
//! Aggregate: groupBy=[keys], aggr=[a₁, …, aₙ]          (the researcher's)
//!   input
//! ```
//! becomes
//! ```text
//! NoisyAggregate: keys, releases a₁ … aₙ              (same output schema)
//!   Aggregate: groupBy=[keys], aggr=[exact statistics of a₁ … aₙ, (patients per key)]
//!     BoundContributions: unit, max_groups by [keys], max_rows
//!       Filter: keys IN (public domain)                 (when the keys are public)
//!         input
//! ```
//! The noise of each release is calibrated later, once the query's cost
//! has been split between all its releases.

use std::sync::Arc;

use datafusion::common::{Column, DFSchema, DFSchemaRef};
use datafusion::functions_aggregate::count::count_udaf;
use datafusion::logical_expr::expr::AggregateFunction;
use datafusion::logical_expr::{Aggregate, Expr, Extension, Filter, LogicalPlan, in_list, lit};

use crate::error::Result;
use crate::facts::strip_alias;
use crate::kinds::{Kind, Typed};
use crate::nodes::{
    BoundContributions, Choice, Keys, NoisyAggregate, PlannedRelease, ReleaseLog, Site,
};
use crate::policy::{Contribution, Sampling, Scope};
use crate::rules::group_keys::KeyDomain;
use crate::rules::{aggregates, group_keys};

/// Rewrites one DP aggregate (site `id`); returns the new plan and the site.
#[allow(clippy::too_many_arguments)]
pub(crate) fn rewrite(
    id: usize,
    group_expr: Vec<Expr>,
    aggr_expr: Vec<Expr>,
    schema: DFSchemaRef,
    input: LogicalPlan,
    typed: &Typed,
    scope: &Scope,
    contribution: &Contribution,
    public_filters: &group_keys::PublicFilters,
) -> Result<(LogicalPlan, Arc<Site>)> {
    let Kind::Private {
        unit,
        rows_per_unit,
    } = typed.kind
    else {
        unreachable!("only private relations have DP aggregates")
    };
    let input_schema = Arc::clone(input.schema());
    let unit_column = Column::from(input_schema.qualified_field(unit));
    // A small-cell rule may withhold a group's values: they become NULL.
    let schema = if scope.small_cells.is_some() {
        nullable_after(&schema, group_expr.len())?
    } else {
        schema
    };

    let domain = group_keys::check(&group_expr, &input_schema, typed, scope, public_filters)?;
    let max_rows = rows_per_unit
        .map_or(contribution.max_rows, |rows| {
            contribution
                .max_rows
                .min(u32::try_from(rows).unwrap_or(u32::MAX))
        })
        .max(1);
    let max_groups = match &domain {
        KeyDomain::None => 1,
        KeyDomain::Public(combos) => contribution
            .max_groups
            .min(u32::try_from(combos.len()).unwrap_or(u32::MAX))
            .max(1),
        KeyDomain::Private => contribution.max_groups,
    };

    // The exact statistics each release needs.
    let mut inner = Vec::new();
    let mut releases = Vec::with_capacity(aggr_expr.len());
    for expr in &aggr_expr {
        let mapped = aggregates::map(expr, &input_schema, typed, scope, max_rows, &unit_column)?;
        let first = inner.len();
        let mut influence = Vec::with_capacity(mapped.inner.len());
        for (j, (exact, bound)) in mapped.inner.into_iter().enumerate() {
            inner.push(exact.alias(format!("__cohort_{id}_{first}_{j}")));
            influence.push(bound);
        }
        let output = expr.schema_name().to_string();
        releases.push(PlannedRelease {
            aggregate: output.clone(),
            output,
            inputs: (first..inner.len()).collect(),
            influence,
            statistic: mapped.statistic,
            encrypted: mapped.encrypted,
            noise: None,
            charge: None,
        });
    }
    let keys = match &domain {
        KeyDomain::None => Keys::None,
        KeyDomain::Public(combos) => Keys::Public(combos.clone()),
        KeyDomain::Private => {
            let units = inner.len();
            inner.push(
                Expr::AggregateFunction(AggregateFunction::new_udf(
                    count_udaf(),
                    vec![Expr::Column(unit_column.clone())],
                    true,
                    None,
                    vec![],
                    None,
                ))
                .alias(format!("__cohort_{id}_patients")),
            );
            Keys::Selected {
                units,
                threshold: None,
                charge: None,
            }
        }
    };

    // Rows whose keys are outside the public domain are never released:
    // drop them before bounding, so they use none of a patient's groups.
    let mut bounded_input = input;
    if let KeyDomain::Public(combos) = &domain {
        let mut predicate: Option<Expr> = None;
        for (i, key) in group_expr.iter().enumerate() {
            let mut values: Vec<_> = combos.iter().map(|c| c[i].clone()).collect();
            values.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
            values.dedup();
            let member = in_list(
                strip_alias(key).clone(),
                values.into_iter().map(lit).collect(),
                false,
            );
            predicate = Some(match predicate {
                Some(p) => p.and(member),
                None => member,
            });
        }
        if let Some(predicate) = predicate {
            bounded_input =
                LogicalPlan::Filter(Filter::try_new(predicate, Arc::new(bounded_input))?);
        }
    }

    let choice = match &contribution.sampling {
        Sampling::Reservoir => Choice::Random,
        Sampling::FirstBy(columns) => {
            let order: Option<Vec<Expr>> = columns
                .iter()
                .map(|name| {
                    input_schema
                        .columns()
                        .into_iter()
                        .find(|c| c.name == *name)
                        .map(Expr::Column)
                })
                .collect();
            order.map_or(Choice::Random, Choice::FirstBy)
        }
    };
    let sampling = match &choice {
        Choice::Random => "reservoir (uniformly random)".to_string(),
        Choice::FirstBy(order) => format!(
            "first by {}",
            order
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let bounded = LogicalPlan::Extension(Extension {
        node: Arc::new(BoundContributions {
            input: bounded_input,
            unit: Expr::Column(unit_column.clone()),
            keys: group_expr.iter().map(|k| strip_alias(k).clone()).collect(),
            choice,
            max_groups,
            max_rows,
        }),
    });
    let inner_names = inner.iter().map(|e| e.schema_name().to_string()).collect();
    let exact = LogicalPlan::Aggregate(Aggregate::try_new(
        Arc::new(bounded),
        group_expr.clone(),
        inner,
    )?);
    let site = Arc::new(Site {
        id,
        key_count: group_expr.len(),
        keys,
        releases,
        max_groups,
        max_rows,
        key_names: group_expr
            .iter()
            .map(|k| strip_alias(k).to_string())
            .collect(),
        sampling,
        unit: scope.unit.clone(),
        inner_names,
        log: ReleaseLog::default(),
        executor: None,
        small_cells: scope.small_cells.clone(),
    });
    let noisy = LogicalPlan::Extension(Extension {
        node: Arc::new(NoisyAggregate {
            input: exact,
            schema,
            site: Arc::clone(&site),
        }),
    });
    Ok((noisy, site))
}

/// `schema` with every field after the first `keys` nullable.
fn nullable_after(schema: &DFSchema, keys: usize) -> Result<DFSchemaRef> {
    let fields = schema
        .iter()
        .enumerate()
        .map(|(i, (qualifier, field))| {
            let field = if i < keys {
                Arc::clone(field)
            } else {
                Arc::new(field.as_ref().clone().with_nullable(true))
            };
            (qualifier.cloned(), field)
        })
        .collect();
    Ok(Arc::new(DFSchema::new_with_metadata(
        fields,
        schema.metadata().clone(),
    )?))
}
