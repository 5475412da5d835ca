//! Baby-step giant-step: the discrete log of `mG` for `m` in a known,
//! bounded range. A decrypted aggregate is `mG`; its range comes from the
//! declared value bounds, the number of records and the noise's tail.

use std::collections::HashMap;

use ark_bls12_381::{G1Affine, G1Projective};
use ark_ec::{AdditiveGroup, CurveGroup};
use ark_ff::PrimeField;

use crate::error::{FheError, Result};
use crate::group;

/// Giant steps are normalised to affine coordinates this many at a time
/// (one field inversion per batch instead of one per step).
const GIANT_BATCH: usize = 1024;
/// The largest baby-step table built (2^20 points, about 100 MB).
const MAX_BABY: u64 = 1 << 20;

/// Finds `m` in `[lo, hi]` with `mG = point`, or says it is not there.
/// Costs about `2·sqrt(hi - lo)` group additions.
pub fn discrete_log(point: &G1Projective, lo: i64, hi: i64) -> Result<i64> {
    if lo > hi {
        return Err(FheError::InvalidBounds {
            lo,
            hi,
            why: "the search range is empty",
        });
    }
    let span = (hi as i128 - lo as i128) as u128 + 1;
    if span > (MAX_BABY as u128) * (MAX_BABY as u128) {
        return Err(FheError::InvalidBounds {
            lo,
            hi,
            why: "the search range exceeds 2^40 values",
        });
    }
    let baby = (span as f64).sqrt().ceil().max(1.0) as u64;
    let baby = baby.min(MAX_BABY);
    let g = group::generator();

    // Baby steps jG for j in [0, baby), keyed by the low limb of x.
    let mut steps = Vec::with_capacity(baby as usize);
    let mut p = G1Projective::ZERO;
    for _ in 0..baby {
        steps.push(p);
        p += g;
    }
    let stride = p; // baby·G
    let table_points = G1Projective::normalize_batch(&steps);
    let mut table: HashMap<u64, u32> = HashMap::with_capacity(table_points.len());
    for (j, a) in table_points.iter().enumerate() {
        table.entry(key(a)).or_insert(j as u32);
    }

    // Giant steps: point - lo·G - k·(baby·G) for k = 0, 1, ...
    let mut q = *point - g * group::scalar_of(lo);
    let giants = span.div_ceil(baby as u128) as u64;
    let mut k = 0u64;
    while k < giants {
        let n = (GIANT_BATCH as u64).min(giants - k) as usize;
        let mut batch = Vec::with_capacity(n);
        for _ in 0..n {
            batch.push(q);
            q -= stride;
        }
        for (i, a) in G1Projective::normalize_batch(&batch).iter().enumerate() {
            if let Some(&j) = table.get(&key(a))
                && table_points[j as usize] == *a
            {
                let offset = (k + i as u64) as i128 * baby as i128 + j as i128;
                if offset < span as i128 {
                    return Ok((lo as i128 + offset) as i64);
                }
            }
        }
        k += n as u64;
    }
    Err(FheError::OutsideSearchRange { lo, hi })
}

fn key(a: &G1Affine) -> u64 {
    if ark_ec::AffineRepr::is_zero(a) {
        return u64::MAX;
    }
    a.x.into_bigint().0[0]
}
