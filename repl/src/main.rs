//! The `changeflow` binary: the REPL (no arguments), `run` and `check`.

mod format;
mod repl;
mod run;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "changeflow",
    version,
    about = "Declarative SQL change data capture: sources, incrementally maintained views, sinks"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Execute SQL files in order and print each query's result.
    Run {
        /// Output format of query results.
        #[arg(long, value_enum, default_value = "table")]
        format: format::Format,
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Parse and plan SQL files without executing anything or connecting anywhere.
    Check {
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("CHANGEFLOW_LOG")
                .unwrap_or_else(|_| "warn,changeflow_connectors=info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match cli.command {
        None => match repl::run().await {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("error: {error:#}");
                ExitCode::FAILURE
            }
        },
        Some(Command::Run { format, files }) => {
            let database = changeflow_engine::Database::new(changeflow_connectors::registry());
            match run::run(&database, &files, format).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(error) => {
                    eprintln!("{error}");
                    ExitCode::FAILURE
                }
            }
        }
        Some(Command::Check { files }) => {
            let (count, errors) = run::check(&files).await;
            for error in &errors {
                eprintln!("{error}");
            }
            if errors.is_empty() {
                eprintln!("{count} statement{} checked, no errors", if count == 1 { "" } else { "s" });
                ExitCode::SUCCESS
            } else {
                eprintln!(
                    "{count} statement{} checked, {} error{}",
                    if count == 1 { "" } else { "s" },
                    errors.len(),
                    if errors.len() == 1 { "" } else { "s" }
                );
                ExitCode::FAILURE
            }
        }
    }
}
