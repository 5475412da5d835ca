//! `cohort geo`: the deployment's geography policy and a patient's own
//! restriction (engine: `access::geo`).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Subcommand;
use cohort_engine::DataDir;
use cohort_engine::access::{Actor, geo, grants};

use crate::Cli;
use crate::cli_common::{emit, runtime, unlock};

#[derive(Subcommand)]
pub(crate) enum GeoCmd {
    /// The deployment's policy, and the `--as` patient's own restriction.
    Show,
    /// A policy showing every key, to start from.
    Example,
    /// Set the deployment's policy from a TOML file (checked first; audited).
    Set {
        /// The policy file.
        file: PathBuf,
    },
    /// As a patient (`--as`), narrow where your records may be read or
    /// studied, as your own transaction on chain. No flag: no restriction
    /// beyond the deployment's. Nothing here can widen the deployment's policy.
    Restrict {
        /// Only readers in your record's jurisdiction (country) may read it.
        #[arg(long)]
        domestic_reads_only: bool,
        /// Your records enter no research view of a study of another country.
        #[arg(long)]
        no_cross_border_research: bool,
    },
}

/// The jurisdiction records ingested now carry: the organisation's (from
/// the policy), the one given, else none (the policy's default applies).
pub(crate) fn ingest_jurisdiction(
    vault: &cohort_engine::records::vault::Vault,
    organisation: Option<&str>,
    jurisdiction: Option<&str>,
) -> anyhow::Result<Option<String>> {
    if let Some(j) = jurisdiction {
        return Ok(Some(geo::Jurisdiction::parse(j)?.to_string()));
    }
    let Some(org) = organisation else {
        return Ok(None);
    };
    let policy = geo::policy(vault.conn())?.with_context(|| {
        format!("--organisation {org}: no geography policy is set (`cohort geo set FILE`)")
    })?;
    Ok(Some(policy.organisation(org)?.to_string()))
}

pub(crate) fn geo(cli: &Cli, dir: &DataDir, cmd: &GeoCmd) -> anyhow::Result<ExitCode> {
    match cmd {
        GeoCmd::Example => {
            print!("{}", geo::EXAMPLE);
        }
        GeoCmd::Show => {
            let conn = dir.connect()?;
            let rt = runtime()?;
            let client = match cohort_engine::chain::load(dir)? {
                Some(_) => Some(rt.block_on(cohort_engine::chain::client_reader(dir))?.1),
                None => None,
            };
            let who = cohort_engine::keys::accounts::address_of(&conn, &cli.actor)?
                .and_then(|a| a.parse().ok());
            let shown = rt.block_on(geo::shown(&conn, client.as_ref(), who))?;
            emit(cli, &shown, || {
                let mut text = match &shown.policy {
                    Some(p) => format!("geography policy:\n{p}"),
                    None => "no geography policy: every read is decided by the chain alone \
                             (`cohort geo example`, then `cohort geo set FILE`)"
                        .to_string(),
                };
                if let Some(r) = &shown.restrictions {
                    text.push_str(&format!(
                        "\n{}'s restriction: {}",
                        cli.actor,
                        if r.is_empty() {
                            "none".to_string()
                        } else {
                            r.join(", ")
                        }
                    ));
                }
                text
            });
        }
        GeoCmd::Set { file } => {
            let text = std::fs::read_to_string(file)
                .with_context(|| format!("reading {}", file.display()))?;
            let vault = unlock(cli, dir, None)?;
            let actor = Actor::authenticate(vault.conn(), vault.keys(), &cli.actor)?;
            let policy = geo::set_policy(vault.conn(), actor.name(), &text)?;
            let shown = serde_json::json!({ "set": true, "default": policy.default });
            emit(cli, &shown, || {
                format!(
                    "geography policy set (default jurisdiction {})",
                    policy.default
                )
            });
        }
        GeoCmd::Restrict {
            domestic_reads_only,
            no_cross_border_research,
        } => {
            let c = crate::clinical_cli::ctx(cli, dir)?;
            let mut bits = 0;
            if *domestic_reads_only {
                bits |= geo::DOMESTIC_READS_ONLY;
            }
            if *no_cross_border_research {
                bits |= geo::NO_CROSS_BORDER_RESEARCH;
            }
            let changed = c.rt.block_on(grants::set_geo_restriction(
                c.vault.conn(),
                &c.client,
                &c.actor,
                bits,
            ))?;
            emit(cli, &changed, || {
                format!(
                    "geographic restriction set: {} (tx {})",
                    match geo::restriction_names(bits) {
                        v if v.is_empty() => "none".to_string(),
                        v => v.join(", "),
                    },
                    changed.tx_hash
                )
            });
        }
    }
    Ok(ExitCode::SUCCESS)
}
