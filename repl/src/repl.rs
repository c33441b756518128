//! The interactive REPL: statements may span lines until `;`, history in
//! `~/.changeflow_history`, tab completion of keywords and relation names, aligned results
//! with a row count, `\q`, `\?`, `\timing`. Errors print and the session goes on.

use std::borrow::Cow;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use changeflow_engine::Database;
use changeflow_sql::parser::{parse_statement, split_statements};
use rustyline::completion::{Completer, Pair};
use rustyline::error::ReadlineError;
use rustyline::validate::{ValidationContext, ValidationResult, Validator};
use rustyline::{Context, Editor, Helper, Highlighter, Hinter};

use crate::format::Format;
use crate::run::render;

const KEYWORDS: &[&str] = &[
    "SELECT",
    "FROM",
    "WHERE",
    "GROUP BY",
    "ORDER BY",
    "HAVING",
    "LIMIT",
    "JOIN",
    "LEFT JOIN",
    "RIGHT JOIN",
    "FULL JOIN",
    "INNER JOIN",
    "ON",
    "AND",
    "OR",
    "NOT",
    "NULL",
    "IS",
    "AS",
    "DISTINCT",
    "UNION ALL",
    "CASE",
    "WHEN",
    "THEN",
    "ELSE",
    "END",
    "COALESCE",
    "CREATE",
    "TABLE",
    "VIEW",
    "MATERIALIZED",
    "SOURCE",
    "DROP",
    "INSERT",
    "INTO",
    "VALUES",
    "UPDATE",
    "SET",
    "DELETE",
    "BEGIN",
    "COMMIT",
    "ROLLBACK",
    "SHOW",
    "TABLES",
    "VIEWS",
    "SOURCES",
    "EXPLAIN",
    "PRIMARY KEY",
    "INT",
    "BIGINT",
    "TEXT",
    "NUMERIC",
    "TIMESTAMP",
    "BOOLEAN",
    "DATAGEN",
    "WITH",
    "count",
    "sum",
    "avg",
    "min",
    "max",
    "date_trunc",
];

const HELP: &str = "\
Type SQL statements ending with ';'. A statement may span several lines.
  \\q          quit
  \\?          this help
  \\timing     toggle printing how long each statement took
Try:
  CREATE TABLE sessions (id INT PRIMARY KEY, experience_id INT, starts_at TIMESTAMP, capacity INT, sold INT);
  CREATE MATERIALIZED VIEW calendar AS SELECT experience_id, count(*) AS sessions FROM sessions GROUP BY 1;
  INSERT INTO sessions VALUES (1, 10, '2026-12-01 18:00', 40, 0);
  SELECT * FROM calendar;
  SHOW TABLES; SHOW MATERIALIZED VIEWS; SHOW SOURCES;
";

#[derive(Helper, Hinter, Highlighter)]
struct SqlHelper {
    relations: Arc<Mutex<Vec<String>>>,
}

impl Completer for SqlHelper {
    type Candidate = Pair;

    fn complete(&self, line: &str, pos: usize, _ctx: &Context<'_>) -> rustyline::Result<(usize, Vec<Pair>)> {
        let start = line[..pos].rfind(|c: char| !(c.is_alphanumeric() || c == '_')).map(|i| i + 1).unwrap_or(0);
        let word = &line[start..pos];
        if word.is_empty() {
            return Ok((pos, Vec::new()));
        }
        let lower = word.to_ascii_lowercase();
        let mut candidates: Vec<Pair> = Vec::new();
        if let Ok(relations) = self.relations.lock() {
            for name in relations.iter().filter(|n| n.starts_with(&lower)) {
                candidates.push(Pair { display: name.clone(), replacement: name.clone() });
            }
        }
        for keyword in KEYWORDS.iter().filter(|k| k.to_ascii_lowercase().starts_with(&lower)) {
            let replacement = if word.chars().next().is_some_and(|c| c.is_lowercase()) {
                keyword.to_ascii_lowercase()
            } else {
                keyword.to_string()
            };
            candidates.push(Pair { display: keyword.to_string(), replacement });
        }
        Ok((start, candidates))
    }
}

impl Validator for SqlHelper {
    fn validate(&self, ctx: &mut ValidationContext<'_>) -> rustyline::Result<ValidationResult> {
        let input = ctx.input().trim();
        if input.is_empty() || input.starts_with('\\') || input.ends_with(';') {
            Ok(ValidationResult::Valid(None))
        } else {
            Ok(ValidationResult::Incomplete)
        }
    }
}

fn history_path() -> Option<PathBuf> {
    std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".changeflow_history"))
}

pub async fn run(storage: &crate::storage::StorageOptions) -> anyhow::Result<()> {
    let database = storage.open(None, false).await?;
    let relations = Arc::new(Mutex::new(Vec::new()));
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
    loop {
        let line = match editor.readline("changeflow=> ") {
            Ok(line) => line,
            Err(ReadlineError::Interrupted) => continue,
            Err(ReadlineError::Eof) => break,
            Err(error) => return Err(error.into()),
        };
        let input = line.trim();
        if input.is_empty() {
            continue;
        }
        // A secret's value stays out of the history file.
        if !input
            .to_ascii_lowercase()
            .split_whitespace()
            .collect::<Vec<_>>()
            .windows(2)
            .any(|w| w == ["create", "secret"])
        {
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
        execute_text(&database, input, timing).await;
        let names: Vec<String> = database.engine().await.catalog().relations().map(|r| r.name.clone()).collect();
        if let Ok(mut known) = relations.lock() {
            *known = names;
        }
    }
    if let Some(path) = &history {
        let _ = editor.save_history(path);
    }
    database.shutdown().await;
    Ok(())
}

async fn execute_text(database: &Database, text: &str, timing: bool) {
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
            Ok(statement) => database.execute(&statement).await.map_err(|e| e.to_string()),
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
