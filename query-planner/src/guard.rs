//! Total evaluation: an expression over patients' rows yields a value or
//! NULL, never an error, and never a text longer than [`MAX_VALUE_BYTES`].
//!
//! An error is an observable: if `CASE WHEN <one patient> THEN 1/0 END`
//! fails the query, whether it failed is a fact about that patient, and the
//! error's text may carry their value (`Cannot cast string 'Other Race'`).
//! So the planner makes evaluation total, in two parts:
//!
//! - **At plan time** ([`check`]), a refusal that is free and depends on
//!   the SQL alone: expression kinds that have no place in a study query
//!   (placeholders, variables, `UNNEST`, wildcards left after planning),
//!   and size-amplifying functions whose literal length exceeds the cap
//!   (`lpad(x, 300000000)`).
//! - **At execution** ([`plan`], applied to the final logical plan just
//!   before DataFusion's physical planner, so no optimizer rule runs after
//!   it): every node that can fail is evaluated through a guard with
//!   row-level NULL-on-error semantics. A guard evaluates its node over the
//!   batch; if that fails, it evaluates each half of the batch, down to
//!   single rows, and a row that still fails yields NULL (at most `2n`
//!   evaluations for `n` rows, and one when nothing fails). Casts,
//!   arithmetic, string concatenation, pattern matching, negation and every
//!   scalar function are guarded; what is left (columns, literals, `CASE`,
//!   `AND`/`OR`/`NOT`, `IS [NOT] NULL/TRUE/FALSE`, comparisons and `IN`
//!   lists between values of one type, aggregates over guarded arguments)
//!   cannot fail. By induction, no expression of a study query can.
//!
//! Guards also bound what one value costs. Every text or binary value a
//! guard produces longer than [`MAX_VALUE_BYTES`] is NULL, so no chain of
//! concatenations can grow a value past it; and the functions whose output
//! can exceed their inputs by more than a constant factor are checked per
//! row before they run (`lpad`/`rpad` by their length argument, `replace`
//! by `len(s) + (len(s) + 1) · len(to)`): a row over the cap is NULL
//! without being computed. `CASE WHEN <one patient> THEN lpad(x, 4e8) END`
//! therefore allocates nothing more for that patient than for anyone else.
//!
//! A panic inside a guarded node is caught like an error, and the default
//! panic hook is told to stay silent about it, so no message with a value
//! reaches stderr.
//!
//! Adding a function to the allow-list ([`crate::SCALAR_FUNCTIONS`]) means
//! deciding its failure modes (all of them become NULL here) and its cost:
//! if its output can grow faster than linearly in its inputs, it needs a
//! pre-check in [`precheck`].

use std::cell::Cell;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Once};

use arrow::array::{Array, ArrayRef, AsArray, BooleanArray, RecordBatch, RecordBatchOptions};
use arrow::compute::{cast, concat, nullif};
use arrow::datatypes::{DataType, Field, FieldRef, Fields, Int64Type, Schema};
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::common::{Column, DFSchema, Result as DfResult, ScalarValue};
use datafusion::logical_expr::execution_props::ExecutionProps;
use datafusion::logical_expr::expr::ScalarFunction;
use datafusion::logical_expr::physical_planning_context::PhysicalPlanningContext;
use datafusion::logical_expr::{
    ColumnarValue, Expr, ExprSchemable, LogicalPlan, Operator, ReturnFieldArgs, ScalarFunctionArgs,
    ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};
use datafusion::physical_expr::{PhysicalExpr, create_physical_expr};

use crate::error::{Error, Result, Rule};

/// The longest text or binary value a guarded expression yields; longer
/// ones are NULL.
pub const MAX_VALUE_BYTES: usize = 4096;

/// The largest literal length `lpad`/`rpad` accept at plan time (a
/// character may take 4 bytes).
pub const MAX_PAD_CHARS: i64 = (MAX_VALUE_BYTES / 4) as i64;

/// The name guards appear under in a physical plan.
const GUARD: &str = "__cohort_total";

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

/// What a guard checks per row before evaluating.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Precheck {
    None,
    /// `lpad`/`rpad`: the length argument (characters, 4 bytes each at most).
    PadLength,
    /// `replace(s, from, to)`: `len(s) + (len(s) + 1) · len(to)`.
    Replace,
    /// `a || b`: the sum of the inputs' lengths.
    SumOfLengths,
}

fn precheck(function: &str) -> Precheck {
    match function {
        "lpad" | "rpad" => Precheck::PadLength,
        "replace" => Precheck::Replace,
        _ => Precheck::None,
    }
}

/// What a guard evaluates.
#[derive(Debug)]
enum Body {
    /// A scalar function, called on the guard's arguments.
    Function {
        inner: Arc<ScalarUDF>,
        precheck: Precheck,
    },
    /// A node of another kind, its fallible children replaced by columns.
    Template {
        expr: Arc<dyn PhysicalExpr>,
        schema: Arc<Schema>,
        precheck: Precheck,
    },
}

/// The scalar function standing for one guarded node.
#[derive(Debug)]
struct Guard {
    /// Unique per guard: guards are never merged with one another.
    id: u64,
    /// The guarded node's name, so column names do not change.
    name: String,
    data_type: DataType,
    body: Body,
    signature: Signature,
}

impl Guard {
    fn new(name: String, data_type: DataType, body: Body) -> Guard {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        Guard {
            id: NEXT.fetch_add(1, Ordering::Relaxed),
            name,
            data_type,
            body,
            signature: Signature::variadic_any(Volatility::Immutable),
        }
    }

    fn precheck(&self) -> Precheck {
        match &self.body {
            Body::Function { precheck, .. } | Body::Template { precheck, .. } => *precheck,
        }
    }

    /// Evaluates the node over `args` (of `rows` rows): all at once, and
    /// on failure by halves, a failing row giving NULL.
    fn evaluate(&self, args: &[ColumnarValue], rows: usize, call: &ScalarFunctionArgs) -> ArrayRef {
        match self.try_evaluate(args, rows, call) {
            Ok(array) => array,
            Err(_) if rows <= 1 => arrow::array::new_null_array(&self.data_type, rows),
            Err(_) => {
                let half = rows / 2;
                let first = self.evaluate(&slice(args, 0, half), half, call);
                let second = self.evaluate(&slice(args, half, rows - half), rows - half, call);
                concat(&[first.as_ref(), second.as_ref()])
                    .unwrap_or_else(|_| arrow::array::new_null_array(&self.data_type, rows))
            }
        }
    }

    fn try_evaluate(
        &self,
        args: &[ColumnarValue],
        rows: usize,
        call: &ScalarFunctionArgs,
    ) -> DfResult<ArrayRef> {
        let result = quietly(|| match &self.body {
            Body::Function { inner, .. } => inner
                .invoke_with_args(ScalarFunctionArgs {
                    args: args.to_vec(),
                    arg_fields: call.arg_fields.clone(),
                    number_rows: rows,
                    return_field: Arc::clone(&call.return_field),
                    config_options: Arc::clone(&call.config_options),
                })?
                .into_array(rows),
            Body::Template { expr, schema, .. } => {
                let columns = args
                    .iter()
                    .map(|a| a.to_array(rows))
                    .collect::<DfResult<Vec<_>>>()?;
                let batch = RecordBatch::try_new_with_options(
                    Arc::clone(schema),
                    columns,
                    &RecordBatchOptions::new().with_row_count(Some(rows)),
                )?;
                expr.evaluate(&batch)?.into_array(rows)
            }
        })?;
        if result.len() != rows || result.data_type() != &self.data_type {
            // A kernel that answered with another shape is treated as a failure.
            let cast = cast(&result, &self.data_type)?;
            if cast.len() != rows {
                return Err(datafusion::error::DataFusionError::Internal(
                    "a guarded expression changed the number of rows".into(),
                ));
            }
            return Ok(cap_lengths(cast));
        }
        Ok(cap_lengths(result))
    }
}

/// Runs `f`, turning a panic into an error (and keeping the panic hook quiet).
fn quietly<T>(f: impl FnOnce() -> DfResult<T>) -> DfResult<T> {
    QUIET.with(|q| q.set(q.get() + 1));
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    QUIET.with(|q| q.set(q.get() - 1));
    result.unwrap_or_else(|_| {
        Err(datafusion::error::DataFusionError::Execution(
            "a guarded expression panicked".into(),
        ))
    })
}

thread_local! {
    static QUIET: Cell<u32> = const { Cell::new(0) };
}

/// Installs, once, a panic hook that says nothing about panics caught by a
/// guard and defers to the previous hook for every other.
fn silence_guarded_panics() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if QUIET.with(Cell::get) == 0 {
                previous(info);
            }
        }));
    });
}

fn slice(args: &[ColumnarValue], offset: usize, len: usize) -> Vec<ColumnarValue> {
    args.iter()
        .map(|a| match a {
            ColumnarValue::Array(array) => ColumnarValue::Array(array.slice(offset, len)),
            ColumnarValue::Scalar(s) => ColumnarValue::Scalar(s.clone()),
        })
        .collect()
}

/// Byte lengths of a text or binary array (None for other types).
fn lengths(array: &dyn Array) -> Option<Vec<Option<usize>>> {
    let of = |i: usize, len: usize| (!array.is_null(i)).then_some(len);
    Some(match array.data_type() {
        DataType::Utf8 => {
            let a = array.as_string::<i32>();
            (0..a.len()).map(|i| of(i, a.value(i).len())).collect()
        }
        DataType::LargeUtf8 => {
            let a = array.as_string::<i64>();
            (0..a.len()).map(|i| of(i, a.value(i).len())).collect()
        }
        DataType::Utf8View => {
            let a = array.as_string_view();
            (0..a.len()).map(|i| of(i, a.value(i).len())).collect()
        }
        DataType::Binary => {
            let a = array.as_binary::<i32>();
            (0..a.len()).map(|i| of(i, a.value(i).len())).collect()
        }
        DataType::LargeBinary => {
            let a = array.as_binary::<i64>();
            (0..a.len()).map(|i| of(i, a.value(i).len())).collect()
        }
        DataType::BinaryView => {
            let a = array.as_binary_view();
            (0..a.len()).map(|i| of(i, a.value(i).len())).collect()
        }
        _ => return None,
    })
}

/// NULL for every value longer than [`MAX_VALUE_BYTES`].
fn cap_lengths(array: ArrayRef) -> ArrayRef {
    let Some(lengths) = lengths(array.as_ref()) else {
        return array;
    };
    if lengths
        .iter()
        .all(|l| l.is_none_or(|l| l <= MAX_VALUE_BYTES))
    {
        return array;
    }
    let over = BooleanArray::from(
        lengths
            .iter()
            .map(|l| l.is_some_and(|l| l > MAX_VALUE_BYTES))
            .collect::<Vec<_>>(),
    );
    nullif(&array, &over)
        .unwrap_or_else(|_| arrow::array::new_null_array(array.data_type(), array.len()))
}

/// Per row: whether evaluating would exceed the cap (`rows` values).
fn over_cap(
    precheck: Precheck,
    args: &[ColumnarValue],
    rows: usize,
) -> DfResult<Option<Vec<bool>>> {
    let per_row = |arg: &ColumnarValue| -> DfResult<Vec<Option<usize>>> {
        let array = arg.to_array(rows)?;
        Ok(lengths(array.as_ref()).unwrap_or_else(|| vec![None; rows]))
    };
    Ok(match precheck {
        Precheck::None => None,
        Precheck::PadLength => {
            let Some(length) = args.get(1) else {
                return Ok(None);
            };
            let length = cast(&length.to_array(rows)?, &DataType::Int64)?;
            let length = length.as_primitive::<Int64Type>();
            Some(
                (0..rows)
                    .map(|i| length.is_valid(i) && length.value(i) > MAX_PAD_CHARS)
                    .collect(),
            )
        }
        Precheck::Replace => {
            let (Some(s), Some(to)) = (args.first(), args.get(2)) else {
                return Ok(None);
            };
            let (s, to) = (per_row(s)?, per_row(to)?);
            Some(
                s.iter()
                    .zip(&to)
                    .map(|(s, to)| {
                        let (s, to) = (s.unwrap_or(0), to.unwrap_or(0));
                        s.saturating_add(s.saturating_add(1).saturating_mul(to)) > MAX_VALUE_BYTES
                    })
                    .collect(),
            )
        }
        Precheck::SumOfLengths => {
            let mut total = vec![0usize; rows];
            for arg in args {
                for (t, l) in total.iter_mut().zip(per_row(arg)?) {
                    *t = t.saturating_add(l.unwrap_or(0));
                }
            }
            Some(total.into_iter().map(|t| t > MAX_VALUE_BYTES).collect())
        }
    })
}

/// `args` with every row in `over` set to NULL in the first argument that
/// decides the output (so the function yields NULL there without work).
fn null_rows(
    precheck: Precheck,
    args: &[ColumnarValue],
    over: &[bool],
    rows: usize,
) -> DfResult<Vec<ColumnarValue>> {
    let mask = BooleanArray::from(over.to_vec());
    let target = match precheck {
        Precheck::PadLength => 1,
        _ => 0,
    };
    let mut out = args.to_vec();
    for (i, arg) in args.iter().enumerate() {
        // Concatenation ignores no input, so every input is nulled; the
        // others null the argument that decides the output.
        if i == target || precheck == Precheck::SumOfLengths {
            out[i] = ColumnarValue::Array(nullif(&arg.to_array(rows)?, &mask)?);
        }
    }
    Ok(out)
}

impl PartialEq for Guard {
    fn eq(&self, other: &Self) -> bool {
        self.id == other.id
    }
}

impl Eq for Guard {}

impl Hash for Guard {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.id.hash(state);
    }
}

impl ScalarUDFImpl for Guard {
    fn name(&self) -> &str {
        GUARD
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> DfResult<DataType> {
        Ok(self.data_type.clone())
    }

    fn return_field_from_args(&self, _args: ReturnFieldArgs) -> DfResult<FieldRef> {
        Ok(Arc::new(Field::new(GUARD, self.data_type.clone(), true)))
    }

    fn schema_name(&self, _args: &[Expr]) -> DfResult<String> {
        Ok(self.name.clone())
    }

    fn invoke_with_args(&self, call: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        let rows = call.number_rows;
        let precheck = self.precheck();
        let args = match over_cap(precheck, &call.args, rows) {
            Ok(Some(over)) if over.iter().any(|&o| o) => {
                match null_rows(precheck, &call.args, &over, rows) {
                    Ok(args) => args,
                    Err(_) => {
                        return Ok(ColumnarValue::Array(arrow::array::new_null_array(
                            &self.data_type,
                            rows,
                        )));
                    }
                }
            }
            Ok(_) => call.args.clone(),
            // A check that cannot be made is a row over the cap.
            Err(_) => {
                return Ok(ColumnarValue::Array(arrow::array::new_null_array(
                    &self.data_type,
                    rows,
                )));
            }
        };
        Ok(ColumnarValue::Array(self.evaluate(&args, rows, &call)))
    }
}
