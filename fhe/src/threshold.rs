//! Threshold decryption among the data stewards. The custodian secret `s`
//! is never held by anyone: each of the n stewards deals a random
//! polynomial of degree t-1 with Feldman commitments (joint-Feldman
//! distributed key generation), steward i's share is the sum of what every
//! dealer sent it, and the public key is the sum of the dealers' constant
//! commitments. Any t stewards decrypt together: each publishes `D_i = s_i·c1`
//! with a Chaum-Pedersen proof that it used the same `s_i` as its public
//! verification key `Y_i = s_i·G`, so a cheating steward is named, not
//! trusted; the partials are combined with Lagrange coefficients at 0.

use std::collections::BTreeMap;

use ark_bls12_381::{Fr, G1Affine, G1Projective};
use ark_ec::{AdditiveGroup, CurveGroup};
use ark_ff::Field;

use crate::dlog;
use crate::elgamal::{Ciphertext, FORMAT_VERSION, PublicKey, versioned};
use crate::error::{FheError, Result, malformed};
use crate::group::{self, POINT_BYTES, SCALAR_BYTES, Transcript};

/// t of n: how many stewards must cooperate, and how many hold shares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Threshold {
    /// Partial decryptions needed.
    pub t: u32,
    /// Stewards holding shares, indexed 1..=n.
    pub n: u32,
}

impl Threshold {
    /// Checks `1 <= t <= n <= 255`.
    pub fn new(t: u32, n: u32) -> Result<Self> {
        if t == 0 || t > n || n > 255 {
            return Err(FheError::Threshold { t, n });
        }
        Ok(Threshold { t, n })
    }
}

/// One steward's contribution to the key generation: a secret polynomial,
/// of which it publishes the commitments and sends each steward one value.
pub struct Dealer {
    index: u32,
    coefficients: Vec<Fr>,
    commitments: Vec<G1Affine>,
}

impl Dealer {
    /// Steward `index` (1..=n) draws its polynomial.
    pub fn new(threshold: Threshold, index: u32) -> Result<Self> {
        check_index(threshold, index)?;
        let coefficients: Vec<Fr> = (0..threshold.t).map(|_| group::random_scalar()).collect();
        let g = group::generator();
        let commitments =
            G1Projective::normalize_batch(&coefficients.iter().map(|a| g * a).collect::<Vec<_>>());
        Ok(Dealer {
            index,
            coefficients,
            commitments,
        })
    }

    /// The Feldman commitments `a_k·G`, published to every steward.
    pub fn commitments(&self) -> &[G1Affine] {
        &self.commitments
    }

    /// The value of the polynomial at steward `to`, sent to it privately.
    pub fn share_for(&self, to: u32) -> Fr {
        evaluate(&self.coefficients, to)
    }

    /// This dealer's steward index.
    pub fn index(&self) -> u32 {
        self.index
    }
}

impl Drop for Dealer {
    fn drop(&mut self) {
        for a in &mut self.coefficients {
            *a = Fr::ZERO;
        }
    }
}

/// What one dealer sends one recipient.
pub struct DealtShare<'a> {
    /// The dealer's steward index.
    pub dealer: u32,
    /// The dealer's published commitments.
    pub commitments: &'a [G1Affine],
    /// The dealer's polynomial at the recipient's index.
    pub value: Fr,
}

/// Steward `index`'s share of the custodian secret. Never leaves the
/// steward's key store except as a partial decryption.
#[derive(Clone, PartialEq, Eq)]
pub struct KeyShare {
    index: u32,
    secret: Fr,
}

impl std::fmt::Debug for KeyShare {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "KeyShare {{ index: {}, secret: <redacted> }}",
            self.index
        )
    }
}

impl Drop for KeyShare {
    fn drop(&mut self) {
        self.secret = Fr::ZERO;
    }
}

impl KeyShare {
    /// Checks every dealer's value against its commitments and sums them.
    /// A value that does not match names its dealer (a complaint).
    pub fn combine(threshold: Threshold, index: u32, received: &[DealtShare<'_>]) -> Result<Self> {
        check_index(threshold, index)?;
        check_dealers(threshold, received.iter().map(|d| d.dealer))?;
        let mut secret = Fr::ZERO;
        for d in received {
            if d.commitments.len() != threshold.t as usize {
                return Err(malformed(
                    "dealer commitments",
                    format!(
                        "dealer {} published {} commitments, expected {}",
                        d.dealer,
                        d.commitments.len(),
                        threshold.t
                    ),
                ));
            }
            if group::generator() * d.value != evaluate_commitments(d.commitments, index) {
                return Err(FheError::BadShare {
                    dealer: d.dealer,
                    index,
                });
            }
            secret += d.value;
        }
        Ok(KeyShare { index, secret })
    }

    /// The steward index.
    pub fn index(&self) -> u32 {
        self.index
    }

    /// Version, index, secret scalar: for the steward's own sealed key store.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = vec![FORMAT_VERSION, self.index as u8];
        group::write_scalar(&mut out, &self.secret);
        out
    }

    /// Reads a share written by [`KeyShare::to_bytes`].
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        let body = versioned("key share", bytes, 2 + SCALAR_BYTES)?;
        let index = body[0] as u32;
        if index == 0 {
            return Err(malformed("key share", "steward index 0"));
        }
        Ok(KeyShare {
            index,
            secret: group::read_scalar("key share", &body[1..])?,
        })
    }

    /// `D_i = s_i·c1` with its proof, bound to `context` (the query id and
    /// the ciphertext's digest).
    pub fn partial_decrypt(&self, ct: &Ciphertext, context: &[u8]) -> PartialDecryption {
        let g = group::generator();
        let d = ct.c1 * self.secret;
        let y = g * self.secret;
        let w = group::random_scalar();
        let (a, b) = (g * w, ct.c1 * w);
        let e = dleq_challenge(context, self.index, &y, &ct.c1, &d, &a, &b);
        PartialDecryption {
            index: self.index,
            d: d.into_affine(),
            e,
            z: w + e * self.secret,
        }
    }
}

/// The public side of a generated key: the encryption key and each
/// steward's verification key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CustodianKey {
    /// t of n.
    pub threshold: Threshold,
    /// The encryption key patients and the engine use.
    pub public: PublicKey,
    verification: Vec<G1Affine>,
}

impl CustodianKey {
    /// Derives the public key and every `Y_i` from all dealers' commitments.
    pub fn from_commitments(threshold: Threshold, dealers: &[(u32, &[G1Affine])]) -> Result<Self> {
        check_dealers(threshold, dealers.iter().map(|(i, _)| *i))?;
        let mut h = G1Projective::ZERO;
        for (_, c) in dealers {
            if c.len() != threshold.t as usize {
                return Err(malformed(
                    "dealer commitments",
                    format!("{} commitments, expected {}", c.len(), threshold.t),
                ));
            }
            h += c[0];
        }
        let verification: Vec<G1Projective> = (1..=threshold.n)
            .map(|i| {
                dealers
                    .iter()
                    .map(|(_, c)| evaluate_commitments(c, i))
                    .sum()
            })
            .collect();
        Ok(CustodianKey {
            threshold,
            public: PublicKey(h.into_affine()),
            verification: G1Projective::normalize_batch(&verification),
        })
    }

    /// Version, t, n, the public key, then `Y_1..Y_n`, points compressed.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = vec![
            FORMAT_VERSION,
            self.threshold.t as u8,
            self.threshold.n as u8,
        ];
        group::write_point(&mut out, &self.public.0);
        for y in &self.verification {
            group::write_point(&mut out, y);
        }
        out
    }

    /// Reads and checks a key written by [`CustodianKey::to_bytes`].
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        let [_, t, n, ..] = bytes else {
            return Err(malformed("custodian key", "shorter than its header"));
        };
        let threshold = Threshold::new(*t as u32, *n as u32)?;
        let body = versioned(
            "custodian key",
            bytes,
            3 + POINT_BYTES * (1 + threshold.n as usize),
        )?;
        let points = body[2..]
            .chunks_exact(POINT_BYTES)
            .map(|c| group::read_point("custodian key", c))
            .collect::<Result<Vec<_>>>()?;
        Ok(CustodianKey {
            threshold,
            public: PublicKey(points[0]),
            verification: points[1..].to_vec(),
        })
    }

    /// Checks each partial decryption's proof, keeps t from distinct
    /// stewards, and returns `m` in `[lo, hi]` such that the ciphertext
    /// encrypts `m`. A steward whose proof fails is named in the error even
    /// when enough honest partials were offered, so it can be removed.
    pub fn combine(
        &self,
        ct: &Ciphertext,
        context: &[u8],
        partials: &[PartialDecryption],
        lo: i64,
        hi: i64,
    ) -> Result<i64> {
        let mut valid: BTreeMap<u32, G1Affine> = BTreeMap::new();
        for p in partials {
            self.verify(ct, context, p)?;
            valid.insert(p.index, p.d);
        }
        if valid.len() < self.threshold.t as usize {
            return Err(FheError::NotEnoughShares {
                got: valid.len(),
                needed: self.threshold.t,
            });
        }
        let chosen: Vec<(u32, G1Affine)> =
            valid.into_iter().take(self.threshold.t as usize).collect();
        let indices: Vec<u32> = chosen.iter().map(|(i, _)| *i).collect();
        let mut s = G1Projective::ZERO;
        for (i, d) in &chosen {
            s += *d * lagrange_at_zero(*i, &indices);
        }
        dlog::discrete_log(&(ct.c2 - s), lo, hi)
    }

    /// Checks one steward's proof of correct decryption.
    pub fn verify(&self, ct: &Ciphertext, context: &[u8], p: &PartialDecryption) -> Result<()> {
        if p.index == 0 || p.index > self.threshold.n {
            return Err(FheError::UnknownSteward {
                index: p.index,
                n: self.threshold.n,
            });
        }
        let g = group::generator();
        let y: G1Projective = self.verification[p.index as usize - 1].into();
        let d: G1Projective = p.d.into();
        let a = g * p.z - y * p.e;
        let b = ct.c1 * p.z - d * p.e;
        if dleq_challenge(context, p.index, &y, &ct.c1, &d, &a, &b) != p.e {
            return Err(FheError::BadDecryptionProof { index: p.index });
        }
        Ok(())
    }
}

/// One steward's share of a decryption, with its Chaum-Pedersen proof that
/// `log_G(Y_i) = log_c1(D_i)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PartialDecryption {
    /// The steward index.
    pub index: u32,
    d: G1Affine,
    e: Fr,
    z: Fr,
}

/// Bytes of an encoded [`PartialDecryption`].
pub const PARTIAL_BYTES: usize = 2 + POINT_BYTES + 2 * SCALAR_BYTES;

impl PartialDecryption {
    /// Version, index, `D_i` compressed, the proof's challenge and response.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = vec![FORMAT_VERSION, self.index as u8];
        group::write_point(&mut out, &self.d);
        group::write_scalar(&mut out, &self.e);
        group::write_scalar(&mut out, &self.z);
        out
    }

    /// Decodes a partial decryption, checking its point.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        let body = versioned("partial decryption", bytes, PARTIAL_BYTES)?;
        let d = group::read_point("partial decryption", &body[1..1 + POINT_BYTES])?;
        let e = group::read_scalar(
            "partial decryption",
            &body[1 + POINT_BYTES..1 + POINT_BYTES + SCALAR_BYTES],
        )?;
        let z = group::read_scalar(
            "partial decryption",
            &body[1 + POINT_BYTES + SCALAR_BYTES..],
        )?;
        Ok(PartialDecryption {
            index: body[0] as u32,
            d,
            e,
            z,
        })
    }
}

/// Runs the whole key generation in one process, for tests, benches and a
/// single-host deployment whose stewards' key stores are on this machine.
/// Returns the public key and every steward's share.
pub fn generate(threshold: Threshold) -> Result<(CustodianKey, Vec<KeyShare>)> {
    let dealers = (1..=threshold.n)
        .map(|i| Dealer::new(threshold, i))
        .collect::<Result<Vec<_>>>()?;
    let published: Vec<(u32, &[G1Affine])> = dealers
        .iter()
        .map(|d| (d.index(), d.commitments()))
        .collect();
    let key = CustodianKey::from_commitments(threshold, &published)?;
    let shares = (1..=threshold.n)
        .map(|to| {
            let received: Vec<DealtShare<'_>> = dealers
                .iter()
                .map(|d| DealtShare {
                    dealer: d.index(),
                    commitments: d.commitments(),
                    value: d.share_for(to),
                })
                .collect();
            KeyShare::combine(threshold, to, &received)
        })
        .collect::<Result<Vec<_>>>()?;
    Ok((key, shares))
}

fn check_index(threshold: Threshold, index: u32) -> Result<()> {
    if index == 0 || index > threshold.n {
        return Err(FheError::UnknownSteward {
            index,
            n: threshold.n,
        });
    }
    Ok(())
}

fn check_dealers(threshold: Threshold, dealers: impl Iterator<Item = u32>) -> Result<()> {
    let mut seen: Vec<u32> = dealers.collect();
    seen.sort_unstable();
    seen.dedup();
    if seen.len() != threshold.n as usize || seen.iter().any(|&i| i == 0 || i > threshold.n) {
        return Err(malformed(
            "key generation",
            format!(
                "need one dealing from each of the {} stewards, got dealers {seen:?}",
                threshold.n
            ),
        ));
    }
    Ok(())
}

fn evaluate(coefficients: &[Fr], x: u32) -> Fr {
    let x = Fr::from(x as u64);
    coefficients
        .iter()
        .rev()
        .fold(Fr::ZERO, |acc, a| acc * x + a)
}

fn evaluate_commitments(commitments: &[G1Affine], x: u32) -> G1Projective {
    let x = Fr::from(x as u64);
    commitments
        .iter()
        .rev()
        .fold(G1Projective::ZERO, |acc, c| acc * x + c)
}

fn lagrange_at_zero(i: u32, indices: &[u32]) -> Fr {
    let xi = Fr::from(i as u64);
    let (mut num, mut den) = (Fr::ONE, Fr::ONE);
    for &j in indices.iter().filter(|&&j| j != i) {
        let xj = Fr::from(j as u64);
        num *= xj;
        den *= xj - xi;
    }
    num * den
        .inverse()
        .expect("distinct indices give a non-zero denominator")
}

fn dleq_challenge(
    context: &[u8],
    index: u32,
    y: &G1Projective,
    c1: &G1Projective,
    d: &G1Projective,
    a: &G1Projective,
    b: &G1Projective,
) -> Fr {
    let mut t = Transcript::new("partial-decryption/v1");
    t.bytes(context)
        .bytes(&index.to_le_bytes())
        .point(y)
        .point(c1)
        .point(d)
        .point(a)
        .point(b);
    t.challenge()
}
