//! Keys: the keystore that wraps every data key, the actors' Ethereum
//! accounts it holds, and their second factors.

pub mod accounts;
pub mod keystore;
pub mod second_factor;
