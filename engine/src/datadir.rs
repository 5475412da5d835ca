//! The data directory: everything one cohort installation keeps, in one place.
//!
//! ```text
//! <data-dir>/
//!   cohort.db        metadata, audit log, projection (SQLite, WAL)
//!   keystore.json    the passphrase-protected key-encryption keys (file keystore)
//!   keys.toml        which keystore the directory uses, when it is an HSM
//!   blocks/          encrypted record blocks, named by CID
//! ```
//! Two data directories share nothing, so tests and users run side by side.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::keys::config::{KeysConfig, StoreKind};
use crate::keys::keystore::{FileKeyStore, KdfParams, KeyStore};
use crate::records::vault::Vault;
use crate::storage::packstore::PackBlockStore;
use crate::{Error, Result};

/// Where the data directory is when nothing says otherwise.
pub const DEFAULT: &str = "./cohort-data";

/// An opened data directory.
#[derive(Debug, Clone)]
pub struct DataDir {
    root: PathBuf,
}

impl DataDir {
    /// Opens `root`, creating it (and its layout) on first use.
    pub fn open(root: &Path) -> Result<Self> {
        std::fs::create_dir_all(root.join("blocks")).map_err(|e| Error::io("creating", root, e))?;
        Ok(DataDir {
            root: root.to_owned(),
        })
    }

    /// The directory itself.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The metadata database file.
    pub fn db_path(&self) -> PathBuf {
        self.root.join("cohort.db")
    }

    /// The keystore file.
    pub fn keystore_path(&self) -> PathBuf {
        self.root.join("keystore.json")
    }

    /// The block directory.
    pub fn blocks_path(&self) -> PathBuf {
        self.root.join("blocks")
    }

    /// Opens the metadata database (no keys needed: audit, counts).
    pub fn connect(&self) -> Result<rusqlite::Connection> {
        crate::storage::store::open(&self.db_path())
    }

    /// The vault's block store (pack files, and the flat layout of older
    /// directories).
    pub fn block_store(&self) -> Result<PackBlockStore> {
        PackBlockStore::open(&self.blocks_path())
    }

    /// Whether the keystore exists yet.
    pub fn has_keystore(&self) -> bool {
        self.keystore_path().exists()
    }

    /// The file recording which keystore the directory uses (absent: the
    /// file keystore).
    pub fn keys_config_path(&self) -> PathBuf {
        self.root.join("keys.toml")
    }

    /// Which keystore the directory uses: what `keys.toml` records, else
    /// the file keystore (every directory made before the HSM keystore).
    pub fn keys_config(&self) -> Result<KeysConfig> {
        let path = self.keys_config_path();
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(KeysConfig::default()),
            Err(e) => return Err(Error::io("reading", &path, e)),
        };
        let config: KeysConfig = toml::from_str(&text)
            .map_err(|e| Error::Invalid(format!("{}: {e}", path.display())))?;
        config
            .check()
            .map_err(|e| Error::Invalid(format!("{}: {e}", path.display())))?;
        Ok(config)
    }

    /// Makes `wanted` the directory's keystore, or checks that it already
    /// is. A directory that already keeps keys under one keystore is never
    /// switched to another by a configuration change (its keys would no
    /// longer unwrap): that is refused, naming both.
    pub fn select_keys(&self, wanted: &KeysConfig) -> Result<()> {
        if self.check_keys(wanted)? {
            crate::storage::fsutil::write_atomic(
                &self.keys_config_path(),
                wanted.to_toml().as_bytes(),
            )?;
        }
        Ok(())
    }

    /// Whether `wanted` may become the directory's keystore: `Ok(false)`
    /// if it already is, `Ok(true)` if the directory keeps no keys yet.
    fn check_keys(&self, wanted: &KeysConfig) -> Result<bool> {
        wanted.check()?;
        let recorded = self.keys_config()?;
        if *wanted == recorded {
            return Ok(false);
        }
        let path = self.keys_config_path();
        let describe = |c: &KeysConfig| match c.store {
            StoreKind::File => format!("the file keystore {}", self.keystore_path().display()),
            StoreKind::Pkcs11 => format!(
                "the HSM token `{}` of {}",
                c.token_label.as_deref().unwrap_or("?"),
                c.module.as_deref().unwrap_or(Path::new("?")).display()
            ),
        };
        let in_use = path.exists() || self.has_keystore() || self.holds_wrapped_keys()?;
        if in_use {
            return Err(Error::Invalid(format!(
                "the data directory {} keeps its keys under {}, but the configuration asks for \
                 {}: make [keys] match {} (a directory's keystore cannot be switched by \
                 configuration)",
                self.root.display(),
                describe(&recorded),
                describe(wanted),
                if path.exists() {
                    path.display().to_string()
                } else {
                    "the file keystore (remove [keys])".into()
                }
            )));
        }
        Ok(true)
    }

    /// Sets this directory up to keep its keys in the HSM `config` names:
    /// refused if it already keeps keys elsewhere; the token is opened
    /// first (a wrong PIN or a missing token refuses, audited, and nothing
    /// is recorded), which makes the first KEK; then `keys.toml` is
    /// written. Audited as `keys.use-hsm`. Returns the current KEK's id.
    pub fn use_hsm(
        &self,
        actor: &str,
        config: &KeysConfig,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<String> {
        if config.store != StoreKind::Pkcs11 {
            return Err(Error::Invalid("an HSM needs store = \"pkcs11\"".into()));
        }
        let conn = self.connect()?;
        let outcome = self.check_keys(config).and_then(|_| {
            let keys = config.open_pkcs11(env)?;
            self.select_keys(config)?;
            Ok(keys.key_id())
        });
        crate::audit::outcome(
            &conn,
            actor,
            "keys.use-hsm",
            "keystore",
            "key management",
            serde_json::json!({
                "module": config.module.as_ref().map(|m| m.display().to_string()),
                "token": config.token_label,
            }),
            outcome,
        )
    }

    /// Opens the directory's existing file keystore with `passphrase` (for
    /// a passphrase change); a refusal is audited like
    /// [`DataDir::open_keystore`]'s.
    pub fn open_file_keystore(&self, actor: &str, passphrase: &str) -> Result<FileKeyStore> {
        let config = self.keys_config()?;
        if config.store != StoreKind::File {
            return Err(Error::Invalid(format!(
                "the data directory {} keeps its keys in an HSM, which has no passphrase: its \
                 PIN is the token's (change it with the token's tools, e.g. softhsm2-util or \
                 pkcs11-tool --change-pin)",
                self.root.display()
            )));
        }
        let opened = FileKeyStore::open(&self.keystore_path(), passphrase);
        if let Err(e) = &opened {
            self.audit_refused(actor, &config, e)?;
        }
        opened
    }

    fn audit_refused(&self, actor: &str, config: &KeysConfig, e: &Error) -> Result<()> {
        if !matches!(e, Error::Keystore { .. } | Error::Hsm { .. }) {
            return Ok(());
        }
        let store = match config.store {
            StoreKind::File => "file",
            StoreKind::Pkcs11 => "pkcs11",
        };
        crate::audit::append(
            &self.connect()?,
            &crate::audit::Event {
                actor,
                action: "keys.unlock.refused",
                target: "keystore",
                purpose: "unlock",
                detail: serde_json::json!({
                    "store": store,
                    "token": config.token_label,
                    "refused": e.to_string(),
                }),
            },
        )?;
        Ok(())
    }

    fn holds_wrapped_keys(&self) -> Result<bool> {
        if !self.db_path().exists() {
            return Ok(false);
        }
        let conn = self.connect()?;
        Ok(conn.query_row(
            "SELECT EXISTS (SELECT 1 FROM accounts) OR EXISTS (SELECT 1 FROM patients)",
            [],
            |r| r.get(0),
        )?)
    }

    /// Opens the vault with the keystore's passphrase, creating the keystore
    /// on first use, and with it the operator's account (`--as operator`,
    /// the default actor): the custodian acts by its own key like everyone
    /// else, and holds no power over records that the chain does not give.
    pub fn unlock(&self, passphrase: &str) -> Result<Vault> {
        self.unlock_with(passphrase, KdfParams::default())
    }

    /// As [`DataDir::unlock`], with explicit argon2id costs for a new keystore.
    pub fn unlock_with(&self, passphrase: &str, params: KdfParams) -> Result<Vault> {
        let keys = FileKeyStore::open_or_create(&self.keystore_path(), passphrase, params)?;
        self.unlock_keys(Arc::new(keys))
    }

    /// Opens the keystore the directory records ([`DataDir::keys_config`]):
    /// the file keystore with `passphrase` (created on first use, with
    /// `params`), or the HSM with the PIN its configuration names (looked up
    /// through `env`). A refusal (a wrong passphrase or PIN, a missing token
    /// or module) is audited as `keys.unlock.refused`, as `actor`, and
    /// changes nothing else.
    pub fn open_keystore(
        &self,
        actor: &str,
        passphrase: Option<&str>,
        params: KdfParams,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Arc<dyn KeyStore>> {
        let config = self.keys_config()?;
        let opened: Result<Arc<dyn KeyStore>> = match (config.store, passphrase) {
            (StoreKind::File, Some(p)) => {
                FileKeyStore::open_or_create(&self.keystore_path(), p, params)
                    .map(|k| Arc::new(k) as Arc<dyn KeyStore>)
            }
            (StoreKind::File, None) => {
                return Err(Error::Invalid(format!(
                    "the file keystore {} needs its passphrase",
                    self.keystore_path().display()
                )));
            }
            (StoreKind::Pkcs11, _) => config
                .open_pkcs11(env)
                .map(|k| Arc::new(k) as Arc<dyn KeyStore>),
        };
        if let Err(e) = &opened {
            self.audit_refused(actor, &config, e)?;
        }
        opened
    }

    /// Opens the vault over an opened keystore (the file keystore or an
    /// HSM), and with it the operator's account.
    pub fn unlock_keys(&self, keys: Arc<dyn KeyStore>) -> Result<Vault> {
        let vault = Vault::new(self.connect()?, Arc::new(self.block_store()?), keys);
        if crate::keys::accounts::address_of(vault.conn(), OPERATOR)?.is_none() {
            crate::keys::accounts::get_or_create(vault.conn(), vault.keys(), OPERATOR)?;
        }
        Ok(vault)
    }
}

/// The operator's account, made with the keystore.
pub const OPERATOR: &str = "operator";

/// Below this much free space a failed write is put down to a full disk.
const NEARLY_FULL_BYTES: u64 = 1 << 20;

/// What is wrong with the storage under `root`, if anything: a read-only
/// file system or a (nearly) full disk, in words an operator can act on.
/// Asked after a write failed, so that the error names the cause rather
/// than SQLite's "disk I/O error".
pub fn storage_fault(root: &Path) -> Option<String> {
    // The directory itself, or the nearest parent that exists.
    let at = root.ancestors().find(|p| p.exists())?;
    let stat = rustix::fs::statvfs(at).ok()?;
    if stat.f_flag.contains(rustix::fs::StatVfsMountFlags::RDONLY) {
        return Some(format!(
            "the data directory {} is on a read-only file system: remount it read-write \
             (or use another --data-dir), then run the command again",
            root.display()
        ));
    }
    let free = stat.f_bavail.saturating_mul(stat.f_frsize);
    (free < NEARLY_FULL_BYTES).then(|| {
        format!(
            "the disk holding {} is full ({free} bytes free): free space, then run the \
             command again",
            root.display()
        )
    })
}

/// Whether `error` (or what caused it) is a write the storage refused:
/// SQLite's I/O, full, read-only and cannot-open errors, or the same from
/// the file system.
pub fn is_storage_failure(error: &(dyn std::error::Error + 'static)) -> bool {
    use rusqlite::ErrorCode::{CannotOpen, DiskFull, ReadOnly, SystemIoFailure};
    use std::io::ErrorKind::{FileTooLarge, QuotaExceeded, ReadOnlyFilesystem, StorageFull};
    let mut cause = Some(error);
    while let Some(e) = cause {
        if let Some(rusqlite::Error::SqliteFailure(f, _)) = e.downcast_ref::<rusqlite::Error>()
            && matches!(f.code, CannotOpen | DiskFull | ReadOnly | SystemIoFailure)
        {
            return true;
        }
        if let Some(io) = e.downcast_ref::<std::io::Error>()
            && matches!(
                io.kind(),
                StorageFull | ReadOnlyFilesystem | FileTooLarge | QuotaExceeded
            )
        {
            return true;
        }
        cause = e.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_directory_in_use_is_never_switched_to_another_keystore() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = DataDir::open(tmp.path()).unwrap();
        let hsm = KeysConfig {
            store: StoreKind::Pkcs11,
            module: Some("/usr/lib/softhsm/libsofthsm2.so".into()),
            token_label: Some("cohort".into()),
            ..Default::default()
        };
        // The file keystore is the default, recorded by no file.
        dir.select_keys(&KeysConfig::default()).unwrap();
        assert!(!dir.keys_config_path().exists());
        let fast = KdfParams {
            m_cost_kib: 1024,
            t_cost: 1,
            p_cost: 1,
        };
        dir.unlock_with("pw", fast).unwrap();
        let err = dir.select_keys(&hsm).unwrap_err().to_string();
        assert!(
            err.contains("keeps its keys under the file keystore"),
            "{err}"
        );
        assert!(err.contains("token `cohort`"), "{err}");
        assert!(!dir.keys_config_path().exists(), "nothing recorded");

        // A new directory records an HSM, and then refuses the file keystore.
        let tmp = tempfile::tempdir().unwrap();
        let dir = DataDir::open(tmp.path()).unwrap();
        dir.select_keys(&hsm).unwrap();
        assert_eq!(dir.keys_config().unwrap(), hsm);
        dir.select_keys(&hsm).unwrap();
        let err = dir
            .select_keys(&KeysConfig::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("keys.toml"), "{err}");
        let err = dir
            .open_keystore("operator", Some("pw"), fast, |_| None)
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("COHORT_HSM_PIN"),
            "the PIN is asked for: {err}"
        );
    }
}
