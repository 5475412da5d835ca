//! `cohort serve` and `cohort login`.

use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use arrow_flight::flight_service_client::FlightServiceClient;
use arrow_flight::{Action, HandshakeRequest};
use cohort_engine::research::Session;
use cohort_engine::server::tls::{Tls, self_signed_cert_path};
use cohort_engine::server::{self, ServeOptions, flight::CHALLENGE_ACTION};
use cohort_engine::{DataDir, accounts};
use serde::Serialize;

use super::{Cli, emit, runtime, unlock};

pub(crate) fn serve(
    cli: &Cli,
    dir: &DataDir,
    listen: SocketAddr,
    token_ttl: u64,
    tls: Tls,
) -> anyhow::Result<ExitCode> {
    let vault = unlock(cli, dir, None)?;
    let rt = runtime()?;
    let session = rt.block_on(Session::open(dir, &vault))?;
    let options = ServeOptions {
        listen,
        token_ttl: Duration::from_secs(token_ttl),
        tls,
    };
    rt.block_on(server::serve(
        dir,
        session,
        &options,
        |url| {
            // One line on stdout, flushed: scripts wait for it.
            println!(
                "cohort serve: Flight SQL on {url} (sign in with `cohort login --server {url}`)"
            );
            let _ = std::io::stdout().flush();
        },
        stop_signal(),
    ))?;
    eprintln!("cohort serve: stopped");
    Ok(ExitCode::SUCCESS)
}

/// Ctrl-C or SIGTERM.
async fn stop_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("a SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

#[derive(Serialize)]
struct LoggedIn {
    account: String,
    address: String,
    token: String,
}

pub(crate) fn login(
    cli: &Cli,
    dir: &DataDir,
    server: &str,
    ca_cert: Option<&Path>,
) -> anyhow::Result<ExitCode> {
    let vault = unlock(cli, dir, None)?;
    let account = accounts::get(vault.conn(), vault.keys(), &cli.actor)?;
    let mut endpoint = tonic::transport::Endpoint::from_shared(server.to_string())
        .with_context(|| format!("`{server}` is not a server address (https://host:port)"))?;
    if server.starts_with("https://") {
        let generated = self_signed_cert_path(dir);
        let path = ca_cert.unwrap_or(&generated);
        let pem = std::fs::read(path).with_context(|| {
            format!(
                "reading the server's certificate {} (pass --ca-cert)",
                path.display()
            )
        })?;
        endpoint = endpoint.tls_config(
            tonic::transport::ClientTlsConfig::new()
                .ca_certificate(tonic::transport::Certificate::from_pem(pem)),
        )?;
    }
    let rt = runtime()?;
    let token = rt.block_on(async {
        let channel = endpoint
            .connect()
            .await
            .with_context(|| format!("cannot reach {server}"))?;
        let mut client = FlightServiceClient::new(channel);
        let action = Action {
            r#type: CHALLENGE_ACTION.into(),
            body: format!("{:#x}", account.address()).into_bytes().into(),
        };
        let mut results = client.do_action(action).await?.into_inner();
        let challenge = results
            .message()
            .await?
            .context("the server sent no challenge")?;
        let message =
            String::from_utf8(challenge.body.to_vec()).context("the challenge is not text")?;
        let signature = account.sign_message(&message)?;
        let payload = serde_json::json!({
            "message": message,
            "signature": format!("0x{}", data_encoding::HEXLOWER.encode(&signature)),
        });
        let request = HandshakeRequest {
            protocol_version: 0,
            payload: serde_json::to_vec(&payload)?.into(),
        };
        let mut replies = client
            .handshake(futures::stream::iter([request]))
            .await?
            .into_inner();
        let reply = replies
            .message()
            .await?
            .context("the server sent no token")?;
        anyhow::Ok(String::from_utf8(reply.payload.to_vec()).context("the token is not text")?)
    })?;
    let out = LoggedIn {
        account: account.name().to_string(),
        address: format!("{:#x}", account.address()),
        token,
    };
    emit(cli, &out, || out.token.clone());
    Ok(ExitCode::SUCCESS)
}
