//! The OMOP standardized vocabulary for the codes cohort uses, as public
//! tables (`concept`, `concept_ancestor`, `concept_relationship`,
//! `vocabulary`): no patient's data, so reading them costs no privacy.
//!
//! Gender, race, ethnicity, visit and type concepts carry their standard
//! OMOP ids, as published by OHDSI (the CDM conventions, HL7's FHIR-to-OMOP
//! implementation guide, ETL-Synthea). ICD-10-CM, LOINC, RxNorm and UCUM
//! concepts carry *local* ids, above 2,000,000,000 where OMOP reserves ids
//! for local concepts, because their standard ids come from OHDSI's Athena
//! download, which cohort does not ship (docs/OMOP.md). The ids are fixed by
//! the order of the code lists (append only), so a query written with them
//! keeps working. The ICD-10-CM hierarchy shipped for the anonymizer
//! (`anonymizer/hierarchies/cohort.toml`) becomes `concept_ancestor`.

use std::collections::{BTreeMap, HashMap};
use std::sync::OnceLock;

use chrono::NaiveDate;
use cohort_query_planner::policy::PublicTables;

use super::cdm::{self, Rows, Value};
use crate::records::generate::population::{CONDITION_CODES, MEDICATION_CODES, OBSERVATION_CODES};
use crate::{Error, Result};

/// The first local concept id OMOP leaves to sites.
pub const LOCAL_BASE: i64 = 2_000_000_000;

/// Standard OMOP concepts cohort maps to: id, name, domain (also the
/// vocabulary and class), code.
const STANDARD: [(i64, &str, &str, &str); 17] = [
    (8507, "MALE", "Gender", "M"),
    (8532, "FEMALE", "Gender", "F"),
    (8527, "White", "Race", "5"),
    (8516, "Black or African American", "Race", "3"),
    (8515, "Asian", "Race", "2"),
    (8657, "American Indian or Alaska Native", "Race", "1"),
    (
        8557,
        "Native Hawaiian or Other Pacific Islander",
        "Race",
        "4",
    ),
    (38003563, "Hispanic or Latino", "Ethnicity", "Hispanic"),
    (
        38003564,
        "Not Hispanic or Latino",
        "Ethnicity",
        "Not Hispanic",
    ),
    (9201, "Inpatient Visit", "Visit", "IP"),
    (9202, "Outpatient Visit", "Visit", "OP"),
    (9203, "Emergency Room Visit", "Visit", "ER"),
    (32817, "EHR", "Type Concept", "EHR"),
    (
        32827,
        "EHR encounter record",
        "Type Concept",
        "EHR encounter record",
    ),
    (
        32838,
        "EHR prescription",
        "Type Concept",
        "EHR prescription",
    ),
    (
        32882,
        "Standard algorithm from EHR",
        "Type Concept",
        "Standard algorithm from EHR",
    ),
    (0, "No matching concept", "Metadata", "No matching concept"),
];

/// The vocabularies: id, name, reference.
const VOCABULARIES: [(&str, &str, &str); 9] = [
    (
        "ICD10CM",
        "International Classification of Diseases, Tenth Revision, Clinical Modification",
        "https://www.cdc.gov/nchs/icd/icd-10-cm/",
    ),
    (
        "LOINC",
        "Logical Observation Identifiers Names and Codes",
        "https://loinc.org",
    ),
    (
        "RxNorm",
        "RxNorm",
        "https://www.nlm.nih.gov/research/umls/rxnorm/",
    ),
    (
        "UCUM",
        "Unified Code for Units of Measure",
        "https://ucum.org",
    ),
    ("Gender", "OMOP Gender", "OMOP generated"),
    (
        "Race",
        "Race and Ethnicity Code Set (USBC)",
        "OMOP generated",
    ),
    ("Ethnicity", "OMOP Ethnicity", "OMOP generated"),
    ("Visit", "OMOP Visit", "OMOP generated"),
    ("Type Concept", "OMOP Type Concept", "OMOP generated"),
];

/// ICD-10-CM chapters, blocks and categories of the shipped hierarchy
/// (append only: the order fixes local ids). Leaf codes are the
/// population's condition codes.
const ICD10_GROUPS: [(&str, &str); 25] = [
    ("A00-B99", "Certain infectious and parasitic diseases"),
    ("E00-E89", "Endocrine, nutritional and metabolic diseases"),
    (
        "F01-F99",
        "Mental, Behavioral and Neurodevelopmental disorders",
    ),
    ("I00-I99", "Diseases of the circulatory system"),
    ("J00-J99", "Diseases of the respiratory system"),
    ("N00-N99", "Diseases of the genitourinary system"),
    ("B20-B20", "Human immunodeficiency virus [HIV] disease"),
    ("E00-E07", "Disorders of thyroid gland"),
    ("E08-E13", "Diabetes mellitus"),
    ("E65-E68", "Overweight, obesity and other hyperalimentation"),
    ("E70-E88", "Metabolic disorders"),
    ("F30-F39", "Mood [affective] disorders"),
    ("I10-I1A", "Hypertensive diseases"),
    ("I20-I25", "Ischemic heart diseases"),
    ("J40-J4A", "Chronic lower respiratory diseases"),
    ("N17-N19", "Acute kidney failure and chronic kidney disease"),
    ("E03", "Other hypothyroidism"),
    ("E11", "Type 2 diabetes mellitus"),
    ("E66", "Overweight and obesity"),
    (
        "E78",
        "Disorders of lipoprotein metabolism and other lipidemias",
    ),
    ("F32", "Depressive episode"),
    ("I25", "Chronic ischemic heart disease"),
    ("J44", "Other chronic obstructive pulmonary disease"),
    ("J45", "Asthma"),
    ("N18", "Chronic kidney disease (CKD)"),
];

/// UCUM units of the population's observations (append only).
pub const UNITS: [&str; 7] = ["cm", "kg", "kg/m2", "mm[Hg]", "/min", "%", "mg/dL"];

/// One concept.
#[derive(Clone, Debug)]
pub struct Concept {
    /// Its id.
    pub id: i64,
    /// Its name.
    pub name: String,
    /// OMOP domain.
    pub domain: &'static str,
    /// Vocabulary id.
    pub vocabulary: &'static str,
    /// Concept class.
    pub class: String,
    /// `S` standard, `C` classification, none otherwise.
    pub standard: Option<&'static str>,
    /// The code in its vocabulary.
    pub code: String,
}

/// The whole vocabulary, built once.
pub struct Vocabulary {
    /// Every concept.
    pub concepts: Vec<Concept>,
    /// (ancestor, descendant, min levels, max levels).
    pub ancestors: Vec<(i64, i64, i64, i64)>,
    /// (concept 1, concept 2, relationship).
    pub relationships: Vec<(i64, i64, &'static str)>,
    by_code: HashMap<&'static str, HashMap<String, i64>>,
}

/// The vocabulary.
pub fn vocabulary() -> Result<&'static Vocabulary> {
    static BUILT: OnceLock<std::result::Result<Vocabulary, String>> = OnceLock::new();
    BUILT
        .get_or_init(|| build().map_err(|e| e.to_string()))
        .as_ref()
        .map_err(|e| Error::Invalid(format!("the OMOP vocabulary: {e}")))
}

impl Vocabulary {
    /// The concept id of `code` in `vocabulary`; 0 (OMOP's "no matching
    /// concept") for a code the vocabulary does not hold.
    pub fn concept_id(&self, vocabulary: &str, code: &str) -> i64 {
        self.by_code
            .get(vocabulary)
            .and_then(|codes| codes.get(code))
            .copied()
            .unwrap_or(0)
    }

    /// The four vocabulary tables, as public tables for the planner.
    pub fn tables(&self) -> Result<PublicTables> {
        let start = || {
            Some(Value::Date(
                NaiveDate::from_ymd_opt(1970, 1, 1).expect("date"),
            ))
        };
        let end = || {
            Some(Value::Date(
                NaiveDate::from_ymd_opt(2099, 12, 31).expect("date"),
            ))
        };
        let table = |name: &str| cdm::table(name).expect("a vocabulary table");
        let text = |s: &str| Some(Value::Text(s.to_string()));
        let mut concept = Rows::new(table("concept"));
        for c in &self.concepts {
            concept.push(&[
                ("concept_id", Some(Value::Int(c.id))),
                ("concept_name", text(&c.name)),
                ("domain_id", text(c.domain)),
                ("vocabulary_id", text(c.vocabulary)),
                ("concept_class_id", text(&c.class)),
                ("standard_concept", c.standard.and_then(text)),
                ("concept_code", text(&c.code)),
                ("valid_start_date", start()),
                ("valid_end_date", end()),
            ]);
        }
        let mut ancestor = Rows::new(table("concept_ancestor"));
        for (a, d, min, max) in &self.ancestors {
            ancestor.push(&[
                ("ancestor_concept_id", Some(Value::Int(*a))),
                ("descendant_concept_id", Some(Value::Int(*d))),
                ("min_levels_of_separation", Some(Value::Int(*min))),
                ("max_levels_of_separation", Some(Value::Int(*max))),
            ]);
        }
        let mut relationship = Rows::new(table("concept_relationship"));
        for (one, two, id) in &self.relationships {
            relationship.push(&[
                ("concept_id_1", Some(Value::Int(*one))),
                ("concept_id_2", Some(Value::Int(*two))),
                ("relationship_id", text(id)),
                ("valid_start_date", start()),
                ("valid_end_date", end()),
            ]);
        }
        let mut vocabulary = Rows::new(table("vocabulary"));
        for (index, (id, name, reference)) in VOCABULARIES.iter().enumerate() {
            vocabulary.push(&[
                ("vocabulary_id", text(id)),
                ("vocabulary_name", text(name)),
                ("vocabulary_reference", text(reference)),
                (
                    "vocabulary_version",
                    text(&format!("cohort {}", env!("CARGO_PKG_VERSION"))),
                ),
                (
                    "vocabulary_concept_id",
                    Some(Value::Int(LOCAL_BASE + index as i64)),
                ),
            ]);
        }
        Ok(BTreeMap::from([
            ("concept".to_string(), concept.finish()?),
            ("concept_ancestor".to_string(), ancestor.finish()?),
            ("concept_relationship".to_string(), relationship.finish()?),
            ("vocabulary".to_string(), vocabulary.finish()?),
        ]))
    }
}

/// The ICD-10-CM class of a code by its length, OMOP's naming.
fn icd10_class(code: &str, leaf: bool, chapter: bool) -> String {
    if code.contains('-') {
        return if chapter {
            "ICD10 Chapter"
        } else {
            "ICD10 SubChapter"
        }
        .into();
    }
    let chars = code.chars().filter(|c| *c != '.').count();
    format!(
        "{chars}-char {} code",
        if leaf { "billing" } else { "nonbill" }
    )
}

fn build() -> Result<Vocabulary> {
    let mut concepts = Vec::new();
    for (id, name, domain, code) in STANDARD {
        let (vocabulary, class, standard) = match domain {
            "Metadata" => ("None", "Undefined".to_string(), None),
            _ => (domain, domain.to_string(), Some("S")),
        };
        concepts.push(Concept {
            id,
            name: name.into(),
            domain,
            vocabulary,
            class,
            standard,
            code: code.into(),
        });
    }
    for (index, (id, name, _)) in VOCABULARIES.iter().enumerate() {
        concepts.push(Concept {
            id: LOCAL_BASE + index as i64,
            name: name.to_string(),
            domain: "Metadata",
            vocabulary: "Vocabulary",
            class: "Vocabulary".into(),
            standard: None,
            code: id.to_string(),
        });
    }
    // The ICD-10-CM tree: child -> parent.
    let hierarchies: toml::Table = toml::from_str(cohort_anonymizer::hierarchy::COHORT_HIERARCHIES)
        .map_err(|e| Error::Invalid(format!("the shipped hierarchies: {e}")))?;
    let tree = hierarchies
        .get("icd10")
        .and_then(|t| t.get("tree"))
        .and_then(|t| t.as_table())
        .ok_or_else(|| Error::Invalid("the shipped hierarchies have no ICD-10-CM tree".into()))?;
    let mut parent: HashMap<String, String> = HashMap::new();
    for (node, children) in tree {
        for child in children.as_array().into_iter().flatten() {
            if let Some(child) = child.as_str() {
                parent.insert(child.to_string(), node.clone());
            }
        }
    }
    let chapters: Vec<&str> = tree
        .get(cohort_anonymizer::hierarchy::ROOT)
        .and_then(|c| c.as_array())
        .map(|a| a.iter().filter_map(|v| v.as_str()).collect())
        .unwrap_or_default();
    let mut icd: HashMap<String, i64> = HashMap::new();
    for (index, (code, name)) in ICD10_GROUPS.iter().enumerate() {
        let id = LOCAL_BASE + 100_000 + index as i64;
        icd.insert(code.to_string(), id);
        let chapter = chapters.contains(code);
        concepts.push(Concept {
            id,
            name: name.to_string(),
            domain: "Condition",
            vocabulary: "ICD10CM",
            class: icd10_class(code, false, chapter),
            standard: Some(if code.contains('-') { "C" } else { "S" }),
            code: code.to_string(),
        });
    }
    for (index, (code, name)) in CONDITION_CODES.iter().enumerate() {
        let id = LOCAL_BASE + 110_000 + index as i64;
        icd.insert(code.to_string(), id);
        concepts.push(Concept {
            id,
            name: name.to_string(),
            domain: "Condition",
            vocabulary: "ICD10CM",
            class: icd10_class(code, true, false),
            standard: Some("S"),
            code: code.to_string(),
        });
    }
    for (child, up) in &parent {
        if up != cohort_anonymizer::hierarchy::ROOT && !icd.contains_key(up) {
            return Err(Error::Invalid(format!(
                "ICD-10-CM node `{up}` has no concept"
            )));
        }
        if !icd.contains_key(child) {
            return Err(Error::Invalid(format!(
                "ICD-10-CM node `{child}` has no concept"
            )));
        }
    }
    for (index, ((code, name), vital)) in OBSERVATION_CODES.iter().enumerate() {
        concepts.push(Concept {
            id: LOCAL_BASE + 200_000 + index as i64,
            name: name.to_string(),
            domain: "Measurement",
            vocabulary: "LOINC",
            class: if *vital {
                "Clinical Observation"
            } else {
                "Lab Test"
            }
            .into(),
            standard: Some("S"),
            code: code.to_string(),
        });
    }
    for (index, (code, name)) in MEDICATION_CODES.iter().enumerate() {
        concepts.push(Concept {
            id: LOCAL_BASE + 300_000 + index as i64,
            name: name.to_string(),
            domain: "Drug",
            vocabulary: "RxNorm",
            class: "Clinical Drug".into(),
            standard: Some("S"),
            code: code.to_string(),
        });
    }
    for (index, unit) in UNITS.iter().enumerate() {
        concepts.push(Concept {
            id: LOCAL_BASE + 400_000 + index as i64,
            name: unit.to_string(),
            domain: "Unit",
            vocabulary: "UCUM",
            class: "Unit".into(),
            standard: Some("S"),
            code: unit.to_string(),
        });
    }
    // Ancestors: every standard or classification concept is its own
    // (level 0); ICD-10-CM nodes descend from each node above them.
    let mut ancestors = Vec::new();
    for c in &concepts {
        if c.standard.is_some() {
            ancestors.push((c.id, c.id, 0, 0));
        }
    }
    let mut relationships = Vec::new();
    let mut codes: Vec<&String> = icd.keys().collect();
    codes.sort();
    for code in codes {
        let id = icd[code];
        let mut level = 0;
        let mut at = code.clone();
        while let Some(up) = parent.get(&at) {
            if up == cohort_anonymizer::hierarchy::ROOT {
                break;
            }
            level += 1;
            let up_id = icd[up];
            ancestors.push((up_id, id, level, level));
            if level == 1 {
                relationships.push((id, up_id, "Is a"));
                relationships.push((up_id, id, "Subsumes"));
            }
            at = up.clone();
        }
    }
    for c in &concepts {
        if c.standard == Some("S") && matches!(c.vocabulary, "ICD10CM" | "LOINC" | "RxNorm") {
            relationships.push((c.id, c.id, "Maps to"));
            relationships.push((c.id, c.id, "Mapped from"));
        }
    }
    let mut by_code: HashMap<&'static str, HashMap<String, i64>> = HashMap::new();
    for c in &concepts {
        if matches!(c.vocabulary, "ICD10CM" | "LOINC" | "RxNorm" | "UCUM") {
            by_code
                .entry(c.vocabulary)
                .or_default()
                .insert(c.code.clone(), c.id);
        }
    }
    Ok(Vocabulary {
        concepts,
        ancestors,
        relationships,
        by_code,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_unique_and_local_ids_are_in_omops_local_range() {
        let v = vocabulary().unwrap();
        let mut seen = std::collections::HashSet::new();
        for c in &v.concepts {
            assert!(seen.insert(c.id), "concept id {} repeats", c.id);
            if matches!(
                c.vocabulary,
                "ICD10CM" | "LOINC" | "RxNorm" | "UCUM" | "Vocabulary"
            ) {
                assert!(c.id >= LOCAL_BASE && c.id <= i64::from(i32::MAX), "{c:?}");
            } else {
                assert!(c.id < LOCAL_BASE, "{c:?}");
            }
        }
    }

    #[test]
    fn every_condition_rolls_up_to_its_chapter() {
        let v = vocabulary().unwrap();
        let e119 = v.concept_id("ICD10CM", "E11.9");
        let e11 = v.concept_id("ICD10CM", "E11");
        let chapter = v.concept_id("ICD10CM", "E00-E89");
        assert!(e119 > LOCAL_BASE && e11 > LOCAL_BASE && chapter > LOCAL_BASE);
        assert!(v.ancestors.contains(&(e11, e119, 1, 1)));
        assert!(v.ancestors.contains(&(chapter, e119, 3, 3)));
        assert!(v.ancestors.contains(&(e119, e119, 0, 0)));
        for (code, _) in CONDITION_CODES {
            let id = v.concept_id("ICD10CM", code);
            let chapters = v
                .ancestors
                .iter()
                .filter(|(a, d, _, _)| {
                    *d == id
                        && v.concepts
                            .iter()
                            .any(|c| c.id == *a && c.class == "ICD10 Chapter")
                })
                .count();
            assert_eq!(chapters, 1, "{code} has one chapter");
        }
        assert_eq!(
            v.concept_id("ICD10CM", "Z99.9"),
            0,
            "unknown codes map to 0"
        );
        let tables = v.tables().unwrap();
        assert_eq!(tables["concept"].num_rows(), v.concepts.len());
        assert_eq!(tables["concept_ancestor"].num_rows(), v.ancestors.len());
    }
}
