//! The guard itself: a scalar function standing for one fallible node, with
//! row-level NULL-on-error semantics.
//!
//! It evaluates its node over the whole batch and, on failure, by halves
//! down to single rows, so a failing row yields NULL and every other row its
//! value, at most `2n` evaluations for `n` rows.

use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use arrow::array::{ArrayRef, RecordBatch, RecordBatchOptions};
use arrow::compute::{cast, concat};
use arrow::datatypes::{DataType, Field, FieldRef, Schema};
use datafusion::common::Result as DfResult;
use datafusion::logical_expr::{
    ColumnarValue, Expr, ReturnFieldArgs, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature,
    Volatility,
};
use datafusion::physical_expr::PhysicalExpr;

use super::caps::{Precheck, cap_lengths, null_rows, over_cap};
use super::quiet::quietly;
/// The name guards appear under in a physical plan.
pub(super) const GUARD: &str = "__cohort_total";

/// What a guard evaluates.
#[derive(Debug)]
pub(super) enum Body {
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
pub(super) struct Guard {
    /// Unique per guard: guards are never merged with one another.
    id: u64,
    /// The guarded node's name, so column names do not change.
    name: String,
    data_type: DataType,
    body: Body,
    signature: Signature,
}

impl Guard {
    pub(super) fn new(name: String, data_type: DataType, body: Body) -> Guard {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        Guard {
            id: NEXT.fetch_add(1, Ordering::Relaxed),
            name,
            data_type,
            body,
            signature: Signature::variadic_any(Volatility::Immutable),
        }
    }

    pub(super) fn data_type(&self) -> &DataType {
        &self.data_type
    }

    pub(super) fn body(&self) -> &Body {
        &self.body
    }

    /// The guarded node's name.
    pub(super) fn display_name(&self) -> &str {
        &self.name
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

fn slice(args: &[ColumnarValue], offset: usize, len: usize) -> Vec<ColumnarValue> {
    args.iter()
        .map(|a| match a {
            ColumnarValue::Array(array) => ColumnarValue::Array(array.slice(offset, len)),
            ColumnarValue::Scalar(s) => ColumnarValue::Scalar(s.clone()),
        })
        .collect()
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
