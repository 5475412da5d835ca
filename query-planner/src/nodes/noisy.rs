//! `NoisyAggregate`: turns the exact, contribution-bounded aggregates of
//! one `GROUP BY` into differentially private releases.
//!
//! Its input is DataFusion's own `Aggregate` over `BoundContributions`,
//! computing for each group the exact statistics each release needs
//! (counts, fixed-point sums, value lists for quantiles, and the number of
//! distinct patients when keys are selected). It then
//! - chooses the released groups: the whole public domain (groups absent
//!   from the data are released too, from zero), DP key selection, or the
//!   one group of an aggregate without `GROUP BY`;
//! - adds the noise planned for each release and post-processes it
//!   (clamping, ratios, roots), and
//! - outputs exactly the schema of the researcher's aggregate, so the rest
//!   of the query (HAVING, ORDER BY, LIMIT, expressions) runs unchanged on
//!   the noisy values.

use std::collections::HashMap;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};

use arrow::array::{
    Array, ArrayRef, AsArray, BinaryArray, Decimal128Array, Float64Array, Int64Array, RecordBatch,
    UInt32Array,
};
use arrow::compute::{cast, concat_batches, take};
use arrow::datatypes::{DataType, Float64Type, Int64Type, SchemaRef, UInt64Type};
use arrow::row::{RowConverter, SortField};
use cohort_anonymizer::accountant::Charge;
use cohort_anonymizer::dp::KeyThreshold;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{DFSchemaRef, Result as DfResult, ScalarValue};
use datafusion::execution::TaskContext;
use datafusion::execution::memory_pool::MemoryConsumer;
use datafusion::logical_expr::{Expr, LogicalPlan, UserDefinedLogicalNodeCore};
use datafusion::physical_expr::{EquivalenceProperties, Partitioning, PhysicalExpr};
use datafusion::physical_plan::distribution_requirements::InputDistributionRequirements;
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, Distribution, ExecutionPlan, PlanProperties,
    SendableRecordBatchStream,
};
use futures::StreamExt;
use serde::Serialize;

use crate::encryption::{EncryptedRelease, Executor};
use crate::error::{Error, Result};
use crate::release::{Influence, Noise, Statistic, unit_scale};

/// How the released groups of a DP aggregate are chosen.
#[derive(Clone, Debug)]
pub(crate) enum Keys {
    /// No `GROUP BY`: one row.
    None,
    /// Every combination of the keys' public domains, in this order.
    Public(Vec<Vec<ScalarValue>>),
    /// DP key selection on the number of distinct patients per group
    /// (the inner aggregate's column `units`).
    Selected {
        units: usize,
        threshold: Option<KeyThreshold>,
        /// What the selection costs, once planned.
        charge: Option<Charge>,
    },
}

/// One aggregate of the researcher's query and its planned release.
#[derive(Clone, Debug)]
pub(crate) struct PlannedRelease {
    /// The aggregate's output column name.
    pub output: String,
    /// The aggregate as written (DataFusion's display).
    pub aggregate: String,
    pub statistic: Statistic,
    /// Indices of its exact statistics among the inner aggregate's columns.
    pub inputs: Vec<usize>,
    /// How much one row or patient moves each of them.
    pub influence: Vec<Influence>,
    pub noise: Option<Noise>,
    pub charge: Option<Charge>,
    /// Set when the release is computed under encryption.
    pub encrypted: Option<EncryptedRelease>,
}

/// One DP aggregate (a "site") of a query.
#[derive(Clone, Debug)]
pub(crate) struct Site {
    pub id: usize,
    pub key_count: usize,
    pub keys: Keys,
    pub releases: Vec<PlannedRelease>,
    /// Groups one patient adds to, rows per group (as bounded).
    pub max_groups: u32,
    pub max_rows: u32,
    /// The key expressions, for EXPLAIN.
    pub key_names: Vec<String>,
    /// The bounding's sampling, for EXPLAIN.
    pub sampling: String,
    /// The privacy unit, for EXPLAIN.
    pub unit: String,
    /// The names of the inner aggregate's statistics, after the keys.
    pub inner_names: Vec<String>,
    pub log: ReleaseLog,
    /// Computes the encrypted releases (installed by the planner).
    pub executor: Option<Executor>,
}

/// What one aggregate released, per group.
#[derive(Clone, Debug, Serialize)]
pub struct ReleasedAggregate {
    /// The output column.
    pub output: String,
    /// The aggregate as written.
    pub aggregate: String,
    /// The released groups' keys, as text.
    pub groups: Vec<String>,
    /// The released values, per group (counts as reals).
    pub values: Vec<f64>,
    /// The 95% error half-width per group.
    pub error_95: Vec<f64>,
}

/// Where execution records the releases.
#[derive(Clone, Debug, Default)]
pub(crate) struct ReleaseLog(Arc<Mutex<Vec<ReleasedAggregate>>>);

impl ReleaseLog {
    pub(crate) fn take(&self) -> Vec<ReleasedAggregate> {
        self.0
            .lock()
            .map(|mut log| std::mem::take(&mut *log))
            .unwrap_or_default()
    }

    fn push(&self, released: ReleasedAggregate) {
        if let Ok(mut log) = self.0.lock() {
            log.push(released);
        }
    }
}

/// The logical node.
#[derive(Clone, Debug)]
pub(crate) struct NoisyAggregate {
    pub input: LogicalPlan,
    /// The researcher's aggregate's schema, which this node outputs.
    pub schema: DFSchemaRef,
    pub site: Arc<Site>,
}

impl PartialEq for NoisyAggregate {
    fn eq(&self, other: &Self) -> bool {
        self.site.id == other.site.id && self.input == other.input && self.schema == other.schema
    }
}

impl Eq for NoisyAggregate {}

impl PartialOrd for NoisyAggregate {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        (self.site.id, &self.input).partial_cmp(&(other.site.id, &other.input))
    }
}

impl Hash for NoisyAggregate {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.site.id.hash(state);
        self.input.hash(state);
    }
}

impl UserDefinedLogicalNodeCore for NoisyAggregate {
    fn name(&self) -> &str {
        "NoisyAggregate"
    }

    fn inputs(&self) -> Vec<&LogicalPlan> {
        vec![&self.input]
    }

    fn schema(&self) -> &DFSchemaRef {
        &self.schema
    }

    fn expressions(&self) -> Vec<Expr> {
        vec![]
    }

    fn fmt_for_explain(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "NoisyAggregate: ")?;
        match &self.site.keys {
            Keys::None => write!(f, "keys=none")?,
            Keys::Public(domain) => write!(f, "keys=public domain ({} groups)", domain.len())?,
            Keys::Selected { threshold, .. } => match threshold {
                Some(t) => write!(f, "keys=DP selection (threshold {})", t.threshold())?,
                None => write!(f, "keys=DP selection")?,
            },
        }
        let releases: Vec<String> = self
            .site
            .releases
            .iter()
            .map(|r| match &r.noise {
                Some(noise) => format!("{}: {}", r.output, noise.mechanism()),
                None => r.output.clone(),
            })
            .collect();
        write!(f, ", releases=[{}]", releases.join(", "))
    }

    fn with_exprs_and_inputs(
        &self,
        _exprs: Vec<Expr>,
        mut inputs: Vec<LogicalPlan>,
    ) -> DfResult<Self> {
        Ok(NoisyAggregate {
            input: inputs.swap_remove(0),
            schema: Arc::clone(&self.schema),
            site: Arc::clone(&self.site),
        })
    }

    fn prevent_predicate_push_down_columns(&self) -> std::collections::HashSet<String> {
        // Nothing above may move below the noise: a predicate on a group key
        // (`HAVING gender = 'female'`) stays above it. DataFusion's filter
        // pushdown compares these names with the predicate's unqualified
        // column names; the qualified ones are listed too.
        self.schema
            .columns()
            .into_iter()
            .flat_map(|column| [column.name.clone(), column.flat_name()])
            .collect()
    }
}

/// The physical operator.
#[derive(Debug)]
pub(crate) struct NoisyAggregateExec {
    input: Arc<dyn ExecutionPlan>,
    schema: SchemaRef,
    site: Arc<Site>,
    properties: Arc<PlanProperties>,
}

impl NoisyAggregateExec {
    pub(crate) fn new(input: Arc<dyn ExecutionPlan>, schema: SchemaRef, site: Arc<Site>) -> Self {
        let properties = PlanProperties::new(
            EquivalenceProperties::new(Arc::clone(&schema)),
            Partitioning::UnknownPartitioning(1),
            EmissionType::Final,
            Boundedness::Bounded,
        );
        NoisyAggregateExec {
            input,
            schema,
            site,
            properties: Arc::new(properties),
        }
    }
}

impl DisplayAs for NoisyAggregateExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(
            f,
            "NoisyAggregateExec: releases={}",
            self.site.releases.len()
        )
    }
}

impl ExecutionPlan for NoisyAggregateExec {
    fn name(&self) -> &str {
        "NoisyAggregateExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn input_distribution_requirements(&self) -> InputDistributionRequirements {
        InputDistributionRequirements::new(vec![Distribution::SinglePartition])
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> DfResult<TreeNodeRecursion>,
    ) -> DfResult<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn with_new_children(
        self: Arc<Self>,
        mut children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        Ok(Arc::new(NoisyAggregateExec::new(
            children.swap_remove(0),
            Arc::clone(&self.schema),
            Arc::clone(&self.site),
        )))
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> DfResult<SendableRecordBatchStream> {
        let reservation = MemoryConsumer::new("NoisyAggregate").register(context.memory_pool());
        let mut input = self.input.execute(partition, context)?;
        let input_schema = self.input.schema();
        let (schema, site) = (Arc::clone(&self.schema), Arc::clone(&self.site));
        let output = futures::stream::once(async move {
            let mut batches = Vec::new();
            while let Some(batch) = input.next().await {
                let batch = batch?;
                // What it holds counts against the query's memory pool
                // (twice: the batches and their concatenation).
                reservation.try_grow(2 * batch.get_array_memory_size())?;
                batches.push(batch);
            }
            let exact = concat_batches(&input_schema, &batches)?;
            drop(batches);
            let released = release(&site, &exact, &schema)?;
            reservation.free();
            Ok(released)
        });
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            Arc::clone(&self.schema),
            output,
        )))
    }
}

/// The released groups: for each, the row of the exact aggregate (if the
/// group occurs in the data), and the key columns to output.
struct Groups {
    rows: Vec<Option<usize>>,
    keys: Vec<ArrayRef>,
}

fn choose_groups(site: &Site, exact: &RecordBatch, schema: &SchemaRef) -> Result<Groups> {
    let k = site.key_count;
    let key_columns: Vec<ArrayRef> = exact.columns()[..k].to_vec();
    match &site.keys {
        Keys::None => Ok(Groups {
            rows: vec![(exact.num_rows() > 0).then_some(0)],
            keys: vec![],
        }),
        Keys::Public(domain) => {
            let mut keys = Vec::with_capacity(k);
            for i in 0..k {
                let values = domain.iter().map(|combo| combo[i].clone());
                let array = ScalarValue::iter_to_array(values)?;
                keys.push(cast(&array, schema.field(i).data_type())?);
            }
            let exact_keys = key_columns
                .iter()
                .zip(&keys)
                .map(|(column, like)| cast(column, like.data_type()))
                .collect::<std::result::Result<Vec<_>, _>>()?;
            let fields = keys
                .iter()
                .map(|a| SortField::new(a.data_type().clone()))
                .collect();
            let converter = RowConverter::new(fields)?;
            let found = converter.convert_columns(&exact_keys)?;
            let wanted = converter.convert_columns(&keys)?;
            let index: HashMap<_, usize> = found.iter().enumerate().map(|(i, r)| (r, i)).collect();
            let rows = wanted.iter().map(|row| index.get(&row).copied()).collect();
            Ok(Groups { rows, keys })
        }
        Keys::Selected {
            units, threshold, ..
        } => {
            let threshold = threshold
                .as_ref()
                .ok_or_else(|| internal("key selection was not calibrated"))?;
            let fields = key_columns
                .iter()
                .map(|a| SortField::new(a.data_type().clone()))
                .collect();
            let converter = RowConverter::new(fields)?;
            let found = converter.convert_columns(&key_columns)?;
            let counts = int_values(exact.column(k + units))?;
            // Keys are identified by their content (hex of the row format),
            // never by their position, which depends on other groups.
            let mut by_key = HashMap::with_capacity(exact.num_rows());
            let mut row_of = HashMap::with_capacity(exact.num_rows());
            for (i, row) in found.iter().enumerate() {
                let key = data_encoding_hex(row.as_ref());
                by_key.insert(key.clone(), counts[i].unwrap_or(0));
                row_of.insert(key, i);
            }
            let selection = threshold.release(by_key)?;
            let rows: Vec<usize> = selection
                .value()
                .keys
                .iter()
                .map(|(key, _)| row_of[key])
                .collect();
            let indices = UInt32Array::from(rows.iter().map(|&r| r as u32).collect::<Vec<_>>());
            let keys = key_columns
                .iter()
                .map(|c| take(c.as_ref(), &indices, None))
                .collect::<std::result::Result<Vec<_>, _>>()?;
            Ok(Groups {
                rows: rows.into_iter().map(Some).collect(),
                keys,
            })
        }
    }
}

fn data_encoding_hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

fn internal(message: &str) -> Error {
    Error::Engine(Box::new(datafusion::error::DataFusionError::Internal(
        message.to_string(),
    )))
}

/// Integer values of a count (Int64/UInt64) or fixed-point sum (Decimal128,
/// saturated to `i64` units) column.
fn int_values(array: &ArrayRef) -> Result<Vec<Option<i64>>> {
    Ok(match array.data_type() {
        DataType::Int64 => array.as_primitive::<Int64Type>().iter().collect(),
        DataType::UInt64 => array
            .as_primitive::<UInt64Type>()
            .iter()
            .map(|v| v.map(|v| i64::try_from(v).unwrap_or(i64::MAX)))
            .collect(),
        DataType::Decimal128(_, _) => array
            .as_any()
            .downcast_ref::<Decimal128Array>()
            .ok_or_else(|| internal("decimal column"))?
            .iter()
            .map(|v| v.map(|v| i64::try_from(v).unwrap_or(if v < 0 { i64::MIN } else { i64::MAX })))
            .collect(),
        other => {
            let cast = cast(array, &DataType::Int64)
                .map_err(|_| internal(&format!("unexpected exact statistic type {other}")))?;
            cast.as_primitive::<Int64Type>().iter().collect()
        }
    })
}

/// The exact values of `column` for the released groups (absent: 0).
fn exact_ints(exact: &RecordBatch, column: usize, rows: &[Option<usize>]) -> Result<Vec<i64>> {
    let values = int_values(exact.column(column))?;
    Ok(rows
        .iter()
        .map(|row| row.and_then(|r| values[r]).unwrap_or(0))
        .collect())
}

/// The value lists of a quantile's input for the released groups.
fn exact_lists(
    exact: &RecordBatch,
    column: usize,
    rows: &[Option<usize>],
) -> Result<Vec<Vec<f64>>> {
    let array = exact.column(column);
    let lists = array
        .as_list_opt::<i32>()
        .ok_or_else(|| internal("a quantile's input is a list"))?;
    rows.iter()
        .map(|row| match row {
            Some(r) if !lists.is_null(*r) => {
                let values = cast(&lists.value(*r), &DataType::Float64)?;
                Ok(values
                    .as_primitive::<Float64Type>()
                    .iter()
                    .flatten()
                    .collect())
            }
            _ => Ok(Vec::new()),
        })
        .collect()
}

fn release(site: &Site, exact: &RecordBatch, schema: &SchemaRef) -> Result<RecordBatch> {
    let k = site.key_count;
    let groups = choose_groups(site, exact, schema)?;
    let n = groups.rows.len();
    let group_names = group_names(&groups.keys, n)?;
    let mut columns: Vec<ArrayRef> = groups.keys.clone();
    for (index, planned) in site.releases.iter().enumerate() {
        let noise = planned
            .noise
            .as_ref()
            .ok_or_else(|| internal("release was not calibrated"))?;
        let input = |j: usize| k + planned.inputs[j];
        let bound = noise.error_bound(&planned.statistic)?;
        if let Some(encrypted) = &planned.encrypted {
            let sealed = release_encrypted(site, encrypted, noise, exact, input(0), &groups.rows)?;
            site.log.push(ReleasedAggregate {
                output: planned.output.clone(),
                aggregate: planned.aggregate.clone(),
                groups: group_names.clone(),
                values: vec![f64::NAN; n],
                error_95: vec![bound.at_count(0.0); n],
            });
            let array: ArrayRef = Arc::new(BinaryArray::from_iter_values(sealed));
            columns.push(cast(&array, schema.field(k + index).data_type())?);
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
        site.log.push(ReleasedAggregate {
            output: planned.output.clone(),
            aggregate: planned.aggregate.clone(),
            groups: group_names.clone(),
            values: values.clone(),
            error_95: errors,
        });
        let field = schema.field(k + index);
        let array: ArrayRef = if field.data_type().is_integer() {
            Arc::new(Int64Array::from(
                values.iter().map(|v| v.round() as i64).collect::<Vec<_>>(),
            ))
        } else {
            Arc::new(Float64Array::from(values))
        };
        columns.push(cast(&array, field.data_type())?);
    }
    Ok(RecordBatch::try_new(Arc::clone(schema), columns)?)
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

/// Each released group's keys as text (for the release log).
fn group_names(keys: &[ArrayRef], n: usize) -> Result<Vec<String>> {
    (0..n)
        .map(|row| {
            let parts = keys
                .iter()
                .map(|array| Ok(ScalarValue::try_from_array(array, row)?.to_string()))
                .collect::<DfResult<Vec<String>>>()?;
            Ok(parts.join(", "))
        })
        .collect()
}
