//! Appointments against the embedded chain, through the engine's desk:
//! publish, book (reason sealed, only its hash on chain), confirm, remind
//! exactly once on an injected clock, complete, cancel, no-show, dispute,
//! insurance; every bad input refused by name, audited, with no ether
//! moved; concurrent bookings of one slot: exactly one wins.

use cohort_engine::access::{Actor, notifications};
use cohort_engine::appointments::desk::{self, BookRequest, Publish, Step};
use cohort_engine::appointments::terms::{Hours, Policy};
use cohort_engine::appointments::{insurance, mirror, reminders};
use cohort_engine::chain;
use cohort_engine::keys::accounts;
use cohort_engine::records::vault::Vault;
use cohort_engine::{DataDir, Error};
use cohort_ledger_bridge::alloy::primitives::{U256, keccak256};
use cohort_ledger_bridge::{Client, Role};

use crate::common;
use common::FAST_KDF;
const HOUR: u64 = 3_600;
const REASON: &str = "chest pain on exertion since Tuesday";

fn fee() -> U256 {
    U256::from(10u64).pow(U256::from(17)) // 0.1 ether
}

struct World {
    _tmp: tempfile::TempDir,
    dir: DataDir,
    vault: Vault,
    client: Client,
    rt: tokio::runtime::Runtime,
    patients: Vec<Actor>,
    provider: Actor,
    other_provider: Actor,
    issuer: Actor,
    admin: Actor,
}

fn world(patients: u64) -> World {
    let common::Deployed {
        tmp,
        dir,
        vault,
        rt,
        client,
    } = common::deployed(patients);
    let ids: Vec<String> = vault
        .conn()
        .prepare("SELECT patient_id FROM patients ORDER BY patient_id")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let get = |n: &str| {
        Actor::from_account(accounts::get_or_create(vault.conn(), vault.keys(), n).unwrap())
    };
    let admin = get("operator");
    let (provider, other_provider, issuer) = (get("dr-a"), get("dr-b"), get("issuer"));
    for (who, role) in [
        (&provider, Role::Provider),
        (&other_provider, Role::Provider),
        (&issuer, Role::Issuer),
    ] {
        rt.block_on(client.grant_role(admin.account(), role, who.address()))
            .unwrap();
    }
    let patients: Vec<Actor> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| {
            let account =
                cohort_engine::research::link_patient(vault.conn(), &vault, &format!("pat{i}"), id)
                    .unwrap();
            Actor::from_account(account)
        })
        .collect();
    for p in &patients {
        rt.block_on(cohort_engine::access::grants::ensure_patient(&client, p))
            .unwrap();
        rt.block_on(
            client
                .ledger()
                .set_balance(p.address(), U256::from(10u64).pow(U256::from(19))),
        )
        .unwrap();
    }
    World {
        _tmp: tmp,
        dir,
        vault,
        client,
        rt,
        patients,
        provider,
        other_provider,
        issuer,
        admin,
    }
}

impl World {
    fn conn(&self) -> &rusqlite::Connection {
        self.vault.conn()
    }

    fn credential(&self, who: &Actor) {
        let now = self.now();
        self.rt
            .block_on(cohort_engine::access::grants::attest_credential(
                self.conn(),
                &self.client,
                &self.issuer,
                who.name(),
                "MD",
                now + 400 * 24 * HOUR,
            ))
            .unwrap();
    }

    fn now(&self) -> u64 {
        self.rt.block_on(self.client.ledger().now()).unwrap()
    }

    fn pass(&self, secs: u64) {
        self.rt
            .block_on(self.client.ledger().increase_time(secs))
            .unwrap();
    }

    fn sync(&self) {
        let mut conn = self.dir.connect().unwrap();
        self.rt.block_on(chain::sync(&self.dir, &mut conn)).unwrap();
    }

    /// Round-the-clock hours of 30-minute slots, the check-up at 0.1
    /// ether, and `policy`.
    fn open(&self, who: &Actor, policy: Policy) {
        self.rt
            .block_on(desk::publish(
                self.conn(),
                &self.client,
                who,
                &Publish {
                    hours: Some(Hours::parse("mon-sun=00:00-24:00", "30m", "0").unwrap()),
                    fees: vec![("checkup".into(), fee())],
                    policy: Some(policy),
                    ..Publish::default()
                },
            ))
            .unwrap();
    }

    /// The start of a slot at least `secs` ahead.
    fn slot(&self, secs: u64) -> u64 {
        (self.now() + secs) / 1_800 * 1_800 + 1_800
    }

    fn book(
        &self,
        who: &Actor,
        provider: &Actor,
        start: u64,
        pay: Option<U256>,
    ) -> Result<u64, Error> {
        self.rt
            .block_on(desk::book(
                &self.vault,
                &self.client,
                who,
                &BookRequest {
                    provider: provider.name().into(),
                    start,
                    visit_type: "checkup".into(),
                    reason: REASON.into(),
                    pay,
                },
            ))
            .map(|b| b.id)
    }

    fn act(&self, who: &Actor, id: u64, step: Step) -> Result<desk::Settled, Error> {
        self.rt
            .block_on(desk::act(self.conn(), &self.client, who, id, step))
    }

    fn escrow(&self) -> U256 {
        self.rt
            .block_on(
                self.client
                    .ledger()
                    .balance(self.client.contracts().appointments),
            )
            .unwrap()
    }

    fn last_audit(&self) -> (String, String, String) {
        self.conn()
            .query_row(
                "SELECT actor, action, detail FROM audit ORDER BY seq DESC LIMIT 1",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .unwrap()
    }

    /// Asserts `result` is refused with a message containing `says`,
    /// audited as `<action>.refused`, and that no ether moved.
    #[track_caller]
    fn refused<T: std::fmt::Debug>(&self, before: U256, result: Result<T, Error>, says: &str) {
        let message = match result {
            Err(e) => e.to_string(),
            Ok(v) => panic!("expected a refusal saying {says:?}, got {v:?}"),
        };
        assert!(message.contains(says), "{message:?} does not say {says:?}");
        let (_, action, _) = self.last_audit();
        assert!(
            action.ends_with(".refused"),
            "the refusal is audited: {action}"
        );
        assert_eq!(self.escrow(), before, "a refusal moves no ether");
    }
}

#[test]
fn a_visit_is_booked_confirmed_reminded_completed_and_paid() {
    let w = world(2);
    let patient = &w.patients[0];
    // Publishing needs a credential.
    let uncredentialed = w.rt.block_on(desk::publish(
        w.conn(),
        &w.client,
        &w.provider,
        &Publish {
            fees: vec![("checkup".into(), fee())],
            ..Publish::default()
        },
    ));
    assert!(
        uncredentialed
            .unwrap_err()
            .to_string()
            .contains("no unexpired credential")
    );
    w.credential(&w.provider);
    w.open(&w.provider, Policy::default());
    w.sync();
    let terms = mirror::terms(w.conn(), w.provider.address()).unwrap();
    assert_eq!(terms.fees, vec![("checkup".to_string(), fee().to_string())]);
    assert!(terms.policy.is_some() && terms.hours.is_some());
    // A year of availability: 48 slots a day, 365 days, none taken.
    let now = w.now();
    let from = now / 86_400 * 86_400 + 86_400;
    let year = mirror::slots(
        w.conn(),
        w.provider.address(),
        now,
        from,
        from + 365 * 86_400,
    )
    .unwrap();
    assert_eq!(year.len(), 48 * 365);
    // Said before booking: no coverage, the whole fee.
    let start = w.slot(30 * HOUR);
    let quote =
        w.rt.block_on(desk::quote(
            w.conn(),
            &w.client,
            patient.address(),
            "dr-a",
            "checkup",
            start,
        ))
        .unwrap();
    assert!(quote.says.contains("no coverage"), "{}", quote.says);
    let before = w.escrow();
    let id = w.book(patient, &w.provider, start, None).unwrap();
    assert_eq!(w.escrow(), before + fee());
    // The reason is sealed here, only its hash on chain, in no log.
    let sealed: Vec<u8> = w
        .conn()
        .query_row(
            "SELECT sealed FROM appointment_reasons WHERE appointment_id = ?1",
            [id as i64],
            |r| r.get(0),
        )
        .unwrap();
    assert!(!String::from_utf8_lossy(&sealed).contains("chest"));
    let on_chain = w.rt.block_on(desk::on_chain(&w.client, id)).unwrap();
    assert_eq!(on_chain.reasonHash, keccak256(&sealed));
    let audit_text: String = w
        .conn()
        .query_row("SELECT group_concat(detail, ' ') FROM audit", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert!(
        !audit_text.contains("chest"),
        "no reason text in the audit log"
    );
    // The provider and the patient read it; another provider cannot.
    let read = |who: &Actor| w.rt.block_on(desk::reason(&w.vault, &w.client, who, id));
    assert_eq!(read(&w.provider).unwrap(), REASON);
    assert_eq!(read(patient).unwrap(), REASON);
    assert!(matches!(read(&w.other_provider), Err(Error::Forbidden(_))));
    // The provider was told; confirms.
    let told = notifications::list(w.conn(), w.provider.address(), false, 10).unwrap();
    assert!(told.iter().any(|n| n.kind == "appointment.booked"));
    assert_eq!(
        w.act(&w.provider, id, Step::Confirm).unwrap().status,
        "confirmed"
    );
    // Reminders on an injected clock: none 25 h ahead; the 24 h one once,
    // across repeated ticks and a new connection; then the 1 h one.
    w.sync();
    let tick = |at: u64| reminders::remind(&mut w.dir.connect().unwrap(), at).unwrap();
    assert_eq!(tick(start - 25 * HOUR).reminded, 0);
    assert_eq!(tick(start - 24 * HOUR).reminded, 1);
    assert_eq!(tick(start - 23 * HOUR).reminded, 0);
    assert_eq!(tick(start - 23 * HOUR).reminded, 0);
    assert_eq!(tick(start - HOUR + 60).reminded, 1);
    assert_eq!(tick(start - 60).reminded, 0);
    let reminders_to = |who: &Actor| {
        notifications::list(w.conn(), who.address(), false, 100)
            .unwrap()
            .into_iter()
            .filter(|n| n.kind == "appointment.reminder")
            .count()
    };
    assert_eq!(reminders_to(patient), 2);
    assert_eq!(reminders_to(&w.provider), 2);
    // Not before the start; then completed: the provider is paid.
    assert!(
        w.act(&w.provider, id, Step::Complete)
            .unwrap_err()
            .to_string()
            .contains("too early")
    );
    w.pass(31 * HOUR);
    let done = w.act(&w.provider, id, Step::Complete).unwrap();
    assert_eq!(done.status, "completed");
    assert_eq!(done.to_provider, fee().to_string());
    w.sync();
    let money = mirror::money(w.conn(), patient.address()).unwrap();
    assert_eq!(money.paid, fee().to_string());
    assert_eq!(money.held, "0");
    let received = mirror::money(w.conn(), w.provider.address()).unwrap();
    assert_eq!(received.received, fee().to_string());
    let listed = mirror::list(
        w.conn(),
        patient.address(),
        false,
        &mirror::Filter::default(),
    )
    .unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].status, "completed");
    // A cancellation after completion is refused.
    let before = w.escrow();
    w.refused(before, w.act(patient, id, Step::Cancel), "not in a state");
    // Every step is audited with its actor.
    let steps: Vec<String> = w
        .conn()
        .prepare("SELECT action FROM audit WHERE action LIKE 'appointment.%' ORDER BY seq")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    for action in [
        "appointment.publish",
        "appointment.book",
        "appointment.reason.read",
        "appointment.reason.read.refused",
        "appointment.confirm",
        "appointment.complete",
    ] {
        assert!(steps.iter().any(|s| s == action), "{action} in {steps:?}");
    }
}

#[test]
fn bad_input_is_refused_by_name_audited_and_moves_no_ether() {
    let w = world(2);
    let (patient, other) = (&w.patients[0], &w.patients[1]);
    let before = w.escrow();
    // An uncredentialed provider.
    w.refused(
        before,
        w.book(patient, &w.provider, w.slot(30 * HOUR), None),
        "no unexpired credential",
    );
    w.credential(&w.provider);
    w.credential(&w.other_provider);
    w.open(&w.provider, Policy::default());
    let start = w.slot(30 * HOUR);
    // In the past, outside the hours, a payment below the deposit, a non-patient.
    w.refused(
        before,
        w.book(patient, &w.provider, w.now() - HOUR, None),
        "in the past",
    );
    w.refused(
        before,
        w.book(patient, &w.provider, start + 60, None),
        "not a slot",
    );
    w.refused(
        before,
        w.book(patient, &w.provider, start, Some(U256::from(1))),
        "below",
    );
    w.refused(
        before,
        w.book(&w.other_provider, &w.provider, start, None),
        "not a patient's account",
    );
    // Taken.
    let id = w.book(patient, &w.provider, start, None).unwrap();
    let before = w.escrow();
    w.refused(
        before,
        w.book(other, &w.provider, start, None),
        "already booked",
    );
    // Refused bookings leave no sealed reason behind.
    let reasons: i64 = w
        .conn()
        .query_row("SELECT COUNT(*) FROM appointment_reasons", [], |r| r.get(0))
        .unwrap();
    assert_eq!(reasons, 1);
    // A confirmation by another provider, a second no-show mark.
    w.refused(
        before,
        w.act(&w.other_provider, id, Step::Confirm),
        "not the party",
    );
    w.act(&w.provider, id, Step::Confirm).unwrap();
    w.pass(31 * HOUR);
    w.act(&w.provider, id, Step::NoShow).unwrap();
    let before = w.escrow();
    w.refused(
        before,
        w.act(&w.provider, id, Step::NoShow),
        "not in a state",
    );
    // No such appointment.
    w.refused(
        before,
        w.act(&w.provider, 999, Step::Confirm),
        "no such appointment",
    );
    // An insurer without the role.
    let coverage = insurance::Coverage {
        patient: patient.name().into(),
        provider: "dr-a".into(),
        visit_type: "checkup".into(),
        share_bps: 8_000,
        expires_at: w.now() + 30 * 24 * HOUR,
        policy: "P-1".into(),
    };
    let as_issuer =
        w.rt.block_on(insurance::verify(w.conn(), &w.client, &w.issuer, &coverage));
    w.refused(before, as_issuer, "does not hold the role");
}

#[test]
fn concurrent_bookings_of_one_slot_have_exactly_one_winner() {
    let w = world(6);
    w.credential(&w.provider);
    w.open(&w.provider, Policy::default());
    let start = w.slot(30 * HOUR);
    let before = w.escrow();
    // Each patient on its own connection and thread, at once.
    let outcomes: Vec<Result<u64, String>> = std::thread::scope(|s| {
        let handles: Vec<_> = w
            .patients
            .iter()
            .map(|p| {
                let dir = w.dir.clone();
                let client = w.client.clone();
                s.spawn(move || {
                    let vault = dir.unlock_with("pw", FAST_KDF).unwrap();
                    let rt = tokio::runtime::Runtime::new().unwrap();
                    rt.block_on(desk::book(
                        &vault,
                        &client,
                        p,
                        &BookRequest {
                            provider: "dr-a".into(),
                            start,
                            visit_type: "checkup".into(),
                            reason: REASON.into(),
                            pay: None,
                        },
                    ))
                    .map(|b| b.id)
                    .map_err(|e| e.to_string())
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let won: Vec<&u64> = outcomes.iter().filter_map(|o| o.as_ref().ok()).collect();
    assert_eq!(won.len(), 1, "{outcomes:?}");
    for lost in outcomes.iter().filter_map(|o| o.as_ref().err()) {
        assert!(lost.contains("already booked"), "{lost}");
    }
    assert_eq!(w.escrow(), before + fee());
    let reasons: i64 = w
        .conn()
        .query_row("SELECT COUNT(*) FROM appointment_reasons", [], |r| r.get(0))
        .unwrap();
    assert_eq!(reasons, 1, "the losers' sealed reasons are gone");
}

#[test]
fn insurance_deposits_cancellations_no_shows_and_the_scheduler() {
    let w = world(2);
    let patient = &w.patients[0];
    w.credential(&w.provider);
    let policy = Policy {
        deposit_bps: 5_000,
        ..Policy::default()
    };
    w.open(&w.provider, policy);
    // An insurer (role granted by the admin) verifies and funds coverage.
    let insurer = Actor::from_account(
        accounts::get_or_create(w.conn(), w.vault.keys(), "acme-health").unwrap(),
    );
    w.rt.block_on(
        w.client
            .grant_role(w.admin.account(), Role::Insurer, insurer.address()),
    )
    .unwrap();
    w.rt.block_on(
        w.client
            .ledger()
            .set_balance(insurer.address(), U256::from(10u64).pow(U256::from(19))),
    )
    .unwrap();
    let coverage = insurance::Coverage {
        patient: patient.name().into(),
        provider: "dr-a".into(),
        visit_type: "checkup".into(),
        share_bps: 8_000,
        expires_at: w.now() + 30 * 24 * HOUR,
        policy: "P-1".into(),
    };
    w.rt.block_on(insurance::verify(w.conn(), &w.client, &insurer, &coverage))
        .unwrap();
    w.rt.block_on(insurance::fund(
        w.conn(),
        &w.client,
        &insurer,
        fee() * U256::from(10),
    ))
    .unwrap();
    let start = w.slot(30 * HOUR);
    let quote =
        w.rt.block_on(desk::quote(
            w.conn(),
            &w.client,
            patient.address(),
            "dr-a",
            "checkup",
            start,
        ))
        .unwrap();
    assert!(
        quote.says.contains("covered by `acme-health`"),
        "{}",
        quote.says
    );
    let share = fee() * U256::from(8) / U256::from(10);
    assert_eq!(quote.copay, (fee() - share).to_string());
    // The copay paid; the patient cancels two days ahead: all back, the share too.
    let far = w.slot(50 * HOUR);
    let id = w.book(patient, &w.provider, far, None).unwrap();
    let cancelled = w.act(patient, id, Step::Cancel).unwrap();
    assert_eq!(cancelled.to_patient, (fee() - share).to_string());
    assert_eq!(cancelled.to_insurer, share.to_string());
    // Covered, confirmed, absent: half the copay forfeited (the deposit), held
    // for the dispute window; the patient disputes; the admin keeps the no-show.
    let id = w.book(patient, &w.provider, start, None).unwrap();
    w.act(&w.provider, id, Step::Confirm).unwrap();
    w.pass(31 * HOUR);
    let absent = w.act(&w.provider, id, Step::NoShow).unwrap();
    let copay = fee() - share;
    assert_eq!(
        absent.to_patient,
        (copay - copay / U256::from(2)).to_string()
    );
    assert_eq!(absent.to_insurer, share.to_string());
    assert_eq!(
        w.act(patient, id, Step::Dispute).unwrap().status,
        "disputed"
    );
    let kept =
        w.rt.block_on(desk::resolve(w.conn(), &w.client, &w.admin, id, true))
            .unwrap();
    assert_eq!(kept.status, "no-show");
    assert_eq!(kept.to_provider, (copay / U256::from(2)).to_string());
    // The scheduler refunds a booking left unconfirmed past its deadline.
    let late = w.slot(40 * HOUR);
    let unconfirmed = w.book(patient, &w.provider, late, None).unwrap();
    w.sync();
    let engine = &w.admin;
    let settle = |at: u64| {
        w.rt.block_on(reminders::settle(
            w.conn(),
            &w.client,
            engine,
            at,
            7 * 24 * HOUR,
        ))
        .unwrap()
    };
    assert_eq!(settle(w.now()).expired, 0);
    w.pass(25 * HOUR);
    w.sync();
    assert_eq!(settle(w.now()).expired, 1);
    w.sync();
    let info = mirror::get(w.conn(), unconfirmed).unwrap();
    assert_eq!(info.status, "expired");
    assert_eq!(info.refunded, info.paid);
    // Nothing is held any more but the insurer's funds, every share returned.
    assert_eq!(w.escrow(), fee() * U256::from(10));
    // The insurer sees what it covers.
    let shown = insurance::show(w.conn(), insurer.address(), w.now()).unwrap();
    assert_eq!(shown.len(), 1);
    assert_eq!(shown[0].share_bps, 8_000);
}
