//! The clinical service against the embedded chain: every way a read or a
//! write can lack its authorization is refused, names what is missing, is
//! audited, and decrypts nothing; what is allowed is traced on chain.

use cohort_engine::Error;
use cohort_engine::access::scope::{ALL_KINDS, Level, Purpose, kind_of};
use cohort_engine::access::{Actor, emergency, grants, notifications};
use cohort_engine::keys::accounts;
use cohort_engine::records::anchor;
use cohort_engine::records::clinical::{Clinic, Search};
use cohort_engine::records::vault::Vault;
use cohort_ledger_bridge::{Client, Role};

use crate::common;
const HOUR: u64 = 3_600;

struct World {
    _tmp: tempfile::TempDir,
    vault: Vault,
    client: Client,
    rt: tokio::runtime::Runtime,
    patient: Actor,
    provider: Actor,
    other_provider: Actor,
    issuer: Actor,
    auditor: Actor,
    admin: Actor,
    patient_id: String,
    observation: String,
    condition: String,
}

fn world() -> World {
    let common::Deployed {
        tmp,
        vault,
        rt,
        client,
        ..
    } = common::deployed(2);
    let (patient_id, observation): (String, String) = vault
        .conn()
        .query_row(
            "SELECT patient_id, record_id FROM records WHERE resource_type = 'Observation' ORDER BY record_id LIMIT 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    let condition: String = vault
        .conn()
        .query_row(
            "SELECT record_id FROM records WHERE resource_type = 'Condition' AND patient_id = ?1 LIMIT 1",
            [&patient_id],
            |r| r.get(0),
        )
        .unwrap();
    let patient =
        cohort_engine::research::link_patient(vault.conn(), &vault, "pat", &patient_id).unwrap();
    let get = |n: &str| {
        Actor::from_account(accounts::get_or_create(vault.conn(), vault.keys(), n).unwrap())
    };
    let admin = get("operator");
    let (provider, other_provider, issuer, auditor) =
        (get("dr-a"), get("dr-b"), get("issuer"), get("auditor"));
    for (who, role) in [
        (&provider, Role::Provider),
        (&provider, Role::Emergency),
        (&other_provider, Role::Provider),
        (&issuer, Role::Issuer),
        (&auditor, Role::Auditor),
    ] {
        rt.block_on(client.grant_role(admin.account(), role, who.address()))
            .unwrap();
    }
    let patient = Actor::from_account(patient);
    rt.block_on(grants::ensure_patient(&client, &patient))
        .unwrap();
    World {
        _tmp: tmp,
        vault,
        client,
        rt,
        patient,
        provider,
        other_provider,
        issuer,
        auditor,
        admin,
        patient_id,
        observation,
        condition,
    }
}

impl World {
    fn clinic(&self) -> Clinic<'_> {
        Clinic::new(&self.vault, &self.client)
    }

    fn read(
        &self,
        who: &Actor,
        record: &str,
        purpose: Purpose,
    ) -> cohort_engine::Result<cohort_engine::records::clinical::Read> {
        self.rt
            .block_on(self.clinic().read(who, record, None, purpose))
    }

    /// Asserts a refusal naming `what`, audited, with nothing read.
    fn refused(&self, who: &Actor, record: &str, purpose: Purpose, what: &str) {
        let reads_before = self.reads_of(who);
        match self.read(who, record, purpose) {
            Err(Error::Forbidden(m)) => assert!(m.contains(what), "{m:?} does not name {what:?}"),
            other => panic!(
                "expected a refusal naming {what:?}, got {:?}",
                other.map(|r| r.version)
            ),
        }
        assert_eq!(
            self.reads_of(who),
            reads_before,
            "a refusal decrypts nothing"
        );
        let last: (String, String) = self
            .vault
            .conn()
            .query_row(
                "SELECT actor, action FROM audit ORDER BY seq DESC LIMIT 1",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        assert_eq!(
            last,
            (who.name().to_string(), "read.refused".to_string()),
            "the refusal is audited"
        );
    }

    fn reads_of(&self, who: &Actor) -> i64 {
        self.vault
            .conn()
            .query_row(
                "SELECT COUNT(*) FROM audit WHERE actor = ?1 AND action IN ('read', 'read.emergency')",
                [who.name()],
                |r| r.get(0),
            )
            .unwrap()
    }

    fn credential(&self, who: &Actor, hours: u64) {
        let now = self.rt.block_on(self.client.ledger().timestamp()).unwrap();
        self.rt
            .block_on(grants::attest_credential(
                self.vault.conn(),
                &self.client,
                &self.issuer,
                who.name(),
                "MD",
                now + hours * HOUR,
            ))
            .unwrap();
    }

    fn grant(&self, to: &Actor, level: Level, purposes: u8, kinds: u32, hours: u64) {
        let req = grants::GrantRequest {
            provider: to.name().into(),
            level,
            purposes,
            kinds,
            duration_secs: hours * HOUR,
            on_behalf_of: None,
        };
        self.rt
            .block_on(grants::grant(
                self.vault.conn(),
                self.vault.keys(),
                &self.client,
                &self.patient,
                &req,
            ))
            .unwrap();
    }

    fn pass(&self, hours: u64) {
        self.rt
            .block_on(self.client.ledger().increase_time(hours * HOUR))
            .unwrap();
    }
}

#[test]
fn record_kinds_are_the_stored_fhir_types_in_order() {
    assert_eq!(
        cohort_engine::access::scope::KINDS,
        cohort_engine::records::fhir::SUPPORTED
    );
}

#[test]
fn every_missing_authorization_is_refused_by_name_audited_and_reads_nothing() {
    let w = world();
    let t = Purpose::Treatment;
    // The patient reads their own.
    let own = w.read(&w.patient, &w.observation, t).unwrap();
    assert!(!own.emergency && own.content.starts_with(b"{"));
    // A provider role without a credential.
    w.refused(&w.provider, &w.observation, t, "no provider credential");
    w.credential(&w.provider, 2);
    w.refused(&w.provider, &w.observation, t, "holds no grant");
    // A summary grant reads a Condition, not an Observation.
    w.grant(
        &w.provider,
        Level::Summary,
        Purpose::Treatment.bit(),
        ALL_KINDS,
        1,
    );
    assert!(w.read(&w.provider, &w.condition, t).is_ok());
    w.refused(&w.provider, &w.observation, t, "does not reach the level");
    // A read grant for conditions only, for treatment.
    w.grant(
        &w.provider,
        Level::Read,
        Purpose::Treatment.bit(),
        kind_of("Condition").unwrap(),
        1,
    );
    w.refused(
        &w.provider,
        &w.observation,
        t,
        "does not cover the record types",
    );
    w.grant(
        &w.provider,
        Level::Read,
        Purpose::Treatment.bit(),
        ALL_KINDS,
        1,
    );
    w.refused(
        &w.provider,
        &w.observation,
        Purpose::Payment,
        "does not cover the purpose",
    );
    let read = w.read(&w.provider, &w.observation, t).unwrap();
    assert_eq!(read.version.record_id, w.observation);
    // Another credentialed provider without a grant.
    w.credential(&w.other_provider, 2);
    w.refused(&w.other_provider, &w.observation, t, "holds no grant");
    // Expiry of the grant.
    w.pass(1);
    w.refused(&w.provider, &w.observation, t, "has expired");
    // Revocation takes effect on the next call.
    w.grant(
        &w.provider,
        Level::Read,
        Purpose::Treatment.bit(),
        ALL_KINDS,
        24,
    );
    assert!(w.read(&w.provider, &w.observation, t).is_ok());
    w.rt.block_on(grants::revoke(
        w.vault.conn(),
        w.vault.keys(),
        &w.client,
        &w.patient,
        w.provider.name(),
        None,
    ))
    .unwrap();
    w.refused(&w.provider, &w.observation, t, "was revoked");
    // Expiry of the credential (2 h, one has passed).
    w.grant(
        &w.provider,
        Level::Read,
        Purpose::Treatment.bit(),
        ALL_KINDS,
        24,
    );
    w.pass(1);
    w.refused(&w.provider, &w.observation, t, "credential has expired");
    // Not a provider at all.
    w.refused(&w.auditor, &w.observation, t, "is neither patient");
    // A patient with no account: nobody reads their records.
    let orphan: String = w
        .vault
        .conn()
        .query_row(
            "SELECT record_id FROM records WHERE patient_id <> ?1 LIMIT 1",
            [&w.patient_id],
            |r| r.get(0),
        )
        .unwrap();
    w.refused(&w.patient, &orphan, t, "has no account on chain");
    // Every allowed read left one trace on chain, signed by the reader.
    let reads: i64 = w
        .vault
        .conn()
        .query_row(
            "SELECT COUNT(*) FROM audit WHERE action = 'read'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(reads, 4);
}

#[test]
fn emergency_access_six_steps() {
    let w = world();
    let t = Purpose::Treatment;
    w.credential(&w.provider, 48);
    // (3) the patient set a webhook: a local receiver takes the POST.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    notifications::set_webhook(w.vault.conn(), w.patient.address(), Some(&url), true).unwrap();
    let receiver = std::thread::spawn(move || {
        use std::io::{Read, Write};
        let (mut s, _) = listener.accept().unwrap();
        let mut buf = vec![0u8; 65536];
        let mut got = Vec::new();
        loop {
            let n = s.read(&mut buf).unwrap();
            got.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&got);
            if let Some(end) = text.find("\r\n\r\n") {
                let len: usize = text
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length: ")
                            .map(|v| v.trim().parse().unwrap())
                    })
                    .unwrap_or(0);
                if got.len() >= end + 4 + len {
                    break;
                }
            }
        }
        s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
            .unwrap();
        String::from_utf8(got).unwrap()
    });
    // (1) without the emergency role: refused.
    w.credential(&w.other_provider, 48);
    let e =
        w.rt.block_on(emergency::trigger(
            w.vault.conn(),
            w.vault.keys(),
            &w.client,
            &w.other_provider,
            "pat",
            "chest pain",
        ))
        .unwrap_err();
    assert!(e.to_string().contains("NotEmergencyProvider"), "{e}");
    // (1) triggered with a reason; (2) read access that (4) is marked and traced.
    w.refused(&w.provider, &w.observation, t, "holds no grant");
    let opened =
        w.rt.block_on(emergency::trigger(
            w.vault.conn(),
            w.vault.keys(),
            &w.client,
            &w.provider,
            "pat",
            "unconscious on arrival",
        ))
        .unwrap();
    let read = w.read(&w.provider, &w.observation, t).unwrap();
    assert!(read.emergency);
    let action: String = w
        .vault
        .conn()
        .query_row(
            "SELECT action FROM audit WHERE actor = 'dr-a' ORDER BY seq DESC LIMIT 1",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(action, "read.emergency");
    // Only for treatment, only reading.
    w.refused(
        &w.provider,
        &w.observation,
        Purpose::Payment,
        "holds no grant",
    );
    // (3) notified in the outbox, and delivered to the webhook.
    let inbox = notifications::list(w.vault.conn(), w.patient.address(), true, 10).unwrap();
    assert_eq!(inbox.len(), 1);
    assert_eq!(inbox[0].kind, "emergency.opened");
    assert_eq!(inbox[0].body["reason"], "unconscious on arrival");
    let delivered =
        w.rt.block_on(notifications::deliver(w.vault.conn()))
            .unwrap();
    assert_eq!((delivered.delivered, delivered.failed), (1, 0));
    let request = receiver.join().unwrap();
    assert!(request.starts_with("POST /hook"), "{request}");
    assert!(request.contains("x-cohort-notification: "), "{request}");
    assert!(request.contains("emergency.opened"), "{request}");
    // Delivered once: the next round sends nothing.
    let again =
        w.rt.block_on(notifications::deliver(w.vault.conn()))
            .unwrap();
    assert_eq!((again.delivered, again.failed), (0, 0));
    // (5) the review queue; an unjustified finding ends it and suspends.
    let refused =
        w.rt.block_on(emergency::queue(
            w.vault.conn(),
            &w.client,
            &w.provider,
            true,
        ))
        .unwrap_err();
    assert!(matches!(refused, Error::Forbidden(_)), "{refused}");
    let queue =
        w.rt.block_on(emergency::queue(
            w.vault.conn(),
            &w.client,
            &w.auditor,
            true,
        ))
        .unwrap();
    assert_eq!(queue.len(), 1);
    assert_eq!(queue[0].reason.as_deref(), Some("unconscious on arrival"));
    assert!(
        w.rt.block_on(emergency::review(
            w.vault.conn(),
            &w.client,
            &w.provider,
            opened.id,
            true,
            "x"
        ))
        .is_err()
    );
    w.rt.block_on(emergency::review(
        w.vault.conn(),
        &w.client,
        &w.auditor,
        opened.id,
        false,
        "no emergency",
    ))
    .unwrap();
    w.refused(&w.provider, &w.observation, t, "emergency access");
    let suspended =
        w.rt.block_on(emergency::trigger(
            w.vault.conn(),
            w.vault.keys(),
            &w.client,
            &w.provider,
            "pat",
            "again",
        ))
        .unwrap_err();
    assert!(suspended.to_string().contains("Suspended"), "{suspended}");
    // An admin restores; (6) the patient ends the next one early.
    w.rt.block_on(emergency::restore(
        w.vault.conn(),
        &w.client,
        &w.admin,
        w.provider.name(),
    ))
    .unwrap();
    let second =
        w.rt.block_on(emergency::trigger(
            w.vault.conn(),
            w.vault.keys(),
            &w.client,
            &w.provider,
            "pat",
            "stroke",
        ))
        .unwrap();
    assert!(w.read(&w.provider, &w.observation, t).is_ok());
    w.rt.block_on(emergency::end(
        w.vault.conn(),
        w.vault.keys(),
        &w.client,
        &w.patient,
        second.id,
    ))
    .unwrap();
    w.refused(&w.provider, &w.observation, t, "emergency access");
    // (6) or it expires on its own (24 h by default).
    let third =
        w.rt.block_on(emergency::trigger(
            w.vault.conn(),
            w.vault.keys(),
            &w.client,
            &w.provider,
            "pat",
            "fall",
        ))
        .unwrap();
    assert!(third.expires_at > 0);
    w.pass(24);
    w.refused(&w.provider, &w.observation, t, "emergency access");
}

#[test]
fn updates_need_write_access_and_are_anchored_and_verified() {
    let w = world();
    w.credential(&w.provider, 48);
    let current = w
        .read(&w.patient, &w.observation, Purpose::Treatment)
        .unwrap();
    let mut resource: serde_json::Value = serde_json::from_slice(&current.content).unwrap();
    resource["status"] = "amended".into();
    // Stored references are `Type/id` (ingest resolved the bundle's urn:uuids).
    assert_eq!(
        resource["subject"]["reference"],
        format!("Patient/{}", w.patient_id)
    );
    let bytes = serde_json::to_vec(&resource).unwrap();
    // A read grant does not write.
    w.grant(
        &w.provider,
        Level::Read,
        Purpose::Treatment.bit(),
        ALL_KINDS,
        1,
    );
    let e =
        w.rt.block_on(w.clinic().update(&w.provider, &bytes, Purpose::Treatment))
            .unwrap_err();
    assert!(
        matches!(&e, Error::Forbidden(m) if m.contains("does not reach the level")),
        "{e}"
    );
    assert_eq!(
        w.vault.history(&w.observation).unwrap().len(),
        1,
        "nothing stored"
    );
    // A write grant does, and the version is anchored by the writer.
    w.grant(
        &w.provider,
        Level::Write,
        Purpose::Treatment.bit(),
        ALL_KINDS,
        1,
    );
    let u =
        w.rt.block_on(w.clinic().update(&w.provider, &bytes, Purpose::Treatment))
            .unwrap();
    assert_eq!((u.version.version, u.created), (2, false));
    let v =
        w.rt.block_on(anchor::verify(&w.vault, &w.client, &w.observation, None))
            .unwrap();
    assert!(v.verified && v.anchor.starts_with("update tx"), "{v:?}");
    // The ingested version: anchored in a batch once the engine anchors.
    let pending =
        w.rt.block_on(anchor::verify(&w.vault, &w.client, &w.observation, Some(1)))
            .unwrap();
    assert!(!pending.verified, "{pending:?}");
    let engine = accounts::get(w.vault.conn(), w.vault.keys(), "engine").unwrap();
    let batch =
        w.rt.block_on(anchor::anchor_pending(w.vault.conn(), &w.client, &engine))
            .unwrap()
            .unwrap();
    assert!(batch.count > 1);
    let first =
        w.rt.block_on(anchor::verify(&w.vault, &w.client, &w.observation, Some(1)))
            .unwrap();
    assert!(first.verified, "{first:?}");
    // A block whose bytes change no longer verifies.
    let blocks = cohort_engine::storage::packstore::PackBlockStore::open(
        &w._tmp.path().join("data").join("blocks"),
    )
    .unwrap();
    let at = blocks.location(&first.cid).unwrap().unwrap();
    let mut raw = std::fs::read(&at.path).unwrap();
    raw[(at.offset + at.len - 1) as usize] ^= 1;
    std::fs::write(&at.path, &raw).unwrap();
    let tampered =
        w.rt.block_on(anchor::verify(&w.vault, &w.client, &w.observation, Some(1)))
            .unwrap();
    assert!(
        !tampered.verified && tampered.problem.is_some(),
        "{tampered:?}"
    );
    // A resource of another patient cannot be written over this one.
    let mut moved = resource.clone();
    moved["subject"]["reference"] = "Patient/someone-else".into();
    let e =
        w.rt.block_on(w.clinic().update(
            &w.provider,
            &serde_json::to_vec(&moved).unwrap(),
            Purpose::Treatment,
        ))
        .unwrap_err();
    assert!(
        e.to_string().contains("someone-else") || e.to_string().contains("another patient"),
        "{e}"
    );
    // Search: one trace for the patient's conditions.
    let found =
        w.rt.block_on(w.clinic().search(
            &w.provider,
            &Search {
                patient: "pat".into(),
                types: vec!["Condition".into()],
                ..Default::default()
            },
            Purpose::Treatment,
        ))
        .unwrap();
    assert!(!found.is_empty() && found.iter().all(|r| r.version.resource_type == "Condition"));
}

/// The epochs of `patient_id`'s data key that account `who` holds a
/// sealed copy of.
fn held_epochs(w: &World, who: &Actor) -> Vec<i64> {
    let h = cohort_engine::keys::data_keys::holders(w.vault.conn(), &w.patient_id).unwrap();
    let me = format!("{:#x}", who.address());
    h.copies
        .iter()
        .filter(|c| c.holder == me)
        .map(|c| c.epoch)
        .collect()
}

fn last_action(w: &World, who: &Actor) -> String {
    w.vault
        .conn()
        .query_row(
            "SELECT action FROM audit WHERE actor = ?1 ORDER BY seq DESC LIMIT 1",
            [who.name()],
            |r| r.get(0),
        )
        .unwrap()
}

/// Grants access on chain only, as a grant made outside cohort (or a
/// crash before the key was sealed) would: no key follows.
fn grant_on_chain_only(w: &World, to: &Actor) {
    use cohort_ledger_bridge::Target;
    use cohort_ledger_bridge::contracts::CohortAccess;
    w.rt.block_on(w.client.send(
        w.patient.account(),
        Target::Access,
        CohortAccess::grantAccessScopedCall {
            provider: to.address(),
            duration: 24 * HOUR,
            level: Level::Read.code(),
            purposes: Purpose::Treatment.bit(),
            kinds: ALL_KINDS,
        },
    ))
    .unwrap();
}

#[test]
fn a_grant_is_a_key_and_a_revocation_rotates_it() {
    use cohort_engine::keys::data_keys::{self, Holder, Role};
    let w = world();
    let t = Purpose::Treatment;
    let conn = w.vault.conn();
    // The patient holds epoch 1 from the link; the provider nothing yet.
    assert_eq!(held_epochs(&w, &w.patient), vec![1]);
    assert!(held_epochs(&w, &w.provider).is_empty());
    w.credential(&w.provider, 48);
    w.credential(&w.other_provider, 48);
    // A grant seals the key for the provider, who reads with it.
    w.grant(&w.provider, Level::Read, t.bit(), ALL_KINDS, 24);
    assert_eq!(held_epochs(&w, &w.provider), vec![1]);
    let before = w.read(&w.provider, &w.observation, t).unwrap();
    let wraps: i64 = conn
        .query_row(
            "SELECT COUNT(*) FROM audit WHERE action = 'keys.wrap' AND detail LIKE '%dr-a%'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(wraps, 1, "the wrap is audited");
    let no_key_bytes: i64 = conn
        .query_row(
            "SELECT COUNT(*) FROM audit WHERE action LIKE 'keys.%' AND detail LIKE '%sealed%'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(no_key_bytes, 0);
    // Revocation deletes the provider's copies and starts epoch 2, sealed
    // for the patient alone.
    w.rt.block_on(grants::revoke(
        w.vault.conn(),
        w.vault.keys(),
        &w.client,
        &w.patient,
        w.provider.name(),
        None,
    ))
    .unwrap();
    assert!(held_epochs(&w, &w.provider).is_empty());
    assert_eq!(held_epochs(&w, &w.patient), vec![1, 2]);
    assert_eq!(data_keys::current_epoch(conn, &w.patient_id).unwrap(), 2);
    // A version written after the revocation is sealed under epoch 2.
    let mut resource: serde_json::Value = serde_json::from_slice(&before.content).unwrap();
    resource["status"] = "amended".into();
    let bytes = serde_json::to_vec(&resource).unwrap();
    let (_, v2) = w
        .vault
        .put(
            &cohort_engine::records::vault::Access::new("operator", "ingest"),
            &cohort_engine::records::vault::NewRecord {
                patient_id: &w.patient_id,
                record_id: &w.observation,
                resource_type: "Observation",
                content: &bytes,
            },
        )
        .unwrap();
    assert_eq!(v2.version, 2);
    assert_eq!(data_keys::epoch_of(conn, &w.observation, 1).unwrap(), 1);
    assert_eq!(data_keys::epoch_of(conn, &w.observation, 2).unwrap(), 2);
    // The patient reads it with their epoch 2 copy, and the old version
    // with their epoch 1 copy.
    assert_eq!(
        w.read(&w.patient, &w.observation, t).unwrap().content,
        bytes
    );
    let old =
        w.rt.block_on(w.clinic().read(&w.patient, &w.observation, Some(1), t))
            .unwrap();
    assert_eq!(old.content, before.content);
    // Granted again on chain only: the chain allows, but the provider holds
    // no key of either epoch, so nothing is decrypted or traced.
    grant_on_chain_only(&w, &w.provider);
    let reads = w.reads_of(&w.provider);
    let e = w.read(&w.provider, &w.observation, t).unwrap_err();
    assert!(
        matches!(&e, Error::Forbidden(m) if m.contains("no key for `dr-a`") && m.contains("version 2")),
        "{e}"
    );
    assert_eq!(last_action(&w, &w.provider), "keys.unwrap-refused");
    assert_eq!(w.reads_of(&w.provider), reads, "nothing read");
    // A search is refused as a whole.
    let search = Search {
        patient: "pat".into(),
        ..Search::default()
    };
    assert!(matches!(
        w.rt.block_on(w.clinic().search(&w.provider, &search, t)),
        Err(Error::Forbidden(m)) if m.contains("no key for")
    ));
    // A grant through cohort seals every live epoch: both versions read.
    w.grant(&w.provider, Level::Read, t.bit(), ALL_KINDS, 24);
    assert_eq!(held_epochs(&w, &w.provider), vec![1, 2]);
    assert_eq!(
        w.read(&w.provider, &w.observation, t).unwrap().content,
        bytes
    );
    // A copy moved to another epoch's row does not open (context binding).
    let addr = format!("{:#x}", w.provider.address());
    let epoch1: Vec<u8> = conn
        .query_row(
            "SELECT sealed FROM wrapped_data_keys WHERE patient_id = ?1 AND epoch = 1 AND holder_address = ?2",
            rusqlite::params![w.patient_id, addr],
            |r| r.get(0),
        )
        .unwrap();
    conn.execute(
        "UPDATE wrapped_data_keys SET sealed = ?3 WHERE patient_id = ?1 AND epoch = 2 AND holder_address = ?2",
        rusqlite::params![w.patient_id, addr, epoch1],
    )
    .unwrap();
    let e = w.read(&w.provider, &w.observation, t).unwrap_err();
    assert!(matches!(e, Error::Decrypt { .. }), "{e}");
    w.grant(&w.provider, Level::Read, t.bit(), ALL_KINDS, 24);
    assert!(w.read(&w.provider, &w.observation, t).is_ok());
    // A sealed copy without a grant on chain: the chain refuses first.
    data_keys::seal_for_holder(
        w.vault.conn(),
        w.vault.keys(),
        "operator",
        &w.patient_id,
        &Holder::account(w.vault.conn(), w.vault.keys(), "dr-b").unwrap(),
        Role::Grantee,
    )
    .unwrap();
    assert_eq!(held_epochs(&w, &w.other_provider), vec![1, 2]);
    w.refused(&w.other_provider, &w.observation, t, "holds no grant");
    // A crash after the chain took a revocation, before the keys followed
    // (the revocation sent on chain alone): the provider keeps its copies
    // but the chain refuses it; revoking again completes the key side.
    {
        use cohort_ledger_bridge::Target;
        use cohort_ledger_bridge::contracts::CohortAccess;
        w.rt.block_on(w.client.send(
            w.patient.account(),
            Target::Access,
            CohortAccess::revokeAccessCall {
                patient: w.patient.address(),
                provider: w.provider.address(),
            },
        ))
        .unwrap();
    }
    assert_eq!(held_epochs(&w, &w.provider), vec![1, 2]);
    w.refused(&w.provider, &w.observation, t, "was revoked");
    let repaired =
        w.rt.block_on(grants::revoke(
            w.vault.conn(),
            w.vault.keys(),
            &w.client,
            &w.patient,
            w.provider.name(),
            None,
        ))
        .unwrap();
    assert!(
        repaired.action.contains("already revoked"),
        "{}",
        repaired.action
    );
    assert!(held_epochs(&w, &w.provider).is_empty());
    assert_eq!(data_keys::current_epoch(conn, &w.patient_id).unwrap(), 3);
    // Without copies and without a grant, revoking again is the chain's
    // refusal, as before.
    assert!(
        w.rt.block_on(grants::revoke(
            w.vault.conn(),
            w.vault.keys(),
            &w.client,
            &w.patient,
            w.provider.name(),
            None,
        ))
        .is_err()
    );
    // Erasure destroys every sealed copy and every custodian copy.
    w.vault
        .erase_patient(
            &cohort_engine::records::vault::Access::new("operator", "erasure"),
            &w.patient_id,
        )
        .unwrap();
    let left: i64 = conn
        .query_row(
            "SELECT (SELECT COUNT(*) FROM wrapped_data_keys WHERE patient_id = ?1)
                  + (SELECT COUNT(*) FROM data_key_epochs WHERE patient_id = ?1 AND wrapped_key IS NOT NULL)
                  + (SELECT COUNT(*) FROM patients WHERE patient_id = ?1 AND wrapped_key IS NOT NULL)",
            [&w.patient_id],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(left, 0);
}

#[test]
fn an_emergency_seals_a_key_that_ending_it_removes() {
    let w = world();
    let t = Purpose::Treatment;
    w.credential(&w.provider, 48);
    let opened =
        w.rt.block_on(emergency::trigger(
            w.vault.conn(),
            w.vault.keys(),
            &w.client,
            &w.provider,
            "pat",
            "unconscious on arrival",
        ))
        .unwrap();
    let h = cohort_engine::keys::data_keys::holders(w.vault.conn(), &w.patient_id).unwrap();
    assert!(
        h.copies
            .iter()
            .any(|c| c.role == "emergency" && c.holder_name.as_deref() == Some("dr-a"))
    );
    assert!(w.read(&w.provider, &w.observation, t).unwrap().emergency);
    w.rt.block_on(emergency::end(
        w.vault.conn(),
        w.vault.keys(),
        &w.client,
        &w.patient,
        opened.id,
    ))
    .unwrap();
    assert!(held_epochs(&w, &w.provider).is_empty());
    assert_eq!(
        cohort_engine::keys::data_keys::current_epoch(w.vault.conn(), &w.patient_id).unwrap(),
        2
    );
    assert_eq!(held_epochs(&w, &w.patient), vec![1, 2]);
}
