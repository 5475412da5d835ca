//! Who may do what, as the ledger decides: roles granted and revoked by
//! an administrator.

pub mod roles;
