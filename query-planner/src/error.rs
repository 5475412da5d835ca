//! The planner's one error type.

use std::fmt;

use cohort_anonymizer::accountant::Charge;
use datafusion::error::DataFusionError;

/// The privacy rule a refused query broke. Each has a stable kebab-case
/// name, shown in the message, so that clients can tell refusals apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Rule {
    /// A table, column or schema outside the study's scope.
    Scope,
    /// A function that is not on the allow-list (user-defined, volatile, unknown).
    Function,
    /// A window function (`OVER (...)`).
    WindowFunction,
    /// The answer would contain rows of individual patients.
    RowLevelOutput,
    /// An aggregate over a column without declared bounds.
    UnboundedAggregate,
    /// An aggregate with no DP mechanism (MIN, MAX, ARRAY_AGG, ...).
    UnsupportedAggregate,
    /// Grouping by the privacy unit or by a near-unique (identifier) column.
    GroupByIdentifier,
    /// `LIMIT`, `TABLESAMPLE` or a random predicate before aggregation.
    SamplingBeforeAggregation,
    /// A join that does not match rows of the same patient.
    JoinNotOnUnit,
    /// SQL the planner does not support (DDL, grouping sets, recursion, ...).
    UnsupportedSql,
    /// The query costs more than the per-query cap or the remaining budget.
    Budget,
    /// An encrypted column used other than as an encrypted aggregate.
    EncryptedColumn,
    /// An expression that could fail or grow without bound over patients' rows.
    Totality,
}

impl Rule {
    /// The rule's stable name.
    pub fn name(self) -> &'static str {
        match self {
            Rule::Scope => "study-scope",
            Rule::Function => "allowed-functions",
            Rule::WindowFunction => "no-window-functions",
            Rule::RowLevelOutput => "no-row-level-output",
            Rule::UnboundedAggregate => "bounded-aggregates",
            Rule::UnsupportedAggregate => "supported-aggregates",
            Rule::GroupByIdentifier => "no-grouping-by-identifiers",
            Rule::SamplingBeforeAggregation => "no-sampling-before-aggregation",
            Rule::JoinNotOnUnit => "joins-on-the-privacy-unit",
            Rule::UnsupportedSql => "supported-sql",
            Rule::Budget => "privacy-budget",
            Rule::EncryptedColumn => "encrypted-columns",
            Rule::Totality => "total-evaluation",
        }
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Everything that can go wrong while planning or running a private query.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The query breaks a privacy rule; nothing was run and nothing spent.
    #[error("query refused ({rule}): {fragment}: {reason}")]
    Refused {
        /// The rule it broke.
        rule: Rule,
        /// The offending part of the SQL, with its position when known.
        fragment: String,
        /// Why, and what to do instead.
        reason: String,
    },

    /// The query would cost more than it may.
    #[error("query refused (privacy-budget): it costs {cost}, but {limit}")]
    OverBudget {
        /// What the query would cost.
        cost: Charge,
        /// The limit it exceeds, in words.
        limit: String,
    },

    /// The SQL does not parse.
    #[error("SQL syntax: {0}")]
    Syntax(String),

    /// The study policy is malformed or does not match the tables.
    #[error("study policy: {0}")]
    Policy(String),

    /// Query options (ε, δ, split weights) are invalid.
    #[error("query options: {0}")]
    Options(String),

    /// A mechanism could not be calibrated or sampled.
    #[error(transparent)]
    Mechanism(#[from] cohort_anonymizer::Error),

    /// DataFusion failed while planning or executing.
    #[error("query engine: {0}")]
    Engine(Box<DataFusionError>),
}

impl From<DataFusionError> for Error {
    fn from(error: DataFusionError) -> Self {
        // Errors raised by our own operators travel through DataFusion as
        // `External`; give them back their own type.
        match error {
            DataFusionError::External(inner) => match inner.downcast::<Error>() {
                Ok(ours) => *ours,
                Err(other) => Error::Engine(Box::new(DataFusionError::External(other))),
            },
            DataFusionError::Context(context, inner) => match Error::from(*inner) {
                Error::Engine(inner) => {
                    Error::Engine(Box::new(DataFusionError::Context(context, inner)))
                }
                ours => ours,
            },
            other => Error::Engine(Box::new(other)),
        }
    }
}

impl From<arrow::error::ArrowError> for Error {
    fn from(error: arrow::error::ArrowError) -> Self {
        Error::Engine(Box::new(DataFusionError::ArrowError(Box::new(error), None)))
    }
}

impl From<Error> for DataFusionError {
    fn from(error: Error) -> Self {
        DataFusionError::External(Box::new(error))
    }
}

impl Error {
    /// A refusal by `rule` of `fragment`, because `reason`.
    pub(crate) fn refused(
        rule: Rule,
        fragment: impl fmt::Display,
        reason: impl Into<String>,
    ) -> Error {
        Error::Refused {
            rule,
            fragment: fragment.to_string(),
            reason: reason.into(),
        }
    }

    /// The rule a refusal broke, if it is one.
    pub fn rule(&self) -> Option<Rule> {
        match self {
            Error::Refused { rule, .. } => Some(*rule),
            Error::OverBudget { .. } => Some(Rule::Budget),
            _ => None,
        }
    }
}

/// The planner's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
