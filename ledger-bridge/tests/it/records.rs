//! PatientRecords: versions, grant-gated access with an audit event, and
//! guardian recovery.

use cohort_ledger_bridge::alloy::primitives::{Address, B256, U256, keccak256};
use cohort_ledger_bridge::alloy::sol_types::SolEvent;
use cohort_ledger_bridge::contracts::{CohortAccess, PatientRecords};
use cohort_ledger_bridge::{Account, Target};

use crate::fixture::{Fixture, account, addr, assert_reverts, count_events};

const HOUR: u64 = 3_600;

async fn add_record(
    f: &Fixture,
    patient: &Account,
    content: &str,
    viewers: Vec<cohort_ledger_bridge::alloy::primitives::Address>,
) -> B256 {
    let receipt = f
        .client
        .send(
            patient,
            Target::Records,
            PatientRecords::addHealthRecordCall {
                recordHash: keccak256(content),
                metadata: "Observation".into(),
                authorizedViewers: viewers,
            },
        )
        .await
        .unwrap();
    receipt
        .logs
        .iter()
        .find_map(|l| PatientRecords::RecordAdded::decode_log(&l.log).ok())
        .expect("RecordAdded")
        .data
        .recordId
}

async fn grant(f: &Fixture, patient: &Account, provider: &Account, level: u8) {
    f.client
        .send(
            patient,
            Target::Access,
            CohortAccess::grantAccessCall {
                provider: addr(provider),
                duration: HOUR,
                level,
            },
        )
        .await
        .unwrap();
}

pub async fn records_keep_every_version_and_gate_access(f: &Fixture) {
    f.credential_providers().await;
    let (patient, reader, writer, viewer) = (
        &f.patients[0],
        &f.providers[0],
        &f.providers[1],
        &f.patients[2],
    );
    assert_reverts(
        f.client
            .send(
                &f.outsider,
                Target::Records,
                PatientRecords::addHealthRecordCall {
                    recordHash: keccak256("x"),
                    metadata: String::new(),
                    authorizedViewers: vec![],
                },
            )
            .await,
        "NotAPatient",
    );
    let id = add_record(f, patient, "hba1c 7.1 v1", vec![addr(viewer)]).await;
    let duplicate = f
        .client
        .send(
            patient,
            Target::Records,
            PatientRecords::addHealthRecordCall {
                recordHash: keccak256("hba1c 7.1 v1"),
                metadata: "Observation".into(),
                authorizedViewers: vec![],
            },
        )
        .await;
    assert_reverts(duplicate, "RecordExists");

    let access = PatientRecords::accessPatientRecordCall {
        patient: addr(patient),
        recordId: id,
    };
    assert_reverts(
        f.client.send(reader, Target::Records, access.clone()).await,
        "AccessDenied",
    );
    grant(f, patient, reader, 2).await;
    let receipt = f
        .client
        .send(reader, Target::Records, access.clone())
        .await
        .unwrap();
    let accessed = receipt
        .logs
        .iter()
        .find_map(|l| PatientRecords::RecordAccessed::decode_log(&l.log).ok())
        .expect("an access event for the audit trail");
    assert_eq!(accessed.data.accessor, addr(reader));
    assert!(!accessed.data.emergency);
    // A listed viewer reads without a grant.
    f.client
        .send(viewer, Target::Records, access.clone())
        .await
        .unwrap();

    let update = |hash: &str| PatientRecords::updateHealthRecordCall {
        patient: addr(patient),
        recordId: id,
        newDataHash: keccak256(hash),
    };
    assert_reverts(
        f.client
            .send(reader, Target::Records, update("v2 by reader"))
            .await,
        "AccessDenied",
    );
    grant(f, patient, writer, 3).await;
    let receipt = f
        .client
        .send(writer, Target::Records, update("hba1c 6.8 v2"))
        .await
        .unwrap();
    assert_eq!(
        count_events(&receipt, PatientRecords::RecordUpdated::SIGNATURE_HASH),
        1
    );
    f.client
        .send(patient, Target::Records, update("hba1c 6.5 v3"))
        .await
        .unwrap();
    let wrong_patient = PatientRecords::updateHealthRecordCall {
        patient: addr(&f.patients[1]),
        recordId: id,
        newDataHash: keccak256("v4"),
    };
    assert_reverts(
        f.client.send(patient, Target::Records, wrong_patient).await,
        "NotThePatientOf",
    );

    let versions = f
        .client
        .view(
            Target::Records,
            PatientRecords::versionsOfCall { recordId: id },
        )
        .await
        .unwrap();
    let hashes: Vec<B256> = versions.iter().map(|v| v.dataHash).collect();
    assert_eq!(
        hashes,
        vec![
            keccak256("hba1c 7.1 v1"),
            keccak256("hba1c 6.8 v2"),
            keccak256("hba1c 6.5 v3")
        ],
        "every version is kept, in order"
    );
    assert_eq!(versions[1].author, addr(writer));
    let current = f
        .client
        .view_as(addr(reader), Target::Records, access)
        .await
        .unwrap();
    assert_eq!(
        (current.dataHash, current.version.to::<u64>()),
        (keccak256("hba1c 6.5 v3"), 2)
    );
}

pub async fn a_guardian_recovery_moves_control_and_grants_follow_the_patient(f: &Fixture) {
    f.credential_providers().await;
    let patient = &f.patients[0];
    let guardians: Vec<Account> = (0..3).map(|i| account(&format!("guardian{i}"))).collect();
    let new_key = account("patient0-new-key");
    for a in guardians.iter().chain([&new_key]) {
        f.ledger
            .set_balance(a.address(), crate::fixture::ether(1))
            .await
            .unwrap();
    }
    let id = add_record(f, patient, "record before recovery", vec![]).await;
    let provider = &f.providers[0];
    f.client
        .send(
            patient,
            Target::Access,
            CohortAccess::grantAccessCall {
                provider: addr(provider),
                duration: 86_400,
                level: 2,
            },
        )
        .await
        .unwrap();

    let set = |threshold| CohortAccess::setGuardiansCall {
        guardians: guardians.iter().map(Account::address).collect(),
        threshold,
        backupKey: Default::default(),
        sharesHash: keccak256("shares"),
    };
    for bad in [0, 4] {
        assert_reverts(
            f.client.send(patient, Target::Access, set(bad)).await,
            "InvalidGuardians",
        );
    }
    assert_reverts(
        f.client.send(&f.outsider, Target::Access, set(2)).await,
        "NotAPatient",
    );
    f.client
        .send(patient, Target::Access, set(2))
        .await
        .unwrap();

    macro_rules! open {
        ($who:expr) => {
            f.client.send(
                $who,
                Target::Access,
                CohortAccess::openRecoveryCall {
                    patient: addr(patient),
                },
            )
        };
    }
    assert_reverts(open!(&f.patients[1]).await, "KeyInUse");
    open!(&new_key).await.unwrap();
    assert_reverts(open!(&f.outsider).await, "RecoveryOpen");
    let rid = U256::ZERO;
    // A stolen key cannot swap the guardians while a recovery is open.
    assert_reverts(
        f.client.send(patient, Target::Access, set(2)).await,
        "RecoveryOpen",
    );

    macro_rules! approve {
        ($who:expr) => {
            f.client.send(
                $who,
                Target::Access,
                CohortAccess::approveRecoveryCall {
                    id: rid,
                    attestationHash: keccak256(format!("{} saw the passport", $who.name())),
                },
            )
        };
    }
    macro_rules! complete {
        ($who:expr) => {
            f.client.send(
                $who,
                Target::Access,
                CohortAccess::completeRecoveryCall { id: rid },
            )
        };
    }
    macro_rules! attest {
        ($who:expr) => {
            f.client.send(
                $who,
                Target::Access,
                CohortAccess::attestIdentityCall {
                    id: rid,
                    attestationHash: keccak256("in-person identity check"),
                },
            )
        };
    }
    assert_reverts(approve!(&f.outsider).await, "NotAGuardian");
    approve!(&guardians[0]).await.unwrap();
    assert_reverts(approve!(&guardians[0]).await, "AlreadyApproved");
    assert_reverts(complete!(&new_key).await, "TooFewApprovals");
    approve!(&guardians[2]).await.unwrap();
    assert_reverts(complete!(&new_key).await, "NotAttested");
    // A forged attestation: an account with no credential.
    assert_reverts(attest!(&f.outsider).await, "NotCredentialed");
    attest!(&f.providers[1]).await.unwrap();
    assert_reverts(complete!(&f.outsider).await, "NotTheNewKey");
    let receipt = complete!(&new_key).await.unwrap();
    assert_eq!(
        count_events(&receipt, CohortAccess::ControlRecovered::SIGNATURE_HASH),
        1
    );
    assert_eq!(
        f.client
            .view(
                Target::Access,
                CohortAccess::controllerOfCall {
                    patient: addr(patient)
                }
            )
            .await
            .unwrap(),
        new_key.address()
    );
    assert_eq!(
        f.client
            .view(
                Target::Access,
                CohortAccess::patientOfCall { key: addr(patient) }
            )
            .await
            .unwrap(),
        Address::ZERO,
        "the old key acts for no one"
    );

    // The grant followed the patient: the provider still reads, the old key
    // can neither grant nor revoke, the new key revokes.
    let check = |actor: Address| CohortAccess::checkCall {
        patient: addr(patient),
        actor,
        level: 2,
        purpose: 1,
        kinds: 2,
    };
    assert_eq!(
        f.client
            .view(Target::Access, check(addr(provider)))
            .await
            .unwrap()
            .reason,
        0
    );
    assert_eq!(
        f.client
            .view(Target::Access, check(addr(patient)))
            .await
            .unwrap()
            .reason,
        13
    );
    assert_eq!(
        f.client
            .view(Target::Access, check(new_key.address()))
            .await
            .unwrap()
            .reason,
        0
    );
    let revoke = CohortAccess::revokeAccessCall {
        patient: addr(patient),
        provider: addr(provider),
    };
    assert_reverts(
        f.client.send(patient, Target::Access, revoke.clone()).await,
        "NotADelegate",
    );
    assert_reverts(
        f.client
            .send(
                patient,
                Target::Access,
                CohortAccess::grantAccessCall {
                    provider: addr(provider),
                    duration: 86_400,
                    level: 3,
                },
            )
            .await,
        "NotAPatient",
    );
    f.client
        .send(&new_key, Target::Access, revoke)
        .await
        .unwrap();
    assert_ne!(
        f.client
            .view(Target::Access, check(addr(provider)))
            .await
            .unwrap()
            .reason,
        0
    );

    let update = PatientRecords::updateHealthRecordCall {
        patient: addr(patient),
        recordId: id,
        newDataHash: keccak256("after recovery"),
    };
    assert_reverts(
        f.client
            .send(patient, Target::Records, update.clone())
            .await,
        "AccessDenied",
    );
    f.client
        .send(&new_key, Target::Records, update)
        .await
        .unwrap();
    // The new key adds records for the same patient; the old key no longer acts.
    let added = add_record(f, &new_key, "record after recovery", vec![]).await;
    let record = f
        .client
        .view(
            Target::Records,
            PatientRecords::recordOfCall { recordId: added },
        )
        .await
        .unwrap();
    assert_eq!(record.patient, addr(patient));
    let by_old_key = f
        .client
        .send(
            patient,
            Target::Records,
            PatientRecords::addHealthRecordCall {
                recordHash: keccak256("by the lost key"),
                metadata: String::new(),
                authorizedViewers: vec![],
            },
        )
        .await;
    assert_reverts(by_old_key, "NotAPatient");

    // Step 5: only an auditor reviews; found unjustified, nobody acts.
    let review = CohortAccess::reviewRecoveryCall {
        id: rid,
        justified: false,
        findingHash: keccak256("guardians were coerced"),
    };
    assert_reverts(
        f.client
            .send(&f.outsider, Target::Access, review.clone())
            .await,
        "AccessControlUnauthorizedAccount",
    );
    f.client
        .send(&f.auditor, Target::Access, review.clone())
        .await
        .unwrap();
    assert_reverts(
        f.client.send(&f.auditor, Target::Access, review).await,
        "AlreadyReviewed",
    );
    assert_eq!(
        f.client
            .view(Target::Access, check(new_key.address()))
            .await
            .unwrap()
            .reason,
        14
    );
    assert_eq!(
        f.client
            .view(Target::Access, check(addr(patient)))
            .await
            .unwrap()
            .reason,
        14
    );

    // A further recovery may be opened; an outsider cannot cancel it, an
    // auditor can.
    let third = account("patient0-third-key");
    f.ledger
        .set_balance(third.address(), crate::fixture::ether(1))
        .await
        .unwrap();
    open!(&third).await.unwrap();
    let cancel = CohortAccess::cancelRecoveryCall { id: U256::from(1) };
    assert_reverts(
        f.client
            .send(&f.outsider, Target::Access, cancel.clone())
            .await,
        "NotAllowedToCancel",
    );
    f.client
        .send(&f.auditor, Target::Access, cancel.clone())
        .await
        .unwrap();
    assert_reverts(
        f.client.send(&f.auditor, Target::Access, cancel).await,
        "RecoveryNotOpen",
    );
}

pub async fn the_patient_lists_and_removes_viewers(f: &Fixture) {
    let (patient, viewer) = (&f.patients[0], &f.patients[2]);
    let id = add_record(f, patient, "psa 1.2", vec![]).await;
    let access = PatientRecords::accessPatientRecordCall {
        patient: addr(patient),
        recordId: id,
    };
    assert_reverts(
        f.client.send(viewer, Target::Records, access.clone()).await,
        "AccessDenied",
    );
    let authorize = |who| PatientRecords::authorizeViewerCall {
        recordId: id,
        viewer: who,
    };
    assert_reverts(
        f.client
            .send(&f.outsider, Target::Records, authorize(addr(viewer)))
            .await,
        "NotController",
    );
    assert_reverts(
        f.client
            .send(patient, Target::Records, authorize(Default::default()))
            .await,
        "ZeroAddress",
    );
    let receipt = f
        .client
        .send(patient, Target::Records, authorize(addr(viewer)))
        .await
        .unwrap();
    assert_eq!(
        count_events(&receipt, PatientRecords::ViewerAuthorized::SIGNATURE_HASH),
        1
    );
    f.client
        .send(viewer, Target::Records, access.clone())
        .await
        .unwrap();

    let remove = PatientRecords::removeViewerCall {
        recordId: id,
        viewer: addr(viewer),
    };
    assert_reverts(
        f.client
            .send(&f.outsider, Target::Records, remove.clone())
            .await,
        "NotController",
    );
    let receipt = f
        .client
        .send(patient, Target::Records, remove)
        .await
        .unwrap();
    assert_eq!(
        count_events(&receipt, PatientRecords::ViewerRemoved::SIGNATURE_HASH),
        1
    );
    assert_reverts(
        f.client.send(viewer, Target::Records, access).await,
        "AccessDenied",
    );
}

pub async fn anchored_batches_batched_reads_and_updates(f: &Fixture) {
    use cohort_ledger_bridge::merkle::{LeafTree, record_leaf, verify};
    f.credential_providers().await;
    let (patient, provider) = (&f.patients[0], &f.providers[0]);
    // The custodian anchors a batch: one root for every version.
    let ids: Vec<B256> = (0..5)
        .map(|i| keccak256(format!("Observation/{i}")))
        .collect();
    let hashes: Vec<B256> = (0..5).map(|i| keccak256(format!("bytes {i}"))).collect();
    let leaves: Vec<B256> = ids
        .iter()
        .zip(&hashes)
        .map(|(id, h)| record_leaf(*id, 1, *h))
        .collect();
    let tree = LeafTree::new(leaves.clone()).unwrap();
    let anchor = PatientRecords::anchorRecordsCall {
        root: tree.root(),
        count: 5,
    };
    assert_reverts(
        f.client
            .send(&f.outsider, Target::Records, anchor.clone())
            .await,
        "NotTheEngine",
    );
    let receipt = f
        .client
        .send(&f.engine, Target::Records, anchor)
        .await
        .unwrap();
    assert_eq!(
        count_events(&receipt, PatientRecords::RecordsAnchored::SIGNATURE_HASH),
        1
    );
    let stored = f
        .client
        .view(
            Target::Records,
            PatientRecords::anchorOfCall {
                batch: cohort_ledger_bridge::alloy::primitives::U256::ZERO,
            },
        )
        .await
        .unwrap();
    assert_eq!(stored.root, tree.root());
    for leaf in &leaves {
        assert!(verify(stored.root, *leaf, &tree.proof(*leaf).unwrap()));
    }
    assert!(!verify(
        stored.root,
        record_leaf(ids[0], 1, keccak256("tampered")),
        &tree.proof(leaves[0]).unwrap()
    ));
    assert_reverts(
        f.client
            .send(
                &f.engine,
                Target::Records,
                PatientRecords::anchorRecordsCall {
                    root: B256::ZERO,
                    count: 1,
                },
            )
            .await,
        "EmptyBatch",
    );

    // A batched read, as the reader, leaves one event naming every record.
    let read = PatientRecords::accessPatientRecordsCall {
        patient: addr(patient),
        recordIds: ids.clone(),
        kinds: 2,
        purpose: 1,
    };
    assert_reverts(
        f.client.send(provider, Target::Records, read.clone()).await,
        "Denied",
    );
    grant(f, patient, provider, 3).await;
    let receipt = f
        .client
        .send(provider, Target::Records, read.clone())
        .await
        .unwrap();
    let accessed = receipt
        .logs
        .iter()
        .find_map(|l| PatientRecords::RecordsAccessed::decode_log(&l.log).ok())
        .expect("the read's trace");
    assert_eq!(accessed.data.recordIds, ids);
    assert!(!accessed.data.emergency);
    // The patient reads their own; another patient does not.
    f.client
        .send(patient, Target::Records, read.clone())
        .await
        .unwrap();
    assert_reverts(
        f.client.send(&f.patients[1], Target::Records, read).await,
        "Denied",
    );

    // A provider with write access adds versions, registering the records.
    let update = PatientRecords::updateHealthRecordsCall {
        patient: addr(patient),
        recordIds: ids[..2].to_vec(),
        newDataHashes: vec![keccak256("v2 a"), keccak256("v2 b")],
        kinds: 2,
        purpose: 1,
    };
    let receipt = f
        .client
        .send(provider, Target::Records, update.clone())
        .await
        .unwrap();
    assert_eq!(
        count_events(&receipt, PatientRecords::RecordUpdated::SIGNATURE_HASH),
        2
    );
    let versions = f
        .client
        .view(
            Target::Records,
            PatientRecords::versionsOfCall { recordId: ids[0] },
        )
        .await
        .unwrap();
    assert_eq!(versions.last().unwrap().dataHash, keccak256("v2 a"));
    assert_reverts(
        f.client
            .send(
                provider,
                Target::Records,
                PatientRecords::updateHealthRecordsCall {
                    patient: addr(&f.patients[1]),
                    recordIds: ids[..1].to_vec(),
                    newDataHashes: vec![keccak256("x")],
                    kinds: 2,
                    purpose: 1,
                },
            )
            .await,
        "Denied",
    );
    let mismatched = PatientRecords::updateHealthRecordsCall {
        patient: addr(patient),
        recordIds: ids[..2].to_vec(),
        newDataHashes: vec![keccak256("one")],
        kinds: 2,
        purpose: 1,
    };
    assert_reverts(
        f.client.send(provider, Target::Records, mismatched).await,
        "LengthMismatch",
    );
    // Revoked: the next write is refused.
    f.client
        .send(
            patient,
            Target::Access,
            CohortAccess::revokeAccessCall {
                patient: addr(patient),
                provider: addr(provider),
            },
        )
        .await
        .unwrap();
    assert_reverts(
        f.client.send(provider, Target::Records, update).await,
        "Denied",
    );
}

pub async fn the_custodian_anchors_its_logs_keyed_heads_which_only_grow(f: &Fixture) {
    let anchor = |entries: u64, head: B256| PatientRecords::anchorLogCall {
        log: 0,
        entries,
        head,
    };
    let head = keccak256("hmac of entry 10");
    assert_reverts(
        f.client
            .send(&f.outsider, Target::Records, anchor(10, head))
            .await,
        "NotTheEngine",
    );
    let receipt = f
        .client
        .send(&f.engine, Target::Records, anchor(10, head))
        .await
        .unwrap();
    assert_eq!(
        count_events(&receipt, PatientRecords::LogAnchored::SIGNATURE_HASH),
        1
    );
    let stored = f
        .client
        .view(Target::Records, PatientRecords::logAnchorOfCall { log: 0 })
        .await
        .unwrap();
    assert_eq!((stored.entries, stored.head), (10, head));
    // A shorter log, or an empty head, is refused: a log only grows.
    assert_reverts(
        f.client
            .send(&f.engine, Target::Records, anchor(9, keccak256("x")))
            .await,
        "LogShrank",
    );
    assert_reverts(
        f.client
            .send(&f.engine, Target::Records, anchor(11, B256::ZERO))
            .await,
        "LogShrank",
    );
    // Another log is anchored on its own.
    let other = PatientRecords::anchorLogCall {
        log: 1,
        entries: 3,
        head: keccak256("index"),
    };
    f.client
        .send(&f.engine, Target::Records, other)
        .await
        .unwrap();
}
