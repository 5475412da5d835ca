//! Every supported form: the rewrite's shape and the answer. At the huge ε
//! of `fixture::exact` (10¹²) every noise is zero with overwhelming
//! probability (the largest sensitivity here, 7·10¹¹ fixed-point units,
//! gives a discrete Laplace scale below 0.01: P[noise ≠ 0] < 10⁻⁴⁰), so the
//! answers must equal the exact statistics of the bounded rows.

use crate::fixture::*;

fn approx(actual: f64, expected: f64, tolerance: f64) {
    assert!(
        (actual - expected).abs() <= tolerance,
        "{actual} is not within {tolerance} of {expected}"
    );
}

/// Exact values of the fixture's non-`p0000` hba1c observations
/// (patients have at most 2, all kept by bounding).
fn hba1c_values() -> Vec<f64> {
    (1..PATIENTS)
        .flat_map(|i| {
            (0..observations_of(i))
                .filter(|k| k % 2 == 0)
                .map(move |k| observation_value(i, k))
        })
        .collect()
}

const HBA1C: &str = "FROM observations WHERE code = 'hba1c' AND patient_id <> 'p0000'";

#[tokio::test]
async fn count_star_over_a_one_row_per_patient_table() {
    let (planner, options) = exact();
    let plan = plan(&planner, "SELECT COUNT(*) AS n FROM patients", &options).await;
    let shape = shape(&plan);
    assert!(shape.contains("NoisyAggregate: keys=none"), "{shape}");
    assert!(
        shape.contains("BoundContributions: unit=patients.patient_id, max_rows=1"),
        "the table's rows_per_unit tightens max_rows:\n{shape}"
    );
    let answer = plan.execute().await.unwrap();
    assert_eq!(column(&answer, 0), [PATIENTS as f64]);
    assert_eq!(answer.releases.len(), 1);
}

#[tokio::test]
async fn count_rows_is_bounded_per_patient() {
    let (planner, options) = exact();
    let answer = run(&planner, "SELECT COUNT(*) FROM observations", &options).await;
    let expected: usize = (0..PATIENTS).map(|i| observations_of(i).min(3)).sum();
    assert_eq!(column(&answer, 0), [expected as f64]);
}

#[tokio::test]
async fn count_distinct_patients_has_sensitivity_one() {
    let (planner, options) = exact();
    let plan = plan(
        &planner,
        "SELECT COUNT(DISTINCT patient_id) FROM observations",
        &options,
    )
    .await;
    let outputs = &plan.aggregates()[0].outputs;
    assert_eq!(outputs[0].sensitivity, [1.0], "one patient adds one");
    let answer = plan.execute().await.unwrap();
    assert_eq!(column(&answer, 0), [PATIENTS as f64]);
}

#[tokio::test]
async fn sum_avg_variance_and_stddev_of_clamped_values() {
    let (planner, options) = exact();
    let values = hba1c_values();
    let n = values.len() as f64;
    let sum: f64 = values.iter().sum();
    let mean = sum / n;
    let variance_pop = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n;
    let sql = format!(
        "SELECT SUM(value) AS s, AVG(value) AS m, VAR_POP(value) AS vp, VAR_SAMP(value) AS vs, \
         STDDEV(value) AS sd, VARIANCE(value) AS v {HBA1C}"
    );
    let answer = run(&planner, &sql, &options).await;
    let row: Vec<f64> = (0..6).map(|i| column(&answer, i)[0]).collect();
    approx(row[0], sum, 1e-3);
    approx(row[1], mean, 1e-6);
    approx(row[2], variance_pop, 1e-4);
    approx(row[3], variance_pop * n / (n - 1.0), 1e-4);
    approx(row[4], (variance_pop * n / (n - 1.0)).sqrt(), 1e-4);
    // VARIANCE is the sample variance, as in PostgreSQL.
    approx(row[5], variance_pop * n / (n - 1.0), 1e-4);
    // VARIANCE(value) and VAR_SAMP(value) are one aggregate, released (and
    // paid for) once.
    assert_eq!(answer.releases.len(), 5);
    assert_eq!(row[5], row[3]);
}

#[tokio::test]
async fn values_outside_the_bounds_are_clamped() {
    let (planner, options) = exact();
    // value + 1000 exceeds the upper bound 300 for every row: clamped to 300.
    let sql = format!("SELECT SUM(LEAST(value + 1000, 300)) AS s, AVG(value * 10) AS m {HBA1C}");
    let answer = run(&planner, &sql, &options).await;
    approx(
        column(&answer, 0)[0],
        300.0 * hba1c_values().len() as f64,
        1e-3,
    );
    // value·10 has bounds [0, 3000] by interval arithmetic; the mean is exact.
    let mean = hba1c_values().iter().sum::<f64>() / hba1c_values().len() as f64;
    approx(column(&answer, 1)[0], 10.0 * mean, 1e-5);
}

/// OpenDP's quantile score of candidate `c` (lower is better).
fn quantile_score(values: &[f64], c: f64, alpha: f64) -> f64 {
    let below = values.iter().filter(|&&x| x < c).count() as f64;
    let above = values.iter().filter(|&&x| x > c).count() as f64;
    ((1.0 - alpha) * below - alpha * above).abs()
}

#[tokio::test]
async fn median_and_percentile_choose_the_best_candidate() {
    let (planner, options) = exact();
    let values = hba1c_values();
    let sql = format!("SELECT MEDIAN(value) AS med, PERCENTILE_CONT(value, 0.9) AS p90 {HBA1C}");
    let answer = run(&planner, &sql, &options).await;
    // 101 candidates over [0, 300], every 3 units; at this ε the choice
    // is one of the best-scoring candidates.
    let candidates: Vec<f64> = (0..=100).map(|i| 3.0 * f64::from(i)).collect();
    for (index, alpha) in [(0, 0.5), (1, 0.9)] {
        let chosen = column(&answer, index)[0];
        assert!(candidates.contains(&chosen), "{chosen}");
        let best = candidates
            .iter()
            .map(|&c| quantile_score(&values, c, alpha))
            .fold(f64::INFINITY, f64::min);
        assert_eq!(
            quantile_score(&values, chosen, alpha),
            best,
            "alpha {alpha}: {chosen}"
        );
    }
}

/// DataFusion casts an integer argument of PERCENTILE_CONT to a float; the
/// candidates declared on the integer column still apply (not 101 evenly
/// spaced values over its bounds).
#[tokio::test]
async fn an_integer_column_keeps_its_declared_candidates() {
    let policy = POLICY.replace(
        "age = { lower = 0, upper = 100 }",
        "age = { lower = 0, upper = 100, candidates = [20, 50, 80] }",
    );
    let (planner, options) = exact_with(&policy);
    let sql = "SELECT MEDIAN(age) AS med, PERCENTILE_CONT(age, 0.9) AS p90 FROM patients";
    let answer = run(&planner, sql, &options).await;
    for index in [0, 1] {
        let chosen = column(&answer, index)[0];
        assert!([20.0, 50.0, 80.0].contains(&chosen), "{chosen}");
    }
}

#[tokio::test]
async fn group_by_a_public_domain_releases_every_group() {
    let (planner, options) = exact();
    let plan = plan(
        &planner,
        "SELECT sex, COUNT(*) AS n FROM patients GROUP BY sex",
        &options,
    )
    .await;
    let shape = shape(&plan);
    assert!(shape.contains("keys=public domain (3 groups)"), "{shape}");
    assert!(
        shape.contains("Filter: patients.sex IN ([Utf8(\"F\"), Utf8(\"M\"), Utf8(\"X\")])"),
        "rows outside the domain are dropped before bounding:\n{shape}"
    );
    let answer = plan.execute().await.unwrap();
    assert_eq!(
        rows(&answer),
        [["F", "100"], ["M", "100"], ["X", "0"]],
        "X is absent from the data and still released"
    );
}

#[tokio::test]
async fn group_by_an_expression_over_a_bounded_integer_has_a_public_domain() {
    let (planner, options) = exact();
    let sql = "SELECT FLOOR(age / 10) * 10 AS band, COUNT(*) AS n FROM patients \
               GROUP BY FLOOR(age / 10) * 10 ORDER BY band";
    let answer = run(&planner, sql, &options).await;
    let bands = column(&answer, 0);
    assert_eq!(
        bands,
        (0..=10).map(|b| f64::from(b) * 10.0).collect::<Vec<_>>(),
        "ages 0..=100 give 11 bands, all released"
    );
    let counts = column(&answer, 1);
    for (band, count) in bands.iter().zip(&counts) {
        let expected = (0..PATIENTS)
            .filter(|i| ((20 + i % 60) / 10 * 10) as f64 == *band)
            .count();
        assert_eq!(*count, expected as f64, "band {band}");
    }
}

#[tokio::test]
async fn group_by_keys_without_a_domain_uses_dp_key_selection() {
    let (planner, options) = exact();
    let plan = plan(
        &planner,
        "SELECT zip3, COUNT(*) AS n FROM patients GROUP BY zip3",
        &options,
    )
    .await;
    let aggregate = &plan.aggregates()[0];
    assert!(
        aggregate.groups.starts_with("DP key selection"),
        "{}",
        aggregate.groups
    );
    assert!(aggregate.key_selection.is_some());
    let answer = plan.execute().await.unwrap();
    assert_eq!(
        rows(&answer),
        [
            ["021", "40"],
            ["100", "40"],
            ["331", "40"],
            ["606", "40"],
            ["941", "40"]
        ]
    );
}

#[tokio::test]
async fn join_on_the_patient_bounds_the_joined_rows() {
    let (planner, options) = exact();
    let sql = "SELECT COUNT(*) FROM patients p JOIN observations o ON p.patient_id = o.patient_id \
               WHERE p.sex = 'F'";
    let answer = run(&planner, sql, &options).await;
    let expected: usize = (0..PATIENTS)
        .filter(|i| i % 2 == 0)
        .map(|i| observations_of(i).min(3))
        .sum();
    assert_eq!(column(&answer, 0), [expected as f64]);
}

#[tokio::test]
async fn comma_joins_and_in_subqueries_on_the_patient_are_joins() {
    let (planner, options) = exact();
    let diabetic: Vec<usize> = (0..PATIENTS)
        .filter(|&i| i % 2 == 0 && (i == 0 || i % 3 >= 1))
        .collect();
    let sql = "SELECT COUNT(*) FROM patients WHERE patient_id IN \
               (SELECT patient_id FROM conditions WHERE icd10 = 'E11.9')";
    let answer = run(&planner, sql, &options).await;
    assert_eq!(column(&answer, 0), [diabetic.len() as f64]);

    let sql = "SELECT COUNT(*) FROM patients p, conditions c \
               WHERE p.patient_id = c.patient_id AND c.icd10 = 'E11.9'";
    let answer = run(&planner, sql, &options).await;
    assert_eq!(column(&answer, 0), [diabetic.len() as f64]);

    let sql = "SELECT COUNT(*) FROM patients p WHERE NOT EXISTS \
               (SELECT 1 FROM conditions c WHERE c.patient_id = p.patient_id)";
    let answer = run(&planner, sql, &options).await;
    let none = (0..PATIENTS).filter(|&i| i != 0 && i % 3 == 0).count();
    assert_eq!(column(&answer, 0), [none as f64]);
}

#[tokio::test]
async fn ctes_and_subqueries_feed_one_aggregation() {
    let (planner, options) = exact();
    let values = hba1c_values();
    let mean = values.iter().sum::<f64>() / values.len() as f64;
    let sql = "WITH h AS (SELECT patient_id, value AS v FROM observations \
                          WHERE code = 'hba1c' AND patient_id <> 'p0000') \
               SELECT AVG(x) AS m FROM (SELECT v AS x FROM h) t";
    let plan = plan(&planner, sql, &options).await;
    let shape = shape(&plan);
    assert!(
        shape.contains("__cohort_unit"),
        "the subquery dropped the patient; the planner carries it:\n{shape}"
    );
    let answer = plan.execute().await.unwrap();
    approx(column(&answer, 0)[0], mean, 1e-6);
}

#[tokio::test]
async fn per_patient_subqueries_feed_an_outer_aggregate() {
    let (planner, options) = exact();
    let sql = "SELECT AVG(n) AS mean_visits FROM \
               (SELECT patient_id, LEAST(COUNT(*), 10) AS n FROM observations GROUP BY patient_id) t";
    let answer = run(&planner, sql, &options).await;
    let expected = (0..PATIENTS)
        .map(|i| observations_of(i).min(10) as f64)
        .sum::<f64>()
        / PATIENTS as f64;
    approx(column(&answer, 0)[0], expected, 1e-6);
}

#[tokio::test]
async fn having_order_by_and_limit_run_on_the_noisy_output() {
    let (planner, options) = exact();
    let sql = "SELECT sex, COUNT(*) AS n, AVG(age) AS mean_age FROM patients GROUP BY sex \
               HAVING COUNT(*) > 10 ORDER BY sex DESC LIMIT 1";
    let plan = plan(&planner, sql, &options).await;
    let shape = shape(&plan);
    let (having, noise) = (
        shape.find("Filter: count").unwrap(),
        shape.find("NoisyAggregate").unwrap(),
    );
    assert!(having < noise, "HAVING stays above the noise:\n{shape}");
    let answer = plan.execute().await.unwrap();
    let rows = rows(&answer);
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0][0], "M");
    assert_eq!(rows[0][1], "100");
    let mean_age = (0..PATIENTS)
        .filter(|i| i % 2 == 1)
        .map(|i| 20 + i % 60)
        .sum::<usize>() as f64
        / 100.0;
    approx(column(&answer, 2)[0], mean_age, 1e-6);
}

#[tokio::test]
async fn expressions_over_aggregates_are_post_processing() {
    let (planner, options) = exact();
    let sql = "SELECT SUM(age) * 1.0 / COUNT(*) AS ratio, COUNT(*) * 2 AS doubled FROM patients";
    let answer = run(&planner, sql, &options).await;
    let ages: usize = (0..PATIENTS).map(|i| 20 + i % 60).sum();
    approx(column(&answer, 0)[0], ages as f64 / PATIENTS as f64, 1e-6);
    assert_eq!(column(&answer, 1), [2.0 * PATIENTS as f64]);
    assert_eq!(
        answer.releases.len(),
        2,
        "SUM and COUNT, each released once"
    );
}

#[tokio::test]
async fn select_distinct_of_a_public_key_releases_its_domain() {
    let (planner, options) = exact();
    let answer = run(&planner, "SELECT DISTINCT sex FROM patients", &options).await;
    assert_eq!(rows(&answer), [["F"], ["M"], ["X"]]);
}

#[tokio::test]
async fn queries_without_patient_data_cost_nothing() {
    let (planner, options) = exact();
    let plan = plan(&planner, "SELECT 1 + 1 AS two", &options).await;
    assert_eq!(plan.cost().to_string(), "(ε = 0, δ = 0)");
    let answer = plan.execute().await.unwrap();
    assert_eq!(rows(&answer), [["2"]]);
}
