//! The policy file as written: every TOML section, its fields and defaults.
//!
//! Parsing only: nothing here looks at the data. What the fields mean for a
//! query is decided when the policy is resolved against the tables' schemas.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

use cohort_anonymizer::accountant::Amount;
use serde::{Deserialize, Deserializer};

use crate::error::{Error, Result};
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
    /// Tables that hold no patient's data (a vocabulary such as OMOP's
    /// `concept`), by name: read at no privacy cost, joinable to study
    /// tables, usable as GROUP BY domains.
    #[serde(default)]
    pub public: BTreeMap<String, PublicTablePolicy>,
    /// Small-cell rules applied to noisy counts after the noise.
    #[serde(default)]
    pub disclosure: Option<Disclosure>,
}

/// A public table, as declared.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublicTablePolicy {
    /// Where its data is, for the file-based `cohort query` (relative to
    /// the policy file). The engine supplies its own vocabularies.
    pub source: Option<PathBuf>,
}

/// The small-cell conventions researchers know, as post-processing of
/// noisy counts: they cost no privacy and protect nothing DP does not
/// already protect, but they make outputs acceptable where those rules are
/// the norm (an output checker, a data-use agreement).
///
/// ```toml
/// [disclosure]
/// convention = "opensafely"   # or "ohdsi", "all_of_us"
/// # or, instead of a convention:
/// round_to = 5                # counts rounded to the nearest multiple
/// suppress_below = 8          # a group whose noisy count is below this is withheld
/// ```
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Disclosure {
    /// A named convention.
    pub convention: Option<Convention>,
    /// Counts are rounded to the nearest multiple of this.
    pub round_to: Option<u32>,
    /// A group whose noisy count is below this is withheld (all its values NULL).
    pub suppress_below: Option<u32>,
}

/// A published small-cell convention.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Convention {
    /// OpenSAFELY: counts of 7 or fewer redacted, the rest rounded to 5.
    Opensafely,
    /// OHDSI (ATLAS, Achilles results): counts below 5 suppressed.
    Ohdsi,
    /// All of Us: counts below 20 withheld.
    AllOfUs,
}

/// A column's public domain taken from a public table: the distinct values
/// of `table.column`, optionally only on rows whose columns equal `where`.
///
/// ```toml
/// condition_concept_id = { domain_from = { table = "concept", column = "concept_id", where = { domain_id = "Condition" } } }
/// ```
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DomainFrom {
    /// The public table.
    pub table: String,
    /// Its column holding the values.
    pub column: String,
    /// Equalities a row must meet.
    #[serde(default, rename = "where")]
    pub filter: BTreeMap<String, DomainValue>,
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
    /// The public domain, read from a public table.
    pub domain_from: Option<DomainFrom>,
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
}
