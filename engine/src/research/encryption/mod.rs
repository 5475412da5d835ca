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

mod decrypt;
mod execute;
mod keys;
pub(crate) use keys::{rewrap_custodian, share_context};
mod submissions;

pub use decrypt::LedgerGate;
pub(crate) use decrypt::decrypt_answer;
pub(crate) use execute::Executor;
use execute::NOISE_TAIL;
pub use keys::prepare_tfhe_keys;
pub(crate) use keys::{custodian_key, set_up};
use keys::{shares, tfhe_custodian, tfhe_dir, tfhe_public, tfhe_server_shared};
use submissions::store;
pub(crate) use submissions::{
    accept, cells, column_hash, context, encrypt_field, shared_count, state,
};

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
                // The process's one copy, which the queries use too.
                let server = tfhe_server_shared(root)?;
                patients
                    .par_iter()
                    .map(|(pid, v)| {
                        let ctx = context(&contract, id, &c.column, pid);
                        let submission = predicate::encrypt_proven(&public, *v, bounds, &ctx)?;
                        Ok((
                            pid.clone(),
                            server.verify(&public, &submission, bounds, &ctx)?,
                        ))
                    })
                    .collect::<cohort_fhe::Result<_>>()
                    .map_err(fhe_error)?
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
