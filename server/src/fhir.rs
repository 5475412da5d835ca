//! A FHIR R4 REST API under `/fhir`, served by `cohort serve` on the same
//! port as gRPC: an adapter over the clinical service
//! ([`crate::clinical_api`]), so every read, search and write is decided by
//! the chain (and traced there, and audited) exactly as over gRPC or the
//! CLI; nothing is decrypted here that the service did not return.
//!
//! | request | what it does |
//! | --- | --- |
//! | `GET /fhir/metadata` | the CapabilityStatement (no token needed) |
//! | `GET /fhir/{type}/{id}` | read (`Clinic::read`) |
//! | `GET /fhir/{type}/{id}/_history/{vid}` | read one version |
//! | `GET /fhir/{type}?patient=&code=&date=` | a `searchset` Bundle of one patient's records |
//! | `GET /fhir/Patient/{id}/$everything` | a `searchset` Bundle of all of them |
//! | `POST /fhir/{type}` | create (the server assigns the id) |
//! | `PUT /fhir/{type}/{id}` | update, or create with that id |
//!
//! Callers send `authorization: Bearer <token>` (the token `cohort login`
//! prints, the same as gRPC's). The purpose of use is the `_purpose`
//! parameter or the `X-Purpose-Of-Use` header: `treatment` (the default),
//! `payment` or `operations` (or HL7's `TREAT`, `HPAYMT`, `HOPERAT`). A
//! read allowed by an emergency override carries the `BTG` (break the
//! glass) security label in `meta.security` and the `X-Cohort-Emergency:
//! true` header. Every error is an `OperationOutcome`: 401 without a valid
//! token, 403 naming the missing authorization, 404, 400 for a bad request,
//! 422 for a resource the service will not store.

use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Value, json};
use tonic::Code;

use super::api::{StudyApi, pb};
use super::web::request;
use cohort_engine::records::fhir::SUPPORTED;
use pb::clinical_server::Clinical;

/// FHIR's JSON media type.
pub const FHIR_JSON: &str = "application/fhir+json; charset=utf-8";

/// The FHIR version served.
pub const FHIR_VERSION: &str = "4.0.1";

/// HL7's code system for the emergency (break-the-glass) label.
const ACT_REASON: &str = "http://terminology.hl7.org/CodeSystem/v3-ActReason";

/// The routes under `/fhir`, to merge beside the gRPC services. Whatever
/// else is asked under `/fhir` is a 404 (or 405) OperationOutcome too.
pub fn router(api: StudyApi) -> axum::Router {
    let fhir = axum::Router::new()
        .route("/metadata", get(metadata).fallback(not_allowed))
        .route("/{rtype}", get(search).post(create).fallback(not_allowed))
        .route("/{rtype}/{id}", get(read).put(update).fallback(not_allowed))
        .route(
            "/{rtype}/{id}/{operation}",
            get(operation).fallback(not_allowed),
        )
        .route(
            "/{rtype}/{id}/_history/{vid}",
            get(vread).fallback(not_allowed),
        )
        .fallback(unknown)
        .with_state(api);
    axum::Router::new().nest("/fhir", fhir)
}

/// A FHIR error: its HTTP status, its issue code and what went wrong.
#[derive(Debug)]
struct Outcome {
    http: StatusCode,
    code: &'static str,
    message: String,
}

impl Outcome {
    fn new(http: StatusCode, code: &'static str, message: impl Into<String>) -> Outcome {
        Outcome {
            http,
            code,
            message: message.into(),
        }
    }

    fn invalid(message: impl Into<String>) -> Outcome {
        Outcome::new(StatusCode::BAD_REQUEST, "invalid", message)
    }
}

/// A refusal of the clinical service as FHIR sees it. `writing`: an
/// invalid resource is 422 (it parsed, but the service will not store it).
fn from_status(s: &tonic::Status, writing: bool) -> Outcome {
    let (http, code) = match s.code() {
        Code::Unauthenticated => (StatusCode::UNAUTHORIZED, "login"),
        Code::PermissionDenied => (StatusCode::FORBIDDEN, "forbidden"),
        Code::NotFound => (StatusCode::NOT_FOUND, "not-found"),
        Code::InvalidArgument if writing => (StatusCode::UNPROCESSABLE_ENTITY, "processing"),
        Code::InvalidArgument | Code::OutOfRange => (StatusCode::BAD_REQUEST, "invalid"),
        Code::FailedPrecondition | Code::Aborted => (StatusCode::CONFLICT, "conflict"),
        Code::ResourceExhausted => (StatusCode::TOO_MANY_REQUESTS, "throttled"),
        Code::Unavailable => (StatusCode::SERVICE_UNAVAILABLE, "transient"),
        _ => (StatusCode::INTERNAL_SERVER_ERROR, "exception"),
    };
    Outcome::new(http, code, s.message())
}

impl IntoResponse for Outcome {
    fn into_response(self) -> Response {
        let body = json!({
            "resourceType": "OperationOutcome",
            "issue": [{ "severity": "error", "code": self.code, "diagnostics": self.message }],
        });
        let mut r = fhir_json(self.http, &body);
        if self.http == StatusCode::UNAUTHORIZED {
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"cohort\""),
            );
        }
        r
    }
}

fn not_found(message: impl Into<String>) -> Response {
    Outcome::new(StatusCode::NOT_FOUND, "not-found", message).into_response()
}

fn fhir_json(http: StatusCode, body: &Value) -> Response {
    let mut r = (http, body.to_string()).into_response();
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(FHIR_JSON));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    r
}

async fn not_allowed() -> Response {
    Outcome::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "not-supported",
        "this interaction is not served here: see /fhir/metadata",
    )
    .into_response()
}

async fn unknown() -> Response {
    not_found("no such FHIR interaction: see /fhir/metadata for the types and interactions served")
}

/// 401 unless the request carries a token that may act now: checked
/// first, so that a caller without one learns nothing else (not even
/// that its request was malformed). The service checks again.
async fn authenticated(api: &StudyApi, headers: &HeaderMap) -> Result<(), Outcome> {
    api.gate()
        .caller(&request(headers, ()))
        .await
        .map(|_| ())
        .map_err(|s| from_status(&s, false))
}

/// The resource type named in the path, if this server stores it.
fn resource_type(rtype: &str) -> Result<&'static str, Outcome> {
    SUPPORTED
        .iter()
        .find(|t| **t == rtype)
        .copied()
        .ok_or_else(|| {
            Outcome::new(
                StatusCode::NOT_FOUND,
                "not-supported",
                format!(
                    "`{rtype}` is not a resource type this server serves: {}",
                    SUPPORTED.join(", ")
                ),
            )
        })
}

/// The query string's parameters, decoded, in order.
fn params(raw: Option<&str>) -> Result<Vec<(String, String)>, Outcome> {
    let Some(raw) = raw.filter(|r| !r.is_empty()) else {
        return Ok(Vec::new());
    };
    raw.split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            Ok((decode(k)?, decode(v)?))
        })
        .collect()
}

/// Percent-decoding of one query component (`+` is a space).
fn decode(text: &str) -> Result<String, Outcome> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = bytes
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or_else(|| {
                        Outcome::invalid(format!("`{text}` is badly percent-encoded"))
                    })?;
                out.push(hex);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).map_err(|_| Outcome::invalid(format!("`{text}` is not UTF-8")))
}

/// The purpose of use, from `_purpose` or the `X-Purpose-Of-Use` header
/// (at most one value; they must agree).
fn purpose(params: &[(String, String)], headers: &HeaderMap) -> Result<String, Outcome> {
    let mut named: Vec<String> = params
        .iter()
        .filter(|(k, _)| k == "_purpose")
        .map(|(_, v)| v.clone())
        .collect();
    if let Some(h) = headers.get("x-purpose-of-use") {
        let h = h
            .to_str()
            .map_err(|_| Outcome::invalid("the X-Purpose-Of-Use header is not text"))?;
        named.push(h.to_string());
    }
    let names: Vec<&'static str> = named
        .iter()
        .map(|p| match p.trim() {
            "TREAT" => Ok("treatment"),
            "HPAYMT" => Ok("payment"),
            "HOPERAT" => Ok("operations"),
            other => other
                .parse::<cohort_engine::access::Purpose>()
                .map(|p| p.name())
                .map_err(|e| Outcome::invalid(e.to_string())),
        })
        .collect::<Result<_, _>>()?;
    match names.as_slice() {
        [] => Ok("treatment".into()),
        [first, rest @ ..] if rest.iter().all(|p| p == first) => Ok((*first).into()),
        _ => Err(Outcome::invalid(
            "one purpose of use per request: `_purpose` and X-Purpose-Of-Use disagree",
        )),
    }
}

/// Refuses a `_format` other than JSON.
fn json_format(params: &[(String, String)]) -> Result<(), Outcome> {
    for (k, v) in params {
        if k == "_format"
            && !matches!(
                v.as_str(),
                "json" | "application/json" | "application/fhir+json"
            )
        {
            return Err(Outcome::new(
                StatusCode::NOT_ACCEPTABLE,
                "not-supported",
                format!("`_format={v}`: this server speaks FHIR JSON only"),
            ));
        }
    }
    Ok(())
}

/// `scheme://host/fhir`, for the fullUrls and Locations.
fn base(api: &StudyApi, headers: &HeaderMap) -> String {
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .filter(|h| {
            h.chars()
                .all(|c| c.is_ascii_alphanumeric() || ".-:[]".contains(c))
        })
        .unwrap_or("localhost");
    format!("{}://{host}/fhir", api.scheme())
}

/// The stored resource as served: `meta.versionId` and `lastUpdated` from
/// the vault, and the break-the-glass label when an emergency allowed it.
fn served(record: &pb::ClinicalRecord) -> Result<Value, Outcome> {
    let mut resource: Value = serde_json::from_str(&record.resource_json).map_err(|e| {
        Outcome::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "exception",
            format!("a stored resource is not JSON: {e}"),
        )
    })?;
    if let (Some(v), Some(obj)) = (&record.version, resource.as_object_mut()) {
        let meta = obj.entry("meta").or_insert_with(|| json!({}));
        if let Some(meta) = meta.as_object_mut() {
            meta.insert("versionId".into(), json!(v.version.to_string()));
            meta.insert("lastUpdated".into(), json!(v.created_at));
            if record.emergency {
                let labels = meta.entry("security").or_insert_with(|| json!([]));
                if let Some(labels) = labels.as_array_mut() {
                    labels.push(json!({
                        "system": ACT_REASON, "code": "BTG", "display": "break the glass",
                    }));
                }
            }
        }
    }
    Ok(resource)
}

fn emergency_header(r: &mut Response, emergency: bool) {
    if emergency {
        r.headers_mut()
            .insert("x-cohort-emergency", HeaderValue::from_static("true"));
    }
}

fn etag(r: &mut Response, version: i64) {
    if let Ok(v) = HeaderValue::from_str(&format!("W/\"{version}\"")) {
        r.headers_mut().insert(header::ETAG, v);
    }
}

async fn metadata(State(api): State<StudyApi>, headers: HeaderMap) -> Response {
    let params_of = |rtype: &str| -> Value {
        if rtype == "Patient" {
            json!([
                { "name": "_id", "type": "token", "documentation": "The patient's id (one patient a search)." },
            ])
        } else {
            json!([
                { "name": "patient", "type": "reference", "documentation": "Required: the patient (`Patient/{id}` or the id); a search reads one patient's records." },
                { "name": "code", "type": "token", "documentation": "`system|code` or `code`: a coding of the resource's code (medicationCodeableConcept for MedicationRequest, type for Encounter)." },
                { "name": "date", "type": "date", "documentation": "YYYY-MM-DD with eq (or none), ge, gt, le or lt; repeat for a range. The resource's effective, onset, authored, recorded or period start date." },
            ])
        }
    };
    let resources: Vec<Value> = SUPPORTED
        .iter()
        .map(|t| {
            let mut r = json!({
                "type": t,
                "profile": format!("http://hl7.org/fhir/StructureDefinition/{t}"),
                "interaction": [
                    { "code": "read" }, { "code": "vread" }, { "code": "search-type" },
                    { "code": "create" }, { "code": "update" },
                ],
                "versioning": "versioned",
                "readHistory": true,
                "updateCreate": true,
                "searchParam": params_of(t),
            });
            if *t == "Patient" {
                r["operation"] = json!([{
                    "name": "everything",
                    "definition": "http://hl7.org/fhir/OperationDefinition/Patient-everything",
                }]);
            }
            r
        })
        .collect();
    let body = json!({
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": chrono::Utc::now().format("%Y-%m-%d").to_string(),
        "publisher": "cohort",
        "kind": "instance",
        "software": { "name": "cohort", "version": env!("CARGO_PKG_VERSION") },
        "implementation": {
            "description": "cohort: clinical records under on-chain access control",
            "url": base(&api, &headers),
        },
        "fhirVersion": FHIR_VERSION,
        "format": ["application/fhir+json", "json"],
        "rest": [{
            "mode": "server",
            "documentation": "Every read, search and write is decided by the CohortAccess contract (a grant covering the level, the purpose of use and the record types, a delegation, or an open emergency override) and traced on chain before anything is decrypted. Purpose of use: the `_purpose` parameter or the X-Purpose-Of-Use header (treatment, payment, operations; default treatment).",
            "security": {
                "cors": false,
                "description": "`Authorization: Bearer <token>`, the token `cohort login --server <this server>` prints (an EIP-4361 sign-in with the account's key); the same token as the gRPC API's.",
            },
            "resource": resources,
        }],
    });
    fhir_json(StatusCode::OK, &body)
}

async fn read(
    State(api): State<StudyApi>,
    Path((rtype, id)): Path<(String, String)>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    read_version(&api, &rtype, &id, None, query.as_deref(), &headers)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

async fn vread(
    State(api): State<StudyApi>,
    Path((rtype, id, vid)): Path<(String, String, String)>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    let Ok(version) = vid.parse::<i64>() else {
        return Outcome::invalid(format!("`{vid}` is not a version number")).into_response();
    };
    read_version(&api, &rtype, &id, Some(version), query.as_deref(), &headers)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

async fn read_version(
    api: &StudyApi,
    rtype: &str,
    id: &str,
    version: Option<i64>,
    query: Option<&str>,
    headers: &HeaderMap,
) -> Result<Response, Outcome> {
    authenticated(api, headers).await?;
    let rtype = resource_type(rtype)?;
    let params = params(query)?;
    json_format(&params)?;
    if let Some((k, _)) = params
        .iter()
        .find(|(k, _)| !matches!(k.as_str(), "_purpose" | "_format"))
    {
        return Err(Outcome::invalid(format!(
            "`{k}` is not a parameter of a read: only _purpose and _format"
        )));
    }
    let message = pb::ReadRecordRequest {
        record_id: format!("{rtype}/{id}"),
        version,
        purpose: purpose(&params, headers)?,
    };
    let record = Clinical::read_record(api, request(headers, message))
        .await
        .map_err(|s| from_status(&s, false))?
        .into_inner();
    let body = served(&record)?;
    let mut r = fhir_json(StatusCode::OK, &body);
    emergency_header(&mut r, record.emergency);
    if let Some(v) = &record.version {
        etag(&mut r, v.version);
    }
    Ok(r)
}

/// A date parameter as the day range it allows (`since`, `until`).
fn date_bound(value: &str) -> Result<(Option<String>, Option<String>), Outcome> {
    let (prefix, day) = match value.get(..2) {
        Some(p @ ("eq" | "ge" | "gt" | "le" | "lt")) => (p, &value[2..]),
        _ => ("eq", value),
    };
    let date = chrono::NaiveDate::parse_from_str(day, "%Y-%m-%d").map_err(|_| {
        Outcome::invalid(format!(
            "`date={value}`: give a day as YYYY-MM-DD, with eq, ge, gt, le or lt before it"
        ))
    })?;
    let text = |d: chrono::NaiveDate| Some(d.format("%Y-%m-%d").to_string());
    Ok(match prefix {
        "ge" => (text(date), None),
        "gt" => (date.succ_opt().and_then(text), None),
        "le" => (None, text(date)),
        "lt" => (None, date.pred_opt().and_then(text)),
        _ => (text(date), text(date)),
    })
}

/// What a search asks, from its parameters.
fn search_of(
    rtype: &'static str,
    params: &[(String, String)],
    headers: &HeaderMap,
) -> Result<pb::SearchRecordsRequest, Outcome> {
    let mut patient: Option<String> = None;
    let mut code = None;
    let (mut since, mut until): (Option<String>, Option<String>) = (None, None);
    let patient_params: &[&str] = if rtype == "Patient" {
        &["_id"]
    } else {
        &["patient", "subject"]
    };
    for (k, v) in params {
        match k.as_str() {
            k if patient_params.contains(&k) => {
                let id = v.strip_prefix("Patient/").unwrap_or(v);
                if id.is_empty() || id.contains(',') {
                    return Err(Outcome::invalid(format!(
                        "`{k}={v}`: name one patient (`Patient/{{id}}` or the id)"
                    )));
                }
                if patient.as_deref().is_some_and(|p| p != id) {
                    return Err(Outcome::invalid("a search reads one patient's records"));
                }
                patient = Some(id.to_string());
            }
            "code" if rtype != "Patient" => {
                if v.is_empty() || v.contains(',') {
                    return Err(Outcome::invalid(format!(
                        "`code={v}`: one code, `system|code` or `code`"
                    )));
                }
                code = Some(v.clone());
            }
            "date" if rtype != "Patient" => {
                let (s, u) = date_bound(v)?;
                // Several bounds of one kind: the narrowest.
                if let Some(s) = s {
                    since = Some(since.map_or(s.clone(), |x: String| x.max(s)));
                }
                if let Some(u) = u {
                    until = Some(until.map_or(u.clone(), |x: String| x.min(u)));
                }
            }
            "_purpose" | "_format" => {}
            other => {
                return Err(Outcome::invalid(format!(
                    "`{other}` is not a search parameter of {rtype} here: {}",
                    if rtype == "Patient" {
                        "_id"
                    } else {
                        "patient, code, date"
                    }
                )));
            }
        }
    }
    let patient = patient.ok_or_else(|| {
        Outcome::invalid(format!(
            "a search reads one patient's records: give `{}`",
            patient_params[0]
        ))
    })?;
    Ok(pb::SearchRecordsRequest {
        patient,
        types: vec![rtype.to_string()],
        code,
        since,
        until,
        purpose: purpose(params, headers)?,
    })
}

/// The records as a `searchset` Bundle.
fn bundle(records: &[pb::ClinicalRecord], base: &str, self_url: String) -> Result<Value, Outcome> {
    let entries = records
        .iter()
        .map(|r| {
            let resource = served(r)?;
            let full = r
                .version
                .as_ref()
                .map(|v| format!("{base}/{}", v.record_id))
                .unwrap_or_default();
            Ok(json!({ "fullUrl": full, "resource": resource, "search": { "mode": "match" } }))
        })
        .collect::<Result<Vec<_>, Outcome>>()?;
    Ok(json!({
        "resourceType": "Bundle",
        "type": "searchset",
        "total": entries.len(),
        "link": [{ "relation": "self", "url": self_url }],
        "entry": entries,
    }))
}

async fn run_search(
    api: &StudyApi,
    message: pb::SearchRecordsRequest,
    headers: &HeaderMap,
    self_url: String,
) -> Result<Response, Outcome> {
    let records = Clinical::search_records(api, request(headers, message))
        .await
        .map_err(|s| from_status(&s, false))?
        .into_inner()
        .records;
    let body = bundle(&records, &base(api, headers), self_url)?;
    let mut r = fhir_json(StatusCode::OK, &body);
    emergency_header(&mut r, records.iter().any(|r| r.emergency));
    Ok(r)
}

async fn search(
    State(api): State<StudyApi>,
    Path(rtype): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    let run = async {
        authenticated(&api, &headers).await?;
        let rtype = resource_type(&rtype)?;
        let params = params(query.as_deref())?;
        json_format(&params)?;
        let message = search_of(rtype, &params, &headers)?;
        let self_url = format!(
            "{}/{rtype}{}",
            base(&api, &headers),
            query
                .as_deref()
                .map(|q| format!("?{q}"))
                .unwrap_or_default()
        );
        run_search(&api, message, &headers, self_url).await
    };
    run.await.unwrap_or_else(IntoResponse::into_response)
}

async fn operation(
    State(api): State<StudyApi>,
    Path((rtype, id, operation)): Path<(String, String, String)>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    let run = async {
        authenticated(&api, &headers).await?;
        if rtype != "Patient" || operation != "$everything" {
            return Err(Outcome::new(
                StatusCode::NOT_FOUND,
                "not-supported",
                format!(
                    "`{operation}` on {rtype}: the one operation here is Patient/{{id}}/$everything"
                ),
            ));
        }
        let params = params(query.as_deref())?;
        json_format(&params)?;
        if let Some((k, _)) = params
            .iter()
            .find(|(k, _)| !matches!(k.as_str(), "_purpose" | "_format"))
        {
            return Err(Outcome::invalid(format!(
                "`{k}` is not a parameter of $everything here: only _purpose"
            )));
        }
        let message = pb::SearchRecordsRequest {
            patient: id.clone(),
            types: Vec::new(),
            code: None,
            since: None,
            until: None,
            purpose: purpose(&params, &headers)?,
        };
        let self_url = format!("{}/Patient/{id}/$everything", base(&api, &headers));
        run_search(&api, message, &headers, self_url).await
    };
    run.await.unwrap_or_else(IntoResponse::into_response)
}

/// The request's body as a resource of `rtype`: 415 unless JSON, 400
/// unless it parses as a resource of that type.
fn resource_body(rtype: &str, headers: &HeaderMap, body: &[u8]) -> Result<Value, Outcome> {
    let kind = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let media = kind.split(';').next().unwrap_or("").trim();
    if !matches!(media, "application/fhir+json" | "application/json") {
        return Err(Outcome::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "not-supported",
            format!("send the resource as application/fhir+json (not `{kind}`)"),
        ));
    }
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| Outcome::invalid(format!("the body is not JSON: {e}")))?;
    let given = value.get("resourceType").and_then(Value::as_str);
    if given != Some(rtype) {
        return Err(Outcome::invalid(format!(
            "the body's resourceType is {}, and the URL names {rtype}",
            given.map_or("missing".into(), |g| format!("`{g}`"))
        )));
    }
    let mut value = value;
    // The version and its time are the server's to say (FHIR: ignored).
    if let Some(meta) = value.get_mut("meta").and_then(Value::as_object_mut) {
        meta.remove("versionId");
        meta.remove("lastUpdated");
        if meta.is_empty() {
            value.as_object_mut().map(|o| o.remove("meta"));
        }
    }
    Ok(value)
}

/// Stores `resource` through the service; the stored version as served.
async fn store(
    api: &StudyApi,
    resource: Value,
    params: &[(String, String)],
    headers: &HeaderMap,
) -> Result<Response, Outcome> {
    if let Some((k, _)) = params
        .iter()
        .find(|(k, _)| !matches!(k.as_str(), "_purpose" | "_format"))
    {
        return Err(Outcome::invalid(format!(
            "`{k}` is not a parameter of a create or update: only _purpose"
        )));
    }
    let message = pb::UpdateRecordRequest {
        resource_json: resource.to_string(),
        purpose: purpose(params, headers)?,
    };
    let u = Clinical::update_record(api, request(headers, message))
        .await
        .map_err(|s| from_status(&s, true))?
        .into_inner();
    let record = pb::ClinicalRecord {
        version: u.version.clone(),
        resource_json: resource.to_string(),
        emergency: false,
    };
    let body = served(&record)?;
    let mut r = fhir_json(
        if u.created {
            StatusCode::CREATED
        } else {
            StatusCode::OK
        },
        &body,
    );
    if let Some(v) = &u.version {
        etag(&mut r, v.version);
        let location = format!(
            "{}/{}/_history/{}",
            base(api, headers),
            v.record_id,
            v.version
        );
        if let Ok(l) = HeaderValue::from_str(&location) {
            r.headers_mut().insert(header::LOCATION, l);
        }
    }
    Ok(r)
}

async fn create(
    State(api): State<StudyApi>,
    Path(rtype): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let run = async {
        authenticated(&api, &headers).await?;
        let rtype = resource_type(&rtype)?;
        let params = params(query.as_deref())?;
        json_format(&params)?;
        let mut resource = resource_body(rtype, &headers, &body)?;
        // A create's id is the server's (FHIR: an id sent is ignored).
        resource["id"] = json!(new_id());
        store(&api, resource, &params, &headers).await
    };
    run.await.unwrap_or_else(IntoResponse::into_response)
}

async fn update(
    State(api): State<StudyApi>,
    Path((rtype, id)): Path<(String, String)>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let run = async {
        authenticated(&api, &headers).await?;
        let rtype = resource_type(&rtype)?;
        let params = params(query.as_deref())?;
        json_format(&params)?;
        let resource = resource_body(rtype, &headers, &body)?;
        match resource.get("id").and_then(Value::as_str) {
            Some(given) if given == id => {}
            given => {
                return Err(Outcome::invalid(format!(
                    "the body's id is {}, and the URL names {rtype}/{id}: they must be the same",
                    given.map_or("missing".into(), |g| format!("`{g}`"))
                )));
            }
        }
        store(&api, resource, &params, &headers).await
    };
    run.await.unwrap_or_else(IntoResponse::into_response)
}

/// A fresh resource id: a random (version 4) UUID.
fn new_id() -> String {
    let mut b = [0u8; 16];
    getrandom::fill(&mut b).expect("the operating system's entropy source failed");
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = data_encoding::HEXLOWER.encode(&b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_become_day_ranges() {
        let d = |s: &str| date_bound(s).map_err(|o| o.message).unwrap();
        assert_eq!(d("ge2020-01-01"), (Some("2020-01-01".into()), None));
        assert_eq!(d("gt2020-12-31"), (Some("2021-01-01".into()), None));
        assert_eq!(d("le2021-01-01"), (None, Some("2021-01-01".into())));
        assert_eq!(d("lt2021-03-01"), (None, Some("2021-02-28".into())));
        assert_eq!(
            d("2020-05-05"),
            (Some("2020-05-05".into()), Some("2020-05-05".into()))
        );
        assert!(date_bound("ge2020").is_err());
        assert!(date_bound("sa2020-01-01").is_err());
    }

    #[test]
    fn purposes_by_name_or_hl7_code_and_one_per_request() {
        let none = HeaderMap::new();
        let p = |v: &str| vec![("_purpose".to_string(), v.to_string())];
        assert_eq!(purpose(&[], &none).unwrap(), "treatment");
        assert_eq!(purpose(&p("HPAYMT"), &none).unwrap(), "payment");
        assert_eq!(purpose(&p("operations"), &none).unwrap(), "operations");
        assert!(purpose(&p("research"), &none).is_err());
        let mut h = HeaderMap::new();
        h.insert("x-purpose-of-use", HeaderValue::from_static("payment"));
        assert!(purpose(&p("treatment"), &h).is_err());
        assert_eq!(purpose(&[], &h).unwrap(), "payment");
    }

    #[test]
    fn searches_name_one_patient_and_known_parameters() {
        let none = HeaderMap::new();
        let q = |s: &str| params(Some(s)).map_err(|o| o.message).unwrap();
        let s = search_of(
            "Observation",
            &q("patient=Patient%2Fp1&code=http%3A%2F%2Floinc.org%7C1234-5&date=ge2020-01-01&date=le2021-01-01"),
            &none,
        )
        .map_err(|o| o.message)
        .unwrap();
        assert_eq!(s.patient, "p1");
        assert_eq!(s.code.as_deref(), Some("http://loinc.org|1234-5"));
        assert_eq!(s.since.as_deref(), Some("2020-01-01"));
        assert_eq!(s.until.as_deref(), Some("2021-01-01"));
        assert_eq!(s.types, ["Observation"]);
        assert!(search_of("Observation", &q("code=x"), &none).is_err());
        assert!(search_of("Observation", &q("patient=a&_count=5"), &none).is_err());
        assert!(search_of("Observation", &q("patient=a&patient=b"), &none).is_err());
        assert_eq!(
            search_of("Patient", &q("_id=p2"), &none)
                .map_err(|o| o.message)
                .unwrap()
                .patient,
            "p2"
        );
    }

    #[test]
    fn ids_are_version_4_uuids() {
        let id = new_id();
        assert_eq!(id.len(), 36);
        assert_eq!(&id[14..15], "4");
        assert_ne!(id, new_id());
    }
}
