//! One visitor type for every read-only walk of the SQL syntax tree.
//!
//! sqlparser's `Visit` is generic over the visitor, so each visitor type
//! instantiates the walk of all ~500 node types again, each step wrapped in
//! a stack-growth check (`recursive_protection`). Three visitor types made
//! that two thirds of the planner's unoptimised IR (a smaller share of its
//! optimised build, see docs/BENCHMARKS.md "CI cost"); the rules now hand
//! their visitors to [`walk`] as trait objects instead.

use std::ops::ControlFlow;

use datafusion::sql::sqlparser::ast::{
    Expr, ObjectName, Query, Select, Statement, TableFactor, ValueWithSpan, Visit, Visitor,
};

use crate::error::Error;

/// Walks `node` with `visitor`, depth first, as `node.visit(visitor)` would.
pub(crate) fn walk<N: Visit + ?Sized>(
    node: &N,
    visitor: &mut dyn Visitor<Break = Error>,
) -> ControlFlow<Error> {
    node.visit(&mut Dyn(visitor))
}

/// The trait object behind the one concrete visitor type.
struct Dyn<'a>(&'a mut dyn Visitor<Break = Error>);

impl Visitor for Dyn<'_> {
    type Break = Error;

    fn pre_visit_query(&mut self, query: &Query) -> ControlFlow<Error> {
        self.0.pre_visit_query(query)
    }
    fn post_visit_query(&mut self, query: &Query) -> ControlFlow<Error> {
        self.0.post_visit_query(query)
    }
    fn pre_visit_select(&mut self, select: &Select) -> ControlFlow<Error> {
        self.0.pre_visit_select(select)
    }
    fn post_visit_select(&mut self, select: &Select) -> ControlFlow<Error> {
        self.0.post_visit_select(select)
    }
    fn pre_visit_relation(&mut self, relation: &ObjectName) -> ControlFlow<Error> {
        self.0.pre_visit_relation(relation)
    }
    fn post_visit_relation(&mut self, relation: &ObjectName) -> ControlFlow<Error> {
        self.0.post_visit_relation(relation)
    }
    fn pre_visit_table_factor(&mut self, factor: &TableFactor) -> ControlFlow<Error> {
        self.0.pre_visit_table_factor(factor)
    }
    fn post_visit_table_factor(&mut self, factor: &TableFactor) -> ControlFlow<Error> {
        self.0.post_visit_table_factor(factor)
    }
    fn pre_visit_expr(&mut self, expr: &Expr) -> ControlFlow<Error> {
        self.0.pre_visit_expr(expr)
    }
    fn post_visit_expr(&mut self, expr: &Expr) -> ControlFlow<Error> {
        self.0.post_visit_expr(expr)
    }
    fn pre_visit_statement(&mut self, statement: &Statement) -> ControlFlow<Error> {
        self.0.pre_visit_statement(statement)
    }
    fn post_visit_statement(&mut self, statement: &Statement) -> ControlFlow<Error> {
        self.0.post_visit_statement(statement)
    }
    fn pre_visit_value(&mut self, value: &ValueWithSpan) -> ControlFlow<Error> {
        self.0.pre_visit_value(value)
    }
    fn post_visit_value(&mut self, value: &ValueWithSpan) -> ControlFlow<Error> {
        self.0.post_visit_value(value)
    }
}
