//! Public tables (a vocabulary): read at no cost, joined to study tables
//! with each patient's contribution still bounded, and serving as GROUP BY
//! domains; joins that would pair different patients through them are
//! refused. And the small-cell rules on noisy counts.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::{RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use cohort_query_planner::{Planner, Rule, StudyPolicy};

use crate::fixture::{POLICY, exact_with, plan, pure, rows, tables};

/// ICD-10 codes to their chapters, with one chapter no patient has
/// (`J00-J99`) and every I code listed twice (a join multiplies rows).
fn chapters() -> RecordBatch {
    let mut code = vec!["E11.9", "J45"];
    let mut chapter = vec!["E00-E89", "J00-J99"];
    let i_codes = [
        "I00", "I10", "I20", "I30", "I40", "I50", "I60", "I70", "I80", "I90",
    ];
    for c in i_codes {
        code.extend([c, c]);
        chapter.extend(["I00-I99", "I00-I99"]);
    }
    RecordBatch::try_new(
        Arc::new(Schema::new(vec![
            Field::new("code", DataType::Utf8, false),
            Field::new("chapter", DataType::Utf8, false),
        ])),
        vec![
            Arc::new(StringArray::from(code)),
            Arc::new(StringArray::from(chapter)),
        ],
    )
    .unwrap()
}

fn planner_over(policy: &str) -> Planner {
    Planner::with_public_tables(
        StudyPolicy::from_toml(policy).unwrap(),
        tables(),
        BTreeMap::from([("chapters".to_string(), chapters())]),
    )
    .unwrap()
}

/// Each patient's condition codes, as the fixture makes them.
fn conditions_of(i: usize) -> Vec<String> {
    let n = if i == 0 { 10 } else { i % 3 };
    (0..n)
        .map(|k| {
            if k == 0 && i.is_multiple_of(2) {
                "E11.9".to_string()
            } else {
                format!("I{k}0")
            }
        })
        .collect()
}

fn exact_public(policy: &str) -> (Planner, cohort_query_planner::QueryOptions) {
    let (_, options) = exact_with(POLICY);
    let policy = policy.replace("max_epsilon = \"5\"", "max_epsilon = \"10000000000000\"");
    (planner_over(&policy), options)
}

#[tokio::test]
async fn a_public_join_rolls_codes_up_with_every_chapter_released_and_rows_bounded() {
    let (planner, options) = exact_public(POLICY);
    let sql = "SELECT ch.chapter, COUNT(*) AS n FROM conditions c \
               JOIN chapters ch ON c.icd10 = ch.code GROUP BY ch.chapter ORDER BY ch.chapter";
    let p = plan(&planner, sql, &options).await;
    let explain = p.explain();
    assert!(explain.contains("all 3 groups are released"), "{explain}");
    let answer = p.execute().await.unwrap();
    // Each I code joins twice; each patient still adds at most 3 rows
    // (max_rows) to a group and to at most 2 groups (max_groups, both
    // chapters fit).
    let mut e = 0;
    let mut i_rows = 0;
    for i in 0..crate::fixture::PATIENTS {
        let codes = conditions_of(i);
        let e_joined = codes.iter().filter(|c| *c == "E11.9").count();
        let i_joined = 2 * codes.iter().filter(|c| c.starts_with('I')).count();
        e += e_joined.min(3);
        i_rows += i_joined.min(3);
    }
    assert_eq!(
        rows(&answer),
        vec![
            vec!["E00-E89".to_string(), e.to_string()],
            vec!["I00-I99".to_string(), i_rows.to_string()],
            vec!["J00-J99".to_string(), "0".to_string()],
        ]
    );
}

#[tokio::test]
async fn a_condition_on_a_public_column_narrows_the_released_groups() {
    let planner = planner_over(POLICY);
    let sql = "SELECT ch.chapter, COUNT(*) AS n FROM conditions c \
               JOIN chapters ch ON c.icd10 = ch.code WHERE ch.chapter <> 'J00-J99' \
               GROUP BY ch.chapter";
    let p = plan(&planner, sql, &pure("10")).await;
    assert!(
        p.explain().contains("all 2 groups are released"),
        "{}",
        p.explain()
    );
    let answer = p.execute().await.unwrap();
    let keys: Vec<String> = rows(&answer).into_iter().map(|r| r[0].clone()).collect();
    assert_eq!(keys, ["E00-E89", "I00-I99"]);
    // A condition mixing a study column keeps the whole public domain.
    let mixed = "SELECT ch.chapter, COUNT(*) AS n FROM conditions c \
                 JOIN chapters ch ON c.icd10 = ch.code WHERE ch.chapter <> c.icd10 \
                 GROUP BY ch.chapter";
    let p = plan(&planner, mixed, &pure("10")).await;
    assert!(
        p.explain().contains("all 3 groups are released"),
        "{}",
        p.explain()
    );
}

#[tokio::test]
async fn a_public_table_alone_costs_nothing_and_answers_exactly() {
    let planner = planner_over(POLICY);
    let p = plan(
        &planner,
        "SELECT COUNT(*) AS n FROM chapters WHERE chapter = 'I00-I99'",
        &pure("1"),
    )
    .await;
    assert_eq!(
        p.cost(),
        cohort_anonymizer::accountant::Charge::zero(p.cost().kind())
    );
    assert!(
        p.explain().contains("no patient data is read"),
        "{}",
        p.explain()
    );
    let answer = p.execute().await.unwrap();
    assert_eq!(rows(&answer), vec![vec!["20".to_string()]]);
}

#[tokio::test]
async fn joins_that_pair_different_patients_through_a_public_table_are_refused() {
    let planner = planner_over(POLICY);
    for sql in [
        "SELECT COUNT(*) FROM conditions a JOIN conditions b ON a.icd10 = b.icd10",
        "SELECT COUNT(*) FROM conditions a JOIN chapters ch ON a.icd10 = ch.code \
         JOIN conditions b ON b.icd10 = ch.code",
        "SELECT ch.chapter, COUNT(*) FROM chapters ch FULL JOIN conditions c \
         ON c.icd10 = ch.code GROUP BY ch.chapter",
    ] {
        let error = match planner.plan(sql, &pure("10")).await {
            Ok(plan) => panic!("{sql:?} was planned:\n{}", plan.explain()),
            Err(error) => error,
        };
        assert_eq!(error.rule(), Some(Rule::JoinNotOnUnit), "{sql}: {error}");
    }
}

#[tokio::test]
async fn a_public_table_declares_a_group_by_domain() {
    let policy = POLICY.replace(
        "icd10 = {}",
        r#"icd10 = { domain_from = { table = "chapters", column = "code", where = { chapter = "I00-I99" } } }"#,
    );
    let (planner, options) = exact_public(&policy);
    let p = plan(
        &planner,
        "SELECT icd10, COUNT(*) AS n FROM conditions GROUP BY icd10 ORDER BY icd10",
        &options,
    )
    .await;
    assert!(
        p.explain().contains("all 10 groups are released"),
        "{}",
        p.explain()
    );
    let answer = p.execute().await.unwrap();
    let keys: Vec<String> = rows(&answer).into_iter().map(|r| r[0].clone()).collect();
    assert_eq!(keys.len(), 10);
    assert!(keys.iter().all(|k| k.starts_with('I')), "{keys:?}");
    // A domain_from naming no public table is refused when the policy is read.
    let bad = POLICY.replace(
        "icd10 = {}",
        r#"icd10 = { domain_from = { table = "nowhere", column = "code" } }"#,
    );
    let error = Planner::with_public_tables(
        StudyPolicy::from_toml(&bad).unwrap(),
        tables(),
        BTreeMap::from([("chapters".to_string(), chapters())]),
    )
    .err()
    .expect("refused");
    assert!(error.to_string().contains("`nowhere`"), "{error}");
}

#[tokio::test]
async fn small_cells_round_counts_and_withhold_small_groups_after_the_noise() {
    let policy = format!("{POLICY}\n[disclosure]\nround_to = 30\nsuppress_below = 1\n");
    let (planner, options) = exact_public(&policy);
    let sql = "SELECT sex, COUNT(*) AS n, AVG(age) AS a FROM patients GROUP BY sex ORDER BY sex";
    let p = plan(&planner, sql, &options).await;
    let explain = p.explain();
    assert!(
        explain.contains("small cells: a group whose noisy count is below 1 is withheld"),
        "{explain}"
    );
    assert!(explain.contains("rounded to the nearest 30"), "{explain}");
    let answer = p.execute().await.unwrap();
    let rows = rows(&answer);
    // 100 F and 100 M round to 90; nobody is X: withheld, its mean too.
    assert_eq!(rows[0][..2], ["F".to_string(), "90".to_string()]);
    assert_eq!(rows[1][..2], ["M".to_string(), "90".to_string()]);
    assert_eq!(
        rows[2],
        ["X".to_string(), "NULL".to_string(), "NULL".to_string()]
    );
    assert_ne!(rows[0][2], "NULL");

    let named = format!("{POLICY}\n[disclosure]\nconvention = \"opensafely\"\n");
    let p = plan(&planner_over(&named), sql, &pure("10")).await;
    assert!(
        p.explain()
            .contains("OpenSAFELY: a group whose noisy count is below 8"),
        "{}",
        p.explain()
    );
    let both = format!("{POLICY}\n[disclosure]\nconvention = \"ohdsi\"\nround_to = 5\n");
    let error = Planner::new(StudyPolicy::from_toml(&both).unwrap(), tables())
        .err()
        .expect("refused");
    assert!(error.to_string().contains("not both"), "{error}");
}

#[tokio::test]
async fn a_join_on_any_copy_of_the_unit_pairs_one_patients_rows_only() {
    let planner = planner_over(POLICY);
    // Achilles joins the third table on the second's copy of the unit.
    plan(
        &planner,
        "SELECT COUNT(*) AS n FROM patients p JOIN conditions c ON p.patient_id = c.patient_id \
         JOIN observations o ON c.patient_id = o.patient_id",
        &pure("10"),
    )
    .await;
    let refused = planner
        .plan(
            "SELECT COUNT(*) AS n FROM patients p JOIN conditions c ON p.patient_id = c.patient_id \
             JOIN observations o ON c.icd10 = o.code",
            &pure("10"),
        )
        .await
        .expect_err("a join on codes is refused");
    assert_eq!(refused.rule(), Some(Rule::JoinNotOnUnit), "{refused}");
}
