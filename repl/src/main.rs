//! The `changeflow` binary: the REPL (no arguments), `run`, `check` and `serve`.

mod complete;
mod format;
mod meta;
mod repl;
mod run;
mod serve;
mod storage;

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
    /// Log lines as human-readable text or as JSON objects (filter with CHANGEFLOW_LOG).
    #[arg(long, global = true, value_enum, default_value = "text")]
    log_format: LogFormat,
    #[command(flatten)]
    storage: storage::StorageOptions,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
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
    /// Parse and plan SQL files without executing anything: nothing is written or created
    /// anywhere. A POSTGRES source's upstream catalog is read (its tables' columns), so that
    /// database must be reachable.
    Check {
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Run SQL files, then serve views over the Postgres wire protocol (psql, drivers),
    /// with SUBSCRIBE, and metrics over HTTP, until SIGINT / SIGTERM.
    Serve(Box<serve::ServeOptions>),
}

/// The stack of every runtime thread. Statements are planned on them, and planning walks a
/// statement's tree recursively: 16 MiB covers the deepest statement the parser accepts
/// (`changeflow_sql::depth::MAX_DEPTH`) many times over; untouched stack costs no memory.
const THREAD_STACK_BYTES: usize = 16 << 20;

fn main() -> ExitCode {
    let runtime =
        tokio::runtime::Builder::new_multi_thread().enable_all().thread_stack_size(THREAD_STACK_BYTES).build();
    match runtime {
        Ok(runtime) => runtime.block_on(run()),
        Err(error) => {
            eprintln!("error: cannot start the runtime: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> ExitCode {
    changeflow_engine::memory::keep_freed_memory();
    let cli = Cli::parse();
    let default_filter = match cli.command {
        Some(Command::Serve(_)) => "warn,changeflow_connectors=info,changeflow=info",
        _ => "warn,changeflow_connectors=info",
    };
    let filter =
        tracing_subscriber::EnvFilter::try_from_env("CHANGEFLOW_LOG").unwrap_or_else(|_| default_filter.into());
    // Colours only for a terminal: a log file or a pipe gets plain text.
    let colours = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let logs = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(colours);
    match cli.log_format {
        LogFormat::Text => logs.init(),
        LogFormat::Json => logs.json().init(),
    }
    match cli.command {
        Some(Command::Serve(options)) => match serve::serve(*options, &cli.storage).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("error: {}", changeflow_engine::redact::redact_credentials(&format!("{error:#}")));
                ExitCode::FAILURE
            }
        },
        None => match repl::run(&cli.storage).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("error: {}", changeflow_engine::redact::redact_credentials(&format!("{error:#}")));
                ExitCode::FAILURE
            }
        },
        Some(Command::Run { format, files }) => {
            let database = match cli.storage.open(None, false).await {
                Ok(database) => std::sync::Arc::new(database),
                Err(error) => {
                    eprintln!("error: {}", changeflow_engine::redact::redact_credentials(&format!("{error:#}")));
                    return ExitCode::FAILURE;
                }
            };
            let result = run::run(&database, &files, format).await;
            database.shutdown().await;
            match result {
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
