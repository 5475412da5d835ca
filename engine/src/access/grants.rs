//! Patients' grants and delegations, and providers' credentials: each a
//! transaction signed by the acting account, so the contract decides who
//! may (the patient, their delegate, the issuer); each change and each
//! refusal is audited with the authenticated actor.
//!
//! A grant is also a key: once the chain has taken a grant (or a
//! delegation), the custodian seals the patient's data key to the
//! grantee's public key (`keys::data_keys`, with the keystore `keys`); once it has taken a
//! revocation, the grantee's copies are deleted and the patient's key
//! rotated, so versions written later are sealed under a key the grantee
//! never held.

use cohort_ledger_bridge::alloy::primitives::{Address, keccak256};
use cohort_ledger_bridge::contracts::CohortAccess;
use cohort_ledger_bridge::{Client, Receipt, Target, Tx};
use rusqlite::Connection;
use serde::Serialize;

use super::scope::{self, Level, Purpose};
use super::{Actor, patients};
use crate::keys::accounts;
use crate::keys::data_keys::{self, Holder, Role};
use crate::keys::keystore::KeyStore;
use crate::{Error, Result, audit};

/// What a patient (or their delegate) grants a provider.
#[derive(Debug, Clone)]
pub struct GrantRequest {
    /// The provider's account name.
    pub provider: String,
    /// The level.
    pub level: Level,
    /// Purposes of use (bits of [`Purpose`]).
    pub purposes: u8,
    /// Record kinds (bits, [`scope::ALL_KINDS`] for every kind).
    pub kinds: u32,
    /// For how long, in seconds (at most 366 days).
    pub duration_secs: u64,
    /// The patient a delegate acts for; `None`: the actor is the patient.
    pub on_behalf_of: Option<String>,
}

/// A grant as listed.
#[derive(Debug, Clone, Serialize)]
pub struct GrantInfo {
    /// The patient's address.
    pub patient: String,
    /// The provider's address.
    pub provider: String,
    /// The provider's account name, when known here.
    pub provider_name: Option<String>,
    /// The level.
    pub level: &'static str,
    /// Purposes of use.
    pub purposes: Vec<&'static str>,
    /// Record types.
    pub kinds: Vec<&'static str>,
    /// When it lapses (unix seconds).
    pub expires_at: u64,
    /// Whether it is in force now (not revoked, not expired).
    pub active: bool,
    /// Who granted it (the patient or a delegate).
    pub granted_by: String,
}

/// A change made on chain.
#[derive(Debug, Clone, Serialize)]
pub struct Changed {
    /// What was done.
    pub action: &'static str,
    /// The patient (address) it concerns, if any.
    pub patient: Option<String>,
    /// The other account (provider, delegate).
    pub account: String,
    /// The transaction.
    pub tx_hash: String,
}

/// A contract's refusal of an access operation, in words that say what is
/// missing and how to get it (the contract's error name kept in brackets).
pub(crate) fn explain(actor: &Actor, e: Error) -> Error {
    let Error::Ledger(cohort_ledger_bridge::Error::Reverted(revert)) = &e else {
        return e;
    };
    let who = actor.name();
    let said = match revert.name.as_str() {
        "NotEmergencyProvider" => Error::Forbidden(format!(
            "`{who}` does not hold the emergency role (an admin grants it: `cohort account grant {who} emergency`)"
        )),
        "Suspended" => Error::Forbidden(format!(
            "`{who}`'s emergency overrides are suspended after an unjustified review, until an admin restores them (`cohort emergency restore {who}`)"
        )),
        "NotCredentialed" => Error::Forbidden(format!(
            "`{who}` has no unexpired provider credential (an issuer attests one: `cohort credential attest {who}`)"
        )),
        "NotAPatient" => Error::Forbidden(
            "that account is not a registered patient (a patient's account is linked with `cohort account new NAME --patient ID`)"
                .into(),
        ),
        "NotAProvider" => Error::Invalid(
            "the account granted access does not hold the provider role (an admin grants it: `cohort account grant NAME provider`)"
                .into(),
        ),
        "NotADelegate" => Error::Forbidden(format!(
            "`{who}` is neither that patient nor an active delegate of theirs"
        )),
        "ExceedsDelegation" => Error::Forbidden(format!(
            "the grant goes beyond `{who}`'s delegation (its level or its end)"
        )),
        "NoSuchGrant" => Error::Invalid("there is no grant in force to revoke".into()),
        "InvalidDuration" => Error::Invalid(
            "a grant or delegation lasts from one second to 366 days".into(),
        ),
        "AccessControlUnauthorizedAccount" => Error::Forbidden(format!(
            "`{who}` does not hold the role this needs on chain"
        )),
        "NotAllowedToEnd" => Error::Forbidden(format!(
            "`{who}` may not end this override: the patient, a delegate, the provider or an auditor may"
        )),
        "AlreadyEnded" => Error::Invalid("this override has already ended".into()),
        "AlreadyReviewed" => Error::Invalid("this override has already been reviewed".into()),
        "NoSuchEmergency" => Error::NotFound("there is no such emergency override".into()),
        "NotIssuerOfCredential" => Error::Forbidden(format!(
            "`{who}` neither attested this credential nor is an admin"
        )),
        "NotAGuardian" => Error::Forbidden(format!(
            "`{who}` is not one of this patient's guardians (of the current round)"
        )),
        "AlreadyApproved" => Error::Invalid(format!("`{who}` has already approved this recovery")),
        "KeyInUse" => Error::Invalid(
            "that key already acts for a patient: a recovery moves control to a fresh account (`cohort account new NAME`)".into(),
        ),
        "NoGuardians" => Error::Invalid(
            "the patient has named no guardians (`cohort recovery guardians`)".into(),
        ),
        "RecoveryOpen" => Error::Invalid(
            "a recovery of this patient is open: it must complete or be cancelled first (`cohort recovery show`)".into(),
        ),
        "NoSuchRecovery" => Error::NotFound("there is no such recovery".into()),
        "RecoveryNotOpen" => Error::Invalid("this recovery is not open (completed or cancelled)".into()),
        "RecoveryStale" => Error::Invalid(
            "the patient's guardians changed since this recovery opened".into(),
        ),
        "TooFewApprovals" => Error::Forbidden(
            "not enough of the patient's guardians have approved this recovery yet".into(),
        ),
        "NotAttested" => Error::Forbidden(
            "no credentialed provider has attested the person's identity yet (`cohort recovery attest`)".into(),
        ),
        "AttesterConflict" => Error::Forbidden(format!(
            "`{who}` is a guardian of the patient or a party to this recovery, so cannot attest the identity"
        )),
        "NotTheNewKey" => Error::Forbidden(format!(
            "`{who}` is not the account this recovery moves control to"
        )),
        "NotAllowedToCancel" => Error::Forbidden(format!(
            "`{who}` may not cancel this recovery: the new account or an auditor may"
        )),
        "RecoveryNotCompleted" => Error::Invalid("this recovery has not completed".into()),
        "InvalidGuardians" => Error::Invalid(
            "name 1 to 16 distinct guardians (not yourself) and a threshold from 1 to their number".into(),
        ),
        _ => return e,
    };
    with_contract_error(said, &revert.message)
}

/// `said` (a contract's refusal in words) with the contract's own error
/// appended in brackets, for whoever needs the exact name.
pub(crate) fn with_contract_error(said: Error, message: &str) -> Error {
    match said {
        Error::Forbidden(m) => Error::Forbidden(format!("{m} ({message})")),
        Error::Invalid(m) => Error::Invalid(format!("{m} ({message})")),
        Error::NotFound(m) => Error::NotFound(format!("{m} ({message})")),
        other => other,
    }
}

/// Appends the audit entry of `action` by `actor`, with the refusal's
/// reason when `sent` failed, and passes `sent` on (a contract's refusal
/// explained).
pub(crate) fn audited<T>(
    conn: &Connection,
    actor: &Actor,
    action: &str,
    target: &str,
    purpose: &str,
    detail: serde_json::Value,
    sent: Result<T>,
) -> Result<T> {
    let sent = sent.map_err(|e| explain(actor, e));
    audit::outcome(conn, actor.name(), action, target, purpose, detail, sent)
}

fn account_address(conn: &Connection, name: &str, what: &str) -> Result<Address> {
    accounts::address_of(conn, name)?
        .ok_or_else(|| Error::NotFound(format!("no account `{name}` to {what}")))?
        .parse()
        .map_err(|_| Error::Invalid(format!("account `{name}` has a bad address")))
}

/// Registers `actor` as a patient on chain unless their key already acts
/// for one (their own identity, or one a recovery moved to them);
/// idempotent, a patient's first grant does it.
pub async fn ensure_patient(client: &Client, actor: &Actor) -> Result<()> {
    let acts_for = client
        .view(
            Target::Access,
            CohortAccess::patientOfCall {
                key: actor.address(),
            },
        )
        .await?;
    if acts_for == Address::ZERO {
        client
            .send(
                actor.account(),
                Target::Access,
                CohortAccess::registerPatientCall {},
            )
            .await?;
    }
    Ok(())
}

fn tx(receipt: &Receipt) -> String {
    format!("{:#x}", receipt.tx_hash)
}

/// What one access transaction is about: its audit entry and its answer.
struct Step<'a> {
    /// The audit action (`access.grant`, ...).
    audit: &'static str,
    /// What the answer says was done.
    done: &'static str,
    /// The other account (provider, delegate): the audit target.
    target: Address,
    /// Its name.
    account: &'a str,
    detail: serde_json::Value,
}

/// Sends the transaction `prepared` yields (with the patient it concerns)
/// as `actor`, and audits it, done or refused (a refusal explained).
async fn send_step(
    conn: &Connection,
    client: &Client,
    actor: &Actor,
    step: Step<'_>,
    prepared: impl std::future::Future<Output = Result<(Tx, Option<Address>)>>,
) -> Result<Changed> {
    let sent = async {
        let (call, patient) = prepared.await?;
        let receipt = client.ledger().send(actor.account(), call).await?;
        Ok(Changed {
            action: step.done,
            patient: patient.map(|p| format!("{p:#x}")),
            account: step.account.to_string(),
            tx_hash: tx(&receipt),
        })
    }
    .await;
    audited(
        conn,
        actor,
        step.audit,
        &format!("{:#x}", step.target),
        "operations",
        step.detail,
        sent,
    )
}

/// The actor grants a provider access to their records (or, as a
/// delegate, to the records of `on_behalf_of`).
pub async fn grant(
    conn: &Connection,
    keys: &dyn KeyStore,
    client: &Client,
    actor: &Actor,
    req: &GrantRequest,
) -> Result<Changed> {
    let provider = account_address(conn, &req.provider, "grant access to")?;
    let step = Step {
        audit: "access.grant",
        done: "granted",
        target: provider,
        account: &req.provider,
        detail: serde_json::json!({
            "provider": req.provider,
            "level": req.level.name(),
            "purposes": Purpose::names(req.purposes),
            "kinds": scope::kind_names(req.kinds),
            "duration_secs": req.duration_secs,
        }),
    };
    let changed = send_step(conn, client, actor, step, async {
        Ok(match &req.on_behalf_of {
            None => {
                ensure_patient(client, actor).await?;
                let call = CohortAccess::grantAccessScopedCall {
                    provider,
                    duration: req.duration_secs,
                    level: req.level.code(),
                    purposes: req.purposes,
                    kinds: req.kinds,
                };
                (
                    client.tx(Target::Access, call),
                    Some(patients::identity_of(conn, actor)?),
                )
            }
            Some(p) => {
                let patient = patients::find(conn, p)?.address;
                let call = CohortAccess::grantAccessForScopedCall {
                    patient,
                    provider,
                    duration: req.duration_secs,
                    level: req.level.code(),
                    purposes: req.purposes,
                    kinds: req.kinds,
                };
                (client.tx(Target::Access, call), Some(patient))
            }
        })
    })
    .await?;
    let patient = vault_patient(conn, actor, req.on_behalf_of.as_deref())?;
    if let Some(patient_id) = patient {
        data_keys::seal_for_holder(
            conn,
            keys,
            actor.name(),
            &patient_id,
            &Holder::account(conn, keys, &req.provider)?,
            Role::Grantee,
        )?;
    }
    Ok(changed)
}

/// The vault patient an access change concerns: the actor's own, or the
/// one a delegate acts for; `None` for an account linked to no vault
/// patient (nothing of theirs to seal).
fn vault_patient(
    conn: &Connection,
    actor: &Actor,
    on_behalf_of: Option<&str>,
) -> Result<Option<String>> {
    Ok(match on_behalf_of {
        None => patients::of_account(conn, actor.name())?.map(|p| p.patient_id),
        Some(p) => Some(patients::find(conn, p)?.patient_id),
    })
}

/// The patient (or their delegate) revokes a provider's grant; it takes
/// effect on the provider's next call. Once the chain has taken it, the
/// provider's copies of the data key are deleted and the key rotated
/// (`data_keys::revoke_holder`). If that local step did not happen (a
/// crash after the chain took the revocation), revoking again finds no
/// grant on chain but the provider's copies still here, and completes it.
pub async fn revoke(
    conn: &Connection,
    keys: &dyn KeyStore,
    client: &Client,
    actor: &Actor,
    provider_name: &str,
    on_behalf_of: Option<&str>,
) -> Result<Changed> {
    let provider = account_address(conn, provider_name, "revoke access from")?;
    let patient_id = vault_patient(conn, actor, on_behalf_of)?;
    let step = Step {
        audit: "access.revoke",
        done: "revoked",
        target: provider,
        account: provider_name,
        detail: serde_json::json!({ "provider": provider_name }),
    };
    let sent = send_step(conn, client, actor, step, async {
        let patient = match on_behalf_of {
            None => patients::identity_of(conn, actor)?,
            Some(p) => patients::find(conn, p)?.address,
        };
        let call = CohortAccess::revokeAccessCall { patient, provider };
        Ok((client.tx(Target::Access, call), Some(patient)))
    })
    .await;
    let Some(patient_id) = patient_id else {
        return sent;
    };
    let holds = data_keys::holds_any(conn, &patient_id, &format!("{provider:#x}"))?;
    match sent {
        Ok(changed) => {
            data_keys::revoke_holder(
                conn,
                keys,
                actor.name(),
                &patient_id,
                &format!("{provider:#x}"),
                &format!("revoke {provider_name}"),
            )?;
            Ok(changed)
        }
        // The chain had already taken it; the keys had not followed.
        Err(Error::Invalid(m)) if holds && m.starts_with("there is no grant in force") => {
            data_keys::revoke_holder(
                conn,
                keys,
                actor.name(),
                &patient_id,
                &format!("{provider:#x}"),
                &format!("revoke {provider_name} (completed)"),
            )?;
            Ok(Changed {
                action: "revoked (the chain had already revoked the grant; its keys are now deleted and rotated)",
                patient: None,
                account: provider_name.to_string(),
                tx_hash: String::new(),
            })
        }
        Err(e) => Err(e),
    }
}

/// The patient names a delegate (a caregiver) who may read their records
/// and grant and revoke access for them, up to `max_level`, for a while.
pub async fn delegate(
    conn: &Connection,
    keys: &dyn KeyStore,
    client: &Client,
    actor: &Actor,
    delegate_name: &str,
    max_level: Level,
    duration_secs: u64,
) -> Result<Changed> {
    let delegate = account_address(conn, delegate_name, "delegate to")?;
    let step = Step {
        audit: "access.delegate",
        done: "delegated",
        target: delegate,
        account: delegate_name,
        detail: serde_json::json!({
            "delegate": delegate_name, "max_level": max_level.name(), "duration_secs": duration_secs,
        }),
    };
    let changed = send_step(conn, client, actor, step, async {
        ensure_patient(client, actor).await?;
        let call = CohortAccess::setDelegateCall {
            delegate,
            maxLevel: max_level.code(),
            duration: duration_secs,
        };
        Ok((
            client.tx(Target::Access, call),
            Some(patients::identity_of(conn, actor)?),
        ))
    })
    .await?;
    if let Some(patient_id) = vault_patient(conn, actor, None)? {
        data_keys::seal_for_holder(
            conn,
            keys,
            actor.name(),
            &patient_id,
            &Holder::account(conn, keys, delegate_name)?,
            Role::Delegate,
        )?;
    }
    Ok(changed)
}

/// The patient ends a delegation.
pub async fn undelegate(
    conn: &Connection,
    keys: &dyn KeyStore,
    client: &Client,
    actor: &Actor,
    delegate_name: &str,
) -> Result<Changed> {
    let delegate = account_address(conn, delegate_name, "end the delegation of")?;
    let step = Step {
        audit: "access.undelegate",
        done: "undelegated",
        target: delegate,
        account: delegate_name,
        detail: serde_json::json!({ "delegate": delegate_name }),
    };
    let changed = send_step(conn, client, actor, step, async {
        let call = CohortAccess::revokeDelegateCall { delegate };
        Ok((
            client.tx(Target::Access, call),
            Some(patients::identity_of(conn, actor)?),
        ))
    })
    .await?;
    if let Some(patient_id) = vault_patient(conn, actor, None)? {
        data_keys::revoke_holder(
            conn,
            keys,
            actor.name(),
            &patient_id,
            &format!("{delegate:#x}"),
            &format!("undelegate {delegate_name}"),
        )?;
    }
    Ok(changed)
}

/// An issuer attests a provider's licence until `expires_at` (unix
/// seconds); only the licence's hash goes on chain.
pub async fn attest_credential(
    conn: &Connection,
    client: &Client,
    issuer: &Actor,
    provider_name: &str,
    license: &str,
    expires_at: u64,
) -> Result<Changed> {
    let provider = account_address(conn, provider_name, "attest a credential of")?;
    let step = Step {
        audit: "credential.attest",
        done: "attested",
        target: provider,
        account: provider_name,
        detail: serde_json::json!({ "provider": provider_name, "expires_at": expires_at }),
    };
    send_step(conn, client, issuer, step, async {
        let call = CohortAccess::attestCredentialCall {
            provider,
            licenseHash: keccak256(license.as_bytes()),
            expiresAt: expires_at,
        };
        Ok((client.tx(Target::Access, call), None))
    })
    .await
}

/// The issuer of `provider_name`'s credential attests the jurisdiction
/// they practise in (on chain, beside the credential: `attestJurisdiction`).
pub async fn attest_jurisdiction(
    conn: &Connection,
    client: &Client,
    issuer: &Actor,
    provider_name: &str,
    jurisdiction: &super::geo::Jurisdiction,
) -> Result<Changed> {
    let provider = account_address(conn, provider_name, "attest the jurisdiction of")?;
    let step = Step {
        audit: "credential.jurisdiction",
        done: "jurisdiction attested",
        target: provider,
        account: provider_name,
        detail: serde_json::json!({ "provider": provider_name, "jurisdiction": jurisdiction }),
    };
    send_step(conn, client, issuer, step, async {
        let call = CohortAccess::attestJurisdictionCall {
            provider,
            jurisdiction: jurisdiction.to_bytes8().into(),
        };
        Ok((client.tx(Target::Access, call), None))
    })
    .await
}

/// A patient sets their own geographic restriction (bits of
/// [`super::geo::DOMESTIC_READS_ONLY`] and
/// [`super::geo::NO_CROSS_BORDER_RESEARCH`]), as their own transaction:
/// no one else can, and it only ever refuses more than the deployment.
pub async fn set_geo_restriction(
    conn: &Connection,
    client: &Client,
    patient: &Actor,
    restrictions: u8,
) -> Result<Changed> {
    let step = Step {
        audit: "geo.restrict",
        done: "geographic restriction set",
        target: patient.address(),
        account: patient.name(),
        detail: serde_json::json!({ "restrictions": super::geo::restriction_names(restrictions) }),
    };
    send_step(conn, client, patient, step, async {
        let call = CohortAccess::setGeoRestrictionCall { restrictions };
        Ok((
            client.tx(Target::Access, call),
            Some(patients::identity_of(conn, patient)?),
        ))
    })
    .await
}

/// The issuer who attested a credential (or an admin) revokes it.
pub async fn revoke_credential(
    conn: &Connection,
    client: &Client,
    actor: &Actor,
    provider_name: &str,
) -> Result<Changed> {
    let provider = account_address(conn, provider_name, "revoke the credential of")?;
    let step = Step {
        audit: "credential.revoke",
        done: "credential revoked",
        target: provider,
        account: provider_name,
        detail: serde_json::json!({ "provider": provider_name }),
    };
    send_step(conn, client, actor, step, async {
        let call = CohortAccess::revokeCredentialCall { provider };
        Ok((client.tx(Target::Access, call), None))
    })
    .await
}

/// An admin lets a provider whose overrides were suspended open them again.
pub(super) async fn restore_emergency(
    conn: &Connection,
    client: &Client,
    admin: &Actor,
    provider_name: &str,
) -> Result<Changed> {
    let provider = account_address(conn, provider_name, "restore the emergency role of")?;
    let step = Step {
        audit: "emergency.restore",
        done: "restored",
        target: provider,
        account: provider_name,
        detail: serde_json::json!({ "provider": provider_name }),
    };
    send_step(conn, client, admin, step, async {
        let call = CohortAccess::restoreEmergencyCall { provider };
        Ok((client.tx(Target::Access, call), None))
    })
    .await
}

/// A patient's grants, read from the chain itself (the follower's mirror
/// names the providers; each grant's state is asked of the contract).
pub async fn list(conn: &Connection, client: &Client, patient: Address) -> Result<Vec<GrantInfo>> {
    cohort_ledger_bridge::Follower::install(conn)?;
    let providers: Vec<String> = conn
        .prepare("SELECT provider FROM ledger_grants WHERE patient = ?1 ORDER BY block")?
        .query_map([format!("{patient:#x}")], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    let now = client.ledger().timestamp().await?;
    let mut out = Vec::new();
    for provider in providers {
        let address: Address = provider
            .parse()
            .map_err(|_| Error::Invalid(format!("a bad address in ledger_grants: {provider}")))?;
        let g = client
            .view(
                Target::Access,
                CohortAccess::grantOfCall {
                    patient,
                    provider: address,
                },
            )
            .await?;
        out.push(GrantInfo {
            patient: format!("{patient:#x}"),
            provider: provider.clone(),
            provider_name: accounts::name_of(conn, address)?,
            level: Level::from_code(g.level).map_or("none", Level::name),
            purposes: Purpose::names(g.purposes),
            kinds: scope::kind_names(g.kinds),
            expires_at: g.expiresAt,
            active: g.level != 0 && g.revokedAt == 0 && now < g.expiresAt,
            granted_by: format!("{:#x}", g.grantedBy),
        });
    }
    Ok(out)
}
