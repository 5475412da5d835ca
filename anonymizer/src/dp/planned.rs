//! Mechanisms calibrated before the data is seen.
//!
//! The query planner decides every noise scale while it plans, so that
//! `EXPLAIN PRIVACY` can show the scales, charges and error intervals of a
//! query without touching the data, and execution only samples. Each type
//! here is calibrated once from public parameters (sensitivity, privacy
//! target) and then releases any number of values through
//! [`Release`]s, each carrying the planned mechanism, scale and charge.
//!
//! Targets are exact [`Charge`]s, not `f64`s: a planner splitting a query's
//! ε between its aggregates in 10⁻¹⁸ units gets noise calibrated to exactly
//! those units, so the parts add up to the whole.
//!
//! Vectors are how grouped statistics are released: one entry per released
//! group, where one patient touches at most `groups` entries and changes
//! each by at most `per_group` ([`Sensitivity::grouped`]). The noise of the
//! whole vector then costs the one charge (the L1 or L2 sensitivity covers
//! every group a patient can touch), not one charge per group.

use std::collections::HashMap;

use opendp::core::Measurement;
use opendp::domains::{AtomDomain, MapDomain, VectorDomain};
use opendp::measurements::{
    make_gaussian, make_laplace, make_laplace_threshold, make_private_quantile,
};
use opendp::measures::{Approximate, MaxDivergence, ZeroConcentratedDivergence};
use opendp::metrics::{
    AbsoluteDistance, L1Distance, L01InfDistance, L2Distance, SymmetricDistance,
};
use opendp::traits::Hashable;
use serde::Serialize;

use super::accuracy::{ALPHA, integer_accuracy};
use super::checks::{check_quantile_parameters, check_rows};
use super::noise::{calibrate, mul_ceil, opendp, u128_to_f64_ceil};
use super::privacy::Target;
use super::release::{KeySelection, MechanismKind, Release};
use crate::accountant::{Amount, Charge};
use crate::error::{Error, Result};

/// How much one privacy unit can change a vector of integer statistics.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Sensitivity {
    /// The L1 norm of the largest change (for pure ε-DP).
    pub l1: u128,
    /// The L2 norm of the largest change, rounded up (for ρ-zCDP).
    pub l2: f64,
}

impl Sensitivity {
    /// One unit touches at most `groups` entries, each by at most
    /// `per_group`: L1 = `groups · per_group`, L2 = `√groups · per_group`
    /// (rounded up). Errors if either is zero or the product overflows.
    pub fn grouped(groups: u32, per_group: u128) -> Result<Sensitivity> {
        check_rows("groups", groups)?;
        if per_group == 0 {
            return Err(Error::parameter(
                "per_group",
                0,
                "must be at least 1: a statistic no unit can change needs no noise",
            ));
        }
        let l1 = u128::from(groups)
            .checked_mul(per_group)
            .ok_or_else(|| Error::parameter("per_group", per_group, "is too large"))?;
        let l2 = mul_ceil(
            f64::from(groups).sqrt().next_up(),
            u128_to_f64_ceil(per_group),
        );
        Ok(Sensitivity { l1, l2 })
    }
}

/// The ε or ρ a planned mechanism is calibrated to.
fn target(charge: Charge) -> Result<Target> {
    match charge {
        Charge::Pure { epsilon } if !epsilon.is_zero() => Ok(Target::Pure(epsilon)),
        Charge::Zcdp { rho } if !rho.is_zero() => Ok(Target::Zcdp(rho)),
        Charge::Pure { .. } | Charge::Zcdp { .. } => Err(Error::parameter(
            "charge",
            charge,
            "must be greater than zero",
        )),
        Charge::Approx { .. } => Err(Error::parameter(
            "charge",
            charge,
            "noise for a count or sum is calibrated to a pure ε or a ρ; δ is only spent by key \
             selection",
        )),
    }
}

type LaplaceVector =
    Measurement<VectorDomain<AtomDomain<i64>>, L1Distance<u128>, MaxDivergence, Vec<i64>>;
type GaussianVector = Measurement<
    VectorDomain<AtomDomain<i64>>,
    L2Distance<f64>,
    ZeroConcentratedDivergence,
    Vec<i64>,
>;

fn laplace_vector(scale: f64) -> Result<LaplaceVector> {
    make_laplace(
        VectorDomain::new(AtomDomain::<i64>::default()),
        L1Distance::<u128>::default(),
        scale,
        None,
    )
    .map_err(opendp("building the Laplace mechanism"))
}

fn gaussian_vector(scale: f64) -> Result<GaussianVector> {
    make_gaussian(
        VectorDomain::new(AtomDomain::<i64>::default()),
        L2Distance::<f64>::default(),
        scale,
        None,
    )
    .map_err(opendp("building the Gaussian mechanism"))
}

/// Integer noise for a vector of counts or fixed-point sums, calibrated to
/// a [`Sensitivity`] and a charge before any data is seen.
///
/// **Guarantee.** Pure ε: independent discrete Laplace noise of scale
/// `L1/ε` on every entry (OpenDP's vector `make_laplace`), ε-DP for the
/// whole vector. ρ: discrete Gaussian noise of σ = `L2/√(2ρ)` (vector
/// `make_gaussian`), ρ-zCDP. The scale is nudged up until OpenDP's privacy
/// map certifies at most the charge, which is what a release costs.
///
/// **Accuracy.** Per entry, the smallest integer half-width covering 95% of
/// the noise (see the module source of [`crate::dp`]).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct IntegerNoise {
    sensitivity: Sensitivity,
    #[serde(skip)]
    target: Target,
    mechanism: MechanismKind,
    scale: f64,
    charge: Charge,
}

impl IntegerNoise {
    /// Calibrates the noise for `sensitivity` at `charge` (pure ε or ρ).
    pub fn calibrate(sensitivity: Sensitivity, charge: Charge) -> Result<IntegerNoise> {
        let target = target(charge)?;
        let (mechanism, scale) = match target {
            Target::Pure(epsilon) => {
                let ideal = u128_to_f64_ceil(sensitivity.l1) / epsilon.to_f64();
                let (_, scale) = calibrate(epsilon, 1, ideal, |scale| {
                    let m = laplace_vector(scale)?;
                    let loss = m
                        .map(&sensitivity.l1)
                        .map_err(opendp("building the Laplace mechanism"))?;
                    Ok((m, loss))
                })?;
                (MechanismKind::DiscreteLaplace, scale)
            }
            Target::Zcdp(rho) => {
                let ideal = sensitivity.l2 / (2.0 * rho.to_f64()).sqrt();
                let (_, scale) = calibrate(rho, 2, ideal, |scale| {
                    let m = gaussian_vector(scale)?;
                    let loss = m
                        .map(&sensitivity.l2)
                        .map_err(opendp("building the Gaussian mechanism"))?;
                    Ok((m, loss))
                })?;
                (MechanismKind::DiscreteGaussian, scale)
            }
        };
        Ok(IntegerNoise {
            sensitivity,
            target,
            mechanism,
            scale,
            charge,
        })
    }

    /// The sensitivity it was calibrated for.
    pub fn sensitivity(&self) -> Sensitivity {
        self.sensitivity
    }

    /// Discrete Laplace or discrete Gaussian.
    pub fn mechanism(&self) -> MechanismKind {
        self.mechanism
    }

    /// The Laplace scale or the Gaussian σ, in the units of the statistic.
    pub fn scale(&self) -> f64 {
        self.scale
    }

    /// What one release of a whole vector costs.
    pub fn charge(&self) -> Charge {
        self.charge
    }

    /// Half-width of the `1 − alpha` interval of one entry's noise (the
    /// smallest covering integer; see [`crate::dp`]).
    pub fn accuracy(&self, alpha: f64) -> Result<f64> {
        if !(alpha > 0.0 && alpha < 1.0) {
            return Err(Error::parameter("alpha", alpha, "must be in (0, 1)"));
        }
        integer_accuracy(self.mechanism, self.scale, alpha)
    }

    /// Adds the planned noise to every entry of `values` (exact statistics
    /// of contribution-bounded data). Saturates at the `i64` range.
    pub fn release(&self, values: &[i64]) -> Result<Release<Vec<i64>>> {
        let input = values.to_vec();
        let noisy = match self.target {
            Target::Pure(_) => laplace_vector(self.scale)?
                .invoke(&input)
                .map_err(opendp("sampling Laplace noise"))?,
            Target::Zcdp(_) => gaussian_vector(self.scale)?
                .invoke(&input)
                .map_err(opendp("sampling Gaussian noise"))?,
        };
        Ok(Release::new(
            noisy,
            self.mechanism,
            self.scale,
            self.charge,
            self.accuracy(ALPHA)?,
        ))
    }
}

/// DP key selection for a `GROUP BY` whose keys are not public, calibrated
/// before the data is seen: the scale and the threshold are fixed by the
/// contribution bounds, ε and δ.
///
/// **Guarantee.** OpenDP's `make_laplace_threshold` (Rogers 2023), as in
/// [`super::select_keys`]: (ε, δ)-DP, where the threshold is the smallest
/// integer at which OpenDP's map certifies δ.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct KeyThreshold {
    max_partitions: u32,
    max_rows_per_partition: u32,
    scale: f64,
    threshold: i64,
    charge: Charge,
}

impl KeyThreshold {
    /// Calibrates the key selection. `max_partitions` bounds how many keys
    /// one unit touches, `max_rows_per_partition` how much it adds to each.
    pub fn calibrate(
        max_partitions: u32,
        max_rows_per_partition: u32,
        epsilon: Amount,
        delta: Amount,
    ) -> Result<KeyThreshold> {
        check_rows("max_partitions", max_partitions)?;
        check_rows("max_rows_per_partition", max_rows_per_partition)?;
        if epsilon.is_zero() {
            return Err(Error::parameter(
                "epsilon",
                epsilon,
                "must be greater than zero",
            ));
        }
        if delta.is_zero() || delta >= Amount::ONE {
            return Err(Error::parameter(
                "delta",
                delta,
                "must be in (0, 1); typically well below 1/(number of patients)",
            ));
        }
        let linf = u128::from(max_rows_per_partition);
        let l1 = u128::from(max_partitions) * linf;
        let d_in = (max_partitions, l1, linf);
        let min_threshold = i64::from(max_rows_per_partition);

        let build = |scale: f64, threshold: i64| -> Result<(f64, f64)> {
            let m: Measurement<_, _, Approximate<MaxDivergence>, HashMap<u8, i64>> =
                make_laplace_threshold(
                    MapDomain::new(AtomDomain::<u8>::default(), AtomDomain::<i64>::default()),
                    L01InfDistance::<AbsoluteDistance<u128>>::default(),
                    scale,
                    threshold,
                    None,
                )
                .map_err(opendp("building the Laplace threshold mechanism"))?;
            m.map(&d_in)
                .map_err(opendp("building the Laplace threshold mechanism"))
        };

        // ε depends only on the scale.
        let ideal = u128_to_f64_ceil(l1) / epsilon.to_f64();
        let (_, scale) = calibrate(epsilon, 1, ideal, |scale| {
            let (eps, _) = build(scale, min_threshold)?;
            Ok(((), eps))
        })?;

        // δ falls as the threshold rises: the smallest threshold meeting δ.
        let meets = |threshold: i64| -> Result<bool> {
            let (_, del) = build(scale, threshold)?;
            Ok(Amount::from_f64_ceil(del)? <= delta)
        };
        let (mut low, mut high) = (min_threshold, min_threshold);
        while !meets(high)? {
            low = high;
            high = high
                .checked_mul(2)
                .filter(|&h| h < i64::MAX / 4)
                .ok_or_else(|| {
                    Error::parameter(
                        "delta",
                        delta,
                        "no threshold reaches this δ with the given ε: use a larger δ or ε",
                    )
                })?;
        }
        // Invariant: meets(high); low == high or !meets(low).
        while high - low > 1 {
            let middle = low + (high - low) / 2;
            if meets(middle)? {
                high = middle;
            } else {
                low = middle;
            }
        }
        let threshold = if meets(low)? { low } else { high };
        Ok(KeyThreshold {
            max_partitions,
            max_rows_per_partition,
            scale,
            threshold,
            charge: Charge::Approx { epsilon, delta },
        })
    }

    /// The discrete Laplace scale of the noisy counts.
    pub fn scale(&self) -> f64 {
        self.scale
    }

    /// Keys whose noisy count is below this are dropped.
    pub fn threshold(&self) -> i64 {
        self.threshold
    }

    /// What the selection costs: (ε, δ).
    pub fn charge(&self) -> Charge {
        self.charge
    }

    /// Half-width of the 95% interval of a kept key's noisy count.
    pub fn accuracy_95(&self) -> Result<f64> {
        integer_accuracy(MechanismKind::LaplaceThreshold, self.scale, ALPHA)
    }

    /// Selects the keys of `counts` (exact, bounded counts per key).
    pub fn release<K: Hashable + Ord>(
        &self,
        counts: HashMap<K, i64>,
    ) -> Result<Release<KeySelection<K>>> {
        for &count in counts.values() {
            if count < 0 {
                return Err(Error::parameter(
                    "counts[key]",
                    count,
                    "a count cannot be negative",
                ));
            }
        }
        let measurement: Measurement<_, _, Approximate<MaxDivergence>, HashMap<K, i64>> =
            make_laplace_threshold(
                MapDomain::new(AtomDomain::<K>::default(), AtomDomain::<i64>::default()),
                L01InfDistance::<AbsoluteDistance<u128>>::default(),
                self.scale,
                self.threshold,
                None,
            )
            .map_err(opendp("building the Laplace threshold mechanism"))?;
        let noisy = measurement
            .invoke(&counts)
            .map_err(opendp("sampling the Laplace threshold mechanism"))?;
        let mut keys: Vec<(K, i64)> = noisy.into_iter().collect();
        keys.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(Release::new(
            KeySelection {
                keys,
                threshold: self.threshold,
            },
            MechanismKind::LaplaceThreshold,
            self.scale,
            self.charge,
            self.accuracy_95()?,
        ))
    }

    /// The bounds it was calibrated for: (keys per unit, rows per key).
    pub fn bounds(&self) -> (u32, u32) {
        (self.max_partitions, self.max_rows_per_partition)
    }
}

/// A DP quantile among public candidates, calibrated before the data is
/// seen (OpenDP's `make_private_quantile`, as [`super::quantile`]).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct QuantileChoice {
    candidates: Vec<f64>,
    alpha: f64,
    max_rows_per_unit: u32,
    scale: f64,
    charge: Charge,
}

impl QuantileChoice {
    /// Calibrates the choice of the `alpha`-quantile among `candidates`
    /// (finite, strictly increasing) for `max_rows_per_unit` rows per unit.
    pub fn calibrate(
        candidates: Vec<f64>,
        alpha: f64,
        max_rows_per_unit: u32,
        epsilon: Amount,
    ) -> Result<QuantileChoice> {
        check_quantile_parameters(&candidates, alpha)?;
        check_rows("max_rows_per_unit", max_rows_per_unit)?;
        if epsilon.is_zero() {
            return Err(Error::parameter(
                "epsilon",
                epsilon,
                "must be greater than zero",
            ));
        }
        let ideal = 2.0 * f64::from(max_rows_per_unit) * alpha.max(1.0 - alpha) / epsilon.to_f64();
        let (_, scale) = calibrate(epsilon, 1, ideal, |scale| {
            let m = quantile_measurement(&candidates, alpha, scale)?;
            let loss = m
                .map(&max_rows_per_unit)
                .map_err(opendp("building the private quantile mechanism"))?;
            Ok((m, loss))
        })?;
        Ok(QuantileChoice {
            candidates,
            alpha,
            max_rows_per_unit,
            scale,
            charge: Charge::Pure { epsilon },
        })
    }

    /// The score noise scale.
    pub fn scale(&self) -> f64 {
        self.scale
    }

    /// What one choice costs.
    pub fn charge(&self) -> Charge {
        self.charge
    }

    /// The candidates it chooses among.
    pub fn candidates(&self) -> &[f64] {
        &self.candidates
    }

    /// The 95% bound on the chosen candidate's excess score (see [`super::quantile`]).
    pub fn accuracy_95(&self) -> f64 {
        self.scale * (self.candidates.len() as f64 / ALPHA).ln()
    }

    /// Chooses the quantile of `values` (at most `max_rows_per_unit` per unit).
    pub fn release(&self, values: &[f64]) -> Result<Release<f64>> {
        if values.iter().any(|v| v.is_nan()) {
            return Err(Error::parameter(
                "values",
                "NaN",
                "remove or impute NaN values before a quantile",
            ));
        }
        let chosen = quantile_measurement(&self.candidates, self.alpha, self.scale)?
            .invoke(&values.to_vec())
            .map_err(opendp("sampling the private quantile"))?;
        Ok(Release::new(
            chosen,
            MechanismKind::ExponentialQuantile,
            self.scale,
            self.charge,
            self.accuracy_95(),
        ))
    }
}

type QuantileMeasurement =
    Measurement<VectorDomain<AtomDomain<f64>>, SymmetricDistance, MaxDivergence, f64>;

fn quantile_measurement(candidates: &[f64], alpha: f64, scale: f64) -> Result<QuantileMeasurement> {
    make_private_quantile(
        VectorDomain::new(AtomDomain::<f64>::new_non_nan()),
        SymmetricDistance,
        MaxDivergence,
        candidates.to_vec(),
        alpha,
        scale,
    )
    .map_err(opendp("building the private quantile mechanism"))
}

#[cfg(test)]
mod tests;
