//! Key recovery through the `cohort` CLI: each step as its account, the
//! refusals named, and the grant following the patient to the new key.

use super::access::world;
use super::{assert_fails_with, cohort, cohort_json, stdout};

#[test]
fn guardians_restore_a_lost_key_from_the_cli_and_the_grant_follows() {
    let tmp = tempfile::tempdir().unwrap();
    let (data, observation, _) = world(tmp.path());
    for name in ["ann", "ben", "cat", "pat-2", "dr-y"] {
        let _ = cohort(&data, &["account", "new", name]);
    }
    cohort_json(&data, &["account", "grant", "dr-y", "provider"]);
    cohort_json(
        &data,
        &[
            "--as",
            "board",
            "credential",
            "attest",
            "dr-y",
            "--license",
            "MD-10",
        ],
    );
    cohort_json(
        &data,
        &["--as", "pat", "access", "grant", "dr-x", "--days", "7"],
    );
    let bad = cohort(
        &data,
        &[
            "--as",
            "pat",
            "recovery",
            "guardians",
            "ann",
            "--threshold",
            "2",
        ],
    );
    assert_fails_with(&bad, "threshold from 1 to their number");
    let g = cohort_json(
        &data,
        &[
            "--as",
            "pat",
            "recovery",
            "guardians",
            "ann,ben,cat",
            "--threshold",
            "2",
        ],
    );
    assert_eq!(g["threshold"], 2);
    assert_eq!(g["shares_held"], true);

    let opened = cohort_json(&data, &["--as", "pat-2", "recovery", "open", "pat"]);
    let id = opened["id"].as_u64().unwrap().to_string();
    let approve = |who: &str| {
        cohort(
            &data,
            &[
                "--as",
                who,
                "recovery",
                "approve",
                &id,
                "--evidence",
                "photo ID on a video call",
            ],
        )
    };
    assert_fails_with(&approve("dr-x"), "NotAGuardian");
    assert!(approve("ann").status.success());
    assert_fails_with(
        &cohort(&data, &["--as", "pat-2", "recovery", "complete", &id]),
        "1 of the 2 shares",
    );
    assert!(approve("cat").status.success());
    // A forged attestation: an account with no credential.
    assert_fails_with(
        &cohort(
            &data,
            &[
                "--as",
                "ben",
                "recovery",
                "attest",
                &id,
                "--evidence",
                "trust me",
            ],
        ),
        "NotCredentialed",
    );
    cohort_json(
        &data,
        &[
            "--as",
            "dr-y",
            "recovery",
            "attest",
            &id,
            "--evidence",
            "passport checked",
        ],
    );
    let done = cohort(&data, &["--as", "pat-2", "recovery", "complete", &id]);
    assert!(done.status.success(), "{}", stdout(&done));
    assert!(stdout(&done).contains("now acts for"), "{}", stdout(&done));

    // The grant followed: dr-x still reads; the old key is refused.
    let read = cohort(&data, &["--as", "dr-x", "records", "show", &observation]);
    assert!(read.status.success(), "{}", stdout(&read));
    let old = cohort(&data, &["--as", "pat", "records", "show", &observation]);
    assert!(!old.status.success(), "the old key reads nothing");
    let mine = cohort(&data, &["--as", "pat-2", "records", "show", &observation]);
    assert!(mine.status.success(), "{}", stdout(&mine));

    // Step 5.
    assert_fails_with(
        &cohort(
            &data,
            &[
                "--as",
                "audit",
                "recovery",
                "review",
                &id,
                "--justified",
                "--finding",
                "ok",
            ],
        ),
        "read recovery",
    );
    let trail = cohort_json(&data, &["--as", "audit", "recovery", "trail", &id]);
    assert!(trail["entries"].as_array().unwrap().len() >= 5, "{trail}");
    let reviewed = cohort_json(
        &data,
        &[
            "--as",
            "audit",
            "recovery",
            "review",
            &id,
            "--justified",
            "--finding",
            "two guardians and a provider",
        ],
    );
    assert_eq!(reviewed["review"], "justified");
}
