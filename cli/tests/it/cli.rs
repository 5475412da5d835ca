//! The `cohort` binary: the demo, data directories, passphrase handling.

use std::process::Command;

use super::{assert_fails_with, bundles, cohort, cohort_json, stderr, stdout};

fn bare(args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_cohort"));
    c.args(args)
        .env_remove("COHORT_PASSPHRASE")
        .env_remove("COHORT_DATA_DIR")
        .env_remove("COHORT_PASSPHRASE_FILE");
    c
}

#[test]
fn demo_runs_on_embedded_defaults_and_again() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let d = data.to_str().unwrap();
    let first = bare(&["--data-dir", d, "demo", "--patients", "60"])
        .output()
        .unwrap();
    assert!(first.status.success(), "{}", stderr(&first));
    let text = stdout(&first);
    assert!(text.contains("patients              60"), "{text}");
    assert!(text.contains("42 patients (70%) consent"), "{text}");
    assert!(text.contains("approves: 2 of 2, approved"), "{text}");
    assert!(
        text.contains("consenting set: 42 before the withdrawal, 41 after"),
        "{text}"
    );
    // The fee is priced by ε and shared by every consenting patient; no
    // answer says how many patients matched.
    assert!(
        text.contains(
            "fee 0.07 ether, 0.001666666666666666 ether to each of the 42 consenting patients"
        ),
        "{text}"
    );
    assert!(!text.contains("contributed"), "{text}");
    assert!(
        text.contains("mean_hba1c") && text.contains("median_systolic"),
        "{text}"
    );
    assert!(text.contains("recorded on the ledger as 0x"), "{text}");
    assert!(text.contains("audit chain intact"), "{text}");
    assert!(
        text.contains("remaining ε 0.5"),
        "4 queries at 0.5 and 2 encrypted at 0.25, of 3: {text}"
    );
    assert!(text.contains("answered by the elgamal layer"), "{text}");
    assert!(text.contains("answered by the tfhe layer"), "{text}");
    assert!(text.contains("42 patients encrypted their flag"), "{text}");
    // An encrypted release's value is decrypted into the table, not the error line.
    assert!(!text.contains("NaN"), "{text}");
    assert!(text.contains("female: (in the table) ± "), "{text}");
    // The OMOP study: OHDSI's SQL translated, the vocabulary joined.
    assert!(
        text.contains("6c. The same patients as OMOP CDM 5.4"),
        "{text}"
    );
    assert!(
        text.contains("COUNT(DISTINCT person_id) AS count_value"),
        "{text}"
    );
    assert!(text.contains("small cells: OHDSI"), "{text}");

    // The demo made the deployment's tfhe key set beside ingest; the
    // operator's command finds it whole and changes nothing.
    let server_key = data.join("research/fhe/tfhe/server.bin");
    let made_at = std::fs::metadata(&server_key).unwrap().modified().unwrap();
    let keys = bare(&["--data-dir", d, "keys", "tfhe", "--json"])
        .env("COHORT_PASSPHRASE", "cohort-demo")
        .output()
        .unwrap();
    assert!(keys.status.success(), "{}", stderr(&keys));
    let keys: serde_json::Value = serde_json::from_slice(&keys.stdout).unwrap();
    assert_eq!(keys["made"], false, "{keys}");
    assert_eq!(
        std::fs::metadata(&server_key).unwrap().modified().unwrap(),
        made_at
    );

    // Again on the same directory: the same records, a second study.
    let second = bare(&["--data-dir", d, "demo", "--patients", "60", "--json"])
        .output()
        .unwrap();
    assert!(second.status.success(), "{}", stderr(&second));
    let v: serde_json::Value = serde_json::from_slice(&second.stdout).unwrap();
    let ingest = &v["steps"][1]["value"];
    assert_eq!(
        ingest["created"], 0,
        "the same seed re-ingests as unchanged"
    );
    // Each run proposes the diabetes study and the OMOP study.
    assert_eq!(v["study"]["study_id"], 3);
    let omop = v["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["step"] == "omop")
        .expect("the OMOP step");
    assert_eq!(omop["value"]["study"], 4);
    assert_eq!(
        omop["value"]["achilles_2"]["answer"]["rows"]
            .as_array()
            .unwrap()
            .len(),
        2,
        "persons by gender: MALE and FEMALE"
    );
    assert_eq!(v["study"]["queries"], 6);
    // The encrypted answers arrive decrypted: integers, not sealed bytes.
    let encrypted: Vec<&serde_json::Value> = v["steps"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["step"] == "encrypted")
        .collect();
    assert_eq!(encrypted.len(), 2);
    for step in encrypted {
        let rows = step["value"]["outcome"]["answer"]["rows"]
            .as_array()
            .unwrap();
        assert!(!rows.is_empty());
        for row in rows {
            assert!(row.as_array().unwrap().last().unwrap().is_i64(), "{row}");
        }
    }
    assert_eq!(v["members_before_withdrawal"], 42);
    assert_eq!(v["members_after_withdrawal"], 41);
    assert_eq!(v["audit"]["first_broken"], serde_json::Value::Null);
    assert!(v["ledger"]["transactions"].as_u64().unwrap() > 2 * 42);
}

#[test]
fn data_directories_do_not_interfere() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    let src = bundles(tmp.path(), 10, 9);
    cohort_json(&a, &["ingest", src.to_str().unwrap()]);
    let in_a = cohort_json(&a, &["stats"]);
    let in_b = cohort_json(&b, &["stats"]);
    assert_eq!(in_a["tables"][0], serde_json::json!(["patients", 10]));
    assert_eq!(in_b["tables"][0], serde_json::json!(["patients", 0]));
    // COHORT_DATA_DIR selects the directory when --data-dir is absent.
    let out = bare(&["stats", "--json"])
        .env("COHORT_DATA_DIR", &a)
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["tables"][0], serde_json::json!(["patients", 10]));
}

#[test]
fn passphrase_sources_and_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let d = data.to_str().unwrap();
    let out = bare(&["--data-dir", d, "account", "new", "first"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("COHORT_PASSPHRASE"),
        "{}",
        stderr(&out)
    );
    let file = tmp.path().join("pass");
    std::fs::write(&file, "from a file\n").unwrap();
    let ok = bare(&[
        "--data-dir",
        d,
        "--passphrase-file",
        file.to_str().unwrap(),
        "account",
        "new",
        "second",
    ])
    .output()
    .unwrap();
    assert!(ok.status.success(), "{}", stderr(&ok));
    let wrong = bare(&["--data-dir", d, "account", "new", "third"])
        .env("COHORT_PASSPHRASE", "from a file?")
        .output()
        .unwrap();
    assert!(
        stderr(&wrong).contains("wrong passphrase"),
        "{}",
        stderr(&wrong)
    );
}

#[test]
fn records_history_show_and_erase() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let src = bundles(tmp.path(), 5, 2);
    cohort_json(&data, &["ledger", "deploy"]);
    cohort_json(
        &data,
        &["ingest", src.to_str().unwrap(), "--purpose", "onboarding"],
    );
    let conn = cohort_engine::DataDir::open(&data)
        .unwrap()
        .connect()
        .unwrap();
    let (patient, record): (String, String) = conn
        .query_row(
            "SELECT patient_id, record_id FROM records WHERE resource_type = 'Observation' LIMIT 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    drop(conn);
    cohort_json(&data, &["account", "new", "pat", "--patient", &patient]);
    // A name that is not an account reads nothing.
    let stranger = cohort(&data, &["--as", "dr-grey", "records", "show", &record]);
    assert_fails_with(&stranger, "`dr-grey` is not an account");
    // An account that is neither the patient nor a provider: refused, audited.
    cohort_json(&data, &["account", "new", "dr-grey"]);
    let refused = cohort(&data, &["--as", "dr-grey", "records", "show", &record]);
    assert_fails_with(&refused, "is neither patient");
    assert!(!stdout(&refused).contains("resourceType"));
    let log = cohort_json(&data, &["audit", "log", "--target", &record]);
    let newest = log.as_array().unwrap().last().unwrap();
    assert_eq!(newest["actor"], "dr-grey");
    assert_eq!(newest["action"], "read.refused");
    // The patient reads their own record.
    let shown = cohort_json(&data, &["--as", "pat", "records", "show", &record]);
    assert_eq!(
        format!(
            "{}/{}",
            shown["resource"]["resourceType"].as_str().unwrap(),
            shown["resource"]["id"].as_str().unwrap()
        ),
        record
    );
    assert_eq!(shown["emergency"], false);
    let history = cohort_json(&data, &["--as", "pat", "records", "history", &record]);
    assert_eq!(history.as_array().unwrap().len(), 1);
    let log = cohort_json(&data, &["audit", "log", "--target", &record]);
    let newest = log.as_array().unwrap().last().unwrap();
    assert_eq!(newest["actor"], "pat");
    assert_eq!(newest["action"], "read");
    // A purpose that is not one of treatment, payment, operations is refused.
    let odd = cohort(
        &data,
        &[
            "--as",
            "pat",
            "records",
            "show",
            &record,
            "--purpose",
            "curiosity",
        ],
    );
    assert_fails_with(&odd, "not a purpose of use");
    // The version's bytes match the anchor on chain.
    let v = cohort_json(&data, &["records", "verify", &record]);
    assert_eq!(v["verified"], true, "{v}");

    let refused = cohort(&data, &["patient", "erase", &patient]);
    assert!(!refused.status.success() && stderr(&refused).contains("--confirm"));
    cohort_json(&data, &["patient", "erase", &patient, "--confirm"]);
    // Erasure removed the account link with the key: nobody reads them now.
    let gone = cohort(&data, &["--as", "pat", "records", "show", &record]);
    assert_fails_with(&gone, "has no account on chain");
    assert!(!stdout(&gone).contains("resourceType"));
    let stats = cohort_json(&data, &["stats"]);
    assert_eq!(stats["tables"][0], serde_json::json!(["patients", 4]));
    assert!(cohort_json(&data, &["audit", "verify"])["first_broken"].is_null());
}

/// `cohort account list | head -1`: a reader that goes away ends the
/// command quietly, with success and no panic.
#[test]
fn a_closed_pipe_ends_a_command_quietly() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    crate::cohort(&data, &["account", "new", "someone"]);
    let mut child = bare(&["--data-dir", data.to_str().unwrap(), "account", "list"])
        .env("COHORT_PASSPHRASE", crate::PASSPHRASE)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take()); // the reader is gone before a line is written
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success(), "{:?}: {}", o.status, stderr(&o));
    assert!(!stderr(&o).contains("panicked"), "{}", stderr(&o));
}

/// SIGTERM and SIGINT stop a long command with a line and the conventional
/// exit code, not a panic or a silent kill.
#[test]
fn signals_stop_a_long_command_cleanly() {
    use std::io::Read;
    for (signal, code) in [("-TERM", 143), ("-INT", 130)] {
        let tmp = tempfile::tempdir().unwrap();
        let mut child = bare(&[
            "generate",
            "--patients",
            "2000000",
            "--out",
            tmp.path().join("bundles").to_str().unwrap(),
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
        // Wait until it is under way: its first bundle file exists.
        let bundles = tmp.path().join("bundles");
        while !bundles.exists() || std::fs::read_dir(&bundles).unwrap().next().is_none() {
            assert!(child.try_wait().unwrap().is_none(), "generate ended early");
            std::thread::yield_now();
        }
        let sent = std::process::Command::new("kill")
            .args([signal, &child.id().to_string()])
            .status()
            .unwrap();
        assert!(sent.success());
        let status = child.wait().unwrap();
        let mut err = String::new();
        child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut err)
            .unwrap();
        assert_eq!(status.code(), Some(code), "{signal}: {status:?} {err}");
        assert!(err.contains("stopped by a signal"), "{err}");
    }
}
