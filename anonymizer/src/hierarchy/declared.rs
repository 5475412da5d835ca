//! Hierarchies as declared in TOML: the four kinds, their validation, and the
//! chain of ever coarser labels each gives a value.
//!
//! A declaration is checked when it is read (nested widths, one root, no
//! cycles), so generalizing a value can only fail on the value itself.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use chrono::Datelike;
use serde::Deserialize;

use super::values::{Value, date, format_number, number, text};
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

pub(super) fn tree_parents(tree: &BTreeMap<String, Vec<String>>) -> HashMap<&str, &str> {
    let mut parents = HashMap::new();
    for (node, children) in tree {
        for c in children {
            parents.insert(c.as_str(), node.as_str());
        }
    }
    parents
}

/// The band `[lo, hi)` of width `w` (boundaries at `origin + i*w`) holding `x`.
pub(super) fn band(x: f64, origin: f64, w: f64) -> (f64, f64) {
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
