//! Content-addressed block storage.
//!
//! A block is stored under the CID of its bytes ([`crate::storage::cid::cid_of`]) and
//! re-hashed on every read: a block whose bytes changed on disk is an error,
//! never wrong data.

use std::path::{Path, PathBuf};

use crate::{Error, Result, storage::cid};

/// Where the vault's blocks live: pack files in the data directory
/// ([`crate::storage::packstore::PackBlockStore`]), or one file per block.
pub trait BlockStore: Send + Sync {
    /// Stores `bytes` and returns their CID. Storing the same bytes twice is a
    /// no-op. The block is durable only after the next [`BlockStore::flush`].
    fn put(&self, bytes: &[u8]) -> Result<String>;
    /// Makes every block put so far durable. Callers flush once per batch,
    /// before committing the metadata that names the blocks.
    fn flush(&self) -> Result<()>;
    /// Returns the block's bytes after checking they still hash to `cid`.
    fn get(&self, cid: &str) -> Result<Vec<u8>>;
    /// Whether the block is present (without verifying it).
    fn has(&self, cid: &str) -> bool;
    /// Deletes the block (a retention purge); deleting an absent block is
    /// a no-op, so a purge interrupted after its commit can be finished.
    /// The deletion is durable only after the next [`BlockStore::flush`].
    fn remove(&self, cid: &str) -> Result<()>;
}

/// Returns `bytes` if they still hash to `cid`: every store's reads end here.
pub(crate) fn verified(cid: &str, bytes: Vec<u8>) -> Result<Vec<u8>> {
    let actual = cid::cid_of(&bytes);
    if actual != cid {
        return Err(Error::CorruptBlock {
            cid: cid.to_owned(),
            actual,
        });
    }
    Ok(bytes)
}

/// Blocks as files in a directory, sharded like go-ipfs's flatfs
/// (`next-to-last/2`): `<root>/<2 chars before the last>/<cid>`. Data
/// directories written before pack files hold their blocks this way; the
/// pack store reads them through this.
#[derive(Debug, Clone)]
pub struct FsBlockStore {
    root: PathBuf,
}

impl FsBlockStore {
    /// Uses (and creates) `root`.
    pub fn open(root: &Path) -> Result<Self> {
        std::fs::create_dir_all(root).map_err(|e| Error::io("creating", root, e))?;
        Ok(FsBlockStore {
            root: root.to_owned(),
        })
    }

    /// The file a block is (or would be) stored in.
    pub fn path_of(&self, cid: &str) -> PathBuf {
        let n = cid.len();
        let shard = if n >= 3 { &cid[n - 3..n - 1] } else { "__" };
        self.root.join(shard).join(cid)
    }
}

impl BlockStore for FsBlockStore {
    fn put(&self, bytes: &[u8]) -> Result<String> {
        let cid = cid::cid_of(bytes);
        let path = self.path_of(&cid);
        if path.exists() {
            return Ok(cid);
        }
        let dir = path.parent().expect("sharded path has a parent");
        std::fs::create_dir_all(dir).map_err(|e| Error::io("creating", dir, e))?;
        // Visible only once complete (rename); made durable by `flush`.
        let mut tmp = crate::storage::fsutil::temp_in(dir)?;
        std::io::Write::write_all(&mut tmp, bytes)
            .map_err(|e| Error::io("writing", path.clone(), e))?;
        crate::storage::fsutil::persist(tmp, &path, false)?;
        Ok(cid)
    }

    fn flush(&self) -> Result<()> {
        // One syncfs for the whole batch instead of an fsync per block.
        let dir =
            std::fs::File::open(&self.root).map_err(|e| Error::io("opening", &self.root, e))?;
        rustix::fs::syncfs(&dir).map_err(|e| Error::io("syncing", &self.root, e.into()))
    }

    fn get(&self, cid: &str) -> Result<Vec<u8>> {
        let path = self.path_of(cid);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(Error::MissingBlock {
                    cid: cid.to_owned(),
                });
            }
            Err(e) => return Err(Error::io("reading", path, e)),
        };
        verified(cid, bytes)
    }

    fn has(&self, cid: &str) -> bool {
        self.path_of(cid).exists()
    }

    fn remove(&self, cid: &str) -> Result<()> {
        let path = self.path_of(cid);
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io("deleting", path, e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn put_get_and_detect_corruption() {
        let dir = tempfile::tempdir().unwrap();
        let store = FsBlockStore::open(dir.path()).unwrap();
        let cid = store.put(b"some block").unwrap();
        assert_eq!(store.get(&cid).unwrap(), b"some block");
        assert_eq!(store.put(b"some block").unwrap(), cid, "idempotent");
        store.remove(&cid).unwrap();
        assert!(!store.has(&cid), "removed");
        store.remove(&cid).unwrap();
        assert!(matches!(store.get(&cid), Err(Error::MissingBlock { .. })));
        assert_eq!(store.put(b"some block").unwrap(), cid);
        let path = store.path_of(&cid);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[3] ^= 0x01;
        std::fs::write(&path, bytes).unwrap();
        match store.get(&cid) {
            Err(Error::CorruptBlock { cid: c, .. }) => assert_eq!(c, cid),
            other => panic!("expected CorruptBlock, got {other:?}"),
        }
        assert!(matches!(
            store.get("bafybeimissing"),
            Err(Error::MissingBlock { .. })
        ));
    }
}
