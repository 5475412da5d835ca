//! Retention: how long each record type is kept, legal holds, and the purge.
//!
//! A policy keeps a resource type for N years after a record's last
//! version was stored; `run` purges the records past it, except those of a
//! patient under legal hold. A purge deletes every version's encrypted
//! block and the record's projection row; the `records` rows, their
//! anchors and the audit trail stay, so what existed is still provable
//! (and a purged version reads as purged, not as missing). The purge is
//! recorded in one transaction before any block is deleted, so a crash
//! between the two leaves blocks that the next run deletes.

use chrono::{DateTime, Months, Utc};
use rusqlite::{Connection, TransactionBehavior, params};
use serde::Serialize;

use crate::audit;
use crate::records::vault::Vault;
use crate::{Error, Result};

/// The record types a policy may name: those with a projection table.
/// Patient resources go with their patient (`cohort patient erase`).
const PURGEABLE: [(&str, &str); 4] = [
    ("Observation", "proj_observations"),
    ("Condition", "proj_conditions"),
    ("Encounter", "proj_encounters"),
    ("MedicationRequest", "proj_medications"),
];

/// The longest policy accepted: a typo of 1000 would keep records forever
/// without saying so.
const MAX_YEARS: u32 = 150;

/// One resource type's policy.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Policy {
    /// The FHIR resource type.
    pub resource_type: String,
    /// Kept this many years after the record's last version was stored.
    pub years: u32,
    /// Who set it.
    pub set_by: String,
    /// When.
    pub set_at: String,
}

/// One patient's legal hold.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Hold {
    /// The vault's patient id.
    pub patient_id: String,
    /// Why (a case reference; no PHI).
    pub reason: String,
    /// Who set it.
    pub set_by: String,
    /// When.
    pub set_at: String,
}

/// What one run purged (or, dry, would purge).
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct Purge {
    /// The run's clock (RFC 3339).
    pub now: String,
    /// Whether nothing was changed.
    pub dry_run: bool,
    /// Records purged, by resource type.
    pub records: std::collections::BTreeMap<String, u64>,
    /// Versions purged in all.
    pub versions: u64,
    /// Records past their policy but kept by a legal hold.
    pub held: u64,
    /// Blocks deleted (this run's and any an interrupted run left).
    pub blocks_deleted: u64,
}

fn check_type(resource_type: &str) -> Result<&'static str> {
    if resource_type == "Patient" {
        return Err(Error::Invalid(
            "Patient resources are not purged by retention: a patient's record goes with the patient (`cohort patient erase`)".into(),
        ));
    }
    PURGEABLE
        .iter()
        .find(|(t, _)| *t == resource_type)
        .map(|(_, table)| *table)
        .ok_or_else(|| {
            Error::Invalid(format!(
                "`{resource_type}` is not a record type retention can purge: {}",
                PURGEABLE.map(|(t, _)| t).join(", ")
            ))
        })
}

/// Sets `resource_type`'s retention to `years`, as `actor`; audited, a
/// refusal too.
pub fn set_policy(
    conn: &Connection,
    actor: &str,
    resource_type: &str,
    years: u32,
) -> Result<Policy> {
    let outcome = (|| {
        check_type(resource_type)?;
        if years == 0 || years > MAX_YEARS {
            return Err(Error::Invalid(format!(
                "a retention of {years} years: give 1 to {MAX_YEARS}"
            )));
        }
        let policy = Policy {
            resource_type: resource_type.to_owned(),
            years,
            set_by: actor.to_owned(),
            set_at: crate::storage::store::now(),
        };
        conn.execute(
            "INSERT INTO retention_policies (resource_type, years, set_by, set_at) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (resource_type) DO UPDATE SET years = ?2, set_by = ?3, set_at = ?4",
            params![policy.resource_type, years, policy.set_by, policy.set_at],
        )?;
        Ok(policy)
    })();
    audit::outcome(
        conn,
        actor,
        "retention.policy",
        resource_type,
        "compliance",
        serde_json::json!({ "years": years }),
        outcome,
    )
}

/// Every policy, by resource type.
pub fn policies(conn: &Connection) -> Result<Vec<Policy>> {
    Ok(conn
        .prepare("SELECT resource_type, years, set_by, set_at FROM retention_policies ORDER BY resource_type")?
        .query_map([], |r| {
            Ok(Policy {
                resource_type: r.get(0)?,
                years: r.get(1)?,
                set_by: r.get(2)?,
                set_at: r.get(3)?,
            })
        })?
        .collect::<rusqlite::Result<_>>()?)
}

/// Places `patient_id`'s records under legal hold, as `actor`: no policy
/// purges them until the hold is released. Audited, a refusal too.
pub fn hold(conn: &Connection, actor: &str, patient_id: &str, reason: &str) -> Result<Hold> {
    let outcome = (|| {
        known_patient(conn, patient_id)?;
        if reason.trim().is_empty() {
            return Err(Error::Invalid(
                "a legal hold needs a reason (a case reference)".into(),
            ));
        }
        let hold = Hold {
            patient_id: patient_id.to_owned(),
            reason: reason.to_owned(),
            set_by: actor.to_owned(),
            set_at: crate::storage::store::now(),
        };
        let added = conn.execute(
            "INSERT OR IGNORE INTO legal_holds (patient_id, reason, set_by, set_at) VALUES (?1, ?2, ?3, ?4)",
            params![hold.patient_id, hold.reason, hold.set_by, hold.set_at],
        )?;
        if added == 0 {
            return Err(Error::Invalid(format!(
                "patient {patient_id} is already under legal hold"
            )));
        }
        Ok(hold)
    })();
    audit::outcome(
        conn,
        actor,
        "retention.hold",
        &format!("Patient/{patient_id}"),
        "compliance",
        serde_json::json!({ "reason": reason }),
        outcome,
    )
}

/// Releases `patient_id`'s legal hold, as `actor`. Audited, a refusal too.
pub fn release_hold(conn: &Connection, actor: &str, patient_id: &str) -> Result<()> {
    let outcome = (|| {
        let removed = conn.execute(
            "DELETE FROM legal_holds WHERE patient_id = ?1",
            [patient_id],
        )?;
        if removed == 0 {
            return Err(Error::NotFound(format!(
                "patient {patient_id} is not under legal hold"
            )));
        }
        Ok(())
    })();
    audit::outcome(
        conn,
        actor,
        "retention.release",
        &format!("Patient/{patient_id}"),
        "compliance",
        serde_json::json!({}),
        outcome,
    )
}

/// Every legal hold.
pub fn holds(conn: &Connection) -> Result<Vec<Hold>> {
    Ok(conn
        .prepare("SELECT patient_id, reason, set_by, set_at FROM legal_holds ORDER BY patient_id")?
        .query_map([], |r| {
            Ok(Hold {
                patient_id: r.get(0)?,
                reason: r.get(1)?,
                set_by: r.get(2)?,
                set_at: r.get(3)?,
            })
        })?
        .collect::<rusqlite::Result<_>>()?)
}

fn known_patient(conn: &Connection, patient_id: &str) -> Result<()> {
    let known: bool = conn.query_row(
        "SELECT EXISTS (SELECT 1 FROM patients WHERE patient_id = ?1)",
        [patient_id],
        |r| r.get(0),
    )?;
    if known {
        Ok(())
    } else {
        Err(Error::NotFound(format!(
            "no patient {patient_id} in the vault"
        )))
    }
}

/// The records past their policy at `now`: (record id, whether held).
fn due(conn: &Connection, policy: &Policy, now: DateTime<Utc>) -> Result<Vec<(String, bool)>> {
    let cutoff = now
        .checked_sub_months(Months::new(12 * policy.years))
        .ok_or_else(|| Error::Invalid(format!("{} years before {now}", policy.years)))?
        .to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    // A record is due when its newest version is older than the cutoff and
    // not purged yet; the RFC 3339 texts (all UTC, same precision) order
    // as their times do.
    Ok(conn
        .prepare(
            "SELECT r.record_id, EXISTS (SELECT 1 FROM legal_holds h WHERE h.patient_id = r.patient_id)
             FROM records r
             WHERE r.resource_type = ?1
               AND r.version = (SELECT MAX(version) FROM records x WHERE x.record_id = r.record_id)
               AND r.created_at < ?2
               AND NOT EXISTS (SELECT 1 FROM retention_purges p
                               WHERE p.record_id = r.record_id AND p.version = r.version)
             ORDER BY r.record_id",
        )?
        .query_map(params![policy.resource_type, cutoff], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<rusqlite::Result<_>>()?)
}

/// Records purged per transaction: small enough that a long purge never
/// holds the write lock for long.
const BATCH: usize = 500;

/// Purges, at `now`, every record past its type's policy whose patient is
/// not under legal hold, as `actor`; `dry_run` only counts. Audited once
/// per run (counts, no record content).
pub fn run(vault: &Vault, actor: &str, now: DateTime<Utc>, dry_run: bool) -> Result<Purge> {
    let conn = vault.conn();
    let mut purge = Purge {
        now: now.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        dry_run,
        ..Purge::default()
    };
    let outcome = (|| {
        if !dry_run {
            purge.blocks_deleted += delete_purged_blocks(vault)?;
        }
        for policy in policies(conn)? {
            let table = check_type(&policy.resource_type)?;
            let due = due(conn, &policy, now)?;
            purge.held += due.iter().filter(|(_, held)| *held).count() as u64;
            let ids: Vec<&str> = due
                .iter()
                .filter(|(_, held)| !held)
                .map(|(id, _)| id.as_str())
                .collect();
            if ids.is_empty() {
                continue;
            }
            *purge
                .records
                .entry(policy.resource_type.clone())
                .or_default() += ids.len() as u64;
            if dry_run {
                let mut count =
                    conn.prepare_cached("SELECT COUNT(*) FROM records WHERE record_id = ?1")?;
                for id in &ids {
                    purge.versions += count.query_row([id], |r| r.get::<_, i64>(0))? as u64;
                }
                continue;
            }
            for chunk in ids.chunks(BATCH) {
                purge.versions += purge_batch(conn, table, chunk)?;
            }
            purge.blocks_deleted += delete_purged_blocks(vault)?;
        }
        Ok(())
    })();
    let detail = serde_json::to_value(&purge).expect("serializable");
    audit::outcome(
        conn,
        actor,
        if dry_run {
            "retention.dry-run"
        } else {
            "retention.purge"
        },
        "retention",
        "compliance",
        detail,
        outcome,
    )?;
    Ok(purge)
}

/// Records one batch's purge (every version, the projection rows) in one
/// transaction; returns the versions purged.
fn purge_batch(conn: &Connection, table: &str, ids: &[&str]) -> Result<u64> {
    let tx = rusqlite::Transaction::new_unchecked(conn, TransactionBehavior::Immediate)?;
    let at = crate::storage::store::now();
    let mut versions = 0;
    let mut mark = tx.prepare_cached(
        "INSERT OR IGNORE INTO retention_purges (record_id, version, resource_type, cid, purged_at)
         SELECT record_id, version, resource_type, cid, ?2 FROM records WHERE record_id = ?1",
    )?;
    let mut unproject = tx.prepare_cached(&format!("DELETE FROM {table} WHERE id = ?1"))?;
    for id in ids {
        versions += mark.execute(params![id, at])? as u64;
        let bare = id.split_once('/').map_or(*id, |(_, bare)| bare);
        unproject.execute([bare])?;
    }
    drop((mark, unproject));
    crate::records::projection::touch(&tx)?;
    tx.commit()?;
    Ok(versions)
}

/// Deletes the blocks of purged versions not deleted yet, then marks them
/// deleted (a crash in between deletes them again: a no-op); returns how
/// many it deleted.
fn delete_purged_blocks(vault: &Vault) -> Result<u64> {
    let pending: Vec<(String, i64, String)> = vault
        .conn()
        .prepare("SELECT record_id, version, cid FROM retention_purges WHERE block_deleted = 0")?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
        .collect::<rusqlite::Result<_>>()?;
    for chunk in pending.chunks(BATCH) {
        for (_, _, cid) in chunk {
            vault.blocks().remove(cid)?;
        }
        vault.blocks().flush()?;
        let tx =
            rusqlite::Transaction::new_unchecked(vault.conn(), TransactionBehavior::Immediate)?;
        let mut done = tx.prepare_cached(
            "UPDATE retention_purges SET block_deleted = 1 WHERE record_id = ?1 AND version = ?2",
        )?;
        for (record_id, version, _) in chunk {
            done.execute(params![record_id, version])?;
        }
        drop(done);
        tx.commit()?;
    }
    Ok(pending.len() as u64)
}
