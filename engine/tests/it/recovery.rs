//! Key recovery, the five steps, against the embedded chain: guardians'
//! shares sealed to each; a non-guardian, too few guardians, a forged or
//! conflicted attestation, a wrong share and an unread trail are each
//! refused, audited, and change nothing; a completed recovery moves the
//! patient's link, keeps their grants (the provider still reads), takes
//! every power from the old key, and an unjustified review freezes control.

use cohort_engine::Error;
use cohort_engine::access::recovery::{self, GuardianSetup};
use cohort_engine::access::scope::{ALL_KINDS, Level, Purpose};
use cohort_engine::access::{Actor, grants, patients};
use cohort_engine::keys::accounts;
use cohort_engine::records::clinical::Clinic;
use cohort_ledger_bridge::Role;

use crate::common;

struct World {
    d: common::Deployed,
    patient: Actor,
    guardians: Vec<Actor>,
    new_key: Actor,
    provider: Actor,
    other_provider: Actor,
    auditor: Actor,
    outsider: Actor,
    patient_id: String,
    observation: String,
}

fn world() -> World {
    let d = common::deployed(2);
    let (patient_id, observation) = d.first_observation();
    let patient = d.patient("pat", &patient_id);
    let issuer = d.actor("issuer");
    let (provider, other_provider, auditor, outsider, new_key) = (
        d.actor("dr-a"),
        d.actor("dr-b"),
        d.actor("auditor"),
        d.actor("mallory"),
        d.actor("pat-new"),
    );
    let guardians: Vec<Actor> = ["g-ann", "g-bob", "g-cy"]
        .iter()
        .map(|n| d.actor(n))
        .collect();
    d.roles_and_credentials(
        &[
            (&issuer, Role::Issuer),
            (&provider, Role::Provider),
            (&other_provider, Role::Provider),
            (&auditor, Role::Auditor),
        ],
        &issuer,
        &["dr-a", "dr-b"],
    );
    World {
        d,
        patient,
        guardians,
        new_key,
        provider,
        other_provider,
        auditor,
        outsider,
        patient_id,
        observation,
    }
}

impl World {
    fn conn(&self) -> &rusqlite::Connection {
        self.d.vault.conn()
    }

    fn last_audit(&self) -> (String, String) {
        self.conn()
            .query_row(
                "SELECT actor, action FROM audit ORDER BY seq DESC LIMIT 1",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap()
    }

    fn grant(&self, who: &Actor, provider: &str) -> cohort_engine::Result<grants::Changed> {
        self.d.rt.block_on(grants::grant(
            self.conn(),
            self.d.vault.keys(),
            &self.d.client,
            who,
            &grants::GrantRequest {
                provider: provider.into(),
                level: Level::Read,
                purposes: Purpose::Treatment.bit(),
                kinds: ALL_KINDS,
                duration_secs: 86_400,
                on_behalf_of: None,
            },
        ))
    }

    fn setup(&self) {
        let setup = GuardianSetup {
            guardians: self
                .guardians
                .iter()
                .map(|g| g.name().to_string())
                .collect(),
            threshold: 2,
            backup: None,
        };
        let g = self
            .d
            .rt
            .block_on(recovery::set_guardians(
                self.conn(),
                &self.d.client,
                self.d.vault.keys(),
                &self.patient,
                &setup,
            ))
            .unwrap();
        assert_eq!((g.threshold, g.guardians.len()), (2, 3));
        assert!(g.shares_held);
    }

    fn approve(&self, who: &Actor, id: u64) -> cohort_engine::Result<recovery::RecoveryInfo> {
        self.d.rt.block_on(recovery::approve(
            self.conn(),
            &self.d.client,
            self.d.vault.keys(),
            who,
            id,
            "compared the face with the passport photo",
        ))
    }

    fn complete(&self, id: u64) -> cohort_engine::Result<recovery::Completed> {
        self.d.rt.block_on(recovery::complete(
            self.conn(),
            &self.d.client,
            self.d.vault.keys(),
            &self.new_key,
            id,
        ))
    }

    fn read_as(&self, who: &Actor) -> cohort_engine::Result<()> {
        self.d
            .rt
            .block_on(Clinic::new(&self.d.vault, &self.d.client).read(
                who,
                &self.observation,
                None,
                Purpose::Treatment,
            ))
            .map(|_| ())
    }
}

#[test]
fn the_five_steps_restore_records_and_grants_to_a_new_key() {
    let w = world();
    let rt = &w.d.rt;
    w.grant(&w.patient, "dr-a").unwrap();
    w.read_as(&w.provider).unwrap();
    w.setup();
    // Each guardian holds one sealed share of this round.
    let shares: i64 = w
        .conn()
        .query_row(
            "SELECT COUNT(*) FROM recovery_shares WHERE kind = 'share'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(shares, 3);

    // Step 1.
    let opened = rt
        .block_on(recovery::open(w.conn(), &w.d.client, &w.new_key, "pat"))
        .unwrap();
    let id = opened.id;
    assert_eq!(opened.state, "open");

    // A non-guardian is refused by the chain, audited, releases nothing.
    let e = w.approve(&w.outsider, id).unwrap_err();
    assert!(matches!(e, Error::Ledger(_) | Error::Forbidden(_)), "{e}");
    assert!(e.to_string().contains("NotAGuardian"), "{e}");
    assert_eq!(
        w.last_audit(),
        ("mallory".into(), "recovery.approve.refused".into())
    );
    let released = |w: &World| -> i64 {
        w.conn()
            .query_row("SELECT COUNT(*) FROM recovery_released", [], |r| r.get(0))
            .unwrap()
    };
    assert_eq!(released(&w), 0);

    // Steps 1-2 by one guardian: too few to complete.
    let r = w.approve(&w.guardians[0], id).unwrap();
    assert_eq!((r.approvals, r.released), (1, 1));
    let e = w.complete(id).unwrap_err();
    assert!(
        e.to_string().contains("1 of the 2 shares"),
        "too few guardians: {e}"
    );
    assert_eq!(
        w.last_audit(),
        ("pat-new".into(), "recovery.complete.refused".into())
    );
    w.approve(&w.guardians[2], id).unwrap();

    // Step 3: a forged attestation (no credential) and a conflicted one.
    let attest = |who: &Actor| {
        rt.block_on(recovery::attest(
            w.conn(),
            &w.d.client,
            who,
            id,
            "saw the driving licence",
        ))
    };
    let e = attest(&w.outsider).unwrap_err();
    assert!(e.to_string().contains("NotCredentialed"), "{e}");
    assert_eq!(
        w.last_audit(),
        ("mallory".into(), "recovery.attest.refused".into())
    );
    // Without the provider's attestation the chain refuses completion.
    let e = w.complete(id).unwrap_err();
    assert!(e.to_string().contains("NotAttested"), "{e}");
    assert_eq!(
        patients::of_patient(w.conn(), &w.patient_id)
            .unwrap()
            .unwrap()
            .name,
        "pat",
        "a refused completion moves nothing"
    );
    attest(&w.other_provider).unwrap();

    // Step 4.
    let done = w.complete(id).unwrap();
    assert_eq!(done.recovery.state, "completed");
    assert_eq!(done.patient_id.as_deref(), Some(w.patient_id.as_str()));
    assert_eq!(
        patients::of_patient(w.conn(), &w.patient_id)
            .unwrap()
            .unwrap()
            .name,
        "pat-new"
    );
    // The grant followed the patient: the provider still reads.
    w.read_as(&w.provider).unwrap();
    // The new key reads the patient's records; the old one reads nothing,
    // grants nothing.
    w.read_as(&w.new_key).unwrap();
    assert!(w.read_as(&w.patient).is_err(), "the old key reads nothing");
    // The data key is sealed to the new key; the old key's copies are gone
    // and the key rotated.
    let (old_address, new_address) = (
        format!("{:#x}", w.patient.address()),
        format!("{:#x}", w.new_key.address()),
    );
    use cohort_engine::keys::data_keys;
    assert!(data_keys::holds_current(w.conn(), &w.patient_id, &new_address).unwrap());
    assert!(!data_keys::holds_any(w.conn(), &w.patient_id, &old_address).unwrap());
    assert!(data_keys::current_epoch(w.conn(), &w.patient_id).unwrap() > 1);
    let e = w.grant(&w.patient, "dr-b").unwrap_err();
    assert!(
        e.to_string().contains("KeyInUse") || e.to_string().contains("not a registered patient"),
        "the old key cannot grant: {e}"
    );
    w.grant(&w.new_key, "dr-b").unwrap();
    w.read_as(&w.other_provider).unwrap();
    // The shares of the old key are gone; new ones of the new key are held.
    let g = rt
        .block_on(recovery::guardians(
            w.conn(),
            &w.d.client,
            patients::of_patient(w.conn(), &w.patient_id)
                .unwrap()
                .unwrap()
                .address,
        ))
        .unwrap();
    assert!(g.shares_held);
    assert_eq!(g.round, done.guardians_round);
    let old_rounds: i64 = w
        .conn()
        .query_row(
            "SELECT COUNT(*) FROM recovery_shares WHERE round < ?1",
            [g.round as i64],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(old_rounds, 0);
    assert_eq!(released(&w), 0, "used releases are deleted");

    // Step 5: the review needs the trail first, and an auditor.
    let review = |who: &Actor, justified| {
        rt.block_on(recovery::review(
            w.conn(),
            &w.d.client,
            who,
            id,
            justified,
            "the guardians confirmed by phone",
        ))
    };
    let e = review(&w.auditor, true).unwrap_err();
    assert!(e.to_string().contains("read recovery"), "{e}");
    let e = rt
        .block_on(recovery::trail(w.conn(), &w.d.client, &w.outsider, id))
        .unwrap_err();
    assert!(matches!(e, Error::Forbidden(_)), "{e}");
    let trail = rt
        .block_on(recovery::trail(w.conn(), &w.d.client, &w.auditor, id))
        .unwrap();
    let actions: Vec<&str> = trail.entries.iter().map(|e| e.action.as_str()).collect();
    for wanted in [
        "opened",
        "approved by a guardian",
        "identity attested by a provider",
        "completed",
        "recovery.approve.refused",
        "recovery.attest.refused",
    ] {
        assert!(actions.contains(&wanted), "{wanted} in {actions:?}");
    }
    let r = review(&w.auditor, false).unwrap();
    assert_eq!(r.review, "unjustified");
    // An unjustified recovery freezes the patient's control.
    assert!(w.read_as(&w.new_key).is_err());
    assert!(w.grant(&w.new_key, "dr-a").is_err());
}

#[test]
fn a_wrong_share_or_a_stale_round_moves_nothing() {
    let w = world();
    let rt = &w.d.rt;
    w.setup();
    let id = rt
        .block_on(recovery::open(w.conn(), &w.d.client, &w.new_key, "pat"))
        .unwrap()
        .id;
    w.approve(&w.guardians[0], id).unwrap();
    w.approve(&w.guardians[1], id).unwrap();
    rt.block_on(recovery::attest(
        w.conn(),
        &w.d.client,
        &w.provider,
        id,
        "in person",
    ))
    .unwrap();
    // A share swapped for one sealed to another recovery's context (a
    // share from someone else) does not open: nothing is sent.
    let (holder, sealed): (String, Vec<u8>) = w
        .conn()
        .query_row(
            "SELECT holder, sealed FROM recovery_released ORDER BY holder LIMIT 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    let public = accounts::public_key(w.conn(), "pat-new").unwrap().unwrap();
    let forged = cohort_engine::keys::ecies::seal_for(
        &public,
        format!("cohort/recovery-release/{id}/{holder}").as_bytes(),
        &[1u8; 33],
    )
    .unwrap();
    w.conn()
        .execute(
            "UPDATE recovery_released SET sealed = ?2 WHERE holder = ?1",
            rusqlite::params![holder, forged],
        )
        .unwrap();
    let e = w.complete(id).unwrap_err();
    assert!(
        e.to_string().contains("not the patient's key")
            || e.to_string().contains("malformed")
            || e.to_string().contains("do not combine"),
        "{e}"
    );
    let state = rt
        .block_on(recovery::show(w.conn(), &w.d.client, id))
        .unwrap()
        .state;
    assert_eq!(state, "open", "nothing was sent");
    // Restoring the genuine share completes it.
    w.conn()
        .execute(
            "UPDATE recovery_released SET sealed = ?2 WHERE holder = ?1",
            rusqlite::params![holder, sealed],
        )
        .unwrap();
    w.complete(id).unwrap();
    // Run again (as after a crash), it finishes idempotently.
    let again = w.complete(id).unwrap();
    assert_eq!(again.recovery.state, "completed");
}

#[test]
fn a_backup_key_releases_the_whole_key_and_only_it_can() {
    let w = world();
    let rt = &w.d.rt;
    let setup = GuardianSetup {
        guardians: vec!["g-ann".into(), "g-bob".into()],
        threshold: 2,
        backup: Some("g-cy".into()),
    };
    rt.block_on(recovery::set_guardians(
        w.conn(),
        &w.d.client,
        w.d.vault.keys(),
        &w.patient,
        &setup,
    ))
    .unwrap();
    let id = rt
        .block_on(recovery::open(w.conn(), &w.d.client, &w.new_key, "pat"))
        .unwrap()
        .id;
    let backup = |who: &Actor| {
        rt.block_on(recovery::release_backup(
            w.conn(),
            &w.d.client,
            w.d.vault.keys(),
            who,
            id,
        ))
    };
    assert!(matches!(backup(&w.guardians[0]), Err(Error::Forbidden(_))));
    assert_eq!(
        w.last_audit(),
        ("g-ann".into(), "recovery.backup.refused".into())
    );
    backup(&w.guardians[2]).unwrap();
    // The chain still wants the threshold of guardians and a provider.
    w.approve(&w.guardians[0], id).unwrap();
    w.approve(&w.guardians[1], id).unwrap();
    rt.block_on(recovery::attest(
        w.conn(),
        &w.d.client,
        &w.provider,
        id,
        "in person",
    ))
    .unwrap();
    w.complete(id).unwrap();
}

#[test]
fn bad_set_ups_are_refused() {
    let w = world();
    let rt = &w.d.rt;
    let set = |guardians: Vec<&str>, threshold| {
        rt.block_on(recovery::set_guardians(
            w.conn(),
            &w.d.client,
            w.d.vault.keys(),
            &w.patient,
            &GuardianSetup {
                guardians: guardians.into_iter().map(String::from).collect(),
                threshold,
                backup: None,
            },
        ))
    };
    assert!(matches!(set(vec!["g-ann"], 2), Err(Error::Invalid(_))));
    assert!(matches!(set(vec![], 1), Err(Error::Invalid(_))));
    assert!(matches!(set(vec!["pat"], 1), Err(Error::Invalid(_))));
    assert!(matches!(set(vec!["nobody"], 1), Err(Error::NotFound(_))));
    assert_eq!(
        w.last_audit(),
        ("pat".into(), "recovery.guardians.refused".into())
    );
    // A non-patient cannot name guardians.
    let e = rt
        .block_on(recovery::set_guardians(
            w.conn(),
            &w.d.client,
            w.d.vault.keys(),
            &w.outsider,
            &GuardianSetup {
                guardians: vec!["g-ann".into()],
                threshold: 1,
                backup: None,
            },
        ))
        .unwrap_err();
    assert!(matches!(e, Error::Forbidden(_)), "{e}");
    // Without guardians a recovery cannot open.
    let e = rt
        .block_on(recovery::open(w.conn(), &w.d.client, &w.new_key, "pat"))
        .unwrap_err();
    assert!(e.to_string().contains("NoGuardians"), "{e}");
}
