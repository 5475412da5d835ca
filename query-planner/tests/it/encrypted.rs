//! Encrypted columns: the rewrite of SUM(enc) into an encrypted release,
//! exact sums per public group through the real ElGamal layer (noise off by
//! a huge ε), EXPLAIN naming the layer, and every other use refused.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{AsArray, BinaryArray, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use cohort_fhe::elgamal::Ciphertext;
use cohort_fhe::linear::{self, LinearLayer, Steward};
use cohort_fhe::range::Bounds;
use cohort_fhe::threshold::{self, CustodianKey, KeyShare, Threshold};
use cohort_fhe::{
    CostEstimate, DecryptionGate, EncryptedAggregate, EncryptedOp, FheError, Job, Padding, Sealed,
};
use cohort_query_planner::{EncryptedExecutor, Planner, StudyPolicy};
use datafusion::catalog::TableProvider;
use datafusion::datasource::MemTable;

use cohort_anonymizer::accountant::Charge;
use cohort_query_planner::QueryOptions;

use crate::fixture::pure;

const POLICY: &str = r#"
privacy_unit = "patient_id"
[query]
epsilon = "1"
max_epsilon = "5"
[tables.patients]
rows_per_unit = 1
[tables.patients.columns]
patient_id = {}
sex = { domain = ["F", "M", "X"] }
hiv = { encrypted = "elgamal", lower = 0, upper = 1 }
"#;

/// The ElGamal layer, padding every group to the 30 patients, and the
/// job it reports its work to.
struct Linear(LinearLayer, Job);

impl EncryptedExecutor for Linear {
    fn estimate(&self, _: &str, _: &str, op: &EncryptedOp, max_rows: u32) -> CostEstimate {
        cohort_fhe::estimate(op, 30 * u64::from(max_rows))
    }
    fn aggregate(
        &self,
        _: &str,
        _: &str,
        op: &EncryptedOp,
        cells: &[&[u8]],
        noise: i64,
        max_rows: u32,
    ) -> Result<Sealed, FheError> {
        let padding = Padding {
            to: 30 * max_rows as usize,
            stand_in: None,
        };
        self.0.aggregate(op, cells, noise, &self.1, padding)
    }
}

struct Open;
impl DecryptionGate for Open {
    fn authorize(&self, _: &str, _: &[u8; 32]) -> cohort_fhe::Result<()> {
        Ok(())
    }
}

/// 30 patients, sex F/M alternating; patient i is flagged when i % 3 == 0;
/// patient 29 submitted nothing (NULL).
fn study() -> (Planner, CustodianKey, Vec<KeyShare>) {
    study_with(POLICY)
}

fn study_with(policy: &str) -> (Planner, CustodianKey, Vec<KeyShare>) {
    let (key, shares) = threshold::generate(Threshold::new(2, 3).unwrap()).unwrap();
    let ids: Vec<String> = (0..30).map(|i| format!("p{i:02}")).collect();
    let sex: Vec<&str> = (0..30)
        .map(|i| if i % 2 == 0 { "F" } else { "M" })
        .collect();
    let cells: Vec<Option<Vec<u8>>> = (0..30)
        .map(|i| {
            (i != 29).then(|| Ciphertext::encrypt(&key.public, i64::from(i % 3 == 0)).to_stored())
        })
        .collect();
    let schema = Arc::new(Schema::new(vec![
        Field::new("patient_id", DataType::Utf8, false),
        Field::new("sex", DataType::Utf8, false),
        Field::new("hiv", DataType::Binary, true),
    ]));
    let batch = RecordBatch::try_new(
        Arc::clone(&schema),
        vec![
            Arc::new(StringArray::from(ids)),
            Arc::new(StringArray::from(sex)),
            Arc::new(cells.iter().map(|c| c.as_deref()).collect::<BinaryArray>()),
        ],
    )
    .unwrap();
    let table: Arc<dyn TableProvider> =
        Arc::new(MemTable::try_new(schema, vec![vec![batch]]).unwrap());
    let tables = HashMap::from([("patients".to_string(), table)]);
    let planner = Planner::new(StudyPolicy::from_toml(policy).unwrap(), tables)
        .unwrap()
        .with_encryption(Arc::new(Linear(LinearLayer::new(key.clone()), Job::new())));
    (planner, key, shares)
}

fn decrypt(key: &CustodianKey, shares: &[KeyShare], hex_or_bytes: &[u8]) -> i64 {
    let sealed = Sealed::from_bytes(hex_or_bytes).unwrap();
    let partials: Vec<_> = shares[..2]
        .iter()
        .map(|s| {
            Steward::new(s.clone())
                .decrypt(&Open, "q", &sealed)
                .unwrap()
        })
        .collect();
    let (lo, hi) = linear::search_range(30, Bounds::new(0, 1).unwrap(), 1 << 20);
    linear::open(key, "q", &sealed, &partials, lo, hi).unwrap()
}

#[tokio::test]
async fn an_encrypted_sum_per_public_group_decrypts_to_the_exact_sums() {
    let (planner, key, shares) =
        study_with(&POLICY.replace("max_epsilon = \"5\"", "max_epsilon = \"10000000000000\""));
    let mut options = QueryOptions::new(Charge::Pure {
        epsilon: "100000000000000".parse().unwrap(),
    });
    options.epsilon = Some("1000000000000".parse().unwrap());
    let plan = planner
        .plan(
            "SELECT sex, SUM(hiv) FROM patients GROUP BY sex ORDER BY sex",
            &options,
        )
        .await
        .unwrap();
    let outputs = &plan.aggregates()[0].outputs;
    assert_eq!(
        outputs[0].encrypted.as_ref().unwrap().layer,
        cohort_fhe::Layer::Elgamal
    );
    assert_eq!(
        outputs[0].output, "SUM(hiv)",
        "the output keeps the name the researcher wrote"
    );
    let answer = plan.execute().await.unwrap();
    let batch = &answer.batches[0];
    let sex = batch.column(0).as_string::<i32>();
    let sums = batch.column(1).as_binary::<i32>();
    let mut got = Vec::new();
    for row in 0..batch.num_rows() {
        got.push((
            sex.value(row).to_string(),
            decrypt(&key, &shares, sums.value(row)),
        ));
    }
    // F: i even, i % 3 == 0 -> 0, 6, 12, 18, 24 = 5; M: 3, 9, 15, 21, 27 = 5
    // (29 is NULL); X: empty, released as the encryption of its noise.
    assert_eq!(got, vec![("F".into(), 5), ("M".into(), 5), ("X".into(), 0)]);
    assert!(
        answer.releases[0].values.iter().all(|v| v.is_nan()),
        "the planner never sees the value"
    );
}

#[tokio::test]
async fn explain_names_the_layer_and_its_cost() {
    let (planner, _, _) = study();
    let plan = planner
        .plan(
            "EXPLAIN PRIVACY SELECT SUM(hiv) AS flagged FROM patients",
            &pure("3"),
        )
        .await
        .unwrap();
    let text = plan.explain();
    assert!(text.contains("under elgamal encryption"), "{text}");
    assert!(
        text.contains("encrypted: flagged over patients.hiv by exponential ElGamal on BLS12-381"),
        "{text}"
    );
    assert!(text.contains("60 G1 additions"), "{text}");
}

#[tokio::test]
async fn every_other_use_of_an_encrypted_column_is_refused() {
    let (planner, _, _) = study();
    // Deeper than the rewrite descends: left unrewritten, hence refused.
    let deep = format!("SELECT SUM(hiv){} FROM patients", " + 0".repeat(100));
    for sql in [
        deep.as_str(),
        "SELECT (SELECT SUM(hiv) FROM patients) FROM patients",
        "SELECT hiv FROM patients",
        "SELECT sex, COUNT(*) FROM patients WHERE hiv = 1 GROUP BY sex",
        "SELECT hiv, COUNT(*) FROM patients GROUP BY hiv",
        "SELECT SUM(hiv) + SUM(hiv) FROM patients",
        "SELECT AVG(hiv) FROM patients",
        "SELECT COUNT(*) FROM patients WHERE hiv IS NULL",
        "SELECT SUM(p.hiv) FROM patients p JOIN patients q ON p.patient_id = q.patient_id WHERE q.hiv IS NOT NULL",
        "WITH t AS (SELECT hiv FROM patients) SELECT SUM(hiv) FROM t",
    ] {
        match planner.plan(sql, &pure("3")).await {
            Err(e) => assert!(e.to_string().contains("encrypted"), "{sql}: {e}"),
            Ok(_) => panic!("{sql} was planned"),
        }
    }
}
