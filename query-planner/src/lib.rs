//! # cohort-query-planner
//!
//! Turns a researcher's SQL into a differentially private plan, and runs it.
//!
//! DataFusion parses and plans the statement over the study's tables (only
//! their approved columns, only allow-listed functions). The planner then
//! types every relation of the plan as private (rows of patients), public
//! or published (Qrlew's approach), refusing what would leak: row-level
//! answers, joins that pair different patients, grouping by identifiers,
//! sampling before aggregation, aggregates without bounds or mechanism.
//! Each aggregate over patients' rows becomes
//!
//! ```text
//! NoisyAggregate                 noise from the anonymizer's OpenDP mechanisms
//!   Aggregate                    DataFusion's exact aggregate of clamped values
//!     BoundContributions         at most G groups and R rows per patient
//!       <the researcher's FROM / WHERE / JOIN>
//! ```
//!
//! and the rest of the query (HAVING, ORDER BY, LIMIT, arithmetic) runs on
//! the noisy values. The query's ε (or ρ) is split between its releases,
//! every noise scale is calibrated before any data is read, and the cost is
//! checked against the study's per-query cap and remaining budget.
//! `EXPLAIN PRIVACY <query>` shows all of it without running anything.
//!
//! ```no_run
//! # async fn demo() -> cohort_query_planner::Result<()> {
//! use std::collections::HashMap;
//! use cohort_anonymizer::accountant::Charge;
//! use cohort_query_planner::{Planner, QueryOptions, StudyPolicy, sources};
//!
//! let policy = StudyPolicy::from_toml(r#"
//!     privacy_unit = "patient_id"
//!     [query]
//!     epsilon = "0.1"
//!     [contribution]
//!     max_rows = 3
//!     [tables.visits.columns]
//!     patient_id = {}
//!     sex = { domain = ["F", "M"] }
//!     hba1c = { lower = 4, upper = 14 }
//! "#)?;
//! let visits = sources::parquet("visits.parquet".as_ref()).await?;
//! let planner = Planner::new(policy, HashMap::from([("visits".to_string(), visits)]))?;
//! let options = QueryOptions::new(Charge::Pure { epsilon: "1".parse()? });
//! let plan = planner.plan("SELECT sex, AVG(hba1c) FROM visits GROUP BY sex", &options).await?;
//! println!("{}", plan.explain());
//! let answer = plan.execute().await?;
//! # Ok(()) }
//! ```

#![deny(missing_docs)]

mod catalog;
pub mod dialect;
pub mod distributed;
mod encryption;
mod error;
mod facts;
mod functions;
mod guard;
mod kinds;
mod nodes;
mod plan;
mod planner;
pub mod policy;
mod release;
mod rules;
pub mod sources;
mod typing;

pub use encryption::{EncryptedExecutor, EncryptedRelease};
pub use error::{Error, Result, Rule};
pub use functions::{AGGREGATE_FUNCTIONS, SCALAR_FUNCTIONS};
pub use nodes::ReleasedAggregate;
pub use plan::{PlannedAggregate, PlannedOutput, PrivateAnswer, PrivatePlan};
pub use planner::{KEY_SELECTION_WEIGHT, Planner, QueryOptions};
pub use policy::StudyPolicy;
pub use release::{ErrorBound, Noise, Statistic};

/// DataFusion's table interface, which a [`Planner`] reads its tables through.
pub use datafusion::catalog::TableProvider;
