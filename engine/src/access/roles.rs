//! Roles on the ledger, granted and revoked by an administrator: one
//! implementation for `cohort account grant/revoke` (on a chain the CLI
//! owns) and for the server's `Roles` API (the server owns the chain while
//! it runs, so an administrator changes roles through it). The contract
//! decides who may (its admin role); each change and each refusal is
//! audited here.

use cohort_ledger_bridge::{Account, Client, Role};
use rusqlite::Connection;
use serde::Serialize;

use crate::keys::keystore::KeyStore;
use crate::{Result, audit, keys::accounts};

/// A role given or taken.
#[derive(Debug, Clone, Serialize)]
pub struct RoleChanged {
    /// The account's name.
    pub name: String,
    /// Its address.
    pub address: String,
    /// The role.
    pub role: String,
    /// Whether it was granted (else revoked).
    pub granted: bool,
    /// The transaction.
    pub tx_hash: String,
}

/// `admin` grants (`grant`) or revokes `role` to or from the account
/// `name`; granting to a name with no account creates its key.
pub async fn change(
    conn: &Connection,
    keys: &dyn KeyStore,
    client: &Client,
    admin: &Account,
    name: &str,
    role: Role,
    grant: bool,
) -> Result<RoleChanged> {
    let account = if grant {
        accounts::get_or_create(conn, keys, name)?
    } else {
        accounts::get(conn, keys, name)?
    };
    let action = if grant { "role.grant" } else { "role.revoke" };
    let sent = if grant {
        client.grant_role(admin, role, account.address()).await
    } else {
        client.revoke_role(admin, role, account.address()).await
    };
    let target = format!("{:#x}", account.address());
    // One audit entry either way: the change, or the refusal and why.
    let mut detail = serde_json::json!({ "account": name, "role": role.name() });
    if let Err(e) = &sent {
        detail["refused"] = e.to_string().into();
    }
    audit::append(
        conn,
        &audit::Event {
            actor: admin.name(),
            action,
            target: &target,
            purpose: "operations",
            detail,
        },
    )?;
    let receipt = sent?;
    Ok(RoleChanged {
        name: name.to_string(),
        address: target,
        role: role.name().to_string(),
        granted: grant,
        tx_hash: format!("{:#x}", receipt.tx_hash),
    })
}
