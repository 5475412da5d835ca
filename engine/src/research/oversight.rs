//! The service operations a signed-in account reaches that are not about
//! one study: resolving the acting account, role changes, second factors,
//! and reading the audit log. The server calls these instead of reaching
//! into the keystore or the log itself, so each is decided (and audited)
//! here, once, for every interface.

use cohort_ledger_bridge::Role;
use rusqlite::Connection;

use super::{Session, Viewer};
use crate::access::roles::{self, RoleChanged};
use crate::audit;
use cohort_ledger_bridge::Account;

use crate::keys::accounts;
use crate::keys::second_factor::{self, FactorError};
use crate::{Error, Result};

/// The roles that may read the whole audit log besides the operator.
pub const AUDIT_READERS: [Role; 3] = [Role::Steward, Role::Auditor, Role::Admin];

impl Session {
    /// The account `name`, with its key unwrapped: who a call acts as.
    pub fn account(&self, conn: &Connection, name: &str) -> Result<Account> {
        accounts::get(conn, self.keys.as_ref(), name)
    }

    /// `admin` grants (or revokes) `role` to the account `name`; the
    /// contract decides whether `admin` may, and the change or its refusal
    /// is audited ([`roles::change`]).
    pub async fn change_role(
        &self,
        conn: &Connection,
        admin: &Account,
        name: &str,
        role: Role,
        grant: bool,
    ) -> Result<RoleChanged> {
        roles::change(
            conn,
            self.keys.as_ref(),
            &self.client,
            admin,
            name,
            role,
            grant,
        )
        .await
    }

    /// Checks `name`'s second-factor `code` at `unix_time` (each code once):
    /// the enrollment it matched, or why it was refused.
    pub fn verify_second_factor(
        &self,
        conn: &Connection,
        name: &str,
        code: Option<&str>,
        unix_time: u64,
    ) -> Result<std::result::Result<String, FactorError>> {
        second_factor::verify(conn, self.keys.as_ref(), name, code, unix_time)
    }

    /// The last `limit` audit entries (about `target` only, if given), for
    /// the operator or an account holding one of [`AUDIT_READERS`] now.
    pub async fn audit_log(
        &self,
        conn: &Connection,
        viewer: Viewer,
        limit: usize,
        target: Option<&str>,
    ) -> Result<Vec<audit::Entry>> {
        self.may_read_audit(conn, viewer).await?;
        audit::tail(conn, limit, target)
    }

    /// Whether the audit log's hash chain is intact, for the same readers
    /// as [`Session::audit_log`].
    pub async fn audit_verify(
        &self,
        conn: &Connection,
        viewer: Viewer,
    ) -> Result<audit::Verification> {
        self.may_read_audit(conn, viewer).await?;
        audit::verify(conn)
    }

    /// The last `limit` entries about the patient linked to `me`: a
    /// patient's own access log.
    pub fn access_log(
        &self,
        conn: &Connection,
        me: &Account,
        limit: usize,
    ) -> Result<Vec<audit::Entry>> {
        let patient = self.patient_of(conn, me)?;
        audit::about_patient(conn, &patient, limit)
    }

    /// Refuses unless `viewer` is the operator or holds one of
    /// [`AUDIT_READERS`] on chain now.
    async fn may_read_audit(&self, conn: &Connection, viewer: Viewer) -> Result<()> {
        let address = match viewer {
            Viewer::Operator => return Ok(()),
            Viewer::Account(address) => address,
        };
        for role in AUDIT_READERS {
            if self.has_role(role, address).await? {
                return Ok(());
            }
        }
        let name = accounts::name_of(conn, address)?.unwrap_or_else(|| format!("{address:#x}"));
        Err(Error::Forbidden(format!(
            "`{name}` may not read the audit log: it needs the steward, auditor or admin role"
        )))
    }
}
