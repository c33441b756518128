//! Object definitions as the data directory keeps them: the DDL statement that created each
//! live object, in creation order (replayed on start), with the relations of a source as
//! its connector declared them (so a restart needs no upstream catalog), and the comparison
//! that makes re-running the same DDL after a restart a no-op.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use changeflow_sql::ddl::object_name;
use changeflow_sql::parser::Statement;
use changeflow_sql::sink_statement::OnError;
use datafusion::sql::sqlparser::ast;
use serde_json::{Value, json};

use super::ipc::{decode_schema, encode_schema};
use crate::connector::{SourceRelationDef, UpstreamTable};
use crate::error::{EngineError, Result};

/// The statement that created a live object.
#[derive(Debug, Clone)]
pub(crate) struct Definition {
    /// The object's name (a relation's, or a source's).
    pub name: String,
    pub sql: String,
    /// A source's relations, as declared when it was created.
    pub relations: Vec<SourceRelationDef>,
}

impl Definition {
    pub(crate) fn to_json(&self) -> Result<Value> {
        let relations = self
            .relations
            .iter()
            .map(|r| {
                Ok(json!({
                    "name": r.name,
                    "primary_key": r.primary_key,
                    "expected_rows": r.expected_rows,
                    "upstream": r.upstream.as_ref().map(|u| json!({
                        "database": u.database, "schema": u.schema, "table": u.table,
                    })),
                    "schema": BASE64.encode(encode_schema(&r.schema)?),
                }))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(json!({ "name": self.name, "sql": self.sql, "relations": relations }))
    }

    pub(crate) fn from_json(value: &Value) -> Result<Self> {
        let text = |v: &Value, key: &str| {
            v.get(key)
                .and_then(Value::as_str)
                .map(str::to_string)
                .ok_or_else(|| EngineError::Durability(format!("a stored definition has no \"{key}\"")))
        };
        let mut relations = Vec::new();
        for relation in value.get("relations").and_then(Value::as_array).into_iter().flatten() {
            let schema = BASE64
                .decode(text(relation, "schema")?)
                .map_err(|e| EngineError::Durability(format!("a stored schema is not base64: {e}")))?;
            relations.push(SourceRelationDef {
                name: text(relation, "name")?,
                schema: decode_schema(&schema)?,
                primary_key: relation
                    .get("primary_key")
                    .and_then(Value::as_array)
                    .map(|k| k.iter().filter_map(Value::as_u64).map(|i| i as usize).collect())
                    .unwrap_or_default(),
                expected_rows: relation.get("expected_rows").and_then(Value::as_u64).unwrap_or(0),
                upstream: match relation.get("upstream") {
                    Some(upstream) if upstream.is_object() => Some(UpstreamTable {
                        database: text(upstream, "database")?,
                        schema: text(upstream, "schema")?,
                        table: text(upstream, "table")?,
                    }),
                    _ => None,
                },
            });
        }
        Ok(Self { name: text(value, "name")?, sql: text(value, "sql")?, relations })
    }
}

/// The object a CREATE statement defines, and its definition in a canonical form (the
/// statement as the parser understood it, without IF NOT EXISTS), to compare with the stored
/// one. `None` for any other statement.
pub(crate) fn created_object(statement: &Statement) -> Option<(String, String)> {
    match statement {
        // Options that name a secret compare by the secret's name, never its value.
        Statement::CreateSource(create) => {
            let mut canonical = create.clone();
            canonical.if_not_exists = false;
            canonical.options.retain(|key, _| !create.secrets.contains_key(key));
            Some((create.name.clone(), format!("{canonical:?}")))
        }
        Statement::CreateSink(create) => {
            let mut canonical = create.clone();
            canonical.if_not_exists = false;
            canonical.options.retain(|key, _| !create.secrets.contains_key(key));
            if let OnError::DeadLetter { options, secrets, .. } = &mut canonical.on_error {
                options.retain(|key, _| !secrets.contains_key(key));
            }
            Some((create.name.clone(), format!("{canonical:?}")))
        }
        Statement::Sql(sql) => match sql.as_ref() {
            ast::Statement::CreateTable(create) => {
                let mut canonical = create.clone();
                canonical.if_not_exists = false;
                Some((object_name(&create.name).ok()?, ast::Statement::CreateTable(canonical).to_string()))
            }
            ast::Statement::CreateView(view) => {
                let mut canonical = view.clone();
                canonical.if_not_exists = false;
                Some((object_name(&view.name).ok()?, ast::Statement::CreateView(canonical).to_string()))
            }
            _ => None,
        },
        _ => None,
    }
}

/// Explains how two canonical definitions differ: the first word where they part.
pub(crate) fn difference(stored: &str, given: &str) -> String {
    let stored_words: Vec<&str> = stored.split_whitespace().collect();
    let given_words: Vec<&str> = given.split_whitespace().collect();
    let at = stored_words.iter().zip(&given_words).take_while(|(a, b)| a == b).count();
    let word = |words: &[&str]| words.get(at).map_or("the end".to_string(), |w| format!("`{w}`"));
    let difference =
        format!("the stored definition has {} where this one has {}", word(&stored_words), word(&given_words));
    crate::redact::redact_credentials(&difference)
}
