//! `cohort records`, `cohort patient` and `cohort audit`: the vault's
//! records, a patient's erasure, and the audit log.

use std::process::ExitCode;

use clap::Subcommand;
use cohort_engine::DataDir;
use cohort_engine::records::vault::Access;

use crate::Cli;
use crate::cli_common::{emit, unlock};

#[derive(Subcommand)]
pub(crate) enum RecordsCmd {
    /// The current version of each record.
    List {
        /// Only this patient's records.
        #[arg(long)]
        patient: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
    /// Decrypt and print a record (audited).
    Show {
        /// `ResourceType/id`.
        record: String,
        /// A version other than the current one.
        #[arg(long)]
        version: Option<i64>,
        /// Purpose of use, recorded in the audit log.
        #[arg(long, default_value = "treatment")]
        purpose: String,
    },
    /// Every version of a record, oldest first.
    History {
        /// `ResourceType/id`.
        record: String,
    },
}

#[derive(Subcommand)]
pub(crate) enum PatientCmd {
    /// Erase a patient by destroying their data key (crypto-shredding). Irreversible.
    Erase {
        /// The patient id.
        patient: String,
        /// Confirm that the erasure is intended.
        #[arg(long)]
        confirm: bool,
        /// Reason recorded in the audit log.
        #[arg(long, default_value = "erasure request")]
        purpose: String,
    },
}

#[derive(Subcommand)]
pub(crate) enum AuditCmd {
    /// Walk the hash chain and name the first broken entry.
    Verify,
    /// The latest entries.
    Log {
        /// At most this many.
        #[arg(long, default_value_t = 20)]
        limit: usize,
        /// Only entries about this record or patient.
        #[arg(long)]
        target: Option<String>,
    },
}

pub(crate) fn records(cli: &Cli, dir: &DataDir, cmd: &RecordsCmd) -> anyhow::Result<ExitCode> {
    let vault = unlock(cli, dir, None)?;
    match cmd {
        RecordsCmd::List { patient, limit } => {
            let list = vault.list(patient.as_deref(), *limit)?;
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
            let (rv, content) = vault.read(&Access::new(&cli.actor, purpose), record, *version)?;
            let resource: serde_json::Value = serde_json::from_slice(&content)?;
            if cli.json {
                out!(
                    "{}",
                    serde_json::json!({ "version": rv, "resource": resource })
                );
            } else {
                out!("{} version {} ({})", rv.record_id, rv.version, rv.cid);
                out!("{}", serde_json::to_string_pretty(&resource)?);
            }
        }
        RecordsCmd::History { record } => {
            let h = vault.history(record)?;
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
    }
    Ok(ExitCode::SUCCESS)
}
