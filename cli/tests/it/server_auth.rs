//! The server decides every call on what holds now: a study's books only
//! for its researcher, stewards and auditors; a token ends when its holder
//! signs out or an administrator ends the account's sign-ins; a role
//! granted after sign-in, or a second factor enrolled again, is seen at the
//! next call. A real `cohort serve`, real clients, role changes sent
//! through the server (which owns the chain).

use cohort_server::api::pb::{self, studies_client::StudiesClient};
use cohort_server::flight::REVOKE_ACTION;
use tonic::Code;

use crate::research::{setup, study_text};
use crate::server::{Server, authed, channel, enroll_totp, login, unix_now};
use crate::{cohort, cohort_json, stderr};

/// The audit log's actions and details, newest last.
fn audit_actions(data: &std::path::Path) -> Vec<(String, String)> {
    cohort_json(data, &["audit", "log", "--limit", "500"])
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["action"].as_str().unwrap().to_string(),
                e["detail"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

#[test]
fn the_server_decides_each_call_on_current_roles_tokens_and_second_factors() {
    let s = setup(8);
    let d = &s.data;
    let (id, _) = s.approved_study(&study_text("3", "0.5", false), 3);
    for (name, role) in [("outsider", "researcher"), ("auditor-1", "auditor")] {
        cohort_json(d, &["account", "grant", name, role, "--as", "operator"]);
    }
    let operator_secret = enroll_totp(d, "operator");
    let server = Server::start(d);
    let researcher = login(d, &server, "researcher");
    let patient = login(d, &server, "patient-0");
    let patient_again = login(d, &server, "patient-0");
    let outsider = login(d, &server, "outsider");
    let auditor = login(d, &server, "auditor-1");
    let steward = login(d, &server, "steward-1");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let ch = rt.block_on(channel(d, &server.url));
    let mut studies = StudiesClient::new(ch.clone());
    let mut show = |token: &str| {
        rt.block_on(studies.show(authed(token, pb::StudyRef { study_id: id })))
            .map(tonic::Response::into_inner)
    };

    // The books: the researcher, a steward and an auditor see them; a
    // patient and another researcher see the terms only.
    for (who, token) in [
        ("researcher", &researcher),
        ("steward", &steward),
        ("auditor", &auditor),
    ] {
        let st = show(token).unwrap();
        assert_eq!(st.remaining.as_deref(), Some("ε 3"), "{who}");
        assert!(
            st.escrow.is_some() && st.owed.is_some() && st.queries.is_some(),
            "{who}"
        );
    }
    for (who, token) in [("patient", &patient), ("outsider", &outsider)] {
        let st = show(token).unwrap();
        assert_eq!(st.title, "Test study", "{who} sees the terms");
        assert_eq!(
            st.budget, "ε 3",
            "{who} sees the budget it would consent to"
        );
        assert_eq!(
            (st.remaining, st.escrow, st.owed, st.queries, st.releases),
            (None, None, None, None, None),
            "{who} sees no books"
        );
    }

    // Signing out ends that token, and only that one.
    let out = cohort(
        d,
        &["logout", "--server", &server.url, "--token", &researcher],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let e = show(&researcher).unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
    assert!(e.message().contains("not one this server issued"), "{e:?}");
    let again = cohort(
        d,
        &["logout", "--server", &server.url, "--token", &researcher],
    );
    assert!(!again.status.success(), "a token ends once");

    // Only an administrator ends another account's sign-ins.
    let mut flight = arrow_flight::flight_service_client::FlightServiceClient::new(ch.clone());
    let patient_address = cohort_json(d, &["account", "list"])
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["name"] == "patient-0")
        .unwrap()["address"]
        .as_str()
        .unwrap()
        .to_string();
    let refused = rt
        .block_on(flight.do_action(authed(
            &outsider,
            arrow_flight::Action {
                r#type: REVOKE_ACTION.into(),
                body: patient_address.clone().into_bytes().into(),
            },
        )))
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    assert!(
        show(&patient).is_ok(),
        "the refused revocation ended nothing"
    );
    let code = cohort_engine::keys::second_factor::code_for(&operator_secret, unix_now()).unwrap();
    let ended = cohort_json(
        d,
        &[
            "logout",
            "--server",
            &server.url,
            "--account",
            "patient-0",
            "--as",
            "operator",
            "--totp",
            &code,
        ],
    );
    assert_eq!(
        ended["tokens"], 2,
        "both of the patient's sign-ins: {ended}"
    );
    for token in [&patient, &patient_again] {
        assert_eq!(show(token).unwrap_err().code(), Code::Unauthenticated);
    }

    // A role granted after sign-in is seen at the next call: the outsider,
    // a researcher of another study, sees no books; once a steward, it does,
    // with the same token.
    assert_eq!(show(&outsider).unwrap().remaining, None);
    let next_step =
        cohort_engine::keys::second_factor::code_for(&operator_secret, unix_now() + 30).unwrap();
    let granted = cohort_json(
        d,
        &[
            "account",
            "grant",
            "outsider",
            "steward",
            "--server",
            &server.url,
            "--as",
            "operator",
            "--totp",
            &next_step,
        ],
    );
    assert_eq!(granted["granted"], true, "{granted}");
    assert_eq!(
        show(&outsider).unwrap().remaining.as_deref(),
        Some("ε 3"),
        "the role is read from the chain at the call"
    );
    // A non-admin cannot change roles through the server; the refusal is
    // audited.
    let mut roles = pb::roles_client::RolesClient::new(ch.clone());
    let e = rt
        .block_on(roles.grant(authed(
            &auditor,
            pb::RoleChange {
                account: "auditor-1".into(),
                role: "admin".into(),
            },
        )))
        .unwrap_err();
    assert_ne!(e.code(), Code::Ok);

    // A second factor enrolled again ends the sign-ins made with the old one.
    assert!(show(&steward).is_ok());
    enroll_totp(d, "steward-1");
    let e = show(&steward).unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
    assert!(e.message().contains("enrolled again"), "{e:?}");

    // Every sign-in, sign-out, revocation and role change is audited,
    // refusals included.
    let log = audit_actions(d);
    let count = |action: &str| log.iter().filter(|(a, _)| a == action).count();
    assert!(count("auth.sign_in") >= 6, "{log:?}");
    assert_eq!(
        count("auth.logout"),
        3,
        "the researcher's and the operator's two"
    );
    assert_eq!(count("auth.revoke"), 2, "one refused, one done");
    assert!(
        log.iter()
            .any(|(a, d)| a == "auth.refused" && d.contains("enrolled again")),
        "the stale token's refusal: {log:?}"
    );
    assert!(
        log.iter()
            .any(|(a, d)| a == "role.grant" && d.contains("refused") && d.contains("admin")),
        "{log:?}"
    );
    assert!(
        log.iter()
            .any(|(a, d)| a == "role.grant" && d.contains("steward") && !d.contains("refused"))
    );
    drop(server);
}
