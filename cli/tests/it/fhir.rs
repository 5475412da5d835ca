//! The clinical service through the server: the FHIR R4 REST API under
//! `/fhir` over HTTP, and the gRPC `Clinical` service, on a live `cohort
//! serve`, each call decided by the chain; then a third-party FHIR client
//! (Python's `fhirclient`) and `fhir.resources`' R4B models against it.

use std::path::{Path, PathBuf};
use std::process::Command;

use cohort_server::api::pb;
use pb::clinical_client::ClinicalClient;
use pb::roles_client::RolesClient;
use serde_json::{Value, json};
use tonic::Code;

use crate::research::{provider_with_grants, setup};
use crate::server::{Server, authed, login};
use crate::{cohort_json, stderr, stdout};

/// An HTTP answer: its status, headers and body as JSON.
struct Answer {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: Value,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Asserts an OperationOutcome with this status and issue code; its
    /// diagnostics.
    fn outcome(&self, status: u16, code: &str) -> String {
        assert_eq!(self.status, status, "{}", self.body);
        assert_eq!(
            self.body["resourceType"], "OperationOutcome",
            "{}",
            self.body
        );
        assert_eq!(self.body["issue"][0]["severity"], "error");
        assert_eq!(self.body["issue"][0]["code"], code, "{}", self.body);
        self.body["issue"][0]["diagnostics"]
            .as_str()
            .unwrap()
            .to_string()
    }
}

/// A FHIR client of one server, as one account (or none).
struct Fhir {
    http: reqwest::Client,
    base: String,
}

impl Fhir {
    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<(&str, String)>,
    ) -> Answer {
        let mut r = self.http.request(method, format!("{}{path}", self.base));
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        if let Some((kind, text)) = body {
            r = r.header("content-type", kind).body(text);
        }
        let a = r.send().await.unwrap();
        let status = a.status().as_u16();
        let headers = a.headers().clone();
        let text = a.text().await.unwrap();
        let body = serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"));
        if status != 405 {
            assert!(
                headers["content-type"]
                    .to_str()
                    .unwrap()
                    .starts_with("application/fhir+json"),
                "{path}: {headers:?}"
            );
        }
        Answer {
            status,
            headers,
            body,
        }
    }

    async fn get(&self, path: &str, token: Option<&str>) -> Answer {
        self.send(reqwest::Method::GET, path, token, None).await
    }

    async fn put(&self, path: &str, token: &str, resource: &Value) -> Answer {
        let body = Some(("application/fhir+json", resource.to_string()));
        self.send(reqwest::Method::PUT, path, Some(token), body)
            .await
    }

    async fn post(&self, path: &str, token: &str, resource: &Value) -> Answer {
        let body = Some(("application/fhir+json", resource.to_string()));
        self.send(reqwest::Method::POST, path, Some(token), body)
            .await
    }
}

fn entries(bundle: &Value) -> Vec<Value> {
    assert_eq!(bundle["resourceType"], "Bundle", "{bundle}");
    assert_eq!(bundle["type"], "searchset");
    let list = bundle["entry"].as_array().cloned().unwrap_or_default();
    assert_eq!(bundle["total"], list.len(), "total counts the entries");
    list.into_iter().map(|e| e["resource"].clone()).collect()
}

fn grant(provider: &str, level: &str) -> pb::AccessGrantRequest {
    pb::AccessGrantRequest {
        provider: provider.into(),
        level: level.into(),
        purposes: vec!["treatment".into()],
        types: Vec::new(),
        days: 30,
        on_behalf_of: None,
    }
}

/// The venv `scripts/test` prepares (clients/python/setup-venv.sh), with
/// fhirclient and fhir.resources.
fn python() -> PathBuf {
    let python = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/pyclient/bin/python");
    assert!(
        python.exists(),
        "{} is missing: run clients/python/setup-venv.sh (scripts/test does) to install fhirclient and fhir.resources",
        python.display()
    );
    python
}

#[test]
fn providers_read_search_and_write_through_fhir_and_grpc_as_the_chain_allows() {
    let s = setup(4);
    let (p0, p1) = (&s.patient_ids[0], &s.patient_ids[1]);
    cohort_json(&s.data, &["account", "new", "patient-0", "--patient", p0]);
    cohort_json(&s.data, &["account", "new", "patient-1", "--patient", p1]);
    // Credentialed providers without a grant; one may break the glass.
    provider_with_grants(&s.data, "dr-who", &[]);
    provider_with_grants(&s.data, "dr-er", &[]);
    cohort_json(&s.data, &["account", "grant", "dr-er", "emergency"]);
    cohort_json(&s.data, &["account", "new", "auditor"]);
    cohort_json(&s.data, &["account", "grant", "auditor", "auditor"]);
    let conn = s.dir.connect().unwrap();
    let records_of_p0: i64 = conn
        .query_row(
            "SELECT count(DISTINCT record_id) FROM records WHERE patient_id = ?1",
            [p0],
            |r| r.get(0),
        )
        .unwrap();

    let server = Server::start_env(
        &s.data,
        &[
            ("COHORT_TLS_MODE", "off"),
            ("COHORT_AUTH_SECOND_FACTOR", "false"),
        ],
    );
    let patient = login(&s.data, &server, "patient-0");
    let doctor = login(&s.data, &server, "dr-who");
    let er = login(&s.data, &server, "dr-er");
    let auditor = login(&s.data, &server, "auditor");
    let fhir = Fhir {
        http: reqwest::Client::new(),
        base: format!("{}/fhir", server.url),
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let channel = tonic::transport::Endpoint::from_shared(server.url.clone())
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut clinical = ClinicalClient::new(channel.clone());
        let mut roles = RolesClient::new(channel);

        // The CapabilityStatement needs no token.
        let cap = fhir.get("/metadata", None).await;
        assert_eq!(cap.status, 200);
        assert_eq!(cap.body["resourceType"], "CapabilityStatement");
        assert_eq!(cap.body["fhirVersion"], "4.0.1");
        let types: Vec<&str> = cap.body["rest"][0]["resource"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["type"].as_str().unwrap())
            .collect();
        assert_eq!(
            types,
            [
                "Patient",
                "Observation",
                "Condition",
                "Encounter",
                "MedicationRequest"
            ]
        );
        let observation = &cap.body["rest"][0]["resource"][1];
        let params: Vec<&str> = observation["searchParam"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["name"].as_str().unwrap())
            .collect();
        assert_eq!(params, ["patient", "code", "date"]);

        // No token, or one this server did not issue: 401, nothing else said.
        let patient_url = format!("/Patient/{p0}");
        let none = fhir.get(&patient_url, None).await;
        none.outcome(401, "login");
        assert!(
            none.header("www-authenticate")
                .unwrap()
                .starts_with("Bearer")
        );
        fhir.get(&patient_url, Some(&"0".repeat(64)))
            .await
            .outcome(401, "login");
        fhir.put("/Observation/x", &"1".repeat(64), &json!({}))
            .await
            .outcome(401, "login");
        let status = clinical
            .read_record(tonic::Request::new(pb::ReadRecordRequest {
                record_id: format!("Patient/{p0}"),
                ..Default::default()
            }))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::Unauthenticated);

        // A credentialed provider without a grant is refused, and told why.
        let refused = fhir.get(&patient_url, Some(&doctor)).await;
        let why = refused.outcome(403, "forbidden");
        assert!(
            why.contains("`dr-who` holds no grant from patient"),
            "{why}"
        );
        let status = clinical
            .search_records(authed(
                &doctor,
                pb::SearchRecordsRequest {
                    patient: p0.clone(),
                    ..Default::default()
                },
            ))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::PermissionDenied);
        assert!(status.message().contains("holds no grant"), "{status:?}");

        // The patient grants (over gRPC); the provider reads.
        let g = clinical
            .grant(authed(&patient, grant("dr-who", "read")))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(g.action, "granted");
        let read = fhir.get(&patient_url, Some(&doctor)).await;
        assert_eq!(read.status, 200, "{}", read.body);
        assert_eq!(read.body["resourceType"], "Patient");
        assert_eq!(read.body["id"], p0.as_str());
        assert_eq!(read.body["meta"]["versionId"], "1");
        assert_eq!(read.header("etag"), Some("W/\"1\""));
        assert!(read.header("x-cohort-emergency").is_none());
        assert!(read.body["meta"].get("security").is_none());
        // The purpose of use is the grant's business: payment is not granted.
        let payment = fhir
            .get(&format!("{patient_url}?_purpose=payment"), Some(&doctor))
            .await;
        assert!(payment.outcome(403, "forbidden").contains("purpose"));

        // Searches: by patient, by code, by date; $everything.
        let all = fhir
            .get(&format!("/Observation?patient=Patient/{p0}"), Some(&doctor))
            .await;
        assert_eq!(all.status, 200, "{}", all.body);
        let observations = entries(&all.body);
        assert!(!observations.is_empty());
        assert!(
            observations
                .iter()
                .all(|o| o["resourceType"] == "Observation")
        );
        let first = &observations[0];
        let coding = &first["code"]["coding"][0];
        let code = format!(
            "{}|{}",
            coding["system"].as_str().unwrap(),
            coding["code"].as_str().unwrap()
        );
        let by_code = fhir
            .get(
                &format!(
                    "/Observation?patient={p0}&code={}",
                    code.replace(':', "%3A")
                        .replace('/', "%2F")
                        .replace('|', "%7C")
                ),
                Some(&doctor),
            )
            .await;
        let matching = entries(&by_code.body);
        assert!(!matching.is_empty() && matching.len() <= observations.len());
        assert!(matching.iter().all(|o| {
            o["code"]["coding"]
                .as_array()
                .unwrap()
                .iter()
                .any(|c| c["code"] == coding["code"])
        }));
        let day = &first["effectiveDateTime"].as_str().unwrap()[..10];
        let on_day = fhir
            .get(
                &format!("/Observation?patient={p0}&date=ge{day}&date=le{day}"),
                Some(&doctor),
            )
            .await;
        let dated = entries(&on_day.body);
        assert!(!dated.is_empty());
        assert!(
            dated
                .iter()
                .all(|o| o["effectiveDateTime"].as_str().unwrap().starts_with(day))
        );
        let before = fhir
            .get(
                &format!("/Observation?patient={p0}&date=lt1900-01-01"),
                Some(&doctor),
            )
            .await;
        assert!(entries(&before.body).is_empty());
        let everything = fhir
            .get(&format!("/Patient/{p0}/$everything"), Some(&doctor))
            .await;
        let every = entries(&everything.body);
        assert_eq!(
            every.len() as i64,
            records_of_p0,
            "every record of the patient"
        );
        assert!(every.iter().any(|r| r["resourceType"] == "Patient"));
        assert!(
            everything.body["entry"][0]["fullUrl"]
                .as_str()
                .unwrap()
                .starts_with(&format!("{}/fhir/", server.url))
        );

        // Bad requests are OperationOutcomes too.
        fhir.get("/Observation", Some(&doctor))
            .await
            .outcome(400, "invalid");
        fhir.get(
            &format!("/Observation?patient={p0}&date=soon"),
            Some(&doctor),
        )
        .await
        .outcome(400, "invalid");
        fhir.get(
            &format!("/Observation?patient={p0}&_count=5"),
            Some(&doctor),
        )
        .await
        .outcome(400, "invalid");
        fhir.get("/Observation/no-such-record", Some(&doctor))
            .await
            .outcome(404, "not-found");
        fhir.get("/Medication/1", Some(&doctor))
            .await
            .outcome(404, "not-supported");
        fhir.send(reqwest::Method::DELETE, &patient_url, Some(&doctor), None)
            .await
            .outcome(405, "not-supported");

        // Python's fhirclient and fhir.resources (R4B) against the same server.
        let o = Command::new(python())
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fhir/fhirclient_check.py"))
            .args([&fhir.base, &doctor, p0])
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "fhirclient_check.py failed:\n{}\n{}",
            stderr(&o),
            stdout(&o)
        );
        let seen: Value = serde_json::from_str(stdout(&o).trim()).unwrap();
        assert_eq!(seen["patient"], p0.as_str());
        assert_eq!(seen["served"]["read"], json!([200, "Patient"]));
        assert_eq!(seen["served"]["no token"], json!([401, "OperationOutcome"]));
        assert_eq!(seen["served"]["everything"], json!([200, "Bundle"]));

        // A read grant does not write.
        let mut changed = first.clone();
        changed["status"] = json!("amended");
        let id = first["id"].as_str().unwrap();
        let url = format!("/Observation/{id}");
        let no = fhir.put(&url, &doctor, &changed).await;
        assert!(
            no.outcome(403, "forbidden").contains("level"),
            "{}",
            no.body
        );
        // The body's id must be the URL's.
        fhir.put("/Observation/another-id", &doctor, &changed)
            .await
            .outcome(400, "invalid");
        // A write grant does: a new version, the first kept.
        clinical
            .grant(authed(&patient, grant("dr-who", "write")))
            .await
            .unwrap();
        let put = fhir.put(&url, &doctor, &changed).await;
        assert_eq!(put.status, 200, "{}", put.body);
        assert_eq!(put.body["meta"]["versionId"], "2");
        assert!(
            put.header("location")
                .unwrap()
                .ends_with(&format!("{url}/_history/2"))
        );
        let now = fhir.get(&url, Some(&doctor)).await;
        assert_eq!(now.body["status"], "amended");
        let then = fhir.get(&format!("{url}/_history/1"), Some(&doctor)).await;
        assert_eq!(then.body["status"], first["status"]);
        assert_eq!(then.body["meta"]["versionId"], "1");
        // The same content again is refused as a write with nothing to store.
        fhir.put(&url, &doctor, &changed)
            .await
            .outcome(422, "processing");
        // A create: the server names it.
        let mut fresh = first.clone();
        fresh["id"] = json!("chosen-by-the-client");
        let created = fhir.post("/Observation", &doctor, &fresh).await;
        assert_eq!(created.status, 201, "{}", created.body);
        let new_id = created.body["id"].as_str().unwrap();
        assert_ne!(new_id, "chosen-by-the-client");
        assert!(
            created
                .header("location")
                .unwrap()
                .ends_with(&format!("/Observation/{new_id}/_history/1"))
        );
        let plain = fhir
            .send(
                reqwest::Method::POST,
                "/Observation",
                Some(&doctor),
                Some(("text/plain", fresh.to_string())),
            )
            .await;
        plain.outcome(415, "not-supported");
        fhir.send(
            reqwest::Method::POST,
            "/Observation",
            Some(&doctor),
            Some(("application/fhir+json", "{not json".into())),
        )
        .await
        .outcome(400, "invalid");
        fhir.post("/Condition", &doctor, &fresh)
            .await
            .outcome(400, "invalid");

        // Revocation takes effect at the next call.
        let r = clinical
            .revoke(authed(
                &patient,
                pb::AccessRevokeRequest {
                    provider: "dr-who".into(),
                    on_behalf_of: None,
                },
            ))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.action, "revoked");
        let gone = fhir.get(&patient_url, Some(&doctor)).await;
        assert!(gone.outcome(403, "forbidden").contains("revoked"));
        let listed = clinical
            .list_grants(authed(&patient, pb::ListGrantsRequest {}))
            .await
            .unwrap()
            .into_inner();
        let who = listed
            .grants
            .iter()
            .find(|g| g.provider_name.as_deref() == Some("dr-who"))
            .unwrap();
        assert!(!who.active, "{who:?}");

        // Breaking the glass: the read is marked, the patient is told.
        let opened = clinical
            .trigger_emergency(authed(
                &er,
                pb::TriggerEmergencyRequest {
                    patient: p0.clone(),
                    reason: "unconscious in the emergency room".into(),
                },
            ))
            .await
            .unwrap()
            .into_inner();
        let urgent = fhir.get(&patient_url, Some(&er)).await;
        assert_eq!(urgent.status, 200, "{}", urgent.body);
        assert_eq!(urgent.header("x-cohort-emergency"), Some("true"));
        assert_eq!(urgent.body["meta"]["security"][0]["code"], "BTG");
        let grpc_read = clinical
            .read_record(authed(
                &er,
                pb::ReadRecordRequest {
                    record_id: format!("Patient/{p0}"),
                    ..Default::default()
                },
            ))
            .await
            .unwrap()
            .into_inner();
        assert!(grpc_read.emergency);

        // The patient's read log: who, when, why, emergency or not.
        let log = clinical
            .read_log(authed(&patient, pb::ReadLogRequest {}))
            .await
            .unwrap()
            .into_inner();
        let by = |name: &str| {
            log.entries
                .iter()
                .filter(|e| e.accessor_name.as_deref() == Some(name))
                .collect::<Vec<_>>()
        };
        assert!(!by("dr-who").is_empty() && by("dr-who").iter().all(|e| !e.emergency));
        assert!(
            by("dr-who")
                .iter()
                .all(|e| e.purpose == "treatment" && e.at > 0)
        );
        assert!(!by("dr-er").is_empty() && by("dr-er").iter().all(|e| e.emergency));
        // Nobody else's log: a provider's own is of their own records (none).
        let theirs = clinical
            .read_log(authed(&doctor, pb::ReadLogRequest {}))
            .await
            .unwrap()
            .into_inner();
        assert!(theirs.entries.is_empty());

        let notes = clinical
            .notifications(authed(&patient, pb::NotificationsRequest::default()))
            .await
            .unwrap()
            .into_inner()
            .notifications;
        let opened_note = notes.iter().find(|n| n.kind == "emergency.opened").unwrap();
        assert!(opened_note.read_at.is_none());
        let marked = clinical
            .mark_notifications_read(authed(&patient, pb::MarkReadRequest { up_to: notes[0].id }))
            .await
            .unwrap()
            .into_inner();
        assert!(marked.marked >= 1);
        let unread = clinical
            .notifications(authed(
                &patient,
                pb::NotificationsRequest {
                    unread_only: true,
                    limit: 0,
                },
            ))
            .await
            .unwrap()
            .into_inner();
        assert!(unread.notifications.is_empty());
        let hook = clinical
            .set_webhook(authed(
                &patient,
                pb::SetWebhookRequest {
                    url: Some("ftp://example.invalid/".into()),
                },
            ))
            .await
            .unwrap_err();
        assert_eq!(hook.code(), Code::InvalidArgument);
        // Not into the server's own network (no SSRF through webhooks).
        let hook = clinical
            .set_webhook(authed(
                &patient,
                pb::SetWebhookRequest {
                    url: Some("http://169.254.169.254/latest/meta-data".into()),
                },
            ))
            .await
            .unwrap_err();
        assert_eq!(hook.code(), Code::InvalidArgument);
        assert!(hook.message().contains("internal"), "{hook:?}");

        // The review queue is the auditors'; the auditor judges.
        let status = clinical
            .emergency_queue(authed(
                &doctor,
                pb::EmergencyQueueRequest { pending_only: true },
            ))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::PermissionDenied);
        let queue = clinical
            .emergency_queue(authed(
                &auditor,
                pb::EmergencyQueueRequest { pending_only: true },
            ))
            .await
            .unwrap()
            .into_inner()
            .emergencies;
        let e = queue.iter().find(|e| e.id == opened.id).unwrap();
        assert_eq!(
            e.reason.as_deref(),
            Some("unconscious in the emergency room")
        );
        assert_eq!(e.provider_name.as_deref(), Some("dr-er"));
        let status = clinical
            .review_emergency(authed(
                &doctor,
                pb::ReviewEmergencyRequest {
                    id: opened.id,
                    justified: true,
                    finding: "fine".into(),
                },
            ))
            .await
            .unwrap_err();
        assert_ne!(status.code(), Code::Ok);
        clinical
            .review_emergency(authed(
                &auditor,
                pb::ReviewEmergencyRequest {
                    id: opened.id,
                    justified: true,
                    finding: "the patient was unconscious".into(),
                },
            ))
            .await
            .unwrap();
        let pending = clinical
            .emergency_queue(authed(
                &auditor,
                pb::EmergencyQueueRequest { pending_only: true },
            ))
            .await
            .unwrap()
            .into_inner()
            .emergencies;
        assert!(pending.iter().all(|e| e.id != opened.id));
        clinical
            .end_emergency(authed(&patient, pb::EmergencyRef { id: opened.id }))
            .await
            .unwrap();
        let after = fhir.get(&patient_url, Some(&er)).await;
        after.outcome(403, "forbidden");

        // Who each caller is, as the page asks.
        let me = roles
            .me(authed(&patient, pb::MeRequest {}))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(me.account, "patient-0");
        assert!(me.roles.contains(&"patient".to_string()), "{me:?}");
        assert_eq!(me.patient_id.as_deref(), Some(p0.as_str()));
        let me = roles
            .me(authed(&auditor, pb::MeRequest {}))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(me.roles, ["auditor"]);
        assert!(me.patient_id.is_none());
    });
    assert!(server.stop().success());

    // Every refusal is in the audit log, under the account refused.
    let refused: i64 = conn
        .query_row(
            "SELECT count(*) FROM audit WHERE actor = 'dr-who' AND action = 'read.refused'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert!(refused >= 3, "{refused} refusals audited");
    let updates: i64 = conn
        .query_row(
            "SELECT count(*) FROM audit WHERE actor = 'dr-who' AND action = 'update.refused'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert!(updates >= 1);
    let emergency_reads: i64 = conn
        .query_row(
            "SELECT count(*) FROM audit WHERE actor = 'dr-er' AND action = 'read.emergency'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert!(emergency_reads >= 2);
}
