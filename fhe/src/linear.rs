//! The linear layer: sums of ElGamal ciphertexts, noised under encryption,
//! decrypted by t of n stewards behind the ledger gate.

use rayon::prelude::*;

use crate::elgamal::{self, Ciphertext};
use crate::error::{FheError, Result, malformed};
use crate::range::Bounds;
use crate::threshold::{CustodianKey, KeyShare, PartialDecryption};
use crate::{
    CostEstimate, DecryptionGate, EncryptedAggregate, EncryptedOp, Job, Layer, Padding, Sealed,
    decryption_context,
};

/// Seconds per value of an encrypted SUM on the reference machine (two
/// mixed additions on two cores, unchecked decoding included; 1,000,000
/// values with a 3-of-5 decryption took 1.44 s), from the `fhe` bench in
/// docs/BENCHMARKS.md.
const SECONDS_PER_VALUE: f64 = 1.4e-6;
/// Fixed cost of a decryption: t proofs checked, the discrete-log tables.
const SECONDS_FIXED: f64 = 0.05;

/// The cost of an encrypted SUM over `records` values.
pub fn estimate(records: u64) -> CostEstimate {
    CostEstimate {
        layer: Layer::Elgamal,
        operations: 2 * records,
        operation: "G1 additions",
        seconds: SECONDS_FIXED + SECONDS_PER_VALUE * records as f64,
    }
}

/// Aggregates ElGamal ciphertexts under a study's custodian key.
pub struct LinearLayer {
    key: CustodianKey,
}

impl LinearLayer {
    /// The layer for ciphertexts under `key`.
    pub fn new(key: CustodianKey) -> Self {
        LinearLayer { key }
    }
}

impl EncryptedAggregate for LinearLayer {
    fn layer(&self) -> Layer {
        Layer::Elgamal
    }

    fn aggregate(
        &self,
        op: &EncryptedOp,
        cells: &[&[u8]],
        noise: i64,
        job: &Job,
        padding: Padding<'_>,
    ) -> Result<Sealed> {
        if *op != EncryptedOp::Sum {
            return Err(malformed(
                "operation",
                format!("{op:?} is not linear; route it to tfhe"),
            ));
        }
        let stand_ins = padding.stand_ins(cells);
        let total = cells.len() + stand_ins.len();
        job.start(total);
        let mut sum = elgamal::sum_stored(cells.par_iter().copied().enumerate())?;
        // The stand-ins are summed the same way, and the sum dropped.
        std::hint::black_box(elgamal::sum_stored(
            stand_ins.par_iter().copied().enumerate(),
        )?);
        job.finish();
        if job.is_cancelled() {
            return Err(FheError::Cancelled { done: 0, total });
        }
        // Fresh randomness with the noise: the sealed result is unlinkable
        // to the sum before noise, even for someone who saw that sum's bytes.
        sum += Ciphertext::encrypt(&self.key.public, noise);
        Ok(seal(&sum))
    }
}

/// Seals an ElGamal ciphertext.
pub fn seal(ct: &Ciphertext) -> Sealed {
    Sealed {
        layer: Layer::Elgamal,
        ciphertext: ct.to_bytes(),
        digest: ct.digest(),
    }
}

/// A data steward's decryptor: its key share, released only as a partial
/// decryption of a result the gate authorises.
pub struct Steward {
    share: KeyShare,
}

impl Steward {
    /// The decryptor for one steward's share.
    pub fn new(share: KeyShare) -> Self {
        Steward { share }
    }

    /// This steward's index.
    pub fn index(&self) -> u32 {
        self.share.index()
    }

    /// Checks the gate for the digest of the ciphertext itself (not the
    /// digest the caller claims), then decrypts its share.
    pub fn decrypt(
        &self,
        gate: &dyn DecryptionGate,
        query_id: &str,
        sealed: &Sealed,
    ) -> Result<PartialDecryption> {
        if sealed.layer != Layer::Elgamal {
            return Err(malformed(
                "sealed result",
                "a steward decrypts only ElGamal results",
            ));
        }
        let ct = Ciphertext::from_bytes(&sealed.ciphertext)?;
        let digest = ct.digest();
        gate.authorize(query_id, &digest)?;
        Ok(self
            .share
            .partial_decrypt(&ct, &decryption_context(query_id, &digest)))
    }
}

/// Combines t stewards' partial decryptions of `sealed` into the noisy
/// aggregate, searching `[lo, hi]` (see [`search_range`]).
pub fn open(
    key: &CustodianKey,
    query_id: &str,
    sealed: &Sealed,
    partials: &[PartialDecryption],
    lo: i64,
    hi: i64,
) -> Result<i64> {
    let ct = Ciphertext::from_bytes(&sealed.ciphertext)?;
    let digest = ct.digest();
    key.combine(
        &ct,
        &decryption_context(query_id, &digest),
        partials,
        lo,
        hi,
    )
}

/// Where a noisy sum of `records` values within `bounds` can lie, with
/// noise of magnitude at most `noise_tail` (a bound the noise exceeds with
/// negligible probability; beyond it decryption reports
/// [`FheError::OutsideSearchRange`] rather than guess).
pub fn search_range(records: u64, bounds: Bounds, noise_tail: i64) -> (i64, i64) {
    let n = records as i128;
    let lo = (n * bounds.lo.min(0) as i128 - noise_tail as i128).max(i64::MIN as i128 / 2);
    let hi = (n * bounds.hi.max(0) as i128 + noise_tail as i128).min(i64::MAX as i128 / 2);
    (lo as i64, hi as i64)
}
