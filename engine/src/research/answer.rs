//! The answer as stored, committed to on chain and delivered: the leaf
//! type the query path writes and the decryption path reads, so that
//! neither depends on the other for it.

use cohort_fhe::Layer;
use cohort_ledger_bridge::alloy::primitives::{B256, keccak256};
use serde::{Deserialize, Serialize};

/// The answer as stored and committed to: exactly what the researcher
/// receives (encrypted cells sealed; they are decrypted after the commit).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Answer {
    /// The study.
    pub study_id: u64,
    /// The query's id.
    pub query_id: String,
    /// Its id on the ledger.
    pub ledger_id: String,
    /// The SQL.
    pub sql: String,
    /// The answer's columns.
    pub columns: Vec<String>,
    /// The answer's rows.
    pub rows: Vec<Vec<serde_json::Value>>,
    /// Every noisy release with its 95% error.
    pub releases: serde_json::Value,
    /// What it cost.
    pub cost: String,
    /// The fee its privacy cost paid (wei): the study's price per ε times
    /// the ε (or ρ) it charged, whatever the data.
    pub fee: String,
    /// What each member of the consenting set is paid of it (wei); the
    /// remainder of the division goes back to the escrow.
    #[serde(default)]
    pub share: String,
    /// The consenting set at the time of the query (public: consents are
    /// on chain); every member bears the query's privacy loss and is paid.
    pub members: usize,
    /// The columns computed under encryption. In the stored (committed)
    /// answer their cells are sealed results; they are decrypted after the
    /// debit is committed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub encrypted: Vec<EncryptedOutput>,
}

/// An answer column computed under encryption.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EncryptedOutput {
    /// The answer's column.
    pub output: String,
    /// The encrypted column it aggregates.
    pub column: String,
    /// The layer.
    pub layer: Layer,
}

/// `keccak256(salt ‖ text)`: the commitment to an outcome.
pub(crate) fn commitment(salt: &[u8], text: &str) -> B256 {
    let mut bytes = Vec::with_capacity(salt.len() + text.len());
    bytes.extend_from_slice(salt);
    bytes.extend_from_slice(text.as_bytes());
    keccak256(bytes)
}
