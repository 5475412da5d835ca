use arrow::array::{Float64Array, StringArray};

use super::*;
use cohort_anonymizer::accountant::Accountant;

/// Patient p0 has 50 visits, the first two of cost 100, the others of
/// cost 0; p1..=p30 one visit of cost 10 each; and `nulls` rows have no
/// patient.
fn visits(nulls: usize) -> RecordBatch {
    let mut patients: Vec<Option<String>> = vec![Some("p0".into()); 50];
    let mut costs = vec![0.0; 50];
    costs[..2].fill(100.0);
    for i in 1..=30 {
        patients.push(Some(format!("p{i}")));
        costs.push(10.0);
    }
    for _ in 0..nulls {
        patients.push(None);
        costs.push(10.0);
    }
    let schema = Schema::new(vec![
        Field::new("patient", DataType::Utf8, true),
        Field::new("cost", DataType::Float64, true),
    ]);
    RecordBatch::try_new(
        Arc::new(schema),
        vec![
            Arc::new(StringArray::from(patients)),
            Arc::new(Float64Array::from(costs)),
        ],
    )
    .unwrap()
}

fn request(statistic: Statistic, epsilon: f64) -> Request {
    Request {
        statistic,
        unit: Some("patient".into()),
        max_rows: 2,
        privacy: Privacy::Pure { epsilon },
        deadline: None,
        budget: None,
        query_id: None,
    }
}

fn budget(dir: &Path, epsilon: &str) -> PathBuf {
    let file = dir.join("budget.json");
    let total = cohort_anonymizer::accountant::Budget::Pure {
        epsilon: epsilon.parse().unwrap(),
    };
    save_budget(&file, &Accountant::new(total)).unwrap();
    file
}

#[test]
fn each_statistic_is_one_statement_over_a_one_table_policy() {
    let batch = visits(0);
    let sum = Statistic::Sum {
        column: "cost".into(),
        lower: 0.0,
        upper: 50.0,
    };
    let (study, query, door) = planned(&batch, &request(sum, 1.0)).unwrap();
    assert_eq!(query.sql, r#"SELECT SUM("cost") FROM "input""#);
    assert_eq!(door.remaining, Remaining::Options);
    assert!(door.check.is_some(), "null units are checked");
    let policy = &study.policy;
    assert_eq!(policy.privacy_unit, "patient");
    assert_eq!(policy.contribution.max_rows, 2);
    assert_eq!(
        policy.contribution.sampling,
        Sampling::FirstBy(vec!["dp_row".into()]),
        "a unit keeps its first rows in file order"
    );
    let cost = &policy.tables[TABLE].columns["cost"];
    assert_eq!((cost.lower, cost.upper), (Some(0.0), Some(50.0)));
    assert_eq!(policy.execution.release, ReleaseTiming::Immediate);

    // Without a unit, the row index is the unit: every row its own.
    let mut keys = request(
        Statistic::Keys {
            column: "patient".into(),
            delta: 1e-6,
        },
        1.0,
    );
    keys.unit = None;
    keys.deadline = Some(std::time::Duration::from_millis(250));
    let (study, query, door) = planned(&batch, &keys).unwrap();
    assert_eq!(
        query.sql,
        r#"SELECT "patient", COUNT(*) FROM "input" WHERE "patient" IS NOT NULL GROUP BY "patient""#
    );
    assert_eq!(query.delta, Some("0.000001".parse().unwrap()));
    assert!(door.check.is_none());
    assert_eq!(study.policy.privacy_unit, "dp_row");
    assert_eq!(study.policy.contribution.max_groups, 2);
    assert_eq!(study.policy.execution.release, ReleaseTiming::Deadline);
    assert_eq!(study.policy.execution.deadline_ms, 250);
}

#[test]
fn a_count_is_bounded_per_unit_and_noised_by_the_planned_path() {
    let outcome = release(&visits(0), &request(Statistic::Count, 50.0)).unwrap();
    assert_eq!(outcome.statistic, "count");
    assert_eq!(outcome.mechanism, "DiscreteLaplace");
    assert_eq!(outcome.charge, "ε = 50");
    // Sensitivity is max_rows: scale = 2 / 50.
    assert!((outcome.scale - 0.04).abs() < 1e-9, "{outcome:?}");
    // p0 keeps 2 of its 50 rows.
    let value = outcome.value.as_i64().unwrap();
    assert!((value - 32).abs() <= 2, "{outcome:?}");
    assert!(outcome.debit.is_none());
}

#[test]
fn a_unit_keeps_its_first_rows_in_file_order() {
    let mean = Statistic::Mean {
        column: "cost".into(),
        lower: 0.0,
        upper: 100.0,
    };
    // p0 keeps its 2 rows of 100, none of its 0s: (200 + 30 · 10) / 32.
    let outcome = release(&visits(0), &request(mean, 200.0)).unwrap();
    let value = outcome.value.as_f64().unwrap();
    assert!((value - 500.0 / 32.0).abs() < 0.5, "{outcome:?}");

    // A histogram: at most 2 rows in each of at most 2 groups per unit.
    // The column is read as text, as `cohort dp` always read it (10.0
    // is "10.0", not "10").
    let histogram = Statistic::Histogram {
        column: "cost".into(),
        domain: vec!["10.0".into(), "100.0".into(), "10".into()],
    };
    let outcome = release(&visits(0), &request(histogram, 400.0)).unwrap();
    assert_eq!(outcome.statistic, "histogram(cost) over 3 public values");
    let count = |value: &str| outcome.value[value].as_i64().unwrap();
    assert_eq!(
        (count("10.0"), count("100.0"), count("10")),
        (30, 2, 0),
        "{outcome:?}"
    );
}

#[test]
fn a_quantile_chooses_among_its_candidates() {
    let quantile = Statistic::Quantile {
        column: "cost".into(),
        alpha: 0.5,
        candidates: vec![5.0, 10.0, 50.0],
    };
    let outcome = release(&visits(0), &request(quantile, 100.0)).unwrap();
    assert_eq!(outcome.mechanism, "ExponentialQuantile");
    assert_eq!(outcome.value.as_f64(), Some(10.0), "{outcome:?}");
}

#[test]
fn a_null_unit_is_a_charged_failure_and_a_refusal_is_free() {
    let dir = tempfile::tempdir().unwrap();
    let file = budget(dir.path(), "1");
    let mut count = request(Statistic::Count, 0.25);
    count.budget = Some(file.clone());
    count.query_id = Some("nulls".into());
    let error = release(&visits(1), &count).unwrap_err();
    assert!(
        matches!(&error, Error::Charged { query_id, cost } if query_id == "nulls" && cost == "ε = 0.25"),
        "{error}"
    );
    assert_eq!(
        load_budget(&file).unwrap().remaining().to_string(),
        "ε = 0.75"
    );

    // Refused before anything is reserved: no such column, too much.
    let mut sum = request(
        Statistic::Sum {
            column: "weight".into(),
            lower: 0.0,
            upper: 1.0,
        },
        0.25,
    );
    sum.budget = Some(file.clone());
    let error = release(&visits(0), &sum).unwrap_err();
    assert!(error.to_string().contains("`weight`"), "{error}");
    count.query_id = None;
    count.privacy = Privacy::Pure { epsilon: 0.8 };
    let error = release(&visits(0), &count).unwrap_err();
    assert!(error.to_string().contains("budget exceeded"), "{error}");
    let accountant = load_budget(&file).unwrap();
    assert_eq!(accountant.remaining().to_string(), "ε = 0.75");
    assert_eq!(accountant.reserved().to_string(), "ε = 0");
}
