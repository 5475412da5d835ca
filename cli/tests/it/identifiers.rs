//! Patients' direct identifiers at rest: sealed in `cohort.db` (after an
//! ingest, a repeated ingest and an update), exported only when asked for,
//! unreadable once the patient is erased.

use std::collections::BTreeSet;
use std::path::Path;

use arrow::array::{Array, AsArray, Date32Array, RecordBatch, StringArray};
use cohort_engine::Error;
use cohort_engine::records::ingest;
use cohort_engine::records::projection::{Identifiers, PatientRow};
use rusqlite::types::{Value, ValueRef};

use super::{access, bundles, cohort, column, source_patients, stderr, vault};

/// The identifying strings of `patients` to search for: those of at least
/// six bytes, so that no ciphertext or unrelated word matches by chance.
fn needles(patients: &[PatientRow]) -> BTreeSet<String> {
    patients
        .iter()
        .flat_map(|p| {
            [
                &p.family_name,
                &p.given_name,
                &p.address_line,
                &p.city,
                &p.phone,
                &p.email,
                &p.ssn,
                &p.mrn,
            ]
        })
        .flatten()
        .filter(|s| s.len() >= 6)
        .cloned()
        .collect()
}

/// Every needle found in `bytes`, named with `place`.
fn found(place: &str, bytes: &[u8], needles: &BTreeSet<String>) -> Vec<String> {
    // Lossy: an ASCII needle still matches only the same ASCII bytes.
    let text = String::from_utf8_lossy(bytes);
    needles
        .iter()
        .filter(|n| text.contains(n.as_str()))
        .map(|n| format!("{place}: {n}"))
        .collect()
}

/// Every needle in any text or blob cell of any table of the database,
/// read with plain SQLite, and in the bytes of its files.
fn plaintext_in_sqlite(data: &Path, needles: &BTreeSet<String>) -> Vec<String> {
    let conn = rusqlite::Connection::open(data.join("cohort.db")).unwrap();
    let tables: Vec<String> = conn
        .prepare("SELECT name FROM sqlite_master WHERE type = 'table'")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert!(tables.len() > 8, "{tables:?}");
    let mut hits = Vec::new();
    for table in &tables {
        let mut stmt = conn.prepare(&format!("SELECT * FROM \"{table}\"")).unwrap();
        let n = stmt.column_count();
        let mut rows = stmt.query([]).unwrap();
        while let Some(row) = rows.next().unwrap() {
            for i in 0..n {
                match row.get_ref(i).unwrap() {
                    ValueRef::Text(b) | ValueRef::Blob(b) => {
                        hits.extend(found(table, b, needles));
                    }
                    _ => {}
                }
            }
        }
    }
    drop(conn);
    for file in ["cohort.db", "cohort.db-wal"] {
        if let Ok(bytes) = std::fs::read(data.join(file)) {
            hits.extend(found(file, &bytes, needles));
        }
    }
    hits
}

fn patients_parquet(dir: &Path) -> RecordBatch {
    cohort_engine::storage::tabular::read(&dir.join("patients.parquet")).unwrap()
}

fn texts(batch: &RecordBatch, name: &str) -> Vec<Option<String>> {
    column::<StringArray>(batch, name)
        .iter()
        .map(|v| v.map(str::to_owned))
        .collect()
}

#[test]
fn sqlite_holds_no_identifier_in_plaintext_after_ingest_and_update() {
    let (tmp, dir, vault) = vault();
    let b = bundles(tmp.path(), 40, 9);
    let first = ingest::ingest_paths(&vault, &access(), std::slice::from_ref(&b), false).unwrap();
    assert!(first.rejected.is_empty(), "{:?}", first.rejected);
    // The same bundles again: nothing changes.
    let again = ingest::ingest_paths(&vault, &access(), std::slice::from_ref(&b), false).unwrap();
    assert_eq!(again.unchanged, first.resources);

    // An update: one patient's name, phone, SSN and MRN change.
    let file = ingest::bundle_files(std::slice::from_ref(&b))
        .unwrap()
        .remove(0);
    let mut bundle: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    let patient = bundle["entry"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .map(|e| &mut e["resource"])
        .find(|r| r["resourceType"] == "Patient")
        .unwrap();
    let updated_id = patient["id"].as_str().unwrap().to_owned();
    patient["name"][0]["family"] = "Quennellworth".into();
    patient["telecom"][0]["value"] = "(212) 555-0777".into();
    patient["identifier"][0]["value"] = "MRN-UPDATED-1".into();
    patient["identifier"][1]["value"] = "999-05-0505".into();
    let update_dir = tmp.path().join("update");
    std::fs::create_dir(&update_dir).unwrap();
    std::fs::write(
        update_dir.join("update.json"),
        serde_json::to_vec(&bundle).unwrap(),
    )
    .unwrap();
    let update =
        ingest::ingest_paths(&vault, &access(), std::slice::from_ref(&update_dir), false).unwrap();
    assert_eq!(update.updated, 1, "{update:?}");

    // Neither the old values nor the new ones are anywhere in SQLite.
    let mut sought = needles(&source_patients(&b));
    let new = needles(&source_patients(&update_dir));
    assert!(new.contains("Quennellworth") && new.contains("999-05-0505"));
    sought.extend(new);
    assert!(sought.len() > 150, "{}", sought.len());
    let hits = plaintext_in_sqlite(dir.root(), &sought);
    assert!(hits.is_empty(), "plaintext identifiers in SQLite: {hits:?}");

    // The identifying columns are ciphertexts; only generalizations stay plain.
    let plain: i64 = vault
        .conn()
        .query_row(
            "SELECT COUNT(*) FROM proj_patients WHERE
               typeof(family_name) != 'blob' OR typeof(given_name) != 'blob'
               OR typeof(birth_date) != 'blob' OR typeof(address_line) != 'blob'
               OR typeof(city) != 'blob' OR typeof(zip) != 'blob' OR typeof(phone) != 'blob'
               OR typeof(email) != 'blob' OR typeof(ssn) != 'blob' OR typeof(mrn) != 'blob'
               OR length(zip3) != 3 OR typeof(birth_year) != 'integer'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(plain, 0);

    // The vault still opens them, with the update in place.
    let out = tmp.path().join("export");
    vault
        .export_projection(&access(), &out, Identifiers::Included)
        .unwrap();
    let patients = patients_parquet(&out);
    let ids = texts(&patients, "patient_id");
    let row = ids
        .iter()
        .position(|id| id.as_deref() == Some(updated_id.as_str()))
        .unwrap();
    assert_eq!(
        texts(&patients, "family_name")[row].as_deref(),
        Some("Quennellworth")
    );
    assert_eq!(texts(&patients, "ssn")[row].as_deref(), Some("999-05-0505"));
}

#[test]
fn export_leaves_identifiers_out_unless_asked_and_round_trips_them() {
    let (tmp, dir, vault) = vault();
    let b = bundles(tmp.path(), 20, 4);
    ingest::ingest_paths(&vault, &access(), std::slice::from_ref(&b), false).unwrap();
    let source = source_patients(&b);
    let sought = needles(&source);

    // Without --identifiers: none of them, in any file.
    let plain = tmp.path().join("plain");
    let o = cohort(dir.root(), &["export", "--out", plain.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let patients = patients_parquet(&plain);
    assert_eq!(patients.num_rows(), 20);
    for name in [
        "family_name",
        "given_name",
        "address_line",
        "city",
        "phone",
        "email",
        "ssn",
        "mrn",
    ] {
        assert_eq!(
            patients.column_by_name(name).unwrap().null_count(),
            20,
            "{name}"
        );
    }
    for (zip, p) in texts(&patients, "zip").iter().zip(&source) {
        let expected = cohort_anonymizer::deid::zip3(p.zip.as_deref().unwrap());
        assert_eq!(zip.as_deref(), Some(expected.as_str()));
    }
    let years = column::<Date32Array>(&patients, "birth_date");
    for (days, p) in years.iter().zip(&source) {
        let first = |d: i32| {
            let date = chrono::NaiveDate::from_ymd_opt(1970, 1, 1).unwrap()
                + chrono::Duration::days(d.into());
            chrono::NaiveDate::from_ymd_opt(chrono::Datelike::year(&date), 1, 1).unwrap()
        };
        let (got, born) = (first(days.unwrap()), first(p.birth_date.unwrap()));
        // The year, unless it says the patient is over 89.
        assert!(got >= born, "{got} for {born}");
        assert_eq!(chrono::Datelike::ordinal(&got), 1);
    }
    let mut hits = Vec::new();
    for entry in std::fs::read_dir(&plain).unwrap() {
        let path = entry.unwrap().path();
        hits.extend(found(
            &path.display().to_string(),
            &std::fs::read(&path).unwrap(),
            &sought,
        ));
    }
    assert!(hits.is_empty(), "identifiers exported: {hits:?}");

    // With --identifiers: every field as the source bundle has it.
    let full = tmp.path().join("full");
    let o = cohort(
        dir.root(),
        &["export", "--identifiers", "--out", full.to_str().unwrap()],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let patients = patients_parquet(&full);
    assert_eq!(texts(&patients, "patient_id").len(), source.len());
    let births = column::<Date32Array>(&patients, "birth_date");
    for (i, p) in source.iter().enumerate() {
        let text = |name: &str| texts(&patients, name)[i].clone();
        assert_eq!(text("patient_id").as_deref(), Some(p.patient_id.as_str()));
        let exported = PatientRow {
            patient_id: p.patient_id.clone(),
            family_name: text("family_name"),
            given_name: text("given_name"),
            birth_date: births.is_valid(i).then(|| births.value(i)),
            gender: text("gender"),
            race: text("race"),
            ethnicity: text("ethnicity"),
            address_line: text("address_line"),
            city: text("city"),
            state: text("state"),
            zip: text("zip"),
            phone: text("phone"),
            email: text("email"),
            ssn: text("ssn"),
            mrn: text("mrn"),
        };
        assert_eq!(&exported, p);
    }

    // Each export is audited with whether identifiers went, never their values.
    let entries = cohort_engine::audit::tail(vault.conn(), 10, Some("projection")).unwrap();
    let flags: Vec<bool> = entries
        .iter()
        .filter(|e| e.action == "records.export")
        .map(|e| {
            let detail: serde_json::Value = serde_json::from_str(&e.detail).unwrap();
            detail["identifiers"].as_bool().unwrap()
        })
        .collect();
    assert_eq!(flags, [false, true]);
    for e in &entries {
        assert!(found("audit", e.detail.as_bytes(), &sought).is_empty());
    }
}

#[test]
fn erasure_leaves_sealed_identifiers_unreadable() {
    let (tmp, dir, vault) = vault();
    let b = bundles(tmp.path(), 10, 6);
    ingest::ingest_paths(&vault, &access(), std::slice::from_ref(&b), false).unwrap();
    let patient = source_patients(&b).remove(0);
    let id = patient.patient_id.as_str();

    // A copy of the patient's row, as a backup or a stale page would hold it.
    let (names, row): (Vec<String>, Vec<Value>) = {
        let mut stmt = vault
            .conn()
            .prepare("SELECT * FROM proj_patients WHERE patient_id = ?1")
            .unwrap();
        let names = stmt.column_names().map(str::to_owned).collect();
        let n = stmt.column_count();
        let row = stmt
            .query_row([id], |r| (0..n).map(|i| r.get::<_, Value>(i)).collect())
            .unwrap();
        (names, row)
    };
    let ssn_at = names.iter().position(|n| n == "ssn").unwrap();
    let Value::Blob(sealed_ssn) = row[ssn_at].clone() else {
        panic!("the SSN is not sealed")
    };

    vault.erase_patient(&access(), id).unwrap();
    let left: i64 = vault
        .conn()
        .query_row(
            "SELECT COUNT(*) FROM proj_patients WHERE patient_id = ?1",
            [id],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(left, 0, "erasure removes the row");
    for file in ["cohort.db", "cohort.db-wal"] {
        if let Ok(bytes) = std::fs::read(dir.root().join(file)) {
            assert!(
                !bytes
                    .windows(sealed_ssn.len())
                    .any(|w| w == sealed_ssn.as_slice()),
                "the sealed SSN is left in {file}"
            );
        }
    }

    // Put the copy back: with the key destroyed, the vault cannot open it.
    let marks = vec!["?"; names.len()].join(", ");
    vault
        .conn()
        .execute(
            &format!(
                "INSERT INTO proj_patients ({}) VALUES ({marks})",
                names.join(", ")
            ),
            rusqlite::params_from_iter(row),
        )
        .unwrap();
    let err = vault
        .export_projection(&access(), &tmp.path().join("x"), Identifiers::Included)
        .unwrap_err();
    assert!(matches!(err, Error::Shredded { .. }), "{err:?}");
    // Research's keyless reading never needed the key.
    let research =
        cohort_engine::records::projection::read_table(vault.conn(), "patients").unwrap();
    assert_eq!(research.num_rows(), 10);
    assert!(
        research
            .column_by_name("ssn")
            .unwrap()
            .as_string::<i32>()
            .null_count()
            == 10
    );
}
