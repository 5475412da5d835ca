//! `NoisyAggregateExec`, the physical operator: collects the exact
//! aggregate's batches within the query's memory pool and hands them to the
//! release step as one batch.

use std::fmt;
use std::sync::Arc;

use arrow::compute::concat_batches;
use arrow::datatypes::SchemaRef;
use datafusion::common::Result as DfResult;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::execution::TaskContext;
use datafusion::execution::memory_pool::MemoryConsumer;
use datafusion::physical_expr::{EquivalenceProperties, Partitioning, PhysicalExpr};
use datafusion::physical_plan::distribution_requirements::InputDistributionRequirements;
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, Distribution, ExecutionPlan, PlanProperties,
    SendableRecordBatchStream,
};
use futures::StreamExt;

use super::apply::release;
use super::site::Site;
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
