//! A sink's task: opens the connector's writer (and the dead-letter writer), then delivers
//! the queue's epochs in order: transient failures are retried with capped exponential
//! backoff, refused rows follow the ON ERROR policy, and the writers are flushed at
//! checkpoints, after a second without epochs, and every [`FLUSH_EPOCHS`] epochs, each flush
//! recording the position a restart resumes from. A failure that retrying cannot fix stops
//! the sink (SHOW SINKS says why); so does a panic in it.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use changeflow_sql::sink_statement::{CreateSink, OnError};
use datafusion::arrow::array::UInt32Array;
use datafusion::arrow::compute::take_record_batch;

use super::queue::{SinkItem, SinkQueue};
use super::{SinkReport, update, writer_options};
use crate::change::ChangeBatch;
use crate::connector::{Rejected, SinkConnector, SinkEpoch, SinkFailure, SinkTarget, SinkWriter};
use crate::error::Result;

const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// A sink flushes after this long without a new epoch ...
const FLUSH_WHEN_IDLE: Duration = Duration::from_secs(1);
/// ... and after this many epochs delivered since its last flush.
const FLUSH_EPOCHS: usize = 1_000;

/// Everything a sink's task needs, taken from the engine when it starts.
pub(crate) struct SinkTask {
    pub name: String,
    pub connector: Arc<dyn SinkConnector>,
    pub dead_letter: Option<Arc<dyn SinkConnector>>,
    pub create: CreateSink,
    pub target: SinkTarget,
    pub queue: Arc<SinkQueue>,
    pub report: Arc<Mutex<SinkReport>>,
    pub resume: Option<String>,
}

#[derive(Clone, Copy)]
enum Operation<'a> {
    Write(&'a SinkEpoch, bool),
    Flush,
}

enum Done {
    Written(Vec<Rejected>),
    Flushed(Option<String>),
}

/// The positions of a sink's writers, as one string for the checkpoint.
fn position_text(main: Option<String>, dead_letter: Option<String>) -> String {
    serde_json::json!({ "main": main, "dead_letter": dead_letter }).to_string()
}

fn parse_position(text: &Option<String>) -> (Option<String>, Option<String>) {
    let Some(value) = text.as_deref().and_then(|t| serde_json::from_str::<serde_json::Value>(t).ok()) else {
        return (None, None);
    };
    let field = |key: &str| value.get(key).and_then(|v| v.as_str()).map(str::to_string);
    (field("main"), field("dead_letter"))
}

/// The sink's writers and the newest epoch they delivered.
struct Writers {
    main: Box<dyn SinkWriter>,
    dead_letter: Option<Box<dyn SinkWriter>>,
    delivered: Option<u64>,
    last_flush: Instant,
}

impl SinkTask {
    /// Runs the sink; a panic in it (a bug, in the engine or a connector) fails the sink with
    /// the panic's message, as SHOW SINKS and `/health` then say.
    pub(crate) async fn run_contained(self) {
        use futures_util::FutureExt;
        let (name, report, queue) = (self.name.clone(), Arc::clone(&self.report), Arc::clone(&self.queue));
        if let Err(panic) = std::panic::AssertUnwindSafe(self.run()).catch_unwind().await {
            let message = crate::error::panic_message(&*panic);
            tracing::error!(sink = %name, panic = %message, "the sink's task panicked and stopped");
            update(&report, |r| r.state = format!("failed: panicked: {message}"));
            queue.close();
        }
    }

    /// Opens the writers, then delivers until the sink is dropped or fails.
    async fn run(self) {
        let (main_position, dead_position) = parse_position(&self.resume);
        let options = writer_options(&self.create);
        let Some(main) = self.open(&self.connector, &options, main_position).await else { return };
        let mut writers = Writers { main, dead_letter: None, delivered: None, last_flush: Instant::now() };
        if let (Some(connector), OnError::DeadLetter { options, .. }) = (&self.dead_letter, &self.create.on_error) {
            match self.open(connector, options, dead_position).await {
                Some(dead) => writers.dead_letter = Some(dead),
                None => return,
            }
        }
        update(&self.report, |r| r.state = "running".into());
        loop {
            let item = match self.queue.pop(FLUSH_WHEN_IDLE).await {
                Ok(item) => item,
                Err(()) => return,
            };
            let delivered = match item {
                Some(SinkItem::Epoch(epoch)) => {
                    let delivered = self.deliver(&mut writers, &epoch).await;
                    if delivered {
                        writers.delivered = Some(epoch.epoch);
                    }
                    let due = self.queue.unflushed() >= FLUSH_EPOCHS || writers.last_flush.elapsed() >= FLUSH_WHEN_IDLE;
                    if delivered && due { self.flush_all(&mut writers).await } else { delivered }
                }
                Some(SinkItem::Flush) => self.flush_all(&mut writers).await,
                None if self.queue.unflushed() > 0 => self.flush_all(&mut writers).await,
                None => true,
            };
            if !delivered {
                return;
            }
        }
    }

    async fn open(
        &self,
        connector: &Arc<dyn SinkConnector>,
        options: &BTreeMap<String, String>,
        resume: Option<String>,
    ) -> Option<Box<dyn SinkWriter>> {
        let mut backoff = Duration::from_millis(250);
        loop {
            match connector.open(options, &self.target, resume.clone()).await {
                Ok(writer) => return Some(writer),
                Err(error) => {
                    tracing::warn!(sink = %self.name, %error, "opening the sink failed; retrying");
                    update(&self.report, |r| {
                        r.state = format!("retrying: {error}");
                        r.retries += 1;
                    });
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    if self.queue.is_closed() {
                        return None;
                    }
                }
            }
        }
    }

    /// Runs a writer operation until it succeeds or fails for good, backing off between
    /// tries.
    async fn retry(&self, writer: &mut dyn SinkWriter, operation: Operation<'_>) -> Result<Done, SinkFailure> {
        let mut backoff = Duration::from_millis(100);
        loop {
            let result = match operation {
                Operation::Write(epoch, skip_rejected) => {
                    writer.write_epoch(epoch, skip_rejected).await.map(Done::Written)
                }
                Operation::Flush => writer.flush().await.map(Done::Flushed),
            };
            match result {
                Ok(done) => {
                    update(&self.report, |r| {
                        if r.state.starts_with("retrying") {
                            r.state = "running".into();
                        }
                    });
                    return Ok(done);
                }
                Err(SinkFailure::Transient(error)) => {
                    tracing::warn!(sink = %self.name, %error, "delivering failed; retrying");
                    update(&self.report, |r| {
                        r.state = format!("retrying: {error}");
                        r.retries += 1;
                    });
                    if self.queue.is_closed() {
                        return Err(SinkFailure::Fatal("the sink was dropped".into()));
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
                Err(other) => return Err(other),
            }
        }
    }

    async fn flush(&self, writer: &mut dyn SinkWriter) -> Result<Option<String>, SinkFailure> {
        match self.retry(writer, Operation::Flush).await? {
            Done::Flushed(position) => Ok(position),
            Done::Written(_) => Err(SinkFailure::Fatal("internal: a flush answered as a write".into())),
        }
    }

    /// Flushes both writers and records the position; false when the sink stops.
    async fn flush_all(&self, writers: &mut Writers) -> bool {
        let main = self.flush(&mut *writers.main).await;
        let dead = match writers.dead_letter.as_mut() {
            Some(dead) => self.flush(&mut **dead).await,
            None => Ok(None),
        };
        writers.last_flush = Instant::now();
        match (main, dead) {
            (Ok(main), Ok(dead)) => {
                if let Some(epoch) = writers.delivered {
                    self.queue.flushed(position_text(main, dead), epoch);
                }
                true
            }
            (Err(error), _) | (_, Err(error)) => self.fail(&error),
        }
    }

    async fn write(
        &self,
        writer: &mut dyn SinkWriter,
        epoch: &SinkEpoch,
        skip_rejected: bool,
    ) -> Result<Vec<Rejected>, SinkFailure> {
        match self.retry(writer, Operation::Write(epoch, skip_rejected)).await? {
            Done::Written(rejected) => Ok(rejected),
            Done::Flushed(_) => Err(SinkFailure::Fatal("internal: a write answered as a flush".into())),
        }
    }

    /// Delivers one epoch; false when the sink stops.
    async fn deliver(&self, writers: &mut Writers, epoch: &SinkEpoch) -> bool {
        let skip_rejected = self.create.on_error != OnError::Fail;
        let rejected = match self.write(&mut *writers.main, epoch, skip_rejected).await {
            Ok(rejected) => rejected,
            Err(error) => return self.fail(&error),
        };
        if !rejected.is_empty() {
            for r in &rejected {
                tracing::warn!(sink = %self.name, epoch = epoch.epoch, error = %r.error, "a change was refused");
            }
            match writers.dead_letter.as_mut() {
                None => update(&self.report, |r| r.skipped += rejected.len() as u64),
                Some(dead) => {
                    let letters = match dead_letters(epoch, &rejected) {
                        Ok(letters) => letters,
                        Err(error) => return self.fail(&SinkFailure::Fatal(error.to_string())),
                    };
                    if let Err(error) = self.write(&mut **dead, &letters, false).await {
                        return self.fail(&SinkFailure::Fatal(format!("the dead-letter sink failed: {error}")));
                    }
                    update(&self.report, |r| r.dead_letters += rejected.len() as u64);
                }
            }
        }
        update(&self.report, |r| {
            r.delivered_epoch = r.delivered_epoch.max(epoch.epoch);
            r.epochs += 1;
            r.rows += (epoch.change.len() - rejected.len()) as u64;
        });
        true
    }

    /// Stops the sink: SHOW SINKS says why; nothing after is delivered, and its position
    /// stays where its last flush left it (across restarts too).
    fn fail(&self, error: &SinkFailure) -> bool {
        tracing::error!(sink = %self.name, %error, "the sink failed and stopped");
        update(&self.report, |r| r.state = format!("failed: {error}"));
        self.queue.close();
        false
    }
}

/// The rejected rows of an epoch, with their errors, for the dead-letter sink.
fn dead_letters(epoch: &SinkEpoch, rejected: &[Rejected]) -> Result<SinkEpoch> {
    let rows = UInt32Array::from(rejected.iter().map(|r| r.row as u32).collect::<Vec<_>>());
    let data = take_record_batch(&epoch.change.data, &rows)?;
    let weights = rejected.iter().map(|r| epoch.change.weights[r.row]).collect();
    Ok(SinkEpoch {
        epoch: epoch.epoch,
        change: ChangeBatch::new(data, weights)?,
        snapshot: epoch.snapshot,
        origin: epoch.origin.clone(),
        errors: Some(rejected.iter().map(|r| r.error.clone()).collect()),
    })
}
