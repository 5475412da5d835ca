//! Unit tests of the planned mechanisms: calibration before the data, exact
//! charges, and agreement with the one-shot mechanisms.

use super::*;

fn amount(text: &str) -> Amount {
    text.parse().unwrap()
}

#[test]
fn grouped_sensitivity_is_l1_and_rounded_up_l2() {
    let s = Sensitivity::grouped(4, 3).unwrap();
    assert_eq!(s.l1, 12);
    assert!(s.l2 >= 6.0 && s.l2 < 6.0 + 1e-12, "{}", s.l2);
    let s = Sensitivity::grouped(2, 1).unwrap();
    assert!(s.l2 >= std::f64::consts::SQRT_2, "{}", s.l2);
    assert!(Sensitivity::grouped(0, 1).is_err());
    assert!(Sensitivity::grouped(1, 0).is_err());
    assert!(Sensitivity::grouped(u32::MAX, u128::MAX).is_err());
}

#[test]
fn integer_noise_is_calibrated_before_release_and_charges_exactly() {
    let sensitivity = Sensitivity::grouped(2, 3).unwrap();
    let charge = Charge::Pure {
        epsilon: amount("0.5"),
    };
    let noise = IntegerNoise::calibrate(sensitivity, charge).unwrap();
    assert_eq!(noise.mechanism(), MechanismKind::DiscreteLaplace);
    assert!((noise.scale() - 12.0).abs() < 1e-9, "{}", noise.scale());
    // OpenDP's own map at the planned scale certifies at most the charge.
    let loss = laplace_vector(noise.scale()).unwrap().map(&6).unwrap();
    assert!(Amount::from_f64_ceil(loss).unwrap() <= amount("0.5"));

    let release = noise.release(&[10, 20, 30]).unwrap();
    assert_eq!(release.value().len(), 3);
    assert_eq!(release.charge(), charge);
    assert_eq!(release.scale(), noise.scale());
    assert_eq!(release.accuracy_95(), noise.accuracy(ALPHA).unwrap());

    let zcdp = IntegerNoise::calibrate(
        Sensitivity::grouped(4, 1).unwrap(),
        Charge::Zcdp { rho: amount("0.5") },
    )
    .unwrap();
    assert_eq!(zcdp.mechanism(), MechanismKind::DiscreteGaussian);
    assert!((zcdp.scale() - 2.0).abs() < 1e-9, "{}", zcdp.scale()); // √4·1/√1
}

#[test]
fn a_split_that_is_not_a_short_decimal_still_calibrates_to_its_units() {
    // ε = 1 split three ways in 10⁻¹⁸ units: 0.333…333 + 0.333…333 + 0.333…334.
    let third = Amount::from_units(crate::accountant::UNITS_PER_ONE / 3);
    let noise = IntegerNoise::calibrate(
        Sensitivity::grouped(1, 1).unwrap(),
        Charge::Pure { epsilon: third },
    )
    .unwrap();
    let loss = laplace_vector(noise.scale()).unwrap().map(&1).unwrap();
    assert!(Amount::from_f64_ceil(loss).unwrap() <= third);
    assert_eq!(noise.charge(), Charge::Pure { epsilon: third });
}

#[test]
fn approximate_or_zero_targets_are_refused() {
    let s = Sensitivity::grouped(1, 1).unwrap();
    let approx = Charge::Approx {
        epsilon: amount("1"),
        delta: amount("0.000001"),
    };
    let message = IntegerNoise::calibrate(s, approx).unwrap_err().to_string();
    assert!(message.contains("key selection"), "{message}");
    assert!(
        IntegerNoise::calibrate(
            s,
            Charge::Pure {
                epsilon: Amount::ZERO
            }
        )
        .is_err()
    );
    assert!(KeyThreshold::calibrate(1, 1, amount("1"), Amount::ZERO).is_err());
    assert!(KeyThreshold::calibrate(1, 1, Amount::ZERO, amount("0.001")).is_err());
    assert!(QuantileChoice::calibrate(vec![1.0, 2.0], 0.5, 1, Amount::ZERO).is_err());
}

#[test]
fn key_threshold_is_planned_once_and_matches_select_keys() {
    let planned = KeyThreshold::calibrate(2, 3, amount("1"), amount("0.000001")).unwrap();
    assert_eq!(planned.bounds(), (2, 3));
    assert!((planned.scale() - 6.0).abs() < 1e-9, "{}", planned.scale());
    let counts = HashMap::from([("common".to_string(), 10_000), ("rare".to_string(), 1)]);
    let release = super::super::select_keys(counts.clone(), 2, 3, 1.0, 1e-6).unwrap();
    assert_eq!(release.value().threshold, planned.threshold());
    let release = planned.release(counts).unwrap();
    let keys: Vec<_> = release
        .value()
        .keys
        .iter()
        .map(|(k, _)| k.as_str())
        .collect();
    // `rare` survives only with probability far below 1e-6 at this threshold.
    assert_eq!(keys, ["common"]);
    assert_eq!(release.charge(), planned.charge());
}

#[test]
fn quantile_choice_returns_a_candidate() {
    let choice =
        QuantileChoice::calibrate(vec![0.0, 25.0, 50.0, 75.0, 100.0], 0.5, 1, amount("1")).unwrap();
    let values: Vec<f64> = (0..1000).map(|i| f64::from(i % 101)).collect();
    let release = choice.release(&values).unwrap();
    assert!(choice.candidates().contains(release.value()));
    assert!(choice.release(&[f64::NAN]).is_err());
    assert!(QuantileChoice::calibrate(vec![2.0, 1.0], 0.5, 1, amount("1")).is_err());
}
