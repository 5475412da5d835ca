//! Key rotation: every wrapped key of a data directory re-wrapped under a
//! new key-encryption key, while the directory stays in use.
//!
//! Where wrapped keys live (each bound to its context, which does not
//! change):
//!
//! | where | what | context |
//! |---|---|---|
//! | `patients.wrapped_key` | each patient's data key | the patient id |
//! | `data_key_epochs.wrapped_key` | the custodian's copy of each later epoch of a patient's data key | `cohort/data-key/<epoch>/<patient id>` |
//! | `accounts.wrapped_key` | each actor's secp256k1 key | `cohort/account/<name>` |
//! | `second_factors.wrapped_secret` | TOTP secrets | `cohort/totp/<name>` |
//! | `research_fhe_shares.wrapped` | the key sealing each steward's ElGamal share | `cohort/fhe/study/<id>/share/<steward>` |
//! | `meta.pseudonym_master`, `meta.audit_mac_key` | the pseudonym master secret, the audit MAC key (hex) | `cohort/pseudonym-master`, `cohort/audit-mac` |
//! | `research/fhe/tfhe/client.sealed` | the key sealing the tfhe custodian key (a file) | `cohort/fhe/tfhe/custodian` |
//!
//! A rotation runs in three steps, each of which leaves a consistent state:
//!
//! 1. Under the metadata database's write lock, the keystore generates a
//!    new KEK and makes it current ([`KeyStore::add_kek`]). Every process
//!    wraps under it from then on (a keystore looks for a newer KEK before
//!    each wrap); the old KEKs still unwrap.
//! 2. Every wrapped key that does not name the current KEK is unwrapped and
//!    wrapped again, `batch` keys per transaction (a compare-and-set on the
//!    old bytes, so a concurrent erasure or enrolment is never undone).
//!    Readers meet old and new keys side by side and unwrap both.
//! 3. Under the write lock again, if no wrapped key names an old KEK, the
//!    old KEKs are destroyed; otherwise (a writer slipped one in) step 2
//!    runs again.
//!
//! A crash anywhere leaves each key wrapped under the old KEK or the new,
//! and both still held; running the rotation again finds the keystore
//! holding more than one KEK and resumes at step 2 instead of making yet
//! another KEK. Rotating, its resumption and a refusal are audited.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

use rusqlite::{Connection, TransactionBehavior, params};
use serde::Serialize;

use crate::audit::{self, Event};
use crate::keys::keystore::{FileKeyStore, KdfParams, KeyStore, frame_prefix, wrapped_by};
use crate::records::vault::STORED_KEYS;
use crate::{Error, Result};

/// How a rotation runs.
#[derive(Debug, Clone)]
pub struct RotateOptions {
    /// Keys re-wrapped per transaction.
    pub batch: usize,
    /// Stop with an error after this many batches, as a crash would (for
    /// tests of resumption).
    #[doc(hidden)]
    pub stop_after_batches: Option<usize>,
}

impl Default for RotateOptions {
    fn default() -> Self {
        RotateOptions {
            batch: 100,
            stop_after_batches: None,
        }
    }
}

/// What a rotation did.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct RotationReport {
    /// The keystore: file or pkcs11.
    pub store: String,
    /// The KEKs rotated away from (now destroyed).
    pub retired: Vec<String>,
    /// The KEK every key is now wrapped under.
    pub current: String,
    /// Whether this run finished a rotation an earlier run began.
    pub resumed: bool,
    /// Keys re-wrapped, by where they live.
    pub rewrapped: BTreeMap<String, usize>,
    /// Transactions it took.
    pub batches: usize,
}

/// One column of wrapped keys.
struct Column {
    table: &'static str,
    blob: &'static str,
    /// The columns the context is made from (selected after rowid and blob).
    context_cols: &'static str,
    context: fn(&rusqlite::Row<'_>) -> rusqlite::Result<Vec<u8>>,
    /// The column naming the KEK, where the table has one.
    kek_col: Option<&'static str>,
}

const COLUMNS: &[Column] = &[
    Column {
        table: "patients",
        blob: "wrapped_key",
        context_cols: "patient_id",
        context: |r| Ok(r.get::<_, String>(2)?.into_bytes()),
        kek_col: Some("kek_id"),
    },
    Column {
        table: "data_key_epochs",
        blob: "wrapped_key",
        context_cols: "patient_id, epoch",
        context: |r| {
            Ok(crate::keys::data_keys::custodian_context(
                &r.get::<_, String>(2)?,
                r.get::<_, i64>(3)?,
            ))
        },
        kek_col: Some("kek_id"),
    },
    Column {
        table: "accounts",
        blob: "wrapped_key",
        context_cols: "name",
        context: |r| Ok(crate::keys::accounts::context(&r.get::<_, String>(2)?)),
        kek_col: Some("kek_id"),
    },
    Column {
        table: "second_factors",
        blob: "wrapped_secret",
        context_cols: "account",
        context: |r| Ok(crate::keys::second_factor::context(&r.get::<_, String>(2)?)),
        kek_col: Some("kek_id"),
    },
    Column {
        table: "research_fhe_shares",
        blob: "wrapped",
        context_cols: "study_id, steward",
        context: |r| {
            let study = r.get::<_, i64>(2)? as u64;
            Ok(
                crate::research::encryption::share_context(study, &r.get::<_, String>(3)?)
                    .into_bytes(),
            )
        },
        kek_col: None,
    },
];

/// Rotates the KEK of the keystore `keys` over every wrapped key of the
/// data directory at `root` (whose metadata database is `conn`), as
/// `actor`. See the module documentation for the steps.
pub fn rotate(
    conn: &Connection,
    keys: &dyn KeyStore,
    root: &Path,
    actor: &str,
    options: &RotateOptions,
) -> Result<RotationReport> {
    let started = Instant::now();
    let result = run(conn, keys, root, actor, options);
    let mut detail = serde_json::json!({ "store": keys.kind() });
    if let Ok(report) = &result {
        detail["retired"] = serde_json::json!(report.retired);
        detail["current"] = report.current.clone().into();
        detail["resumed"] = report.resumed.into();
        detail["rewrapped"] = serde_json::json!(report.rewrapped);
        detail["seconds"] =
            serde_json::json!((started.elapsed().as_secs_f64() * 1e3).round() / 1e3);
    }
    audit::outcome(
        conn,
        actor,
        "keys.rotate",
        "keystore",
        "key rotation",
        detail,
        result,
    )
}

fn run(
    conn: &Connection,
    keys: &dyn KeyStore,
    root: &Path,
    actor: &str,
    options: &RotateOptions,
) -> Result<RotationReport> {
    if options.batch == 0 {
        return Err(Error::Invalid(
            "a rotation batch must hold at least 1 key".into(),
        ));
    }
    // 1. A new current KEK, or resume the rotation a crash interrupted.
    let (old, resumed) = with_write_lock(conn, || {
        let held = keys.key_ids()?;
        let resumed = held.len() > 1;
        let current = if resumed {
            keys.key_id()
        } else {
            keys.add_kek()?
        };
        let old: Vec<String> = held.into_iter().filter(|id| *id != current).collect();
        audit::append(
            conn,
            &Event {
                actor,
                action: if resumed {
                    "keys.rotate.resume"
                } else {
                    "keys.rotate.begin"
                },
                target: "keystore",
                purpose: "key rotation",
                detail: serde_json::json!({ "store": keys.kind(), "current": current, "old": old }),
            },
        )?;
        Ok((old, resumed))
    })?;
    let mut report = RotationReport {
        store: keys.kind().into(),
        retired: Vec::new(),
        current: keys.key_id(),
        resumed,
        rewrapped: BTreeMap::new(),
        batches: 0,
    };
    loop {
        // 2. Re-wrap what still names an old KEK.
        let current = keys.key_id();
        let prefix = frame_prefix(&current);
        for column in COLUMNS {
            if !crate::storage::store::table_exists(conn, column.table)? {
                continue;
            }
            loop {
                if options.stop_after_batches == Some(report.batches) {
                    return Err(Error::Invalid(format!(
                        "the rotation stopped after {} batches, as asked: run it again to finish",
                        report.batches
                    )));
                }
                let n = rewrap_batch(conn, keys, column, &prefix, &current, options.batch)?;
                if n == 0 {
                    break;
                }
                report.batches += 1;
                *report.rewrapped.entry(column.table.to_owned()).or_default() += n;
            }
        }
        let n = rewrap_meta(conn, keys, &current)?;
        if n > 0 {
            report.batches += 1;
            *report.rewrapped.entry("meta".to_owned()).or_default() += n;
        }
        if crate::research::encryption::rewrap_custodian(keys, root, false)? {
            *report
                .rewrapped
                .entry("tfhe custodian file".to_owned())
                .or_default() += 1;
        }
        // 3. Destroy the old KEKs once nothing names them.
        let done = with_write_lock(conn, || {
            if remaining(conn, keys, root, &prefix, &current)? > 0 {
                return Ok(false);
            }
            for id in keys.key_ids()? {
                if id != current {
                    keys.destroy_kek(&id)?;
                }
            }
            Ok(true)
        })?;
        if done {
            break;
        }
    }
    report.current = keys.key_id();
    report.retired = old;
    Ok(report)
}

/// Re-seals the file keystore's KEKs under `new_passphrase` (see
/// [`FileKeyStore::change_passphrase`]) while holding the database's write
/// lock, so no rotation rewrites the keystore file meanwhile; audited as
/// `keys.passphrase`, a refusal as `keys.passphrase.refused`.
pub fn change_passphrase(
    conn: &Connection,
    keys: &FileKeyStore,
    new_passphrase: &str,
    params: KdfParams,
    actor: &str,
) -> Result<()> {
    let result = with_write_lock(conn, || keys.change_passphrase(new_passphrase, params));
    audit::outcome(
        conn,
        actor,
        "keys.passphrase",
        "keystore",
        "key management",
        serde_json::json!({ "store": "file", "keks": keys.key_ids().map(|k| k.len()).unwrap_or(0) }),
        result,
    )
}

/// Keys not yet wrapped under the current KEK, everywhere.
pub fn remaining(
    conn: &Connection,
    keys: &dyn KeyStore,
    root: &Path,
    prefix: &[u8],
    current: &str,
) -> Result<usize> {
    let mut n = 0usize;
    for column in COLUMNS {
        if !crate::storage::store::table_exists(conn, column.table)? {
            continue;
        }
        let sql = format!(
            "SELECT COUNT(*) FROM {t} WHERE {b} IS NOT NULL AND substr({b}, 1, ?2) <> ?1",
            t = column.table,
            b = column.blob
        );
        let count: i64 =
            conn.query_row(&sql, params![prefix, prefix.len() as i64], |r| r.get(0))?;
        n += count as usize;
    }
    for (name, _) in STORED_KEYS {
        if let Some(wrapped) = meta_key(conn, name)?
            && wrapped_by(&wrapped) != Some(current)
        {
            n += 1;
        }
    }
    if crate::research::encryption::rewrap_custodian(keys, root, true)? {
        n += 1;
    }
    Ok(n)
}

/// Which KEK each wrapped key of the directory names, counted (version 1
/// keys, which name none, as `v1`). Needs no keys.
pub fn census(conn: &Connection) -> Result<BTreeMap<String, usize>> {
    let mut out = BTreeMap::new();
    let mut count = |wrapped: &[u8]| {
        let id = wrapped_by(wrapped).unwrap_or("v1").to_owned();
        *out.entry(id).or_insert(0usize) += 1;
    };
    for column in COLUMNS {
        if !crate::storage::store::table_exists(conn, column.table)? {
            continue;
        }
        let sql = format!(
            "SELECT {b} FROM {t} WHERE {b} IS NOT NULL",
            t = column.table,
            b = column.blob
        );
        let mut stmt = conn.prepare(&sql)?;
        let mut rows = stmt.query([])?;
        while let Some(row) = rows.next()? {
            count(&row.get::<_, Vec<u8>>(0)?);
        }
    }
    for (name, _) in STORED_KEYS {
        if let Some(wrapped) = meta_key(conn, name)? {
            count(&wrapped);
        }
    }
    Ok(out)
}

fn rewrap_batch(
    conn: &Connection,
    keys: &dyn KeyStore,
    column: &Column,
    prefix: &[u8],
    current: &str,
    batch: usize,
) -> Result<usize> {
    let tx = rusqlite::Transaction::new_unchecked(conn, TransactionBehavior::Immediate)?;
    let select = format!(
        "SELECT rowid, {b}, {c} FROM {t} WHERE {b} IS NOT NULL AND substr({b}, 1, ?2) <> ?1 LIMIT ?3",
        t = column.table,
        b = column.blob,
        c = column.context_cols
    );
    let rows: Vec<(i64, Vec<u8>, Vec<u8>)> = {
        let mut stmt = tx.prepare(&select)?;
        let rows = stmt.query_map(params![prefix, prefix.len() as i64, batch as i64], |r| {
            Ok((r.get(0)?, r.get(1)?, (column.context)(r)?))
        })?;
        rows.collect::<rusqlite::Result<_>>()?
    };
    let update = match column.kek_col {
        Some(k) => format!(
            "UPDATE {t} SET {b} = ?1, {k} = ?4 WHERE rowid = ?2 AND {b} = ?3",
            t = column.table,
            b = column.blob
        ),
        None => format!(
            "UPDATE {t} SET {b} = ?1 WHERE rowid = ?2 AND {b} = ?3 AND ?4 IS NOT NULL",
            t = column.table,
            b = column.blob
        ),
    };
    for (rowid, wrapped, context) in &rows {
        let key = keys.unwrap(wrapped, context).map_err(|e| {
            Error::Invalid(format!(
                "{}.{} row {rowid} does not unwrap ({e}); nothing of this batch was changed",
                column.table, column.blob
            ))
        })?;
        let rewrapped = keys.wrap(&key, context)?;
        tx.execute(&update, params![rewrapped, rowid, wrapped, current])?;
    }
    tx.commit()?;
    Ok(rows.len())
}

fn rewrap_meta(conn: &Connection, keys: &dyn KeyStore, current: &str) -> Result<usize> {
    let tx = rusqlite::Transaction::new_unchecked(conn, TransactionBehavior::Immediate)?;
    let mut n = 0;
    for (name, context) in STORED_KEYS {
        let Some(wrapped) = meta_key(&tx, name)? else {
            continue;
        };
        if wrapped_by(&wrapped) == Some(current) {
            continue;
        }
        let key = keys.unwrap(&wrapped, context)?;
        let rewrapped = keys.wrap(&key, context)?;
        tx.execute(
            "UPDATE meta SET value = ?1 WHERE key = ?2",
            params![data_encoding::HEXLOWER.encode(&rewrapped), name],
        )?;
        n += 1;
    }
    tx.commit()?;
    Ok(n)
}

fn meta_key(conn: &Connection, name: &str) -> Result<Option<Vec<u8>>> {
    use rusqlite::OptionalExtension;
    let hex: Option<String> = conn
        .query_row("SELECT value FROM meta WHERE key = ?1", [name], |r| {
            r.get(0)
        })
        .optional()?;
    hex.map(|h| {
        data_encoding::HEXLOWER
            .decode(h.as_bytes())
            .map_err(|_| Error::Invalid(format!("meta.{name} is not hex")))
    })
    .transpose()
}

/// Runs `f` in a new `BEGIN IMMEDIATE` transaction: the write lock every
/// writer of wrapped keys takes around its wrap and insert, so what `f`
/// decides about the keys cannot be overtaken by a write.
fn with_write_lock<T>(conn: &Connection, f: impl FnOnce() -> Result<T>) -> Result<T> {
    let tx = rusqlite::Transaction::new_unchecked(conn, TransactionBehavior::Immediate)?;
    let out = f()?;
    tx.commit()?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::DataDir;
    use crate::keys::keystore::SecretKey;
    use crate::keys::pkcs11::{Pkcs11KeyStore, Pkcs11Params};
    use crate::keys::softhsm::{MODULE, PIN, TOKEN, in_softhsm, test_path};
    use crate::keys::{accounts, second_factor};
    use crate::records::vault::{Access, NewRecord, Vault};

    const FAST: KdfParams = KdfParams {
        m_cost_kib: 1024,
        t_cost: 1,
        p_cost: 1,
    };

    /// Everything a reader would get out of the directory's wrapped keys.
    #[derive(Debug, PartialEq)]
    struct Readable {
        records: Vec<Vec<u8>>,
        addresses: Vec<String>,
        totp: [u8; 32],
        audit_key: [u8; 32],
        pseudonym_master: [u8; 32],
        share_key: [u8; 32],
        tfhe_key: [u8; 32],
    }

    fn tfhe_file(root: &Path) -> std::path::PathBuf {
        root.join("research/fhe/tfhe/client.sealed")
    }

    /// A directory with a wrapped key in every place one can be.
    fn populate(vault: &Vault, root: &Path) {
        let access = Access::new("operator", "test");
        for p in ["p1", "p2", "p3", "p4", "p5"] {
            let body = format!("{{\"resourceType\":\"Patient\",\"id\":\"{p}\"}}");
            vault
                .put(
                    &access,
                    &NewRecord {
                        patient_id: p,
                        record_id: &format!("Patient/{p}"),
                        resource_type: "Patient",
                        content: body.as_bytes(),
                    },
                )
                .unwrap();
        }
        let conn = vault.conn();
        for name in ["alice", "bob", "carol"] {
            accounts::get_or_create(conn, vault.keys(), name).unwrap();
        }
        second_factor::enroll(conn, vault.keys(), "operator", "alice", false).unwrap();
        vault.audit_key().unwrap();
        vault.pseudonym_master().unwrap();
        conn.execute_batch(crate::research::encryption::SCHEMA)
            .unwrap();
        let share = SecretKey::generate();
        let context = crate::research::encryption::share_context(1, "alice");
        conn.execute(
            "INSERT INTO research_fhe_shares (study_id, steward, idx, wrapped, nonce, sealed) VALUES (1, 'alice', 1, ?1, x'00', x'00')",
            [vault.keys().wrap(&share, context.as_bytes()).unwrap()],
        )
        .unwrap();
        let tfhe = SecretKey::generate();
        let wrapped = vault
            .keys()
            .wrap(&tfhe, b"cohort/fhe/tfhe/custodian")
            .unwrap();
        let mut blob = (wrapped.len() as u32).to_le_bytes().to_vec();
        blob.extend_from_slice(&wrapped);
        blob.extend_from_slice(&[9u8; 24 + 40]);
        std::fs::create_dir_all(tfhe_file(root).parent().unwrap()).unwrap();
        std::fs::write(tfhe_file(root), blob).unwrap();
    }

    fn read_all(vault: &Vault, root: &Path) -> Readable {
        let conn = vault.conn();
        let keys = vault.keys();
        let mut records = Vec::new();
        for p in ["p1", "p2", "p3", "p4", "p5"] {
            let rv = vault
                .history(&format!("Patient/{p}"))
                .unwrap()
                .pop()
                .unwrap();
            records.push(vault.decrypt_version(&rv).unwrap());
        }
        let addresses = ["alice", "bob", "carol", "operator"]
            .iter()
            .map(|n| format!("{:#x}", accounts::get(conn, keys, n).unwrap().address()))
            .collect();
        let unwrap_col = |sql: &str, context: &[u8]| -> [u8; 32] {
            let wrapped: Vec<u8> = conn.query_row(sql, [], |r| r.get(0)).unwrap();
            *keys.unwrap(&wrapped, context).unwrap().expose()
        };
        let totp = unwrap_col(
            "SELECT wrapped_secret FROM second_factors WHERE account = 'alice'",
            &second_factor::context("alice"),
        );
        let share_key = unwrap_col(
            "SELECT wrapped FROM research_fhe_shares",
            crate::research::encryption::share_context(1, "alice").as_bytes(),
        );
        let blob = std::fs::read(tfhe_file(root)).unwrap();
        let len = u32::from_le_bytes(blob[..4].try_into().unwrap()) as usize;
        assert_eq!(
            &blob[4 + len..],
            &[9u8; 24 + 40],
            "the sealed tfhe key is untouched"
        );
        let tfhe_key = *keys
            .unwrap(&blob[4..4 + len], b"cohort/fhe/tfhe/custodian")
            .unwrap()
            .expose();
        Readable {
            records,
            addresses,
            totp,
            audit_key: *vault.audit_key().unwrap().expose(),
            pseudonym_master: *vault.pseudonym_master().unwrap().expose(),
            share_key,
            tfhe_key,
        }
    }

    fn audit_actions(conn: &Connection) -> Vec<String> {
        let mut stmt = conn
            .prepare("SELECT action FROM audit WHERE action LIKE 'keys.%' ORDER BY seq")
            .unwrap();
        stmt.query_map([], |r| r.get(0))
            .unwrap()
            .map(|r| r.unwrap())
            .collect()
    }

    /// Rotates `vault`'s keystore, crashing midway first, and checks each
    /// step; `reopen` gives a fresh keystore on the same KEKs (another
    /// process).
    fn rotate_with_a_crash_midway(dir: &DataDir, open: &dyn Fn() -> Arc<dyn KeyStore>) {
        let vault = dir.unlock_keys(open()).unwrap();
        populate(&vault, dir.root());
        let before = read_all(&vault, dir.root());
        let old = vault.keys().key_id();
        let conn = vault.conn();
        let total: usize = census(conn).unwrap().values().sum();
        // 5 patients + 4 accounts + 1 TOTP + 1 share + 2 meta keys.
        assert_eq!(census(conn).unwrap(), BTreeMap::from([(old.clone(), 13)]));

        // A crash after two batches of two: a consistent mix.
        let crash = RotateOptions {
            batch: 2,
            stop_after_batches: Some(2),
        };
        let err = rotate(conn, vault.keys(), dir.root(), "operator", &crash).unwrap_err();
        assert!(err.to_string().contains("run it again"), "{err}");
        let new = vault.keys().key_id();
        assert_ne!(new, old);
        let mix = census(conn).unwrap();
        assert_eq!(mix.get(&new), Some(&4), "{mix:?}");
        assert_eq!(mix.get(&old), Some(&(total - 4)), "{mix:?}");
        assert_eq!(vault.keys().key_ids().unwrap().len(), 2, "both KEKs kept");
        assert_eq!(read_all(&vault, dir.root()), before, "readable midway");
        let other = dir.unlock_keys(open()).unwrap();
        assert_eq!(
            read_all(&other, dir.root()),
            before,
            "and by another process"
        );

        // Run again: it resumes (no third KEK) and finishes.
        let report = rotate(
            conn,
            vault.keys(),
            dir.root(),
            "operator",
            &RotateOptions::default(),
        )
        .unwrap();
        assert!(report.resumed);
        assert_eq!(report.current, new);
        assert_eq!(report.retired, vec![old.clone()]);
        assert_eq!(
            report.rewrapped.values().sum::<usize>(),
            total - 4 + 1,
            "+1: the tfhe file"
        );
        assert_eq!(
            census(conn).unwrap(),
            BTreeMap::from([(new.clone(), total)])
        );
        assert_eq!(
            vault.keys().key_ids().unwrap(),
            vec![new.clone()],
            "the old KEK is gone"
        );
        for kek_col in ["patients", "accounts", "second_factors"] {
            let stale: i64 = conn
                .query_row(
                    &format!("SELECT COUNT(*) FROM {kek_col} WHERE kek_id <> ?1"),
                    [&new],
                    |r| r.get(0),
                )
                .unwrap();
            assert_eq!(stale, 0, "{kek_col}.kek_id names the new KEK");
        }
        assert_eq!(read_all(&vault, dir.root()), before, "readable after");
        assert_eq!(
            read_all(&other, dir.root()),
            before,
            "by the other process too"
        );
        let fresh = dir.unlock_keys(open()).unwrap();
        assert_eq!(read_all(&fresh, dir.root()), before, "and after a restart");
        assert_eq!(
            audit_actions(conn),
            [
                "keys.rotate.begin",
                "keys.rotate.refused",
                "keys.rotate.resume",
                "keys.rotate"
            ]
        );
        assert!(crate::audit::verify(conn).unwrap().is_intact());

        // A second rotation starts afresh.
        let again = rotate(
            conn,
            vault.keys(),
            dir.root(),
            "operator",
            &RotateOptions::default(),
        )
        .unwrap();
        assert!(!again.resumed);
        assert_eq!(again.retired, vec![new]);
        assert_eq!(read_all(&vault, dir.root()), before);
    }

    #[test]
    fn the_file_keystore_rotates_every_wrapped_key_and_resumes_after_a_crash() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = DataDir::open(tmp.path()).unwrap();
        let path = dir.keystore_path();
        FileKeyStore::create(&path, "pw", FAST).unwrap();
        rotate_with_a_crash_midway(&dir, &|| Arc::new(FileKeyStore::open(&path, "pw").unwrap()));
    }

    #[test]
    fn the_hsm_keystore_rotates_every_wrapped_key_and_resumes_after_a_crash() {
        in_softhsm(
            test_path!("the_hsm_keystore_rotates_every_wrapped_key_and_resumes_after_a_crash"),
            || {
                let tmp = tempfile::tempdir().unwrap();
                let dir = DataDir::open(tmp.path()).unwrap();
                rotate_with_a_crash_midway(&dir, &|| {
                    Arc::new(
                        Pkcs11KeyStore::open(&Pkcs11Params {
                            module: Path::new(MODULE),
                            token_label: TOKEN,
                            kek_label: "cohort-kek",
                            pin: PIN,
                        })
                        .unwrap(),
                    )
                });
            },
        );
    }

    #[test]
    fn a_passphrase_change_is_audited_and_keeps_the_data() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = DataDir::open(tmp.path()).unwrap();
        let vault = dir.unlock_with("old pass", FAST).unwrap();
        populate(&vault, dir.root());
        let before = read_all(&vault, dir.root());
        let keys = FileKeyStore::open(&dir.keystore_path(), "old pass").unwrap();
        let err = change_passphrase(vault.conn(), &keys, "", FAST, "operator").unwrap_err();
        assert!(err.to_string().contains("empty"), "{err}");
        change_passphrase(vault.conn(), &keys, "new pass", FAST, "operator").unwrap();
        assert!(
            dir.unlock_with("old pass", FAST).is_err(),
            "the old passphrase is refused"
        );
        let reopened = dir.unlock_with("new pass", FAST).unwrap();
        assert_eq!(read_all(&reopened, dir.root()), before);
        assert_eq!(
            audit_actions(vault.conn()),
            ["keys.passphrase.refused", "keys.passphrase"]
        );
    }
}
