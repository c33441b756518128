//! `CREATE TABLE`: SQL column types to Arrow types, primary keys and NOT NULL constraints.

use std::sync::Arc;

use datafusion::arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use datafusion::sql::sqlparser::ast::{self, ColumnOption, TableConstraint};

use crate::catalog::{Relation, RelationKind};
use crate::error::{Result, SqlError};

/// The time zone changeflow stores TIMESTAMPTZ values in (instants, shown in UTC).
pub const UTC: &str = "+00:00";

/// Maps a SQL type to the Arrow type a column of it is stored as.
///
/// NUMERIC without a precision maps to NUMERIC(38, 10): Arrow decimals have a fixed scale.
pub fn arrow_type(sql_type: &ast::DataType) -> Result<DataType> {
    if let ast::DataType::Array(element) = sql_type {
        let inner = match element {
            ast::ArrayElemTypeDef::SquareBracket(inner, _)
            | ast::ArrayElemTypeDef::AngleBracket(inner)
            | ast::ArrayElemTypeDef::Parenthesis(inner) => inner,
            ast::ArrayElemTypeDef::None => {
                return Err(SqlError::Unsupported("ARRAY needs an element type (TEXT[], INT[])".into()));
            }
        };
        let item = arrow_type(inner)?;
        if matches!(item, DataType::List(_)) {
            return Err(SqlError::Unsupported(format!("{sql_type}: only one-dimensional arrays are supported")));
        }
        return Ok(DataType::List(Arc::new(Field::new("item", item, true))));
    }
    let text = sql_type.to_string().to_ascii_uppercase();
    let (base, args) = match text.find('(') {
        Some(i) => (text[..i].trim().to_string(), Some(text[i + 1..].trim_end_matches(')').to_string())),
        None => (text.trim().to_string(), None),
    };
    let numbers: Vec<u64> = args.as_deref().unwrap_or("").split(',').filter_map(|s| s.trim().parse().ok()).collect();
    let data_type = match base.as_str() {
        "BOOLEAN" | "BOOL" => DataType::Boolean,
        "SMALLINT" | "INT2" => DataType::Int16,
        "INT" | "INTEGER" | "INT4" => DataType::Int32,
        "BIGINT" | "INT8" => DataType::Int64,
        "REAL" | "FLOAT4" => DataType::Float32,
        "DOUBLE PRECISION" | "DOUBLE" | "FLOAT8" | "FLOAT" => DataType::Float64,
        "NUMERIC" | "DECIMAL" => {
            let precision = numbers.first().copied().unwrap_or(38);
            let scale = numbers.get(1).copied().unwrap_or(if numbers.is_empty() { 10 } else { 0 });
            if precision == 0 || precision > 38 || scale > precision {
                return Err(SqlError::Unsupported(format!(
                    "{text}: NUMERIC precision must be between 1 and 38 and the scale at most the precision"
                )));
            }
            DataType::Decimal128(precision as u8, scale as i8)
        }
        "TEXT" | "VARCHAR" | "CHARACTER VARYING" | "CHAR" | "CHARACTER" | "STRING" | "JSON" | "JSONB" | "UUID" => {
            DataType::Utf8
        }
        "DATE" => DataType::Date32,
        "TIMESTAMP" | "TIMESTAMP WITHOUT TIME ZONE" => DataType::Timestamp(TimeUnit::Microsecond, None),
        "TIMESTAMPTZ" | "TIMESTAMP WITH TIME ZONE" => DataType::Timestamp(TimeUnit::Microsecond, Some(UTC.into())),
        _ => {
            return Err(SqlError::Unsupported(format!(
                "type {text} is not supported; use BOOLEAN, SMALLINT, INT, BIGINT, REAL, DOUBLE PRECISION, \
                 NUMERIC(p,s), TEXT, VARCHAR, DATE, TIMESTAMP, TIMESTAMPTZ, JSONB or arrays of them (TEXT[])"
            )));
        }
    };
    Ok(data_type)
}

/// The SQL name of an Arrow type, as `SHOW` and error messages print it.
pub fn sql_type_name(data_type: &DataType) -> String {
    postgres_type_name(data_type).unwrap_or_else(|| data_type.to_string())
}

/// The PostgreSQL type that holds an Arrow type, when there is one.
pub fn postgres_type_name(data_type: &DataType) -> Option<String> {
    Some(match data_type {
        DataType::Boolean => "boolean".into(),
        DataType::Int16 => "smallint".into(),
        DataType::Int32 => "integer".into(),
        DataType::Int64 => "bigint".into(),
        DataType::Float32 => "real".into(),
        DataType::Float64 => "double precision".into(),
        DataType::Decimal128(p, s) => format!("numeric({p},{s})"),
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => "text".into(),
        DataType::Date32 => "date".into(),
        DataType::Timestamp(_, None) => "timestamp".into(),
        DataType::Timestamp(_, Some(_)) => "timestamptz".into(),
        DataType::Binary => "bytea".into(),
        DataType::Time64(_) => "time".into(),
        DataType::Interval(_) => "interval".into(),
        DataType::List(item) => format!("{}[]", postgres_type_name(item.data_type())?),
        _ => return None,
    })
}

/// Builds the catalog entry of a `CREATE TABLE` statement.
pub fn table_from_create(create: &ast::CreateTable) -> Result<Relation> {
    let name = object_name(&create.name)?;
    if create.query.is_some() {
        return Err(SqlError::Unsupported(
            "CREATE TABLE ... AS SELECT is not supported; create the table, then INSERT ... SELECT".into(),
        ));
    }
    if create.columns.is_empty() {
        return Err(SqlError::Unsupported(format!("table \"{name}\" needs at least one column")));
    }
    let mut fields: Vec<(String, DataType, bool)> = Vec::new();
    let mut primary_key: Vec<String> = Vec::new();
    for column in &create.columns {
        let column_name = normalize_ident(&column.name);
        if fields.iter().any(|(n, _, _)| *n == column_name) {
            return Err(SqlError::Catalog(format!("column \"{column_name}\" specified more than once")));
        }
        let data_type = arrow_type(&column.data_type)
            .map_err(|e| SqlError::Unsupported(format!("column \"{column_name}\": {e}")))?;
        let mut nullable = true;
        for option in &column.options {
            match &option.option {
                ColumnOption::Null => {}
                ColumnOption::NotNull => nullable = false,
                ColumnOption::PrimaryKey(_) => {
                    if !primary_key.is_empty() {
                        return Err(SqlError::Catalog(format!(
                            "multiple primary keys for table \"{name}\" are not allowed"
                        )));
                    }
                    primary_key.push(column_name.clone());
                }
                other => {
                    return Err(SqlError::Unsupported(format!(
                        "column \"{column_name}\": constraint {other} is not supported (PRIMARY KEY, NOT NULL and NULL are)"
                    )));
                }
            }
        }
        fields.push((column_name, data_type, nullable));
    }
    for constraint in &create.constraints {
        match constraint {
            TableConstraint::PrimaryKey(pk) => {
                if !primary_key.is_empty() {
                    return Err(SqlError::Catalog(format!(
                        "multiple primary keys for table \"{name}\" are not allowed"
                    )));
                }
                for column in &pk.columns {
                    match &column.column.expr {
                        ast::Expr::Identifier(ident) => primary_key.push(normalize_ident(ident)),
                        other => {
                            return Err(SqlError::Unsupported(format!(
                                "primary key on expression {other} is not supported"
                            )));
                        }
                    }
                }
            }
            other => {
                return Err(SqlError::Unsupported(format!(
                    "table constraint {other} is not supported (PRIMARY KEY is)"
                )));
            }
        }
    }
    let mut key_indexes = Vec::new();
    for key_column in &primary_key {
        let index = fields.iter().position(|(n, _, _)| n == key_column).ok_or_else(|| {
            SqlError::Catalog(format!("primary key column \"{key_column}\" does not exist in table \"{name}\""))
        })?;
        // Primary key columns are NOT NULL, as in PostgreSQL.
        fields[index].2 = false;
        key_indexes.push(index);
    }
    let schema = Schema::new(fields.into_iter().map(|(n, t, nullable)| Field::new(n, t, nullable)).collect::<Vec<_>>());
    Ok(Relation {
        name,
        kind: RelationKind::Table,
        schema: Arc::new(schema),
        primary_key: key_indexes,
        dependencies: Vec::new(),
        query: None,
        source: None,
    })
}

/// An identifier as PostgreSQL folds it: unquoted ones to lower case.
pub fn normalize_ident(ident: &ast::Ident) -> String {
    if ident.quote_style.is_some() { ident.value.clone() } else { ident.value.to_ascii_lowercase() }
}

/// The relation name of a possibly schema-qualified object name (`public.t` is `t`).
pub fn object_name(name: &ast::ObjectName) -> Result<String> {
    let parts: Vec<String> = name
        .0
        .iter()
        .map(|part| {
            part.as_ident()
                .map(normalize_ident)
                .ok_or_else(|| SqlError::Unsupported(format!("unsupported name {name}")))
        })
        .collect::<Result<_>>()?;
    match parts.as_slice() {
        [table] => Ok(table.clone()),
        [schema, table] if schema == "public" => Ok(table.clone()),
        _ => Err(SqlError::Unsupported(format!("name {name}: only the schema \"public\" exists"))),
    }
}
