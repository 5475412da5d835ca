//! The compliance duties against the embedded chain: the accounting of
//! disclosures names each read with its records and basis; retention
//! purges what is due and only that, keeps what is held, finishes what a
//! crash left; the regulatory report counts and finds a damaged block;
//! every role refusal is audited and changes nothing.

use chrono::{Duration, Utc};
use cohort_engine::Error;
use cohort_engine::access::scope::{ALL_KINDS, Level, Purpose};
use cohort_engine::access::{Actor, emergency, grants};
use cohort_engine::chain;
use cohort_engine::compliance::Compliance;
use cohort_engine::records::clinical::{Clinic, Search};
use cohort_engine::storage::blockstore::BlockStore;
use cohort_engine::storage::packstore::PackBlockStore;
use cohort_ledger_bridge::Role;

use crate::common;

/// Whether any pack file still holds `bytes`.
fn packs_hold(blocks: &PackBlockStore, bytes: &[u8]) -> bool {
    blocks.pack_files().unwrap().iter().any(|p| {
        std::fs::read(p)
            .unwrap()
            .windows(bytes.len())
            .any(|w| w == bytes)
    })
}

const ALL: cohort_engine::compliance::report::Checks = cohort_engine::compliance::report::Checks {
    keyed: true,
    blocks: true,
};
const CHAIN_ONLY: cohort_engine::compliance::report::Checks =
    cohort_engine::compliance::report::Checks {
        keyed: false,
        blocks: false,
    };

struct World {
    d: common::Deployed,
    patient: Actor,
    provider: Actor,
    emergency_provider: Actor,
    auditor: Actor,
    admin: Actor,
    patient_id: String,
    observation: String,
}

fn world() -> World {
    let d = common::deployed(3);
    let (patient_id, observation) = d.first_observation();
    let patient = d.patient("pat", &patient_id);
    let (admin, provider, emergency_provider, auditor, issuer) = (
        d.actor("operator"),
        d.actor("dr-a"),
        d.actor("dr-e"),
        d.actor("auditor"),
        d.actor("issuer"),
    );
    d.roles_and_credentials(
        &[
            (&issuer, Role::Issuer),
            (&provider, Role::Provider),
            (&emergency_provider, Role::Provider),
            (&emergency_provider, Role::Emergency),
            (&auditor, Role::Auditor),
        ],
        &issuer,
        &["dr-a", "dr-e"],
    );
    World {
        d,
        patient,
        provider,
        emergency_provider,
        auditor,
        admin,
        patient_id,
        observation,
    }
}

impl World {
    fn service(&self) -> Compliance<'_> {
        Compliance::new(&self.d.vault, &self.d.client)
    }

    fn sync(&self) {
        let mut conn = self.d.dir.connect().unwrap();
        self.d
            .rt
            .block_on(chain::sync(&self.d.dir, &mut conn))
            .unwrap();
    }

    fn last_audit(&self) -> (String, String) {
        self.d
            .vault
            .conn()
            .query_row(
                "SELECT actor, action FROM audit ORDER BY seq DESC LIMIT 1",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap()
    }

    fn count(&self, sql: &str) -> i64 {
        self.d
            .vault
            .conn()
            .query_row(sql, [], |r| r.get(0))
            .unwrap()
    }

    /// Asserts `outcome` is a role refusal, audited as `action.refused` by `who`.
    fn role_refused<T: std::fmt::Debug>(
        &self,
        who: &Actor,
        action: &str,
        outcome: cohort_engine::Result<T>,
    ) {
        match outcome {
            Err(Error::Forbidden(m)) => assert!(m.contains("role"), "{m}"),
            other => panic!("expected a role refusal, got {other:?}"),
        }
        assert_eq!(
            self.last_audit(),
            (who.name().to_string(), format!("{action}.refused"))
        );
    }
}

#[test]
fn the_accounting_names_every_disclosure_with_its_records_and_basis() {
    let w = world();
    let rt = &w.d.rt;
    let clinic = Clinic::new(&w.d.vault, &w.d.client);
    let req = grants::GrantRequest {
        provider: "dr-a".into(),
        level: Level::Read,
        purposes: Purpose::Treatment.bit(),
        kinds: ALL_KINDS,
        duration_secs: 86_400,
        on_behalf_of: None,
    };
    rt.block_on(grants::grant(
        w.d.vault.conn(),
        w.d.vault.keys(),
        &w.d.client,
        &w.patient,
        &req,
    ))
    .unwrap();
    // A read of one record, and a search of the patient's conditions.
    rt.block_on(clinic.read(&w.provider, &w.observation, None, Purpose::Treatment))
        .unwrap();
    let search = Search {
        patient: "pat".into(),
        types: vec!["Condition".into()],
        ..Search::default()
    };
    let conditions = rt
        .block_on(clinic.search(&w.provider, &search, Purpose::Treatment))
        .unwrap();
    // An emergency read by a provider without a grant.
    rt.block_on(emergency::trigger(
        w.d.vault.conn(),
        w.d.vault.keys(),
        &w.d.client,
        &w.emergency_provider,
        "pat",
        "unconscious on arrival",
    ))
    .unwrap();
    rt.block_on(clinic.read(
        &w.emergency_provider,
        &w.observation,
        None,
        Purpose::Treatment,
    ))
    .unwrap();
    // The patient's own export is no disclosure.
    rt.block_on(clinic.export_bundle(&w.patient, "pat", Purpose::Treatment))
        .unwrap();
    w.sync();

    let a = rt
        .block_on(w.service().disclosures(&w.patient, "pat", None))
        .unwrap();
    assert_eq!(a.patient, "pat");
    let by = |who: &str, basis: &str| -> Vec<_> {
        a.disclosures
            .iter()
            .filter(|d| d.recipient == who && d.basis == basis)
            .collect()
    };
    let granted = by("dr-a", "grant");
    assert_eq!(granted.len(), 2, "{:#?}", a.disclosures);
    assert!(
        granted
            .iter()
            .any(|d| d.records == vec![w.observation.clone()]
                && d.why == "treatment"
                && d.evidence.starts_with("chain block ")),
        "{granted:#?}"
    );
    let searched: Vec<String> = conditions
        .iter()
        .map(|r| r.version.record_id.clone())
        .collect();
    assert!(!searched.is_empty());
    assert!(
        granted.iter().any(|d| d.records == searched),
        "the search's records are named: {granted:#?}"
    );
    let urgent = by("dr-e", "emergency");
    assert_eq!(urgent.len(), 1, "{:#?}", a.disclosures);
    assert_eq!(urgent[0].records, vec![w.observation.clone()]);
    assert!(
        a.disclosures.iter().all(|d| d.recipient != "pat"),
        "the patient's own export is not a disclosure"
    );
    assert!(
        a.disclosures.windows(2).all(|p| p[0].at >= p[1].at),
        "newest first"
    );
    assert_eq!(
        w.last_audit(),
        ("pat".to_string(), "disclosures.account".to_string())
    );

    // A privacy officer may answer the request; a provider may not ask.
    let for_auditor = rt
        .block_on(w.service().disclosures(&w.auditor, &w.patient_id, None))
        .unwrap();
    assert_eq!(for_auditor.disclosures, a.disclosures);
    let refused = rt.block_on(w.service().disclosures(&w.provider, "pat", None));
    w.role_refused(&w.provider, "disclosures.account", refused);
    // An unknown patient is named.
    match rt.block_on(w.service().disclosures(&w.patient, "nobody", None)) {
        Err(Error::NotFound(m) | Error::Forbidden(m)) => assert!(m.contains("nobody"), "{m}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        w.last_audit(),
        ("pat".to_string(), "disclosures.account.refused".to_string())
    );
    // Since tomorrow: nothing.
    let none = rt
        .block_on(
            w.service()
                .disclosures(&w.patient, "pat", Some(Utc::now() + Duration::days(1))),
        )
        .unwrap();
    assert!(none.disclosures.is_empty());
}

#[test]
fn retention_purges_what_is_due_keeps_what_is_held_and_finishes_a_crash() {
    let w = world();
    let rt = &w.d.rt;
    let s = w.service();
    let patients: Vec<String> =
        w.d.vault
            .conn()
            .prepare("SELECT patient_id FROM patients ORDER BY patient_id")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
    assert_eq!(patients.len(), 3);
    let observations_of = |p: &str| -> i64 {
        w.d.vault
            .conn()
            .query_row(
                "SELECT COUNT(*) FROM records WHERE resource_type = 'Observation' AND patient_id = ?1",
                [p],
                |r| r.get(0),
            )
            .unwrap()
    };
    let listed = |p: &str, t: &str| -> usize {
        w.d.vault
            .list(Some(p), usize::MAX)
            .unwrap()
            .iter()
            .filter(|v| v.resource_type == t)
            .count()
    };
    // The held patient is not `pat`, whose records are purged.
    let others: Vec<String> = patients
        .iter()
        .filter(|p| **p != w.patient_id)
        .cloned()
        .collect();
    let held = others[0].clone();
    let (a, c) = (w.patient_id.clone(), others[1].clone());
    assert!(observations_of(&a) > 0 && observations_of(&held) > 0 && observations_of(&c) > 0);
    let conditions_before = w.count("SELECT COUNT(*) FROM proj_conditions");
    let audit_before = w.count("SELECT COUNT(*) FROM audit");

    // Bad policies and a provider are refused, audited, nothing set.
    for (t, years, word) in [
        ("Patient", 10, "erase"),
        ("Observation", 0, "1 to 150"),
        ("Observation", 1000, "1 to 150"),
        ("Appointment", 10, "not a record type"),
    ] {
        match rt.block_on(s.set_policy(&w.admin, t, years)) {
            Err(Error::Invalid(m)) => assert!(m.contains(word), "{m}"),
            other => panic!("{t} {years}: {other:?}"),
        }
        assert_eq!(w.last_audit().1, "retention.policy.refused");
    }
    let refused = rt.block_on(s.set_policy(&w.provider, "Observation", 10));
    w.role_refused(&w.provider, "retention.policy", refused);
    assert_eq!(w.count("SELECT COUNT(*) FROM retention_policies"), 0);

    rt.block_on(s.set_policy(&w.admin, "Observation", 10))
        .unwrap();
    match rt.block_on(s.hold(&w.admin, &held, " ")) {
        Err(Error::Invalid(m)) => assert!(m.contains("reason"), "{m}"),
        other => panic!("{other:?}"),
    }
    rt.block_on(s.hold(&w.admin, &held, "case 2026-117"))
        .unwrap();
    match rt.block_on(s.hold(&w.admin, &held, "again")) {
        Err(Error::Invalid(m)) => assert!(m.contains("already"), "{m}"),
        other => panic!("{other:?}"),
    }
    match rt.block_on(s.hold(&w.admin, "no-such-patient", "x")) {
        Err(Error::NotFound(m)) => assert!(m.contains("no-such-patient"), "{m}"),
        other => panic!("{other:?}"),
    }
    let refused = rt.block_on(s.run_retention(&w.provider, Utc::now(), false));
    w.role_refused(&w.provider, "retention.purge", refused);

    // Nine years on, nothing is due.
    let nine = rt
        .block_on(s.run_retention(&w.admin, Utc::now() + Duration::days(9 * 365), false))
        .unwrap();
    assert_eq!((nine.versions, nine.held), (0, 0));

    // A dry run at eleven years counts and changes nothing.
    let later = Utc::now() + Duration::days(11 * 366);
    let dry = rt.block_on(s.run_retention(&w.admin, later, true)).unwrap();
    let due = (observations_of(&a) + observations_of(&c)) as u64;
    assert_eq!(dry.records.get("Observation"), Some(&due));
    assert_eq!(dry.held, observations_of(&held) as u64);
    assert_eq!(w.count("SELECT COUNT(*) FROM retention_purges"), 0);
    assert_eq!(listed(&a, "Observation") as i64, observations_of(&a));

    // The purge: the due records' blocks and projection rows go; the
    // held patient's and other types stay; the rows stay, marked purged.
    let record = w.observation.clone();
    let cid: String =
        w.d.vault
            .conn()
            .query_row(
                "SELECT cid FROM records WHERE record_id = ?1",
                [&record],
                |r| r.get(0),
            )
            .unwrap();
    let blocks = w.d.dir.block_store().unwrap();
    let saved = blocks.get(&cid).unwrap();
    assert!(packs_hold(&blocks, &saved));
    let generation = cohort_engine::records::projection::generation(w.d.vault.conn()).unwrap();
    let purged = rt
        .block_on(s.run_retention(&w.admin, later, false))
        .unwrap();
    assert_eq!(purged.records.get("Observation"), Some(&due));
    assert_eq!(purged.versions, due, "one version each");
    assert_eq!(purged.blocks_deleted, due);
    assert!(!blocks.has(&cid));
    assert!(
        !packs_hold(&blocks, &saved),
        "the purged bytes are overwritten"
    );
    assert_eq!(listed(&a, "Observation"), 0);
    assert_eq!(listed(&c, "Observation"), 0);
    assert_eq!(listed(&held, "Observation") as i64, observations_of(&held));
    assert_eq!(
        w.count("SELECT COUNT(*) FROM proj_observations"),
        observations_of(&held),
        "only the held patient's observations stay in the projection"
    );
    assert_eq!(
        w.count("SELECT COUNT(*) FROM proj_conditions"),
        conditions_before
    );
    assert!(cohort_engine::records::projection::generation(w.d.vault.conn()).unwrap() > generation);
    assert_eq!(
        w.last_audit(),
        ("operator".into(), "retention.purge".into())
    );
    let history = w.d.vault.history(&record).unwrap();
    assert_eq!(history.len(), 1, "the record's row stays");
    // Reading it says it was purged, before any trace on chain.
    let traced = w.count("SELECT COUNT(*) FROM ledger_record_reads");
    match rt.block_on(Clinic::new(&w.d.vault, &w.d.client).read(
        &w.patient,
        &record,
        None,
        Purpose::Treatment,
    )) {
        Err(Error::NotFound(m)) => assert!(m.contains("purged") && m.contains("retention"), "{m}"),
        other => panic!("{:?}", other.map(|r| r.version)),
    }
    w.sync();
    assert_eq!(w.count("SELECT COUNT(*) FROM ledger_record_reads"), traced);

    // A crash after the purge's commit, before its block was deleted: the
    // next run deletes it.
    assert_eq!(blocks.put(&saved).unwrap(), cid);
    blocks.flush().unwrap();
    w.d.vault
        .conn()
        .execute(
            "UPDATE retention_purges SET block_deleted = 0 WHERE cid = ?1",
            [&cid],
        )
        .unwrap();
    let again = rt
        .block_on(s.run_retention(&w.admin, later, false))
        .unwrap();
    assert_eq!((again.versions, again.blocks_deleted), (0, 1));
    assert!(!blocks.has(&cid));
    assert!(!packs_hold(&blocks, &saved));

    // Released, the held patient's records go too.
    rt.block_on(s.release_hold(&w.admin, &held)).unwrap();
    match rt.block_on(s.release_hold(&w.admin, &held)) {
        Err(Error::NotFound(m)) => assert!(m.contains("not under legal hold"), "{m}"),
        other => panic!("{other:?}"),
    }
    let rest = rt
        .block_on(s.run_retention(&w.admin, later, false))
        .unwrap();
    assert_eq!(rest.versions as i64, observations_of(&held));
    assert_eq!(w.count("SELECT COUNT(*) FROM proj_observations"), 0);
    assert!(w.count("SELECT COUNT(*) FROM audit") > audit_before);
    let (policies, holds) = rt.block_on(s.retention(&w.auditor)).unwrap();
    assert_eq!(policies.len(), 1);
    assert!(holds.is_empty());
    let refused = rt.block_on(s.retention(&w.provider));
    w.role_refused(&w.provider, "retention.show", refused);
}

#[test]
fn the_report_counts_accesses_and_finds_a_damaged_block() {
    let w = world();
    let rt = &w.d.rt;
    let clinic = Clinic::new(&w.d.vault, &w.d.client);
    rt.block_on(emergency::trigger(
        w.d.vault.conn(),
        w.d.vault.keys(),
        &w.d.client,
        &w.emergency_provider,
        "pat",
        "collapsed",
    ))
    .unwrap();
    rt.block_on(clinic.read(
        &w.emergency_provider,
        &w.observation,
        None,
        Purpose::Treatment,
    ))
    .unwrap();
    rt.block_on(clinic.read(&w.provider, &w.observation, None, Purpose::Treatment))
        .unwrap_err();
    w.sync();
    let from = Utc::now() - Duration::hours(1);
    let to = Utc::now() + Duration::hours(1);
    let s = w.service();
    let r = rt
        .block_on(s.report(&w.d.dir, &w.admin, from, to, ALL))
        .unwrap();
    assert!(r.integrity.clean, "{:#?}", r.integrity);
    assert_eq!(r.accesses.emergency_reads, 1);
    assert_eq!(r.accesses.refused, 1);
    assert_eq!(r.emergencies.opened, 1);
    assert_eq!(r.integrity.ledger_verified, Some(true));
    assert!(r.integrity.blocks_checked > 0);
    assert!(r.integrity.audit_entries > 0);
    assert_eq!(
        w.last_audit(),
        ("operator".into(), "report.generate".into())
    );

    // An auditor may read it; a provider may not; a backwards period is named.
    rt.block_on(s.report(&w.d.dir, &w.auditor, from, to, CHAIN_ONLY))
        .unwrap();
    let refused = rt.block_on(s.report(&w.d.dir, &w.provider, from, to, CHAIN_ONLY));
    w.role_refused(&w.provider, "report.generate", refused);
    match rt.block_on(s.report(&w.d.dir, &w.admin, to, from, CHAIN_ONLY)) {
        Err(Error::Invalid(m)) => assert!(m.contains("starts"), "{m}"),
        other => panic!("{other:?}"),
    }

    // A block altered on disk is a breach the report finds and names.
    let cid: String =
        w.d.vault
            .conn()
            .query_row(
                "SELECT cid FROM records WHERE record_id = ?1",
                [&w.observation],
                |r| r.get(0),
            )
            .unwrap();
    let at =
        w.d.dir
            .block_store()
            .unwrap()
            .location(&cid)
            .unwrap()
            .unwrap();
    let mut bytes = std::fs::read(&at.path).unwrap();
    bytes[at.offset as usize + 10] ^= 1;
    std::fs::write(&at.path, bytes).unwrap();
    let damaged = rt
        .block_on(s.report(&w.d.dir, &w.admin, from, to, ALL))
        .unwrap();
    assert!(!damaged.integrity.clean);
    assert_eq!(damaged.integrity.blocks_bad, vec![cid.clone()]);
    let page = cohort_engine::compliance::report::html(&damaged);
    assert!(page.contains("Verification found a problem") && page.contains(&cid));
    assert!(
        !page.contains("unconscious") && !page.contains("collapsed"),
        "no reason texts"
    );
}
