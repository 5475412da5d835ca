//! `cohort omop`: what a researcher needs before writing an OMOP query:
//! the vocabulary (public: concept ids, the ICD-10-CM roll-ups) and an
//! OMOP study file to start from.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;
use cohort_engine::research::omop;
use serde::Serialize;

use crate::Cli;
use crate::cli_common::emit;

#[derive(Subcommand)]
pub(crate) enum OmopCmd {
    /// The vocabulary cohort's OMOP views use (`concept`, `concept_ancestor`,
    /// `concept_relationship`, `vocabulary`): printed, or written as Parquet
    /// files into `--out`. Public: no patient's data.
    Vocabulary {
        /// A directory to write `<table>.parquet` into.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// An OMOP CDM 5.4 study file, to start from.
    ExampleStudy,
    /// The CDM 5.4 tables cohort defines (clinical and vocabulary): each
    /// column with its type (integer, numeric, text, date, datetime) and
    /// whether it may be NULL.
    Tables,
}

pub(crate) fn omop(cli: &Cli, cmd: &OmopCmd) -> anyhow::Result<ExitCode> {
    match cmd {
        OmopCmd::Tables => {
            let tables: std::collections::BTreeMap<&str, Vec<(&str, &str, bool)>> =
                omop::cdm::CLINICAL
                    .iter()
                    .chain(omop::cdm::VOCABULARY.iter())
                    .map(|t| {
                        let columns = t
                            .columns
                            .iter()
                            .map(|(name, ty, required)| (*name, ty.category(), !required))
                            .collect();
                        (t.name, columns)
                    })
                    .collect();
            emit(cli, &tables, || {
                tables
                    .iter()
                    .map(|(name, columns)| {
                        let list: Vec<String> = columns
                            .iter()
                            .map(|(c, ty, nullable)| {
                                format!("{c} {ty}{}", if *nullable { "" } else { " NOT NULL" })
                            })
                            .collect();
                        format!("{name}: {}", list.join(", "))
                    })
                    .collect::<Vec<_>>()
                    .join("\n")
            });
            Ok(ExitCode::SUCCESS)
        }
        OmopCmd::ExampleStudy => {
            print!("{}", omop::EXAMPLE_STUDY);
            Ok(ExitCode::SUCCESS)
        }
        OmopCmd::Vocabulary { out } => {
            let vocabulary = omop::vocabulary::vocabulary()?;
            #[derive(Serialize)]
            struct Row<'a> {
                concept_id: i64,
                concept_name: &'a str,
                domain_id: &'a str,
                vocabulary_id: &'a str,
                concept_class_id: &'a str,
                concept_code: &'a str,
            }
            let mut written = Vec::new();
            if let Some(dir) = out {
                std::fs::create_dir_all(dir)
                    .map_err(|e| anyhow::anyhow!("creating {}: {e}", dir.display()))?;
                for (name, batch) in vocabulary.tables()? {
                    let path = dir.join(format!("{name}.parquet"));
                    cohort_engine::storage::tabular::write(&path, &batch)?;
                    written.push(path.display().to_string());
                }
            }
            let rows: Vec<Row> = vocabulary
                .concepts
                .iter()
                .map(|c| Row {
                    concept_id: c.id,
                    concept_name: &c.name,
                    domain_id: c.domain,
                    vocabulary_id: c.vocabulary,
                    concept_class_id: &c.class,
                    concept_code: &c.code,
                })
                .collect();
            emit(cli, &rows, || {
                let mut lines: Vec<String> = rows
                    .iter()
                    .map(|r| {
                        format!(
                            "{:>10}  {:<12} {:<13} {:<10} {}",
                            r.concept_id,
                            r.vocabulary_id,
                            r.domain_id,
                            r.concept_code,
                            r.concept_name
                        )
                    })
                    .collect();
                for path in &written {
                    lines.push(format!("wrote {path}"));
                }
                lines.join("\n")
            });
            Ok(ExitCode::SUCCESS)
        }
    }
}
