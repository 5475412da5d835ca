//! The size cap: no guarded value is longer than [`MAX_VALUE_BYTES`], and
//! functions that can outgrow their inputs are checked per row before they
//! run.
//!
//! Kept apart from the guard itself so that what one value may cost is
//! decided in one place, both for plan-time refusals and for execution.

use arrow::array::{Array, ArrayRef, AsArray, BooleanArray};
use arrow::compute::{cast, nullif};
use arrow::datatypes::{DataType, Int64Type};
use datafusion::common::Result as DfResult;
use datafusion::logical_expr::ColumnarValue;
/// The longest text or binary value a guarded expression yields; longer
/// ones are NULL.
pub const MAX_VALUE_BYTES: usize = 4096;

/// The largest literal length `lpad`/`rpad` accept at plan time (a
/// character may take 4 bytes).
pub const MAX_PAD_CHARS: i64 = (MAX_VALUE_BYTES / 4) as i64;

/// What a guard checks per row before evaluating.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(super) enum Precheck {
    None,
    /// `lpad`/`rpad`: the length argument (characters, 4 bytes each at most).
    PadLength,
    /// `replace(s, from, to)`: `len(s) + (len(s) + 1) · len(to)`.
    Replace,
    /// `a || b`: the sum of the inputs' lengths.
    SumOfLengths,
}

pub(super) fn precheck(function: &str) -> Precheck {
    match function {
        "lpad" | "rpad" => Precheck::PadLength,
        "replace" => Precheck::Replace,
        _ => Precheck::None,
    }
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
pub(super) fn cap_lengths(array: ArrayRef) -> ArrayRef {
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
pub(super) fn over_cap(
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
pub(super) fn null_rows(
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
