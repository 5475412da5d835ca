//! The committed artifacts are what the pinned solc makes of the sources.

use std::path::Path;
use std::process::Command;

#[test]
fn the_committed_artifacts_match_the_sources() {
    let contracts = Path::new(env!("CARGO_MANIFEST_DIR")).join("contracts");
    assert!(
        contracts.join("node_modules/solc").is_dir(),
        "solc is not installed: run `npm ci` in {}",
        contracts.display()
    );
    let out = Command::new("node")
        .arg("compile.js")
        .arg("--check")
        .current_dir(&contracts)
        .output()
        .expect("node runs");
    assert!(
        out.status.success(),
        "recompiling the contracts gave different artifacts:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_changed_source_is_caught() {
    // Compile a copy of the sources with one byte changed and check that
    // --check refuses it against the committed artifacts.
    let contracts = Path::new(env!("CARGO_MANIFEST_DIR")).join("contracts");
    let tmp = tempfile::tempdir().unwrap();
    std::fs::create_dir(tmp.path().join("src")).unwrap();
    for entry in std::fs::read_dir(contracts.join("src")).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), tmp.path().join("src").join(entry.file_name())).unwrap();
    }
    let file = tmp.path().join("src/ResearchStudy.sol");
    let source = std::fs::read_to_string(&file).unwrap();
    std::fs::write(
        &file,
        source.replace(
            "MAX_DURATION = 10 * 366 days",
            "MAX_DURATION = 10 * 365 days",
        ),
    )
    .unwrap();
    std::fs::copy(contracts.join("compile.js"), tmp.path().join("compile.js")).unwrap();
    std::os::unix::fs::symlink(
        contracts.join("node_modules"),
        tmp.path().join("node_modules"),
    )
    .unwrap();
    let out = Command::new("node")
        .args(["compile.js", "--check", "--out"])
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("artifacts"))
        .current_dir(tmp.path())
        .output()
        .expect("node runs");
    assert!(!out.status.success(), "a changed source passed the check");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("ResearchStudy.json"), "{stderr}");
}
