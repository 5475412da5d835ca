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

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, Int32Builder, Int64Array, StringBuilder};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Field, Int64Type, Schema, TimeUnit};
use arrow::record_batch::RecordBatch;
use chrono::{Datelike, NaiveDate};
use hmac::{KeyInit, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::error::{Error, Result};
use crate::hierarchy::{Hierarchies, Hierarchy, Value, date_from_unix_days};

/// Three-digit ZIP prefixes whose population was 20,000 or fewer in the 2000
/// census; Safe Harbor requires them to be released as `000` (HHS guidance,
/// 2012, section 3.3).
pub const RESTRICTED_ZIP3: [&str; 17] = [
    "036", "059", "063", "102", "203", "556", "692", "790", "821", "823", "830", "831", "878",
    "879", "884", "890", "893",
];

/// Ages above this are aggregated into one category, "90 or older".
pub const MAX_AGE: i64 = 89;

/// What to do with one column.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(tag = "action", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Rule {
    /// Remove the column.
    Drop {},
    /// Release it unchanged.
    Keep {},
    /// Replace each value by its keyed HMAC under the study's pseudonym key.
    Pseudonymize {},
    /// Keep only the year of a date. With `top_code_age_at`, birth years of
    /// people 90 or older on that date become that date's year minus 90.
    Year {
        /// The date ages are computed at (for birth dates).
        #[serde(default)]
        top_code_age_at: Option<NaiveDate>,
    },
    /// Move every date of one person by the same keyed offset in
    /// `[-max_days, max_days]`.
    DateShift {
        /// The largest shift, in days.
        max_days: u32,
        /// The column identifying the person (the shift's key).
        by: String,
    },
    /// Keep the first three digits of a ZIP code; `000` for restricted prefixes.
    Zip3 {},
    /// Ages over 89 become 90 (meaning "90 or older").
    TopCodeAge {},
    /// Replace values by their ancestor `level` steps up in the column's hierarchy.
    Generalize {
        /// How many steps up.
        level: usize,
    },
}

impl Rule {
    fn describe(&self) -> String {
        match self {
            Rule::Drop {} => "dropped".into(),
            Rule::Keep {} => "kept unchanged".into(),
            Rule::Pseudonymize {} => "pseudonymized (HMAC-SHA-256 under the study key)".into(),
            Rule::Year {
                top_code_age_at: None,
            } => "reduced to the year".into(),
            Rule::Year {
                top_code_age_at: Some(d),
            } => {
                format!(
                    "reduced to the year; ages over {MAX_AGE} on {d} aggregated into one year (90 or older)"
                )
            }
            Rule::DateShift { max_days, by } => format!(
                "shifted by a keyed per-`{by}` offset of at most {max_days} days (keeps intervals; not Safe Harbor on its own)"
            ),
            Rule::Zip3 {} => "truncated to 3 digits, restricted prefixes set to 000".into(),
            Rule::TopCodeAge {} => format!("ages over {MAX_AGE} set to 90 (meaning 90 or older)"),
            Rule::Generalize { level } => format!("generalized {level} level(s) up its hierarchy"),
        }
    }
}

/// A rule as written in a policy file: a bare action name or a table.
#[derive(Deserialize)]
#[serde(untagged)]
enum RuleSpec {
    Name(String),
    Full(Rule),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    columns: BTreeMap<String, RuleSpec>,
    #[serde(default)]
    hierarchies: Option<toml::Table>,
}

/// A table's de-identification policy: one rule per column.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    rules: BTreeMap<String, Rule>,
    hierarchies: Hierarchies,
}

impl Policy {
    /// Parses a policy file's text.
    pub fn from_toml(text: &str) -> Result<Self> {
        let file: PolicyFile = toml::from_str(text).map_err(|e| Error::Policy(e.to_string()))?;
        let mut rules = BTreeMap::new();
        for (column, spec) in file.columns {
            let rule = match spec {
                RuleSpec::Full(rule) => rule,
                RuleSpec::Name(name) => match name.as_str() {
                    "drop" => Rule::Drop {},
                    "keep" => Rule::Keep {},
                    "pseudonymize" => Rule::Pseudonymize {},
                    "year" => Rule::Year {
                        top_code_age_at: None,
                    },
                    "zip3" => Rule::Zip3 {},
                    "top-code-age" => Rule::TopCodeAge {},
                    other => {
                        return Err(Error::Policy(format!(
                            "column `{column}`: unknown action {other:?} (drop, keep, pseudonymize, year, zip3, top-code-age; date-shift and generalize take parameters)"
                        )));
                    }
                },
            };
            rules.insert(column, rule);
        }
        let hierarchies = match file.hierarchies {
            Some(t) => Hierarchies::from_toml(
                &toml::to_string(&t).map_err(|e| Error::Policy(e.to_string()))?,
            )?,
            None => Hierarchies::default(),
        };
        let policy = Self { rules, hierarchies };
        policy.validate()?;
        Ok(policy)
    }

    /// Builds a policy from rules (and hierarchies for `generalize`).
    pub fn new(
        rules: impl IntoIterator<Item = (String, Rule)>,
        hierarchies: Hierarchies,
    ) -> Result<Self> {
        let policy = Self {
            rules: rules.into_iter().collect(),
            hierarchies,
        };
        policy.validate()?;
        Ok(policy)
    }

    /// The rule for `column`.
    pub fn rule(&self, column: &str) -> Option<&Rule> {
        self.rules.get(column)
    }

    fn validate(&self) -> Result<()> {
        for (column, rule) in &self.rules {
            if let Rule::Keep {} = rule
                && let Some(kind) = identifier_kind(column)
            {
                return Err(Error::Policy(format!(
                    "column `{column}` looks like a Safe Harbor identifier ({kind}) and cannot be kept; drop, pseudonymize or generalize it"
                )));
            }
            if let Rule::Generalize { .. } = rule
                && self.hierarchies.get(column).is_none()
            {
                return Err(Error::Policy(format!(
                    "column `{column}` is generalized but has no hierarchy; declare one under [hierarchies.{column}]"
                )));
            }
            if let Rule::DateShift { by, .. } = rule
                && !self.rules.contains_key(by)
            {
                return Err(Error::Policy(format!(
                    "column `{column}` is date-shifted by `{by}`, which the policy does not list"
                )));
            }
        }
        Ok(())
    }
}

/// Which of the 18 Safe Harbor identifier kinds a column name suggests.
pub fn identifier_kind(column: &str) -> Option<&'static str> {
    let c = column.to_ascii_lowercase();
    let has = |words: &[&str]| {
        words.iter().any(|w| {
            c.split(|ch: char| !ch.is_ascii_alphanumeric())
                .any(|p| p == *w)
        })
    };
    let kinds: [(&[&str], &str); 14] = [
        (
            &[
                "name",
                "family",
                "given",
                "surname",
                "firstname",
                "lastname",
            ],
            "names",
        ),
        (
            &[
                "address",
                "street",
                "city",
                "county",
                "zip",
                "postal",
                "postalcode",
                "zipcode",
                "geo",
                "latitude",
                "longitude",
            ],
            "geographic subdivisions smaller than a state",
        ),
        (
            &[
                "birth",
                "birthdate",
                "dob",
                "death",
                "admission",
                "discharge",
            ],
            "dates related to an individual",
        ),
        (
            &["phone", "telephone", "mobile", "fax"],
            "telephone and fax numbers",
        ),
        (&["email", "mail"], "email addresses"),
        (&["ssn", "social"], "social security numbers"),
        (&["mrn", "medical"], "medical record numbers"),
        (
            &["plan", "beneficiary", "insurance", "member"],
            "health plan beneficiary numbers",
        ),
        (&["account", "iban"], "account numbers"),
        (
            &["license", "licence", "certificate"],
            "certificate and licence numbers",
        ),
        (&["vin", "vehicle", "plate"], "vehicle identifiers"),
        (&["device", "serial", "udi"], "device identifiers"),
        (
            &["url", "website", "ip", "ipv4", "ipv6"],
            "URLs and IP addresses",
        ),
        (
            &[
                "biometric",
                "fingerprint",
                "voiceprint",
                "photo",
                "image",
                "face",
            ],
            "biometric identifiers and photographs",
        ),
    ];
    kinds
        .into_iter()
        .find(|(words, _)| has(words))
        .map(|(_, kind)| kind)
}

/// A study's pseudonym key: 32 secret bytes, zeroized on drop. The same
/// patient gets the same pseudonym within a study and unlinkable ones across
/// studies, because each study's key is derived separately.
pub struct PseudonymKey(zeroize::Zeroizing<[u8; 32]>);

impl PseudonymKey {
    /// Derives the key of `study` from a master secret.
    pub fn derive(master: &[u8; 32], study: &str) -> Self {
        let mut mac = <hmac::Hmac<Sha256> as KeyInit>::new_from_slice(master)
            .expect("HMAC takes any key length");
        mac.update(b"cohort/pseudonym/v1\0");
        mac.update(study.as_bytes());
        Self(zeroize::Zeroizing::new(mac.finalize().into_bytes().into()))
    }

    fn mac(&self, domain: &[u8], value: &[u8]) -> [u8; 32] {
        let mut mac = <hmac::Hmac<Sha256> as KeyInit>::new_from_slice(&self.0[..])
            .expect("HMAC takes any key length");
        mac.update(domain);
        mac.update(value);
        mac.finalize().into_bytes().into()
    }

    /// The pseudonym of `value`: 128 bits of its HMAC, hex.
    pub fn pseudonym(&self, value: &str) -> String {
        let d = self.mac(b"id\0", value.as_bytes());
        d[..16].iter().map(|b| format!("{b:02x}")).collect()
    }

    /// The date shift of the person `value`, in `[-max_days, max_days]`.
    pub fn shift_days(&self, value: &str, max_days: u32) -> i64 {
        let d = self.mac(b"date-shift\0", value.as_bytes());
        let x = u64::from_le_bytes(d[..8].try_into().expect("8 bytes"));
        let span = 2 * u64::from(max_days) + 1;
        (x % span) as i64 - i64::from(max_days)
    }
}

impl std::fmt::Debug for PseudonymKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PseudonymKey(..)")
    }
}

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

/// Applies `f` (a pure function of the value; `row` is for its errors) to
/// every non-null value read as text, once per distinct value.
fn map_text(
    name: &str,
    array: &ArrayRef,
    f: impl Fn(usize, &str) -> Result<String>,
) -> Result<ArrayRef> {
    let text = cast(array, &DataType::Utf8).map_err(|e| Error::UnsupportedType {
        column: name.into(),
        data_type: array.data_type().to_string(),
        what: format!("cannot be read as text ({e})"),
    })?;
    let s = text.as_string::<i32>();
    let mut done: HashMap<&str, String> = HashMap::new();
    let mut b = StringBuilder::with_capacity(s.len(), s.len() * 16);
    for i in 0..s.len() {
        if s.is_null(i) {
            b.append_null();
            continue;
        }
        let v = s.value(i);
        if !done.contains_key(v) {
            done.insert(v, f(i, v)?);
        }
        b.append_value(&done[v]);
    }
    Ok(Arc::new(b.finish()))
}

/// The Safe Harbor three-digit ZIP.
pub fn zip3(zip: &str) -> String {
    let digits: String = zip.chars().filter(char::is_ascii_digit).take(3).collect();
    if digits.len() < 3 || RESTRICTED_ZIP3.contains(&digits.as_str()) {
        "000".into()
    } else {
        digits
    }
}

fn generalize(name: &str, array: &ArrayRef, h: &Hierarchy, level: usize) -> Result<ArrayRef> {
    let numeric = array.data_type().is_numeric();
    map_text(name, array, |row, s| {
        let value = match (h, numeric) {
            (Hierarchy::Interval { .. }, true) => {
                Value::Number(s.parse().map_err(|_| Error::BadValue {
                    column: name.into(),
                    row,
                    message: format!("{s:?} is not a number"),
                })?)
            }
            _ => Value::Text(s),
        };
        h.generalize(name, value, level)
    })
}

fn top_code_age(name: &str, array: &ArrayRef) -> Result<ArrayRef> {
    if !array.data_type().is_numeric() {
        return Err(Error::UnsupportedType {
            column: name.into(),
            data_type: array.data_type().to_string(),
            what: "is not numeric, so ages cannot be top-coded".into(),
        });
    }
    let ints = cast(array, &DataType::Int64)?;
    let ints = ints.as_primitive::<Int64Type>();
    Ok(Arc::new(
        ints.iter()
            .map(|v| v.map(|a| a.min(MAX_AGE + 1)))
            .collect::<Int64Array>(),
    ))
}

/// Reads a date-like column as days since the Unix epoch.
fn epoch_days(name: &str, array: &ArrayRef) -> Result<Vec<Option<i64>>> {
    let days = match array.data_type() {
        DataType::Date32
        | DataType::Date64
        | DataType::Timestamp(..)
        | DataType::Utf8
        | DataType::LargeUtf8 => {
            let d = cast(array, &DataType::Date32).map_err(|e| Error::UnsupportedType {
                column: name.into(),
                data_type: array.data_type().to_string(),
                what: format!("cannot be read as dates ({e})"),
            })?;
            cast(&d, &DataType::Int64)?
        }
        other => {
            return Err(Error::UnsupportedType {
                column: name.into(),
                data_type: other.to_string(),
                what: "is not a date".into(),
            });
        }
    };
    Ok(days.as_primitive::<Int64Type>().iter().collect())
}

fn year(name: &str, array: &ArrayRef, top_code_at: Option<NaiveDate>) -> Result<ArrayRef> {
    let mut b = Int32Builder::with_capacity(array.len());
    for d in epoch_days(name, array)? {
        match d.map(date_from_unix_days) {
            None => b.append_null(),
            Some(date) => {
                let mut y = date.year();
                if let Some(at) = top_code_at
                    && at
                        .years_since(date)
                        .is_some_and(|age| i64::from(age) > MAX_AGE)
                {
                    y = at.year() - (MAX_AGE as i32 + 1);
                }
                b.append_value(y);
            }
        }
    }
    Ok(Arc::new(b.finish()))
}

fn date_shift(
    name: &str,
    array: &ArrayRef,
    owner: &ArrayRef,
    max_days: u32,
    key: &PseudonymKey,
) -> Result<ArrayRef> {
    let owner = cast(owner, &DataType::Utf8)?;
    let owner = owner.as_string::<i32>();
    let mut cache: HashMap<&str, i64> = HashMap::new();
    let shifts: Vec<i64> = (0..owner.len())
        .map(|i| {
            if owner.is_null(i) {
                return 0;
            }
            let o = owner.value(i);
            *cache
                .entry(o)
                .or_insert_with(|| key.shift_days(o, max_days))
        })
        .collect();
    if owner.null_count() > 0 && (0..owner.len()).any(|i| owner.is_null(i) && array.is_valid(i)) {
        let row = (0..owner.len())
            .find(|&i| owner.is_null(i) && array.is_valid(i))
            .unwrap_or(0);
        return Err(Error::BadValue {
            column: name.into(),
            row,
            message: "the person column is null, so the date cannot be shifted consistently".into(),
        });
    }
    match array.data_type() {
        DataType::Timestamp(unit, tz) => {
            let per_day: i64 = match unit {
                TimeUnit::Second => 86_400,
                TimeUnit::Millisecond => 86_400_000,
                TimeUnit::Microsecond => 86_400_000_000,
                TimeUnit::Nanosecond => 86_400_000_000_000,
            };
            let raw = cast(array, &DataType::Int64)?;
            let raw = raw.as_primitive::<Int64Type>();
            let shifted: Int64Array = raw
                .iter()
                .zip(&shifts)
                .map(|(v, s)| v.map(|v| v + s * per_day))
                .collect();
            Ok(cast(
                &(Arc::new(shifted) as ArrayRef),
                &DataType::Timestamp(*unit, tz.clone()),
            )?)
        }
        _ => {
            let days = epoch_days(name, array)?;
            let shifted: arrow::array::Date32Array = days
                .iter()
                .zip(&shifts)
                .map(|(d, s)| d.map(|d| (d + s) as i32))
                .collect();
            Ok(Arc::new(shifted))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
