//! Appointments as the follower mirrors them (`ledger_appointments` and
//! the provider tables): listings, free slots and money, read without
//! scanning the chain. Bring the mirror up to date first
//! (`chain::sync`).

use std::collections::HashSet;

use cohort_ledger_bridge::Follower;
use cohort_ledger_bridge::alloy::primitives::{Address, B256, U256};
use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;

use super::terms::{Hours, MAX_SEARCH_DAYS, Policy, free_slots, visit_type_name};
use crate::keys::accounts;
use crate::research::study::format_wei;
use crate::{Error, Result};

/// The account name of a mirrored address, else the address.
pub fn named(conn: &Connection, address: &str) -> String {
    address
        .parse::<Address>()
        .ok()
        .and_then(|a| accounts::name_of(conn, a).ok().flatten())
        .unwrap_or_else(|| address.to_string())
}

/// One appointment, with the ether it holds and moved (wei, decimal).
#[derive(Debug, Clone, Serialize)]
pub struct AppointmentInfo {
    /// Its id.
    pub id: u64,
    /// The patient (account name where known).
    pub patient: String,
    /// The provider.
    pub provider: String,
    /// The insurer paying a share, if any.
    pub insurer: Option<String>,
    /// The visit type.
    pub visit_type: String,
    /// The slot's start (unix seconds).
    pub start: u64,
    /// The provider must confirm by then.
    pub confirm_by: u64,
    /// When a no-show was marked.
    pub marked_at: Option<u64>,
    /// Status: booked, confirmed, declined, expired, cancelled, completed,
    /// no-show, disputed, excused.
    pub status: String,
    /// The fee.
    pub fee: String,
    /// The insurer's share.
    pub insurer_share: String,
    /// The patient's part.
    pub copay: String,
    /// The deposit asked at booking.
    pub deposit: String,
    /// What the patient has paid.
    pub paid: String,
    /// What the contract holds for it now.
    pub held: String,
    /// Refunded to the patient.
    pub refunded: String,
    /// Paid to the provider.
    pub to_provider: String,
    /// Returned to the insurer's funds.
    pub insurer_returned: String,
}

fn wei(text: &str) -> U256 {
    text.parse().unwrap_or_default()
}

impl AppointmentInfo {
    /// What the patient still owes of the copay (only while it can be paid).
    pub fn owed(&self) -> U256 {
        if matches!(self.status.as_str(), "booked" | "confirmed" | "completed") {
            wei(&self.copay).saturating_sub(wei(&self.paid))
        } else {
            U256::ZERO
        }
    }

    /// One line for people.
    pub fn describe(&self) -> String {
        let mut money = vec![format!("paid {}", format_wei(wei(&self.paid)))];
        for (amount, what) in [
            (&self.held, "held"),
            (&self.refunded, "refunded"),
            (&self.to_provider, "to the provider"),
        ] {
            if !wei(amount).is_zero() {
                money.push(format!("{} {what}", format_wei(wei(amount))));
            }
        }
        if !self.owed().is_zero() {
            money.push(format!("{} owed", format_wei(self.owed())));
        }
        if let Some(insurer) = &self.insurer {
            money.push(format!(
                "{} by {insurer}",
                format_wei(wei(&self.insurer_share))
            ));
        }
        format!(
            "#{} {} {} with {} for {}: {} ({})",
            self.id,
            super::desk::when(self.start),
            self.visit_type,
            self.provider,
            self.patient,
            self.status,
            money.join(", ")
        )
    }
}

const COLUMNS: &str = "id, patient, provider, insurer, visit_type, start, confirm_by, marked_at,
    status, fee, insurer_share, copay, deposit, paid, held, refunded, to_provider, insurer_returned";

fn from_row(conn: &Connection, r: &rusqlite::Row<'_>) -> rusqlite::Result<AppointmentInfo> {
    let word: String = r.get(4)?;
    let insurer: Option<String> = r.get(3)?;
    Ok(AppointmentInfo {
        id: r.get::<_, i64>(0)? as u64,
        patient: named(conn, &r.get::<_, String>(1)?),
        provider: named(conn, &r.get::<_, String>(2)?),
        insurer: insurer.map(|i| named(conn, &i)),
        visit_type: word.parse::<B256>().map(visit_type_name).unwrap_or(word),
        start: r.get::<_, i64>(5)? as u64,
        confirm_by: r.get::<_, i64>(6)? as u64,
        marked_at: r.get::<_, Option<i64>>(7)?.map(|t| t as u64),
        status: r.get(8)?,
        fee: r.get(9)?,
        insurer_share: r.get(10)?,
        copay: r.get(11)?,
        deposit: r.get(12)?,
        paid: r.get(13)?,
        held: r.get(14)?,
        refunded: r.get(15)?,
        to_provider: r.get(16)?,
        insurer_returned: r.get(17)?,
    })
}

/// What to list.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// Only these statuses (empty: all).
    pub statuses: Vec<String>,
    /// Starting at or after.
    pub from: Option<u64>,
    /// Starting before.
    pub to: Option<u64>,
    /// At most this many (0: 1000).
    pub limit: usize,
}

/// The appointments `who` is a party to (patient, provider or insurer),
/// by start; an admin or auditor passing `everyone` sees all of them.
pub fn list(
    conn: &Connection,
    who: Address,
    everyone: bool,
    filter: &Filter,
) -> Result<Vec<AppointmentInfo>> {
    Follower::install(conn)?;
    for s in &filter.statuses {
        if cohort_ledger_bridge::AppointmentStatus::from_name(s).is_none() {
            return Err(Error::Invalid(format!(
                "status `{s}`: one of booked, confirmed, declined, expired, cancelled, completed, no-show, disputed, excused"
            )));
        }
    }
    let statuses = serde_json::to_string(&filter.statuses).expect("strings serialise");
    let limit = if filter.limit == 0 {
        1_000
    } else {
        filter.limit
    };
    let sql = format!(
        "SELECT {COLUMNS} FROM ledger_appointments
         WHERE (?1 OR patient = ?2 OR provider = ?2 OR insurer = ?2)
           AND (?3 = '[]' OR status IN (SELECT value FROM json_each(?3)))
           AND start >= ?4 AND start < ?5
         ORDER BY start, id LIMIT ?6"
    );
    let rows = conn
        .prepare(&sql)?
        .query_map(
            params![
                everyone,
                format!("{who:#x}"),
                statuses,
                filter.from.unwrap_or(0) as i64,
                filter.to.map_or(i64::MAX, |t| t as i64),
                limit as i64
            ],
            |r| from_row(conn, r),
        )?
        .collect::<rusqlite::Result<_>>()?;
    Ok(rows)
}

/// One appointment from the mirror.
pub fn get(conn: &Connection, id: u64) -> Result<AppointmentInfo> {
    Follower::install(conn)?;
    conn.query_row(
        &format!("SELECT {COLUMNS} FROM ledger_appointments WHERE id = ?1"),
        [id as i64],
        |r| from_row(conn, r),
    )
    .optional()?
    .ok_or_else(|| Error::NotFound(format!("no appointment {id}")))
}

/// A provider's published terms.
#[derive(Debug, Clone, Serialize)]
pub struct Terms {
    /// The provider.
    pub provider: String,
    /// Weekly hours, if published.
    pub hours: Option<Hours>,
    /// Visit types offered and their fees (wei).
    pub fees: Vec<(String, String)>,
    /// The policy in force, if published.
    pub policy: Option<Policy>,
    /// Closed local days (days since 1970-01-01).
    pub closed_days: Vec<u32>,
}

fn hours_of(conn: &Connection, provider: &str) -> Result<Option<Hours>> {
    let row: Option<(i32, u32, String, String)> = conn
        .query_row(
            "SELECT utc_offset, slot_seconds, opens, closes FROM ledger_provider_hours WHERE provider = ?1",
            [provider],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
        )
        .optional()?;
    row.map(|(off, slot, opens, closes)| {
        let days = |text: &str| -> Result<[u32; 7]> {
            serde_json::from_str(text)
                .map_err(|e| Error::Invalid(format!("mirrored hours of {provider}: {e}")))
        };
        Ok(Hours {
            utc_offset_secs: off,
            slot_secs: slot,
            opens: days(&opens)?,
            closes: days(&closes)?,
        })
    })
    .transpose()
}

fn closed_days(conn: &Connection, provider: &str) -> Result<Vec<u32>> {
    Ok(conn
        .prepare("SELECT day FROM ledger_closed_days WHERE provider = ?1 ORDER BY day")?
        .query_map([provider], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?)
}

/// The providers who have published hours.
pub fn providers(conn: &Connection) -> Result<Vec<Address>> {
    Follower::install(conn)?;
    let rows: Vec<String> = conn
        .prepare("SELECT provider FROM ledger_provider_hours ORDER BY provider")?
        .query_map([], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    Ok(rows.iter().filter_map(|a| a.parse().ok()).collect())
}

/// What `provider` has published.
pub fn terms(conn: &Connection, provider: Address) -> Result<Terms> {
    Follower::install(conn)?;
    let p = format!("{provider:#x}");
    let fees = conn
        .prepare(
            "SELECT visit_type, fee FROM ledger_visit_types WHERE provider = ?1 AND fee != '0' ORDER BY visit_type",
        )?
        .query_map([&p], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?
        .collect::<rusqlite::Result<Vec<_>>>()?
        .into_iter()
        .map(|(word, fee)| {
            (
                word.parse::<B256>()
                    .map(visit_type_name)
                    .unwrap_or(word),
                fee,
            )
        })
        .collect();
    let policy: Option<String> = conn
        .query_row(
            "SELECT policy FROM ledger_appointment_policies WHERE provider = ?1
             ORDER BY version DESC LIMIT 1",
            [&p],
            |r| r.get(0),
        )
        .optional()?;
    Ok(Terms {
        provider: named(conn, &p),
        hours: hours_of(conn, &p)?,
        fees,
        policy: policy
            .and_then(|text| serde_json::from_str(&text).ok())
            .map(|json| Policy::from_mirror(&json)),
        closed_days: closed_days(conn, &p)?,
    })
}

/// The free slots of `provider` starting in `[from, to)` after `now`
/// (at most [`MAX_SEARCH_DAYS`] days).
pub fn slots(
    conn: &Connection,
    provider: Address,
    now: u64,
    from: u64,
    to: u64,
) -> Result<Vec<u64>> {
    Follower::install(conn)?;
    if to <= from {
        return Err(Error::Invalid("the search ends before it begins".into()));
    }
    if to - from > MAX_SEARCH_DAYS * 86_400 {
        return Err(Error::Invalid(format!(
            "a search spans at most {MAX_SEARCH_DAYS} days"
        )));
    }
    let p = format!("{provider:#x}");
    let Some(hours) = hours_of(conn, &p)? else {
        return Err(Error::NotFound(format!(
            "{} has published no hours",
            named(conn, &p)
        )));
    };
    let closed: HashSet<u32> = closed_days(conn, &p)?.into_iter().collect();
    let taken: HashSet<u64> = conn
        .prepare(
            "SELECT start FROM ledger_appointments
             WHERE provider = ?1 AND status IN ('booked', 'confirmed') AND start >= ?2 AND start < ?3",
        )?
        .query_map(params![p, from as i64, to as i64], |r| {
            r.get::<_, i64>(0).map(|s| s as u64)
        })?
        .collect::<rusqlite::Result<_>>()?;
    Ok(free_slots(&hours, &closed, &taken, now, from, to))
}

/// What an account paid, holds in escrow, got back and received, over
/// every appointment it is a party to (wei, decimal).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Money {
    /// As a patient: paid into escrow.
    pub paid: String,
    /// As a patient: held by the contract now.
    pub held: String,
    /// As a patient: refunded.
    pub refunded: String,
    /// As a patient: still owed of copays.
    pub owed: String,
    /// As a provider: received.
    pub received: String,
    /// As an insurer: paid to providers.
    pub insurer_paid: String,
}

/// `who`'s money across their appointments.
pub fn money(conn: &Connection, who: Address) -> Result<Money> {
    let mine = list(conn, who, false, &Filter::default())?;
    let me = named(conn, &format!("{who:#x}"));
    let (mut paid, mut held, mut refunded, mut owed, mut received, mut insured) = (
        U256::ZERO,
        U256::ZERO,
        U256::ZERO,
        U256::ZERO,
        U256::ZERO,
        U256::ZERO,
    );
    for a in &mine {
        if a.patient == me {
            paid += wei(&a.paid);
            held += wei(&a.held);
            refunded += wei(&a.refunded);
            owed += a.owed();
        }
        if a.provider == me {
            received += wei(&a.to_provider);
        }
        if a.insurer.as_deref() == Some(me.as_str()) && a.status == "completed" {
            insured += wei(&a.insurer_share);
        }
    }
    Ok(Money {
        paid: paid.to_string(),
        held: held.to_string(),
        refunded: refunded.to_string(),
        owed: owed.to_string(),
        received: received.to_string(),
        insurer_paid: insured.to_string(),
    })
}

/// No-shows counted per patient (as mirrored), for providers' eyes.
pub fn no_shows(conn: &Connection, patient: Address) -> Result<u64> {
    Follower::install(conn)?;
    Ok(conn.query_row(
        "SELECT COUNT(*) FROM ledger_appointments WHERE patient = ?1 AND status IN ('no-show', 'disputed')",
        [format!("{patient:#x}")],
        |r| r.get::<_, i64>(0),
    )? as u64)
}
