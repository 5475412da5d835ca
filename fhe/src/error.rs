//! One error type for both layers, each variant naming what was wrong.

/// Why an encryption, a proof, a share or a decryption was refused.
#[derive(Debug, thiserror::Error)]
pub enum FheError {
    /// Bytes that do not decode as the named object.
    #[error("{what} is malformed: {why}")]
    Malformed {
        /// The object being decoded ("ciphertext", "key share", ...).
        what: &'static str,
        /// What the decoder found.
        why: String,
    },
    /// A format version this build does not read.
    #[error("{what} has format version {found}; this build reads version {supported}")]
    Version {
        /// The object being decoded.
        what: &'static str,
        /// The version byte found.
        found: u8,
        /// The version this build writes and reads.
        supported: u8,
    },
    /// A plaintext outside the bounds declared for its column.
    #[error("value {value} lies outside the declared bounds [{lo}, {hi}]")]
    OutOfRange {
        /// The value offered.
        value: i64,
        /// Lower bound, inclusive.
        lo: i64,
        /// Upper bound, inclusive.
        hi: i64,
    },
    /// Bounds that cannot be used (empty, or too wide for the layer).
    #[error("invalid bounds [{lo}, {hi}]: {why}")]
    InvalidBounds {
        /// Lower bound.
        lo: i64,
        /// Upper bound.
        hi: i64,
        /// Why they are refused.
        why: &'static str,
    },
    /// A range proof that does not verify: the value may be out of bounds,
    /// the ciphertext may have been altered, or it was made for another field.
    #[error(
        "the range proof does not verify (bit {bit}): the ciphertext was altered, made for another field, or encrypts a value outside its bounds"
    )]
    RangeProof {
        /// The first bit whose proof failed.
        bit: usize,
    },
    /// A threshold that is not 1 <= t <= n.
    #[error("invalid threshold {t} of {n}: need 1 <= t <= n")]
    Threshold {
        /// Partial decryptions needed.
        t: u32,
        /// Stewards holding shares.
        n: u32,
    },
    /// A dealt share that does not match its dealer's public commitments.
    #[error(
        "the share dealer {dealer} sent to steward {index} does not match the dealer's commitments"
    )]
    BadShare {
        /// The dealer's steward index.
        dealer: u32,
        /// The recipient's steward index.
        index: u32,
    },
    /// A partial decryption whose Chaum-Pedersen proof fails: that steward
    /// decrypted with the wrong key or tampered with its result.
    #[error("the partial decryption of steward {index} fails its proof of correct decryption")]
    BadDecryptionProof {
        /// The steward index.
        index: u32,
    },
    /// A partial decryption from a steward that holds no share of this key.
    #[error("steward {index} holds no share of this key (stewards are 1..={n})")]
    UnknownSteward {
        /// The index offered.
        index: u32,
        /// The number of stewards.
        n: u32,
    },
    /// Fewer valid, distinct partial decryptions than the threshold.
    #[error("{got} valid partial decryptions from distinct stewards; {needed} are needed")]
    NotEnoughShares {
        /// Valid, distinct partial decryptions offered.
        got: usize,
        /// The threshold.
        needed: u32,
    },
    /// The decrypted point is not a multiple of the generator in the range
    /// searched; the aggregate or its noise exceeded the planned bounds.
    #[error("the decrypted aggregate lies outside the searched range [{lo}, {hi}]")]
    OutsideSearchRange {
        /// Lower end searched.
        lo: i64,
        /// Upper end searched.
        hi: i64,
    },
    /// The ledger gate refused: no committed debit for this result.
    #[error("decryption refused for query {query_id}: {why}")]
    NotAuthorized {
        /// The query id the result claims.
        query_id: String,
        /// What the gate found.
        why: String,
    },
    /// A long job stopped on request; nothing of it was kept.
    #[error("cancelled after {done} of {total} records; no partial result was kept")]
    Cancelled {
        /// Records processed before the stop.
        done: usize,
        /// Records in the job.
        total: usize,
    },
    /// An error reported by tfhe.
    #[error("tfhe: {0}")]
    Tfhe(String),
}

/// Results of this crate.
pub type Result<T> = std::result::Result<T, FheError>;

pub(crate) fn malformed(what: &'static str, why: impl Into<String>) -> FheError {
    FheError::Malformed {
        what,
        why: why.into(),
    }
}
