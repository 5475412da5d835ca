//! Where the data lives: the content-addressed block store (IPFS CIDs),
//! SQLite, Arrow/Parquet tables and atomic writes. A leaf of the domain:
//! it depends on nothing else in the engine.

pub mod blockstore;
pub mod cid;
pub mod fsutil;
pub mod packstore;
pub mod store;
pub mod tabular;
