//! Geography through the `cohort` CLI: a deployment policy, providers'
//! attested jurisdictions, a patient's own restriction; cross-border
//! reads refused (audited, nothing traced or decrypted) or allowed by an
//! explicit rule (audited as such, in the accounting of disclosures).

use super::{assert_fails_with, cohort, cohort_json, stdout};

const POLICY: &str = r#"
default = "DE"
cross_border = "refuse"
emergency = "allow"
[groups]
EU = ["DE", "FR", "NL"]
[organisations]
charite = "DE"
[[allow]]
reader = "EU"
record = "EU"
"#;

fn attest(data: &std::path::Path, provider: &str, jurisdiction: Option<&str>) {
    let mut args = vec![
        "--as",
        "board",
        "credential",
        "attest",
        provider,
        "--license",
        "MD-9",
    ];
    if let Some(j) = jurisdiction {
        args.extend(["--jurisdiction", j]);
    }
    cohort_json(data, &args);
}

/// The audit entries of `record`, each with its detail parsed.
fn audit_of(data: &std::path::Path, record: &str) -> Vec<serde_json::Value> {
    let mut entries = cohort_json(data, &["audit", "log", "--target", record])
        .as_array()
        .unwrap()
        .clone();
    for e in &mut entries {
        if let Some(text) = e["detail"].as_str() {
            e["detail"] = serde_json::from_str(text).unwrap();
        }
    }
    entries
}

#[test]
fn a_bad_policy_is_named_and_nothing_is_set() {
    let tmp = tempfile::tempdir().unwrap();
    let (data, _, _) = super::access::world(tmp.path());
    let bad = tmp.path().join("bad.toml");
    for (text, named) in [
        (
            "default = \"DE\"\n[[allow]]\nreader = \"EEA\"\nrecord = \"DE\"\n",
            "`EEA` is neither a group of [groups]",
        ),
        ("default = \"XK\"\n", "`XK` is not a jurisdiction"),
        (
            "default = \"DE\"\n[groups]\nEU = [\"DE\", \"EL\"]\n",
            "group `EU`: `EL` is not a jurisdiction",
        ),
    ] {
        std::fs::write(&bad, text).unwrap();
        assert_fails_with(
            &cohort(&data, &["geo", "set", bad.to_str().unwrap()]),
            named,
        );
    }
    let shown = cohort_json(&data, &["geo", "show"]);
    assert_eq!(shown["enabled"], false, "{shown}");
    assert_fails_with(
        &cohort(
            &data,
            &[
                "--as",
                "board",
                "credential",
                "attest",
                "dr-x",
                "--license",
                "L",
                "--jurisdiction",
                "USA",
            ],
        ),
        "`USA` is not a jurisdiction",
    );
    assert_fails_with(
        &cohort(
            &data,
            &["ingest", "--organisation", "charite", "nowhere.json"],
        ),
        "no geography policy is set",
    );
}

#[test]
fn a_cross_border_read_is_refused_and_audited_until_a_rule_allows_it_and_the_patient_narrows_it() {
    let tmp = tempfile::tempdir().unwrap();
    let (data, observation, condition) = super::access::world(tmp.path());
    let file = tmp.path().join("geo.toml");
    std::fs::write(&file, POLICY).unwrap();
    cohort_json(&data, &["geo", "set", file.to_str().unwrap()]);
    assert_eq!(cohort_json(&data, &["geo", "show"])["enabled"], true);
    cohort_json(
        &data,
        &[
            "--as", "pat", "access", "grant", "dr-x", "--level", "read", "--days", "1",
        ],
    );

    // A credential from before geography (no jurisdiction attested) reads
    // as of the deployment default (DE): the records, ingested before the
    // policy, carry it too; domestic, allowed, not cross-border.
    let read = cohort_json(&data, &["--as", "dr-x", "records", "show", &condition]);
    assert_eq!(read["emergency"], false);
    let entry = audit_of(&data, &condition)
        .into_iter()
        .find(|e| e["action"] == "read")
        .expect("the read is audited");
    assert!(entry["detail"].get("cross_border").is_none(), "{entry}");

    // A US reader of a DE record: refused, naming both and the rule.
    attest(&data, "dr-x", Some("US"));
    let refused = cohort(&data, &["--as", "dr-x", "records", "show", &observation]);
    assert_fails_with(&refused, "cross-border access refused");
    for named in [
        "dr-x (jurisdiction US)",
        "(jurisdiction DE)",
        "no [[allow]] rule lets US read DE",
    ] {
        assert_fails_with(&refused, named);
    }
    // Audited with the reason; no read audited, none traced on chain.
    let audited = audit_of(&data, &observation);
    let r = audited
        .iter()
        .find(|e| e["action"] == "read.refused")
        .expect("the refusal is audited");
    assert_eq!(r["detail"]["reason"], "cross_border", "{r}");
    assert_eq!(r["detail"]["reader_jurisdiction"], "US", "{r}");
    assert_eq!(r["detail"]["record_jurisdiction"], "DE", "{r}");
    assert!(
        !audited.iter().any(|e| e["action"] == "read"),
        "{audited:?}"
    );
    let log = cohort_json(&data, &["--as", "pat", "access", "log"]);
    assert_eq!(
        log.as_array()
            .unwrap()
            .iter()
            .filter(|e| e["accessor_name"] == "dr-x")
            .count(),
        1,
        "only the domestic read is on chain: {log}"
    );
    // An export by someone other than the patient is a read too.
    assert_fails_with(
        &cohort(
            &data,
            &[
                "--as",
                "dr-x",
                "patient",
                "export",
                "pat",
                "--out",
                tmp.path().join("x.json").to_str().unwrap(),
            ],
        ),
        "cross-border access refused",
    );

    // A FR reader: an explicit rule (EU reads EU) allows, audited as such,
    // and the patient's accounting shows it with both jurisdictions.
    attest(&data, "dr-x", Some("FR"));
    cohort_json(&data, &["--as", "dr-x", "records", "show", &observation]);
    let read = audit_of(&data, &observation)
        .into_iter()
        .find(|e| e["action"] == "read")
        .expect("the read is audited");
    assert_eq!(read["detail"]["cross_border"], true, "{read}");
    assert_eq!(read["detail"]["reader_jurisdiction"], "FR", "{read}");
    assert!(
        read["detail"]["geo_rule"]
            .as_str()
            .unwrap()
            .contains("[[allow]] #1 (reader = \"EU\", record = \"EU\")"),
        "{read}"
    );
    let a = cohort_json(&data, &["--as", "pat", "patient", "disclosures", "pat"]);
    assert!(
        a["disclosures"]
            .as_array()
            .unwrap()
            .iter()
            .any(|d| d["recipient"] == "dr-x"
                && d["cross_border"]
                    .as_str()
                    .is_some_and(|c| c.starts_with("FR -> DE by [[allow]] #1"))),
        "{a}"
    );

    // The patient narrows: only readers of their record's jurisdiction.
    // Only a patient may set one, as their own transaction.
    assert_fails_with(
        &cohort(
            &data,
            &["--as", "dr-x", "geo", "restrict", "--domestic-reads-only"],
        ),
        "not a registered patient",
    );
    cohort_json(
        &data,
        &["--as", "pat", "geo", "restrict", "--domestic-reads-only"],
    );
    let shown = cohort_json(&data, &["--as", "pat", "geo", "show"]);
    assert_eq!(shown["restrictions"][0], "domestic-reads-only", "{shown}");
    assert_fails_with(
        &cohort(&data, &["--as", "dr-x", "records", "show", &observation]),
        "refused by the patient's restriction",
    );
    // ...and cannot widen: with no restriction, the US reader is still refused.
    cohort_json(&data, &["--as", "pat", "geo", "restrict"]);
    attest(&data, "dr-x", Some("US"));
    assert_fails_with(
        &cohort(&data, &["--as", "dr-x", "records", "show", &observation]),
        "no [[allow]] rule lets US read DE",
    );

    // An emergency override crosses the border (the policy allows it),
    // flagged for review.
    cohort_json(&data, &["--as", "pat", "access", "revoke", "dr-x"]);
    cohort_json(
        &data,
        &[
            "--as",
            "dr-x",
            "emergency",
            "trigger",
            "pat",
            "--reason",
            "unconscious at the border",
        ],
    );
    let read = cohort_json(&data, &["--as", "dr-x", "records", "show", &observation]);
    assert_eq!(read["emergency"], true);
    let e = audit_of(&data, &observation)
        .into_iter()
        .find(|e| e["action"] == "read.emergency")
        .expect("the emergency read is audited");
    assert_eq!(e["detail"]["review"], true, "{e}");
    assert!(
        e["detail"]["geo_rule"]
            .as_str()
            .unwrap()
            .starts_with("emergency = \"allow\""),
        "{e}"
    );

    // The regulatory report counts them.
    let r = cohort_json(
        &data,
        &["report", "--from", "2020-01-01", "--to", "2100-01-01"],
    );
    assert_eq!(r["accesses"]["cross_border_reads"], 2, "{r}");
    assert_eq!(r["accesses"]["cross_border_refused"], 4, "{r}");
    let text = stdout(&cohort(&data, &["geo", "show"]));
    assert!(text.contains("cross_border = \"refuse\""), "{text}");
}
