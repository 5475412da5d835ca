//! The privacy accountant: exact budgets, charges and their composition.
//!
//! Privacy amounts (ε, δ, ρ) are [`Amount`]s: unsigned fixed-point numbers
//! with 18 decimals, stored as a `u128` count of 10⁻¹⁸ units, the way wei
//! count ether. The ledger stores the same units, so an amount read from the
//! chain and an amount debited here are the same integer. Composition is exact
//! integer addition; floating point appears only where a formula needs a
//! square root or a logarithm (zCDP → (ε, δ)), and there the result is
//! rounded *up*, so the accountant never under-counts a loss.
//!
//! A [`Charge`] is what one release costs and a [`Budget`] is what a study
//! may spend, each in one of three privacy definitions ([`PrivacyKind`]):
//! pure ε-DP, approximate (ε, δ)-DP and ρ-zero-concentrated DP. The
//! [`Accountant`] converts every charge into its budget's kind and enforces
//! `committed + reserved ≤ budget` through reserve / commit / release.
//!
//! ```
//! use cohort_anonymizer::accountant::{Accountant, Amount, Budget, Charge, QueryId};
//!
//! let mut accountant = Accountant::new(Budget::Pure { epsilon: "1".parse()? });
//! let charge = Charge::Pure { epsilon: "0.25".parse()? };
//! accountant.reserve(QueryId::new("q1"), charge)?;
//! accountant.commit(&QueryId::new("q1"), None)?;
//! assert_eq!(accountant.remaining(), Charge::Pure { epsilon: "0.75".parse()? });
//! # Ok::<(), cohort_anonymizer::Error>(())
//! ```
//!
//! The parts: [`Amount`]'s exact arithmetic (`amount`), charges and budgets
//! with their conversions and composition (`charge`), and a study's
//! reserve / commit / release ledger (`ledger`).

mod amount;
mod charge;
mod ledger;

pub use amount::{Amount, DECIMALS, UNITS_PER_ONE};
pub use charge::{Budget, Charge, PrivacyKind};
pub use ledger::{Accountant, QueryId};

#[cfg(test)]
mod props;
#[cfg(test)]
mod tests;
