//! The record vault: encryption, versions, integrity, wrong keys, shredding.

use cohort_engine::Error;
use cohort_engine::records::vault::{NewRecord, PutOutcome};

use super::{FAST_KDF, PASSPHRASE, access, vault};

fn rec<'a>(patient: &'a str, id: &'a str, body: &'a [u8]) -> NewRecord<'a> {
    NewRecord {
        patient_id: patient,
        record_id: id,
        resource_type: "Observation",
        content: body,
    }
}

/// Where the block `cid` lies in its pack file.
fn location(
    dir: &cohort_engine::datadir::DataDir,
    cid: &str,
) -> cohort_engine::storage::packstore::BlockLocation {
    dir.block_store().unwrap().location(cid).unwrap().unwrap()
}

#[test]
fn stores_encrypted_and_reads_back() {
    let (_tmp, dir, vault) = vault();
    let body = br#"{"resourceType":"Observation","id":"o1","note":"HbA1c 9.1 for Jane Roe"}"#;
    let (outcome, rv) = vault
        .put(&access(), &rec("p1", "Observation/o1", body))
        .unwrap();
    assert_eq!(outcome, PutOutcome::Created);
    let (_, back) = vault.read(&access(), "Observation/o1", None).unwrap();
    assert_eq!(back, body);
    // On disk the block is ciphertext: the plaintext appears nowhere in the data directory.
    let at = location(&dir, &rv.cid);
    let pack = std::fs::read(&at.path).unwrap();
    let raw = &pack[at.offset as usize..(at.offset + at.len) as usize];
    assert!(!raw.windows(8).any(|w| w == b"Jane Roe"));
    for entry in walk(dir.root()) {
        let bytes = std::fs::read(&entry).unwrap();
        assert!(
            !bytes.windows(8).any(|w| w == b"Jane Roe"),
            "plaintext found in {}",
            entry.display()
        );
    }
}

fn walk(root: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(root).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p))
        } else {
            out.push(p)
        }
    }
    out
}

#[test]
fn updates_are_versioned_and_linked() {
    let (_tmp, _dir, vault) = vault();
    let (_, v1) = vault
        .put(&access(), &rec("p1", "Observation/o1", b"{\"v\":1}"))
        .unwrap();
    let (same, _) = vault
        .put(&access(), &rec("p1", "Observation/o1", b"{\"v\":1}"))
        .unwrap();
    assert_eq!(
        same,
        PutOutcome::Unchanged,
        "identical content adds no version"
    );
    let (outcome, v2) = vault
        .put(&access(), &rec("p1", "Observation/o1", b"{\"v\":2}"))
        .unwrap();
    assert_eq!(outcome, PutOutcome::Updated);
    assert_eq!(v2.version, 2);
    assert_eq!(v2.prev_cid.as_deref(), Some(v1.cid.as_str()));
    let history = vault.history("Observation/o1").unwrap();
    assert_eq!(
        history.iter().map(|h| h.version).collect::<Vec<_>>(),
        vec![1, 2]
    );
    assert_eq!(
        vault.read(&access(), "Observation/o1", Some(1)).unwrap().1,
        b"{\"v\":1}"
    );
    assert_eq!(
        vault.read(&access(), "Observation/o1", None).unwrap().1,
        b"{\"v\":2}"
    );
    // A record cannot move to another patient.
    let err = vault
        .put(&access(), &rec("p2", "Observation/o1", b"{\"v\":3}"))
        .unwrap_err();
    assert!(err.to_string().contains("another patient"), "{err}");
}

#[test]
fn corrupted_block_is_an_error_never_wrong_data() {
    let (_tmp, dir, vault) = vault();
    let (_, rv) = vault
        .put(&access(), &rec("p1", "Observation/o1", b"{\"value\":6.5}"))
        .unwrap();
    let at = location(&dir, &rv.cid);
    let mut bytes = std::fs::read(&at.path).unwrap();
    let last = (at.offset + at.len - 1) as usize;
    bytes[last] ^= 0x80;
    std::fs::write(&at.path, &bytes).unwrap();
    match vault.read(&access(), "Observation/o1", None) {
        Err(Error::CorruptBlock { cid, actual }) => {
            assert_eq!(cid, rv.cid);
            assert_ne!(actual, rv.cid);
        }
        other => panic!("expected a corrupt-block error, got {other:?}"),
    }
    // A pack that lost its tail (a short copy restored) misses the block.
    bytes.truncate(at.offset as usize);
    std::fs::write(&at.path, &bytes).unwrap();
    assert!(matches!(
        vault.read(&access(), "Observation/o1", None),
        Err(Error::MissingBlock { .. })
    ));
}

#[test]
fn a_block_moved_to_another_record_does_not_decrypt() {
    let (_tmp, _dir, vault) = vault();
    let (_, a) = vault
        .put(&access(), &rec("p1", "Observation/a", b"{\"a\":1}"))
        .unwrap();
    vault
        .put(&access(), &rec("p1", "Observation/b", b"{\"b\":1}"))
        .unwrap();
    // Point record b's metadata at record a's (intact, correctly hashed) block.
    vault
        .conn()
        .execute(
            "UPDATE records SET cid = ?1 WHERE record_id = 'Observation/b'",
            [&a.cid],
        )
        .unwrap();
    let err = vault.read(&access(), "Observation/b", None).unwrap_err();
    assert!(matches!(err, Error::Decrypt { .. }), "{err:?}");
}

#[test]
fn wrong_passphrase_and_wrong_keystore_fail() {
    let (tmp, dir, vault) = vault();
    vault
        .put(&access(), &rec("p1", "Observation/o1", b"{}"))
        .unwrap();
    drop(vault);
    let err = dir.unlock("not the passphrase").err().unwrap();
    assert!(err.to_string().contains("wrong passphrase"), "{err}");
    // A different keystore (another KEK) cannot unwrap this vault's data
    // keys, and says which KEK they need.
    std::fs::rename(dir.keystore_path(), tmp.path().join("old-keystore.json")).unwrap();
    let other = dir.unlock_with(PASSPHRASE, FAST_KDF).unwrap();
    let err = other.read(&access(), "Observation/o1", None).unwrap_err();
    assert!(
        matches!(&err, Error::Keystore { reason, .. } if reason.contains("which the keystore does not hold")),
        "{err:?}"
    );
}

#[test]
fn erasure_shreds_the_key_and_blocks_become_unreadable() {
    let (_tmp, dir, vault) = vault();
    let (_, rv) = vault
        .put(
            &access(),
            &rec("p1", "Observation/o1", b"{\"secret\":true}"),
        )
        .unwrap();
    vault
        .put(&access(), &rec("p2", "Observation/o2", b"{\"other\":true}"))
        .unwrap();
    let wrapped: Vec<u8> = vault
        .conn()
        .query_row(
            "SELECT wrapped_key FROM patients WHERE patient_id = 'p1'",
            [],
            |r| r.get(0),
        )
        .unwrap();

    let erasure = vault.erase_patient(&access(), "p1").unwrap();
    assert_eq!(erasure.versions_shredded, 1);

    // The block is still there, intact, and its hash is kept...
    assert!(vault.blocks().get(&rv.cid).is_ok());
    assert_eq!(vault.history("Observation/o1").unwrap()[0].cid, rv.cid);
    // ...but it can no longer be read.
    let err = vault.read(&access(), "Observation/o1", None).unwrap_err();
    assert!(matches!(err, Error::Shredded { .. }), "{err:?}");
    assert!(err.to_string().contains("erased"));
    // No copy of the wrapped key survives in the database or its WAL.
    for name in ["cohort.db", "cohort.db-wal"] {
        let path = dir.root().join(name);
        if let Ok(bytes) = std::fs::read(&path) {
            assert!(
                !bytes
                    .windows(wrapped.len())
                    .any(|w| w == wrapped.as_slice()),
                "wrapped key left in {name}"
            );
        }
    }
    // Other patients are untouched; erasing twice is refused.
    assert!(vault.read(&access(), "Observation/o2", None).is_ok());
    assert!(matches!(
        vault.erase_patient(&access(), "p1"),
        Err(Error::Shredded { .. })
    ));
    // The erasure is in the audit trail.
    let log = cohort_engine::audit::tail(vault.conn(), 10, Some("Patient/p1")).unwrap();
    assert_eq!(log.last().unwrap().action, "erase");
}
