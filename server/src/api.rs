//! The study API over gRPC (`proto/cohort/v1/cohort.proto`): studies,
//! consent, compensation, the audit log and a patient's access log, each
//! call the same [`Session`] method the CLI calls (the clinical service is
//! in [`crate::clinical_api`]), acting for the signed-in account, its transactions signed with
//! that account's key from the keystore. What an account may do is decided
//! on chain by the research path, exactly as for the CLI; this layer only
//! names the caller.

use std::sync::Arc;

use cohort_ledger_bridge::{Account, Role};
use rusqlite::Connection;
use tonic::{Request, Response, Status};

use super::gate::Gate;
use super::{account_name, status};
use cohort_engine::access::{Actor, patients};
use cohort_engine::records::vault::Vault;
use cohort_engine::research::study::StudyFile;
use cohort_engine::research::{self, Session, Viewer};
use cohort_engine::{DataDir, audit};

/// The code `tonic-prost-build` generated from the `.proto` file.
pub mod pb {
    #![allow(missing_docs, clippy::all, clippy::pedantic)]
    tonic::include_proto!("cohort.v1");
}

/// The study API of one data directory.
#[derive(Clone)]
pub struct StudyApi {
    session: Arc<Session>,
    dir: DataDir,
    gate: Arc<Gate>,
    /// `https` or `http`: how the server is reached (for the FHIR API's URLs).
    scheme: &'static str,
}

impl StudyApi {
    pub(crate) fn new(
        session: Arc<Session>,
        dir: DataDir,
        gate: Arc<Gate>,
        scheme: &'static str,
    ) -> StudyApi {
        StudyApi {
            session,
            dir,
            gate,
            scheme,
        }
    }

    /// Runs `call` for the signed-in caller on a blocking thread: the
    /// research path holds its SQLite connection across awaits (not `Send`).
    async fn as_caller<T, R>(
        &self,
        request: &Request<R>,
        what: &'static str,
        call: impl AsyncFnOnce(&Session, &Connection, &Account) -> cohort_engine::Result<T>
        + Send
        + 'static,
    ) -> Result<Response<T>, Status>
    where
        T: Send + 'static,
    {
        let dir = self.dir.clone();
        self.on_blocking_thread(request, what, move |session, name, handle| {
            let conn = dir.connect()?;
            let account = session.account(&conn, name)?;
            handle.block_on(call(session, &conn, &account))
        })
        .await
    }

    /// Runs `call` as the signed-in caller's [`Actor`] over a vault of its
    /// own (the clinical service), on a blocking thread.
    pub(crate) async fn as_actor<T, R>(
        &self,
        request: &Request<R>,
        what: &'static str,
        call: impl AsyncFnOnce(&Session, &Vault, &Actor) -> cohort_engine::Result<T> + Send + 'static,
    ) -> Result<Response<T>, Status>
    where
        T: Send + 'static,
    {
        self.on_blocking_thread(request, what, move |session, name, handle| {
            let vault = session.vault()?;
            let actor = Actor::from_account(session.account(vault.conn(), name)?);
            handle.block_on(call(session, &vault, &actor))
        })
        .await
    }

    /// Names the caller (the gate), then runs `work` for that account's
    /// name on a blocking thread, logging the outcome.
    async fn on_blocking_thread<T, R>(
        &self,
        request: &Request<R>,
        what: &'static str,
        work: impl FnOnce(&Session, &str, &tokio::runtime::Handle) -> cohort_engine::Result<T>
        + Send
        + 'static,
    ) -> Result<Response<T>, Status>
    where
        T: Send + 'static,
    {
        let address = self.gate.caller(request).await?;
        let name = account_name(&self.dir, address)?;
        let session = Arc::clone(&self.session);
        let handle = tokio::runtime::Handle::current();
        let started = std::time::Instant::now();
        let result = tokio::task::spawn_blocking(move || work(&session, &name, &handle))
            .await
            .map_err(|e| Status::internal(format!("the call's task failed: {e}")))?
            .map_err(status);
        let elapsed_ms = started.elapsed().as_millis() as u64;
        match &result {
            Ok(_) => tracing::info!(account = %address, call = what, elapsed_ms, "done"),
            Err(e) => {
                tracing::info!(account = %address, call = what, elapsed_ms, code = ?e.code(), "refused")
            }
        }
        result.map(Response::new)
    }

    /// The data directory.
    pub(crate) fn dir(&self) -> &DataDir {
        &self.dir
    }

    /// The gate every call passes.
    pub(crate) fn gate(&self) -> &Gate {
        &self.gate
    }

    /// The gate, shared (for a stream that checks its caller again later).
    pub(crate) fn shared_gate(&self) -> Arc<Gate> {
        Arc::clone(&self.gate)
    }

    /// `https` or `http`.
    pub(crate) fn scheme(&self) -> &'static str {
        self.scheme
    }
}

fn study(s: research::StudySummary) -> pb::Study {
    pb::Study {
        study_id: s.study_id,
        title: s.title,
        purpose: s.purpose,
        status: s.status,
        approvals: s.approvals.into(),
        researcher: s.researcher,
        budget: s.budget,
        remaining: s.books.as_ref().map(|b| b.remaining.clone()),
        escrow: s.books.as_ref().map(|b| b.escrow.clone()),
        owed: s.books.as_ref().map(|b| b.owed.clone()),
        consenting: s.consenting as u64,
        queries: s.books.as_ref().map(|b| b.queries as u64),
        releases: s.books.as_ref().map(|b| b.releases as u64),
        microdata: s.microdata,
        ends_at: s.ends_at,
    }
}

fn consent_change(c: research::ConsentChange) -> pb::ConsentChange {
    pb::ConsentChange {
        study_id: c.study_id,
        account: c.account,
        change: c.change.to_string(),
        tx_hash: c.tx_hash,
    }
}

#[tonic::async_trait]
impl pb::studies_server::Studies for StudyApi {
    async fn propose(
        &self,
        request: Request<pb::ProposeRequest>,
    ) -> Result<Response<pb::Proposed>, Status> {
        let file = StudyFile::parse(&request.get_ref().study_toml)
            .map_err(|e| Status::invalid_argument(format!("the study file: {e}")))?;
        self.as_caller(&request, "study.propose", async move |s, conn, me| {
            let p = s.propose(conn, me, &file).await?;
            Ok(pb::Proposed {
                study_id: p.study_id,
                title: p.title,
                scope_hash: p.scope_hash,
                escrow: p.escrow,
            })
        })
        .await
    }

    async fn approve(
        &self,
        request: Request<pb::StudyRef>,
    ) -> Result<Response<pb::Approval>, Status> {
        let id = request.get_ref().study_id;
        self.as_caller(&request, "study.approve", async move |s, conn, me| {
            let a = s.approve(conn, me, id).await?;
            Ok(pb::Approval {
                study_id: a.study_id,
                approvals: a.approvals.into(),
                required: a.required.into(),
                approved: a.approved,
                view_patients: a.view_patients.map(|n| n as u64),
            })
        })
        .await
    }

    async fn list(
        &self,
        request: Request<pb::ListStudiesRequest>,
    ) -> Result<Response<pb::StudyList>, Status> {
        self.as_caller(&request, "study.list", async move |s, conn, me| {
            let viewer = Viewer::Account(me.address());
            Ok(pb::StudyList {
                studies: s.list(conn, viewer).await?.into_iter().map(study).collect(),
            })
        })
        .await
    }

    async fn release(
        &self,
        request: Request<pb::ReleaseRequest>,
    ) -> Result<Response<pb::Extract>, Status> {
        let r = *request.get_ref();
        if r.k < 2 {
            return Err(Status::invalid_argument("`k` must be at least 2"));
        }
        self.as_caller(&request, "study.release", async move |s, _, me| {
            let x = s
                .release(
                    me.name(),
                    r.study_id,
                    r.k as usize,
                    r.l.map(|l| l as usize),
                    None,
                )
                .await?;
            let parquet = std::fs::read(&x.path)
                .map_err(|e| cohort_engine::Error::io("reading", &x.path, e))?;
            Ok(pb::Extract {
                study_id: x.study_id,
                k: x.k as u32,
                l: x.l as u32,
                measured_k: x.measured_k as u32,
                measured_l: x.measured_l.map(|l| l as u32),
                extract_hash: x.extract_hash,
                parquet,
            })
        })
        .await
    }

    async fn show(&self, request: Request<pb::StudyRef>) -> Result<Response<pb::Study>, Status> {
        let id = request.get_ref().study_id;
        self.as_caller(&request, "study.show", async move |s, conn, me| {
            Ok(study(
                s.show(conn, id, Viewer::Account(me.address())).await?,
            ))
        })
        .await
    }
}

#[tonic::async_trait]
impl pb::consents_server::Consents for StudyApi {
    async fn give(
        &self,
        request: Request<pb::GiveConsentRequest>,
    ) -> Result<Response<pb::ConsentChange>, Status> {
        let r = request.get_ref().clone();
        if r.days == 0 {
            return Err(Status::invalid_argument(
                "`days`: a consent lasts at least one day",
            ));
        }
        self.as_caller(&request, "consent.give", async move |s, conn, me| {
            let purposes = (!r.purposes.is_empty()).then_some(r.purposes.as_slice());
            Ok(consent_change(
                s.consent(conn, me, r.study_id, purposes, r.days).await?,
            ))
        })
        .await
    }

    async fn withdraw(
        &self,
        request: Request<pb::StudyRef>,
    ) -> Result<Response<pb::ConsentChange>, Status> {
        let id = request.get_ref().study_id;
        self.as_caller(&request, "consent.withdraw", async move |s, conn, me| {
            Ok(consent_change(s.withdraw(conn, me, id).await?))
        })
        .await
    }

    async fn list(
        &self,
        request: Request<pb::ListConsentsRequest>,
    ) -> Result<Response<pb::ConsentList>, Status> {
        self.as_caller(&request, "consent.list", async move |s, conn, me| {
            let consents = s.consents_of(conn, me.address()).await?;
            Ok(pb::ConsentList {
                consents: consents
                    .into_iter()
                    .map(|c| pb::Consent {
                        study_id: c.study_id,
                        title: c.title,
                        purposes: c.purposes,
                        expires_at: c.expires_at,
                        active: c.active,
                    })
                    .collect(),
            })
        })
        .await
    }
}

#[tonic::async_trait]
impl pb::compensation_server::Compensation for StudyApi {
    async fn show(
        &self,
        request: Request<pb::CompensationRequest>,
    ) -> Result<Response<pb::Earnings>, Status> {
        let study = request.get_ref().study_id;
        self.as_caller(&request, "compensation.show", async move |s, _, me| {
            let e = s.earnings(me.address(), study).await?;
            Ok(pb::Earnings {
                address: e.address,
                shares: e
                    .shares
                    .into_iter()
                    .map(|x| pb::Earning {
                        study_id: x.study_id,
                        query_id: x.query_id,
                        ledger_id: x.ledger_id,
                        amount: x.amount,
                        amount_text: x.amount_text,
                        claimed: x.claimed,
                    })
                    .collect(),
                earned: e.earned,
                claimed: e.claimed,
                claimable: e.claimable,
            })
        })
        .await
    }

    async fn claim(
        &self,
        request: Request<pb::CompensationRequest>,
    ) -> Result<Response<pb::Claimed>, Status> {
        let study = request.get_ref().study_id;
        self.as_caller(&request, "compensation.claim", async move |s, _, me| {
            let c = s.claim(me, study).await?;
            Ok(pb::Claimed {
                address: c.address,
                queries: c.queries,
                paid: c.paid,
                paid_text: c.paid_text,
            })
        })
        .await
    }
}

/// At most this many entries in one answer.
const MAX_ENTRIES: u32 = 10_000;

fn limit(requested: u32) -> Result<usize, Status> {
    match requested {
        0 => Ok(100),
        n if n <= MAX_ENTRIES => Ok(n as usize),
        n => Err(Status::invalid_argument(format!(
            "`limit` {n} is over {MAX_ENTRIES}"
        ))),
    }
}

fn entries(list: Vec<audit::Entry>) -> pb::AuditLog {
    pb::AuditLog {
        entries: list
            .into_iter()
            .map(|e| pb::AuditEntry {
                seq: e.seq,
                at: e.at,
                actor: e.actor,
                action: e.action,
                target: e.target,
                purpose: e.purpose,
                detail: e.detail,
                hash: e.hash,
            })
            .collect(),
    }
}

#[tonic::async_trait]
impl pb::audit_server::Audit for StudyApi {
    async fn log(
        &self,
        request: Request<pb::AuditLogRequest>,
    ) -> Result<Response<pb::AuditLog>, Status> {
        let n = limit(request.get_ref().limit)?;
        let target = request.get_ref().target.clone();
        self.as_caller(&request, "audit.log", async move |s, conn, me| {
            let viewer = Viewer::Account(me.address());
            Ok(entries(
                s.audit_log(conn, viewer, n, target.as_deref()).await?,
            ))
        })
        .await
    }

    async fn verify(
        &self,
        request: Request<pb::VerifyAuditRequest>,
    ) -> Result<Response<pb::AuditVerification>, Status> {
        self.as_caller(&request, "audit.verify", async move |s, conn, me| {
            let v = s.audit_verify(conn, Viewer::Account(me.address())).await?;
            Ok(pb::AuditVerification {
                entries: v.entries,
                intact: v.is_intact(),
                head: v.head,
                first_broken_seq: v.first_broken.as_ref().map(|b| b.seq),
                first_broken_reason: v.first_broken.map(|b| b.reason),
            })
        })
        .await
    }
}

#[tonic::async_trait]
impl pb::records_server::Records for StudyApi {
    async fn access_log(
        &self,
        request: Request<pb::AccessLogRequest>,
    ) -> Result<Response<pb::AuditLog>, Status> {
        let n = limit(request.get_ref().limit)?;
        self.as_caller(&request, "records.access_log", async move |s, conn, me| {
            Ok(entries(s.access_log(conn, me, n)?))
        })
        .await
    }
}

impl StudyApi {
    /// A role change by the signed-in administrator: the contract decides
    /// whether the caller may; [`Session::change_role`] audits either way.
    async fn change_role(
        &self,
        request: Request<pb::RoleChange>,
        grant: bool,
    ) -> Result<Response<pb::RoleChanged>, Status> {
        let role: Role = request
            .get_ref()
            .role
            .parse()
            .map_err(|e: String| Status::invalid_argument(e))?;
        let name = request.get_ref().account.clone();
        let what = if grant { "role.grant" } else { "role.revoke" };
        self.as_caller(&request, what, async move |s, conn, me| {
            let c = s.change_role(conn, me, &name, role, grant).await?;
            Ok(pb::RoleChanged {
                account: c.name,
                address: c.address,
                role: c.role,
                granted: c.granted,
                tx_hash: c.tx_hash,
            })
        })
        .await
    }
}

#[tonic::async_trait]
impl pb::roles_server::Roles for StudyApi {
    async fn grant(
        &self,
        request: Request<pb::RoleChange>,
    ) -> Result<Response<pb::RoleChanged>, Status> {
        self.change_role(request, true).await
    }

    async fn revoke(
        &self,
        request: Request<pb::RoleChange>,
    ) -> Result<Response<pb::RoleChanged>, Status> {
        self.change_role(request, false).await
    }

    /// The caller's own account: its roles on chain now and its patient link.
    async fn me(&self, request: Request<pb::MeRequest>) -> Result<Response<pb::Identity>, Status> {
        self.as_actor(&request, "account.me", async move |s, vault, me| {
            let mut roles = Vec::new();
            for role in Role::ALL {
                if s.has_role(role, me.address()).await? {
                    roles.push(role.name().to_string());
                }
            }
            Ok(pb::Identity {
                account: me.name().to_string(),
                address: me.address().to_checksum(None),
                roles,
                patient_id: patients::of_account(vault.conn(), me.name())?.map(|p| p.patient_id),
            })
        })
        .await
    }
}
