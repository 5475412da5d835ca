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
    /// (the executors' task slots, all together). Refuses, naming it, an
    /// address that is not one of those forms or a partition count of 0.
    pub fn new(scheduler: &str, partitions: usize) -> Result<BallistaEngine, BallistaError> {
        Ok(BallistaEngine {
            scheduler: scheduler_url(scheduler)?,
            partitions: match partitions {
                0 => {
                    return Err(BallistaError::General(
                        "a Ballista engine needs at least 1 partition".into(),
                    ));
                }
                n => n,
            },
        })
    }

    /// The scheduler's URL.
    pub fn scheduler(&self) -> &str {
        &self.scheduler
    }

    /// Whether the scheduler answers: checked before a query's cost is
    /// reserved (a cluster that is down refuses the query for free; a
    /// failure after the reservation is charged like any other).
    pub async fn check(&self) -> Result<(), BallistaError> {
        connect(&self.scheduler, 20).await.map(drop)
    }
}

/// `scheduler` as the `http://host:port` URL tonic connects to.
fn scheduler_url(scheduler: &str) -> Result<String, BallistaError> {
    let rest = ["df://", "http://"]
        .iter()
        .find_map(|scheme| scheduler.strip_prefix(scheme));
    match rest {
        Some(rest) if !rest.is_empty() && !rest.contains(['/', ' ']) => {
            Ok(format!("http://{rest}"))
        }
        _ => Err(BallistaError::General(format!(
            "`{scheduler}` is not a Ballista scheduler's address: give http://HOST:PORT or df://HOST:PORT"
        ))),
    }
}

/// A client of the scheduler at `url`, trying `attempts` times 50 ms apart
/// (a scheduler's listener is bound before its service serves).
async fn connect(
    url: &str,
    attempts: usize,
) -> Result<SchedulerGrpcClient<tonic::transport::Channel>, BallistaError> {
    let mut last = String::new();
    for attempt in 0..attempts.max(1) {
        if attempt > 0 {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        match SchedulerGrpcClient::connect(url.to_string()).await {
            Ok(client) => {
                return Ok(client
                    .max_decoding_message_size(MAX_MESSAGE)
                    .max_encoding_message_size(MAX_MESSAGE));
            }
            Err(e) => last = e.to_string(),
        }
    }
    Err(BallistaError::General(format!(
        "no Ballista scheduler answers at {url} ({last})"
    )))
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
                &config.ballista_config(),
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

/// The largest gRPC message between cohort, the scheduler and the
/// executors: a research view is in memory and travels inside the plan
/// (datafusion-proto's memory scan), so Ballista's 16 MiB default would
/// refuse any view above it. Protobuf caps a message at 2 GiB.
const MAX_MESSAGE: usize = i32::MAX as usize;

/// The settings a job runs under: the static planner (the adaptive one
/// replaces a plan's optimizer rules and has no recovery from a lost
/// executor in 55).
fn cluster_config(partitions: usize) -> SessionConfig {
    SessionConfig::new_with_ballista()
        .with_ballista_grpc_client_max_message_size(MAX_MESSAGE)
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
    let client = connect(&scheduler_url(scheduler)?, 100).await?;
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
