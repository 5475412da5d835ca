//! `cohort serve` and `cohort login`.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use cohort_engine::research::Session;
use cohort_engine::{DataDir, keys::accounts};
use cohort_server::tls::self_signed_cert_path;
use cohort_server::{Config, config};
use serde::Serialize;

use super::{Cli, emit, runtime, unlock};

/// `cohort serve`'s flags; each, when given, wins over the file and the
/// environment.
pub(crate) struct ServeFlags {
    pub config: Option<PathBuf>,
    pub listen: Option<SocketAddr>,
    pub token_ttl: Option<u64>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub plaintext: bool,
    pub print_config: bool,
}

/// The file, the environment, then the flags.
fn effective_config(dir: &DataDir, flags: &ServeFlags) -> anyhow::Result<Config> {
    let fallback = dir.root().join(config::DEFAULT_FILE);
    let mut c = Config::load(flags.config.as_deref(), &fallback, |k| {
        std::env::var(k).ok()
    })?;
    if let Some(listen) = flags.listen {
        c.server.listen = listen;
    }
    if let Some(ttl) = flags.token_ttl {
        anyhow::ensure!(ttl > 0, "--token-ttl must be at least 1 second");
        c.auth.token_ttl_secs = ttl;
    }
    if let (Some(cert), Some(key)) = (&flags.tls_cert, &flags.tls_key) {
        c.tls = config::TlsSection {
            mode: config::TlsMode::Files,
            cert: Some(cert.clone()),
            key: Some(key.clone()),
        };
    }
    if flags.plaintext {
        c.tls = config::TlsSection {
            mode: config::TlsMode::Off,
            cert: None,
            key: None,
        };
    }
    Ok(c)
}

/// Structured logs on stderr, as `[log]` says.
fn init_logs(log: &config::LogSection) -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_new(&log.filter)
        .with_context(|| format!("[log] filter `{}` is not a tracing filter", log.filter))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match log.format {
        config::LogFormat::Text => builder.init(),
        config::LogFormat::Json => builder.json().init(),
    }
    Ok(())
}

pub(crate) fn serve(cli: &Cli, dir: &DataDir, flags: &ServeFlags) -> anyhow::Result<ExitCode> {
    let config = effective_config(dir, flags)?;
    if flags.print_config {
        out!("{}", config.to_toml().trim_end());
        return Ok(ExitCode::SUCCESS);
    }
    cohort_server::tls::allowed(&config.tls(), config.server.listen)?;
    init_logs(&config.log)?;
    if let Some(keys) = &config.keys {
        // The data directory records its keystore; [keys] must agree. A
        // new directory takes it, an HSM once its token opened.
        let new_hsm = keys.store == cohort_engine::keys::config::StoreKind::Pkcs11
            && !dir.keys_config_path().exists();
        if new_hsm {
            dir.use_hsm(&cli.actor, keys, |k| std::env::var(k).ok())?;
        } else {
            dir.select_keys(keys)?;
        }
    }
    let remote = match (config.engine.kind, &config.engine.scheduler) {
        (config::EngineKind::Ballista, Some(scheduler)) => Some(
            crate::ballista_cli::cluster(scheduler, config.engine.partitions)
                .context("[engine] (COHORT_ENGINE_*)")?,
        ),
        _ => None,
    };
    let vault = unlock(cli, dir, None)?;
    let rt = runtime()?;
    let session = rt.block_on(Session::open(dir, &vault))?;
    let session = match remote {
        Some(remote) => {
            tracing::info!(
                scheduler = config.engine.scheduler.as_deref().unwrap_or_default(),
                partitions = config.engine.partitions,
                "private plans run their exact part on a Ballista cluster"
            );
            session.with_remote_engine(remote)
        }
        None => session,
    };
    rt.block_on(cohort_server::serve(
        dir,
        session,
        &config,
        |url| {
            // One line on stdout, flushed: scripts wait for it.
            out!(
                "cohort serve: listening on {url} (Flight SQL, gRPC and the web page; sign in with `cohort login --server {url}`)"
            );
            let _ = std::io::stdout().flush();
        },
        stop_signal(),
    ))?;
    // Calls aborted after the grace period may still hold blocking threads:
    // do not wait for them.
    rt.shutdown_timeout(Duration::ZERO);
    eprintln!("cohort serve: stopped");
    Ok(ExitCode::SUCCESS)
}

/// A gRPC endpoint for `server`, trusting `ca_cert` (default: the
/// certificate `cohort serve` generated in this data directory) for https.
pub(crate) fn endpoint(
    dir: &DataDir,
    server: &str,
    ca_cert: Option<&Path>,
) -> anyhow::Result<tonic::transport::Endpoint> {
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
    Ok(endpoint.connect_timeout(Duration::from_secs(10)))
}

#[derive(Serialize)]
struct Health {
    server: String,
    status: String,
}

pub(crate) fn health(
    cli: &Cli,
    dir: &DataDir,
    server: &str,
    ca_cert: Option<&Path>,
) -> anyhow::Result<ExitCode> {
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    let endpoint = endpoint(dir, server, ca_cert)?;
    let rt = runtime()?;
    let status = rt.block_on(async {
        let channel = endpoint
            .connect()
            .await
            .with_context(|| format!("cannot reach {server}"))?;
        let reply = HealthClient::new(channel)
            .check(HealthCheckRequest {
                service: cohort_server::FLIGHT_SERVICE.into(),
            })
            .await?;
        anyhow::Ok(reply.into_inner().status())
    })?;
    let out = Health {
        server: server.to_string(),
        status: status.as_str_name().to_string(),
    };
    emit(cli, &out, || out.status.clone());
    Ok(
        if status == tonic_health::pb::health_check_response::ServingStatus::Serving {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        },
    )
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

/// What `cohort logout` ends.
pub(crate) enum SignOut<'a> {
    /// This token.
    Token(&'a str),
    /// Every token of the named account; the `--as` administrator signs in
    /// (with its TOTP code) to ask, and signs out after.
    Account {
        name: &'a str,
        totp: Option<&'a str>,
    },
}

#[derive(Serialize)]
struct LoggedOut {
    /// Whose sign-ins ended (none: the token given).
    account: Option<String>,
    /// How many tokens ended.
    tokens: u64,
}

/// Sends one Flight action with `token` as the bearer; its one reply.
async fn action(
    channel: tonic::transport::Channel,
    token: &str,
    kind: &str,
    body: Vec<u8>,
) -> anyhow::Result<String> {
    let mut client = arrow_flight::flight_service_client::FlightServiceClient::new(channel);
    let mut request = tonic::Request::new(arrow_flight::Action {
        r#type: kind.into(),
        body: body.into(),
    });
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {}", token.trim())
            .parse()
            .context("the token is not a header value")?,
    );
    let reply = client
        .do_action(request)
        .await
        .map_err(|s| anyhow::anyhow!("refused: {}", s.message()))?
        .into_inner()
        .message()
        .await
        .map_err(|s| anyhow::anyhow!("refused: {}", s.message()))?
        .ok_or_else(|| anyhow::anyhow!("the server sent no reply"))?;
    Ok(String::from_utf8_lossy(&reply.body).into_owned())
}

pub(crate) fn logout(
    cli: &Cli,
    dir: &DataDir,
    server: &str,
    ca_cert: Option<&Path>,
    what: SignOut<'_>,
) -> anyhow::Result<ExitCode> {
    use cohort_server::flight::{LOGOUT_ACTION, REVOKE_ACTION};
    let endpoint = endpoint(dir, server, ca_cert)?;
    let out = match what {
        SignOut::Token(token) => runtime()?.block_on(async {
            let channel = endpoint
                .connect()
                .await
                .with_context(|| format!("cannot reach {server}"))?;
            action(channel, token, LOGOUT_ACTION, Vec::new()).await?;
            anyhow::Ok(LoggedOut {
                account: None,
                tokens: 1,
            })
        })?,
        SignOut::Account { name, totp } => {
            let target = {
                let conn = dir.connect()?;
                accounts::address_of(&conn, name)?
                    .with_context(|| format!("no account `{name}` (`cohort account list`)"))?
            };
            let ended = as_actor(cli, dir, &endpoint, server, totp, async |channel, token| {
                action(channel, token, REVOKE_ACTION, target.into_bytes()).await
            })?;
            LoggedOut {
                account: Some(name.to_string()),
                tokens: ended.trim().parse().unwrap_or_default(),
            }
        }
    };
    emit(cli, &out, || match &out.account {
        None => "signed out: the token no longer works".into(),
        Some(name) => format!("ended {} sign-in(s) of {name}", out.tokens),
    });
    Ok(ExitCode::SUCCESS)
}

/// `cohort account grant/revoke --server`: the `--as` administrator signs
/// in, the server sends the change (it owns the chain), the sign-in ends.
#[allow(clippy::too_many_arguments)]
pub(crate) fn change_role(
    cli: &Cli,
    dir: &DataDir,
    server: &str,
    ca_cert: Option<&Path>,
    totp: Option<&str>,
    name: &str,
    role: cohort_ledger_bridge::Role,
    grant: bool,
) -> anyhow::Result<cohort_engine::access::roles::RoleChanged> {
    use cohort_server::api::pb;
    let endpoint = endpoint(dir, server, ca_cert)?;
    let c = as_actor(cli, dir, &endpoint, server, totp, async |channel, token| {
        let mut request = tonic::Request::new(pb::RoleChange {
            account: name.to_string(),
            role: role.name().to_string(),
        });
        request.metadata_mut().insert(
            "authorization",
            format!("Bearer {token}")
                .parse()
                .context("the token is not a header value")?,
        );
        let mut client = pb::roles_client::RolesClient::new(channel);
        let changed = if grant {
            client.grant(request).await
        } else {
            client.revoke(request).await
        };
        Ok(changed
            .map_err(|s| anyhow::anyhow!("refused: {}", s.message()))?
            .into_inner())
    })?;
    Ok(cohort_engine::access::roles::RoleChanged {
        name: c.account,
        address: c.address,
        role: c.role,
        granted: c.granted,
        tx_hash: c.tx_hash,
    })
}

/// Signs in to `server` as the `--as` account (with its TOTP code: `totp`,
/// else `$COHORT_TOTP`, which the server asks of every account while its
/// `[auth] second_factor` is on; each code signs in once), runs
/// `call` with the channel and the token, and signs out whatever `call`
/// returned: an administrator's one-call sign-in never outlives the command.
pub(crate) fn as_actor<T>(
    cli: &Cli,
    dir: &DataDir,
    endpoint: &tonic::transport::Endpoint,
    server: &str,
    totp: Option<&str>,
    call: impl AsyncFnOnce(tonic::transport::Channel, &str) -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    use cohort_server::flight::LOGOUT_ACTION;
    let vault = unlock(cli, dir, None)?;
    let actor = accounts::get(vault.conn(), vault.keys(), &cli.actor)?;
    runtime()?.block_on(async {
        let channel = endpoint
            .connect()
            .await
            .with_context(|| format!("cannot reach {server}"))?;
        let from_env = std::env::var("COHORT_TOTP").ok();
        let totp = totp
            .or(from_env.as_deref())
            .filter(|c| !c.trim().is_empty());
        let token = cohort_server::sign_in::sign_in(channel.clone(), &actor, totp).await?;
        let outcome = call(channel.clone(), &token).await;
        let _ = action(channel, &token, LOGOUT_ACTION, Vec::new()).await;
        outcome
    })
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
    totp: Option<&str>,
) -> anyhow::Result<ExitCode> {
    let vault = unlock(cli, dir, None)?;
    let account = accounts::get(vault.conn(), vault.keys(), &cli.actor)?;
    let endpoint = endpoint(dir, server, ca_cert)?;
    let rt = runtime()?;
    let token = rt.block_on(async {
        let channel = endpoint
            .connect()
            .await
            .with_context(|| format!("cannot reach {server}"))?;
        anyhow::Ok(cohort_server::sign_in::sign_in(channel, &account, totp).await?)
    })?;
    let out = LoggedIn {
        account: account.name().to_string(),
        address: format!("{:#x}", account.address()),
        token,
    };
    emit(cli, &out, || out.token.clone());
    Ok(ExitCode::SUCCESS)
}
