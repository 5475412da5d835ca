//! Grants, revocation, emergency access and notifications through the
//! `cohort` CLI, each acting as an account by its key.

use super::{assert_fails_with, bundles, cohort, cohort_json, stdout};

/// A ledger, a small cohort, a patient account `pat`, a provider `dr-x`
/// with a credential and the emergency role, an auditor; the patient's
/// first Observation and Condition.
pub(crate) fn world(tmp: &std::path::Path) -> (std::path::PathBuf, String, String) {
    let data = tmp.join("data");
    cohort_json(&data, &["ledger", "deploy"]);
    let b = bundles(tmp, 3, 4);
    let ingested = cohort(&data, &["ingest", b.to_str().unwrap()]);
    assert!(
        stdout(&ingested).contains("anchored"),
        "{}",
        stdout(&ingested)
    );
    let conn = cohort_engine::DataDir::open(&data)
        .unwrap()
        .connect()
        .unwrap();
    let (patient, observation): (String, String) = conn
        .query_row(
            "SELECT patient_id, record_id FROM records WHERE resource_type = 'Observation' ORDER BY record_id LIMIT 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    let condition: String = conn
        .query_row(
            "SELECT record_id FROM records WHERE resource_type = 'Condition' AND patient_id = ?1 LIMIT 1",
            [&patient],
            |r| r.get(0),
        )
        .unwrap();
    drop(conn);
    cohort_json(&data, &["account", "new", "pat", "--patient", &patient]);
    for (name, role) in [
        ("dr-x", "provider"),
        ("dr-x", "emergency"),
        ("board", "issuer"),
        ("audit", "auditor"),
    ] {
        let _ = cohort(&data, &["account", "new", name]);
        cohort_json(&data, &["account", "grant", name, role]);
    }
    cohort_json(
        &data,
        &[
            "--as",
            "board",
            "credential",
            "attest",
            "dr-x",
            "--license",
            "MD-9",
        ],
    );
    (data, observation, condition)
}

#[test]
fn a_patient_grants_limits_and_revokes_and_the_chain_decides_each_read() {
    let tmp = tempfile::tempdir().unwrap();
    let (data, observation, condition) = world(tmp.path());
    let show = |record: &str, extra: &[&str]| {
        let mut args = vec!["--as", "dr-x", "records", "show", record];
        args.extend_from_slice(extra);
        cohort(&data, &args)
    };
    assert_fails_with(&show(&observation, &[]), "holds no grant");
    // Bad input is named.
    for (args, what) in [
        (vec!["--level", "admin"], "not an access level"),
        (vec!["--purposes", "research"], "not a purpose"),
        (vec!["--types", "Claim"], "not a record type"),
    ] {
        let mut all = vec!["--as", "pat", "access", "grant", "dr-x"];
        all.extend(args);
        assert_fails_with(&cohort(&data, &all), what);
    }
    assert_fails_with(
        &cohort(&data, &["--as", "pat", "access", "grant", "nobody"]),
        "no account `nobody`",
    );
    // A summary grant for conditions: the Condition reads, the Observation does not.
    cohort_json(
        &data,
        &[
            "--as",
            "pat",
            "access",
            "grant",
            "dr-x",
            "--level",
            "summary",
            "--types",
            "Condition",
            "--hours",
            "2",
        ],
    );
    let read = cohort_json(&data, &["--as", "dr-x", "records", "show", &condition]);
    assert_eq!(read["emergency"], false);
    assert_fails_with(&show(&observation, &[]), "does not reach the level");
    // Read for treatment: not for payment.
    cohort_json(
        &data,
        &["--as", "pat", "access", "grant", "dr-x", "--level", "read"],
    );
    assert!(show(&observation, &[]).status.success());
    assert_fails_with(
        &show(&observation, &["--purpose", "payment"]),
        "does not cover the purpose",
    );
    let grants = cohort_json(&data, &["--as", "pat", "access", "list"]);
    assert_eq!(grants[0]["level"], "read");
    assert_eq!(grants[0]["active"], true);
    // Revoked: the very next call is refused.
    cohort_json(&data, &["--as", "pat", "access", "revoke", "dr-x"]);
    assert_fails_with(&show(&observation, &[]), "was revoked");
    let grants = cohort_json(&data, &["--as", "pat", "access", "list"]);
    assert_eq!(grants[0]["active"], false);
    // Only the patient (or a delegate) revokes.
    assert_fails_with(
        &cohort(
            &data,
            &["--as", "dr-x", "access", "revoke", "dr-x", "--for", "pat"],
        ),
        "NotADelegate",
    );
    // A delegate grants for the patient, within the delegation.
    let _ = cohort(&data, &["account", "new", "carer"]);
    cohort_json(
        &data,
        &[
            "--as", "pat", "access", "delegate", "carer", "--level", "summary",
        ],
    );
    assert_fails_with(
        &cohort(
            &data,
            &[
                "--as", "carer", "access", "grant", "dr-x", "--for", "pat", "--level", "read",
            ],
        ),
        "ExceedsDelegation",
    );
    cohort_json(
        &data,
        &[
            "--as", "carer", "access", "grant", "dr-x", "--for", "pat", "--level", "summary",
            "--days", "1",
        ],
    );
    assert!(show(&condition, &[]).status.success());
    // The patient's log: every read on chain, who and why.
    let log = cohort_json(&data, &["--as", "pat", "access", "log"]);
    let readers: Vec<&str> = log
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["accessor_name"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(readers.iter().filter(|r| **r == "dr-x").count(), 3, "{log}");
    assert!(
        log.as_array()
            .unwrap()
            .iter()
            .all(|e| e["emergency"] == false)
    );
}

#[test]
fn an_emergency_is_notified_marked_reviewed_and_ended() {
    let tmp = tempfile::tempdir().unwrap();
    let (data, observation, _) = world(tmp.path());
    assert_fails_with(
        &cohort(
            &data,
            &[
                "--as",
                "dr-x",
                "emergency",
                "trigger",
                "pat",
                "--reason",
                " ",
            ],
        ),
        "needs a reason",
    );
    let _ = cohort(&data, &["account", "new", "carer"]);
    cohort_json(&data, &["--as", "pat", "access", "delegate", "carer"]);
    let opened = cohort_json(
        &data,
        &[
            "--as",
            "dr-x",
            "emergency",
            "trigger",
            "pat",
            "--reason",
            "unconscious",
        ],
    );
    let id = opened["id"].as_u64().unwrap().to_string();
    // The patient and their delegate are notified.
    assert_eq!(opened["notified"].as_array().unwrap().len(), 2, "{opened}");
    let carer = cohort_json(&data, &["--as", "carer", "notifications", "list"]);
    assert_eq!(carer[0]["kind"], "emergency.opened", "{carer}");
    let read = cohort_json(&data, &["--as", "dr-x", "records", "show", &observation]);
    assert_eq!(read["emergency"], true);
    let inbox = cohort_json(&data, &["--as", "pat", "notifications", "list", "--unread"]);
    assert_eq!(inbox[0]["kind"], "emergency.opened");
    assert_eq!(inbox[0]["body"]["reason"], "unconscious");
    let queue = cohort_json(&data, &["--as", "audit", "emergency", "list", "--pending"]);
    assert_eq!(queue.as_array().unwrap().len(), 1);
    // Only an auditor reviews.
    assert!(
        !cohort(
            &data,
            &[
                "--as",
                "dr-x",
                "emergency",
                "review",
                &id,
                "--justified",
                "--finding",
                "ok"
            ]
        )
        .status
        .success()
    );
    cohort_json(
        &data,
        &[
            "--as",
            "audit",
            "emergency",
            "review",
            &id,
            "--unjustified",
            "--finding",
            "no",
        ],
    );
    assert_fails_with(
        &cohort(&data, &["--as", "dr-x", "records", "show", &observation]),
        "emergency access",
    );
    assert_fails_with(
        &cohort(
            &data,
            &[
                "--as",
                "dr-x",
                "emergency",
                "trigger",
                "pat",
                "--reason",
                "x",
            ],
        ),
        "suspended after an unjustified review, until an admin restores them (`cohort emergency restore dr-x`)",
    );
    let log = cohort_json(&data, &["--as", "pat", "access", "log"]);
    assert_eq!(log[0]["emergency"], true, "{log}");
    // The audit log marks the emergency read.
    let audit = cohort_json(&data, &["audit", "log", "--target", &observation]);
    assert!(
        audit
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["action"] == "read.emergency" && e["actor"] == "dr-x"),
        "{audit}"
    );
}

#[test]
fn against_a_running_server_the_cli_acts_by_the_accounts_token() {
    let tmp = tempfile::tempdir().unwrap();
    let (data, observation, _) = world(tmp.path());
    // The second factor is off for this test of the chain's decisions over
    // --server: each command signs in anew, more often than one account's
    // TOTP codes allow (server:: and web:: test the factor).
    let server = crate::server::Server::start_env(&data, &[("COHORT_AUTH_SECOND_FACTOR", "false")]);
    let url = server.url.clone();
    let remote = |args: &[&str]| {
        let mut all = args.to_vec();
        all.extend(["--server", url.as_str()]);
        cohort(&data, &all)
    };
    // The server owns the chain: a read on the directory is refused, and
    // over --server the chain decides as it would.
    assert_fails_with(
        &cohort(&data, &["--as", "dr-x", "records", "show", &observation]),
        "owned by",
    );
    assert_fails_with(
        &remote(&["--as", "dr-x", "records", "show", &observation]),
        "holds no grant",
    );
    assert!(
        remote(&[
            "--as", "pat", "access", "grant", "dr-x", "--level", "read", "--days", "1"
        ])
        .status
        .success()
    );
    let read = remote(&["--as", "dr-x", "records", "show", &observation, "--json"]);
    assert!(read.status.success(), "{}", crate::stderr(&read));
    let read: serde_json::Value = serde_json::from_slice(&read.stdout).unwrap();
    assert_eq!(read["version"]["record_id"], observation.as_str());
    assert_eq!(read["emergency"], false);
    let grants = remote(&["--as", "pat", "access", "list", "--json"]);
    let grants: serde_json::Value = serde_json::from_slice(&grants.stdout).unwrap();
    assert_eq!(grants[0]["active"], true, "{grants}");
    assert!(
        remote(&["--as", "pat", "access", "revoke", "dr-x"])
            .status
            .success()
    );
    assert_fails_with(
        &remote(&["--as", "dr-x", "records", "show", &observation]),
        "was revoked",
    );
    // An emergency over the server, and the patient's notification.
    assert!(
        remote(&[
            "--as",
            "dr-x",
            "emergency",
            "trigger",
            "pat",
            "--reason",
            "collapse"
        ])
        .status
        .success()
    );
    let read = remote(&["--as", "dr-x", "records", "show", &observation, "--json"]);
    let read: serde_json::Value = serde_json::from_slice(&read.stdout).unwrap();
    assert_eq!(read["emergency"], true);
    let inbox = remote(&["--as", "pat", "notifications", "list", "--json"]);
    let inbox: serde_json::Value = serde_json::from_slice(&inbox.stdout).unwrap();
    assert_eq!(inbox[0]["kind"], "emergency.opened", "{inbox}");
    // A name that is not an account signs in as nobody.
    assert_fails_with(
        &remote(&["--as", "mallory", "records", "show", &observation]),
        "mallory",
    );
    drop(server);
}

#[test]
fn a_patient_exports_their_records_as_a_fhir_bundle_and_no_one_else_can_without_a_grant() {
    let tmp = tempfile::tempdir().unwrap();
    let (data, _, _) = world(tmp.path());
    let out = tmp.path().join("my-records.json");
    let done = cohort_json(
        &data,
        &[
            "--as",
            "pat",
            "patient",
            "export",
            "pat",
            "--out",
            out.to_str().unwrap(),
        ],
    );
    let bundle: serde_json::Value = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
    assert_eq!(bundle["resourceType"], "Bundle");
    assert_eq!(bundle["type"], "collection");
    let conn = cohort_engine::DataDir::open(&data)
        .unwrap()
        .connect()
        .unwrap();
    let (patient, expected): (String, i64) = conn
        .query_row(
            "SELECT p.patient_id, COUNT(DISTINCT r.record_id) FROM research_patients p
             JOIN records r ON r.patient_id = p.patient_id WHERE p.account = 'pat'",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    let entries = bundle["entry"].as_array().unwrap();
    assert_eq!(entries.len() as i64, expected);
    assert_eq!(done["records"].as_i64(), Some(expected));
    // Every resource is the patient's own, the Patient resource among them.
    assert!(
        entries
            .iter()
            .any(|e| e["resource"]["resourceType"] == "Patient"
                && e["resource"]["id"] == patient.as_str())
    );
    // A credentialed provider without a grant is refused; nothing is written.
    let theirs = tmp.path().join("theirs.json");
    assert_fails_with(
        &cohort(
            &data,
            &[
                "--as",
                "dr-x",
                "patient",
                "export",
                "pat",
                "--out",
                theirs.to_str().unwrap(),
            ],
        ),
        "holds no grant",
    );
    assert!(!theirs.exists());
    let audit = cohort_json(&data, &["audit", "log", "--limit", "50"]);
    assert!(
        audit
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["action"] == "records.export.patient" && e["actor"] == "pat"),
        "{audit}"
    );
}
