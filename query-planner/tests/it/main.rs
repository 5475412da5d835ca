//! Integration tests of the query planner: supported forms (rewrite and
//! answer), refusals (one per rule and form), contribution bounding, cost
//! and EXPLAIN PRIVACY.

mod bounding;
mod cost;
mod encrypted;
mod fixture;
mod forms;
mod public;
mod refusals;
mod snapshots;
mod totality;
