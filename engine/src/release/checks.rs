//! The request's checks against the table, before anything is reserved:
//! the columns it names exist and have a usable type, so these refusals
//! are free and say what is wrong.

use super::*;

/// Checks what can be checked before anything is planned (bounds, the
/// unit, the columns' presence and types), with the messages `cohort dp`
/// has always given: a refusal here spends nothing.
pub(super) fn precheck(batch: &RecordBatch, request: &Request) -> Result<()> {
    if request.max_rows == 0 {
        return Err(Error::Invalid("--max-rows must be at least 1".into()));
    }
    if request
        .deadline
        .is_some_and(|d| d > std::time::Duration::from_secs(24 * 3_600))
    {
        return Err(Error::Invalid(
            "--deadline-ms must be at most a day (86400000)".into(),
        ));
    }
    if let Some(unit) = &request.unit {
        column_of(batch, unit)?;
    }
    match &request.statistic {
        Statistic::Count => Ok(()),
        Statistic::Sum {
            column: c,
            lower,
            upper,
        }
        | Statistic::Mean {
            column: c,
            lower,
            upper,
        } => {
            if !(lower.is_finite() && upper.is_finite() && lower <= upper) {
                return Err(Error::Invalid(format!(
                    "--lower {lower} --upper {upper}: finite bounds with lower ≤ upper"
                )));
            }
            if *lower == 0.0 && *upper == 0.0 {
                return Err(Error::Invalid(
                    "--lower 0 --upper 0 make the sum constant: there is nothing to release".into(),
                ));
            }
            numeric(batch, c)
        }
        Statistic::Keys { column: c, .. } | Statistic::Quantile { column: c, .. }
            if !matches!(request.privacy, Privacy::Pure { .. }) =>
        {
            Err(Error::Invalid(format!(
                "key selection and quantiles take --epsilon, not --rho (column `{c}`)"
            )))
        }
        Statistic::Quantile {
            column: c,
            alpha,
            candidates,
        } => {
            if candidates.is_empty()
                || candidates.iter().any(|c| !c.is_finite())
                || candidates.windows(2).any(|w| w[0] >= w[1])
            {
                return Err(Error::Invalid(
                    "--candidates must be finite and strictly increasing (sort them and remove \
                     duplicates)"
                        .into(),
                ));
            }
            if !(0.0..=1.0).contains(alpha) {
                return Err(Error::Invalid(format!(
                    "--alpha {alpha} must be in [0, 1]; 0.5 is the median"
                )));
            }
            numeric(batch, c)
        }
        Statistic::Histogram { column: c, .. } | Statistic::Keys { column: c, .. } => {
            column_of(batch, c).map(|_| ())
        }
    }
}

pub(super) fn column_of<'a>(batch: &'a RecordBatch, name: &str) -> Result<&'a ArrayRef> {
    batch.column_by_name(name).ok_or_else(|| {
        let names: Vec<_> = batch
            .schema()
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .collect();
        Error::Invalid(format!(
            "column `{name}` is not in the table (it has: {})",
            names.join(", ")
        ))
    })
}

pub(super) fn numeric(batch: &RecordBatch, name: &str) -> Result<()> {
    let c = column_of(batch, name)?;
    if !c.data_type().is_numeric() {
        return Err(Error::Invalid(format!(
            "column `{name}` is {}, not numeric",
            c.data_type()
        )));
    }
    Ok(())
}
