//! Appointments: the fee held until settled, confirmation, the refund
//! policy, completion, no-shows, insurance and reminders.

use cohort_ledger_bridge::alloy::primitives::{U256, keccak256};
use cohort_ledger_bridge::alloy::sol_types::SolEvent;
use cohort_ledger_bridge::contracts::Appointments;
use cohort_ledger_bridge::{Account, Backend, Target};

use crate::fixture::{Fixture, addr, assert_reverts, count_events, ether};

const HOUR: u64 = 3_600;

fn fee() -> U256 {
    ether(1) / U256::from(10)
}

async fn book(f: &Fixture, patient: &Account, provider: &Account, hours_ahead: u64) -> U256 {
    let at = f.now().await + hours_ahead * HOUR;
    let receipt = f
        .client
        .send_value(
            patient,
            Target::Appointments,
            Appointments::scheduleAppointmentCall {
                provider: addr(provider),
                timestamp: at,
                reasonHash: keccak256("annual check-up"),
            },
            fee(),
        )
        .await
        .unwrap();
    receipt
        .logs
        .iter()
        .find_map(|l| Appointments::AppointmentScheduled::decode_log(&l.log).ok())
        .expect("AppointmentScheduled")
        .data
        .id
}

/// `who` cancels appointment `id`; the cancellation event it emitted.
async fn cancel(f: &Fixture, who: &Account, id: U256) -> Appointments::AppointmentCancelled {
    let receipt = f
        .client
        .send(who, Target::Appointments, Appointments::cancelCall { id })
        .await
        .unwrap();
    receipt
        .logs
        .iter()
        .find_map(|l| Appointments::AppointmentCancelled::decode_log(&l.log).ok())
        .expect("a cancellation event")
        .data
}

async fn set_fee(f: &Fixture) {
    f.credential_providers().await;
    for p in &f.providers {
        f.client
            .send(
                p,
                Target::Appointments,
                Appointments::setFeeCall { fee: fee() },
            )
            .await
            .unwrap();
    }
}

/// Balance change of `who` over `f`, net of gas where gas costs ether.
async fn gained(f: &Fixture, who: &Account, before: U256) -> U256 {
    let after = f.ledger.balance(addr(who)).await.unwrap();
    after.saturating_sub(before)
}

fn exact(f: &Fixture) -> bool {
    matches!(f.ledger.backend(), Backend::Embedded { .. })
}

#[track_caller]
fn assert_close(f: &Fixture, actual: U256, expected: U256) {
    if exact(f) {
        assert_eq!(actual, expected);
    } else {
        // anvil charges gas: at most 0.001 ether here.
        assert!(
            actual <= expected && expected - actual < ether(1) / U256::from(1000),
            "{actual} vs {expected}"
        );
    }
}

pub async fn the_fee_is_held_until_the_appointment_is_completed(f: &Fixture) {
    let (patient, provider) = (&f.patients[0], &f.providers[0]);
    let schedule = |value| async move {
        f.client
            .send_value(
                patient,
                Target::Appointments,
                Appointments::scheduleAppointmentCall {
                    provider: addr(provider),
                    timestamp: f.now().await + HOUR,
                    reasonHash: keccak256("x"),
                },
                value,
            )
            .await
    };
    assert_reverts(schedule(fee()).await, "NotCredentialed");
    set_fee(f).await;
    assert_reverts(schedule(fee() - U256::from(1)).await, "WrongFee");
    let in_past = f
        .client
        .send_value(
            patient,
            Target::Appointments,
            Appointments::scheduleAppointmentCall {
                provider: addr(provider),
                timestamp: f.now().await,
                reasonHash: keccak256("x"),
            },
            fee(),
        )
        .await;
    assert_reverts(in_past, "InPast");

    let held = f
        .ledger
        .balance(f.client.contracts().appointments)
        .await
        .unwrap();
    let id = book(f, patient, provider, 2).await;
    assert_eq!(
        f.ledger
            .balance(f.client.contracts().appointments)
            .await
            .unwrap()
            - held,
        fee()
    );

    let confirm = Appointments::confirmCall { id };
    assert_reverts(
        f.client
            .send(patient, Target::Appointments, confirm.clone())
            .await,
        "NotParty",
    );
    let receipt = f
        .client
        .send(provider, Target::Appointments, confirm.clone())
        .await
        .unwrap();
    assert_eq!(
        count_events(&receipt, Appointments::AppointmentConfirmed::SIGNATURE_HASH),
        1
    );
    assert_reverts(
        f.client.send(provider, Target::Appointments, confirm).await,
        "WrongStatus",
    );

    let complete = Appointments::completeCall { id };
    assert_reverts(
        f.client
            .send(provider, Target::Appointments, complete.clone())
            .await,
        "TooEarly",
    );
    f.ledger.increase_time(2 * HOUR).await.unwrap();
    let before = f.ledger.balance(addr(provider)).await.unwrap();
    f.client
        .send(provider, Target::Appointments, complete.clone())
        .await
        .unwrap();
    assert_close(f, gained(f, provider, before).await, fee());
    assert_eq!(
        f.ledger
            .balance(f.client.contracts().appointments)
            .await
            .unwrap(),
        held
    );
    assert_reverts(
        f.client
            .send(provider, Target::Appointments, complete)
            .await,
        "WrongStatus",
    );
    let stored = f
        .client
        .view(Target::Appointments, Appointments::appointmentOfCall { id })
        .await
        .unwrap();
    assert_eq!(stored.status, 4, "completed");
}

pub async fn cancellation_refunds_by_the_policy(f: &Fixture) {
    set_fee(f).await;
    let (patient, provider) = (&f.patients[0], &f.providers[0]);
    // Well before the 24 h cut-off: the whole fee back.
    let early = book(f, patient, provider, 48).await;
    let before = f.ledger.balance(addr(patient)).await.unwrap();
    f.client
        .send(
            patient,
            Target::Appointments,
            Appointments::cancelCall { id: early },
        )
        .await
        .unwrap();
    assert_close(f, gained(f, patient, before).await, fee());

    // Inside the cut-off: half back, half to the provider.
    let late = book(f, patient, provider, 12).await;
    let (patient_before, provider_before) = (
        f.ledger.balance(addr(patient)).await.unwrap(),
        f.ledger.balance(addr(provider)).await.unwrap(),
    );
    let cancelled = cancel(f, patient, late).await;
    assert_eq!(
        (cancelled.refund, cancelled.providerShare),
        (fee() / U256::from(2), fee() / U256::from(2))
    );
    assert_close(
        f,
        gained(f, patient, patient_before).await,
        fee() / U256::from(2),
    );
    assert_eq!(
        gained(f, provider, provider_before).await,
        fee() / U256::from(2)
    );

    // The provider cancelling refunds everything, even late.
    let by_provider = book(f, patient, provider, 1).await;
    let before = f.ledger.balance(addr(patient)).await.unwrap();
    f.client
        .send(
            provider,
            Target::Appointments,
            Appointments::cancelCall { id: by_provider },
        )
        .await
        .unwrap();
    assert_eq!(gained(f, patient, before).await, fee());
    assert_reverts(
        f.client
            .send(
                &f.outsider,
                Target::Appointments,
                Appointments::cancelCall { id: by_provider },
            )
            .await,
        "NotParty",
    );
    assert_reverts(
        f.client
            .send(
                patient,
                Target::Appointments,
                Appointments::cancelCall { id: by_provider },
            )
            .await,
        "WrongStatus",
    );
}

pub async fn no_shows_are_counted_after_the_grace_period(f: &Fixture) {
    set_fee(f).await;
    let (patient, provider) = (&f.patients[1], &f.providers[1]);
    let id = book(f, patient, provider, 1).await;
    let mark = Appointments::markNoShowCall { id };
    f.ledger.increase_time(HOUR).await.unwrap();
    assert_reverts(
        f.client
            .send(provider, Target::Appointments, mark.clone())
            .await,
        "TooEarly",
    );
    f.ledger.increase_time(HOUR).await.unwrap();
    let before = f.ledger.balance(addr(provider)).await.unwrap();
    let receipt = f
        .client
        .send(provider, Target::Appointments, mark)
        .await
        .unwrap();
    assert_eq!(
        count_events(&receipt, Appointments::AppointmentNoShow::SIGNATURE_HASH),
        1
    );
    assert_close(f, gained(f, provider, before).await, fee());
    let count = f
        .client
        .view(
            Target::Appointments,
            Appointments::noShowCountCall {
                patient: addr(patient),
            },
        )
        .await
        .unwrap();
    assert_eq!(count.to::<u64>(), 1);
}

pub async fn insurance_is_attested_and_reminders_are_sent_once(f: &Fixture) {
    set_fee(f).await;
    let (patient, provider) = (&f.patients[2], &f.providers[0]);
    let verify = Appointments::verifyInsuranceCall {
        patient: addr(patient),
        policyHash: keccak256("policy 42"),
        expiresAt: f.now().await + 365 * 24 * HOUR,
    };
    assert_reverts(
        f.client
            .send(&f.outsider, Target::Appointments, verify.clone())
            .await,
        "MissingRole",
    );
    f.client
        .send(&f.issuer, Target::Appointments, verify)
        .await
        .unwrap();
    let id = book(f, patient, provider, 48).await;
    let booked = f
        .client
        .view(Target::Appointments, Appointments::appointmentOfCall { id })
        .await
        .unwrap();
    assert!(booked.insured);

    let remind = Appointments::remindCall { id };
    assert_reverts(
        f.client
            .send(&f.outsider, Target::Appointments, remind.clone())
            .await,
        "TooEarly",
    );
    f.ledger.increase_time(25 * HOUR).await.unwrap();
    let receipt = f
        .client
        .send(&f.outsider, Target::Appointments, remind.clone())
        .await
        .unwrap();
    assert_eq!(
        count_events(&receipt, Appointments::AppointmentReminder::SIGNATURE_HASH),
        1
    );
    assert_reverts(
        f.client
            .send(&f.outsider, Target::Appointments, remind)
            .await,
        "AlreadyReminded",
    );
}

pub async fn the_admin_sets_the_cancellation_policy(f: &Fixture) {
    let policy = |cutoff: u64, late_bps: u16, window: u64| Appointments::setPolicyCall {
        cutoff,
        lateBps: late_bps,
        window,
        grace: 3_600,
    };
    assert_reverts(
        f.client
            .send(
                &f.outsider,
                Target::Appointments,
                policy(6 * 3_600, 2_500, 3_600),
            )
            .await,
        "MissingRole",
    );
    for bad in [
        policy(6 * 3_600, 10_001, 3_600),
        policy(6 * 3_600, 2_500, 0),
    ] {
        assert_reverts(
            f.client.send(&f.admin, Target::Appointments, bad).await,
            "InvalidPolicy",
        );
    }
    let receipt = f
        .client
        .send(
            &f.admin,
            Target::Appointments,
            policy(6 * 3_600, 2_500, 3_600),
        )
        .await
        .unwrap();
    assert_eq!(
        count_events(&receipt, Appointments::PolicySet::SIGNATURE_HASH),
        1
    );
    // 12 h ahead is now before the 6 h cut-off: the whole fee back; 3 h
    // ahead is after it: a quarter back.
    set_fee(f).await;
    let (patient, provider) = (&f.patients[0], &f.providers[0]);
    for (hours, refund) in [(12, fee()), (3, fee() / U256::from(4))] {
        let id = book(f, patient, provider, hours).await;
        let cancelled = cancel(f, patient, id).await;
        assert_eq!(cancelled.refund, refund, "{hours} h ahead");
        assert_eq!(cancelled.providerShare, fee() - refund);
    }
}
