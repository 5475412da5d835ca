//! The vault's index sealed and anchored, as the audit log is
//! ([`crate::audit::anchor`]): each record version's row (`records`) is
//! sealed, in the order it was first sealed, into a MAC chain under the
//! audit key (position, the MAC before it, and every field of the row),
//! and the chain's head goes on chain (`PatientRecords.anchorLog`, log
//! [`VAULT_INDEX`]). The rows are never updated (a purge or an erasure
//! leaves them), so [`verify`] recomputes the chain from the rows as they
//! are and names the first version whose row changed or went missing, and
//! an anchor on chain that the rows no longer reproduce: a consistent
//! rewrite by someone holding the database, however careful, is caught.
//! Rows stored since the last seal are held only by the per-version
//! anchors (`records::anchor`) until the next.

use cohort_ledger_bridge::alloy::primitives::B256;
use cohort_ledger_bridge::contracts::PatientRecords;
use cohort_ledger_bridge::{Account, Client, Target};
use hmac::{KeyInit, Mac};
use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;

use crate::audit::Broken;
use crate::audit::anchor::{Anchored, LogAnchor, anchors_of};
use crate::{Error, Result};

/// The vault index's number in `PatientRecords.anchorLog`.
pub const VAULT_INDEX: u8 = 1;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS index_seals (
    seq INTEGER PRIMARY KEY, record_id TEXT NOT NULL, version INTEGER NOT NULL, mac BLOB NOT NULL,
    UNIQUE (record_id, version)
);
";

/// One row's fields, as sealed.
struct Row {
    record_id: String,
    version: i64,
    patient_id: String,
    resource_type: String,
    cid: String,
    prev_cid: Option<String>,
    content_mac: Vec<u8>,
    size: i64,
    created_at: String,
}

const ROW: &str =
    "record_id, version, patient_id, resource_type, cid, prev_cid, content_mac, size, created_at";

fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Row> {
    Ok(Row {
        record_id: r.get(0)?,
        version: r.get(1)?,
        patient_id: r.get(2)?,
        resource_type: r.get(3)?,
        cid: r.get(4)?,
        prev_cid: r.get(5)?,
        content_mac: r.get(6)?,
        size: r.get(7)?,
        created_at: r.get(8)?,
    })
}

/// A row's MAC in the chain: HMAC-SHA256 under the audit key of its
/// position, the MAC before it and each field (length-prefixed).
fn seal_mac(key: &[u8], seq: i64, prev: &[u8; 32], r: &Row) -> [u8; 32] {
    let mut m = hmac::Hmac::<sha2::Sha256>::new_from_slice(key).expect("any key length");
    m.update(b"cohort-index-mac-v1");
    m.update(&seq.to_be_bytes());
    m.update(prev);
    let prev_cid = r.prev_cid.as_deref().unwrap_or("");
    let version = r.version.to_be_bytes();
    let size = r.size.to_be_bytes();
    for field in [
        r.record_id.as_bytes(),
        &version,
        r.patient_id.as_bytes(),
        r.resource_type.as_bytes(),
        r.cid.as_bytes(),
        prev_cid.as_bytes(),
        &r.content_mac,
        &size,
        r.created_at.as_bytes(),
    ] {
        m.update(&(field.len() as u64).to_be_bytes());
        m.update(field);
    }
    m.finalize().into_bytes().into()
}

/// Seals the rows not sealed yet (oldest first); returns how many it
/// sealed, the rows sealed in all, and the head.
pub fn seal(conn: &Connection, key: &[u8]) -> Result<(i64, i64, B256)> {
    conn.execute_batch(SCHEMA)?;
    let db = conn.unchecked_transaction()?;
    let last: Option<(i64, Vec<u8>)> = db
        .query_row(
            "SELECT seq, mac FROM index_seals ORDER BY seq DESC LIMIT 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?;
    let (mut seq, mut prev) = match last {
        Some((s, m)) => (
            s,
            m.try_into()
                .map_err(|_| Error::Invalid("a sealed index MAC is not 32 bytes".into()))?,
        ),
        None => (0, [0u8; 32]),
    };
    let fresh: Vec<Row> = db
        .prepare(&format!(
            "SELECT {ROW} FROM records r
             WHERE NOT EXISTS (SELECT 1 FROM index_seals s WHERE s.record_id = r.record_id AND s.version = r.version)
             ORDER BY created_at, record_id, version"
        ))?
        .query_map([], row)?
        .collect::<rusqlite::Result<_>>()?;
    // One statement for every row: 223,718 of them in the demo.
    let mut insert = db.prepare(
        "INSERT INTO index_seals (seq, record_id, version, mac) VALUES (?1, ?2, ?3, ?4)",
    )?;
    for r in &fresh {
        seq += 1;
        prev = seal_mac(key, seq, &prev, r);
        insert.execute(params![seq, r.record_id, r.version, prev.to_vec()])?;
    }
    drop(insert);
    db.commit()?;
    Ok((fresh.len() as i64, seq, B256::from(prev)))
}

/// What [`verify`] found.
#[derive(Debug, Clone, Default, Serialize)]
pub struct IndexVerification {
    /// Sealed rows checked.
    pub sealed_checked: i64,
    /// Anchors checked.
    pub anchors_checked: usize,
    /// Rows stored since the last seal.
    pub unsealed: i64,
    /// The first sealed row that differs (its position in the chain) and why.
    pub first_differing: Option<Broken>,
}

impl IndexVerification {
    /// Whether every sealed row and every anchor matched.
    pub fn is_intact(&self) -> bool {
        self.first_differing.is_none()
    }
}

/// Recomputes the seal chain from the rows as they are now and checks it
/// against the seals kept here and the anchors on chain.
pub fn verify(conn: &Connection, key: &[u8], anchors: &[LogAnchor]) -> Result<IndexVerification> {
    conn.execute_batch(SCHEMA)?;
    let seals: Vec<(i64, String, i64, Vec<u8>)> = conn
        .prepare("SELECT seq, record_id, version, mac FROM index_seals ORDER BY seq")?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?
        .collect::<rusqlite::Result<_>>()?;
    let mut lookup = conn.prepare(&format!(
        "SELECT {ROW} FROM records WHERE record_id = ?1 AND version = ?2"
    ))?;
    let mut out = IndexVerification::default();
    let mut prev = [0u8; 32];
    let mut macs = std::collections::HashMap::new();
    for (i, (seq, record_id, version, sealed)) in seals.iter().enumerate() {
        let expected = i as i64 + 1;
        let current = lookup
            .query_row(params![record_id, version], row)
            .optional()?;
        let differs = |reason: String| Broken { seq: *seq, reason };
        let problem = if *seq != expected {
            Some(differs(format!(
                "seal {expected} is missing: the index's seals were cut"
            )))
        } else {
            match &current {
                None => Some(differs(format!(
                    "{record_id} version {version} was sealed into the index but its row is gone"
                ))),
                Some(r) => {
                    let mac = seal_mac(key, *seq, &prev, r);
                    prev = mac;
                    macs.insert(*seq, mac);
                    (mac.as_slice() != sealed.as_slice()).then(|| {
                        differs(format!(
                            "{record_id} version {version} differs from what was sealed (its row, or a row before it, was rewritten)"
                        ))
                    })
                }
            }
        };
        out.sealed_checked += 1;
        if let Some(p) = problem {
            out.first_differing.get_or_insert(p);
            break;
        }
    }
    let sealed = seals.len() as i64;
    for a in anchors {
        out.anchors_checked += 1;
        if out.first_differing.is_some() {
            break;
        }
        match macs.get(&a.entries) {
            Some(m) if B256::from(*m) == a.head => {}
            Some(_) => {
                out.first_differing = Some(Broken {
                    seq: a.entries,
                    reason: format!(
                        "the index's first {} rows no longer give the head anchored on chain (rewritten, even if consistently, seals included)",
                        a.entries
                    ),
                })
            }
            None => {
                out.first_differing = Some(Broken {
                    seq: sealed + 1,
                    reason: format!(
                        "the chain anchored {} index rows but {sealed} are sealed here: rows or seals were removed",
                        a.entries
                    ),
                })
            }
        }
    }
    let rows: i64 = conn.query_row("SELECT COUNT(*) FROM records", [], |r| r.get(0))?;
    out.unsealed = (rows - sealed).max(0);
    Ok(out)
}

/// Seals the new rows and anchors the index's head on chain as `engine`
/// (the ENGINE role). An index that no longer matches its seals is refused,
/// not anchored; nothing new sends nothing (`None`).
pub async fn anchor(
    conn: &Connection,
    key: &[u8],
    client: &Client,
    engine: &Account,
) -> Result<Option<Anchored>> {
    let checked = verify(conn, key, &anchors_of(conn, VAULT_INDEX)?)?;
    if let Some(b) = checked.first_differing {
        return Err(Error::AuditBroken(format!(
            "the vault's index is not anchored: at seal {}: {}",
            b.seq, b.reason
        )));
    }
    let (sealed, entries, head) = seal(conn, key)?;
    if entries == 0 {
        return Ok(None);
    }
    let on_chain = client
        .view(
            Target::Records,
            PatientRecords::logAnchorOfCall { log: VAULT_INDEX },
        )
        .await?;
    if on_chain.entries as i64 >= entries {
        return Ok(None);
    }
    let receipt = client
        .send(
            engine,
            Target::Records,
            PatientRecords::anchorLogCall {
                log: VAULT_INDEX,
                entries: entries as u64,
                head,
            },
        )
        .await?;
    Ok(Some(Anchored {
        entries,
        sealed,
        head: format!("{head:#x}"),
        tx_hash: format!("{:#x}", receipt.tx_hash),
    }))
}

/// What one anchoring round sent: the audit log's head and the index's.
#[derive(Debug, Clone, Serialize)]
pub struct BothAnchored {
    /// The audit log's anchor, if anything new was sealed.
    pub audit: Option<Anchored>,
    /// The vault index's anchor, if anything new was sealed.
    pub index: Option<Anchored>,
}

/// Anchors the audit log's keyed head and then the vault index's, as
/// `engine`, under the vault's audit key: what `cohort audit anchor` and the
/// server's periodic and shutdown anchoring do.
pub async fn anchor_both(
    vault: &crate::records::vault::Vault,
    client: &Client,
    engine: &Account,
) -> Result<BothAnchored> {
    let key = vault.audit_key()?;
    let audit = crate::audit::anchor::anchor(vault.conn(), key.expose(), client, engine).await?;
    let index = anchor(vault.conn(), key.expose(), client, engine).await?;
    Ok(BothAnchored { audit, index })
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &[u8] = b"an audit key of thirty-two bytes";

    fn db(rows: usize) -> Connection {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(
            "CREATE TABLE records (record_id TEXT, version INTEGER, patient_id TEXT, resource_type TEXT,
             cid TEXT, prev_cid TEXT, content_mac BLOB, size INTEGER, created_at TEXT,
             PRIMARY KEY (record_id, version))",
        )
        .unwrap();
        for i in 0..rows {
            add(&conn, i);
        }
        conn
    }

    fn add(conn: &Connection, i: usize) {
        conn.execute(
            "INSERT INTO records VALUES (?1, 1, 'p', 'Observation', ?2, NULL, x'00', 10, ?3)",
            params![
                format!("Observation/{i}"),
                format!("bafy{i}"),
                format!("2026-12-06T00:00:{i:02}Z")
            ],
        )
        .unwrap();
    }

    fn anchor_now(conn: &Connection) -> LogAnchor {
        let (_, entries, head) = seal(conn, KEY).unwrap();
        LogAnchor { entries, head }
    }

    #[test]
    fn sealed_rows_verify_and_new_rows_wait_for_the_next_seal() {
        let conn = db(3);
        let a = anchor_now(&conn);
        assert_eq!(a.entries, 3);
        add(&conn, 3);
        let v = verify(&conn, KEY, std::slice::from_ref(&a)).unwrap();
        assert!(v.is_intact(), "{v:?}");
        assert_eq!((v.sealed_checked, v.unsealed, v.anchors_checked), (3, 1, 1));
        let b = anchor_now(&conn);
        assert_eq!(b.entries, 4);
        assert!(verify(&conn, KEY, &[a, b]).unwrap().is_intact());
    }

    #[test]
    fn a_changed_or_removed_row_is_named() {
        let conn = db(4);
        let a = anchor_now(&conn);
        conn.execute(
            "UPDATE records SET cid = 'bafyevil' WHERE record_id = 'Observation/2'",
            [],
        )
        .unwrap();
        let v = verify(&conn, KEY, std::slice::from_ref(&a)).unwrap();
        let b = v.first_differing.unwrap();
        assert!(
            b.reason.contains("Observation/2") && b.reason.contains("differs"),
            "{}",
            b.reason
        );
        conn.execute(
            "UPDATE records SET cid = 'bafy2' WHERE record_id = 'Observation/2'",
            [],
        )
        .unwrap();
        assert!(
            verify(&conn, KEY, std::slice::from_ref(&a))
                .unwrap()
                .is_intact()
        );
        conn.execute("DELETE FROM records WHERE record_id = 'Observation/1'", [])
            .unwrap();
        let b = verify(&conn, KEY, std::slice::from_ref(&a))
            .unwrap()
            .first_differing
            .unwrap();
        assert!(
            b.reason.contains("Observation/1") && b.reason.contains("gone"),
            "{}",
            b.reason
        );
    }

    #[test]
    fn a_consistent_rewrite_with_fresh_seals_is_caught_by_the_anchor() {
        let conn = db(3);
        let a = anchor_now(&conn);
        // Someone without the key rewrites a row and reseals under another key:
        conn.execute(
            "UPDATE records SET patient_id = 'q' WHERE record_id = 'Observation/0'",
            [],
        )
        .unwrap();
        conn.execute("DELETE FROM index_seals", []).unwrap();
        seal(&conn, b"another key entirely, 32 bytes!!").unwrap();
        let b = verify(&conn, KEY, std::slice::from_ref(&a))
            .unwrap()
            .first_differing
            .unwrap();
        assert!(b.reason.contains("Observation/0"), "{}", b.reason);
        // Someone with the key reseals: the anchor on chain no longer matches.
        conn.execute("DELETE FROM index_seals", []).unwrap();
        seal(&conn, KEY).unwrap();
        let b = verify(&conn, KEY, std::slice::from_ref(&a))
            .unwrap()
            .first_differing
            .unwrap();
        assert!(b.reason.contains("anchored on chain"), "{}", b.reason);
        // Cutting the seals and rows after an anchor is named too.
        let conn = db(3);
        let a = anchor_now(&conn);
        conn.execute("DELETE FROM index_seals WHERE seq = 3", [])
            .unwrap();
        conn.execute("DELETE FROM records WHERE record_id = 'Observation/2'", [])
            .unwrap();
        let b = verify(&conn, KEY, &[a]).unwrap().first_differing.unwrap();
        assert!(b.reason.contains("removed"), "{}", b.reason);
    }
}
