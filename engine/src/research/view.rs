//! A study's research view: the consented patients' rows of the study's
//! tables, de-identified by Safe Harbor with the study's own pseudonyms,
//! cut to the approved columns.
//!
//! The view is rebuilt whenever the set of consenting patients changes
//! (a consent given, withdrawn or expired), the projection changes (every
//! ingest and erasure moves its generation) or an encrypted submission
//! arrives, so every query sees exactly the patients whose consent covers
//! the study at that moment, with their records as they are. Between
//! changes it is kept as Parquet under `research/studies/<id>/view/<digest>/`,
//! written aside and renamed into place in one step.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{Array, AsArray, BooleanArray, RecordBatch};
use cohort_anonymizer::deid::{self, PseudonymKey};
use cohort_ledger_bridge::alloy::primitives::Address;
use cohort_query_planner::{TableProvider, sources};
use rusqlite::Connection;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::consenting::Consenting;
use super::study::StudyFile;
use crate::{Error, Result, records::projection, records::safe_harbor};

/// The research view of one study at one consenting set.
pub struct View {
    /// The digest of the consenting set it was built from.
    pub digest: String,
    /// Its tables, as the planner reads them.
    pub tables: HashMap<String, Arc<dyn TableProvider>>,
    /// Rows per table.
    pub rows: HashMap<String, usize>,
    /// The tables' rows.
    pub batches: HashMap<String, RecordBatch>,
    /// Each consenting patient's pseudonym, to their account.
    pub accounts: HashMap<String, Address>,
}

#[derive(Serialize, Deserialize)]
struct Manifest {
    digest: String,
    tables: Vec<String>,
}

/// Each encrypted column's stored ciphertexts, by patient id.
pub type EncryptedCells = HashMap<String, HashMap<String, Vec<u8>>>;

/// The digest naming a consenting set of a study file, and the state of its
/// encrypted submissions (a new submission makes a new view).
pub fn digest(file: &StudyFile, consenting: &[Consenting], encrypted_state: &str) -> String {
    let mut h = Sha256::new();
    h.update(file.scope_hash().as_slice());
    h.update(encrypted_state.as_bytes());
    let mut ids: Vec<&str> = consenting.iter().map(|c| c.patient_id.as_str()).collect();
    ids.sort_unstable();
    for id in ids {
        h.update(id.as_bytes());
        h.update(b"\n");
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// The study's tables with the view's schema and no rows: what a query is
/// planned and costed over before the reservation, so that planning, a
/// refusal and `EXPLAIN PRIVACY` read no patient's row.
pub fn schema_tables(
    conn: &Connection,
    file: &StudyFile,
) -> Result<HashMap<String, Arc<dyn TableProvider>>> {
    let key = PseudonymKey::derive(&[0; 32], "schema only");
    let mut tables = HashMap::new();
    for (name, batch) in build(conn, file, &key, None, today(), &Default::default())? {
        tables.insert(name, sources::batches(batch.schema(), vec![batch])?);
    }
    Ok(tables)
}

/// The date Safe Harbor computes ages at.
pub(crate) fn today() -> chrono::NaiveDate {
    chrono::Utc::now().date_naive()
}

/// Study `id`'s view over `consenting`: the one in `cache` if it was built
/// for this set, else the one stored on disk for it, else built (one build
/// at a time: `building`).
#[allow(clippy::too_many_arguments)]
pub(crate) fn obtain(
    conn: &Connection,
    dir: &crate::DataDir,
    id: u64,
    file: &StudyFile,
    key: &PseudonymKey,
    consenting: &[Consenting],
    engine: cohort_ledger_bridge::alloy::primitives::Address,
    cache: &std::sync::Mutex<HashMap<u64, Arc<View>>>,
    building: &std::sync::Mutex<()>,
) -> Result<Arc<View>> {
    let _one = building.lock().expect("view build lock");
    // Fail closed: only the consenting patients whose current data key is
    // sealed to the engine's account (at consent; deleted at withdrawal).
    // The projection itself is a plaintext copy the custodian holds, so
    // this is a gate the engine keeps, not a decryption it needs.
    let engine = format!("{engine:#x}");
    let mut keyed = Vec::with_capacity(consenting.len());
    for c in consenting {
        if crate::keys::data_keys::research_may_read(conn, &c.patient_id, &engine)? {
            keyed.push(c.clone());
        }
    }
    let consenting = keyed.as_slice();
    // The view follows the data: a new ingest or an erasure (the
    // projection's generation) and a new encrypted submission make a new one.
    let state = format!(
        "{}|projection:{}",
        super::encryption::state(conn, id)?,
        projection::generation(conn)?
    );
    let digest = digest(file, consenting, &state);
    if let Some(v) = cache.lock().expect("views lock").get(&id)
        && v.digest == digest
    {
        return Ok(Arc::clone(v));
    }
    let path = dir
        .root()
        .join("research")
        .join("studies")
        .join(id.to_string())
        .join("view");
    let mut cells = EncryptedCells::new();
    for column in super::encryption::columns(file) {
        cells.insert(
            column.column.clone(),
            super::encryption::cells(conn, id, &column.column, consenting)?,
        );
    }
    let built = Arc::new(load_or_build(
        conn,
        &path,
        file,
        key,
        consenting,
        today(),
        &cells,
        digest,
    )?);
    cache
        .lock()
        .expect("views lock")
        .insert(id, Arc::clone(&built));
    Ok(built)
}

/// The view of `file` over `consenting`, from `dir` when it was built
/// for this set already (`digest`, from [`digest`]), else built from the
/// projection and stored there.
#[allow(clippy::too_many_arguments)]
pub fn load_or_build(
    conn: &Connection,
    dir: &Path,
    file: &StudyFile,
    key: &PseudonymKey,
    consenting: &[Consenting],
    today: chrono::NaiveDate,
    encrypted: &EncryptedCells,
    digest: String,
) -> Result<View> {
    let accounts = consenting
        .iter()
        .map(|c| (key.pseudonym(&c.patient_id), c.address))
        .collect();
    let batches = match stored(dir, &digest)? {
        Some(batches) => batches,
        None => {
            let ids: HashSet<&str> = consenting.iter().map(|c| c.patient_id.as_str()).collect();
            let batches = build(conn, file, key, Some(&ids), today, encrypted)?;
            store(dir, &digest, &batches)?;
            batches
        }
    };
    let mut tables = HashMap::new();
    let mut rows = HashMap::new();
    let mut by_name = HashMap::new();
    for (name, batch) in batches {
        rows.insert(name.clone(), batch.num_rows());
        tables.insert(
            name.clone(),
            sources::batches(batch.schema(), vec![batch.clone()])?,
        );
        by_name.insert(name, batch);
    }
    Ok(View {
        digest,
        tables,
        rows,
        batches: by_name,
        accounts,
    })
}

/// The view's tables: every row of the projection when `only` is `None`
/// (to check a proposal's columns), else the rows of those patients.
pub fn build(
    conn: &Connection,
    file: &StudyFile,
    key: &PseudonymKey,
    only: Option<&HashSet<&str>>,
    today: chrono::NaiveDate,
    encrypted: &EncryptedCells,
) -> Result<Vec<(String, RecordBatch)>> {
    if file.terms.data_model == super::study::DataModel::Omop {
        let dates = match file.terms.date_shift_days {
            Some(days) => super::omop::Dates::Shift(days),
            None => super::omop::Dates::SafeHarbor,
        };
        return super::omop::build(conn, &file.scope.tables, key, only, today, dates);
    }
    let mut out = Vec::new();
    for (name, table) in &file.scope.tables {
        projection::table(name).map_err(|_| {
            Error::Invalid(format!(
                "study table `{name}` is not a table of the research projection \
                 (patients, observations, conditions, encounters, medications)"
            ))
        })?;
        let batch = match only {
            Some(ids) => {
                let all = projection::read_table(conn, name)?;
                keep_patients(&all, ids)?
            }
            None => RecordBatch::new_empty(projection::table(name)?.schema()),
        };
        let (safe, _) = deid::deidentify(&batch, &safe_harbor::policy(name, today)?, key)?;
        let safe = with_encrypted(&batch, safe, table, encrypted)?;
        let schema = safe.schema();
        let mut indices = Vec::new();
        for column in table.columns.keys() {
            let index = schema.index_of(column).map_err(|_| {
                let available: Vec<&str> =
                    schema.fields().iter().map(|f| f.name().as_str()).collect();
                Error::Invalid(format!(
                    "study column `{name}.{column}` is not in the research view: Safe Harbor \
                     removes direct identifiers; `{name}` offers {}",
                    available.join(", ")
                ))
            })?;
            indices.push(index);
        }
        let projected = safe
            .project(&indices)
            .map_err(|e| Error::Arrow(e.to_string()))?;
        out.push((name.clone(), projected));
    }
    Ok(out)
}

/// Appends the table's encrypted columns to its de-identified rows: each
/// row's patient's validated ciphertext, or NULL where none was submitted.
/// Safe Harbor keeps rows in order, so `raw` (with real patient ids) and
/// `safe` align row by row.
fn with_encrypted(
    raw: &RecordBatch,
    safe: RecordBatch,
    table: &cohort_query_planner::policy::TablePolicy,
    encrypted: &EncryptedCells,
) -> Result<RecordBatch> {
    let columns: Vec<&String> = table
        .columns
        .iter()
        .filter(|(_, c)| c.encrypted.is_some())
        .map(|(name, _)| name)
        .collect();
    if columns.is_empty() {
        return Ok(safe);
    }
    let ids = raw
        .column_by_name("patient_id")
        .ok_or_else(|| Error::Arrow("a projection table without patient_id".into()))?
        .as_string::<i32>()
        .clone();
    let mut fields: Vec<arrow::datatypes::FieldRef> =
        safe.schema().fields().iter().cloned().collect();
    let mut arrays = safe.columns().to_vec();
    for name in columns {
        let cells = encrypted.get(name.as_str());
        let array: arrow::array::BinaryArray = (0..ids.len())
            .map(|i| cells.and_then(|c| c.get(ids.value(i))).map(Vec::as_slice))
            .collect();
        fields.push(Arc::new(arrow::datatypes::Field::new(
            name.as_str(),
            arrow::datatypes::DataType::Binary,
            true,
        )));
        arrays.push(Arc::new(array));
    }
    RecordBatch::try_new(Arc::new(arrow::datatypes::Schema::new(fields)), arrays)
        .map_err(|e| Error::Arrow(e.to_string()))
}

/// The rows of `batch` whose `patient_id` is in `ids`.
fn keep_patients(batch: &RecordBatch, ids: &HashSet<&str>) -> Result<RecordBatch> {
    let column = batch
        .column_by_name("patient_id")
        .ok_or_else(|| Error::Arrow("a projection table without patient_id".into()))?;
    let column = column.as_string::<i32>();
    let mask: BooleanArray = (0..column.len())
        .map(|i| Some(column.is_valid(i) && ids.contains(column.value(i))))
        .collect();
    arrow::compute::filter_record_batch(batch, &mask).map_err(|e| Error::Arrow(e.to_string()))
}

/// Where the view of `digest` is kept: a directory of its own, named by
/// the digest, so a reader never sees tables of one consenting set under
/// the manifest of another.
fn view_dir(dir: &Path, digest: &str) -> PathBuf {
    dir.join(digest)
}

fn stored(dir: &Path, digest: &str) -> Result<Option<Vec<(String, RecordBatch)>>> {
    let dir = view_dir(dir, digest);
    let Ok(text) = std::fs::read_to_string(dir.join("manifest.json")) else {
        return Ok(None);
    };
    let Ok(manifest) = serde_json::from_str::<Manifest>(&text) else {
        return Ok(None);
    };
    if manifest.digest != digest {
        return Ok(None);
    }
    let mut out = Vec::new();
    for name in manifest.tables {
        let file = dir.join(format!("{name}.parquet"));
        if !file.exists() {
            return Ok(None);
        }
        out.push((name, crate::storage::tabular::read(&file)?));
    }
    Ok(Some(out))
}

/// Writes the view into a staging directory of this process, then renames
/// it to its digest's directory in one step. Two processes building the
/// same view both succeed (the second finds the first's in place); views
/// of earlier digests are removed, except the newest one before it, which
/// another process may still be reading.
fn store(dir: &Path, digest: &str, batches: &[(String, RecordBatch)]) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io("creating", dir, e))?;
    let staging = dir.join(format!(
        ".building-{}-{}",
        std::process::id(),
        crate::budget::new_query_id()
    ));
    std::fs::create_dir_all(&staging).map_err(|e| Error::io("creating", &staging, e))?;
    for (name, batch) in batches {
        crate::storage::tabular::write(&staging.join(format!("{name}.parquet")), batch)?;
    }
    let manifest = Manifest {
        digest: digest.to_string(),
        tables: batches.iter().map(|(n, _)| n.clone()).collect(),
    };
    crate::storage::fsutil::write_atomic(
        &staging.join("manifest.json"),
        serde_json::to_string(&manifest)
            .expect("a manifest serialises")
            .as_bytes(),
    )?;
    let target = view_dir(dir, digest);
    if std::fs::rename(&staging, &target).is_err() {
        // Another process put the same view in place first.
        let _ = std::fs::remove_dir_all(&staging);
        if !target.join("manifest.json").exists() {
            return Err(Error::Invalid(format!(
                "the view could not be put in place at {}",
                target.display()
            )));
        }
    }
    // Earlier views: all but the newest other one go.
    if let Ok(entries) = std::fs::read_dir(dir) {
        let mut others: Vec<(std::time::SystemTime, PathBuf)> = entries
            .flatten()
            .filter(|e| e.path() != target && e.path().is_dir())
            .filter(|e| !e.file_name().to_string_lossy().starts_with(".building-"))
            .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
            .collect();
        others.sort();
        others.pop();
        for (_, old) in others {
            let _ = std::fs::remove_dir_all(old);
        }
    }
    Ok(())
}
