//! `changes(relation)`: the change events of a table, source relation or materialized view
//! as an append-only relation with columns `op` ('r', 'c', 'u', 'd'), `before` and `after`
//! (structs of the relation's columns, NULL where absent) and `source` (`lsn`, `tx_id`,
//! `commit_ts`, `table`, `snapshot`). Only what happens after a view or sink starts reading
//! it is in it: its past is not stored.

use std::sync::Arc;

use datafusion::arrow::datatypes::{DataType, Field, Fields, Schema, SchemaRef, TimeUnit};
use datafusion::sql::sqlparser::ast::{self, Visit, Visitor};
use std::ops::ControlFlow;

use crate::catalog::{Catalog, Relation, RelationKind};
use crate::error::{Result, SqlError};

/// The name `changes(base)` is known by in the catalog.
pub fn stream_name(base: &str) -> String {
    format!("changes({base})")
}

/// The base relation of a stream name.
pub fn base_of(stream: &str) -> Option<&str> {
    stream.strip_prefix("changes(")?.strip_suffix(')')
}

/// The columns of `source` metadata.
pub fn source_fields() -> Fields {
    Fields::from(vec![
        Field::new("lsn", DataType::Utf8, true),
        Field::new("tx_id", DataType::Int64, true),
        Field::new("commit_ts", DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())), true),
        Field::new("table", DataType::Utf8, false),
        Field::new("snapshot", DataType::Boolean, false),
    ])
}

/// The schema of `changes(base)`.
pub fn schema(base: &Relation) -> SchemaRef {
    let row = DataType::Struct(base.schema.fields().iter().map(|f| f.as_ref().clone().with_nullable(true)).collect());
    Arc::new(Schema::new(vec![
        Field::new("op", DataType::Utf8, false),
        Field::new("before", row.clone(), true),
        Field::new("after", row, true),
        Field::new("source", DataType::Struct(source_fields()), false),
    ]))
}

/// The catalog entry of `changes(base)`; the base must be a stored relation.
pub fn stream_relation(catalog: &Catalog, base: &str) -> Result<Relation> {
    let relation = catalog.require_relation(base)?;
    if !matches!(relation.kind, RelationKind::Table | RelationKind::SourceRelation | RelationKind::MaterializedView) {
        return Err(SqlError::Catalog(format!(
            "changes(...) reads a table, source relation or materialized view; \"{base}\" is a {}",
            relation.kind.describe()
        )));
    }
    Ok(Relation {
        name: stream_name(base),
        kind: RelationKind::ChangeStream,
        schema: schema(relation),
        primary_key: Vec::new(),
        dependencies: vec![base.to_string()],
        query: None,
        source: None,
    })
}

/// The relations a statement reads through `changes(...)`, in order of appearance.
pub fn streams_in(statement: &ast::Statement) -> Result<Vec<String>> {
    struct Finder {
        found: Vec<String>,
        error: Option<SqlError>,
    }
    impl Visitor for Finder {
        type Break = ();
        fn pre_visit_table_factor(&mut self, factor: &ast::TableFactor) -> ControlFlow<()> {
            if let ast::TableFactor::Table { name, args: Some(args), .. } = factor
                && name.to_string().eq_ignore_ascii_case("changes")
            {
                match changes_argument(&args.args) {
                    Ok(base) => {
                        if !self.found.contains(&base) {
                            self.found.push(base);
                        }
                    }
                    Err(error) => {
                        self.error = Some(error);
                        return ControlFlow::Break(());
                    }
                }
            }
            ControlFlow::Continue(())
        }
    }
    let mut finder = Finder { found: Vec::new(), error: None };
    let _ = statement.visit(&mut finder);
    match finder.error {
        Some(error) => Err(error),
        None => Ok(finder.found),
    }
}

/// The relation named by `changes(x)`'s one argument (an identifier or a string).
fn changes_argument(args: &[ast::FunctionArg]) -> Result<String> {
    let bad = || SqlError::Unsupported("changes(...) takes one relation name, as in changes(orders)".into());
    let [ast::FunctionArg::Unnamed(ast::FunctionArgExpr::Expr(expr))] = args else { return Err(bad()) };
    match expr {
        ast::Expr::Identifier(ident) => Ok(crate::ddl::normalize_ident(ident)),
        ast::Expr::Value(value) => match &value.value {
            ast::Value::SingleQuotedString(name) => Ok(name.clone()),
            _ => Err(bad()),
        },
        _ => Err(bad()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_relations_read_through_changes() {
        let statements = crate::parse_sql(
            "CREATE MATERIALIZED VIEW v AS SELECT after.id FROM changes(orders) c \
             JOIN t ON true WHERE before.status IS DISTINCT FROM after.status",
        )
        .expect("parses");
        let crate::parser::Statement::Sql(statement) = &statements[0].statement else { panic!("sql") };
        assert_eq!(streams_in(statement).expect("streams"), vec!["orders".to_string()]);
        assert_eq!(base_of(&stream_name("orders")), Some("orders"));
    }
}
