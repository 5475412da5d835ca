//! The projection written out as Parquet, leaving the data directory: only
//! through an unlocked vault (the operator's passphrase) and recorded in
//! the audit log with who, why, where and whether patients' identifiers
//! went with it. Identifiers are opened with each patient's data key only
//! when asked for; otherwise the files hold what research reads.

use std::path::Path;

use super::*;
use crate::records::projection::{self, Exported, Identifiers, Reading};

impl Vault {
    /// Writes every projection table to `<dir>/<table>.parquet` (Snappy,
    /// each file replaced atomically) and audits the export under `access`:
    /// the tables, the directory and whether identifiers were included,
    /// never their contents. With [`Identifiers::Omitted`] the sealed
    /// columns are null and `birth_date` / `zip` hold their Safe Harbor
    /// generalizations (first day of the birth year, three-digit ZIP).
    pub fn export_projection(
        &self,
        access: &Access,
        dir: &Path,
        identifiers: Identifiers,
    ) -> Result<Vec<Exported>> {
        let files = match identifiers {
            Identifiers::Omitted => {
                projection::export_parquet(&self.conn, dir, &mut Reading::Research)?
            }
            Identifiers::Included => {
                // One unwrap per patient; an erased patient's key is gone,
                // so their sealed cells (were any left) fail to open.
                let mut cache = KeyCache::default();
                let mut keys =
                    |patient: &str| self.data_key(&self.conn, &mut cache, patient, false);
                projection::export_parquet(&self.conn, dir, &mut Reading::Identified(&mut keys))?
            }
        };
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
                    "identifiers": identifiers == Identifiers::Included,
                }),
            },
        )?;
        Ok(files)
    }
}
