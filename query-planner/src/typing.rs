//! Privacy typing of a logical plan, and the rewrite it drives.
//!
//! Every relation of the plan gets a [`Kind`], as in Qrlew: *private*
//! (its rows belong to patients, and a column says which), *public* (no
//! patient data: `VALUES`, constants) or *published* (the output of a DP
//! aggregate, and anything computed from it). The pass walks the plan from
//! the leaves up, applying the planner's rules to each operator:
//!
//! - study tables are private, keyed by the privacy unit column;
//! - projections, filters, aliases and sorts keep a relation private, and
//!   carry the unit column along when the query drops it ([`UNIT_COLUMN`]);
//! - joins must match rows of the same patient ([`rules::joins`]);
//! - `LIMIT` over private rows is sampling ([`rules::sampling`]);
//! - an aggregate grouped by the unit is per patient and stays private; any
//!   other aggregate over private rows is a DP aggregate, rewritten by
//!   [`rules::dp_aggregate`] into bounding, exact aggregation and noise, and
//!   publishes its output;
//! - the query's answer must be published or public, never private.

use std::sync::Arc;

use datafusion::common::{Column, DFSchema};
use datafusion::logical_expr::{
    Aggregate, Expr, Filter, LogicalPlan, Projection, SubqueryAlias, TableScan,
};

use crate::error::{Error, Result, Rule};
use crate::facts::{self, ColumnFacts, SourceColumn};
use crate::kinds::{Kind, Typed, UNIT_COLUMN};
use crate::nodes::Site;
use crate::policy::{Contribution, Scope};
use crate::rules;
use crate::rules::group_keys::PublicFilters;

/// The typing pass over one query.
pub(crate) struct Typer<'a> {
    pub scope: &'a Scope,
    pub contribution: &'a Contribution,
    /// The DP aggregates found, in plan order (not yet calibrated).
    pub sites: Vec<Arc<Site>>,
    /// Conditions the query puts on public tables' columns, by table, over
    /// the tables' own column names: they narrow a public key's domain.
    pub public_filters: PublicFilters,
}

impl<'a> Typer<'a> {
    pub(crate) fn new(scope: &'a Scope, contribution: &'a Contribution) -> Self {
        Typer {
            scope,
            contribution,
            sites: Vec::new(),
            public_filters: PublicFilters::new(),
        }
    }

    /// Types and rewrites the whole query; its answer must not be private.
    pub(crate) fn query(&mut self, plan: LogicalPlan) -> Result<LogicalPlan> {
        let (plan, typed) = self.relation(plan)?;
        if typed.is_private() {
            if let Some(grouping) = typed.per_unit {
                return Err(Error::refused(
                    Rule::GroupByIdentifier,
                    grouping,
                    "grouping by the privacy unit releases one row per patient; aggregate \
                     across patients instead (the per-patient rows may feed an outer aggregate)",
                ));
            }
            let columns: Vec<String> = plan
                .schema()
                .fields()
                .iter()
                .map(|f| f.name().clone())
                .filter(|name| name != UNIT_COLUMN)
                .collect();
            return Err(Error::refused(
                Rule::RowLevelOutput,
                format!("SELECT {}", columns.join(", ")),
                "the answer would contain rows of individual patients; aggregate them \
                 (COUNT, SUM, AVG, VARIANCE, MEDIAN, ...) so that noise can protect them",
            ));
        }
        Ok(plan)
    }

    /// Types and rewrites one relation.
    pub(crate) fn relation(&mut self, plan: LogicalPlan) -> Result<(LogicalPlan, Typed)> {
        match plan {
            LogicalPlan::TableScan(scan) => self.table_scan(scan),
            LogicalPlan::Projection(projection) => {
                let (input, typed) = self.relation(Arc::unwrap_or_clone(projection.input))?;
                self.projection(projection.expr, input, typed)
            }
            LogicalPlan::Filter(filter) => {
                let (input, typed) = self.relation(Arc::unwrap_or_clone(filter.input))?;
                if typed.is_private() {
                    rules::sampling::check_predicate(&filter.predicate)?;
                }
                rules::group_keys::note_public_filter(
                    &filter.predicate,
                    input.schema(),
                    &typed,
                    self.scope,
                    &mut self.public_filters,
                );
                let plan = LogicalPlan::Filter(Filter::try_new(filter.predicate, Arc::new(input))?);
                Ok((plan, typed))
            }
            LogicalPlan::SubqueryAlias(alias) => {
                let (input, typed) = self.relation(Arc::unwrap_or_clone(alias.input))?;
                let plan = LogicalPlan::SubqueryAlias(SubqueryAlias::try_new(
                    Arc::new(input),
                    alias.alias,
                )?);
                Ok((plan, typed))
            }
            LogicalPlan::Sort(_) | LogicalPlan::Repartition(_) => {
                let (plan, typed) = self.only_input(plan)?;
                Ok((plan, typed))
            }
            LogicalPlan::Limit(_) => {
                let (plan, mut typed) = self.only_input(plan)?;
                if typed.is_private() {
                    typed.sampled = Some(format!("`{}`", first_line(&plan)));
                }
                Ok((plan, typed))
            }
            LogicalPlan::Join(_) => {
                let exprs = plan.expressions();
                let inputs: Vec<LogicalPlan> = plan.inputs().into_iter().cloned().collect();
                let mut typed_inputs = Vec::new();
                let mut new_inputs = Vec::new();
                for input in inputs {
                    let (input, typed) = self.relation(input)?;
                    new_inputs.push(input);
                    typed_inputs.push(typed);
                }
                let plan = plan.with_new_exprs(exprs, new_inputs)?;
                let LogicalPlan::Join(join) = &plan else {
                    unreachable!("rebuilt a join")
                };
                let typed =
                    rules::joins::check(join, &typed_inputs[0], &typed_inputs[1], self.scope)?;
                Ok((plan, typed))
            }
            LogicalPlan::Aggregate(aggregate) => self.aggregate(aggregate),
            LogicalPlan::Union(_) => {
                let exprs = plan.expressions();
                let mut typed_inputs = Vec::new();
                let mut new_inputs = Vec::new();
                for input in plan.inputs().into_iter().cloned() {
                    let (input, typed) = self.relation(input)?;
                    new_inputs.push(input);
                    typed_inputs.push(typed);
                }
                let typed = rules::joins::union(&typed_inputs)?;
                Ok((plan.with_new_exprs(exprs, new_inputs)?, typed))
            }
            LogicalPlan::Values(_) | LogicalPlan::EmptyRelation(_) => {
                let columns = plan.schema().fields().len();
                Ok((plan, Typed::public(columns)))
            }
            LogicalPlan::Window(window) => Err(Error::refused(
                Rule::WindowFunction,
                format!(
                    "`{}`",
                    window
                        .window_expr
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                "window functions compute over other patients' rows and are not allowed",
            )),
            LogicalPlan::Subquery(_) => Err(Error::refused(
                Rule::UnsupportedSql,
                format!("`{}`", first_line(&plan)),
                "this subquery does not match patients by the privacy unit; use \
                 `unit IN (SELECT unit ...)` or a join on the unit",
            )),
            other => Err(Error::refused(
                Rule::UnsupportedSql,
                format!("`{}`", first_line(&other)),
                "only SELECT queries over the study's tables are supported",
            )),
        }
    }

    fn only_input(&mut self, plan: LogicalPlan) -> Result<(LogicalPlan, Typed)> {
        let exprs = plan.expressions();
        let input = plan.inputs()[0].clone();
        let (input, typed) = self.relation(input)?;
        Ok((plan.with_new_exprs(exprs, vec![input])?, typed))
    }

    fn table_scan(&mut self, scan: TableScan) -> Result<(LogicalPlan, Typed)> {
        let name = scan.table_name.table().to_string();
        let table = self.scope.tables.get(&name).ok_or_else(|| {
            Error::refused(
                Rule::Scope,
                format!("`{}`", scan.table_name),
                "not a table of this study",
            )
        })?;
        let schema = Arc::clone(&scan.projected_schema);
        let mut columns = Vec::with_capacity(schema.fields().len());
        let mut unit = None;
        for (index, field) in schema.fields().iter().enumerate() {
            let declared = table.column(field.name()).ok_or_else(|| {
                Error::refused(
                    Rule::Scope,
                    format!("`{}.{}`", name, field.name()),
                    "not an approved column of this study",
                )
            })?;
            if *field.name() == self.scope.unit {
                unit = Some(index);
            }
            let source = SourceColumn {
                table: name.clone(),
                column: field.name().clone(),
            };
            columns.push(ColumnFacts {
                lineage: [source.clone()].into(),
                copy_of: Some(source),
                interval: facts::Interval::from_bounds(declared.bounds),
            });
        }
        if table.public {
            let typed = Typed {
                kind: Kind::Public,
                columns,
                sampled: None,
                per_unit: None,
            };
            return Ok((LogicalPlan::TableScan(scan), typed));
        }
        let unit = unit.ok_or_else(|| {
            Error::Policy(format!(
                "internal: the scan of `{name}` does not read the privacy unit column"
            ))
        })?;
        let sampled = scan
            .fetch
            .map(|fetch| format!("`LIMIT {fetch}` on `{name}`"));
        for filter in &scan.filters {
            rules::sampling::check_predicate(filter)?;
        }
        let typed = Typed {
            kind: Kind::Private {
                unit,
                rows_per_unit: table.rows_per_unit.map(u64::from),
            },
            columns,
            sampled,
            per_unit: None,
        };
        Ok((LogicalPlan::TableScan(scan), typed))
    }

    fn projection(
        &mut self,
        mut exprs: Vec<Expr>,
        input: LogicalPlan,
        typed: Typed,
    ) -> Result<(LogicalPlan, Typed)> {
        let input_schema = Arc::clone(input.schema());
        let mut columns: Vec<ColumnFacts> = exprs
            .iter()
            .map(|expr| facts::of_expr(expr, &input_schema, &typed.columns))
            .collect();
        let kind = match typed.kind {
            Kind::Private {
                unit,
                rows_per_unit,
            } => {
                for expr in &exprs {
                    rules::sampling::check_expression(expr)?;
                }
                let unit_column = Column::from(input_schema.qualified_field(unit));
                let position = exprs.iter().position(
                    |expr| matches!(facts::strip_alias(expr), Expr::Column(c) if *c == unit_column),
                );
                let position = match position {
                    Some(position) => position,
                    None => {
                        // The query dropped the unit: carry it along.
                        exprs.push(Expr::Column(unit_column).alias(UNIT_COLUMN));
                        columns.push(typed.columns[unit].clone());
                        exprs.len() - 1
                    }
                };
                Kind::Private {
                    unit: position,
                    rows_per_unit,
                }
            }
            other => other,
        };
        let plan = LogicalPlan::Projection(Projection::try_new(exprs, Arc::new(input))?);
        let typed = match kind {
            Kind::Published => Typed::published(columns),
            kind => Typed {
                kind,
                columns,
                ..typed
            },
        };
        Ok((plan, typed))
    }

    fn aggregate(&mut self, aggregate: Aggregate) -> Result<(LogicalPlan, Typed)> {
        let (input, typed) = self.relation(Arc::unwrap_or_clone(aggregate.input))?;
        let input_schema: Arc<DFSchema> = Arc::clone(input.schema());
        match typed.kind {
            Kind::Private { unit, .. } => {
                rules::aggregates::check_grouping(&aggregate.group_expr)?;
                let unit_column = Column::from(input_schema.qualified_field(unit));
                let per_unit = aggregate.group_expr.iter().position(
                    |expr| matches!(facts::strip_alias(expr), Expr::Column(c) if *c == unit_column),
                );
                match per_unit {
                    Some(position) => rules::aggregates::per_unit(
                        aggregate.group_expr,
                        aggregate.aggr_expr,
                        input,
                        &typed,
                        position,
                    ),
                    None => {
                        if let Some(sampled) = &typed.sampled {
                            return Err(Error::refused(
                                Rule::SamplingBeforeAggregation,
                                sampled,
                                "LIMIT before aggregation keeps an arbitrary subset of \
                                 patients' rows, which the privacy accounting does not \
                                 cover; apply LIMIT to the aggregated answer instead",
                            ));
                        }
                        let id = self.sites.len();
                        let (plan, site) = rules::dp_aggregate::rewrite(
                            id,
                            aggregate.group_expr,
                            aggregate.aggr_expr,
                            aggregate.schema,
                            input,
                            &typed,
                            self.scope,
                            self.contribution,
                            &self.public_filters,
                        )?;
                        self.sites.push(site);
                        let output_columns = plan.schema().fields().len();
                        Ok((
                            plan,
                            Typed::published(vec![ColumnFacts::default(); output_columns]),
                        ))
                    }
                }
            }
            Kind::Public | Kind::Published => {
                let plan = LogicalPlan::Aggregate(Aggregate::try_new(
                    Arc::new(input),
                    aggregate.group_expr,
                    aggregate.aggr_expr,
                )?);
                let columns = plan.schema().fields().len();
                let typed = if typed.kind == Kind::Public {
                    Typed::public(columns)
                } else {
                    Typed::published(vec![ColumnFacts::default(); columns])
                };
                Ok((plan, typed))
            }
        }
    }
}

/// The first line of a plan's display, for messages.
fn first_line(plan: &LogicalPlan) -> String {
    plan.display().to_string()
}
