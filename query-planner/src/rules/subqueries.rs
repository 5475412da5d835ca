//! No subquery may remain inside an expression.
//!
//! The planner's normalisation turns the subqueries it can check into
//! joins (`patient_id IN (SELECT patient_id ...)`, correlated `EXISTS` on
//! the patient), which the join rule then checks. Whatever is left, such
//! as `value > (SELECT AVG(value) FROM observations)`, would compute an
//! exact statistic over other patients' rows and use it to select rows:
//! the typing pass does not see inside expressions, so it is refused here,
//! before typing.

use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::logical_expr::{Expr, LogicalPlan};

use crate::error::{Error, Result, Rule};

/// Refuses any expression of `plan` that contains a subquery.
pub(crate) fn check(plan: &LogicalPlan) -> Result<()> {
    let mut found: Option<Error> = None;
    plan.apply(|node| {
        if let LogicalPlan::Subquery(_) = node {
            found = Some(refusal(&format!("{}", node.display())));
            return Ok(TreeNodeRecursion::Stop);
        }
        for expr in node.expressions() {
            if let Some(error) = subquery_in(&expr) {
                found = Some(error);
                return Ok(TreeNodeRecursion::Stop);
            }
        }
        Ok(TreeNodeRecursion::Continue)
    })?;
    match found {
        Some(error) => Err(error),
        None => Ok(()),
    }
}

fn subquery_in(expr: &Expr) -> Option<Error> {
    let mut found = None;
    let _ = expr.apply(|e| {
        if matches!(
            e,
            Expr::ScalarSubquery(_)
                | Expr::InSubquery(_)
                | Expr::Exists(_)
                | Expr::SetComparison(_)
                | Expr::OuterReferenceColumn(..)
        ) {
            found = Some(refusal(&expr.to_string()));
            return Ok(TreeNodeRecursion::Stop);
        }
        Ok(TreeNodeRecursion::Continue)
    });
    found
}

fn refusal(fragment: &str) -> Error {
    Error::refused(
        Rule::JoinNotOnUnit,
        format!("`{}`", crate::rules::syntax::shorten(fragment)),
        "this subquery computes over other patients' rows (an aggregate over other \
         patients, used to select rows); only `patient IN (SELECT patient ...)` and \
         EXISTS correlated on the patient are supported; use a constant instead",
    )
}
