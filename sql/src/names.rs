//! Output column names as PostgreSQL chooses them: an unaliased `count(*)` is `count`, a
//! column reference keeps the column's name, a cast the name of what it casts, anything
//! else `?column?`. DataFusion names such columns after their expression (`count(*)`,
//! `Int64(1)`), which users of a PostgreSQL-speaking system do not expect.

use datafusion::arrow::datatypes::{Field, Schema};
use datafusion::sql::sqlparser::ast::{Expr, Query, SelectItem, SetExpr};

/// The PostgreSQL name of each select item, or None where DataFusion's name is kept
/// (aliases, and queries whose items cannot be matched to output columns one to one).
pub fn postgres_names(query: &Query) -> Option<Vec<Option<String>>> {
    let SetExpr::Select(select) = query.body.as_ref() else { return None };
    select
        .projection
        .iter()
        .map(|item| match item {
            SelectItem::UnnamedExpr(expr) => Some(Some(expression_name(expr).unwrap_or_else(|| "?column?".into()))),
            SelectItem::ExprWithAlias { .. } => Some(None),
            _ => None,
        })
        .collect()
}

fn expression_name(expr: &Expr) -> Option<String> {
    match expr {
        Expr::Identifier(ident) => Some(crate::ddl::normalize_ident(ident)),
        Expr::CompoundIdentifier(parts) => parts.last().map(crate::ddl::normalize_ident),
        Expr::Function(function) => {
            function.name.0.last().and_then(|part| part.as_ident()).map(|i| i.value.to_ascii_lowercase())
        }
        Expr::Cast { expr, data_type, .. } => expression_name(expr).or_else(|| {
            let name = data_type.to_string().to_ascii_lowercase();
            Some(name.split('(').next().unwrap_or(&name).trim().to_string())
        }),
        Expr::Nested(inner) => expression_name(inner),
        Expr::Case { .. } => Some("case".into()),
        _ => None,
    }
}

/// Renames a query's output columns to their PostgreSQL names.
pub fn apply_postgres_names(schema: &Schema, query: &Query) -> Schema {
    let Some(names) = postgres_names(query) else { return schema.clone() };
    if names.len() != schema.fields().len() {
        return schema.clone();
    }
    let fields: Vec<Field> = schema
        .fields()
        .iter()
        .zip(names)
        .map(|(field, name)| match name {
            Some(name) => field.as_ref().clone().with_name(name),
            None => field.as_ref().clone(),
        })
        .collect();
    Schema::new_with_metadata(fields, schema.metadata().clone())
}
