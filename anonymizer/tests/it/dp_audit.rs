//! Empirical privacy audit of the pure-ε mechanisms.
//!
//! For a mechanism `M` claiming ε-DP, any event `S` and neighbouring
//! datasets `D`, `D'` satisfy `P[M(D') ∈ S] ≤ e^ε · P[M(D) ∈ S]`. The audit
//! samples `M(D)` and `M(D')` many times, bounds both probabilities with
//! Clopper–Pearson intervals and reports the lower confidence bound
//!
//! ```text
//! ε_lower = ln( P_lo[M(D') ∈ S] / P_hi[M(D) ∈ S] ),
//! ```
//!
//! which exceeds the true privacy loss of `S` only with probability at most
//! `2·ALPHA_BOUND`. Here `D` and `D'` have true answers `t` and
//! `t + Δ` (the sensitivity) and `S = {output ≥ t + Δ}`: the threshold is
//! fixed in advance at the neighbour's boundary (not fitted to the samples).
//! For discrete Laplace noise every right tail past the boundary has the
//! same likelihood ratio, `e^ε` exactly, so this event is tight.
//!
//! False failures: each honest audit (`count`, `sum_i64`) fails only if one
//! of its two bounds fails: 2 audits × 2 bounds × `ALPHA_BOUND` = 4e-7 < 1e-6.
//! Power: a mechanism with half the noise scale has true loss 2ε on `S`;
//! with 200 000 samples per side the bound is within about 0.03 of it, so
//! the broken audits report ε_lower ≈ 1.95–1.97 > 1 (missing it would need a
//! deviation of dozens of standard errors).

use std::time::Instant;

use super::clopper_pearson::{cp_lower, cp_upper};
use cohort_anonymizer::dp::{self, Privacy};
use opendp::core::Measurement;
use opendp::domains::AtomDomain;
use opendp::measurements::make_laplace;
use opendp::measures::MaxDivergence;
use opendp::metrics::AbsoluteDistance;

/// Level of each one-sided Clopper–Pearson bound.
const ALPHA_BOUND: f64 = 1e-7;

/// Samples per neighbouring dataset.
const SAMPLES: u64 = 200_000;

/// The audit of one mechanism: `mechanism(true_answer)` releases a noisy
/// answer; `D` has true answer `truth`, `D'` has `truth + sensitivity`.
/// Returns the lower confidence bound on the privacy loss of
/// `S = {output ≥ truth + sensitivity}`. The samples of both datasets are
/// drawn on two threads.
fn audit_epsilon_lower(
    name: &str,
    truth: i64,
    sensitivity: i64,
    mechanism: impl Fn(i64) -> i64 + Sync,
) -> f64 {
    let started = Instant::now();
    let threshold = truth + sensitivity;
    let hits = |answer: i64| {
        (0..SAMPLES)
            .filter(|_| mechanism(answer) >= threshold)
            .count() as u64
    };
    let (in_d, in_d_prime) = std::thread::scope(|scope| {
        let d = scope.spawn(|| hits(truth));
        let d_prime = hits(truth + sensitivity);
        (d.join().expect("sampling thread panicked"), d_prime)
    });
    let p_d_high = cp_upper(in_d, SAMPLES, ALPHA_BOUND);
    let p_d_prime_low = cp_lower(in_d_prime, SAMPLES, ALPHA_BOUND);
    let epsilon_lower = (p_d_prime_low / p_d_high).ln();
    eprintln!(
        "{name}: P[M(D) ∈ S] = {in_d}/{SAMPLES}, P[M(D') ∈ S] = {in_d_prime}/{SAMPLES}, \
         ε_lower = {epsilon_lower:.4} ({:.2?})",
        started.elapsed()
    );
    epsilon_lower
}

/// OpenDP's discrete Laplace on `i64` at `scale`, as the mechanisms build it
/// (OpenDP measurements are neither `Send` nor `Sync`: each sample builds its
/// own, as every `dp` release does).
fn opendp_laplace(
    scale: f64,
) -> Measurement<AtomDomain<i64>, AbsoluteDistance<u128>, MaxDivergence, i64> {
    make_laplace(
        AtomDomain::<i64>::default(),
        AbsoluteDistance::<u128>::default(),
        scale,
        None,
    )
    .expect("OpenDP builds the discrete Laplace mechanism")
}

const EPSILON: f64 = 1.0;

#[test]
fn count_passes_the_audit_and_half_noise_fails_it() {
    let privacy = Privacy::Pure { epsilon: EPSILON };
    let honest = audit_epsilon_lower("count ε=1", 100, 1, |answer| {
        *dp::count(answer, 1, privacy).expect("count").value()
    });
    assert!(
        honest <= EPSILON,
        "count leaks more than claimed: ε_lower = {honest}"
    );

    // The same release with half the noise scale, still claiming ε = 1.
    let scale = dp::count(100, 1, privacy).expect("count").scale();
    let leaky = audit_epsilon_lower("count, half noise", 100, 1, |answer| {
        opendp_laplace(scale / 2.0).invoke(&answer).expect("sample")
    });
    assert!(
        leaky > EPSILON,
        "the audit missed a mechanism with half the noise: ε_lower = {leaky}"
    );
}

#[test]
fn sum_passes_the_audit_and_half_noise_fails_it() {
    // Values clamped to [−10, 10], one row per patient: sensitivity U = 10.
    let (lower, upper, sensitivity) = (-10, 10, 10);
    let privacy = Privacy::Pure { epsilon: EPSILON };
    let honest = audit_epsilon_lower("sum_i64 ε=1 U=10", 0, sensitivity, |answer| {
        *dp::sum_i64(answer, lower, upper, 1, privacy)
            .expect("sum")
            .value()
    });
    assert!(
        honest <= EPSILON,
        "sum_i64 leaks more than claimed: ε_lower = {honest}"
    );

    let scale = dp::sum_i64(0, lower, upper, 1, privacy)
        .expect("sum")
        .scale();
    assert!((scale - 10.0).abs() < 1e-12);
    let leaky = audit_epsilon_lower("sum_i64, half noise", 0, sensitivity, |answer| {
        opendp_laplace(scale / 2.0).invoke(&answer).expect("sample")
    });
    assert!(
        leaky > EPSILON,
        "the audit missed a mechanism with half the noise: ε_lower = {leaky}"
    );
}
