//! The plan of one DP aggregate (a site): how its groups are chosen, each
//! release's statistic, noise and charge, and the log its releases go to.
//!
//! Planned before execution and shared by the logical node, the physical
//! operator and `EXPLAIN`, so what is shown is what runs.

use std::sync::{Arc, Mutex};

use cohort_anonymizer::accountant::Charge;
use cohort_anonymizer::dp::KeyThreshold;
use datafusion::common::ScalarValue;
use serde::Serialize;

use crate::encryption::{EncryptedRelease, Executor};
use crate::release::{Influence, Noise, Statistic};
/// How the released groups of a DP aggregate are chosen.
#[derive(Clone, Debug)]
pub(crate) enum Keys {
    /// No `GROUP BY`: one row.
    None,
    /// Every combination of the keys' public domains, in this order.
    Public(Vec<Vec<ScalarValue>>),
    /// DP key selection on the number of distinct patients per group
    /// (the inner aggregate's column `units`).
    Selected {
        units: usize,
        threshold: Option<KeyThreshold>,
        /// What the selection costs, once planned.
        charge: Option<Charge>,
    },
}

/// One aggregate of the researcher's query and its planned release.
#[derive(Clone, Debug)]
pub(crate) struct PlannedRelease {
    /// The aggregate's output column name.
    pub output: String,
    /// The aggregate as written (DataFusion's display).
    pub aggregate: String,
    pub statistic: Statistic,
    /// Indices of its exact statistics among the inner aggregate's columns.
    pub inputs: Vec<usize>,
    /// How much one row or patient moves each of them.
    pub influence: Vec<Influence>,
    pub noise: Option<Noise>,
    pub charge: Option<Charge>,
    /// Set when the release is computed under encryption.
    pub encrypted: Option<EncryptedRelease>,
}

/// One DP aggregate (a "site") of a query.
#[derive(Clone, Debug)]
pub(crate) struct Site {
    pub id: usize,
    pub key_count: usize,
    pub keys: Keys,
    pub releases: Vec<PlannedRelease>,
    /// Groups one patient adds to, rows per group (as bounded).
    pub max_groups: u32,
    pub max_rows: u32,
    /// The key expressions, for EXPLAIN.
    pub key_names: Vec<String>,
    /// The bounding's sampling, for EXPLAIN.
    pub sampling: String,
    /// The privacy unit, for EXPLAIN.
    pub unit: String,
    /// The names of the inner aggregate's statistics, after the keys.
    pub inner_names: Vec<String>,
    pub log: ReleaseLog,
    /// Computes the encrypted releases (installed by the planner).
    pub executor: Option<Executor>,
    /// Small-cell rules applied to the noisy counts.
    pub small_cells: Option<crate::policy::SmallCells>,
}

/// What one aggregate released, per group.
#[derive(Clone, Debug, Serialize)]
pub struct ReleasedAggregate {
    /// The output column.
    pub output: String,
    /// The aggregate as written.
    pub aggregate: String,
    /// The released groups' keys, as text.
    pub groups: Vec<String>,
    /// The released values, per group (counts as reals).
    pub values: Vec<f64>,
    /// The 95% error half-width per group.
    pub error_95: Vec<f64>,
}

/// Where execution records the releases.
#[derive(Clone, Debug, Default)]
pub(crate) struct ReleaseLog(Arc<Mutex<Vec<ReleasedAggregate>>>);

impl ReleaseLog {
    pub(crate) fn take(&self) -> Vec<ReleasedAggregate> {
        self.0
            .lock()
            .map(|mut log| std::mem::take(&mut *log))
            .unwrap_or_default()
    }

    pub(super) fn push(&self, released: ReleasedAggregate) {
        if let Ok(mut log) = self.0.lock() {
            log.push(released);
        }
    }
}
