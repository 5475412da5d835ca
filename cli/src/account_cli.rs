//! `cohort account`: named Ethereum accounts, ether on the embedded chain,
//! roles and second factors.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::Subcommand;
use cohort_engine::DataDir;

use crate::Cli;
use crate::cli_common::{emit, runtime, unlock};
use crate::serve_cli;

#[derive(Subcommand)]
pub(crate) enum AccountCmd {
    /// Every account's name and address (no passphrase needed).
    List,
    /// Create an account (a new secp256k1 key, stored wrapped by the keystore).
    New {
        /// Its name.
        name: String,
        /// Link it to this patient of the vault (it then consents and is paid for them).
        #[arg(long)]
        patient: Option<String>,
    },
    /// Add ether to an account (embedded or development chains only: the
    /// operator mints it, standing in for a payment rail).
    Fund {
        /// The account.
        name: String,
        /// How much: "1 ether", "500 gwei".
        amount: String,
    },
    /// Grant a role on the ledger, as the `--as` admin. While `cohort
    /// serve` owns the chain, pass `--server` to change it through the server.
    Grant {
        /// The account.
        name: String,
        /// researcher, steward, auditor, provider, issuer, patient, engine or admin.
        role: String,
        #[command(flatten)]
        via: RoleVia,
    },
    /// Revoke a role on the ledger, as the `--as` admin: the account's
    /// next call to a server is decided without it.
    Revoke {
        /// The account.
        name: String,
        /// The role.
        role: String,
        #[command(flatten)]
        via: RoleVia,
    },
    /// Enroll a TOTP second factor for an account (every account signs in
    /// to `cohort serve` with it while `[auth] second_factor` is on). Prints
    /// the secret and its otpauth:// URI once, for an authenticator app.
    Totp {
        /// The account.
        name: String,
        /// Issue a new secret even if one is enrolled (the old one stops working).
        #[arg(long)]
        replace: bool,
    },
    /// Passkeys (WebAuthn) with which the account signs in on the web page.
    #[command(subcommand)]
    Passkey(PasskeyCmd),
}

/// `cohort account passkey`.
#[derive(Subcommand)]
pub(crate) enum PasskeyCmd {
    /// Print a one-time code (valid 15 minutes) with which the account's
    /// person registers a passkey on the web page ("Register a passkey").
    /// A new code replaces the previous one.
    Invite {
        /// The account.
        name: String,
    },
    /// The account's passkeys (no key material).
    List {
        /// The account.
        name: String,
    },
    /// Remove a passkey: it signs in no more, and the tokens it signed in
    /// stop working at their next call.
    Remove {
        /// The account.
        name: String,
        /// The credential id (`cohort account passkey list`).
        credential_id: String,
    },
}

/// Where a role change is sent: the chain itself, or a running server.
#[derive(clap::Args)]
pub(crate) struct RoleVia {
    /// Send it through this running `cohort serve` (which owns the chain),
    /// signing in as the `--as` admin.
    #[arg(long)]
    pub(crate) server: Option<String>,
    /// The server's certificate (PEM) to trust, with `--server`.
    #[arg(long, env = "COHORT_CA_CERT")]
    pub(crate) ca_cert: Option<PathBuf>,
    /// The admin's current TOTP code, with `--server`.
    #[arg(long, env = "COHORT_TOTP")]
    pub(crate) totp: Option<String>,
}

pub(crate) fn account(cli: &Cli, dir: &DataDir, cmd: &AccountCmd) -> anyhow::Result<ExitCode> {
    use cohort_engine::keys::accounts;
    match cmd {
        AccountCmd::List => {
            let list = accounts::list(&dir.connect()?)?;
            emit(cli, &list, || {
                if list.is_empty() {
                    return "no accounts yet (`cohort account new NAME`)".into();
                }
                list.iter()
                    .map(|a| format!("{:<16} {}", a.name, a.address))
                    .collect::<Vec<_>>()
                    .join("\n")
            });
        }
        AccountCmd::New { name, patient } => {
            let vault = unlock(cli, dir, None)?;
            if accounts::address_of(vault.conn(), name)?.is_some() {
                bail!("account `{name}` already exists (`cohort account list` shows it)");
            }
            let account = match patient {
                Some(p) => {
                    let account =
                        cohort_engine::research::link_patient(vault.conn(), &vault, name, p)?;
                    // With a ledger, the patient registers on chain now, so
                    // that a refusal names the missing grant, not the role.
                    if cohort_engine::chain::load(dir)?.is_some() {
                        let rt = runtime()?;
                        let (_, client) = rt.block_on(cohort_engine::chain::client(dir))?;
                        rt.block_on(cohort_engine::access::grants::ensure_patient(
                            &client,
                            &cohort_engine::access::Actor::from_account(account.clone()),
                        ))?;
                    }
                    account
                }
                None => accounts::get_or_create(vault.conn(), vault.keys(), name)?,
            };
            let info =
                serde_json::json!({ "name": name, "address": format!("{:#x}", account.address()) });
            emit(cli, &info, || format!("{name} {:#x}", account.address()));
        }
        AccountCmd::Fund { name, amount } => {
            let wei = cohort_engine::research::study::parse_wei("the amount", amount)?;
            let address = accounts::address_of(&dir.connect()?, name)?
                .with_context(|| format!("no account `{name}` (`cohort account new {name}`)"))?;
            let address: cohort_ledger_bridge::alloy::primitives::Address = address.parse()?;
            let rt = runtime()?;
            let (config, client) = rt.block_on(cohort_engine::chain::client(dir))?;
            if !matches!(
                config.backend,
                cohort_engine::chain::BackendConfig::Embedded { .. }
            ) {
                bail!(
                    "`account fund` mints ether on the embedded chain; on a node, send ether to {address:#x} from a funded account"
                );
            }
            let balance = rt.block_on(client.ledger().balance(address))? + wei;
            rt.block_on(client.ledger().set_balance(address, balance))?;
            let info = serde_json::json!({ "name": name, "address": format!("{address:#x}"), "balance": balance.to_string() });
            emit(cli, &info, || {
                format!(
                    "{name} now holds {}",
                    cohort_engine::research::study::format_wei(balance)
                )
            });
        }
        AccountCmd::Grant { name, role, via } | AccountCmd::Revoke { name, role, via } => {
            let grant = matches!(cmd, AccountCmd::Grant { .. });
            let role: cohort_ledger_bridge::Role =
                role.parse().map_err(|e: String| anyhow::anyhow!(e))?;
            let changed = match &via.server {
                Some(server) => serve_cli::change_role(
                    cli,
                    dir,
                    server,
                    via.ca_cert.as_deref(),
                    via.totp.as_deref(),
                    name,
                    role,
                    grant,
                )?,
                None => {
                    let vault = unlock(cli, dir, None)?;
                    let admin = accounts::get(vault.conn(), vault.keys(), &cli.actor)?;
                    let rt = runtime()?;
                    let (_, client) = rt.block_on(cohort_engine::chain::client(dir))?;
                    rt.block_on(cohort_engine::access::roles::change(
                        vault.conn(),
                        vault.keys(),
                        &client,
                        &admin,
                        name,
                        role,
                        grant,
                    ))?
                }
            };
            emit(cli, &changed, || {
                format!(
                    "{} {} {} {name} ({})",
                    if changed.granted {
                        "granted"
                    } else {
                        "revoked"
                    },
                    changed.role,
                    if changed.granted { "to" } else { "from" },
                    changed.address
                )
            });
        }
        AccountCmd::Passkey(cmd) => passkey(cli, dir, cmd)?,
        AccountCmd::Totp { name, replace } => {
            let vault = unlock(cli, dir, None)?;
            let enrolled = cohort_engine::keys::second_factor::enroll(
                vault.conn(),
                vault.keys(),
                &cli.actor,
                name,
                *replace,
            )?;
            emit(cli, &enrolled, || {
                format!(
                    "second factor enrolled for {name}; add it to an authenticator app (shown once):\n  secret: {}\n  {}",
                    enrolled.secret, enrolled.otpauth_uri
                )
            });
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn passkey(cli: &Cli, dir: &DataDir, cmd: &PasskeyCmd) -> anyhow::Result<()> {
    use cohort_engine::keys::passkeys;
    let conn = dir.connect()?;
    match cmd {
        PasskeyCmd::Invite { name } => {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)?
                .as_secs();
            let invite = passkeys::invite(&conn, &cli.actor, name, now)?;
            emit(cli, &invite, || {
                format!(
                    "give {name} this one-time code to register a passkey on the web page (valid {} minutes, shown once):\n  {}",
                    passkeys::INVITE_TTL_SECS / 60,
                    invite.code
                )
            });
        }
        PasskeyCmd::List { name } => {
            let list = passkeys::list(&conn, name)?;
            emit(cli, &list, || {
                if list.is_empty() {
                    return format!(
                        "{name} has no passkey (`cohort account passkey invite {name}`)"
                    );
                }
                list.iter()
                    .map(|p| {
                        format!(
                            "{}  {:<12} registered {}  last used {}",
                            p.credential_id,
                            p.label,
                            p.created_at,
                            p.last_used_at.as_deref().unwrap_or("never")
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("\n")
            });
        }
        PasskeyCmd::Remove {
            name,
            credential_id,
        } => {
            if !passkeys::remove(&conn, &cli.actor, name, credential_id)? {
                bail!(
                    "{name} has no passkey {credential_id} (`cohort account passkey list {name}`)"
                );
            }
            let out = serde_json::json!({ "account": name, "removed": credential_id });
            emit(cli, &out, || {
                format!("removed {name}'s passkey {credential_id}")
            });
        }
    }
    Ok(())
}
