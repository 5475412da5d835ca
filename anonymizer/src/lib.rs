//! # cohort-anonymizer
//!
//! Turns consented records into something safe to release. It works on Arrow
//! `RecordBatch`es and knows nothing of the ledger, FHE or SQL: HIPAA Safe
//! Harbor de-identification driven by a declarative column policy, keyed
//! per-study pseudonyms, generalization hierarchies, k-anonymity by Mondrian
//! partitioning with l-diversity and t-closeness constraints, and the
//! differential-privacy mechanisms (built on OpenDP's samplers) together with
//! the privacy accountant that the query planner debits. It is a leaf crate:
//! nothing in the workspace is below it.
//!
//! The crate is filled by the anonymizer issue; the foundation only reserves
//! its place in the dependency graph.
