//! `BoundContributions`: keeps at most `max_groups` groups per patient and
//! at most `max_rows` rows per patient and group.
//!
//! This is what makes a DP aggregate's sensitivity true: after it, adding
//! or removing one patient changes at most `max_groups · max_rows` rows of
//! its output, whatever the patient's records or the joins that multiplied
//! them. Which rows are kept depends only on that patient's own rows
//! (a uniformly random subset, or the first by declared columns with ties
//! broken by the rest of the row's content), never on other patients' rows
//! or on the order in which an engine happens to produce them; so the kept
//! rows of every other patient are unchanged by the neighbour, which is
//! the stability the mechanisms' proofs assume.
//!
//! Rows whose privacy unit is NULL belong to no patient and are dropped.

use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, BooleanArray, BooleanBufferBuilder, RecordBatch};
use arrow::compute::{concat_batches, filter_record_batch};
use arrow::datatypes::SchemaRef;
use arrow::row::{RowConverter, SortField};
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{DFSchemaRef, HashMap, Result as DfResult};
use datafusion::execution::TaskContext;
use datafusion::execution::memory_pool::MemoryConsumer;
use datafusion::logical_expr::{Expr, LogicalPlan, UserDefinedLogicalNodeCore};
use datafusion::physical_expr::{EquivalenceProperties, Partitioning, PhysicalExpr};
use datafusion::physical_plan::distribution_requirements::InputDistributionRequirements;
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, Distribution, ExecutionPlan, ExecutionPlanProperties,
    PlanProperties, SendableRecordBatchStream,
};
use futures::StreamExt;
use rand::RngExt;

/// How the kept rows are chosen.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Hash)]
pub(crate) enum Choice {
    /// Uniformly at random.
    Random,
    /// The first by these expressions, then by the whole row.
    FirstBy(Vec<Expr>),
}

/// The logical node.
#[derive(Clone, Debug)]
pub(crate) struct BoundContributions {
    pub input: LogicalPlan,
    /// The privacy unit column.
    pub unit: Expr,
    /// The group keys of the aggregate above.
    pub keys: Vec<Expr>,
    pub choice: Choice,
    pub max_groups: u32,
    pub max_rows: u32,
}

impl BoundContributions {
    fn fields(&self) -> (&LogicalPlan, &Expr, &[Expr], &Choice, u32, u32) {
        (
            &self.input,
            &self.unit,
            &self.keys,
            &self.choice,
            self.max_groups,
            self.max_rows,
        )
    }
}

impl PartialEq for BoundContributions {
    fn eq(&self, other: &Self) -> bool {
        self.fields() == other.fields()
    }
}

impl Eq for BoundContributions {}

impl PartialOrd for BoundContributions {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        self.fields().partial_cmp(&other.fields())
    }
}

impl Hash for BoundContributions {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.fields().hash(state);
    }
}

impl UserDefinedLogicalNodeCore for BoundContributions {
    fn name(&self) -> &str {
        "BoundContributions"
    }

    fn inputs(&self) -> Vec<&LogicalPlan> {
        vec![&self.input]
    }

    fn schema(&self) -> &DFSchemaRef {
        self.input.schema()
    }

    fn expressions(&self) -> Vec<Expr> {
        let mut exprs = vec![self.unit.clone()];
        exprs.extend(self.keys.iter().cloned());
        if let Choice::FirstBy(order) = &self.choice {
            exprs.extend(order.iter().cloned());
        }
        exprs
    }

    fn fmt_for_explain(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "BoundContributions: unit={}", self.unit)?;
        if !self.keys.is_empty() {
            let keys: Vec<String> = self.keys.iter().map(ToString::to_string).collect();
            write!(
                f,
                ", max_groups={} by [{}]",
                self.max_groups,
                keys.join(", ")
            )?;
        }
        write!(f, ", max_rows={}, ", self.max_rows)?;
        match &self.choice {
            Choice::Random => write!(f, "sampling=reservoir"),
            Choice::FirstBy(order) => {
                let order: Vec<String> = order.iter().map(ToString::to_string).collect();
                write!(f, "sampling=first by [{}]", order.join(", "))
            }
        }
    }

    fn with_exprs_and_inputs(
        &self,
        exprs: Vec<Expr>,
        mut inputs: Vec<LogicalPlan>,
    ) -> DfResult<Self> {
        let input = inputs.swap_remove(0);
        let mut exprs = exprs.into_iter();
        let unit = exprs.next().expect("the unit expression");
        let keys: Vec<Expr> = exprs.by_ref().take(self.keys.len()).collect();
        let choice = match self.choice {
            Choice::Random => Choice::Random,
            Choice::FirstBy(_) => Choice::FirstBy(exprs.collect()),
        };
        Ok(BoundContributions {
            input,
            unit,
            keys,
            choice,
            max_groups: self.max_groups,
            max_rows: self.max_rows,
        })
    }

    fn necessary_children_exprs(&self, output_columns: &[usize]) -> Option<Vec<Vec<usize>>> {
        // The columns the parent needs; the node's own expressions are added
        // by the optimizer.
        Some(vec![output_columns.to_vec()])
    }
}

/// The physical operator.
#[derive(Debug)]
pub(crate) struct BoundContributionsExec {
    input: Arc<dyn ExecutionPlan>,
    unit: Arc<dyn PhysicalExpr>,
    keys: Vec<Arc<dyn PhysicalExpr>>,
    order: Option<Vec<Arc<dyn PhysicalExpr>>>,
    max_groups: u32,
    max_rows: u32,
    properties: Arc<PlanProperties>,
}

impl BoundContributionsExec {
    pub(crate) fn new(
        input: Arc<dyn ExecutionPlan>,
        unit: Arc<dyn PhysicalExpr>,
        keys: Vec<Arc<dyn PhysicalExpr>>,
        order: Option<Vec<Arc<dyn PhysicalExpr>>>,
        max_groups: u32,
        max_rows: u32,
    ) -> Self {
        let partitions = input.output_partitioning().partition_count();
        let properties = PlanProperties::new(
            EquivalenceProperties::new(input.schema()),
            Partitioning::UnknownPartitioning(partitions),
            EmissionType::Final,
            Boundedness::Bounded,
        );
        BoundContributionsExec {
            input,
            unit,
            keys,
            order,
            max_groups,
            max_rows,
            properties: Arc::new(properties),
        }
    }
}

impl DisplayAs for BoundContributionsExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(
            f,
            "BoundContributionsExec: unit={}, max_groups={}, max_rows={}, sampling={}",
            self.unit,
            self.max_groups,
            self.max_rows,
            if self.order.is_some() {
                "first-by"
            } else {
                "reservoir"
            }
        )
    }
}

impl ExecutionPlan for BoundContributionsExec {
    fn name(&self) -> &str {
        "BoundContributionsExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn input_distribution_requirements(&self) -> InputDistributionRequirements {
        // Every row of a patient must reach the same partition.
        InputDistributionRequirements::new(vec![Distribution::KeyPartitioned(vec![Arc::clone(
            &self.unit,
        )])])
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }

    fn apply_expressions(
        &self,
        f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> DfResult<TreeNodeRecursion>,
    ) -> DfResult<TreeNodeRecursion> {
        let mut recursion = f(&self.unit)?;
        for expr in self.keys.iter().chain(self.order.iter().flatten()) {
            if recursion == TreeNodeRecursion::Stop {
                break;
            }
            recursion = f(expr)?;
        }
        Ok(recursion)
    }

    fn with_new_children(
        self: Arc<Self>,
        mut children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        Ok(Arc::new(BoundContributionsExec::new(
            children.swap_remove(0),
            Arc::clone(&self.unit),
            self.keys.clone(),
            self.order.clone(),
            self.max_groups,
            self.max_rows,
        )))
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> DfResult<SendableRecordBatchStream> {
        let schema = self.schema();
        let reservation = MemoryConsumer::new("BoundContributions").register(context.memory_pool());
        let mut input = self.input.execute(partition, context)?;
        let bound = Bounder {
            schema: Arc::clone(&schema),
            unit: Arc::clone(&self.unit),
            keys: self.keys.clone(),
            order: self.order.clone(),
            max_groups: self.max_groups as usize,
            max_rows: self.max_rows as usize,
        };
        let output = futures::stream::once(async move {
            let mut batches = Vec::new();
            while let Some(batch) = input.next().await {
                let batch = batch?;
                // The rows it holds, their concatenation and its per-row
                // bookkeeping count against the query's memory pool.
                reservation.try_grow(2 * batch.get_array_memory_size() + 48 * batch.num_rows())?;
                batches.push(batch);
            }
            let bounded = bound.bound(&batches);
            reservation.free();
            bounded
        });
        Ok(Box::pin(RecordBatchStreamAdapter::new(schema, output)))
    }
}

/// The bounding of one partition.
struct Bounder {
    schema: SchemaRef,
    unit: Arc<dyn PhysicalExpr>,
    keys: Vec<Arc<dyn PhysicalExpr>>,
    order: Option<Vec<Arc<dyn PhysicalExpr>>>,
    max_groups: usize,
    max_rows: usize,
}

impl Bounder {
    fn bound(&self, batches: &[RecordBatch]) -> DfResult<RecordBatch> {
        let batch = concat_batches(&self.schema, batches)?;
        let rows = batch.num_rows();
        if rows == 0 {
            return Ok(batch);
        }
        let units = self.unit.evaluate(&batch)?.into_array(rows)?;
        let unit_ids = intern(&[Arc::clone(&units)])?;
        let keys = self
            .keys
            .iter()
            .map(|key| key.evaluate(&batch)?.into_array(rows))
            .collect::<DfResult<Vec<ArrayRef>>>()?;
        let (group_ids, group_rank) = if keys.is_empty() {
            (vec![0; rows], vec![0])
        } else {
            let ids = intern(&keys)?;
            let rank = rank_of_first_rows(&keys, &ids.ids, ids.count)?;
            (ids.ids, rank)
        };

        // Each row's priority within its (patient, group): random, or its
        // rank in the content order.
        let priority: Vec<u64> = match &self.order {
            None => {
                let mut rng = rand::rng();
                (0..rows).map(|_| rng.random::<u64>()).collect()
            }
            Some(order) => {
                let mut columns = order
                    .iter()
                    .map(|expr| expr.evaluate(&batch)?.into_array(rows))
                    .collect::<DfResult<Vec<ArrayRef>>>()?;
                // Ties are broken by the rest of the row, so the choice is a
                // function of the rows' content, not of their order.
                columns.extend(batch.columns().iter().cloned());
                content_rank(&columns)?
            }
        };

        // Each patient's rows, in row order: a counting sort by patient id
        // (rows without a patient are in none).
        let mut start = vec![0usize; unit_ids.count + 1];
        for (row, &unit) in unit_ids.ids.iter().enumerate() {
            if !units.is_null(row) {
                start[unit as usize + 1] += 1;
            }
        }
        for unit in 0..unit_ids.count {
            start[unit + 1] += start[unit];
        }
        let mut next = start.clone();
        let mut by_unit = vec![0u32; start[unit_ids.count]];
        for (row, &unit) in unit_ids.ids.iter().enumerate() {
            if !units.is_null(row) {
                by_unit[next[unit as usize]] = row as u32;
                next[unit as usize] += 1;
            }
        }

        let mut keep = BooleanBufferBuilder::new(rows);
        keep.append_n(rows, false);
        let mut rng = rand::rng();
        // One patient's rows, sorted.
        let mut entries: Vec<Entry> = Vec::new();
        for unit in 0..unit_ids.count {
            let unit_rows = &by_unit[start[unit]..start[unit + 1]];
            if unit_rows.is_empty() {
                continue;
            }
            entries.clear();
            entries.extend(
                unit_rows
                    .iter()
                    .map(|&row| (group_ids[row as usize], priority[row as usize], row)),
            );
            entries.sort_unstable();
            // The patient's groups, each a run of its entries.
            let mut groups: Vec<&[Entry]> = entries.chunk_by(|a, b| a.0 == b.0).collect();
            if groups.len() > self.max_groups {
                match self.order {
                    // A uniformly random subset of the patient's groups.
                    None => {
                        let mut keyed: Vec<(u64, &[Entry])> =
                            groups.iter().map(|g| (rng.random::<u64>(), *g)).collect();
                        keyed.sort_unstable_by_key(|(key, _)| *key);
                        groups = keyed.into_iter().map(|(_, g)| g).collect();
                    }
                    // The first groups by their keys' content.
                    Some(_) => groups.sort_by_key(|g| group_rank[g[0].0 as usize]),
                }
                groups.truncate(self.max_groups);
            }
            for group in groups {
                for entry in group.iter().take(self.max_rows) {
                    keep.set_bit(entry.2 as usize, true);
                }
            }
        }

        Ok(filter_record_batch(
            &batch,
            &BooleanArray::new(keep.finish(), None),
        )?)
    }
}

/// One row of a patient: its group id, its priority within the group, and
/// its index in the batch.
type Entry = (u32, u64, u32);

/// Dense ids for the distinct rows of `columns`.
struct Interned {
    ids: Vec<u32>,
    count: usize,
}

fn intern(columns: &[ArrayRef]) -> DfResult<Interned> {
    let converter = RowConverter::new(
        columns
            .iter()
            .map(|c| SortField::new(c.data_type().clone()))
            .collect(),
    )?;
    let rows = converter.convert_columns(columns)?;
    let mut seen: HashMap<arrow::row::Row<'_>, u32> =
        HashMap::with_capacity_and_hasher(rows.num_rows() / 2, Default::default());
    let ids = rows
        .iter()
        .map(|row| {
            let next = seen.len() as u32;
            *seen.entry(row).or_insert(next)
        })
        .collect();
    Ok(Interned {
        ids,
        count: seen.len(),
    })
}

/// For each group id, the rank of its key in the keys' content order.
fn rank_of_first_rows(keys: &[ArrayRef], ids: &[u32], count: usize) -> DfResult<Vec<u64>> {
    let converter = RowConverter::new(
        keys.iter()
            .map(|c| SortField::new(c.data_type().clone()))
            .collect(),
    )?;
    let rows = converter.convert_columns(keys)?;
    let mut first = vec![usize::MAX; count];
    for (row, &id) in ids.iter().enumerate() {
        if first[id as usize] == usize::MAX {
            first[id as usize] = row;
        }
    }
    let mut order: Vec<usize> = (0..count).collect();
    order.sort_by(|&a, &b| rows.row(first[a]).cmp(&rows.row(first[b])));
    let mut rank = vec![0; count];
    for (position, id) in order.into_iter().enumerate() {
        rank[id] = position as u64;
    }
    Ok(rank)
}

/// Each row's rank in the content order of `columns` (equal rows share a rank).
fn content_rank(columns: &[ArrayRef]) -> DfResult<Vec<u64>> {
    let converter = RowConverter::new(
        columns
            .iter()
            .map(|c| SortField::new(c.data_type().clone()))
            .collect(),
    )?;
    let rows = converter.convert_columns(columns)?;
    let mut order: Vec<usize> = (0..rows.num_rows()).collect();
    order.sort_by(|&a, &b| rows.row(a).cmp(&rows.row(b)));
    let mut rank = vec![0; rows.num_rows()];
    let mut current = 0u64;
    for (position, pair) in order.iter().enumerate() {
        if position > 0 && rows.row(order[position - 1]) != rows.row(*pair) {
            current = position as u64;
        }
        rank[*pair] = current;
    }
    Ok(rank)
}
