//! OpenDP's Laplace and Gaussian samplers, calibrated to an exact target.
//!
//! The one place noise is drawn: [`calibrate`] finds the smallest scale
//! whose OpenDP privacy map certifies the charge, and the helpers here round
//! every floating-point step towards more noise, never less.

use opendp::core::{Domain, Measurement, Metric, MetricSpace};
use opendp::domains::AtomDomain;
use opendp::measurements::{
    DiscreteGaussian, DiscreteLaplace, MakeNoise, make_gaussian, make_laplace,
};
use opendp::measures::{MaxDivergence, ZeroConcentratedDivergence};
use opendp::metrics::AbsoluteDistance;

use super::privacy::Target;
use super::release::MechanismKind;
use crate::accountant::Amount;
use crate::error::{Error, Result};
/// `a · b` for non-negative `a`, `b`, rounded up (exact when representable).
pub(super) fn mul_ceil(a: f64, b: f64) -> f64 {
    let product = a * b;
    // The fused multiply-add gives the exact rounding error of the product.
    if a.mul_add(b, -product) > 0.0 {
        product.next_up()
    } else {
        product
    }
}

/// `u128 → f64`, rounded up.
pub(super) fn u128_to_f64_ceil(x: u128) -> f64 {
    let nearest = x as f64;
    if (nearest as u128) < x {
        nearest.next_up()
    } else {
        nearest
    }
}

/// Finds a noise scale whose OpenDP privacy loss (from `build`, which
/// returns the measurement and its loss `map(d_in)`) is at most `target`:
/// `ideal` if OpenDP certifies it, otherwise `ideal` raised by the ratio of
/// the excess (and at least one ulp) until it does; in practice one or two
/// steps, a few ulps above `ideal`. `power` is how the loss falls with the
/// scale (1 for ε ∝ 1/scale, 2 for ρ ∝ 1/scale²).
pub(super) fn calibrate<M>(
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

/// A noisy value with the mechanism details, before it becomes a [`Release`](super::Release).
pub(super) struct Noisy<T> {
    pub(super) value: T,
    pub(super) scale: f64,
    pub(super) mechanism: MechanismKind,
}

pub(super) fn opendp(context: &'static str) -> impl Fn(opendp::error::Error) -> Error {
    move |error| Error::opendp(context, error)
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
pub(super) fn noisy_i64(value: i64, sensitivity: u128, target: Target) -> Result<Noisy<i64>> {
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
pub(super) fn noisy_f64(value: f64, sensitivity: f64, target: Target) -> Result<Noisy<f64>> {
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
