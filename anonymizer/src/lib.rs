//! # cohort-anonymizer
//!
//! Turns consented records into something safe to release. It works on Arrow
//! `RecordBatch`es and knows nothing of the ledger, FHE or SQL:
//!
//! - [`hierarchy`]: generalization hierarchies declared in TOML (numeric
//!   bands, dates, prefixes, categorical trees);
//! - [`mondrian`]: k-anonymity by Mondrian partitioning, with the
//!   [`privacy_model`]s l-diversity and t-closeness as split constraints, and
//!   information-loss metrics;
//!
//! It is a leaf crate: nothing in the workspace is below it.
//!
//! ```
//! use std::sync::Arc;
//! use arrow::array::{Int64Array, StringArray};
//! use arrow::record_batch::RecordBatch;
//! use cohort_anonymizer::mondrian::{anonymize, Params, Request};
//!
//! let ages = Int64Array::from((0..100).map(|i| 20 + i % 50).collect::<Vec<_>>());
//! let dx = StringArray::from((0..100).map(|i| ["flu", "asthma", "gout"][i % 3]).collect::<Vec<_>>());
//! let table = RecordBatch::try_from_iter([("age", Arc::new(ages) as _), ("dx", Arc::new(dx) as _)]).unwrap();
//! let request = Request {
//!     quasi_identifiers: vec!["age".into()],
//!     sensitive: Some("dx".into()),
//!     keep: vec![],
//!     hierarchies: Default::default(),
//!     params: Params::k(10),
//! };
//! let out = anonymize(&table, &request).unwrap();
//! assert!(out.report.min_class_size >= 10);
//! ```

#![deny(missing_docs)]

pub mod error;
pub mod hierarchy;
pub mod mondrian;
pub mod privacy_model;

pub use error::{Error, Result};
