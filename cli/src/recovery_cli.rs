//! `cohort recovery`: key recovery, the five steps (engine
//! `access::recovery`), each as the `--as` account, decided on chain and
//! audited.

use std::process::ExitCode;

use clap::Subcommand;
use cohort_engine::DataDir;
use cohort_engine::access::recovery::{self, GuardianSetup, GuardiansInfo, Named, RecoveryInfo};

use crate::Cli;
use crate::cli_common::emit;
use crate::clinical_cli::{ctx, sync};

#[derive(Subcommand)]
pub(crate) enum RecoveryCmd {
    /// Name your guardians (`--as` the patient): your key is split into
    /// shares, each sealed to one guardian's key; any THRESHOLD of them can
    /// later restore your records to a new key.
    Guardians {
        /// The guardians' account names, comma-separated.
        #[arg(value_delimiter = ',', required = true)]
        guardians: Vec<String>,
        /// How many of them must approve a recovery.
        #[arg(long)]
        threshold: u8,
        /// An account that also holds a whole copy of your key.
        #[arg(long)]
        backup: Option<String>,
    },
    /// A patient's guardians and whether their shares are held here.
    Show {
        /// The patient (account, vault id or address; default: `--as`).
        patient: Option<String>,
    },
    /// Step 1: ask to take over a patient's records (`--as` a fresh
    /// account made with `cohort account new`).
    Open {
        /// The patient (account, vault id or identity address).
        patient: String,
    },
    /// Steps 1-3: approve a recovery as a guardian, attesting how you
    /// verified the person; your share is released to the new account.
    Approve {
        /// The recovery's id.
        id: u64,
        /// How you verified the person's identity (only its hash is kept).
        #[arg(long)]
        evidence: String,
    },
    /// Step 2: release the whole key as the patient's backup account.
    Backup {
        /// The recovery's id.
        id: u64,
    },
    /// Step 3: attest the person's identity (`--as` a credentialed
    /// provider, neither a guardian nor a party).
    Attest {
        /// The recovery's id.
        id: u64,
        /// The evidence checked (only its hash is kept).
        #[arg(long)]
        evidence: String,
    },
    /// Step 4: complete a recovery (`--as` the new account): the key is
    /// rebuilt from the released shares, control moves on chain, every
    /// grant follows, the old key loses all power.
    Complete {
        /// The recovery's id.
        id: u64,
    },
    /// Cancel an open recovery (`--as` the new account, or an auditor).
    Cancel {
        /// The recovery's id.
        id: u64,
    },
    /// A recovery as the chain holds it.
    Status {
        /// The recovery's id.
        id: u64,
    },
    /// Step 5: a recovery's trail, the chain's events and the audit log's
    /// entries (`--as` an auditor or admin).
    Trail {
        /// The recovery's id.
        id: u64,
    },
    /// Step 5: record the review (`--as` an auditor who read the trail);
    /// an unjustified recovery freezes the patient's control.
    Review {
        /// The recovery's id.
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
        /// The finding (only its hash goes on chain).
        #[arg(long)]
        finding: String,
    },
}

fn who(n: &Named) -> &str {
    n.name.as_deref().unwrap_or(&n.address)
}

fn recovery_text(r: &RecoveryInfo) -> String {
    let mut line = format!(
        "recovery {} of {} to {}: {}, {}/{} guardian approvals, {} share(s) released, identity {}",
        r.id,
        who(&r.patient),
        who(&r.new_key),
        r.state,
        r.approvals,
        r.threshold,
        r.released,
        r.attested_by
            .as_ref()
            .map_or("not attested".to_string(), |p| format!(
                "attested by {}",
                who(p)
            )),
    );
    if r.review != "none" {
        line.push_str(&format!(", review {}", r.review));
    }
    if let Some(tx) = &r.tx_hash {
        line.push_str(&format!(" (tx {tx})"));
    }
    line
}

fn guardians_text(g: &GuardiansInfo) -> String {
    if g.guardians.is_empty() {
        return format!("{} has no guardians", g.patient);
    }
    format!(
        "{}: {} of {} guardians ({}){}, round {}, shares {}",
        g.patient,
        g.threshold,
        g.guardians.len(),
        g.guardians.iter().map(who).collect::<Vec<_>>().join(", "),
        g.backup
            .as_ref()
            .map(|b| format!(", backup {}", who(b)))
            .unwrap_or_default(),
        g.round,
        if g.shares_held {
            "held here"
        } else {
            "NOT held here"
        }
    )
}

pub(crate) fn recovery_cmd(
    cli: &Cli,
    dir: &DataDir,
    cmd: &RecoveryCmd,
) -> anyhow::Result<ExitCode> {
    let c = ctx(cli, dir)?;
    let (conn, keys) = (c.vault.conn(), c.vault.keys());
    match cmd {
        RecoveryCmd::Guardians {
            guardians,
            threshold,
            backup,
        } => {
            let setup = GuardianSetup {
                guardians: guardians.clone(),
                threshold: *threshold,
                backup: backup.clone(),
            };
            let g = c.rt.block_on(recovery::set_guardians(
                conn, &c.client, keys, &c.actor, &setup,
            ))?;
            emit(cli, &g, || guardians_text(&g));
        }
        RecoveryCmd::Show { patient } => {
            sync(dir, &c.rt)?;
            let address = match patient {
                Some(p) => recovery::patient_address(conn, p)?,
                None => cohort_engine::access::patients::identity_of(conn, &c.actor)?,
            };
            let g =
                c.rt.block_on(recovery::guardians(conn, &c.client, address))?;
            let list = c.rt.block_on(recovery::list(conn, &c.client, address))?;
            let both = serde_json::json!({ "guardians": g, "recoveries": list });
            emit(cli, &both, || {
                std::iter::once(guardians_text(&g))
                    .chain(list.iter().map(recovery_text))
                    .collect::<Vec<_>>()
                    .join("\n")
            });
        }
        RecoveryCmd::Open { patient } => {
            sync(dir, &c.rt)?;
            let r =
                c.rt.block_on(recovery::open(conn, &c.client, &c.actor, patient))?;
            emit(cli, &r, || recovery_text(&r));
        }
        RecoveryCmd::Approve { id, evidence } => {
            let r = c.rt.block_on(recovery::approve(
                conn, &c.client, keys, &c.actor, *id, evidence,
            ))?;
            emit(cli, &r, || recovery_text(&r));
        }
        RecoveryCmd::Backup { id } => {
            let r = c.rt.block_on(recovery::release_backup(
                conn, &c.client, keys, &c.actor, *id,
            ))?;
            emit(cli, &r, || recovery_text(&r));
        }
        RecoveryCmd::Attest { id, evidence } => {
            let r =
                c.rt.block_on(recovery::attest(conn, &c.client, &c.actor, *id, evidence))?;
            emit(cli, &r, || recovery_text(&r));
        }
        RecoveryCmd::Complete { id } => {
            let done =
                c.rt.block_on(recovery::complete(conn, &c.client, keys, &c.actor, *id))?;
            emit(cli, &done, || {
                format!(
                    "{}\n`{}` now acts for {}{}; fresh shares sealed to the same guardians (round {})",
                    recovery_text(&done.recovery),
                    c.actor.name(),
                    who(&done.recovery.patient),
                    done.patient_id
                        .as_ref()
                        .map(|p| format!(" (vault patient {p})"))
                        .unwrap_or_default(),
                    done.guardians_round
                )
            });
        }
        RecoveryCmd::Cancel { id } => {
            let r =
                c.rt.block_on(recovery::cancel(conn, &c.client, &c.actor, *id))?;
            emit(cli, &r, || recovery_text(&r));
        }
        RecoveryCmd::Status { id } => {
            let r = c.rt.block_on(recovery::show(conn, &c.client, *id))?;
            emit(cli, &r, || recovery_text(&r));
        }
        RecoveryCmd::Trail { id } => {
            let t =
                c.rt.block_on(recovery::trail(conn, &c.client, &c.actor, *id))?;
            emit(cli, &t, || {
                std::iter::once(recovery_text(&t.recovery))
                    .chain(t.entries.iter().map(|e| {
                        format!(
                            "  [{}] {:<18} {:<32} by {} {}",
                            e.source, e.at, e.action, e.by, e.detail
                        )
                    }))
                    .collect::<Vec<_>>()
                    .join("\n")
            });
        }
        RecoveryCmd::Review {
            id,
            justified,
            unjustified: _,
            finding,
        } => {
            let r = c.rt.block_on(recovery::review(
                conn, &c.client, &c.actor, *id, *justified, finding,
            ))?;
            emit(cli, &r, || recovery_text(&r));
        }
    }
    Ok(ExitCode::SUCCESS)
}
