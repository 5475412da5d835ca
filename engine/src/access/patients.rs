//! Which account is a vault patient's: the link `cohort account new NAME
//! --patient ID` records (the custodian vouches for it once; the chain
//! then decides everything that account may do and allow).

use cohort_ledger_bridge::alloy::primitives::Address;
use rusqlite::{Connection, OptionalExtension};

use crate::{Error, Result};

/// A patient's account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PatientAccount {
    /// The vault's patient id.
    pub patient_id: String,
    /// The account's name.
    pub name: String,
    /// Its address.
    pub address: Address,
}

/// Whether the link table exists yet (the research path creates it; a
/// directory that never linked a patient has none, and so no links).
fn linked_any(conn: &Connection) -> Result<bool> {
    Ok(conn
        .prepare_cached(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'research_patients'",
        )?
        .exists([])?)
}

fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<(String, String, String)> {
    Ok((r.get(0)?, r.get(1)?, r.get(2)?))
}

fn parse((patient_id, name, address): (String, String, String)) -> Result<PatientAccount> {
    let address = address
        .parse()
        .map_err(|_| Error::Invalid(format!("research_patients holds a bad address for {name}")))?;
    Ok(PatientAccount {
        patient_id,
        name,
        address,
    })
}

/// The account linked to vault patient `patient_id`, if any.
pub fn of_patient(conn: &Connection, patient_id: &str) -> Result<Option<PatientAccount>> {
    if !linked_any(conn)? {
        return Ok(None);
    }
    conn.prepare_cached(
        "SELECT patient_id, account, address FROM research_patients WHERE patient_id = ?1",
    )?
    .query_row([patient_id], row)
    .optional()?
    .map(parse)
    .transpose()
}

/// The vault patient account `name` is linked to, if any.
pub fn of_account(conn: &Connection, name: &str) -> Result<Option<PatientAccount>> {
    if !linked_any(conn)? {
        return Ok(None);
    }
    conn.prepare_cached(
        "SELECT patient_id, account, address FROM research_patients WHERE account = ?1",
    )?
    .query_row([name], row)
    .optional()?
    .map(parse)
    .transpose()
}

/// The account of `patient_id`, or a refusal saying that without one
/// nobody can be granted access to their records.
pub fn require(conn: &Connection, patient_id: &str) -> Result<PatientAccount> {
    of_patient(conn, patient_id)?.ok_or_else(|| {
        Error::Forbidden(format!(
            "patient {patient_id} has no account on chain, so no one holds a grant to their records (link one with `cohort account new NAME --patient {patient_id}`)"
        ))
    })
}

/// The patient identity `actor` acts for here: the identity of the vault
/// patient linked to their account (after a recovery, not their own
/// address), else their own address.
pub fn identity_of(conn: &Connection, actor: &super::Actor) -> Result<Address> {
    Ok(of_account(conn, actor.name())?.map_or(actor.address(), |p| p.address))
}

/// A patient named by their account name or their vault patient id.
pub fn find(conn: &Connection, name_or_id: &str) -> Result<PatientAccount> {
    if let Some(p) = of_account(conn, name_or_id)? {
        return Ok(p);
    }
    if let Some(p) = of_patient(conn, name_or_id)? {
        return Ok(p);
    }
    Err(Error::NotFound(format!(
        "`{name_or_id}` is neither a patient's account nor a patient id linked to one"
    )))
}

/// One on-chain read of a patient's records, as the follower mirrored it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ReadEntry {
    /// The block it is in.
    pub block: i64,
    /// When (the block's time, unix seconds).
    pub at: i64,
    /// Who read.
    pub accessor: String,
    /// Their account name, when known here.
    pub accessor_name: Option<String>,
    /// The purpose of use.
    pub purpose: &'static str,
    /// Whether an emergency override allowed it.
    pub emergency: bool,
    /// How many records it read.
    pub records: i64,
}

/// Every read of `patient`'s records on chain, newest first.
pub fn read_log(conn: &Connection, patient: Address) -> Result<Vec<ReadEntry>> {
    cohort_ledger_bridge::Follower::install(conn)?;
    let rows: Vec<(i64, String, u8, bool, i64, Option<i64>)> = conn
        .prepare(
            "SELECT block, accessor, purpose, emergency, records, at FROM ledger_record_reads
             WHERE patient = ?1 ORDER BY block DESC, log_index DESC",
        )?
        .query_map([format!("{patient:#x}")], |r| {
            Ok((
                r.get(0)?,
                r.get(1)?,
                r.get(2)?,
                r.get(3)?,
                r.get(4)?,
                r.get(5)?,
            ))
        })?
        .collect::<rusqlite::Result<_>>()?;
    rows.into_iter()
        .map(|(block, accessor, purpose, emergency, records, at)| {
            let address: Address = accessor.parse().map_err(|_| {
                Error::Invalid(format!("a bad address in ledger_record_reads: {accessor}"))
            })?;
            Ok(ReadEntry {
                block,
                at: at.unwrap_or_default(),
                accessor_name: crate::keys::accounts::name_of(conn, address)?,
                accessor,
                purpose: super::scope::Purpose::names(purpose)
                    .first()
                    .copied()
                    .unwrap_or("unknown"),
                emergency,
                records,
            })
        })
        .collect()
}

/// After a recovery: the vault patient whose identity is `patient` is now
/// acted for by account `new_account` (their identity address stays, so
/// their grants, consents and history stay theirs). `None`: no vault
/// patient is linked to that identity here.
pub fn relink(conn: &Connection, patient: Address, new_account: &str) -> Result<Option<String>> {
    if !linked_any(conn)? {
        return Ok(None);
    }
    let patient_id: Option<String> = conn
        .query_row(
            "SELECT patient_id FROM research_patients WHERE lower(address) = ?1",
            [format!("{patient:#x}")],
            |r| r.get(0),
        )
        .optional()?;
    if let Some(id) = &patient_id {
        conn.execute(
            "UPDATE research_patients SET account = ?2 WHERE patient_id = ?1",
            rusqlite::params![id, new_account],
        )?;
    }
    Ok(patient_id)
}
