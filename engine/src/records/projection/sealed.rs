//! The sealed form of one identifying cell of the projection:
//! `CHID | format | nonce(24) | XChaCha20-Poly1305(padded value)`, under the
//! patient's data key and bound to the patient and the column, so a cell
//! copied to another row or column does not open. The value is padded to a
//! multiple of 32 bytes, so a ciphertext's length does not tell a short
//! name from a longer one.

use crate::keys::keystore::{SecretKey, open, seal};
use crate::{Error, Result};

const MAGIC: &[u8; 4] = b"CHID";
const FORMAT: u8 = 1;
const HEADER_LEN: usize = 4 + 1 + 24;
/// Plaintexts are padded to a multiple of this many bytes.
const PAD_TO: usize = 32;

fn binding(header: &[u8], patient: &str, column: &str) -> Vec<u8> {
    let mut aad = header.to_vec();
    for part in [patient.as_bytes(), column.as_bytes()] {
        aad.extend_from_slice(&(part.len() as u64).to_be_bytes());
        aad.extend_from_slice(part);
    }
    aad
}

/// Seals `value`, the content of `column` of `patient`'s row.
pub(crate) fn seal_cell(key: &SecretKey, patient: &str, column: &str, value: &[u8]) -> Vec<u8> {
    let header = [&MAGIC[..], &[FORMAT]].concat();
    // ISO/IEC 7816-4 padding: 0x80, then zeros.
    let mut padded = zeroize::Zeroizing::new(Vec::with_capacity(value.len() + PAD_TO));
    padded.extend_from_slice(value);
    padded.push(0x80);
    let len = padded.len().div_ceil(PAD_TO) * PAD_TO;
    padded.resize(len, 0);
    let (nonce, ciphertext) = seal(key, &padded, &binding(&header, patient, column));
    let mut out = Vec::with_capacity(HEADER_LEN + ciphertext.len());
    out.extend_from_slice(&header);
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&ciphertext);
    out
}

/// Opens what [`seal_cell`] sealed for this patient and column.
pub(crate) fn open_cell(
    key: &SecretKey,
    patient: &str,
    column: &str,
    sealed: &[u8],
) -> Result<Vec<u8>> {
    let what = || Error::Decrypt {
        what: format!("`{column}` of patient {patient} in the projection"),
    };
    if sealed.len() < HEADER_LEN + 16 || &sealed[..4] != MAGIC {
        return Err(what());
    }
    if sealed[4] != FORMAT {
        return Err(Error::Invalid(format!(
            "`{column}` of patient {patient} is sealed in cell format {}; this build reads format {FORMAT}",
            sealed[4]
        )));
    }
    let aad = binding(&sealed[..5], patient, column);
    let mut padded =
        open(key, &sealed[5..HEADER_LEN], &sealed[HEADER_LEN..], &aad).ok_or_else(what)?;
    let end = padded.iter().rposition(|&b| b != 0).ok_or_else(what)?;
    if padded[end] != 0x80 {
        return Err(what());
    }
    padded.truncate(end);
    Ok(padded)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_hides_the_length() {
        let key = SecretKey::generate();
        for value in ["", "Li", "999-12-3456", &"x".repeat(31), &"y".repeat(32)] {
            let sealed = seal_cell(&key, "p1", "ssn", value.as_bytes());
            assert_eq!(
                open_cell(&key, "p1", "ssn", &sealed).unwrap(),
                value.as_bytes()
            );
            assert_eq!((sealed.len() - HEADER_LEN - 16) % PAD_TO, 0);
        }
        let short = seal_cell(&key, "p1", "family_name", b"Li");
        let long = seal_cell(&key, "p1", "family_name", b"Hernandez-Whitfield");
        assert_eq!(short.len(), long.len());
    }

    #[test]
    fn does_not_open_in_another_row_column_key_or_altered() {
        let key = SecretKey::generate();
        let sealed = seal_cell(&key, "p1", "ssn", b"999-12-3456");
        assert!(matches!(
            open_cell(&key, "p2", "ssn", &sealed),
            Err(Error::Decrypt { .. })
        ));
        assert!(open_cell(&key, "p1", "mrn", &sealed).is_err());
        assert!(open_cell(&SecretKey::generate(), "p1", "ssn", &sealed).is_err());
        let mut altered = sealed.clone();
        *altered.last_mut().unwrap() ^= 1;
        assert!(open_cell(&key, "p1", "ssn", &altered).is_err());
        assert!(open_cell(&key, "p1", "ssn", &sealed[..20]).is_err());
        // Two seals of one value differ (random nonce): equal SSNs are not
        // visible as equal ciphertexts.
        assert_ne!(sealed, seal_cell(&key, "p1", "ssn", b"999-12-3456"));
    }
}
