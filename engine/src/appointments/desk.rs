//! The front desk: every appointment transaction, signed by the acting
//! account so the contract decides who may, audited done or refused
//! (never with the reason's text), and notified to the other party.

use cohort_ledger_bridge::alloy::primitives::{Address, B256, U256, keccak256};
use cohort_ledger_bridge::alloy::sol_types::{SolCall, SolEvent};
use cohort_ledger_bridge::contracts::Appointments;
use cohort_ledger_bridge::{AppointmentStatus, Client, Receipt, Target, Tx};
use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;

use super::terms::{Hours, Policy, visit_type, visit_type_name};
use crate::access::{Actor, notifications, patients};
use crate::keys::accounts;
use crate::records::projection::sealed::{open_cell, seal_cell};
use crate::records::vault::{KeyCache, Vault};
use crate::research::study::format_wei;
use crate::{Error, Result, audit};

/// A reason is at most this long.
pub const MAX_REASON_BYTES: usize = 2_000;
/// The column a sealed reason is bound to.
const REASON_COLUMN: &str = "appointment.reason";

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS appointment_reasons (
    reason_hash TEXT PRIMARY KEY, patient_id TEXT NOT NULL, sealed BLOB NOT NULL,
    appointment_id INTEGER, created_at TEXT NOT NULL
);
";

/// Creates the sealed-reason table if it is missing.
pub fn install(conn: &Connection) -> Result<()> {
    conn.execute_batch(SCHEMA)?;
    Ok(())
}

/// The address of account `name` (`what` it is for), or a clear error.
pub fn address_of(conn: &Connection, name: &str, what: &str) -> Result<Address> {
    accounts::address_of(conn, name)?
        .ok_or_else(|| Error::NotFound(format!("no account `{name}` ({what})")))?
        .parse()
        .map_err(|_| Error::Invalid(format!("account `{name}` has a bad address")))
}

/// Audits a refusal decided before any transaction (bad input: a
/// malformed amount, hours, step ...) as `<action>.refused`, and returns it.
pub fn refuse(conn: &Connection, actor: &Actor, action: &str, target: &str, e: Error) -> Error {
    let refused: Result<()> = Err(e);
    match audit::outcome(
        conn,
        actor.name(),
        action,
        target,
        "operations",
        serde_json::json!({}),
        refused,
    ) {
        Err(e) => e,
        Ok(()) => unreachable!("a refusal stays one"),
    }
}

fn tx_hash(receipt: &Receipt) -> String {
    format!("{:#x}", receipt.tx_hash)
}

/// Sends `tx` as `actor` and audits it as `action` for `purpose`, done or
/// refused with the refusal's words.
pub(crate) async fn send_audited(
    conn: &Connection,
    client: &Client,
    actor: &Actor,
    (action, purpose): (&str, &str),
    target: &str,
    detail: serde_json::Value,
    tx: Tx,
) -> Result<Receipt> {
    let sent = client
        .ledger()
        .send(actor.account(), tx)
        .await
        .map_err(Error::from)
        .map_err(|e| super::explain(actor.name(), e));
    audit::outcome(conn, actor.name(), action, target, purpose, detail, sent)
}

fn call_tx<C: SolCall>(client: &Client, call: C) -> Tx {
    client.tx(Target::Appointments, call)
}

/// What a provider publishes; each part present is one transaction.
#[derive(Debug, Clone, Default)]
pub struct Publish {
    /// Weekly hours.
    pub hours: Option<Hours>,
    /// Visit types and their fees (zero: no longer offered).
    pub fees: Vec<(String, U256)>,
    /// Terms for bookings from now on.
    pub policy: Option<Policy>,
    /// Local days (`Hours::local_day`) to close.
    pub close: Vec<u32>,
    /// Local days to open again.
    pub reopen: Vec<u32>,
}

/// One published change.
#[derive(Debug, Clone, Serialize)]
pub struct Published {
    /// What was published.
    pub what: String,
    /// Its transaction.
    pub tx_hash: String,
}

/// The actor (a credentialed provider) publishes hours, fees, a policy or
/// closed days. A provider publishing hours or fees who has never
/// published a policy gets the default one ([`Policy::default`]), so that
/// patients can book.
pub async fn publish(
    conn: &Connection,
    client: &Client,
    actor: &Actor,
    p: &Publish,
) -> Result<Vec<Published>> {
    let mut p = p.clone();
    if p.policy.is_none() && (p.hours.is_some() || !p.fees.is_empty()) {
        let has_policy = client
            .view(
                Target::Appointments,
                Appointments::policyOfCall {
                    provider: actor.address(),
                },
            )
            .await
            .is_ok();
        if !has_policy {
            p.policy = Some(Policy::default());
        }
    }
    let p = &p;
    let mut steps: Vec<(String, serde_json::Value, Tx)> = Vec::new();
    if let Some(h) = &p.hours {
        steps.push((
            format!("hours: {}", h.describe()),
            serde_json::json!({ "hours": h.describe() }),
            call_tx(client, Appointments::setHoursCall { h: h.to_chain() }),
        ));
    }
    for (name, fee) in &p.fees {
        let word = visit_type(name)?;
        let fee128: u128 = (*fee)
            .try_into()
            .map_err(|_| Error::Invalid(format!("the fee of `{name}` is too large")))?;
        steps.push((
            format!("visit type {name}: {}", format_wei(*fee)),
            serde_json::json!({ "visit_type": name, "fee_wei": fee.to_string() }),
            call_tx(
                client,
                Appointments::setVisitTypeCall {
                    visitType: word,
                    fee: fee128,
                },
            ),
        ));
    }
    if let Some(policy) = &p.policy {
        steps.push((
            format!("policy: {}", policy.describe()),
            serde_json::json!({ "policy": policy.describe() }),
            call_tx(
                client,
                Appointments::setPolicyCall {
                    p: policy.to_chain()?,
                },
            ),
        ));
    }
    for (days, closed) in [(&p.close, true), (&p.reopen, false)] {
        if !days.is_empty() {
            steps.push((
                format!(
                    "{} {} day(s)",
                    if closed { "closed" } else { "reopened" },
                    days.len()
                ),
                serde_json::json!({ "days": days, "closed": closed }),
                call_tx(
                    client,
                    Appointments::setClosedCall {
                        localDays: days.clone(),
                        closed,
                    },
                ),
            ));
        }
    }
    if steps.is_empty() {
        return Err(Error::Invalid(
            "nothing to publish: give hours, fees, a policy or days to close".into(),
        ));
    }
    let me = format!("{:#x}", actor.address());
    let mut out = Vec::new();
    for (what, detail, tx) in steps {
        let receipt = send_audited(
            conn,
            client,
            actor,
            ("appointment.publish", "operations"),
            &me,
            detail,
            tx,
        )
        .await?;
        out.push(Published {
            what,
            tx_hash: tx_hash(&receipt),
        });
    }
    Ok(out)
}

/// What a booking would cost, said before booking.
#[derive(Debug, Clone, Serialize)]
pub struct Quote {
    /// The provider's account.
    pub provider: String,
    /// The visit type.
    pub visit_type: String,
    /// The slot's start (unix seconds).
    pub start: u64,
    /// The fee, in wei.
    pub fee: String,
    /// The insurer's share, in wei.
    pub insurer_share: String,
    /// What the patient owes, in wei.
    pub copay: String,
    /// What the patient must pay at booking at least, in wei.
    pub deposit: String,
    /// The insurer's account, when a coverage applies.
    pub insurer: Option<String>,
    /// When that coverage ends.
    pub coverage_expires_at: Option<u64>,
    /// One sentence for people.
    pub says: String,
}

fn name_or_address(conn: &Connection, address: Address) -> String {
    accounts::name_of(conn, address)
        .ok()
        .flatten()
        .unwrap_or_else(|| format!("{address:#x}"))
}

/// What booking `visit` with `provider` at `start` costs `patient` now:
/// whether a coverage applies and what the patient pays, said clearly.
pub async fn quote(
    conn: &Connection,
    client: &Client,
    patient: Address,
    provider: &str,
    visit: &str,
    start: u64,
) -> Result<Quote> {
    let provider_address = address_of(conn, provider, "the provider")?;
    let now = client.ledger().now().await?;
    if start <= now {
        return Err(Error::Invalid(format!(
            "{} is in the past (the chain's time is {})",
            when(start),
            when(now)
        )));
    }
    let q = client
        .view(
            Target::Appointments,
            Appointments::quoteCall {
                patient,
                provider: provider_address,
                visitType: visit_type(visit)?,
                start,
            },
        )
        .await
        .map_err(|e| super::explain("the caller", Error::from(e)))?;
    let insurer = (q.insurer != Address::ZERO).then(|| name_or_address(conn, q.insurer));
    let (fee, share, copay, deposit) = (
        U256::from(q.fee),
        U256::from(q.insurerShare),
        U256::from(q.copay),
        U256::from(q.deposit),
    );
    let says = match &insurer {
        Some(who) => format!(
            "covered by `{who}` until {}: the insurer pays {} of the {} fee; you pay {} ({} at least at booking)",
            when(q.coverageExpiresAt),
            format_wei(share),
            format_wei(fee),
            format_wei(copay),
            format_wei(deposit)
        ),
        None => format!(
            "no coverage in force for this visit: you pay the whole fee, {} ({} at least at booking)",
            format_wei(fee),
            format_wei(deposit)
        ),
    };
    Ok(Quote {
        provider: provider.to_string(),
        visit_type: visit.to_string(),
        start,
        fee: fee.to_string(),
        insurer_share: share.to_string(),
        copay: copay.to_string(),
        deposit: deposit.to_string(),
        insurer,
        coverage_expires_at: (q.insurer != Address::ZERO).then_some(q.coverageExpiresAt),
        says,
    })
}

/// A time for people: `2026-12-07 09:00 UTC`.
pub fn when(unix: u64) -> String {
    chrono::DateTime::from_timestamp(unix as i64, 0)
        .map(|t| t.format("%Y-%m-%d %H:%M UTC").to_string())
        .unwrap_or_else(|| unix.to_string())
}

/// A booking request.
#[derive(Debug, Clone)]
pub struct BookRequest {
    /// The provider's account.
    pub provider: String,
    /// The slot's start (unix seconds).
    pub start: u64,
    /// The visit type.
    pub visit_type: String,
    /// Why: sealed under the patient's data key, only its hash on chain.
    pub reason: String,
    /// What to pay now (default: the whole copay).
    pub pay: Option<U256>,
}

/// A booking made.
#[derive(Debug, Clone, Serialize)]
pub struct Booked {
    /// The appointment's id.
    pub id: u64,
    /// What it costs.
    pub quote: Quote,
    /// What was paid into escrow, in wei.
    pub paid: String,
    /// The transaction.
    pub tx_hash: String,
}

fn install_and_patient(conn: &Connection, actor: &Actor) -> Result<String> {
    install(conn)?;
    Ok(patients::of_account(conn, actor.name())?
        .ok_or_else(|| {
            Error::Forbidden(format!(
                "`{}` is not a patient's account (a patient's account is linked with `cohort account new NAME --patient ID`)",
                actor.name()
            ))
        })?
        .patient_id)
}

/// The actor (a patient) books a slot, paying into escrow; the reason is
/// sealed first (so a booking on chain always has its reason here), and a
/// refused booking leaves nothing behind.
pub async fn book(
    vault: &Vault,
    client: &Client,
    actor: &Actor,
    req: &BookRequest,
) -> Result<Booked> {
    let conn = vault.conn();
    let now = client.ledger().now().await?;
    let refuse = |e: Error| -> Result<Booked> {
        Err(refuse(conn, actor, "appointment.book", &req.provider, e))
    };
    if req.start <= now {
        return refuse(Error::Invalid(format!(
            "{} is in the past (the chain's time is {})",
            when(req.start),
            when(now)
        )));
    }
    if req.reason.len() > MAX_REASON_BYTES {
        return refuse(Error::Invalid(format!(
            "the reason is longer than {MAX_REASON_BYTES} bytes"
        )));
    }
    let patient_id = match install_and_patient(conn, actor) {
        Ok(id) => id,
        Err(e) => return refuse(e),
    };
    let quote = match quote(
        conn,
        client,
        patients::identity_of(conn, actor)?,
        &req.provider,
        &req.visit_type,
        req.start,
    )
    .await
    {
        Ok(q) => q,
        Err(e) => return refuse(e),
    };
    let copay: U256 = quote.copay.parse().expect("a decimal amount");
    let pay = req.pay.unwrap_or(copay);
    let provider = address_of(conn, &req.provider, "the provider")?;
    let key = vault.data_key(conn, &mut KeyCache::default(), &patient_id, true)?;
    let sealed = seal_cell(&key, &patient_id, REASON_COLUMN, req.reason.as_bytes());
    let reason_hash = keccak256(&sealed);
    conn.execute(
        "INSERT INTO appointment_reasons (reason_hash, patient_id, sealed, created_at)
         VALUES (?1, ?2, ?3, ?4)",
        params![
            format!("{reason_hash:#x}"),
            patient_id,
            sealed,
            crate::storage::store::now()
        ],
    )?;
    let tx = call_tx(
        client,
        Appointments::bookCall {
            provider,
            start: req.start,
            visitType: visit_type(&req.visit_type)?,
            reasonHash: reason_hash,
        },
    )
    .with_value(pay);
    let detail = serde_json::json!({
        "provider": req.provider,
        "start": req.start,
        "visit_type": req.visit_type,
        "paid_wei": pay.to_string(),
        "covered": quote.insurer.is_some(),
    });
    let sent = send_audited(
        conn,
        client,
        actor,
        ("appointment.book", "treatment"),
        &format!("{provider:#x}"),
        detail,
        tx,
    )
    .await;
    let receipt = match sent {
        Ok(r) => r,
        Err(e) => {
            conn.execute(
                "DELETE FROM appointment_reasons WHERE reason_hash = ?1",
                [format!("{reason_hash:#x}")],
            )?;
            return Err(e);
        }
    };
    let id = booked_id(&receipt)?;
    conn.execute(
        "UPDATE appointment_reasons SET appointment_id = ?2 WHERE reason_hash = ?1",
        params![format!("{reason_hash:#x}"), id as i64],
    )?;
    notifications::notify(
        conn,
        provider,
        "appointment.booked",
        &serde_json::json!({
            "appointment": id, "patient": actor.name(), "start": req.start,
            "visit_type": req.visit_type, "confirm": "confirm or decline before the deadline",
        }),
    )?;
    Ok(Booked {
        id,
        quote,
        paid: pay.to_string(),
        tx_hash: tx_hash(&receipt),
    })
}

fn booked_id(receipt: &Receipt) -> Result<u64> {
    receipt
        .logs
        .iter()
        .find_map(|l| Appointments::AppointmentBooked::decode_log(&l.log).ok())
        .map(|e| e.data.id.to::<u64>())
        .ok_or_else(|| {
            Error::Invalid("the booking's receipt has no AppointmentBooked event".into())
        })
}

/// One step of an appointment's life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// The provider confirms.
    Confirm,
    /// The provider declines (full refund).
    Decline,
    /// The patient or the provider cancels (refund by the policy).
    Cancel,
    /// The provider completes the visit (the provider is paid).
    Complete,
    /// The provider marks the patient absent (the deposit is forfeited).
    NoShow,
    /// The patient disputes a no-show.
    Dispute,
    /// Anyone ends a booking unconfirmed past its deadline (full refund).
    Expire,
    /// Anyone releases a no-show's forfeit after the dispute window.
    Release,
}

impl Step {
    fn action(self) -> &'static str {
        match self {
            Step::Confirm => "appointment.confirm",
            Step::Decline => "appointment.decline",
            Step::Cancel => "appointment.cancel",
            Step::Complete => "appointment.complete",
            Step::NoShow => "appointment.no-show",
            Step::Dispute => "appointment.dispute",
            Step::Expire => "appointment.expire",
            Step::Release => "appointment.release",
        }
    }

    fn tx(self, client: &Client, id: U256) -> Tx {
        match self {
            Step::Confirm => call_tx(client, Appointments::confirmCall { id }),
            Step::Decline => call_tx(client, Appointments::declineCall { id }),
            Step::Cancel => call_tx(client, Appointments::cancelCall { id }),
            Step::Complete => call_tx(client, Appointments::completeCall { id }),
            Step::NoShow => call_tx(client, Appointments::markNoShowCall { id }),
            Step::Dispute => call_tx(client, Appointments::disputeCall { id }),
            Step::Expire => call_tx(client, Appointments::expireCall { id }),
            Step::Release => call_tx(client, Appointments::releaseForfeitCall { id }),
        }
    }
}

/// What a step did, with the ether it moved (wei).
#[derive(Debug, Clone, Serialize)]
pub struct Settled {
    /// The appointment.
    pub id: u64,
    /// Its status now.
    pub status: String,
    /// Refunded to the patient.
    pub to_patient: String,
    /// Paid to the provider (the patient's part and the insurer's share).
    pub to_provider: String,
    /// Returned to the insurer's funds.
    pub to_insurer: String,
    /// The transaction.
    pub tx_hash: String,
}

impl Settled {
    /// `cancelled: 0.05 ether back to the patient, ...`.
    pub fn describe(&self) -> String {
        let part = |wei: &str, to: &str| {
            let w: U256 = wei.parse().unwrap_or_default();
            (!w.is_zero()).then(|| format!("{} {to}", format_wei(w)))
        };
        let moved: Vec<String> = [
            part(&self.to_patient, "back to the patient"),
            part(&self.to_provider, "to the provider"),
            part(&self.to_insurer, "back to the insurer"),
        ]
        .into_iter()
        .flatten()
        .collect();
        if moved.is_empty() {
            format!("appointment {}: {}", self.id, self.status)
        } else {
            format!(
                "appointment {}: {} ({})",
                self.id,
                self.status,
                moved.join(", ")
            )
        }
    }
}

fn settled(id: u64, receipt: &Receipt) -> Settled {
    let event = receipt
        .logs
        .iter()
        .find_map(|l| Appointments::AppointmentSettled::decode_log(&l.log).ok())
        .map(|e| e.data);
    match event {
        Some(s) => Settled {
            id,
            status: AppointmentStatus::from_code(s.status).name().into(),
            to_patient: s.toPatient.to_string(),
            to_provider: (U256::from(s.toProvider) + U256::from(s.fromInsurer)).to_string(),
            to_insurer: s.toInsurer.to_string(),
            tx_hash: tx_hash(receipt),
        },
        None => Settled {
            id,
            status: "unchanged".into(),
            to_patient: "0".into(),
            to_provider: "0".into(),
            to_insurer: "0".into(),
            tx_hash: tx_hash(receipt),
        },
    }
}

/// The on-chain appointment `id` (a clear error if there is none).
pub async fn on_chain(client: &Client, id: u64) -> Result<Appointments::Appointment> {
    client
        .view(
            Target::Appointments,
            Appointments::appointmentOfCall { id: U256::from(id) },
        )
        .await
        .map_err(|e| super::explain("the caller", Error::from(e)))
}

/// Notifies the parties of `a` other than `by` of `kind`.
fn tell_others(
    conn: &Connection,
    a: &Appointments::Appointment,
    by: Address,
    kind: &str,
    body: &serde_json::Value,
) -> Result<()> {
    for party in [a.patient, a.provider] {
        if party != by {
            notifications::notify(conn, party, kind, body)?;
        }
    }
    Ok(())
}

/// The actor takes `step` on appointment `id`; the contract decides
/// whether they may.
pub async fn act(
    conn: &Connection,
    client: &Client,
    actor: &Actor,
    id: u64,
    step: Step,
) -> Result<Settled> {
    let detail = serde_json::json!({ "appointment": id });
    settle(
        conn,
        client,
        actor,
        id,
        step.action(),
        detail,
        step.tx(client, U256::from(id)),
    )
    .await
}

/// Sends a step's `tx` as `actor` (audited as `action`), reads what it
/// settled, and tells the appointment's other party.
async fn settle(
    conn: &Connection,
    client: &Client,
    actor: &Actor,
    id: u64,
    action: &str,
    detail: serde_json::Value,
    tx: Tx,
) -> Result<Settled> {
    let receipt = send_audited(
        conn,
        client,
        actor,
        (action, "operations"),
        &id.to_string(),
        detail,
        tx,
    )
    .await?;
    let done = settled(id, &receipt);
    let a = on_chain(client, id).await?;
    tell_others(
        conn,
        &a,
        actor.address(),
        &format!("appointment.{}", done.status),
        &serde_json::json!({
            "appointment": id, "start": a.start, "status": done.status,
            "refunded_wei": done.to_patient, "to_provider_wei": done.to_provider,
        }),
    )?;
    Ok(done)
}

/// The patient pays `amount` more of their copay.
pub async fn pay(
    conn: &Connection,
    client: &Client,
    actor: &Actor,
    id: u64,
    amount: U256,
) -> Result<Settled> {
    let tx = call_tx(client, Appointments::payCall { id: U256::from(id) }).with_value(amount);
    let receipt = send_audited(
        conn,
        client,
        actor,
        ("appointment.pay", "payment"),
        &id.to_string(),
        serde_json::json!({ "appointment": id, "amount_wei": amount.to_string() }),
        tx,
    )
    .await?;
    let paid = receipt
        .logs
        .iter()
        .find_map(|l| Appointments::BalancePaid::decode_log(&l.log).ok())
        .map(|e| e.data);
    let a = on_chain(client, id).await?;
    Ok(Settled {
        id,
        status: AppointmentStatus::from_code(a.status).name().into(),
        to_patient: "0".into(),
        to_provider: paid.map_or("0".into(), |p| p.toProvider.to_string()),
        to_insurer: "0".into(),
        tx_hash: tx_hash(&receipt),
    })
}

/// An admin resolves a disputed no-show: `stands` keeps it (the deposit
/// goes to the provider), otherwise it is struck out and refunded; both
/// parties are told the outcome (`appointment.no-show` or
/// `appointment.excused`).
pub async fn resolve(
    conn: &Connection,
    client: &Client,
    actor: &Actor,
    id: u64,
    stands: bool,
) -> Result<Settled> {
    let tx = call_tx(
        client,
        Appointments::resolveDisputeCall {
            id: U256::from(id),
            noShowStands: stands,
        },
    );
    let detail = serde_json::json!({ "appointment": id, "no_show_stands": stands });
    settle(conn, client, actor, id, "appointment.resolve", detail, tx).await
}

/// The reason of appointment `id`, for its patient or its provider only;
/// the sealed blob must hash to the reason hash on chain. Audited.
pub async fn reason(vault: &Vault, client: &Client, actor: &Actor, id: u64) -> Result<String> {
    let conn = vault.conn();
    install(conn)?;
    let opened = async {
        let a = on_chain(client, id).await?;
        let me = patients::identity_of(conn, actor)?;
        if me != a.patient && actor.address() != a.provider {
            return Err(Error::Forbidden(format!(
                "`{}` is neither the patient nor the provider of appointment {id}",
                actor.name()
            )));
        }
        let hash: B256 = a.reasonHash;
        let row: Option<(String, Vec<u8>)> = conn
            .query_row(
                "SELECT patient_id, sealed FROM appointment_reasons WHERE reason_hash = ?1",
                [format!("{hash:#x}")],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        let (patient_id, sealed) = row.ok_or_else(|| {
            Error::NotFound(format!(
                "the reason of appointment {id} is not held by this installation"
            ))
        })?;
        if keccak256(&sealed) != hash {
            return Err(Error::Invalid(format!(
                "the stored reason of appointment {id} does not match its hash on chain"
            )));
        }
        let key = vault.data_key(conn, &mut KeyCache::default(), &patient_id, false)?;
        let text = open_cell(&key, &patient_id, REASON_COLUMN, &sealed)?;
        Ok(String::from_utf8_lossy(&text).into_owned())
    }
    .await;
    audit::outcome(
        conn,
        actor.name(),
        "appointment.reason.read",
        &id.to_string(),
        "treatment",
        serde_json::json!({ "appointment": id }),
        opened,
    )
}

/// A visit type's name as published, from its on-chain word.
pub fn visit_name(word: B256) -> String {
    visit_type_name(word)
}
