//! The column transformations a policy's actions apply: ZIP3, age top-coding,
//! year, date shift and hierarchy generalization, with the Safe Harbor
//! constants they use.
//!
//! Each reads one Arrow column and returns the transformed column, refusing a
//! type it cannot read with an error that names the column.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, Int32Builder, Int64Array, StringBuilder};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Int64Type, TimeUnit};
use chrono::{Datelike, NaiveDate};

use super::pseudonym::PseudonymKey;
use crate::error::{Error, Result};
use crate::hierarchy::{Hierarchy, Value, date_from_unix_days};
/// Three-digit ZIP prefixes whose population was 20,000 or fewer in the 2000
/// census; Safe Harbor requires them to be released as `000` (HHS guidance,
/// 2012, section 3.3).
pub const RESTRICTED_ZIP3: [&str; 17] = [
    "036", "059", "063", "102", "203", "556", "692", "790", "821", "823", "830", "831", "878",
    "879", "884", "890", "893",
];

/// Ages above this are aggregated into one category, "90 or older".
pub const MAX_AGE: i64 = 89;

/// Applies `f` (a pure function of the value; `row` is for its errors) to
/// every non-null value read as text, once per distinct value.
pub(super) fn map_text(
    name: &str,
    array: &ArrayRef,
    f: impl Fn(usize, &str) -> Result<String>,
) -> Result<ArrayRef> {
    let text = cast(array, &DataType::Utf8).map_err(|e| Error::UnsupportedType {
        column: name.into(),
        data_type: array.data_type().to_string(),
        what: format!("cannot be read as text ({e})"),
    })?;
    let s = text.as_string::<i32>();
    let mut done: HashMap<&str, String> = HashMap::new();
    let mut b = StringBuilder::with_capacity(s.len(), s.len() * 16);
    for i in 0..s.len() {
        if s.is_null(i) {
            b.append_null();
            continue;
        }
        let v = s.value(i);
        if !done.contains_key(v) {
            done.insert(v, f(i, v)?);
        }
        b.append_value(&done[v]);
    }
    Ok(Arc::new(b.finish()))
}

/// The Safe Harbor three-digit ZIP.
pub fn zip3(zip: &str) -> String {
    let digits: String = zip.chars().filter(char::is_ascii_digit).take(3).collect();
    if digits.len() < 3 || RESTRICTED_ZIP3.contains(&digits.as_str()) {
        "000".into()
    } else {
        digits
    }
}

pub(super) fn generalize(
    name: &str,
    array: &ArrayRef,
    h: &Hierarchy,
    level: usize,
) -> Result<ArrayRef> {
    let numeric = array.data_type().is_numeric();
    map_text(name, array, |row, s| {
        let value = match (h, numeric) {
            (Hierarchy::Interval { .. }, true) => {
                Value::Number(s.parse().map_err(|_| Error::BadValue {
                    column: name.into(),
                    row,
                    message: format!("{s:?} is not a number"),
                })?)
            }
            _ => Value::Text(s),
        };
        h.generalize(name, value, level)
    })
}

pub(super) fn top_code_age(name: &str, array: &ArrayRef) -> Result<ArrayRef> {
    if !array.data_type().is_numeric() {
        return Err(Error::UnsupportedType {
            column: name.into(),
            data_type: array.data_type().to_string(),
            what: "is not numeric, so ages cannot be top-coded".into(),
        });
    }
    let ints = cast(array, &DataType::Int64)?;
    let ints = ints.as_primitive::<Int64Type>();
    Ok(Arc::new(
        ints.iter()
            .map(|v| v.map(|a| a.min(MAX_AGE + 1)))
            .collect::<Int64Array>(),
    ))
}

/// Reads a date-like column as days since the Unix epoch.
fn epoch_days(name: &str, array: &ArrayRef) -> Result<Vec<Option<i64>>> {
    let days = match array.data_type() {
        DataType::Date32
        | DataType::Date64
        | DataType::Timestamp(..)
        | DataType::Utf8
        | DataType::LargeUtf8 => {
            let d = cast(array, &DataType::Date32).map_err(|e| Error::UnsupportedType {
                column: name.into(),
                data_type: array.data_type().to_string(),
                what: format!("cannot be read as dates ({e})"),
            })?;
            cast(&d, &DataType::Int64)?
        }
        other => {
            return Err(Error::UnsupportedType {
                column: name.into(),
                data_type: other.to_string(),
                what: "is not a date".into(),
            });
        }
    };
    Ok(days.as_primitive::<Int64Type>().iter().collect())
}

pub(super) fn year(
    name: &str,
    array: &ArrayRef,
    top_code_at: Option<NaiveDate>,
) -> Result<ArrayRef> {
    let mut b = Int32Builder::with_capacity(array.len());
    for d in epoch_days(name, array)? {
        match d.map(date_from_unix_days) {
            None => b.append_null(),
            Some(date) => {
                let mut y = date.year();
                if let Some(at) = top_code_at
                    && at
                        .years_since(date)
                        .is_some_and(|age| i64::from(age) > MAX_AGE)
                {
                    y = at.year() - (MAX_AGE as i32 + 1);
                }
                b.append_value(y);
            }
        }
    }
    Ok(Arc::new(b.finish()))
}

pub(super) fn date_shift(
    name: &str,
    array: &ArrayRef,
    owner: &ArrayRef,
    max_days: u32,
    key: &PseudonymKey,
) -> Result<ArrayRef> {
    let owner = cast(owner, &DataType::Utf8)?;
    let owner = owner.as_string::<i32>();
    let mut cache: HashMap<&str, i64> = HashMap::new();
    let shifts: Vec<i64> = (0..owner.len())
        .map(|i| {
            if owner.is_null(i) {
                return 0;
            }
            let o = owner.value(i);
            *cache
                .entry(o)
                .or_insert_with(|| key.shift_days(o, max_days))
        })
        .collect();
    if owner.null_count() > 0 && (0..owner.len()).any(|i| owner.is_null(i) && array.is_valid(i)) {
        let row = (0..owner.len())
            .find(|&i| owner.is_null(i) && array.is_valid(i))
            .unwrap_or(0);
        return Err(Error::BadValue {
            column: name.into(),
            row,
            message: "the person column is null, so the date cannot be shifted consistently".into(),
        });
    }
    match array.data_type() {
        DataType::Timestamp(unit, tz) => {
            let per_day: i64 = match unit {
                TimeUnit::Second => 86_400,
                TimeUnit::Millisecond => 86_400_000,
                TimeUnit::Microsecond => 86_400_000_000,
                TimeUnit::Nanosecond => 86_400_000_000_000,
            };
            let raw = cast(array, &DataType::Int64)?;
            let raw = raw.as_primitive::<Int64Type>();
            let shifted: Int64Array = raw
                .iter()
                .zip(&shifts)
                .map(|(v, s)| v.map(|v| v + s * per_day))
                .collect();
            Ok(cast(
                &(Arc::new(shifted) as ArrayRef),
                &DataType::Timestamp(*unit, tz.clone()),
            )?)
        }
        _ => {
            let days = epoch_days(name, array)?;
            let shifted: arrow::array::Date32Array = days
                .iter()
                .zip(&shifts)
                .map(|(d, s)| d.map(|d| (d + s) as i32))
                .collect();
            Ok(Arc::new(shifted))
        }
    }
}
