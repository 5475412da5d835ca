//! What every command shares: unlocking the vault, reading secrets, the
//! runtime, and printing a result as text or `--json`.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use cohort_engine::keys::config::StoreKind;
use cohort_engine::keys::keystore::{KdfParams, KeyStore};
use cohort_engine::records::vault::Vault;
use cohort_engine::{DataDir, audit, records::ingest, records::projection};
use serde::Serialize;

use crate::Cli;

/// Which `cohort serve` to talk to, and the certificate to trust.
#[derive(clap::Args)]
pub(crate) struct ServerArgs {
    /// The server, e.g. https://127.0.0.1:50051.
    #[arg(long, env = "COHORT_SERVER")]
    pub(crate) server: String,
    /// The certificate (PEM) to trust for an https server; default: the
    /// one `cohort serve` generated in this data directory.
    #[arg(long, env = "COHORT_CA_CERT")]
    pub(crate) ca_cert: Option<PathBuf>,
}

/// A number with at most 4 decimals, for text output.
pub(crate) fn short(x: f64) -> String {
    let text = format!("{x:.4}");
    let text = text.trim_end_matches('0').trim_end_matches('.');
    text.to_string()
}

/// Rows as an aligned text table.
pub(crate) fn render_table(columns: &[String], rows: &[Vec<serde_json::Value>]) -> Vec<String> {
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

/// Opens the vault. The passphrase comes from --passphrase-file, then
/// $COHORT_PASSPHRASE, then the demo's built-in passphrase (`demo` only),
/// then a prompt on a terminal.
/// A data directory set up for an HSM (`keys.toml`) needs no passphrase:
/// its PIN comes from `[keys] pin_file` or `$COHORT_HSM_PIN`.
pub(crate) fn unlock(
    cli: &Cli,
    dir: &DataDir,
    demo_default: Option<&str>,
) -> anyhow::Result<Vault> {
    let keys = open_keystore(cli, dir, demo_default)?;
    Ok(dir.unlock_keys(keys)?)
}

/// The data directory's keystore, opened (see [`unlock`]); a refusal is
/// audited by the engine.
pub(crate) fn open_keystore(
    cli: &Cli,
    dir: &DataDir,
    demo_default: Option<&str>,
) -> anyhow::Result<std::sync::Arc<dyn KeyStore>> {
    let passphrase = match dir.keys_config()?.store {
        StoreKind::File => Some(passphrase(cli, dir, demo_default)?),
        StoreKind::Pkcs11 => None,
    };
    Ok(dir.open_keystore(
        &cli.actor,
        passphrase.as_deref().map(String::as_str),
        KdfParams::default(),
        |k| std::env::var(k).ok(),
    )?)
}

pub(crate) fn passphrase(
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

pub(crate) fn read_secret(file: &Path) -> anyhow::Result<String> {
    std::fs::read_to_string(file)
        .with_context(|| format!("reading the passphrase file {}", file.display()))
}

pub(crate) fn emit<T: Serialize>(cli: &Cli, value: &T, text: impl FnOnce() -> String) {
    if cli.json {
        out!("{}", serde_json::to_string(value).expect("serializable"));
    } else {
        out!("{}", text());
    }
}

pub(crate) fn ingest_text(r: &ingest::Report) -> String {
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

pub(crate) fn counts_text(c: &projection::Counts) -> String {
    c.tables
        .iter()
        .map(|(t, n)| format!("{t:<13} {n:>10}"))
        .collect::<Vec<_>>()
        .join("\n")
}

pub(crate) fn verify_text(v: &audit::Verification) -> String {
    match &v.first_broken {
        None => format!("audit chain intact: {} entries, head {}", v.entries, v.head),
        Some(b) => format!("audit chain BROKEN at entry {}: {}", b.seq, b.reason),
    }
}

pub(crate) fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

/// `f` of every item, each on a thread of its own, results in the items'
/// order: the demo asks questions at once, as a server's clients would, so
/// their waits for their deadlines overlap.
pub(crate) fn at_once<I: Sync, T: Send>(items: &[I], f: impl Fn(&I) -> T + Sync) -> Vec<T> {
    let f = &f;
    std::thread::scope(|scope| {
        let running: Vec<_> = items.iter().map(|i| scope.spawn(move || f(i))).collect();
        running.into_iter().map(joined).collect()
    })
}

/// A scoped thread's result; its panic, if it panicked, goes on here.
pub(crate) fn joined<T>(handle: std::thread::ScopedJoinHandle<'_, T>) -> T {
    handle
        .join()
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
}
