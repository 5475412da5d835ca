//! ResearchStudy: proposal, m-of-n approval, consent, the budget's
//! reserve/commit/release, microdata releases, encrypted shares and
//! closure. (Fees and claims: `compensation.rs`.)

use cohort_ledger_bridge::alloy::primitives::{B256, U256, keccak256};
use cohort_ledger_bridge::alloy::sol_types::SolEvent;
use cohort_ledger_bridge::contracts::ResearchStudy;
use cohort_ledger_bridge::merkle::MemberTree;
use cohort_ledger_bridge::{Cost, Target, query_fee};
use rand::{RngExt, SeedableRng};

use crate::fixture::{
    Fixture, addr, assert_reverts, count_events, eps, ether, query_id, reverted_with, units,
};

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
        // A fee per unit whose fee over the whole budget cannot be computed.
        (
            "feePerUnit",
            ResearchStudy::Proposal {
                feePerUnit: U256::MAX / U256::from(proposal.budget) + U256::from(1),
                ..proposal.clone()
            },
        ),
        // Microdata needs k >= 2 and at least one extract...
        (
            "minK",
            ResearchStudy::Proposal {
                minK: 1,
                ..proposal.clone()
            },
        ),
        (
            "maxExtracts",
            ResearchStudy::Proposal {
                maxExtracts: 0,
                ..proposal.clone()
            },
        ),
        // ...and a study without microdata sets neither.
        (
            "minK",
            ResearchStudy::Proposal {
                microdata: false,
                maxExtracts: 0,
                ..proposal.clone()
            },
        ),
        (
            "maxExtracts",
            ResearchStudy::Proposal {
                microdata: false,
                minK: 0,
                ..proposal.clone()
            },
        ),
    ] {
        let refused: ResearchStudy::InvalidProposal =
            reverted_with(c.propose_study(&f.researcher, bad, U256::ZERO).await);
        assert_eq!(refused.field, field);
    }
    // The largest fee per unit whose fee over the budget fits is accepted,
    // and so is a study without microdata that sets neither limit.
    c.propose_study(
        &f.researcher,
        ResearchStudy::Proposal {
            feePerUnit: U256::MAX / U256::from(proposal.budget),
            ..proposal.clone()
        },
        U256::ZERO,
    )
    .await
    .unwrap();
    c.propose_study(
        &f.researcher,
        ResearchStudy::Proposal {
            microdata: false,
            minK: 0,
            maxExtracts: 0,
            ..proposal.clone()
        },
        U256::ZERO,
    )
    .await
    .unwrap();
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
    // One ether per ε: the two halves of the budget cost the whole escrow.
    let id = f.paid_study(budget, cap, ether(1), ether(1)).await;
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

    let study = c.study(id).await.unwrap();
    assert_eq!((study.escrow, study.held), (U256::ZERO, ether(1)));

    // Commit q1 (idempotently) to two members, release q2: its ε and its
    // fee are available again.
    let members = MemberTree::new([addr(&f.patients[0]), addr(&f.patients[1])]).unwrap();
    let root = members.root();
    let commit = c
        .commit(&f.engine, id, q1, keccak256("answer 1"), root, 2)
        .await
        .unwrap();
    assert_eq!(
        count_events(&commit, ResearchStudy::BudgetCommitted::SIGNATURE_HASH),
        1
    );
    let again = c
        .commit(&f.engine, id, q1, keccak256("answer 1"), root, 2)
        .await
        .unwrap();
    assert_eq!(
        count_events(&again, ResearchStudy::BudgetCommitted::SIGNATURE_HASH),
        0
    );
    for (answer, members) in [("another answer", 2), ("answer 1", 3)] {
        assert_reverts(
            c.commit(&f.engine, id, q1, keccak256(answer), root, members)
                .await,
            "NotReserved",
        );
    }
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
        c.commit(&f.engine, id, q2, keccak256("late"), root, 2)
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
    // q1's fee is owed to its members, q2's is back in the escrow.
    assert_eq!(study.escrow, ether(1) / U256::from(2));
    assert_eq!(study.held, U256::ZERO);
    assert_eq!(study.owed, ether(1) / U256::from(2));

    // A commit that pays members must carry their root.
    c.reserve(&f.engine, id, q3, eps(1)).await.unwrap();
    assert_reverts(
        c.commit(&f.engine, id, q3, keccak256("a"), B256::ZERO, 1)
            .await,
        "MissingRoot",
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

/// A seeded random sequence of reserves, commits (to random numbers of
/// members) and releases: after each, committed + reserved never exceeds
/// the budget, and the budget and the escrow / held / owed split equal a
/// model's, whose fees are `query_fee` of the cost.
pub async fn the_budget_invariant_holds_over_random_operations(f: &Fixture) {
    let c = &f.client;
    let budget: u128 = 1_000;
    // 1000.7 wei per raw unit of ε: fees round down, and the escrow covers
    // only part of the budget (commits to no one give their fee back).
    let fee_per_unit = U256::from(1_000_700_000_000_000_000_000u128);
    let funded = U256::from(600_000u64);
    let id = f.paid_study(budget, 300, fee_per_unit, funded).await;
    let contract = c.contracts().study;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(2026);
    let (mut committed, mut reserved) = (0u128, 0u128);
    let (mut escrow, mut held, mut owed) = (funded, U256::ZERO, U256::ZERO);
    let mut open: Vec<(u64, u128, U256)> = Vec::new();
    let mut next = 0u64;
    let root = keccak256("some members");
    // How often each outcome came up: the seed must exercise them all.
    let (mut over_budget, mut over_escrow, mut to_nobody, mut with_dust) = (0, 0, 0, 0);
    for _ in 0..100 {
        match rng.random_range(0..3) {
            0 => {
                let cost = rng.random_range(1..=300u128);
                let fee = query_fee(fee_per_unit, cost);
                next += 1;
                let result = c
                    .reserve(&f.engine, id, query_id(&format!("r{next}")), eps(cost))
                    .await;
                if committed + reserved + cost > budget {
                    assert_reverts(result, "BudgetExceeded");
                    over_budget += 1;
                } else if fee > escrow {
                    assert_reverts(result, "InsufficientEscrow");
                    over_escrow += 1;
                } else {
                    result.unwrap();
                    reserved += cost;
                    escrow -= fee;
                    held += fee;
                    open.push((next, cost, fee));
                }
            }
            op if !open.is_empty() => {
                let (n, cost, fee) = open.swap_remove(rng.random_range(0..open.len()));
                let q = query_id(&format!("r{n}"));
                if op == 1 {
                    let members = rng.random_range(0..=3u64);
                    c.commit(&f.engine, id, q, keccak256("r"), root, members)
                        .await
                        .unwrap();
                    let paid = if members == 0 {
                        to_nobody += 1;
                        U256::ZERO
                    } else {
                        fee / U256::from(members) * U256::from(members)
                    };
                    if members > 0 && paid < fee {
                        with_dust += 1;
                    }
                    assert_eq!(c.query(q).await.unwrap().fee, paid);
                    committed += cost;
                    owed += paid;
                    escrow += fee - paid;
                } else {
                    c.release(&f.engine, id, q).await.unwrap();
                    escrow += fee;
                }
                held -= fee;
                reserved -= cost;
            }
            _ => {}
        }
        let study = c.study(id).await.unwrap();
        assert_eq!((study.committed, study.reserved), (committed, reserved));
        assert!(study.committed + study.reserved <= budget);
        assert_eq!(study.openReservations as usize, open.len());
        assert_eq!((study.escrow, study.held, study.owed), (escrow, held, owed));
        assert_eq!(escrow + held + owed, funded, "no wei made or lost");
        assert_eq!(f.ledger.balance(contract).await.unwrap(), funded);
    }
    assert!(
        over_budget > 0 && over_escrow > 0 && to_nobody > 0 && with_dust > 0,
        "{over_budget} {over_escrow} {to_nobody} {with_dust}"
    );
}

pub async fn microdata_releases_are_recorded_only_when_allowed(f: &Fixture) {
    let c = &f.client;
    // Extracts need k >= 5, and two at most.
    let id = f
        .approve(
            ResearchStudy::Proposal {
                minK: 5,
                maxExtracts: 2,
                ..Fixture::proposal(units(1), units(1))
            },
            U256::ZERO,
        )
        .await;
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
    // Below the study's k.
    let refused: ResearchStudy::InvalidRelease =
        reverted_with(c.record_release(&f.engine, id, extract, 4, 0, 100).await);
    assert_eq!((refused.k, refused.l), (4, 0));
    assert_reverts(
        c.record_release(&f.engine, id, B256::ZERO, 10, 0, 100)
            .await,
        "InvalidRelease",
    );
    c.record_release(&f.engine, id, keccak256("at k"), 5, 0, 40)
        .await
        .unwrap();
    assert_eq!(c.study(id).await.unwrap().extracts, 1);
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
    assert_eq!(
        c.study(id).await.unwrap().extracts,
        2,
        "the repeat did not count"
    );
    // The third extract is one too many; repeating a recorded one is still
    // a no-op.
    let refused: ResearchStudy::TooManyExtracts = reverted_with(
        c.record_release(&f.engine, id, keccak256("third"), 10, 2, 100)
            .await,
    );
    assert_eq!((refused.studyId, refused.maxExtracts), (U256::from(id), 2));
    let again = c
        .record_release(&f.engine, id, extract, 10, 2, 100)
        .await
        .unwrap();
    assert_eq!(
        count_events(&again, ResearchStudy::MicrodataReleased::SIGNATURE_HASH),
        0
    );
    assert_eq!(c.study(id).await.unwrap().extracts, 2);

    // A study whose stewards approved no microdata refuses any extract.
    let mut terms = Fixture::proposal(units(1), units(1));
    terms.microdata = false;
    terms.minK = 0;
    terms.maxExtracts = 0;
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
    // One ether per ε; a query costing ε 1 holds one ether.
    let id = f.paid_study(units(1), units(1), ether(1), ether(3)).await;
    let q = query_id("open");
    c.reserve(&f.engine, id, q, eps(units(1))).await.unwrap();
    let close = ResearchStudy::closeStudyCall {
        studyId: U256::from(id),
    };
    assert_reverts(
        c.send(&f.researcher, Target::Study, close.clone()).await,
        "ReservationsOpen",
    );
    let members = MemberTree::new(f.patients.iter().map(addr)).unwrap();
    c.commit(&f.engine, id, q, keccak256("answer"), members.root(), 3)
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
    // Three members share one ether: the wei the division leaves over
    // went back to the escrow, which is refunded.
    let share = ether(1) / U256::from(3);
    let refund = ether(2) + (ether(1) - share * U256::from(3));
    assert_eq!(closed.data.refund, refund);
    assert_eq!(refund, ether(2) + U256::from(1));
    assert_eq!(
        held - f.ledger.balance(contract).await.unwrap(),
        refund,
        "the owed ether stays"
    );
    let study = c.study(id).await.unwrap();
    assert_eq!((study.escrow, study.held), (U256::ZERO, U256::ZERO));
    assert_eq!(study.owed, share * U256::from(3));
    // The members still claim their shares from a closed study.
    let proof = members.proof(addr(&f.patients[0])).unwrap();
    c.claim(&f.patients[0], id, q, proof).await.unwrap();
    assert_eq!(
        held - f.ledger.balance(contract).await.unwrap(),
        refund + share
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
        membersRoot: keccak256("root"),
        members: 3,
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

pub async fn patients_declare_encrypted_shares_of_a_running_study(f: &Fixture) {
    let c = &f.client;
    let column = keccak256("hiv_status");
    let (alice, bob) = (&f.patients[0], &f.patients[1]);
    // Not yet approved: nothing to share with.
    let proposed = c
        .propose_study(
            &f.researcher,
            Fixture::proposal(units(1), units(1)),
            U256::ZERO,
        )
        .await
        .unwrap();
    assert_reverts(
        c.share_encrypted(alice, proposed, column, keccak256("ct"))
            .await,
        "WrongStatus",
    );
    let id = f.approved_study(units(1), units(1), U256::ZERO).await;
    assert_reverts(
        c.share_encrypted(&f.outsider, id, column, keccak256("ct"))
            .await,
        "MissingRole",
    );
    assert_reverts(
        c.share_encrypted(&f.researcher, id, column, keccak256("ct"))
            .await,
        "MissingRole",
    );
    let refused: ResearchStudy::InvalidShare =
        reverted_with(c.share_encrypted(alice, id, column, B256::ZERO).await);
    assert_eq!(refused.column, column);
    assert_reverts(
        c.share_encrypted(alice, id, B256::ZERO, keccak256("ct"))
            .await,
        "InvalidShare",
    );
    assert_eq!(
        c.shared_value(id, column, addr(alice)).await.unwrap(),
        B256::ZERO
    );

    let receipt = c
        .share_encrypted(alice, id, column, keccak256("ciphertext 1"))
        .await
        .unwrap();
    let shared = receipt
        .logs
        .iter()
        .find_map(|l| ResearchStudy::EncryptedValueShared::decode_log(&l.log).ok())
        .unwrap();
    assert_eq!(
        (
            shared.data.studyId,
            shared.data.patient,
            shared.data.column,
            shared.data.valueHash
        ),
        (
            U256::from(id),
            addr(alice),
            column,
            keccak256("ciphertext 1")
        )
    );
    // Study, patient and column are indexed: a follower filters on them.
    assert_eq!(receipt.logs[0].log.topics().len(), 4);
    assert_eq!(
        c.shared_value(id, column, addr(alice)).await.unwrap(),
        keccak256("ciphertext 1")
    );
    // A later share replaces the earlier one; others' shares and other
    // columns are their own.
    c.share_encrypted(alice, id, column, keccak256("ciphertext 2"))
        .await
        .unwrap();
    c.share_encrypted(bob, id, keccak256("viral_load"), keccak256("b"))
        .await
        .unwrap();
    assert_eq!(
        c.shared_value(id, column, addr(alice)).await.unwrap(),
        keccak256("ciphertext 2")
    );
    assert_eq!(
        c.shared_value(id, column, addr(bob)).await.unwrap(),
        B256::ZERO
    );
    assert_eq!(
        c.shared_value(proposed, column, addr(alice)).await.unwrap(),
        B256::ZERO
    );

    // Once the study has ended, nothing more is shared.
    f.ledger.increase_time(30 * DAY).await.unwrap();
    assert_reverts(
        c.share_encrypted(bob, id, column, keccak256("late")).await,
        "StudyEnded",
    );
}
