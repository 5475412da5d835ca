//! The privacy invariant's mechanics on the research path, one at a time:
//! the release at a deadline that depends on public sizes only, and every
//! ending after the reservation (an overrun, a resource limit, a
//! cancellation) charged with the same data-free message. The end-to-end
//! audit (`privacy_audit.rs`) checks the observables against neighbouring
//! data; these tests check each mechanism directly, with an injected clock
//! where time matters.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use cohort_engine::deadline::{Clock, ManualClock};
use cohort_engine::research::Session;
use cohort_engine::research::query::QueryRequest;

use crate::research::{Setup, setup, study_text};
use crate::{PASSPHRASE, cohort_json, stderr};

/// A study releasing at 1000 ms plus 2 ms per consenting patient and study
/// table (two: patients and observations).
fn deadline_study() -> String {
    study_text("100", "0.5", false).replace(
        "release = \"immediate\"",
        "deadline_ms = 1000\nper_patient_us = 2000",
    )
}

fn session(s: &Setup, clock: &Arc<ManualClock>) -> (tokio::runtime::Runtime, Session) {
    let vault = s.dir.unlock(PASSPHRASE).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dynamic: Arc<dyn Clock> = clock.clone();
    let session = rt
        .block_on(Session::open(&s.dir, &vault))
        .unwrap()
        .with_clock(dynamic);
    (rt, session)
}

fn ask(sql: &str, id: &str) -> QueryRequest {
    QueryRequest {
        sql: sql.into(),
        query_id: Some(id.into()),
        ..Default::default()
    }
}

fn remaining(data: &std::path::Path, study: u64) -> String {
    cohort_json(data, &["study", "show", &study.to_string()])["remaining"]
        .as_str()
        .unwrap()
        .to_string()
}

#[test]
fn the_outcome_is_released_at_a_deadline_computed_from_public_sizes() {
    let s = setup(12);
    let (id, _) = s.approved_study(&deadline_study(), 10);
    let clock = Arc::new(ManualClock::new());
    let (rt, session) = session(&s, &clock);

    let count = "SELECT COUNT(*) AS n FROM patients";
    let joined =
        "SELECT COUNT(*) AS n FROM patients p JOIN observations o ON p.patient_id = o.patient_id";
    let explained = rt
        .block_on(session.query(
            "researcher",
            id,
            &QueryRequest {
                explain: true,
                ..ask(count, "e")
            },
        ))
        .unwrap();
    // 1000 ms + 2 ms × 10 consenting patients × 2 tables.
    assert_eq!(explained.deadline_ms, Some(1_040));
    assert!(
        explained
            .explain
            .unwrap()
            .contains("1040 ms after execution starts"),
        "EXPLAIN PRIVACY says when the outcome comes"
    );
    assert!(clock.releases().is_empty(), "EXPLAIN waits for nothing");

    let one = rt
        .block_on(session.query("researcher", id, &ask(count, "d1")))
        .unwrap();
    assert_eq!(one.deadline_ms, Some(1_040));
    let two = rt
        .block_on(session.query("researcher", id, &ask(joined, "d2")))
        .unwrap();
    assert_eq!(
        two.deadline_ms,
        Some(1_040),
        "the same for every query of the study: each loads its whole view"
    );
    assert_eq!(
        clock.releases(),
        [
            Duration::from_millis(1_040),
            Duration::from_millis(1_040 + 1_040)
        ],
        "each outcome waited for its deadline, counted from its execution's start \
         (the manual clock jumps to each deadline)"
    );
}

#[test]
fn an_overrun_is_charged_and_says_nothing_but_that() {
    let s = setup(12);
    let (id, _) = s.approved_study(&deadline_study(), 10);
    let clock = Arc::new(ManualClock::new());
    clock.overrun_every_deadline();
    let (rt, session) = session(&s, &clock);
    let before = remaining(&s.data, id);
    let e = rt
        .block_on(session.query(
            "researcher",
            id,
            &ask(
                "SELECT gender, COUNT(*) AS n FROM patients GROUP BY gender",
                "late",
            ),
        ))
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "query `late` ended without an answer and was charged ε = 0.5: once a query's cost is \
         reserved every outcome is charged, and why it ended is not disclosed"
    );
    assert_eq!(before, "ε 100");
    assert_eq!(remaining(&s.data, id), "ε 99.5", "charged");
    assert_eq!(
        clock.releases(),
        [Duration::from_millis(1_040)],
        "the failure too comes at the deadline"
    );
    // The operator's journal knows why; the researcher's replay does not.
    let conn = s.dir.connect().unwrap();
    let (state, failure): (String, String) = conn
        .query_row(
            "SELECT state, failure FROM research_queries WHERE query_id = 'late'",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!((state.as_str(), failure.as_str()), ("delivered", "overrun"));
    let again = rt
        .block_on(session.query(
            "researcher",
            id,
            &ask(
                "SELECT gender, COUNT(*) AS n FROM patients GROUP BY gender",
                "late",
            ),
        ))
        .unwrap_err();
    assert_eq!(again.to_string(), e.to_string(), "the same fixed message");
    assert_eq!(remaining(&s.data, id), "ε 99.5", "a replay is free");
    // On chain: a commitment, never a release.
    cohort_json(&s.data, &["ledger", "sync"]);
    let kinds: Vec<String> = conn
        .prepare("SELECT kind FROM ledger_budget_events ORDER BY block, log_index")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(kinds, ["reserved", "committed"]);
}

#[test]
fn a_query_past_its_memory_pool_is_charged_and_the_engine_goes_on() {
    let s = setup(20);
    let text = study_text("100", "0.5", false).replace(
        "release = \"immediate\"",
        "release = \"immediate\"\nmemory_mb = 1",
    );
    let (id, _) = s.approved_study(&text, 20);
    let clock = Arc::new(ManualClock::new());
    let (rt, session) = session(&s, &clock);
    let heavy = "SELECT COUNT(*) AS n FROM observations a JOIN observations b \
                 ON a.patient_id = b.patient_id JOIN observations c ON a.patient_id = c.patient_id";
    let e = rt
        .block_on(session.query("researcher", id, &ask(heavy, "heavy")))
        .unwrap_err();
    assert!(
        e.to_string()
            .contains("ended without an answer and was charged"),
        "{e}"
    );
    assert_eq!(remaining(&s.data, id), "ε 99.5");
    let failure: String = s
        .dir
        .connect()
        .unwrap()
        .query_row(
            "SELECT failure FROM research_queries WHERE query_id = 'heavy'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(
        failure, "error",
        "the pool's limit, an error like any other"
    );
    let light = rt
        .block_on(session.query(
            "researcher",
            id,
            &ask("SELECT COUNT(*) AS n FROM patients", "light"),
        ))
        .unwrap();
    assert!(light.answer.is_some(), "the session answers the next query");
}

/// Ctrl-C on a running query: it is charged, and told so at its deadline.
#[test]
fn a_cancelled_query_is_charged() {
    let s = setup(12);
    let (id, _) = s.approved_study(&study_text("100", "0.5", false), 10);
    let study = id.to_string();
    let mut child = Command::new(env!("CARGO_BIN_EXE_cohort"))
        .arg("--data-dir")
        .arg(&s.data)
        .args([
            "query",
            &study,
            "SELECT COUNT(*) AS n FROM patients",
            "--as",
            "researcher",
            "--query-id",
            "interrupted",
        ])
        .env("COHORT_PASSPHRASE", PASSPHRASE)
        .env("COHORT_TEST_PAUSE_AT", "executing")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr_lines = BufReader::new(child.stderr.take().unwrap()).lines();
    loop {
        match stderr_lines.next() {
            Some(Ok(line)) if line == "paused at executing" => break,
            Some(Ok(_)) => continue,
            _ => panic!("the query ended before it ran: {:?}", child.wait()),
        }
    }
    let interrupt = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(interrupt.success());
    let rest: Vec<String> = stderr_lines.map_while(Result::ok).collect();
    let status = child.wait().unwrap();
    assert!(!status.success());
    let said = rest.join("\n");
    assert!(
        said.contains("query `interrupted` ended without an answer and was charged ε = 0.5"),
        "{said}"
    );
    assert_eq!(
        remaining(&s.data, id),
        "ε 99.5",
        "a cancellation is charged"
    );
    let again = crate::cohort(
        &s.data,
        &[
            "query",
            &study,
            "SELECT COUNT(*) AS n FROM patients",
            "--as",
            "researcher",
            "--query-id",
            "interrupted",
        ],
    );
    assert!(stderr(&again).contains("was charged"), "{}", stderr(&again));
}
