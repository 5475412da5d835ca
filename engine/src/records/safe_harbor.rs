//! The built-in HIPAA Safe Harbor policy for each table of the columnar
//! projection: what `cohort deidentify --table T` applies when no policy file
//! is given, and what study views start from.
//!
//! Names, street addresses, cities, telephone numbers, email addresses, SSNs
//! and MRNs are dropped; ZIP codes are cut to three digits (000 for the
//! restricted prefixes); every date keeps only its year, and birth years of
//! people over 89 collapse into one; record and patient ids become per-study
//! pseudonyms so that tables still join.

use chrono::NaiveDate;
use cohort_anonymizer::deid::{Policy, Rule};
use cohort_anonymizer::hierarchy::Hierarchies;

use crate::{Error, Result};

/// The Safe Harbor policy of projection table `table`, computing ages at `today`.
pub fn policy(table: &str, today: NaiveDate) -> Result<Policy> {
    use Rule::*;
    let pseudonymize = || Pseudonymize {};
    let year = || Year {
        top_code_age_at: None,
    };
    let rules: Vec<(&str, Rule)> = match table {
        "patients" => vec![
            ("patient_id", pseudonymize()),
            ("family_name", Drop {}),
            ("given_name", Drop {}),
            (
                "birth_date",
                Year {
                    top_code_age_at: Some(today),
                },
            ),
            ("gender", Keep {}),
            ("race", Keep {}),
            ("ethnicity", Keep {}),
            ("address_line", Drop {}),
            ("city", Drop {}),
            ("state", Keep {}),
            ("zip", Zip3 {}),
            ("phone", Drop {}),
            ("email", Drop {}),
            ("ssn", Drop {}),
            ("mrn", Drop {}),
        ],
        "observations" => vec![
            ("id", pseudonymize()),
            ("patient_id", pseudonymize()),
            ("encounter_id", pseudonymize()),
            ("loinc", Keep {}),
            ("display", Keep {}),
            ("value", Keep {}),
            ("unit", Keep {}),
            ("effective", year()),
        ],
        "conditions" => vec![
            ("id", pseudonymize()),
            ("patient_id", pseudonymize()),
            ("encounter_id", pseudonymize()),
            ("icd10", Keep {}),
            ("display", Keep {}),
            ("clinical_status", Keep {}),
            ("onset", year()),
        ],
        "encounters" => vec![
            ("id", pseudonymize()),
            ("patient_id", pseudonymize()),
            ("class", Keep {}),
            ("type_code", Keep {}),
            ("type_display", Keep {}),
            ("status", Keep {}),
            ("start", year()),
            ("end", year()),
        ],
        "medications" => vec![
            ("id", pseudonymize()),
            ("patient_id", pseudonymize()),
            ("encounter_id", pseudonymize()),
            ("rxnorm", Keep {}),
            ("display", Keep {}),
            ("status", Keep {}),
            ("authored_on", year()),
        ],
        other => {
            return Err(Error::NotFound(format!(
                "no built-in Safe Harbor policy for table `{other}` (tables: patients, observations, conditions, encounters, medications)"
            )));
        }
    };
    Ok(Policy::new(
        rules.into_iter().map(|(c, r)| (c.to_string(), r)),
        Hierarchies::default(),
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::records::projection;

    #[test]
    fn every_projection_column_has_a_rule() {
        let today = NaiveDate::from_ymd_opt(2026, 1, 1).unwrap();
        for name in [
            "patients",
            "observations",
            "conditions",
            "encounters",
            "medications",
        ] {
            let p = policy(name, today).unwrap();
            for field in projection::table(name).unwrap().schema().fields() {
                assert!(
                    p.rule(field.name()).is_some(),
                    "{name}.{} has no rule",
                    field.name()
                );
            }
        }
        assert!(policy("appointments", today).is_err());
    }
}
