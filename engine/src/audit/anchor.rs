//! The audit log sealed and anchored: the unkeyed hash chain ([`super::verify`])
//! catches an edit that does not recompute the hashes after it, not a
//! consistent rewrite of the whole log. So, at each anchor, every entry
//! not yet sealed gets a MAC under the audit key (its bytes: the caller
//! holds it, wrapped by the keystore, `Vault::audit_key`; this module does
//! not depend on the keys), and the keyed head (the last entry's MAC)
//! goes on chain (`PatientRecords.anchorLog`).
//!
//! [`verify_keyed`] recomputes the chain from the entries' contents and
//! checks each sealed entry's MAC, naming the first entry that differs:
//! a rewrite by someone without the key, however consistent, is caught at
//! its first changed entry. Someone holding the key could reseal, so the
//! chain's anchors are checked too: a rewrite under the key shows as the
//! first anchor that no longer matches, after the last that does. Entries
//! written since the last anchor are held only by the unkeyed chain until
//! the next (the server anchors periodically and at shutdown).

use cohort_ledger_bridge::alloy::primitives::B256;
use cohort_ledger_bridge::contracts::PatientRecords;
use cohort_ledger_bridge::{Account, Client, Target};
use hmac::{KeyInit, Mac};
use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;

use super::{Broken, entry_hash};
use crate::{Error, Result};

/// The audit log's number in `PatientRecords.anchorLog`.
pub const AUDIT_LOG: u8 = 0;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS audit_macs (seq INTEGER PRIMARY KEY, mac BLOB NOT NULL);
";

/// An entry's MAC: HMAC-SHA256 under the audit key of its position and hash.
pub fn mac(key: &[u8], seq: i64, hash: &[u8]) -> [u8; 32] {
    let mut m = hmac::Hmac::<sha2::Sha256>::new_from_slice(key).expect("any key length");
    m.update(b"cohort-audit-mac-v1");
    m.update(&seq.to_be_bytes());
    m.update(hash);
    m.finalize().into_bytes().into()
}

/// An anchor sent.
#[derive(Debug, Clone, Serialize)]
pub struct Anchored {
    /// Entries the anchored head covers.
    pub entries: i64,
    /// Entries sealed by this anchor.
    pub sealed: i64,
    /// The keyed head (hex).
    pub head: String,
    /// The transaction.
    pub tx_hash: String,
}

/// Seals the entries not yet sealed and anchors the keyed head on chain as
/// `engine` (the ENGINE role). A broken or rewritten log is refused, not
/// anchored; a log whose head is already anchored sends nothing (`None`).
pub async fn anchor(
    conn: &Connection,
    key: &[u8],
    client: &Client,
    engine: &Account,
) -> Result<Option<Anchored>> {
    conn.execute_batch(SCHEMA)?;
    let v = super::verify(conn)?;
    if let Some(b) = &v.first_broken {
        return Err(Error::AuditBroken(format!(
            "not anchored: the audit log is broken at entry {}: {}",
            b.seq, b.reason
        )));
    }
    if v.entries == 0 {
        return Ok(None);
    }
    // A log rewritten since it was sealed (or unlike an anchor the mirror
    // holds) is not anchored: that would vouch for the rewrite.
    let keyed = verify_keyed(conn, key, &anchors(conn)?)?;
    if let Some(b) = keyed.first_differing {
        return Err(Error::AuditBroken(format!(
            "not anchored: the audit log was rewritten at entry {}: {}",
            b.seq, b.reason
        )));
    }
    let on_chain = client
        .view(
            Target::Records,
            PatientRecords::logAnchorOfCall { log: AUDIT_LOG },
        )
        .await?;
    if on_chain.entries as i64 >= v.entries {
        return Ok(None);
    }
    let (sealed, head) = seal(conn, key, v.entries)?;
    let receipt = client
        .send(
            engine,
            Target::Records,
            PatientRecords::anchorLogCall {
                log: AUDIT_LOG,
                entries: v.entries as u64,
                head,
            },
        )
        .await?;
    Ok(Some(Anchored {
        entries: v.entries,
        sealed,
        head: format!("{head:#x}"),
        tx_hash: format!("{:#x}", receipt.tx_hash),
    }))
}

/// Seals (MACs) the entries up to `entries` not sealed yet; returns how
/// many it sealed and the keyed head of entry `entries`.
pub fn seal(conn: &Connection, key: &[u8], entries: i64) -> Result<(i64, B256)> {
    conn.execute_batch(SCHEMA)?;
    let sealed_to: i64 =
        conn.query_row("SELECT COALESCE(MAX(seq), 0) FROM audit_macs", [], |r| {
            r.get(0)
        })?;
    let db = conn.unchecked_transaction()?;
    let rows: Vec<(i64, Vec<u8>)> = db
        .prepare("SELECT seq, hash FROM audit WHERE seq > ?1 AND seq <= ?2 ORDER BY seq")?
        .query_map(params![sealed_to, entries], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<rusqlite::Result<_>>()?;
    let mut head = [0u8; 32];
    let mut insert = db.prepare("INSERT OR REPLACE INTO audit_macs (seq, mac) VALUES (?1, ?2)")?;
    for (seq, hash) in &rows {
        head = mac(key, *seq, hash);
        insert.execute(params![seq, head.to_vec()])?;
    }
    drop(insert);
    if rows.is_empty() {
        let last: Vec<u8> = db.query_row(
            "SELECT mac FROM audit_macs WHERE seq = ?1",
            [entries],
            |r| r.get(0),
        )?;
        head.copy_from_slice(&last);
    }
    db.commit()?;
    Ok((rows.len() as i64, B256::from(head)))
}

/// One anchor on chain: the log's length then and its keyed head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogAnchor {
    /// Entries it covers.
    pub entries: i64,
    /// The keyed head.
    pub head: B256,
}

/// The audit log's anchors as the follower mirrored them, oldest first.
pub fn anchors(conn: &Connection) -> Result<Vec<LogAnchor>> {
    anchors_of(conn, AUDIT_LOG)
}

/// The anchors of log `log` (see `PatientRecords.anchorLog`) as the
/// follower mirrored them, oldest first.
pub fn anchors_of(conn: &Connection, log: u8) -> Result<Vec<LogAnchor>> {
    cohort_ledger_bridge::Follower::install(conn)?;
    let rows: Vec<(i64, String)> = conn
        .prepare("SELECT entries, head FROM ledger_log_anchors WHERE log = ?1 ORDER BY entries")?
        .query_map([log], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<rusqlite::Result<_>>()?;
    rows.into_iter()
        .map(|(entries, head)| {
            Ok(LogAnchor {
                entries,
                head: head
                    .parse()
                    .map_err(|_| Error::Invalid(format!("a mirrored anchor head `{head}`")))?,
            })
        })
        .collect()
}

/// What [`verify_keyed`] found.
#[derive(Debug, Clone, Serialize)]
pub struct KeyedVerification {
    /// Entries whose MAC was checked.
    pub sealed_checked: i64,
    /// Anchors checked.
    pub anchors_checked: usize,
    /// Entries after the last anchor (held by the unkeyed chain only).
    pub unanchored: i64,
    /// The first entry that differs from what was sealed or anchored.
    pub first_differing: Option<Broken>,
}

impl KeyedVerification {
    /// Whether every sealed entry and every anchor matched.
    pub fn is_intact(&self) -> bool {
        self.first_differing.is_none()
    }
}

/// Recomputes every entry's hash from its contents, checks each sealed
/// entry's MAC and each anchor's keyed head; names the first entry that
/// differs.
pub fn verify_keyed(
    conn: &Connection,
    key: &[u8],
    anchors: &[LogAnchor],
) -> Result<KeyedVerification> {
    conn.execute_batch(SCHEMA)?;
    let mut stmt = conn.prepare(
        "SELECT a.seq, a.at, a.actor, a.action, a.target, a.purpose, a.detail, m.mac
         FROM audit a LEFT JOIN audit_macs m ON m.seq = a.seq ORDER BY a.seq",
    )?;
    let mut rows = stmt.query([])?;
    let mut prev = super::GENESIS.to_vec();
    let (mut checked, mut last_seq) = (0i64, 0i64);
    let mut macs_by_seq = std::collections::HashMap::new();
    let mut first: Option<Broken> = None;
    while let Some(row) = rows.next()? {
        let seq: i64 = row.get(0)?;
        let fields: Vec<Vec<u8>> = (1..=6)
            .map(|i| super::raw(row, i))
            .collect::<rusqlite::Result<_>>()?;
        let refs: Vec<&[u8]> = fields.iter().map(Vec::as_slice).collect();
        let hash = entry_hash(seq, &refs, &prev);
        let keyed = mac(key, seq, &hash);
        let sealed: Option<Vec<u8>> = row.get(7)?;
        if let Some(sealed) = sealed {
            checked += 1;
            if first.is_none() && sealed != keyed {
                first = Some(Broken {
                    seq,
                    reason: format!(
                        "audit entry {seq} differs from what was sealed when it was anchored (its MAC under the audit key no longer matches: the log was rewritten from here)"
                    ),
                });
            }
        }
        macs_by_seq.insert(seq, keyed);
        prev = hash.to_vec();
        last_seq = seq;
    }
    let mut last_good = 0i64;
    for a in anchors {
        match macs_by_seq.get(&a.entries) {
            Some(m) if B256::from(*m) == a.head => last_good = a.entries,
            Some(_) if first.is_none() => {
                first = Some(Broken {
                    seq: last_good + 1,
                    reason: format!(
                        "the log up to entry {} differs from the head anchored on chain (entries {} to {} were rewritten, even if consistently)",
                        a.entries,
                        last_good + 1,
                        a.entries
                    ),
                });
            }
            None if first.is_none() => {
                first = Some(Broken {
                    seq: last_seq + 1,
                    reason: format!(
                        "the chain anchored {} entries but the log holds {last_seq}: entries were removed",
                        a.entries
                    ),
                });
            }
            _ => {}
        }
    }
    let anchored = anchors.iter().map(|a| a.entries).max().unwrap_or(0);
    Ok(KeyedVerification {
        sealed_checked: checked,
        anchors_checked: anchors.len(),
        unanchored: (last_seq - anchored).max(0),
        first_differing: first,
    })
}

/// The latest anchor's length, from the mirror (0 when none).
pub fn anchored_entries(conn: &Connection) -> Result<i64> {
    cohort_ledger_bridge::Follower::install(conn)?;
    Ok(conn
        .query_row(
            "SELECT MAX(entries) FROM ledger_log_anchors WHERE log = ?1",
            [AUDIT_LOG],
            |r| r.get::<_, Option<i64>>(0),
        )
        .optional()?
        .flatten()
        .unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::{Event, append};

    fn db() -> (tempfile::TempDir, Connection) {
        let d = tempfile::tempdir().unwrap();
        let conn = crate::storage::store::open(&d.path().join("c.db")).unwrap();
        (d, conn)
    }

    fn log(conn: &Connection, n: usize) {
        for i in 0..n {
            append(
                conn,
                &Event {
                    actor: "operator",
                    action: "read",
                    target: &format!("Observation/{i}"),
                    purpose: "treatment",
                    detail: serde_json::json!({ "i": i }),
                },
            )
            .unwrap();
        }
    }

    /// Rewrites entry `seq`'s purpose and recomputes every hash from there
    /// with the public algorithm: the unkeyed chain verifies again.
    fn rewrite_consistently(conn: &Connection, seq: i64) {
        conn.execute_batch("DROP TRIGGER IF EXISTS audit_no_update")
            .unwrap();
        conn.execute(
            "UPDATE audit SET purpose = 'marketing' WHERE seq = ?1",
            [seq],
        )
        .unwrap();
        let rows: Vec<(i64, Vec<Vec<u8>>)> = conn
            .prepare(
                "SELECT seq, at, actor, action, target, purpose, detail FROM audit ORDER BY seq",
            )
            .unwrap()
            .query_map([], |r| {
                Ok((
                    r.get(0)?,
                    (1..=6)
                        .map(|i| crate::audit::raw(r, i))
                        .collect::<rusqlite::Result<_>>()?,
                ))
            })
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap();
        let mut prev = crate::audit::GENESIS.to_vec();
        for (seq, fields) in rows {
            let refs: Vec<&[u8]> = fields.iter().map(Vec::as_slice).collect();
            let hash = entry_hash(seq, &refs, &prev);
            conn.execute(
                "UPDATE audit SET prev_hash = ?2, hash = ?3 WHERE seq = ?1",
                params![seq, prev, hash.to_vec()],
            )
            .unwrap();
            prev = hash.to_vec();
        }
        assert!(
            crate::audit::verify(conn).unwrap().is_intact(),
            "a consistent rewrite"
        );
    }

    #[test]
    fn a_consistent_rewrite_without_the_key_is_named_at_its_first_entry() {
        let (_d, conn) = db();
        let key = [7u8; 32];
        log(&conn, 6);
        let (sealed, head) = seal(&conn, &key, 6).unwrap();
        assert_eq!(sealed, 6);
        let anchors = [LogAnchor { entries: 6, head }];
        assert!(verify_keyed(&conn, &key, &anchors).unwrap().is_intact());
        rewrite_consistently(&conn, 4);
        let v = verify_keyed(&conn, &key, &anchors).unwrap();
        let b = v.first_differing.unwrap();
        assert_eq!(b.seq, 4, "{}", b.reason);
        assert!(b.reason.contains("sealed"), "{}", b.reason);
    }

    #[test]
    fn a_rewrite_resealed_with_the_key_is_caught_by_the_anchors() {
        let (_d, conn) = db();
        let key = [7u8; 32];
        log(&conn, 4);
        let (_, first) = seal(&conn, &key, 4).unwrap();
        log(&conn, 4);
        let (sealed, second) = seal(&conn, &key, 8).unwrap();
        assert_eq!(sealed, 4, "only the new entries are sealed");
        let anchors = [
            LogAnchor {
                entries: 4,
                head: first,
            },
            LogAnchor {
                entries: 8,
                head: second,
            },
        ];
        assert!(verify_keyed(&conn, &key, &anchors).unwrap().is_intact());
        // A key holder rewrites entry 6 and reseals everything.
        rewrite_consistently(&conn, 6);
        conn.execute("DELETE FROM audit_macs", []).unwrap();
        seal(&conn, &key, 8).unwrap();
        let b = verify_keyed(&conn, &key, &anchors)
            .unwrap()
            .first_differing
            .unwrap();
        assert_eq!(b.seq, 5, "after the last anchor that matches: {}", b.reason);
        assert!(b.reason.contains("entries 5 to 8"), "{}", b.reason);
    }

    #[test]
    fn removed_anchored_entries_are_named_and_unanchored_ones_counted() {
        let (_d, conn) = db();
        let key = [7u8; 32];
        log(&conn, 5);
        let (_, head) = seal(&conn, &key, 5).unwrap();
        let anchors = [LogAnchor { entries: 5, head }];
        log(&conn, 2);
        let v = verify_keyed(&conn, &key, &anchors).unwrap();
        assert!(v.is_intact());
        assert_eq!(v.unanchored, 2);
        conn.execute_batch("DROP TRIGGER IF EXISTS audit_no_delete")
            .unwrap();
        conn.execute("DELETE FROM audit WHERE seq >= 4", [])
            .unwrap();
        conn.execute("DELETE FROM audit_macs WHERE seq >= 4", [])
            .unwrap();
        let b = verify_keyed(&conn, &key, &anchors)
            .unwrap()
            .first_differing
            .unwrap();
        assert!(b.reason.contains("entries were removed"), "{}", b.reason);
        // The wrong key matches nothing.
        let other = [8u8; 32];
        let v = verify_keyed(&conn, &other, &[]).unwrap();
        assert!(v.first_differing.is_some());
    }
}
