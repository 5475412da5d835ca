//! The WebAuthn relying party of the web page (`webauthn-rs`): passkey
//! registration and sign-in ceremonies, with user verification required
//! (a platform authenticator's fingerprint, face or device PIN: the
//! biometric factor).
//!
//! A ceremony is two calls. The first returns the options the browser
//! hands `navigator.credentials.create/get`, and keeps the ceremony's state
//! (its random challenge) here, in memory, under a fresh random id; the
//! second takes that state out *before* anything is checked, so a ceremony
//! is finished at most once whatever the outcome: an assertion posted a
//! second time finds no ceremony and is refused. An assertion of another
//! ceremony fails webauthn-rs's challenge check, and an authenticator whose
//! signature counter does not move forward is refused as possibly cloned.
//! Ceremonies expire after [`CEREMONY_TTL`]; at most [`MAX_CEREMONIES`] wait
//! at once.
//!
//! The stored credentials (public keys and counters, no secret) live in the
//! engine's database (`cohort_engine::keys::passkeys`); tokens are issued by
//! [`super::auth`] and checked at every call by [`super::gate`].

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use cohort_ledger_bridge::alloy::primitives::Address;
use webauthn_rs::prelude::{
    AuthenticationResult, CreationChallengeResponse, CredentialID, Passkey, PasskeyAuthentication,
    PasskeyRegistration, PublicKeyCredential, RegisterPublicKeyCredential,
    RequestChallengeResponse, Url, Uuid, Webauthn, WebauthnBuilder,
};

use super::auth::random_hex;

/// How long a ceremony may wait for the browser.
pub const CEREMONY_TTL: Duration = Duration::from_secs(300);

/// Ceremonies waiting at once beyond which new ones are refused.
const MAX_CEREMONIES: usize = 10_000;

/// Why a ceremony was refused. The text is what the page shows.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PasskeyError {
    /// Not a ceremony this server started, or one already finished: a
    /// replayed response lands here.
    #[error(
        "this passkey ceremony is unknown or was already used (a response is accepted once): start again"
    )]
    UnknownCeremony,
    /// The ceremony waited too long.
    #[error("this passkey ceremony expired: start again")]
    Expired,
    /// The ceremony was started for another kind (a sign-in answered as a
    /// registration, or the reverse).
    #[error("this is not the ceremony that was started: start again")]
    WrongKind,
    /// The account has no passkey (or no such account).
    #[error(
        "`{0}` has no passkey on this server: register one with the enrolment code the operator gives you (`cohort account passkey invite {0}`)"
    )]
    NoPasskey(String),
    /// The response names a credential that is not one of the account's.
    #[error("this passkey is not registered for this account")]
    UnknownCredential,
    /// The authenticator did not verify the user (fingerprint, face, PIN).
    #[error("the authenticator did not verify you (fingerprint, face or PIN): try again")]
    NotVerified,
    /// webauthn-rs refused the response: its words.
    #[error("the passkey's response was refused: {0}")]
    Refused(String),
    /// Too many ceremonies waiting.
    #[error("too many passkey ceremonies in progress; try again shortly")]
    Busy,
}

/// A refused ceremony: why, and whose it was when the server knows (an
/// unknown or replayed ceremony names no one).
#[derive(Debug, PartialEq, Eq)]
pub struct Refusal {
    /// The account the ceremony was started for, if it was found.
    pub account: Option<Address>,
    /// Why.
    pub error: PasskeyError,
}

impl Refusal {
    fn anonymous(error: PasskeyError) -> Refusal {
        Refusal {
            account: None,
            error,
        }
    }
}

/// What a registration ceremony is for.
pub struct Registering {
    /// The account the passkey will sign in.
    pub account: String,
    /// Its address.
    pub address: Address,
    /// The enrolment code that authorised it (used up when the passkey is
    /// stored), or `None` when a signed-in session of the account did.
    pub code: Option<String>,
    /// The label the person gave it.
    pub label: String,
}

/// Who a sign-in ceremony is for.
pub struct SigningIn {
    /// The account.
    pub account: String,
    /// Its address.
    pub address: Address,
}

enum State {
    Registration(Registering, PasskeyRegistration),
    SignIn(SigningIn, PasskeyAuthentication),
}

struct Pending {
    state: State,
    started: Instant,
}

/// The page's relying party and its ceremonies in flight.
pub struct Passkeys {
    webauthn: Webauthn,
    pending: Mutex<HashMap<String, Pending>>,
    ttl: Duration,
}

/// A verified sign-in: who, and the credential as it must now be stored
/// (its counter moved forward).
pub struct SignedIn {
    /// Who signed in.
    pub who: SigningIn,
    /// The credential id (base64url).
    pub credential_id: String,
    /// The credential as it was checked (JSON, as stored).
    pub checked: String,
    /// The credential with its new counter (JSON, to store).
    pub updated: String,
}

/// A credential id as the database keys it: base64url, no padding.
pub fn credential_key(id: &CredentialID) -> String {
    data_encoding::BASE64URL_NOPAD.encode(id)
}

impl Passkeys {
    /// The relying party `rp_id` for pages at `origin`.
    pub fn new(rp_id: &str, origin: &str) -> cohort_engine::Result<Passkeys> {
        Passkeys::with_ttl(rp_id, origin, CEREMONY_TTL)
    }

    fn with_ttl(rp_id: &str, origin: &str, ttl: Duration) -> cohort_engine::Result<Passkeys> {
        let invalid = |e: String| {
            cohort_engine::Error::Invalid(format!(
                "[auth] passkey_rp_id `{rp_id}` / passkey_origin `{origin}`: {e} (the origin's host must be the id or under it, and the id a domain name, not an IP address)"
            ))
        };
        let url = Url::parse(origin).map_err(|e| invalid(e.to_string()))?;
        let webauthn = WebauthnBuilder::new(rp_id, &url)
            .and_then(|b| b.rp_name("cohort").timeout(ttl).build())
            .map_err(|e| invalid(e.to_string()))?;
        Ok(Passkeys {
            webauthn,
            pending: Mutex::new(HashMap::new()),
            ttl,
        })
    }

    fn keep(&self, state: State) -> Result<String, PasskeyError> {
        let mut pending = self.pending.lock().expect("ceremonies lock");
        pending.retain(|_, p| p.started.elapsed() < self.ttl);
        if pending.len() >= MAX_CEREMONIES {
            return Err(PasskeyError::Busy);
        }
        let id = random_hex(16);
        pending.insert(
            id.clone(),
            Pending {
                state,
                started: Instant::now(),
            },
        );
        Ok(id)
    }

    /// Takes ceremony `id` out (whatever follows, it cannot be finished
    /// again).
    fn take(&self, id: &str) -> Result<State, PasskeyError> {
        let p = self
            .pending
            .lock()
            .expect("ceremonies lock")
            .remove(id.trim())
            .ok_or(PasskeyError::UnknownCeremony)?;
        if p.started.elapsed() >= self.ttl {
            return Err(PasskeyError::Expired);
        }
        Ok(p.state)
    }

    /// Starts registering a passkey for `r.account`, whose passkeys are
    /// `existing` (JSON, as stored: the authenticator is asked not to make
    /// a second one). The ceremony id and the browser's options.
    pub fn start_registration(
        &self,
        r: Registering,
        existing: &[String],
    ) -> Result<(String, CreationChallengeResponse), PasskeyError> {
        let exclude: Vec<CredentialID> = existing
            .iter()
            .filter_map(|json| serde_json::from_str::<Passkey>(json).ok())
            .map(|p| p.cred_id().clone())
            .collect();
        // The WebAuthn user handle: the account's address, not its name.
        let mut handle = [0u8; 16];
        handle.copy_from_slice(&r.address.as_slice()[..16]);
        let (options, state) = self
            .webauthn
            .start_passkey_registration(
                Uuid::from_bytes(handle),
                &r.account,
                &r.account,
                Some(exclude).filter(|e| !e.is_empty()),
            )
            .map_err(|e| PasskeyError::Refused(e.to_string()))?;
        let id = self.keep(State::Registration(r, state))?;
        Ok((id, options))
    }

    /// Finishes registration `ceremony` with the browser's `response`: what
    /// it was for, the new credential's id and the credential to store
    /// (JSON).
    pub fn finish_registration(
        &self,
        ceremony: &str,
        response: &RegisterPublicKeyCredential,
    ) -> Result<(Registering, String, String), Refusal> {
        let State::Registration(r, state) = self.take(ceremony).map_err(Refusal::anonymous)? else {
            return Err(Refusal::anonymous(PasskeyError::WrongKind));
        };
        let passkey = match self.webauthn.finish_passkey_registration(response, &state) {
            Ok(p) => p,
            Err(e) => {
                return Err(Refusal {
                    account: Some(r.address),
                    error: PasskeyError::Refused(e.to_string()),
                });
            }
        };
        let json = serde_json::to_string(&passkey).expect("a passkey serializes");
        Ok((r, credential_key(passkey.cred_id()), json))
    }

    /// Starts signing `who` in with one of `stored` (its passkeys as
    /// stored, JSON). The ceremony id and the browser's options.
    pub fn start_sign_in(
        &self,
        who: SigningIn,
        stored: &[String],
    ) -> Result<(String, RequestChallengeResponse), PasskeyError> {
        let creds: Vec<Passkey> = stored
            .iter()
            .filter_map(|json| serde_json::from_str(json).ok())
            .collect();
        if creds.is_empty() {
            return Err(PasskeyError::NoPasskey(who.account));
        }
        let (options, state) = self
            .webauthn
            .start_passkey_authentication(&creds)
            .map_err(|e| PasskeyError::Refused(e.to_string()))?;
        let id = self.keep(State::SignIn(who, state))?;
        Ok((id, options))
    }

    /// Finishes sign-in `ceremony` with the browser's `response`, checked
    /// against the account's passkeys as stored *now* (`stored`: credential
    /// id and JSON; a passkey removed meanwhile does not sign in).
    pub fn finish_sign_in(
        &self,
        ceremony: &str,
        response: &PublicKeyCredential,
        stored: impl FnOnce(&str) -> Vec<(String, String)>,
    ) -> Result<SignedIn, Refusal> {
        let State::SignIn(who, state) = self.take(ceremony).map_err(Refusal::anonymous)? else {
            return Err(Refusal::anonymous(PasskeyError::WrongKind));
        };
        let address = who.address;
        self.verify_sign_in(who, state, response, stored)
            .map_err(|error| Refusal {
                account: Some(address),
                error,
            })
    }

    fn verify_sign_in(
        &self,
        who: SigningIn,
        state: PasskeyAuthentication,
        response: &PublicKeyCredential,
        stored: impl FnOnce(&str) -> Vec<(String, String)>,
    ) -> Result<SignedIn, PasskeyError> {
        let result: AuthenticationResult = self
            .webauthn
            .finish_passkey_authentication(response, &state)
            .map_err(|e| PasskeyError::Refused(e.to_string()))?;
        if !result.user_verified() {
            return Err(PasskeyError::NotVerified);
        }
        let credential_id = credential_key(result.cred_id());
        let (_, checked) = stored(&who.account)
            .into_iter()
            .find(|(id, _)| *id == credential_id)
            .ok_or(PasskeyError::UnknownCredential)?;
        let mut passkey: Passkey =
            serde_json::from_str(&checked).map_err(|e| PasskeyError::Refused(e.to_string()))?;
        passkey.update_credential(&result);
        let updated = serde_json::to_string(&passkey).expect("a passkey serializes");
        Ok(SignedIn {
            who,
            credential_id,
            checked,
            updated,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rp() -> Passkeys {
        Passkeys::new("localhost", "http://localhost:8080").unwrap()
    }

    fn alice() -> SigningIn {
        SigningIn {
            account: "alice".into(),
            address: Address::repeat_byte(7),
        }
    }

    fn registering(code: Option<&str>) -> Registering {
        Registering {
            account: "alice".into(),
            address: Address::repeat_byte(7),
            code: code.map(str::to_string),
            label: "phone".into(),
        }
    }

    #[test]
    fn the_relying_party_is_a_domain_matching_its_origin() {
        assert!(Passkeys::new("localhost", "https://localhost:50051").is_ok());
        assert!(Passkeys::new("example.org", "https://cohort.example.org").is_ok());
        for (id, origin) in [
            ("example.org", "https://example.com"),
            ("127.0.0.1", "https://127.0.0.1:50051"),
            ("localhost", "not a url"),
        ] {
            let e = Passkeys::new(id, origin).err().expect(origin).to_string();
            assert!(e.contains("passkey_rp_id"), "{e}");
        }
    }

    #[test]
    fn registration_options_require_user_verification_and_exclude_known_keys() {
        let rp = rp();
        let (id, options) = rp.start_registration(registering(Some("C")), &[]).unwrap();
        assert_eq!(id.len(), 32);
        let json = serde_json::to_value(&options).unwrap();
        let pk = &json["publicKey"];
        assert_eq!(pk["rp"]["id"], "localhost");
        assert_eq!(pk["authenticatorSelection"]["userVerification"], "required");
        assert_eq!(pk["user"]["name"], "alice");
        // Two ceremonies never share a challenge.
        let (_, other) = rp.start_registration(registering(None), &[]).unwrap();
        let other = serde_json::to_value(&other).unwrap();
        assert_ne!(pk["challenge"], other["publicKey"]["challenge"]);
    }

    #[test]
    fn a_sign_in_needs_a_passkey_and_asks_for_user_verification() {
        let rp = rp();
        assert_eq!(
            rp.start_sign_in(alice(), &[]).err(),
            Some(PasskeyError::NoPasskey("alice".into()))
        );
        assert_eq!(
            rp.start_sign_in(alice(), &["not a passkey".into()]).err(),
            Some(PasskeyError::NoPasskey("alice".into())),
            "a stored credential that does not parse signs nothing in"
        );
    }

    #[test]
    fn a_ceremony_is_finished_once_by_its_own_kind_and_expires() {
        let rp = rp();
        let response: RegisterPublicKeyCredential = serde_json::from_value(serde_json::json!({
            "id": "AAAA", "rawId": "AAAA", "type": "public-key",
            "response": { "attestationObject": "AAAA", "clientDataJSON": "AAAA" },
        }))
        .unwrap();
        let (id, _) = rp.start_registration(registering(None), &[]).unwrap();
        // A forged response is refused by webauthn-rs, and uses the ceremony up.
        let e = rp.finish_registration(&id, &response).err().unwrap();
        assert!(matches!(e.error, PasskeyError::Refused(_)), "{e:?}");
        assert_eq!(
            e.account,
            Some(Address::repeat_byte(7)),
            "named for the audit log"
        );
        assert_eq!(
            rp.finish_registration(&id, &response)
                .err()
                .map(|e| e.error),
            Some(PasskeyError::UnknownCeremony),
            "a response posted again finds no ceremony"
        );
        assert_eq!(
            rp.finish_registration("feed", &response).err(),
            Some(Refusal::anonymous(PasskeyError::UnknownCeremony))
        );
        let rp_short =
            Passkeys::with_ttl("localhost", "http://localhost:8080", Duration::ZERO).unwrap();
        let (id, _) = rp_short.start_registration(registering(None), &[]).unwrap();
        assert_eq!(
            rp_short
                .finish_registration(&id, &response)
                .err()
                .map(|e| e.error),
            Some(PasskeyError::Expired)
        );
    }
}
