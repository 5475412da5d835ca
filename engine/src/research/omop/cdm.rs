//! The OMOP CDM 5.4 tables a study view holds, with their columns and types
//! as the specification gives them (checked against an independent
//! definition, `pyomop`'s, in `cli/tests/it/omop.rs`), and a builder that
//! fills a table by column name so a mapping sets only what it has.
//!
//! Types: CDM `integer` (ids and concept ids) is `Int64` here, since local
//! ids and per-study person ids need more than 31 bits; `varchar` is
//! `Utf8`; `date` is `Date32`; `datetime` is a timestamp without zone;
//! `float` / `numeric` are `Float64`.

use std::sync::Arc;

use arrow::array::{
    ArrayRef, Date32Builder, Float64Builder, Int64Builder, RecordBatch, StringBuilder,
    TimestampMicrosecondBuilder,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use chrono::{NaiveDate, NaiveDateTime};

use crate::{Error, Result};

/// A CDM column type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ty {
    /// `integer` / `bigint`.
    Int,
    /// `varchar`.
    Text,
    /// `date`.
    Date,
    /// `datetime`.
    DateTime,
    /// `float` / `numeric`.
    Num,
}

impl Ty {
    /// The type's name in the CDM's terms.
    pub fn category(self) -> &'static str {
        match self {
            Ty::Int => "integer",
            Ty::Text => "text",
            Ty::Date => "date",
            Ty::DateTime => "datetime",
            Ty::Num => "numeric",
        }
    }

    fn data_type(self) -> DataType {
        match self {
            Ty::Int => DataType::Int64,
            Ty::Text => DataType::Utf8,
            Ty::Date => DataType::Date32,
            Ty::DateTime => DataType::Timestamp(TimeUnit::Microsecond, None),
            Ty::Num => DataType::Float64,
        }
    }
}

/// One column: name, type, whether the CDM requires it (NOT NULL).
pub type Column = (&'static str, Ty, bool);

/// A CDM table: its name and columns in the specification's order.
pub struct Table {
    /// The CDM name.
    pub name: &'static str,
    /// The columns.
    pub columns: &'static [Column],
}

use Ty::{Date, DateTime, Int, Num, Text};

/// The clinical tables of a study view.
pub const CLINICAL: [Table; 8] = [
    Table {
        name: "person",
        columns: &[
            ("person_id", Int, true),
            ("gender_concept_id", Int, true),
            ("year_of_birth", Int, true),
            ("month_of_birth", Int, false),
            ("day_of_birth", Int, false),
            ("birth_datetime", DateTime, false),
            ("race_concept_id", Int, true),
            ("ethnicity_concept_id", Int, true),
            ("location_id", Int, false),
            ("provider_id", Int, false),
            ("care_site_id", Int, false),
            ("person_source_value", Text, false),
            ("gender_source_value", Text, false),
            ("gender_source_concept_id", Int, false),
            ("race_source_value", Text, false),
            ("race_source_concept_id", Int, false),
            ("ethnicity_source_value", Text, false),
            ("ethnicity_source_concept_id", Int, false),
        ],
    },
    Table {
        name: "observation_period",
        columns: &[
            ("observation_period_id", Int, true),
            ("person_id", Int, true),
            ("observation_period_start_date", Date, true),
            ("observation_period_end_date", Date, true),
            ("period_type_concept_id", Int, true),
        ],
    },
    Table {
        name: "visit_occurrence",
        columns: &[
            ("visit_occurrence_id", Int, true),
            ("person_id", Int, true),
            ("visit_concept_id", Int, true),
            ("visit_start_date", Date, true),
            ("visit_start_datetime", DateTime, false),
            ("visit_end_date", Date, true),
            ("visit_end_datetime", DateTime, false),
            ("visit_type_concept_id", Int, true),
            ("provider_id", Int, false),
            ("care_site_id", Int, false),
            ("visit_source_value", Text, false),
            ("visit_source_concept_id", Int, false),
            ("admitted_from_concept_id", Int, false),
            ("admitted_from_source_value", Text, false),
            ("discharged_to_concept_id", Int, false),
            ("discharged_to_source_value", Text, false),
            ("preceding_visit_occurrence_id", Int, false),
        ],
    },
    Table {
        name: "condition_occurrence",
        columns: &[
            ("condition_occurrence_id", Int, true),
            ("person_id", Int, true),
            ("condition_concept_id", Int, true),
            ("condition_start_date", Date, true),
            ("condition_start_datetime", DateTime, false),
            ("condition_end_date", Date, false),
            ("condition_end_datetime", DateTime, false),
            ("condition_type_concept_id", Int, true),
            ("condition_status_concept_id", Int, false),
            ("stop_reason", Text, false),
            ("provider_id", Int, false),
            ("visit_occurrence_id", Int, false),
            ("visit_detail_id", Int, false),
            ("condition_source_value", Text, false),
            ("condition_source_concept_id", Int, false),
            ("condition_status_source_value", Text, false),
        ],
    },
    Table {
        name: "drug_exposure",
        columns: &[
            ("drug_exposure_id", Int, true),
            ("person_id", Int, true),
            ("drug_concept_id", Int, true),
            ("drug_exposure_start_date", Date, true),
            ("drug_exposure_start_datetime", DateTime, false),
            ("drug_exposure_end_date", Date, true),
            ("drug_exposure_end_datetime", DateTime, false),
            ("verbatim_end_date", Date, false),
            ("drug_type_concept_id", Int, true),
            ("stop_reason", Text, false),
            ("refills", Int, false),
            ("quantity", Num, false),
            ("days_supply", Int, false),
            ("sig", Text, false),
            ("route_concept_id", Int, false),
            ("lot_number", Text, false),
            ("provider_id", Int, false),
            ("visit_occurrence_id", Int, false),
            ("visit_detail_id", Int, false),
            ("drug_source_value", Text, false),
            ("drug_source_concept_id", Int, false),
            ("route_source_value", Text, false),
            ("dose_unit_source_value", Text, false),
        ],
    },
    Table {
        name: "measurement",
        columns: &[
            ("measurement_id", Int, true),
            ("person_id", Int, true),
            ("measurement_concept_id", Int, true),
            ("measurement_date", Date, true),
            ("measurement_datetime", DateTime, false),
            ("measurement_time", Text, false),
            ("measurement_type_concept_id", Int, true),
            ("operator_concept_id", Int, false),
            ("value_as_number", Num, false),
            ("value_as_concept_id", Int, false),
            ("unit_concept_id", Int, false),
            ("range_low", Num, false),
            ("range_high", Num, false),
            ("provider_id", Int, false),
            ("visit_occurrence_id", Int, false),
            ("visit_detail_id", Int, false),
            ("measurement_source_value", Text, false),
            ("measurement_source_concept_id", Int, false),
            ("unit_source_value", Text, false),
            ("unit_source_concept_id", Int, false),
            ("value_source_value", Text, false),
            ("measurement_event_id", Int, false),
            ("meas_event_field_concept_id", Int, false),
        ],
    },
    Table {
        name: "observation",
        columns: &[
            ("observation_id", Int, true),
            ("person_id", Int, true),
            ("observation_concept_id", Int, true),
            ("observation_date", Date, true),
            ("observation_datetime", DateTime, false),
            ("observation_type_concept_id", Int, true),
            ("value_as_number", Num, false),
            ("value_as_string", Text, false),
            ("value_as_concept_id", Int, false),
            ("qualifier_concept_id", Int, false),
            ("unit_concept_id", Int, false),
            ("provider_id", Int, false),
            ("visit_occurrence_id", Int, false),
            ("visit_detail_id", Int, false),
            ("observation_source_value", Text, false),
            ("observation_source_concept_id", Int, false),
            ("unit_source_value", Text, false),
            ("qualifier_source_value", Text, false),
            ("value_source_value", Text, false),
            ("observation_event_id", Int, false),
            ("obs_event_field_concept_id", Int, false),
        ],
    },
    Table {
        name: "death",
        columns: &[
            ("person_id", Int, true),
            ("death_date", Date, true),
            ("death_datetime", DateTime, false),
            ("death_type_concept_id", Int, false),
            ("cause_concept_id", Int, false),
            ("cause_source_value", Text, false),
            ("cause_source_concept_id", Int, false),
        ],
    },
];

/// The standardized vocabulary tables cohort publishes (public tables).
pub const VOCABULARY: [Table; 4] = [
    Table {
        name: "concept",
        columns: &[
            ("concept_id", Int, true),
            ("concept_name", Text, true),
            ("domain_id", Text, true),
            ("vocabulary_id", Text, true),
            ("concept_class_id", Text, true),
            ("standard_concept", Text, false),
            ("concept_code", Text, true),
            ("valid_start_date", Date, true),
            ("valid_end_date", Date, true),
            ("invalid_reason", Text, false),
        ],
    },
    Table {
        name: "concept_ancestor",
        columns: &[
            ("ancestor_concept_id", Int, true),
            ("descendant_concept_id", Int, true),
            ("min_levels_of_separation", Int, true),
            ("max_levels_of_separation", Int, true),
        ],
    },
    Table {
        name: "concept_relationship",
        columns: &[
            ("concept_id_1", Int, true),
            ("concept_id_2", Int, true),
            ("relationship_id", Text, true),
            ("valid_start_date", Date, true),
            ("valid_end_date", Date, true),
            ("invalid_reason", Text, false),
        ],
    },
    Table {
        name: "vocabulary",
        columns: &[
            ("vocabulary_id", Text, true),
            ("vocabulary_name", Text, true),
            ("vocabulary_reference", Text, false),
            ("vocabulary_version", Text, false),
            ("vocabulary_concept_id", Int, true),
        ],
    },
];

/// Looks up a clinical or vocabulary table by name.
pub fn table(name: &str) -> Option<&'static Table> {
    CLINICAL
        .iter()
        .chain(VOCABULARY.iter())
        .find(|t| t.name == name)
}

impl Table {
    /// The table's Arrow schema.
    pub fn schema(&self) -> SchemaRef {
        Arc::new(Schema::new(
            self.columns
                .iter()
                .map(|(name, ty, required)| Field::new(*name, ty.data_type(), !required))
                .collect::<Vec<_>>(),
        ))
    }
}

/// A cell value.
#[derive(Clone, Debug)]
pub enum Value {
    /// An integer.
    Int(i64),
    /// Text.
    Text(String),
    /// A date.
    Date(NaiveDate),
    /// A date and time.
    DateTime(NaiveDateTime),
    /// A number.
    Num(f64),
}

/// Rows of one table, filled by column name; unset cells are NULL.
pub struct Rows {
    table: &'static Table,
    cells: Vec<Vec<Option<Value>>>,
    rows: usize,
}

impl Rows {
    /// An empty table.
    pub fn new(table: &'static Table) -> Rows {
        Rows {
            table,
            cells: vec![Vec::new(); table.columns.len()],
            rows: 0,
        }
    }

    /// Adds one row from `(column, value)` pairs.
    pub fn push(&mut self, values: &[(&str, Option<Value>)]) {
        for column in &mut self.cells {
            column.push(None);
        }
        for (name, value) in values {
            let index = self
                .table
                .columns
                .iter()
                .position(|(c, _, _)| c == name)
                .unwrap_or_else(|| panic!("{} has no column {name}", self.table.name));
            self.cells[index][self.rows] = value.clone();
        }
        self.rows += 1;
    }

    /// The rows as a batch of the table's schema; a required cell left
    /// empty is an error naming it.
    pub fn finish(self) -> Result<RecordBatch> {
        let mut arrays: Vec<ArrayRef> = Vec::with_capacity(self.cells.len());
        for ((name, ty, required), cells) in self.table.columns.iter().zip(self.cells) {
            if *required && cells.iter().any(Option::is_none) {
                return Err(Error::Invalid(format!(
                    "OMOP {}.{name} is required and a mapped row has none",
                    self.table.name
                )));
            }
            let mismatch = || {
                Error::Invalid(format!(
                    "OMOP {}.{name}: a value of another type",
                    self.table.name
                ))
            };
            let array: ArrayRef = match ty {
                Ty::Int => {
                    let mut b = Int64Builder::with_capacity(cells.len());
                    for cell in cells {
                        match cell {
                            None => b.append_null(),
                            Some(Value::Int(v)) => b.append_value(v),
                            Some(_) => return Err(mismatch()),
                        }
                    }
                    Arc::new(b.finish())
                }
                Ty::Text => {
                    let mut b = StringBuilder::with_capacity(cells.len(), cells.len() * 8);
                    for cell in cells {
                        match cell {
                            None => b.append_null(),
                            Some(Value::Text(v)) => b.append_value(v),
                            Some(_) => return Err(mismatch()),
                        }
                    }
                    Arc::new(b.finish())
                }
                Ty::Date => {
                    let mut b = Date32Builder::with_capacity(cells.len());
                    for cell in cells {
                        match cell {
                            None => b.append_null(),
                            Some(Value::Date(d)) => b.append_value(epoch_days(d)),
                            Some(_) => return Err(mismatch()),
                        }
                    }
                    Arc::new(b.finish())
                }
                Ty::DateTime => {
                    let mut b = TimestampMicrosecondBuilder::with_capacity(cells.len());
                    for cell in cells {
                        match cell {
                            None => b.append_null(),
                            Some(Value::DateTime(t)) => {
                                b.append_value(t.and_utc().timestamp_micros())
                            }
                            Some(_) => return Err(mismatch()),
                        }
                    }
                    Arc::new(b.finish())
                }
                Ty::Num => {
                    let mut b = Float64Builder::with_capacity(cells.len());
                    for cell in cells {
                        match cell {
                            None => b.append_null(),
                            Some(Value::Num(v)) => b.append_value(v),
                            Some(_) => return Err(mismatch()),
                        }
                    }
                    Arc::new(b.finish())
                }
            };
            arrays.push(array);
        }
        RecordBatch::try_new(self.table.schema(), arrays).map_err(|e| Error::Arrow(e.to_string()))
    }
}

/// Days since 1970-01-01.
fn epoch_days(date: NaiveDate) -> i32 {
    let epoch = NaiveDate::from_ymd_opt(1970, 1, 1).expect("a valid date");
    (date - epoch).num_days() as i32
}
