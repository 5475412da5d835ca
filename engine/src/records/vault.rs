//! The encrypted record vault.
//!
//! Each record (one FHIR resource) is encrypted with its patient's data key
//! (XChaCha20-Poly1305) and stored as a content-addressed block named by its
//! IPFS CID. The ciphertext is bound to its patient, record and version (they
//! are the AEAD's associated data), so a block moved to another record does
//! not decrypt. Updates add a version that links to the previous one; nothing
//! is overwritten. Erasing a patient destroys the data key (crypto-shredding):
//! the blocks and their hashes stay, unreadable.

use std::sync::Arc;

use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use serde::Serialize;
use sha2::Digest;

use crate::audit::{self, Event};
use crate::keys::data_keys::{self, EpochCache};
pub(crate) use crate::keys::data_keys::{PatientState, patient_state};
use crate::keys::keystore::{KeyStore, SecretKey};
use crate::storage::blockstore::BlockStore;
use crate::{Error, Result};

mod block;
mod erasure;
mod export;

use block::{content_mac, open_block, seal_block};

/// Who is acting and why: every vault operation is audited with both.
#[derive(Debug, Clone)]
pub struct Access {
    /// The acting account.
    pub actor: String,
    /// The stated purpose of use.
    pub purpose: String,
    /// The jurisdiction of the organisation storing records through this
    /// access (`None`: they carry the deployment default).
    pub jurisdiction: Option<String>,
}

impl Access {
    /// An access by `actor` for `purpose`.
    pub fn new(actor: impl Into<String>, purpose: impl Into<String>) -> Self {
        Access {
            actor: actor.into(),
            purpose: purpose.into(),
            jurisdiction: None,
        }
    }

    /// The same access, storing records of `jurisdiction` (a checked
    /// code: `geo::Jurisdiction::as_str`).
    pub fn with_jurisdiction(mut self, jurisdiction: Option<String>) -> Self {
        self.jurisdiction = jurisdiction;
        self
    }
}

/// A record to store.
#[derive(Debug, Clone)]
pub struct NewRecord<'a> {
    /// The owning patient's id.
    pub patient_id: &'a str,
    /// `ResourceType/id`.
    pub record_id: &'a str,
    /// The FHIR resource type.
    pub resource_type: &'a str,
    /// The record's bytes (FHIR JSON).
    pub content: &'a [u8],
}

/// One stored version of a record.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct RecordVersion {
    /// `ResourceType/id`.
    pub record_id: String,
    /// 1 for the first version.
    pub version: i64,
    /// The owning patient.
    pub patient_id: String,
    /// The FHIR resource type.
    pub resource_type: String,
    /// The block holding this version.
    pub cid: String,
    /// The block of the version before, if any.
    pub prev_cid: Option<String>,
    /// Size of the encrypted block in bytes.
    pub size: i64,
    /// When this version was stored.
    pub created_at: String,
}

/// What a put did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutOutcome {
    /// A new record (version 1).
    Created,
    /// A new version of an existing record.
    Updated,
    /// The content equals the current version: nothing stored.
    Unchanged,
}

/// The outcome of erasing a patient.
#[derive(Debug, Clone, Serialize)]
pub struct Erasure {
    /// The patient erased.
    pub patient_id: String,
    /// Record versions made unreadable.
    pub versions_shredded: i64,
    /// Projection rows removed.
    pub projection_rows_removed: usize,
    /// Studies whose consent was withdrawn on chain first (research path).
    pub consents_withdrawn: Vec<u64>,
}

/// Data keys unwrapped during one operation, so a bundle of many resources
/// unwraps each patient's key once.
#[derive(Default)]
pub(crate) struct KeyCache {
    /// Each patient's keys by epoch (`keys::data_keys`).
    epochs: EpochCache,
}

/// The keys kept wrapped in `meta` (hex), by name, with what each is
/// bound to: the pseudonym master secret and the audit MAC key.
pub(crate) const STORED_KEYS: [(&str, &[u8]); 2] = [
    ("pseudonym_master", b"cohort/pseudonym-master"),
    ("audit_mac_key", b"cohort/audit-mac"),
];

/// The vault: metadata database, block store and keystore together.
pub struct Vault {
    conn: Connection,
    blocks: Arc<dyn BlockStore>,
    keys: Arc<dyn KeyStore>,
}

/// Which record of a batch failed, and why.
pub(crate) type RecordFailed = (usize, Box<Error>);

impl Vault {
    /// A vault over an open metadata database, a block store and a keystore.
    pub fn new(conn: Connection, blocks: Arc<dyn BlockStore>, keys: Arc<dyn KeyStore>) -> Self {
        Vault { conn, blocks, keys }
    }

    /// The metadata database.
    pub fn conn(&self) -> &Connection {
        &self.conn
    }

    /// The keystore that wraps every key.
    pub fn keys(&self) -> &dyn KeyStore {
        self.keys.as_ref()
    }

    /// The key store, shared (for a session that outlives one call).
    pub fn shared_keys(&self) -> Arc<dyn KeyStore> {
        Arc::clone(&self.keys)
    }

    /// The block store.
    pub fn blocks(&self) -> &dyn BlockStore {
        self.blocks.as_ref()
    }

    /// The secret that per-study pseudonym keys are derived from: created on
    /// first use, stored only wrapped by the keystore (like data keys), so a
    /// study's pseudonyms are stable across runs and unlinkable across studies.
    pub fn pseudonym_master(&self) -> Result<SecretKey> {
        let (name, context) = STORED_KEYS[0];
        self.stored_key(name, context)
    }

    /// The key of the audit log's MACs and anchored heads (see
    /// `audit::anchor`): created on first use, stored only wrapped.
    pub fn audit_key(&self) -> Result<SecretKey> {
        let (name, context) = STORED_KEYS[1];
        self.stored_key(name, context)
    }

    /// A key kept in `meta` under `name`, wrapped by the keystore for
    /// `context`; generated and stored on first use.
    fn stored_key(&self, name: &str, context: &[u8]) -> Result<SecretKey> {
        let stored: Option<String> = self
            .conn
            .query_row("SELECT value FROM meta WHERE key = ?1", [name], |r| {
                r.get(0)
            })
            .optional()?;
        if let Some(hex) = stored {
            let wrapped = data_encoding::HEXLOWER
                .decode(hex.as_bytes())
                .map_err(|_| Error::Invalid(format!("meta.{name} is not hex")))?;
            return self.keys.unwrap(&wrapped, context);
        }
        let key = SecretKey::generate();
        crate::storage::store::with_write_lock(&self.conn, || {
            let wrapped = self.keys.wrap(&key, context)?;
            self.conn.execute(
                "INSERT INTO meta(key, value) VALUES (?1, ?2)",
                rusqlite::params![name, data_encoding::HEXLOWER.encode(&wrapped)],
            )?;
            Ok(())
        })?;
        Ok(key)
    }

    /// Stores one record in its own transaction, with an audit entry.
    pub fn put(
        &self,
        access: &Access,
        record: &NewRecord<'_>,
    ) -> Result<(PutOutcome, RecordVersion)> {
        let tx = rusqlite::Transaction::new_unchecked(&self.conn, TransactionBehavior::Immediate)?;
        let mut cache = KeyCache::default();
        let (outcome, version) = self.put_in(&tx, &mut cache, record, true)?;
        self.blocks.flush()?;
        if outcome != PutOutcome::Unchanged {
            audit::append(
                &tx,
                &Event {
                    actor: &access.actor,
                    action: if outcome == PutOutcome::Created {
                        "create"
                    } else {
                        "update"
                    },
                    target: record.record_id,
                    purpose: &access.purpose,
                    detail: serde_json::json!({ "version": version.version, "cid": version.cid }),
                },
            )?;
        }
        tx.commit()?;
        Ok((outcome, version))
    }

    /// Stores one record inside the caller's transaction. New patients get a
    /// fresh data key when `create_patient` allows it. The block is written
    /// before the transaction commits: a rollback leaves at most an orphan
    /// block that no metadata names.
    pub(crate) fn put_in(
        &self,
        conn: &Connection,
        cache: &mut KeyCache,
        record: &NewRecord<'_>,
        create_patient: bool,
    ) -> Result<(PutOutcome, RecordVersion)> {
        let mut stored = self
            .put_all_in(conn, cache, std::slice::from_ref(record), |_| {
                create_patient
            })
            .map_err(|(_, e)| *e)?;
        Ok(stored.pop().expect("one record in, one out"))
    }

    /// Stores many records inside the caller's transaction, as
    /// [`Vault::put_in`] would one by one, but sealing and writing their
    /// blocks on every core between the metadata reads and the inserts
    /// (block files, not SQLite, bound ingest). `create_patient(i)` says
    /// whether record `i` may create its patient's key. Records naming the
    /// same record id twice are stored one by one, in order.
    pub(crate) fn put_all_in(
        &self,
        conn: &Connection,
        cache: &mut KeyCache,
        records: &[NewRecord<'_>],
        create_patient: impl Fn(usize) -> bool,
    ) -> std::result::Result<Vec<(PutOutcome, RecordVersion)>, RecordFailed> {
        use rayon::prelude::*;
        let distinct: std::collections::HashSet<&str> =
            records.iter().map(|r| r.record_id).collect();
        if distinct.len() != records.len() {
            return records
                .iter()
                .enumerate()
                .map(|(i, r)| {
                    self.put_in(conn, cache, r, create_patient(i))
                        .map_err(|e| (i, Box::new(e)))
                })
                .collect();
        }
        // 1. Keys, MACs and current versions (SQLite, in order).
        enum Plan {
            Unchanged(RecordVersion),
            Write {
                key: SecretKey,
                epoch: i64,
                mac: [u8; 32],
                version: i64,
                prev: Option<String>,
            },
        }
        let mut plans = Vec::with_capacity(records.len());
        for (i, record) in records.iter().enumerate() {
            let mut step = || -> Result<Plan> {
                // The MAC stays under the patient's first key, so an
                // unchanged update is detected across epochs; the block is
                // sealed under the current epoch's (`data_keys`).
                let mac_key = self.data_key(conn, cache, record.patient_id, create_patient(i))?;
                let mac = content_mac(&mac_key, record.content);
                let (epoch, key) = data_keys::writer_key(
                    conn,
                    self.keys.as_ref(),
                    &mut cache.epochs,
                    record.patient_id,
                )?;
                let current = current_version(conn, record.record_id)?;
                if let Some((cur, cur_mac)) = &current {
                    if cur.patient_id != record.patient_id {
                        return Err(Error::Invalid(format!(
                            "{} belongs to another patient; a record cannot move between patients",
                            record.record_id
                        )));
                    }
                    if cur.resource_type != record.resource_type {
                        return Err(Error::Invalid(format!(
                            "{} is a {}, not a {}",
                            record.record_id, cur.resource_type, record.resource_type
                        )));
                    }
                    if *cur_mac == mac {
                        return Ok(Plan::Unchanged(cur.clone()));
                    }
                }
                Ok(Plan::Write {
                    key,
                    epoch,
                    mac,
                    version: current.as_ref().map_or(1, |(c, _)| c.version + 1),
                    prev: current.map(|(c, _)| c.cid),
                })
            };
            plans.push(step().map_err(|e| (i, Box::new(e)))?);
        }
        // 2. Seal and write the blocks, in parallel.
        let blocks = &self.blocks;
        let cids: Vec<Option<(String, i64, [u8; 32])>> = plans
            .par_iter()
            .zip(records.par_iter())
            .enumerate()
            .map(|(i, (plan, record))| match plan {
                Plan::Unchanged(_) => Ok(None),
                Plan::Write { key, version, .. } => {
                    let sealed = seal_block(
                        key,
                        record.patient_id,
                        record.record_id,
                        *version,
                        record.content,
                    );
                    let cid = blocks.put(&sealed).map_err(|e| (i, Box::new(e)))?;
                    let hash: [u8; 32] = sha2::Sha256::digest(&sealed).into();
                    Ok(Some((cid, sealed.len() as i64, hash)))
                }
            })
            .collect::<std::result::Result<_, RecordFailed>>()?;
        // 3. The metadata rows (SQLite, in order).
        let mut out = Vec::with_capacity(records.len());
        for (i, ((plan, record), cid)) in plans.into_iter().zip(records).zip(cids).enumerate() {
            match (plan, cid) {
                (Plan::Unchanged(cur), _) => out.push((PutOutcome::Unchanged, cur)),
                (
                    Plan::Write {
                        mac,
                        version,
                        prev,
                        epoch,
                        ..
                    },
                    Some((cid, size, data_hash)),
                ) => {
                    let rv = RecordVersion {
                        record_id: record.record_id.to_owned(),
                        version,
                        patient_id: record.patient_id.to_owned(),
                        resource_type: record.resource_type.to_owned(),
                        cid,
                        prev_cid: prev,
                        size,
                        created_at: crate::storage::store::now(),
                    };
                    conn.prepare_cached(
                        "INSERT INTO records(record_id, version, patient_id, resource_type, cid, prev_cid, content_mac, size, created_at)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                    )
                    .and_then(|mut s| {
                        s.execute(params![rv.record_id, rv.version, rv.patient_id, rv.resource_type, rv.cid, rv.prev_cid, mac.to_vec(), rv.size, rv.created_at])
                    })
                    .map_err(|e| (i, Box::new(e.into())))?;
                    conn.prepare_cached(
                        "INSERT INTO record_anchors (record_id, version, data_hash) VALUES (?1, ?2, ?3)",
                    )
                    .and_then(|mut s| s.execute(params![rv.record_id, rv.version, data_hash.to_vec()]))
                    .map_err(|e| (i, Box::new(e.into())))?;
                    // No row means epoch 1: ingest of a never-rotated
                    // patient writes nothing more than before.
                    if epoch > 1 {
                        conn.prepare_cached(
                            "INSERT INTO record_epochs (record_id, version, epoch) VALUES (?1, ?2, ?3)",
                        )
                        .and_then(|mut s| s.execute(params![rv.record_id, rv.version, epoch]))
                        .map_err(|e| (i, Box::new(e.into())))?;
                    }
                    let outcome = if rv.version > 1 {
                        PutOutcome::Updated
                    } else {
                        PutOutcome::Created
                    };
                    out.push((outcome, rv));
                }
                (Plan::Write { .. }, None) => unreachable!("every write has its block"),
            }
        }
        Ok(out)
    }

    /// Reads a record (the current version, or `version`), audited, with
    /// no authorization: the storage layer's own tests use it (feature
    /// `test-support`). Every interface reads through
    /// [`Clinic`](crate::records::clinical::Clinic), where the chain
    /// decides first. The block is re-hashed against its CID and
    /// authenticated against its patient, record and version before
    /// anything is returned.
    #[cfg(feature = "test-support")]
    pub fn read(
        &self,
        access: &Access,
        record_id: &str,
        version: Option<i64>,
    ) -> Result<(RecordVersion, Vec<u8>)> {
        let rv = match version {
            Some(v) => self
                .history(record_id)?
                .into_iter()
                .find(|r| r.version == v)
                .ok_or_else(|| Error::NotFound(format!("{record_id} has no version {v}")))?,
            None => current_version(&self.conn, record_id)?
                .map(|(r, _)| r)
                .ok_or_else(|| Error::NotFound(format!("no record {record_id} in the vault")))?,
        };
        let content = self.decrypt_version(&rv)?;
        let tx = rusqlite::Transaction::new_unchecked(&self.conn, TransactionBehavior::Immediate)?;
        audit::append(
            &tx,
            &Event {
                actor: &access.actor,
                action: "read",
                target: &rv.record_id,
                purpose: &access.purpose,
                detail: serde_json::json!({ "version": rv.version, "cid": rv.cid }),
            },
        )?;
        tx.commit()?;
        Ok((rv, content))
    }

    /// Decrypts one stored version with the custodian's copy of its
    /// epoch's key (not audited: for internal use by audited callers; a
    /// reader's path is [`Vault::decrypt_with`] and its own sealed copy).
    #[cfg(any(test, feature = "test-support"))]
    pub(crate) fn decrypt_version(&self, rv: &RecordVersion) -> Result<Vec<u8>> {
        self.ensure_not_purged(rv)?;
        let mut cache = KeyCache::default();
        let epoch = data_keys::epoch_of(&self.conn, &rv.record_id, rv.version)?;
        let key = data_keys::custodian_key(
            &self.conn,
            self.keys.as_ref(),
            &mut cache.epochs,
            &rv.patient_id,
            epoch,
        )?;
        self.decrypt_with(rv, &key)
    }

    /// Decrypts one stored version with `key` (a reader's own copy of the
    /// version's epoch key); not audited.
    pub(crate) fn decrypt_with(&self, rv: &RecordVersion, key: &SecretKey) -> Result<Vec<u8>> {
        self.ensure_not_purged(rv)?;
        let sealed = self.blocks.get(&rv.cid)?;
        open_block(key, &rv.patient_id, &rv.record_id, rv.version, &sealed)
    }

    /// Refuses a version that retention purged, naming when.
    pub(crate) fn ensure_not_purged(&self, rv: &RecordVersion) -> Result<()> {
        // Written by `compliance::retention`'s purge.
        let purged: Option<String> = self
            .conn
            .prepare_cached(
                "SELECT purged_at FROM retention_purges WHERE record_id = ?1 AND version = ?2",
            )?
            .query_row(params![rv.record_id, rv.version], |r| r.get(0))
            .optional()?;
        match purged {
            Some(at) => Err(Error::NotFound(format!(
                "{} version {} was purged on {at} under the retention policy for {}",
                rv.record_id, rv.version, rv.resource_type
            ))),
            None => Ok(()),
        }
    }

    /// Every version of a record, oldest first.
    pub fn history(&self, record_id: &str) -> Result<Vec<RecordVersion>> {
        let mut stmt = self.conn.prepare(
            "SELECT record_id, version, patient_id, resource_type, cid, prev_cid, size, created_at
             FROM records WHERE record_id = ?1 ORDER BY version",
        )?;
        let out: Vec<RecordVersion> = stmt
            .query_map([record_id], row_to_version)?
            .collect::<rusqlite::Result<_>>()?;
        if out.is_empty() {
            return Err(Error::NotFound(format!(
                "no record {record_id} in the vault"
            )));
        }
        Ok(out)
    }

    /// The current version of every record, optionally of one patient.
    pub fn list(&self, patient_id: Option<&str>, limit: usize) -> Result<Vec<RecordVersion>> {
        let mut stmt = self.conn.prepare(
            "SELECT r.record_id, r.version, r.patient_id, r.resource_type, r.cid, r.prev_cid, r.size, r.created_at
             FROM records r
             WHERE (?1 IS NULL OR r.patient_id = ?1)
               AND r.version = (SELECT MAX(version) FROM records x WHERE x.record_id = r.record_id)
               AND NOT EXISTS (SELECT 1 FROM retention_purges p
                               WHERE p.record_id = r.record_id AND p.version = r.version)
             ORDER BY r.patient_id, r.record_id LIMIT ?2",
        )?;
        let out = stmt
            .query_map(params![patient_id, limit as i64], row_to_version)?
            .collect::<rusqlite::Result<_>>()?;
        Ok(out)
    }

    /// The patient's data key: unwrapped from the database, or created and
    /// wrapped on first use when `create` allows.
    pub(crate) fn data_key(
        &self,
        conn: &Connection,
        cache: &mut KeyCache,
        patient_id: &str,
        create: bool,
    ) -> Result<SecretKey> {
        if let Some(key) =
            data_keys::first_key(conn, self.keys.as_ref(), &mut cache.epochs, patient_id)?
        {
            return Ok(key);
        }
        if !create {
            return Err(Error::NotFound(format!(
                "no patient {patient_id} in the vault"
            )));
        }
        let key = SecretKey::generate();
        let wrapped = self.keys.wrap(&key, patient_id.as_bytes())?;
        conn.execute(
            "INSERT INTO patients(patient_id, wrapped_key, kek_id, created_at) VALUES (?1, ?2, ?3, ?4)",
            params![patient_id, wrapped, self.keys.key_id(), crate::storage::store::now()],
        )?;
        data_keys::record_first_epoch(conn, patient_id, "created")?;
        data_keys::remember_first(&mut cache.epochs, patient_id, &key);
        Ok(key)
    }
}

fn row_to_version(r: &rusqlite::Row<'_>) -> rusqlite::Result<RecordVersion> {
    Ok(RecordVersion {
        record_id: r.get(0)?,
        version: r.get(1)?,
        patient_id: r.get(2)?,
        resource_type: r.get(3)?,
        cid: r.get(4)?,
        prev_cid: r.get(5)?,
        size: r.get(6)?,
        created_at: r.get(7)?,
    })
}

fn current_version(conn: &Connection, record_id: &str) -> Result<Option<(RecordVersion, Vec<u8>)>> {
    let row = conn
        .prepare_cached(
            "SELECT record_id, version, patient_id, resource_type, cid, prev_cid, size, created_at, content_mac
             FROM records WHERE record_id = ?1 ORDER BY version DESC LIMIT 1",
        )?
        .query_row([record_id], |r| Ok((row_to_version(r)?, r.get::<_, Vec<u8>>(8)?)))
        .optional()?;
    Ok(row)
}
