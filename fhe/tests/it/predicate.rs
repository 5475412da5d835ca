//! The tfhe layer on a handful of records (tfhe is slow by design; the
//! heavy runs are in benches/): proven encryption, a predicate count with
//! noise under encryption, the custodian's gated decryption, and what is
//! refused.

use std::sync::OnceLock;

use cohort_fhe::predicate::{self, KeySet, PredicateLayer};
use cohort_fhe::range::Bounds;
use cohort_fhe::{
    Comparison, DecryptionGate, EncryptedAggregate, EncryptedOp, FheError, Job, Layer, Padding,
};

fn keys() -> &'static KeySet {
    static KEYS: OnceLock<KeySet> = OnceLock::new();
    KEYS.get_or_init(|| predicate::generate().expect("tfhe keys"))
}

/// The ledger's test double: authorises one digest for one query.
struct Debit(&'static str, [u8; 32]);

impl DecryptionGate for Debit {
    fn authorize(&self, query_id: &str, digest: &[u8; 32]) -> cohort_fhe::Result<()> {
        if query_id == self.0 && *digest == self.1 {
            Ok(())
        } else {
            Err(FheError::NotAuthorized {
                query_id: query_id.into(),
                why: "no committed debit".into(),
            })
        }
    }
}

fn stored(values: &[i64], bounds: Bounds) -> Vec<Vec<u8>> {
    let k = keys();
    values
        .iter()
        .enumerate()
        .map(|(i, &v)| {
            let context = format!("study-1/hba1c/patient-{i}");
            let submission =
                predicate::encrypt_proven(&k.public, v, bounds, context.as_bytes()).unwrap();
            predicate::verify(
                &k.public,
                &k.server,
                &submission,
                bounds,
                context.as_bytes(),
            )
            .unwrap()
        })
        .collect()
}

#[test]
fn a_predicate_count_with_noise_decrypts_only_through_the_gate() {
    let bounds = Bounds::new(20, 200).unwrap();
    // 64 and 65 straddle the constant; 20 and 200 are the bounds.
    let values = [64, 65, 20, 200];
    let cells = stored(&values, bounds);
    let refs: Vec<&[u8]> = cells.iter().map(Vec::as_slice).collect();
    let layer = PredicateLayer::new(keys().server.clone());
    assert_eq!(layer.layer(), Layer::Tfhe);
    tfhe::reset_pbs_count();
    let op = EncryptedOp::CountWhere {
        cmp: Comparison::Ge,
        constant: 65,
    };
    let sealed = layer
        .aggregate(&op, &refs, -5, &Job::new(), Padding::NONE)
        .unwrap();
    assert!(
        tfhe::get_pbs_count() > 0,
        "the comparison must run under encryption"
    );
    let custodian = &keys().client;
    assert!(matches!(
        custodian.decrypt(&Debit("q1", [0; 32]), "q1", &sealed),
        Err(FheError::NotAuthorized { .. })
    ));
    assert!(matches!(
        custodian.decrypt(&Debit("q2", sealed.digest), "q1", &sealed),
        Err(FheError::NotAuthorized { .. })
    ));
    // Two of four are >= 65; the noise -5 takes the count below zero.
    assert_eq!(
        custodian
            .decrypt(&Debit("q1", sealed.digest), "q1", &sealed)
            .unwrap(),
        2 - 5
    );

    let lt = layer
        .aggregate(
            &EncryptedOp::CountWhere {
                cmp: Comparison::Lt,
                constant: 65,
            },
            &refs,
            3,
            &Job::new(),
            Padding::NONE,
        )
        .unwrap();
    assert_eq!(
        custodian
            .decrypt(&Debit("q3", lt.digest), "q3", &lt)
            .unwrap(),
        2 + 3
    );
    // Constants outside the type's range are decided without bootstrapping.
    let all = layer
        .aggregate(
            &EncryptedOp::CountWhere {
                cmp: Comparison::Ge,
                constant: -1,
            },
            &refs,
            0,
            &Job::new(),
            Padding::NONE,
        )
        .unwrap();
    assert_eq!(
        custodian
            .decrypt(&Debit("q4", all.digest), "q4", &all)
            .unwrap(),
        4
    );
}

#[test]
fn out_of_range_wrong_context_and_tampered_submissions_are_refused() {
    let k = keys();
    let bounds = Bounds::new(20, 200).unwrap();
    assert!(matches!(
        predicate::encrypt_proven(&k.public, 201, bounds, b"c"),
        Err(FheError::OutOfRange { value: 201, .. })
    ));
    assert!(matches!(
        predicate::encrypt_proven(&k.public, 1, Bounds::new(0, 70000).unwrap(), b"c"),
        Err(FheError::InvalidBounds { .. })
    ));
    let submission = predicate::encrypt_proven(&k.public, 70, bounds, b"patient-1").unwrap();
    // The proof is bound to its context: replaying it for another patient fails.
    assert!(matches!(
        predicate::verify(&k.public, &k.server, &submission, bounds, b"patient-2"),
        Err(FheError::RangeProof { .. })
    ));
    // A 16-bit column refuses an 8-bit value and vice versa.
    assert!(matches!(
        predicate::verify(
            &k.public,
            &k.server,
            &submission,
            Bounds::new(0, 1000).unwrap(),
            b"patient-1"
        ),
        Err(FheError::Malformed { .. })
    ));
    // Flipped bytes deep in the list break its encoding or its proof.
    let mut tampered = submission.clone();
    let at = tampered.len() - 100;
    tampered[at] ^= 0x55;
    assert!(predicate::verify(&k.public, &k.server, &tampered, bounds, b"patient-1").is_err());
    assert!(matches!(
        predicate::verify(
            &k.public,
            &k.server,
            &submission[..50],
            bounds,
            b"patient-1"
        ),
        Err(FheError::Malformed { .. })
    ));
    assert!(predicate::verify(&k.public, &k.server, &submission, bounds, b"patient-1").is_ok());
}

#[test]
fn a_cancelled_job_returns_no_result() {
    let bounds = Bounds::new(0, 255).unwrap();
    let cells = stored(&[1, 2], bounds);
    let refs: Vec<&[u8]> = cells.iter().map(Vec::as_slice).collect();
    let job = Job::new();
    job.cancel();
    let layer = PredicateLayer::new(keys().server.clone());
    match layer.aggregate(
        &EncryptedOp::CountWhere {
            cmp: Comparison::Ge,
            constant: 2,
        },
        &refs,
        0,
        &job,
        Padding::NONE,
    ) {
        Err(FheError::Cancelled { total: 2, .. }) => {}
        other => panic!("a cancelled job produced {other:?}"),
    }
    let sum = layer.aggregate(&EncryptedOp::Sum, &refs, 0, &Job::new(), Padding::NONE);
    assert!(
        matches!(sum, Err(FheError::Malformed { .. })),
        "a sum must be routed to ElGamal"
    );
}

#[test]
fn keys_round_trip_through_their_encodings() {
    let k = keys();
    let public = predicate::PublicParams::from_bytes(&k.public.to_bytes().unwrap()).unwrap();
    let client = predicate::CustodianKey::from_bytes(&k.client.to_bytes().unwrap()).unwrap();
    assert_eq!(format!("{client:?}"), "CustodianKey(<redacted>)");
    let bounds = Bounds::new(0, 1).unwrap();
    let submission = predicate::encrypt_proven(&public, 1, bounds, b"c").unwrap();
    let cell = predicate::verify(&public, &k.server, &submission, bounds, b"c").unwrap();
    let sealed = PredicateLayer::new(k.server.clone())
        .aggregate(
            &EncryptedOp::CountWhere {
                cmp: Comparison::Eq,
                constant: 1,
            },
            &[&cell],
            0,
            &Job::new(),
            Padding::NONE,
        )
        .unwrap();
    assert_eq!(
        client
            .decrypt(&Debit("q", sealed.digest), "q", &sealed)
            .unwrap(),
        1
    );
}
