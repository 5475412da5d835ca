//! The planned path's outcome rendered as `cohort dp` has always printed
//! it: the statistic in words, the value, the mechanism, its scale and
//! 95% accuracy, the charge and the debit.

use super::*;

/// What `cohort dp` prints, from the planned path's outcome: the plan's one
/// release, its noisy value(s) and 95% error, its cost and the debit.
pub(super) fn outcome_of(request: &Request, outcome: SqlOutcome) -> Outcome {
    let aggregate = outcome.plan.first();
    let planned = aggregate.and_then(|a| a.outputs.first());
    let released = outcome.releases.first();
    let scale = planned
        .and_then(|p| p.scale.first().copied())
        .unwrap_or(0.0);
    let accuracy_95 = released
        .and_then(|r| r.error_95.first().copied())
        .or_else(|| planned.map(|p| p.error_95.at_count(0.0)))
        .unwrap_or(0.0);
    let mechanism = match planned.map(|p| p.mechanism.as_str()) {
        _ if matches!(request.statistic, Statistic::Keys { .. }) => "LaplaceThreshold",
        Some(m) if m.starts_with("discrete Gaussian") => "DiscreteGaussian",
        Some(m) if m.starts_with("discrete Laplace") => "DiscreteLaplace",
        Some(m) if m.starts_with("exponential") => "ExponentialQuantile",
        Some(m) => m,
        None => "none",
    }
    .to_string();
    let first = released.and_then(|r| r.values.first().copied());
    let (statistic, value) = match &request.statistic {
        Statistic::Count => (
            "count".to_string(),
            serde_json::json!(first.map(|v| v as i64)),
        ),
        Statistic::Sum {
            column,
            lower,
            upper,
        } => (
            format!("sum({column}) clamped to [{lower}, {upper}]"),
            serde_json::json!(first),
        ),
        Statistic::Mean {
            column,
            lower,
            upper,
        } => (
            format!("mean({column}) clamped to [{lower}, {upper}]"),
            serde_json::json!(first),
        ),
        Statistic::Histogram { column, domain } => {
            let mut counts = serde_json::Map::new();
            for value in domain {
                let count = outcome
                    .rows
                    .iter()
                    .find(|row| row.first().and_then(|key| key.as_str()) == Some(value.as_str()))
                    .and_then(|row| row.get(1).cloned())
                    .unwrap_or(serde_json::Value::Null);
                counts.insert(value.clone(), count);
            }
            (
                format!("histogram({column}) over {} public values", domain.len()),
                counts.into(),
            )
        }
        Statistic::Keys { column, .. } => {
            let kept: serde_json::Map<String, serde_json::Value> = outcome
                .rows
                .iter()
                .filter_map(|row| {
                    let key = match row.first()? {
                        serde_json::Value::String(s) => s.clone(),
                        other => other.to_string(),
                    };
                    Some((key, row.get(1)?.clone()))
                })
                .collect();
            let threshold = aggregate.and_then(|a| match a.key_selection {
                Some(Charge::Approx { epsilon, delta }) => {
                    KeyThreshold::calibrate(a.max_groups, 1, epsilon, delta)
                        .ok()
                        .map(|t| t.threshold())
                }
                _ => None,
            });
            let statistic = match threshold {
                Some(t) => format!("frequent values of {column} (threshold {t})"),
                None => format!("frequent values of {column}"),
            };
            (statistic, kept.into())
        }
        Statistic::Quantile { column, alpha, .. } => (
            format!("quantile {alpha} of {column}"),
            serde_json::json!(first),
        ),
    };
    Outcome {
        statistic,
        value,
        mechanism,
        scale,
        accuracy_95,
        charge: outcome.cost,
        debit: outcome.debit,
    }
}
