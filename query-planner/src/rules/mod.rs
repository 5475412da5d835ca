//! The planner's rules, one concern per file.
//!
//! - [`syntax`]: on the SQL syntax tree, before planning: one SELECT, study
//!   tables only, allow-listed functions, no window functions, table
//!   functions or TABLESAMPLE.
//! - [`subqueries`]: no subquery left in an expression after the
//!   normalisation (which turns `IN`/`EXISTS` on the unit into joins): a
//!   scalar subquery computes over other patients' rows.
//! - [`sampling`]: no random predicates over patients' rows (LIMIT before
//!   aggregation is tracked by the typing pass and refused at the aggregate).
//! - [`joins`]: joins and unions keep rows attributable to one patient.
//! - [`aggregates`]: which aggregates have a mechanism, and their bounds.
//! - [`group_keys`]: no grouping by identifiers; public domains of keys.
//! - [`dp_aggregate`]: the rewrite of a DP aggregate into contribution
//!   bounding, exact aggregation and noise.
//!
//! - [`walk`]: the one visitor type every syntax-tree walk goes through.
//!
//! The typing pass ([`crate::typing`]) applies them to each operator.

pub(crate) mod aggregates;
pub(crate) mod dp_aggregate;
pub(crate) mod encrypted;
pub(crate) mod group_keys;
pub(crate) mod joins;
pub(crate) mod sampling;
pub(crate) mod subqueries;
pub(crate) mod syntax;
pub(crate) mod walk;
