//! The `cohort` command-line tool: one binary for every role and the demo.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use cohort_engine::vault::{Access, Vault};
use cohort_engine::{DataDir, audit, generate, ingest, projection};
use serde::Serialize;

/// cohort: privacy-preserving research analytics over encrypted health records.
#[derive(Parser)]
#[command(name = "cohort", version, about, long_about = None)]
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
    /// Generate a small synthetic cohort, ingest it, and show counts and a verified audit chain.
    Demo {
        /// Patients to generate.
        #[arg(long, default_value_t = 200)]
        patients: u64,
        /// Seed for the synthetic population.
        #[arg(long, default_value_t = 42)]
        seed: u64,
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
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("COHORT_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match run(&cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: &Cli) -> anyhow::Result<ExitCode> {
    // Opened on demand: `generate` does not touch the data directory.
    let dir = || DataDir::open(&cli.data_dir);
    let progress = !cli.json && std::io::stderr().is_terminal();
    match &cli.command {
        Command::Demo { patients, seed } => demo(cli, &dir()?, *patients, *seed),
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
            let vault = unlock(cli, &dir()?, None)?;
            let e = vault.erase_patient(&Access::new(&cli.actor, purpose), patient)?;
            emit(cli, &e, || {
                format!(
                    "erased patient {}: data key destroyed, {} record versions unreadable, {} projection rows removed",
                    e.patient_id, e.versions_shredded, e.projection_rows_removed
                )
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
                println!(
                    "{}",
                    serde_json::json!({ "version": rv, "resource": resource })
                );
            } else {
                println!("{} version {} ({})", rv.record_id, rv.version, rv.cid);
                println!("{}", serde_json::to_string_pretty(&resource)?);
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

fn demo(cli: &Cli, dir: &DataDir, patients: u64, seed: u64) -> anyhow::Result<ExitCode> {
    let say = |s: &str| {
        if !cli.json {
            println!("{s}");
        }
    };
    let progress = !cli.json && std::io::stderr().is_terminal();
    say(&format!(
        "cohort demo: data directory {}",
        dir.root().display()
    ));

    let bundles = dir.root().join("demo").join("bundles");
    say(&format!(
        "\n1. Generating {patients} synthetic patients (seed {seed}) as FHIR R4 bundles"
    ));
    let generated = generate::generate(&generate::Options {
        progress,
        ..generate::Options::new(patients, seed, &bundles)
    })?;
    say(&format!(
        "   {} resources in {} bundles under {}",
        generated.resources,
        generated.bundles,
        bundles.display()
    ));

    say(
        "\n2. Ingesting: each resource encrypted with its patient's key, stored under its IPFS CID",
    );
    let vault = unlock(cli, dir, Some("cohort-demo"))?;
    let access = Access::new(&cli.actor, "demo ingest");
    let report = ingest::ingest_paths(&vault, &access, &[bundles], progress)?;
    say(&format!(
        "   {}",
        ingest_text(&report).replace('\n', "\n   ")
    ));

    say("\n3. The columnar projection (Arrow tables for research)");
    let counts = projection::counts(vault.conn())?;
    say(&format!(
        "   {}",
        counts_text(&counts).replace('\n', "\n   ")
    ));

    let sample = vault.list(None, 1)?;
    if let Some(r) = sample.first() {
        say("\n4. A record's version history (every update links to the previous block)");
        for v in vault.history(&r.record_id)? {
            say(&format!("   {} v{} {}", v.record_id, v.version, v.cid));
        }
    }

    say("\n5. Verifying the audit log's hash chain");
    let verification = audit::verify(vault.conn())?;
    say(&format!("   {}", verify_text(&verification)));
    if cli.json {
        println!(
            "{}",
            serde_json::json!({ "generated": generated, "ingest": report, "counts": counts, "audit": verification })
        );
    }
    Ok(if verification.is_intact() && report.rejected.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
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
        println!("{}", serde_json::to_string(value).expect("serializable"));
    } else {
        println!("{}", text());
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
