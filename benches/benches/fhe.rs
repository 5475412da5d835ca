//! The two FHE layers, and the ratio that justifies routing a SUM to
//! ElGamal and only comparisons to tfhe.
//!
//! - ElGamal: an encrypted SUM of 1,000,000 values in [0, 200] including
//!   the noise under encryption and a 3-of-5 threshold decryption (proofs
//!   checked, discrete log found); a patient's proven encryption and the
//!   engine's one check of it.
//! - tfhe: `COUNT(*) WHERE v >= 65` over FheUint8 values, timed once over
//!   `COHORT_FHE_RECORDS` records (default 1,000; about two minutes), with
//!   the programmable bootstraps per record beside tfhe's own single
//!   comparison; a patient's proven encryption and the engine's check of
//!   it, timed over `COHORT_FHE_PROOFS` of them (default 8).
//!
//! The million ElGamal cells are 1,000 distinct encryptions repeated, and
//! the tfhe records the proven ones repeated: an aggregate's cost does not
//! depend on which ciphertexts it reads (each record is compared on its
//! own), and proving every record first (1.5 s each) would dominate the run.
//!
//! Run: `cargo bench --workspace --bench fhe` (`--workspace`, so that the
//! features and the build are the test suite's).

use std::hint::black_box;
use std::time::Instant;

use cohort_fhe::elgamal::Ciphertext;
use cohort_fhe::linear::{self, LinearLayer, Steward};
use cohort_fhe::predicate::{self, PredicateLayer};
use cohort_fhe::range::{Bounds, encrypt_proven};
use cohort_fhe::threshold::{self, Threshold};
use cohort_fhe::{Comparison, DecryptionGate, EncryptedAggregate, EncryptedOp, Job, Padding};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

const VALUES: usize = 1_000_000;

/// Authorises everything: the bench measures the cryptography, not the ledger.
struct Open;
impl DecryptionGate for Open {
    fn authorize(&self, _: &str, _: &[u8; 32]) -> cohort_fhe::Result<()> {
        Ok(())
    }
}

fn elgamal(c: &mut Criterion) {
    let (key, shares) = threshold::generate(Threshold::new(3, 5).unwrap()).unwrap();
    let bounds = Bounds::new(0, 200).unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let distinct: Vec<(i64, Vec<u8>)> = (0..1000)
        .map(|_| {
            let v = rng.random_range(0..=200);
            (v, Ciphertext::encrypt(&key.public, v).to_stored())
        })
        .collect();
    let cells: Vec<&[u8]> = (0..VALUES)
        .map(|i| distinct[i % 1000].1.as_slice())
        .collect();
    let expected: i64 = (0..VALUES).map(|i| distinct[i % 1000].0).sum();
    let layer = LinearLayer::new(key.clone());
    let stewards: Vec<Steward> = shares.into_iter().take(3).map(Steward::new).collect();
    let (lo, hi) = linear::search_range(VALUES as u64, bounds, 1 << 30);

    let mut g = c.benchmark_group("elgamal");
    g.sample_size(10);
    g.throughput(Throughput::Elements(VALUES as u64));
    g.bench_function("sum 1M values, noise, 3-of-5 decryption", |b| {
        b.iter(|| {
            let sealed = layer
                .aggregate(&EncryptedOp::Sum, &cells, 3, &Job::new(), Padding::NONE)
                .unwrap();
            let partials: Vec<_> = stewards
                .iter()
                .map(|s| s.decrypt(&Open, "q", &sealed).unwrap())
                .collect();
            let total = linear::open(&key, "q", &sealed, &partials, lo, hi).unwrap();
            assert_eq!(total, expected + 3);
            black_box(total)
        })
    });
    g.throughput(Throughput::Elements(1));
    g.bench_function(
        "patient: encrypt a value in [0, 200] with its range proof",
        |b| b.iter(|| black_box(encrypt_proven(&key.public, 117, bounds, b"context").unwrap())),
    );
    let proven = encrypt_proven(&key.public, 117, bounds, b"context").unwrap();
    g.bench_function("engine: check a [0, 200] range proof once", |b| {
        b.iter(|| black_box(proven.verify(&key.public, bounds, b"context").unwrap()))
    });
    let flag = encrypt_proven(&key.public, 1, Bounds::new(0, 1).unwrap(), b"context").unwrap();
    g.bench_function("engine: check a 0/1 flag's proof once", |b| {
        b.iter(|| {
            black_box(
                flag.verify(&key.public, Bounds::new(0, 1).unwrap(), b"context")
                    .unwrap(),
            )
        })
    });
    g.finish();
}

fn tfhe_layer(_c: &mut Criterion) {
    let records: usize = std::env::var("COHORT_FHE_RECORDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let t = Instant::now();
    let keys = predicate::generate().unwrap();
    println!(
        "tfhe: key set and CRS generated in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    let proofs: usize = std::env::var("COHORT_FHE_PROOFS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(8)
        .clamp(1, records);
    let bounds = Bounds::new(0, 255).unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    let proven_values: Vec<i64> = (0..proofs).map(|_| rng.random_range(20..=120)).collect();
    let t = Instant::now();
    let submissions: Vec<Vec<u8>> = proven_values
        .iter()
        .map(|&v| predicate::encrypt_proven(&keys.public, v, bounds, b"ctx").unwrap())
        .collect();
    let prove = t.elapsed().as_secs_f64() / proofs as f64;
    let t = Instant::now();
    let layer = PredicateLayer::new(keys.server.clone());
    let proven: Vec<Vec<u8>> = submissions
        .iter()
        .map(|s| layer.verify(&keys.public, s, bounds, b"ctx").unwrap())
        .collect();
    let verify = t.elapsed().as_secs_f64() / proofs as f64;
    // Record i holds the i-th proven cell, cyclically.
    let cells: Vec<&Vec<u8>> = (0..records).map(|i| &proven[i % proofs]).collect();
    let values: Vec<i64> = (0..records).map(|i| proven_values[i % proofs]).collect();
    println!(
        "tfhe: proven encryption {:.0} ms per value (patient), verify and expand {:.0} ms per value (engine, once), over {proofs}; {} bytes submitted, {} kept",
        prove * 1e3,
        verify * 1e3,
        submissions[0].len(),
        proven[0].len()
    );

    // tfhe's own single comparison, the operation each record needs.
    tfhe::set_server_key(keys.server.clone());
    let one = layer
        .aggregate(
            &EncryptedOp::CountWhere {
                cmp: Comparison::Ge,
                constant: 65,
            },
            &[proven[0].as_slice()],
            0,
            &Job::new(),
            Padding::NONE,
        )
        .unwrap();
    black_box(one);
    let (ge_seconds, ge_pbs) = single_ge(&proven[0]);
    println!(
        "tfhe: one FheUint8 >= 65: {:.0} ms, {} programmable bootstraps",
        ge_seconds * 1e3,
        ge_pbs
    );

    let refs: Vec<&[u8]> = cells.iter().map(|c| c.as_slice()).collect();
    tfhe::reset_pbs_count();
    let t = Instant::now();
    let sealed = layer
        .aggregate(
            &EncryptedOp::CountWhere {
                cmp: Comparison::Ge,
                constant: 65,
            },
            &refs,
            0,
            &Job::new(),
            Padding::NONE,
        )
        .unwrap();
    let seconds = t.elapsed().as_secs_f64();
    let pbs = tfhe::get_pbs_count();
    let count = keys.client.decrypt(&Open, "q", &sealed).unwrap();
    assert_eq!(count, values.iter().filter(|&&v| v >= 65).count() as i64);
    let per_record = seconds / records as f64;
    println!(
        "tfhe: COUNT WHERE v >= 65 over {records} records: {seconds:.1} s, {:.0} ms and {:.1} bootstraps per record; {:.2}x tfhe's single comparison ({:.0} ms x {} bootstraps minimum)",
        per_record * 1e3,
        pbs as f64 / records as f64,
        per_record / ge_seconds,
        ge_seconds * 1e3,
        ge_pbs
    );
}

/// Times tfhe's own `ge` on one FheUint8 (the median of 5) and counts its bootstraps.
fn single_ge(cell: &[u8]) -> (f64, u64) {
    // The stored cell is the crate's encoding: version, width, length, object.
    let body = &cell[10..];
    let v: tfhe::FheUint8 = tfhe::safe_serialization::safe_deserialize(body, 1 << 30).unwrap();
    use tfhe::prelude::FheOrd;
    tfhe::reset_pbs_count();
    black_box(v.ge(65u8));
    let pbs = tfhe::get_pbs_count();
    let mut times: Vec<f64> = (0..5)
        .map(|_| {
            let t = Instant::now();
            black_box(v.ge(65u8));
            t.elapsed().as_secs_f64()
        })
        .collect();
    times.sort_by(f64::total_cmp);
    (times[2], pbs)
}

fn ratio(_c: &mut Criterion) {
    // The same SUM of 1,000 values in each layer, for the routing.
    let (key, _) = threshold::generate(Threshold::new(3, 5).unwrap()).unwrap();
    let stored: Vec<Vec<u8>> = (0..1000)
        .map(|i| Ciphertext::encrypt(&key.public, i % 200).to_stored())
        .collect();
    let refs: Vec<&[u8]> = stored.iter().map(Vec::as_slice).collect();
    let layer = LinearLayer::new(key);
    let t = Instant::now();
    for _ in 0..10 {
        black_box(
            layer
                .aggregate(&EncryptedOp::Sum, &refs, 0, &Job::new(), Padding::NONE)
                .unwrap(),
        );
    }
    let elgamal = t.elapsed().as_secs_f64() / 10.0;
    let keys = predicate::generate().unwrap();
    tfhe::set_server_key(keys.server.clone());
    let values: Vec<tfhe::FheUint16> = (0..64)
        .map(|i| {
            use tfhe::prelude::FheEncrypt;
            tfhe::FheUint16::encrypt(i as u16, &keys_client(&keys))
        })
        .collect();
    let t = Instant::now();
    let total: tfhe::FheUint16 = values.iter().sum();
    black_box(total);
    let tfhe_per_value = t.elapsed().as_secs_f64() / 64.0;
    println!(
        "ratio: a SUM of 1,000 values takes {:.2} ms under ElGamal and about {:.0} s under tfhe's multi-operand sum ({:.0} ms per value): {:.0}x",
        elgamal * 1e3,
        tfhe_per_value * 1000.0,
        tfhe_per_value * 1e3,
        tfhe_per_value * 1000.0 / elgamal
    );
}

fn keys_client(keys: &predicate::KeySet) -> tfhe::ClientKey {
    keys.client.client_key().clone()
}

criterion_group!(benches, elgamal, tfhe_layer, ratio);
criterion_main!(benches);
