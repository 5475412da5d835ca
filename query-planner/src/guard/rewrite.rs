//! The execution half of totality: rewriting the final logical plan so that
//! every node that can fail is evaluated through a [`Guard`].
//!
//! Decides which nodes are total already (columns, literals, `CASE`,
//! comparisons within one type...) and wraps every other one, keeping its
//! name and type so the plan's schema is unchanged.

use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Fields};
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::common::{Column, DFSchema, Result as DfResult};
use datafusion::logical_expr::execution_props::ExecutionProps;
use datafusion::logical_expr::expr::ScalarFunction;
use datafusion::logical_expr::physical_planning_context::PhysicalPlanningContext;
use datafusion::logical_expr::{Expr, ExprSchemable, LogicalPlan, Operator, ScalarUDF};
use datafusion::physical_expr::create_physical_expr;

use super::caps::{Precheck, precheck};
use super::quiet::silence_guarded_panics;
use super::udf::{Body, GUARD, Guard};
/// Rewrites every expression of `plan` (the final logical plan, about to be
/// planned physically) so that its evaluation is total and bounded.
pub(crate) fn plan(plan: LogicalPlan) -> DfResult<LogicalPlan> {
    silence_guarded_panics();
    Ok(plan
        .transform_up(|node| {
            let schema = input_schema(&node)?;
            // A guard's value may be NULL where the node's was not: the
            // node's schema is recomputed, so that the physical planner's
            // check of each input schema against its logical one holds.
            node.map_expressions(|expr| guard_expr(expr, &schema))?
                .map_data(LogicalPlan::recompute_schema)
        })?
        .data)
}

/// The columns the node's expressions may refer to: its inputs' schemas,
/// merged (both sides of a join).
fn input_schema(node: &LogicalPlan) -> DfResult<DFSchema> {
    let mut merged = DFSchema::empty();
    for input in node.inputs() {
        merged.merge(input.schema());
    }
    if let LogicalPlan::TableScan(scan) = node {
        merged.merge(&scan.projected_schema);
    }
    Ok(merged)
}

fn guard_expr(expr: Expr, schema: &DFSchema) -> DfResult<Transformed<Expr>> {
    expr.transform_up(|e| guard_node(e, schema))
}

/// Whether a node cannot fail once its children have been evaluated.
fn is_total(e: &Expr, schema: &DFSchema) -> DfResult<bool> {
    Ok(match e {
        Expr::Alias(_)
        | Expr::Column(_)
        | Expr::Literal(..)
        | Expr::Not(_)
        | Expr::IsNull(_)
        | Expr::IsNotNull(_)
        | Expr::IsTrue(_)
        | Expr::IsFalse(_)
        | Expr::IsUnknown(_)
        | Expr::IsNotTrue(_)
        | Expr::IsNotFalse(_)
        | Expr::IsNotUnknown(_)
        | Expr::Case(_)
        | Expr::AggregateFunction(_)
        | Expr::WindowFunction(_)
        | Expr::GroupingSet(_)
        | Expr::Exists(_)
        | Expr::InSubquery(_)
        | Expr::ScalarSubquery(_) => true,
        // A guard already.
        Expr::ScalarFunction(f) if f.name() == GUARD => true,
        Expr::BinaryExpr(b) => match b.op {
            Operator::And | Operator::Or => true,
            Operator::Eq
            | Operator::NotEq
            | Operator::Lt
            | Operator::LtEq
            | Operator::Gt
            | Operator::GtEq
            | Operator::IsDistinctFrom
            | Operator::IsNotDistinctFrom => same_simple_type(&[&b.left, &b.right], schema)?,
            _ => false,
        },
        Expr::InList(list) => {
            let mut all: Vec<&Expr> = vec![&list.expr];
            all.extend(list.list.iter());
            same_simple_type(&all, schema)?
        }
        Expr::Between(between) => {
            same_simple_type(&[&between.expr, &between.low, &between.high], schema)?
        }
        _ => false,
    })
}

/// Whether every expression has the same primitive, text, date or
/// boolean type (comparisons between them cannot fail).
fn same_simple_type(exprs: &[&Expr], schema: &DFSchema) -> DfResult<bool> {
    let mut types = Vec::with_capacity(exprs.len());
    for e in exprs {
        types.push(e.get_type(schema)?);
    }
    let first = &types[0];
    let simple = first.is_primitive()
        || matches!(
            first,
            DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View | DataType::Boolean
        );
    Ok(simple && types.iter().all(|t| t == first))
}

fn guard_node(e: Expr, schema: &DFSchema) -> DfResult<Transformed<Expr>> {
    if is_total(&e, schema)? {
        return Ok(Transformed::no(e));
    }
    let name = e.schema_name().to_string();
    let (_, field) = e.to_field(schema)?;
    let data_type = field.data_type().clone();
    if let Expr::ScalarFunction(f) = &e {
        let guard = Guard::new(
            name,
            data_type,
            Body::Function {
                inner: Arc::clone(&f.func),
                precheck: precheck(f.name()),
            },
        );
        return Ok(Transformed::yes(Expr::ScalarFunction(
            ScalarFunction::new_udf(Arc::new(ScalarUDF::new_from_impl(guard)), f.args.clone()),
        )));
    }
    // Any other fallible node: its non-literal children become the
    // guard's arguments, and the node itself a template over them.
    let concat_check = matches!(&e, Expr::BinaryExpr(b) if b.op == Operator::StringConcat);
    let mut args = Vec::new();
    let mut fields = Vec::new();
    let template = e
        .map_children(|child| {
            if matches!(child, Expr::Literal(..)) {
                return Ok(Transformed::no(child));
            }
            let name = format!("__cohort_arg{}", args.len());
            let (_, child_field) = child.to_field(schema)?;
            fields.push(Field::new(&name, child_field.data_type().clone(), true));
            args.push(child);
            Ok(Transformed::yes(Expr::Column(Column::from_name(name))))
        })?
        .data;
    let arg_schema = DFSchema::from_unqualified_fields(Fields::from(fields), Default::default())?;
    let physical = create_physical_expr(
        &template,
        &arg_schema,
        &ExecutionProps::new(),
        &PhysicalPlanningContext::default(),
    )?;
    let guard = Guard::new(
        name,
        data_type,
        Body::Template {
            expr: physical,
            schema: Arc::new(arg_schema.as_arrow().clone()),
            precheck: if concat_check {
                Precheck::SumOfLengths
            } else {
                Precheck::None
            },
        },
    );
    Ok(Transformed::yes(Expr::ScalarFunction(
        ScalarFunction::new_udf(Arc::new(ScalarUDF::new_from_impl(guard)), args),
    )))
}
