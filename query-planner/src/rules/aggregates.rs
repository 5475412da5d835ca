//! Which aggregates can be released with DP, with which bounds, and what
//! exact statistics they need.
//!
//! | aggregate | released as | needs |
//! |---|---|---|
//! | `COUNT(*)`, `COUNT(x)`, `COUNT(DISTINCT x)` | noisy count | — |
//! | `COUNT(DISTINCT <unit>)` | noisy count of patients (one per patient) | — |
//! | `SUM(x)` | noisy fixed-point sum of clamped values | bounds of `x` |
//! | `AVG(x)` | noisy sum / noisy count | bounds |
//! | `VAR_SAMP`, `VAR_POP`, `STDDEV`, `STDDEV_POP` | noisy count, sum, sum of squares | bounds |
//! | `MEDIAN(x)`, `PERCENTILE_CONT(x, p)` | exponential mechanism over candidates | bounds |
//!
//! `MIN` and `MAX` are refused (one patient's value decides them), as are
//! `DISTINCT` inside sums and anything else. Bounds come from the policy
//! or from the expression (`LEAST(GREATEST(x, 0), 10)` has bounds [0, 10]).

use std::sync::Arc;

use arrow::datatypes::DataType;
use datafusion::common::ScalarValue;
use datafusion::functions::math::expr_fn::isnan;
use datafusion::functions_aggregate::array_agg::array_agg_udaf;
use datafusion::functions_aggregate::count::count_udaf;
use datafusion::functions_aggregate::sum::sum_udaf;
use datafusion::logical_expr::expr::AggregateFunction;
use datafusion::logical_expr::{Aggregate, Cast, Expr, ExprSchemable, LogicalPlan, lit, when};

use crate::encryption::EncryptedRelease;
use crate::error::{Error, Result, Rule};
use crate::facts::{self, ColumnFacts, Interval, strip_alias};
use crate::kinds::{Kind, Typed};
use crate::policy::{Bounds, DEFAULT_QUANTILE_CANDIDATES, Scope};
use crate::release::{Influence, Statistic};
use crate::rules::encrypted;

/// Refuses `GROUPING SETS`, `ROLLUP` and `CUBE`.
pub(crate) fn check_grouping(group_expr: &[Expr]) -> Result<()> {
    for expr in group_expr {
        if let Expr::GroupingSet(_) = expr {
            return Err(Error::refused(
                Rule::UnsupportedSql,
                format!("`{expr}`"),
                "GROUPING SETS, ROLLUP and CUBE are not supported: ask each grouping as its \
                 own query",
            ));
        }
    }
    Ok(())
}

/// The typing of an aggregate grouped by the privacy unit (one row per
/// patient and group): still private, keyed by that group column.
pub(crate) fn per_unit(
    group_expr: Vec<Expr>,
    aggr_expr: Vec<Expr>,
    input: LogicalPlan,
    typed: &Typed,
    unit_position: usize,
) -> Result<(LogicalPlan, Typed)> {
    let schema = Arc::clone(input.schema());
    let rows = match typed.kind {
        Kind::Private { rows_per_unit, .. } => rows_per_unit,
        _ => None,
    };
    let mut columns: Vec<ColumnFacts> = group_expr
        .iter()
        .map(|expr| facts::of_expr(expr, &schema, &typed.columns))
        .collect();
    for expr in &aggr_expr {
        let mut column = facts::of_expr(expr, &schema, &typed.columns);
        column.copy_of = None;
        column.interval = per_unit_interval(expr, &schema, typed, rows);
        columns.push(column);
    }
    let grouping = format!(
        "`GROUP BY {}`",
        group_expr
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    );
    let single = group_expr.len() == 1;
    let plan = LogicalPlan::Aggregate(Aggregate::try_new(Arc::new(input), group_expr, aggr_expr)?);
    Ok((
        plan,
        Typed {
            kind: Kind::Private {
                unit: unit_position,
                rows_per_unit: single.then_some(1),
            },
            columns,
            sampled: typed.sampled.clone(),
            per_unit: Some(grouping),
        },
    ))
}

/// What is known of a per-patient aggregate's value, from the argument's
/// bounds and, for counts and sums, a bound on rows.
fn per_unit_interval(
    expr: &Expr,
    schema: &datafusion::common::DFSchema,
    typed: &Typed,
    rows: Option<u64>,
) -> Interval {
    let Expr::AggregateFunction(function) = strip_alias(expr) else {
        return Interval::UNBOUNDED;
    };
    let argument = function
        .params
        .args
        .first()
        .and_then(|arg| facts::of_expr(arg, schema, &typed.columns).bounds());
    match function.func.name() {
        "count" => Interval {
            lower: Some(0.0),
            upper: rows.map(|rows| rows as f64),
        },
        "sum" => match (argument, rows) {
            (Some(b), Some(rows)) => Interval {
                lower: Some((b.lower * rows as f64).min(0.0)),
                upper: Some((b.upper * rows as f64).max(0.0)),
            },
            _ => Interval::UNBOUNDED,
        },
        "avg" | "min" | "max" | "median" => Interval::from_bounds(argument),
        _ => Interval::UNBOUNDED,
    }
}

/// An aggregate mapped to its statistic and the exact aggregates computing
/// it, each with how much one row or patient can move it: the bound is
/// computed here, beside the expression it bounds.
pub(crate) struct Mapped {
    pub statistic: Statistic,
    pub inner: Vec<(Expr, Influence)>,
    /// Set when the statistic is computed under encryption.
    pub encrypted: Option<EncryptedRelease>,
}

/// Maps one aggregate expression of a DP aggregate.
pub(crate) fn map(
    expr: &Expr,
    schema: &datafusion::common::DFSchema,
    typed: &Typed,
    scope: &Scope,
    rows: u32,
    unit: &datafusion::common::Column,
) -> Result<Mapped> {
    let fragment = || format!("`{}`", strip_alias(expr));
    let Expr::AggregateFunction(function) = strip_alias(expr) else {
        return Err(Error::refused(
            Rule::UnsupportedAggregate,
            fragment(),
            "not an aggregate function",
        ));
    };
    let params = &function.params;
    let name = function.func.name().to_string();
    if let Some(filter) = &params.filter
        && filter.is_volatile()
    {
        return Err(Error::refused(
            Rule::SamplingBeforeAggregation,
            format!("`{filter}`"),
            "a random FILTER samples patients' rows",
        ));
    }
    let filter = params.filter.as_deref().cloned();
    let aggregate = |func, args: Vec<Expr>, distinct: bool, filter: Option<Expr>| {
        Expr::AggregateFunction(AggregateFunction::new_udf(
            func,
            args,
            distinct,
            filter.map(Box::new),
            vec![],
            None,
        ))
    };
    if name == encrypted::FUNCTION {
        return encrypted_aggregate(&params.args, schema, typed, scope, rows, filter, fragment());
    }
    if name == "count" {
        let counts_rows = match params.args.as_slice() {
            [] => true,
            [Expr::Literal(value, _)] => !value.is_null(),
            _ => false,
        };
        if counts_rows {
            return Ok(Mapped {
                encrypted: None,
                statistic: Statistic::Count { per_group: rows },
                inner: vec![(
                    aggregate(count_udaf(), vec![lit(1i64)], false, filter),
                    Influence::PerRow(1),
                )],
            });
        }
        let [argument] = params.args.as_slice() else {
            return Err(Error::refused(
                Rule::UnsupportedAggregate,
                fragment(),
                "COUNT takes one argument",
            ));
        };
        let counts_patients =
            params.distinct && matches!(strip_alias(argument), Expr::Column(c) if c == unit);
        return Ok(Mapped {
            encrypted: None,
            statistic: Statistic::Count {
                per_group: if counts_patients { 1 } else { rows },
            },
            inner: vec![(
                aggregate(
                    count_udaf(),
                    vec![argument.clone()],
                    params.distinct,
                    filter,
                ),
                // A patient adds 1 to a count of distinct patients, and at
                // most one per row to any other count.
                if counts_patients {
                    Influence::PerGroup(1)
                } else {
                    Influence::PerRow(1)
                },
            )],
        });
    }
    if matches!(name.as_str(), "min" | "max") {
        return Err(Error::refused(
            Rule::UnsupportedAggregate,
            fragment(),
            "the minimum and maximum are decided by one patient's value and cannot be \
             released with differential privacy; use a quantile such as \
             PERCENTILE_CONT(x, 0.05) or MEDIAN(x)",
        ));
    }
    let kind = match name.as_str() {
        "sum" => Kind2::Sum,
        "avg" => Kind2::Mean,
        "var" => Kind2::Variance {
            sample: true,
            root: false,
        },
        "var_pop" => Kind2::Variance {
            sample: false,
            root: false,
        },
        "stddev" => Kind2::Variance {
            sample: true,
            root: true,
        },
        "stddev_pop" => Kind2::Variance {
            sample: false,
            root: true,
        },
        "median" => Kind2::Quantile,
        "percentile_cont" | "approx_percentile_cont" => Kind2::Quantile,
        other => {
            return Err(Error::refused(
                Rule::UnsupportedAggregate,
                fragment(),
                format!(
                    "`{other}` has no differentially private mechanism here; supported: COUNT, \
                     COUNT(DISTINCT), SUM, AVG, VAR_SAMP, VAR_POP, STDDEV, STDDEV_POP, MEDIAN, \
                     PERCENTILE_CONT"
                ),
            ));
        }
    };
    if params.distinct {
        return Err(Error::refused(
            Rule::UnsupportedAggregate,
            fragment(),
            "DISTINCT is only supported inside COUNT",
        ));
    }
    let Some(argument) = params.args.first() else {
        return Err(Error::refused(
            Rule::UnsupportedAggregate,
            fragment(),
            "the aggregate needs an argument",
        ));
    };
    let facts = facts::of_expr(argument, schema, &typed.columns);
    let Some(bounds) = facts.bounds() else {
        return Err(Error::refused(
            Rule::UnboundedAggregate,
            fragment(),
            format!(
                "`{argument}` has no declared bounds, so one patient could move the answer \
                 without limit; declare `lower` and `upper` for it in the study policy, or \
                 clamp it in SQL with LEAST(GREATEST({argument}, low), high)"
            ),
        ));
    };
    let precision = precision_of(argument, schema, &facts, scope);
    let clamped = clamp(argument.clone(), bounds);
    let not_null = |filter: Option<Expr>| {
        let present = argument.clone().is_not_null();
        Some(match filter {
            Some(filter) => filter.and(present),
            None => present,
        })
    };
    let half = (bounds.upper - bounds.lower) / 2.0;
    let centre = bounds.lower + half;
    let count = || {
        (
            aggregate(count_udaf(), vec![argument.clone()], false, filter.clone()),
            Influence::PerRow(1),
        )
    };
    // A sum of `x` in fixed point with `decimals`, where |x| ≤ `magnitude`:
    // each row moves it by at most ⌈magnitude · 10^decimals⌉ units.
    let fixed_sum = |x: Expr, magnitude: f64, decimals: u32| {
        (
            aggregate(sum_udaf(), vec![fixed(x, decimals)], false, filter.clone()),
            Influence::PerRow(units(magnitude, decimals)),
        )
    };
    Ok(match kind {
        Kind2::Sum => {
            let decimals = Statistic::decimals_for(bounds.magnitude(), precision);
            Mapped {
                encrypted: None,
                statistic: Statistic::Sum { bounds, decimals },
                inner: vec![fixed_sum(clamped, bounds.magnitude(), decimals)],
            }
        }
        // Values centred on the bounds' midpoint: |x − c| ≤ half the width.
        Kind2::Mean => {
            let decimals = Statistic::decimals_for(half, precision);
            Mapped {
                encrypted: None,
                statistic: Statistic::Mean { bounds, decimals },
                inner: vec![fixed_sum(clamped - lit(centre), half, decimals), count()],
            }
        }
        Kind2::Variance { sample, root } => {
            let centred = clamped - lit(centre);
            let decimals = Statistic::decimals_for(half, precision);
            let square_decimals = Statistic::decimals_for(half * half, 2 * precision);
            Mapped {
                encrypted: None,
                statistic: Statistic::Variance {
                    bounds,
                    decimals,
                    square_decimals,
                    sample,
                    root,
                },
                inner: vec![
                    count(),
                    fixed_sum(centred.clone(), half, decimals),
                    fixed_sum(centred.clone() * centred, half * half, square_decimals),
                ],
            }
        }
        Kind2::Quantile => {
            let alpha = match (name.as_str(), params.args.get(1)) {
                ("median", None) => 0.5,
                (_, Some(Expr::Literal(value, _))) => facts::scalar_f64(value)
                    .filter(|p| (0.0..=1.0).contains(p))
                    .ok_or_else(|| {
                        Error::refused(
                            Rule::UnsupportedAggregate,
                            fragment(),
                            "the percentile must be a constant between 0 and 1",
                        )
                    })?,
                _ => {
                    return Err(Error::refused(
                        Rule::UnsupportedAggregate,
                        fragment(),
                        "the percentile must be a constant between 0 and 1",
                    ));
                }
            };
            let candidates = candidates_of(argument, schema, typed, &facts, scope, bounds);
            Mapped {
                encrypted: None,
                statistic: Statistic::Quantile {
                    bounds,
                    alpha,
                    candidates,
                },
                // The quantile's score moves by at most one per row.
                inner: vec![(
                    aggregate(array_agg_udaf(), vec![clamped], false, not_null(filter)),
                    Influence::PerRow(1),
                )],
            }
        }
    })
}

/// `__cohort_encrypted(column, operation, constant)`, written by the
/// encrypted-columns rule: a SUM or a predicate COUNT whose exact part is
/// the group's list of ciphertexts, bounded and noised like its plaintext
/// counterpart (integer values, so no fixed-point decimals).
fn encrypted_aggregate(
    args: &[Expr],
    schema: &datafusion::common::DFSchema,
    typed: &Typed,
    scope: &Scope,
    rows: u32,
    filter: Option<Expr>,
    fragment: String,
) -> Result<Mapped> {
    let refuse =
        |reason: &str| Error::refused(Rule::EncryptedColumn, fragment.clone(), reason.to_string());
    let [argument, Expr::Literal(op, _), Expr::Literal(constant, _)] = args else {
        return Err(refuse(
            "the planner's encrypted aggregate takes a column, an operation and a constant",
        ));
    };
    let (Some(Some(op)), ScalarValue::Int64(Some(constant))) = (op.try_as_str(), constant) else {
        return Err(refuse(
            "the planner's encrypted aggregate takes a column, an operation and a constant",
        ));
    };
    let facts = facts::of_expr(argument, schema, &typed.columns);
    let declared = facts.copy_of.as_ref().and_then(|source| {
        Some((
            source,
            scope.tables.get(&source.table)?.column(&source.column)?,
        ))
    });
    let Some((source, declared)) = declared else {
        return Err(refuse(
            "an encrypted column must be aggregated as itself, not through an expression",
        ));
    };
    let (Some(layer), Some(bounds), Some(op)) = (
        declared.encrypted,
        declared.bounds,
        encrypted::operation(op, *constant),
    ) else {
        return Err(refuse("not an encrypted column of the study"));
    };
    let (statistic, influence) = match op {
        cohort_fhe::EncryptedOp::Sum => (
            Statistic::Sum {
                bounds,
                decimals: 0,
            },
            Influence::PerRow(units(bounds.magnitude(), 0)),
        ),
        cohort_fhe::EncryptedOp::CountWhere { .. } => {
            (Statistic::Count { per_group: rows }, Influence::PerRow(1))
        }
    };
    let present = argument.clone().is_not_null();
    let filter = Some(match filter {
        Some(filter) => filter.and(present),
        None => present,
    });
    let cells = Expr::AggregateFunction(AggregateFunction::new_udf(
        array_agg_udaf(),
        vec![argument.clone()],
        false,
        filter.map(Box::new),
        vec![],
        None,
    ));
    Ok(Mapped {
        statistic,
        inner: vec![(cells, influence)],
        encrypted: Some(EncryptedRelease {
            layer,
            op,
            table: source.table.clone(),
            column: source.column.clone(),
            bounds,
            estimate: None,
        }),
    })
}

/// ⌈magnitude · 10^decimals⌉ fixed-point units (at least 1).
fn units(magnitude: f64, decimals: u32) -> u128 {
    (magnitude * 10f64.powi(decimals as i32)).ceil().max(1.0) as u128
}

enum Kind2 {
    Sum,
    Mean,
    Variance { sample: bool, root: bool },
    Quantile,
}

/// `x` as a double, clamped to `bounds`; NULL and NaN become NULL (skipped
/// by every aggregate) rather than an error that would depend on the data.
fn clamp(x: Expr, bounds: Bounds) -> Expr {
    let x = Expr::Cast(Cast::new(Box::new(x), DataType::Float64));
    when(
        x.clone().is_null().or(isnan(x.clone())),
        lit(ScalarValue::Float64(None)),
    )
    .when(x.clone().lt(lit(bounds.lower)), lit(bounds.lower))
    .when(x.clone().gt(lit(bounds.upper)), lit(bounds.upper))
    .otherwise(x)
    .expect("a CASE with WHEN branches")
}

/// `x` in fixed point with `decimals` decimals, summed exactly.
fn fixed(x: Expr, decimals: u32) -> Expr {
    Expr::Cast(Cast::new(
        Box::new(x),
        DataType::Decimal128(38, decimals as i8),
    ))
}

/// Decimals kept for `argument`: 0 for integers, else the finest declared
/// precision among the columns it comes from.
fn precision_of(
    argument: &Expr,
    schema: &datafusion::common::DFSchema,
    facts: &ColumnFacts,
    scope: &Scope,
) -> u32 {
    let integer = argument
        .get_type(schema)
        .map(|t| t.is_integer())
        .unwrap_or(false);
    if integer {
        return 0;
    }
    facts
        .lineage
        .iter()
        .filter_map(|source| {
            scope
                .tables
                .get(&source.table)
                .and_then(|t| t.column(&source.column))
                .map(|declared| declared.precision)
        })
        .max()
        .unwrap_or(crate::policy::DEFAULT_PRECISION)
}

/// A quantile's candidates: declared on the column it copies, else evenly
/// spaced over the bounds. DataFusion casts an integer argument of
/// `PERCENTILE_CONT` to a float; a numeric cast of a column changes no
/// value, so it still copies that column.
fn candidates_of(
    argument: &Expr,
    schema: &datafusion::common::DFSchema,
    typed: &Typed,
    facts: &ColumnFacts,
    scope: &Scope,
    bounds: Bounds,
) -> Vec<f64> {
    let copy_of = facts
        .copy_of
        .clone()
        .or_else(|| match strip_alias(argument) {
            Expr::Cast(Cast { expr, field }) if field.data_type().is_numeric() => {
                let inner = facts::of_expr(expr, schema, &typed.columns);
                let widening = expr
                    .get_type(schema)
                    .is_ok_and(|t| t.is_integer() || t.is_floating());
                inner.copy_of.filter(|_| widening)
            }
            _ => None,
        });
    let declared = copy_of.as_ref().and_then(|source| {
        scope
            .tables
            .get(&source.table)
            .and_then(|t| t.column(&source.column))
            .and_then(|c| c.candidates.clone())
    });
    declared.unwrap_or_else(|| {
        if bounds.lower == bounds.upper {
            return vec![bounds.lower];
        }
        let steps = DEFAULT_QUANTILE_CANDIDATES - 1;
        let step = (bounds.upper - bounds.lower) / steps as f64;
        let mut candidates: Vec<f64> = (0..=steps)
            .map(|i| bounds.lower + step * i as f64)
            .collect();
        candidates[steps] = bounds.upper;
        candidates.dedup();
        candidates
    })
}

#[cfg(test)]
mod tests;
