//! From final partitions to the released table: generalized labels for each
//! class, the kept columns, and the report of information loss and achieved
//! privacy.
//!
//! The report is measured on what is released, not on how it was split, and
//! k is checked once more there before anything leaves.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use arrow::array::{ArrayRef, StringBuilder, UInt32Array};
use arrow::compute::take;
use arrow::datatypes::{DataType, Field, Schema};
use arrow::record_batch::RecordBatch;
use rayon::prelude::*;

use super::encode::Qi;
use super::partition::{Ctx, Part};
use super::request::{Anonymized, Report, Request};
use crate::error::{Error, Result};
use crate::hierarchy::{date_from_unix_days, format_number};
use crate::privacy_model::{GroundDistance, emd, entropy};
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

fn extent(values: impl Iterator<Item = f64>) -> (f64, f64) {
    values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), x| {
        (lo.min(x), hi.max(x))
    })
}

pub(super) fn build_output(
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
