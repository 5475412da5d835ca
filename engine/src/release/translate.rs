//! From a `cohort dp` request to what the planned path runs: the one
//! table (with a row-index unit when there is no `--unit`), its policy
//! (bounds, domain, candidates, bounding, deadline) and the SQL statement.

use super::*;

/// The policy, the query and the door of `request` over `batch`.
pub(super) fn planned(batch: &RecordBatch, request: &Request) -> Result<(Study, SqlQuery, Door)> {
    let (table, row) = table_for(batch, request)?;
    let unit = request.unit.clone().unwrap_or_else(|| row.clone());
    let q = quote;

    let mut columns = BTreeMap::from([
        (unit.clone(), ColumnPolicy::default()),
        (
            row.clone(),
            ColumnPolicy {
                identifier: true,
                ..ColumnPolicy::default()
            },
        ),
    ]);
    let mut max_groups = 1;
    let mut epsilon = None;
    let mut rho = None;
    let mut delta = None;
    match request.privacy {
        Privacy::Pure { epsilon: e } => epsilon = Some(Amount::from_f64_display(e)?),
        Privacy::Zcdp { rho: r } => rho = Some(Amount::from_f64_display(r)?),
    }
    let sql = match &request.statistic {
        Statistic::Count => format!("SELECT COUNT(*) FROM {}", q(TABLE)),
        Statistic::Sum {
            column,
            lower,
            upper,
        }
        | Statistic::Mean {
            column,
            lower,
            upper,
        } => {
            columns.insert(
                column.clone(),
                ColumnPolicy {
                    lower: Some(*lower),
                    upper: Some(*upper),
                    ..ColumnPolicy::default()
                },
            );
            let function = match request.statistic {
                Statistic::Sum { .. } => "SUM",
                _ => "AVG",
            };
            format!("SELECT {function}({}) FROM {}", q(column), q(TABLE))
        }
        Statistic::Histogram { column, domain } => {
            let mut values: Vec<DomainValue> = Vec::with_capacity(domain.len());
            for text in domain {
                let value = DomainValue::Text(text.clone());
                if !values.contains(&value) {
                    values.push(value);
                }
            }
            columns.insert(
                column.clone(),
                ColumnPolicy {
                    domain: Some(values),
                    ..ColumnPolicy::default()
                },
            );
            max_groups = request.max_rows;
            format!(
                "SELECT {c}, COUNT(*) FROM {t} GROUP BY {c}",
                c = q(column),
                t = q(TABLE)
            )
        }
        Statistic::Keys { column, delta: d } => {
            columns.insert(column.clone(), ColumnPolicy::default());
            max_groups = request.max_rows;
            delta = Some(Amount::from_f64_display(*d)?);
            format!(
                "SELECT {c}, COUNT(*) FROM {t} WHERE {c} IS NOT NULL GROUP BY {c}",
                c = q(column),
                t = q(TABLE)
            )
        }
        Statistic::Quantile {
            column,
            alpha,
            candidates,
        } => {
            // Bounds far outside every candidate: the values are not
            // clamped, so each candidate is scored on the values as they are.
            let (lower, upper) = (-f64::MAX / 4.0, f64::MAX / 4.0);
            columns.insert(
                column.clone(),
                ColumnPolicy {
                    lower: Some(lower),
                    upper: Some(upper),
                    candidates: Some(candidates.clone()),
                    ..ColumnPolicy::default()
                },
            );
            format!(
                "SELECT PERCENTILE_CONT({}, {alpha:?}) FROM {}",
                q(column),
                q(TABLE)
            )
        }
    };

    let bytes = u64::try_from(table.get_array_memory_size()).unwrap_or(u64::MAX);
    let policy = StudyPolicy {
        privacy_unit: unit.clone(),
        query: Default::default(),
        contribution: Contribution {
            max_rows: request.max_rows,
            max_groups,
            sampling: Sampling::FirstBy(vec![row]),
        },
        tables: BTreeMap::from([(
            TABLE.to_string(),
            TablePolicy {
                source: None,
                rows_per_unit: None,
                columns,
            },
        )]),
        execution: Execution {
            release: match request.deadline {
                Some(_) => ReleaseTiming::Deadline,
                None => ReleaseTiming::Immediate,
            },
            deadline_ms: request
                .deadline
                .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            per_patient_us: 0,
            memory_mb: MEMORY_BASE_MB
                .saturating_add(bytes.saturating_mul(8) >> 20)
                .min(1 << 20),
            population: None,
            ..Execution::default()
        },
        public: BTreeMap::new(),
        disclosure: None,
    };
    let provider = sources::batches(table.schema(), vec![table.clone()])?;
    let study = Study {
        policy,
        tables: [(TABLE.to_string(), provider)].into(),
        public: Default::default(),
    };
    let query = SqlQuery {
        sql,
        budget: request.budget.clone(),
        query_id: request.query_id.clone(),
        epsilon,
        rho,
        delta,
        ..SqlQuery::default()
    };
    let door = Door {
        remaining: Remaining::Options,
        check: request
            .unit
            .as_ref()
            .map(|unit| no_null_units(&table, unit)),
    };
    Ok((study, query, door))
}

/// Fails when a row's unit is null (a row of no one, which the bounding
/// could not account for): after the reservation, so the failure is
/// charged and says nothing of the data.
pub(super) fn no_null_units(table: &RecordBatch, unit: &str) -> DataCheck {
    let column = table.column_by_name(unit).cloned();
    let unit = unit.to_string();
    Box::new(move || match column {
        Some(column) if column.null_count() == 0 => Ok(()),
        _ => Err(Error::Invalid(format!(
            "the privacy unit column `{unit}` has a null value"
        ))),
    })
}

/// The table the planner is given: `batch` with the statistic's column
/// as `cohort dp` has always read it (text for a histogram or keys, whose
/// domain and keys are text; reals for the others, summed with 4 decimals
/// and scored against real candidates), and a row index column (first in
/// file order), whose name is returned: the unit of a table without one,
/// and the order in which a unit's rows are kept.
pub(super) fn table_for(batch: &RecordBatch, request: &Request) -> Result<(RecordBatch, String)> {
    let cast_to = match &request.statistic {
        Statistic::Count => None,
        Statistic::Histogram { column, .. } | Statistic::Keys { column, .. } => {
            Some((column, DataType::Utf8))
        }
        Statistic::Sum { column, .. }
        | Statistic::Mean { column, .. }
        | Statistic::Quantile { column, .. } => Some((column, DataType::Float64)),
    };
    let schema = batch.schema();
    let mut fields: Vec<Arc<Field>> = Vec::with_capacity(schema.fields().len() + 1);
    let mut columns = Vec::with_capacity(schema.fields().len() + 1);
    for (field, array) in schema.fields().iter().zip(batch.columns()) {
        match &cast_to {
            Some((name, to)) if field.name() == *name && field.data_type() != to => {
                fields.push(Arc::new(Field::new(field.name(), to.clone(), true)));
                columns.push(cast(array, to)?);
            }
            _ => {
                fields.push(Arc::clone(field));
                columns.push(Arc::clone(array));
            }
        }
    }
    let mut name = String::from("dp_row");
    while schema.column_with_name(&name).is_some() {
        name.insert(0, '_');
    }
    let rows = i64::try_from(batch.num_rows())
        .map_err(|_| Error::Invalid("the table has too many rows".into()))?;
    fields.push(Arc::new(Field::new(&name, DataType::Int64, false)));
    columns.push(Arc::new(Int64Array::from_iter_values(0..rows)));
    let schema = Schema::new_with_metadata(fields, schema.metadata().clone());
    Ok((RecordBatch::try_new(Arc::new(schema), columns)?, name))
}

/// `name` as a quoted SQL identifier.
pub(super) fn quote(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}
