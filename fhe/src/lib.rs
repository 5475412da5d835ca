//! # cohort-fhe
//!
//! Computes aggregates over values a patient shares only encrypted, so that
//! neither the engine's operator nor the researcher ever sees a raw value.
//! Linear aggregates (COUNT, SUM, AVG with plaintext filters) use additively
//! homomorphic exponential ElGamal over BLS12-381 with threshold decryption by
//! the data stewards; non-linear ones (a predicate or a bucket on an encrypted
//! value) use `tfhe`. Differential-privacy noise is added under encryption.
//! It is a leaf crate and knows nothing of the ledger or SQL.
//!
//! The crate is filled by the FHE issue; the foundation only reserves its
//! place in the dependency graph.
