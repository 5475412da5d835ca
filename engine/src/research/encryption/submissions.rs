//! Patients' encrypted values: checked (range proof, hash on chain),
//! stored, and read back for a study's consenting set.

use super::*;

/// The context a submission's proof is bound to: the study's contract,
/// the study, the column and the patient, so that a ciphertext cannot be
/// replayed for another patient, column or study.
pub(crate) fn context(contract: &str, study: u64, column: &str, patient_id: &str) -> Vec<u8> {
    format!("cohort/fhe/v1/{contract}/{study}/{column}/{patient_id}").into_bytes()
}

/// What a patient's device does: encrypts `value` for `column` under the
/// study's public keys, with the layer's range proof.
pub(crate) fn encrypt_field(
    conn: &Connection,
    root: &std::path::Path,
    column: &EncryptedColumn,
    study: u64,
    value: i64,
    context: &[u8],
) -> Result<Vec<u8>> {
    let bounds = column.bounds()?;
    match column.layer {
        Layer::Elgamal => {
            let key = custodian_key(conn, study)?.ok_or_else(|| {
                Error::Invalid(format!(
                    "study {study} has no encryption key yet: it is made when the study is approved"
                ))
            })?;
            Ok(
                cohort_fhe::range::encrypt_proven(&key.public, value, bounds, context)
                    .map_err(fhe_error)?
                    .to_bytes(),
            )
        }
        Layer::Tfhe => predicate::encrypt_proven(&tfhe_public(root)?, value, bounds, context)
            .map_err(fhe_error),
    }
}

/// What the engine does with a submission: checks its proof once and
/// stores the validated ciphertext (replacing an earlier one), which it
/// returns.
pub(crate) fn accept(
    conn: &Connection,
    root: &std::path::Path,
    column: &EncryptedColumn,
    study: u64,
    patient_id: &str,
    submission: &[u8],
    context: &[u8],
) -> Result<Vec<u8>> {
    let bounds = column.bounds()?;
    let cell = match column.layer {
        Layer::Elgamal => {
            let key = custodian_key(conn, study)?.ok_or_else(|| {
                Error::Invalid(format!("study {study} has no encryption key yet"))
            })?;
            let proven = ProvenCiphertext::from_bytes(submission).map_err(fhe_error)?;
            proven
                .verify(&key.public, bounds, context)
                .map_err(fhe_error)?
                .to_stored()
        }
        Layer::Tfhe => tfhe_server_shared(root)?
            .verify(&tfhe_public(root)?, submission, bounds, context)
            .map_err(fhe_error)?,
    };
    store(
        conn,
        study,
        patient_id,
        column,
        &cell,
        &chrono::Utc::now().to_rfc3339(),
    )?;
    Ok(cell)
}

/// Keeps a validated ciphertext, replacing the patient's earlier one.
pub(super) fn store(
    conn: &Connection,
    study: u64,
    patient_id: &str,
    column: &EncryptedColumn,
    cell: &[u8],
    at: &str,
) -> Result<()> {
    conn.execute(
        "INSERT INTO research_encrypted (study_id, patient_id, column_name, layer, cell, submitted_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)
         ON CONFLICT (study_id, patient_id, column_name) DO UPDATE SET cell = excluded.cell, submitted_at = excluded.submitted_at",
        params![study as i64, patient_id, column.column, column.layer.to_string(), cell, at],
    )?;
    Ok(())
}

/// The on-chain name of an encrypted column.
pub(crate) fn column_hash(column: &str) -> B256 {
    keccak256(column.as_bytes())
}

/// The consenting patients' stored ciphertexts of one column, by patient
/// id: only those whose hash is the one the patient shared on chain.
pub(crate) fn cells(
    conn: &Connection,
    study: u64,
    column: &str,
    consenting: &[Consenting],
) -> Result<HashMap<String, Vec<u8>>> {
    let mut stmt = conn.prepare(
        "SELECT e.patient_id, e.cell, s.value_hash FROM research_encrypted e
         JOIN research_patients p ON p.patient_id = e.patient_id
         JOIN ledger_shared_values s ON s.study_id = e.study_id AND s.patient = p.address
              AND s.column_hash = ?3
         WHERE e.study_id = ?1 AND e.column_name = ?2",
    )?;
    let rows = stmt.query_map(
        params![study as i64, column, format!("{:#x}", column_hash(column))],
        |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, Vec<u8>>(1)?,
                r.get::<_, String>(2)?,
            ))
        },
    )?;
    let consenting: HashSet<&str> = consenting.iter().map(|c| c.patient_id.as_str()).collect();
    let mut out = HashMap::new();
    for row in rows {
        let (patient, cell, shared) = row?;
        if consenting.contains(patient.as_str()) && format!("{:#x}", keccak256(&cell)) == shared {
            out.insert(patient, cell);
        }
    }
    Ok(out)
}

/// How many consenting patients shared a value of `column` on chain: the
/// public size the column's encrypted work is padded to.
pub(crate) fn shared_count(
    conn: &Connection,
    study: u64,
    column: &str,
    consenting: &[Consenting],
) -> Result<u64> {
    let mut stmt = conn.prepare(
        "SELECT patient FROM ledger_shared_values WHERE study_id = ?1 AND column_hash = ?2",
    )?;
    let patients = stmt.query_map(
        params![study as i64, format!("{:#x}", column_hash(column))],
        |r| r.get::<_, String>(0),
    )?;
    let consenting: HashSet<String> = consenting
        .iter()
        .map(|c| format!("{:#x}", c.address))
        .collect();
    let mut n = 0;
    for p in patients {
        if consenting.contains(&p?) {
            n += 1;
        }
    }
    Ok(n)
}

/// The state of a study's submissions (stored and shared on chain), part
/// of its view's digest.
pub(crate) fn state(conn: &Connection, study: u64) -> Result<String> {
    let (n, last): (i64, Option<String>) = conn.query_row(
        "SELECT COUNT(*), MAX(submitted_at) FROM research_encrypted WHERE study_id = ?1",
        [study as i64],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    let (shared, block): (i64, Option<i64>) = conn.query_row(
        "SELECT COUNT(*), MAX(block) FROM ledger_shared_values WHERE study_id = ?1",
        [study as i64],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    Ok(if n == 0 && shared == 0 {
        String::new()
    } else {
        format!(
            "encrypted:{n}:{}:shared:{shared}:{}",
            last.unwrap_or_default(),
            block.unwrap_or_default()
        )
    })
}
