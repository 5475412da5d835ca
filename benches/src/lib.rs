//! # cohort-benches
//!
//! Criterion benchmarks of cohort's hot paths (run with `cargo bench -p
//! cohort-benches`) and the scripts that compare cohort with peer systems.
//! Every figure in `docs/BENCHMARKS.md` names the command that produced it.

use std::path::Path;

use cohort_engine::DataDir;
use cohort_engine::keys::keystore::KdfParams;
use cohort_engine::records::vault::{Access, Vault};
use cohort_engine::records::{generate, ingest};

/// A cheap passphrase KDF: the benches time the work, not the unlock.
pub const FAST_KDF: KdfParams = KdfParams {
    m_cost_kib: 1024,
    t_cost: 1,
    p_cost: 1,
};

/// `patients` synthetic patients (generator seed `seed`) ingested into a
/// fresh data directory under `tmp`, with no ledger.
pub fn ingested(tmp: &Path, patients: u64, seed: u64) -> anyhow::Result<(DataDir, Vault)> {
    let bundles = tmp.join("bundles");
    generate::generate(&generate::Options::new(patients, seed, &bundles))?;
    let dir = DataDir::open(&tmp.join("data"))?;
    let vault = dir.unlock_with("pw", FAST_KDF)?;
    ingest::ingest_paths(
        &vault,
        &Access::new("operator", "ingest"),
        std::slice::from_ref(&bundles),
        false,
    )?;
    Ok((dir, vault))
}
