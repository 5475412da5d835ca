//! What a caller asks of Mondrian and what it gets back: the columns' roles,
//! the privacy requirements, and the report of what the release cost.
//!
//! [`validate`] refuses a malformed request (k = 0, a column named twice, l
//! or t without a sensitive attribute) before any data is read, so the
//! partitioning can assume well-formed parameters.

use std::collections::{BTreeMap, HashMap};

use arrow::record_batch::RecordBatch;
use serde::{Deserialize, Serialize};

use super::encode::column;
use crate::error::{Error, Result};
use crate::hierarchy::Hierarchies;
use crate::privacy_model::LDiversity;
/// How ordered attributes are cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Cut by value: all rows with the median value go to one side.
    Strict,
    /// Cut by value when allowable, else cut the sorted rows in half so the
    /// median value may fall on both sides.
    Relaxed,
}

/// The privacy requirements of a release.
#[derive(Debug, Clone)]
pub struct Params {
    /// Every released equivalence class has at least `k` rows.
    pub k: usize,
    /// Optional l-diversity of the sensitive attribute within each class.
    pub l_diversity: Option<LDiversity>,
    /// Optional t-closeness bound (earth mover's distance, in `[0, 1]`).
    pub t_closeness: Option<f64>,
    /// The largest fraction of rows that may be suppressed, in `[0, 1)`.
    pub suppression_limit: f64,
    /// How ordered attributes are cut.
    pub mode: Mode,
}

impl Params {
    /// k-anonymity alone, strict, no suppression.
    pub fn k(k: usize) -> Self {
        Self {
            k,
            l_diversity: None,
            t_closeness: None,
            suppression_limit: 0.0,
            mode: Mode::Strict,
        }
    }
}

/// What to anonymize: the columns' roles and the requirements.
#[derive(Debug, Clone)]
pub struct Request {
    /// Quasi-identifiers, generalized in the output.
    pub quasi_identifiers: Vec<String>,
    /// The sensitive attribute, released as is (needed for l and t).
    pub sensitive: Option<String>,
    /// Other columns released unchanged. Everything else is dropped.
    pub keep: Vec<String>,
    /// Generalization hierarchies by column. A text quasi-identifier without
    /// one is generalized to the set of its values in the class.
    pub hierarchies: Hierarchies,
    /// The requirements.
    pub params: Params,
}

/// The generalized table and what it cost.
#[derive(Debug)]
pub struct Anonymized {
    /// Quasi-identifiers as text labels, the sensitive and kept columns as
    /// they were, suppressed rows removed, the input's row order kept.
    pub batch: RecordBatch,
    /// Information loss and the privacy actually achieved.
    pub report: Report,
}

/// Information loss and achieved privacy of one anonymization.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    /// Rows in the input.
    pub rows_in: usize,
    /// Rows released.
    pub rows_out: usize,
    /// Rows suppressed.
    pub suppressed: usize,
    /// Equivalence classes released (distinct quasi-identifier tuples).
    pub classes: usize,
    /// The smallest class: the k actually achieved.
    pub min_class_size: usize,
    /// Released rows per class.
    pub average_class_size: f64,
    /// The discernibility metric: the sum of squared class sizes, plus
    /// rows_in for every suppressed row.
    pub discernibility: f64,
    /// Normalized certainty penalty over released rows and quasi-identifiers
    /// (GCP), in `[0, 1]`: 0 is the original data, 1 everything suppressed.
    pub ncp: f64,
    /// The penalty of each quasi-identifier.
    pub ncp_by_column: BTreeMap<String, f64>,
    /// The smallest number of distinct sensitive values in a class.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub l_distinct: Option<usize>,
    /// exp(the smallest entropy of the sensitive attribute in a class).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub l_entropy: Option<f64>,
    /// The largest earth mover's distance of a class from the released table.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub t: Option<f64>,
    /// How ordered attributes were cut.
    pub mode: Mode,
}

pub(super) fn validate(batch: &RecordBatch, request: &Request) -> Result<()> {
    let p = &request.params;
    let bad = |m: String| Err(Error::InvalidRequest(m));
    if p.k == 0 {
        return bad("k must be at least 1".into());
    }
    if request.quasi_identifiers.is_empty() {
        return bad("name at least one quasi-identifier".into());
    }
    if !(0.0..1.0).contains(&p.suppression_limit) {
        return bad(format!(
            "the suppression limit {} must be in [0, 1)",
            p.suppression_limit
        ));
    }
    if let Some(t) = p.t_closeness
        && !(t > 0.0 && t <= 1.0)
    {
        return bad(format!("t = {t} must be in (0, 1]"));
    }
    match p.l_diversity {
        Some(LDiversity::Distinct { l }) | Some(LDiversity::Recursive { l, .. }) if l < 1 => {
            return bad("l must be at least 1".into());
        }
        Some(LDiversity::Entropy { l }) if l.is_nan() || l < 1.0 => {
            return bad(format!("entropy l = {l} must be at least 1"));
        }
        Some(LDiversity::Recursive { c, .. }) if c.is_nan() || c <= 0.0 => {
            return bad(format!("c = {c} must be positive"));
        }
        _ => {}
    }
    if (p.l_diversity.is_some() || p.t_closeness.is_some()) && request.sensitive.is_none() {
        return bad("l-diversity and t-closeness need a sensitive attribute".into());
    }
    let mut seen = HashMap::new();
    let roles = request
        .quasi_identifiers
        .iter()
        .map(|c| (c, "a quasi-identifier"))
        .chain(
            request
                .sensitive
                .iter()
                .map(|c| (c, "the sensitive attribute")),
        )
        .chain(request.keep.iter().map(|c| (c, "kept")));
    for (c, role) in roles {
        column(batch, c)?;
        if let Some(other) = seen.insert(c.clone(), role) {
            return bad(format!(
                "column `{c}` is named twice: as {other} and as {role}"
            ));
        }
    }
    Ok(())
}
