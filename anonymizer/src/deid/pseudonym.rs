//! The per-study pseudonym key: keyed HMAC pseudonyms and date shifts.
//!
//! The only secret of de-identification lives here: zeroized on drop, and
//! its `Debug` shows none of it.

use hmac::{KeyInit, Mac};
use sha2::Sha256;

/// A study's pseudonym key: 32 secret bytes, zeroized on drop. The same
/// patient gets the same pseudonym within a study and unlinkable ones across
/// studies, because each study's key is derived separately.
pub struct PseudonymKey(zeroize::Zeroizing<[u8; 32]>);

impl PseudonymKey {
    /// Derives the key of `study` from a master secret.
    pub fn derive(master: &[u8; 32], study: &str) -> Self {
        let mut mac = <hmac::Hmac<Sha256> as KeyInit>::new_from_slice(master)
            .expect("HMAC takes any key length");
        mac.update(b"cohort/pseudonym/v1\0");
        mac.update(study.as_bytes());
        Self(zeroize::Zeroizing::new(mac.finalize().into_bytes().into()))
    }

    fn mac(&self, domain: &[u8], value: &[u8]) -> [u8; 32] {
        let mut mac = <hmac::Hmac<Sha256> as KeyInit>::new_from_slice(&self.0[..])
            .expect("HMAC takes any key length");
        mac.update(domain);
        mac.update(value);
        mac.finalize().into_bytes().into()
    }

    /// The pseudonym of `value`: 128 bits of its HMAC, hex.
    pub fn pseudonym(&self, value: &str) -> String {
        let d = self.mac(b"id\0", value.as_bytes());
        d[..16].iter().map(|b| format!("{b:02x}")).collect()
    }

    /// The date shift of the person `value`, in `[-max_days, max_days]`.
    pub fn shift_days(&self, value: &str, max_days: u32) -> i64 {
        let d = self.mac(b"date-shift\0", value.as_bytes());
        let x = u64::from_le_bytes(d[..8].try_into().expect("8 bytes"));
        let span = 2 * u64::from(max_days) + 1;
        (x % span) as i64 - i64::from(max_days)
    }
}

impl std::fmt::Debug for PseudonymKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PseudonymKey(..)")
    }
}
