//! Measuring the privacy of a table that is already generalized, whatever
//! produced it: an independent check of a release's k and distinct l.

use std::collections::HashMap;

use arrow::record_batch::RecordBatch;
use serde::Serialize;

use super::encode::{as_text, column};
use crate::error::Result;
/// The privacy an already generalized table achieves: classes are the
/// distinct tuples of its quasi-identifier columns.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Measurement {
    /// The smallest class.
    pub k: usize,
    /// The smallest number of distinct sensitive values in a class.
    pub l_distinct: Option<usize>,
    /// The number of classes.
    pub classes: usize,
}

/// Measures k (and distinct l) of a released table, whatever produced it.
pub fn measure(
    batch: &RecordBatch,
    quasi_identifiers: &[String],
    sensitive: Option<&str>,
) -> Result<Measurement> {
    let mut keys: Vec<Vec<String>> =
        vec![Vec::with_capacity(quasi_identifiers.len()); batch.num_rows()];
    for q in quasi_identifiers {
        for (row, v) in as_text(q, column(batch, q)?)?.into_iter().enumerate() {
            keys[row].push(v);
        }
    }
    let sens = match sensitive {
        Some(s) => Some(as_text(s, column(batch, s)?)?),
        None => None,
    };
    let mut classes: HashMap<&[String], (usize, std::collections::HashSet<&str>)> = HashMap::new();
    for (row, key) in keys.iter().enumerate() {
        let e = classes.entry(key.as_slice()).or_default();
        e.0 += 1;
        if let Some(s) = &sens {
            e.1.insert(s[row].as_str());
        }
    }
    Ok(Measurement {
        k: classes.values().map(|c| c.0).min().unwrap_or(0),
        l_distinct: sens
            .as_ref()
            .map(|_| classes.values().map(|c| c.1.len()).min().unwrap_or(0)),
        classes: classes.len(),
    })
}
