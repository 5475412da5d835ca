//! The key material of encrypted columns: the custodian's tfhe keys and
//! the stewards' threshold ElGamal shares, each wrapped by the keystore.

use super::*;
use crate::storage::fsutil::write_atomic;

/// Where the deployment's tfhe keys live.
pub(super) fn tfhe_dir(root: &std::path::Path) -> PathBuf {
    root.join("research").join("fhe").join("tfhe")
}

/// Generates what a just-approved study's encrypted columns need: the
/// ElGamal key shared among `stewards` with threshold `t`, and the
/// deployment's tfhe keys if they do not exist yet. Idempotent.
pub(crate) fn set_up(
    conn: &Connection,
    keys: &dyn KeyStore,
    root: &std::path::Path,
    study: u64,
    file: &StudyFile,
    stewards: &[String],
    t: u32,
) -> Result<()> {
    let cols = columns(file);
    if cols.iter().any(|c| c.layer == Layer::Elgamal) && custodian_key(conn, study)?.is_none() {
        let n = stewards.len() as u32;
        let threshold = Threshold::new(t.min(n).max(1), n).map_err(fhe_error)?;
        let (key, shares) = threshold::generate(threshold).map_err(fhe_error)?;
        let tx = conn.unchecked_transaction()?;
        tx.execute(
            "INSERT INTO research_fhe_keys (study_id, custodian) VALUES (?1, ?2)",
            params![study as i64, key.to_bytes()],
        )?;
        for (steward, share) in stewards.iter().zip(&shares) {
            let data = SecretKey::generate();
            let context = share_context(study, steward);
            let wrapped = keys.wrap(&data, context.as_bytes())?;
            let (nonce, sealed) = keystore::seal(&data, &share.to_bytes(), context.as_bytes());
            tx.execute(
                "INSERT INTO research_fhe_shares (study_id, steward, idx, wrapped, nonce, sealed) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![study as i64, steward, share.index(), wrapped, nonce.to_vec(), sealed],
            )?;
        }
        tx.commit()?;
    }
    if cols.iter().any(|c| c.layer == Layer::Tfhe) {
        prepare_tfhe_keys(keys, root)?;
    }
    Ok(())
}

pub(crate) fn share_context(study: u64, steward: &str) -> String {
    format!("cohort/fhe/study/{study}/share/{steward}")
}

pub(super) const TFHE_CLIENT_CONTEXT: &str = "cohort/fhe/tfhe/custodian";

/// Makes the deployment's tfhe key set (the custodian's) unless it exists,
/// and says whether this call made it. The first approval of a study with
/// a tfhe column makes it otherwise, and waits for it (most of ten seconds
/// on two cores): an operator, or the demo, can make it ahead.
///
/// Callers at once, threads or processes, make one set: each holds an
/// exclusive lock on `research/fhe/tfhe.lock` while it looks and makes,
/// so no file of one set is paired with another set's.
pub fn prepare_tfhe_keys(keys: &dyn KeyStore, root: &std::path::Path) -> Result<bool> {
    let _lock = tfhe_lock(root)?;
    let dir = tfhe_dir(root);
    if dir.join("client.sealed").exists() {
        return Ok(false);
    }
    std::fs::create_dir_all(&dir).map_err(|e| Error::io("creating", &dir, e))?;
    let set = predicate::generate().map_err(fhe_error)?;
    let data = SecretKey::generate();
    let wrapped = keys.wrap(&data, TFHE_CLIENT_CONTEXT.as_bytes())?;
    let (nonce, sealed) = keystore::seal(
        &data,
        &set.client.to_bytes().map_err(fhe_error)?,
        TFHE_CLIENT_CONTEXT.as_bytes(),
    );
    let mut blob = Vec::new();
    blob.extend_from_slice(&(wrapped.len() as u32).to_le_bytes());
    blob.extend_from_slice(&wrapped);
    blob.extend_from_slice(&nonce);
    blob.extend_from_slice(&sealed);
    // Public and server keys first; the client key last marks the set complete.
    write_atomic(
        &dir.join("public.bin"),
        &set.public.to_bytes().map_err(fhe_error)?,
    )?;
    write_atomic(
        &dir.join("server.bin"),
        &predicate::server_key_to_bytes(&set.server).map_err(fhe_error)?,
    )?;
    write_atomic(&dir.join("client.sealed"), &blob)?;
    Ok(true)
}

/// The exclusive lock over the deployment's tfhe key files, held while a
/// set is made or its client key re-wrapped; released when dropped.
fn tfhe_lock(root: &std::path::Path) -> Result<std::fs::File> {
    let parent = root.join("research").join("fhe");
    std::fs::create_dir_all(&parent).map_err(|e| Error::io("creating", &parent, e))?;
    crate::storage::fsutil::lock_exclusive(&parent.join("tfhe.lock"))
}

pub(super) fn tfhe_public(root: &std::path::Path) -> Result<predicate::PublicParams> {
    let bytes = std::fs::read(tfhe_dir(root).join("public.bin")).map_err(|_| Error::Invalid("this deployment has no tfhe keys yet: they are made when a study with a tfhe column is approved".into()))?;
    predicate::PublicParams::from_bytes(&bytes).map_err(fhe_error)
}

fn tfhe_server(root: &std::path::Path) -> Result<PredicateLayer> {
    let path = tfhe_dir(root).join("server.bin");
    let bytes = std::fs::read(&path).map_err(|e| Error::io("reading", &path, e))?;
    PredicateLayer::from_bytes(&bytes).map_err(fhe_error)
}

/// The deployment's tfhe server key, read once per process (and again
/// only if its file changes): it takes most of a second to load, and a
/// server answers many queries.
pub(super) fn tfhe_server_shared(root: &std::path::Path) -> Result<Arc<PredicateLayer>> {
    type Loaded = HashMap<PathBuf, (std::time::SystemTime, Arc<PredicateLayer>)>;
    static LOADED: std::sync::OnceLock<std::sync::Mutex<Loaded>> = std::sync::OnceLock::new();
    let path = tfhe_dir(root).join("server.bin");
    let modified = std::fs::metadata(&path)
        .and_then(|m| m.modified())
        .map_err(|e| Error::io("reading", &path, e))?;
    // Held while loading: queries at once (a server's, the demo's) wait for
    // one load instead of each reading the key (240 MB) into memory.
    let mut loaded = LOADED
        .get_or_init(Default::default)
        .lock()
        .expect("tfhe keys lock");
    if let Some((at, layer)) = loaded.get(&path)
        && *at == modified
    {
        return Ok(Arc::clone(layer));
    }
    let layer = Arc::new(tfhe_server(root)?);
    loaded.insert(path, (modified, Arc::clone(&layer)));
    Ok(layer)
}

/// Whether the deployment's tfhe custodian key file is wrapped under a KEK
/// other than the current one; unless `check_only`, re-wraps it under the
/// current KEK (the sealed key itself is unchanged) and replaces the file
/// atomically. For a rotation (`crate::rotation`).
pub(crate) fn rewrap_custodian(
    keys: &dyn KeyStore,
    root: &std::path::Path,
    check_only: bool,
) -> Result<bool> {
    // Not while a set is being made: it would be wrapped under the KEK
    // this rotation is about to destroy.
    let _lock = tfhe_lock(root)?;
    let path = tfhe_dir(root).join("client.sealed");
    let blob = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(Error::io("reading", &path, e)),
    };
    let bad = || Error::Invalid("the tfhe custodian key file is damaged".into());
    let len =
        u32::from_le_bytes(blob.get(..4).ok_or_else(bad)?.try_into().expect("4 bytes")) as usize;
    let wrapped = blob.get(4..4 + len).ok_or_else(bad)?;
    if keystore::wrapped_by(wrapped) == Some(keys.key_id().as_str()) {
        return Ok(false);
    }
    if check_only {
        return Ok(true);
    }
    let data = keys.unwrap(wrapped, TFHE_CLIENT_CONTEXT.as_bytes())?;
    let rewrapped = keys.wrap(&data, TFHE_CLIENT_CONTEXT.as_bytes())?;
    let mut out = Vec::with_capacity(blob.len() + rewrapped.len());
    out.extend_from_slice(&(rewrapped.len() as u32).to_le_bytes());
    out.extend_from_slice(&rewrapped);
    out.extend_from_slice(blob.get(4 + len..).ok_or_else(bad)?);
    write_atomic(&path, &out)?;
    Ok(true)
}

pub(super) fn tfhe_custodian(
    keys: &dyn KeyStore,
    root: &std::path::Path,
) -> Result<predicate::CustodianKey> {
    let path = tfhe_dir(root).join("client.sealed");
    let blob = std::fs::read(&path).map_err(|e| Error::io("reading", &path, e))?;
    let bad = || Error::Invalid("the tfhe custodian key file is damaged".into());
    let len =
        u32::from_le_bytes(blob.get(..4).ok_or_else(bad)?.try_into().expect("4 bytes")) as usize;
    let wrapped = blob.get(4..4 + len).ok_or_else(bad)?;
    let nonce = blob.get(4 + len..28 + len).ok_or_else(bad)?;
    let sealed = blob.get(28 + len..).ok_or_else(bad)?;
    let data = keys.unwrap(wrapped, TFHE_CLIENT_CONTEXT.as_bytes())?;
    let plain = zeroize::Zeroizing::new(
        keystore::open(&data, nonce, sealed, TFHE_CLIENT_CONTEXT.as_bytes()).ok_or_else(bad)?,
    );
    predicate::CustodianKey::from_bytes(&plain).map_err(fhe_error)
}

/// The study's ElGamal custodian key, once generated.
pub(crate) fn custodian_key(conn: &Connection, study: u64) -> Result<Option<CustodianKey>> {
    let bytes: Option<Vec<u8>> = conn
        .query_row(
            "SELECT custodian FROM research_fhe_keys WHERE study_id = ?1",
            [study as i64],
            |r| r.get(0),
        )
        .optional()?;
    bytes
        .map(|b| CustodianKey::from_bytes(&b).map_err(fhe_error))
        .transpose()
}

pub(super) fn shares(
    conn: &Connection,
    keys: &dyn KeyStore,
    study: u64,
    want: usize,
) -> Result<Vec<KeyShare>> {
    let mut stmt = conn.prepare("SELECT steward, wrapped, nonce, sealed FROM research_fhe_shares WHERE study_id = ?1 ORDER BY idx LIMIT ?2")?;
    let rows = stmt.query_map(params![study as i64, want as i64], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, Vec<u8>>(1)?,
            r.get::<_, Vec<u8>>(2)?,
            r.get::<_, Vec<u8>>(3)?,
        ))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (steward, wrapped, nonce, sealed) = row?;
        let context = share_context(study, &steward);
        let data = keys.unwrap(&wrapped, context.as_bytes())?;
        let plain = zeroize::Zeroizing::new(
            keystore::open(&data, &nonce, &sealed, context.as_bytes()).ok_or_else(|| {
                Error::Invalid(format!(
                    "steward {steward}'s key share for study {study} does not open"
                ))
            })?,
        );
        out.push(KeyShare::from_bytes(&plain).map_err(fhe_error)?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::keystore::{FileKeyStore, KdfParams};

    #[test]
    fn callers_at_once_make_one_tfhe_key_set_and_the_custodian_key_opens() {
        let dir = tempfile::tempdir().unwrap();
        let fast = KdfParams {
            m_cost_kib: 1024,
            t_cost: 1,
            p_cost: 1,
        };
        let keys = FileKeyStore::create(&dir.path().join("keystore.json"), "pw", fast).unwrap();
        let root = dir.path();
        // Two threads, each with its own descriptor of the lock file, as two
        // processes would have: exactly one makes the set.
        let made: Vec<bool> = std::thread::scope(|s| {
            let both: Vec<_> = (0..2)
                .map(|_| s.spawn(|| prepare_tfhe_keys(&keys, root).unwrap()))
                .collect();
            both.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert_eq!(made.iter().filter(|m| **m).count(), 1, "{made:?}");
        let files = ["public.bin", "server.bin", "client.sealed"];
        let stamps: Vec<_> = files
            .iter()
            .map(|f| {
                std::fs::metadata(tfhe_dir(root).join(f))
                    .unwrap()
                    .modified()
                    .unwrap()
            })
            .collect();
        // The set is complete and whole: its sealed client key opens, and a
        // later call changes nothing.
        tfhe_custodian(&keys, root).unwrap();
        assert!(!prepare_tfhe_keys(&keys, root).unwrap());
        for (f, at) in files.iter().zip(&stamps) {
            let now = std::fs::metadata(tfhe_dir(root).join(f))
                .unwrap()
                .modified()
                .unwrap();
            assert_eq!(now, *at, "{f} was rewritten");
        }
    }
}
