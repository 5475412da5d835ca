//! What the chain's control of clinical records costs, end to end on the
//! embedded chain: ingest with and without anchoring, and the latency of
//! an authorized read (the chain's check, the reader's signed trace
//! transaction, the decryption and the audit entry).
//!
//! `cargo run --release -p cohort-benches --bin clinical-bench -- --patients 2000 --reads 300`

use std::time::Instant;

use clap::Parser;
use cohort_engine::DataDir;
use cohort_engine::access::scope::{ALL_KINDS, Level, Purpose};
use cohort_engine::access::{Actor, grants};
use cohort_engine::chain::{self, DeployRequest};
use cohort_engine::keys::{accounts, keystore::KdfParams};
use cohort_engine::records::clinical::{Clinic, Search};
use cohort_engine::records::vault::Access;
use cohort_engine::records::{anchor, generate, ingest};
use cohort_ledger_bridge::Role;

#[derive(Parser)]
struct Args {
    /// Synthetic patients to ingest.
    #[arg(long, default_value_t = 2_000)]
    patients: u64,
    /// Authorized reads to time.
    #[arg(long, default_value_t = 300)]
    reads: usize,
}

fn deploy(
    dir: &DataDir,
    vault: &cohort_engine::records::vault::Vault,
    rt: &tokio::runtime::Runtime,
) -> anyhow::Result<()> {
    rt.block_on(chain::deploy(
        dir,
        vault.conn(),
        vault.keys(),
        &DeployRequest {
            rpc_url: None,
            approvals: 1,
            confirmations: None,
            admin: "operator".into(),
            redeploy: false,
        },
    ))?;
    Ok(())
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let tmp = tempfile::tempdir()?;
    let bundles = tmp.path().join("bundles");
    let generated = generate::generate(&generate::Options::new(args.patients, 7, &bundles))?;
    let fast = KdfParams {
        m_cost_kib: 1024,
        t_cost: 1,
        p_cost: 1,
    };
    let rt = tokio::runtime::Runtime::new()?;
    let access = Access::new("operator", "ingest");

    // A warm-up ingest (untimed): the page cache, the thread pool.
    let warm = DataDir::open(&tmp.path().join("warm"))?;
    ingest::ingest_paths(
        &warm.unlock_with("pw", fast)?,
        &access,
        std::slice::from_ref(&bundles),
        false,
    )?;

    // Ingest without a ledger: the vault and projection only.
    let plain = DataDir::open(&tmp.path().join("plain"))?;
    let vault = plain.unlock_with("pw", fast)?;
    let t = Instant::now();
    ingest::ingest_paths(&vault, &access, std::slice::from_ref(&bundles), false)?;
    let plain_secs = t.elapsed().as_secs_f64();
    drop(vault);

    // Ingest with the ledger deployed, then the batch anchor.
    let anchored = DataDir::open(&tmp.path().join("anchored"))?;
    let vault = anchored.unlock_with("pw", fast)?;
    deploy(&anchored, &vault, &rt)?;
    let (config, client) = rt.block_on(chain::client(&anchored))?;
    let engine = accounts::get(vault.conn(), vault.keys(), &config.engine)?;
    let t = Instant::now();
    ingest::ingest_paths(&vault, &access, std::slice::from_ref(&bundles), false)?;
    let ingest_secs = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let batch = rt
        .block_on(anchor::anchor_pending(vault.conn(), &client, &engine))?
        .expect("versions to anchor");
    let anchor_secs = t.elapsed().as_secs_f64();

    // A patient, a credentialed provider with a read grant.
    let patient_id: String =
        vault
            .conn()
            .query_row("SELECT patient_id FROM proj_patients LIMIT 1", [], |r| {
                r.get(0)
            })?;
    let patient = Actor::from_account(cohort_engine::research::link_patient(
        vault.conn(),
        &vault,
        "pat",
        &patient_id,
    )?);
    let admin = accounts::get(vault.conn(), vault.keys(), "operator")?;
    let provider = Actor::from_account(accounts::get_or_create(vault.conn(), vault.keys(), "dr")?);
    let issuer = Actor::from_account(accounts::get_or_create(
        vault.conn(),
        vault.keys(),
        "issuer",
    )?);
    rt.block_on(client.grant_role(&admin, Role::Provider, provider.address()))?;
    rt.block_on(client.grant_role(&admin, Role::Issuer, issuer.address()))?;
    let now = rt.block_on(client.ledger().timestamp())?;
    rt.block_on(grants::attest_credential(
        vault.conn(),
        &client,
        &issuer,
        "dr",
        "MD",
        now + 86_400,
    ))?;
    rt.block_on(grants::grant(
        vault.conn(),
        &client,
        &patient,
        &grants::GrantRequest {
            provider: "dr".into(),
            level: Level::Read,
            purposes: Purpose::Treatment.bit(),
            kinds: ALL_KINDS,
            duration_secs: 86_400,
            on_behalf_of: None,
        },
    ))?;
    let records: Vec<String> = vault
        .conn()
        .prepare("SELECT DISTINCT record_id FROM records WHERE patient_id = ?1")?
        .query_map([&patient_id], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    let clinic = Clinic::new(&vault, &client);
    let mut latencies = Vec::with_capacity(args.reads);
    for i in 0..args.reads {
        let record = &records[i % records.len()];
        let t = Instant::now();
        rt.block_on(clinic.read(&provider, record, None, Purpose::Treatment))?;
        latencies.push(t.elapsed().as_secs_f64() * 1e3);
    }
    latencies.sort_by(f64::total_cmp);
    let t = Instant::now();
    let everything = rt.block_on(clinic.search(
        &provider,
        &Search {
            patient: "pat".into(),
            ..Default::default()
        },
        Purpose::Treatment,
    ))?;
    let search_ms = t.elapsed().as_secs_f64() * 1e3;

    let resources = generated.resources as f64;
    let report = serde_json::json!({
        "patients": args.patients,
        "resources": generated.resources,
        "ingest_without_ledger_resources_per_s": resources / plain_secs,
        "ingest_with_ledger_resources_per_s": resources / ingest_secs,
        "anchor_batch_versions": batch.count,
        "anchor_batch_ms": anchor_secs * 1e3,
        "ingest_and_anchor_resources_per_s": resources / (ingest_secs + anchor_secs),
        "authorized_read_ms": {
            "mean": latencies.iter().sum::<f64>() / latencies.len() as f64,
            "p50": percentile(&latencies, 0.5),
            "p95": percentile(&latencies, 0.95),
        },
        "everything_search": { "records": everything.len(), "ms": search_ms },
    });
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}
