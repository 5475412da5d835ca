//! Unit tests of the accountant: exact amounts, conversions, composition and
//! the reserve / commit / release ledger.

use super::amount::mul_div_ceil;
use super::*;
use crate::error::Error;

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
