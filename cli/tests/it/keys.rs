//! `cohort keys`: rotating the key-encryption key and changing the
//! passphrase on a real data directory, under the file keystore and under
//! an HSM (Debian's SoftHSM2, in a token directory of the test's own:
//! `scripts/test` installs it); the records read the same after each step.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::{PASSPHRASE, assert_fails_with, bundles, cohort_env, stderr, stdout};

const SOFTHSM: &str = "/usr/lib/softhsm/libsofthsm2.so";
const PIN: &str = "cli-test-pin";

/// `cohort export --identifiers` (every patient's identifiers decrypted
/// with their data key, so every data key unwrapped), its files' bytes.
fn export(data: &Path, out: &Path, env: &[(&str, &str)]) -> Vec<(String, Vec<u8>)> {
    let o = cohort_env(
        data,
        &[
            "export",
            "--identifiers",
            "--purpose",
            "key test",
            "--out",
            out.to_str().unwrap(),
        ],
        env,
    );
    assert!(o.status.success(), "export: {}", stderr(&o));
    let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(out)
        .unwrap()
        .map(|e| {
            let p = e.unwrap().path();
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read(&p).unwrap(),
            )
        })
        .collect();
    files.sort();
    assert_eq!(files.len(), 5, "one Parquet file per table");
    files
}

fn json(o: &std::process::Output) -> serde_json::Value {
    assert!(o.status.success(), "{}", stderr(o));
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {}", stdout(o)))
}

/// The KEKs `cohort keys status` counts wrapped keys under.
fn keks(data: &Path, env: &[(&str, &str)]) -> Vec<String> {
    let status = json(&cohort_env(data, &["keys", "status", "--json"], env));
    status["wrapped_keys_by_kek"]
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect()
}

fn audit_actions(data: &Path) -> Vec<String> {
    let conn = cohort_engine::DataDir::open(data)
        .unwrap()
        .connect()
        .unwrap();
    let mut stmt = conn
        .prepare("SELECT action FROM audit WHERE action LIKE 'keys.%' ORDER BY seq")
        .unwrap();
    stmt.query_map([], |r| r.get(0))
        .unwrap()
        .map(|r| r.unwrap())
        .collect()
}

#[test]
fn keys_rotate_and_a_new_passphrase_keep_every_record_readable() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let input = bundles(tmp.path(), 30, 5);
    let o = cohort_env(&data, &["ingest", input.to_str().unwrap()], &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let before = export(&data, &tmp.path().join("before"), &[]);
    let first = keks(&data, &[]);
    assert_eq!(first.len(), 1, "{first:?}");

    let report = json(&cohort_env(
        &data,
        &["keys", "rotate", "--batch", "7", "--json"],
        &[],
    ));
    assert_eq!(report["store"], "file");
    assert_eq!(report["retired"], serde_json::json!(first));
    assert_eq!(report["rewrapped"]["patients"], 30, "{report}");
    assert!(
        report["batches"].as_u64().unwrap() >= 5,
        "30 patients in batches of 7: {report}"
    );
    let second = keks(&data, &[]);
    assert_eq!(second, vec![report["current"].as_str().unwrap().to_owned()]);
    assert_ne!(second, first);
    assert_eq!(export(&data, &tmp.path().join("rotated"), &[]), before);

    // A new passphrase: the old one refused after, audited; the new one
    // opens the same keys.
    let new = [("COHORT_NEW_PASSPHRASE", "a brand new passphrase")];
    let o = cohort_env(&data, &["keys", "passphrase"], &new);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = cohort_env(&data, &["keys", "rotate"], &[]);
    assert_fails_with(&o, "wrong passphrase");
    let with_new = [("COHORT_PASSPHRASE", "a brand new passphrase")];
    assert_eq!(
        export(&data, &tmp.path().join("new-pass"), &with_new),
        before
    );
    let o = cohort_env(&data, &["keys", "rotate"], &with_new);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        export(&data, &tmp.path().join("rotated-again"), &with_new),
        before
    );
    assert_eq!(
        audit_actions(&data),
        [
            "keys.rotate.begin",
            "keys.rotate",
            "keys.passphrase",
            "keys.unlock.refused",
            "keys.rotate.begin",
            "keys.rotate",
        ]
    );
    // The keystore file never holds the passphrase or a KEK in the clear.
    let file = std::fs::read_to_string(data.join("keystore.json")).unwrap();
    assert!(!file.contains("brand new") && !file.contains(PASSPHRASE));
}

/// A SoftHSM2 token directory of this test's own, with a token `label`.
fn softhsm(tmp: &Path, label: &str) -> PathBuf {
    assert!(
        Path::new(SOFTHSM).exists(),
        "SoftHSM2 is not installed ({SOFTHSM}): scripts/test installs it (apt-get install softhsm2)"
    );
    let tokens = tmp.join("tokens");
    std::fs::create_dir_all(&tokens).unwrap();
    let conf = tmp.join("softhsm2.conf");
    std::fs::write(
        &conf,
        format!(
            "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n",
            tokens.display()
        ),
    )
    .unwrap();
    let o = Command::new("softhsm2-util")
        .args([
            "--init-token",
            "--free",
            "--label",
            label,
            "--pin",
            PIN,
            "--so-pin",
            "cli-test-so",
        ])
        .env("SOFTHSM2_CONF", &conf)
        .output()
        .expect("softhsm2-util runs");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    conf
}

#[test]
fn an_hsm_data_dir_rotates_inside_the_token_and_refuses_a_wrong_pin() {
    let tmp = tempfile::tempdir().unwrap();
    let conf = softhsm(tmp.path(), "cohort-cli");
    let conf = conf.to_str().unwrap();
    let data = tmp.path().join("data");
    let hsm = [("SOFTHSM2_CONF", conf), ("COHORT_HSM_PIN", PIN)];
    let wrong = [("SOFTHSM2_CONF", conf), ("COHORT_HSM_PIN", "not-the-pin")];
    let use_hsm = [
        "keys",
        "use-hsm",
        "--module",
        SOFTHSM,
        "--token-label",
        "cohort-cli",
    ];

    // A wrong PIN and a missing token are refused, named, and record nothing.
    let o = cohort_env(&data, &use_hsm, &wrong);
    assert_fails_with(&o, "wrong PIN for token `cohort-cli`");
    assert!(
        !stderr(&o).contains("not-the-pin"),
        "the PIN is never echoed"
    );
    let mut missing = use_hsm.to_vec();
    missing[5] = "no-such-token";
    assert_fails_with(
        &cohort_env(&data, &missing, &hsm),
        "no token labelled `no-such-token`",
    );
    assert!(!data.join("keys.toml").exists());

    let o = cohort_env(&data, &use_hsm, &hsm);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(data.join("keys.toml").exists());
    assert!(!data.join("keystore.json").exists(), "no passphrase file");
    let input = bundles(tmp.path(), 12, 9);
    let o = cohort_env(&data, &["ingest", input.to_str().unwrap()], &hsm);
    assert!(o.status.success(), "{}", stderr(&o));
    let before = export(&data, &tmp.path().join("before"), &hsm);
    assert_eq!(keks(&data, &hsm), ["pkcs11:cohort-kek:1"]);

    let report = json(&cohort_env(&data, &["keys", "rotate", "--json"], &hsm));
    assert_eq!(report["store"], "pkcs11");
    assert_eq!(report["current"], "pkcs11:cohort-kek:2");
    assert_eq!(
        report["retired"],
        serde_json::json!(["pkcs11:cohort-kek:1"])
    );
    assert_eq!(keks(&data, &hsm), ["pkcs11:cohort-kek:2"]);
    assert_eq!(export(&data, &tmp.path().join("after"), &hsm), before);

    // A wrong PIN at use: refused, audited, nothing changed.
    let o = cohort_env(&data, &["keys", "rotate"], &wrong);
    assert_fails_with(&o, "wrong PIN");
    assert_eq!(keks(&data, &hsm), ["pkcs11:cohort-kek:2"]);
    // An HSM has no passphrase to change.
    assert_fails_with(
        &cohort_env(&data, &["keys", "passphrase"], &hsm),
        "no passphrase",
    );
    let actions = audit_actions(&data);
    assert_eq!(
        actions,
        [
            "keys.use-hsm.refused",
            "keys.use-hsm.refused",
            "keys.use-hsm",
            "keys.rotate.begin",
            "keys.rotate",
            "keys.unlock.refused",
        ]
    );
}

#[test]
fn keys_tfhe_makes_the_deployment_key_set_once_and_audits_it() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let env = [("COHORT_PASSPHRASE", PASSPHRASE)];
    let first = json(&cohort_env(&data, &["keys", "tfhe", "--json"], &env));
    assert_eq!(first["made"], true, "{first}");
    let dir = data.join("research/fhe/tfhe");
    for file in ["public.bin", "server.bin", "client.sealed"] {
        assert!(dir.join(file).is_file(), "{file} missing");
    }
    let sealed = std::fs::read(dir.join("client.sealed")).unwrap();
    let again = json(&cohort_env(&data, &["keys", "tfhe", "--json"], &env));
    assert_eq!(again["made"], false, "{again}");
    assert_eq!(std::fs::read(dir.join("client.sealed")).unwrap(), sealed);
    assert_eq!(audit_actions(&data), vec!["keys.tfhe.make".to_string()]);
    // The client key is sealed in the keystore: without its passphrase the
    // command opens nothing and makes nothing.
    let wrong = cohort_env(
        &data,
        &["keys", "tfhe"],
        &[("COHORT_PASSPHRASE", "not the passphrase")],
    );
    assert!(!wrong.status.success());
}
