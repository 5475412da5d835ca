//! A small study: patients, observations and conditions, in memory, with a
//! policy, and helpers to plan and run queries.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{Array, AsArray, Float64Array, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Float64Type, Int64Type, Schema};
use cohort_anonymizer::accountant::{Amount, Charge};
use cohort_query_planner::{Planner, PrivateAnswer, PrivatePlan, QueryOptions, StudyPolicy};
use datafusion::catalog::TableProvider;
use datafusion::datasource::MemTable;

pub const PATIENTS: usize = 200;

pub const POLICY: &str = r#"
privacy_unit = "patient_id"

[query]
epsilon = "1"
max_epsilon = "5"
delta = "0.000001"

[contribution]
max_rows = 3
max_groups = 2

[tables.patients]
rows_per_unit = 1
[tables.patients.columns]
patient_id = {}
sex = { domain = ["F", "M", "X"] }
age = { lower = 0, upper = 100 }
zip3 = {}

[tables.observations.columns]
patient_id = {}
encounter_id = { identifier = true }
code = { domain = ["hba1c", "sbp"] }
value = { lower = 0, upper = 300 }
raw = {}

[tables.conditions.columns]
patient_id = {}
icd10 = {}
"#;

/// Patient `i`: `p000i`, sex F/M alternating (no X), age `20 + i % 60`,
/// zip3 one of 5; `i % 4 + 1` observations (hba1c then sbp alternating)
/// with values `10·(i % 7) + k`; patient 0 also has 40 extra observations
/// and 10 conditions, the rest `i % 3` conditions.
pub fn tables() -> HashMap<String, Arc<dyn TableProvider>> {
    let id = |i: usize| format!("p{i:04}");
    let mut p_id = Vec::new();
    let mut sex = Vec::new();
    let mut age = Vec::new();
    let mut zip = Vec::new();
    let mut ssn = Vec::new();
    let mut o_id = Vec::new();
    let mut encounter = Vec::new();
    let mut code = Vec::new();
    let mut value = Vec::new();
    let mut raw = Vec::new();
    let mut c_id = Vec::new();
    let mut icd = Vec::new();
    for i in 0..PATIENTS {
        p_id.push(id(i));
        sex.push(if i % 2 == 0 { "F" } else { "M" });
        age.push(20 + (i % 60) as i64);
        zip.push(["021", "100", "606", "941", "331"][i % 5]);
        ssn.push(format!("000-00-{i:04}"));
        for k in 0..observations_of(i) {
            o_id.push(id(i));
            encounter.push(format!("e{i}-{k}"));
            code.push(if k % 2 == 0 { "hba1c" } else { "sbp" });
            value.push(observation_value(i, k));
            raw.push(1000.0 * k as f64);
        }
        let conditions = if i == 0 { 10 } else { i % 3 };
        for k in 0..conditions {
            c_id.push(id(i));
            icd.push(if k == 0 && i % 2 == 0 {
                "E11.9".to_string()
            } else {
                format!("I{k}0")
            });
        }
    }
    let patients = batch(vec![
        ("patient_id", Arc::new(StringArray::from(p_id)) as _),
        ("sex", Arc::new(StringArray::from(sex)) as _),
        ("age", Arc::new(Int64Array::from(age)) as _),
        ("zip3", Arc::new(StringArray::from(zip)) as _),
        ("ssn", Arc::new(StringArray::from(ssn)) as _),
    ]);
    let observations = batch(vec![
        ("patient_id", Arc::new(StringArray::from(o_id)) as _),
        ("encounter_id", Arc::new(StringArray::from(encounter)) as _),
        ("code", Arc::new(StringArray::from(code)) as _),
        ("value", Arc::new(Float64Array::from(value)) as _),
        ("raw", Arc::new(Float64Array::from(raw)) as _),
    ]);
    let conditions = batch(vec![
        ("patient_id", Arc::new(StringArray::from(c_id)) as _),
        ("icd10", Arc::new(StringArray::from(icd)) as _),
    ]);
    HashMap::from([
        ("patients".to_string(), mem(patients)),
        ("observations".to_string(), mem(observations)),
        ("conditions".to_string(), mem(conditions)),
    ])
}

pub fn observations_of(i: usize) -> usize {
    i % 4 + 1 + if i == 0 { 40 } else { 0 }
}

pub fn observation_value(i: usize, k: usize) -> f64 {
    10.0 * (i % 7) as f64 + k as f64
}

fn batch(columns: Vec<(&str, arrow::array::ArrayRef)>) -> RecordBatch {
    let fields: Vec<Field> = columns
        .iter()
        .map(|(name, array)| Field::new(*name, array.data_type().clone(), true))
        .collect();
    RecordBatch::try_new(
        Arc::new(Schema::new(fields)),
        columns.into_iter().map(|(_, a)| a).collect(),
    )
    .unwrap()
}

/// Two partitions, so DataFusion repartitions by patient before bounding.
fn mem(batch: RecordBatch) -> Arc<dyn TableProvider> {
    let half = batch.num_rows() / 2;
    let parts = vec![
        vec![batch.slice(0, half)],
        vec![batch.slice(half, batch.num_rows() - half)],
    ];
    Arc::new(MemTable::try_new(batch.schema(), parts).unwrap())
}

pub fn planner_with(policy: &str) -> Planner {
    Planner::new(StudyPolicy::from_toml(policy).unwrap(), tables()).unwrap()
}

pub fn planner() -> Planner {
    planner_with(POLICY)
}

pub fn amount(text: &str) -> Amount {
    text.parse().unwrap()
}

/// A pure budget of `remaining` ε.
pub fn pure(remaining: &str) -> QueryOptions {
    QueryOptions::new(Charge::Pure {
        epsilon: amount(remaining),
    })
}

/// Options for near-exact answers: an ε so large that every noise (even
/// on fixed-point sums of squares) is zero with overwhelming probability
/// (the policy's cap is lifted).
pub fn exact() -> (Planner, QueryOptions) {
    exact_with(POLICY)
}

/// As [`exact`], for another policy.
pub fn exact_with(policy: &str) -> (Planner, QueryOptions) {
    let policy = policy.replace("max_epsilon = \"5\"", "max_epsilon = \"10000000000000\"");
    let mut options = QueryOptions::new(Charge::Approx {
        epsilon: amount("100000000000000"),
        delta: amount("0.5"),
    });
    options.epsilon = Some(amount("1000000000000"));
    options.delta = Some(amount("0.1"));
    (planner_with(&policy), options)
}

pub async fn plan(planner: &Planner, sql: &str, options: &QueryOptions) -> PrivatePlan {
    match planner.plan(sql, options).await {
        Ok(plan) => plan,
        Err(error) => panic!("planning {sql:?} failed: {error}"),
    }
}

pub async fn run(planner: &Planner, sql: &str, options: &QueryOptions) -> PrivateAnswer {
    plan(planner, sql, options).await.execute().await.unwrap()
}

/// The answer's rows as text cells.
pub fn rows(answer: &PrivateAnswer) -> Vec<Vec<String>> {
    let mut rows = Vec::new();
    for batch in &answer.batches {
        for row in 0..batch.num_rows() {
            rows.push(
                batch
                    .columns()
                    .iter()
                    .map(|c| {
                        datafusion::common::ScalarValue::try_from_array(c, row)
                            .unwrap()
                            .to_string()
                    })
                    .collect(),
            );
        }
    }
    rows
}

/// Column `index` of the answer as reals.
pub fn column(answer: &PrivateAnswer, index: usize) -> Vec<f64> {
    let mut out = Vec::new();
    for batch in &answer.batches {
        let array = batch.column(index);
        match array.data_type() {
            DataType::Int64 => out.extend(
                array
                    .as_primitive::<Int64Type>()
                    .iter()
                    .map(|v| v.unwrap() as f64),
            ),
            _ => {
                let cast = arrow::compute::cast(array, &DataType::Float64).unwrap();
                out.extend(
                    cast.as_primitive::<Float64Type>()
                        .iter()
                        .map(|v| v.unwrap()),
                );
            }
        }
        assert_eq!(array.null_count(), 0);
    }
    out
}

/// The plan's display, for snapshots and shape checks.
pub fn shape(plan: &PrivatePlan) -> String {
    plan.logical_plan().display_indent().to_string()
}
