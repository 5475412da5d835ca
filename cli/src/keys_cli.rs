//! `cohort keys`: which keystore a data directory uses, rotating its
//! key-encryption key, changing the file keystore's passphrase, and
//! setting a new directory up for an HSM.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::bail;
use clap::Subcommand;
use cohort_engine::DataDir;
use cohort_engine::keys::config::{KeysConfig, StoreKind};
use cohort_engine::keys::keystore::KdfParams;
use cohort_engine::rotation::{self, RotateOptions};
use zeroize::Zeroizing;

use crate::Cli;
use crate::cli_common::{emit, passphrase, read_secret, unlock};

#[derive(Subcommand)]
pub(crate) enum KeysCmd {
    /// Which keystore the data directory uses, and how many wrapped keys
    /// each key-encryption key (KEK) wraps (no passphrase needed).
    Status,
    /// Rotate the KEK: a new one is made current, every wrapped key is
    /// re-wrapped under it in small transactions (a running `cohort serve`
    /// keeps serving), then the old KEK is destroyed. An interrupted
    /// rotation is finished by running this again.
    Rotate {
        /// Keys re-wrapped per transaction.
        #[arg(long, default_value_t = 100)]
        batch: usize,
    },
    /// Re-seal the file keystore under a new passphrase (atomically; the
    /// old passphrase stops working). The new passphrase comes from
    /// --new-passphrase-file, else $COHORT_NEW_PASSPHRASE, else a prompt
    /// asked twice; the current one as for every command.
    Passphrase {
        /// A file holding the new passphrase.
        #[arg(long, env = "COHORT_NEW_PASSPHRASE_FILE")]
        new_passphrase_file: Option<PathBuf>,
    },
    /// Make the deployment's tfhe key set now (the custodian's: its client
    /// key sealed in the keystore, a server key of about 240 MB under
    /// research/fhe/tfhe), instead of at the first approval of a study with
    /// a tfhe column, which otherwise waits for it (seconds of CPU on every
    /// core). Does nothing if the set exists; callers at once make one set.
    Tfhe,
    /// Keep this new data directory's keys in a PKCS#11 HSM instead of the
    /// passphrase file: opens the token (the PIN from --pin-file, else
    /// $COHORT_HSM_PIN), makes the first KEK inside it, and records the
    /// choice in <data-dir>/keys.toml. Refused for a directory that already
    /// keeps keys.
    UseHsm {
        /// The PKCS#11 module, e.g. /usr/lib/softhsm/libsofthsm2.so.
        #[arg(long)]
        module: PathBuf,
        /// The token's label.
        #[arg(long)]
        token_label: String,
        /// The KEK objects' label [default: cohort-kek].
        #[arg(long)]
        kek_label: Option<String>,
        /// A file holding the user PIN (recorded; else $COHORT_HSM_PIN at
        /// every use).
        #[arg(long)]
        pin_file: Option<PathBuf>,
    },
}

pub(crate) fn keys(cli: &Cli, dir: &DataDir, cmd: &KeysCmd) -> anyhow::Result<ExitCode> {
    match cmd {
        KeysCmd::Status => {
            let config = dir.keys_config()?;
            let census = rotation::census(&dir.connect()?)?;
            let store = match config.store {
                StoreKind::File => format!("file keystore {}", dir.keystore_path().display()),
                StoreKind::Pkcs11 => format!(
                    "PKCS#11 token `{}` of {}",
                    config.token_label.as_deref().unwrap_or("?"),
                    config
                        .module
                        .as_ref()
                        .map_or("?".into(), |m| m.display().to_string())
                ),
            };
            let value = serde_json::json!({ "keystore": config, "wrapped_keys_by_kek": census });
            emit(cli, &value, || {
                let mut lines = vec![format!("keystore: {store}")];
                if census.is_empty() {
                    lines.push("no wrapped keys yet".into());
                }
                for (kek, n) in &census {
                    lines.push(format!("{n:>8} wrapped keys under {kek}"));
                }
                if census.len() > 1 {
                    lines.push(
                        "more than one KEK is in use: a rotation is unfinished; run `cohort keys rotate` to finish it"
                            .into(),
                    );
                }
                lines.join("\n")
            });
        }
        KeysCmd::Rotate { batch } => {
            let vault = unlock(cli, dir, None)?;
            let report = rotation::rotate(
                vault.conn(),
                vault.keys(),
                dir.root(),
                &cli.actor,
                &RotateOptions {
                    batch: *batch,
                    ..RotateOptions::default()
                },
            )?;
            emit(cli, &report, || {
                let total: usize = report.rewrapped.values().sum();
                let parts: Vec<String> = report
                    .rewrapped
                    .iter()
                    .map(|(k, n)| format!("{k} {n}"))
                    .collect();
                format!(
                    "{} {total} wrapped keys re-wrapped under {} ({}) in {} transactions; destroyed {}",
                    if report.resumed {
                        "finished an interrupted rotation:"
                    } else {
                        "rotated:"
                    },
                    report.current,
                    if parts.is_empty() {
                        "none needed it".into()
                    } else {
                        parts.join(", ")
                    },
                    report.batches,
                    if report.retired.is_empty() {
                        "nothing".into()
                    } else {
                        report.retired.join(", ")
                    }
                )
            });
        }
        KeysCmd::Passphrase {
            new_passphrase_file,
        } => {
            if dir.keys_config()?.store != StoreKind::File {
                // The engine's words, audited like any refusal.
                dir.open_file_keystore(&cli.actor, "")?;
            }
            if !dir.has_keystore() {
                bail!(
                    "the data directory {} has no keystore yet: it is made on first use",
                    dir.root().display()
                );
            }
            let current = passphrase(cli, dir, None)?;
            let keys = dir.open_file_keystore(&cli.actor, &current)?;
            let new = new_passphrase(new_passphrase_file.as_ref())?;
            rotation::change_passphrase(
                &dir.connect()?,
                &keys,
                &new,
                KdfParams::default(),
                &cli.actor,
            )?;
            emit(cli, &serde_json::json!({ "changed": true }), || {
                format!(
                    "the keystore {} is sealed under the new passphrase; the old one no longer opens it",
                    dir.keystore_path().display()
                )
            });
        }
        KeysCmd::Tfhe => {
            let vault = unlock(cli, dir, None)?;
            let made =
                cohort_engine::research::encryption::prepare_tfhe_keys(vault.keys(), dir.root())?;
            let at = dir.root().join("research").join("fhe").join("tfhe");
            if made {
                cohort_engine::audit::append(
                    vault.conn(),
                    &cohort_engine::audit::Event {
                        actor: &cli.actor,
                        action: "keys.tfhe.make",
                        target: "keystore",
                        purpose: "key management",
                        detail: serde_json::json!({ "dir": at }),
                    },
                )?;
            }
            emit(cli, &serde_json::json!({ "made": made, "dir": at }), || {
                if made {
                    format!("made the deployment's tfhe key set in {}", at.display())
                } else {
                    format!(
                        "the deployment's tfhe key set already exists in {}; nothing was changed",
                        at.display()
                    )
                }
            });
        }
        KeysCmd::UseHsm {
            module,
            token_label,
            kek_label,
            pin_file,
        } => {
            let config = KeysConfig {
                store: StoreKind::Pkcs11,
                module: Some(module.clone()),
                token_label: Some(token_label.clone()),
                kek_label: kek_label.clone(),
                pin_file: pin_file.clone(),
            };
            let kek = dir.use_hsm(&cli.actor, &config, |k| std::env::var(k).ok())?;
            emit(cli, &serde_json::json!({ "kek": kek }), || {
                format!(
                    "the data directory keeps its keys under {kek} in token `{token_label}` ({})",
                    dir.keys_config_path().display()
                )
            });
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The new passphrase: from `file`, else $COHORT_NEW_PASSPHRASE, else
/// asked twice on a terminal.
fn new_passphrase(file: Option<&PathBuf>) -> anyhow::Result<Zeroizing<String>> {
    if let Some(file) = file {
        let text = Zeroizing::new(read_secret(file)?);
        return Ok(Zeroizing::new(
            text.trim_end_matches(['\n', '\r']).to_owned(),
        ));
    }
    if let Ok(p) = std::env::var("COHORT_NEW_PASSPHRASE") {
        return Ok(Zeroizing::new(p));
    }
    if !std::io::stdin().is_terminal() {
        bail!("the new passphrase: set COHORT_NEW_PASSPHRASE or pass --new-passphrase-file");
    }
    let first = Zeroizing::new(rpassword::prompt_password("New keystore passphrase: ")?);
    let again = Zeroizing::new(rpassword::prompt_password("New passphrase again: ")?);
    if first != again {
        bail!("the two new passphrases differ; nothing was changed");
    }
    Ok(first)
}
