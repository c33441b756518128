//! Output column names as PostgreSQL chooses them: an unaliased `count(*)` is `count`, a
//! column reference keeps the column's name, a cast the name of what it casts, anything
//! else `?column?`. DataFusion names such columns after their expression (`count(*)`,
//! `Int64(1)`), which users of a PostgreSQL-speaking system do not expect.

use std::ops::ControlFlow;

use datafusion::arrow::datatypes::{Field, Schema};
use datafusion::sql::sqlparser::ast::{Expr, Ident, Query, SelectItem, SetExpr, Statement, VisitMut, VisitorMut};

/// The PostgreSQL name of each select item, or None where DataFusion's name is kept
/// (aliases, and queries whose items cannot be matched to output columns one to one).
pub fn postgres_names(query: &Query) -> Option<Vec<Option<String>>> {
    let SetExpr::Select(select) = query.body.as_ref() else { return None };
    select
        .projection
        .iter()
        .map(|item| match item {
            SelectItem::UnnamedExpr(expr) => Some(Some(expression_name(expr).unwrap_or_else(|| "?column?".into()))),
            SelectItem::ExprWithAlias { alias, .. } => Some(Some(crate::ddl::normalize_ident(alias))),
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

/// Gives the second and later of select items with the same name (`SELECT a + b, a + b`,
/// `SELECT x AS n, y AS n`: legal in PostgreSQL, refused by DataFusion's planner) names of
/// their own for planning; [`apply_postgres_names`] of the written query names the output
/// columns as PostgreSQL does.
pub fn name_duplicate_items(statement: &mut Statement) {
    struct Namer;
    impl VisitorMut for Namer {
        type Break = ();
        fn pre_visit_query(&mut self, query: &mut Query) -> ControlFlow<()> {
            name_duplicates_in(&mut query.body);
            ControlFlow::Continue(())
        }
    }
    let _ = statement.visit(&mut Namer);
}

fn name_duplicates_in(body: &mut SetExpr) {
    match body {
        SetExpr::Select(select) => {
            let mut seen = std::collections::HashSet::new();
            for (position, item) in select.projection.iter_mut().enumerate() {
                let key = match item {
                    SelectItem::UnnamedExpr(Expr::Identifier(ident)) => crate::ddl::normalize_ident(ident),
                    SelectItem::UnnamedExpr(Expr::CompoundIdentifier(parts)) => {
                        parts.last().map(crate::ddl::normalize_ident).unwrap_or_default()
                    }
                    SelectItem::UnnamedExpr(expr) => expr.to_string(),
                    SelectItem::ExprWithAlias { alias, .. } => crate::ddl::normalize_ident(alias),
                    _ => continue,
                };
                if seen.insert(key.clone()) {
                    continue;
                }
                let alias = Ident::with_quote('"', format!("{key}#{}", position + 1));
                *item = match std::mem::replace(item, SelectItem::Wildcard(Default::default())) {
                    SelectItem::UnnamedExpr(expr) | SelectItem::ExprWithAlias { expr, .. } => {
                        SelectItem::ExprWithAlias { expr, alias }
                    }
                    other => other,
                };
            }
        }
        SetExpr::SetOperation { left, right, .. } => {
            name_duplicates_in(left);
            name_duplicates_in(right);
        }
        _ => {}
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
