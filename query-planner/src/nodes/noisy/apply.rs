//! Releasing each planned aggregate: the planned noise added to the exact
//! statistics of the released groups, then post-processed (clamping, ratios,
//! roots) into the researcher's output columns, and logged.
//!
//! Encrypted columns are aggregated by the engine's executor with the noise
//! added under encryption; their values never appear here.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, BinaryArray, Float64Array, Int64Array, RecordBatch};
use arrow::compute::cast;
use arrow::datatypes::{DataType, SchemaRef};

use super::exact::{exact_ints, exact_lists, internal};
use super::groups::{choose_groups, group_names};
use super::site::{ReleasedAggregate, Site};
use crate::encryption::EncryptedRelease;
use crate::error::{Error, Result};
use crate::release::{Noise, Statistic, unit_scale};
pub(super) fn release(site: &Site, exact: &RecordBatch, schema: &SchemaRef) -> Result<RecordBatch> {
    let k = site.key_count;
    let groups = choose_groups(site, exact, schema)?;
    let n = groups.rows.len();
    let group_names = group_names(&groups.keys, n)?;
    let mut columns: Vec<ArrayRef> = groups.keys.clone();
    // Each release's noisy values and errors, or its sealed column.
    let mut released: Vec<Released> = Vec::with_capacity(site.releases.len());
    for (index, planned) in site.releases.iter().enumerate() {
        let noise = planned
            .noise
            .as_ref()
            .ok_or_else(|| internal("release was not calibrated"))?;
        let input = |j: usize| k + planned.inputs[j];
        let bound = noise.error_bound(&planned.statistic)?;
        if let Some(encrypted) = &planned.encrypted {
            let sealed = release_encrypted(site, encrypted, noise, exact, input(0), &groups.rows)?;
            let log = ReleasedAggregate {
                output: planned.output.clone(),
                aggregate: planned.aggregate.clone(),
                groups: group_names.clone(),
                values: vec![f64::NAN; n],
                error_95: vec![bound.at_count(0.0); n],
            };
            let array: ArrayRef = Arc::new(BinaryArray::from_iter_values(sealed));
            let array = cast(&array, schema.field(k + index).data_type())?;
            released.push(Released::Sealed(array, log));
            continue;
        }
        let (values, errors): (Vec<f64>, Vec<f64>) = match (&planned.statistic, noise) {
            (Statistic::Count { .. }, Noise::Integer { noise }) => {
                let noisy = noise.release(&exact_ints(exact, input(0), &groups.rows)?)?;
                let values = noisy.value().iter().map(|&v| v.max(0) as f64).collect();
                (values, vec![bound.at_count(0.0); n])
            }
            (Statistic::Sum { decimals, .. }, Noise::Integer { noise }) => {
                let noisy = noise.release(&exact_ints(exact, input(0), &groups.rows)?)?;
                let scale = unit_scale(*decimals);
                let values = noisy.value().iter().map(|&v| v as f64 / scale).collect();
                (values, vec![bound.at_count(0.0); n])
            }
            (Statistic::Mean { bounds, decimals }, Noise::Mean { sum, count }) => {
                let sums = sum.release(&exact_ints(exact, input(0), &groups.rows)?)?;
                let counts = count.release(&exact_ints(exact, input(1), &groups.rows)?)?;
                let scale = unit_scale(*decimals);
                let midpoint = bounds.lower + (bounds.upper - bounds.lower) / 2.0;
                sums.value()
                    .iter()
                    .zip(counts.value())
                    .map(|(&s, &c)| {
                        if c >= 1 {
                            // The sum is of distances from the midpoint.
                            let mean = (midpoint + s as f64 / scale / c as f64)
                                .clamp(bounds.lower, bounds.upper);
                            (mean, bound.at_count(c as f64))
                        } else {
                            (midpoint, bound.at_count(0.0))
                        }
                    })
                    .unzip()
            }
            (
                Statistic::Variance {
                    bounds,
                    decimals,
                    square_decimals,
                    sample,
                    root,
                },
                Noise::Variance {
                    count,
                    sum,
                    squares,
                },
            ) => {
                let counts = count.release(&exact_ints(exact, input(0), &groups.rows)?)?;
                let sums = sum.release(&exact_ints(exact, input(1), &groups.rows)?)?;
                let square_sums = squares.release(&exact_ints(exact, input(2), &groups.rows)?)?;
                let h = (bounds.upper - bounds.lower) / 2.0;
                counts
                    .value()
                    .iter()
                    .zip(sums.value())
                    .zip(square_sums.value())
                    .map(|((&c, &s), &q)| {
                        let cap = if *sample { 2.0 * h * h } else { h * h };
                        let minimum = if *sample { 2 } else { 1 };
                        let variance = if c >= minimum {
                            let c = c as f64;
                            let mean = (s as f64 / unit_scale(*decimals) / c).clamp(-h, h);
                            let second =
                                (q as f64 / unit_scale(*square_decimals) / c).clamp(0.0, h * h);
                            let population = (second - mean * mean).max(0.0);
                            if *sample {
                                (population * c / (c - 1.0)).min(cap)
                            } else {
                                population.min(cap)
                            }
                        } else {
                            cap / 2.0
                        };
                        let value = if *root { variance.sqrt() } else { variance };
                        (value, bound.at_count(c as f64))
                    })
                    .unzip()
            }
            (Statistic::Quantile { .. }, Noise::Quantile { choice }) => {
                let lists = exact_lists(exact, input(0), &groups.rows)?;
                let mut values = Vec::with_capacity(n);
                for list in &lists {
                    values.push(*choice.release(list)?.value());
                }
                (values, vec![bound.at_count(0.0); n])
            }
            _ => return Err(internal("noise does not match its statistic")),
        };
        released.push(Released::Values(values, errors));
    }
    if let Some(rules) = &site.small_cells {
        small_cells(site, rules, &mut released, n);
    }
    for (index, (planned, result)) in site.releases.iter().zip(released).enumerate() {
        let (values, errors) = match result {
            Released::Sealed(array, log) => {
                site.log.push(log);
                columns.push(array);
                continue;
            }
            Released::Values(values, errors) => (values, errors),
        };
        site.log.push(ReleasedAggregate {
            output: planned.output.clone(),
            aggregate: planned.aggregate.clone(),
            groups: group_names.clone(),
            values: values.clone(),
            error_95: errors,
        });
        // A withheld value (NaN) is NULL in the answer.
        let field = schema.field(k + index);
        let array: ArrayRef = if field.data_type().is_integer() {
            Arc::new(Int64Array::from(
                values
                    .iter()
                    .map(|v| (!v.is_nan()).then(|| v.round() as i64))
                    .collect::<Vec<_>>(),
            ))
        } else {
            Arc::new(Float64Array::from(
                values
                    .iter()
                    .map(|v| (!v.is_nan()).then_some(*v))
                    .collect::<Vec<_>>(),
            ))
        };
        columns.push(cast(&array, field.data_type())?);
    }
    Ok(RecordBatch::try_new(Arc::clone(schema), columns)?)
}

/// A release's output before it becomes a column.
enum Released {
    /// Noisy values and their 95% errors, per group.
    Values(Vec<f64>, Vec<f64>),
    /// The sealed results of an encrypted release, and what is logged of it.
    Sealed(ArrayRef, ReleasedAggregate),
}

/// The study's small-cell rules on the noisy counts: each count rounded,
/// and every value of a group withheld (NaN) where one of its counts falls
/// below the threshold. Post-processing: it reads only noisy values.
/// Sealed (encrypted) results are the patients' key holders' to open and
/// are left as they are.
fn small_cells(
    site: &Site,
    rules: &crate::policy::SmallCells,
    released: &mut [Released],
    groups: usize,
) {
    let mut withheld = vec![false; groups];
    for (planned, result) in site.releases.iter().zip(released.iter_mut()) {
        let (Statistic::Count { .. }, Released::Values(values, _)) = (&planned.statistic, result)
        else {
            continue;
        };
        for (group, value) in values.iter_mut().enumerate() {
            match rules.apply(*value) {
                Some(kept) => *value = kept,
                None => withheld[group] = true,
            }
        }
    }
    for result in released.iter_mut() {
        if let Released::Values(values, _) = result {
            for (value, withheld) in values.iter_mut().zip(&withheld) {
                if *withheld {
                    *value = f64::NAN;
                }
            }
        }
    }
}

/// One encrypted release: each released group's ciphertexts, aggregated
/// by the engine's executor with that group's noise added under
/// encryption. The noise is drawn here and handed over; it is not kept.
fn release_encrypted(
    site: &Site,
    encrypted: &EncryptedRelease,
    noise: &Noise,
    exact: &RecordBatch,
    column: usize,
    rows: &[Option<usize>],
) -> Result<Vec<Vec<u8>>> {
    let Noise::Integer { noise } = noise else {
        return Err(internal("an encrypted release has integer noise"));
    };
    let Some(executor) = &site.executor else {
        return Err(Error::Engine(Box::new(
            datafusion::error::DataFusionError::Plan(format!(
                "`{}.{}` is encrypted and this engine holds no keys to aggregate it",
                encrypted.table, encrypted.column
            )),
        )));
    };
    let lists = exact.column(column);
    let lists = lists
        .as_list_opt::<i32>()
        .ok_or_else(|| internal("an encrypted release's input is a list"))?;
    let draws = noise.release(&vec![0; rows.len()])?;
    let mut sealed = Vec::with_capacity(rows.len());
    for (row, &draw) in rows.iter().zip(draws.value()) {
        let values = match row {
            Some(r) if !lists.is_null(*r) => lists.value(*r),
            _ => arrow::array::new_empty_array(&DataType::Binary),
        };
        let values = cast(&values, &DataType::Binary)?;
        let binary = values
            .as_binary_opt::<i32>()
            .ok_or_else(|| internal("ciphertexts are binary"))?;
        let cells: Vec<&[u8]> = binary.iter().flatten().collect();
        let result = executor
            .0
            .aggregate(
                &encrypted.table,
                &encrypted.column,
                &encrypted.op,
                &cells,
                draw,
                site.max_rows,
            )
            .map_err(|e| {
                Error::Engine(Box::new(datafusion::error::DataFusionError::External(
                    Box::new(e),
                )))
            })?;
        sealed.push(result.to_bytes());
    }
    Ok(sealed)
}
