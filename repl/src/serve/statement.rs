//! What a client sends, sorted: statements for the engine, SUBSCRIBE (streamed), and session
//! commands the server answers itself (`SET`, `SHOW variable`, `RESET`, `DISCARD`), with the
//! description the extended query protocol needs (parameter types, result columns).

use std::sync::Arc;

use changeflow_engine::{Database, EngineError};
use changeflow_sql::parser::{ParsedStatement, Statement, StatementText, parse_statement};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use pgwire::api::Type;
use pgwire::error::{ErrorInfo, PgWireError};

use super::params;

/// One statement as the server runs it.
#[derive(Debug, Clone)]
pub enum Command {
    Engine(ParsedStatement),
    Subscribe {
        relation: String,
        snapshot: bool,
    },
    Set {
        name: String,
        value: String,
    },
    ShowVariable(String),
    /// RESET, DISCARD and other session commands with nothing to do but acknowledge.
    Acknowledge(&'static str),
}

/// A parsed and described statement (the extended protocol's prepared statement).
#[derive(Debug, Clone)]
pub struct Prepared {
    pub command: Command,
    pub parameters: Vec<Type>,
    pub columns: Option<SchemaRef>,
}

/// The wire error of an engine error, credentials masked (a definition may quote a URL).
pub fn engine_error(error: EngineError) -> PgWireError {
    user_error(error.sqlstate(), changeflow_engine::redact::redact_credentials(&error.to_string()))
}

pub fn user_error(code: &str, message: String) -> PgWireError {
    PgWireError::UserError(Box::new(ErrorInfo::new("ERROR".into(), code.into(), message)))
}

/// `text` after its leading `word` (ASCII, any case), or None when it does not start with it.
/// Never slices inside a character, whatever the text holds.
pub fn after_keyword<'a>(text: &'a str, word: &str) -> Option<&'a str> {
    let head = text.get(..word.len())?;
    head.eq_ignore_ascii_case(word).then(|| &text[word.len()..])
}

fn words(text: &str, n: usize) -> Vec<String> {
    text.split(|c: char| c.is_whitespace() || c == '=' || c == ';')
        .filter(|w| !w.is_empty())
        .take(n)
        .map(|w| w.to_ascii_uppercase())
        .collect()
}

/// Sorts one statement's text into a command.
pub fn command(source: &StatementText) -> Result<Command, PgWireError> {
    let text = source.text.trim();
    let head = words(text, 2);
    let first = head.first().map(String::as_str).unwrap_or("");
    let second = head.get(1).map(String::as_str).unwrap_or("");
    match first {
        "SET" => return Ok(parse_set(text)),
        "RESET" => return Ok(Command::Acknowledge("RESET")),
        "DISCARD" => return Ok(Command::Acknowledge("DISCARD ALL")),
        "SHOW" if !matches!(second, "TABLES" | "VIEWS" | "MATERIALIZED" | "SOURCES" | "SINKS") => {
            let rest = after_keyword(text, "SHOW").unwrap_or_default();
            let name = rest.trim().trim_end_matches(';').trim().to_ascii_lowercase();
            return Ok(Command::ShowVariable(name));
        }
        _ => {}
    }
    let parsed = parse_statement(source).map_err(|e| engine_error(e.into()))?;
    Ok(match parsed.statement {
        Statement::Subscribe { relation, snapshot } => Command::Subscribe { relation, snapshot },
        _ => Command::Engine(parsed),
    })
}

/// `SET [SESSION | LOCAL] name { = | TO } value`, and `SET TIME ZONE value`.
fn parse_set(text: &str) -> Command {
    let mut rest = after_keyword(text, "SET").unwrap_or_default().trim();
    for scope in ["SESSION ", "LOCAL "] {
        if let Some(after) = after_keyword(rest, scope) {
            rest = after.trim_start();
        }
    }
    if let Some(zone) = after_keyword(rest, "TIME ZONE") {
        return Command::Set { name: "timezone".into(), value: unquote(zone.trim()) };
    }
    let (name, value) = rest.split_at(rest.find(|c: char| c.is_whitespace() || c == '=').unwrap_or(rest.len()));
    let mut value = value.trim_start();
    if let Some(stripped) = value.strip_prefix('=') {
        value = stripped;
    } else if let Some(stripped) = after_keyword(value, "TO") {
        value = stripped;
    }
    Command::Set { name: name.to_ascii_lowercase(), value: unquote(value.trim()) }
}

fn unquote(value: &str) -> String {
    value.trim_end_matches(';').trim().trim_matches('\'').to_string()
}

/// One text column named after a session variable.
pub fn variable_schema(name: &str) -> SchemaRef {
    Arc::new(Schema::new(vec![Field::new(name, DataType::Utf8, true)]))
}

/// Parses and describes a statement for the extended protocol.
pub async fn prepare(database: &Database, sql: &str, client_types: &[Option<Type>]) -> Result<Prepared, PgWireError> {
    let statements = changeflow_sql::parser::split_statements(sql).map_err(|e| engine_error(e.into()))?;
    let source = match statements.as_slice() {
        [one] => one,
        _ => {
            return Err(user_error("42601", "cannot insert multiple commands into a prepared statement".into()));
        }
    };
    let command = command(source)?;
    let (columns, inferred): (Option<SchemaRef>, Vec<Option<DataType>>) = match &command {
        Command::Engine(statement) => {
            let description = database.describe(statement).await.map_err(engine_error)?;
            let count = params::count(statement);
            let mut inferred = description.parameters;
            inferred.resize(count.max(inferred.len()), None);
            if inferred.iter().any(Option::is_none) {
                let engine = database.engine().await;
                for (n, data_type) in params::infer_for_write(statement, engine.catalog()) {
                    if let Some(slot) = inferred.get_mut(n - 1)
                        && slot.is_none()
                    {
                        *slot = Some(data_type);
                    }
                }
            }
            (description.columns, inferred)
        }
        Command::Subscribe { relation, .. } => {
            let schema = database.engine().await.subscription_schema(relation).map_err(engine_error)?;
            (Some(schema), Vec::new())
        }
        Command::ShowVariable(name) => (Some(variable_schema(name)), Vec::new()),
        Command::Set { .. } | Command::Acknowledge(_) => (None, Vec::new()),
    };
    let parameters = params::wire_types(inferred.len().max(client_types.len()), client_types, &|n| {
        inferred.get(n - 1).cloned().flatten()
    });
    Ok(Prepared { command, parameters, columns })
}
