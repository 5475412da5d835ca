//! Resolving a policy against the tables' schemas: every declaration is
//! checked and typed before any query is planned.
//!
//! This is where a policy is refused (a column the table lacks, bounds on
//! text, a lossy domain value), naming the column and what to write instead,
//! and where implicit domains and default precisions are filled in.

use std::collections::{BTreeMap, HashMap};

use arrow::datatypes::{DataType, SchemaRef};
use datafusion::common::ScalarValue;

use super::file::{ColumnPolicy, DomainValue, Sampling, StudyPolicy};
use super::scope::{
    Bounds, DEFAULT_PRECISION, DOMAIN_MAX, DeclaredColumn, IMPLICIT_DOMAIN_MAX, PRECISION_MAX,
    Scope, ScopedTable,
};
use crate::error::{Error, Result};

impl StudyPolicy {
    /// Checks the policy against the tables' schemas and resolves what the
    /// planner needs: the approved columns of each table, typed domains,
    /// bounds and precisions.
    pub fn resolve(&self, schemas: &HashMap<String, SchemaRef>) -> Result<Scope> {
        let bad = |message: String| Error::Policy(message);
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
                )?;
                columns.push((column.clone(), facts));
            }
            tables.insert(
                name.clone(),
                ScopedTable {
                    columns,
                    rows_per_unit: table.rows_per_unit,
                },
            );
        }
        Ok(Scope {
            unit: self.privacy_unit.clone(),
            tables,
        })
    }
}

fn resolve_column(
    name: &str,
    data_type: &DataType,
    declared: &ColumnPolicy,
    is_unit: bool,
) -> Result<DeclaredColumn> {
    let bad = |message: String| Error::Policy(format!("column `{name}`: {message}"));
    let numeric = data_type.is_numeric();
    let integer = data_type.is_integer();
    let identifier = declared.identifier || is_unit;
    if identifier
        && (declared.domain.is_some() || declared.lower.is_some() || declared.upper.is_some())
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
        if identifier || declared.domain.is_some() || declared.candidates.is_some() || !binary {
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
