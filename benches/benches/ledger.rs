//! The ledger's hot paths: one budget reservation as a mined transaction
//! (sign, recover, execute in revm, persist the block in SQLite with an
//! fsync) on the embedded chain and on anvil; a query's whole debit
//! (reserve then commit), alone and 64 at once; and one read-only call.
//!
//! `cargo bench -p cohort-benches --bench ledger` (needs `npm ci` in
//! `ledger-bridge/contracts` for anvil)

use std::sync::Arc;

use cohort_ledger_bridge::alloy::primitives::{U256, keccak256};
use cohort_ledger_bridge::anvil::Anvil;
use cohort_ledger_bridge::contracts::ResearchStudy;
use cohort_ledger_bridge::{Account, Client, Cost, EmbeddedLedger, Ledger, Role, RpcLedger};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

fn account(name: &str) -> Account {
    Account::from_secret(name, &keccak256(name).0).unwrap()
}

/// A deployed study with a budget no benchmark run exhausts.
async fn study(ledger: Arc<dyn Ledger>) -> (Client, Account, u64) {
    let (admin, researcher, engine) = (account("admin"), account("researcher"), account("engine"));
    let stewards = [account("steward0"), account("steward1")];
    for a in [&admin, &researcher, &engine, &stewards[0], &stewards[1]] {
        ledger
            .set_balance(a.address(), U256::from(10u64).pow(U256::from(22)))
            .await
            .unwrap();
    }
    let client = Client::deploy(ledger, &admin, 2).await.unwrap();
    client
        .grant_role(&admin, Role::Engine, engine.address())
        .await
        .unwrap();
    client
        .grant_role(&admin, Role::Researcher, researcher.address())
        .await
        .unwrap();
    for s in &stewards {
        client
            .grant_role(&admin, Role::Steward, s.address())
            .await
            .unwrap();
    }
    let proposal = ResearchStudy::Proposal {
        purposeHash: keccak256("bench"),
        scopeHash: keccak256("bench"),
        purposes: U256::from(1),
        kind: 0,
        budget: u128::MAX / 2,
        deltaBudget: 0,
        queryCap: 1,
        deltaQueryCap: 0,
        duration: 365 * 86_400,
        microdata: false,
        feePerUnit: U256::ZERO,
        minK: 0,
        maxExtracts: 0,
    };
    let id = client
        .propose_study(&researcher, proposal, U256::ZERO)
        .await
        .unwrap();
    for s in &stewards {
        client.approve_study(s, id).await.unwrap();
    }
    (client, engine, id)
}

/// One query's on-chain debit: reserve its cost, then commit it.
async fn debit(client: &Client, engine: &Account, id: u64, n: u64) {
    let query = keccak256(n.to_be_bytes());
    client
        .reserve(
            engine,
            id,
            query,
            Cost {
                primary: 1,
                delta: 0,
            },
        )
        .await
        .unwrap();
    client
        .commit(
            engine,
            id,
            query,
            keccak256("answer"),
            keccak256("root"),
            1_000,
        )
        .await
        .unwrap();
}

fn ledger(c: &mut Criterion) {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let embedded: Arc<dyn Ledger> =
        Arc::new(EmbeddedLedger::open(&dir.path().join("chain.db"), 1_337_001).unwrap());
    let anvil = Anvil::spawn(&[]).unwrap();
    let rpc: Arc<dyn Ledger> = Arc::new(RpcLedger::connect(anvil.url()).unwrap());

    let mut group = c.benchmark_group("ledger");
    group.sample_size(20);
    for (name, ledger) in [("embedded", embedded), ("anvil", rpc)] {
        let (client, engine, id) = runtime.block_on(study(ledger));
        let mut n = 0u64;
        group.throughput(Throughput::Elements(1));
        group.bench_function(format!("{name}/reserve_tx"), |b| {
            b.iter(|| {
                n += 1;
                let query = keccak256(n.to_be_bytes());
                runtime
                    .block_on(client.reserve(
                        &engine,
                        id,
                        query,
                        Cost {
                            primary: 1,
                            delta: 0,
                        },
                    ))
                    .unwrap()
            })
        });
        // The latency one query pays: its reserve and commit, alone.
        group.bench_function(format!("{name}/debit"), |b| {
            b.iter(|| {
                n += 1;
                runtime.block_on(debit(&client, &engine, id, n))
            })
        });
        // Throughput: 64 queries debiting at once share blocks.
        const CONCURRENT: u64 = 64;
        group.throughput(Throughput::Elements(CONCURRENT));
        group.bench_function(format!("{name}/debits_64_concurrent"), |b| {
            b.iter(|| {
                let start = n;
                n += CONCURRENT;
                runtime.block_on(futures::future::join_all(
                    (start..start + CONCURRENT).map(|i| debit(&client, &engine, id, i + 1)),
                ))
            })
        });
        group.throughput(Throughput::Elements(1));
        group.bench_function(format!("{name}/remaining_call"), |b| {
            b.iter(|| runtime.block_on(client.remaining(id)).unwrap())
        });
    }
    group.finish();
}

criterion_group!(benches, ledger);
criterion_main!(benches);
