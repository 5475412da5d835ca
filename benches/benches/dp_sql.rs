//! Private SQL over 1,000,000 rows (250,000 patients, 4 visits each):
//! planning (parse, policy checks, rewrite, calibration) and execution
//! (contribution bounding, DataFusion's exact aggregate, noise), for a
//! GROUP BY over a public domain, a GROUP BY on derived age bands, a count
//! of distinct patients and a median.
//!
//! Run: `cargo bench -p cohort-benches --bench dp_sql`.

use std::collections::HashMap;
use std::hint::black_box;
use std::sync::Arc;

use arrow::array::{ArrayRef, Float64Array, Int64Array, RecordBatch, StringArray};
use cohort_anonymizer::accountant::{Amount, Charge};
use cohort_query_planner::{Planner, QueryOptions, StudyPolicy, sources};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

const PATIENTS: usize = 250_000;
const VISITS: usize = 4;

const POLICY: &str = r#"
privacy_unit = "patient_id"
[query]
epsilon = "1"
[contribution]
max_rows = 3
max_groups = 1
[tables.visits.columns]
patient_id = {}
sex = { domain = ["F", "M", "X"] }
age = { lower = 0, upper = 100 }
hba1c = { lower = 4, upper = 14 }
systolic = { lower = 80, upper = 220 }
"#;

fn table() -> RecordBatch {
    let mut rng = ChaCha8Rng::seed_from_u64(2026);
    let rows = PATIENTS * VISITS;
    let (mut id, mut sex, mut age, mut hba1c, mut systolic) = (
        Vec::with_capacity(rows),
        Vec::with_capacity(rows),
        Vec::with_capacity(rows),
        Vec::with_capacity(rows),
        Vec::with_capacity(rows),
    );
    for p in 0..PATIENTS {
        let patient_sex = ["F", "M", "X"][rng.random_range(0..3usize)];
        let patient_age = rng.random_range(0..100i64);
        for _ in 0..VISITS {
            id.push(format!("p{p:07}"));
            sex.push(patient_sex);
            age.push(patient_age);
            hba1c.push(rng.random_range(4.0..12.0f64));
            systolic.push(rng.random_range(90..200i64));
        }
    }
    RecordBatch::try_from_iter([
        ("patient_id", Arc::new(StringArray::from(id)) as ArrayRef),
        ("sex", Arc::new(StringArray::from(sex))),
        ("age", Arc::new(Int64Array::from(age))),
        ("hba1c", Arc::new(Float64Array::from(hba1c))),
        ("systolic", Arc::new(Int64Array::from(systolic))),
    ])
    .expect("a table")
}

fn private_sql(c: &mut Criterion) {
    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    let batch = table();
    let provider = sources::batches(batch.schema(), vec![batch]).expect("a table");
    let planner = Planner::new(
        StudyPolicy::from_toml(POLICY).expect("the policy"),
        HashMap::from([("visits".to_string(), provider)]),
    )
    .expect("a planner");
    let options = QueryOptions::new(Charge::Pure {
        epsilon: Amount::MAX,
    });

    let mut group = c.benchmark_group("private_sql_1m_rows");
    group.sample_size(10);
    group.throughput(Throughput::Elements((PATIENTS * VISITS) as u64));
    let queries = [
        (
            "group_by_sex_count_avg",
            "SELECT sex, COUNT(*) AS n, AVG(hba1c) AS m FROM visits GROUP BY sex",
        ),
        (
            "group_by_age_band",
            "SELECT FLOOR(age / 10) * 10 AS band, COUNT(DISTINCT patient_id) AS patients \
             FROM visits GROUP BY 1",
        ),
        (
            "count_distinct_patients",
            "SELECT COUNT(DISTINCT patient_id) FROM visits",
        ),
        ("median", "SELECT MEDIAN(systolic) FROM visits"),
    ];
    for (name, sql) in queries {
        group.bench_function(name, |b| {
            b.iter(|| {
                runtime.block_on(async {
                    let plan = planner.plan(black_box(sql), &options).await.expect("plans");
                    plan.execute().await.expect("runs")
                })
            })
        });
    }
    group.finish();

    let mut group = c.benchmark_group("private_sql_planning");
    group.bench_function("group_by_sex_count_avg", |b| {
        b.iter(|| {
            runtime.block_on(planner.plan(
                black_box("SELECT sex, COUNT(*) AS n, AVG(hba1c) AS m FROM visits GROUP BY sex"),
                &options,
            ))
        })
    });
    group.finish();
}

criterion_group!(benches, private_sql);
criterion_main!(benches);
