//! OHDSI SQL as researchers write it: SqlRender's dialect (the SQL Server
//! flavour that ATLAS, Achilles and HADES emit) translated into the SQL the
//! planner reads (`cohort query --dialect ohdsi`). The translation is only
//! syntax; the result is planned and checked like any other query.
//!
//! What it does, in order:
//! - `{condition} ? {then} : {else}` blocks are resolved after parameter
//!   substitution (`==`, `!=`, `IN (...)`, `!`, `true` / `false`);
//! - `@parameter`s are substituted: schema parameters
//!   (`@cdmDatabaseSchema.person`) vanish, so tables are the study's;
//!   `@cdmVersion` is `5.4`, `@tempAchillesPrefix` is `achilles`; others
//!   come from `--param name=value`;
//! - `#temp` tables become `temp_<name>`, and each `SELECT ... INTO #temp`
//!   becomes a common table expression of the statement that reads it;
//!   the last statement's `INTO` (a results table) is dropped;
//!   `TRUNCATE` / `DROP` of temporary tables are dropped;
//! - functions: `COUNT_BIG` → `COUNT`, `STDEV` → `STDDEV`, `YEAR(x)` /
//!   `MONTH(x)` / `DAY(x)` → `date_part`, `DATEFROMPARTS` → `make_date`,
//!   `DATEDIFF(day | month | year, a, b)` → date arithmetic, `EOMONTH`,
//!   `GETDATE()` → `current_date`, `ISNULL` → `coalesce`, `LEN` →
//!   `length`; `TOP n` → `LIMIT n`.

use std::collections::BTreeMap;
use std::ops::ControlFlow;

use datafusion::sql::sqlparser::ast::{
    Expr, Query, SetExpr, Statement, TopQuantity, visit_expressions_mut,
};
use datafusion::sql::sqlparser::dialect::MsSqlDialect;
use datafusion::sql::sqlparser::parser::Parser;

use crate::error::{Error, Result, Rule};

/// Schema parameters that name where the CDM, vocabulary and results live:
/// in a study they are all the study's own tables.
const SCHEMA_PARAMETERS: [&str; 6] = [
    "cdmDatabaseSchema",
    "vocabDatabaseSchema",
    "resultsDatabaseSchema",
    "scratchDatabaseSchema",
    "tempEmulationSchema",
    "cohortDatabaseSchema",
];

/// Translates `sql`, in SqlRender's dialect with `params`, into one query.
pub fn ohdsi(sql: &str, params: &BTreeMap<String, String>) -> Result<String> {
    let refuse = |fragment: &str, reason: String| {
        Error::refused(Rule::UnsupportedSql, format!("`{fragment}`"), reason)
    };
    let text = strip_comments(sql);
    let text = substitute(&text, params).map_err(|(f, r)| refuse(&f, r))?;
    let text = conditionals(&text).map_err(|(f, r)| refuse(&f, r))?;
    let text = temp_tables(&text);
    let statements = Parser::parse_sql(&MsSqlDialect {}, &text)
        .map_err(|e| refuse(shorten(&text).as_str(), format!("not OHDSI SQL: {e}")))?;
    let mut relations: Vec<Relation> = Vec::new();
    let mut last: Option<(Query, Option<u64>)> = None;
    for statement in statements {
        let mut query = match statement {
            Statement::Query(query) => *query,
            Statement::Truncate(_) | Statement::Drop { .. } => continue,
            other => {
                return Err(refuse(
                    &shorten(&other.to_string()),
                    "only queries are translated (a study's tables cannot be created or \
                     changed)"
                        .into(),
                ));
            }
        };
        let (into, top) = take_into_and_top(&mut query);
        functions(&mut query)?;
        match into {
            Some(name) if name.starts_with("temp_") => {
                if let Some(with) = query.with.take() {
                    relations.extend(with.cte_tables.iter().map(Relation::of_cte));
                }
                relations.push(Relation {
                    columns: columns_of(&query, &[]),
                    definition: format!("{name} AS ({query})"),
                    name,
                });
            }
            _ => {
                if last.is_some() {
                    return Err(refuse(
                        &shorten(&query.to_string()),
                        "the script has more than one result query; ask them one at a time".into(),
                    ));
                }
                last = Some((query, top));
            }
        }
    }
    let (mut query, top) = last.ok_or_else(|| {
        refuse(
            &shorten(sql),
            "the script has no query whose result is returned".into(),
        )
    })?;
    if let Some(with) = query.with.take() {
        relations.extend(with.cte_tables.iter().map(Relation::of_cte));
    }
    if let Some(rewritten) = distribution(&relations, &query, sql) {
        return Ok(rewritten);
    }
    let ctes: Vec<&str> = relations.iter().map(|r| r.definition.as_str()).collect();
    let mut out = String::new();
    if !ctes.is_empty() {
        out.push_str("WITH ");
        out.push_str(&ctes.join(", "));
        out.push(' ');
    }
    out.push_str(&query.to_string());
    if let Some(n) = top {
        out.push_str(&format!(" LIMIT {n}"));
    }
    Ok(out)
}

/// A common table expression of the translated query.
struct Relation {
    name: String,
    /// Its output columns, when they can be read off its text.
    columns: Option<Vec<String>>,
    /// `name [(columns)] AS (query)`.
    definition: String,
}

impl Relation {
    fn of_cte(cte: &datafusion::sql::sqlparser::ast::Cte) -> Relation {
        Relation {
            name: cte.alias.name.value.clone(),
            columns: columns_of(&cte.query, &cte.alias.columns),
            definition: cte.to_string(),
        }
    }
}

/// The output column names of `query` (or its declared `aliases`).
fn columns_of(
    query: &Query,
    aliases: &[datafusion::sql::sqlparser::ast::TableAliasColumnDef],
) -> Option<Vec<String>> {
    use datafusion::sql::sqlparser::ast::SelectItem;
    if !aliases.is_empty() {
        return Some(aliases.iter().map(|c| c.name.value.clone()).collect());
    }
    let SetExpr::Select(select) = query.body.as_ref() else {
        return None;
    };
    select
        .projection
        .iter()
        .map(|item| match item {
            SelectItem::ExprWithAlias { alias, .. } => Some(alias.value.clone()),
            SelectItem::UnnamedExpr(Expr::Identifier(i)) => Some(i.value.clone()),
            SelectItem::UnnamedExpr(Expr::CompoundIdentifier(parts)) => {
                parts.last().map(|i| i.value.clone())
            }
            _ => None,
        })
        .collect()
}

/// The percentiles of Achilles' distribution outputs, as DP quantiles.
const DISTRIBUTION: [(&str, &str); 8] = [
    ("min_value", "PERCENTILE_CONT({v}, 0.01)"),
    ("max_value", "PERCENTILE_CONT({v}, 0.99)"),
    ("avg_value", "AVG({v})"),
    ("stdev_value", "STDDEV({v})"),
    ("median_value", "MEDIAN({v})"),
    ("p10_value", "PERCENTILE_CONT({v}, 0.1)"),
    ("p25_value", "PERCENTILE_CONT({v}, 0.25)"),
    ("p75_value", "PERCENTILE_CONT({v}, 0.75)"),
];

/// Achilles' distribution analyses compute exact percentiles from a
/// first relation of values (`rawData`, `#measurementView_1815`: strata
/// and `count_value`) through `ROW_NUMBER() OVER` and a cumulative
/// self-join, which the planner refuses. When the final query releases
/// `median_value`, the same outputs are asked of the values directly, as
/// DP quantiles (the minimum and maximum as the 1st and 99th percentiles,
/// which DP can release and an extreme value cannot): the translation
/// docs/OMOP.md describes.
fn distribution(relations: &[Relation], last: &Query, sql: &str) -> Option<String> {
    let releases_median = last
        .to_string()
        .to_ascii_lowercase()
        .contains("median_value");
    if !releases_median {
        return None;
    }
    let raw = relations.first()?;
    let columns = raw.columns.as_ref()?;
    let value = columns
        .iter()
        .find(|c| c.eq_ignore_ascii_case("count_value"))
        .or(columns.last())?;
    let strata: Vec<&String> = columns
        .iter()
        .filter(|c| *c != value && !c.eq_ignore_ascii_case("person_id"))
        .collect();
    let lower = sql.to_ascii_lowercase();
    let at = lower.find("as analysis_id")?;
    let id: String = lower[..at]
        .trim_end()
        .chars()
        .rev()
        .take_while(char::is_ascii_digit)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    if id.is_empty() {
        return None;
    }
    let mut select = vec![format!("{id} AS analysis_id")];
    for (i, s) in strata.iter().enumerate() {
        select.push(format!("CAST({s} AS VARCHAR(255)) AS stratum_{}", i + 1));
    }
    select.push("COUNT(*) AS count_value".into());
    for (output, template) in DISTRIBUTION {
        select.push(format!("{} AS {output}", template.replace("{v}", value)));
    }
    select.push(format!("PERCENTILE_CONT({value}, 0.9) AS p90_value"));
    let mut out = format!(
        "WITH {} SELECT {} FROM {}",
        raw.definition,
        select.join(", "),
        raw.name
    );
    if !strata.is_empty() {
        let keys: Vec<&str> = strata.iter().map(|s| s.as_str()).collect();
        out.push_str(&format!(" GROUP BY {}", keys.join(", ")));
    }
    Some(out)
}

/// Removes `--` and `/* */` comments outside string literals.
fn strip_comments(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len());
    let mut chars = sql.chars().peekable();
    let mut quoted = false;
    while let Some(c) = chars.next() {
        if quoted {
            out.push(c);
            if c == '\'' {
                quoted = false;
            }
            continue;
        }
        match (c, chars.peek()) {
            ('\'', _) => {
                quoted = true;
                out.push(c);
            }
            ('-', Some('-')) => {
                for c in chars.by_ref() {
                    if c == '\n' {
                        out.push('\n');
                        break;
                    }
                }
            }
            ('/', Some('*')) => {
                chars.next();
                let mut previous = ' ';
                for c in chars.by_ref() {
                    if previous == '*' && c == '/' {
                        break;
                    }
                    previous = c;
                }
                out.push(' ');
            }
            _ => out.push(c),
        }
    }
    out
}

/// Replaces `@name` outside string literals: schema parameters (and the
/// `.` after them) vanish, `@schemaDelim` too, `@cdmVersion` is 5.4 and
/// `@tempAchillesPrefix` is `achilles`; the rest come from `params`.
fn substitute(
    sql: &str,
    params: &BTreeMap<String, String>,
) -> std::result::Result<String, (String, String)> {
    let mut out = String::with_capacity(sql.len());
    let chars: Vec<char> = sql.chars().collect();
    let mut i = 0;
    let mut quoted = false;
    while i < chars.len() {
        let c = chars[i];
        if c == '\'' {
            quoted = !quoted;
        }
        if c != '@' {
            out.push(c);
            i += 1;
            continue;
        }
        let start = i + 1;
        let mut end = start;
        while end < chars.len() && (chars[end].is_ascii_alphanumeric() || chars[end] == '_') {
            end += 1;
        }
        let whole: String = chars[start..end].iter().collect();
        if whole.is_empty() {
            out.push(c);
            i += 1;
            continue;
        }
        // `@tempAchillesPrefix_2` is the parameter `tempAchillesPrefix`
        // followed by `_2`: the longest known name wins.
        let known = |n: &str| {
            params.contains_key(n)
                || SCHEMA_PARAMETERS.iter().any(|p| p.eq_ignore_ascii_case(n))
                || ["schemaDelim", "cdmVersion", "tempAchillesPrefix"]
                    .iter()
                    .any(|p| p.eq_ignore_ascii_case(n))
        };
        let name = std::iter::once(whole.len())
            .chain(whole.rmatch_indices('_').map(|(at, _)| at))
            .map(|at| &whole[..at])
            .find(|n| known(n))
            .unwrap_or(&whole)
            .to_string();
        i = start + name.chars().count();
        if let Some(value) = params.get(&name) {
            out.push_str(value);
        } else if SCHEMA_PARAMETERS
            .iter()
            .any(|p| p.eq_ignore_ascii_case(&name))
        {
            if chars.get(i) == Some(&'.') {
                i += 1;
            }
        } else if name.eq_ignore_ascii_case("schemaDelim") {
        } else if name.eq_ignore_ascii_case("cdmVersion") {
            out.push_str("5.4");
        } else if name.eq_ignore_ascii_case("tempAchillesPrefix") {
            out.push_str("achilles");
        } else if quoted {
            out.push('@');
            out.push_str(&name);
        } else {
            return Err((
                format!("@{name}"),
                format!("no value for the parameter @{name}: give it with --param {name}=VALUE"),
            ));
        }
    }
    Ok(out)
}

/// Resolves `{condition} ? {then} : {else}` blocks (innermost first).
fn conditionals(sql: &str) -> std::result::Result<String, (String, String)> {
    let mut text = sql.to_string();
    // Each pass resolves one block whose branches hold no other block.
    for _ in 0..1_000 {
        let Some(question) = find_block(&text) else {
            return Ok(text);
        };
        let (start, condition, then, otherwise, end) = question;
        let value = condition_value(&condition).ok_or_else(|| {
            (
                condition.clone(),
                "a condition cohort cannot evaluate".into(),
            )
        })?;
        let chosen = if value {
            then
        } else {
            otherwise.unwrap_or_default()
        };
        text.replace_range(start..end, &chosen);
    }
    Err((shorten(sql), "too many nested conditional blocks".into()))
}

type Block = (usize, String, String, Option<String>, usize);

/// The first `{c}?{a}` or `{c}?{a}:{b}` block with no brace inside `c`.
fn find_block(text: &str) -> Option<Block> {
    let bytes = text.as_bytes();
    let mut open = None;
    for (i, &b) in bytes.iter().enumerate() {
        match b {
            b'{' => open = Some(i),
            b'}' => {
                let Some(start) = open else { continue };
                let rest = text[i + 1..].trim_start();
                if !rest.starts_with('?') {
                    open = None;
                    continue;
                }
                let condition = text[start + 1..i].to_string();
                let after = i + 1 + (text[i + 1..].len() - rest.len()) + 1;
                let (then, after) = braced(text, after)?;
                let rest = text[after..].trim_start();
                if rest.starts_with(':') {
                    let colon = after + (text[after..].len() - rest.len()) + 1;
                    let (otherwise, end) = braced(text, colon)?;
                    return Some((start, condition, then, Some(otherwise), end));
                }
                return Some((start, condition, then, None, after));
            }
            _ => {}
        }
    }
    None
}

/// The text of the `{...}` starting at or after `from` (whitespace
/// allowed before it), with nested braces, and where it ends.
fn braced(text: &str, from: usize) -> Option<(String, usize)> {
    let rest = &text[from..];
    let open = from + (rest.len() - rest.trim_start().len());
    if text.as_bytes().get(open) != Some(&b'{') {
        return None;
    }
    let mut depth = 0;
    for (i, b) in text.bytes().enumerate().skip(open) {
        match b {
            b'{' => depth += 1,
            b'}' => {
                depth -= 1;
                if depth == 0 {
                    return Some((text[open + 1..i].to_string(), i + 1));
                }
            }
            _ => {}
        }
    }
    None
}

/// SqlRender's conditions after substitution: `'a' == 'b'`, `'a' != 'b'`,
/// `a IN ('x', 'y')`, `!c`, `true`, `false`, `1`, `0`, joined by `&` / `|`.
fn condition_value(condition: &str) -> Option<bool> {
    let c = condition.trim();
    if let Some((a, b)) = c.split_once('|') {
        return Some(condition_value(a)? || condition_value(b)?);
    }
    if let Some((a, b)) = c.split_once('&') {
        return Some(condition_value(a)? && condition_value(b)?);
    }
    if let Some(rest) = c.strip_prefix('!') {
        return condition_value(rest).map(|v| !v);
    }
    let literal = |s: &str| s.trim().trim_matches('\'').to_ascii_lowercase();
    if let Some((a, b)) = c.split_once("==") {
        return Some(literal(a) == literal(b));
    }
    if let Some((a, b)) = c.split_once("!=") {
        return Some(literal(a) != literal(b));
    }
    let lower = c.to_ascii_lowercase();
    if let Some(at) = lower.find(" in ") {
        let value = literal(&c[..at]);
        let list = c[at + 4..]
            .trim()
            .trim_start_matches('(')
            .trim_end_matches(')');
        return Some(list.split(',').any(|item| literal(item) == value));
    }
    match lower.as_str() {
        "true" | "1" => Some(true),
        "false" | "0" => Some(false),
        _ => None,
    }
}

/// `#name` (outside string literals) → `temp_name`.
fn temp_tables(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len());
    let mut quoted = false;
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\'' {
            quoted = !quoted;
        }
        if c == '#'
            && !quoted
            && chars
                .peek()
                .is_some_and(|n| n.is_alphanumeric() || *n == '_')
        {
            out.push_str("temp_");
        } else {
            out.push(c);
        }
    }
    out
}

/// Removes the query's `INTO` (returning its table) and `TOP n`.
fn take_into_and_top(query: &mut Query) -> (Option<String>, Option<u64>) {
    let mut body = query.body.as_mut();
    loop {
        match body {
            SetExpr::Select(select) => {
                let into = select.into.take().map(|i| i.name.to_string());
                let top = select.top.take().and_then(|t| match t.quantity? {
                    TopQuantity::Constant(n) => Some(n),
                    TopQuantity::Expr(e) => e.to_string().trim_matches(['(', ')']).parse().ok(),
                });
                return (into, top);
            }
            SetExpr::SetOperation { left, .. } => body = left.as_mut(),
            SetExpr::Query(inner) => body = inner.body.as_mut(),
            _ => return (None, None),
        }
    }
}

/// Rewrites SQL Server functions into the planner's.
fn functions(query: &mut Query) -> Result<()> {
    let mut failure = None;
    let _ = visit_expressions_mut(query, |expr| {
        if let Expr::Function(function) = expr {
            let name = function.name.to_string().to_ascii_lowercase();
            let args: Vec<String> = match &function.args {
                datafusion::sql::sqlparser::ast::FunctionArguments::List(list) => {
                    list.args.iter().map(ToString::to_string).collect()
                }
                _ => Vec::new(),
            };
            let whole = expr.to_string();
            let replacement = match translate_function(&name, &args, &whole) {
                Ok(Some(text)) => text,
                Ok(None) => return ControlFlow::Continue(()),
                Err(e) => {
                    failure = Some(e);
                    return ControlFlow::Break(());
                }
            };
            match Parser::new(&MsSqlDialect {})
                .try_with_sql(&replacement)
                .and_then(|mut p| p.parse_expr())
            {
                Ok(parsed) => *expr = parsed,
                Err(e) => {
                    failure = Some(Error::refused(
                        Rule::UnsupportedSql,
                        format!("`{whole}`"),
                        format!("its translation does not parse: {e}"),
                    ));
                    return ControlFlow::Break(());
                }
            }
        }
        ControlFlow::Continue(())
    });
    match failure {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// The planner's text for one SQL Server function call, if it differs.
fn translate_function(name: &str, args: &[String], whole: &str) -> Result<Option<String>> {
    let wrong = |n: usize| {
        Error::refused(
            Rule::UnsupportedSql,
            format!("`{whole}`"),
            format!("{} takes {n} arguments", name.to_ascii_uppercase()),
        )
    };
    let arity = |n: usize| {
        if args.len() == n {
            Ok(())
        } else {
            Err(wrong(n))
        }
    };
    let renamed = |to: &str| {
        let open = whole.find('(').unwrap_or(whole.len());
        format!("{to}{}", &whole[open..])
    };
    let day = |d: &str| format!("date_part('epoch', CAST({d} AS TIMESTAMP))");
    Ok(Some(match name {
        "count_big" => renamed("COUNT"),
        "stdev" => renamed("STDDEV"),
        "sign" => renamed("SIGNUM"),
        "stdevp" => renamed("STDDEV_POP"),
        "varp" => renamed("VAR_POP"),
        "len" => renamed("LENGTH"),
        "isnull" => renamed("COALESCE"),
        "getdate" => "CURRENT_DATE".into(),
        "year" | "month" | "day" => {
            arity(1)?;
            format!("CAST(date_part('{name}', {}) AS BIGINT)", args[0])
        }
        "datefromparts" => {
            arity(3)?;
            format!("make_date({}, {}, {})", args[0], args[1], args[2])
        }
        "eomonth" => {
            arity(1)?;
            format!(
                "CAST(date_trunc('month', CAST({} AS TIMESTAMP)) + INTERVAL '1 month' - INTERVAL '1 day' AS DATE)",
                args[0]
            )
        }
        "datediff" => {
            arity(3)?;
            let (a, b) = (&args[1], &args[2]);
            match args[0].to_ascii_lowercase().trim_matches('\'') {
                "dd" | "d" | "day" => {
                    format!("CAST(floor(({} - {}) / 86400) AS BIGINT)", day(b), day(a))
                }
                "yy" | "yyyy" | "year" => {
                    format!("CAST(date_part('year', {b}) - date_part('year', {a}) AS BIGINT)")
                }
                "mm" | "m" | "month" => format!(
                    "CAST((date_part('year', {b}) - date_part('year', {a})) * 12 + \
                     date_part('month', {b}) - date_part('month', {a}) AS BIGINT)"
                ),
                unit => {
                    return Err(Error::refused(
                        Rule::UnsupportedSql,
                        format!("`{whole}`"),
                        format!("DATEDIFF by `{unit}` is not translated (day, month or year)"),
                    ));
                }
            }
        }
        _ => return Ok(None),
    }))
}

fn shorten(text: &str) -> String {
    let one_line: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if one_line.chars().count() > 80 {
        format!("{}…", one_line.chars().take(80).collect::<String>())
    } else {
        one_line
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(sql: &str) -> String {
        ohdsi(sql, &BTreeMap::new()).unwrap()
    }

    #[test]
    fn achilles_2_becomes_one_query_over_the_study_tables() {
        let sql = "--HINT DISTRIBUTE_ON_KEY(stratum_1)\nselect 2 as analysis_id, \
            CAST(gender_concept_id AS VARCHAR(255)) as stratum_1, \
            COUNT_BIG(distinct person_id) as count_value \
            into @scratchDatabaseSchema@schemaDelim@tempAchillesPrefix_2 \
            from @cdmDatabaseSchema.person group by GENDER_CONCEPT_ID;";
        let out = t(sql);
        assert!(out.contains("COUNT(DISTINCT person_id)"), "{out}");
        assert!(out.contains("FROM person"), "{out}");
        assert!(!out.to_lowercase().contains("into"), "{out}");
        assert!(!out.contains('@'), "{out}");
    }

    #[test]
    fn temp_tables_become_common_table_expressions() {
        let sql = "SELECT person_id, YEAR(condition_start_date) AS y INTO #c \
            FROM @cdmDatabaseSchema.condition_occurrence; \
            SELECT y, COUNT_BIG(*) AS n INTO @resultsDatabaseSchema.out FROM #c GROUP BY y; \
            TRUNCATE TABLE #c; DROP TABLE #c;";
        let out = t(sql);
        assert!(out.starts_with("WITH temp_c AS (SELECT person_id"), "{out}");
        assert!(
            out.contains("date_part('year', condition_start_date)"),
            "{out}"
        );
        assert!(out.contains("FROM temp_c GROUP BY y"), "{out}");
    }

    #[test]
    fn conditionals_parameters_and_dates() {
        let sql = "SELECT {@cdmVersion in ('5.3','5.4')}?{COUNT_BIG(*)}:{0} AS n, \
            DATEDIFF(dd, a, b) AS d, DATEFROMPARTS(y, 1, 1) AS f FROM @cdmDatabaseSchema.t \
            WHERE x = @target";
        let params = BTreeMap::from([("target".to_string(), "42".to_string())]);
        let out = ohdsi(sql, &params).unwrap();
        assert!(out.contains("COUNT(*) AS n"), "{out}");
        assert!(out.contains("make_date(y, 1, 1)"), "{out}");
        assert!(out.contains("86400"), "{out}");
        assert!(out.contains("x = 42"), "{out}");
        let missing = ohdsi("SELECT 1 FROM t WHERE x = @target", &BTreeMap::new()).unwrap_err();
        assert!(missing.to_string().contains("--param target="), "{missing}");
    }

    #[test]
    fn a_distribution_analysis_becomes_dp_quantiles_of_its_values() {
        let sql = "SELECT m.measurement_concept_id AS subject_id, m.unit_concept_id, \
            CAST(m.value_as_number AS FLOAT) AS count_value INTO #measurementView_1815 \
            FROM @cdmDatabaseSchema.measurement m WHERE m.value_as_number IS NOT NULL; \
            SELECT m.subject_id AS stratum1_id, m.count_value, COUNT_BIG(*) AS total, \
            ROW_NUMBER() OVER (PARTITION BY m.subject_id ORDER BY m.count_value) AS rn \
            INTO #statsView_1815 FROM #measurementView_1815 m GROUP BY m.subject_id, m.count_value; \
            SELECT 1815 as analysis_id, s.stratum1_id, MIN(s.count_value) AS median_value \
            INTO @scratchDatabaseSchema@schemaDelim@tempAchillesPrefix_dist_1815 FROM #statsView_1815 s \
            GROUP BY s.stratum1_id;";
        let out = t(sql);
        assert!(
            out.starts_with("WITH temp_measurementView_1815 AS (SELECT"),
            "{out}"
        );
        assert!(!out.to_lowercase().contains("row_number"), "{out}");
        assert!(out.contains("1815 AS analysis_id"), "{out}");
        assert!(
            out.contains("CAST(subject_id AS VARCHAR(255)) AS stratum_1"),
            "{out}"
        );
        assert!(
            out.contains("CAST(unit_concept_id AS VARCHAR(255)) AS stratum_2"),
            "{out}"
        );
        assert!(out.contains("MEDIAN(count_value) AS median_value"), "{out}");
        assert!(
            out.ends_with("GROUP BY subject_id, unit_concept_id"),
            "{out}"
        );
    }

    #[test]
    fn changes_to_tables_are_refused() {
        let e = ohdsi("DELETE FROM @cdmDatabaseSchema.person", &BTreeMap::new()).unwrap_err();
        assert!(e.to_string().contains("only queries"), "{e}");
    }
}
