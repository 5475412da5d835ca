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
use std::sync::{Arc, Mutex};

use arrow::array::{Array, ArrayRef, BooleanArray, BooleanBufferBuilder, RecordBatch};
use arrow::compute::{concat_batches, filter_record_batch};
use arrow::datatypes::SchemaRef;
use arrow::row::{RowConverter, SortField};
use datafusion::common::runtime::SpawnedTask;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{DFSchemaRef, HashMap, Result as DfResult};
use datafusion::error::DataFusionError;
use datafusion::execution::TaskContext;
use datafusion::execution::memory_pool::{MemoryConsumer, MemoryPool, MemoryReservation};
use datafusion::logical_expr::{Expr, LogicalPlan, UserDefinedLogicalNodeCore};
use datafusion::physical_expr::{EquivalenceProperties, Partitioning, PhysicalExpr};
use datafusion::physical_plan::distribution_requirements::InputDistributionRequirements;
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, Distribution, ExecutionPlan, ExecutionPlanProperties,
    PlanProperties, SendableRecordBatchStream,
};
use futures::future::{BoxFuture, Shared};
use futures::{FutureExt, StreamExt, TryFutureExt, TryStreamExt};
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

/// How the operator's input brings each patient's rows together: either
/// way every row of a patient reaches the one task that bounds them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) enum Gather {
    /// Hash-partitioned by the privacy unit: a shuffle, so that the
    /// bounding runs in parallel (a cluster's executors).
    #[default]
    ByUnit,
    /// Every row gathered in one task, with no hashing: the local engine's
    /// choice. Each input partition is read, and its batches checked for
    /// runs of one patient, on a task of its own; on a table stored patient
    /// by patient the bounding is then a linear pass, and the hash
    /// repartition it saves costs more than a second core gains
    /// (docs/BENCHMARKS.md, issue 30). The bounded rows are handed on over
    /// `outputs` partitions, so that the aggregate above runs on every core.
    OnePartition { outputs: usize },
}

/// Set on a session's config (`SessionConfig::with_extension`) for the
/// local engine: the bounding is planned with [`Gather::OnePartition`] over
/// the session's partitions, and a Parquet source is cut in partitions by
/// rows (`sources::RowSplit`, whose access plans stay in this process);
/// without it, [`Gather::ByUnit`] and DataFusion's own cut by bytes.
#[derive(Debug)]
pub(crate) struct GatherInOnePartition;

/// The physical operator.
pub(crate) struct BoundContributionsExec {
    input: Arc<dyn ExecutionPlan>,
    unit: Arc<dyn PhysicalExpr>,
    keys: Vec<Arc<dyn PhysicalExpr>>,
    order: Option<Vec<Arc<dyn PhysicalExpr>>>,
    max_groups: u32,
    max_rows: u32,
    gather: Gather,
    /// With [`Gather::OnePartition`], the one gathering that every output
    /// partition waits for (made by the first partition executed).
    gathered: Mutex<Option<Gathering>>,
    properties: Arc<PlanProperties>,
}

/// The bounded rows of every input partition, shared out by output
/// partition, once they are all read.
type Gathering =
    Shared<BoxFuture<'static, Result<Arc<Vec<Vec<RecordBatch>>>, Arc<DataFusionError>>>>;

impl BoundContributionsExec {
    pub(crate) fn new(
        input: Arc<dyn ExecutionPlan>,
        unit: Arc<dyn PhysicalExpr>,
        keys: Vec<Arc<dyn PhysicalExpr>>,
        order: Option<Vec<Arc<dyn PhysicalExpr>>>,
        max_groups: u32,
        max_rows: u32,
        gather: Gather,
    ) -> Self {
        let partitions = match gather {
            Gather::ByUnit => input.output_partitioning().partition_count(),
            Gather::OnePartition { outputs } => outputs.max(1),
        };
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
            gather,
            gathered: Mutex::new(None),
            properties: Arc::new(properties),
        }
    }

    fn bounder(&self) -> Arc<Bounder> {
        Arc::new(Bounder {
            schema: self.schema(),
            unit: Arc::clone(&self.unit),
            keys: self.keys.clone(),
            order: self.order.clone(),
            max_groups: self.max_groups as usize,
            max_rows: self.max_rows as usize,
        })
    }

    /// Every input partition read at once, each on a task of its own that
    /// checks its batches as they come; then the bounding of all of them,
    /// shared out over the output partitions. Made once, by the first
    /// output partition executed.
    fn gathering(&self, context: &Arc<TaskContext>) -> DfResult<Gathering> {
        let mut slot = self.gathered.lock().expect("the gathering's lock");
        if let Some(gathering) = slot.as_ref() {
            return Ok(gathering.clone());
        }
        let bounder = self.bounder();
        let tasks = (0..self.input.output_partitioning().partition_count())
            .map(|partition| {
                let input = self.input.execute(partition, Arc::clone(context))?;
                let bounder = Arc::clone(&bounder);
                let pool = Arc::clone(context.memory_pool());
                Ok(SpawnedTask::spawn(async move {
                    bounder.read(input, &pool).await
                }))
            })
            .collect::<DfResult<Vec<_>>>()?;
        let outputs = self.properties.partitioning.partition_count();
        let gathering = async move {
            let mut checked = Vec::new();
            let mut reservations = Vec::new();
            for task in tasks {
                let (batches, reservation) = task
                    .join_unwind()
                    .await
                    .map_err(|e| DataFusionError::ExecutionJoin(Box::new(e)))??;
                checked.extend(batches);
                reservations.push(reservation);
            }
            let bounded = bounder.bound(checked)?;
            drop(reservations);
            Ok(Arc::new(share_out(bounded, outputs)))
        }
        .map_err(|e: DataFusionError| Arc::new(e))
        .boxed()
        .shared();
        *slot = Some(gathering.clone());
        Ok(gathering)
    }
}

/// `batches` over `outputs` partitions, in turn (a batch too few to go
/// round is cut in slices first).
fn share_out(batches: Vec<RecordBatch>, outputs: usize) -> Vec<Vec<RecordBatch>> {
    let outputs = outputs.max(1);
    let pieces: Vec<RecordBatch> = if batches.len() >= outputs {
        batches
    } else {
        batches
            .into_iter()
            .flat_map(|batch| {
                let rows = batch.num_rows();
                let step = rows.div_ceil(outputs).max(1);
                (0..rows)
                    .step_by(step)
                    .map(|start| batch.slice(start, step.min(rows - start)))
                    .collect::<Vec<_>>()
            })
            .collect()
    };
    let mut shared = vec![Vec::new(); outputs];
    for (i, piece) in pieces.into_iter().enumerate() {
        shared[i % outputs].push(piece);
    }
    shared
}

impl fmt::Debug for BoundContributionsExec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BoundContributionsExec")
            .field("unit", &self.unit)
            .field("max_groups", &self.max_groups)
            .field("max_rows", &self.max_rows)
            .field("gather", &self.gather)
            .finish_non_exhaustive()
    }
}

impl DisplayAs for BoundContributionsExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(
            f,
            "BoundContributionsExec: unit={}, max_groups={}, max_rows={}, sampling={}, gather={}",
            self.unit,
            self.max_groups,
            self.max_rows,
            if self.order.is_some() {
                "first-by"
            } else {
                "reservoir"
            },
            match self.gather {
                Gather::ByUnit => "by-unit",
                Gather::OnePartition { .. } => "one-partition",
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
        InputDistributionRequirements::new(vec![match self.gather {
            Gather::ByUnit => Distribution::KeyPartitioned(vec![Arc::clone(&self.unit)]),
            // Its own tasks read every input partition.
            Gather::OnePartition { .. } => Distribution::UnspecifiedDistribution,
        }])
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
            self.gather,
        )))
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> DfResult<SendableRecordBatchStream> {
        let schema = self.schema();
        if matches!(self.gather, Gather::OnePartition { .. }) {
            let gathering = self.gathering(&context)?;
            let output = futures::stream::once(async move {
                let shared = gathering.await.map_err(DataFusionError::Shared)?;
                let batches = shared.get(partition).cloned().unwrap_or_default();
                Ok::<_, DataFusionError>(futures::stream::iter(batches).then(|batch| async {
                    // The output partitions are woken together, on one
                    // worker, and their batches are all ready: without a
                    // yield before each, the aggregate above runs them
                    // one after another there (tokio's LIFO slot is not
                    // stolen from), however many cores are idle.
                    tokio::task::yield_now().await;
                    Ok(batch)
                }))
            })
            .try_flatten();
            return Ok(Box::pin(RecordBatchStreamAdapter::new(schema, output)));
        }
        let input = self.input.execute(partition, Arc::clone(&context))?;
        let bounder = self.bounder();
        let pool = Arc::clone(context.memory_pool());
        let output = futures::stream::once(async move {
            let (checked, reservation) = bounder.read(input, &pool).await?;
            let bounded = bounder.bound(checked);
            drop(reservation);
            bounded
        })
        .map_ok(|batches| futures::stream::iter(batches.into_iter().map(Ok)))
        .try_flatten();
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
    /// Every batch of `input`, each checked as it comes; the rows held,
    /// their concatenation and its per-row bookkeeping count against the
    /// query's memory pool.
    async fn read(
        &self,
        mut input: SendableRecordBatchStream,
        pool: &Arc<dyn MemoryPool>,
    ) -> DfResult<(Vec<Checked>, MemoryReservation)> {
        let reservation = MemoryConsumer::new("BoundContributions").register(pool);
        let mut checked = Vec::new();
        while let Some(batch) = input.next().await {
            let batch = batch?;
            if batch.num_rows() == 0 {
                continue;
            }
            reservation.try_grow(2 * batch.get_array_memory_size() + 48 * batch.num_rows())?;
            checked.push(self.check(batch)?);
        }
        Ok((checked, reservation))
    }

    /// `batch` with its runs of one patient, if it is sorted by the unit
    /// without NULLs.
    fn check(&self, batch: RecordBatch) -> DfResult<Checked> {
        let units = self.unit.evaluate(&batch)?.into_array(batch.num_rows())?;
        Ok(match Runs::of(&units) {
            Some(runs) => Checked::Sorted(Part { batch, units, runs }),
            None => Checked::Unsorted(batch),
        })
    }

    fn bound(&self, checked: Vec<Checked>) -> DfResult<Vec<RecordBatch>> {
        if let Some(parts) = self.sorted_parts(&checked)? {
            let within = self.every_patient_within(&parts)?;
            let ordered = parts.into_iter().map(|part| part.batch);
            // Nothing to drop: the batches pass as they are, never copied.
            if within {
                return Ok(ordered.collect());
            }
            return Ok(vec![self.bound_concatenated(&ordered.collect::<Vec<_>>())?]);
        }
        let batches: Vec<RecordBatch> = checked.into_iter().map(Checked::into_batch).collect();
        Ok(vec![self.bound_concatenated(&batches)?])
    }

    /// Whether a patient's rows never exceed either bound.
    fn within(&self, count: usize) -> bool {
        // At most `max_groups` rows span at most `max_groups` groups.
        count <= self.max_rows && (self.keys.is_empty() || count <= self.max_groups)
    }

    fn bound_concatenated(&self, batches: &[RecordBatch]) -> DfResult<RecordBatch> {
        let batch = concat_batches(&self.schema, batches)?;
        let rows = batch.num_rows();
        if rows == 0 {
            return Ok(batch);
        }
        let units = self.unit.evaluate(&batch)?.into_array(rows)?;
        let members = Members::of(&units)?;

        // A patient within the bounds keeps every row, so only the others
        // need group keys, priorities and a choice.
        let over: Vec<usize> = (0..members.count())
            .filter(|&unit| !self.within(members.len(unit)))
            .collect();
        if over.is_empty() && units.null_count() == 0 {
            return Ok(batch);
        }

        let mut keep = BooleanBufferBuilder::new(rows);
        keep.append_n(rows, false);
        for unit in 0..members.count() {
            if self.within(members.len(unit)) {
                members.for_each(unit, |row| keep.set_bit(row, true));
            }
        }
        if !over.is_empty() {
            self.choose(&batch, &members, &over, &mut keep)?;
        }
        Ok(filter_record_batch(
            &batch,
            &BooleanArray::new(keep.finish(), None),
        )?)
    }

    /// The batches with their units and runs, ordered by their first unit,
    /// when each batch is sorted by the unit without NULLs; `None`
    /// otherwise. A table stored patient by patient (cohort's own views,
    /// most exports) stays sorted batch by batch after a scan that read its
    /// parts in parallel; whether the batches also follow each other in
    /// order is for the caller to check.
    fn sorted_parts(&self, checked: &[Checked]) -> DfResult<Option<Vec<Part>>> {
        let mut parts = Vec::with_capacity(checked.len());
        for batch in checked {
            match batch {
                Checked::Sorted(part) => parts.push(part.clone()),
                Checked::Unsorted(_) => return Ok(None),
            }
        }
        if parts.len() > 1 {
            let firsts: Vec<ArrayRef> = parts.iter().map(|p| p.units.slice(0, 1)).collect();
            let Ok(firsts) =
                arrow::compute::concat(&firsts.iter().map(|u| u.as_ref()).collect::<Vec<_>>())
            else {
                return Ok(None);
            };
            let converter = RowConverter::new(vec![SortField::new(firsts.data_type().clone())])?;
            let keys = converter.convert_columns(&[firsts])?;
            let mut order: Vec<usize> = (0..parts.len()).collect();
            order.sort_by(|&a, &b| keys.row(a).cmp(&keys.row(b)));
            let mut taken: Vec<Option<Part>> = parts.into_iter().map(Some).collect();
            parts = order
                .into_iter()
                .map(|i| taken[i].take().expect("each once"))
                .collect();
        }
        Ok(Some(parts))
    }

    /// Whether `parts` follow each other in unit order and no patient's
    /// rows, counted across batch boundaries, exceed the bounds.
    fn every_patient_within(&self, parts: &[Part]) -> DfResult<bool> {
        use arrow::compute::kernels::cmp::{eq, lt};
        let mut open = 0;
        let mut last: Option<ArrayRef> = None;
        for part in parts {
            let first = part.units.slice(0, 1);
            let mut carried = 0;
            if let Some(last) = &last {
                if lt(&first, last)?.value(0) {
                    return Ok(false);
                }
                if eq(&first, last)?.value(0) {
                    carried = open;
                } else if !self.within(open) {
                    return Ok(false);
                }
            }
            let runs = part.runs;
            if runs.count == 1 {
                open = runs.first + carried;
            } else {
                // The first run closes here; the inner runs are whole.
                if !self.within(runs.first + carried)
                    || (runs.count > 2 && !self.within(runs.longest_inner))
                {
                    return Ok(false);
                }
                open = runs.last;
            }
            last = Some(part.units.slice(part.units.len() - 1, 1));
        }
        Ok(self.within(open))
    }

    /// Keeps, for each patient in `over`, at most `max_groups` groups and
    /// `max_rows` rows in each.
    fn choose(
        &self,
        batch: &RecordBatch,
        members: &Members,
        over: &[usize],
        keep: &mut BooleanBufferBuilder,
    ) -> DfResult<()> {
        let rows = batch.num_rows();
        let keys = self
            .keys
            .iter()
            .map(|key| key.evaluate(batch)?.into_array(rows))
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
                    .map(|expr| expr.evaluate(batch)?.into_array(rows))
                    .collect::<DfResult<Vec<ArrayRef>>>()?;
                // Ties are broken by the rest of the row, so the choice is a
                // function of the rows' content, not of their order.
                columns.extend(batch.columns().iter().cloned());
                content_rank(&columns)?
            }
        };

        let mut rng = rand::rng();
        // One patient's rows, sorted.
        let mut entries: Vec<Entry> = Vec::new();
        for &unit in over {
            entries.clear();
            members.for_each(unit, |row| {
                entries.push((group_ids[row], priority[row], row as u32));
            });
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
        Ok(())
    }
}

/// A non-empty batch as read, checked for runs of one patient.
enum Checked {
    Sorted(Part),
    Unsorted(RecordBatch),
}

impl Checked {
    fn into_batch(self) -> RecordBatch {
        match self {
            Checked::Sorted(part) => part.batch,
            Checked::Unsorted(batch) => batch,
        }
    }
}

/// A batch sorted by its unit, with the unit column and its runs of one
/// patient.
#[derive(Clone)]
struct Part {
    batch: RecordBatch,
    units: ArrayRef,
    runs: Runs,
}

/// The lengths that decide whether a sorted batch's patients are within
/// the bounds: its first and last runs (which may go on in the batches
/// beside it) and the longest of the others. Counted without allocating:
/// a table of one row per patient has as many runs as rows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Runs {
    count: usize,
    first: usize,
    last: usize,
    longest_inner: usize,
}

impl Runs {
    /// The runs of a non-empty `units`, if it is sorted without NULLs.
    fn of(units: &ArrayRef) -> Option<Runs> {
        let (mut count, mut previous, mut first, mut longest_inner) = (1, 0, 0, 0);
        let sorted = each_run_start(units, |start| {
            let length = start - previous;
            if count == 1 {
                first = length;
            } else {
                longest_inner = longest_inner.max(length);
            }
            previous = start;
            count += 1;
        });
        let last = units.len() - previous;
        sorted.then_some(Runs {
            count,
            first: if count == 1 { last } else { first },
            last,
            longest_inner,
        })
    }
}

/// Each patient's rows.
enum Members {
    /// The unit column is sorted and has no NULLs: patient `u` is rows
    /// `start[u]..start[u + 1]`. Found by comparing neighbours, without
    /// hashing a single id.
    Runs { start: Vec<usize> },
    /// Patient `u` is rows `rows[start[u]..start[u + 1]]`, in row order
    /// (rows without a patient are in none).
    Listed { start: Vec<usize>, rows: Vec<u32> },
}

impl Members {
    fn of(units: &ArrayRef) -> DfResult<Members> {
        if let Some(start) = sorted(units) {
            return Ok(Members::Runs { start });
        }
        // A counting sort by interned patient id.
        let ids = intern(&[Arc::clone(units)])?;
        let mut start = vec![0usize; ids.count + 1];
        for (row, &unit) in ids.ids.iter().enumerate() {
            if !units.is_null(row) {
                start[unit as usize + 1] += 1;
            }
        }
        for unit in 0..ids.count {
            start[unit + 1] += start[unit];
        }
        let mut next = start.clone();
        let mut rows = vec![0u32; start[ids.count]];
        for (row, &unit) in ids.ids.iter().enumerate() {
            if !units.is_null(row) {
                rows[next[unit as usize]] = row as u32;
                next[unit as usize] += 1;
            }
        }
        Ok(Members::Listed { start, rows })
    }

    fn start(&self) -> &[usize] {
        match self {
            Members::Runs { start } | Members::Listed { start, .. } => start,
        }
    }

    fn count(&self) -> usize {
        self.start().len() - 1
    }

    fn len(&self, unit: usize) -> usize {
        self.start()[unit + 1] - self.start()[unit]
    }

    fn for_each(&self, unit: usize, mut f: impl FnMut(usize)) {
        let range = self.start()[unit]..self.start()[unit + 1];
        match self {
            Members::Runs { .. } => range.for_each(f),
            Members::Listed { rows, .. } => rows[range].iter().for_each(|&row| f(row as usize)),
        }
    }
}

/// Where each run of equal values starts (and the length at the end), when
/// `units` is sorted ascending without NULLs; `None` otherwise, or for a
/// type the comparison kernels do not order.
fn sorted(units: &ArrayRef) -> Option<Vec<usize>> {
    let mut start = vec![0];
    each_run_start(units, |i| start.push(i)).then(|| {
        start.push(units.len());
        start
    })
}

/// Calls `start(i)` for each row `i` after the first that begins a new run
/// of equal values, and says whether `units` is sorted ascending without
/// NULLs (false, with some calls made, if not, or for a type the
/// comparison kernels do not order). Strings (by their bytes, as the
/// kernels order them) and integers are compared in one pass; other types
/// through the kernels.
fn each_run_start(units: &ArrayRef, start: impl FnMut(usize)) -> bool {
    use arrow::array::AsArray;
    use arrow::datatypes::{DataType, Int32Type, Int64Type, UInt32Type, UInt64Type};
    if units.null_count() > 0 {
        return false;
    }
    let n = units.len();
    match units.data_type() {
        DataType::Utf8View => {
            let units = units.as_string_view();
            runs_of(n, |i| units.value(i).as_bytes(), start)
        }
        DataType::Utf8 => {
            let units = units.as_string::<i32>();
            runs_of(n, |i| units.value(i).as_bytes(), start)
        }
        DataType::LargeUtf8 => {
            let units = units.as_string::<i64>();
            runs_of(n, |i| units.value(i).as_bytes(), start)
        }
        DataType::Int64 => runs_of_values(units.as_primitive::<Int64Type>().values(), start),
        DataType::Int32 => runs_of_values(units.as_primitive::<Int32Type>().values(), start),
        DataType::UInt64 => runs_of_values(units.as_primitive::<UInt64Type>().values(), start),
        DataType::UInt32 => runs_of_values(units.as_primitive::<UInt32Type>().values(), start),
        _ => runs_by_kernels(units, start),
    }
}

fn runs_of_values<T: Ord + Copy>(values: &[T], start: impl FnMut(usize)) -> bool {
    runs_of(values.len(), |i| values[i], start)
}

/// [`each_run_start`] over the `n` values `value(0..n)`.
fn runs_of<T: Ord>(n: usize, value: impl Fn(usize) -> T, mut start: impl FnMut(usize)) -> bool {
    if n == 0 {
        return true;
    }
    let mut previous = value(0);
    for i in 1..n {
        let current = value(i);
        match current.cmp(&previous) {
            std::cmp::Ordering::Less => return false,
            std::cmp::Ordering::Greater => start(i),
            std::cmp::Ordering::Equal => {}
        }
        previous = current;
    }
    true
}

/// [`each_run_start`] through the comparison kernels.
fn runs_by_kernels(units: &ArrayRef, mut start: impl FnMut(usize)) -> bool {
    let n = units.len();
    if n < 2 {
        return true;
    }
    let (next, previous) = (units.slice(1, n - 1), units.slice(0, n - 1));
    let Ok(descending) = arrow::compute::kernels::cmp::lt(&next, &previous) else {
        return false;
    };
    if descending.true_count() > 0 {
        return false;
    }
    let Ok(changes) = arrow::compute::kernels::cmp::neq(&next, &previous) else {
        return false;
    };
    changes.values().set_indices().for_each(|i| start(i + 1));
    true
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
    // Sized for every row distinct (one row per patient is common), so the
    // table is never rehashed.
    let mut seen: HashMap<arrow::row::Row<'_>, u32> =
        HashMap::with_capacity_and_hasher(rows.num_rows(), Default::default());
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

/// The operator on the wire: its expressions as DataFusion physical
/// expressions over its input, and its bounds.
#[derive(serde::Serialize, serde::Deserialize)]
struct Wire {
    unit: Vec<u8>,
    keys: Vec<Vec<u8>>,
    order: Option<Vec<Vec<u8>>>,
    max_groups: u32,
    max_rows: u32,
    #[serde(default)]
    gather: Gather,
}

impl BoundContributionsExec {
    /// Its bytes for a distributed engine's executors (its input travels
    /// beside them).
    pub(crate) fn encode(
        &self,
        codec: &dyn datafusion_proto::physical_plan::PhysicalExtensionCodec,
    ) -> DfResult<Vec<u8>> {
        use datafusion_proto::physical_plan::to_proto::serialize_physical_expr;
        use prost::Message;
        let one = |expr: &Arc<dyn PhysicalExpr>| {
            serialize_physical_expr(expr, codec).map(|node| node.encode_to_vec())
        };
        let many =
            |exprs: &[Arc<dyn PhysicalExpr>]| exprs.iter().map(one).collect::<DfResult<Vec<_>>>();
        let wire = Wire {
            unit: one(&self.unit)?,
            keys: many(&self.keys)?,
            order: self.order.as_deref().map(many).transpose()?,
            max_groups: self.max_groups,
            max_rows: self.max_rows,
            gather: self.gather,
        };
        serde_json::to_vec(&wire)
            .map_err(|e| datafusion::error::DataFusionError::External(e.into()))
    }

    /// The operator from [`Self::encode`]'s bytes over `input`.
    pub(crate) fn decode(
        buf: &[u8],
        input: Arc<dyn ExecutionPlan>,
        context: &TaskContext,
        codec: &dyn datafusion_proto::physical_plan::PhysicalExtensionCodec,
    ) -> DfResult<BoundContributionsExec> {
        use datafusion::error::DataFusionError;
        use datafusion_proto::physical_plan::from_proto::parse_physical_expr;
        use datafusion_proto::protobuf::PhysicalExprNode;
        use prost::Message;
        let bad =
            |e: String| DataFusionError::Plan(format!("a bounding operator on the wire: {e}"));
        let wire: Wire = serde_json::from_slice(buf).map_err(|e| bad(e.to_string()))?;
        if wire.max_groups == 0 || wire.max_rows == 0 {
            return Err(bad("its bounds must be at least 1".into()));
        }
        let schema = input.schema();
        let one = |bytes: &Vec<u8>| {
            let node =
                PhysicalExprNode::decode(bytes.as_slice()).map_err(|e| bad(e.to_string()))?;
            parse_physical_expr(&node, context, &schema, codec)
        };
        let many = |exprs: &Vec<Vec<u8>>| exprs.iter().map(one).collect::<DfResult<Vec<_>>>();
        Ok(BoundContributionsExec::new(
            Arc::clone(&input),
            one(&wire.unit)?,
            many(&wire.keys)?,
            wire.order.as_ref().map(many).transpose()?,
            wire.max_groups,
            wire.max_rows,
            wire.gather,
        ))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use arrow::array::{AsArray, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};
    use datafusion::physical_expr::expressions::Column;

    use super::*;

    fn bounder(max_rows: usize) -> (Bounder, SchemaRef) {
        let schema = Arc::new(Schema::new(vec![Field::new("u", DataType::Utf8, true)]));
        let bounder = Bounder {
            schema: Arc::clone(&schema),
            unit: Arc::new(Column::new("u", 0)),
            keys: vec![],
            order: None,
            max_groups: 1,
            max_rows,
        };
        (bounder, schema)
    }

    fn batches(schema: &SchemaRef, parts: &[&[Option<&str>]]) -> Vec<RecordBatch> {
        parts
            .iter()
            .map(|rows| {
                let column = Arc::new(StringArray::from(rows.to_vec()));
                RecordBatch::try_new(Arc::clone(schema), vec![column]).unwrap()
            })
            .collect()
    }

    fn bound(bounder: &Bounder, batches: Vec<RecordBatch>) -> Vec<RecordBatch> {
        let checked = batches
            .into_iter()
            .filter(|b| b.num_rows() > 0)
            .map(|b| bounder.check(b).unwrap())
            .collect();
        bounder.bound(checked).unwrap()
    }

    /// Rows kept per patient.
    fn kept(out: &[RecordBatch]) -> BTreeMap<String, usize> {
        let mut counts = BTreeMap::new();
        for batch in out {
            for unit in batch.column(0).as_string::<i32>().iter() {
                *counts
                    .entry(unit.expect("no NULL unit kept").to_string())
                    .or_default() += 1;
            }
        }
        counts
    }

    fn counts(pairs: &[(&str, usize)]) -> BTreeMap<String, usize> {
        pairs.iter().map(|(u, n)| (u.to_string(), *n)).collect()
    }

    #[test]
    fn a_patient_whose_rows_span_batches_is_bounded_whatever_the_batch_order() {
        let (bounder, schema) = bounder(2);
        let (a, b, c) = (Some("a"), Some("b"), Some("c"));
        let in_order: &[&[Option<&str>]] = &[&[a, a, b], &[b, b, c], &[c]];
        let reversed: &[&[Option<&str>]] = &[&[c], &[b, b, c], &[a, a, b]];
        let unsorted: &[&[Option<&str>]] = &[&[b, a, c, b], &[a, c, b]];
        for parts in [in_order, reversed, unsorted] {
            let out = bound(&bounder, batches(&schema, parts));
            assert_eq!(
                kept(&out),
                counts(&[("a", 2), ("b", 2), ("c", 2)]),
                "{parts:?}"
            );
        }
    }

    #[test]
    fn batches_within_the_bounds_pass_as_they_are_and_null_units_are_dropped() {
        let (bounder, schema) = bounder(2);
        let (a, b, c) = (Some("a"), Some("b"), Some("c"));
        // b's two rows span the batches: within the bound, nothing is copied.
        let out = bound(&bounder, batches(&schema, &[&[a, b], &[b, c]]));
        assert_eq!(out.len(), 2, "the two batches, uncopied");
        assert_eq!(kept(&out), counts(&[("a", 1), ("b", 2), ("c", 1)]));
        // One patient over the bound across the boundary: the slow path.
        let out = bound(&bounder, batches(&schema, &[&[a, b, b], &[b, c]]));
        assert_eq!(kept(&out), counts(&[("a", 1), ("b", 2), ("c", 1)]));
        // Rows without a patient belong to none.
        let out = bound(&bounder, batches(&schema, &[&[a, None, b], &[None]]));
        assert_eq!(kept(&out), counts(&[("a", 1), ("b", 1)]));
    }

    fn by_kernels(units: &ArrayRef) -> Option<Vec<usize>> {
        let mut start = vec![0];
        runs_by_kernels(units, |i| start.push(i)).then(|| {
            start.push(units.len());
            start
        })
    }

    #[test]
    fn a_batch_s_runs_are_its_first_last_and_longest_inner() {
        let runs =
            |values: &[&str]| Runs::of(&(Arc::new(StringArray::from(values.to_vec())) as ArrayRef));
        let of = |count, first, last, longest_inner| {
            Some(Runs {
                count,
                first,
                last,
                longest_inner,
            })
        };
        assert_eq!(runs(&["a"]), of(1, 1, 1, 0));
        assert_eq!(runs(&["a", "a", "a"]), of(1, 3, 3, 0));
        assert_eq!(runs(&["a", "b", "b"]), of(2, 1, 2, 0));
        assert_eq!(runs(&["a", "a", "b", "c", "c", "c", "d"]), of(4, 2, 1, 3));
        assert_eq!(runs(&["b", "a"]), None);
    }

    #[test]
    fn the_one_pass_runs_agree_with_the_comparison_kernels() {
        use arrow::array::{
            Int32Array, Int64Array, LargeStringArray, StringViewArray, UInt64Array,
        };
        let strings: [&[&str]; 5] = [
            &["a", "a", "b", "c", "c"],
            &["a", "b", "a"],
            &[
                "p0000001",
                "p0000001",
                "p0000002",
                "a-much-longer-patient-id-1",
                "z",
            ],
            &["x"],
            &[],
        ];
        for values in strings {
            let arrays: [ArrayRef; 3] = [
                Arc::new(StringArray::from(values.to_vec())),
                Arc::new(StringViewArray::from(values.to_vec())),
                Arc::new(LargeStringArray::from(values.to_vec())),
            ];
            for array in arrays {
                assert_eq!(sorted(&array), by_kernels(&array), "{array:?}");
            }
        }
        let integers: [&[i64]; 4] = [&[1, 1, 2, 9, 9, 9], &[3, 2], &[-5, -5, 0, 7], &[]];
        for values in integers {
            let arrays: [ArrayRef; 3] = [
                Arc::new(Int64Array::from(values.to_vec())),
                Arc::new(Int32Array::from(
                    values.iter().map(|&v| v as i32).collect::<Vec<_>>(),
                )),
                Arc::new(UInt64Array::from(
                    values.iter().map(|&v| v as u64).collect::<Vec<_>>(),
                )),
            ];
            for array in arrays {
                assert_eq!(sorted(&array), by_kernels(&array), "{array:?}");
            }
        }
        assert_eq!(
            sorted(&(Arc::new(StringArray::from(vec!["a", "a", "b"])) as ArrayRef)),
            Some(vec![0, 2, 3])
        );
        // A NULL unit is never a sorted run.
        assert_eq!(
            sorted(&(Arc::new(StringArray::from(vec![Some("a"), None])) as ArrayRef)),
            None
        );
    }

    #[test]
    fn shared_out_rows_go_to_every_partition_once() {
        let (_, schema) = bounder(1);
        let names: Vec<String> = (0..10).map(|i| format!("p{i}")).collect();
        let one: Vec<Option<&str>> = names.iter().map(|n| Some(n.as_str())).collect();
        for (parts, outputs) in [(vec![one.as_slice()], 3), (vec![&one[..4], &one[4..]], 4)] {
            let shared = share_out(batches(&schema, &parts), outputs);
            assert_eq!(shared.len(), outputs);
            assert!(
                shared.iter().all(|p| !p.is_empty()),
                "every partition has rows"
            );
            let all: Vec<RecordBatch> = shared.into_iter().flatten().collect();
            assert_eq!(kept(&all), names.iter().map(|n| (n.clone(), 1)).collect());
        }
    }

    /// The local engine's gathering: input partitions read at once, the
    /// bounding over all of them, the rows handed on over more partitions.
    #[tokio::test]
    async fn a_gathering_bounds_patients_split_across_input_partitions() {
        use datafusion::datasource::memory::MemorySourceConfig;
        use datafusion::prelude::SessionContext;
        let (_, schema) = bounder(1);
        let (a, b, c) = (Some("a"), Some("b"), Some("c"));
        // b's rows are in both input partitions, sorted in each.
        let input = MemorySourceConfig::try_new_exec(
            &[
                batches(&schema, &[&[a, b, b]]),
                batches(&schema, &[&[b, c], &[c]]),
            ],
            Arc::clone(&schema),
            None,
        )
        .unwrap();
        let exec = Arc::new(BoundContributionsExec::new(
            input,
            Arc::new(Column::new("u", 0)),
            vec![],
            None,
            1,
            2,
            Gather::OnePartition { outputs: 3 },
        ));
        assert_eq!(exec.properties().partitioning.partition_count(), 3);
        let context = SessionContext::new().task_ctx();
        let outputs = datafusion::physical_plan::collect_partitioned(exec, context)
            .await
            .unwrap();
        assert_eq!(outputs.len(), 3);
        let all: Vec<RecordBatch> = outputs.into_iter().flatten().collect();
        assert_eq!(kept(&all), counts(&[("a", 1), ("b", 2), ("c", 2)]));
    }
}
