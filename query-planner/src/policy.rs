//! The study policy: what a study's queries may see and how much one
//! patient may weigh in an answer.
//!
//! A policy is written in TOML (it is the scope part of a study proposal)
//! and checked against the schemas of the study's tables before any query
//! is planned:
//!
//! ```toml
//! privacy_unit = "patient_id"          # the column naming the patient, in every table
//!
//! [query]
//! epsilon = "0.1"                      # what a query costs unless the researcher says
//! max_epsilon = "0.5"                  # the per-query cap
//! delta = "0.0000001"                  # δ for DP key selection (needs an (ε, δ) budget)
//!
//! [contribution]
//! max_rows = 3                         # rows one patient adds to one group
//! max_groups = 2                       # groups one patient adds to
//! sampling = "reservoir"               # or { first_by = ["effective_date"] }
//!
//! [tables.patients]
//! rows_per_unit = 1                    # a tighter bound the table guarantees
//! [tables.patients.columns]
//! patient_id = { identifier = true }
//! sex = { domain = ["F", "M", "X"] }   # a public domain: GROUP BY needs no key selection
//! birth_year = { lower = 1900, upper = 2026 }
//! zip3 = {}                            # approved, no bounds: GROUP BY uses DP key selection
//! ```
//!
//! Only the listed tables and columns are visible to a query. A numeric
//! column's bounds are public and declared before any data is seen; values
//! outside them are clamped. An integer column with bounds spanning at most
//! [`IMPLICIT_DOMAIN_MAX`] values also has that range as a public domain.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::PathBuf;

use arrow::datatypes::{DataType, SchemaRef};
use cohort_anonymizer::accountant::Amount;
use datafusion::common::ScalarValue;
use serde::{Deserialize, Deserializer};

use crate::error::{Error, Result};

/// An integer column whose bounds span at most this many values has them
/// as a public domain (`GROUP BY age` over `[0, 120]` needs no key selection).
pub const IMPLICIT_DOMAIN_MAX: i64 = 1_000;

/// The largest public domain a `GROUP BY` may release (after crossing keys).
pub const DOMAIN_MAX: usize = 10_000;

/// The most decimals a column's fixed-point sums keep.
pub const PRECISION_MAX: u32 = 9;

/// The decimals a real column's sums keep unless its policy says otherwise.
pub const DEFAULT_PRECISION: u32 = 4;

/// Quantiles choose among this many evenly spaced candidates over a
/// column's bounds unless its policy lists them.
pub const DEFAULT_QUANTILE_CANDIDATES: usize = 101;

/// A study's policy, as written in TOML.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StudyPolicy {
    /// The column that names the patient (the privacy unit) in every table.
    pub privacy_unit: String,
    /// Per-query costs and cap.
    #[serde(default)]
    pub query: QueryLimits,
    /// How much one patient may contribute.
    #[serde(default)]
    pub contribution: Contribution,
    /// The study's tables, by name.
    pub tables: BTreeMap<String, TablePolicy>,
    /// How a query's work runs: its memory and when its outcome is released.
    #[serde(default)]
    pub execution: Execution,
}

/// How a query's work runs.
///
/// ```toml
/// [execution]
/// release = "deadline"     # or "immediate" (the outcome's timing is then observable)
/// deadline_ms = 1000       # the deadline's base
/// per_patient_us = 100     # added per consenting patient and study table
/// encrypted_factor = 3     # times the estimate of the encrypted work
/// memory_mb = 1024         # what one query's operators may hold
/// ```
///
/// The deadline is computed before execution from the plan and public
/// sizes (the consenting count; for encrypted columns the number of
/// consenting patients who shared a value, which is on chain), so the time
/// a researcher waits does not depend on the data. A query that overruns it
/// is answered at the deadline by the charged, data-free failure.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Execution {
    /// When the outcome is released.
    #[serde(default)]
    pub release: ReleaseTiming,
    /// The deadline's base, in milliseconds.
    #[serde(default = "default_deadline_ms")]
    pub deadline_ms: u64,
    /// Added per patient of the public population and table of the study
    /// (a query loads the whole view), in microseconds.
    #[serde(default = "default_per_patient_us")]
    pub per_patient_us: u64,
    /// The estimate of a query's encrypted work is multiplied by this.
    #[serde(default = "default_encrypted_factor")]
    pub encrypted_factor: f64,
    /// The memory one query's operators may hold, in MiB; past it the query
    /// ends with the charged failure.
    #[serde(default = "default_memory_mb")]
    pub memory_mb: u64,
    /// The public number of patients, where no consenting set defines it
    /// (`cohort query FILE`); the research path uses the consenting count.
    pub population: Option<u64>,
}

/// When a query's outcome is released.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReleaseTiming {
    /// At the deadline, never earlier.
    #[default]
    Deadline,
    /// As soon as it is ready. Its timing is then an observable that depends
    /// on the data; for trusted, local use only.
    Immediate,
}

fn default_deadline_ms() -> u64 {
    1_000
}

fn default_per_patient_us() -> u64 {
    100
}

fn default_encrypted_factor() -> f64 {
    3.0
}

fn default_memory_mb() -> u64 {
    1_024
}

impl Default for Execution {
    fn default() -> Self {
        Execution {
            release: ReleaseTiming::default(),
            deadline_ms: default_deadline_ms(),
            per_patient_us: default_per_patient_us(),
            encrypted_factor: default_encrypted_factor(),
            memory_mb: default_memory_mb(),
            population: None,
        }
    }
}

/// What one query costs by default and at most.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueryLimits {
    /// ε of a query when the researcher names none (pure and (ε, δ) budgets).
    #[serde(default, deserialize_with = "amount")]
    pub epsilon: Option<Amount>,
    /// ρ of a query when the researcher names none (zCDP budgets).
    #[serde(default, deserialize_with = "amount")]
    pub rho: Option<Amount>,
    /// δ spent by DP key selection (only (ε, δ) budgets can pay it).
    #[serde(default, deserialize_with = "amount")]
    pub delta: Option<Amount>,
    /// The most ε one query may cost.
    #[serde(default, deserialize_with = "amount")]
    pub max_epsilon: Option<Amount>,
    /// The most ρ one query may cost.
    #[serde(default, deserialize_with = "amount")]
    pub max_rho: Option<Amount>,
    /// The most δ one query may cost.
    #[serde(default, deserialize_with = "amount")]
    pub max_delta: Option<Amount>,
}

/// The bound on one patient's contribution to an aggregate.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Contribution {
    /// Rows one patient adds to one group (after joins).
    #[serde(default = "one")]
    pub max_rows: u32,
    /// Groups one patient adds to in a `GROUP BY`.
    #[serde(default = "one")]
    pub max_groups: u32,
    /// Which rows are kept when a patient has more.
    #[serde(default)]
    pub sampling: Sampling,
}

fn one() -> u32 {
    1
}

impl Default for Contribution {
    fn default() -> Self {
        Contribution {
            max_rows: 1,
            max_groups: 1,
            sampling: Sampling::default(),
        }
    }
}

/// How a patient's rows (and groups) are chosen when there are too many.
///
/// Both choices depend only on that patient's own rows, which is what the
/// sensitivity argument needs: adding or removing one patient changes no
/// other patient's kept rows.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Sampling {
    /// A uniformly random subset (the default).
    #[default]
    Reservoir,
    /// The first rows by these columns, ties broken by the rest of the
    /// row's values, so the choice is a function of the rows' content and
    /// never of their physical order. Where the columns are absent from the
    /// aggregated relation, reservoir sampling is used.
    FirstBy(Vec<String>),
}

impl fmt::Display for Sampling {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Sampling::Reservoir => f.write_str("reservoir (uniformly random)"),
            Sampling::FirstBy(columns) => write!(f, "first by {}", columns.join(", ")),
        }
    }
}

/// One table of the study.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TablePolicy {
    /// Where the table's data is, for the file-based `cohort query`
    /// (relative to the policy file). The engine's research views ignore it.
    pub source: Option<PathBuf>,
    /// At most this many rows per patient (1 for a patients table): a
    /// tighter bound than `contribution.max_rows`, enforced like it.
    pub rows_per_unit: Option<u32>,
    /// The approved columns.
    #[serde(default)]
    pub columns: BTreeMap<String, ColumnPolicy>,
}

/// What is declared about one approved column.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ColumnPolicy {
    /// Identifies a patient or a record (near-unique): never a group key.
    #[serde(default)]
    pub identifier: bool,
    /// Lower clamping bound (numeric columns).
    pub lower: Option<f64>,
    /// Upper clamping bound (numeric columns).
    pub upper: Option<f64>,
    /// The public domain of values, for `GROUP BY` without key selection.
    pub domain: Option<Vec<DomainValue>>,
    /// Decimals kept by fixed-point sums of a real column.
    pub precision: Option<u32>,
    /// The candidates a DP quantile chooses among.
    pub candidates: Option<Vec<f64>>,
    /// The column holds patient-encrypted values (`"elgamal"` for sums,
    /// `"tfhe"` for comparisons); its bounds are the plaintext's.
    pub encrypted: Option<cohort_fhe::Layer>,
}

/// A value of a public domain, as written in TOML.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum DomainValue {
    /// `true` / `false`.
    Boolean(bool),
    /// An integer.
    Integer(i64),
    /// A real number.
    Real(f64),
    /// Text (also dates, `"2026-01-01"`).
    Text(String),
}

impl fmt::Display for DomainValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DomainValue::Boolean(b) => write!(f, "{b}"),
            DomainValue::Integer(i) => write!(f, "{i}"),
            DomainValue::Real(x) => write!(f, "{x}"),
            DomainValue::Text(s) => write!(f, "{s:?}"),
        }
    }
}

/// A privacy amount written as a decimal string (`"0.1"`, exact) or a TOML
/// number (its shortest decimal, as [`Amount::from_f64_display`]).
fn amount<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Amount>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Written {
        Text(String),
        Number(f64),
    }
    let parsed = match Written::deserialize(deserializer)? {
        Written::Text(text) => text.parse::<Amount>(),
        Written::Number(x) => Amount::from_f64_display(x),
    };
    parsed.map(Some).map_err(serde::de::Error::custom)
}

impl StudyPolicy {
    /// Parses a policy from TOML.
    pub fn from_toml(text: &str) -> Result<StudyPolicy> {
        toml::from_str(text).map_err(|error| Error::Policy(error.to_string()))
    }

    /// Checks the policy against the tables' schemas and resolves what the
    /// planner needs: the approved columns of each table, typed domains,
    /// bounds and precisions.
    pub fn resolve(&self, schemas: &HashMap<String, SchemaRef>) -> Result<Scope> {
        let bad = |message: String| Error::Policy(message);
        if self.contribution.max_rows == 0 || self.contribution.max_groups == 0 {
            return Err(bad(
                "contribution.max_rows and max_groups must be at least 1".into(),
            ));
        }
        if let Sampling::FirstBy(columns) = &self.contribution.sampling
            && columns.is_empty()
        {
            return Err(bad("contribution.sampling.first_by names no column".into()));
        }
        if self.tables.is_empty() {
            return Err(bad("the study has no tables".into()));
        }
        let e = &self.execution;
        if e.memory_mb == 0 || e.memory_mb > 1 << 20 {
            return Err(bad("execution.memory_mb must be 1 to 1048576".into()));
        }
        if !(e.encrypted_factor.is_finite() && e.encrypted_factor >= 1.0) {
            return Err(bad("execution.encrypted_factor must be at least 1".into()));
        }
        if e.deadline_ms > 24 * 3_600_000 {
            return Err(bad("execution.deadline_ms must be at most a day".into()));
        }
        let mut tables = BTreeMap::new();
        for (name, table) in &self.tables {
            let schema = schemas.get(name).ok_or_else(|| {
                bad(format!(
                    "table `{name}` is in the policy but no data was given for it"
                ))
            })?;
            if !table.columns.contains_key(&self.privacy_unit) {
                return Err(bad(format!(
                    "table `{name}` must approve the privacy unit column `{}` (every study \
                     table names the patient each row belongs to)",
                    self.privacy_unit
                )));
            }
            if table.rows_per_unit == Some(0) {
                return Err(bad(format!(
                    "table `{name}`: rows_per_unit must be at least 1"
                )));
            }
            let mut columns = Vec::new();
            for (column, declared) in &table.columns {
                let field = schema.field_with_name(column).map_err(|_| {
                    bad(format!(
                        "column `{name}.{column}` is in the policy but not in the table (it has: {})",
                        schema
                            .fields()
                            .iter()
                            .map(|f| f.name().as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ))
                })?;
                let is_unit = *column == self.privacy_unit;
                let facts = resolve_column(
                    &format!("{name}.{column}"),
                    field.data_type(),
                    declared,
                    is_unit,
                )?;
                columns.push((column.clone(), facts));
            }
            tables.insert(
                name.clone(),
                ScopedTable {
                    columns,
                    rows_per_unit: table.rows_per_unit,
                },
            );
        }
        Ok(Scope {
            unit: self.privacy_unit.clone(),
            tables,
        })
    }
}

fn resolve_column(
    name: &str,
    data_type: &DataType,
    declared: &ColumnPolicy,
    is_unit: bool,
) -> Result<DeclaredColumn> {
    let bad = |message: String| Error::Policy(format!("column `{name}`: {message}"));
    let numeric = data_type.is_numeric();
    let integer = data_type.is_integer();
    let identifier = declared.identifier || is_unit;
    if identifier
        && (declared.domain.is_some() || declared.lower.is_some() || declared.upper.is_some())
    {
        return Err(bad(
            "an identifier has no bounds or public domain: it is never aggregated or grouped"
                .into(),
        ));
    }
    if let Some(layer) = declared.encrypted {
        let binary = matches!(
            data_type,
            DataType::Binary | DataType::LargeBinary | DataType::BinaryView
        );
        if identifier || declared.domain.is_some() || declared.candidates.is_some() || !binary {
            return Err(bad(format!(
                "an encrypted ({layer}) column holds ciphertexts (Binary, here {data_type}); it takes \
                 integer bounds and nothing else: no identifier, domain or candidates"
            )));
        }
        match (declared.lower, declared.upper) {
            (Some(lower), Some(upper)) if lower.fract() == 0.0 && upper.fract() == 0.0 && lower < upper => {}
            _ => return Err(bad("an encrypted column needs integer bounds lower < upper: they bound each patient's contribution and the decryption's search".into())),
        }
    }
    let bounds = match (declared.lower, declared.upper) {
        (None, None) => None,
        (Some(lower), Some(upper)) => {
            if !numeric && declared.encrypted.is_none() {
                return Err(bad(format!(
                    "bounds are for numeric columns, and this one is {data_type}"
                )));
            }
            if !(lower.is_finite() && upper.is_finite() && lower <= upper) {
                return Err(bad(format!(
                    "bounds must be finite with lower ≤ upper (got [{lower}, {upper}])"
                )));
            }
            Some(Bounds { lower, upper })
        }
        _ => return Err(bad("declare both lower and upper, or neither".into())),
    };
    let domain = match &declared.domain {
        Some(values) => {
            if values.is_empty() {
                return Err(bad("an empty domain cannot be grouped by".into()));
            }
            if values.len() > DOMAIN_MAX {
                return Err(bad(format!(
                    "a public domain may list at most {DOMAIN_MAX} values"
                )));
            }
            let mut typed = Vec::with_capacity(values.len());
            for value in values {
                typed.push(domain_value(value, data_type).map_err(|reason| {
                    bad(format!(
                        "domain value {value} does not fit type {data_type}: {reason}"
                    ))
                })?);
            }
            Some(typed)
        }
        None => match bounds {
            Some(Bounds { lower, upper })
                if integer && upper - lower < IMPLICIT_DOMAIN_MAX as f64 =>
            {
                let values = (lower.ceil() as i64..=upper.floor() as i64)
                    .map(|i| ScalarValue::Int64(Some(i)).cast_to(data_type))
                    .collect::<datafusion::common::Result<Vec<_>>>()
                    .map_err(|error| bad(error.to_string()))?;
                Some(values)
            }
            _ => None,
        },
    };
    let precision = match declared.precision {
        Some(p) if p > PRECISION_MAX => {
            return Err(bad(format!(
                "precision is at most {PRECISION_MAX} decimals"
            )));
        }
        Some(_) if !numeric => return Err(bad("precision is for numeric columns".into())),
        Some(p) => p,
        None if integer => 0,
        None => DEFAULT_PRECISION,
    };
    let candidates = match &declared.candidates {
        Some(candidates) => {
            let Some(bounds) = bounds else {
                return Err(bad("quantile candidates need bounds".into()));
            };
            if candidates.is_empty()
                || candidates.windows(2).any(|w| w[0] >= w[1])
                || candidates
                    .iter()
                    .any(|c| !c.is_finite() || *c < bounds.lower || *c > bounds.upper)
            {
                return Err(bad(
                    "quantile candidates must be strictly increasing and within the bounds".into(),
                ));
            }
            Some(candidates.clone())
        }
        None => None,
    };
    Ok(DeclaredColumn {
        data_type: data_type.clone(),
        identifier,
        bounds,
        domain,
        precision,
        candidates,
        encrypted: declared.encrypted,
    })
}

fn domain_value(
    value: &DomainValue,
    data_type: &DataType,
) -> std::result::Result<ScalarValue, String> {
    let numeric = matches!(value, DomainValue::Integer(_) | DomainValue::Real(_));
    if numeric != data_type.is_numeric() {
        return Err(if numeric {
            "write it as text (quoted)".into()
        } else {
            "write it as a number (unquoted)".into()
        });
    }
    let scalar = match value {
        DomainValue::Boolean(b) => ScalarValue::Boolean(Some(*b)),
        DomainValue::Integer(i) => ScalarValue::Int64(Some(*i)),
        DomainValue::Real(x) => ScalarValue::Float64(Some(*x)),
        DomainValue::Text(s) => {
            return ScalarValue::try_from_string(s.clone(), data_type)
                .map_err(|error| error.to_string());
        }
    };
    let cast = scalar
        .cast_to(data_type)
        .map_err(|error| error.to_string())?;
    // A lossy cast (2.5 into an integer column) would silently change the domain.
    let back = cast
        .cast_to(&scalar.data_type())
        .map_err(|error| error.to_string())?;
    if back != scalar {
        return Err("it changes when converted".into());
    }
    Ok(cast)
}

/// Declared clamping bounds of a numeric column (public).
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct Bounds {
    /// Smallest value kept; smaller values are raised to it.
    pub lower: f64,
    /// Largest value kept; larger values are lowered to it.
    pub upper: f64,
}

impl Bounds {
    /// The largest magnitude a clamped value can have.
    pub fn magnitude(&self) -> f64 {
        self.lower.abs().max(self.upper.abs())
    }
}

impl fmt::Display for Bounds {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{}, {}]", self.lower, self.upper)
    }
}

/// A policy resolved against the tables: what the planner enforces.
#[derive(Clone, Debug)]
pub struct Scope {
    /// The privacy unit column's name.
    pub unit: String,
    /// The study tables.
    pub tables: BTreeMap<String, ScopedTable>,
}

/// A study table as the planner sees it.
#[derive(Clone, Debug)]
pub struct ScopedTable {
    /// The approved columns, in the policy's order.
    pub columns: Vec<(String, DeclaredColumn)>,
    /// A declared bound on rows per patient.
    pub rows_per_unit: Option<u32>,
}

impl ScopedTable {
    /// The declaration of an approved column.
    pub fn column(&self, name: &str) -> Option<&DeclaredColumn> {
        self.columns
            .iter()
            .find(|(column, _)| column == name)
            .map(|(_, declared)| declared)
    }
}

/// What the policy says of one approved column, typed for its table.
#[derive(Clone, Debug)]
pub struct DeclaredColumn {
    /// The column's Arrow type.
    pub data_type: DataType,
    /// The privacy unit or a near-unique column: never grouped by.
    pub identifier: bool,
    /// Clamping bounds.
    pub bounds: Option<Bounds>,
    /// Public domain (declared, or the integer range of the bounds).
    pub domain: Option<Vec<ScalarValue>>,
    /// Decimals kept by fixed-point sums.
    pub precision: u32,
    /// Declared quantile candidates.
    pub candidates: Option<Vec<f64>>,
    /// The encryption layer of a patient-encrypted column.
    pub encrypted: Option<cohort_fhe::Layer>,
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::datatypes::{Field, Schema};

    use super::*;

    fn schemas() -> HashMap<String, SchemaRef> {
        let patients = Schema::new(vec![
            Field::new("patient_id", DataType::Utf8, false),
            Field::new("sex", DataType::Utf8, true),
            Field::new("age", DataType::Int64, true),
            Field::new("hba1c", DataType::Float64, true),
            Field::new("ssn", DataType::Utf8, true),
        ]);
        HashMap::from([("patients".to_string(), Arc::new(patients))])
    }

    fn resolve(toml: &str) -> Result<Scope> {
        StudyPolicy::from_toml(toml)?.resolve(&schemas())
    }

    const GOOD: &str = r#"
        privacy_unit = "patient_id"
        [query]
        epsilon = "0.1"
        max_epsilon = 0.5
        [contribution]
        max_rows = 3
        sampling = { first_by = ["age"] }
        [tables.patients]
        rows_per_unit = 1
        [tables.patients.columns]
        patient_id = {}
        sex = { domain = ["F", "M"] }
        age = { lower = 0, upper = 110 }
        hba1c = { lower = 4, upper = 14, candidates = [5.0, 6.5, 8.0] }
    "#;

    #[test]
    fn a_good_policy_resolves_with_types_domains_and_defaults() {
        let policy = StudyPolicy::from_toml(GOOD).unwrap();
        assert_eq!(policy.query.epsilon, Some("0.1".parse().unwrap()));
        assert_eq!(policy.query.max_epsilon, Some("0.5".parse().unwrap()));
        assert_eq!(policy.contribution.max_groups, 1);
        assert_eq!(
            policy.contribution.sampling,
            Sampling::FirstBy(vec!["age".into()])
        );
        let scope = policy.resolve(&schemas()).unwrap();
        let table = &scope.tables["patients"];
        assert_eq!(table.rows_per_unit, Some(1));
        assert!(table.column("patient_id").unwrap().identifier);
        assert!(table.column("ssn").is_none(), "not approved");
        let sex = table.column("sex").unwrap();
        assert_eq!(
            sex.domain.as_deref().unwrap(),
            [ScalarValue::from("F"), ScalarValue::from("M")]
        );
        let age = table.column("age").unwrap();
        assert_eq!(age.precision, 0);
        assert_eq!(
            age.domain.as_ref().unwrap().len(),
            111,
            "implicit integer domain"
        );
        let hba1c = table.column("hba1c").unwrap();
        assert_eq!(hba1c.precision, DEFAULT_PRECISION);
        assert!(hba1c.domain.is_none(), "no implicit domain for reals");
    }

    #[test]
    fn mistakes_are_named() {
        let cases = [
            (
                GOOD.replace("ssn", "x").replace("sex = {", "nope = {"),
                "`patients.nope`",
            ),
            (GOOD.replace("patient_id = {}", ""), "privacy unit"),
            (
                GOOD.replace("lower = 0, upper = 110", "lower = 5, upper = 1"),
                "lower ≤ upper",
            ),
            (
                GOOD.replace("lower = 0, upper = 110", "lower = 0"),
                "both lower and upper",
            ),
            (GOOD.replace("[\"F\", \"M\"]", "[1.5]"), "does not fit"),
            (GOOD.replace("[\"F\", \"M\"]", "[]"), "empty domain"),
            (
                GOOD.replace("patient_id = {}", "patient_id = { lower = 1, upper = 2 }"),
                "identifier",
            ),
            (
                GOOD.replace("[5.0, 6.5, 8.0]", "[6.5, 5.0]"),
                "strictly increasing",
            ),
            (
                GOOD.replace("[5.0, 6.5, 8.0]", "[5.0, 20.0]"),
                "within the bounds",
            ),
            (GOOD.replace("max_rows = 3", "max_rows = 0"), "at least 1"),
            (
                GOOD.replace("epsilon = \"0.1\"", "epsilon = \"-1\""),
                "never negative",
            ),
            (
                GOOD.replace("[query]", "[query]\nbogus = 1"),
                "unknown field",
            ),
            (
                GOOD.replace("rows_per_unit = 1", "rows_per_unit = 0"),
                "rows_per_unit",
            ),
            (
                GOOD.replace(
                    "sex = { domain = [\"F\", \"M\"] }",
                    "sex = { lower = 0, upper = 1 }",
                ),
                "numeric",
            ),
        ];
        for (toml, expected) in cases {
            let message = resolve(&toml).unwrap_err().to_string();
            assert!(
                message.contains(expected),
                "{expected:?} not in {message:?}"
            );
        }
        let missing = StudyPolicy::from_toml(GOOD)
            .unwrap()
            .resolve(&HashMap::new())
            .unwrap_err()
            .to_string();
        assert!(missing.contains("no data was given"), "{missing}");
    }
}
