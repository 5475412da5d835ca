//! Exact privacy amounts: 18-decimal fixed point, parsed and printed exactly.
//!
//! Everything the accountant adds up is an [`Amount`]; this module owns the
//! integer representation, its decimal text and the one place floating point
//! enters (rounded up), so no other part of the accountant touches the units.

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
    pub(super) fn add(self, other: Amount, operation: &'static str) -> Result<Amount> {
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
pub(super) fn mul_div_ceil(a: u128, b: u128, divisor: u128) -> Option<u128> {
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
