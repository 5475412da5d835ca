//! The web page in a real browser: Debian's headless Chromium driven by
//! Playwright (`cli/tests/web/page.mjs`) against a live `cohort serve`, as
//! a steward, providers, a patient and an auditor. What the page did is
//! then checked through the CLI.

use std::path::Path;
use std::process::Command;

use crate::research::{setup, study_text};
use crate::server::{Server, login, login_totp};
use crate::{cohort, cohort_json, stderr, stdout};

#[test]
fn stewards_providers_patients_and_auditors_use_the_page_in_chromium() {
    let here = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/web");
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(
        Path::new(&chromium).exists() && here.join("node_modules/playwright-core").exists(),
        "Chromium ({chromium}) or playwright-core is missing: scripts/test installs both (Debian chromium; npm ci in cli/tests/web)"
    );
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

    let server = Server::start(&s.data);
    let steward = login_totp(&s.data, &server, "steward-1");
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
    let overrides = cohort_json(&s.data, &["emergency", "list"]);
    let o = &overrides.as_array().unwrap()[0];
    assert_eq!(o["provider_name"], "dr-er");
    assert_eq!(o["review"], "justified", "the auditor's click: {o}");
    assert_eq!(o["finding"], "the patient could not consent");
    let log = cohort_json(&s.data, &["access", "log", "--as", "patient-0"]);
    assert!(
        log.as_array()
            .unwrap()
            .iter()
            .any(|e| e["accessor_name"] == "dr-er" && e["emergency"] == true),
        "{log}"
    );
}
