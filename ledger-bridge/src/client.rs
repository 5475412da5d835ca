//! `Client`: the deployed contracts on one ledger, called with alloy's
//! generated call types and decoded results, plus the research path's
//! calls by name.

use std::sync::Arc;

use alloy::primitives::{Address, B256, U256};
use alloy::sol_types::{SolCall, SolEvent};

use crate::contracts::{CohortAccess, Contracts, Event, ResearchStudy, Role, Target, init_code};
use crate::error::{Error, Result};
use crate::ledger::{Account, Ledger, Receipt, Tx};

/// One unit of a privacy amount in the contract's fixed point (ε 1 or ρ 1).
pub const PRIVACY_UNIT: u128 = 1_000_000_000_000_000_000;

/// The fee `ResearchStudy.reserve` holds for a query costing `cost_units`
/// (ε or ρ in 1e18 fixed point) in a study whose `feePerUnit` is
/// `fee_per_unit` wei per unit: `fee_per_unit * cost_units / 1e18`, rounded
/// down, exactly as the contract computes it. It depends on the cost
/// alone, never on the data. The contract refuses a proposal whose
/// `feePerUnit * budget` overflows 256 bits, so for a valid study the
/// product always fits; where it would not, this saturates at `U256::MAX`.
pub fn query_fee(fee_per_unit: U256, cost_units: u128) -> U256 {
    fee_per_unit
        .checked_mul(U256::from(cost_units))
        .map_or(U256::MAX, |product| product / U256::from(PRIVACY_UNIT))
}

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

    /// `admin` takes `role` from `account`.
    pub async fn revoke_role(
        &self,
        admin: &Account,
        role: Role,
        account: Address,
    ) -> Result<Receipt> {
        self.send(
            admin,
            Target::Access,
            CohortAccess::revokeRoleCall {
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

    /// The engine reserves `cost` for query `query` of study `id`; the
    /// contract holds the query's fee, [`query_fee`] of the study's
    /// `feePerUnit` and `cost.primary`, out of the escrow (refused with
    /// `InsufficientEscrow` if the escrow cannot pay it).
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

    /// The engine commits query `query`'s debit with its result hash and
    /// the study's consenting set at the time of the query: `members`
    /// patients, whose [`MemberTree`](crate::merkle::MemberTree) has root
    /// `members_root`. The contract pays each member an equal share of the
    /// fee it held at the reservation (the remainder of the division goes
    /// back to the escrow; all of it when `members` is 0).
    pub async fn commit(
        &self,
        engine: &Account,
        id: u64,
        query: B256,
        result_hash: B256,
        members_root: B256,
        members: u64,
    ) -> Result<Receipt> {
        self.send(
            engine,
            Target::Study,
            ResearchStudy::commitCall {
                studyId: U256::from(id),
                queryId: query,
                resultHash: result_hash,
                membersRoot: members_root,
                members,
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

    /// A member of query `query`'s consenting set claims their equal share
    /// of its fee with `proof` (from [`MemberTree::proof`](crate::merkle::MemberTree::proof)).
    pub async fn claim(
        &self,
        patient: &Account,
        id: u64,
        query: B256,
        proof: Vec<B256>,
    ) -> Result<Receipt> {
        self.send(
            patient,
            Target::Study,
            ResearchStudy::claimCall {
                studyId: U256::from(id),
                queryId: query,
                proof,
            },
        )
        .await
    }

    /// A patient declares on chain that they shared a value of the
    /// encrypted column `column` (the keccak256 of its name) with study
    /// `id`, committing to `value_hash`, the hash of its ciphertext. A later
    /// share replaces the earlier one.
    pub async fn share_encrypted(
        &self,
        patient: &Account,
        id: u64,
        column: B256,
        value_hash: B256,
    ) -> Result<Receipt> {
        self.send(
            patient,
            Target::Study,
            ResearchStudy::shareEncryptedCall {
                studyId: U256::from(id),
                column,
                valueHash: value_hash,
            },
        )
        .await
    }

    /// The ciphertext hash `patient` shared for `column` of study `id`
    /// (zero if none).
    pub async fn shared_value(&self, id: u64, column: B256, patient: Address) -> Result<B256> {
        self.view(
            Target::Study,
            ResearchStudy::sharedValueCall {
                studyId: U256::from(id),
                column,
                patient,
            },
        )
        .await
    }

    /// Query `query` as stored on chain (its state, cost, fee, members).
    pub async fn query(&self, query: B256) -> Result<ResearchStudy::Query> {
        self.view(Target::Study, ResearchStudy::queryOfCall { queryId: query })
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

#[cfg(test)]
mod tests {
    use super::*;

    fn ether_fraction(numerator: u64, denominator: u64) -> U256 {
        U256::from(10u64.pow(18)) * U256::from(numerator) / U256::from(denominator)
    }

    #[test]
    fn the_fee_is_proportional_to_the_cost_and_rounds_down() {
        // 0.1 ether per ε: ε 0.5 costs 0.05 ether, ε 1 costs 0.1 ether.
        let per_unit = ether_fraction(1, 10);
        assert_eq!(query_fee(per_unit, PRIVACY_UNIT / 2), ether_fraction(1, 20));
        assert_eq!(query_fee(per_unit, PRIVACY_UNIT), per_unit);
        assert_eq!(
            query_fee(per_unit, 19),
            U256::from(1),
            "1.9 wei rounds down"
        );
        assert_eq!(query_fee(per_unit, 9), U256::ZERO);
        assert_eq!(query_fee(U256::ZERO, PRIVACY_UNIT), U256::ZERO);
        // Where the contract's product would overflow (a proposal it refuses).
        assert_eq!(query_fee(U256::MAX, 2), U256::MAX);
        assert_eq!(
            query_fee(U256::MAX / U256::from(u128::MAX), u128::MAX),
            U256::MAX / U256::from(u128::MAX) * U256::from(u128::MAX) / U256::from(PRIVACY_UNIT)
        );
    }
}
