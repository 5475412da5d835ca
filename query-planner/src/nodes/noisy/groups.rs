//! Choosing the released groups: every combination of a public domain
//! (absent groups included), DP key selection, or the single group of an
//! aggregate without `GROUP BY`.
//!
//! Groups are matched by their keys' content, never by their position in the
//! exact aggregate, which depends on the other groups in the data.

use std::collections::HashMap;

use arrow::array::{ArrayRef, RecordBatch, UInt32Array};
use arrow::compute::{cast, take};
use arrow::datatypes::SchemaRef;
use arrow::row::{RowConverter, SortField};
use datafusion::common::{Result as DfResult, ScalarValue};

use super::exact::{int_values, internal};
use super::site::{Keys, Site};
use crate::error::Result;
/// The released groups: for each, the row of the exact aggregate (if the
/// group occurs in the data), and the key columns to output.
pub(super) struct Groups {
    pub(super) rows: Vec<Option<usize>>,
    pub(super) keys: Vec<ArrayRef>,
}

pub(super) fn choose_groups(
    site: &Site,
    exact: &RecordBatch,
    schema: &SchemaRef,
) -> Result<Groups> {
    let k = site.key_count;
    let key_columns: Vec<ArrayRef> = exact.columns()[..k].to_vec();
    match &site.keys {
        Keys::None => Ok(Groups {
            rows: vec![(exact.num_rows() > 0).then_some(0)],
            keys: vec![],
        }),
        Keys::Public(domain) => {
            let mut keys = Vec::with_capacity(k);
            for i in 0..k {
                let values = domain.iter().map(|combo| combo[i].clone());
                let array = ScalarValue::iter_to_array(values)?;
                keys.push(cast(&array, schema.field(i).data_type())?);
            }
            let exact_keys = key_columns
                .iter()
                .zip(&keys)
                .map(|(column, like)| cast(column, like.data_type()))
                .collect::<std::result::Result<Vec<_>, _>>()?;
            let fields = keys
                .iter()
                .map(|a| SortField::new(a.data_type().clone()))
                .collect();
            let converter = RowConverter::new(fields)?;
            let found = converter.convert_columns(&exact_keys)?;
            let wanted = converter.convert_columns(&keys)?;
            let index: HashMap<_, usize> = found.iter().enumerate().map(|(i, r)| (r, i)).collect();
            let rows = wanted.iter().map(|row| index.get(&row).copied()).collect();
            Ok(Groups { rows, keys })
        }
        Keys::Selected {
            units, threshold, ..
        } => {
            let threshold = threshold
                .as_ref()
                .ok_or_else(|| internal("key selection was not calibrated"))?;
            let fields = key_columns
                .iter()
                .map(|a| SortField::new(a.data_type().clone()))
                .collect();
            let converter = RowConverter::new(fields)?;
            let found = converter.convert_columns(&key_columns)?;
            let counts = int_values(exact.column(k + units))?;
            // Keys are identified by their content (hex of the row format),
            // never by their position, which depends on other groups.
            let mut by_key = HashMap::with_capacity(exact.num_rows());
            let mut row_of = HashMap::with_capacity(exact.num_rows());
            for (i, row) in found.iter().enumerate() {
                let key = data_encoding_hex(row.as_ref());
                by_key.insert(key.clone(), counts[i].unwrap_or(0));
                row_of.insert(key, i);
            }
            let selection = threshold.release(by_key)?;
            let rows: Vec<usize> = selection
                .value()
                .keys
                .iter()
                .map(|(key, _)| row_of[key])
                .collect();
            let indices = UInt32Array::from(rows.iter().map(|&r| r as u32).collect::<Vec<_>>());
            let keys = key_columns
                .iter()
                .map(|c| take(c.as_ref(), &indices, None))
                .collect::<std::result::Result<Vec<_>, _>>()?;
            Ok(Groups {
                rows: rows.into_iter().map(Some).collect(),
                keys,
            })
        }
    }
}

fn data_encoding_hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// Each released group's keys as text (for the release log).
pub(super) fn group_names(keys: &[ArrayRef], n: usize) -> Result<Vec<String>> {
    (0..n)
        .map(|row| {
            let parts = keys
                .iter()
                .map(|array| Ok(ScalarValue::try_from_array(array, row)?.to_string()))
                .collect::<DfResult<Vec<String>>>()?;
            Ok(parts.join(", "))
        })
        .collect()
}
