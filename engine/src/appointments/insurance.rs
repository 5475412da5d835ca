//! Insurers: an account holding the insurer role (granted by an admin on
//! chain) verifies a patient's coverage of a visit type with a provider, a
//! share and an end, and funds the shares it pays; bookings then split the
//! fee between the patient's copay and the insurer's share.

use cohort_ledger_bridge::alloy::primitives::{U256, keccak256};
use cohort_ledger_bridge::contracts::Appointments;
use cohort_ledger_bridge::{Client, Target};
use rusqlite::{Connection, params};
use serde::Serialize;

use super::desk::{Published, address_of, send_audited};
use super::terms::{visit_type, visit_type_name};
use crate::access::{Actor, notifications};
use crate::research::study::format_wei;
use crate::{Error, Result};

/// What an insurer attests.
#[derive(Debug, Clone)]
pub struct Coverage {
    /// The patient's account.
    pub patient: String,
    /// The provider's account.
    pub provider: String,
    /// The visit type.
    pub visit_type: String,
    /// The insurer's share, in basis points (1 to 10000).
    pub share_bps: u16,
    /// When it ends (unix seconds).
    pub expires_at: u64,
    /// The insurer's policy number (only its hash goes on chain).
    pub policy: String,
}

/// Sends `tx` as `actor`, audited as `action` for payment.
async fn send(
    conn: &Connection,
    client: &Client,
    actor: &Actor,
    action: &str,
    target: &str,
    detail: serde_json::Value,
    tx: cohort_ledger_bridge::Tx,
) -> Result<Published> {
    let receipt =
        send_audited(conn, client, actor, (action, "payment"), target, detail, tx).await?;
    Ok(Published {
        what: action.to_string(),
        tx_hash: format!("{:#x}", receipt.tx_hash),
    })
}

/// The actor (an insurer) verifies a coverage.
pub async fn verify(
    conn: &Connection,
    client: &Client,
    actor: &Actor,
    c: &Coverage,
) -> Result<Published> {
    if c.share_bps == 0 || c.share_bps > 10_000 {
        return Err(Error::Invalid(
            "share: a coverage pays more than 0% and at most 100%".into(),
        ));
    }
    let patient = address_of(conn, &c.patient, "the patient")?;
    let provider = address_of(conn, &c.provider, "the provider")?;
    let tx = client.tx(
        Target::Appointments,
        Appointments::verifyCoverageCall {
            patient,
            provider,
            visitType: visit_type(&c.visit_type)?,
            shareBps: c.share_bps,
            expiresAt: c.expires_at,
            policyHash: keccak256(c.policy.as_bytes()),
        },
    );
    let detail = serde_json::json!({
        "patient": c.patient, "provider": c.provider, "visit_type": c.visit_type,
        "share_bps": c.share_bps, "expires_at": c.expires_at,
    });
    let done = send(
        conn,
        client,
        actor,
        "insurance.verify",
        &format!("{patient:#x}"),
        detail,
        tx,
    )
    .await?;
    notifications::notify(
        conn,
        patient,
        "insurance.verified",
        &serde_json::json!({
            "insurer": actor.name(), "provider": c.provider, "visit_type": c.visit_type,
            "share_bps": c.share_bps, "expires_at": c.expires_at,
        }),
    )?;
    Ok(done)
}

/// The actor (an insurer) adds `amount` to the funds its shares are paid from.
pub async fn fund(
    conn: &Connection,
    client: &Client,
    actor: &Actor,
    amount: U256,
) -> Result<Published> {
    let tx = client
        .tx(Target::Appointments, Appointments::fundCoverageCall {})
        .with_value(amount);
    let me = format!("{:#x}", actor.address());
    send(
        conn,
        client,
        actor,
        "insurance.fund",
        &me,
        serde_json::json!({ "amount_wei": amount.to_string() }),
        tx,
    )
    .await
}

/// A coverage as listed.
#[derive(Debug, Clone, Serialize)]
pub struct CoverageInfo {
    /// The patient's address.
    pub patient: String,
    /// The provider's address.
    pub provider: String,
    /// The visit type.
    pub visit_type: String,
    /// The insurer's address.
    pub insurer: String,
    /// The share, in basis points.
    pub share_bps: u16,
    /// When it ends.
    pub expires_at: u64,
    /// Whether it is in force at `now` (not revoked, not ended).
    pub active: bool,
}

/// The coverages mirrored for `patient` (or attested by `insurer`), with
/// accounts named where this directory knows them.
pub fn show(
    conn: &Connection,
    who: cohort_ledger_bridge::alloy::primitives::Address,
    now: u64,
) -> Result<Vec<CoverageInfo>> {
    cohort_ledger_bridge::Follower::install(conn)?;
    let me = format!("{who:#x}");
    let rows = conn
        .prepare(
            "SELECT patient, provider, visit_type, insurer, share_bps, expires_at, active
             FROM ledger_coverage WHERE patient = ?1 OR insurer = ?1 ORDER BY block DESC",
        )?
        .query_map(params![me], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, String>(3)?,
                r.get::<_, u16>(4)?,
                r.get::<_, i64>(5)?,
                r.get::<_, bool>(6)?,
            ))
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(rows
        .into_iter()
        .map(
            |(patient, provider, word, insurer, share_bps, expires_at, active)| CoverageInfo {
                patient: super::mirror::named(conn, &patient),
                provider: super::mirror::named(conn, &provider),
                visit_type: word
                    .parse()
                    .map(visit_type_name)
                    .unwrap_or_else(|_| word.clone()),
                insurer: super::mirror::named(conn, &insurer),
                share_bps,
                expires_at: expires_at as u64,
                active: active && (expires_at as u64) > now,
            },
        )
        .collect())
}

/// The insurer's free funds, in words.
pub async fn funds(
    client: &Client,
    insurer: cohort_ledger_bridge::alloy::primitives::Address,
) -> Result<String> {
    let wei = client
        .view(
            Target::Appointments,
            Appointments::insurerFundsCall { insurer },
        )
        .await?;
    Ok(format_wei(wei))
}
