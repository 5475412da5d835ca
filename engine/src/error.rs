//! The engine's one error type.

use std::path::PathBuf;

/// Everything that can go wrong in the engine. Messages say what was wrong and,
/// where there is one, what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file or directory could not be read or written.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was being done ("reading", "creating", ...).
        action: &'static str,
        /// The path involved.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },

    /// The metadata database failed.
    #[error("metadata database: {0}")]
    Db(#[from] rusqlite::Error),

    /// A block's bytes no longer hash to the CID it is stored under.
    #[error(
        "block {cid} is corrupted: its bytes hash to {actual}; the vault refuses to return it (restore the block from a replica or backup)"
    )]
    CorruptBlock {
        /// The CID the block is stored under.
        cid: String,
        /// The CID its bytes actually have.
        actual: String,
    },

    /// A block that the metadata names is not in the block store.
    #[error("block {cid} is missing from the block store")]
    MissingBlock {
        /// The CID that was looked up.
        cid: String,
    },

    /// Authenticated decryption failed: wrong key, or ciphertext or its
    /// binding (patient, record, version) altered.
    #[error("cannot decrypt {what}: the key is wrong or the ciphertext was altered")]
    Decrypt {
        /// What was being decrypted.
        what: String,
    },

    /// The patient's data key was destroyed (GDPR erasure by crypto-shredding).
    #[error(
        "patient {patient} was erased on {erased_at}: the data key is destroyed and the records can no longer be read"
    )]
    Shredded {
        /// The patient id.
        patient: String,
        /// When the key was destroyed.
        erased_at: String,
    },

    /// The keystore could not be opened or used.
    #[error("keystore {path}: {reason}")]
    Keystore {
        /// The keystore file.
        path: PathBuf,
        /// What went wrong and what to do.
        reason: String,
    },

    /// The HSM (a PKCS#11 module and its token) could not be used. The
    /// reason names what is wrong (the module, the token label, the PIN)
    /// and never holds the PIN.
    #[error("HSM (PKCS#11 module {module}): {reason}")]
    Hsm {
        /// The PKCS#11 module.
        module: PathBuf,
        /// What went wrong and what to do.
        reason: String,
    },

    /// A FHIR bundle or resource is malformed.
    #[error("{source_name}: {message}")]
    Fhir {
        /// The bundle file (or "<input>").
        source_name: String,
        /// What is wrong, naming the entry index, resource and field.
        message: String,
    },

    /// Something asked for does not exist.
    #[error("{0}")]
    NotFound(String),

    /// The caller passed an argument that cannot be used.
    #[error("{0}")]
    Invalid(String),

    /// The caller's roles (read on chain) do not allow this.
    #[error("{0}")]
    Forbidden(String),

    /// A query ended without an answer after its cost was reserved. It was
    /// charged, and nothing else is said: why it ended could depend on the
    /// data (an error over one patient's row, a resource limit, a deadline).
    #[error(
        "query `{query_id}` ended without an answer and was charged {cost}: once a query's cost \
         is reserved every outcome is charged, and why it ended is not disclosed"
    )]
    Charged {
        /// The query's id.
        query_id: String,
        /// What it was charged.
        cost: String,
    },

    /// A query ran and its outcome is stored, but its debit could not be
    /// committed yet (the ledger or the disk refused); asking again with
    /// the same id commits and delivers it. The cause is kept as the source,
    /// so a full disk is named as such.
    #[error(
        "query `{query_id}` ran and its outcome is kept, but the ledger did not take its debit \
         ({source}); ask again with the same query id to commit and receive it"
    )]
    Uncommitted {
        /// The query's id.
        query_id: String,
        /// Why the commit failed.
        #[source]
        source: Box<Error>,
    },

    /// The hash chain of the audit log is broken.
    #[error("{0}")]
    AuditBroken(String),

    /// De-identification, anonymization, a DP release or the accountant
    /// refused (the message names the column, constraint or budget at fault).
    #[error(transparent)]
    Anonymizer(#[from] cohort_anonymizer::Error),

    /// The query planner refused or failed (the message names the rule and
    /// the offending SQL).
    #[error(transparent)]
    Query(#[from] cohort_query_planner::Error),

    /// The ledger refused or could not be reached (a contract's error is
    /// named with its arguments).
    #[error(transparent)]
    Ledger(#[from] cohort_ledger_bridge::Error),

    /// Arrow or Parquet failed while building or writing a projection.
    #[error("columnar projection: {0}")]
    Arrow(String),
}

impl Error {
    /// An I/O failure while `action`ing `path`.
    pub fn io(action: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            action,
            path: path.into(),
            source,
        }
    }
}

impl From<arrow::error::ArrowError> for Error {
    fn from(e: arrow::error::ArrowError) -> Self {
        Error::Arrow(e.to_string())
    }
}

impl From<parquet::errors::ParquetError> for Error {
    fn from(e: parquet::errors::ParquetError) -> Self {
        Error::Arrow(e.to_string())
    }
}

/// The engine's result type.
pub type Result<T> = std::result::Result<T, Error>;
