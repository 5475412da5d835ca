//! The anonymizer's one error type.

/// Everything that can go wrong while de-identifying, generalizing or
/// anonymizing a table, releasing a DP statistic or accounting for it. Messages name the column, value or constraint at fault
/// and, where there is one, what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A column named in a policy, hierarchy or option is not in the table.
    #[error("column `{column}` is not in the table (it has: {available})")]
    NoSuchColumn {
        /// The missing column.
        column: String,
        /// The table's columns, comma-separated.
        available: String,
    },

    /// A column's Arrow type cannot be used the way it was asked to be.
    #[error("column `{column}` has type {data_type}, which {what}")]
    UnsupportedType {
        /// The column.
        column: String,
        /// Its Arrow type.
        data_type: String,
        /// What was asked of it ("cannot be a numeric quasi-identifier", ...).
        what: String,
    },

    /// A quasi-identifier or sensitive value is null.
    #[error(
        "column `{column}` is null at row {row}; quasi-identifiers and the sensitive attribute must be present (drop or fill those rows first)"
    )]
    NullValue {
        /// The column.
        column: String,
        /// The 0-based row.
        row: usize,
    },

    /// A generalization hierarchy file or declaration is malformed.
    #[error("hierarchy for `{column}`: {message}")]
    Hierarchy {
        /// The column the hierarchy is declared for.
        column: String,
        /// What is wrong with it.
        message: String,
    },

    /// A value does not appear in the column's hierarchy.
    #[error(
        "value {value:?} of column `{column}` is not a leaf of its hierarchy; add it to the tree in the hierarchy file"
    )]
    NotInHierarchy {
        /// The column.
        column: String,
        /// The value.
        value: String,
    },

    /// A de-identification policy is malformed or incomplete.
    #[error("de-identification policy: {0}")]
    Policy(String),

    /// A value could not be transformed by the policy.
    #[error("column `{column}`, row {row}: {message}")]
    BadValue {
        /// The column.
        column: String,
        /// The 0-based row.
        row: usize,
        /// What is wrong with the value.
        message: String,
    },

    /// An anonymization request is malformed or out of range.
    #[error("invalid request: {0}")]
    InvalidRequest(String),

    /// The privacy constraints cannot be met for this table.
    #[error("cannot anonymize: {0}")]
    Unsatisfiable(String),

    /// A privacy amount (ε, δ or ρ) could not be parsed or represented.
    #[error(
        "invalid privacy amount `{input}`: {reason}; write a non-negative decimal with at most \
         18 digits after the point, such as `1.5` or `0.000001`"
    )]
    InvalidAmount {
        /// The text or number that was given.
        input: String,
        /// Why it was refused.
        reason: String,
    },

    /// Exact privacy arithmetic left the 18-decimal fixed-point range.
    #[error(
        "privacy amount overflow while computing {operation}: the result does not fit in the \
         fixed-point range (about 3.4e20); use smaller budgets or charges"
    )]
    AmountOverflow {
        /// The operation that overflowed.
        operation: &'static str,
    },

    /// Two privacy amounts of different kinds were combined where one kind is required.
    #[error(
        "privacy kinds do not match in {operation}: expected a {expected} charge, got {found}; \
         convert the charges to one kind first (see `Charge::convert_to`)"
    )]
    KindMismatch {
        /// The operation that needs a single kind.
        operation: &'static str,
        /// The kind that was expected.
        expected: String,
        /// The charge that did not match.
        found: String,
    },

    /// A conversion between privacy definitions that does not exist was asked for.
    #[error("cannot convert {from} to {to}: {hint}")]
    ConversionImpossible {
        /// The charge that was to be converted.
        from: String,
        /// The kind it was to be converted to.
        to: String,
        /// What to do instead.
        hint: &'static str,
    },

    /// A reservation would overspend the study's budget.
    #[error(
        "privacy budget exceeded for query `{query_id}`: requested {requested}, but only \
         {remaining} remains ({ledger}); ask for less (a smaller ε, or fewer statistics), or \
         release unused reservations"
    )]
    BudgetExceeded {
        /// The query whose reservation was refused.
        query_id: String,
        /// The charge it asked for, in the budget's kind.
        requested: String,
        /// What is left: budget minus committed minus reserved.
        remaining: String,
        /// The budget, what is committed and what is reserved.
        ledger: String,
    },

    /// The same query id was reserved twice with different charges.
    #[error(
        "query `{query_id}` already holds a reservation of {existing}, not {requested}; a retry \
         must repeat the same charge: release the old reservation first or use a new query id"
    )]
    ReservationConflict {
        /// The query id.
        query_id: String,
        /// The charge already reserved.
        existing: String,
        /// The different charge asked for now.
        requested: String,
    },

    /// The query id has no open reservation.
    #[error("query `{query_id}` has no open reservation; call `reserve` before `{operation}`")]
    UnknownQuery {
        /// The query id.
        query_id: String,
        /// The operation that needed a reservation (`commit` or `release`).
        operation: &'static str,
    },

    /// The query id was already committed: it cannot be reserved, committed or released again.
    #[error(
        "query `{query_id}` is already committed ({charge}); its privacy loss is final: use a \
         new query id for a new release"
    )]
    AlreadyCommitted {
        /// The query id.
        query_id: String,
        /// What was committed for it.
        charge: String,
    },

    /// A commit reported a larger actual charge than was reserved.
    #[error(
        "query `{query_id}` reserved {reserved} but reports an actual cost of {actual}; a \
         release may cost at most what was reserved: reserve the larger amount before running it"
    )]
    ActualExceedsReserved {
        /// The query id.
        query_id: String,
        /// The reserved charge.
        reserved: String,
        /// The larger actual charge.
        actual: String,
    },

    /// Stored accountant state breaks the accountant's invariant.
    #[error("inconsistent accountant state: {reason}; the stored ledger state is corrupt")]
    InconsistentState {
        /// The broken invariant.
        reason: String,
    },

    /// A mechanism parameter is out of range.
    #[error("invalid parameter `{name}` = {value}: {requirement}")]
    InvalidParameter {
        /// The parameter's name.
        name: &'static str,
        /// The value that was given.
        value: String,
        /// What the value must satisfy.
        requirement: &'static str,
    },

    /// OpenDP refused to build or run a mechanism.
    #[error("OpenDP failed while {context}: {message}")]
    OpenDp {
        /// What this crate was doing.
        context: &'static str,
        /// OpenDP's own error variant and message.
        message: String,
    },

    /// An Arrow kernel failed.
    #[error("arrow: {0}")]
    Arrow(#[from] arrow::error::ArrowError),
}

/// The anonymizer's result type.
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// Wrap an OpenDP error, keeping its message (OpenDP's `Display` shows only the variant).
    pub(crate) fn opendp(context: &'static str, error: opendp::error::Error) -> Self {
        let message = match error.message {
            Some(message) => format!("{}: {message}", error.variant),
            None => error.variant.to_string(),
        };
        Error::OpenDp { context, message }
    }

    /// An out-of-range parameter.
    pub(crate) fn parameter(
        name: &'static str,
        value: impl std::fmt::Display,
        requirement: &'static str,
    ) -> Self {
        Error::InvalidParameter {
            name,
            value: value.to_string(),
            requirement,
        }
    }
}
