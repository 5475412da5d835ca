//! Reading the exact statistics of the inner aggregate: counts, fixed-point
//! sums and value lists, for the released groups (an absent group reads as
//! zero or empty).

use arrow::array::{Array, ArrayRef, AsArray, Decimal128Array, RecordBatch};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Float64Type, Int64Type, UInt64Type};

use crate::error::{Error, Result};
pub(super) fn internal(message: &str) -> Error {
    Error::Engine(Box::new(datafusion::error::DataFusionError::Internal(
        message.to_string(),
    )))
}

/// Integer values of a count (Int64/UInt64) or fixed-point sum (Decimal128,
/// saturated to `i64` units) column.
pub(super) fn int_values(array: &ArrayRef) -> Result<Vec<Option<i64>>> {
    Ok(match array.data_type() {
        DataType::Int64 => array.as_primitive::<Int64Type>().iter().collect(),
        DataType::UInt64 => array
            .as_primitive::<UInt64Type>()
            .iter()
            .map(|v| v.map(|v| i64::try_from(v).unwrap_or(i64::MAX)))
            .collect(),
        DataType::Decimal128(_, _) => array
            .as_any()
            .downcast_ref::<Decimal128Array>()
            .ok_or_else(|| internal("decimal column"))?
            .iter()
            .map(|v| v.map(|v| i64::try_from(v).unwrap_or(if v < 0 { i64::MIN } else { i64::MAX })))
            .collect(),
        other => {
            let cast = cast(array, &DataType::Int64)
                .map_err(|_| internal(&format!("unexpected exact statistic type {other}")))?;
            cast.as_primitive::<Int64Type>().iter().collect()
        }
    })
}

/// The exact values of `column` for the released groups (absent: 0).
pub(super) fn exact_ints(
    exact: &RecordBatch,
    column: usize,
    rows: &[Option<usize>],
) -> Result<Vec<i64>> {
    let values = int_values(exact.column(column))?;
    Ok(rows
        .iter()
        .map(|row| row.and_then(|r| values[r]).unwrap_or(0))
        .collect())
}

/// The value lists of a quantile's input for the released groups.
pub(super) fn exact_lists(
    exact: &RecordBatch,
    column: usize,
    rows: &[Option<usize>],
) -> Result<Vec<Vec<f64>>> {
    let array = exact.column(column);
    let lists = array
        .as_list_opt::<i32>()
        .ok_or_else(|| internal("a quantile's input is a list"))?;
    rows.iter()
        .map(|row| match row {
            Some(r) if !lists.is_null(*r) => {
                let values = cast(&lists.value(*r), &DataType::Float64)?;
                Ok(values
                    .as_primitive::<Float64Type>()
                    .iter()
                    .flatten()
                    .collect())
            }
            _ => Ok(Vec::new()),
        })
        .collect()
}
