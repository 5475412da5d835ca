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

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use chrono::{Datelike, NaiveDate};
use serde::Deserialize;

use crate::error::{Error, Result};

/// The label of every hierarchy's root: fully suppressed.
pub const ROOT: &str = "*";

/// One column's hierarchy as declared.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum Hierarchy {
    /// Numeric bands of nested widths: with `widths = [5, 10]`, 37 becomes
    /// `35-39`, then `30-39`, then `*`.
    Interval {
        /// Band widths from finest to coarsest; each a multiple of the previous.
        widths: Vec<f64>,
        /// Where bands start: boundaries are at `origin + i * width`.
        #[serde(default)]
        origin: f64,
    },
    /// Calendar dates: day, then month, then year, then `*`.
    Date {},
    /// Strings generalized by masking trailing characters with `*`.
    Prefix {
        /// The shortest prefix kept before the value becomes `*`.
        #[serde(default)]
        min_length: usize,
    },
    /// An explicit taxonomy: each node lists its children; values are leaves.
    Tree {
        /// Node name to child names.
        tree: BTreeMap<String, Vec<String>>,
    },
}

/// The hierarchies of a table, by column name.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Hierarchies(BTreeMap<String, Hierarchy>);

impl Hierarchies {
    /// Parses a hierarchy file's text and checks each declaration.
    pub fn from_toml(text: &str) -> Result<Self> {
        let map: BTreeMap<String, Hierarchy> =
            toml::from_str(text).map_err(|e| Error::Hierarchy {
                column: "(file)".into(),
                message: e.to_string(),
            })?;
        for (column, h) in &map {
            h.validate(column)?;
        }
        Ok(Self(map))
    }

    /// Reads and parses a hierarchy file.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::Hierarchy {
            column: "(file)".into(),
            message: format!("reading {}: {e}", path.display()),
        })?;
        Self::from_toml(&text)
    }

    /// The hierarchy declared for `column`, if any.
    pub fn get(&self, column: &str) -> Option<&Hierarchy> {
        self.0.get(column)
    }

    /// Declares (or replaces) the hierarchy of `column`.
    pub fn insert(&mut self, column: impl Into<String>, hierarchy: Hierarchy) -> Result<()> {
        let column = column.into();
        hierarchy.validate(&column)?;
        self.0.insert(column, hierarchy);
        Ok(())
    }

    /// The columns that have a hierarchy.
    pub fn columns(&self) -> impl Iterator<Item = &str> {
        self.0.keys().map(String::as_str)
    }
}

/// A value as hierarchies see it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Value<'a> {
    /// A number (intervals).
    Number(f64),
    /// A calendar date (dates).
    Date(NaiveDate),
    /// Text (prefixes, trees; dates as `YYYY-MM-DD`).
    Text(&'a str),
}

impl Hierarchy {
    fn validate(&self, column: &str) -> Result<()> {
        let bad = |message: String| Error::Hierarchy {
            column: column.into(),
            message,
        };
        match self {
            Hierarchy::Interval { widths, origin } => {
                if widths.is_empty() {
                    return Err(bad("`widths` is empty; give at least one band width".into()));
                }
                if !origin.is_finite() {
                    return Err(bad("`origin` must be a finite number".into()));
                }
                for (i, w) in widths.iter().enumerate() {
                    if !(w.is_finite() && *w > 0.0) {
                        return Err(bad(format!("width {w} must be a positive number")));
                    }
                    if i > 0 {
                        let ratio = w / widths[i - 1];
                        if ratio < 1.0 || (ratio - ratio.round()).abs() > 1e-9 {
                            return Err(bad(format!(
                                "width {w} is not a multiple of the previous width {}; bands must nest",
                                widths[i - 1]
                            )));
                        }
                    }
                }
                Ok(())
            }
            Hierarchy::Date {} | Hierarchy::Prefix { .. } => Ok(()),
            Hierarchy::Tree { tree } => {
                let mut parent: HashMap<&str, &str> = HashMap::new();
                for (node, children) in tree {
                    if children.is_empty() {
                        return Err(bad(format!(
                            "node {node:?} lists no children; leave it out instead"
                        )));
                    }
                    for child in children {
                        if child == node {
                            return Err(bad(format!("node {node:?} lists itself as a child")));
                        }
                        if let Some(other) = parent.insert(child, node) {
                            return Err(bad(format!(
                                "{child:?} has two parents, {other:?} and {node:?}; a hierarchy is a tree"
                            )));
                        }
                    }
                }
                let roots: Vec<&str> = tree
                    .keys()
                    .map(String::as_str)
                    .filter(|n| !parent.contains_key(n))
                    .collect();
                match roots.as_slice() {
                    [_] => {}
                    [] => return Err(bad("every node has a parent: the tree has a cycle".into())),
                    many => {
                        return Err(bad(format!(
                            "the tree has {} roots ({}); exactly one node must be nobody's child",
                            many.len(),
                            many.join(", ")
                        )));
                    }
                }
                // Every node must reach the root without revisiting: no cycles.
                for start in parent.keys() {
                    let mut node = *start;
                    let mut steps = 0;
                    while let Some(p) = parent.get(node) {
                        node = p;
                        steps += 1;
                        if steps > parent.len() {
                            return Err(bad(format!("{start:?} is on a cycle")));
                        }
                    }
                }
                Ok(())
            }
        }
    }

    /// The labels `value` generalizes to, finest first, ending at [`ROOT`].
    pub fn ancestors(&self, column: &str, value: Value<'_>) -> Result<Vec<String>> {
        match self {
            Hierarchy::Interval { widths, origin } => {
                let x = number(column, value)?;
                let mut out: Vec<String> = widths
                    .iter()
                    .map(|w| {
                        let (lo, hi) = band(x, *origin, *w);
                        band_label(lo, hi, *origin, *w)
                    })
                    .collect();
                out.push(ROOT.into());
                Ok(out)
            }
            Hierarchy::Date {} => {
                let d = date(column, value)?;
                Ok(vec![
                    format!("{:04}-{:02}", d.year(), d.month()),
                    format!("{:04}", d.year()),
                    ROOT.into(),
                ])
            }
            Hierarchy::Prefix { min_length } => {
                let s = text(column, value)?;
                let chars: Vec<char> = s.chars().collect();
                let mut out = Vec::new();
                for keep in (*min_length..chars.len()).rev() {
                    let mut label: String = chars[..keep].iter().collect();
                    label.extend(std::iter::repeat_n('*', chars.len() - keep));
                    if label.chars().all(|c| c == '*') {
                        break;
                    }
                    out.push(label);
                }
                out.push(ROOT.into());
                Ok(out)
            }
            Hierarchy::Tree { tree } => {
                let s = text(column, value)?;
                let parents = tree_parents(tree);
                if tree.contains_key(s) || !parents.contains_key(s) {
                    return Err(Error::NotInHierarchy {
                        column: column.into(),
                        value: s.into(),
                    });
                }
                let mut out = Vec::new();
                let mut node = s;
                while let Some(p) = parents.get(node) {
                    out.push((*p).to_string());
                    node = p;
                }
                Ok(out)
            }
        }
    }

    /// `value` generalized `level` steps up (0 = the value itself, as text).
    pub fn generalize(&self, column: &str, value: Value<'_>, level: usize) -> Result<String> {
        if level == 0 {
            return Ok(match value {
                Value::Number(x) => format_number(x),
                Value::Date(d) => d.format("%Y-%m-%d").to_string(),
                Value::Text(s) => s.to_string(),
            });
        }
        let ancestors = self.ancestors(column, value)?;
        Ok(ancestors
            .get(level - 1)
            .or(ancestors.last())
            .cloned()
            .unwrap_or_else(|| ROOT.into()))
    }
}

fn tree_parents(tree: &BTreeMap<String, Vec<String>>) -> HashMap<&str, &str> {
    let mut parents = HashMap::new();
    for (node, children) in tree {
        for c in children {
            parents.insert(c.as_str(), node.as_str());
        }
    }
    parents
}

fn number(column: &str, value: Value<'_>) -> Result<f64> {
    match value {
        Value::Number(x) if x.is_finite() => Ok(x),
        Value::Text(s) => s
            .trim()
            .parse::<f64>()
            .ok()
            .filter(|x| x.is_finite())
            .ok_or_else(|| Error::Hierarchy {
                column: column.into(),
                message: format!("{s:?} is not a number"),
            }),
        other => Err(Error::Hierarchy {
            column: column.into(),
            message: format!("an interval hierarchy needs numbers, got {other:?}"),
        }),
    }
}

fn date(column: &str, value: Value<'_>) -> Result<NaiveDate> {
    match value {
        Value::Date(d) => Ok(d),
        Value::Text(s) => s
            .get(..10)
            .and_then(|p| NaiveDate::parse_from_str(p, "%Y-%m-%d").ok())
            .ok_or_else(|| Error::Hierarchy {
                column: column.into(),
                message: format!("{s:?} is not a YYYY-MM-DD date"),
            }),
        Value::Number(x) => Err(Error::Hierarchy {
            column: column.into(),
            message: format!("a date hierarchy needs dates, got the number {x}"),
        }),
    }
}

fn text<'a>(column: &str, value: Value<'a>) -> Result<&'a str> {
    match value {
        Value::Text(s) => Ok(s),
        other => Err(Error::Hierarchy {
            column: column.into(),
            message: format!("this hierarchy needs text values, got {other:?}"),
        }),
    }
}

/// The band `[lo, hi)` of width `w` (boundaries at `origin + i*w`) holding `x`.
fn band(x: f64, origin: f64, w: f64) -> (f64, f64) {
    let lo = origin + ((x - origin) / w).floor() * w;
    (lo, lo + w)
}

/// Integer bands read as closed ranges (`35-39`); others as half-open.
fn band_label(lo: f64, hi: f64, origin: f64, w: f64) -> String {
    if origin.fract() == 0.0 && w.fract() == 0.0 {
        format!("{}-{}", lo as i64, hi as i64 - 1)
    } else {
        format!("[{},{})", format_number(lo), format_number(hi))
    }
}

/// The date `days` after 1970-01-01 (Arrow's `Date32`).
pub(crate) fn date_from_unix_days(days: i64) -> NaiveDate {
    const UNIX_EPOCH_FROM_CE: i64 = 719_163;
    i32::try_from(days + UNIX_EPOCH_FROM_CE)
        .ok()
        .and_then(NaiveDate::from_num_days_from_ce_opt)
        .unwrap_or_default()
}

/// Numbers print without a trailing `.0` when integral.
pub(crate) fn format_number(x: f64) -> String {
    if x.fract() == 0.0 && x.abs() < 1e15 {
        format!("{}", x as i64)
    } else {
        format!("{x}")
    }
}

/// A hierarchy instantiated over one column's values: the search space of a
/// categorical quasi-identifier in Mondrian.
#[derive(Debug, Clone)]
pub struct DomainTree {
    nodes: Vec<Node>,
    /// Leaf id (depth-first order) to node index.
    leaves: Vec<usize>,
    /// The global extent of numeric-valued hierarchies, for penalties.
    extent: Option<(f64, f64)>,
}

#[derive(Debug, Clone)]
struct Node {
    label: String,
    children: Vec<usize>,
    /// Leaf ids covered: `[lo, hi)`.
    lo: u32,
    hi: u32,
    /// For intervals and dates: the numeric range the node stands for.
    range: Option<(f64, f64)>,
}

impl DomainTree {
    /// Builds the tree over `values` (each value's label and its ancestors).
    /// For an explicit tree the domain is every declared leaf; for generated
    /// hierarchies (intervals, dates, prefixes) it is the distinct values.
    /// Returns the tree and each input value's leaf id.
    pub fn build(
        column: &str,
        hierarchy: &Hierarchy,
        values: &[Value<'_>],
    ) -> Result<(Self, Vec<u32>)> {
        // Paths root-first: ["*", coarse, ..., fine, value].
        let mut paths: Vec<Vec<String>> = Vec::new();
        let mut ranges: HashMap<String, (f64, f64)> = HashMap::new();
        let mut order: HashMap<String, (f64, usize)> = HashMap::new();
        match hierarchy {
            Hierarchy::Tree { tree } => {
                // Declared order of children, every declared leaf.
                let parents = tree_parents(tree);
                let root = tree
                    .keys()
                    .find(|k| !parents.contains_key(k.as_str()))
                    .cloned()
                    .unwrap_or_default();
                let mut stack = vec![vec![root]];
                while let Some(path) = stack.pop() {
                    let last = path.last().cloned().unwrap_or_default();
                    match tree.get(&last) {
                        Some(children) => {
                            for (i, c) in children.iter().enumerate().rev() {
                                order.insert(c.clone(), (i as f64, 0));
                                let mut p = path.clone();
                                p.push(c.clone());
                                stack.push(p);
                            }
                        }
                        None => paths.push(path),
                    }
                }
            }
            _ => {
                let mut seen: HashMap<String, ()> = HashMap::new();
                for v in values {
                    let leaf = hierarchy.generalize(column, *v, 0)?;
                    if seen.insert(leaf.clone(), ()).is_some() {
                        continue;
                    }
                    let ancestors = hierarchy.ancestors(column, *v)?;
                    let key = sort_key(column, hierarchy, *v)?;
                    order.insert(leaf.clone(), (key, 0));
                    if let Hierarchy::Interval { widths, origin } = hierarchy {
                        let x = number(column, *v)?;
                        ranges.insert(leaf.clone(), (x, x));
                        for (w, label) in widths.iter().zip(&ancestors) {
                            let (lo, hi) = band(x, *origin, *w);
                            // Whole-number bands are the closed ranges their labels say.
                            let hi = if origin.fract() == 0.0 && w.fract() == 0.0 {
                                hi - 1.0
                            } else {
                                hi
                            };
                            ranges.insert(label.clone(), (lo, hi));
                            order.insert(label.clone(), (lo, 0));
                        }
                    }
                    if let Hierarchy::Date {} = hierarchy {
                        let d = date(column, *v)?;
                        let day = days(d);
                        ranges.insert(leaf.clone(), (day, day));
                        let month_start = d.with_day(1).unwrap_or(d);
                        let next_month = month_start
                            .checked_add_months(chrono::Months::new(1))
                            .unwrap_or(month_start);
                        ranges.insert(
                            ancestors[0].clone(),
                            (days(month_start), days(next_month) - 1.0),
                        );
                        let year_start = NaiveDate::from_ymd_opt(d.year(), 1, 1).unwrap_or(d);
                        let year_end = NaiveDate::from_ymd_opt(d.year(), 12, 31).unwrap_or(d);
                        ranges.insert(ancestors[1].clone(), (days(year_start), days(year_end)));
                    }
                    let mut path: Vec<String> = ancestors.into_iter().rev().collect();
                    if path.first().map(String::as_str) != Some(ROOT) {
                        path.insert(0, ROOT.into());
                    }
                    path.push(leaf);
                    paths.push(path);
                }
            }
        }
        let extent = match hierarchy {
            Hierarchy::Interval { .. } | Hierarchy::Date {} => {
                let mut lo = f64::INFINITY;
                let mut hi = f64::NEG_INFINITY;
                for p in &paths {
                    if let Some((a, b)) = p.last().and_then(|l| ranges.get(l)) {
                        lo = lo.min(*a);
                        hi = hi.max(*b);
                    }
                }
                (lo <= hi).then_some((lo, hi))
            }
            _ => None,
        };

        // Insert paths into a trie; then number leaves depth-first in order.
        let mut nodes = vec![Node {
            label: ROOT.into(),
            children: vec![],
            lo: 0,
            hi: 0,
            range: None,
        }];
        let mut index: HashMap<(usize, String), usize> = HashMap::new();
        for path in &paths {
            let mut at = 0;
            for label in path.iter().skip(1) {
                at = match index.get(&(at, label.clone())) {
                    Some(&n) => n,
                    None => {
                        let n = nodes.len();
                        nodes.push(Node {
                            label: label.clone(),
                            children: vec![],
                            lo: 0,
                            hi: 0,
                            range: ranges.get(label).copied(),
                        });
                        nodes[at].children.push(n);
                        index.insert((at, label.clone()), n);
                        n
                    }
                };
            }
        }
        for n in 0..nodes.len() {
            let mut children = std::mem::take(&mut nodes[n].children);
            children.sort_by(|a, b| {
                let ka = order.get(&nodes[*a].label).map_or(0.0, |k| k.0);
                let kb = order.get(&nodes[*b].label).map_or(0.0, |k| k.0);
                ka.total_cmp(&kb)
                    .then_with(|| nodes[*a].label.cmp(&nodes[*b].label))
            });
            nodes[n].children = children;
        }
        let mut leaves = Vec::new();
        number_leaves(&mut nodes, 0, &mut leaves);
        let mut tree = DomainTree {
            nodes,
            leaves,
            extent,
        };
        if let Some((lo, hi)) = tree.extent {
            tree.nodes[0].range = Some((lo, hi));
        }

        let mut leaf_of: HashMap<&str, u32> = HashMap::new();
        for (id, &n) in tree.leaves.iter().enumerate() {
            leaf_of.insert(tree.nodes[n].label.as_str(), id as u32);
        }
        let mut ids = Vec::with_capacity(values.len());
        for v in values {
            let label = hierarchy.generalize(column, *v, 0)?;
            match leaf_of.get(label.as_str()) {
                Some(&id) => ids.push(id),
                None => {
                    return Err(Error::NotInHierarchy {
                        column: column.into(),
                        value: label,
                    });
                }
            }
        }
        Ok((tree, ids))
    }

    /// The root node.
    pub fn root(&self) -> usize {
        0
    }

    /// How many leaves the domain has.
    pub fn leaf_count(&self) -> u32 {
        self.leaves.len() as u32
    }

    /// A node's label (`*` for the root).
    pub fn label(&self, node: usize) -> &str {
        &self.nodes[node].label
    }

    /// A node's children, in hierarchy order.
    pub fn children(&self, node: usize) -> &[usize] {
        &self.nodes[node].children
    }

    /// The leaf ids `[lo, hi)` a node covers.
    pub fn leaf_range(&self, node: usize) -> (u32, u32) {
        (self.nodes[node].lo, self.nodes[node].hi)
    }

    /// The deepest node covering leaves `lo..=hi`, searching down from `from`.
    pub fn lowest_common_ancestor(&self, from: usize, lo: u32, hi: u32) -> usize {
        let mut at = from;
        'down: loop {
            for &c in &self.nodes[at].children {
                let n = &self.nodes[c];
                if n.lo <= lo && hi < n.hi {
                    at = c;
                    continue 'down;
                }
            }
            return at;
        }
    }

    /// The child of `node` covering `leaf`.
    pub fn child_containing(&self, node: usize, leaf: u32) -> usize {
        let children = &self.nodes[node].children;
        let i = children.partition_point(|&c| self.nodes[c].hi <= leaf);
        children[i.min(children.len().saturating_sub(1))]
    }

    /// The normalized certainty penalty of generalizing to `node`, in `[0, 1]`:
    /// for numeric-valued hierarchies the node's range over the column's range,
    /// otherwise (leaves covered - 1) / (leaves in the domain - 1).
    pub fn penalty(&self, node: usize) -> f64 {
        if let (Some((glo, ghi)), Some((lo, hi))) = (self.extent, self.nodes[node].range) {
            if ghi > glo {
                let (lo, hi) = (lo.max(glo), hi.min(ghi));
                return ((hi - lo) / (ghi - glo)).clamp(0.0, 1.0);
            }
            return 0.0;
        }
        let total = self.leaf_count();
        if total <= 1 {
            return 0.0;
        }
        let n = &self.nodes[node];
        f64::from(n.hi - n.lo - 1) / f64::from(total - 1)
    }
}

fn number_leaves(nodes: &mut [Node], at: usize, leaves: &mut Vec<usize>) {
    nodes[at].lo = leaves.len() as u32;
    if nodes[at].children.is_empty() {
        leaves.push(at);
    } else {
        for c in nodes[at].children.clone() {
            number_leaves(nodes, c, leaves);
        }
    }
    nodes[at].hi = leaves.len() as u32;
}

fn sort_key(column: &str, hierarchy: &Hierarchy, v: Value<'_>) -> Result<f64> {
    Ok(match hierarchy {
        Hierarchy::Interval { .. } => number(column, v)?,
        Hierarchy::Date {} => days(date(column, v)?),
        _ => 0.0,
    })
}

fn days(d: NaiveDate) -> f64 {
    f64::from(d.num_days_from_ce())
}

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
