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
//!
//! The parts: the request, its checks and report (`request`), reading
//! columns into dense codes (`encode`), the recursive cut (`partition`),
//! the generalized table and its report (`output`), and [`measure`] for
//! any released table (`verify`).

mod encode;
mod output;
mod partition;
mod request;
mod verify;

use arrow::record_batch::RecordBatch;

use crate::error::{Error, Result};
use crate::privacy_model::TCloseness;
use encode::{column, encode_qi, encode_sensitive, histogram};
use output::build_output;
use partition::{Ctx, set_spans, split};
use request::validate;

pub use request::{Anonymized, Mode, Params, Report, Request};
pub use verify::{Measurement, measure};

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
        sets: set_spans(&qis),
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
