//! Erasure by crypto-shredding: the patient's data key is destroyed and
//! their projection rows removed in one transaction; the blocks and their
//! CIDs stay, unreadable, so the audit trail still proves what existed.

use super::*;

impl Vault {
    /// Erases a patient by destroying their data key (crypto-shredding), and
    /// removes their rows from the columnar projection. Record metadata and
    /// CIDs stay, so the audit trail still proves what existed. Irreversible.
    pub fn erase_patient(&self, access: &Access, patient_id: &str) -> Result<Erasure> {
        let tx = rusqlite::Transaction::new_unchecked(&self.conn, TransactionBehavior::Immediate)?;
        match patient_state(&tx, patient_id)? {
            PatientState::Absent => {
                return Err(Error::NotFound(format!(
                    "no patient {patient_id} in the vault"
                )));
            }
            PatientState::Erased { at } => {
                return Err(Error::Shredded {
                    patient: patient_id.to_owned(),
                    erased_at: at,
                });
            }
            PatientState::Active => {}
        }
        tx.execute(
            "UPDATE patients SET wrapped_key = NULL, erased_at = ?2 WHERE patient_id = ?1",
            params![patient_id, crate::storage::store::now()],
        )?;
        // Every sealed copy (ECIES, per holder and epoch) and the
        // custodian's copies of later epochs go with it.
        let copies = crate::keys::data_keys::erase(&tx, patient_id)?;
        let versions: i64 = tx.query_row(
            "SELECT COUNT(*) FROM records WHERE patient_id = ?1",
            [patient_id],
            |r| r.get(0),
        )?;
        let removed = crate::records::projection::remove_patient(&tx, patient_id)?;
        // Ciphertexts a patient submitted for studies go with the records.
        let research: bool = crate::storage::store::table_exists(&tx, "research_encrypted")?;
        if research {
            tx.execute(
                "DELETE FROM research_encrypted WHERE patient_id = ?1",
                [patient_id],
            )?;
        }
        // So does the link to their research account (their consents were
        // withdrawn on chain first, by the research path's erasure).
        let linked: bool = crate::storage::store::table_exists(&tx, "research_patients")?;
        if linked {
            tx.execute(
                "DELETE FROM research_patients WHERE patient_id = ?1",
                [patient_id],
            )?;
        }
        audit::append(
            &tx,
            &Event {
                actor: &access.actor,
                action: "erase",
                target: &format!("Patient/{patient_id}"),
                purpose: &access.purpose,
                detail: serde_json::json!({ "versions_shredded": versions, "projection_rows_removed": removed, "sealed_copies_destroyed": copies }),
            },
        )?;
        tx.commit()?;
        // Fold the WAL into the main file and truncate it, so no frame still
        // holds the page with the wrapped key.
        self.conn
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
        Ok(Erasure {
            patient_id: patient_id.to_owned(),
            versions_shredded: versions,
            projection_rows_removed: removed,
            consents_withdrawn: vec![],
        })
    }
}
