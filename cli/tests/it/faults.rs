//! Storage faults: a full disk and a read-only data directory, made real
//! with a small tmpfs in a private mount namespace (`unshare -rm`, which
//! needs no privileges where the kernel allows user namespaces). Each
//! command that cannot write ends with a clear error naming the cause;
//! nothing is half-written: once space is back, the next command recovers,
//! and the books, the audit log and the chain verify exactly. A server
//! whose disk fills refuses the call as unavailable, logs the fault for
//! its operator, and goes on once there is room.

use std::path::Path;
use std::process::Command;

use crate::chaos::check_books;
use crate::research::{setup, study_text};
use crate::{PASSPHRASE, cohort_json};

/// Runs `script` as root of a private user and mount namespace with `$MNT`
/// a fresh tmpfs of `size`; its stdout.
fn in_namespace(script: &str, env: &[(&str, &Path)], size: &str) -> String {
    let mnt = tempfile::tempdir().unwrap();
    let full = format!("set -u\nmount -t tmpfs -o size={size} tmpfs \"$MNT\" || exit 97\n{script}");
    let out = Command::new("unshare")
        .args(["-rm", "bash", "-c", &full])
        .env("MNT", mnt.path())
        .env("COHORT_PASSPHRASE", PASSPHRASE)
        .env("COHORT_CHAIN_WAIT_SECS", "10")
        .env("BIN", env!("CARGO_BIN_EXE_cohort"))
        .envs(env.iter().map(|(k, v)| (*k, v.as_os_str())))
        .output()
        .expect("`unshare` (util-linux) runs");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.code() != Some(97),
        "this test needs a private mount namespace (`unshare -rm` with user namespaces \
         enabled: sysctl kernel.unprivileged_userns_clone=1): {stderr}"
    );
    assert!(
        out.status.success(),
        "the script failed: {stdout}\n{stderr}"
    );
    stdout
}

/// The value printed as `KEY=value` by the script.
fn field<'a>(out: &'a str, key: &str) -> &'a str {
    out.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("no {key} in {out}"))
}

const QUERY: &str = r#"q() { "$BIN" --data-dir "$D" query "$STUDY" "SELECT gender, COUNT(*) AS n FROM patients GROUP BY gender" --as researcher --query-id "$1" --json; }"#;

#[test]
fn a_full_disk_and_a_read_only_directory_end_with_a_clear_error_and_nothing_half_written() {
    let s = setup(12);
    // Room for every query the script asks (ten at 0.5, each charged if it
    // fails after its reservation), so the one after the disk is freed is
    // never refused for the budget, wherever the full disk stopped the others.
    let (id, _) = s.approved_study(&study_text("10", "0.5", false), 4);
    // One answer first, so the view exists and the full disk meets the
    // journal, the chain and the audit log rather than the view build.
    let first = cohort_json(
        &s.data,
        &[
            "query",
            &id.to_string(),
            "SELECT COUNT(*) AS n FROM patients",
            "--as",
            "researcher",
        ],
    );
    assert!(first["answer"].is_object());
    let study = id.to_string();
    let script = format!(
        r#"
{QUERY}
cp -a "$DATA" "$MNT/data"; D="$MNT/data"; STUDY={study}
# Fill the disk to the last byte.
dd if=/dev/zero of="$MNT/filler" bs=4k >/dev/null 2>&1
q full-1 >/dev/null 2>"$MNT/../full.err"; echo "FULL_EXIT=$?"
echo "FULL_ERR=$(tr '\n' ' ' < "$MNT/../full.err")"
# The disk fills at other steps of a query: with a little room left, the
# open succeeds and a later write (the view, the journal, the chain's
# block, the audit entry) is refused.
for kb in 16 32 64 128 256 512 1024 2048; do
  truncate -s "-${{kb}}K" "$MNT/filler"
  q "room-$kb" >/dev/null 2>"$MNT/../room.err"; code=$?
  echo "ROOM_${{kb}}_EXIT=$code"
  echo "ROOM_${{kb}}_ERR=$(tr '\n' ' ' < "$MNT/../room.err")"
  dd if=/dev/zero of="$MNT/filler" bs=4k oflag=append conv=notrunc >/dev/null 2>&1
done
rm "$MNT/filler"
# Space is back: the next command recovers and answers.
q full-2 >/dev/null 2>&1; echo "AFTER_FULL_EXIT=$?"
# Read-only.
mount -o remount,ro "$MNT"
q ro-1 >/dev/null 2>"$MNT/../ro.err"; echo "RO_EXIT=$?"
echo "RO_ERR=$(tr '\n' ' ' < "$MNT/../ro.err")"
mount -o remount,rw "$MNT"
# A server whose disk fills while it runs: a sign-in (audited, so it
# writes) is refused as unavailable, and the server goes on.
# (No second factor: this is about the disk, and the refusal of a missing
# TOTP code would come before the sign-in's audited write.)
COHORT_AUTH_SECOND_FACTOR=false "$BIN" --data-dir "$D" serve --listen 127.0.0.1:0 >"$MNT/../serve.out" 2>"$MNT/../serve.err" &
server=$!
for _ in $(seq 1 200); do grep -q "listening on" "$MNT/../serve.out" 2>/dev/null && break; sleep 0.05; done
url=$(grep -o 'https://[0-9.:]*' "$MNT/../serve.out" | head -1)
# Serving (its health check answers) before the disk fills.
for _ in $(seq 1 200); do "$BIN" --data-dir "$D" health --server "$url" >/dev/null 2>&1 && break; sleep 0.05; done
dd if=/dev/zero of="$MNT/filler" bs=4k >/dev/null 2>&1
"$BIN" --data-dir "$D" login --as researcher --server "$url" >/dev/null 2>"$MNT/../login.err"; echo "SERVE_FULL_EXIT=$?"
echo "SERVE_FULL_ERR=$(tr '\n' ' ' < "$MNT/../login.err")"
rm "$MNT/filler"
"$BIN" --data-dir "$D" login --as researcher --server "$url" >/dev/null 2>&1; echo "SERVE_AFTER_EXIT=$?"
kill -TERM $server; wait $server
echo "SERVE_LOG=$(grep -c 'storage fault' "$MNT/../serve.err")"
echo "SERVE_ERRLOG=$(tail -c 2000 "$MNT/../serve.err" | tr '\n' ' ')"
# What the faults left, back where the test reads it.
rm -rf "$DATA" && cp -a "$D" "$DATA"
"#
    );
    let out = in_namespace(&script, &[("DATA", &s.data)], "64m");
    eprintln!("{out}");
    assert_ne!(field(&out, "FULL_EXIT"), "0", "a full disk answers nothing");
    let err = field(&out, "FULL_ERR");
    assert!(
        err.contains("is full (") && err.contains("free space, then run the command again"),
        "the error names the full disk and what to do: {err}"
    );
    assert!(err.contains("nothing was half-written"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    for kb in [16, 32, 64, 128, 256, 512, 1024, 2048] {
        // Answered, or refused naming the full disk; never a crash.
        if field(&out, &format!("ROOM_{kb}_EXIT")) != "0" {
            let err = field(&out, &format!("ROOM_{kb}_ERR"));
            assert!(
                err.starts_with("error: the disk holding") && !err.contains("panicked"),
                "with {kb} KiB free: {err}"
            );
        }
    }
    assert_eq!(field(&out, "AFTER_FULL_EXIT"), "0");
    assert_ne!(field(&out, "RO_EXIT"), "0");
    let err = field(&out, "RO_ERR");
    assert!(
        err.contains("is on a read-only file system: remount it read-write"),
        "the error names the read-only directory and what to do: {err}"
    );
    assert!(!err.contains("panicked"), "{err}");

    assert_ne!(field(&out, "SERVE_FULL_EXIT"), "0");
    let err = field(&out, "SERVE_FULL_ERR");
    assert!(
        err.contains("full") && !err.contains("panicked"),
        "the refusal says the disk is full: {err}"
    );
    assert_eq!(field(&out, "SERVE_AFTER_EXIT"), "0", "the server went on");
    assert_ne!(
        field(&out, "SERVE_LOG"),
        "0",
        "the operator is told in the log"
    );

    // Nothing half-written: the books balance and both chains verify.
    let delivered = check_books(&s, id);
    assert!(delivered.contains_key("full-2"), "{delivered:?}");
    assert!(!delivered.contains_key("full-1") && !delivered.contains_key("ro-1"));
}
