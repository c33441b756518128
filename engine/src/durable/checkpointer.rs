//! The checkpointer: takes a checkpoint when one is due (every `checkpoint_interval`, or
//! after `checkpoint_epochs` epochs, when anything changed) and at shutdown; keeps the two
//! newest; drops journal segments no kept checkpoint needs; and publishes the progress that
//! sources may confirm upstream: that of the older kept checkpoint, so that falling back to
//! it (when the newest is damaged) still finds everything after it upstream.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{Mutex, watch};

use super::checkpoint;
use super::journal;
use super::{DataDir, DurabilityOptions, RestoreReport};
use crate::connector::Progress;
use crate::engine::Engine;
use crate::error::{EngineError, Result};

/// What identifies the state a checkpoint would hold: nothing new, no checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
struct StateKey {
    epoch: u64,
    generation: u64,
    progress: BTreeMap<String, Option<String>>,
}

/// Where the last checkpoint left things.
struct Last {
    key: Option<StateKey>,
    taken_at: Instant,
    /// The newest checkpoint's first journal segment and source progress.
    newest: Option<(u64, BTreeMap<String, Progress>)>,
    /// Both kept checkpoints hold the state of `key`. Sources confirm upstream only what the
    /// older one holds, so once the engine is quiet one more checkpoint of the same state is
    /// written: the slot then catches up even when no more WAL comes to move it.
    settled: bool,
}

/// Sizes and times of the last checkpoint, for metrics and logs.
#[derive(Debug, Clone, Default)]
pub struct CheckpointStats {
    pub checkpoints: u64,
    pub last_bytes: u64,
    pub last_duration: Duration,
    pub last_epoch: u64,
}

pub(crate) struct Checkpointer {
    dir: DataDir,
    options: DurabilityOptions,
    confirmable: watch::Sender<BTreeMap<String, Progress>>,
    last: Mutex<Last>,
    stats: std::sync::Mutex<CheckpointStats>,
}

impl Engine {
    fn state_key(&self) -> StateKey {
        StateKey {
            epoch: self.epoch,
            generation: self.generation,
            progress: self.sources.iter().map(|(name, s)| (name.clone(), s.progress.clone())).collect(),
        }
    }
}

impl Checkpointer {
    /// Locks the data directory and restores the engine from it.
    pub(crate) async fn open(engine: &mut Engine, options: DurabilityOptions) -> Result<(Self, RestoreReport)> {
        let dir = DataDir::open(&options.data_dir)?;
        let report = engine.restore(&dir).await?;
        let newest = report.loaded.clone();
        let last = Last { key: Some(engine.state_key()), taken_at: Instant::now(), newest, settled: false };
        let (confirmable, _) = watch::channel(BTreeMap::new());
        let checkpointer = Self {
            dir,
            options,
            confirmable,
            last: Mutex::new(last),
            stats: std::sync::Mutex::new(CheckpointStats::default()),
        };
        Ok((checkpointer, report))
    }

    /// The progress each source may confirm upstream, as it changes.
    pub(crate) fn confirmable(&self) -> watch::Receiver<BTreeMap<String, Progress>> {
        self.confirmable.subscribe()
    }

    pub(crate) fn stats(&self) -> CheckpointStats {
        self.stats.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Takes checkpoints when due, until aborted.
    pub(crate) async fn run(self: Arc<Self>, engine: Arc<Mutex<Engine>>) {
        let mut ticker = tokio::time::interval(Duration::from_millis(200));
        loop {
            ticker.tick().await;
            let due = {
                let last = self.last.lock().await;
                let epoch = engine.lock().await.epoch;
                let since = last.key.as_ref().map_or(u64::MAX, |k| epoch.saturating_sub(k.epoch));
                last.taken_at.elapsed() >= self.options.checkpoint_interval || since >= self.options.checkpoint_epochs
            };
            if due && let Err(error) = self.checkpoint(&engine).await {
                tracing::error!(%error, "writing a checkpoint failed; will retry");
            }
        }
    }

    /// Writes a checkpoint of the engine's current state, unless both kept checkpoints hold
    /// it already (the first time nothing changed, the same state is written once more).
    pub(crate) async fn checkpoint(&self, engine: &Mutex<Engine>) -> Result<()> {
        let mut last = self.last.lock().await;
        let started = Instant::now();
        let captured = {
            let mut engine = engine.lock().await;
            let key = engine.state_key();
            if last.key.as_ref() == Some(&key) && last.settled {
                last.taken_at = Instant::now();
                return Ok(());
            }
            (key, engine.capture_checkpoint()?)
        };
        let (key, captured) = captured;
        last.taken_at = Instant::now();
        let progress: BTreeMap<String, Progress> = captured
            .sources
            .iter()
            .filter_map(|(name, resume)| Some((name.clone(), resume.progress.clone()?)))
            .collect();
        let journal_from = captured.journal_from;
        let epoch = captured.epoch;
        let dir = self.dir.checkpoint_dir();
        let (file, bytes) = tokio::task::spawn_blocking(move || checkpoint::write(&dir, &captured))
            .await
            .map_err(|e| EngineError::Internal(format!("the checkpoint writer panicked: {e}")))??;
        last.settled = last.key.as_ref() == Some(&key);
        last.key = Some(key);
        checkpoint::prune(&self.dir.checkpoint_dir())?;
        // The checkpoint before this one is now the older kept one: what it holds may be
        // released upstream, and the journal before it is no longer needed.
        if let Some((older_journal_from, older_progress)) = last.newest.replace((journal_from, progress)) {
            journal::remove_before(&self.dir.journal_dir(), older_journal_from)?;
            self.confirmable.send_replace(older_progress);
        }
        let duration = started.elapsed();
        tracing::info!(checkpoint = %file.path.display(), epoch, bytes, ms = duration.as_millis() as u64, "checkpoint written");
        if let Ok(mut stats) = self.stats.lock() {
            stats.checkpoints += 1;
            stats.last_bytes = bytes;
            stats.last_duration = duration;
            stats.last_epoch = epoch;
        }
        Ok(())
    }
}
