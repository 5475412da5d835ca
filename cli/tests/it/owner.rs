//! One owner per data directory's chain, tried as an operator would: CLI
//! processes racing for one budget, a command beside a running server, a
//! command waiting for another, claims racing each other. Every process is
//! a real `cohort` binary on one data directory.

use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};

use crate::research::{setup, study_text};
use crate::server::Server;
use crate::{PASSPHRASE, cohort, cohort_json, stderr};

/// A `cohort` child on `data` with `env`, stderr piped.
fn spawn(data: &Path, args: &[&str], env: &[(&str, &str)]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_cohort"))
        .arg("--data-dir")
        .arg(data)
        .args(args)
        .env("COHORT_PASSPHRASE", PASSPHRASE)
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Reads `child`'s stderr until a line equal to (or starting with) `line`;
/// returns the lines read, the matching one last.
fn read_until(
    child: &mut Child,
    line: &str,
) -> (Vec<String>, BufReader<std::process::ChildStderr>) {
    let mut lines = BufReader::new(child.stderr.take().unwrap());
    let mut seen = Vec::new();
    loop {
        let mut l = String::new();
        let n = lines.read_line(&mut l).unwrap();
        assert!(n > 0, "the process ended before saying {line:?}: {seen:?}");
        let l = l.trim_end().to_string();
        seen.push(l.clone());
        if l.starts_with(line) {
            return (seen, lines);
        }
    }
}

fn query_args<'a>(study: &'a str, id: &'a str) -> Vec<&'a str> {
    vec![
        "query",
        study,
        "SELECT COUNT(*) AS n FROM patients",
        "--as",
        "researcher",
        "--query-id",
        id,
        "--json",
    ]
}

fn finished(child: Child) -> Output {
    child.wait_with_output().unwrap()
}

#[test]
fn query_processes_racing_for_one_budget_spend_exactly_what_it_affords() {
    let s = setup(20);
    // 1 / 0.2: exactly 5 of 9 queries can be paid for.
    let text = study_text("1", "0.2", false).replace("0.06 ether", "0.02 ether");
    let (id, _) = s.approved_study(&text, 6);
    let study = id.to_string();
    let ids: Vec<String> = (0..9).map(|i| format!("race-{i}")).collect();
    // All at once; each waits (bounded, announced) for the chain's owner.
    let children: Vec<Child> = ids
        .iter()
        .map(|q| spawn(&s.data, &query_args(&study, q), &[]))
        .collect();
    let outputs: Vec<Output> = children.into_iter().map(finished).collect();
    let answered: Vec<&String> = ids
        .iter()
        .zip(&outputs)
        .filter(|(_, o)| o.status.success())
        .map(|(q, _)| q)
        .collect();
    assert_eq!(answered.len(), 5, "min(N, K) answered");
    for o in outputs.iter().filter(|o| !o.status.success()) {
        let e = stderr(o);
        assert!(
            e.contains("query refused (privacy-budget): it costs ε = 0.2")
                && !e.contains("UNIQUE")
                && !e.contains("locked"),
            "not a budget refusal: {e}"
        );
    }
    // Debits equal answers, exactly: 5 × 0.2, nothing reserved.
    let show = cohort_json(&s.data, &["study", "show", &study]);
    assert_eq!(show["remaining"], "ε 0", "{show}");
    let conn = s.dir.connect().unwrap();
    let delivered: i64 = conn
        .query_row(
            "SELECT COUNT(*) FROM research_queries WHERE state = 'delivered'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(delivered, 5, "every debit has its delivered answer");
    let open: i64 = conn
        .query_row(
            "SELECT COUNT(*) FROM research_queries WHERE state IN ('reserving', 'reserved', 'answered')",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(open, 0, "nothing is left half-done");
    // An answered query asked again returns its stored outcome, free.
    let again = cohort(&s.data, &query_args(&study, answered[0]));
    assert!(again.status.success(), "{}", stderr(&again));
    assert_eq!(
        cohort_json(&s.data, &["study", "show", &study])["remaining"],
        "ε 0"
    );
    for check in [["audit", "verify"], ["ledger", "verify"]] {
        let o = cohort(&s.data, &check);
        assert!(o.status.success(), "{check:?}: {}", stderr(&o));
    }
}

#[test]
fn beside_a_server_a_writing_command_is_refused_with_its_pid_and_reading_works() {
    let s = setup(8);
    let (id, _) = s.approved_study(&study_text("3", "0.5", false), 4);
    let study = id.to_string();
    let server = Server::start(&s.data);
    let pid = server.pid().to_string();
    let refused = cohort(&s.data, &query_args(&study, "beside"));
    assert!(!refused.status.success());
    let e = stderr(&refused);
    assert!(
        e.contains(&format!("owned by pid {pid}, a cohort server")) && e.contains("use its APIs"),
        "{e}"
    );
    // Refused before anything was reserved.
    let show = cohort_json(&s.data, &["study", "show", &study]);
    assert_eq!(show["remaining"], "ε 3");
    assert_eq!(show["status"], "approved", "{show}");
    // Reading commands work beside it.
    cohort_json(&s.data, &["study", "list"]);
    cohort_json(&s.data, &["ledger", "status"]);
    cohort_json(&s.data, &["consent", "list", "--as", "patient-0"]);
    let verify = cohort(&s.data, &["ledger", "verify"]);
    assert!(verify.status.success(), "{}", stderr(&verify));
    // Once the server has stopped, the same command runs.
    assert!(server.stop().success());
    let out = cohort(&s.data, &query_args(&study, "beside"));
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn a_second_command_names_the_owner_or_waits_for_it_visibly() {
    let s = setup(8);
    let (id, _) = s.approved_study(&study_text("3", "0.5", false), 4);
    let study = id.to_string();
    // The first command owns the chain and stops mid-query.
    let mut first = spawn(
        &s.data,
        &query_args(&study, "first"),
        &[("COHORT_TEST_PAUSE_AT", "executing")],
    );
    let (_, _first_err) = read_until(&mut first, "paused at executing");
    let owner = format!("owned by pid {}, a cohort command", first.id());

    // With no wait, a second is refused at once, naming the owner.
    let at_once = finished(spawn(
        &s.data,
        &query_args(&study, "second"),
        &[("COHORT_CHAIN_WAIT_SECS", "0")],
    ));
    assert!(!at_once.status.success());
    let e = stderr(&at_once);
    assert!(
        e.contains(&owner) && e.contains("COHORT_CHAIN_WAIT_SECS"),
        "{e}"
    );

    // With a wait, it says so once and goes on when the owner is gone.
    let mut waiting = spawn(
        &s.data,
        &query_args(&study, "second"),
        &[("COHORT_CHAIN_WAIT_SECS", "120")],
    );
    let (seen, mut rest) = read_until(&mut waiting, "waiting for the embedded chain");
    assert!(seen.last().unwrap().contains(&owner), "{seen:?}");
    first.kill().unwrap(); // SIGKILL, mid-query
    first.wait().unwrap();
    let mut tail = String::new();
    rest.read_to_string(&mut tail).unwrap();
    let status = waiting.wait().unwrap();
    assert!(status.success(), "{tail}");
    assert!(!tail.contains("waiting for"), "announced once: {tail}");
    // The killed query was found by the next owner and charged (it had
    // run on the data); the second was answered: 2 × 0.5 spent.
    assert_eq!(
        cohort_json(&s.data, &["study", "show", &study])["remaining"],
        "ε 2"
    );
}

#[test]
fn claims_racing_each_other_pay_each_share_once() {
    let s = setup(8);
    let (id, _) = s.approved_study(&study_text("3", "0.5", false), 3);
    let study = id.to_string();
    let q = cohort(&s.data, &query_args(&study, "paid"));
    assert!(q.status.success(), "{}", stderr(&q));
    let claims: Vec<Child> = (0..4)
        .map(|_| {
            spawn(
                &s.data,
                &["compensation", "claim", "--as", "patient-0", "--json"],
                &[],
            )
        })
        .collect();
    let outputs: Vec<Output> = claims.into_iter().map(finished).collect();
    let paid = outputs.iter().filter(|o| o.status.success()).count();
    assert_eq!(paid, 1, "one claim pays, the others find nothing left");
    for o in outputs.iter().filter(|o| !o.status.success()) {
        assert!(stderr(o).contains("nothing left to claim"), "{}", stderr(o));
    }
    let shown = cohort_json(&s.data, &["compensation", "show", "--as", "patient-0"]);
    assert_eq!(shown["claimable"], "0 ether");
}

#[test]
fn server_clients_racing_for_one_budget_get_exactly_what_it_affords() {
    use crate::server::{ask, client, login};
    let s = setup(20);
    // 1 / 0.2: exactly 5 of 9 queries can be paid for.
    let text = study_text("1", "0.2", false).replace("0.06 ether", "0.02 ether");
    let (id, _) = s.approved_study(&text, 6);
    let study = id.to_string();
    let server = Server::start(&s.data);
    let token = login(&s.data, &server, "researcher");
    let clients: Vec<_> = (0..9)
        .map(|i| {
            let (data, url, token, study) = (
                s.data.clone(),
                server.url.clone(),
                token.clone(),
                study.clone(),
            );
            std::thread::spawn(move || {
                let rt = tokio::runtime::Runtime::new().unwrap();
                rt.block_on(async {
                    let mut c = client(&data, &url, Some(&token), Some(&study)).await;
                    c.set_header("cohort-query-id", format!("flight-{i}"));
                    ask(&mut c, "SELECT COUNT(*) AS n FROM patients")
                        .await
                        .map(drop)
                })
            })
        })
        .collect();
    let outcomes: Vec<Result<(), tonic::Status>> =
        clients.into_iter().map(|c| c.join().unwrap()).collect();
    assert_eq!(
        outcomes.iter().filter(|o| o.is_ok()).count(),
        5,
        "min(N, K)"
    );
    for e in outcomes.iter().filter_map(|o| o.as_ref().err()) {
        assert!(
            // One wording whether the planner or the contract said no.
            e.message().starts_with(
                "query refused (privacy-budget): it costs ε = 0.2, but the study has only ε = "
            ),
            "not a budget refusal: {e:?}"
        );
    }
    assert!(server.stop().success());
    assert_eq!(
        cohort_json(&s.data, &["study", "show", &study])["remaining"],
        "ε 0"
    );
}
