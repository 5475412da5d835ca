//! The study file: what a researcher proposes and stewards approve.
//!
//! One TOML file holds the study's terms (`[study]`), its privacy budget
//! (`[budget]`), optionally what a k-anonymous extract contains
//! (`[release]`), and, at the top level, the query planner's
//! [`StudyPolicy`]: the tables and columns of the research view with their
//! bounds, the per-query cost and cap, the contribution bounds. The hash of
//! the whole file is the proposal's `scopeHash` on chain, so the engine
//! answers only under the exact file the stewards approved.
//!
//! ```toml
//! [study]
//! title = "Glycaemic control in type 2 diabetes"
//! purpose = "How HbA1c and blood pressure vary with age and sex"
//! purposes = ["research"]            # what a patient's consent must cover
//! duration_days = 365
//! escrow = "1 ether"                 # compensation, sent with the proposal
//! fee_per_epsilon = "0.02 ether"     # a query's fee per ε (or ρ) it charges, shared
//!                                    # equally by every consenting patient
//! microdata = true                   # k-anonymous extracts may be released
//!
//! [budget]
//! epsilon = "3"                      # or epsilon + delta, or rho
//!
//! [release]
//! table = "patients"
//! quasi_identifiers = ["birth_date", "gender", "zip"]
//! sensitive = "race"
//! min_k = 10                         # the smallest k an extract may have (on chain)
//! max_extracts = 2                   # extracts the study may ever release (on chain)
//!
//! privacy_unit = "patient_id"
//! [query]
//! epsilon = "0.5"
//! max_epsilon = "1"
//! [tables.patients.columns]
//! patient_id = { identifier = true }
//! gender = { domain = ["female", "male", "other", "unknown"] }
//! ```

use cohort_anonymizer::accountant::{Amount, Budget};
use cohort_ledger_bridge::alloy::primitives::{B256, U256, keccak256};
use cohort_ledger_bridge::contracts::ResearchStudy;
use cohort_query_planner::StudyPolicy;
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// The purposes a consent may cover, as the bits of the on-chain mask.
pub const PURPOSES: [(&str, u64); 4] = [
    ("research", 1),
    ("public-health", 2),
    ("commercial", 4),
    ("genetic", 8),
];

/// What an OMOP study file must hold: `person_id` as the privacy unit,
/// no encrypted columns and no extract (both read cohort's own tables), a
/// date shift of at most a year.
fn omop_rules(terms: &Terms, scope: &StudyPolicy, release: bool) -> Result<()> {
    let invalid = |e: &str| Error::Invalid(format!("study file: {e}"));
    if scope.privacy_unit != "person_id" {
        return Err(invalid(&format!(
            "an OMOP study's privacy unit is `person_id` (this one names `{}`)",
            scope.privacy_unit
        )));
    }
    if let Some(days) = terms.date_shift_days
        && !(1..=365).contains(&days)
    {
        return Err(invalid("[study] date_shift_days must be 1 to 365"));
    }
    if release || terms.microdata {
        return Err(invalid(
            "k-anonymous extracts are cut from cohort's own tables: an OMOP study has no \
             [release] and no `microdata = true`",
        ));
    }
    for (table, policy) in &scope.tables {
        if let Some((column, _)) = policy.columns.iter().find(|(_, c)| c.encrypted.is_some()) {
            return Err(invalid(&format!(
                "`{table}.{column}`: encrypted columns are shared into cohort's own tables, \
                 not an OMOP view"
            )));
        }
    }
    Ok(())
}

/// The bit mask of `names`.
pub fn purpose_mask(names: &[String]) -> Result<U256> {
    let mut mask = 0u64;
    for name in names {
        let bit = PURPOSES
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, b)| *b)
            .ok_or_else(|| {
                let known: Vec<&str> = PURPOSES.iter().map(|(n, _)| *n).collect();
                Error::Invalid(format!(
                    "unknown purpose `{name}`; purposes are {}",
                    known.join(", ")
                ))
            })?;
        mask |= bit;
    }
    if mask == 0 {
        return Err(Error::Invalid("name at least one purpose".into()));
    }
    Ok(U256::from(mask))
}

/// The names of the purposes in `mask`.
pub fn purpose_names(mask: U256) -> Vec<String> {
    PURPOSES
        .iter()
        .filter(|(_, bit)| mask & U256::from(*bit) != U256::ZERO)
        .map(|(n, _)| n.to_string())
        .collect()
}

/// `[study]`: the terms.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Terms {
    /// A short title.
    pub title: String,
    /// What the study is for (hashed on chain; shown to patients).
    pub purpose: String,
    /// The purposes a consent must cover.
    #[serde(default = "default_purposes")]
    pub purposes: Vec<String>,
    /// How long queries may run after approval.
    pub duration_days: u32,
    /// The compensation escrow sent with the proposal (`"1 ether"`).
    #[serde(default = "zero_wei")]
    pub escrow: String,
    /// What a query pays per unit of ε (or ρ) it charges (`"0.02 ether"`),
    /// shared equally by every patient of the consenting set at the time of
    /// the query: everyone in the data bears a query's privacy loss.
    #[serde(default = "zero_wei")]
    pub fee_per_epsilon: String,
    /// Refused with the reason: fees were once per query and paid to the
    /// patients whose rows answered, which made the payment a release.
    #[serde(default, skip_serializing)]
    fee_per_query: Option<String>,
    /// Whether k-anonymous extracts may be released.
    #[serde(default)]
    pub microdata: bool,
    /// Where the study is conducted (an ISO 3166 code, `DE` or `US-CA`):
    /// with a deployment geography policy, its view holds a consenting
    /// patient only if the policy lets all their records into a study of
    /// this jurisdiction and they have not refused cross-border research
    /// (`access::geo`). Absent: the deployment default.
    #[serde(default)]
    pub jurisdiction: Option<String>,
    /// The view's data model: cohort's own tables (`"cohort"`, the
    /// default) or OMOP CDM 5.4 (`"omop"`, docs/OMOP.md).
    #[serde(default)]
    pub data_model: DataModel,
    /// OMOP views only: shift each person's dates by a keyed offset of at
    /// most this many days instead of keeping only their years (Safe
    /// Harbor). Intervals within a person survive; this is not Safe Harbor
    /// on its own (an expert determination is the usual basis).
    #[serde(default)]
    pub date_shift_days: Option<u32>,
}

/// The tables a study's view offers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DataModel {
    /// `patients`, `observations`, `conditions`, `encounters`, `medications`.
    #[default]
    Cohort,
    /// OMOP CDM 5.4, with its vocabulary as public tables.
    Omop,
}

fn default_purposes() -> Vec<String> {
    vec!["research".into()]
}

fn zero_wei() -> String {
    "0 wei".into()
}

fn default_min_k() -> u32 {
    5
}

fn one_extract() -> u32 {
    1
}

/// `[budget]`: the study's whole privacy budget.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct BudgetSpec {
    epsilon: Option<Amount>,
    delta: Option<Amount>,
    rho: Option<Amount>,
}

/// `[release]`: what a k-anonymous extract holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReleaseSpec {
    /// The view table it is cut from.
    pub table: String,
    /// Released generalized.
    pub quasi_identifiers: Vec<String>,
    /// Released as is; the column l-diversity is measured on.
    pub sensitive: Option<String>,
    /// Other view columns released unchanged.
    #[serde(default)]
    pub keep: Vec<String>,
    /// The largest fraction of rows that may be suppressed.
    #[serde(default)]
    pub suppression: f64,
    /// The smallest k an extract may have (recorded on chain).
    #[serde(default = "default_min_k")]
    pub min_k: u32,
    /// How many extracts the study may ever release (recorded on chain).
    #[serde(default = "one_extract")]
    pub max_extracts: u32,
    /// Generalization hierarchies (the anonymizer's TOML format).
    #[serde(default)]
    pub hierarchies: Option<toml::Table>,
}

/// A parsed study file.
#[derive(Debug, Clone)]
pub struct StudyFile {
    /// The terms.
    pub terms: Terms,
    /// The budget.
    pub budget: Budget,
    /// The extract, when microdata may be released.
    pub release: Option<ReleaseSpec>,
    /// The planner's policy: the view's tables, columns, bounds, costs.
    pub scope: StudyPolicy,
    /// The file's text, exactly as proposed.
    pub text: String,
}

impl StudyFile {
    /// Parses and checks a study file.
    pub fn parse(text: &str) -> Result<StudyFile> {
        let invalid = |e: &dyn std::fmt::Display| Error::Invalid(format!("study file: {e}"));
        let mut table: toml::Table = toml::from_str(text).map_err(|e| invalid(&e))?;
        let mut take = |name: &str| table.remove(name);
        let terms: Terms = take("study")
            .ok_or_else(|| invalid(&"no [study] table (title, purpose, duration_days, ...)"))?
            .try_into()
            .map_err(|e| invalid(&format_args!("[study]: {e}")))?;
        let budget: BudgetSpec = take("budget")
            .ok_or_else(|| invalid(&"no [budget] table (epsilon, delta or rho)"))?
            .try_into()
            .map_err(|e| invalid(&format_args!("[budget]: {e}")))?;
        let release: Option<ReleaseSpec> = take("release")
            .map(|v| v.try_into())
            .transpose()
            .map_err(|e| invalid(&format_args!("[release]: {e}")))?;
        let scope_text = toml::to_string(&table).map_err(|e| invalid(&e))?;
        let scope = StudyPolicy::from_toml(&scope_text)?;

        let budget = match (budget.epsilon, budget.delta, budget.rho) {
            (Some(epsilon), None, None) => Budget::Pure { epsilon },
            (Some(epsilon), Some(delta), None) => Budget::Approx { epsilon, delta },
            (None, None, Some(rho)) => Budget::Zcdp { rho },
            _ => {
                return Err(invalid(
                    &"[budget] holds `epsilon`, `epsilon` and `delta`, or `rho`",
                ));
            }
        };
        if terms.title.trim().is_empty() || terms.purpose.trim().is_empty() {
            return Err(invalid(&"[study] needs a title and a purpose"));
        }
        if terms.duration_days == 0 || terms.duration_days > 3_650 {
            return Err(invalid(&"[study] duration_days must be 1 to 3650"));
        }
        purpose_mask(&terms.purposes)?;
        parse_wei("escrow", &terms.escrow)?;
        if terms.fee_per_query.is_some() {
            return Err(invalid(
                &"[study] fee_per_query is no longer accepted: a query's fee is priced by the \
                  privacy loss it charges and shared by every consenting patient; write \
                  fee_per_epsilon = \"<wei per ε>\" instead",
            ));
        }
        parse_wei("fee_per_epsilon", &terms.fee_per_epsilon)?;
        if let Some(j) = &terms.jurisdiction {
            crate::access::geo::Jurisdiction::parse(j)
                .map_err(|e| invalid(&format_args!("[study] jurisdiction: {e}")))?;
        }
        if terms.data_model == DataModel::Omop {
            omop_rules(&terms, &scope, release.is_some())?;
        } else if terms.date_shift_days.is_some() {
            return Err(invalid(
                &"[study] date_shift_days applies to OMOP views (data_model = \"omop\"); the \
                  cohort view keeps Safe Harbor years",
            ));
        }
        if release.is_none() && terms.microdata {
            return Err(invalid(
                &"`microdata = true` needs a [release] table naming the extract's columns, \
                  min_k and max_extracts",
            ));
        }
        if release.is_some() && !terms.microdata {
            return Err(invalid(
                &"a [release] table needs `microdata = true` in [study]",
            ));
        }
        if let Some(r) = &release {
            if !scope.tables.contains_key(&r.table) {
                return Err(invalid(&format_args!(
                    "[release] table `{}` is not a table of the study",
                    r.table
                )));
            }
            if !(0.0..=0.5).contains(&r.suppression) {
                return Err(invalid(&"[release] suppression must be within [0, 0.5]"));
            }
            if r.min_k < 2 {
                return Err(invalid(&"[release] min_k must be at least 2"));
            }
            if r.max_extracts == 0 {
                return Err(invalid(&"[release] max_extracts must be at least 1"));
            }
        }
        let file = StudyFile {
            terms,
            budget,
            release,
            scope,
            text: text.to_string(),
        };
        file.proposal()?;
        Ok(file)
    }

    /// The hash the proposal commits to: the whole file.
    pub fn scope_hash(&self) -> B256 {
        keccak256(self.text.as_bytes())
    }

    /// The escrow in wei.
    pub fn escrow(&self) -> U256 {
        parse_wei("escrow", &self.terms.escrow).expect("checked when parsed")
    }

    /// The fee per unit of ε (or ρ) in wei.
    pub fn fee_per_epsilon(&self) -> U256 {
        parse_wei("fee_per_epsilon", &self.terms.fee_per_epsilon).expect("checked when parsed")
    }

    /// The on-chain proposal.
    pub fn proposal(&self) -> Result<ResearchStudy::Proposal> {
        let q = &self.scope.query;
        let over = |what: &str| {
            Error::Invalid(format!(
                "study file: [query] {what} is larger than the study's budget"
            ))
        };
        let (kind, budget, delta_budget, cap, delta_cap) = match self.budget {
            Budget::Pure { epsilon } => (0u8, epsilon, Amount::ZERO, q.max_epsilon, None),
            Budget::Approx { epsilon, delta } => (
                1u8,
                epsilon,
                delta,
                q.max_epsilon,
                q.max_delta.or(Some(delta)),
            ),
            Budget::Zcdp { rho } => (2u8, rho, Amount::ZERO, q.max_rho, None),
        };
        let cap = cap.unwrap_or(budget);
        if cap > budget {
            return Err(over("the per-query cap"));
        }
        let delta_cap = delta_cap.unwrap_or(Amount::ZERO);
        if delta_cap > delta_budget {
            return Err(over("max_delta"));
        }
        Ok(ResearchStudy::Proposal {
            purposeHash: keccak256(self.terms.purpose.as_bytes()),
            scopeHash: self.scope_hash(),
            purposes: purpose_mask(&self.terms.purposes)?,
            kind,
            budget: budget.units(),
            deltaBudget: delta_budget.units(),
            queryCap: cap.units(),
            deltaQueryCap: delta_cap.units(),
            duration: u64::from(self.terms.duration_days) * 86_400,
            microdata: self.terms.microdata,
            feePerUnit: self.fee_per_epsilon(),
            minK: self.release.as_ref().map_or(0, |r| r.min_k),
            maxExtracts: self.release.as_ref().map_or(0, |r| r.max_extracts),
        })
    }
}

/// Wei from `"1.5 ether"`, `"20 gwei"` or `"1000 wei"`.
pub fn parse_wei(field: &str, text: &str) -> Result<U256> {
    let bad = |why: String| Error::Invalid(format!("{field} `{text}`: {why}"));
    let (number, unit) = text
        .trim()
        .split_once(char::is_whitespace)
        .ok_or_else(|| bad("write an amount and a unit, e.g. \"0.5 ether\"".into()))?;
    let unit = unit.trim();
    if !["ether", "gwei", "wei"].contains(&unit) {
        return Err(bad(format!("unit `{unit}` is not ether, gwei or wei")));
    }
    cohort_ledger_bridge::alloy::primitives::utils::parse_units(number, unit)
        .map(Into::into)
        .map_err(|e| bad(e.to_string()))
}

/// Wei as ether for people: `0.01 ether`.
pub fn format_wei(wei: U256) -> String {
    let text = cohort_ledger_bridge::alloy::primitives::utils::format_ether(wei);
    let text = if text.contains('.') {
        text.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        text
    };
    format!("{text} ether")
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = r#"
privacy_unit = "patient_id"
[study]
title = "t"
purpose = "p"
duration_days = 30
escrow = "1 ether"
fee_per_epsilon = "0.01 ether"
[budget]
epsilon = "2"
[query]
epsilon = "0.5"
max_epsilon = "1"
[tables.patients.columns]
patient_id = { identifier = true }
"#;

    #[test]
    fn a_study_file_gives_its_proposal() {
        let f = StudyFile::parse(FILE).unwrap();
        let p = f.proposal().unwrap();
        assert_eq!(p.budget, 2 * cohort_anonymizer::accountant::UNITS_PER_ONE);
        assert_eq!(p.queryCap, cohort_anonymizer::accountant::UNITS_PER_ONE);
        assert_eq!(p.purposes, U256::from(1));
        assert_eq!(p.duration, 30 * 86_400);
        assert_eq!(f.escrow(), U256::from(10u64.pow(18)));
        assert_eq!(f.fee_per_epsilon(), U256::from(10u64.pow(16)));
        assert_eq!(p.feePerUnit, U256::from(10u64.pow(16)));
        assert_eq!((p.minK, p.maxExtracts), (0, 0), "no microdata");
        assert_eq!(p.scopeHash, keccak256(FILE.as_bytes()));
        assert_eq!(format_wei(f.fee_per_epsilon()), "0.01 ether");
    }

    #[test]
    fn the_example_omop_study_parses() {
        let f = StudyFile::parse(crate::research::omop::EXAMPLE_STUDY).unwrap();
        assert_eq!(f.terms.data_model, DataModel::Omop);
        assert_eq!(f.scope.tables.len(), 8);
        assert!(f.scope.disclosure.is_some());
    }

    #[test]
    fn bad_study_files_are_refused_by_name() {
        let cases = [
            (
                FILE.replace("max_epsilon = \"1\"", "max_epsilon = \"3\""),
                "per-query cap",
            ),
            (
                FILE.replace("escrow = \"1 ether\"", "escrow = \"1 dollar\""),
                "escrow",
            ),
            (
                FILE.replace("[budget]\nepsilon = \"2\"", "[budget]"),
                "[budget]",
            ),
            (
                FILE.replace("duration_days = 30", "duration_days = 0"),
                "duration_days",
            ),
            (
                FILE.replace("title = \"t\"", "title = \"t\"\ncolour = 1"),
                "colour",
            ),
            (
                format!("{FILE}\n[release]\ntable = \"patients\"\nquasi_identifiers = []"),
                "microdata",
            ),
            (
                FILE.replace("fee_per_epsilon", "fee_per_query"),
                "fee_per_epsilon",
            ),
            (
                FILE.replace("title = \"t\"", "title = \"t\"\ndata_model = \"omop\""),
                "privacy unit is `person_id`",
            ),
            (
                FILE.replace("title = \"t\"", "title = \"t\"\ndate_shift_days = 30"),
                "date_shift_days applies to OMOP views",
            ),
            (
                crate::research::omop::EXAMPLE_STUDY.replace(
                    "data_model = \"omop\"",
                    "data_model = \"omop\"\ndate_shift_days = 400",
                ),
                "date_shift_days must be 1 to 365",
            ),
            (
                crate::research::omop::EXAMPLE_STUDY
                    .replace("data_model = \"omop\"", "data_model = \"fhir\""),
                "data_model",
            ),
            (
                format!(
                    "{}\n[release]\ntable = \"patients\"\nquasi_identifiers = []\nmin_k = 1",
                    FILE.replace("duration_days = 30", "duration_days = 30\nmicrodata = true")
                ),
                "min_k",
            ),
        ];
        for (text, needle) in cases {
            let e = StudyFile::parse(&text).unwrap_err().to_string();
            assert!(e.contains(needle), "`{e}` does not name `{needle}`");
        }
        assert!(purpose_mask(&["astrology".into()]).is_err());
    }
}
