//! Differential-privacy mechanisms, built on OpenDP.
//!
//! Every function here takes an exact statistic computed on contribution-
//! bounded data and returns a [`Release`]: the noisy value together with the
//! mechanism, its noise scale, the privacy [`Charge`] to debit from the
//! study's [`Accountant`](crate::accountant::Accountant), and the half-width
//! of a 95% interval around the true value. A `Release` can only be built
//! here, from a mechanism's output.
//!
//! # Neighbouring relation and privacy unit
//!
//! The privacy unit is a patient. Two datasets are neighbours when one is
//! the other with all rows of one patient added or removed. The callers (the
//! query planner's contribution bounding) guarantee the declared bounds: a
//! patient contributes at most `max_rows_per_unit` rows to a statistic (and,
//! for histograms and key selection, touches at most a declared number of
//! bins, each with at most a declared number of rows), and every value is
//! clamped to the declared `[lower, upper]`. Each mechanism's sensitivity is
//! stated in terms of those bounds next to its code; if the bounds do not
//! hold, neither does the guarantee.
//!
//! # Noise and calibration
//!
//! All randomness comes from OpenDP's samplers (`use-openssl` gives them
//! OpenSSL's `RAND_priv_bytes`); there is no seeded generator here. Integer
//! statistics get discrete Laplace (pure ε) or discrete Gaussian (ρ-zCDP)
//! noise, exactly as OpenDP's `make_laplace` / `make_gaussian` sample it;
//! real-valued sums use the same constructors over `f64`, which OpenDP makes
//! floating-point safe by sampling on the grid 2⁻¹⁰⁷⁴.
//!
//! The charge of a release is the decimal the caller wrote
//! ([`Amount::from_f64_display`]: `epsilon: 0.1` charges exactly `0.1`). The
//! noise scale is then calibrated so that OpenDP's own privacy map, which
//! rounds up, certifies a loss no larger than that charge; where `sensitivity
//! / ε` in floating point would land a hair above, the scale is nudged up by
//! a few ulps. The charge is therefore never below the loss OpenDP proves.
//!
//! ```
//! use cohort_anonymizer::dp::{self, Privacy};
//!
//! let release = dp::count(1_234, 1, Privacy::Pure { epsilon: 0.5 })?;
//! assert_eq!(release.charge().to_string(), "ε = 0.5");
//! println!("{} ± {}", release.value(), release.accuracy_95());
//! # Ok::<(), cohort_anonymizer::Error>(())
//! ```

use std::collections::HashMap;

use opendp::accuracy::{
    discrete_gaussian_scale_to_accuracy, discrete_laplacian_scale_to_accuracy,
    gaussian_scale_to_accuracy, laplacian_scale_to_accuracy,
};
use opendp::core::{Domain, Measurement, Metric, MetricSpace};
use opendp::domains::AtomDomain;
use opendp::measurements::{
    DiscreteGaussian, DiscreteLaplace, MakeNoise, make_gaussian, make_laplace,
};
use opendp::measures::{MaxDivergence, ZeroConcentratedDivergence};
use opendp::metrics::AbsoluteDistance;
use opendp::traits::Hashable;
use serde::{Deserialize, Serialize};

use crate::accountant::{Amount, Charge};
use crate::error::{Error, Result};

mod planned;
pub use planned::{IntegerNoise, KeyThreshold, QuantileChoice, Sensitivity};

/// The significance level of [`Release::accuracy_95`].
const ALPHA: f64 = 0.05;

/// Up to this noise scale the discrete Gaussian accuracy is computed by
/// OpenDP's exact summation (`O(38·scale)` terms); above it, by the
/// continuous bound of Canonne, Kamath & Steinke (2020, Prop. 25).
const EXACT_GAUSSIAN_ACCURACY_MAX_SCALE: f64 = 64.0;

/// The privacy parameter of a release.
///
/// The charge is the decimal written here (see [`Privacy::charge`]).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Privacy {
    /// Pure ε-DP, with discrete Laplace noise.
    Pure {
        /// ε > 0.
        epsilon: f64,
    },
    /// ρ-zero-concentrated DP, with discrete Gaussian noise.
    Zcdp {
        /// ρ > 0.
        rho: f64,
    },
}

impl Privacy {
    /// What a release with this parameter is charged:
    /// [`Amount::from_f64_display`] of ε or ρ, so `0.1` costs exactly `0.1`.
    /// Errors if the parameter is not finite and positive.
    pub fn charge(&self) -> Result<Charge> {
        Ok(self.target()?.charge())
    }

    fn target(&self) -> Result<Target> {
        Ok(match *self {
            Privacy::Pure { epsilon } => Target::Pure(positive_amount("epsilon", epsilon)?),
            Privacy::Zcdp { rho } => Target::Zcdp(positive_amount("rho", rho)?),
        })
    }
}

/// A privacy target in exact units: what the noise is calibrated to.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Target {
    Pure(Amount),
    Zcdp(Amount),
}

impl Target {
    fn charge(self) -> Charge {
        match self {
            Target::Pure(epsilon) => Charge::Pure { epsilon },
            Target::Zcdp(rho) => Charge::Zcdp { rho },
        }
    }

    /// Two targets of the same kind whose exact sum is `self`.
    fn split(self) -> Result<(Target, Target)> {
        let halve = |amount: Amount, name: &'static str| {
            let first = Amount::from_units(amount.units() / 2);
            let second = Amount::from_units(amount.units() - first.units());
            if first.is_zero() {
                return Err(Error::parameter(
                    name,
                    amount,
                    "is too small to split between a sum and a count (at least 2·10⁻¹⁸)",
                ));
            }
            Ok((first, second))
        };
        Ok(match self {
            Target::Pure(epsilon) => {
                let (a, b) = halve(epsilon, "epsilon")?;
                (Target::Pure(a), Target::Pure(b))
            }
            Target::Zcdp(rho) => {
                let (a, b) = halve(rho, "rho")?;
                (Target::Zcdp(a), Target::Zcdp(b))
            }
        })
    }
}

fn positive_amount(name: &'static str, value: f64) -> Result<Amount> {
    if !(value.is_finite() && value > 0.0) {
        return Err(Error::parameter(
            name,
            value,
            "must be finite and greater than zero",
        ));
    }
    Amount::from_f64_display(value)
}

/// Which mechanism produced a release.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum MechanismKind {
    /// Discrete Laplace noise (OpenDP `make_laplace`); on `f64`, on the 2⁻¹⁰⁷⁴ grid.
    DiscreteLaplace,
    /// Discrete Gaussian noise (OpenDP `make_gaussian`); on `f64`, on the 2⁻¹⁰⁷⁴ grid.
    DiscreteGaussian,
    /// Discrete Laplace noise on every key, keeping keys above a threshold
    /// (OpenDP `make_laplace_threshold`).
    LaplaceThreshold,
    /// The quantile score of Smith (2011) with permute-and-flip selection, a
    /// member of the exponential-mechanism family (OpenDP `make_private_quantile`).
    ExponentialQuantile,
}

/// A differentially private release: a mechanism's output with its cost and accuracy.
///
/// Only the mechanisms of this module build one; its fields are read-only:
///
/// ```compile_fail
/// use cohort_anonymizer::{accountant::Charge, dp::{MechanismKind, Release}};
/// let forged = Release { value: 42, mechanism: MechanismKind::DiscreteLaplace, scale: 1.0,
///     charge: Charge::Pure { epsilon: Default::default() }, accuracy_95: 0.0 };
/// ```
///
/// It serializes (to be returned to a researcher) but cannot be deserialized.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Release<T> {
    value: T,
    mechanism: MechanismKind,
    scale: f64,
    charge: Charge,
    accuracy_95: f64,
}

impl<T> Release<T> {
    fn new(
        value: T,
        mechanism: MechanismKind,
        scale: f64,
        charge: Charge,
        accuracy_95: f64,
    ) -> Self {
        Release {
            value,
            mechanism,
            scale,
            charge,
            accuracy_95,
        }
    }

    /// The noisy value.
    pub fn value(&self) -> &T {
        &self.value
    }

    /// The noisy value, consuming the release.
    pub fn into_value(self) -> T {
        self.value
    }

    /// The mechanism that produced it.
    pub fn mechanism(&self) -> MechanismKind {
        self.mechanism
    }

    /// The noise scale: the discrete Laplace `scale` (standard deviation /
    /// √2, approximately) or the discrete Gaussian σ, in the units of the
    /// statistic. Each mechanism documents what its scale refers to.
    pub fn scale(&self) -> f64 {
        self.scale
    }

    /// What the release costs: debit this from the study's accountant.
    pub fn charge(&self) -> Charge {
        self.charge
    }

    /// Half-width of a 95% interval: with probability at least 0.95 over the
    /// noise, `|value − true value| ≤ accuracy_95`. Each mechanism documents
    /// how it is computed (and, for vectors, that it holds per element).
    pub fn accuracy_95(&self) -> f64 {
        self.accuracy_95
    }
}

/// The keys kept by [`select_keys`], with their noisy counts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct KeySelection<K> {
    /// The kept keys, sorted by key, each with its noisy count (at least `threshold`).
    pub keys: Vec<(K, i64)>,
    /// Keys whose noisy count fell below this were dropped.
    pub threshold: i64,
}

// ---------------------------------------------------------------------------
// Validation helpers

fn check_rows(name: &'static str, rows: u32) -> Result<()> {
    if rows == 0 {
        return Err(Error::parameter(
            name,
            rows,
            "must be at least 1: bound each patient's contribution before releasing",
        ));
    }
    Ok(())
}

fn check_count(name: &'static str, count: i64) -> Result<()> {
    if count < 0 {
        return Err(Error::parameter(name, count, "a count cannot be negative"));
    }
    Ok(())
}

fn check_finite(name: &'static str, value: f64) -> Result<()> {
    if !value.is_finite() {
        return Err(Error::parameter(name, value, "must be a finite number"));
    }
    Ok(())
}

fn check_bounds_f64(lower: f64, upper: f64) -> Result<()> {
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

/// `a · b` for non-negative `a`, `b`, rounded up (exact when representable).
fn mul_ceil(a: f64, b: f64) -> f64 {
    let product = a * b;
    // The fused multiply-add gives the exact rounding error of the product.
    if a.mul_add(b, -product) > 0.0 {
        product.next_up()
    } else {
        product
    }
}

/// `u128 → f64`, rounded up.
fn u128_to_f64_ceil(x: u128) -> f64 {
    let nearest = x as f64;
    if (nearest as u128) < x {
        nearest.next_up()
    } else {
        nearest
    }
}

// ---------------------------------------------------------------------------
// Calibration

/// Finds a noise scale whose OpenDP privacy loss (from `build`, which
/// returns the measurement and its loss `map(d_in)`) is at most `target`:
/// `ideal` if OpenDP certifies it, otherwise `ideal` raised by the ratio of
/// the excess (and at least one ulp) until it does; in practice one or two
/// steps, a few ulps above `ideal`. `power` is how the loss falls with the
/// scale (1 for ε ∝ 1/scale, 2 for ρ ∝ 1/scale²).
fn calibrate<M>(
    target: Amount,
    power: i32,
    ideal: f64,
    mut build: impl FnMut(f64) -> Result<(M, f64)>,
) -> Result<(M, f64)> {
    let mut scale = ideal;
    for _ in 0..64 {
        if !(scale.is_finite() && scale > 0.0) {
            break;
        }
        let (measurement, loss) = build(scale)?;
        if loss.is_nan() {
            break;
        }
        if loss.is_finite() && Amount::from_f64_ceil(loss)? <= target {
            return Ok((measurement, scale));
        }
        let ratio = if loss.is_finite() {
            (loss / target.to_f64()).powf(1.0 / f64::from(power))
        } else {
            2.0
        };
        scale = (scale * ratio).max(scale.next_up()).next_up();
    }
    Err(Error::parameter(
        "privacy",
        target,
        "no finite noise scale reaches this privacy target for the given sensitivity: \
         use a larger ε or ρ, or tighter contribution bounds",
    ))
}

/// A noisy value with the mechanism details, before it becomes a [`Release`].
struct Noisy<T> {
    value: T,
    scale: f64,
    mechanism: MechanismKind,
}

fn opendp(context: &'static str) -> impl Fn(opendp::error::Error) -> Error {
    move |error| Error::opendp(context, error)
}

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
fn integer_accuracy(mechanism: MechanismKind, scale: f64, alpha: f64) -> Result<f64> {
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
fn float_accuracy(mechanism: MechanismKind, scale: f64, alpha: f64, value: f64) -> Result<f64> {
    let continuous = match mechanism {
        MechanismKind::DiscreteGaussian => continuous_gaussian_accuracy(scale, alpha)?,
        _ => laplacian_scale_to_accuracy(scale, alpha)
            .map_err(opendp("computing the Laplace accuracy"))?,
    };
    Ok(continuous * (1.0 + 1e-12) + f64::EPSILON * value.abs())
}

/// OpenDP's Laplace noise (`make_laplace`: discrete on integer domains, on
/// the 2⁻¹⁰⁷⁴ grid on `f64`) over `domain` and `metric`, calibrated so that
/// its privacy map at `d_in` certifies at most `epsilon`; `ideal` is
/// `sensitivity / ε`, the scale tried first. Applied to `input`.
fn laplace<DI, MI>(
    domain: DI,
    metric: MI,
    d_in: MI::Distance,
    ideal: f64,
    epsilon: Amount,
    input: &DI::Carrier,
) -> Result<Noisy<DI::Carrier>>
where
    DI: Domain + Clone,
    MI: Metric + Clone,
    (DI, MI): MetricSpace,
    DiscreteLaplace: MakeNoise<DI, MI, MaxDivergence>,
{
    let context = opendp("building the Laplace mechanism");
    let (measurement, scale) = calibrate(epsilon, 1, ideal, |scale| {
        let m: Measurement<DI, MI, MaxDivergence, DI::Carrier> =
            make_laplace(domain.clone(), metric.clone(), scale, None).map_err(&context)?;
        let loss = m.map(&d_in).map_err(&context)?;
        Ok((m, loss))
    })?;
    let value = measurement
        .invoke(input)
        .map_err(opendp("sampling Laplace noise"))?;
    Ok(Noisy {
        value,
        scale,
        mechanism: MechanismKind::DiscreteLaplace,
    })
}

/// OpenDP's Gaussian noise (`make_gaussian`), as [`laplace`] but for ρ-zCDP;
/// `ideal` is `sensitivity / √(2ρ)`.
fn gaussian<DI, MI>(
    domain: DI,
    metric: MI,
    d_in: MI::Distance,
    ideal: f64,
    rho: Amount,
    input: &DI::Carrier,
) -> Result<Noisy<DI::Carrier>>
where
    DI: Domain + Clone,
    MI: Metric + Clone,
    (DI, MI): MetricSpace,
    DiscreteGaussian: MakeNoise<DI, MI, ZeroConcentratedDivergence>,
{
    let context = opendp("building the Gaussian mechanism");
    let (measurement, scale) = calibrate(rho, 2, ideal, |scale| {
        let m: Measurement<DI, MI, ZeroConcentratedDivergence, DI::Carrier> =
            make_gaussian(domain.clone(), metric.clone(), scale, None).map_err(&context)?;
        let loss = m.map(&d_in).map_err(&context)?;
        Ok((m, loss))
    })?;
    let value = measurement
        .invoke(input)
        .map_err(opendp("sampling Gaussian noise"))?;
    Ok(Noisy {
        value,
        scale,
        mechanism: MechanismKind::DiscreteGaussian,
    })
}

/// Adds calibrated integer noise to `value`, whose sensitivity is given.
fn noisy_i64(value: i64, sensitivity: u128, target: Target) -> Result<Noisy<i64>> {
    let (domain, metric) = (
        AtomDomain::<i64>::default(),
        AbsoluteDistance::<u128>::default(),
    );
    let sensitivity_f = u128_to_f64_ceil(sensitivity);
    match target {
        Target::Pure(epsilon) => laplace(
            domain,
            metric,
            sensitivity,
            sensitivity_f / epsilon.to_f64(),
            epsilon,
            &value,
        ),
        Target::Zcdp(rho) => {
            let ideal = sensitivity_f / (2.0 * rho.to_f64()).sqrt();
            gaussian(domain, metric, sensitivity, ideal, rho, &value)
        }
    }
}

/// Adds calibrated noise to a real `value` whose sensitivity is `sensitivity`.
fn noisy_f64(value: f64, sensitivity: f64, target: Target) -> Result<Noisy<f64>> {
    let (domain, metric) = (
        AtomDomain::<f64>::new_non_nan(),
        AbsoluteDistance::<f64>::default(),
    );
    match target {
        Target::Pure(epsilon) => laplace(
            domain,
            metric,
            sensitivity,
            sensitivity / epsilon.to_f64(),
            epsilon,
            &value,
        ),
        Target::Zcdp(rho) => {
            let ideal = sensitivity / (2.0 * rho.to_f64()).sqrt();
            gaussian(domain, metric, sensitivity, ideal, rho, &value)
        }
    }
}

// ---------------------------------------------------------------------------
// Mechanisms

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

/// Candidates must be finite and strictly increasing, `alpha` in `[0, 1]`.
fn check_quantile_parameters(candidates: &[f64], alpha: f64) -> Result<()> {
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

/// Clopper–Pearson bounds, shared with the integration tests' DP audit.
#[cfg(test)]
#[path = "../tests/it/clopper_pearson.rs"]
mod clopper_pearson;

#[cfg(test)]
mod tests {
    //! Unit and statistical tests. Every statistical assertion is a one-sided
    //! Clopper–Pearson (exact binomial) bound at level [`ALPHA_TEST`]; this
    //! module makes 30 such assertions (3 × 6 in `check_integer_noise`, 6 for
    //! float sums, 4 for mean and histogram, 2 for the quantile) plus a few
    //! events of probability below 1e-9 each, so a correct implementation
    //! fails a run with probability below 30·2e-8 + 5e-9 < 1e-6.

    use super::*;
    use crate::accountant::PrivacyKind;
    use opendp::domains::MapDomain;
    use opendp::measurements::make_laplace_threshold;
    use opendp::measures::Approximate;
    use opendp::metrics::L01InfDistance;

    /// Level of each one-sided statistical assertion.
    const ALPHA_TEST: f64 = 2e-8;

    use super::clopper_pearson::{cp_lower, cp_upper};

    /// Asserts that `hits` out of `n` is consistent with probability `p`
    /// (two one-sided bounds).
    fn assert_probability(what: &str, hits: u64, n: u64, p: f64) {
        let (low, high) = (cp_lower(hits, n, ALPHA_TEST), cp_upper(hits, n, ALPHA_TEST));
        assert!(
            low <= p && p <= high,
            "{what}: {hits}/{n}, bounds [{low}, {high}] exclude {p}"
        );
    }

    /// Asserts the reported 95% interval covers at least 95% (one bound) and
    /// at most `max_coverage` (one bound) of the `n` releases.
    fn assert_coverage(what: &str, inside: u64, n: u64, max_coverage: f64) {
        let high = cp_upper(inside, n, ALPHA_TEST);
        assert!(
            high >= 0.95,
            "{what}: coverage {inside}/{n}, upper bound {high} < 0.95"
        );
        let low = cp_lower(inside, n, ALPHA_TEST);
        assert!(
            low <= max_coverage,
            "{what}: coverage {inside}/{n}, lower bound {low} > {max_coverage}"
        );
    }

    fn pure(epsilon: f64) -> Privacy {
        Privacy::Pure { epsilon }
    }

    fn amount(text: &str) -> Amount {
        text.parse().unwrap()
    }

    #[test]
    fn clopper_pearson_matches_known_values() {
        // 0 successes in 10 at one-sided 5%: 1 − 0.05^(1/10) = 0.2588656...
        assert!((cp_upper(0, 10, 0.05) - 0.258_865_6).abs() < 1e-6);
        assert!((cp_lower(10, 10, 0.05) - 0.741_134_4).abs() < 1e-6);
        // 50/100 at one-sided 2.5% (R: binom.test(50, 100)$conf.int = 0.3983, 0.6017).
        assert!((cp_lower(50, 100, 0.025) - 0.398_321_1).abs() < 1e-6);
        assert!((cp_upper(50, 100, 0.025) - 0.601_678_9).abs() < 1e-6);
    }

    #[test]
    fn parameters_are_validated() {
        let bad = |result: Result<Release<i64>>| {
            let error = result.unwrap_err();
            assert!(matches!(error, Error::InvalidParameter { .. }), "{error}");
            error.to_string()
        };
        for epsilon in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            let message = bad(count(10, 1, pure(epsilon)));
            assert!(message.contains("epsilon"), "{message}");
        }
        assert!(bad(count(10, 1, Privacy::Zcdp { rho: 0.0 })).contains("rho"));
        assert!(bad(count(-1, 1, pure(1.0))).contains("negative"));
        assert!(bad(count(10, 0, pure(1.0))).contains("at least 1"));
        assert!(bad(sum_i64(0, 5, -5, 1, pure(1.0))).contains("lower ≤ upper"));
        assert!(bad(sum_i64(0, 0, 0, 1, pure(1.0))).contains("constant"));
        assert!(sum_f64(0.0, f64::NAN, 1.0, 1, pure(1.0)).is_err());
        assert!(sum_f64(f64::INFINITY, 0.0, 1.0, 1, pure(1.0)).is_err());
        assert!(sum_f64(0.0, 0.0, f64::MAX, 2, pure(1.0)).is_err());
        assert!(mean(0.0, 1, 0.0, 1.0, 1, pure(1e-18)).is_err());
        assert!(histogram(&[], 1, 1, pure(1.0)).is_err());
        assert!(histogram(&[1, -1], 1, 1, pure(1.0)).is_err());
        let keys = HashMap::from([("a".to_string(), 3)]);
        for delta in [0.0, 1.0, f64::NAN, -0.1] {
            assert!(select_keys(keys.clone(), 1, 1, 1.0, delta).is_err());
        }
        assert!(select_keys(HashMap::from([("a".to_string(), -3)]), 1, 1, 1.0, 1e-6).is_err());
        assert!(quantile(&[1.0], &[], 0.5, 1, 1.0).is_err());
        assert!(quantile(&[1.0], &[2.0, 1.0], 0.5, 1, 1.0).is_err());
        assert!(quantile(&[1.0], &[1.0, 1.0], 0.5, 1, 1.0).is_err());
        assert!(quantile(&[1.0], &[1.0, f64::INFINITY], 0.5, 1, 1.0).is_err());
        assert!(quantile(&[f64::NAN], &[1.0], 0.5, 1, 1.0).is_err());
        assert!(quantile(&[1.0], &[1.0], 1.5, 1, 1.0).is_err());
        assert!(quantile(&[1.0], &[1.0], 0.5, 1, 0.0).is_err());
    }

    #[test]
    fn charges_are_the_decimals_written_and_certified_by_opendp() {
        let release = count(100, 1, pure(0.1)).unwrap();
        assert_eq!(
            release.charge(),
            Charge::Pure {
                epsilon: amount("0.1")
            }
        );
        assert_eq!(release.mechanism(), MechanismKind::DiscreteLaplace);
        assert!(
            (release.scale() - 10.0).abs() < 1e-12,
            "{}",
            release.scale()
        );
        // OpenDP's own map at the chosen scale certifies at most the charge.
        let m: Measurement<_, _, MaxDivergence, i64> = make_laplace(
            AtomDomain::<i64>::default(),
            AbsoluteDistance::<u128>::default(),
            release.scale(),
            None,
        )
        .unwrap();
        assert!(Amount::from_f64_ceil(m.map(&1).unwrap()).unwrap() <= amount("0.1"));

        let release = sum_i64(0, -3, 7, 2, Privacy::Zcdp { rho: 0.5 }).unwrap();
        assert_eq!(release.charge(), Charge::Zcdp { rho: amount("0.5") });
        assert_eq!(release.mechanism(), MechanismKind::DiscreteGaussian);
        assert!(
            (release.scale() - 14.0).abs() < 1e-12,
            "{}",
            release.scale()
        ); // Δ = 14, σ = Δ/√1

        let release = sum_f64(0.0, -0.1, 0.3, 3, pure(0.5)).unwrap();
        assert_eq!(
            release.charge(),
            Charge::Pure {
                epsilon: amount("0.5")
            }
        );
        assert!((release.scale() - 1.8).abs() < 1e-12, "{}", release.scale());

        let release = mean(10.0, 10, 0.0, 2.0, 1, pure(1.0)).unwrap();
        assert_eq!(
            release.charge(),
            Charge::Pure {
                epsilon: amount("1")
            }
        );
        assert!((release.scale() - 4.0).abs() < 1e-12, "{}", release.scale()); // sum at ε/2
        assert!((0.0..=2.0).contains(release.value()));
        assert!(release.accuracy_95() <= 2.0);

        let release = histogram(&[5, 0, 7], 2, 3, pure(1.0)).unwrap();
        assert_eq!(release.value().len(), 3);
        assert!((release.scale() - 6.0).abs() < 1e-12);
        let release = histogram(&[5, 0, 7], 9, 1, Privacy::Zcdp { rho: 1.5 }).unwrap();
        assert!((release.scale() - 1.0).abs() < 1e-12, "{}", release.scale()); // √3/√3

        // A mean charge splits exactly: an odd number of units still sums to the charge.
        let odd = mean(1.0, 1, 0.0, 1.0, 1, pure(3e-18)).unwrap();
        assert_eq!(
            odd.charge(),
            Charge::Pure {
                epsilon: Amount::from_units(3)
            }
        );
        assert_eq!(
            Charge::sequential(&[odd.charge()], PrivacyKind::Zcdp)
                .unwrap()
                .kind(),
            PrivacyKind::Zcdp
        );
    }

    #[test]
    fn calibration_nudges_the_scale_when_the_map_rounds_above_the_charge() {
        // sensitivity 3, ε = 0.3: 3/0.3 = 10.000000000000002 in f64; OpenDP's
        // map rounds 3/scale up: the certified loss must still be ≤ 0.3.
        for (sensitivity, epsilon) in [(3u32, 0.3), (7, 0.7), (1, 0.1), (10, 1.1), (3, 1e-5)] {
            let release = count(1000, sensitivity, pure(epsilon)).unwrap();
            let m: Measurement<_, _, MaxDivergence, i64> = make_laplace(
                AtomDomain::<i64>::default(),
                AbsoluteDistance::<u128>::default(),
                release.scale(),
                None,
            )
            .unwrap();
            let loss = m.map(&u128::from(sensitivity)).unwrap();
            let charge = Amount::from_f64_display(epsilon).unwrap();
            assert!(
                Amount::from_f64_ceil(loss).unwrap() <= charge,
                "{sensitivity}/{epsilon}: {loss}"
            );
            let ideal = f64::from(sensitivity) / epsilon;
            assert!(
                (release.scale() / ideal - 1.0).abs() < 1e-14,
                "{}",
                release.scale()
            );
        }
    }

    #[test]
    fn helper_rounding_is_upward() {
        assert_eq!(mul_ceil(3.0, 4.0), 12.0);
        let product = mul_ceil(0.1, 3.0);
        assert!(0.1f64.mul_add(3.0, -product) <= 0.0);
        assert_eq!(u128_to_f64_ceil(1 << 70), 2f64.powi(70));
        assert!(u128_to_f64_ceil((1 << 70) + 1) > 2f64.powi(70));
    }

    /// Discrete Laplace `P[|X| ≤ m]` at `scale`.
    fn discrete_laplace_within(m: i64, scale: f64) -> f64 {
        1.0 - 2.0 * (-((m + 1) as f64) / scale).exp() / (1.0 + (-1.0 / scale).exp())
    }

    /// Discrete Gaussian `P[|X| ≤ m]` at σ, by direct summation.
    fn discrete_gaussian_within(m: i64, sigma: f64) -> f64 {
        let weight = |x: i64| (-(x as f64).powi(2) / (2.0 * sigma * sigma)).exp();
        let range = (60.0 * sigma) as i64 + 10;
        let total: f64 = (-range..=range).map(weight).sum();
        (-m..=m).map(weight).sum::<f64>() / total
    }

    #[test]
    fn integer_accuracy_is_the_smallest_covering_half_width() {
        // The coverage tests below bound coverage from above only at 0.965, so
        // they see a half-width one unit too wide only by chance (σ = 10: 21
        // covers 0.9685 and failed about 1 run in 20): check it exactly.
        let kinds = [
            (
                MechanismKind::DiscreteGaussian,
                discrete_gaussian_within as fn(i64, f64) -> f64,
            ),
            (MechanismKind::DiscreteLaplace, discrete_laplace_within),
        ];
        for scale in [0.5, 1.0, 2.0, 3.7, 10.0, 25.0, 64.0, 100.0, 200.0] {
            for (kind, within) in kinds {
                let h = integer_accuracy(kind, scale, ALPHA).unwrap();
                assert_eq!(h, h.trunc(), "{kind:?} {scale}: {h}");
                let (covered, below) = (within(h as i64, scale), within(h as i64 - 1, scale));
                assert!(
                    covered >= 0.95,
                    "{kind:?} {scale}: P[|X| ≤ {h}] = {covered}"
                );
                assert!(
                    below < 0.95,
                    "{kind:?} {scale}: {h} is not the smallest ({below})"
                );
            }
        }
        let gaussian = count(500, 1, Privacy::Zcdp { rho: 0.005 }).unwrap();
        assert_eq!(gaussian.accuracy_95(), 20.0);
        assert_eq!(count(500, 1, pure(0.1)).unwrap().accuracy_95(), 30.0);
    }

    /// Runs `n` releases of `release(true_value)` and checks: coverage of the
    /// reported 95% interval, the exact probability of `|noise| ≤ m`, and the
    /// symmetry of the noise (sign test: zero median, so zero mean for a
    /// symmetric law). 6 one-sided bounds.
    fn check_integer_noise(
        what: &str,
        n: u64,
        truth: i64,
        m: i64,
        p_within: f64,
        max_coverage: f64,
        release: impl Fn(i64) -> Release<i64>,
    ) {
        let (mut inside, mut within, mut positive, mut nonzero) = (0, 0, 0, 0);
        for _ in 0..n {
            let r = release(truth);
            let noise = r.value() - truth;
            inside += u64::from((noise.abs() as f64) <= r.accuracy_95());
            within += u64::from(noise.abs() <= m);
            positive += u64::from(noise > 0);
            nonzero += u64::from(noise != 0);
        }
        assert_coverage(what, inside, n, max_coverage);
        assert_probability(&format!("{what}: P[|noise| ≤ {m}]"), within, n, p_within);
        assert_probability(
            &format!("{what}: P[noise > 0 | noise ≠ 0]"),
            positive,
            nonzero,
            0.5,
        );
    }

    #[test]
    fn count_noise_is_discrete_laplace_at_the_reported_scale() {
        // ε = 0.1, Δ = 1: scale 10, 95% half-width 30.45 (P[|X| ≤ 30] = 0.9527).
        let expected = discrete_laplace_within(10, 10.0);
        check_integer_noise("count/Laplace", 40_000, 500, 10, expected, 0.965, |truth| {
            count(truth, 1, pure(0.1)).unwrap()
        });
    }

    #[test]
    fn count_noise_is_discrete_gaussian_at_the_reported_scale() {
        // ρ = 0.005, Δ = 1: σ = 10, 95% half-width 20 (P[|X| ≤ 20] = 0.9597).
        let expected = discrete_gaussian_within(10, 10.0);
        check_integer_noise(
            "count/Gaussian",
            40_000,
            500,
            10,
            expected,
            0.965,
            |truth| count(truth, 1, Privacy::Zcdp { rho: 0.005 }).unwrap(),
        );
    }

    #[test]
    fn large_scale_gaussian_accuracy_is_honest() {
        // σ = 200 (above the exact-summation limit): the continuous bound + 1.
        // Plus the sum path: Δ = 4·50 = 200 at ρ = 0.5 gives σ = 200 too.
        let expected = discrete_gaussian_within(200, 200.0);
        check_integer_noise(
            "sum_i64/Gaussian σ=200",
            20_000,
            -7,
            200,
            expected,
            0.97,
            |truth| sum_i64(truth, -50, 20, 4, Privacy::Zcdp { rho: 0.5 }).unwrap(),
        );
    }

    #[test]
    fn float_sums_have_honest_accuracy() {
        // Δ = 5·2 = 10, ε = 1: Laplace scale 10; P[|X| ≤ 10] = 1 − e^{−1}.
        let n = 20_000;
        let (mut inside, mut within, mut inside_gauss) = (0, 0, 0);
        for _ in 0..n {
            let r = sum_f64(12.5, -5.0, 5.0, 2, pure(1.0)).unwrap();
            let noise = r.value() - 12.5;
            inside += u64::from(noise.abs() <= r.accuracy_95());
            within += u64::from(noise.abs() <= 10.0);
            let g = sum_f64(12.5, -5.0, 5.0, 2, Privacy::Zcdp { rho: 0.5 }).unwrap();
            inside_gauss += u64::from((g.value() - 12.5).abs() <= g.accuracy_95());
        }
        assert_coverage("sum_f64/Laplace", inside, n, 0.96);
        assert_probability(
            "sum_f64/Laplace P[|noise| ≤ 10]",
            within,
            n,
            1.0 - (-1.0f64).exp(),
        );
        assert_coverage("sum_f64/Gaussian", inside_gauss, n, 0.96);
    }

    #[test]
    fn mean_and_histogram_accuracy_is_conservative() {
        let n = 10_000;
        let (lower, upper, rows) = (0.0, 100.0, 1);
        let (true_count, true_sum) = (400i64, 400.0 * 37.5);
        let mut inside = 0;
        for _ in 0..n {
            let r = mean(true_sum, true_count, lower, upper, rows, pure(1.0)).unwrap();
            inside += u64::from((r.value() - 37.5).abs() <= r.accuracy_95());
        }
        // A union bound over two 97.5% intervals: coverage ≥ 0.95, typically ~0.99.
        assert_coverage("mean", inside, n, 1.0);

        let counts = [0i64, 3, 100, 42, 7];
        let (mut inside, mut total) = (0, 0);
        for _ in 0..n / 2 {
            let r = histogram(&counts, 2, 1, pure(0.2)).unwrap();
            for (noisy, truth) in r.value().iter().zip(counts) {
                inside += u64::from(((noisy - truth).abs() as f64) <= r.accuracy_95());
                total += 1;
            }
        }
        // Bins are independent given the scale: per-bin coverage is binomial.
        assert_coverage("histogram per bin", inside, total, 0.965);
    }

    #[test]
    fn select_keys_drops_rare_keys_and_keeps_common_ones() {
        let counts = HashMap::from([
            ("rare".to_string(), 1),
            ("common".to_string(), 1_000_000),
            ("medium".to_string(), 500),
        ]);
        let release = select_keys(counts.clone(), 1, 1, 1.0, 1e-9).unwrap();
        let selection = release.value();
        assert_eq!(release.mechanism(), MechanismKind::LaplaceThreshold);
        assert_eq!(
            release.charge(),
            Charge::Approx {
                epsilon: amount("1"),
                delta: amount("0.000000001")
            }
        );
        // scale 1, δ = 1e-9: threshold ≈ 1 + ln(1/δ) ≈ 21.
        assert!(
            (15..40).contains(&selection.threshold),
            "{}",
            selection.threshold
        );
        let kept: Vec<&str> = selection.keys.iter().map(|(k, _)| k.as_str()).collect();
        // P[rare kept] = P[noise ≥ threshold − 1] < 1e-9.
        assert_eq!(kept, ["common", "medium"]);
        assert!((selection.keys[0].1 - 1_000_000).abs() < 100);

        // The threshold is the smallest one OpenDP certifies for δ.
        let map_delta = |threshold: i64| {
            let m: Measurement<_, _, Approximate<MaxDivergence>, HashMap<String, i64>> =
                make_laplace_threshold(
                    MapDomain::new(
                        AtomDomain::<String>::default(),
                        AtomDomain::<i64>::default(),
                    ),
                    L01InfDistance::<AbsoluteDistance<u128>>::default(),
                    release.scale(),
                    threshold,
                    None,
                )
                .unwrap();
            m.map(&(1, 1, 1)).unwrap()
        };
        let (eps, delta) = map_delta(selection.threshold);
        assert!(Amount::from_f64_ceil(eps).unwrap() <= amount("1"));
        assert!(Amount::from_f64_ceil(delta).unwrap() <= amount("0.000000001"));
        assert!(map_delta(selection.threshold - 1).1 > 1e-9);

        // More partitions per patient need a higher threshold and more noise.
        let wide = select_keys(counts, 4, 2, 1.0, 1e-9).unwrap();
        assert!(wide.value().threshold > selection.threshold);
        assert!((wide.scale() - 8.0).abs() < 1e-12);
    }

    #[test]
    fn quantile_lands_near_the_truth() {
        let values: Vec<f64> = (0..=1000).map(f64::from).collect();
        let candidates: Vec<f64> = (0..=100).map(|i| f64::from(i * 10)).collect();
        // Score of candidate c for the median: |#{x < c} − #{x > c}| / 2.
        let score = |c: f64| {
            let below = values.iter().filter(|&&x| x < c).count() as f64;
            let above = values.iter().filter(|&&x| x > c).count() as f64;
            (0.5 * below - 0.5 * above).abs()
        };
        let n = 2_000;
        let mut inside = 0;
        for _ in 0..n {
            let r = quantile(&values, &candidates, 0.5, 1, 1.0).unwrap();
            assert_eq!(r.mechanism(), MechanismKind::ExponentialQuantile);
            // scale = 1; a candidate ≥ 50 away has score ≥ 50: P ≤ 101·e^{−50}.
            assert!((r.value() - 500.0).abs() <= 50.0, "median {}", r.value());
            inside += u64::from(score(*r.value()) <= r.accuracy_95());
        }
        assert_coverage("quantile score gap", inside, n, 1.0);

        // The 90th percentile with ε = 2: the charge is exact, the result near 900.
        let r = quantile(&values, &candidates, 0.9, 1, 2.0).unwrap();
        assert_eq!(
            r.charge(),
            Charge::Pure {
                epsilon: amount("2")
            }
        );
        assert!((r.value() - 900.0).abs() <= 100.0, "p90 {}", r.value());
    }
}
