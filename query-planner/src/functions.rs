//! The allow-list of SQL functions: what the syntax rule accepts and what
//! the study's session registers, one list for both (a leaf module, so
//! that the rules and the catalog both read it without reading each other).

/// Scalar functions a study query may call: deterministic, built in, and
/// unable to reach outside the query (no randomness, hashing, regular
/// expressions or I/O). Everything else is refused by name.
pub const SCALAR_FUNCTIONS: &[&str] = &[
    // arithmetic
    "abs",
    "ceil",
    "floor",
    "round",
    "trunc",
    "signum",
    "sqrt",
    "cbrt",
    "power",
    "pow",
    "exp",
    "ln",
    "log",
    "log2",
    "log10",
    "isnan",
    "iszero",
    "nanvl",
    "pi",
    "greatest",
    "least",
    // conditionals
    "coalesce",
    "nullif",
    "nvl",
    "nvl2",
    "ifnull",
    // text
    "lower",
    "upper",
    "length",
    "char_length",
    "character_length",
    "octet_length",
    "substr",
    "substring",
    "left",
    "right",
    "trim",
    "btrim",
    "ltrim",
    "rtrim",
    "concat",
    "concat_ws",
    "replace",
    "starts_with",
    "ends_with",
    "strpos",
    "instr",
    "lpad",
    "rpad",
    "initcap",
    "split_part",
    // dates
    "date_part",
    "datepart",
    "date_trunc",
    "datetrunc",
    "to_date",
    "make_date",
    "current_date",
    "today",
    // types
    "arrow_cast",
];

/// Aggregates a study query may call. Which of them can be released with
/// DP (and which only inside a per-patient subquery) is decided by the
/// planner's aggregate rule.
pub const AGGREGATE_FUNCTIONS: &[&str] = &[
    "count",
    "sum",
    "avg",
    "mean",
    "min",
    "max",
    "var",
    "var_samp",
    "var_sample",
    "var_pop",
    "var_population",
    "variance",
    "stddev",
    "stddev_samp",
    "stddev_pop",
    "median",
    "percentile_cont",
    "quantile_cont",
    "approx_percentile_cont",
];

/// Whether `name` (lower case) is an allow-listed function.
pub fn is_allowed_function(name: &str) -> bool {
    SCALAR_FUNCTIONS.contains(&name) || AGGREGATE_FUNCTIONS.contains(&name)
}
