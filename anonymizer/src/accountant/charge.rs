//! Charges and budgets in the three privacy definitions, with their exact
//! conversions and their sequential and parallel composition.
//!
//! A [`Charge`] is what one release costs and a [`Budget`] what a study may
//! spend; both are built from [`Amount`]s, and converting between kinds is
//! done here only, rounding up wherever a formula is not exact.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::amount::{Amount, UNITS_PER_ONE, mul_div_ceil};
use crate::error::{Error, Result};

/// The three privacy definitions the accountant understands.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PrivacyKind {
    /// Pure ε-differential privacy.
    Pure,
    /// Approximate (ε, δ)-differential privacy.
    Approx,
    /// ρ-zero-concentrated differential privacy (Bun & Steinke 2016).
    Zcdp,
}

impl fmt::Display for PrivacyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PrivacyKind::Pure => "pure ε-DP",
            PrivacyKind::Approx => "(ε, δ)-DP",
            PrivacyKind::Zcdp => "ρ-zCDP",
        })
    }
}

/// What one release costs, in one privacy definition.
///
/// Charges are compared and added component-wise and only within one kind;
/// [`Charge::convert_to`] moves a charge to another kind where a valid
/// conversion exists.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Charge {
    /// Pure ε-DP.
    Pure {
        /// ε.
        epsilon: Amount,
    },
    /// Approximate (ε, δ)-DP.
    Approx {
        /// ε.
        epsilon: Amount,
        /// δ.
        delta: Amount,
    },
    /// ρ-zCDP.
    Zcdp {
        /// ρ.
        rho: Amount,
    },
}

impl fmt::Display for Charge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Charge::Pure { epsilon } => write!(f, "ε = {epsilon}"),
            Charge::Approx { epsilon, delta } => write!(f, "(ε = {epsilon}, δ = {delta})"),
            Charge::Zcdp { rho } => write!(f, "ρ = {rho}"),
        }
    }
}

impl Charge {
    /// The zero charge of `kind`.
    pub const fn zero(kind: PrivacyKind) -> Charge {
        match kind {
            PrivacyKind::Pure => Charge::Pure {
                epsilon: Amount::ZERO,
            },
            PrivacyKind::Approx => Charge::Approx {
                epsilon: Amount::ZERO,
                delta: Amount::ZERO,
            },
            PrivacyKind::Zcdp => Charge::Zcdp { rho: Amount::ZERO },
        }
    }

    /// The privacy definition of this charge.
    pub const fn kind(&self) -> PrivacyKind {
        match self {
            Charge::Pure { .. } => PrivacyKind::Pure,
            Charge::Approx { .. } => PrivacyKind::Approx,
            Charge::Zcdp { .. } => PrivacyKind::Zcdp,
        }
    }

    /// This charge expressed in `kind`.
    ///
    /// * pure ε → (ε, 0): exact.
    /// * pure ε → zCDP with ρ = ε²/2 (Bun & Steinke 2016, Prop. 1.4): exact
    ///   integer arithmetic, rounded up at the 18th decimal.
    /// * (ε, 0) → pure ε: exact (δ = 0 is pure DP).
    /// * (ε, δ > 0) → pure or zCDP: impossible, an error.
    /// * zCDP → (ε, δ) needs a δ: use [`Charge::zcdp_to_approx`]; here it is an error.
    /// * zCDP → pure: impossible, an error.
    pub fn convert_to(&self, kind: PrivacyKind) -> Result<Charge> {
        let impossible = |hint: &'static str| Error::ConversionImpossible {
            from: self.to_string(),
            to: kind.to_string(),
            hint,
        };
        match (*self, kind) {
            (charge @ Charge::Pure { .. }, PrivacyKind::Pure)
            | (charge @ Charge::Approx { .. }, PrivacyKind::Approx)
            | (charge @ Charge::Zcdp { .. }, PrivacyKind::Zcdp) => Ok(charge),
            (Charge::Pure { epsilon }, PrivacyKind::Approx) => Ok(Charge::Approx {
                epsilon,
                delta: Amount::ZERO,
            }),
            (Charge::Pure { epsilon }, PrivacyKind::Zcdp) => {
                let rho = mul_div_ceil(epsilon.units(), epsilon.units(), 2 * UNITS_PER_ONE).ok_or(
                    Error::AmountOverflow {
                        operation: "ρ = ε²/2",
                    },
                )?;
                Ok(Charge::Zcdp {
                    rho: Amount::from_units(rho),
                })
            }
            (Charge::Approx { epsilon, delta }, PrivacyKind::Pure) if delta.is_zero() => {
                Ok(Charge::Pure { epsilon })
            }
            (Charge::Approx { epsilon, delta }, PrivacyKind::Zcdp) if delta.is_zero() => {
                Charge::Pure { epsilon }.convert_to(PrivacyKind::Zcdp)
            }
            (Charge::Approx { .. }, _) => Err(impossible(
                "an (ε, δ) guarantee with δ > 0 implies no pure or zCDP guarantee; spend it \
                 from an (ε, δ) budget",
            )),
            (Charge::Zcdp { .. }, PrivacyKind::Approx) => Err(impossible(
                "converting ρ-zCDP to (ε, δ) needs a δ: call `Charge::zcdp_to_approx(delta)` \
                 first, or keep the study on a zCDP budget (composing ρ before converting is \
                 much tighter)",
            )),
            (Charge::Zcdp { .. }, _) => Err(impossible(
                "ρ-zCDP implies no pure ε-DP guarantee; spend it from a zCDP or (ε, δ) budget",
            )),
        }
    }

    /// A ρ-zCDP charge as (ε, δ)-DP for the caller's `delta`:
    /// ε = ρ + 2·√(ρ·ln(1/δ)) (Bun & Steinke 2016, Prop. 1.3).
    ///
    /// The square root and logarithm are evaluated in `f64` (relative error
    /// below 10⁻¹⁵), inflated by a relative 10⁻¹⁴ and rounded up, so ε is
    /// never under-stated. A pure charge becomes (ε, 0) (δ is not needed);
    /// an (ε, δ) charge is returned unchanged. `delta` must be in (0, 1).
    pub fn zcdp_to_approx(&self, delta: Amount) -> Result<Charge> {
        if delta.is_zero() || delta >= Amount::ONE {
            return Err(Error::parameter(
                "delta",
                delta,
                "must be in (0, 1) to convert ρ-zCDP to (ε, δ)-DP",
            ));
        }
        match *self {
            Charge::Zcdp { rho } => {
                let rho_f = rho.to_f64();
                let epsilon_f = rho_f + 2.0 * (rho_f * -delta.to_f64().ln()).sqrt();
                let epsilon = Amount::from_f64_ceil(epsilon_f * (1.0 + 1e-14))?.max(rho);
                Ok(Charge::Approx { epsilon, delta })
            }
            other => other.convert_to(PrivacyKind::Approx),
        }
    }

    /// Sequential composition: the exact sum of `self` and `other`, which
    /// must be of the same kind (convert first with [`Charge::convert_to`]).
    pub fn checked_add(&self, other: &Charge) -> Result<Charge> {
        const OP: &str = "sequential composition";
        match (*self, *other) {
            (Charge::Pure { epsilon: a }, Charge::Pure { epsilon: b }) => Ok(Charge::Pure {
                epsilon: a.add(b, OP)?,
            }),
            (
                Charge::Approx {
                    epsilon: a,
                    delta: da,
                },
                Charge::Approx {
                    epsilon: b,
                    delta: db,
                },
            ) => Ok(Charge::Approx {
                epsilon: a.add(b, OP)?,
                delta: da.add(db, OP)?,
            }),
            (Charge::Zcdp { rho: a }, Charge::Zcdp { rho: b }) => {
                Ok(Charge::Zcdp { rho: a.add(b, OP)? })
            }
            (a, b) => Err(mismatch(OP, a.kind(), &b)),
        }
    }

    /// `self - other` component-wise, for charges of the same kind with
    /// `other` within `self`; `None` otherwise.
    pub fn checked_sub(&self, other: &Charge) -> Option<Charge> {
        match (*self, *other) {
            (Charge::Pure { epsilon: a }, Charge::Pure { epsilon: b }) => Some(Charge::Pure {
                epsilon: a.checked_sub(b)?,
            }),
            (
                Charge::Approx {
                    epsilon: a,
                    delta: da,
                },
                Charge::Approx {
                    epsilon: b,
                    delta: db,
                },
            ) => Some(Charge::Approx {
                epsilon: a.checked_sub(b)?,
                delta: da.checked_sub(db)?,
            }),
            (Charge::Zcdp { rho: a }, Charge::Zcdp { rho: b }) => Some(Charge::Zcdp {
                rho: a.checked_sub(b)?,
            }),
            _ => None,
        }
    }

    /// Whether `self` is of the same kind as `bound` and no larger in any component.
    pub fn is_within(&self, bound: &Charge) -> bool {
        bound.checked_sub(self).is_some()
    }

    /// Sequential composition of `charges`, each converted to `kind`: the
    /// exact component-wise sum (the zero charge of `kind` if empty).
    pub fn sequential(charges: &[Charge], kind: PrivacyKind) -> Result<Charge> {
        charges
            .iter()
            .try_fold(Charge::zero(kind), |total, charge| {
                total.checked_add(&charge.convert_to(kind)?)
            })
    }

    /// Parallel composition over disjoint partitions: when each privacy unit
    /// lies in one partition only, the releases together cost the
    /// component-wise maximum. All charges must be of one kind; the slice
    /// must not be empty.
    pub fn parallel(charges: &[Charge]) -> Result<Charge> {
        const OP: &str = "parallel composition";
        let (first, rest) = charges.split_first().ok_or_else(|| {
            Error::parameter(
                "charges",
                "[]",
                "parallel composition needs at least one charge",
            )
        })?;
        rest.iter()
            .try_fold(*first, |max, charge| match (max, *charge) {
                (Charge::Pure { epsilon: a }, Charge::Pure { epsilon: b }) => {
                    Ok(Charge::Pure { epsilon: a.max(b) })
                }
                (
                    Charge::Approx {
                        epsilon: a,
                        delta: da,
                    },
                    Charge::Approx {
                        epsilon: b,
                        delta: db,
                    },
                ) => Ok(Charge::Approx {
                    epsilon: a.max(b),
                    delta: da.max(db),
                }),
                (Charge::Zcdp { rho: a }, Charge::Zcdp { rho: b }) => {
                    Ok(Charge::Zcdp { rho: a.max(b) })
                }
                (max, other) => Err(mismatch(OP, max.kind(), &other)),
            })
    }
}

fn mismatch(operation: &'static str, expected: PrivacyKind, found: &Charge) -> Error {
    Error::KindMismatch {
        operation,
        expected: expected.to_string(),
        found: format!("{} charge ({found})", found.kind()),
    }
}

/// A study's total privacy budget, in one privacy definition.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Budget {
    /// Pure ε-DP: every charge must be pure (or (ε, 0)).
    Pure {
        /// Total ε.
        epsilon: Amount,
    },
    /// Approximate (ε, δ)-DP under basic composition: ε and δ add up.
    Approx {
        /// Total ε.
        epsilon: Amount,
        /// Total δ.
        delta: Amount,
    },
    /// ρ-zCDP: ρ adds up; pure charges count as ε²/2.
    Zcdp {
        /// Total ρ.
        rho: Amount,
    },
}

impl Budget {
    /// The privacy definition of the budget.
    pub const fn kind(&self) -> PrivacyKind {
        self.as_charge().kind()
    }

    /// The budget as a charge of the same kind and components (to compare
    /// and subtract).
    pub const fn as_charge(&self) -> Charge {
        match *self {
            Budget::Pure { epsilon } => Charge::Pure { epsilon },
            Budget::Approx { epsilon, delta } => Charge::Approx { epsilon, delta },
            Budget::Zcdp { rho } => Charge::Zcdp { rho },
        }
    }
}

impl fmt::Display for Budget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.as_charge().fmt(f)
    }
}
