//! The study's DataFusion session: only the study's tables, only their
//! approved columns, only allow-listed functions, and a physical planner
//! that knows cohort's private operators.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use arrow::datatypes::{Schema, SchemaRef};
use async_trait::async_trait;
use datafusion::catalog::{Session, TableProvider};
use datafusion::datasource::TableType;
use datafusion::execution::SessionStateDefaults;
use datafusion::execution::context::QueryPlanner;
use datafusion::execution::session_state::SessionStateBuilder;
use datafusion::logical_expr::{AggregateUDF, Expr, LogicalPlan, TableProviderFilterPushDown};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_planner::{DefaultPhysicalPlanner, PhysicalPlanner};
use datafusion::prelude::{SessionConfig, SessionContext};

use crate::error::{Error, Result};
use crate::functions::{AGGREGATE_FUNCTIONS, SCALAR_FUNCTIONS};
use crate::nodes::PrivateOperatorPlanner;
use crate::policy::Scope;

/// Builds the study's session: the scoped tables registered under their
/// study names, nothing else reachable.
pub(crate) fn session(
    scope: &Scope,
    tables: &HashMap<String, Arc<dyn TableProvider>>,
) -> Result<SessionContext> {
    let scalar = SessionStateDefaults::default_scalar_functions()
        .into_iter()
        .filter(|f| names(f.name(), f.aliases()).any(|n| SCALAR_FUNCTIONS.contains(&n)))
        .collect();
    let mut aggregate: Vec<Arc<AggregateUDF>> = SessionStateDefaults::default_aggregate_functions()
        .into_iter()
        .filter(|f| names(f.name(), f.aliases()).any(|n| AGGREGATE_FUNCTIONS.contains(&n)))
        // SQL's VARIANCE (PostgreSQL, SmartNoise) is the sample variance,
        // which DataFusion names only VAR, VAR_SAMP and VAR_SAMPLE.
        .map(|f| match f.name() {
            "var" => Arc::new(f.as_ref().clone().with_aliases(["variance"])),
            _ => f,
        })
        .collect();
    // Only reachable through the encrypted-columns rewrite: user SQL naming
    // `__cohort…` is refused before planning.
    aggregate.push(Arc::new(crate::rules::encrypted::udaf()));
    // A Parquet source is cut in partitions by rows (`sources::RowSplit`),
    // not again by bytes.
    let config = SessionConfig::new()
        .with_information_schema(false)
        .with_create_default_catalog_and_schema(true)
        .with_repartition_file_scans(false);
    let state = SessionStateBuilder::new()
        .with_config(config)
        .with_default_features()
        .with_scalar_functions(scalar)
        .with_aggregate_functions(aggregate)
        .with_window_functions(vec![])
        .with_table_functions(HashMap::new())
        .with_query_planner(Arc::new(CohortQueryPlanner))
        .build();
    let context = SessionContext::new_with_state(state);
    for (name, table) in &scope.tables {
        let provider = tables.get(name).ok_or_else(|| {
            Error::Policy(format!(
                "table `{name}` is in the policy but no data was given for it"
            ))
        })?;
        let approved: BTreeSet<&str> = table.columns.iter().map(|(c, _)| c.as_str()).collect();
        let scoped = ScopedProvider::new(Arc::clone(provider), &approved)?;
        context.register_table(name.as_str(), Arc::new(scoped))?;
    }
    Ok(context)
}

fn names<'a>(name: &'a str, aliases: &'a [String]) -> impl Iterator<Item = &'a str> {
    std::iter::once(name).chain(aliases.iter().map(String::as_str))
}

/// A table seen through its approved columns only. Columns outside the
/// study's scope are not in its schema, so no query can name them.
#[derive(Debug)]
pub(crate) struct ScopedProvider {
    inner: Arc<dyn TableProvider>,
    schema: SchemaRef,
    /// For each visible column, its index in the inner table.
    indices: Vec<usize>,
}

impl ScopedProvider {
    fn new(inner: Arc<dyn TableProvider>, approved: &BTreeSet<&str>) -> Result<ScopedProvider> {
        let full = inner.schema();
        let indices: Vec<usize> = full
            .fields()
            .iter()
            .enumerate()
            .filter(|(_, field)| approved.contains(field.name().as_str()))
            .map(|(index, _)| index)
            .collect();
        let schema = Arc::new(Schema::new_with_metadata(
            indices
                .iter()
                .map(|&i| full.field(i).clone())
                .collect::<Vec<_>>(),
            full.metadata().clone(),
        ));
        Ok(ScopedProvider {
            inner,
            schema,
            indices,
        })
    }
}

#[async_trait]
impl TableProvider for ScopedProvider {
    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> datafusion::common::Result<Arc<dyn ExecutionPlan>> {
        let mapped: Vec<usize> = match projection {
            Some(projection) => projection.iter().map(|&i| self.indices[i]).collect(),
            None => self.indices.clone(),
        };
        self.inner.scan(state, Some(&mapped), filters, limit).await
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> datafusion::common::Result<Vec<TableProviderFilterPushDown>> {
        self.inner.supports_filters_pushdown(filters)
    }
}

/// DataFusion's physical planner, taught cohort's private operators.
#[derive(Debug)]
struct CohortQueryPlanner;

#[async_trait]
impl QueryPlanner for CohortQueryPlanner {
    async fn create_physical_plan(
        &self,
        logical_plan: &LogicalPlan,
        session: &dyn Session,
    ) -> datafusion::common::Result<Arc<dyn ExecutionPlan>> {
        // Every expression is made total and bounded here, on the final
        // logical plan: no optimizer rule runs after it (see `guard`).
        let guarded = crate::guard::plan(logical_plan.clone())?;
        DefaultPhysicalPlanner::with_extension_planners(vec![Arc::new(PrivateOperatorPlanner)])
            .create_physical_plan(&guarded, session)
            .await
    }
}
