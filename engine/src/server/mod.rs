//! `cohort serve`: the research path behind Arrow Flight SQL, so that ADBC,
//! pyarrow and JDBC clients ask their questions unchanged.
//!
//! A client signs in with its Ethereum key ([`auth`]: an EIP-4361 challenge
//! from the `cohort.challenge` action, its signature in the Flight
//! handshake), then sends `authorization: Bearer <token>` and
//! `cohort-study: <id>` with each statement. Everything else is refused:
//! the on-chain role checks of the research path decide what an account
//! may ask.

pub mod auth;
pub mod flight;
pub mod tls;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arrow_flight::flight_service_server::FlightServiceServer;

use crate::research::Session;
use crate::{DataDir, Error, Result, chain};

/// How `cohort serve` listens.
#[derive(Clone, Debug)]
pub struct ServeOptions {
    /// The address to listen on (port 0: any free port).
    pub listen: SocketAddr,
    /// How long a sign-in's token lasts.
    pub token_ttl: Duration,
    /// TLS (on by default, with a generated certificate).
    pub tls: tls::Tls,
}

/// The largest message a client may send (a statement, a handshake).
const MAX_REQUEST_BYTES: usize = 1 << 20;

/// Serves `session` until `shutdown` resolves, then lets the calls in
/// flight finish. `ready` receives the server's URL once it accepts.
pub async fn serve(
    dir: &DataDir,
    session: Session,
    options: &ServeOptions,
    ready: impl FnOnce(&str),
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> Result<()> {
    let config = chain::load(dir)?.ok_or_else(|| {
        Error::Invalid("no ledger is deployed in this data directory: run `cohort ledger deploy` (or `cohort demo`) first".into())
    })?;
    let listener = tokio::net::TcpListener::bind(options.listen)
        .await
        .map_err(|e| Error::Invalid(format!("cannot listen on {}: {e}", options.listen)))?;
    let bound = listener
        .local_addr()
        .map_err(|e| Error::Invalid(format!("the listening socket: {e}")))?;
    let identity = tls::identity(dir, &options.tls, bound)?;
    let url = format!(
        "{}://{bound}",
        if identity.is_some() { "https" } else { "http" }
    );
    let auth = Arc::new(auth::Auth::new(&url, config.chain_id, options.token_ttl));
    let service = flight::Research::new(Arc::new(session), dir.clone(), auth);
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
    ready(&url);
    builder
        .add_service(FlightServiceServer::new(service).max_decoding_message_size(MAX_REQUEST_BYTES))
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
        .map_err(|e| Error::Invalid(format!("the server stopped: {e}")))
}
