//! Validation of the public parameters of every mechanism, one-shot or planned.
//!
//! Each check refuses with [`Error::InvalidParameter`] naming the parameter
//! and what to do, so the mechanisms share one wording for the same mistake.

use crate::error::{Error, Result};
pub(super) fn check_rows(name: &'static str, rows: u32) -> Result<()> {
    if rows == 0 {
        return Err(Error::parameter(
            name,
            rows,
            "must be at least 1: bound each patient's contribution before releasing",
        ));
    }
    Ok(())
}

pub(super) fn check_count(name: &'static str, count: i64) -> Result<()> {
    if count < 0 {
        return Err(Error::parameter(name, count, "a count cannot be negative"));
    }
    Ok(())
}

pub(super) fn check_finite(name: &'static str, value: f64) -> Result<()> {
    if !value.is_finite() {
        return Err(Error::parameter(name, value, "must be a finite number"));
    }
    Ok(())
}

pub(super) fn check_bounds_f64(lower: f64, upper: f64) -> Result<()> {
    check_finite("lower", lower)?;
    check_finite("upper", upper)?;
    if lower > upper {
        return Err(Error::parameter(
            "lower",
            format!("{lower} > upper = {upper}"),
            "the clamping bounds must satisfy lower ≤ upper",
        ));
    }
    Ok(())
}

/// Candidates must be finite and strictly increasing, `alpha` in `[0, 1]`.
pub(super) fn check_quantile_parameters(candidates: &[f64], alpha: f64) -> Result<()> {
    if candidates.is_empty() {
        return Err(Error::parameter(
            "candidates",
            "[]",
            "declare at least one candidate",
        ));
    }
    for &candidate in candidates {
        check_finite("candidates[i]", candidate)?;
    }
    if candidates.windows(2).any(|pair| pair[0] >= pair[1]) {
        return Err(Error::parameter(
            "candidates",
            "not strictly increasing",
            "sort the candidates and remove duplicates",
        ));
    }
    if !(0.0..=1.0).contains(&alpha) {
        return Err(Error::parameter(
            "alpha",
            alpha,
            "must be in [0, 1]; 0.5 is the median",
        ));
    }
    Ok(())
}
