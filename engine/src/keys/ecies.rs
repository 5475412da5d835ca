//! Keys sealed to an account's public key: ECIES over secp256k1, the curve
//! every cohort account already has (the `ecies` crate, pure-Rust AES-GCM,
//! no OpenSSL).
//!
//! A sealed key is `CHEK | format(1) | ecies(ephemeral point(65) |
//! nonce(16) | tag(16) | ciphertext)`, where the ECIES plaintext is
//! `len(context) as u32 BE | context | payload`. ECIES has no associated
//! data, so the context travels inside the authenticated plaintext and
//! [`open_with`] checks it: a sealed key copied to another patient, epoch
//! or holder (whatever the caller binds in `context`) authenticates but is
//! refused, because its context is not the one asked for. Whoever holds the
//! secret key can read the context anyway; it is a binding, not a secret.
//!
//! ```
//! use cohort_engine::keys::ecies::{open_with, public_key_of, seal_for};
//! let secret = [7u8; 32];
//! let public = public_key_of(&secret).unwrap();
//! let sealed = seal_for(&public, b"patient-1/epoch-1", b"a data key").unwrap();
//! let opened = open_with(&secret, b"patient-1/epoch-1", &sealed).unwrap();
//! assert_eq!(opened.as_slice(), b"a data key");
//! assert!(open_with(&secret, b"patient-2/epoch-1", &sealed).is_err());
//! ```

use zeroize::Zeroizing;

use crate::{Error, Result};

const MAGIC: &[u8; 4] = b"CHEK";
const FORMAT: u8 = 1;
/// The largest context and payload accepted: sealed keys are small, and a
/// size limit keeps a corrupt row from becoming a large allocation.
const MAX_CONTEXT: usize = 1024;
const MAX_PAYLOAD: usize = 1024;
/// Uncompressed ephemeral point, AES-GCM nonce and tag (the crate's default
/// configuration, which cohort never changes).
const ECIES_OVERHEAD: usize = 65 + 16 + 16;
const MAX_SEALED: usize = 5 + ECIES_OVERHEAD + 4 + MAX_CONTEXT + MAX_PAYLOAD;

/// The compressed SEC1 public key (33 bytes) of a secp256k1 secret key.
pub fn public_key_of(secret: &[u8; 32]) -> Result<[u8; 33]> {
    let sk = ecies::SecretKey::parse_slice(secret)
        .map_err(|_| Error::Invalid("not a valid secp256k1 secret key".into()))?;
    Ok(ecies::PublicKey::from_secret_key(&sk).serialize_compressed())
}

/// Seals `plaintext` for the holder of `public_key` (SEC1, compressed 33
/// bytes or uncompressed 65), bound to `context`.
pub fn seal_for(public_key: &[u8], context: &[u8], plaintext: &[u8]) -> Result<Vec<u8>> {
    if context.len() > MAX_CONTEXT || plaintext.len() > MAX_PAYLOAD {
        return Err(Error::Invalid(format!(
            "a sealed key holds at most {MAX_CONTEXT} bytes of context and {MAX_PAYLOAD} of payload"
        )));
    }
    if !matches!(public_key.len(), 33 | 65) {
        return Err(Error::Invalid(format!(
            "a secp256k1 public key is 33 bytes (compressed SEC1) or 65 (uncompressed), not {}",
            public_key.len()
        )));
    }
    let mut message = Zeroizing::new(Vec::with_capacity(4 + context.len() + plaintext.len()));
    message.extend_from_slice(&(context.len() as u32).to_be_bytes());
    message.extend_from_slice(context);
    message.extend_from_slice(plaintext);
    let sealed = ecies::encrypt(public_key, &message).map_err(|e| {
        Error::Invalid(format!(
            "cannot seal for this public key ({e}): it is not a point on secp256k1"
        ))
    })?;
    let mut out = Vec::with_capacity(5 + sealed.len());
    out.extend_from_slice(MAGIC);
    out.push(FORMAT);
    out.extend_from_slice(&sealed);
    Ok(out)
}

/// Opens a key sealed by [`seal_for`] with the holder's secret key,
/// checking that it was sealed for `context`.
pub fn open_with(secret: &[u8; 32], context: &[u8], sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>> {
    let what = || Error::Decrypt {
        what: "a sealed key".into(),
    };
    if sealed.len() > MAX_SEALED {
        return Err(Error::Invalid(format!(
            "a sealed key is at most {MAX_SEALED} bytes, this one {}",
            sealed.len()
        )));
    }
    if sealed.len() < 5 + ECIES_OVERHEAD || &sealed[..4] != MAGIC {
        return Err(what());
    }
    if sealed[4] != FORMAT {
        return Err(Error::Invalid(format!(
            "a sealed key in format {}; this build reads format {FORMAT}",
            sealed[4]
        )));
    }
    let message = Zeroizing::new(ecies::decrypt(secret, &sealed[5..]).map_err(|_| what())?);
    if message.len() < 4 {
        return Err(what());
    }
    let len = u32::from_be_bytes(message[..4].try_into().expect("4 bytes")) as usize;
    if message.len() < 4 + len {
        return Err(what());
    }
    let bound = &message[4..4 + len];
    if bound != context {
        return Err(Error::Decrypt {
            what: "a sealed key bound to another context (copied from another patient, epoch or holder)".into(),
        });
    }
    Ok(Zeroizing::new(message[4 + len..].to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair() -> ([u8; 32], [u8; 33]) {
        loop {
            let secret = *crate::keys::keystore::SecretKey::generate().expose();
            if let Ok(public) = public_key_of(&secret) {
                return (secret, public);
            }
        }
    }

    #[test]
    fn round_trip() {
        let (secret, public) = pair();
        let sealed = seal_for(&public, b"ctx", &[9u8; 32]).unwrap();
        assert_eq!(&sealed[..4], MAGIC);
        assert_eq!(
            open_with(&secret, b"ctx", &sealed).unwrap().as_slice(),
            &[9u8; 32]
        );
        // Two seals of the same key differ (fresh ephemeral key).
        assert_ne!(sealed, seal_for(&public, b"ctx", &[9u8; 32]).unwrap());
    }

    #[test]
    fn wrong_key_fails() {
        let (_, public) = pair();
        let (other, _) = pair();
        let sealed = seal_for(&public, b"ctx", b"k").unwrap();
        assert!(matches!(
            open_with(&other, b"ctx", &sealed),
            Err(Error::Decrypt { .. })
        ));
    }

    #[test]
    fn wrong_context_fails() {
        let (secret, public) = pair();
        let sealed = seal_for(&public, b"patient-1", b"k").unwrap();
        let e = open_with(&secret, b"patient-2", &sealed).unwrap_err();
        assert!(e.to_string().contains("another context"), "{e}");
        // A context that is a prefix of the bound one is refused too.
        assert!(open_with(&secret, b"patient-", &sealed).is_err());
    }

    #[test]
    fn tampered_ciphertext_fails() {
        let (secret, public) = pair();
        let sealed = seal_for(&public, b"ctx", b"k").unwrap();
        for i in [5, 5 + 65, sealed.len() - 1] {
            let mut bad = sealed.clone();
            bad[i] ^= 1;
            assert!(open_with(&secret, b"ctx", &bad).is_err(), "byte {i}");
        }
        assert!(open_with(&secret, b"ctx", &sealed[..sealed.len() - 1]).is_err());
        let mut future = sealed.clone();
        future[4] = 2;
        assert!(
            open_with(&secret, b"ctx", &future)
                .unwrap_err()
                .to_string()
                .contains("format 2")
        );
    }

    #[test]
    fn bad_public_key_is_a_clear_error() {
        let e = seal_for(&[1u8; 20], b"ctx", b"k").unwrap_err();
        assert!(e.to_string().contains("33 bytes"), "{e}");
        let mut not_a_point = [0xffu8; 33];
        not_a_point[0] = 2;
        let e = seal_for(&not_a_point, b"ctx", b"k").unwrap_err();
        assert!(e.to_string().contains("not a point on secp256k1"), "{e}");
        assert!(seal_for(&pair().1, &[0u8; MAX_CONTEXT + 1], b"k").is_err());
    }
}
