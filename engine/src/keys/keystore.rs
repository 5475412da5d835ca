//! Key-encryption keys.
//!
//! Every data key (a patient's, an account's, a second factor's, the audit
//! MAC key, the FHE key material's) is stored only wrapped (encrypted) under
//! a key-encryption key (KEK) held by a [`KeyStore`]. Two keystores exist:
//!
//! - [`FileKeyStore`], the default: a file holding random KEKs, each sealed
//!   under a key derived from a passphrase with argon2id;
//! - [`super::pkcs11::Pkcs11KeyStore`]: an HSM reached through PKCS#11,
//!   whose KEKs are generated inside the token and never leave it.
//!
//! A keystore may hold several KEKs at once: the *current* one wraps, and
//! every one it holds unwraps, so a rotation (`crate::rotation`) can
//! re-wrap keys in small batches while readers keep working. Each wrapped
//! key therefore names the KEK that wrapped it ([`wrapped_by`]):
//!
//! ```text
//! version 2:  [2] [n] [key id: n bytes] [keystore-specific: nonce, ciphertext, tag]
//!             AEAD associated data = [n] [key id] [context]
//! version 1:  [1] [nonce: 24] [ciphertext + tag: 48]    (before issue 28; file keystore)
//! ```
//!
//! Version 1 keys still unwrap (with any KEK of the file keystore) and a
//! rotation re-wraps them as version 2.

use std::path::{Path, PathBuf};
use std::sync::RwLock;

use argon2::{Algorithm, Argon2, Params, Version};
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use data_encoding::HEXLOWER;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::{Error, Result};

/// A 256-bit symmetric key that is zeroed when dropped and never printed.
#[derive(Clone)]
pub struct SecretKey(Zeroizing<[u8; 32]>);

impl SecretKey {
    /// A fresh key from the operating system's entropy.
    pub fn generate() -> Self {
        let mut bytes = Zeroizing::new([0u8; 32]);
        getrandom::fill(bytes.as_mut()).expect("the operating system's entropy source failed");
        SecretKey(bytes)
    }

    /// The key's bytes, for a cipher.
    pub fn expose(&self) -> &[u8; 32] {
        &self.0
    }

    pub(crate) fn from_slice(bytes: &[u8]) -> Option<Self> {
        let array: [u8; 32] = bytes.try_into().ok()?;
        Some(SecretKey(Zeroizing::new(array)))
    }
}

impl std::fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretKey(..)")
    }
}

/// Holds the key-encryption keys and wraps and unwraps data keys with them.
///
/// `context` binds a wrapped key to what it protects (the patient id): a
/// wrapped key copied to another patient does not unwrap.
///
/// Adding and destroying KEKs changes state shared by every process on the
/// same data directory; [`crate::rotation`] does both while holding the
/// metadata database's write lock, which serializes them.
pub trait KeyStore: Send + Sync {
    /// Which kind of keystore this is: `file` or `pkcs11`.
    fn kind(&self) -> &'static str;
    /// The non-secret identifier of the current KEK, the one that wraps.
    fn key_id(&self) -> String;
    /// Encrypts `key` under the current KEK (a version 2 wrapped key).
    fn wrap(&self, key: &SecretKey, context: &[u8]) -> Result<Vec<u8>>;
    /// Decrypts a key produced by [`KeyStore::wrap`] with the same
    /// `context`, under whichever KEK of this keystore wrapped it.
    fn unwrap(&self, wrapped: &[u8], context: &[u8]) -> Result<SecretKey>;
    /// The identifiers of every KEK the keystore holds, the current included.
    fn key_ids(&self) -> Result<Vec<String>>;
    /// Generates a new KEK and makes it the current one; the others still
    /// unwrap. Returns its identifier.
    fn add_kek(&self) -> Result<String>;
    /// Destroys a KEK that is not the current one: what it wrapped no
    /// longer unwraps, so a rotation calls this only once nothing refers
    /// to it.
    fn destroy_kek(&self, key_id: &str) -> Result<()>;
}

/// The first byte of a wrapped key that names its KEK.
pub const WRAP_VERSION: u8 = 2;
/// The first byte of a pre-rotation (file keystore) wrapped key.
const WRAP_V1: u8 = 1;
const V1_LEN: usize = 1 + 24 + 32 + 16;
/// The longest KEK identifier a wrapped key can name.
pub const MAX_KEY_ID: usize = 64;

/// The identifier of the KEK that wrapped `wrapped`; `None` for a version 1
/// key (which names none) or bytes that are no wrapped key.
pub fn wrapped_by(wrapped: &[u8]) -> Option<&str> {
    unframe(wrapped).map(|(id, _)| id)
}

/// The bytes every key wrapped under `key_id` starts with (for a query
/// that finds the keys a rotation has not re-wrapped yet).
pub fn frame_prefix(key_id: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(2 + key_id.len());
    out.push(WRAP_VERSION);
    out.push(key_id.len() as u8);
    out.extend_from_slice(key_id.as_bytes());
    out
}

/// `[2] [n] [key id] [body]`.
pub(crate) fn frame(key_id: &str, body: &[u8]) -> Vec<u8> {
    debug_assert!(!key_id.is_empty() && key_id.len() <= MAX_KEY_ID);
    let mut out = frame_prefix(key_id);
    out.extend_from_slice(body);
    out
}

/// The key id and body of a version 2 wrapped key.
pub(crate) fn unframe(wrapped: &[u8]) -> Option<(&str, &[u8])> {
    let (&version, rest) = wrapped.split_first()?;
    let (&n, rest) = rest.split_first()?;
    let n = n as usize;
    if version != WRAP_VERSION || n == 0 || n > MAX_KEY_ID || rest.len() < n {
        return None;
    }
    let id = std::str::from_utf8(&rest[..n]).ok()?;
    Some((id, &rest[n..]))
}

/// The associated data of a version 2 wrapped key: the KEK's id (so a
/// header swapped onto another body fails) and then the context. The id's
/// length comes first, so the encoding is injective.
pub(crate) fn bound_aad(key_id: &str, context: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(1 + key_id.len() + context.len());
    out.push(key_id.len() as u8);
    out.extend_from_slice(key_id.as_bytes());
    out.extend_from_slice(context);
    out
}

fn decrypt_failed() -> Error {
    Error::Decrypt {
        what: "a wrapped data key".into(),
    }
}

/// The Argon2id cost of deriving the passphrase key (OWASP's minimum
/// recommendation by default: 19 MiB, 2 passes, 1 lane).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct KdfParams {
    /// Memory in KiB.
    pub m_cost_kib: u32,
    /// Passes.
    pub t_cost: u32,
    /// Lanes.
    pub p_cost: u32,
}

impl Default for KdfParams {
    fn default() -> Self {
        KdfParams {
            m_cost_kib: 19 * 1024,
            t_cost: 2,
            p_cost: 1,
        }
    }
}

const FILE_FORMAT: &str = "cohort-keystore";
/// Version 2 holds several KEKs and names the current one; version 1 (one
/// KEK) is still read, and rewritten as version 2 on the first change.
const FILE_VERSION: u32 = 2;

/// The keystore file, version 1.
#[derive(Serialize, Deserialize)]
struct KeystoreFileV1 {
    format: String,
    version: u32,
    key_id: String,
    kdf: KdfSection,
    kek: SealedSection,
}

/// The keystore file, version 2.
#[derive(Serialize, Deserialize)]
struct KeystoreFile {
    format: String,
    version: u32,
    current: String,
    kdf: KdfSection,
    keks: Vec<SealedKek>,
}

#[derive(Serialize, Deserialize, Clone, PartialEq)]
struct KdfSection {
    algorithm: String,
    #[serde(flatten)]
    params: KdfParams,
    salt: String,
}

#[derive(Serialize, Deserialize)]
struct SealedSection {
    aead: String,
    nonce: String,
    ciphertext: String,
}

#[derive(Serialize, Deserialize)]
struct SealedKek {
    key_id: String,
    #[serde(flatten)]
    sealed: SealedSection,
}

/// What identifies one version of the keystore file on disk: a rewrite
/// (always a rename of a new file) changes the inode.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Stamp {
    ino: u64,
    len: u64,
    modified: Option<std::time::SystemTime>,
}

fn stamp(path: &Path) -> Result<Stamp> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).map_err(|e| Error::io("reading", path, e))?;
    Ok(Stamp {
        ino: m.ino(),
        len: m.len(),
        modified: m.modified().ok(),
    })
}

/// The KEKs of a file keystore, unsealed, and what sealed them.
struct FileState {
    /// argon2id(passphrase, salt): seals every KEK in the file.
    sealing: SecretKey,
    kdf: KdfSection,
    current: String,
    keks: Vec<(String, SecretKey)>,
    stamp: Stamp,
}

impl FileState {
    fn kek(&self, id: &str) -> Option<&SecretKey> {
        self.keks.iter().find(|(k, _)| k == id).map(|(_, key)| key)
    }
}

/// How the file's KEKs are unsealed: with the passphrase, or (on a reload
/// by a process that already unlocked it) with the key it derived.
enum Unseal<'a> {
    Passphrase(&'a str),
    Derived(&'a SecretKey, &'a KdfSection),
}

/// A keystore kept in one file, protected by a passphrase (argon2id).
///
/// Other processes on the same data directory (a rotation run beside
/// `cohort serve`) may rewrite the file: before each wrap, and when asked
/// to unwrap under a KEK it does not know, the keystore reloads the file if
/// it changed, so it wraps under the current KEK and unwraps what the
/// rotation re-wrapped.
pub struct FileKeyStore {
    path: PathBuf,
    state: RwLock<FileState>,
}

impl FileKeyStore {
    /// Opens the keystore at `path`, or creates it with a fresh KEK if absent.
    pub fn open_or_create(path: &Path, passphrase: &str, params: KdfParams) -> Result<Self> {
        if path.exists() {
            Self::open(path, passphrase)
        } else {
            Self::create(path, passphrase, params)
        }
    }

    /// Creates a new keystore file with a fresh random KEK. Refuses to
    /// overwrite an existing one: that would orphan every wrapped data key.
    pub fn create(path: &Path, passphrase: &str, params: KdfParams) -> Result<Self> {
        if passphrase.is_empty() {
            return Err(keystore_err(path, "the passphrase is empty"));
        }
        if path.exists() {
            return Err(keystore_err(
                path,
                "already exists; refusing to overwrite it",
            ));
        }
        let (sealing, kdf) = new_sealing(path, passphrase, params)?;
        let key_id = new_file_key_id();
        let mut state = FileState {
            sealing,
            kdf,
            current: key_id.clone(),
            keks: vec![(key_id, SecretKey::generate())],
            stamp: Stamp {
                ino: 0,
                len: 0,
                modified: None,
            },
        };
        write_file(path, &mut state)?;
        Ok(FileKeyStore {
            path: path.to_owned(),
            state: RwLock::new(state),
        })
    }

    /// Opens an existing keystore; a wrong passphrase is a clear error.
    pub fn open(path: &Path, passphrase: &str) -> Result<Self> {
        let state = load(path, Unseal::Passphrase(passphrase))?;
        Ok(FileKeyStore {
            path: path.to_owned(),
            state: RwLock::new(state),
        })
    }

    /// Where the keystore lives.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Re-seals every KEK under `new_passphrase` (a fresh salt, `params`)
    /// and replaces the file atomically: a crash leaves the old file or the
    /// new one, never a mix. The KEKs themselves do not change, so no
    /// wrapped key needs re-wrapping. Another process that opened the
    /// keystore with the old passphrase must be restarted with the new one
    /// before it can see a later rotation.
    pub fn change_passphrase(&self, new_passphrase: &str, params: KdfParams) -> Result<()> {
        if new_passphrase.is_empty() {
            return Err(keystore_err(&self.path, "the new passphrase is empty"));
        }
        let mut state = self.state.write().expect("keystore lock");
        reload_if_changed(&self.path, &mut state)?;
        let (sealing, kdf) = new_sealing(&self.path, new_passphrase, params)?;
        let mut next = FileState {
            sealing,
            kdf,
            current: state.current.clone(),
            keks: state.keks.clone(),
            stamp: state.stamp,
        };
        write_file(&self.path, &mut next)?;
        *state = next;
        Ok(())
    }

    fn refresh(&self) -> Result<()> {
        let now = stamp(&self.path)?;
        if now == self.state.read().expect("keystore lock").stamp {
            return Ok(());
        }
        let mut state = self.state.write().expect("keystore lock");
        reload_if_changed(&self.path, &mut state)
    }
}

impl KeyStore for FileKeyStore {
    fn kind(&self) -> &'static str {
        "file"
    }

    fn key_id(&self) -> String {
        self.state.read().expect("keystore lock").current.clone()
    }

    fn wrap(&self, key: &SecretKey, context: &[u8]) -> Result<Vec<u8>> {
        self.refresh()?;
        let state = self.state.read().expect("keystore lock");
        let id = &state.current;
        let kek = state.kek(id).expect("the current KEK is held");
        let (nonce, ciphertext) = seal(kek, key.expose(), &bound_aad(id, context));
        Ok(frame(id, &[nonce.as_slice(), &ciphertext].concat()))
    }

    fn unwrap(&self, wrapped: &[u8], context: &[u8]) -> Result<SecretKey> {
        if wrapped.len() == V1_LEN && wrapped[0] == WRAP_V1 {
            // Version 1 names no KEK: it was wrapped by this file's first.
            let state = self.state.read().expect("keystore lock");
            return state
                .keks
                .iter()
                .find_map(|(_, kek)| open(kek, &wrapped[1..25], &wrapped[25..], context))
                .and_then(|bytes| SecretKey::from_slice(&bytes))
                .ok_or_else(decrypt_failed);
        }
        let (id, body) = unframe(wrapped).ok_or_else(decrypt_failed)?;
        if body.len() != 24 + 32 + 16 {
            return Err(decrypt_failed());
        }
        if self.state.read().expect("keystore lock").kek(id).is_none() {
            self.refresh()?;
        }
        let state = self.state.read().expect("keystore lock");
        let kek = state.kek(id).ok_or_else(|| unknown_kek(&self.path, id))?;
        open(kek, &body[..24], &body[24..], &bound_aad(id, context))
            .and_then(|bytes| SecretKey::from_slice(&bytes))
            .ok_or_else(decrypt_failed)
    }

    fn key_ids(&self) -> Result<Vec<String>> {
        self.refresh()?;
        let state = self.state.read().expect("keystore lock");
        Ok(state.keks.iter().map(|(id, _)| id.clone()).collect())
    }

    fn add_kek(&self) -> Result<String> {
        let mut state = self.state.write().expect("keystore lock");
        reload_if_changed(&self.path, &mut state)?;
        let id = new_file_key_id();
        state.keks.push((id.clone(), SecretKey::generate()));
        let previous = std::mem::replace(&mut state.current, id.clone());
        if let Err(e) = write_file(&self.path, &mut state) {
            state.keks.pop();
            state.current = previous;
            return Err(e);
        }
        Ok(id)
    }

    fn destroy_kek(&self, key_id: &str) -> Result<()> {
        let mut state = self.state.write().expect("keystore lock");
        reload_if_changed(&self.path, &mut state)?;
        if state.current == key_id {
            return Err(keystore_err(
                &self.path,
                &format!("refusing to destroy {key_id}: it is the current KEK"),
            ));
        }
        let Some(at) = state.keks.iter().position(|(k, _)| k == key_id) else {
            return Ok(());
        };
        let removed = state.keks.remove(at);
        if let Err(e) = write_file(&self.path, &mut state) {
            state.keks.insert(at, removed);
            return Err(e);
        }
        Ok(())
    }
}

fn new_file_key_id() -> String {
    let mut id = [0u8; 8];
    getrandom::fill(&mut id).expect("entropy");
    format!("file:{}", HEXLOWER.encode(&id))
}

fn new_sealing(
    path: &Path,
    passphrase: &str,
    params: KdfParams,
) -> Result<(SecretKey, KdfSection)> {
    let mut salt = [0u8; 16];
    getrandom::fill(&mut salt).expect("entropy");
    let sealing = derive(path, passphrase, &salt, params)?;
    let kdf = KdfSection {
        algorithm: "argon2id".into(),
        params,
        salt: HEXLOWER.encode(&salt),
    };
    Ok((sealing, kdf))
}

/// Writes `state` as a version 2 file, atomically, and records its stamp.
fn write_file(path: &Path, state: &mut FileState) -> Result<()> {
    let keks = state
        .keks
        .iter()
        .map(|(key_id, kek)| {
            let (nonce, ciphertext) = seal(&state.sealing, kek.expose(), key_id.as_bytes());
            SealedKek {
                key_id: key_id.clone(),
                sealed: SealedSection {
                    aead: "xchacha20poly1305".into(),
                    nonce: HEXLOWER.encode(&nonce),
                    ciphertext: HEXLOWER.encode(&ciphertext),
                },
            }
        })
        .collect();
    let file = KeystoreFile {
        format: FILE_FORMAT.into(),
        version: FILE_VERSION,
        current: state.current.clone(),
        kdf: state.kdf.clone(),
        keks,
    };
    let text = serde_json::to_string_pretty(&file).expect("serializable");
    crate::storage::fsutil::write_atomic(path, text.as_bytes())?;
    state.stamp = stamp(path)?;
    Ok(())
}

/// Re-reads the file if another process rewrote it.
fn reload_if_changed(path: &Path, state: &mut FileState) -> Result<()> {
    if stamp(path)? == state.stamp {
        return Ok(());
    }
    let next = load(path, Unseal::Derived(&state.sealing, &state.kdf))?;
    *state = next;
    Ok(())
}

fn load(path: &Path, unseal: Unseal<'_>) -> Result<FileState> {
    let before = stamp(path)?;
    let text = std::fs::read_to_string(path).map_err(|e| Error::io("reading", path, e))?;
    let head: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| keystore_err(path, &format!("is not a cohort keystore: {e}")))?;
    let not_ours =
        |e: serde_json::Error| keystore_err(path, &format!("is not a cohort keystore: {e}"));
    let format = head.get("format").and_then(|v| v.as_str()).unwrap_or("");
    let version = head.get("version").and_then(|v| v.as_u64()).unwrap_or(0);
    let file = match (format, version) {
        (FILE_FORMAT, 1) => {
            let v1: KeystoreFileV1 = serde_json::from_value(head).map_err(not_ours)?;
            KeystoreFile {
                format: v1.format,
                version: 1,
                current: v1.key_id.clone(),
                kdf: v1.kdf,
                keks: vec![SealedKek {
                    key_id: v1.key_id,
                    sealed: v1.kek,
                }],
            }
        }
        (FILE_FORMAT, 2) => serde_json::from_value(head).map_err(not_ours)?,
        _ => {
            return Err(keystore_err(
                path,
                &format!(
                    "has format {format} v{version}, this build reads {FILE_FORMAT} v1 and v{FILE_VERSION}"
                ),
            ));
        }
    };
    if file.kdf.algorithm != "argon2id"
        || file
            .keks
            .iter()
            .any(|k| k.sealed.aead != "xchacha20poly1305")
    {
        return Err(keystore_err(
            path,
            "uses an algorithm this build does not support",
        ));
    }
    let bad = |what: &str| keystore_err(path, &format!("field `{what}` is not valid hex"));
    let salt = HEXLOWER
        .decode(file.kdf.salt.as_bytes())
        .map_err(|_| bad("kdf.salt"))?;
    let sealing = match unseal {
        Unseal::Passphrase(p) => derive(path, p, &salt, file.kdf.params)?,
        Unseal::Derived(key, kdf) if *kdf == file.kdf => key.clone(),
        Unseal::Derived(..) => {
            return Err(keystore_err(
                path,
                "was re-sealed under a new passphrase since this process opened it: restart \
                 the process with the new passphrase",
            ));
        }
    };
    let mut keks = Vec::with_capacity(file.keks.len());
    for sealed in &file.keks {
        if sealed.key_id.is_empty() || sealed.key_id.len() > MAX_KEY_ID {
            return Err(keystore_err(path, "holds a KEK id of a bad length"));
        }
        let nonce = HEXLOWER
            .decode(sealed.sealed.nonce.as_bytes())
            .map_err(|_| bad("nonce"))?;
        let ciphertext = HEXLOWER
            .decode(sealed.sealed.ciphertext.as_bytes())
            .map_err(|_| bad("ciphertext"))?;
        let kek = open(&sealing, &nonce, &ciphertext, sealed.key_id.as_bytes())
            .and_then(|bytes| SecretKey::from_slice(&bytes))
            .ok_or_else(|| keystore_err(path, "wrong passphrase (or the file was altered)"))?;
        keks.push((sealed.key_id.clone(), kek));
    }
    if !keks.iter().any(|(id, _)| *id == file.current) {
        return Err(keystore_err(
            path,
            &format!(
                "names {} as its current KEK but does not hold it",
                file.current
            ),
        ));
    }
    Ok(FileState {
        sealing,
        kdf: file.kdf,
        current: file.current,
        keks,
        stamp: before,
    })
}

fn unknown_kek(path: &Path, id: &str) -> Error {
    keystore_err(
        path,
        &format!(
            "this key was wrapped under KEK `{id}`, which the keystore does not hold: it was \
             destroyed by a rotation, or the key belongs to another keystore"
        ),
    )
}

fn keystore_err(path: &Path, reason: &str) -> Error {
    Error::Keystore {
        path: path.to_owned(),
        reason: reason.to_owned(),
    }
}

fn derive(path: &Path, passphrase: &str, salt: &[u8], p: KdfParams) -> Result<SecretKey> {
    let params = Params::new(p.m_cost_kib, p.t_cost, p.p_cost, Some(32))
        .map_err(|e| keystore_err(path, &format!("invalid argon2id parameters: {e}")))?;
    let mut out = Zeroizing::new([0u8; 32]);
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
        .hash_password_into(passphrase.as_bytes(), salt, out.as_mut())
        .map_err(|e| keystore_err(path, &format!("argon2id failed: {e}")))?;
    Ok(SecretKey(out))
}

/// XChaCha20-Poly1305 with a random 192-bit nonce (safe to draw at random).
pub(crate) fn seal(key: &SecretKey, plaintext: &[u8], aad: &[u8]) -> ([u8; 24], Vec<u8>) {
    let mut nonce = [0u8; 24];
    getrandom::fill(&mut nonce).expect("entropy");
    let cipher = XChaCha20Poly1305::new_from_slice(key.expose()).expect("32-byte key");
    let ciphertext = cipher
        .encrypt(
            &XNonce::from(nonce),
            Payload {
                msg: plaintext,
                aad,
            },
        )
        .expect("plaintext within XChaCha20-Poly1305 limits");
    (nonce, ciphertext)
}

/// Opens what [`seal`] produced; `None` if the key, nonce, AAD or ciphertext is wrong.
pub(crate) fn open(
    key: &SecretKey,
    nonce: &[u8],
    ciphertext: &[u8],
    aad: &[u8],
) -> Option<Vec<u8>> {
    let nonce: [u8; 24] = nonce.try_into().ok()?;
    let cipher = XChaCha20Poly1305::new_from_slice(key.expose()).expect("32-byte key");
    cipher
        .decrypt(
            &XNonce::from(nonce),
            Payload {
                msg: ciphertext,
                aad,
            },
        )
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const FAST: KdfParams = KdfParams {
        m_cost_kib: 1024,
        t_cost: 1,
        p_cost: 1,
    };

    fn store(dir: &tempfile::TempDir) -> (PathBuf, FileKeyStore) {
        let path = dir.path().join("ks.json");
        let ks = FileKeyStore::create(&path, "correct horse", FAST).unwrap();
        (path, ks)
    }

    #[test]
    fn wrap_round_trips_and_binds_context() {
        let dir = tempfile::tempdir().unwrap();
        let (path, ks) = store(&dir);
        let dek = SecretKey::generate();
        let wrapped = ks.wrap(&dek, b"patient-1").unwrap();
        assert_eq!(wrapped_by(&wrapped), Some(ks.key_id().as_str()));
        assert_eq!(
            ks.unwrap(&wrapped, b"patient-1").unwrap().expose(),
            dek.expose()
        );
        assert!(
            ks.unwrap(&wrapped, b"patient-2").is_err(),
            "context must be bound"
        );
        let reopened = FileKeyStore::open(&path, "correct horse").unwrap();
        assert_eq!(
            reopened.unwrap(&wrapped, b"patient-1").unwrap().expose(),
            dek.expose()
        );
    }

    #[test]
    fn the_kek_id_in_the_header_is_authenticated() {
        let dir = tempfile::tempdir().unwrap();
        let (_, ks) = store(&dir);
        let first = ks.key_id();
        let dek = SecretKey::generate();
        let wrapped = ks.wrap(&dek, b"p").unwrap();
        let second = ks.add_kek().unwrap();
        // The same body under the other KEK's id (same length) must not open.
        let (_, body) = unframe(&wrapped).unwrap();
        let swapped = frame(&second, body);
        assert!(ks.unwrap(&swapped, b"p").is_err());
        assert!(ks.unwrap(&wrapped, b"p").is_ok(), "{first} still unwraps");
    }

    #[test]
    fn wrong_passphrase_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ks.json");
        FileKeyStore::create(&path, "right", FAST).unwrap();
        let err = FileKeyStore::open(&path, "wrong")
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("wrong passphrase"), "{err}");
        assert!(
            FileKeyStore::create(&path, "right", FAST).is_err(),
            "must not overwrite"
        );
    }

    #[test]
    fn keystore_file_holds_no_plain_key() {
        let dir = tempfile::tempdir().unwrap();
        let (path, ks) = store(&dir);
        ks.add_kek().unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        for (_, kek) in &ks.state.read().unwrap().keks {
            assert!(!text.contains(&HEXLOWER.encode(kek.expose())));
            assert_eq!(format!("{kek:?}"), "SecretKey(..)");
        }
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "the keystore must be owner-only");
        }
    }

    #[test]
    fn a_new_kek_wraps_and_the_old_one_unwraps_until_destroyed() {
        let dir = tempfile::tempdir().unwrap();
        let (_, ks) = store(&dir);
        let old = ks.key_id();
        let dek = SecretKey::generate();
        let under_old = ks.wrap(&dek, b"p").unwrap();
        let new = ks.add_kek().unwrap();
        assert_ne!(old, new);
        assert_eq!(ks.key_id(), new);
        let mut ids = ks.key_ids().unwrap();
        ids.sort();
        let mut want = vec![old.clone(), new.clone()];
        want.sort();
        assert_eq!(ids, want);
        let under_new = ks.wrap(&dek, b"p").unwrap();
        assert_eq!(wrapped_by(&under_new), Some(new.as_str()));
        assert_eq!(ks.unwrap(&under_old, b"p").unwrap().expose(), dek.expose());
        let err = ks.destroy_kek(&new).unwrap_err().to_string();
        assert!(err.contains("current KEK"), "{err}");
        ks.destroy_kek(&old).unwrap();
        assert_eq!(ks.key_ids().unwrap(), vec![new.clone()]);
        let err = ks.unwrap(&under_old, b"p").unwrap_err().to_string();
        assert!(err.contains(&old) && err.contains("does not hold"), "{err}");
        assert_eq!(ks.unwrap(&under_new, b"p").unwrap().expose(), dek.expose());
        let reopened = FileKeyStore::open(ks.path(), "correct horse").unwrap();
        assert_eq!(reopened.key_ids().unwrap(), vec![new]);
    }

    #[test]
    fn another_process_sees_a_new_kek_without_the_passphrase() {
        let dir = tempfile::tempdir().unwrap();
        let (path, rotator) = store(&dir);
        let server = FileKeyStore::open(&path, "correct horse").unwrap();
        let dek = SecretKey::generate();
        let old = rotator.key_id();
        let new = rotator.add_kek().unwrap();
        // The server wraps under the new KEK at once, and unwraps what the
        // rotation re-wrapped.
        let wrapped = server.wrap(&dek, b"p").unwrap();
        assert_eq!(wrapped_by(&wrapped), Some(new.as_str()));
        let rewrapped = rotator.wrap(&dek, b"q").unwrap();
        assert_eq!(
            server.unwrap(&rewrapped, b"q").unwrap().expose(),
            dek.expose()
        );
        rotator.destroy_kek(&old).unwrap();
        assert_eq!(server.key_ids().unwrap(), vec![new]);
    }

    #[test]
    fn a_passphrase_change_refuses_the_old_one_and_keeps_every_key() {
        let dir = tempfile::tempdir().unwrap();
        let (path, ks) = store(&dir);
        ks.add_kek().unwrap();
        let dek = SecretKey::generate();
        let wrapped = ks.wrap(&dek, b"p").unwrap();
        let other = FileKeyStore::open(&path, "correct horse").unwrap();
        assert!(ks.change_passphrase("", FAST).is_err(), "empty refused");
        ks.change_passphrase("battery staple", FAST).unwrap();
        let err = FileKeyStore::open(&path, "correct horse")
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("wrong passphrase"), "{err}");
        let reopened = FileKeyStore::open(&path, "battery staple").unwrap();
        assert_eq!(
            reopened.unwrap(&wrapped, b"p").unwrap().expose(),
            dek.expose()
        );
        assert_eq!(reopened.key_ids().unwrap().len(), 2);
        // A process that unlocked with the old passphrase keeps its keys in
        // memory but is told to restart when the file changes under it.
        assert!(other.unwrap(&wrapped, b"p").is_ok());
        let err = other.add_kek().unwrap_err().to_string();
        assert!(err.contains("restart"), "{err}");
    }

    #[test]
    fn a_version_1_file_and_its_keys_still_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ks.json");
        // A keystore as the build before KEK versions wrote it.
        let salt = [7u8; 16];
        let sealing = derive(&path, "pw", &salt, FAST).unwrap();
        let kek = SecretKey::generate();
        let (nonce, ciphertext) = seal(&sealing, kek.expose(), b"file:0011223344556677");
        let v1 = serde_json::json!({
            "format": "cohort-keystore", "version": 1, "key_id": "file:0011223344556677",
            "kdf": {"algorithm": "argon2id", "m_cost_kib": 1024, "t_cost": 1, "p_cost": 1,
                    "salt": HEXLOWER.encode(&salt)},
            "kek": {"aead": "xchacha20poly1305", "nonce": HEXLOWER.encode(&nonce),
                    "ciphertext": HEXLOWER.encode(&ciphertext)},
        });
        std::fs::write(&path, v1.to_string()).unwrap();
        let dek = SecretKey::generate();
        let (n, c) = seal(&kek, dek.expose(), b"patient-1");
        let old_blob = [[WRAP_V1].as_slice(), &n, &c].concat();
        assert_eq!(old_blob.len(), V1_LEN);
        assert_eq!(wrapped_by(&old_blob), None, "version 1 names no KEK");
        let ks = FileKeyStore::open(&path, "pw").unwrap();
        assert_eq!(ks.key_id(), "file:0011223344556677");
        assert_eq!(
            ks.unwrap(&old_blob, b"patient-1").unwrap().expose(),
            dek.expose()
        );
        assert!(ks.unwrap(&old_blob, b"patient-2").is_err());
        ks.add_kek().unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("\"version\": 2"), "{text}");
        let ks = FileKeyStore::open(&path, "pw").unwrap();
        assert_eq!(
            ks.unwrap(&old_blob, b"patient-1").unwrap().expose(),
            dek.expose()
        );
    }
}
