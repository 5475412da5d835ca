//! The append-only, hash-chained audit log.
//!
//! Every entry says who did what to which record, why and when, and carries
//! the hash of the entry before it, so that altering, removing or reordering
//! any entry breaks the chain from that point on. [`verify`] walks the chain
//! and names the first broken entry. SQLite triggers refuse UPDATE and DELETE;
//! the chain catches what bypasses SQLite (an edited file). Entries hold
//! identifiers and counts, never PHI or key material.

use rusqlite::types::ValueRef;
use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::Result;

pub mod anchor;

/// The hash the first entry chains to.
pub const GENESIS: [u8; 32] = [0u8; 32];

/// What an entry records, before it is sealed into the chain.
#[derive(Debug, Clone)]
pub struct Event<'a> {
    /// Who acted (an account name).
    pub actor: &'a str,
    /// What was done (`ingest`, `read`, `erase`, ...).
    pub action: &'a str,
    /// Which record, patient or bundle it was done to.
    pub target: &'a str,
    /// Why (the stated purpose of use).
    pub purpose: &'a str,
    /// Structured detail without PHI (counts, CIDs), as JSON.
    pub detail: serde_json::Value,
}

/// One entry as stored.
#[derive(Debug, Clone, Serialize)]
pub struct Entry {
    /// Position in the chain, from 1.
    pub seq: i64,
    /// When (RFC 3339, UTC).
    pub at: String,
    /// Who.
    pub actor: String,
    /// What.
    pub action: String,
    /// Which record.
    pub target: String,
    /// Why.
    pub purpose: String,
    /// Detail (JSON text).
    pub detail: String,
    /// Hex of this entry's hash.
    pub hash: String,
}

/// Appends an entry in the caller's transaction, so it lands together with
/// the change it records (the caller's transaction should be `IMMEDIATE`:
/// it holds the write lock from its start). Outside a transaction the entry
/// is its own immediate transaction, so connections appending at once take
/// turns instead of both reading the same head. Returns the new entry's
/// sequence number.
pub fn append(conn: &Connection, event: &Event<'_>) -> Result<i64> {
    if !conn.is_autocommit() {
        return append_in(conn, event);
    }
    conn.execute_batch("BEGIN IMMEDIATE")?;
    match append_in(conn, event) {
        Ok(seq) => {
            conn.execute_batch("COMMIT")?;
            Ok(seq)
        }
        Err(e) => {
            let _ = conn.execute_batch("ROLLBACK");
            Err(e)
        }
    }
}

/// Appends the entry of an operation whose `outcome` is known: `action`
/// when it succeeded, `<action>.refused` with the refusal's words in
/// `detail["refused"]` when it failed; passes `outcome` on.
pub fn outcome<T>(
    conn: &Connection,
    actor: &str,
    action: &str,
    target: &str,
    purpose: &str,
    mut detail: serde_json::Value,
    outcome: Result<T>,
) -> Result<T> {
    if let Err(e) = &outcome {
        detail["refused"] = e.to_string().into();
    }
    let refused = format!("{action}.refused");
    append(
        conn,
        &Event {
            actor,
            action: if outcome.is_ok() { action } else { &refused },
            target,
            purpose,
            detail,
        },
    )?;
    outcome
}

fn append_in(conn: &Connection, event: &Event<'_>) -> Result<i64> {
    let last: Option<(i64, Vec<u8>)> = conn
        .query_row(
            "SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?;
    let (seq, prev) = match last {
        Some((s, h)) => (s + 1, h),
        None => (1, GENESIS.to_vec()),
    };
    let at = crate::storage::store::now();
    let detail = event.detail.to_string();
    let fields: [&[u8]; 6] = [
        at.as_bytes(),
        event.actor.as_bytes(),
        event.action.as_bytes(),
        event.target.as_bytes(),
        event.purpose.as_bytes(),
        detail.as_bytes(),
    ];
    let hash = entry_hash(seq, &fields, &prev);
    conn.execute(
        "INSERT INTO audit(seq, at, actor, action, target, purpose, detail, prev_hash, hash)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        params![
            seq,
            at,
            event.actor,
            event.action,
            event.target,
            event.purpose,
            detail,
            prev,
            hash.to_vec()
        ],
    )?;
    Ok(seq)
}

/// The hash of one entry (a public algorithm: docs/FORMATS.md): domain-separated, length-prefixed fields, then the
/// previous entry's hash.
pub fn entry_hash(seq: i64, fields: &[&[u8]], prev: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"cohort-audit-v1");
    h.update(seq.to_be_bytes());
    for f in fields {
        h.update((f.len() as u64).to_be_bytes());
        h.update(f);
    }
    h.update(prev);
    h.finalize().into()
}

/// Column `i` of `row` as raw bytes: an altered byte may no longer be
/// valid UTF-8.
pub(crate) fn raw(row: &rusqlite::Row<'_>, i: usize) -> rusqlite::Result<Vec<u8>> {
    Ok(match row.get_ref(i)? {
        ValueRef::Text(t) | ValueRef::Blob(t) => t.to_vec(),
        ValueRef::Integer(n) => n.to_string().into_bytes(),
        ValueRef::Real(x) => x.to_string().into_bytes(),
        ValueRef::Null => Vec::new(),
    })
}

/// The outcome of walking the chain.
#[derive(Debug, Clone, Serialize)]
pub struct Verification {
    /// Entries checked.
    pub entries: i64,
    /// Hex hash of the last intact entry (the head to anchor on the ledger).
    pub head: String,
    /// The first entry that does not verify, if any.
    pub first_broken: Option<Broken>,
}

/// A broken link in the chain.
#[derive(Debug, Clone, Serialize)]
pub struct Broken {
    /// Its sequence number.
    pub seq: i64,
    /// Why it fails.
    pub reason: String,
}

impl Verification {
    /// Whether every entry verified.
    pub fn is_intact(&self) -> bool {
        self.first_broken.is_none()
    }
}

/// Walks the whole chain from the first entry and stops at the first entry
/// that does not verify: one whose contents no longer match its hash, whose
/// link does not match the entry before it, or that is missing from the
/// sequence.
pub fn verify(conn: &Connection) -> Result<Verification> {
    let mut stmt = conn.prepare(
        "SELECT seq, at, actor, action, target, purpose, detail, prev_hash, hash FROM audit ORDER BY seq",
    )?;
    let mut rows = stmt.query([])?;
    let mut expected_prev = GENESIS.to_vec();
    let mut expected_seq = 1i64;
    let mut entries = 0i64;
    let broken = |seq: i64, reason: String, entries, head: &[u8]| Verification {
        entries,
        head: data_encoding::HEXLOWER.encode(head),
        first_broken: Some(Broken { seq, reason }),
    };
    while let Some(row) = rows.next()? {
        let seq: i64 = row.get(0)?;
        let bytes = |i: usize| raw(row, i);
        let fields: Vec<Vec<u8>> = (1..=6).map(bytes).collect::<rusqlite::Result<_>>()?;
        let prev = bytes(7)?;
        let stored = bytes(8)?;
        let label = format!(
            "audit entry {seq} ({} {} on {} at {})",
            String::from_utf8_lossy(&fields[1]),
            String::from_utf8_lossy(&fields[2]),
            String::from_utf8_lossy(&fields[3]),
            String::from_utf8_lossy(&fields[0]),
        );
        if seq != expected_seq {
            let reason =
                format!("audit entry {expected_seq} is missing: the chain jumps to entry {seq}");
            return Ok(broken(expected_seq, reason, entries, &expected_prev));
        }
        if prev != expected_prev {
            let reason = format!(
                "{label} does not link to entry {}: an entry before it was removed or altered",
                seq - 1
            );
            return Ok(broken(seq, reason, entries, &expected_prev));
        }
        let refs: Vec<&[u8]> = fields.iter().map(Vec::as_slice).collect();
        let computed = entry_hash(seq, &refs, &prev);
        if stored != computed {
            let reason = format!("{label} was altered: its contents no longer match its hash");
            return Ok(broken(seq, reason, entries, &expected_prev));
        }
        expected_prev = stored;
        expected_seq += 1;
        entries += 1;
    }
    Ok(Verification {
        entries,
        head: data_encoding::HEXLOWER.encode(&expected_prev),
        first_broken: None,
    })
}

/// The most recent entries, newest last; `target` filters to one record or patient.
pub fn tail(conn: &Connection, limit: usize, target: Option<&str>) -> Result<Vec<Entry>> {
    let mut stmt = conn.prepare(
        "SELECT seq, at, actor, action, target, purpose, detail, hash FROM audit
         WHERE (?1 IS NULL OR target = ?1 OR substr(target, 1, length(?1) + 1) = ?1 || '/')
         ORDER BY seq DESC LIMIT ?2",
    )?;
    let mut out: Vec<Entry> = stmt
        .query_map(params![target, limit as i64], row_entry)?
        .collect::<rusqlite::Result<_>>()?;
    out.reverse();
    Ok(out)
}

/// The entries about one patient: their records (every version's reads,
/// writes and erasure) and the patient as a whole, newest last. What a
/// patient is shown as "who accessed my records".
pub fn about_patient(conn: &Connection, patient_id: &str, limit: usize) -> Result<Vec<Entry>> {
    let mut stmt = conn.prepare(
        "SELECT seq, at, actor, action, target, purpose, detail, hash FROM audit
         WHERE target IN (SELECT record_id FROM records WHERE patient_id = ?1)
            OR target = 'Patient/' || ?1
         ORDER BY seq DESC LIMIT ?2",
    )?;
    let mut out: Vec<Entry> = stmt
        .query_map(params![patient_id, limit as i64], row_entry)?
        .collect::<rusqlite::Result<_>>()?;
    out.reverse();
    Ok(out)
}

fn row_entry(r: &rusqlite::Row<'_>) -> rusqlite::Result<Entry> {
    Ok(Entry {
        seq: r.get(0)?,
        at: r.get(1)?,
        actor: r.get(2)?,
        action: r.get(3)?,
        target: r.get(4)?,
        purpose: r.get(5)?,
        detail: r.get(6)?,
        hash: data_encoding::HEXLOWER.encode(&r.get::<_, Vec<u8>>(7)?),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn db() -> (tempfile::TempDir, Connection) {
        let dir = tempfile::tempdir().unwrap();
        let conn = crate::storage::store::open(&dir.path().join("m.db")).unwrap();
        (dir, conn)
    }

    fn ev(target: &str) -> Event<'_> {
        Event {
            actor: "alice",
            action: "read",
            target,
            purpose: "treatment",
            detail: serde_json::json!({}),
        }
    }

    #[test]
    fn chain_verifies_and_is_append_only() {
        let (_d, conn) = db();
        for i in 0..5 {
            append(&conn, &ev(&format!("Observation/{i}"))).unwrap();
        }
        let v = verify(&conn).unwrap();
        assert!(v.is_intact());
        assert_eq!(v.entries, 5);
        let err = conn
            .execute("UPDATE audit SET actor = 'mallory' WHERE seq = 2", [])
            .unwrap_err();
        assert!(err.to_string().contains("append-only"), "{err}");
        assert!(conn.execute("DELETE FROM audit WHERE seq = 5", []).is_err());
    }

    #[test]
    fn altered_entry_is_named() {
        let (_d, conn) = db();
        for i in 0..4 {
            append(&conn, &ev(&format!("Observation/{i}"))).unwrap();
        }
        // Bypass the triggers, as someone editing the file would.
        conn.execute_batch("DROP TRIGGER audit_no_update").unwrap();
        conn.execute("UPDATE audit SET purpose = 'marketing' WHERE seq = 3", [])
            .unwrap();
        let v = verify(&conn).unwrap();
        let b = v.first_broken.unwrap();
        assert_eq!(b.seq, 3);
        assert!(b.reason.contains("altered"), "{}", b.reason);
        assert_eq!(v.entries, 2);
    }

    #[test]
    fn removed_entry_is_named() {
        let (_d, conn) = db();
        for i in 0..4 {
            append(&conn, &ev(&format!("Observation/{i}"))).unwrap();
        }
        conn.execute_batch("DROP TRIGGER audit_no_delete").unwrap();
        conn.execute("DELETE FROM audit WHERE seq = 2", []).unwrap();
        let b = verify(&conn).unwrap().first_broken.unwrap();
        assert_eq!(b.seq, 2);
        assert!(b.reason.contains("missing"), "{}", b.reason);
    }

    #[test]
    fn a_target_filter_is_literal_not_a_pattern() {
        let (_d, conn) = db();
        append(&conn, &ev("Observation/a1")).unwrap();
        append(&conn, &ev("Observation/a1/x")).unwrap();
        append(&conn, &ev("ObservationXa1")).unwrap();
        // `_` and `%` are LIKE wildcards; as a target they match only themselves.
        assert!(tail(&conn, 10, Some("Observation_a1")).unwrap().is_empty());
        assert!(tail(&conn, 10, Some("Observation%")).unwrap().is_empty());
        let got: Vec<String> = tail(&conn, 10, Some("Observation/a1"))
            .unwrap()
            .into_iter()
            .map(|e| e.target)
            .collect();
        assert_eq!(got, ["Observation/a1", "Observation/a1/x"]);
    }
}
