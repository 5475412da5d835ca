//! The 95% intervals reported with each release, from OpenDP's accuracy
//! functions.
//!
//! Kept apart from the noise itself because these bounds are what a
//! researcher reads: each function states why its half-width covers at least
//! the stated probability, including the rounding of OpenDP's own formulas.

use opendp::accuracy::{
    discrete_gaussian_scale_to_accuracy, discrete_laplacian_scale_to_accuracy,
    gaussian_scale_to_accuracy, laplacian_scale_to_accuracy,
};

use super::noise::opendp;
use super::release::MechanismKind;
use crate::error::Result;
/// The significance level of [`Release::accuracy_95`](super::Release::accuracy_95).
pub(super) const ALPHA: f64 = 0.05;

/// Up to this noise scale the discrete Gaussian accuracy is computed by
/// OpenDP's exact summation (`O(38·scale)` terms); above it, by the
/// continuous bound of Canonne, Kamath & Steinke (2020, Prop. 25).
const EXACT_GAUSSIAN_ACCURACY_MAX_SCALE: f64 = 64.0;

/// OpenDP's discrete Laplace accuracy `a`: `P[|X| ≥ a] ≤ alpha`.
fn discrete_laplace_accuracy(scale: f64, alpha: f64) -> Result<f64> {
    discrete_laplacian_scale_to_accuracy(scale, alpha)
        .map_err(opendp("computing the discrete Laplace accuracy"))
}

fn continuous_gaussian_accuracy(scale: f64, alpha: f64) -> Result<f64> {
    gaussian_scale_to_accuracy(scale, alpha).map_err(opendp("computing the Gaussian accuracy"))
}

/// Half-width `h` of the `1 − alpha` interval of the integer noise of
/// `mechanism` at `scale`: `P[|X| ≤ h] ≥ 1 − alpha`, and for the discrete
/// Laplace and (σ ≤ 64) discrete Gaussian the smallest such integer.
///
/// OpenDP's `discrete_laplacian_scale_to_accuracy` returns a real `a` with
/// `P[|X| ≥ a] ≤ alpha`; as `X` is an integer, `P[|X| ≤ ⌈a⌉ − 1] = P[|X| < a]
/// ≥ 1 − alpha`, so `h` is `⌈a⌉ − 1`, with `a` inflated by a relative 10⁻¹²
/// against the rounding of its closed form (which costs one unit only when
/// `a` lands within 10⁻¹² of an integer).
///
/// `discrete_gaussian_scale_to_accuracy` is different: it already returns an
/// integer, `i + 1` for the first `i` at which its `f64` sum of the mass of
/// `[−i, i]` reaches `1 − alpha`, so `h = a − 1` exactly. Inflating it
/// and rounding up would add one to every half-width (σ = 10: 21 instead
/// of 20, covering 0.9685 instead of 0.9597). The rounding of that sum (at
/// most ~5,000 terms for σ ≤ 64, so an error ≲ 10⁻¹² of the mass) is
/// guarded instead by asking for the level `alpha·(1 − 10⁻⁹)`, a margin of
/// at least 2.5·10⁻¹¹ for the `alpha` used in this module (0.05 and 0.025).
///
/// The sum takes `O(38·scale)` terms, so above σ = 64 `h = ⌈a_c⌉` for the
/// continuous Gaussian accuracy `a_c` (inflated as above), valid because
/// `P[X ≥ m] ≤ P[N(0, σ²) ≥ m − 1]` (Canonne, Kamath & Steinke 2020,
/// Prop. 25): `P[|X| > ⌈a_c⌉] ≤ P[|N| ≥ ⌈a_c⌉] ≤ alpha`.
pub(super) fn integer_accuracy(mechanism: MechanismKind, scale: f64, alpha: f64) -> Result<f64> {
    let inflate = |a: f64| a * (1.0 + 1e-12);
    match mechanism {
        MechanismKind::DiscreteGaussian if scale > EXACT_GAUSSIAN_ACCURACY_MAX_SCALE => {
            Ok(inflate(continuous_gaussian_accuracy(scale, alpha)?).ceil())
        }
        MechanismKind::DiscreteGaussian => {
            let a = discrete_gaussian_scale_to_accuracy(scale, alpha * (1.0 - 1e-9))
                .map_err(opendp("computing the discrete Gaussian accuracy"))?;
            Ok((a - 1.0).max(0.0))
        }
        _ => Ok((inflate(discrete_laplace_accuracy(scale, alpha)?).ceil() - 1.0).max(0.0)),
    }
}

/// Accuracy of OpenDP's `f64` noise (discrete on the 2⁻¹⁰⁷⁴ grid) at
/// `scale`: the continuous Laplace or Gaussian bound (the grid changes the
/// tail by a relative 2⁻¹⁰⁷⁴), plus a relative 10⁻¹² and the `f64` rounding
/// of the output `value`.
pub(super) fn float_accuracy(
    mechanism: MechanismKind,
    scale: f64,
    alpha: f64,
    value: f64,
) -> Result<f64> {
    let continuous = match mechanism {
        MechanismKind::DiscreteGaussian => continuous_gaussian_accuracy(scale, alpha)?,
        _ => laplacian_scale_to_accuracy(scale, alpha)
            .map_err(opendp("computing the Laplace accuracy"))?,
    };
    Ok(continuous * (1.0 + 1e-12) + f64::EPSILON * value.abs())
}
