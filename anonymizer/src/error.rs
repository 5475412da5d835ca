//! The anonymizer's one error type.

/// Everything that can go wrong while de-identifying, generalizing or
/// anonymizing a table. Messages name the column, value or constraint at fault
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

    /// Anonymization parameters are out of range.
    #[error("invalid parameter: {0}")]
    InvalidParameter(String),

    /// The privacy constraints cannot be met for this table.
    #[error("cannot anonymize: {0}")]
    Unsatisfiable(String),

    /// An Arrow kernel failed.
    #[error("arrow: {0}")]
    Arrow(#[from] arrow::error::ArrowError),
}

/// The anonymizer's result type.
pub type Result<T> = std::result::Result<T, Error>;
