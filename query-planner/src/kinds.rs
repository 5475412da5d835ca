//! The typing core: the privacy kinds a relation can have and what the
//! typing pass knows of it. The rules ([`crate::rules`]) read these types;
//! the pass ([`crate::typing`]) applies the rules and builds them. Nothing
//! here depends on either, so the dependencies point one way:
//! typing -> rules -> kinds.

use datafusion::logical_expr::JoinType;

use crate::facts::ColumnFacts;

/// The column name under which the planner carries the privacy unit
/// through projections that drop it. The `__cohort` prefix is reserved:
/// queries that use it are refused.
pub(crate) const UNIT_COLUMN: &str = "__cohort_unit";

/// The privacy kind of a relation.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Kind {
    /// Rows of patients; `unit` is the index of the privacy unit column.
    Private {
        unit: usize,
        /// A bound on rows per patient that the tables guarantee.
        rows_per_unit: Option<u64>,
    },
    /// No patient data.
    Public,
    /// Output of DP aggregates (or computed from it).
    Published,
}

/// A rewritten relation with its kind and column facts.
#[derive(Clone, Debug)]
pub(crate) struct Typed {
    pub kind: Kind,
    pub columns: Vec<ColumnFacts>,
    /// A refusal that applies if these rows reach an aggregate
    /// (sampling) — or, more fundamentally, the answer.
    pub sampled: Option<String>,
    /// Set when the rows are one per patient from a `GROUP BY` on the unit.
    pub per_unit: Option<String>,
}

impl Typed {
    pub(crate) fn public(columns: usize) -> Typed {
        Typed {
            kind: Kind::Public,
            columns: vec![ColumnFacts::default(); columns],
            sampled: None,
            per_unit: None,
        }
    }

    pub(crate) fn published(columns: Vec<ColumnFacts>) -> Typed {
        Typed {
            kind: Kind::Published,
            columns: columns
                .into_iter()
                .map(|facts| ColumnFacts {
                    interval: Default::default(),
                    copy_of: None,
                    ..facts
                })
                .collect(),
            sampled: None,
            per_unit: None,
        }
    }

    pub(crate) fn is_private(&self) -> bool {
        matches!(self.kind, Kind::Private { .. })
    }
}

/// The output unit of a join, by join type.
pub(crate) fn joined_unit(
    join_type: JoinType,
    left: usize,
    right: usize,
    left_width: usize,
) -> Option<usize> {
    match join_type {
        JoinType::Inner
        | JoinType::Left
        | JoinType::LeftSemi
        | JoinType::LeftAnti
        | JoinType::LeftMark => Some(left),
        JoinType::Right => Some(left_width + right),
        JoinType::RightSemi | JoinType::RightAnti | JoinType::RightMark => Some(right),
        JoinType::Full => None,
    }
}
