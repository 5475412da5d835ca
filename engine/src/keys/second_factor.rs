//! The second factor every account adds to its sign-in: a TOTP secret
//! (RFC 6238: HMAC-SHA-1, 6 digits, 30-second steps, as every
//! authenticator app reads it), enrolled once and stored only wrapped by
//! the keystore.
//!
//! A code is accepted for the step before, the current one and the one
//! after (clock skew), and each step at most once: a code seen on the wire
//! cannot sign in a second time.

use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;
use totp_rs::{Builder, Totp};

use crate::keys::keystore::{KeyStore, SecretKey};
use crate::{Error, Result};

/// What `cohort totp enroll` shows, once: the secret for the
/// authenticator app.
#[derive(Debug, Clone, Serialize)]
pub struct Enrollment {
    /// The enrolled account.
    pub account: String,
    /// The secret, base32 (what an app asks for when typed in by hand).
    pub secret: String,
    /// The `otpauth://` URI (what an app reads from a QR code).
    pub otpauth_uri: String,
}

/// Why a code was refused. The text is what the client sees.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FactorError {
    /// No secret enrolled for the account.
    #[error("`{0}` has no second factor enrolled: on the server, run `cohort account totp {0}`")]
    NotEnrolled(String),
    /// No code sent.
    #[error(
        "`{0}` signs in with a second factor: add the current TOTP code (`cohort login --totp CODE`)"
    )]
    Missing(String),
    /// The code is not the current one.
    #[error("the TOTP code is wrong or expired")]
    Wrong,
    /// The code's step was already used.
    #[error("this TOTP code was already used; wait for the next one")]
    Reused,
}

/// What a second factor's wrapped secret is bound to.
pub(crate) fn context(name: &str) -> Vec<u8> {
    [b"cohort/totp/".as_slice(), name.as_bytes()].concat()
}

fn totp(name: &str, secret: &[u8]) -> Result<Totp> {
    Builder::new()
        .with_secret(secret.to_vec())
        .with_issuer(Some("cohort"))
        .with_account_name(name)
        .build()
        .map_err(|e| Error::Invalid(format!("a TOTP secret for `{name}`: {e}")))
}

/// Enrolls a new secret for the existing account `name`, on `actor`'s
/// request (audited). An account already enrolled keeps its secret unless
/// `replace`.
pub fn enroll(
    conn: &Connection,
    keys: &dyn KeyStore,
    actor: &str,
    name: &str,
    replace: bool,
) -> Result<Enrollment> {
    if crate::keys::accounts::address_of(conn, name)?.is_none() {
        return Err(Error::NotFound(format!(
            "no account `{name}`: create it with `cohort account new {name}`"
        )));
    }
    if is_enrolled(conn, name)? && !replace {
        return Err(Error::Invalid(format!(
            "`{name}` already has a second factor; pass --replace to issue a new secret (the old one stops working)"
        )));
    }
    let secret = SecretKey::generate();
    let t = totp(name, secret.expose())?;
    crate::storage::store::with_write_lock(conn, || {
        let wrapped = keys.wrap(&secret, &context(name))?;
        conn.execute(
            "INSERT INTO second_factors (account, wrapped_secret, kek_id, enrolled_at, last_step)
             VALUES (?1, ?2, ?3, ?4, 0)
             ON CONFLICT(account) DO UPDATE SET wrapped_secret = excluded.wrapped_secret,
               kek_id = excluded.kek_id, enrolled_at = excluded.enrolled_at, last_step = 0",
            params![name, wrapped, keys.key_id(), crate::storage::store::now()],
        )?;
        crate::audit::append(
            conn,
            &crate::audit::Event {
                actor,
                action: "account.totp.enroll",
                target: name,
                purpose: "operations",
                detail: serde_json::json!({ "replaced": replace }),
            },
        )?;
        Ok(())
    })?;
    Ok(Enrollment {
        account: name.to_string(),
        secret: data_encoding::BASE32_NOPAD.encode(secret.expose()),
        otpauth_uri: t
            .to_url()
            .map_err(|e| Error::Invalid(format!("the otpauth URI for `{name}`: {e}")))?,
    })
}

/// Whether `name` has a secret enrolled.
pub fn is_enrolled(conn: &Connection, name: &str) -> Result<bool> {
    Ok(conn
        .query_row(
            "SELECT 1 FROM second_factors WHERE account = ?1",
            [name],
            |_| Ok(()),
        )
        .optional()?
        .is_some())
}

/// Which secret `name` has enrolled now (a digest of the account and the
/// moment it enrolled, which a new enrollment changes), if any: a sign-in
/// records it, and a token outlives neither a new enrollment nor a removed
/// one. It is not a digest of the wrapped secret: a key rotation re-wraps
/// the secret, and must not sign every steward out.
pub fn enrollment(conn: &Connection, name: &str) -> Result<Option<String>> {
    Ok(conn
        .query_row(
            "SELECT enrolled_at FROM second_factors WHERE account = ?1",
            [name],
            |r| r.get::<_, String>(0),
        )
        .optional()?
        .map(|enrolled_at| enrollment_id(name, &enrolled_at)))
}

fn enrollment_id(name: &str, enrolled_at: &str) -> String {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    h.update(b"cohort/totp-enrollment\0");
    h.update((name.len() as u64).to_be_bytes());
    h.update(name.as_bytes());
    h.update(enrolled_at.as_bytes());
    data_encoding::HEXLOWER.encode(&h.finalize())
}

/// Checks `code` for `name` at `unix_time` and records its step as used;
/// on success, the [`enrollment`] it was checked against. The step is
/// claimed by one conditional UPDATE, so two sign-ins racing with the same
/// code cannot both pass.
pub fn verify(
    conn: &Connection,
    keys: &dyn KeyStore,
    name: &str,
    code: Option<&str>,
    unix_time: u64,
) -> Result<std::result::Result<String, FactorError>> {
    let Some((wrapped, last_step, enrolled_at)) = conn
        .query_row(
            "SELECT wrapped_secret, last_step, enrolled_at FROM second_factors WHERE account = ?1",
            [name],
            |r| {
                Ok((
                    r.get::<_, Vec<u8>>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, String>(2)?,
                ))
            },
        )
        .optional()?
    else {
        return Ok(Err(FactorError::NotEnrolled(name.to_string())));
    };
    let Some(code) = code.map(str::trim).filter(|c| !c.is_empty()) else {
        return Ok(Err(FactorError::Missing(name.to_string())));
    };
    let secret = keys.unwrap(&wrapped, &context(name))?;
    let Some(step) = totp(name, secret.expose())?.check(code, unix_time) else {
        return Ok(Err(FactorError::Wrong));
    };
    let step = i64::try_from(step).map_err(|_| Error::Invalid("a TOTP step past 2^63".into()))?;
    if step <= last_step {
        return Ok(Err(FactorError::Reused));
    }
    // Claimed only while the secret checked is still the one enrolled (a
    // key rotation re-wraps it meanwhile without changing the enrollment).
    let claimed = conn.execute(
        "UPDATE second_factors SET last_step = ?2
         WHERE account = ?1 AND last_step < ?2 AND enrolled_at = ?3",
        params![name, step, enrolled_at],
    )?;
    Ok(if claimed == 1 {
        Ok(enrollment_id(name, &enrolled_at))
    } else {
        Err(FactorError::Reused)
    })
}

/// The code an authenticator shows for `secret` (base32) at `unix_time`:
/// for tests and for scripts that hold the secret themselves.
pub fn code_for(secret_base32: &str, unix_time: u64) -> Result<String> {
    let bytes = data_encoding::BASE32_NOPAD
        .decode(secret_base32.trim().as_bytes())
        .map_err(|e| Error::Invalid(format!("the TOTP secret is not base32: {e}")))?;
    Ok(totp("code", &bytes)?.generate(unix_time).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::keystore::{FileKeyStore, KdfParams};

    fn setup() -> (tempfile::TempDir, Connection, FileKeyStore) {
        let dir = tempfile::tempdir().unwrap();
        let conn = crate::storage::store::open(&dir.path().join("cohort.db")).unwrap();
        let keys = FileKeyStore::create(
            &dir.path().join("keys"),
            "pass",
            KdfParams {
                m_cost_kib: 256,
                t_cost: 1,
                p_cost: 1,
            },
        )
        .unwrap();
        crate::keys::accounts::get_or_create(&conn, &keys, "stew").unwrap();
        (dir, conn, keys)
    }

    const T: u64 = 1_800_000_000;

    #[test]
    fn a_code_passes_once_within_its_window() {
        let (_d, conn, keys) = setup();
        let e = enroll(&conn, &keys, "operator", "stew", false).unwrap();
        assert!(
            e.otpauth_uri.starts_with("otpauth://totp/cohort:stew?"),
            "{}",
            e.otpauth_uri
        );
        assert!(e.otpauth_uri.contains(&format!("secret={}", e.secret)));
        let code = code_for(&e.secret, T).unwrap();
        assert_eq!(code.len(), 6);
        assert_eq!(
            verify(&conn, &keys, "stew", Some(&code), T)
                .unwrap()
                .map(drop),
            Ok(())
        );
        // The same code again, even within its 30 seconds: refused.
        assert_eq!(
            verify(&conn, &keys, "stew", Some(&code), T + 5)
                .unwrap()
                .map(drop),
            Err(FactorError::Reused)
        );
        // The next step's code passes; an older step's does not.
        let next = code_for(&e.secret, T + 30).unwrap();
        assert_eq!(
            verify(&conn, &keys, "stew", Some(&next), T + 30)
                .unwrap()
                .map(drop),
            Ok(())
        );
        let old = code_for(&e.secret, T - 30).unwrap();
        assert_ne!(
            verify(&conn, &keys, "stew", Some(&old), T + 30)
                .unwrap()
                .map(drop),
            Ok(())
        );
    }

    #[test]
    fn skew_is_one_step_either_side() {
        let (_d, conn, keys) = setup();
        let e = enroll(&conn, &keys, "operator", "stew", false).unwrap();
        let early = code_for(&e.secret, T + 30).unwrap();
        assert_eq!(
            verify(&conn, &keys, "stew", Some(&early), T)
                .unwrap()
                .map(drop),
            Ok(())
        );
        let stale = code_for(&e.secret, T).unwrap();
        assert_eq!(
            verify(&conn, &keys, "stew", Some(&stale), T + 120)
                .unwrap()
                .map(drop),
            Err(FactorError::Wrong)
        );
    }

    #[test]
    fn missing_wrong_and_unenrolled_are_refused_by_name() {
        let (_d, conn, keys) = setup();
        assert_eq!(
            verify(&conn, &keys, "stew", Some("123456"), T)
                .unwrap()
                .map(drop),
            Err(FactorError::NotEnrolled("stew".into()))
        );
        let e = enroll(&conn, &keys, "operator", "stew", false).unwrap();
        assert_eq!(
            verify(&conn, &keys, "stew", None, T).unwrap().map(drop),
            Err(FactorError::Missing("stew".into()))
        );
        assert_eq!(
            verify(&conn, &keys, "stew", Some("  "), T)
                .unwrap()
                .map(drop),
            Err(FactorError::Missing("stew".into()))
        );
        let right = code_for(&e.secret, T).unwrap();
        let wrong = format!("{:06}", (right.parse::<u32>().unwrap() + 1) % 1_000_000);
        assert_eq!(
            verify(&conn, &keys, "stew", Some(&wrong), T)
                .unwrap()
                .map(drop),
            Err(FactorError::Wrong)
        );
        assert_eq!(
            verify(&conn, &keys, "stew", Some("not-a-code"), T)
                .unwrap()
                .map(drop),
            Err(FactorError::Wrong)
        );
    }

    #[test]
    fn enrolling_again_needs_replace_and_retires_the_old_secret() {
        let (_d, conn, keys) = setup();
        assert_eq!(enrollment(&conn, "stew").unwrap(), None);
        let first = enroll(&conn, &keys, "operator", "stew", false).unwrap();
        let first_id = enrollment(&conn, "stew").unwrap().unwrap();
        let e = enroll(&conn, &keys, "operator", "stew", false)
            .unwrap_err()
            .to_string();
        assert!(e.contains("--replace"), "{e}");
        let second = enroll(&conn, &keys, "operator", "stew", true).unwrap();
        assert_ne!(first.secret, second.secret);
        let old = code_for(&first.secret, T).unwrap();
        let new = code_for(&second.secret, T).unwrap();
        if old != new {
            assert_eq!(
                verify(&conn, &keys, "stew", Some(&old), T)
                    .unwrap()
                    .map(drop),
                Err(FactorError::Wrong)
            );
        }
        // The sign-in names the enrollment it checked: the new one.
        let id = verify(&conn, &keys, "stew", Some(&new), T)
            .unwrap()
            .unwrap();
        assert_eq!(Some(&id), enrollment(&conn, "stew").unwrap().as_ref());
        assert_ne!(id, first_id, "a new enrollment has a new id");
        let e = enroll(&conn, &keys, "operator", "nobody", false)
            .unwrap_err()
            .to_string();
        assert!(e.contains("no account `nobody`"), "{e}");
    }
}
