//! The synthetic cohort: deterministic, realistic, streaming.

use std::collections::HashMap;

use cohort_engine::records::fhir::parse_bundle;
use cohort_engine::records::generate::{Options, generate};
use cohort_engine::records::projection::Row;

use super::cohort_json;

fn files(dir: &std::path::Path) -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let p = e.unwrap().path();
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read(&p).unwrap(),
            )
        })
        .collect();
    v.sort();
    v
}

#[test]
fn same_seed_same_bytes_other_seed_other_bytes() {
    let tmp = tempfile::tempdir().unwrap();
    let mut a = Options::new(130, 7, tmp.path().join("a"));
    a.per_bundle = 40;
    let ra = generate(&a).unwrap();
    assert_eq!(ra.bundles, 4);
    let b = Options {
        out: tmp.path().join("b"),
        ..a.clone()
    };
    generate(&b).unwrap();
    let c = Options {
        out: tmp.path().join("c"),
        seed: 8,
        ..a.clone()
    };
    generate(&c).unwrap();
    let (fa, fb, fc) = (files(&a.out), files(&b.out), files(&c.out));
    assert_eq!(fa.len(), 4);
    assert_eq!(fa, fb, "same seed must give identical bytes");
    assert_ne!(fa, fc, "another seed must differ");
    assert!(generate(&Options { per_bundle: 0, ..a }).is_err());
}

#[derive(Default)]
struct Person {
    age_years: i32,
    female: bool,
    hispanic: bool,
    conditions: Vec<String>,
    a1c: Vec<f64>,
    systolic: Vec<f64>,
    meds: Vec<String>,
}

#[test]
fn population_is_realistic_and_carries_identifiers() {
    let tmp = tempfile::tempdir().unwrap();
    let opts = Options::new(3000, 2026, tmp.path().join("g"));
    generate(&opts).unwrap();
    let as_of_days = cohort_engine::records::fhir::parse_date("2026-01-01").unwrap();
    let mut people: HashMap<String, Person> = HashMap::new();
    let mut zips = Vec::new();
    for (name, bytes) in files(&opts.out) {
        let bundle = parse_bundle(&name, &bytes).unwrap();
        assert!(bundle.skipped.is_empty());
        for r in bundle.resources {
            let p = people.entry(r.patient_id.clone()).or_default();
            match r.row {
                Row::Patient(row) => {
                    p.age_years = (as_of_days - row.birth_date.unwrap()) / 365;
                    p.female = row.gender.as_deref() == Some("female");
                    p.hispanic = row.ethnicity.as_deref() == Some("Hispanic or Latino");
                    assert!(row.family_name.is_some() && row.given_name.is_some());
                    assert!(row.phone.as_deref().is_some_and(|ph| ph.contains("555-01")));
                    assert!(row.ssn.as_deref().is_some_and(|s| s.starts_with("999-")));
                    assert!(row.mrn.is_some() && row.email.is_some() && row.address_line.is_some());
                    assert!(row.race.is_some());
                    zips.push(row.zip.unwrap());
                }
                Row::Condition(c) => p.conditions.push(c.icd10),
                Row::Observation(o) if o.loinc == "4548-4" => p.a1c.push(o.value.unwrap()),
                Row::Observation(o) if o.loinc == "8480-6" => p.systolic.push(o.value.unwrap()),
                Row::Medication(m) => p.meds.push(m.rxnorm),
                _ => {}
            }
        }
    }
    assert_eq!(people.len(), 3000);
    let n = people.len() as f64;
    let share = |f: &dyn Fn(&Person) -> bool| people.values().filter(|p| f(p)).count() as f64 / n;
    // The seed is fixed, so these never fail by chance; the bands are also many
    // standard errors wide at n = 3000, so a reseed would pass: a failure means
    // the population model changed.
    assert!((0.45..0.56).contains(&share(&|p| p.female)));
    assert!((0.14..0.24).contains(&share(&|p| p.hispanic)));
    assert!(
        share(&|p| p.age_years >= 90) > 0.003,
        "Safe Harbor's 90+ group must exist"
    );
    assert!(share(&|p| p.age_years < 5) > 0.03);
    let adults: Vec<&Person> = people.values().filter(|p| p.age_years >= 18).collect();
    let has = |p: &Person, c: &str| p.conditions.iter().any(|x| x == c);
    let prev = |c: &str| adults.iter().filter(|p| has(p, c)).count() as f64 / adults.len() as f64;
    assert!(
        (0.06..0.25).contains(&prev("E11.9")),
        "diabetes prevalence {}",
        prev("E11.9")
    );
    assert!(
        (0.20..0.50).contains(&prev("I10")),
        "hypertension prevalence {}",
        prev("I10")
    );
    assert!(prev("J45.909") > 0.04);
    // Mean of a measurement among adults with (or without) a condition.
    let mean_by = |code: &str, with: bool, values: fn(&Person) -> &Vec<f64>| {
        let v: Vec<f64> = adults
            .iter()
            .filter(|p| has(p, code) == with)
            .flat_map(|p| values(p).iter().copied())
            .collect();
        v.iter().sum::<f64>() / v.len() as f64
    };
    let a1c = |diabetic| mean_by("E11.9", diabetic, |p| &p.a1c);
    assert!(
        a1c(true) > a1c(false) + 1.5,
        "HbA1c follows diabetes: {} vs {}",
        a1c(true),
        a1c(false)
    );
    let sys = |htn| mean_by("I10", htn, |p| &p.systolic);
    assert!(
        sys(true) > sys(false) + 15.0,
        "systolic follows hypertension: {} vs {}",
        sys(true),
        sys(false)
    );
    // Metformin (RxNorm 861007) only for diabetics.
    assert!(
        people
            .values()
            .filter(|p| p.meds.iter().any(|m| m == "861007"))
            .all(|p| has(p, "E11.9"))
    );
    // Some ZIPs fall in 3-digit prefixes Safe Harbor must blank.
    let restricted = ["036", "059", "692", "821", "879", "893"];
    assert!(zips.iter().any(|z| restricted.contains(&&z[..3])));
}

#[test]
fn generation_streams_in_constant_memory() {
    let tmp = tempfile::tempdir().unwrap();
    let run = |n: u64| {
        let out = tmp.path().join(format!("g{n}"));
        let r = cohort_json(
            &tmp.path().join("data"),
            &[
                "generate",
                "--patients",
                &n.to_string(),
                "--seed",
                "1",
                "--out",
                out.to_str().unwrap(),
            ],
        );
        r["peak_rss_bytes"]
            .as_u64()
            .expect("peak RSS is reported on Linux")
    };
    let small = run(1_000);
    let large = run(20_000);
    assert!(
        !tmp.path().join("data").exists(),
        "generate must not create a data directory"
    );
    // Twenty times the patients may not need more than a few MB more memory.
    assert!(
        large < small + 32 * 1024 * 1024,
        "peak RSS grew from {small} to {large} bytes"
    );
}
