//! The per-row bounds that calibrate the noise are checked against the
//! very expressions they bound, evaluated on extreme inputs.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, Float64Array, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Decimal128Type, Field, Schema};
use datafusion::common::{Column, DFSchema};
use datafusion::functions_aggregate::expr_fn::{avg, count, stddev, sum, var_pop};
use datafusion::logical_expr::col;
use datafusion::logical_expr::execution_props::ExecutionProps;
use datafusion::logical_expr::physical_planning_context::PhysicalPlanningContext;
use datafusion::physical_expr::create_physical_expr;

use super::*;
use crate::kinds::Kind;
use crate::policy::StudyPolicy;

fn check(data_type: DataType, lower: f64, upper: f64, precision: Option<u32>) {
    let arrow_schema = Arc::new(Schema::new(vec![
        Field::new("x", data_type.clone(), true),
        Field::new("patient_id", DataType::Utf8, true),
    ]));
    let schema = DFSchema::try_from_qualified_schema("t", &arrow_schema).unwrap();
    let precision = precision.map_or(String::new(), |p| format!(", precision = {p}"));
    let policy = StudyPolicy::from_toml(&format!(
        "privacy_unit = \"patient_id\"\n[tables.t.columns]\npatient_id = {{}}\n\
             x = {{ lower = {lower:?}, upper = {upper:?}{precision} }}"
    ))
    .unwrap();
    let scope = policy
        .resolve(&HashMap::from([(
            "t".to_string(),
            Arc::clone(&arrow_schema),
        )]))
        .unwrap();
    let declared = scope.tables["t"].column("x").unwrap();
    let typed = Typed {
        kind: Kind::Private {
            unit: 1,
            rows_per_unit: None,
        },
        columns: vec![
            ColumnFacts {
                interval: Interval::from_bounds(declared.bounds),
                ..Default::default()
            },
            ColumnFacts::default(),
        ],
        sampled: None,
        per_unit: None,
    };
    // Extremes, just inside and outside the bounds, and non-values.
    let mut values = vec![
        lower,
        upper,
        lower - 1e6,
        upper + 1e6,
        (lower + upper) / 2.0,
        lower.next_up(),
        upper.next_down(),
        -1e300,
        1e300,
    ];
    let x: ArrayRef = if data_type.is_integer() {
        Arc::new(Int64Array::from_iter(
            values
                .iter()
                .map(|v| Some(v.clamp(-9e15, 9e15) as i64))
                .chain([None]),
        ))
    } else {
        values.extend([f64::NAN, f64::INFINITY, f64::NEG_INFINITY]);
        Arc::new(Float64Array::from_iter(
            values.iter().map(|&v| Some(v)).chain([None]),
        ))
    };
    let ids: ArrayRef = Arc::new(StringArray::from(vec!["p"; x.len()]));
    let batch = RecordBatch::try_new(Arc::clone(&arrow_schema), vec![x, ids]).unwrap();
    let unit = Column::new(Some("t"), "patient_id");
    for aggregate in [
        sum(col("t.x")),
        avg(col("t.x")),
        var_pop(col("t.x")),
        stddev(col("t.x")),
        count(col("t.x")),
    ] {
        let mapped = map(&aggregate, &schema, &typed, &scope, 3, &unit).unwrap();
        for (inner, influence) in mapped.inner {
            let Expr::AggregateFunction(function) = inner else {
                panic!("an aggregate")
            };
            let Influence::PerRow(bound) = influence else {
                panic!("per-row bounds here")
            };
            if function.func.name() != "sum" {
                assert_eq!(bound, 1, "{aggregate}: a count moves by one per row");
                continue;
            }
            let argument = create_physical_expr(
                &function.params.args[0],
                &schema,
                &ExecutionProps::new(),
                &PhysicalPlanningContext::default(),
            )
            .unwrap();
            let result = argument
                .evaluate(&batch)
                .unwrap()
                .into_array(batch.num_rows())
                .unwrap();
            let decimals = result.as_primitive::<Decimal128Type>();
            for row in 0..decimals.len() {
                if decimals.is_null(row) {
                    continue;
                }
                let units = decimals.value(row).unsigned_abs();
                assert!(
                    units <= bound,
                    "{aggregate} [{lower}, {upper}] ({data_type}): row {row} moves the sum by \
                         {units} units, its bound is {bound}"
                );
            }
        }
    }
}

#[test]
fn per_row_bounds_hold_for_the_exact_statistics_they_calibrate() {
    check(DataType::Float64, 4.0, 14.0, None);
    check(DataType::Float64, -3.5, 7.25, Some(2));
    check(DataType::Float64, 0.0, 1e9, None);
    check(DataType::Float64, 0.1, 0.3, Some(9));
    check(DataType::Int64, 0.0, 100.0, None);
    check(DataType::Int64, -7.0, 5.0, None);
}
