//! The engine's integration tests: one binary, a module per part of the
//! foundation. Tests that need a real external tool (Debian's `ipfs_cid`) fail
//! with instructions when it is missing rather than skip.

mod access;
mod appointments;
mod audit;
mod chaos;
mod cid;
mod cli;
mod compliance;
mod encrypted;
mod faults;
mod fhir;
mod generate;
mod geo;
mod identifiers;
mod ingest;
mod invariant;
mod keys;
mod ledger;
mod notebooks;
mod omop;
mod owner;
mod privacy_audit;
mod query;
mod recovery;
mod research;
mod server;
mod server_auth;
mod server_load;
mod steward;
mod vault;
mod web;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use cohort_engine::DataDir;
use cohort_engine::keys::keystore::KdfParams;
use cohort_engine::records::vault::{Access, Vault};

/// Cheap argon2id costs: these tests exercise the vault, not the KDF.
pub(crate) const FAST_KDF: KdfParams = KdfParams {
    m_cost_kib: 1024,
    t_cost: 1,
    p_cost: 1,
};
pub(crate) const PASSPHRASE: &str = "integration-test passphrase";

/// A fresh data directory and an unlocked vault in it.
pub(crate) fn vault() -> (tempfile::TempDir, DataDir, Vault) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = DataDir::open(&tmp.path().join("data")).unwrap();
    let vault = dir.unlock_with(PASSPHRASE, FAST_KDF).unwrap();
    (tmp, dir, vault)
}

pub(crate) fn access() -> Access {
    Access::new("tester", "testing")
}

/// Runs the `cohort` binary against `data_dir` with the test passphrase.
pub(crate) fn cohort(data_dir: &Path, args: &[&str]) -> Output {
    cohort_env(data_dir, args, &[])
}

/// [`cohort`] with these environment variables set as well.
pub(crate) fn cohort_env(data_dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cohort"))
        .arg("--data-dir")
        .arg(data_dir)
        .args(args)
        .env("COHORT_PASSPHRASE", PASSPHRASE)
        .env_remove("COHORT_DATA_DIR")
        .env_remove("COHORT_PASSPHRASE_FILE")
        .envs(env.iter().copied())
        .output()
        .expect("the cohort binary runs")
}

/// Asserts that `o` failed and that its stderr names `what`.
pub(crate) fn assert_fails_with(o: &Output, what: &str) {
    assert!(
        !o.status.success(),
        "succeeded; expected an error naming {what:?}"
    );
    assert!(stderr(o).contains(what), "{}", stderr(o));
}

pub(crate) fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub(crate) fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Runs `cohort ... --json` and parses its output; panics with stderr on failure.
pub(crate) fn cohort_json(data_dir: &Path, args: &[&str]) -> serde_json::Value {
    let mut all = args.to_vec();
    all.push("--json");
    let o = cohort(data_dir, &all);
    assert!(o.status.success(), "cohort {args:?} failed: {}", stderr(&o));
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {}", stdout(&o)))
}

/// A column of a record batch as its concrete Arrow array type.
pub(crate) fn column<'a, T: 'static>(
    batch: &'a arrow::record_batch::RecordBatch,
    name: &str,
) -> &'a T {
    batch
        .column_by_name(name)
        .unwrap_or_else(|| panic!("no column `{name}`"))
        .as_any()
        .downcast_ref::<T>()
        .unwrap_or_else(|| panic!("column `{name}` has another type"))
}

/// A small synthetic cohort written to `<tmp>/bundles`.
pub(crate) fn bundles(tmp: &Path, patients: u64, seed: u64) -> PathBuf {
    let out = tmp.join(format!("bundles-{patients}-{seed}"));
    let mut opts = cohort_engine::records::generate::Options::new(patients, seed, &out);
    opts.per_bundle = 25;
    cohort_engine::records::generate::generate(&opts).unwrap();
    out
}

/// The patients of the bundle files in `dir`, parsed from the files
/// themselves: their identifiers as the source holds them (the projection
/// keeps them sealed), sorted by patient id.
pub(crate) fn source_patients(dir: &Path) -> Vec<cohort_engine::records::projection::PatientRow> {
    use cohort_engine::records::projection::Row;
    let mut out = Vec::new();
    for file in cohort_engine::records::ingest::bundle_files(&[dir.to_owned()]).unwrap() {
        let bytes = std::fs::read(&file).unwrap();
        let bundle =
            cohort_engine::records::fhir::parse_bundle(&file.display().to_string(), &bytes)
                .unwrap();
        out.extend(bundle.resources.into_iter().filter_map(|r| match r.row {
            Row::Patient(p) => Some(p),
            _ => None,
        }));
    }
    out.sort_by(|a, b| a.patient_id.cmp(&b.patient_id));
    out
}
