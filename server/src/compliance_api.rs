//! The compliance service over gRPC (`service Compliance` in
//! `proto/cohort/v1/cohort.proto`): the regulatory report and retention,
//! each the engine operation the CLI calls (`compliance::Compliance`), as
//! the signed-in account, whose role on chain decides.

use chrono::{DateTime, Utc};
use cohort_engine::compliance::{Compliance, report, retention};
use tonic::{Request, Response, Status};

use super::api::{StudyApi, pb};

fn when(field: &str, unix: i64) -> Result<DateTime<Utc>, Status> {
    DateTime::from_timestamp(unix, 0)
        .ok_or_else(|| Status::invalid_argument(format!("`{field}`: {unix} is not a time")))
}

fn state((policies, holds): (Vec<retention::Policy>, Vec<retention::Hold>)) -> pb::RetentionState {
    pb::RetentionState {
        policies: policies
            .into_iter()
            .map(|p| pb::RetentionPolicy {
                resource_type: p.resource_type,
                years: p.years,
                set_by: p.set_by,
                set_at: p.set_at,
            })
            .collect(),
        holds: holds
            .into_iter()
            .map(|h| pb::LegalHold {
                patient_id: h.patient_id,
                reason: h.reason,
                set_by: h.set_by,
                set_at: h.set_at,
            })
            .collect(),
    }
}

#[tonic::async_trait]
impl pb::compliance_server::Compliance for StudyApi {
    async fn report(
        &self,
        request: Request<pb::ReportRequest>,
    ) -> Result<Response<pb::RegulatoryReport>, Status> {
        let from = when("from", request.get_ref().from)?;
        let to = match request.get_ref().to {
            Some(t) => when("to", t)?,
            None => Utc::now(),
        };
        let dir = self.dir().clone();
        self.as_actor(&request, "report.generate", async move |s, vault, me| {
            s.sync().await?;
            let r = Compliance::new(vault, s.client())
                .report(
                    &dir,
                    me,
                    from,
                    to,
                    report::Checks {
                        keyed: true,
                        blocks: true,
                    },
                )
                .await?;
            Ok(pb::RegulatoryReport {
                json: serde_json::to_string(&r).expect("serializable"),
                html: report::html(&r),
                clean: r.integrity.clean,
            })
        })
        .await
    }

    async fn set_retention(
        &self,
        request: Request<pb::RetentionPolicyRequest>,
    ) -> Result<Response<pb::RetentionState>, Status> {
        let r = request.get_ref().clone();
        self.as_actor(&request, "retention.policy", async move |s, vault, me| {
            let service = Compliance::new(vault, s.client());
            service.set_policy(me, &r.resource_type, r.years).await?;
            Ok(state(service.retention(me).await?))
        })
        .await
    }

    async fn hold(
        &self,
        request: Request<pb::LegalHoldRequest>,
    ) -> Result<Response<pb::RetentionState>, Status> {
        let r = request.get_ref().clone();
        self.as_actor(&request, "retention.hold", async move |s, vault, me| {
            let service = Compliance::new(vault, s.client());
            service.hold(me, &r.patient, &r.reason).await?;
            Ok(state(service.retention(me).await?))
        })
        .await
    }

    async fn release_hold(
        &self,
        request: Request<pb::LegalHoldRequest>,
    ) -> Result<Response<pb::RetentionState>, Status> {
        let r = request.get_ref().clone();
        self.as_actor(&request, "retention.release", async move |s, vault, me| {
            let service = Compliance::new(vault, s.client());
            service.release_hold(me, &r.patient).await?;
            Ok(state(service.retention(me).await?))
        })
        .await
    }

    async fn retention(
        &self,
        request: Request<pb::RetentionRequest>,
    ) -> Result<Response<pb::RetentionState>, Status> {
        self.as_actor(&request, "retention.show", async move |s, vault, me| {
            let service = Compliance::new(vault, s.client());
            Ok(state(service.retention(me).await?))
        })
        .await
    }

    async fn run_retention(
        &self,
        request: Request<pb::RunRetentionRequest>,
    ) -> Result<Response<pb::RetentionRun>, Status> {
        let dry_run = request.get_ref().dry_run;
        self.as_actor(&request, "retention.run", async move |s, vault, me| {
            s.sync().await?;
            let now = s.client().ledger().now().await?;
            let now = DateTime::from_timestamp(now as i64, 0).ok_or_else(|| {
                cohort_engine::Error::Invalid(format!("the chain's clock reads {now}"))
            })?;
            let p = Compliance::new(vault, s.client())
                .run_retention(me, now, dry_run)
                .await?;
            Ok(pb::RetentionRun {
                now: p.now,
                dry_run: p.dry_run,
                records: p.records.into_iter().collect(),
                versions: p.versions,
                held: p.held,
                blocks_deleted: p.blocks_deleted,
            })
        })
        .await
    }
}
