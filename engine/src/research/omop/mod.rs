//! The OMOP CDM 5.4 view of a study (`data_model = "omop"`): the consenting
//! patients' records as `person`, `observation_period`, `visit_occurrence`,
//! `condition_occurrence`, `drug_exposure`, `measurement`, `observation`
//! and `death`, with the vocabulary beside them as public tables.
//!
//! The mapping follows HL7's FHIR-to-OMOP implementation guide where it has
//! a rule and ETL-Synthea's conventions where it is silent; every choice is
//! in docs/OMOP.md. De-identification is the study view's: `person_id` and
//! every record id are derived from the study's keyed pseudonyms (so they
//! differ between studies and still join within one), no source identifier
//! is carried (`person_source_value` is NULL), and dates are either Safe
//! Harbor years (each date becomes 1 January of its year, datetimes NULL)
//! or shifted by a keyed per-person offset the study declares
//! (`date_shift_days`), which keeps intervals within a person. Birth years
//! of people over 89 collapse into one, in both modes.

pub mod cdm;
pub mod vocabulary;

/// An OMOP study file: every clinical table, concept columns with the
/// vocabulary as their public domains, OHDSI's small-cell rule.
pub const EXAMPLE_STUDY: &str = include_str!("example_study.toml");

use std::collections::{BTreeMap, HashMap, HashSet};

use arrow::array::{
    Array, AsArray, Date32Array, Float64Array, RecordBatch, StringArray, TimestampMicrosecondArray,
};
use chrono::{Datelike, Duration, NaiveDate, NaiveDateTime};
use cohort_anonymizer::deid::{MAX_AGE, PseudonymKey};
use rusqlite::Connection;

use self::cdm::{Rows, Value};
use crate::records::projection;
use crate::{Error, Result};

/// How the view's dates are de-identified.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dates {
    /// Safe Harbor: only the year of a date is kept (as 1 January).
    SafeHarbor,
    /// Each person's dates move by the same keyed offset of at most this
    /// many days; datetimes are kept, shifted.
    Shift(u32),
}

/// The OMOP tables `tables` names (each cut to its approved columns) for
/// the patients in `only`, or with no rows when `only` is `None` (the
/// schema a query is planned over).
pub fn build(
    conn: &Connection,
    tables: &BTreeMap<String, cohort_query_planner::policy::TablePolicy>,
    key: &PseudonymKey,
    only: Option<&HashSet<&str>>,
    today: NaiveDate,
    dates: Dates,
) -> Result<Vec<(String, RecordBatch)>> {
    let all = match only {
        Some(ids) => map(conn, key, ids, today, dates)?,
        None => cdm::CLINICAL
            .iter()
            .map(|t| (t.name, RecordBatch::new_empty(t.schema())))
            .collect(),
    };
    let mut out = Vec::new();
    for (name, table) in tables {
        let batch = all.get(name.as_str()).ok_or_else(|| {
            let names: Vec<&str> = cdm::CLINICAL.iter().map(|t| t.name).collect();
            Error::Invalid(format!(
                "study table `{name}` is not an OMOP CDM 5.4 table of the view ({})",
                names.join(", ")
            ))
        })?;
        let schema = batch.schema();
        let mut indices = Vec::new();
        for column in table.columns.keys() {
            indices.push(schema.index_of(column).map_err(|_| {
                let available: Vec<&str> =
                    schema.fields().iter().map(|f| f.name().as_str()).collect();
                Error::Invalid(format!(
                    "study column `{name}.{column}` is not a column of OMOP's `{name}` \
                     (it has {})",
                    available.join(", ")
                ))
            })?);
        }
        let projected = batch
            .project(&indices)
            .map_err(|e| Error::Arrow(e.to_string()))?;
        out.push((name.clone(), projected));
    }
    Ok(out)
}

/// A per-study integer id from a keyed pseudonym: 60 bits of the HMAC, so
/// ids differ between studies and collide with negligible probability.
fn id64(key: &PseudonymKey, raw: &str) -> i64 {
    let pseudonym = key.pseudonym(raw);
    i64::from_str_radix(&pseudonym[..15], 16).expect("a pseudonym is hexadecimal")
}

/// The de-identification of one study's dates.
struct Clock<'a> {
    key: &'a PseudonymKey,
    dates: Dates,
    shifts: HashMap<String, i64>,
}

impl Clock<'_> {
    fn shift(&mut self, patient: &str) -> i64 {
        match self.dates {
            Dates::SafeHarbor => 0,
            Dates::Shift(max) => *self
                .shifts
                .entry(patient.to_string())
                .or_insert_with(|| self.key.shift_days(patient, max)),
        }
    }

    fn date(&mut self, patient: &str, date: NaiveDate) -> NaiveDate {
        match self.dates {
            Dates::SafeHarbor => january_first(date.year()),
            Dates::Shift(_) => date + Duration::days(self.shift(patient)),
        }
    }

    fn datetime(&mut self, patient: &str, at: NaiveDateTime) -> Option<NaiveDateTime> {
        match self.dates {
            Dates::SafeHarbor => None,
            Dates::Shift(_) => Some(at + Duration::days(self.shift(patient))),
        }
    }
}

fn january_first(year: i32) -> NaiveDate {
    NaiveDate::from_ymd_opt(year, 1, 1).expect("1 January exists")
}

fn column<'a>(batch: &'a RecordBatch, name: &str) -> Result<&'a dyn Array> {
    batch
        .column_by_name(name)
        .map(|a| a.as_ref())
        .ok_or_else(|| Error::Arrow(format!("the projection has no column {name}")))
}

fn strings<'a>(batch: &'a RecordBatch, name: &str) -> Result<&'a StringArray> {
    column(batch, name)?
        .as_string_opt::<i32>()
        .ok_or_else(|| Error::Arrow(format!("projection column {name} is not text")))
}

fn date_column<'a>(batch: &'a RecordBatch, name: &str) -> Result<&'a Date32Array> {
    column(batch, name)?
        .as_any()
        .downcast_ref::<Date32Array>()
        .ok_or_else(|| Error::Arrow(format!("projection column {name} is not a date")))
}

fn times<'a>(batch: &'a RecordBatch, name: &str) -> Result<&'a TimestampMicrosecondArray> {
    column(batch, name)?
        .as_any()
        .downcast_ref::<TimestampMicrosecondArray>()
        .ok_or_else(|| Error::Arrow(format!("projection column {name} is not a timestamp")))
}

fn floats<'a>(batch: &'a RecordBatch, name: &str) -> Result<&'a Float64Array> {
    column(batch, name)?
        .as_any()
        .downcast_ref::<Float64Array>()
        .ok_or_else(|| Error::Arrow(format!("projection column {name} is not a number")))
}

fn text_at(a: &StringArray, i: usize) -> Option<&str> {
    a.is_valid(i).then(|| a.value(i))
}

fn date_at(a: &Date32Array, i: usize) -> Option<NaiveDate> {
    a.is_valid(i)
        .then(|| january_first(1970) + Duration::days(i64::from(a.value(i))))
}

fn time_at(a: &TimestampMicrosecondArray, i: usize) -> Option<NaiveDateTime> {
    a.is_valid(i)
        .then(|| chrono::DateTime::from_timestamp_micros(a.value(i)))
        .flatten()
        .map(|t| t.naive_utc())
}

fn int(v: i64) -> Option<Value> {
    Some(Value::Int(v))
}

fn text(v: Option<&str>) -> Option<Value> {
    v.map(|s| Value::Text(s.to_string()))
}

/// OMOP's gender concept of a FHIR administrative gender.
fn gender_concept(gender: Option<&str>) -> i64 {
    match gender {
        Some("male") => 8507,
        Some("female") => 8532,
        _ => 0,
    }
}

/// OMOP's race concept of an OMB race category (display or CDC code).
fn race_concept(race: Option<&str>) -> i64 {
    match race {
        Some("White" | "2106-3") => 8527,
        Some("Black or African American" | "2054-5") => 8516,
        Some("Asian" | "2028-9") => 8515,
        Some("American Indian or Alaska Native" | "1002-5") => 8657,
        Some("Native Hawaiian or Other Pacific Islander" | "2076-8") => 8557,
        _ => 0,
    }
}

/// OMOP's ethnicity concept of an OMB ethnicity category.
fn ethnicity_concept(ethnicity: Option<&str>) -> i64 {
    match ethnicity {
        Some("Hispanic or Latino" | "2135-2") => 38003563,
        Some("Not Hispanic or Latino" | "2186-5") => 38003564,
        _ => 0,
    }
}

/// OMOP's visit concept of a FHIR encounter class (v3 ActCode).
fn visit_concept(class: Option<&str>) -> i64 {
    match class {
        Some("IMP" | "ACUTE" | "NONAC") => 9201,
        Some("AMB") => 9202,
        Some("EMER") => 9203,
        _ => 0,
    }
}

/// Type concepts: EHR (conditions, measurements, observations), EHR
/// encounter record (visits), EHR prescription (drugs), standard algorithm
/// from EHR (observation periods).
const EHR: i64 = 32817;
const EHR_ENCOUNTER: i64 = 32827;
const EHR_PRESCRIPTION: i64 = 32838;
const EHR_PERIOD: i64 = 32882;

/// Every OMOP table for the patients in `ids`.
fn map(
    conn: &Connection,
    key: &PseudonymKey,
    ids: &HashSet<&str>,
    today: NaiveDate,
    dates: Dates,
) -> Result<HashMap<&'static str, RecordBatch>> {
    let vocabulary = vocabulary::vocabulary()?;
    let table = |name: &str| cdm::table(name).expect("a CDM table");
    let mut clock = Clock {
        key,
        dates,
        shifts: HashMap::new(),
    };
    // Each patient's earliest and latest event date, for observation_period.
    let mut span: BTreeMap<String, (NaiveDate, NaiveDate)> = BTreeMap::new();
    let mut seen = |patient: &str, date: NaiveDate| {
        span.entry(patient.to_string())
            .and_modify(|(first, last)| {
                *first = (*first).min(date);
                *last = (*last).max(date);
            })
            .or_insert((date, date));
    };

    let patients = projection::read_table(conn, "patients")?;
    let mut person = Rows::new(table("person"));
    {
        let id = strings(&patients, "patient_id")?;
        let birth = date_column(&patients, "birth_date")?;
        let gender = strings(&patients, "gender")?;
        let race = strings(&patients, "race")?;
        let ethnicity = strings(&patients, "ethnicity")?;
        for i in 0..patients.num_rows() {
            let Some(patient) = text_at(id, i).filter(|p| ids.contains(p)) else {
                continue;
            };
            let Some(born) = date_at(birth, i) else {
                // OMOP requires a year of birth.
                continue;
            };
            let shifted = clock.date(patient, born);
            let over_89 = today
                .years_since(born)
                .is_some_and(|a| i64::from(a) > MAX_AGE);
            let year = if over_89 {
                today.year() - (MAX_AGE as i32 + 1)
            } else {
                shifted.year()
            };
            let exact = matches!(dates, Dates::Shift(_)) && !over_89;
            let birth_datetime = clock
                .datetime(patient, born.and_hms_opt(0, 0, 0).expect("midnight"))
                .filter(|_| exact);
            person.push(&[
                ("person_id", int(id64(key, patient))),
                ("gender_concept_id", int(gender_concept(text_at(gender, i)))),
                ("year_of_birth", int(i64::from(year))),
                (
                    "month_of_birth",
                    exact.then(|| Value::Int(i64::from(shifted.month()))),
                ),
                (
                    "day_of_birth",
                    exact.then(|| Value::Int(i64::from(shifted.day()))),
                ),
                ("birth_datetime", birth_datetime.map(Value::DateTime)),
                ("race_concept_id", int(race_concept(text_at(race, i)))),
                (
                    "ethnicity_concept_id",
                    int(ethnicity_concept(text_at(ethnicity, i))),
                ),
                ("gender_source_value", text(text_at(gender, i))),
                ("gender_source_concept_id", int(0)),
                ("race_source_value", text(text_at(race, i))),
                ("race_source_concept_id", int(0)),
                ("ethnicity_source_value", text(text_at(ethnicity, i))),
                ("ethnicity_source_concept_id", int(0)),
            ]);
        }
    }

    let encounters = projection::read_table(conn, "encounters")?;
    let mut visit = Rows::new(table("visit_occurrence"));
    // Each encounter's start, for records that have no date of their own.
    let mut encounter_start: HashMap<String, NaiveDateTime> = HashMap::new();
    {
        let id = strings(&encounters, "id")?;
        let patient_id = strings(&encounters, "patient_id")?;
        let class = strings(&encounters, "class")?;
        let start = times(&encounters, "start")?;
        let end = times(&encounters, "end")?;
        for i in 0..encounters.num_rows() {
            let Some(patient) = text_at(patient_id, i).filter(|p| ids.contains(p)) else {
                continue;
            };
            let (Some(record), Some(begin)) = (text_at(id, i), time_at(start, i)) else {
                continue;
            };
            encounter_start.insert(record.to_string(), begin);
            let finish = time_at(end, i).unwrap_or(begin).max(begin);
            let (first, last) = (
                clock.date(patient, begin.date()),
                clock.date(patient, finish.date()),
            );
            seen(patient, first);
            seen(patient, last);
            visit.push(&[
                ("visit_occurrence_id", int(id64(key, record))),
                ("person_id", int(id64(key, patient))),
                ("visit_concept_id", int(visit_concept(text_at(class, i)))),
                ("visit_start_date", Some(Value::Date(first))),
                (
                    "visit_start_datetime",
                    clock.datetime(patient, begin).map(Value::DateTime),
                ),
                ("visit_end_date", Some(Value::Date(last))),
                (
                    "visit_end_datetime",
                    clock.datetime(patient, finish).map(Value::DateTime),
                ),
                ("visit_type_concept_id", int(EHR_ENCOUNTER)),
                ("visit_source_value", text(text_at(class, i))),
                ("visit_source_concept_id", int(0)),
            ]);
        }
    }
    let started = |encounter: Option<&str>| encounter.and_then(|e| encounter_start.get(e).copied());

    let conditions = projection::read_table(conn, "conditions")?;
    let mut condition = Rows::new(table("condition_occurrence"));
    {
        let id = strings(&conditions, "id")?;
        let patient_id = strings(&conditions, "patient_id")?;
        let encounter = strings(&conditions, "encounter_id")?;
        let code = strings(&conditions, "icd10")?;
        let status = strings(&conditions, "clinical_status")?;
        let onset = date_column(&conditions, "onset")?;
        for i in 0..conditions.num_rows() {
            let Some(patient) = text_at(patient_id, i).filter(|p| ids.contains(p)) else {
                continue;
            };
            let Some(record) = text_at(id, i) else {
                continue;
            };
            let visit_start = started(text_at(encounter, i));
            // OMOP requires a start date: the onset, else the encounter's.
            let Some(start) = date_at(onset, i).or(visit_start.map(|t| t.date())) else {
                continue;
            };
            let start = clock.date(patient, start);
            seen(patient, start);
            let concept = text_at(code, i).map_or(0, |c| vocabulary.concept_id("ICD10CM", c));
            condition.push(&[
                ("condition_occurrence_id", int(id64(key, record))),
                ("person_id", int(id64(key, patient))),
                ("condition_concept_id", int(concept)),
                ("condition_start_date", Some(Value::Date(start))),
                ("condition_type_concept_id", int(EHR)),
                ("condition_status_concept_id", int(0)),
                (
                    "visit_occurrence_id",
                    text_at(encounter, i)
                        .filter(|_| visit_start.is_some())
                        .map(|e| Value::Int(id64(key, e))),
                ),
                ("condition_source_value", text(text_at(code, i))),
                ("condition_source_concept_id", int(concept)),
                ("condition_status_source_value", text(text_at(status, i))),
            ]);
        }
    }

    let medications = projection::read_table(conn, "medications")?;
    let mut drug = Rows::new(table("drug_exposure"));
    {
        let id = strings(&medications, "id")?;
        let patient_id = strings(&medications, "patient_id")?;
        let encounter = strings(&medications, "encounter_id")?;
        let code = strings(&medications, "rxnorm")?;
        let status = strings(&medications, "status")?;
        let authored = date_column(&medications, "authored_on")?;
        for i in 0..medications.num_rows() {
            let Some(patient) = text_at(patient_id, i).filter(|p| ids.contains(p)) else {
                continue;
            };
            let Some(record) = text_at(id, i) else {
                continue;
            };
            let visit_start = started(text_at(encounter, i));
            let Some(start) = date_at(authored, i).or(visit_start.map(|t| t.date())) else {
                continue;
            };
            let start = clock.date(patient, start);
            seen(patient, start);
            let concept = text_at(code, i).map_or(0, |c| vocabulary.concept_id("RxNorm", c));
            let stopped = text_at(status, i).filter(|s| matches!(*s, "stopped" | "cancelled"));
            drug.push(&[
                ("drug_exposure_id", int(id64(key, record))),
                ("person_id", int(id64(key, patient))),
                ("drug_concept_id", int(concept)),
                ("drug_exposure_start_date", Some(Value::Date(start))),
                // The prescription's end is unknown: OMOP's convention
                // is the start date.
                ("drug_exposure_end_date", Some(Value::Date(start))),
                ("drug_type_concept_id", int(EHR_PRESCRIPTION)),
                ("stop_reason", text(stopped)),
                (
                    "visit_occurrence_id",
                    text_at(encounter, i)
                        .filter(|_| visit_start.is_some())
                        .map(|e| Value::Int(id64(key, e))),
                ),
                ("drug_source_value", text(text_at(code, i))),
                ("drug_source_concept_id", int(concept)),
            ]);
        }
    }

    let observations = projection::read_table(conn, "observations")?;
    let mut measurement = Rows::new(table("measurement"));
    let mut observation = Rows::new(table("observation"));
    {
        let id = strings(&observations, "id")?;
        let patient_id = strings(&observations, "patient_id")?;
        let encounter = strings(&observations, "encounter_id")?;
        let code = strings(&observations, "loinc")?;
        let display = strings(&observations, "display")?;
        let value = floats(&observations, "value")?;
        let unit = strings(&observations, "unit")?;
        let effective = times(&observations, "effective")?;
        for i in 0..observations.num_rows() {
            let Some(patient) = text_at(patient_id, i).filter(|p| ids.contains(p)) else {
                continue;
            };
            let Some(record) = text_at(id, i) else {
                continue;
            };
            let visit_start = started(text_at(encounter, i));
            let Some(at) = time_at(effective, i).or(visit_start) else {
                continue;
            };
            let date = clock.date(patient, at.date());
            seen(patient, date);
            let concept = text_at(code, i).map_or(0, |c| vocabulary.concept_id("LOINC", c));
            let unit_text = text_at(unit, i);
            let unit_concept = unit_text.map_or(0, |u| vocabulary.concept_id("UCUM", u));
            let visit_id = text_at(encounter, i)
                .filter(|_| visit_start.is_some())
                .map(|e| Value::Int(id64(key, e)));
            let datetime = clock.datetime(patient, at).map(Value::DateTime);
            if value.is_valid(i) {
                // A numeric result is a measurement (the IG routes laboratory
                // and vital-sign observations to MEASUREMENT).
                measurement.push(&[
                    ("measurement_id", int(id64(key, record))),
                    ("person_id", int(id64(key, patient))),
                    ("measurement_concept_id", int(concept)),
                    ("measurement_date", Some(Value::Date(date))),
                    ("measurement_datetime", datetime),
                    ("measurement_type_concept_id", int(EHR)),
                    ("value_as_number", Some(Value::Num(value.value(i)))),
                    ("unit_concept_id", int(unit_concept)),
                    ("visit_occurrence_id", visit_id),
                    ("measurement_source_value", text(text_at(code, i))),
                    ("measurement_source_concept_id", int(concept)),
                    ("unit_source_value", text(unit_text)),
                ]);
            } else {
                observation.push(&[
                    ("observation_id", int(id64(key, record))),
                    ("person_id", int(id64(key, patient))),
                    ("observation_concept_id", int(concept)),
                    ("observation_date", Some(Value::Date(date))),
                    ("observation_datetime", datetime),
                    ("observation_type_concept_id", int(EHR)),
                    ("value_as_string", text(text_at(display, i))),
                    ("visit_occurrence_id", visit_id),
                    ("observation_source_value", text(text_at(code, i))),
                    ("observation_source_concept_id", int(concept)),
                ]);
            }
        }
    }

    let mut period = Rows::new(table("observation_period"));
    for (patient, (first, last)) in &span {
        // Under Safe Harbor the last event's year is covered to its end.
        let last = match dates {
            Dates::SafeHarbor => NaiveDate::from_ymd_opt(last.year(), 12, 31).expect("a date"),
            Dates::Shift(_) => *last,
        };
        period.push(&[
            (
                "observation_period_id",
                int(id64(key, &format!("observation_period\0{patient}"))),
            ),
            ("person_id", int(id64(key, patient))),
            ("observation_period_start_date", Some(Value::Date(*first))),
            ("observation_period_end_date", Some(Value::Date(last))),
            ("period_type_concept_id", int(EHR_PERIOD)),
        ]);
    }
    // The projection carries no deaths yet: the table is there, empty.
    let death = Rows::new(table("death"));

    Ok(HashMap::from([
        ("person", person.finish()?),
        ("observation_period", period.finish()?),
        ("visit_occurrence", visit.finish()?),
        ("condition_occurrence", condition.finish()?),
        ("drug_exposure", drug.finish()?),
        ("measurement", measurement.finish()?),
        ("observation", observation.finish()?),
        ("death", death.finish()?),
    ]))
}
