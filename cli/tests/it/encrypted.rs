//! Encrypted columns end to end: keys made at approval, patients'
//! submissions through `cohort encrypt-field`, an encrypted SUM answered by
//! the ElGamal layer through `cohort query`, refusals, and the ledger gate
//! that keeps a result without a committed debit encrypted.

use cohort_engine::research::Session;
use cohort_engine::research::encryption::LedgerGate;
use cohort_fhe::{DecryptionGate, Sealed};

use crate::research::{killed_at, setup};
use crate::{PASSPHRASE, cohort, cohort_json, stderr};

fn study_text() -> String {
    r#"privacy_unit = "patient_id"
[study]
title = "Encrypted flags"
purpose = "Testing aggregates over values patients share only encrypted"
duration_days = 30
escrow = "1 ether"
fee_per_epsilon = "0.00125 ether"
[budget]
epsilon = "100"
[query]
epsilon = "8"
max_epsilon = "10"
[execution]
release = "immediate"
[tables.patients]
rows_per_unit = 1
[tables.patients.columns]
patient_id = { identifier = true }
gender = { domain = ["female", "male"] }
hiv = { encrypted = "elgamal", lower = 0, upper = 1 }
"#
    .to_string()
}

const SUM_BY_SEX: &str =
    "SELECT gender, SUM(hiv) AS hiv FROM patients GROUP BY gender ORDER BY gender";

#[test]
fn an_encrypted_sum_runs_from_the_cli_and_decrypts_only_after_its_debit() {
    let s = setup(12);
    let d = &s.data;
    let (id, patients) = s.approved_study(&study_text(), 12);
    let study = id.to_string();

    // Patients submit through the CLI: 1 for every third, 0 otherwise.
    let mut expected = 0;
    for (i, p) in patients.iter().enumerate() {
        let value = i64::from(i % 3 == 0);
        expected += value;
        let out = cohort_json(
            d,
            &[
                "encrypt-field",
                &study,
                "--column",
                "hiv",
                "--value",
                &value.to_string(),
                "--as",
                p.name(),
            ],
        );
        assert_eq!(out["layer"], "elgamal");
        assert!(out["stored_bytes"].as_u64().unwrap() == 192, "{out}");
    }
    // Out of bounds and unknown columns are refused with what is wrong.
    let bad = cohort(
        d,
        &[
            "encrypt-field",
            &study,
            "--column",
            "hiv",
            "--value",
            "2",
            "--as",
            patients[0].name(),
        ],
    );
    assert!(!bad.status.success());
    assert!(
        stderr(&bad).contains("outside the declared bounds [0, 1]"),
        "{}",
        stderr(&bad)
    );
    let bad = cohort(
        d,
        &[
            "encrypt-field",
            &study,
            "--column",
            "gender",
            "--value",
            "1",
            "--as",
            patients[0].name(),
        ],
    );
    assert!(
        stderr(&bad).contains("not an encrypted column"),
        "{}",
        stderr(&bad)
    );

    // EXPLAIN PRIVACY names the layer and the cost, and spends nothing.
    let explain = cohort_json(
        d,
        &[
            "query",
            &study,
            SUM_BY_SEX,
            "--explain",
            "--as",
            "researcher",
        ],
    );
    let text = explain["explain"].as_str().unwrap();
    assert!(
        text.contains("encrypted: hiv over patients.hiv by exponential ElGamal"),
        "{text}"
    );
    assert!(
        text.contains("24 G1 additions"),
        "12 values, two additions each: {text}"
    );

    // SQL that would compute on a ciphertext is refused by name.
    for sql in [
        "SELECT hiv FROM patients",
        "SELECT COUNT(*) FROM patients WHERE hiv >= 1",
        "SELECT hiv, COUNT(*) FROM patients GROUP BY hiv",
        "SELECT SUM(hiv + 1) FROM patients",
    ] {
        let out = cohort(d, &["query", &study, sql, "--as", "researcher"]);
        assert!(!out.status.success(), "{sql} was answered");
        assert!(
            stderr(&out).contains("encrypted-columns") || stderr(&out).contains("encrypted"),
            "{sql}: {}",
            stderr(&out)
        );
    }

    // The answer: noisy (ε = 8, so within a few units), decrypted by two of
    // three stewards after the debit was committed.
    let out = cohort_json(
        d,
        &[
            "query",
            &study,
            SUM_BY_SEX,
            "--as",
            "researcher",
            "--query-id",
            "enc-1",
        ],
    );
    let rows = out["answer"]["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 2, "{out}");
    let total: i64 = rows
        .iter()
        .map(|r| r[1].as_i64().expect("a decrypted integer"))
        .sum();
    assert!(
        (total - expected).abs() <= 12,
        "noisy total {total}, true {expected}"
    );
    assert_eq!(out["answer"]["encrypted"][0]["layer"], "elgamal");
    // A retry with the same id replays the same decrypted answer, unbilled.
    let again = cohort_json(
        d,
        &[
            "query",
            &study,
            SUM_BY_SEX,
            "--as",
            "researcher",
            "--query-id",
            "enc-1",
        ],
    );
    assert_eq!(again["answer"]["rows"], out["answer"]["rows"]);
    assert_eq!(again["replayed"], true);

    // A query stopped after answering, before its debit is committed: its
    // sealed results exist, and no steward may decrypt them.
    killed_at(d, &study, SUM_BY_SEX, "enc-2", "answered");
    let conn = rusqlite::Connection::open(d.join("cohort.db")).unwrap();
    let (ledger_id, text, salt): (String, String, String) = conn
        .query_row(
            "SELECT ledger_id, answer, salt FROM research_queries WHERE query_id = 'enc-2'",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .unwrap();
    let answer: serde_json::Value = serde_json::from_str(&text).unwrap();
    let sealed: Vec<Sealed> = answer["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            Sealed::from_bytes(
                &data_encoding::HEXLOWER
                    .decode(r[1].as_str().unwrap().as_bytes())
                    .unwrap(),
            )
            .unwrap()
        })
        .collect();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let lid = ledger_id.parse().unwrap();
    // Before anything recovers it, the ledger holds only a reservation.
    let (_, client) = rt.block_on(cohort_engine::chain::client(&s.dir)).unwrap();
    let refused = rt
        .block_on(LedgerGate::check(&client, lid, &salt, &text, &sealed))
        .expect_err("an uncommitted result was authorised");
    assert!(
        refused.to_string().contains("reserved but not committed"),
        "{refused}"
    );
    // Opening a session recovers the entry: it commits the debit, and only
    // then do the stewards decrypt, for exactly this answer.
    let vault = s.dir.unlock(PASSPHRASE).unwrap();
    let session = rt.block_on(Session::open(&s.dir, &vault)).unwrap();
    let refused = rt.block_on(LedgerGate::check(
        session.client(),
        lid,
        &salt,
        "another answer",
        &sealed,
    ));
    assert!(
        refused.is_err(),
        "a result hash that is not this answer's must be refused"
    );
    let unsalted = rt.block_on(LedgerGate::check(session.client(), lid, "", &text, &sealed));
    assert!(
        unsalted.is_err(),
        "the commitment is salted: the answer's plain hash is not it"
    );
    let refused = rt.block_on(LedgerGate::check(
        session.client(),
        lid,
        &salt,
        "another answer",
        &sealed,
    ));
    assert!(
        refused.is_err(),
        "a result hash that is not this answer's must be refused"
    );
    let gate = rt
        .block_on(LedgerGate::check(
            session.client(),
            lid,
            &salt,
            &text,
            &sealed,
        ))
        .unwrap();
    assert!(gate.authorize(&ledger_id, &sealed[0].digest).is_ok());
    assert!(
        gate.authorize(&ledger_id, &[7; 32]).is_err(),
        "a result outside the committed answer"
    );
    assert!(
        gate.authorize("0x00", &sealed[0].digest).is_err(),
        "another query's debit"
    );
    // A query id the ledger never saw has no debit at all.
    let unknown = rt.block_on(LedgerGate::check(
        session.client(),
        [9u8; 32].into(),
        &salt,
        &text,
        &sealed,
    ));
    assert!(
        unknown
            .unwrap_err()
            .to_string()
            .contains("unknown to the ledger")
    );
}
