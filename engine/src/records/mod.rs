//! Health records: the encrypted vault (its per-grantee data keys are
//! `keys::data_keys`), FHIR R4 parsing and ingestion,
//! the columnar projection, Safe Harbor de-identification and the
//! synthetic cohort generator.

pub mod anchor;
pub mod clinical;
pub mod fhir;
pub mod generate;
pub mod index_anchor;
pub mod ingest;
pub mod projection;
pub mod safe_harbor;
pub mod vault;
