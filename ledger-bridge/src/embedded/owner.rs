//! One owner per chain: the exclusive lock the writing process holds for
//! its life, shared by every handle in that process.

use super::*;

/// How long a second writer waits for the chain by default
/// (`COHORT_CHAIN_WAIT_SECS` overrides it).
pub const DEFAULT_OWNER_WAIT: std::time::Duration = std::time::Duration::from_secs(60);

/// The exclusive lock on a chain, held by the process that writes it.
pub(super) struct OwnerLock {
    pub(super) _file: std::fs::File,
}

/// How the owner file names a server (which is not waited for).
pub(super) const SERVER: &str = "a cohort server";

/// The owner locks this process holds, by chain file: a second open of a
/// chain in the process that owns it shares the lock (an `flock` is per
/// open file, so taking it again would wait for ourselves).
pub(super) static HELD: Mutex<Vec<(PathBuf, std::sync::Weak<OwnerLock>)>> = Mutex::new(Vec::new());

impl OwnerLock {
    /// This process's lock on `path`'s chain, taken if no open ledger in
    /// the process holds it yet.
    pub(super) fn shared(
        path: &Path,
        wait: std::time::Duration,
        waiting: &dyn Fn(&str),
    ) -> Result<Arc<OwnerLock>> {
        let key = std::fs::canonicalize(path.parent().unwrap_or(Path::new(".")))
            .map(|dir| dir.join(path.file_name().unwrap_or_default()))
            .unwrap_or_else(|_| path.to_owned());
        let mut held = HELD.lock().unwrap_or_else(PoisonError::into_inner);
        held.retain(|(_, lock)| lock.strong_count() > 0);
        if let Some(lock) = held
            .iter()
            .find(|(p, _)| *p == key)
            .and_then(|(_, lock)| lock.upgrade())
        {
            return Ok(lock);
        }
        let lock = Arc::new(OwnerLock::acquire(path, wait, waiting)?);
        held.push((key, Arc::downgrade(&lock)));
        Ok(lock)
    }

    /// Takes the lock of `path`'s chain, waiting at most `wait` for a
    /// short-lived owner (announced once through `waiting`); an owner that
    /// is a server is not waited for.
    pub(super) fn acquire(
        path: &Path,
        wait: std::time::Duration,
        waiting: &dyn Fn(&str),
    ) -> Result<OwnerLock> {
        use std::io::{Read, Seek, Write};
        let mut name = path.as_os_str().to_owned();
        name.push(".owner");
        let lock_path = PathBuf::from(name);
        let mut file = std::fs::File::options()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&lock_path)
            .map_err(|e| Error::Config(format!("cannot open {}: {e}", lock_path.display())))?;
        let started = std::time::Instant::now();
        let mut announced = false;
        loop {
            match file.try_lock() {
                Ok(()) => break,
                Err(std::fs::TryLockError::WouldBlock) => {
                    let mut owner = String::new();
                    let _ = (&file).read_to_string(&mut owner);
                    let _ = file.rewind();
                    let owner = owner.trim().to_string();
                    let owner = if owner.is_empty() {
                        "another process".to_string()
                    } else {
                        owner
                    };
                    let busy = |waited: String, advice: &str| Error::ChainBusy {
                        path: path.display().to_string(),
                        owner: owner.clone(),
                        waited,
                        advice: advice.to_string(),
                    };
                    if owner.ends_with(SERVER) {
                        return Err(busy(
                            String::new(),
                            "a server owns its chain for as long as it runs; use its APIs \
                             (Flight SQL, the gRPC study API, the web page) or stop it first \
                             (reading commands work beside it)",
                        ));
                    }
                    if started.elapsed() >= wait {
                        return Err(busy(
                            format!(" (waited {} s)", wait.as_secs()),
                            "try again when it has finished, or raise COHORT_CHAIN_WAIT_SECS",
                        ));
                    }
                    if !announced {
                        waiting(&format!(
                            "waiting for the embedded chain, owned by {owner} (at most {} s)",
                            wait.as_secs()
                        ));
                        announced = true;
                    }
                    std::thread::sleep(std::time::Duration::from_millis(25));
                }
                Err(std::fs::TryLockError::Error(e)) => {
                    return Err(Error::Config(format!(
                        "cannot lock {}: {e}",
                        lock_path.display()
                    )));
                }
            }
        }
        // Say who owns it, for the next process that asks.
        let role = if std::env::args().skip(1).any(|a| a == "serve") {
            SERVER
        } else {
            "a cohort command"
        };
        let me = format!("pid {}, {role}", std::process::id());
        file.set_len(0)
            .and_then(|()| file.rewind())
            .and_then(|()| file.write_all(me.as_bytes()))
            .and_then(|()| file.flush())
            .map_err(|e| Error::Config(format!("cannot write {}: {e}", lock_path.display())))?;
        Ok(OwnerLock { _file: file })
    }
}

/// The wait for a busy chain: `COHORT_CHAIN_WAIT_SECS`, else the default.
pub fn owner_wait() -> std::time::Duration {
    std::env::var("COHORT_CHAIN_WAIT_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .map_or(DEFAULT_OWNER_WAIT, std::time::Duration::from_secs)
}
