//! ResearchStudy's compensation: a query's fee is priced by the privacy it
//! cost (`feePerUnit * cost / 1e18`, computed by the contract), held at
//! the reservation, returned on release, and paid at the commit in equal
//! shares to the study's whole consenting set, whoever matched; members
//! claim with a Merkle proof of membership. Nothing on chain depends on
//! which rows a query read.

use cohort_ledger_bridge::alloy::primitives::{B256, U256, keccak256};
use cohort_ledger_bridge::alloy::sol_types::SolEvent;
use cohort_ledger_bridge::contracts::ResearchStudy;
use cohort_ledger_bridge::merkle::MemberTree;
use cohort_ledger_bridge::{Account, Receipt, Target, query_fee};
use rand::{RngExt, SeedableRng};

use crate::fixture::{
    Fixture, addr, assert_received, assert_reverts, eps, ether, query_id, reverted_with, units,
};

/// The one `E` event in `receipt`.
fn event<E: SolEvent>(receipt: &Receipt) -> E {
    let mut found = receipt
        .logs
        .iter()
        .filter_map(|l| E::decode_log(&l.log).ok())
        .map(|l| l.data);
    let one = found
        .next()
        .unwrap_or_else(|| panic!("no {}", E::SIGNATURE));
    assert!(found.next().is_none(), "two {}", E::SIGNATURE);
    one
}

/// `patient` claims query `q` of study `id` with `proof`: the event, the
/// contract's balance and the patient's all move by exactly the returned
/// amount.
async fn claim(f: &Fixture, patient: &Account, id: u64, q: B256, proof: Vec<B256>) -> U256 {
    let contract = f.client.contracts().study;
    let (held, before) = (
        f.ledger.balance(contract).await.unwrap(),
        f.ledger.balance(addr(patient)).await.unwrap(),
    );
    let receipt = f.client.claim(patient, id, q, proof).await.unwrap();
    let claimed: ResearchStudy::CompensationClaimed = event(&receipt);
    assert_eq!(
        (claimed.studyId, claimed.queryId, claimed.patient),
        (U256::from(id), q, addr(patient))
    );
    assert_eq!(
        held - f.ledger.balance(contract).await.unwrap(),
        claimed.amount
    );
    let after = f.ledger.balance(addr(patient)).await.unwrap();
    assert_received(f, before, after, claimed.amount);
    claimed.amount
}

pub async fn the_fee_is_priced_by_the_cost_held_then_paid_or_returned(f: &Fixture) {
    let c = &f.client;
    // 0.1 ether per ε; an ε 0.5 query costs 0.05 ether.
    let per_unit = ether(1) / U256::from(10);
    let id = f.paid_study(units(1), units(1), per_unit, ether(1)).await;
    let contract = c.contracts().study;
    let (q, cost) = (query_id("priced"), eps(units(1) / 2));
    let fee = ether(1) / U256::from(20);
    assert_eq!(query_fee(per_unit, cost.primary), fee);

    // Reserved: the contract computed the fee and holds it.
    let reserved: ResearchStudy::BudgetReserved =
        event(&c.reserve(&f.engine, id, q, cost).await.unwrap());
    assert_eq!(
        (reserved.cost, reserved.deltaCost, reserved.fee),
        (cost.primary, 0, fee)
    );
    let study = c.study(id).await.unwrap();
    assert_eq!(
        (study.escrow, study.held, study.owed),
        (ether(1) - fee, fee, U256::ZERO)
    );
    let query = c.query(q).await.unwrap();
    assert_eq!((query.state, query.fee), (1, fee));

    // Released: its fee goes back to the escrow.
    let r = query_id("released");
    let r_fee = ether(1) / U256::from(40);
    let reserved: ResearchStudy::BudgetReserved = event(
        &c.reserve(&f.engine, id, r, eps(units(1) / 4))
            .await
            .unwrap(),
    );
    assert_eq!(reserved.fee, r_fee);
    assert_eq!(c.study(id).await.unwrap().held, fee + r_fee);
    c.release(&f.engine, id, r).await.unwrap();
    let study = c.study(id).await.unwrap();
    assert_eq!((study.escrow, study.held), (ether(1) - fee, fee));
    let query = c.query(r).await.unwrap();
    assert_eq!((query.state, query.fee), (3, U256::ZERO));

    // Committed to three members: each is owed fee / 3, and the two wei
    // the division leaves go back to the escrow.
    let members = MemberTree::new(f.patients.iter().map(addr)).unwrap();
    let share = fee / U256::from(3);
    let paid = share * U256::from(3);
    assert_eq!(fee - paid, U256::from(2));
    let committed: ResearchStudy::BudgetCommitted = event(
        &c.commit(&f.engine, id, q, keccak256("answer"), members.root(), 3)
            .await
            .unwrap(),
    );
    assert_eq!(
        (committed.membersRoot, committed.members, committed.fee),
        (members.root(), 3, paid)
    );
    let study = c.study(id).await.unwrap();
    assert_eq!(
        (study.escrow, study.held, study.owed),
        (ether(1) - fee + U256::from(2), U256::ZERO, paid)
    );
    let query = c.query(q).await.unwrap();
    assert_eq!(
        (
            query.state,
            query.fee,
            query.membersRoot,
            query.members,
            query.claimed
        ),
        (2, paid, members.root(), 3, U256::ZERO)
    );
    assert_eq!(
        f.ledger.balance(contract).await.unwrap(),
        ether(1),
        "nothing left yet"
    );

    // Fees round down: 19e-18 ε at 0.1 ether per ε is 1.9 wei, so 1.
    assert_eq!(query_fee(per_unit, 19), U256::from(1));
    let reserved: ResearchStudy::BudgetReserved = event(
        &c.reserve(&f.engine, id, query_id("tiny"), eps(19))
            .await
            .unwrap(),
    );
    assert_eq!(reserved.fee, U256::from(1));
}

pub async fn a_reservation_the_escrow_cannot_pay_is_refused_and_moves_nothing(f: &Fixture) {
    let c = &f.client;
    // One ether per ε, a quarter of an ether in escrow.
    let quarter = ether(1) / U256::from(4);
    let id = f.paid_study(units(1), units(1), ether(1), quarter).await;
    let before = c.study(id).await.unwrap();
    let q = query_id("too dear");
    let refused: ResearchStudy::InsufficientEscrow =
        reverted_with(c.reserve(&f.engine, id, q, eps(units(1) / 2)).await);
    assert_eq!(
        (refused.studyId, refused.fee, refused.escrow),
        (U256::from(id), ether(1) / U256::from(2), quarter)
    );
    let after = c.study(id).await.unwrap();
    assert_eq!(
        (
            after.reserved,
            after.openReservations,
            after.escrow,
            after.held
        ),
        (
            before.reserved,
            before.openReservations,
            before.escrow,
            before.held
        )
    );
    assert_eq!(c.remaining(id).await.unwrap(), eps(units(1)));
    assert_eq!(c.query(q).await.unwrap().state, 0, "no reservation");

    // Exactly the escrow passes, and its idempotent repeat needs no more.
    let exact = query_id("exact");
    c.reserve(&f.engine, id, exact, eps(units(1) / 4))
        .await
        .unwrap();
    c.reserve(&f.engine, id, exact, eps(units(1) / 4))
        .await
        .unwrap();
    let study = c.study(id).await.unwrap();
    assert_eq!((study.escrow, study.held), (U256::ZERO, quarter));
    assert_reverts(
        c.reserve(&f.engine, id, query_id("one wei"), eps(1)).await,
        "InsufficientEscrow",
    );

    // With more escrow the refused query goes through.
    c.send_value(
        &f.researcher,
        Target::Study,
        ResearchStudy::addEscrowCall {
            studyId: U256::from(id),
        },
        ether(1),
    )
    .await
    .unwrap();
    c.reserve(&f.engine, id, q, eps(units(1) / 2))
        .await
        .unwrap();
    let study = c.study(id).await.unwrap();
    assert_eq!(
        (study.escrow, study.held),
        (ether(1) / U256::from(2), quarter + ether(1) / U256::from(2))
    );
}

pub async fn members_claim_equal_shares_once_with_a_proof(f: &Fixture) {
    let c = &f.client;
    // 0.3 ether per ε; an ε 1 query pays its three members 0.1 ether each.
    let per_unit = ether(3) / U256::from(10);
    let id = f.paid_study(units(3), units(1), per_unit, ether(1)).await;
    let q = query_id("paid query");
    let (alice, bob, carol) = (&f.patients[0], &f.patients[1], &f.patients[2]);
    let members = MemberTree::new([addr(alice), addr(bob), addr(carol)]).unwrap();
    let proof = |a: &Account| members.proof(addr(a)).unwrap();
    c.reserve(&f.engine, id, q, eps(units(1))).await.unwrap();
    // Not committed yet: nothing to claim.
    assert_reverts(c.claim(alice, id, q, proof(alice)).await, "NotReserved");
    c.commit(&f.engine, id, q, keccak256("answer"), members.root(), 3)
        .await
        .unwrap();
    let other = f.approved_study(units(1), units(1), U256::ZERO).await;
    assert_reverts(c.claim(alice, other, q, proof(alice)).await, "WrongStudy");

    // A non-member with a member's proof is refused, and so is a member
    // with another member's proof...
    let refused: ResearchStudy::InvalidProof =
        reverted_with(c.claim(&f.outsider, id, q, proof(alice)).await);
    assert_eq!((refused.queryId, refused.patient), (q, addr(&f.outsider)));
    assert_reverts(c.claim(bob, id, q, proof(alice)).await, "InvalidProof");
    // ...and a proof from a tree that does include the non-member.
    let forged = MemberTree::new([addr(alice), addr(bob), addr(carol), addr(&f.outsider)])
        .unwrap()
        .proof(addr(&f.outsider))
        .unwrap();
    assert_reverts(c.claim(&f.outsider, id, q, forged).await, "InvalidProof");
    assert_reverts(c.claim(&f.outsider, id, q, vec![]).await, "InvalidProof");

    // Every member claims the same amount, once.
    let share = ether(1) / U256::from(10);
    for member in [alice, bob, carol] {
        assert_eq!(claim(f, member, id, q, proof(member)).await, share);
        assert_reverts(
            c.claim(member, id, q, proof(member)).await,
            "AlreadyClaimed",
        );
        let claimed = c
            .view(
                Target::Study,
                ResearchStudy::hasClaimedCall {
                    queryId: q,
                    patient: addr(member),
                },
            )
            .await
            .unwrap();
        assert!(claimed);
    }
    let query = c.query(q).await.unwrap();
    assert_eq!(
        (query.fee, query.claimed),
        (share * U256::from(3), query.fee)
    );
    assert_eq!(c.study(id).await.unwrap().owed, U256::ZERO);

    // An engine that undercounts its set cannot pay out more than the fee:
    // three leaves but two members make two shares of 0.15 ether.
    let q2 = query_id("undercounted");
    c.reserve(&f.engine, id, q2, eps(units(1))).await.unwrap();
    c.commit(&f.engine, id, q2, keccak256("answer"), members.root(), 2)
        .await
        .unwrap();
    let half = ether(3) / U256::from(20);
    assert_eq!(claim(f, alice, id, q2, proof(alice)).await, half);
    assert_eq!(claim(f, bob, id, q2, proof(bob)).await, half);
    let refused: ResearchStudy::ClaimExceedsFee =
        reverted_with(c.claim(carol, id, q2, proof(carol)).await);
    assert_eq!((refused.amount, refused.left), (half, U256::ZERO));
}

/// Over a seeded random series of studies (fee per ε from a few wei to an
/// ether), costs and consenting sets of 1 to 6 members: every member
/// claims exactly `paid / members`, a non-member claims nothing, the
/// claims add up to the paid fee, never more than the fee, and the
/// remainder (under one wei per member) went back to the escrow.
pub async fn claims_never_exceed_the_fee_over_random_sets_and_fees(f: &Fixture) {
    let c = &f.client;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(2027);
    let mut pool = Vec::new();
    for i in 0..6 {
        pool.push(f.funded(&format!("member{i}")).await);
    }
    let escrow = ether(5);
    for round in 0..4 {
        let per_unit = if round == 0 {
            U256::from(3u64)
        } else {
            U256::from(rng.random_range(1..=10u128.pow(18)))
        };
        let id = f.paid_study(units(10), units(1), per_unit, escrow).await;
        let mut owed = U256::ZERO;
        for n in 0..3 {
            let q = query_id(&format!("round {round} query {n}"));
            let cost = rng.random_range(1..=units(1));
            let m = rng.random_range(1..=pool.len());
            let start = rng.random_range(0..pool.len());
            let set: Vec<&Account> = (0..m).map(|j| &pool[(start + j) % pool.len()]).collect();
            let tree = MemberTree::new(set.iter().map(|a| addr(a))).unwrap();
            c.reserve(&f.engine, id, q, eps(cost)).await.unwrap();
            c.commit(&f.engine, id, q, keccak256("r"), tree.root(), m as u64)
                .await
                .unwrap();
            let fee = query_fee(per_unit, cost);
            let paid = c.query(q).await.unwrap().fee;
            assert!(paid <= fee && fee - paid < U256::from(m));
            let mut total = U256::ZERO;
            for member in &set {
                let amount = claim(f, member, id, q, tree.proof(addr(member)).unwrap()).await;
                assert_eq!(amount, paid / U256::from(m));
                total += amount;
            }
            assert_eq!(total, paid);
            if m < pool.len() {
                let outsider = &pool[(start + m) % pool.len()];
                let borrowed = tree.proof(addr(set[0])).unwrap();
                assert_reverts(c.claim(outsider, id, q, borrowed).await, "InvalidProof");
            }
            owed += paid;
            let study = c.study(id).await.unwrap();
            assert_eq!(study.owed, U256::ZERO);
            assert_eq!(study.held, U256::ZERO);
            // The escrow lost exactly what was paid: the remainders came back.
            assert_eq!(study.escrow, escrow - owed);
        }
    }
}

pub async fn a_paying_commit_needs_a_root_and_an_empty_set_returns_the_fee(f: &Fixture) {
    let c = &f.client;
    let id = f.paid_study(units(1), units(1), ether(1), ether(1)).await;
    let q = query_id("nobody");
    let fee = ether(1) / U256::from(2);
    c.reserve(&f.engine, id, q, eps(units(1) / 2))
        .await
        .unwrap();
    let refused: ResearchStudy::MissingRoot = reverted_with(
        c.commit(&f.engine, id, q, keccak256("answer"), B256::ZERO, 2)
            .await,
    );
    assert_eq!(refused.queryId, q);
    assert_eq!(c.study(id).await.unwrap().held, fee, "still held");

    // No consenting patient: the whole fee goes back to the escrow.
    let committed: ResearchStudy::BudgetCommitted = event(
        &c.commit(&f.engine, id, q, keccak256("answer"), B256::ZERO, 0)
            .await
            .unwrap(),
    );
    assert_eq!((committed.members, committed.fee), (0, U256::ZERO));
    let study = c.study(id).await.unwrap();
    assert_eq!(
        (study.escrow, study.held, study.owed),
        (ether(1), U256::ZERO, U256::ZERO)
    );
    assert_eq!(study.committed, units(1) / 2, "the ε is still spent");
    assert_eq!(c.query(q).await.unwrap().fee, U256::ZERO);
    assert_reverts(c.claim(&f.patients[0], id, q, vec![]).await, "InvalidProof");
    // Even with a root (an engine's mistake), an empty set pays no one.
    let q2 = query_id("empty with a root");
    let one = MemberTree::new([addr(&f.patients[0])]).unwrap();
    c.reserve(&f.engine, id, q2, eps(units(1) / 4))
        .await
        .unwrap();
    c.commit(&f.engine, id, q2, keccak256("answer"), one.root(), 0)
        .await
        .unwrap();
    assert_reverts(
        c.claim(&f.patients[0], id, q2, vec![]).await,
        "InvalidProof",
    );
    assert_eq!(c.study(id).await.unwrap().escrow, ether(1));

    // A study without a fee commits members without a root.
    let free = f.approved_study(units(1), units(1), U256::ZERO).await;
    let q3 = query_id("free");
    c.reserve(&f.engine, free, q3, eps(1)).await.unwrap();
    c.commit(&f.engine, free, q3, keccak256("answer"), B256::ZERO, 3)
        .await
        .unwrap();
}

/// Two queries of the same cost over the same consenting set, with
/// different answers: their budget events are the same but for the query
/// id and the result commitment, and carry nothing else (three topics;
/// the reserve's data is cost, δ, fee; the commit's is cost, δ, result
/// hash, members' root, members, fee).
pub async fn budget_events_carry_nothing_that_depends_on_the_rows(f: &Fixture) {
    let c = &f.client;
    let per_unit = ether(1) / U256::from(10);
    let id = f.paid_study(units(1), units(1), per_unit, ether(1)).await;
    let members = MemberTree::new(f.patients.iter().map(addr)).unwrap();
    let mut seen = Vec::new();
    for (name, answer) in [("a", "12.5"), ("b", "a different answer")] {
        let q = query_id(name);
        let reserve = c
            .reserve(&f.engine, id, q, eps(units(1) / 8))
            .await
            .unwrap();
        let commit = c
            .commit(&f.engine, id, q, keccak256(answer), members.root(), 3)
            .await
            .unwrap();
        for (receipt, words) in [(&reserve, 3), (&commit, 6)] {
            let [log] = &receipt.logs[..] else {
                panic!("one event per budget move")
            };
            let topics = log.log.topics();
            assert_eq!(topics.len(), 3);
            assert_eq!(
                (topics[1], topics[2]),
                (B256::from(U256::from(id)), q),
                "indexed: the study and the query"
            );
            assert_eq!(log.log.data.data.len(), 32 * words);
        }
        let reserved: ResearchStudy::BudgetReserved = event(&reserve);
        let committed: ResearchStudy::BudgetCommitted = event(&commit);
        assert_eq!(committed.resultHash, keccak256(answer));
        seen.push((
            reserved.cost,
            reserved.deltaCost,
            reserved.fee,
            committed.cost,
            committed.membersRoot,
            committed.members,
            committed.fee,
        ));
    }
    assert_eq!(seen[0], seen[1]);
    assert_eq!(seen[0].2, query_fee(per_unit, units(1) / 8));
}
