//! The sealed block format of one record version: `CHRV | format |
//! nonce(24) | ciphertext+tag`, bound to its patient, record and version,
//! and the keyed content MAC that detects unchanged updates.

use hmac::{KeyInit, Mac};

use crate::keys::keystore::{SecretKey, open, seal};
use crate::{Error, Result};

const MAGIC: &[u8; 4] = b"CHRV";
const FORMAT: u8 = 1;
const HEADER_LEN: usize = 4 + 1 + 24;

/// Keyed with the patient's own data key, so equal contents can be detected
/// without the database revealing guessable hashes of PHI, and the MACs
/// become meaningless once the key is shredded.
pub(super) fn content_mac(key: &SecretKey, content: &[u8]) -> [u8; 32] {
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(key.expose()).expect("any key length");
    mac.update(b"cohort-content-v1");
    mac.update(content);
    mac.finalize().into_bytes().into()
}

fn binding(header: &[u8], patient: &str, record: &str, version: i64) -> Vec<u8> {
    let mut aad = header.to_vec();
    for part in [patient.as_bytes(), record.as_bytes()] {
        aad.extend_from_slice(&(part.len() as u64).to_be_bytes());
        aad.extend_from_slice(part);
    }
    aad.extend_from_slice(&version.to_be_bytes());
    aad
}

/// `CHRV | format | nonce(24) | ciphertext+tag`, bound to patient, record and version.
pub(super) fn seal_block(
    key: &SecretKey,
    patient: &str,
    record: &str,
    version: i64,
    content: &[u8],
) -> Vec<u8> {
    let mut header = MAGIC.to_vec();
    header.push(FORMAT);
    // The nonce need not be in the associated data: the AEAD authenticates it.
    let aad = binding(&header, patient, record, version);
    let (nonce, ciphertext) = seal(key, content, &aad);
    let mut out = Vec::with_capacity(HEADER_LEN + ciphertext.len());
    out.extend_from_slice(MAGIC);
    out.push(FORMAT);
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&ciphertext);
    out
}

pub(super) fn open_block(
    key: &SecretKey,
    patient: &str,
    record: &str,
    version: i64,
    sealed: &[u8],
) -> Result<Vec<u8>> {
    let what = || Error::Decrypt {
        what: format!("{record} version {version}"),
    };
    if sealed.len() < HEADER_LEN + 16 || &sealed[..4] != MAGIC {
        return Err(what());
    }
    if sealed[4] != FORMAT {
        return Err(Error::Invalid(format!(
            "{record} version {version} uses block format {}; this build reads format {FORMAT}",
            sealed[4]
        )));
    }
    let aad = binding(&sealed[..5], patient, record, version);
    open(key, &sealed[5..HEADER_LEN], &sealed[HEADER_LEN..], &aad).ok_or_else(what)
}
