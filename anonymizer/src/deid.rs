//! HIPAA Safe Harbor de-identification (45 CFR 164.514(b)(2)) driven by a
//! declarative column policy.
//!
//! Every column of the table must have a rule: there is no default, so a new
//! column cannot slip out unreviewed. A policy file is TOML:
//!
//! ```toml
//! [columns]
//! patient_id = "pseudonymize"          # keyed HMAC, per study
//! family_name = "drop"
//! birth_date = { action = "year", top_code_age_at = "2026-01-01" }
//! zip = "zip3"                         # 3 digits; 000 where the prefix holds <= 20,000 people
//! age = "top-code-age"                 # over 89 becomes 90, meaning 90 or older
//! visit_date = { action = "date-shift", max_days = 180, by = "patient_id" }
//! icd10 = { action = "generalize", level = 1 }   # needs [hierarchies.icd10]
//! state = "keep"
//! ```
//!
//! `keep` is refused for a column whose name says it is one of the 18 Safe
//! Harbor identifiers (a name, a phone number, an address...), and `generalize`
//! uses a hierarchy declared under `[hierarchies]` in the same file (see
//! [`crate::hierarchy`]). `date-shift` moves all of one person's dates by the
//! same keyed offset: it keeps intervals but is not Safe Harbor on its own
//! (the report says so); `year` is.
//!
//! The parts: the policy and its checks (`policy`), identifier names
//! (`identifiers`), the study's pseudonym key (`pseudonym`) and the column
//! transformations (`actions`); [`deidentify`] applies them here.

mod actions;
mod identifiers;
mod policy;
mod pseudonym;

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Field, Schema};
use arrow::record_batch::RecordBatch;
use serde::Serialize;

use crate::error::{Error, Result};
use actions::{date_shift, generalize, map_text, top_code_age, year};

pub use actions::{MAX_AGE, RESTRICTED_ZIP3, zip3};
pub use identifiers::identifier_kind;
pub use policy::{Policy, Rule};
pub use pseudonym::PseudonymKey;

/// What was done to one column.
#[derive(Debug, Clone, Serialize)]
pub struct ColumnReport {
    /// The column.
    pub column: String,
    /// The rule applied, in words.
    pub action: String,
    /// The Safe Harbor identifier kind the column name suggests, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub identifier: Option<&'static str>,
    /// How many values changed.
    pub changed: usize,
    /// The output type.
    pub output_type: String,
}

/// What de-identification did, column by column.
#[derive(Debug, Clone, Serialize)]
pub struct DeidReport {
    /// Rows in (and out: de-identification removes no rows).
    pub rows: usize,
    /// One entry per input column, in table order.
    pub columns: Vec<ColumnReport>,
    /// Whether every rule is a Safe Harbor transformation (no date shifts).
    pub safe_harbor: bool,
}

/// Applies `policy` to `batch` with the study's pseudonym `key`.
pub fn deidentify(
    batch: &RecordBatch,
    policy: &Policy,
    key: &PseudonymKey,
) -> Result<(RecordBatch, DeidReport)> {
    let schema = batch.schema();
    let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
    let unlisted: Vec<&str> = names
        .iter()
        .copied()
        .filter(|n| policy.rule(n).is_none())
        .collect();
    if !unlisted.is_empty() {
        return Err(Error::Policy(format!(
            "no rule for column(s) {}; every column must be listed (use \"drop\" for what is not needed)",
            unlisted
                .iter()
                .map(|c| format!("`{c}`"))
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    let missing: Vec<&str> = policy
        .rules
        .keys()
        .map(String::as_str)
        .filter(|c| !names.contains(c))
        .collect();
    if !missing.is_empty() {
        return Err(Error::Policy(format!(
            "the policy names column(s) the table lacks: {} (the table has: {})",
            missing.join(", "),
            names.join(", ")
        )));
    }

    let mut fields = Vec::new();
    let mut columns: Vec<ArrayRef> = Vec::new();
    let mut reports = Vec::new();
    let mut safe_harbor = true;
    for (i, field) in schema.fields().iter().enumerate() {
        let name = field.name().as_str();
        let rule = policy.rule(name).expect("checked above");
        let array = batch.column(i);
        let out: Option<ArrayRef> = match rule {
            Rule::Drop {} => None,
            Rule::Keep {} => Some(array.clone()),
            Rule::Pseudonymize {} => Some(map_text(name, array, |_, s| Ok(key.pseudonym(s)))?),
            Rule::Zip3 {} => Some(map_text(name, array, |_, s| Ok(zip3(s)))?),
            Rule::Generalize { level } => {
                let h = policy.hierarchies.get(name).expect("validated");
                Some(generalize(name, array, h, *level)?)
            }
            Rule::TopCodeAge {} => Some(top_code_age(name, array)?),
            Rule::Year { top_code_age_at } => Some(year(name, array, *top_code_age_at)?),
            Rule::DateShift { max_days, by } => {
                safe_harbor = false;
                let owner = batch.column_by_name(by).expect("validated");
                Some(date_shift(name, array, owner, *max_days, key)?)
            }
        };
        let changed = match &out {
            None => array.len(),
            Some(o) => changed_count(array, o),
        };
        reports.push(ColumnReport {
            column: name.into(),
            action: rule.describe(),
            identifier: identifier_kind(name),
            changed,
            output_type: out
                .as_ref()
                .map_or("-".into(), |o| o.data_type().to_string()),
        });
        if let Some(o) = out {
            fields.push(Field::new(
                name,
                o.data_type().clone(),
                field.is_nullable() || o.null_count() > 0,
            ));
            columns.push(o);
        }
    }
    let out = RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)?;
    Ok((
        out,
        DeidReport {
            rows: batch.num_rows(),
            columns: reports,
            safe_harbor,
        },
    ))
}

fn changed_count(before: &ArrayRef, after: &ArrayRef) -> usize {
    let (Ok(a), Ok(b)) = (cast(before, &DataType::Utf8), cast(after, &DataType::Utf8)) else {
        return before.len();
    };
    let (a, b) = (a.as_string::<i32>(), b.as_string::<i32>());
    (0..a.len())
        .filter(|&i| a.is_null(i) != b.is_null(i) || (a.is_valid(i) && a.value(i) != b.value(i)))
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::NaiveDate;

    const POLICY: &str = r#"
[columns]
patient_id = "pseudonymize"
name = "drop"
birth_date = { action = "year", top_code_age_at = "2026-01-01" }
zip = "zip3"
age = "top-code-age"
visit = { action = "date-shift", max_days = 180, by = "patient_id" }
icd10 = { action = "generalize", level = 1 }
state = "keep"

[hierarchies.icd10]
kind = "prefix"
"#;

    #[test]
    fn every_action_of_the_readme_policy_applies() {
        use arrow::array::{Int64Array, StringArray};
        let batch = RecordBatch::try_from_iter([
            (
                "patient_id",
                Arc::new(StringArray::from(vec!["p1", "p1", "p2"])) as ArrayRef,
            ),
            (
                "name",
                Arc::new(StringArray::from(vec!["Ann", "Ann", "Bo"])),
            ),
            (
                "birth_date",
                Arc::new(StringArray::from(vec![
                    "1930-05-01",
                    "1930-05-01",
                    "1980-02-29",
                ])),
            ),
            (
                "zip",
                Arc::new(StringArray::from(vec!["03601", "03601", "02139"])),
            ),
            ("age", Arc::new(Int64Array::from(vec![95, 95, 45]))),
            (
                "visit",
                Arc::new(StringArray::from(vec![
                    "2025-01-10",
                    "2025-03-10",
                    "2025-01-10",
                ])),
            ),
            (
                "icd10",
                Arc::new(StringArray::from(vec!["E11.9", "I10", "E11.65"])),
            ),
            ("state", Arc::new(StringArray::from(vec!["NH", "NH", "MA"]))),
        ])
        .unwrap();
        let policy = Policy::from_toml(POLICY).unwrap();
        let key = PseudonymKey::derive(&[1; 32], "s");
        let (out, report) = deidentify(&batch, &policy, &key).unwrap();
        let col = |n: &str| {
            let c = cast(out.column_by_name(n).unwrap(), &DataType::Utf8).unwrap();
            let s = c.as_string::<i32>();
            (0..s.len())
                .map(|i| s.value(i).to_string())
                .collect::<Vec<_>>()
        };
        assert!(out.column_by_name("name").is_none());
        assert_eq!(
            col("birth_date"),
            ["1936", "1936", "1980"],
            "born 1930: over 89 in 2026"
        );
        assert_eq!(col("zip"), ["000", "000", "021"]);
        assert_eq!(col("age"), ["90", "90", "45"]);
        assert_eq!(col("icd10"), ["E11.*", "I1*", "E11.6*"]);
        assert_eq!(col("patient_id")[0], col("patient_id")[1]);
        // One person's dates move together: the 59-day interval survives.
        let visits: Vec<NaiveDate> = col("visit").iter().map(|d| d.parse().unwrap()).collect();
        assert_eq!((visits[1] - visits[0]).num_days(), 59);
        assert!(
            !report.safe_harbor,
            "a date shift is not Safe Harbor on its own"
        );
        assert_eq!(report.columns.len(), 8);
        assert_eq!(report.columns[1].changed, 3, "every name is removed");
        assert_eq!(report.columns[7].changed, 0, "state is kept");

        let err = Policy::from_toml("[columns]\nx = \"shred\"")
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown action \"shred\""), "{err}");
        let err = deidentify(
            &batch,
            &Policy::from_toml("[columns]\nstate = \"keep\"").unwrap(),
            &key,
        )
        .unwrap_err();
        assert!(
            err.to_string()
                .contains("no rule for column(s) `patient_id`"),
            "{err}"
        );
    }

    #[test]
    fn restricted_prefixes_become_000() {
        assert_eq!(zip3("02139"), "021");
        assert_eq!(zip3("03601"), "000");
        assert_eq!(zip3("89301-1234"), "000");
        assert_eq!(zip3("12"), "000");
    }

    #[test]
    fn identifier_names_are_recognised_by_word() {
        assert_eq!(identifier_kind("family_name"), Some("names"));
        assert_eq!(identifier_kind("ssn"), Some("social security numbers"));
        assert_eq!(
            identifier_kind("patient_zip"),
            Some("geographic subdivisions smaller than a state")
        );
        assert_eq!(identifier_kind("state"), None);
        assert_eq!(identifier_kind("hba1c"), None);
        // A word inside another word is not a match.
        assert_eq!(identifier_kind("diploma"), None);
    }

    #[test]
    fn pseudonyms_are_stable_per_study_and_unlinkable_across() {
        let master = [7u8; 32];
        let a = PseudonymKey::derive(&master, "study-a");
        let a2 = PseudonymKey::derive(&master, "study-a");
        let b = PseudonymKey::derive(&master, "study-b");
        assert_eq!(a.pseudonym("patient-1"), a2.pseudonym("patient-1"));
        assert_ne!(a.pseudonym("patient-1"), b.pseudonym("patient-1"));
        assert_ne!(a.pseudonym("patient-1"), a.pseudonym("patient-2"));
        assert_eq!(a.pseudonym("patient-1").len(), 32);
        assert_eq!(format!("{a:?}"), "PseudonymKey(..)");
        for v in ["x", "y", "z"] {
            assert!(a.shift_days(v, 30).abs() <= 30);
        }
    }
}
