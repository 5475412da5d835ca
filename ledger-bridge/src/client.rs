//! `Client`: the deployed contracts on one ledger, called with alloy's
//! generated call types and decoded results, plus the research path's
//! calls by name.

use std::sync::Arc;

use alloy::primitives::{Address, B256, U256};
use alloy::sol_types::{SolCall, SolEvent};

use crate::contracts::{CohortAccess, Contracts, Event, ResearchStudy, Role, Target, init_code};
use crate::error::{Error, Result};
use crate::ledger::{Account, Ledger, Receipt, Tx};

/// The contracts on a ledger.
#[derive(Clone)]
pub struct Client {
    ledger: Arc<dyn Ledger>,
    contracts: Contracts,
}

/// A privacy cost in the contract's fixed-point units (1e18 = 1): ε or ρ,
/// and δ.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Cost {
    /// ε, or ρ for a zCDP study.
    pub primary: u128,
    /// δ (zero unless the study's budget is (ε, δ)).
    pub delta: u128,
}

impl Client {
    /// Deploys the four contracts from `admin` (who becomes their admin),
    /// with `required_approvals` stewards to approve a study.
    pub async fn deploy(
        ledger: Arc<dyn Ledger>,
        admin: &Account,
        required_approvals: u8,
    ) -> Result<Client> {
        if required_approvals == 0 {
            return Err(Error::Config(
                "a study needs at least one steward's approval".into(),
            ));
        }
        let mut addresses = Vec::with_capacity(4);
        let mut deployed_at = None;
        for target in Target::ALL {
            let access = addresses.first().copied().unwrap_or(Address::ZERO);
            let receipt = ledger
                .send(
                    admin,
                    Tx {
                        to: None,
                        input: init_code(target, admin.address(), access, required_approvals),
                        value: U256::ZERO,
                    },
                )
                .await?;
            let address = receipt.contract_address.ok_or_else(|| {
                Error::Rejected(format!("deploying {} created no contract", target.name()))
            })?;
            addresses.push(address);
            deployed_at.get_or_insert(receipt.block_number);
        }
        let contracts = Contracts {
            access: addresses[0],
            records: addresses[1],
            study: addresses[2],
            appointments: addresses[3],
            deployed_at: deployed_at.unwrap_or_default(),
        };
        Ok(Client { ledger, contracts })
    }

    /// The contracts at `contracts` on `ledger`.
    pub fn new(ledger: Arc<dyn Ledger>, contracts: Contracts) -> Client {
        Client { ledger, contracts }
    }

    /// The ledger.
    pub fn ledger(&self) -> &Arc<dyn Ledger> {
        &self.ledger
    }

    /// The contracts' addresses.
    pub fn contracts(&self) -> &Contracts {
        &self.contracts
    }

    /// Checks that code is deployed at every address (a wrong chain or a
    /// reset node is named, rather than failing later).
    pub async fn verify_deployed(&self) -> Result<()> {
        self.view(Target::Access, CohortAccess::ADMIN_ROLECall {})
            .await
            .map_err(|e| {
                Error::Config(format!(
                    "no cohort contracts at {} on {}: {e} (deploy them with `cohort ledger deploy`)",
                    self.contracts.access,
                    self.ledger.backend()
                ))
            })?;
        Ok(())
    }

    /// Sends `call` to `target` from `from`.
    pub async fn send<C: SolCall>(
        &self,
        from: &Account,
        target: Target,
        call: C,
    ) -> Result<Receipt> {
        self.send_value(from, target, call, U256::ZERO).await
    }

    /// Sends `call` to `target` from `from` with `value` wei.
    pub async fn send_value<C: SolCall>(
        &self,
        from: &Account,
        target: Target,
        call: C,
        value: U256,
    ) -> Result<Receipt> {
        self.ledger
            .send(from, self.tx(target, call).with_value(value))
            .await
    }

    /// The transaction that sends `call` to `target`, for
    /// [`Ledger::send_all`].
    pub fn tx<C: SolCall>(&self, target: Target, call: C) -> Tx {
        Tx {
            to: Some(self.contracts.address(target)),
            input: call.abi_encode().into(),
            value: U256::ZERO,
        }
    }

    /// Reads `call` from `target` (as no particular sender).
    pub async fn view<C: SolCall>(&self, target: Target, call: C) -> Result<C::Return> {
        self.view_as(Address::ZERO, target, call).await
    }

    /// Reads `call` from `target` as `from`.
    pub async fn view_as<C: SolCall>(
        &self,
        from: Address,
        target: Target,
        call: C,
    ) -> Result<C::Return> {
        let out = self
            .ledger
            .call(
                from,
                self.contracts.address(target),
                call.abi_encode().into(),
            )
            .await?;
        C::abi_decode_returns(&out).map_err(|e| Error::decode(C::SIGNATURE, e))
    }

    /// The contracts' events in `receipt`.
    pub fn events(&self, receipt: &Receipt) -> Vec<Event> {
        receipt
            .logs
            .iter()
            .filter_map(|l| self.contracts.decode_event(&l.log))
            .collect()
    }

    // ------------------------------------------------------------- roles

    /// `admin` gives `account` the `role`.
    pub async fn grant_role(
        &self,
        admin: &Account,
        role: Role,
        account: Address,
    ) -> Result<Receipt> {
        self.send(
            admin,
            Target::Access,
            CohortAccess::grantRoleCall {
                role: role.id(),
                account,
            },
        )
        .await
    }

    /// Whether `account` holds `role`.
    pub async fn has_role(&self, role: Role, account: Address) -> Result<bool> {
        self.view(
            Target::Access,
            CohortAccess::hasRoleCall {
                role: role.id(),
                account,
            },
        )
        .await
    }

    // ------------------------------------------------------ research path

    /// `researcher` proposes a study with `escrow` wei; returns its id.
    pub async fn propose_study(
        &self,
        researcher: &Account,
        proposal: ResearchStudy::Proposal,
        escrow: U256,
    ) -> Result<u64> {
        let receipt = self
            .send_value(
                researcher,
                Target::Study,
                ResearchStudy::proposeStudyCall { p: proposal },
                escrow,
            )
            .await?;
        receipt
            .logs
            .iter()
            .find_map(|l| ResearchStudy::StudyProposed::decode_log(&l.log).ok())
            .map(|e| e.data.studyId.to::<u64>())
            .ok_or_else(|| Error::decode("the proposal's receipt", "no StudyProposed event"))
    }

    /// A steward approves study `id`.
    pub async fn approve_study(&self, steward: &Account, id: u64) -> Result<Receipt> {
        self.send(
            steward,
            Target::Study,
            ResearchStudy::approveStudyCall {
                studyId: U256::from(id),
            },
        )
        .await
    }

    /// A patient consents to study `id` for `purposes` until `expires_at`.
    pub async fn consent(
        &self,
        patient: &Account,
        id: u64,
        purposes: U256,
        expires_at: u64,
    ) -> Result<Receipt> {
        self.send(
            patient,
            Target::Study,
            ResearchStudy::consentCall {
                studyId: U256::from(id),
                purposes,
                expiresAt: expires_at,
            },
        )
        .await
    }

    /// A patient withdraws from study `id`.
    pub async fn withdraw(&self, patient: &Account, id: u64) -> Result<Receipt> {
        self.send(
            patient,
            Target::Study,
            ResearchStudy::withdrawCall {
                studyId: U256::from(id),
            },
        )
        .await
    }

    /// Whether `patient`'s consent covers study `id` now.
    pub async fn has_consent(&self, id: u64, patient: Address) -> Result<bool> {
        self.view(
            Target::Study,
            ResearchStudy::hasConsentCall {
                studyId: U256::from(id),
                patient,
            },
        )
        .await
    }

    /// The engine reserves `cost` for query `query` of study `id`.
    pub async fn reserve(
        &self,
        engine: &Account,
        id: u64,
        query: B256,
        cost: Cost,
    ) -> Result<Receipt> {
        self.send(
            engine,
            Target::Study,
            ResearchStudy::reserveCall {
                studyId: U256::from(id),
                queryId: query,
                cost: cost.primary,
                deltaCost: cost.delta,
            },
        )
        .await
    }

    /// The engine commits query `query`'s debit with its result hash, the
    /// contributors' root and the fee they share.
    pub async fn commit(
        &self,
        engine: &Account,
        id: u64,
        query: B256,
        result_hash: B256,
        contributors_root: B256,
        fee: U256,
    ) -> Result<Receipt> {
        self.send(
            engine,
            Target::Study,
            ResearchStudy::commitCall {
                studyId: U256::from(id),
                queryId: query,
                resultHash: result_hash,
                contributorsRoot: contributors_root,
                fee,
            },
        )
        .await
    }

    /// The engine releases query `query`'s reservation.
    pub async fn release(&self, engine: &Account, id: u64, query: B256) -> Result<Receipt> {
        self.send(
            engine,
            Target::Study,
            ResearchStudy::releaseCall {
                studyId: U256::from(id),
                queryId: query,
            },
        )
        .await
    }

    /// The engine records a k-anonymous extract of study `id` (the hash of
    /// its bytes, its k, its l or 0, its rows); refused unless the study
    /// allows microdata.
    pub async fn record_release(
        &self,
        engine: &Account,
        id: u64,
        extract_hash: B256,
        k: u32,
        l: u32,
        rows: u64,
    ) -> Result<Receipt> {
        self.send(
            engine,
            Target::Study,
            ResearchStudy::recordReleaseCall {
                studyId: U256::from(id),
                extractHash: extract_hash,
                k,
                l,
                rows,
            },
        )
        .await
    }

    /// A patient claims `amount` of query `query`'s fee with `proof`.
    pub async fn claim(
        &self,
        patient: &Account,
        id: u64,
        query: B256,
        amount: U256,
        proof: Vec<B256>,
    ) -> Result<Receipt> {
        self.send(
            patient,
            Target::Study,
            ResearchStudy::claimCall {
                studyId: U256::from(id),
                queryId: query,
                amount,
                proof,
            },
        )
        .await
    }

    /// Study `id` as stored on chain.
    pub async fn study(&self, id: u64) -> Result<ResearchStudy::Study> {
        self.view(
            Target::Study,
            ResearchStudy::studyOfCall {
                studyId: U256::from(id),
            },
        )
        .await
    }

    /// What is left of study `id`'s budget.
    pub async fn remaining(&self, id: u64) -> Result<Cost> {
        let left = self
            .view(
                Target::Study,
                ResearchStudy::remainingCall {
                    studyId: U256::from(id),
                },
            )
            .await?;
        Ok(Cost {
            primary: left.primary,
            delta: left.delta,
        })
    }
}
