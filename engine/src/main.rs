//! The `cohort` command-line tool: one binary for every role and the demo.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use cohort_engine::vault::{Access, Vault};
use cohort_engine::{DataDir, audit, generate, ingest, projection};
use serde::Serialize;

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

mod demo;
mod research_cli;
mod serve_cli;
use research_cli::{compensation, consent, encrypt_field, release, research_query, study};

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
    /// The account acting (recorded in the audit log).
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
        /// The current TOTP code (stewards and admins; `cohort account totp` enrolls).
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
    },
    /// Row counts of the columnar projection.
    Stats,
    /// Records in the vault.
    #[command(subcommand)]
    Records(RecordsCmd),
    /// Patients: erasure.
    #[command(subcommand)]
    Patient(PatientCmd),
    /// The audit log.
    #[command(subcommand)]
    Audit(AuditCmd),
    /// Write the columnar projection as Parquet files (contains identifiers).
    Export {
        /// Output directory.
        #[arg(long)]
        out: PathBuf,
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
}

#[derive(Subcommand)]
enum LedgerCmd {
    /// The backend, chain id, block height, contract addresses and the follower's position.
    Status,
    /// Deploy the contracts (to the embedded chain, or to the node at --rpc-url) as the `--as` account.
    Deploy {
        /// A JSON-RPC node (http://host:port); without it, the embedded chain.
        #[arg(long)]
        rpc_url: Option<String>,
        /// Stewards who must approve a study.
        #[arg(long, default_value_t = cohort_engine::chain::DEFAULT_APPROVALS)]
        approvals: u8,
        /// Confirmations the follower waits for (default: 1 embedded, 2 on a node).
        #[arg(long)]
        confirmations: Option<u64>,
        /// Deploy a new set even though contracts are recorded.
        #[arg(long)]
        redeploy: bool,
    },
    /// Mirror every confirmed block's events into cohort.db (resumes where it stopped).
    Sync,
    /// Check the embedded chain file: every block hash, every transaction's signature.
    Verify,
}

#[derive(Subcommand)]
enum StudyCmd {
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
enum ConsentCmd {
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
enum CompensationCmd {
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

#[derive(Subcommand)]
enum AccountCmd {
    /// Every account's name and address (no passphrase needed).
    List,
    /// Create an account (a new secp256k1 key, stored wrapped by the keystore).
    New {
        /// Its name.
        name: String,
        /// Link it to this patient of the vault (it then consents and is paid for them).
        #[arg(long)]
        patient: Option<String>,
    },
    /// Add ether to an account (embedded or development chains only: the
    /// operator mints it, standing in for a payment rail).
    Fund {
        /// The account.
        name: String,
        /// How much: "1 ether", "500 gwei".
        amount: String,
    },
    /// Grant a role on the ledger, as the `--as` admin. While `cohort
    /// serve` owns the chain, pass `--server` to change it through the server.
    Grant {
        /// The account.
        name: String,
        /// researcher, steward, auditor, provider, issuer, patient, engine or admin.
        role: String,
        #[command(flatten)]
        via: RoleVia,
    },
    /// Revoke a role on the ledger, as the `--as` admin: the account's
    /// next call to a server is decided without it.
    Revoke {
        /// The account.
        name: String,
        /// The role.
        role: String,
        #[command(flatten)]
        via: RoleVia,
    },
    /// Enroll a TOTP second factor for an account (stewards and admins sign
    /// in to `cohort serve` with it). Prints the secret and its otpauth://
    /// URI once, for an authenticator app.
    Totp {
        /// The account.
        name: String,
        /// Issue a new secret even if one is enrolled (the old one stops working).
        #[arg(long)]
        replace: bool,
    },
}

/// Which `cohort serve` to talk to, and the certificate to trust.
#[derive(clap::Args)]
struct ServerArgs {
    /// The server, e.g. https://127.0.0.1:50051.
    #[arg(long, env = "COHORT_SERVER")]
    server: String,
    /// The certificate (PEM) to trust for an https server; default: the
    /// one `cohort serve` generated in this data directory.
    #[arg(long, env = "COHORT_CA_CERT")]
    ca_cert: Option<PathBuf>,
}

/// Where a role change is sent: the chain itself, or a running server.
#[derive(clap::Args)]
struct RoleVia {
    /// Send it through this running `cohort serve` (which owns the chain),
    /// signing in as the `--as` admin.
    #[arg(long)]
    server: Option<String>,
    /// The server's certificate (PEM) to trust, with `--server`.
    #[arg(long, env = "COHORT_CA_CERT")]
    ca_cert: Option<PathBuf>,
    /// The admin's current TOTP code, with `--server`.
    #[arg(long, env = "COHORT_TOTP")]
    totp: Option<String>,
}

/// `cohort query`: private SQL over a study's view, or over the tables a
/// policy file names.
#[derive(clap::Args)]
struct QueryArgs {
    /// A study id on the ledger, or a study policy file (TOML) whose tables
    /// name their data with `source = "file.parquet"` (then --budget is the budget file).
    study: String,
    /// The SQL; prefix it with `EXPLAIN PRIVACY` to see the private plan without running it.
    sql: String,
    /// Show the private plan (bounds, mechanisms, scales, cost, error) and spend nothing.
    #[arg(long)]
    explain: bool,
    /// ε of this query (else the policy's `query.epsilon`).
    #[arg(long)]
    epsilon: Option<String>,
    /// ρ of this query, for a zCDP budget (else the policy's `query.rho`).
    #[arg(long, conflicts_with = "epsilon")]
    rho: Option<String>,
    /// δ for DP key selection of GROUP BY keys without a public domain.
    #[arg(long)]
    delta: Option<String>,
    /// How to split the cost between outputs: `name=weight,...` (default: equal).
    #[arg(long, value_delimiter = ',')]
    split: Vec<String>,
    /// A budget file (`cohort budget init`) to debit; refused if it cannot pay.
    #[arg(long)]
    budget: Option<PathBuf>,
    /// The query's id: repeating it returns the stored answer, never new noise.
    #[arg(long)]
    query_id: Option<String>,
}

/// `cohort dp`: one DP statistic from a CSV or Parquet table.
#[derive(clap::Args)]
struct DpArgs {
    /// The table (.csv or .parquet).
    #[arg(long)]
    input: PathBuf,
    /// Pure ε-DP (discrete Laplace noise).
    #[arg(long, required_unless_present = "rho")]
    epsilon: Option<f64>,
    /// ρ-zCDP (discrete Gaussian noise).
    #[arg(long, conflicts_with = "epsilon")]
    rho: Option<f64>,
    /// The privacy-unit column (the patient); without it every row is a unit.
    #[arg(long)]
    unit: Option<String>,
    /// The most rows one unit contributes (the first ones in file order).
    #[arg(long, default_value_t = 1)]
    max_rows: u32,
    /// A budget file (`cohort budget init`) to debit; refused if it cannot pay.
    #[arg(long)]
    budget: Option<PathBuf>,
    /// The debit's id in the budget file (a retry with the same id pays once).
    #[arg(long)]
    query_id: Option<String>,
    /// Release the outcome no earlier than this many milliseconds after the
    /// request, so that its timing says nothing of the data (0: at once).
    #[arg(long, default_value_t = 1_000)]
    deadline_ms: u64,
    #[command(subcommand)]
    statistic: StatisticCmd,
}

#[derive(Subcommand)]
enum StatisticCmd {
    /// The number of rows.
    Count,
    /// The sum of a column, values clamped to [lower, upper].
    Sum {
        #[arg(long)]
        column: String,
        #[arg(long, allow_hyphen_values = true)]
        lower: f64,
        #[arg(long, allow_hyphen_values = true)]
        upper: f64,
    },
    /// The mean of a column, values clamped to [lower, upper].
    Mean {
        #[arg(long)]
        column: String,
        #[arg(long, allow_hyphen_values = true)]
        lower: f64,
        #[arg(long, allow_hyphen_values = true)]
        upper: f64,
    },
    /// Counts per value over a public domain (comma-separated).
    Histogram {
        #[arg(long)]
        column: String,
        #[arg(long, value_delimiter = ',', required = true)]
        domain: Vec<String>,
    },
    /// The values frequent enough to publish, when the domain is not public.
    Keys {
        #[arg(long)]
        column: String,
        /// The δ of the noisy threshold.
        #[arg(long)]
        delta: f64,
    },
    /// A quantile (0.5: the median), chosen among candidate values.
    Quantile {
        #[arg(long)]
        column: String,
        #[arg(long, default_value_t = 0.5)]
        alpha: f64,
        /// Candidate values, comma-separated.
        #[arg(
            long,
            value_delimiter = ',',
            required = true,
            allow_hyphen_values = true
        )]
        candidates: Vec<f64>,
    },
}

#[derive(Subcommand)]
enum BudgetCmd {
    /// Create a budget file: pure ε, (ε, δ) or ρ-zCDP.
    Init {
        /// The file to create.
        #[arg(long)]
        file: PathBuf,
        /// Total ε.
        #[arg(long, required_unless_present = "rho")]
        epsilon: Option<String>,
        /// Total δ (with --epsilon).
        #[arg(long, requires = "epsilon")]
        delta: Option<String>,
        /// Total ρ.
        #[arg(long, conflicts_with = "epsilon")]
        rho: Option<String>,
    },
    /// What a budget file holds: total, committed, reserved, remaining.
    Show {
        /// The budget file.
        #[arg(long)]
        file: PathBuf,
    },
    /// Cancel a reservation left by a run that stopped before committing
    /// (`cohort dp` prints nothing before it commits, so nothing was released).
    Release {
        /// The budget file.
        #[arg(long)]
        file: PathBuf,
        /// The query id whose reservation to cancel.
        #[arg(long)]
        query_id: String,
    },
}

/// `cohort anonymize`: ARX-style batch anonymization for data stewards.
#[derive(clap::Args)]
struct AnonymizeArgs {
    /// The table to anonymize (.csv or .parquet).
    #[arg(long)]
    input: PathBuf,
    /// Quasi-identifier columns, comma-separated; released generalized.
    #[arg(long, value_delimiter = ',', required = true)]
    quasi_identifiers: Vec<String>,
    /// The sensitive column, released as is (needed for --l and --t).
    #[arg(long)]
    sensitive: Option<String>,
    /// Every equivalence class has at least k rows.
    #[arg(long)]
    k: usize,
    /// l-diversity of the sensitive column within each class.
    #[arg(long)]
    l: Option<f64>,
    /// Which l-diversity: distinct, entropy or recursive (with --c).
    #[arg(long, value_enum, default_value_t = LModel::Distinct)]
    l_model: LModel,
    /// The c of recursive (c, l)-diversity.
    #[arg(long)]
    c: Option<f64>,
    /// t-closeness: the largest earth mover's distance of a class from the whole table.
    #[arg(long)]
    t: Option<f64>,
    /// Generalization hierarchies (TOML).
    #[arg(long)]
    hierarchies: Option<PathBuf>,
    /// The largest fraction of rows that may be suppressed (e.g. 0.02).
    #[arg(long, default_value_t = 0.0)]
    suppression: f64,
    /// Strict cuts ordered values by value; relaxed may split equal values.
    #[arg(long, value_enum, default_value_t = ModeArg::Strict)]
    mode: ModeArg,
    /// Other columns to release unchanged, comma-separated (all others are dropped).
    #[arg(long, value_delimiter = ',')]
    keep: Vec<String>,
    /// Where to write the anonymized table (.csv or .parquet).
    #[arg(long)]
    out: PathBuf,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LModel {
    Distinct,
    Entropy,
    Recursive,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum ModeArg {
    Strict,
    Relaxed,
}

/// `cohort deidentify`: Safe Harbor for a projection table or any file.
#[derive(clap::Args)]
struct DeidentifyArgs {
    /// A table of the data directory's projection (patients, observations, ...).
    #[arg(long, conflicts_with = "input", required_unless_present = "input")]
    table: Option<String>,
    /// Or a .csv / .parquet file (then --policy is required).
    #[arg(long, requires = "policy")]
    input: Option<PathBuf>,
    /// The column policy (TOML); defaults to the built-in one for --table.
    #[arg(long)]
    policy: Option<PathBuf>,
    /// The study the pseudonyms belong to (other studies get unlinkable ones).
    #[arg(long)]
    study: String,
    /// Where to write the de-identified table (.csv or .parquet).
    #[arg(long)]
    out: PathBuf,
}

#[derive(Subcommand)]
enum RecordsCmd {
    /// The current version of each record.
    List {
        /// Only this patient's records.
        #[arg(long)]
        patient: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
    /// Decrypt and print a record (audited).
    Show {
        /// `ResourceType/id`.
        record: String,
        /// A version other than the current one.
        #[arg(long)]
        version: Option<i64>,
        /// Purpose of use, recorded in the audit log.
        #[arg(long, default_value = "treatment")]
        purpose: String,
    },
    /// Every version of a record, oldest first.
    History {
        /// `ResourceType/id`.
        record: String,
    },
}

#[derive(Subcommand)]
enum PatientCmd {
    /// Erase a patient by destroying their data key (crypto-shredding). Irreversible.
    Erase {
        /// The patient id.
        patient: String,
        /// Confirm that the erasure is intended.
        #[arg(long)]
        confirm: bool,
        /// Reason recorded in the audit log.
        #[arg(long, default_value = "erasure request")]
        purpose: String,
    },
}

#[derive(Subcommand)]
enum AuditCmd {
    /// Walk the hash chain and name the first broken entry.
    Verify,
    /// The latest entries.
    Log {
        /// At most this many.
        #[arg(long, default_value_t = 20)]
        limit: usize,
        /// Only entries about this record or patient.
        #[arg(long)]
        target: Option<String>,
    },
}

fn main() -> ExitCode {
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
            match e
                .chain()
                .any(cohort_engine::datadir::is_storage_failure)
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
        Command::Ingest { paths, purpose } => {
            let vault = unlock(cli, &dir()?, None)?;
            let r =
                ingest::ingest_paths(&vault, &Access::new(&cli.actor, purpose), paths, progress)?;
            emit(cli, &r, || ingest_text(&r));
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
        Command::Records(cmd) => records(cli, &dir()?, cmd),
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
            let access = Access::new(&cli.actor, purpose);
            // With a ledger, erasure withdraws the patient's consents first.
            let e = if cohort_engine::chain::load(&dir)?.is_some() {
                let rt = runtime()?;
                let session = rt.block_on(cohort_engine::research::Session::open(&dir, &vault))?;
                rt.block_on(session.erase(&vault, &access, patient))?
            } else {
                vault.erase_patient(&access, patient)?
            };
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
        Command::Audit(AuditCmd::Verify) => {
            let v = audit::verify(&dir()?.connect()?)?;
            emit(cli, &v, || verify_text(&v));
            Ok(if v.is_intact() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(3)
            })
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
        Command::Budget(cmd) => budget(cli, cmd),
        Command::Deidentify(args) => deidentify(cli, &dir()?, args),
        Command::Export { out } => {
            let files = projection::export_parquet(&dir()?.connect()?, out)?;
            emit(cli, &files, || {
                files
                    .iter()
                    .map(|f| format!("{:<13} {:>9} rows  {}", f.table, f.rows, f.path.display()))
                    .collect::<Vec<_>>()
                    .join("\n")
            });
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn anonymize(cli: &Cli, a: &AnonymizeArgs) -> anyhow::Result<ExitCode> {
    use cohort_anonymizer::mondrian::{self, Mode, Params, Request};
    use cohort_anonymizer::privacy_model::LDiversity;

    let started = std::time::Instant::now();
    let l_diversity = match (a.l, a.l_model) {
        (None, _) => None,
        (Some(l), LModel::Entropy) => Some(LDiversity::Entropy { l }),
        (Some(l), model) => {
            if l.fract() != 0.0 || l < 1.0 {
                bail!(
                    "--l {l}: distinct and recursive l-diversity need a whole number of at least 1"
                );
            }
            let l = l as usize;
            match model {
                LModel::Recursive => {
                    let c = a.c.context("recursive (c, l)-diversity needs --c")?;
                    Some(LDiversity::Recursive { c, l })
                }
                _ => Some(LDiversity::Distinct { l }),
            }
        }
    };
    let hierarchies = match &a.hierarchies {
        Some(p) => cohort_anonymizer::hierarchy::Hierarchies::load(p)?,
        None => Default::default(),
    };
    let input = cohort_engine::tabular::read(&a.input)?;
    let request = Request {
        quasi_identifiers: a.quasi_identifiers.clone(),
        sensitive: a.sensitive.clone(),
        keep: a.keep.clone(),
        hierarchies,
        params: Params {
            k: a.k,
            l_diversity,
            t_closeness: a.t,
            suppression_limit: a.suppression,
            mode: match a.mode {
                ModeArg::Strict => Mode::Strict,
                ModeArg::Relaxed => Mode::Relaxed,
            },
        },
    };
    let partitioning = std::time::Instant::now();
    let out = mondrian::anonymize(&input, &request)?;
    let anonymize_seconds = partitioning.elapsed().as_secs_f64();
    cohort_engine::tabular::write(&a.out, &out.batch)?;

    #[derive(Serialize)]
    struct Output<'a> {
        #[serde(flatten)]
        report: &'a mondrian::Report,
        k: usize,
        out: &'a Path,
        /// Reading, anonymizing and writing.
        seconds: f64,
        /// Anonymizing alone (in memory).
        anonymize_seconds: f64,
    }
    let r = &out.report;
    let seconds = started.elapsed().as_secs_f64();
    emit(
        cli,
        &Output {
            report: r,
            k: a.k,
            out: &a.out,
            seconds,
            anonymize_seconds,
        },
        || {
            let mut lines = vec![
                format!(
                    "anonymized {} rows to {} in {seconds:.2} s ({anonymize_seconds:.2} s partitioning)",
                    r.rows_in,
                    a.out.display()
                ),
                format!(
                    "  released {} rows in {} classes (smallest {}, average {:.1}); suppressed {} ({:.2}%)",
                    r.rows_out,
                    r.classes,
                    r.min_class_size,
                    r.average_class_size,
                    r.suppressed,
                    100.0 * r.suppressed as f64 / r.rows_in.max(1) as f64
                ),
            ];
            if let (Some(l), Some(e)) = (r.l_distinct, r.l_entropy) {
                lines.push(format!(
                    "  sensitive values per class: at least {l} distinct, entropy l {e:.2}"
                ));
            }
            if let Some(t) = r.t {
                lines.push(format!(
                    "  largest distance from the overall distribution: t = {t:.3}"
                ));
            }
            lines.push(format!(
                "  information loss: NCP {:.4}, discernibility {:.3e}",
                r.ncp, r.discernibility
            ));
            for (c, v) in &r.ncp_by_column {
                lines.push(format!("    {c:<24} NCP {v:.4}"));
            }
            lines.join("\n")
        },
    );
    Ok(ExitCode::SUCCESS)
}

fn dp_release(cli: &Cli, a: &DpArgs) -> anyhow::Result<ExitCode> {
    use cohort_anonymizer::dp::Privacy;
    use cohort_engine::release::{self, Request, Statistic};

    let privacy = match (a.epsilon, a.rho) {
        (Some(epsilon), None) => Privacy::Pure { epsilon },
        (None, Some(rho)) => Privacy::Zcdp { rho },
        _ => bail!("give --epsilon or --rho"),
    };
    let statistic = match &a.statistic {
        StatisticCmd::Count => Statistic::Count,
        StatisticCmd::Sum {
            column,
            lower,
            upper,
        } => Statistic::Sum {
            column: column.clone(),
            lower: *lower,
            upper: *upper,
        },
        StatisticCmd::Mean {
            column,
            lower,
            upper,
        } => Statistic::Mean {
            column: column.clone(),
            lower: *lower,
            upper: *upper,
        },
        StatisticCmd::Histogram { column, domain } => Statistic::Histogram {
            column: column.clone(),
            domain: domain.clone(),
        },
        StatisticCmd::Keys { column, delta } => Statistic::Keys {
            column: column.clone(),
            delta: *delta,
        },
        StatisticCmd::Quantile {
            column,
            alpha,
            candidates,
        } => Statistic::Quantile {
            column: column.clone(),
            alpha: *alpha,
            candidates: candidates.clone(),
        },
    };
    let request = Request {
        statistic,
        unit: a.unit.clone(),
        max_rows: a.max_rows,
        privacy,
        deadline: (a.deadline_ms > 0).then(|| std::time::Duration::from_millis(a.deadline_ms)),
    };
    request.charge()?;
    let table = cohort_engine::tabular::read(&a.input)?;
    let outcome = match &a.budget {
        Some(file) => {
            let id = a.query_id.clone().unwrap_or_else(release::new_query_id);
            release::release_with_budget(file, &id, &table, &request)?
        }
        None => release::release_unbudgeted(&table, &request)?,
    };
    emit(cli, &outcome, || {
        let mut lines = vec![
            format!("{} = {}", outcome.statistic, outcome.value),
            format!(
                "  {} noise, scale {:.4}, 95% within ±{:.4}; cost {}",
                outcome.mechanism, outcome.scale, outcome.accuracy_95, outcome.charge
            ),
        ];
        if let Some(d) = &outcome.debit {
            lines.push(format!(
                "  debited as {}; remaining {}",
                d.query_id, d.remaining
            ));
        }
        lines.join("\n")
    });
    Ok(ExitCode::SUCCESS)
}

/// `--epsilon`, `--rho`, `--delta` and `--split` of `cohort query`, parsed.
struct QueryOptions {
    epsilon: Option<cohort_anonymizer::accountant::Amount>,
    rho: Option<cohort_anonymizer::accountant::Amount>,
    delta: Option<cohort_anonymizer::accountant::Amount>,
    weights: std::collections::BTreeMap<String, u32>,
}

fn query_options(a: &QueryArgs) -> anyhow::Result<QueryOptions> {
    use cohort_anonymizer::accountant::Amount;
    let amount = |name: &str, v: &Option<String>| -> anyhow::Result<Option<Amount>> {
        v.as_deref()
            .map(|v| {
                v.parse::<Amount>()
                    .map_err(|e| anyhow::anyhow!("--{name} {v}: {e}"))
            })
            .transpose()
    };
    let mut weights = std::collections::BTreeMap::new();
    for item in &a.split {
        let (name, weight) = item
            .rsplit_once('=')
            .ok_or_else(|| anyhow::anyhow!("--split {item}: expected name=weight"))?;
        let weight: u32 = weight
            .parse()
            .map_err(|_| anyhow::anyhow!("--split {item}: the weight must be a whole number"))?;
        weights.insert(name.to_string(), weight);
    }
    Ok(QueryOptions {
        epsilon: amount("epsilon", &a.epsilon)?,
        rho: amount("rho", &a.rho)?,
        delta: amount("delta", &a.delta)?,
        weights,
    })
}

fn sql_query(cli: &Cli, a: &QueryArgs) -> anyhow::Result<ExitCode> {
    use cohort_engine::sql::{self, SqlRequest};

    let QueryOptions {
        epsilon,
        rho,
        delta,
        weights,
    } = query_options(a)?;
    let request = SqlRequest {
        study: PathBuf::from(&a.study),
        sql: a.sql.clone(),
        budget: a.budget.clone(),
        query_id: a.query_id.clone(),
        epsilon,
        rho,
        delta,
        weights,
        explain: a.explain,
    };
    let outcome = sql::query(&request)?;
    emit(cli, &outcome, || {
        if let Some(explain) = &outcome.explain {
            return explain.trim_end().to_string();
        }
        let mut lines = render_table(&outcome.columns, &outcome.rows);
        lines.push(String::new());
        lines.push("each release with its 95% error:".into());
        for r in &outcome.releases {
            let parts: Vec<String> = r
                .groups
                .iter()
                .zip(r.values.iter().zip(&r.error_95))
                .map(|(g, (v, e))| {
                    let label = if g.is_empty() {
                        String::new()
                    } else {
                        format!("{g}: ")
                    };
                    format!("{label}{} ± {}", short(*v), short(*e))
                })
                .collect();
            lines.push(format!("  {}  {}", r.output, parts.join("; ")));
        }
        let mut summary = format!("cost {}", outcome.cost);
        if let Some(d) = &outcome.debit {
            summary.push_str(&format!(
                "; debited as {}, remaining {}",
                d.query_id, d.remaining
            ));
        }
        lines.push(summary);
        lines.join("\n")
    });
    Ok(ExitCode::SUCCESS)
}

/// A number with at most 4 decimals, for text output.
fn short(x: f64) -> String {
    let text = format!("{x:.4}");
    let text = text.trim_end_matches('0').trim_end_matches('.');
    text.to_string()
}

/// Rows as an aligned text table.
fn render_table(columns: &[String], rows: &[Vec<serde_json::Value>]) -> Vec<String> {
    let cell = |v: &serde_json::Value| match v {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Number(n) => n.as_f64().map_or(n.to_string(), |x| {
            if n.is_f64() { short(x) } else { n.to_string() }
        }),
        other => other.to_string(),
    };
    let cells: Vec<Vec<String>> = rows.iter().map(|r| r.iter().map(cell).collect()).collect();
    let mut widths: Vec<usize> = columns.iter().map(|c| c.chars().count()).collect();
    for row in &cells {
        for (i, c) in row.iter().enumerate() {
            widths[i] = widths[i].max(c.chars().count());
        }
    }
    let line = |values: Vec<&str>| {
        values
            .iter()
            .enumerate()
            .map(|(i, v)| format!("{v:<width$}", width = widths[i]))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_string()
    };
    let mut out = vec![line(columns.iter().map(String::as_str).collect())];
    out.push(
        widths
            .iter()
            .map(|w| "-".repeat(*w))
            .collect::<Vec<_>>()
            .join("  "),
    );
    for row in &cells {
        out.push(line(row.iter().map(String::as_str).collect()));
    }
    out
}

fn budget(cli: &Cli, cmd: &BudgetCmd) -> anyhow::Result<ExitCode> {
    use cohort_anonymizer::accountant::{Accountant, Amount, Budget};
    use cohort_engine::release::{load_budget, save_budget};

    let amount = |name: &str, v: &str| -> anyhow::Result<Amount> {
        v.parse::<Amount>()
            .map_err(|e| anyhow::anyhow!("--{name} {v}: {e}"))
    };
    let accountant = match cmd {
        BudgetCmd::Init {
            file,
            epsilon,
            delta,
            rho,
        } => {
            if file.exists() {
                bail!(
                    "{} exists; a budget file is never overwritten (it records spending)",
                    file.display()
                );
            }
            let budget = match (epsilon, delta, rho) {
                (Some(e), None, None) => Budget::Pure {
                    epsilon: amount("epsilon", e)?,
                },
                (Some(e), Some(d), None) => Budget::Approx {
                    epsilon: amount("epsilon", e)?,
                    delta: amount("delta", d)?,
                },
                (None, None, Some(r)) => Budget::Zcdp {
                    rho: amount("rho", r)?,
                },
                _ => bail!("give --epsilon [--delta] or --rho"),
            };
            let a = Accountant::new(budget);
            save_budget(file, &a)?;
            a
        }
        BudgetCmd::Show { file } => load_budget(file)?,
        BudgetCmd::Release { file, query_id } => {
            let mut a = load_budget(file)?;
            a.release(&cohort_anonymizer::accountant::QueryId::new(
                query_id.as_str(),
            ))?;
            save_budget(file, &a)?;
            a
        }
    };
    #[derive(Serialize)]
    struct Summary {
        budget: String,
        committed: String,
        reserved: String,
        remaining: String,
        queries: usize,
    }
    let s = Summary {
        budget: accountant.budget().to_string(),
        committed: accountant.committed().to_string(),
        reserved: accountant.reserved().to_string(),
        remaining: accountant.remaining().to_string(),
        queries: accountant.committed_queries().count(),
    };
    emit(cli, &s, || {
        format!(
            "budget {}\n  committed {} over {} queries\n  reserved  {}\n  remaining {}",
            s.budget, s.committed, s.queries, s.reserved, s.remaining
        )
    });
    Ok(ExitCode::SUCCESS)
}

fn deidentify(cli: &Cli, dir: &DataDir, a: &DeidentifyArgs) -> anyhow::Result<ExitCode> {
    use cohort_anonymizer::deid::{self, Policy, PseudonymKey};

    let policy = match (&a.policy, &a.table) {
        (Some(p), _) => {
            let text =
                std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
            Policy::from_toml(&text).with_context(|| format!("policy {}", p.display()))?
        }
        (None, Some(t)) => cohort_engine::safe_harbor::policy(t, chrono::Utc::now().date_naive())?,
        (None, None) => bail!("--input needs --policy"),
    };
    let vault = unlock(cli, dir, None)?;
    let table = match (&a.table, &a.input) {
        (Some(t), _) => projection::read_table(vault.conn(), t)?,
        (None, Some(p)) => cohort_engine::tabular::read(p)?,
        (None, None) => bail!("give --table or --input"),
    };
    let master = vault.pseudonym_master()?;
    let key = PseudonymKey::derive(master.expose(), &a.study);
    let (out, report) = deid::deidentify(&table, &policy, &key)?;
    cohort_engine::tabular::write(&a.out, &out)?;
    emit(cli, &report, || {
        let mut lines = vec![format!(
            "de-identified {} rows to {}{}",
            report.rows,
            a.out.display(),
            if report.safe_harbor {
                " (Safe Harbor)"
            } else {
                " (date shifts: not Safe Harbor on their own)"
            }
        )];
        for c in &report.columns {
            lines.push(format!(
                "  {:<16} {:<10} {} changed  {}{}",
                c.column,
                c.output_type,
                c.changed,
                c.action,
                c.identifier
                    .map(|k| format!("  [identifier: {k}]"))
                    .unwrap_or_default()
            ));
        }
        lines.join("\n")
    });
    Ok(ExitCode::SUCCESS)
}

fn records(cli: &Cli, dir: &DataDir, cmd: &RecordsCmd) -> anyhow::Result<ExitCode> {
    let vault = unlock(cli, dir, None)?;
    match cmd {
        RecordsCmd::List { patient, limit } => {
            let list = vault.list(patient.as_deref(), *limit)?;
            emit(cli, &list, || {
                list.iter()
                    .map(|r| format!("{:<56} v{:<3} {}", r.record_id, r.version, r.cid))
                    .collect::<Vec<_>>()
                    .join("\n")
            });
        }
        RecordsCmd::Show {
            record,
            version,
            purpose,
        } => {
            let (rv, content) = vault.read(&Access::new(&cli.actor, purpose), record, *version)?;
            let resource: serde_json::Value = serde_json::from_slice(&content)?;
            if cli.json {
                out!(
                    "{}",
                    serde_json::json!({ "version": rv, "resource": resource })
                );
            } else {
                out!("{} version {} ({})", rv.record_id, rv.version, rv.cid);
                out!("{}", serde_json::to_string_pretty(&resource)?);
            }
        }
        RecordsCmd::History { record } => {
            let h = vault.history(record)?;
            emit(cli, &h, || {
                h.iter()
                    .map(|r| {
                        let prev = r
                            .prev_cid
                            .as_deref()
                            .map(|p| format!(" <- {p}"))
                            .unwrap_or_default();
                        format!("v{:<3} {}  {}{prev}", r.version, r.created_at, r.cid)
                    })
                    .collect::<Vec<_>>()
                    .join("\n")
            });
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Opens the vault. The passphrase comes from --passphrase-file, then
/// $COHORT_PASSPHRASE, then the demo's built-in passphrase (`demo` only),
/// then a prompt on a terminal.
fn unlock(cli: &Cli, dir: &DataDir, demo_default: Option<&str>) -> anyhow::Result<Vault> {
    let passphrase = passphrase(cli, dir, demo_default)?;
    Ok(dir.unlock(&passphrase)?)
}

fn passphrase(
    cli: &Cli,
    dir: &DataDir,
    demo_default: Option<&str>,
) -> anyhow::Result<zeroize::Zeroizing<String>> {
    if let Some(file) = &cli.passphrase_file {
        let text = read_secret(file)?;
        return Ok(zeroize::Zeroizing::new(
            text.trim_end_matches(['\n', '\r']).to_owned(),
        ));
    }
    if let Ok(p) = std::env::var("COHORT_PASSPHRASE") {
        return Ok(zeroize::Zeroizing::new(p));
    }
    if let Some(d) = demo_default {
        if !dir.has_keystore() {
            eprintln!(
                "note: creating the keystore with the demo passphrase `{d}`; set COHORT_PASSPHRASE for real data"
            );
        }
        return Ok(zeroize::Zeroizing::new(d.to_owned()));
    }
    if !std::io::stdin().is_terminal() {
        bail!(
            "the keystore {} needs a passphrase: set COHORT_PASSPHRASE or pass --passphrase-file",
            dir.keystore_path().display()
        );
    }
    let prompt = if dir.has_keystore() {
        "Keystore passphrase: "
    } else {
        "New keystore passphrase: "
    };
    Ok(zeroize::Zeroizing::new(rpassword::prompt_password(prompt)?))
}

fn read_secret(file: &Path) -> anyhow::Result<String> {
    std::fs::read_to_string(file)
        .with_context(|| format!("reading the passphrase file {}", file.display()))
}

fn emit<T: Serialize>(cli: &Cli, value: &T, text: impl FnOnce() -> String) {
    if cli.json {
        out!("{}", serde_json::to_string(value).expect("serializable"));
    } else {
        out!("{}", text());
    }
}

fn ingest_text(r: &ingest::Report) -> String {
    let mut s = format!(
        "ingested {} bundles, {} resources ({} new, {} updated, {} unchanged) in {:.1}s: {:.0} resources/s",
        r.bundles,
        r.resources,
        r.created,
        r.updated,
        r.unchanged,
        r.seconds,
        r.resources_per_second
    );
    if !r.skipped.is_empty() {
        let parts: Vec<String> = r
            .skipped
            .iter()
            .map(|(t, n)| format!("{t} ({n})"))
            .collect();
        s += &format!("\nskipped unsupported resource types: {}", parts.join(", "));
    }
    for rej in &r.rejected {
        s += &format!(
            "\nrejected {}: nothing from it was stored: {}",
            rej.source, rej.reason
        );
    }
    s
}

fn counts_text(c: &projection::Counts) -> String {
    c.tables
        .iter()
        .map(|(t, n)| format!("{t:<13} {n:>10}"))
        .collect::<Vec<_>>()
        .join("\n")
}

fn verify_text(v: &audit::Verification) -> String {
    match &v.first_broken {
        None => format!("audit chain intact: {} entries, head {}", v.entries, v.head),
        Some(b) => format!("audit chain BROKEN at entry {}: {}", b.seq, b.reason),
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

fn ledger(cli: &Cli, dir: &DataDir, cmd: &LedgerCmd) -> anyhow::Result<ExitCode> {
    use cohort_engine::chain;
    let rt = runtime()?;
    match cmd {
        LedgerCmd::Status => {
            let conn = dir.connect()?;
            let status = rt.block_on(chain::status(dir, &conn))?;
            emit(cli, &status, || {
                let mut lines = vec![
                    format!("backend    {}", status.backend),
                    format!("chain id   {}", status.chain_id),
                    format!("block      {}", status.block),
                ];
                match &status.contracts {
                    Some(c) => {
                        lines.push(format!("contracts  CohortAccess   {:#x}", c.access));
                        lines.push(format!("           PatientRecords {:#x}", c.records));
                        lines.push(format!("           ResearchStudy  {:#x}", c.study));
                        lines.push(format!("           Appointments   {:#x}", c.appointments));
                        lines.push(format!("           deployed at block {}", c.deployed_at));
                    }
                    None => {
                        lines.push("contracts  not deployed (run `cohort ledger deploy`)".into())
                    }
                }
                if let (Some(n), Some(m)) = (status.required_approvals, status.confirmations) {
                    lines.push(format!(
                        "approvals  {n} stewards per study; follower waits for {m} confirmation(s)"
                    ));
                }
                match (&status.follower, status.follower_behind) {
                    (Some(p), Some(behind)) => lines.push(format!(
                        "follower   at block {} ({:#x}), {behind} block(s) behind",
                        p.block, p.block_hash
                    )),
                    (None, Some(behind)) => lines.push(format!(
                        "follower   not started, {behind} block(s) to apply (run `cohort ledger sync`)"
                    )),
                    _ => {}
                }
                lines.join("\n")
            });
        }
        LedgerCmd::Deploy {
            rpc_url,
            approvals,
            confirmations,
            redeploy,
        } => {
            let vault = unlock(cli, dir, None)?;
            let request = chain::DeployRequest {
                rpc_url: rpc_url.clone(),
                approvals: *approvals,
                confirmations: *confirmations,
                admin: cli.actor.clone(),
                redeploy: *redeploy,
            };
            let config = rt.block_on(chain::deploy(dir, vault.conn(), vault.keys(), &request))?;
            cohort_engine::audit::append(
                vault.conn(),
                &cohort_engine::audit::Event {
                    actor: &cli.actor,
                    action: "ledger.deploy",
                    target: &format!("chain/{}", config.chain_id),
                    purpose: "operations",
                    detail: serde_json::to_value(config.contracts).expect("addresses serialise"),
                },
            )?;
            emit(cli, &config, || {
                let c = &config.contracts;
                format!(
                    "deployed on chain {} by `{}` (block {}):\n  CohortAccess   {:#x}\n  PatientRecords {:#x}\n  ResearchStudy  {:#x}\n  Appointments   {:#x}\nENGINE role granted to `{}`; {} steward approvals per study",
                    config.chain_id,
                    config.admin,
                    c.deployed_at,
                    c.access,
                    c.records,
                    c.study,
                    c.appointments,
                    config.engine,
                    config.required_approvals
                )
            });
        }
        LedgerCmd::Sync => {
            let mut conn = dir.connect()?;
            let report = rt.block_on(chain::sync(dir, &mut conn))?;
            emit(cli, &report, || {
                match (report.from_block, report.to_block) {
                    (Some(from), Some(to)) => format!(
                        "applied blocks {from}..={to}: {} event(s); head {}, {} block(s) awaiting confirmations",
                        report.events, report.head, report.unconfirmed
                    ),
                    _ => format!(
                        "up to date at head {} ({} block(s) awaiting confirmations)",
                        report.head, report.unconfirmed
                    ),
                }
            });
        }
        LedgerCmd::Verify => {
            let verified = chain::verify(dir)?;
            emit(cli, &verified, || {
                format!(
                    "verified {} block(s) and {} transaction(s): every block hashes to its header \
                     and transactions, every signature to its recorded sender",
                    verified.blocks, verified.transactions
                )
            });
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn account(cli: &Cli, dir: &DataDir, cmd: &AccountCmd) -> anyhow::Result<ExitCode> {
    use cohort_engine::accounts;
    match cmd {
        AccountCmd::List => {
            let list = accounts::list(&dir.connect()?)?;
            emit(cli, &list, || {
                if list.is_empty() {
                    return "no accounts yet (`cohort account new NAME`)".into();
                }
                list.iter()
                    .map(|a| format!("{:<16} {}", a.name, a.address))
                    .collect::<Vec<_>>()
                    .join("\n")
            });
        }
        AccountCmd::New { name, patient } => {
            let vault = unlock(cli, dir, None)?;
            if accounts::address_of(vault.conn(), name)?.is_some() {
                bail!("account `{name}` already exists (`cohort account list` shows it)");
            }
            let account = match patient {
                Some(p) => cohort_engine::research::link_patient(vault.conn(), &vault, name, p)?,
                None => accounts::get_or_create(vault.conn(), vault.keys(), name)?,
            };
            let info =
                serde_json::json!({ "name": name, "address": format!("{:#x}", account.address()) });
            emit(cli, &info, || format!("{name} {:#x}", account.address()));
        }
        AccountCmd::Fund { name, amount } => {
            let wei = cohort_engine::research::study::parse_wei("the amount", amount)?;
            let address = accounts::address_of(&dir.connect()?, name)?
                .with_context(|| format!("no account `{name}` (`cohort account new {name}`)"))?;
            let address: cohort_ledger_bridge::alloy::primitives::Address = address.parse()?;
            let rt = runtime()?;
            let (config, client) = rt.block_on(cohort_engine::chain::client(dir))?;
            if !matches!(
                config.backend,
                cohort_engine::chain::BackendConfig::Embedded { .. }
            ) {
                bail!(
                    "`account fund` mints ether on the embedded chain; on a node, send ether to {address:#x} from a funded account"
                );
            }
            let balance = rt.block_on(client.ledger().balance(address))? + wei;
            rt.block_on(client.ledger().set_balance(address, balance))?;
            let info = serde_json::json!({ "name": name, "address": format!("{address:#x}"), "balance": balance.to_string() });
            emit(cli, &info, || {
                format!(
                    "{name} now holds {}",
                    cohort_engine::research::study::format_wei(balance)
                )
            });
        }
        AccountCmd::Grant { name, role, via } | AccountCmd::Revoke { name, role, via } => {
            let grant = matches!(cmd, AccountCmd::Grant { .. });
            let role: cohort_ledger_bridge::Role =
                role.parse().map_err(|e: String| anyhow::anyhow!(e))?;
            let changed = match &via.server {
                Some(server) => serve_cli::change_role(
                    cli,
                    dir,
                    server,
                    via.ca_cert.as_deref(),
                    via.totp.as_deref(),
                    name,
                    role,
                    grant,
                )?,
                None => {
                    let vault = unlock(cli, dir, None)?;
                    let admin = accounts::get(vault.conn(), vault.keys(), &cli.actor)?;
                    let rt = runtime()?;
                    let (_, client) = rt.block_on(cohort_engine::chain::client(dir))?;
                    rt.block_on(cohort_engine::roles::change(
                        vault.conn(),
                        vault.keys(),
                        &client,
                        &admin,
                        name,
                        role,
                        grant,
                    ))?
                }
            };
            emit(cli, &changed, || {
                format!(
                    "{} {} {} {name} ({})",
                    if changed.granted {
                        "granted"
                    } else {
                        "revoked"
                    },
                    changed.role,
                    if changed.granted { "to" } else { "from" },
                    changed.address
                )
            });
        }
        AccountCmd::Totp { name, replace } => {
            let vault = unlock(cli, dir, None)?;
            let enrolled =
                cohort_engine::second_factor::enroll(vault.conn(), vault.keys(), name, *replace)?;
            cohort_engine::audit::append(
                vault.conn(),
                &cohort_engine::audit::Event {
                    actor: &cli.actor,
                    action: "account.totp.enroll",
                    target: name,
                    purpose: "operations",
                    detail: serde_json::json!({ "replaced": replace }),
                },
            )?;
            emit(cli, &enrolled, || {
                format!(
                    "second factor enrolled for {name}; add it to an authenticator app (shown once):\n  secret: {}\n  {}",
                    enrolled.secret, enrolled.otpauth_uri
                )
            });
        }
    }
    Ok(ExitCode::SUCCESS)
}
