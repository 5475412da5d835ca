//! What the planner enforces: the resolved [`Scope`] of a study, its typed
//! column declarations, and the fixed limits and defaults that shape them.
//!
//! The rules read only this, never the policy file, so every check they make
//! rests on declarations that were already validated.

use std::collections::BTreeMap;
use std::fmt;

use arrow::datatypes::DataType;
use datafusion::common::ScalarValue;
/// An integer column whose bounds span at most this many values has them
/// as a public domain (`GROUP BY age` over `[0, 120]` needs no key selection).
pub const IMPLICIT_DOMAIN_MAX: i64 = 1_000;

/// The largest public domain a `GROUP BY` may release (after crossing keys).
pub const DOMAIN_MAX: usize = 10_000;

/// The most decimals a column's fixed-point sums keep.
pub const PRECISION_MAX: u32 = 9;

/// The decimals a real column's sums keep unless its policy says otherwise.
pub const DEFAULT_PRECISION: u32 = 4;

/// Quantiles choose among this many evenly spaced candidates over a
/// column's bounds unless its policy lists them.
pub const DEFAULT_QUANTILE_CANDIDATES: usize = 101;

/// Declared clamping bounds of a numeric column (public).
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct Bounds {
    /// Smallest value kept; smaller values are raised to it.
    pub lower: f64,
    /// Largest value kept; larger values are lowered to it.
    pub upper: f64,
}

impl Bounds {
    /// The largest magnitude a clamped value can have.
    pub fn magnitude(&self) -> f64 {
        self.lower.abs().max(self.upper.abs())
    }
}

impl fmt::Display for Bounds {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{}, {}]", self.lower, self.upper)
    }
}

/// A policy resolved against the tables: what the planner enforces.
#[derive(Clone, Debug)]
pub struct Scope {
    /// The privacy unit column's name.
    pub unit: String,
    /// The study tables, and the public tables (`ScopedTable::public`).
    pub tables: BTreeMap<String, ScopedTable>,
    /// The small-cell rules applied to noisy counts, if any.
    pub small_cells: Option<SmallCells>,
    /// The public tables' rows (public facts), by name.
    pub public_rows: BTreeMap<String, arrow::array::RecordBatch>,
}

/// Small-cell rules, resolved: post-processing of noisy counts.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct SmallCells {
    /// The convention's name, when one was named.
    pub convention: Option<String>,
    /// Counts are rounded to the nearest multiple of this (1: not rounded).
    pub round_to: u64,
    /// A group whose noisy count is below this is withheld (0: none is).
    pub suppress_below: u64,
}

impl SmallCells {
    /// A noisy count after the rules: `None` when withheld.
    pub fn apply(&self, count: f64) -> Option<f64> {
        if count < self.suppress_below as f64 {
            return None;
        }
        if self.round_to <= 1 {
            return Some(count);
        }
        let step = self.round_to as f64;
        Some((count / step).round() * step)
    }
}

impl fmt::Display for SmallCells {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        if self.suppress_below > 0 {
            parts.push(format!(
                "a group whose noisy count is below {} is withheld (all its values NULL)",
                self.suppress_below
            ));
        }
        if self.round_to > 1 {
            parts.push(format!(
                "counts are rounded to the nearest {} (adds at most {} to the error)",
                self.round_to,
                self.round_to / 2
            ));
        }
        if let Some(name) = &self.convention {
            write!(f, "{name}: ")?;
        }
        write!(
            f,
            "{}; post-processing of the noisy values, no privacy cost",
            parts.join("; ")
        )
    }
}

/// A study table as the planner sees it.
#[derive(Clone, Debug)]
pub struct ScopedTable {
    /// The approved columns, in the policy's order.
    pub columns: Vec<(String, DeclaredColumn)>,
    /// A declared bound on rows per patient.
    pub rows_per_unit: Option<u32>,
    /// A public table: no patient's rows, no privacy unit, read freely.
    pub public: bool,
}

impl ScopedTable {
    /// The declaration of an approved column.
    pub fn column(&self, name: &str) -> Option<&DeclaredColumn> {
        self.columns
            .iter()
            .find(|(column, _)| column == name)
            .map(|(_, declared)| declared)
    }
}

/// What the policy says of one approved column, typed for its table.
#[derive(Clone, Debug)]
pub struct DeclaredColumn {
    /// The column's Arrow type.
    pub data_type: DataType,
    /// The privacy unit or a near-unique column: never grouped by.
    pub identifier: bool,
    /// Clamping bounds.
    pub bounds: Option<Bounds>,
    /// Public domain (declared, or the integer range of the bounds).
    pub domain: Option<Vec<ScalarValue>>,
    /// Decimals kept by fixed-point sums.
    pub precision: u32,
    /// Declared quantile candidates.
    pub candidates: Option<Vec<f64>>,
    /// The encryption layer of a patient-encrypted column.
    pub encrypted: Option<cohort_fhe::Layer>,
}
