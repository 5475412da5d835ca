//! OMOP CDM 5.4 study views end to end: the view de-identified and
//! consent-filtered, its schema and the vocabulary's checked against
//! pyomop, characterization under DP with the vocabulary joined as public
//! tables, OHDSI's SQL dialect, small cells, and the joins that are refused.

use std::path::Path;
use std::process::Command;

use arrow::array::AsArray;
use arrow::datatypes::{Date32Type, Int64Type};
use chrono::Datelike;
use cohort_engine::research::omop;

use crate::research::{setup, view_file};
use crate::{cohort, cohort_json, stderr};

/// The example OMOP study, answered at once (no deadline) for the test.
fn study(extra: &str) -> String {
    omop::EXAMPLE_STUDY
        .replace(
            "deadline_ms = 3000\nper_patient_us = 40",
            "release = \"immediate\"",
        )
        .replace(
            "data_model = \"omop\"",
            &format!("data_model = \"omop\"\n{extra}"),
        )
}

fn python() -> std::path::PathBuf {
    let python = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/pyclient/bin/python");
    assert!(
        python.exists(),
        "{} is missing: run clients/python/setup-venv.sh (scripts/test does)",
        python.display()
    );
    python
}

fn query(d: &Path, id: &str, sql: &str, extra: &[&str]) -> serde_json::Value {
    let mut args = vec!["query", id, sql, "--as", "researcher"];
    args.extend_from_slice(extra);
    cohort_json(d, &args)
}

#[test]
fn an_omop_study_is_characterized_under_dp_with_the_vocabulary_as_public_tables() {
    let s = setup(30);
    let d = &s.data;
    let (id, _) = s.approved_study(&study(""), 20);
    let id = id.to_string();

    // Persons by gender: the gender concepts are the domain (from `concept`).
    let by_gender = query(
        d,
        &id,
        "SELECT gender_concept_id, COUNT(DISTINCT person_id) AS n FROM person \
         GROUP BY gender_concept_id ORDER BY gender_concept_id",
        &[],
    );
    let rows = by_gender["answer"]["rows"].as_array().unwrap();
    let keys: Vec<i64> = rows.iter().map(|r| r[0].as_i64().unwrap()).collect();
    assert_eq!(keys, [8507, 8532], "{by_gender}");
    assert_eq!(by_gender["answer"]["members"], 20);

    // The view: the consenting persons only, per-study integer ids, Safe
    // Harbor dates (1 January), no source identifiers.
    let person = cohort_engine::storage::tabular::read(&view_file(d, &id, "person")).unwrap();
    assert_eq!(person.num_rows(), 20);
    let ids = person
        .column_by_name("person_id")
        .unwrap()
        .as_primitive::<Int64Type>();
    assert!(ids.iter().all(|v| v.is_some_and(|v| v > 0)));
    assert!(person.column_by_name("person_source_value").is_none());
    let conditions =
        cohort_engine::storage::tabular::read(&view_file(d, &id, "condition_occurrence")).unwrap();
    assert!(conditions.num_rows() > 0);
    let starts = conditions
        .column_by_name("condition_start_date")
        .unwrap()
        .as_primitive::<Date32Type>();
    for day in starts.iter().flatten() {
        let date = chrono::NaiveDate::from_ymd_opt(1970, 1, 1).unwrap()
            + chrono::Duration::days(i64::from(day));
        assert_eq!(date.ordinal(), 1, "Safe Harbor keeps only the year: {date}");
    }
    let person_ids: std::collections::HashSet<i64> = ids.iter().flatten().collect();
    let condition_people = conditions
        .column_by_name("person_id")
        .unwrap()
        .as_primitive::<Int64Type>();
    assert!(
        condition_people
            .iter()
            .flatten()
            .all(|p| person_ids.contains(&p)),
        "condition rows belong to the view's persons"
    );

    // Conditions rolled up to their ICD-10-CM chapters through
    // `concept_ancestor`: a private ⋈ public join, bounded per person.
    let rollup = "SELECT c.concept_name AS chapter, COUNT(DISTINCT co.person_id) AS persons \
         FROM condition_occurrence co \
         JOIN concept_ancestor ca ON ca.descendant_concept_id = co.condition_concept_id \
         JOIN concept c ON c.concept_id = ca.ancestor_concept_id \
         WHERE c.concept_class_id = 'ICD10 Chapter' GROUP BY c.concept_name";
    let explain = query(d, &id, rollup, &["--explain"]);
    let text = explain["explain"].as_str().unwrap();
    assert!(text.contains("small cells: OHDSI"), "{text}");
    assert!(text.contains("at most 4 group(s)"), "{text}");
    assert!(
        text.contains("all 6 groups are released"),
        "the chapters alone: {text}"
    );
    let answer = query(d, &id, rollup, &[]);
    let chapters: Vec<&str> = answer["answer"]["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r[0].as_str().unwrap())
        .collect();
    assert!(
        chapters.contains(&"Endocrine, nutritional and metabolic diseases"),
        "{chapters:?}"
    );
    // Counts below 5 are withheld (NULL), never released small.
    for row in answer["answer"]["rows"].as_array().unwrap() {
        assert!(
            row[1].is_null() || row[1].as_f64().unwrap() >= 5.0,
            "{row:?}"
        );
    }

    // The vocabulary alone is public: no cost, exact.
    let before = cohort_json(d, &["study", "show", &id])["remaining"].clone();
    let vocabulary = query(
        d,
        &id,
        "SELECT COUNT(*) AS n FROM concept WHERE vocabulary_id = 'ICD10CM'",
        &[],
    );
    let expected = omop::vocabulary::vocabulary()
        .unwrap()
        .concepts
        .iter()
        .filter(|c| c.vocabulary == "ICD10CM")
        .count();
    assert_eq!(vocabulary["answer"]["rows"][0][0], expected as u64);
    assert_eq!(cohort_json(d, &["study", "show", &id])["remaining"], before);

    // Achilles analysis 2 as OHDSI ships it, through the dialect.
    let achilles_2 = "--HINT DISTRIBUTE_ON_KEY(stratum_1)\nselect 2 as analysis_id,\n\
        CAST(gender_concept_id AS VARCHAR(255)) as stratum_1,\n\
        cast(null as varchar(255)) as stratum_2, cast(null as varchar(255)) as stratum_3,\n\
        COUNT_BIG(distinct person_id) as count_value\n\
        into @scratchDatabaseSchema@schemaDelim@tempAchillesPrefix_2\n\
        from @cdmDatabaseSchema.person\ngroup by GENDER_CONCEPT_ID;";
    let analysis = s.write("achilles-2.sql", achilles_2);
    let ohdsi = cohort_json(
        d,
        &[
            "query",
            &id,
            "--sql-file",
            analysis.to_str().unwrap(),
            "--as",
            "researcher",
            "--dialect",
            "ohdsi",
        ],
    );
    let columns = ohdsi["answer"]["columns"].as_array().unwrap();
    assert_eq!(columns[0], "analysis_id");
    assert!(columns.iter().any(|c| c == "count_value"), "{columns:?}");
    assert_eq!(ohdsi["answer"]["rows"].as_array().unwrap().len(), 2);
    // Without the dialect the same text is not SQL the planner reads.
    let plain = cohort(
        d,
        &[
            "query",
            &id,
            "--sql-file",
            analysis.to_str().unwrap(),
            "--as",
            "researcher",
        ],
    );
    assert!(!plain.status.success());

    // Joins that would pair different persons' rows are refused, naming the rule.
    for sql in [
        "SELECT COUNT(*) FROM condition_occurrence a JOIN condition_occurrence b \
         ON a.condition_concept_id = b.condition_concept_id",
        "SELECT COUNT(*) FROM condition_occurrence a \
         JOIN concept_ancestor ca ON ca.descendant_concept_id = a.condition_concept_id \
         JOIN drug_exposure b ON b.drug_concept_id = ca.ancestor_concept_id",
    ] {
        let refused = cohort(d, &["query", &id, sql, "--as", "researcher"]);
        assert!(!refused.status.success(), "{sql}");
        assert!(
            stderr(&refused).contains("joins-on-the-privacy-unit"),
            "{sql}: {}",
            stderr(&refused)
        );
    }

    // The schema, against pyomop's CDM 5.4 models: every table cohort
    // defines, the view's stored tables and the vocabulary's files.
    let spec = s.tmp.path().join("omop-tables.json");
    std::fs::write(
        &spec,
        serde_json::to_vec(&cohort_json(d, &["omop", "tables"])).unwrap(),
    )
    .unwrap();
    let vocabulary_dir = s.tmp.path().join("vocabulary");
    cohort_json(
        d,
        &[
            "omop",
            "vocabulary",
            "--out",
            vocabulary_dir.to_str().unwrap(),
        ],
    );
    let view_dir = view_file(d, &id, "person").parent().unwrap().to_path_buf();
    let mut files: Vec<String> = Vec::new();
    for dir in [&view_dir, &vocabulary_dir] {
        for entry in std::fs::read_dir(dir).unwrap().flatten() {
            let path = entry.path();
            if path.extension().is_some_and(|e| e == "parquet") {
                files.push(path.display().to_string());
            }
        }
    }
    assert_eq!(files.len(), 8 + 4, "{files:?}");
    let check = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/omop/pyomop_check.py");
    let o = Command::new(python())
        .arg(&check)
        .arg(&spec)
        .args(&files)
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{report}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(report.matches("match pyomop").count(), 12, "{report}");
}

#[test]
fn a_date_shift_keeps_intervals_and_moves_every_persons_dates() {
    let s = setup(12);
    let d = &s.data;
    let (id, _) = s.approved_study(&study("date_shift_days = 30"), 12);
    let id = id.to_string();
    query(
        d,
        &id,
        "SELECT COUNT(DISTINCT person_id) AS n FROM observation_period",
        &[],
    );
    let periods =
        cohort_engine::storage::tabular::read(&view_file(d, &id, "observation_period")).unwrap();
    assert!(periods.num_rows() > 0);
    let start = periods
        .column_by_name("observation_period_start_date")
        .unwrap()
        .as_primitive::<Date32Type>();
    let end = periods
        .column_by_name("observation_period_end_date")
        .unwrap()
        .as_primitive::<Date32Type>();
    // Shifted dates fall on any day, not only 1 January; no period ends
    // before it starts.
    let not_january_first = (0..start.len())
        .filter(|&i| {
            let date = chrono::NaiveDate::from_ymd_opt(1970, 1, 1).unwrap()
                + chrono::Duration::days(i64::from(start.value(i)));
            date.ordinal() != 1
        })
        .count();
    assert!(not_january_first > 0);
    assert!((0..start.len()).all(|i| end.value(i) >= start.value(i)));

    // The study file's refusals name what is wrong.
    let bad = s.write("bad.toml", &study("date_shift_days = 0"));
    let o = cohort(
        d,
        &[
            "study",
            "propose",
            bad.to_str().unwrap(),
            "--as",
            "researcher",
        ],
    );
    assert!(
        stderr(&o).contains("date_shift_days must be 1 to 365"),
        "{}",
        stderr(&o)
    );
}
