//! A study's ledger of charges: reserve before a query runs, then commit
//! what it cost or release it.
//!
//! The [`Accountant`] holds the one invariant the rest of the accountant
//! exists for, `committed + reserved ≤ budget`, and checks it again when a
//! saved ledger is read back.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use super::charge::{Budget, Charge};
use crate::error::{Error, Result};

/// The identifier of one query's debit (unique within a study).
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Serialize, Deserialize)]
#[serde(transparent)]
pub struct QueryId(String);

impl QueryId {
    /// A query id.
    pub fn new(id: impl Into<String>) -> QueryId {
        QueryId(id.into())
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for QueryId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<&str> for QueryId {
    fn from(id: &str) -> QueryId {
        QueryId::new(id)
    }
}

impl From<String> for QueryId {
    fn from(id: String) -> QueryId {
        QueryId(id)
    }
}

/// A study's privacy ledger: its budget, what is committed, and the open
/// reservations of queries in flight.
///
/// Invariant, after every operation: `committed + reserved ≤ budget`,
/// component-wise in the budget's kind, where `reserved` is the sum of the
/// open reservations and `committed` the exact sum of the committed charges.
/// Every charge is converted to the budget's kind on entry
/// ([`Charge::convert_to`]). The accountant is plain data: share it between
/// threads behind a `Mutex`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "AccountantState")]
pub struct Accountant {
    budget: Budget,
    /// Exact sum of `committed_queries`.
    committed: Charge,
    /// Exact sum of `reservations`, converted to the budget's kind (derived:
    /// not serialized, recomputed on deserialization).
    #[serde(skip_serializing)]
    reserved: Charge,
    /// Open reservations, as requested (not converted), for idempotent retries.
    reservations: BTreeMap<QueryId, Charge>,
    /// Committed queries and what each cost, in the budget's kind.
    committed_queries: BTreeMap<QueryId, Charge>,
}

/// The serialized form of an [`Accountant`], checked on the way in.
#[derive(Deserialize)]
struct AccountantState {
    budget: Budget,
    committed: Charge,
    reservations: BTreeMap<QueryId, Charge>,
    committed_queries: BTreeMap<QueryId, Charge>,
}

impl TryFrom<AccountantState> for Accountant {
    type Error = Error;

    fn try_from(state: AccountantState) -> Result<Accountant> {
        let kind = state.budget.kind();
        let inconsistent = |reason: String| Error::InconsistentState { reason };
        let logged: Vec<Charge> = state.committed_queries.values().copied().collect();
        let sum = Charge::sequential(&logged, kind)?;
        if sum != state.committed {
            return Err(inconsistent(format!(
                "committed is {} but the committed queries sum to {sum}",
                state.committed
            )));
        }
        if let Some(id) = state
            .reservations
            .keys()
            .find(|id| state.committed_queries.contains_key(*id))
        {
            return Err(inconsistent(format!(
                "query `{id}` is both reserved and committed"
            )));
        }
        let open: Vec<Charge> = state.reservations.values().copied().collect();
        let accountant = Accountant {
            budget: state.budget,
            committed: state.committed,
            reserved: Charge::sequential(&open, kind)?,
            reservations: state.reservations,
            committed_queries: state.committed_queries,
        };
        let total = accountant.committed.checked_add(&accountant.reserved)?;
        if !total.is_within(&accountant.budget.as_charge()) {
            return Err(inconsistent(format!(
                "committed + reserved ({total}) exceeds the budget ({})",
                accountant.budget
            )));
        }
        Ok(accountant)
    }
}

impl Accountant {
    /// An accountant with nothing spent.
    pub fn new(budget: Budget) -> Accountant {
        Accountant {
            budget,
            committed: Charge::zero(budget.kind()),
            reserved: Charge::zero(budget.kind()),
            reservations: BTreeMap::new(),
            committed_queries: BTreeMap::new(),
        }
    }

    /// The study's total budget.
    pub fn budget(&self) -> &Budget {
        &self.budget
    }

    /// Reserves `charge` for `query_id` before the query runs.
    ///
    /// Refuses with [`Error::BudgetExceeded`] when `committed + reserved +
    /// charge` would exceed the budget (a total exactly equal to the budget
    /// is allowed). Idempotent: reserving the same id with the same charge
    /// again succeeds without counting twice; the same id with a different
    /// charge is [`Error::ReservationConflict`], and an id already committed
    /// is [`Error::AlreadyCommitted`].
    pub fn reserve(&mut self, query_id: QueryId, charge: Charge) -> Result<()> {
        if let Some(done) = self.committed_queries.get(&query_id) {
            return Err(Error::AlreadyCommitted {
                query_id: query_id.0,
                charge: done.to_string(),
            });
        }
        let debit = charge.convert_to(self.budget.kind())?;
        if let Some(existing) = self.reservations.get(&query_id) {
            if *existing == charge {
                return Ok(());
            }
            return Err(Error::ReservationConflict {
                query_id: query_id.0,
                existing: existing.to_string(),
                requested: charge.to_string(),
            });
        }
        let reserved = self.reserved.checked_add(&debit)?;
        let total = self.committed.checked_add(&reserved)?;
        if !total.is_within(&self.budget.as_charge()) {
            return Err(Error::BudgetExceeded {
                query_id: query_id.0,
                requested: debit.to_string(),
                remaining: self.remaining().to_string(),
                ledger: format!(
                    "budget {}, committed {}, reserved {}",
                    self.budget, self.committed, self.reserved
                ),
            });
        }
        self.reserved = reserved;
        self.reservations.insert(query_id, charge);
        Ok(())
    }

    /// Commits the reservation of `query_id`: its cost becomes final.
    ///
    /// `actual` is what the release really cost if it was less than
    /// reserved (`None` commits the reservation as is); it may not exceed
    /// the reservation in any component ([`Error::ActualExceedsReserved`]).
    /// Returns the committed charge in the budget's kind. A query without a
    /// reservation is [`Error::UnknownQuery`]; a second commit is
    /// [`Error::AlreadyCommitted`].
    pub fn commit(&mut self, query_id: &QueryId, actual: Option<Charge>) -> Result<Charge> {
        if let Some(done) = self.committed_queries.get(query_id) {
            return Err(Error::AlreadyCommitted {
                query_id: query_id.to_string(),
                charge: done.to_string(),
            });
        }
        let reserved = self
            .reservations
            .get(query_id)
            .ok_or_else(|| Error::UnknownQuery {
                query_id: query_id.to_string(),
                operation: "commit",
            })?
            .convert_to(self.budget.kind())?;
        let debit = match actual {
            Some(actual) => actual.convert_to(self.budget.kind())?,
            None => reserved,
        };
        if !debit.is_within(&reserved) {
            return Err(Error::ActualExceedsReserved {
                query_id: query_id.to_string(),
                reserved: reserved.to_string(),
                actual: debit.to_string(),
            });
        }
        // debit ≤ reserved and committed + reserved ≤ budget: cannot overflow.
        let committed = self.committed.checked_add(&debit)?;
        self.reserved = self.unreserve(reserved)?;
        self.committed = committed;
        self.reservations.remove(query_id);
        self.committed_queries.insert(query_id.clone(), debit);
        Ok(debit)
    }

    /// Cancels the reservation of `query_id` (the query did not run);
    /// returns what was reserved, in the budget's kind.
    pub fn release(&mut self, query_id: &QueryId) -> Result<Charge> {
        if let Some(done) = self.committed_queries.get(query_id) {
            return Err(Error::AlreadyCommitted {
                query_id: query_id.to_string(),
                charge: done.to_string(),
            });
        }
        let charge = self
            .reservations
            .remove(query_id)
            .ok_or_else(|| Error::UnknownQuery {
                query_id: query_id.to_string(),
                operation: "release",
            })?;
        let debit = charge.convert_to(self.budget.kind())?;
        self.reserved = self.unreserve(debit)?;
        Ok(debit)
    }

    /// `reserved − debit`, for a debit that is part of `reserved`.
    fn unreserve(&self, debit: Charge) -> Result<Charge> {
        self.reserved
            .checked_sub(&debit)
            .ok_or_else(|| Error::InconsistentState {
                reason: format!(
                    "the reservations total {} but include {debit}",
                    self.reserved
                ),
            })
    }

    /// What may still be reserved: budget − committed − reserved.
    pub fn remaining(&self) -> Charge {
        self.budget
            .as_charge()
            .checked_sub(&self.committed)
            .and_then(|left| left.checked_sub(&self.reserved))
            .unwrap_or_else(|| Charge::zero(self.budget.kind()))
    }

    /// The exact sum of the committed charges, in the budget's kind.
    pub fn committed(&self) -> Charge {
        self.committed
    }

    /// The exact sum of the open reservations, in the budget's kind.
    pub fn reserved(&self) -> Charge {
        self.reserved
    }

    /// The open reservation of `query_id`, as requested.
    pub fn reservation(&self, query_id: &QueryId) -> Option<&Charge> {
        self.reservations.get(query_id)
    }

    /// What `query_id` cost, in the budget's kind, if it is committed.
    pub fn committed_charge(&self, query_id: &QueryId) -> Option<&Charge> {
        self.committed_queries.get(query_id)
    }

    /// The committed queries and their charges, in id order.
    pub fn committed_queries(&self) -> impl Iterator<Item = (&QueryId, &Charge)> {
        self.committed_queries.iter()
    }
}
