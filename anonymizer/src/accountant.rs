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

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Number of decimals of an [`Amount`].
pub const DECIMALS: u32 = 18;

/// Units in one whole privacy unit (`10^18`).
pub const UNITS_PER_ONE: u128 = 1_000_000_000_000_000_000;

/// An exact, non-negative privacy amount (ε, δ or ρ) with 18 decimals.
///
/// `Amount::from_units(1)` is `0.000000000000000001`; `Amount::ONE` is `1`.
/// Arithmetic is checked integer arithmetic; nothing is ever accumulated in
/// floating point. Serialized as its decimal string (`"1.5"`), which parses
/// back exactly.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Amount(u128);

/// How [`parse_decimal`] treats digits beyond the 18th decimal.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Rounding {
    /// Refuse them unless they are zeros.
    Exact,
    /// Round up to the next unit if any of them is non-zero.
    Up,
}

impl Amount {
    /// Zero.
    pub const ZERO: Amount = Amount(0);
    /// One whole unit (`1.0`).
    pub const ONE: Amount = Amount(UNITS_PER_ONE);
    /// The largest representable amount (about `3.4e20`).
    pub const MAX: Amount = Amount(u128::MAX);

    /// The amount of `units` × 10⁻¹⁸.
    pub const fn from_units(units: u128) -> Amount {
        Amount(units)
    }

    /// The number of 10⁻¹⁸ units (what the ledger stores).
    pub const fn units(self) -> u128 {
        self.0
    }

    /// Whether this is zero.
    pub const fn is_zero(self) -> bool {
        self.0 == 0
    }

    /// The smallest amount that is at least the exact binary value of `x`.
    ///
    /// Rounds *up* at the 18th decimal, so a charge computed in floating
    /// point is never under-counted: `from_f64_ceil(0.1)` is
    /// `0.100000000000000006` because the `f64` nearest to 0.1 is slightly
    /// above it. Refuses NaN, infinities, negative numbers and values above
    /// [`Amount::MAX`].
    pub fn from_f64_ceil(x: f64) -> Result<Amount> {
        check_f64(x)?;
        let bits = x.to_bits();
        let exponent_bits = ((bits >> 52) & 0x7ff) as i32;
        let fraction = u128::from(bits & ((1u64 << 52) - 1));
        // x = mantissa · 2^exponent exactly.
        let (mantissa, exponent) = if exponent_bits == 0 {
            (fraction, -1074)
        } else {
            (fraction | (1u128 << 52), exponent_bits - 1075)
        };
        // mantissa < 2^53 and 10^18 < 2^60: the product fits in 113 bits.
        let scaled = mantissa * UNITS_PER_ONE;
        if scaled == 0 {
            return Ok(Amount::ZERO);
        }
        if exponent >= 0 {
            let shift = exponent as u32;
            if shift >= scaled.leading_zeros() {
                return Err(Error::InvalidAmount {
                    input: x.to_string(),
                    reason: "it exceeds the largest amount (about 3.4e20)".into(),
                });
            }
            Ok(Amount(scaled << shift))
        } else {
            let shift = exponent.unsigned_abs();
            if shift >= 128 {
                // 0 < x·10^18 < 1: the ceiling is one unit.
                return Ok(Amount(1));
            }
            let quotient = scaled >> shift;
            let remainder = scaled & ((1u128 << shift) - 1);
            Ok(Amount(quotient + u128::from(remainder != 0)))
        }
    }

    /// The decimal that Rust prints for `x` (the shortest decimal that reads
    /// back as the same `f64`), rounded up at the 18th decimal.
    ///
    /// This is the amount a caller means when writing `0.1` in code:
    /// `from_f64_display(0.1)` is exactly `0.1`, where [`Amount::from_f64_ceil`]
    /// gives `0.100000000000000006`. The mechanisms of [`crate::dp`] charge
    /// this amount and calibrate their noise so that OpenDP's privacy map,
    /// itself rounded up, stays at or below it. Refuses NaN, infinities,
    /// negative numbers and values above [`Amount::MAX`].
    pub fn from_f64_display(x: f64) -> Result<Amount> {
        check_f64(x)?;
        // `Display` for f64 never uses exponent notation.
        parse_decimal(&format!("{x}"), Rounding::Up)
    }

    /// The nearest `f64` (approximate: use it for noise calibration and
    /// display, never for accounting).
    pub fn to_f64(self) -> f64 {
        let whole = (self.0 / UNITS_PER_ONE) as f64;
        let fraction = (self.0 % UNITS_PER_ONE) as f64 / UNITS_PER_ONE as f64;
        whole + fraction
    }

    /// `self + other`, or `None` on overflow.
    pub const fn checked_add(self, other: Amount) -> Option<Amount> {
        match self.0.checked_add(other.0) {
            Some(units) => Some(Amount(units)),
            None => None,
        }
    }

    /// `self - other`, or `None` if `other` is larger.
    pub const fn checked_sub(self, other: Amount) -> Option<Amount> {
        match self.0.checked_sub(other.0) {
            Some(units) => Some(Amount(units)),
            None => None,
        }
    }

    /// `self + other`, or [`Error::AmountOverflow`].
    fn add(self, other: Amount, operation: &'static str) -> Result<Amount> {
        self.checked_add(other)
            .ok_or(Error::AmountOverflow { operation })
    }
}

fn check_f64(x: f64) -> Result<()> {
    let reason = if x.is_nan() {
        "NaN is not an amount"
    } else if x.is_infinite() {
        "an infinite amount cannot be accounted for"
    } else if x < 0.0 {
        "privacy amounts are never negative"
    } else {
        return Ok(());
    };
    Err(Error::InvalidAmount {
        input: x.to_string(),
        reason: reason.into(),
    })
}

/// Parses `[0-9]+(\.[0-9]+)?` into units.
fn parse_decimal(text: &str, rounding: Rounding) -> Result<Amount> {
    let invalid = |reason: &str| Error::InvalidAmount {
        input: text.to_owned(),
        reason: reason.to_owned(),
    };
    let (whole, fraction) = match text.split_once('.') {
        Some((whole, fraction)) => (whole, Some(fraction)),
        None => (text, None),
    };
    let all_digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !all_digits(whole) {
        return Err(invalid(if text.starts_with('-') {
            "privacy amounts are never negative"
        } else {
            "expected digits before the decimal point"
        }));
    }
    if let Some(fraction) = fraction
        && !all_digits(fraction)
    {
        return Err(invalid("expected digits after the decimal point"));
    }
    let too_large = || invalid("it exceeds the largest amount (about 3.4e20)");
    let mut units: u128 = 0;
    for digit in whole.bytes() {
        units = units
            .checked_mul(10)
            .and_then(|u| u.checked_add(u128::from(digit - b'0')))
            .ok_or_else(too_large)?;
    }
    units = units.checked_mul(UNITS_PER_ONE).ok_or_else(too_large)?;
    let fraction = fraction.unwrap_or("").as_bytes();
    let (kept, rest) = fraction.split_at(fraction.len().min(DECIMALS as usize));
    let mut fractional: u128 = 0;
    for (position, digit) in kept.iter().enumerate() {
        fractional += u128::from(digit - b'0') * 10u128.pow(DECIMALS - 1 - position as u32);
    }
    units = units.checked_add(fractional).ok_or_else(too_large)?;
    if rest.iter().any(|&digit| digit != b'0') {
        match rounding {
            Rounding::Exact => {
                return Err(invalid(
                    "it has more than 18 decimals and cannot be represented exactly",
                ));
            }
            Rounding::Up => units = units.checked_add(1).ok_or_else(too_large)?,
        }
    }
    Ok(Amount(units))
}

impl FromStr for Amount {
    type Err = Error;

    /// Parses a decimal such as `1.5` or `0.000001` exactly; more than 18
    /// non-zero decimals, signs, exponents and separators are refused.
    fn from_str(text: &str) -> Result<Amount> {
        parse_decimal(text, Rounding::Exact)
    }
}

impl fmt::Display for Amount {
    /// The exact decimal, without trailing zeros: `1.5`, `0.000001`, `2`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let whole = self.0 / UNITS_PER_ONE;
        let fraction = self.0 % UNITS_PER_ONE;
        if fraction == 0 {
            return write!(f, "{whole}");
        }
        let digits = format!("{fraction:018}");
        write!(f, "{whole}.{}", digits.trim_end_matches('0'))
    }
}

impl fmt::Debug for Amount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Amount({self})")
    }
}

impl Serialize for Amount {
    fn serialize<S: serde::Serializer>(
        &self,
        serializer: S,
    ) -> std::result::Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Amount {
    fn deserialize<D: serde::Deserializer<'de>>(
        deserializer: D,
    ) -> std::result::Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// `ceil(a · b / divisor)` with a 256-bit intermediate product, or `None`
/// if the result does not fit in a `u128` (or `divisor` is zero).
fn mul_div_ceil(a: u128, b: u128, divisor: u128) -> Option<u128> {
    if divisor == 0 {
        return None;
    }
    const LOW: u128 = u64::MAX as u128;
    let (a1, a0) = (a >> 64, a & LOW);
    let (b1, b0) = (b >> 64, b & LOW);
    let (p00, p01, p10, p11) = (a0 * b0, a0 * b1, a1 * b0, a1 * b1);
    let middle = (p00 >> 64) + (p01 & LOW) + (p10 & LOW);
    let low = (p00 & LOW) | (middle << 64);
    let high = p11 + (p01 >> 64) + (p10 >> 64) + (middle >> 64);
    // Schoolbook binary long division of (high, low) by divisor.
    let (mut quotient_high, mut quotient_low, mut remainder) = (0u128, 0u128, 0u128);
    for bit in (0..256u32).rev() {
        let next = if bit >= 128 {
            (high >> (bit - 128)) & 1
        } else {
            (low >> bit) & 1
        };
        let carry = remainder >> 127;
        remainder = (remainder << 1) | next;
        if carry == 1 || remainder >= divisor {
            remainder = remainder.wrapping_sub(divisor);
            if bit >= 128 {
                quotient_high |= 1 << (bit - 128);
            } else {
                quotient_low |= 1 << bit;
            }
        }
    }
    if quotient_high != 0 {
        return None;
    }
    quotient_low.checked_add(u128::from(remainder != 0))
}

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
                let rho = mul_div_ceil(epsilon.0, epsilon.0, 2 * UNITS_PER_ONE).ok_or(
                    Error::AmountOverflow {
                        operation: "ρ = ε²/2",
                    },
                )?;
                Ok(Charge::Zcdp { rho: Amount(rho) })
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

/// The identifier of one query's debit (unique within a study).
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Serialize, Deserialize)]
#[serde(transparent)]
pub struct QueryId(String);

impl QueryId {
    /// A query id.
    pub fn new(id: impl Into<String>) -> QueryId {
        QueryId(id.into())
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for QueryId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<&str> for QueryId {
    fn from(id: &str) -> QueryId {
        QueryId::new(id)
    }
}

impl From<String> for QueryId {
    fn from(id: String) -> QueryId {
        QueryId(id)
    }
}

/// A study's privacy ledger: its budget, what is committed, and the open
/// reservations of queries in flight.
///
/// Invariant, after every operation: `committed + reserved ≤ budget`,
/// component-wise in the budget's kind, where `reserved` is the sum of the
/// open reservations and `committed` the exact sum of the committed charges.
/// Every charge is converted to the budget's kind on entry
/// ([`Charge::convert_to`]). The accountant is plain data: share it between
/// threads behind a `Mutex`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "AccountantState")]
pub struct Accountant {
    budget: Budget,
    /// Exact sum of `committed_queries`.
    committed: Charge,
    /// Exact sum of `reservations`, converted to the budget's kind (derived:
    /// not serialized, recomputed on deserialization).
    #[serde(skip_serializing)]
    reserved: Charge,
    /// Open reservations, as requested (not converted), for idempotent retries.
    reservations: BTreeMap<QueryId, Charge>,
    /// Committed queries and what each cost, in the budget's kind.
    committed_queries: BTreeMap<QueryId, Charge>,
}

/// The serialized form of an [`Accountant`], checked on the way in.
#[derive(Deserialize)]
struct AccountantState {
    budget: Budget,
    committed: Charge,
    reservations: BTreeMap<QueryId, Charge>,
    committed_queries: BTreeMap<QueryId, Charge>,
}

impl TryFrom<AccountantState> for Accountant {
    type Error = Error;

    fn try_from(state: AccountantState) -> Result<Accountant> {
        let kind = state.budget.kind();
        let inconsistent = |reason: String| Error::InconsistentState { reason };
        let logged: Vec<Charge> = state.committed_queries.values().copied().collect();
        let sum = Charge::sequential(&logged, kind)?;
        if sum != state.committed {
            return Err(inconsistent(format!(
                "committed is {} but the committed queries sum to {sum}",
                state.committed
            )));
        }
        if let Some(id) = state
            .reservations
            .keys()
            .find(|id| state.committed_queries.contains_key(*id))
        {
            return Err(inconsistent(format!(
                "query `{id}` is both reserved and committed"
            )));
        }
        let open: Vec<Charge> = state.reservations.values().copied().collect();
        let accountant = Accountant {
            budget: state.budget,
            committed: state.committed,
            reserved: Charge::sequential(&open, kind)?,
            reservations: state.reservations,
            committed_queries: state.committed_queries,
        };
        let total = accountant.committed.checked_add(&accountant.reserved)?;
        if !total.is_within(&accountant.budget.as_charge()) {
            return Err(inconsistent(format!(
                "committed + reserved ({total}) exceeds the budget ({})",
                accountant.budget
            )));
        }
        Ok(accountant)
    }
}

impl Accountant {
    /// An accountant with nothing spent.
    pub fn new(budget: Budget) -> Accountant {
        Accountant {
            budget,
            committed: Charge::zero(budget.kind()),
            reserved: Charge::zero(budget.kind()),
            reservations: BTreeMap::new(),
            committed_queries: BTreeMap::new(),
        }
    }

    /// The study's total budget.
    pub fn budget(&self) -> &Budget {
        &self.budget
    }

    /// Reserves `charge` for `query_id` before the query runs.
    ///
    /// Refuses with [`Error::BudgetExceeded`] when `committed + reserved +
    /// charge` would exceed the budget (a total exactly equal to the budget
    /// is allowed). Idempotent: reserving the same id with the same charge
    /// again succeeds without counting twice; the same id with a different
    /// charge is [`Error::ReservationConflict`], and an id already committed
    /// is [`Error::AlreadyCommitted`].
    pub fn reserve(&mut self, query_id: QueryId, charge: Charge) -> Result<()> {
        if let Some(done) = self.committed_queries.get(&query_id) {
            return Err(Error::AlreadyCommitted {
                query_id: query_id.0,
                charge: done.to_string(),
            });
        }
        let debit = charge.convert_to(self.budget.kind())?;
        if let Some(existing) = self.reservations.get(&query_id) {
            if *existing == charge {
                return Ok(());
            }
            return Err(Error::ReservationConflict {
                query_id: query_id.0,
                existing: existing.to_string(),
                requested: charge.to_string(),
            });
        }
        let reserved = self.reserved.checked_add(&debit)?;
        let total = self.committed.checked_add(&reserved)?;
        if !total.is_within(&self.budget.as_charge()) {
            return Err(Error::BudgetExceeded {
                query_id: query_id.0,
                requested: debit.to_string(),
                remaining: self.remaining().to_string(),
                ledger: format!(
                    "budget {}, committed {}, reserved {}",
                    self.budget, self.committed, self.reserved
                ),
            });
        }
        self.reserved = reserved;
        self.reservations.insert(query_id, charge);
        Ok(())
    }

    /// Commits the reservation of `query_id`: its cost becomes final.
    ///
    /// `actual` is what the release really cost if it was less than
    /// reserved (`None` commits the reservation as is); it may not exceed
    /// the reservation in any component ([`Error::ActualExceedsReserved`]).
    /// Returns the committed charge in the budget's kind. A query without a
    /// reservation is [`Error::UnknownQuery`]; a second commit is
    /// [`Error::AlreadyCommitted`].
    pub fn commit(&mut self, query_id: &QueryId, actual: Option<Charge>) -> Result<Charge> {
        if let Some(done) = self.committed_queries.get(query_id) {
            return Err(Error::AlreadyCommitted {
                query_id: query_id.to_string(),
                charge: done.to_string(),
            });
        }
        let reserved = self
            .reservations
            .get(query_id)
            .ok_or_else(|| Error::UnknownQuery {
                query_id: query_id.to_string(),
                operation: "commit",
            })?
            .convert_to(self.budget.kind())?;
        let debit = match actual {
            Some(actual) => actual.convert_to(self.budget.kind())?,
            None => reserved,
        };
        if !debit.is_within(&reserved) {
            return Err(Error::ActualExceedsReserved {
                query_id: query_id.to_string(),
                reserved: reserved.to_string(),
                actual: debit.to_string(),
            });
        }
        // debit ≤ reserved and committed + reserved ≤ budget: cannot overflow.
        let committed = self.committed.checked_add(&debit)?;
        self.reserved = self.unreserve(reserved)?;
        self.committed = committed;
        self.reservations.remove(query_id);
        self.committed_queries.insert(query_id.clone(), debit);
        Ok(debit)
    }

    /// Cancels the reservation of `query_id` (the query did not run);
    /// returns what was reserved, in the budget's kind.
    pub fn release(&mut self, query_id: &QueryId) -> Result<Charge> {
        if let Some(done) = self.committed_queries.get(query_id) {
            return Err(Error::AlreadyCommitted {
                query_id: query_id.to_string(),
                charge: done.to_string(),
            });
        }
        let charge = self
            .reservations
            .remove(query_id)
            .ok_or_else(|| Error::UnknownQuery {
                query_id: query_id.to_string(),
                operation: "release",
            })?;
        let debit = charge.convert_to(self.budget.kind())?;
        self.reserved = self.unreserve(debit)?;
        Ok(debit)
    }

    /// `reserved − debit`, for a debit that is part of `reserved`.
    fn unreserve(&self, debit: Charge) -> Result<Charge> {
        self.reserved
            .checked_sub(&debit)
            .ok_or_else(|| Error::InconsistentState {
                reason: format!(
                    "the reservations total {} but include {debit}",
                    self.reserved
                ),
            })
    }

    /// What may still be reserved: budget − committed − reserved.
    pub fn remaining(&self) -> Charge {
        self.budget
            .as_charge()
            .checked_sub(&self.committed)
            .and_then(|left| left.checked_sub(&self.reserved))
            .unwrap_or_else(|| Charge::zero(self.budget.kind()))
    }

    /// The exact sum of the committed charges, in the budget's kind.
    pub fn committed(&self) -> Charge {
        self.committed
    }

    /// The exact sum of the open reservations, in the budget's kind.
    pub fn reserved(&self) -> Charge {
        self.reserved
    }

    /// The open reservation of `query_id`, as requested.
    pub fn reservation(&self, query_id: &QueryId) -> Option<&Charge> {
        self.reservations.get(query_id)
    }

    /// What `query_id` cost, in the budget's kind, if it is committed.
    pub fn committed_charge(&self, query_id: &QueryId) -> Option<&Charge> {
        self.committed_queries.get(query_id)
    }

    /// The committed queries and their charges, in id order.
    pub fn committed_queries(&self) -> impl Iterator<Item = (&QueryId, &Charge)> {
        self.committed_queries.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn amount(text: &str) -> Amount {
        text.parse().unwrap()
    }

    fn pure(text: &str) -> Charge {
        Charge::Pure {
            epsilon: amount(text),
        }
    }

    fn id(text: &str) -> QueryId {
        QueryId::new(text)
    }

    #[test]
    fn amounts_parse_and_print_exactly() {
        assert_eq!(amount("1.5").units(), 1_500_000_000_000_000_000);
        assert_eq!(amount("0.000001").units(), 1_000_000_000_000);
        assert_eq!(amount("0.000000000000000001").units(), 1);
        assert_eq!(
            amount("1.500000000000000000000").units(),
            amount("1.5").units()
        );
        assert_eq!(amount("42").to_string(), "42");
        assert_eq!(amount("1.5").to_string(), "1.5");
        assert_eq!(amount("0.000001").to_string(), "0.000001");
        assert_eq!(Amount::from_units(1).to_string(), "0.000000000000000001");
        assert_eq!(
            Amount::MAX.to_string().parse::<Amount>().unwrap(),
            Amount::MAX
        );
        for bad in [
            "",
            ".5",
            "1.",
            "-1",
            "+1",
            "1e-6",
            "1,5",
            " 1",
            "0.0000000000000000001",
            "NaN",
            "340282366920938463464",
        ] {
            let error = bad.parse::<Amount>().unwrap_err();
            assert!(
                matches!(error, Error::InvalidAmount { .. }),
                "{bad}: {error}"
            );
        }
    }

    #[test]
    fn amounts_from_f64_round_up() {
        assert_eq!(Amount::from_f64_ceil(1.5).unwrap(), amount("1.5"));
        assert_eq!(Amount::from_f64_ceil(0.0).unwrap(), Amount::ZERO);
        // The f64 nearest 0.1 is 0.1000000000000000055511151231257827...
        assert_eq!(
            Amount::from_f64_ceil(0.1).unwrap(),
            amount("0.100000000000000006")
        );
        // 0.3 is 0.299999999999999988897769753748434595763683319091796875.
        assert_eq!(
            Amount::from_f64_ceil(0.3).unwrap(),
            amount("0.299999999999999989")
        );
        assert_eq!(Amount::from_f64_ceil(1e-30).unwrap(), Amount::from_units(1));
        assert_eq!(
            Amount::from_f64_ceil(f64::MIN_POSITIVE / 4.0).unwrap(),
            Amount::from_units(1)
        );
        assert_eq!(
            Amount::from_f64_ceil(2f64.powi(60)).unwrap().to_string(),
            "1152921504606846976"
        );
        assert_eq!(Amount::from_f64_display(0.1).unwrap(), amount("0.1"));
        assert_eq!(Amount::from_f64_display(1e-7).unwrap(), amount("0.0000001"));
        assert_eq!(
            Amount::from_f64_display(1e-20).unwrap(),
            Amount::from_units(1)
        );
        for bad in [f64::NAN, f64::INFINITY, -1.0, 1e21, f64::MAX] {
            assert!(Amount::from_f64_ceil(bad).is_err(), "{bad}");
            assert!(Amount::from_f64_display(bad).is_err(), "{bad}");
        }
        assert!((amount("1.25").to_f64() - 1.25).abs() < 1e-15);
    }

    #[test]
    fn mul_div_ceil_is_exact() {
        assert_eq!(mul_div_ceil(7, 3, 2), Some(11));
        assert_eq!(
            mul_div_ceil(u128::MAX, u128::MAX, u128::MAX),
            Some(u128::MAX)
        );
        assert_eq!(mul_div_ceil(u128::MAX, 2, 1), None);
        assert_eq!(mul_div_ceil(1 << 100, 1 << 100, 1 << 80), Some(1 << 120));
        assert_eq!(
            mul_div_ceil((1 << 100) + 1, 1 << 100, 1 << 100),
            Some((1 << 100) + 1)
        );
        assert_eq!(mul_div_ceil(5, 5, 0), None);
    }

    #[test]
    fn pure_to_zcdp_is_half_epsilon_squared_rounded_up() {
        let rho = |eps: &str| pure(eps).convert_to(PrivacyKind::Zcdp).unwrap();
        assert_eq!(rho("1"), Charge::Zcdp { rho: amount("0.5") });
        assert_eq!(
            rho("0.1"),
            Charge::Zcdp {
                rho: amount("0.005")
            }
        );
        assert_eq!(rho("3"), Charge::Zcdp { rho: amount("4.5") });
        // (1 + 1e-18)² / 2 = 0.5 + 1e-18 + 5e-37: rounds up to two units above 0.5.
        assert_eq!(
            rho("1.000000000000000001"),
            Charge::Zcdp {
                rho: amount("0.500000000000000002")
            }
        );
        // (1e-18)² / 2 rounds up to one unit.
        assert_eq!(
            rho("0.000000000000000001"),
            Charge::Zcdp {
                rho: Amount::from_units(1)
            }
        );
        assert!(matches!(
            Charge::Pure {
                epsilon: Amount::MAX
            }
            .convert_to(PrivacyKind::Zcdp),
            Err(Error::AmountOverflow { .. })
        ));
    }

    #[test]
    fn zcdp_to_approx_matches_bun_steinke() {
        // ρ = 0.5, δ = 1e-6: ε = 0.5 + 2·sqrt(0.5·ln(1e6)) = 5.756521769756931978...
        let charge = Charge::Zcdp { rho: amount("0.5") };
        let Charge::Approx { epsilon, delta } = charge.zcdp_to_approx(amount("0.000001")).unwrap()
        else {
            panic!("expected an (ε, δ) charge")
        };
        assert_eq!(delta, amount("0.000001"));
        assert!(epsilon >= amount("5.756521769756931979"), "{epsilon}");
        assert!(epsilon <= amount("5.756521769757050000"), "{epsilon}"); // + 2e-14 relative
        // ρ = 0.005, δ = 1e-9: ε = 0.648789807886804171...
        let charge = Charge::Zcdp {
            rho: amount("0.005"),
        };
        let Charge::Approx { epsilon, .. } = charge.zcdp_to_approx(amount("0.000000001")).unwrap()
        else {
            panic!("expected an (ε, δ) charge")
        };
        assert!(epsilon >= amount("0.648789807886804172"), "{epsilon}");
        assert!(epsilon <= amount("0.648789807886820000"), "{epsilon}"); // + 2e-14 relative
        assert!(charge.zcdp_to_approx(Amount::ZERO).is_err());
        assert!(charge.zcdp_to_approx(Amount::ONE).is_err());
        assert_eq!(
            pure("2").zcdp_to_approx(amount("0.01")).unwrap(),
            Charge::Approx {
                epsilon: amount("2"),
                delta: Amount::ZERO
            }
        );
    }

    #[test]
    fn impossible_conversions_are_errors() {
        let approx = Charge::Approx {
            epsilon: amount("1"),
            delta: amount("0.001"),
        };
        for kind in [PrivacyKind::Pure, PrivacyKind::Zcdp] {
            let error = approx.convert_to(kind).unwrap_err();
            assert!(
                matches!(error, Error::ConversionImpossible { .. }),
                "{error}"
            );
        }
        let zcdp = Charge::Zcdp { rho: amount("0.5") };
        let error = zcdp.convert_to(PrivacyKind::Approx).unwrap_err();
        assert!(error.to_string().contains("zcdp_to_approx"), "{error}");
        assert!(zcdp.convert_to(PrivacyKind::Pure).is_err());
        // (ε, 0) is pure.
        let exact = Charge::Approx {
            epsilon: amount("1"),
            delta: Amount::ZERO,
        };
        assert_eq!(exact.convert_to(PrivacyKind::Pure).unwrap(), pure("1"));
        assert_eq!(pure("1").convert_to(PrivacyKind::Approx).unwrap(), exact);
    }

    #[test]
    fn composition_sequential_and_parallel() {
        let charges = [pure("0.1"); 10];
        assert_eq!(
            Charge::sequential(&charges, PrivacyKind::Pure).unwrap(),
            pure("1")
        );
        assert_eq!(
            Charge::sequential(
                &[
                    pure("1"),
                    Charge::Zcdp {
                        rho: amount("0.25")
                    }
                ],
                PrivacyKind::Zcdp
            )
            .unwrap(),
            Charge::Zcdp {
                rho: amount("0.75")
            }
        );
        assert_eq!(
            Charge::parallel(&[pure("0.3"), pure("0.7"), pure("0.2")]).unwrap(),
            pure("0.7")
        );
        let a = Charge::Approx {
            epsilon: amount("1"),
            delta: amount("0.000001"),
        };
        let b = Charge::Approx {
            epsilon: amount("0.5"),
            delta: amount("0.00001"),
        };
        assert_eq!(
            Charge::parallel(&[a, b]).unwrap(),
            Charge::Approx {
                epsilon: amount("1"),
                delta: amount("0.00001")
            }
        );
        assert!(matches!(
            Charge::parallel(&[pure("1"), Charge::Zcdp { rho: amount("1") }]),
            Err(Error::KindMismatch { .. })
        ));
        assert!(Charge::parallel(&[]).is_err());
        assert!(
            pure("1")
                .checked_add(&Charge::Zcdp { rho: amount("1") })
                .is_err()
        );
    }

    #[test]
    fn budget_boundary_is_inclusive() {
        let mut accountant = Accountant::new(Budget::Pure {
            epsilon: amount("1"),
        });
        accountant.reserve(id("a"), pure("0.4")).unwrap();
        accountant.reserve(id("b"), pure("0.6")).unwrap();
        assert_eq!(accountant.remaining(), pure("0"));
        let error = accountant
            .reserve(
                id("c"),
                Charge::Pure {
                    epsilon: Amount::from_units(1),
                },
            )
            .unwrap_err();
        let message = error.to_string();
        assert!(matches!(error, Error::BudgetExceeded { .. }));
        assert!(
            message.contains("requested ε = 0.000000000000000001"),
            "{message}"
        );
        assert!(
            message.contains("only ε = 0 remains (budget ε = 1, committed ε = 0, reserved ε = 1)"),
            "{message}"
        );

        let mut accountant = Accountant::new(Budget::Pure {
            epsilon: amount("1"),
        });
        accountant.reserve(id("a"), pure("0.4")).unwrap();
        let error = accountant
            .reserve(
                id("b"),
                Charge::Pure {
                    epsilon: Amount::from_units(600_000_000_000_000_001),
                },
            )
            .unwrap_err();
        assert!(error.to_string().contains("remains"), "{error}");
        // Ten charges of exactly 0.1 fill a budget of exactly 1.
        let mut accountant = Accountant::new(Budget::Pure {
            epsilon: amount("1"),
        });
        for i in 0..10 {
            accountant
                .reserve(id(&format!("q{i}")), pure("0.1"))
                .unwrap();
            accountant.commit(&id(&format!("q{i}")), None).unwrap();
        }
        assert_eq!(accountant.committed(), pure("1"));
        assert!(
            accountant
                .reserve(
                    id("q10"),
                    Charge::Pure {
                        epsilon: Amount::from_units(1)
                    }
                )
                .is_err()
        );
    }

    #[test]
    fn approx_budget_checks_both_components() {
        let mut accountant = Accountant::new(Budget::Approx {
            epsilon: amount("1"),
            delta: amount("0.000001"),
        });
        accountant.reserve(id("pure"), pure("0.5")).unwrap();
        let too_much_delta = Charge::Approx {
            epsilon: amount("0.1"),
            delta: amount("0.000002"),
        };
        assert!(matches!(
            accountant.reserve(id("x"), too_much_delta),
            Err(Error::BudgetExceeded { .. })
        ));
        let fits = Charge::Approx {
            epsilon: amount("0.5"),
            delta: amount("0.000001"),
        };
        accountant.reserve(id("y"), fits).unwrap();
        assert_eq!(accountant.remaining(), Charge::zero(PrivacyKind::Approx));
        // A zCDP charge needs an explicit δ.
        assert!(matches!(
            accountant.reserve(
                id("z"),
                Charge::Zcdp {
                    rho: amount("0.001")
                }
            ),
            Err(Error::ConversionImpossible { .. })
        ));
    }

    #[test]
    fn zcdp_budget_takes_pure_charges_as_half_epsilon_squared() {
        let mut accountant = Accountant::new(Budget::Zcdp { rho: amount("0.5") });
        accountant.reserve(id("a"), pure("0.6")).unwrap(); // ρ = 0.18
        accountant
            .reserve(
                id("b"),
                Charge::Zcdp {
                    rho: amount("0.32"),
                },
            )
            .unwrap();
        assert_eq!(accountant.reserved(), Charge::Zcdp { rho: amount("0.5") });
        assert!(accountant.reserve(id("c"), pure("0.000000001")).is_err());
    }

    #[test]
    fn reserve_is_idempotent() {
        let mut accountant = Accountant::new(Budget::Pure {
            epsilon: amount("1"),
        });
        accountant.reserve(id("a"), pure("0.7")).unwrap();
        accountant.reserve(id("a"), pure("0.7")).unwrap();
        assert_eq!(accountant.reserved(), pure("0.7"));
        let error = accountant.reserve(id("a"), pure("0.2")).unwrap_err();
        assert!(
            matches!(error, Error::ReservationConflict { .. }),
            "{error}"
        );
        assert_eq!(accountant.reserved(), pure("0.7"));
        // An equal charge of another kind is a different request.
        assert!(
            accountant
                .reserve(
                    id("a"),
                    Charge::Approx {
                        epsilon: amount("0.7"),
                        delta: Amount::ZERO
                    }
                )
                .is_err()
        );
    }

    #[test]
    fn commit_and_release_lifecycle() {
        let mut accountant = Accountant::new(Budget::Pure {
            epsilon: amount("1"),
        });
        // Commit or release without a reservation.
        assert!(matches!(
            accountant.commit(&id("a"), None),
            Err(Error::UnknownQuery { .. })
        ));
        assert!(matches!(
            accountant.release(&id("a")),
            Err(Error::UnknownQuery { .. })
        ));

        accountant.reserve(id("a"), pure("0.5")).unwrap();
        // More than reserved is refused and changes nothing.
        let error = accountant.commit(&id("a"), Some(pure("0.6"))).unwrap_err();
        assert!(
            matches!(error, Error::ActualExceedsReserved { .. }),
            "{error}"
        );
        assert_eq!(accountant.reserved(), pure("0.5"));
        // Less than reserved is committed as the actual amount.
        assert_eq!(
            accountant.commit(&id("a"), Some(pure("0.3"))).unwrap(),
            pure("0.3")
        );
        assert_eq!(accountant.committed(), pure("0.3"));
        assert_eq!(accountant.reserved(), pure("0"));
        assert_eq!(accountant.remaining(), pure("0.7"));
        // Double commit, re-reserve and release after commit are refused.
        assert!(matches!(
            accountant.commit(&id("a"), None),
            Err(Error::AlreadyCommitted { .. })
        ));
        assert!(matches!(
            accountant.reserve(id("a"), pure("0.3")),
            Err(Error::AlreadyCommitted { .. })
        ));
        assert!(matches!(
            accountant.release(&id("a")),
            Err(Error::AlreadyCommitted { .. })
        ));
        assert_eq!(accountant.committed(), pure("0.3"));

        accountant.reserve(id("b"), pure("0.7")).unwrap();
        assert_eq!(accountant.release(&id("b")).unwrap(), pure("0.7"));
        assert_eq!(accountant.remaining(), pure("0.7"));
        assert!(matches!(
            accountant.release(&id("b")),
            Err(Error::UnknownQuery { .. })
        ));
        assert_eq!(accountant.committed_charge(&id("a")), Some(&pure("0.3")));
    }

    #[test]
    fn serde_round_trip_checks_the_invariant() {
        let mut accountant = Accountant::new(Budget::Approx {
            epsilon: amount("2"),
            delta: amount("0.000001"),
        });
        accountant.reserve(id("a"), pure("0.5")).unwrap();
        accountant.commit(&id("a"), None).unwrap();
        accountant
            .reserve(
                id("b"),
                Charge::Approx {
                    epsilon: amount("1"),
                    delta: amount("0.0000001"),
                },
            )
            .unwrap();
        let json = serde_json::to_string(&accountant).unwrap();
        assert!(json.contains(r#""epsilon":"0.5""#), "{json}");
        let back: Accountant = serde_json::from_str(&json).unwrap();
        assert_eq!(back, accountant);
        // A tampered committed total, or an overspent state, is refused.
        let tampered = json.replacen(
            r#""committed":{"kind":"approx","epsilon":"0.5""#,
            r#""committed":{"kind":"approx","epsilon":"0.4""#,
            1,
        );
        assert_ne!(tampered, json);
        let error = serde_json::from_str::<Accountant>(&tampered).unwrap_err();
        assert!(
            error.to_string().contains("inconsistent accountant state"),
            "{error}"
        );
        let overspent = json.replace(r#""epsilon":"2""#, r#""epsilon":"1""#);
        assert!(serde_json::from_str::<Accountant>(&overspent).is_err());
    }

    #[test]
    fn concurrent_reservations_never_overspend() {
        use std::sync::{Arc, Mutex};
        // Budget 1, charges of 0.003: exactly 333 fit; 8 threads ask for 800.
        let accountant = Arc::new(Mutex::new(Accountant::new(Budget::Pure {
            epsilon: amount("1"),
        })));
        let granted: usize = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..8)
                .map(|thread| {
                    let accountant = Arc::clone(&accountant);
                    scope.spawn(move || {
                        let mut granted = 0;
                        for i in 0..100 {
                            let query = QueryId::new(format!("t{thread}-q{i}"));
                            let mut guard = accountant.lock().unwrap();
                            if guard.reserve(query.clone(), pure("0.003")).is_ok() {
                                granted += 1;
                                // Commit half of them at once, the rest stay reserved.
                                if i % 2 == 0 {
                                    guard.commit(&query, None).unwrap();
                                }
                            }
                            let total = guard.committed().checked_add(&guard.reserved()).unwrap();
                            assert!(total.is_within(&guard.budget().as_charge()));
                        }
                        granted
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).sum()
        });
        assert_eq!(granted, 333);
        let accountant = accountant.lock().unwrap();
        let total = accountant
            .committed()
            .checked_add(&accountant.reserved())
            .unwrap();
        assert_eq!(total, pure("0.999"));
    }
}

#[cfg(test)]
mod props {
    use super::*;
    use proptest::prelude::*;

    #[derive(Clone, Debug)]
    enum Op {
        Reserve { id: u8, charge: Charge },
        Commit { id: u8, fraction: Option<u8> },
        Release { id: u8 },
    }

    fn units() -> impl Strategy<Value = Amount> {
        // Mostly small values around the budget's scale, sometimes exact edges.
        prop_oneof![
            (0u128..400_000_000_000_000_000).prop_map(Amount::from_units),
            Just(Amount::ZERO),
            Just(Amount::from_units(1)),
            Just("0.25".parse().unwrap()),
        ]
    }

    fn charge(kind: PrivacyKind) -> BoxedStrategy<Charge> {
        let pure = units().prop_map(|epsilon| Charge::Pure { epsilon });
        match kind {
            PrivacyKind::Pure => pure.boxed(),
            PrivacyKind::Approx => prop_oneof![
                pure,
                (units(), 0u128..400_000_000_000).prop_map(|(epsilon, delta)| Charge::Approx {
                    epsilon,
                    delta: Amount::from_units(delta),
                }),
            ]
            .boxed(),
            PrivacyKind::Zcdp => {
                prop_oneof![pure, units().prop_map(|rho| Charge::Zcdp { rho }),].boxed()
            }
        }
    }

    fn scenario() -> impl Strategy<Value = (Budget, Vec<Op>)> {
        prop_oneof![
            Just(Budget::Pure { epsilon: "1".parse().unwrap() }),
            Just(Budget::Approx { epsilon: "1".parse().unwrap(), delta: "0.000001".parse().unwrap() }),
            Just(Budget::Zcdp { rho: "0.5".parse().unwrap() }),
        ]
        .prop_flat_map(|budget| {
            let op = prop_oneof![
                3 => (0u8..12, charge(budget.kind())).prop_map(|(id, charge)| Op::Reserve { id, charge }),
                2 => (0u8..12, proptest::option::of(0u8..=100)).prop_map(|(id, fraction)| Op::Commit { id, fraction }),
                1 => (0u8..12).prop_map(|id| Op::Release { id }),
            ];
            (Just(budget), proptest::collection::vec(op, 1..80))
        })
    }

    /// `charge` scaled by `fraction`/100, component-wise, rounded down.
    fn scaled(charge: Charge, fraction: u8) -> Charge {
        let f = |a: Amount| Amount::from_units(a.units() / 100 * u128::from(fraction));
        match charge {
            Charge::Pure { epsilon } => Charge::Pure {
                epsilon: f(epsilon),
            },
            Charge::Approx { epsilon, delta } => Charge::Approx {
                epsilon: f(epsilon),
                delta: f(delta),
            },
            Charge::Zcdp { rho } => Charge::Zcdp { rho: f(rho) },
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn invariant_holds_after_every_operation((budget, ops) in scenario()) {
            let kind = budget.kind();
            let mut accountant = Accountant::new(budget);
            // The model: committed charges in order, open reservations.
            let mut committed_log: Vec<Charge> = Vec::new();
            let mut open: BTreeMap<u8, Charge> = BTreeMap::new();
            let mut done: std::collections::BTreeSet<u8> = Default::default();
            for op in ops {
                match op {
                    Op::Reserve { id, charge } => {
                        let qid = QueryId::new(id.to_string());
                        let result = accountant.reserve(qid, charge);
                        if result.is_ok() && !open.contains_key(&id) {
                            open.insert(id, charge);
                        }
                        if done.contains(&id) {
                            prop_assert!(matches!(result, Err(Error::AlreadyCommitted { .. })), "{:?}", result);
                        }
                    }
                    Op::Commit { id, fraction } => {
                        let qid = QueryId::new(id.to_string());
                        let actual = fraction.and_then(|f| open.get(&id).map(|c| scaled(c.convert_to(kind).unwrap(), f)));
                        match accountant.commit(&qid, actual) {
                            Ok(debit) => {
                                let reserved = open.remove(&id).unwrap().convert_to(kind).unwrap();
                                prop_assert!(debit.is_within(&reserved));
                                if let Some(actual) = actual {
                                    prop_assert_eq!(debit, actual);
                                }
                                committed_log.push(debit);
                                done.insert(id);
                            }
                            Err(_) => prop_assert!(!open.contains_key(&id)),
                        }
                    }
                    Op::Release { id } => {
                        let qid = QueryId::new(id.to_string());
                        let result = accountant.release(&qid);
                        prop_assert_eq!(result.is_ok(), open.remove(&id).is_some());
                    }
                }
                let committed = accountant.committed();
                let reserved = accountant.reserved();
                let total = committed.checked_add(&reserved).unwrap();
                prop_assert!(total.is_within(&budget.as_charge()), "{} > {}", total, budget);
                prop_assert_eq!(committed, Charge::sequential(&committed_log, kind).unwrap());
                let open_charges: Vec<Charge> = open.values().copied().collect();
                prop_assert_eq!(reserved, Charge::sequential(&open_charges, kind).unwrap());
                prop_assert_eq!(
                    accountant.remaining(),
                    budget.as_charge().checked_sub(&total).unwrap()
                );
            }
        }
    }
}
