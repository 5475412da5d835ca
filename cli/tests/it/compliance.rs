//! The compliance duties through the `cohort` CLI: a patient's accounting
//! of disclosures, retention run on the chain's clock with a legal hold,
//! the regulatory report as JSON and a printable page; each refused to an
//! account without the role, audited.

use super::{assert_fails_with, cohort, cohort_json, stdout};

#[test]
fn a_patient_reads_their_accounting_and_an_admin_keeps_retention_and_reports() {
    let tmp = tempfile::tempdir().unwrap();
    let (data, observation, _) = super::access::world(tmp.path());
    cohort_json(
        &data,
        &[
            "--as", "pat", "access", "grant", "dr-x", "--level", "read", "--days", "1",
        ],
    );
    cohort_json(&data, &["--as", "dr-x", "records", "show", &observation]);

    // The accounting: the provider's read, with its record, for the patient.
    let a = cohort_json(&data, &["--as", "pat", "patient", "disclosures", "pat"]);
    let told = a["disclosures"].as_array().unwrap();
    assert!(
        told.iter().any(|d| d["recipient"] == "dr-x"
            && d["basis"] == "grant"
            && d["records"][0] == observation.as_str()),
        "{a}"
    );
    let text = stdout(&cohort(
        &data,
        &["--as", "pat", "patient", "disclosures", "pat"],
    ));
    assert!(
        text.contains("dr-x") && text.contains("treatment"),
        "{text}"
    );
    assert_fails_with(
        &cohort(&data, &["--as", "dr-x", "patient", "disclosures", "pat"]),
        "role",
    );
    assert_fails_with(
        &cohort(
            &data,
            &[
                "--as",
                "pat",
                "patient",
                "disclosures",
                "pat",
                "--since",
                "last week",
            ],
        ),
        "--since",
    );
    let audited = cohort_json(&data, &["audit", "log", "--limit", "5"]);
    assert!(
        audited
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["action"] == "disclosures.account.refused" && e["actor"] == "dr-x"),
        "{audited}"
    );

    // Retention: bad input named, a provider refused, a hold kept.
    assert_fails_with(
        &cohort(&data, &["retention", "policy", "Patient", "--years", "5"]),
        "patient erase",
    );
    assert_fails_with(
        &cohort(
            &data,
            &[
                "--as",
                "dr-x",
                "retention",
                "policy",
                "Observation",
                "--years",
                "5",
            ],
        ),
        "role",
    );
    cohort_json(
        &data,
        &["retention", "policy", "Observation", "--years", "10"],
    );
    let conn = cohort_engine::DataDir::open(&data)
        .unwrap()
        .connect()
        .unwrap();
    let (held, held_obs): (String, i64) = conn
        .query_row(
            "SELECT patient_id, COUNT(*) FROM records WHERE resource_type = 'Observation'
             AND patient_id <> (SELECT patient_id FROM research_patients WHERE account = 'pat')
             GROUP BY patient_id ORDER BY patient_id LIMIT 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    let all_obs: i64 = conn
        .query_row(
            "SELECT COUNT(*) FROM records WHERE resource_type = 'Observation'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    drop(conn);
    cohort_json(
        &data,
        &["retention", "hold", &held, "--reason", "case 2026-117"],
    );
    let shown = cohort_json(&data, &["retention", "show"]);
    assert_eq!(shown["policies"][0]["years"], 10, "{shown}");
    assert_eq!(shown["holds"][0]["patient_id"], held.as_str(), "{shown}");
    // Today nothing is due; eleven years on (the chain's clock), the rest.
    let now = cohort_json(&data, &["retention", "run", "--dry-run"]);
    assert_eq!(now["versions"], 0, "{now}");
    cohort_json(&data, &["ledger", "advance", "4020d"]);
    let dry = cohort_json(&data, &["retention", "run", "--dry-run"]);
    assert_eq!(dry["records"]["Observation"], all_obs - held_obs, "{dry}");
    assert_eq!(dry["held"], held_obs, "{dry}");
    let done = cohort_json(&data, &["retention", "run"]);
    assert_eq!(done["versions"], all_obs - held_obs, "{done}");
    assert_eq!(done["blocks_deleted"], all_obs - held_obs, "{done}");
    assert_fails_with(
        &cohort(&data, &["--as", "pat", "records", "show", &observation]),
        "purged",
    );

    // The report: JSON and a printable page; an auditor may, a provider not.
    let page = tmp.path().join("report.html");
    let r = cohort_json(
        &data,
        &[
            "report",
            "--from",
            "2020-01-01",
            "--to",
            "2100-01-01",
            "--html",
            page.to_str().unwrap(),
        ],
    );
    assert_eq!(r["integrity"]["clean"], true, "{r}");
    assert_eq!(r["accesses"]["reads_by_purpose"]["treatment"], 1, "{r}");
    assert_eq!(r["erasure"]["versions_purged"], all_obs - held_obs, "{r}");
    assert_eq!(r["erasure"]["legal_holds"], 1, "{r}");
    let html = std::fs::read_to_string(&page).unwrap();
    assert!(
        html.contains("Regulatory report") && html.contains("Nothing found wrong"),
        "{html}"
    );
    cohort_json(&data, &["--as", "audit", "report", "--unkeyed"]);
    assert_fails_with(&cohort(&data, &["--as", "dr-x", "report"]), "role");
    assert_fails_with(
        &cohort(
            &data,
            &["report", "--from", "2030-01-01", "--to", "2020-01-01"],
        ),
        "starts",
    );
    let log = cohort_json(&data, &["audit", "log", "--limit", "40"]);
    let actions: Vec<&str> = log
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    for a in [
        "retention.policy",
        "retention.policy.refused",
        "retention.hold",
        "retention.dry-run",
        "retention.purge",
        "report.generate",
        "report.generate.refused",
    ] {
        assert!(actions.contains(&a), "{a} not in {actions:?}");
    }
}

#[test]
fn over_a_server_retention_runs_on_its_own_and_the_compliance_service_decides_by_role() {
    use crate::server::{Server, authed, channel, login};
    use cohort_server::api::pb::{
        self, clinical_client::ClinicalClient, compliance_client::ComplianceClient,
    };
    let tmp = tempfile::tempdir().unwrap();
    let (data, _, _) = super::access::world(tmp.path());
    cohort_json(
        &data,
        &["retention", "policy", "Observation", "--years", "10"],
    );
    cohort_json(&data, &["ledger", "advance", "4020d"]);
    let server = Server::start_env(
        &data,
        &[
            ("COHORT_RETENTION_RUN_SECS", "1"),
            ("COHORT_AUTH_SECOND_FACTOR", "false"),
        ],
    );
    // The server's own thread purges, on the chain's clock, as the engine.
    let db = rusqlite::Connection::open(data.join("cohort.db")).unwrap();
    let purged = || -> i64 {
        db.query_row("SELECT COUNT(*) FROM retention_purges", [], |r| r.get(0))
            .unwrap_or(0)
    };
    let mut waited = 0;
    while purged() == 0 {
        assert!(waited < 120, "no purge by the server within a minute");
        std::thread::sleep(std::time::Duration::from_millis(500));
        waited += 1;
    }
    let admin = login(&data, &server, "operator");
    let provider = login(&data, &server, "dr-x");
    let patient = login(&data, &server, "pat");
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let ch = channel(&data, &server.url).await;
        let mut compliance = ComplianceClient::new(ch.clone());
        let mut clinical = ClinicalClient::new(ch);
        let state = compliance
            .retention(authed(&admin, pb::RetentionRequest {}))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(state.policies[0].resource_type, "Observation");
        let refused = compliance
            .set_retention(authed(
                &provider,
                pb::RetentionPolicyRequest {
                    resource_type: "Condition".into(),
                    years: 1,
                },
            ))
            .await
            .unwrap_err();
        assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
        let held = compliance
            .hold(authed(
                &admin,
                pb::LegalHoldRequest {
                    patient: "pat".into(),
                    reason: "case 9".into(),
                },
            ))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(held.holds.len(), 1);
        let run = compliance
            .run_retention(authed(&admin, pb::RunRetentionRequest { dry_run: true }))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(run.versions, 0, "the server purged already: {run:?}");
        let report = compliance
            .report(authed(&admin, pb::ReportRequest { from: 0, to: None }))
            .await
            .unwrap()
            .into_inner();
        assert!(report.clean, "{}", report.json);
        let json: serde_json::Value = serde_json::from_str(&report.json).unwrap();
        assert_eq!(json["erasure"]["versions_purged"].as_i64(), Some(purged()));
        assert!(report.html.contains("Regulatory report"));
        let refused = compliance
            .report(authed(&provider, pb::ReportRequest { from: 0, to: None }))
            .await
            .unwrap_err();
        assert_eq!(refused.code(), tonic::Code::PermissionDenied);
        // The patient's own copy (what retention left) and accounting.
        let bundle = clinical
            .export_records(authed(
                &patient,
                pb::ExportRecordsRequest {
                    patient: String::new(),
                    purpose: String::new(),
                },
            ))
            .await
            .unwrap()
            .into_inner();
        let b: serde_json::Value = serde_json::from_str(&bundle.bundle).unwrap();
        assert_eq!(b["entry"].as_array().unwrap().len() as i64, bundle.records);
        assert!(
            b["entry"]
                .as_array()
                .unwrap()
                .iter()
                .all(|e| e["resource"]["resourceType"] != "Observation"),
            "purged observations are not exported"
        );
        let mine = clinical
            .disclosures(authed(
                &patient,
                pb::DisclosuresRequest {
                    patient: String::new(),
                    since: None,
                },
            ))
            .await
            .unwrap()
            .into_inner();
        assert!(mine.disclosures.iter().all(|d| d.recipient != "pat"));
        let theirs = clinical
            .disclosures(authed(
                &provider,
                pb::DisclosuresRequest {
                    patient: "pat".into(),
                    since: None,
                },
            ))
            .await
            .unwrap_err();
        assert_eq!(theirs.code(), tonic::Code::PermissionDenied);
    });
    assert!(server.stop().success());
    let log = cohort_json(&data, &["audit", "log", "--limit", "200"]);
    assert!(
        log.as_array()
            .unwrap()
            .iter()
            .any(|e| e["action"] == "retention.purge" && e["actor"] == "engine"),
        "the server's purge is audited as the engine account"
    );
}
