//! Key-encryption keys.
//!
//! Every patient's data key is stored only wrapped (encrypted) under a
//! key-encryption key (KEK) held by a [`KeyStore`]. The default keystore is a
//! passphrase-protected file: the KEK is random and stored encrypted under a
//! key derived from the passphrase with argon2id. A PKCS#11 HSM keystore
//! would implement the same trait; it is not built yet (issue 28).

use std::path::{Path, PathBuf};

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

    fn from_slice(bytes: &[u8]) -> Option<Self> {
        let array: [u8; 32] = bytes.try_into().ok()?;
        Some(SecretKey(Zeroizing::new(array)))
    }
}

impl std::fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretKey(..)")
    }
}

/// Holds the key-encryption key and wraps and unwraps data keys with it.
///
/// `context` binds a wrapped key to what it protects (the patient id): a
/// wrapped key copied to another patient does not unwrap.
pub trait KeyStore: Send + Sync {
    /// A stable, non-secret identifier of the key-encryption key.
    fn key_id(&self) -> &str;
    /// Encrypts `key` under the key-encryption key.
    fn wrap(&self, key: &SecretKey, context: &[u8]) -> Result<Vec<u8>>;
    /// Decrypts a key produced by [`KeyStore::wrap`] with the same `context`.
    fn unwrap(&self, wrapped: &[u8], context: &[u8]) -> Result<SecretKey>;
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

const WRAP_VERSION: u8 = 1;
const FILE_FORMAT: &str = "cohort-keystore";
const FILE_VERSION: u32 = 1;

#[derive(Serialize, Deserialize)]
struct KeystoreFile {
    format: String,
    version: u32,
    key_id: String,
    kdf: KdfSection,
    kek: SealedSection,
}

#[derive(Serialize, Deserialize)]
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

/// A keystore kept in one file, protected by a passphrase (argon2id).
pub struct FileKeyStore {
    path: PathBuf,
    key_id: String,
    kek: SecretKey,
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
        let kek = SecretKey::generate();
        let mut salt = [0u8; 16];
        getrandom::fill(&mut salt).expect("entropy");
        let mut id = [0u8; 8];
        getrandom::fill(&mut id).expect("entropy");
        let key_id = format!("file:{}", HEXLOWER.encode(&id));
        let wrapping = derive(path, passphrase, &salt, params)?;
        let (nonce, ciphertext) = seal(&wrapping, kek.expose(), key_id.as_bytes());
        let file = KeystoreFile {
            format: FILE_FORMAT.into(),
            version: FILE_VERSION,
            key_id: key_id.clone(),
            kdf: KdfSection {
                algorithm: "argon2id".into(),
                params,
                salt: HEXLOWER.encode(&salt),
            },
            kek: SealedSection {
                aead: "xchacha20poly1305".into(),
                nonce: HEXLOWER.encode(&nonce),
                ciphertext: HEXLOWER.encode(&ciphertext),
            },
        };
        let text = serde_json::to_string_pretty(&file).expect("serializable");
        crate::storage::fsutil::write_atomic(path, text.as_bytes())?;
        Ok(FileKeyStore {
            path: path.to_owned(),
            key_id,
            kek,
        })
    }

    /// Opens an existing keystore; a wrong passphrase is a clear error.
    pub fn open(path: &Path, passphrase: &str) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io("reading", path, e))?;
        let file: KeystoreFile = serde_json::from_str(&text)
            .map_err(|e| keystore_err(path, &format!("is not a cohort keystore: {e}")))?;
        if file.format != FILE_FORMAT || file.version != FILE_VERSION {
            return Err(keystore_err(
                path,
                &format!(
                    "has format {} v{}, this build reads {FILE_FORMAT} v{FILE_VERSION}",
                    file.format, file.version
                ),
            ));
        }
        if file.kdf.algorithm != "argon2id" || file.kek.aead != "xchacha20poly1305" {
            return Err(keystore_err(
                path,
                "uses an algorithm this build does not support",
            ));
        }
        let bad = |what: &str| keystore_err(path, &format!("field `{what}` is not valid hex"));
        let salt = HEXLOWER
            .decode(file.kdf.salt.as_bytes())
            .map_err(|_| bad("kdf.salt"))?;
        let nonce = HEXLOWER
            .decode(file.kek.nonce.as_bytes())
            .map_err(|_| bad("kek.nonce"))?;
        let ciphertext = HEXLOWER
            .decode(file.kek.ciphertext.as_bytes())
            .map_err(|_| bad("kek.ciphertext"))?;
        let wrapping = derive(path, passphrase, &salt, file.kdf.params)?;
        let kek = open(&wrapping, &nonce, &ciphertext, file.key_id.as_bytes())
            .and_then(|bytes| SecretKey::from_slice(&bytes))
            .ok_or_else(|| keystore_err(path, "wrong passphrase (or the file was altered)"))?;
        Ok(FileKeyStore {
            path: path.to_owned(),
            key_id: file.key_id,
            kek,
        })
    }

    /// Where the keystore lives.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl KeyStore for FileKeyStore {
    fn key_id(&self) -> &str {
        &self.key_id
    }

    fn wrap(&self, key: &SecretKey, context: &[u8]) -> Result<Vec<u8>> {
        let (nonce, ciphertext) = seal(&self.kek, key.expose(), context);
        let mut out = Vec::with_capacity(1 + nonce.len() + ciphertext.len());
        out.push(WRAP_VERSION);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ciphertext);
        Ok(out)
    }

    fn unwrap(&self, wrapped: &[u8], context: &[u8]) -> Result<SecretKey> {
        let fail = || Error::Decrypt {
            what: "a wrapped data key".into(),
        };
        if wrapped.len() != 1 + 24 + 32 + 16 || wrapped[0] != WRAP_VERSION {
            return Err(fail());
        }
        let bytes = open(&self.kek, &wrapped[1..25], &wrapped[25..], context).ok_or_else(fail)?;
        SecretKey::from_slice(&bytes).ok_or_else(fail)
    }
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

    #[test]
    fn wrap_round_trips_and_binds_context() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ks.json");
        let ks = FileKeyStore::create(&path, "correct horse", FAST).unwrap();
        let dek = SecretKey::generate();
        let wrapped = ks.wrap(&dek, b"patient-1").unwrap();
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
        let path = dir.path().join("ks.json");
        let ks = FileKeyStore::create(&path, "pw", FAST).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(!text.contains(&HEXLOWER.encode(ks.kek.expose())));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "the keystore must be owner-only");
        }
        assert_eq!(format!("{:?}", ks.kek), "SecretKey(..)");
    }
}
