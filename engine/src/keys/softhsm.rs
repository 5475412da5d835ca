//! Tests against a real PKCS#11 token: Debian's SoftHSM2 (`scripts/test`
//! installs it), in a token directory of the test's own.
//!
//! SoftHSM2 reads its configuration (`SOFTHSM2_CONF`, naming the token
//! directory) once, when the module is initialized, and PKCS#11 logs in a
//! whole process; so each test runs in a child process of this test binary
//! with its own `SOFTHSM2_CONF`, never touching the system's tokens.
//! [`in_softhsm`] makes the token directory, initializes the tokens with
//! `softhsm2-util`, runs the test again in the child, and fails if the
//! child failed or did not run it.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Debian's SoftHSM2 module.
pub(crate) const MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";
/// The token every test uses.
pub(crate) const TOKEN: &str = "cohort-test";
/// Its user PIN (a test's; a real one comes from a file or the environment).
pub(crate) const PIN: &str = "4711-test";
const SO_PIN: &str = "so-4711-test";
const CHILD: &str = "COHORT_TEST_IN_SOFTHSM";

/// Runs `body` in a child process with its own SoftHSM2 token directory
/// holding the token [`TOKEN`] (user PIN [`PIN`]). `test` is the test's
/// path as the test harness names it (`keys::pkcs11::tests::round_trip`).
pub(crate) fn in_softhsm(test: &str, body: impl FnOnce()) {
    if std::env::var_os(CHILD).is_some() {
        body();
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let conf = write_conf(dir.path());
    init_token(&conf, TOKEN, PIN);
    let out = Command::new(std::env::current_exe().unwrap())
        .args([test, "--exact", "--nocapture", "--test-threads=1"])
        .env("SOFTHSM2_CONF", &conf)
        .env(CHILD, "1")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "{test} failed under SoftHSM2:\n{text}"
    );
    assert!(
        text.contains("1 passed"),
        "{test} did not run under SoftHSM2:\n{text}"
    );
}

/// A SoftHSM2 configuration whose token directory is under `dir`.
pub(crate) fn write_conf(dir: &Path) -> PathBuf {
    let tokens = dir.join("tokens");
    std::fs::create_dir_all(&tokens).unwrap();
    let conf = dir.join("softhsm2.conf");
    std::fs::write(
        &conf,
        format!(
            "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n",
            tokens.display()
        ),
    )
    .unwrap();
    conf
}

/// Initializes a token labelled `label` with user PIN `pin`.
pub(crate) fn init_token(conf: &Path, label: &str, pin: &str) {
    assert!(
        Path::new(MODULE).exists(),
        "SoftHSM2 is not installed ({MODULE} is missing): scripts/test installs it (apt-get install softhsm2)"
    );
    let out = Command::new("softhsm2-util")
        .args(["--init-token", "--free", "--label", label])
        .args(["--pin", pin, "--so-pin", SO_PIN])
        .env("SOFTHSM2_CONF", conf)
        .output()
        .expect("softhsm2-util runs (apt-get install softhsm2)");
    assert!(
        out.status.success(),
        "softhsm2-util --init-token failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The test's path without the crate's name, for [`in_softhsm`].
macro_rules! test_path {
    ($name:literal) => {
        concat!(module_path!(), "::", $name)
            .split_once("::")
            .unwrap()
            .1
    };
}
pub(crate) use test_path;
