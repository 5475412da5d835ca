//! Property tests: the ledger never overspends, whatever the sequence of
//! reservations, commits and releases.

use std::collections::BTreeMap;

use super::*;
use crate::error::Error;
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
