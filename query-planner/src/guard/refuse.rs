//! The plan-time half of totality: refusing, from the SQL alone and before
//! anything is reserved, expressions that cannot be made total or bounded.

use arrow::datatypes::DataType;
use datafusion::common::Result as DfResult;
use datafusion::common::ScalarValue;
use datafusion::common::tree_node::TreeNode;
use datafusion::logical_expr::{Expr, LogicalPlan};

use super::caps::{MAX_PAD_CHARS, MAX_VALUE_BYTES};
use crate::error::{Error, Result, Rule};
/// Refuses, before anything is reserved, what cannot be made total or
/// bounded: see the module docs.
pub(crate) fn check(plan: &LogicalPlan) -> Result<()> {
    plan.apply_with_subqueries(|node| {
        node.apply_expressions(|expr| {
            expr.apply(|e| {
                check_expr(e)?;
                Ok(datafusion::common::tree_node::TreeNodeRecursion::Continue)
            })
        })
    })
    .map_err(Error::from)?;
    Ok(())
}

fn refuse(fragment: String, reason: &str) -> datafusion::error::DataFusionError {
    datafusion::error::DataFusionError::External(Box::new(Error::refused(
        Rule::Totality,
        fragment,
        reason,
    )))
}

fn check_expr(e: &Expr) -> DfResult<()> {
    match e {
        Expr::Placeholder(_)
        | Expr::ScalarVariable(..)
        | Expr::Unnest(_)
        | Expr::OuterReferenceColumn(..) => Err(refuse(
            format!("`{e}`"),
            "placeholders, variables, UNNEST and outer references have no place in a study query",
        )),
        #[allow(deprecated)]
        Expr::Wildcard { .. } => Err(refuse(
            format!("`{e}`"),
            "a wildcard must be expanded by the planner",
        )),
        Expr::ScalarFunction(f) if matches!(f.name(), "lpad" | "rpad") => {
            if let Some(Expr::Literal(value, _)) = f.args.get(1) {
                let chars = value.cast_to(&DataType::Int64).ok().and_then(|v| match v {
                    ScalarValue::Int64(n) => n,
                    _ => None,
                });
                if chars.is_some_and(|n| n > MAX_PAD_CHARS) {
                    return Err(refuse(
                        format!("`{e}`"),
                        &format!(
                            "a padded text may have at most {MAX_PAD_CHARS} characters \
                             (every value is capped at {MAX_VALUE_BYTES} bytes)"
                        ),
                    ));
                }
            }
            Ok(())
        }
        _ => Ok(()),
    }
}
