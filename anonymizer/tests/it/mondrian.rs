//! Mondrian k-anonymity with l-diversity and t-closeness: the guarantees hold
//! on the output, the refusals name their reason, utility behaves as claimed.

use std::collections::HashMap;

use cohort_anonymizer::hierarchy::Hierarchies;
use cohort_anonymizer::mondrian::{Mode, Params, Request, anonymize, measure};
use cohort_anonymizer::privacy_model::LDiversity;
use proptest::prelude::*;
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::*;

const HIERARCHIES: &str = r#"
[race]
kind = "tree"
[race.tree]
"*" = ["White", "Non-white"]
"Non-white" = ["Black", "Asian", "Other"]

[zip]
kind = "prefix"
"#;

const RACES: [&str; 4] = ["White", "Black", "Asian", "Other"];
const DIAGNOSES: [&str; 6] = ["flu", "asthma", "gout", "copd", "migraine", "eczema"];

/// `n` rows: numeric age, hierarchical race, prefix zip, set-valued sex,
/// a sensitive diagnosis and an identifier that must be dropped.
fn people(n: usize, seed: u64) -> RecordBatch {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut age = Vec::new();
    let mut race = Vec::new();
    let mut zip = Vec::new();
    let mut sex = Vec::new();
    let mut dx = Vec::new();
    for _ in 0..n {
        age.push(rng.random_range(18..95i64));
        race.push(RACES[rng.random_range(0..4usize)]);
        zip.push(format!(
            "0{}{}{}{}",
            rng.random_range(0..3u8),
            rng.random_range(0..10u8),
            rng.random_range(0..10u8),
            rng.random_range(0..10u8)
        ));
        sex.push(["F", "M"][rng.random_range(0..2usize)]);
        dx.push(DIAGNOSES[rng.random_range(0..6usize)]);
    }
    table(vec![
        ("ssn", strings((0..n).map(|i| format!("123-45-{i:04}")))),
        ("age", ints(age)),
        ("race", strings(race)),
        ("zip", strings(zip)),
        ("sex", strings(sex)),
        ("dx", strings(dx)),
    ])
}

fn request(k: usize) -> Request {
    Request {
        quasi_identifiers: ["age", "race", "zip", "sex"].map(String::from).to_vec(),
        sensitive: Some("dx".into()),
        keep: vec![],
        hierarchies: Hierarchies::from_toml(HIERARCHIES).unwrap(),
        params: Params::k(k),
    }
}

fn qis() -> Vec<String> {
    ["age", "race", "zip", "sex"].map(String::from).to_vec()
}

/// Sensitive values per class, classes keyed by their QI labels.
fn classes(batch: &RecordBatch) -> HashMap<Vec<String>, Vec<String>> {
    let cols: Vec<Vec<String>> = qis().iter().map(|q| text(batch, q)).collect();
    let dx = text(batch, "dx");
    let mut out: HashMap<Vec<String>, Vec<String>> = HashMap::new();
    for (row, d) in dx.into_iter().enumerate() {
        out.entry(cols.iter().map(|c| c[row].clone()).collect())
            .or_default()
            .push(d);
    }
    out
}

#[test]
fn output_is_k_anonymous_keeps_row_order_and_drops_unlisted_columns() {
    let input = people(2_000, 1);
    let out = anonymize(&input, &request(10)).unwrap();
    let names: Vec<_> = out
        .batch
        .schema()
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect();
    assert_eq!(
        names,
        ["age", "race", "zip", "sex", "dx"],
        "ssn is dropped, order kept"
    );
    assert_eq!(out.report.suppressed, 0);
    assert_eq!(out.batch.num_rows(), 2_000);
    // The sensitive column comes back unchanged, row for row.
    assert_eq!(text(&out.batch, "dx"), text(&input, "dx"));
    let m = measure(&out.batch, &qis(), Some("dx")).unwrap();
    assert!(m.k >= 10, "{m:?}");
    assert_eq!(m.k, out.report.min_class_size);
    assert_eq!(m.classes, out.report.classes);
    assert!(
        out.report.classes > 50,
        "Mondrian should find many classes, got {}",
        out.report.classes
    );
    // Every generalized age range contains the original age.
    for (label, age) in text(&out.batch, "age").iter().zip(text(&input, "age")) {
        let age: i64 = age.parse().unwrap();
        let (lo, hi) = label
            .split_once('-')
            .map_or((label.as_str(), label.as_str()), |p| p);
        assert!(
            lo.parse::<i64>().unwrap() <= age && age <= hi.parse::<i64>().unwrap(),
            "{label} vs {age}"
        );
    }
    // Hierarchical labels are the value or one of its ancestors.
    for (label, race) in text(&out.batch, "race").iter().zip(text(&input, "race")) {
        let ok = label == &race || label == "*" || (label == "Non-white" && race != "White");
        assert!(ok, "{race} released as {label}");
    }
    // Information loss is a fraction, lower than suppressing everything.
    assert!(
        out.report.ncp > 0.0 && out.report.ncp < 0.5,
        "{}",
        out.report.ncp
    );
    assert!((out.report.average_class_size - 2_000.0 / out.report.classes as f64).abs() < 1e-9);
}

#[test]
fn each_l_diversity_variant_holds_in_every_class() {
    let input = people(3_000, 2);
    for l in [
        LDiversity::Distinct { l: 3 },
        LDiversity::Entropy { l: 3.0 },
        LDiversity::Recursive { c: 2.0, l: 3 },
    ] {
        let mut r = request(5);
        r.params.l_diversity = Some(l);
        let out = anonymize(&input, &r).unwrap();
        for (key, values) in classes(&out.batch) {
            let mut counts: HashMap<&str, u32> = HashMap::new();
            for v in &values {
                *counts.entry(v).or_default() += 1;
            }
            let counts: Vec<u32> = counts.into_values().collect();
            assert!(values.len() >= 5);
            assert!(
                l.holds(&counts),
                "{} fails in class {key:?}: {counts:?}",
                l.describe()
            );
        }
        assert!(out.report.l_distinct.unwrap() >= 3);
    }
}

#[test]
fn t_closeness_bounds_every_class_distance() {
    let input = people(3_000, 3);
    let mut r = request(5);
    r.params.t_closeness = Some(0.15);
    let out = anonymize(&input, &r).unwrap();
    let t = out.report.t.unwrap();
    assert!(t <= 0.15 + 1e-9, "achieved t = {t}");
    // Recompute the equal-distance EMD here, independently.
    let all = text(&out.batch, "dx");
    let global = |d: &str| all.iter().filter(|x| *x == d).count() as f64 / all.len() as f64;
    for values in classes(&out.batch).values() {
        let emd: f64 = 0.5
            * DIAGNOSES
                .iter()
                .map(|d| {
                    (values.iter().filter(|x| x == d).count() as f64 / values.len() as f64
                        - global(d))
                    .abs()
                })
                .sum::<f64>();
        assert!(emd <= 0.15 + 1e-9, "class at distance {emd}");
    }
    // A tighter t costs more information.
    let loose = anonymize(&input, &request(5)).unwrap();
    assert!(out.report.ncp > loose.report.ncp);
}

#[test]
fn t_closeness_uses_the_hierarchical_distance_when_the_sensitive_column_has_a_tree() {
    let input = people(3_000, 6);
    let mut r = request(5);
    r.hierarchies = Hierarchies::from_toml(&format!(
        "{HIERARCHIES}\n[dx]\nkind = \"tree\"\n[dx.tree]\n\"*\" = [\"infection\", \"chronic\"]\ninfection = [\"flu\"]\nchronic = [\"asthma\", \"gout\", \"copd\", \"migraine\", \"eczema\"]\n"
    ))
    .unwrap();
    r.params.t_closeness = Some(0.1);
    let hierarchical = anonymize(&input, &r).unwrap();
    assert!(hierarchical.report.t.unwrap() <= 0.1 + 1e-9);
    // Moving mass between two chronic diagnoses costs half as much as across
    // the root, so the same t allows finer classes than equal distance.
    r.hierarchies = Hierarchies::from_toml(HIERARCHIES).unwrap();
    let equal = anonymize(&input, &r).unwrap();
    assert!(
        hierarchical.report.classes > equal.report.classes,
        "hierarchical {} vs equal {}",
        hierarchical.report.classes,
        equal.report.classes
    );
}

#[test]
fn impossible_requirements_are_refused_naming_the_constraint() {
    let input = people(40, 4);
    let err = anonymize(&input, &request(41)).unwrap_err().to_string();
    assert!(err.contains("40 rows, fewer than k = 41"), "{err}");

    let mut r = request(2);
    r.params.l_diversity = Some(LDiversity::Distinct { l: 7 });
    let err = anonymize(&input, &r).unwrap_err().to_string();
    assert!(
        err.contains("distinct 7-diversity") && err.contains("6 distinct values"),
        "{err}"
    );

    let mut r = request(2);
    r.quasi_identifiers.push("height".into());
    let err = anonymize(&input, &r).unwrap_err().to_string();
    assert!(
        err.contains("`height`") && err.contains("age, race"),
        "{err}"
    );

    let mut r = request(2);
    r.keep = vec!["age".into()];
    let err = anonymize(&input, &r).unwrap_err().to_string();
    assert!(err.contains("named twice"), "{err}");

    let mut r = request(2);
    r.sensitive = None;
    r.params.t_closeness = Some(0.2);
    assert!(
        anonymize(&input, &r)
            .unwrap_err()
            .to_string()
            .contains("need a sensitive attribute")
    );
}

#[test]
fn a_value_missing_from_a_hierarchy_or_a_null_is_named() {
    let input = table(vec![
        ("race", strings(["White", "Martian"])),
        ("dx", strings(["a", "b"])),
    ]);
    let mut r = request(1);
    r.quasi_identifiers = vec!["race".into()];
    let err = anonymize(&input, &r).unwrap_err().to_string();
    assert!(
        err.contains("\"Martian\"") && err.contains("`race`"),
        "{err}"
    );

    let input = table(vec![
        (
            "age",
            std::sync::Arc::new(Int64Array::from(vec![Some(3), None])) as ArrayRef,
        ),
        ("dx", strings(["a", "b"])),
    ]);
    let mut r = request(1);
    r.quasi_identifiers = vec!["age".into()];
    let err = anonymize(&input, &r).unwrap_err().to_string();
    assert!(err.contains("`age` is null at row 1"), "{err}");
}

#[test]
fn relaxed_mode_splits_ties_that_strict_mode_cannot() {
    // Fifteen 1s and five 2s: a cut by value gives 15 | 5 (5 < k); a cut of
    // the sorted rows gives 10 | 10.
    let input = table(vec![(
        "x",
        ints((0..20).map(|i| if i < 15 { 1 } else { 2 })),
    )]);
    let mut r = Request {
        quasi_identifiers: vec!["x".into()],
        sensitive: None,
        keep: vec![],
        hierarchies: Hierarchies::default(),
        params: Params::k(10),
    };
    let strict = anonymize(&input, &r).unwrap();
    assert_eq!(strict.report.classes, 1);
    assert_eq!(text(&strict.batch, "x")[0], "1-2");
    r.params.mode = Mode::Relaxed;
    let relaxed = anonymize(&input, &r).unwrap();
    assert_eq!(relaxed.report.classes, 2);
    assert!(relaxed.report.ncp < strict.report.ncp);
    assert!(relaxed.report.min_class_size >= 10);
}

#[test]
fn suppression_removes_outliers_within_the_limit_only() {
    // 99 values near 50 and one far outlier; k = 3.
    let mut xs: Vec<f64> = (0..99).map(|i| 40.0 + f64::from(i % 20)).collect();
    xs.push(10_000.0);
    let input = table(vec![("x", floats(xs.clone())), ("id", ints(0..100))]);
    let mut r = Request {
        quasi_identifiers: vec!["x".into()],
        sensitive: None,
        keep: vec!["id".into()],
        hierarchies: Hierarchies::default(),
        params: Params::k(3),
    };
    let without = anonymize(&input, &r).unwrap();
    assert_eq!(without.report.suppressed, 0);
    // Categorical outliers: one row of a race no one else has.
    let mut races: Vec<&str> = (0..99)
        .map(|i| if i % 2 == 0 { "White" } else { "Black" })
        .collect();
    races.push("Asian");
    let input = table(vec![("race", strings(&races)), ("id", ints(0..100))]);
    r.quasi_identifiers = vec!["race".into()];
    r.hierarchies = Hierarchies::from_toml(HIERARCHIES).unwrap();
    let pooled = anonymize(&input, &r).unwrap();
    assert_eq!(pooled.report.suppressed, 0);
    // Without suppression the lone Asian row pools with Black under Non-white.
    let labels = text(&pooled.batch, "race");
    assert_eq!(labels[99], "Non-white");
    assert!(labels.contains(&"White".to_string()));
    r.params.suppression_limit = 0.01;
    let suppressed = anonymize(&input, &r).unwrap();
    assert_eq!(suppressed.report.suppressed, 1);
    assert_eq!(suppressed.batch.num_rows(), 99);
    assert!(
        !text(&suppressed.batch, "id").contains(&"99".to_string()),
        "the outlier row is gone"
    );
    assert!(
        suppressed.report.ncp < pooled.report.ncp,
        "suppression buys precision"
    );
    assert_eq!(
        suppressed.report.discernibility,
        49.0 * 49.0 + 50.0 * 50.0 + 100.0
    );
}

#[test]
fn the_same_input_gives_the_same_output_whatever_the_thread_count() {
    let input = people(40_000, 5);
    let mut r = request(7);
    r.params.suppression_limit = 0.02;
    r.params.l_diversity = Some(LDiversity::Distinct { l: 2 });
    let a = anonymize(&input, &r).unwrap();
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap();
    let b = pool.install(|| anonymize(&input, &r).unwrap());
    assert_eq!(a.batch, b.batch);
    assert_eq!(a.report.suppressed, b.report.suppressed);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn k_anonymity_and_distinct_l_hold_for_any_table(
        n in 1usize..400,
        k in 1usize..25,
        l in 1usize..4,
        relaxed in any::<bool>(),
        suppression in 0.0f64..0.1,
        seed in any::<u64>(),
    ) {
        let input = people(n, seed);
        let mut r = request(k);
        r.params.mode = if relaxed { Mode::Relaxed } else { Mode::Strict };
        r.params.l_diversity = Some(LDiversity::Distinct { l });
        r.params.suppression_limit = suppression;
        match anonymize(&input, &r) {
            Ok(out) => {
                let m = measure(&out.batch, &qis(), Some("dx")).unwrap();
                prop_assert_eq!(out.batch.num_rows() + out.report.suppressed, n);
                prop_assert!(out.report.suppressed as f64 <= suppression * n as f64);
                if out.batch.num_rows() > 0 {
                    prop_assert!(m.k >= k, "k = {} < {}", m.k, k);
                    prop_assert!(m.l_distinct.unwrap() >= l);
                }
            }
            Err(e) => {
                // Refused only when the whole table cannot qualify.
                let distinct = text(&input, "dx").into_iter().collect::<std::collections::HashSet<_>>().len();
                prop_assert!(n < k || distinct < l, "refused without cause: {}", e);
            }
        }
    }
}
