//! Unit and statistical tests. Every statistical assertion is a one-sided
//! Clopper–Pearson (exact binomial) bound at level [`ALPHA_TEST`]; this
//! module makes 30 such assertions (3 × 6 in `check_integer_noise`, 6 for
//! float sums, 4 for mean and histogram, 2 for the quantile) plus a few
//! events of probability below 1e-9 each, so a correct implementation
//! fails a run with probability below 30·2e-8 + 5e-9 < 1e-6.

use std::collections::HashMap;

use super::accuracy::{ALPHA, integer_accuracy};
use super::noise::{mul_ceil, u128_to_f64_ceil};
use super::*;
use crate::accountant::{Amount, Charge, PrivacyKind};
use crate::error::{Error, Result};
use opendp::core::Measurement;
use opendp::domains::AtomDomain;
use opendp::domains::MapDomain;
use opendp::measurements::make_laplace;
use opendp::measurements::make_laplace_threshold;
use opendp::measures::Approximate;
use opendp::measures::MaxDivergence;
use opendp::metrics::AbsoluteDistance;
use opendp::metrics::L01InfDistance;

/// Level of each one-sided statistical assertion.
const ALPHA_TEST: f64 = 2e-8;

use super::clopper_pearson::{cp_lower, cp_upper};

/// Asserts that `hits` out of `n` is consistent with probability `p`
/// (two one-sided bounds).
fn assert_probability(what: &str, hits: u64, n: u64, p: f64) {
    let (low, high) = (cp_lower(hits, n, ALPHA_TEST), cp_upper(hits, n, ALPHA_TEST));
    assert!(
        low <= p && p <= high,
        "{what}: {hits}/{n}, bounds [{low}, {high}] exclude {p}"
    );
}

/// Asserts the reported 95% interval covers at least 95% (one bound) and
/// at most `max_coverage` (one bound) of the `n` releases.
fn assert_coverage(what: &str, inside: u64, n: u64, max_coverage: f64) {
    let high = cp_upper(inside, n, ALPHA_TEST);
    assert!(
        high >= 0.95,
        "{what}: coverage {inside}/{n}, upper bound {high} < 0.95"
    );
    let low = cp_lower(inside, n, ALPHA_TEST);
    assert!(
        low <= max_coverage,
        "{what}: coverage {inside}/{n}, lower bound {low} > {max_coverage}"
    );
}

fn pure(epsilon: f64) -> Privacy {
    Privacy::Pure { epsilon }
}

fn amount(text: &str) -> Amount {
    text.parse().unwrap()
}

#[test]
fn clopper_pearson_matches_known_values() {
    // 0 successes in 10 at one-sided 5%: 1 − 0.05^(1/10) = 0.2588656...
    assert!((cp_upper(0, 10, 0.05) - 0.258_865_6).abs() < 1e-6);
    assert!((cp_lower(10, 10, 0.05) - 0.741_134_4).abs() < 1e-6);
    // 50/100 at one-sided 2.5% (R: binom.test(50, 100)$conf.int = 0.3983, 0.6017).
    assert!((cp_lower(50, 100, 0.025) - 0.398_321_1).abs() < 1e-6);
    assert!((cp_upper(50, 100, 0.025) - 0.601_678_9).abs() < 1e-6);
}

#[test]
fn parameters_are_validated() {
    let bad = |result: Result<Release<i64>>| {
        let error = result.unwrap_err();
        assert!(matches!(error, Error::InvalidParameter { .. }), "{error}");
        error.to_string()
    };
    for epsilon in [0.0, -1.0, f64::NAN, f64::INFINITY] {
        let message = bad(count(10, 1, pure(epsilon)));
        assert!(message.contains("epsilon"), "{message}");
    }
    assert!(bad(count(10, 1, Privacy::Zcdp { rho: 0.0 })).contains("rho"));
    assert!(bad(count(-1, 1, pure(1.0))).contains("negative"));
    assert!(bad(count(10, 0, pure(1.0))).contains("at least 1"));
    assert!(bad(sum_i64(0, 5, -5, 1, pure(1.0))).contains("lower ≤ upper"));
    assert!(bad(sum_i64(0, 0, 0, 1, pure(1.0))).contains("constant"));
    assert!(sum_f64(0.0, f64::NAN, 1.0, 1, pure(1.0)).is_err());
    assert!(sum_f64(f64::INFINITY, 0.0, 1.0, 1, pure(1.0)).is_err());
    assert!(sum_f64(0.0, 0.0, f64::MAX, 2, pure(1.0)).is_err());
    assert!(mean(0.0, 1, 0.0, 1.0, 1, pure(1e-18)).is_err());
    assert!(histogram(&[], 1, 1, pure(1.0)).is_err());
    assert!(histogram(&[1, -1], 1, 1, pure(1.0)).is_err());
    let keys = HashMap::from([("a".to_string(), 3)]);
    for delta in [0.0, 1.0, f64::NAN, -0.1] {
        assert!(select_keys(keys.clone(), 1, 1, 1.0, delta).is_err());
    }
    assert!(select_keys(HashMap::from([("a".to_string(), -3)]), 1, 1, 1.0, 1e-6).is_err());
    assert!(quantile(&[1.0], &[], 0.5, 1, 1.0).is_err());
    assert!(quantile(&[1.0], &[2.0, 1.0], 0.5, 1, 1.0).is_err());
    assert!(quantile(&[1.0], &[1.0, 1.0], 0.5, 1, 1.0).is_err());
    assert!(quantile(&[1.0], &[1.0, f64::INFINITY], 0.5, 1, 1.0).is_err());
    assert!(quantile(&[f64::NAN], &[1.0], 0.5, 1, 1.0).is_err());
    assert!(quantile(&[1.0], &[1.0], 1.5, 1, 1.0).is_err());
    assert!(quantile(&[1.0], &[1.0], 0.5, 1, 0.0).is_err());
}

#[test]
fn charges_are_the_decimals_written_and_certified_by_opendp() {
    let release = count(100, 1, pure(0.1)).unwrap();
    assert_eq!(
        release.charge(),
        Charge::Pure {
            epsilon: amount("0.1")
        }
    );
    assert_eq!(release.mechanism(), MechanismKind::DiscreteLaplace);
    assert!(
        (release.scale() - 10.0).abs() < 1e-12,
        "{}",
        release.scale()
    );
    // OpenDP's own map at the chosen scale certifies at most the charge.
    let m: Measurement<_, _, MaxDivergence, i64> = make_laplace(
        AtomDomain::<i64>::default(),
        AbsoluteDistance::<u128>::default(),
        release.scale(),
        None,
    )
    .unwrap();
    assert!(Amount::from_f64_ceil(m.map(&1).unwrap()).unwrap() <= amount("0.1"));

    let release = sum_i64(0, -3, 7, 2, Privacy::Zcdp { rho: 0.5 }).unwrap();
    assert_eq!(release.charge(), Charge::Zcdp { rho: amount("0.5") });
    assert_eq!(release.mechanism(), MechanismKind::DiscreteGaussian);
    assert!(
        (release.scale() - 14.0).abs() < 1e-12,
        "{}",
        release.scale()
    ); // Δ = 14, σ = Δ/√1

    let release = sum_f64(0.0, -0.1, 0.3, 3, pure(0.5)).unwrap();
    assert_eq!(
        release.charge(),
        Charge::Pure {
            epsilon: amount("0.5")
        }
    );
    assert!((release.scale() - 1.8).abs() < 1e-12, "{}", release.scale());

    let release = mean(10.0, 10, 0.0, 2.0, 1, pure(1.0)).unwrap();
    assert_eq!(
        release.charge(),
        Charge::Pure {
            epsilon: amount("1")
        }
    );
    assert!((release.scale() - 4.0).abs() < 1e-12, "{}", release.scale()); // sum at ε/2
    assert!((0.0..=2.0).contains(release.value()));
    assert!(release.accuracy_95() <= 2.0);

    let release = histogram(&[5, 0, 7], 2, 3, pure(1.0)).unwrap();
    assert_eq!(release.value().len(), 3);
    assert!((release.scale() - 6.0).abs() < 1e-12);
    let release = histogram(&[5, 0, 7], 9, 1, Privacy::Zcdp { rho: 1.5 }).unwrap();
    assert!((release.scale() - 1.0).abs() < 1e-12, "{}", release.scale()); // √3/√3

    // A mean charge splits exactly: an odd number of units still sums to the charge.
    let odd = mean(1.0, 1, 0.0, 1.0, 1, pure(3e-18)).unwrap();
    assert_eq!(
        odd.charge(),
        Charge::Pure {
            epsilon: Amount::from_units(3)
        }
    );
    assert_eq!(
        Charge::sequential(&[odd.charge()], PrivacyKind::Zcdp)
            .unwrap()
            .kind(),
        PrivacyKind::Zcdp
    );
}

#[test]
fn calibration_nudges_the_scale_when_the_map_rounds_above_the_charge() {
    // sensitivity 3, ε = 0.3: 3/0.3 = 10.000000000000002 in f64; OpenDP's
    // map rounds 3/scale up: the certified loss must still be ≤ 0.3.
    for (sensitivity, epsilon) in [(3u32, 0.3), (7, 0.7), (1, 0.1), (10, 1.1), (3, 1e-5)] {
        let release = count(1000, sensitivity, pure(epsilon)).unwrap();
        let m: Measurement<_, _, MaxDivergence, i64> = make_laplace(
            AtomDomain::<i64>::default(),
            AbsoluteDistance::<u128>::default(),
            release.scale(),
            None,
        )
        .unwrap();
        let loss = m.map(&u128::from(sensitivity)).unwrap();
        let charge = Amount::from_f64_display(epsilon).unwrap();
        assert!(
            Amount::from_f64_ceil(loss).unwrap() <= charge,
            "{sensitivity}/{epsilon}: {loss}"
        );
        let ideal = f64::from(sensitivity) / epsilon;
        assert!(
            (release.scale() / ideal - 1.0).abs() < 1e-14,
            "{}",
            release.scale()
        );
    }
}

#[test]
fn helper_rounding_is_upward() {
    assert_eq!(mul_ceil(3.0, 4.0), 12.0);
    let product = mul_ceil(0.1, 3.0);
    assert!(0.1f64.mul_add(3.0, -product) <= 0.0);
    assert_eq!(u128_to_f64_ceil(1 << 70), 2f64.powi(70));
    assert!(u128_to_f64_ceil((1 << 70) + 1) > 2f64.powi(70));
}

/// Discrete Laplace `P[|X| ≤ m]` at `scale`.
fn discrete_laplace_within(m: i64, scale: f64) -> f64 {
    1.0 - 2.0 * (-((m + 1) as f64) / scale).exp() / (1.0 + (-1.0 / scale).exp())
}

/// Discrete Gaussian `P[|X| ≤ m]` at σ, by direct summation.
fn discrete_gaussian_within(m: i64, sigma: f64) -> f64 {
    let weight = |x: i64| (-(x as f64).powi(2) / (2.0 * sigma * sigma)).exp();
    let range = (60.0 * sigma) as i64 + 10;
    let total: f64 = (-range..=range).map(weight).sum();
    (-m..=m).map(weight).sum::<f64>() / total
}

#[test]
fn integer_accuracy_is_the_smallest_covering_half_width() {
    // The coverage tests below bound coverage from above only at 0.965, so
    // they see a half-width one unit too wide only by chance (σ = 10: 21
    // covers 0.9685 and failed about 1 run in 20): check it exactly.
    let kinds = [
        (
            MechanismKind::DiscreteGaussian,
            discrete_gaussian_within as fn(i64, f64) -> f64,
        ),
        (MechanismKind::DiscreteLaplace, discrete_laplace_within),
    ];
    for scale in [0.5, 1.0, 2.0, 3.7, 10.0, 25.0, 64.0, 100.0, 200.0] {
        for (kind, within) in kinds {
            let h = integer_accuracy(kind, scale, ALPHA).unwrap();
            assert_eq!(h, h.trunc(), "{kind:?} {scale}: {h}");
            let (covered, below) = (within(h as i64, scale), within(h as i64 - 1, scale));
            assert!(
                covered >= 0.95,
                "{kind:?} {scale}: P[|X| ≤ {h}] = {covered}"
            );
            assert!(
                below < 0.95,
                "{kind:?} {scale}: {h} is not the smallest ({below})"
            );
        }
    }
    let gaussian = count(500, 1, Privacy::Zcdp { rho: 0.005 }).unwrap();
    assert_eq!(gaussian.accuracy_95(), 20.0);
    assert_eq!(count(500, 1, pure(0.1)).unwrap().accuracy_95(), 30.0);
}

/// Runs `n` releases of `release(true_value)` and checks: coverage of the
/// reported 95% interval, the exact probability of `|noise| ≤ m`, and the
/// symmetry of the noise (sign test: zero median, so zero mean for a
/// symmetric law). 6 one-sided bounds.
fn check_integer_noise(
    what: &str,
    n: u64,
    truth: i64,
    m: i64,
    p_within: f64,
    max_coverage: f64,
    release: impl Fn(i64) -> Release<i64>,
) {
    let (mut inside, mut within, mut positive, mut nonzero) = (0, 0, 0, 0);
    for _ in 0..n {
        let r = release(truth);
        let noise = r.value() - truth;
        inside += u64::from((noise.abs() as f64) <= r.accuracy_95());
        within += u64::from(noise.abs() <= m);
        positive += u64::from(noise > 0);
        nonzero += u64::from(noise != 0);
    }
    assert_coverage(what, inside, n, max_coverage);
    assert_probability(&format!("{what}: P[|noise| ≤ {m}]"), within, n, p_within);
    assert_probability(
        &format!("{what}: P[noise > 0 | noise ≠ 0]"),
        positive,
        nonzero,
        0.5,
    );
}

#[test]
fn count_noise_is_discrete_laplace_at_the_reported_scale() {
    // ε = 0.1, Δ = 1: scale 10, 95% half-width 30.45 (P[|X| ≤ 30] = 0.9527).
    let expected = discrete_laplace_within(10, 10.0);
    check_integer_noise("count/Laplace", 40_000, 500, 10, expected, 0.965, |truth| {
        count(truth, 1, pure(0.1)).unwrap()
    });
}

#[test]
fn count_noise_is_discrete_gaussian_at_the_reported_scale() {
    // ρ = 0.005, Δ = 1: σ = 10, 95% half-width 20 (P[|X| ≤ 20] = 0.9597).
    let expected = discrete_gaussian_within(10, 10.0);
    check_integer_noise(
        "count/Gaussian",
        40_000,
        500,
        10,
        expected,
        0.965,
        |truth| count(truth, 1, Privacy::Zcdp { rho: 0.005 }).unwrap(),
    );
}

#[test]
fn large_scale_gaussian_accuracy_is_honest() {
    // σ = 200 (above the exact-summation limit): the continuous bound + 1.
    // Plus the sum path: Δ = 4·50 = 200 at ρ = 0.5 gives σ = 200 too.
    let expected = discrete_gaussian_within(200, 200.0);
    check_integer_noise(
        "sum_i64/Gaussian σ=200",
        20_000,
        -7,
        200,
        expected,
        0.97,
        |truth| sum_i64(truth, -50, 20, 4, Privacy::Zcdp { rho: 0.5 }).unwrap(),
    );
}

#[test]
fn float_sums_have_honest_accuracy() {
    // Δ = 5·2 = 10, ε = 1: Laplace scale 10; P[|X| ≤ 10] = 1 − e^{−1}.
    let n = 20_000;
    let (mut inside, mut within, mut inside_gauss) = (0, 0, 0);
    for _ in 0..n {
        let r = sum_f64(12.5, -5.0, 5.0, 2, pure(1.0)).unwrap();
        let noise = r.value() - 12.5;
        inside += u64::from(noise.abs() <= r.accuracy_95());
        within += u64::from(noise.abs() <= 10.0);
        let g = sum_f64(12.5, -5.0, 5.0, 2, Privacy::Zcdp { rho: 0.5 }).unwrap();
        inside_gauss += u64::from((g.value() - 12.5).abs() <= g.accuracy_95());
    }
    assert_coverage("sum_f64/Laplace", inside, n, 0.96);
    assert_probability(
        "sum_f64/Laplace P[|noise| ≤ 10]",
        within,
        n,
        1.0 - (-1.0f64).exp(),
    );
    assert_coverage("sum_f64/Gaussian", inside_gauss, n, 0.96);
}

#[test]
fn mean_and_histogram_accuracy_is_conservative() {
    let n = 10_000;
    let (lower, upper, rows) = (0.0, 100.0, 1);
    let (true_count, true_sum) = (400i64, 400.0 * 37.5);
    let mut inside = 0;
    for _ in 0..n {
        let r = mean(true_sum, true_count, lower, upper, rows, pure(1.0)).unwrap();
        inside += u64::from((r.value() - 37.5).abs() <= r.accuracy_95());
    }
    // A union bound over two 97.5% intervals: coverage ≥ 0.95, typically ~0.99.
    assert_coverage("mean", inside, n, 1.0);

    let counts = [0i64, 3, 100, 42, 7];
    let (mut inside, mut total) = (0, 0);
    for _ in 0..n / 2 {
        let r = histogram(&counts, 2, 1, pure(0.2)).unwrap();
        for (noisy, truth) in r.value().iter().zip(counts) {
            inside += u64::from(((noisy - truth).abs() as f64) <= r.accuracy_95());
            total += 1;
        }
    }
    // Bins are independent given the scale: per-bin coverage is binomial.
    assert_coverage("histogram per bin", inside, total, 0.965);
}

#[test]
fn select_keys_drops_rare_keys_and_keeps_common_ones() {
    let counts = HashMap::from([
        ("rare".to_string(), 1),
        ("common".to_string(), 1_000_000),
        ("medium".to_string(), 500),
    ]);
    let release = select_keys(counts.clone(), 1, 1, 1.0, 1e-9).unwrap();
    let selection = release.value();
    assert_eq!(release.mechanism(), MechanismKind::LaplaceThreshold);
    assert_eq!(
        release.charge(),
        Charge::Approx {
            epsilon: amount("1"),
            delta: amount("0.000000001")
        }
    );
    // scale 1, δ = 1e-9: threshold ≈ 1 + ln(1/δ) ≈ 21.
    assert!(
        (15..40).contains(&selection.threshold),
        "{}",
        selection.threshold
    );
    let kept: Vec<&str> = selection.keys.iter().map(|(k, _)| k.as_str()).collect();
    // P[rare kept] = P[noise ≥ threshold − 1] < 1e-9.
    assert_eq!(kept, ["common", "medium"]);
    assert!((selection.keys[0].1 - 1_000_000).abs() < 100);

    // The threshold is the smallest one OpenDP certifies for δ.
    let map_delta = |threshold: i64| {
        let m: Measurement<_, _, Approximate<MaxDivergence>, HashMap<String, i64>> =
            make_laplace_threshold(
                MapDomain::new(
                    AtomDomain::<String>::default(),
                    AtomDomain::<i64>::default(),
                ),
                L01InfDistance::<AbsoluteDistance<u128>>::default(),
                release.scale(),
                threshold,
                None,
            )
            .unwrap();
        m.map(&(1, 1, 1)).unwrap()
    };
    let (eps, delta) = map_delta(selection.threshold);
    assert!(Amount::from_f64_ceil(eps).unwrap() <= amount("1"));
    assert!(Amount::from_f64_ceil(delta).unwrap() <= amount("0.000000001"));
    assert!(map_delta(selection.threshold - 1).1 > 1e-9);

    // More partitions per patient need a higher threshold and more noise.
    let wide = select_keys(counts, 4, 2, 1.0, 1e-9).unwrap();
    assert!(wide.value().threshold > selection.threshold);
    assert!((wide.scale() - 8.0).abs() < 1e-12);
}

#[test]
fn quantile_lands_near_the_truth() {
    let values: Vec<f64> = (0..=1000).map(f64::from).collect();
    let candidates: Vec<f64> = (0..=100).map(|i| f64::from(i * 10)).collect();
    // Score of candidate c for the median: |#{x < c} − #{x > c}| / 2.
    let score = |c: f64| {
        let below = values.iter().filter(|&&x| x < c).count() as f64;
        let above = values.iter().filter(|&&x| x > c).count() as f64;
        (0.5 * below - 0.5 * above).abs()
    };
    let n = 2_000;
    let mut inside = 0;
    for _ in 0..n {
        let r = quantile(&values, &candidates, 0.5, 1, 1.0).unwrap();
        assert_eq!(r.mechanism(), MechanismKind::ExponentialQuantile);
        // scale = 1; a candidate ≥ 50 away has score ≥ 50: P ≤ 101·e^{−50}.
        assert!((r.value() - 500.0).abs() <= 50.0, "median {}", r.value());
        inside += u64::from(score(*r.value()) <= r.accuracy_95());
    }
    assert_coverage("quantile score gap", inside, n, 1.0);

    // The 90th percentile with ε = 2: the charge is exact, the result near 900.
    let r = quantile(&values, &candidates, 0.9, 1, 2.0).unwrap();
    assert_eq!(
        r.charge(),
        Charge::Pure {
            epsilon: amount("2")
        }
    );
    assert!((r.value() - 900.0).abs() <= 100.0, "p90 {}", r.value());
}
