//! Emergency access, the six steps: (1) a provider holding the emergency
//! role and a credential opens an override on a patient with a reason;
//! (2) the contract gives them read access for treatment that expires on
//! its own (`emergencyDuration`, 24 h unless an admin sets it); (3) the
//! patient and their delegates are notified through the outbox, in the
//! same transaction as the audit entry; (4) every read under it is traced
//! on chain and audited as an emergency read (see `records::clinical`);
//! (5) each override waits in the auditors' review queue, and an
//! unjustified finding suspends the provider's overrides until an admin
//! restores them; (6) it ends at its expiry, or earlier by the patient, a
//! delegate, the provider or an auditor, and the provider's reads stop at
//! the next call.
//!
//! Only the reason's hash goes on chain; its text stays in `cohort.db`
//! for the patient and the reviewers.

use cohort_ledger_bridge::alloy::primitives::{Address, U256, keccak256};
use cohort_ledger_bridge::contracts::CohortAccess;
use cohort_ledger_bridge::{Client, Target};
use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;

use super::grants::{Changed, audited};
use super::{Actor, notifications, patients};
use crate::keys::accounts;
use crate::{Error, Result};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS access_emergencies (
    id INTEGER PRIMARY KEY, patient_id TEXT NOT NULL, reason TEXT NOT NULL, finding TEXT,
    opened_at TEXT NOT NULL
);
";

fn install(conn: &Connection) -> Result<()> {
    conn.execute_batch(SCHEMA)?;
    notifications::install(conn)
}

/// An override as the review queue shows it.
#[derive(Debug, Clone, Serialize)]
pub struct EmergencyInfo {
    /// Its id on chain.
    pub id: u64,
    /// The patient's address.
    pub patient: String,
    /// The patient's vault id, when linked here.
    pub patient_id: Option<String>,
    /// The provider's address.
    pub provider: String,
    /// The provider's account name, when known here.
    pub provider_name: Option<String>,
    /// The reason given (kept here; its hash is on chain).
    pub reason: Option<String>,
    /// When it opened and when it ends (or ended), unix seconds.
    pub started_at: u64,
    /// Its end.
    pub expires_at: u64,
    /// Whether it is open now.
    pub open: bool,
    /// pending, justified or unjustified.
    pub review: &'static str,
    /// The reviewer's finding, when reviewed here.
    pub finding: Option<String>,
    /// Who ended it early, if anyone.
    pub ended_by: Option<String>,
}

/// An override opened.
#[derive(Debug, Clone, Serialize)]
pub struct Opened {
    /// Its id on chain.
    pub id: u64,
    /// The patient's address.
    pub patient: String,
    /// When it ends on its own (unix seconds).
    pub expires_at: u64,
    /// The accounts notified (the patient and their delegates).
    pub notified: Vec<String>,
    /// The transaction.
    pub tx_hash: String,
}

/// The patient's active delegates, as the chain says (the follower's
/// mirror names the candidates).
async fn delegates(conn: &Connection, client: &Client, patient: Address) -> Result<Vec<Address>> {
    cohort_ledger_bridge::Follower::install(conn)?;
    let named: Vec<String> = conn
        .prepare("SELECT delegate FROM ledger_delegations WHERE patient = ?1 AND active = 1")?
        .query_map([format!("{patient:#x}")], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    let now = client.ledger().timestamp().await?;
    let mut out = Vec::new();
    for d in named {
        let Ok(delegate) = d.parse::<Address>() else {
            continue;
        };
        let on_chain = client
            .view(
                Target::Access,
                CohortAccess::delegationOfCall { patient, delegate },
            )
            .await?;
        if on_chain.maxLevel != 0 && now < on_chain.expiresAt {
            out.push(delegate);
        }
    }
    Ok(out)
}

/// Step 1-3: `provider` opens an override on `patient` (account name or
/// patient id) for `reason`; the patient and their delegates are notified.
///
/// Break-glass is also a key: once the chain has opened the override, the
/// custodian seals the patient's data key to the provider
/// (`keys::data_keys`, audited as `keys.wrap`); ending the override
/// deletes that copy and rotates the key.
pub async fn trigger(
    conn: &Connection,
    keys: &dyn crate::keys::keystore::KeyStore,
    client: &Client,
    provider: &Actor,
    patient: &str,
    reason: &str,
) -> Result<Opened> {
    install(conn)?;
    if reason.trim().is_empty() {
        return Err(Error::Invalid(
            "an emergency needs a reason (`--reason`): it is what the review judges".into(),
        ));
    }
    let target = patients::find(conn, patient)?;
    let sent = client
        .send(
            provider.account(),
            Target::Access,
            CohortAccess::emergencyAccessCall {
                patient: target.address,
                reasonHash: keccak256(reason.as_bytes()),
            },
        )
        .await;
    let detail = serde_json::json!({ "patient_id": target.patient_id });
    let tx = conn.unchecked_transaction()?;
    let receipt = match sent {
        Ok(r) => r,
        Err(e) => {
            let e: Error = e.into();
            let refused = audited(
                &tx,
                provider,
                "emergency.trigger",
                &format!("{:#x}", target.address),
                "treatment",
                detail,
                Err::<(), _>(e),
            );
            tx.commit()?;
            return Err(refused.expect_err("a refusal"));
        }
    };
    let event = receipt
        .logs
        .iter()
        .find_map(|l| {
            use cohort_ledger_bridge::alloy::sol_types::SolEvent;
            CohortAccess::EmergencyAccessed::decode_log(&l.log).ok()
        })
        .ok_or_else(|| {
            Error::Invalid("the override's transaction has no EmergencyAccessed event".into())
        })?
        .data;
    let id = event.id.to::<u64>();
    tx.execute(
        "INSERT OR REPLACE INTO access_emergencies (id, patient_id, reason, opened_at) VALUES (?1, ?2, ?3, ?4)",
        params![id as i64, target.patient_id, reason, crate::storage::store::now()],
    )?;
    let mut recipients = vec![target.address];
    recipients.extend(delegates(conn, client, target.address).await?);
    let body = serde_json::json!({
        "emergency": id,
        "patient": format!("{:#x}", target.address),
        "provider": provider.name(),
        "provider_address": format!("{:#x}", provider.address()),
        "reason": reason,
        "expires_at": event.expiresAt,
    });
    for r in &recipients {
        notifications::notify(&tx, *r, "emergency.opened", &body)?;
    }
    let mut detail = detail;
    detail["emergency"] = id.into();
    detail["expires_at"] = event.expiresAt.into();
    detail["notified"] = recipients.len().into();
    audited(
        &tx,
        provider,
        "emergency.trigger",
        &format!("{:#x}", target.address),
        "treatment",
        detail,
        Ok(()),
    )?;
    tx.commit()?;
    crate::keys::data_keys::seal_for_holder(
        conn,
        keys,
        provider.name(),
        &target.patient_id,
        &crate::keys::data_keys::Holder::of(provider.account())?,
        crate::keys::data_keys::Role::Emergency,
    )?;
    Ok(Opened {
        id,
        patient: format!("{:#x}", target.address),
        expires_at: event.expiresAt,
        notified: recipients.iter().map(|a| format!("{a:#x}")).collect(),
        tx_hash: format!("{:#x}", receipt.tx_hash),
    })
}

async fn emergency_of(client: &Client, id: u64) -> Result<CohortAccess::Emergency> {
    Ok(client
        .view(
            Target::Access,
            CohortAccess::emergencyOfCall { id: U256::from(id) },
        )
        .await?)
}

/// Step 5: an auditor records whether override `id` was justified; an
/// unjustified one ends at once and suspends the provider's overrides.
pub async fn review(
    conn: &Connection,
    client: &Client,
    auditor: &Actor,
    id: u64,
    justified: bool,
    finding: &str,
) -> Result<Changed> {
    install(conn)?;
    let sent = async {
        let e = emergency_of(client, id).await?;
        let receipt = client
            .send(
                auditor.account(),
                Target::Access,
                CohortAccess::reviewEmergencyCall {
                    id: U256::from(id),
                    justified,
                    findingHash: keccak256(finding.as_bytes()),
                },
            )
            .await?;
        Ok((e, receipt))
    }
    .await;
    let tx = conn.unchecked_transaction()?;
    let detail = serde_json::json!({ "emergency": id, "justified": justified });
    let done = match sent {
        Ok((e, receipt)) => {
            tx.execute(
                "UPDATE access_emergencies SET finding = ?2 WHERE id = ?1",
                params![id as i64, finding],
            )?;
            let body = serde_json::json!({
                "emergency": id, "justified": justified, "finding": finding,
                "provider_address": format!("{:#x}", e.provider),
            });
            notifications::notify(&tx, e.patient, "emergency.reviewed", &body)?;
            Ok(Changed {
                action: if justified {
                    "reviewed: justified"
                } else {
                    "reviewed: unjustified (the provider's overrides are suspended)"
                },
                patient: Some(format!("{:#x}", e.patient)),
                account: format!("{:#x}", e.provider),
                tx_hash: format!("{:#x}", receipt.tx_hash),
            })
        }
        Err(e) => Err(e),
    };
    let out = audited(
        &tx,
        auditor,
        "emergency.review",
        &format!("emergency/{id}"),
        "operations",
        detail,
        done,
    );
    tx.commit()?;
    out
}

/// Step 6: the patient, a delegate, the provider or an auditor ends
/// override `id` before its expiry.
pub async fn end(
    conn: &Connection,
    keys: &dyn crate::keys::keystore::KeyStore,
    client: &Client,
    actor: &Actor,
    id: u64,
) -> Result<Changed> {
    install(conn)?;
    let sent = async {
        let e = emergency_of(client, id).await?;
        let receipt = client
            .send(
                actor.account(),
                Target::Access,
                CohortAccess::endEmergencyCall { id: U256::from(id) },
            )
            .await?;
        Ok((e, receipt))
    }
    .await;
    // The provider's emergency copy of the key goes, and the key rotates
    // (a copy it holds by a grant of its own stays).
    if let Ok((e, _)) = &sent
        && let Some(patient_id) = crate::keys::data_keys::patient_of_address(conn, e.patient)?
    {
        crate::keys::data_keys::revoke_role(
            conn,
            keys,
            actor.name(),
            &patient_id,
            &format!("{:#x}", e.provider),
            crate::keys::data_keys::Role::Emergency,
            &format!("emergency {id} ended"),
        )?;
    }
    let tx = conn.unchecked_transaction()?;
    let done = match sent {
        Ok((e, receipt)) => {
            let body = serde_json::json!({
                "emergency": id, "ended_by": actor.name(),
                "provider_address": format!("{:#x}", e.provider),
            });
            notifications::notify(&tx, e.patient, "emergency.ended", &body)?;
            if e.provider != actor.address() {
                notifications::notify(&tx, e.provider, "emergency.ended", &body)?;
            }
            Ok(Changed {
                action: "ended",
                patient: Some(format!("{:#x}", e.patient)),
                account: format!("{:#x}", e.provider),
                tx_hash: format!("{:#x}", receipt.tx_hash),
            })
        }
        Err(e) => Err(e),
    };
    let out = audited(
        &tx,
        actor,
        "emergency.end",
        &format!("emergency/{id}"),
        "operations",
        serde_json::json!({ "emergency": id }),
        done,
    );
    tx.commit()?;
    out
}

/// An admin lifts a provider's suspension.
pub async fn restore(
    conn: &Connection,
    client: &Client,
    admin: &Actor,
    provider_name: &str,
) -> Result<Changed> {
    super::grants::restore_emergency(conn, client, admin, provider_name).await
}

/// Every override on chain, newest first (only those awaiting review if
/// asked), with the reasons and findings kept here: for an account holding
/// the auditor or admin role on chain now (the reasons are health data).
pub async fn queue(
    conn: &Connection,
    client: &Client,
    viewer: &Actor,
    pending_only: bool,
) -> Result<Vec<EmergencyInfo>> {
    install(conn)?;
    let mut allowed = false;
    for role in [
        cohort_ledger_bridge::Role::Auditor,
        cohort_ledger_bridge::Role::Admin,
    ] {
        allowed |= client.has_role(role, viewer.address()).await?;
    }
    if !allowed {
        return Err(Error::Forbidden(format!(
            "`{}` holds neither the auditor nor the admin role: the emergency review queue is theirs",
            viewer.name()
        )));
    }
    cohort_ledger_bridge::Follower::install(conn)?;
    let count = client
        .view(Target::Access, CohortAccess::emergencyCountCall {})
        .await?
        .to::<u64>();
    let now = client.ledger().timestamp().await?;
    let mut out = Vec::new();
    for id in (0..count).rev() {
        let e = emergency_of(client, id).await?;
        let review = match e.review {
            1 => "pending",
            2 => "justified",
            3 => "unjustified",
            _ => "none",
        };
        if pending_only && review != "pending" {
            continue;
        }
        let local: Option<(String, String, Option<String>)> = conn
            .query_row(
                "SELECT patient_id, reason, finding FROM access_emergencies WHERE id = ?1",
                [id as i64],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()?;
        out.push(EmergencyInfo {
            id,
            patient: format!("{:#x}", e.patient),
            patient_id: local.as_ref().map(|l| l.0.clone()),
            provider: format!("{:#x}", e.provider),
            provider_name: accounts::name_of(conn, e.provider)?,
            reason: local.as_ref().map(|l| l.1.clone()),
            started_at: e.startedAt,
            expires_at: e.expiresAt,
            open: now < e.expiresAt,
            review,
            finding: local.and_then(|l| l.2),
            ended_by: (e.endedAt != 0).then(|| format!("{:#x}", e.endedBy)),
        });
    }
    Ok(out)
}
