//! The ElGamal layer: threshold key generation, range-proven encryption,
//! sums, noise under encryption, and every way a share, a proof or a
//! ciphertext can be wrong.

use std::cell::RefCell;

use cohort_fhe::elgamal::{self, Ciphertext, PublicKey};
use cohort_fhe::linear::{self, LinearLayer, Steward};
use cohort_fhe::range::{Bounds, ProvenCiphertext, encrypt_proven};
use cohort_fhe::threshold::{
    self, CustodianKey, Dealer, DealtShare, KeyShare, PartialDecryption, Threshold,
};
use cohort_fhe::{DecryptionGate, EncryptedAggregate, EncryptedOp, FheError, Job, Padding, Sealed};

/// A gate that authorises exactly the (query, digest) pairs it was told,
/// and records every request: the test double for the ledger, whose real
/// check is tested in the engine.
#[derive(Default)]
struct Allowed {
    debits: Vec<(String, [u8; 32])>,
    asked: RefCell<Vec<String>>,
}

impl DecryptionGate for Allowed {
    fn authorize(&self, query_id: &str, digest: &[u8; 32]) -> cohort_fhe::Result<()> {
        self.asked.borrow_mut().push(query_id.to_string());
        if self
            .debits
            .iter()
            .any(|(q, d)| q == query_id && d == digest)
        {
            Ok(())
        } else {
            Err(FheError::NotAuthorized {
                query_id: query_id.into(),
                why: "no committed debit names this result".into(),
            })
        }
    }
}

fn key_3_of_5() -> (CustodianKey, Vec<KeyShare>) {
    threshold::generate(Threshold::new(3, 5).unwrap()).unwrap()
}

fn store(cts: &[Ciphertext]) -> Vec<Vec<u8>> {
    cts.iter().map(Ciphertext::to_stored).collect()
}

fn decrypt(
    key: &CustodianKey,
    shares: &[KeyShare],
    pick: &[usize],
    query: &str,
    sealed: &Sealed,
    lo: i64,
    hi: i64,
) -> cohort_fhe::Result<i64> {
    let gate = Allowed {
        debits: vec![(query.to_string(), sealed.digest)],
        ..Default::default()
    };
    let partials: Vec<PartialDecryption> = pick
        .iter()
        .map(|&i| Steward::new(shares[i].clone()).decrypt(&gate, query, sealed))
        .collect::<cohort_fhe::Result<_>>()?;
    linear::open(key, query, sealed, &partials, lo, hi)
}

/// A small deterministic generator for test values (not for keys or noise).
fn values(n: usize, lo: i64, hi: i64, seed: u64) -> Vec<i64> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            lo + (x % (hi - lo + 1) as u64) as i64
        })
        .collect()
}

#[test]
fn random_values_sum_exactly_under_any_three_of_five() {
    let (key, shares) = key_3_of_5();
    let bounds = Bounds::new(20, 200).unwrap();
    let vals = values(64, 20, 200, 7);
    let cts: Vec<Ciphertext> = vals
        .iter()
        .enumerate()
        .map(|(i, &v)| {
            encrypt_proven(&key.public, v, bounds, format!("patient-{i}").as_bytes())
                .unwrap()
                .verify(&key.public, bounds, format!("patient-{i}").as_bytes())
                .unwrap()
        })
        .collect();
    let stored = store(&cts);
    let cells: Vec<&[u8]> = stored.iter().map(Vec::as_slice).collect();
    let sealed = LinearLayer::new(key.clone())
        .aggregate(&EncryptedOp::Sum, &cells, 0, &Job::new(), Padding::NONE)
        .unwrap();
    let (lo, hi) = linear::search_range(vals.len() as u64, bounds, 0);
    let expected: i64 = vals.iter().sum();
    for pick in [[0, 1, 2], [2, 3, 4], [0, 2, 4], [4, 1, 3]] {
        assert_eq!(
            decrypt(&key, &shares, &pick, "q1", &sealed, lo, hi).unwrap(),
            expected,
            "stewards {pick:?}"
        );
    }
}

#[test]
fn sums_at_the_bounds_and_noise_below_zero() {
    let (key, shares) = key_3_of_5();
    let bounds = Bounds::new(-3, 9).unwrap();
    for (v, noise) in [(-3i64, -40i64), (9, 40), (0, 0), (9, -1000)] {
        let cts: Vec<Ciphertext> = (0..10)
            .map(|_| {
                encrypt_proven(&key.public, v, bounds, b"c")
                    .unwrap()
                    .verify(&key.public, bounds, b"c")
                    .unwrap()
            })
            .collect();
        let stored = store(&cts);
        let cells: Vec<&[u8]> = stored.iter().map(Vec::as_slice).collect();
        let sealed = LinearLayer::new(key.clone())
            .aggregate(&EncryptedOp::Sum, &cells, noise, &Job::new(), Padding::NONE)
            .unwrap();
        let (lo, hi) = linear::search_range(10, bounds, 1000);
        assert_eq!(
            decrypt(&key, &shares, &[0, 1, 2], "q", &sealed, lo, hi).unwrap(),
            10 * v + noise
        );
    }
}

#[test]
fn the_noise_is_under_encryption_and_rerandomises_the_result() {
    let (key, _) = key_3_of_5();
    let ct = Ciphertext::encrypt(&key.public, 5);
    let cells = [ct.to_stored()];
    let refs: Vec<&[u8]> = cells.iter().map(Vec::as_slice).collect();
    let layer = LinearLayer::new(key.clone());
    let a = layer
        .aggregate(&EncryptedOp::Sum, &refs, 0, &Job::new(), Padding::NONE)
        .unwrap();
    let b = layer
        .aggregate(&EncryptedOp::Sum, &refs, 0, &Job::new(), Padding::NONE)
        .unwrap();
    assert_ne!(
        a.ciphertext, b.ciphertext,
        "the same sum sealed twice must not be linkable"
    );
    assert_ne!(
        a.ciphertext,
        ct.to_bytes(),
        "the sealed result must not be the unnoised ciphertext"
    );
}

#[test]
fn fewer_than_t_distinct_stewards_cannot_decrypt() {
    let (key, shares) = key_3_of_5();
    let sealed = linear::seal(&Ciphertext::encrypt(&key.public, 42));
    match decrypt(&key, &shares, &[0, 1], "q", &sealed, 0, 100) {
        Err(FheError::NotEnoughShares { got: 2, needed: 3 }) => {}
        other => panic!("two of five decrypted: {other:?}"),
    }
    // The same steward three times is still one steward.
    match decrypt(&key, &shares, &[1, 1, 1], "q", &sealed, 0, 100) {
        Err(FheError::NotEnoughShares { got: 1, needed: 3 }) => {}
        other => panic!("one steward thrice decrypted: {other:?}"),
    }
}

#[test]
fn a_cheating_decryptor_is_caught_by_its_proof() {
    let (key, shares) = key_3_of_5();
    let (_, other_shares) = key_3_of_5();
    let sealed = linear::seal(&Ciphertext::encrypt(&key.public, 42));
    let gate = Allowed {
        debits: vec![("q".into(), sealed.digest)],
        ..Default::default()
    };
    let honest: Vec<PartialDecryption> = shares[..3]
        .iter()
        .map(|s| {
            Steward::new(s.clone())
                .decrypt(&gate, "q", &sealed)
                .unwrap()
        })
        .collect();
    // Steward 2 answers with a share of another key (a wrong D_2 with a
    // proof that is valid for that key, not this one).
    let mut partials = honest.clone();
    partials[1] = Steward::new(other_shares[1].clone())
        .decrypt(&gate, "q", &sealed)
        .unwrap();
    match linear::open(&key, "q", &sealed, &partials, 0, 100) {
        Err(FheError::BadDecryptionProof { index: 2 }) => {}
        other => panic!("a wrong partial decryption passed: {other:?}"),
    }
    // A partial made for another query does not verify for this one.
    let gate2 = Allowed {
        debits: vec![("q2".into(), sealed.digest)],
        ..Default::default()
    };
    partials[1] = Steward::new(shares[1].clone())
        .decrypt(&gate2, "q2", &sealed)
        .unwrap();
    assert!(matches!(
        linear::open(&key, "q", &sealed, &partials, 0, 100),
        Err(FheError::BadDecryptionProof { index: 2 })
    ));
    // A flipped bit in an encoded partial is refused when decoded or verified.
    let mut bytes = honest[0].to_bytes();
    bytes[30] ^= 1;
    match PartialDecryption::from_bytes(&bytes) {
        Err(FheError::Malformed { .. }) => {}
        Ok(p) => {
            assert!(linear::open(&key, "q", &sealed, &[p, honest[1], honest[2]], 0, 100).is_err())
        }
        Err(e) => panic!("unexpected error {e}"),
    }
    assert_eq!(
        linear::open(&key, "q", &sealed, &honest, 0, 100).unwrap(),
        42
    );
}

#[test]
fn a_wrong_dealt_share_names_its_dealer() {
    let t = Threshold::new(2, 3).unwrap();
    let dealers: Vec<Dealer> = (1..=3).map(|i| Dealer::new(t, i).unwrap()).collect();
    let mut received: Vec<DealtShare<'_>> = dealers
        .iter()
        .map(|d| DealtShare {
            dealer: d.index(),
            commitments: d.commitments(),
            value: d.share_for(1),
        })
        .collect();
    assert!(KeyShare::combine(t, 1, &received).is_ok());
    received[2].value = dealers[2].share_for(2); // dealer 3 sends steward 1 the value meant for steward 2
    match KeyShare::combine(t, 1, &received) {
        Err(FheError::BadShare {
            dealer: 3,
            index: 1,
        }) => {}
        other => panic!("a wrong share was accepted: {other:?}"),
    }
    received.pop();
    assert!(
        matches!(
            KeyShare::combine(t, 1, &received),
            Err(FheError::Malformed { .. })
        ),
        "a missing dealer must be refused"
    );
    assert!(matches!(
        Threshold::new(4, 3),
        Err(FheError::Threshold { t: 4, n: 3 })
    ));
    assert!(matches!(
        Threshold::new(0, 3),
        Err(FheError::Threshold { .. })
    ));
}

#[test]
fn out_of_range_values_cannot_be_proven_and_forged_bits_are_rejected() {
    let (key, _) = key_3_of_5();
    let bounds = Bounds::new(0, 1).unwrap();
    assert!(matches!(
        encrypt_proven(&key.public, 2, bounds, b"p"),
        Err(FheError::OutOfRange {
            value: 2,
            lo: 0,
            hi: 1
        })
    ));
    assert!(matches!(
        encrypt_proven(&key.public, -1, bounds, b"p"),
        Err(FheError::OutOfRange { .. })
    ));

    // A patient who wants to count twice swaps the bit ciphertext for an
    // encryption of 2 and keeps the proof made for an honest 1.
    let honest = encrypt_proven(&key.public, 1, bounds, b"p")
        .unwrap()
        .to_bytes();
    let mut forged = honest.clone();
    forged[2..2 + 96].copy_from_slice(&Ciphertext::encrypt(&key.public, 2).to_bytes()[1..]);
    let forged = ProvenCiphertext::from_bytes(&forged).unwrap();
    assert!(matches!(
        forged.verify(&key.public, bounds, b"p"),
        Err(FheError::RangeProof { bit: 0 })
    ));

    // The honest proof is bound to its context and its bounds.
    let honest = ProvenCiphertext::from_bytes(&honest).unwrap();
    assert!(honest.verify(&key.public, bounds, b"p").is_ok());
    assert!(matches!(
        honest.verify(&key.public, bounds, b"another patient"),
        Err(FheError::RangeProof { .. })
    ));
    assert!(matches!(
        honest.verify(&key.public, Bounds::new(0, 100).unwrap(), b"p"),
        Err(FheError::Malformed { .. })
    ));
    let (other, _) = key_3_of_5();
    assert!(
        honest.verify(&other.public, bounds, b"p").is_err(),
        "a proof under another key must fail"
    );
}

#[test]
fn tampered_ciphertexts_are_rejected() {
    let (key, _) = key_3_of_5();
    let bounds = Bounds::new(20, 200).unwrap();
    let good = encrypt_proven(&key.public, 64, bounds, b"p")
        .unwrap()
        .to_bytes();
    // Every single-byte change is refused somewhere: as a point, a scalar,
    // a length, a version, or by the proof.
    for pos in (0..good.len()).step_by(7) {
        let mut bad = good.clone();
        bad[pos] ^= 0x40;
        let verdict =
            ProvenCiphertext::from_bytes(&bad).and_then(|p| p.verify(&key.public, bounds, b"p"));
        assert!(verdict.is_err(), "a change at byte {pos} was accepted");
    }
    let mut wrong_version = good.clone();
    wrong_version[0] = 9;
    assert!(matches!(
        ProvenCiphertext::from_bytes(&wrong_version),
        Err(FheError::Version { found: 9, .. })
    ));
    assert!(matches!(
        ProvenCiphertext::from_bytes(&good[..good.len() - 1]),
        Err(FheError::Malformed { .. })
    ));

    let ct = Ciphertext::encrypt(&key.public, 3).to_bytes();
    let mut bad = ct.clone();
    bad[10] ^= 0xff;
    assert!(Ciphertext::from_bytes(&bad).is_err());
    assert!(matches!(
        Ciphertext::from_bytes(&ct[..40]),
        Err(FheError::Malformed { .. })
    ));
    assert!(matches!(
        elgamal::sum_stored(vec![(0usize, &[0u8; 10][..])]),
        Err(FheError::Malformed { .. })
    ));
}

#[test]
fn decryption_needs_the_gate_for_this_exact_result() {
    let (key, shares) = key_3_of_5();
    let sealed = linear::seal(&Ciphertext::encrypt(&key.public, 7));
    let steward = Steward::new(shares[0].clone());
    // No debit at all.
    let none = Allowed::default();
    assert!(matches!(
        steward.decrypt(&none, "q9", &sealed),
        Err(FheError::NotAuthorized { .. })
    ));
    // A debit for this query, but for another result: the steward checks
    // the digest of the ciphertext it is given, not the digest it is told.
    let other = linear::seal(&Ciphertext::encrypt(&key.public, 7));
    let gate = Allowed {
        debits: vec![("q9".into(), other.digest)],
        ..Default::default()
    };
    let mut lying = sealed.clone();
    lying.digest = other.digest;
    assert!(matches!(
        steward.decrypt(&gate, "q9", &lying),
        Err(FheError::NotAuthorized { .. })
    ));
    assert_eq!(gate.asked.borrow().as_slice(), ["q9"]);
    let ok = Allowed {
        debits: vec![("q9".into(), sealed.digest)],
        ..Default::default()
    };
    assert!(steward.decrypt(&ok, "q9", &sealed).is_ok());
}

#[test]
fn formats_round_trip_and_the_search_range_is_enforced() {
    let (key, shares) = key_3_of_5();
    assert_eq!(CustodianKey::from_bytes(&key.to_bytes()).unwrap(), key);
    assert_eq!(
        PublicKey::from_bytes(&key.public.to_bytes()).unwrap(),
        key.public
    );
    assert_eq!(
        KeyShare::from_bytes(&shares[3].to_bytes()).unwrap(),
        shares[3]
    );
    assert!(
        !format!("{:?}", shares[3]).contains(&format!("{:?}", shares[3].to_bytes())),
        "a share's Debug must not print its secret"
    );
    let ct = Ciphertext::encrypt(&key.public, -12);
    assert_eq!(
        Ciphertext::from_bytes(&ct.to_bytes()).unwrap().to_bytes(),
        ct.to_bytes()
    );
    assert_eq!(
        elgamal::from_stored(&ct.to_stored()).unwrap().to_bytes(),
        ct.to_bytes()
    );
    let sealed = linear::seal(&ct);
    assert_eq!(
        decrypt(&key, &shares, &[0, 1, 2], "q", &sealed, -20, 20).unwrap(),
        -12
    );
    assert!(matches!(
        decrypt(&key, &shares, &[0, 1, 2], "q", &sealed, 0, 1000),
        Err(FheError::OutsideSearchRange { lo: 0, hi: 1000 })
    ));
}

/// Padding: the work (the job's total) is the public size whatever the
/// number of real records, and the stand-ins change nothing in the sum.
#[test]
fn padded_work_is_of_the_public_size_and_sums_only_the_real_records() {
    let (key, shares) = key_3_of_5();
    let bounds = Bounds::new(0, 1).unwrap();
    let stand_in = Ciphertext::encrypt(&key.public, 1).to_stored();
    let layer = LinearLayer::new(key.clone());
    let (lo, hi) = linear::search_range(10, bounds, 0);
    for real in [0usize, 1, 3, 10] {
        let stored: Vec<Vec<u8>> = (0..real)
            .map(|_| Ciphertext::encrypt(&key.public, 1).to_stored())
            .collect();
        let cells: Vec<&[u8]> = stored.iter().map(Vec::as_slice).collect();
        let job = Job::new();
        let padding = Padding {
            to: 10,
            stand_in: Some(&stand_in),
        };
        assert_eq!(padding.stand_ins(&cells).len(), 10 - real);
        let sealed = layer
            .aggregate(&EncryptedOp::Sum, &cells, 0, &job, padding)
            .unwrap();
        assert_eq!(
            job.progress(),
            (10, 10),
            "{real} real records: the work is the public size"
        );
        assert_eq!(
            decrypt(&key, &shares, &[0, 1, 2], "q", &sealed, lo, hi).unwrap(),
            real as i64,
            "the stand-ins (each a 1) are not summed"
        );
    }
}
