//! Which of OHDSI's Achilles analyses cohort answers under DP over an OMOP
//! view, with what error, and why each other one is refused.
//!
//! A synthetic population is generated and ingested (no ledger: this
//! measures the planner, not the research path's bookkeeping), mapped to
//! OMOP CDM 5.4 as a study view maps it (Safe Harbor dates), and every
//! Achilles analysis is translated from OHDSI's SQL dialect, planned under
//! the example OMOP study's policy (every CDM column approved: concept
//! columns with the vocabulary as their domain, other ids as identifiers)
//! and run at the study's per-query ε. Its `count_value` per stratum is
//! compared with the exact answer (the same SQL run by DataFusion with no
//! privacy) over the same tables. Small-cell rules are off, so the error
//! is DP's and the bounding's alone.
//!
//! ```text
//! benches/achilles/fetch.sh       # the Achilles SQL, from PyPI (duckcdm 0.4.7)
//! cargo run --release --bin achilles-coverage -- --sql target/achilles/sql --patients 2000
//! ```

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;

use arrow::array::RecordBatch;
use clap::Parser;
use cohort_anonymizer::accountant::{Amount, Charge};
use cohort_anonymizer::deid::PseudonymKey;
use cohort_engine::research::StudyFile;
use cohort_engine::research::omop::{self, Dates, cdm};
use cohort_query_planner::policy::{ColumnPolicy, DomainFrom, ReleaseTiming};
use cohort_query_planner::{Planner, QueryOptions, sources};
use datafusion::prelude::SessionContext;

#[derive(Parser)]
struct Args {
    /// The Achilles SQL directory (`benches/achilles/fetch.sh` prints it).
    #[arg(long)]
    sql: PathBuf,
    /// Synthetic patients.
    #[arg(long, default_value_t = 2_000)]
    patients: u64,
    /// ε of each query (the example study's per-query default).
    #[arg(long, default_value = "0.5")]
    epsilon: String,
}

/// The example study's policy with every CDM column approved.
fn wide_policy() -> anyhow::Result<cohort_query_planner::StudyPolicy> {
    let mut policy = StudyFile::parse(omop::EXAMPLE_STUDY)?.scope;
    policy.execution.release = ReleaseTiming::Immediate;
    policy.disclosure = None;
    for table in cdm::CLINICAL.iter() {
        let declared = policy.tables.entry(table.name.to_string()).or_default();
        for (column, _, _) in table.columns {
            if declared.columns.contains_key(*column) {
                continue;
            }
            let c = if column.ends_with("_concept_id") {
                ColumnPolicy {
                    domain_from: Some(DomainFrom {
                        table: "concept".into(),
                        column: "concept_id".into(),
                        filter: BTreeMap::new(),
                    }),
                    ..ColumnPolicy::default()
                }
            } else if column.ends_with("_id") {
                ColumnPolicy {
                    identifier: true,
                    ..ColumnPolicy::default()
                }
            } else {
                match *column {
                    "month_of_birth" => bounds(1.0, 12.0),
                    "day_of_birth" => bounds(1.0, 31.0),
                    "refills" | "days_supply" => bounds(0.0, 365.0),
                    "quantity" | "range_low" | "range_high" => bounds(0.0, 1_000.0),
                    _ => ColumnPolicy::default(),
                }
            };
            declared.columns.insert(column.to_string(), c);
        }
    }
    Ok(policy)
}

fn bounds(lower: f64, upper: f64) -> ColumnPolicy {
    ColumnPolicy {
        lower: Some(lower),
        upper: Some(upper),
        ..ColumnPolicy::default()
    }
}

/// Stratum → count_value of an answer (strata: every column but
/// `analysis_id` and `count_value`, as text).
fn counts(batches: &[RecordBatch]) -> Option<HashMap<String, f64>> {
    let mut out = HashMap::new();
    for batch in batches {
        let schema = batch.schema();
        let count = schema.index_of("count_value").ok()?;
        for row in 0..batch.num_rows() {
            let mut key = Vec::new();
            for (i, field) in schema.fields().iter().enumerate() {
                if i == count || field.name() == "analysis_id" {
                    continue;
                }
                let v =
                    datafusion::common::ScalarValue::try_from_array(batch.column(i), row).ok()?;
                key.push(v.to_string());
            }
            let v = datafusion::common::ScalarValue::try_from_array(batch.column(count), row)
                .ok()?
                .cast_to(&arrow::datatypes::DataType::Float64)
                .ok()?;
            let datafusion::common::ScalarValue::Float64(value) = v else {
                return None;
            };
            out.insert(key.join("|"), value.unwrap_or(0.0));
        }
    }
    Some(out)
}

fn short(text: &str) -> String {
    let line: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    let line = line.replace('|', "/");
    if line.chars().count() > 150 {
        format!("{}…", line.chars().take(150).collect::<String>())
    } else {
        line
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let tmp = tempfile::tempdir()?;
    let (_dir, vault) = cohort_benches::ingested(tmp.path(), args.patients, 7)?;
    let ids: Vec<String> = vault
        .conn()
        .prepare("SELECT patient_id FROM proj_patients")?
        .query_map([], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    let only: HashSet<&str> = ids.iter().map(String::as_str).collect();

    let policy = wide_policy()?;
    let key = PseudonymKey::derive(&[7; 32], "achilles coverage");
    let today = chrono::Utc::now().date_naive();
    let view = omop::build(
        vault.conn(),
        &policy.tables,
        &key,
        Some(&only),
        today,
        Dates::SafeHarbor,
    )?;
    let public = omop::vocabulary::vocabulary()?.tables()?;
    let mut providers = HashMap::new();
    let exact = SessionContext::new();
    for (name, batch) in &view {
        providers.insert(
            name.clone(),
            sources::batches(batch.schema(), vec![batch.clone()])?,
        );
        exact.register_batch(name.as_str(), batch.clone())?;
    }
    for (name, batch) in &public {
        exact.register_batch(name.as_str(), batch.clone())?;
    }
    let planner = Planner::with_public_tables(policy, providers, public)?;
    let epsilon: Amount = args.epsilon.parse()?;
    let options = QueryOptions {
        epsilon: Some(epsilon),
        delta: Some("0.000001".parse()?),
        ..QueryOptions::new(Charge::Approx {
            epsilon: "1000".parse()?,
            delta: "0.5".parse()?,
        })
    };

    let mut files: Vec<(u32, PathBuf)> = std::fs::read_dir(&args.sql)?
        .flatten()
        .filter_map(|e| {
            let path = e.path();
            let id = path.file_stem()?.to_str()?.parse().ok()?;
            Some((id, path))
        })
        .collect();
    files.sort();
    let runtime = tokio::runtime::Runtime::new()?;
    let mut answered = 0;
    let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
    let mut lines = Vec::new();
    for (id, path) in &files {
        let text = std::fs::read_to_string(path)?;
        let description = text
            .lines()
            .next()
            .and_then(|l| l.strip_prefix("--"))
            .map(|l| {
                l.trim()
                    .trim_start_matches(char::is_numeric)
                    .trim()
                    .to_string()
            })
            .unwrap_or_default();
        let outcome = runtime.block_on(async {
            let sql = cohort_query_planner::dialect::ohdsi(&text, &BTreeMap::new())
                .map_err(|e| ("translation".to_string(), e.to_string()))?;
            let plan = planner.plan(&sql, &options).await.map_err(|e| {
                (
                    e.rule().map_or("plan", |r| r.name()).to_string(),
                    e.to_string(),
                )
            })?;
            let noisy = plan
                .execute()
                .await
                .map_err(|e| ("execution".to_string(), e.to_string()))?;
            let truth = exact
                .sql(&sql)
                .await
                .map_err(|e| ("exact".to_string(), e.to_string()))?
                .collect()
                .await
                .map_err(|e| ("exact".to_string(), e.to_string()))?;
            Ok::<_, (String, String)>((noisy.batches, truth))
        });
        match outcome {
            Ok((noisy, truth)) => {
                answered += 1;
                let error = match (counts(&noisy), counts(&truth)) {
                    (Some(dp), Some(exact)) if !exact.is_empty() => {
                        let mut errors: Vec<f64> = exact
                            .iter()
                            .map(|(k, v)| (dp.get(k).copied().unwrap_or(0.0) - v).abs())
                            .collect();
                        errors.sort_by(f64::total_cmp);
                        let mean: f64 = exact.values().sum::<f64>() / exact.len() as f64;
                        format!(
                            "{} strata, median absolute error {:.1}, mean count {:.1}",
                            exact.len(),
                            errors[errors.len() / 2],
                            mean
                        )
                    }
                    (Some(_), Some(_)) => "no stratum in the data".into(),
                    _ => "answered (no count_value)".into(),
                };
                lines.push(format!(
                    "| {id} | {} | answered | {error} |",
                    short(&description)
                ));
            }
            Err((rule, message)) => {
                *reasons.entry(rule.clone()).or_default() += 1;
                lines.push(format!(
                    "| {id} | {} | refused: {rule} | {} |",
                    short(&description),
                    short(&message)
                ));
            }
        }
    }
    println!(
        "Achilles analyses answered under DP: {answered} of {} ({} patients, ε = {} per query, δ = 1e-6 for key selection)\n",
        files.len(),
        args.patients,
        args.epsilon
    );
    println!("refused, by rule:");
    for (rule, n) in &reasons {
        println!("- {rule}: {n}");
    }
    println!("\n| analysis | description | outcome | error / reason |\n|---|---|---|---|");
    for line in lines {
        println!("{line}");
    }
    Ok(())
}
