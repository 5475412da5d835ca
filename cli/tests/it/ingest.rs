//! FHIR ingestion: all or nothing per bundle, clear errors, the projection.

use arrow::array::{Array, Date32Array, Float64Array, StringArray};
use cohort_engine::records::ingest;
use cohort_engine::records::projection;
use serde_json::{Value, json};

use super::{
    FAST_KDF, PASSPHRASE, access, bundles, cohort, cohort_env, column, stderr, stdout, vault,
};

fn counts(v: &cohort_engine::records::vault::Vault) -> projection::Counts {
    projection::counts(v.conn()).unwrap()
}

fn audit_len(v: &cohort_engine::records::vault::Vault) -> i64 {
    v.conn()
        .query_row("SELECT COUNT(*) FROM audit", [], |r| r.get(0))
        .unwrap()
}

fn small_bundle(obs_value: Value) -> Value {
    json!({"resourceType": "Bundle", "id": "b1", "type": "collection", "entry": [
        {"fullUrl": "urn:uuid:p1", "resource": {"resourceType": "Patient", "id": "p1", "gender": "male", "birthDate": "1931-05-06",
            "name": [{"family": "Doe", "given": ["John"]}], "address": [{"postalCode": "03601", "state": "NH"}]}},
        {"fullUrl": "urn:uuid:e1", "resource": {"resourceType": "Encounter", "id": "e1", "status": "finished",
            "class": {"code": "AMB"}, "subject": {"reference": "urn:uuid:p1"}, "period": {"start": "2025-01-02T10:00:00Z"}}},
        {"resource": {"resourceType": "Condition", "id": "c1", "code": {"coding": [{"system": "http://hl7.org/fhir/sid/icd-10-cm", "code": "E11.9"}]},
            "subject": {"reference": "Patient/p1"}, "onsetDateTime": "2020-03-04"}},
        {"resource": {"resourceType": "Observation", "id": "o1", "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "4548-4"}]}, "subject": {"reference": "urn:uuid:p1"},
            "encounter": {"reference": "urn:uuid:e1"}, "effectiveDateTime": "2025-01-02T10:00:00Z",
            "valueQuantity": {"value": obs_value, "unit": "%"}}},
    ]})
}

fn write(dir: &std::path::Path, name: &str, v: &Value) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, serde_json::to_vec(v).unwrap()).unwrap();
    p
}

#[test]
fn malformed_bundle_stores_nothing_and_names_entry_and_field() {
    let (tmp, _dir, vault) = vault();
    let bad = write(tmp.path(), "bad.json", &small_bundle(json!("high")));
    let err = ingest::ingest_file(&vault, &access(), &bad)
        .unwrap_err()
        .to_string();
    assert!(err.contains("entry 3 (Observation/o1)"), "{err}");
    assert!(err.contains("valueQuantity.value"), "{err}");
    assert!(
        counts(&vault).tables.iter().all(|(_, n)| *n == 0),
        "nothing half-ingested"
    );
    let records: i64 = vault
        .conn()
        .query_row("SELECT COUNT(*) FROM records", [], |r| r.get(0))
        .unwrap();
    let patients: i64 = vault
        .conn()
        .query_row("SELECT COUNT(*) FROM patients", [], |r| r.get(0))
        .unwrap();
    assert_eq!((records, patients, audit_len(&vault)), (0, 0, 0));
}

#[test]
fn failure_while_storing_rolls_the_whole_bundle_back() {
    let (tmp, _dir, vault) = vault();
    // Valid FHIR, but Observation/o1 already belongs to another patient: the
    // error comes after earlier entries were written inside the transaction.
    let first = json!({"resourceType": "Bundle", "entry": [
        {"resource": {"resourceType": "Patient", "id": "p0"}},
        {"resource": {"resourceType": "Observation", "id": "o1", "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "8480-6"}]}, "subject": {"reference": "Patient/p0"}}}]});
    ingest::ingest_file(&vault, &access(), &write(tmp.path(), "first.json", &first)).unwrap();
    let before = (counts(&vault), audit_len(&vault));
    let err = ingest::ingest_file(
        &vault,
        &access(),
        &write(tmp.path(), "b.json", &small_bundle(json!(7.1))),
    )
    .unwrap_err();
    assert!(
        err.to_string().contains("entry 3 (Observation/o1)"),
        "{err}"
    );
    assert!(err.to_string().contains("another patient"), "{err}");
    assert_eq!(
        (counts(&vault), audit_len(&vault)),
        before,
        "patient p1, e1, c1 must not be stored"
    );
    let p1: i64 = vault
        .conn()
        .query_row(
            "SELECT COUNT(*) FROM patients WHERE patient_id = 'p1'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(p1, 0);
}

#[test]
fn a_bundle_failing_midway_in_a_shared_commit_rolls_back_alone() {
    // Bundles share a commit; a failure after some of a bundle's entries
    // were written must undo that bundle only, before and after it in the
    // same transaction.
    let (tmp, dir, vault) = vault();
    let src = tmp.path().join("in");
    std::fs::create_dir(&src).unwrap();
    let first = json!({"resourceType": "Bundle", "entry": [
        {"resource": {"resourceType": "Patient", "id": "p0"}},
        {"resource": {"resourceType": "Observation", "id": "o1", "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "8480-6"}]}, "subject": {"reference": "Patient/p0"}}}]});
    write(&src, "a.json", &first);
    // p1, e1 and c1 are written, then o1 belongs to p0: refused at entry 3.
    write(&src, "b.json", &small_bundle(json!(7.1)));
    let mut last = small_bundle(json!(6.0));
    for (i, id) in ["p3", "e3", "c3", "o3"].iter().enumerate() {
        last["entry"][i]["resource"]["id"] = json!(id);
    }
    last["entry"][0]["fullUrl"] = json!("urn:uuid:p3");
    last["entry"][1]["fullUrl"] = json!("urn:uuid:e3");
    for (i, field) in [(1, "subject"), (2, "subject"), (3, "subject")] {
        last["entry"][i]["resource"][field]["reference"] = json!("urn:uuid:p3");
    }
    last["entry"][3]["resource"]["encounter"]["reference"] = json!("urn:uuid:e3");
    write(&src, "c.json", &last);
    let report = ingest::ingest_paths(&vault, &access(), &[src], false).unwrap();
    assert_eq!((report.bundles, report.resources), (2, 6), "{report:?}");
    assert_eq!(report.rejected.len(), 1, "{report:?}");
    assert!(report.rejected[0].source.ends_with("b.json"));
    assert!(
        report.rejected[0]
            .reason
            .contains("entry 3 (Observation/o1)"),
        "{:?}",
        report.rejected
    );
    let has = |patient: &str| -> i64 {
        vault
            .conn()
            .query_row(
                "SELECT COUNT(*) FROM records WHERE patient_id = ?1",
                [patient],
                |r| r.get(0),
            )
            .unwrap()
    };
    assert_eq!((has("p0"), has("p1"), has("p3")), (2, 0, 4));
    assert_eq!(audit_len(&vault), 2, "one ingest entry per stored bundle");
    // Another process sees the same: the group was committed, with its blocks.
    let other = dir.unlock_with(PASSPHRASE, FAST_KDF).unwrap();
    let (_, body) = other.read(&access(), "Observation/o3", None).unwrap();
    assert!(String::from_utf8(body).unwrap().contains("\"o3\""));
}

#[test]
fn a_directory_with_one_bad_bundle_ingests_the_rest() {
    let (tmp, dir, _vault) = vault();
    let src = tmp.path().join("in");
    std::fs::create_dir(&src).unwrap();
    write(&src, "a.json", &small_bundle(json!(6.2)));
    let mut bad = small_bundle(json!(5.0));
    bad["entry"][1]["resource"]["period"]["start"] = json!("yesterday");
    bad["entry"][0]["resource"]["id"] = json!("p2");
    write(&src, "b.json", &bad);
    std::fs::write(src.join("c.json"), b"{ not json").unwrap();
    let out = cohort(dir.root(), &["ingest", src.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("ingested 1 bundles, 4 resources"), "{text}");
    assert!(
        text.contains("b.json") && text.contains("entry 1 (Encounter/e1): field `period.start`"),
        "{text}"
    );
    assert!(
        text.contains("c.json") && text.contains("not valid JSON"),
        "{text}"
    );
}

#[test]
fn reingest_is_idempotent_and_changes_make_versions() {
    let (tmp, _dir, vault) = vault();
    let a = write(tmp.path(), "a.json", &small_bundle(json!(6.2)));
    let first = ingest::ingest_file(&vault, &access(), &a).unwrap();
    assert_eq!(first.created, 4);
    let again = ingest::ingest_file(&vault, &access(), &a).unwrap();
    assert_eq!((again.created, again.updated, again.unchanged), (0, 0, 4));
    let changed = write(tmp.path(), "b.json", &small_bundle(json!(8.4)));
    let upd = ingest::ingest_file(&vault, &access(), &changed).unwrap();
    assert_eq!((upd.created, upd.updated, upd.unchanged), (0, 1, 3));
    assert_eq!(vault.history("Observation/o1").unwrap().len(), 2);
    // The projection shows the current version only.
    let obs = projection::read_table(vault.conn(), "observations").unwrap();
    assert_eq!(obs.num_rows(), 1);
    let values = column::<Float64Array>(&obs, "value");
    assert_eq!(values.value(0), 8.4);
}

#[test]
fn references_to_unknown_patients_are_refused() {
    let (tmp, _dir, vault) = vault();
    let orphan = json!({"resourceType": "Bundle", "entry": [
        {"resource": {"resourceType": "Condition", "id": "c9", "code": {"coding": [{"system": "http://hl7.org/fhir/sid/icd-10-cm", "code": "I10"}]},
            "subject": {"reference": "Patient/nobody"}}}]});
    let err = ingest::ingest_file(&vault, &access(), &write(tmp.path(), "o.json", &orphan))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("entry 0 (Condition/c9)") && err.contains("patient nobody"),
        "{err}"
    );
    // Once the patient exists, a later bundle may refer to them.
    ingest::ingest_file(
        &vault,
        &access(),
        &write(tmp.path(), "a.json", &small_bundle(json!(6.0))),
    )
    .unwrap();
    let later = json!({"resourceType": "Bundle", "entry": [
        {"resource": {"resourceType": "Condition", "id": "c9", "code": {"coding": [{"system": "http://hl7.org/fhir/sid/icd-10-cm", "code": "I10"}]},
            "subject": {"reference": "Patient/p1"}}}]});
    assert_eq!(
        ingest::ingest_file(&vault, &access(), &write(tmp.path(), "l.json", &later))
            .unwrap()
            .created,
        1
    );
    // An erased patient's records cannot come back.
    vault.erase_patient(&access(), "p1").unwrap();
    let err = ingest::ingest_file(
        &vault,
        &access(),
        &write(tmp.path(), "b.json", &small_bundle(json!(7.0))),
    )
    .unwrap_err();
    assert!(err.to_string().contains("erased"), "{err}");
}

#[test]
fn projection_has_the_five_tables_as_arrow() {
    let (tmp, _dir, vault) = vault();
    let b = bundles(tmp.path(), 60, 3);
    let report = ingest::ingest_paths(&vault, &access(), &[b], false).unwrap();
    assert!(report.rejected.is_empty(), "{:?}", report.rejected);
    let c = counts(&vault);
    assert_eq!(c.get("patients"), 60);
    let total: i64 = c.tables.iter().map(|(_, n)| n).sum();
    assert_eq!(total as usize, report.resources);
    for name in ["observations", "conditions", "encounters", "medications"] {
        assert!(c.get(name) > 0, "{name} is empty");
    }
    let patients = projection::read_table(vault.conn(), "patients").unwrap();
    assert_eq!(patients.num_rows(), 60);
    // Read without keys, as research reads it: identifiers null, the ZIP
    // cut to three digits, the birth date to the first day of its year.
    let zip = column::<StringArray>(&patients, "zip");
    assert!(zip.iter().all(|z| z.is_some_and(|z| z.len() == 3)));
    let birth = column::<Date32Array>(&patients, "birth_date");
    assert_eq!(birth.null_count(), 0);
    assert!(birth.iter().flatten().all(|d| {
        let d =
            chrono::NaiveDate::from_ymd_opt(1970, 1, 1).unwrap() + chrono::Duration::days(d.into());
        chrono::Datelike::ordinal(&d) == 1
    }));
    for name in ["family_name", "given_name", "phone", "email", "ssn", "mrn"] {
        assert_eq!(
            patients.column_by_name(name).unwrap().null_count(),
            60,
            "{name}"
        );
    }
    let obs = projection::read_table(vault.conn(), "observations").unwrap();
    assert_eq!(
        obs.schema()
            .field_with_name("effective")
            .unwrap()
            .data_type()
            .to_string(),
        "Timestamp(µs, \"UTC\")"
    );
    // Every observation belongs to a projected patient.
    let ids: std::collections::HashSet<&str> = column::<StringArray>(&patients, "patient_id")
        .iter()
        .flatten()
        .collect();
    let owners = column::<StringArray>(&obs, "patient_id");
    assert!(owners.iter().flatten().all(|p| ids.contains(p)));
}

#[test]
fn export_writes_readable_parquet() {
    let (tmp, dir, vault) = vault();
    let b = bundles(tmp.path(), 20, 4);
    ingest::ingest_paths(&vault, &access(), &[b], false).unwrap();
    let out = tmp.path().join("export");
    let o = cohort(dir.root(), &["export", "--out", out.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let c = counts(&vault);
    for (table, n) in &c.tables {
        let f = std::fs::File::open(out.join(format!("{table}.parquet"))).unwrap();
        let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(f)
            .unwrap()
            .build()
            .unwrap();
        let rows: usize = reader.map(|b| b.unwrap().num_rows()).sum();
        assert_eq!(rows as i64, *n, "{table}");
    }
    // PHI left the directory: audited, with who, why and whether
    // identifiers went with it (`identifiers.rs` tests what they hold).
    let entries = cohort_engine::audit::tail(vault.conn(), 5, Some("projection")).unwrap();
    let export = entries
        .iter()
        .find(|e| e.action == "records.export")
        .expect("the export is audited");
    assert_eq!(export.purpose, "operations");
    assert!(export.detail.contains("patients"), "{}", export.detail);
    assert!(
        export.detail.contains("\"identifiers\":false"),
        "{}",
        export.detail
    );

    // Without the passphrase, nothing is written.
    let refused = tmp.path().join("refused");
    let o = cohort_env(
        dir.root(),
        &["export", "--out", refused.to_str().unwrap()],
        &[("COHORT_PASSPHRASE", "not the passphrase")],
    );
    assert!(!o.status.success());
    assert!(
        !refused.exists(),
        "nothing is written without the passphrase"
    );
}
