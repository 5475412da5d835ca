//! # cohort-anonymizer
//!
//! Turns consented records into something safe to release. It works on Arrow
//! `RecordBatch`es and knows nothing of the ledger, FHE or SQL:
//!
//! - [`deid`]: HIPAA Safe Harbor de-identification by a declarative column
//!   policy, with keyed per-study pseudonyms;
//! - [`hierarchy`]: generalization hierarchies declared in TOML (numeric
//!   bands, dates, prefixes, categorical trees);
//! - [`mondrian`]: k-anonymity by Mondrian partitioning, with the
//!   [`privacy_model`]s l-diversity and t-closeness as split constraints, and
//!   information-loss metrics;
//! - [`dp`]: differential-privacy mechanisms on OpenDP's samplers (discrete
//!   Laplace and Gaussian counts and sums, means, histograms, key selection,
//!   quantiles), each release carrying its exact cost;
//! - [`accountant`]: budgets in ε, (ε, δ) and ρ-zCDP in exact fixed point, with
//!   reserve / commit / release of charges.
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
//!
//! A DP release, paid for from a study's budget:
//!
//! ```
//! use cohort_anonymizer::accountant::{Accountant, Budget, QueryId};
//! use cohort_anonymizer::dp::{self, Privacy};
//!
//! let mut study = Accountant::new(Budget::Pure { epsilon: "1".parse()? });
//! let privacy = Privacy::Pure { epsilon: 0.1 };
//! let query = QueryId::new("count-diabetes");
//! study.reserve(query.clone(), privacy.charge()?)?;
//! let release = dp::count(412, 1, privacy)?;
//! study.commit(&query, Some(release.charge()))?;
//! assert_eq!(study.remaining().to_string(), "ε = 0.9");
//! # Ok::<(), cohort_anonymizer::Error>(())
//! ```

#![deny(missing_docs)]

pub mod accountant;
pub mod deid;
pub mod dp;
pub mod error;
pub mod hierarchy;
pub mod mondrian;
pub mod privacy_model;

pub use error::{Error, Result};
