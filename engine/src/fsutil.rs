//! Crash-safe file writes.

use std::io::Write;
use std::path::Path;

use crate::{Error, Result};

/// Writes `bytes` to `path` so that a crash leaves either the old file or the
/// new one, never a torn one: write a temporary file beside it, fsync, rename,
/// fsync the directory. `private` makes the file readable by its owner only.
pub fn write_atomic(path: &Path, bytes: &[u8], private: bool) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::Builder::new()
        .prefix(".tmp-")
        .tempfile_in(dir)
        .map_err(|e| Error::io("creating a temporary file in", dir, e))?;
    if private {
        set_private(tmp.path())?;
    }
    tmp.write_all(bytes)
        .map_err(|e| Error::io("writing", tmp.path().to_owned(), e))?;
    tmp.as_file()
        .sync_all()
        .map_err(|e| Error::io("syncing", tmp.path().to_owned(), e))?;
    tmp.persist(path)
        .map_err(|e| Error::io("renaming into", path, e.error))?;
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

#[cfg(unix)]
fn set_private(path: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| Error::io("setting permissions on", path, e))
}

#[cfg(not(unix))]
fn set_private(_: &Path) -> Result<()> {
    Ok(())
}
