//! FHIR R4 bundles: parsing and validation of the five resource types cohort
//! ingests (Patient, Observation, Condition, Encounter, MedicationRequest).
//!
//! Serde types cover just the fields the projection needs; every other field
//! is kept untouched in the stored record. A malformed resource is an error
//! naming the entry index, the resource and the field, and the whole bundle is
//! rejected (ingestion is all or nothing per bundle).

use std::collections::{BTreeMap, HashMap, HashSet};

use chrono::{DateTime, NaiveDate};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::records::projection::{
    ConditionRow, EncounterRow, MedicationRow, ObservationRow, PatientRow, Row,
};
use crate::{Error, Result};

mod resources;

use resources::{condition, encounter, medication_request, observation, patient};

/// LOINC, for observation codes.
pub const LOINC: &str = "http://loinc.org";
/// ICD-10-CM, for condition codes.
pub const ICD10CM: &str = "http://hl7.org/fhir/sid/icd-10-cm";
/// RxNorm, for medication codes.
pub const RXNORM: &str = "http://www.nlm.nih.gov/research/umls/rxnorm";
/// US Social Security numbers.
pub const SSN: &str = "http://hl7.org/fhir/sid/us-ssn";
/// US Core race extension.
pub const US_CORE_RACE: &str = "http://hl7.org/fhir/us/core/StructureDefinition/us-core-race";
/// US Core ethnicity extension.
pub const US_CORE_ETHNICITY: &str =
    "http://hl7.org/fhir/us/core/StructureDefinition/us-core-ethnicity";

/// The resource types cohort stores and projects.
pub const SUPPORTED: [&str; 5] = [
    "Patient",
    "Observation",
    "Condition",
    "Encounter",
    "MedicationRequest",
];

/// A bundle that passed validation, ready to store.
#[derive(Debug)]
pub struct Bundle {
    /// Where it came from (file name), for messages.
    pub source: String,
    /// The bundle's own id, if it has one.
    pub id: Option<String>,
    /// The supported resources, in bundle order.
    pub resources: Vec<Resource>,
    /// Resources of other types, by type, that were not ingested.
    pub skipped: BTreeMap<String, usize>,
}

/// One validated resource.
#[derive(Debug)]
pub struct Resource {
    /// Index of its entry in the bundle, for messages.
    pub entry: usize,
    /// The FHIR resource type.
    pub resource_type: &'static str,
    /// The resource id.
    pub id: String,
    /// The patient it belongs to.
    pub patient_id: String,
    /// The resource as canonical JSON (keys sorted), as stored in the vault.
    pub json: Vec<u8>,
    /// Its flattened projection row.
    pub row: Row,
}

impl Resource {
    /// `ResourceType/id`, the vault's record id.
    pub fn record_id(&self) -> String {
        format!("{}/{}", self.resource_type, self.id)
    }
}

/// Rewrites every `reference` naming a bundle entry's fullUrl as `Type/id`.
fn resolve_references(value: &mut Value, by_full_url: &HashMap<String, (String, String)>) {
    match value {
        Value::Object(map) => {
            for (key, v) in map.iter_mut() {
                match v {
                    Value::String(r) if key == "reference" => {
                        if let Some((t, id)) = by_full_url.get(r.as_str()) {
                            *r = format!("{t}/{id}");
                        }
                    }
                    other => resolve_references(other, by_full_url),
                }
            }
        }
        Value::Array(items) => {
            for v in items {
                resolve_references(v, by_full_url);
            }
        }
        _ => {}
    }
}

/// Parses and validates a bundle from JSON bytes.
pub fn parse_bundle(source: &str, bytes: &[u8]) -> Result<Bundle> {
    let fail = |message: String| Error::Fhir {
        source_name: source.to_owned(),
        message,
    };
    let value: Value =
        serde_json::from_slice(bytes).map_err(|e| fail(format!("not valid JSON: {e}")))?;
    let Value::Object(mut top) = value else {
        return Err(fail("expected a JSON object (a FHIR Bundle)".into()));
    };
    match top.get("resourceType").and_then(Value::as_str) {
        Some("Bundle") => {}
        Some(other) => {
            return Err(fail(format!(
                "expected a FHIR Bundle, found resourceType `{other}`"
            )));
        }
        None => {
            return Err(fail(
                "field `resourceType` is missing (expected \"Bundle\")".into(),
            ));
        }
    }
    let id = top.get("id").and_then(Value::as_str).map(str::to_owned);
    let entries = match top.remove("entry") {
        Some(Value::Array(a)) => a,
        None => Vec::new(),
        Some(_) => return Err(fail("field `entry` must be an array".into())),
    };

    // First pass: what each entry is, so references by fullUrl resolve.
    let mut by_full_url: HashMap<String, (String, String)> = HashMap::new();
    let mut raw = Vec::with_capacity(entries.len());
    for (i, mut entry) in entries.into_iter().enumerate() {
        let at = |msg: &str| fail(format!("entry {i}: {msg}"));
        let Some(obj) = entry.as_object_mut() else {
            return Err(at("must be a JSON object"));
        };
        let full_url = obj
            .get("fullUrl")
            .and_then(Value::as_str)
            .map(str::to_owned);
        let Some(mut resource) = obj.remove("resource") else {
            return Err(at("has no `resource`"));
        };
        let rtype = match resource.get("resourceType") {
            Some(Value::String(t)) => t.clone(),
            Some(_) => return Err(at("field `resource.resourceType` must be a string")),
            None => return Err(at("field `resource.resourceType` is missing")),
        };
        let rid = match resource.get("id") {
            Some(Value::String(s)) if valid_id(s) => s.clone(),
            Some(Value::String(s)) => {
                return Err(at(&format!(
                    "({rtype}): field `id`: `{s}` is not a valid FHIR id ([A-Za-z0-9-.]{{1,64}})"
                )));
            }
            Some(_) => return Err(at(&format!("({rtype}): field `id` must be a string"))),
            None => match full_url
                .as_deref()
                .and_then(|u| u.strip_prefix("urn:uuid:"))
            {
                Some(uuid) if valid_id(uuid) => {
                    resource["id"] = Value::String(uuid.to_owned());
                    uuid.to_owned()
                }
                _ => {
                    return Err(at(&format!(
                        "({rtype}): field `id` is missing and `fullUrl` is not a urn:uuid"
                    )));
                }
            },
        };
        if let Some(u) = &full_url {
            by_full_url.insert(u.clone(), (rtype.clone(), rid.clone()));
        }
        raw.push((i, rtype, rid, resource));
    }

    let mut seen = HashSet::new();
    let mut resources = Vec::new();
    let mut skipped = BTreeMap::new();
    for (i, rtype, rid, resource) in raw {
        let Some(&resource_type) = SUPPORTED.iter().find(|t| **t == rtype) else {
            *skipped.entry(rtype).or_insert(0) += 1;
            continue;
        };
        let ctx = Ctx {
            source,
            entry: i,
            label: format!("{rtype}/{rid}"),
            by_full_url: &by_full_url,
        };
        if !seen.insert((resource_type, rid.clone())) {
            return Err(ctx.err(None, "appears twice in this bundle".into()));
        }
        // Stored self-contained: a reference to another entry of this
        // bundle by its `urn:uuid:` fullUrl becomes `Type/id`, as a FHIR
        // server does with a transaction, so that a record read later (or
        // written back by a provider) resolves without its bundle.
        let mut stored = resource.clone();
        resolve_references(&mut stored, &by_full_url);
        let json = serde_json::to_vec(&stored).expect("a Value serializes");
        let (patient_id, row) = match resource_type {
            "Patient" => patient(&ctx, &rid, resource)?,
            "Observation" => observation(&ctx, &rid, resource)?,
            "Condition" => condition(&ctx, &rid, resource)?,
            "Encounter" => encounter(&ctx, &rid, resource)?,
            _ => medication_request(&ctx, &rid, resource)?,
        };
        resources.push(Resource {
            entry: i,
            resource_type,
            id: rid,
            patient_id,
            json,
            row,
        });
    }
    Ok(Bundle {
        source: source.to_owned(),
        id,
        resources,
        skipped,
    })
}

// The FHIR datatypes the context checks.

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct Coding {
    system: Option<String>,
    code: Option<String>,
    display: Option<String>,
}

#[derive(Deserialize, Default)]
struct CodeableConcept {
    #[serde(default)]
    coding: Vec<Coding>,
    text: Option<String>,
}

#[derive(Deserialize)]
struct Reference {
    reference: Option<String>,
}

/// Where in the bundle we are, for error messages.
struct Ctx<'a> {
    source: &'a str,
    entry: usize,
    label: String,
    by_full_url: &'a HashMap<String, (String, String)>,
}

impl Ctx<'_> {
    fn err(&self, field: Option<&str>, msg: String) -> Error {
        let field = field.map(|f| format!(": field `{f}`")).unwrap_or_default();
        Error::Fhir {
            source_name: self.source.to_owned(),
            message: format!("entry {} ({}){field}: {msg}", self.entry, self.label),
        }
    }

    /// Deserializes with the failing field's path in the error.
    fn typed<T: DeserializeOwned>(&self, value: Value) -> Result<T> {
        serde_path_to_error::deserialize(value).map_err(|e| {
            let path = e.path().to_string();
            let inner = e.into_inner().to_string();
            self.err(if path == "." { None } else { Some(&path) }, inner)
        })
    }

    /// Resolves a reference to a patient: `Patient/<id>`, or a `urn:uuid:`
    /// fullUrl of a Patient entry in this bundle.
    fn patient_ref(&self, field: &str, r: &Reference) -> Result<String> {
        let Some(text) = r.reference.as_deref() else {
            return Err(self.err(Some(field), "has no `reference`".into()));
        };
        if let Some(id) = text.strip_prefix("Patient/")
            && valid_id(id)
        {
            return Ok(id.to_owned());
        }
        match self.by_full_url.get(text) {
            Some((t, id)) if t == "Patient" => Ok(id.clone()),
            Some((t, _)) => Err(self.err(
                Some(field),
                format!("`{text}` refers to a {t}, not a Patient"),
            )),
            None => Err(self.err(
                Some(field),
                format!(
                    "`{text}` is neither `Patient/<id>` nor the fullUrl of a Patient in this bundle"
                ),
            )),
        }
    }

    /// An optional reference to an encounter, as its id.
    fn encounter_ref(&self, field: &str, r: Option<&Reference>) -> Result<Option<String>> {
        let Some(text) = r.and_then(|r| r.reference.as_deref()) else {
            return Ok(None);
        };
        if let Some(id) = text.strip_prefix("Encounter/") {
            return Ok(Some(id.to_owned()));
        }
        match self.by_full_url.get(text) {
            Some((t, id)) if t == "Encounter" => Ok(Some(id.clone())),
            _ => Err(self.err(
                Some(field),
                format!("`{text}` does not refer to an Encounter"),
            )),
        }
    }

    fn date(&self, field: &str, text: Option<&str>) -> Result<Option<i32>> {
        self.parsed(
            field,
            text,
            parse_date,
            "a FHIR date (YYYY, YYYY-MM or YYYY-MM-DD)",
        )
    }

    fn datetime(&self, field: &str, text: Option<&str>) -> Result<Option<i64>> {
        self.parsed(
            field,
            text,
            parse_datetime,
            "a FHIR dateTime (e.g. 2024-03-01T09:30:00Z)",
        )
    }

    /// Parses an optional field, naming it and what was expected on failure.
    fn parsed<T>(
        &self,
        field: &str,
        text: Option<&str>,
        parse: fn(&str) -> Option<T>,
        expected: &str,
    ) -> Result<Option<T>> {
        text.map(|t| {
            parse(t).ok_or_else(|| self.err(Some(field), format!("`{t}` is not {expected}")))
        })
        .transpose()
    }

    fn coding<'c>(
        &self,
        field: &str,
        cc: &'c CodeableConcept,
        system: &str,
        name: &str,
    ) -> Result<&'c Coding> {
        cc.coding
            .iter()
            .find(|c| {
                c.system.as_deref() == Some(system)
                    && c.code.as_deref().is_some_and(|c| !c.is_empty())
            })
            .ok_or_else(|| {
                self.err(
                    Some(field),
                    format!("has no {name} coding (system {system}) with a code"),
                )
            })
    }
}

fn valid_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

/// A FHIR date (possibly partial) as days since 1970-01-01; partial dates
/// take their first day.
pub fn parse_date(t: &str) -> Option<i32> {
    let full = match t.len() {
        4 => format!("{t}-01-01"),
        7 => format!("{t}-01"),
        10 => t.to_owned(),
        _ => return None,
    };
    let d = NaiveDate::parse_from_str(&full, "%Y-%m-%d").ok()?;
    Some((d - NaiveDate::from_ymd_opt(1970, 1, 1)?).num_days() as i32)
}

/// A FHIR dateTime as microseconds since the epoch (UTC); a bare date is midnight UTC.
pub fn parse_datetime(t: &str) -> Option<i64> {
    if t.len() <= 10 {
        return parse_date(t).map(|d| i64::from(d) * 86_400_000_000);
    }
    DateTime::parse_from_rfc3339(t)
        .ok()
        .map(|d| d.timestamp_micros())
}

impl Bundle {
    /// Patients a resource refers to that this bundle does not contain.
    pub fn external_patients(&self) -> Vec<(usize, String, String)> {
        let here: HashSet<&str> = self
            .resources
            .iter()
            .filter(|r| r.resource_type == "Patient")
            .map(|r| r.id.as_str())
            .collect();
        self.resources
            .iter()
            .filter(|r| !here.contains(r.patient_id.as_str()))
            .map(|r| (r.entry, r.record_id(), r.patient_id.clone()))
            .collect()
    }
}

#[cfg(test)]
mod tests;
