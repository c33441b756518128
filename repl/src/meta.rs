//! The REPL's psql-style backslash commands that describe the catalog: `\d` (every
//! relation), `\dt` (tables and source relations), `\dv` (views), `\dm` (materialized
//! views) and `\d name` (a relation's columns, key and, for a view, its query).

use std::sync::Arc;

use changeflow_engine::Database;
use changeflow_sql::{Relation, RelationKind};
use datafusion::arrow::array::{RecordBatch, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema};

/// Runs a describing command; `None` when `command` is not one of them.
pub async fn describe(database: &Database, command: &str) -> Option<anyhow::Result<String>> {
    let mut words = command.split_whitespace();
    let head = words.next()?;
    let name = words.next();
    let kinds: &[RelationKind] = match (head, name) {
        ("\\d", Some(name)) => return Some(describe_relation(database, name).await),
        ("\\d", None) => &[
            RelationKind::Table,
            RelationKind::SourceRelation,
            RelationKind::View,
            RelationKind::MaterializedView,
            RelationKind::ChangeStream,
        ],
        ("\\dt", None) => &[RelationKind::Table, RelationKind::SourceRelation],
        ("\\dv", None) => &[RelationKind::View],
        ("\\dm", None) => &[RelationKind::MaterializedView],
        _ => return None,
    };
    let engine = database.engine().await;
    let rows: Vec<[String; 2]> = engine
        .catalog()
        .relations()
        .filter(|r| kinds.contains(&r.kind))
        .map(|r| [r.name.clone(), r.kind.describe().to_string()])
        .collect();
    Some(render(&["Name", "Type"], rows))
}

async fn describe_relation(database: &Database, name: &str) -> anyhow::Result<String> {
    let name = name.trim_matches('"');
    let lowered = name.to_ascii_lowercase();
    let engine = database.engine().await;
    let relation: &Relation = engine
        .catalog()
        .relation(name)
        .or_else(|| engine.catalog().relation(&lowered))
        .ok_or_else(|| anyhow::anyhow!("Did not find any relation named \"{name}\"."))?;
    let rows = relation
        .schema
        .fields()
        .iter()
        .enumerate()
        .map(|(i, field)| {
            let nullable = field.is_nullable() && !relation.primary_key.contains(&i);
            [
                field.name().clone(),
                changeflow_sql::ddl::sql_type_name(field.data_type()).to_ascii_lowercase(),
                if nullable { String::new() } else { "not null".into() },
            ]
        })
        .collect();
    let mut out = format!("{} \"{}\"\n", capitalized(relation.kind.describe()), relation.name);
    out.push_str(&render(&["Column", "Type", "Nullable"], rows)?);
    if !relation.primary_key.is_empty() {
        let key: Vec<&str> = relation.primary_key.iter().map(|&i| relation.schema.field(i).name().as_str()).collect();
        out.push_str(&format!("Primary key: ({})\n", key.join(", ")));
    }
    if let Some(source) = &relation.source {
        out.push_str(&format!("Source: {source}\n"));
    }
    if let Some(query) = &relation.query {
        out.push_str(&format!("View definition:\n {query};\n"));
    }
    Ok(out)
}

fn capitalized(text: &str) -> String {
    let mut chars = text.chars();
    chars.next().map(|first| first.to_uppercase().chain(chars).collect()).unwrap_or_default()
}

fn render<const N: usize>(headers: &[&str; N], rows: Vec<[String; N]>) -> anyhow::Result<String> {
    let schema =
        Arc::new(Schema::new(headers.iter().map(|h| Field::new(*h, DataType::Utf8, false)).collect::<Vec<_>>()));
    let columns =
        (0..N).map(|i| Arc::new(StringArray::from_iter_values(rows.iter().map(|row| row[i].as_str()))) as _).collect();
    let batch = RecordBatch::try_new(Arc::clone(&schema), columns)?;
    crate::format::table(&schema, &[batch])
}
