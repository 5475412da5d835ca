//! The privacy parameter a caller asks for, and the exact target noise is
//! calibrated to.
//!
//! [`Privacy`] is what a caller writes (`epsilon: 0.1`); [`Target`] is the
//! same in exact [`Amount`]s, which every mechanism charges and calibrates
//! against. Keeping the conversion here makes "the charge is the decimal
//! written" hold in one place.

use serde::{Deserialize, Serialize};

use crate::accountant::{Amount, Charge};
use crate::error::{Error, Result};
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

    pub(super) fn target(&self) -> Result<Target> {
        Ok(match *self {
            Privacy::Pure { epsilon } => Target::Pure(positive_amount("epsilon", epsilon)?),
            Privacy::Zcdp { rho } => Target::Zcdp(positive_amount("rho", rho)?),
        })
    }
}

/// A privacy target in exact units: what the noise is calibrated to.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) enum Target {
    Pure(Amount),
    Zcdp(Amount),
}

impl Target {
    pub(super) fn charge(self) -> Charge {
        match self {
            Target::Pure(epsilon) => Charge::Pure { epsilon },
            Target::Zcdp(rho) => Charge::Zcdp { rho },
        }
    }

    /// Two targets of the same kind whose exact sum is `self`.
    pub(super) fn split(self) -> Result<(Target, Target)> {
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

pub(super) fn positive_amount(name: &'static str, value: f64) -> Result<Amount> {
    if !(value.is_finite() && value > 0.0) {
        return Err(Error::parameter(
            name,
            value,
            "must be finite and greater than zero",
        ));
    }
    Amount::from_f64_display(value)
}
