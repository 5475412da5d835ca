//! `cohort ballista`: a Ballista scheduler and executors that know the
//! planner's codec, for `cohort query --engine-scheduler` and `cohort
//! serve`'s `[engine]` (docs/BALLISTA.md).

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::Subcommand;
use cohort_query_planner::distributed::RemoteEngine;

use crate::Cli;

/// The cluster whose scheduler is at `scheduler`, checked to answer now:
/// a malformed address or a cluster that is down is refused before a
/// query's cost is reserved, or before a server starts.
pub(crate) fn cluster(scheduler: &str, partitions: usize) -> anyhow::Result<Arc<dyn RemoteEngine>> {
    let engine = cohort_distributed::BallistaEngine::new(scheduler, partitions)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    runtime.block_on(engine.check())?;
    Ok(Arc::new(engine))
}

#[derive(Subcommand)]
pub(crate) enum BallistaCmd {
    /// A scheduler on a free loopback port and executors beside it, in
    /// this process; prints the scheduler's URL and serves until Ctrl-C.
    Standalone {
        /// Executors to start.
        #[arg(long, default_value_t = 2)]
        executors: usize,
        /// Task slots per executor.
        #[arg(long, default_value_t = 1)]
        vcores: usize,
    },
    /// Executors for a running scheduler (on this machine), until Ctrl-C.
    Executor {
        /// The scheduler (`http://localhost:PORT`).
        #[arg(long)]
        scheduler: String,
        /// Executors to start.
        #[arg(long, default_value_t = 1)]
        executors: usize,
        /// Task slots per executor.
        #[arg(long, default_value_t = 1)]
        vcores: usize,
    },
}

pub(crate) fn ballista(_cli: &Cli, cmd: &BallistaCmd) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    runtime.block_on(async {
        match cmd {
            BallistaCmd::Standalone { executors, vcores } => {
                let url = cohort_distributed::standalone(*executors, *vcores).await?;
                println!("{url}");
                eprintln!(
                    "Ballista scheduler at {url} with {executors} executor(s); \
                     cohort query POLICY|STUDY --engine-scheduler {url} ..., or \
                     COHORT_ENGINE_KIND=ballista COHORT_ENGINE_SCHEDULER={url} cohort serve \
                     (Ctrl-C stops)"
                );
            }
            BallistaCmd::Executor {
                scheduler,
                executors,
                vcores,
            } => {
                cohort_distributed::start_executors(scheduler, *executors, *vcores).await?;
                eprintln!("{executors} executor(s) registered with {scheduler} (Ctrl-C stops)");
            }
        }
        tokio::signal::ctrl_c()
            .await
            .context("waiting for Ctrl-C")?;
        Ok(ExitCode::SUCCESS)
    })
}
