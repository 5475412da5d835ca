//! k-anonymity by Mondrian multidimensional partitioning (LeFevre, DeWitt and
//! Ramakrishnan, ICDE 2006), with l-diversity and t-closeness as constraints
//! checked on every candidate split.
//!
//! The table is split top-down: a partition is cut on the quasi-identifier
//! with the widest normalized range, at the median for ordered attributes or
//! into the children of the current hierarchy node for categorical ones, as
//! long as every part still satisfies the constraints. Each final partition is
//! an equivalence class; its quasi-identifiers are released generalized (a
//! range, a hierarchy node, or the set of its values).
//!
//! - *Strict* mode cuts ordered attributes by value (parts' ranges do not
//!   overlap). *Relaxed* mode does the same while any such cut is allowable;
//!   when none is, it cuts the sorted rows of an attribute in half, so rows
//!   holding the median value fall on both sides (finer classes, overlapping
//!   ranges).
//! - Hierarchical splits pool the children that would violate a constraint
//!   into one residual part generalized to the parent node.
//! - With a suppression limit, a part that cannot satisfy the constraints may
//!   be removed instead, within a budget shared out to partitions by size, so
//!   the result is the same whatever the thread count.
//!
//! If the whole table violates a constraint there is nothing to split and the
//! request is refused; otherwise every released class satisfies all
//! constraints by construction, and [`measure`] checks it again on the output.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, StringBuilder, UInt32Array};
use arrow::compute::{cast, take};
use arrow::datatypes::{DataType, Field, Float64Type, Int32Type, Schema};
use arrow::record_batch::RecordBatch;
use chrono::NaiveDate;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::hierarchy::{
    DomainTree, Hierarchies, Hierarchy, Value, date_from_unix_days, format_number,
};
use crate::privacy_model::{GroundDistance, LDiversity, TCloseness, emd, entropy};

/// How ordered attributes are cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Cut by value: all rows with the median value go to one side.
    Strict,
    /// Cut by value when allowable, else cut the sorted rows in half so the
    /// median value may fall on both sides.
    Relaxed,
}

/// The privacy requirements of a release.
#[derive(Debug, Clone)]
pub struct Params {
    /// Every released equivalence class has at least `k` rows.
    pub k: usize,
    /// Optional l-diversity of the sensitive attribute within each class.
    pub l_diversity: Option<LDiversity>,
    /// Optional t-closeness bound (earth mover's distance, in `[0, 1]`).
    pub t_closeness: Option<f64>,
    /// The largest fraction of rows that may be suppressed, in `[0, 1)`.
    pub suppression_limit: f64,
    /// How ordered attributes are cut.
    pub mode: Mode,
}

impl Params {
    /// k-anonymity alone, strict, no suppression.
    pub fn k(k: usize) -> Self {
        Self {
            k,
            l_diversity: None,
            t_closeness: None,
            suppression_limit: 0.0,
            mode: Mode::Strict,
        }
    }
}

/// What to anonymize: the columns' roles and the requirements.
#[derive(Debug, Clone)]
pub struct Request {
    /// Quasi-identifiers, generalized in the output.
    pub quasi_identifiers: Vec<String>,
    /// The sensitive attribute, released as is (needed for l and t).
    pub sensitive: Option<String>,
    /// Other columns released unchanged. Everything else is dropped.
    pub keep: Vec<String>,
    /// Generalization hierarchies by column. A text quasi-identifier without
    /// one is generalized to the set of its values in the class.
    pub hierarchies: Hierarchies,
    /// The requirements.
    pub params: Params,
}

/// The generalized table and what it cost.
#[derive(Debug)]
pub struct Anonymized {
    /// Quasi-identifiers as text labels, the sensitive and kept columns as
    /// they were, suppressed rows removed, the input's row order kept.
    pub batch: RecordBatch,
    /// Information loss and the privacy actually achieved.
    pub report: Report,
}

/// Information loss and achieved privacy of one anonymization.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    /// Rows in the input.
    pub rows_in: usize,
    /// Rows released.
    pub rows_out: usize,
    /// Rows suppressed.
    pub suppressed: usize,
    /// Equivalence classes released (distinct quasi-identifier tuples).
    pub classes: usize,
    /// The smallest class: the k actually achieved.
    pub min_class_size: usize,
    /// Released rows per class.
    pub average_class_size: f64,
    /// The discernibility metric: the sum of squared class sizes, plus
    /// rows_in for every suppressed row.
    pub discernibility: f64,
    /// Normalized certainty penalty over released rows and quasi-identifiers
    /// (GCP), in `[0, 1]`: 0 is the original data, 1 everything suppressed.
    pub ncp: f64,
    /// The penalty of each quasi-identifier.
    pub ncp_by_column: BTreeMap<String, f64>,
    /// The smallest number of distinct sensitive values in a class.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub l_distinct: Option<usize>,
    /// exp(the smallest entropy of the sensitive attribute in a class).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub l_entropy: Option<f64>,
    /// The largest earth mover's distance of a class from the released table.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub t: Option<f64>,
    /// How ordered attributes were cut.
    pub mode: Mode,
}

/// One quasi-identifier, encoded for partitioning.
enum Qi {
    /// Numbers (and dates as day numbers): cut at the median.
    Ordered {
        values: Vec<f64>,
        min: f64,
        max: f64,
        date: bool,
    },
    /// Values in a hierarchy: cut into the children of the current node.
    Tree { tree: DomainTree, leaf: Vec<u32> },
    /// Text without a hierarchy: cut like an ordered attribute over the sorted
    /// distinct values; released as the set of values in the class.
    Set { code: Vec<u32>, labels: Vec<String> },
}

impl Qi {
    fn ordinal(&self, row: u32) -> f64 {
        match self {
            Qi::Ordered { values, .. } => values[row as usize],
            Qi::Set { code, .. } => f64::from(code[row as usize]),
            Qi::Tree { leaf, .. } => f64::from(leaf[row as usize]),
        }
    }
}

/// The sensitive attribute, encoded as dense codes.
struct Sensitive {
    code: Vec<u32>,
    domain: usize,
}

struct Ctx<'a> {
    qis: Vec<Qi>,
    /// Every row's ordinal per quasi-identifier, row-major (`row * d + q`):
    /// scanning a partition touches one cache line per row, not one per
    /// quasi-identifier.
    keys: Vec<f64>,
    sensitive: Option<Sensitive>,
    params: &'a Params,
    t: Option<TCloseness>,
}

/// A final partition: `len` rows at `start` of the permutation.
struct Part {
    start: usize,
    len: usize,
    suppressed: bool,
}

/// Partitions smaller than this are split on the current thread.
const PARALLEL_MIN: usize = 16_384;

/// Anonymizes `batch` as `request` asks.
pub fn anonymize(batch: &RecordBatch, request: &Request) -> Result<Anonymized> {
    let params = &request.params;
    validate(batch, request)?;
    let n = batch.num_rows();

    let mut qis = Vec::with_capacity(request.quasi_identifiers.len());
    for name in &request.quasi_identifiers {
        qis.push(encode_qi(
            name,
            column(batch, name)?,
            request.hierarchies.get(name),
        )?);
    }
    let (sensitive, t) = match &request.sensitive {
        Some(name) => {
            let (s, distance) =
                encode_sensitive(name, column(batch, name)?, request.hierarchies.get(name))?;
            let t = params.t_closeness.map(|t| {
                let counts = histogram(&s, (0..n as u32).collect::<Vec<_>>().as_slice());
                let total = n.max(1) as f64;
                TCloseness {
                    t,
                    distance,
                    global: counts.iter().map(|&c| f64::from(c) / total).collect(),
                }
            });
            (Some(s), t)
        }
        None => (None, None),
    };
    let d = qis.len();
    let mut keys = vec![0.0; n * d];
    for (j, q) in qis.iter().enumerate() {
        for r in 0..n {
            keys[r * d + j] = q.ordinal(r as u32);
        }
    }
    let ctx = Ctx {
        qis,
        keys,
        sensitive,
        params,
        t,
    };

    let mut idx: Vec<u32> = (0..n as u32).collect();
    if let Some(why) = ctx.violation(&idx) {
        return Err(Error::Unsatisfiable(format!(
            "the whole table {why}, so no generalization can satisfy it (loosen the requirement, or add rows)"
        )));
    }
    let budget = (params.suppression_limit * n as f64).floor() as usize;
    let (parts, _) = split(&ctx, &mut idx, 0, budget);
    build_output(batch, request, &ctx, &idx, &parts)
}

fn validate(batch: &RecordBatch, request: &Request) -> Result<()> {
    let p = &request.params;
    let bad = |m: String| Err(Error::InvalidRequest(m));
    if p.k == 0 {
        return bad("k must be at least 1".into());
    }
    if request.quasi_identifiers.is_empty() {
        return bad("name at least one quasi-identifier".into());
    }
    if !(0.0..1.0).contains(&p.suppression_limit) {
        return bad(format!(
            "the suppression limit {} must be in [0, 1)",
            p.suppression_limit
        ));
    }
    if let Some(t) = p.t_closeness
        && !(t > 0.0 && t <= 1.0)
    {
        return bad(format!("t = {t} must be in (0, 1]"));
    }
    match p.l_diversity {
        Some(LDiversity::Distinct { l }) | Some(LDiversity::Recursive { l, .. }) if l < 1 => {
            return bad("l must be at least 1".into());
        }
        Some(LDiversity::Entropy { l }) if l.is_nan() || l < 1.0 => {
            return bad(format!("entropy l = {l} must be at least 1"));
        }
        Some(LDiversity::Recursive { c, .. }) if c.is_nan() || c <= 0.0 => {
            return bad(format!("c = {c} must be positive"));
        }
        _ => {}
    }
    if (p.l_diversity.is_some() || p.t_closeness.is_some()) && request.sensitive.is_none() {
        return bad("l-diversity and t-closeness need a sensitive attribute".into());
    }
    let mut seen = HashMap::new();
    let roles = request
        .quasi_identifiers
        .iter()
        .map(|c| (c, "a quasi-identifier"))
        .chain(
            request
                .sensitive
                .iter()
                .map(|c| (c, "the sensitive attribute")),
        )
        .chain(request.keep.iter().map(|c| (c, "kept")));
    for (c, role) in roles {
        column(batch, c)?;
        if let Some(other) = seen.insert(c.clone(), role) {
            return bad(format!(
                "column `{c}` is named twice: as {other} and as {role}"
            ));
        }
    }
    Ok(())
}

fn column<'a>(batch: &'a RecordBatch, name: &str) -> Result<&'a ArrayRef> {
    batch
        .column_by_name(name)
        .ok_or_else(|| Error::NoSuchColumn {
            column: name.into(),
            available: batch
                .schema()
                .fields()
                .iter()
                .map(|f| f.name().as_str())
                .collect::<Vec<_>>()
                .join(", "),
        })
}

fn no_nulls(name: &str, array: &dyn Array) -> Result<()> {
    if array.null_count() > 0 {
        let row = (0..array.len()).find(|&i| array.is_null(i)).unwrap_or(0);
        return Err(Error::NullValue {
            column: name.into(),
            row,
        });
    }
    Ok(())
}

fn as_utf8(name: &str, array: &ArrayRef) -> Result<ArrayRef> {
    cast(array, &DataType::Utf8).map_err(|e| Error::UnsupportedType {
        column: name.into(),
        data_type: array.data_type().to_string(),
        what: format!("cannot be read as text ({e})"),
    })
}

fn as_text(name: &str, array: &ArrayRef) -> Result<Vec<String>> {
    let utf8 = as_utf8(name, array)?;
    let s = utf8.as_string::<i32>();
    Ok((0..s.len()).map(|i| s.value(i).to_string()).collect())
}

/// Dense codes for text values, numbered in sorted order of the distinct
/// values (which are returned): no per-row allocation, and only the distinct
/// values are sorted.
fn dictionary(name: &str, array: &ArrayRef) -> Result<(Vec<u32>, Vec<String>)> {
    let utf8 = as_utf8(name, array)?;
    let s = utf8.as_string::<i32>();
    let mut first: HashMap<&str, u32> = HashMap::new();
    let mut provisional = Vec::with_capacity(s.len());
    for i in 0..s.len() {
        let next = first.len() as u32;
        provisional.push(*first.entry(s.value(i)).or_insert(next));
    }
    let mut distinct: Vec<(&str, u32)> = first.into_iter().collect();
    distinct.sort_unstable();
    let mut rank = vec![0u32; distinct.len()];
    for (r, (_, p)) in distinct.iter().enumerate() {
        rank[*p as usize] = r as u32;
    }
    let codes = provisional.into_iter().map(|p| rank[p as usize]).collect();
    Ok((
        codes,
        distinct.into_iter().map(|(v, _)| v.to_string()).collect(),
    ))
}

fn is_ordered(t: &DataType) -> bool {
    t.is_numeric() || matches!(t, DataType::Date32 | DataType::Date64)
}

fn encode_qi(name: &str, array: &ArrayRef, hierarchy: Option<&Hierarchy>) -> Result<Qi> {
    no_nulls(name, array)?;
    let dt = array.data_type();
    if let Some(h) = hierarchy {
        // Build the tree over the distinct values, then map rows by code.
        let numeric = matches!(h, Hierarchy::Interval { .. }) && dt.is_numeric();
        let date =
            matches!(h, Hierarchy::Date {}) && matches!(dt, DataType::Date32 | DataType::Date64);
        let (codes, distinct) = dictionary(name, array)?;
        let numbers: Vec<f64>;
        let dates: Vec<NaiveDate>;
        let values: Vec<Value> = if numeric {
            numbers = distinct
                .iter()
                .map(|v| v.parse::<f64>().unwrap_or(f64::NAN))
                .collect();
            numbers.iter().map(|&x| Value::Number(x)).collect()
        } else if date {
            dates = distinct
                .iter()
                .map(|v| NaiveDate::parse_from_str(v, "%Y-%m-%d").unwrap_or_default())
                .collect();
            dates.iter().map(|&d| Value::Date(d)).collect()
        } else {
            distinct.iter().map(|v| Value::Text(v)).collect()
        };
        let (tree, distinct_leaf) = DomainTree::build(name, h, &values)?;
        let leaf = codes
            .into_iter()
            .map(|c| distinct_leaf[c as usize])
            .collect();
        return Ok(Qi::Tree { tree, leaf });
    }
    if is_ordered(dt) {
        let date = matches!(dt, DataType::Date32 | DataType::Date64);
        let values = if date {
            as_days(name, array)?.into_iter().map(f64::from).collect()
        } else {
            as_f64(name, array)?
        };
        if let Some(bad) = values.iter().position(|x| !x.is_finite()) {
            return Err(Error::BadValue {
                column: name.into(),
                row: bad,
                message: "not a finite number".into(),
            });
        }
        let min = values.iter().copied().fold(f64::INFINITY, f64::min);
        let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        return Ok(Qi::Ordered {
            values,
            min,
            max,
            date,
        });
    }
    if matches!(
        dt,
        DataType::Timestamp(..) | DataType::Time32(_) | DataType::Time64(_)
    ) {
        return Err(Error::UnsupportedType {
            column: name.into(),
            data_type: dt.to_string(),
            what: "needs a hierarchy to be a quasi-identifier (declare `kind = \"date\"` for it)"
                .into(),
        });
    }
    let (code, labels) = dictionary(name, array)?;
    Ok(Qi::Set { code, labels })
}

fn as_f64(name: &str, array: &ArrayRef) -> Result<Vec<f64>> {
    let a = cast(array, &DataType::Float64).map_err(|e| Error::UnsupportedType {
        column: name.into(),
        data_type: array.data_type().to_string(),
        what: format!("cannot be read as a number ({e})"),
    })?;
    Ok(a.as_primitive::<Float64Type>().values().to_vec())
}

fn as_days(name: &str, array: &ArrayRef) -> Result<Vec<i32>> {
    let a = cast(array, &DataType::Date32)
        .and_then(|d| cast(&d, &DataType::Int32))
        .map_err(|e| Error::UnsupportedType {
            column: name.into(),
            data_type: array.data_type().to_string(),
            what: format!("cannot be read as a date ({e})"),
        })?;
    Ok(a.as_primitive::<Int32Type>().values().to_vec())
}

fn encode_sensitive(
    name: &str,
    array: &ArrayRef,
    hierarchy: Option<&Hierarchy>,
) -> Result<(Sensitive, GroundDistance)> {
    no_nulls(name, array)?;
    if let Some(h @ Hierarchy::Tree { .. }) = hierarchy {
        let (codes, distinct) = dictionary(name, array)?;
        let values: Vec<Value> = distinct.iter().map(|s| Value::Text(s)).collect();
        let (tree, distinct_leaf) = DomainTree::build(name, h, &values)?;
        let leaf: Vec<u32> = codes
            .into_iter()
            .map(|c| distinct_leaf[c as usize])
            .collect();
        let domain = tree.leaf_count() as usize;
        return Ok((
            Sensitive { code: leaf, domain },
            GroundDistance::Hierarchical(tree),
        ));
    }
    if array.data_type().is_numeric() {
        let values = as_f64(name, array)?;
        let mut distinct = values.clone();
        distinct.sort_by(f64::total_cmp);
        distinct.dedup();
        let code = values
            .iter()
            .map(|x| distinct.partition_point(|d| d < x) as u32)
            .collect();
        return Ok((
            Sensitive {
                code,
                domain: distinct.len(),
            },
            GroundDistance::Ordered,
        ));
    }
    let (code, labels) = dictionary(name, array)?;
    Ok((
        Sensitive {
            code,
            domain: labels.len(),
        },
        GroundDistance::Equal,
    ))
}

fn histogram(s: &Sensitive, rows: &[u32]) -> Vec<u32> {
    let mut counts = vec![0u32; s.domain];
    for &r in rows {
        counts[s.code[r as usize] as usize] += 1;
    }
    counts
}

impl Ctx<'_> {
    /// Why `rows` cannot be a released class, or `None` if it can.
    fn violation(&self, rows: &[u32]) -> Option<String> {
        let k = self.params.k;
        if rows.len() < k {
            return Some(format!("has {} rows, fewer than k = {k}", rows.len()));
        }
        let s = self.sensitive.as_ref()?;
        if self.params.l_diversity.is_none() && self.t.is_none() {
            return None;
        }
        let counts = histogram(s, rows);
        if let Some(l) = self.params.l_diversity
            && !l.holds(&counts)
        {
            let distinct = counts.iter().filter(|&&c| c > 0).count();
            return Some(format!(
                "does not satisfy {} of the sensitive attribute ({distinct} distinct values, entropy e^H = {:.2})",
                l.describe(),
                entropy(&counts).exp()
            ));
        }
        if let Some(t) = &self.t
            && !t.holds(&counts)
        {
            return Some(format!(
                "is {:.3} from the overall distribution, more than t = {}",
                t.distance(&counts),
                t.t
            ));
        }
        None
    }

    fn ok(&self, rows: &[u32]) -> bool {
        self.violation(rows).is_none()
    }
}

/// Splits `part` (at `offset` of the permutation) recursively; returns the
/// final partitions and how many rows it suppressed (at most `budget`).
///
/// Without suppression the parts are independent and split in parallel. With
/// it, the budget is spent first come, first served in depth-first order, so
/// the parts are split one after another: the result is then the same for any
/// thread count, and a lone outlier anywhere can use the whole budget.
fn split(ctx: &Ctx, part: &mut [u32], offset: usize, budget: usize) -> (Vec<Part>, usize) {
    let Some(segments) = best_split(ctx, part, budget) else {
        return (
            vec![Part {
                start: offset,
                len: part.len(),
                suppressed: false,
            }],
            0,
        );
    };
    let mut used: usize = segments.iter().filter(|s| s.1).map(|s| s.0).sum();
    let mut work = Vec::with_capacity(segments.len());
    let mut out = Vec::new();
    let mut rest = part;
    let mut at = offset;
    for (len, suppressed) in segments {
        let (head, tail) = rest.split_at_mut(len);
        if suppressed {
            out.push(Part {
                start: at,
                len,
                suppressed: true,
            });
        } else {
            work.push((head, at));
        }
        rest = tail;
        at += len;
    }
    if budget == 0 {
        let big = work.iter().map(|w| w.0.len()).sum::<usize>() >= PARALLEL_MIN;
        let children: Vec<(Vec<Part>, usize)> = if big {
            work.into_par_iter()
                .map(|(p, at)| split(ctx, p, at, 0))
                .collect()
        } else {
            work.into_iter()
                .map(|(p, at)| split(ctx, p, at, 0))
                .collect()
        };
        out.extend(children.into_iter().flat_map(|c| c.0));
    } else {
        for (p, at) in work {
            let (parts, spent) = split(ctx, p, at, budget - used);
            used += spent;
            out.extend(parts);
        }
    }
    (out, used)
}

/// Tries the quasi-identifiers widest first; reorders `part` so that the
/// chosen split's segments are contiguous and returns `(len, suppressed)` for
/// each, in order. `None` when no allowable split exists.
fn best_split(ctx: &Ctx, part: &mut [u32], budget: usize) -> Option<Vec<(usize, bool)>> {
    if part.len() < 2 * ctx.params.k && budget == 0 {
        return None;
    }
    let mut dims: Vec<(usize, f64)> = widths(ctx, part)
        .into_iter()
        .enumerate()
        .filter(|&(_, w)| w > 0.0)
        .collect();
    dims.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    for &(d, _) in &dims {
        let found = match &ctx.qis[d] {
            Qi::Tree { tree, .. } => split_tree(ctx, d, tree, part, budget),
            _ => split_ordered(ctx, d, part, budget),
        };
        if found.is_some() {
            return found;
        }
    }
    // Relaxed: only when no cut by value is allowable on any attribute.
    if ctx.params.mode == Mode::Relaxed {
        for &(d, _) in &dims {
            if !matches!(ctx.qis[d], Qi::Tree { .. })
                && let Some(found) = split_balanced(ctx, d, part, budget)
            {
                return Some(found);
            }
        }
    }
    None
}

/// The normalized width of each quasi-identifier within `part`, in `[0, 1]`,
/// from one pass over the partition's rows.
fn widths(ctx: &Ctx, part: &[u32]) -> Vec<f64> {
    let d = ctx.qis.len();
    let mut lo = vec![f64::INFINITY; d];
    let mut hi = vec![f64::NEG_INFINITY; d];
    for &r in part {
        let row = &ctx.keys[r as usize * d..r as usize * d + d];
        for j in 0..d {
            lo[j] = lo[j].min(row[j]);
            hi[j] = hi[j].max(row[j]);
        }
    }
    ctx.qis
        .iter()
        .enumerate()
        .map(|(j, q)| match q {
            Qi::Ordered { min, max, .. } if max > min => (hi[j] - lo[j]) / (max - min),
            // Sets are penalized by how many values they hold, not their span.
            Qi::Set { labels, .. } if labels.len() > 1 && lo[j] < hi[j] => {
                let mut seen = vec![0u64; (hi[j] - lo[j]) as usize / 64 + 1];
                for &r in part {
                    let c = (ctx.keys[r as usize * d + j] - lo[j]) as usize;
                    seen[c / 64] |= 1 << (c % 64);
                }
                let distinct: u32 = seen.iter().map(|w| w.count_ones()).sum();
                f64::from(distinct - 1) / (labels.len() - 1) as f64
            }
            Qi::Tree { tree, .. } if lo[j] < hi[j] => {
                let node = tree.lowest_common_ancestor(tree.root(), lo[j] as u32, hi[j] as u32);
                // A node whose leaves are all equal in penalty terms still splits.
                tree.penalty(node).max(f64::EPSILON)
            }
            _ => 0.0,
        })
        .collect()
}

fn extent(values: impl Iterator<Item = f64>) -> (f64, f64) {
    values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), x| {
        (lo.min(x), hi.max(x))
    })
}

/// Moves the rows satisfying `pred` to the front; returns how many there are.
fn partition_in_place(part: &mut [u32], pred: impl Fn(u32) -> bool) -> usize {
    let mut i = 0;
    for j in 0..part.len() {
        if pred(part[j]) {
            part.swap(i, j);
            i += 1;
        }
    }
    i
}

fn split_ordered(
    ctx: &Ctx,
    dim: usize,
    part: &mut [u32],
    budget: usize,
) -> Option<Vec<(usize, bool)>> {
    let d = ctx.qis.len();
    let key = |r: u32| ctx.keys[r as usize * d + dim];
    let n = part.len();
    let mid = (n - 1) / 2;
    part.select_nth_unstable_by(mid, |&a, &b| key(a).total_cmp(&key(b)));
    let median = key(part[mid]);
    let mut cut = partition_in_place(part, |r| key(r) <= median);
    if cut == n {
        cut = partition_in_place(part, |r| key(r) < median);
    }
    if cut == 0 || cut == n {
        return None;
    }
    judge(ctx, part, cut, budget)
}

/// The relaxed cut: the sorted rows in half, rows holding the median value
/// divided between both sides.
fn split_balanced(
    ctx: &Ctx,
    dim: usize,
    part: &mut [u32],
    budget: usize,
) -> Option<Vec<(usize, bool)>> {
    let d = ctx.qis.len();
    let key = |r: u32| ctx.keys[r as usize * d + dim];
    let mid = (part.len() - 1) / 2;
    part.select_nth_unstable_by(mid, |&a, &b| key(a).total_cmp(&key(b)));
    judge(ctx, part, mid + 1, budget)
}

/// Whether cutting `part` after `cut` rows is allowable, suppressing a side
/// that fails the constraints if the budget covers it.
fn judge(ctx: &Ctx, part: &[u32], cut: usize, budget: usize) -> Option<Vec<(usize, bool)>> {
    let n = part.len();
    let (left, right) = part.split_at(cut);
    match (ctx.ok(left), ctx.ok(right)) {
        (true, true) => Some(vec![(cut, false), (n - cut, false)]),
        (true, false) if n - cut <= budget => Some(vec![(cut, false), (n - cut, true)]),
        (false, true) if cut <= budget => Some(vec![(cut, true), (n - cut, false)]),
        _ => None,
    }
}

fn split_tree(
    ctx: &Ctx,
    dim: usize,
    tree: &DomainTree,
    part: &mut [u32],
    budget: usize,
) -> Option<Vec<(usize, bool)>> {
    let d = ctx.qis.len();
    let leaf = |r: u32| ctx.keys[r as usize * d + dim] as u32;
    let (lo, hi) = part.iter().fold((u32::MAX, 0), |(lo, hi), &r| {
        (lo.min(leaf(r)), hi.max(leaf(r)))
    });
    let node = tree.lowest_common_ancestor(tree.root(), lo, hi);
    let children = tree.children(node);
    if children.len() < 2 {
        return None;
    }
    let child_of = |r: u32| {
        let c = tree.child_containing(node, leaf(r));
        children.iter().position(|&x| x == c).unwrap_or(0)
    };
    // Group rows by child (counting sort).
    let mut groups: Vec<Vec<u32>> = vec![Vec::new(); children.len()];
    for &r in part.iter() {
        groups[child_of(r)].push(r);
    }
    groups.retain(|g| !g.is_empty());
    let (mut passing, failing): (Vec<Vec<u32>>, Vec<Vec<u32>>) =
        groups.into_iter().partition(|g| ctx.ok(g));
    // Largest passing groups stay apart; failing ones pool into a residual
    // generalized to this node, growing by the smallest passing groups until
    // it satisfies the constraints or can be suppressed.
    passing.sort_by_key(|g| std::cmp::Reverse(g.len()));
    let mut residual: Vec<u32> = failing.into_iter().flatten().collect();
    let mut residual_suppressed = false;
    while !residual.is_empty() && !ctx.ok(&residual) {
        if residual.len() <= budget {
            residual_suppressed = true;
            break;
        }
        match passing.pop() {
            Some(g) => residual.extend(g),
            None => return None,
        }
    }
    let kept_parts = passing.len() + usize::from(!residual.is_empty() && !residual_suppressed);
    if kept_parts == 0 || (kept_parts == 1 && !residual_suppressed) {
        return None;
    }
    let mut segments = Vec::with_capacity(passing.len() + 1);
    let mut at = 0;
    for g in passing.iter().chain(std::iter::once(&residual)) {
        if g.is_empty() {
            continue;
        }
        part[at..at + g.len()].copy_from_slice(g);
        at += g.len();
    }
    segments.extend(passing.iter().map(|g| (g.len(), false)));
    if !residual.is_empty() {
        segments.push((residual.len(), residual_suppressed));
    }
    Some(segments)
}

/// One released class's generalized labels and penalties.
fn generalize(ctx: &Ctx, rows: &[u32]) -> (Vec<String>, Vec<f64>) {
    let mut labels = Vec::with_capacity(ctx.qis.len());
    let mut penalties = Vec::with_capacity(ctx.qis.len());
    for q in &ctx.qis {
        match q {
            Qi::Ordered {
                values,
                min,
                max,
                date,
            } => {
                let (lo, hi) = extent(rows.iter().map(|&r| values[r as usize]));
                labels.push(range_label(lo, hi, *date));
                penalties.push(if max > min {
                    (hi - lo) / (max - min)
                } else {
                    0.0
                });
            }
            Qi::Set {
                code,
                labels: names,
            } => {
                let mut present: Vec<u32> = rows.iter().map(|&r| code[r as usize]).collect();
                present.sort_unstable();
                present.dedup();
                labels.push(
                    present
                        .iter()
                        .map(|&c| names[c as usize].as_str())
                        .collect::<Vec<_>>()
                        .join(","),
                );
                let domain = names.len();
                penalties.push(if domain > 1 {
                    (present.len() - 1) as f64 / (domain - 1) as f64
                } else {
                    0.0
                });
            }
            Qi::Tree { tree, leaf } => {
                let (lo, hi) = rows.iter().fold((u32::MAX, 0), |(lo, hi), &r| {
                    (lo.min(leaf[r as usize]), hi.max(leaf[r as usize]))
                });
                let node = tree.lowest_common_ancestor(tree.root(), lo, hi);
                labels.push(tree.label(node).to_string());
                penalties.push(tree.penalty(node));
            }
        }
    }
    (labels, penalties)
}

fn range_label(lo: f64, hi: f64, date: bool) -> String {
    if date {
        let (a, b) = (
            date_from_unix_days(lo as i64),
            date_from_unix_days(hi as i64),
        );
        return if a == b {
            a.to_string()
        } else {
            format!("[{a}, {b}]")
        };
    }
    if lo == hi {
        format_number(lo)
    } else if lo >= 0.0 {
        format!("{}-{}", format_number(lo), format_number(hi))
    } else {
        format!("[{}, {}]", format_number(lo), format_number(hi))
    }
}

fn build_output(
    batch: &RecordBatch,
    request: &Request,
    ctx: &Ctx,
    idx: &[u32],
    parts: &[Part],
) -> Result<Anonymized> {
    let n = batch.num_rows();
    const SUPPRESSED: u32 = u32::MAX;
    let mut class_of = vec![SUPPRESSED; n];
    let mut class_labels: Vec<Vec<String>> = Vec::new();
    let mut penalty_sums = vec![0.0; ctx.qis.len()];
    // Classes with identical labels merge: the released classes are the
    // distinct label tuples.
    let mut by_labels: HashMap<Vec<String>, u32> = HashMap::new();
    let suppressed: usize = parts.iter().filter(|p| p.suppressed).map(|p| p.len).sum();
    let kept: Vec<&Part> = parts.iter().filter(|p| !p.suppressed).collect();
    let generalized: Vec<(Vec<String>, Vec<f64>)> = kept
        .par_iter()
        .map(|p| generalize(ctx, &idx[p.start..p.start + p.len]))
        .collect();
    for (p, (labels, penalties)) in kept.iter().zip(generalized) {
        for (sum, pen) in penalty_sums.iter_mut().zip(&penalties) {
            *sum += pen * p.len as f64;
        }
        let next = class_labels.len() as u32;
        let id = match by_labels.get(&labels) {
            Some(&id) => id,
            None => {
                by_labels.insert(labels.clone(), next);
                class_labels.push(labels);
                next
            }
        };
        for &r in &idx[p.start..p.start + p.len] {
            class_of[r as usize] = id;
        }
    }
    let released: Vec<u32> = (0..n as u32)
        .filter(|&r| class_of[r as usize] != SUPPRESSED)
        .collect();
    let rows_out = released.len();

    let qi_position: HashMap<&str, usize> = request
        .quasi_identifiers
        .iter()
        .enumerate()
        .map(|(i, c)| (c.as_str(), i))
        .collect();
    let indices = UInt32Array::from(released.clone());
    let schema = batch.schema();
    let released_fields: Vec<&arrow::datatypes::FieldRef> = schema
        .fields()
        .iter()
        .filter(|f| {
            let name = f.name().as_str();
            qi_position.contains_key(name)
                || request.sensitive.as_deref() == Some(name)
                || request.keep.iter().any(|k| k == name)
        })
        .collect();
    // Label columns are built in parallel, one per quasi-identifier.
    let built: Vec<Result<(Field, ArrayRef)>> = released_fields
        .par_iter()
        .map(|field| {
            let name = field.name().as_str();
            if let Some(&q) = qi_position.get(name) {
                let mut b = StringBuilder::with_capacity(rows_out, rows_out * 8);
                for &r in &released {
                    b.append_value(&class_labels[class_of[r as usize] as usize][q]);
                }
                Ok((
                    Field::new(name, DataType::Utf8, false),
                    Arc::new(b.finish()) as ArrayRef,
                ))
            } else {
                let column = take(
                    batch.column_by_name(name).expect("validated"),
                    &indices,
                    None,
                )?;
                Ok((field.as_ref().clone(), column))
            }
        })
        .collect();
    let (fields, columns): (Vec<Field>, Vec<ArrayRef>) = built
        .into_iter()
        .collect::<Result<Vec<_>>>()?
        .into_iter()
        .unzip();
    let out = RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)?;

    let measured = measure_classes(ctx, &released, &class_of, class_labels.len());
    let qn = ctx.qis.len() as f64;
    let ncp_by_column: BTreeMap<String, f64> = request
        .quasi_identifiers
        .iter()
        .zip(&penalty_sums)
        .map(|(c, s)| {
            (
                c.clone(),
                if rows_out > 0 {
                    s / rows_out as f64
                } else {
                    0.0
                },
            )
        })
        .collect();
    let ncp = if rows_out > 0 {
        penalty_sums.iter().sum::<f64>() / (rows_out as f64 * qn)
    } else {
        0.0
    };
    let report = Report {
        rows_in: n,
        rows_out,
        suppressed,
        classes: measured.sizes.iter().filter(|&&s| s > 0).count(),
        min_class_size: measured
            .sizes
            .iter()
            .copied()
            .filter(|&s| s > 0)
            .min()
            .unwrap_or(0),
        average_class_size: if class_labels.is_empty() {
            0.0
        } else {
            rows_out as f64 / class_labels.len() as f64
        },
        discernibility: measured
            .sizes
            .iter()
            .map(|&s| (s as f64) * (s as f64))
            .sum::<f64>()
            + suppressed as f64 * n as f64,
        ncp,
        ncp_by_column,
        l_distinct: measured.l_distinct,
        l_entropy: measured.l_entropy,
        t: measured.t,
        mode: request.params.mode,
    };
    // Checked again on what leaves, independent of how it was split.
    if rows_out > 0 && report.min_class_size < request.params.k {
        return Err(Error::Unsatisfiable(format!(
            "internal check failed: a released class has {} rows, fewer than k = {}",
            report.min_class_size, request.params.k
        )));
    }
    Ok(Anonymized { batch: out, report })
}

struct Measured {
    sizes: Vec<usize>,
    l_distinct: Option<usize>,
    l_entropy: Option<f64>,
    t: Option<f64>,
}

fn measure_classes(ctx: &Ctx, released: &[u32], class_of: &[u32], classes: usize) -> Measured {
    let mut sizes = vec![0usize; classes];
    for &r in released {
        sizes[class_of[r as usize] as usize] += 1;
    }
    let Some(s) = &ctx.sensitive else {
        return Measured {
            sizes,
            l_distinct: None,
            l_entropy: None,
            t: None,
        };
    };
    let mut hist = vec![vec![0u32; s.domain]; classes];
    let mut overall = vec![0u32; s.domain];
    for &r in released {
        let c = s.code[r as usize] as usize;
        hist[class_of[r as usize] as usize][c] += 1;
        overall[c] += 1;
    }
    let total = released.len().max(1) as f64;
    let global: Vec<f64> = overall.iter().map(|&c| f64::from(c) / total).collect();
    let distance = ctx
        .t
        .as_ref()
        .map(|t| &t.distance)
        .unwrap_or(&GroundDistance::Equal);
    let nonempty = hist
        .iter()
        .zip(&sizes)
        .filter(|(_, s)| **s > 0)
        .map(|(h, _)| h);
    let (mut l_distinct, mut l_entropy, mut t) = (usize::MAX, f64::INFINITY, 0.0f64);
    for h in nonempty {
        l_distinct = l_distinct.min(h.iter().filter(|&&c| c > 0).count());
        l_entropy = l_entropy.min(entropy(h).exp());
        t = t.max(emd(h, &global, distance));
    }
    let any = !released.is_empty();
    Measured {
        sizes,
        l_distinct: any.then_some(l_distinct),
        l_entropy: any.then_some(l_entropy),
        t: (any && ctx.t.is_some()).then_some(t),
    }
}

/// The privacy an already generalized table achieves: classes are the
/// distinct tuples of its quasi-identifier columns.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Measurement {
    /// The smallest class.
    pub k: usize,
    /// The smallest number of distinct sensitive values in a class.
    pub l_distinct: Option<usize>,
    /// The number of classes.
    pub classes: usize,
}

/// Measures k (and distinct l) of a released table, whatever produced it.
pub fn measure(
    batch: &RecordBatch,
    quasi_identifiers: &[String],
    sensitive: Option<&str>,
) -> Result<Measurement> {
    let mut keys: Vec<Vec<String>> =
        vec![Vec::with_capacity(quasi_identifiers.len()); batch.num_rows()];
    for q in quasi_identifiers {
        for (row, v) in as_text(q, column(batch, q)?)?.into_iter().enumerate() {
            keys[row].push(v);
        }
    }
    let sens = match sensitive {
        Some(s) => Some(as_text(s, column(batch, s)?)?),
        None => None,
    };
    let mut classes: HashMap<&[String], (usize, std::collections::HashSet<&str>)> = HashMap::new();
    for (row, key) in keys.iter().enumerate() {
        let e = classes.entry(key.as_slice()).or_default();
        e.0 += 1;
        if let Some(s) = &sens {
            e.1.insert(s[row].as_str());
        }
    }
    Ok(Measurement {
        k: classes.values().map(|c| c.0).min().unwrap_or(0),
        l_distinct: sens
            .as_ref()
            .map(|_| classes.values().map(|c| c.1.len()).min().unwrap_or(0)),
        classes: classes.len(),
    })
}
