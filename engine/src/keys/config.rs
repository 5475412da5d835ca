//! Which keystore a data directory uses, as `[keys]` spells it.
//!
//! ```toml
//! [keys]
//! store = "pkcs11"                              # or "file", the default
//! module = "/usr/lib/softhsm/libsofthsm2.so"    # the PKCS#11 module
//! token_label = "cohort"                        # the token, by label
//! kek_label = "cohort-kek"                      # the KEK objects' label (default)
//! pin_file = "/run/secrets/cohort-hsm-pin"      # else $COHORT_HSM_PIN
//! ```
//!
//! The same table is the data directory's record (`<data-dir>/keys.toml`,
//! written once, when a directory is set up for an HSM) and the server's
//! `[keys]` section. The PIN is never part of it: it comes from the file
//! `pin_file` names or from `$COHORT_HSM_PIN`, never from a command-line
//! argument (visible to every user in the process list).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::pkcs11::{Pkcs11KeyStore, Pkcs11Params};
use crate::{Error, Result};

pub use super::pkcs11::PIN_ENV;

/// The KEK objects' label when none is configured.
pub const DEFAULT_KEK_LABEL: &str = "cohort-kek";

/// Which keystore.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StoreKind {
    /// The passphrase-protected file `<data-dir>/keystore.json`.
    #[default]
    File,
    /// A PKCS#11 token (an HSM; SoftHSM2 in tests).
    Pkcs11,
}

/// `[keys]`: the keystore and, for an HSM, where it is.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KeysConfig {
    /// file or pkcs11.
    pub store: StoreKind,
    /// The PKCS#11 module (shared library).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub module: Option<PathBuf>,
    /// The token's label.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_label: Option<String>,
    /// The KEK objects' label (default `cohort-kek`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kek_label: Option<String>,
    /// A file holding the user PIN (else `$COHORT_HSM_PIN`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pin_file: Option<PathBuf>,
}

impl KeysConfig {
    /// What serde cannot say: an HSM needs its module and token; the file
    /// keystore takes none of the HSM's keys.
    pub fn check(&self) -> Result<()> {
        match self.store {
            StoreKind::Pkcs11 if self.module.is_none() || self.token_label.is_none() => {
                Err(Error::Invalid(
                    "[keys] store = \"pkcs11\" needs `module` (the PKCS#11 library) and \
                     `token_label` (COHORT_KEYS_MODULE, COHORT_KEYS_TOKEN_LABEL)"
                        .into(),
                ))
            }
            StoreKind::File
                if self.module.is_some()
                    || self.token_label.is_some()
                    || self.kek_label.is_some()
                    || self.pin_file.is_some() =>
            {
                Err(Error::Invalid(
                    "[keys] `module`, `token_label`, `kek_label` and `pin_file` are used only \
                     with store = \"pkcs11\""
                        .into(),
                ))
            }
            _ => Ok(()),
        }
    }

    /// The user PIN: the first line of `pin_file`, else `$COHORT_HSM_PIN`
    /// (looked up through `env`).
    pub fn pin(&self, env: impl Fn(&str) -> Option<String>) -> Result<Zeroizing<String>> {
        if let Some(file) = &self.pin_file {
            let text = Zeroizing::new(
                std::fs::read_to_string(file).map_err(|e| Error::io("reading", file, e))?,
            );
            return Ok(Zeroizing::new(
                text.trim_end_matches(['\n', '\r']).to_owned(),
            ));
        }
        env(PIN_ENV).map(Zeroizing::new).ok_or_else(|| {
            Error::Invalid(format!(
                "the HSM's user PIN is needed: set {PIN_ENV} or [keys] pin_file"
            ))
        })
    }

    /// Opens the HSM keystore this configuration names, the PIN looked up
    /// through `env`.
    pub fn open_pkcs11(&self, env: impl Fn(&str) -> Option<String>) -> Result<Pkcs11KeyStore> {
        self.check()?;
        let (Some(module), Some(token_label)) = (&self.module, &self.token_label) else {
            return Err(Error::Invalid(
                "[keys] names no HSM: set store = \"pkcs11\", module and token_label".into(),
            ));
        };
        let pin = self.pin(env)?;
        Pkcs11KeyStore::open(&Pkcs11Params {
            module,
            token_label,
            kek_label: self.kek_label.as_deref().unwrap_or(DEFAULT_KEK_LABEL),
            pin: &pin,
        })
    }

    /// As the data directory's `keys.toml` holds it.
    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("the keys configuration serializes")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_hsm_needs_its_module_and_token_and_the_file_store_takes_neither() {
        let hsm = KeysConfig {
            store: StoreKind::Pkcs11,
            ..Default::default()
        };
        assert!(
            hsm.check()
                .unwrap_err()
                .to_string()
                .contains("needs `module`")
        );
        let file = KeysConfig {
            pin_file: Some("pin".into()),
            ..Default::default()
        };
        assert!(file.check().unwrap_err().to_string().contains("only"));
        assert!(KeysConfig::default().check().is_ok());
        let text = "store = \"pkcs11\"\nmodule = \"/m.so\"\ntoken_label = \"t\"\n";
        let parsed: KeysConfig = toml::from_str(text).unwrap();
        assert_eq!(parsed.store, StoreKind::Pkcs11);
        assert_eq!(
            toml::from_str::<KeysConfig>(&parsed.to_toml()).unwrap(),
            parsed
        );
        assert!(
            toml::from_str::<KeysConfig>("pin = \"1234\"\n").is_err(),
            "no PIN key"
        );
    }

    #[test]
    fn the_pin_comes_from_its_file_else_the_environment() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pin");
        std::fs::write(&file, "4321\n").unwrap();
        let mut c = KeysConfig {
            store: StoreKind::Pkcs11,
            pin_file: Some(file),
            ..Default::default()
        };
        let env = |k: &str| (k == PIN_ENV).then(|| "9999".to_owned());
        assert_eq!(c.pin(env).unwrap().as_str(), "4321");
        c.pin_file = None;
        assert_eq!(c.pin(env).unwrap().as_str(), "9999");
        let err = c.pin(|_| None).unwrap_err().to_string();
        assert!(err.contains(PIN_ENV), "{err}");
    }
}
