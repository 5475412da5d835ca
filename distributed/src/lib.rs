//! cohort's private plans on an Apache Ballista 55 cluster.
//!
//! The planner ([`cohort_query_planner::distributed`]) decides what leaves
//! the trusted process: everything below a noisy release, as a DataFusion
//! physical plan. This crate submits that plan to a Ballista scheduler,
//! which cuts it into stages at its shuffles (the hash partitioning by
//! privacy unit that the bounding requires among them) and runs them on
//! its executors; the exact aggregates stream back and the noise is drawn
//! here. It also starts a scheduler and executors that know the planner's
//! codec, in this process (tests, `cohort ballista`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use ballista_core::config::BallistaConfig;
use ballista_core::execution_plans::execute_physical_plan;
use ballista_core::extension::SessionConfigExt;
use ballista_core::registry::BallistaFunctionRegistry;
use ballista_core::serde::protobuf::scheduler_grpc_client::SchedulerGrpcClient;
use ballista_core::serde::{
    BallistaCodec, BallistaLogicalExtensionCodec, BallistaPhysicalExtensionCodec,
};
use ballista_core::{ConfigProducer, RuntimeProducer};
use cohort_query_planner::distributed::{PlannerCodec, RemoteEngine};
use datafusion::common::Result as DfResult;
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::execution::{SessionState, SessionStateBuilder, TaskContext};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{ExecutionPlan, SendableRecordBatchStream};
use datafusion::prelude::SessionConfig;
use datafusion_proto::protobuf::PhysicalPlanNode;
use futures::TryStreamExt;

pub use ballista_core::error::BallistaError;

/// A Ballista scheduler to run the exact part of private plans on.
#[derive(Debug, Clone)]
pub struct BallistaEngine {
    scheduler: String,
    partitions: usize,
}

impl BallistaEngine {
    /// The cluster whose scheduler is at `scheduler` (`http://host:port`,
    /// or `df://host:port`), with plans cut into `partitions` partitions
    /// (the executors' task slots, all together).
    pub fn new(scheduler: &str, partitions: usize) -> BallistaEngine {
        let scheduler = match scheduler.strip_prefix("df://") {
            Some(rest) => format!("http://{rest}"),
            None => scheduler.to_string(),
        };
        BallistaEngine {
            scheduler,
            partitions: partitions.max(1),
        }
    }

    /// The scheduler's URL.
    pub fn scheduler(&self) -> &str {
        &self.scheduler
    }
}

impl RemoteEngine for BallistaEngine {
    fn execute(
        &self,
        plan: Arc<dyn ExecutionPlan>,
        _context: Arc<TaskContext>,
    ) -> DfResult<SendableRecordBatchStream> {
        static SESSIONS: AtomicU64 = AtomicU64::new(0);
        let schema = plan.schema();
        let url = self.scheduler.clone();
        let session = format!(
            "cohort-{}-{}",
            std::process::id(),
            SESSIONS.fetch_add(1, Ordering::Relaxed)
        );
        let config = cluster_config(self.partitions);
        let job = async move {
            let codec = planner_codec();
            execute_physical_plan::<PhysicalPlanNode>(
                url,
                &BallistaConfig::default(),
                plan,
                &codec,
                session,
                config,
            )
            .await
        };
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            schema,
            futures::stream::once(job).try_flatten(),
        )))
    }

    fn partitions(&self) -> Option<usize> {
        Some(self.partitions)
    }
}

/// The planner's codec around Ballista's (its shuffles and scans).
fn planner_codec() -> PlannerCodec {
    PlannerCodec::wrapping(Arc::new(BallistaPhysicalExtensionCodec::default()))
}

fn codec() -> BallistaCodec {
    BallistaCodec::new(
        Arc::new(BallistaLogicalExtensionCodec::default()),
        Arc::new(planner_codec()),
    )
}

/// The settings a job runs under: the static planner (the adaptive one
/// replaces a plan's optimizer rules and has no recovery from a lost
/// executor in 55).
fn cluster_config(partitions: usize) -> SessionConfig {
    SessionConfig::new_with_ballista()
        .with_target_partitions(partitions.max(1))
        .with_ballista_physical_extension_codec(Arc::new(planner_codec()))
        .with_ballista_adaptive_query_planner(false)
}

/// A session with DataFusion's default functions, which is what an
/// executor may call by name; the planner's guards travel whole.
fn cluster_state(config: SessionConfig) -> DfResult<SessionState> {
    Ok(SessionStateBuilder::new()
        .with_default_features()
        .with_config(config)
        .with_runtime_env(Arc::new(RuntimeEnvBuilder::new().build()?))
        .build())
}

/// Starts a scheduler on a free loopback port in this process.
pub async fn start_scheduler() -> Result<SocketAddr, BallistaError> {
    let producer: ConfigProducer = Arc::new(|| cluster_config(1));
    ballista_scheduler::standalone::new_standalone_scheduler_with_builder(
        Arc::new(cluster_state),
        producer,
        codec(),
    )
    .await
}

/// Starts `executors` executors of `vcores` task slots each in this
/// process, registered with the scheduler at `scheduler`.
pub async fn start_executors(
    scheduler: &str,
    executors: usize,
    vcores: usize,
) -> Result<(), BallistaError> {
    let url = BallistaEngine::new(scheduler, 1).scheduler;
    let mut client = None;
    for _ in 0..100 {
        match SchedulerGrpcClient::connect(url.clone()).await {
            Ok(c) => {
                client = Some(c);
                break;
            }
            // The scheduler's listener is bound but its service may not be
            // serving yet.
            Err(_) => tokio::time::sleep(std::time::Duration::from_millis(50)).await,
        }
    }
    let client = client
        .ok_or_else(|| BallistaError::General(format!("no Ballista scheduler answers at {url}")))?;
    let producer: ConfigProducer = Arc::new(|| cluster_config(1));
    let state = cluster_state(cluster_config(1))?;
    for _ in 0..executors {
        let runtime = Arc::new(RuntimeEnvBuilder::new().build()?);
        let runtime_producer: RuntimeProducer = Arc::new(move |_| Ok(Arc::clone(&runtime)));
        ballista_executor::new_standalone_executor_from_builder(
            client.clone(),
            vcores.max(1),
            Arc::clone(&producer),
            runtime_producer,
            codec(),
            BallistaFunctionRegistry::from(&state),
        )
        .await?;
    }
    Ok(())
}

/// A scheduler and `executors` executors on loopback, in this process;
/// returns the scheduler's URL.
pub async fn standalone(executors: usize, vcores: usize) -> Result<String, BallistaError> {
    let address = start_scheduler().await?;
    let url = format!("http://localhost:{}", address.port());
    start_executors(&url, executors, vcores).await?;
    Ok(url)
}
