//! Signing in on the page itself: passkeys (WebAuthn, [`crate::passkey`])
//! and the TOTP code, the session's state, and signing out.
//!
//! | route | what |
//! |---|---|
//! | `POST /api/passkeys/register/start` `{account, code?, label?}` | registration options; authorised by the operator's one-time enrolment code, or by the account's own signed-in token (`authorization`) |
//! | `POST /api/passkeys/register/finish` `{ceremony, credential}` | stores the passkey (the code is used up) |
//! | `POST /api/passkeys/sign-in/start` `{account}` | sign-in options for the account's passkeys |
//! | `POST /api/passkeys/sign-in/finish` `{ceremony, credential, totp?}` | `{token, account, factors, expires_in_secs}` |
//! | `GET /api/session` | who the token is, its factors, how long it has, what it lacks |
//! | `POST /api/sign-out` | ends the token |
//!
//! Every refusal is a JSON `{code, error}` saying what to do, and is
//! written to the audit log as `auth.refused` when the account is known
//! (a response to an unknown ceremony naming no registered credential is
//! only logged: it would let anyone fill the audit log).

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use cohort_ledger_bridge::alloy::primitives::Address;
use serde::Deserialize;
use tonic::Status;
use webauthn_rs::prelude::{PublicKeyCredential, RegisterPublicKeyCredential};

use super::refusal;
use crate::auth::Factors;
use crate::gate::Gate;
use crate::passkey::{PasskeyError, Passkeys, Refusal, Registering, SigningIn};
use crate::{account_name, internal};
use cohort_engine::DataDir;
use cohort_engine::keys::{accounts, passkeys};

/// What the sign-in routes share.
#[derive(Clone)]
pub struct SignIn {
    gate: Arc<Gate>,
    dir: DataDir,
    passkeys: Arc<Passkeys>,
}

impl SignIn {
    pub(crate) fn new(gate: Arc<Gate>, dir: DataDir, passkeys: Arc<Passkeys>) -> SignIn {
        SignIn {
            gate,
            dir,
            passkeys,
        }
    }
}

/// The sign-in routes, to merge beside the page's.
pub fn router(state: SignIn) -> axum::Router {
    axum::Router::new()
        .route("/api/passkeys/register/start", post(register_start))
        .route("/api/passkeys/register/finish", post(register_finish))
        .route("/api/passkeys/sign-in/start", post(sign_in_start))
        .route("/api/passkeys/sign-in/finish", post(sign_in_finish))
        .route("/api/session", get(session))
        .route("/api/sign-out", post(sign_out))
        .with_state(state)
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn body<T: serde::de::DeserializeOwned>(bytes: &axum::body::Bytes) -> Result<T, Status> {
    serde_json::from_slice(bytes)
        .map_err(|e| Status::invalid_argument(format!("the request body: {e}")))
}

fn authorization(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
}

/// `name`'s address, if it is an account here.
fn address_of(dir: &DataDir, name: &str) -> Result<Option<Address>, Status> {
    let conn = dir.connect().map_err(internal)?;
    accounts::address_of(&conn, name)
        .map_err(internal)?
        .map(|a| {
            a.parse()
                .map_err(|_| Status::internal(format!("`{name}`'s stored address")))
        })
        .transpose()
}

fn passkey_status(e: &PasskeyError) -> Status {
    match e {
        PasskeyError::Busy => Status::resource_exhausted(e.to_string()),
        PasskeyError::NoPasskey(_) => Status::not_found(e.to_string()),
        _ => Status::unauthenticated(e.to_string()),
    }
}

impl SignIn {
    /// A ceremony's refusal: audited when its account is known (from the
    /// ceremony, or from the credential the response names), logged
    /// otherwise.
    fn refuse(&self, refused: Refusal, credential_id: &str) -> Response {
        let known = refused.account.or_else(|| {
            let conn = self.dir.connect().ok()?;
            let owner = passkeys::owner(&conn, credential_id).ok()??;
            address_of(&self.dir, &owner).ok()?
        });
        match known {
            Some(address) => self
                .gate
                .refused(address, "passkey", &refused.error.to_string()),
            None => tracing::info!(error = %refused.error, "passkey ceremony refused (no account)"),
        }
        refusal(passkey_status(&refused.error))
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RegisterStart {
    #[serde(default)]
    account: String,
    #[serde(default)]
    code: Option<String>,
    #[serde(default)]
    label: String,
}

async fn register_start(
    State(s): State<SignIn>,
    headers: HeaderMap,
    bytes: axum::body::Bytes,
) -> Response {
    let f: RegisterStart = match body(&bytes) {
        Ok(f) => f,
        Err(e) => return refusal(e),
    };
    let (account, address, code) = match (authorization(&headers), f.code) {
        // A signed-in session adds a passkey to its own account only.
        (Some(_), _) => {
            let mut request = tonic::Request::new(());
            if let Some(v) = authorization(&headers).and_then(|v| v.parse().ok()) {
                request.metadata_mut().insert("authorization", v);
            }
            let address = match s.gate.caller(&request).await {
                Ok(a) => a,
                Err(e) => return refusal(e),
            };
            let name = match account_name(&s.dir, address) {
                Ok(n) => n,
                Err(e) => return refusal(e),
            };
            if !f.account.trim().is_empty() && f.account.trim() != name {
                s.gate
                    .refused(address, "passkey", "a passkey for another account");
                return refusal(Status::permission_denied(format!(
                    "signed in as `{name}`, you add passkeys to `{name}` only"
                )));
            }
            (name, address, None)
        }
        (None, Some(code)) => {
            let name = f.account.trim().to_string();
            let address = match address_of(&s.dir, &name) {
                Ok(Some(a)) => a,
                Ok(None) => {
                    return refusal(Status::unauthenticated(
                        passkeys::InviteError::Wrong(name).to_string(),
                    ));
                }
                Err(e) => return refusal(e),
            };
            let checked = s
                .dir
                .connect()
                .and_then(|conn| passkeys::check_invite(&conn, &name, &code, now()));
            match checked {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    s.gate.refused(address, "enrolment code", &e.to_string());
                    return refusal(Status::unauthenticated(e.to_string()));
                }
                Err(e) => return refusal(internal(e)),
            }
            (name, address, Some(code))
        }
        (None, None) => {
            return refusal(Status::unauthenticated(
                "registering a passkey needs the one-time enrolment code the operator gives you \
                 (`cohort account passkey invite NAME`), or a signed-in session",
            ));
        }
    };
    let existing: Vec<String> = match s
        .dir
        .connect()
        .and_then(|conn| passkeys::credentials(&conn, &account))
    {
        Ok(list) => list.into_iter().map(|(_, json)| json).collect(),
        Err(e) => return refusal(internal(e)),
    };
    let label = if f.label.trim().is_empty() {
        "passkey".to_string()
    } else {
        f.label
    };
    let r = Registering {
        account,
        address,
        code,
        label,
    };
    match s.passkeys.start_registration(r, &existing) {
        Ok((ceremony, options)) => {
            Json(serde_json::json!({ "ceremony": ceremony, "options": options })).into_response()
        }
        Err(e) => refusal(passkey_status(&e)),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RegisterFinish {
    ceremony: String,
    credential: RegisterPublicKeyCredential,
}

async fn register_finish(State(s): State<SignIn>, bytes: axum::body::Bytes) -> Response {
    let f: RegisterFinish = match body(&bytes) {
        Ok(f) => f,
        Err(e) => return refusal(e),
    };
    let (r, credential_id, json) = match s.passkeys.finish_registration(&f.ceremony, &f.credential)
    {
        Ok(done) => done,
        Err(refused) => return s.refuse(refused, ""),
    };
    let stored = s.dir.connect().and_then(|conn| {
        if let Some(code) = &r.code
            && let Err(e) = passkeys::redeem_invite(&conn, &r.account, code, now())?
        {
            return Ok(Err(e.to_string()));
        }
        passkeys::register(
            &conn,
            &r.account,
            &r.account,
            &credential_id,
            &json,
            &r.label,
        )
        .map(Ok)
    });
    match stored {
        Ok(Ok(info)) => {
            tracing::info!(account = %r.address, "passkey registered");
            Json(info).into_response()
        }
        Ok(Err(why)) => {
            s.gate.refused(r.address, "enrolment code", &why);
            refusal(Status::unauthenticated(why))
        }
        Err(e @ cohort_engine::Error::Invalid(_)) => {
            s.gate.refused(r.address, "passkey", &e.to_string());
            refusal(Status::failed_precondition(e.to_string()))
        }
        Err(e) => refusal(internal(e)),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SignInStart {
    account: String,
}

async fn sign_in_start(State(s): State<SignIn>, bytes: axum::body::Bytes) -> Response {
    let f: SignInStart = match body(&bytes) {
        Ok(f) => f,
        Err(e) => return refusal(e),
    };
    let name = f.account.trim().to_string();
    // An unknown name and a name without passkeys are answered alike.
    let address = match address_of(&s.dir, &name) {
        Ok(Some(a)) => a,
        Ok(None) => return refusal(passkey_status(&PasskeyError::NoPasskey(name))),
        Err(e) => return refusal(e),
    };
    let stored: Vec<String> = match s
        .dir
        .connect()
        .and_then(|conn| passkeys::credentials(&conn, &name))
    {
        Ok(list) => list.into_iter().map(|(_, json)| json).collect(),
        Err(e) => return refusal(internal(e)),
    };
    let who = SigningIn {
        account: name,
        address,
    };
    match s.passkeys.start_sign_in(who, &stored) {
        Ok((ceremony, options)) => Json(serde_json::json!({
            "ceremony": ceremony,
            "options": options,
            "totp": s.gate.second_factor(),
        }))
        .into_response(),
        Err(e) => refusal(passkey_status(&e)),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SignInFinish {
    ceremony: String,
    credential: PublicKeyCredential,
    #[serde(default)]
    totp: Option<String>,
}

async fn sign_in_finish(State(s): State<SignIn>, bytes: axum::body::Bytes) -> Response {
    let f: SignInFinish = match body(&bytes) {
        Ok(f) => f,
        Err(e) => return refusal(e),
    };
    let dir = s.dir.clone();
    let signed = s
        .passkeys
        .finish_sign_in(&f.ceremony, &f.credential, |name| {
            dir.connect()
                .and_then(|conn| passkeys::credentials(&conn, name))
                .unwrap_or_default()
        });
    let signed = match signed {
        Ok(signed) => signed,
        Err(refused) => return s.refuse(refused, &f.credential.id),
    };
    let address = signed.who.address;
    // The new counter is stored only over the credential that was checked:
    // a concurrent sign-in with the same authenticator, or a removal, wins.
    let stored = s.dir.connect().and_then(|conn| {
        passkeys::used(
            &conn,
            &signed.credential_id,
            &signed.checked,
            &signed.updated,
        )
    });
    match stored {
        Ok(true) => {}
        Ok(false) => {
            let why = "this passkey was removed or used by another sign-in meanwhile: try again";
            s.gate.refused(address, "passkey", why);
            return refusal(Status::unauthenticated(why));
        }
        Err(e) => return refusal(internal(e)),
    }
    // The code is checked after the passkey: someone who knows only an
    // account's name cannot use up its holder's TOTP codes.
    let totp = match s.gate.check_second_factor(address, f.totp.as_deref()).await {
        Ok(t) => t,
        Err(e) => return refusal(e),
    };
    let factors = Factors {
        passkey: Some(signed.credential_id),
        totp,
    };
    let names = factors.names();
    let token = s.gate.auth().issue_token(address, factors);
    let detail = serde_json::json!({ "second_factor": names.contains(&"totp"), "factors": names });
    if let Err(e) = s.gate.audit(address, "auth.sign_in", address, detail) {
        let _ = s.gate.auth().revoke(Some(&format!("Bearer {token}")));
        return refusal(e);
    }
    tracing::info!(account = %address, "signed in with a passkey");
    let expires_in = s
        .gate
        .auth()
        .principal(Some(&format!("Bearer {token}")))
        .map(|p| p.expires_in().as_secs())
        .unwrap_or_default();
    Json(serde_json::json!({
        "token": token,
        "account": signed.who.account,
        "factors": names,
        "expires_in_secs": expires_in,
    }))
    .into_response()
}

/// What a token is, whatever it may do now: the one call (with sign-out)
/// that a token lacking a factor may still make.
async fn session(State(s): State<SignIn>, headers: HeaderMap) -> Response {
    let principal = match s.gate.principal(authorization(&headers)) {
        Ok(p) => p,
        Err(e) => return refusal(e),
    };
    let missing = match s.gate.missing(&principal) {
        Ok(m) => m,
        Err(e) => return refusal(e),
    };
    let account = account_name(&s.dir, principal.address).ok();
    Json(serde_json::json!({
        "account": account,
        "address": principal.address.to_checksum(None),
        "factors": principal.factors.names(),
        "expires_in_secs": principal.expires_in().as_secs(),
        "missing": missing,
    }))
    .into_response()
}

async fn sign_out(State(s): State<SignIn>, headers: HeaderMap) -> Response {
    let address = match s.gate.auth().revoke(authorization(&headers)) {
        Ok(a) => a,
        Err(e) => return refusal(Status::unauthenticated(e.to_string())),
    };
    if let Err(e) = s.gate.audit(
        address,
        "auth.logout",
        address,
        serde_json::json!({ "via": "page" }),
    ) {
        return refusal(e);
    }
    Json(serde_json::json!({ "signed_out": true })).into_response()
}
