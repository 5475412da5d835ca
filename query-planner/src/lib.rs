//! # cohort-query-planner
//!
//! Turns a researcher's SQL into a private plan. DataFusion parses and plans
//! the statement; a list of rules over the `LogicalPlan` (one rule per file,
//! written with DataFusion's `TreeNode` API) checks it against the study's
//! scope and rewrites it: contribution bounding per patient, clamping to the
//! declared bounds, aggregates mapped to the anonymizer's mechanisms, DP key
//! selection for non-public group keys. The result carries its cost in ε
//! (and δ) and the expected error of every output column, which is also what
//! `EXPLAIN PRIVACY` prints.
//!
//! The crate is filled by the query-planner issue; the foundation only
//! reserves its place in the dependency graph (it depends on
//! `cohort-anonymizer` for mechanisms and accounting).
