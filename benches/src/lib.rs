//! # cohort-benches
//!
//! Criterion benchmarks of cohort's hot paths (run with `cargo bench -p
//! cohort-benches`) and the scripts that compare cohort with peer systems.
//! Every figure in `docs/BENCHMARKS.md` names the command that produced it.
