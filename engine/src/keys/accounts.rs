//! Named Ethereum accounts: each actor's secp256k1 key, created from the
//! operating system's entropy on first use and stored only wrapped by the
//! keystore, like the patients' data keys.
//!
//! Listing accounts needs no keys (the addresses and public keys are
//! public); using one to sign, or to open a data key sealed to it
//! (`keys::ecies`), needs the keystore's passphrase.

use cohort_ledger_bridge::Account;
use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;

use crate::keys::ecies::public_key_of;
use crate::keys::keystore::{KeyStore, SecretKey};
use crate::{Error, Result};

/// One account as listed.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct AccountInfo {
    /// Its name (`--as NAME`).
    pub name: String,
    /// Its Ethereum address.
    pub address: String,
    /// When it was created.
    pub created_at: String,
}

/// What an account's wrapped key is bound to.
pub(crate) fn context(name: &str) -> Vec<u8> {
    [b"cohort/account/".as_slice(), name.as_bytes()].concat()
}

fn check_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(Error::Invalid(format!(
            "`{name}` is not an account name: use 1 to 64 letters, digits, `-`, `_` or `.`"
        )))
    }
}

/// The account `name`, created (and stored wrapped) if it does not exist.
pub fn get_or_create(conn: &Connection, keys: &dyn KeyStore, name: &str) -> Result<Account> {
    check_name(name)?;
    if let Some(account) = load(conn, keys, name)? {
        return Ok(account);
    }
    let (secret, account) = loop {
        // A uniformly random 32-byte string is a valid secp256k1 key but
        // for a chance of about 2^-128.
        let secret = SecretKey::generate();
        if let Ok(account) = Account::from_secret(name, secret.expose()) {
            break (secret, account);
        }
    };
    crate::storage::store::with_write_lock(conn, || {
        let wrapped = keys.wrap(&secret, &context(name))?;
        conn.execute(
            "INSERT INTO accounts (name, address, wrapped_key, kek_id, created_at, public_key) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![
                name,
                format!("{:#x}", account.address()),
                wrapped,
                keys.key_id(),
                crate::storage::store::now(),
                data_encoding::HEXLOWER.encode(&public_key_of(secret.expose())?),
            ],
        )?;
        Ok(())
    })?;
    Ok(account)
}

/// The existing account `name`.
pub fn get(conn: &Connection, keys: &dyn KeyStore, name: &str) -> Result<Account> {
    check_name(name)?;
    load(conn, keys, name)?.ok_or_else(|| {
        Error::NotFound(format!(
            "no account `{name}`: create it with `cohort account new {name}`"
        ))
    })
}

fn load(conn: &Connection, keys: &dyn KeyStore, name: &str) -> Result<Option<Account>> {
    let Some((wrapped, address, public)) = conn
        .query_row(
            "SELECT wrapped_key, address, public_key FROM accounts WHERE name = ?1",
            [name],
            |r| {
                Ok((
                    r.get::<_, Vec<u8>>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, Option<String>>(2)?,
                ))
            },
        )
        .optional()?
    else {
        return Ok(None);
    };
    let secret = keys.unwrap(&wrapped, &context(name))?;
    let account = Account::from_secret(name, secret.expose())
        .map_err(|e| Error::Invalid(format!("account `{name}`: {e}")))?;
    if format!("{:#x}", account.address()) != address {
        return Err(Error::Invalid(format!(
            "account `{name}`: its key does not give its stored address {address}"
        )));
    }
    let derived = data_encoding::HEXLOWER.encode(&public_key_of(secret.expose())?);
    match public {
        Some(stored) if stored == derived => {}
        Some(stored) => {
            return Err(Error::Invalid(format!(
                "account `{name}`: its key does not give its stored public key {stored}"
            )));
        }
        // An account of a directory from before public keys: back-filled.
        None => {
            conn.execute(
                "UPDATE accounts SET public_key = ?2 WHERE name = ?1 AND public_key IS NULL",
                params![name, derived],
            )?;
        }
    }
    Ok(Some(account))
}

/// Every account, by name; needs no keys.
pub fn list(conn: &Connection) -> Result<Vec<AccountInfo>> {
    let mut statement =
        conn.prepare("SELECT name, address, created_at FROM accounts ORDER BY name")?;
    let rows = statement.query_map([], |r| {
        Ok(AccountInfo {
            name: r.get(0)?,
            address: r.get(1)?,
            created_at: r.get(2)?,
        })
    })?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// The address of account `name`, if it exists; needs no keys.
pub fn address_of(conn: &Connection, name: &str) -> Result<Option<String>> {
    Ok(conn
        .query_row(
            "SELECT address FROM accounts WHERE name = ?1",
            [name],
            |r| r.get(0),
        )
        .optional()?)
}

/// The name of the account at `address`, if this directory has one; needs
/// no keys.
pub fn name_of(
    conn: &Connection,
    address: cohort_ledger_bridge::alloy::primitives::Address,
) -> Result<Option<String>> {
    Ok(conn
        .query_row(
            "SELECT name FROM accounts WHERE lower(address) = ?1",
            [format!("{address:#x}")],
            |r| r.get(0),
        )
        .optional()?)
}

/// The compressed SEC1 public key of account `name`, if it exists and has
/// one recorded (an account of an older directory gets it when it is next
/// loaded, see [`public_key_or_load`]); needs no keys.
pub fn public_key(conn: &Connection, name: &str) -> Result<Option<Vec<u8>>> {
    let hex: Option<Option<String>> = conn
        .query_row(
            "SELECT public_key FROM accounts WHERE name = ?1",
            [name],
            |r| r.get(0),
        )
        .optional()?;
    hex.flatten()
        .map(|h| {
            data_encoding::HEXLOWER.decode(h.as_bytes()).map_err(|_| {
                Error::Invalid(format!("account `{name}` has a public key that is not hex"))
            })
        })
        .transpose()
}

/// The public key of account `name`, loading the account (which back-fills
/// it) when an older directory has none recorded yet.
pub fn public_key_or_load(conn: &Connection, keys: &dyn KeyStore, name: &str) -> Result<Vec<u8>> {
    if let Some(pk) = public_key(conn, name)? {
        return Ok(pk);
    }
    get(conn, keys, name)?;
    public_key(conn, name)?
        .ok_or_else(|| Error::NotFound(format!("account `{name}` has no public key")))
}
