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
    /// FHIR reads through `cohort serve` on loopback (0: skip).
    #[arg(long, default_value_t = 400)]
    fhir_reads: usize,
    /// Concurrent FHIR clients.
    #[arg(long, default_value_t = 8)]
    fhir_clients: usize,
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
        vault.keys(),
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

    // FHIR reads through the server (plain HTTP on loopback): the provider
    // signs in once; each GET is a chain check, a signed trace, a decryption.
    drop(vault);
    let fhir = if args.fhir_reads > 0 {
        Some(fhir_throughput(&anchored, &records, &args, &rt)?)
    } else {
        None
    };

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
        "fhir_read": fhir,
    });
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}

/// Starts `cohort serve` in this process on plain loopback HTTP, signs the
/// provider in, and GETs `/fhir/{type}/{id}` from `fhir_clients` clients.
fn fhir_throughput(
    dir: &DataDir,
    records: &[String],
    args: &Args,
    rt: &tokio::runtime::Runtime,
) -> anyhow::Result<serde_json::Value> {
    let (tx, rx) = std::sync::mpsc::channel();
    let served = dir.clone();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Runtime::new().expect("a runtime");
        let vault = served.unlock("pw").expect("the vault");
        let session = rt
            .block_on(cohort_engine::research::Session::open(&served, &vault))
            .expect("a session");
        let mut config = cohort_server::Config::default();
        config.server.listen = "127.0.0.1:0".parse().expect("an address");
        config.auth.second_factor = false;
        config.tls.mode = cohort_server::config::TlsMode::Off;
        let _ = rt.block_on(cohort_server::serve(
            &served,
            session,
            &config,
            |url| tx.send(url.to_string()).expect("the url"),
            std::future::pending(),
        ));
    });
    let url = rx.recv()?;
    let vault = dir.unlock("pw")?;
    let provider = accounts::get(vault.conn(), vault.keys(), "dr")?;
    drop(vault);
    let token = rt.block_on(async {
        let channel = tonic::transport::Endpoint::from_shared(url.clone())?
            .connect()
            .await?;
        anyhow::Ok(cohort_server::sign_in::sign_in(channel, &provider, None).await?)
    })?;
    let http = reqwest::Client::new();
    let per_client = args.fhir_reads.div_ceil(args.fhir_clients);
    let started = Instant::now();
    let latencies: Vec<f64> = rt.block_on(async {
        let tasks: Vec<_> = (0..args.fhir_clients)
            .map(|c| {
                let (http, token, url) = (http.clone(), token.clone(), url.clone());
                let mine: Vec<String> = (0..per_client)
                    .map(|i| records[(c * per_client + i) % records.len()].clone())
                    .collect();
                tokio::spawn(async move {
                    let mut out = Vec::with_capacity(mine.len());
                    for record in mine {
                        let t = Instant::now();
                        let r = http
                            .get(format!("{url}/fhir/{record}"))
                            .bearer_auth(&token)
                            .send()
                            .await?;
                        anyhow::ensure!(r.status().is_success(), "GET {record}: {}", r.status());
                        r.bytes().await?;
                        out.push(t.elapsed().as_secs_f64() * 1e3);
                    }
                    anyhow::Ok(out)
                })
            })
            .collect();
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await??);
        }
        anyhow::Ok(all)
    })?;
    let seconds = started.elapsed().as_secs_f64();
    let mut sorted = latencies.clone();
    sorted.sort_by(f64::total_cmp);
    Ok(serde_json::json!({
        "reads": sorted.len(),
        "clients": args.fhir_clients,
        "reads_per_s": sorted.len() as f64 / seconds,
        "p50_ms": percentile(&sorted, 0.5),
        "p95_ms": percentile(&sorted, 0.95),
    }))
}
