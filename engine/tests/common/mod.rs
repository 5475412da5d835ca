//! What the engine's integration tests share: a data directory with a
//! small ingested cohort and the contracts deployed on its embedded chain.

// Each test binary compiles this module and uses only a part of it.
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
