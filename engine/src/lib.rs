//! # cohort-engine
//!
//! The domain of cohort: every operation the CLI and the server offer, once.
//! One module folder per domain, dependencies pointing down the list:
//!
//! - [`storage`]: the content-addressed block store, SQLite, Arrow/Parquet
//!   tables, atomic writes (a leaf);
//! - [`keys`]: the keystore that wraps every data key, the actors' Ethereum
//!   accounts, second factors;
//! - [`audit`]: the hash-chained audit log;
//! - [`records`]: the encrypted vault, FHIR ingestion, the columnar
//!   projection, Safe Harbor, the synthetic cohort;
//! - [`datadir`]: one installation's directory and the vault it unlocks;
//! - [`access`]: roles on the ledger; [`chain`]: the deployed contracts and
//!   the client the domain sends through;
//! - [`appointments`]: providers' hours and fees, bookings paid into
//!   escrow, insurance, confirmation, cancellation, no-shows, reminders;
//! - [`research`]: studies, consent, budgeted queries, extracts,
//!   compensation, encrypted columns;
//! - [`rotation`]: a new key-encryption key, and every wrapped key of a
//!   data directory re-wrapped under it while the directory stays in use;
//! - [`sql`], [`release`], [`budget`]: `cohort query FILE` over a policy
//!   file and `cohort dp`, a front door over the same planned path, both
//!   paid for from a budget file.
//!
//! It composes the anonymizer, FHE, query-planner and ledger-bridge crates;
//! none of them depends on it. The interfaces sit above it, in crates of
//! their own: `cohort-server` (`cohort serve`: Flight SQL, the study API,
//! the web page) and `cohort-cli` (the `cohort` binary), which parse, call
//! and render.
//!
//! ```no_run
//! use cohort_engine::{DataDir, records::vault::Access};
//!
//! let dir = DataDir::open("./cohort-data".as_ref())?;
//! let vault = dir.unlock("a passphrase")?;
//! let report = cohort_engine::records::ingest::ingest_paths(
//!     &vault, &Access::new("operator", "ingest"), &["bundles/".into()], false)?;
//! println!("{} resources stored", report.resources);
//! # Ok::<(), cohort_engine::Error>(())
//! ```
#![deny(missing_docs)]

pub mod access;
pub mod appointments;
pub mod audit;
pub mod budget;
pub mod chain;
pub mod compliance;
pub mod datadir;
pub mod deadline;
pub mod keys;
pub mod records;
pub mod release;
pub mod research;
pub mod rotation;
pub mod sql;
pub mod storage;

mod error;

pub use datadir::DataDir;
pub use error::{Error, Result};
