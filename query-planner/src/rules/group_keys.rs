//! `GROUP BY` keys: never an identifier, and public where the policy
//! makes them so.
//!
//! A key that derives from the privacy unit or from a column declared an
//! identifier (however it is wrapped: `substr(patient_id, 1, 8)`, a CTE
//! alias) would release a row per patient or per record, and is refused.
//!
//! A key has a public domain when it is computed from one column with a
//! declared (or implicit integer) domain: the planner evaluates the key's
//! expression over that domain, so `sex`, `floor(age / 10) * 10` and
//! `CASE WHEN hba1c_band ...` all get their exact set of possible values
//! without looking at the data. Every value of the domain is then released
//! (empty groups included), which is what makes releasing the groups safe.
//! Other keys need DP key selection.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{Field, Schema};
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::common::{Column, DFSchema, ScalarValue};
use datafusion::logical_expr::Expr;
use datafusion::logical_expr::execution_props::ExecutionProps;
use datafusion::logical_expr::physical_planning_context::PhysicalPlanningContext;
use datafusion::logical_expr::utils::split_conjunction;
use datafusion::physical_expr::create_physical_expr;

use crate::error::{Error, Result, Rule};
use crate::facts;
use crate::kinds::Typed;
use crate::policy::{DOMAIN_MAX, Scope};

/// The possible values of a DP aggregate's keys.
pub(crate) enum KeyDomain {
    /// No keys.
    None,
    /// Every combination, in sorted order of each key.
    Public(Vec<Vec<ScalarValue>>),
    /// Unknown: the keys must be selected with DP.
    Private,
}

/// Checks the keys and derives their public domain where there is one.
pub(crate) fn check(
    keys: &[Expr],
    schema: &DFSchema,
    typed: &Typed,
    scope: &Scope,
    public_filters: &PublicFilters,
) -> Result<KeyDomain> {
    if keys.is_empty() {
        return Ok(KeyDomain::None);
    }
    let mut domains = Vec::with_capacity(keys.len());
    for key in keys {
        let facts = facts::of_expr(key, schema, &typed.columns);
        for source in &facts.lineage {
            let declared = scope
                .tables
                .get(&source.table)
                .and_then(|t| t.column(&source.column));
            if declared.is_some_and(|c| c.identifier) {
                let what = if source.column == scope.unit {
                    "the privacy unit"
                } else {
                    "a near-unique identifier"
                };
                return Err(Error::refused(
                    Rule::GroupByIdentifier,
                    format!("`GROUP BY {}`", facts::strip_alias(key)),
                    format!(
                        "the key derives from `{source}`, {what}; grouping by it would release \
                         one row per patient or record"
                    ),
                ));
            }
        }
        domains.push(domain_of(key, schema, typed, scope, public_filters)?);
    }
    let Some(domains) = domains.into_iter().collect::<Option<Vec<_>>>() else {
        return Ok(KeyDomain::Private);
    };
    let size = domains
        .iter()
        .try_fold(1usize, |total, d| total.checked_mul(d.len()));
    match size {
        Some(size) if size <= DOMAIN_MAX => Ok(KeyDomain::Public(cross(&domains))),
        _ => Ok(KeyDomain::Private),
    }
}

/// The values `key` can take, if it is computed from one column with a
/// public domain (or from none).
fn domain_of(
    key: &Expr,
    schema: &DFSchema,
    typed: &Typed,
    scope: &Scope,
    public_filters: &PublicFilters,
) -> Result<Option<Vec<ScalarValue>>> {
    let refs: Vec<_> = key.column_refs().into_iter().collect();
    let (field, values) = match refs.as_slice() {
        [] => (None, vec![ScalarValue::Null]),
        [column] => {
            let index = schema.index_of_column(column)?;
            let Some(source) = &typed.columns[index].copy_of else {
                return Ok(None);
            };
            let Some(domain) = scope
                .tables
                .get(&source.table)
                .and_then(|t| t.column(&source.column))
                .and_then(|c| c.domain.clone())
            else {
                return Ok(None);
            };
            let domain =
                narrowed(scope, &source.table, &source.column, public_filters).unwrap_or(domain);
            let (qualifier, field) = schema.qualified_field(index);
            (Some((qualifier.cloned(), field.clone())), domain)
        }
        _ => return Ok(None),
    };
    // Evaluate the key over the domain, on a one-column batch.
    let (schema, batch) = match field {
        Some((qualifier, field)) => {
            let field = Field::new(field.name(), field.data_type().clone(), true);
            let arrow_schema = Arc::new(Schema::new(vec![field]));
            let array = ScalarValue::iter_to_array(values)?;
            let batch = RecordBatch::try_new(Arc::clone(&arrow_schema), vec![array])?;
            let schema = match qualifier {
                Some(q) => DFSchema::try_from_qualified_schema(q, &arrow_schema)?,
                None => DFSchema::try_from(arrow_schema.as_ref().clone())?,
            };
            (schema, batch)
        }
        None => {
            let arrow_schema = Arc::new(Schema::empty());
            let batch = RecordBatch::try_new_with_options(
                arrow_schema,
                vec![],
                &arrow::array::RecordBatchOptions::new().with_row_count(Some(1)),
            )?;
            (DFSchema::empty(), batch)
        }
    };
    let physical = create_physical_expr(
        facts::strip_alias(key),
        &schema,
        &ExecutionProps::new(),
        &PhysicalPlanningContext::default(),
    )?;
    let result = physical.evaluate(&batch)?.into_array(batch.num_rows())?;
    let mut distinct = BTreeSet::new();
    let mut ordered = Vec::new();
    for row in 0..result.len() {
        let value = ScalarValue::try_from_array(&result, row)?;
        if !value.is_null() && distinct.insert(value.to_string()) {
            ordered.push(value);
        }
    }
    ordered.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    Ok(Some(ordered))
}

/// Conditions on public tables' columns, by table, over the table's own
/// column names.
pub(crate) type PublicFilters = BTreeMap<String, Vec<Expr>>;

/// Notes each conjunct of `predicate` that reads only columns copied from
/// one public table, rewritten over that table's column names. A public
/// key's domain is then the key's values on the public rows that meet them
/// (`WHERE c.concept_class_id = 'ICD10 Chapter'` leaves the chapters).
/// The domain stays a function of public rows and the query's text, so a
/// condition noted wrongly can only drop groups, never release one that
/// depends on a patient: rows whose key is outside the domain are removed
/// before the bounding.
pub(crate) fn note_public_filter(
    predicate: &Expr,
    schema: &DFSchema,
    typed: &Typed,
    scope: &Scope,
    filters: &mut PublicFilters,
) {
    for conjunct in split_conjunction(predicate) {
        let mut table: Option<String> = None;
        let mut renamed = Vec::new();
        let mut usable = true;
        for column in conjunct.column_refs() {
            let source = schema
                .index_of_column(column)
                .ok()
                .and_then(|i| typed.columns.get(i))
                .and_then(|facts| facts.copy_of.clone());
            match source {
                Some(source)
                    if scope.tables.get(&source.table).is_some_and(|t| t.public)
                        && table.as_ref().is_none_or(|t| *t == source.table) =>
                {
                    table = Some(source.table.clone());
                    renamed.push((column.clone(), Column::new_unqualified(source.column)));
                }
                _ => usable = false,
            }
        }
        let Some(table) = table.filter(|_| usable) else {
            continue;
        };
        let rewritten = conjunct.clone().transform(|e| {
            Ok(match e {
                Expr::Column(c) => match renamed.iter().find(|(from, _)| *from == c) {
                    Some((_, to)) => Transformed::yes(Expr::Column(to.clone())),
                    None => Transformed::no(Expr::Column(c)),
                },
                other => Transformed::no(other),
            })
        });
        if let Ok(rewritten) = rewritten {
            filters.entry(table).or_default().push(rewritten.data);
        }
    }
}

/// The distinct values of public `table.column` on the rows meeting every
/// noted condition on that table; `None` when none was noted or one cannot
/// be evaluated (the column's whole domain is used then).
fn narrowed(
    scope: &Scope,
    table: &str,
    column: &str,
    filters: &PublicFilters,
) -> Option<Vec<ScalarValue>> {
    let conditions = filters.get(table).filter(|c| !c.is_empty())?;
    let batch = scope.public_rows.get(table)?;
    let schema = DFSchema::try_from(batch.schema().as_ref().clone()).ok()?;
    let mut keep = vec![true; batch.num_rows()];
    for condition in conditions {
        let physical = create_physical_expr(
            condition,
            &schema,
            &ExecutionProps::new(),
            &PhysicalPlanningContext::default(),
        )
        .ok()?;
        let result = physical
            .evaluate(batch)
            .ok()?
            .into_array(batch.num_rows())
            .ok()?;
        let mask = result.as_boolean_opt()?;
        for (row, kept) in keep.iter_mut().enumerate() {
            *kept &= mask.is_valid(row) && mask.value(row);
        }
    }
    let values = batch.column(batch.schema().index_of(column).ok()?);
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for (row, kept) in keep.iter().enumerate() {
        if *kept && values.is_valid(row) {
            let value = ScalarValue::try_from_array(values, row).ok()?;
            if seen.insert(value.to_string()) {
                out.push(value);
            }
        }
    }
    out.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    Some(out)
}

/// All combinations of the domains, the first key varying slowest.
fn cross(domains: &[Vec<ScalarValue>]) -> Vec<Vec<ScalarValue>> {
    domains.iter().fold(vec![vec![]], |combos, domain| {
        combos
            .iter()
            .flat_map(|combo| {
                domain.iter().map(move |value| {
                    let mut next = combo.clone();
                    next.push(value.clone());
                    next
                })
            })
            .collect()
    })
}
