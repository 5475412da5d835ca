//! Blocks appended to pack files, found through a SQLite index.
//!
//! One file per block (the flat layout, [`FsBlockStore`]) made ingest spend
//! most of its time in the file system's inode allocation. Here a writer
//! appends its blocks to a pack file it holds an exclusive `flock` on (so
//! no two processes append to one pack), and records where each block lies
//! in `index.db` only after the pack is synced ([`BlockStore::flush`]): the
//! index never names bytes a crash could lose. Blocks keep their CIDs and are
//! re-hashed on every read. A retention purge overwrites a block's bytes with
//! zeros in place, then drops its index row. Blocks in the flat layout (data
//! directories written before packs) are still read, and purged as files.
//!
//! A pack is a sequence of records `"CBK1" | cid length (u16 LE) | block
//! length (u64 LE) | cid | block`, so the index can be rebuilt from the packs.

use std::collections::{HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use rusqlite::{Connection, OptionalExtension, params};

use crate::storage::blockstore::{BlockStore, FsBlockStore, verified};
use crate::{Error, Result, storage::cid};

/// A pack is closed for appends once it reaches this size.
const PACK_CAP: u64 = 256 << 20;
/// The start of every record in a pack.
const MAGIC: &[u8; 4] = b"CBK1";
/// How many recent packs a writer tries to lock before starting a new one.
const REUSE_CANDIDATES: i64 = 4;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS packs (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%SZ', 'now'))
);
-- Where each block's bytes lie: written only after its pack is synced.
CREATE TABLE IF NOT EXISTS blocks (
    cid    TEXT PRIMARY KEY,
    pack   INTEGER NOT NULL REFERENCES packs(id),
    offset INTEGER NOT NULL,
    len    INTEGER NOT NULL
) WITHOUT ROWID;
";

/// Where a block's bytes lie: `len` bytes at `offset` in the pack file `path`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockLocation {
    /// The pack file.
    pub path: PathBuf,
    /// The offset of the block's first byte.
    pub offset: u64,
    /// The block's length in bytes.
    pub len: u64,
}

#[derive(Debug, Clone, Copy)]
struct Slot {
    pack: i64,
    offset: u64,
    len: u64,
}

/// The pack this store appends to, locked against other writers.
struct OpenPack {
    id: i64,
    file: Arc<File>,
    len: u64,
}

/// What this store has written since its last flush.
#[derive(Default)]
struct Writer {
    pack: Option<OpenPack>,
    /// Appended, not yet in the index.
    puts: HashMap<String, Slot>,
    /// Zeroed, their index rows still to drop.
    removes: HashSet<String>,
    /// Packs written or zeroed since the last flush, to sync.
    dirty: HashMap<i64, Arc<File>>,
    /// A pack file was created since the last flush: sync its directory.
    new_pack: bool,
}

/// The vault's block store: pack files under `<root>/packs`, their index in
/// `<root>/index.db`, and the flat layout under `<root>` read as before.
pub struct PackBlockStore {
    root: PathBuf,
    legacy: FsBlockStore,
    /// Opened on first use, so commands that touch no block do not create it.
    index: Mutex<Option<Connection>>,
    writer: Mutex<Writer>,
    readers: RwLock<HashMap<i64, Arc<File>>>,
}

impl std::fmt::Debug for PackBlockStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PackBlockStore")
            .field("root", &self.root)
            .finish_non_exhaustive()
    }
}

impl PackBlockStore {
    /// Uses (and creates) `root`.
    pub fn open(root: &Path) -> Result<Self> {
        let legacy = FsBlockStore::open(root)?;
        Ok(PackBlockStore {
            root: root.to_owned(),
            legacy,
            index: Mutex::new(None),
            writer: Mutex::new(Writer::default()),
            readers: RwLock::new(HashMap::new()),
        })
    }

    /// Where the block's bytes lie, if it is stored (and flushed) in a pack;
    /// `None` for a block absent or in the flat layout.
    pub fn location(&self, cid: &str) -> Result<Option<BlockLocation>> {
        Ok(self.indexed(cid)?.map(|s| BlockLocation {
            path: self.pack_path(s.pack),
            offset: s.offset,
            len: s.len,
        }))
    }

    /// Every pack file, oldest first.
    pub fn pack_files(&self) -> Result<Vec<PathBuf>> {
        let ids: Vec<i64> = self.with_index(|c| {
            c.prepare("SELECT id FROM packs ORDER BY id")?
                .query_map([], |r| r.get(0))?
                .collect::<rusqlite::Result<_>>()
                .map_err(Error::from)
        })?;
        Ok(ids
            .into_iter()
            .map(|id| self.pack_path(id))
            .filter(|p| p.exists())
            .collect())
    }

    fn packs_dir(&self) -> PathBuf {
        self.root.join("packs")
    }

    fn pack_path(&self, id: i64) -> PathBuf {
        self.packs_dir().join(format!("{id:08}.pack"))
    }

    fn with_index<T>(&self, f: impl FnOnce(&mut Connection) -> Result<T>) -> Result<T> {
        let mut guard = lock(&self.index);
        if guard.is_none() {
            let path = self.root.join("index.db");
            let conn = Connection::open(&path)?;
            conn.busy_timeout(std::time::Duration::from_secs(30))?;
            conn.pragma_update(None, "journal_mode", "WAL")?;
            // FULL: an index row committed before the metadata naming its
            // block survives power loss with it.
            conn.pragma_update(None, "synchronous", "FULL")?;
            conn.execute_batch(SCHEMA)?;
            *guard = Some(conn);
        }
        f(guard.as_mut().expect("opened above"))
    }

    fn indexed(&self, cid: &str) -> Result<Option<Slot>> {
        self.with_index(|c| {
            c.prepare_cached("SELECT pack, offset, len FROM blocks WHERE cid = ?1")?
                .query_row([cid], |r| {
                    Ok(Slot {
                        pack: r.get(0)?,
                        offset: r.get::<_, i64>(1)? as u64,
                        len: r.get::<_, i64>(2)? as u64,
                    })
                })
                .optional()
                .map_err(Error::from)
        })
    }

    /// The pack to append to: the one held, else a recent one no other
    /// writer holds, else a new one.
    fn writable<'w>(&self, w: &'w mut Writer) -> Result<&'w mut OpenPack> {
        if w.pack.as_ref().is_some_and(|p| p.len >= PACK_CAP) {
            w.pack = None;
        }
        if w.pack.is_none() {
            w.pack = Some(match self.reuse()? {
                Some(p) => p,
                None => {
                    w.new_pack = true;
                    self.create()?
                }
            });
        }
        Ok(w.pack.as_mut().expect("set above"))
    }

    fn reuse(&self) -> Result<Option<OpenPack>> {
        let recent: Vec<i64> = self.with_index(|c| {
            c.prepare("SELECT id FROM packs ORDER BY id DESC LIMIT ?1")?
                .query_map([REUSE_CANDIDATES], |r| r.get(0))?
                .collect::<rusqlite::Result<_>>()
                .map_err(Error::from)
        })?;
        for id in recent {
            let path = self.pack_path(id);
            let Ok(file) = OpenOptions::new().read(true).write(true).open(&path) else {
                continue;
            };
            if rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive)
                .is_err()
            {
                continue;
            }
            let len = file
                .metadata()
                .map_err(|e| Error::io("reading the size of", &path, e))?
                .len();
            if len < PACK_CAP {
                return Ok(Some(OpenPack {
                    id,
                    file: Arc::new(file),
                    len,
                }));
            }
        }
        Ok(None)
    }

    fn create(&self) -> Result<OpenPack> {
        let dir = self.packs_dir();
        std::fs::create_dir_all(&dir).map_err(|e| Error::io("creating", &dir, e))?;
        let id = self.with_index(|c| {
            c.execute("INSERT INTO packs DEFAULT VALUES", [])?;
            Ok(c.last_insert_rowid())
        })?;
        let path = self.pack_path(id);
        // Owner-only, as every block file was (`fsutil::temp_in`).
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| Error::io("creating", &path, e))?;
        rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive)
            .map_err(|e| Error::io("locking", &path, e.into()))?;
        Ok(OpenPack {
            id,
            file: Arc::new(file),
            len: 0,
        })
    }

    fn reader(&self, pack: i64) -> Result<Arc<File>> {
        if let Some(f) = self.readers.read().expect("readers lock").get(&pack) {
            return Ok(Arc::clone(f));
        }
        let path = self.pack_path(pack);
        let file = Arc::new(File::open(&path).map_err(|e| Error::io("opening", &path, e))?);
        self.readers
            .write()
            .expect("readers lock")
            .insert(pack, Arc::clone(&file));
        Ok(file)
    }

    /// Overwrites the block's bytes with zeros (made durable by the next flush).
    fn zero(&self, w: &mut Writer, slot: Slot) -> Result<()> {
        let path = self.pack_path(slot.pack);
        let file = match w.dirty.get(&slot.pack) {
            Some(f) => Arc::clone(f),
            None => Arc::new(
                OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .map_err(|e| Error::io("opening", &path, e))?,
            ),
        };
        file.write_all_at(&vec![0; slot.len as usize], slot.offset)
            .map_err(|e| Error::io("overwriting a purged block in", &path, e))?;
        w.dirty.insert(slot.pack, file);
        Ok(())
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock leaves the maps as they were between
    // two complete steps (each step updates them after its I/O succeeds).
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl BlockStore for PackBlockStore {
    fn put(&self, bytes: &[u8]) -> Result<String> {
        let cid = cid::cid_of(bytes);
        let mut w = lock(&self.writer);
        if w.puts.contains_key(&cid)
            || (!w.removes.contains(&cid)
                && (self.indexed(&cid)?.is_some() || self.legacy.has(&cid)))
        {
            return Ok(cid);
        }
        let mut record = Vec::with_capacity(14 + cid.len() + bytes.len());
        record.extend_from_slice(MAGIC);
        record.extend_from_slice(&(cid.len() as u16).to_le_bytes());
        record.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
        record.extend_from_slice(cid.as_bytes());
        let header = record.len() as u64;
        record.extend_from_slice(bytes);
        let path_of = |id| self.pack_path(id);
        let pack = self.writable(&mut w)?;
        pack.file
            .write_all_at(&record, pack.len)
            .map_err(|e| Error::io("appending to", path_of(pack.id), e))?;
        let slot = Slot {
            pack: pack.id,
            offset: pack.len + header,
            len: bytes.len() as u64,
        };
        pack.len += record.len() as u64;
        let (id, file) = (pack.id, Arc::clone(&pack.file));
        w.dirty.insert(id, file);
        w.puts.insert(cid.clone(), slot);
        Ok(cid)
    }

    fn flush(&self) -> Result<()> {
        let mut w = lock(&self.writer);
        for (id, file) in &w.dirty {
            file.sync_data()
                .map_err(|e| Error::io("syncing", self.pack_path(*id), e))?;
        }
        if w.new_pack {
            let dir = self.packs_dir();
            File::open(&dir)
                .and_then(|d| d.sync_all())
                .map_err(|e| Error::io("syncing", &dir, e))?;
        }
        if !w.puts.is_empty() || !w.removes.is_empty() {
            self.with_index(|c| {
                let tx = c.transaction()?;
                {
                    let mut drop_row = tx.prepare_cached("DELETE FROM blocks WHERE cid = ?1")?;
                    for cid in &w.removes {
                        drop_row.execute([cid])?;
                    }
                    let mut add = tx.prepare_cached(
                        "INSERT OR REPLACE INTO blocks (cid, pack, offset, len) VALUES (?1, ?2, ?3, ?4)",
                    )?;
                    for (cid, s) in &w.puts {
                        add.execute(params![cid, s.pack, s.offset as i64, s.len as i64])?;
                    }
                }
                tx.commit()?;
                Ok(())
            })?;
        }
        // The legacy layout's deletions.
        if !w.removes.is_empty() {
            self.legacy.flush()?;
        }
        w.puts.clear();
        w.removes.clear();
        w.dirty.clear();
        w.new_pack = false;
        Ok(())
    }

    fn get(&self, cid: &str) -> Result<Vec<u8>> {
        let pending = {
            let w = lock(&self.writer);
            if let Some(s) = w.puts.get(cid) {
                Some(*s)
            } else if w.removes.contains(cid) {
                return Err(Error::MissingBlock {
                    cid: cid.to_owned(),
                });
            } else {
                None
            }
        };
        let slot = match pending {
            Some(s) => s,
            None => match self.indexed(cid)? {
                Some(s) => s,
                None => return self.legacy.get(cid),
            },
        };
        let file = self.reader(slot.pack)?;
        let mut bytes = vec![0; slot.len as usize];
        if let Err(e) = file.read_exact_at(&mut bytes, slot.offset) {
            if e.kind() == std::io::ErrorKind::UnexpectedEof {
                // The pack lost its tail (restored from a short copy).
                return Err(Error::MissingBlock {
                    cid: cid.to_owned(),
                });
            }
            return Err(Error::io("reading", self.pack_path(slot.pack), e));
        }
        verified(cid, bytes)
    }

    fn has(&self, cid: &str) -> bool {
        {
            let w = lock(&self.writer);
            if w.puts.contains_key(cid) {
                return true;
            }
            if w.removes.contains(cid) {
                return false;
            }
        }
        matches!(self.indexed(cid), Ok(Some(_))) || self.legacy.has(cid)
    }

    fn remove(&self, cid: &str) -> Result<()> {
        let mut w = lock(&self.writer);
        let slot = match w.puts.remove(cid) {
            Some(s) => Some(s),
            None if w.removes.contains(cid) => return Ok(()),
            None => self.indexed(cid)?,
        };
        match slot {
            Some(s) => {
                self.zero(&mut w, s)?;
                w.removes.insert(cid.to_owned());
                Ok(())
            }
            None => self.legacy.remove(cid),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pack_bytes(store: &PackBlockStore) -> Vec<u8> {
        store
            .pack_files()
            .unwrap()
            .iter()
            .flat_map(|p| std::fs::read(p).unwrap())
            .collect()
    }

    #[test]
    fn put_flush_get_across_stores_and_detect_corruption() {
        let dir = tempfile::tempdir().unwrap();
        let store = PackBlockStore::open(dir.path()).unwrap();
        let cid = store.put(b"some block").unwrap();
        assert_eq!(
            store.get(&cid).unwrap(),
            b"some block",
            "readable before flush"
        );
        assert!(store.has(&cid));
        assert_eq!(store.put(b"some block").unwrap(), cid, "idempotent");
        let other = PackBlockStore::open(dir.path()).unwrap();
        assert!(!other.has(&cid), "not indexed before the flush");
        store.flush().unwrap();
        assert_eq!(other.get(&cid).unwrap(), b"some block");
        assert_eq!(other.put(b"some block").unwrap(), cid);
        other.flush().unwrap();
        assert_eq!(store.pack_files().unwrap().len(), 1, "one pack");
        let mode = std::fs::metadata(&store.pack_files().unwrap()[0])
            .unwrap()
            .permissions();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
            0o600,
            "owner-only"
        );
        assert_eq!(
            pack_bytes(&store)
                .windows(10)
                .filter(|w| w == b"some block")
                .count(),
            1,
            "stored once"
        );

        let at = store.location(&cid).unwrap().unwrap();
        let mut bytes = std::fs::read(&at.path).unwrap();
        bytes[at.offset as usize + 3] ^= 0x01;
        std::fs::write(&at.path, &bytes).unwrap();
        match other.get(&cid) {
            Err(Error::CorruptBlock { cid: c, actual }) => {
                assert_eq!(c, cid);
                assert_ne!(actual, cid);
            }
            other => panic!("expected CorruptBlock, got {other:?}"),
        }
        bytes.truncate(at.offset as usize + 2);
        std::fs::write(&at.path, &bytes).unwrap();
        assert!(matches!(other.get(&cid), Err(Error::MissingBlock { .. })));
        assert!(matches!(
            store.get("bafybeimissing"),
            Err(Error::MissingBlock { .. })
        ));
    }

    #[test]
    fn a_purge_zeroes_the_bytes_and_is_durable_at_the_flush() {
        let dir = tempfile::tempdir().unwrap();
        let store = PackBlockStore::open(dir.path()).unwrap();
        let keep = store.put(b"kept block").unwrap();
        let gone = store.put(b"purged block").unwrap();
        store.flush().unwrap();
        store.remove(&gone).unwrap();
        assert!(!store.has(&gone));
        assert!(matches!(store.get(&gone), Err(Error::MissingBlock { .. })));
        // Until the flush another reader still finds the index row, and the
        // bytes it names are already zeros: an error, never the old bytes.
        let other = PackBlockStore::open(dir.path()).unwrap();
        assert!(matches!(other.get(&gone), Err(Error::CorruptBlock { .. })));
        store.flush().unwrap();
        assert!(store.location(&gone).unwrap().is_none());
        assert!(matches!(other.get(&gone), Err(Error::MissingBlock { .. })));
        assert!(!pack_bytes(&store).windows(12).any(|w| w == b"purged block"));
        assert_eq!(other.get(&keep).unwrap(), b"kept block");
        store.remove(&gone).unwrap();
        store.flush().unwrap();
        // Removing a block put but not flushed: it never reaches the index.
        let brief = store.put(b"brief block").unwrap();
        store.remove(&brief).unwrap();
        store.flush().unwrap();
        assert!(!other.has(&brief));
        assert!(!pack_bytes(&store).windows(11).any(|w| w == b"brief block"));
        // Stored again after its purge, it is readable again.
        assert_eq!(store.put(b"purged block").unwrap(), gone);
        store.flush().unwrap();
        assert_eq!(other.get(&gone).unwrap(), b"purged block");
    }

    #[test]
    fn two_writers_append_to_different_packs_and_a_later_one_reuses_them() {
        let dir = tempfile::tempdir().unwrap();
        let a = PackBlockStore::open(dir.path()).unwrap();
        let b = PackBlockStore::open(dir.path()).unwrap();
        let ca = a.put(b"from a").unwrap();
        let cb = b.put(b"from b").unwrap();
        a.flush().unwrap();
        b.flush().unwrap();
        let pa = a.location(&ca).unwrap().unwrap().path;
        let pb = a.location(&cb).unwrap().unwrap().path;
        assert_ne!(pa, pb, "each writer holds its own pack");
        drop(a);
        let c = PackBlockStore::open(dir.path()).unwrap();
        let cc = c.put(b"from c").unwrap();
        c.flush().unwrap();
        assert_eq!(
            c.location(&cc).unwrap().unwrap().path,
            pa,
            "a's pack, released, is reused"
        );
        for (cid, bytes) in [(&ca, &b"from a"[..]), (&cb, b"from b"), (&cc, b"from c")] {
            assert_eq!(b.get(cid).unwrap(), bytes);
        }
        assert_eq!(c.pack_files().unwrap().len(), 2);
    }

    #[test]
    fn a_crash_before_the_flush_leaves_no_index_row() {
        let dir = tempfile::tempdir().unwrap();
        let store = PackBlockStore::open(dir.path()).unwrap();
        let cid = store.put(b"never flushed").unwrap();
        drop(store); // as a crash would: appended, not synced, not indexed
        let after = PackBlockStore::open(dir.path()).unwrap();
        assert!(!after.has(&cid));
        assert!(matches!(after.get(&cid), Err(Error::MissingBlock { .. })));
        // The next writer appends after the orphaned record; both stay readable.
        let next = after.put(b"next block").unwrap();
        after.flush().unwrap();
        assert_eq!(after.get(&next).unwrap(), b"next block");
    }

    #[test]
    fn the_flat_layout_is_still_read_and_purged() {
        let dir = tempfile::tempdir().unwrap();
        let flat = FsBlockStore::open(dir.path()).unwrap();
        let cid = flat.put(b"an older block").unwrap();
        flat.flush().unwrap();
        let store = PackBlockStore::open(dir.path()).unwrap();
        assert!(store.has(&cid));
        assert_eq!(store.get(&cid).unwrap(), b"an older block");
        assert_eq!(store.put(b"an older block").unwrap(), cid, "not copied");
        store.flush().unwrap();
        assert!(store.location(&cid).unwrap().is_none());
        store.remove(&cid).unwrap();
        store.flush().unwrap();
        assert!(!flat.path_of(&cid).exists());
        assert!(!store.has(&cid));
    }
}
