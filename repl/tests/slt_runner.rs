//! Runs the sqllogictest files under `tests/slt/` against an in-process changeflow engine.
//! `cargo test --test slt -- --complete` rewrites expected results.

use std::path::{Path, PathBuf};

use async_trait::async_trait;
use changeflow_engine::{Database, Output, Session};
use sqllogictest::{DBOutput, DefaultColumnType};

#[path = "../src/format.rs"]
#[allow(dead_code)]
mod format;

/// One file runs in one session, as psql runs a script.
struct Changeflow {
    session: Session,
}

#[derive(Debug)]
struct SltError(String);

impl std::fmt::Display for SltError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for SltError {}

#[async_trait]
impl sqllogictest::AsyncDB for Changeflow {
    type Error = SltError;
    type ColumnType = DefaultColumnType;

    async fn run(&mut self, sql: &str) -> Result<DBOutput<DefaultColumnType>, SltError> {
        let statements = changeflow_sql::parse_sql(sql).map_err(|e| SltError(e.to_string()))?;
        let mut last = DBOutput::StatementComplete(0);
        for statement in statements {
            let output = self.session.execute(&statement).await.map_err(|e| SltError(e.to_string()))?;
            last = match output.into_parts().1 {
                Output::Command(_) | Output::Noticed { .. } => DBOutput::StatementComplete(0),
                Output::Rows { schema, batches } => {
                    let rows = format::text_rows(&batches).map_err(|e| SltError(e.to_string()))?;
                    DBOutput::Rows {
                        types: vec![DefaultColumnType::Any; schema.fields().len()],
                        rows: rows
                            .into_iter()
                            .map(|r| r.into_iter().map(|v| v.unwrap_or_else(|| "NULL".into())).collect())
                            .collect(),
                    }
                }
            };
        }
        Ok(last)
    }

    async fn shutdown(&mut self) {}
}

fn slt_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
        .map(|e| e.expect("directory entry").path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            slt_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "slt") {
            out.push(path);
        }
    }
}

#[tokio::main]
async fn main() {
    // Cargo sets CARGO_MANIFEST_DIR when it runs the test; prefer it to the compile-time
    // value, which a target dir shared between checkouts can leave pointing elsewhere.
    let manifest = std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").to_string());
    let root = Path::new(&manifest).join("../tests/slt");
    let complete = std::env::args().any(|a| a == "--complete");
    let filter: Option<String> = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    let mut files = Vec::new();
    slt_files(&root, &mut files);
    let files: Vec<PathBuf> = files
        .into_iter()
        .filter(|f| filter.as_ref().is_none_or(|needle| f.to_string_lossy().contains(needle.as_str())))
        .collect();
    assert!(!files.is_empty(), "no .slt files found under {}", root.display());
    let (mut passed, mut failed) = (0, 0);
    for file in &files {
        let make_db = || async {
            Ok::<_, SltError>(Changeflow {
                session: Session::new(std::sync::Arc::new(Database::new(changeflow_connectors::registry()))),
            })
        };
        let name = file.strip_prefix(&root).unwrap_or(file).display().to_string();
        let result = if complete {
            let mut runner = sqllogictest::Runner::new(make_db);
            runner
                .update_test_file(
                    file,
                    " ",
                    sqllogictest::default_validator,
                    sqllogictest::default_normalizer,
                    sqllogictest::default_column_validator,
                )
                .await
                .map_err(|e| e.to_string())
        } else {
            let mut runner = sqllogictest::Runner::new(make_db);
            runner.run_file_async(file).await.map_err(|e| e.display(true).to_string())
        };
        match result {
            Ok(()) => {
                passed += 1;
                println!("ok      {name}");
            }
            Err(error) => {
                failed += 1;
                println!("FAILED  {name}\n{error}");
            }
        }
    }
    println!("slt: {passed} passed, {failed} failed");
    if failed > 0 {
        std::process::exit(1);
    }
}
