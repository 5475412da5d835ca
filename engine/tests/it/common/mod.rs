//! What the engine's integration tests share: a data directory with a
//! small ingested cohort and the contracts deployed on its embedded chain.

// Each test module uses only a part of it.
#![allow(dead_code)]

use cohort_engine::chain::{self, DeployRequest};
use cohort_engine::keys::keystore::KdfParams;
use cohort_engine::records::vault::{Access, Vault};
use cohort_engine::{DataDir, records::generate, records::ingest};
use cohort_ledger_bridge::Client;

/// A keystore KDF cheap enough for tests.
pub const FAST_KDF: KdfParams = KdfParams {
    m_cost_kib: 1024,
    t_cost: 1,
    p_cost: 1,
};

/// A data directory (unlocked with `pw`) holding `patients` synthetic
/// patients, its contracts deployed by `operator` (one steward approval).
pub struct Deployed {
    pub tmp: tempfile::TempDir,
    pub dir: DataDir,
    pub vault: Vault,
    pub rt: tokio::runtime::Runtime,
    pub client: Client,
}

pub fn deployed(patients: u64) -> Deployed {
    let tmp = tempfile::tempdir().unwrap();
    let dir = DataDir::open(&tmp.path().join("data")).unwrap();
    let vault = dir.unlock_with("pw", FAST_KDF).unwrap();
    let bundles = tmp.path().join("bundles");
    generate::generate(&generate::Options::new(patients, 5, &bundles)).unwrap();
    ingest::ingest_paths(
        &vault,
        &Access::new("operator", "ingest"),
        &[bundles],
        false,
    )
    .unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(chain::deploy(
        &dir,
        vault.conn(),
        vault.keys(),
        &DeployRequest {
            rpc_url: None,
            approvals: 1,
            confirmations: None,
            admin: "operator".into(),
            redeploy: false,
        },
    ))
    .unwrap();
    let (_, client) = rt.block_on(chain::client(&dir)).unwrap();
    Deployed {
        tmp,
        dir,
        vault,
        rt,
        client,
    }
}

impl Deployed {
    /// The account `name` (created on first use), as an actor.
    pub fn actor(&self, name: &str) -> cohort_engine::access::Actor {
        cohort_engine::access::Actor::from_account(
            cohort_engine::keys::accounts::get_or_create(
                self.vault.conn(),
                self.vault.keys(),
                name,
            )
            .unwrap(),
        )
    }

    /// The first Observation of the cohort: its patient and record ids.
    pub fn first_observation(&self) -> (String, String) {
        self.vault
            .conn()
            .query_row(
                "SELECT patient_id, record_id FROM records WHERE resource_type = 'Observation' ORDER BY record_id LIMIT 1",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap()
    }

    /// `name` linked to vault patient `patient_id`, registered on chain.
    pub fn patient(&self, name: &str, patient_id: &str) -> cohort_engine::access::Actor {
        let patient = cohort_engine::access::Actor::from_account(
            cohort_engine::research::link_patient(self.vault.conn(), &self.vault, name, patient_id)
                .unwrap(),
        );
        self.rt
            .block_on(cohort_engine::access::grants::ensure_patient(
                &self.client,
                &patient,
            ))
            .unwrap();
        patient
    }

    /// The operator grants each role; then `issuer` (holding the issuer
    /// role) attests a credential for 30 days to each of `providers`.
    pub fn roles_and_credentials(
        &self,
        roles: &[(&cohort_engine::access::Actor, cohort_ledger_bridge::Role)],
        issuer: &cohort_engine::access::Actor,
        providers: &[&str],
    ) {
        let admin = self.actor("operator");
        for (who, role) in roles {
            self.rt
                .block_on(
                    self.client
                        .grant_role(admin.account(), *role, who.address()),
                )
                .unwrap();
        }
        let now = self.rt.block_on(self.client.ledger().timestamp()).unwrap();
        for who in providers {
            self.rt
                .block_on(cohort_engine::access::grants::attest_credential(
                    self.vault.conn(),
                    &self.client,
                    issuer,
                    who,
                    "MD",
                    now + 30 * 86_400,
                ))
                .unwrap();
        }
    }
}
