//! `cohort serve` and `cohort login` end to end: a real server process on
//! loopback, a real Flight SQL client, signatures from the keystore's keys.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

use arrow::array::Int64Array;
use arrow_flight::error::FlightError;
use arrow_flight::sql::client::FlightSqlServiceClient;
use futures::TryStreamExt;
use tonic::Code;
use tonic::transport::Channel;

use crate::research::{setup, study_text};
use crate::{PASSPHRASE, assert_fails_with, cohort, cohort_env, stderr, stdout};

/// A `cohort serve` child on a free loopback port; killed when dropped.
pub(crate) struct Server {
    child: Child,
    pub(crate) url: String,
    /// Where its stderr goes: a file, not a pipe, so that a server logging
    /// more than a pipe holds never blocks on a reader that is not there.
    logs: tempfile::NamedTempFile,
}

impl Server {
    pub(crate) fn start(data: &Path) -> Server {
        Server::start_env(data, &[])
    }

    /// With these environment variables (`COHORT_<SECTION>_<KEY>` settings).
    pub(crate) fn start_env(data: &Path, env: &[(&str, &str)]) -> Server {
        let logs = tempfile::NamedTempFile::new().unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_cohort"))
            .arg("--data-dir")
            .arg(data)
            .args(["serve", "--listen", "127.0.0.1:0"])
            .env("COHORT_PASSPHRASE", PASSPHRASE)
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(logs.reopen().unwrap())
            .spawn()
            .expect("cohort serve starts");
        // The server prints one line once it accepts connections.
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let url = line
            .split_whitespace()
            .find(|w| w.starts_with("http://") || w.starts_with("https://"))
            .unwrap_or_else(|| panic!("no address in {line:?}"))
            .to_string();
        Server { child, url, logs }
    }

    /// Its process id.
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL, and waits for it to be gone.
    pub(crate) fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then the exit status.
    pub(crate) fn stop(self) -> std::process::ExitStatus {
        self.stop_with_logs().0
    }

    /// SIGTERM, then the exit status and everything the server logged.
    pub(crate) fn stop_with_logs(mut self) -> (std::process::ExitStatus, String) {
        let killed = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(killed.success());
        let status = self.child.wait().unwrap();
        (status, std::fs::read_to_string(self.logs.path()).unwrap())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
    }
}

/// Signs `actor` in with its key and a fresh TOTP code (enrolled on first
/// use): the server asks every account for one while `[auth]
/// second_factor` is on. The token.
pub(crate) fn login(data: &Path, server: &Server, actor: &str) -> String {
    let code = totp_code(data, actor);
    let args = [
        "login",
        "--as",
        actor,
        "--server",
        &server.url,
        "--totp",
        &code,
    ];
    let o = cohort(data, &args);
    assert!(o.status.success(), "login as {actor}: {}", stderr(&o));
    stdout(&o).trim().to_string()
}

pub(crate) fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// The TOTP secrets the tests enrolled, by data directory and account,
/// with the last time step each signed in with.
type Factors = std::collections::BTreeMap<(std::path::PathBuf, String), (String, u64)>;
static FACTORS: std::sync::Mutex<Factors> = std::sync::Mutex::new(Factors::new());

/// A TOTP code of `actor` the server has not seen yet (enrolling its
/// secret on first use). The server accepts each 30-second step once, and
/// the steps next to the current one: a third sign-in of one account
/// within a step waits for the clock (the server's real clock, which a
/// test cannot move).
pub(crate) fn totp_code(data: &Path, actor: &str) -> String {
    let key = (data.to_path_buf(), actor.to_string());
    if !FACTORS.lock().unwrap().contains_key(&key) {
        enroll_totp(data, actor);
    }
    let mut factors = FACTORS.lock().unwrap();
    let (secret, last) = factors.get_mut(&key).unwrap();
    let now = unix_now() / 30;
    let step = (*last + 1).max(now);
    if step > now + 1 {
        let wait = (step - 1) * 30 - unix_now();
        std::thread::sleep(std::time::Duration::from_secs(wait + 1));
    }
    *last = step;
    cohort_engine::keys::second_factor::code_for(secret, step * 30).unwrap()
}

/// Enrolls `actor`'s second factor (again, if it had one); its secret
/// (base32), which [`totp_code`] then uses.
pub(crate) fn enroll_totp(data: &Path, actor: &str) -> String {
    let mut args = vec!["account", "totp", actor];
    let key = (data.to_path_buf(), actor.to_string());
    if FACTORS.lock().unwrap().contains_key(&key) {
        args.push("--replace");
    }
    let e = crate::cohort_json(data, &args);
    let secret = e["secret"].as_str().unwrap().to_string();
    // A new secret starts from no step used.
    FACTORS.lock().unwrap().insert(key, (secret.clone(), 0));
    secret
}

/// A TLS endpoint trusting the certificate the server generated in `data`.
pub(crate) fn endpoint(data: &Path, url: &str) -> tonic::transport::Endpoint {
    let pem = std::fs::read(data.join("server/tls/cert.pem")).unwrap();
    tonic::transport::Endpoint::from_shared(url.to_string())
        .unwrap()
        .tls_config(
            tonic::transport::ClientTlsConfig::new()
                .ca_certificate(tonic::transport::Certificate::from_pem(pem)),
        )
        .unwrap()
}

pub(crate) async fn client(
    data: &Path,
    url: &str,
    token: Option<&str>,
    study: Option<&str>,
) -> FlightSqlServiceClient<Channel> {
    let channel = endpoint(data, url).connect().await.unwrap();
    let mut c = FlightSqlServiceClient::new(channel);
    if let Some(t) = token {
        c.set_token(t.to_string());
    }
    if let Some(s) = study {
        c.set_header("cohort-study", s);
    }
    c
}

/// Runs `sql`; the answer's batches, or the server's status.
pub(crate) async fn ask(
    c: &mut FlightSqlServiceClient<Channel>,
    sql: &str,
) -> Result<Vec<arrow::array::RecordBatch>, tonic::Status> {
    let as_status = |e: FlightError| match e {
        FlightError::Tonic(s) => *s,
        other => tonic::Status::unknown(other.to_string()),
    };
    let info = c.execute(sql.to_string(), None).await.map_err(as_status)?;
    let ticket = info.endpoint[0].ticket.clone().unwrap();
    c.do_get(ticket)
        .await
        .map_err(as_status)?
        .try_collect()
        .await
        .map_err(as_status)
}

pub(crate) fn remaining(data: &Path, study: u64) -> String {
    let show = crate::cohort_json(data, &["study", "show", &study.to_string()]);
    show["remaining"].as_str().unwrap().to_string()
}

#[test]
fn flight_sql_answers_signed_in_researchers_and_refuses_everyone_else() {
    let s = setup(30);
    let (id, _) = s.approved_study(&study_text("3", "0.5", false), 20);
    let study = id.to_string();
    let server = Server::start(&s.data);
    assert!(
        server.url.starts_with("https://"),
        "TLS by default: {}",
        server.url
    );
    let token = login(&s.data, &server, "researcher");
    assert_eq!(token.len(), 64, "a 32-byte hex token: {token}");
    let steward = login(&s.data, &server, "steward-1");
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        // The researcher's question is answered, debited and streamed as Arrow.
        let before = remaining(&s.data, id);
        let mut c = client(&s.data, &server.url, Some(&token), Some(&study)).await;
        let batches = ask(&mut c, "SELECT COUNT(*) AS n FROM patients")
            .await
            .unwrap();
        let n = batches[0]
            .column_by_name("n")
            .unwrap()
            .as_any()
            .downcast_ref::<Int64Array>()
            .expect("a count arrives as Int64")
            .value(0);
        assert!((0..=60).contains(&n), "a noisy count of 20 patients: {n}");
        // The schema carries each release's 95% error, the cost and what is left.
        let meta = batches[0].schema().metadata().clone();
        let releases: serde_json::Value = serde_json::from_str(&meta["cohort.releases"]).unwrap();
        assert_eq!(
            releases[0]["values"][0].as_f64(),
            Some(n as f64),
            "the release is the answer's value: {releases}"
        );
        assert!(
            releases[0]["error_95"][0].as_f64().unwrap() > 0.0,
            "{releases}"
        );
        assert!(meta.contains_key("cohort.cost") && meta.contains_key("cohort.remaining"));
        let after = remaining(&s.data, id);
        assert_ne!(before, after, "the answer was debited");

        // EXPLAIN PRIVACY arrives as a plan column and spends nothing.
        let plan = ask(&mut c, "EXPLAIN PRIVACY SELECT COUNT(*) AS n FROM patients")
            .await
            .unwrap();
        assert_eq!(plan[0].schema().field(0).name(), "plan");
        assert_eq!(remaining(&s.data, id), after);

        // A row-level query is refused with the planner's reason, and spends nothing.
        let refused = ask(&mut c, "SELECT patient_id FROM patients")
            .await
            .unwrap_err();
        assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
        assert!(!refused.message().is_empty());
        assert_eq!(
            remaining(&s.data, id),
            after,
            "a refused query spends nothing"
        );

        // No token, a forged one, no study: refused before anything runs.
        let mut anonymous = client(&s.data, &server.url, None, Some(&study)).await;
        let e = ask(&mut anonymous, "SELECT COUNT(*) AS n FROM patients")
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
        let forged = "ab".repeat(32);
        let mut forger = client(&s.data, &server.url, Some(&forged), Some(&study)).await;
        let e = ask(&mut forger, "SELECT COUNT(*) AS n FROM patients")
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
        assert!(e.message().contains("not one this server issued"), "{e:?}");
        let mut nowhere = client(&s.data, &server.url, Some(&token), None).await;
        let e = ask(&mut nowhere, "SELECT COUNT(*) AS n FROM patients")
            .await
            .unwrap_err();
        assert!(e.message().contains("cohort-study"), "{e:?}");

        // A signed-in steward is not the study's researcher.
        let mut other = client(&s.data, &server.url, Some(&steward), Some(&study)).await;
        let e = ask(&mut other, "SELECT COUNT(*) AS n FROM patients")
            .await
            .unwrap_err();
        assert!(e.message().contains("researcher"), "{e:?}");
        assert_eq!(
            remaining(&s.data, id),
            after,
            "refused callers spend nothing"
        );

        // A ticket is fetched once, by the account that asked.
        let info = c
            .execute("SELECT COUNT(*) AS n FROM patients".into(), None)
            .await
            .unwrap();
        let ticket = info.endpoint[0].ticket.clone().unwrap();
        let stolen = other.do_get(ticket.clone()).await;
        let stolen: Result<Vec<_>, _> = match stolen {
            Ok(stream) => stream.try_collect().await,
            Err(e) => Err(e),
        };
        assert!(stolen.is_err(), "another account fetched the answer");
        let mine: Vec<_> = c
            .do_get(ticket.clone())
            .await
            .unwrap()
            .try_collect()
            .await
            .unwrap();
        assert_eq!(mine[0].num_rows(), 1);
        let again: Result<Vec<_>, _> = match c.do_get(ticket).await {
            Ok(stream) => stream.try_collect().await,
            Err(e) => Err(e),
        };
        assert!(again.is_err(), "an answer was fetched twice");
    });
    assert!(server.stop().success(), "SIGTERM stops the server cleanly");
}

#[test]
fn tls_is_on_by_default_and_plaintext_only_on_loopback() {
    let s = setup(5);
    let server = Server::start(&s.data);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        // A client that does not trust the server's certificate cannot connect.
        let untrusting = tonic::transport::Endpoint::from_shared(server.url.clone())
            .unwrap()
            .tls_config(tonic::transport::ClientTlsConfig::new())
            .unwrap()
            .connect()
            .await;
        assert!(
            untrusting.is_err(),
            "connected without trusting the certificate"
        );
        // Plain HTTP/2 to the TLS port gets nothing either.
        let plain = server.url.replace("https://", "http://");
        let channel = tonic::transport::Endpoint::from_shared(plain)
            .unwrap()
            .connect_lazy();
        let mut c = FlightSqlServiceClient::new(channel);
        assert!(c.execute("SELECT 1".into(), None).await.is_err());
    });
    let wide = cohort(&s.data, &["serve", "--listen", "0.0.0.0:0", "--plaintext"]);
    assert_fails_with(&wide, "only on a loopback address");
}

#[test]
fn login_names_what_is_wrong() {
    let s = setup(5);
    let server = Server::start(&s.data);
    let unknown = cohort(
        &s.data,
        &["login", "--as", "nobody", "--server", &server.url],
    );
    assert_fails_with(&unknown, "nobody");
    let nowhere = cohort(
        &s.data,
        &[
            "login",
            "--as",
            "researcher",
            "--server",
            "https://127.0.0.1:1",
        ],
    );
    assert_fails_with(&nowhere, "cannot reach");
    let garbage = cohort(
        &s.data,
        &["login", "--as", "researcher", "--server", "not a url"],
    );
    assert_fails_with(&garbage, "not a server address");
}

#[test]
fn every_account_signs_in_with_a_second_factor_used_once() {
    let s = setup(5);
    let server = Server::start(&s.data);
    let login_with = |actor: &str, code: Option<&str>| {
        let mut args = vec!["login", "--as", actor, "--server", &server.url];
        if let Some(c) = code {
            args.extend(["--totp", c]);
        }
        cohort(&s.data, &args)
    };
    // Not enrolled: refused, naming the command that enrolls.
    assert_fails_with(&login_with("steward-1", None), "cohort account totp");
    let secret = enroll_totp(&s.data, "steward-1");
    // Enrolled, but no code, or a wrong one.
    assert_fails_with(&login_with("steward-1", None), "--totp");
    let code = cohort_engine::keys::second_factor::code_for(&secret, unix_now()).unwrap();
    let wrong = format!("{:06}", (code.parse::<u32>().unwrap() + 1) % 1_000_000);
    assert_fails_with(&login_with("steward-1", Some(&wrong)), "wrong or expired");
    // The right code signs in once; replayed, it is refused.
    let ok = login_with("steward-1", Some(&code));
    assert!(ok.status.success(), "{}", stderr(&ok));
    assert_eq!(stdout(&ok).trim().len(), 64);
    assert_fails_with(&login_with("steward-1", Some(&code)), "already used");
    // Every account needs it, whatever its roles: a researcher sends
    // escrow, an account without a role may read a patient's records as
    // their delegate.
    for who in ["researcher", "outsider"] {
        if who == "outsider" {
            crate::cohort_json(&s.data, &["account", "new", who]);
        }
        assert_fails_with(&login_with(who, None), "cohort account totp");
        let secret = enroll_totp(&s.data, who);
        assert_fails_with(&login_with(who, None), "--totp");
        let code = cohort_engine::keys::second_factor::code_for(&secret, unix_now()).unwrap();
        assert!(login_with(who, Some(&code)).status.success(), "{who}");
    }
    // Each refusal is audited.
    let log = crate::cohort_json(&s.data, &["audit", "log", "--limit", "500"]);
    let refused: Vec<&serde_json::Value> = log
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "auth.refused")
        .collect();
    // steward-1: not enrolled, no code, a wrong code, a replayed code; the
    // others: not enrolled, no code.
    assert_eq!(refused.len(), 4 + 2 * 2, "{refused:?}");
    assert!(
        refused
            .iter()
            .any(|e| e["detail"].to_string().contains("wrong or expired"))
    );
    // Enrolling again without --replace is refused.
    let again = cohort(&s.data, &["account", "totp", "steward-1"]);
    assert_fails_with(&again, "--replace");
    // A closed test deployment may turn the factor off.
    let (status, _) = server.stop_with_logs();
    assert!(status.success());
    let lax = Server::start_env(&s.data, &[("COHORT_AUTH_SECOND_FACTOR", "false")]);
    let o = cohort(
        &s.data,
        &["login", "--as", "steward-2", "--server", &lax.url],
    );
    assert!(o.status.success(), "{}", stderr(&o));
}

#[test]
fn configuration_file_environment_and_flags_in_that_order() {
    let s = setup(5);
    let file = s.data.join("cohort.toml");
    std::fs::write(
        &file,
        "[server]\nlisten = \"127.0.0.1:7001\"\nshutdown_grace_secs = 3\n[auth]\ntoken_ttl_secs = 60\n",
    )
    .unwrap();
    let print = |args: &[&str], env: &[(&str, &str)]| {
        let mut all = vec!["serve", "--print-config"];
        all.extend(args);
        let o = cohort_env(&s.data, &all, env);
        assert!(o.status.success(), "{}", stderr(&o));
        toml::from_str::<toml::Table>(&stdout(&o)).unwrap()
    };
    // The data directory's cohort.toml is read by default.
    let c = print(&[], &[]);
    assert_eq!(c["server"]["listen"].as_str(), Some("127.0.0.1:7001"));
    assert_eq!(c["server"]["shutdown_grace_secs"].as_integer(), Some(3));
    assert_eq!(c["auth"]["token_ttl_secs"].as_integer(), Some(60));
    assert_eq!(c["tls"]["mode"].as_str(), Some("self-signed"));
    // The environment overrides the file; a flag overrides both.
    let env = [
        ("COHORT_SERVER_LISTEN", "127.0.0.1:7002"),
        ("COHORT_AUTH_TOKEN_TTL_SECS", "30"),
        ("COHORT_LOG_FORMAT", "json"),
    ];
    let c = print(&[], &env);
    assert_eq!(c["server"]["listen"].as_str(), Some("127.0.0.1:7002"));
    assert_eq!(c["auth"]["token_ttl_secs"].as_integer(), Some(30));
    assert_eq!(c["log"]["format"].as_str(), Some("json"));
    let c = print(&["--listen", "127.0.0.1:7003", "--plaintext"], &env);
    assert_eq!(c["server"]["listen"].as_str(), Some("127.0.0.1:7003"));
    assert_eq!(c["tls"]["mode"].as_str(), Some("off"));
    // Bad settings name where they came from.
    let o = cohort_env(
        &s.data,
        &["serve", "--print-config"],
        &[("COHORT_SERVER_LISTEN", "nowhere")],
    );
    assert_fails_with(&o, "COHORT_SERVER_LISTEN");
    std::fs::write(&file, "[tls]\nmdoe = \"off\"\n").unwrap();
    assert_fails_with(&cohort(&s.data, &["serve", "--print-config"]), "mdoe");
    let o = cohort(
        &s.data,
        &[
            "serve",
            "--print-config",
            "--config",
            "/nonexistent/cohort.toml",
        ],
    );
    assert_fails_with(&o, "/nonexistent/cohort.toml");
}

#[test]
fn health_answers_and_logs_are_structured_without_the_question() {
    let s = setup(20);
    let (id, _) = s.approved_study(&study_text("3", "0.5", false), 20);
    let server = Server::start_env(&s.data, &[("COHORT_LOG_FORMAT", "json")]);
    let health = crate::cohort_json(&s.data, &["health", "--server", &server.url]);
    assert_eq!(health["status"], "SERVING");
    let token = login(&s.data, &server, "researcher");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let marker = "zz-marker-literal";
    rt.block_on(async {
        let mut c = client(&s.data, &server.url, Some(&token), Some(&id.to_string())).await;
        // A refused question whose text carries a marker: the marker must
        // not reach the logs.
        let sql = format!("SELECT patient_id FROM patients WHERE patient_id = '{marker}'");
        assert!(ask(&mut c, &sql).await.is_err());
        ask(&mut c, "SELECT COUNT(*) AS n FROM patients")
            .await
            .unwrap();
    });
    let url = server.url.clone();
    let (status, logs) = server.stop_with_logs();
    assert!(status.success());
    let events: Vec<serde_json::Value> = logs
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let messages: Vec<&str> = events
        .iter()
        .filter_map(|e| e["fields"]["message"].as_str())
        .collect();
    for wanted in [
        "serving",
        "signed in",
        "refused",
        "answered",
        "stopping: no new calls; finishing the calls in flight",
    ] {
        assert!(
            messages.contains(&wanted),
            "no {wanted:?} event in {messages:?}"
        );
    }
    assert!(
        !logs.contains(marker),
        "the question reached the logs: {logs}"
    );
    assert!(!logs.contains(&token), "a token reached the logs");
    // Stopped: the health check cannot reach it, and says so.
    assert_fails_with(
        &cohort(&s.data, &["health", "--server", &url]),
        "cannot reach",
    );
}

/// A gRPC channel to the server (TLS, trusting its generated certificate).
pub(crate) async fn channel(data: &Path, url: &str) -> Channel {
    endpoint(data, url).connect().await.unwrap()
}

/// `request` with `authorization: Bearer <token>`.
pub(crate) fn authed<T>(token: &str, message: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(message);
    r.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    r
}

#[test]
fn the_study_api_over_grpc_does_what_the_cli_does() {
    use cohort_server::api::pb::{
        self, compensation_client::CompensationClient, consents_client::ConsentsClient,
        studies_client::StudiesClient,
    };
    let s = setup(10);
    let pid = s.patient_ids[0].clone();
    crate::cohort_json(&s.data, &["account", "new", "patient-0", "--patient", &pid]);
    let server = Server::start(&s.data);
    let researcher = login(&s.data, &server, "researcher");
    let patient = login(&s.data, &server, "patient-0");
    let stewards: Vec<String> = ["steward-1", "steward-2"]
        .iter()
        .map(|name| login(&s.data, &server, name))
        .collect();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let ch = channel(&s.data, &server.url).await;
        let mut studies = StudiesClient::new(ch.clone());
        let mut consents = ConsentsClient::new(ch.clone());
        let mut pay = CompensationClient::new(ch);

        // Without a token nothing is answered.
        let e = studies.list(pb::ListStudiesRequest {}).await.unwrap_err();
        assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");

        // A malformed study file is refused with the parser's reason.
        let e = studies
            .propose(authed(
                &researcher,
                pb::ProposeRequest {
                    study_toml: "[study\n".into(),
                },
            ))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
        assert!(e.message().contains("the study file"), "{e:?}");

        // The researcher proposes; the study reads as the CLI reads it.
        let p = studies
            .propose(authed(
                &researcher,
                pb::ProposeRequest {
                    study_toml: study_text("3", "0.5", false),
                },
            ))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(p.title, "Test study");
        let id = p.study_id;
        let shown = studies
            .show(authed(&researcher, pb::StudyRef { study_id: id }))
            .await
            .unwrap()
            .into_inner();
        let cli = crate::cohort_json(&s.data, &["study", "show", &id.to_string()]);
        assert_eq!(shown.status, cli["status"].as_str().unwrap());
        assert_eq!(shown.budget, cli["budget"].as_str().unwrap());
        assert_eq!(shown.remaining.as_deref(), cli["remaining"].as_str());
        assert_eq!(shown.approvals, 0);

        // The researcher is no steward: the ledger refuses, nothing changes.
        let e = studies
            .approve(authed(&researcher, pb::StudyRef { study_id: id }))
            .await
            .unwrap_err();
        assert_ne!(e.code(), Code::Ok);
        assert!(!e.message().is_empty());
        let cli = crate::cohort_json(&s.data, &["study", "show", &id.to_string()]);
        assert_eq!(cli["approvals"], 0);

        // Two stewards approve.
        let a1 = studies
            .approve(authed(&stewards[0], pb::StudyRef { study_id: id }))
            .await
            .unwrap()
            .into_inner();
        assert!(!a1.approved);
        let a2 = studies
            .approve(authed(&stewards[1], pb::StudyRef { study_id: id }))
            .await
            .unwrap()
            .into_inner();
        assert!(a2.approved, "{a2:?}");
        let listed = studies
            .list(authed(&patient, pb::ListStudiesRequest {}))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(listed.studies.len(), 1);
        assert_eq!(listed.studies[0].status, "approved");

        // The patient consents, sees it, withdraws; the CLI agrees.
        let e = consents
            .give(authed(
                &patient,
                pb::GiveConsentRequest {
                    study_id: id,
                    days: 0,
                    purposes: vec![],
                },
            ))
            .await
            .unwrap_err();
        assert!(e.message().contains("days"), "{e:?}");
        let given = consents
            .give(authed(
                &patient,
                pb::GiveConsentRequest {
                    study_id: id,
                    days: 30,
                    purposes: vec![],
                },
            ))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(given.account, "patient-0");
        let mine = consents
            .list(authed(&patient, pb::ListConsentsRequest {}))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(mine.consents.len(), 1);
        assert!(mine.consents[0].active);
        let cli = crate::cohort_json(&s.data, &["study", "show", &id.to_string()]);
        assert_eq!(cli["consenting"], 1);
        consents
            .withdraw(authed(&patient, pb::StudyRef { study_id: id }))
            .await
            .unwrap();
        let mine = consents
            .list(authed(&patient, pb::ListConsentsRequest {}))
            .await
            .unwrap()
            .into_inner();
        assert!(!mine.consents[0].active);
        let cli = crate::cohort_json(&s.data, &["consent", "list", "--as", "patient-0"]);
        assert_eq!(cli[0]["active"], false);

        // Compensation: nothing earned yet, nothing to claim.
        let earned = pay
            .show(authed(
                &patient,
                pb::CompensationRequest { study_id: Some(id) },
            ))
            .await
            .unwrap()
            .into_inner();
        assert!(earned.shares.is_empty());

        // No microdata allowed in this study: no extract, and k below 2 is refused first.
        let e = studies
            .release(authed(
                &researcher,
                pb::ReleaseRequest {
                    study_id: id,
                    k: 5,
                    l: None,
                },
            ))
            .await
            .unwrap_err();
        assert!(e.message().contains("microdata"), "{e:?}");
        let e = studies
            .release(authed(
                &researcher,
                pb::ReleaseRequest {
                    study_id: id,
                    k: 1,
                    l: None,
                },
            ))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");

        // An unknown study is NotFound, with the research path's message.
        let e = studies
            .show(authed(&researcher, pb::StudyRef { study_id: 999 }))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::NotFound, "{e:?}");
        assert!(e.message().contains("999"), "{e:?}");
    });
}

#[test]
fn stewards_read_the_audit_log_and_patients_only_their_own_access_log() {
    use cohort_server::api::pb::{self, audit_client::AuditClient, records_client::RecordsClient};
    let s = setup(6);
    let (mine, other) = (s.patient_ids[0].clone(), s.patient_ids[1].clone());
    crate::cohort_json(
        &s.data,
        &["account", "new", "patient-0", "--patient", &mine],
    );
    crate::cohort_json(
        &s.data,
        &["account", "new", "patient-1", "--patient", &other],
    );
    crate::research::provider_with_grants(&s.data, "dr-who", &["patient-0", "patient-1"]);
    // The records of each patient, by id, from the vault.
    let conn = s.dir.connect().unwrap();
    let records_of = |pid: &str| -> Vec<String> {
        conn.prepare("SELECT DISTINCT record_id FROM records WHERE patient_id = ?1")
            .unwrap()
            .query_map([pid], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    };
    let (my_records, other_records) = (records_of(&mine), records_of(&other));
    assert!(!my_records.is_empty() && !other_records.is_empty());
    // A provider reads one record of each patient (audited reads), before
    // the server starts: it owns the chain, and a read is a transaction.
    for record in [&my_records[0], &other_records[0]] {
        let o = cohort(
            &s.data,
            &[
                "records",
                "show",
                record,
                "--as",
                "dr-who",
                "--purpose",
                "treatment",
            ],
        );
        assert!(o.status.success(), "{}", stderr(&o));
    }
    let server = Server::start_env(&s.data, &[("COHORT_AUTH_SECOND_FACTOR", "false")]);
    let steward = login(&s.data, &server, "steward-1");
    let researcher = login(&s.data, &server, "researcher");
    let patient = login(&s.data, &server, "patient-0");
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let ch = channel(&s.data, &server.url).await;
        let mut audit = AuditClient::new(ch.clone());
        let mut records = RecordsClient::new(ch);

        let log = audit
            .log(authed(
                &steward,
                pb::AuditLogRequest {
                    limit: 2,
                    target: None,
                },
            ))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(log.entries.len(), 2, "the limit holds");
        // The sign-ins came after the provider's reads (the server owns the
        // chain, so the reads ran before it started): the newest entry is
        // the patient's sign-in, and the reads are just before.
        assert_eq!(
            log.entries[1].action, "auth.sign_in",
            "the newest entry last"
        );
        let wider = audit
            .log(authed(
                &steward,
                pb::AuditLogRequest {
                    limit: 20,
                    target: None,
                },
            ))
            .await
            .unwrap()
            .into_inner();
        assert!(
            wider
                .entries
                .iter()
                .any(|e| e.action == "read" && e.target == other_records[0]),
            "{wider:?}"
        );
        assert!(
            log.entries.windows(2).all(|w| w[0].seq < w[1].seq),
            "newest last"
        );
        let v = audit
            .verify(authed(&steward, pb::VerifyAuditRequest {}))
            .await
            .unwrap()
            .into_inner();
        assert!(v.intact);
        let cli = crate::cohort_json(&s.data, &["audit", "verify"]);
        assert_eq!(v.head, cli["head"].as_str().unwrap());
        let e = audit
            .log(authed(
                &steward,
                pb::AuditLogRequest {
                    limit: 20_000,
                    target: None,
                },
            ))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");

        // Neither a researcher nor a patient reads the whole log.
        for token in [&researcher, &patient] {
            let e = audit
                .log(authed(
                    token,
                    pb::AuditLogRequest {
                        limit: 5,
                        target: None,
                    },
                ))
                .await
                .unwrap_err();
            assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
            assert!(e.message().contains("audit log"), "{e:?}");
        }

        // The patient sees the entries about their own records, and only those.
        let own = records
            .access_log(authed(&patient, pb::AccessLogRequest { limit: 0 }))
            .await
            .unwrap()
            .into_inner();
        assert!(
            own.entries
                .iter()
                .any(|e| e.action == "read" && e.actor == "dr-who" && e.target == my_records[0]),
            "the provider's read is not in {own:?}"
        );
        for e in &own.entries {
            assert!(
                my_records.contains(&e.target) || e.target == format!("Patient/{mine}"),
                "an entry about someone else: {e:?}"
            );
            assert!(!other_records.contains(&e.target));
        }
        // An account linked to no patient has no access log.
        let e = records
            .access_log(authed(&researcher, pb::AccessLogRequest { limit: 0 }))
            .await
            .unwrap_err();
        assert!(e.message().contains("not linked to a patient"), "{e:?}");
    });
}
