//! The HSM keystore: key-encryption keys that never leave a PKCS#11 token.
//!
//! Each KEK is an AES-256 secret key generated *inside* the token
//! (`C_GenerateKey`) as a token object that is `CKA_SENSITIVE`, not
//! `CKA_EXTRACTABLE` and not modifiable, so its value can never be read
//! out (`C_GetAttributeValue(CKA_VALUE)` answers `CKR_ATTRIBUTE_SENSITIVE`)
//! nor wrapped out by another key. It is used for encryption and
//! decryption only: no `CKA_WRAP`, `CKA_UNWRAP`, `CKA_SIGN` or `CKA_DERIVE`.
//!
//! KEKs are found by their label (`[keys] kek_label`, default
//! `cohort-kek`); their `CKA_ID` is a 4-byte generation number. The KEK of
//! the highest generation is the current one, so a rotation makes a new KEK
//! current in one step (`C_GenerateKey` of generation n+1) and a crash
//! leaves either the old state or the new one. A KEK's identifier, as
//! wrapped keys name it, is `pkcs11:<kek label>:<generation>`.
//!
//! ## Why AES-GCM in the token, not `CKM_AES_KEY_WRAP_PAD`
//!
//! A data key is wrapped by `C_Encrypt` with `CKM_AES_GCM` under the KEK:
//! a fresh random 96-bit IV, a 128-bit tag, and as associated data the
//! KEK's id and the key's *context* (the patient id, the account name...).
//! GCM binds that context inside the token's own authenticated encryption;
//! RFC 5649 key wrap (`CKM_AES_KEY_WRAP_PAD`) takes no associated data, so
//! binding the context would need a second primitive (a MAC under another
//! token key, or a KEK derived per context), more calls and more to get
//! wrong. `C_WrapKey` would also require each data key to exist as a token
//! object first, which buys nothing here: the data keys are in the
//! engine's memory either way (see docs/THREAT_MODEL.md). Random IVs keep
//! GCM safe up to about 2^32 wraps under one KEK (NIST SP 800-38D); a
//! rotation resets the count. An HSM in a FIPS mode that insists on
//! generating IVs itself would need the PKCS#11 3.0 message API instead.
//!
//! ## Sessions, PINs and processes
//!
//! The module is loaded and `C_Initialize`d once per process and kept (a
//! second initialization, or unloading it under another keystore, would
//! break the first). The user PIN comes from a file or `$COHORT_HSM_PIN`
//! (see `keys::config`), never from the command line, and appears in no
//! message or log. Another process's rotation shows up here: every wrap
//! looks the KEKs up again (the current one may have changed), and an
//! unwrap under a KEK this process has not seen looks again before failing.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::Mechanism;
use cryptoki::mechanism::aead::GcmParams;
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::types::AuthPin;
use zeroize::Zeroizing;

use super::keystore::{KeyStore, MAX_KEY_ID, SecretKey, bound_aad, frame, unframe};
use crate::{Error, Result};

/// The environment variable holding the HSM's user PIN when no `pin_file`
/// is configured.
pub const PIN_ENV: &str = "COHORT_HSM_PIN";

const IV_LEN: usize = 12;
const TAG_BITS: u64 = 128;

/// Where the token is and how to log in to it.
#[derive(Clone)]
pub struct Pkcs11Params<'a> {
    /// The PKCS#11 module (a shared library, e.g. Debian's
    /// `/usr/lib/softhsm/libsofthsm2.so`).
    pub module: &'a Path,
    /// The token's label (`softhsm2-util --init-token --label ...`).
    pub token_label: &'a str,
    /// The label of the KEK objects.
    pub kek_label: &'a str,
    /// The token's user PIN.
    pub pin: &'a str,
}

/// A keystore whose KEKs live in a PKCS#11 token.
pub struct Pkcs11KeyStore {
    module: PathBuf,
    token_label: String,
    kek_label: String,
    inner: Mutex<Inner>,
}

struct Inner {
    session: Session,
    /// Every KEK found, by generation.
    keks: Vec<(u32, ObjectHandle)>,
}

impl Inner {
    fn current(&self) -> Option<(u32, ObjectHandle)> {
        self.keks.iter().copied().max_by_key(|(g, _)| *g)
    }

    fn handle(&self, generation: u32) -> Option<ObjectHandle> {
        self.keks
            .iter()
            .find(|(g, _)| *g == generation)
            .map(|(_, h)| *h)
    }
}

impl Pkcs11KeyStore {
    /// Opens the token labelled `token_label` in `module`, logs in with
    /// `pin`, and finds the KEKs (generating the first if there is none).
    /// A missing module, a missing token and a wrong PIN are each a clear
    /// error naming what is wrong.
    pub fn open(params: &Pkcs11Params<'_>) -> Result<Self> {
        let module = params.module;
        let fail = |reason: String| hsm_err(module, reason);
        let longest = MAX_KEY_ID - "pkcs11::4294967295".len();
        if params.kek_label.is_empty() || params.kek_label.len() > longest {
            return Err(fail(format!(
                "the KEK label must be 1 to {longest} bytes long, not {}",
                params.kek_label.len()
            )));
        }
        let ctx = context(module)?;
        let mut labels = Vec::new();
        let mut slot = None;
        let slots = ctx
            .get_slots_with_initialized_token()
            .map_err(|e| fail(format!("listing its slots failed: {e}")))?;
        for s in slots {
            let info = ctx
                .get_token_info(s)
                .map_err(|e| fail(format!("reading a token's description failed: {e}")))?;
            if info.label() == params.token_label {
                slot = Some(s);
                break;
            }
            labels.push(format!("`{}`", info.label()));
        }
        let Some(slot) = slot else {
            let present = if labels.is_empty() {
                "it has no initialized token".to_owned()
            } else {
                format!("the tokens present are {}", labels.join(", "))
            };
            return Err(fail(format!(
                "no token labelled `{}`: {present}; fix [keys] token_label or initialize the \
                 token (SoftHSM2: softhsm2-util --init-token --free --label {})",
                params.token_label, params.token_label
            )));
        };
        let session = ctx
            .open_rw_session(slot)
            .map_err(|e| fail(format!("opening a session failed: {e}")))?;
        let token = params.token_label;
        let wrong_pin = || {
            fail(format!(
                "wrong PIN for token `{token}` (from [keys] pin_file or ${})",
                PIN_ENV
            ))
        };
        match session.login(UserType::User, Some(&AuthPin::new(params.pin.into()))) {
            Ok(()) => remember_login(module, token, params.pin),
            // PKCS#11 logs in the whole process, not a session: a second
            // keystore on the same token is told it is logged in already,
            // whatever PIN it gave. Its PIN must still be the one that
            // logged in.
            Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => {
                if !same_login(module, token, params.pin) {
                    return Err(wrong_pin());
                }
            }
            Err(CkError::Pkcs11(RvError::PinIncorrect | RvError::PinLenRange, _)) => {
                return Err(wrong_pin());
            }
            Err(CkError::Pkcs11(RvError::PinLocked, _)) => {
                return Err(fail(format!(
                    "the user PIN of token `{token}` is locked: the security officer must reset it"
                )));
            }
            Err(CkError::Pkcs11(RvError::UserPinNotInitialized, _)) => {
                return Err(fail(format!("token `{token}` has no user PIN set yet")));
            }
            Err(e) => return Err(fail(format!("logging in to token `{token}` failed: {e}"))),
        }
        let store = Pkcs11KeyStore {
            module: module.to_owned(),
            token_label: token.to_owned(),
            kek_label: params.kek_label.to_owned(),
            inner: Mutex::new(Inner {
                session,
                keks: Vec::new(),
            }),
        };
        {
            let mut inner = store.inner.lock().expect("hsm lock");
            store.reload(&mut inner)?;
            if inner.keks.is_empty() {
                store.generate(&inner, 1)?;
                store.reload(&mut inner)?;
            }
        }
        Ok(store)
    }

    /// The token's label.
    pub fn token_label(&self) -> &str {
        &self.token_label
    }

    fn err(&self, reason: String) -> Error {
        hsm_err(&self.module, reason)
    }

    fn id(&self, generation: u32) -> String {
        format!("pkcs11:{}:{generation}", self.kek_label)
    }

    fn generation_of(&self, key_id: &str) -> Option<u32> {
        let rest = key_id.strip_prefix("pkcs11:")?;
        let (label, generation) = rest.rsplit_once(':')?;
        (label == self.kek_label).then(|| generation.parse().ok())?
    }

    /// Finds every KEK object of our label, checking that each really is
    /// a sensitive, non-extractable AES key.
    fn reload(&self, inner: &mut Inner) -> Result<()> {
        let template = [
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::Label(self.kek_label.as_bytes().to_vec()),
        ];
        let handles = inner
            .session
            .find_objects(&template)
            .map_err(|e| self.err(format!("searching for the KEKs failed: {e}")))?;
        let mut keks = Vec::with_capacity(handles.len());
        for handle in handles {
            let attrs = inner
                .session
                .get_attributes(
                    handle,
                    &[
                        AttributeType::Id,
                        AttributeType::KeyType,
                        AttributeType::Sensitive,
                        AttributeType::Extractable,
                    ],
                )
                .map_err(|e| self.err(format!("reading a KEK's attributes failed: {e}")))?;
            let (mut id, mut aes, mut sensitive, mut extractable) = (None, false, false, true);
            for a in attrs {
                match a {
                    Attribute::Id(bytes) => id = <[u8; 4]>::try_from(bytes.as_slice()).ok(),
                    Attribute::KeyType(t) => aes = t == KeyType::AES,
                    Attribute::Sensitive(s) => sensitive = s,
                    Attribute::Extractable(x) => extractable = x,
                    _ => {}
                }
            }
            let label = &self.kek_label;
            let Some(id) = id else {
                return Err(self.err(format!(
                    "an object labelled `{label}` has no 4-byte generation id: it was not made by cohort; remove or relabel it"
                )));
            };
            if !aes || !sensitive || extractable {
                return Err(self.err(format!(
                    "the object `{label}` generation {} is not a sensitive, non-extractable AES key: cohort refuses to use a KEK whose value could leave the token",
                    u32::from_be_bytes(id)
                )));
            }
            keks.push((u32::from_be_bytes(id), handle));
        }
        inner.keks = keks;
        Ok(())
    }

    /// Generates the KEK of `generation` inside the token.
    fn generate(&self, inner: &Inner, generation: u32) -> Result<ObjectHandle> {
        let template = [
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::KeyType(KeyType::AES),
            Attribute::ValueLen(32u64.into()),
            Attribute::Token(true),
            Attribute::Private(true),
            Attribute::Sensitive(true),
            Attribute::Extractable(false),
            Attribute::Modifiable(false),
            Attribute::Encrypt(true),
            Attribute::Decrypt(true),
            Attribute::Wrap(false),
            Attribute::Unwrap(false),
            Attribute::Sign(false),
            Attribute::Verify(false),
            Attribute::Derive(false),
            Attribute::Label(self.kek_label.as_bytes().to_vec()),
            Attribute::Id(generation.to_be_bytes().to_vec()),
        ];
        inner
            .session
            .generate_key(&Mechanism::AesKeyGen, &template)
            .map_err(|e| self.err(format!("generating a KEK in the token failed: {e}")))
    }

    #[cfg(test)]
    pub(crate) fn with_session<T>(&self, f: impl FnOnce(&Session, ObjectHandle) -> T) -> T {
        let inner = self.inner.lock().expect("hsm lock");
        let (_, handle) = inner.current().expect("a KEK");
        f(&inner.session, handle)
    }
}

impl KeyStore for Pkcs11KeyStore {
    fn kind(&self) -> &'static str {
        "pkcs11"
    }

    fn key_id(&self) -> String {
        let inner = self.inner.lock().expect("hsm lock");
        let (generation, _) = inner.current().expect("an open HSM keystore holds a KEK");
        self.id(generation)
    }

    fn wrap(&self, key: &SecretKey, context: &[u8]) -> Result<Vec<u8>> {
        let mut inner = self.inner.lock().expect("hsm lock");
        // Another process may have made a newer KEK current.
        self.reload(&mut inner)?;
        let (generation, handle) = inner
            .current()
            .ok_or_else(|| self.err("the token holds no KEK any more".into()))?;
        let id = self.id(generation);
        let mut iv = [0u8; IV_LEN];
        getrandom::fill(&mut iv).expect("entropy");
        let sent_iv = iv;
        let aad = bound_aad(&id, context);
        let gcm = GcmParams::new(&mut iv, &aad, TAG_BITS.into())
            .map_err(|e| self.err(format!("GCM parameters: {e}")))?;
        let ciphertext = inner
            .session
            .encrypt(&Mechanism::AesGcm(gcm), handle, key.expose())
            .map_err(|e| self.err(format!("wrapping in the token failed: {e}")))?;
        Ok(frame(&id, &[sent_iv.as_slice(), &ciphertext].concat()))
    }

    fn unwrap(&self, wrapped: &[u8], context: &[u8]) -> Result<SecretKey> {
        let failed = || Error::Decrypt {
            what: "a wrapped data key".into(),
        };
        let (id, body) = unframe(wrapped).ok_or_else(failed)?;
        let generation = self.generation_of(id).ok_or_else(|| {
            self.err(format!(
                "this key was wrapped under `{id}`, which is not a KEK of this HSM keystore \
                 (label `{}`)",
                self.kek_label
            ))
        })?;
        if body.len() != IV_LEN + 32 + 16 {
            return Err(failed());
        }
        let mut inner = self.inner.lock().expect("hsm lock");
        if inner.handle(generation).is_none() {
            self.reload(&mut inner)?;
        }
        let handle = inner.handle(generation).ok_or_else(|| {
            self.err(format!(
                "this key was wrapped under KEK `{id}`, which token `{}` does not hold: it was \
                 destroyed by a rotation",
                self.token_label
            ))
        })?;
        let mut iv: [u8; IV_LEN] = body[..IV_LEN].try_into().expect("12 bytes");
        let aad = bound_aad(id, context);
        let gcm = GcmParams::new(&mut iv, &aad, TAG_BITS.into())
            .map_err(|e| self.err(format!("GCM parameters: {e}")))?;
        let plain = inner
            .session
            .decrypt(&Mechanism::AesGcm(gcm), handle, &body[IV_LEN..])
            .map_err(|e| match e {
                // A failed tag check: SoftHSM2 answers CKR_GENERAL_ERROR
                // where the standard says CKR_ENCRYPTED_DATA_INVALID.
                CkError::Pkcs11(
                    RvError::EncryptedDataInvalid
                    | RvError::EncryptedDataLenRange
                    | RvError::GeneralError,
                    _,
                ) => failed(),
                other => self.err(format!("unwrapping in the token failed: {other}")),
            })?;
        let plain = Zeroizing::new(plain);
        SecretKey::from_slice(&plain).ok_or_else(failed)
    }

    fn key_ids(&self) -> Result<Vec<String>> {
        let mut inner = self.inner.lock().expect("hsm lock");
        self.reload(&mut inner)?;
        Ok(inner.keks.iter().map(|(g, _)| self.id(*g)).collect())
    }

    fn add_kek(&self) -> Result<String> {
        let mut inner = self.inner.lock().expect("hsm lock");
        self.reload(&mut inner)?;
        let next = inner.current().map_or(1, |(g, _)| g + 1);
        self.generate(&inner, next)?;
        self.reload(&mut inner)?;
        Ok(self.id(next))
    }

    fn destroy_kek(&self, key_id: &str) -> Result<()> {
        let generation = self
            .generation_of(key_id)
            .ok_or_else(|| self.err(format!("`{key_id}` is not a KEK of this keystore")))?;
        let mut inner = self.inner.lock().expect("hsm lock");
        self.reload(&mut inner)?;
        if inner.current().map(|(g, _)| g) == Some(generation) {
            return Err(self.err(format!(
                "refusing to destroy {key_id}: it is the current KEK"
            )));
        }
        let Some(handle) = inner.handle(generation) else {
            return Ok(());
        };
        inner
            .session
            .destroy_object(handle)
            .map_err(|e| self.err(format!("destroying {key_id} failed: {e}")))?;
        self.reload(&mut inner)
    }
}

fn hsm_err(module: &Path, reason: String) -> Error {
    Error::Hsm {
        module: module.to_owned(),
        reason,
    }
}

type Logins = HashMap<(PathBuf, String), [u8; 32]>;

fn logins() -> std::sync::MutexGuard<'static, Logins> {
    static LOGINS: OnceLock<Mutex<Logins>> = OnceLock::new();
    LOGINS
        .get_or_init(Default::default)
        .lock()
        .expect("pkcs11 logins lock")
}

fn pin_digest(pin: &str) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(pin.as_bytes()).into()
}

/// Remembers (as a digest) the PIN that logged this process in to `token`.
fn remember_login(module: &Path, token: &str, pin: &str) {
    logins().insert((module.to_owned(), token.to_owned()), pin_digest(pin));
}

/// Whether `pin` is the PIN that logged this process in to `token`.
fn same_login(module: &Path, token: &str, pin: &str) -> bool {
    logins().get(&(module.to_owned(), token.to_owned())) == Some(&pin_digest(pin))
}

/// The module at `module`, loaded and initialized once per process.
fn context(module: &Path) -> Result<Pkcs11> {
    static LOADED: OnceLock<Mutex<HashMap<PathBuf, Pkcs11>>> = OnceLock::new();
    let mut loaded = LOADED
        .get_or_init(Default::default)
        .lock()
        .expect("pkcs11 modules lock");
    if let Some(ctx) = loaded.get(module) {
        return Ok(ctx.clone());
    }
    if !module.is_file() {
        return Err(hsm_err(
            module,
            "the PKCS#11 module does not exist: install it (Debian's SoftHSM2: apt-get install \
             softhsm2) or fix [keys] module"
                .into(),
        ));
    }
    let ctx = Pkcs11::new(module)
        .map_err(|e| hsm_err(module, format!("is not a loadable PKCS#11 module: {e}")))?;
    match ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
        Ok(()) | Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {}
        Err(e) => {
            return Err(hsm_err(
                module,
                format!(
                    "initializing the module failed: {e} (for SoftHSM2, check SOFTHSM2_CONF and its tokens directory)"
                ),
            ));
        }
    }
    loaded.insert(module.to_owned(), ctx.clone());
    Ok(ctx)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::keystore::wrapped_by;
    use crate::keys::softhsm::{MODULE, PIN, TOKEN, in_softhsm, test_path};
    use cryptoki::object::AttributeInfo;

    fn params<'a>(pin: &'a str, token: &'a str, label: &'a str) -> Pkcs11Params<'a> {
        Pkcs11Params {
            module: Path::new(MODULE),
            token_label: token,
            kek_label: label,
            pin,
        }
    }

    fn open() -> Pkcs11KeyStore {
        Pkcs11KeyStore::open(&params(PIN, TOKEN, "cohort-kek")).unwrap()
    }

    #[test]
    fn wrap_round_trips_inside_the_token_and_binds_context() {
        in_softhsm(
            test_path!("wrap_round_trips_inside_the_token_and_binds_context"),
            || {
                let ks = open();
                assert_eq!(
                    ks.key_id(),
                    "pkcs11:cohort-kek:1",
                    "the first KEK is made on first use"
                );
                let dek = SecretKey::generate();
                let wrapped = ks.wrap(&dek, b"patient-1").unwrap();
                assert_eq!(wrapped_by(&wrapped), Some("pkcs11:cohort-kek:1"));
                assert!(
                    !wrapped.windows(32).any(|w| w == dek.expose()),
                    "no plain key"
                );
                assert_eq!(
                    ks.unwrap(&wrapped, b"patient-1").unwrap().expose(),
                    dek.expose()
                );
                let err = ks.unwrap(&wrapped, b"patient-2").unwrap_err();
                assert!(matches!(err, Error::Decrypt { .. }), "context bound: {err}");
                let mut flipped = wrapped.clone();
                *flipped.last_mut().unwrap() ^= 1;
                assert!(matches!(
                    ks.unwrap(&flipped, b"patient-1"),
                    Err(Error::Decrypt { .. })
                ));
                // Two wraps of one key differ (fresh IVs).
                assert_ne!(ks.wrap(&dek, b"patient-1").unwrap(), wrapped);
                // Another keystore on the same token (a restarted process) finds
                // the KEK by its label and unwraps.
                let again = open();
                assert_eq!(
                    again.key_ids().unwrap(),
                    vec!["pkcs11:cohort-kek:1".to_owned()]
                );
                assert_eq!(
                    again.unwrap(&wrapped, b"patient-1").unwrap().expose(),
                    dek.expose()
                );
                // A file keystore's key names a KEK this one does not hold.
                let foreign = crate::keys::keystore::frame("file:0011223344556677", &[0u8; 72]);
                let err = ks.unwrap(&foreign, b"patient-1").unwrap_err().to_string();
                assert!(err.contains("not a KEK of this HSM keystore"), "{err}");
            },
        );
    }

    #[test]
    fn the_kek_cannot_be_read_or_wrapped_out_of_the_token() {
        in_softhsm(
            test_path!("the_kek_cannot_be_read_or_wrapped_out_of_the_token"),
            || {
                let ks = open();
                ks.with_session(|session, kek| {
                    // C_GetAttributeValue(CKA_VALUE) is refused: CKR_ATTRIBUTE_SENSITIVE.
                    let info = session
                        .get_attribute_info(kek, &[AttributeType::Value])
                        .unwrap();
                    assert!(matches!(info[0], AttributeInfo::Sensitive), "{info:?}");
                    let got = session
                        .get_attributes(kek, &[AttributeType::Value])
                        .unwrap();
                    assert!(
                        got.is_empty(),
                        "the value came out: {} attributes",
                        got.len()
                    );
                    let flags = session
                        .get_attributes(
                            kek,
                            &[
                                AttributeType::Sensitive,
                                AttributeType::Extractable,
                                AttributeType::NeverExtractable,
                                AttributeType::AlwaysSensitive,
                                AttributeType::Token,
                                AttributeType::Wrap,
                            ],
                        )
                        .unwrap();
                    for a in flags {
                        match a {
                            Attribute::Sensitive(v) => assert!(v),
                            Attribute::Extractable(v) => assert!(!v),
                            Attribute::NeverExtractable(v) => assert!(v),
                            Attribute::AlwaysSensitive(v) => assert!(v),
                            Attribute::Token(v) => {
                                assert!(v, "a token object, kept across sessions")
                            }
                            Attribute::Wrap(v) => assert!(!v),
                            other => panic!("unexpected {other:?}"),
                        }
                    }
                    // Nor can another key wrap it out (C_WrapKey).
                    let wrapping = session
                        .generate_key(
                            &Mechanism::AesKeyGen,
                            &[
                                Attribute::Token(false),
                                Attribute::ValueLen(32u64.into()),
                                Attribute::Wrap(true),
                            ],
                        )
                        .unwrap();
                    let err = session
                        .wrap_key(&Mechanism::AesKeyWrapPad, wrapping, kek)
                        .unwrap_err();
                    assert!(
                        matches!(err, CkError::Pkcs11(RvError::KeyUnextractable, _)),
                        "{err}"
                    );
                });
            },
        );
    }

    #[test]
    fn a_wrong_pin_is_refused_by_name_and_changes_nothing() {
        in_softhsm(
            test_path!("a_wrong_pin_is_refused_by_name_and_changes_nothing"),
            || {
                let err = Pkcs11KeyStore::open(&params("0000-wrong", TOKEN, "cohort-kek"))
                    .err()
                    .unwrap()
                    .to_string();
                assert!(err.contains("wrong PIN for token `cohort-test`"), "{err}");
                assert!(
                    !err.contains("0000-wrong"),
                    "the PIN must not be echoed: {err}"
                );
                // Nothing was made by the refused open: the first KEK comes now.
                let ks = open();
                assert_eq!(
                    ks.key_ids().unwrap(),
                    vec!["pkcs11:cohort-kek:1".to_owned()]
                );
                // Logged in already (PKCS#11 logs in the whole process), a wrong
                // PIN is still refused.
                let err = Pkcs11KeyStore::open(&params("0000-wrong", TOKEN, "cohort-kek"))
                    .err()
                    .unwrap()
                    .to_string();
                assert!(err.contains("wrong PIN"), "{err}");
                assert!(Pkcs11KeyStore::open(&params(PIN, TOKEN, "cohort-kek")).is_ok());
            },
        );
    }

    #[test]
    fn a_missing_token_or_module_is_named() {
        in_softhsm(test_path!("a_missing_token_or_module_is_named"), || {
            let err = Pkcs11KeyStore::open(&params(PIN, "no-such-token", "cohort-kek"))
                .err()
                .unwrap()
                .to_string();
            assert!(err.contains("no token labelled `no-such-token`"), "{err}");
            assert!(
                err.contains("`cohort-test`"),
                "names the tokens present: {err}"
            );
            let err = Pkcs11KeyStore::open(&Pkcs11Params {
                module: Path::new("/nonexistent/libpkcs11.so"),
                ..params(PIN, TOKEN, "cohort-kek")
            })
            .err()
            .unwrap()
            .to_string();
            assert!(err.contains("/nonexistent/libpkcs11.so"), "{err}");
            assert!(err.contains("does not exist"), "{err}");
        });
    }

    #[test]
    fn a_new_kek_becomes_current_and_the_old_one_unwraps_until_destroyed() {
        in_softhsm(
            test_path!("a_new_kek_becomes_current_and_the_old_one_unwraps_until_destroyed"),
            || {
                let rotator = open();
                let server = open();
                let dek = SecretKey::generate();
                let old = rotator.wrap(&dek, b"p").unwrap();
                let new_id = rotator.add_kek().unwrap();
                assert_eq!(new_id, "pkcs11:cohort-kek:2");
                // The other keystore wraps under the new KEK at once.
                let new = server.wrap(&dek, b"p").unwrap();
                assert_eq!(wrapped_by(&new), Some("pkcs11:cohort-kek:2"));
                assert_eq!(server.unwrap(&old, b"p").unwrap().expose(), dek.expose());
                let err = rotator.destroy_kek(&new_id).unwrap_err().to_string();
                assert!(err.contains("current KEK"), "{err}");
                rotator.destroy_kek("pkcs11:cohort-kek:1").unwrap();
                assert_eq!(server.key_ids().unwrap(), vec![new_id]);
                let err = server.unwrap(&old, b"p").unwrap_err().to_string();
                assert!(err.contains("destroyed by a rotation"), "{err}");
                assert_eq!(server.unwrap(&new, b"p").unwrap().expose(), dek.expose());
            },
        );
    }

    #[test]
    fn a_rotation_by_another_process_is_followed_without_a_restart() {
        in_softhsm(
            test_path!("a_rotation_by_another_process_is_followed_without_a_restart"),
            || {
                let server = open();
                let dek = SecretKey::generate();
                let old = server.wrap(&dek, b"p").unwrap();
                // Another process on the same token (this binary again, with
                // the same SOFTHSM2_CONF) makes a new KEK current.
                let out = std::process::Command::new(std::env::current_exe().unwrap())
                    .args([
                        test_path!("another_process_adds_a_kek"),
                        "--exact",
                        "--ignored",
                    ])
                    .env("COHORT_TEST_ADD_KEK", "1")
                    .output()
                    .unwrap();
                let text = String::from_utf8_lossy(&out.stdout);
                assert!(out.status.success() && text.contains("1 passed"), "{text}");
                let new = server.wrap(&dek, b"p").unwrap();
                assert_eq!(
                    wrapped_by(&new),
                    Some("pkcs11:cohort-kek:2"),
                    "followed at once"
                );
                assert_eq!(server.unwrap(&old, b"p").unwrap().expose(), dek.expose());
                assert_eq!(server.unwrap(&new, b"p").unwrap().expose(), dek.expose());
            },
        );
    }

    // Not skipped: `a_rotation_by_another_process_is_followed_without_a_restart`
    // runs it in a second process (`--exact --ignored`, with its own
    // SOFTHSM2_CONF) and asserts that it passed. Run alone it has no token.
    #[test]
    #[ignore = "the other process of a_rotation_by_another_process_is_followed_without_a_restart"]
    fn another_process_adds_a_kek() {
        assert!(std::env::var_os("COHORT_TEST_ADD_KEK").is_some());
        assert_eq!(open().add_kek().unwrap(), "pkcs11:cohort-kek:2");
    }

    #[test]
    fn an_extractable_object_under_the_kek_label_is_refused() {
        in_softhsm(
            test_path!("an_extractable_object_under_the_kek_label_is_refused"),
            || {
                let ks = open();
                ks.with_session(|session, _| {
                    session
                        .generate_key(
                            &Mechanism::AesKeyGen,
                            &[
                                Attribute::Token(true),
                                Attribute::Private(true),
                                Attribute::ValueLen(32u64.into()),
                                Attribute::Sensitive(false),
                                Attribute::Extractable(true),
                                Attribute::Encrypt(true),
                                Attribute::Decrypt(true),
                                Attribute::Label(b"planted".to_vec()),
                                Attribute::Id(7u32.to_be_bytes().to_vec()),
                            ],
                        )
                        .unwrap();
                });
                let err = Pkcs11KeyStore::open(&params(PIN, TOKEN, "planted"))
                    .err()
                    .unwrap()
                    .to_string();
                assert!(
                    err.contains("not a sensitive, non-extractable AES key"),
                    "{err}"
                );
            },
        );
    }
}
