//! The de-identification policy: one [`Rule`] per column, read from TOML and
//! checked before any data is touched.
//!
//! Validation lives here so that a policy that would keep an identifier, or
//! generalize without a hierarchy, is refused when it is loaded rather than
//! half-way through a table.

use std::collections::BTreeMap;

use chrono::NaiveDate;
use serde::{Deserialize, Serialize};

use super::actions::MAX_AGE;
use super::identifiers::identifier_kind;
use crate::error::{Error, Result};
use crate::hierarchy::Hierarchies;
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
    pub(super) fn describe(&self) -> String {
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
    pub(super) rules: BTreeMap<String, Rule>,
    pub(super) hierarchies: Hierarchies,
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
