//! The same plans, the same bounds, on the local engine and on Ballista:
//! exact parts equal, noisy answers equal in distribution.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use arrow::array::{AsArray, Float64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Float64Type, Int64Type, Schema};
use cohort_anonymizer::accountant::{Amount, Charge};
use cohort_distributed::BallistaEngine;
use cohort_query_planner::distributed::RemoteEngine;
use cohort_query_planner::{Planner, PrivateAnswer, QueryOptions, StudyPolicy, sources};
use datafusion::execution::TaskContext;
use datafusion::physical_plan::{ExecutionPlan, SendableRecordBatchStream};

const PATIENTS: usize = 2_000;

const POLICY: &str = r#"
privacy_unit = "patient_id"
[query]
epsilon = "1"
max_epsilon = "10000000000000"
delta = "0.000001"
[execution]
release = "immediate"
[contribution]
max_rows = 2
max_groups = 1
[tables.visits.columns]
patient_id = {}
sex = { domain = ["F", "M"] }
hba1c = { lower = 4, upper = 14 }
"#;

/// Patient `i` has `i % 4 + 1` visits, all with the same HbA1c (so which
/// two the bounding keeps does not change an average), written in three
/// row groups with every patient's rows spread over them: the shuffle by
/// patient is what brings them together.
fn write_visits(dir: &Path) {
    let schema = Arc::new(Schema::new(vec![
        Field::new("patient_id", DataType::Utf8, false),
        Field::new("sex", DataType::Utf8, false),
        Field::new("hba1c", DataType::Float64, false),
    ]));
    let mut files: Vec<(Vec<String>, Vec<&str>, Vec<f64>)> = vec![Default::default(); 3];
    for i in 0..PATIENTS {
        for visit in 0..(i % 4 + 1) {
            let file = &mut files[(i + visit) % 3];
            file.0.push(format!("p{i:05}"));
            file.1.push(["F", "M"][i % 2]);
            file.2.push(4.0 + (i % 100) as f64 / 10.0);
        }
    }
    let file = std::fs::File::create(dir.join("visits.parquet")).unwrap();
    let mut writer = parquet::arrow::ArrowWriter::try_new(file, Arc::clone(&schema), None).unwrap();
    for (ids, sex, hba1c) in files {
        let batch = RecordBatch::try_new(
            Arc::clone(&schema),
            vec![
                Arc::new(StringArray::from(ids)),
                Arc::new(StringArray::from(sex)),
                Arc::new(Float64Array::from(hba1c)),
            ],
        )
        .unwrap();
        writer.write(&batch).unwrap();
        // One row group each, so the scan reads them as parts.
        writer.flush().unwrap();
    }
    writer.close().unwrap();
}

async fn planner(dir: &Path) -> Planner {
    let table = sources::parquet(dir).await.unwrap();
    Planner::new(
        StudyPolicy::from_toml(POLICY).unwrap(),
        HashMap::from([("visits".to_string(), table)]),
    )
    .unwrap()
}

fn options(epsilon: &str) -> QueryOptions {
    let mut options = QueryOptions::new(Charge::Approx {
        epsilon: "100000000000000".parse().unwrap(),
        delta: "0.5".parse().unwrap(),
    });
    options.epsilon = Some(epsilon.parse::<Amount>().unwrap());
    options
}

/// Ballista, counting the jobs it was given.
#[derive(Debug)]
struct Counted {
    engine: BallistaEngine,
    jobs: AtomicUsize,
}

impl RemoteEngine for Counted {
    fn execute(
        &self,
        plan: Arc<dyn ExecutionPlan>,
        context: Arc<TaskContext>,
    ) -> datafusion::common::Result<SendableRecordBatchStream> {
        self.jobs.fetch_add(1, Ordering::Relaxed);
        self.engine.execute(plan, context)
    }

    fn partitions(&self) -> Option<usize> {
        self.engine.partitions()
    }
}

async fn run(
    planner: &Planner,
    sql: &str,
    options: &QueryOptions,
    engine: Option<Arc<dyn RemoteEngine>>,
) -> PrivateAnswer {
    let plan = match planner.plan(sql, options).await {
        Ok(plan) => plan,
        Err(error) => panic!("planning {sql:?}: {error}"),
    };
    plan.execute_on(engine).await.unwrap()
}

/// `(group, value)` per row: the first column as text, the second as f64.
fn pairs(answer: &PrivateAnswer) -> Vec<(String, f64)> {
    let mut out = Vec::new();
    for batch in &answer.batches {
        let keys = arrow::compute::cast(batch.column(0), &DataType::Utf8).unwrap();
        let values = arrow::compute::cast(batch.column(1), &DataType::Float64).unwrap();
        for row in 0..batch.num_rows() {
            let key = keys.as_string::<i32>().value(row).to_string();
            out.push((key, values.as_primitive::<Float64Type>().value(row)));
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ballista_runs_the_private_plan_with_the_local_engines_answers() {
    let tmp = tempfile::tempdir().unwrap();
    // DataFusion's listing skips hidden paths, as the temporary folder is.
    let dir = tmp.path().join("visits");
    std::fs::create_dir(&dir).unwrap();
    write_visits(&dir);
    let planner = planner(&dir.join("visits.parquet")).await;
    let url = cohort_distributed::standalone(2, 1).await.unwrap();
    let ballista = Arc::new(Counted {
        engine: BallistaEngine::new(&url, 2).unwrap(),
        jobs: AtomicUsize::new(0),
    });
    let remote: Arc<dyn RemoteEngine> = ballista.clone();

    // Exact parts (ε so large the noise rounds away): the same bounded
    // rows on both engines. Patient i keeps min(i % 4 + 1, 2) rows.
    let exact = options("1000000000000");
    let kept: usize = (0..PATIENTS).map(|i| (i % 4 + 1).min(2)).sum();
    for sql in [
        "SELECT sex, COUNT(*) AS n FROM visits GROUP BY sex",
        "SELECT sex, COUNT(DISTINCT patient_id) AS n FROM visits GROUP BY sex",
        "SELECT sex, AVG(hba1c) AS m FROM visits GROUP BY sex",
        "SELECT sex, SUM(CASE WHEN hba1c > 9 THEN 1 ELSE 0 END) AS n FROM visits GROUP BY sex",
    ] {
        let local = pairs(&run(&planner, sql, &exact, None).await);
        let distributed = pairs(&run(&planner, sql, &exact, Some(Arc::clone(&remote))).await);
        assert_eq!(local.len(), 2, "{sql}");
        for ((lk, lv), (dk, dv)) in local.iter().zip(&distributed) {
            assert_eq!(lk, dk, "{sql}");
            assert!((lv - dv).abs() < 1e-6, "{sql}: local {lv}, Ballista {dv}");
        }
        if sql.contains("COUNT(*)") {
            let total: f64 = distributed.iter().map(|(_, v)| v).sum();
            assert!(
                (total - kept as f64).abs() < 1e-6,
                "bounded to 2 rows each: {total}"
            );
        }
    }
    assert_eq!(
        ballista.jobs.load(Ordering::Relaxed),
        4,
        "each ran on the cluster"
    );

    // Noisy answers at ε = 1: discrete Laplace of scale 2 (2 rows per
    // patient) around the same count on both engines. Over 30 runs each,
    // the two means differ by more than 6 standard deviations (sd of a
    // draw ≤ 2√2, of the difference of means ≤ 2√2·√(2/30) ≈ 0.73) with
    // probability below 1e-8; so does either mean from the exact count.
    let sql = "SELECT COUNT(*) AS n FROM visits";
    let noisy = options("1");
    let mut means = Vec::new();
    for engine in [None, Some(Arc::clone(&remote))] {
        let mut draws = Vec::new();
        for _ in 0..30 {
            let answer = run(&planner, sql, &noisy, engine.clone()).await;
            let column =
                arrow::compute::cast(answer.batches[0].column(0), &DataType::Int64).unwrap();
            draws.push(column.as_primitive::<Int64Type>().value(0) as f64);
        }
        let mean = draws.iter().sum::<f64>() / draws.len() as f64;
        let spread = draws.iter().any(|d| *d != draws[0]);
        assert!(spread, "noise is drawn on every run: {draws:?}");
        means.push(mean);
    }
    let sd = 2.0 * 2f64.sqrt() * (2.0f64 / 30.0).sqrt();
    assert!((means[0] - means[1]).abs() < 6.0 * sd, "means {means:?}");
    for mean in &means {
        assert!(
            (mean - kept as f64).abs() < 6.0 * sd * 2f64.sqrt(),
            "mean {mean}, exact {kept}"
        );
    }
    assert_eq!(ballista.jobs.load(Ordering::Relaxed), 34);
}
