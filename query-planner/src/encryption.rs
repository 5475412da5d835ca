//! The seam between the planner and the FHE layer: the planner decides
//! what is computed under encryption and how it is bounded and noised; the
//! engine's [`EncryptedExecutor`] holds the keys and does the homomorphic
//! work for each group.

use std::fmt;
use std::sync::Arc;

use cohort_fhe::{CostEstimate, EncryptedOp, FheError, Layer, Sealed};
use serde::Serialize;

use crate::policy::Bounds;

/// Computes encrypted aggregates for the planner. The engine implements it
/// with the study's keys; the planner calls it once per released group,
/// with that group's ciphertexts and the DP noise already sampled.
///
/// The work of a group is padded to a public size: every record of every
/// patient who may contribute a value (for the engine, the consenting
/// patients who shared one, which is on chain), `max_rows` records each. So
/// the work, its time, its progress and its estimate depend on public
/// sizes only, never on how many records passed a plaintext predicate.
pub trait EncryptedExecutor: Send + Sync {
    /// What `op` over one group of `table.column` costs: the padded work.
    fn estimate(&self, table: &str, column: &str, op: &EncryptedOp, max_rows: u32) -> CostEstimate;

    /// Aggregates one group's ciphertexts with `noise` added under
    /// encryption, its work padded to the public size, and seals the result.
    fn aggregate(
        &self,
        table: &str,
        column: &str,
        op: &EncryptedOp,
        cells: &[&[u8]],
        noise: i64,
        max_rows: u32,
    ) -> Result<Sealed, FheError>;
}

/// A release computed under encryption.
#[derive(Clone, Debug, Serialize)]
pub struct EncryptedRelease {
    /// The layer that answers it.
    pub layer: Layer,
    /// The operation.
    #[serde(skip)]
    pub op: EncryptedOp,
    /// The study table.
    pub table: String,
    /// The encrypted column.
    pub column: String,
    /// The plaintext's declared bounds.
    pub bounds: Bounds,
    /// The executor's estimate, once one is installed.
    pub estimate: Option<CostEstimate>,
}

/// The executor as planned nodes carry it.
#[derive(Clone)]
pub(crate) struct Executor(pub Arc<dyn EncryptedExecutor>);

impl fmt::Debug for Executor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("EncryptedExecutor")
    }
}
