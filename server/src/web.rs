//! The web page for patients, providers, auditors and stewards, served by
//! `cohort serve` on the same port as gRPC (HTTP/1.1 or HTTP/2): the page,
//! and a small JSON API that is the study API's and the clinical service's
//! own calls (same token, same checks, same messages) for a browser that
//! does not speak gRPC. The page shows each account the sections its roles
//! on chain allow (`/api/me`); the server refuses the rest whatever the
//! page shows.
//!
//! A patient or provider signs in on the page itself ([`session`]): the
//! account's name, a passkey (WebAuthn with user verification: the
//! fingerprint, face or PIN of a platform authenticator) and, while
//! `[auth] second_factor` is on, the current TOTP code. A developer may
//! still paste a token from `cohort login`. The browser holds the bearer
//! token in session storage and sends it as `authorization`; no cookie is
//! set, so another site cannot make the browser act for the user. The page renders data
//! only as text (never as HTML) and is served with a strict
//! Content-Security-Policy.

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};
use tonic::Code;

use super::api::{StudyApi, pb};
use pb::appointments_server::Appointments;
use pb::audit_server::Audit;
use pb::clinical_server::Clinical;
use pb::compensation_server::Compensation;
use pb::consents_server::Consents;
use pb::insurance_server::Insurance;
use pb::records_server::Records;
use pb::recovery_server::Recovery;
use pb::roles_server::Roles;
use pb::studies_server::Studies;

pub mod session;

const PAGE: &str = include_str!("web/index.html");
const SCRIPT: &str = include_str!("web/app.js");
const STYLE: &str = include_str!("web/style.css");

/// The page's routes, to merge beside the gRPC services.
pub fn router(api: StudyApi) -> axum::Router {
    axum::Router::new()
        .route(
            "/",
            get(|| async { asset(PAGE, "text/html; charset=utf-8") }),
        )
        .route(
            "/app.js",
            get(|| async { asset(SCRIPT, "text/javascript; charset=utf-8") }),
        )
        .route(
            "/style.css",
            get(|| async { asset(STYLE, "text/css; charset=utf-8") }),
        )
        .route("/api/studies", get(studies))
        .route("/api/studies/{id}/approve", post(approve))
        .route("/api/audit", get(audit_log))
        .route("/api/audit/verify", get(audit_verify))
        .route("/api/consents", get(consents))
        .route("/api/consents/{id}/withdraw", post(withdraw))
        .route("/api/access-log", get(access_log))
        .route("/api/compensation", get(compensation))
        .route("/api/me", get(me))
        .route("/api/grants", get(list_grants).post(grant))
        .route("/api/grants/{provider}/revoke", post(revoke))
        .route("/api/delegates", post(delegate))
        .route("/api/reads", get(reads))
        .route("/api/disclosures", get(disclosures))
        .route("/api/geo", get(geo_policy))
        .route("/api/geo/restrict", post(geo_restrict))
        .route("/api/key-holders", get(key_holders))
        .route("/api/export", get(export))
        .route("/api/report", post(report))
        .route("/api/notifications", get(notifications))
        .route("/api/notifications/read", post(mark_read))
        .route("/api/records", get(records))
        .route("/api/emergencies", get(emergencies).post(trigger))
        .route("/api/emergencies/{id}/review", post(review))
        .route("/api/providers", get(providers))
        .route("/api/recovery", post(recovery_open))
        .route(
            "/api/recovery/guardians",
            get(recovery_guardians).post(recovery_set_guardians),
        )
        .route("/api/recovery/{id}/{step}", post(recovery_step))
        .route("/api/recovery/{id}/trail", get(recovery_trail))
        .route("/api/slots", get(slots))
        .route("/api/quote", get(quote))
        .route("/api/availability", post(publish))
        .route("/api/appointments", get(appointments).post(book))
        .route("/api/appointments/{id}/reason", get(reason))
        .route("/api/appointments/{id}/pay", post(pay))
        .route("/api/appointments/{id}/{step}", post(act))
        .route("/api/coverage", get(coverage))
        .with_state(api)
}

fn asset(body: &'static str, kind: &'static str) -> Response {
    let mut r = body.into_response();
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(kind));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
        ),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// A refusal as JSON `{code, error}`, with the HTTP status closest to the
/// gRPC one.
#[derive(Serialize)]
struct Refusal {
    code: String,
    error: String,
}

fn refusal(s: tonic::Status) -> Response {
    let http = match s.code() {
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::InvalidArgument | Code::OutOfRange => StatusCode::BAD_REQUEST,
        Code::FailedPrecondition => StatusCode::CONFLICT,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    let body = Refusal {
        code: format!("{:?}", s.code()),
        error: s.message().to_string(),
    };
    (http, Json(body)).into_response()
}

/// `message` as a gRPC request carrying the browser's `authorization`.
pub(crate) fn request<T>(headers: &HeaderMap, message: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(message);
    if let Some(v) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
    {
        r.metadata_mut().insert("authorization", v);
    }
    r
}

fn reply<T: Serialize>(r: Result<tonic::Response<T>, tonic::Status>) -> Response {
    match r {
        Ok(r) => Json(r.into_inner()).into_response(),
        Err(s) => refusal(s),
    }
}

async fn studies(State(api): State<StudyApi>, headers: HeaderMap) -> Response {
    reply(Studies::list(&api, request(&headers, pb::ListStudiesRequest {})).await)
}

async fn approve(State(api): State<StudyApi>, Path(id): Path<u64>, headers: HeaderMap) -> Response {
    reply(Studies::approve(&api, request(&headers, pb::StudyRef { study_id: id })).await)
}

#[derive(Deserialize)]
struct Limit {
    #[serde(default)]
    limit: u32,
}

async fn audit_log(
    State(api): State<StudyApi>,
    Query(q): Query<Limit>,
    headers: HeaderMap,
) -> Response {
    let message = pb::AuditLogRequest {
        limit: q.limit,
        target: None,
    };
    reply(Audit::log(&api, request(&headers, message)).await)
}

async fn audit_verify(State(api): State<StudyApi>, headers: HeaderMap) -> Response {
    reply(Audit::verify(&api, request(&headers, pb::VerifyAuditRequest {})).await)
}

async fn consents(State(api): State<StudyApi>, headers: HeaderMap) -> Response {
    reply(Consents::list(&api, request(&headers, pb::ListConsentsRequest {})).await)
}

async fn withdraw(
    State(api): State<StudyApi>,
    Path(id): Path<u64>,
    headers: HeaderMap,
) -> Response {
    reply(Consents::withdraw(&api, request(&headers, pb::StudyRef { study_id: id })).await)
}

async fn access_log(
    State(api): State<StudyApi>,
    Query(q): Query<Limit>,
    headers: HeaderMap,
) -> Response {
    reply(
        Records::access_log(
            &api,
            request(&headers, pb::AccessLogRequest { limit: q.limit }),
        )
        .await,
    )
}

async fn compensation(State(api): State<StudyApi>, headers: HeaderMap) -> Response {
    let message = pb::CompensationRequest { study_id: None };
    reply(Compensation::show(&api, request(&headers, message)).await)
}

async fn me(State(api): State<StudyApi>, headers: HeaderMap) -> Response {
    reply(Roles::me(&api, request(&headers, pb::MeRequest {})).await)
}

async fn list_grants(State(api): State<StudyApi>, headers: HeaderMap) -> Response {
    reply(Clinical::list_grants(&api, request(&headers, pb::ListGrantsRequest {})).await)
}

/// A JSON body, or a 400 refusal saying what is wrong with it.
fn body<T: serde::de::DeserializeOwned>(bytes: &axum::body::Bytes) -> Result<T, tonic::Status> {
    serde_json::from_slice(bytes)
        .map_err(|e| tonic::Status::invalid_argument(format!("the request body: {e}")))
}

#[derive(Deserialize)]
struct GrantForm {
    provider: String,
    #[serde(default)]
    level: String,
    #[serde(default)]
    purposes: Vec<String>,
    #[serde(default)]
    types: Vec<String>,
    days: u32,
}

async fn grant(
    State(api): State<StudyApi>,
    headers: HeaderMap,
    bytes: axum::body::Bytes,
) -> Response {
    let f: GrantForm = match body(&bytes) {
        Ok(f) => f,
        Err(s) => return refusal(s),
    };
    let message = pb::AccessGrantRequest {
        provider: f.provider,
        level: f.level,
        purposes: f.purposes,
        types: f.types,
        days: f.days,
        on_behalf_of: None,
    };
    reply(Clinical::grant(&api, request(&headers, message)).await)
}

async fn revoke(
    State(api): State<StudyApi>,
    Path(provider): Path<String>,
    headers: HeaderMap,
) -> Response {
    let message = pb::AccessRevokeRequest {
        provider,
        on_behalf_of: None,
    };
    reply(Clinical::revoke(&api, request(&headers, message)).await)
}

#[derive(Deserialize)]
struct DelegateForm {
    delegate: String,
    #[serde(default)]
    level: String,
    days: u32,
}

async fn delegate(
    State(api): State<StudyApi>,
    headers: HeaderMap,
    bytes: axum::body::Bytes,
) -> Response {
    let f: DelegateForm = match body(&bytes) {
        Ok(f) => f,
        Err(s) => return refusal(s),
    };
    let message = pb::DelegateRequest {
        delegate: f.delegate,
        level: f.level,
        days: f.days,
    };
    reply(Clinical::delegate(&api, request(&headers, message)).await)
}

async fn reads(State(api): State<StudyApi>, headers: HeaderMap) -> Response {
    reply(Clinical::read_log(&api, request(&headers, pb::ReadLogRequest {})).await)
}

async fn disclosures(State(api): State<StudyApi>, headers: HeaderMap) -> Response {
    let asked = pb::DisclosuresRequest {
        patient: String::new(),
        since: None,
    };
    reply(Clinical::disclosures(&api, request(&headers, asked)).await)
}

async fn geo_policy(State(api): State<StudyApi>, headers: HeaderMap) -> Response {
    reply(Clinical::geo_policy(&api, request(&headers, pb::GeoPolicyRequest {})).await)
}

#[derive(Deserialize)]
struct GeoForm {
    #[serde(default)]
    restrictions: Vec<String>,
}

async fn geo_restrict(
    State(api): State<StudyApi>,
    headers: HeaderMap,
    bytes: axum::body::Bytes,
) -> Response {
    let f: GeoForm = match body(&bytes) {
        Ok(f) => f,
        Err(s) => return refusal(s),
    };
    let message = pb::SetGeoRestrictionRequest {
        restrictions: f.restrictions,
    };
    reply(Clinical::set_geo_restriction(&api, request(&headers, message)).await)
}

async fn key_holders(State(api): State<StudyApi>, headers: HeaderMap) -> Response {
    let asked = pb::KeyHoldersRequest {
        patient: String::new(),
    };
    reply(Clinical::key_holders(&api, request(&headers, asked)).await)
}

async fn export(State(api): State<StudyApi>, headers: HeaderMap) -> Response {
    let asked = pb::ExportRecordsRequest {
        patient: String::new(),
        purpose: String::new(),
    };
    reply(Clinical::export_records(&api, request(&headers, asked)).await)
}

#[derive(Deserialize)]
struct Period {
    from: i64,
    to: Option<i64>,
}

async fn report(
    State(api): State<StudyApi>,
    headers: HeaderMap,
    Json(p): Json<Period>,
) -> Response {
    let asked = pb::ReportRequest {
        from: p.from,
        to: p.to,
    };
    reply(pb::compliance_server::Compliance::report(&api, request(&headers, asked)).await)
}

#[derive(Deserialize)]
struct Unread {
    #[serde(default)]
    unread: bool,
}

async fn notifications(
    State(api): State<StudyApi>,
    Query(q): Query<Unread>,
    headers: HeaderMap,
) -> Response {
    let message = pb::NotificationsRequest {
        unread_only: q.unread,
        limit: 100,
    };
    reply(Clinical::notifications(&api, request(&headers, message)).await)
}

#[derive(Deserialize)]
struct UpTo {
    up_to: i64,
}

async fn mark_read(
    State(api): State<StudyApi>,
    headers: HeaderMap,
    bytes: axum::body::Bytes,
) -> Response {
    let f: UpTo = match body(&bytes) {
        Ok(f) => f,
        Err(s) => return refusal(s),
    };
    let message = pb::MarkReadRequest { up_to: f.up_to };
    reply(Clinical::mark_notifications_read(&api, request(&headers, message)).await)
}

#[derive(Deserialize)]
struct RecordQuery {
    patient: String,
    #[serde(default, rename = "type")]
    rtype: Option<String>,
    #[serde(default)]
    code: Option<String>,
    #[serde(default)]
    since: Option<String>,
    #[serde(default)]
    until: Option<String>,
    #[serde(default)]
    purpose: String,
}

/// An empty form field is no filter.
fn given(v: Option<String>) -> Option<String> {
    v.filter(|s| !s.trim().is_empty())
}

async fn records(
    State(api): State<StudyApi>,
    Query(q): Query<RecordQuery>,
    headers: HeaderMap,
) -> Response {
    let message = pb::SearchRecordsRequest {
        patient: q.patient,
        types: given(q.rtype).into_iter().collect(),
        code: given(q.code),
        since: given(q.since),
        until: given(q.until),
        purpose: q.purpose,
    };
    reply(Clinical::search_records(&api, request(&headers, message)).await)
}

#[derive(Deserialize)]
struct Pending {
    #[serde(default)]
    pending: bool,
}

async fn emergencies(
    State(api): State<StudyApi>,
    Query(q): Query<Pending>,
    headers: HeaderMap,
) -> Response {
    let message = pb::EmergencyQueueRequest {
        pending_only: q.pending,
    };
    reply(Clinical::emergency_queue(&api, request(&headers, message)).await)
}

#[derive(Deserialize)]
struct TriggerForm {
    patient: String,
    reason: String,
}

async fn trigger(
    State(api): State<StudyApi>,
    headers: HeaderMap,
    bytes: axum::body::Bytes,
) -> Response {
    let f: TriggerForm = match body(&bytes) {
        Ok(f) => f,
        Err(s) => return refusal(s),
    };
    let message = pb::TriggerEmergencyRequest {
        patient: f.patient,
        reason: f.reason,
    };
    reply(Clinical::trigger_emergency(&api, request(&headers, message)).await)
}

#[derive(Deserialize)]
struct ReviewForm {
    justified: bool,
    finding: String,
}

async fn review(
    State(api): State<StudyApi>,
    Path(id): Path<u64>,
    headers: HeaderMap,
    bytes: axum::body::Bytes,
) -> Response {
    let f: ReviewForm = match body(&bytes) {
        Ok(f) => f,
        Err(s) => return refusal(s),
    };
    let message = pb::ReviewEmergencyRequest {
        id,
        justified: f.justified,
        finding: f.finding,
    };
    reply(Clinical::review_emergency(&api, request(&headers, message)).await)
}

async fn providers(State(api): State<StudyApi>, headers: HeaderMap) -> Response {
    reply(Appointments::providers(&api, request(&headers, pb::ProvidersRequest {})).await)
}

#[derive(Deserialize)]
struct SlotsQuery {
    provider: String,
    #[serde(default)]
    from: u64,
    #[serde(default)]
    to: u64,
}

async fn slots(
    State(api): State<StudyApi>,
    Query(q): Query<SlotsQuery>,
    headers: HeaderMap,
) -> Response {
    let message = pb::SlotsRequest {
        provider: q.provider,
        from: q.from,
        to: q.to,
    };
    reply(Appointments::slots(&api, request(&headers, message)).await)
}

#[derive(Deserialize)]
struct QuoteQuery {
    provider: String,
    visit_type: String,
    start: u64,
}

async fn quote(
    State(api): State<StudyApi>,
    Query(q): Query<QuoteQuery>,
    headers: HeaderMap,
) -> Response {
    let message = pb::QuoteRequest {
        provider: q.provider,
        visit_type: q.visit_type,
        start: q.start,
    };
    reply(Appointments::quote(&api, request(&headers, message)).await)
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct AvailabilityForm {
    hours: String,
    slot: String,
    utc_offset: String,
    fees: Vec<String>,
    deposit: String,
    refunds: String,
    confirm_within: String,
    no_show_grace: String,
    no_show_threshold: u32,
    threshold_deposit: String,
    close: Vec<String>,
    reopen: Vec<String>,
}

async fn publish(
    State(api): State<StudyApi>,
    headers: HeaderMap,
    bytes: axum::body::Bytes,
) -> Response {
    let f: AvailabilityForm = match body(&bytes) {
        Ok(f) => f,
        Err(s) => return refusal(s),
    };
    let message = pb::PublishAvailabilityRequest {
        hours: f.hours,
        slot: f.slot,
        utc_offset: f.utc_offset,
        fees: f.fees,
        deposit: f.deposit,
        refunds: f.refunds,
        confirm_within: f.confirm_within,
        no_show_grace: f.no_show_grace,
        no_show_threshold: f.no_show_threshold,
        threshold_deposit: f.threshold_deposit,
        close: f.close,
        reopen: f.reopen,
    };
    reply(Appointments::publish(&api, request(&headers, message)).await)
}

async fn appointments(State(api): State<StudyApi>, headers: HeaderMap) -> Response {
    let message = pb::ListAppointmentsRequest {
        statuses: Vec::new(),
        from: 0,
        to: 0,
        everyone: false,
    };
    reply(Appointments::list(&api, request(&headers, message)).await)
}

#[derive(Deserialize)]
struct BookForm {
    provider: String,
    start: u64,
    #[serde(default)]
    visit_type: String,
    #[serde(default)]
    reason: String,
    #[serde(default)]
    pay: String,
}

async fn book(
    State(api): State<StudyApi>,
    headers: HeaderMap,
    bytes: axum::body::Bytes,
) -> Response {
    let f: BookForm = match body(&bytes) {
        Ok(f) => f,
        Err(s) => return refusal(s),
    };
    let message = pb::BookAppointmentRequest {
        provider: f.provider,
        start: f.start,
        visit_type: f.visit_type,
        reason: f.reason,
        pay: f.pay,
    };
    reply(Appointments::book(&api, request(&headers, message)).await)
}

async fn act(
    State(api): State<StudyApi>,
    Path((id, step)): Path<(u64, String)>,
    headers: HeaderMap,
) -> Response {
    let message = pb::AppointmentStep { id, step };
    reply(Appointments::act(&api, request(&headers, message)).await)
}

#[derive(Deserialize)]
struct PayForm {
    amount: String,
}

async fn pay(
    State(api): State<StudyApi>,
    Path(id): Path<u64>,
    headers: HeaderMap,
    bytes: axum::body::Bytes,
) -> Response {
    let f: PayForm = match body(&bytes) {
        Ok(f) => f,
        Err(s) => return refusal(s),
    };
    let message = pb::PayRequest {
        id,
        amount: f.amount,
    };
    reply(Appointments::pay(&api, request(&headers, message)).await)
}

async fn reason(State(api): State<StudyApi>, Path(id): Path<u64>, headers: HeaderMap) -> Response {
    reply(Appointments::reason(&api, request(&headers, pb::AppointmentRef { id })).await)
}

async fn coverage(State(api): State<StudyApi>, headers: HeaderMap) -> Response {
    reply(Insurance::show(&api, request(&headers, pb::ShowCoverageRequest {})).await)
}

// ---- recovery: `service Recovery`'s calls ----

#[derive(Deserialize)]
struct GuardiansForm {
    guardians: Vec<String>,
    threshold: u32,
    #[serde(default)]
    backup: String,
}

async fn recovery_set_guardians(
    State(api): State<StudyApi>,
    headers: HeaderMap,
    bytes: axum::body::Bytes,
) -> Response {
    let f: GuardiansForm = match body(&bytes) {
        Ok(f) => f,
        Err(s) => return refusal(s),
    };
    let message = pb::SetGuardiansRequest {
        guardians: f.guardians,
        threshold: f.threshold,
        backup: f.backup,
    };
    reply(Recovery::set_guardians(&api, request(&headers, message)).await)
}

async fn recovery_guardians(State(api): State<StudyApi>, headers: HeaderMap) -> Response {
    let message = pb::GuardiansRequest {
        patient: String::new(),
    };
    reply(Recovery::guardians(&api, request(&headers, message)).await)
}

#[derive(Deserialize)]
struct OpenForm {
    patient: String,
}

async fn recovery_open(
    State(api): State<StudyApi>,
    headers: HeaderMap,
    bytes: axum::body::Bytes,
) -> Response {
    let f: OpenForm = match body(&bytes) {
        Ok(f) => f,
        Err(s) => return refusal(s),
    };
    let message = pb::OpenRecoveryRequest { patient: f.patient };
    reply(Recovery::open_recovery(&api, request(&headers, message)).await)
}

#[derive(Deserialize, Default)]
struct StepForm {
    #[serde(default)]
    evidence: String,
    #[serde(default)]
    justified: bool,
    #[serde(default)]
    finding: String,
}

/// One step of recovery `id`: approve, attest, backup, complete, cancel or
/// review.
async fn recovery_step(
    State(api): State<StudyApi>,
    Path((id, step)): Path<(u64, String)>,
    headers: HeaderMap,
    bytes: axum::body::Bytes,
) -> Response {
    let f: StepForm = if bytes.is_empty() {
        StepForm::default()
    } else {
        match body(&bytes) {
            Ok(f) => f,
            Err(s) => return refusal(s),
        }
    };
    let evidence = pb::RecoveryEvidence {
        id,
        evidence: f.evidence,
    };
    let which = pb::RecoveryId { id };
    reply(match step.as_str() {
        "approve" => Recovery::approve_recovery(&api, request(&headers, evidence)).await,
        "attest" => Recovery::attest_identity(&api, request(&headers, evidence)).await,
        "backup" => Recovery::release_backup(&api, request(&headers, which)).await,
        "complete" => Recovery::complete_recovery(&api, request(&headers, which)).await,
        "cancel" => Recovery::cancel_recovery(&api, request(&headers, which)).await,
        "review" => {
            let message = pb::ReviewRecoveryRequest {
                id,
                justified: f.justified,
                finding: f.finding,
            };
            Recovery::review_recovery(&api, request(&headers, message)).await
        }
        other => Err(tonic::Status::not_found(format!(
            "no recovery step `{other}`: approve, attest, backup, complete, cancel or review"
        ))),
    })
}

async fn recovery_trail(
    State(api): State<StudyApi>,
    Path(id): Path<u64>,
    headers: HeaderMap,
) -> Response {
    reply(Recovery::recovery_trail(&api, request(&headers, pb::RecoveryId { id })).await)
}
