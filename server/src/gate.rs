//! Who is calling, and whether their token may still act, decided at every
//! call rather than at sign-in: the token must be issued, unexpired and not
//! revoked ([`Auth`]), and an account that holds the steward or admin role
//! on chain *now* must have signed in with the second factor it has
//! enrolled *now*. Roles are read from the chain at each call, never
//! cached: a role granted or revoked, a second factor enrolled again, take
//! effect at the next call. What the account may then do is decided by the
//! research path's own on-chain checks.

use std::sync::Arc;

use cohort_ledger_bridge::Role;
use cohort_ledger_bridge::alloy::primitives::Address;
use tonic::{Request, Status};

use super::auth::Auth;
use super::{account_name, internal, status};
use cohort_engine::research::Session;
use cohort_engine::{DataDir, audit, keys::second_factor};

/// The roles whose sign-in takes a second factor: they approve studies and
/// grant roles, so a stolen key (or a stolen token from before the role
/// was granted) alone must not be enough.
const SECOND_FACTOR_ROLES: [Role; 2] = [Role::Steward, Role::Admin];

/// The server's one check of its callers (Flight SQL, the study API and
/// the web page all go through it).
pub struct Gate {
    auth: Arc<Auth>,
    session: Arc<Session>,
    dir: DataDir,
    /// Whether stewards and administrators must add a TOTP code.
    second_factor: bool,
}

impl Gate {
    pub(crate) fn new(
        auth: Arc<Auth>,
        session: Arc<Session>,
        dir: DataDir,
        second_factor: bool,
    ) -> Gate {
        Gate {
            auth,
            session,
            dir,
            second_factor,
        }
    }

    /// The challenges and tokens.
    pub(crate) fn auth(&self) -> &Auth {
        &self.auth
    }

    /// The account `request` comes from, if its token may act now;
    /// UNAUTHENTICATED saying why otherwise.
    pub(crate) async fn caller<T>(&self, request: &Request<T>) -> Result<Address, Status> {
        let principal = self.auth.principal_of(request)?;
        let address = principal.address;
        if !self.needs_second_factor(address).await? {
            return Ok(address);
        }
        let name = account_name(&self.dir, address)?;
        let conn = self.dir.connect().map_err(internal)?;
        let enrolled = second_factor::enrollment(&conn, &name).map_err(internal)?;
        match (&principal.factor, &enrolled) {
            (Some(signed_in_with), Some(now)) if signed_in_with == now => Ok(address),
            (None, _) => Err(Status::unauthenticated(format!(
                "`{name}` holds the steward or admin role now, and this token was issued without \
                 a second factor: sign in again with one (`cohort login --totp`)"
            ))),
            _ => Err(Status::unauthenticated(format!(
                "`{name}`'s second factor was enrolled again or removed since this sign-in: \
                 sign in again"
            ))),
        }
    }

    /// Whether `address` must have signed in with a second factor: it
    /// holds a [`SECOND_FACTOR_ROLES`] role now.
    async fn needs_second_factor(&self, address: Address) -> Result<bool, Status> {
        if !self.second_factor {
            return Ok(false);
        }
        for role in SECOND_FACTOR_ROLES {
            if self.session.has_role(role, address).await.map_err(status)? {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// The sign-in's TOTP check for an account that needs one: the
    /// enrollment it was checked against (the token records it), or
    /// `None` when no second factor is due.
    pub(crate) async fn check_second_factor(
        &self,
        address: Address,
        code: Option<&str>,
    ) -> Result<Option<String>, Status> {
        if !self.needs_second_factor(address).await? {
            return Ok(None);
        }
        let name = account_name(&self.dir, address)?;
        let conn = self.dir.connect().map_err(internal)?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_err(|_| Status::internal("the clock is before 1970"))?
            .as_secs();
        self.session
            .verify_second_factor(&conn, &name, code, now)
            .map_err(internal)?
            .map(Some)
            .map_err(|e| Status::unauthenticated(e.to_string()))
    }

    /// Whether `address` holds `role` on chain now.
    pub(crate) async fn has_role(&self, role: Role, address: Address) -> Result<bool, Status> {
        self.session.has_role(role, address).await.map_err(status)
    }

    /// Records a sign-in, a sign-out or a revocation in the audit log,
    /// under the account's local name (or its address, if it has none).
    pub(crate) fn audit(
        &self,
        actor: Address,
        action: &str,
        target: Address,
        detail: serde_json::Value,
    ) -> Result<(), Status> {
        let name = |a: Address| account_name(&self.dir, a).unwrap_or_else(|_| format!("{a:#x}"));
        let conn = self.dir.connect().map_err(status)?;
        audit::append(
            &conn,
            &audit::Event {
                actor: &name(actor),
                action,
                target: &format!("account/{}", name(target)),
                purpose: "security",
                detail,
            },
        )
        .map_err(status)?;
        Ok(())
    }
}
