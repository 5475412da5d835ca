//! Every refused form: the rule it breaks and the fragment it names.

use cohort_query_planner::{Error, Rule};

use crate::fixture::*;

async fn refused(sql: &str) -> Error {
    match planner().plan(sql, &pure("10")).await {
        Ok(plan) => panic!("{sql:?} was planned:\n{}", plan.explain()),
        Err(error) => error,
    }
}

async fn assert_refused(sql: &str, rule: Rule, fragment: &str) {
    let error = refused(sql).await;
    assert_eq!(error.rule(), Some(rule), "{sql:?}: {error}");
    let message = error.to_string();
    assert!(
        message.contains(fragment),
        "{sql:?}: {fragment:?} not in {message:?}"
    );
    assert!(message.contains(rule.name()), "{message}");
}

#[tokio::test]
async fn row_level_output_is_refused() {
    for sql in [
        "SELECT * FROM patients",
        "SELECT sex, age FROM patients WHERE age > 30",
        "SELECT o.value FROM observations o JOIN patients p ON o.patient_id = p.patient_id",
        "WITH x AS (SELECT age FROM patients) SELECT age FROM x ORDER BY age",
        "SELECT age FROM patients UNION ALL SELECT age FROM patients",
    ] {
        assert_refused(sql, Rule::RowLevelOutput, "SELECT").await;
    }
    // LIMIT on rows of patients is still row-level output.
    assert_refused(
        "SELECT age FROM patients LIMIT 5",
        Rule::RowLevelOutput,
        "age",
    )
    .await;
}

#[tokio::test]
async fn aggregates_without_bounds_or_mechanism_are_refused() {
    assert_refused(
        "SELECT SUM(raw) FROM observations",
        Rule::UnboundedAggregate,
        "observations.raw",
    )
    .await;
    assert_refused(
        "SELECT AVG(n) FROM (SELECT patient_id, COUNT(*) AS n FROM observations GROUP BY patient_id) t",
        Rule::UnboundedAggregate,
        "t.n",
    )
    .await;
    assert_refused(
        "SELECT MAX(age) FROM patients",
        Rule::UnsupportedAggregate,
        "max(patients.age)",
    )
    .await;
    assert_refused(
        "SELECT MIN(value) FROM observations",
        Rule::UnsupportedAggregate,
        "quantile",
    )
    .await;
    assert_refused(
        "SELECT SUM(DISTINCT age) FROM patients",
        Rule::UnsupportedAggregate,
        "DISTINCT",
    )
    .await;
    assert_refused(
        "SELECT PERCENTILE_CONT(age, 2) FROM patients",
        Rule::UnsupportedAggregate,
        "between 0 and 1",
    )
    .await;
}

#[tokio::test]
async fn functions_off_the_allow_list_are_refused() {
    assert_refused(
        "SELECT COUNT(*) FROM patients WHERE random() < 0.5",
        Rule::Function,
        "random()",
    )
    .await;
    assert_refused(
        "SELECT my_udf(age), COUNT(*) FROM patients GROUP BY 1",
        Rule::Function,
        "my_udf(age)",
    )
    .await;
    assert_refused(
        "SELECT md5(patient_id), COUNT(*) FROM patients GROUP BY 1",
        Rule::Function,
        "line 1, column 8",
    )
    .await;
    assert_refused(
        "SELECT ARRAY_AGG(age) FROM patients",
        Rule::Function,
        "ARRAY_AGG",
    )
    .await;
}

#[tokio::test]
async fn window_functions_are_refused() {
    assert_refused(
        "SELECT COUNT(*) OVER () FROM patients",
        Rule::WindowFunction,
        "OVER",
    )
    .await;
    assert_refused(
        "SELECT AVG(c) FROM (SELECT ROW_NUMBER() OVER (PARTITION BY sex ORDER BY age) AS c FROM patients) t",
        Rule::WindowFunction,
        "ROW_NUMBER",
    )
    .await;
}

#[tokio::test]
async fn tables_and_columns_outside_the_scope_are_refused() {
    assert_refused(
        "SELECT COUNT(*) FROM information_schema.tables",
        Rule::Scope,
        "system tables",
    )
    .await;
    assert_refused(
        "SELECT COUNT(*) FROM pg_catalog.pg_class",
        Rule::Scope,
        "pg_catalog.pg_class",
    )
    .await;
    assert_refused("SELECT COUNT(*) FROM billing", Rule::Scope, "`billing`").await;
    assert_refused("SELECT COUNT(ssn) FROM patients", Rule::Scope, "ssn").await;
    assert_refused(
        "SELECT COUNT(*) FROM patients WHERE ssn = '1'",
        Rule::Scope,
        "approved",
    )
    .await;
    assert_refused(
        "SELECT COUNT(*) FROM read_parquet('/etc/passwd')",
        Rule::Scope,
        "table functions",
    )
    .await;
}

#[tokio::test]
async fn grouping_by_the_unit_or_an_identifier_is_refused() {
    assert_refused(
        "SELECT patient_id, COUNT(*) FROM observations GROUP BY patient_id",
        Rule::GroupByIdentifier,
        "GROUP BY observations.patient_id",
    )
    .await;
    assert_refused(
        "SELECT substr(patient_id, 1, 4) AS p, COUNT(*) FROM patients GROUP BY substr(patient_id, 1, 4)",
        Rule::GroupByIdentifier,
        "patients.patient_id",
    )
    .await;
    assert_refused(
        "WITH x AS (SELECT patient_id AS who, age FROM patients) \
         SELECT y, AVG(age) FROM (SELECT lower(who) AS y, age FROM x) s GROUP BY y",
        Rule::GroupByIdentifier,
        "the privacy unit",
    )
    .await;
    assert_refused(
        "SELECT encounter_id, COUNT(*) FROM observations GROUP BY encounter_id",
        Rule::GroupByIdentifier,
        "near-unique",
    )
    .await;
}

#[tokio::test]
async fn sampling_before_aggregation_is_refused() {
    assert_refused(
        "SELECT COUNT(*) FROM (SELECT * FROM patients LIMIT 10) t",
        Rule::SamplingBeforeAggregation,
        "LIMIT",
    )
    .await;
    assert_refused(
        "SELECT AVG(age) FROM (SELECT age FROM patients ORDER BY age LIMIT 50 OFFSET 10) t",
        Rule::SamplingBeforeAggregation,
        "LIMIT",
    )
    .await;
    assert_refused(
        "SELECT COUNT(*) FROM patients TABLESAMPLE BERNOULLI (10)",
        Rule::SamplingBeforeAggregation,
        "TABLESAMPLE",
    )
    .await;
}

#[tokio::test]
async fn joins_that_pair_different_patients_are_refused() {
    assert_refused(
        "SELECT COUNT(*) FROM observations o JOIN conditions c ON o.code = c.icd10",
        Rule::JoinNotOnUnit,
        "o.patient_id = c.patient_id",
    )
    .await;
    assert_refused(
        "SELECT COUNT(*) FROM patients a CROSS JOIN patients b",
        Rule::JoinNotOnUnit,
        "same patient",
    )
    .await;
    assert_refused(
        "SELECT COUNT(*) FROM patients WHERE zip3 IN (SELECT icd10 FROM conditions)",
        Rule::JoinNotOnUnit,
        "LeftSemi",
    )
    .await;
    assert_refused(
        "SELECT COUNT(*) FROM observations WHERE value > (SELECT AVG(value) FROM observations)",
        Rule::JoinNotOnUnit,
        "over other patients' rows",
    )
    .await;
    assert_refused(
        "SELECT sex, (SELECT COUNT(*) FROM conditions) AS c, COUNT(*) FROM patients GROUP BY sex",
        Rule::JoinNotOnUnit,
        "over other patients' rows",
    )
    .await;
    assert_refused(
        "SELECT COUNT(*) FROM patients a FULL JOIN observations b ON a.patient_id = b.patient_id",
        Rule::UnsupportedSql,
        "FULL JOIN",
    )
    .await;
}

#[tokio::test]
async fn statements_other_than_one_select_are_refused() {
    assert_refused("DELETE FROM patients", Rule::UnsupportedSql, "only SELECT").await;
    assert_refused(
        "CREATE TABLE x AS SELECT 1",
        Rule::UnsupportedSql,
        "only SELECT",
    )
    .await;
    assert_refused(
        "COPY patients TO '/tmp/x.csv'",
        Rule::UnsupportedSql,
        "only SELECT",
    )
    .await;
    assert_refused(
        "EXPLAIN SELECT COUNT(*) FROM patients",
        Rule::UnsupportedSql,
        "only SELECT",
    )
    .await;
    assert_refused(
        "SELECT COUNT(*) FROM patients; SELECT COUNT(*) FROM patients",
        Rule::UnsupportedSql,
        "one SELECT at a time",
    )
    .await;
    assert_refused(
        "SELECT COUNT(*) AS __cohort_unit FROM patients",
        Rule::UnsupportedSql,
        "reserved",
    )
    .await;
    assert_refused(
        "WITH RECURSIVE r AS (SELECT 1 AS n UNION ALL SELECT n + 1 FROM r) SELECT COUNT(*) FROM r",
        Rule::UnsupportedSql,
        "recursive",
    )
    .await;
    assert_refused(
        "SELECT sex, age, COUNT(*) FROM patients GROUP BY GROUPING SETS ((sex), (age))",
        Rule::UnsupportedSql,
        "GROUPING SETS",
    )
    .await;
    let syntax = refused("SELEC COUNT(*) FROM patients").await;
    assert!(matches!(syntax, Error::Syntax(_)), "{syntax}");
}
