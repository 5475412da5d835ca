//! CohortAccess: roles, credentials, grants, delegation, emergencies.

use cohort_ledger_bridge::alloy::primitives::{B256, keccak256};
use cohort_ledger_bridge::alloy::sol_types::SolEvent;
use cohort_ledger_bridge::contracts::CohortAccess;
use cohort_ledger_bridge::{Role, Target};

use crate::fixture::{Fixture, addr, assert_reverts, count_events};

const READ: u8 = 1;
const WRITE: u8 = 2;
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
        f.client.send(patient, Target::Access, grant(HOUR, 3)).await,
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
