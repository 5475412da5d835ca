//! Rules checked on the SQL syntax tree, before DataFusion plans anything:
//! the statement is one `SELECT`; every table it reads is a study table
//! (or a CTE it defines); every function is on the allow-list; no window
//! functions, table functions or `TABLESAMPLE`. Errors point at the
//! offending fragment with its line and column.

use std::collections::BTreeSet;
use std::ops::ControlFlow;

use datafusion::sql::sqlparser::ast::{
    Expr, Function, ObjectName, Query, Select, Spanned, Statement, TableFactor, Visitor,
};
use datafusion::sql::sqlparser::tokenizer::Span;

use crate::error::{Error, Result, Rule};
use crate::functions::is_allowed_function;
use crate::policy::Scope;

/// Schemas that hold system tables in DataFusion and other engines.
const SYSTEM_SCHEMAS: &[&str] = &["information_schema", "pg_catalog", "sys", "mysql"];

/// Checks a parsed statement against the syntactic rules.
pub(crate) fn check(statement: &Statement, scope: &Scope) -> Result<()> {
    let Statement::Query(_) = statement else {
        return Err(Error::refused(
            Rule::UnsupportedSql,
            located(&first_words(&statement.to_string()), statement.span()),
            "only SELECT queries can be asked of a study",
        ));
    };
    let mut visitor = SyntaxRules {
        scope,
        ctes: BTreeSet::new(),
    };
    match super::walk::walk(statement, &mut visitor) {
        ControlFlow::Break(error) => Err(error),
        ControlFlow::Continue(()) => Ok(()),
    }
}

struct SyntaxRules<'a> {
    scope: &'a Scope,
    /// Names defined by WITH clauses seen so far (CTE references are not tables).
    ctes: BTreeSet<String>,
}

impl Visitor for SyntaxRules<'_> {
    type Break = Error;

    fn pre_visit_query(&mut self, query: &Query) -> ControlFlow<Error> {
        if let Some(with) = &query.with {
            if with.recursive {
                return ControlFlow::Break(Error::refused(
                    Rule::UnsupportedSql,
                    located("WITH RECURSIVE", with.span()),
                    "recursive queries are not supported in study queries",
                ));
            }
            for cte in &with.cte_tables {
                self.ctes.insert(cte.alias.name.value.to_lowercase());
            }
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_select(&mut self, select: &Select) -> ControlFlow<Error> {
        if !select.named_window.is_empty() || select.qualify.is_some() {
            return ControlFlow::Break(Error::refused(
                Rule::WindowFunction,
                located("WINDOW / QUALIFY", select.span()),
                "window functions compute over other patients' rows and are not allowed",
            ));
        }
        if select.into.is_some() {
            return ControlFlow::Break(Error::refused(
                Rule::UnsupportedSql,
                located("SELECT ... INTO", select.span()),
                "study queries cannot create tables",
            ));
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_table_factor(&mut self, factor: &TableFactor) -> ControlFlow<Error> {
        let result = match factor {
            TableFactor::Table {
                name, args, sample, ..
            } => {
                if args.is_some() {
                    Err(Error::refused(
                        Rule::Scope,
                        located(&factor.to_string(), factor.span()),
                        "table functions are not available to study queries",
                    ))
                } else if sample.is_some() {
                    Err(Error::refused(
                        Rule::SamplingBeforeAggregation,
                        located(&factor.to_string(), factor.span()),
                        "TABLESAMPLE samples patients' rows before aggregation, which the \
                         privacy accounting does not cover; aggregate the whole table",
                    ))
                } else {
                    self.check_table(name)
                }
            }
            TableFactor::Derived { .. } | TableFactor::NestedJoin { .. } => Ok(()),
            other => Err(Error::refused(
                Rule::UnsupportedSql,
                located(&other.to_string(), other.span()),
                "only study tables, subqueries and joins may appear in FROM",
            )),
        };
        match result {
            Ok(()) => ControlFlow::Continue(()),
            Err(error) => ControlFlow::Break(error),
        }
    }

    fn pre_visit_expr(&mut self, expr: &Expr) -> ControlFlow<Error> {
        match expr {
            Expr::Function(function) => match check_function(function) {
                Ok(()) => ControlFlow::Continue(()),
                Err(error) => ControlFlow::Break(error),
            },
            _ => ControlFlow::Continue(()),
        }
    }
}

impl SyntaxRules<'_> {
    fn check_table(&self, name: &ObjectName) -> Result<()> {
        let parts: Vec<String> = name
            .0
            .iter()
            .filter_map(|part| part.as_ident().map(|ident| ident.value.clone()))
            .collect();
        let fragment = || located(&name.to_string(), name.span());
        let tables = || {
            self.scope
                .tables
                .keys()
                .map(String::as_str)
                .collect::<Vec<_>>()
                .join(", ")
        };
        if parts.len() != name.0.len() {
            return Err(Error::refused(
                Rule::Scope,
                fragment(),
                format!("not a table name; the study's tables are: {}", tables()),
            ));
        }
        if let [schema, ..] = parts.as_slice()
            && parts.len() > 1
            && SYSTEM_SCHEMAS.contains(&schema.to_lowercase().as_str())
        {
            return Err(Error::refused(
                Rule::Scope,
                fragment(),
                "system tables are not available to study queries",
            ));
        }
        match parts.as_slice() {
            [table] if self.ctes.contains(&table.to_lowercase()) => Ok(()),
            [table] if self.scope.tables.contains_key(table) => Ok(()),
            [table] if self.scope.tables.contains_key(&table.to_lowercase()) => Ok(()),
            _ => Err(Error::refused(
                Rule::Scope,
                fragment(),
                format!("not a table of this study; its tables are: {}", tables()),
            )),
        }
    }
}

fn check_function(function: &Function) -> Result<()> {
    let fragment = || located(&function.to_string(), function.span());
    if function.over.is_some() {
        return Err(Error::refused(
            Rule::WindowFunction,
            fragment(),
            "window functions compute over other patients' rows and are not allowed",
        ));
    }
    let name = match function.name.0.as_slice() {
        [part] => part.as_ident().map(|ident| ident.value.to_lowercase()),
        _ => None,
    };
    match name {
        Some(name) if is_allowed_function(&name) => Ok(()),
        _ => Err(Error::refused(
            Rule::Function,
            fragment(),
            format!(
                "`{}` is not an allowed function (user-defined functions, random numbers, \
                 hashes and system functions are refused); see the README for the list",
                function.name
            ),
        )),
    }
}

/// `fragment` with its position, when the parser recorded one.
pub(crate) fn located(fragment: &str, span: Span) -> String {
    let fragment = shorten(fragment);
    if span.start.line == 0 {
        format!("`{fragment}`")
    } else {
        format!(
            "`{fragment}` (line {}, column {})",
            span.start.line, span.start.column
        )
    }
}

fn first_words(sql: &str) -> String {
    sql.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
}

/// Long fragments are cut to keep messages readable.
pub(crate) fn shorten(text: &str) -> String {
    const MAX: usize = 120;
    if text.chars().count() <= MAX {
        text.to_string()
    } else {
        let cut: String = text.chars().take(MAX).collect();
        format!("{cut}…")
    }
}
