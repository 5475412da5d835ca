//! The data directory: everything one cohort installation keeps, in one place.
//!
//! ```text
//! <data-dir>/
//!   cohort.db        metadata, audit log, projection (SQLite, WAL)
//!   keystore.json    the passphrase-protected key-encryption key
//!   blocks/          encrypted record blocks, named by CID
//! ```
//! Two data directories share nothing, so tests and users run side by side.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::keys::keystore::{FileKeyStore, KdfParams};
use crate::records::vault::Vault;
use crate::storage::blockstore::FsBlockStore;
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

    /// Whether the keystore exists yet.
    pub fn has_keystore(&self) -> bool {
        self.keystore_path().exists()
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
        let blocks = FsBlockStore::open(&self.blocks_path())?;
        let vault = Vault::new(self.connect()?, Arc::new(blocks), Arc::new(keys));
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
