//! A deployed set of contracts with a cast of funded accounts, on either
//! backend: a fresh embedded chain in a temporary directory, or a fresh
//! anvil (the real node from the npm package).

use std::sync::Arc;

use cohort_ledger_bridge::alloy::primitives::{Address, B256, U256, keccak256};
use cohort_ledger_bridge::alloy::sol_types::SolError;
use cohort_ledger_bridge::anvil::Anvil;
use cohort_ledger_bridge::contracts::{CohortAccess, ResearchStudy};
use cohort_ledger_bridge::{
    Account, Backend, Client, Cost, EmbeddedLedger, Error, Ledger, Receipt, Role, RpcLedger, Target,
};

/// One ether in wei.
pub fn ether(n: u64) -> U256 {
    U256::from(n) * U256::from(10u64).pow(U256::from(18))
}

/// A privacy amount in the contract's fixed point (`units(1) == 1e18`).
pub fn units(n: u128) -> u128 {
    n * 1_000_000_000_000_000_000
}

/// A pure-ε cost.
pub fn eps(n: u128) -> Cost {
    Cost {
        primary: n,
        delta: 0,
    }
}

pub struct Fixture {
    pub client: Client,
    pub ledger: Arc<dyn Ledger>,
    pub admin: Account,
    pub engine: Account,
    pub researcher: Account,
    pub stewards: Vec<Account>,
    pub patients: Vec<Account>,
    pub providers: Vec<Account>,
    pub issuer: Account,
    pub auditor: Account,
    pub outsider: Account,
    /// The node, for anvil fixtures (stopped when the fixture drops).
    pub anvil: Option<Anvil>,
    /// The chain's directory, for embedded fixtures.
    pub dir: Option<tempfile::TempDir>,
}

/// A deterministic account: its key is a hash of its name.
pub fn account(name: &str) -> Account {
    Account::from_secret(name, &keccak256(format!("cohort test account {name}")).0).unwrap()
}

impl Fixture {
    pub async fn embedded() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let ledger = EmbeddedLedger::open(&dir.path().join("chain.db"), 1_337_001).unwrap();
        Fixture::with_ledger(Arc::new(ledger), None, Some(dir)).await
    }

    pub async fn anvil() -> Fixture {
        let anvil = Anvil::spawn(&[]).unwrap();
        let ledger = RpcLedger::connect(anvil.url()).unwrap();
        Fixture::with_ledger(Arc::new(ledger), Some(anvil), None).await
    }

    /// Deploys the contracts on `ledger` and funds and enrols the cast.
    pub async fn with_ledger(
        ledger: Arc<dyn Ledger>,
        anvil: Option<Anvil>,
        dir: Option<tempfile::TempDir>,
    ) -> Fixture {
        let admin = account("admin");
        let stewards: Vec<Account> = (0..3).map(|i| account(&format!("steward{i}"))).collect();
        let patients: Vec<Account> = (0..3).map(|i| account(&format!("patient{i}"))).collect();
        let providers: Vec<Account> = (0..2).map(|i| account(&format!("provider{i}"))).collect();
        let (engine, researcher, issuer, auditor, outsider) = (
            account("engine"),
            account("researcher"),
            account("issuer"),
            account("auditor"),
            account("outsider"),
        );
        let everyone: Vec<&Account> = [&admin, &engine, &researcher, &issuer, &auditor, &outsider]
            .into_iter()
            .chain(&stewards)
            .chain(&patients)
            .chain(&providers)
            .collect();
        for a in &everyone {
            ledger.set_balance(a.address(), ether(100)).await.unwrap();
        }
        let client = Client::deploy(Arc::clone(&ledger), &admin, 2)
            .await
            .unwrap();
        let grants = [
            (Role::Engine, vec![&engine]),
            (Role::Researcher, vec![&researcher]),
            (Role::Issuer, vec![&issuer]),
            (Role::Auditor, vec![&auditor]),
            (Role::Steward, stewards.iter().collect()),
            (Role::Provider, providers.iter().collect()),
        ];
        for (role, accounts) in grants {
            for a in accounts {
                client.grant_role(&admin, role, a.address()).await.unwrap();
            }
        }
        for p in &patients {
            client
                .send(p, Target::Access, CohortAccess::registerPatientCall {})
                .await
                .unwrap();
        }
        Fixture {
            client,
            ledger,
            admin,
            engine,
            researcher,
            stewards,
            patients,
            providers,
            issuer,
            auditor,
            outsider,
            anvil,
            dir,
        }
    }

    /// The latest block's time.
    pub async fn now(&self) -> u64 {
        self.ledger.timestamp().await.unwrap()
    }

    /// The issuer credentials both providers for a year.
    pub async fn credential_providers(&self) {
        let until = self.now().await + 365 * 86_400;
        for p in &self.providers {
            self.client
                .send(
                    &self.issuer,
                    Target::Access,
                    CohortAccess::attestCredentialCall {
                        provider: p.address(),
                        licenseHash: keccak256(p.name()),
                        expiresAt: until,
                    },
                )
                .await
                .unwrap();
        }
    }

    /// A pure-ε proposal: budget `budget`, per-query cap `cap`, 30 days,
    /// no fee, microdata with k ≥ 2 and at most 10 extracts.
    pub fn proposal(budget: u128, cap: u128) -> ResearchStudy::Proposal {
        ResearchStudy::Proposal {
            purposeHash: keccak256("diabetes outcomes"),
            scopeHash: keccak256("tables: visits"),
            purposes: U256::from(0b11),
            kind: 0,
            budget,
            deltaBudget: 0,
            queryCap: cap,
            deltaQueryCap: 0,
            duration: 30 * 86_400,
            microdata: true,
            feePerUnit: U256::ZERO,
            minK: 2,
            maxExtracts: 10,
        }
    }

    /// Proposes `proposal` with `escrow` and has two stewards approve it.
    pub async fn approve(&self, proposal: ResearchStudy::Proposal, escrow: U256) -> u64 {
        let id = self
            .client
            .propose_study(&self.researcher, proposal, escrow)
            .await
            .unwrap();
        for s in &self.stewards[..2] {
            self.client.approve_study(s, id).await.unwrap();
        }
        id
    }

    /// An approved study whose queries cost `fee_per_unit` wei per ε.
    pub async fn paid_study(
        &self,
        budget: u128,
        cap: u128,
        fee_per_unit: U256,
        escrow: U256,
    ) -> u64 {
        let proposal = ResearchStudy::Proposal {
            feePerUnit: fee_per_unit,
            ..Fixture::proposal(budget, cap)
        };
        self.approve(proposal, escrow).await
    }

    /// A study proposed with `escrow` and approved by two stewards.
    pub async fn approved_study(&self, budget: u128, cap: u128, escrow: U256) -> u64 {
        self.approve(Fixture::proposal(budget, cap), escrow).await
    }

    /// A funded account that holds no role (a member of a consenting set
    /// only needs an address to claim from).
    pub async fn funded(&self, name: &str) -> Account {
        let a = account(name);
        self.ledger
            .set_balance(a.address(), ether(100))
            .await
            .unwrap();
        a
    }
}

/// Asserts that `result` is the contract error `name`.
#[track_caller]
pub fn assert_reverts<T: std::fmt::Debug>(result: Result<T, Error>, name: &str) {
    match result {
        Err(Error::Reverted(revert)) => assert_eq!(revert.name, name, "{}", revert.message),
        other => panic!("expected the contract error {name}, got {other:?}"),
    }
}

/// Asserts that `result` is the contract error `E` and returns its
/// arguments.
#[track_caller]
pub fn reverted_with<E: SolError, T: std::fmt::Debug>(result: Result<T, Error>) -> E {
    match result {
        Err(Error::Reverted(revert)) => E::abi_decode(&revert.data)
            .unwrap_or_else(|_| panic!("expected {}, got {}", E::SIGNATURE, revert.message)),
        other => panic!(
            "expected the contract error {}, got {other:?}",
            E::SIGNATURE
        ),
    }
}

/// Asserts that `account`'s balance went from `before` to `after` by
/// receiving `amount` while paying for one transaction: exactly on the
/// embedded chain (gas is free), net of under 0.001 ether of gas on anvil.
#[track_caller]
pub fn assert_received(f: &Fixture, before: U256, after: U256, amount: U256) {
    if matches!(f.ledger.backend(), Backend::Embedded { .. }) {
        assert_eq!(after, before + amount);
    } else {
        assert!(after + U256::from(10u64.pow(15)) > before + amount && after <= before + amount);
    }
}

/// The number of logs in `receipt` with `topic0`.
pub fn count_events(receipt: &Receipt, topic0: B256) -> usize {
    receipt
        .logs
        .iter()
        .filter(|l| l.log.topics().first() == Some(&topic0))
        .count()
}

pub fn query_id(name: &str) -> B256 {
    keccak256(name)
}

pub fn addr(a: &Account) -> Address {
    a.address()
}
