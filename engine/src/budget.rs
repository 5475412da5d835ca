//! Budget files: an exact privacy accountant kept as JSON beside the data
//! it pays for (`cohort budget`), locked from its reading to its last
//! write so two runs cannot both spend what only one may. `cohort dp` and
//! `cohort query FILE` debit them.

use std::path::Path;

use cohort_anonymizer::accountant::Accountant;
use serde::Serialize;

use crate::{Error, Result};

/// A debit recorded in a budget file.
#[derive(Debug, Serialize)]
pub struct Debit {
    /// The query id.
    pub query_id: String,
    /// What is left of the budget.
    pub remaining: String,
}

/// A fresh query id for a debit (`q-` and the time in nanoseconds).
pub fn new_query_id() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!("q-{nanos}")
}

/// An exclusive lock on a budget file, held from its reading to its last
/// write (a `<file>.lock` beside it, released when dropped or when the
/// process dies).
pub struct BudgetLock {
    _file: std::fs::File,
}

impl BudgetLock {
    /// Waits for the lock of `budget_file`.
    pub fn acquire(budget_file: &Path) -> Result<BudgetLock> {
        let mut name = budget_file.as_os_str().to_owned();
        name.push(".lock");
        let path = std::path::PathBuf::from(name);
        Ok(BudgetLock {
            _file: crate::storage::fsutil::lock_exclusive(&path)?,
        })
    }
}

/// Reads a budget file (an [`Accountant`] as JSON).
pub fn load_budget(path: &Path) -> Result<Accountant> {
    let text =
        std::fs::read_to_string(path).map_err(|e| Error::io("reading the budget file", path, e))?;
    serde_json::from_str(&text)
        .map_err(|e| Error::Invalid(format!("budget file {}: {e}", path.display())))
}

/// Writes a budget file atomically and durably.
pub fn save_budget(path: &Path, accountant: &Accountant) -> Result<()> {
    let json = serde_json::to_vec_pretty(accountant).map_err(|e| Error::Invalid(e.to_string()))?;
    crate::storage::fsutil::write_atomic(path, &json)
}
