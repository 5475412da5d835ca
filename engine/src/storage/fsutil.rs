//! Crash-safe file writes: write a temporary file beside the target, then
//! rename it into place, so a reader or a crash sees the old file or the new
//! one, never a torn one. Temporary files are created owner-only (0600), so
//! every file written this way is private.

use std::io::Write;
use std::path::Path;

use tempfile::NamedTempFile;

use crate::{Error, Result};

/// A new owner-only temporary file in `dir` (same filesystem as the target).
pub fn temp_in(dir: &Path) -> Result<NamedTempFile> {
    tempfile::Builder::new()
        .prefix(".tmp-")
        .tempfile_in(dir)
        .map_err(|e| Error::io("creating a temporary file in", dir, e))
}

/// Renames `tmp` to `path`. `durable` fsyncs the file first and the directory
/// after; callers that batch many files skip it and sync once (see
/// `BlockStore::flush`).
pub fn persist(tmp: NamedTempFile, path: &Path, durable: bool) -> Result<()> {
    if durable {
        tmp.as_file()
            .sync_all()
            .map_err(|e| Error::io("syncing", tmp.path().to_owned(), e))?;
    }
    tmp.persist(path)
        .map_err(|e| Error::io("renaming into", path, e.error))?;
    if durable && let Ok(d) = std::fs::File::open(path.parent().unwrap_or(Path::new("."))) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Writes `bytes` to `path` atomically and durably.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut tmp = temp_in(path.parent().unwrap_or(Path::new(".")))?;
    tmp.write_all(bytes)
        .map_err(|e| Error::io("writing", tmp.path().to_owned(), e))?;
    persist(tmp, path, true)
}

/// Waits for an exclusive `flock` on `path` (created if missing; its
/// contents are never read), for work that other threads or processes must
/// not do at the same time. Held until the returned file is dropped; each
/// call opens its own descriptor, so threads of one process exclude each
/// other too.
pub fn lock_exclusive(path: &Path) -> Result<std::fs::File> {
    let file = std::fs::File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(|e| Error::io("opening the lock file", path, e))?;
    rustix::fs::flock(&file, rustix::fs::FlockOperation::LockExclusive)
        .map_err(|e| Error::io("locking", path, e.into()))?;
    Ok(file)
}
