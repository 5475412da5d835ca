//! ResearchStudy: proposal, m-of-n approval, consent, the budget's
//! reserve/commit/release, compensation claims and closure.

use cohort_ledger_bridge::alloy::primitives::{Address, U256, keccak256};
use cohort_ledger_bridge::alloy::sol_types::SolEvent;
use cohort_ledger_bridge::contracts::ResearchStudy;
use cohort_ledger_bridge::merkle::ContributorTree;
use cohort_ledger_bridge::{Cost, Target};
use rand::{RngExt, SeedableRng};

use crate::fixture::{Fixture, addr, assert_reverts, count_events, eps, ether, query_id, units};

const DAY: u64 = 86_400;

pub async fn a_study_is_approved_by_m_of_n_stewards(f: &Fixture) {
    let c = &f.client;
    let proposal = Fixture::proposal(units(1), units(1) / 4);
    assert_reverts(
        c.propose_study(&f.outsider, proposal.clone(), U256::ZERO)
            .await,
        "MissingRole",
    );
    for (field, bad) in [
        (
            "queryCap",
            ResearchStudy::Proposal {
                queryCap: units(2),
                ..proposal.clone()
            },
        ),
        (
            "budget",
            ResearchStudy::Proposal {
                budget: 0,
                queryCap: 0,
                ..proposal.clone()
            },
        ),
        (
            "deltaBudget",
            ResearchStudy::Proposal {
                deltaBudget: 5,
                ..proposal.clone()
            },
        ),
        (
            "duration",
            ResearchStudy::Proposal {
                duration: 0,
                ..proposal.clone()
            },
        ),
        (
            "purposes",
            ResearchStudy::Proposal {
                purposes: U256::ZERO,
                ..proposal.clone()
            },
        ),
    ] {
        let err = c
            .propose_study(&f.researcher, bad, U256::ZERO)
            .await
            .unwrap_err();
        assert!(err.to_string().contains(field), "{field}: {err}");
    }
    let before = f.ledger.balance(c.contracts().study).await.unwrap();
    let id = c
        .propose_study(&f.researcher, proposal, ether(2))
        .await
        .unwrap();
    assert_eq!(
        f.ledger.balance(c.contracts().study).await.unwrap() - before,
        ether(2),
        "escrow held"
    );
    let status = |s: &ResearchStudy::Study| s.status;
    assert_eq!(status(&c.study(id).await.unwrap()), 1, "proposed");

    assert_reverts(c.approve_study(&f.outsider, id).await, "MissingRole");
    let first = c.approve_study(&f.stewards[0], id).await.unwrap();
    assert_eq!(
        count_events(&first, ResearchStudy::StudyApprovalGiven::SIGNATURE_HASH),
        1
    );
    assert_eq!(
        count_events(&first, ResearchStudy::StudyApproved::SIGNATURE_HASH),
        0
    );
    assert_reverts(c.approve_study(&f.stewards[0], id).await, "AlreadyApproved");
    assert_eq!(
        status(&c.study(id).await.unwrap()),
        1,
        "one of two approvals"
    );
    // Queries wait for approval.
    assert_reverts(
        c.reserve(&f.engine, id, query_id("early"), eps(1)).await,
        "WrongStatus",
    );

    let second = c.approve_study(&f.stewards[1], id).await.unwrap();
    assert_eq!(
        count_events(&second, ResearchStudy::StudyApproved::SIGNATURE_HASH),
        1
    );
    let study = c.study(id).await.unwrap();
    assert_eq!((study.status, study.approvals), (2, 2));
    assert_eq!(study.endsAt, study.approvedAt + 30 * DAY);
    assert_reverts(c.approve_study(&f.stewards[2], id).await, "WrongStatus");
    assert_reverts(c.approve_study(&f.stewards[0], 99).await, "NoSuchStudy");
}

pub async fn consent_covers_purposes_until_withdrawn_or_expired(f: &Fixture) {
    let c = &f.client;
    let id = f.approved_study(units(1), units(1), U256::ZERO).await;
    let patient = &f.patients[0];
    let until = f.now().await + 10 * DAY;
    assert!(!c.has_consent(id, addr(patient)).await.unwrap());
    assert_reverts(
        c.consent(&f.outsider, id, U256::from(3), until).await,
        "MissingRole",
    );
    assert_reverts(
        c.consent(patient, id, U256::ZERO, until).await,
        "InvalidConsent",
    );
    assert_reverts(
        c.consent(patient, id, U256::from(3), f.now().await).await,
        "InvalidConsent",
    );

    // The study needs purposes 0b11: consent to 0b01 alone does not cover it.
    c.consent(patient, id, U256::from(1), until).await.unwrap();
    assert!(!c.has_consent(id, addr(patient)).await.unwrap());
    let receipt = c.consent(patient, id, U256::from(7), until).await.unwrap();
    assert_eq!(
        count_events(&receipt, ResearchStudy::ConsentGiven::SIGNATURE_HASH),
        1
    );
    assert!(c.has_consent(id, addr(patient)).await.unwrap());

    let receipt = c.withdraw(patient, id).await.unwrap();
    assert_eq!(
        count_events(&receipt, ResearchStudy::ConsentWithdrawn::SIGNATURE_HASH),
        1
    );
    assert!(!c.has_consent(id, addr(patient)).await.unwrap());
    assert_reverts(c.withdraw(patient, id).await, "NoConsent");

    // Consent again, then let it expire.
    c.consent(patient, id, U256::from(3), f.now().await + DAY)
        .await
        .unwrap();
    assert!(c.has_consent(id, addr(patient)).await.unwrap());
    f.ledger.increase_time(DAY).await.unwrap();
    assert!(!c.has_consent(id, addr(patient)).await.unwrap(), "expired");
}

pub async fn the_budget_is_reserved_committed_and_released_exactly(f: &Fixture) {
    let c = &f.client;
    let budget = units(1);
    let cap = budget / 2;
    let id = f.approved_study(budget, cap, ether(1)).await;
    let (q1, q2, q3) = (query_id("q1"), query_id("q2"), query_id("q3"));

    assert_reverts(
        c.reserve(&f.researcher, id, q1, eps(1)).await,
        "MissingRole",
    );
    assert_reverts(c.reserve(&f.engine, id, q1, eps(0)).await, "InvalidCost");
    assert_reverts(
        c.reserve(&f.engine, id, q1, eps(cap + 1)).await,
        "OverQueryCap",
    );
    assert_reverts(
        c.reserve(
            &f.engine,
            id,
            q1,
            Cost {
                primary: 1,
                delta: 1,
            },
        )
        .await,
        "OverQueryCap",
    );

    let first = c.reserve(&f.engine, id, q1, eps(cap)).await.unwrap();
    assert_eq!(
        count_events(&first, ResearchStudy::BudgetReserved::SIGNATURE_HASH),
        1
    );
    let again = c.reserve(&f.engine, id, q1, eps(cap)).await.unwrap();
    assert_eq!(
        count_events(&again, ResearchStudy::BudgetReserved::SIGNATURE_HASH),
        0,
        "idempotent"
    );
    assert_reverts(
        c.reserve(&f.engine, id, q1, eps(cap - 1)).await,
        "QueryExists",
    );
    assert_eq!(c.remaining(id).await.unwrap(), eps(budget - cap));

    // Exactly what is left passes; one unit more does not.
    assert_reverts(
        c.reserve(&f.engine, id, q2, eps(budget - cap + 1)).await,
        "OverQueryCap",
    );
    c.reserve(&f.engine, id, q2, eps(budget - cap))
        .await
        .unwrap();
    assert_eq!(c.remaining(id).await.unwrap(), eps(0));
    assert_reverts(c.reserve(&f.engine, id, q3, eps(1)).await, "BudgetExceeded");

    // Commit q1 (idempotently), release q2: its ε is available again.
    let root = keccak256("contributors");
    let commit = c
        .commit(
            &f.engine,
            id,
            q1,
            keccak256("answer 1"),
            root,
            U256::from(1000),
        )
        .await
        .unwrap();
    assert_eq!(
        count_events(&commit, ResearchStudy::BudgetCommitted::SIGNATURE_HASH),
        1
    );
    let again = c
        .commit(
            &f.engine,
            id,
            q1,
            keccak256("answer 1"),
            root,
            U256::from(1000),
        )
        .await
        .unwrap();
    assert_eq!(
        count_events(&again, ResearchStudy::BudgetCommitted::SIGNATURE_HASH),
        0
    );
    assert_reverts(
        c.commit(
            &f.engine,
            id,
            q1,
            keccak256("another answer"),
            root,
            U256::from(1000),
        )
        .await,
        "NotReserved",
    );
    assert_reverts(c.release(&f.engine, id, q1).await, "NotReserved");
    let released = c.release(&f.engine, id, q2).await.unwrap();
    assert_eq!(
        count_events(&released, ResearchStudy::BudgetReleased::SIGNATURE_HASH),
        1
    );
    let again = c.release(&f.engine, id, q2).await.unwrap();
    assert_eq!(
        count_events(&again, ResearchStudy::BudgetReleased::SIGNATURE_HASH),
        0
    );
    assert_reverts(
        c.commit(&f.engine, id, q2, keccak256("late"), root, U256::ZERO)
            .await,
        "NotReserved",
    );
    assert_reverts(c.reserve(&f.engine, id, q2, eps(1)).await, "QueryExists");
    assert_eq!(c.remaining(id).await.unwrap(), eps(budget - cap));
    let study = c.study(id).await.unwrap();
    assert_eq!(
        (study.committed, study.reserved, study.openReservations),
        (cap, 0, 0)
    );
    assert_eq!(study.escrow, ether(1) - U256::from(1000));
    assert_eq!(study.owed, U256::from(1000));

    // A commit must carry a root when it pays, and cannot pay beyond the escrow.
    c.reserve(&f.engine, id, q3, eps(1)).await.unwrap();
    assert_reverts(
        c.commit(
            &f.engine,
            id,
            q3,
            keccak256("a"),
            Default::default(),
            U256::from(1),
        )
        .await,
        "MissingRoot",
    );
    assert_reverts(
        c.commit(&f.engine, id, q3, keccak256("a"), root, ether(2))
            .await,
        "InsufficientEscrow",
    );
    // Another study's query id is not this study's.
    let other = f.approved_study(budget, cap, U256::ZERO).await;
    assert_reverts(c.release(&f.engine, other, q3).await, "WrongStudy");

    // The study ends: no more reservations.
    f.ledger.increase_time(30 * DAY).await.unwrap();
    assert_reverts(
        c.reserve(&f.engine, id, query_id("after the end"), eps(1))
            .await,
        "StudyEnded",
    );
}

/// A seeded random sequence of reserves, commits and releases: after each,
/// committed + reserved never exceeds the budget and equals a model's.
pub async fn the_budget_invariant_holds_over_random_operations(f: &Fixture) {
    let c = &f.client;
    let budget: u128 = 1_000;
    let id = f.approved_study(budget, 300, U256::ZERO).await;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(2026);
    let (mut committed, mut reserved) = (0u128, 0u128);
    let mut open: Vec<(u64, u128)> = Vec::new();
    let mut next = 0u64;
    for _ in 0..60 {
        match rng.random_range(0..3) {
            0 => {
                let cost = rng.random_range(1..=300u128);
                next += 1;
                let result = c
                    .reserve(&f.engine, id, query_id(&format!("r{next}")), eps(cost))
                    .await;
                if committed + reserved + cost <= budget {
                    result.unwrap();
                    reserved += cost;
                    open.push((next, cost));
                } else {
                    assert_reverts(result, "BudgetExceeded");
                }
            }
            op if !open.is_empty() => {
                let (n, cost) = open.swap_remove(rng.random_range(0..open.len()));
                let q = query_id(&format!("r{n}"));
                if op == 1 {
                    c.commit(
                        &f.engine,
                        id,
                        q,
                        keccak256("r"),
                        Default::default(),
                        U256::ZERO,
                    )
                    .await
                    .unwrap();
                    committed += cost;
                } else {
                    c.release(&f.engine, id, q).await.unwrap();
                }
                reserved -= cost;
            }
            _ => {}
        }
        let study = c.study(id).await.unwrap();
        assert_eq!((study.committed, study.reserved), (committed, reserved));
        assert!(study.committed + study.reserved <= budget);
        assert_eq!(study.openReservations as usize, open.len());
    }
}

pub async fn contributors_claim_their_share_once_with_a_proof(f: &Fixture) {
    let c = &f.client;
    let id = f.approved_study(units(1), units(1), ether(1)).await;
    let q = query_id("paid query");
    let shares: Vec<(Address, U256)> = f
        .patients
        .iter()
        .enumerate()
        .map(|(i, p)| {
            (
                addr(p),
                ether(1) / U256::from(10) * U256::from(i as u64 + 1),
            )
        })
        .collect();
    let tree = ContributorTree::new(shares.clone()).unwrap();
    c.reserve(&f.engine, id, q, eps(1)).await.unwrap();
    c.commit(
        &f.engine,
        id,
        q,
        keccak256("answer"),
        tree.root(),
        tree.total(),
    )
    .await
    .unwrap();

    let (patient, other) = (&f.patients[1], &f.patients[2]);
    let (amount, proof) = tree.proof(addr(patient)).unwrap();
    assert_reverts(
        c.claim(patient, id, q, amount + U256::from(1), proof.clone())
            .await,
        "InvalidProof",
    );
    // Someone else's proof does not pay the caller.
    let (other_amount, other_proof) = tree.proof(addr(other)).unwrap();
    assert_reverts(
        c.claim(patient, id, q, other_amount, other_proof.clone())
            .await,
        "InvalidProof",
    );
    assert_reverts(
        c.claim(&f.outsider, id, q, amount, proof.clone()).await,
        "InvalidProof",
    );

    let before = f.ledger.balance(addr(patient)).await.unwrap();
    let receipt = c
        .claim(patient, id, q, amount, proof.clone())
        .await
        .unwrap();
    assert_eq!(
        count_events(&receipt, ResearchStudy::CompensationClaimed::SIGNATURE_HASH),
        1
    );
    // Gas is free on the embedded chain, paid on anvil: compare net of it.
    let after = f.ledger.balance(addr(patient)).await.unwrap();
    assert!(
        after > before
            && after - before <= amount
            && amount - (after - before) < U256::from(10u64.pow(15))
    );
    if matches!(
        f.ledger.backend(),
        cohort_ledger_bridge::Backend::Embedded { .. }
    ) {
        assert_eq!(after - before, amount);
    }
    assert_reverts(
        c.claim(patient, id, q, amount, proof).await,
        "AlreadyClaimed",
    );
    c.claim(other, id, q, other_amount, other_proof)
        .await
        .unwrap();
    let study = c.study(id).await.unwrap();
    let (first, _) = tree.proof(addr(&f.patients[0])).unwrap();
    assert_eq!(study.owed, first, "only the unclaimed share is still owed");
    assert_eq!(study.escrow, ether(1) - tree.total());
}

pub async fn microdata_releases_are_recorded_only_when_allowed(f: &Fixture) {
    let c = &f.client;
    let id = f.approved_study(units(1), units(1), ether(0)).await;
    let extract = keccak256("extract bytes");
    assert_reverts(
        c.record_release(&f.researcher, id, extract, 10, 2, 100)
            .await,
        "MissingRole",
    );
    assert_reverts(
        c.record_release(&f.engine, id, extract, 1, 0, 100).await,
        "InvalidRelease",
    );
    assert_reverts(
        c.record_release(&f.engine, id, extract, 10, 1, 100).await,
        "InvalidRelease",
    );
    let receipt = c
        .record_release(&f.engine, id, extract, 10, 2, 100)
        .await
        .unwrap();
    assert_eq!(
        count_events(&receipt, ResearchStudy::MicrodataReleased::SIGNATURE_HASH),
        1
    );
    // Recording the same extract again is a no-op, not a second release.
    let again = c
        .record_release(&f.engine, id, extract, 10, 2, 100)
        .await
        .unwrap();
    assert_eq!(
        count_events(&again, ResearchStudy::MicrodataReleased::SIGNATURE_HASH),
        0
    );

    // A study whose stewards approved no microdata refuses any extract.
    let mut terms = Fixture::proposal(units(1), units(1));
    terms.microdata = false;
    let closed = c
        .propose_study(&f.researcher, terms, ether(0))
        .await
        .unwrap();
    for s in &f.stewards[..2] {
        c.approve_study(s, closed).await.unwrap();
    }
    assert_reverts(
        c.record_release(&f.engine, closed, keccak256("other"), 10, 0, 5)
            .await,
        "MicrodataNotAllowed",
    );
    let released = c
        .view(
            Target::Study,
            ResearchStudy::isReleasedCall {
                studyId: U256::from(id),
                extractHash: extract,
            },
        )
        .await
        .unwrap();
    assert!(released);
}

pub async fn closing_refunds_the_unallocated_escrow(f: &Fixture) {
    let c = &f.client;
    let id = f.approved_study(units(1), units(1), ether(3)).await;
    let q = query_id("open");
    c.reserve(&f.engine, id, q, eps(1)).await.unwrap();
    let close = ResearchStudy::closeStudyCall {
        studyId: U256::from(id),
    };
    assert_reverts(
        c.send(&f.researcher, Target::Study, close.clone()).await,
        "ReservationsOpen",
    );
    let root = keccak256("root");
    c.commit(&f.engine, id, q, keccak256("answer"), root, ether(1))
        .await
        .unwrap();
    assert_reverts(
        c.send(&f.outsider, Target::Study, close.clone()).await,
        "NotResearcher",
    );
    let contract = c.contracts().study;
    let held = f.ledger.balance(contract).await.unwrap();
    let receipt = c
        .send(&f.researcher, Target::Study, close.clone())
        .await
        .unwrap();
    let closed = receipt
        .logs
        .iter()
        .find_map(|l| ResearchStudy::StudyClosed::decode_log(&l.log).ok())
        .unwrap();
    assert_eq!(closed.data.refund, ether(2));
    assert_eq!(
        held - f.ledger.balance(contract).await.unwrap(),
        ether(2),
        "the owed ether stays"
    );
    assert_reverts(
        c.send(&f.researcher, Target::Study, close).await,
        "WrongStatus",
    );
    assert_reverts(
        c.consent(&f.patients[0], id, U256::from(3), f.now().await + DAY)
            .await,
        "WrongStatus",
    );
    assert_reverts(
        c.reserve(&f.engine, id, query_id("after close"), eps(1))
            .await,
        "WrongStatus",
    );
}

/// Many concurrent reservations against one study: exactly as many as the
/// budget allows succeed, and the reserved total is exactly their sum.
pub async fn concurrent_reservations_never_overspend(f: &Fixture) {
    let c = &f.client;
    let cost = units(1) / 10;
    let id = f.approved_study(units(1), cost, U256::ZERO).await;
    let attempts = 30;
    let results = futures::future::join_all((0..attempts).map(|i| {
        c.reserve(
            &f.engine,
            id,
            query_id(&format!("concurrent {i}")),
            eps(cost),
        )
    }))
    .await;
    let accepted = results.iter().filter(|r| r.is_ok()).count();
    for r in results.into_iter().filter(|r| r.is_err()) {
        assert_reverts(r, "BudgetExceeded");
    }
    assert_eq!(accepted, 10);
    let study = c.study(id).await.unwrap();
    assert_eq!(study.reserved, 10 * cost);
    assert_eq!(study.openReservations, 10);
    assert_eq!(c.remaining(id).await.unwrap(), eps(0));
}

pub async fn transactions_sent_together_each_get_their_own_outcome(f: &Fixture) {
    let c = &f.client;
    let cost = units(1) / 4;
    let id = f.approved_study(units(1), cost, U256::ZERO).await;
    let reserve = |q: &str| ResearchStudy::reserveCall {
        studyId: U256::from(id),
        queryId: query_id(q),
        cost,
        deltaCost: 0,
    };
    let commit = ResearchStudy::commitCall {
        studyId: U256::from(id),
        queryId: query_id("together 1"),
        resultHash: keccak256("answer"),
        contributorsRoot: keccak256("root"),
        fee: U256::ZERO,
    };
    let mut outcomes = c
        .ledger()
        .send_all(vec![
            (f.engine.clone(), c.tx(Target::Study, reserve("together 1"))),
            (
                f.outsider.clone(),
                c.tx(Target::Study, reserve("together 2")),
            ),
            (f.engine.clone(), c.tx(Target::Study, reserve("together 3"))),
            // Sees the first reservation, sent in the same call.
            (f.engine.clone(), c.tx(Target::Study, commit)),
        ])
        .await;
    assert_eq!(outcomes.len(), 4);
    // Not the engine: refused alone.
    assert_reverts(outcomes.remove(1), "MissingRole");
    assert!(outcomes.iter().all(|o| o.is_ok()), "{outcomes:?}");
    let study = c.study(id).await.unwrap();
    assert_eq!(study.committed, cost);
    assert_eq!(study.reserved, cost);
    assert_eq!(c.remaining(id).await.unwrap(), eps(units(1) / 2));
}

pub async fn the_admin_sets_the_threshold_and_the_researcher_adds_escrow(f: &Fixture) {
    let c = &f.client;
    let set = |approvals| ResearchStudy::setRequiredApprovalsCall { approvals };
    assert_reverts(
        c.send(&f.outsider, Target::Study, set(3)).await,
        "MissingRole",
    );
    assert_reverts(
        c.send(&f.admin, Target::Study, set(0)).await,
        "InvalidApprovals",
    );
    let receipt = c.send(&f.admin, Target::Study, set(3)).await.unwrap();
    assert_eq!(
        count_events(
            &receipt,
            ResearchStudy::RequiredApprovalsSet::SIGNATURE_HASH
        ),
        1
    );
    let id = c
        .propose_study(
            &f.researcher,
            Fixture::proposal(units(1), units(1)),
            ether(1),
        )
        .await
        .unwrap();
    for s in &f.stewards[..2] {
        c.approve_study(s, id).await.unwrap();
    }
    assert_eq!(
        c.study(id).await.unwrap().status,
        1,
        "two of three: still proposed"
    );
    c.approve_study(&f.stewards[2], id).await.unwrap();
    assert_eq!(
        c.study(id).await.unwrap().status,
        2,
        "approved by the third"
    );

    let add = |study_id| ResearchStudy::addEscrowCall { studyId: study_id };
    assert_reverts(
        c.send_value(&f.outsider, Target::Study, add(U256::from(id)), ether(1))
            .await,
        "NotResearcher",
    );
    assert_reverts(
        c.send_value(&f.researcher, Target::Study, add(U256::from(99)), ether(1))
            .await,
        "NoSuchStudy",
    );
    let held = f.ledger.balance(c.contracts().study).await.unwrap();
    let receipt = c
        .send_value(&f.researcher, Target::Study, add(U256::from(id)), ether(2))
        .await
        .unwrap();
    assert_eq!(
        count_events(&receipt, ResearchStudy::EscrowAdded::SIGNATURE_HASH),
        1
    );
    assert_eq!(c.study(id).await.unwrap().escrow, ether(3));
    assert_eq!(
        f.ledger.balance(c.contracts().study).await.unwrap(),
        held + ether(2)
    );
}
