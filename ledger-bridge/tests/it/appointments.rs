//! Appointments: providers' hours, visit types and policy; bookings paid
//! into escrow; one live booking per slot; confirmation by a deadline;
//! cancellation by notice tiers; completion; insurance; no-shows and their
//! disputes. Every refusal moves no ether.

use cohort_ledger_bridge::alloy::primitives::{Address, B256, U256, keccak256};
use cohort_ledger_bridge::alloy::sol_types::SolEvent;
use cohort_ledger_bridge::contracts::AppointmentStatus;
use cohort_ledger_bridge::contracts::Appointments;
use cohort_ledger_bridge::{Account, Error, Receipt, Role, Target};

use crate::fixture::{Fixture, account, addr, assert_received, assert_reverts, ether};

const HOUR: u64 = 3_600;
const SLOT: u64 = 1_800;

fn fee() -> U256 {
    ether(1) / U256::from(10)
}

fn visit() -> B256 {
    B256::right_padding_from(b"checkup")
}

/// The policy the tests publish: deposit of the whole copay, a no-show
/// threshold of 2 raising nothing (the deposit is already whole) unless
/// asked, 24 h to confirm, 15 min grace, refunds 100% a day ahead, 50% two
/// hours ahead, none after.
fn policy(deposit_bps: u16) -> Appointments::Policy {
    Appointments::Policy {
        depositBps: deposit_bps,
        noShowThreshold: 2,
        thresholdDepositBps: 10_000,
        confirmWindow: 24 * HOUR as u32,
        noShowGrace: 900,
        notice: [24 * HOUR as u32, 2 * HOUR as u32, 0],
        refundBps: [10_000, 5_000, 0],
    }
}

/// Credentials both providers and has them publish round-the-clock hours
/// of 30-minute slots, the check-up at `fee()` and `policy(deposit_bps)`.
async fn open_clinic(f: &Fixture, deposit_bps: u16) {
    f.credential_providers().await;
    publish_clinic(f, deposit_bps).await;
}

/// `open_clinic` for providers already credentialed. (Credentialing them
/// again would rewrite their expiry, or not, depending on whether the
/// chain's clock has ticked a second since: the gas report's minimum for
/// `attestCredential` would then depend on the machine's speed.)
async fn publish_clinic(f: &Fixture, deposit_bps: u16) {
    for p in &f.providers {
        let hours = Appointments::Hours {
            utcOffset: 0,
            slotSeconds: SLOT as u32,
            opens: [0; 7],
            closes: [86_400; 7],
        };
        send(f, p, Appointments::setHoursCall { h: hours }).await;
        send(
            f,
            p,
            Appointments::setVisitTypeCall {
                visitType: visit(),
                fee: fee().to(),
            },
        )
        .await;
        send(
            f,
            p,
            Appointments::setPolicyCall {
                p: policy(deposit_bps),
            },
        )
        .await;
    }
}

async fn send<C: cohort_ledger_bridge::alloy::sol_types::SolCall>(
    f: &Fixture,
    who: &Account,
    call: C,
) -> Receipt {
    f.client
        .send(who, Target::Appointments, call)
        .await
        .unwrap()
}

/// The start of a slot at least `hours` ahead.
async fn slot(f: &Fixture, hours: u64) -> u64 {
    (f.now().await + hours * HOUR) / SLOT * SLOT + SLOT
}

async fn try_book(
    f: &Fixture,
    patient: &Account,
    provider: &Account,
    start: u64,
    value: U256,
) -> Result<Receipt, Error> {
    f.client
        .send_value(
            patient,
            Target::Appointments,
            Appointments::bookCall {
                provider: addr(provider),
                start,
                visitType: visit(),
                reasonHash: keccak256("sealed reason"),
            },
            value,
        )
        .await
}

fn booked_id(receipt: &Receipt) -> U256 {
    receipt
        .logs
        .iter()
        .find_map(|l| Appointments::AppointmentBooked::decode_log(&l.log).ok())
        .expect("AppointmentBooked")
        .data
        .id
}

fn settled(receipt: &Receipt) -> Appointments::AppointmentSettled {
    receipt
        .logs
        .iter()
        .find_map(|l| Appointments::AppointmentSettled::decode_log(&l.log).ok())
        .expect("AppointmentSettled")
        .data
}

async fn book(f: &Fixture, patient: &Account, provider: &Account, hours: u64) -> U256 {
    let start = slot(f, hours).await;
    booked_id(&try_book(f, patient, provider, start, fee()).await.unwrap())
}

async fn escrow(f: &Fixture) -> U256 {
    f.ledger
        .balance(f.client.contracts().appointments)
        .await
        .unwrap()
}

async fn status(f: &Fixture, id: U256) -> u8 {
    f.client
        .view(Target::Appointments, Appointments::appointmentOfCall { id })
        .await
        .unwrap()
        .status
}

async fn balance(f: &Fixture, who: &Account) -> U256 {
    f.ledger.balance(addr(who)).await.unwrap()
}

pub async fn hours_fees_and_policy_decide_what_can_be_booked(f: &Fixture) {
    let (patient, provider) = (&f.patients[0], &f.providers[0]);
    let start = slot(f, 30).await;
    assert_reverts(
        try_book(f, patient, provider, start, fee()).await,
        "NotCredentialed",
    );
    let hours = Appointments::Hours {
        utcOffset: 0,
        slotSeconds: SLOT as u32,
        opens: [0; 7],
        closes: [86_400; 7],
    };
    assert_reverts(
        f.client
            .send(
                provider,
                Target::Appointments,
                Appointments::setHoursCall { h: hours.clone() },
            )
            .await,
        "NotCredentialed",
    );
    f.credential_providers().await;
    let bad_hours = Appointments::Hours {
        slotSeconds: 60,
        ..hours
    };
    assert_reverts(
        f.client
            .send(
                provider,
                Target::Appointments,
                Appointments::setHoursCall { h: bad_hours },
            )
            .await,
        "InvalidHours",
    );
    assert_reverts(
        try_book(f, patient, provider, start, fee()).await,
        "NoHours",
    );
    publish_clinic(f, 10_000).await;
    let before = escrow(f).await;
    // Outside hours (not on a slot boundary), in the past, a type not offered,
    // too little, too much, a non-patient: each refused, nothing held.
    assert_reverts(
        try_book(f, patient, provider, start + 60, fee()).await,
        "OutsideHours",
    );
    let past = slot(f, 0).await - 2 * SLOT;
    assert_reverts(try_book(f, patient, provider, past, fee()).await, "InPast");
    let other_type = f
        .client
        .send_value(
            patient,
            Target::Appointments,
            Appointments::bookCall {
                provider: addr(provider),
                start,
                visitType: B256::right_padding_from(b"surgery"),
                reasonHash: B256::ZERO,
            },
            fee(),
        )
        .await;
    assert_reverts(other_type, "NotOffered");
    assert_reverts(
        try_book(f, patient, provider, start, fee() - U256::from(1)).await,
        "PaymentBelow",
    );
    assert_reverts(
        try_book(f, patient, provider, start, fee() + U256::from(1)).await,
        "PaymentAbove",
    );
    assert_reverts(
        try_book(f, &f.outsider, provider, start, fee()).await,
        "MissingRole",
    );
    assert_eq!(escrow(f).await, before);
    // A closed day refuses its slots.
    let day = (start / 86_400) as u32;
    send(
        f,
        provider,
        Appointments::setClosedCall {
            localDays: vec![day],
            closed: true,
        },
    )
    .await;
    assert_reverts(
        try_book(f, patient, provider, start, fee()).await,
        "OutsideHours",
    );
    send(
        f,
        provider,
        Appointments::setClosedCall {
            localDays: vec![day],
            closed: false,
        },
    )
    .await;
    // Booked: the fee is held; the slot is taken for everyone.
    let id = booked_id(&try_book(f, patient, provider, start, fee()).await.unwrap());
    assert_eq!(escrow(f).await, before + fee());
    assert_reverts(
        try_book(f, &f.patients[1], provider, start, fee()).await,
        "SlotTaken",
    );
    let (taken, at) = {
        let r = f
            .client
            .view(
                Target::Appointments,
                Appointments::bookingAtCall {
                    provider: addr(provider),
                    start,
                },
            )
            .await
            .unwrap();
        (r.taken, r.id)
    };
    assert!(taken);
    assert_eq!(at, id);
    // The other provider's same slot is free.
    try_book(f, &f.patients[1], &f.providers[1], start, fee())
        .await
        .unwrap();
}

pub async fn one_slot_booked_in_one_block_has_one_winner(f: &Fixture) {
    open_clinic(f, 10_000).await;
    let start = slot(f, 30).await;
    let provider = &f.providers[0];
    let txs = f
        .patients
        .iter()
        .map(|p| {
            let tx = f
                .client
                .tx(
                    Target::Appointments,
                    Appointments::bookCall {
                        provider: addr(provider),
                        start,
                        visitType: visit(),
                        reasonHash: B256::ZERO,
                    },
                )
                .with_value(fee());
            (p.clone(), tx)
        })
        .collect();
    let before = escrow(f).await;
    let outcomes = f.ledger.send_all(txs).await;
    let won = outcomes.iter().filter(|o| o.is_ok()).count();
    assert_eq!(won, 1, "{outcomes:?}");
    for lost in outcomes.into_iter().filter(|o| o.is_err()) {
        assert_reverts(lost, "SlotTaken");
    }
    assert_eq!(escrow(f).await, before + fee());
}

pub async fn declined_and_unconfirmed_bookings_are_refunded_in_full(f: &Fixture) {
    open_clinic(f, 10_000).await;
    let (patient, provider) = (&f.patients[0], &f.providers[0]);
    let id = book(f, patient, provider, 48).await;
    assert_reverts(
        f.client
            .send(
                &f.providers[1],
                Target::Appointments,
                Appointments::confirmCall { id },
            )
            .await,
        "NotParty",
    );
    let before = balance(f, patient).await;
    let s = settled(&send(f, provider, Appointments::declineCall { id }).await);
    assert_eq!(s.status, AppointmentStatus::Declined as u8);
    assert_eq!(U256::from(s.toPatient), fee());
    assert_eq!(balance(f, patient).await, before + fee());
    // The slot is free again.
    let start = f
        .client
        .view(Target::Appointments, Appointments::appointmentOfCall { id })
        .await
        .unwrap()
        .start;
    let again = booked_id(&try_book(f, patient, provider, start, fee()).await.unwrap());
    // Not confirmed in 24 h: anyone expires it, the patient gets it all back.
    assert_reverts(
        f.client
            .send(
                &f.outsider,
                Target::Appointments,
                Appointments::expireCall { id: again },
            )
            .await,
        "TooEarly",
    );
    f.ledger.increase_time(24 * HOUR + 1).await.unwrap();
    assert_reverts(
        f.client
            .send(
                provider,
                Target::Appointments,
                Appointments::confirmCall { id: again },
            )
            .await,
        "TooLate",
    );
    let before = balance(f, patient).await;
    let s = settled(&send(f, &f.outsider, Appointments::expireCall { id: again }).await);
    assert_eq!(s.status, AppointmentStatus::Expired as u8);
    assert_eq!(balance(f, patient).await, before + fee());
    assert_eq!(escrow(f).await, U256::ZERO);
}

pub async fn cancellations_refund_by_the_notice_tiers(f: &Fixture) {
    open_clinic(f, 10_000).await;
    let (patient, provider) = (&f.patients[0], &f.providers[0]);
    // Two days ahead: the whole fee back.
    let early = book(f, patient, provider, 48).await;
    let s = settled(&send(f, patient, Appointments::cancelCall { id: early }).await);
    assert_eq!(U256::from(s.toPatient), fee());
    assert_eq!(s.toProvider, 0);
    // Three hours ahead: half back, half to the provider.
    let late = book(f, patient, provider, 3).await;
    let provider_before = balance(f, provider).await;
    let s = settled(&send(f, patient, Appointments::cancelCall { id: late }).await);
    assert_eq!(U256::from(s.toPatient), fee() / U256::from(2));
    assert_eq!(U256::from(s.toProvider), fee() / U256::from(2));
    assert_eq!(
        balance(f, provider).await,
        provider_before + fee() / U256::from(2)
    );
    // An hour ahead: nothing back.
    let last = book(f, patient, provider, 1).await;
    let s = settled(&send(f, patient, Appointments::cancelCall { id: last }).await);
    assert_eq!(s.toPatient, 0);
    assert_eq!(U256::from(s.toProvider), fee());
    // The provider's cancellation refunds everything, however late.
    let theirs = book(f, patient, provider, 1).await;
    let s = settled(&send(f, provider, Appointments::cancelCall { id: theirs }).await);
    assert_eq!(U256::from(s.toPatient), fee());
    // Nobody else cancels; nobody cancels after the start or after completion.
    let done = book(f, patient, provider, 1).await;
    assert_reverts(
        f.client
            .send(
                &f.outsider,
                Target::Appointments,
                Appointments::cancelCall { id: done },
            )
            .await,
        "NotParty",
    );
    send(f, provider, Appointments::confirmCall { id: done }).await;
    f.ledger.increase_time(2 * HOUR).await.unwrap();
    assert_reverts(
        f.client
            .send(
                patient,
                Target::Appointments,
                Appointments::cancelCall { id: done },
            )
            .await,
        "TooLate",
    );
    let provider_before = balance(f, provider).await;
    let s = settled(&send(f, provider, Appointments::completeCall { id: done }).await);
    assert_eq!(s.status, AppointmentStatus::Completed as u8);
    assert_received(f, provider_before, balance(f, provider).await, fee());
    assert_reverts(
        f.client
            .send(
                patient,
                Target::Appointments,
                Appointments::cancelCall { id: done },
            )
            .await,
        "WrongStatus",
    );
    assert_eq!(escrow(f).await, U256::ZERO);
}

pub async fn a_deposit_and_the_balance_paid_later(f: &Fixture) {
    // A 20% deposit: the patient pays it at booking and the rest later.
    open_clinic(f, 2_000).await;
    let (patient, provider) = (&f.patients[0], &f.providers[0]);
    let start = slot(f, 2).await;
    let deposit = fee() / U256::from(5);
    assert_reverts(
        try_book(f, patient, provider, start, deposit - U256::from(1)).await,
        "PaymentBelow",
    );
    let id = booked_id(
        &try_book(f, patient, provider, start, deposit)
            .await
            .unwrap(),
    );
    send(f, provider, Appointments::confirmCall { id }).await;
    f.ledger.increase_time(2 * HOUR + SLOT).await.unwrap();
    let provider_before = balance(f, provider).await;
    send(f, provider, Appointments::completeCall { id }).await;
    assert_received(f, provider_before, balance(f, provider).await, deposit);
    // The balance, paid after completion, goes straight to the provider.
    let rest = fee() - deposit;
    assert_reverts(
        f.client
            .send_value(
                patient,
                Target::Appointments,
                Appointments::payCall { id },
                rest + U256::from(1),
            )
            .await,
        "PaymentAbove",
    );
    let provider_before = balance(f, provider).await;
    f.client
        .send_value(
            patient,
            Target::Appointments,
            Appointments::payCall { id },
            rest,
        )
        .await
        .unwrap();
    assert_eq!(balance(f, provider).await, provider_before + rest);
    assert_eq!(escrow(f).await, U256::ZERO);
}

pub async fn insurance_splits_the_fee_and_pays_its_share_on_completion(f: &Fixture) {
    open_clinic(f, 10_000).await;
    let (patient, provider) = (&f.patients[0], &f.providers[0]);
    let insurer = f.funded("insurer").await;
    let verify = |who: Account, expires: u64| {
        let provider = addr(provider);
        let patient = addr(patient);
        async move {
            f.client
                .send(
                    &who,
                    Target::Appointments,
                    Appointments::verifyCoverageCall {
                        patient,
                        provider,
                        visitType: visit(),
                        shareBps: 8_000,
                        expiresAt: expires,
                        policyHash: keccak256("policy 42"),
                    },
                )
                .await
        }
    };
    let in_a_month = f.now().await + 30 * 24 * HOUR;
    assert_reverts(verify(insurer.clone(), in_a_month).await, "MissingRole");
    f.client
        .grant_role(&f.admin, Role::Insurer, insurer.address())
        .await
        .unwrap();
    verify(insurer.clone(), in_a_month).await.unwrap();
    let share = fee() * U256::from(8) / U256::from(10);
    let copay = fee() - share;
    let start = slot(f, 30).await;
    // Unfunded, the insurer's share cannot be reserved: refused.
    assert_reverts(
        try_book(f, patient, provider, start, copay).await,
        "InsurerUnderfunded",
    );
    f.client
        .send_value(
            &insurer,
            Target::Appointments,
            Appointments::fundCoverageCall {},
            ether(1),
        )
        .await
        .unwrap();
    // The patient pays the copay, not the fee.
    assert_reverts(
        try_book(f, patient, provider, start, fee()).await,
        "PaymentAbove",
    );
    let id = booked_id(&try_book(f, patient, provider, start, copay).await.unwrap());
    let funds = || async {
        f.client
            .view(
                Target::Appointments,
                Appointments::insurerFundsCall {
                    insurer: insurer.address(),
                },
            )
            .await
            .unwrap()
    };
    assert_eq!(funds().await, ether(1) - share);
    send(f, provider, Appointments::confirmCall { id }).await;
    f.ledger.increase_time(31 * HOUR).await.unwrap();
    let provider_before = balance(f, provider).await;
    let s = settled(&send(f, provider, Appointments::completeCall { id }).await);
    assert_eq!(U256::from(s.fromInsurer), share);
    assert_received(f, provider_before, balance(f, provider).await, fee());
    // Past the coverage's end, the quote says the patient pays in full.
    f.ledger.increase_time(30 * 24 * HOUR).await.unwrap();
    let later = slot(f, 30).await;
    let quote = f
        .client
        .view(
            Target::Appointments,
            Appointments::quoteCall {
                patient: addr(patient),
                provider: addr(provider),
                visitType: visit(),
                start: later,
            },
        )
        .await
        .unwrap();
    assert_eq!(quote.insurer, Address::ZERO);
    assert_eq!(U256::from(quote.copay), fee());
    // A cancelled covered booking returns the share to the insurer's funds.
    verify(insurer.clone(), f.now().await + 30 * 24 * HOUR)
        .await
        .unwrap();
    let before = funds().await;
    let id = booked_id(&try_book(f, patient, provider, later, copay).await.unwrap());
    assert_eq!(funds().await, before - share);
    let s = settled(&send(f, patient, Appointments::cancelCall { id }).await);
    assert_eq!(U256::from(s.toInsurer), share);
    assert_eq!(funds().await, before);
    // Not an insurer, not its coverage: refused.
    assert_reverts(
        f.client
            .send(
                &account("outsider"),
                Target::Appointments,
                Appointments::revokeCoverageCall {
                    patient: addr(patient),
                    provider: addr(provider),
                    visitType: visit(),
                },
            )
            .await,
        "MissingRole",
    );
    // The insurer withdraws its coverage and takes back its unreserved funds.
    send(
        f,
        &insurer,
        Appointments::revokeCoverageCall {
            patient: addr(patient),
            provider: addr(provider),
            visitType: visit(),
        },
    )
    .await;
    let quote = f
        .client
        .view(
            Target::Appointments,
            Appointments::quoteCall {
                patient: addr(patient),
                provider: addr(provider),
                visitType: visit(),
                start: later,
            },
        )
        .await
        .unwrap();
    assert_eq!(U256::from(quote.copay), fee());
    let left = funds().await;
    assert_reverts(
        f.client
            .send(
                &insurer,
                Target::Appointments,
                Appointments::withdrawFundsCall {
                    amount: left + U256::from(1),
                },
            )
            .await,
        "InsufficientFunds",
    );
    send(
        f,
        &insurer,
        Appointments::withdrawFundsCall { amount: left },
    )
    .await;
    assert_eq!(funds().await, U256::ZERO);
}

pub async fn no_shows_forfeit_the_deposit_and_can_be_disputed(f: &Fixture) {
    open_clinic(f, 5_000).await;
    let (patient, provider) = (&f.patients[0], &f.providers[0]);
    assert_reverts(
        f.client
            .send(
                provider,
                Target::Appointments,
                Appointments::setDisputeWindowCall { window: 0 },
            )
            .await,
        "MissingRole",
    );
    send(
        f,
        &f.admin,
        Appointments::setDisputeWindowCall {
            window: 7 * 24 * HOUR,
        },
    )
    .await;
    let mut ids = Vec::new();
    for hours in [2, 4, 6] {
        let start = slot(f, hours).await;
        let id = booked_id(&try_book(f, patient, provider, start, fee()).await.unwrap());
        send(f, provider, Appointments::confirmCall { id }).await;
        ids.push(id);
    }
    assert_reverts(
        f.client
            .send(
                provider,
                Target::Appointments,
                Appointments::markNoShowCall { id: ids[0] },
            )
            .await,
        "TooEarly",
    );
    f.ledger.increase_time(8 * HOUR).await.unwrap();
    // Paid in full with a 50% deposit: half back now, half held.
    let patient_before = balance(f, patient).await;
    let s = settled(&send(f, provider, Appointments::markNoShowCall { id: ids[0] }).await);
    assert_eq!(U256::from(s.toPatient), fee() / U256::from(2));
    assert_eq!(s.toProvider, 0);
    assert_eq!(
        balance(f, patient).await,
        patient_before + fee() / U256::from(2)
    );
    assert_reverts(
        f.client
            .send(
                provider,
                Target::Appointments,
                Appointments::markNoShowCall { id: ids[0] },
            )
            .await,
        "WrongStatus",
    );
    // Undisputed: released to the provider after the window.
    assert_reverts(
        f.client
            .send(
                &f.outsider,
                Target::Appointments,
                Appointments::releaseForfeitCall { id: ids[0] },
            )
            .await,
        "TooEarly",
    );
    // Disputed: an admin resolves; overturned, the deposit goes back and the
    // count falls.
    send(f, provider, Appointments::markNoShowCall { id: ids[1] }).await;
    send(f, provider, Appointments::markNoShowCall { id: ids[2] }).await;
    let count = || async {
        f.client
            .view(
                Target::Appointments,
                Appointments::noShowCountCall {
                    patient: addr(&f.patients[0]),
                },
            )
            .await
            .unwrap()
    };
    assert_eq!(count().await, U256::from(3));
    assert_reverts(
        f.client
            .send(
                provider,
                Target::Appointments,
                Appointments::disputeCall { id: ids[1] },
            )
            .await,
        "NotParty",
    );
    send(f, patient, Appointments::disputeCall { id: ids[1] }).await;
    send(f, patient, Appointments::disputeCall { id: ids[2] }).await;
    assert_eq!(status(f, ids[1]).await, AppointmentStatus::Disputed as u8);
    assert_reverts(
        f.client
            .send(
                provider,
                Target::Appointments,
                Appointments::resolveDisputeCall {
                    id: ids[1],
                    noShowStands: false,
                },
            )
            .await,
        "MissingRole",
    );
    let patient_before = balance(f, patient).await;
    let s = settled(
        &send(
            f,
            &f.admin,
            Appointments::resolveDisputeCall {
                id: ids[1],
                noShowStands: false,
            },
        )
        .await,
    );
    assert_eq!(s.status, AppointmentStatus::Excused as u8);
    assert_eq!(
        balance(f, patient).await,
        patient_before + fee() / U256::from(2)
    );
    assert_eq!(count().await, U256::from(2));
    let provider_before = balance(f, provider).await;
    send(
        f,
        &f.admin,
        Appointments::resolveDisputeCall {
            id: ids[2],
            noShowStands: true,
        },
    )
    .await;
    assert_eq!(
        balance(f, provider).await,
        provider_before + fee() / U256::from(2)
    );
    // At the threshold (2 no-shows) the deposit required rises to the whole copay.
    let quote = f
        .client
        .view(
            Target::Appointments,
            Appointments::quoteCall {
                patient: addr(patient),
                provider: addr(provider),
                visitType: visit(),
                start: slot(f, 30).await,
            },
        )
        .await
        .unwrap();
    assert_eq!(U256::from(quote.deposit), fee());
    // Too late to dispute; the first forfeit is released.
    f.ledger.increase_time(7 * 24 * HOUR).await.unwrap();
    assert_reverts(
        f.client
            .send(
                patient,
                Target::Appointments,
                Appointments::disputeCall { id: ids[0] },
            )
            .await,
        "TooLate",
    );
    let provider_before = balance(f, provider).await;
    send(
        f,
        &f.outsider,
        Appointments::releaseForfeitCall { id: ids[0] },
    )
    .await;
    assert_eq!(
        balance(f, provider).await,
        provider_before + fee() / U256::from(2)
    );
    assert_eq!(escrow(f).await, U256::ZERO);
}
