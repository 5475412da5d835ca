//! Sign-in with an Ethereum key (EIP-4361) and the short-lived bearer tokens
//! it yields.
//!
//! The server writes the whole message a client signs, so it never parses a
//! client's text: a sign-in is accepted only for the exact bytes it issued,
//! once, before the challenge expires, signed by the address it names.
//! Tokens live in memory; a restart signs everyone out. A token ends when
//! it expires, when its holder signs out (`cohort logout`, the page's
//! "Sign out"), or when an administrator ends every token of an account;
//! what a token may do is decided again at every call ([`super::gate`]).
//!
//! A token records how its holder signed in ([`Factors`]): with the
//! account's Ethereum key (`cohort login`) or a passkey (the web page,
//! [`super::passkey`]), and which TOTP enrollment it was checked against.
//! Its scope follows from them at each call: a token whose factors cover
//! what the server demands now acts as its account; one that does not (its
//! TOTP secret enrolled again or removed since, its passkey removed) may
//! only say who it is and what is missing (`/api/session`) and sign out.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use cohort_ledger_bridge::alloy::primitives::Address;
use data_encoding::HEXLOWER;

/// How long a challenge may wait for its signature.
pub const CHALLENGE_TTL: Duration = Duration::from_secs(300);

/// Outstanding challenges beyond which new ones are refused (a flood of
/// unanswered challenges cannot grow memory without bound).
const MAX_CHALLENGES: usize = 10_000;

/// Why a sign-in or a token was refused. The text is what the client sees.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    /// The message is not one this server issued, or was already used.
    #[error(
        "this sign-in message was not issued by this server or was already used; ask for a new challenge"
    )]
    UnknownChallenge,
    /// The challenge waited too long.
    #[error("this sign-in challenge expired; ask for a new one")]
    ExpiredChallenge,
    /// The signature is not the named account's.
    #[error("the signature is not {0}'s")]
    WrongSigner(String),
    /// The signature is not a signature.
    #[error("{0}")]
    BadSignature(String),
    /// Too many unanswered challenges.
    #[error("too many sign-ins in progress; try again shortly")]
    Busy,
    /// No token, or one this server did not issue.
    #[error(
        "sign in first (on the web page, or `cohort login`), then send `authorization: Bearer <token>`; {0}"
    )]
    Unauthenticated(&'static str),
    /// The token was issued to this account, and has expired (it is
    /// forgotten as this is said: a second use is an unknown token).
    #[error("the token has expired: sign in again")]
    Expired(Address),
}

struct Challenge {
    message: String,
    address: Address,
    issued: Instant,
}

/// How a token's holder signed in.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Factors {
    /// The passkey (its credential id) that signed in on the web page;
    /// `None`: the account's Ethereum key signed the challenge
    /// (`cohort login`).
    pub passkey: Option<String>,
    /// The TOTP enrollment the sign-in's code was checked against, if one
    /// was asked for (see `second_factor::enrollment`).
    pub totp: Option<String>,
}

impl Factors {
    /// The factors' names, as `/api/session` and the audit log give them.
    pub fn names(&self) -> Vec<&'static str> {
        let mut names = vec![if self.passkey.is_some() {
            "passkey"
        } else {
            "key"
        }];
        if self.totp.is_some() {
            names.push("totp");
        }
        names
    }
}

/// Who a token stands for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    /// The signed-in account.
    pub address: Address,
    /// How it signed in.
    pub factors: Factors,
    expires: Instant,
}

impl Principal {
    /// How long the token has left.
    pub fn expires_in(&self) -> Duration {
        self.expires.saturating_duration_since(Instant::now())
    }
}

/// Challenges and tokens of one server.
pub struct Auth {
    domain: String,
    uri: String,
    chain_id: u64,
    token_ttl: Duration,
    challenges: Mutex<HashMap<String, Challenge>>,
    tokens: Mutex<HashMap<String, Principal>>,
}

impl Auth {
    /// Sign-ins for the server at `uri` (its host is the EIP-4361 domain)
    /// on chain `chain_id`; tokens last `token_ttl`.
    pub fn new(uri: &str, chain_id: u64, token_ttl: Duration) -> Auth {
        let domain = uri
            .split_once("://")
            .map_or(uri, |(_, rest)| rest)
            .trim_end_matches('/')
            .to_string();
        Auth {
            domain,
            uri: uri.to_string(),
            chain_id,
            token_ttl,
            challenges: Mutex::new(HashMap::new()),
            tokens: Mutex::new(HashMap::new()),
        }
    }

    /// The EIP-4361 message `address` signs to sign in.
    pub fn challenge(&self, address: Address) -> Result<String, AuthError> {
        let nonce = random_hex(16);
        let now = chrono::Utc::now();
        let expires = now + chrono::Duration::from_std(CHALLENGE_TTL).expect("a short duration");
        let message = format!(
            "{domain} wants you to sign in with your Ethereum account:\n{address}\n\n\
             Sign in to cohort to ask privacy-preserving research questions.\n\n\
             URI: {uri}\nVersion: 1\nChain ID: {chain}\nNonce: {nonce}\n\
             Issued At: {issued}\nExpiration Time: {expires}",
            domain = self.domain,
            address = address.to_checksum(None),
            uri = self.uri,
            chain = self.chain_id,
            issued = now.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            expires = expires.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        );
        let mut challenges = self.challenges.lock().expect("challenges lock");
        challenges.retain(|_, c| c.issued.elapsed() < CHALLENGE_TTL);
        if challenges.len() >= MAX_CHALLENGES {
            return Err(AuthError::Busy);
        }
        challenges.insert(
            nonce,
            Challenge {
                message: message.clone(),
                address,
                issued: Instant::now(),
            },
        );
        Ok(message)
    }

    /// Accepts `signature` over `message` (a challenge of this server, used
    /// once) and returns a fresh token with the account it stands for.
    pub fn sign_in(&self, message: &str, signature: &[u8]) -> Result<(String, Address), AuthError> {
        let signer = self.verify_signature(message, signature)?;
        Ok((self.issue_token(signer, Factors::default()), signer))
    }

    /// The account whose `signature` answers `message`, a challenge of
    /// this server; the challenge is used up whatever the outcome. No token
    /// yet: a second factor may still be due.
    pub fn verify_signature(&self, message: &str, signature: &[u8]) -> Result<Address, AuthError> {
        let nonce = message
            .lines()
            .find_map(|l| l.strip_prefix("Nonce: "))
            .ok_or(AuthError::UnknownChallenge)?;
        // Taken out whatever follows: a challenge is answered at most once.
        let challenge = self
            .challenges
            .lock()
            .expect("challenges lock")
            .remove(nonce)
            .ok_or(AuthError::UnknownChallenge)?;
        if challenge.message != message {
            return Err(AuthError::UnknownChallenge);
        }
        if challenge.issued.elapsed() >= CHALLENGE_TTL {
            return Err(AuthError::ExpiredChallenge);
        }
        let signer = cohort_ledger_bridge::message_signer(message, signature)
            .map_err(|e| AuthError::BadSignature(e.to_string()))?;
        if signer != challenge.address {
            return Err(AuthError::WrongSigner(challenge.address.to_checksum(None)));
        }
        Ok(signer)
    }

    /// A fresh token for `signer`, valid for the token lifetime; `factors`
    /// say how it signed in.
    pub fn issue_token(&self, signer: Address, factors: Factors) -> String {
        let token = random_hex(32);
        let mut tokens = self.tokens.lock().expect("tokens lock");
        tokens.retain(|_, p| p.expires > Instant::now());
        tokens.insert(
            token.clone(),
            Principal {
                address: signer,
                factors,
                expires: Instant::now() + self.token_ttl,
            },
        );
        token
    }

    /// Ends the token in an `authorization` header's value (signing out);
    /// the account it stood for.
    pub fn revoke(&self, authorization: Option<&str>) -> Result<Address, AuthError> {
        let principal = self.principal(authorization)?;
        let token = bearer(authorization)?;
        self.tokens
            .lock()
            .expect("tokens lock")
            .remove(token.trim());
        Ok(principal.address)
    }

    /// Ends every token of `address`; how many there were.
    pub fn revoke_account(&self, address: Address) -> usize {
        let mut tokens = self.tokens.lock().expect("tokens lock");
        let before = tokens.len();
        tokens.retain(|_, p| p.address != address);
        before - tokens.len()
    }

    /// The token behind a gRPC request's `authorization` header;
    /// UNAUTHENTICATED saying why otherwise. Only the token: what it may
    /// do now is [`super::gate::Gate`]'s to decide.
    pub fn principal_of<T>(&self, request: &tonic::Request<T>) -> Result<Principal, tonic::Status> {
        self.principal(authorization(request))
            .map_err(|e| tonic::Status::unauthenticated(e.to_string()))
    }

    /// The account behind an `authorization` header's value.
    pub fn principal(&self, authorization: Option<&str>) -> Result<Principal, AuthError> {
        let token = bearer(authorization)?.trim();
        let mut tokens = self.tokens.lock().expect("tokens lock");
        match tokens.get(token) {
            Some(p) if p.expires > Instant::now() => Ok(p.clone()),
            Some(p) => {
                let address = p.address;
                tokens.remove(token);
                Err(AuthError::Expired(address))
            }
            None => Err(AuthError::Unauthenticated(
                "the token is not one this server issued",
            )),
        }
    }
}

/// A gRPC request's `authorization` header, if it has one.
pub fn authorization<T>(request: &tonic::Request<T>) -> Option<&str> {
    request
        .metadata()
        .get("authorization")
        .map(|v| v.to_str().unwrap_or_default())
}

fn bearer(authorization: Option<&str>) -> Result<&str, AuthError> {
    authorization
        .ok_or(AuthError::Unauthenticated("no authorization header"))?
        .strip_prefix("Bearer ")
        .ok_or(AuthError::Unauthenticated(
            "the header is not a bearer token",
        ))
}

pub(crate) fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    getrandom::fill(&mut buf).expect("the operating system's entropy source failed");
    HEXLOWER.encode(&buf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use cohort_ledger_bridge::Account;

    fn account(name: &str, byte: u8) -> Account {
        Account::from_secret(name, &[byte; 32]).unwrap()
    }

    fn auth() -> Auth {
        Auth::new("https://127.0.0.1:50051", 1337, Duration::from_secs(60))
    }

    #[test]
    fn a_signed_challenge_yields_a_token_for_its_account() {
        let auth = auth();
        let alice = account("alice", 7);
        let message = auth.challenge(alice.address()).unwrap();
        assert!(
            message.starts_with(
                "127.0.0.1:50051 wants you to sign in with your Ethereum account:\n0x"
            )
        );
        assert!(message.contains("\nChain ID: 1337\n"), "{message}");
        let signature = alice.sign_message(&message).unwrap();
        let (token, who) = auth.sign_in(&message, &signature).unwrap();
        assert_eq!(who, alice.address());
        let header = format!("Bearer {token}");
        assert_eq!(
            auth.principal(Some(&header)).unwrap().address,
            alice.address()
        );
    }

    #[test]
    fn a_challenge_is_answered_once() {
        let auth = auth();
        let alice = account("alice", 7);
        let message = auth.challenge(alice.address()).unwrap();
        let signature = alice.sign_message(&message).unwrap();
        auth.sign_in(&message, &signature).unwrap();
        assert_eq!(
            auth.sign_in(&message, &signature),
            Err(AuthError::UnknownChallenge),
            "a replayed signature must not sign in again"
        );
    }

    #[test]
    fn another_key_an_altered_message_or_an_invented_one_is_refused() {
        let auth = auth();
        let alice = account("alice", 7);
        let mallory = account("mallory", 9);

        let message = auth.challenge(alice.address()).unwrap();
        let forged = mallory.sign_message(&message).unwrap();
        assert!(matches!(
            auth.sign_in(&message, &forged),
            Err(AuthError::WrongSigner(_))
        ));

        let message = auth.challenge(alice.address()).unwrap();
        let altered = message.replace("Chain ID: 1337", "Chain ID: 1");
        let signature = alice.sign_message(&altered).unwrap();
        assert_eq!(
            auth.sign_in(&altered, &signature),
            Err(AuthError::UnknownChallenge)
        );
        // The altered attempt used the challenge up.
        let signature = alice.sign_message(&message).unwrap();
        assert_eq!(
            auth.sign_in(&message, &signature),
            Err(AuthError::UnknownChallenge)
        );

        let invented = "127.0.0.1:50051 wants you to sign in\nNonce: 00";
        let signature = alice.sign_message(invented).unwrap();
        assert_eq!(
            auth.sign_in(invented, &signature),
            Err(AuthError::UnknownChallenge)
        );

        let message = auth.challenge(alice.address()).unwrap();
        assert!(matches!(
            auth.sign_in(&message, &[0u8; 10]),
            Err(AuthError::BadSignature(_))
        ));
    }

    #[test]
    fn a_token_ends_when_signed_out_or_revoked_with_its_account() {
        let auth = auth();
        let alice = account("alice", 7);
        let bob = account("bob", 8);
        let sign_in = |who: &Account| {
            let message = auth.challenge(who.address()).unwrap();
            let signature = who.sign_message(&message).unwrap();
            format!("Bearer {}", auth.sign_in(&message, &signature).unwrap().0)
        };
        let (a1, a2, b1) = (sign_in(&alice), sign_in(&alice), sign_in(&bob));
        assert_eq!(auth.revoke(Some(&a1)), Ok(alice.address()));
        assert_eq!(
            auth.principal(Some(&a1)),
            Err(AuthError::Unauthenticated(
                "the token is not one this server issued"
            ))
        );
        assert!(auth.revoke(Some(&a1)).is_err(), "signed out once");
        assert!(auth.principal(Some(&a2)).is_ok(), "another sign-in stays");
        assert_eq!(auth.revoke_account(alice.address()), 1);
        assert!(auth.principal(Some(&a2)).is_err());
        assert_eq!(auth.principal(Some(&b1)).unwrap().address, bob.address());
        assert_eq!(auth.revoke_account(alice.address()), 0);
    }

    #[test]
    fn tokens_are_checked_and_expire() {
        let auth = Auth::new("http://localhost:1", 1, Duration::ZERO);
        let alice = account("alice", 7);
        let message = auth.challenge(alice.address()).unwrap();
        let signature = alice.sign_message(&message).unwrap();
        let (token, _) = auth.sign_in(&message, &signature).unwrap();
        let header = format!("Bearer {token}");
        assert_eq!(
            auth.principal(Some(&header)),
            Err(AuthError::Expired(alice.address())),
            "the expired token names its account (for the audit log)"
        );
        assert_eq!(
            auth.principal(Some(&header)),
            Err(AuthError::Unauthenticated(
                "the token is not one this server issued"
            )),
            "and is forgotten"
        );
        assert_eq!(
            auth.principal(None),
            Err(AuthError::Unauthenticated("no authorization header"))
        );
        assert_eq!(
            auth.principal(Some("Basic abc")),
            Err(AuthError::Unauthenticated(
                "the header is not a bearer token"
            ))
        );
        assert_eq!(
            auth.principal(Some("Bearer 00")),
            Err(AuthError::Unauthenticated(
                "the token is not one this server issued"
            ))
        );
    }
}
