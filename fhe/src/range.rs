//! Patient-side encryption with a range proof, so that nobody can submit a
//! ciphertext of a value outside the column's declared bounds and bias a
//! sum. The value `v` in `[lo, hi]` is shifted to `u = v - lo` in `[0, R]`
//! and written as a sum of weighted bits `u = Σ w_i b_i`, with weights
//! `1, 2, 4, …, 2^(k-2)` and a last weight `R - (2^(k-1) - 1)`, so that the
//! subset sums are exactly `[0, R]` for any `R`, not only powers of two.
//! Each bit is encrypted separately with a disjunctive Chaum-Pedersen proof
//! (Cramer-Damgård-Schoenmakers) that it encrypts 0 or 1; the value's
//! ciphertext is the weighted sum of the bit ciphertexts plus `lo`, so it is
//! correct by construction. Every proof is bound to a context (study,
//! column, patient) so that it cannot be replayed elsewhere.

use ark_bls12_381::{Fr, G1Projective};
use ark_ec::CurveGroup;
use ark_ff::AdditiveGroup;

use crate::elgamal::{Ciphertext, FORMAT_VERSION, PublicKey};
use crate::error::{FheError, Result, malformed};
use crate::group::{self, POINT_BYTES, SCALAR_BYTES, Transcript};

/// A column's declared bounds, inclusive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bounds {
    /// Smallest value allowed.
    pub lo: i64,
    /// Largest value allowed.
    pub hi: i64,
}

impl Bounds {
    /// Checks `lo < hi` and a span the proofs can cover (at most 2^40).
    pub fn new(lo: i64, hi: i64) -> Result<Self> {
        if lo >= hi {
            return Err(FheError::InvalidBounds {
                lo,
                hi,
                why: "need lo < hi",
            });
        }
        if (hi as i128 - lo as i128) >= 1i128 << 40 {
            return Err(FheError::InvalidBounds {
                lo,
                hi,
                why: "the span exceeds 2^40",
            });
        }
        Ok(Bounds { lo, hi })
    }

    /// The weights of the bit decomposition of `[0, hi - lo]`.
    pub fn weights(&self) -> Vec<i64> {
        let r = self.hi - self.lo;
        let k = 64 - r.leading_zeros() as usize;
        let mut w: Vec<i64> = (0..k - 1).map(|i| 1i64 << i).collect();
        w.push(r - ((1i64 << (k - 1)) - 1));
        w
    }

    /// Proven bits a value of these bounds carries.
    pub fn bits(&self) -> usize {
        self.weights().len()
    }
}

/// A ciphertext with its range proof, as a patient submits it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProvenCiphertext {
    bits: Vec<Ciphertext>,
    proofs: Vec<OrProof>,
}

/// A proof that a bit ciphertext encrypts 0 or 1: two Chaum-Pedersen
/// transcripts, one real, one simulated, whose challenges sum to the
/// Fiat-Shamir challenge.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct OrProof {
    e0: Fr,
    e1: Fr,
    z0: Fr,
    z1: Fr,
}

const PROOF_BYTES: usize = 4 * SCALAR_BYTES;
const BIT_BYTES: usize = 2 * POINT_BYTES + PROOF_BYTES;

/// Encrypts `value` under `pk` with a proof that it lies in `bounds`, bound
/// to `context`. Refuses a value outside the bounds: there is no proof of
/// a false statement to make.
pub fn encrypt_proven(
    pk: &PublicKey,
    value: i64,
    bounds: Bounds,
    context: &[u8],
) -> Result<ProvenCiphertext> {
    if value < bounds.lo || value > bounds.hi {
        return Err(FheError::OutOfRange {
            value,
            lo: bounds.lo,
            hi: bounds.hi,
        });
    }
    let weights = bounds.weights();
    let mut rest = value - bounds.lo;
    // Greedy from the largest weight: the last weight first, then binary.
    let mut bits = vec![0i64; weights.len()];
    let last = weights.len() - 1;
    if rest > (1i64 << last) - 1 {
        bits[last] = 1;
        rest -= weights[last];
    }
    for (i, bit) in bits.iter_mut().enumerate().take(last) {
        *bit = (rest >> i) & 1;
    }
    debug_assert_eq!(
        bits.iter().zip(&weights).map(|(b, w)| b * w).sum::<i64>(),
        value - bounds.lo
    );

    let mut cts = Vec::with_capacity(bits.len());
    let mut proofs = Vec::with_capacity(bits.len());
    for (i, &b) in bits.iter().enumerate() {
        let r = group::random_scalar();
        let ct = Ciphertext::encrypt_with(pk, b, &r);
        proofs.push(prove_bit(pk, &ct, b == 1, &r, context, i));
        cts.push(ct);
    }
    Ok(ProvenCiphertext { bits: cts, proofs })
}

impl ProvenCiphertext {
    /// Checks every bit's proof against `pk`, `bounds` and `context`, and
    /// returns the value's ciphertext. This is the one check a ciphertext
    /// gets; store the result with [`Ciphertext::to_stored`].
    pub fn verify(&self, pk: &PublicKey, bounds: Bounds, context: &[u8]) -> Result<Ciphertext> {
        let weights = bounds.weights();
        if self.bits.len() != weights.len() {
            return Err(malformed(
                "proven ciphertext",
                format!(
                    "{} bits, but bounds [{}, {}] need {}",
                    self.bits.len(),
                    bounds.lo,
                    bounds.hi,
                    weights.len()
                ),
            ));
        }
        let mut sum = Ciphertext::zero();
        for (i, ((ct, proof), w)) in self.bits.iter().zip(&self.proofs).zip(&weights).enumerate() {
            if !verify_bit(pk, ct, proof, context, i) {
                return Err(FheError::RangeProof { bit: i });
            }
            sum += ct.scale(*w);
        }
        sum.add_plain(bounds.lo);
        Ok(sum)
    }

    /// Version byte, bit count, then each bit's ciphertext and proof.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(2 + self.bits.len() * BIT_BYTES);
        out.push(FORMAT_VERSION);
        out.push(self.bits.len() as u8);
        let affine = G1Projective::normalize_batch(
            &self
                .bits
                .iter()
                .flat_map(|c| [c.c1, c.c2])
                .collect::<Vec<_>>(),
        );
        for (i, proof) in self.proofs.iter().enumerate() {
            group::write_point(&mut out, &affine[2 * i]);
            group::write_point(&mut out, &affine[2 * i + 1]);
            for s in [proof.e0, proof.e1, proof.z0, proof.z1] {
                group::write_scalar(&mut out, &s);
            }
        }
        out
    }

    /// Decodes a submission, checking every point; the proofs are checked
    /// by [`ProvenCiphertext::verify`].
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        const WHAT: &str = "proven ciphertext";
        let [version, n, body @ ..] = bytes else {
            return Err(malformed(WHAT, "shorter than its header"));
        };
        if *version != FORMAT_VERSION {
            return Err(FheError::Version {
                what: WHAT,
                found: *version,
                supported: FORMAT_VERSION,
            });
        }
        let n = *n as usize;
        if n == 0 || body.len() != n * BIT_BYTES {
            return Err(malformed(
                WHAT,
                format!(
                    "{} bytes for {n} bits, expected {}",
                    bytes.len(),
                    2 + n * BIT_BYTES
                ),
            ));
        }
        let mut bits = Vec::with_capacity(n);
        let mut proofs = Vec::with_capacity(n);
        for chunk in body.chunks_exact(BIT_BYTES) {
            let c1 = group::read_point(WHAT, &chunk[..POINT_BYTES])?;
            let c2 = group::read_point(WHAT, &chunk[POINT_BYTES..2 * POINT_BYTES])?;
            bits.push(Ciphertext {
                c1: c1.into(),
                c2: c2.into(),
            });
            let s = &chunk[2 * POINT_BYTES..];
            let scalar =
                |i: usize| group::read_scalar(WHAT, &s[i * SCALAR_BYTES..(i + 1) * SCALAR_BYTES]);
            proofs.push(OrProof {
                e0: scalar(0)?,
                e1: scalar(1)?,
                z0: scalar(2)?,
                z1: scalar(3)?,
            });
        }
        Ok(ProvenCiphertext { bits, proofs })
    }
}

fn transcript(
    pk: &PublicKey,
    ct: &Ciphertext,
    context: &[u8],
    bit: usize,
    commitments: &[G1Projective; 4],
) -> Fr {
    let mut t = Transcript::new("range-bit/v1");
    t.bytes(context)
        .bytes(&(bit as u32).to_le_bytes())
        .affine(&pk.0)
        .point(&ct.c1)
        .point(&ct.c2);
    for a in commitments {
        t.point(a);
    }
    t.challenge()
}

/// Statement j (j = 0, 1): `(c1, c2 - jG) = (rG, rH)` for some r.
fn prove_bit(
    pk: &PublicKey,
    ct: &Ciphertext,
    bit: bool,
    r: &Fr,
    context: &[u8],
    index: usize,
) -> OrProof {
    let g = group::generator();
    let h = G1Projective::from(pk.0);
    let shifted = [ct.c2, ct.c2 - g];
    let real = bit as usize;
    let fake = 1 - real;
    let (e_fake, z_fake) = (group::random_scalar(), group::random_scalar());
    let w = group::random_scalar();
    let mut a = [G1Projective::ZERO; 2];
    let mut b = [G1Projective::ZERO; 2];
    a[real] = g * w;
    b[real] = h * w;
    a[fake] = g * z_fake - ct.c1 * e_fake;
    b[fake] = h * z_fake - shifted[fake] * e_fake;
    let e = transcript(pk, ct, context, index, &[a[0], b[0], a[1], b[1]]);
    let e_real = e - e_fake;
    let z_real = w + e_real * r;
    let (mut es, mut zs) = ([Fr::ZERO; 2], [Fr::ZERO; 2]);
    es[real] = e_real;
    zs[real] = z_real;
    es[fake] = e_fake;
    zs[fake] = z_fake;
    OrProof {
        e0: es[0],
        e1: es[1],
        z0: zs[0],
        z1: zs[1],
    }
}

fn verify_bit(pk: &PublicKey, ct: &Ciphertext, p: &OrProof, context: &[u8], index: usize) -> bool {
    let g = group::generator();
    let h = G1Projective::from(pk.0);
    let a0 = g * p.z0 - ct.c1 * p.e0;
    let b0 = h * p.z0 - ct.c2 * p.e0;
    let a1 = g * p.z1 - ct.c1 * p.e1;
    let b1 = h * p.z1 - (ct.c2 - g) * p.e1;
    let e = transcript(pk, ct, context, index, &[a0, b0, a1, b1]);
    e == p.e0 + p.e1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_cover_exactly_the_span() {
        for (lo, hi) in [
            (0, 1),
            (0, 2),
            (0, 7),
            (0, 8),
            (20, 200),
            (-5, 5),
            (0, 1000),
        ] {
            let b = Bounds::new(lo, hi).unwrap();
            let w = b.weights();
            let mut reachable = std::collections::BTreeSet::new();
            for mask in 0u32..(1 << w.len()) {
                reachable.insert(
                    (0..w.len())
                        .filter(|i| mask >> i & 1 == 1)
                        .map(|i| w[i])
                        .sum::<i64>(),
                );
            }
            let expected: std::collections::BTreeSet<i64> = (0..=hi - lo).collect();
            assert_eq!(reachable, expected, "bounds [{lo}, {hi}] weights {w:?}");
        }
    }
}
