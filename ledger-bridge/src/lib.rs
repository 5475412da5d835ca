//! # cohort-ledger-bridge
//!
//! The link to an Ethereum-compatible chain, which is the authority for
//! roles, access grants, consent, study approval, privacy budgets and
//! compensation. It holds the Solidity contracts (under `contracts/`), their
//! compiled and committed artifacts, alloy bindings, and the `Ledger` trait
//! with two backends: an embedded revm whose state persists on disk (the
//! zero-set-up default) and a JSON-RPC backend for a real node.
//!
//! The crate is filled by the ledger issue; the foundation only reserves its
//! place in the dependency graph.
