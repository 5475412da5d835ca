//! Key recovery, the five steps:
//!
//! 1. **Approval.** The person who lost their key makes a fresh account and
//!    opens a recovery with it (`CohortAccess.openRecovery`); any `m` of the
//!    patient's `n` guardians approve it on chain.
//! 2. **Key material.** When the patient named their guardians, their
//!    account's secret key was split into `n` Shamir shares (`blahaj`, any
//!    `m` rebuild it), each sealed to one guardian's public key (ECIES,
//!    `keys::ecies`), and optionally sealed whole to a backup key they
//!    registered; the chain holds a hash committing to the sealed shares.
//!    A guardian's approval opens their share with their own key and seals
//!    it again to the new key; the backup key's holder can do the same with
//!    the whole secret.
//! 3. **Identity.** Each approving guardian attests (by the hash of their
//!    evidence) that they verified the person, and a credentialed provider
//!    who is neither a guardian nor a party attests it on chain too.
//! 4. **Restoration.** The new key rebuilds the old secret from what was
//!    released to it (checked against the patient's current key), then
//!    completes the recovery on chain: it becomes the patient's controller,
//!    and since grants, delegations, consents and bookings are keyed by the
//!    patient's identity they all follow, while the old key acts for no one.
//!    The vault's link moves to the new account, and fresh shares of the new
//!    key go to the same guardians.
//! 5. **Review.** An auditor reads the recovery's trail (the chain's record
//!    and every audit entry) and records a finding on chain; an unjustified
//!    recovery freezes the patient's control until a new one completes.
//!
//! Evidence texts stay off chain and out of the audit log (only their hashes
//! go anywhere): they may hold identity documents.

use cohort_ledger_bridge::alloy::primitives::{Address, B256, U256, keccak256};
use cohort_ledger_bridge::alloy::sol_types::SolEvent;
use cohort_ledger_bridge::contracts::CohortAccess;
use cohort_ledger_bridge::{Client, Target};
use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;
use zeroize::Zeroizing;

use super::grants::audited;
use super::{Actor, patients};
use crate::keys::data_keys::{self, Holder, Role};
use crate::keys::{accounts, ecies, keystore::KeyStore};
use crate::{Error, Result, audit};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS recovery_shares (
    patient TEXT NOT NULL, round INTEGER NOT NULL, holder TEXT NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('share', 'backup')), sealed BLOB NOT NULL,
    created_at TEXT NOT NULL, PRIMARY KEY (patient, round, holder)
);
CREATE TABLE IF NOT EXISTS recovery_released (
    recovery_id INTEGER NOT NULL, holder TEXT NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('share', 'backup')), sealed BLOB NOT NULL,
    created_at TEXT NOT NULL, PRIMARY KEY (recovery_id, holder)
);
";

/// Creates the recovery tables if missing.
pub fn install(conn: &Connection) -> Result<()> {
    conn.execute_batch(SCHEMA)?;
    Ok(())
}

fn hex(a: Address) -> String {
    format!("{a:#x}")
}

fn target(id: u64) -> String {
    format!("recovery/{id}")
}

/// What a sealed share is bound to: a share copied to another patient,
/// round or guardian does not open.
fn share_context(kind: &str, patient: Address, round: u64, holder: Address) -> Vec<u8> {
    format!("cohort/recovery-{kind}/{patient:#x}/{round}/{holder:#x}").into_bytes()
}

fn release_context(id: u64, holder: Address) -> Vec<u8> {
    format!("cohort/recovery-release/{id}/{holder:#x}").into_bytes()
}

/// A patient's guardians as the chain holds them.
#[derive(Debug, Clone, Serialize)]
pub struct GuardiansInfo {
    /// The patient's identity address.
    pub patient: String,
    /// The guardians' addresses and, when known here, names.
    pub guardians: Vec<Named>,
    /// How many must approve.
    pub threshold: u8,
    /// The round (bumped at every change and completed recovery).
    pub round: u64,
    /// The backup key, if one is registered.
    pub backup: Option<Named>,
    /// Whether this directory holds the sealed shares of this round.
    pub shares_held: bool,
    /// The transaction, when this call changed them.
    pub tx_hash: Option<String>,
}

/// An address with its account name, when this directory has one.
#[derive(Debug, Clone, Serialize)]
pub struct Named {
    /// The address.
    pub address: String,
    /// The account's name.
    pub name: Option<String>,
}

fn named(conn: &Connection, a: Address) -> Result<Named> {
    Ok(Named {
        address: hex(a),
        name: accounts::name_of(conn, a)?,
    })
}

/// One recovery as the chain holds it.
#[derive(Debug, Clone, Serialize)]
pub struct RecoveryInfo {
    /// Its id on chain.
    pub id: u64,
    /// The patient's identity.
    pub patient: Named,
    /// The key taking over.
    pub new_key: Named,
    /// The key it replaced (once completed).
    pub old_key: Option<Named>,
    /// open, completed or cancelled.
    pub state: &'static str,
    /// Guardians who approved so far, and how many must.
    pub approvals: u8,
    /// The threshold of the round it was opened in.
    pub threshold: u8,
    /// The provider who attested the person's identity.
    pub attested_by: Option<Named>,
    /// Shares (or the backup) released to the new key, here.
    pub released: usize,
    /// none, pending, justified or unjustified.
    pub review: &'static str,
    /// When it opened and completed (unix seconds; 0: not yet).
    pub opened_at: u64,
    /// When it completed.
    pub completed_at: u64,
    /// The transaction of this call's step, if it sent one.
    pub tx_hash: Option<String>,
}

fn state_name(s: u8) -> &'static str {
    match s {
        1 => "open",
        2 => "completed",
        3 => "cancelled",
        _ => "none",
    }
}

fn review_name(r: u8) -> &'static str {
    match r {
        1 => "pending",
        2 => "justified",
        3 => "unjustified",
        _ => "none",
    }
}

async fn recovery_of(client: &Client, id: u64) -> Result<CohortAccess::Recovery> {
    Ok(client
        .view(
            Target::Access,
            CohortAccess::recoveryOfCall { id: U256::from(id) },
        )
        .await?)
}

async fn guardians_of(client: &Client, patient: Address) -> Result<CohortAccess::Guardians> {
    Ok(client
        .view(Target::Access, CohortAccess::guardiansOfCall { patient })
        .await?)
}

/// The patient `actor`'s key acts for, on chain, or a refusal.
async fn acting_patient(client: &Client, actor: &Actor) -> Result<Address> {
    let patient = client
        .view(
            Target::Access,
            CohortAccess::patientOfCall {
                key: actor.address(),
            },
        )
        .await?;
    if patient == Address::ZERO {
        return Err(Error::Forbidden(format!(
            "`{}` acts for no patient on chain (a patient's own account, or the key a recovery moved control to, does)",
            actor.name()
        )));
    }
    Ok(patient)
}

/// What a guardian set-up asks for.
#[derive(Debug, Clone)]
pub struct GuardianSetup {
    /// The guardians' account names.
    pub guardians: Vec<String>,
    /// How many of them must approve.
    pub threshold: u8,
    /// An account holding a whole copy of the key, if any.
    pub backup: Option<String>,
}

fn account_of(conn: &Connection, keys: &dyn KeyStore, name: &str) -> Result<(Address, Vec<u8>)> {
    let address: Address = accounts::address_of(conn, name)?
        .ok_or_else(|| Error::NotFound(format!("no account `{name}` to be a guardian or backup")))?
        .parse()
        .map_err(|_| Error::Invalid(format!("account `{name}` has a bad address")))?;
    Ok((address, accounts::public_key_or_load(conn, keys, name)?))
}

/// Step 2's set-up: the patient `actor` names guardians (and a backup key);
/// their key is split into shares sealed to each, committed on chain.
pub async fn set_guardians(
    conn: &Connection,
    client: &Client,
    keys: &dyn KeyStore,
    actor: &Actor,
    setup: &GuardianSetup,
) -> Result<GuardiansInfo> {
    install(conn)?;
    let detail = serde_json::json!({
        "guardians": setup.guardians, "threshold": setup.threshold, "backup": setup.backup,
    });
    let sent = async {
        let n = setup.guardians.len();
        if n == 0 || n > 16 || setup.threshold == 0 || usize::from(setup.threshold) > n {
            return Err(Error::Invalid(format!(
                "{} of {n} guardians: name 1 to 16 guardians and a threshold from 1 to their number",
                setup.threshold
            )));
        }
        // A vault patient's first step on chain registers them (as a first
        // grant does).
        if patients::of_account(conn, actor.name())?.is_some() {
            super::grants::ensure_patient(client, actor).await?;
        }
        let patient = acting_patient(client, actor).await?;
        let mut holders = Vec::with_capacity(n);
        for name in &setup.guardians {
            if name == actor.name() {
                return Err(Error::Invalid(
                    "a patient cannot be their own guardian".into(),
                ));
            }
            holders.push(account_of(conn, keys, name)?);
        }
        let backup = match &setup.backup {
            Some(name) => Some(account_of(conn, keys, name)?),
            None => None,
        };
        let round = guardians_of(client, patient).await?.round + 1;
        let secret = actor.account().secret_bytes();
        let shares: Vec<blahaj::Share> = blahaj::Sharks(setup.threshold)
            .dealer(secret.as_slice())
            .take(n)
            .collect();
        let mut sealed = Vec::with_capacity(n + 1);
        for ((address, public), share) in holders.iter().zip(&shares) {
            let bytes = Zeroizing::new(Vec::<u8>::from(share));
            let context = share_context("share", patient, round, *address);
            sealed.push(("share", *address, ecies::seal_for(public, &context, &bytes)?));
        }
        if let Some((address, public)) = &backup {
            let context = share_context("backup", patient, round, *address);
            sealed.push((
                "backup",
                *address,
                ecies::seal_for(public, &context, secret.as_slice())?,
            ));
        }
        let mut committed = Vec::new();
        for (_, holder, bytes) in &sealed {
            committed.extend_from_slice(holder.as_slice());
            committed.extend_from_slice(keccak256(bytes).as_slice());
        }
        let receipt = client
            .send(
                actor.account(),
                Target::Access,
                CohortAccess::setGuardiansCall {
                    guardians: holders.iter().map(|(a, _)| *a).collect(),
                    threshold: setup.threshold,
                    backupKey: backup.as_ref().map_or(Address::ZERO, |(a, _)| *a),
                    sharesHash: keccak256(&committed),
                },
            )
            .await?;
        let tx = conn.unchecked_transaction()?;
        for (kind, holder, bytes) in &sealed {
            tx.execute(
                "INSERT OR REPLACE INTO recovery_shares (patient, round, holder, kind, sealed, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![hex(patient), round as i64, hex(*holder), kind, bytes, crate::storage::store::now()],
            )?;
        }
        // Shares of earlier rounds rebuild a key that no longer acts for
        // anyone, or one the patient replaced: gone.
        tx.execute(
            "DELETE FROM recovery_shares WHERE patient = ?1 AND round < ?2",
            params![hex(patient), round as i64],
        )?;
        tx.commit()?;
        Ok((patient, format!("{:#x}", receipt.tx_hash)))
    }
    .await;
    let (patient, tx_hash) = audited(
        conn,
        actor,
        "recovery.guardians",
        actor.name(),
        "operations",
        detail,
        sent,
    )?;
    let mut info = guardians(conn, client, patient).await?;
    info.tx_hash = Some(tx_hash);
    Ok(info)
}

/// A patient's guardians and whether this directory holds their shares.
pub async fn guardians(
    conn: &Connection,
    client: &Client,
    patient: Address,
) -> Result<GuardiansInfo> {
    install(conn)?;
    let g = guardians_of(client, patient).await?;
    let shares_held = conn
        .prepare_cached("SELECT 1 FROM recovery_shares WHERE patient = ?1 AND round = ?2")?
        .exists(params![hex(patient), g.round as i64])?;
    Ok(GuardiansInfo {
        patient: hex(patient),
        guardians: g
            .members
            .iter()
            .map(|a| named(conn, *a))
            .collect::<Result<_>>()?,
        threshold: g.threshold,
        round: g.round,
        backup: (g.backupKey != Address::ZERO)
            .then(|| named(conn, g.backupKey))
            .transpose()?,
        shares_held,
        tx_hash: None,
    })
}

/// A patient named by account, vault id or address: their identity.
pub fn patient_address(conn: &Connection, patient: &str) -> Result<Address> {
    if let Ok(a) = patient.parse::<Address>() {
        return Ok(a);
    }
    Ok(patients::find(conn, patient)?.address)
}

/// Recovery `id` as the chain holds it, with what was released here.
pub async fn show(conn: &Connection, client: &Client, id: u64) -> Result<RecoveryInfo> {
    install(conn)?;
    let r = recovery_of(client, id).await?;
    let threshold = guardians_of(client, r.patient).await?.threshold;
    let released: i64 = conn.query_row(
        "SELECT COUNT(*) FROM recovery_released WHERE recovery_id = ?1",
        [id as i64],
        |row| row.get(0),
    )?;
    Ok(RecoveryInfo {
        id,
        patient: named(conn, r.patient)?,
        new_key: named(conn, r.newKey)?,
        old_key: (r.oldKey != Address::ZERO)
            .then(|| named(conn, r.oldKey))
            .transpose()?,
        state: state_name(r.state),
        approvals: r.approvals,
        threshold,
        attested_by: (r.attestedBy != Address::ZERO)
            .then(|| named(conn, r.attestedBy))
            .transpose()?,
        released: released as usize,
        review: review_name(r.review),
        opened_at: r.openedAt,
        completed_at: r.completedAt,
        tx_hash: None,
    })
}

async fn with_tx(conn: &Connection, client: &Client, id: u64, tx: String) -> Result<RecoveryInfo> {
    let mut info = show(conn, client, id).await?;
    info.tx_hash = Some(tx);
    Ok(info)
}

/// Audits step `action` of recovery `id` by `actor`, done (`sent` holds
/// its transaction) or refused, and answers with the recovery as the chain
/// now holds it.
async fn answered(
    conn: &Connection,
    client: &Client,
    actor: &Actor,
    action: &str,
    id: u64,
    detail: serde_json::Value,
    sent: Result<String>,
) -> Result<RecoveryInfo> {
    let tx = audited(conn, actor, action, &target(id), "operations", detail, sent)?;
    with_tx(conn, client, id, tx).await
}

/// An attestation's audit detail: the evidence's hash, never its text.
fn evidence_detail(evidence: &str) -> serde_json::Value {
    serde_json::json!({ "evidence_hash": format!("{:#x}", keccak256(evidence.as_bytes())) })
}

/// Step 1 begins: `new_key` (a fresh account) asks to take over `patient`.
pub async fn open(
    conn: &Connection,
    client: &Client,
    new_key: &Actor,
    patient: &str,
) -> Result<RecoveryInfo> {
    install(conn)?;
    let sent = async {
        let patient = patient_address(conn, patient)?;
        let receipt = client
            .send(
                new_key.account(),
                Target::Access,
                CohortAccess::openRecoveryCall { patient },
            )
            .await?;
        let opened = receipt
            .logs
            .iter()
            .find_map(|l| CohortAccess::RecoveryOpened::decode_log(&l.log).ok())
            .ok_or_else(|| Error::Invalid("openRecovery emitted no RecoveryOpened".into()))?;
        Ok((
            opened.data.id.to::<u64>(),
            format!("{:#x}", receipt.tx_hash),
        ))
    }
    .await;
    let detail = serde_json::json!({ "patient": patient });
    let (id, tx) = audited(
        conn,
        new_key,
        "recovery.open",
        patient,
        "operations",
        detail,
        sent,
    )?;
    audit::append(
        conn,
        &audit::Event {
            actor: new_key.name(),
            action: "recovery.opened",
            target: &target(id),
            purpose: "operations",
            detail: serde_json::json!({ "patient": patient, "new_key": hex(new_key.address()) }),
        },
    )?;
    with_tx(conn, client, id, tx).await
}

/// Steps 1 to 3 for one guardian: approve recovery `id` on chain with the
/// hash of `evidence` (how they verified the person), then release their
/// share to the new key. A non-guardian is refused by the chain before
/// any share is touched.
pub async fn approve(
    conn: &Connection,
    client: &Client,
    keys: &dyn KeyStore,
    guardian: &Actor,
    id: u64,
    evidence: &str,
) -> Result<RecoveryInfo> {
    install(conn)?;
    let sent = async {
        if evidence.trim().is_empty() {
            return Err(Error::Invalid(
                "an approval attests the person's identity: say how you verified it (`--evidence`)"
                    .into(),
            ));
        }
        let r = recovery_of(client, id).await?;
        let receipt = client
            .send(
                guardian.account(),
                Target::Access,
                CohortAccess::approveRecoveryCall {
                    id: U256::from(id),
                    attestationHash: keccak256(evidence.as_bytes()),
                },
            )
            .await?;
        // The approval stands on chain whatever happens here; a share that
        // cannot be released is counted as missing (`released`), not as a
        // refusal.
        let _ = release(conn, keys, guardian, &r, id, "share");
        Ok(format!("{:#x}", receipt.tx_hash))
    }
    .await;
    let detail = evidence_detail(evidence);
    answered(conn, client, guardian, "recovery.approve", id, detail, sent).await
}

/// Step 2 by the backup key: its holder opens the whole key sealed to them
/// and seals it to the new key. The chain decides who the backup key is.
pub async fn release_backup(
    conn: &Connection,
    client: &Client,
    keys: &dyn KeyStore,
    holder: &Actor,
    id: u64,
) -> Result<RecoveryInfo> {
    install(conn)?;
    let sent = async {
        let r = recovery_of(client, id).await?;
        if r.state != 1 {
            return Err(Error::Invalid(format!("recovery {id} is not open")));
        }
        let g = guardians_of(client, r.patient).await?;
        if g.backupKey == Address::ZERO || g.backupKey != holder.address() {
            return Err(Error::Forbidden(format!(
                "`{}` is not the backup key the patient registered",
                holder.name()
            )));
        }
        if !release(conn, keys, holder, &r, id, "backup")? {
            return Err(Error::NotFound(
                "this directory holds no backup copy for that key in the current round".into(),
            ));
        }
        Ok(())
    }
    .await;
    audited(
        conn,
        holder,
        "recovery.backup",
        &target(id),
        "operations",
        serde_json::json!({}),
        sent,
    )?;
    show(conn, client, id).await
}

/// Opens `holder`'s sealed share (or backup) of the recovery's round with
/// their own key and seals it to the new key. `false`: none is held here.
fn release(
    conn: &Connection,
    keys: &dyn KeyStore,
    holder: &Actor,
    r: &CohortAccess::Recovery,
    id: u64,
    kind: &str,
) -> Result<bool> {
    let sealed: Option<Vec<u8>> = conn
        .query_row(
            "SELECT sealed FROM recovery_shares WHERE patient = ?1 AND round = ?2 AND holder = ?3 AND kind = ?4",
            params![hex(r.patient), r.round as i64, hex(holder.address()), kind],
            |row| row.get(0),
        )
        .optional()?;
    let Some(sealed) = sealed else {
        return Ok(false);
    };
    let secret = holder.account().secret_bytes();
    let context = share_context(kind, r.patient, r.round, holder.address());
    let opened = ecies::open_with(&secret, &context, &sealed)?;
    let new_name = accounts::name_of(conn, r.newKey)?.ok_or_else(|| {
        Error::NotFound(format!(
            "the new key {:#x} has no account here to release a share to",
            r.newKey
        ))
    })?;
    let public = accounts::public_key_or_load(conn, keys, &new_name)?;
    let resealed = ecies::seal_for(&public, &release_context(id, holder.address()), &opened)?;
    conn.execute(
        "INSERT OR REPLACE INTO recovery_released (recovery_id, holder, kind, sealed, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5)",
        params![
            id as i64,
            hex(holder.address()),
            kind,
            resealed,
            crate::storage::store::now()
        ],
    )?;
    Ok(true)
}

/// Step 3 by a provider: attest on chain, by the hash of `evidence`, that
/// they verified the person's identity. The chain refuses an account with
/// no credential, a guardian, and a party to the recovery.
pub async fn attest(
    conn: &Connection,
    client: &Client,
    provider: &Actor,
    id: u64,
    evidence: &str,
) -> Result<RecoveryInfo> {
    install(conn)?;
    let sent = async {
        if evidence.trim().is_empty() {
            return Err(Error::Invalid(
                "an attestation needs the evidence checked (`--evidence`)".into(),
            ));
        }
        let receipt = client
            .send(
                provider.account(),
                Target::Access,
                CohortAccess::attestIdentityCall {
                    id: U256::from(id),
                    attestationHash: keccak256(evidence.as_bytes()),
                },
            )
            .await?;
        Ok(format!("{:#x}", receipt.tx_hash))
    }
    .await;
    let detail = evidence_detail(evidence);
    answered(conn, client, provider, "recovery.attest", id, detail, sent).await
}

/// The old key rebuilt from what was released to `new_key` for recovery
/// `id`, checked against the patient's current controller.
fn rebuild_old_key(
    conn: &Connection,
    new_key: &Actor,
    id: u64,
    threshold: u8,
    old_key: Address,
) -> Result<Zeroizing<[u8; 32]>> {
    let rows: Vec<(String, String, Vec<u8>)> = conn
        .prepare("SELECT holder, kind, sealed FROM recovery_released WHERE recovery_id = ?1")?
        .query_map([id as i64], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
        .collect::<rusqlite::Result<_>>()?;
    let secret = new_key.account().secret_bytes();
    let mut shares = Vec::new();
    let mut whole = None;
    for (holder, kind, sealed) in rows {
        let holder: Address = holder
            .parse()
            .map_err(|_| Error::Invalid("recovery_released holds a bad address".into()))?;
        let opened = ecies::open_with(&secret, &release_context(id, holder), &sealed)?;
        if kind == "backup" {
            whole = Some(opened);
        } else {
            shares.push(
                blahaj::Share::try_from(opened.as_slice())
                    .map_err(|e| Error::Invalid(format!("a released share is malformed: {e}")))?,
            );
        }
    }
    let rebuilt = match whole {
        Some(k) => k,
        None if shares.len() < usize::from(threshold) => {
            return Err(Error::Forbidden(format!(
                "{} of the {threshold} shares needed were released to `{}`: more guardians must approve (or the backup key release its copy)",
                shares.len(),
                new_key.name()
            )));
        }
        None => Zeroizing::new(
            blahaj::Sharks(threshold)
                .recover(&shares)
                .map_err(|e| Error::Invalid(format!("the shares do not combine: {e}")))?,
        ),
    };
    let key: [u8; 32] = rebuilt
        .as_slice()
        .try_into()
        .map_err(|_| Error::Invalid("the released material is not a 32-byte key".into()))?;
    let key = Zeroizing::new(key);
    let account = cohort_ledger_bridge::Account::from_secret("recovered", &key)
        .map_err(|e| Error::Invalid(format!("the rebuilt key is not a key: {e}")))?;
    if account.address() != old_key {
        return Err(Error::Forbidden(format!(
            "the released shares rebuild a key for {:#x}, not the patient's key {old_key:#x}: a share is wrong or not from this patient's guardians",
            account.address()
        )));
    }
    Ok(key)
}

/// The key the patient's shares were made from: the controller now, or,
/// while an auditor's finding froze control, the key the disputed recovery
/// moved it to.
async fn last_key(client: &Client, patient: Address) -> Result<Address> {
    let current = client
        .view(Target::Access, CohortAccess::controllerOfCall { patient })
        .await?;
    if current != Address::ZERO {
        return Ok(current);
    }
    let count = client
        .view(Target::Access, CohortAccess::recoveryCountCall {})
        .await?
        .to::<u64>();
    for id in (0..count).rev() {
        let r = recovery_of(client, id).await?;
        if r.patient == patient && r.state == 2 {
            return Ok(r.newKey);
        }
    }
    Ok(patient)
}

/// What completing a recovery did.
#[derive(Debug, Clone, Serialize)]
pub struct Completed {
    /// The recovery, now completed.
    pub recovery: RecoveryInfo,
    /// The vault patient whose link moved, if linked here.
    pub patient_id: Option<String>,
    /// The new round of shares sealed to the same guardians.
    pub guardians_round: u64,
}

/// Step 4: `new_key` rebuilds the old key from the released shares,
/// completes the recovery on chain, and takes the patient's link here;
/// fresh shares of the new key go to the same guardians. Run again after a
/// crash, it finishes what the chain already completed.
pub async fn complete(
    conn: &Connection,
    client: &Client,
    keys: &dyn KeyStore,
    new_key: &Actor,
    id: u64,
) -> Result<Completed> {
    install(conn)?;
    let sent = async {
        let r = recovery_of(client, id).await?;
        if r.newKey != new_key.address() {
            return Err(Error::Forbidden(format!(
                "recovery {id} moves control to {:#x}, not to `{}`",
                r.newKey,
                new_key.name()
            )));
        }
        let g = guardians_of(client, r.patient).await?;
        let tx_hash = match r.state {
            1 => {
                let current = last_key(client, r.patient).await?;
                // The key material first: nothing is sent unless it rebuilds.
                let _old = rebuild_old_key(conn, new_key, id, g.threshold, current)?;
                let receipt = client
                    .send(
                        new_key.account(),
                        Target::Access,
                        CohortAccess::completeRecoveryCall { id: U256::from(id) },
                    )
                    .await?;
                Some(format!("{:#x}", receipt.tx_hash))
            }
            2 => None,
            _ => return Err(Error::Invalid(format!("recovery {id} was cancelled"))),
        };
        let r = recovery_of(client, id).await?;
        // The link moves in the vault; the released shares, now used, go.
        let tx = conn.unchecked_transaction()?;
        let linked = patients::relink(&tx, r.patient, new_key.name())?;
        tx.execute(
            "DELETE FROM recovery_released WHERE recovery_id = ?1",
            [id as i64],
        )?;
        tx.execute(
            "DELETE FROM recovery_shares WHERE patient = ?1",
            [hex(r.patient)],
        )?;
        tx.commit()?;
        // The patient's data key: sealed to the new key; the old key's
        // copies deleted and the key rotated, so what the old (perhaps
        // stolen) key could open stops at the versions before. In the
        // one-machine deployment the custodian's copy reseals.
        if let Some(patient_id) = &linked {
            data_keys::seal_for_holder(
                conn,
                keys,
                new_key.name(),
                patient_id,
                &Holder::of(new_key.account())?,
                Role::Patient,
            )?;
            data_keys::revoke_holder(
                conn,
                keys,
                new_key.name(),
                patient_id,
                &hex(r.oldKey),
                &format!("recovery {id}"),
            )?;
        }
        Ok((tx_hash, linked, g))
    }
    .await;
    let (tx_hash, patient_id, g) = audited(
        conn,
        new_key,
        "recovery.complete",
        &target(id),
        "operations",
        serde_json::json!({}),
        sent,
    )?;
    // Fresh shares of the new key, to the same guardians and backup.
    let mut names = Vec::new();
    for m in &g.members {
        names.push(
            accounts::name_of(conn, *m)?
                .ok_or_else(|| Error::NotFound(format!("guardian {m:#x} has no account here")))?,
        );
    }
    let backup = if g.backupKey == Address::ZERO {
        None
    } else {
        accounts::name_of(conn, g.backupKey)?
    };
    let setup = GuardianSetup {
        guardians: names,
        threshold: g.threshold,
        backup,
    };
    let round = set_guardians(conn, client, keys, new_key, &setup)
        .await?
        .round;
    let mut recovery = show(conn, client, id).await?;
    recovery.tx_hash = tx_hash;
    Ok(Completed {
        recovery,
        patient_id,
        guardians_round: round,
    })
}

/// The new key gives up, or an auditor cancels a false alarm.
pub async fn cancel(
    conn: &Connection,
    client: &Client,
    actor: &Actor,
    id: u64,
) -> Result<RecoveryInfo> {
    install(conn)?;
    let sent = async {
        let receipt = client
            .send(
                actor.account(),
                Target::Access,
                CohortAccess::cancelRecoveryCall { id: U256::from(id) },
            )
            .await?;
        conn.execute(
            "DELETE FROM recovery_released WHERE recovery_id = ?1",
            [id as i64],
        )?;
        Ok(format!("{:#x}", receipt.tx_hash))
    }
    .await;
    let detail = serde_json::json!({});
    answered(conn, client, actor, "recovery.cancel", id, detail, sent).await
}

/// One line of a recovery's trail.
#[derive(Debug, Clone, Serialize)]
pub struct TrailEntry {
    /// `chain` (an event of the contract) or `audit` (this directory's log).
    pub source: &'static str,
    /// When (the block's or the entry's time).
    pub at: String,
    /// What happened.
    pub action: String,
    /// Who did it.
    pub by: String,
    /// The detail (hashes, counts; no evidence text).
    pub detail: serde_json::Value,
}

/// A recovery's trail for its review.
#[derive(Debug, Clone, Serialize)]
pub struct Trail {
    /// The recovery.
    pub recovery: RecoveryInfo,
    /// Its events on chain and its audit entries, in order.
    pub entries: Vec<TrailEntry>,
}

/// Step 5's reading: recovery `id`'s events on chain and every audit entry
/// about it, for an auditor (or admin); the reading itself is audited, and
/// a review needs it first.
pub async fn trail(conn: &Connection, client: &Client, auditor: &Actor, id: u64) -> Result<Trail> {
    install(conn)?;
    let sent = async {
        require_role(
            client,
            auditor,
            &[
                cohort_ledger_bridge::Role::Auditor,
                cohort_ledger_bridge::Role::Admin,
            ],
        )
        .await?;
        let recovery = show(conn, client, id).await?;
        let mut entries = chain_events(client, id).await?;
        let audit_rows: Vec<(String, String, String, String)> = conn
            .prepare("SELECT at, action, actor, detail FROM audit WHERE target = ?1 ORDER BY seq")?
            .query_map([target(id)], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
            })?
            .collect::<rusqlite::Result<_>>()?;
        for (at, action, by, detail) in audit_rows {
            entries.push(TrailEntry {
                source: "audit",
                at,
                action,
                by,
                detail: serde_json::from_str(&detail).unwrap_or(serde_json::Value::Null),
            });
        }
        Ok(Trail { recovery, entries })
    }
    .await;
    audited(
        conn,
        auditor,
        "recovery.trail",
        &target(id),
        "operations",
        serde_json::json!({}),
        sent,
    )
}

async fn require_role(
    client: &Client,
    actor: &Actor,
    roles: &[cohort_ledger_bridge::Role],
) -> Result<()> {
    for role in roles {
        if client.has_role(*role, actor.address()).await? {
            return Ok(());
        }
    }
    Err(Error::Forbidden(format!(
        "`{}` is neither an auditor nor an admin: only they read a recovery's trail",
        actor.name()
    )))
}

/// The contract's events about recovery `id`, in chain order.
async fn chain_events(client: &Client, id: u64) -> Result<Vec<TrailEntry>> {
    use cohort_ledger_bridge::LogQuery;
    let topic = B256::from(U256::from(id));
    let signatures = [
        CohortAccess::RecoveryOpened::SIGNATURE_HASH,
        CohortAccess::RecoveryApproved::SIGNATURE_HASH,
        CohortAccess::IdentityAttested::SIGNATURE_HASH,
        CohortAccess::ControlRecovered::SIGNATURE_HASH,
        CohortAccess::RecoveryCancelled::SIGNATURE_HASH,
        CohortAccess::RecoveryReviewed::SIGNATURE_HASH,
    ];
    let logs = client
        .ledger()
        .logs(&LogQuery {
            from_block: 0,
            to_block: client.ledger().block_number().await?,
            addresses: vec![client.contracts().address(Target::Access)],
        })
        .await?;
    let mut out = Vec::new();
    for l in logs {
        let log = &l.log;
        let topics = log.topics();
        if topics.len() < 2 || !signatures.contains(&topics[0]) || topics[1] != topic {
            continue;
        }
        let (action, by, detail) = if let Ok(e) = CohortAccess::RecoveryOpened::decode_log(log) {
            (
                "opened",
                e.newKey,
                serde_json::json!({ "patient": hex(e.patient), "round": e.round }),
            )
        } else if let Ok(e) = CohortAccess::RecoveryApproved::decode_log(log) {
            (
                "approved by a guardian",
                e.guardian,
                serde_json::json!({ "attestation_hash": format!("{:#x}", e.attestationHash), "approvals": e.approvals }),
            )
        } else if let Ok(e) = CohortAccess::IdentityAttested::decode_log(log) {
            (
                "identity attested by a provider",
                e.provider,
                serde_json::json!({ "attestation_hash": format!("{:#x}", e.attestationHash) }),
            )
        } else if let Ok(e) = CohortAccess::ControlRecovered::decode_log(log) {
            (
                "completed",
                e.newKey,
                serde_json::json!({ "old_key": hex(e.oldKey) }),
            )
        } else if let Ok(e) = CohortAccess::RecoveryCancelled::decode_log(log) {
            ("cancelled", e.by, serde_json::json!({}))
        } else if let Ok(e) = CohortAccess::RecoveryReviewed::decode_log(log) {
            (
                "reviewed",
                e.reviewer,
                serde_json::json!({ "justified": e.justified, "finding_hash": format!("{:#x}", e.findingHash) }),
            )
        } else {
            continue;
        };
        out.push(TrailEntry {
            source: "chain",
            at: format!("block {}", l.block_number),
            action: action.into(),
            by: hex(by),
            detail,
        });
    }
    Ok(out)
}

/// Step 5: an auditor who read the trail records a finding on chain; an
/// unjustified recovery freezes the patient's control.
pub async fn review(
    conn: &Connection,
    client: &Client,
    auditor: &Actor,
    id: u64,
    justified: bool,
    finding: &str,
) -> Result<RecoveryInfo> {
    install(conn)?;
    let sent = async {
        if finding.trim().is_empty() {
            return Err(Error::Invalid("a review needs a finding (`--finding`)".into()));
        }
        let read: bool = conn
            .prepare("SELECT 1 FROM audit WHERE target = ?1 AND action = 'recovery.trail' AND actor = ?2")?
            .exists(params![target(id), auditor.name()])?;
        if !read {
            return Err(Error::Forbidden(format!(
                "read recovery {id}'s trail before reviewing it (`cohort recovery trail {id}`)"
            )));
        }
        let receipt = client
            .send(
                auditor.account(),
                Target::Access,
                CohortAccess::reviewRecoveryCall {
                    id: U256::from(id),
                    justified,
                    findingHash: keccak256(finding.as_bytes()),
                },
            )
            .await?;
        Ok(format!("{:#x}", receipt.tx_hash))
    }
    .await;
    let detail = serde_json::json!({
        "justified": justified, "finding_hash": format!("{:#x}", keccak256(finding.as_bytes())),
    });
    answered(conn, client, auditor, "recovery.review", id, detail, sent).await
}

/// The recoveries of `patient` (newest first), from the chain.
pub async fn list(
    conn: &Connection,
    client: &Client,
    patient: Address,
) -> Result<Vec<RecoveryInfo>> {
    let count = client
        .view(Target::Access, CohortAccess::recoveryCountCall {})
        .await?
        .to::<u64>();
    let mut out = Vec::new();
    for id in (0..count).rev() {
        if recovery_of(client, id).await?.patient == patient {
            out.push(show(conn, client, id).await?);
        }
    }
    Ok(out)
}
