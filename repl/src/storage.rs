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
    /// `serve` only: the directory FILE sinks write in (paths are taken inside it, and none
    /// may lead out of it). Default: `sinks/` in the data directory, or ./changeflow-sinks
    /// with --in-memory.
    #[arg(long, global = true)]
    pub sink_dir: Option<PathBuf>,
    /// `serve` only: let clients' sources and sinks read credentials from the server's
    /// environment and files (`password_env`, `password_file`). Off by default: a client
    /// could send any of them to a database of its choosing; use CREATE SECRET instead.
    #[arg(long, global = true)]
    pub allow_host_credentials: bool,
}

impl StorageOptions {
    /// Opens the database: restored from the data directory when there is one (`default`
    /// applies when none was given and not `--in-memory`).
    /// With `confine` (serve), FILE sinks write only inside the sink directory, and
    /// credentials are read from the environment and files only with --allow-host-credentials.
    pub async fn open(&self, default: Option<&str>, confine: bool) -> anyhow::Result<Database> {
        let data_dir = match (&self.data_dir, self.in_memory) {
            (Some(dir), _) => Some(dir.clone()),
            (None, false) => default.map(PathBuf::from),
            (None, true) => None,
        };
        let registry = if confine {
            let dir = match (&self.sink_dir, &data_dir) {
                (Some(dir), _) => dir.clone(),
                (None, Some(data_dir)) => data_dir.join("sinks"),
                (None, None) => PathBuf::from("changeflow-sinks"),
            };
            let directory = changeflow_connectors::file::SinkDirectory::new(&dir, data_dir.as_deref())
                .with_context(|| format!("cannot use sink directory {}", dir.display()))?;
            let host_credentials = if self.allow_host_credentials {
                changeflow_connectors::HostCredentials::Allowed
            } else {
                changeflow_connectors::HostCredentials::Refused
            };
            changeflow_connectors::registry_for_server(directory, host_credentials)
        } else {
            changeflow_connectors::registry()
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
