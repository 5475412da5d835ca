//! Mondrian k-anonymity on 1,000,000 synthetic rows with six
//! quasi-identifiers (two numeric, a date, a ZIP prefix hierarchy, a
//! categorical tree and a text set), k = 10, strict and relaxed.
//!
//! Run: `cargo bench -p cohort-benches --bench mondrian`.

use std::hint::black_box;
use std::sync::Arc;

use arrow::array::{ArrayRef, Date32Array, Float64Array, Int64Array, StringArray};
use arrow::record_batch::RecordBatch;
use cohort_anonymizer::hierarchy::Hierarchies;
use cohort_anonymizer::mondrian::{Mode, Params, Request, anonymize};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

const ROWS: usize = 1_000_000;

const HIERARCHIES: &str = r#"
[zip]
kind = "prefix"

[race]
kind = "tree"
[race.tree]
"*" = ["White", "Non-white"]
"Non-white" = ["Black", "Asian", "American Indian", "Pacific Islander", "Other"]
"#;

fn table() -> RecordBatch {
    let mut rng = ChaCha8Rng::seed_from_u64(2026);
    let races = [
        "White",
        "Black",
        "Asian",
        "American Indian",
        "Pacific Islander",
        "Other",
    ];
    let mut age = Vec::with_capacity(ROWS);
    let mut income = Vec::with_capacity(ROWS);
    let mut admitted = Vec::with_capacity(ROWS);
    let mut zip = Vec::with_capacity(ROWS);
    let mut race = Vec::with_capacity(ROWS);
    let mut sex = Vec::with_capacity(ROWS);
    let mut dx = Vec::with_capacity(ROWS);
    for _ in 0..ROWS {
        age.push(rng.random_range(0..100i64));
        income.push(rng.random_range(0.0..250_000.0f64).round());
        admitted.push(rng.random_range(18_000..20_500i32));
        zip.push(format!("{:05}", rng.random_range(0..100_000u32)));
        race.push(races[rng.random_range(0..races.len())]);
        sex.push(["F", "M", "X"][rng.random_range(0..3usize)]);
        dx.push(format!("E{:02}", rng.random_range(0..40u8)));
    }
    RecordBatch::try_from_iter([
        ("age", Arc::new(Int64Array::from(age)) as ArrayRef),
        ("income", Arc::new(Float64Array::from(income))),
        ("admitted", Arc::new(Date32Array::from(admitted))),
        ("zip", Arc::new(StringArray::from(zip))),
        ("race", Arc::new(StringArray::from(race))),
        ("sex", Arc::new(StringArray::from(sex))),
        ("dx", Arc::new(StringArray::from(dx))),
    ])
    .expect("columns of equal length")
}

fn mondrian(c: &mut Criterion) {
    let input = table();
    let mut group = c.benchmark_group("mondrian_1m_rows_6_qi_k10");
    group.sample_size(10);
    group.throughput(Throughput::Elements(ROWS as u64));
    for mode in [Mode::Strict, Mode::Relaxed] {
        let request = Request {
            quasi_identifiers: ["age", "income", "admitted", "zip", "race", "sex"]
                .map(String::from)
                .to_vec(),
            sensitive: Some("dx".into()),
            keep: vec![],
            hierarchies: Hierarchies::from_toml(HIERARCHIES).expect("valid hierarchies"),
            params: Params {
                mode,
                ..Params::k(10)
            },
        };
        let name = format!("{mode:?}").to_lowercase();
        group.bench_function(name, |b| {
            b.iter(|| black_box(anonymize(&input, &request).expect("anonymizes")))
        });
    }
    group.finish();
}

criterion_group!(benches, mondrian);
criterion_main!(benches);
