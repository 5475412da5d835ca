//! Runs one private SQL query repeatedly through cohort's query planner and
//! prints the answers and timings as JSON, for `benches/smartnoise/compare.py`.
//!
//! ```text
//! dp-sql-compare --data visits.parquet --table visits --policy policy.toml \
//!     --epsilon 1 --delta 1e-6 --runs 50 --query "SELECT sex, AVG(hba1c) AS m FROM visits GROUP BY sex"
//! ```
//!
//! The table is read into memory once, untimed (SmartNoise's pandas reader
//! likewise loads its DataFrame into SQLite once). Each run plans the query
//! (parse, check, rewrite, calibrate) and executes it, and both are timed:
//! a private plan is used once, and a repeated query is planned again.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use arrow::array::{Array, AsArray};
use arrow::datatypes::{DataType, Float64Type, Int64Type};
use clap::Parser;
use cohort_anonymizer::accountant::{Amount, Charge};
use cohort_query_planner::{Planner, QueryOptions, StudyPolicy, sources};
use serde_json::{Value, json};

#[derive(Parser)]
struct Args {
    /// The table's Parquet file.
    #[arg(long)]
    data: PathBuf,
    /// The table's name in the policy and the query.
    #[arg(long)]
    table: String,
    /// The study policy (TOML).
    #[arg(long)]
    policy: PathBuf,
    /// ε of the whole query.
    #[arg(long)]
    epsilon: f64,
    /// δ for key selection (unused when the keys are public).
    #[arg(long)]
    delta: f64,
    /// Repetitions.
    #[arg(long, default_value_t = 50)]
    runs: usize,
    /// The SQL.
    #[arg(long)]
    query: String,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let output = runtime.block_on(run(&args))?;
    println!("{output}");
    Ok(())
}

async fn run(args: &Args) -> anyhow::Result<Value> {
    let policy = StudyPolicy::from_toml(
        &std::fs::read_to_string(&args.policy)
            .with_context(|| format!("reading {}", args.policy.display()))?,
    )?;
    let table = cohort_engine::storage::tabular::read(&args.data)?;
    let provider = sources::batches(table.schema(), vec![table])?;
    let planner = Planner::new(policy, HashMap::from([(args.table.clone(), provider)]))?;
    let mut options = QueryOptions::new(Charge::Approx {
        epsilon: Amount::MAX,
        delta: Amount::MAX,
    });
    options.epsilon = Some(Amount::from_f64_display(args.epsilon)?);
    options.delta = Some(Amount::from_f64_display(args.delta)?);

    let started = Instant::now();
    planner.plan(&args.query, &options).await?;
    let plan_ms = started.elapsed().as_secs_f64() * 1e3;

    let mut times = Vec::with_capacity(args.runs);
    let mut answers = Vec::with_capacity(args.runs);
    let mut columns = Vec::new();
    for _ in 0..args.runs {
        let started = Instant::now();
        let answer = planner.plan(&args.query, &options).await?.execute().await?;
        times.push(started.elapsed().as_secs_f64() * 1e3);
        let mut rows = Vec::new();
        for batch in &answer.batches {
            columns = batch
                .schema()
                .fields()
                .iter()
                .map(|f| f.name().clone())
                .collect();
            for row in 0..batch.num_rows() {
                rows.push(
                    batch
                        .columns()
                        .iter()
                        .map(|c| cell(c.as_ref(), row))
                        .collect::<anyhow::Result<Vec<Value>>>()?,
                );
            }
        }
        answers.push(rows);
    }
    Ok(json!({ "plan_ms": plan_ms, "times_ms": times, "columns": columns, "answers": answers }))
}

fn cell(array: &dyn Array, row: usize) -> anyhow::Result<Value> {
    if array.is_null(row) {
        return Ok(Value::Null);
    }
    let one = array.slice(row, 1);
    Ok(match array.data_type() {
        t if t.is_integer() => arrow::compute::cast(&one, &DataType::Int64)?
            .as_primitive::<Int64Type>()
            .value(0)
            .into(),
        t if t.is_numeric() => arrow::compute::cast(&one, &DataType::Float64)?
            .as_primitive::<Float64Type>()
            .value(0)
            .into(),
        _ => arrow::compute::cast(&one, &DataType::Utf8)?
            .as_string::<i32>()
            .value(0)
            .into(),
    })
}
