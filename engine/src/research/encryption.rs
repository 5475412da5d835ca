//! Patient-encrypted columns of a study: the keys, the submissions, the
//! executor the planner hands encrypted aggregates to, and the gated
//! decryption of an answer after its debit is committed.
//!
//! - **Keys.** When a study that declares an ElGamal column is approved,
//!   the stewards run the distributed key generation of `cohort_fhe`
//!   (t = the approvals a study needs, n = every steward account here);
//!   each steward's share is sealed in the key store under a context naming
//!   the study and the steward. A tfhe column uses the deployment's
//!   custodian key set, generated once: its client key is sealed in the key
//!   store, its server key and public parameters are files under
//!   `research/fhe/`.
//! - **Submissions.** A patient encrypts a value under the study's keys
//!   with a range proof ([`encrypt_field`]); the engine checks the proof
//!   once and stores the validated ciphertext in `research_encrypted`,
//!   beside the patient's records, and the patient declares on chain that
//!   they shared a value of that column, committing to the ciphertext's
//!   hash (`ResearchStudy.shareEncrypted`). That a patient shared a value
//!   is therefore public, like their consent; the value is not. The view
//!   carries a consenting patient's ciphertext (as a Binary column) only if
//!   its hash is the one on chain.
//! - **Work of public size.** Each group's encrypted work is padded to the
//!   consenting patients who shared a value of the column, `max_rows`
//!   records each: the [`Executor`] computes on stand-ins for the rest and
//!   discards their results, so the work, its time, the progress a
//!   researcher sees and `EXPLAIN PRIVACY`'s estimate depend on that public
//!   count only, never on how many records passed a plaintext predicate.
//! - **Decryption.** A committed answer carries sealed results. Each
//!   steward (or, for tfhe, the custodian) first checks the ledger: the
//!   query's debit must be committed and its result hash must be the hash
//!   of the answer that contains the result ([`LedgerGate`]).
//!
//! In one data directory every key sits behind the one key-store
//! passphrase, so the threshold here is the protocol, not yet a separation
//! of people: THREAT_MODEL.md says what a multi-host deployment adds.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;

use cohort_fhe::linear::{self, LinearLayer, Steward};
use cohort_fhe::predicate::{self, PredicateLayer};
use cohort_fhe::range::{Bounds, ProvenCiphertext};
use cohort_fhe::threshold::{self, CustodianKey, KeyShare, Threshold};
use cohort_fhe::{
    CostEstimate, DecryptionGate, EncryptedAggregate, EncryptedOp, FheError, Job, Layer, Padding,
    Sealed,
};
use cohort_ledger_bridge::Target;
use cohort_ledger_bridge::alloy::primitives::{B256, keccak256};
use cohort_ledger_bridge::contracts::ResearchStudy;
use cohort_query_planner::EncryptedExecutor;
use rusqlite::{Connection, OptionalExtension, params};
use serde::{Deserialize, Serialize};

use super::answer::{Answer, commitment};
use super::consenting::Consenting;
use super::study::StudyFile;
use crate::keys::keystore::{self, KeyStore, SecretKey};
use crate::{Error, Result};

pub(crate) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS research_fhe_keys (
    study_id INTEGER PRIMARY KEY,
    custodian BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS research_fhe_shares (
    study_id INTEGER NOT NULL,
    steward TEXT NOT NULL,
    idx INTEGER NOT NULL,
    wrapped BLOB NOT NULL,
    nonce BLOB NOT NULL,
    sealed BLOB NOT NULL,
    PRIMARY KEY (study_id, steward)
);
CREATE TABLE IF NOT EXISTS research_encrypted (
    study_id INTEGER NOT NULL,
    patient_id TEXT NOT NULL,
    column_name TEXT NOT NULL,
    layer TEXT NOT NULL,
    cell BLOB NOT NULL,
    submitted_at TEXT NOT NULL,
    PRIMARY KEY (study_id, patient_id, column_name)
);
";

/// Noise beyond this magnitude is not searched for when decrypting a sum
/// (a discrete Laplace or Gaussian that large has probability far below
/// 2^-100 for any budget a study can declare); the search costs only the
/// square root of its width.
const NOISE_TAIL: i64 = 1 << 30;

/// One encrypted column of a study file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EncryptedColumn {
    /// The study table.
    pub table: String,
    /// The column.
    pub column: String,
    /// Its layer.
    pub layer: Layer,
    /// The plaintext's declared bounds.
    pub lower: i64,
    /// Upper bound.
    pub upper: i64,
}

impl EncryptedColumn {
    fn bounds(&self) -> Result<Bounds> {
        Bounds::new(self.lower, self.upper).map_err(fhe_error)
    }
}

/// The study file's encrypted columns.
pub fn columns(file: &StudyFile) -> Vec<EncryptedColumn> {
    let mut out = Vec::new();
    for (table, t) in &file.scope.tables {
        for (column, c) in &t.columns {
            if let (Some(layer), Some(lower), Some(upper)) = (c.encrypted, c.lower, c.upper) {
                out.push(EncryptedColumn {
                    table: table.clone(),
                    column: column.clone(),
                    layer,
                    lower: lower as i64,
                    upper: upper as i64,
                });
            }
        }
    }
    out
}

fn column<'a>(file: &'a [EncryptedColumn], name: &str) -> Result<&'a EncryptedColumn> {
    file.iter().find(|c| c.column == name).ok_or_else(|| {
        let names: Vec<&str> = file.iter().map(|c| c.column.as_str()).collect();
        Error::Invalid(if names.is_empty() {
            "this study declares no encrypted column".to_string()
        } else {
            format!(
                "`{name}` is not an encrypted column of this study (it declares {})",
                names.join(", ")
            )
        })
    })
}

pub(crate) fn fhe_error(e: FheError) -> Error {
    Error::Invalid(e.to_string())
}

/// Where the deployment's tfhe keys live.
fn tfhe_dir(root: &std::path::Path) -> PathBuf {
    root.join("research").join("fhe").join("tfhe")
}

/// Generates what a just-approved study's encrypted columns need: the
/// ElGamal key shared among `stewards` with threshold `t`, and the
/// deployment's tfhe keys if they do not exist yet. Idempotent.
pub(crate) fn set_up(
    conn: &Connection,
    keys: &dyn KeyStore,
    root: &std::path::Path,
    study: u64,
    file: &StudyFile,
    stewards: &[String],
    t: u32,
) -> Result<()> {
    let cols = columns(file);
    if cols.iter().any(|c| c.layer == Layer::Elgamal) && custodian_key(conn, study)?.is_none() {
        let n = stewards.len() as u32;
        let threshold = Threshold::new(t.min(n).max(1), n).map_err(fhe_error)?;
        let (key, shares) = threshold::generate(threshold).map_err(fhe_error)?;
        let tx = conn.unchecked_transaction()?;
        tx.execute(
            "INSERT INTO research_fhe_keys (study_id, custodian) VALUES (?1, ?2)",
            params![study as i64, key.to_bytes()],
        )?;
        for (steward, share) in stewards.iter().zip(&shares) {
            let data = SecretKey::generate();
            let context = share_context(study, steward);
            let wrapped = keys.wrap(&data, context.as_bytes())?;
            let (nonce, sealed) = keystore::seal(&data, &share.to_bytes(), context.as_bytes());
            tx.execute(
                "INSERT INTO research_fhe_shares (study_id, steward, idx, wrapped, nonce, sealed) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![study as i64, steward, share.index(), wrapped, nonce.to_vec(), sealed],
            )?;
        }
        tx.commit()?;
    }
    if cols.iter().any(|c| c.layer == Layer::Tfhe) {
        ensure_tfhe_keys(keys, root)?;
    }
    Ok(())
}

fn share_context(study: u64, steward: &str) -> String {
    format!("cohort/fhe/study/{study}/share/{steward}")
}

const TFHE_CLIENT_CONTEXT: &str = "cohort/fhe/tfhe/custodian";

fn ensure_tfhe_keys(keys: &dyn KeyStore, root: &std::path::Path) -> Result<()> {
    let dir = tfhe_dir(root);
    if dir.join("client.sealed").exists() {
        return Ok(());
    }
    std::fs::create_dir_all(&dir).map_err(|e| Error::io("creating", &dir, e))?;
    let set = predicate::generate().map_err(fhe_error)?;
    let data = SecretKey::generate();
    let wrapped = keys.wrap(&data, TFHE_CLIENT_CONTEXT.as_bytes())?;
    let (nonce, sealed) = keystore::seal(
        &data,
        &set.client.to_bytes().map_err(fhe_error)?,
        TFHE_CLIENT_CONTEXT.as_bytes(),
    );
    let mut blob = Vec::new();
    blob.extend_from_slice(&(wrapped.len() as u32).to_le_bytes());
    blob.extend_from_slice(&wrapped);
    blob.extend_from_slice(&nonce);
    blob.extend_from_slice(&sealed);
    // Public and server keys first; the client key last marks the set complete.
    write_atomic(
        &dir.join("public.bin"),
        &set.public.to_bytes().map_err(fhe_error)?,
    )?;
    write_atomic(
        &dir.join("server.bin"),
        &predicate::server_key_to_bytes(&set.server).map_err(fhe_error)?,
    )?;
    write_atomic(&dir.join("client.sealed"), &blob)?;
    Ok(())
}

fn write_atomic(path: &std::path::Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).map_err(|e| Error::io("writing", &tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io("renaming", &tmp, e))?;
    Ok(())
}

fn tfhe_public(root: &std::path::Path) -> Result<predicate::PublicParams> {
    let bytes = std::fs::read(tfhe_dir(root).join("public.bin")).map_err(|_| Error::Invalid("this deployment has no tfhe keys yet: they are made when a study with a tfhe column is approved".into()))?;
    predicate::PublicParams::from_bytes(&bytes).map_err(fhe_error)
}

fn tfhe_server(root: &std::path::Path) -> Result<PredicateLayer> {
    let path = tfhe_dir(root).join("server.bin");
    let bytes = std::fs::read(&path).map_err(|e| Error::io("reading", &path, e))?;
    PredicateLayer::from_bytes(&bytes).map_err(fhe_error)
}

/// The deployment's tfhe server key, read once per process (and again
/// only if its file changes): it takes most of a second to load, and a
/// server answers many queries.
fn tfhe_server_shared(root: &std::path::Path) -> Result<Arc<PredicateLayer>> {
    type Loaded = HashMap<PathBuf, (std::time::SystemTime, Arc<PredicateLayer>)>;
    static LOADED: std::sync::OnceLock<std::sync::Mutex<Loaded>> = std::sync::OnceLock::new();
    let path = tfhe_dir(root).join("server.bin");
    let modified = std::fs::metadata(&path)
        .and_then(|m| m.modified())
        .map_err(|e| Error::io("reading", &path, e))?;
    let loaded = LOADED.get_or_init(Default::default);
    if let Some((at, layer)) = loaded.lock().expect("tfhe keys lock").get(&path)
        && *at == modified
    {
        return Ok(Arc::clone(layer));
    }
    let layer = Arc::new(tfhe_server(root)?);
    loaded
        .lock()
        .expect("tfhe keys lock")
        .insert(path, (modified, Arc::clone(&layer)));
    Ok(layer)
}

fn tfhe_custodian(keys: &dyn KeyStore, root: &std::path::Path) -> Result<predicate::CustodianKey> {
    let path = tfhe_dir(root).join("client.sealed");
    let blob = std::fs::read(&path).map_err(|e| Error::io("reading", &path, e))?;
    let bad = || Error::Invalid("the tfhe custodian key file is damaged".into());
    let len =
        u32::from_le_bytes(blob.get(..4).ok_or_else(bad)?.try_into().expect("4 bytes")) as usize;
    let wrapped = blob.get(4..4 + len).ok_or_else(bad)?;
    let nonce = blob.get(4 + len..28 + len).ok_or_else(bad)?;
    let sealed = blob.get(28 + len..).ok_or_else(bad)?;
    let data = keys.unwrap(wrapped, TFHE_CLIENT_CONTEXT.as_bytes())?;
    let plain = zeroize::Zeroizing::new(
        keystore::open(&data, nonce, sealed, TFHE_CLIENT_CONTEXT.as_bytes()).ok_or_else(bad)?,
    );
    predicate::CustodianKey::from_bytes(&plain).map_err(fhe_error)
}

/// The study's ElGamal custodian key, once generated.
pub(crate) fn custodian_key(conn: &Connection, study: u64) -> Result<Option<CustodianKey>> {
    let bytes: Option<Vec<u8>> = conn
        .query_row(
            "SELECT custodian FROM research_fhe_keys WHERE study_id = ?1",
            [study as i64],
            |r| r.get(0),
        )
        .optional()?;
    bytes
        .map(|b| CustodianKey::from_bytes(&b).map_err(fhe_error))
        .transpose()
}

fn shares(
    conn: &Connection,
    keys: &dyn KeyStore,
    study: u64,
    want: usize,
) -> Result<Vec<KeyShare>> {
    let mut stmt = conn.prepare("SELECT steward, wrapped, nonce, sealed FROM research_fhe_shares WHERE study_id = ?1 ORDER BY idx LIMIT ?2")?;
    let rows = stmt.query_map(params![study as i64, want as i64], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, Vec<u8>>(1)?,
            r.get::<_, Vec<u8>>(2)?,
            r.get::<_, Vec<u8>>(3)?,
        ))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (steward, wrapped, nonce, sealed) = row?;
        let context = share_context(study, &steward);
        let data = keys.unwrap(&wrapped, context.as_bytes())?;
        let plain = zeroize::Zeroizing::new(
            keystore::open(&data, &nonce, &sealed, context.as_bytes()).ok_or_else(|| {
                Error::Invalid(format!(
                    "steward {steward}'s key share for study {study} does not open"
                ))
            })?,
        );
        out.push(KeyShare::from_bytes(&plain).map_err(fhe_error)?);
    }
    Ok(out)
}

/// The context a submission's proof is bound to: the study's contract,
/// the study, the column and the patient, so that a ciphertext cannot be
/// replayed for another patient, column or study.
pub(crate) fn context(contract: &str, study: u64, column: &str, patient_id: &str) -> Vec<u8> {
    format!("cohort/fhe/v1/{contract}/{study}/{column}/{patient_id}").into_bytes()
}

/// What a patient's device does: encrypts `value` for `column` under the
/// study's public keys, with the layer's range proof.
pub(crate) fn encrypt_field(
    conn: &Connection,
    root: &std::path::Path,
    column: &EncryptedColumn,
    study: u64,
    value: i64,
    context: &[u8],
) -> Result<Vec<u8>> {
    let bounds = column.bounds()?;
    match column.layer {
        Layer::Elgamal => {
            let key = custodian_key(conn, study)?.ok_or_else(|| {
                Error::Invalid(format!(
                    "study {study} has no encryption key yet: it is made when the study is approved"
                ))
            })?;
            Ok(
                cohort_fhe::range::encrypt_proven(&key.public, value, bounds, context)
                    .map_err(fhe_error)?
                    .to_bytes(),
            )
        }
        Layer::Tfhe => predicate::encrypt_proven(&tfhe_public(root)?, value, bounds, context)
            .map_err(fhe_error),
    }
}

/// What the engine does with a submission: checks its proof once and
/// stores the validated ciphertext (replacing an earlier one), which it
/// returns.
pub(crate) fn accept(
    conn: &Connection,
    root: &std::path::Path,
    column: &EncryptedColumn,
    study: u64,
    patient_id: &str,
    submission: &[u8],
    context: &[u8],
) -> Result<Vec<u8>> {
    let bounds = column.bounds()?;
    let cell = match column.layer {
        Layer::Elgamal => {
            let key = custodian_key(conn, study)?.ok_or_else(|| {
                Error::Invalid(format!("study {study} has no encryption key yet"))
            })?;
            let proven = ProvenCiphertext::from_bytes(submission).map_err(fhe_error)?;
            proven
                .verify(&key.public, bounds, context)
                .map_err(fhe_error)?
                .to_stored()
        }
        Layer::Tfhe => tfhe_server(root)?
            .verify(&tfhe_public(root)?, submission, bounds, context)
            .map_err(fhe_error)?,
    };
    store(
        conn,
        study,
        patient_id,
        column,
        &cell,
        &chrono::Utc::now().to_rfc3339(),
    )?;
    Ok(cell)
}

/// Keeps a validated ciphertext, replacing the patient's earlier one.
fn store(
    conn: &Connection,
    study: u64,
    patient_id: &str,
    column: &EncryptedColumn,
    cell: &[u8],
    at: &str,
) -> Result<()> {
    conn.execute(
        "INSERT INTO research_encrypted (study_id, patient_id, column_name, layer, cell, submitted_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)
         ON CONFLICT (study_id, patient_id, column_name) DO UPDATE SET cell = excluded.cell, submitted_at = excluded.submitted_at",
        params![study as i64, patient_id, column.column, column.layer.to_string(), cell, at],
    )?;
    Ok(())
}

/// The on-chain name of an encrypted column.
pub(crate) fn column_hash(column: &str) -> B256 {
    keccak256(column.as_bytes())
}

/// The consenting patients' stored ciphertexts of one column, by patient
/// id: only those whose hash is the one the patient shared on chain.
pub(crate) fn cells(
    conn: &Connection,
    study: u64,
    column: &str,
    consenting: &[Consenting],
) -> Result<HashMap<String, Vec<u8>>> {
    let mut stmt = conn.prepare(
        "SELECT e.patient_id, e.cell, s.value_hash FROM research_encrypted e
         JOIN research_patients p ON p.patient_id = e.patient_id
         JOIN ledger_shared_values s ON s.study_id = e.study_id AND s.patient = p.address
              AND s.column_hash = ?3
         WHERE e.study_id = ?1 AND e.column_name = ?2",
    )?;
    let rows = stmt.query_map(
        params![study as i64, column, format!("{:#x}", column_hash(column))],
        |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, Vec<u8>>(1)?,
                r.get::<_, String>(2)?,
            ))
        },
    )?;
    let consenting: HashSet<&str> = consenting.iter().map(|c| c.patient_id.as_str()).collect();
    let mut out = HashMap::new();
    for row in rows {
        let (patient, cell, shared) = row?;
        if consenting.contains(patient.as_str()) && format!("{:#x}", keccak256(&cell)) == shared {
            out.insert(patient, cell);
        }
    }
    Ok(out)
}

/// How many consenting patients shared a value of `column` on chain: the
/// public size the column's encrypted work is padded to.
pub(crate) fn shared_count(
    conn: &Connection,
    study: u64,
    column: &str,
    consenting: &[Consenting],
) -> Result<u64> {
    let mut stmt = conn.prepare(
        "SELECT patient FROM ledger_shared_values WHERE study_id = ?1 AND column_hash = ?2",
    )?;
    let patients = stmt.query_map(
        params![study as i64, format!("{:#x}", column_hash(column))],
        |r| r.get::<_, String>(0),
    )?;
    let consenting: HashSet<String> = consenting
        .iter()
        .map(|c| format!("{:#x}", c.address))
        .collect();
    let mut n = 0;
    for p in patients {
        if consenting.contains(&p?) {
            n += 1;
        }
    }
    Ok(n)
}

/// The state of a study's submissions (stored and shared on chain), part
/// of its view's digest.
pub(crate) fn state(conn: &Connection, study: u64) -> Result<String> {
    let (n, last): (i64, Option<String>) = conn.query_row(
        "SELECT COUNT(*), MAX(submitted_at) FROM research_encrypted WHERE study_id = ?1",
        [study as i64],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    let (shared, block): (i64, Option<i64>) = conn.query_row(
        "SELECT COUNT(*), MAX(block) FROM ledger_shared_values WHERE study_id = ?1",
        [study as i64],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    Ok(if n == 0 && shared == 0 {
        String::new()
    } else {
        format!(
            "encrypted:{n}:{}:shared:{shared}:{}",
            last.unwrap_or_default(),
            block.unwrap_or_default()
        )
    })
}

/// The planner's executor for one study: the study's ElGamal key and, if
/// it has a tfhe column, the deployment's server key.
pub(crate) struct Executor {
    linear: Option<LinearLayer>,
    predicate: Option<Arc<PredicateLayer>>,
    /// Per column: the public count of consenting patients who shared a
    /// value, and a stored ciphertext the padding computes on.
    public: BTreeMap<String, (u64, Option<Vec<u8>>)>,
    job: Arc<Job>,
}

impl Executor {
    pub(crate) fn load(
        conn: &Connection,
        root: &std::path::Path,
        study: u64,
        file: &StudyFile,
        consenting: &[Consenting],
        job: Arc<Job>,
    ) -> Result<Option<Executor>> {
        let cols = columns(file);
        if cols.is_empty() {
            return Ok(None);
        }
        let linear = custodian_key(conn, study)?.map(LinearLayer::new);
        let predicate = if cols.iter().any(|c| c.layer == Layer::Tfhe)
            && tfhe_dir(root).join("server.bin").exists()
        {
            Some(tfhe_server_shared(root)?)
        } else {
            None
        };
        let mut public = BTreeMap::new();
        for c in &cols {
            let count = shared_count(conn, study, &c.column, consenting)?;
            let stand_in = cells(conn, study, &c.column, consenting)?
                .into_values()
                .min();
            public.insert(c.column.clone(), (count, stand_in));
        }
        Ok(Some(Executor {
            linear,
            predicate,
            public,
            job,
        }))
    }

    /// The padded size of one group's work: every consenting patient who
    /// shared a value, `max_rows` records each.
    fn padded(&self, column: &str, max_rows: u32) -> u64 {
        self.public
            .get(column)
            .map_or(0, |(count, _)| count.saturating_mul(u64::from(max_rows)))
    }
}

impl EncryptedExecutor for Executor {
    fn estimate(
        &self,
        _table: &str,
        column: &str,
        op: &EncryptedOp,
        max_rows: u32,
    ) -> CostEstimate {
        cohort_fhe::estimate(op, self.padded(column, max_rows))
    }

    fn aggregate(
        &self,
        _table: &str,
        column: &str,
        op: &EncryptedOp,
        cells: &[&[u8]],
        noise: i64,
        max_rows: u32,
    ) -> std::result::Result<Sealed, FheError> {
        let missing = |layer: &str| FheError::NotAuthorized {
            query_id: String::new(),
            why: format!("no {layer} key for `{column}` in this deployment"),
        };
        let padding = Padding {
            to: usize::try_from(self.padded(column, max_rows)).unwrap_or(usize::MAX),
            stand_in: self.public.get(column).and_then(|(_, s)| s.as_deref()),
        };
        match cohort_fhe::route(op) {
            Layer::Elgamal => self
                .linear
                .as_ref()
                .ok_or_else(|| missing("ElGamal"))?
                .aggregate(op, cells, noise, &self.job, padding),
            Layer::Tfhe => self
                .predicate
                .as_ref()
                .ok_or_else(|| missing("tfhe"))?
                .aggregate(op, cells, noise, &self.job, padding),
        }
    }
}

/// The decryptors' check of the ledger: the query's debit is committed,
/// and its result hash is the hash of the answer these results belong to.
#[derive(Debug)]
pub struct LedgerGate {
    ledger_id: String,
    digests: HashSet<[u8; 32]>,
}

impl LedgerGate {
    /// Asks the ledger about `ledger_id` and admits the sealed results of
    /// `answer_text` only if the chain holds a committed debit whose result
    /// hash is the salted commitment to it (`salt` in hex).
    pub async fn check(
        client: &cohort_ledger_bridge::Client,
        ledger_id: B256,
        salt: &str,
        answer_text: &str,
        sealed: &[Sealed],
    ) -> Result<LedgerGate> {
        let q = client
            .view(
                Target::Study,
                ResearchStudy::queryOfCall { queryId: ledger_id },
            )
            .await?;
        let hex = format!("{ledger_id:#x}");
        let refuse = |why: String| {
            Error::Invalid(
                FheError::NotAuthorized {
                    query_id: hex.clone(),
                    why,
                }
                .to_string(),
            )
        };
        if q.state != 2 {
            let state = match q.state {
                0 => "unknown to the ledger",
                1 => "reserved but not committed",
                3 => "released without a debit",
                _ => "in an unknown state",
            };
            return Err(refuse(format!("the query is {state}")));
        }
        let salt = data_encoding::HEXLOWER_PERMISSIVE
            .decode(salt.as_bytes())
            .map_err(|e| Error::Invalid(format!("a commitment's salt is not hex: {e}")))?;
        if q.resultHash != commitment(&salt, answer_text) {
            return Err(refuse(
                "the committed result hash is not the hash of this answer".into(),
            ));
        }
        Ok(LedgerGate {
            ledger_id: hex,
            digests: sealed.iter().map(|s| s.digest).collect(),
        })
    }
}

impl DecryptionGate for LedgerGate {
    fn authorize(&self, query_id: &str, digest: &[u8; 32]) -> cohort_fhe::Result<()> {
        if query_id != self.ledger_id {
            return Err(FheError::NotAuthorized {
                query_id: query_id.into(),
                why: "the committed debit is for another query".into(),
            });
        }
        if !self.digests.contains(digest) {
            return Err(FheError::NotAuthorized {
                query_id: query_id.into(),
                why: "this result is not part of the committed answer".into(),
            });
        }
        Ok(())
    }
}

/// Decrypts the sealed cells of a committed answer in place: ElGamal
/// results by t stewards (each gated, each proof checked), tfhe results by
/// the custodian (gated).
#[allow(clippy::too_many_arguments)]
pub(crate) async fn decrypt_answer(
    conn: &Connection,
    keys: &dyn KeyStore,
    root: &std::path::Path,
    client: &cohort_ledger_bridge::Client,
    file: &StudyFile,
    answer: &mut Answer,
    salt: &str,
    answer_text: &str,
) -> Result<()> {
    if answer.encrypted.is_empty() {
        return Ok(());
    }
    let cols = columns(file);
    let mut targets = Vec::new();
    for out in &answer.encrypted {
        let index = answer
            .columns
            .iter()
            .position(|c| *c == out.output)
            .ok_or_else(|| Error::Invalid(format!("answer column `{}` is missing", out.output)))?;
        targets.push((index, out.clone()));
    }
    let mut sealed_cells = Vec::new();
    for row in &answer.rows {
        for (index, _) in &targets {
            let text = row[*index]
                .as_str()
                .ok_or_else(|| Error::Invalid("a sealed result is not text".into()))?;
            let bytes = data_encoding::HEXLOWER_PERMISSIVE
                .decode(text.as_bytes())
                .map_err(|e| Error::Invalid(format!("a sealed result is not hex: {e}")))?;
            sealed_cells.push(Sealed::from_bytes(&bytes).map_err(fhe_error)?);
        }
    }
    let ledger_id: B256 = answer
        .ledger_id
        .parse()
        .map_err(|e| Error::Invalid(format!("ledger id: {e}")))?;
    let gate = LedgerGate::check(client, ledger_id, salt, answer_text, &sealed_cells).await?;
    let study = answer.study_id;
    let key = custodian_key(conn, study)?;
    let stewards: Vec<Steward> = match &key {
        Some(k) => shares(conn, keys, study, k.threshold.t as usize)?
            .into_iter()
            .map(Steward::new)
            .collect(),
        None => vec![],
    };
    let custodian = if targets.iter().any(|(_, o)| o.layer == Layer::Tfhe) {
        Some(tfhe_custodian(keys, root)?)
    } else {
        None
    };
    let mut sealed = sealed_cells.into_iter();
    for row in answer.rows.iter_mut() {
        for (index, out) in &targets {
            let s = sealed.next().expect("one sealed result per cell");
            let value = match s.layer {
                Layer::Elgamal => {
                    let key = key.as_ref().ok_or_else(|| {
                        Error::Invalid(format!("study {study} has no ElGamal key"))
                    })?;
                    let partials = stewards
                        .iter()
                        .map(|st| st.decrypt(&gate, &answer.ledger_id, &s))
                        .collect::<cohort_fhe::Result<Vec<_>>>()
                        .map_err(fhe_error)?;
                    let c = column(&cols, &out.column)?;
                    // Searched over what the consenting set could sum to
                    // (a public size), not over what was stored.
                    let (lo, hi) =
                        linear::search_range(answer.members as u64, c.bounds()?, NOISE_TAIL);
                    linear::open(key, &answer.ledger_id, &s, &partials, lo, hi)
                        .map_err(fhe_error)?
                }
                Layer::Tfhe => {
                    let custodian = custodian.as_ref().expect("loaded above");
                    custodian
                        .decrypt(&gate, &answer.ledger_id, &s)
                        .map_err(fhe_error)?
                        .max(0)
                }
            };
            row[*index] = value.into();
        }
    }
    Ok(())
}

/// What `cohort encrypt-field` reports (never the value).
#[derive(Debug, Clone, Serialize)]
pub struct Submitted {
    /// The study.
    pub study_id: u64,
    /// The encrypted column.
    pub column: String,
    /// The layer that will aggregate it.
    pub layer: Layer,
    /// Bytes the patient's device sent (ciphertext and proof).
    pub submitted_bytes: usize,
    /// Bytes kept after the proof was checked.
    pub stored_bytes: usize,
    /// Seconds to encrypt and prove (the patient's side).
    pub encrypt_seconds: f64,
    /// Seconds to check and store (the engine's side).
    pub verify_seconds: f64,
}

impl super::Session {
    /// `patient` encrypts `value` for `column` of study `id` under the
    /// study's keys with a range proof; the engine checks the proof once and
    /// keeps the validated ciphertext beside the patient's records. Neither
    /// the value nor the ciphertext is logged.
    pub async fn encrypt_field(
        &self,
        conn: &Connection,
        patient: &cohort_ledger_bridge::Account,
        id: u64,
        name: &str,
        value: i64,
    ) -> Result<Submitted> {
        let (file, s) = self.study(conn, id).await?;
        if s.status != 2 {
            return Err(Error::Invalid(format!(
                "study {id} is not approved: its encryption keys are made when it is"
            )));
        }
        let patient_id = self.patient_of(conn, patient)?;
        let cols = columns(&file);
        let c = column(&cols, name)?;
        let ctx = context(
            &format!("{:#x}", self.contract()),
            id,
            &c.column,
            &patient_id,
        );
        let root = self.dir.root();
        let t = std::time::Instant::now();
        let submission = encrypt_field(conn, root, c, id, value, &ctx)?;
        let encrypt_seconds = t.elapsed().as_secs_f64();
        let t = std::time::Instant::now();
        let cell = accept(conn, root, c, id, &patient_id, &submission, &ctx)?;
        let verify_seconds = t.elapsed().as_secs_f64();
        // The patient declares the share on chain (public, like a consent).
        self.client
            .share_encrypted(patient, id, column_hash(&c.column), keccak256(&cell))
            .await?;
        let stored_bytes = cell.len();
        crate::audit::append(
            conn,
            &crate::audit::Event {
                actor: patient.name(),
                action: "research.encrypt-field",
                target: &format!("study/{id}/{}", c.column),
                purpose: "research",
                detail: serde_json::json!({ "layer": c.layer, "submitted_bytes": submission.len() }),
            },
        )?;
        Ok(Submitted {
            study_id: id,
            column: c.column.clone(),
            layer: c.layer,
            submitted_bytes: submission.len(),
            stored_bytes,
            encrypt_seconds,
            verify_seconds,
        })
    }
}

/// What a batch of submissions cost (the demo's patients, all at once).
#[derive(Debug, Clone, Serialize)]
pub struct BatchSubmitted {
    /// The encrypted column.
    pub column: String,
    /// The layer.
    pub layer: Layer,
    /// Values submitted.
    pub values: usize,
    /// Seconds to encrypt, prove, check and store them all.
    pub seconds: f64,
}

impl super::Session {
    /// Many patients' [`super::Session::encrypt_field`] at once: encrypted
    /// and checked in parallel, stored in one transaction, one audit event.
    pub async fn encrypt_fields(
        &self,
        conn: &Connection,
        id: u64,
        name: &str,
        values: &[(cohort_ledger_bridge::Account, i64)],
    ) -> Result<BatchSubmitted> {
        use rayon::prelude::*;
        let (file, s) = self.study(conn, id).await?;
        if s.status != 2 {
            return Err(Error::Invalid(format!(
                "study {id} is not approved: its encryption keys are made when it is"
            )));
        }
        let cols = columns(&file);
        let c = column(&cols, name)?;
        let bounds = c.bounds()?;
        let contract = format!("{:#x}", self.contract());
        let t = std::time::Instant::now();
        let mut patients = Vec::with_capacity(values.len());
        for (account, value) in values {
            patients.push((self.patient_of(conn, account)?, *value));
        }
        let root = self.dir.root();
        let cells: Vec<(String, Vec<u8>)> = match c.layer {
            Layer::Elgamal => {
                let key = custodian_key(conn, id)?.ok_or_else(|| {
                    Error::Invalid(format!("study {id} has no encryption key yet"))
                })?;
                patients
                    .par_iter()
                    .map(|(pid, v)| {
                        let ctx = context(&contract, id, &c.column, pid);
                        let submission =
                            cohort_fhe::range::encrypt_proven(&key.public, *v, bounds, &ctx)?
                                .to_bytes();
                        let cell = ProvenCiphertext::from_bytes(&submission)?
                            .verify(&key.public, bounds, &ctx)?
                            .to_stored();
                        Ok((pid.clone(), cell))
                    })
                    .collect::<cohort_fhe::Result<_>>()
                    .map_err(fhe_error)?
            }
            Layer::Tfhe => {
                let public = tfhe_public(root)?;
                let server = tfhe_server(root)?;
                let mut out = Vec::with_capacity(patients.len());
                for (pid, v) in &patients {
                    let ctx = context(&contract, id, &c.column, pid);
                    let submission =
                        predicate::encrypt_proven(&public, *v, bounds, &ctx).map_err(fhe_error)?;
                    out.push((
                        pid.clone(),
                        server
                            .verify(&public, &submission, bounds, &ctx)
                            .map_err(fhe_error)?,
                    ));
                }
                out
            }
        };
        let tx = conn.unchecked_transaction()?;
        let now = chrono::Utc::now().to_rfc3339();
        for (pid, cell) in &cells {
            store(&tx, id, pid, c, cell, &now)?;
        }
        crate::audit::append(
            &tx,
            &crate::audit::Event {
                actor: "patients",
                action: "research.encrypt-field",
                target: &format!("study/{id}/{}", c.column),
                purpose: "research",
                detail: serde_json::json!({ "layer": c.layer, "values": cells.len() }),
            },
        )?;
        tx.commit()?;
        // Every patient declares their share on chain, in shared blocks.
        let shares: Vec<_> = values
            .iter()
            .zip(&cells)
            .map(|((account, _), (_, cell))| {
                (
                    account.clone(),
                    self.client.tx(
                        cohort_ledger_bridge::Target::Study,
                        ResearchStudy::shareEncryptedCall {
                            studyId: cohort_ledger_bridge::alloy::primitives::U256::from(id),
                            column: column_hash(&c.column),
                            valueHash: keccak256(cell),
                        },
                    ),
                )
            })
            .collect();
        for sent in self.client.ledger().send_all(shares).await {
            sent?;
        }
        Ok(BatchSubmitted {
            column: c.column.clone(),
            layer: c.layer,
            values: cells.len(),
            seconds: t.elapsed().as_secs_f64(),
        })
    }
}
