//! PostgreSQL's array text, both ways: `'{a,"b c",NULL}'` read into `ARRAY[...]` (where a
//! string meets an array type: a cast, or an INSERT / UPDATE of an array column), and
//! Arrow lists written as `{a,"b c",NULL}` (over the wire, in results, to PostgreSQL sinks).

use std::ops::ControlFlow;

use datafusion::arrow::array::{Array, AsArray};
use datafusion::arrow::datatypes::DataType;
use datafusion::sql::sqlparser::ast;

use crate::catalog::Catalog;
use crate::error::{Result, SqlError};

/// The elements of a one-dimensional array literal (`None` for an unquoted NULL), with or
/// without explicit bounds (`[0:1]={a,b}`).
pub fn parse_array_text(text: &str) -> Result<Vec<Option<String>>> {
    let malformed = |why: &str| SqlError::Unsupported(format!("malformed array literal: \"{text}\" ({why})"));
    let body = match text.find('=') {
        Some(at) if text.trim_start().starts_with('[') => &text[at + 1..],
        _ => text,
    };
    let inner = body
        .trim()
        .strip_prefix('{')
        .and_then(|t| t.strip_suffix('}'))
        .ok_or_else(|| malformed("an array value must start with \"{\" and end with \"}\""))?;
    let mut elements = Vec::new();
    let mut chars = inner.chars().peekable();
    if inner.trim().is_empty() {
        return Ok(elements);
    }
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        let mut value = String::new();
        let mut quoted = false;
        if chars.peek() == Some(&'"') {
            quoted = true;
            chars.next();
            loop {
                match chars.next() {
                    Some('"') => break,
                    Some('\\') => value.push(chars.next().ok_or_else(|| malformed("unexpected end"))?),
                    Some(c) => value.push(c),
                    None => return Err(malformed("unterminated quote")),
                }
            }
        }
        while let Some(&c) = chars.peek() {
            if c == ',' {
                break;
            }
            chars.next();
            match c {
                '{' | '}' => return Err(malformed("only one-dimensional arrays are supported")),
                '"' => return Err(malformed("unexpected quote")),
                '\\' => value.push(chars.next().ok_or_else(|| malformed("unexpected end"))?),
                c if quoted && !c.is_whitespace() => return Err(malformed("junk after a quoted element")),
                c => value.push(c),
            }
        }
        let value = if quoted { value } else { value.trim_end().to_string() };
        if !quoted && value.is_empty() {
            return Err(malformed("empty element"));
        }
        elements.push((quoted || !value.eq_ignore_ascii_case("NULL")).then_some(value));
        match chars.next() {
            Some(',') => continue,
            None => break,
            Some(_) => return Err(malformed("unexpected character")),
        }
    }
    Ok(elements)
}

/// `ARRAY[...]` of an array literal's elements, each cast to `element`.
fn array_expr(text: &str, element: &ast::DataType) -> Result<ast::Expr> {
    let elements = parse_array_text(text)?
        .into_iter()
        .map(|value| {
            let literal = match value {
                Some(value) => ast::Expr::value(ast::Value::SingleQuotedString(value)),
                None => ast::Expr::value(ast::Value::Null),
            };
            ast::Expr::Cast {
                kind: ast::CastKind::DoubleColon,
                expr: Box::new(literal),
                data_type: element.clone(),
                array: false,
                format: None,
            }
        })
        .collect();
    Ok(ast::Expr::Array(ast::Array { elem: elements, named: true }))
}

/// The element type of an array type (`text[]`, `INT ARRAY`).
fn element_type(data_type: &ast::DataType) -> Option<&ast::DataType> {
    match data_type {
        ast::DataType::Array(
            ast::ArrayElemTypeDef::SquareBracket(inner, _)
            | ast::ArrayElemTypeDef::AngleBracket(inner)
            | ast::ArrayElemTypeDef::Parenthesis(inner),
        ) => Some(inner),
        _ => None,
    }
}

/// The SQL element type of an Arrow list type.
fn sql_element_type(data_type: &DataType) -> Option<ast::DataType> {
    let DataType::List(item) = data_type else { return None };
    let name = crate::ddl::postgres_type_name(item.data_type())?;
    let dialect = datafusion::sql::sqlparser::dialect::PostgreSqlDialect {};
    datafusion::sql::sqlparser::parser::Parser::new(&dialect)
        .try_with_sql(&name)
        .and_then(|mut parser| parser.parse_data_type())
        .ok()
}

/// Rewrites array literals written as strings: `'{a,b}'::text[]` anywhere, and a string
/// INSERTed into or SET on an array column of a table.
pub fn read_array_literals(statement: &mut ast::Statement, catalog: &Catalog) -> Result<()> {
    let mut failure = None;
    let _ = ast::visit_expressions_mut(statement, |expr| {
        if let ast::Expr::Cast { expr: inner, data_type, .. } = expr
            && let Some(element) = element_type(data_type)
            && let Some(text) = string_literal(inner)
        {
            match array_expr(&text, element) {
                Ok(array) => *expr = array,
                Err(error) => {
                    failure = Some(error);
                    return ControlFlow::Break(());
                }
            }
        }
        ControlFlow::Continue(())
    });
    if let Some(error) = failure {
        return Err(error);
    }
    let targets: Vec<(&mut ast::Expr, Option<ast::DataType>)> = match statement {
        ast::Statement::Insert(insert) => {
            let Some(relation) = catalog.relation(&insert.table.to_string().to_ascii_lowercase()) else {
                return Ok(());
            };
            let columns: Vec<String> = if insert.columns.is_empty() {
                relation.schema.fields().iter().map(|f| f.name().clone()).collect()
            } else {
                insert.columns.iter().map(|c| crate::ddl::object_name(c).unwrap_or_else(|_| c.to_string())).collect()
            };
            let types: Vec<Option<ast::DataType>> = columns
                .iter()
                .map(|c| relation.schema.field_with_name(c).ok().and_then(|f| sql_element_type(f.data_type())))
                .collect();
            let Some(source) = insert.source.as_mut() else { return Ok(()) };
            let ast::SetExpr::Values(values) = source.body.as_mut() else { return Ok(()) };
            values.rows.iter_mut().flat_map(|row| row.iter_mut().zip(types.iter().cloned())).collect()
        }
        ast::Statement::Update(update) => {
            let Some(relation) = catalog.relation(&update.table.relation.to_string().to_ascii_lowercase()) else {
                return Ok(());
            };
            let schema = relation.schema.clone();
            update
                .assignments
                .iter_mut()
                .map(|assignment| {
                    let element = match &assignment.target {
                        ast::AssignmentTarget::ColumnName(column) => column
                            .0
                            .last()
                            .and_then(|part| part.as_ident())
                            .and_then(|ident| schema.field_with_name(&crate::ddl::normalize_ident(ident)).ok())
                            .and_then(|f| sql_element_type(f.data_type())),
                        _ => None,
                    };
                    (&mut assignment.value, element)
                })
                .collect()
        }
        _ => return Ok(()),
    };
    for (expr, element) in targets {
        if let Some(element) = element
            && let Some(text) = string_literal(expr)
        {
            *expr = array_expr(&text, &element)?;
        }
    }
    Ok(())
}

fn string_literal(expr: &ast::Expr) -> Option<String> {
    match expr {
        ast::Expr::Value(value) => match &value.value {
            ast::Value::SingleQuotedString(text) | ast::Value::EscapedStringLiteral(text) => Some(text.clone()),
            _ => None,
        },
        ast::Expr::Nested(inner) => string_literal(inner),
        _ => None,
    }
}

/// An element as PostgreSQL writes it inside an array: quoted when it is empty, NULL, or
/// holds a brace, comma, quote, backslash or white space.
fn element_text(text: &str, out: &mut String) {
    let needs_quotes = text.is_empty()
        || text.eq_ignore_ascii_case("NULL")
        || text.chars().any(|c| matches!(c, '{' | '}' | ',' | '"' | '\\') || c.is_whitespace());
    if !needs_quotes {
        out.push_str(text);
        return;
    }
    out.push('"');
    for c in text.chars() {
        if matches!(c, '"' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
}

/// A list value (row `row` of a List array) as PostgreSQL's array text; `element` writes
/// one element of the list's values array.
pub fn array_text(list: &dyn Array, row: usize, element: &dyn Fn(&dyn Array, usize) -> String) -> Option<String> {
    let list = list.as_list_opt::<i32>()?;
    if list.is_null(row) {
        return None;
    }
    let values = list.value(row);
    let mut out = String::from("{");
    for i in 0..values.len() {
        if i > 0 {
            out.push(',');
        }
        if values.is_null(i) {
            out.push_str("NULL");
        } else {
            element_text(&element(values.as_ref(), i), &mut out);
        }
    }
    out.push('}');
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn array_text_reads_as_postgresql_reads_it() {
        let some = |s: &str| Some(s.to_string());
        assert_eq!(parse_array_text("{}").expect("empty"), Vec::<Option<String>>::new());
        assert_eq!(parse_array_text("{a, b ,c}").expect("plain"), vec![some("a"), some("b"), some("c")]);
        assert_eq!(
            parse_array_text(r#"{"x, y","",NULL,"NULL",a\,b,"q\"q"}"#).expect("quoted"),
            vec![some("x, y"), some(""), None, some("NULL"), some("a,b"), some("q\"q")]
        );
        assert_eq!(parse_array_text("[0:1]={x,y}").expect("bounds"), vec![some("x"), some("y")]);
        assert!(parse_array_text("a,b").is_err());
        assert!(parse_array_text("{{1,2},{3,4}}").is_err());
        assert!(parse_array_text("{a,,b}").is_err());
        assert!(parse_array_text(r#"{"a"b}"#).is_err());
    }

    #[test]
    fn lists_write_as_postgresql_writes_arrays() {
        use datafusion::arrow::array::{ListBuilder, StringBuilder};
        let mut builder = ListBuilder::new(StringBuilder::new());
        builder.values().append_value("a");
        builder.values().append_value("b c");
        builder.values().append_null();
        builder.values().append_value("");
        builder.values().append_value("x\"y");
        builder.append(true);
        builder.append(false);
        builder.append(true);
        let list = builder.finish();
        let element = |values: &dyn Array, i: usize| values.as_string::<i32>().value(i).to_string();
        assert_eq!(array_text(&list, 0, &element).as_deref(), Some(r#"{a,"b c",NULL,"","x\"y"}"#));
        assert_eq!(array_text(&list, 1, &element), None);
        assert_eq!(array_text(&list, 2, &element).as_deref(), Some("{}"));
    }
}
