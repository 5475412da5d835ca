//! The clinical records service: every read and update of a record, by
//! any interface (CLI, gRPC, FHIR REST, web), is decided by the chain
//! before anything is decrypted. Deny by default.
//!
//! A read is a transaction the reader signs (`accessPatientRecords`):
//! the contract allows the patient, an active delegate, a credentialed
//! provider whose unexpired, unrevoked grant covers the level, the purpose
//! and the record kinds, or one under an open emergency override, and
//! leaves an event naming every record read (one transaction per request,
//! however many records it returns). A refusal names the missing
//! authorization, is audited, and decrypts nothing. The chain's allowance
//! is not enough to decrypt: the reader then opens its own sealed copy of
//! the version's data key with its own account's secret
//! ([`crate::keys::data_keys`]); holding none is a refusal too (audited as
//! `keys.unwrap-refused`), checked before the read is traced on chain. An update is
//! `updateHealthRecords`, signed by the writer: the vault's new version
//! commits only once the chain has taken it.
//!
//! Geography ([`crate::access::geo`]) decides next, when the deployment
//! has a policy: after the chain's check and before the trace, each
//! record's jurisdiction against the reader's attested one, narrowed by
//! the patient's own on-chain restriction. A cross-border refusal is
//! audited (`read.refused`, reason `cross_border`, both jurisdictions and
//! the rule) and leaves no trace on chain and nothing decrypted; an
//! allowed cross-border read is audited with the same fields.

use cohort_ledger_bridge::alloy::primitives::B256;
use cohort_ledger_bridge::contracts::PatientRecords;
use cohort_ledger_bridge::{Client, Target};
use rusqlite::{OptionalExtension, TransactionBehavior, params};
use serde::Serialize;

use super::anchor::record_key;
use super::fhir;
use super::vault::{Access, RecordVersion, Vault};
use crate::access::geo::{self, Decision};
use crate::access::scope::{self, Level, Purpose, SUMMARY_KINDS};
use crate::access::{Actor, patients};
use crate::keys::data_keys;
use crate::{Error, Result, audit};

/// A record read, with whether an emergency override allowed it.
#[derive(Debug, Clone)]
pub struct Read {
    /// The version read.
    pub version: RecordVersion,
    /// Its FHIR JSON.
    pub content: Vec<u8>,
    /// Whether the read was allowed by an emergency override.
    pub emergency: bool,
}

/// A FHIR search over one patient's records.
#[derive(Debug, Clone, Default)]
pub struct Search {
    /// The patient (vault id, or their account's name).
    pub patient: String,
    /// Only these resource types (empty: every type).
    pub types: Vec<String>,
    /// Only resources with a coding of this code (`system|code` or `code`).
    pub code: Option<String>,
    /// Only resources dated on or after this day (YYYY-MM-DD).
    pub since: Option<String>,
    /// Only resources dated on or before this day.
    pub until: Option<String>,
}

/// What an update stored.
#[derive(Debug, Clone, Serialize)]
pub struct Updated {
    /// The version stored.
    pub version: RecordVersion,
    /// Whether it created the record (else it added a version).
    pub created: bool,
    /// The anchoring transaction.
    pub tx_hash: String,
}

/// What a read's on-chain trace says.
#[derive(Debug, Clone, Copy)]
struct Traced {
    /// An emergency override allowed it.
    emergency: bool,
    /// The block it is in.
    block: u64,
}

/// The service: a vault and the chain that decides.
pub struct Clinic<'a> {
    vault: &'a Vault,
    client: &'a Client,
}

fn needed_level(kinds: u32) -> Level {
    if kinds & !SUMMARY_KINDS == 0 {
        Level::Summary
    } else {
        Level::Read
    }
}

impl<'a> Clinic<'a> {
    /// The service over `vault`, decided by `client`'s chain.
    pub fn new(vault: &'a Vault, client: &'a Client) -> Clinic<'a> {
        Clinic { vault, client }
    }

    /// Audits a refusal and returns it as the error.
    fn refuse(
        &self,
        actor: &Actor,
        action: &str,
        target: &str,
        purpose: &str,
        reason: String,
        code: Option<u8>,
    ) -> Error {
        let appended = audit::append(
            self.vault.conn(),
            &audit::Event {
                actor: actor.name(),
                action: &format!("{action}.refused"),
                target,
                purpose,
                detail: serde_json::json!({ "refused": reason, "reason_code": code }),
            },
        );
        match appended {
            Ok(_) => Error::Forbidden(reason),
            Err(e) => e,
        }
    }

    /// The key of `rv`'s epoch as `actor` holds it (its sealed copy, opened
    /// with its own secret), from `keys` when already opened; no copy is a
    /// refusal, audited as `keys.unwrap-refused`, and nothing is decrypted.
    fn reader_key(
        &self,
        actor: &Actor,
        rv: &RecordVersion,
        purpose: Purpose,
        keys: &mut std::collections::HashMap<i64, crate::keys::keystore::SecretKey>,
    ) -> Result<crate::keys::keystore::SecretKey> {
        let conn = self.vault.conn();
        let epoch = data_keys::epoch_of(conn, &rv.record_id, rv.version)?;
        if let Some(k) = keys.get(&epoch) {
            return Ok(k.clone());
        }
        match data_keys::reader_key(
            conn,
            self.vault.keys(),
            actor.account(),
            &rv.patient_id,
            epoch,
        )? {
            Ok(k) => {
                keys.insert(epoch, k.clone());
                Ok(k)
            }
            Err(data_keys::NoKey { epoch }) => {
                let reason = format!(
                    "no key for `{}` to {}'s version {}: it holds no copy of epoch {epoch} of patient {}'s data key (the patient has not granted it access since the key was rotated; a grant made through cohort seals one)",
                    actor.name(),
                    rv.record_id,
                    rv.version,
                    rv.patient_id
                );
                audit::append(
                    conn,
                    &audit::Event {
                        actor: actor.name(),
                        action: "keys.unwrap-refused",
                        target: &rv.record_id,
                        purpose: purpose.name(),
                        detail: serde_json::json!({ "version": rv.version, "epoch": epoch, "refused": reason }),
                    },
                )?;
                Err(Error::Forbidden(reason))
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    /// Asks the chain whether `actor` may act at `level` on `patient`'s
    /// records of `kinds` for `purpose`; refuses (audited) if not.
    async fn check(
        &self,
        actor: &Actor,
        patient: &patients::PatientAccount,
        level: Level,
        kinds: u32,
        purpose: Purpose,
        action: &str,
        target: &str,
        what: &str,
    ) -> Result<bool> {
        let r = self
            .client
            .view(
                Target::Records,
                PatientRecords::checkAccessCall {
                    patient: patient.address,
                    actor: actor.address(),
                    level: level.code(),
                    purpose: purpose.bit(),
                    kinds,
                },
            )
            .await?;
        if r.reason != 0 {
            let reason = scope::refusal(r.reason, actor.name(), &patient.patient_id, what);
            return Err(self.refuse(
                actor,
                action,
                target,
                purpose.name(),
                reason,
                Some(r.reason),
            ));
        }
        Ok(r.emergency)
    }

    /// The read's on-chain trace, signed by the reader; a race lost to a
    /// revocation between the check and the transaction is a refusal too.
    /// Says whether an emergency override allowed it, and the block it is
    /// in (the audit entries name it: the accounting of disclosures joins
    /// the two).
    async fn trace(
        &self,
        actor: &Actor,
        patient: &patients::PatientAccount,
        records: &[&str],
        kinds: u32,
        purpose: Purpose,
        target: &str,
    ) -> Result<Traced> {
        let ids: Vec<B256> = records.iter().map(|r| record_key(r)).collect();
        let sent = self
            .client
            .send(
                actor.account(),
                Target::Records,
                PatientRecords::accessPatientRecordsCall {
                    patient: patient.address,
                    recordIds: ids,
                    kinds,
                    purpose: purpose.bit(),
                },
            )
            .await;
        match sent {
            Ok(receipt) => Ok(Traced {
                emergency: receipt.logs.iter().any(|l| {
                    use cohort_ledger_bridge::alloy::sol_types::SolEvent;
                    PatientRecords::RecordsAccessed::decode_log(&l.log)
                        .map(|e| e.data.emergency)
                        .unwrap_or(false)
                }),
                block: receipt.block_number,
            }),
            Err(cohort_ledger_bridge::Error::Reverted(revert)) => {
                use cohort_ledger_bridge::alloy::sol_types::SolError;
                let code = PatientRecords::Denied::abi_decode(&revert.data)
                    .map(|d| d.reason)
                    .ok();
                let reason = match code {
                    Some(c) => scope::refusal(c, actor.name(), &patient.patient_id, "this read"),
                    None => revert.message.clone(),
                };
                Err(self.refuse(actor, "read", target, purpose.name(), reason, code))
            }
            Err(e) => Err(e.into()),
        }
    }

    #[allow(clippy::too_many_arguments)]
    /// Geography, once the chain has allowed `actor` to act on `records`
    /// (with `emergency` as the chain said): the deployment's policy and
    /// the patient's restriction decide each record. A refusal is audited
    /// and returned; nothing has been traced or decrypted. The patient
    /// acting on their own records is never cross-border; a reader with
    /// no jurisdiction attested (a credential from before geography, a
    /// delegate) is of the deployment default. Returns the jurisdiction of
    /// the reader (for a new record's) and the cross-border decisions
    /// that allowed, by record, for the audit.
    async fn geo(
        &self,
        actor: &Actor,
        patient: &patients::PatientAccount,
        records: &[&str],
        emergency: bool,
        action: &str,
        target: &str,
        purpose: Purpose,
    ) -> Result<(Option<geo::Jurisdiction>, Vec<(String, Decision)>)> {
        let conn = self.vault.conn();
        let Some(policy) = geo::policy(conn)? else {
            return Ok((None, Vec::new()));
        };
        let reader = geo::attested(self.client, actor.address())
            .await?
            .unwrap_or_else(|| policy.default.clone());
        if actor.address() == patient.address {
            return Ok((Some(reader), Vec::new()));
        }
        let mut restriction = None;
        let mut crossing = Vec::new();
        for record in records {
            let j = geo::record_jurisdiction(conn, &policy, record)?;
            if reader.domestic(&j) {
                continue;
            }
            let bits = match restriction {
                Some(b) => b,
                None => {
                    *restriction.insert(geo::restriction_of(self.client, patient.address).await?)
                }
            };
            let d = policy.decide_read(&reader, &j, bits, emergency);
            if !d.allowed {
                let verb = if action == "update" {
                    "writing"
                } else {
                    "reading"
                };
                let what = format!("{verb} {record} of Patient/{}", patient.patient_id);
                let reason = d.refusal(actor.name(), &what);
                let mut detail = d.detail();
                detail["refused"] = serde_json::json!(reason);
                detail["reason"] = serde_json::json!("cross_border");
                detail["record"] = serde_json::json!(record);
                audit::append(
                    conn,
                    &audit::Event {
                        actor: actor.name(),
                        action: &format!("{action}.refused"),
                        target,
                        purpose: purpose.name(),
                        detail,
                    },
                )?;
                return Err(Error::Forbidden(reason));
            }
            crossing.push((record.to_string(), d));
        }
        Ok((Some(reader), crossing))
    }

    fn audit_reads(
        &self,
        actor: &Actor,
        purpose: Purpose,
        traced: Traced,
        read: &[RecordVersion],
        crossing: &[(String, Decision)],
    ) -> Result<()> {
        let emergency = traced.emergency;
        let tx = rusqlite::Transaction::new_unchecked(
            self.vault.conn(),
            TransactionBehavior::Immediate,
        )?;
        for rv in read {
            let mut detail = serde_json::json!({ "version": rv.version, "cid": rv.cid, "emergency": emergency, "block": traced.block });
            if let Some((_, d)) = crossing.iter().find(|(r, _)| *r == rv.record_id)
                && let (Some(o), serde_json::Value::Object(extra)) =
                    (detail.as_object_mut(), d.detail())
            {
                o.extend(extra);
            }
            audit::append(
                &tx,
                &audit::Event {
                    actor: actor.name(),
                    action: if emergency { "read.emergency" } else { "read" },
                    target: &rv.record_id,
                    purpose: purpose.name(),
                    detail,
                },
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Reads one record (the current version, or `version`) as `actor` for
    /// `purpose`, once the chain has allowed and traced it.
    pub async fn read(
        &self,
        actor: &Actor,
        record_id: &str,
        version: Option<i64>,
        purpose: Purpose,
    ) -> Result<Read> {
        let history = self.vault.history(record_id)?;
        let rv = match version {
            Some(v) => history
                .into_iter()
                .find(|r| r.version == v)
                .ok_or_else(|| Error::NotFound(format!("{record_id} has no version {v}")))?,
            None => history.into_iter().last().expect("history is never empty"),
        };
        let patient = match patients::of_patient(self.vault.conn(), &rv.patient_id)? {
            Some(p) => p,
            None => {
                let e = patients::require(self.vault.conn(), &rv.patient_id).unwrap_err();
                return Err(self.refuse(
                    actor,
                    "read",
                    record_id,
                    purpose.name(),
                    e.to_string(),
                    None,
                ));
            }
        };
        self.vault.ensure_not_purged(&rv)?;
        let kinds = scope::kind_of(&rv.resource_type)?;
        let what = format!("reading {record_id}");
        let emergency = self
            .check(
                actor,
                &patient,
                needed_level(kinds),
                kinds,
                purpose,
                "read",
                record_id,
                &what,
            )
            .await?;
        let (_, crossing) = self
            .geo(
                actor,
                &patient,
                &[record_id],
                emergency,
                "read",
                record_id,
                purpose,
            )
            .await?;
        let key = self.reader_key(actor, &rv, purpose, &mut Default::default())?;
        let traced = self
            .trace(actor, &patient, &[record_id], kinds, purpose, record_id)
            .await?;
        let content = self.vault.decrypt_with(&rv, &key)?;
        self.audit_reads(actor, purpose, traced, std::slice::from_ref(&rv), &crossing)?;
        Ok(Read {
            version: rv,
            content,
            emergency: traced.emergency,
        })
    }

    /// A patient's records (ids, versions, blocks: nothing decrypted), as
    /// `actor` for `purpose`: allowed as a read of every kind they have
    /// would be, and audited.
    pub async fn list(
        &self,
        actor: &Actor,
        patient: &str,
        purpose: Purpose,
    ) -> Result<Vec<RecordVersion>> {
        let patient = patients::find(self.vault.conn(), patient)
            .or_else(|_| patients::require(self.vault.conn(), patient))?;
        let versions = self.vault.list(Some(&patient.patient_id), usize::MAX)?;
        let kinds = versions
            .iter()
            .try_fold(0u32, |k, v| {
                Ok::<_, Error>(k | scope::kind_of(&v.resource_type)?)
            })?
            .max(1);
        let target = format!("Patient/{}", patient.patient_id);
        self.check(
            actor,
            &patient,
            needed_level(kinds),
            kinds,
            purpose,
            "list",
            &target,
            "listing their records",
        )
        .await?;
        audit::append(
            self.vault.conn(),
            &audit::Event {
                actor: actor.name(),
                action: "list",
                target: &target,
                purpose: purpose.name(),
                detail: serde_json::json!({ "records": versions.len() }),
            },
        )?;
        Ok(versions)
    }

    /// The current version of a patient's records matching `search`, as
    /// `actor` for `purpose`: one on-chain trace for all of them. With
    /// no type named, the kinds the patient has decide the level needed
    /// (a summary grant reads a search of summary types only).
    pub async fn search(
        &self,
        actor: &Actor,
        search: &Search,
        purpose: Purpose,
    ) -> Result<Vec<Read>> {
        let patient = patients::find(self.vault.conn(), &search.patient)
            .or_else(|_| patients::require(self.vault.conn(), &search.patient))?;
        for t in &search.types {
            scope::kind_of(t)?;
        }
        let mut versions = self.vault.list(Some(&patient.patient_id), usize::MAX)?;
        versions.retain(|v| search.types.is_empty() || search.types.contains(&v.resource_type));
        let kinds = if search.types.is_empty() {
            versions.iter().try_fold(0u32, |k, v| {
                Ok::<_, Error>(k | scope::kind_of(&v.resource_type)?)
            })?
        } else {
            search
                .types
                .iter()
                .try_fold(0u32, |k, t| Ok::<_, Error>(k | scope::kind_of(t)?))?
        };
        let target = format!("Patient/{}", patient.patient_id);
        let what = format!(
            "this search of {}",
            scope::kind_names(kinds.max(1)).join(", ")
        );
        let emergency = self
            .check(
                actor,
                &patient,
                needed_level(kinds.max(1)),
                kinds.max(1),
                purpose,
                "read",
                &target,
                &what,
            )
            .await?;
        // The trace names every record the search considers, before any is
        // decrypted; the code and date filters then apply to the plaintext.
        let ids: Vec<&str> = versions.iter().map(|rv| rv.record_id.as_str()).collect();
        let (_, crossing) = self
            .geo(actor, &patient, &ids, emergency, "read", &target, purpose)
            .await?;
        // Every key the search needs, before the trace: a missing one
        // refuses the whole search, and nothing is decrypted.
        let mut keys = std::collections::HashMap::new();
        let mut version_keys = Vec::with_capacity(versions.len());
        for rv in &versions {
            version_keys.push(self.reader_key(actor, rv, purpose, &mut keys)?);
        }
        let traced = self
            .trace(actor, &patient, &ids, kinds.max(1), purpose, &target)
            .await?;
        let mut reads = Vec::with_capacity(versions.len());
        for (rv, key) in versions.into_iter().zip(version_keys) {
            let content = self.vault.decrypt_with(&rv, &key)?;
            if matches_filters(&content, search) {
                reads.push((rv, content));
            }
        }
        let audited: Vec<RecordVersion> = reads.iter().map(|(rv, _)| rv.clone()).collect();
        self.audit_reads(actor, purpose, traced, &audited, &crossing)?;
        Ok(reads
            .into_iter()
            .map(|(version, content)| Read {
                version,
                content,
                emergency: traced.emergency,
            })
            .collect())
    }

    /// A patient's records as one FHIR `collection` Bundle, for the right
    /// of access and to data portability (GDPR art. 15 and 20): every
    /// current record, read as `actor` (the patient, a delegate, or whoever
    /// the chain allows) with one on-chain trace, and the export audited.
    pub async fn export_bundle(
        &self,
        actor: &Actor,
        patient: &str,
        purpose: Purpose,
    ) -> Result<serde_json::Value> {
        let search = Search {
            patient: patient.to_string(),
            ..Search::default()
        };
        let reads = self.search(actor, &search, purpose).await?;
        let patient_id = patients::find(self.vault.conn(), patient)
            .or_else(|_| patients::require(self.vault.conn(), patient))?
            .patient_id;
        let entries = reads
            .iter()
            .map(|r| {
                let resource: serde_json::Value = serde_json::from_slice(&r.content)
                    .map_err(|e| Error::Invalid(format!("{}: {e}", r.version.record_id)))?;
                Ok(serde_json::json!({ "fullUrl": r.version.record_id, "resource": resource }))
            })
            .collect::<Result<Vec<_>>>()?;
        let bundle = serde_json::json!({
            "resourceType": "Bundle",
            "type": "collection",
            "timestamp": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            "entry": entries,
        });
        audit::append(
            self.vault.conn(),
            &audit::Event {
                actor: actor.name(),
                action: "records.export.patient",
                target: &format!("Patient/{patient_id}"),
                purpose: purpose.name(),
                detail: serde_json::json!({ "records": reads.len() }),
            },
        )?;
        Ok(bundle)
    }

    /// Stores a FHIR resource (a new record, or a new version of one) as
    /// `actor` for `purpose`: the chain must allow writing the patient's
    /// records of its kind; the version is anchored by `updateHealthRecords`
    /// (signed by the writer) before the vault commits it.
    pub async fn update(
        &self,
        actor: &Actor,
        resource: &[u8],
        purpose: Purpose,
    ) -> Result<Updated> {
        let value: serde_json::Value = serde_json::from_slice(resource)
            .map_err(|e| Error::Invalid(format!("the resource is not JSON: {e}")))?;
        let rtype = value
            .get("resourceType")
            .and_then(|t| t.as_str())
            .ok_or_else(|| Error::Invalid("the resource has no `resourceType`".into()))?
            .to_string();
        let kinds = scope::kind_of(&rtype)?;
        let wrapped = serde_json::json!({
            "resourceType": "Bundle", "type": "collection",
            "entry": [{ "resource": value }],
        });
        let bundle = fhir::parse_bundle("the update", wrapped.to_string().as_bytes())?;
        let resource = bundle
            .resources
            .first()
            .ok_or_else(|| Error::Invalid(format!("a {rtype} cohort cannot store")))?;
        let record_id = resource.record_id();
        // The patient of an existing record is the one the vault holds.
        let existing: Option<String> = self
            .vault
            .conn()
            .query_row(
                "SELECT patient_id FROM records WHERE record_id = ?1 LIMIT 1",
                [&record_id],
                |r| r.get(0),
            )
            .optional()?;
        let patient_id = existing
            .clone()
            .unwrap_or_else(|| resource.patient_id.clone());
        if patient_id != resource.patient_id {
            return Err(Error::Invalid(format!(
                "{record_id} belongs to another patient; a record cannot move between patients"
            )));
        }
        let patient = match patients::of_patient(self.vault.conn(), &patient_id)? {
            Some(p) => p,
            None => {
                let e = patients::require(self.vault.conn(), &patient_id).unwrap_err();
                return Err(self.refuse(
                    actor,
                    "update",
                    &record_id,
                    purpose.name(),
                    e.to_string(),
                    None,
                ));
            }
        };
        let what = format!("writing {record_id}");
        let emergency = self
            .check(
                actor,
                &patient,
                Level::Write,
                kinds,
                purpose,
                "update",
                &record_id,
                &what,
            )
            .await?;
        // A new record is the writer's organisation's: it carries their
        // jurisdiction; a new version of one is checked against its own.
        let (writer, _) = if existing.is_some() {
            self.geo(
                actor,
                &patient,
                &[&record_id],
                emergency,
                "update",
                &record_id,
                purpose,
            )
            .await?
        } else {
            self.geo(
                actor,
                &patient,
                &[],
                emergency,
                "update",
                &record_id,
                purpose,
            )
            .await?
        };
        let conn = self.vault.conn();
        let tx = rusqlite::Transaction::new_unchecked(conn, TransactionBehavior::Immediate)?;
        let access = Access::new(actor.name(), purpose.name())
            .with_jurisdiction(writer.map(|j| j.to_string()));
        let digest = {
            use sha2::Digest;
            data_encoding::HEXLOWER.encode(&sha2::Sha256::digest(resource.json.as_slice()))
        };
        let outcome = super::ingest::store_bundle_in(&tx, self.vault, &access, &bundle, &digest)?;
        if outcome.created + outcome.updated == 0 {
            return Err(Error::Invalid(format!(
                "{record_id} is unchanged: the resource equals its current version"
            )));
        }
        let (version, hash): (i64, Vec<u8>) = tx.query_row(
            "SELECT version, data_hash FROM record_anchors WHERE record_id = ?1 ORDER BY version DESC LIMIT 1",
            [&record_id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        self.vault.blocks().flush()?;
        let sent = self
            .client
            .send(
                actor.account(),
                Target::Records,
                PatientRecords::updateHealthRecordsCall {
                    patient: patient.address,
                    recordIds: vec![record_key(&record_id)],
                    newDataHashes: vec![B256::from_slice(&hash)],
                    kinds,
                    purpose: purpose.bit(),
                },
            )
            .await;
        let receipt = match sent {
            Ok(r) => r,
            Err(e) => {
                drop(tx);
                let reason = match e {
                    cohort_ledger_bridge::Error::Reverted(revert) => {
                        use cohort_ledger_bridge::alloy::sol_types::SolError;
                        PatientRecords::Denied::abi_decode(&revert.data)
                            .map(|d| scope::refusal(d.reason, actor.name(), &patient_id, &what))
                            .unwrap_or_else(|_| revert.message.clone())
                    }
                    other => return Err(other.into()),
                };
                return Err(self.refuse(actor, "update", &record_id, purpose.name(), reason, None));
            }
        };
        let tx_hash = format!("{:#x}", receipt.tx_hash);
        tx.execute(
            "UPDATE record_anchors SET tx_hash = ?3 WHERE record_id = ?1 AND version = ?2",
            params![record_id, version, tx_hash],
        )?;
        audit::append(
            &tx,
            &audit::Event {
                actor: actor.name(),
                action: "record.update",
                target: &record_id,
                purpose: purpose.name(),
                detail: serde_json::json!({ "version": version, "tx": tx_hash }),
            },
        )?;
        tx.commit()?;
        let rv = self
            .vault
            .history(&record_id)?
            .into_iter()
            .find(|r| r.version == version)
            .ok_or_else(|| Error::NotFound(format!("{record_id} has no version {version}")))?;
        Ok(Updated {
            version: rv,
            created: existing.is_none(),
            tx_hash,
        })
    }
}

/// Whether a resource matches the search's code and date filters.
fn matches_filters(content: &[u8], search: &Search) -> bool {
    if search.code.is_none() && search.since.is_none() && search.until.is_none() {
        return true;
    }
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(content) else {
        return false;
    };
    if let Some(wanted) = &search.code {
        let (system, code) = match wanted.split_once('|') {
            Some((s, c)) => (Some(s), c),
            None => (None, wanted.as_str()),
        };
        let codings = ["code", "medicationCodeableConcept", "type"]
            .iter()
            .filter_map(|f| v.get(*f))
            .flat_map(|c| {
                let list = match c {
                    serde_json::Value::Array(items) => items.clone(),
                    other => vec![other.clone()],
                };
                list.into_iter()
                    .filter_map(|cc| cc.get("coding").and_then(|x| x.as_array()).cloned())
                    .flatten()
            })
            .collect::<Vec<_>>();
        let hit = codings.iter().any(|c| {
            c.get("code").and_then(|x| x.as_str()) == Some(code)
                && system.is_none_or(|s| c.get("system").and_then(|x| x.as_str()) == Some(s))
        });
        if !hit {
            return false;
        }
    }
    if search.since.is_some() || search.until.is_some() {
        let date = [
            "effectiveDateTime",
            "onsetDateTime",
            "authoredOn",
            "birthDate",
            "recordedDate",
        ]
        .iter()
        .find_map(|f| v.get(*f).and_then(|x| x.as_str()))
        .or_else(|| v.pointer("/period/start").and_then(|x| x.as_str()));
        let Some(day) = date.map(|d| &d[..d.len().min(10)]) else {
            return false;
        };
        if search.since.as_deref().is_some_and(|s| day < s)
            || search.until.as_deref().is_some_and(|u| day > u)
        {
            return false;
        }
    }
    true
}
