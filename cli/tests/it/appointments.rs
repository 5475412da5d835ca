//! Appointments and insurance through the `cohort` CLI: a provider
//! publishes, patients book and pay, an insurer covers, the provider
//! confirms, completes and marks a no-show, a patient disputes and the
//! admin resolves; every bad input refused by name. Then the same desk over
//! a running server, its scheduler's reminders (once each, across a
//! restart) and its notification stream.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::{assert_fails_with, bundles, cohort, cohort_json, stderr, stdout};
use crate::PASSPHRASE;
use crate::server::Server;

const REASON: &str = "recurring migraine with aura";

/// A ledger, a small cohort, patients `pat` and `pat2` (funded), a
/// credentialed provider `dr-x`, an account `acme` that is not yet an
/// insurer.
fn clinic(tmp: &Path) -> PathBuf {
    let data = tmp.join("data");
    cohort_json(&data, &["ledger", "deploy"]);
    let b = bundles(tmp, 3, 4);
    assert!(
        cohort(&data, &["ingest", b.to_str().unwrap()])
            .status
            .success()
    );
    let conn = cohort_engine::DataDir::open(&data)
        .unwrap()
        .connect()
        .unwrap();
    let ids: Vec<String> = conn
        .prepare("SELECT patient_id FROM patients ORDER BY patient_id LIMIT 2")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    drop(conn);
    for (name, id) in [("pat", &ids[0]), ("pat2", &ids[1])] {
        cohort_json(&data, &["account", "new", name, "--patient", id]);
        cohort_json(&data, &["account", "fund", name, "5 ether"]);
    }
    crate::research::provider_with_grants(&data, "dr-x", &[]);
    cohort_json(&data, &["account", "new", "acme"]);
    cohort_json(&data, &["account", "fund", "acme", "5 ether"]);
    data
}

fn json_of(o: &std::process::Output) -> serde_json::Value {
    assert!(o.status.success(), "{}", stderr(o));
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {}", stdout(o)))
}

/// The free slots of dr-x (unix seconds), as `--as` sees them.
fn slots(data: &Path, extra: &[&str]) -> Vec<u64> {
    let mut args = vec![
        "--as",
        "pat",
        "appointment",
        "slots",
        "dr-x",
        "--days",
        "2",
        "--limit",
        "200",
        "--json",
    ];
    args.extend(extra);
    let v = json_of(&cohort(data, &args));
    v["starts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_u64().unwrap())
        .collect()
}

fn audit_text(data: &Path) -> String {
    let conn = cohort_engine::DataDir::open(data)
        .unwrap()
        .connect()
        .unwrap();
    conn.query_row(
        "SELECT group_concat(action || ' ' || detail, '\n') FROM audit",
        [],
        |r| r.get(0),
    )
    .unwrap()
}

#[test]
fn a_clinic_runs_its_week_through_the_cli() {
    let tmp = tempfile::tempdir().unwrap();
    let data = clinic(tmp.path());
    let at = |s: u64| s.to_string();
    // Nothing published yet: refused, saying what is missing.
    assert_fails_with(
        &cohort(
            &data,
            &[
                "--as",
                "pat",
                "appointment",
                "book",
                "dr-x",
                "--at",
                "2030-01-01 09:00",
                "--reason",
                "x",
            ],
        ),
        "does not offer this visit type",
    );
    // A patient cannot publish; bad hours are named.
    assert_fails_with(
        &cohort(
            &data,
            &[
                "--as",
                "pat",
                "appointment",
                "availability",
                "--fee",
                "checkup=0.1 ether",
            ],
        ),
        "no unexpired credential",
    );
    assert_fails_with(
        &cohort(
            &data,
            &[
                "--as",
                "dr-x",
                "appointment",
                "availability",
                "--hours",
                "mon-fri=17:00-09:00",
            ],
        ),
        "closes before it opens",
    );
    let published = json_of(&cohort(
        &data,
        &[
            "--as",
            "dr-x",
            "appointment",
            "availability",
            "--hours",
            "mon-sun=00:00-24:00",
            "--slot",
            "30m",
            "--fee",
            "checkup=0.1 ether",
            "--deposit",
            "50%",
            "--refunds",
            "24h=100%,2h=50%",
            "--json",
        ],
    ));
    assert_eq!(
        published["items"].as_array().unwrap().len(),
        3,
        "{published}"
    );
    let terms = stdout(&cohort(&data, &["appointment", "terms", "dr-x"]));
    assert!(
        terms.contains("checkup: 0.1 ether") && terms.contains("deposit 50%"),
        "{terms}"
    );
    let free = slots(&data, &[]);
    assert!(free.len() > 48, "{free:?}");
    // Three hours ahead and more: one to complete, one to miss, one to cancel.
    let (visit, missed, cancelled) = (free[8], free[10], free[60]);
    // Said before booking: no coverage yet.
    let quote = stdout(&cohort(
        &data,
        &[
            "--as",
            "pat",
            "appointment",
            "quote",
            "dr-x",
            "--at",
            &at(visit),
        ],
    ));
    assert!(quote.contains("no coverage in force"), "{quote}");
    // An insurer needs the role; then verifies and funds 80% of check-ups.
    let verify = [
        "--as",
        "acme",
        "insurance",
        "verify",
        "pat",
        "--provider",
        "dr-x",
        "--share",
        "80%",
        "--policy",
        "ACME-7",
    ];
    assert_fails_with(&cohort(&data, &verify), "does not hold the role");
    cohort_json(&data, &["account", "grant", "acme", "insurer"]);
    assert!(cohort(&data, &verify).status.success());
    assert!(
        cohort(&data, &["--as", "acme", "insurance", "fund", "1 ether"])
            .status
            .success()
    );
    let quote = stdout(&cohort(
        &data,
        &[
            "--as",
            "pat",
            "appointment",
            "quote",
            "dr-x",
            "--at",
            &at(visit),
        ],
    ));
    assert!(
        quote.contains("covered by `acme`") && quote.contains("you pay 0.02 ether"),
        "{quote}"
    );
    let shown = stdout(&cohort(&data, &["--as", "pat", "insurance", "show"]));
    assert!(shown.contains("80% by acme"), "{shown}");
    // Book: the copay (0.02) paid into escrow.
    let book = |who: &str, start: u64| {
        cohort(
            &data,
            &[
                "--as",
                who,
                "appointment",
                "book",
                "dr-x",
                "--at",
                &at(start),
                "--reason",
                REASON,
                "--json",
            ],
        )
    };
    let b = json_of(&book("pat", visit));
    let visit_id = b["id"].as_u64().unwrap().to_string();
    assert_eq!(b["paid"], "20000000000000000");
    // Bad input: taken, in the past, off the slot grid, too little, a provider as patient.
    assert_fails_with(&book("pat2", visit), "already booked");
    assert_fails_with(&book("pat", 1_000_000), "in the past");
    assert_fails_with(
        &cohort(
            &data,
            &[
                "--as",
                "pat",
                "appointment",
                "quote",
                "dr-x",
                "--at",
                "1000000",
            ],
        ),
        "in the past",
    );
    assert_fails_with(
        &cohort(
            &data,
            &[
                "--as",
                "pat",
                "appointment",
                "book",
                "dr-x",
                "--at",
                &at(missed),
                "--reason",
                "x",
                "--pay",
                "lots",
            ],
        ),
        "--pay `lots`",
    );
    assert_fails_with(&book("pat", visit + 60), "not a slot");
    assert_fails_with(
        &cohort(
            &data,
            &[
                "--as",
                "pat2",
                "appointment",
                "book",
                "dr-x",
                "--at",
                &at(missed),
                "--reason",
                "x",
                "--pay",
                "1 wei",
            ],
        ),
        "below",
    );
    assert_fails_with(&book("dr-x", missed), "not a patient's account");
    let missed_id = json_of(&book("pat2", missed))["id"]
        .as_u64()
        .unwrap()
        .to_string();
    let cancelled_id = json_of(&book("pat2", cancelled))["id"]
        .as_u64()
        .unwrap()
        .to_string();
    // The booked slots are no longer free.
    let free_now = slots(&data, &[]);
    assert!(!free_now.contains(&visit) && !free_now.contains(&missed));
    // Only the provider confirms; the provider reads the reason, another account cannot.
    assert_fails_with(
        &cohort(
            &data,
            &["--as", "pat2", "appointment", "confirm", &visit_id],
        ),
        "not the party",
    );
    for id in [&visit_id, &missed_id] {
        assert!(
            stdout(&cohort(
                &data,
                &["--as", "dr-x", "appointment", "confirm", id]
            ))
            .contains("confirmed")
        );
    }
    assert_eq!(
        stdout(&cohort(
            &data,
            &["--as", "dr-x", "appointment", "reason", &visit_id]
        ))
        .trim(),
        REASON
    );
    assert_fails_with(
        &cohort(&data, &["--as", "pat2", "appointment", "reason", &visit_id]),
        "neither the patient nor the provider",
    );
    // A patient cancelling more than a day ahead gets it all back.
    let c = stdout(&cohort(
        &data,
        &["--as", "pat2", "appointment", "cancel", &cancelled_id],
    ));
    assert!(
        c.contains("cancelled") && c.contains("0.1 ether back to the patient"),
        "{c}"
    );
    // The scheduler's round on the data directory: the 24 h reminder of each
    // live booking, once.
    let r = json_of(&cohort(&data, &["appointment", "remind", "--json"]));
    assert_eq!(r["reminded"], 2, "{r}");
    let r = json_of(&cohort(&data, &["appointment", "remind", "--json"]));
    assert_eq!(r["reminded"], 0, "{r}");
    let told = stdout(&cohort(&data, &["--as", "pat", "notifications", "list"]));
    assert!(
        told.contains("appointment.reminder") && told.contains("appointment.confirmed"),
        "{told}"
    );
    // Too early to complete; six hours later, done; the missed one is a no-show.
    assert_fails_with(
        &cohort(
            &data,
            &["--as", "dr-x", "appointment", "complete", &visit_id],
        ),
        "too early",
    );
    assert!(cohort(&data, &["ledger", "advance", "6h"]).status.success());
    let done = stdout(&cohort(
        &data,
        &["--as", "dr-x", "appointment", "complete", &visit_id],
    ));
    assert!(
        done.contains("completed (0.1 ether to the provider)"),
        "{done}"
    );
    assert_fails_with(
        &cohort(&data, &["--as", "pat", "appointment", "cancel", &visit_id]),
        "not in a state",
    );
    let absent = stdout(&cohort(
        &data,
        &["--as", "dr-x", "appointment", "no-show", &missed_id],
    ));
    assert!(
        absent.contains("no-show") && absent.contains("0.05 ether back to the patient"),
        "{absent}"
    );
    assert_fails_with(
        &cohort(
            &data,
            &["--as", "dr-x", "appointment", "no-show", &missed_id],
        ),
        "not in a state",
    );
    // Disputed; the admin strikes it out: the deposit goes back.
    assert!(
        cohort(
            &data,
            &["--as", "pat2", "appointment", "dispute", &missed_id]
        )
        .status
        .success()
    );
    assert_fails_with(
        &cohort(
            &data,
            &[
                "--as",
                "dr-x",
                "appointment",
                "resolve",
                &missed_id,
                "--overturn",
            ],
        ),
        "does not hold the role",
    );
    let resolved = stdout(&cohort(
        &data,
        &["appointment", "resolve", &missed_id, "--overturn"],
    ));
    assert!(
        resolved.contains("excused") && resolved.contains("0.05 ether back to the patient"),
        "{resolved}"
    );
    // What each party sees.
    let mine = json_of(&cohort(
        &data,
        &["--as", "pat", "appointment", "list", "--json"],
    ));
    assert_eq!(mine["appointments"][0]["status"], "completed");
    assert_eq!(mine["appointments"][0]["insurer"], "acme");
    assert_eq!(mine["money"]["paid"], "20000000000000000", "{mine}");
    let theirs = stdout(&cohort(&data, &["--as", "pat2", "appointment", "list"]));
    assert!(
        theirs.contains("as a patient: paid 0.2 ether, held 0 ether, refunded 0.2 ether, owed 0 ether, 0 no-show(s)"),
        "{theirs}"
    );
    let calendar = json_of(&cohort(
        &data,
        &["--as", "dr-x", "appointment", "list", "--json"],
    ));
    let statuses: Vec<&str> = calendar["appointments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses, ["completed", "excused", "cancelled"]);
    assert_fails_with(
        &cohort(&data, &["--as", "pat", "appointment", "list", "--all"]),
        "only its own",
    );
    // The audit log has every step, and never the reason.
    let audit = audit_text(&data);
    for action in [
        "appointment.publish",
        "appointment.publish.refused",
        "appointment.book",
        "appointment.book.refused",
        "appointment.confirm",
        "appointment.cancel",
        "appointment.complete",
        "appointment.no-show",
        "appointment.dispute",
        "appointment.resolve",
        "insurance.verify",
        "insurance.verify.refused",
        "insurance.fund",
    ] {
        assert!(
            audit.lines().any(|l| l.starts_with(&format!("{action} "))),
            "{action} missing"
        );
    }
    assert!(
        !audit.contains("migraine"),
        "the reason is in the audit log"
    );
}

/// Waits (polling, at most a minute) until `pat`'s notifications over the
/// server hold `n` reminders of appointment `id`.
fn reminders_of(data: &Path, url: &str, who: &str, id: u64) -> usize {
    let list = json_of(&cohort(
        data,
        &[
            "--as",
            who,
            "notifications",
            "list",
            "--server",
            url,
            "--json",
        ],
    ));
    list.as_array()
        .unwrap()
        .iter()
        .filter(|n| n["kind"] == "appointment.reminder" && n["body"]["appointment"] == id)
        .count()
}

fn wait_for_reminder(data: &Path, url: &str, id: u64) {
    for _ in 0..120 {
        if reminders_of(data, url, "pat", id) > 0 {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
    panic!("no reminder of appointment {id} within a minute");
}

#[test]
fn over_a_server_the_desk_books_streams_and_reminds_once_across_a_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let data = clinic(tmp.path());
    cohort_json(
        &data,
        &[
            "--as",
            "dr-x",
            "appointment",
            "availability",
            "--hours",
            "mon-sun=00:00-24:00",
            "--slot",
            "15m",
            "--fee",
            "checkup=0.1 ether",
        ],
    );
    // The second factor is off for this test: each command over --server,
    // and each poll for the reminder, signs in anew, more often than one
    // account's TOTP codes allow (server:: and web:: test the factor).
    let env = [
        ("COHORT_APPOINTMENTS_SCHEDULER_SECS", "1"),
        ("COHORT_AUTH_SECOND_FACTOR", "false"),
    ];
    let server = Server::start_env(&data, &env);
    let url = server.url.clone();
    let remote = |args: &[&str]| {
        let mut all = args.to_vec();
        all.extend(["--server", url.as_str()]);
        cohort(&data, &all)
    };
    // The server owns the chain: the directory refuses, the server serves.
    assert_fails_with(
        &cohort(&data, &["--as", "pat", "appointment", "cancel", "0"]),
        "owned by",
    );
    let free = json_of(&remote(&[
        "--as",
        "pat",
        "appointment",
        "slots",
        "dr-x",
        "--json",
    ]));
    let starts: Vec<u64> = free["starts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_u64().unwrap())
        .collect();
    // The provider watches the stream (from its latest notification) while
    // the patient books.
    let seen = json_of(&remote(&[
        "--as",
        "dr-x",
        "notifications",
        "list",
        "--json",
    ]));
    let after = seen
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|n| n["id"].as_i64())
        .max()
        .unwrap_or(0)
        .to_string();
    let watcher = Command::new(env!("CARGO_BIN_EXE_cohort"))
        .args([
            "--data-dir",
            data.to_str().unwrap(),
            "--as",
            "dr-x",
            "notifications",
            "watch",
            "--after",
            &after,
            "--count",
            "1",
            "--json",
            "--server",
            &url,
        ])
        .env("COHORT_PASSPHRASE", PASSPHRASE)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // 30 to 45 minutes ahead: the 1 h reminder is due at once.
    let soon = starts[2];
    let b = json_of(&remote(&[
        "--as",
        "pat",
        "appointment",
        "book",
        "dr-x",
        "--at",
        &soon.to_string(),
        "--reason",
        REASON,
        "--json",
    ]));
    let first = b["id"].as_u64().unwrap();
    let watched = watcher.wait_with_output().unwrap();
    let event: serde_json::Value = serde_json::from_slice(&watched.stdout)
        .unwrap_or_else(|e| panic!("{e}: {} {}", stdout(&watched), stderr(&watched)));
    assert_eq!(event["kind"], "appointment.booked", "{event}");
    assert_eq!(event["body"]["appointment"], first);
    assert_fails_with(
        &remote(&[
            "--as",
            "pat2",
            "appointment",
            "book",
            "dr-x",
            "--at",
            &soon.to_string(),
            "--reason",
            "x",
        ]),
        "already booked",
    );
    let confirmed = remote(&["--as", "dr-x", "appointment", "confirm", &first.to_string()]);
    assert!(
        stdout(&confirmed).contains("confirmed"),
        "{}",
        stderr(&confirmed)
    );
    wait_for_reminder(&data, &url, first);
    assert!(server.stop().success());
    // The server anchored the audit log's keyed head at shutdown.
    let verified = cohort_json(&data, &["audit", "verify"]);
    assert!(verified["first_broken"].is_null(), "{verified}");
    assert_eq!(verified["keyed"]["anchors_checked"], 1, "{verified}");
    // Restarted, the scheduler runs again: a second booking gets its
    // reminder; the first is never reminded twice.
    let server = Server::start_env(&data, &env);
    let url = server.url.clone();
    let b = json_of(&cohort(
        &data,
        &[
            "--as",
            "pat",
            "appointment",
            "book",
            "dr-x",
            "--at",
            &starts[3].to_string(),
            "--reason",
            REASON,
            "--json",
            "--server",
            &url,
        ],
    ));
    let second = b["id"].as_u64().unwrap();
    wait_for_reminder(&data, &url, second);
    assert_eq!(reminders_of(&data, &url, "pat", first), 1);
    assert_eq!(reminders_of(&data, &url, "dr-x", first), 1);
    let listed = json_of(&cohort(
        &data,
        &[
            "--as",
            "dr-x",
            "appointment",
            "list",
            "--json",
            "--server",
            &url,
        ],
    ));
    assert_eq!(
        listed["appointments"].as_array().unwrap().len(),
        2,
        "{listed}"
    );
    assert_eq!(
        stdout(&cohort(
            &data,
            &[
                "--as",
                "dr-x",
                "appointment",
                "reason",
                &first.to_string(),
                "--server",
                &url
            ]
        ))
        .trim(),
        REASON
    );
    drop(server);
}
