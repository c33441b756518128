//! Statement parser: splits a SQL text into statements (keeping where each starts), parses
//! standard SQL with sqlparser's PostgreSQL dialect and adds changeflow's own statements
//! (`CREATE SOURCE`, `DROP SOURCE`, `SHOW ...`, `EXPLAIN CREATE MATERIALIZED VIEW`), the way
//! DataFusion's `DFParser` adds `CREATE EXTERNAL TABLE`.

use std::collections::BTreeMap;

use datafusion::sql::sqlparser::ast;
use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
use datafusion::sql::sqlparser::parser::{Parser, ParserError};
use datafusion::sql::sqlparser::tokenizer::{Token, TokenWithSpan, Tokenizer, Whitespace};

use crate::error::{Position, Result, SqlError};

/// One statement's text and where it starts in the file it came from.
#[derive(Debug, Clone)]
pub struct StatementText {
    pub text: String,
    pub position: Position,
}

/// A parsed statement with its text and starting position.
#[derive(Debug, Clone)]
pub struct ParsedStatement {
    pub statement: Statement,
    pub text: String,
    pub position: Position,
}

/// What changeflow understands: plain SQL, or one of its own statements.
#[derive(Debug, Clone)]
pub enum Statement {
    Sql(Box<ast::Statement>),
    CreateSource(CreateSource),
    DropSource {
        name: String,
        if_exists: bool,
        /// Drops the views and sinks that read its relations too.
        cascade: bool,
    },
    Show(ShowKind),
    /// `EXPLAIN CREATE MATERIALIZED VIEW ...`: print the incremental dataflow.
    ExplainView(Box<ast::Statement>),
    /// `SUBSCRIBE [TO] relation [WITH (snapshot = true | false)]`: stream its changes.
    Subscribe {
        relation: String,
        snapshot: bool,
    },
    CreateSink(crate::sink_statement::CreateSink),
    DropSink {
        name: String,
        if_exists: bool,
    },
    CreateSecret(crate::secret_statement::CreateSecret),
    DropSecret {
        name: String,
        if_exists: bool,
    },
    /// `SHOW CREATE TABLE | VIEW | MATERIALIZED VIEW | SOURCE | SINK name`: the statement
    /// that defined the object (credentials masked). `kind` is as written, upper case.
    ShowCreate {
        kind: String,
        name: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShowKind {
    Tables,
    Views,
    MaterializedViews,
    Sources,
    Sinks,
    Secrets,
}

/// `CREATE SOURCE name FROM CONNECTOR WITH (key = 'value', ...)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreateSource {
    pub name: String,
    pub connector: String,
    pub options: BTreeMap<String, String>,
    /// Options given as `SECRET name` (option -> secret name); the engine puts the secret's
    /// value into `options` before the connector sees them.
    pub secrets: BTreeMap<String, String>,
    pub tables: SourceTables,
    pub if_not_exists: bool,
}

/// The upstream tables a source captures: `FOR ALL TABLES`, `FOR TABLES (schema.table [AS
/// name], ...)`, or the connector's own choice when the clause is absent.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum SourceTables {
    #[default]
    Unspecified,
    All,
    List(Vec<SourceTable>),
}

/// One upstream table: its schema (when qualified), its name, and the relation name it gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceTable {
    pub schema: Option<String>,
    pub table: String,
    pub alias: Option<String>,
}

impl SourceTable {
    /// The name of the relation the table feeds: its alias, or the table's own name.
    pub fn relation_name(&self) -> &str {
        self.alias.as_deref().unwrap_or(&self.table)
    }
}

/// Splits `sql` into statements at top-level semicolons. Comments and blank text between
/// statements are dropped; a statement's position is that of its first token.
pub fn split_statements(sql: &str) -> Result<Vec<StatementText>> {
    let dialect = PostgreSqlDialect {};
    let tokens = Tokenizer::new(&dialect, sql).tokenize_with_location().map_err(|e| SqlError::Syntax {
        message: e.message.clone(),
        position: Some(Position { line: e.location.line, column: e.location.column }),
    })?;
    let line_starts = line_offsets(sql);
    let offset_of = |token: &TokenWithSpan| -> usize {
        let location = token.span.start;
        let line_start = line_starts.get(location.line.saturating_sub(1) as usize).copied().unwrap_or(0);
        // sqlparser counts columns in characters.
        sql[line_start..]
            .char_indices()
            .nth(location.column.saturating_sub(1) as usize)
            .map(|(i, _)| line_start + i)
            .unwrap_or(sql.len())
    };

    let mut statements = Vec::new();
    let mut start: Option<&TokenWithSpan> = None;
    for token in &tokens {
        match &token.token {
            Token::Whitespace(_) => {}
            Token::SemiColon => {
                if let Some(first) = start.take() {
                    let text = sql[offset_of(first)..offset_of(token)].trim_end().to_string();
                    statements.push(StatementText {
                        text,
                        position: Position { line: first.span.start.line, column: first.span.start.column },
                    });
                }
            }
            Token::EOF => {}
            _ => {
                if start.is_none() {
                    start = Some(token);
                }
            }
        }
    }
    if let Some(first) = start {
        let text = sql[offset_of(first)..].trim_end().to_string();
        statements.push(StatementText {
            text,
            position: Position { line: first.span.start.line, column: first.span.start.column },
        });
    }
    Ok(statements)
}

fn line_offsets(sql: &str) -> Vec<usize> {
    std::iter::once(0).chain(sql.match_indices('\n').map(|(i, _)| i + 1)).collect()
}

/// Parses every statement of `sql`, stopping at the first error.
pub fn parse_sql(sql: &str) -> Result<Vec<ParsedStatement>> {
    split_statements(sql)?.iter().map(parse_statement).collect()
}

/// Parses one statement. Errors carry positions relative to the whole text.
pub fn parse_statement(source: &StatementText) -> Result<ParsedStatement> {
    let statement = parse_one(&source.text).map_err(|error| match error {
        SqlError::Syntax { message, position } => {
            let inner = position.or_else(|| message.contains("EOF").then(|| end_position(&source.text)));
            SqlError::Syntax {
                message: message.replace("found: EOF", "found: end of statement"),
                position: Some(match inner {
                    Some(inner) => absolute_position(source.position, inner),
                    None => source.position,
                }),
            }
        }
        other => other,
    })?;
    Ok(ParsedStatement { statement, text: source.text.clone(), position: source.position })
}

/// The position just after the last character of a text.
fn end_position(text: &str) -> Position {
    let line = text.lines().count().max(1) as u64;
    let column = text.lines().last().map(|l| l.chars().count()).unwrap_or(0) as u64 + 1;
    Position { line, column }
}

/// Turns a position inside a statement into one inside the file the statement starts in.
pub fn absolute_position(statement_start: Position, inner: Position) -> Position {
    if inner.line <= 1 {
        Position { line: statement_start.line, column: statement_start.column + inner.column.saturating_sub(1) }
    } else {
        Position { line: statement_start.line + inner.line - 1, column: inner.column }
    }
}

fn parse_one(text: &str) -> Result<Statement> {
    let words = leading_words(text, 4);
    let word = |i: usize| words.get(i).map(String::as_str).unwrap_or("");
    match (word(0), word(1)) {
        ("CREATE", "SOURCE") => return parse_create_source(text),
        ("DROP", "SOURCE") => return parse_drop_source(text),
        ("CREATE", "SINK") => return crate::sink_statement::parse_create_sink(text),
        ("DROP", "SINK") => return crate::sink_statement::parse_drop_sink(text),
        ("CREATE", "SECRET") => return crate::secret_statement::parse_create_secret(text),
        ("DROP", "SECRET") => return crate::secret_statement::parse_drop_secret(text),
        ("SHOW", _) => return parse_show(text, &words),
        ("SUBSCRIBE", _) => return parse_subscribe(text),
        ("EXPLAIN", "CREATE") => {
            let rest = text.trim_start()["EXPLAIN".len()..].to_string();
            let leading = text.len() - text.trim_start().len() + "EXPLAIN".len();
            let statement = parse_standard(&rest).map_err(|e| shift_columns(e, leading as u64))?;
            return match statement {
                ast::Statement::CreateView(ref view) if view.materialized => {
                    Ok(Statement::ExplainView(Box::new(statement)))
                }
                _ => Err(SqlError::Unsupported("EXPLAIN CREATE is supported for CREATE MATERIALIZED VIEW only".into())),
            };
        }
        _ => {}
    }
    Ok(Statement::Sql(Box::new(parse_standard(text)?)))
}

fn shift_columns(error: SqlError, by: u64) -> SqlError {
    match error {
        SqlError::Syntax { message, position: Some(p) } if p.line == 1 => {
            SqlError::Syntax { message, position: Some(Position { line: 1, column: p.column + by }) }
        }
        other => other,
    }
}

fn parse_standard(text: &str) -> Result<ast::Statement> {
    let dialect = PostgreSqlDialect {};
    let mut statements = Parser::new(&dialect)
        .try_with_sql(text)
        .and_then(|mut parser| parser.parse_statements())
        .map_err(syntax_error)?;
    match statements.len() {
        1 => crate::depth::check_depth(statements.remove(0), text.len()),
        0 => Err(SqlError::Syntax { message: "empty statement".into(), position: None }),
        _ => {
            crate::depth::drop_deep(statements, text.len());
            Err(SqlError::Syntax { message: "expected one statement".into(), position: None })
        }
    }
}

/// Converts sqlparser's error, whose text ends in " at Line: L, Column: C", into a
/// message and a position.
pub fn syntax_error(error: ParserError) -> SqlError {
    let text = match error {
        ParserError::TokenizerError(m) | ParserError::ParserError(m) => m,
        ParserError::RecursionLimitExceeded => "statement nests too deeply".to_string(),
    };
    if let Some(index) = text.rfind(" at Line: ") {
        let (message, location) = text.split_at(index);
        let mut numbers = location
            .split(|c: char| !c.is_ascii_digit())
            .filter(|s| !s.is_empty())
            .filter_map(|s| s.parse::<u64>().ok());
        if let (Some(line), Some(column)) = (numbers.next(), numbers.next()) {
            return SqlError::Syntax { message: message.to_string(), position: Some(Position { line, column }) };
        }
    }
    SqlError::Syntax { message: text, position: None }
}

/// The first `n` words of a statement, upper-cased, skipping comments.
fn leading_words(text: &str, n: usize) -> Vec<String> {
    let dialect = PostgreSqlDialect {};
    let Ok(tokens) = Tokenizer::new(&dialect, text).tokenize() else {
        return Vec::new();
    };
    tokens
        .into_iter()
        .filter(|t| !matches!(t, Token::Whitespace(_)))
        .take(n)
        .map(|t| match t {
            Token::Word(w) => w.value.to_ascii_uppercase(),
            other => other.to_string(),
        })
        .collect()
}

/// A small cursor over the tokens of one of changeflow's own statements.
pub(crate) struct Cursor {
    tokens: Vec<TokenWithSpan>,
    index: usize,
}

impl Cursor {
    pub(crate) fn new(text: &str) -> Result<Self> {
        let dialect = PostgreSqlDialect {};
        let tokens = Tokenizer::new(&dialect, text)
            .tokenize_with_location()
            .map_err(|e| SqlError::Syntax {
                message: e.message.clone(),
                position: Some(Position { line: e.location.line, column: e.location.column }),
            })?
            .into_iter()
            .filter(|t| {
                !matches!(
                    t.token,
                    Token::Whitespace(
                        Whitespace::Space
                            | Whitespace::Newline
                            | Whitespace::Tab
                            | Whitespace::SingleLineComment { .. }
                            | Whitespace::MultiLineComment(_)
                    )
                )
            })
            .collect();
        Ok(Self { tokens, index: 0 })
    }

    pub(crate) fn peek(&self) -> &Token {
        self.tokens.get(self.index).map(|t| &t.token).unwrap_or(&Token::EOF)
    }

    pub(crate) fn position(&self) -> Option<Position> {
        self.tokens
            .get(self.index)
            .or_else(|| self.tokens.last())
            .map(|t| Position { line: t.span.start.line, column: t.span.start.column })
    }

    pub(crate) fn error<T>(&self, expected: &str) -> Result<T> {
        let found = match self.peek() {
            Token::EOF => "end of statement".to_string(),
            other => format!("'{other}'"),
        };
        Err(SqlError::Syntax { message: format!("expected {expected}, found {found}"), position: self.position() })
    }

    pub(crate) fn next(&mut self) -> Token {
        let token = self.peek().clone();
        self.index += 1;
        token
    }

    fn is_word(&self, word: &str) -> bool {
        matches!(self.peek(), Token::Word(w) if w.quote_style.is_none() && w.value.eq_ignore_ascii_case(word))
    }

    pub(crate) fn accept_word(&mut self, word: &str) -> bool {
        let found = self.is_word(word);
        if found {
            self.index += 1;
        }
        found
    }

    pub(crate) fn expect_word(&mut self, word: &str) -> Result<()> {
        if self.accept_word(word) { Ok(()) } else { self.error(word) }
    }

    pub(crate) fn accept_token(&mut self, token: &Token) -> bool {
        let found = self.peek() == token;
        if found {
            self.index += 1;
        }
        found
    }

    pub(crate) fn expect_token(&mut self, token: &Token) -> Result<()> {
        if self.accept_token(token) { Ok(()) } else { self.error(&format!("'{token}'")) }
    }

    /// An identifier; unquoted ones are folded to lower case as PostgreSQL does.
    pub(crate) fn identifier(&mut self, what: &str) -> Result<String> {
        match self.peek().clone() {
            Token::Word(w) => {
                self.index += 1;
                Ok(if w.quote_style.is_some() { w.value } else { w.value.to_ascii_lowercase() })
            }
            _ => self.error(what),
        }
    }

    /// `IF NOT EXISTS`, if present.
    pub(crate) fn accept_if_not_exists(&mut self) -> Result<bool> {
        if !self.accept_word("IF") {
            return Ok(false);
        }
        self.expect_word("NOT")?;
        self.expect_word("EXISTS")?;
        Ok(true)
    }

    /// `IF EXISTS`, if present.
    pub(crate) fn accept_if_exists(&mut self) -> Result<bool> {
        if !self.accept_word("IF") {
            return Ok(false);
        }
        self.expect_word("EXISTS")?;
        Ok(true)
    }

    pub(crate) fn expect_end(&mut self) -> Result<()> {
        match self.peek() {
            Token::EOF | Token::SemiColon => Ok(()),
            _ => self.error("end of statement"),
        }
    }
}

fn parse_create_source(text: &str) -> Result<Statement> {
    let mut cursor = Cursor::new(text)?;
    cursor.expect_word("CREATE")?;
    cursor.expect_word("SOURCE")?;
    let if_not_exists = cursor.accept_if_not_exists()?;
    let name = cursor.identifier("a source name")?;
    cursor.expect_word("FROM")?;
    let connector = cursor.identifier("a connector name such as DATAGEN")?.to_ascii_lowercase();
    let (options, secrets) = parse_with_options_and_secrets(&mut cursor)?;
    let tables = parse_source_tables(&mut cursor)?;
    cursor.expect_end()?;
    Ok(Statement::CreateSource(CreateSource { name, connector, options, secrets, tables, if_not_exists }))
}

/// `FOR ALL TABLES` or `FOR TABLES (schema.table [AS name], ...)`, if present.
/// `WITH (key = value, ...)`, if present: values are quoted strings, numbers or words.
pub(crate) fn parse_with_options(cursor: &mut Cursor) -> Result<BTreeMap<String, String>> {
    let position = cursor.position();
    let (options, secrets) = parse_with_options_and_secrets(cursor)?;
    match secrets.keys().next() {
        None => Ok(options),
        Some(key) => Err(SqlError::Syntax { message: format!("option '{key}' cannot name a secret here"), position }),
    }
}

/// `WITH (key = value, ...)` where a value may also be `SECRET name`: the plain values, and
/// the options that name a secret (option -> secret name).
pub(crate) fn parse_with_options_and_secrets(
    cursor: &mut Cursor,
) -> Result<(BTreeMap<String, String>, BTreeMap<String, String>)> {
    let mut options = BTreeMap::new();
    let mut secrets = BTreeMap::new();
    if cursor.accept_word("WITH") {
        cursor.expect_token(&Token::LParen)?;
        loop {
            let key = cursor.identifier("an option name")?;
            cursor.expect_token(&Token::Eq)?;
            let given_twice = if cursor.accept_word("SECRET") {
                let secret = cursor.identifier("a secret name after SECRET")?;
                options.contains_key(&key) || secrets.insert(key.clone(), secret).is_some()
            } else {
                let value = match cursor.next() {
                    Token::SingleQuotedString(s) => s,
                    Token::Number(n, _) => n,
                    Token::Word(w) => w.value,
                    _ => {
                        cursor.index -= 1;
                        return cursor.error("an option value (a quoted string, a number or SECRET name)");
                    }
                };
                secrets.contains_key(&key) || options.insert(key.clone(), value).is_some()
            };
            if given_twice {
                return Err(SqlError::Syntax {
                    message: format!("option '{key}' is given twice"),
                    position: cursor.position(),
                });
            }
            if cursor.accept_token(&Token::Comma) {
                continue;
            }
            cursor.expect_token(&Token::RParen)?;
            break;
        }
    }
    Ok((options, secrets))
}

/// `SUBSCRIBE [TO] relation [WITH (snapshot = true | false)]`.
fn parse_subscribe(text: &str) -> Result<Statement> {
    let mut cursor = Cursor::new(text)?;
    cursor.expect_word("SUBSCRIBE")?;
    cursor.accept_word("TO");
    let relation = cursor.identifier("a materialized view, table or source relation")?;
    let option_start = cursor.position();
    let mut options = parse_with_options(&mut cursor)?;
    cursor.expect_end()?;
    let snapshot = match options.remove("snapshot").map(|v| v.to_ascii_lowercase()).as_deref() {
        None | Some("true") | Some("on") => true,
        Some("false") | Some("off") => false,
        Some(other) => {
            return Err(SqlError::Syntax {
                message: format!("option 'snapshot' is true or false, not '{other}'"),
                position: option_start,
            });
        }
    };
    if let Some(key) = options.keys().next() {
        return Err(SqlError::Syntax {
            message: format!("unknown SUBSCRIBE option '{key}'; the one option is snapshot"),
            position: option_start,
        });
    }
    Ok(Statement::Subscribe { relation, snapshot })
}

fn parse_source_tables(cursor: &mut Cursor) -> Result<SourceTables> {
    if !cursor.accept_word("FOR") {
        return Ok(SourceTables::Unspecified);
    }
    if cursor.accept_word("ALL") {
        cursor.expect_word("TABLES")?;
        return Ok(SourceTables::All);
    }
    cursor.expect_word("TABLES")?;
    cursor.expect_token(&Token::LParen)?;
    let mut tables = Vec::new();
    loop {
        let first = cursor.identifier("a table name")?;
        let (schema, table) = if cursor.accept_token(&Token::Period) {
            (Some(first), cursor.identifier("a table name")?)
        } else {
            (None, first)
        };
        let alias = if cursor.accept_word("AS") { Some(cursor.identifier("a relation name")?) } else { None };
        tables.push(SourceTable { schema, table, alias });
        if cursor.accept_token(&Token::Comma) {
            continue;
        }
        cursor.expect_token(&Token::RParen)?;
        break;
    }
    Ok(SourceTables::List(tables))
}

fn parse_drop_source(text: &str) -> Result<Statement> {
    let mut cursor = Cursor::new(text)?;
    cursor.expect_word("DROP")?;
    cursor.expect_word("SOURCE")?;
    let if_exists = cursor.accept_if_exists()?;
    let name = cursor.identifier("a source name")?;
    let cascade = cursor.accept_word("CASCADE");
    if !cascade {
        cursor.accept_word("RESTRICT");
    }
    cursor.expect_end()?;
    Ok(Statement::DropSource { name, if_exists, cascade })
}

fn parse_show(text: &str, words: &[String]) -> Result<Statement> {
    if words.get(1).map(String::as_str) == Some("CREATE") {
        let mut cursor = Cursor::new(text)?;
        cursor.expect_word("SHOW")?;
        cursor.expect_word("CREATE")?;
        let kind = if cursor.accept_word("MATERIALIZED") {
            cursor.expect_word("VIEW")?;
            "MATERIALIZED VIEW"
        } else if cursor.accept_word("TABLE") {
            "TABLE"
        } else if cursor.accept_word("VIEW") {
            "VIEW"
        } else if cursor.accept_word("SOURCE") {
            "SOURCE"
        } else if cursor.accept_word("SINK") {
            "SINK"
        } else {
            return cursor.error("TABLE, VIEW, MATERIALIZED VIEW, SOURCE or SINK after SHOW CREATE");
        };
        let name = cursor.identifier("the name of the object")?;
        cursor.expect_end()?;
        return Ok(Statement::ShowCreate { kind: kind.to_string(), name });
    }
    let kind = match words.get(1).map(String::as_str) {
        Some("TABLES") => ShowKind::Tables,
        Some("VIEWS") => ShowKind::Views,
        Some("SOURCES") => ShowKind::Sources,
        Some("SINKS") => ShowKind::Sinks,
        Some("SECRETS") => ShowKind::Secrets,
        Some("MATERIALIZED") if words.get(2).map(String::as_str) == Some("VIEWS") => ShowKind::MaterializedViews,
        _ => {
            let mut cursor = Cursor::new(text)?;
            cursor.next();
            return cursor.error("TABLES, VIEWS, MATERIALIZED VIEWS, SOURCES, SINKS, SECRETS or CREATE ... after SHOW");
        }
    };
    let expected = if kind == ShowKind::MaterializedViews { 3 } else { 2 };
    let mut cursor = Cursor::new(text)?;
    for _ in 0..expected {
        cursor.next();
    }
    cursor.expect_end()?;
    Ok(Statement::Show(kind))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_and_positions_statements() {
        let sql = "-- a comment\nCREATE TABLE t (a INT);\n\n  SELECT 'x;y'\n  FROM t;  ";
        let statements = split_statements(sql).expect("splits");
        assert_eq!(statements.len(), 2);
        assert_eq!(statements[0].position, Position { line: 2, column: 1 });
        assert_eq!(statements[0].text, "CREATE TABLE t (a INT)");
        assert_eq!(statements[1].position, Position { line: 4, column: 3 });
        assert_eq!(statements[1].text, "SELECT 'x;y'\n  FROM t");
    }

    #[test]
    fn syntax_errors_point_into_the_file() {
        let sql = "SELECT 1;\nSELECT * FROM t WHERE;";
        let statements = split_statements(sql).expect("splits");
        let error = parse_statement(&statements[1]).expect_err("bad SQL");
        assert_eq!(error.position(), Some(Position { line: 2, column: 22 }));
    }

    #[test]
    fn parses_create_source_with_options() {
        let statement = parse_sql("CREATE SOURCE gen FROM DATAGEN WITH (scenario = 'sessions', rate = 100)")
            .expect("parses")
            .remove(0)
            .statement;
        let Statement::CreateSource(source) = statement else { panic!("not a source: {statement:?}") };
        assert_eq!(source.name, "gen");
        assert_eq!(source.connector, "datagen");
        assert_eq!(source.options.get("rate").map(String::as_str), Some("100"));
    }

    #[test]
    fn parses_the_tables_of_a_source() {
        let sql = "CREATE SOURCE core FROM POSTGRES WITH (url = 'postgres://x') \
                   FOR TABLES (public.sessions, public.orders AS core_orders, items)";
        let Statement::CreateSource(source) = parse_sql(sql).expect("parses").remove(0).statement else {
            panic!("not a source")
        };
        let SourceTables::List(tables) = &source.tables else { panic!("no tables: {:?}", source.tables) };
        let names: Vec<&str> = tables.iter().map(SourceTable::relation_name).collect();
        assert_eq!(names, ["sessions", "core_orders", "items"]);
        assert_eq!(tables[1].schema.as_deref(), Some("public"));
        let all = parse_sql("CREATE SOURCE core FROM POSTGRES FOR ALL TABLES").expect("parses").remove(0).statement;
        assert!(matches!(all, Statement::CreateSource(CreateSource { tables: SourceTables::All, .. })));
        let error = parse_sql("CREATE SOURCE core FROM POSTGRES FOR TABLES ()").expect_err("empty list");
        assert!(error.to_string().contains("expected a table name"), "{error}");
    }

    #[test]
    fn show_needs_a_known_kind() {
        assert!(matches!(
            parse_sql("SHOW MATERIALIZED VIEWS").expect("parses")[0].statement,
            Statement::Show(ShowKind::MaterializedViews)
        ));
        let error = parse_sql("SHOW GADGETS").expect_err("unknown");
        assert!(error.to_string().contains("TABLES, VIEWS"), "{error}");
    }

    #[test]
    fn subscribe_takes_a_relation_and_the_snapshot_option() {
        assert!(matches!(
            &parse_sql("SUBSCRIBE TO calendar WITH (snapshot = false)").expect("parses")[0].statement,
            Statement::Subscribe { relation, snapshot: false } if relation == "calendar"
        ));
        assert!(matches!(
            &parse_sql("subscribe calendar").expect("parses")[0].statement,
            Statement::Subscribe { relation, snapshot: true } if relation == "calendar"
        ));
        let error = parse_sql("SUBSCRIBE calendar WITH (snapshot = maybe)").expect_err("bad option");
        assert!(error.to_string().contains("true or false"), "{error}");
        let error = parse_sql("SUBSCRIBE calendar WITH (since = 3)").expect_err("unknown option");
        assert!(error.to_string().contains("unknown SUBSCRIBE option 'since'"), "{error}");
    }
}

/// The number of a `$n` parameter placeholder (1 for `$1`), or None for any other expression.
pub fn placeholder_number(expr: &ast::Expr) -> Option<usize> {
    match expr {
        ast::Expr::Value(value) => match &value.value {
            ast::Value::Placeholder(name) => name.strip_prefix('$')?.parse().ok().filter(|n| *n > 0),
            _ => None,
        },
        _ => None,
    }
}
