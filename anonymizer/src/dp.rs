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
//!
//! The parts: [`Privacy`] and its exact target (`privacy`), the
//! [`Release`] a mechanism returns (`release`), parameter checks
//! (`checks`), OpenDP's samplers and their calibration (`noise`), the
//! reported intervals (`accuracy`), the mechanisms called on a statistic
//! (`mechanisms`) and those calibrated while planning (`planned`).
//!
//! [`Charge`]: crate::accountant::Charge
//! [`Amount::from_f64_display`]: crate::accountant::Amount::from_f64_display

mod accuracy;
mod checks;
mod mechanisms;
mod noise;
mod planned;
mod privacy;
mod release;

pub use mechanisms::{count, histogram, mean, quantile, select_keys, sum_f64, sum_i64};
pub use planned::{IntegerNoise, KeyThreshold, QuantileChoice, Sensitivity};
pub use privacy::Privacy;
pub use release::{KeySelection, MechanismKind, Release};

/// Clopper–Pearson bounds, shared with the integration tests' DP audit.
#[cfg(test)]
#[path = "../tests/it/clopper_pearson.rs"]
mod clopper_pearson;

#[cfg(test)]
mod tests;
