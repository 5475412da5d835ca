//! The FHE layers' integration tests, one binary (each links tfhe whole).

mod linear;
mod predicate;
