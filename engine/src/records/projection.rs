//! The columnar projection: the current version of every ingested resource,
//! flattened to five tables (`patients`, `observations`, `conditions`,
//! `encounters`, `medications`) and read as Arrow record batches. It is the
//! source later research views are built from.
//!
//! Rows live in the metadata database so that they change in the same
//! transaction as the records they project (a bundle lands whole or not at
//! all; an erased patient's rows go with their key). Reading converts them to
//! Arrow in batches; `export_parquet` writes Parquet files.
//!
//! A patient's direct identifiers are sealed at rest with their data key
//! (`at_rest`, `sealed`): only an unlocked vault reads them, and erasing the
//! key leaves any copy of them unreadable. What research needs of them is
//! kept beside them as Safe Harbor generalizations (the birth year, ages
//! over 89 collapsed; the three-digit ZIP), and [`scan`] reads those without
//! any key. De-identification proper (pseudonyms, years of every date)
//! still happens when a study's view is built, never here.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{
    ArrayRef, Date32Builder, Float64Builder, StringBuilder, TimestampMicrosecondBuilder,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use arrow::record_batch::RecordBatch;
use rusqlite::Connection;
use rusqlite::types::{Value, ValueRef};
use serde::Serialize;

use crate::keys::keystore::SecretKey;
use crate::{Error, Result};

mod at_rest;
pub(crate) mod sealed;

pub(crate) use at_rest::Reading;

/// A column's type in the projection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// UTF-8 text.
    Text,
    /// A calendar date (days since the epoch).
    Date,
    /// An instant in UTC (microseconds since the epoch).
    Timestamp,
    /// A measured value.
    Float,
}

/// How a column is kept in SQLite.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AtRest {
    /// As it is.
    Plain,
    /// Sealed with the patient's data key: a direct identifier. Research
    /// reads it as null.
    Sealed,
    /// Sealed, with its Safe Harbor generalization beside it in plaintext,
    /// which research reads in its place.
    Generalized(Generalization),
}

/// A Safe Harbor generalization kept in plaintext beside a sealed column,
/// in a SQLite column of its own ([`Generalization::column`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Generalization {
    /// The year of a birth date, all years that may mean an age over 89
    /// collapsed into one (`birth_year`). Research reads it as the first
    /// day of that year, so Safe Harbor's `year` rule gives the same year
    /// it would give the full date.
    BirthYear,
    /// The three-digit ZIP, `000` for the restricted prefixes (`zip3`).
    Zip3,
}

/// One column of a projection table.
#[derive(Debug, Clone, Copy)]
pub struct Column {
    /// Its name, the same in SQLite and Arrow.
    pub name: &'static str,
    /// Its type.
    pub kind: Kind,
    /// Whether it may be null.
    pub nullable: bool,
    /// How SQLite keeps it.
    pub at_rest: AtRest,
}

const fn col(name: &'static str, kind: Kind, nullable: bool) -> Column {
    Column {
        name,
        kind,
        nullable,
        at_rest: AtRest::Plain,
    }
}

/// A direct identifier: nullable, sealed at rest.
const fn sealed(name: &'static str, kind: Kind) -> Column {
    Column {
        name,
        kind,
        nullable: true,
        at_rest: AtRest::Sealed,
    }
}

/// A direct identifier whose generalization research reads.
const fn generalized(name: &'static str, kind: Kind, g: Generalization) -> Column {
    Column {
        name,
        kind,
        nullable: true,
        at_rest: AtRest::Generalized(g),
    }
}

/// A projection table.
#[derive(Debug, Clone, Copy)]
pub struct Table {
    /// The Arrow/research name.
    pub name: &'static str,
    /// The SQLite table holding it.
    pub sql: &'static str,
    /// Its columns, in order.
    pub columns: &'static [Column],
}

use Generalization::{BirthYear, Zip3};
use Kind::{Date, Float, Text, Timestamp};

/// The five projection tables.
pub const TABLES: [Table; 5] = [
    Table {
        name: "patients",
        sql: "proj_patients",
        columns: &[
            col("patient_id", Text, false),
            sealed("family_name", Text),
            sealed("given_name", Text),
            generalized("birth_date", Date, BirthYear),
            col("gender", Text, true),
            col("race", Text, true),
            col("ethnicity", Text, true),
            sealed("address_line", Text),
            sealed("city", Text),
            col("state", Text, true),
            generalized("zip", Text, Zip3),
            sealed("phone", Text),
            sealed("email", Text),
            sealed("ssn", Text),
            sealed("mrn", Text),
        ],
    },
    Table {
        name: "observations",
        sql: "proj_observations",
        columns: &[
            col("id", Text, false),
            col("patient_id", Text, false),
            col("encounter_id", Text, true),
            col("loinc", Text, false),
            col("display", Text, true),
            col("value", Float, true),
            col("unit", Text, true),
            col("effective", Timestamp, true),
        ],
    },
    Table {
        name: "conditions",
        sql: "proj_conditions",
        columns: &[
            col("id", Text, false),
            col("patient_id", Text, false),
            col("encounter_id", Text, true),
            col("icd10", Text, false),
            col("display", Text, true),
            col("clinical_status", Text, true),
            col("onset", Date, true),
        ],
    },
    Table {
        name: "encounters",
        sql: "proj_encounters",
        columns: &[
            col("id", Text, false),
            col("patient_id", Text, false),
            col("class", Text, false),
            col("type_code", Text, true),
            col("type_display", Text, true),
            col("status", Text, false),
            col("start", Timestamp, true),
            col("end", Timestamp, true),
        ],
    },
    Table {
        name: "medications",
        sql: "proj_medications",
        columns: &[
            col("id", Text, false),
            col("patient_id", Text, false),
            col("encounter_id", Text, true),
            col("rxnorm", Text, false),
            col("display", Text, true),
            col("status", Text, false),
            col("authored_on", Date, true),
        ],
    },
];

/// Looks a table up by its research name.
pub fn table(name: &str) -> Result<&'static Table> {
    TABLES.iter().find(|t| t.name == name).ok_or_else(|| {
        let names: Vec<_> = TABLES.iter().map(|t| t.name).collect();
        Error::NotFound(format!(
            "no projection table `{name}` (tables: {})",
            names.join(", ")
        ))
    })
}

impl Table {
    /// The table's Arrow schema.
    pub fn schema(&self) -> SchemaRef {
        let fields: Vec<Field> = self
            .columns
            .iter()
            .map(|c| {
                let dt = match c.kind {
                    Text => DataType::Utf8,
                    Date => DataType::Date32,
                    Timestamp => DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
                    Float => DataType::Float64,
                };
                Field::new(c.name, dt, c.nullable)
            })
            .collect();
        Arc::new(Schema::new(fields))
    }
}

/// A patient, flattened. Holds direct identifiers on purpose: they are what
/// de-identification must later remove (and what is sealed at rest).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[allow(missing_docs)]
pub struct PatientRow {
    pub patient_id: String,
    pub family_name: Option<String>,
    pub given_name: Option<String>,
    pub birth_date: Option<i32>,
    pub gender: Option<String>,
    pub race: Option<String>,
    pub ethnicity: Option<String>,
    pub address_line: Option<String>,
    pub city: Option<String>,
    pub state: Option<String>,
    pub zip: Option<String>,
    pub phone: Option<String>,
    pub email: Option<String>,
    pub ssn: Option<String>,
    pub mrn: Option<String>,
}

/// An observation, flattened.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[allow(missing_docs)]
pub struct ObservationRow {
    pub id: String,
    pub patient_id: String,
    pub encounter_id: Option<String>,
    pub loinc: String,
    pub display: Option<String>,
    pub value: Option<f64>,
    pub unit: Option<String>,
    pub effective: Option<i64>,
}

/// A condition, flattened.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[allow(missing_docs)]
pub struct ConditionRow {
    pub id: String,
    pub patient_id: String,
    pub encounter_id: Option<String>,
    pub icd10: String,
    pub display: Option<String>,
    pub clinical_status: Option<String>,
    pub onset: Option<i32>,
}

/// An encounter, flattened.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[allow(missing_docs)]
pub struct EncounterRow {
    pub id: String,
    pub patient_id: String,
    pub class: String,
    pub type_code: Option<String>,
    pub type_display: Option<String>,
    pub status: String,
    pub start: Option<i64>,
    pub end: Option<i64>,
}

/// A medication request, flattened.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[allow(missing_docs)]
pub struct MedicationRow {
    pub id: String,
    pub patient_id: String,
    pub encounter_id: Option<String>,
    pub rxnorm: String,
    pub display: Option<String>,
    pub status: String,
    pub authored_on: Option<i32>,
}

/// A projection row of any table.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[allow(missing_docs)]
pub enum Row {
    Patient(PatientRow),
    Observation(ObservationRow),
    Condition(ConditionRow),
    Encounter(EncounterRow),
    Medication(MedicationRow),
}

fn t(s: &Option<String>) -> Value {
    s.clone().map_or(Value::Null, Value::Text)
}
fn s(s: &str) -> Value {
    Value::Text(s.to_owned())
}
fn i<T: Into<i64> + Copy>(v: Option<T>) -> Value {
    v.map_or(Value::Null, |v| Value::Integer(v.into()))
}

impl Row {
    /// The patient the row belongs to.
    pub fn patient_id(&self) -> &str {
        match self {
            Row::Patient(p) => &p.patient_id,
            Row::Observation(o) => &o.patient_id,
            Row::Condition(c) => &c.patient_id,
            Row::Encounter(e) => &e.patient_id,
            Row::Medication(m) => &m.patient_id,
        }
    }

    fn table(&self) -> &'static Table {
        let idx = match self {
            Row::Patient(_) => 0,
            Row::Observation(_) => 1,
            Row::Condition(_) => 2,
            Row::Encounter(_) => 3,
            Row::Medication(_) => 4,
        };
        &TABLES[idx]
    }

    /// Values in the table's column order.
    fn values(&self) -> Vec<Value> {
        match self {
            Row::Patient(p) => vec![
                s(&p.patient_id),
                t(&p.family_name),
                t(&p.given_name),
                i(p.birth_date),
                t(&p.gender),
                t(&p.race),
                t(&p.ethnicity),
                t(&p.address_line),
                t(&p.city),
                t(&p.state),
                t(&p.zip),
                t(&p.phone),
                t(&p.email),
                t(&p.ssn),
                t(&p.mrn),
            ],
            Row::Observation(o) => vec![
                s(&o.id),
                s(&o.patient_id),
                t(&o.encounter_id),
                s(&o.loinc),
                t(&o.display),
                o.value.map_or(Value::Null, Value::Real),
                t(&o.unit),
                i(o.effective),
            ],
            Row::Condition(c) => vec![
                s(&c.id),
                s(&c.patient_id),
                t(&c.encounter_id),
                s(&c.icd10),
                t(&c.display),
                t(&c.clinical_status),
                i(c.onset),
            ],
            Row::Encounter(e) => vec![
                s(&e.id),
                s(&e.patient_id),
                s(&e.class),
                t(&e.type_code),
                t(&e.type_display),
                s(&e.status),
                i(e.start),
                i(e.end),
            ],
            Row::Medication(m) => vec![
                s(&m.id),
                s(&m.patient_id),
                t(&m.encounter_id),
                s(&m.rxnorm),
                t(&m.display),
                s(&m.status),
                i(m.authored_on),
            ],
        }
    }
}

/// Inserts or replaces a row (a new version of a resource replaces its row).
/// `key` is the data key of the row's patient: what in the row is
/// identifying is sealed with it.
pub(crate) fn upsert(conn: &Connection, row: &Row, key: &SecretKey) -> Result<()> {
    let table = row.table();
    let cols: Vec<String> = at_rest::stored_columns(table)
        .iter()
        .map(|c| format!("\"{c}\""))
        .collect();
    let marks = vec!["?"; cols.len()].join(", ");
    let sql = format!(
        "INSERT OR REPLACE INTO {}({}) VALUES ({marks})",
        table.sql,
        cols.join(", ")
    );
    let today = chrono::Utc::now().date_naive();
    let values = at_rest::stored_values(table, row.values(), row.patient_id(), key, today)?;
    conn.prepare_cached(&sql)?
        .execute(rusqlite::params_from_iter(values))?;
    Ok(())
}

/// Removes every row of a patient; returns how many.
pub fn remove_patient(conn: &Connection, patient_id: &str) -> Result<usize> {
    let mut n = 0;
    for t in &TABLES {
        n += conn.execute(
            &format!("DELETE FROM {} WHERE patient_id = ?1", t.sql),
            [patient_id],
        )?;
    }
    touch(conn)?;
    Ok(n)
}

/// Every patient in the projection, by id: who can be asked to consent.
pub fn patient_ids(conn: &Connection) -> Result<Vec<String>> {
    Ok(conn
        .prepare("SELECT patient_id FROM proj_patients ORDER BY patient_id")?
        .query_map([], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?)
}

/// Counts a change of the projection: every ingest that changes a row and
/// every erasure bumps the projection's generation, in its own
/// transaction, so that a study view built before it (its digest names the
/// generation) is never used after it.
pub fn touch(conn: &Connection) -> Result<()> {
    conn.execute(
        "INSERT INTO meta (key, value) VALUES ('projection_generation', '1')
         ON CONFLICT (key) DO UPDATE SET value = CAST(CAST(value AS INTEGER) + 1 AS TEXT)",
        [],
    )?;
    Ok(())
}

/// The projection's generation (see [`touch`]).
pub fn generation(conn: &Connection) -> Result<i64> {
    use rusqlite::OptionalExtension;
    Ok(conn
        .query_row(
            "SELECT CAST(value AS INTEGER) FROM meta WHERE key = 'projection_generation'",
            [],
            |r| r.get(0),
        )
        .optional()?
        .unwrap_or(0))
}

/// Row counts per table.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Counts {
    /// `(table, rows)` in table order.
    pub tables: Vec<(String, i64)>,
}

impl Counts {
    /// The count of one table.
    pub fn get(&self, name: &str) -> i64 {
        self.tables
            .iter()
            .find(|(n, _)| n == name)
            .map_or(0, |(_, c)| *c)
    }
}

/// How many rows each table holds.
pub fn counts(conn: &Connection) -> Result<Counts> {
    let mut tables = Vec::new();
    for t in &TABLES {
        let n: i64 =
            conn.query_row(&format!("SELECT COUNT(*) FROM {}", t.sql), [], |r| r.get(0))?;
        tables.push((t.name.to_owned(), n));
    }
    Ok(Counts { tables })
}

/// Streams a table as Arrow record batches of at most `batch_rows` rows,
/// as research reads it: no key is used, sealed identifiers are null and
/// generalized ones hold their Safe Harbor generalization.
pub fn scan(
    conn: &Connection,
    table: &Table,
    batch_rows: usize,
    sink: impl FnMut(RecordBatch) -> Result<()>,
) -> Result<()> {
    scan_as(conn, table, batch_rows, &mut Reading::Research, sink)
}

/// [`scan`], reading sealed columns as `reading` says.
pub(crate) fn scan_as(
    conn: &Connection,
    table: &Table,
    batch_rows: usize,
    reading: &mut Reading<'_>,
    mut sink: impl FnMut(RecordBatch) -> Result<()>,
) -> Result<()> {
    let cols: Vec<String> = table
        .columns
        .iter()
        .map(|c| at_rest::select(c, reading))
        .collect();
    let key = table.columns[0].name;
    let sql = format!(
        "SELECT {} FROM {} ORDER BY \"{key}\"",
        cols.join(", "),
        table.sql
    );
    let mut stmt = conn.prepare(&sql)?;
    let mut rows = stmt.query([])?;
    let schema = table.schema();
    let mut builders = Builders::new(table, batch_rows);
    let patient_col = table.columns.iter().position(|c| c.name == "patient_id");
    let has_sealed = table.columns.iter().any(|c| c.at_rest != AtRest::Plain);
    while let Some(row) = rows.next()? {
        let patient = match patient_col {
            Some(i) if has_sealed => row.get::<_, String>(i)?,
            _ => String::new(),
        };
        let data_key = match reading {
            Reading::Identified(keys) if has_sealed => Some(keys(&patient)?),
            _ => None,
        };
        for (idx, c) in table.columns.iter().enumerate() {
            let stored = row.get_ref(idx)?;
            if c.at_rest == AtRest::Plain {
                builders.push(idx, c, stored)?;
            } else {
                let value = at_rest::read_cell(c, stored, &patient, data_key.as_ref())?;
                builders.push(idx, c, ValueRef::from(&value))?;
            }
        }
        builders.len += 1;
        if builders.len == batch_rows {
            sink(builders.finish(&schema)?)?;
        }
    }
    if builders.len > 0 {
        sink(builders.finish(&schema)?)?;
    }
    Ok(())
}

/// A whole table as one record batch (for tests and small cohorts).
pub fn read_table(conn: &Connection, name: &str) -> Result<RecordBatch> {
    let table = table(name)?;
    let mut batches = Vec::new();
    scan(conn, table, 65_536, |b| {
        batches.push(b);
        Ok(())
    })?;
    Ok(arrow::compute::concat_batches(&table.schema(), &batches)?)
}

enum Builder {
    Text(StringBuilder),
    Date(Date32Builder),
    Timestamp(TimestampMicrosecondBuilder),
    Float(Float64Builder),
}

struct Builders {
    cols: Vec<Builder>,
    len: usize,
}

impl Builders {
    fn new(table: &Table, capacity: usize) -> Self {
        let cols = table
            .columns
            .iter()
            .map(|c| match c.kind {
                Text => Builder::Text(StringBuilder::with_capacity(capacity, capacity * 16)),
                Date => Builder::Date(Date32Builder::with_capacity(capacity)),
                Timestamp => Builder::Timestamp(
                    TimestampMicrosecondBuilder::with_capacity(capacity).with_timezone("UTC"),
                ),
                Float => Builder::Float(Float64Builder::with_capacity(capacity)),
            })
            .collect();
        Builders { cols, len: 0 }
    }

    fn push(&mut self, idx: usize, c: &Column, v: ValueRef<'_>) -> Result<()> {
        let bad = || {
            Error::Arrow(format!(
                "column `{}` holds a value of the wrong type",
                c.name
            ))
        };
        match (&mut self.cols[idx], v) {
            (Builder::Text(b), ValueRef::Null) => b.append_null(),
            (Builder::Text(b), ValueRef::Text(t)) => {
                b.append_value(std::str::from_utf8(t).map_err(|_| bad())?)
            }
            (Builder::Date(b), ValueRef::Null) => b.append_null(),
            (Builder::Date(b), ValueRef::Integer(n)) => {
                b.append_value(i32::try_from(n).map_err(|_| bad())?)
            }
            (Builder::Timestamp(b), ValueRef::Null) => b.append_null(),
            (Builder::Timestamp(b), ValueRef::Integer(n)) => b.append_value(n),
            (Builder::Float(b), ValueRef::Null) => b.append_null(),
            (Builder::Float(b), ValueRef::Real(x)) => b.append_value(x),
            (Builder::Float(b), ValueRef::Integer(n)) => b.append_value(n as f64),
            _ => return Err(bad()),
        }
        Ok(())
    }

    fn finish(&mut self, schema: &SchemaRef) -> Result<RecordBatch> {
        let arrays: Vec<ArrayRef> = self
            .cols
            .iter_mut()
            .map(|b| -> ArrayRef {
                match b {
                    Builder::Text(b) => Arc::new(b.finish()),
                    Builder::Date(b) => Arc::new(b.finish()),
                    Builder::Timestamp(b) => Arc::new(b.finish()),
                    Builder::Float(b) => Arc::new(b.finish()),
                }
            })
            .collect();
        self.len = 0;
        Ok(RecordBatch::try_new(schema.clone(), arrays)?)
    }
}

/// One exported file.
#[derive(Debug, Clone, Serialize)]
pub struct Exported {
    /// The table.
    pub table: String,
    /// Rows written.
    pub rows: usize,
    /// Where.
    pub path: PathBuf,
}

/// Whether a read of the projection includes patients' direct identifiers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Identifiers {
    /// Sealed columns are null, generalized ones generalized (as research
    /// reads them).
    Omitted,
    /// Sealed columns are opened with each patient's data key.
    Included,
}

/// Writes every table to `<dir>/<table>.parquet` (Snappy-compressed), each
/// file replaced atomically, reading sealed columns as `reading` says.
pub(crate) fn export_parquet(
    conn: &Connection,
    dir: &Path,
    reading: &mut Reading<'_>,
) -> Result<Vec<Exported>> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io("creating", dir, e))?;
    let mut out = Vec::new();
    for table in &TABLES {
        let path = dir.join(format!("{}.parquet", table.name));
        let tmp = crate::storage::fsutil::temp_in(dir)?;
        let mut writer = parquet::arrow::ArrowWriter::try_new(
            tmp.as_file()
                .try_clone()
                .map_err(|e| Error::io("opening", tmp.path().to_owned(), e))?,
            table.schema(),
            Some(crate::storage::tabular::parquet_properties()),
        )?;
        let mut rows = 0;
        scan_as(conn, table, 65_536, reading, |b| {
            rows += b.num_rows();
            writer.write(&b)?;
            Ok(())
        })?;
        writer.close()?;
        crate::storage::fsutil::persist(tmp, &path, true)?;
        out.push(Exported {
            table: table.name.to_owned(),
            rows,
            path,
        });
    }
    Ok(out)
}
