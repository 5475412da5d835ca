//! # cohort-engine
//!
//! The domain of cohort and the `cohort` binary. This crate owns the
//! encrypted record vault (per-patient data keys wrapped by a keystore,
//! XChaCha20-Poly1305 blocks named by their IPFS CID), the hash-chained audit
//! log, FHIR R4 ingestion into a columnar (Arrow) projection, and the
//! synthetic cohort generator; it composes the anonymizer, FHE, query-planner
//! and ledger crates into the research workflow.
//!
//! ```no_run
//! use cohort_engine::{DataDir, vault::Access};
//!
//! let dir = DataDir::open("./cohort-data".as_ref())?;
//! let vault = dir.unlock("a passphrase")?;
//! let report = cohort_engine::ingest::ingest_paths(
//!     &vault, &Access::new("operator", "ingest"), &["bundles/".into()], false)?;
//! println!("{} resources stored", report.resources);
//! # Ok::<(), cohort_engine::Error>(())
//! ```
#![deny(missing_docs)]

pub mod accounts;
pub mod audit;
pub mod blockstore;
pub mod chain;
pub mod cid;
pub mod datadir;
pub mod deadline;
pub mod fhir;
mod fsutil;
pub mod generate;
pub mod ingest;
pub mod keystore;
pub mod projection;
pub mod release;
pub mod research;
pub mod roles;
pub mod safe_harbor;
pub mod second_factor;
pub mod server;
pub mod sql;
pub mod store;
pub mod tabular;
pub mod vault;

mod error;

pub use datadir::DataDir;
pub use error::{Error, Result};
