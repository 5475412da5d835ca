//! The research path end to end: proposal, m-of-n approval, consent and
//! withdrawal, budgeted queries on the embedded ledger, crashes between
//! their steps, concurrent queries against one budget, microdata and
//! compensation.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use cohort_engine::chain::{self, DeployRequest};
use cohort_engine::research::query::QueryRequest;
use cohort_engine::research::{self, Session, StudyFile};
use cohort_engine::{DataDir, keys::accounts};
use cohort_ledger_bridge::{Account, Role};

use crate::{PASSPHRASE, access, bundles, cohort, cohort_json, stderr, vault};

/// A study file over the projection, with `extra` lines in [study].
pub(crate) fn study_text(epsilon_budget: &str, per_query: &str, microdata: bool) -> String {
    format!(
        r#"privacy_unit = "patient_id"
[study]
title = "Test study"
purpose = "Testing the research path"
duration_days = 30
escrow = "1 ether"
fee_per_epsilon = "0.06 ether"
microdata = {microdata}
[budget]
epsilon = "{epsilon_budget}"
{release}
[query]
epsilon = "{per_query}"
max_epsilon = "1"
[contribution]
max_rows = 3
[execution]
release = "immediate"
[tables.patients]
rows_per_unit = 1
[tables.patients.columns]
patient_id = {{ identifier = true }}
birth_date = {{ lower = 1930, upper = 2026 }}
gender = {{ domain = ["female", "male"] }}
race = {{}}
zip = {{}}
[tables.observations.columns]
patient_id = {{ identifier = true }}
loinc = {{}}
value = {{ lower = 0, upper = 300 }}
"#,
        release = if microdata {
            "[release]\ntable = \"patients\"\nquasi_identifiers = [\"birth_date\", \"gender\"]\nsensitive = \"race\"\nsuppression = 0.1\nmin_k = 2\nmax_extracts = 2"
        } else {
            ""
        }
    )
}

/// A data directory with `patients` ingested, contracts deployed (2 of 3
/// stewards), a researcher and stewards with their roles.
pub(crate) struct Setup {
    pub(crate) tmp: tempfile::TempDir,
    pub(crate) dir: DataDir,
    pub(crate) data: PathBuf,
    pub(crate) patient_ids: Vec<String>,
}

pub(crate) fn setup(patients: u64) -> Setup {
    let (tmp, dir, vault) = vault();
    let input = bundles(tmp.path(), patients, 7);
    setup_in(tmp, dir, vault, &input)
}

/// [`setup`] over the bundles in `input`.
pub(crate) fn setup_from(input: &Path) -> Setup {
    let (tmp, dir, vault) = vault();
    setup_in(tmp, dir, vault, input)
}

fn setup_in(
    tmp: tempfile::TempDir,
    dir: DataDir,
    vault: cohort_engine::records::vault::Vault,
    input: &Path,
) -> Setup {
    cohort_engine::records::ingest::ingest_paths(&vault, &access(), &[input.to_path_buf()], false)
        .unwrap();
    {
        // The chain's owner lock goes with the client and its runtime, before
        // the CLI (another process) opens the chain.
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(chain::deploy(
            &dir,
            vault.conn(),
            vault.keys(),
            &DeployRequest {
                rpc_url: None,
                approvals: 2,
                confirmations: None,
                admin: "operator".into(),
                redeploy: false,
            },
        ))
        .unwrap();
        let (_, client) = rt.block_on(chain::client(&dir)).unwrap();
        let admin = accounts::get(vault.conn(), vault.keys(), "operator").unwrap();
        let grants = [
            ("researcher", Role::Researcher),
            ("steward-1", Role::Steward),
            ("steward-2", Role::Steward),
            ("steward-3", Role::Steward),
        ];
        for (name, role) in grants {
            let a = accounts::get_or_create(vault.conn(), vault.keys(), name).unwrap();
            rt.block_on(client.grant_role(&admin, role, a.address()))
                .unwrap();
        }
    }
    let data = dir.root().to_path_buf();
    // The researcher's ether for escrows, from the CLI.
    crate::cohort_json(&data, &["account", "fund", "researcher", "5 ether"]);
    let patient_ids: Vec<String> = vault
        .conn()
        .prepare("SELECT patient_id FROM proj_patients ORDER BY patient_id")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    Setup {
        tmp,
        dir,
        data,
        patient_ids,
    }
}

/// `name` as a credentialed provider (the role, an issuer's attestation)
/// holding a read grant for treatment from each of `patients` (accounts).
pub(crate) fn provider_with_grants(data: &Path, name: &str, patients: &[&str]) {
    crate::cohort_json(data, &["account", "new", name]);
    crate::cohort_json(data, &["account", "grant", name, "provider"]);
    if crate::cohort(data, &["account", "new", "issuer"])
        .status
        .success()
    {
        crate::cohort_json(data, &["account", "grant", "issuer", "issuer"]);
    }
    crate::cohort_json(
        data,
        &[
            "--as",
            "issuer",
            "credential",
            "attest",
            name,
            "--license",
            "MD-1",
        ],
    );
    for p in patients {
        crate::cohort_json(
            data,
            &["--as", p, "access", "grant", name, "--level", "read"],
        );
    }
}

impl Setup {
    pub(crate) fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.tmp.path().join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    /// Proposes and approves (2 of 3) through the library; links and
    /// consents the first `consenting` patients; returns the study id and
    /// the patients' accounts.
    pub(crate) fn approved_study(&self, text: &str, consenting: usize) -> (u64, Vec<Account>) {
        let vault = self.dir.unlock(PASSPHRASE).unwrap();
        let rt = tokio::runtime::Runtime::new().unwrap();
        let session = rt.block_on(Session::open(&self.dir, &vault)).unwrap();
        let file = StudyFile::parse(text).unwrap();
        let researcher = accounts::get(vault.conn(), vault.keys(), "researcher").unwrap();
        let id = rt
            .block_on(session.propose(vault.conn(), &researcher, &file))
            .unwrap()
            .study_id;
        for s in ["steward-1", "steward-2"] {
            let s = accounts::get(vault.conn(), vault.keys(), s).unwrap();
            rt.block_on(session.approve(vault.conn(), &s, id)).unwrap();
        }
        let mut patients = Vec::new();
        for (i, pid) in self.patient_ids.iter().take(consenting).enumerate() {
            let name = format!("patient-{i}");
            let a = match accounts::get(vault.conn(), vault.keys(), &name) {
                Ok(a) => a,
                Err(_) => research::link_patient(vault.conn(), &vault, &name, pid).unwrap(),
            };
            patients.push(a);
        }
        for r in rt
            .block_on(session.consent_all(vault.conn(), &patients, id, None, 30))
            .unwrap()
        {
            r.unwrap();
        }
        (id, patients)
    }
}

/// A table of the study's newest stored view (each view lives in a
/// directory named by its digest).
pub(crate) fn view_file(data: &Path, study: &str, table: &str) -> PathBuf {
    let views = data.join("research/studies").join(study).join("view");
    let newest = std::fs::read_dir(&views)
        .unwrap()
        .flatten()
        .filter(|e| e.path().join("manifest.json").exists())
        .max_by_key(|e| e.metadata().unwrap().modified().unwrap())
        .expect("a stored view");
    newest.path().join(format!("{table}.parquet"))
}

fn remaining_epsilon(data: &Path, study: u64) -> String {
    let show = cohort_json(data, &["study", "show", &study.to_string()]);
    show["remaining"].as_str().unwrap().to_string()
}

#[test]
fn the_research_path_runs_from_the_cli() {
    let s = setup(40);
    let d = &s.data;
    let file = s.write("study.toml", &study_text("3", "0.5", true));
    let file = file.to_str().unwrap();

    // Only a researcher proposes; stewards approve, 2 of 3, never the proposer.
    let refused = cohort(d, &["study", "propose", file, "--as", "steward-1"]);
    assert!(!refused.status.success());
    assert!(
        stderr(&refused).contains("researcher role"),
        "{}",
        stderr(&refused)
    );
    let p = cohort_json(d, &["study", "propose", file, "--as", "researcher"]);
    let id = p["study_id"].as_u64().unwrap().to_string();
    let q = "SELECT COUNT(*) AS n FROM patients";
    let early = cohort(d, &["query", &id, q, "--as", "researcher"]);
    assert!(
        stderr(&early).contains("not approved"),
        "{}",
        stderr(&early)
    );
    let a1 = cohort_json(d, &["study", "approve", &id, "--as", "steward-1"]);
    assert_eq!(a1["approved"], false);
    let again = cohort(d, &["study", "approve", &id, "--as", "steward-1"]);
    assert!(
        stderr(&again).contains("AlreadyApproved"),
        "{}",
        stderr(&again)
    );
    let a2 = cohort_json(d, &["study", "approve", &id, "--as", "steward-2"]);
    assert_eq!(a2["approved"], true);
    assert_eq!(a2["view_patients"], 0);

    // Three patients consent from their own accounts.
    for i in 0..3 {
        let name = format!("p{i}");
        cohort_json(
            d,
            &["account", "new", &name, "--patient", &s.patient_ids[i]],
        );
        cohort_json(d, &["consent", "give", &id, "--as", &name]);
    }
    let not_linked = cohort(d, &["consent", "give", &id, "--as", "researcher"]);
    assert!(stderr(&not_linked).contains("not linked to a patient"));
    let listed = cohort_json(d, &["consent", "list", "--as", "p0"]);
    assert_eq!(listed[0]["active"], true);

    // The view holds the consenting patients only.
    let first = cohort_json(
        d,
        &["query", &id, q, "--as", "researcher", "--query-id", "first"],
    );
    assert_eq!(
        first["answer"]["members"], 3,
        "the consenting set bears the query's privacy loss"
    );
    assert!(first["answer"].get("contributors").is_none());
    assert_eq!(first["replayed"], false);
    let view = cohort_engine::storage::tabular::read(&view_file(d, &id, "patients")).unwrap();
    assert_eq!(
        view.num_rows(),
        3,
        "the view holds exactly the consenting patients"
    );
    assert!(view.column_by_name("family_name").is_none() && view.column_by_name("ssn").is_none());

    // --explain shows the private plan and spends nothing.
    let explained = cohort_json(d, &["query", &id, q, "--as", "researcher", "--explain"]);
    assert!(
        explained["explain"].as_str().unwrap().contains("ε = 0.5"),
        "{explained}"
    );
    assert!(explained.get("answer").is_none());
    assert_eq!(remaining_epsilon(d, id.parse().unwrap()), "ε 2.5");

    // Only the study's researcher asks.
    let other = cohort(d, &["query", &id, q, "--as", "steward-1"]);
    assert!(stderr(&other).contains("researcher"), "{}", stderr(&other));

    // Row-level output is refused before anything is spent.
    let rows = cohort(
        d,
        &[
            "query",
            &id,
            "SELECT patient_id, zip FROM patients",
            "--as",
            "researcher",
        ],
    );
    assert!(!rows.status.success());
    assert_eq!(remaining_epsilon(d, id.parse().unwrap()), "ε 2.5");

    // A withdrawal: the next query cannot count them.
    cohort_json(d, &["consent", "withdraw", &id, "--as", "p1"]);
    let second = cohort_json(
        d,
        &[
            "query",
            &id,
            q,
            "--as",
            "researcher",
            "--query-id",
            "second",
        ],
    );
    assert_eq!(second["answer"]["members"], 2);
    let view = cohort_engine::storage::tabular::read(&view_file(d, &id, "patients")).unwrap();
    assert_eq!(view.num_rows(), 2);

    // Compensation: each query's fee is 0.06 ether per ε × 0.5 = 0.03
    // ether, shared by every consenting patient: p0 earned a share of both
    // queries, p1 of the first only.
    let p0 = cohort_json(d, &["compensation", "show", "--as", "p0"]);
    assert_eq!(p0["shares"].as_array().unwrap().len(), 2);
    assert_eq!(p0["earned"], "0.025 ether", "0.03/3 + 0.03/2");
    let p1 = cohort_json(d, &["compensation", "show", "--as", "p1"]);
    assert_eq!(p1["shares"].as_array().unwrap().len(), 1);
    let paid = cohort_json(d, &["compensation", "claim", "--as", "p0"]);
    assert_eq!(paid["paid"], "25000000000000000");
    let twice = cohort(d, &["compensation", "claim", "--as", "p0"]);
    assert!(
        stderr(&twice).contains("nothing left to claim"),
        "{}",
        stderr(&twice)
    );
    let p0 = cohort_json(d, &["compensation", "show", "--as", "p0"]);
    assert_eq!(p0["claimable"], "0 ether");

    // On chain, each commit names the consenting set's size and the fee its
    // ε priced, nothing that depends on which rows matched; off chain, a set
    // is stored once, however many queries it pays for.
    cohort_json(d, &["ledger", "sync"]);
    let conn = s.dir.connect().unwrap();
    let commits: Vec<(i64, String)> = conn
        .prepare(
            "SELECT members, fee FROM ledger_budget_events WHERE kind = 'committed' ORDER BY block",
        )
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(
        commits,
        [
            (3, "30000000000000000".to_string()),
            (2, "30000000000000000".to_string())
        ],
        "0.06 ether per ε × 0.5, shared by 3 then 2 (the remainder goes back to the escrow)"
    );
    let stored: i64 = conn
        .query_row("SELECT COUNT(*) FROM research_member_sets", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(
        stored,
        3 + 2,
        "one row per member of each distinct consenting set"
    );

    // A k-anonymous extract, recorded on the ledger; below the study's
    // min_k it is refused, and the same consenting set gets the same one.
    let low = cohort(d, &["release", &id, "--k", "1", "--as", "researcher"]);
    assert!(stderr(&low).contains("min_k"), "{}", stderr(&low));
    let r = cohort_json(d, &["release", &id, "--k", "2", "--as", "researcher"]);
    assert!(r["measured_k"].as_u64().unwrap() >= 2);
    assert_eq!(r["replayed"], false);
    let again = cohort_json(d, &["release", &id, "--k", "3", "--as", "researcher"]);
    assert_eq!(again["replayed"], true, "{again}");
    assert_eq!(again["extract_hash"], r["extract_hash"]);
    let extract =
        cohort_engine::storage::tabular::read(Path::new(r["path"].as_str().unwrap())).unwrap();
    assert!(extract.column_by_name("patient_id").is_none());
    let show = cohort_json(d, &["study", "show", &id]);
    assert_eq!(show["releases"], 1);
    assert_eq!(show["queries"], 2);
    cohort_json(d, &["ledger", "sync"]);
    let conn = s.dir.connect().unwrap();
    let on_chain: i64 = conn
        .query_row(
            "SELECT COUNT(*) FROM ledger_releases WHERE extract_hash = ?1",
            [r["extract_hash"].as_str().unwrap()],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(on_chain, 1);

    // Each patient's accounting of disclosures names the answers their
    // records entered and the release made while they consented: p1
    // withdrew before the second query and the release.
    let evidence = |who: &str| -> Vec<String> {
        let a = cohort_json(d, &["--as", who, "patient", "disclosures", who]);
        a["disclosures"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|x| x["basis"] == "consent" && x["recipient"] == "researcher")
            .map(|x| x["evidence"].as_str().unwrap().to_string())
            .collect()
    };
    let release = format!("release {}", r["extract_hash"].as_str().unwrap());
    let p0 = evidence("p0");
    for e in ["query first", "query second", release.as_str()] {
        assert!(p0.iter().any(|x| x == e), "{e} not in {p0:?}");
    }
    assert_eq!(evidence("p1"), vec!["query first".to_string()]);

    // A study without microdata approval releases nothing.
    let closed = s.write("closed.toml", &study_text("1", "0.5", false));
    let p = cohort_json(
        d,
        &[
            "study",
            "propose",
            closed.to_str().unwrap(),
            "--as",
            "researcher",
        ],
    );
    let id2 = p["study_id"].as_u64().unwrap().to_string();
    cohort_json(d, &["study", "approve", &id2, "--as", "steward-1"]);
    cohort_json(d, &["study", "approve", &id2, "--as", "steward-3"]);
    let listed = cohort_json(d, &["study", "list"]);
    assert_eq!(listed.as_array().unwrap().len(), 2);
    assert_eq!(listed[0]["consenting"], 2);
    assert_eq!(listed[1]["status"], "approved");
    let refused = cohort(d, &["release", &id2, "--k", "2", "--as", "researcher"]);
    assert!(
        stderr(&refused).contains("not approved for microdata"),
        "{}",
        stderr(&refused)
    );

    // Every step is in the audit chain, which is intact.
    let log = cohort_json(d, &["audit", "log", "--limit", "200"]);
    let actions: Vec<&str> = log
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    for a in [
        "study.propose",
        "study.approve",
        "consent.give",
        "consent.withdraw",
        "research.query",
        "research.release",
        "compensation.claim",
    ] {
        assert!(actions.contains(&a), "no {a} in the audit log");
    }
    assert_eq!(
        cohort_json(d, &["audit", "verify"])["first_broken"],
        serde_json::Value::Null
    );
}

/// `n` counting queries (ids `<prefix>0..`) sent to study `id` at once,
/// from one session; returns them with their outcomes.
fn ask_together(
    s: &Setup,
    id: u64,
    n: usize,
    prefix: &str,
) -> (
    tokio::runtime::Runtime,
    Session,
    Vec<QueryRequest>,
    Vec<cohort_engine::Result<cohort_engine::research::query::QueryOutcome>>,
) {
    let vault = s.dir.unlock(PASSPHRASE).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let session = rt.block_on(Session::open(&s.dir, &vault)).unwrap();
    let requests: Vec<QueryRequest> = (0..n)
        .map(|i| QueryRequest {
            sql: "SELECT COUNT(*) AS n FROM patients".into(),
            query_id: Some(format!("{prefix}{i}")),
            ..Default::default()
        })
        .collect();
    let results = rt.block_on(futures::future::join_all(
        requests.iter().map(|r| session.query("researcher", id, r)),
    ));
    (rt, session, requests, results)
}

/// Runs a query that stops at `step`, then SIGKILLs it there.
pub(crate) fn killed_at(data: &Path, study: &str, sql: &str, query_id: &str, step: &str) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_cohort"))
        .args(["--data-dir"])
        .arg(data)
        .args([
            "query",
            study,
            sql,
            "--as",
            "researcher",
            "--query-id",
            query_id,
        ])
        .env("COHORT_PASSPHRASE", PASSPHRASE)
        .env("COHORT_TEST_PAUSE_AT", step)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let marker = format!("paused at {step}");
    loop {
        match lines.next() {
            Some(Ok(line)) if line == marker => break,
            Some(Ok(_)) => continue,
            _ => panic!("the query ended before reaching {step}: {:?}", child.wait()),
        }
    }
    child.kill().unwrap(); // SIGKILL
    let status = child.wait().unwrap();
    assert!(!status.success());
}

#[test]
fn a_killed_query_is_finished_or_undone_on_restart_and_never_answered_twice() {
    let s = setup(20);
    let (id, _) = s.approved_study(&study_text("3", "0.5", false), 5);
    let study = id.to_string();
    let d = &s.data;
    let sql = "SELECT gender, COUNT(*) AS n FROM patients GROUP BY gender";
    assert_eq!(remaining_epsilon(d, id), "ε 3");

    // Killed between reserve and the plan's run: the restart releases the reservation.
    killed_at(d, &study, sql, "k1", "reserved");
    assert_eq!(
        remaining_epsilon(d, id),
        "ε 3",
        "the reservation was released on restart"
    );
    let again = cohort(
        d,
        &[
            "query",
            &study,
            sql,
            "--as",
            "researcher",
            "--query-id",
            "k1",
        ],
    );
    assert!(stderr(&again).contains("interrupted"), "{}", stderr(&again));
    assert_eq!(remaining_epsilon(d, id), "ε 3");

    // Killed while it ran: the restart charges it (every ending after the
    // reservation is charged), and its id answers with the fixed message.
    killed_at(d, &study, sql, "k4", "executing");
    assert_eq!(
        remaining_epsilon(d, id),
        "ε 2.5",
        "a query killed while it ran is charged, not released"
    );
    let charged = cohort(
        d,
        &[
            "query",
            &study,
            sql,
            "--as",
            "researcher",
            "--query-id",
            "k4",
        ],
    );
    assert!(
        stderr(&charged).contains("ended without an answer and was charged ε = 0.5"),
        "{}",
        stderr(&charged)
    );
    assert_eq!(remaining_epsilon(d, id), "ε 2.5", "a replay spends nothing");

    // Killed with the answer stored but not committed: the restart commits it, once.
    killed_at(d, &study, sql, "k2", "answered");
    assert_eq!(
        remaining_epsilon(d, id),
        "ε 2",
        "the stored answer was committed on restart"
    );
    let a = cohort_json(
        d,
        &[
            "query",
            &study,
            sql,
            "--as",
            "researcher",
            "--query-id",
            "k2",
        ],
    );
    let b = cohort_json(
        d,
        &[
            "query",
            &study,
            sql,
            "--as",
            "researcher",
            "--query-id",
            "k2",
        ],
    );
    assert_eq!(a["replayed"], true);
    assert_eq!(a["answer"], b["answer"], "the same noise, not fresh noise");
    assert_eq!(remaining_epsilon(d, id), "ε 2", "replays spend nothing");

    // Killed after the commit, before delivery: the stored answer is what the id returns.
    killed_at(d, &study, sql, "k3", "committed");
    assert_eq!(remaining_epsilon(d, id), "ε 1.5");
    let c = cohort_json(
        d,
        &[
            "query",
            &study,
            sql,
            "--as",
            "researcher",
            "--query-id",
            "k3",
        ],
    );
    assert_eq!(c["replayed"], true);
    cohort_json(d, &["ledger", "sync"]);
    let conn = s.dir.connect().unwrap();
    let committed: String = conn
        .query_row(
            "SELECT result_hash FROM ledger_budget_events WHERE kind = 'committed' AND query_id = ?1",
            [c["answer"]["ledger_id"].as_str().unwrap()],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(
        Some(committed.as_str()),
        c["result_hash"].as_str(),
        "the delivered answer is the committed one"
    );
    let reservations: i64 = conn
        .query_row(
            "SELECT COUNT(*) FROM ledger_budget_events WHERE kind = 'reserved'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(reservations, 4, "one reservation per query id, never two");

    // A query id names one question.
    let other = cohort(
        d,
        &[
            "query",
            &study,
            "SELECT COUNT(*) FROM patients",
            "--as",
            "researcher",
            "--query-id",
            "k3",
        ],
    );
    assert!(
        stderr(&other).contains("different question"),
        "{}",
        stderr(&other)
    );
}

#[test]
fn concurrent_queries_spend_exactly_what_the_budget_allows() {
    let s = setup(20);
    // 2 / 0.05: exactly 40 of 120 queries can be paid for.
    let text = study_text("2", "0.05", false).replace("0.06 ether", "0.02 ether");
    let (id, _) = s.approved_study(&text, 8);
    let (rt, session, _, results) = ask_together(&s, id, 120, "c");
    let answered = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(answered, 40, "exactly what the budget allows");
    for e in results.iter().filter_map(|r| r.as_ref().err()) {
        let text = e.to_string();
        assert!(
            text.starts_with(
                "query refused (privacy-budget): it costs ε = 0.05, but the study has only ε = "
            ),
            "an unexpected failure: {text}"
        );
    }
    let left = rt.block_on(session.client().remaining(id)).unwrap();
    assert_eq!(left.primary, 0, "40 × 0.05 = 2 spent, nothing reserved");
    let study = rt.block_on(session.client().study(id)).unwrap();
    assert_eq!(
        study.committed,
        2 * cohort_anonymizer::accountant::UNITS_PER_ONE
    );
    assert_eq!(study.reserved, 0);
    assert_eq!(study.openReservations, 0);
    let delivered: i64 = s
        .dir
        .connect()
        .unwrap()
        .query_row(
            "SELECT COUNT(*) FROM research_queries WHERE state = 'delivered'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(delivered, 40);
}

#[test]
fn a_patient_claims_only_their_own_share_and_only_once() {
    let s = setup(12);
    let (id, patients) = s.approved_study(&study_text("3", "0.5", false), 4);
    let vault = s.dir.unlock(PASSPHRASE).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let session = rt.block_on(Session::open(&s.dir, &vault)).unwrap();
    let out = rt
        .block_on(session.query(
            "researcher",
            id,
            &QueryRequest {
                sql: "SELECT COUNT(*) FROM patients".into(),
                query_id: Some("paid".into()),
                ..Default::default()
            },
        ))
        .unwrap();
    let answer = out.answer.unwrap();
    assert_eq!(answer.members, 4);
    let ledger_id: cohort_ledger_bridge::alloy::primitives::B256 =
        answer.ledger_id.parse().unwrap();

    // Every member earned the same share: 0.06 ether per ε × 0.5, over 4.
    let amount = cohort_ledger_bridge::alloy::primitives::U256::from(30_000_000_000_000_000u64 / 4);
    for p in &patients {
        let e = rt.block_on(session.earnings(p.address(), None)).unwrap();
        assert_eq!(e.shares.len(), 1);
        assert_eq!(e.shares[0].amount, amount.to_string());
    }

    // Another patient replaying a's proof is refused by the contract.
    let tree = cohort_ledger_bridge::merkle::MemberTree::new(patients.iter().map(|p| p.address()))
        .unwrap();
    let proof = tree.proof(patients[0].address()).unwrap();
    let stolen = rt.block_on(session.client().claim(&patients[1], id, ledger_id, proof));
    assert!(stolen.unwrap_err().to_string().contains("InvalidProof"));

    let paid = rt.block_on(session.claim(&patients[0], Some(id))).unwrap();
    assert_eq!(paid.paid, amount.to_string());
    assert!(rt.block_on(session.claim(&patients[0], Some(id))).is_err());
    let proof = tree.proof(patients[0].address()).unwrap();
    let twice = rt.block_on(session.client().claim(&patients[0], id, ledger_id, proof));
    assert!(twice.unwrap_err().to_string().contains("AlreadyClaimed"));
    // The other members' shares are untouched.
    let b = rt
        .block_on(session.earnings(patients[1].address(), None))
        .unwrap();
    assert_eq!(
        b.claimable,
        cohort_engine::research::study::format_wei(amount)
    );
}

#[test]
fn the_escrow_pays_for_exactly_the_queries_it_can_and_refuses_the_rest_before_they_run() {
    let s = setup(12);
    // The escrow pays 10 fees of 2 ether per ε × 0.05 = 0.1 ether; the
    // budget would allow 40 queries.
    let text = study_text("2", "0.05", false).replace("0.06 ether", "2 ether");
    let (id, _) = s.approved_study(&text, 4);
    let (rt, session, requests, results) = ask_together(&s, id, 40, "e");
    // The fee is held at the reservation: a query the escrow cannot pay is
    // refused there, before anything runs, and spends nothing.
    let answered = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(answered, 10, "exactly what the escrow pays for");
    for e in results.iter().filter_map(|r| r.as_ref().err()) {
        assert!(e.to_string().contains("scrow"), "{e}");
    }
    let study = rt.block_on(session.client().study(id)).unwrap();
    assert_eq!(study.reserved, 0, "no reservation is left open");
    assert_eq!(study.openReservations, 0);
    assert_eq!(
        study.committed,
        10 * cohort_anonymizer::accountant::UNITS_PER_ONE / 20
    );
    assert_eq!(
        study.escrow,
        cohort_ledger_bridge::alloy::primitives::U256::ZERO
    );
    let conn = s.dir.connect().unwrap();
    let open: i64 = conn
        .query_row(
            "SELECT COUNT(*) FROM research_queries WHERE state IN ('reserving', 'reserved', 'answered')",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(open, 0);
    // Nothing of a released query is answered later: its id stays refused.
    if let Some(i) = results.iter().position(|r| r.is_err()) {
        let again = rt.block_on(session.query("researcher", id, &requests[i]));
        assert!(again.is_err());
    }
}

/// Erasure reaches the research path: the patient's consents are withdrawn
/// on chain, their rows leave every view at once, and the next answer and
/// extract no longer count them; what was released before stays released.
#[test]
fn an_erased_patient_is_counted_by_no_later_answer_or_extract() {
    let s = setup(20);
    let d = &s.data;
    let text = study_text("1000000", "0.5", true)
        .replace("max_epsilon = \"1\"", "max_epsilon = \"100000\"")
        .replace("0.06 ether", "0 wei");
    let (id, patients) = s.approved_study(&text, 10);
    let study = id.to_string();
    // ε so large that the count is exact (the noise rounds to 0).
    let count = |qid: &str| {
        cohort_json(
            d,
            &[
                "query",
                &study,
                "SELECT COUNT(*) AS n FROM patients",
                "--as",
                "researcher",
                "--epsilon",
                "100000",
                "--query-id",
                qid,
            ],
        )
    };
    let before = count("before");
    assert_eq!(before["answer"]["rows"][0][0], 10);
    assert_eq!(before["answer"]["members"], 10);
    let extract = cohort_json(d, &["release", &study, "--k", "2", "--as", "researcher"]);
    assert_eq!(extract["report"]["rows_in"], 10);

    // Erase the first consenting patient.
    let erased = cohort_json(d, &["patient", "erase", &s.patient_ids[0], "--confirm"]);
    assert_eq!(erased["consents_withdrawn"], serde_json::json!([id]));
    let after = count("after");
    assert_eq!(
        after["answer"]["rows"][0][0], 9,
        "the answer no longer counts them"
    );
    assert_eq!(after["answer"]["members"], 9, "nor pays them");
    let extract = cohort_json(d, &["release", &study, "--k", "2", "--as", "researcher"]);
    assert_eq!(
        extract["replayed"], false,
        "a new consenting set, a new extract"
    );
    assert_eq!(
        extract["report"]["rows_in"], 9,
        "the extract no longer holds them"
    );
    // Their link, consent and submissions are gone; the erasure is audited.
    let listed = cohort_json(d, &["consent", "list", "--as", patients[0].name()]);
    assert_eq!(listed[0]["active"], false, "withdrawn on chain: {listed}");
    let again = crate::cohort(d, &["consent", "give", &study, "--as", patients[0].name()]);
    assert!(
        stderr(&again).contains("not linked to a patient"),
        "the account is no longer a patient's: {}",
        stderr(&again)
    );
    let log = cohort_json(d, &["audit", "log", "--limit", "50"]);
    let actions: Vec<&str> = log
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert!(actions.contains(&"erase") && actions.contains(&"consent.withdraw"));
    // The answer given before stays what it was: a replay returns it.
    let again = count("before");
    assert_eq!(again["replayed"], true);
    assert_eq!(again["answer"]["rows"][0][0], 10);
}

/// New records reach the next query: an ingest moves the projection's
/// generation, which every view's digest names.
#[test]
fn a_new_ingest_reaches_the_next_query() {
    let s = setup(12);
    let d = &s.data;
    let text = study_text("1000000", "0.5", false)
        .replace("max_epsilon = \"1\"", "max_epsilon = \"100000\"")
        .replace("0.06 ether", "0 wei");
    let (id, _) = s.approved_study(&text, 12);
    let study = id.to_string();
    let sql = "SELECT COUNT(*) AS n FROM observations";
    let ask = |qid: &str| {
        cohort_json(
            d,
            &[
                "query",
                &study,
                sql,
                "--as",
                "researcher",
                "--epsilon",
                "100000",
                "--query-id",
                qid,
            ],
        )["answer"]["rows"][0][0]
            .as_i64()
            .unwrap()
    };
    let first = ask("o1");
    let generation =
        |conn: &rusqlite::Connection| cohort_engine::records::projection::generation(conn).unwrap();
    let before = generation(&s.dir.connect().unwrap());
    // One more observation for the first patient, ingested from the CLI.
    let extra = s.tmp.path().join("extra");
    std::fs::create_dir_all(&extra).unwrap();
    std::fs::write(
        extra.join("one.json"),
        serde_json::json!({
            "resourceType": "Bundle", "type": "transaction",
            "entry": [{
                "fullUrl": "urn:uuid:5d1c3a70-1111-4c2b-9f00-00000000abcd",
                "resource": {
                    "resourceType": "Observation", "id": "5d1c3a70-1111-4c2b-9f00-00000000abcd",
                    "status": "final",
                    "code": { "coding": [{ "system": "http://loinc.org", "code": "4548-4", "display": "HbA1c" }] },
                    "subject": { "reference": format!("Patient/{}", s.patient_ids[0]) },
                    "effectiveDateTime": "2026-01-02T10:00:00Z",
                    "valueQuantity": { "value": 7.1, "unit": "%" }
                },
                "request": { "method": "PUT", "url": "Observation/5d1c3a70-1111-4c2b-9f00-00000000abcd" }
            }]
        })
        .to_string(),
    )
    .unwrap();
    let o = crate::cohort(d, &["ingest", extra.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(generation(&s.dir.connect().unwrap()) > before);
    let rows_before = cohort_engine::storage::tabular::read(&view_file(d, &study, "observations"))
        .unwrap()
        .num_rows();
    let second = ask("o2");
    assert!(second >= first, "{first} then {second}");
    let rows_after = cohort_engine::storage::tabular::read(&view_file(d, &study, "observations"))
        .unwrap()
        .num_rows();
    assert_eq!(
        rows_after,
        rows_before + 1,
        "the next query's view holds the new row (a view of a new generation)"
    );
}

#[test]
fn a_withdrawal_racing_queries_is_in_each_answer_whole_or_out_of_it_whole() {
    let s = setup(20);
    let (id, patients) = s.approved_study(&study_text("100", "0.1", false), 6);
    let vault = s.dir.unlock(PASSPHRASE).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let session = rt.block_on(Session::open(&s.dir, &vault)).unwrap();
    let requests: Vec<QueryRequest> = (0..24)
        .map(|i| QueryRequest {
            sql: "SELECT COUNT(*) AS n FROM patients".into(),
            query_id: Some(format!("w{i}")),
            ..Default::default()
        })
        .collect();
    let leaving = &patients[0];
    let (results, withdrawn) = rt.block_on(async {
        futures::join!(
            futures::future::join_all(requests.iter().map(|r| session.query("researcher", id, r))),
            session.withdraw(vault.conn(), leaving, id)
        )
    });
    withdrawn.unwrap();
    let conn = s.dir.connect().unwrap();
    let leaver = format!("{:#x}", leaving.address());
    let mut sizes = std::collections::BTreeSet::new();
    for outcome in results {
        let outcome = outcome.unwrap();
        let answer = outcome.answer.unwrap();
        // The answer, its fee's member set and the set on record agree:
        // the leaving patient is in all three or in none.
        let root = outcome.members_root.unwrap();
        let stored: Vec<String> = conn
            .prepare("SELECT address FROM research_member_sets WHERE members_root = ?1")
            .unwrap()
            .query_map([&root], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(
            stored.len(),
            answer.members,
            "the set paid is the set counted"
        );
        let in_set = stored.iter().any(|a| a.eq_ignore_ascii_case(&leaver));
        assert_eq!(in_set, answer.members == 6, "{stored:?}");
        sizes.insert(answer.members);
    }
    assert!(sizes.iter().all(|n| *n == 5 || *n == 6), "{sizes:?}");
    // Every query after the withdrawal leaves the patient out.
    let after = rt
        .block_on(session.query(
            "researcher",
            id,
            &QueryRequest {
                sql: "SELECT COUNT(*) AS n FROM patients".into(),
                query_id: Some("after".into()),
                ..Default::default()
            },
        ))
        .unwrap();
    assert_eq!(after.answer.unwrap().members, 5);
}

/// A consent is also a key: the patient's data key sealed to the engine's
/// account; a withdrawal deletes the engine's copies and rotates the key,
/// and the study's view holds only patients whose key the engine holds.
#[test]
fn a_consent_seals_the_key_for_the_engine_and_a_withdrawal_rotates_it() {
    use cohort_engine::keys::data_keys;
    let s = setup(12);
    let (id, patients) = s.approved_study(&study_text("100", "0.1", false), 3);
    let vault = s.dir.unlock(PASSPHRASE).unwrap();
    let conn = vault.conn();
    let engine = accounts::address_of(conn, "engine").unwrap().unwrap();
    let pid = |a: &Account| -> String {
        conn.query_row(
            "SELECT patient_id FROM research_patients WHERE account = ?1",
            [a.name()],
            |r| r.get(0),
        )
        .unwrap()
    };
    for p in &patients {
        assert!(data_keys::holds_current(conn, &pid(p), &engine).unwrap());
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    let session = rt.block_on(Session::open(&s.dir, &vault)).unwrap();
    rt.block_on(session.withdraw(conn, &patients[0], id))
        .unwrap();
    let leaver = pid(&patients[0]);
    assert!(!data_keys::holds_any(conn, &leaver, &engine).unwrap());
    assert_eq!(data_keys::current_epoch(conn, &leaver).unwrap(), 2);
    let held = data_keys::holders(conn, &leaver).unwrap();
    assert!(
        held.copies
            .iter()
            .any(|c| c.epoch == 2 && c.holder_name.as_deref() == Some("patient-0")),
        "the patient holds the new epoch: {held:?}"
    );
    // Fail closed: a consenting patient whose key the engine does not hold
    // is left out of the view.
    conn.execute(
        "DELETE FROM wrapped_data_keys WHERE patient_id = ?1 AND holder_address = ?2",
        rusqlite::params![pid(&patients[1]), engine],
    )
    .unwrap();
    let answer = rt
        .block_on(session.query(
            "researcher",
            id,
            &QueryRequest {
                sql: "SELECT COUNT(*) AS n FROM patients".into(),
                query_id: Some("keyed".into()),
                ..Default::default()
            },
        ))
        .unwrap();
    assert!(answer.answer.is_some());
    let view =
        cohort_engine::storage::tabular::read(&view_file(&s.data, &id.to_string(), "patients"))
            .unwrap();
    assert_eq!(
        view.num_rows(),
        1,
        "only the patient whose key the engine holds"
    );
}
