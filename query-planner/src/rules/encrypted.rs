//! Encrypted columns: values patients shared only as ciphertexts, which
//! DataFusion never sees in the clear. A query may use one in exactly two
//! ways, and this rule rewrites both into the planner's own aggregate
//! `__cohort_encrypted(column, operation, constant)` before DataFusion
//! plans the statement:
//!
//! - `SUM(enc)` of an ElGamal column (a COUNT when the column is a 0/1
//!   flag), answered by the linear layer;
//! - `COUNT(*)` with one `enc <op> constant` conjunct in `WHERE`, on a tfhe
//!   column, answered by the predicate layer (the conjunct leaves the
//!   plaintext plan and becomes the encrypted operation).
//!
//! Any other mention of an encrypted column (selected, grouped by,
//! compared outside `WHERE`, wrapped in a function) is refused: it would
//! ask DataFusion to compute on a ciphertext. The DP aggregate then treats
//! `__cohort_encrypted` like SUM or COUNT for bounding and noise, and hands
//! each group's ciphertexts to the engine's [`crate::EncryptedExecutor`].

use std::collections::BTreeMap;
use std::ops::ControlFlow;
use std::sync::Arc;

use arrow::datatypes::DataType;
use cohort_fhe::{Comparison, EncryptedOp, Layer};
use datafusion::common::DataFusionError;
use datafusion::logical_expr::{AggregateUDF, Volatility, create_udaf};
use datafusion::sql::sqlparser::ast::{
    BinaryOperator, Expr as SqlExpr, FunctionArg, FunctionArgExpr, FunctionArguments, Ident,
    SelectItem, SetExpr, Statement, Value, Visit, Visitor,
};
use datafusion::sql::sqlparser::dialect::GenericDialect;
use datafusion::sql::sqlparser::parser::Parser;

use crate::error::{Error, Result, Rule};
use crate::policy::Scope;

/// The planner's aggregate standing for an encrypted operation.
pub(crate) const FUNCTION: &str = "__cohort_encrypted";

/// An encrypted column of the study, as the policy declares it.
#[derive(Clone, Debug)]
pub(crate) struct EncryptedColumn {
    pub column: String,
    pub layer: Layer,
}

/// The aggregate registered in the study's session. It only types the
/// plan: the DP rewrite replaces it, so its accumulator never runs.
pub(crate) fn udaf() -> AggregateUDF {
    create_udaf(
        FUNCTION,
        vec![DataType::Binary, DataType::Utf8, DataType::Int64],
        Arc::new(DataType::Binary),
        Volatility::Immutable,
        Arc::new(|_| {
            Err(DataFusionError::Internal(format!(
                "{FUNCTION} runs only inside a DP aggregate"
            )))
        }),
        Arc::new(vec![DataType::Binary]),
    )
}

/// The study's encrypted columns by (lower-case) column name.
pub(crate) fn columns(scope: &Scope) -> BTreeMap<String, EncryptedColumn> {
    let mut out = BTreeMap::new();
    for scoped in scope.tables.values() {
        for (column, declared) in &scoped.columns {
            if let Some(layer) = declared.encrypted {
                out.insert(
                    column.to_ascii_lowercase(),
                    EncryptedColumn {
                        column: column.clone(),
                        layer,
                    },
                );
            }
        }
    }
    out
}

/// Parses the operation and constant written into `__cohort_encrypted`.
pub(crate) fn operation(op: &str, constant: i64) -> Option<EncryptedOp> {
    let cmp = match op {
        "sum" => return Some(EncryptedOp::Sum),
        "ge" => Comparison::Ge,
        "gt" => Comparison::Gt,
        "le" => Comparison::Le,
        "lt" => Comparison::Lt,
        "eq" => Comparison::Eq,
        _ => return None,
    };
    Some(EncryptedOp::CountWhere { cmp, constant })
}

/// Rewrites the statement's uses of encrypted columns, or refuses it.
pub(crate) fn rewrite(statement: &mut Statement, scope: &Scope) -> Result<()> {
    let encrypted = columns(scope);
    if encrypted.is_empty() {
        return Ok(());
    }
    let before = mentions(statement, &encrypted);
    if before.is_empty() {
        return Ok(());
    }
    let refuse =
        |reason: String| Error::refused(Rule::EncryptedColumn, format!("`{}`", before[0]), reason);
    let Statement::Query(query) = statement else {
        return Err(refuse(
            "encrypted columns can only be read by a SELECT".into(),
        ));
    };
    if query.with.is_some() {
        return Err(refuse("an encrypted column cannot be read through a WITH clause; aggregate it in a plain SELECT".into()));
    }
    let SetExpr::Select(select) = query.body.as_mut() else {
        return Err(refuse(
            "an encrypted column can only be aggregated in a single SELECT (no UNION, no VALUES)"
                .into(),
        ));
    };

    // WHERE: at most one conjunct `enc <op> constant`, which leaves the plan.
    let mut predicate = None;
    if let Some(selection) = select.selection.take() {
        let mut kept = Vec::new();
        for conjunct in conjuncts(selection) {
            if mentions(&conjunct, &encrypted).is_empty() {
                kept.push(conjunct);
                continue;
            }
            let Some(found) = comparison(&conjunct, &encrypted) else {
                return Err(refuse(format!(
                    "`{conjunct}` computes on an encrypted column; only `column <op> constant` (>=, >, <=, <, =) can filter on one, joined to the rest of WHERE by AND"
                )));
            };
            if predicate.is_some() {
                return Err(refuse(
                    "a query can filter on one encrypted comparison".into(),
                ));
            }
            predicate = Some(found);
        }
        select.selection = kept.into_iter().reduce(|a, b| SqlExpr::BinaryOp {
            left: Box::new(a),
            op: BinaryOperator::And,
            right: Box::new(b),
        });
    }
    if let Some((column, ..)) = &predicate
        && column.layer != Layer::Tfhe
    {
        return Err(refuse(format!(
            "`{}` is an ElGamal column, which supports SUM only; comparisons need a column declared encrypted = \"tfhe\"",
            column.column
        )));
    }

    // SELECT: SUM(enc) and, with a predicate, COUNT(*) become the planner's aggregate.
    let mut rewritten = 0;
    let mut counted = false;
    for item in &mut select.projection {
        // An unnamed aggregate keeps its name as written, not the planner's.
        if let SelectItem::UnnamedExpr(expr) = item
            && match classify(expr, &encrypted) {
                Some(Use::Sum(_)) => true,
                Some(Use::CountStar) => predicate.is_some(),
                None => false,
            }
        {
            let alias = Ident::with_quote('"', expr.to_string());
            *item = SelectItem::ExprWithAlias {
                expr: expr.clone(),
                alias,
            };
        }
        let expr = match item {
            SelectItem::UnnamedExpr(expr) | SelectItem::ExprWithAlias { expr, .. } => expr,
            _ => continue,
        };
        let mut failure = None;
        let replaced = rewrite_first(expr, REWRITE_DEPTH, &mut |e: &mut SqlExpr| {
            let replacement = match classify(e, &encrypted) {
                Some(Use::Sum(column)) if column.layer == Layer::Elgamal => {
                    Some(format!("{FUNCTION}({}, 'sum', 0)", column.column))
                }
                Some(Use::Sum(column)) => {
                    failure = Some(format!(
                        "`{}` is a tfhe column, which answers comparisons; SUM needs a column declared encrypted = \"elgamal\"",
                        column.column
                    ));
                    None
                }
                Some(Use::CountStar) => predicate.as_ref().map(|(column, op, constant)| {
                    counted = true;
                    format!("{FUNCTION}({}, '{op}', {constant})", column.column)
                }),
                None => None,
            };
            let Some(sql) = replacement else {
                return false;
            };
            *e = parse_expr(&sql).expect("the planner's own expression parses");
            true
        });
        rewritten += usize::from(replaced);
        if let Some(reason) = failure {
            return Err(refuse(reason));
        }
    }
    if predicate.is_some() && !counted {
        return Err(refuse(
            "an encrypted comparison in WHERE can only be counted: select COUNT(*)".into(),
        ));
    }

    // Every mention must have been consumed: what remains is exactly the
    // argument of each rewritten aggregate (the predicate left WHERE).
    if mentions(statement, &encrypted).len() != rewritten {
        return Err(refuse(format!(
            "`{}` is encrypted: it can only appear as SUM({0}) (ElGamal columns) or in one WHERE comparison with a constant counted by COUNT(*) (tfhe columns); not selected, grouped by, joined on or passed to a function",
            before[0]
        )));
    }
    Ok(())
}

/// The deepest the SELECT-list rewrite descends. A mention below it stays
/// as written, and the final mention count refuses the query.
const REWRITE_DEPTH: usize = 64;

/// Replaces the first sub-expression of `expr`, in post-order, that
/// `replace` rewrites, and says whether there was one. It descends through
/// arithmetic, casts, `CASE` and function arguments, which is where an
/// aggregate's result is used. A mention anywhere else stays unrewritten,
/// and the final mention count refuses the query. It is written by hand:
/// sqlparser's `VisitMut` walk of every node type (see [`super::walk`])
/// was a third of the planner's unoptimised IR.
fn rewrite_first(
    expr: &mut SqlExpr,
    depth: usize,
    replace: &mut dyn FnMut(&mut SqlExpr) -> bool,
) -> bool {
    let Some(depth) = depth.checked_sub(1) else {
        return false;
    };
    let mut descend = |e: &mut SqlExpr| rewrite_first(e, depth, replace);
    let inner = match expr {
        SqlExpr::BinaryOp { left, right, .. } => descend(left) || descend(right),
        SqlExpr::UnaryOp { expr, .. } | SqlExpr::Nested(expr) | SqlExpr::Cast { expr, .. } => {
            descend(expr)
        }
        SqlExpr::Case {
            operand,
            conditions,
            else_result,
            ..
        } => {
            operand.as_deref_mut().is_some_and(&mut descend)
                || conditions
                    .iter_mut()
                    .any(|when| descend(&mut when.condition) || descend(&mut when.result))
                || else_result.as_deref_mut().is_some_and(&mut descend)
        }
        SqlExpr::Function(f) => match &mut f.args {
            FunctionArguments::List(list) => list.args.iter_mut().any(|arg| match arg {
                FunctionArg::Unnamed(FunctionArgExpr::Expr(e))
                | FunctionArg::Named {
                    arg: FunctionArgExpr::Expr(e),
                    ..
                }
                | FunctionArg::ExprNamed {
                    arg: FunctionArgExpr::Expr(e),
                    ..
                } => descend(e),
                _ => false,
            }),
            _ => false,
        },
        _ => false,
    };
    inner || replace(expr)
}

enum Use<'a> {
    Sum(&'a EncryptedColumn),
    CountStar,
}

fn classify<'a>(e: &SqlExpr, encrypted: &'a BTreeMap<String, EncryptedColumn>) -> Option<Use<'a>> {
    let SqlExpr::Function(f) = e else { return None };
    if f.filter.is_some() || f.over.is_some() {
        return None;
    }
    let name = f.name.to_string().to_ascii_lowercase();
    let FunctionArguments::List(list) = &f.args else {
        return None;
    };
    if list.duplicate_treatment.is_some() {
        return None;
    }
    match (name.as_str(), list.args.as_slice()) {
        ("sum", [FunctionArg::Unnamed(FunctionArgExpr::Expr(arg))]) => {
            column_of(arg, encrypted).map(Use::Sum)
        }
        ("count", [FunctionArg::Unnamed(FunctionArgExpr::Wildcard)]) => Some(Use::CountStar),
        _ => None,
    }
}

fn column_of<'a>(
    e: &SqlExpr,
    encrypted: &'a BTreeMap<String, EncryptedColumn>,
) -> Option<&'a EncryptedColumn> {
    let name = match e {
        SqlExpr::Identifier(ident) => &ident.value,
        SqlExpr::CompoundIdentifier(parts) => &parts.last()?.value,
        SqlExpr::Nested(inner) => return column_of(inner, encrypted),
        _ => return None,
    };
    encrypted.get(&name.to_ascii_lowercase())
}

fn comparison<'a>(
    e: &SqlExpr,
    encrypted: &'a BTreeMap<String, EncryptedColumn>,
) -> Option<(&'a EncryptedColumn, &'static str, i64)> {
    let SqlExpr::BinaryOp { left, op, right } = e else {
        return match e {
            SqlExpr::Nested(inner) => comparison(inner, encrypted),
            _ => None,
        };
    };
    let op_name = |op: &BinaryOperator, flipped: bool| -> Option<&'static str> {
        Some(match (op, flipped) {
            (BinaryOperator::GtEq, false) | (BinaryOperator::LtEq, true) => "ge",
            (BinaryOperator::Gt, false) | (BinaryOperator::Lt, true) => "gt",
            (BinaryOperator::LtEq, false) | (BinaryOperator::GtEq, true) => "le",
            (BinaryOperator::Lt, false) | (BinaryOperator::Gt, true) => "lt",
            (BinaryOperator::Eq, _) => "eq",
            _ => return None,
        })
    };
    if let (Some(column), Some(c)) = (column_of(left, encrypted), integer(right)) {
        return Some((column, op_name(op, false)?, c));
    }
    if let (Some(c), Some(column)) = (integer(left), column_of(right, encrypted)) {
        return Some((column, op_name(op, true)?, c));
    }
    None
}

fn integer(e: &SqlExpr) -> Option<i64> {
    match e {
        SqlExpr::Value(v) => match &v.value {
            Value::Number(n, _) => n.parse().ok(),
            _ => None,
        },
        SqlExpr::UnaryOp {
            op: datafusion::sql::sqlparser::ast::UnaryOperator::Minus,
            expr,
        } => integer(expr).map(|v| -v),
        SqlExpr::Nested(inner) => integer(inner),
        _ => None,
    }
}

fn conjuncts(e: SqlExpr) -> Vec<SqlExpr> {
    match e {
        SqlExpr::BinaryOp {
            left,
            op: BinaryOperator::And,
            right,
        } => {
            let mut out = conjuncts(*left);
            out.extend(conjuncts(*right));
            out
        }
        SqlExpr::Nested(inner)
            if matches!(
                *inner,
                SqlExpr::BinaryOp {
                    op: BinaryOperator::And,
                    ..
                }
            ) =>
        {
            conjuncts(*inner)
        }
        other => vec![other],
    }
}

/// The encrypted columns named anywhere in `node` (a statement or an
/// expression), once per mention.
fn mentions<N: Visit>(node: &N, encrypted: &BTreeMap<String, EncryptedColumn>) -> Vec<String> {
    let mut mentions = Mentions {
        encrypted,
        found: Vec::new(),
    };
    let _ = super::walk::walk(node, &mut mentions);
    mentions.found
}

struct Mentions<'a> {
    encrypted: &'a BTreeMap<String, EncryptedColumn>,
    found: Vec<String>,
}

impl Visitor for Mentions<'_> {
    type Break = Error;

    fn pre_visit_expr(&mut self, e: &SqlExpr) -> ControlFlow<Error> {
        if let Some(column) = identifier(e, self.encrypted) {
            self.found.push(column);
        }
        ControlFlow::Continue(())
    }
}

fn identifier(e: &SqlExpr, encrypted: &BTreeMap<String, EncryptedColumn>) -> Option<String> {
    match e {
        SqlExpr::Identifier(_) | SqlExpr::CompoundIdentifier(_) => {
            column_of(e, encrypted).map(|c| c.column.clone())
        }
        _ => None,
    }
}

fn parse_expr(
    sql: &str,
) -> std::result::Result<SqlExpr, datafusion::sql::sqlparser::parser::ParserError> {
    Parser::new(&GenericDialect {})
        .try_with_sql(sql)?
        .parse_expr()
}
