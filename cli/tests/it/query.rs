//! `cohort query`: private SQL over a study policy's table files, with
//! EXPLAIN PRIVACY, refusals that spend nothing, and budget-file debits.

use std::path::Path;

use crate::{cohort, cohort_json, stderr};

/// A study of 300 patients with 1–3 visits each, as CSV and Parquet.
fn study(dir: &Path) -> std::path::PathBuf {
    let mut csv = String::from("patient_id,sex,age,hba1c\n");
    for i in 0..300 {
        for k in 0..(i % 3 + 1) {
            let hba1c = 5.0 + ((i * 7 + k * 3) % 40) as f64 / 10.0;
            csv.push_str(&format!(
                "p{i:04},{},{},{hba1c}\n",
                ["F", "M"][i % 2],
                20 + i % 50
            ));
        }
    }
    std::fs::write(dir.join("visits.csv"), csv).unwrap();
    let table = cohort_engine::storage::tabular::read(&dir.join("visits.csv")).unwrap();
    cohort_engine::storage::tabular::write(&dir.join("visits.parquet"), &table).unwrap();
    let policy = dir.join("study.toml");
    std::fs::write(
        &policy,
        r#"
privacy_unit = "patient_id"
[query]
epsilon = "0.5"
max_epsilon = "1"
[contribution]
max_rows = 3
[tables.visits]
source = "visits.parquet"
[tables.visits.columns]
patient_id = {}
sex = { domain = ["F", "M"] }
age = { lower = 0, upper = 100 }
hba1c = { lower = 4, upper = 14 }
"#,
    )
    .unwrap();
    policy
}

fn remaining(dir: &Path, budget: &Path) -> String {
    cohort_json(dir, &["budget", "show", "--file", budget.to_str().unwrap()])["remaining"]
        .as_str()
        .unwrap()
        .to_string()
}

#[test]
fn query_answers_with_error_bars_and_debits_the_budget() {
    let tmp = tempfile::tempdir().unwrap();
    let policy = study(tmp.path());
    let p = policy.to_str().unwrap();
    let budget = tmp.path().join("budget.json");
    let b = budget.to_str().unwrap();
    cohort_json(
        tmp.path(),
        &["budget", "init", "--file", b, "--epsilon", "1.5"],
    );

    // EXPLAIN PRIVACY shows the plan and spends nothing.
    let explained = cohort_json(
        tmp.path(),
        &[
            "query",
            p,
            "--budget",
            b,
            "EXPLAIN PRIVACY SELECT sex, AVG(hba1c) AS m FROM visits GROUP BY sex",
        ],
    );
    let text = explained["explain"].as_str().unwrap();
    assert!(text.contains("discrete Laplace (sum, count)"), "{text}");
    assert!(text.contains("ε = 0.5"), "{text}");
    assert_eq!(remaining(tmp.path(), &budget), "ε = 1.5");

    let answer = cohort_json(
        tmp.path(),
        &[
            "query",
            p,
            "--budget",
            b,
            "--query-id",
            "q1",
            "--epsilon",
            "1",
            "--split",
            "n=1,m=3",
            "SELECT sex, COUNT(DISTINCT patient_id) AS n, AVG(hba1c) AS m FROM visits \
             GROUP BY sex ORDER BY sex",
        ],
    );
    assert_eq!(answer["columns"], serde_json::json!(["sex", "n", "m"]));
    let rows = answer["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0][0], "F");
    let mean = rows[0][2].as_f64().unwrap();
    assert!((4.0..=14.0).contains(&mean), "{mean}");
    assert_eq!(answer["cost"], "ε = 1");
    assert_eq!(answer["debit"]["query_id"], "q1");
    assert_eq!(answer["debit"]["remaining"], "ε = 0.5");
    assert!(
        answer.get("contributors").is_none(),
        "no exact count of patients travels beside the noise"
    );
    let charges: Vec<&str> = answer["plan"][0]["outputs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["charge"]["epsilon"].as_str().unwrap())
        .collect();
    assert_eq!(charges, ["0.25", "0.75"], "the --split weights");
    let release = &answer["releases"][1];
    assert_eq!(release["groups"], serde_json::json!(["F", "M"]));
    assert!(release["error_95"][0].as_f64().unwrap() > 0.0);
    assert_eq!(remaining(tmp.path(), &budget), "ε = 0.5");
}

#[test]
fn refused_and_unaffordable_queries_spend_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let policy = study(tmp.path());
    let p = policy.to_str().unwrap();
    let budget = tmp.path().join("budget.json");
    let b = budget.to_str().unwrap();
    cohort_json(
        tmp.path(),
        &["budget", "init", "--file", b, "--epsilon", "0.8"],
    );

    let cases: [(&[&str], &str); 5] = [
        (
            &["SELECT patient_id, hba1c FROM visits"],
            "no-row-level-output",
        ),
        (
            &["SELECT patient_id, COUNT(*) FROM visits GROUP BY patient_id"],
            "no-grouping-by-identifiers",
        ),
        (&["SELECT MAX(hba1c) FROM visits"], "supported-aggregates"),
        (
            &["--epsilon", "1.5", "SELECT COUNT(*) FROM visits"],
            "per-query cap is ε = 1",
        ),
        (
            &["--epsilon", "0.9", "SELECT COUNT(*) FROM visits"],
            "only ε = 0.8 left",
        ),
    ];
    for (args, expected) in cases {
        let mut all = vec!["query", p, "--budget", b];
        all.extend_from_slice(args);
        let o = cohort(tmp.path(), &all);
        assert!(!o.status.success(), "{args:?} succeeded");
        let message = stderr(&o);
        assert!(message.contains(expected), "{expected:?} not in {message}");
        assert_eq!(
            message.matches("query refused").count(),
            1,
            "said once: {message}"
        );
        assert_eq!(remaining(tmp.path(), &budget), "ε = 0.8");
    }
    // Exactly what is left is accepted, then nothing is.
    cohort_json(
        tmp.path(),
        &[
            "query",
            p,
            "--budget",
            b,
            "--epsilon",
            "0.8",
            "SELECT COUNT(*) FROM visits",
        ],
    );
    assert_eq!(remaining(tmp.path(), &budget), "ε = 0");
}

#[test]
fn csv_sources_and_no_budget_file_work_too() {
    let tmp = tempfile::tempdir().unwrap();
    let policy = study(tmp.path());
    let text = std::fs::read_to_string(&policy).unwrap();
    std::fs::write(&policy, text.replace("visits.parquet", "visits.csv")).unwrap();
    let answer = cohort_json(
        tmp.path(),
        &[
            "query",
            policy.to_str().unwrap(),
            "SELECT FLOOR(age / 10) * 10 AS decade, COUNT(*) AS n FROM visits GROUP BY 1 ORDER BY 1",
        ],
    );
    assert_eq!(
        answer["rows"].as_array().unwrap().len(),
        11,
        "decades 0..=100"
    );
    assert!(answer.get("debit").is_none());
}

/// Under the research path's rules: past its deadline a query is ended,
/// charged from the budget file, and told so with the fixed message.
#[test]
fn a_query_over_its_deadline_is_charged_with_the_fixed_message() {
    let tmp = tempfile::tempdir().unwrap();
    let policy = study(tmp.path());
    let text = std::fs::read_to_string(&policy).unwrap();
    // A deadline of zero: every query overruns it.
    std::fs::write(
        &policy,
        text.replace(
            "[contribution]",
            "[execution]\ndeadline_ms = 0\nper_patient_us = 0\n[contribution]",
        ),
    )
    .unwrap();
    let budget = tmp.path().join("budget.json");
    let b = budget.to_str().unwrap();
    cohort_json(
        tmp.path(),
        &["budget", "init", "--file", b, "--epsilon", "2"],
    );
    let o = cohort(
        tmp.path(),
        &[
            "query",
            policy.to_str().unwrap(),
            "--budget",
            b,
            "--query-id",
            "late",
            "SELECT sex, COUNT(*) AS n FROM visits GROUP BY sex",
        ],
    );
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("query `late` ended without an answer and was charged ε = 0.5"),
        "{}",
        stderr(&o)
    );
    assert_eq!(remaining(tmp.path(), &budget), "ε = 1.5", "charged");
}
