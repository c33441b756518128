//! `changeflow run` (execute files, print query results) and `changeflow check` (parse and
//! plan files without executing or connecting, report every error with its position).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use changeflow_engine::{Database, Mode, Output, Session};
use changeflow_sql::error::Position;
use changeflow_sql::parser::{parse_statement, split_statements};

use crate::format::{self, Format};

/// An error located in a file, printed as `FILE:LINE:COL: message`.
pub struct LocatedError {
    pub file: PathBuf,
    pub position: Position,
    pub message: String,
}

impl std::fmt::Display for LocatedError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}:{}: {}", self.file.display(), self.position.line, self.position.column, self.message)
    }
}

/// Renders one statement's output in the chosen format; None when nothing is printed.
/// Notices go to stderr, as psql prints them.
pub fn render(output: &Output, format: Format) -> anyhow::Result<Option<String>> {
    Ok(match (output, format) {
        (Output::Noticed { notices, output }, _) => {
            for notice in notices {
                eprintln!("NOTICE:  {notice}");
            }
            return render(output, format);
        }
        (Output::Rows { schema, batches }, Format::Table) => Some(format::table(schema, batches)?),
        (Output::Rows { schema, batches }, Format::Csv) => Some(format::csv(schema, batches)?),
        (Output::Rows { schema, batches }, Format::Json) => Some(format::json(schema, batches)?),
        (Output::Command(tag), Format::Table) => Some(format!("{tag}\n")),
        (Output::Command(_), _) => None,
    })
}

fn read(file: &Path) -> Result<String, LocatedError> {
    std::fs::read_to_string(file).map_err(|e| LocatedError {
        file: file.to_path_buf(),
        position: Position { line: 1, column: 1 },
        message: format!("cannot read file: {e}"),
    })
}

/// Executes the files' statements in order, in one session, printing results to stdout.
/// Stops at the first failing statement.
pub async fn run(database: &Arc<Database>, files: &[PathBuf], output_format: Format) -> Result<(), LocatedError> {
    let mut session = Session::new(Arc::clone(database));
    let result = run_in(&mut session, files, output_format).await;
    session.close().await;
    result
}

async fn run_in(session: &mut Session, files: &[PathBuf], output_format: Format) -> Result<(), LocatedError> {
    let mut printed_any = false;
    for file in files {
        let text = read(file)?;
        let locate = |position: Position, message: String| LocatedError { file: file.clone(), position, message };
        let statements =
            split_statements(&text).map_err(|e| locate(e.position().unwrap_or_default(), e.to_string()))?;
        for source in statements {
            let statement =
                parse_statement(&source).map_err(|e| locate(e.position().unwrap_or(source.position), e.to_string()))?;
            let output = session.execute(&statement).await.map_err(|e| locate(statement.position, e.to_string()))?;
            let rendered = render(&output, output_format).map_err(|e| locate(statement.position, e.to_string()))?;
            if let Some(text) = rendered {
                if printed_any && output_format == Format::Csv {
                    println!();
                }
                print!("{text}");
                printed_any = true;
            }
        }
    }
    Ok(())
}

/// Parses and plans every statement of every file; returns all errors found.
pub async fn check(files: &[PathBuf]) -> (usize, Vec<LocatedError>) {
    let database = Database::with_mode(changeflow_connectors::registry(), Mode::PlanOnly);
    let mut errors = Vec::new();
    let mut count = 0;
    for file in files {
        let text = match read(file) {
            Ok(text) => text,
            Err(error) => {
                errors.push(error);
                continue;
            }
        };
        let locate = |position: Position, message: String| LocatedError { file: file.clone(), position, message };
        let statements = match split_statements(&text) {
            Ok(statements) => statements,
            Err(e) => {
                errors.push(locate(e.position().unwrap_or_default(), e.to_string()));
                continue;
            }
        };
        for source in statements {
            count += 1;
            match parse_statement(&source) {
                Err(e) => errors.push(locate(e.position().unwrap_or(source.position), e.to_string())),
                Ok(statement) => {
                    if let Err(e) = database.execute(&statement).await {
                        errors.push(locate(statement.position, e.to_string()));
                    }
                }
            }
        }
    }
    (count, errors)
}
