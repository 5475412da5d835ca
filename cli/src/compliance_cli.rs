//! `cohort retention`, `cohort report` and `cohort patient disclosures`:
//! the operator's compliance duties (engine `compliance`), each decided by
//! the `--as` account's role on chain and audited.

use std::path::PathBuf;
use std::process::ExitCode;

use chrono::{DateTime, Utc};
use clap::{Args, Subcommand};
use cohort_engine::DataDir;
use cohort_engine::compliance::Compliance;

use crate::Cli;
use crate::cli_common::emit;
use crate::clinical_cli::{Ctx, ctx, sync};

#[derive(Subcommand)]
pub(crate) enum RetentionCmd {
    /// Keep a record type for N years after its last version was stored;
    /// `retention run` purges it after (admins only).
    Policy {
        /// The FHIR resource type: Observation, Condition, Encounter or MedicationRequest.
        resource_type: String,
        /// How many years.
        #[arg(long)]
        years: u32,
    },
    /// Place a patient's records under legal hold: no policy purges them.
    Hold {
        /// The patient (their account or vault id).
        patient: String,
        /// Why (a case reference; recorded in the audit log: no health data).
        #[arg(long)]
        reason: String,
    },
    /// Release a patient's legal hold.
    Release {
        /// The patient (their account or vault id).
        patient: String,
    },
    /// The policies and the legal holds.
    Show,
    /// Purge every record past its policy on the chain's clock, except
    /// those under legal hold (`cohort serve` runs this every
    /// `[retention] run_secs`).
    Run {
        /// Only count what would be purged.
        #[arg(long)]
        dry_run: bool,
    },
}

#[derive(Args)]
pub(crate) struct ReportArgs {
    /// The period's start (YYYY-MM-DD or RFC 3339; default: 1 January of this year).
    #[arg(long)]
    from: Option<String>,
    /// The period's end, excluded (YYYY-MM-DD or RFC 3339; default: now).
    #[arg(long)]
    to: Option<String>,
    /// Also write the report as a printable HTML page.
    #[arg(long)]
    html: Option<PathBuf>,
    /// Check the audit log's hash chain only, not its seals and anchors.
    #[arg(long)]
    unkeyed: bool,
    /// Do not re-hash every stored block (a read of the whole vault).
    #[arg(long)]
    skip_blocks: bool,
}

/// A date (`YYYY-MM-DD`, midnight UTC) or an RFC 3339 time.
fn parse_when(field: &str, text: &str) -> anyhow::Result<DateTime<Utc>> {
    if let Ok(t) = DateTime::parse_from_rfc3339(text) {
        return Ok(t.with_timezone(&Utc));
    }
    chrono::NaiveDate::parse_from_str(text, "%Y-%m-%d")
        .map(|d| d.and_hms_opt(0, 0, 0).expect("midnight").and_utc())
        .map_err(|_| {
            anyhow::anyhow!("{field}: `{text}` is neither a date (YYYY-MM-DD) nor an RFC 3339 time")
        })
}

pub(crate) fn retention(cli: &Cli, dir: &DataDir, cmd: &RetentionCmd) -> anyhow::Result<ExitCode> {
    let Ctx {
        vault,
        actor,
        client,
        rt,
    } = ctx(cli, dir)?;
    let service = Compliance::new(&vault, &client);
    match cmd {
        RetentionCmd::Policy {
            resource_type,
            years,
        } => {
            let p = rt.block_on(service.set_policy(&actor, resource_type, *years))?;
            emit(cli, &p, || {
                format!(
                    "{} kept {} years after their last version",
                    p.resource_type, p.years
                )
            });
        }
        RetentionCmd::Hold { patient, reason } => {
            let h = rt.block_on(service.hold(&actor, patient, reason))?;
            emit(cli, &h, || {
                format!("patient {} under legal hold ({})", h.patient_id, h.reason)
            });
        }
        RetentionCmd::Release { patient } => {
            rt.block_on(service.release_hold(&actor, patient))?;
            emit(cli, &serde_json::json!({ "released": patient }), || {
                format!("legal hold on {patient} released")
            });
        }
        RetentionCmd::Show => {
            let (policies, holds) = rt.block_on(service.retention(&actor))?;
            let shown = serde_json::json!({ "policies": policies, "holds": holds });
            emit(cli, &shown, || {
                let mut lines = Vec::new();
                for p in &policies {
                    lines.push(format!(
                        "{:<18} {} years (set by {} at {})",
                        p.resource_type, p.years, p.set_by, p.set_at
                    ));
                }
                if lines.is_empty() {
                    lines.push("no retention policy: every record is kept".into());
                }
                for h in &holds {
                    lines.push(format!(
                        "legal hold: {} ({}, by {} at {})",
                        h.patient_id, h.reason, h.set_by, h.set_at
                    ));
                }
                lines.join("\n")
            });
        }
        RetentionCmd::Run { dry_run } => {
            sync(dir, &rt)?;
            let now = rt.block_on(client.ledger().now())?;
            let now = DateTime::from_timestamp(now as i64, 0)
                .ok_or_else(|| anyhow::anyhow!("the chain's clock reads {now}"))?;
            let p = rt.block_on(service.run_retention(&actor, now, *dry_run))?;
            emit(cli, &p, || {
                let by: Vec<String> = p.records.iter().map(|(t, n)| format!("{n} {t}")).collect();
                format!(
                    "{} at {}: {} record(s) ({} version(s)){}; {} kept by a legal hold; {} block(s) deleted",
                    if p.dry_run { "would purge" } else { "purged" },
                    p.now,
                    p.records.values().sum::<u64>(),
                    p.versions,
                    if by.is_empty() {
                        String::new()
                    } else {
                        format!(": {}", by.join(", "))
                    },
                    p.held,
                    p.blocks_deleted
                )
            });
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub(crate) fn report(cli: &Cli, dir: &DataDir, args: &ReportArgs) -> anyhow::Result<ExitCode> {
    let now = Utc::now();
    let from = match &args.from {
        Some(t) => parse_when("--from", t)?,
        None => parse_when("--from", &now.format("%Y-01-01").to_string())?,
    };
    let to = match &args.to {
        Some(t) => parse_when("--to", t)?,
        None => now,
    };
    let Ctx {
        vault,
        actor,
        client,
        rt,
    } = ctx(cli, dir)?;
    sync(dir, &rt)?;
    let report = rt.block_on(Compliance::new(&vault, &client).report(
        dir,
        &actor,
        from,
        to,
        cohort_engine::compliance::report::Checks {
            keyed: !args.unkeyed,
            blocks: !args.skip_blocks,
        },
    ))?;
    if let Some(path) = &args.html {
        let page = cohort_engine::compliance::report::html(&report);
        cohort_engine::storage::fsutil::write_atomic(path, page.as_bytes())?;
    }
    emit(cli, &report, || {
        let i = &report.integrity;
        let reads: i64 = report.accesses.reads_by_purpose.values().sum();
        let mut text = format!(
            "regulatory report {} to {}\n  integrity: {}\n  records read: {} ({} under an emergency override), {} refused, {} exports\n  emergencies: {} opened, {} reviewed\n  studies: {}\n  patients erased: {}; record versions purged: {}; legal holds: {}",
            report.from,
            report.to,
            if i.clean {
                "nothing found wrong".to_string()
            } else {
                "PROBLEMS FOUND (see --json)".to_string()
            },
            reads,
            report.accesses.emergency_reads,
            report.accesses.refused,
            report.accesses.exports,
            report.emergencies.opened,
            report.emergencies.reviewed,
            report.studies.len(),
            report.erasure.patients_erased,
            report.erasure.versions_purged,
            report.erasure.legal_holds,
        );
        if let Some(path) = &args.html {
            text.push_str(&format!("\n  printable page: {}", path.display()));
        }
        text
    });
    Ok(if report.integrity.clean {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(3)
    })
}

pub(crate) fn disclosures(
    cli: &Cli,
    dir: &DataDir,
    patient: &str,
    since: Option<&str>,
) -> anyhow::Result<ExitCode> {
    let since = since.map(|t| parse_when("--since", t)).transpose()?;
    let Ctx {
        vault,
        actor,
        client,
        rt,
    } = ctx(cli, dir)?;
    sync(dir, &rt)?;
    let a = rt.block_on(Compliance::new(&vault, &client).disclosures(&actor, patient, since))?;
    emit(cli, &a, || {
        if a.disclosures.is_empty() {
            return format!(
                "no disclosures of {}'s records since {}",
                a.patient,
                when(a.since)
            );
        }
        let mut lines = vec![format!(
            "disclosures of {}'s records since {} (newest first):",
            a.patient,
            when(a.since)
        )];
        for d in &a.disclosures {
            lines.push(format!(
                "{}  {:<16} {:<10} {}  [{}; {}]",
                when(d.at),
                d.recipient,
                d.basis,
                d.what,
                d.why,
                d.evidence
            ));
        }
        lines.join("\n")
    });
    Ok(ExitCode::SUCCESS)
}

/// `cohort patient keys PATIENT`: who holds which epoch of their data key.
pub(crate) fn key_holders(cli: &Cli, dir: &DataDir, patient: &str) -> anyhow::Result<ExitCode> {
    let Ctx {
        vault,
        actor,
        client,
        rt,
    } = ctx(cli, dir)?;
    sync(dir, &rt)?;
    let h = rt.block_on(Compliance::new(&vault, &client).key_holders(&actor, patient))?;
    emit(cli, &h, || {
        let mut lines = vec![format!("data key epochs of patient {}:", h.patient_id)];
        for e in &h.epochs {
            lines.push(format!(
                "  epoch {}  since {}  ({})",
                e.epoch, e.created_at, e.reason
            ));
        }
        if h.copies.is_empty() {
            lines
                .push("no account holds a sealed copy (only the custodian's keystore copy)".into());
        } else {
            lines.push("sealed copies (epoch, holder, role):".into());
            for c in &h.copies {
                lines.push(format!(
                    "  {}  {} {:<10} sealed {}",
                    c.epoch,
                    c.holder_name.as_deref().unwrap_or(&c.holder),
                    c.role,
                    c.sealed_at
                ));
            }
        }
        lines.join("\n")
    });
    Ok(ExitCode::SUCCESS)
}

fn when(unix: i64) -> String {
    DateTime::from_timestamp(unix, 0)
        .map(|t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string())
        .unwrap_or_default()
}
