//! Parameters of prepared statements (`$1`, `$2`, ...): their types, inferred from where
//! they appear (DataFusion's planner for queries; the target columns for INSERT, UPDATE and
//! DELETE), and binding their values into the statement as typed literals.

use std::collections::BTreeMap;
use std::ops::ControlFlow;

use changeflow_sql::Catalog;
use changeflow_sql::parser::{ParsedStatement, Statement, placeholder_number as placeholder};
use chrono::{DateTime, FixedOffset, NaiveDate, NaiveDateTime, NaiveTime, Utc};
use datafusion::arrow::datatypes::{DataType, SchemaRef};
use datafusion::sql::sqlparser::ast::{self, Expr, visit_expressions, visit_expressions_mut};
use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
use datafusion::sql::sqlparser::parser::Parser;
use pgwire::api::Type;
use pgwire::api::portal::Portal;
use pgwire::error::{PgWireError, PgWireResult};
use rust_decimal::Decimal;

use super::encode::pg_type;

/// The highest `$n` in a statement (0 when it has none).
pub fn count(statement: &ParsedStatement) -> usize {
    let Statement::Sql(sql) = &statement.statement else { return 0 };
    let mut highest = 0;
    let _ = visit_expressions(sql.as_ref(), |expr| {
        if let Some(n) = placeholder(expr) {
            highest = highest.max(n);
        }
        ControlFlow::<()>::Continue(())
    });
    highest
}

/// Types of a write's parameters from the columns they meet: INSERT values by position,
/// `SET column = $n`, and `column <op> $n` comparisons. Unknown ones stay None.
pub fn infer_for_write(statement: &ParsedStatement, catalog: &Catalog) -> BTreeMap<usize, DataType> {
    let mut types = BTreeMap::new();
    let Statement::Sql(sql) = &statement.statement else { return types };
    let schema = match sql.as_ref() {
        ast::Statement::Insert(insert) => {
            let Some(schema) = table_schema(catalog, &insert.table.to_string()) else { return types };
            let columns: Vec<String> = if insert.columns.is_empty() {
                schema.fields().iter().map(|f| f.name().clone()).collect()
            } else {
                insert.columns.iter().map(|c| c.to_string().to_ascii_lowercase()).collect()
            };
            if let Some(source) = &insert.source
                && let ast::SetExpr::Values(values) = source.body.as_ref()
            {
                for row in &values.rows {
                    for (expr, column) in row.iter().zip(&columns) {
                        if let (Some(n), Ok(field)) = (placeholder(expr), schema.field_with_name(column)) {
                            types.insert(n, field.data_type().clone());
                        }
                    }
                }
            }
            schema
        }
        ast::Statement::Update(update) => {
            let name = update.table.relation.to_string();
            let Some(schema) = table_schema(catalog, &name) else { return types };
            for assignment in &update.assignments {
                if let (ast::AssignmentTarget::ColumnName(column), Some(n)) =
                    (&assignment.target, placeholder(&assignment.value))
                    && let Ok(field) = schema.field_with_name(&column.to_string())
                {
                    types.insert(n, field.data_type().clone());
                }
            }
            schema
        }
        ast::Statement::Delete(delete) => {
            let tables = match &delete.from {
                ast::FromTable::WithFromKeyword(tables) | ast::FromTable::WithoutKeyword(tables) => tables,
            };
            let Some(first) = tables.first() else { return types };
            let name = first.relation.to_string();
            let Some(schema) = table_schema(catalog, &name) else { return types };
            schema
        }
        _ => return types,
    };
    let _ = visit_expressions(sql.as_ref(), |expr| {
        if let Expr::BinaryOp { left, right, .. } = expr {
            let pair = match (column_name(left), placeholder(right), column_name(right), placeholder(left)) {
                (Some(column), Some(n), _, _) | (_, _, Some(column), Some(n)) => Some((column, n)),
                _ => None,
            };
            if let Some((column, n)) = pair
                && let Ok(field) = schema.field_with_name(&column)
            {
                types.entry(n).or_insert_with(|| field.data_type().clone());
            }
        }
        ControlFlow::<()>::Continue(())
    });
    types
}

fn table_schema(catalog: &Catalog, name: &str) -> Option<SchemaRef> {
    catalog.relation(&name.to_ascii_lowercase()).map(|r| r.schema.clone())
}

fn column_name(expr: &Expr) -> Option<String> {
    match expr {
        Expr::Identifier(ident) => Some(ident.value.to_ascii_lowercase()),
        Expr::CompoundIdentifier(parts) => parts.last().map(|i| i.value.to_ascii_lowercase()),
        _ => None,
    }
}

/// The wire types of `count` parameters: the client's own where it gave them, else the
/// inferred ones, else text.
pub fn wire_types(count: usize, client: &[Option<Type>], inferred: &dyn Fn(usize) -> Option<DataType>) -> Vec<Type> {
    (1..=count)
        .map(|n| {
            client
                .get(n - 1)
                .cloned()
                .flatten()
                .filter(|t| *t != Type::UNKNOWN)
                .or_else(|| inferred(n).map(|t| pg_type(&t).0))
                .unwrap_or(Type::TEXT)
        })
        .collect()
}

/// Replaces every `$n` of the statement with the bound value, as a literal of its type.
pub fn bind<S: Clone>(statement: &mut ParsedStatement, portal: &Portal<S>, types: &[Type]) -> PgWireResult<()> {
    let Statement::Sql(sql) = &mut statement.statement else { return Ok(()) };
    let mut literals = Vec::with_capacity(types.len());
    for (i, pg) in types.iter().enumerate() {
        literals.push(literal(portal, i, pg)?);
    }
    let mut failure = None;
    let _ = visit_expressions_mut(sql.as_mut(), |expr| {
        if let Some(n) = placeholder(expr) {
            match literals.get(n.wrapping_sub(1)) {
                Some(literal) => *expr = literal.clone(),
                None => {
                    failure = Some(format!("there is no parameter ${n}: {} were bound", literals.len()));
                    return ControlFlow::Break(());
                }
            }
        }
        ControlFlow::Continue(())
    });
    match failure {
        Some(message) => Err(user_error("08P01", message)),
        None => Ok(()),
    }
}

fn user_error(code: &str, message: String) -> PgWireError {
    PgWireError::UserError(Box::new(pgwire::error::ErrorInfo::new("ERROR".into(), code.into(), message)))
}

/// The SQL literal of parameter `index` (0-based), bound in text or binary format.
fn literal<S: Clone>(portal: &Portal<S>, index: usize, pg: &Type) -> PgWireResult<Expr> {
    let Some(raw) = portal.parameters.get(index) else {
        return Err(user_error("08P01", format!("parameter ${} was not bound", index + 1)));
    };
    let Some(raw) = raw else { return parse_expr("NULL") };
    let text = if portal.parameter_format.is_binary(index) {
        binary_as_text(portal, index, pg)?
    } else {
        String::from_utf8(raw.to_vec())
            .map_err(|_| user_error("22021", format!("parameter ${} is not valid UTF-8", index + 1)))?
    };
    let quoted = format!("'{}'", text.replace('\'', "''"));
    let sql = match *pg {
        Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME | Type::UNKNOWN | Type::JSON | Type::JSONB => quoted,
        Type::INT2 | Type::INT4 | Type::INT8 => match text.trim().parse::<i64>() {
            Ok(number) => number.to_string(),
            Err(_) => {
                return Err(user_error("22P02", format!("invalid input syntax for type {}: \"{text}\"", pg.name())));
            }
        },
        Type::BOOL => format!("CAST({quoted} AS BOOLEAN)"),
        Type::FLOAT4 => format!("CAST({quoted} AS REAL)"),
        Type::FLOAT8 => format!("CAST({quoted} AS DOUBLE PRECISION)"),
        Type::NUMERIC => format!("CAST({quoted} AS NUMERIC)"),
        Type::DATE => format!("CAST({quoted} AS DATE)"),
        Type::TIME => format!("CAST({quoted} AS TIME)"),
        Type::TIMESTAMP => format!("CAST({quoted} AS TIMESTAMP)"),
        Type::TIMESTAMPTZ => format!("CAST({quoted} AS TIMESTAMPTZ)"),
        _ => quoted,
    };
    parse_expr(&sql)
}

fn binary_as_text<S: Clone>(portal: &Portal<S>, index: usize, pg: &Type) -> PgWireResult<String> {
    fn get<S: Clone, T>(portal: &Portal<S>, index: usize, pg: &Type) -> PgWireResult<T>
    where
        T: postgres_types::FromSqlOwned + for<'a> pgwire::types::FromSqlText<'a>,
    {
        portal
            .parameter::<T>(index, pg)?
            .ok_or_else(|| user_error("22004", format!("parameter ${} is NULL", index + 1)))
    }
    Ok(match *pg {
        Type::BOOL => get::<S, bool>(portal, index, pg)?.to_string(),
        Type::INT2 => get::<S, i16>(portal, index, pg)?.to_string(),
        Type::INT4 => get::<S, i32>(portal, index, pg)?.to_string(),
        Type::INT8 => get::<S, i64>(portal, index, pg)?.to_string(),
        Type::FLOAT4 => get::<S, f32>(portal, index, pg)?.to_string(),
        Type::FLOAT8 => get::<S, f64>(portal, index, pg)?.to_string(),
        Type::NUMERIC => get::<S, Decimal>(portal, index, pg)?.to_string(),
        Type::DATE => get::<S, NaiveDate>(portal, index, pg)?.to_string(),
        Type::TIME => get::<S, NaiveTime>(portal, index, pg)?.to_string(),
        Type::TIMESTAMP => get::<S, NaiveDateTime>(portal, index, pg)?.format("%Y-%m-%d %H:%M:%S%.f").to_string(),
        Type::TIMESTAMPTZ => get::<S, DateTime<FixedOffset>>(portal, index, pg)?
            .with_timezone(&Utc)
            .format("%Y-%m-%d %H:%M:%S%.f%:z")
            .to_string(),
        _ => get::<S, String>(portal, index, pg)?,
    })
}

fn parse_expr(sql: &str) -> PgWireResult<Expr> {
    Parser::new(&PostgreSqlDialect {})
        .try_with_sql(sql)
        .and_then(|mut parser| parser.parse_expr())
        .map_err(|e| user_error("22P02", format!("cannot bind parameter value {sql}: {e}")))
}
