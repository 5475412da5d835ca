//! `cohort anonymize` and `cohort deidentify`: k-anonymous extracts and
//! Safe Harbor de-identification of the vault's projection.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use cohort_engine::{DataDir, records::projection};
use serde::Serialize;

use crate::Cli;
use crate::cli_common::{emit, unlock};

/// `cohort anonymize`: ARX-style batch anonymization for data stewards.
#[derive(clap::Args)]
pub(crate) struct AnonymizeArgs {
    /// The table to anonymize (.csv or .parquet).
    #[arg(long)]
    pub(crate) input: PathBuf,
    /// Quasi-identifier columns, comma-separated; released generalized.
    #[arg(long, value_delimiter = ',', required = true)]
    pub(crate) quasi_identifiers: Vec<String>,
    /// The sensitive column, released as is (needed for --l and --t).
    #[arg(long)]
    pub(crate) sensitive: Option<String>,
    /// Every equivalence class has at least k rows.
    #[arg(long)]
    pub(crate) k: usize,
    /// l-diversity of the sensitive column within each class.
    #[arg(long)]
    pub(crate) l: Option<f64>,
    /// Which l-diversity: distinct, entropy or recursive (with --c).
    #[arg(long, value_enum, default_value_t = LModel::Distinct)]
    pub(crate) l_model: LModel,
    /// The c of recursive (c, l)-diversity.
    #[arg(long)]
    pub(crate) c: Option<f64>,
    /// t-closeness: the largest earth mover's distance of a class from the whole table.
    #[arg(long)]
    pub(crate) t: Option<f64>,
    /// Generalization hierarchies (TOML).
    #[arg(long)]
    pub(crate) hierarchies: Option<PathBuf>,
    /// The largest fraction of rows that may be suppressed (e.g. 0.02).
    #[arg(long, default_value_t = 0.0)]
    pub(crate) suppression: f64,
    /// Strict cuts ordered values by value; relaxed may split equal values.
    #[arg(long, value_enum, default_value_t = ModeArg::Strict)]
    pub(crate) mode: ModeArg,
    /// Other columns to release unchanged, comma-separated (all others are dropped).
    #[arg(long, value_delimiter = ',')]
    pub(crate) keep: Vec<String>,
    /// Where to write the anonymized table (.csv or .parquet).
    #[arg(long)]
    pub(crate) out: PathBuf,
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub(crate) enum LModel {
    Distinct,
    Entropy,
    Recursive,
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub(crate) enum ModeArg {
    Strict,
    Relaxed,
}

/// `cohort deidentify`: Safe Harbor for a projection table or any file.
#[derive(clap::Args)]
pub(crate) struct DeidentifyArgs {
    /// A table of the data directory's projection (patients, observations, ...).
    #[arg(long, conflicts_with = "input", required_unless_present = "input")]
    pub(crate) table: Option<String>,
    /// Or a .csv / .parquet file (then --policy is required).
    #[arg(long, requires = "policy")]
    pub(crate) input: Option<PathBuf>,
    /// The column policy (TOML); defaults to the built-in one for --table.
    #[arg(long)]
    pub(crate) policy: Option<PathBuf>,
    /// The study the pseudonyms belong to (other studies get unlinkable ones).
    #[arg(long)]
    pub(crate) study: String,
    /// Where to write the de-identified table (.csv or .parquet).
    #[arg(long)]
    pub(crate) out: PathBuf,
}

pub(crate) fn anonymize(cli: &Cli, a: &AnonymizeArgs) -> anyhow::Result<ExitCode> {
    use cohort_anonymizer::mondrian::{self, Mode, Params, Request};
    use cohort_anonymizer::privacy_model::LDiversity;

    let started = std::time::Instant::now();
    let l_diversity = match (a.l, a.l_model) {
        (None, _) => None,
        (Some(l), LModel::Entropy) => Some(LDiversity::Entropy { l }),
        (Some(l), model) => {
            if l.fract() != 0.0 || l < 1.0 {
                bail!(
                    "--l {l}: distinct and recursive l-diversity need a whole number of at least 1"
                );
            }
            let l = l as usize;
            match model {
                LModel::Recursive => {
                    let c = a.c.context("recursive (c, l)-diversity needs --c")?;
                    Some(LDiversity::Recursive { c, l })
                }
                _ => Some(LDiversity::Distinct { l }),
            }
        }
    };
    let hierarchies = match &a.hierarchies {
        Some(p) => cohort_anonymizer::hierarchy::Hierarchies::load(p)?,
        None => Default::default(),
    };
    let input = cohort_engine::storage::tabular::read(&a.input)?;
    let read_seconds = started.elapsed().as_secs_f64();
    let request = Request {
        quasi_identifiers: a.quasi_identifiers.clone(),
        sensitive: a.sensitive.clone(),
        keep: a.keep.clone(),
        hierarchies,
        params: Params {
            k: a.k,
            l_diversity,
            t_closeness: a.t,
            suppression_limit: a.suppression,
            mode: match a.mode {
                ModeArg::Strict => Mode::Strict,
                ModeArg::Relaxed => Mode::Relaxed,
            },
        },
    };
    let partitioning = std::time::Instant::now();
    let out = mondrian::anonymize(&input, &request)?;
    let anonymize_seconds = partitioning.elapsed().as_secs_f64();
    let writing = std::time::Instant::now();
    cohort_engine::storage::tabular::write(&a.out, &out.batch)?;
    let write_seconds = writing.elapsed().as_secs_f64();

    #[derive(Serialize)]
    struct Output<'a> {
        #[serde(flatten)]
        report: &'a mondrian::Report,
        k: usize,
        out: &'a Path,
        /// Reading, anonymizing and writing.
        seconds: f64,
        /// Reading and typing the input.
        read_seconds: f64,
        /// Anonymizing alone (in memory).
        anonymize_seconds: f64,
        /// Writing the output, flushed to disk and renamed into place.
        write_seconds: f64,
    }
    let r = &out.report;
    let seconds = started.elapsed().as_secs_f64();
    emit(
        cli,
        &Output {
            report: r,
            k: a.k,
            out: &a.out,
            seconds,
            read_seconds,
            anonymize_seconds,
            write_seconds,
        },
        || {
            let mut lines = vec![
                format!(
                    "anonymized {} rows to {} in {seconds:.2} s ({anonymize_seconds:.2} s partitioning)",
                    r.rows_in,
                    a.out.display()
                ),
                format!(
                    "  released {} rows in {} classes (smallest {}, average {:.1}); suppressed {} ({:.2}%)",
                    r.rows_out,
                    r.classes,
                    r.min_class_size,
                    r.average_class_size,
                    r.suppressed,
                    100.0 * r.suppressed as f64 / r.rows_in.max(1) as f64
                ),
            ];
            if let (Some(l), Some(e)) = (r.l_distinct, r.l_entropy) {
                lines.push(format!(
                    "  sensitive values per class: at least {l} distinct, entropy l {e:.2}"
                ));
            }
            if let Some(t) = r.t {
                lines.push(format!(
                    "  largest distance from the overall distribution: t = {t:.3}"
                ));
            }
            lines.push(format!(
                "  information loss: NCP {:.4}, discernibility {:.3e}",
                r.ncp, r.discernibility
            ));
            for (c, v) in &r.ncp_by_column {
                lines.push(format!("    {c:<24} NCP {v:.4}"));
            }
            lines.join("\n")
        },
    );
    Ok(ExitCode::SUCCESS)
}

pub(crate) fn deidentify(cli: &Cli, dir: &DataDir, a: &DeidentifyArgs) -> anyhow::Result<ExitCode> {
    use cohort_anonymizer::deid::{self, Policy, PseudonymKey};

    let policy = match (&a.policy, &a.table) {
        (Some(p), _) => {
            let text =
                std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
            Policy::from_toml(&text).with_context(|| format!("policy {}", p.display()))?
        }
        (None, Some(t)) => {
            cohort_engine::records::safe_harbor::policy(t, chrono::Utc::now().date_naive())?
        }
        (None, None) => bail!("--input needs --policy"),
    };
    let vault = unlock(cli, dir, None)?;
    let table = match (&a.table, &a.input) {
        (Some(t), _) => projection::read_table(vault.conn(), t)?,
        (None, Some(p)) => cohort_engine::storage::tabular::read(p)?,
        (None, None) => bail!("give --table or --input"),
    };
    let master = vault.pseudonym_master()?;
    let key = PseudonymKey::derive(master.expose(), &a.study);
    let (out, report) = deid::deidentify(&table, &policy, &key)?;
    cohort_engine::storage::tabular::write(&a.out, &out)?;
    emit(cli, &report, || {
        let mut lines = vec![format!(
            "de-identified {} rows to {}{}",
            report.rows,
            a.out.display(),
            if report.safe_harbor {
                " (Safe Harbor)"
            } else {
                " (date shifts: not Safe Harbor on their own)"
            }
        )];
        for c in &report.columns {
            lines.push(format!(
                "  {:<16} {:<10} {} changed  {}{}",
                c.column,
                c.output_type,
                c.changed,
                c.action,
                c.identifier
                    .map(|k| format!("  [identifier: {k}]"))
                    .unwrap_or_default()
            ));
        }
        lines.join("\n")
    });
    Ok(ExitCode::SUCCESS)
}
