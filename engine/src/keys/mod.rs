//! Keys: the keystores that wrap every data key (a passphrase file, or a
//! PKCS#11 HSM), which one a data directory uses, the actors' Ethereum
//! accounts they hold, and their second factors (TOTP secrets, passkeys);
//! the patients' data keys by epoch, sealed (ECIES) to each account that
//! may read them (`data_keys`).
//! Rotating the KEKs over every wrapped key of a data directory is
//! `crate::rotation`'s job.

pub mod accounts;
pub mod config;
pub mod data_keys;
pub mod ecies;
pub mod keystore;
pub mod passkeys;
pub mod pkcs11;
pub mod second_factor;
#[cfg(test)]
pub(crate) mod softhsm;
