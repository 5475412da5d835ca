//! cohort's two private operators, as DataFusion extension nodes with
//! their physical implementations.

mod bound;
mod noisy;

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::catalog::Session;
use datafusion::common::{DataFusionError, Result as DfResult};
use datafusion::logical_expr::physical_planning_context::PhysicalPlanningContext;
use datafusion::logical_expr::{LogicalPlan, UserDefinedLogicalNode};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_planner::{ExtensionPlanner, PhysicalPlanner};

pub(crate) use bound::{
    BoundContributions, BoundContributionsExec, Choice, Gather, GatherInOnePartition,
};
pub use noisy::ReleasedAggregate;
pub(crate) use noisy::{
    Keys, NoisyAggregate, NoisyAggregateExec, PlannedRelease, ReleaseLog, Site,
};

/// Plans `BoundContributions` and `NoisyAggregate` nodes.
pub(crate) struct PrivateOperatorPlanner;

#[async_trait]
impl ExtensionPlanner for PrivateOperatorPlanner {
    async fn plan_extension(
        &self,
        planner: &dyn PhysicalPlanner,
        node: &dyn UserDefinedLogicalNode,
        logical_inputs: &[&LogicalPlan],
        physical_inputs: &[Arc<dyn ExecutionPlan>],
        session: &dyn Session,
        planning_ctx: &PhysicalPlanningContext,
    ) -> DfResult<Option<Arc<dyn ExecutionPlan>>> {
        if let Some(bound) = node.as_any().downcast_ref::<BoundContributions>() {
            let schema = logical_inputs[0].schema();
            let physical = |expr| planner.create_physical_expr(expr, schema, session, planning_ctx);
            let unit = physical(&bound.unit)?;
            let keys = bound
                .keys
                .iter()
                .map(physical)
                .collect::<DfResult<Vec<_>>>()?;
            let order = match &bound.choice {
                Choice::Random => None,
                Choice::FirstBy(order) => {
                    Some(order.iter().map(physical).collect::<DfResult<Vec<_>>>()?)
                }
            };
            let gather = match session.config().get_extension::<GatherInOnePartition>() {
                Some(_) => Gather::OnePartition {
                    outputs: session.config().target_partitions(),
                },
                None => Gather::ByUnit,
            };
            return Ok(Some(Arc::new(BoundContributionsExec::new(
                Arc::clone(&physical_inputs[0]),
                unit,
                keys,
                order,
                bound.max_groups,
                bound.max_rows,
                gather,
            ))));
        }
        if let Some(noisy) = node.as_any().downcast_ref::<NoisyAggregate>() {
            // The noise is applied by position: refuse to run if an
            // optimizer changed the exact aggregate's columns.
            let input = physical_inputs[0].schema();
            let found: Vec<&str> = input
                .fields()
                .iter()
                .skip(noisy.site.key_count)
                .map(|f| f.name().as_str())
                .collect();
            if found != noisy.site.inner_names {
                return Err(DataFusionError::Internal(format!(
                    "the exact statistics of a DP aggregate changed during optimisation \
                     (expected {:?}, found {found:?}); refusing to release",
                    noisy.site.inner_names
                )));
            }
            return Ok(Some(Arc::new(NoisyAggregateExec::new(
                Arc::clone(&physical_inputs[0]),
                Arc::new(noisy.schema.as_arrow().clone()),
                Arc::clone(&noisy.site),
            ))));
        }
        Ok(None)
    }
}
