//! `NoisyAggregate` as a logical plan node: its identity, its `EXPLAIN`
//! line, and the guard that keeps predicates above the noise.

use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use datafusion::common::{DFSchemaRef, Result as DfResult};
use datafusion::logical_expr::{Expr, LogicalPlan, UserDefinedLogicalNodeCore};

use super::site::{Keys, Site};
/// The logical node.
#[derive(Clone, Debug)]
pub(crate) struct NoisyAggregate {
    pub input: LogicalPlan,
    /// The researcher's aggregate's schema, which this node outputs.
    pub schema: DFSchemaRef,
    pub site: Arc<Site>,
}

impl PartialEq for NoisyAggregate {
    fn eq(&self, other: &Self) -> bool {
        self.site.id == other.site.id && self.input == other.input && self.schema == other.schema
    }
}

impl Eq for NoisyAggregate {}

impl PartialOrd for NoisyAggregate {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        (self.site.id, &self.input).partial_cmp(&(other.site.id, &other.input))
    }
}

impl Hash for NoisyAggregate {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.site.id.hash(state);
        self.input.hash(state);
    }
}

impl UserDefinedLogicalNodeCore for NoisyAggregate {
    fn name(&self) -> &str {
        "NoisyAggregate"
    }

    fn inputs(&self) -> Vec<&LogicalPlan> {
        vec![&self.input]
    }

    fn schema(&self) -> &DFSchemaRef {
        &self.schema
    }

    fn expressions(&self) -> Vec<Expr> {
        vec![]
    }

    fn fmt_for_explain(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "NoisyAggregate: ")?;
        match &self.site.keys {
            Keys::None => write!(f, "keys=none")?,
            Keys::Public(domain) => write!(f, "keys=public domain ({} groups)", domain.len())?,
            Keys::Selected { threshold, .. } => match threshold {
                Some(t) => write!(f, "keys=DP selection (threshold {})", t.threshold())?,
                None => write!(f, "keys=DP selection")?,
            },
        }
        let releases: Vec<String> = self
            .site
            .releases
            .iter()
            .map(|r| match &r.noise {
                Some(noise) => format!("{}: {}", r.output, noise.mechanism()),
                None => r.output.clone(),
            })
            .collect();
        write!(f, ", releases=[{}]", releases.join(", "))
    }

    fn with_exprs_and_inputs(
        &self,
        _exprs: Vec<Expr>,
        mut inputs: Vec<LogicalPlan>,
    ) -> DfResult<Self> {
        Ok(NoisyAggregate {
            input: inputs.swap_remove(0),
            schema: Arc::clone(&self.schema),
            site: Arc::clone(&self.site),
        })
    }

    fn prevent_predicate_push_down_columns(&self) -> std::collections::HashSet<String> {
        // Nothing above may move below the noise: a predicate on a group key
        // (`HAVING gender = 'female'`) stays above it. DataFusion's filter
        // pushdown compares these names with the predicate's unqualified
        // column names; the qualified ones are listed too.
        self.schema
            .columns()
            .into_iter()
            .flat_map(|column| [column.name.clone(), column.flat_name()])
            .collect()
    }
}
