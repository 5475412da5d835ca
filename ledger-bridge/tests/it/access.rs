//! CohortAccess: roles, credentials, grants, delegation, emergencies.

use cohort_ledger_bridge::alloy::primitives::{B256, keccak256};
use cohort_ledger_bridge::alloy::sol_types::SolEvent;
use cohort_ledger_bridge::contracts::CohortAccess;
use cohort_ledger_bridge::{Account, Role, Target};

use crate::fixture::{Fixture, addr, assert_reverts, count_events};

const SUMMARY: u8 = 1;
const READ: u8 = 2;
const WRITE: u8 = 3;
const HOUR: u64 = 3_600;

async fn has_access(f: &Fixture, patient: usize, provider: usize, level: u8) -> bool {
    f.client
        .view(
            Target::Access,
            CohortAccess::hasAccessCall {
                patient: addr(&f.patients[patient]),
                provider: addr(&f.providers[provider]),
                level,
            },
        )
        .await
        .unwrap()
}

pub async fn only_the_admin_grants_roles(f: &Fixture) {
    let outsider = addr(&f.outsider);
    assert!(!f.client.has_role(Role::Researcher, outsider).await.unwrap());
    let by_outsider = f
        .client
        .grant_role(&f.outsider, Role::Researcher, outsider)
        .await;
    assert_reverts(by_outsider, "AccessControlUnauthorizedAccount");
    let receipt = f
        .client
        .grant_role(&f.admin, Role::Researcher, outsider)
        .await
        .unwrap();
    assert_eq!(
        count_events(&receipt, CohortAccess::RoleGranted::SIGNATURE_HASH),
        1
    );
    assert!(f.client.has_role(Role::Researcher, outsider).await.unwrap());
    f.client
        .send(
            &f.admin,
            Target::Access,
            CohortAccess::revokeRoleCall {
                role: Role::Researcher.id(),
                account: outsider,
            },
        )
        .await
        .unwrap();
    assert!(!f.client.has_role(Role::Researcher, outsider).await.unwrap());
    // An account may give up its own role, and only its own.
    f.client
        .grant_role(&f.admin, Role::Researcher, outsider)
        .await
        .unwrap();
    let renounce = |account| CohortAccess::renounceRoleCall {
        role: Role::Researcher.id(),
        callerConfirmation: account,
    };
    assert_reverts(
        f.client
            .send(&f.admin, Target::Access, renounce(outsider))
            .await,
        "AccessControlBadConfirmation",
    );
    let receipt = f
        .client
        .send(&f.outsider, Target::Access, renounce(outsider))
        .await
        .unwrap();
    assert_eq!(
        count_events(&receipt, CohortAccess::RoleRevoked::SIGNATURE_HASH),
        1
    );
    assert!(!f.client.has_role(Role::Researcher, outsider).await.unwrap());
    // The role ids are the contract's.
    let patient_role: B256 = f
        .client
        .view(Target::Access, CohortAccess::PATIENT_ROLECall {})
        .await
        .unwrap();
    assert_eq!(patient_role, Role::Patient.id());
}

pub async fn credentials_are_attested_expire_and_are_revoked(f: &Fixture) {
    let provider = addr(&f.providers[0]);
    let credentialed = || {
        f.client.view(
            Target::Access,
            CohortAccess::isCredentialedCall { provider },
        )
    };
    assert!(!credentialed().await.unwrap());
    let until = f.now().await + 2 * HOUR;
    let attest = CohortAccess::attestCredentialCall {
        provider,
        licenseHash: keccak256("licence 1"),
        expiresAt: until,
    };
    assert_reverts(
        f.client
            .send(&f.outsider, Target::Access, attest.clone())
            .await,
        "AccessControlUnauthorizedAccount",
    );
    let not_provider = CohortAccess::attestCredentialCall {
        provider: addr(&f.outsider),
        ..attest.clone()
    };
    assert_reverts(
        f.client.send(&f.issuer, Target::Access, not_provider).await,
        "NotAProvider",
    );
    let receipt = f
        .client
        .send(&f.issuer, Target::Access, attest.clone())
        .await
        .unwrap();
    assert_eq!(
        count_events(&receipt, CohortAccess::CredentialAttested::SIGNATURE_HASH),
        1
    );
    assert!(credentialed().await.unwrap());

    f.ledger.increase_time(2 * HOUR).await.unwrap();
    assert!(!credentialed().await.unwrap(), "the credential expired");

    let attest = CohortAccess::attestCredentialCall {
        expiresAt: f.now().await + HOUR,
        ..attest
    };
    f.client
        .send(&f.issuer, Target::Access, attest)
        .await
        .unwrap();
    assert!(credentialed().await.unwrap());
    assert_reverts(
        f.client
            .send(
                &f.outsider,
                Target::Access,
                CohortAccess::revokeCredentialCall { provider },
            )
            .await,
        "NotIssuerOfCredential",
    );
    f.client
        .send(
            &f.issuer,
            Target::Access,
            CohortAccess::revokeCredentialCall { provider },
        )
        .await
        .unwrap();
    assert!(!credentialed().await.unwrap());
}

pub async fn jurisdictions_are_attested_by_the_issuer_and_restrictions_set_by_the_patient(
    f: &Fixture,
) {
    let provider = addr(&f.providers[0]);
    let de: [u8; 8] = *b"DE\0\0\0\0\0\0";
    let attest = CohortAccess::attestJurisdictionCall {
        provider,
        jurisdiction: de.into(),
    };
    // Only the issuer of the provider's credential attests where they practise.
    assert_reverts(
        f.client
            .send(&f.issuer, Target::Access, attest.clone())
            .await,
        "NotIssuerOfCredential",
    );
    f.credential_providers().await;
    assert_reverts(
        f.client
            .send(&f.outsider, Target::Access, attest.clone())
            .await,
        "NotIssuerOfCredential",
    );
    let receipt = f
        .client
        .send(&f.issuer, Target::Access, attest)
        .await
        .unwrap();
    assert_eq!(
        count_events(&receipt, CohortAccess::JurisdictionAttested::SIGNATURE_HASH),
        1
    );
    let attested = f
        .client
        .view(
            Target::Access,
            CohortAccess::jurisdictionOfCall { provider },
        )
        .await
        .unwrap();
    assert_eq!(attested.0, de);
    // A patient sets their own restriction; no one else has one to set.
    let restrict = |restrictions| CohortAccess::setGeoRestrictionCall { restrictions };
    assert_reverts(
        f.client
            .send(&f.outsider, Target::Access, restrict(1))
            .await,
        "NotAPatient",
    );
    assert_reverts(
        f.client
            .send(&f.patients[0], Target::Access, restrict(4))
            .await,
        "InvalidRestrictions",
    );
    f.client
        .send(&f.patients[0], Target::Access, restrict(3))
        .await
        .unwrap();
    let patient = addr(&f.patients[0]);
    let bits = f
        .client
        .view(
            Target::Access,
            CohortAccess::geoRestrictionOfCall { patient },
        )
        .await
        .unwrap();
    assert_eq!(bits, 3);
}

pub async fn grants_have_levels_expire_and_are_revoked(f: &Fixture) {
    f.credential_providers().await;
    let (patient, provider) = (&f.patients[0], addr(&f.providers[0]));
    assert!(!has_access(f, 0, 0, READ).await);
    let grant = |duration, level| CohortAccess::grantAccessCall {
        provider,
        duration,
        level,
    };
    assert_reverts(
        f.client.send(patient, Target::Access, grant(0, READ)).await,
        "InvalidDuration",
    );
    assert_reverts(
        f.client
            .send(patient, Target::Access, grant(367 * 86_400, READ))
            .await,
        "InvalidDuration",
    );
    assert_reverts(
        f.client.send(patient, Target::Access, grant(HOUR, 0)).await,
        "InvalidLevel",
    );
    assert_reverts(
        f.client.send(patient, Target::Access, grant(HOUR, 4)).await,
        "InvalidLevel",
    );
    assert_reverts(
        f.client
            .send(&f.outsider, Target::Access, grant(HOUR, READ))
            .await,
        "NotAPatient",
    );
    let to_outsider = CohortAccess::grantAccessCall {
        provider: addr(&f.outsider),
        duration: HOUR,
        level: READ,
    };
    assert_reverts(
        f.client.send(patient, Target::Access, to_outsider).await,
        "NotAProvider",
    );

    let receipt = f
        .client
        .send(patient, Target::Access, grant(HOUR, READ))
        .await
        .unwrap();
    assert_eq!(
        count_events(&receipt, CohortAccess::AccessGranted::SIGNATURE_HASH),
        1
    );
    assert!(has_access(f, 0, 0, READ).await);
    assert!(
        !has_access(f, 0, 0, WRITE).await,
        "read does not include write"
    );
    assert!(
        !has_access(f, 1, 0, READ).await,
        "another patient's records"
    );
    assert!(!has_access(f, 0, 1, READ).await, "another provider");

    f.ledger.increase_time(HOUR).await.unwrap();
    assert!(
        !has_access(f, 0, 0, READ).await,
        "expired exactly at its end"
    );

    f.client
        .send(patient, Target::Access, grant(HOUR, WRITE))
        .await
        .unwrap();
    assert!(has_access(f, 0, 0, WRITE).await && has_access(f, 0, 0, READ).await);
    let revoke = CohortAccess::revokeAccessCall {
        patient: addr(patient),
        provider,
    };
    assert_reverts(
        f.client
            .send(&f.outsider, Target::Access, revoke.clone())
            .await,
        "NotADelegate",
    );
    let receipt = f
        .client
        .send(patient, Target::Access, revoke.clone())
        .await
        .unwrap();
    assert_eq!(
        count_events(&receipt, CohortAccess::AccessRevoked::SIGNATURE_HASH),
        1
    );
    assert!(!has_access(f, 0, 0, READ).await);
    assert_reverts(
        f.client.send(patient, Target::Access, revoke).await,
        "NoSuchGrant",
    );
}

pub async fn delegates_grant_within_the_patients_rights(f: &Fixture) {
    f.credential_providers().await;
    let (patient, delegate, provider) = (&f.patients[0], &f.patients[1], addr(&f.providers[0]));
    let grant_for = |duration, level| CohortAccess::grantAccessForCall {
        patient: addr(patient),
        provider,
        duration,
        level,
    };
    assert_reverts(
        f.client
            .send(delegate, Target::Access, grant_for(HOUR, READ))
            .await,
        "NotADelegate",
    );
    f.client
        .send(
            patient,
            Target::Access,
            CohortAccess::setDelegateCall {
                delegate: addr(delegate),
                maxLevel: READ,
                duration: 24 * HOUR,
            },
        )
        .await
        .unwrap();
    assert_reverts(
        f.client
            .send(delegate, Target::Access, grant_for(HOUR, WRITE))
            .await,
        "ExceedsDelegation",
    );
    assert_reverts(
        f.client
            .send(delegate, Target::Access, grant_for(25 * HOUR, READ))
            .await,
        "ExceedsDelegation",
    );
    let receipt = f
        .client
        .send(delegate, Target::Access, grant_for(HOUR, READ))
        .await
        .unwrap();
    let granted = receipt
        .logs
        .iter()
        .find_map(|l| CohortAccess::AccessGranted::decode_log(&l.log).ok())
        .unwrap();
    assert_eq!(granted.data.patient, addr(patient));
    assert_eq!(granted.data.grantedBy, addr(delegate));
    assert!(has_access(f, 0, 0, READ).await);
    // Limited to payment, for conditions: within the delegation too.
    let receipt = f
        .client
        .send(
            delegate,
            Target::Access,
            CohortAccess::grantAccessForScopedCall {
                patient: addr(patient),
                provider,
                duration: HOUR,
                level: SUMMARY,
                purposes: 2,
                kinds: 4,
            },
        )
        .await
        .unwrap();
    let granted = receipt
        .logs
        .iter()
        .find_map(|l| CohortAccess::AccessGranted::decode_log(&l.log).ok())
        .unwrap();
    assert_eq!(
        (
            granted.data.level,
            granted.data.purposes,
            granted.data.kinds
        ),
        (SUMMARY, 2, 4)
    );

    f.client
        .send(
            patient,
            Target::Access,
            CohortAccess::revokeDelegateCall {
                delegate: addr(delegate),
            },
        )
        .await
        .unwrap();
    assert_reverts(
        f.client
            .send(delegate, Target::Access, grant_for(HOUR, READ))
            .await,
        "NotADelegate",
    );
}

pub async fn emergency_access_expires_and_is_reviewed(f: &Fixture) {
    let (patient, provider) = (addr(&f.patients[0]), &f.providers[0]);
    let open = CohortAccess::emergencyAccessCall {
        patient,
        reasonHash: keccak256("unconscious in the ER"),
    };
    assert_reverts(
        f.client.send(provider, Target::Access, open.clone()).await,
        "NotCredentialed",
    );
    f.credential_providers().await;
    assert_reverts(
        f.client.send(provider, Target::Access, open.clone()).await,
        "NotEmergencyProvider",
    );
    f.client
        .grant_role(&f.admin, Role::Emergency, addr(provider))
        .await
        .unwrap();
    let receipt = f.client.send(provider, Target::Access, open).await.unwrap();
    let opened = receipt
        .logs
        .iter()
        .find_map(|l| CohortAccess::EmergencyAccessed::decode_log(&l.log).ok())
        .expect("a notification event");
    assert_eq!(opened.data.provider, addr(provider));
    let pending = || {
        f.client
            .view(Target::Access, CohortAccess::pendingReviewsCall {})
    };
    assert_eq!(pending().await.unwrap().to::<u64>(), 1);
    assert!(
        has_access(f, 0, 0, READ).await,
        "read access without a grant"
    );
    assert!(!has_access(f, 0, 0, WRITE).await, "an override reads only");
    assert!(!has_access(f, 0, 1, READ).await);

    f.ledger.increase_time(24 * HOUR).await.unwrap();
    assert!(
        !has_access(f, 0, 0, READ).await,
        "the override expired on its own"
    );

    let review = CohortAccess::reviewEmergencyCall {
        id: opened.data.id,
        justified: true,
        findingHash: keccak256("reviewed: justified"),
    };
    assert_reverts(
        f.client
            .send(&f.outsider, Target::Access, review.clone())
            .await,
        "AccessControlUnauthorizedAccount",
    );
    let receipt = f
        .client
        .send(&f.auditor, Target::Access, review.clone())
        .await
        .unwrap();
    assert_eq!(
        count_events(&receipt, CohortAccess::EmergencyReviewed::SIGNATURE_HASH),
        1
    );
    assert_eq!(pending().await.unwrap().to::<u64>(), 0);
    assert_reverts(
        f.client.send(&f.auditor, Target::Access, review).await,
        "AlreadyReviewed",
    );
}

pub async fn the_admin_sets_the_emergency_duration_within_a_week(f: &Fixture) {
    let set = |duration| CohortAccess::setEmergencyDurationCall { duration };
    assert_reverts(
        f.client.send(&f.outsider, Target::Access, set(HOUR)).await,
        "AccessControlUnauthorizedAccount",
    );
    for bad in [0, 7 * 24 * HOUR + 1] {
        assert_reverts(
            f.client.send(&f.admin, Target::Access, set(bad)).await,
            "InvalidDuration",
        );
    }
    let receipt = f
        .client
        .send(&f.admin, Target::Access, set(HOUR))
        .await
        .unwrap();
    assert_eq!(
        count_events(&receipt, CohortAccess::EmergencyDurationSet::SIGNATURE_HASH),
        1
    );
    // An override opened now lasts the new hour.
    f.credential_providers().await;
    f.client
        .grant_role(&f.admin, Role::Emergency, addr(&f.providers[0]))
        .await
        .unwrap();
    let open = CohortAccess::emergencyAccessCall {
        patient: addr(&f.patients[0]),
        reasonHash: keccak256("stroke"),
    };
    f.client
        .send(&f.providers[0], Target::Access, open)
        .await
        .unwrap();
    let emergency = f
        .client
        .view(
            Target::Access,
            CohortAccess::emergencyOfCall {
                id: Default::default(),
            },
        )
        .await
        .unwrap();
    assert_eq!(emergency.expiresAt - emergency.startedAt, HOUR);
    f.ledger.increase_time(HOUR).await.unwrap();
    assert!(!has_access(f, 0, 0, READ).await, "expired after the hour");
}

/// `check` as the records contract asks it: the first missing authorization.
async fn check(
    f: &Fixture,
    patient: usize,
    actor: &Account,
    level: u8,
    purpose: u8,
    kinds: u32,
) -> (u8, bool) {
    let r = f
        .client
        .view(
            Target::Access,
            CohortAccess::checkCall {
                patient: addr(&f.patients[patient]),
                actor: addr(actor),
                level,
                purpose,
                kinds,
            },
        )
        .await
        .unwrap();
    (r.reason, r.emergency)
}

const TREATMENT: u8 = 1;
const PAYMENT: u8 = 2;
const PATIENT_KIND: u32 = 1;
const OBSERVATION: u32 = 2;
const CONDITION: u32 = 4;

pub async fn check_names_the_missing_authorization(f: &Fixture) {
    let (patient, provider) = (&f.patients[0], &f.providers[0]);
    // Codes: see CohortAccess.DENY_*.
    assert_eq!(
        check(f, 0, &f.patients[0], READ, TREATMENT, OBSERVATION).await,
        (0, false),
        "the patient"
    );
    assert_eq!(
        check(f, 0, &f.outsider, READ, TREATMENT, OBSERVATION)
            .await
            .0,
        12,
        "not a provider"
    );
    assert_eq!(
        check(f, 0, provider, READ, TREATMENT, OBSERVATION).await.0,
        5,
        "no credential"
    );
    f.credential_providers().await;
    assert_eq!(
        check(f, 0, provider, READ, TREATMENT, OBSERVATION).await.0,
        2,
        "no grant"
    );
    let scoped = |level, purposes, kinds, duration| CohortAccess::grantAccessScopedCall {
        provider: addr(provider),
        duration,
        level,
        purposes,
        kinds,
    };
    for (bad, name) in [
        (scoped(READ, 0, OBSERVATION, HOUR), "InvalidPurposes"),
        (scoped(READ, 8, OBSERVATION, HOUR), "InvalidPurposes"),
        (scoped(READ, TREATMENT, 0, HOUR), "InvalidKinds"),
    ] {
        assert_reverts(f.client.send(patient, Target::Access, bad).await, name);
    }
    // A summary grant, for treatment, of conditions only.
    f.client
        .send(
            patient,
            Target::Access,
            scoped(SUMMARY, TREATMENT, CONDITION | PATIENT_KIND, HOUR),
        )
        .await
        .unwrap();
    assert_eq!(
        check(f, 0, provider, SUMMARY, TREATMENT, CONDITION).await,
        (0, false)
    );
    assert_eq!(
        check(f, 0, provider, SUMMARY, PAYMENT, CONDITION).await.0,
        9,
        "purpose"
    );
    assert_eq!(
        check(f, 0, provider, READ, TREATMENT, OBSERVATION).await.0,
        8,
        "level"
    );
    assert_eq!(
        check(f, 0, provider, SUMMARY, TREATMENT, OBSERVATION)
            .await
            .0,
        10,
        "kind"
    );
    // Read-all of every kind, for treatment and payment.
    f.client
        .send(
            patient,
            Target::Access,
            scoped(READ, TREATMENT | PAYMENT, u32::MAX, HOUR),
        )
        .await
        .unwrap();
    assert_eq!(
        check(f, 0, provider, READ, PAYMENT, OBSERVATION).await,
        (0, false)
    );
    assert_eq!(
        check(f, 0, provider, WRITE, TREATMENT, OBSERVATION).await.0,
        8,
        "write"
    );
    assert_eq!(
        check(f, 0, provider, READ, 4, OBSERVATION).await.0,
        9,
        "operations"
    );
    assert_eq!(
        check(f, 1, provider, READ, TREATMENT, OBSERVATION).await.0,
        2,
        "another patient"
    );
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
    assert_eq!(
        check(f, 0, provider, READ, TREATMENT, OBSERVATION).await.0,
        4,
        "revoked"
    );
    f.client
        .send(
            patient,
            Target::Access,
            scoped(READ, TREATMENT, u32::MAX, HOUR),
        )
        .await
        .unwrap();
    f.ledger.increase_time(HOUR).await.unwrap();
    assert_eq!(
        check(f, 0, provider, READ, TREATMENT, OBSERVATION).await.0,
        3,
        "expired"
    );
    f.client
        .send(
            patient,
            Target::Access,
            scoped(READ, TREATMENT, u32::MAX, HOUR),
        )
        .await
        .unwrap();
    f.client
        .send(
            &f.issuer,
            Target::Access,
            CohortAccess::revokeCredentialCall {
                provider: addr(provider),
            },
        )
        .await
        .unwrap();
    assert_eq!(
        check(f, 0, provider, READ, TREATMENT, OBSERVATION).await.0,
        7,
        "credential revoked"
    );
    // A delegate reads within the delegation's level.
    let delegate = &f.patients[1];
    f.client
        .send(
            patient,
            Target::Access,
            CohortAccess::setDelegateCall {
                delegate: addr(delegate),
                maxLevel: READ,
                duration: HOUR,
            },
        )
        .await
        .unwrap();
    assert_eq!(
        check(f, 0, delegate, READ, PAYMENT, OBSERVATION).await,
        (0, false)
    );
    assert_eq!(
        check(f, 0, delegate, WRITE, TREATMENT, OBSERVATION).await.0,
        12
    );
    assert_eq!(
        check(f, 0, provider, READ, TREATMENT, OBSERVATION).await.0,
        7
    );
    let stranger = f
        .client
        .view(
            Target::Access,
            CohortAccess::checkCall {
                patient: addr(&f.outsider),
                actor: addr(provider),
                level: READ,
                purpose: TREATMENT,
                kinds: OBSERVATION,
            },
        )
        .await
        .unwrap();
    assert_eq!(stranger.reason, 1, "not a patient");
}

pub async fn emergencies_end_early_and_an_unjustified_one_suspends(f: &Fixture) {
    f.credential_providers().await;
    let (patient, provider) = (&f.patients[0], &f.providers[0]);
    f.client
        .grant_role(&f.admin, Role::Emergency, addr(provider))
        .await
        .unwrap();
    let open = CohortAccess::emergencyAccessCall {
        patient: addr(patient),
        reasonHash: keccak256("arrived unconscious"),
    };
    let opened = |r: &cohort_ledger_bridge::Receipt| {
        r.logs
            .iter()
            .find_map(|l| CohortAccess::EmergencyAccessed::decode_log(&l.log).ok())
            .unwrap()
            .data
            .id
    };
    let first = opened(
        &f.client
            .send(provider, Target::Access, open.clone())
            .await
            .unwrap(),
    );
    assert_eq!(
        check(f, 0, provider, READ, TREATMENT, OBSERVATION).await,
        (0, true),
        "an emergency read"
    );
    assert_eq!(
        check(f, 0, provider, READ, PAYMENT, OBSERVATION).await.0,
        2,
        "for treatment only"
    );
    assert_eq!(
        check(f, 0, provider, WRITE, TREATMENT, OBSERVATION).await.0,
        2,
        "reads only"
    );
    let end = |id| CohortAccess::endEmergencyCall { id };
    assert_reverts(
        f.client.send(&f.outsider, Target::Access, end(first)).await,
        "NotAllowedToEnd",
    );
    assert_reverts(
        f.client
            .send(&f.patients[1], Target::Access, end(first))
            .await,
        "NotAllowedToEnd",
    );
    let receipt = f
        .client
        .send(patient, Target::Access, end(first))
        .await
        .unwrap();
    assert_eq!(
        count_events(&receipt, CohortAccess::EmergencyEnded::SIGNATURE_HASH),
        1
    );
    assert_eq!(
        check(f, 0, provider, READ, TREATMENT, OBSERVATION).await.0,
        11,
        "the patient ended it: the next read is refused, naming the emergency"
    );
    assert_reverts(
        f.client.send(patient, Target::Access, end(first)).await,
        "AlreadyEnded",
    );
    // A second one, ended by an auditor's unjustified finding.
    let second = opened(
        &f.client
            .send(provider, Target::Access, open.clone())
            .await
            .unwrap(),
    );
    assert_eq!(
        check(f, 0, provider, READ, TREATMENT, OBSERVATION).await,
        (0, true)
    );
    let review = CohortAccess::reviewEmergencyCall {
        id: second,
        justified: false,
        findingHash: keccak256("no emergency"),
    };
    let receipt = f
        .client
        .send(&f.auditor, Target::Access, review)
        .await
        .unwrap();
    assert_eq!(
        count_events(&receipt, CohortAccess::EmergencySuspended::SIGNATURE_HASH),
        1
    );
    assert_eq!(
        check(f, 0, provider, READ, TREATMENT, OBSERVATION).await.0,
        11,
        "ended at once"
    );
    assert_reverts(
        f.client.send(provider, Target::Access, open.clone()).await,
        "Suspended",
    );
    let restore = CohortAccess::restoreEmergencyCall {
        provider: addr(provider),
    };
    assert_reverts(
        f.client
            .send(&f.auditor, Target::Access, restore.clone())
            .await,
        "AccessControlUnauthorizedAccount",
    );
    f.client
        .send(&f.admin, Target::Access, restore)
        .await
        .unwrap();
    let third = opened(&f.client.send(provider, Target::Access, open).await.unwrap());
    // The provider may end their own; an auditor may end any.
    f.client
        .send(&f.auditor, Target::Access, end(third))
        .await
        .unwrap();
    assert_eq!(
        check(f, 0, provider, READ, TREATMENT, OBSERVATION).await.0,
        11
    );
}
