//! Keys: the keystore that wraps every data key, the actors' Ethereum
//! accounts it holds, and their second factors (TOTP secrets, passkeys).

pub mod accounts;
pub mod keystore;
pub mod passkeys;
pub mod second_factor;
