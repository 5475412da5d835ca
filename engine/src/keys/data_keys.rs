//! Per-grantee data keys: a grant is both a permission (on chain) and a
//! key (here).
//!
//! A patient's record blocks are sealed under a data key of an **epoch**
//! (`data_key_epochs`). Each epoch's key is sealed (ECIES over secp256k1,
//! [`crate::keys::ecies`]) to the public key of every account that may
//! read the patient's records (`wrapped_data_keys`): the patient's linked
//! account, each provider with a grant (`access::grants::grant`), each
//! delegate, a provider under an open emergency override (the custodian
//! seals it when the override opens), and the research engine's account
//! while the patient consents to a study. A reader opens its own copy with
//! its own account's secret, after the chain has allowed the read; no copy
//! is a refusal, whatever the chain says.
//!
//! Revoking a grant (or a delegation, or withdrawing a consent) deletes the
//! holder's copies and starts a new epoch: a fresh key, sealed to the
//! holders that remain; versions written from then on use it. Older
//! versions stay readable by those who still hold their epoch's key.
//!
//! **The custodian.** Ingest and every new version are written by the
//! custodian (the engine), which keeps its own copy of each epoch's key
//! wrapped by the keystore: epoch 1 is `patients.wrapped_key` (the key a
//! patient has always had, which also seals the projection's identifier
//! cells, appointment reasons and the content MACs, so those never change
//! key), later epochs are `data_key_epochs.wrapped_key`. Whoever holds the
//! keystore's passphrase or HSM PIN can therefore read every record, and,
//! in the one-machine deployment, where every account's secret is wrapped
//! by the same keystore, open every sealed copy too. The sealed copies make
//! each reader's access depend on a key made for them, and are what a
//! deployment where clients hold their own account keys would rely on
//! (docs/THREAT_MODEL.md).
//!
//! **Older data directories** are migrated lazily: a patient with no
//! `data_key_epochs` row is still on the key of `patients.wrapped_key`
//! (epoch 1). The first time a key is needed for them (a grant, a link, a
//! consent, a read the chain allowed) epoch 1 is recorded and sealed for
//! their linked account and for that holder; from then on only sealed
//! copies open their records.

use std::collections::HashMap;

use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;

use crate::keys::ecies;
use crate::keys::keystore::{KeyStore, SecretKey};
use crate::{Error, Result, audit};

/// The custodian's keys as one operation unwrapped them: each patient's
/// first key, later epochs' keys and current epoch, so a bundle of many
/// resources unwraps each once.
#[derive(Default)]
pub(crate) struct EpochCache {
    first: HashMap<String, SecretKey>,
    later: HashMap<(String, i64), SecretKey>,
    current: HashMap<String, i64>,
}

/// Whether a patient is known to the vault, and whether they were erased.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum PatientState {
    /// Never stored.
    Absent,
    /// Stored, with a live data key.
    Active,
    /// Erased: the data key was destroyed at `at`.
    Erased {
        /// When.
        at: String,
    },
}

pub(crate) fn patient_state(conn: &Connection, patient_id: &str) -> Result<PatientState> {
    let erased_at: Option<Option<String>> = conn
        .prepare_cached("SELECT erased_at FROM patients WHERE patient_id = ?1")?
        .query_row([patient_id], |r| r.get(0))
        .optional()?;
    Ok(match erased_at {
        None => PatientState::Absent,
        Some(None) => PatientState::Active,
        Some(Some(at)) => PatientState::Erased { at },
    })
}

/// The patient's first data key (epoch 1, `patients.wrapped_key`), the
/// custodian's copy; `None` for a patient the vault does not know.
pub(crate) fn first_key(
    conn: &Connection,
    keys: &dyn KeyStore,
    cache: &mut EpochCache,
    patient_id: &str,
) -> Result<Option<SecretKey>> {
    if let Some(k) = cache.first.get(patient_id) {
        return Ok(Some(k.clone()));
    }
    let row: Option<(Option<Vec<u8>>, Option<String>)> = conn
        .prepare_cached("SELECT wrapped_key, erased_at FROM patients WHERE patient_id = ?1")?
        .query_row([patient_id], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    let key = match row {
        None => return Ok(None),
        Some((_, Some(erased_at))) => {
            return Err(Error::Shredded {
                patient: patient_id.to_owned(),
                erased_at,
            });
        }
        Some((None, None)) => {
            return Err(Error::Invalid(format!(
                "patient {patient_id} has no data key"
            )));
        }
        Some((Some(wrapped), None)) => keys.unwrap(&wrapped, patient_id.as_bytes())?,
    };
    remember_first(cache, patient_id, &key);
    Ok(Some(key))
}

/// Caches a patient's first key (one just created).
pub(crate) fn remember_first(cache: &mut EpochCache, patient_id: &str, key: &SecretKey) {
    cache.first.insert(patient_id.to_owned(), key.clone());
}

/// The patient of a vault's first key, or the error that says why none.
fn require_first(
    conn: &Connection,
    keys: &dyn KeyStore,
    cache: &mut EpochCache,
    patient_id: &str,
) -> Result<SecretKey> {
    first_key(conn, keys, cache, patient_id)?
        .ok_or_else(|| Error::NotFound(format!("no patient {patient_id} in the vault")))
}

/// The account linked to vault patient `patient_id` (`research_patients`,
/// which the research path creates), as (name, address).
fn linked(conn: &Connection, patient_id: &str) -> Result<Option<(String, String)>> {
    if !crate::storage::store::table_exists(conn, "research_patients")? {
        return Ok(None);
    }
    Ok(conn
        .prepare_cached("SELECT account, address FROM research_patients WHERE patient_id = ?1")?
        .query_row([patient_id], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?)
}

/// Why an account holds a patient's data key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The patient's own account.
    Patient,
    /// A provider with a grant.
    Grantee,
    /// A delegate (caregiver).
    Delegate,
    /// A provider under an emergency override.
    Emergency,
    /// The research engine, for a consent to a study.
    Research,
}

impl Role {
    /// Its name, as stored and shown.
    pub fn name(self) -> &'static str {
        match self {
            Role::Patient => "patient",
            Role::Grantee => "grantee",
            Role::Delegate => "delegate",
            Role::Emergency => "emergency",
            Role::Research => "research",
        }
    }
}

/// An account a key is sealed to.
#[derive(Debug, Clone)]
pub struct Holder {
    /// Its address (`0x…`, lowercase).
    pub address: String,
    /// Its account name, when known here.
    pub name: Option<String>,
    /// Its compressed SEC1 public key.
    pub public_key: Vec<u8>,
}

impl Holder {
    /// The account `name` of this directory as a holder (its public key
    /// back-filled if an older directory has none recorded).
    pub fn account(conn: &Connection, keys: &dyn KeyStore, name: &str) -> Result<Holder> {
        let address = crate::keys::accounts::address_of(conn, name)?
            .ok_or_else(|| Error::NotFound(format!("no account `{name}`")))?;
        let public_key = crate::keys::accounts::public_key_or_load(conn, keys, name)?;
        Ok(Holder {
            address: address.to_lowercase(),
            name: Some(name.to_string()),
            public_key,
        })
    }

    /// An unlocked account as a holder.
    pub fn of(account: &cohort_ledger_bridge::Account) -> Result<Holder> {
        Ok(Holder {
            address: format!("{:#x}", account.address()),
            name: Some(account.name().to_string()),
            public_key: ecies::public_key_of(&account.secret_bytes())?.to_vec(),
        })
    }
}

/// One sealed copy, as listed (no key bytes).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct HeldKey {
    /// The epoch.
    pub epoch: i64,
    /// The holder's address.
    pub holder: String,
    /// Its account name, when known here.
    pub holder_name: Option<String>,
    /// Why it holds it.
    pub role: String,
    /// When it was sealed.
    pub sealed_at: String,
}

/// One epoch of a patient's data key.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Epoch {
    /// 1, 2, …
    pub epoch: i64,
    /// When it started.
    pub created_at: String,
    /// Why (`created`, `migrated`, `revoke <name>`, …).
    pub reason: String,
}

/// Who holds which epoch of a patient's data key.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Holders {
    /// The patient.
    pub patient_id: String,
    /// The epochs, oldest first.
    pub epochs: Vec<Epoch>,
    /// The sealed copies, by epoch then holder.
    pub copies: Vec<HeldKey>,
}

/// What a sealed copy is bound to: the patient, the epoch and the holder,
/// each length-prefixed, so a copy moved to another row does not open.
pub(crate) fn context(patient_id: &str, epoch: i64, holder: &str) -> Vec<u8> {
    let mut out = b"cohort/data-key/v1".to_vec();
    for part in [patient_id.as_bytes(), holder.to_lowercase().as_bytes()] {
        out.extend_from_slice(&(part.len() as u32).to_be_bytes());
        out.extend_from_slice(part);
    }
    out.extend_from_slice(&epoch.to_be_bytes());
    out
}

/// What the custodian's keystore-wrapped copy of an epoch ≥ 2 is bound to.
pub(crate) fn custodian_context(patient_id: &str, epoch: i64) -> Vec<u8> {
    format!("cohort/data-key/{epoch}/{patient_id}").into_bytes()
}

/// Whether the patient's epochs are recorded (else: an older directory,
/// still on epoch 1 only).
fn migrated(conn: &Connection, patient_id: &str) -> Result<bool> {
    Ok(conn
        .prepare_cached("SELECT 1 FROM data_key_epochs WHERE patient_id = ?1 LIMIT 1")?
        .exists([patient_id])?)
}

/// Records epoch 1 for a patient created now (`reason` `created`) or found
/// without epochs (`migrated`).
pub(crate) fn record_first_epoch(conn: &Connection, patient_id: &str, reason: &str) -> Result<()> {
    conn.prepare_cached(
        "INSERT OR IGNORE INTO data_key_epochs (patient_id, epoch, wrapped_key, kek_id, created_at, reason)
         VALUES (?1, 1, NULL, NULL, ?2, ?3)",
    )?
    .execute(params![patient_id, crate::storage::store::now(), reason])?;
    Ok(())
}

/// The patient's current epoch (1 for one never rotated).
pub fn current_epoch(conn: &Connection, patient_id: &str) -> Result<i64> {
    let max: Option<i64> = conn
        .prepare_cached("SELECT MAX(epoch) FROM data_key_epochs WHERE patient_id = ?1")?
        .query_row([patient_id], |r| r.get(0))?;
    Ok(max.unwrap_or(1))
}

/// The epoch that sealed a record version (1 when none is recorded).
pub fn epoch_of(conn: &Connection, record_id: &str, version: i64) -> Result<i64> {
    Ok(conn
        .prepare_cached("SELECT epoch FROM record_epochs WHERE record_id = ?1 AND version = ?2")?
        .query_row(params![record_id, version], |r| r.get(0))
        .optional()?
        .unwrap_or(1))
}

/// The custodian's key of `epoch`, from its keystore-wrapped copy.
pub(crate) fn custodian_key(
    conn: &Connection,
    keys: &dyn KeyStore,
    cache: &mut EpochCache,
    patient_id: &str,
    epoch: i64,
) -> Result<SecretKey> {
    if epoch == 1 {
        return require_first(conn, keys, cache, patient_id);
    }
    if let Some(k) = cache.later.get(&(patient_id.to_string(), epoch)) {
        return Ok(k.clone());
    }
    // Erasure is checked first: it names when.
    require_first(conn, keys, cache, patient_id)?;
    let wrapped: Option<Vec<u8>> = conn
        .prepare_cached(
            "SELECT wrapped_key FROM data_key_epochs WHERE patient_id = ?1 AND epoch = ?2",
        )?
        .query_row(params![patient_id, epoch], |r| r.get(0))
        .optional()?
        .flatten();
    let wrapped = wrapped.ok_or_else(|| {
        Error::NotFound(format!(
            "patient {patient_id} has no data key of epoch {epoch}"
        ))
    })?;
    let key = keys.unwrap(&wrapped, &custodian_context(patient_id, epoch))?;
    cache
        .later
        .insert((patient_id.to_string(), epoch), key.clone());
    Ok(key)
}

/// The current epoch and its key, for writing a new version.
pub(crate) fn writer_key(
    conn: &Connection,
    keys: &dyn KeyStore,
    cache: &mut EpochCache,
    patient_id: &str,
) -> Result<(i64, SecretKey)> {
    if let Some(e) = cache.current.get(patient_id) {
        let e = *e;
        return Ok((e, custodian_key(conn, keys, cache, patient_id, e)?));
    }
    let epoch = current_epoch(conn, patient_id)?;
    let key = custodian_key(conn, keys, cache, patient_id, epoch)?;
    cache.current.insert(patient_id.to_string(), epoch);
    Ok((epoch, key))
}

/// Stores a sealed copy. An emergency copy never replaces a copy the
/// holder has for another reason (a grant), so ending the override
/// removes only what the override gave.
fn insert_copy(
    conn: &Connection,
    patient_id: &str,
    epoch: i64,
    holder: &Holder,
    role: Role,
    key: &SecretKey,
) -> Result<()> {
    if role == Role::Emergency
        && conn
            .prepare_cached(
                "SELECT 1 FROM wrapped_data_keys WHERE patient_id = ?1 AND epoch = ?2 AND lower(holder_address) = lower(?3)",
            )?
            .exists(params![patient_id, epoch, holder.address])?
    {
        return Ok(());
    }
    let sealed = ecies::seal_for(
        &holder.public_key,
        &context(patient_id, epoch, &holder.address),
        key.expose(),
    )?;
    conn.prepare_cached(
        "INSERT INTO wrapped_data_keys (patient_id, epoch, holder_address, holder_name, role, public_key, sealed, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
         ON CONFLICT (patient_id, epoch, holder_address) DO UPDATE SET
           holder_name = excluded.holder_name, role = excluded.role,
           public_key = excluded.public_key, sealed = excluded.sealed, created_at = excluded.created_at",
    )?
    .execute(params![
        patient_id,
        epoch,
        holder.address,
        holder.name,
        role.name(),
        holder.public_key,
        sealed,
        crate::storage::store::now()
    ])?;
    Ok(())
}

/// The epochs of a patient whose keys the custodian still has.
fn live_epochs(conn: &Connection, patient_id: &str) -> Result<Vec<i64>> {
    let mut out: Vec<i64> = conn
        .prepare_cached(
            "SELECT epoch FROM data_key_epochs WHERE patient_id = ?1 AND (epoch = 1 OR wrapped_key IS NOT NULL) ORDER BY epoch",
        )?
        .query_map([patient_id], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    if out.is_empty() {
        out.push(1);
    }
    Ok(out)
}

/// Migrates an older directory's patient (records epoch 1 and seals it for
/// their linked account); nothing for a patient already migrated.
fn migrate(conn: &Connection, keys: &dyn KeyStore, patient_id: &str) -> Result<()> {
    if migrated(conn, patient_id)? {
        return Ok(());
    }
    record_first_epoch(conn, patient_id, "migrated")?;
    if let Some((name, _)) = linked(conn, patient_id)? {
        let holder = Holder::account(conn, keys, &name)?;
        let key = require_first(conn, keys, &mut EpochCache::default(), patient_id)?;
        insert_copy(conn, patient_id, 1, &holder, Role::Patient, &key)?;
    }
    Ok(())
}

/// Seals every live epoch of the patient's data key for `holder` (a grant,
/// a delegation, an emergency, a consent, a link), audited as `keys.wrap`
/// with the holder and the epochs, never the key. A patient with no data
/// key in the vault (no records yet) has nothing to seal: `Ok(0)`.
pub fn seal_for_holder(
    conn: &Connection,
    keys: &dyn KeyStore,
    actor: &str,
    patient_id: &str,
    holder: &Holder,
    role: Role,
) -> Result<usize> {
    crate::storage::store::with_write_lock(conn, || {
        match patient_state(conn, patient_id)? {
            PatientState::Active => {}
            _ => return Ok(0),
        }
        migrate(conn, keys, patient_id)?;
        let mut cache = EpochCache::default();
        let epochs = live_epochs(conn, patient_id)?;
        for &epoch in &epochs {
            let key = custodian_key(conn, keys, &mut cache, patient_id, epoch)?;
            insert_copy(conn, patient_id, epoch, holder, role, &key)?;
        }
        audit::append(
            conn,
            &audit::Event {
                actor,
                action: "keys.wrap",
                target: &format!("Patient/{patient_id}"),
                purpose: "operations",
                detail: serde_json::json!({
                    "holder": holder.address, "holder_name": holder.name,
                    "role": role.name(), "epochs": epochs,
                }),
            },
        )?;
        Ok(epochs.len())
    })
}

/// What a revocation did to the keys.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Rotated {
    /// Sealed copies of the holder deleted.
    pub copies_deleted: usize,
    /// The new epoch (later versions use it); `None` when the patient has
    /// no data key in the vault.
    pub new_epoch: Option<i64>,
}

/// Deletes every copy `holder_address` holds of the patient's key and
/// starts a new epoch for the holders that remain (the patient always
/// among them), in one transaction, audited as `keys.revoke`. Safe to run
/// again (a second run deletes nothing and rotates once more).
pub fn revoke_holder(
    conn: &Connection,
    keys: &dyn KeyStore,
    actor: &str,
    patient_id: &str,
    holder_address: &str,
    reason: &str,
) -> Result<Rotated> {
    crate::storage::store::with_write_lock(conn, || {
        match patient_state(conn, patient_id)? {
            PatientState::Active => {}
            _ => {
                return Ok(Rotated {
                    copies_deleted: 0,
                    new_epoch: None,
                });
            }
        }
        migrate(conn, keys, patient_id)?;
        let deleted = conn.execute(
            "DELETE FROM wrapped_data_keys WHERE patient_id = ?1 AND lower(holder_address) = lower(?2)",
            params![patient_id, holder_address],
        )?;
        let epoch = rotate_in(conn, keys, patient_id, reason)?;
        audit::append(
            conn,
            &audit::Event {
                actor,
                action: "keys.revoke",
                target: &format!("Patient/{patient_id}"),
                purpose: "operations",
                detail: serde_json::json!({
                    "holder": holder_address.to_lowercase(), "copies_deleted": deleted,
                    "new_epoch": epoch, "reason": reason,
                }),
            },
        )?;
        Ok(Rotated {
            copies_deleted: deleted,
            new_epoch: Some(epoch),
        })
    })
}

/// Like [`revoke_holder`], for the copies `holder_address` holds as
/// `role` only (an emergency's, when the override ends); nothing is
/// rotated when it holds none.
pub fn revoke_role(
    conn: &Connection,
    keys: &dyn KeyStore,
    actor: &str,
    patient_id: &str,
    holder_address: &str,
    role: Role,
    reason: &str,
) -> Result<Option<Rotated>> {
    let held: bool = conn
        .prepare_cached(
            "SELECT 1 FROM wrapped_data_keys WHERE patient_id = ?1 AND lower(holder_address) = lower(?2) AND role = ?3",
        )?
        .exists(params![patient_id, holder_address, role.name()])?;
    let other: bool = conn
        .prepare_cached(
            "SELECT 1 FROM wrapped_data_keys WHERE patient_id = ?1 AND lower(holder_address) = lower(?2) AND role <> ?3",
        )?
        .exists(params![patient_id, holder_address, role.name()])?;
    if !held || other {
        return Ok(None);
    }
    revoke_holder(conn, keys, actor, patient_id, holder_address, reason).map(Some)
}

/// Starts the next epoch: a fresh key, wrapped by the keystore for the
/// custodian and sealed to every holder of the current epoch and to the
/// patient's linked account. Inside the caller's transaction.
fn rotate_in(
    conn: &Connection,
    keys: &dyn KeyStore,
    patient_id: &str,
    reason: &str,
) -> Result<i64> {
    let current = current_epoch(conn, patient_id)?;
    let next = current + 1;
    let key = SecretKey::generate();
    let wrapped = keys.wrap(&key, &custodian_context(patient_id, next))?;
    conn.execute(
        "INSERT INTO data_key_epochs (patient_id, epoch, wrapped_key, kek_id, created_at, reason)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![
            patient_id,
            next,
            wrapped,
            keys.key_id(),
            crate::storage::store::now(),
            reason
        ],
    )?;
    let mut holders: Vec<(Holder, Role)> = conn
        .prepare(
            "SELECT holder_address, holder_name, role, public_key FROM wrapped_data_keys
             WHERE patient_id = ?1 AND epoch = ?2 ORDER BY holder_address",
        )?
        .query_map(params![patient_id, current], |r| {
            let role: String = r.get(2)?;
            Ok((
                Holder {
                    address: r.get(0)?,
                    name: r.get(1)?,
                    public_key: r.get(3)?,
                },
                role,
            ))
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?
        .into_iter()
        .map(|(h, role)| (h, role_of(&role)))
        .collect();
    if let Some((name, address)) = linked(conn, patient_id)?
        && !holders
            .iter()
            .any(|(h, _)| h.address.eq_ignore_ascii_case(&address))
    {
        holders.push((Holder::account(conn, keys, &name)?, Role::Patient));
    }
    for (holder, role) in &holders {
        insert_copy(conn, patient_id, next, holder, *role, &key)?;
    }
    Ok(next)
}

fn role_of(name: &str) -> Role {
    match name {
        "patient" => Role::Patient,
        "delegate" => Role::Delegate,
        "emergency" => Role::Emergency,
        "research" => Role::Research,
        _ => Role::Grantee,
    }
}

/// Why a reader cannot open a version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoKey {
    /// The epoch it needed.
    pub epoch: i64,
}

/// The key of `epoch` as `reader` holds it: its sealed copy opened with
/// its own secret. `Ok(Err(NoKey))` when it holds none. For a patient of an
/// older directory (no epochs recorded) the chain's allowance of this read
/// is taken as the grant it was before: epoch 1 is migrated and sealed for
/// the reader first.
pub(crate) fn reader_key(
    conn: &Connection,
    keys: &dyn KeyStore,
    reader: &cohort_ledger_bridge::Account,
    patient_id: &str,
    epoch: i64,
) -> Result<std::result::Result<SecretKey, NoKey>> {
    let address = format!("{:#x}", reader.address());
    if let PatientState::Erased { at } = patient_state(conn, patient_id)? {
        return Err(Error::Shredded {
            patient: patient_id.to_string(),
            erased_at: at,
        });
    }
    if !migrated(conn, patient_id)? {
        seal_for_holder(
            conn,
            keys,
            reader.name(),
            patient_id,
            &Holder::of(reader)?,
            Role::Grantee,
        )?;
    }
    let sealed: Option<Vec<u8>> = conn
        .prepare_cached(
            "SELECT sealed FROM wrapped_data_keys WHERE patient_id = ?1 AND epoch = ?2 AND lower(holder_address) = ?3",
        )?
        .query_row(params![patient_id, epoch, address], |r| r.get(0))
        .optional()?;
    let Some(sealed) = sealed else {
        return Ok(Err(NoKey { epoch }));
    };
    let opened = ecies::open_with(
        &reader.secret_bytes(),
        &context(patient_id, epoch, &address),
        &sealed,
    )?;
    let key = SecretKey::from_slice(&opened).ok_or_else(|| Error::Decrypt {
        what: format!("{address}'s key of epoch {epoch} of patient {patient_id}"),
    })?;
    Ok(Ok(key))
}

/// Whether `address` holds the patient's current key (the research view
/// includes only patients whose current key the engine holds).
pub fn holds_current(conn: &Connection, patient_id: &str, address: &str) -> Result<bool> {
    let epoch = current_epoch(conn, patient_id)?;
    Ok(conn
        .prepare_cached(
            "SELECT 1 FROM wrapped_data_keys WHERE patient_id = ?1 AND epoch = ?2 AND lower(holder_address) = lower(?3)",
        )?
        .exists(params![patient_id, epoch, address])?)
}

/// Whether the research engine (`engine`, its address) may project the
/// patient into a study's view: it holds their current key (sealed at
/// consent, deleted at withdrawal). A patient of an older directory, not
/// yet migrated, is still under the one custodian key and counts as held.
pub fn research_may_read(conn: &Connection, patient_id: &str, engine: &str) -> Result<bool> {
    Ok(!migrated(conn, patient_id)? || holds_current(conn, patient_id, engine)?)
}

/// Whether `address` holds any copy of the patient's key.
pub fn holds_any(conn: &Connection, patient_id: &str, address: &str) -> Result<bool> {
    Ok(conn
        .prepare_cached(
            "SELECT 1 FROM wrapped_data_keys WHERE patient_id = ?1 AND lower(holder_address) = lower(?2)",
        )?
        .exists(params![patient_id, address])?)
}

/// Who holds which epoch of the patient's key (names and addresses, no key
/// bytes).
pub fn holders(conn: &Connection, patient_id: &str) -> Result<Holders> {
    let epochs = conn
        .prepare(
            "SELECT epoch, created_at, reason FROM data_key_epochs WHERE patient_id = ?1 ORDER BY epoch",
        )?
        .query_map([patient_id], |r| {
            Ok(Epoch {
                epoch: r.get(0)?,
                created_at: r.get(1)?,
                reason: r.get(2)?,
            })
        })?
        .collect::<rusqlite::Result<_>>()?;
    let copies = conn
        .prepare(
            "SELECT epoch, holder_address, holder_name, role, created_at FROM wrapped_data_keys
             WHERE patient_id = ?1 ORDER BY epoch, holder_address",
        )?
        .query_map([patient_id], |r| {
            Ok(HeldKey {
                epoch: r.get(0)?,
                holder: r.get(1)?,
                holder_name: r.get(2)?,
                role: r.get(3)?,
                sealed_at: r.get(4)?,
            })
        })?
        .collect::<rusqlite::Result<_>>()?;
    Ok(Holders {
        patient_id: patient_id.to_string(),
        epochs,
        copies,
    })
}

/// Erasure: every sealed copy and every custodian copy of a later epoch
/// destroyed (the caller nulls `patients.wrapped_key`, epoch 1).
pub(crate) fn erase(conn: &Connection, patient_id: &str) -> Result<usize> {
    let copies = conn.execute(
        "DELETE FROM wrapped_data_keys WHERE patient_id = ?1",
        [patient_id],
    )?;
    conn.execute(
        "UPDATE data_key_epochs SET wrapped_key = NULL WHERE patient_id = ?1",
        [patient_id],
    )?;
    Ok(copies)
}

/// The vault patient an on-chain patient address is linked to, if any.
pub fn patient_of_address(
    conn: &Connection,
    address: cohort_ledger_bridge::alloy::primitives::Address,
) -> Result<Option<String>> {
    if !crate::storage::store::table_exists(conn, "research_patients")? {
        return Ok(None);
    }
    Ok(conn
        .prepare_cached("SELECT patient_id FROM research_patients WHERE lower(address) = ?1")?
        .query_row([format!("{address:#x}")], |r| r.get(0))
        .optional()?)
}
