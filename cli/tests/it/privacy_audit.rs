//! The end-to-end privacy audit (docs/THREAT_MODEL.md, "The privacy
//! invariant"): what a researcher observes depends only on noisy values and
//! public facts.
//!
//! Two data directories hold the same cohort, the same accounts, the same
//! approved study and the same consents, and differ in one patient's records
//! only: in the second, the target patient (known to the attacker by birth
//! year, ZIP3 and sex, as a Safe Harbor view publishes them) has an HIV
//! diagnosis (ICD-10 B20) and another race. A battery of adversarial
//! queries, in families (error oracles, value exfiltration through errors,
//! errors over noisy outputs, timing, resource exhaustion, contributor, fee
//! and chain-event differencing, encrypted-column work, key predicates in
//! HAVING, replays, tiny ε), runs through the whole research path on both,
//! from the CLI and from `cohort serve`, and every observable is compared:
//! whether an answer came, the message, the cost charged, the fee and the
//! on-chain events, the groups released, the encrypted work, the duration
//! class. A deterministic observable may not differ at all; the answers'
//! distribution may differ only as much as ε allows (a Clopper-Pearson
//! test with a stated false-failure rate, as in the mechanism audit).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use cohort_engine::DataDir;
use cohort_engine::deadline::{Clock, ManualClock};
use cohort_engine::research::Session;
use cohort_engine::research::query::QueryRequest;
use serde_json::Value;

use crate::research::{Setup, setup_from};
use crate::{PASSPHRASE, bundles, cohort, cohort_env, stderr, stdout};

#[path = "../../../anonymizer/tests/it/clopper_pearson.rs"]
mod clopper_pearson;

/// The audited study: every table an attack needs, a budget the battery
/// cannot exhaust, an encrypted flag every patient shares.
pub(crate) const STUDY: &str = r#"privacy_unit = "patient_id"
[study]
title = "Privacy audit"
purpose = "Neighbouring data directories, adversarial queries"
duration_days = 30
escrow = "4 ether"
fee_per_epsilon = "0.001 ether"
[budget]
epsilon = "100000"
[query]
epsilon = "1"
max_epsilon = "10"
[contribution]
max_rows = 3
[execution]
deadline_ms = 1500
per_patient_us = 1000
[tables.patients]
rows_per_unit = 1
[tables.patients.columns]
patient_id = { identifier = true }
birth_date = { lower = 1900, upper = 2026 }
gender = { domain = ["female", "male"] }
race = {}
zip = {}
hiv = { encrypted = "elgamal", lower = 0, upper = 1 }
[tables.conditions.columns]
patient_id = { identifier = true }
icd10 = {}
"#;

const PATIENTS: u64 = 30;

/// The person the attacker targets, as the view shows them.
#[derive(Clone, Debug)]
struct Target {
    year: i64,
    zip3: String,
    gender: String,
}

impl Target {
    /// The predicate that singles the target out in `patients` aliased `p`.
    fn is(&self) -> String {
        format!(
            "p.birth_date = {} AND p.zip = '{}' AND p.gender = '{}'",
            self.year, self.zip3, self.gender
        )
    }

    /// The secret: the target has an HIV diagnosis (true only in the second directory).
    fn has_hiv(&self) -> String {
        format!("c.icd10 = 'B20' AND {}", self.is())
    }
}

/// One of the two directories.
struct Side {
    /// Keeps the directory alive.
    _setup: Setup,
    dir: DataDir,
    data: PathBuf,
    study: u64,
}

/// The two neighbouring directories.
struct Neighbours {
    _tmp: tempfile::TempDir,
    sides: [Side; 2],
    target: Target,
}

/// ZIP3 prefixes Safe Harbor replaces by 000 (not a unique quasi-identifier).
const RESTRICTED: [&str; 17] = [
    "036", "059", "063", "102", "203", "556", "692", "790", "821", "823", "830", "831", "878",
    "879", "884", "890", "893",
];

/// Every resource of every bundle file under `dir`, with its file.
fn resources(dir: &Path) -> Vec<(PathBuf, Value)> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    let mut out = Vec::new();
    for f in files {
        let bundle: Value = serde_json::from_slice(&std::fs::read(&f).unwrap()).unwrap();
        for e in bundle["entry"].as_array().unwrap() {
            out.push((f.clone(), e["resource"].clone()));
        }
    }
    out
}

fn race_of(patient: &Value) -> String {
    patient["extension"][0]["extension"][0]["valueCoding"]["display"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// Chooses a target whose (birth year, ZIP3, sex) is unique and whose race
/// is White, and writes the second cohort: the same bundles, with the
/// target's race changed to Asian and an HIV diagnosis added.
fn neighbouring_bundles(tmp: &Path) -> (PathBuf, PathBuf, Target) {
    let first = bundles(tmp, PATIENTS, 11);
    let all = resources(&first);
    let key = |p: &Value| {
        let year: i64 = p["birthDate"].as_str().unwrap()[..4].parse().unwrap();
        let zip = p["address"][0]["postalCode"].as_str().unwrap()[..3].to_string();
        (year, zip, p["gender"].as_str().unwrap().to_string())
    };
    let patients: Vec<&Value> = all
        .iter()
        .map(|(_, r)| r)
        .filter(|r| r["resourceType"] == "Patient")
        .collect();
    let (file, target) = all
        .iter()
        .filter(|(_, r)| r["resourceType"] == "Patient")
        .find(|(_, p)| {
            let k = key(p);
            race_of(p) == "White"
                && !RESTRICTED.contains(&k.1.as_str())
                && 2026 - k.0 <= 89
                && patients.iter().filter(|q| key(q) == k).count() == 1
        })
        .expect("a patient with a unique (year, ZIP3, sex)");
    let (year, zip3, gender) = key(target);
    let id = target["id"].as_str().unwrap().to_string();

    let second = tmp.join("bundles-neighbour");
    std::fs::create_dir_all(&second).unwrap();
    for entry in std::fs::read_dir(&first).unwrap() {
        let path = entry.unwrap().path();
        let mut bundle: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        if path == *file {
            let entries = bundle["entry"].as_array_mut().unwrap();
            for e in entries.iter_mut() {
                if e["resource"]["id"] == id.as_str() {
                    let coding = &mut e["resource"]["extension"][0]["extension"][0]["valueCoding"];
                    coding["code"] = "2028-9".into();
                    coding["display"] = "Asian".into();
                }
            }
            entries.push(serde_json::json!({
                "fullUrl": "urn:uuid:0b6f3a52-2d6c-4d8e-9a51-7c0e5f2b2020",
                "resource": {
                    "resourceType": "Condition",
                    "id": "0b6f3a52-2d6c-4d8e-9a51-7c0e5f2b2020",
                    "clinicalStatus": { "coding": [{ "system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": "active" }] },
                    "verificationStatus": { "coding": [{ "system": "http://terminology.hl7.org/CodeSystem/condition-ver-status", "code": "confirmed" }] },
                    "code": { "coding": [{ "system": "http://hl7.org/fhir/sid/icd-10-cm", "code": "B20", "display": "Human immunodeficiency virus [HIV] disease" }] },
                    "subject": { "reference": format!("urn:uuid:{id}") },
                    "onsetDateTime": "2024-05-01",
                },
                "request": { "method": "PUT", "url": "Condition/0b6f3a52-2d6c-4d8e-9a51-7c0e5f2b2020" },
            }));
        }
        std::fs::write(
            second.join(path.file_name().unwrap()),
            serde_json::to_vec(&bundle).unwrap(),
        )
        .unwrap();
    }
    (first, second, Target { year, zip3, gender })
}

/// Both directories, each with the study approved, every patient consenting
/// and sharing their HIV flag encrypted (1 for the target in the second).
fn neighbours() -> Neighbours {
    let tmp = tempfile::tempdir().unwrap();
    let (b0, b1, target) = neighbouring_bundles(tmp.path());
    let sides = [b0, b1].map(|input| {
        let s = setup_from(&input);
        let (study, patients) = s.approved_study(STUDY, PATIENTS as usize);
        let vault = s.dir.unlock(PASSPHRASE).unwrap();
        let rt = tokio::runtime::Runtime::new().unwrap();
        let session = rt.block_on(Session::open(&s.dir, &vault)).unwrap();
        let flags: Vec<_> = patients.into_iter().map(|p| (p, 0)).collect();
        rt.block_on(session.encrypt_fields(vault.conn(), study, "hiv", &flags))
            .unwrap();
        Side {
            dir: s.dir.clone(),
            data: s.data.clone(),
            _setup: s,
            study,
        }
    });
    Neighbours {
        _tmp: tmp,
        sides,
        target,
    }
}

/// What one query showed the researcher, minus its noisy values.
#[derive(Clone, Debug, PartialEq)]
struct Observed {
    /// answer, error, or killed (by a signal).
    outcome: &'static str,
    /// The error text (with the directory's path removed).
    message: String,
    /// Budget spent by the call (ε).
    spent: String,
    /// Exact quantities printed beside the noise (must be absent).
    exact: BTreeMap<String, String>,
    /// The groups released, in order.
    groups: Vec<String>,
    /// The query's ledger events, without their hashes.
    events: Vec<String>,
    /// Audit entries the query added: the anchored audit head's length
    /// (`PatientRecords.LogAnchored`, public on chain) grows by this much.
    audit_entries: i64,
    /// How long the researcher waited.
    elapsed_ms: u128,
    /// The deadline `EXPLAIN PRIVACY` announced (0: none).
    deadline_ms: u128,
}

/// What is left of the study's ε.
fn remaining(data: &Path, study: u64) -> f64 {
    let o = cohort(data, &["study", "show", &study.to_string(), "--json"]);
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    v["remaining"]
        .as_str()
        .unwrap()
        .trim_start_matches("ε ")
        .parse()
        .unwrap()
}

/// The ledger's budget events after block `after`, as text without hashes
/// (whatever the columns of this version of the follower's table).
fn events_after(side: &Side, after: i64) -> Vec<String> {
    cohort(&side.data, &["ledger", "sync"]);
    let conn = side.dir.connect().unwrap();
    let mut s = conn
        .prepare("SELECT * FROM ledger_budget_events WHERE block > ?1 ORDER BY block, log_index")
        .unwrap();
    let names: Vec<String> = s.column_names().map(str::to_string).collect();
    let mut rows = s.query([after]).unwrap();
    let mut out = Vec::new();
    while let Some(row) = rows.next().unwrap() {
        let mut parts = Vec::new();
        for (i, name) in names.iter().enumerate() {
            let value: Option<String> = row
                .get::<_, Option<String>>(i)
                .or_else(|_| {
                    row.get::<_, Option<i64>>(i)
                        .map(|v| v.map(|v| v.to_string()))
                })
                .unwrap_or(None);
            let value = value.unwrap_or_default();
            match name.as_str() {
                "kind" | "cost" | "delta_cost" | "fee" | "members" | "contributors" => {
                    parts.push(format!("{name} {value}"))
                }
                "members_root" | "contributors_root" => {
                    let zero = value.trim_start_matches("0x").chars().all(|c| c == '0');
                    parts.push(format!("{name} {}", if zero { "none" } else { "set" }))
                }
                _ => {}
            }
        }
        out.push(parts.join(", "));
    }
    out
}

/// The audit log's length (what an anchor of it puts on chain).
fn audit_length(side: &Side) -> i64 {
    let conn = side.dir.connect().unwrap();
    conn.query_row("SELECT COUNT(*) FROM audit", [], |r| r.get(0))
        .unwrap()
}

fn last_block(side: &Side) -> i64 {
    cohort(&side.data, &["ledger", "sync"]);
    let conn = side.dir.connect().unwrap();
    conn.query_row(
        "SELECT COALESCE(MAX(block), 0) FROM ledger_budget_events",
        [],
        |r| r.get(0),
    )
    .unwrap()
}

/// Keys of an answer that would carry an exact, data-dependent quantity.
const EXACT_KEYS: [&str; 4] = [
    "contributors",
    "rows_used",
    "rows_dropped",
    "contributors_root",
];

fn exact_fields(v: &Value, out: &mut BTreeMap<String, String>) {
    match v {
        Value::Object(map) => {
            for (k, x) in map {
                if EXACT_KEYS.contains(&k.as_str()) {
                    out.insert(k.clone(), x.to_string());
                }
                exact_fields(x, out);
            }
        }
        Value::Array(items) => items.iter().for_each(|x| exact_fields(x, out)),
        _ => {}
    }
}

/// Runs `sql` from the CLI on `side` as the researcher and observes it.
fn observe(side: &Side, sql: &str, extra: &[&str]) -> Observed {
    let study = side.study.to_string();
    let mut explain = vec![
        "--as",
        "researcher",
        "query",
        &study,
        sql,
        "--explain",
        "--json",
    ];
    explain.extend_from_slice(extra);
    let planned: Value =
        serde_json::from_slice(&cohort(&side.data, &explain).stdout).unwrap_or(Value::Null);
    let before = remaining(&side.data, side.study);
    let block = last_block(side);
    let audited = audit_length(side);
    let mut args = vec!["--as", "researcher", "query", &study, sql, "--json"];
    args.extend_from_slice(extra);
    let started = Instant::now();
    let o = cohort(&side.data, &args);
    let elapsed_ms = started.elapsed().as_millis();
    let after = remaining(&side.data, side.study);
    let events = events_after(side, block);
    let audit_entries = audit_length(side) - audited;
    let (outcome, message, json) = match o.status.code() {
        Some(0) => (
            "answer",
            String::new(),
            serde_json::from_slice::<Value>(&o.stdout).unwrap_or(Value::Null),
        ),
        Some(_) => (
            "error",
            without_generated_ids(&stderr(&o).replace(side.data.to_str().unwrap(), "<data>")),
            Value::Null,
        ),
        None => ("killed", String::new(), Value::Null),
    };
    let mut exact = BTreeMap::new();
    exact_fields(&json, &mut exact);
    let groups = json["answer"]["rows"]
        .as_array()
        .map(|rows| {
            rows.iter()
                .map(|r| match &r[0] {
                    Value::String(s) => s.clone(),
                    _ => "(value)".into(),
                })
                .collect()
        })
        .unwrap_or_default();
    Observed {
        outcome,
        message,
        spent: format!("{:.6}", before - after),
        exact,
        groups,
        events,
        audit_entries,
        elapsed_ms,
        deadline_ms: planned["deadline_ms"].as_u64().unwrap_or(0) as u128,
    }
}

/// `text` with the query ids the CLI generates from its clock
/// (`q-<nanoseconds>`, a public fact that differs on every call) written as
/// `q-<generated>`, so the two sides' messages compare equal when only
/// those differ.
fn without_generated_ids(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("`q-") {
        out.push_str(&rest[..at + 3]);
        let tail = &rest[at + 3..];
        let digits = tail.bytes().take_while(u8::is_ascii_digit).count();
        if digits > 0 && tail[digits..].starts_with('`') {
            out.push_str("<generated>");
        } else {
            out.push_str(&tail[..digits]);
        }
        rest = &tail[digits..];
    }
    out.push_str(rest);
    out
}

#[test]
fn generated_query_ids_are_masked_and_chosen_ones_kept() {
    assert_eq!(
        without_generated_ids(
            "query `q-1796643392459471578` ended; query `q-7` and `mine` and `q-12x` and `q-"
        ),
        "query `q-<generated>` ended; query `q-<generated>` and `mine` and `q-12x` and `q-"
    );
}

/// How much the time a researcher waits may differ between the sides: the
/// noise of starting a process and of a shared machine, far below what an
/// expensive branch for one patient costs without fixed-time release.
const DURATION_TOLERANCE_MS: u128 = 1_000;

/// One adversarial query of a family.
struct Probe<'a> {
    family: &'static str,
    name: &'static str,
    sql: String,
    extra: Vec<&'a str>,
}

fn join(target_predicate: &str) -> String {
    format!(
        "SELECT COUNT(*) AS n FROM patients p JOIN conditions c ON p.patient_id = c.patient_id \
         WHERE {target_predicate}"
    )
}

/// The battery, over the target.
fn battery(t: &Target) -> Vec<Probe<'static>> {
    let hiv = t.has_hiv();
    let oracle = |name: &'static str, fallible: &str| Probe {
        family: "error oracle",
        name,
        sql: join(&format!(
            "CASE WHEN {hiv} THEN {fallible} ELSE NULL END IS NULL"
        )),
        extra: vec![],
    };
    let zero = "(p.birth_date - p.birth_date)";
    vec![
        oracle("division by zero", &format!("p.birth_date / {zero}")),
        oracle("modulo by zero", &format!("p.birth_date % {zero}")),
        oracle("cast", "CAST(p.race AS INT)"),
        oracle("make_date", "make_date(p.birth_date, 13, 1)"),
        oracle("to_date", "to_date(p.race)"),
        oracle("substr", "substr(p.race, 1, p.birth_date - 3000)"),
        oracle("split_part", &format!("split_part(p.race, ' ', {zero})")),
        oracle("power overflow", "power(p.birth_date, 40)"),
        oracle("arrow_cast", "arrow_cast(p.race, 'Int64')"),
        oracle("a regular expression from the data", "p.race SIMILAR TO p.race || '('"),
        oracle("a computed date part", "date_part(p.race, make_date(2000, 1, 1))"),
        Probe {
            family: "value exfiltration",
            name: "cast error text",
            sql: format!(
                "SELECT COUNT(*) AS n FROM patients p WHERE CASE WHEN {} THEN CAST(p.race AS INT) ELSE 0 END = 0",
                t.is()
            ),
            extra: vec![],
        },
        Probe {
            family: "post-noise error",
            name: "cast over the noisy count",
            sql: "SELECT CASE WHEN n > 1 THEN CAST(CAST(n AS VARCHAR) || 'x' AS INT) ELSE 0 END AS v \
                  FROM (SELECT COUNT(*) AS n FROM patients)"
                .into(),
            extra: vec!["--query-id", "post-noise"],
        },
        Probe {
            family: "timing",
            name: "expensive branch",
            sql: join(&format!(
                "CASE WHEN {hiv} THEN length(lpad(p.race, p.birth_date * 400000, 'b')) ELSE 0 END > 0"
            )),
            extra: vec![],
        },
        Probe {
            family: "resource exhaustion",
            name: "1.4 TB for one patient",
            sql: join(&format!(
                "CASE WHEN {hiv} THEN length(lpad(p.race, p.birth_date * 700000000, 'b')) ELSE 0 END > 0"
            )),
            extra: vec![],
        },
        Probe {
            family: "contributor/fee/event differencing",
            name: "count of the target with B20",
            sql: join(&hiv),
            extra: vec![],
        },
        Probe {
            family: "tiny ε",
            name: "count of the target with B20 at ε = 1e-9",
            sql: join(&hiv),
            extra: vec!["--epsilon", "0.000000001"],
        },
        Probe {
            family: "key predicates in HAVING",
            name: "HAVING on a public key",
            sql: "SELECT gender, COUNT(*) AS n FROM patients GROUP BY gender HAVING gender = 'female'"
                .into(),
            extra: vec![],
        },
        Probe {
            family: "encrypted-column work",
            name: "an encrypted sum over the target's plaintext predicate",
            sql: format!(
                "SELECT SUM(hiv) AS s FROM patients p WHERE {} AND p.race = 'Asian'",
                t.is()
            ),
            extra: vec![],
        },
    ]
}

/// Compares one probe's observables between the sides.
fn compare(probe: &Probe, seen: &[Observed; 2], failures: &mut Vec<String>) {
    let [a, b] = seen;
    let mut differ = |what: &str, x: String, y: String| {
        if x != y {
            failures.push(format!(
                "[{}] {}: {what} differs between neighbours:\n    without: {x}\n    with:    {y}",
                probe.family, probe.name
            ));
        }
    };
    differ("the outcome", a.outcome.into(), b.outcome.into());
    differ("the message", a.message.clone(), b.message.clone());
    differ("the cost charged", a.spent.clone(), b.spent.clone());
    differ(
        "the groups released",
        format!("{:?}", a.groups),
        format!("{:?}", b.groups),
    );
    differ(
        "the ledger events",
        format!("{:?}", a.events),
        format!("{:?}", b.events),
    );
    differ(
        "the audit entries added (the anchored audit head's length)",
        a.audit_entries.to_string(),
        b.audit_entries.to_string(),
    );
    differ(
        "the deadline",
        a.deadline_ms.to_string(),
        b.deadline_ms.to_string(),
    );
    // The durations of one probe on the two sides: equal up to the noise of
    // starting a process (a released outcome waits for its deadline).
    if a.elapsed_ms.abs_diff(b.elapsed_ms) > DURATION_TOLERANCE_MS {
        failures.push(format!(
            "[{}] {}: the duration differs between neighbours: {} ms without, {} ms with",
            probe.family, probe.name, a.elapsed_ms, b.elapsed_ms
        ));
    }
    for (side, o) in ["without", "with"].iter().zip(seen) {
        if !o.exact.is_empty() {
            failures.push(format!(
                "[{}] {}: the answer {side} the secret carries exact quantities {:?}",
                probe.family, probe.name, o.exact
            ));
        }
        if o.events.iter().any(|e| e.contains("kind released")) {
            failures.push(format!(
                "[{}] {}: {side} the secret, a reservation was released ({}): an ending after \
                 the reservation must be charged",
                probe.family,
                probe.name,
                o.message.trim()
            ));
        }
        if o.elapsed_ms < o.deadline_ms {
            failures.push(format!(
                "[{}] {}: {side} the secret, the outcome came after {} ms, before its deadline of {} ms",
                probe.family, probe.name, o.elapsed_ms, o.deadline_ms
            ));
        }
        if o.outcome == "killed" {
            failures.push(format!(
                "[{}] {}: the process was killed {side} the secret",
                probe.family, probe.name
            ));
        }
    }
}

/// A session on `side` whose deadlines are measured on a manual clock (no
/// waiting), for the in-process parts of the audit.
fn session(side: &Side) -> (tokio::runtime::Runtime, Session, Arc<ManualClock>) {
    let vault = side.dir.unlock(PASSPHRASE).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let clock = Arc::new(ManualClock::new());
    let dynamic: Arc<dyn Clock> = clock.clone();
    let session = rt
        .block_on(Session::open(&side.dir, &vault))
        .unwrap()
        .with_clock(dynamic);
    (rt, session, clock)
}

/// The encrypted work an in-process query did: the job's progress.
fn encrypted_work(side: &Side, sql: &str) -> String {
    let (rt, session, _) = session(side);
    let request = QueryRequest {
        sql: sql.into(),
        ..Default::default()
    };
    let result = rt.block_on(session.query("researcher", side.study, &request));
    let (done, total) = session.job().progress();
    format!(
        "{} after {done} of {total} records",
        if result.is_ok() { "answered" } else { "failed" }
    )
}

#[test]
fn neighbouring_directories_look_the_same_to_an_adversarial_researcher() {
    let n = neighbours();
    let mut failures = Vec::new();
    run_battery(&n, &[], &mut failures);

    // Encrypted-column work: the records the encrypted aggregate processed.
    let sql = format!(
        "SELECT SUM(hiv) AS s FROM patients p WHERE {} AND p.race = 'Asian'",
        n.target.is()
    );
    let work = [
        encrypted_work(&n.sides[0], &sql),
        encrypted_work(&n.sides[1], &sql),
    ];
    if work[0] != work[1] {
        failures.push(format!(
            "[encrypted-column work] the encrypted aggregate's work differs: without {}, with {}",
            work[0], work[1]
        ));
    }

    // The server: the same probes over Flight SQL, and the server stays up.
    server_probes(&n, &[], &mut failures);

    // The answers' distribution.
    distribution(&n, &mut failures);

    assert!(
        failures.is_empty(),
        "the privacy audit found {} leak(s):\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// The same audit with the exact part of every private plan on a Ballista
/// cluster: a scheduler and two executors in this test's process, on
/// loopback (docs/BALLISTA.md). The battery runs from the CLI with
/// `--engine-scheduler` (errors raised on an executor, the guards that
/// travel with the plan, the fixed-time release, the charged endings), and
/// the answers' distribution through a session whose plans all ran as
/// cluster jobs. A cluster that does not answer refuses a query before its
/// cost is reserved.
#[test]
fn the_audit_holds_with_the_plans_on_a_ballista_cluster() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let url = rt
        .block_on(cohort_distributed::standalone(2, 1))
        .expect("a scheduler and two executors start on loopback");
    let n = neighbours();
    let mut failures = Vec::new();
    run_battery(&n, &["--engine-scheduler", &url], &mut failures);
    // `cohort serve` with `[engine]` from its environment.
    server_probes(
        &n,
        &[
            ("COHORT_ENGINE_KIND", "ballista"),
            ("COHORT_ENGINE_SCHEDULER", &url),
        ],
        &mut failures,
    );

    let jobs = Arc::new(CountingEngine {
        inner: cohort_distributed::BallistaEngine::new(&url, 2).unwrap(),
        jobs: std::sync::atomic::AtomicUsize::new(0),
    });
    distribution_of(
        &n,
        &join(&n.target.has_hiv()),
        Some(jobs.clone()),
        CLUSTER_SAMPLES,
        &mut failures,
    );
    let ran = jobs.jobs.load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        ran >= 2 * CLUSTER_SAMPLES,
        "every query of the distribution runs as a cluster job ({ran} jobs)"
    );

    // No cluster there: the server does not start, and a query is refused
    // before the reservation, free.
    let side = &n.sides[0];
    let o = cohort_env(
        &side.data,
        &["serve", "--listen", "127.0.0.1:0"],
        &[
            ("COHORT_ENGINE_KIND", "ballista"),
            ("COHORT_ENGINE_SCHEDULER", "http://127.0.0.1:1"),
        ],
    );
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("[engine]") && stderr(&o).contains("no Ballista scheduler answers"),
        "{}",
        stderr(&o)
    );
    let before = remaining(&side.data, side.study);
    let study = side.study.to_string();
    let o = cohort(
        &side.data,
        &[
            "--as",
            "researcher",
            "query",
            &study,
            "SELECT COUNT(*) AS n FROM patients",
            "--engine-scheduler",
            "http://127.0.0.1:1",
        ],
    );
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("no Ballista scheduler answers at http://127.0.0.1:1"),
        "{}",
        stderr(&o)
    );
    assert_eq!(
        remaining(&side.data, side.study),
        before,
        "a cluster that is down costs nothing"
    );

    assert!(
        failures.is_empty(),
        "the privacy audit on Ballista found {} leak(s):\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// A Ballista engine that counts the jobs it was given.
#[derive(Debug)]
struct CountingEngine {
    inner: cohort_distributed::BallistaEngine,
    jobs: std::sync::atomic::AtomicUsize,
}

impl cohort_query_planner::distributed::RemoteEngine for CountingEngine {
    fn execute(
        &self,
        plan: Arc<dyn datafusion::physical_plan::ExecutionPlan>,
        context: Arc<datafusion::execution::TaskContext>,
    ) -> datafusion::common::Result<datafusion::physical_plan::SendableRecordBatchStream> {
        self.jobs.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.inner.execute(plan, context)
    }

    fn partitions(&self) -> Option<usize> {
        self.inner.partitions()
    }
}

/// Whether both sides ended the same way, with the same message.
fn same_outcome(seen: &[Observed; 2]) -> bool {
    seen[0].outcome == seen[1].outcome && seen[0].message == seen[1].message
}

/// One probe on both sides at once: the two runs meet the same load (and
/// the battery takes half the time: most of a run is its wait for the
/// fixed-time release).
fn observe_both(n: &Neighbours, sql: &str, extra: &[&str]) -> [Observed; 2] {
    std::thread::scope(|s| {
        let without = s.spawn(|| observe(&n.sides[0], sql, extra));
        let with = observe(&n.sides[1], sql, extra);
        [without.join().expect("the probe's thread"), with]
    })
}

/// Every probe of the battery from the CLI on both sides (with `engine`'s
/// flags after the probe's own), compared.
fn run_battery(n: &Neighbours, engine: &[&str], failures: &mut Vec<String>) {
    for probe in battery(&n.target) {
        let probe = Probe {
            extra: probe.extra.iter().chain(engine).copied().collect(),
            ..probe
        };
        let mut seen = observe_both(n, &probe.sql, &probe.extra);
        let mut kept_extra: Vec<String> = probe.extra.iter().map(|a| a.to_string()).collect();
        // Other tests share the machine. A query that meets a busy moment
        // can take longer on one side, or overrun its deadline there (the
        // charged failure); one whose outcome or duration depends on the
        // data does so every time. So a probe whose outcomes differ, or
        // whose durations differ beyond the tolerance, is run twice more on
        // both sides: the first pair that agrees on the outcome is the one
        // compared, and for durations each side's fastest run is kept. A
        // probe with its own query id runs again under fresh ids (the same
        // id would be a free replay).
        for retry in 0..2 {
            let agree = same_outcome(&seen);
            if agree && seen[0].elapsed_ms.abs_diff(seen[1].elapsed_ms) <= DURATION_TOLERANCE_MS {
                break;
            }
            let extra: Vec<String> = probe
                .extra
                .iter()
                .enumerate()
                .map(|(i, a)| {
                    if i > 0 && probe.extra[i - 1] == "--query-id" {
                        format!("{a}-retry-{retry}")
                    } else {
                        a.to_string()
                    }
                })
                .collect();
            let args: Vec<&str> = extra.iter().map(String::as_str).collect();
            let again = observe_both(n, &probe.sql, &args);
            if !agree {
                if same_outcome(&again) {
                    seen = again;
                    kept_extra = extra;
                }
            } else {
                for (o, again) in seen.iter_mut().zip(again) {
                    o.elapsed_ms = o.elapsed_ms.min(again.elapsed_ms);
                }
            }
        }
        compare(&probe, &seen, failures);
        if probe.family == "key predicates in HAVING" {
            for o in &seen {
                if o.outcome == "answer" && o.groups != ["female"] {
                    failures.push(format!(
                        "[{}] {}: HAVING gender = 'female' released the groups {:?}",
                        probe.family, probe.name, o.groups
                    ));
                }
            }
        }
        if probe.family == "post-noise error" {
            // Replays: the same query id again is the same outcome, free.
            let kept: Vec<&str> = kept_extra.iter().map(String::as_str).collect();
            let again = observe_both(n, &probe.sql, &kept);
            for (first, again) in seen.iter().zip(&again) {
                if again.spent != format!("{:.6}", 0.0) || again.message != first.message {
                    failures.push(format!(
                        "[replays] a repeated query id spent {} or ended otherwise ({:?} then {:?})",
                        again.spent, first.message, again.message
                    ));
                }
            }
        }
    }
}

/// Flight SQL: the message of a refused or failed statement, whether the
/// answer's metadata carries exact quantities, and that the server survives
/// every probe (among them one asking for 1.4 TB). The server runs with
/// `env` (its `[engine]`, say).
fn server_probes(n: &Neighbours, env: &[(&str, &str)], failures: &mut Vec<String>) {
    // Both sides' servers at once, as in `observe_both`.
    let sides: Vec<(Vec<String>, Vec<String>)> = std::thread::scope(|s| {
        let runs: Vec<_> = n
            .sides
            .iter()
            .map(|side| s.spawn(|| server_side(n, side, env)))
            .collect();
        runs.into_iter()
            .map(|run| run.join().expect("a side's thread"))
            .collect()
    });
    let mut seen = Vec::new();
    for (observed, side_failures) in sides {
        failures.extend(side_failures);
        seen.push(observed);
    }
    for (a, b) in seen[0].iter().zip(&seen[1]) {
        if a != b {
            failures.push(format!(
                "[server] a Flight SQL outcome differs between neighbours:\n    without: {a}\n    with:    {b}"
            ));
        }
    }
}

/// The battery over Flight SQL on one side's server: what each probe
/// observed, and the failures seen on that side alone.
fn server_side(n: &Neighbours, side: &Side, env: &[(&str, &str)]) -> (Vec<String>, Vec<String>) {
    use crate::server::{Server, ask, client, login};
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut failures = Vec::new();
    let server = Server::start_env(&side.data, env);
    let token = login(&side.data, &server, "researcher");
    let study = side.study.to_string();
    let mut observed = Vec::new();
    for probe in battery(&n.target) {
        if !probe.extra.is_empty() {
            continue;
        }
        let outcome = rt.block_on(async {
            let mut c = client(&side.data, &server.url, Some(&token), Some(&study)).await;
            ask(&mut c, &probe.sql).await
        });
        let text = match outcome {
            Ok(batches) => {
                let meta: Vec<String> = batches
                    .first()
                    .map(|b| {
                        b.schema()
                            .metadata()
                            .keys()
                            .filter(|k| EXACT_KEYS.iter().any(|e| k.contains(e)))
                            .cloned()
                            .collect()
                    })
                    .unwrap_or_default();
                if !meta.is_empty() {
                    failures.push(format!(
                        "[server] {}: the answer's metadata carries {meta:?}",
                        probe.name
                    ));
                }
                "answer".to_string()
            }
            Err(status) => {
                without_generated_ids(&format!("{:?}: {}", status.code(), status.message()))
            }
        };
        observed.push(format!("{}: {text}", probe.name));
    }
    let health = cohort(&side.data, &["health", "--server", &server.url]);
    if !health.status.success() {
        failures.push(format!(
            "[server] the server did not survive the battery: {}{}",
            stdout(&health),
            stderr(&health)
        ));
    }
    let (_, logs) = server.stop_with_logs();
    let on_cluster = logs.contains("private plans run their exact part on a Ballista cluster");
    if on_cluster != env.iter().any(|(k, _)| *k == "COHORT_ENGINE_KIND") {
        failures.push(format!(
            "[server] with {env:?}, the server ran its plans on a cluster: {on_cluster}"
        ));
    }
    (observed, failures)
}

/// The answers' distribution on the two sides differs no more than ε
/// allows. The count of the target's B20 rows is 0 on one side and 1 on
/// the other; 300 answers at ε = 1 are drawn on each, and for every
/// threshold t the empirical privacy loss `ln(P[n₁ ≥ t] / P[n₀ ≥ t])` (and
/// the other way) is bounded below with Clopper-Pearson intervals; the
/// audit fails if a lower bound exceeds ε. The bounds hold with probability
/// 1 − 1e-6 jointly (Bonferroni over the thresholds and both directions),
/// so the false-failure rate is at most 1e-6.
fn distribution(n: &Neighbours, failures: &mut Vec<String>) {
    distribution_of(n, &join(&n.target.has_hiv()), None, 300, failures);
}

/// Answers drawn on each side when every plan runs as a cluster job (about
/// 0.2 s each, most of it Ballista's 50 ms polling of stages and job
/// status). The false-failure rate is the same at any sample size; the
/// power is lower than the local test's 300, enough to catch exact or
/// barely noised answers.
const CLUSTER_SAMPLES: usize = 100;

/// The answers of `sql` (one count) on both sides, `samples` each at ε = 1,
/// their exact part run on `remote` if given: the Clopper-Pearson test of
/// the mechanism audit at every threshold.
fn distribution_of(
    n: &Neighbours,
    sql: &str,
    remote: Option<Arc<dyn cohort_query_planner::distributed::RemoteEngine>>,
    samples: usize,
    failures: &mut Vec<String>,
) {
    const EPSILON: f64 = 1.0;
    let sql = sql.to_string();
    // Both sides at once (a cluster's answers mostly wait for its polling).
    let draw = |side: &Side| -> Vec<i64> {
        let (rt, session, _) = session(side);
        let session = match &remote {
            Some(remote) => session.with_remote_engine(Arc::clone(remote)),
            None => session,
        };
        (0..samples)
            .map(|_| {
                let out = rt
                    .block_on(session.query(
                        "researcher",
                        side.study,
                        &QueryRequest {
                            sql: sql.clone(),
                            epsilon: Some("1".parse().unwrap()),
                            ..Default::default()
                        },
                    ))
                    .expect("the distribution's query answers");
                out.answer.unwrap().rows[0][0].as_i64().unwrap()
            })
            .collect()
    };
    let draws: Vec<Vec<i64>> = std::thread::scope(|s| {
        let without = s.spawn(|| draw(&n.sides[0]));
        let with = draw(&n.sides[1]);
        vec![without.join().expect("a side's thread"), with]
    });
    let thresholds: Vec<i64> = (-2..=12).collect();
    let alpha = 1e-6 / (4 * thresholds.len()) as f64;
    for &t in &thresholds {
        let k: Vec<u64> = draws
            .iter()
            .map(|d| d.iter().filter(|&&v| v >= t).count() as u64)
            .collect();
        for (x, y) in [(0, 1), (1, 0)] {
            for (kx, ky) in [(k[x], k[y]), (samples as u64 - k[x], samples as u64 - k[y])] {
                let low = clopper_pearson::cp_lower(ky, samples as u64, alpha);
                let high = clopper_pearson::cp_upper(kx, samples as u64, alpha);
                if low > 0.0 && (low / high).ln() > EPSILON {
                    failures.push(format!(
                        "[answer distribution] at threshold {t}, the privacy loss between the \
                         neighbours is at least {:.3} > ε = {EPSILON} ({ky} against {kx} of {samples})",
                        (low / high).ln()
                    ));
                }
            }
        }
    }
}

/// `cohort dp` on two neighbouring tables: the second adds one patient with
/// extreme values (out of every bound, outside the public domain, a rare
/// key). Whatever the statistic, and for the requests refused before any
/// budget is spent, everything but the noisy value is the same on both
/// sides: success, the message, the mechanism, its scale and accuracy, the
/// charge, what is left of the budget, how many values were released, and
/// no exact quantity beside them. (Durations are the research path's audit
/// above; `cohort dp` releases at the same `deadline::run_until`.)
#[test]
fn cohort_dp_on_neighbouring_tables_differs_only_in_noise() {
    let tmp = tempfile::tempdir().unwrap();
    let mut base = String::from("patient,age,sex,cost\n");
    for i in 0..40 {
        let sex = ["F", "M"][i % 2];
        base.push_str(&format!("p{i},{},{sex},{}\n", 20 + i, 10 * (i % 7)));
        base.push_str(&format!("p{i},{},{sex},{}\n", 20 + i, 5 * (i % 3)));
    }
    let with = format!("{base}target,1000,Q,1000000000\ntarget,1000,Q,1000000000\n");
    let sides: Vec<(PathBuf, PathBuf)> = [("without", base.clone()), ("with", with)]
        .into_iter()
        .map(|(name, csv)| {
            let input = tmp.path().join(format!("{name}.csv"));
            std::fs::write(&input, csv).unwrap();
            let budget = tmp.path().join(format!("{name}.json"));
            let b = budget.to_str().unwrap();
            let o = cohort(
                tmp.path(),
                &[
                    "budget",
                    "init",
                    "--file",
                    b,
                    "--epsilon",
                    "100",
                    "--delta",
                    "0.001",
                ],
            );
            assert!(o.status.success(), "{}", stderr(&o));
            (input, budget)
        })
        .collect();
    let battery: [&[&str]; 9] = [
        &["count"],
        &["sum", "--column", "cost", "--lower", "0", "--upper", "100"],
        &["mean", "--column", "cost", "--lower", "0", "--upper", "100"],
        &["histogram", "--column", "sex", "--domain", "F,M"],
        &["keys", "--column", "sex", "--delta", "0.000001"],
        &["quantile", "--column", "age", "--candidates", "20,40,60"],
        // Refused before the reservation, for free, on both sides alike.
        &["mean", "--column", "cost", "--lower", "5", "--upper", "1"],
        &["sum", "--column", "nope", "--lower", "0", "--upper", "1"],
        &[
            "quantile",
            "--column",
            "age",
            "--alpha",
            "2",
            "--candidates",
            "1",
        ],
    ];
    let observe = |side: &(PathBuf, PathBuf), statistic: &[&str], id: &str| {
        let mut args = vec![
            "dp",
            "--input",
            side.0.to_str().unwrap(),
            "--budget",
            side.1.to_str().unwrap(),
            "--unit",
            "patient",
            "--max-rows",
            "2",
            "--epsilon",
            "1",
            "--deadline-ms",
            "0",
            "--query-id",
            id,
            "--json",
        ];
        args.extend_from_slice(statistic);
        let o = cohort(tmp.path(), &args);
        let mut out: Value = serde_json::from_slice(&o.stdout).unwrap_or(Value::Null);
        // The noisy value itself may differ, but not how many it holds.
        let released = match out.get("value") {
            Some(Value::Array(values)) => values.len() as i64,
            Some(_) => 1,
            None => 0,
        };
        if let Some(fields) = out.as_object_mut() {
            fields.remove("value");
            // A mean's 95% error is computed from its noisy count: noise
            // too, so only its presence is compared.
            if statistic[0] == "mean"
                && let Some(error) = fields.get_mut("accuracy_95")
            {
                *error = Value::Bool(error.as_f64().is_some_and(|e| e > 0.0));
            }
        }
        (o.status.success(), stderr(&o), out, released)
    };
    for (i, statistic) in battery.iter().enumerate() {
        let id = format!("q{i}");
        let a = observe(&sides[0], statistic, &id);
        let b = observe(&sides[1], statistic, &id);
        assert_eq!(
            a,
            b,
            "`cohort dp {}` differs between neighbours",
            statistic.join(" ")
        );
        if i < 6 {
            assert!(a.0, "`cohort dp {}` answers: {}", statistic.join(" "), a.1);
            let mut fields: Vec<&String> = a.2.as_object().unwrap().keys().collect();
            fields.sort();
            assert_eq!(
                fields,
                [
                    "accuracy_95",
                    "charge",
                    "debit",
                    "mechanism",
                    "scale",
                    "statistic"
                ],
                "no exact quantity beside the noisy value"
            );
        } else {
            assert!(!a.0, "`cohort dp {}` is refused", statistic.join(" "));
        }
    }
}

/// Geography: a consenting patient whose records the policy keeps out of
/// a study of another country is simply not in its view. Both directories
/// hold the same records and consents; in the second one patient's records
/// came from a US organisation (a DE study, no `[[research]]` rule). What
/// the researcher observes (outcome, message, cost, events, audit growth,
/// duration, EXPLAIN's deadline, exact quantities) is the same on both;
/// only a steward or auditor sees the count left out.
#[test]
fn a_patient_left_out_by_geography_is_invisible_to_the_researcher() {
    let tmp = tempfile::tempdir().unwrap();
    let input = bundles(tmp.path(), PATIENTS, 11);
    let policy = tmp.path().join("geo.toml");
    std::fs::write(
        &policy,
        "default = \"DE\"\nresearch_cross_border = \"refuse\"\n",
    )
    .unwrap();
    let sides: Vec<Side> = (0..2)
        .map(|i| {
            let s = setup_from(&input);
            crate::cohort_json(&s.data, &["geo", "set", policy.to_str().unwrap()]);
            let (study, _) = s.approved_study(STUDY, PATIENTS as usize);
            if i == 1 {
                let conn = s.dir.connect().unwrap();
                let moved = conn
                    .execute(
                        "INSERT INTO record_jurisdictions(record_id, jurisdiction)
                         SELECT record_id, 'US' FROM records WHERE patient_id =
                           (SELECT patient_id FROM research_patients ORDER BY patient_id LIMIT 1)",
                        [],
                    )
                    .unwrap();
                assert!(moved > 0);
            }
            Side {
                dir: s.dir.clone(),
                data: s.data.clone(),
                _setup: s,
                study,
            }
        })
        .collect();
    let excluded: Vec<Value> = sides
        .iter()
        .map(|side| {
            // The operator's (overseer's) view of the study counts it.
            let id = side.study.to_string();
            crate::cohort_json(&side.data, &["study", "show", &id])["geo_excluded"].clone()
        })
        .collect();
    assert_eq!(excluded, [serde_json::json!(0), serde_json::json!(1)]);

    let mut failures = Vec::new();
    for (name, sql) in [
        ("count", "SELECT COUNT(*) AS n FROM patients p"),
        (
            "groups",
            "SELECT p.gender, COUNT(*) AS n FROM patients p GROUP BY p.gender",
        ),
        (
            "join",
            "SELECT COUNT(*) AS n FROM patients p JOIN conditions c ON p.patient_id = c.patient_id",
        ),
    ] {
        let probe = Probe {
            family: "geography",
            name,
            sql: sql.to_string(),
            extra: vec![],
        };
        let mut seen = [
            observe(&sides[0], &probe.sql, &probe.extra),
            observe(&sides[1], &probe.sql, &probe.extra),
        ];
        for _ in 0..2 {
            if seen[0].elapsed_ms.abs_diff(seen[1].elapsed_ms) <= DURATION_TOLERANCE_MS {
                break;
            }
            for (side, o) in sides.iter().zip(seen.iter_mut()) {
                let again = observe(side, &probe.sql, &probe.extra);
                o.elapsed_ms = o.elapsed_ms.min(again.elapsed_ms);
            }
        }
        compare(&probe, &seen, &mut failures);
    }
    assert!(
        failures.is_empty(),
        "geography leaked who was left out:\n{}",
        failures.join("\n")
    );
}

/// The OMOP view of the same neighbours (the target's HIV diagnosis is a
/// B20 `condition_occurrence` in the second), queried through the public
/// vocabulary: `concept_ancestor` turns the target's one condition into
/// three rows (the code, its block, its chapter), and the bound per person
/// must still hold. Every observable is compared as above, and the roll-up
/// count's distribution may differ only as much as ε allows (false-failure
/// rate at most 1e-6, as in `distribution`).
#[test]
fn an_omop_view_joined_to_the_public_vocabulary_differs_only_in_noise() {
    use cohort_engine::research::omop;

    let tmp = tempfile::tempdir().unwrap();
    let (b0, b1, target) = neighbouring_bundles(tmp.path());
    // DP alone (no small-cell rule, which would withhold the small counts
    // the distribution test reads); a deadline that leaves room for the
    // view's first build.
    let study = omop::EXAMPLE_STUDY
        .replace(
            "deadline_ms = 3000\nper_patient_us = 40",
            "deadline_ms = 2500\nper_patient_us = 1000",
        )
        .replace("[disclosure]\nconvention = \"ohdsi\"\n", "")
        // A pure budget the battery cannot exhaust, an escrow that pays it.
        .replace(
            "[budget]\nepsilon = \"4\"\ndelta = \"0.00001\"",
            "[budget]\nepsilon = \"100000\"",
        )
        .replace("delta = \"0.000001\"\n", "")
        .replace("escrow = \"1 ether\"", "escrow = \"4 ether\"")
        .replace(
            "fee_per_epsilon = \"0.1 ether\"",
            "fee_per_epsilon = \"0.001 ether\"",
        )
        .replace("max_epsilon = \"1\"", "max_epsilon = \"10\"");
    let sides = [b0, b1].map(|input| {
        let s = setup_from(&input);
        let (study, _) = s.approved_study(&study, PATIENTS as usize);
        Side {
            dir: s.dir.clone(),
            data: s.data.clone(),
            _setup: s,
            study,
        }
    });
    let n = Neighbours {
        _tmp: tmp,
        sides,
        target,
    };
    let gender = if n.target.gender == "female" {
        8532
    } else {
        8507
    };
    let vocabulary = omop::vocabulary::vocabulary().unwrap();
    let chapter = vocabulary.concept_id("ICD10CM", "A00-B99");
    let is = format!(
        "p.year_of_birth = {} AND p.gender_concept_id = {gender}",
        n.target.year
    );
    let rollup = |filter: &str| {
        format!(
            "FROM condition_occurrence co \
             JOIN concept_ancestor ca ON ca.descendant_concept_id = co.condition_concept_id \
             JOIN person p ON p.person_id = co.person_id WHERE {filter}"
        )
    };
    let count = format!(
        "SELECT COUNT(*) AS n {}",
        rollup(&format!("ca.ancestor_concept_id = {chapter} AND {is}"))
    );
    let probes = [
        Probe {
            family: "public join",
            name: "the target's conditions rolled up to the infectious chapter",
            sql: count.clone(),
            extra: vec![],
        },
        Probe {
            family: "public join",
            name: "every ancestor of the target's conditions, as groups",
            sql: format!(
                "SELECT ca.ancestor_concept_id, COUNT(*) AS n {} GROUP BY ca.ancestor_concept_id",
                rollup(&is)
            ),
            extra: vec![],
        },
        Probe {
            family: "error oracle",
            name: "a cast of a vocabulary name, on the target's B20 only",
            sql: format!(
                "SELECT COUNT(*) AS n {} AND CASE WHEN co.condition_source_value = 'B20' \
                 THEN CAST(co.condition_source_value AS INT) ELSE 0 END = 0",
                rollup(&is)
            ),
            extra: vec![],
        },
    ];
    let mut failures = Vec::new();
    for probe in &probes {
        let seen = [
            observe(&n.sides[0], &probe.sql, &probe.extra),
            observe(&n.sides[1], &probe.sql, &probe.extra),
        ];
        compare(probe, &seen, &mut failures);
    }
    distribution_of(&n, &count, None, 300, &mut failures);
    assert!(
        failures.is_empty(),
        "the OMOP privacy audit found {} leak(s):\n{}",
        failures.len(),
        failures.join("\n")
    );
}
