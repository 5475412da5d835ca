//! `cohort ledger`: deploy the contracts, the chain's status, the follower
//! and the chain file's verification.

use std::process::ExitCode;

use clap::Subcommand;
use cohort_engine::DataDir;

use crate::Cli;
use crate::cli_common::{emit, runtime, unlock};

#[derive(Subcommand)]
pub(crate) enum LedgerCmd {
    /// The backend, chain id, block height, contract addresses and the follower's position.
    Status,
    /// Deploy the contracts (to the embedded chain, or to the node at --rpc-url) as the `--as` account.
    Deploy {
        /// A JSON-RPC node (http://host:port); without it, the embedded chain.
        #[arg(long)]
        rpc_url: Option<String>,
        /// Stewards who must approve a study.
        #[arg(long, default_value_t = cohort_engine::chain::DEFAULT_APPROVALS)]
        approvals: u8,
        /// Confirmations the follower waits for (default: 1 embedded, 2 on a node).
        #[arg(long)]
        confirmations: Option<u64>,
        /// Deploy a new set even though contracts are recorded.
        #[arg(long)]
        redeploy: bool,
    },
    /// Mirror every confirmed block's events into cohort.db (resumes where it stopped).
    Sync,
    /// Check the embedded chain file: every block hash, every transaction's signature.
    Verify,
    /// Development chains only (the embedded chain, anvil): move the chain's
    /// clock forward by DURATION (`90m`, `2h`, `1d`) and mine a block, so
    /// that deadlines, reminders and no-show windows can be shown without
    /// waiting. Audited. Refused while a server owns the chain.
    Advance {
        /// How far: `30m`, `2h`, `1d`.
        duration: String,
    },
}

pub(crate) fn ledger(cli: &Cli, dir: &DataDir, cmd: &LedgerCmd) -> anyhow::Result<ExitCode> {
    use cohort_engine::chain;
    let rt = runtime()?;
    match cmd {
        LedgerCmd::Status => {
            let conn = dir.connect()?;
            let status = rt.block_on(chain::status(dir, &conn))?;
            emit(cli, &status, || {
                let mut lines = vec![
                    format!("backend    {}", status.backend),
                    format!("chain id   {}", status.chain_id),
                    format!("block      {}", status.block),
                ];
                match &status.contracts {
                    Some(c) => {
                        lines.push(format!("contracts  CohortAccess   {:#x}", c.access));
                        lines.push(format!("           PatientRecords {:#x}", c.records));
                        lines.push(format!("           ResearchStudy  {:#x}", c.study));
                        lines.push(format!("           Appointments   {:#x}", c.appointments));
                        lines.push(format!("           deployed at block {}", c.deployed_at));
                    }
                    None => {
                        lines.push("contracts  not deployed (run `cohort ledger deploy`)".into())
                    }
                }
                if let (Some(n), Some(m)) = (status.required_approvals, status.confirmations) {
                    lines.push(format!(
                        "approvals  {n} stewards per study; follower waits for {m} confirmation(s)"
                    ));
                }
                match (&status.follower, status.follower_behind) {
                    (Some(p), Some(behind)) => lines.push(format!(
                        "follower   at block {} ({:#x}), {behind} block(s) behind",
                        p.block, p.block_hash
                    )),
                    (None, Some(behind)) => lines.push(format!(
                        "follower   not started, {behind} block(s) to apply (run `cohort ledger sync`)"
                    )),
                    _ => {}
                }
                lines.join("\n")
            });
        }
        LedgerCmd::Deploy {
            rpc_url,
            approvals,
            confirmations,
            redeploy,
        } => {
            let vault = unlock(cli, dir, None)?;
            let request = chain::DeployRequest {
                rpc_url: rpc_url.clone(),
                approvals: *approvals,
                confirmations: *confirmations,
                admin: cli.actor.clone(),
                redeploy: *redeploy,
            };
            let config = rt.block_on(chain::deploy(dir, vault.conn(), vault.keys(), &request))?;
            emit(cli, &config, || {
                let c = &config.contracts;
                format!(
                    "deployed on chain {} by `{}` (block {}):\n  CohortAccess   {:#x}\n  PatientRecords {:#x}\n  ResearchStudy  {:#x}\n  Appointments   {:#x}\nENGINE role granted to `{}`; {} steward approvals per study",
                    config.chain_id,
                    config.admin,
                    c.deployed_at,
                    c.access,
                    c.records,
                    c.study,
                    c.appointments,
                    config.engine,
                    config.required_approvals
                )
            });
        }
        LedgerCmd::Sync => {
            let mut conn = dir.connect()?;
            let report = rt.block_on(chain::sync(dir, &mut conn))?;
            emit(cli, &report, || {
                match (report.from_block, report.to_block) {
                    (Some(from), Some(to)) => format!(
                        "applied blocks {from}..={to}: {} event(s); head {}, {} block(s) awaiting confirmations",
                        report.events, report.head, report.unconfirmed
                    ),
                    _ => format!(
                        "up to date at head {} ({} block(s) awaiting confirmations)",
                        report.head, report.unconfirmed
                    ),
                }
            });
        }
        LedgerCmd::Advance { duration } => {
            let secs = cohort_engine::appointments::terms::parse_duration("duration", duration)?;
            let (_, client) = rt.block_on(chain::client(dir))?;
            rt.block_on(client.ledger().increase_time(secs))?;
            let now = rt.block_on(client.ledger().now())?;
            cohort_engine::audit::append(
                &dir.connect()?,
                &cohort_engine::audit::Event {
                    actor: &cli.actor,
                    action: "ledger.advance",
                    target: "chain",
                    purpose: "operations",
                    detail: serde_json::json!({ "seconds": secs, "now": now }),
                },
            )?;
            let report = serde_json::json!({ "advanced_secs": secs, "now": now });
            emit(cli, &report, || {
                format!(
                    "the chain's clock moved {secs} s forward: it is now {}",
                    cohort_engine::appointments::desk::when(now)
                )
            });
        }
        LedgerCmd::Verify => {
            let verified = chain::verify(dir)?;
            emit(cli, &verified, || {
                format!(
                    "verified {} block(s) and {} transaction(s): every block hashes to its header \
                     and transactions, every signature to its recorded sender",
                    verified.blocks, verified.transactions
                )
            });
        }
    }
    Ok(ExitCode::SUCCESS)
}
