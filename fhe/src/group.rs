//! The group both ElGamal proofs and ciphertexts live in (BLS12-381 G1),
//! with the encodings and the Fiat-Shamir transcript they share.

use ark_bls12_381::{Fr, G1Affine, G1Projective};
use ark_ec::{CurveGroup, PrimeGroup};
use ark_ff::PrimeField;
use ark_serialize::{CanonicalDeserialize, CanonicalSerialize};
use sha2::{Digest, Sha256};

use crate::error::{Result, malformed};

/// Bytes of a compressed G1 point.
pub const POINT_BYTES: usize = 48;
/// Bytes of an uncompressed G1 point.
pub const RAW_POINT_BYTES: usize = 96;
/// Bytes of a scalar.
pub const SCALAR_BYTES: usize = 32;

/// The fixed generator `G`.
pub(crate) fn generator() -> G1Projective {
    G1Projective::generator()
}

/// A uniformly random scalar from the operating system's entropy (64 bytes
/// reduced modulo r, so the bias is below 2^-250).
pub(crate) fn random_scalar() -> Fr {
    let mut bytes = [0u8; 64];
    getrandom::fill(&mut bytes).expect("the operating system's entropy source failed");
    Fr::from_le_bytes_mod_order(&bytes)
}

/// `m` as a scalar, negative values as their additive inverse.
pub(crate) fn scalar_of(m: i64) -> Fr {
    Fr::from(m)
}

pub(crate) fn write_point(out: &mut Vec<u8>, p: &G1Affine) {
    p.serialize_compressed(&mut *out)
        .expect("writing to a Vec cannot fail");
}

/// Decodes a compressed point with every check (on the curve, in the
/// prime-order subgroup): the only way a point enters from outside.
pub(crate) fn read_point(what: &'static str, bytes: &[u8]) -> Result<G1Affine> {
    G1Affine::deserialize_compressed(bytes).map_err(|e| {
        malformed(
            what,
            format!("not a point of the BLS12-381 G1 subgroup ({e})"),
        )
    })
}

pub(crate) fn write_scalar(out: &mut Vec<u8>, s: &Fr) {
    s.serialize_compressed(&mut *out)
        .expect("writing to a Vec cannot fail");
}

pub(crate) fn read_scalar(what: &'static str, bytes: &[u8]) -> Result<Fr> {
    Fr::deserialize_compressed(bytes)
        .map_err(|e| malformed(what, format!("not a canonical scalar ({e})")))
}

pub(crate) fn write_raw_point(out: &mut Vec<u8>, p: &G1Affine) {
    p.serialize_uncompressed(&mut *out)
        .expect("writing to a Vec cannot fail");
}

/// Decodes an uncompressed point without the curve and subgroup checks.
/// Only for bytes this crate wrote after validating them, and that reached
/// it through authenticated storage (the vault, the study view).
pub(crate) fn read_raw_point_unchecked(what: &'static str, bytes: &[u8]) -> Result<G1Affine> {
    G1Affine::deserialize_uncompressed_unchecked(bytes).map_err(|e| malformed(what, e.to_string()))
}

/// A Fiat-Shamir transcript: domain-separated SHA-256 over every public
/// value of a proof, turned into a challenge scalar.
pub(crate) struct Transcript(Sha256);

impl Transcript {
    pub(crate) fn new(domain: &'static str) -> Self {
        let mut h = Sha256::new();
        h.update(b"cohort-fhe/");
        h.update((domain.len() as u32).to_le_bytes());
        h.update(domain.as_bytes());
        Transcript(h)
    }

    pub(crate) fn bytes(&mut self, b: &[u8]) -> &mut Self {
        self.0.update((b.len() as u64).to_le_bytes());
        self.0.update(b);
        self
    }

    pub(crate) fn point(&mut self, p: &G1Projective) -> &mut Self {
        self.affine(&p.into_affine())
    }

    pub(crate) fn affine(&mut self, p: &G1Affine) -> &mut Self {
        let mut b = Vec::with_capacity(RAW_POINT_BYTES);
        write_raw_point(&mut b, p);
        self.0.update(&b);
        self
    }

    /// The challenge: two hashes of the transcript, reduced modulo r.
    pub(crate) fn challenge(&self) -> Fr {
        let mut wide = [0u8; 64];
        for (i, half) in wide.chunks_mut(32).enumerate() {
            let mut h = self.0.clone();
            h.update([i as u8]);
            half.copy_from_slice(&h.finalize());
        }
        Fr::from_le_bytes_mod_order(&wide)
    }
}
