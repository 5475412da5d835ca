//! Who may do what, as the ledger decides: the authenticated actor, roles
//! granted by an administrator, patients' grants and delegations,
//! provider credentials, geography, emergency access with its review, and the
//! notifications these send.

pub mod actor;
pub mod emergency;
pub mod geo;
pub mod grants;
pub mod notifications;
pub mod patients;
pub mod recovery;
pub mod roles;
pub mod scope;

pub use actor::Actor;
pub use scope::{Level, Purpose};
