//! Values as hierarchies see them, and reading them as numbers, dates or
//! text with an error that names the column.
//!
//! Also the two conversions the rest of the crate shares with hierarchy
//! labels: Arrow day numbers to dates, and numbers printed without `.0`.

use chrono::NaiveDate;

use crate::error::{Error, Result};

/// A value as hierarchies see it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Value<'a> {
    /// A number (intervals).
    Number(f64),
    /// A calendar date (dates).
    Date(NaiveDate),
    /// Text (prefixes, trees; dates as `YYYY-MM-DD`).
    Text(&'a str),
}

pub(super) fn number(column: &str, value: Value<'_>) -> Result<f64> {
    match value {
        Value::Number(x) if x.is_finite() => Ok(x),
        Value::Text(s) => s
            .trim()
            .parse::<f64>()
            .ok()
            .filter(|x| x.is_finite())
            .ok_or_else(|| Error::Hierarchy {
                column: column.into(),
                message: format!("{s:?} is not a number"),
            }),
        other => Err(Error::Hierarchy {
            column: column.into(),
            message: format!("an interval hierarchy needs numbers, got {other:?}"),
        }),
    }
}

pub(super) fn date(column: &str, value: Value<'_>) -> Result<NaiveDate> {
    match value {
        Value::Date(d) => Ok(d),
        Value::Text(s) => s
            .get(..10)
            .and_then(|p| NaiveDate::parse_from_str(p, "%Y-%m-%d").ok())
            .ok_or_else(|| Error::Hierarchy {
                column: column.into(),
                message: format!("{s:?} is not a YYYY-MM-DD date"),
            }),
        Value::Number(x) => Err(Error::Hierarchy {
            column: column.into(),
            message: format!("a date hierarchy needs dates, got the number {x}"),
        }),
    }
}

pub(super) fn text<'a>(column: &str, value: Value<'a>) -> Result<&'a str> {
    match value {
        Value::Text(s) => Ok(s),
        other => Err(Error::Hierarchy {
            column: column.into(),
            message: format!("this hierarchy needs text values, got {other:?}"),
        }),
    }
}

/// The date `days` after 1970-01-01 (Arrow's `Date32`).
pub(crate) fn date_from_unix_days(days: i64) -> NaiveDate {
    const UNIX_EPOCH_FROM_CE: i64 = 719_163;
    i32::try_from(days + UNIX_EPOCH_FROM_CE)
        .ok()
        .and_then(NaiveDate::from_num_days_from_ce_opt)
        .unwrap_or_default()
}

/// Numbers print without a trailing `.0` when integral.
pub(crate) fn format_number(x: f64) -> String {
    if x.fract() == 0.0 && x.abs() < 1e15 {
        format!("{}", x as i64)
    } else {
        format!("{x}")
    }
}
