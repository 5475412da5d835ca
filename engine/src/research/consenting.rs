//! Who is in a study's consenting set: the leaf type the view, the query
//! path and the encrypted columns all read.

use cohort_ledger_bridge::alloy::primitives::Address;

/// One consenting patient: their id in the vault and their account.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Consenting {
    /// The patient's id in the vault.
    pub patient_id: String,
    /// The account that consented (and is paid).
    pub address: Address,
}
