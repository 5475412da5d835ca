//! The engine's integration tests against the embedded chain, one binary
//! (each test binary links the whole engine: one link instead of four).

mod appointments;
mod clinical;
mod common;
mod compliance;
mod recovery;
