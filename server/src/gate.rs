//! Who is calling, and whether their token may still act, decided at every
//! call rather than at sign-in: the token must be issued, unexpired and not
//! revoked ([`Auth`]); with `[auth] second_factor` on, it must have been
//! signed in with the TOTP secret its account has enrolled *now*; and a
//! token signed in with a passkey acts only while that passkey is still
//! registered. A TOTP secret enrolled again, or a passkey removed, take
//! effect at the next call. What the account may then do is decided by
//! the on-chain checks of the service behind (roles are read from the
//! chain at each call, never cached).
//!
//! **Who needs the second factor: every account.** The roles that read
//! records or move ether are patient (reads their records, pays visits,
//! claims compensation), provider and emergency (read records, are paid),
//! insurer (pays covered shares), researcher (sends a study's escrow),
//! steward (approves studies that spend the budget) and admin (grants
//! every role). The rest cannot be told apart at sign-in: a delegate (a
//! caregiver) reads a patient's records by a delegation that needs no role
//! at all, and any account can hold ether. So the factor is asked of every
//! sign-in, not of a list of roles that a delegation would go around.
//! Every refusal of a sign-in or of a token names what is missing and is
//! written to the audit log (nothing else changes).

use std::sync::Arc;

use cohort_ledger_bridge::Role;
use cohort_ledger_bridge::alloy::primitives::Address;
use tonic::{Request, Status};

use super::auth::{Auth, AuthError, Principal, authorization};
use super::{account_name, internal, status};
use cohort_engine::research::Session;
use cohort_engine::{
    DataDir, audit,
    keys::{passkeys, second_factor},
};

/// The server's one check of its callers (Flight SQL, the study API and
/// the web page all go through it).
pub struct Gate {
    auth: Arc<Auth>,
    session: Arc<Session>,
    dir: DataDir,
    /// Whether every sign-in must add a TOTP code.
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

    /// Whether sign-ins must add a TOTP code (`[auth] second_factor`).
    pub(crate) fn second_factor(&self) -> bool {
        self.second_factor
    }

    /// The token in `authorization`, whatever it may do now; an expired
    /// token's refusal is audited (once: it is forgotten as it is refused).
    pub(crate) fn principal(&self, authorization: Option<&str>) -> Result<Principal, Status> {
        self.auth.principal(authorization).map_err(|e| {
            if let AuthError::Expired(address) = e {
                self.refused(address, "token", "the token has expired");
            }
            Status::unauthenticated(e.to_string())
        })
    }

    /// The account `request` comes from, if its token may act now;
    /// UNAUTHENTICATED saying why otherwise.
    pub(crate) async fn caller<T>(&self, request: &Request<T>) -> Result<Address, Status> {
        let principal = self.principal(authorization(request))?;
        let missing = self.missing(&principal)?;
        match missing.first() {
            None => Ok(principal.address),
            Some(why) => {
                self.refused(principal.address, "token", why);
                Err(Status::unauthenticated(why.clone()))
            }
        }
    }

    /// What `principal` lacks to act now, each in words; empty: nothing.
    pub(crate) fn missing(&self, principal: &Principal) -> Result<Vec<String>, Status> {
        let mut missing = Vec::new();
        let conn = self.dir.connect().map_err(internal)?;
        if let Some(credential) = &principal.factors.passkey
            && !passkeys::exists(&conn, credential).map_err(internal)?
        {
            missing.push(
                "the passkey this token was signed in with was removed: sign in again".to_string(),
            );
        }
        if self.second_factor {
            let name = account_name(&self.dir, principal.address)?;
            let enrolled = second_factor::enrollment(&conn, &name).map_err(internal)?;
            match (&principal.factors.totp, &enrolled) {
                (Some(signed_in_with), Some(now)) if signed_in_with == now => {}
                (None, _) => missing.push(format!(
                    "this token of `{name}` was issued without a TOTP code, which every sign-in \
                     needs: sign in again with one (`cohort login --totp`, or the code on the page)"
                )),
                _ => missing.push(format!(
                    "`{name}`'s second factor was enrolled again or removed since this sign-in: \
                     sign in again"
                )),
            }
        }
        Ok(missing)
    }

    /// The sign-in's TOTP check: the enrollment it was checked against
    /// (the token records it), or `None` when the factor is off. A refusal
    /// is audited.
    pub(crate) async fn check_second_factor(
        &self,
        address: Address,
        code: Option<&str>,
    ) -> Result<Option<String>, Status> {
        if !self.second_factor {
            return Ok(None);
        }
        let name = account_name(&self.dir, address)?;
        let conn = self.dir.connect().map_err(internal)?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_err(|_| Status::internal("the clock is before 1970"))?
            .as_secs();
        match self
            .session
            .verify_second_factor(&conn, &name, code, now)
            .map_err(internal)?
        {
            Ok(enrollment) => Ok(Some(enrollment)),
            Err(e) => {
                self.refused(address, "totp", &e.to_string());
                Err(Status::unauthenticated(e.to_string()))
            }
        }
    }

    /// Writes a refused sign-in or token to the audit log as
    /// `auth.refused` (the factor and the reason; never a code or token).
    /// A log that cannot be written is logged, and the refusal stands.
    pub(crate) fn refused(&self, account: Address, factor: &str, reason: &str) {
        let detail = serde_json::json!({ "factor": factor, "reason": reason });
        if let Err(e) = self.audit(account, "auth.refused", account, detail) {
            tracing::error!(error = %e.message(), "a refusal could not be audited");
        }
        tracing::info!(account = %account, factor, "refused");
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
