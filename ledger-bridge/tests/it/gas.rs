//! The gas report: the contract suite run again on the embedded chain
//! through a metering ledger. It checks that the suite calls every
//! state-changing function of the four contracts, and that the table in
//! docs/BENCHMARKS.md is the one the suite measures (within 1%: calldata
//! holding timestamps costs a few gas more or less from run to run).
//!
//! `COHORT_WRITE_GAS_TABLE=1 cargo test --release -p cohort-ledger-bridge
//! --test it gas` rewrites the table.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use cohort_ledger_bridge::alloy::primitives::{Address, B256, Bytes, U256};
use cohort_ledger_bridge::contracts::{Appointments, CohortAccess, PatientRecords, ResearchStudy};
use cohort_ledger_bridge::{
    Account, Backend, ChainLog, Contracts, EmbeddedLedger, Ledger, LogQuery, Receipt, Result,
    Target, Tx,
};

use crate::fixture::Fixture;

const BEGIN: &str = "<!-- gas-table:begin (ledger-bridge/tests/it/gas.rs) -->";
const END: &str = "<!-- gas-table:end -->";

/// One mined transaction: where it went (or what it created), its
/// selector, its gas.
struct Mined {
    to: Option<Address>,
    created: Option<Address>,
    selector: Option<[u8; 4]>,
    gas: u64,
}

/// A ledger that records the gas of every transaction it mines.
struct Metered {
    inner: EmbeddedLedger,
    mined: Mutex<Vec<Mined>>,
}

impl Metered {
    fn record(&self, tx: &Tx, receipt: &Receipt) {
        self.mined.lock().unwrap().push(Mined {
            to: tx.to,
            created: receipt.contract_address,
            selector: tx.input.get(..4).map(|s| s.try_into().unwrap()),
            gas: receipt.gas_used,
        });
    }
}

#[async_trait]
impl Ledger for Metered {
    fn backend(&self) -> Backend {
        self.inner.backend()
    }
    async fn chain_id(&self) -> Result<u64> {
        self.inner.chain_id().await
    }
    async fn block_number(&self) -> Result<u64> {
        self.inner.block_number().await
    }
    async fn block_hash(&self, number: u64) -> Result<Option<B256>> {
        self.inner.block_hash(number).await
    }
    async fn timestamp(&self) -> Result<u64> {
        self.inner.timestamp().await
    }
    async fn now(&self) -> Result<u64> {
        self.inner.now().await
    }
    async fn balance(&self, address: Address) -> Result<U256> {
        self.inner.balance(address).await
    }
    async fn send(&self, from: &Account, tx: Tx) -> Result<Receipt> {
        let receipt = self.inner.send(from, tx.clone()).await?;
        self.record(&tx, &receipt);
        Ok(receipt)
    }
    async fn send_all(&self, txs: Vec<(Account, Tx)>) -> Vec<Result<Receipt>> {
        let sent: Vec<Tx> = txs.iter().map(|(_, tx)| tx.clone()).collect();
        let outcomes = self.inner.send_all(txs).await;
        for (tx, outcome) in sent.iter().zip(&outcomes) {
            if let Ok(receipt) = outcome {
                self.record(tx, receipt);
            }
        }
        outcomes
    }
    async fn call(&self, from: Address, to: Address, input: Bytes) -> Result<Bytes> {
        self.inner.call(from, to, input).await
    }
    async fn logs(&self, query: &LogQuery) -> Result<Vec<ChainLog>> {
        self.inner.logs(query).await
    }
    async fn set_balance(&self, address: Address, wei: U256) -> Result<()> {
        self.inner.set_balance(address, wei).await
    }
    async fn increase_time(&self, seconds: u64) -> Result<()> {
        self.inner.increase_time(seconds).await
    }
    async fn mine(&self) -> Result<u64> {
        self.inner.mine().await
    }
}

/// The function a selector names in `target`.
fn function_name(target: Target, selector: [u8; 4]) -> Option<&'static str> {
    match target {
        Target::Access => CohortAccess::CohortAccessCalls::name_by_selector(selector),
        Target::Records => PatientRecords::PatientRecordsCalls::name_by_selector(selector),
        Target::Study => ResearchStudy::ResearchStudyCalls::name_by_selector(selector),
        Target::Appointments => Appointments::AppointmentsCalls::name_by_selector(selector),
    }
}

fn target_at(contracts: &Contracts, address: Address) -> Option<Target> {
    Target::ALL
        .into_iter()
        .find(|&t| contracts.address(t) == address)
}

/// Every state-changing function in a contract's committed ABI.
fn state_changing(target: Target) -> BTreeSet<String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("artifacts")
        .join(format!("{}.json", target.name()));
    let artifact: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    artifact["abi"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|item| item["type"] == "function")
        .filter(|item| !matches!(item["stateMutability"].as_str(), Some("view" | "pure")))
        .map(|item| item["name"].as_str().unwrap().to_owned())
        .collect()
}

type Gas = BTreeMap<(String, String), Vec<u64>>;

fn render(gas: &Gas) -> String {
    let mut table = String::from(
        "| contract | function | calls | min gas | mean gas | max gas |\n|---|---|---:|---:|---:|---:|\n",
    );
    for ((contract, function), used) in gas {
        let mean = used.iter().sum::<u64>() / used.len() as u64;
        let (min, max) = (used.iter().min().unwrap(), used.iter().max().unwrap());
        table.push_str(&format!(
            "| {contract} | {function} | {} | {min} | {mean} | {max} |\n",
            used.len()
        ));
    }
    table
}

/// The documented table's rows: (contract, function) → (min, mean, max).
fn parse(table: &str) -> BTreeMap<(String, String), [u64; 3]> {
    table
        .lines()
        .skip(2)
        .filter(|l| l.starts_with('|'))
        .map(|line| {
            let cells: Vec<&str> = line.trim_matches('|').split('|').map(str::trim).collect();
            let number = |i: usize| cells[i].parse::<u64>().unwrap();
            (
                (cells[0].to_owned(), cells[1].to_owned()),
                [number(3), number(4), number(5)],
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_function_is_called_and_the_documented_gas_table_is_current() {
    let mut gas = Gas::new();
    for (_name, run) in crate::suite::ALL {
        let dir = tempfile::tempdir().unwrap();
        let metered = Arc::new(Metered {
            inner: EmbeddedLedger::open(&dir.path().join("chain.db"), 1_337_001).unwrap(),
            mined: Mutex::new(Vec::new()),
        });
        let f =
            Fixture::with_ledger(Arc::clone(&metered) as Arc<dyn Ledger>, None, Some(dir)).await;
        run(&f).await;
        let contracts = *f.client.contracts();
        for m in metered.mined.lock().unwrap().iter() {
            let key = match (m.to, m.created) {
                (None, Some(created)) => {
                    let target = target_at(&contracts, created).expect("deployed by the fixture");
                    (target.name().to_owned(), "(deployment)".to_owned())
                }
                (Some(to), _) => {
                    let target = target_at(&contracts, to).expect("a cohort contract");
                    let selector = m.selector.expect("calls carry a selector");
                    let function = function_name(target, selector).expect("a known selector");
                    (target.name().to_owned(), function.to_owned())
                }
                (None, None) => panic!("a deployment without a contract"),
            };
            gas.entry(key).or_default().push(m.gas);
        }
    }

    for target in Target::ALL {
        let called: BTreeSet<String> = gas
            .keys()
            .filter(|(contract, _)| contract == target.name())
            .map(|(_, function)| function.clone())
            .collect();
        let uncalled: Vec<_> = state_changing(target)
            .difference(&called)
            .cloned()
            .collect();
        assert!(
            uncalled.is_empty(),
            "the suite never calls {}: {uncalled:?}",
            target.name()
        );
    }

    let table = render(&gas);
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/BENCHMARKS.md");
    let doc = std::fs::read_to_string(&path).unwrap();
    let (start, end) = match (doc.find(BEGIN), doc.find(END)) {
        (Some(start), Some(end)) => (start + BEGIN.len() + 1, end),
        _ => panic!("docs/BENCHMARKS.md has no gas table between {BEGIN} and {END}"),
    };
    if std::env::var_os("COHORT_WRITE_GAS_TABLE").is_some() {
        let updated = format!("{}{table}{}", &doc[..start], &doc[end..]);
        std::fs::write(&path, updated).unwrap();
        return;
    }
    let documented = parse(&doc[start..end]);
    let measured = parse(&table);
    if parse(&doc[start..end]) != measured {
        // Shown with --nocapture, for whoever updates the table by hand.
        eprintln!("the measured gas table:\n{table}");
    }
    assert_eq!(
        documented.keys().collect::<Vec<_>>(),
        measured.keys().collect::<Vec<_>>(),
        "the documented gas table lists other functions; rewrite it with COHORT_WRITE_GAS_TABLE=1"
    );
    for (key, [min, mean, max]) in &measured {
        let doc = documented[key];
        for (what, (now, then)) in
            ["min", "mean", "max"]
                .iter()
                .zip([(*min, doc[0]), (*mean, doc[1]), (*max, doc[2])])
        {
            assert!(
                now.abs_diff(then) * 100 <= then,
                "{key:?} {what} gas is {now}, documented {then}; rewrite with COHORT_WRITE_GAS_TABLE=1"
            );
        }
    }
}
