//! The clinical service over gRPC (`service Clinical` in
//! `proto/cohort/v1/cohort.proto`): records, grants, delegations, the
//! on-chain read log, notifications, emergency access and credentials,
//! each call the engine operation the CLI calls (`records::clinical`,
//! `access::*`), acting as the signed-in account
//! ([`cohort_engine::access::Actor::from_account`]),
//! never as the operator. The chain decides every read and update before
//! anything is decrypted; this layer names the caller, parses and renders.
//!
//! The FHIR REST API ([`crate::fhir`]) and the web page ([`crate::web`])
//! are adapters over these same calls.

use cohort_engine::access::scope::{self, Level, Purpose};
use cohort_engine::access::{emergency, geo, grants, notifications, patients};
use cohort_engine::compliance::Compliance;
use cohort_engine::records::clinical::{Clinic, Read, Search};
use cohort_engine::records::vault::RecordVersion;
use cohort_engine::{DataDir, Error};
use tonic::{Request, Response, Status};

use super::api::{StudyApi, pb};

/// At most this many notifications in one answer.
const MAX_NOTIFICATIONS: u32 = 10_000;

/// How often a notification watch looks for new ones (and checks that its
/// sign-in still holds).
const WATCH_POLL: std::time::Duration = std::time::Duration::from_secs(1);

fn notification(n: notifications::Notification) -> pb::Notification {
    pb::Notification {
        id: n.id,
        kind: n.kind,
        body: n.body.to_string(),
        created_at: n.created_at,
        read_at: n.read_at,
        delivered_at: n.delivered_at,
    }
}

/// A purpose of use; empty means treatment.
fn purpose(text: &str) -> Result<Purpose, Status> {
    if text.trim().is_empty() {
        return Ok(Purpose::Treatment);
    }
    text.trim()
        .parse()
        .map_err(|e: Error| Status::invalid_argument(e.to_string()))
}

/// Days as seconds, at least one day.
fn days(days: u32, what: &str) -> Result<u64, Status> {
    if days == 0 {
        return Err(Status::invalid_argument(format!(
            "`days`: {what} lasts at least one day"
        )));
    }
    Ok(u64::from(days) * 86_400)
}

fn level(text: &str) -> Result<Level, Status> {
    let text = if text.trim().is_empty() { "read" } else { text };
    text.parse()
        .map_err(|e: Error| Status::invalid_argument(e.to_string()))
}

pub(crate) fn version(v: RecordVersion) -> pb::RecordVersion {
    pb::RecordVersion {
        record_id: v.record_id,
        version: v.version,
        patient_id: v.patient_id,
        resource_type: v.resource_type,
        cid: v.cid,
        prev_cid: v.prev_cid,
        created_at: v.created_at,
    }
}

fn record(r: Read) -> pb::ClinicalRecord {
    pb::ClinicalRecord {
        version: Some(version(r.version)),
        resource_json: String::from_utf8_lossy(&r.content).into_owned(),
        emergency: r.emergency,
    }
}

fn changed(c: grants::Changed) -> pb::AccessChanged {
    pb::AccessChanged {
        action: c.action.to_string(),
        patient: c.patient,
        account: c.account,
        tx_hash: c.tx_hash,
    }
}

/// Pushes the queued notifications to their webhooks in the background
/// (a slow webhook never holds the call that caused it); what fails stays
/// queued for the next round.
pub(crate) fn deliver_later(dir: DataDir) {
    let handle = tokio::runtime::Handle::current();
    tokio::task::spawn_blocking(move || {
        let Ok(conn) = dir.connect() else { return };
        match handle.block_on(notifications::deliver(&conn)) {
            Ok(d) if d.failed > 0 => {
                tracing::warn!(
                    delivered = d.delivered,
                    failed = d.failed,
                    "webhooks failed; retried later"
                );
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "delivering notifications"),
        }
    });
}

#[tonic::async_trait]
impl pb::clinical_server::Clinical for StudyApi {
    async fn read_record(
        &self,
        request: Request<pb::ReadRecordRequest>,
    ) -> Result<Response<pb::ClinicalRecord>, Status> {
        let r = request.get_ref().clone();
        let purpose = purpose(&r.purpose)?;
        self.as_actor(&request, "records.read", async move |s, vault, me| {
            let clinic = Clinic::new(vault, s.client());
            Ok(record(
                clinic.read(me, &r.record_id, r.version, purpose).await?,
            ))
        })
        .await
    }

    async fn search_records(
        &self,
        request: Request<pb::SearchRecordsRequest>,
    ) -> Result<Response<pb::ClinicalRecords>, Status> {
        let r = request.get_ref().clone();
        let purpose = purpose(&r.purpose)?;
        if r.patient.trim().is_empty() {
            return Err(Status::invalid_argument(
                "`patient`: name the patient (their id or their account)",
            ));
        }
        let search = Search {
            patient: r.patient,
            types: r.types,
            code: r.code,
            since: r.since,
            until: r.until,
        };
        self.as_actor(&request, "records.search", async move |s, vault, me| {
            let clinic = Clinic::new(vault, s.client());
            let reads = clinic.search(me, &search, purpose).await?;
            Ok(pb::ClinicalRecords {
                records: reads.into_iter().map(record).collect(),
            })
        })
        .await
    }

    async fn update_record(
        &self,
        request: Request<pb::UpdateRecordRequest>,
    ) -> Result<Response<pb::RecordUpdated>, Status> {
        let r = request.get_ref().clone();
        let purpose = purpose(&r.purpose)?;
        self.as_actor(&request, "records.update", async move |s, vault, me| {
            let clinic = Clinic::new(vault, s.client());
            let u = clinic
                .update(me, r.resource_json.as_bytes(), purpose)
                .await?;
            Ok(pb::RecordUpdated {
                version: Some(version(u.version)),
                created: u.created,
                tx_hash: u.tx_hash,
            })
        })
        .await
    }

    async fn grant(
        &self,
        request: Request<pb::AccessGrantRequest>,
    ) -> Result<Response<pb::AccessChanged>, Status> {
        let r = request.get_ref().clone();
        let invalid = |e: Error| Status::invalid_argument(e.to_string());
        let purposes = if r.purposes.is_empty() {
            Purpose::Treatment.bit()
        } else {
            Purpose::mask(&r.purposes.join(",")).map_err(invalid)?
        };
        let kinds = if r.types.is_empty() {
            scope::ALL_KINDS
        } else {
            scope::kinds(&r.types.join(",")).map_err(invalid)?
        };
        let req = grants::GrantRequest {
            provider: r.provider,
            level: level(&r.level)?,
            purposes,
            kinds,
            duration_secs: days(r.days, "a grant")?,
            on_behalf_of: r.on_behalf_of,
        };
        self.as_actor(&request, "access.grant", async move |s, vault, me| {
            Ok(changed(
                grants::grant(vault.conn(), vault.keys(), s.client(), me, &req).await?,
            ))
        })
        .await
    }

    async fn revoke(
        &self,
        request: Request<pb::AccessRevokeRequest>,
    ) -> Result<Response<pb::AccessChanged>, Status> {
        let r = request.get_ref().clone();
        self.as_actor(&request, "access.revoke", async move |s, vault, me| {
            Ok(changed(
                grants::revoke(
                    vault.conn(),
                    vault.keys(),
                    s.client(),
                    me,
                    &r.provider,
                    r.on_behalf_of.as_deref(),
                )
                .await?,
            ))
        })
        .await
    }

    async fn delegate(
        &self,
        request: Request<pb::DelegateRequest>,
    ) -> Result<Response<pb::AccessChanged>, Status> {
        let r = request.get_ref().clone();
        let max = level(&r.level)?;
        let secs = days(r.days, "a delegation")?;
        self.as_actor(&request, "access.delegate", async move |s, vault, me| {
            Ok(changed(
                grants::delegate(
                    vault.conn(),
                    vault.keys(),
                    s.client(),
                    me,
                    &r.delegate,
                    max,
                    secs,
                )
                .await?,
            ))
        })
        .await
    }

    async fn list_grants(
        &self,
        request: Request<pb::ListGrantsRequest>,
    ) -> Result<Response<pb::GrantList>, Status> {
        self.as_actor(&request, "access.list", async move |s, vault, me| {
            s.sync().await?;
            let list = grants::list(vault.conn(), s.client(), me.address()).await?;
            Ok(pb::GrantList {
                patient: format!("{:#x}", me.address()),
                grants: list
                    .into_iter()
                    .map(|g| pb::GrantInfo {
                        provider: g.provider,
                        provider_name: g.provider_name,
                        level: g.level.to_string(),
                        purposes: g.purposes.iter().map(|p| p.to_string()).collect(),
                        types: g.kinds.iter().map(|k| k.to_string()).collect(),
                        expires_at: g.expires_at,
                        active: g.active,
                        granted_by: g.granted_by,
                    })
                    .collect(),
            })
        })
        .await
    }

    async fn read_log(
        &self,
        request: Request<pb::ReadLogRequest>,
    ) -> Result<Response<pb::RecordReads>, Status> {
        self.as_actor(&request, "access.log", async move |s, vault, me| {
            // The reads are the chain's events, as the follower mirrors them.
            s.sync().await?;
            let log = patients::read_log(vault.conn(), me.address())?;
            Ok(pb::RecordReads {
                patient: format!("{:#x}", me.address()),
                entries: log
                    .into_iter()
                    .map(|e| pb::ReadEntry {
                        block: e.block,
                        at: e.at,
                        accessor: e.accessor,
                        accessor_name: e.accessor_name,
                        purpose: e.purpose.to_string(),
                        emergency: e.emergency,
                        records: e.records,
                    })
                    .collect(),
            })
        })
        .await
    }

    async fn notifications(
        &self,
        request: Request<pb::NotificationsRequest>,
    ) -> Result<Response<pb::NotificationList>, Status> {
        let r = *request.get_ref();
        let limit = match r.limit {
            0 => 100,
            n if n <= MAX_NOTIFICATIONS => n as usize,
            n => {
                return Err(Status::invalid_argument(format!(
                    "`limit` {n} is over {MAX_NOTIFICATIONS}"
                )));
            }
        };
        self.as_actor(&request, "notifications.list", async move |_, vault, me| {
            let list = notifications::list(vault.conn(), me.address(), r.unread_only, limit)?;
            Ok(pb::NotificationList {
                notifications: list.into_iter().map(notification).collect(),
            })
        })
        .await
    }

    type WatchNotificationsStream = std::pin::Pin<
        Box<dyn futures::Stream<Item = Result<pb::Notification, Status>> + Send + 'static>,
    >;

    async fn watch_notifications(
        &self,
        request: Request<pb::WatchNotificationsRequest>,
    ) -> Result<Response<Self::WatchNotificationsStream>, Status> {
        let gate = self.shared_gate();
        let me = gate.caller(&request).await?;
        let metadata = request.metadata().clone();
        let mut last = request.get_ref().after;
        let dir = self.dir().clone();
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        tokio::spawn(async move {
            loop {
                // The sign-in must still hold (it expires, or is ended).
                let probe = Request::from_parts(metadata.clone(), Default::default(), ());
                if let Err(refused) = gate.caller(&probe).await {
                    let _ = tx.send(Err(refused)).await;
                    return;
                }
                let d = dir.clone();
                let batch = tokio::task::spawn_blocking(move || {
                    let conn = d.connect()?;
                    notifications::after(&conn, me, last, 100)
                })
                .await;
                match batch {
                    Ok(Ok(list)) => {
                        for n in list {
                            last = n.id;
                            if tx.send(Ok(notification(n))).await.is_err() {
                                return;
                            }
                        }
                    }
                    Ok(Err(e)) => tracing::warn!(error = %e, "notification watch"),
                    Err(e) => tracing::warn!(error = %e, "notification watch task"),
                }
                if tx.is_closed() {
                    return;
                }
                tokio::time::sleep(WATCH_POLL).await;
            }
        });
        let stream = futures::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|item| (item, rx))
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn mark_notifications_read(
        &self,
        request: Request<pb::MarkReadRequest>,
    ) -> Result<Response<pb::MarkedRead>, Status> {
        let up_to = request.get_ref().up_to;
        self.as_actor(&request, "notifications.read", async move |_, vault, me| {
            let marked = notifications::mark_read(vault.conn(), me.address(), up_to)?;
            Ok(pb::MarkedRead {
                marked: marked as u64,
            })
        })
        .await
    }

    async fn set_webhook(
        &self,
        request: Request<pb::SetWebhookRequest>,
    ) -> Result<Response<pb::WebhookSet>, Status> {
        let url = request.get_ref().url.clone();
        self.as_actor(
            &request,
            "notifications.webhook",
            async move |_, vault, me| {
                // Never an internal host over the server (no SSRF).
                notifications::set_webhook(vault.conn(), me.address(), url.as_deref(), false)?;
                Ok(pb::WebhookSet { url })
            },
        )
        .await
    }

    async fn trigger_emergency(
        &self,
        request: Request<pb::TriggerEmergencyRequest>,
    ) -> Result<Response<pb::EmergencyOpened>, Status> {
        let r = request.get_ref().clone();
        let opened = self
            .as_actor(&request, "emergency.trigger", async move |s, vault, me| {
                s.sync().await?;
                let o = emergency::trigger(
                    vault.conn(),
                    vault.keys(),
                    s.client(),
                    me,
                    &r.patient,
                    &r.reason,
                )
                .await?;
                Ok(pb::EmergencyOpened {
                    id: o.id,
                    patient: o.patient,
                    expires_at: o.expires_at,
                    notified: o.notified,
                    tx_hash: o.tx_hash,
                })
            })
            .await?;
        deliver_later(self.dir().clone());
        Ok(opened)
    }

    async fn review_emergency(
        &self,
        request: Request<pb::ReviewEmergencyRequest>,
    ) -> Result<Response<pb::AccessChanged>, Status> {
        let r = request.get_ref().clone();
        if r.finding.trim().is_empty() {
            return Err(Status::invalid_argument(
                "`finding`: a review states its finding",
            ));
        }
        let reviewed = self
            .as_actor(&request, "emergency.review", async move |s, vault, me| {
                Ok(changed(
                    emergency::review(vault.conn(), s.client(), me, r.id, r.justified, &r.finding)
                        .await?,
                ))
            })
            .await?;
        deliver_later(self.dir().clone());
        Ok(reviewed)
    }

    async fn end_emergency(
        &self,
        request: Request<pb::EmergencyRef>,
    ) -> Result<Response<pb::AccessChanged>, Status> {
        let id = request.get_ref().id;
        let ended = self
            .as_actor(&request, "emergency.end", async move |s, vault, me| {
                Ok(changed(
                    emergency::end(vault.conn(), vault.keys(), s.client(), me, id).await?,
                ))
            })
            .await?;
        deliver_later(self.dir().clone());
        Ok(ended)
    }

    async fn emergency_queue(
        &self,
        request: Request<pb::EmergencyQueueRequest>,
    ) -> Result<Response<pb::EmergencyList>, Status> {
        let pending = request.get_ref().pending_only;
        self.as_actor(&request, "emergency.list", async move |s, vault, me| {
            // The queue carries the reasons and findings: the engine lets
            // reviewers (auditor, admin) only.
            let list = emergency::queue(vault.conn(), s.client(), me, pending).await?;
            Ok(pb::EmergencyList {
                emergencies: list
                    .into_iter()
                    .map(|e| pb::EmergencyInfo {
                        id: e.id,
                        patient: e.patient,
                        patient_id: e.patient_id,
                        provider: e.provider,
                        provider_name: e.provider_name,
                        reason: e.reason,
                        started_at: e.started_at,
                        expires_at: e.expires_at,
                        open: e.open,
                        review: e.review.to_string(),
                        finding: e.finding,
                        ended_by: e.ended_by,
                    })
                    .collect(),
            })
        })
        .await
    }

    async fn attest_credential(
        &self,
        request: Request<pb::AttestCredentialRequest>,
    ) -> Result<Response<pb::AccessChanged>, Status> {
        let r = request.get_ref().clone();
        let secs = days(r.days, "a credential")?;
        let jurisdiction = r
            .jurisdiction
            .as_deref()
            .map(geo::Jurisdiction::parse)
            .transpose()
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        self.as_actor(&request, "credential.attest", async move |s, vault, me| {
            let now = s.client().ledger().timestamp().await?;
            let attested = grants::attest_credential(
                vault.conn(),
                s.client(),
                me,
                &r.provider,
                &r.license,
                now + secs,
            )
            .await?;
            Ok(changed(match jurisdiction {
                Some(j) => {
                    grants::attest_jurisdiction(vault.conn(), s.client(), me, &r.provider, &j)
                        .await?
                }
                None => attested,
            }))
        })
        .await
    }

    async fn geo_policy(
        &self,
        request: Request<pb::GeoPolicyRequest>,
    ) -> Result<Response<pb::GeoPolicyView>, Status> {
        self.as_actor(&request, "geo.show", async move |s, vault, me| {
            let shown = geo::shown(vault.conn(), Some(s.client()), Some(me.address())).await?;
            Ok(pb::GeoPolicyView {
                enabled: shown.enabled,
                policy: shown.policy,
                patient: shown.restrictions.is_some(),
                restrictions: shown
                    .restrictions
                    .unwrap_or_default()
                    .into_iter()
                    .map(str::to_string)
                    .collect(),
            })
        })
        .await
    }

    async fn set_geo_restriction(
        &self,
        request: Request<pb::SetGeoRestrictionRequest>,
    ) -> Result<Response<pb::AccessChanged>, Status> {
        let bits = geo::restriction_bits(&request.get_ref().restrictions)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        self.as_actor(&request, "geo.restrict", async move |s, vault, me| {
            Ok(changed(
                grants::set_geo_restriction(vault.conn(), s.client(), me, bits).await?,
            ))
        })
        .await
    }

    async fn export_records(
        &self,
        request: Request<pb::ExportRecordsRequest>,
    ) -> Result<Response<pb::RecordsBundle>, Status> {
        let r = request.get_ref().clone();
        let purpose = purpose(&r.purpose)?;
        self.as_actor(
            &request,
            "records.export.patient",
            async move |s, vault, me| {
                let patient = if r.patient.trim().is_empty() {
                    me.name().to_string()
                } else {
                    r.patient
                };
                let bundle = Clinic::new(vault, s.client())
                    .export_bundle(me, &patient, purpose)
                    .await?;
                Ok(pb::RecordsBundle {
                    records: bundle["entry"].as_array().map_or(0, Vec::len) as i64,
                    bundle: bundle.to_string(),
                })
            },
        )
        .await
    }

    async fn disclosures(
        &self,
        request: Request<pb::DisclosuresRequest>,
    ) -> Result<Response<pb::DisclosureList>, Status> {
        let r = request.get_ref().clone();
        let since =
            match r.since {
                Some(t) => Some(chrono::DateTime::from_timestamp(t, 0).ok_or_else(|| {
                    Status::invalid_argument(format!("`since`: {t} is not a time"))
                })?),
                None => None,
            };
        self.as_actor(
            &request,
            "disclosures.account",
            async move |s, vault, me| {
                s.sync().await?;
                let patient = if r.patient.trim().is_empty() {
                    me.name().to_string()
                } else {
                    r.patient
                };
                let a = Compliance::new(vault, s.client())
                    .disclosures(me, &patient, since)
                    .await?;
                Ok(pb::DisclosureList {
                    patient: a.patient,
                    since: a.since,
                    disclosures: a
                        .disclosures
                        .into_iter()
                        .map(|d| pb::Disclosure {
                            at: d.at,
                            recipient: d.recipient,
                            what: d.what,
                            records: d.records,
                            why: d.why,
                            basis: d.basis.to_string(),
                            evidence: d.evidence,
                            cross_border: d.cross_border,
                        })
                        .collect(),
                })
            },
        )
        .await
    }

    async fn key_holders(
        &self,
        request: Request<pb::KeyHoldersRequest>,
    ) -> Result<Response<pb::KeyHolderList>, Status> {
        let r = request.get_ref().clone();
        self.as_actor(&request, "keys.holders", async move |s, vault, me| {
            s.sync().await?;
            let patient = if r.patient.trim().is_empty() {
                me.name().to_string()
            } else {
                r.patient
            };
            let h = Compliance::new(vault, s.client())
                .key_holders(me, &patient)
                .await?;
            Ok(pb::KeyHolderList {
                patient_id: h.patient_id,
                epochs: h
                    .epochs
                    .into_iter()
                    .map(|e| pb::KeyEpoch {
                        epoch: e.epoch,
                        created_at: e.created_at,
                        reason: e.reason,
                    })
                    .collect(),
                copies: h
                    .copies
                    .into_iter()
                    .map(|c| pb::KeyHolder {
                        epoch: c.epoch,
                        holder: c.holder,
                        holder_name: c.holder_name,
                        role: c.role,
                        sealed_at: c.sealed_at,
                    })
                    .collect(),
            })
        })
        .await
    }
}
