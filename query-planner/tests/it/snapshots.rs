//! The rewritten plans of representative queries, pinned as snapshots
//! (`INSTA_UPDATE=always cargo test --release -p cohort-query-planner`
//! rewrites them; review the diff).

use crate::fixture::*;

async fn snapshot(name: &str, sql: &str) {
    let (planner, options) = exact();
    let plan = plan(&planner, sql, &options).await;
    insta::assert_snapshot!(name, format!("{sql}\n\n{}", shape(&plan)));
    // DataFusion's optimizer keeps the exact statistics the noise expects.
    plan.execute().await.unwrap();
}

#[tokio::test]
async fn count_of_patients() {
    snapshot("count_of_patients", "SELECT COUNT(*) AS n FROM patients").await;
}

#[tokio::test]
async fn average_by_a_public_key_with_having_and_order() {
    snapshot(
        "average_by_a_public_key",
        "SELECT sex, AVG(age) AS m FROM patients GROUP BY sex HAVING COUNT(*) > 5 ORDER BY m",
    )
    .await;
}

#[tokio::test]
async fn join_with_key_selection_and_a_carried_unit() {
    snapshot(
        "join_with_key_selection",
        "WITH d AS (SELECT patient_id AS pid, icd10 FROM conditions) \
         SELECT d.icd10, COUNT(DISTINCT o.patient_id) AS patients, MEDIAN(o.value) AS med \
         FROM observations o JOIN d ON o.patient_id = d.pid GROUP BY d.icd10",
    )
    .await;
}
