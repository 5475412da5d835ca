//! The appointment scheduler `cohort serve` runs: reminders before each
//! live appointment (24 hours and 1 hour ahead) through the notification
//! outbox, exactly once each, and the settlements anyone may trigger
//! (refunding bookings left unconfirmed past their deadline, paying out a
//! no-show's forfeit once its dispute window has passed).
//!
//! Time is passed in (`now`): the server uses the chain's clock, so a
//! development chain's clock jump drives it, and tests call [`tick`] with
//! the time they want. A reminder's row and its notifications are written
//! in one SQLite transaction, keyed by (appointment, lead): a restart, a
//! second scheduler or a repeated tick never sends one twice.

use cohort_ledger_bridge::Client;
use rusqlite::{Connection, params};
use serde::Serialize;

use super::desk::{self, Step, when};
use crate::access::{Actor, notifications};
use crate::{Result, audit};

/// How long before the start each reminder goes out, and its name.
pub const LEADS: [(u64, &str); 2] = [(86_400, "24h"), (3_600, "1h")];

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS appointment_reminders (
    appointment_id INTEGER NOT NULL, lead TEXT NOT NULL, sent INTEGER NOT NULL,
    at INTEGER NOT NULL, PRIMARY KEY (appointment_id, lead)
);
";

/// What one tick did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Tick {
    /// Reminders sent (one per appointment and lead; both parties told).
    pub reminded: usize,
    /// Reminders skipped because a later one was due at once.
    pub skipped: usize,
    /// Unconfirmed bookings expired and refunded.
    pub expired: usize,
    /// No-show forfeits paid out.
    pub released: usize,
    /// Settlements the chain refused (left for the next tick).
    pub failed: usize,
}

/// Sends the reminders due at `now`: for each booked or confirmed
/// appointment not yet started, the most imminent lead that is due, once;
/// earlier leads due at the same time are marked skipped, not sent.
pub fn remind(conn: &mut Connection, now: u64) -> Result<Tick> {
    cohort_ledger_bridge::Follower::install(conn)?;
    conn.execute_batch(SCHEMA)?;
    notifications::install(conn)?;
    let db = conn.transaction()?;
    let due: Vec<(i64, String, String, i64, String)> = db
        .prepare(
            "SELECT id, patient, provider, start, visit_type FROM ledger_appointments
             WHERE status IN ('booked', 'confirmed') AND start > ?1 AND start - ?2 <= ?1",
        )?
        .query_map(params![now as i64, LEADS[0].0 as i64], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
        })?
        .collect::<rusqlite::Result<_>>()?;
    let mut tick = Tick::default();
    for (id, patient, provider, start, visit) in due {
        let left = start as u64 - now;
        let mut leads: Vec<(u64, &str)> =
            LEADS.iter().copied().filter(|(l, _)| left <= *l).collect();
        leads.sort_by_key(|(l, _)| *l);
        for (i, (_, lead)) in leads.iter().enumerate() {
            let send = i == 0;
            let fresh = db.execute(
                "INSERT OR IGNORE INTO appointment_reminders (appointment_id, lead, sent, at)
                 VALUES (?1, ?2, ?3, ?4)",
                params![id, lead, send, now as i64],
            )? == 1;
            if !fresh {
                continue;
            }
            if !send {
                tick.skipped += 1;
                continue;
            }
            let body = serde_json::json!({
                "appointment": id, "start": start, "when": when(start as u64),
                "lead": lead,
                "visit_type": visit.parse().map(super::terms::visit_type_name).unwrap_or_default(),
            });
            for party in [&patient, &provider] {
                if let Ok(address) = party.parse() {
                    notifications::notify(&db, address, "appointment.reminder", &body)?;
                }
            }
            tick.reminded += 1;
        }
    }
    db.commit()?;
    Ok(tick)
}

/// One round of the scheduler at `now`: the reminders due, then the
/// settlements due as `engine`, under the contract's dispute window.
pub async fn round(
    conn: &mut Connection,
    client: &Client,
    engine: &Actor,
    now: u64,
) -> Result<Tick> {
    let mut tick = remind(conn, now)?;
    let window = client
        .view(
            cohort_ledger_bridge::Target::Appointments,
            cohort_ledger_bridge::contracts::Appointments::disputeWindowCall {},
        )
        .await?;
    let settled = settle(conn, client, engine, now, window).await?;
    tick.expired = settled.expired;
    tick.released = settled.released;
    tick.failed = settled.failed;
    Ok(tick)
}

/// Settles what is due at `now` as `engine` (any account may): expires
/// bookings unconfirmed past their deadline (full refund) and releases
/// no-show forfeits whose dispute window of `dispute_window` seconds has
/// passed. A refusal (already settled by someone else) is counted, not
/// fatal.
pub async fn settle(
    conn: &Connection,
    client: &Client,
    engine: &Actor,
    now: u64,
    dispute_window: u64,
) -> Result<Tick> {
    cohort_ledger_bridge::Follower::install(conn)?;
    let ids = |sql: &str, at: u64| -> Result<Vec<u64>> {
        Ok(conn
            .prepare(sql)?
            .query_map([at as i64], |r| r.get::<_, i64>(0).map(|i| i as u64))?
            .collect::<rusqlite::Result<_>>()?)
    };
    let unconfirmed = ids(
        "SELECT id FROM ledger_appointments WHERE status = 'booked' AND confirm_by < ?1",
        now,
    )?;
    let forfeits = ids(
        "SELECT id FROM ledger_appointments
         WHERE status = 'no-show' AND held != '0' AND marked_at IS NOT NULL AND marked_at <= ?1",
        now.saturating_sub(dispute_window),
    )?;
    let mut tick = Tick::default();
    for (list, step) in [(unconfirmed, Step::Expire), (forfeits, Step::Release)] {
        for id in list {
            match desk::act(conn, client, engine, id, step).await {
                Ok(_) if step == Step::Expire => tick.expired += 1,
                Ok(_) => tick.released += 1,
                Err(_) => tick.failed += 1,
            }
        }
    }
    if tick.expired + tick.released > 0 {
        audit::append(
            conn,
            &audit::Event {
                actor: engine.name(),
                action: "appointment.scheduler",
                target: "appointments",
                purpose: "operations",
                detail: serde_json::json!({ "expired": tick.expired, "released": tick.released }),
            },
        )?;
    }
    Ok(tick)
}
