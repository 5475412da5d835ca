//! PatientRecords: versions, grant-gated access with an audit event, and
//! guardian recovery.

use cohort_ledger_bridge::alloy::primitives::{B256, keccak256};
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

pub async fn guardians_move_record_control_to_a_new_key(f: &Fixture) {
    let patient = &f.patients[0];
    let guardians: Vec<Account> = (0..3).map(|i| account(&format!("guardian{i}"))).collect();
    for g in &guardians {
        f.ledger
            .set_balance(g.address(), crate::fixture::ether(1))
            .await
            .unwrap();
    }
    let new_key = account("patient0-new-key");
    f.ledger
        .set_balance(new_key.address(), crate::fixture::ether(1))
        .await
        .unwrap();
    let id = add_record(f, patient, "record before recovery", vec![]).await;

    let set = |threshold| PatientRecords::setGuardiansCall {
        guardians: guardians.iter().map(Account::address).collect(),
        threshold,
    };
    assert_reverts(
        f.client.send(patient, Target::Records, set(0)).await,
        "InvalidGuardians",
    );
    assert_reverts(
        f.client.send(patient, Target::Records, set(4)).await,
        "InvalidGuardians",
    );
    f.client
        .send(patient, Target::Records, set(2))
        .await
        .unwrap();

    let approve = |key: &Account| PatientRecords::approveRecoveryCall {
        patient: addr(patient),
        newKey: key.address(),
    };
    assert_reverts(
        f.client
            .send(&f.outsider, Target::Records, approve(&new_key))
            .await,
        "NotAGuardian",
    );
    let patient_as_key = f
        .client
        .send(&guardians[0], Target::Records, approve(&f.patients[1]))
        .await;
    assert_reverts(patient_as_key, "KeyInUse");
    f.client
        .send(&guardians[0], Target::Records, approve(&new_key))
        .await
        .unwrap();
    assert_reverts(
        f.client
            .send(&guardians[0], Target::Records, approve(&new_key))
            .await,
        "AlreadyApproved",
    );
    let controller = || {
        f.client.view(
            Target::Records,
            PatientRecords::controllerOfCall {
                patient: addr(patient),
            },
        )
    };
    assert_eq!(
        controller().await.unwrap(),
        addr(patient),
        "one approval is not enough"
    );
    let receipt = f
        .client
        .send(&guardians[2], Target::Records, approve(&new_key))
        .await
        .unwrap();
    assert_eq!(
        count_events(&receipt, PatientRecords::ControlRecovered::SIGNATURE_HASH),
        1
    );
    assert_eq!(controller().await.unwrap(), new_key.address());

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
