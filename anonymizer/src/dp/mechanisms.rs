//! The mechanisms called on an exact statistic: count, sums, mean, histogram,
//! key selection and quantile, each calibrated at the call.
//!
//! Each states its sensitivity and guarantee next to its code. They check
//! their parameters, calibrate noise ([`super::noise`]) or a planned
//! mechanism ([`super::planned`]), and return a [`Release`].

use std::collections::HashMap;

use opendp::traits::Hashable;

use super::accuracy::{ALPHA, float_accuracy, integer_accuracy};
use super::checks::{
    check_bounds_f64, check_count, check_finite, check_quantile_parameters, check_rows,
};
use super::noise::{mul_ceil, noisy_f64, noisy_i64};
use super::planned::{IntegerNoise, KeyThreshold, QuantileChoice, Sensitivity};
use super::privacy::{Privacy, positive_amount};
use super::release::{KeySelection, Release};
use crate::accountant::Amount;
use crate::error::{Error, Result};
/// A noisy count of rows.
///
/// **Sensitivity.** Adding or removing one patient, who contributes at most
/// `max_rows_per_unit` rows, changes the count by at most
/// `Δ = max_rows_per_unit`.
///
/// **Guarantee.** [`Privacy::Pure`]: discrete Laplace noise with scale
/// `Δ/ε` (OpenDP `make_laplace` on `i64`), ε-DP. [`Privacy::Zcdp`]: discrete
/// Gaussian noise with σ = `Δ/√(2ρ)` (OpenDP `make_gaussian`), ρ-zCDP. The
/// charge is the ε or ρ given; the scale is calibrated so that OpenDP's
/// privacy map certifies it.
///
/// **Accuracy.** From OpenDP's `discrete_laplacian_scale_to_accuracy` /
/// `discrete_gaussian_scale_to_accuracy` at α = 0.05, as the largest integer
/// error inside the interval (for σ > 64, from the continuous Gaussian
/// bound, Canonne–Kamath–Steinke Prop. 25); see the module source.
/// The released count may be negative; clamping it at zero is allowed
/// post-processing.
pub fn count(true_count: i64, max_rows_per_unit: u32, privacy: Privacy) -> Result<Release<i64>> {
    check_count("true_count", true_count)?;
    check_rows("max_rows_per_unit", max_rows_per_unit)?;
    let target = privacy.target()?;
    let noisy = noisy_i64(true_count, u128::from(max_rows_per_unit), target)?;
    let accuracy = integer_accuracy(noisy.mechanism, noisy.scale, ALPHA)?;
    Ok(Release::new(
        noisy.value,
        noisy.mechanism,
        noisy.scale,
        target.charge(),
        accuracy,
    ))
}

/// A noisy sum of integer values clamped to `[lower, upper]`.
///
/// `clamped_sum` is the exact sum of the clamped values of at most
/// `max_rows_per_unit` rows per patient.
///
/// **Sensitivity.** Adding or removing one patient adds or removes at most
/// `max_rows_per_unit` values, each in `[lower, upper]`, so the sum changes
/// by at most `Δ = max(|lower|, |upper|) · max_rows_per_unit` (computed
/// exactly in `u128`).
///
/// **Guarantee.** As [`count`] with that Δ: discrete Laplace with scale
/// `Δ/ε` (ε-DP) or discrete Gaussian with σ = `Δ/√(2ρ)` (ρ-zCDP). The
/// result saturates at the `i64` range.
///
/// **Accuracy.** As [`count`].
pub fn sum_i64(
    clamped_sum: i64,
    lower: i64,
    upper: i64,
    max_rows_per_unit: u32,
    privacy: Privacy,
) -> Result<Release<i64>> {
    if lower > upper {
        return Err(Error::parameter(
            "lower",
            format!("{lower} > upper = {upper}"),
            "the clamping bounds must satisfy lower ≤ upper",
        ));
    }
    check_rows("max_rows_per_unit", max_rows_per_unit)?;
    let bound = u128::from(lower.unsigned_abs().max(upper.unsigned_abs()));
    if bound == 0 {
        return Err(Error::parameter(
            "upper",
            "0 (and lower = 0)",
            "bounds [0, 0] make the sum constant: there is nothing to release",
        ));
    }
    let target = privacy.target()?;
    let noisy = noisy_i64(clamped_sum, bound * u128::from(max_rows_per_unit), target)?;
    let accuracy = integer_accuracy(noisy.mechanism, noisy.scale, ALPHA)?;
    Ok(Release::new(
        noisy.value,
        noisy.mechanism,
        noisy.scale,
        target.charge(),
        accuracy,
    ))
}

/// A noisy sum of real values clamped to `[lower, upper]`.
///
/// `clamped_sum` is the sum of the clamped values of at most
/// `max_rows_per_unit` rows per patient. Compute it exactly (or in a
/// fixed-point representation): a floating-point sum of many values can
/// differ between neighbours by more than the sensitivity below because of
/// rounding (Casacuberta et al., CCS 2022).
///
/// **Sensitivity.** `Δ = max(|lower|, |upper|) · max_rows_per_unit`, rounded
/// up in `f64`.
///
/// **Guarantee.** OpenDP's `make_laplace` (ε-DP, scale `Δ/ε`) or
/// `make_gaussian` (ρ-zCDP, σ = `Δ/√(2ρ)`) on `f64`: the input is rounded to
/// the 2⁻¹⁰⁷⁴ grid and integer noise is added there, so the guarantee is not
/// broken by floating-point artefacts (Mironov 2012).
///
/// **Accuracy.** The continuous Laplace (`scale · ln(1/0.05)`) or Gaussian
/// bound, plus the `f64` rounding of the output.
pub fn sum_f64(
    clamped_sum: f64,
    lower: f64,
    upper: f64,
    max_rows_per_unit: u32,
    privacy: Privacy,
) -> Result<Release<f64>> {
    check_finite("clamped_sum", clamped_sum)?;
    check_bounds_f64(lower, upper)?;
    check_rows("max_rows_per_unit", max_rows_per_unit)?;
    let target = privacy.target()?;
    let sensitivity = float_sensitivity(lower, upper, max_rows_per_unit)?;
    let noisy = noisy_f64(clamped_sum, sensitivity, target)?;
    let accuracy = float_accuracy(noisy.mechanism, noisy.scale, ALPHA, noisy.value)?;
    Ok(Release::new(
        noisy.value,
        noisy.mechanism,
        noisy.scale,
        target.charge(),
        accuracy,
    ))
}

fn float_sensitivity(lower: f64, upper: f64, max_rows_per_unit: u32) -> Result<f64> {
    let bound = lower.abs().max(upper.abs());
    if bound == 0.0 {
        return Err(Error::parameter(
            "upper",
            "0 (and lower = 0)",
            "bounds [0, 0] make the sum constant: there is nothing to release",
        ));
    }
    let sensitivity = mul_ceil(bound, f64::from(max_rows_per_unit));
    check_finite("max(|lower|, |upper|) · max_rows_per_unit", sensitivity)?;
    Ok(sensitivity)
}

/// A noisy mean of real values clamped to `[lower, upper]`: a noisy sum
/// divided by a noisy count.
///
/// The privacy parameter is split exactly in two (in 10⁻¹⁸ units): one half
/// for [`sum_f64`] of `clamped_sum` (sensitivity `max(|lower|, |upper|) ·
/// max_rows_per_unit`), the other for [`count`] of `count` (sensitivity
/// `max_rows_per_unit`). By sequential composition the release is ε-DP (or
/// ρ-zCDP) for the full parameter, which is its charge. The ratio is clamped
/// to `[lower, upper]` (post-processing); if the noisy count is below 1 the
/// midpoint of the bounds is released.
///
/// **Scale.** [`Release::scale`] is the scale of the sum's noise; the
/// count's is `max_rows_per_unit / ε_count` (or the Gaussian equivalent).
///
/// **Accuracy** (for a true count of at least 1). With probability at least
/// 0.95 both noises lie within their own 97.5% intervals `a_S`, `a_C`
/// (union bound), and then `|S̃/C̃ − S/C| ≤ (a_S + B·a_C) / C̃` with
/// `B = max(|lower|, |upper|)` ≥ the true mean's magnitude. The reported
/// accuracy is that bound, computed from released values only, capped at
/// `upper − lower` (both the release and the true mean lie in the bounds).
pub fn mean(
    clamped_sum: f64,
    count: i64,
    lower: f64,
    upper: f64,
    max_rows_per_unit: u32,
    privacy: Privacy,
) -> Result<Release<f64>> {
    check_finite("clamped_sum", clamped_sum)?;
    check_count("count", count)?;
    check_bounds_f64(lower, upper)?;
    check_rows("max_rows_per_unit", max_rows_per_unit)?;
    let target = privacy.target()?;
    let (sum_target, count_target) = target.split()?;
    let sensitivity = float_sensitivity(lower, upper, max_rows_per_unit)?;

    let sum = noisy_f64(clamped_sum, sensitivity, sum_target)?;
    let noisy_count = noisy_i64(count, u128::from(max_rows_per_unit), count_target)?;

    let half_alpha = ALPHA / 2.0;
    let sum_accuracy = float_accuracy(sum.mechanism, sum.scale, half_alpha, sum.value)?;
    let count_accuracy = integer_accuracy(noisy_count.mechanism, noisy_count.scale, half_alpha)?;
    let bound = lower.abs().max(upper.abs());
    let (value, accuracy) = if noisy_count.value >= 1 {
        let denominator = noisy_count.value as f64;
        let value = (sum.value / denominator).clamp(lower, upper);
        let accuracy = (sum_accuracy + bound * count_accuracy) / denominator * (1.0 + 1e-12);
        (value, accuracy.min(upper - lower))
    } else {
        (lower + (upper - lower) / 2.0, (upper - lower) / 2.0)
    };
    Ok(Release::new(
        value,
        sum.mechanism,
        sum.scale,
        target.charge(),
        accuracy,
    ))
}

/// A noisy histogram over a declared public domain of bins.
///
/// `counts[i]` is the exact count of bin `i`; the bins are public (declared
/// before seeing the data), so releasing every bin, even empty ones, leaks
/// nothing about which bins occur. Each patient touches at most
/// `max_bins_per_unit` bins with at most `max_rows_per_bin` rows in each.
///
/// **Sensitivity.** With `b = min(max_bins_per_unit, counts.len())` and
/// `r = max_rows_per_bin`: L1 `b·r` for [`Privacy::Pure`], L2 `√b·r`
/// (rounded up) for [`Privacy::Zcdp`].
///
/// **Guarantee.** Independent discrete Laplace noise of scale `b·r/ε` on
/// every bin (ε-DP), or discrete Gaussian noise of σ = `√b·r/√(2ρ)` (ρ-zCDP),
/// via OpenDP's vector `make_laplace` / `make_gaussian`.
///
/// **Accuracy.** Per bin (each bin separately, not simultaneously), as in [`count`].
pub fn histogram(
    counts: &[i64],
    max_bins_per_unit: u32,
    max_rows_per_bin: u32,
    privacy: Privacy,
) -> Result<Release<Vec<i64>>> {
    if counts.is_empty() {
        return Err(Error::parameter(
            "counts",
            "[]",
            "declare at least one bin of the public domain",
        ));
    }
    for &count in counts {
        check_count("counts[i]", count)?;
    }
    check_rows("max_bins_per_unit", max_bins_per_unit)?;
    check_rows("max_rows_per_bin", max_rows_per_bin)?;
    let bins = u32::try_from(counts.len()).map_or(max_bins_per_unit, |n| n.min(max_bins_per_unit));
    let sensitivity = Sensitivity::grouped(bins, u128::from(max_rows_per_bin))?;
    IntegerNoise::calibrate(sensitivity, privacy.charge()?)?.release(counts)
}

/// DP key selection for a `GROUP BY` whose keys are not public: noisy
/// counts, keeping only the keys above a threshold.
///
/// `counts` maps each key present in the data to its exact count. Each
/// patient contributes to at most `max_partitions_per_unit` keys with at
/// most `max_rows_per_partition` rows in each.
///
/// **Sensitivity.** L0 = `max_partitions_per_unit`, L∞ =
/// `max_rows_per_partition`, L1 = their product.
///
/// **Guarantee.** OpenDP's `make_laplace_threshold` (Rogers 2023): discrete
/// Laplace noise of scale `L1/ε` on every count, and only keys whose noisy
/// count is at least the threshold are released. Counts of keys present in
/// both neighbours are ε-DP; a key present in only one of them could reveal
/// its presence, which the threshold makes unlikely: (ε, δ)-DP overall. The
/// threshold is the smallest integer at which OpenDP's privacy map certifies
/// the requested δ; it is returned with the keys.
///
/// **Accuracy.** Per kept key, the 95% half-width of the noise, as in
/// [`count`]. Counts of kept keys are biased upwards near the threshold
/// (they were selected for being large).
pub fn select_keys<K: Hashable + Ord>(
    counts: HashMap<K, i64>,
    max_partitions_per_unit: u32,
    max_rows_per_partition: u32,
    epsilon: f64,
    delta: f64,
) -> Result<Release<KeySelection<K>>> {
    for &count in counts.values() {
        check_count("counts[key]", count)?;
    }
    check_rows("max_partitions_per_unit", max_partitions_per_unit)?;
    check_rows("max_rows_per_partition", max_rows_per_partition)?;
    let epsilon_target = positive_amount("epsilon", epsilon)?;
    if !(delta.is_finite() && delta > 0.0 && delta < 1.0) {
        return Err(Error::parameter(
            "delta",
            delta,
            "must be in (0, 1); typically well below 1/(number of patients)",
        ));
    }
    let delta_target = Amount::from_f64_display(delta)?;
    KeyThreshold::calibrate(
        max_partitions_per_unit,
        max_rows_per_partition,
        epsilon_target,
        delta_target,
    )?
    .release(counts)
}

/// A DP `alpha`-quantile (0.5 is the median), chosen among public `candidates`.
///
/// `values` are the rows, at most `max_rows_per_unit` per patient;
/// `candidates` must be finite and strictly increasing.
///
/// **Score and sensitivity.** OpenDP's `make_quantile_score_candidates`
/// scores candidate `c` by `|(1 − alpha)·#{x < c} − alpha·#{x > c}|`
/// (Smith 2011), lower is better; one patient changes every score by at most
/// `max_rows_per_unit · max(alpha, 1 − alpha)`.
///
/// **Guarantee.** OpenDP's `make_private_quantile` with
/// `SymmetricDistance` (d_in = `max_rows_per_unit`) and `MaxDivergence`:
/// permute-and-flip selection (McKenna & Sheldon 2020), ε-DP with the scale
/// calibrated so that OpenDP's map certifies ε (about
/// `2·max_rows_per_unit·max(alpha, 1 − alpha)/ε`, in score units).
///
/// **Accuracy.** In score units, not in the units of the values: with
/// probability at least 0.95 the chosen candidate's score exceeds the best
/// candidate's by at most `accuracy_95 = scale · ln(|candidates| / 0.05)`
/// (each worse candidate is accepted with probability at most
/// `exp(−gap/scale)`; union bound). For the median, a score `s` means the
/// candidate has `2s` more rows on one side than on the other.
pub fn quantile(
    values: &[f64],
    candidates: &[f64],
    alpha: f64,
    max_rows_per_unit: u32,
    epsilon: f64,
) -> Result<Release<f64>> {
    if values.iter().any(|v| v.is_nan()) {
        return Err(Error::parameter(
            "values",
            "NaN",
            "remove or impute NaN values before a quantile",
        ));
    }
    check_quantile_parameters(candidates, alpha)?;
    check_rows("max_rows_per_unit", max_rows_per_unit)?;
    let epsilon_target = positive_amount("epsilon", epsilon)?;
    QuantileChoice::calibrate(
        candidates.to_vec(),
        alpha,
        max_rows_per_unit,
        epsilon_target,
    )?
    .release(values)
}
