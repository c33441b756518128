//! Where the binary keeps state: `--data-dir` (the catalog, local tables and checkpoints,
//! restored on start) or memory only, shared by the REPL, `run` and `serve`.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use changeflow_engine::{Database, DurabilityOptions};

#[derive(clap::Args, Clone, Debug, Default)]
pub struct StorageOptions {
    /// Keep the catalog, local tables and checkpoints in this directory, and restore them on
    /// start (default for `serve`: ./changeflow-data; the REPL and `run` keep state in memory
    /// unless given one).
    #[arg(long, global = true)]
    pub data_dir: Option<PathBuf>,
    /// `serve` only: keep nothing on disk.
    #[arg(long, global = true, conflicts_with = "data_dir")]
    pub in_memory: bool,
    /// Seconds between checkpoints (taken only when something changed).
    #[arg(long, global = true, default_value_t = 10)]
    pub checkpoint_interval: u64,
    /// Take a checkpoint after this many epochs, even before the interval is up.
    #[arg(long, global = true, default_value_t = 10_000)]
    pub checkpoint_epochs: u64,
    /// Seconds a write to a local table waits for sinks that are too far behind before it
    /// fails (SQLSTATE 53000) without being applied.
    #[arg(long, global = true, default_value_t = 30)]
    pub sink_wait: u64,
}

impl StorageOptions {
    /// Opens the database: restored from the data directory when there is one (`default`
    /// applies when none was given and not `--in-memory`).
    pub async fn open(&self, default: Option<&str>) -> anyhow::Result<Database> {
        let registry = changeflow_connectors::registry();
        let data_dir = match (&self.data_dir, self.in_memory) {
            (Some(dir), _) => Some(dir.clone()),
            (None, false) => default.map(PathBuf::from),
            (None, true) => None,
        };
        let Some(data_dir) = data_dir else {
            let mut database = Database::new(registry);
            database.set_write_wait(Duration::from_secs(self.sink_wait));
            return Ok(database);
        };
        let options = DurabilityOptions {
            data_dir: data_dir.clone(),
            checkpoint_interval: Duration::from_secs(self.checkpoint_interval.max(1)),
            checkpoint_epochs: self.checkpoint_epochs.max(1),
        };
        let (mut database, report) = Database::open(registry, options)
            .await
            .with_context(|| format!("cannot open data directory {}", data_dir.display()))?;
        database.set_write_wait(Duration::from_secs(self.sink_wait));
        if report.checkpoint.is_some() || report.journal_records > 0 {
            eprintln!(
                "changeflow: restored {} from {}{} and {} journal record{} in {} ms",
                data_dir.display(),
                report.checkpoint.as_deref().map_or("no checkpoint".to_string(), |c| format!("checkpoint {c}")),
                if report.checkpoint.is_some() {
                    format!(
                        " ({} rows; {} materialized view{} loaded from checkpointed state, {} rebuilt)",
                        report.rows,
                        report.views_loaded,
                        if report.views_loaded == 1 { "" } else { "s" },
                        report.views_rebuilt
                    )
                } else {
                    String::new()
                },
                report.journal_records,
                if report.journal_records == 1 { "" } else { "s" },
                report.elapsed.as_millis()
            );
        }
        if let Some(warning) = &report.views_warning {
            eprintln!("changeflow: warning: {warning}; the views were rebuilt from their inputs");
        }
        Ok(database)
    }
}
