//! The columnar projection: the current version of every ingested resource,
//! flattened to five tables (`patients`, `observations`, `conditions`,
//! `encounters`, `medications`) and read as Arrow record batches. It is the
//! source later research views are built from.
//!
//! Rows live in the metadata database so that they change in the same
//! transaction as the records they project (a bundle lands whole or not at
//! all; an erased patient's rows go with their key). Reading converts them to
//! Arrow in batches; `export_parquet` writes Parquet files. The projection
//! still holds identifiers: de-identification happens when a study's view is
//! built, never here.

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

use crate::{Error, Result};

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

/// One column of a projection table.
#[derive(Debug, Clone, Copy)]
pub struct Column {
    /// Its name, the same in SQLite and Arrow.
    pub name: &'static str,
    /// Its type.
    pub kind: Kind,
    /// Whether it may be null.
    pub nullable: bool,
}

const fn col(name: &'static str, kind: Kind, nullable: bool) -> Column {
    Column {
        name,
        kind,
        nullable,
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

use Kind::{Date, Float, Text, Timestamp};

/// The five projection tables.
pub const TABLES: [Table; 5] = [
    Table {
        name: "patients",
        sql: "proj_patients",
        columns: &[
            col("patient_id", Text, false),
            col("family_name", Text, true),
            col("given_name", Text, true),
            col("birth_date", Date, true),
            col("gender", Text, true),
            col("race", Text, true),
            col("ethnicity", Text, true),
            col("address_line", Text, true),
            col("city", Text, true),
            col("state", Text, true),
            col("zip", Text, true),
            col("phone", Text, true),
            col("email", Text, true),
            col("ssn", Text, true),
            col("mrn", Text, true),
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
/// de-identification must later remove.
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
pub fn upsert(conn: &Connection, row: &Row) -> Result<()> {
    let table = row.table();
    let cols: Vec<String> = table
        .columns
        .iter()
        .map(|c| format!("\"{}\"", c.name))
        .collect();
    let marks = vec!["?"; cols.len()].join(", ");
    let sql = format!(
        "INSERT OR REPLACE INTO {}({}) VALUES ({marks})",
        table.sql,
        cols.join(", ")
    );
    conn.prepare_cached(&sql)?
        .execute(rusqlite::params_from_iter(row.values()))?;
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

/// Streams a table as Arrow record batches of at most `batch_rows` rows.
pub fn scan(
    conn: &Connection,
    table: &Table,
    batch_rows: usize,
    mut sink: impl FnMut(RecordBatch) -> Result<()>,
) -> Result<()> {
    let cols: Vec<String> = table
        .columns
        .iter()
        .map(|c| format!("\"{}\"", c.name))
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
    while let Some(row) = rows.next()? {
        for (idx, c) in table.columns.iter().enumerate() {
            builders.push(idx, c, row.get_ref(idx)?)?;
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

/// Writes every table to `<dir>/<table>.parquet` (Snappy-compressed), each
/// file replaced atomically.
pub(crate) fn export_parquet(conn: &Connection, dir: &Path) -> Result<Vec<Exported>> {
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
        scan(conn, table, 65_536, |b| {
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
