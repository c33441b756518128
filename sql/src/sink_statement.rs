//! `CREATE SINK name FROM relation INTO SYSTEM WITH (...) [ON ERROR FAIL | SKIP | DEAD LETTER
//! INTO SYSTEM WITH (...)]` and `DROP SINK [IF EXISTS] name`.

use std::collections::BTreeMap;

use datafusion::sql::sqlparser::tokenizer::Token;

use crate::error::Result;
use crate::parser::{Cursor, Statement, parse_with_options_and_secrets};

/// What a sink does with a change it cannot deliver (the target rejects it, or it cannot
/// be encoded). Transient failures are retried whatever the policy.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum OnError {
    /// The sink stops; nothing after the change is delivered.
    #[default]
    Fail,
    /// The change is logged, counted and left out.
    Skip,
    /// The change goes to another sink, with the error.
    DeadLetter { connector: String, options: BTreeMap<String, String>, secrets: BTreeMap<String, String> },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreateSink {
    pub name: String,
    /// The relation whose changes are delivered.
    pub relation: String,
    /// The system it delivers to (`FILE`, `POSTGRES`, ...), lower case.
    pub connector: String,
    pub options: BTreeMap<String, String>,
    /// Options given as `SECRET name` (option -> secret name); the engine puts the secret's
    /// value into `options` before the connector sees them.
    pub secrets: BTreeMap<String, String>,
    pub on_error: OnError,
    pub if_not_exists: bool,
}

pub(crate) fn parse_create_sink(text: &str) -> Result<Statement> {
    let mut cursor = Cursor::new(text)?;
    cursor.expect_word("CREATE")?;
    cursor.expect_word("SINK")?;
    let if_not_exists = cursor.accept_if_not_exists()?;
    let name = cursor.identifier("a sink name")?;
    cursor.expect_word("FROM")?;
    let mut relation = cursor.identifier("a relation (table, materialized view or source relation)")?;
    if relation == "changes" && cursor.accept_token(&Token::LParen) {
        let base = cursor.identifier("the relation whose changes the sink delivers")?;
        cursor.expect_token(&Token::RParen)?;
        relation = crate::change_stream::stream_name(&base);
    }
    cursor.expect_word("INTO")?;
    let connector = cursor.identifier("a sink system such as FILE or POSTGRES")?.to_ascii_lowercase();
    let (options, secrets) = parse_with_options_and_secrets(&mut cursor)?;
    let on_error = if cursor.accept_word("ON") {
        cursor.expect_word("ERROR")?;
        if cursor.accept_word("FAIL") {
            OnError::Fail
        } else if cursor.accept_word("SKIP") {
            OnError::Skip
        } else if cursor.accept_word("DEAD") {
            cursor.expect_word("LETTER")?;
            cursor.expect_word("INTO")?;
            let connector = cursor.identifier("a sink system for dead letters")?.to_ascii_lowercase();
            let (options, secrets) = parse_with_options_and_secrets(&mut cursor)?;
            OnError::DeadLetter { connector, options, secrets }
        } else {
            return cursor.error("FAIL, SKIP or DEAD LETTER INTO ... after ON ERROR");
        }
    } else {
        OnError::Fail
    };
    if cursor.peek() != &Token::EOF && cursor.peek() != &Token::SemiColon {
        return cursor.error("end of statement (or ON ERROR ...)");
    }
    Ok(Statement::CreateSink(CreateSink { name, relation, connector, options, secrets, on_error, if_not_exists }))
}

pub(crate) fn parse_drop_sink(text: &str) -> Result<Statement> {
    let mut cursor = Cursor::new(text)?;
    cursor.expect_word("DROP")?;
    cursor.expect_word("SINK")?;
    let if_exists = cursor.accept_if_exists()?;
    let name = cursor.identifier("a sink name")?;
    cursor.expect_end()?;
    Ok(Statement::DropSink { name, if_exists })
}

#[cfg(test)]
mod tests {
    use crate::parser::{Statement, parse_sql};

    use super::*;

    fn create(sql: &str) -> CreateSink {
        match parse_sql(sql).expect("parses").remove(0).statement {
            Statement::CreateSink(create) => create,
            other => panic!("not a sink: {other:?}"),
        }
    }

    #[test]
    fn parses_sinks_with_error_policies() {
        let sink = create("CREATE SINK out FROM calendar INTO FILE WITH (path = '/tmp/x', format = 'json')");
        assert_eq!(sink.relation, "calendar");
        assert_eq!(sink.connector, "file");
        assert_eq!(sink.options["format"], "json");
        assert_eq!(sink.on_error, OnError::Fail);
        let sink = create("CREATE SINK out FROM changes(orders) INTO FILE WITH (path = 'x')");
        assert_eq!(sink.relation, "changes(orders)");
        let sink = create("CREATE SINK out FROM t INTO POSTGRES WITH (url = 'u', table = 't') ON ERROR SKIP");
        assert_eq!(sink.on_error, OnError::Skip);
        let sink =
            create("CREATE SINK IF NOT EXISTS out FROM t INTO FILE ON ERROR DEAD LETTER INTO FILE WITH (path = 'dlq')");
        assert!(sink.if_not_exists);
        assert!(
            matches!(sink.on_error, OnError::DeadLetter { ref connector, ref options, .. } if connector == "file" && options["path"] == "dlq")
        );
    }

    #[test]
    fn a_bad_policy_names_what_was_expected() {
        let error = parse_sql("CREATE SINK out FROM t INTO FILE ON ERROR IGNORE").expect_err("bad policy");
        assert!(error.to_string().contains("FAIL, SKIP or DEAD LETTER"), "{error}");
    }
}
