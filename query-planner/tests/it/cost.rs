//! Costs: the split between releases, the per-query cap, the remaining
//! budget, the budget's kind, and EXPLAIN PRIVACY.

use cohort_anonymizer::accountant::Charge;
use cohort_query_planner::{Error, QueryOptions, Rule};

use crate::fixture::*;

#[tokio::test]
async fn the_query_cost_is_split_equally_by_default_and_exactly() {
    let planner = planner();
    let sql = "SELECT sex, COUNT(*) AS n, AVG(age) AS m, SUM(age) AS s FROM patients GROUP BY sex";
    let plan = plan(&planner, sql, &pure("10")).await;
    assert_eq!(plan.cost().to_string(), "ε = 1", "the policy's default ε");
    let charges: Vec<String> = plan.aggregates()[0]
        .outputs
        .iter()
        .map(|o| o.charge.to_string())
        .collect();
    assert_eq!(
        charges,
        [
            "ε = 0.333333333333333333",
            "ε = 0.333333333333333333",
            "ε = 0.333333333333333334"
        ]
    );
}

#[tokio::test]
async fn split_weights_name_output_columns() {
    let planner = planner();
    let sql = "SELECT sex, COUNT(*) AS n, AVG(age) AS m FROM patients GROUP BY sex";
    let mut options = pure("10");
    options.epsilon = Some(amount("0.8"));
    options.weights.insert("n".into(), 1);
    options.weights.insert("m".into(), 3);
    let plan = plan(&planner, sql, &options).await;
    let outputs = &plan.aggregates()[0].outputs;
    assert_eq!(outputs[0].output, "n");
    assert_eq!(outputs[0].charge.to_string(), "ε = 0.2");
    assert_eq!(outputs[1].output, "m");
    assert_eq!(outputs[1].charge.to_string(), "ε = 0.6");
    assert_eq!(plan.cost().to_string(), "ε = 0.8");

    options.weights.insert("nope".into(), 1);
    let error = planner.plan(sql, &options).await.unwrap_err();
    assert!(matches!(error, Error::Options(_)), "{error}");
    assert!(error.to_string().contains("nope"));
}

#[tokio::test]
async fn the_per_query_cap_and_the_remaining_budget_are_enforced() {
    let planner = planner();
    let sql = "SELECT COUNT(*) FROM patients";
    let mut options = pure("10");
    options.epsilon = Some(amount("5"));
    assert_eq!(
        plan(&planner, sql, &options).await.cost().to_string(),
        "ε = 5",
        "exactly the cap"
    );
    options.epsilon = Some(amount("5.000000000000000001"));
    let error = planner.plan(sql, &options).await.unwrap_err();
    assert_eq!(error.rule(), Some(Rule::Budget));
    assert!(
        error.to_string().contains("per-query cap is ε = 5"),
        "{error}"
    );

    let mut options = pure("0.5");
    let error = planner.plan(sql, &options).await.unwrap_err();
    assert!(error.to_string().contains("only ε = 0.5 left"), "{error}");
    options.epsilon = Some(amount("0.5"));
    assert!(
        planner.plan(sql, &options).await.is_ok(),
        "exactly what is left"
    );
}

#[tokio::test]
async fn key_selection_needs_an_approximate_budget() {
    let planner = planner();
    let sql = "SELECT icd10, COUNT(*) FROM conditions GROUP BY icd10";
    let error = planner.plan(sql, &pure("10")).await.unwrap_err();
    assert_eq!(error.rule(), Some(Rule::Budget));
    assert!(error.to_string().contains("Declare a `domain`"), "{error}");

    let options = QueryOptions::new(Charge::Approx {
        epsilon: amount("10"),
        delta: amount("0.001"),
    });
    let plan = plan(&planner, sql, &options).await;
    assert_eq!(
        plan.cost().to_string(),
        "(ε = 1, δ = 0.000001)",
        "the policy's δ"
    );
}

#[tokio::test]
async fn a_zcdp_budget_gets_gaussian_noise() {
    let planner = planner_with(&POLICY.replace("epsilon = \"1\"", "rho = \"0.5\""));
    let options = QueryOptions::new(Charge::Zcdp { rho: amount("2") });
    let plan = plan(
        &planner,
        "SELECT COUNT(*), MEDIAN(age) FROM patients",
        &options,
    )
    .await;
    assert_eq!(plan.cost().to_string(), "ρ = 0.5");
    let outputs = &plan.aggregates()[0].outputs;
    assert_eq!(outputs[0].mechanism, "discrete Gaussian");
    assert_eq!(outputs[0].charge.to_string(), "ρ = 0.25");
    assert_eq!(outputs[1].mechanism, "exponential (quantile score)");
    plan.execute().await.unwrap();
}

#[tokio::test]
async fn explain_privacy_shows_the_plan_and_runs_nothing() {
    let planner = planner();
    let plan = plan(
        &planner,
        "explain privacy SELECT sex, AVG(age) AS m FROM patients GROUP BY sex",
        &pure("10"),
    )
    .await;
    assert!(plan.is_explain());
    let text = plan.explain();
    for expected in [
        "cost:      ε = 1 (per-query cap ε = 5); budget left before it: ε = 10",
        "groups:   public domain: all 3 groups are released",
        "each patient_id adds to at most 2 group(s), at most 1 row(s) per group",
        "m       avg(patients.age)",
        "discrete Laplace (sum, count)",
        "[0, 100]",
        "100 / 2",
        "ε = 1",
        "/n",
        "BoundContributions",
    ] {
        assert!(text.contains(expected), "{expected:?} not in\n{text}");
    }
}

/// The reported 95% interval covers the truth: at ε = 1 the count of 200
/// patients has discrete Laplace noise of scale 1; its half-width covers at
/// least 95%, so fewer than 80 hits in 100 runs has probability < 1e-8.
#[tokio::test]
async fn the_error_bars_cover_the_truth() {
    let planner = planner();
    let mut covered = 0;
    for _ in 0..100 {
        let answer = run(&planner, "SELECT COUNT(*) FROM patients", &pure("10")).await;
        let release = &answer.releases[0];
        if (release.values[0] - PATIENTS as f64).abs() <= release.error_95[0] {
            covered += 1;
        }
    }
    assert!(covered >= 80, "{covered}/100");
}
