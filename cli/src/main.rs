//! # cohort-cli
//!
//! The `cohort` command-line tool: one binary for every role and the demo.
//! An adapter over the engine (and, with `--server`, a client of
//! `cohort-server`): each command group's module parses its flags, calls
//! the engine's service once, and prints text or `--json`.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use cohort_engine::records::vault::Access;
use cohort_engine::{DataDir, audit, records::generate, records::ingest, records::projection};

/// Prints a line to stdout. A closed pipe (`cohort account list | head -1`)
/// ends the command quietly with success: whoever read the output has what
/// it wanted. Any other write error ends it with a message.
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::stdout_line(format_args!($($arg)*))
    };
}

pub(crate) fn stdout_line(args: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    let written = stdout
        .write_fmt(args)
        .and_then(|()| stdout.write_all(b"\n"))
        .and_then(|()| stdout.flush());
    if let Err(e) = written {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("error: writing the output: {e}");
        std::process::exit(1);
    }
}

mod account_cli;
mod anonymize_cli;
mod appointment_cli;
mod ballista_cli;
mod cli_common;
mod clinical_cli;
mod clinical_remote;
mod compliance_cli;
mod demo;
mod demo_appointments;
mod demo_clinical;
mod demo_omop;
mod demo_recovery;
mod dp_cli;
mod geo_cli;
mod keys_cli;
mod ledger_cli;
mod omop_cli;
mod records_cli;
mod recovery_cli;
mod research_cli;
mod serve_cli;
use account_cli::{AccountCmd, account};
use anonymize_cli::{AnonymizeArgs, DeidentifyArgs, anonymize, deidentify};
use cli_common::{
    ServerArgs, counts_text, emit, ingest_text, render_table, runtime, short, unlock, verify_text,
};
use clinical_cli::{
    AccessCmd, CredentialCmd, EmergencyCmd, NotificationsCmd, RecordsCmd, access, credential,
    emergency, notifications_cmd, records,
};
use dp_cli::{BudgetCmd, DpArgs, QueryArgs, budget, dp_release, query_options, sql_query};
use keys_cli::{KeysCmd, keys};
use ledger_cli::{LedgerCmd, ledger};
use records_cli::{AuditCmd, PatientCmd};
use research_cli::{
    CompensationCmd, ConsentCmd, StudyCmd, compensation, consent, encrypt_field, release,
    research_query, study,
};

/// cohort: privacy-preserving research analytics over encrypted health records.
#[derive(Parser)]
#[command(name = "cohort", version, about = "cohort: privacy-preserving research analytics over encrypted health records", long_about = None)]
struct Cli {
    /// The data directory (created on first use).
    #[arg(long, global = true, env = "COHORT_DATA_DIR", default_value = cohort_engine::datadir::DEFAULT)]
    data_dir: PathBuf,
    /// Print machine-readable JSON instead of text.
    #[arg(long, global = true)]
    json: bool,
    /// The account acting: its key signs what the command does on chain
    /// and it is recorded in the audit log. A name that is not an account
    /// is refused.
    #[arg(
        long = "as",
        global = true,
        env = "COHORT_ACTOR",
        default_value = "operator"
    )]
    actor: String,
    /// A file holding the keystore passphrase (else $COHORT_PASSPHRASE, else a prompt).
    #[arg(long, global = true, env = "COHORT_PASSPHRASE_FILE")]
    passphrase_file: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// The research path end to end on a synthetic cohort: study, approval, consent,
    /// private queries, a k-anonymous extract, compensation, withdrawal, verified chains.
    Demo {
        /// Patients to generate.
        #[arg(long, default_value_t = 10_000)]
        patients: u64,
        /// Seed for the synthetic population.
        #[arg(long, default_value_t = 42)]
        seed: u64,
    },
    /// Serve the research path over Arrow Flight SQL until Ctrl-C or SIGTERM
    /// (clients sign in with `cohort login`). Settings come from the
    /// configuration file (`--config`, else `<data-dir>/cohort.toml` if
    /// present), each key overridable by `COHORT_<SECTION>_<KEY>`, and
    /// these flags over both.
    Serve {
        /// The configuration file (TOML); it must exist when named.
        #[arg(long, env = "COHORT_CONFIG")]
        config: Option<PathBuf>,
        /// The address to listen on (port 0: any free port) [server.listen].
        #[arg(long)]
        listen: Option<std::net::SocketAddr>,
        /// How long a sign-in's token lasts, in seconds [auth.token_ttl_secs].
        #[arg(long)]
        token_ttl: Option<u64>,
        /// The TLS certificate chain (PEM) [tls.cert, with tls.mode = "files"];
        /// default: one generated for local use under the data directory's
        /// server/tls/.
        #[arg(long, requires = "tls_key", conflicts_with = "plaintext")]
        tls_cert: Option<PathBuf>,
        /// The TLS private key (PEM) [tls.key].
        #[arg(long, requires = "tls_cert")]
        tls_key: Option<PathBuf>,
        /// Plain HTTP/2 without TLS [tls.mode = "off"]: refused unless the
        /// address is loopback.
        #[arg(long)]
        plaintext: bool,
        /// Print the configuration that would take effect, as TOML, and exit.
        #[arg(long)]
        print_config: bool,
    },
    /// Ask a `cohort serve` whether it is serving (the gRPC health check);
    /// exits 0 when it is, 1 otherwise. Needs no sign-in.
    Health {
        #[command(flatten)]
        to: ServerArgs,
    },
    /// Sign in to a `cohort serve` as the `--as` account: its key signs the
    /// server's EIP-4361 challenge. Prints the bearer token for any Flight
    /// SQL client (`authorization: Bearer <token>`).
    Login {
        #[command(flatten)]
        to: ServerArgs,
        /// The current TOTP code (every account while the server's `[auth] second_factor` is on; `cohort account totp` enrolls).
        #[arg(long, env = "COHORT_TOTP")]
        totp: Option<String>,
    },
    /// Sign out of a `cohort serve`: end the token `cohort login` printed
    /// or, as an administrator (`--as`, who signs in for this), every
    /// sign-in of `--account`. Each is audited.
    Logout {
        #[command(flatten)]
        to: ServerArgs,
        /// The token to end (what `cohort login` printed).
        #[arg(
            long,
            env = "COHORT_TOKEN",
            required_unless_present = "account",
            conflicts_with = "account"
        )]
        token: Option<String>,
        /// End every sign-in of this account (needs the admin role on chain).
        #[arg(long)]
        account: Option<String>,
        /// The administrator's current TOTP code, with `--account`.
        #[arg(long, env = "COHORT_TOTP")]
        totp: Option<String>,
    },
    /// Write a synthetic population as FHIR R4 bundles.
    Generate {
        /// Number of patients.
        #[arg(long)]
        patients: u64,
        /// Seed: the same seed writes the same bytes.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Output directory.
        #[arg(long)]
        out: PathBuf,
        /// Patients per bundle file.
        #[arg(long, default_value_t = 100)]
        per_bundle: u64,
        /// The population's "today" (YYYY-MM-DD).
        #[arg(long, default_value = "2026-01-01")]
        as_of: String,
    },
    /// Ingest FHIR R4 bundles (files or directories of *.json) into the vault.
    Ingest {
        /// Bundle files or directories.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// Purpose recorded in the audit log.
        #[arg(long, default_value = "ingest")]
        purpose: String,
        /// The ingesting organisation, as named in the geography policy's
        /// [organisations]: its records carry its jurisdiction (without
        /// one, the policy's `default`).
        #[arg(long, conflicts_with = "jurisdiction")]
        organisation: Option<String>,
        /// The records' jurisdiction directly (`DE`, `US-CA`).
        #[arg(long)]
        jurisdiction: Option<String>,
    },
    /// Row counts of the columnar projection.
    Stats,
    /// Clinical records: read, search, update and verify, each decided by the chain.
    Records {
        #[command(flatten)]
        remote: clinical_remote::Remote,
        #[command(subcommand)]
        cmd: RecordsCmd,
    },
    /// A patient's grants to providers and delegates: grant, revoke, list, the read log.
    Access {
        #[command(flatten)]
        remote: clinical_remote::Remote,
        #[command(subcommand)]
        cmd: AccessCmd,
    },
    /// Provider credentials, attested by an issuer.
    #[command(subcommand)]
    Credential(CredentialCmd),
    /// Geography: the deployment's policy on cross-border reads and
    /// research, and a patient's own restriction.
    #[command(subcommand)]
    Geo(geo_cli::GeoCmd),
    /// OMOP CDM 5.4: the vocabulary (public tables) and an OMOP study file.
    #[command(subcommand)]
    Omop(omop_cli::OmopCmd),
    /// A Ballista cluster for private plans: `standalone` (a scheduler and
    /// executors), `executor` (more executors).
    #[command(subcommand)]
    Ballista(ballista_cli::BallistaCmd),
    /// Emergency access: trigger, review, end, restore, the review queue.
    Emergency {
        #[command(flatten)]
        remote: clinical_remote::Remote,
        #[command(subcommand)]
        cmd: EmergencyCmd,
    },
    /// The notification outbox of the `--as` account, and its webhook.
    Notifications {
        #[command(flatten)]
        remote: clinical_remote::Remote,
        #[command(subcommand)]
        cmd: NotificationsCmd,
    },
    /// Appointments: providers' hours, fees and policy; slots, quotes and
    /// bookings paid into escrow; confirm, decline, cancel, complete,
    /// no-show, dispute; the reminder scheduler.
    Appointment {
        #[command(flatten)]
        remote: clinical_remote::Remote,
        #[command(subcommand)]
        cmd: appointment_cli::AppointmentCmd,
    },
    /// Insurers: verify a patient's coverage, fund shares, show coverages.
    Insurance {
        #[command(flatten)]
        remote: clinical_remote::Remote,
        #[command(subcommand)]
        cmd: appointment_cli::InsuranceCmd,
    },
    /// Patients: export, the accounting of disclosures, erasure.
    #[command(subcommand)]
    Patient(PatientCmd),
    /// Retention: per-type policies, legal holds, the purge (admins).
    #[command(subcommand)]
    Retention(compliance_cli::RetentionCmd),
    /// Key recovery: guardians and shares, opening, approving, attesting,
    /// completing and reviewing a recovery.
    #[command(subcommand)]
    Recovery(recovery_cli::RecoveryCmd),
    /// The regulatory report for the operator (admins and auditors):
    /// accesses, emergencies and reviews, studies and budgets, erasures and
    /// purges, and what verification finds. Exit status 3 when it finds a
    /// problem.
    Report(compliance_cli::ReportArgs),
    /// The audit log.
    #[command(subcommand)]
    Audit(AuditCmd),
    /// Write the columnar projection as Parquet files (needs the passphrase
    /// and is audited). Patients' direct identifiers are left out unless
    /// --identifiers is given.
    Export {
        /// Output directory.
        #[arg(long)]
        out: PathBuf,
        /// Purpose recorded in the audit log.
        #[arg(long, default_value = "operations")]
        purpose: String,
        /// Decrypt and write patients' names, birth dates, addresses, cities,
        /// ZIP codes, phones, e-mails, SSNs and MRNs. Without it those columns
        /// are null, except birth_date (the first day of the birth year, ages
        /// over 89 collapsed) and zip (its Safe Harbor three digits).
        #[arg(long)]
        identifiers: bool,
    },
    /// k-anonymize a CSV or Parquet table (Mondrian), optionally with l-diversity and t-closeness.
    Anonymize(AnonymizeArgs),
    /// De-identify a table by a HIPAA Safe Harbor column policy, with per-study pseudonyms.
    Deidentify(DeidentifyArgs),
    /// Release a differentially private statistic from a table file, debiting a budget file.
    Dp(DpArgs),
    /// Privacy budget files: create one, show what is left.
    #[command(subcommand)]
    Budget(BudgetCmd),
    /// Ask a differentially private SQL question of a study (budgeted on the ledger).
    Query(QueryArgs),
    /// Studies: propose (researcher), approve (steward), list, show.
    #[command(subcommand)]
    Study(StudyCmd),
    /// A patient's consent to a study: give, withdraw, list.
    #[command(subcommand)]
    Consent(ConsentCmd),
    /// Encrypt a value for a study's encrypted column, as the patient (`--as`):
    /// the value leaves this command only as a ciphertext with a range proof.
    EncryptField {
        /// The study id.
        study: u64,
        /// The encrypted column (as the study file declares it).
        #[arg(long)]
        column: String,
        /// The value, within the column's declared bounds.
        #[arg(long, allow_hyphen_values = true)]
        value: i64,
    },
    /// Release a k-anonymous extract of a study's view (only if its stewards allowed microdata).
    Release {
        /// The study id.
        study: u64,
        /// Every equivalence class has at least k rows.
        #[arg(long)]
        k: usize,
        /// Distinct l-diversity of the study's sensitive column.
        #[arg(long)]
        l: Option<usize>,
        /// Where to write the extract (.parquet); default under the data directory.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// What a patient earned from the queries their records answered, and claiming it.
    #[command(subcommand)]
    Compensation(CompensationCmd),
    /// The ledger: deploy the contracts, see the chain, mirror its events.
    #[command(subcommand)]
    Ledger(LedgerCmd),
    /// Named accounts: the Ethereum keys of the actors, held by the keystore.
    #[command(subcommand)]
    Account(AccountCmd),
    /// The keystore: its status, rotating the key-encryption key, a new
    /// passphrase, an HSM for a new data directory.
    #[command(subcommand)]
    Keys(KeysCmd),
}

/// mimalloc, as datafusion-cli uses: glibc's malloc and free were about a
/// fifth of ingest's storing thread (docs/BENCHMARKS.md, "FHIR ingestion").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Transparent huge pages off for this process. mimalloc asks for them,
/// and where the kernel then compacts memory at the fault (`defrag =
/// madvise`, Debian's default) a query's first touch of its memory waited
/// on it: `cohort query FILE` over a million rows took 150 ms instead of 70
/// right after another process had freed a large heap, and zeroed 2 MiB
/// pages where it used a fraction (docs/BENCHMARKS.md, issue 30). Failing
/// to turn them off changes only the speed.
fn no_transparent_huge_pages() {
    #[cfg(target_os = "linux")]
    let _ = rustix::thread::disable_transparent_huge_pages(true);
}

fn main() -> ExitCode {
    no_transparent_huge_pages();
    let cli = Cli::parse();
    // `serve` sets up its logs from its configuration ([log]).
    if !matches!(cli.command, Command::Serve { .. }) {
        tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_env("COHORT_LOG")
                    .unwrap_or_else(|_| "warn".into()),
            )
            .with_writer(std::io::stderr)
            .init();
    }
    // `serve` and `query` handle their signals themselves (a server drains,
    // a query is charged and answered at its deadline).
    if !matches!(cli.command, Command::Serve { .. } | Command::Query(_)) {
        stop_on_signals();
    }
    match run(&cli) {
        Ok(code) => code,
        Err(e) => {
            match cohort_engine::datadir::is_storage_failure(e.as_ref())
                .then(|| cohort_engine::datadir::storage_fault(&cli.data_dir))
            {
                // Every change is one transaction, so a write that failed
                // left nothing half-done; the next command finishes or undoes
                // a query this one began.
                Some(Some(fault)) => eprintln!(
                    "error: {fault}; nothing was half-written (the next command finishes or undoes \
                     what this one began)\n  cause: {e:#}"
                ),
                _ => eprintln!("error: {e:#}"),
            }
            ExitCode::FAILURE
        }
    }
}

/// SIGINT and SIGTERM end a command with a line saying so, and the
/// conventional exit code (130, 143). Every change a command makes is one
/// SQLite transaction, one atomic file write or one ledger transaction, so
/// stopping between them leaves nothing half-written; a resumed `ingest`
/// finds the bundles already stored unchanged.
fn stop_on_signals() {
    std::thread::spawn(|| {
        let Ok(rt) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        else {
            return;
        };
        rt.block_on(async {
            use tokio::signal::unix::{SignalKind, signal};
            let (Ok(mut interrupt), Ok(mut terminate)) = (
                signal(SignalKind::interrupt()),
                signal(SignalKind::terminate()),
            ) else {
                return;
            };
            let code = tokio::select! {
                _ = interrupt.recv() => 130,
                _ = terminate.recv() => 143,
            };
            eprintln!(
                "cohort: stopped by a signal; what was done is kept, nothing is half-written"
            );
            std::process::exit(code);
        });
    });
}

fn run(cli: &Cli) -> anyhow::Result<ExitCode> {
    // Opened on demand: `generate` does not touch the data directory.
    let dir = || DataDir::open(&cli.data_dir);
    let progress = !cli.json && std::io::stderr().is_terminal();
    match &cli.command {
        Command::Demo { patients, seed } => demo::demo(cli, &dir()?, *patients, *seed),
        Command::Serve {
            config,
            listen,
            token_ttl,
            tls_cert,
            tls_key,
            plaintext,
            print_config,
        } => {
            let flags = serve_cli::ServeFlags {
                config: config.clone(),
                listen: *listen,
                token_ttl: *token_ttl,
                tls_cert: tls_cert.clone(),
                tls_key: tls_key.clone(),
                plaintext: *plaintext,
                print_config: *print_config,
            };
            serve_cli::serve(cli, &dir()?, &flags)
        }
        Command::Health { to } => {
            serve_cli::health(cli, &dir()?, &to.server, to.ca_cert.as_deref())
        }
        Command::Login { to, totp } => serve_cli::login(
            cli,
            &dir()?,
            &to.server,
            to.ca_cert.as_deref(),
            totp.as_deref(),
        ),
        Command::Logout {
            to,
            token,
            account,
            totp,
        } => serve_cli::logout(
            cli,
            &dir()?,
            &to.server,
            to.ca_cert.as_deref(),
            match (token, account) {
                (Some(t), _) => serve_cli::SignOut::Token(t),
                (None, Some(a)) => serve_cli::SignOut::Account {
                    name: a,
                    totp: totp.as_deref(),
                },
                (None, None) => {
                    anyhow::bail!("pass --token (yours) or --account (an admin's call)")
                }
            },
        ),
        Command::Generate {
            patients,
            seed,
            out,
            per_bundle,
            as_of,
        } => {
            let as_of = chrono::NaiveDate::parse_from_str(as_of, "%Y-%m-%d")
                .with_context(|| format!("--as-of `{as_of}` is not a date (YYYY-MM-DD)"))?;
            let opts = generate::Options {
                per_bundle: *per_bundle,
                as_of,
                progress,
                ..generate::Options::new(*patients, *seed, out)
            };
            let r = generate::generate(&opts)?;
            emit(cli, &r, || {
                format!(
                    "wrote {} patients ({} resources, {} bundles, {:.1} MB) to {} in {:.1}s: {:.0} patients/s",
                    r.patients,
                    r.resources,
                    r.bundles,
                    r.bytes as f64 / 1e6,
                    out.display(),
                    r.seconds,
                    r.patients_per_second
                )
            });
            Ok(ExitCode::SUCCESS)
        }
        Command::Ingest {
            paths,
            purpose,
            organisation,
            jurisdiction,
        } => {
            let dir = dir()?;
            let vault = unlock(cli, &dir, None)?;
            let actor =
                cohort_engine::access::Actor::authenticate(vault.conn(), vault.keys(), &cli.actor)?;
            let jurisdiction = geo_cli::ingest_jurisdiction(
                &vault,
                organisation.as_deref(),
                jurisdiction.as_deref(),
            )?;
            let access = Access::new(actor.name(), purpose).with_jurisdiction(jurisdiction);
            let r = ingest::ingest_paths(&vault, &access, paths, progress)?;
            // With a ledger, the new versions are anchored now, in one batch.
            let anchored = match cohort_engine::chain::load(&dir)? {
                Some(_) => {
                    let rt = runtime()?;
                    let (_, client) = rt.block_on(cohort_engine::chain::client(&dir))?;
                    clinical_cli::anchor_now(&dir, &vault, &client, &rt)?
                }
                None => None,
            };
            emit(cli, &r, || {
                let mut text = ingest_text(&r);
                match &anchored {
                    Some(a) => text.push_str(&format!(
                        "
anchored {} versions on chain as batch {}",
                        a.count, a.batch
                    )),
                    None => {
                        let waiting =
                            cohort_engine::records::anchor::pending(vault.conn()).unwrap_or(0);
                        if waiting > 0 {
                            text.push_str(&format!(
                                "
{waiting} versions wait to be anchored: `cohort ledger deploy`, then `cohort records anchor`"
                            ));
                        }
                    }
                }
                text
            });
            Ok(if r.rejected.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(2)
            })
        }
        Command::Stats => {
            let counts = projection::counts(&dir()?.connect()?)?;
            emit(cli, &counts, || counts_text(&counts));
            Ok(ExitCode::SUCCESS)
        }
        Command::Records { remote, cmd } if remote.server.is_some() => {
            clinical_remote::records(cli, &dir()?, remote, cmd)
        }
        Command::Records { cmd, .. } => records(cli, &dir()?, cmd),
        Command::Access { remote, cmd } if remote.server.is_some() => {
            clinical_remote::access(cli, &dir()?, remote, cmd)
        }
        Command::Access { cmd, .. } => access(cli, &dir()?, cmd),
        Command::Credential(cmd) => credential(cli, &dir()?, cmd),
        Command::Geo(cmd) => geo_cli::geo(cli, &dir()?, cmd),
        Command::Omop(cmd) => omop_cli::omop(cli, cmd),
        Command::Ballista(cmd) => ballista_cli::ballista(cli, cmd),
        Command::Emergency { remote, cmd } if remote.server.is_some() => {
            clinical_remote::emergency(cli, &dir()?, remote, cmd)
        }
        Command::Emergency { cmd, .. } => emergency(cli, &dir()?, cmd),
        Command::Notifications { remote, cmd } if remote.server.is_some() => {
            clinical_remote::notifications(cli, &dir()?, remote, cmd)
        }
        Command::Notifications { cmd, .. } => notifications_cmd(cli, &dir()?, cmd),
        Command::Appointment { remote, cmd } => {
            appointment_cli::appointment(cli, &dir()?, remote, cmd)
        }
        Command::Insurance { remote, cmd } => {
            appointment_cli::insurance_cmd(cli, &dir()?, remote, cmd)
        }
        Command::Patient(PatientCmd::Export {
            patient,
            out,
            purpose,
        }) => {
            let d = dir()?;
            let vault = unlock(cli, &d, None)?;
            let actor =
                cohort_engine::access::Actor::authenticate(vault.conn(), vault.keys(), &cli.actor)?;
            let rt = runtime()?;
            let (_, client) = rt.block_on(cohort_engine::chain::client(&d))?;
            let clinic = cohort_engine::records::clinical::Clinic::new(&vault, &client);
            let bundle = rt.block_on(clinic.export_bundle(&actor, patient, purpose.parse()?))?;
            let text = serde_json::to_vec_pretty(&bundle)?;
            cohort_engine::storage::fsutil::write_atomic(out, &text)?;
            let records = bundle["entry"].as_array().map_or(0, Vec::len);
            let report = serde_json::json!({ "patient": patient, "records": records, "out": out });
            emit(cli, &report, || {
                format!(
                    "exported {records} record(s) of {patient} as a FHIR Bundle to {}",
                    out.display()
                )
            });
            Ok(ExitCode::SUCCESS)
        }
        Command::Patient(PatientCmd::Keys { patient }) => {
            compliance_cli::key_holders(cli, &dir()?, patient)
        }
        Command::Patient(PatientCmd::Disclosures { patient, since }) => {
            compliance_cli::disclosures(cli, &dir()?, patient, since.as_deref())
        }
        Command::Retention(cmd) => compliance_cli::retention(cli, &dir()?, cmd),
        Command::Recovery(cmd) => recovery_cli::recovery_cmd(cli, &dir()?, cmd),
        Command::Report(args) => compliance_cli::report(cli, &dir()?, args),
        Command::Patient(PatientCmd::Erase {
            patient,
            confirm,
            purpose,
        }) => {
            if !confirm {
                bail!(
                    "erasing patient {patient} destroys their data key and cannot be undone; repeat with --confirm"
                );
            }
            let dir = dir()?;
            let vault = unlock(cli, &dir, None)?;
            let actor =
                cohort_engine::access::Actor::authenticate(vault.conn(), vault.keys(), &cli.actor)?;
            let access = Access::new(actor.name(), purpose);
            // With a ledger, erasure withdraws the patient's consents first.
            let e = runtime()?.block_on(cohort_engine::research::erase(
                &dir, &vault, &access, patient,
            ))?;
            emit(cli, &e, || {
                let mut text = format!(
                    "erased patient {}: data key destroyed, {} record versions unreadable, {} projection rows removed",
                    e.patient_id, e.versions_shredded, e.projection_rows_removed
                );
                if !e.consents_withdrawn.is_empty() {
                    text.push_str(&format!(
                        "; consent withdrawn on chain from study {}",
                        e.consents_withdrawn
                            .iter()
                            .map(u64::to_string)
                            .collect::<Vec<_>>()
                            .join(", ")
                    ));
                }
                text.push_str(
                    "\n  not recalled: answers and extracts released before, and what the ledger records (consents, claims)",
                );
                text
            });
            Ok(ExitCode::SUCCESS)
        }
        Command::Audit(AuditCmd::Verify { unkeyed }) => {
            let d = dir()?;
            let v = audit::verify(&d.connect()?)?;
            if *unkeyed || !v.is_intact() {
                emit(cli, &v, || verify_text(&v));
                return Ok(if v.is_intact() {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::from(3)
                });
            }
            let vault = unlock(cli, &d, None)?;
            if cohort_engine::chain::load(&d)?.is_some() {
                let mut conn = d.connect()?;
                runtime()?.block_on(cohort_engine::chain::sync(&d, &mut conn))?;
            }
            let anchors = audit::anchor::anchors(vault.conn())?;
            let key = vault.audit_key()?;
            let keyed = audit::anchor::verify_keyed(vault.conn(), key.expose(), &anchors)?;
            let index = cohort_engine::records::index_anchor::verify(
                vault.conn(),
                key.expose(),
                &audit::anchor::anchors_of(
                    vault.conn(),
                    cohort_engine::records::index_anchor::VAULT_INDEX,
                )?,
            )?;
            // The chain's fields as before, the keyed check beside them, and
            // `first_broken` naming a keyed difference too.
            let mut report = serde_json::to_value(&v)?;
            report["keyed"] = serde_json::to_value(&keyed)?;
            report["index"] = serde_json::to_value(&index)?;
            if let Some(b) = &keyed.first_differing {
                report["first_broken"] = serde_json::to_value(b)?;
            }
            emit(cli, &report, || {
                let audit = match &keyed.first_differing {
                    None => format!(
                        "{}\nkeyed: {} sealed entries and {} anchor(s) match; {} entries since the last anchor",
                        verify_text(&v),
                        keyed.sealed_checked,
                        keyed.anchors_checked,
                        keyed.unanchored
                    ),
                    Some(b) => format!("audit log REWRITTEN at entry {}: {}", b.seq, b.reason),
                };
                let index = match &index.first_differing {
                    None => format!(
                        "vault index: {} sealed record versions and {} anchor(s) match; {} stored since the last seal",
                        index.sealed_checked, index.anchors_checked, index.unsealed
                    ),
                    Some(b) => format!("vault index REWRITTEN at seal {}: {}", b.seq, b.reason),
                };
                format!("{audit}\n{index}")
            });
            Ok(if keyed.is_intact() && index.is_intact() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(3)
            })
        }
        Command::Audit(AuditCmd::Anchor) => {
            let d = dir()?;
            let vault = unlock(cli, &d, None)?;
            let rt = runtime()?;
            let (config, client) = rt.block_on(cohort_engine::chain::client(&d))?;
            let engine =
                cohort_engine::keys::accounts::get(vault.conn(), vault.keys(), &config.engine)?;
            let both = rt.block_on(cohort_engine::records::index_anchor::anchor_both(
                &vault, &client, &engine,
            ))?;
            // The audit log's anchor at the top (null when nothing new), the
            // vault index's beside it.
            let mut shown = serde_json::to_value(&both.audit)?;
            if let Some(index) = &both.index {
                if shown.is_null() {
                    shown = serde_json::json!({});
                }
                shown["index"] = serde_json::to_value(index)?;
            }
            emit(cli, &shown, || {
                let audit = match &both.audit {
                    Some(a) => format!(
                        "anchored the audit log's keyed head after {} entries ({} newly sealed), tx {}",
                        a.entries, a.sealed, a.tx_hash
                    ),
                    None => "the audit log's head is already anchored".into(),
                };
                let index = match &both.index {
                    Some(a) => format!(
                        "anchored the vault index's keyed head after {} record versions ({} newly sealed), tx {}",
                        a.entries, a.sealed, a.tx_hash
                    ),
                    None => "the vault index's head is already anchored".into(),
                };
                format!("{audit}\n{index}")
            });
            Ok(ExitCode::SUCCESS)
        }
        Command::Audit(AuditCmd::Log { limit, target }) => {
            let entries = audit::tail(&dir()?.connect()?, *limit, target.as_deref())?;
            emit(cli, &entries, || {
                entries
                    .iter()
                    .map(|e| {
                        format!(
                            "{:>6}  {}  {:<10} {:<8} {:<48} {}",
                            e.seq, e.at, e.actor, e.action, e.target, e.purpose
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("\n")
            });
            Ok(ExitCode::SUCCESS)
        }
        Command::Anonymize(args) => anonymize(cli, args),
        Command::Dp(args) => dp_release(cli, args),
        Command::Query(args) => match args.study.parse::<u64>() {
            Ok(id) => research_query(cli, &dir()?, id, args),
            Err(_) => sql_query(cli, args),
        },
        Command::Study(cmd) => study(cli, &dir()?, cmd),
        Command::Consent(cmd) => consent(cli, &dir()?, cmd),
        Command::EncryptField {
            study,
            column,
            value,
        } => encrypt_field(cli, &dir()?, *study, column, *value),
        Command::Release { study, k, l, out } => {
            release(cli, &dir()?, *study, *k, *l, out.as_deref())
        }
        Command::Compensation(cmd) => compensation(cli, &dir()?, cmd),
        Command::Ledger(cmd) => ledger(cli, &dir()?, cmd),
        Command::Account(cmd) => account(cli, &dir()?, cmd),
        Command::Keys(cmd) => keys(cli, &dir()?, cmd),
        Command::Budget(cmd) => budget(cli, cmd),
        Command::Deidentify(args) => deidentify(cli, &dir()?, args),
        Command::Export {
            out,
            purpose,
            identifiers,
        } => {
            // PHI leaves the directory: the passphrase, and an audit entry
            // that says whether identifiers went with it.
            let vault = unlock(cli, &dir()?, None)?;
            let identifiers = if *identifiers {
                projection::Identifiers::Included
            } else {
                projection::Identifiers::Omitted
            };
            let actor =
                cohort_engine::access::Actor::authenticate(vault.conn(), vault.keys(), &cli.actor)?;
            let files =
                vault.export_projection(&Access::new(actor.name(), purpose), out, identifiers)?;
            emit(cli, &files, || {
                let mut lines: Vec<String> = files
                    .iter()
                    .map(|f| format!("{:<13} {:>9} rows  {}", f.table, f.rows, f.path.display()))
                    .collect();
                lines.push(match identifiers {
                    projection::Identifiers::Included => {
                        "patients' direct identifiers included (decrypted)".into()
                    }
                    projection::Identifiers::Omitted => "patients' direct identifiers left out \
                         (birth_date: first day of the year; zip: three digits)"
                        .into(),
                });
                lines.join("\n")
            });
            Ok(ExitCode::SUCCESS)
        }
    }
}
