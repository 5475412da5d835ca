//! Passkeys (WebAuthn credentials) of the accounts that sign in on the web
//! page, and the one-time enrolment codes that authorise registering one.
//!
//! The engine stores what the server's WebAuthn ceremony
//! (`cohort-server`, `webauthn-rs`) hands it, as opaque JSON: the
//! credential's public key, its algorithm and its signature counter. No
//! secret is stored here: a passkey's private key never leaves the
//! person's authenticator. What must not be forged is *who may register
//! one*: a registration is authorised by a one-time code that the
//! operator issues on the server (`cohort account passkey invite NAME`),
//! kept only as its SHA-256 digest, valid [`INVITE_TTL_SECS`] and used at
//! most once; or by a signed-in session of the account itself.
//!
//! ```
//! # fn main() -> cohort_engine::Result<()> {
//! use cohort_engine::keys::passkeys;
//! # let dir = tempfile::tempdir().unwrap();
//! # let conn = cohort_engine::storage::store::open(&dir.path().join("cohort.db"))?;
//! # conn.execute("INSERT INTO accounts (name, address, wrapped_key, kek_id, created_at) VALUES ('pat', '0x01', x'00', 'k', 'now')", [])?;
//! let invite = passkeys::invite(&conn, "operator", "pat", 1_800_000_000)?;
//! assert_eq!(passkeys::check_invite(&conn, "pat", &invite.code, 1_800_000_060)?, Ok(()));
//! # Ok(()) }
//! ```

use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;
use sha2::Digest;

use crate::{Error, Result};

/// How long an enrolment code may wait to be used.
pub const INVITE_TTL_SECS: u64 = 15 * 60;

/// Passkeys one account may hold (a phone, a laptop, a spare key...).
pub const MAX_PER_ACCOUNT: usize = 10;

/// What `cohort account passkey invite` shows, once.
#[derive(Debug, Clone, Serialize)]
pub struct Invite {
    /// The account the code registers a passkey for.
    pub account: String,
    /// The one-time code (shown once; stored only as its digest).
    pub code: String,
    /// Until when it may be used (Unix seconds).
    pub expires_at: u64,
}

/// One registered passkey, as listed (no key material).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct PasskeyInfo {
    /// The credential id (base64url), as the authenticator names it.
    pub credential_id: String,
    /// The account it signs in.
    pub account: String,
    /// A label the person gave it ("phone").
    pub label: String,
    /// When it was registered.
    pub created_at: String,
    /// When it last signed in, if ever.
    pub last_used_at: Option<String>,
}

/// Why an enrolment code was refused. The text is what the client sees.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum InviteError {
    /// No code outstanding for the account, a wrong one, or one used up.
    #[error(
        "this enrolment code is wrong, was already used, or `{0}` has none: ask the operator for a new one (`cohort account passkey invite {0}`)"
    )]
    Wrong(String),
    /// The code waited too long.
    #[error(
        "this enrolment code expired: ask the operator for a new one (`cohort account passkey invite {0}`)"
    )]
    Expired(String),
}

fn digest(code: &str) -> Vec<u8> {
    sha2::Sha256::digest(code.trim().to_ascii_uppercase().as_bytes()).to_vec()
}

fn require_account(conn: &Connection, name: &str) -> Result<()> {
    if crate::keys::accounts::address_of(conn, name)?.is_none() {
        return Err(Error::NotFound(format!(
            "no account `{name}`: create it with `cohort account new {name}`"
        )));
    }
    Ok(())
}

/// Issues a one-time code that lets the person of account `name` register
/// a passkey on the web page, on `actor`'s request (audited, without the
/// code). A new code replaces any outstanding one.
pub fn invite(conn: &Connection, actor: &str, name: &str, unix_time: u64) -> Result<Invite> {
    require_account(conn, name)?;
    let mut bytes = [0u8; 10];
    getrandom::fill(&mut bytes)
        .map_err(|e| Error::Invalid(format!("the operating system's entropy source: {e}")))?;
    // 80 bits, in the RFC 4648 base32 alphabet (no 0/1/8/9 to misread).
    let code = data_encoding::BASE32_NOPAD.encode(&bytes);
    let expires_at = unix_time + INVITE_TTL_SECS;
    conn.execute(
        "INSERT INTO passkey_invites (account, code_digest, expires_at) VALUES (?1, ?2, ?3)
         ON CONFLICT(account) DO UPDATE SET code_digest = excluded.code_digest,
           expires_at = excluded.expires_at",
        params![name, digest(&code), to_i64(expires_at)?],
    )?;
    crate::audit::append(
        conn,
        &crate::audit::Event {
            actor,
            action: "account.passkey.invite",
            target: name,
            purpose: "operations",
            detail: serde_json::json!({ "expires_at": expires_at }),
        },
    )?;
    Ok(Invite {
        account: name.to_string(),
        code,
        expires_at,
    })
}

fn to_i64(v: u64) -> Result<i64> {
    i64::try_from(v).map_err(|_| Error::Invalid("a time past 2^63 seconds".into()))
}

/// Whether `code` is `name`'s outstanding enrolment code at `unix_time`;
/// uses nothing ([`redeem_invite`] does, once the passkey is verified).
pub fn check_invite(
    conn: &Connection,
    name: &str,
    code: &str,
    unix_time: u64,
) -> Result<std::result::Result<(), InviteError>> {
    let row: Option<(Vec<u8>, i64)> = conn
        .query_row(
            "SELECT code_digest, expires_at FROM passkey_invites WHERE account = ?1",
            [name],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?;
    Ok(match row {
        Some((d, _)) if d != digest(code) => Err(InviteError::Wrong(name.into())),
        Some((_, expires)) if expires <= to_i64(unix_time)? => {
            Err(InviteError::Expired(name.into()))
        }
        Some(_) => Ok(()),
        None => Err(InviteError::Wrong(name.into())),
    })
}

/// Uses `name`'s enrolment `code` up, if it is still outstanding and
/// unexpired at `unix_time`: one conditional DELETE, so two registrations
/// racing with the same code cannot both pass.
pub fn redeem_invite(
    conn: &Connection,
    name: &str,
    code: &str,
    unix_time: u64,
) -> Result<std::result::Result<(), InviteError>> {
    if let Err(e) = check_invite(conn, name, code, unix_time)? {
        return Ok(Err(e));
    }
    let deleted = conn.execute(
        "DELETE FROM passkey_invites WHERE account = ?1 AND code_digest = ?2 AND expires_at > ?3",
        params![name, digest(code), to_i64(unix_time)?],
    )?;
    Ok(if deleted == 1 {
        Ok(())
    } else {
        Err(InviteError::Wrong(name.into()))
    })
}

/// Stores a verified passkey of `name` (the ceremony's credential, as
/// JSON), registered by `actor` (the account itself, or the operator's
/// code); audited.
pub fn register(
    conn: &Connection,
    actor: &str,
    name: &str,
    credential_id: &str,
    credential: &str,
    label: &str,
) -> Result<PasskeyInfo> {
    require_account(conn, name)?;
    let label: String = label.trim().chars().take(64).collect();
    if list(conn, name)?.len() >= MAX_PER_ACCOUNT {
        return Err(Error::Invalid(format!(
            "`{name}` already has {MAX_PER_ACCOUNT} passkeys: remove one first (`cohort account passkey remove {name} ID`)"
        )));
    }
    let created_at = crate::storage::store::now();
    let inserted = conn.execute(
        "INSERT OR IGNORE INTO passkeys (credential_id, account, credential, label, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5)",
        params![credential_id, name, credential, label, created_at],
    )?;
    if inserted == 0 {
        return Err(Error::Invalid(
            "this passkey is already registered: sign in with it".into(),
        ));
    }
    crate::audit::append(
        conn,
        &crate::audit::Event {
            actor,
            action: "account.passkey.register",
            target: name,
            purpose: "security",
            detail: serde_json::json!({ "credential": credential_id, "label": label }),
        },
    )?;
    Ok(PasskeyInfo {
        credential_id: credential_id.into(),
        account: name.into(),
        label,
        created_at,
        last_used_at: None,
    })
}

/// `name`'s passkeys, oldest first (no key material).
pub fn list(conn: &Connection, name: &str) -> Result<Vec<PasskeyInfo>> {
    let mut statement = conn.prepare(
        "SELECT credential_id, account, label, created_at, last_used_at FROM passkeys
         WHERE account = ?1 ORDER BY created_at, credential_id",
    )?;
    let rows = statement.query_map([name], |r| {
        Ok(PasskeyInfo {
            credential_id: r.get(0)?,
            account: r.get(1)?,
            label: r.get(2)?,
            created_at: r.get(3)?,
            last_used_at: r.get(4)?,
        })
    })?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// `name`'s passkeys as the ceremony stored them (JSON), by credential id.
pub fn credentials(conn: &Connection, name: &str) -> Result<Vec<(String, String)>> {
    let mut statement = conn.prepare(
        "SELECT credential_id, credential FROM passkeys WHERE account = ?1 ORDER BY credential_id",
    )?;
    let rows = statement.query_map([name], |r| Ok((r.get(0)?, r.get(1)?)))?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// The account a credential id belongs to, if it is registered.
pub fn owner(conn: &Connection, credential_id: &str) -> Result<Option<String>> {
    Ok(conn
        .query_row(
            "SELECT account FROM passkeys WHERE credential_id = ?1",
            [credential_id],
            |r| r.get(0),
        )
        .optional()?)
}

/// Records a sign-in with `credential_id`: the credential as the ceremony
/// updated it (its new signature counter). `false` when the credential was
/// removed meanwhile, or when the stored credential is no longer the one
/// the ceremony checked (another sign-in with the same passkey won the
/// race): the sign-in must then be refused.
pub fn used(conn: &Connection, credential_id: &str, checked: &str, updated: &str) -> Result<bool> {
    Ok(conn.execute(
        "UPDATE passkeys SET credential = ?3, last_used_at = ?4
         WHERE credential_id = ?1 AND credential = ?2",
        params![
            credential_id,
            checked,
            updated,
            crate::storage::store::now()
        ],
    )? == 1)
}

/// Whether `credential_id` is still registered (a token signed in with a
/// removed passkey stops working).
pub fn exists(conn: &Connection, credential_id: &str) -> Result<bool> {
    Ok(owner(conn, credential_id)?.is_some())
}

/// Removes `name`'s passkey `credential_id`, on `actor`'s request
/// (audited); whether there was one.
pub fn remove(conn: &Connection, actor: &str, name: &str, credential_id: &str) -> Result<bool> {
    let removed = conn.execute(
        "DELETE FROM passkeys WHERE account = ?1 AND credential_id = ?2",
        params![name, credential_id],
    )? == 1;
    if removed {
        crate::audit::append(
            conn,
            &crate::audit::Event {
                actor,
                action: "account.passkey.remove",
                target: name,
                purpose: "security",
                detail: serde_json::json!({ "credential": credential_id }),
            },
        )?;
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: u64 = 1_800_000_000;

    fn setup() -> (tempfile::TempDir, Connection) {
        let dir = tempfile::tempdir().unwrap();
        let conn = crate::storage::store::open(&dir.path().join("cohort.db")).unwrap();
        for (name, address) in [("pat", "0x01"), ("doc", "0x02")] {
            conn.execute(
                "INSERT INTO accounts (name, address, wrapped_key, kek_id, created_at) VALUES (?1, ?2, x'00', 'k', 'now')",
                [name, address],
            )
            .unwrap();
        }
        (dir, conn)
    }

    fn actions(conn: &Connection) -> Vec<String> {
        let mut s = conn
            .prepare("SELECT action FROM audit ORDER BY seq")
            .unwrap();
        s.query_map([], |r| r.get(0))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap()
    }

    #[test]
    fn an_invite_is_used_once_before_it_expires() {
        let (_d, conn) = setup();
        let i = invite(&conn, "operator", "pat", T).unwrap();
        assert_eq!(i.code.len(), 16);
        assert_eq!(i.expires_at, T + INVITE_TTL_SECS);
        // The code is kept only as its digest, and not in the audit log.
        let stored: i64 = conn
            .query_row(
                "SELECT COUNT(*) FROM passkey_invites WHERE CAST(code_digest AS TEXT) LIKE ?1",
                [format!("%{}%", i.code)],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(stored, 0);
        let audit: String = conn
            .query_row("SELECT group_concat(detail) FROM audit", [], |r| r.get(0))
            .unwrap();
        assert!(!audit.contains(&i.code));

        assert_eq!(check_invite(&conn, "pat", &i.code, T + 1).unwrap(), Ok(()));
        assert_eq!(
            check_invite(&conn, "doc", &i.code, T + 1).unwrap(),
            Err(InviteError::Wrong("doc".into())),
            "another account's code"
        );
        assert_eq!(
            check_invite(&conn, "pat", "AAAAAAAAAAAAAAAA", T + 1).unwrap(),
            Err(InviteError::Wrong("pat".into()))
        );
        assert_eq!(
            redeem_invite(&conn, "pat", &i.code.to_lowercase(), T + 2).unwrap(),
            Ok(()),
            "typed in lower case"
        );
        assert_eq!(
            redeem_invite(&conn, "pat", &i.code, T + 3).unwrap(),
            Err(InviteError::Wrong("pat".into())),
            "used once"
        );
    }

    #[test]
    fn an_expired_or_replaced_invite_is_refused() {
        let (_d, conn) = setup();
        let old = invite(&conn, "operator", "pat", T).unwrap();
        let expired = T + INVITE_TTL_SECS;
        assert_eq!(
            redeem_invite(&conn, "pat", &old.code, expired).unwrap(),
            Err(InviteError::Expired("pat".into()))
        );
        let new = invite(&conn, "operator", "pat", T).unwrap();
        assert_eq!(
            check_invite(&conn, "pat", &old.code, T).unwrap(),
            Err(InviteError::Wrong("pat".into())),
            "a new code retires the old"
        );
        assert_eq!(redeem_invite(&conn, "pat", &new.code, T).unwrap(), Ok(()));
        let e = invite(&conn, "operator", "nobody", T)
            .unwrap_err()
            .to_string();
        assert!(e.contains("no account `nobody`"), "{e}");
    }

    #[test]
    fn passkeys_are_registered_once_updated_by_compare_and_removed() {
        let (_d, conn) = setup();
        register(&conn, "pat", "pat", "cred-1", "{\"c\":1}", "  phone ").unwrap();
        let e = register(&conn, "doc", "doc", "cred-1", "{}", "")
            .unwrap_err()
            .to_string();
        assert!(e.contains("already registered"), "{e}");
        let l = list(&conn, "pat").unwrap();
        assert_eq!(l.len(), 1);
        assert_eq!(
            (l[0].label.as_str(), l[0].last_used_at.as_ref()),
            ("phone", None)
        );
        assert_eq!(owner(&conn, "cred-1").unwrap().as_deref(), Some("pat"));
        assert_eq!(owner(&conn, "cred-x").unwrap(), None);
        assert_eq!(
            credentials(&conn, "pat").unwrap(),
            vec![("cred-1".to_string(), "{\"c\":1}".to_string())]
        );
        // A sign-in updates the credential it checked, once.
        assert!(used(&conn, "cred-1", "{\"c\":1}", "{\"c\":2}").unwrap());
        assert!(
            !used(&conn, "cred-1", "{\"c\":1}", "{\"c\":2}").unwrap(),
            "a second sign-in that checked the old counter loses"
        );
        assert!(list(&conn, "pat").unwrap()[0].last_used_at.is_some());
        assert!(!remove(&conn, "doc", "doc", "cred-1").unwrap(), "not doc's");
        assert!(remove(&conn, "operator", "pat", "cred-1").unwrap());
        assert!(!exists(&conn, "cred-1").unwrap());
        assert!(!used(&conn, "cred-1", "{\"c\":2}", "{\"c\":3}").unwrap());
        assert_eq!(
            actions(&conn),
            ["account.passkey.register", "account.passkey.remove"]
        );
        for i in 0..MAX_PER_ACCOUNT {
            register(&conn, "pat", "pat", &format!("k{i}"), "{}", "").unwrap();
        }
        let e = register(&conn, "pat", "pat", "k-last", "{}", "")
            .unwrap_err()
            .to_string();
        assert!(e.contains("remove one first"), "{e}");
    }
}
