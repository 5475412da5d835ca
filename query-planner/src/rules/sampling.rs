//! No sampling of patients' rows before aggregation: a random predicate
//! keeps a subset the accounting does not model (`LIMIT` is handled by the
//! typing pass, which refuses it when the rows reach a DP aggregate).

use datafusion::logical_expr::Expr;

use crate::error::{Error, Result, Rule};

/// Refuses a volatile predicate over private rows.
pub(crate) fn check_predicate(predicate: &Expr) -> Result<()> {
    if predicate.is_volatile() {
        return Err(Error::refused(
            Rule::SamplingBeforeAggregation,
            format!("`{predicate}`"),
            "a random predicate samples patients' rows before aggregation",
        ));
    }
    Ok(())
}

/// Refuses a volatile expression computed over private rows.
pub(crate) fn check_expression(expr: &Expr) -> Result<()> {
    if expr.is_volatile() {
        return Err(Error::refused(
            Rule::Function,
            format!("`{expr}`"),
            "random values over patients' rows are not allowed",
        ));
    }
    Ok(())
}
