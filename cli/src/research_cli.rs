//! The research path's commands: studies, consent, budgeted queries,
//! microdata releases and compensation, each acting as the `--as` account.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::Subcommand;
use cohort_engine::records::vault::Vault;
use cohort_engine::research::query::{QueryOutcome, QueryRequest};
use cohort_engine::research::{Session, StudyFile, Viewer};
use cohort_engine::{DataDir, keys::accounts};

use super::{Cli, QueryArgs, emit, query_options, render_table, runtime, short, unlock};

/// The vault, the session and the runtime the research commands run on;
/// a command that only `reads` opens the chain beside its owner (a running
/// server included) rather than as its owner.
fn open(
    cli: &Cli,
    dir: &DataDir,
    reads: bool,
) -> anyhow::Result<(Vault, Session, tokio::runtime::Runtime)> {
    let vault = unlock(cli, dir, None)?;
    let rt = runtime()?;
    let session = if reads {
        rt.block_on(Session::open_reader(dir, &vault))?
    } else {
        rt.block_on(Session::open(dir, &vault))?
    };
    Ok((vault, session, rt))
}

fn actor(cli: &Cli, vault: &Vault) -> anyhow::Result<cohort_ledger_bridge::Account> {
    Ok(accounts::get(vault.conn(), vault.keys(), &cli.actor)?)
}

pub(crate) fn study(cli: &Cli, dir: &DataDir, cmd: &StudyCmd) -> anyhow::Result<ExitCode> {
    let reads = matches!(cmd, StudyCmd::List | StudyCmd::Show { .. });
    let (vault, session, rt) = open(cli, dir, reads)?;
    match cmd {
        StudyCmd::Propose { file } => {
            let text = std::fs::read_to_string(file)
                .with_context(|| format!("reading the study file {}", file.display()))?;
            let parsed = StudyFile::parse(&text).with_context(|| format!("{}", file.display()))?;
            let researcher = actor(cli, &vault)?;
            let p = rt.block_on(session.propose(vault.conn(), &researcher, &parsed))?;
            emit(cli, &p, || {
                format!(
                    "proposed study {} \"{}\" with {} escrow; scope hash {}\n\
                     stewards approve it with `cohort study approve {} --as <steward>`",
                    p.study_id, p.title, p.escrow, p.scope_hash, p.study_id
                )
            });
        }
        StudyCmd::Approve { study } => {
            let steward = actor(cli, &vault)?;
            let a = rt.block_on(session.approve(vault.conn(), &steward, *study))?;
            emit(cli, &a, || {
                let mut s = format!(
                    "study {}: {} of {} approvals",
                    a.study_id, a.approvals, a.required
                );
                if let Some(n) = a.view_patients {
                    s.push_str(&format!(
                        "; approved, its view holds the {n} consenting patient(s)"
                    ));
                }
                s
            });
        }
        StudyCmd::List => {
            let list = rt.block_on(session.list(vault.conn(), Viewer::Operator))?;
            emit(cli, &list, || {
                if list.is_empty() {
                    return "no studies yet (`cohort study propose FILE --as <researcher>`)".into();
                }
                list.iter()
                    .map(|s| {
                        format!(
                            "{:>4}  {:<9} {:<40} {} consenting{}",
                            s.study_id,
                            s.status,
                            s.title,
                            s.consenting,
                            s.books.as_ref().map_or(String::new(), |b| format!(
                                ", remaining {}, {} queries",
                                b.remaining, b.queries
                            ))
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("\n")
            });
        }
        StudyCmd::Show { study } => {
            let s = rt.block_on(session.show(vault.conn(), *study, Viewer::Operator))?;
            emit(cli, &s, || {
                let books = s.books.as_ref().map_or(String::new(), |b| {
                    format!(
                        "\n  remaining   {}\n  escrow      {} unallocated, {} owed to patients\n  \
                         answered    {} quer(ies), {} extract(s) released",
                        b.remaining, b.escrow, b.owed, b.queries, b.releases
                    )
                });
                format!(
                    "study {} \"{}\" ({})\n  purpose     {}\n  approvals   {}\n  budget      {}\n  \
                     consenting  {} patient(s){}{}",
                    s.study_id,
                    s.title,
                    s.status,
                    s.purpose,
                    s.approvals,
                    s.budget,
                    s.consenting,
                    books,
                    if s.microdata { "" } else { "\n  no microdata" }
                )
            });
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub(crate) fn consent(cli: &Cli, dir: &DataDir, cmd: &ConsentCmd) -> anyhow::Result<ExitCode> {
    let (vault, session, rt) = open(cli, dir, matches!(cmd, ConsentCmd::List))?;
    let patient = actor(cli, &vault)?;
    match cmd {
        ConsentCmd::Give {
            study,
            days,
            purposes,
        } => {
            let purposes = (!purposes.is_empty()).then_some(purposes.as_slice());
            let c =
                rt.block_on(session.consent(vault.conn(), &patient, *study, purposes, *days))?;
            emit(cli, &c, || {
                format!(
                    "{} consented to study {} ({})",
                    c.account, c.study_id, c.tx_hash
                )
            });
        }
        ConsentCmd::Withdraw { study } => {
            let c = rt.block_on(session.withdraw(vault.conn(), &patient, *study))?;
            emit(cli, &c, || {
                format!(
                    "{} withdrew from study {}: later queries leave their records out ({})",
                    c.account, c.study_id, c.tx_hash
                )
            });
        }
        ConsentCmd::List => {
            let list = rt.block_on(session.consents_of(vault.conn(), patient.address()))?;
            emit(cli, &list, || {
                if list.is_empty() {
                    return format!("{} has no consents", patient.name());
                }
                list.iter()
                    .map(|c| {
                        format!(
                            "study {:>4}  {:<9} {:<40} purposes {} until {}",
                            c.study_id,
                            if c.active { "active" } else { "withdrawn" },
                            c.title.as_deref().unwrap_or("(not proposed here)"),
                            c.purposes.join(","),
                            c.expires_at
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("\n")
            });
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub(crate) fn research_query(
    cli: &Cli,
    dir: &DataDir,
    id: u64,
    a: &QueryArgs,
) -> anyhow::Result<ExitCode> {
    if a.budget.is_some() {
        anyhow::bail!("--budget is for policy files; a study's budget is on the ledger");
    }
    let options = query_options(a)?;
    let request = QueryRequest {
        sql: crate::dp_cli::query_sql(a)?,
        query_id: a.query_id.clone(),
        epsilon: options.epsilon,
        rho: options.rho,
        delta: options.delta,
        weights: options.weights,
        explain: a.explain,
    };
    let remote = a.engine.remote()?;
    let (_vault, session, rt) = open(cli, dir, false)?;
    let session = match remote {
        Some(remote) => session.with_remote_engine(remote),
        None => session,
    };
    let session = std::sync::Arc::new(session);
    let finished = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let progress = (!cli.json).then(|| {
        let (session, finished) = (session.clone(), finished.clone());
        std::thread::spawn(move || show_progress(&session, &finished))
    });
    // Ctrl-C cancels the query: once its cost is reserved it is charged
    // (every ending is), and the fixed message comes at its deadline. A
    // second Ctrl-C exits; the next command records the query as charged.
    let cancel = std::sync::Arc::clone(&session);
    rt.spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            eprintln!(
                "cancelling: the query is charged if its cost was reserved, and ends at its deadline; Ctrl-C again to exit"
            );
            cancel.cancel();
            if tokio::signal::ctrl_c().await.is_ok() {
                std::process::exit(130);
            }
        }
    });
    let outcome = rt.block_on(session.query(&cli.actor, id, &request));
    finished.store(true, std::sync::atomic::Ordering::SeqCst);
    if let Some(p) = progress {
        let _ = p.join();
    }
    let outcome = outcome?;
    emit(cli, &outcome, || outcome_text(&outcome));
    Ok(ExitCode::SUCCESS)
}

/// Draws the running homomorphic job's progress (records done of a total
/// that is a public size: the padded work) on the terminal until the query
/// ends.
fn show_progress(session: &Session, finished: &std::sync::atomic::AtomicBool) {
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "encrypted aggregate {bar:30} {pos}/{len} records, ETA {eta}",
        )
        .expect("a valid template"),
    );
    while !finished.load(std::sync::atomic::Ordering::SeqCst) {
        let (done, total) = session.job().progress();
        if total > 0 {
            bar.set_length(total as u64);
            bar.set_position(done as u64);
        }
        std::thread::park_timeout(std::time::Duration::from_millis(200));
    }
    bar.finish_and_clear();
}

pub(crate) fn encrypt_field(
    cli: &Cli,
    dir: &DataDir,
    study: u64,
    column: &str,
    value: i64,
) -> anyhow::Result<ExitCode> {
    let (vault, session, rt) = open(cli, dir, false)?;
    let patient = actor(cli, &vault)?;
    let s = rt.block_on(session.encrypt_field(vault.conn(), &patient, study, column, value))?;
    emit(cli, &s, || {
        format!(
            "encrypted {} for study {} ({} layer): sent {} bytes with its range proof ({:.3} s), proof checked and {} bytes kept ({:.3} s)",
            s.column,
            s.study_id,
            s.layer,
            s.submitted_bytes,
            s.encrypt_seconds,
            s.stored_bytes,
            s.verify_seconds
        )
    });
    Ok(ExitCode::SUCCESS)
}

/// A query's answer for people: the table, each release's 95% error, the cost.
pub(crate) fn outcome_text(outcome: &QueryOutcome) -> String {
    if let Some(explain) = &outcome.explain {
        return explain.trim_end().to_string();
    }
    let Some(answer) = &outcome.answer else {
        return String::new();
    };
    let mut lines = render_table(&answer.columns, &answer.rows);
    lines.push(String::new());
    if let Some(releases) = answer.releases.as_array() {
        lines.push("each release with its 95% error:".into());
        for r in releases {
            let output = r["output"].as_str().unwrap_or_default();
            // The planner names an encrypted aggregate's release by its
            // reserved function; the answer names its output column.
            let encrypted = output.starts_with("__cohort_encrypted")
                || answer.encrypted.iter().any(|e| e.output == output);
            let groups = r["groups"].as_array().cloned().unwrap_or_default();
            let values = r["values"].as_array().cloned().unwrap_or_default();
            let errors = r["error_95"].as_array().cloned().unwrap_or_default();
            let parts: Vec<String> = groups
                .iter()
                .zip(values.iter().zip(&errors))
                .map(|(g, (v, e))| {
                    let g = g.as_str().unwrap_or_default();
                    let label = if g.is_empty() {
                        String::new()
                    } else {
                        format!("{g}: ")
                    };
                    // A value computed under encryption is decrypted into
                    // the table only after the debit; the release has none.
                    // Otherwise a missing value was withheld by the study's
                    // small-cell rule.
                    let value = match v.as_f64() {
                        Some(v) => short(v),
                        None if encrypted => "(in the table)".into(),
                        None => "withheld (small cell)".into(),
                    };
                    format!("{label}{value} ± {}", short(e.as_f64().unwrap_or(f64::NAN)))
                })
                .collect();
            lines.push(format!("  {output}  {}", parts.join("; ")));
        }
    }
    let wei = |w: &str| cohort_engine::research::study::format_wei(w.parse().unwrap_or_default());
    lines.push(format!(
        "cost {}; fee {}, {} to each of the {} consenting patients; remaining {}{}",
        answer.cost,
        wei(&answer.fee),
        wei(&answer.share),
        answer.members,
        outcome.remaining,
        if outcome.replayed {
            format!(
                "; the stored answer of query `{}` (no new noise, nothing spent)",
                answer.query_id
            )
        } else {
            format!("; query id `{}`", answer.query_id)
        }
    ));
    lines.join("\n")
}

pub(crate) fn release(
    cli: &Cli,
    dir: &DataDir,
    id: u64,
    k: usize,
    l: Option<usize>,
    out: Option<&Path>,
) -> anyhow::Result<ExitCode> {
    let (_vault, session, rt) = open(cli, dir, false)?;
    let r = rt.block_on(session.release(&cli.actor, id, k, l, out))?;
    emit(cli, &r, || release_text(&r));
    Ok(ExitCode::SUCCESS)
}

pub(crate) fn release_text(r: &cohort_engine::research::microdata::Released) -> String {
    format!(
        "released {} rows of study {} to {} (k = {}{}, measured k = {}{})\n  \
         {} classes, {} suppressed; information loss NCP {:.4}, discernibility {:.3e}\n  \
         recorded on the ledger as {}; report {}",
        r.report.rows_out,
        r.study_id,
        r.path.display(),
        r.k,
        if r.l > 0 {
            format!(", l = {}", r.l)
        } else {
            String::new()
        },
        r.measured_k,
        r.measured_l
            .map(|l| format!(", l = {l}"))
            .unwrap_or_default(),
        r.report.classes,
        r.report.suppressed,
        r.report.ncp,
        r.report.discernibility,
        r.extract_hash,
        r.report_path.display()
    )
}

pub(crate) fn compensation(
    cli: &Cli,
    dir: &DataDir,
    cmd: &CompensationCmd,
) -> anyhow::Result<ExitCode> {
    let reads = matches!(cmd, CompensationCmd::Show { .. });
    let (vault, session, rt) = open(cli, dir, reads)?;
    let patient = actor(cli, &vault)?;
    match cmd {
        CompensationCmd::Show { study } => {
            let e = rt.block_on(session.earnings(patient.address(), *study))?;
            emit(cli, &e, || {
                let mut lines: Vec<String> = e
                    .shares
                    .iter()
                    .map(|s| {
                        format!(
                            "study {:>4}  query {:<24} {:>22}  {}",
                            s.study_id,
                            s.query_id,
                            s.amount_text,
                            if s.claimed { "claimed" } else { "claimable" }
                        )
                    })
                    .collect();
                lines.push(format!(
                    "{}: earned {}, claimed {}, claimable {}",
                    patient.name(),
                    e.earned,
                    e.claimed,
                    e.claimable
                ));
                lines.join("\n")
            });
        }
        CompensationCmd::Claim { study } => {
            let c = rt.block_on(session.claim(&patient, *study))?;
            emit(cli, &c, || {
                format!(
                    "paid {} to {} for {} quer(ies)",
                    c.paid_text,
                    c.address,
                    c.queries.len()
                )
            });
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Subcommand)]
pub(crate) enum StudyCmd {
    /// Propose a study from a study file (TOML), as the `--as` researcher, sending its escrow.
    Propose {
        /// The study file.
        file: PathBuf,
    },
    /// Approve a study, as the `--as` steward; the approval reaching the threshold builds its view.
    Approve {
        /// The study id.
        study: u64,
    },
    /// Every study proposed through this data directory.
    List,
    /// One study: terms, status, budget left, consents, queries, releases.
    Show {
        /// The study id.
        study: u64,
    },
}

#[derive(Subcommand)]
pub(crate) enum ConsentCmd {
    /// Consent to a study, as the `--as` patient account.
    Give {
        /// The study id.
        study: u64,
        /// Days the consent lasts.
        #[arg(long, default_value_t = 365)]
        days: u32,
        /// Purposes covered (default: the study's), comma-separated.
        #[arg(long, value_delimiter = ',')]
        purposes: Vec<String>,
    },
    /// Withdraw from a study, as the `--as` patient account: every later query leaves you out.
    Withdraw {
        /// The study id.
        study: u64,
    },
    /// The `--as` patient account's consents.
    List,
}

#[derive(Subcommand)]
pub(crate) enum CompensationCmd {
    /// What the `--as` patient account earned, per study and query.
    Show {
        /// Only this study.
        #[arg(long)]
        study: Option<u64>,
    },
    /// Claim every unclaimed share on the ledger, with its Merkle proof.
    Claim {
        /// Only this study.
        #[arg(long)]
        study: Option<u64>,
    },
}
