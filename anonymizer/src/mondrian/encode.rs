//! Reading Arrow columns into the dense encodings the partitioning works on.
//!
//! Each quasi-identifier becomes a [`Qi`] (ordered values, hierarchy leaves
//! or sorted text codes) and the sensitive attribute a [`Sensitive`] with its
//! ground distance. Nulls, non-finite numbers and unsupported types are
//! refused here, naming the column, so no later step meets them.

use arrow::array::{Array, ArrayRef, AsArray};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Float64Type, Int32Type, UInt32Type};
use arrow::record_batch::RecordBatch;
use chrono::NaiveDate;

use crate::error::{Error, Result};
use crate::hierarchy::{DomainTree, Hierarchy, Value};
use crate::privacy_model::GroundDistance;
/// One quasi-identifier, encoded for partitioning.
pub(super) enum Qi {
    /// Numbers (and dates as day numbers): cut at the median.
    Ordered {
        values: Vec<f64>,
        min: f64,
        max: f64,
        date: bool,
    },
    /// Values in a hierarchy: cut into the children of the current node.
    Tree { tree: DomainTree, leaf: Vec<u32> },
    /// Text without a hierarchy: cut like an ordered attribute over the sorted
    /// distinct values; released as the set of values in the class.
    Set { code: Vec<u32>, labels: Vec<String> },
}

impl Qi {
    pub(super) fn ordinal(&self, row: u32) -> f64 {
        match self {
            Qi::Ordered { values, .. } => values[row as usize],
            Qi::Set { code, .. } => f64::from(code[row as usize]),
            Qi::Tree { leaf, .. } => f64::from(leaf[row as usize]),
        }
    }
}

/// The sensitive attribute, encoded as dense codes.
pub(super) struct Sensitive {
    pub(super) code: Vec<u32>,
    pub(super) domain: usize,
}

pub(super) fn column<'a>(batch: &'a RecordBatch, name: &str) -> Result<&'a ArrayRef> {
    batch
        .column_by_name(name)
        .ok_or_else(|| Error::NoSuchColumn {
            column: name.into(),
            available: batch
                .schema()
                .fields()
                .iter()
                .map(|f| f.name().as_str())
                .collect::<Vec<_>>()
                .join(", "),
        })
}

fn no_nulls(name: &str, array: &dyn Array) -> Result<()> {
    if array.null_count() > 0 {
        let row = (0..array.len()).find(|&i| array.is_null(i)).unwrap_or(0);
        return Err(Error::NullValue {
            column: name.into(),
            row,
        });
    }
    Ok(())
}

fn as_utf8(name: &str, array: &ArrayRef) -> Result<ArrayRef> {
    cast(array, &DataType::Utf8).map_err(|e| Error::UnsupportedType {
        column: name.into(),
        data_type: array.data_type().to_string(),
        what: format!("cannot be read as text ({e})"),
    })
}

pub(super) fn as_text(name: &str, array: &ArrayRef) -> Result<Vec<String>> {
    let utf8 = as_utf8(name, array)?;
    let s = utf8.as_string::<i32>();
    Ok((0..s.len()).map(|i| s.value(i).to_string()).collect())
}

/// Dense codes for text values, numbered in sorted order of the distinct
/// values (which are returned): Arrow's dictionary encoding finds the
/// distinct values (in order of first appearance, without a per-row
/// allocation), and only they are sorted.
fn dictionary(name: &str, array: &ArrayRef) -> Result<(Vec<u32>, Vec<String>)> {
    let utf8 = as_utf8(name, array)?;
    let encoded = cast(
        &utf8,
        &DataType::Dictionary(Box::new(DataType::UInt32), Box::new(DataType::Utf8)),
    )
    .map_err(|e| Error::UnsupportedType {
        column: name.into(),
        data_type: array.data_type().to_string(),
        what: format!("cannot be dictionary-encoded ({e})"),
    })?;
    let encoded = encoded.as_dictionary::<UInt32Type>();
    let values = encoded.values().as_string::<i32>();
    let mut distinct: Vec<(&str, u32)> = (0..values.len())
        .map(|i| (values.value(i), i as u32))
        .collect();
    distinct.sort_unstable();
    let mut rank = vec![0u32; distinct.len()];
    for (r, (_, p)) in distinct.iter().enumerate() {
        rank[*p as usize] = r as u32;
    }
    let codes = encoded
        .keys()
        .values()
        .iter()
        .map(|&p| rank[p as usize])
        .collect();
    Ok((
        codes,
        distinct.into_iter().map(|(v, _)| v.to_string()).collect(),
    ))
}

fn is_ordered(t: &DataType) -> bool {
    t.is_numeric() || matches!(t, DataType::Date32 | DataType::Date64)
}

pub(super) fn encode_qi(name: &str, array: &ArrayRef, hierarchy: Option<&Hierarchy>) -> Result<Qi> {
    no_nulls(name, array)?;
    let dt = array.data_type();
    if let Some(h) = hierarchy {
        // Build the tree over the distinct values, then map rows by code.
        let numeric = matches!(h, Hierarchy::Interval { .. }) && dt.is_numeric();
        let date =
            matches!(h, Hierarchy::Date {}) && matches!(dt, DataType::Date32 | DataType::Date64);
        let (codes, distinct) = dictionary(name, array)?;
        let numbers: Vec<f64>;
        let dates: Vec<NaiveDate>;
        let values: Vec<Value> = if numeric {
            numbers = distinct
                .iter()
                .map(|v| v.parse::<f64>().unwrap_or(f64::NAN))
                .collect();
            numbers.iter().map(|&x| Value::Number(x)).collect()
        } else if date {
            dates = distinct
                .iter()
                .map(|v| NaiveDate::parse_from_str(v, "%Y-%m-%d").unwrap_or_default())
                .collect();
            dates.iter().map(|&d| Value::Date(d)).collect()
        } else {
            distinct.iter().map(|v| Value::Text(v)).collect()
        };
        let (tree, distinct_leaf) = DomainTree::build(name, h, &values)?;
        let leaf = codes
            .into_iter()
            .map(|c| distinct_leaf[c as usize])
            .collect();
        return Ok(Qi::Tree { tree, leaf });
    }
    if is_ordered(dt) {
        let date = matches!(dt, DataType::Date32 | DataType::Date64);
        let values = if date {
            as_days(name, array)?.into_iter().map(f64::from).collect()
        } else {
            as_f64(name, array)?
        };
        if let Some(bad) = values.iter().position(|x| !x.is_finite()) {
            return Err(Error::BadValue {
                column: name.into(),
                row: bad,
                message: "not a finite number".into(),
            });
        }
        let min = values.iter().copied().fold(f64::INFINITY, f64::min);
        let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        return Ok(Qi::Ordered {
            values,
            min,
            max,
            date,
        });
    }
    if matches!(
        dt,
        DataType::Timestamp(..) | DataType::Time32(_) | DataType::Time64(_)
    ) {
        return Err(Error::UnsupportedType {
            column: name.into(),
            data_type: dt.to_string(),
            what: "needs a hierarchy to be a quasi-identifier (declare `kind = \"date\"` for it)"
                .into(),
        });
    }
    let (code, labels) = dictionary(name, array)?;
    Ok(Qi::Set { code, labels })
}

fn as_f64(name: &str, array: &ArrayRef) -> Result<Vec<f64>> {
    let a = cast(array, &DataType::Float64).map_err(|e| Error::UnsupportedType {
        column: name.into(),
        data_type: array.data_type().to_string(),
        what: format!("cannot be read as a number ({e})"),
    })?;
    Ok(a.as_primitive::<Float64Type>().values().to_vec())
}

fn as_days(name: &str, array: &ArrayRef) -> Result<Vec<i32>> {
    let a = cast(array, &DataType::Date32)
        .and_then(|d| cast(&d, &DataType::Int32))
        .map_err(|e| Error::UnsupportedType {
            column: name.into(),
            data_type: array.data_type().to_string(),
            what: format!("cannot be read as a date ({e})"),
        })?;
    Ok(a.as_primitive::<Int32Type>().values().to_vec())
}

pub(super) fn encode_sensitive(
    name: &str,
    array: &ArrayRef,
    hierarchy: Option<&Hierarchy>,
) -> Result<(Sensitive, GroundDistance)> {
    no_nulls(name, array)?;
    if let Some(h @ Hierarchy::Tree { .. }) = hierarchy {
        let (codes, distinct) = dictionary(name, array)?;
        let values: Vec<Value> = distinct.iter().map(|s| Value::Text(s)).collect();
        let (tree, distinct_leaf) = DomainTree::build(name, h, &values)?;
        let leaf: Vec<u32> = codes
            .into_iter()
            .map(|c| distinct_leaf[c as usize])
            .collect();
        let domain = tree.leaf_count() as usize;
        return Ok((
            Sensitive { code: leaf, domain },
            GroundDistance::Hierarchical(tree),
        ));
    }
    if array.data_type().is_numeric() {
        let values = as_f64(name, array)?;
        let mut distinct = values.clone();
        distinct.sort_by(f64::total_cmp);
        distinct.dedup();
        let code = values
            .iter()
            .map(|x| distinct.partition_point(|d| d < x) as u32)
            .collect();
        return Ok((
            Sensitive {
                code,
                domain: distinct.len(),
            },
            GroundDistance::Ordered,
        ));
    }
    let (code, labels) = dictionary(name, array)?;
    Ok((
        Sensitive {
            code,
            domain: labels.len(),
        },
        GroundDistance::Equal,
    ))
}

pub(super) fn histogram(s: &Sensitive, rows: &[u32]) -> Vec<u32> {
    let mut counts = vec![0u32; s.domain];
    for &r in rows {
        counts[s.code[r as usize] as usize] += 1;
    }
    counts
}
