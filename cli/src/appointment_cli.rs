//! `cohort appointment` and `cohort insurance`: providers publish hours,
//! fees and a policy; patients find slots, see what they will pay and
//! book; providers confirm, decline, complete and mark no-shows; either
//! side cancels; insurers verify coverage. Each command acts as the `--as`
//! account on the data directory, or over a running `cohort serve` with
//! `--server` (the server owns the chain while it runs). Both paths answer
//! in the API's messages, printed the same way.

use std::process::ExitCode;

use anyhow::Context;
use clap::Subcommand;
use cohort_engine::DataDir;
use cohort_engine::access::Actor;
use cohort_engine::appointments::desk::{self, BookRequest, when};
use cohort_engine::appointments::terms::parse_time;
use cohort_engine::appointments::{insurance, mirror, reminders};
use cohort_engine::records::vault::Vault;
use cohort_engine::research::study::{format_wei, parse_wei};
use cohort_ledger_bridge::Client;
use cohort_server::api::pb;
use cohort_server::appointments_api as api;

use crate::Cli;
use crate::cli_common::{emit, runtime, unlock};
use crate::clinical_cli::sync;
use crate::clinical_remote::Remote;
use crate::serve_cli::{as_actor, endpoint};

#[derive(Subcommand)]
pub(crate) enum AppointmentCmd {
    /// As a credentialed provider (`--as`): publish weekly hours, visit-type
    /// fees, the policy (deposit, refund tiers, confirmation window, no-show
    /// grace and threshold) and closed days; each part given is one
    /// transaction.
    Availability {
        /// Weekly hours, local time: `mon-fri=09:00-17:00,sat=09:00-12:00`.
        #[arg(long)]
        hours: Option<String>,
        /// Slot length, with --hours.
        #[arg(long, default_value = "30m")]
        slot: String,
        /// Local time's offset from UTC, with --hours.
        #[arg(long, default_value = "+00:00", allow_hyphen_values = true)]
        utc_offset: String,
        /// A visit type and its fee: `checkup=0.05 ether` (repeatable; a fee of
        /// `0 ether` withdraws it).
        #[arg(long = "fee")]
        fees: Vec<String>,
        /// Deposit paid at booking, as a share of the patient's copay (`100%`).
        #[arg(long)]
        deposit: Option<String>,
        /// Refunds of a patient's cancellation by notice: `24h=100%,2h=50%`
        /// (later: none; a provider's cancellation always refunds in full).
        #[arg(long)]
        refunds: Option<String>,
        /// How long the provider has to confirm a booking (`24h`).
        #[arg(long)]
        confirm_within: Option<String>,
        /// How long after the start a no-show may be marked (`15m`).
        #[arg(long)]
        no_show_grace: Option<String>,
        /// No-shows from which a patient must pay --threshold-deposit at booking.
        #[arg(long)]
        no_show_threshold: Option<u32>,
        /// The deposit asked from patients at the threshold (`100%`).
        #[arg(long)]
        threshold_deposit: Option<String>,
        /// Close a day (YYYY-MM-DD, local; repeatable).
        #[arg(long)]
        close: Vec<String>,
        /// Open a closed day again (repeatable).
        #[arg(long)]
        reopen: Vec<String>,
    },
    /// A provider's published hours, fees and policy (default: every provider).
    Terms {
        /// The provider's account.
        provider: Option<String>,
    },
    /// The free slots of a provider.
    Slots {
        /// The provider's account.
        provider: String,
        /// From (`2026-12-07`, `2026-12-07 09:00` UTC, RFC 3339 or unix seconds); default now.
        #[arg(long)]
        from: Option<String>,
        /// For how many days.
        #[arg(long, default_value_t = 7)]
        days: u64,
        /// At most this many.
        #[arg(long, default_value_t = 20)]
        limit: usize,
    },
    /// What booking would cost `--as`: the fee, the insurer's share if a
    /// coverage applies, the copay and the deposit, said before booking.
    Quote {
        /// The provider's account.
        provider: String,
        /// The slot's start.
        #[arg(long)]
        at: String,
        /// The visit type.
        #[arg(long, default_value = "checkup")]
        visit: String,
    },
    /// As a patient (`--as`): book a slot and pay into escrow.
    Book {
        /// The provider's account.
        provider: String,
        /// The slot's start.
        #[arg(long)]
        at: String,
        /// The visit type.
        #[arg(long, default_value = "checkup")]
        visit: String,
        /// Why (sealed under your data key; only its hash goes on chain).
        #[arg(long)]
        reason: String,
        /// Pay this now (at least the deposit); default the whole copay.
        #[arg(long)]
        pay: Option<String>,
    },
    /// As the provider: confirm a booking by its deadline.
    Confirm {
        /// The appointment.
        id: u64,
    },
    /// As the provider: decline a booking (refunded in full).
    Decline {
        /// The appointment.
        id: u64,
    },
    /// As the patient or the provider: cancel before the start (refunds by
    /// the policy; in full when the provider cancels).
    Cancel {
        /// The appointment.
        id: u64,
    },
    /// As the provider: the visit took place (the provider is paid from escrow).
    Complete {
        /// The appointment.
        id: u64,
    },
    /// As the provider: the patient did not come (the deposit is forfeited,
    /// held during the dispute window).
    NoShow {
        /// The appointment.
        id: u64,
    },
    /// As the patient: dispute a no-show within the window.
    Dispute {
        /// The appointment.
        id: u64,
    },
    /// As an admin: decide a disputed no-show.
    Resolve {
        /// The appointment.
        id: u64,
        /// The no-show stands (the deposit goes to the provider).
        #[arg(
            long,
            conflicts_with = "overturn",
            required_unless_present = "overturn"
        )]
        stands: bool,
        /// The no-show is struck out (the deposit goes back).
        #[arg(long)]
        overturn: bool,
    },
    /// As the patient: pay more of the copay.
    Pay {
        /// The appointment.
        id: u64,
        /// How much (`0.01 ether`).
        #[arg(long)]
        amount: String,
    },
    /// The appointments of `--as` (as patient, provider or insurer), by start.
    List {
        /// Only these statuses (repeatable).
        #[arg(long = "status")]
        statuses: Vec<String>,
        /// Every appointment (admins and auditors).
        #[arg(long)]
        all: bool,
    },
    /// The reason of an appointment, for its patient or provider (audited).
    Reason {
        /// The appointment.
        id: u64,
    },
    /// What `cohort serve`'s scheduler does, once, at the chain's time: the
    /// reminders due, refunds of bookings unconfirmed past their deadline,
    /// forfeits past the dispute window (as the engine account).
    Remind,
}

#[derive(Subcommand)]
pub(crate) enum InsuranceCmd {
    /// As an insurer (`--as`, holding the insurer role): verify a patient's
    /// coverage of a visit type with a provider.
    Verify {
        /// The patient's account.
        patient: String,
        /// The provider's account.
        #[arg(long)]
        provider: String,
        /// The visit type.
        #[arg(long, default_value = "checkup")]
        visit: String,
        /// The insurer's share of the fee (`80%`).
        #[arg(long)]
        share: String,
        /// For how many days.
        #[arg(long, default_value_t = 365)]
        days: u32,
        /// The policy number (only its hash goes on chain).
        #[arg(long)]
        policy: String,
    },
    /// As an insurer: add funds its shares are paid from.
    Fund {
        /// How much (`1 ether`).
        amount: String,
    },
    /// The coverages of (or verified by) `--as`, and an insurer's free funds.
    Show,
}

/// A step's name for the API.
fn step_name(cmd: &AppointmentCmd) -> Option<(u64, &'static str)> {
    Some(match cmd {
        AppointmentCmd::Confirm { id } => (*id, "confirm"),
        AppointmentCmd::Decline { id } => (*id, "decline"),
        AppointmentCmd::Cancel { id } => (*id, "cancel"),
        AppointmentCmd::Complete { id } => (*id, "complete"),
        AppointmentCmd::NoShow { id } => (*id, "no-show"),
        AppointmentCmd::Dispute { id } => (*id, "dispute"),
        _ => return None,
    })
}

/// Where a command runs: the data directory (as the authenticated `--as`),
/// or a server.
// One per command, so its size costs nothing; the local variant went past
// clippy's limit with the per-grantee keys branch's dependency changes.
#[allow(clippy::large_enum_variant)]
enum Desk {
    Local {
        vault: Vault,
        actor: Actor,
        client: Client,
        dir: DataDir,
        rt: tokio::runtime::Runtime,
    },
    Remote {
        server: String,
        ca: Option<std::path::PathBuf>,
    },
}

fn desk(cli: &Cli, dir: &DataDir, remote: &Remote) -> anyhow::Result<Desk> {
    if let Some(server) = &remote.server {
        return Ok(Desk::Remote {
            server: server.clone(),
            ca: remote.ca_cert.clone(),
        });
    }
    let vault = unlock(cli, dir, None)?;
    let actor = Actor::authenticate(vault.conn(), vault.keys(), &cli.actor)?;
    let rt = runtime()?;
    let (_, client) = rt.block_on(cohort_engine::chain::client(dir))?;
    Ok(Desk::Local {
        vault,
        actor,
        client,
        dir: dir.clone(),
        rt,
    })
}

/// Bad input, refused before any transaction: on the data directory the
/// refusal is audited as the account's (a server audits its own).
fn bad_input(d: &Desk, action: &str, e: cohort_engine::Error) -> anyhow::Error {
    match d {
        Desk::Local { vault, actor, .. } => {
            let target = format!("{:#x}", actor.address());
            desk::refuse(vault.conn(), actor, action, &target, e).into()
        }
        Desk::Remote { .. } => e.into(),
    }
}

type Channel = tonic::transport::Channel;

/// Runs `call` with the server's appointment and insurance clients, signed
/// in as `--as`.
fn remote<T>(
    cli: &Cli,
    dir: &DataDir,
    server: &str,
    ca: Option<&std::path::Path>,
    call: impl AsyncFnOnce(
        &mut pb::appointments_client::AppointmentsClient<Channel>,
        &mut pb::insurance_client::InsuranceClient<Channel>,
        &str,
    ) -> Result<T, tonic::Status>,
) -> anyhow::Result<T> {
    let endpoint = endpoint(dir, server, ca)?;
    as_actor(cli, dir, &endpoint, server, None, async |channel, token| {
        let mut a = pb::appointments_client::AppointmentsClient::new(channel.clone());
        let mut i = pb::insurance_client::InsuranceClient::new(channel);
        call(&mut a, &mut i, token)
            .await
            .map_err(|s| anyhow::anyhow!("{}", s.message()))
    })
}

fn status_err(s: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{}", s.message())
}

fn terms_text(t: &pb::ProviderTerms) -> String {
    let mut lines = vec![format!("provider  {}", t.provider)];
    lines.push(format!(
        "hours     {}",
        if t.hours.is_empty() {
            "not published"
        } else {
            &t.hours
        }
    ));
    for f in &t.fees {
        lines.push(format!(
            "visit     {}: {}",
            f.visit_type,
            format_wei(f.fee.parse().unwrap_or_default())
        ));
    }
    lines.push(format!(
        "policy    {}",
        if t.policy.is_empty() {
            "not published"
        } else {
            &t.policy
        }
    ));
    if !t.closed_days.is_empty() {
        lines.push(format!("closed    {}", t.closed_days.join(", ")));
    }
    lines.join("\n")
}

/// `as a patient: paid ..., ...; as a provider: received ...`.
fn money_text(m: &pb::MoneySummary) -> String {
    let w = |text: &str| format_wei(text.parse().unwrap_or_default());
    format!(
        "as a patient: paid {}, held {}, refunded {}, owed {}, {} no-show(s); as a provider: received {}; as an insurer: paid {}",
        w(&m.paid),
        w(&m.held),
        w(&m.refunded),
        w(&m.owed),
        m.no_shows,
        w(&m.received),
        w(&m.insurer_paid)
    )
}

fn items_text(list: &pb::PublishedList) -> String {
    list.items
        .iter()
        .map(|i| format!("{} (tx {})", i.what, i.tx_hash))
        .collect::<Vec<_>>()
        .join("\n")
}

#[allow(clippy::too_many_lines)]
pub(crate) fn appointment(
    cli: &Cli,
    dir: &DataDir,
    remote_args: &Remote,
    cmd: &AppointmentCmd,
) -> anyhow::Result<ExitCode> {
    let d = desk(cli, dir, remote_args)?;
    if let Some((id, step)) = step_name(cmd) {
        let s = match &d {
            Desk::Local {
                vault,
                actor,
                client,
                rt,
                ..
            } => {
                let step = api::step(step).map_err(status_err)?;
                api::settlement(rt.block_on(desk::act(vault.conn(), client, actor, id, step))?)
            }
            Desk::Remote { server, ca } => {
                remote(cli, dir, server, ca.as_deref(), async |a, _, token| {
                    let r = pb::AppointmentStep {
                        id,
                        step: step.into(),
                    };
                    Ok(a.act(bearer(token, r)?).await?.into_inner())
                })?
            }
        };
        emit(cli, &s, || s.says.clone());
        return Ok(ExitCode::SUCCESS);
    }
    match cmd {
        AppointmentCmd::Availability {
            hours,
            slot,
            utc_offset,
            fees,
            deposit,
            refunds,
            confirm_within,
            no_show_grace,
            no_show_threshold,
            threshold_deposit,
            close,
            reopen,
        } => {
            let request = pb::PublishAvailabilityRequest {
                hours: hours.clone().unwrap_or_default(),
                slot: slot.clone(),
                utc_offset: utc_offset.clone(),
                fees: fees.clone(),
                deposit: deposit.clone().unwrap_or_default(),
                refunds: refunds.clone().unwrap_or_default(),
                confirm_within: confirm_within.clone().unwrap_or_default(),
                no_show_grace: no_show_grace.clone().unwrap_or_default(),
                no_show_threshold: no_show_threshold.unwrap_or(0),
                threshold_deposit: threshold_deposit.clone().unwrap_or_default(),
                close: close.clone(),
                reopen: reopen.clone(),
            };
            let publication =
                api::publication(&request).map_err(|e| bad_input(&d, "appointment.publish", e))?;
            let done = match &d {
                Desk::Local {
                    vault,
                    actor,
                    client,
                    rt,
                    ..
                } => api::published(rt.block_on(desk::publish(
                    vault.conn(),
                    client,
                    actor,
                    &publication,
                ))?),
                Desk::Remote { server, ca } => {
                    remote(cli, dir, server, ca.as_deref(), async |a, _, token| {
                        Ok(a.publish(bearer(token, request)?).await?.into_inner())
                    })?
                }
            };
            emit(cli, &done, || items_text(&done));
        }
        AppointmentCmd::Terms { provider } => {
            let list = match &d {
                Desk::Local {
                    vault,
                    client: _,
                    dir,
                    rt,
                    ..
                } => {
                    sync(dir, rt)?;
                    let conn = vault.conn();
                    let addresses = match provider {
                        Some(p) => vec![desk::address_of(conn, p, "the provider")?],
                        None => mirror::providers(conn)?,
                    };
                    addresses
                        .into_iter()
                        .map(|a| mirror::terms(conn, a).map(api::terms))
                        .collect::<Result<Vec<_>, _>>()?
                }
                Desk::Remote { server, ca } => {
                    remote(cli, dir, server, ca.as_deref(), async |a, _, token| {
                        Ok(match provider {
                            Some(p) => vec![
                                a.terms(bearer(
                                    token,
                                    pb::ProviderRef {
                                        provider: p.clone(),
                                    },
                                )?)
                                .await?
                                .into_inner(),
                            ],
                            None => {
                                a.providers(bearer(token, pb::ProvidersRequest {})?)
                                    .await?
                                    .into_inner()
                                    .providers
                            }
                        })
                    })?
                }
            };
            emit(cli, &list, || {
                if list.is_empty() {
                    return "no provider has published hours".into();
                }
                list.iter().map(terms_text).collect::<Vec<_>>().join("\n\n")
            });
        }
        AppointmentCmd::Slots {
            provider,
            from,
            days,
            limit,
        } => {
            let from = from
                .as_deref()
                .map(|f| parse_time("--from", f))
                .transpose()?;
            let span = days.saturating_mul(86_400);
            let starts = match &d {
                Desk::Local {
                    vault,
                    client,
                    dir,
                    rt,
                    ..
                } => {
                    sync(dir, rt)?;
                    let now = rt.block_on(client.ledger().now())?;
                    let from = from.unwrap_or(now);
                    let address = desk::address_of(vault.conn(), provider, "the provider")?;
                    mirror::slots(vault.conn(), address, now, from, from + span)?
                }
                Desk::Remote { server, ca } => {
                    remote(cli, dir, server, ca.as_deref(), async |a, _, token| {
                        let r = pb::SlotsRequest {
                            provider: provider.clone(),
                            from: from.unwrap_or(0),
                            to: from.map_or(0, |f| f + span),
                        };
                        Ok(a.slots(bearer(token, r)?).await?.into_inner().starts)
                    })?
                }
            };
            let shown: Vec<u64> = starts.iter().copied().take(*limit).collect();
            let report =
                serde_json::json!({ "provider": provider, "free": starts.len(), "starts": shown });
            emit(cli, &report, || {
                if starts.is_empty() {
                    return format!("{provider} has no free slot in that range");
                }
                let mut lines: Vec<String> = shown.iter().map(|s| when(*s)).collect();
                lines.push(format!(
                    "({} free slot(s); {} shown)",
                    starts.len(),
                    shown.len()
                ));
                lines.join("\n")
            });
        }
        AppointmentCmd::Quote {
            provider,
            at,
            visit,
        } => {
            let start = parse_time("--at", at)?;
            let q = match &d {
                Desk::Local {
                    vault,
                    actor,
                    client,
                    rt,
                    ..
                } => api::quote(rt.block_on(desk::quote(
                    vault.conn(),
                    client,
                    actor.address(),
                    provider,
                    visit,
                    start,
                ))?),
                Desk::Remote { server, ca } => {
                    remote(cli, dir, server, ca.as_deref(), async |a, _, token| {
                        let r = pb::QuoteRequest {
                            provider: provider.clone(),
                            visit_type: visit.clone(),
                            start,
                        };
                        Ok(a.quote(bearer(token, r)?).await?.into_inner())
                    })?
                }
            };
            emit(cli, &q, || q.says.clone());
        }
        AppointmentCmd::Book {
            provider,
            at,
            visit,
            reason,
            pay,
        } => {
            let start = parse_time("--at", at).map_err(|e| bad_input(&d, "appointment.book", e))?;
            let b = match &d {
                Desk::Local {
                    vault,
                    actor,
                    client,
                    rt,
                    ..
                } => {
                    let pay = pay
                        .as_deref()
                        .map(|p| parse_wei("--pay", p))
                        .transpose()
                        .map_err(|e| bad_input(&d, "appointment.book", e))?;
                    let req = BookRequest {
                        provider: provider.clone(),
                        start,
                        visit_type: visit.clone(),
                        reason: reason.clone(),
                        pay,
                    };
                    let b = rt.block_on(desk::book(vault, client, actor, &req))?;
                    pb::Booking {
                        id: b.id,
                        quote: Some(api::quote(b.quote)),
                        paid: b.paid,
                        tx_hash: b.tx_hash,
                    }
                }
                Desk::Remote { server, ca } => {
                    remote(cli, dir, server, ca.as_deref(), async |a, _, token| {
                        let r = pb::BookAppointmentRequest {
                            provider: provider.clone(),
                            start,
                            visit_type: visit.clone(),
                            reason: reason.clone(),
                            pay: pay.clone().unwrap_or_default(),
                        };
                        Ok(a.book(bearer(token, r)?).await?.into_inner())
                    })?
                }
            };
            emit(cli, &b, || {
                format!(
                    "booked appointment {} with {provider} at {} ({visit}); paid {} into escrow; {}",
                    b.id,
                    when(start),
                    format_wei(b.paid.parse().unwrap_or_default()),
                    b.quote.as_ref().map(|q| q.says.clone()).unwrap_or_default()
                )
            });
        }
        AppointmentCmd::Resolve { id, stands, .. } => {
            let s = match &d {
                Desk::Local {
                    vault,
                    actor,
                    client,
                    rt,
                    ..
                } => api::settlement(rt.block_on(desk::resolve(
                    vault.conn(),
                    client,
                    actor,
                    *id,
                    *stands,
                ))?),
                Desk::Remote { server, ca } => {
                    remote(cli, dir, server, ca.as_deref(), async |a, _, token| {
                        let r = pb::ResolveRequest {
                            id: *id,
                            no_show_stands: *stands,
                        };
                        Ok(a.resolve(bearer(token, r)?).await?.into_inner())
                    })?
                }
            };
            emit(cli, &s, || s.says.clone());
        }
        AppointmentCmd::Pay { id, amount } => {
            let wei =
                parse_wei("--amount", amount).map_err(|e| bad_input(&d, "appointment.pay", e))?;
            let s = match &d {
                Desk::Local {
                    vault,
                    actor,
                    client,
                    rt,
                    ..
                } => api::settlement(rt.block_on(desk::pay(
                    vault.conn(),
                    client,
                    actor,
                    *id,
                    wei,
                ))?),
                Desk::Remote { server, ca } => {
                    remote(cli, dir, server, ca.as_deref(), async |a, _, token| {
                        let r = pb::PayRequest {
                            id: *id,
                            amount: amount.clone(),
                        };
                        Ok(a.pay(bearer(token, r)?).await?.into_inner())
                    })?
                }
            };
            emit(cli, &s, || {
                format!(
                    "paid {} towards appointment {id}; {}",
                    format_wei(wei),
                    s.says
                )
            });
        }
        AppointmentCmd::List { statuses, all } => {
            let list = match &d {
                Desk::Local {
                    vault,
                    actor,
                    client,
                    dir,
                    rt,
                } => {
                    if *all {
                        let me = actor.address();
                        let allowed = rt
                            .block_on(client.has_role(cohort_ledger_bridge::Role::Admin, me))?
                            || rt.block_on(
                                client.has_role(cohort_ledger_bridge::Role::Auditor, me),
                            )?;
                        if !allowed {
                            anyhow::bail!(
                                "`{}` may list only its own appointments (--all: admins and auditors)",
                                actor.name()
                            );
                        }
                    }
                    sync(dir, rt)?;
                    let filter = mirror::Filter {
                        statuses: statuses.clone(),
                        ..mirror::Filter::default()
                    };
                    pb::AppointmentList {
                        appointments: mirror::list(vault.conn(), actor.address(), *all, &filter)?
                            .into_iter()
                            .map(api::entry)
                            .collect(),
                        money: Some(api::money(vault.conn(), actor.address())?),
                    }
                }
                Desk::Remote { server, ca } => {
                    remote(cli, dir, server, ca.as_deref(), async |a, _, token| {
                        let r = pb::ListAppointmentsRequest {
                            statuses: statuses.clone(),
                            from: 0,
                            to: 0,
                            everyone: *all,
                        };
                        Ok(a.list(bearer(token, r)?).await?.into_inner())
                    })?
                }
            };
            emit(cli, &list, || {
                let mut lines: Vec<String> =
                    list.appointments.iter().map(|a| a.says.clone()).collect();
                if lines.is_empty() {
                    lines.push("no appointments".into());
                }
                if let Some(m) = &list.money {
                    lines.push(money_text(m));
                }
                lines.join("\n")
            });
        }
        AppointmentCmd::Reason { id } => {
            let reason = match &d {
                Desk::Local {
                    vault,
                    actor,
                    client,
                    rt,
                    ..
                } => rt.block_on(desk::reason(vault, client, actor, *id))?,
                Desk::Remote { server, ca } => {
                    remote(cli, dir, server, ca.as_deref(), async |a, _, token| {
                        Ok(a.reason(bearer(token, pb::AppointmentRef { id: *id })?)
                            .await?
                            .into_inner()
                            .reason)
                    })?
                }
            };
            let report = serde_json::json!({ "id": id, "reason": reason });
            emit(cli, &report, || reason.clone());
        }
        AppointmentCmd::Remind => {
            let Desk::Local {
                client,
                dir,
                rt,
                vault,
                ..
            } = &d
            else {
                anyhow::bail!(
                    "`appointment remind` runs on the data directory (a running server's scheduler does this on its own)"
                );
            };
            sync(dir, rt)?;
            let now = rt.block_on(client.ledger().now())?;
            let config = cohort_engine::chain::load(dir)?
                .context("no ledger is deployed in this data directory")?;
            let engine = Actor::authenticate(vault.conn(), vault.keys(), &config.engine)?;
            let tick = rt.block_on(reminders::round(&mut dir.connect()?, client, &engine, now))?;
            emit(cli, &tick, || {
                format!(
                    "at {}: {} reminder(s) sent, {} skipped; {} unconfirmed booking(s) refunded; {} forfeit(s) paid out; {} refused",
                    when(now),
                    tick.reminded,
                    tick.skipped,
                    tick.expired,
                    tick.released,
                    tick.failed
                )
            });
        }
        _ => unreachable!("the steps are handled above"),
    }
    Ok(ExitCode::SUCCESS)
}

/// `message` with the bearer token, as a gRPC status on failure.
fn bearer<T>(token: &str, message: T) -> Result<tonic::Request<T>, tonic::Status> {
    crate::clinical_remote::authed(token, message)
        .map_err(|e| tonic::Status::internal(e.to_string()))
}

pub(crate) fn insurance_cmd(
    cli: &Cli,
    dir: &DataDir,
    remote_args: &Remote,
    cmd: &InsuranceCmd,
) -> anyhow::Result<ExitCode> {
    let d = desk(cli, dir, remote_args)?;
    match cmd {
        InsuranceCmd::Verify {
            patient,
            provider,
            visit,
            share,
            days,
            policy,
        } => {
            let share_bps =
                cohort_engine::appointments::terms::Policy::parse_percent("--share", share)?;
            if *days == 0 {
                anyhow::bail!("--days: a coverage lasts at least one day");
            }
            let done = match &d {
                Desk::Local {
                    vault,
                    actor,
                    client,
                    rt,
                    ..
                } => {
                    let now = rt.block_on(client.ledger().now())?;
                    let c = insurance::Coverage {
                        patient: patient.clone(),
                        provider: provider.clone(),
                        visit_type: visit.clone(),
                        share_bps,
                        expires_at: now + u64::from(*days) * 86_400,
                        policy: policy.clone(),
                    };
                    api::published(vec![rt.block_on(insurance::verify(
                        vault.conn(),
                        client,
                        actor,
                        &c,
                    ))?])
                }
                Desk::Remote { server, ca } => {
                    remote(cli, dir, server, ca.as_deref(), async |_, i, token| {
                        let r = pb::VerifyCoverageRequest {
                            patient: patient.clone(),
                            provider: provider.clone(),
                            visit_type: visit.clone(),
                            share: share.clone(),
                            days: *days,
                            policy: policy.clone(),
                        };
                        Ok(i.verify(bearer(token, r)?).await?.into_inner())
                    })?
                }
            };
            emit(cli, &done, || {
                format!(
                    "verified: {patient}'s {visit} visits with {provider} covered {share} for {days} day(s) ({})",
                    items_text(&done)
                )
            });
        }
        InsuranceCmd::Fund { amount } => {
            let wei = parse_wei("amount", amount)?;
            let done = match &d {
                Desk::Local {
                    vault,
                    actor,
                    client,
                    rt,
                    ..
                } => api::published(vec![rt.block_on(insurance::fund(
                    vault.conn(),
                    client,
                    actor,
                    wei,
                ))?]),
                Desk::Remote { server, ca } => {
                    remote(cli, dir, server, ca.as_deref(), async |_, i, token| {
                        let r = pb::FundCoverageRequest {
                            amount: amount.clone(),
                        };
                        Ok(i.fund(bearer(token, r)?).await?.into_inner())
                    })?
                }
            };
            emit(cli, &done, || {
                format!("funded {} ({})", format_wei(wei), items_text(&done))
            });
        }
        InsuranceCmd::Show => {
            let list = match &d {
                Desk::Local {
                    actor,
                    client,
                    dir,
                    rt,
                    vault,
                } => {
                    sync(dir, rt)?;
                    let now = rt.block_on(client.ledger().now())?;
                    pb::CoverageList {
                        coverages: insurance::show(vault.conn(), actor.address(), now)?
                            .into_iter()
                            .map(api::coverage)
                            .collect(),
                        funds: rt.block_on(insurance::funds(client, actor.address()))?,
                    }
                }
                Desk::Remote { server, ca } => {
                    remote(cli, dir, server, ca.as_deref(), async |_, i, token| {
                        Ok(i.show(bearer(token, pb::ShowCoverageRequest {})?)
                            .await?
                            .into_inner())
                    })?
                }
            };
            emit(cli, &list, || {
                let mut lines: Vec<String> = list
                    .coverages
                    .iter()
                    .map(|c| {
                        format!(
                            "{}'s {} visits with {}: {}% by {} until {}{}",
                            c.patient,
                            c.visit_type,
                            c.provider,
                            f64::from(c.share_bps) / 100.0,
                            c.insurer,
                            when(c.expires_at),
                            if c.active { "" } else { " (not in force)" }
                        )
                    })
                    .collect();
                if lines.is_empty() {
                    lines.push("no coverage".into());
                }
                lines.push(format!("free funds as an insurer: {}", list.funds));
                lines.join("\n")
            });
        }
    }
    Ok(ExitCode::SUCCESS)
}
