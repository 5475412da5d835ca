//! Generalization hierarchies, declared in TOML, one table per column:
//!
//! ```toml
//! [age]
//! kind = "interval"      # numeric bands, nested: each width a multiple of the previous
//! widths = [5, 10, 20]
//! origin = 0             # band boundaries at origin + i * width
//!
//! [birth_date]
//! kind = "date"          # 2026-03-14 -> 2026-03 -> 2026 -> *
//!
//! [zip]
//! kind = "prefix"        # 02139 -> 0213* -> 021** -> ... -> *
//! min_length = 3         # optional: the shortest prefix kept before `*`
//!
//! [race]
//! kind = "tree"          # node -> children; the one node nobody lists is the root
//! [race.tree]
//! "*" = ["White", "Non-white"]
//! "Non-white" = ["Black", "Asian", "Other"]
//! ```
//!
//! A hierarchy gives every value a path of ever coarser labels ending at `*`.
//! Mondrian works on a [`DomainTree`]: the hierarchy instantiated over a
//! column's values, with leaves numbered in depth-first order so that every
//! node covers a contiguous range of leaf ids.
//!
//! The parts: the declarations and their labels (`declared`), reading
//! values (`values`), and the instantiated [`DomainTree`] (`domain_tree`).

/// The hierarchies of cohort's research views (ICD-10-CM codes up to their
/// chapters, OMB race groups, Safe Harbor outputs), as shipped in
/// `anonymizer/hierarchies/cohort.toml`. The OMOP vocabulary's
/// `concept_ancestor` is built from its ICD-10-CM tree.
pub const COHORT_HIERARCHIES: &str = include_str!("../hierarchies/cohort.toml");

mod declared;
mod domain_tree;
mod values;

pub use declared::{Hierarchies, Hierarchy, ROOT};
pub use domain_tree::DomainTree;
pub use values::Value;
pub(crate) use values::{date_from_unix_days, format_number};

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = r#"
[age]
kind = "interval"
widths = [5, 10, 20]

[birth_date]
kind = "date"

[zip]
kind = "prefix"
min_length = 2

[race]
kind = "tree"
[race.tree]
"*" = ["White", "Non-white"]
"Non-white" = ["Black", "Asian", "Other"]
"#;

    #[test]
    fn each_kind_generalizes_up_to_the_root() {
        let h = Hierarchies::from_toml(FILE).unwrap();
        let age = h.get("age").unwrap();
        assert_eq!(
            age.ancestors("age", Value::Number(37.0)).unwrap(),
            ["35-39", "30-39", "20-39", "*"]
        );
        let d = h.get("birth_date").unwrap();
        assert_eq!(
            d.ancestors("birth_date", Value::Text("1957-03-14"))
                .unwrap(),
            ["1957-03", "1957", "*"]
        );
        let zip = h.get("zip").unwrap();
        assert_eq!(
            zip.ancestors("zip", Value::Text("02139")).unwrap(),
            ["0213*", "021**", "02***", "*"]
        );
        let race = h.get("race").unwrap();
        assert_eq!(
            race.ancestors("race", Value::Text("Asian")).unwrap(),
            ["Non-white", "*"]
        );
        assert_eq!(
            race.generalize("race", Value::Text("Asian"), 0).unwrap(),
            "Asian"
        );
        assert_eq!(
            race.generalize("race", Value::Text("Asian"), 5).unwrap(),
            "*"
        );
    }

    #[test]
    fn malformed_declarations_are_refused_with_the_reason() {
        let cases = [
            (
                "[a]\nkind = \"interval\"\nwidths = [5, 7]",
                "not a multiple",
            ),
            ("[a]\nkind = \"interval\"\nwidths = []", "empty"),
            (
                "[a]\nkind = \"tree\"\n[a.tree]\nx = [\"y\"]\nz = [\"w\"]",
                "2 roots",
            ),
            (
                "[a]\nkind = \"tree\"\n[a.tree]\nx = [\"y\"]\nz = [\"y\"]",
                "two parents",
            ),
            (
                "[a]\nkind = \"tree\"\n[a.tree]\nx = [\"y\"]\ny = [\"x\"]",
                "cycle",
            ),
            ("[a]\nkind = \"circle\"", "unknown variant"),
            ("[a]\nkind = \"date\"\nwidth = 3", "unknown field"),
        ];
        for (text, expected) in cases {
            let err = Hierarchies::from_toml(text).unwrap_err().to_string();
            assert!(err.contains(expected), "{text:?} gave {err:?}");
        }
    }

    #[test]
    fn a_value_outside_a_tree_is_named() {
        let h = Hierarchies::from_toml(FILE).unwrap();
        let err = h
            .get("race")
            .unwrap()
            .ancestors("race", Value::Text("Martian"))
            .unwrap_err();
        assert!(err.to_string().contains("\"Martian\""), "{err}");
    }

    #[test]
    fn domain_tree_numbers_leaves_depth_first_and_measures_penalties() {
        let h = Hierarchies::from_toml(FILE).unwrap();
        let race = h.get("race").unwrap();
        let values = [Value::Text("Black"), Value::Text("White")];
        let (tree, ids) = DomainTree::build("race", race, &values).unwrap();
        // Declared order: White, then Black, Asian, Other under Non-white.
        assert_eq!(tree.leaf_count(), 4);
        assert_eq!(ids, [1, 0]);
        let non_white = tree.lowest_common_ancestor(0, 1, 3);
        assert_eq!(tree.label(non_white), "Non-white");
        assert_eq!(tree.penalty(non_white), 2.0 / 3.0);
        assert_eq!(tree.penalty(0), 1.0);
        assert_eq!(tree.label(tree.lowest_common_ancestor(0, 1, 1)), "Black");

        let age = h.get("age").unwrap();
        let values: Vec<Value> = [20.0, 24.0, 37.0, 39.0].map(Value::Number).to_vec();
        let (tree, ids) = DomainTree::build("age", age, &values).unwrap();
        assert_eq!(ids, [0, 1, 2, 3]);
        let n = tree.lowest_common_ancestor(0, 2, 3);
        assert_eq!(tree.label(n), "35-39");
        // Band 35-39 within the data's 20..39: 4 of 19.
        assert!((tree.penalty(n) - 4.0 / 19.0).abs() < 1e-12);
        assert_eq!(tree.child_containing(0, 3), tree.children(0)[0]);
    }
}
