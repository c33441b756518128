//! The interactive REPL: statements may span lines until `;` (the prompt says when a
//! statement goes on), history in `~/.changeflow_history`, tab completion of keywords and
//! relation names, aligned results with a row count, `\q`, `\?`, `\timing` and the
//! describing commands of [`crate::meta`]. Errors print and the session goes on.

use std::borrow::Cow;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use changeflow_engine::Session;
use changeflow_sql::parser::{parse_statement, split_statements};
use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
use datafusion::sql::sqlparser::tokenizer::{Token, Tokenizer, Whitespace};
use rustyline::completion::{Completer, Pair};
use rustyline::error::ReadlineError;
use rustyline::validate::Validator;
use rustyline::{Context, Editor, Helper, Highlighter, Hinter};

use crate::complete::KnownRelation;
use crate::format::Format;
use crate::run::render;

const HELP: &str = "\
Type SQL statements ending with ';'. A statement may span several lines.
  \\q          quit
  \\?          this help
  \\timing     toggle printing how long each statement took
  \\d [NAME]   list relations, or describe one (columns, key, view query)
  \\dt \\dv \\dm list tables and source relations, views, materialized views
Try:
  CREATE TABLE sessions (id INT PRIMARY KEY, experience_id INT, starts_at TIMESTAMP, capacity INT, sold INT);
  CREATE MATERIALIZED VIEW calendar AS SELECT experience_id, count(*) AS sessions FROM sessions GROUP BY 1;
  INSERT INTO sessions VALUES (1, 10, '2026-12-01 18:00', 40, 0);
  SELECT * FROM calendar;
  SHOW TABLES; SHOW MATERIALIZED VIEWS; SHOW SOURCES;
";

#[derive(Helper, Hinter, Highlighter)]
struct SqlHelper {
    relations: Arc<Mutex<Vec<KnownRelation>>>,
}

impl Completer for SqlHelper {
    type Candidate = Pair;

    fn complete(&self, line: &str, pos: usize, _ctx: &Context<'_>) -> rustyline::Result<(usize, Vec<Pair>)> {
        let relations = self.relations.lock().map(|r| r.clone()).unwrap_or_default();
        let (start, candidates) = crate::complete::complete(line, pos, &relations);
        Ok((start, candidates.into_iter().map(|c| Pair { display: c.clone(), replacement: c }).collect()))
    }
}

/// Lines are gathered by the loop (see [`statement_complete`]), one prompt each.
impl Validator for SqlHelper {}

/// Whether the text typed so far ends a statement: its last token other than whitespace
/// and comments is `;`, outside any string or comment (`SELECT 4; -- note` is complete,
/// `SELECT ';` is not).
fn statement_complete(text: &str) -> bool {
    let Ok(tokens) = Tokenizer::new(&PostgreSqlDialect {}, text).tokenize() else {
        // An unterminated string or comment: the statement goes on.
        return false;
    };
    tokens.iter().rev().find(|t| !matches!(t, Token::Whitespace(_) | Token::EOF)) == Some(&Token::SemiColon)
}

/// Whether a statement text creates a secret (kept out of the history file).
fn creates_secret(text: &str) -> bool {
    let Ok(tokens) = Tokenizer::new(&PostgreSqlDialect {}, text).tokenize() else { return true };
    let words: Vec<String> = tokens
        .iter()
        .filter(|t| !matches!(t, Token::Whitespace(Whitespace::Space | Whitespace::Newline | Whitespace::Tab)))
        .map(|t| t.to_string().to_ascii_uppercase())
        .collect();
    words.windows(2).any(|w| w[0] == "CREATE" && w[1] == "SECRET")
}

fn history_path() -> Option<PathBuf> {
    std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".changeflow_history"))
}

pub async fn run(storage: &crate::storage::StorageOptions) -> anyhow::Result<()> {
    let database = Arc::new(storage.open(None, false).await?);
    let mut session = Session::new(Arc::clone(&database));
    let relations = Arc::new(Mutex::new(known_relations(&database).await));
    let mut editor: Editor<SqlHelper, rustyline::history::DefaultHistory> = Editor::new()?;
    editor.set_helper(Some(SqlHelper { relations: Arc::clone(&relations) }));
    let history = history_path();
    if let Some(path) = &history {
        let _ = editor.load_history(path);
    }
    println!(
        "changeflow {} — SQL views that stay correct as data changes. \\? for help, \\q to quit.",
        env!("CARGO_PKG_VERSION")
    );
    let mut timing = false;
    // Lines of a statement not yet ended by `;`.
    let mut pending = String::new();
    loop {
        let prompt = if pending.is_empty() { "changeflow=> " } else { "changeflow-> " };
        let line = match editor.readline(prompt) {
            Ok(line) => line,
            // Ctrl-C drops the statement being typed, as in psql.
            Err(ReadlineError::Interrupted) => {
                pending.clear();
                continue;
            }
            Err(ReadlineError::Eof) => break,
            Err(error) => return Err(error.into()),
        };
        if pending.is_empty() && line.trim().is_empty() {
            continue;
        }
        if pending.is_empty() && line.trim_start().starts_with('\\') {
            let command = line.trim();
            let _ = editor.add_history_entry(command);
            if let Some(output) = crate::meta::describe(&database, command).await {
                match output {
                    Ok(text) => print!("{text}"),
                    Err(error) => eprintln!("{error}"),
                }
                continue;
            }
        } else {
            pending.push_str(&line);
            pending.push('\n');
            if !statement_complete(&pending) {
                continue;
            }
        }
        let text = if pending.is_empty() { line } else { std::mem::take(&mut pending) };
        let input = text.trim();
        // A secret's value stays out of the history file.
        if !creates_secret(input) {
            let _ = editor.add_history_entry(input);
        }
        match input {
            "\\q" | "quit" | "exit" => break,
            "\\?" | "help" => {
                print!("{HELP}");
                continue;
            }
            "\\timing" => {
                timing = !timing;
                println!("Timing is {}.", if timing { "on" } else { "off" });
                continue;
            }
            other if other.starts_with('\\') => {
                println!("unknown command {other}; \\? lists the commands");
                continue;
            }
            _ => {}
        }
        execute_text(&mut session, input, timing).await;
        let names = known_relations(&database).await;
        if let Ok(mut known) = relations.lock() {
            *known = names;
        }
    }
    if let Some(path) = &history {
        let _ = editor.save_history(path);
    }
    session.close().await;
    database.shutdown().await;
    Ok(())
}

/// The relations and their columns, for completion.
async fn known_relations(database: &changeflow_engine::Database) -> Vec<KnownRelation> {
    let engine = database.engine().await;
    engine
        .catalog()
        .relations()
        .map(|r| KnownRelation {
            name: r.name.clone(),
            columns: r.schema.fields().iter().map(|f| f.name().clone()).collect(),
        })
        .collect()
}

async fn execute_text(session: &mut Session, text: &str, timing: bool) {
    let statements = match split_statements(text) {
        Ok(statements) => statements,
        Err(error) => {
            eprintln!("ERROR: {}", located(&error.to_string(), error.position()));
            return;
        }
    };
    for source in statements {
        let started = Instant::now();
        let result = match parse_statement(&source) {
            Ok(statement) => session.execute(&statement).await.map_err(|e| e.to_string()),
            Err(error) => Err(located(&error.to_string(), error.position()).into_owned()),
        };
        match result {
            Ok(output) => match render(&output, Format::Table) {
                Ok(Some(text)) => print!("{text}"),
                Ok(None) => {}
                Err(error) => eprintln!("ERROR: {error}"),
            },
            Err(error) => eprintln!("ERROR: {}", changeflow_engine::redact::redact_credentials(&error)),
        }
        if timing {
            println!("Time: {:.3} ms", started.elapsed().as_secs_f64() * 1000.0);
        }
    }
}

fn located(message: &str, position: Option<changeflow_sql::Position>) -> Cow<'_, str> {
    match position {
        Some(p) => Cow::Owned(format!("{message} (line {}, column {})", p.line, p.column)),
        None => Cow::Borrowed(message),
    }
}

#[cfg(test)]
mod tests {
    use super::{creates_secret, statement_complete};

    #[test]
    fn a_statement_ends_at_a_semicolon_outside_strings_and_comments() {
        assert!(statement_complete("SELECT 4; -- note\n"));
        assert!(statement_complete("SELECT 4 /* a */ ; /* b */\n"));
        assert!(statement_complete("SELECT\n 4;\n"));
        assert!(!statement_complete("SELECT 4 -- note;\n"));
        assert!(!statement_complete("SELECT ';\n"));
        assert!(!statement_complete("SELECT 4\n"));
        assert!(creates_secret("create  secret p as 'x';"));
        assert!(!creates_secret("SELECT 'create secret';"));
    }
}
