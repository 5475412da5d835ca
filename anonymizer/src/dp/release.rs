//! What a mechanism hands back: a [`Release`], the only way a noisy value
//! leaves this module, with its mechanism, scale, charge and accuracy.
//!
//! Its constructor is visible to the mechanisms of [`crate::dp`] only, so a
//! release cannot be forged from outside and always carries its cost.

use serde::{Deserialize, Serialize};

use crate::accountant::Charge;
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
    pub(super) fn new(
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

/// The keys kept by [`select_keys`](super::select_keys), with their noisy counts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct KeySelection<K> {
    /// The kept keys, sorted by key, each with its noisy count (at least `threshold`).
    pub keys: Vec<(K, i64)>,
    /// Keys whose noisy count fell below this were dropped.
    pub threshold: i64,
}
