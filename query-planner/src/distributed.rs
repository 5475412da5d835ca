//! Private plans on a distributed engine (Apache Ballista): what leaves
//! the trusted process and what never does.
//!
//! The planner plans as for the local engine. Then everything below each
//! noisy release (the scan, the shuffle by privacy unit, the bounding and
//! the exact aggregates) becomes one job of the distributed engine, and the
//! release itself (key selection, the noise, the encrypted aggregates)
//! runs here, once, over the job's output. So noise is drawn in one place
//! from the same samplers whatever the engine, an executor's task retried
//! by its scheduler never draws any, and the release log, the deadline and
//! the charged outcomes stay where the research path accounts for them.
//!
//! What travels is a DataFusion physical plan: the planner's bounding
//! operator and its guards go through [`PlannerCodec`], every other node
//! through the engine's own codec that it wraps.

use std::fmt;
use std::sync::Arc;

use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::common::{DataFusionError, Result as DfResult};
use datafusion::execution::TaskContext;
use datafusion::logical_expr::{AggregateUDF, ScalarUDF};
use datafusion::physical_expr::{EquivalenceProperties, Partitioning, PhysicalExpr};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, PlanProperties, SendableRecordBatchStream,
};
use datafusion_proto::physical_plan::{PhysicalExtensionCodec, PhysicalProtoConverterExtension};

use crate::nodes::{BoundContributionsExec, NoisyAggregateExec};

/// An engine that runs a plan's exact part elsewhere.
pub trait RemoteEngine: fmt::Debug + Send + Sync {
    /// Runs `plan` (everything below one noisy release) and streams its
    /// single output partition back.
    fn execute(
        &self,
        plan: Arc<dyn ExecutionPlan>,
        context: Arc<TaskContext>,
    ) -> DfResult<SendableRecordBatchStream>;

    /// How many partitions a plan for it should have (its executors'
    /// slots), or `None` for the local setting.
    fn partitions(&self) -> Option<usize>;
}

/// What marks a bounding operator's bytes among the engine's own nodes.
const BOUND_TAG: &[u8] = b"cohort.bound/1:";

/// The planner's physical codec: the bounding operator and guards, every
/// other node and function through `inner` (the engine's codec, which
/// knows its shuffles). The noisy release is refused: it never leaves the
/// trusted process.
#[derive(Debug)]
pub struct PlannerCodec {
    inner: Arc<dyn PhysicalExtensionCodec>,
}

impl PlannerCodec {
    /// The planner's codec around an engine's.
    pub fn wrapping(inner: Arc<dyn PhysicalExtensionCodec>) -> PlannerCodec {
        PlannerCodec { inner }
    }
}

impl PhysicalExtensionCodec for PlannerCodec {
    fn try_decode(
        &self,
        buf: &[u8],
        inputs: &[Arc<dyn ExecutionPlan>],
        ctx: &TaskContext,
        proto_converter: &dyn PhysicalProtoConverterExtension,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        match buf.strip_prefix(BOUND_TAG) {
            Some(body) => {
                let [input] = inputs else {
                    return Err(DataFusionError::Plan(
                        "a bounding operator has exactly one input".into(),
                    ));
                };
                Ok(Arc::new(BoundContributionsExec::decode(
                    body,
                    Arc::clone(input),
                    ctx,
                    self,
                )?))
            }
            None => self.inner.try_decode(buf, inputs, ctx, proto_converter),
        }
    }

    fn try_encode(
        &self,
        node: Arc<dyn ExecutionPlan>,
        buf: &mut Vec<u8>,
        proto_converter: &dyn PhysicalProtoConverterExtension,
    ) -> DfResult<()> {
        if let Some(bound) = node.downcast_ref::<BoundContributionsExec>() {
            buf.extend_from_slice(BOUND_TAG);
            buf.extend(bound.encode(self)?);
            return Ok(());
        }
        if node.is::<NoisyAggregateExec>() || node.is::<RemoteExec>() {
            return Err(DataFusionError::Plan(
                "a noisy release never leaves the trusted process".into(),
            ));
        }
        self.inner.try_encode(node, buf, proto_converter)
    }

    fn try_decode_udf(&self, name: &str, buf: &[u8]) -> DfResult<Arc<ScalarUDF>> {
        match crate::guard::decode_guard(buf, self)? {
            Some(guard) => Ok(guard),
            None => self.inner.try_decode_udf(name, buf),
        }
    }

    fn try_encode_udf(&self, node: &ScalarUDF, buf: &mut Vec<u8>) -> DfResult<()> {
        match crate::guard::encode_guard(node, self)? {
            Some(bytes) => {
                buf.extend(bytes);
                Ok(())
            }
            None => self.inner.try_encode_udf(node, buf),
        }
    }

    fn try_decode_udaf(&self, name: &str, buf: &[u8]) -> DfResult<Arc<AggregateUDF>> {
        self.inner.try_decode_udaf(name, buf)
    }

    fn try_encode_udaf(&self, node: &AggregateUDF, buf: &mut Vec<u8>) -> DfResult<()> {
        self.inner.try_encode_udaf(node, buf)
    }
}

/// Replaces the input of every noisy release whose input holds no other
/// release by a [`RemoteExec`] of it.
pub(crate) fn distribute(
    plan: Arc<dyn ExecutionPlan>,
    engine: &Arc<dyn RemoteEngine>,
) -> DfResult<Arc<dyn ExecutionPlan>> {
    plan.transform_up(|node| {
        if !node.is::<NoisyAggregateExec>() {
            return Ok(Transformed::no(node));
        }
        let [input] = node.children()[..] else {
            return Ok(Transformed::no(node));
        };
        if holds_a_release(input)? {
            // A release over releases: its input already runs remotely
            // where it can.
            return Ok(Transformed::no(node));
        }
        let remote: Arc<dyn ExecutionPlan> =
            Arc::new(RemoteExec::new(Arc::clone(input), Arc::clone(engine)));
        Ok(Transformed::yes(
            datafusion::physical_plan::execution_plan::replace_children_if_necessary(
                node,
                vec![remote],
            )?,
        ))
    })
    .map(|t| t.data)
}

fn holds_a_release(plan: &Arc<dyn ExecutionPlan>) -> DfResult<bool> {
    let mut found = false;
    plan.apply(|node| {
        found = node.is::<NoisyAggregateExec>() || node.is::<RemoteExec>();
        Ok(if found {
            TreeNodeRecursion::Stop
        } else {
            TreeNodeRecursion::Continue
        })
    })?;
    Ok(found)
}

/// A plan run by a [`RemoteEngine`]; its one partition is the job's output.
/// It has no children here: nothing of it runs in this process.
#[derive(Debug)]
pub(crate) struct RemoteExec {
    plan: Arc<dyn ExecutionPlan>,
    engine: Arc<dyn RemoteEngine>,
    properties: Arc<PlanProperties>,
}

impl RemoteExec {
    fn new(plan: Arc<dyn ExecutionPlan>, engine: Arc<dyn RemoteEngine>) -> RemoteExec {
        let properties = PlanProperties::new(
            EquivalenceProperties::new(plan.schema()),
            Partitioning::UnknownPartitioning(1),
            EmissionType::Final,
            Boundedness::Bounded,
        );
        RemoteExec {
            plan,
            engine,
            properties: Arc::new(properties),
        }
    }
}

impl DisplayAs for RemoteExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "RemoteExec: {}", self.plan.name())
    }
}

impl ExecutionPlan for RemoteExec {
    fn name(&self) -> &str {
        "RemoteExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> DfResult<TreeNodeRecursion>,
    ) -> DfResult<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn with_new_children(
        self: Arc<Self>,
        _children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        Ok(self)
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> DfResult<SendableRecordBatchStream> {
        if partition != 0 {
            return Err(DataFusionError::Internal(format!(
                "a remote plan has one partition, not {partition}"
            )));
        }
        self.engine.execute(Arc::clone(&self.plan), context)
    }
}
