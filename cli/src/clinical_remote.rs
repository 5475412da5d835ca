//! The clinical commands against a running `cohort serve` (`--server`):
//! the `--as` account signs in with its key, the call runs as it over the
//! gRPC `Clinical` service (the server owns the chain, so this is how the
//! CLI reads and grants while a server runs), and the sign-in ends with
//! the command.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use cohort_engine::DataDir;
use cohort_server::api::pb;

use crate::Cli;
use crate::cli_common::emit;
use crate::clinical_cli::{AccessCmd, EmergencyCmd, NotificationsCmd, RecordsCmd, grant_line};
use crate::serve_cli::{as_actor, endpoint};

/// `--server` and the certificate to trust, for the clinical commands.
#[derive(clap::Args, Clone, Default)]
pub(crate) struct Remote {
    /// Run the command over a `cohort serve` at this URL (as `--as`,
    /// signed in with its key) instead of on the data directory.
    #[arg(long, global = true)]
    pub(crate) server: Option<String>,
    /// The certificate (PEM) to trust for an https server.
    #[arg(long, global = true, env = "COHORT_CA_CERT")]
    pub(crate) ca_cert: Option<std::path::PathBuf>,
}

/// `message` carrying the sign-in's bearer token.
pub(crate) fn authed<T>(token: &str, message: T) -> anyhow::Result<tonic::Request<T>> {
    let mut r = tonic::Request::new(message);
    r.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}")
            .parse()
            .context("the token is not a header value")?,
    );
    Ok(r)
}

fn refused(s: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{}", s.message())
}

/// Runs `call` on the server's `Clinical` service as the `--as` account.
fn clinical<T>(
    cli: &Cli,
    dir: &DataDir,
    server: &str,
    ca_cert: Option<&Path>,
    call: impl AsyncFnOnce(
        &mut pb::clinical_client::ClinicalClient<tonic::transport::Channel>,
        &str,
    ) -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    let endpoint = endpoint(dir, server, ca_cert)?;
    as_actor(cli, dir, &endpoint, server, None, async |channel, token| {
        let mut client = pb::clinical_client::ClinicalClient::new(channel);
        call(&mut client, token).await
    })
}

fn record_json(r: &pb::ClinicalRecord) -> serde_json::Value {
    let version = r.version.as_ref();
    serde_json::json!({
        "version": {
            "record_id": version.map(|v| v.record_id.clone()),
            "version": version.map(|v| v.version),
            "cid": version.map(|v| v.cid.clone()),
        },
        "emergency": r.emergency,
        "resource": serde_json::from_str::<serde_json::Value>(&r.resource_json).unwrap_or_default(),
    })
}

fn record_text(r: &pb::ClinicalRecord) -> String {
    let v = r.version.clone().unwrap_or_default();
    let pretty = serde_json::from_str::<serde_json::Value>(&r.resource_json)
        .and_then(|j| serde_json::to_string_pretty(&j))
        .unwrap_or_else(|_| r.resource_json.clone());
    format!(
        "{} version {} ({}){}\n{pretty}",
        v.record_id,
        v.version,
        v.cid,
        if r.emergency {
            " [emergency access]"
        } else {
            ""
        }
    )
}

fn unsupported(what: &str) -> anyhow::Error {
    anyhow::anyhow!(
        "`{what}` runs on the data directory, not over --server (drop --server, or stop the server)"
    )
}

pub(crate) fn records(
    cli: &Cli,
    dir: &DataDir,
    remote: &Remote,
    cmd: &RecordsCmd,
) -> anyhow::Result<ExitCode> {
    let server = remote.server.as_deref().expect("--server");
    let ca = remote.ca_cert.as_deref();
    match cmd {
        RecordsCmd::Show {
            record,
            version,
            purpose,
        } => {
            let r = clinical(cli, dir, server, ca, async |c, token| {
                let request = pb::ReadRecordRequest {
                    record_id: record.clone(),
                    version: *version,
                    purpose: purpose.clone(),
                };
                Ok(c.read_record(authed(token, request)?)
                    .await
                    .map_err(refused)?
                    .into_inner())
            })?;
            emit(cli, &record_json(&r), || record_text(&r));
        }
        RecordsCmd::Search {
            patient,
            types,
            code,
            since,
            until,
            purpose,
        } => {
            let r = clinical(cli, dir, server, ca, async |c, token| {
                let request = pb::SearchRecordsRequest {
                    patient: patient.clone(),
                    types: types.clone(),
                    code: code.clone(),
                    since: since.clone(),
                    until: until.clone(),
                    purpose: purpose.clone(),
                };
                Ok(c.search_records(authed(token, request)?)
                    .await
                    .map_err(refused)?
                    .into_inner())
            })?;
            let items: Vec<_> = r.records.iter().map(record_json).collect();
            emit(cli, &items, || {
                let mut lines = vec![format!("{} records", r.records.len())];
                lines.extend(r.records.iter().map(record_text));
                lines.join("\n")
            });
        }
        RecordsCmd::Update { file, purpose } => {
            let text = std::fs::read_to_string(file)
                .with_context(|| format!("reading {}", file.display()))?;
            let u = clinical(cli, dir, server, ca, async |c, token| {
                let request = pb::UpdateRecordRequest {
                    resource_json: text.clone(),
                    purpose: purpose.clone(),
                };
                Ok(c.update_record(authed(token, request)?)
                    .await
                    .map_err(refused)?
                    .into_inner())
            })?;
            let v = u.version.clone().unwrap_or_default();
            let info = serde_json::json!({
                "record_id": v.record_id, "version": v.version, "cid": v.cid, "created": u.created,
            });
            emit(cli, &info, || {
                format!(
                    "{} {} version {} ({})",
                    if u.created { "created" } else { "updated" },
                    v.record_id,
                    v.version,
                    v.cid
                )
            });
        }
        RecordsCmd::List { .. } => return Err(unsupported("records list")),
        RecordsCmd::History { .. } => return Err(unsupported("records history")),
        RecordsCmd::Verify { .. } => return Err(unsupported("records verify")),
        RecordsCmd::Anchor => return Err(unsupported("records anchor")),
    }
    Ok(ExitCode::SUCCESS)
}

fn changed(cli: &Cli, c: &pb::AccessChanged) {
    let info = serde_json::json!({
        "action": c.action, "patient": c.patient, "account": c.account, "tx_hash": c.tx_hash,
    });
    emit(cli, &info, || {
        format!("{} {} (tx {})", c.action, c.account, c.tx_hash)
    });
}

pub(crate) fn access(
    cli: &Cli,
    dir: &DataDir,
    remote: &Remote,
    cmd: &AccessCmd,
) -> anyhow::Result<ExitCode> {
    let server = remote.server.as_deref().expect("--server");
    let ca = remote.ca_cert.as_deref();
    let split = |s: &str| -> Vec<String> {
        s.split(',')
            .map(|p| p.trim().to_string())
            .filter(|p| !p.is_empty())
            .collect()
    };
    match cmd {
        AccessCmd::Grant {
            provider,
            level,
            purposes,
            types,
            days,
            hours,
            on_behalf_of,
        } => {
            anyhow::ensure!(
                hours.is_none(),
                "over --server a grant lasts whole days (--days)"
            );
            let c = clinical(cli, dir, server, ca, async |c, token| {
                let request = pb::AccessGrantRequest {
                    provider: provider.clone(),
                    level: level.clone(),
                    purposes: split(purposes),
                    types: split(types),
                    days: u32::try_from(*days).context("--days is too large")?,
                    on_behalf_of: on_behalf_of.clone(),
                };
                Ok(c.grant(authed(token, request)?)
                    .await
                    .map_err(refused)?
                    .into_inner())
            })?;
            changed(cli, &c);
        }
        AccessCmd::Revoke {
            provider,
            on_behalf_of,
        } => {
            let c = clinical(cli, dir, server, ca, async |c, token| {
                let request = pb::AccessRevokeRequest {
                    provider: provider.clone(),
                    on_behalf_of: on_behalf_of.clone(),
                };
                Ok(c.revoke(authed(token, request)?)
                    .await
                    .map_err(refused)?
                    .into_inner())
            })?;
            changed(cli, &c);
        }
        AccessCmd::List { patient: None } => {
            let g = clinical(cli, dir, server, ca, async |c, token| {
                Ok(c.list_grants(authed(token, pb::ListGrantsRequest {})?)
                    .await
                    .map_err(refused)?
                    .into_inner())
            })?;
            let items: Vec<_> = g
                .grants
                .iter()
                .map(|x| {
                    serde_json::json!({
                        "provider": x.provider, "provider_name": x.provider_name, "level": x.level,
                        "purposes": x.purposes, "kinds": x.types, "expires_at": x.expires_at,
                        "active": x.active,
                    })
                })
                .collect();
            emit(cli, &items, || {
                g.grants
                    .iter()
                    .map(|x| {
                        grant_line(
                            x.provider_name.as_deref().unwrap_or(&x.provider),
                            &x.level,
                            &x.purposes,
                            &x.types,
                            x.expires_at,
                            x.active,
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("\n")
            });
        }
        AccessCmd::List { patient: Some(_) } => {
            return Err(anyhow::anyhow!(
                "over --server, `access list` shows the signed-in patient's own grants: drop --patient"
            ));
        }
        AccessCmd::Delegate { .. } | AccessCmd::Undelegate { .. } | AccessCmd::Log { .. } => {
            return Err(unsupported("this access command"));
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub(crate) fn emergency(
    cli: &Cli,
    dir: &DataDir,
    remote: &Remote,
    cmd: &EmergencyCmd,
) -> anyhow::Result<ExitCode> {
    let server = remote.server.as_deref().expect("--server");
    let ca = remote.ca_cert.as_deref();
    match cmd {
        EmergencyCmd::Trigger { patient, reason } => {
            let o = clinical(cli, dir, server, ca, async |c, token| {
                let request = pb::TriggerEmergencyRequest {
                    patient: patient.clone(),
                    reason: reason.clone(),
                };
                Ok(c.trigger_emergency(authed(token, request)?)
                    .await
                    .map_err(refused)?
                    .into_inner())
            })?;
            let info = serde_json::json!({
                "id": o.id, "patient": o.patient, "expires_at": o.expires_at,
                "notified": o.notified, "tx_hash": o.tx_hash,
            });
            emit(cli, &info, || {
                format!(
                    "emergency {} opened on {} until {}; notified {} account(s)",
                    o.id,
                    o.patient,
                    o.expires_at,
                    o.notified.len()
                )
            });
        }
        EmergencyCmd::End { id } => {
            let c = clinical(cli, dir, server, ca, async |c, token| {
                Ok(
                    c.end_emergency(authed(token, pb::EmergencyRef { id: *id })?)
                        .await
                        .map_err(refused)?
                        .into_inner(),
                )
            })?;
            changed(cli, &c);
        }
        _ => return Err(unsupported("this emergency command")),
    }
    Ok(ExitCode::SUCCESS)
}

pub(crate) fn notifications(
    cli: &Cli,
    dir: &DataDir,
    remote: &Remote,
    cmd: &NotificationsCmd,
) -> anyhow::Result<ExitCode> {
    let server = remote.server.as_deref().expect("--server");
    let ca = remote.ca_cert.as_deref();
    if let NotificationsCmd::Watch { after, count } = cmd {
        return watch(cli, dir, server, ca, *after, *count);
    }
    let NotificationsCmd::List { unread, mark_read } = cmd else {
        return Err(unsupported("this notifications command"));
    };
    let list = clinical(cli, dir, server, ca, async |c, token| {
        let request = pb::NotificationsRequest {
            unread_only: *unread,
            limit: 100,
        };
        let list = c
            .notifications(authed(token, request)?)
            .await
            .map_err(refused)?
            .into_inner();
        if *mark_read && let Some(top) = list.notifications.first() {
            c.mark_notifications_read(authed(token, pb::MarkReadRequest { up_to: top.id })?)
                .await
                .map_err(refused)?;
        }
        Ok(list)
    })?;
    let items: Vec<_> = list
        .notifications
        .iter()
        .map(|n| {
            serde_json::json!({
                "id": n.id, "kind": n.kind, "created_at": n.created_at, "read_at": n.read_at,
                "body": serde_json::from_str::<serde_json::Value>(&n.body).unwrap_or_default(),
            })
        })
        .collect();
    emit(cli, &items, || {
        list.notifications
            .iter()
            .map(|n| format!("#{:<4} {} {:<18} {}", n.id, n.created_at, n.kind, n.body))
            .collect::<Vec<_>>()
            .join("\n")
    });
    Ok(ExitCode::SUCCESS)
}

/// `notifications watch`: the server's stream, printed as it arrives.
fn watch(
    cli: &Cli,
    dir: &DataDir,
    server: &str,
    ca: Option<&Path>,
    after: i64,
    count: Option<usize>,
) -> anyhow::Result<ExitCode> {
    clinical(cli, dir, server, ca, async |c, token| {
        let mut stream = c
            .watch_notifications(authed(token, pb::WatchNotificationsRequest { after })?)
            .await
            .map_err(refused)?
            .into_inner();
        let mut seen = 0;
        while count.is_none_or(|n| seen < n) {
            let Some(n) = stream.message().await.map_err(refused)? else {
                break;
            };
            seen += 1;
            let item = serde_json::json!({
                "id": n.id, "kind": n.kind, "created_at": n.created_at,
                "body": serde_json::from_str::<serde_json::Value>(&n.body).unwrap_or_default(),
            });
            emit(cli, &item, || {
                format!("#{:<4} {} {:<18} {}", n.id, n.created_at, n.kind, n.body)
            });
        }
        Ok(())
    })?;
    Ok(ExitCode::SUCCESS)
}
