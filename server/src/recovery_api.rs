//! Key recovery over gRPC (`service Recovery` in
//! `proto/cohort/v1/cohort.proto`): each step is the engine operation the
//! CLI calls (`access::recovery`), as the signed-in account; the chain
//! decides who may.

use cohort_engine::access::recovery::{self, GuardianSetup, GuardiansInfo, Named, RecoveryInfo};
use tonic::{Request, Response, Status};

use super::api::{StudyApi, pb};

fn name(n: &Named) -> String {
    n.name.clone().unwrap_or_else(|| n.address.clone())
}

fn state(r: RecoveryInfo) -> pb::RecoveryState {
    pb::RecoveryState {
        id: r.id,
        patient: name(&r.patient),
        new_key: name(&r.new_key),
        old_key: r.old_key.as_ref().map(name).unwrap_or_default(),
        state: r.state.into(),
        approvals: r.approvals.into(),
        threshold: r.threshold.into(),
        attested_by: r.attested_by.as_ref().map(name).unwrap_or_default(),
        released: r.released as u32,
        review: r.review.into(),
        tx_hash: r.tx_hash.unwrap_or_default(),
        patient_id: String::new(),
    }
}

fn guardians(g: GuardiansInfo) -> pb::GuardiansState {
    pb::GuardiansState {
        patient: g.patient,
        guardians: g.guardians.iter().map(name).collect(),
        threshold: g.threshold.into(),
        round: g.round,
        backup: g.backup.as_ref().map(name).unwrap_or_default(),
        shares_held: g.shares_held,
        tx_hash: g.tx_hash.unwrap_or_default(),
    }
}

#[tonic::async_trait]
impl pb::recovery_server::Recovery for StudyApi {
    async fn set_guardians(
        &self,
        request: Request<pb::SetGuardiansRequest>,
    ) -> Result<Response<pb::GuardiansState>, Status> {
        let r = request.get_ref().clone();
        let threshold = u8::try_from(r.threshold)
            .map_err(|_| Status::invalid_argument("`threshold`: at most 16 guardians"))?;
        self.as_actor(&request, "recovery.guardians", async move |s, vault, me| {
            let setup = GuardianSetup {
                guardians: r.guardians,
                threshold,
                backup: (!r.backup.is_empty()).then_some(r.backup),
            };
            let g =
                recovery::set_guardians(vault.conn(), s.client(), vault.keys(), me, &setup).await?;
            Ok(guardians(g))
        })
        .await
    }

    async fn guardians(
        &self,
        request: Request<pb::GuardiansRequest>,
    ) -> Result<Response<pb::GuardiansState>, Status> {
        let patient = request.get_ref().patient.clone();
        self.as_actor(&request, "recovery.show", async move |s, vault, me| {
            let conn = vault.conn();
            let address = if patient.is_empty() {
                cohort_engine::access::patients::identity_of(conn, me)?
            } else {
                recovery::patient_address(conn, &patient)?
            };
            Ok(guardians(
                recovery::guardians(conn, s.client(), address).await?,
            ))
        })
        .await
    }

    async fn open_recovery(
        &self,
        request: Request<pb::OpenRecoveryRequest>,
    ) -> Result<Response<pb::RecoveryState>, Status> {
        let patient = request.get_ref().patient.clone();
        self.as_actor(&request, "recovery.open", async move |s, vault, me| {
            Ok(state(
                recovery::open(vault.conn(), s.client(), me, &patient).await?,
            ))
        })
        .await
    }

    async fn approve_recovery(
        &self,
        request: Request<pb::RecoveryEvidence>,
    ) -> Result<Response<pb::RecoveryState>, Status> {
        let r = request.get_ref().clone();
        self.as_actor(&request, "recovery.approve", async move |s, vault, me| {
            Ok(state(
                recovery::approve(
                    vault.conn(),
                    s.client(),
                    vault.keys(),
                    me,
                    r.id,
                    &r.evidence,
                )
                .await?,
            ))
        })
        .await
    }

    async fn release_backup(
        &self,
        request: Request<pb::RecoveryId>,
    ) -> Result<Response<pb::RecoveryState>, Status> {
        let id = request.get_ref().id;
        self.as_actor(&request, "recovery.backup", async move |s, vault, me| {
            Ok(state(
                recovery::release_backup(vault.conn(), s.client(), vault.keys(), me, id).await?,
            ))
        })
        .await
    }

    async fn attest_identity(
        &self,
        request: Request<pb::RecoveryEvidence>,
    ) -> Result<Response<pb::RecoveryState>, Status> {
        let r = request.get_ref().clone();
        self.as_actor(&request, "recovery.attest", async move |s, vault, me| {
            Ok(state(
                recovery::attest(vault.conn(), s.client(), me, r.id, &r.evidence).await?,
            ))
        })
        .await
    }

    async fn complete_recovery(
        &self,
        request: Request<pb::RecoveryId>,
    ) -> Result<Response<pb::RecoveryState>, Status> {
        let id = request.get_ref().id;
        self.as_actor(&request, "recovery.complete", async move |s, vault, me| {
            let done = recovery::complete(vault.conn(), s.client(), vault.keys(), me, id).await?;
            let mut out = state(done.recovery);
            out.patient_id = done.patient_id.unwrap_or_default();
            Ok(out)
        })
        .await
    }

    async fn cancel_recovery(
        &self,
        request: Request<pb::RecoveryId>,
    ) -> Result<Response<pb::RecoveryState>, Status> {
        let id = request.get_ref().id;
        self.as_actor(&request, "recovery.cancel", async move |s, vault, me| {
            Ok(state(
                recovery::cancel(vault.conn(), s.client(), me, id).await?,
            ))
        })
        .await
    }

    async fn get_recovery(
        &self,
        request: Request<pb::RecoveryId>,
    ) -> Result<Response<pb::RecoveryState>, Status> {
        let id = request.get_ref().id;
        self.as_actor(&request, "recovery.show", async move |s, vault, _me| {
            Ok(state(recovery::show(vault.conn(), s.client(), id).await?))
        })
        .await
    }

    async fn recovery_trail(
        &self,
        request: Request<pb::RecoveryId>,
    ) -> Result<Response<pb::RecoveryTrailReply>, Status> {
        let id = request.get_ref().id;
        self.as_actor(&request, "recovery.trail", async move |s, vault, me| {
            let t = recovery::trail(vault.conn(), s.client(), me, id).await?;
            Ok(pb::RecoveryTrailReply {
                recovery: Some(state(t.recovery)),
                entries: t
                    .entries
                    .into_iter()
                    .map(|e| pb::RecoveryTrailEntry {
                        source: e.source.into(),
                        at: e.at,
                        action: e.action,
                        by: e.by,
                        detail_json: e.detail.to_string(),
                    })
                    .collect(),
            })
        })
        .await
    }

    async fn review_recovery(
        &self,
        request: Request<pb::ReviewRecoveryRequest>,
    ) -> Result<Response<pb::RecoveryState>, Status> {
        let r = request.get_ref().clone();
        self.as_actor(&request, "recovery.review", async move |s, vault, me| {
            Ok(state(
                recovery::review(vault.conn(), s.client(), me, r.id, r.justified, &r.finding)
                    .await?,
            ))
        })
        .await
    }
}
