//! `cohort serve` against the research path in-process: the same private
//! query (planned, debited on the embedded ledger, answered) asked through
//! `Session::query` and through Flight SQL over loopback TLS, and requests
//! per second on the gRPC study API from concurrent clients.
//!
//! `cargo bench --workspace --bench server` (COHORT_BENCH_PATIENTS sets the
//! cohort size, default 2000).

use std::sync::mpsc;
use std::time::Duration;

use arrow_flight::sql::client::FlightSqlServiceClient;
use cohort_engine::chain::{self, DeployRequest};
use cohort_engine::research::query::QueryRequest;
use cohort_engine::research::{self, Session, StudyFile};
use cohort_engine::{DataDir, keys::accounts, keys::keystore::KdfParams, records::vault::Access};
use cohort_ledger_bridge::Role;
use cohort_server::Config;
use cohort_server::api::pb::{self, studies_client::StudiesClient};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use futures::TryStreamExt;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

const PASSPHRASE: &str = "bench passphrase";
const COUNT: &str = "SELECT COUNT(*) AS n FROM patients";
const BY_GENDER: &str = "SELECT gender, COUNT(*) AS n FROM patients GROUP BY gender";

const STUDY: &str = r#"privacy_unit = "patient_id"
[study]
title = "Server bench"
purpose = "Measuring the server"
duration_days = 30
escrow = "1 ether"
fee_per_epsilon = "0 wei"
microdata = false
[budget]
epsilon = "1000000"
[query]
epsilon = "0.01"
max_epsilon = "1"
[contribution]
max_rows = 3
# The engine's own cost is measured: a deadline would add its fixed time.
[execution]
release = "immediate"
[tables.patients]
rows_per_unit = 1
[tables.patients.columns]
patient_id = { identifier = true }
birth_date = { lower = 1930, upper = 2026 }
gender = { domain = ["female", "male"] }
"#;

/// A data directory with an approved study every patient consented to.
fn fixture(tmp: &std::path::Path, patients: u64) -> (DataDir, u64) {
    let dir = DataDir::open(&tmp.join("data")).unwrap();
    let fast = KdfParams {
        m_cost_kib: 1024,
        t_cost: 1,
        p_cost: 1,
    };
    let vault = dir.unlock_with(PASSPHRASE, fast).unwrap();
    let bundles = tmp.join("bundles");
    let mut opts = cohort_engine::records::generate::Options::new(patients, 7, &bundles);
    opts.per_bundle = 100;
    cohort_engine::records::generate::generate(&opts).unwrap();
    let access = Access::new("bench", "testing");
    cohort_engine::records::ingest::ingest_paths(&vault, &access, &[bundles], false).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let request = DeployRequest {
        rpc_url: None,
        approvals: 2,
        confirmations: None,
        admin: "operator".into(),
        redeploy: false,
    };
    rt.block_on(chain::deploy(&dir, vault.conn(), vault.keys(), &request))
        .unwrap();
    let (_, client) = rt.block_on(chain::client(&dir)).unwrap();
    let admin = accounts::get(vault.conn(), vault.keys(), "operator").unwrap();
    for (name, role) in [
        ("researcher", Role::Researcher),
        ("steward-1", Role::Steward),
        ("steward-2", Role::Steward),
    ] {
        let a = accounts::get_or_create(vault.conn(), vault.keys(), name).unwrap();
        rt.block_on(client.grant_role(&admin, role, a.address()))
            .unwrap();
    }
    let researcher = accounts::get(vault.conn(), vault.keys(), "researcher").unwrap();
    rt.block_on(client.ledger().set_balance(
        researcher.address(),
        "10000000000000000000".parse().unwrap(),
    ))
    .unwrap();
    let session = rt.block_on(Session::open(&dir, &vault)).unwrap();
    let file = StudyFile::parse(STUDY).unwrap();
    let id = rt
        .block_on(session.propose(vault.conn(), &researcher, &file))
        .unwrap()
        .study_id;
    for s in ["steward-1", "steward-2"] {
        let s = accounts::get(vault.conn(), vault.keys(), s).unwrap();
        rt.block_on(session.approve(vault.conn(), &s, id)).unwrap();
    }
    let ids: Vec<String> = vault
        .conn()
        .prepare("SELECT patient_id FROM proj_patients ORDER BY patient_id")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let patients: Vec<_> = ids
        .iter()
        .enumerate()
        .map(|(i, pid)| {
            research::link_patient(vault.conn(), &vault, &format!("patient-{i}"), pid).unwrap()
        })
        .collect();
    for r in rt
        .block_on(session.consent_all(vault.conn(), &patients, id, None, 30))
        .unwrap()
    {
        r.unwrap();
    }
    (dir, id)
}

fn in_process(c: &mut Criterion, dir: &DataDir, id: u64) {
    let vault = dir.unlock(PASSPHRASE).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let session = rt.block_on(Session::open(dir, &vault)).unwrap();
    let mut g = c.benchmark_group("server/in-process");
    g.sample_size(20).measurement_time(Duration::from_secs(10));
    for (name, sql) in [("count", COUNT), ("by gender", BY_GENDER)] {
        g.bench_function(name, |b| {
            b.iter(|| {
                let request = QueryRequest {
                    sql: sql.into(),
                    ..Default::default()
                };
                rt.block_on(session.query("researcher", id, &request))
                    .unwrap()
            })
        });
        g.bench_function(format!("explain {name}"), |b| {
            b.iter(|| {
                let request = QueryRequest {
                    sql: format!("EXPLAIN PRIVACY {sql}"),
                    ..Default::default()
                };
                rt.block_on(session.query("researcher", id, &request))
                    .unwrap()
            })
        });
    }
    g.finish();
}

/// Starts `cohort serve` in this process; its URL.
fn start_server(dir: &DataDir) -> String {
    let (tx, rx) = mpsc::channel();
    let dir = dir.clone();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let vault = dir.unlock(PASSPHRASE).unwrap();
        let session = rt.block_on(Session::open(&dir, &vault)).unwrap();
        let mut config = Config::default();
        config.server.listen = "127.0.0.1:0".parse().unwrap();
        config.auth.second_factor = false;
        rt.block_on(cohort_server::serve(
            &dir,
            session,
            &config,
            |url| tx.send(url.to_string()).unwrap(),
            std::future::pending(),
        ))
        .unwrap();
    });
    rx.recv().unwrap()
}

async fn channel(dir: &DataDir, url: &str) -> Channel {
    let pem = std::fs::read(dir.root().join("server/tls/cert.pem")).unwrap();
    Endpoint::from_shared(url.to_string())
        .unwrap()
        .tls_config(ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem)))
        .unwrap()
        .connect()
        .await
        .unwrap()
}

/// Signs in as the researcher (EIP-4361 with its key from the keystore).
async fn sign_in(dir: &DataDir, ch: Channel) -> String {
    let vault = dir.unlock(PASSPHRASE).unwrap();
    let researcher = accounts::get(vault.conn(), vault.keys(), "researcher").unwrap();
    cohort_server::sign_in::sign_in(ch, &researcher, None)
        .await
        .unwrap()
}

fn through_flight(c: &mut Criterion, dir: &DataDir, id: u64, url: &str) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let ch = rt.block_on(channel(dir, url));
    let token = rt.block_on(sign_in(dir, ch.clone()));
    let mut sql_client = FlightSqlServiceClient::new(ch.clone());
    sql_client.set_token(token.clone());
    sql_client.set_header("cohort-study", id.to_string());
    let mut ask = |sql: String| {
        rt.block_on(async {
            let info = sql_client.execute(sql, None).await.unwrap();
            let ticket = info.endpoint[0].ticket.clone().unwrap();
            let batches: Vec<_> = sql_client
                .do_get(ticket)
                .await
                .unwrap()
                .try_collect()
                .await
                .unwrap();
            batches
        })
    };
    let mut g = c.benchmark_group("server/flight-sql");
    g.sample_size(20).measurement_time(Duration::from_secs(10));
    for (name, sql) in [("count", COUNT), ("by gender", BY_GENDER)] {
        g.bench_function(name, |b| b.iter(|| ask(sql.to_string())));
        g.bench_function(format!("explain {name}"), |b| {
            b.iter(|| ask(format!("EXPLAIN PRIVACY {sql}")))
        });
    }
    g.finish();

    // Requests per second on the study API: 16 clients, each on its own
    // connection, asking Studies.Show.
    const CLIENTS: usize = 16;
    const PER_CLIENT: usize = 25;
    let clients: Vec<StudiesClient<Channel>> = (0..CLIENTS)
        .map(|_| StudiesClient::new(rt.block_on(channel(dir, url))))
        .collect();
    let mut g = c.benchmark_group("server/study-api");
    g.sample_size(10)
        .measurement_time(Duration::from_secs(10))
        .throughput(Throughput::Elements((CLIENTS * PER_CLIENT) as u64));
    g.bench_function("Studies.Show, 16 clients", |b| {
        b.iter(|| {
            rt.block_on(async {
                let tasks: Vec<_> = clients
                    .iter()
                    .cloned()
                    .map(|mut c| {
                        let token = token.clone();
                        tokio::spawn(async move {
                            for _ in 0..PER_CLIENT {
                                let mut r = tonic::Request::new(pb::StudyRef { study_id: id });
                                r.metadata_mut().insert(
                                    "authorization",
                                    format!("Bearer {token}").parse().unwrap(),
                                );
                                c.show(r).await.unwrap();
                            }
                        })
                    })
                    .collect();
                for t in tasks {
                    t.await.unwrap();
                }
            })
        })
    });
    g.finish();
}

fn bench(c: &mut Criterion) {
    let patients = std::env::var("COHORT_BENCH_PATIENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    let tmp = tempfile::tempdir().unwrap();
    let (dir, id) = fixture(tmp.path(), patients);
    // One at a time: the in-process session and the server's each keep
    // the embedded chain, so they must not run side by side.
    in_process(c, &dir, id);
    let url = start_server(&dir);
    through_flight(c, &dir, id, &url);
}

criterion_group!(benches, bench);
criterion_main!(benches);
