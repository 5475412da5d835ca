//! `cohort records`, `cohort access`, `cohort credential`, `cohort
//! emergency` and `cohort notifications`: clinical records under the
//! chain's control. Every command acts as the `--as` account, whose key
//! signs its transactions; a name that is not an account is refused.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Subcommand;
use cohort_engine::DataDir;
use cohort_engine::access::scope::{self, Level, Purpose};
use cohort_engine::access::{Actor, emergency, grants, notifications, patients};
use cohort_engine::records::anchor;
use cohort_engine::records::clinical::{Clinic, Search};
use cohort_engine::records::vault::Vault;
use cohort_ledger_bridge::Client;

use crate::Cli;
use crate::cli_common::{emit, runtime, unlock};

#[derive(Subcommand)]
pub(crate) enum RecordsCmd {
    /// A patient's records (ids and versions; nothing decrypted), if the
    /// chain lets `--as` read them.
    List {
        /// The patient (id, or their account); default: `--as` itself.
        #[arg(long)]
        patient: Option<String>,
        /// Purpose of use: treatment, payment or operations.
        #[arg(long, default_value = "treatment")]
        purpose: String,
    },
    /// Decrypt and print a record, once the chain has allowed and traced the read.
    Show {
        /// `ResourceType/id`.
        record: String,
        /// A version other than the current one.
        #[arg(long)]
        version: Option<i64>,
        /// Purpose of use: treatment, payment or operations.
        #[arg(long, default_value = "treatment")]
        purpose: String,
    },
    /// A patient's records of some types, codes or dates (one on-chain trace for all).
    Search {
        /// The patient (id, or their account).
        #[arg(long)]
        patient: String,
        /// Only this resource type (repeatable).
        #[arg(long = "type")]
        types: Vec<String>,
        /// Only resources with this code (`system|code` or `code`).
        #[arg(long)]
        code: Option<String>,
        /// Only resources dated on or after this day (YYYY-MM-DD).
        #[arg(long)]
        since: Option<String>,
        /// Only resources dated on or before this day.
        #[arg(long)]
        until: Option<String>,
        /// Purpose of use.
        #[arg(long, default_value = "treatment")]
        purpose: String,
    },
    /// Every version of a record, oldest first (ids and blocks, nothing decrypted).
    History {
        /// `ResourceType/id`.
        record: String,
        /// Purpose of use.
        #[arg(long, default_value = "treatment")]
        purpose: String,
    },
    /// Store a FHIR resource (a file of JSON) as a new record or a new
    /// version: needs write access, and is anchored on chain by `--as`.
    Update {
        /// The resource's JSON file.
        file: PathBuf,
        /// Purpose of use.
        #[arg(long, default_value = "treatment")]
        purpose: String,
    },
    /// Check that a record version's bytes match the hash anchored on chain.
    Verify {
        /// `ResourceType/id`.
        record: String,
        /// A version other than the current one.
        #[arg(long)]
        version: Option<i64>,
    },
    /// Anchor every stored version still waiting, in one batch (as the
    /// custodian: the ledger's engine account). Ingest does this itself
    /// when a ledger is deployed.
    Anchor,
}

#[derive(Subcommand)]
pub(crate) enum AccessCmd {
    /// Grant a provider access to your records (`--as` the patient, or a
    /// delegate with `--for`).
    Grant {
        /// The provider's account.
        provider: String,
        /// summary (Patient, Condition, MedicationRequest), read (every type) or write.
        #[arg(long, default_value = "read")]
        level: String,
        /// Purposes of use, comma-separated: treatment, payment, operations.
        #[arg(long, default_value = "treatment")]
        purposes: String,
        /// Record types, comma-separated, or `all`.
        #[arg(long, default_value = "all")]
        types: String,
        /// For how many days (at most 366).
        #[arg(long, default_value_t = 30, conflicts_with = "hours")]
        days: u64,
        /// For how many hours instead.
        #[arg(long)]
        hours: Option<u64>,
        /// The patient a delegate acts for.
        #[arg(long = "for")]
        on_behalf_of: Option<String>,
    },
    /// Revoke a provider's grant; it takes effect on their next call.
    Revoke {
        /// The provider's account.
        provider: String,
        /// The patient a delegate acts for.
        #[arg(long = "for")]
        on_behalf_of: Option<String>,
    },
    /// Name a delegate (a caregiver) who may read and manage grants for you.
    Delegate {
        /// The delegate's account.
        delegate: String,
        /// The highest level they may read or grant.
        #[arg(long, default_value = "read")]
        level: String,
        /// For how many days.
        #[arg(long, default_value_t = 30)]
        days: u64,
    },
    /// End a delegation.
    Undelegate {
        /// The delegate's account.
        delegate: String,
    },
    /// A patient's grants (default: `--as` itself).
    List {
        /// The patient (id, or their account).
        #[arg(long)]
        patient: Option<String>,
    },
    /// Every read of a patient's records on chain: who, when, why, emergency or not.
    Log {
        /// The patient (id, or their account); default: `--as` itself.
        #[arg(long)]
        patient: Option<String>,
    },
}

#[derive(Subcommand)]
pub(crate) enum CredentialCmd {
    /// Attest a provider's licence (`--as` an issuer).
    Attest {
        /// The provider's account (it must hold the provider role).
        provider: String,
        /// The licence (only its hash goes on chain).
        #[arg(long)]
        license: String,
        /// Valid for how many days.
        #[arg(long, default_value_t = 365)]
        days: u64,
        /// Where the provider practises (`DE`, `US-CA`), attested on chain
        /// with the credential; without it they read as of the geography
        /// policy's `default`.
        #[arg(long)]
        jurisdiction: Option<String>,
    },
    /// Revoke a provider's credential (the issuer who attested it, or an admin).
    Revoke {
        /// The provider's account.
        provider: String,
    },
}

#[derive(Subcommand)]
pub(crate) enum EmergencyCmd {
    /// Open emergency read access to a patient (`--as` a credentialed
    /// provider with the emergency role); the patient and their delegates
    /// are notified, and it waits for review.
    Trigger {
        /// The patient (id, or their account).
        patient: String,
        /// Why (kept for the patient and the reviewers; its hash goes on chain).
        #[arg(long)]
        reason: String,
    },
    /// Review an override (`--as` an auditor): justified or not; an
    /// unjustified one suspends the provider's overrides.
    Review {
        /// The override's id.
        id: u64,
        /// It was justified.
        #[arg(
            long,
            conflicts_with = "unjustified",
            required_unless_present = "unjustified"
        )]
        justified: bool,
        /// It was not.
        #[arg(long)]
        unjustified: bool,
        /// The finding.
        #[arg(long)]
        finding: String,
    },
    /// End an override before its expiry (the patient, a delegate, the provider, an auditor).
    End {
        /// The override's id.
        id: u64,
    },
    /// Lift a provider's suspension (`--as` an admin).
    Restore {
        /// The provider's account.
        provider: String,
    },
    /// The overrides, newest first: the auditors' review queue.
    List {
        /// Only those awaiting review.
        #[arg(long)]
        pending: bool,
    },
}

#[derive(Subcommand)]
pub(crate) enum NotificationsCmd {
    /// `--as`'s notifications, newest first.
    List {
        /// Only unread ones.
        #[arg(long)]
        unread: bool,
        /// Mark those shown read.
        #[arg(long)]
        mark_read: bool,
    },
    /// Set (or `--clear`) the URL `--as`'s notifications are POSTed to.
    Webhook {
        /// An http:// URL (a public host unless --allow-internal).
        #[arg(required_unless_present = "clear")]
        url: Option<String>,
        /// Remove it.
        #[arg(long)]
        clear: bool,
        /// Allow a loopback, private or internal host (the operator's choice;
        /// never over the server).
        #[arg(long)]
        allow_internal: bool,
    },
    /// POST every queued notification to its webhook now (`cohort serve` does this on its own).
    Deliver,
    /// Over `--server` only: print `--as`'s notifications as they arrive (the
    /// gRPC stream), one JSON line each with --json, until --count of them
    /// or Ctrl-C.
    Watch {
        /// Only those with a larger id (0: every one).
        #[arg(long, default_value_t = 0)]
        after: i64,
        /// Stop after this many.
        #[arg(long)]
        count: Option<usize>,
    },
}

/// What every clinical command needs: the vault, the acting account
/// (authenticated by its key), the chain.
pub(crate) struct Ctx {
    pub(crate) vault: Vault,
    pub(crate) actor: Actor,
    pub(crate) client: Client,
    pub(crate) rt: tokio::runtime::Runtime,
}

pub(crate) fn ctx(cli: &Cli, dir: &DataDir) -> anyhow::Result<Ctx> {
    let vault = unlock(cli, dir, None)?;
    let actor = Actor::authenticate(vault.conn(), vault.keys(), &cli.actor)?;
    let rt = runtime()?;
    let (_, client) = rt.block_on(cohort_engine::chain::client(dir))?;
    Ok(Ctx {
        vault,
        actor,
        client,
        rt,
    })
}

/// Brings the follower's mirror up to date (grants, delegations, reads).
pub(crate) fn sync(dir: &DataDir, rt: &tokio::runtime::Runtime) -> anyhow::Result<()> {
    let mut conn = dir.connect()?;
    rt.block_on(cohort_engine::chain::sync(dir, &mut conn))?;
    Ok(())
}

fn patient_or_self(c: &Ctx, patient: &Option<String>) -> anyhow::Result<patients::PatientAccount> {
    let name = patient
        .clone()
        .unwrap_or_else(|| c.actor.name().to_string());
    Ok(patients::find(c.vault.conn(), &name)?)
}

/// One grant as `access list` prints it, whichever path fetched it.
pub(crate) fn grant_line(
    provider: &str,
    level: &str,
    purposes: &[impl AsRef<str>],
    kinds: &[impl AsRef<str>],
    expires_at: u64,
    active: bool,
) -> String {
    fn join(xs: &[impl AsRef<str>]) -> String {
        xs.iter()
            .map(AsRef::as_ref)
            .collect::<Vec<&str>>()
            .join(",")
    }
    format!(
        "{provider:<16} {level:<8} {:<28} {:<40} until {expires_at} {}",
        join(purposes),
        join(kinds),
        if active { "active" } else { "inactive" }
    )
}

fn resource_text(
    rv: &cohort_engine::records::vault::RecordVersion,
    content: &[u8],
    emergency: bool,
) -> anyhow::Result<String> {
    let resource: serde_json::Value = serde_json::from_slice(content)?;
    Ok(format!(
        "{} version {} ({}){}\n{}",
        rv.record_id,
        rv.version,
        rv.cid,
        if emergency { " [emergency access]" } else { "" },
        serde_json::to_string_pretty(&resource)?
    ))
}

pub(crate) fn records(cli: &Cli, dir: &DataDir, cmd: &RecordsCmd) -> anyhow::Result<ExitCode> {
    let c = ctx(cli, dir)?;
    let clinic = Clinic::new(&c.vault, &c.client);
    match cmd {
        RecordsCmd::List { patient, purpose } => {
            let p = patient_or_self(&c, patient).or_else(|e| {
                patient
                    .clone()
                    .map(|p| Ok::<_, anyhow::Error>(patients::require(c.vault.conn(), &p)?))
                    .unwrap_or(Err(e))
            })?;
            let list =
                c.rt.block_on(clinic.list(&c.actor, &p.patient_id, purpose.parse()?))?;
            emit(cli, &list, || {
                list.iter()
                    .map(|r| format!("{:<56} v{:<3} {}", r.record_id, r.version, r.cid))
                    .collect::<Vec<_>>()
                    .join("\n")
            });
        }
        RecordsCmd::Show {
            record,
            version,
            purpose,
        } => {
            let read =
                c.rt.block_on(clinic.read(&c.actor, record, *version, purpose.parse()?))?;
            if cli.json {
                let resource: serde_json::Value = serde_json::from_slice(&read.content)?;
                out!(
                    "{}",
                    serde_json::json!({ "version": read.version, "emergency": read.emergency, "resource": resource })
                );
            } else {
                out!(
                    "{}",
                    resource_text(&read.version, &read.content, read.emergency)?
                );
            }
        }
        RecordsCmd::Search {
            patient,
            types,
            code,
            since,
            until,
            purpose,
        } => {
            let search = Search {
                patient: patient.clone(),
                types: types.clone(),
                code: code.clone(),
                since: since.clone(),
                until: until.clone(),
            };
            let reads =
                c.rt.block_on(clinic.search(&c.actor, &search, purpose.parse()?))?;
            if cli.json {
                let items: Vec<serde_json::Value> = reads
                    .iter()
                    .map(|r| {
                        serde_json::json!({
                            "version": r.version, "emergency": r.emergency,
                            "resource": serde_json::from_slice::<serde_json::Value>(&r.content).unwrap_or_default(),
                        })
                    })
                    .collect();
                out!("{}", serde_json::Value::Array(items));
            } else {
                out!("{} records", reads.len());
                for r in &reads {
                    out!("{}", resource_text(&r.version, &r.content, r.emergency)?);
                }
            }
        }
        RecordsCmd::History { record, purpose } => {
            // Listing versions is a read of the record's metadata: the chain decides.
            let h = c.vault.history(record)?;
            let patient = &h[0].patient_id;
            let list =
                c.rt.block_on(clinic.list(&c.actor, patient, purpose.parse()?))?;
            drop(list);
            emit(cli, &h, || {
                h.iter()
                    .map(|r| {
                        let prev = r
                            .prev_cid
                            .as_deref()
                            .map(|p| format!(" <- {p}"))
                            .unwrap_or_default();
                        format!("v{:<3} {}  {}{prev}", r.version, r.created_at, r.cid)
                    })
                    .collect::<Vec<_>>()
                    .join("\n")
            });
        }
        RecordsCmd::Update { file, purpose } => {
            let bytes =
                std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
            let u =
                c.rt.block_on(clinic.update(&c.actor, &bytes, purpose.parse()?))?;
            emit(cli, &u, || {
                format!(
                    "{} {} version {} ({}), anchored by {}",
                    if u.created { "created" } else { "updated" },
                    u.version.record_id,
                    u.version.version,
                    u.version.cid,
                    u.tx_hash
                )
            });
        }
        RecordsCmd::Verify { record, version } => {
            let v =
                c.rt.block_on(anchor::verify(&c.vault, &c.client, record, *version))?;
            emit(cli, &v, || {
                if v.verified {
                    format!(
                        "{} v{}: verified against {} (block sha256 {})",
                        v.record_id, v.version, v.anchor, v.block_hash
                    )
                } else {
                    format!(
                        "{} v{}: NOT verified ({}): {}",
                        v.record_id,
                        v.version,
                        v.anchor,
                        v.problem.as_deref().unwrap_or("unknown")
                    )
                }
            });
            return Ok(if v.verified {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(3)
            });
        }
        RecordsCmd::Anchor => {
            let r = anchor_now(dir, &c.vault, &c.client, &c.rt)?;
            emit(cli, &r, || match &r {
                Some(a) => format!(
                    "anchored {} versions as batch {} (root {})",
                    a.count, a.batch, a.root
                ),
                None => "nothing waits to be anchored".into(),
            });
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Anchors the waiting versions as the ledger's engine account.
pub(crate) fn anchor_now(
    dir: &DataDir,
    vault: &Vault,
    client: &Client,
    rt: &tokio::runtime::Runtime,
) -> anyhow::Result<Option<anchor::Anchored>> {
    let config = cohort_engine::chain::load(dir)?
        .context("no ledger is deployed: `cohort ledger deploy`")?;
    let engine = cohort_engine::keys::accounts::get(vault.conn(), vault.keys(), &config.engine)?;
    Ok(rt.block_on(anchor::anchor_pending(vault.conn(), client, &engine))?)
}

fn days_hours(days: u64, hours: Option<u64>) -> anyhow::Result<u64> {
    let secs = match hours {
        Some(h) => h * 3_600,
        None => days * 86_400,
    };
    anyhow::ensure!(secs > 0, "a grant needs a duration of at least an hour");
    Ok(secs)
}

fn changed_text(c: &grants::Changed) -> String {
    format!("{} {} (tx {})", c.action, c.account, c.tx_hash)
}

pub(crate) fn access(cli: &Cli, dir: &DataDir, cmd: &AccessCmd) -> anyhow::Result<ExitCode> {
    let c = ctx(cli, dir)?;
    let conn = c.vault.conn();
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
            let req = grants::GrantRequest {
                provider: provider.clone(),
                level: level.parse()?,
                purposes: Purpose::mask(purposes)?,
                kinds: scope::kinds(types)?,
                duration_secs: days_hours(*days, *hours)?,
                on_behalf_of: on_behalf_of.clone(),
            };
            let changed = c.rt.block_on(grants::grant(
                conn,
                c.vault.keys(),
                &c.client,
                &c.actor,
                &req,
            ))?;
            emit(cli, &changed, || {
                format!(
                    "granted {provider} {} access for {} to {} (tx {})",
                    req.level.name(),
                    Purpose::names(req.purposes).join(", "),
                    scope::kind_names(req.kinds).join(", "),
                    changed.tx_hash
                )
            });
        }
        AccessCmd::Revoke {
            provider,
            on_behalf_of,
        } => {
            let changed = c.rt.block_on(grants::revoke(
                conn,
                c.vault.keys(),
                &c.client,
                &c.actor,
                provider,
                on_behalf_of.as_deref(),
            ))?;
            emit(cli, &changed, || changed_text(&changed));
        }
        AccessCmd::Delegate {
            delegate,
            level,
            days,
        } => {
            let level: Level = level.parse()?;
            let changed = c.rt.block_on(grants::delegate(
                conn,
                c.vault.keys(),
                &c.client,
                &c.actor,
                delegate,
                level,
                days_hours(*days, None)?,
            ))?;
            emit(cli, &changed, || changed_text(&changed));
        }
        AccessCmd::Undelegate { delegate } => {
            let changed = c.rt.block_on(grants::undelegate(
                conn,
                c.vault.keys(),
                &c.client,
                &c.actor,
                delegate,
            ))?;
            emit(cli, &changed, || changed_text(&changed));
        }
        AccessCmd::List { patient } => {
            sync(dir, &c.rt)?;
            let p = patient_or_self(&c, patient)?;
            let list = c.rt.block_on(grants::list(conn, &c.client, p.address))?;
            emit(cli, &list, || {
                if list.is_empty() {
                    return format!("no grants from {}", p.name);
                }
                list.iter()
                    .map(|g| {
                        grant_line(
                            g.provider_name.as_deref().unwrap_or(&g.provider),
                            g.level,
                            &g.purposes,
                            &g.kinds,
                            g.expires_at,
                            g.active,
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("\n")
            });
        }
        AccessCmd::Log { patient } => {
            sync(dir, &c.rt)?;
            let p = patient_or_self(&c, patient)?;
            let log = cohort_engine::access::patients::read_log(&dir.connect()?, p.address)?;
            emit(cli, &log, || {
                if log.is_empty() {
                    return format!("no reads of {}'s records on chain", p.name);
                }
                log.iter()
                    .map(|e| {
                        let when = chrono::DateTime::from_timestamp(e.at, 0)
                            .map(|t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string())
                            .unwrap_or_default();
                        format!(
                            "{when}  {:<16} {:<11} {:>3} records{}",
                            e.accessor_name.as_deref().unwrap_or(&e.accessor),
                            e.purpose,
                            e.records,
                            if e.emergency { "  EMERGENCY" } else { "" }
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("\n")
            });
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub(crate) fn credential(
    cli: &Cli,
    dir: &DataDir,
    cmd: &CredentialCmd,
) -> anyhow::Result<ExitCode> {
    let c = ctx(cli, dir)?;
    let changed = match cmd {
        CredentialCmd::Attest {
            provider,
            license,
            days,
            jurisdiction,
        } => {
            anyhow::ensure!(*days > 0, "--days must be at least 1");
            let jurisdiction = jurisdiction
                .as_deref()
                .map(cohort_engine::access::geo::Jurisdiction::parse)
                .transpose()?;
            let now = c.rt.block_on(c.client.ledger().timestamp())?;
            let changed = c.rt.block_on(grants::attest_credential(
                c.vault.conn(),
                &c.client,
                &c.actor,
                provider,
                license,
                now + days * 86_400,
            ))?;
            match jurisdiction {
                Some(j) => c.rt.block_on(grants::attest_jurisdiction(
                    c.vault.conn(),
                    &c.client,
                    &c.actor,
                    provider,
                    &j,
                ))?,
                None => changed,
            }
        }
        CredentialCmd::Revoke { provider } => c.rt.block_on(grants::revoke_credential(
            c.vault.conn(),
            &c.client,
            &c.actor,
            provider,
        ))?,
    };
    emit(cli, &changed, || changed_text(&changed));
    Ok(ExitCode::SUCCESS)
}

pub(crate) fn emergency(cli: &Cli, dir: &DataDir, cmd: &EmergencyCmd) -> anyhow::Result<ExitCode> {
    let c = ctx(cli, dir)?;
    let conn = c.vault.conn();
    match cmd {
        EmergencyCmd::Trigger { patient, reason } => {
            sync(dir, &c.rt)?;
            let opened = c.rt.block_on(emergency::trigger(
                conn,
                c.vault.keys(),
                &c.client,
                &c.actor,
                patient,
                reason,
            ))?;
            // Webhooks are pushed now; a failure leaves them queued for the server.
            let _ = c.rt.block_on(notifications::deliver(conn));
            emit(cli, &opened, || {
                format!(
                    "emergency {} opened on {} until {}; notified {} account(s); it awaits an auditor's review",
                    opened.id,
                    opened.patient,
                    opened.expires_at,
                    opened.notified.len()
                )
            });
        }
        EmergencyCmd::Review {
            id,
            justified,
            unjustified: _,
            finding,
        } => {
            let changed = c.rt.block_on(emergency::review(
                conn, &c.client, &c.actor, *id, *justified, finding,
            ))?;
            let _ = c.rt.block_on(notifications::deliver(conn));
            emit(cli, &changed, || changed_text(&changed));
        }
        EmergencyCmd::End { id } => {
            let changed = c.rt.block_on(emergency::end(
                conn,
                c.vault.keys(),
                &c.client,
                &c.actor,
                *id,
            ))?;
            let _ = c.rt.block_on(notifications::deliver(conn));
            emit(cli, &changed, || changed_text(&changed));
        }
        EmergencyCmd::Restore { provider } => {
            let changed =
                c.rt.block_on(emergency::restore(conn, &c.client, &c.actor, provider))?;
            emit(cli, &changed, || changed_text(&changed));
        }
        EmergencyCmd::List { pending } => {
            let list =
                c.rt.block_on(emergency::queue(conn, &c.client, &c.actor, *pending))?;
            emit(cli, &list, || {
                if list.is_empty() {
                    return "no emergency overrides".into();
                }
                list.iter()
                    .map(|e| {
                        format!(
                            "#{:<4} {:<16} -> {:<12} {:<12} {:<8} {}",
                            e.id,
                            e.provider_name.as_deref().unwrap_or(&e.provider),
                            e.patient_id.as_deref().unwrap_or(&e.patient),
                            e.review,
                            if e.open { "open" } else { "ended" },
                            e.reason.as_deref().unwrap_or("")
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("\n")
            });
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub(crate) fn notifications_cmd(
    cli: &Cli,
    dir: &DataDir,
    cmd: &NotificationsCmd,
) -> anyhow::Result<ExitCode> {
    let vault = unlock(cli, dir, None)?;
    let actor = Actor::authenticate(vault.conn(), vault.keys(), &cli.actor)?;
    let conn = vault.conn();
    match cmd {
        NotificationsCmd::List { unread, mark_read } => {
            let list = notifications::list(conn, actor.address(), *unread, 100)?;
            if *mark_read && let Some(top) = list.first() {
                notifications::mark_read(conn, actor.address(), top.id)?;
            }
            emit(cli, &list, || {
                if list.is_empty() {
                    return "no notifications".into();
                }
                list.iter()
                    .map(|n| {
                        format!(
                            "#{:<4} {} {:<18} {}{}",
                            n.id,
                            n.created_at,
                            n.kind,
                            n.body,
                            if n.read_at.is_some() {
                                ""
                            } else {
                                "  (unread)"
                            }
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("\n")
            });
        }
        NotificationsCmd::Webhook {
            url,
            clear,
            allow_internal,
        } => {
            let url = if *clear { None } else { url.as_deref() };
            notifications::set_webhook(conn, actor.address(), url, *allow_internal)?;
            let info = serde_json::json!({ "account": actor.name(), "webhook": url });
            emit(cli, &info, || match url {
                Some(u) => format!("{}'s notifications will be POSTed to {u}", actor.name()),
                None => format!("{} has no webhook", actor.name()),
            });
        }
        NotificationsCmd::Watch { .. } => {
            anyhow::bail!("`notifications watch` follows a running server: add --server URL");
        }
        NotificationsCmd::Deliver => {
            let r = runtime()?.block_on(notifications::deliver(conn))?;
            emit(cli, &r, || {
                format!(
                    "delivered {}, failed {} (retried later)",
                    r.delivered, r.failed
                )
            });
        }
    }
    Ok(ExitCode::SUCCESS)
}
