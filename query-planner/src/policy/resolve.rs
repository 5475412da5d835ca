//! Resolving a policy against the tables' schemas: every declaration is
//! checked and typed before any query is planned.
//!
//! This is where a policy is refused (a column the table lacks, bounds on
//! text, a lossy domain value), naming the column and what to write instead,
//! and where implicit domains and default precisions are filled in.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use arrow::array::{Array, RecordBatch};
use arrow::datatypes::{DataType, SchemaRef};
use datafusion::common::ScalarValue;

use super::file::{
    ColumnPolicy, Convention, Disclosure, DomainFrom, DomainValue, Sampling, StudyPolicy,
};
use super::scope::{
    Bounds, DEFAULT_PRECISION, DOMAIN_MAX, DeclaredColumn, IMPLICIT_DOMAIN_MAX, PRECISION_MAX,
    Scope, ScopedTable, SmallCells,
};
use crate::error::{Error, Result};

/// Public tables' rows, by name: public facts the planner may read while
/// resolving (their domains and bounds), unlike a study table's.
pub type PublicTables = BTreeMap<String, RecordBatch>;

impl StudyPolicy {
    /// Checks the policy against the tables' schemas and resolves what the
    /// planner needs: the approved columns of each table, typed domains,
    /// bounds and precisions.
    pub fn resolve(&self, schemas: &HashMap<String, SchemaRef>) -> Result<Scope> {
        self.resolve_with_public(schemas, &PublicTables::new())
    }

    /// [`StudyPolicy::resolve`] with public tables beside the study's: every
    /// column of a public table is visible, its domain is its distinct
    /// values (up to [`DOMAIN_MAX`]) and a numeric one is bounded by its
    /// range; study columns may take their domain from one (`domain_from`).
    pub fn resolve_with_public(
        &self,
        schemas: &HashMap<String, SchemaRef>,
        public: &PublicTables,
    ) -> Result<Scope> {
        let bad = |message: String| Error::Policy(message);
        for name in self.public.keys() {
            if !public.contains_key(name) {
                return Err(bad(format!(
                    "public table `{name}` is in the policy but no data was given for it"
                )));
            }
        }
        if self.contribution.max_rows == 0 || self.contribution.max_groups == 0 {
            return Err(bad(
                "contribution.max_rows and max_groups must be at least 1".into(),
            ));
        }
        if let Sampling::FirstBy(columns) = &self.contribution.sampling
            && columns.is_empty()
        {
            return Err(bad("contribution.sampling.first_by names no column".into()));
        }
        if self.tables.is_empty() {
            return Err(bad("the study has no tables".into()));
        }
        let e = &self.execution;
        if e.memory_mb == 0 || e.memory_mb > 1 << 20 {
            return Err(bad("execution.memory_mb must be 1 to 1048576".into()));
        }
        if !(e.encrypted_factor.is_finite() && e.encrypted_factor >= 1.0) {
            return Err(bad("execution.encrypted_factor must be at least 1".into()));
        }
        if e.deadline_ms > 24 * 3_600_000 {
            return Err(bad("execution.deadline_ms must be at most a day".into()));
        }
        let mut tables = BTreeMap::new();
        for (name, table) in &self.tables {
            let schema = schemas.get(name).ok_or_else(|| {
                bad(format!(
                    "table `{name}` is in the policy but no data was given for it"
                ))
            })?;
            if !table.columns.contains_key(&self.privacy_unit) {
                return Err(bad(format!(
                    "table `{name}` must approve the privacy unit column `{}` (every study \
                     table names the patient each row belongs to)",
                    self.privacy_unit
                )));
            }
            if table.rows_per_unit == Some(0) {
                return Err(bad(format!(
                    "table `{name}`: rows_per_unit must be at least 1"
                )));
            }
            let mut columns = Vec::new();
            for (column, declared) in &table.columns {
                let field = schema.field_with_name(column).map_err(|_| {
                    bad(format!(
                        "column `{name}.{column}` is in the policy but not in the table (it has: {})",
                        schema
                            .fields()
                            .iter()
                            .map(|f| f.name().as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ))
                })?;
                let is_unit = *column == self.privacy_unit;
                let facts = resolve_column(
                    &format!("{name}.{column}"),
                    field.data_type(),
                    declared,
                    is_unit,
                    public,
                )?;
                columns.push((column.clone(), facts));
            }
            tables.insert(
                name.clone(),
                ScopedTable {
                    columns,
                    rows_per_unit: table.rows_per_unit,
                    public: false,
                },
            );
        }
        for (name, batch) in public {
            if tables.contains_key(name) {
                return Err(bad(format!(
                    "`{name}` is both a study table and a public table; rename one"
                )));
            }
            tables.insert(name.clone(), public_table(name, batch)?);
        }
        Ok(Scope {
            unit: self.privacy_unit.clone(),
            tables,
            small_cells: self.disclosure.as_ref().map(small_cells).transpose()?,
            public_rows: public.clone(),
        })
    }
}

/// The small-cell rules a `[disclosure]` section declares.
fn small_cells(disclosure: &Disclosure) -> Result<SmallCells> {
    let bad = |message: &str| Error::Policy(format!("[disclosure]: {message}"));
    let rules = match (
        disclosure.convention,
        disclosure.round_to,
        disclosure.suppress_below,
    ) {
        (Some(_), Some(_), _) | (Some(_), _, Some(_)) => {
            return Err(bad(
                "name a convention or give round_to / suppress_below, not both",
            ));
        }
        (Some(Convention::Opensafely), None, None) => SmallCells {
            convention: Some("OpenSAFELY".into()),
            round_to: 5,
            suppress_below: 8,
        },
        (Some(Convention::Ohdsi), None, None) => SmallCells {
            convention: Some("OHDSI".into()),
            round_to: 1,
            suppress_below: 5,
        },
        (Some(Convention::AllOfUs), None, None) => SmallCells {
            convention: Some("All of Us".into()),
            round_to: 1,
            suppress_below: 20,
        },
        (None, None, None) => {
            return Err(bad(
                "give a convention (opensafely, ohdsi, all_of_us) or round_to / suppress_below",
            ));
        }
        (None, round_to, suppress_below) => {
            if round_to == Some(0) {
                return Err(bad("round_to must be at least 1"));
            }
            SmallCells {
                convention: None,
                round_to: u64::from(round_to.unwrap_or(1)),
                suppress_below: u64::from(suppress_below.unwrap_or(0)),
            }
        }
    };
    Ok(rules)
}

/// A public table as the planner sees it: every column, its distinct
/// values as its domain (when there are at most [`DOMAIN_MAX`]) and a
/// numeric column's range as its bounds.
fn public_table(name: &str, batch: &RecordBatch) -> Result<ScopedTable> {
    let schema = batch.schema();
    let mut columns = Vec::with_capacity(schema.fields().len());
    for (index, field) in schema.fields().iter().enumerate() {
        let values = distinct(batch, index, |_| true, DOMAIN_MAX)?;
        let data_type = field.data_type().clone();
        let bounds = match &values {
            Some(values) if data_type.is_numeric() => {
                let numbers: Vec<f64> = values
                    .iter()
                    .filter_map(|v| v.cast_to(&DataType::Float64).ok())
                    .filter_map(|v| match v {
                        ScalarValue::Float64(Some(x)) if x.is_finite() => Some(x),
                        _ => None,
                    })
                    .collect();
                let lower = numbers.iter().copied().fold(f64::INFINITY, f64::min);
                let upper = numbers.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                (lower <= upper).then_some(Bounds { lower, upper })
            }
            _ => None,
        };
        columns.push((
            field.name().clone(),
            DeclaredColumn {
                identifier: false,
                bounds,
                domain: values,
                precision: if data_type.is_integer() {
                    0
                } else {
                    DEFAULT_PRECISION
                },
                candidates: None,
                encrypted: None,
                data_type,
            },
        ));
    }
    if columns.is_empty() {
        return Err(Error::Policy(format!(
            "public table `{name}` has no columns"
        )));
    }
    Ok(ScopedTable {
        columns,
        rows_per_unit: None,
        public: true,
    })
}

/// The distinct non-null values of column `index` on the rows `keep`
/// accepts, sorted; `None` when there are more than `max`.
fn distinct(
    batch: &RecordBatch,
    index: usize,
    keep: impl Fn(usize) -> bool,
    max: usize,
) -> Result<Option<Vec<ScalarValue>>> {
    let column = batch.column(index);
    let mut seen = BTreeSet::new();
    let mut values = Vec::new();
    for row in 0..batch.num_rows() {
        if column.is_null(row) || !keep(row) {
            continue;
        }
        let value = ScalarValue::try_from_array(column, row)?;
        if seen.insert(value.to_string()) {
            if values.len() == max {
                return Ok(None);
            }
            values.push(value);
        }
    }
    values.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    Ok(Some(values))
}

/// The values a `domain_from` names, cast to the study column's type.
fn domain_from(
    from: &DomainFrom,
    data_type: &DataType,
    public: &PublicTables,
) -> std::result::Result<Vec<ScalarValue>, String> {
    let batch = public.get(&from.table).ok_or_else(|| {
        format!(
            "domain_from names `{}`, which is not a public table of this study",
            from.table
        )
    })?;
    let schema = batch.schema();
    let index = |column: &str| {
        schema.index_of(column).map_err(|_| {
            format!(
                "domain_from: public table `{}` has no column `{column}`",
                from.table
            )
        })
    };
    let values_at = index(&from.column)?;
    let mut filters = Vec::new();
    for (column, value) in &from.filter {
        let at = index(column)?;
        let wanted = domain_value(value, schema.field(at).data_type())
            .map_err(|reason| format!("domain_from: where {column} = {value}: {reason}"))?;
        filters.push((at, wanted));
    }
    let keep = |row: usize| {
        filters.iter().all(|(at, wanted)| {
            ScalarValue::try_from_array(batch.column(*at), row).is_ok_and(|v| &v == wanted)
        })
    };
    let values = distinct(batch, values_at, keep, DOMAIN_MAX)
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("domain_from selects more than {DOMAIN_MAX} values"))?;
    if values.is_empty() {
        return Err("domain_from selects no value".into());
    }
    values
        .into_iter()
        .map(|v| {
            v.cast_to(data_type).map_err(|e| {
                format!(
                    "domain_from: `{}.{}` values do not fit {data_type}: {e}",
                    from.table, from.column
                )
            })
        })
        .collect()
}

fn resolve_column(
    name: &str,
    data_type: &DataType,
    declared: &ColumnPolicy,
    is_unit: bool,
    public: &PublicTables,
) -> Result<DeclaredColumn> {
    let bad = |message: String| Error::Policy(format!("column `{name}`: {message}"));
    let numeric = data_type.is_numeric();
    let integer = data_type.is_integer();
    let identifier = declared.identifier || is_unit;
    if declared.domain.is_some() && declared.domain_from.is_some() {
        return Err(bad("declare domain or domain_from, not both".into()));
    }
    if identifier
        && (declared.domain.is_some()
            || declared.domain_from.is_some()
            || declared.lower.is_some()
            || declared.upper.is_some())
    {
        return Err(bad(
            "an identifier has no bounds or public domain: it is never aggregated or grouped"
                .into(),
        ));
    }
    if let Some(layer) = declared.encrypted {
        let binary = matches!(
            data_type,
            DataType::Binary | DataType::LargeBinary | DataType::BinaryView
        );
        if identifier
            || declared.domain.is_some()
            || declared.domain_from.is_some()
            || declared.candidates.is_some()
            || !binary
        {
            return Err(bad(format!(
                "an encrypted ({layer}) column holds ciphertexts (Binary, here {data_type}); it takes \
                 integer bounds and nothing else: no identifier, domain or candidates"
            )));
        }
        match (declared.lower, declared.upper) {
            (Some(lower), Some(upper)) if lower.fract() == 0.0 && upper.fract() == 0.0 && lower < upper => {}
            _ => return Err(bad("an encrypted column needs integer bounds lower < upper: they bound each patient's contribution and the decryption's search".into())),
        }
    }
    let bounds = match (declared.lower, declared.upper) {
        (None, None) => None,
        (Some(lower), Some(upper)) => {
            if !numeric && declared.encrypted.is_none() {
                return Err(bad(format!(
                    "bounds are for numeric columns, and this one is {data_type}"
                )));
            }
            if !(lower.is_finite() && upper.is_finite() && lower <= upper) {
                return Err(bad(format!(
                    "bounds must be finite with lower ≤ upper (got [{lower}, {upper}])"
                )));
            }
            Some(Bounds { lower, upper })
        }
        _ => return Err(bad("declare both lower and upper, or neither".into())),
    };
    let domain = match &declared.domain {
        Some(values) => {
            if values.is_empty() {
                return Err(bad("an empty domain cannot be grouped by".into()));
            }
            if values.len() > DOMAIN_MAX {
                return Err(bad(format!(
                    "a public domain may list at most {DOMAIN_MAX} values"
                )));
            }
            let mut typed = Vec::with_capacity(values.len());
            for value in values {
                typed.push(domain_value(value, data_type).map_err(|reason| {
                    bad(format!(
                        "domain value {value} does not fit type {data_type}: {reason}"
                    ))
                })?);
            }
            Some(typed)
        }
        None if declared.domain_from.is_some() => {
            let from = declared.domain_from.as_ref().expect("checked");
            Some(domain_from(from, data_type, public).map_err(bad)?)
        }
        None => match bounds {
            Some(Bounds { lower, upper })
                if integer && upper - lower < IMPLICIT_DOMAIN_MAX as f64 =>
            {
                let values = (lower.ceil() as i64..=upper.floor() as i64)
                    .map(|i| ScalarValue::Int64(Some(i)).cast_to(data_type))
                    .collect::<datafusion::common::Result<Vec<_>>>()
                    .map_err(|error| bad(error.to_string()))?;
                Some(values)
            }
            _ => None,
        },
    };
    let precision = match declared.precision {
        Some(p) if p > PRECISION_MAX => {
            return Err(bad(format!(
                "precision is at most {PRECISION_MAX} decimals"
            )));
        }
        Some(_) if !numeric => return Err(bad("precision is for numeric columns".into())),
        Some(p) => p,
        None if integer => 0,
        None => DEFAULT_PRECISION,
    };
    let candidates = match &declared.candidates {
        Some(candidates) => {
            let Some(bounds) = bounds else {
                return Err(bad("quantile candidates need bounds".into()));
            };
            if candidates.is_empty()
                || candidates.windows(2).any(|w| w[0] >= w[1])
                || candidates
                    .iter()
                    .any(|c| !c.is_finite() || *c < bounds.lower || *c > bounds.upper)
            {
                return Err(bad(
                    "quantile candidates must be strictly increasing and within the bounds".into(),
                ));
            }
            Some(candidates.clone())
        }
        None => None,
    };
    Ok(DeclaredColumn {
        data_type: data_type.clone(),
        identifier,
        bounds,
        domain,
        precision,
        candidates,
        encrypted: declared.encrypted,
    })
}

fn domain_value(
    value: &DomainValue,
    data_type: &DataType,
) -> std::result::Result<ScalarValue, String> {
    let numeric = matches!(value, DomainValue::Integer(_) | DomainValue::Real(_));
    if numeric != data_type.is_numeric() {
        return Err(if numeric {
            "write it as text (quoted)".into()
        } else {
            "write it as a number (unquoted)".into()
        });
    }
    let scalar = match value {
        DomainValue::Boolean(b) => ScalarValue::Boolean(Some(*b)),
        DomainValue::Integer(i) => ScalarValue::Int64(Some(*i)),
        DomainValue::Real(x) => ScalarValue::Float64(Some(*x)),
        DomainValue::Text(s) => {
            return ScalarValue::try_from_string(s.clone(), data_type)
                .map_err(|error| error.to_string());
        }
    };
    let cast = scalar
        .cast_to(data_type)
        .map_err(|error| error.to_string())?;
    // A lossy cast (2.5 into an integer column) would silently change the domain.
    let back = cast
        .cast_to(&scalar.data_type())
        .map_err(|error| error.to_string())?;
    if back != scalar {
        return Err("it changes when converted".into());
    }
    Ok(cast)
}
