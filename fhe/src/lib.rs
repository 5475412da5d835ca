//! # cohort-fhe
//!
//! Computes aggregates over values a patient shares only encrypted, so that
//! neither the engine's operator nor the researcher ever sees a raw value
//! and no single custodian can decrypt alone. Two layers sit behind one
//! interface ([`EncryptedAggregate`]), chosen per operation by [`route`]:
//!
//! - **Linear** aggregates (COUNT of a flag, SUM, AVG, with plaintext
//!   filters): additively homomorphic exponential ElGamal over BLS12-381 G1
//!   ([`elgamal`]), with patient-side range proofs ([`range`]) and t-of-n
//!   threshold decryption by the data stewards ([`threshold`]), the final
//!   discrete log found by baby-step giant-step ([`dlog`]). A ciphertext is
//!   validated once when it enters and stored uncompressed, so a sum costs
//!   two mixed additions per value.
//! - **Non-linear** operations (a comparison on an encrypted value):
//!   `tfhe` ([`predicate`]), with compact public-key encryption and a
//!   zero-knowledge proof on the patient side, the server key in the
//!   engine, and the client key only with the custodian decryptor.
//!
//! Differential-privacy noise is added under encryption before anything is
//! decrypted ([`EncryptedAggregate::aggregate`] takes the sampled noise), and
//! every decryption passes a [`DecryptionGate`], which the engine backs with
//! the ledger: a result is decrypted only if its query has a committed debit
//! that names the result's digest. The crate is a leaf: it knows nothing of
//! the ledger, SQL or the vault.

pub mod dlog;
pub mod elgamal;
pub mod error;
mod group;
pub mod linear;
pub mod predicate;
pub mod range;
pub mod threshold;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

pub use error::{FheError, Result};

/// Which layer answers an operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Layer {
    /// Exponential ElGamal over BLS12-381 with threshold decryption.
    Elgamal,
    /// tfhe, decrypted by the custodian decryptor.
    Tfhe,
}

impl Layer {
    /// The name EXPLAIN PRIVACY prints.
    pub fn describe(&self) -> &'static str {
        match self {
            Layer::Elgamal => {
                "exponential ElGamal on BLS12-381, threshold decryption by the stewards"
            }
            Layer::Tfhe => "tfhe (TFHE-rs), decrypted by the custodian decryptor",
        }
    }
}

impl std::fmt::Display for Layer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Layer::Elgamal => "elgamal",
            Layer::Tfhe => "tfhe",
        })
    }
}

/// A comparison of an encrypted value with a public constant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Comparison {
    /// `>=`
    Ge,
    /// `>`
    Gt,
    /// `<=`
    Le,
    /// `<`
    Lt,
    /// `=`
    Eq,
}

/// An aggregate over one encrypted column, per group of rows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EncryptedOp {
    /// The sum of the values (a COUNT when the column is a 0/1 flag; the
    /// numerator of an AVG).
    Sum,
    /// The number of rows whose value satisfies `value <cmp> constant`.
    CountWhere {
        /// The comparison.
        cmp: Comparison,
        /// The public constant.
        constant: i64,
    },
}

/// The layer that answers `op`: a sum is linear, so ElGamal; a comparison
/// needs a non-linear function of the value, so tfhe.
pub fn route(op: &EncryptedOp) -> Layer {
    match op {
        EncryptedOp::Sum => Layer::Elgamal,
        EncryptedOp::CountWhere { .. } => Layer::Tfhe,
    }
}

/// What an encrypted aggregate will cost, for EXPLAIN PRIVACY.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct CostEstimate {
    /// The layer.
    pub layer: Layer,
    /// Homomorphic operations: group additions (ElGamal) or programmable
    /// bootstraps (tfhe).
    pub operations: u64,
    /// What the operations are.
    pub operation: &'static str,
    /// Expected seconds on the 2-core reference machine (docs/BENCHMARKS.md).
    pub seconds: f64,
}

/// Estimates `op` over `records` values.
pub fn estimate(op: &EncryptedOp, records: u64) -> CostEstimate {
    match route(op) {
        Layer::Elgamal => linear::estimate(records),
        Layer::Tfhe => predicate::estimate(op, records),
    }
}

/// An aggregate ready for decryption: the layer, its encoded ciphertext and
/// the digest a ledger debit must name before any decryptor touches it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sealed {
    /// The layer that produced it.
    pub layer: Layer,
    /// The encoded ciphertext.
    pub ciphertext: Vec<u8>,
    /// SHA-256 of the ciphertext, domain-separated per layer.
    pub digest: [u8; 32],
}

impl Sealed {
    /// Version byte, layer byte, the ciphertext: how a sealed result travels
    /// in an answer before it is decrypted.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(2 + self.ciphertext.len());
        out.push(elgamal::FORMAT_VERSION);
        out.push(match self.layer {
            Layer::Elgamal => 0,
            Layer::Tfhe => 1,
        });
        out.extend_from_slice(&self.ciphertext);
        out
    }

    /// Decodes a sealed result and recomputes its digest from the
    /// ciphertext (a digest is never taken on trust).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        let [version, layer, ciphertext @ ..] = bytes else {
            return Err(error::malformed("sealed result", "shorter than its header"));
        };
        if *version != elgamal::FORMAT_VERSION {
            return Err(FheError::Version {
                what: "sealed result",
                found: *version,
                supported: elgamal::FORMAT_VERSION,
            });
        }
        match layer {
            0 => Ok(linear::seal(&elgamal::Ciphertext::from_bytes(ciphertext)?)),
            1 => Ok(Sealed {
                layer: Layer::Tfhe,
                ciphertext: ciphertext.to_vec(),
                digest: predicate::result_digest(ciphertext),
            }),
            other => Err(error::malformed(
                "sealed result",
                format!("unknown layer {other}"),
            )),
        }
    }
}

/// The interface the query planner targets: one implementation per layer.
pub trait EncryptedAggregate {
    /// This implementation's layer.
    fn layer(&self) -> Layer;

    /// Aggregates one group's stored ciphertexts under `op`, adds `noise`
    /// (already sampled for the declared bounds and ε) under encryption, and
    /// seals the result. The noise is not kept: it exists only in the
    /// caller's sample and, re-randomised, inside the ciphertext. The work
    /// is padded as `padding` says.
    fn aggregate(
        &self,
        op: &EncryptedOp,
        cells: &[&[u8]],
        noise: i64,
        job: &Job,
        padding: Padding<'_>,
    ) -> Result<Sealed>;
}

/// Pads a group's work to a public size. The aggregate computes on `to`
/// records whatever the number of real ones: each stand-in (a real record
/// of the group again, or `stand_in` when the group has none) is computed
/// exactly like a real record and its result discarded. So neither the
/// work, nor its time, nor the job's progress tells how many of a group's
/// records passed a plaintext predicate or the contribution bounding.
#[derive(Clone, Copy, Debug, Default)]
pub struct Padding<'a> {
    /// The public size of the work set. A group with more real records
    /// (which the engine's public sizes rule out) computes them all.
    pub to: usize,
    /// A stored ciphertext of the column, computed on for the stand-ins of
    /// a group without records of its own.
    pub stand_in: Option<&'a [u8]>,
}

impl<'a> Padding<'a> {
    /// No padding: only the real records are computed.
    pub const NONE: Padding<'static> = Padding {
        to: 0,
        stand_in: None,
    };

    /// The stand-ins of a group with `cells`: as many as the padding needs,
    /// cycling through the group's own records (or the column's stand-in).
    pub fn stand_ins(&self, cells: &[&'a [u8]]) -> Vec<&'a [u8]> {
        let missing = self.to.saturating_sub(cells.len());
        match (cells.is_empty(), self.stand_in) {
            (false, _) => (0..missing).map(|i| cells[i % cells.len()]).collect(),
            (true, Some(stand_in)) => vec![stand_in; missing],
            (true, None) => Vec::new(),
        }
    }
}

/// Authorises a decryption. The engine's gate checks the ledger for a
/// committed debit of `query_id` that names `digest`; a decryptor releases
/// nothing the gate refuses.
pub trait DecryptionGate {
    /// `Ok` if the result with this digest may be decrypted for this query.
    fn authorize(&self, query_id: &str, digest: &[u8; 32]) -> Result<()>;
}

/// Progress and cancellation for a long homomorphic job: records done out
/// of total, and a flag another thread (Ctrl-C, a client's cancel) sets.
#[derive(Debug, Default)]
pub struct Job {
    done: AtomicUsize,
    total: AtomicUsize,
    cancelled: AtomicBool,
}

impl Job {
    /// A job with no records yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records done so far and in all.
    pub fn progress(&self) -> (usize, usize) {
        (
            self.done.load(Ordering::Relaxed),
            self.total.load(Ordering::Relaxed),
        )
    }

    /// Asks the job to stop at its next record.
    pub fn cancel(&self) {
        self.cancelled.store(true, Ordering::SeqCst);
    }

    /// Whether [`Job::cancel`] was called.
    pub fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::SeqCst)
    }

    pub(crate) fn start(&self, total: usize) {
        self.done.store(0, Ordering::Relaxed);
        self.total.store(total, Ordering::Relaxed);
    }

    /// Every record done at once (a layer that does not step per record).
    pub(crate) fn finish(&self) {
        self.done
            .store(self.total.load(Ordering::Relaxed), Ordering::Relaxed);
    }

    /// One record done; an error if the job was cancelled meanwhile.
    pub(crate) fn step(&self) -> Result<()> {
        let done = self.done.fetch_add(1, Ordering::Relaxed) + 1;
        if self.is_cancelled() {
            return Err(FheError::Cancelled {
                done,
                total: self.total.load(Ordering::Relaxed),
            });
        }
        Ok(())
    }
}

/// The context every decryption proof of a result is bound to.
pub fn decryption_context(query_id: &str, digest: &[u8; 32]) -> Vec<u8> {
    let mut c = Vec::with_capacity(query_id.len() + 40);
    c.extend_from_slice(&(query_id.len() as u32).to_le_bytes());
    c.extend_from_slice(query_id.as_bytes());
    c.extend_from_slice(digest);
    c
}
