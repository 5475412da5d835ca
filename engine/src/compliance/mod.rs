//! The duties HIPAA and GDPR put on the operator beyond access control:
//! retention (purge after N years, legal holds), the accounting of
//! disclosures a patient may request, and the regulatory report. One
//! service for every interface: each operation checks the caller's role
//! on chain at the call and is audited, a refusal too.

use chrono::{DateTime, Utc};
use cohort_ledger_bridge::{Client, Role};

use crate::access::Actor;
use crate::access::patients;
use crate::datadir::DataDir;
use crate::records::vault::Vault;
use crate::{Error, Result, audit};

pub mod disclosures;
pub mod report;
pub mod retention;

/// Who keeps the records' lifecycle: retention and legal holds.
pub const RECORDS_OFFICERS: [Role; 1] = [Role::Admin];
/// Who may read the regulatory report, or a patient's accounting for them.
pub const PRIVACY_OFFICERS: [Role; 2] = [Role::Admin, Role::Auditor];

/// The compliance service over a vault and the chain that holds the roles.
pub struct Compliance<'a> {
    vault: &'a Vault,
    client: &'a Client,
}

impl<'a> Compliance<'a> {
    /// The service over `vault`, its roles read from `client`'s chain.
    pub fn new(vault: &'a Vault, client: &'a Client) -> Compliance<'a> {
        Compliance { vault, client }
    }

    /// Whether `actor` holds one of `roles` on chain now.
    async fn holds(&self, actor: &Actor, roles: &[Role]) -> Result<bool> {
        for role in roles {
            if self.client.has_role(*role, actor.address()).await? {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Refuses (audited as `<action>.refused`) unless `actor` holds one of
    /// `roles`.
    async fn require(
        &self,
        actor: &Actor,
        roles: &[Role],
        action: &str,
        target: &str,
        what: &str,
    ) -> Result<()> {
        if self.holds(actor, roles).await? {
            return Ok(());
        }
        let names: Vec<String> = roles
            .iter()
            .map(|r| format!("{r:?}").to_lowercase())
            .collect();
        let refusal: Result<()> = Err(Error::Forbidden(format!(
            "`{}` holds no {} role on chain: {what} is theirs",
            actor.name(),
            names.join(" or ")
        )));
        audit::outcome(
            self.vault.conn(),
            actor.name(),
            action,
            target,
            "compliance",
            serde_json::json!({}),
            refusal,
        )
    }

    /// Keeps `resource_type` for `years` (records officers only).
    pub async fn set_policy(
        &self,
        actor: &Actor,
        resource_type: &str,
        years: u32,
    ) -> Result<retention::Policy> {
        self.require(
            actor,
            &RECORDS_OFFICERS,
            "retention.policy",
            resource_type,
            "setting a retention policy",
        )
        .await?;
        retention::set_policy(self.vault.conn(), actor.name(), resource_type, years)
    }

    /// Places a patient (account name or vault id) under legal hold.
    pub async fn hold(
        &self,
        actor: &Actor,
        patient: &str,
        reason: &str,
    ) -> Result<retention::Hold> {
        let target = format!("Patient/{patient}");
        self.require(
            actor,
            &RECORDS_OFFICERS,
            "retention.hold",
            &target,
            "a legal hold",
        )
        .await?;
        let id = patient_id(self.vault, patient);
        retention::hold(self.vault.conn(), actor.name(), &id, reason)
    }

    /// Releases a patient's legal hold.
    pub async fn release_hold(&self, actor: &Actor, patient: &str) -> Result<()> {
        let target = format!("Patient/{patient}");
        self.require(
            actor,
            &RECORDS_OFFICERS,
            "retention.release",
            &target,
            "releasing a legal hold",
        )
        .await?;
        let id = patient_id(self.vault, patient);
        retention::release_hold(self.vault.conn(), actor.name(), &id)
    }

    /// The retention policies and legal holds (admins and auditors: a hold
    /// names a patient in litigation).
    pub async fn retention(
        &self,
        actor: &Actor,
    ) -> Result<(Vec<retention::Policy>, Vec<retention::Hold>)> {
        self.require(
            actor,
            &PRIVACY_OFFICERS,
            "retention.show",
            "retention",
            "the retention policies and holds",
        )
        .await?;
        Ok((
            retention::policies(self.vault.conn())?,
            retention::holds(self.vault.conn())?,
        ))
    }

    /// Purges what the policies say is due at `now` (see [`retention::run`]).
    pub async fn run_retention(
        &self,
        actor: &Actor,
        now: DateTime<Utc>,
        dry_run: bool,
    ) -> Result<retention::Purge> {
        let action = if dry_run {
            "retention.dry-run"
        } else {
            "retention.purge"
        };
        self.require(
            actor,
            &RECORDS_OFFICERS,
            action,
            "retention",
            "running retention",
        )
        .await?;
        retention::run(self.vault, actor.name(), now, dry_run)
    }

    /// A patient's accounting of disclosures since `since` (default: six
    /// years before now), for the patient themself or a privacy officer
    /// answering their request. Audited, a refusal too.
    pub async fn disclosures(
        &self,
        actor: &Actor,
        patient: &str,
        since: Option<DateTime<Utc>>,
    ) -> Result<disclosures::Accounting> {
        let conn = self.vault.conn();
        let account =
            match patients::find(conn, patient).or_else(|_| patients::require(conn, patient)) {
                Ok(a) => a,
                Err(e) => {
                    return audit::outcome(
                        conn,
                        actor.name(),
                        "disclosures.account",
                        &format!("Patient/{patient}"),
                        "compliance",
                        serde_json::json!({}),
                        Err(e),
                    );
                }
            };
        let target = format!("Patient/{}", account.patient_id);
        if actor.name() != account.name {
            self.require(
                actor,
                &PRIVACY_OFFICERS,
                "disclosures.account",
                &target,
                "another patient's accounting of disclosures",
            )
            .await?;
        }
        let since = since.unwrap_or_else(|| {
            Utc::now()
                .checked_sub_months(chrono::Months::new(12 * disclosures::DEFAULT_YEARS))
                .expect("six years before now")
        });
        let accounting = disclosures::account(conn, &account, since);
        let detail = serde_json::json!({
            "since": since.timestamp(),
            "disclosures": accounting.as_ref().map(|a| a.disclosures.len()).unwrap_or(0),
        });
        audit::outcome(
            conn,
            actor.name(),
            "disclosures.account",
            &target,
            "compliance",
            detail,
            accounting,
        )
    }

    /// Who holds a sealed copy of which epoch of a patient's data key
    /// (`keys::data_keys`: addresses and names, never key bytes), for
    /// the patient themself or a privacy officer (admin, auditor). Audited,
    /// a refusal too.
    pub async fn key_holders(
        &self,
        actor: &Actor,
        patient: &str,
    ) -> Result<crate::keys::data_keys::Holders> {
        let conn = self.vault.conn();
        let account =
            match patients::find(conn, patient).or_else(|_| patients::require(conn, patient)) {
                Ok(a) => a,
                Err(e) => {
                    return audit::outcome(
                        conn,
                        actor.name(),
                        "keys.holders",
                        &format!("Patient/{patient}"),
                        "operations",
                        serde_json::json!({}),
                        Err(e),
                    );
                }
            };
        let target = format!("Patient/{}", account.patient_id);
        if actor.address() != account.address {
            self.require(
                actor,
                &PRIVACY_OFFICERS,
                "keys.holders",
                &target,
                "another patient's key holders",
            )
            .await?;
        }
        let holders = crate::keys::data_keys::holders(conn, &account.patient_id);
        let detail = serde_json::json!({
            "copies": holders.as_ref().map(|h| h.copies.len()).unwrap_or(0),
        });
        audit::outcome(
            conn,
            actor.name(),
            "keys.holders",
            &target,
            "operations",
            detail,
            holders,
        )
    }

    /// The regulatory report over `[from, to)` (privacy officers only);
    /// `checks` says which verifications it runs.
    pub async fn report(
        &self,
        dir: &DataDir,
        actor: &Actor,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        checks: report::Checks,
    ) -> Result<report::Report> {
        self.require(
            actor,
            &PRIVACY_OFFICERS,
            "report.generate",
            "report",
            "the regulatory report",
        )
        .await?;
        let outcome = (|| {
            if from >= to {
                return Err(Error::Invalid(format!(
                    "the report's period starts ({from}) after it ends ({to})"
                )));
            }
            let key = if checks.keyed {
                Some(self.vault.audit_key()?)
            } else {
                None
            };
            report::build(
                dir,
                self.vault,
                key.as_ref().map(|k| &k.expose()[..]),
                checks.blocks,
                from,
                to,
            )
        })();
        let detail = serde_json::json!({
            "from": from.timestamp(),
            "to": to.timestamp(),
            "clean": outcome.as_ref().map(|r| r.integrity.clean).ok(),
        });
        audit::outcome(
            self.vault.conn(),
            actor.name(),
            "report.generate",
            "report",
            "compliance",
            detail,
            outcome,
        )
    }
}

/// A patient's vault id from their account name or id (the id itself when
/// neither resolves: the refusal then names it).
fn patient_id(vault: &Vault, patient: &str) -> String {
    patients::find(vault.conn(), patient)
        .map(|p| p.patient_id)
        .unwrap_or_else(|_| patient.to_owned())
}
