//! The projection written out as Parquet: plaintext PHI leaving the data
//! directory, so only through an unlocked vault (the operator's
//! passphrase) and recorded in the audit log with who, why and where.

use std::path::Path;

use super::*;
use crate::records::projection::{self, Exported};

impl Vault {
    /// Writes every projection table to `<dir>/<table>.parquet` (Snappy,
    /// each file replaced atomically) and audits the export under `access`:
    /// the tables and the directory, never their contents.
    pub fn export_projection(&self, access: &Access, dir: &Path) -> Result<Vec<Exported>> {
        let files = projection::export_parquet(&self.conn, dir)?;
        audit::append(
            &self.conn,
            &Event {
                actor: &access.actor,
                action: "records.export",
                target: "projection",
                purpose: &access.purpose,
                detail: serde_json::json!({
                    "dir": dir.display().to_string(),
                    "tables": files.iter().map(|f| f.table.as_str()).collect::<Vec<_>>(),
                }),
            },
        )?;
        Ok(files)
    }
}
