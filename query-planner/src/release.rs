//! What each aggregate of a query releases: its mechanism, its noise
//! (calibrated while planning), its expected error, and how its noisy value
//! is computed from the exact, contribution-bounded statistics.
//!
//! Sums are computed in fixed point (`DECIMAL(38, s)`, then saturated to
//! `i64` units of 10⁻ˢ) and released with integer noise, so the released
//! value is not exposed to the floating-point sum attacks on DP
//! (Casacuberta et al., CCS 2022): the exact sum of clamped values changes
//! by at most the sensitivity when one patient is added or removed.

use std::fmt;

use cohort_anonymizer::accountant::{Amount, Charge};
use cohort_anonymizer::dp::{IntegerNoise, MechanismKind, QuantileChoice, Sensitivity};
use serde::Serialize;

use crate::error::{Error, Result};
use crate::policy::Bounds;

/// The sums of one row stay below this many fixed-point units, so a sum of
/// millions of rows fits an `i64` (precision is lowered for wide bounds).
const MAX_UNITS_PER_ROW: f64 = 1e12;

/// The statistic an aggregate releases.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "statistic", rename_all = "snake_case")]
pub enum Statistic {
    /// `COUNT(*)`, `COUNT(x)` or `COUNT(DISTINCT x)`.
    Count {
        /// How much one patient can add to one group (rows, or 1 for distinct patients).
        per_group: u32,
    },
    /// `SUM(x)` of clamped values.
    Sum {
        /// The clamping bounds.
        bounds: Bounds,
        /// Fixed-point decimals.
        decimals: u32,
    },
    /// `AVG(x)`: the bounds' midpoint plus a noisy sum of the values'
    /// distances from it over a noisy count (centring halves the sum's
    /// sensitivity when the bounds are far from zero).
    Mean {
        /// The clamping bounds.
        bounds: Bounds,
        /// Fixed-point decimals of the sum.
        decimals: u32,
    },
    /// `VARIANCE`/`STDDEV`: noisy count, sum and sum of squares of centred values.
    Variance {
        /// The clamping bounds.
        bounds: Bounds,
        /// Fixed-point decimals of the sum.
        decimals: u32,
        /// Fixed-point decimals of the sum of squares.
        square_decimals: u32,
        /// Divide by n − 1 (`VAR_SAMP`) rather than n.
        sample: bool,
        /// Release the square root (`STDDEV`).
        root: bool,
    },
    /// `MEDIAN(x)` or `PERCENTILE_CONT(x, alpha)`, chosen among candidates.
    Quantile {
        /// The clamping bounds.
        bounds: Bounds,
        /// 0.5 for the median.
        alpha: f64,
        /// The public candidates.
        candidates: Vec<f64>,
    },
}

impl Statistic {
    /// The clamping bounds, if the statistic clamps.
    pub fn bounds(&self) -> Option<Bounds> {
        match self {
            Statistic::Count { .. } => None,
            Statistic::Sum { bounds, .. }
            | Statistic::Mean { bounds, .. }
            | Statistic::Variance { bounds, .. }
            | Statistic::Quantile { bounds, .. } => Some(*bounds),
        }
    }

    /// Fixed-point decimals that keep one row of `bounds` below
    /// [`MAX_UNITS_PER_ROW`] units, at most `precision`.
    pub(crate) fn decimals_for(magnitude: f64, precision: u32) -> u32 {
        let mut decimals = precision;
        while decimals > 0 && magnitude * 10f64.powi(decimals as i32) > MAX_UNITS_PER_ROW {
            decimals -= 1;
        }
        decimals
    }
}

/// The noise of one aggregate, calibrated for its share of the query's cost.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "mechanism", rename_all = "snake_case")]
pub enum Noise {
    /// Counts and sums: one integer noise.
    Integer {
        /// The noise.
        noise: IntegerNoise,
    },
    /// A mean: noise on the sum and on the count.
    Mean {
        /// Noise on the fixed-point sum.
        sum: IntegerNoise,
        /// Noise on the count.
        count: IntegerNoise,
    },
    /// A variance: noise on the count, the sum and the sum of squares.
    Variance {
        /// Noise on the count.
        count: IntegerNoise,
        /// Noise on the fixed-point sum of centred values.
        sum: IntegerNoise,
        /// Noise on the fixed-point sum of squared centred values.
        squares: IntegerNoise,
    },
    /// A quantile per group, each at the share divided by the groups a patient touches.
    Quantile {
        /// The calibrated choice.
        choice: QuantileChoice,
    },
}

/// How much one row, or one patient in one group, can move an exact statistic.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Influence {
    /// Each row moves it by at most this much (in its units): a patient's
    /// at most `max_rows` rows in a group move it `max_rows` times as much.
    PerRow(u128),
    /// A patient moves it by at most this much in each group, however many
    /// rows they have (a count of distinct patients).
    PerGroup(u128),
}

impl Influence {
    /// The most one patient moves the statistic in one group.
    fn per_group(self, rows: u32) -> Result<u128> {
        match self {
            Influence::PerRow(units) => units
                .checked_mul(u128::from(rows))
                .ok_or_else(|| Error::Options("a statistic's sensitivity overflows".into())),
            Influence::PerGroup(units) => Ok(units),
        }
    }
}

/// Scale of `decimals` fixed-point units.
pub(crate) fn unit_scale(decimals: u32) -> f64 {
    10f64.powi(decimals as i32)
}

/// `charge` split into `parts` charges of its kind whose units add up to it exactly.
pub(crate) fn split_charge(charge: Charge, parts: usize) -> Result<Vec<Charge>> {
    split_weighted(charge, &vec![1; parts])
}

/// `charge` split in proportion to `weights`, exactly (the last part takes
/// the remainder of the integer division).
pub(crate) fn split_weighted(charge: Charge, weights: &[u32]) -> Result<Vec<Charge>> {
    let total: u128 = weights.iter().map(|&w| u128::from(w)).sum();
    if total == 0 {
        return Err(Error::Options("the split weights add up to zero".into()));
    }
    let parts = |amount: Amount| -> Result<Vec<Amount>> {
        let mut out = Vec::with_capacity(weights.len());
        let mut left = amount.units();
        for (i, &weight) in weights.iter().enumerate() {
            let share = if i + 1 == weights.len() {
                left
            } else {
                amount.units() / total * u128::from(weight)
                    + amount.units() % total * u128::from(weight) / total
            };
            if share == 0 && weight > 0 {
                return Err(Error::Options(format!(
                    "{amount} is too small to split into {} parts",
                    weights.len()
                )));
            }
            left -= share;
            out.push(Amount::from_units(share));
        }
        Ok(out)
    };
    Ok(match charge {
        Charge::Pure { epsilon } => parts(epsilon)?
            .into_iter()
            .map(|epsilon| Charge::Pure { epsilon })
            .collect(),
        Charge::Zcdp { rho } => parts(rho)?
            .into_iter()
            .map(|rho| Charge::Zcdp { rho })
            .collect(),
        Charge::Approx { epsilon, delta } => parts(epsilon)?
            .into_iter()
            .zip(parts(delta)?)
            .map(|(epsilon, delta)| Charge::Approx { epsilon, delta })
            .collect(),
    })
}

/// The pure ε each of `groups` quantile choices may spend so that together
/// they stay within `share` (pure ε, or ρ via ρ = g·ε²/2).
fn quantile_epsilon(share: Charge, groups: u32) -> Result<Amount> {
    match share {
        Charge::Pure { epsilon } => Ok(Amount::from_units(epsilon.units() / u128::from(groups))),
        Charge::Zcdp { rho } => {
            // ε = √(2ρ/g), rounded down, then checked exactly.
            let guess = (2.0 * rho.to_f64() / f64::from(groups)).sqrt();
            let mut epsilon = Amount::from_units((guess * 1e18 * (1.0 - 1e-12)).floor() as u128);
            loop {
                let Charge::Zcdp { rho: each } = Charge::Pure { epsilon }
                    .convert_to(cohort_anonymizer::accountant::PrivacyKind::Zcdp)?
                else {
                    unreachable!("a conversion to zCDP gives a zCDP charge")
                };
                if each.units().saturating_mul(u128::from(groups)) <= rho.units() {
                    return Ok(epsilon);
                }
                epsilon = Amount::from_units(epsilon.units() - epsilon.units() / 1_000_000 - 1);
            }
        }
        Charge::Approx { .. } => Err(Error::Options("a quantile is paid in pure ε or ρ".into())),
    }
}

/// Calibrates the noise of `statistic`, whose exact statistics move by
/// `influence`, for `share`, where a patient adds to at most `groups`
/// groups and `rows` rows in each.
pub(crate) fn calibrate(
    statistic: &Statistic,
    influence: &[Influence],
    share: Charge,
    groups: u32,
    rows: u32,
) -> Result<Noise> {
    let noise = |index: usize, charge: Charge| -> Result<IntegerNoise> {
        let influence = influence
            .get(index)
            .ok_or_else(|| Error::Options("internal: a statistic without its bound".into()))?;
        Ok(IntegerNoise::calibrate(
            Sensitivity::grouped(groups, influence.per_group(rows)?)?,
            charge,
        )?)
    };
    Ok(match statistic {
        Statistic::Count { .. } | Statistic::Sum { .. } => Noise::Integer {
            noise: noise(0, share)?,
        },
        Statistic::Mean { .. } => {
            let parts = split_charge(share, 2)?;
            Noise::Mean {
                sum: noise(0, parts[0])?,
                count: noise(1, parts[1])?,
            }
        }
        Statistic::Variance { .. } => {
            let parts = split_charge(share, 3)?;
            Noise::Variance {
                count: noise(0, parts[0])?,
                sum: noise(1, parts[1])?,
                squares: noise(2, parts[2])?,
            }
        }
        Statistic::Quantile {
            alpha, candidates, ..
        } => Noise::Quantile {
            choice: QuantileChoice::calibrate(
                candidates.clone(),
                *alpha,
                rows,
                quantile_epsilon(share, groups)?,
            )?,
        },
    })
}

/// The expected error of a released value, known before the data is seen.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ErrorBound {
    /// With probability 0.95 the release is within `± half_width` of the truth.
    Absolute {
        /// The half-width.
        half_width: f64,
    },
    /// A ratio to a noisy count n̂: within `± numerator / n̂` (at most `cap`).
    OverCount {
        /// Numerator of the half-width.
        numerator: f64,
        /// No error exceeds this (the bounds' width).
        cap: f64,
    },
    /// A standard deviation: within `± √(numerator / n̂)` (at most `cap`).
    RootOverCount {
        /// Numerator under the root.
        numerator: f64,
        /// No error exceeds this.
        cap: f64,
    },
    /// A quantile: with probability 0.95 the chosen candidate's score is
    /// within `score` of the best candidate's (in rows, see `dp::quantile`).
    Rank {
        /// The score bound.
        score: f64,
    },
}

impl ErrorBound {
    /// The half-width for a noisy count of `count` (the absolute ones ignore it).
    pub fn at_count(&self, count: f64) -> f64 {
        match *self {
            ErrorBound::Absolute { half_width } => half_width,
            ErrorBound::OverCount { numerator, cap } => {
                if count >= 1.0 {
                    (numerator / count).min(cap)
                } else {
                    cap
                }
            }
            ErrorBound::RootOverCount { numerator, cap } => {
                if count >= 1.0 {
                    (numerator / count).sqrt().min(cap)
                } else {
                    cap
                }
            }
            ErrorBound::Rank { score } => score,
        }
    }
}

impl fmt::Display for ErrorBound {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ErrorBound::Absolute { half_width } => write!(f, "±{}", round_sig(*half_width)),
            ErrorBound::OverCount { numerator, .. } => write!(f, "±{}/n", round_sig(*numerator)),
            ErrorBound::RootOverCount { numerator, .. } => {
                write!(f, "±√({}/n)", round_sig(*numerator))
            }
            ErrorBound::Rank { score } => write!(f, "rank ±{} rows", round_sig(2.0 * score)),
        }
    }
}

/// `x` with 4 significant digits, for display.
pub(crate) fn round_sig(x: f64) -> String {
    if x == 0.0 || !x.is_finite() {
        return format!("{x}");
    }
    let digits = 4 - x.abs().log10().floor() as i32 - 1;
    if digits <= 0 {
        format!("{:.0}", x)
    } else {
        let text = format!("{:.*}", digits as usize, x);
        text.trim_end_matches('0').trim_end_matches('.').to_string()
    }
}

impl Noise {
    /// Mechanisms, in words.
    pub fn mechanism(&self) -> String {
        let name = |noise: &IntegerNoise| match noise.mechanism() {
            MechanismKind::DiscreteGaussian => "discrete Gaussian",
            _ => "discrete Laplace",
        };
        match self {
            Noise::Integer { noise } => name(noise).to_string(),
            Noise::Mean { sum, .. } => format!("{} (sum, count)", name(sum)),
            Noise::Variance { sum, .. } => format!("{} (count, sum, squares)", name(sum)),
            Noise::Quantile { .. } => "exponential (quantile score)".to_string(),
        }
    }

    /// The noise scales in the statistic's own units (sums divided back to values).
    pub fn scales(&self, statistic: &Statistic) -> Vec<f64> {
        match (self, statistic) {
            (Noise::Integer { noise }, Statistic::Sum { decimals, .. }) => {
                vec![noise.scale() / unit_scale(*decimals)]
            }
            (Noise::Integer { noise }, _) => vec![noise.scale()],
            (Noise::Mean { sum, count }, Statistic::Mean { decimals, .. }) => {
                vec![sum.scale() / unit_scale(*decimals), count.scale()]
            }
            (
                Noise::Variance {
                    count,
                    sum,
                    squares,
                },
                Statistic::Variance {
                    decimals,
                    square_decimals,
                    ..
                },
            ) => vec![
                count.scale(),
                sum.scale() / unit_scale(*decimals),
                squares.scale() / unit_scale(*square_decimals),
            ],
            (Noise::Quantile { choice }, _) => vec![choice.scale()],
            _ => vec![],
        }
    }

    /// The expected error of the release (95%).
    pub fn error_bound(&self, statistic: &Statistic) -> Result<ErrorBound> {
        Ok(match (self, statistic) {
            (Noise::Integer { noise }, Statistic::Sum { decimals, .. }) => ErrorBound::Absolute {
                half_width: noise.accuracy(0.05)? / unit_scale(*decimals),
            },
            (Noise::Integer { noise }, _) => ErrorBound::Absolute {
                half_width: noise.accuracy(0.05)?,
            },
            // Both noises within their 97.5% intervals (union bound): the
            // centred sum S (|S/C| ≤ h, half the bounds' width) gives
            // |S̃/C̃ − S/C| ≤ (a_S + h·a_C)/C̃, as `dp::mean` with B = h.
            (Noise::Mean { sum, count }, Statistic::Mean { bounds, decimals }) => {
                let a_sum = sum.accuracy(0.025)? / unit_scale(*decimals);
                let a_count = count.accuracy(0.025)?;
                let half = (bounds.upper - bounds.lower) / 2.0;
                ErrorBound::OverCount {
                    numerator: (a_sum + half * a_count) * (1.0 + 1e-12),
                    cap: bounds.upper - bounds.lower,
                }
            }
            // Centred values lie in [−h, h]. With all three noises within
            // their (1 − 0.05/3) intervals, E[y²] is off by at most
            // (a₂ + h²·a_C)/C̃ and the squared mean by at most
            // 2h·(a₁ + h·a_C)/C̃; the variance by their sum.
            (
                Noise::Variance {
                    count,
                    sum,
                    squares,
                },
                Statistic::Variance {
                    bounds,
                    decimals,
                    square_decimals,
                    root,
                    sample,
                },
            ) => {
                let alpha = 0.05 / 3.0;
                let h = (bounds.upper - bounds.lower) / 2.0;
                let a_count = count.accuracy(alpha)?;
                let a_sum = sum.accuracy(alpha)? / unit_scale(*decimals);
                let a_squares = squares.accuracy(alpha)? / unit_scale(*square_decimals);
                let numerator = (a_squares + h * h * a_count) + 2.0 * h * (a_sum + h * a_count);
                let cap = if *sample { 2.0 * h * h } else { h * h };
                if *root {
                    // |√a − √b| ≤ √|a − b|.
                    ErrorBound::RootOverCount {
                        numerator: numerator * (1.0 + 1e-12),
                        cap: cap.sqrt(),
                    }
                } else {
                    ErrorBound::OverCount {
                        numerator: numerator * (1.0 + 1e-12),
                        cap,
                    }
                }
            }
            (Noise::Quantile { choice }, _) => ErrorBound::Rank {
                score: choice.accuracy_95(),
            },
            _ => {
                return Err(Error::Options(
                    "internal: noise does not match its statistic".into(),
                ));
            }
        })
    }
}
