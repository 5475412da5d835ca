//! The Mondrian cut: splitting a partition of rows top-down while every part
//! still satisfies k, l and t (or fits the suppression budget).
//!
//! Works on row indices only: the encoded attributes come in a [`Ctx`], and
//! the result is a list of [`Part`]s of one permutation of the rows, which
//! the output step turns into generalized classes.

use rayon::prelude::*;

use super::encode::{Qi, Sensitive, histogram};
use super::request::{Mode, Params};
use crate::hierarchy::DomainTree;
use crate::privacy_model::{TCloseness, entropy};
pub(super) struct Ctx<'a> {
    pub(super) qis: Vec<Qi>,
    /// Every row's ordinal per quasi-identifier, row-major (`row * d + q`):
    /// scanning a partition touches one cache line per row, not one per
    /// quasi-identifier.
    pub(super) keys: Vec<f64>,
    /// For each set-valued quasi-identifier, its column and its span of
    /// words in one bitset ([`set_spans`]), so [`widths`] counts their
    /// distinct values in its single pass.
    pub(super) sets: Vec<SetSpan>,
    pub(super) sensitive: Option<Sensitive>,
    pub(super) params: &'a Params,
    pub(super) t: Option<TCloseness>,
}

/// A set-valued quasi-identifier's place in the bitset of [`widths`].
pub(super) struct SetSpan {
    column: usize,
    first_word: usize,
    words: usize,
}

/// Lays the set-valued quasi-identifiers out in one bitset, one bit per
/// value code.
pub(super) fn set_spans(qis: &[Qi]) -> Vec<SetSpan> {
    let mut next = 0;
    let mut spans = Vec::new();
    for (column, q) in qis.iter().enumerate() {
        if let Qi::Set { labels, .. } = q {
            let words = labels.len().div_ceil(64).max(1);
            spans.push(SetSpan {
                column,
                first_word: next,
                words,
            });
            next += words;
        }
    }
    spans
}

/// A final partition: `len` rows at `start` of the permutation.
pub(super) struct Part {
    pub(super) start: usize,
    pub(super) len: usize,
    pub(super) suppressed: bool,
}

/// Partitions smaller than this are split on the current thread.
const PARALLEL_MIN: usize = 16_384;

impl Ctx<'_> {
    /// Why `rows` cannot be a released class, or `None` if it can.
    pub(super) fn violation(&self, rows: &[u32]) -> Option<String> {
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
pub(super) fn split(
    ctx: &Ctx,
    part: &mut [u32],
    offset: usize,
    budget: usize,
) -> (Vec<Part>, usize) {
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
/// from one pass over the partition's rows: extents, and the values of
/// every set-valued attribute marked in one bitset. (This is the
/// partitioning's innermost loop: every level of the cut runs it over every
/// row.)
fn widths(ctx: &Ctx, part: &[u32]) -> Vec<f64> {
    let d = ctx.qis.len();
    let mut lo = vec![f64::INFINITY; d];
    let mut hi = vec![f64::NEG_INFINITY; d];
    let words = ctx.sets.last().map_or(0, |s| s.first_word + s.words);
    let mut seen = vec![0u64; words];
    for &r in part {
        let row = &ctx.keys[r as usize * d..r as usize * d + d];
        // The keys are finite (checked when encoded): plain comparisons.
        for ((lo, hi), &v) in lo.iter_mut().zip(hi.iter_mut()).zip(row) {
            if v < *lo {
                *lo = v;
            }
            if v > *hi {
                *hi = v;
            }
        }
        for s in &ctx.sets {
            let c = row[s.column] as usize;
            seen[s.first_word + c / 64] |= 1 << (c % 64);
        }
    }
    let distinct = |j: usize| -> u32 {
        let s = ctx
            .sets
            .iter()
            .find(|s| s.column == j)
            .expect("a set's span");
        seen[s.first_word..s.first_word + s.words]
            .iter()
            .map(|w| w.count_ones())
            .sum()
    };
    ctx.qis
        .iter()
        .enumerate()
        .map(|(j, q)| match q {
            Qi::Ordered { min, max, .. } if max > min => (hi[j] - lo[j]) / (max - min),
            // Sets are penalized by how many values they hold, not their span.
            Qi::Set { labels, .. } if labels.len() > 1 && lo[j] < hi[j] => {
                f64::from(distinct(j) - 1) / (labels.len() - 1) as f64
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
