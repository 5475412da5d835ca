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

mod file;
mod resolve;
mod scope;

pub use resolve::PublicTables;

pub use file::{
    ColumnPolicy, Contribution, Convention, Disclosure, DomainFrom, DomainValue, Execution,
    PublicTablePolicy, QueryLimits, ReleaseTiming, Sampling, StudyPolicy, TablePolicy,
};
pub use scope::{
    Bounds, DEFAULT_PRECISION, DEFAULT_QUANTILE_CANDIDATES, DOMAIN_MAX, DeclaredColumn,
    IMPLICIT_DOMAIN_MAX, PRECISION_MAX, Scope, ScopedTable, SmallCells,
};

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::Arc;

    use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
    use datafusion::common::ScalarValue;

    use super::*;
    use crate::error::Result;

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
