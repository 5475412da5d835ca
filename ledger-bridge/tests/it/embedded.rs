//! What is particular to the embedded chain: persistence across restarts,
//! its chain id, and reverted transactions leaving no trace.

use std::sync::Arc;

use cohort_ledger_bridge::alloy::primitives::U256;
use cohort_ledger_bridge::contracts::ResearchStudy;
use cohort_ledger_bridge::{
    Account, BLOCK_GAS_LIMIT, Client, EmbeddedLedger, Error, Ledger, LogQuery, Receipt, Target, Tx,
};

use crate::fixture::{Fixture, addr, ether, query_id, units};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_keeps_blocks_nonces_balances_storage_and_logs() {
    let f = Fixture::embedded().await;
    let id = f.approved_study(units(1), units(1) / 2, ether(5)).await;
    f.client
        .consent(&f.patients[0], id, U256::from(3), f.now().await + 86_400)
        .await
        .unwrap();
    f.client
        .reserve(
            &f.engine,
            id,
            query_id("before restart"),
            crate::fixture::eps(units(1) / 4),
        )
        .await
        .unwrap();
    let path = f.dir.as_ref().unwrap().path().join("chain.db");
    let contracts = *f.client.contracts();
    let head = f.ledger.block_number().await.unwrap();
    let hashes: Vec<_> = futures_hashes(&*f.ledger, head).await;
    let all = LogQuery {
        from_block: 0,
        to_block: head,
        addresses: vec![],
    };
    let logs = f.ledger.logs(&all).await.unwrap();
    let escrow = f.ledger.balance(contracts.study).await.unwrap();
    let researcher = f.ledger.balance(addr(&f.researcher)).await.unwrap();
    let study = f.client.study(id).await.unwrap();
    drop(f.client);
    drop(f.ledger);

    let reopened: Arc<dyn Ledger> = Arc::new(EmbeddedLedger::open(&path, 1_337_001).unwrap());
    let client = Client::new(Arc::clone(&reopened), contracts);
    client.verify_deployed().await.unwrap();
    assert_eq!(reopened.block_number().await.unwrap(), head);
    assert_eq!(futures_hashes(&*reopened, head).await, hashes);
    let again = reopened.logs(&all).await.unwrap();
    assert_eq!(again.len(), logs.len());
    assert!(
        again
            .iter()
            .zip(&logs)
            .all(|(a, b)| a.log == b.log && a.tx_hash == b.tx_hash)
    );
    assert_eq!(reopened.balance(contracts.study).await.unwrap(), escrow);
    assert_eq!(
        reopened.balance(addr(&f.researcher)).await.unwrap(),
        researcher
    );
    assert_eq!(client.study(id).await.unwrap(), study, "storage survives");
    assert!(client.has_consent(id, addr(&f.patients[0])).await.unwrap());
    // The engine's nonce carried over: it can send again, and the budget
    // reserved before the restart still counts.
    client
        .reserve(
            &f.engine,
            id,
            query_id("after restart"),
            crate::fixture::eps(units(1) / 4),
        )
        .await
        .unwrap();
    assert_eq!(client.remaining(id).await.unwrap().primary, units(1) / 2);
    assert_eq!(reopened.block_number().await.unwrap(), head + 1);
}

async fn futures_hashes(
    ledger: &dyn Ledger,
    head: u64,
) -> Vec<cohort_ledger_bridge::alloy::primitives::B256> {
    let mut hashes = Vec::new();
    for n in 0..=head {
        hashes.push(
            ledger
                .block_hash(n)
                .await
                .unwrap()
                .expect("every block has a hash"),
        );
    }
    hashes
}

#[tokio::test]
async fn another_chain_id_for_an_existing_chain_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("chain.db");
    EmbeddedLedger::open(&path, 7).unwrap();
    let err = EmbeddedLedger::open(&path, 8).err().unwrap();
    assert!(err.to_string().contains("chain id 7, not 8"), "{err}");
    assert_eq!(
        EmbeddedLedger::open(&path, 7)
            .unwrap()
            .chain_id()
            .await
            .unwrap(),
        7
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_transaction_changes_nothing() {
    let f = Fixture::embedded().await;
    let head = f.ledger.block_number().await.unwrap();
    let balance = f.ledger.balance(addr(&f.outsider)).await.unwrap();
    let refused = f
        .client
        .propose_study(&f.outsider, Fixture::proposal(units(1), units(1)), ether(1))
        .await;
    assert!(matches!(refused, Err(Error::Reverted(_))));
    assert_eq!(
        f.ledger.block_number().await.unwrap(),
        head,
        "nothing was mined"
    );
    assert_eq!(f.ledger.balance(addr(&f.outsider)).await.unwrap(), balance);
    // Sending more ether than the account has is refused by the chain.
    let broke = f
        .client
        .send_value(
            &f.researcher,
            Target::Study,
            ResearchStudy::proposeStudyCall {
                p: Fixture::proposal(units(1), units(1)),
            },
            ether(1_000),
        )
        .await;
    assert!(matches!(broke, Err(Error::Rejected(_))), "{broke:?}");
    assert_eq!(f.ledger.block_number().await.unwrap(), head);
    // The refusals left the nonces alone: the next proposal is study 1.
    let id = f
        .client
        .propose_study(
            &f.researcher,
            Fixture::proposal(units(1), units(1)),
            U256::ZERO,
        )
        .await
        .unwrap();
    assert_eq!(id, 1);
    assert_eq!(f.ledger.block_number().await.unwrap(), head + 1);
}

/// Reserves one unit for each of `n` queries of study `id` with one
/// `send_all`, and returns the receipts.
async fn reserve_all(f: &Fixture, id: u64, n: usize, tag: &str) -> Vec<Receipt> {
    let txs: Vec<(Account, Tx)> = (0..n)
        .map(|i| {
            let call = ResearchStudy::reserveCall {
                studyId: U256::from(id),
                queryId: query_id(&format!("{tag} {i}")),
                cost: 1,
                deltaCost: 0,
            };
            (f.engine.clone(), f.client.tx(Target::Study, call))
        })
        .collect();
    f.ledger
        .send_all(txs)
        .await
        .into_iter()
        .map(|r| r.unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactions_sent_together_are_one_block_that_a_restart_keeps() {
    let f = Fixture::embedded().await;
    let id = f.approved_study(units(1), units(1), U256::ZERO).await;
    let head = f.ledger.block_number().await.unwrap();
    let receipts = reserve_all(&f, id, 20, "batch").await;
    assert!(receipts.iter().all(|r| r.block_number == head + 1));
    assert_eq!(
        f.ledger.block_number().await.unwrap(),
        head + 1,
        "one block"
    );
    // Log indices run through the block, in the order sent.
    let indices: Vec<u64> = receipts
        .iter()
        .flat_map(|r| r.logs.iter().map(|l| l.log_index))
        .collect();
    assert_eq!(indices, (0..indices.len() as u64).collect::<Vec<_>>());
    let block = LogQuery {
        from_block: head + 1,
        to_block: head + 1,
        addresses: vec![],
    };
    let logs = f.ledger.logs(&block).await.unwrap();
    assert_eq!(logs.len(), indices.len());
    assert_eq!(f.client.study(id).await.unwrap().openReservations, 20);

    let path = f.dir.as_ref().unwrap().path().join("chain.db");
    let hash = f.ledger.block_hash(head + 1).await.unwrap();
    let contracts = *f.client.contracts();
    drop(f.client);
    drop(f.ledger);
    let reopened: Arc<dyn Ledger> = Arc::new(EmbeddedLedger::open(&path, 1_337_001).unwrap());
    assert_eq!(reopened.block_hash(head + 1).await.unwrap(), hash);
    let again = reopened.logs(&block).await.unwrap();
    assert!(
        again
            .iter()
            .zip(&logs)
            .all(|(a, b)| a.log == b.log && a.log_index == b.log_index)
    );
    let client = Client::new(reopened, contracts);
    assert_eq!(client.study(id).await.unwrap().openReservations, 20);
    // Every block hashes to its record, every signature to its sender.
    let chain = EmbeddedLedger::open(&path, 1_337_001).unwrap();
    let verified = chain.verify().unwrap();
    assert!(verified.transactions > 20, "{verified:?}");
    assert_eq!(verified.blocks, chain.block_number().await.unwrap() + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tampered_sender_fails_signature_verification() {
    let f = Fixture::embedded().await;
    let path = f.dir.as_ref().unwrap().path().join("chain.db");
    let chain = EmbeddedLedger::open(&path, 1_337_001).unwrap();
    assert!(chain.verify().unwrap().transactions > 0);
    let conn = rusqlite::Connection::open(&path).unwrap();
    let changed = conn
        .execute(
            "UPDATE transactions SET sender = ?1 WHERE (block_number, tx_index) = \
             (SELECT block_number, tx_index FROM transactions ORDER BY block_number LIMIT 1)",
            [addr(&f.outsider).as_slice()],
        )
        .unwrap();
    assert_eq!(changed, 1);
    let err = chain.verify().unwrap_err();
    assert!(err.to_string().contains("recorded as sent by"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn of_two_tampered_senders_the_first_in_chain_order_is_named() {
    // The signatures are checked in parallel; what is reported must still
    // be the chain's first mismatch, whichever thread found it first.
    let f = Fixture::embedded().await;
    let id = f.approved_study(units(1), units(1), U256::ZERO).await;
    reserve_all(&f, id, 8, "two").await;
    let path = f.dir.as_ref().unwrap().path().join("chain.db");
    let chain = EmbeddedLedger::open(&path, 1_337_001).unwrap();
    chain.verify().unwrap();
    let conn = rusqlite::Connection::open(&path).unwrap();
    let order = "ORDER BY block_number, tx_index";
    let hashes: Vec<Vec<u8>> = conn
        .prepare(&format!("SELECT hash FROM transactions {order}"))
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert!(hashes.len() > 8, "{}", hashes.len());
    let (early, late) = (&hashes[2], &hashes[hashes.len() - 1]);
    for hash in [late, early] {
        conn.execute(
            "UPDATE transactions SET sender = ?1 WHERE hash = ?2",
            rusqlite::params![addr(&f.outsider).as_slice(), hash],
        )
        .unwrap();
    }
    for _ in 0..5 {
        let err = chain.verify().unwrap_err().to_string();
        let named = format!(
            "{}",
            cohort_ledger_bridge::alloy::primitives::B256::from_slice(early)
        );
        assert!(err.contains(&named), "{err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malleated_signature_with_a_high_s_is_refused() {
    use cohort_ledger_bridge::alloy::consensus::{Signed, TxEnvelope};
    use cohort_ledger_bridge::alloy::eips::eip2718::{Decodable2718, Encodable2718};
    use cohort_ledger_bridge::alloy::primitives::Signature;
    let f = Fixture::embedded().await;
    let path = f.dir.as_ref().unwrap().path().join("chain.db");
    let chain = EmbeddedLedger::open(&path, 1_337_001).unwrap();
    chain.verify().unwrap();
    let conn = rusqlite::Connection::open(&path).unwrap();
    let (hash, raw): (Vec<u8>, Vec<u8>) = conn
        .query_row(
            "SELECT hash, raw FROM transactions ORDER BY block_number, tx_index LIMIT 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    // (r, n - s, !v) is the same signature's other valid form: it recovers
    // the same sender, and Ethereum refuses it since EIP-2.
    let envelope = TxEnvelope::decode_2718(&mut raw.as_slice()).unwrap();
    let signed = envelope.as_eip1559().unwrap();
    let sig = signed.signature();
    let n = U256::from_str_radix(
        "FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141",
        16,
    )
    .unwrap();
    let high = Signature::new(sig.r(), n - sig.s(), !sig.v());
    let malleated = TxEnvelope::Eip1559(Signed::new_unhashed(signed.tx().clone(), high));
    conn.execute(
        "UPDATE transactions SET raw = ?1 WHERE hash = ?2",
        rusqlite::params![malleated.encoded_2718(), hash],
    )
    .unwrap();
    let err = chain.verify().unwrap_err();
    assert!(err.to_string().contains("(EIP-2)"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reordered_transactions_fail_block_verification() {
    let f = Fixture::embedded().await;
    let id = f.approved_study(units(1), units(1), U256::ZERO).await;
    let receipts = reserve_all(&f, id, 8, "order").await;
    let block = receipts[0].block_number;
    assert!(
        receipts.iter().all(|r| r.block_number == block),
        "one block"
    );
    let path = f.dir.as_ref().unwrap().path().join("chain.db");
    let chain = EmbeddedLedger::open(&path, 1_337_001).unwrap();
    chain.verify().unwrap();
    // Swap the block's first two transactions: each is still validly
    // signed, but the block's hash commits to their order.
    let conn = rusqlite::Connection::open(&path).unwrap();
    for (from, to) in [(0, -1), (1, 0), (-1, 1)] {
        conn.execute(
            "UPDATE transactions SET tx_index = ?3 WHERE block_number = ?1 AND tx_index = ?2",
            rusqlite::params![block as i64, from, to],
        )
        .unwrap();
    }
    let err = chain.verify().unwrap_err();
    assert!(
        err.to_string().contains(&format!("block {block}:")),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chain_without_transaction_order_is_refused_with_its_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("chain.db");
    rusqlite::Connection::open(&path)
        .unwrap()
        .execute_batch(
            "CREATE TABLE transactions (hash BLOB PRIMARY KEY, block_number INTEGER NOT NULL, \
             sender BLOB NOT NULL, recipient BLOB, contract_address BLOB, \
             gas_used INTEGER NOT NULL, raw BLOB NOT NULL) WITHOUT ROWID;",
        )
        .unwrap();
    let err = EmbeddedLedger::open(&path, 1_337_001)
        .err()
        .expect("refused");
    assert!(err.to_string().contains("earlier cohort"), "{err}");
    assert!(
        err.to_string().contains(&path.display().to_string()),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_over_the_block_gas_limit_fills_consecutive_blocks() {
    let f = Fixture::embedded().await;
    let id = f.approved_study(units(1), units(1), U256::ZERO).await;
    let head = f.ledger.block_number().await.unwrap();
    let receipts = reserve_all(&f, id, 600, "gas").await;
    let last = f.ledger.block_number().await.unwrap();
    assert!(last > head + 1, "600 reservations do not fit one block");
    let mut gas = std::collections::BTreeMap::<u64, u64>::new();
    for r in &receipts {
        *gas.entry(r.block_number).or_default() += r.gas_used;
    }
    assert_eq!(
        gas.keys().copied().collect::<Vec<_>>(),
        (head + 1..=last).collect::<Vec<_>>(),
        "consecutive blocks, in the order sent"
    );
    assert!(gas.values().all(|&g| g <= BLOCK_GAS_LIMIT), "{gas:?}");
    assert!(
        receipts
            .windows(2)
            .all(|w| w[0].block_number <= w[1].block_number)
    );
    assert_eq!(f.client.study(id).await.unwrap().openReservations, 600);
}
