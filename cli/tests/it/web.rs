//! The web page in a real browser: Debian's headless Chromium driven by
//! Playwright (`cli/tests/web/*.mjs`) against a live `cohort serve`, as
//! a steward, providers, a patient and an auditor, and as a patient
//! booking visits and a provider running their calendar. What the page
//! did is then checked through the CLI and the data directory.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::research::{setup, study_text};
use crate::server::{Server, login};
use crate::{cohort, cohort_json, stderr, stdout};

/// The folder of the Playwright scripts and the Chromium to drive.
fn browser() -> (PathBuf, String) {
    let here = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/web");
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(
        Path::new(&chromium).exists() && here.join("node_modules/playwright-core").exists(),
        "Chromium ({chromium}) or playwright-core is missing: scripts/test installs both (Debian chromium; npm ci in cli/tests/web)"
    );
    (here, chromium)
}

#[test]
fn stewards_providers_patients_and_auditors_use_the_page_in_chromium() {
    let (here, chromium) = browser();
    let s = setup(8);
    let (consented, _) = s.approved_study(&study_text("3", "0.5", false), 1);
    // A pending study whose title carries HTML: the page must show it as text.
    let title = "<b>Trial</b> & co";
    let file = s.write(
        "pending.toml",
        &study_text("3", "0.5", false).replace("Test study", title),
    );
    let p = cohort_json(
        &s.data,
        &[
            "study",
            "propose",
            file.to_str().unwrap(),
            "--as",
            "researcher",
        ],
    );
    let pending = p["study_id"].as_u64().unwrap();

    // A provider reads one of the patient's records: their access log has it.
    let conn = s.dir.connect().unwrap();
    let record: String = conn
        .query_row(
            "SELECT record_id FROM records WHERE patient_id = ?1 LIMIT 1",
            [&s.patient_ids[0]],
            |r| r.get(0),
        )
        .unwrap();
    crate::research::provider_with_grants(&s.data, "dr-who", &["patient-0"]);
    let read = cohort(&s.data, &["records", "show", &record, "--as", "dr-who"]);
    assert!(read.status.success(), "{}", stderr(&read));
    // A provider the patient grants (and revokes) on the page, one who may
    // break the glass, and an auditor.
    crate::research::provider_with_grants(&s.data, "dr-no", &[]);
    crate::research::provider_with_grants(&s.data, "dr-er", &[]);
    cohort_json(&s.data, &["account", "grant", "dr-er", "emergency"]);
    cohort_json(&s.data, &["account", "new", "auditor"]);
    cohort_json(&s.data, &["account", "grant", "auditor", "auditor"]);

    // A patient who will lose their key, and the fresh account taking over.
    cohort_json(
        &s.data,
        &[
            "account",
            "new",
            "patient-1",
            "--patient",
            &s.patient_ids[1],
        ],
    );
    cohort_json(&s.data, &["account", "new", "patient-1-new"]);

    let server = Server::start(&s.data);
    let recovering = login(&s.data, &server, "patient-1");
    let new_key = login(&s.data, &server, "patient-1-new");
    let steward = login(&s.data, &server, "steward-1");
    let patient = login(&s.data, &server, "patient-0");
    let provider = login(&s.data, &server, "dr-no");
    let emergency = login(&s.data, &server, "dr-er");
    let auditor = login(&s.data, &server, "auditor");

    // COHORT_SCREENSHOT_DIR keeps the screenshots (to look at them).
    let shots = tempfile::tempdir().unwrap();
    let kept = std::env::var_os("COHORT_SCREENSHOT_DIR").map(std::path::PathBuf::from);
    let shot_dir = kept.as_deref().unwrap_or(shots.path());
    let o = Command::new("node")
        .arg(here.join("page.mjs"))
        .env("COHORT_SERVER", &server.url)
        .env("STEWARD_TOKEN", &steward)
        .env("PATIENT_TOKEN", &patient)
        .env("PROVIDER_TOKEN", &provider)
        .env("EMERGENCY_TOKEN", &emergency)
        .env("AUDITOR_TOKEN", &auditor)
        .env("RECOVERING_TOKEN", &recovering)
        .env("NEW_KEY_TOKEN", &new_key)
        .env("PATIENT_ID", &s.patient_ids[0])
        .env("PENDING_STUDY", pending.to_string())
        .env("PENDING_TITLE", title)
        .env("CONSENTED_STUDY", consented.to_string())
        .env("SHOT_DIR", shot_dir)
        .env("CHROMIUM", &chromium)
        .output()
        .expect("node runs");
    assert!(
        o.status.success(),
        "the page test failed:\n{}{}",
        stdout(&o),
        stderr(&o)
    );
    for shot in ["steward.png", "patient.png", "auditor.png"] {
        let png = std::fs::read(shot_dir.join(shot)).expect("a screenshot");
        assert_eq!(&png[1..4], b"PNG", "{shot}");
        assert!(png.len() > 5_000, "{shot} is nearly empty");
    }
    // What the clicks did, as the CLI sees it.
    let show = cohort_json(&s.data, &["study", "show", &pending.to_string()]);
    assert_eq!(show["approvals"], 1, "the steward's click approved: {show}");
    let mine = cohort_json(&s.data, &["consent", "list", "--as", "patient-0"]);
    let c = mine
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["study_id"] == consented)
        .unwrap();
    assert_eq!(c["active"], false, "the patient's click withdrew: {mine}");
    // The server owns the chain while it runs.
    assert!(server.stop().success());
    // The grant and its revocation, the override and its review, on chain.
    let grants = cohort_json(&s.data, &["access", "list", "--as", "patient-0"]);
    let dr_no = grants
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["provider_name"] == "dr-no")
        .unwrap_or_else(|| panic!("the page's grant: {grants}"));
    assert_eq!(dr_no["active"], false, "granted, then revoked: {dr_no}");
    let geo = cohort_json(&s.data, &["geo", "show", "--as", "patient-0"]);
    assert_eq!(
        geo["restrictions"],
        serde_json::json!(["no-cross-border-research"]),
        "the patient's click set their restriction on chain: {geo}"
    );
    let overrides = cohort_json(&s.data, &["emergency", "list"]);
    let o = &overrides.as_array().unwrap()[0];
    assert_eq!(o["provider_name"], "dr-er");
    assert_eq!(o["review"], "justified", "the auditor's click: {o}");
    assert_eq!(o["finding"], "the patient could not consent");
    // The recovery made on the page: patient-1's link moved to the new account.
    let moved =
        cohort_engine::access::patients::of_patient(&s.dir.connect().unwrap(), &s.patient_ids[1])
            .unwrap()
            .unwrap();
    assert_eq!(moved.name, "patient-1-new", "the page's recovery completed");
    let log = cohort_json(&s.data, &["access", "log", "--as", "patient-0"]);
    assert!(
        log.as_array()
            .unwrap()
            .iter()
            .any(|e| e["accessor_name"] == "dr-er" && e["emergency"] == true),
        "{log}"
    );
}

/// What the patient types as the reasons of their two visits: read by the
/// provider on the page, sealed everywhere else.
const REASONS: [&str; 2] = [
    "persistent cough since March, worse at night",
    "knee pain after a fall on the stairs",
];

#[test]
fn patients_book_and_providers_run_their_calendar_in_chromium() {
    let (here, chromium) = browser();
    let s = setup(4);
    // A patient's account, linked to their records, registered on chain
    // (its first grant does it) and given ether; a credentialed provider.
    cohort_json(
        &s.data,
        &[
            "account",
            "new",
            "patient-0",
            "--patient",
            &s.patient_ids[0],
        ],
    );
    crate::research::provider_with_grants(&s.data, "dr-cal", &["patient-0"]);
    cohort_json(&s.data, &["account", "fund", "patient-0", "1 ether"]);

    let shots = tempfile::tempdir().unwrap();
    let kept = std::env::var_os("COHORT_SCREENSHOT_DIR").map(PathBuf::from);
    let shot_dir = kept.as_deref().unwrap_or(shots.path());
    // One phase of appointments.mjs against `server`, both accounts signed
    // in anew; its stdout.
    let phase = |server: &Server, phase: &str, booked: &str| -> String {
        let o = Command::new("node")
            .arg(here.join("appointments.mjs"))
            .env("COHORT_SERVER", &server.url)
            .env("PATIENT_TOKEN", login(&s.data, server, "patient-0"))
            .env("PROVIDER_TOKEN", login(&s.data, server, "dr-cal"))
            .env("PHASE", phase)
            .env("BOOKED", booked)
            .env("REASON_A", REASONS[0])
            .env("REASON_B", REASONS[1])
            .env("SHOT_DIR", shot_dir)
            .env("CHROMIUM", &chromium)
            .output()
            .expect("node runs");
        assert!(
            o.status.success(),
            "phase {phase} of the appointments page test failed:\n{}{}",
            stdout(&o),
            stderr(&o)
        );
        stdout(&o)
    };

    // Published, booked twice, one reason read, both confirmed.
    let server = Server::start(&s.data);
    let said: serde_json::Value =
        serde_json::from_str(phase(&server, "1", "").trim()).expect("phase 1 prints the bookings");
    let booked: Vec<u64> = said["booked"]
        .as_array()
        .unwrap()
        .iter()
        .map(|id| id.as_u64().unwrap())
        .collect();
    assert_eq!(booked.len(), 2, "{said}");
    // The server owns the chain: its clock moves while it is stopped.
    assert!(server.stop().success());
    let moved = cohort_json(&s.data, &["ledger", "advance", "6h"]);
    assert_eq!(moved["advanced_secs"], 21_600, "{moved}");
    // Completed and paid up; a no-show, disputed.
    let server = Server::start(&s.data);
    phase(&server, "2", &format!("{},{}", booked[0], booked[1]));
    assert!(server.stop().success());
    for shot in ["appointments.png", "calendar.png", "appointments-after.png"] {
        let png = std::fs::read(shot_dir.join(shot)).expect("a screenshot");
        assert_eq!(&png[1..4], b"PNG", "{shot}");
        assert!(png.len() > 5_000, "{shot} is nearly empty");
    }

    // What the clicks did, as the chain's mirror has it.
    cohort_json(&s.data, &["ledger", "sync"]);
    let conn = s.dir.connect().unwrap();
    let row = |id: u64| -> [String; 5] {
        conn.query_row(
            "SELECT status, paid, held, refunded, to_provider FROM ledger_appointments WHERE id = ?1",
            [id as i64],
            |r| Ok([r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?]),
        )
        .unwrap_or_else(|e| panic!("appointment {id} on chain: {e}"))
    };
    let [status, paid, held, refunded, to_provider] = row(booked[0]);
    assert_eq!(status, "completed");
    assert_eq!(
        paid, "50000000000000000",
        "the deposit at booking, the rest after the visit"
    );
    assert_eq!((held.as_str(), refunded.as_str()), ("0", "0"));
    assert_eq!(
        to_provider, "50000000000000000",
        "the whole fee to the provider"
    );
    let [status, paid, held, refunded, to_provider] = row(booked[1]);
    assert_eq!(status, "disputed");
    assert_eq!(paid, "50000000000000000");
    assert_eq!(
        held, "25000000000000000",
        "the 50% deposit held for the dispute"
    );
    assert_eq!(
        refunded, "25000000000000000",
        "the rest refunded at the no-show"
    );
    assert_eq!(to_provider, "0");

    // Each step audited, as the account that clicked; no reason in any entry.
    let log = cohort_json(&s.data, &["audit", "log", "--limit", "100000"]);
    let entries = log.as_array().unwrap();
    let done = |action: &str, actor: &str| {
        entries
            .iter()
            .filter(|e| e["action"] == action && e["actor"] == actor)
            .count()
    };
    assert_eq!(
        done("appointment.publish", "dr-cal"),
        3,
        "hours, fee, policy"
    );
    assert_eq!(done("appointment.book", "patient-0"), 2);
    assert_eq!(done("appointment.confirm", "dr-cal"), 2);
    assert_eq!(done("appointment.reason.read", "dr-cal"), 1);
    assert_eq!(done("appointment.complete", "dr-cal"), 1);
    assert_eq!(done("appointment.no-show", "dr-cal"), 1);
    assert_eq!(done("appointment.pay", "patient-0"), 1);
    assert_eq!(done("appointment.dispute", "patient-0"), 1);
    for e in entries {
        let text = e.to_string();
        for reason in REASONS {
            assert!(!text.contains(reason), "a reason in the audit log: {text}");
        }
    }
    // Nor anywhere in the data directory in clear (database, chain, logs).
    let mut folders = vec![s.data.clone()];
    while let Some(folder) = folders.pop() {
        for entry in std::fs::read_dir(&folder).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                folders.push(path);
                continue;
            }
            let bytes = std::fs::read(&path).unwrap();
            for reason in REASONS {
                assert!(
                    !bytes.windows(reason.len()).any(|w| w == reason.as_bytes()),
                    "a reason in clear in {}",
                    path.display()
                );
            }
        }
    }
}

#[test]
fn patients_register_a_passkey_and_sign_in_with_it_and_totp_in_chromium() {
    let (here, chromium) = browser();
    let s = setup(4);
    cohort_json(
        &s.data,
        &[
            "account",
            "new",
            "patient-0",
            "--patient",
            &s.patient_ids[0],
        ],
    );
    // What the operator hands the patient: a TOTP secret for their app and
    // a one-time code to register a passkey.
    let secret = crate::server::enroll_totp(&s.data, "patient-0");
    let invite = cohort_json(&s.data, &["account", "passkey", "invite", "patient-0"]);
    let code = invite["code"].as_str().unwrap().to_string();
    // WebAuthn needs a secure context whose host is a domain: the page is
    // opened as http://localhost (a browser trusts loopback without TLS;
    // with the self-signed certificate it would refuse passkeys).
    let server = Server::start_env(&s.data, &[("COHORT_TLS_MODE", "off")]);
    let url = server.url.replace("127.0.0.1", "localhost");
    let shots = tempfile::tempdir().unwrap();
    let kept = std::env::var_os("COHORT_SCREENSHOT_DIR").map(PathBuf::from);
    let shot_dir = kept.as_deref().unwrap_or(shots.path());
    let o = Command::new("node")
        .arg(here.join("passkey.mjs"))
        .env("COHORT_SERVER", &url)
        .env("ACCOUNT", "patient-0")
        .env("ENROLMENT_CODE", &code)
        .env("TOTP_SECRET", &secret)
        .env("SHOT_DIR", shot_dir)
        .env("CHROMIUM", &chromium)
        .output()
        .expect("node runs");
    assert!(
        o.status.success(),
        "the passkey page test failed:\n{}{}",
        stdout(&o),
        stderr(&o)
    );
    let png = std::fs::read(shot_dir.join("passkey.png")).expect("a screenshot");
    assert!(png.len() > 5_000 && &png[1..4] == b"PNG");
    assert!(server.stop().success());

    // One passkey, stored with the counter of its last sign-in.
    let keys = cohort_json(&s.data, &["account", "passkey", "list", "patient-0"]);
    let keys = keys.as_array().unwrap();
    assert_eq!(keys.len(), 1, "{keys:?}");
    assert_eq!(keys[0]["label"], "test laptop");
    assert!(keys[0]["last_used_at"].is_string(), "{keys:?}");

    // The audit log: the invitation, the registration, two sign-ins with
    // both factors, two sign-outs, and each refusal with its reason.
    let log = cohort_json(&s.data, &["audit", "log", "--limit", "100000"]);
    let entries = log.as_array().unwrap();
    let of = |action: &str| -> Vec<String> {
        entries
            .iter()
            .filter(|e| e["action"] == action)
            .map(|e| e["detail"].as_str().unwrap_or_default().to_string())
            .collect()
    };
    assert_eq!(of("account.passkey.invite").len(), 1);
    assert_eq!(of("account.passkey.register").len(), 1);
    let sign_ins = of("auth.sign_in");
    assert_eq!(sign_ins.len(), 2, "{sign_ins:?}");
    for d in &sign_ins {
        assert!(d.contains("passkey") && d.contains("totp"), "{d}");
    }
    assert_eq!(of("auth.logout").len(), 2);
    let refused = of("auth.refused");
    let has = |factor: &str, why: &str| {
        refused
            .iter()
            .any(|d| d.contains(&format!("\"factor\":\"{factor}\"")) && d.contains(why))
    };
    assert!(has("enrolment code", "is wrong"), "{refused:?}");
    assert!(has("passkey", "already used"), "the replay: {refused:?}");
    assert!(
        has("passkey", "refused"),
        "the replay in a new ceremony: {refused:?}"
    );
    assert!(has("totp", "wrong or expired"), "{refused:?}");
    // Neither the TOTP secret nor the enrolment code is in the log.
    let text = log.to_string();
    assert!(!text.contains(&secret) && !text.contains(&code));

    // The operator removes the passkey (a lost laptop), once.
    let id = keys[0]["credential_id"].as_str().unwrap().to_string();
    let removed = cohort_json(&s.data, &["account", "passkey", "remove", "patient-0", &id]);
    assert_eq!(removed["removed"], id.as_str());
    let none = cohort_json(&s.data, &["account", "passkey", "list", "patient-0"]);
    assert_eq!(none.as_array().map(Vec::len), Some(0), "{none}");
    let again = crate::cohort(&s.data, &["account", "passkey", "remove", "patient-0", &id]);
    crate::assert_fails_with(&again, "has no passkey");
}
