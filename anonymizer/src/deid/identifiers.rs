//! Recognising the 18 Safe Harbor identifier kinds from a column's name.
//!
//! One word list, used both to refuse `keep` on such a column and to label
//! it in the report.

/// Which of the 18 Safe Harbor identifier kinds a column name suggests.
pub fn identifier_kind(column: &str) -> Option<&'static str> {
    let c = column.to_ascii_lowercase();
    let has = |words: &[&str]| {
        words.iter().any(|w| {
            c.split(|ch: char| !ch.is_ascii_alphanumeric())
                .any(|p| p == *w)
        })
    };
    let kinds: [(&[&str], &str); 14] = [
        (
            &[
                "name",
                "family",
                "given",
                "surname",
                "firstname",
                "lastname",
            ],
            "names",
        ),
        (
            &[
                "address",
                "street",
                "city",
                "county",
                "zip",
                "postal",
                "postalcode",
                "zipcode",
                "geo",
                "latitude",
                "longitude",
            ],
            "geographic subdivisions smaller than a state",
        ),
        (
            &[
                "birth",
                "birthdate",
                "dob",
                "death",
                "admission",
                "discharge",
            ],
            "dates related to an individual",
        ),
        (
            &["phone", "telephone", "mobile", "fax"],
            "telephone and fax numbers",
        ),
        (&["email", "mail"], "email addresses"),
        (&["ssn", "social"], "social security numbers"),
        (&["mrn", "medical"], "medical record numbers"),
        (
            &["plan", "beneficiary", "insurance", "member"],
            "health plan beneficiary numbers",
        ),
        (&["account", "iban"], "account numbers"),
        (
            &["license", "licence", "certificate"],
            "certificate and licence numbers",
        ),
        (&["vin", "vehicle", "plate"], "vehicle identifiers"),
        (&["device", "serial", "udi"], "device identifiers"),
        (
            &["url", "website", "ip", "ipv4", "ipv6"],
            "URLs and IP addresses",
        ),
        (
            &[
                "biometric",
                "fingerprint",
                "voiceprint",
                "photo",
                "image",
                "face",
            ],
            "biometric identifiers and photographs",
        ),
    ];
    kinds
        .into_iter()
        .find(|(words, _)| has(words))
        .map(|(_, kind)| kind)
}
