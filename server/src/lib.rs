//! # cohort-server
//!
//! `cohort serve`: the research path behind Arrow Flight SQL, so that ADBC,
//! pyarrow and JDBC clients ask their questions unchanged. An adapter: it
//! authenticates and authorises each call ([`gate`]), calls the engine's
//! `research::Session` (the one service API), and renders the outcome; it
//! holds no domain logic of its own.
//!
//! A client signs in with its Ethereum key ([`auth`]: an EIP-4361 challenge
//! from the `cohort.challenge` action, its signature in the Flight
//! handshake), then sends `authorization: Bearer <token>` and
//! `cohort-study: <id>` with each statement. Everything else is refused:
//! the on-chain role checks of the research path decide what an account
//! may ask.
//!
//! The same port serves the study API ([`api`], gRPC from
//! `proto/cohort/v1/cohort.proto`) and the clinical service
//! ([`clinical_api`]) under the same tokens, a FHIR R4 REST API over the
//! clinical service ([`fhir`], under `/fhir`), the web page ([`web`]), and
//! the standard gRPC health service. The page's own sign-in (passkeys and
//! TOTP) is [`passkey`] and `web::session`.

pub mod api;
pub mod appointments_api;
pub mod auth;
pub mod clinical_api;
pub mod compliance_api;
pub mod config;
pub mod fhir;
pub mod flight;
pub mod gate;
pub mod passkey;
pub mod recovery_api;
pub mod sign_in;
pub mod tls;
pub mod web;

use std::sync::Arc;
use std::time::Duration;

use arrow_flight::flight_service_server::FlightServiceServer;
use tonic_health::ServingStatus;

pub use config::Config;

use cohort_engine::research::Session;
use cohort_ledger_bridge::alloy::primitives::Address;
use tonic::Status;

use cohort_engine::{DataDir, Error, Result, chain, keys::accounts};

/// The gRPC health service's name for the research service
/// (`grpc.health.v1.Health/Check` with this `service`; the empty name
/// answers for the whole server).
pub const FLIGHT_SERVICE: &str = "arrow.flight.protocol.FlightService";

/// How often the server pushes queued notifications to their webhooks.
const WEBHOOK_ROUND: Duration = Duration::from_secs(15);

/// Runs `work` every `period` on a thread of its own (with its own
/// runtime: SQLite connections are not shared across threads), for as long
/// as the process runs.
fn every(
    name: &str,
    period: Duration,
    mut work: impl FnMut(&tokio::runtime::Runtime) + Send + 'static,
) -> std::io::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            loop {
                std::thread::sleep(period);
                work(&rt);
            }
        })
        .map(|_| ())
}

/// One round of webhook deliveries; a failed POST stays queued.
fn deliver_round(dir: &DataDir, rt: &tokio::runtime::Runtime) {
    let round = dir.connect().map_err(|e| e.to_string()).and_then(|conn| {
        rt.block_on(cohort_engine::access::notifications::deliver(&conn))
            .map_err(|e| e.to_string())
    });
    match round {
        Ok(r) if r.delivered + r.failed > 0 => {
            tracing::info!(delivered = r.delivered, failed = r.failed, "webhooks")
        }
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "webhook round failed"),
    }
}

/// Pushes the notification outbox to webhooks every [`WEBHOOK_ROUND`].
fn deliver_notifications(dir: DataDir) {
    if let Err(e) = every("cohort-webhooks", WEBHOOK_ROUND, move |rt| {
        deliver_round(&dir, rt)
    }) {
        tracing::warn!(error = %e, "no webhook thread: notifications stay in the outbox");
    }
}

/// Runs the appointment scheduler every `period` on the chain's clock:
/// the reminders due (each exactly once, see `appointments::reminders`),
/// then the settlements due, as the engine account; reminders sent are
/// pushed to webhooks at once. A failed round is logged (no PHI) and
/// retried at the next.
fn schedule_appointments(dir: DataDir, session: Arc<Session>, period: Duration) {
    if period.is_zero() {
        return;
    }
    let scheduled = every("cohort-appointments", period, move |rt| {
        match rt.block_on(appointment_round(&dir, &session)) {
            Ok(t) if t.reminded + t.expired + t.released + t.failed > 0 => {
                tracing::info!(
                    reminded = t.reminded,
                    expired = t.expired,
                    released = t.released,
                    failed = t.failed,
                    "appointment scheduler"
                );
                if t.reminded > 0 {
                    deliver_round(&dir, rt);
                }
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "appointment scheduler round failed"),
        }
    });
    if let Err(e) = scheduled {
        tracing::warn!(error = %e, "no appointment scheduler: reminders are not sent");
    }
}

/// Seals the audit log's new entries and the vault index's new rows and
/// anchors both keyed heads, as the engine account; logs the outcome
/// (counts only).
async fn anchor_audit(session: &Session) {
    let anchored = async {
        let vault = session.vault()?;
        cohort_engine::records::index_anchor::anchor_both(
            &vault,
            session.client(),
            session.engine_account(),
        )
        .await
    }
    .await;
    match anchored {
        Ok(both) => {
            if let Some(a) = both.audit {
                tracing::info!(
                    entries = a.entries,
                    sealed = a.sealed,
                    "audit head anchored"
                )
            }
            if let Some(a) = both.index {
                tracing::info!(
                    rows = a.entries,
                    sealed = a.sealed,
                    "vault index head anchored"
                )
            }
        }
        Err(e) => tracing::warn!(error = %e, "audit anchoring failed"),
    }
}

/// Anchors the audit log's head every `period` (0: never; the server
/// anchors at shutdown in any case).
fn anchor_audit_periodically(session: Arc<Session>, period: Duration) {
    if period.is_zero() {
        return;
    }
    if let Err(e) = every("cohort-audit-anchor", period, move |rt| {
        rt.block_on(anchor_audit(&session))
    }) {
        tracing::warn!(error = %e, "no audit anchoring thread: the head is anchored at shutdown only");
    }
}

/// Purges the records past their retention policy every `period` (0:
/// never), on the chain's clock, as the engine account: the operator's
/// policies, applied by the server. Logs counts only.
fn purge_periodically(session: Arc<Session>, period: Duration) {
    if period.is_zero() {
        return;
    }
    let purged = every("cohort-retention", period, move |rt| {
        let round = rt.block_on(async {
            session.sync().await?;
            let now = session.client().ledger().now().await?;
            let now = chrono::DateTime::from_timestamp(now as i64, 0)
                .ok_or_else(|| Error::Invalid(format!("the chain's clock reads {now}")))?;
            let vault = session.vault()?;
            cohort_engine::compliance::retention::run(
                &vault,
                session.engine_account().name(),
                now,
                false,
            )
        });
        match round {
            Ok(p) if p.versions + p.blocks_deleted > 0 => tracing::info!(
                versions = p.versions,
                held = p.held,
                blocks_deleted = p.blocks_deleted,
                "retention purge"
            ),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "retention purge failed"),
        }
    });
    if let Err(e) = purged {
        tracing::warn!(error = %e, "no retention thread: run `cohort retention run`");
    }
}

/// One scheduler round.
async fn appointment_round(
    dir: &DataDir,
    session: &Session,
) -> Result<cohort_engine::appointments::reminders::Tick> {
    session.sync().await?;
    let now = session.client().ledger().now().await?;
    let engine = cohort_engine::access::Actor::from_account(session.engine_account().clone());
    cohort_engine::appointments::reminders::round(
        &mut dir.connect()?,
        session.client(),
        &engine,
        now,
    )
    .await
}

/// Serves `session` until `shutdown` resolves. Then the health service
/// says NOT_SERVING, no new call is accepted, and the calls in flight have
/// `[server] shutdown_grace_secs` to finish before they are dropped (a
/// dropped query either reached the ledger's debit or did not; a retry
/// with the same `cohort-query-id` is answered once either way). `ready`
/// receives the server's URL once it accepts.
pub async fn serve(
    dir: &DataDir,
    session: Session,
    config: &Config,
    ready: impl FnOnce(&str),
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> Result<()> {
    let chain = chain::load(dir)?.ok_or_else(|| {
        Error::Invalid("no ledger is deployed in this data directory: run `cohort ledger deploy` (or `cohort demo`) first".into())
    })?;
    let listen = config.server.listen;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| Error::Invalid(format!("cannot listen on {listen}: {e}")))?;
    let bound = listener
        .local_addr()
        .map_err(|e| Error::Invalid(format!("the listening socket: {e}")))?;
    let identity = tls::identity(dir, &config.tls(), bound)?;
    let url = format!(
        "{}://{bound}",
        if identity.is_some() { "https" } else { "http" }
    );
    let auth = Arc::new(auth::Auth::new(
        &url,
        chain.chain_id,
        Duration::from_secs(config.auth.token_ttl_secs),
    ));
    let session = Arc::new(session);
    deliver_notifications(dir.clone());
    schedule_appointments(
        dir.clone(),
        Arc::clone(&session),
        Duration::from_secs(config.appointments.scheduler_secs),
    );
    anchor_audit_periodically(
        Arc::clone(&session),
        Duration::from_secs(config.audit.anchor_secs),
    );
    purge_periodically(
        Arc::clone(&session),
        Duration::from_secs(config.retention.run_secs),
    );
    let last_anchor = Arc::clone(&session);
    let gate = Arc::new(gate::Gate::new(
        auth,
        Arc::clone(&session),
        dir.clone(),
        config.auth.second_factor,
    ));
    let scheme = if identity.is_some() { "https" } else { "http" };
    let rp_id = config.auth.passkey_rp_id.trim();
    let origin = match config.auth.passkey_origin.trim() {
        "" => format!("{scheme}://{rp_id}:{}", bound.port()),
        given => given.to_string(),
    };
    let passkeys = Arc::new(passkey::Passkeys::new(rp_id, &origin)?);
    let sign_in = web::session::SignIn::new(Arc::clone(&gate), dir.clone(), passkeys);
    let api = api::StudyApi::new(Arc::clone(&session), dir.clone(), Arc::clone(&gate), scheme);
    let service = flight::Research::new(session, dir.clone(), gate);
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_service_status("", ServingStatus::Serving).await;
    health
        .set_service_status(FLIGHT_SERVICE, ServingStatus::Serving)
        .await;
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    let mut builder = tonic::transport::Server::builder();
    if let Some((cert, key)) = identity {
        builder = builder
            .tls_config(
                tonic::transport::ServerTlsConfig::new()
                    .identity(tonic::transport::Identity::from_pem(cert, key)),
            )
            .map_err(|e| Error::Invalid(format!("the server's TLS certificate or key: {e}")))?;
    }
    let stopping = Arc::new(tokio::sync::Notify::new());
    let signal = {
        let stopping = Arc::clone(&stopping);
        let health = health.clone();
        async move {
            shutdown.await;
            tracing::info!("stopping: no new calls; finishing the calls in flight");
            health
                .set_service_status("", ServingStatus::NotServing)
                .await;
            health
                .set_service_status(FLIGHT_SERVICE, ServingStatus::NotServing)
                .await;
            stopping.notify_one();
        }
    };
    let max = config.server.max_request_bytes;
    let mut grpc = tonic::service::Routes::builder();
    grpc.add_service(health_service)
        .add_service(FlightServiceServer::new(service).max_decoding_message_size(max))
        .add_service(
            api::pb::studies_server::StudiesServer::new(api.clone()).max_decoding_message_size(max),
        )
        .add_service(
            api::pb::consents_server::ConsentsServer::new(api.clone())
                .max_decoding_message_size(max),
        )
        .add_service(
            api::pb::compensation_server::CompensationServer::new(api.clone())
                .max_decoding_message_size(max),
        )
        .add_service(
            api::pb::audit_server::AuditServer::new(api.clone()).max_decoding_message_size(max),
        )
        .add_service(
            api::pb::records_server::RecordsServer::new(api.clone()).max_decoding_message_size(max),
        )
        .add_service(
            api::pb::roles_server::RolesServer::new(api.clone()).max_decoding_message_size(max),
        )
        .add_service(
            api::pb::clinical_server::ClinicalServer::new(api.clone())
                .max_decoding_message_size(max),
        )
        .add_service(
            api::pb::appointments_server::AppointmentsServer::new(api.clone())
                .max_decoding_message_size(max),
        )
        .add_service(
            api::pb::insurance_server::InsuranceServer::new(api.clone())
                .max_decoding_message_size(max),
        )
        .add_service(
            api::pb::compliance_server::ComplianceServer::new(api.clone())
                .max_decoding_message_size(max),
        )
        .add_service(
            api::pb::recovery_server::RecoveryServer::new(api.clone())
                .max_decoding_message_size(max),
        );
    // The web page and its JSON API beside the gRPC services, on one port;
    // browsers may speak HTTP/1.1.
    let routes = grpc
        .routes()
        .into_axum_router()
        .merge(web::router(api.clone()))
        .merge(web::session::router(sign_in))
        .merge(fhir::router(api))
        .layer(axum::extract::DefaultBodyLimit::max(max));
    let server = builder
        .accept_http1(true)
        .add_routes(routes.into())
        .serve_with_incoming_shutdown(incoming, signal);
    tracing::info!(%url, "serving");
    ready(&url);
    let grace = Duration::from_secs(config.server.shutdown_grace_secs);
    let stopped = tokio::select! {
        stopped = server => stopped.map_err(|e| Error::Invalid(format!("the server stopped: {e}"))),
        () = async { stopping.notified().await; tokio::time::sleep(grace).await } => {
            tracing::warn!(grace_secs = grace.as_secs(), "calls still in flight after the grace period: aborting them");
            Ok(())
        }
    };
    // The last entries (this run's sign-ins, calls) are anchored at shutdown.
    let session = last_anchor;
    let _ = tokio::task::spawn_blocking(move || {
        tokio::runtime::Handle::current().block_on(anchor_audit(&session))
    })
    .await;
    stopped
}

/// The local account name of `address` (what the research path's role
/// checks take).
pub(crate) fn account_name(dir: &DataDir, address: Address) -> std::result::Result<String, Status> {
    let conn = dir.connect().map_err(internal)?;
    accounts::name_of(&conn, address)
        .map_err(internal)?
        .ok_or_else(|| {
            Status::permission_denied(format!(
                "{} has no account on this server",
                address.to_checksum(None)
            ))
        })
}

pub(crate) fn internal(e: Error) -> Status {
    Status::internal(e.to_string())
}

/// The domain's errors as gRPC statuses, with their message.
pub(crate) fn status(e: Error) -> Status {
    if cohort_engine::datadir::is_storage_failure(&e) {
        // The operator's problem, told in the log; the caller learns only
        // that the server cannot write now (every change is one
        // transaction, so nothing was half-written).
        tracing::error!(error = %e, "storage fault: the data directory refused a write (disk full or read-only?)");
        return Status::unavailable(
            "the server cannot write its data now (its disk is full or read-only); nothing was \
             half-written: try again later",
        );
    }
    let message = e.to_string();
    match e {
        Error::NotFound(_) => Status::not_found(message),
        Error::Forbidden(_) => Status::permission_denied(message),
        Error::Invalid(_)
        | Error::Fhir { .. }
        | Error::Query(_)
        | Error::Anonymizer(_)
        | Error::Uncommitted { .. } => Status::invalid_argument(message),
        Error::Ledger(_) => Status::failed_precondition(message),
        // Charged without an answer: the same status and message for every
        // way a query can end so.
        Error::Charged { .. } => Status::aborted(message),
        _ => Status::internal(message),
    }
}
