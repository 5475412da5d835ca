//! The audit chain names the first broken entry when a byte of the database
//! file is flipped, and holds no PHI.

use super::{bundles, cohort, cohort_json, stdout};

#[test]
fn a_flipped_byte_in_the_file_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let b = bundles(tmp.path(), 30, 11);
    cohort_json(&data, &["ingest", b.to_str().unwrap()]);
    // One more bundle (one patient), ingested for a purpose that marks its entry.
    let marked_bundle = bundles(&tmp.path().join("marked"), 1, 12);
    cohort_json(
        &data,
        &[
            "ingest",
            marked_bundle.to_str().unwrap(),
            "--purpose",
            "quality-review-QX7",
        ],
    );
    let log = cohort_json(&data, &["audit", "log", "--limit", "1"]);
    let marked = log[0]["seq"].as_i64().unwrap();
    assert_eq!(log[0]["purpose"], "quality-review-QX7");
    // One more entry after it: the first bundles again (unchanged, audited).
    cohort_json(&data, &["ingest", b.to_str().unwrap()]);
    let before = cohort_json(&data, &["audit", "verify"]);
    assert!(before["first_broken"].is_null());
    let entries = before["entries"].as_i64().unwrap();

    // Every connection is closed, so the WAL has been folded into the file.
    let db = data.join("cohort.db");
    let mut bytes = std::fs::read(&db).unwrap();
    let needle = b"quality-review-QX7";
    let hits: Vec<usize> = bytes
        .windows(needle.len())
        .enumerate()
        .filter(|(_, w)| w == needle)
        .map(|(i, _)| i)
        .collect();
    assert_eq!(hits.len(), 1, "the marker is stored once");
    bytes[hits[0] + needle.len() - 1] ^= 0x01; // '7' -> '6'
    std::fs::write(&db, &bytes).unwrap();

    let out = cohort(&data, &["audit", "verify"]);
    assert_eq!(
        out.status.code(),
        Some(3),
        "verify must fail: {}",
        stdout(&out)
    );
    assert!(
        stdout(&out).contains(&format!("entry {marked}")),
        "{}",
        stdout(&out)
    );
    let after = cohort_json_allow_fail(&data, &["audit", "verify"]);
    assert_eq!(after["first_broken"]["seq"].as_i64(), Some(marked));
    assert_eq!(
        after["entries"].as_i64(),
        Some(marked - 1),
        "entries before it still verify"
    );
    assert!(entries > marked, "the marked entry was not the last");
}

fn cohort_json_allow_fail(data: &std::path::Path, args: &[&str]) -> serde_json::Value {
    let mut all = args.to_vec();
    all.push("--json");
    serde_json::from_slice(&cohort(data, &all).stdout).unwrap()
}

#[test]
fn audit_log_holds_no_phi() {
    let (tmp, _dir, vault) = super::vault();
    let b = bundles(tmp.path(), 20, 5);
    cohort_engine::records::ingest::ingest_paths(
        &vault,
        &super::access(),
        std::slice::from_ref(&b),
        false,
    )
    .unwrap();
    let list = vault.list(None, 5).unwrap();
    for r in &list {
        vault.read(&super::access(), &r.record_id, None).unwrap();
    }
    // Names, phones, SSNs and birth dates of the cohort appear nowhere in the log.
    let mut identifiers = Vec::new();
    for p in super::source_patients(&b) {
        identifiers.extend(
            [
                p.family_name,
                p.phone,
                p.ssn,
                p.mrn,
                p.email,
                p.address_line,
            ]
            .into_iter()
            .flatten(),
        );
    }
    assert!(identifiers.len() > 50);
    let mut stmt = vault
        .conn()
        .prepare("SELECT actor, action, target, purpose, detail FROM audit")
        .unwrap();
    let rows: Vec<String> = stmt
        .query_map([], |r| {
            Ok(format!(
                "{}|{}|{}|{}|{}",
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, String>(3)?,
                r.get::<_, String>(4)?
            ))
        })
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert!(rows.len() > 5);
    for row in &rows {
        for id in &identifiers {
            assert!(
                !row.contains(id.as_str()),
                "audit entry contains an identifier: {row}"
            );
        }
    }
}

/// Rewrites entry `seq`'s purpose in the file and recomputes every hash
/// after it with the public algorithm, as someone with the database but
/// not the keystore would: the unkeyed chain verifies again.
fn rewrite_consistently(db: &std::path::Path, seq: i64) {
    let conn = rusqlite::Connection::open(db).unwrap();
    conn.execute_batch("DROP TRIGGER IF EXISTS audit_no_update")
        .unwrap();
    conn.execute(
        "UPDATE audit SET purpose = 'marketing' WHERE seq = ?1",
        [seq],
    )
    .unwrap();
    let rows: Vec<(i64, Vec<String>)> = conn
        .prepare("SELECT seq, at, actor, action, target, purpose, detail FROM audit ORDER BY seq")
        .unwrap()
        .query_map([], |r| {
            Ok((
                r.get(0)?,
                (1..=6).map(|i| r.get(i)).collect::<rusqlite::Result<_>>()?,
            ))
        })
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let mut prev = cohort_engine::audit::GENESIS.to_vec();
    for (seq, fields) in rows {
        let refs: Vec<&[u8]> = fields.iter().map(|f| f.as_bytes()).collect();
        let hash = cohort_engine::audit::entry_hash(seq, &refs, &prev);
        conn.execute(
            "UPDATE audit SET prev_hash = ?2, hash = ?3 WHERE seq = ?1",
            rusqlite::params![seq, prev, hash.to_vec()],
        )
        .unwrap();
        prev = hash.to_vec();
    }
}

#[test]
fn a_consistent_rewrite_of_the_whole_log_is_named_against_its_anchor() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    cohort_json(&data, &["ledger", "deploy"]);
    let b = bundles(tmp.path(), 3, 13);
    cohort_json(&data, &["ingest", b.to_str().unwrap()]);
    let anchored = cohort_json(&data, &["audit", "anchor"]);
    let entries = anchored["entries"].as_i64().unwrap();
    assert!(entries >= 3, "{anchored}");
    assert!(
        cohort_json(&data, &["audit", "anchor"]).is_null(),
        "an anchored head is not anchored twice"
    );
    let ok = cohort_json(&data, &["audit", "verify"]);
    assert!(ok["first_broken"].is_null(), "{ok}");
    assert_eq!(ok["keyed"]["anchors_checked"], 1, "{ok}");
    assert_eq!(ok["keyed"]["sealed_checked"].as_i64(), Some(entries));

    rewrite_consistently(&data.join("cohort.db"), 2);
    // The unkeyed chain is fooled; the keyed check names the entry.
    let fooled = cohort_json(&data, &["audit", "verify", "--unkeyed"]);
    assert!(fooled["first_broken"].is_null(), "{fooled}");
    let out = cohort(&data, &["audit", "verify"]);
    assert_eq!(out.status.code(), Some(3), "{}", stdout(&out));
    assert!(
        stdout(&out).contains("REWRITTEN at entry 2"),
        "{}",
        stdout(&out)
    );
    // A rewritten log is not anchored, even with new entries after it.
    assert!(
        cohort(&data, &["ingest", b.to_str().unwrap()])
            .status
            .success()
    );
    let anchor = cohort(&data, &["audit", "anchor"]);
    assert!(!anchor.status.success());
    assert!(
        crate::stderr(&anchor).contains("rewritten at entry 2"),
        "{}",
        crate::stderr(&anchor)
    );
}

#[test]
fn a_rewritten_row_of_the_vault_index_is_named_against_its_anchor() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    cohort_json(&data, &["ledger", "deploy"]);
    let b = bundles(tmp.path(), 3, 17);
    cohort_json(&data, &["ingest", b.to_str().unwrap()]);
    let anchored = cohort_json(&data, &["audit", "anchor"]);
    let rows = anchored["index"]["entries"].as_i64().unwrap();
    let conn = rusqlite::Connection::open(data.join("cohort.db")).unwrap();
    let stored: i64 = conn
        .query_row("SELECT COUNT(*) FROM records", [], |r| r.get(0))
        .unwrap();
    assert_eq!(rows, stored, "{anchored}");
    let ok = cohort_json(&data, &["audit", "verify"]);
    assert_eq!(ok["index"]["sealed_checked"].as_i64(), Some(rows), "{ok}");
    assert_eq!(ok["index"]["anchors_checked"], 1, "{ok}");
    assert!(ok["index"]["first_differing"].is_null(), "{ok}");

    // One version's row pointed at another patient: named, exit status 3,
    // and the index is not anchored over it.
    let (record, version): (String, i64) = conn
        .query_row(
            "SELECT record_id, version FROM records ORDER BY created_at DESC LIMIT 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    conn.execute(
        "UPDATE records SET patient_id = (SELECT MIN(patient_id) FROM patients) || '' WHERE record_id = ?1 AND version = ?2",
        rusqlite::params![record, version],
    )
    .unwrap();
    conn.execute(
        "UPDATE records SET size = size + 1 WHERE record_id = ?1 AND version = ?2",
        rusqlite::params![record, version],
    )
    .unwrap();
    drop(conn);
    let out = cohort(&data, &["audit", "verify"]);
    assert_eq!(out.status.code(), Some(3), "{}", stdout(&out));
    assert!(
        stdout(&out).contains("vault index REWRITTEN") && stdout(&out).contains(&record),
        "{}",
        stdout(&out)
    );
    let again = cohort(&data, &["audit", "anchor"]);
    assert!(!again.status.success());
    assert!(
        crate::stderr(&again).contains("vault's index is not anchored"),
        "{}",
        crate::stderr(&again)
    );
}
