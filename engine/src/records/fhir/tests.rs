use super::*;
use serde_json::json;

fn bundle(entries: Value) -> Vec<u8> {
    serde_json::to_vec(&json!({"resourceType": "Bundle", "type": "collection", "entry": entries}))
        .unwrap()
}

fn pat() -> Value {
    json!({"fullUrl": "urn:uuid:p1", "resource": {"resourceType": "Patient", "id": "p1", "gender": "female", "birthDate": "1950-02-03"}})
}

#[test]
fn parses_and_resolves_urn_references() {
    let b = bundle(
        json!([pat(), {"resource": {"resourceType": "Observation", "id": "o1", "status": "final",
        "code": {"coding": [{"system": LOINC, "code": "4548-4"}]}, "subject": {"reference": "urn:uuid:p1"},
        "effectiveDateTime": "2024-01-02T03:04:05Z", "valueQuantity": {"value": 6.1, "unit": "%"}}}]),
    );
    let parsed = parse_bundle("b.json", &b).unwrap();
    assert_eq!(parsed.resources.len(), 2);
    assert_eq!(parsed.resources[1].patient_id, "p1");
    let Row::Observation(o) = &parsed.resources[1].row else {
        panic!()
    };
    assert_eq!(o.value, Some(6.1));
}

#[test]
fn bad_field_names_entry_and_path() {
    let b = bundle(
        json!([pat(), {"resource": {"resourceType": "Observation", "id": "o1", "status": "final",
        "code": {"coding": [{"system": LOINC, "code": "4548-4"}]}, "subject": {"reference": "Patient/p1"},
        "valueQuantity": {"value": "six"}}}]),
    );
    let err = parse_bundle("b.json", &b).unwrap_err().to_string();
    assert!(err.contains("entry 1 (Observation/o1)"), "{err}");
    assert!(err.contains("valueQuantity.value"), "{err}");
}

#[test]
fn missing_required_field_and_bad_date() {
    let b = bundle(
        json!([pat(), {"resource": {"resourceType": "Encounter", "id": "e1",
        "class": {"code": "AMB"}, "subject": {"reference": "Patient/p1"}}}]),
    );
    let err = parse_bundle("b.json", &b).unwrap_err().to_string();
    assert!(
        err.contains("entry 1 (Encounter/e1)") && err.contains("status"),
        "{err}"
    );
    let b = bundle(
        json!([{"resource": {"resourceType": "Patient", "id": "p1", "birthDate": "1950-13-40"}}]),
    );
    let err = parse_bundle("b.json", &b).unwrap_err().to_string();
    assert!(
        err.contains("entry 0 (Patient/p1): field `birthDate`"),
        "{err}"
    );
}

#[test]
fn rejects_non_bundles_and_duplicates() {
    assert!(
        parse_bundle("x", b"{\"resourceType\":\"Patient\"}")
            .unwrap_err()
            .to_string()
            .contains("found resourceType `Patient`")
    );
    assert!(
        parse_bundle("x", b"[1,2")
            .unwrap_err()
            .to_string()
            .contains("not valid JSON")
    );
    let b = bundle(json!([pat(), pat()]));
    assert!(
        parse_bundle("x", &b)
            .unwrap_err()
            .to_string()
            .contains("appears twice")
    );
}

#[test]
fn unsupported_types_are_counted_not_stored() {
    let b = bundle(json!([pat(), {"resource": {"resourceType": "Claim", "id": "c1"}}]));
    let parsed = parse_bundle("x", &b).unwrap();
    assert_eq!(parsed.resources.len(), 1);
    assert_eq!(parsed.skipped.get("Claim"), Some(&1));
}

#[test]
fn dates() {
    assert_eq!(parse_date("1970-01-02"), Some(1));
    assert_eq!(parse_date("1970"), Some(0));
    assert_eq!(parse_datetime("1970-01-01T00:00:01Z"), Some(1_000_000));
    assert_eq!(parse_datetime("1970-01-01T01:00:00+01:00"), Some(0));
    assert_eq!(parse_date("19700101"), None);
}
