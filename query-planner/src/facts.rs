//! What the planner knows of each column of a relation: which study
//! columns its values come from (lineage) and what bounds they have.
//!
//! Lineage is how identifiers are recognised however a query disguises
//! them (`GROUP BY substr(p.patient_id, 1, 8)` through a CTE alias still
//! derives from `patients.patient_id`). Bounds are propagated through
//! expressions by interval arithmetic, so `AVG(systolic - diastolic)` or a
//! per-patient `LEAST(COUNT(*), 10)` has bounds the planner can clamp to.

use std::collections::BTreeSet;
use std::fmt;

use datafusion::common::{DFSchema, ScalarValue};
use datafusion::logical_expr::{Expr, Operator};

use crate::policy::Bounds;

/// A column of a study table.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct SourceColumn {
    /// The study table.
    pub table: String,
    /// The column.
    pub column: String,
}

impl fmt::Display for SourceColumn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.table, self.column)
    }
}

/// What is known of one column of a relation.
#[derive(Clone, Debug, Default)]
pub(crate) struct ColumnFacts {
    /// The study columns its values are computed from.
    pub lineage: BTreeSet<SourceColumn>,
    /// The study column it is an unchanged copy of (through aliases,
    /// subqueries and joins).
    pub copy_of: Option<SourceColumn>,
    /// What is known of its values' range (possibly one-sided).
    pub interval: Interval,
}

impl ColumnFacts {
    /// Both bounds, when both are known.
    pub fn bounds(&self) -> Option<Bounds> {
        self.interval.bounds()
    }
}

/// An interval that may be open on either side.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Interval {
    pub lower: Option<f64>,
    pub upper: Option<f64>,
}

impl Default for Interval {
    fn default() -> Self {
        Interval::UNBOUNDED
    }
}

impl Interval {
    pub(crate) const UNBOUNDED: Interval = Interval {
        lower: None,
        upper: None,
    };

    fn point(x: f64) -> Interval {
        if x.is_finite() {
            Interval {
                lower: Some(x),
                upper: Some(x),
            }
        } else {
            Interval::UNBOUNDED
        }
    }

    pub(crate) fn from_bounds(bounds: Option<Bounds>) -> Interval {
        match bounds {
            Some(b) => Interval {
                lower: Some(b.lower),
                upper: Some(b.upper),
            },
            None => Interval::UNBOUNDED,
        }
    }

    pub(crate) fn bounds(self) -> Option<Bounds> {
        match (self.lower, self.upper) {
            (Some(lower), Some(upper))
                if lower.is_finite() && upper.is_finite() && lower <= upper =>
            {
                Some(Bounds { lower, upper })
            }
            _ => None,
        }
    }

    fn union(self, other: Interval) -> Interval {
        let both = |a: Option<f64>, b: Option<f64>, pick: fn(f64, f64) -> f64| match (a, b) {
            (Some(a), Some(b)) => Some(pick(a, b)),
            _ => None,
        };
        Interval {
            lower: both(self.lower, other.lower, f64::min),
            upper: both(self.upper, other.upper, f64::max),
        }
    }

    fn add(self, other: Interval) -> Interval {
        Interval {
            lower: self.lower.zip(other.lower).map(|(a, b)| a + b),
            upper: self.upper.zip(other.upper).map(|(a, b)| a + b),
        }
    }

    fn negate(self) -> Interval {
        Interval {
            lower: self.upper.map(|x| -x),
            upper: self.lower.map(|x| -x),
        }
    }

    fn multiply(self, other: Interval) -> Interval {
        match (self.bounds(), other.bounds()) {
            (Some(a), Some(b)) => {
                let products = [
                    a.lower * b.lower,
                    a.lower * b.upper,
                    a.upper * b.lower,
                    a.upper * b.upper,
                ];
                Interval {
                    lower: products.iter().copied().reduce(f64::min),
                    upper: products.iter().copied().reduce(f64::max),
                }
            }
            _ => Interval::UNBOUNDED,
        }
    }

    fn divide(self, other: Interval) -> Interval {
        match other.bounds() {
            Some(b) if b.lower > 0.0 || b.upper < 0.0 => self.multiply(Interval {
                lower: Some(1.0 / b.upper),
                upper: Some(1.0 / b.lower),
            }),
            _ => Interval::UNBOUNDED,
        }
    }

    /// `GREATEST(a, b)`: at least the larger lower bound.
    fn greatest(self, other: Interval) -> Interval {
        Interval {
            lower: match (self.lower, other.lower) {
                (Some(a), Some(b)) => Some(a.max(b)),
                (a, b) => a.or(b),
            },
            upper: self.upper.zip(other.upper).map(|(a, b)| a.max(b)),
        }
    }

    /// `LEAST(a, b)`: at most the smaller upper bound.
    fn least(self, other: Interval) -> Interval {
        self.negate().greatest(other.negate()).negate()
    }

    fn round_outwards(self) -> Interval {
        Interval {
            lower: self.lower.map(f64::floor),
            upper: self.upper.map(f64::ceil),
        }
    }

    fn abs(self) -> Interval {
        match (self.lower, self.upper) {
            (Some(l), Some(_)) if l >= 0.0 => self,
            (Some(l), Some(u)) if u <= 0.0 => Interval {
                lower: Some(-u),
                upper: Some(-l),
            },
            (Some(l), Some(u)) => Interval {
                lower: Some(0.0),
                upper: Some(l.abs().max(u.abs())),
            },
            _ => Interval {
                lower: Some(0.0),
                upper: None,
            },
        }
    }
}

/// Facts of `expr` evaluated over a relation with `schema` and `columns`.
pub(crate) fn of_expr(expr: &Expr, schema: &DFSchema, columns: &[ColumnFacts]) -> ColumnFacts {
    let mut lineage = BTreeSet::new();
    for column in expr.column_refs() {
        if let Ok(index) = schema.index_of_column(column) {
            lineage.extend(columns[index].lineage.iter().cloned());
        }
    }
    let copy_of = match strip_alias(expr) {
        Expr::Column(column) => schema
            .index_of_column(column)
            .ok()
            .and_then(|index| columns[index].copy_of.clone()),
        _ => None,
    };
    ColumnFacts {
        lineage,
        copy_of,
        interval: interval(expr, schema, columns),
    }
}

/// `expr` without its aliases.
pub(crate) fn strip_alias(expr: &Expr) -> &Expr {
    match expr {
        Expr::Alias(alias) => strip_alias(&alias.expr),
        other => other,
    }
}

fn interval(expr: &Expr, schema: &DFSchema, columns: &[ColumnFacts]) -> Interval {
    let of = |e: &Expr| interval(e, schema, columns);
    match expr {
        Expr::Alias(alias) => of(&alias.expr),
        Expr::Column(column) => match schema.index_of_column(column) {
            Ok(index) => columns[index].interval,
            Err(_) => Interval::UNBOUNDED,
        },
        Expr::Literal(value, _) => scalar_f64(value).map_or(Interval::UNBOUNDED, Interval::point),
        Expr::Negative(inner) => of(inner).negate(),
        Expr::Cast(cast) if cast.field.data_type().is_numeric() => {
            let inner = of(&cast.expr);
            if cast.field.data_type().is_integer() {
                inner.round_outwards()
            } else {
                inner
            }
        }
        Expr::TryCast(cast) if cast.field.data_type().is_numeric() => {
            let inner = of(&cast.expr);
            if cast.field.data_type().is_integer() {
                inner.round_outwards()
            } else {
                inner
            }
        }
        Expr::BinaryExpr(binary) => {
            let (left, right) = (of(&binary.left), of(&binary.right));
            match binary.op {
                Operator::Plus => left.add(right),
                Operator::Minus => left.add(right.negate()),
                Operator::Multiply => left.multiply(right),
                Operator::Divide => left.divide(right),
                _ => Interval::UNBOUNDED,
            }
        }
        Expr::Case(case) => {
            let mut branches = case.when_then_expr.iter().map(|(_, then)| of(then));
            let first = branches.next().unwrap_or(Interval::UNBOUNDED);
            let all = branches.fold(first, Interval::union);
            match &case.else_expr {
                Some(otherwise) => all.union(of(otherwise)),
                // No ELSE: unmatched rows are NULL, which aggregates skip.
                None => all,
            }
        }
        Expr::ScalarFunction(function) => {
            let args: Vec<Interval> = function.args.iter().map(of).collect();
            match (function.name(), args.as_slice()) {
                ("greatest", [first, rest @ ..]) => rest.iter().fold(*first, |a, b| a.greatest(*b)),
                ("least", [first, rest @ ..]) => rest.iter().fold(*first, |a, b| a.least(*b)),
                ("coalesce" | "nvl" | "ifnull", [first, rest @ ..]) => {
                    rest.iter().fold(*first, |a, b| a.union(*b))
                }
                ("abs", [x]) => x.abs(),
                ("floor" | "ceil" | "round" | "trunc", [x, ..]) => x.round_outwards(),
                _ => Interval::UNBOUNDED,
            }
        }
        _ => Interval::UNBOUNDED,
    }
}

/// A numeric literal as `f64`.
pub(crate) fn scalar_f64(value: &ScalarValue) -> Option<f64> {
    if value.is_null() || !value.data_type().is_numeric() {
        return None;
    }
    match value.cast_to(&arrow::datatypes::DataType::Float64).ok()? {
        ScalarValue::Float64(Some(x)) => Some(x),
        _ => None,
    }
}

#[cfg(test)]
mod tests {

    use arrow::datatypes::{DataType, Field, Schema};
    use datafusion::functions::core::expr_fn::coalesce;
    use datafusion::functions::math::expr_fn::abs;
    use datafusion::logical_expr::{case, col, lit};

    use super::*;

    fn setup() -> (DFSchema, Vec<ColumnFacts>) {
        let schema = Schema::new(vec![
            Field::new("x", DataType::Float64, true),
            Field::new("n", DataType::Int64, true),
            Field::new("free", DataType::Float64, true),
        ]);
        let schema = DFSchema::try_from_qualified_schema("t", &schema).unwrap();
        let source = |column: &str, bounds: Option<Bounds>| ColumnFacts {
            lineage: BTreeSet::from([SourceColumn {
                table: "t".into(),
                column: column.into(),
            }]),
            copy_of: Some(SourceColumn {
                table: "t".into(),
                column: column.into(),
            }),
            interval: Interval::from_bounds(bounds),
        };
        let columns = vec![
            source(
                "x",
                Some(Bounds {
                    lower: -2.0,
                    upper: 3.0,
                }),
            ),
            source(
                "n",
                Some(Bounds {
                    lower: 0.0,
                    upper: 10.0,
                }),
            ),
            source("free", None),
        ];
        (schema, columns)
    }

    fn bounds(expr: Expr) -> Option<(f64, f64)> {
        let (schema, columns) = setup();
        of_expr(&expr, &schema, &columns)
            .bounds()
            .map(|b| (b.lower, b.upper))
    }

    #[test]
    fn bounds_follow_arithmetic() {
        assert_eq!(bounds(col("t.x")), Some((-2.0, 3.0)));
        assert_eq!(bounds(col("t.x") + col("t.n")), Some((-2.0, 13.0)));
        assert_eq!(bounds(col("t.x") - col("t.n")), Some((-12.0, 3.0)));
        assert_eq!(bounds(col("t.x") * lit(2)), Some((-4.0, 6.0)));
        assert_eq!(bounds(col("t.x") * col("t.x")), Some((-6.0, 9.0)));
        assert_eq!(bounds(col("t.n") / lit(2.0)), Some((0.0, 5.0)));
        assert_eq!(bounds(col("t.n") / col("t.x")), None, "divisor spans zero");
        assert_eq!(bounds(-col("t.x")), Some((-3.0, 2.0)));
        assert_eq!(bounds(abs(col("t.x"))), Some((0.0, 3.0)));
        assert_eq!(bounds(col("t.free") + lit(1)), None);
    }

    #[test]
    fn clamping_in_sql_gives_bounds() {
        use datafusion::functions::core::expr_fn::{greatest, least};
        let clamped = least(vec![greatest(vec![col("t.free"), lit(0.0)]), lit(100.0)]);
        assert_eq!(bounds(clamped), Some((0.0, 100.0)));
        assert_eq!(
            bounds(greatest(vec![col("t.free"), lit(0.0)])),
            None,
            "open above"
        );
        let banded = case(col("t.n"))
            .when(lit(1), lit(10))
            .otherwise(lit(-5))
            .unwrap();
        assert_eq!(bounds(banded), Some((-5.0, 10.0)));
        assert_eq!(
            bounds(coalesce(vec![col("t.x"), lit(7)])),
            Some((-2.0, 7.0))
        );
    }

    #[test]
    fn lineage_and_copies_follow_columns() {
        let (schema, columns) = setup();
        let facts = of_expr(&(col("t.x") + col("t.n")), &schema, &columns);
        let names: Vec<String> = facts.lineage.iter().map(ToString::to_string).collect();
        assert_eq!(names, ["t.n", "t.x"]);
        assert!(facts.copy_of.is_none(), "a sum is not a copy");
        let facts = of_expr(&col("t.x").alias("y"), &schema, &columns);
        assert_eq!(facts.copy_of.unwrap().to_string(), "t.x");
    }
}
