//! How a projection row is kept in SQLite and read back: plain columns as
//! they are, identifying ones sealed with the patient's data key
//! ([`super::sealed`]), with a Safe Harbor generalization beside those that
//! research needs in some form (birth year, ZIP3).

use chrono::{Datelike, NaiveDate};
use rusqlite::types::{Value, ValueRef};

use super::sealed::{open_cell, seal_cell};
use super::{AtRest, Column, Generalization, Kind, Table};
use crate::keys::keystore::SecretKey;
use crate::{Error, Result};

/// How a scan reads the sealed columns.
pub(crate) enum Reading<'k> {
    /// As research sees them, without any key: sealed columns are null and
    /// generalized ones hold their generalization.
    Research,
    /// Opened with each row's patient's data key (`keys`, given a patient id).
    Identified(&'k mut dyn FnMut(&str) -> Result<SecretKey>),
}

impl Reading<'_> {
    /// Whether this reading opens sealed cells.
    pub(crate) fn identified(&self) -> bool {
        matches!(self, Reading::Identified(_))
    }
}

impl Generalization {
    /// The plaintext SQLite column that holds it.
    pub fn column(self) -> &'static str {
        match self {
            Generalization::BirthYear => "birth_year",
            Generalization::Zip3 => "zip3",
        }
    }

    /// The generalization of a plaintext `value` of the column, at `today`.
    fn apply(self, value: &Value, today: NaiveDate) -> Result<Value> {
        Ok(match (self, value) {
            (_, Value::Null) => Value::Null,
            (Generalization::BirthYear, Value::Integer(days)) => {
                let born = date_from_days(*days)?;
                // Safe Harbor's top-coding needs only the year: a year of
                // birth at most today's minus 90 may mean an age over 89,
                // and all such years collapse into that one. The research
                // path top-codes again at its own date, which gives the
                // same year as top-coding the full date would.
                let oldest = today.year() - (cohort_anonymizer::deid::MAX_AGE as i32 + 1);
                Value::Integer(born.year().max(oldest).into())
            }
            (Generalization::Zip3, Value::Text(zip)) => {
                Value::Text(cohort_anonymizer::deid::zip3(zip))
            }
            _ => {
                // The value itself stays out of the message: it is PHI.
                return Err(Error::Invalid(format!(
                    "`{}` cannot be computed from a value of this type",
                    self.column()
                )));
            }
        })
    }

    /// A stored generalization as research reads it in the column's type.
    fn read(self, stored: ValueRef<'_>) -> Result<Value> {
        Ok(match (self, stored) {
            (_, ValueRef::Null) => Value::Null,
            // The first day of the (top-coded) birth year.
            (Generalization::BirthYear, ValueRef::Integer(year)) => {
                let first = i32::try_from(year)
                    .ok()
                    .and_then(|y| NaiveDate::from_ymd_opt(y, 1, 1))
                    .ok_or_else(|| Error::Invalid(format!("birth_year {year} is not a year")))?;
                Value::Integer(days_from_date(first))
            }
            (Generalization::Zip3, ValueRef::Text(zip3)) => {
                Value::Text(String::from_utf8_lossy(zip3).into_owned())
            }
            _ => {
                return Err(Error::Invalid(format!(
                    "column `{}` holds a value of the wrong type",
                    self.column()
                )));
            }
        })
    }
}

fn date_from_days(days: i64) -> Result<NaiveDate> {
    NaiveDate::from_ymd_opt(1970, 1, 1)
        .and_then(|epoch| epoch.checked_add_signed(chrono::Duration::days(days)))
        .ok_or_else(|| Error::Invalid(format!("{days} days since 1970 is not a date")))
}

fn days_from_date(d: NaiveDate) -> i64 {
    (d - NaiveDate::from_ymd_opt(1970, 1, 1).expect("the epoch")).num_days()
}

/// The SQLite columns of `table`, in the order [`stored_values`] gives.
pub(super) fn stored_columns(table: &Table) -> Vec<&'static str> {
    let mut out = Vec::with_capacity(table.columns.len() + 2);
    for c in table.columns {
        out.push(c.name);
        if let AtRest::Generalized(g) = c.at_rest {
            out.push(g.column());
        }
    }
    out
}

/// What is stored for a row whose plaintext column values are `values`
/// (in `table`'s column order): identifying values sealed with `key`, the
/// data key of `patient`, and generalizations computed at `today`.
pub(super) fn stored_values(
    table: &Table,
    values: Vec<Value>,
    patient: &str,
    key: &SecretKey,
    today: NaiveDate,
) -> Result<Vec<Value>> {
    let mut out = Vec::with_capacity(values.len() + 2);
    for (c, v) in table.columns.iter().zip(values) {
        match c.at_rest {
            AtRest::Plain => out.push(v),
            AtRest::Sealed => out.push(seal(key, patient, c, &v)),
            AtRest::Generalized(g) => {
                out.push(seal(key, patient, c, &v));
                out.push(g.apply(&v, today)?);
            }
        }
    }
    Ok(out)
}

fn seal(key: &SecretKey, patient: &str, c: &Column, v: &Value) -> Value {
    let text = match v {
        Value::Null => return Value::Null,
        Value::Text(s) => s.clone(),
        Value::Integer(n) => n.to_string(),
        Value::Real(x) => x.to_string(),
        Value::Blob(b) => return Value::Blob(seal_cell(key, patient, c.name, b)),
    };
    Value::Blob(seal_cell(key, patient, c.name, text.as_bytes()))
}

/// The SQL expression that selects column `c` for `reading`.
pub(super) fn select(c: &Column, reading: &Reading<'_>) -> String {
    match (c.at_rest, reading.identified()) {
        (AtRest::Plain, _) | (_, true) => format!("\"{}\"", c.name),
        (AtRest::Sealed, false) => "NULL".into(),
        (AtRest::Generalized(g), false) => format!("\"{}\"", g.column()),
    }
}

/// A selected non-plain cell as the scan's builders take it: the
/// generalization (research), or the opened plaintext (identified, with
/// the row's patient's key).
pub(super) fn read_cell(
    c: &Column,
    stored: ValueRef<'_>,
    patient: &str,
    key: Option<&SecretKey>,
) -> Result<Value> {
    let (sealed, key) = match (c.at_rest, stored, key) {
        (AtRest::Plain, v, _) => return Ok(owned(v)),
        (_, ValueRef::Null, _) => return Ok(Value::Null),
        (AtRest::Generalized(g), v, None) => return g.read(v),
        (AtRest::Sealed, _, None) => return Ok(Value::Null),
        (_, ValueRef::Blob(sealed), Some(key)) => (sealed, key),
        _ => {
            return Err(Error::Invalid(format!(
                "column `{}` of patient {patient} is not sealed",
                c.name
            )));
        }
    };
    let plain = zeroize::Zeroizing::new(open_cell(key, patient, c.name, sealed)?);
    let bad = || Error::Decrypt {
        what: format!("`{}` of patient {patient} in the projection", c.name),
    };
    let text = std::str::from_utf8(&plain).map_err(|_| bad())?;
    Ok(match c.kind {
        Kind::Text => Value::Text(text.to_owned()),
        Kind::Date | Kind::Timestamp => Value::Integer(text.parse().map_err(|_| bad())?),
        Kind::Float => Value::Real(text.parse().map_err(|_| bad())?),
    })
}

fn owned(v: ValueRef<'_>) -> Value {
    match v {
        ValueRef::Null => Value::Null,
        ValueRef::Integer(n) => Value::Integer(n),
        ValueRef::Real(x) => Value::Real(x),
        ValueRef::Text(t) => Value::Text(String::from_utf8_lossy(t).into_owned()),
        ValueRef::Blob(b) => Value::Blob(b.to_vec()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn day(y: i32, m: u32, d: u32) -> Value {
        Value::Integer(days_from_date(NaiveDate::from_ymd_opt(y, m, d).unwrap()))
    }

    /// The stored year, read at any later date and top-coded there as
    /// Safe Harbor does, gives the year Safe Harbor gives the full date.
    #[test]
    fn the_birth_year_top_codes_as_the_full_date_would() {
        let ingest = NaiveDate::from_ymd_opt(2026, 12, 6).unwrap();
        for later in [ingest, NaiveDate::from_ymd_opt(2031, 2, 1).unwrap()] {
            for (y, m, d) in [
                (1936, 12, 7),
                (1936, 1, 1),
                (1935, 6, 1),
                (1937, 1, 1),
                (1980, 5, 5),
            ] {
                let born = NaiveDate::from_ymd_opt(y, m, d).unwrap();
                let safe_harbor = if later.years_since(born).is_some_and(|a| a > 89) {
                    later.year() - 90
                } else {
                    y
                };
                let Value::Integer(stored) = Generalization::BirthYear
                    .apply(&day(y, m, d), ingest)
                    .unwrap()
                else {
                    panic!("a year")
                };
                assert!(stored >= i64::from(ingest.year() - 90), "over 89 collapsed");
                let read = i64::from(later.year() - 90).max(stored);
                assert_eq!(read, i64::from(safe_harbor), "{born} at {later}");
            }
        }
    }

    #[test]
    fn research_reads_the_first_day_of_the_year_and_the_zip3() {
        let v = Generalization::BirthYear
            .read(ValueRef::Integer(1957))
            .unwrap();
        assert_eq!(v, day(1957, 1, 1));
        let zip = Generalization::Zip3
            .apply(&Value::Text("03601".into()), NaiveDate::MIN)
            .unwrap();
        assert_eq!(zip, Value::Text("000".into()), "a restricted prefix");
        let zip = Generalization::Zip3
            .apply(&Value::Text("02139".into()), NaiveDate::MIN)
            .unwrap();
        assert_eq!(zip, Value::Text("021".into()));
    }
}
