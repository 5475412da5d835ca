//! A hierarchy instantiated over one column's values: the [`DomainTree`]
//! Mondrian searches when it cuts a categorical quasi-identifier.
//!
//! Leaves are numbered depth-first so every node covers a contiguous range
//! of leaf ids, which makes finding a common ancestor and a node's penalty a
//! matter of comparing ranges.

use std::collections::HashMap;

use chrono::{Datelike, NaiveDate};

use super::declared::{Hierarchy, ROOT, band, tree_parents};
use super::values::{Value, date, number};
use crate::error::{Error, Result};

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
