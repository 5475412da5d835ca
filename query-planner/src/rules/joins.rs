//! Joins and unions must keep every row attributable to one patient.
//!
//! Two private relations may only be joined on their privacy unit
//! (`a.patient_id = b.patient_id`, possibly with more conditions): then a
//! patient's joined rows come from that patient's rows alone, and the
//! bounding above still sees every row of a patient under one unit. A join
//! on anything else (codes, dates) pairs rows of different patients, and a
//! private relation joined to a published one (an aggregate subquery) would
//! select patients by other patients' data. A public relation (`VALUES`)
//! may be joined to a private one, keeping the private side's rows.

use datafusion::common::{Column, DFSchema};
use datafusion::logical_expr::{Expr, Join, JoinType};

use crate::error::{Error, Result, Rule};
use crate::facts::{ColumnFacts, strip_alias};
use crate::kinds::{Kind, Typed, joined_unit};
use crate::policy::Scope;

/// The typing of `join` over its typed inputs.
pub(crate) fn check(join: &Join, left: &Typed, right: &Typed, scope: &Scope) -> Result<Typed> {
    let left_width = join.left.schema().fields().len();
    let fragment = || describe(join);
    let columns = |left_side: bool, right_side: bool| -> Vec<ColumnFacts> {
        let mut columns = Vec::new();
        if left_side {
            columns.extend(left.columns.iter().cloned());
        }
        if right_side {
            columns.extend(right.columns.iter().cloned());
        }
        if matches!(join.join_type, JoinType::LeftMark | JoinType::RightMark) {
            columns.push(ColumnFacts::default());
        }
        columns
    };
    let (keeps_left, keeps_right) = match join.join_type {
        JoinType::LeftSemi | JoinType::LeftAnti | JoinType::LeftMark => (true, false),
        JoinType::RightSemi | JoinType::RightAnti | JoinType::RightMark => (false, true),
        _ => (true, true),
    };
    let sampled = left.sampled.clone().or(right.sampled.clone());
    match (&left.kind, &right.kind) {
        (
            Kind::Private {
                unit: left_unit,
                rows_per_unit: left_rows,
            },
            Kind::Private {
                unit: right_unit,
                rows_per_unit: right_rows,
            },
        ) => {
            let left_column = Column::from(join.left.schema().qualified_field(*left_unit));
            let right_column = Column::from(join.right.schema().qualified_field(*right_unit));
            // Any unchanged copy of a study table's privacy unit holds the
            // row's patient (or NULL after an outer join): joining on one
            // (`vo.person_id = op.person_id` after `p JOIN vo ON p.person_id
            // = vo.person_id`) still pairs a patient's rows only.
            let left_units = unit_copies(join.left.schema(), left, scope);
            let right_units = unit_copies(join.right.schema(), right, scope);
            let on_unit = join.on.iter().any(|(l, r)| {
                let (l, r) = (strip_alias(l), strip_alias(r));
                let either = |a: &Expr, b: &Expr| {
                    matches!(a, Expr::Column(c) if left_units.contains(c))
                        && matches!(b, Expr::Column(c) if right_units.contains(c))
                };
                either(l, r) || either(r, l)
            });
            if !on_unit {
                return Err(Error::refused(
                    Rule::JoinNotOnUnit,
                    fragment(),
                    format!(
                        "joined rows must belong to the same patient: add `ON {left_column} = \
                         {right_column}` (a join on other columns pairs different patients' rows)"
                    ),
                ));
            }
            let unit = joined_unit(join.join_type, *left_unit, *right_unit, left_width)
                .ok_or_else(|| {
                    Error::refused(
                        Rule::UnsupportedSql,
                        fragment(),
                        "FULL JOIN between study tables is not supported; use LEFT JOIN from \
                         the table whose patients you count",
                    )
                })?;
            let rows_per_unit = match join.join_type {
                JoinType::LeftSemi | JoinType::LeftAnti | JoinType::LeftMark => *left_rows,
                JoinType::RightSemi | JoinType::RightAnti | JoinType::RightMark => *right_rows,
                _ => left_rows
                    .zip(*right_rows)
                    .and_then(|(a, b)| a.checked_mul(b)),
            };
            Ok(Typed {
                kind: Kind::Private {
                    unit,
                    rows_per_unit,
                },
                columns: columns(keeps_left, keeps_right),
                sampled,
                per_unit: None,
            })
        }
        (Kind::Private { unit, .. }, Kind::Public)
            if matches!(
                join.join_type,
                JoinType::Inner | JoinType::Left | JoinType::LeftSemi | JoinType::LeftAnti
            ) =>
        {
            Ok(Typed {
                kind: Kind::Private {
                    unit: *unit,
                    rows_per_unit: None,
                },
                columns: columns(keeps_left, keeps_right),
                sampled,
                per_unit: None,
            })
        }
        (Kind::Public, Kind::Private { unit, .. })
            if matches!(
                join.join_type,
                JoinType::Inner | JoinType::Right | JoinType::RightSemi | JoinType::RightAnti
            ) =>
        {
            let unit = if keeps_left { left_width + unit } else { *unit };
            Ok(Typed {
                kind: Kind::Private {
                    unit,
                    rows_per_unit: None,
                },
                columns: columns(keeps_left, keeps_right),
                sampled,
                per_unit: None,
            })
        }
        (Kind::Public, Kind::Public) => Ok(Typed {
            kind: Kind::Public,
            columns: columns(keeps_left, keeps_right),
            sampled: None,
            per_unit: None,
        }),
        (Kind::Published | Kind::Public, Kind::Published | Kind::Public) => Ok(Typed {
            kind: Kind::Published,
            columns: columns(keeps_left, keeps_right),
            sampled: None,
            per_unit: None,
        }),
        (Kind::Private { .. }, Kind::Published) | (Kind::Published, Kind::Private { .. }) => {
            Err(Error::refused(
                Rule::JoinNotOnUnit,
                fragment(),
                "patients' rows cannot be filtered or joined by an aggregate over other \
                 patients (a subquery such as `x > (SELECT AVG(x) ...)`); use a constant",
            ))
        }
        _ => Err(Error::refused(
            Rule::JoinNotOnUnit,
            fragment(),
            "this join would keep rows outside any patient, or drop the privacy unit; \
             join study tables to each other on the privacy unit",
        )),
    }
}

/// The typing of a UNION over its typed inputs.
pub(crate) fn union(inputs: &[Typed]) -> Result<Typed> {
    let width = inputs.first().map_or(0, |t| t.columns.len());
    let merged_columns = || {
        (0..width)
            .map(|i| {
                let mut facts = ColumnFacts::default();
                for input in inputs {
                    facts
                        .lineage
                        .extend(input.columns[i].lineage.iter().cloned());
                }
                facts
            })
            .collect::<Vec<_>>()
    };
    if inputs.iter().all(|t| t.kind == Kind::Public) {
        return Ok(Typed {
            kind: Kind::Public,
            columns: merged_columns(),
            sampled: None,
            per_unit: None,
        });
    }
    if inputs.iter().all(|t| !t.is_private()) {
        return Ok(Typed {
            kind: Kind::Published,
            columns: merged_columns(),
            sampled: None,
            per_unit: None,
        });
    }
    let units: Vec<Option<(usize, Option<u64>)>> = inputs
        .iter()
        .map(|t| match t.kind {
            Kind::Private {
                unit,
                rows_per_unit,
            } => Some((unit, rows_per_unit)),
            _ => None,
        })
        .collect();
    let first = units[0];
    match first {
        Some((unit, _)) if units.iter().all(|u| u.map(|(i, _)| i) == Some(unit)) => {
            let rows_per_unit = units.iter().try_fold(0u64, |total, u| {
                u.and_then(|(_, rows)| rows).map(|r| total + r)
            });
            let mut columns = merged_columns();
            // Keep the unit's copy: every branch's unit column is a unit.
            columns[unit].copy_of = inputs[0].columns[unit].copy_of.clone();
            Ok(Typed {
                kind: Kind::Private {
                    unit,
                    rows_per_unit,
                },
                columns,
                sampled: inputs.iter().find_map(|t| t.sampled.clone()),
                per_unit: None,
            })
        }
        _ => Err(Error::refused(
            Rule::UnsupportedSql,
            "`UNION`",
            "every branch of a UNION over patients' rows must select the privacy unit in the \
             same position (or aggregate each branch)",
        )),
    }
}

/// The columns of a private input that are unchanged copies of a study
/// table's privacy unit column.
fn unit_copies(schema: &DFSchema, typed: &Typed, scope: &Scope) -> Vec<Column> {
    typed
        .columns
        .iter()
        .enumerate()
        .filter(|(_, facts)| {
            facts.copy_of.as_ref().is_some_and(|source| {
                source.column == scope.unit
                    && scope.tables.get(&source.table).is_some_and(|t| !t.public)
            })
        })
        .map(|(index, _)| Column::from(schema.qualified_field(index)))
        .collect()
}

fn describe(join: &Join) -> String {
    let on: Vec<String> = join.on.iter().map(|(l, r)| format!("{l} = {r}")).collect();
    let mut text = format!("{} JOIN", join.join_type);
    if !on.is_empty() {
        text.push_str(&format!(" ON {}", on.join(" AND ")));
    }
    if let Some(filter) = &join.filter {
        text.push_str(&format!(
            " {} {filter}",
            if on.is_empty() { "ON" } else { "AND" }
        ));
    }
    format!("`{text}`")
}
