//! The privacy invariant inside the planner: evaluation over patients' rows
//! is total (a failing row is NULL, never an error), bounded (no value past
//! the cap, a per-query memory pool), predicates on group keys stay above
//! the noise, and the release deadline is a function of public sizes.

use std::time::Duration;

use cohort_query_planner::{Error, Rule};

use crate::fixture::*;

/// Exact answers over patient 0 alone, where `fallible` is evaluated for
/// that patient only (the shape of an error oracle).
fn oracle(fallible: &str) -> String {
    format!(
        "SELECT COUNT(*) AS n FROM patients \
         WHERE CASE WHEN patient_id = 'p0000' THEN {fallible} ELSE NULL END IS NULL"
    )
}

/// Every operator and function that can fail, inside a `CASE` branch that
/// only one patient reaches, yields NULL for that patient: the query
/// answers, and counts every patient (NULL IS NULL).
#[tokio::test]
async fn every_fallible_operator_is_null_on_error_never_an_error() {
    let (planner, options) = exact();
    let fallible = [
        "age / (age - age)",
        "age % (age - age)",
        "CAST(sex AS INT)",
        "arrow_cast(sex, 'Int64')",
        "make_date(age, 13, 1)",
        "to_date(sex)",
        "substr(sex, 1, age - 1000)",
        "split_part(sex, 'x', age - age)",
        "power(age, 400)",
        "CAST(age AS DECIMAL(3, 2))",
        "CAST(zip3 AS DATE)",
        "date_trunc(sex, make_date(2000, 1, 1))",
        "-(CAST(-9223372036854775807 AS BIGINT) - age + 20)",
        "(9223372036854775807 * age) / 0",
        "sqrt(age - 1000)",
        "ln(age - age)",
    ];
    for f in fallible {
        let sql = oracle(f);
        let answer = planner
            .plan(&sql, &options)
            .await
            .unwrap_or_else(|e| panic!("{f}: refused at plan time: {e}"))
            .execute()
            .await
            .unwrap_or_else(|e| panic!("{f}: failed at run time: {e}"));
        let n = column(&answer, 0)[0];
        assert!(
            n >= 1.0 && n <= PATIENTS as f64,
            "{f}: counted {n}, outside [1, {PATIENTS}]"
        );
    }
}

/// The failing value is NULL, and only the failing rows are: a cast that
/// fails on every row counts nothing, one that fails on none counts all.
#[tokio::test]
async fn a_failing_row_is_null_and_only_it() {
    let (planner, options) = exact();
    let all = run(
        &planner,
        "SELECT COUNT(*) AS n FROM patients WHERE CAST(sex AS INT) IS NULL",
        &options,
    )
    .await;
    assert_eq!(column(&all, 0), [PATIENTS as f64]);
    let none = run(
        &planner,
        "SELECT COUNT(*) AS n FROM patients WHERE CAST(zip3 AS INT) IS NULL",
        &options,
    )
    .await;
    assert_eq!(column(&none, 0), [0.0]);
    // Division by zero for the rows of one age only.
    let some = run(
        &planner,
        "SELECT COUNT(*) AS n FROM patients WHERE 100 / (age - 20) IS NULL",
        &options,
    )
    .await;
    let age_20 = (0..PATIENTS).filter(|i| i % 60 == 0).count();
    assert_eq!(column(&some, 0), [age_20 as f64]);
}

/// Errors over the noisy output (post-processing) are NULL too: the answer
/// carries no value in an error message.
#[tokio::test]
async fn errors_over_noisy_outputs_are_null() {
    let (planner, options) = exact();
    let answer = run(
        &planner,
        "SELECT CASE WHEN n > 1 THEN CAST(CAST(n AS VARCHAR) || 'x' AS INT) ELSE 0 END AS v \
         FROM (SELECT COUNT(*) AS n FROM patients)",
        &options,
    )
    .await;
    let batch = &answer.batches[0];
    assert_eq!(batch.num_rows(), 1);
    assert!(batch.column(0).is_null(0));
}

/// A size-amplifying function with a literal length over the cap is
/// refused before anything runs; a computed one is NULL past the cap, at no
/// cost: asking for 1.4 TB of padding for one patient takes no longer than
/// asking for one byte.
#[tokio::test]
async fn size_amplifying_functions_are_capped() {
    let (planner, options) = exact();
    let refused = planner
        .plan(
            "SELECT COUNT(*) FROM patients WHERE length(lpad(sex, 300000000, 'b')) > 0",
            &options,
        )
        .await
        .unwrap_err();
    assert!(
        matches!(
            refused,
            Error::Refused {
                rule: Rule::Totality,
                ..
            }
        ),
        "{refused}"
    );
    assert!(refused.to_string().contains("lpad"), "{refused}");

    // 1.4 TB for patient 0: NULL, nothing allocated (unguarded, the
    // allocation aborts the process).
    let huge = oracle("length(lpad(sex, age * 20000000000 + 1400000000000, 'b'))");
    let answer = run(&planner, &huge, &options).await;
    assert_eq!(column(&answer, 0), [PATIENTS as f64], "NULL for everyone");

    // A value doubled through nested subqueries stops at the cap.
    let doubled = "SELECT COUNT(*) AS n FROM (SELECT patient_id, s || s AS s FROM \
        (SELECT patient_id, s || s AS s FROM (SELECT patient_id, s || s AS s FROM \
        (SELECT patient_id, lpad(sex, 1000, 'a') AS s FROM patients) a) b) c) d \
        WHERE s IS NULL";
    let answer = run(&planner, doubled, &options).await;
    assert_eq!(
        column(&answer, 0),
        [PATIENTS as f64],
        "8000 bytes is over the cap"
    );
    // replace() that would grow quadratically is NULL past the cap.
    let replaced = run(
        &planner,
        "SELECT COUNT(*) AS n FROM patients WHERE replace(lpad(sex, 1000, 'a'), '', lpad(sex, 1000, 'b')) IS NULL",
        &options,
    )
    .await;
    assert_eq!(column(&replaced, 0), [PATIENTS as f64]);
}

/// `HAVING key = ...` filters the released groups; it is never moved below
/// the noise.
#[tokio::test]
async fn a_predicate_on_a_group_key_stays_above_the_noise() {
    let (planner, options) = exact();
    let sql = "SELECT sex, COUNT(*) AS n FROM patients GROUP BY sex HAVING sex = 'F'";
    let answer = run(&planner, sql, &options).await;
    assert_eq!(
        rows(&answer),
        [["F".to_string(), (PATIENTS / 2).to_string()]],
        "only the group asked for, with its whole count"
    );
    let physical = plan(&planner, sql, &options)
        .await
        .physical_plan()
        .await
        .unwrap();
    let filter = physical.find("FilterExec").expect("a filter");
    let noise = physical.find("NoisyAggregateExec").expect("the noise");
    assert!(filter < noise, "the filter is above the noise:\n{physical}");
}

/// A query over its memory pool ends with an error (the charged outcome of
/// the research path), not an abort.
#[tokio::test]
async fn a_query_past_its_memory_pool_fails_cleanly() {
    let policy = POLICY.replace(
        "[contribution]",
        "[execution]\nmemory_mb = 1\n[contribution]",
    );
    let (planner, options) = exact_with(&policy);
    let sql = "SELECT COUNT(*) AS n FROM observations o JOIN observations p \
               ON o.patient_id = p.patient_id JOIN observations q ON o.patient_id = q.patient_id \
               JOIN conditions c ON o.patient_id = c.patient_id";
    let error = plan(&planner, sql, &options)
        .await
        .execute()
        .await
        .unwrap_err();
    assert!(error.to_string().contains("Resources exhausted"), "{error}");
}

/// The deadline is a function of the plan and the public population only.
#[tokio::test]
async fn the_deadline_depends_on_public_sizes_only() {
    let (planner, options) = exact();
    let one = plan(&planner, "SELECT COUNT(*) FROM patients", &options).await;
    let joined = plan(
        &planner,
        "SELECT COUNT(*) FROM patients p JOIN conditions c ON p.patient_id = c.patient_id \
         WHERE c.icd10 = 'B20'",
        &options,
    )
    .await;
    assert_eq!(one.deadline(0), Some(Duration::from_secs(1)), "the base");
    // 100 µs per patient and study table (3 tables), whatever the query.
    assert_eq!(
        one.deadline(10_000),
        Some(Duration::from_secs(1) + Duration::from_millis(3_000))
    );
    assert_eq!(joined.deadline(10_000), one.deadline(10_000));
    let immediate = POLICY.replace(
        "[contribution]",
        "[execution]\nrelease = \"immediate\"\n[contribution]",
    );
    let (planner, options) = exact_with(&immediate);
    let plan = plan(&planner, "SELECT COUNT(*) FROM patients", &options).await;
    assert_eq!(plan.deadline(10_000), None);
}

/// `SELECT DISTINCT key ... WHERE <pred>` is free only when its answer is
/// the key's whole public domain, whatever the predicate (nothing about the
/// data is released); a key without a public domain is chosen by DP key
/// selection and charged.
#[tokio::test]
async fn a_distinct_key_is_free_only_when_its_answer_is_the_public_domain() {
    let (planner, options) = exact();
    for predicate in ["sex = 'F'", "age > 1000", "zip3 = '021'"] {
        let sql = format!("SELECT DISTINCT sex FROM patients WHERE {predicate}");
        let plan = plan(&planner, &sql, &options).await;
        assert_eq!(plan.cost().to_string(), "(ε = 0, δ = 0)", "{sql}");
        let answer = plan.execute().await.unwrap();
        assert_eq!(rows(&answer), [["F"], ["M"], ["X"]], "{sql}");
    }
    let plan = plan(
        &planner,
        "SELECT DISTINCT zip3 FROM patients WHERE sex = 'F'",
        &options,
    )
    .await;
    assert_ne!(
        plan.cost().to_string(),
        "(ε = 0, δ = 0)",
        "keys without a public domain are selected with DP, and paid for"
    );
}

/// A guarded expression may be NULL where the unguarded one was not: the
/// plan's schemas follow (DataFusion checks each input's nullability), even
/// where its optimizer factors an expression out (`GROUP BY 1` over the
/// same expression as the SELECT list), over columns declared NOT NULL.
#[tokio::test]
async fn guarded_expressions_keep_the_plans_schemas_consistent() {
    use std::collections::HashMap;
    use std::sync::Arc;

    use arrow::array::{Float64Array, Int64Array, RecordBatch, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};
    use cohort_query_planner::{Planner, StudyPolicy};
    use datafusion::datasource::MemTable;

    let schema = Arc::new(Schema::new(vec![
        Field::new("patient_id", DataType::Utf8, false),
        Field::new("age", DataType::Int64, false),
        Field::new("sex", DataType::Utf8, false),
        Field::new("hba1c", DataType::Float64, false),
    ]));
    let ids: Vec<String> = (0..100).map(|i| format!("p{i}")).collect();
    let batch = RecordBatch::try_new(
        Arc::clone(&schema),
        vec![
            Arc::new(StringArray::from(ids)),
            Arc::new(Int64Array::from(
                (0..100).map(|i| 20 + i % 50).collect::<Vec<i64>>(),
            )),
            Arc::new(StringArray::from(
                (0..100).map(|i| ["F", "M"][i % 2]).collect::<Vec<_>>(),
            )),
            Arc::new(Float64Array::from(
                (0..100).map(|i| 4.0 + (i % 9) as f64).collect::<Vec<_>>(),
            )),
        ],
    )
    .unwrap();
    let table = Arc::new(MemTable::try_new(schema, vec![vec![batch]]).unwrap());
    let policy = StudyPolicy::from_toml(
        r#"
privacy_unit = "patient_id"
[query]
epsilon = "1000000"
max_epsilon = "1000000"
[tables.visits.columns]
patient_id = {}
age = { lower = 0, upper = 120 }
sex = { domain = ["F", "M"] }
hba1c = { lower = 4, upper = 14 }
"#,
    )
    .unwrap();
    let planner = Planner::new(
        policy,
        HashMap::from([(
            "visits".to_string(),
            table as Arc<dyn datafusion::catalog::TableProvider>,
        )]),
    )
    .unwrap();
    let options = pure("10000000");
    for sql in [
        "SELECT sex, COUNT(*) AS n, AVG(hba1c) AS m FROM visits GROUP BY sex",
        "SELECT FLOOR(age / 10) * 10 AS band, COUNT(DISTINCT patient_id) AS n FROM visits GROUP BY 1",
        "SELECT FLOOR(age / 10) * 10 AS band, COUNT(*) AS n FROM visits GROUP BY FLOOR(age / 10) * 10",
        "SELECT COUNT(*) FROM (SELECT patient_id, age / 2 AS a, age / 2 + 1 AS b FROM visits) t WHERE a < b",
    ] {
        let answer = plan(&planner, sql, &options).await.execute().await;
        assert!(answer.is_ok(), "{sql}: {}", answer.unwrap_err());
    }
}
