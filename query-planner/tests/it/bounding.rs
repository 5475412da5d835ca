//! Contribution bounding: per patient, across joined tables, over groups,
//! random and deterministic.

use crate::fixture::*;

/// Patient 0 has 44 observations and 10 conditions: 440 joined rows. The
/// bound is per patient, so they count at most `max_rows` = 3.
#[tokio::test]
async fn a_patient_with_many_rows_across_joined_tables_counts_max_rows() {
    let (planner, options) = exact();
    let sql = "SELECT COUNT(*) AS n FROM observations o \
               JOIN conditions c ON o.patient_id = c.patient_id";
    let answer = run(&planner, sql, &options).await;
    let conditions = |i: usize| if i == 0 { 10 } else { i % 3 };
    let expected: usize = (0..PATIENTS)
        .map(|i| (observations_of(i) * conditions(i)).min(3))
        .sum();
    assert_eq!(column(&answer, 0), [expected as f64]);
    let joined: usize = (0..PATIENTS)
        .map(|i| observations_of(i) * conditions(i))
        .sum();
    assert!(
        joined > expected + 400,
        "patient 0 alone has 440 joined rows"
    );

    // Only patient 0's rows: the answer is exactly the bound.
    let sql = "SELECT COUNT(*) AS n FROM observations o \
               JOIN conditions c ON o.patient_id = c.patient_id WHERE o.patient_id = 'p0000'";
    let answer = run(&planner, sql, &options).await;
    assert_eq!(column(&answer, 0), [3.0]);
}

#[tokio::test]
async fn a_patient_adds_to_at_most_max_groups_groups() {
    // Patient 0 has 22 hba1c and 22 sbp observations. With max_groups = 1
    // their rows go to one code only, at most 3 of them.
    let (planner, options) = exact_with(&POLICY.replace("max_groups = 2", "max_groups = 1"));
    let sql = "SELECT code, COUNT(*) AS n FROM observations WHERE patient_id = 'p0000' \
               GROUP BY code";
    let plan = plan(&planner, sql, &options).await;
    assert!(
        shape(&plan).contains("max_groups=1 by [observations.code]"),
        "{}",
        shape(&plan)
    );
    let answer = plan.execute().await.unwrap();
    let counts = column(&answer, 1);
    assert_eq!(counts.len(), 2, "both codes are in the public domain");
    assert_eq!(counts.iter().sum::<f64>(), 3.0, "{:?}", rows(&answer));
    assert!(
        counts.contains(&0.0),
        "one code gets nothing: {:?}",
        rows(&answer)
    );
}

#[tokio::test]
async fn reservoir_sampling_varies_and_first_by_is_deterministic() {
    // Patient 0's 44 observations have values 0, 1, ..., 43: their sum over
    // 3 kept rows depends on which rows are kept.
    let sql = "SELECT SUM(value) AS s FROM observations WHERE patient_id = 'p0000'";
    let (planner, options) = exact();
    let mut sums = std::collections::BTreeSet::new();
    for _ in 0..20 {
        let answer = run(&planner, sql, &options).await;
        sums.insert(column(&answer, 0)[0] as i64);
    }
    // P[20 random draws of 3 of 44 rows all give one sum] is far below 1e-9.
    assert!(sums.len() > 1, "reservoir sampling is random: {sums:?}");
    assert!(sums.iter().all(|&s| (3..=42 + 41 + 40).contains(&s)));

    let (planner, options) = exact_with(&POLICY.replace(
        "max_groups = 2",
        "max_groups = 2\nsampling = { first_by = [\"value\"] }",
    ));
    for _ in 0..5 {
        let answer = run(&planner, sql, &options).await;
        assert_eq!(
            column(&answer, 0),
            [0.0 + 1.0 + 2.0],
            "the 3 smallest values"
        );
    }
}

#[tokio::test]
async fn rows_of_patients_outside_the_query_do_not_contribute() {
    let (planner, options) = exact();
    let sql = "SELECT COUNT(*) FROM patients WHERE sex = 'M'";
    let answer = run(&planner, sql, &options).await;
    assert_eq!(column(&answer, 0), [(PATIENTS / 2) as f64]);
}

/// Rows without a patient belong to no one: bounding drops them, so they
/// are not counted, however many there are.
#[tokio::test]
async fn rows_without_a_patient_are_dropped() {
    use std::sync::Arc;

    use arrow::array::{ArrayRef, Float64Array, RecordBatch, StringArray};
    use cohort_query_planner::{Planner, StudyPolicy};
    use datafusion::datasource::MemTable;

    let ids: Vec<Option<&str>> = [Some("p1"), None, Some("p1"), None, None, Some("p2"), None]
        .into_iter()
        .chain(std::iter::repeat_n(None, 50))
        .collect();
    let values: Vec<f64> = (0..ids.len()).map(|i| i as f64 % 10.0).collect();
    let batch = RecordBatch::try_from_iter([
        ("patient_id", Arc::new(StringArray::from(ids)) as ArrayRef),
        ("value", Arc::new(Float64Array::from(values))),
    ])
    .unwrap();
    let table = Arc::new(MemTable::try_new(batch.schema(), vec![vec![batch]]).unwrap());
    let policy = POLICY.replace("max_epsilon = \"5\"", "max_epsilon = \"10000000000000\"");
    let policy = format!(
        "{}\n[tables.readings.columns]\npatient_id = {{}}\nvalue = {{ lower = 0, upper = 10 }}\n",
        policy
    );
    let mut tables = tables();
    tables.insert("readings".to_owned(), table);
    let planner = Planner::new(StudyPolicy::from_toml(&policy).unwrap(), tables).unwrap();
    let (_, options) = exact();
    let answer = run(&planner, "SELECT COUNT(*) AS n FROM readings", &options).await;
    assert_eq!(column(&answer, 0), [3.0], "p1's two rows and p2's one");
}

/// The local engine gathers the bounding's input in one partition: no
/// hash repartition by patient below it, whatever the table's partitions
/// (the fixture's tables have two). A patient whose rows are in both
/// partitions still counts at most `max_rows`.
#[tokio::test]
async fn the_local_engine_bounds_in_one_partition_without_hashing_the_unit() {
    use std::sync::Arc;

    use arrow::array::{ArrayRef, RecordBatch, StringArray};
    use cohort_query_planner::{Planner, StudyPolicy};
    use datafusion::datasource::MemTable;

    let (planner, options) = exact();
    let physical = plan(&planner, "SELECT COUNT(*) AS n FROM observations", &options)
        .await
        .physical_plan()
        .await
        .unwrap();
    let bounding = physical
        .find("BoundContributionsExec")
        .expect("a bounding operator");
    assert!(
        physical[bounding..].contains("gather=one-partition"),
        "{physical}"
    );
    assert!(
        !physical[bounding..].contains("RepartitionExec: partitioning=Hash"),
        "nothing below the bounding hashes the unit:\n{physical}"
    );

    // p1's five rows: three in one partition, two in the other.
    let part = |ids: &[&str]| {
        RecordBatch::try_from_iter([(
            "patient_id",
            Arc::new(StringArray::from(ids.to_vec())) as ArrayRef,
        )])
        .unwrap()
    };
    let first = part(&["p0", "p1", "p1", "p1"]);
    let second = part(&["p1", "p1", "p2"]);
    let table =
        Arc::new(MemTable::try_new(first.schema(), vec![vec![first], vec![second]]).unwrap());
    let policy = format!(
        "{}\n[tables.visits.columns]\npatient_id = {{}}\n",
        POLICY.replace("max_epsilon = \"5\"", "max_epsilon = \"10000000000000\"")
    );
    let mut tables = tables();
    tables.insert("visits".to_owned(), table);
    let planner = Planner::new(StudyPolicy::from_toml(&policy).unwrap(), tables).unwrap();
    let answer = run(&planner, "SELECT COUNT(*) AS n FROM visits", &options).await;
    assert_eq!(
        column(&answer, 0),
        [5.0],
        "p0's row, three of p1's, p2's row"
    );
}

/// A Parquet file of one row group (pandas' default) is read by every core,
/// each partition its own rows: no row is read twice or missed, and a
/// patient whose rows straddle the cut is bounded as one, whether the file
/// is stored patient by patient or not.
#[tokio::test]
async fn a_file_of_one_row_group_is_read_by_rows_in_partitions_and_bounded_whole() {
    use std::sync::Arc;

    use arrow::array::{ArrayRef, RecordBatch, StringArray};
    use cohort_query_planner::{Planner, StudyPolicy, sources};
    use datafusion::parquet::arrow::ArrowWriter;
    use datafusion::parquet::file::properties::WriterProperties;

    // 150,000 rows (past the size worth cutting): one row per patient,
    // except the 5 rows of each of p0074998..p0075002, around the middle.
    let mut ids: Vec<String> = (0..149_980).map(|i| format!("p{i:07}")).collect();
    for patient in 74_998..75_003 {
        ids.extend(std::iter::repeat_n(format!("p{patient:07}"), 4));
    }
    ids.sort();
    let distinct = 149_980;
    // Each patient counts at most max_rows = 3.
    let expected = (distinct - 5 + 5 * 3) as f64;
    let dir = tempfile::tempdir().unwrap();
    for (name, sorted) in [("sorted.parquet", true), ("shuffled.parquet", false)] {
        let mut ids = ids.clone();
        if !sorted {
            // A fixed interleaving: the bounding's sorted path is refused.
            let (evens, odds): (Vec<_>, Vec<_>) =
                ids.into_iter().enumerate().partition(|(i, _)| i % 2 == 0);
            ids = odds
                .into_iter()
                .rev()
                .chain(evens)
                .map(|(_, id)| id)
                .collect();
        }
        let batch = RecordBatch::try_from_iter([(
            "patient_id",
            Arc::new(StringArray::from(ids)) as ArrayRef,
        )])
        .unwrap();
        let path = dir.path().join(name);
        let properties = WriterProperties::builder()
            .set_max_row_group_row_count(Some(1_000_000))
            .build();
        let mut writer = ArrowWriter::try_new(
            std::fs::File::create(&path).unwrap(),
            batch.schema(),
            Some(properties),
        )
        .unwrap();
        writer.write(&batch).unwrap();
        writer.close().unwrap();

        let policy = format!(
            "{}\n[tables.visits.columns]\npatient_id = {{}}\n",
            POLICY.replace("max_epsilon = \"5\"", "max_epsilon = \"10000000000000\"")
        );
        let mut tables = tables();
        tables.insert("visits".to_owned(), sources::parquet(&path).await.unwrap());
        let planner = Planner::new(StudyPolicy::from_toml(&policy).unwrap(), tables).unwrap();
        let (_, options) = exact();
        let plan = plan(&planner, "SELECT COUNT(*) AS n FROM visits", &options).await;
        let physical = plan.physical_plan().await.unwrap();
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        if cores > 1 {
            assert!(
                physical.contains(&format!("file_groups={{{cores} groups")),
                "the one row group is read in {cores} partitions:\n{physical}"
            );
        }
        let answer = plan.execute().await.unwrap();
        assert_eq!(column(&answer, 0), [expected], "{name}");
    }
}
