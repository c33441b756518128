//! Sinks in the engine: CREATE / DROP SINK, each sink's queue of epochs (filled as epochs are
//! applied, in order, never dropped while the sink runs), the task that delivers them through
//! the connector's writer (transient failures retried with capped exponential backoff,
//! refused rows handled by the ON ERROR policy), checkpoint barriers, and what SHOW SINKS
//! and /metrics report.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use changeflow_sql::SinkDef;
use changeflow_sql::sink_statement::{CreateSink, OnError};
use datafusion::arrow::array::UInt32Array;
use datafusion::arrow::compute::take_record_batch;
use tokio::sync::{Notify, oneshot};

use crate::change::ChangeBatch;
use crate::connector::{Rejected, SinkConnector, SinkEpoch, SinkFailure, SinkTarget, SinkWriter};
use crate::engine::{Engine, Output};
use crate::error::{EngineError, Result};
use crate::operator::EpochChanges;

/// Epochs a sink may have waiting before sources pause (backpressure).
pub(crate) const BACKLOG_LIMIT: usize = 1_000;
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Each sink's answer to a checkpoint barrier: its position once flushed.
pub(crate) type SinkBarriers = Vec<(String, oneshot::Receiver<String>)>;

pub(crate) enum SinkItem {
    Epoch(SinkEpoch),
    /// A checkpoint: flush, then answer with the position to resume from.
    Barrier(oneshot::Sender<String>),
}

/// What waits for a sink's task. `backlog` is shared by every sink of the engine.
pub(crate) struct SinkQueue {
    items: Mutex<VecDeque<SinkItem>>,
    notify: Notify,
    closed: std::sync::atomic::AtomicBool,
    backlog: Arc<AtomicUsize>,
}

impl SinkQueue {
    fn push(&self, item: SinkItem) {
        if self.closed.load(Ordering::Relaxed) {
            return;
        }
        if let Ok(mut items) = self.items.lock() {
            items.push_back(item);
            self.backlog.fetch_add(1, Ordering::Relaxed);
        }
        self.notify.notify_one();
    }

    /// The next item; `None` once the queue is closed.
    async fn pop(&self) -> Option<SinkItem> {
        loop {
            let notified = self.notify.notified();
            if self.closed.load(Ordering::Relaxed) {
                return None;
            }
            if let Some(item) = self.items.lock().ok().and_then(|mut items| items.pop_front()) {
                self.backlog.fetch_sub(1, Ordering::Relaxed);
                return Some(item);
            }
            notified.await;
        }
    }

    /// Stops the queue: what waits is dropped (a failed or dropped sink).
    fn close(&self) {
        self.closed.store(true, Ordering::Relaxed);
        if let Ok(mut items) = self.items.lock() {
            self.backlog.fetch_sub(items.len(), Ordering::Relaxed);
            items.clear();
        }
        self.notify.notify_one();
    }
}

/// A sink's state for SHOW SINKS and /metrics.
#[derive(Debug, Clone, Default)]
pub struct SinkReport {
    /// `starting`, `running`, `retrying: why`, `failed: why`.
    pub state: String,
    pub delivered_epoch: u64,
    pub epochs: u64,
    pub rows: u64,
    pub retries: u64,
    pub skipped: u64,
    pub dead_letters: u64,
    /// Epochs applied but not yet delivered (0 when nothing waits: an idle relation does
    /// not make a sink lag).
    pub lag_epochs: u64,
}

pub(crate) struct SinkHandle {
    pub create: CreateSink,
    pub target: SinkTarget,
    pub queue: Arc<SinkQueue>,
    pub report: Arc<Mutex<SinkReport>>,
    /// Where the writer resumes (from the checkpoint restored), as `flush` reported it.
    pub resume: Option<String>,
}

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

fn update(report: &Mutex<SinkReport>, change: impl FnOnce(&mut SinkReport)) {
    if let Ok(mut report) = report.lock() {
        change(&mut report);
    }
}

impl Engine {
    pub(crate) fn create_sink(&mut self, create: &CreateSink) -> Result<Output> {
        self.refuse_in_transaction("CREATE SINK")?;
        if create.if_not_exists && self.catalog.sink(&create.name).is_some() {
            return Ok(Output::Command("CREATE SINK".into()));
        }
        let connector = self.sink_connector(&create.connector)?;
        if let Some(base) = changeflow_sql::change_stream::base_of(&create.relation) {
            let stream = changeflow_sql::change_stream::stream_relation(&self.catalog, base)?;
            self.catalog.add_stream(stream);
        }
        let relation = self.catalog.require_relation(&create.relation)?.clone();
        let is_stream = relation.kind == changeflow_sql::RelationKind::ChangeStream;
        let key = match create.options.get("key") {
            Some(columns) => columns
                .split(',')
                .map(|c| {
                    let column = c.trim().to_ascii_lowercase();
                    relation.schema.index_of(&column).map_err(|_| {
                        EngineError::Sql(changeflow_sql::SqlError::Catalog(format!(
                            "sink \"{}\": key column \"{column}\" is not a column of \"{}\"",
                            create.name, create.relation
                        )))
                    })
                })
                .collect::<Result<Vec<_>>>()?,
            None => match self.stores.get(&relation.name) {
                Some(store) if !store.primary_key().is_empty() => store.primary_key().to_vec(),
                _ => relation.primary_key.clone(),
            },
        };
        let target = SinkTarget {
            sink: create.name.clone(),
            relation: relation.name.clone(),
            schema: std::sync::Arc::clone(&relation.schema),
            key,
        };
        connector.validate(&writer_options(create), &target)?;
        if let OnError::DeadLetter { connector: name, options } = &create.on_error {
            self.sink_connector(name)?.validate(options, &target)?;
        }
        self.catalog.add_sink(SinkDef {
            name: create.name.clone(),
            relation: relation.name.clone(),
            connector: create.connector.clone(),
        })?;
        let queue = Arc::new(SinkQueue {
            items: Mutex::new(VecDeque::new()),
            notify: Notify::new(),
            closed: false.into(),
            backlog: Arc::clone(&self.sink_backlog),
        });
        // Restored from a checkpoint: the writer resumes after it, and the epochs replayed
        // since follow. Otherwise the sink starts with the relation's contents.
        let resume = self.replay_sink_positions.remove(&create.name);
        if resume.is_none() && self.mode == crate::Mode::Execute && !is_stream {
            let contents = self.committed_snapshot(&relation.name)?;
            queue.push(SinkItem::Epoch(SinkEpoch {
                epoch: self.epoch,
                change: ChangeBatch::inserts(contents),
                snapshot: true,
                origin: None,
                errors: None,
            }));
        }
        let report = SinkReport { state: "starting".into(), delivered_epoch: self.epoch, ..Default::default() };
        self.sinks.insert(
            create.name.clone(),
            SinkHandle { create: create.clone(), target, queue, report: Arc::new(Mutex::new(report)), resume },
        );
        self.defined(&create.name, Vec::new())?;
        Ok(Output::Command("CREATE SINK".into()))
    }

    pub(crate) fn drop_sink(&mut self, name: &str, if_exists: bool) -> Result<Output> {
        self.refuse_in_transaction("DROP SINK")?;
        if if_exists && self.catalog.sink(name).is_none() {
            return Ok(Output::Command("DROP SINK".into()));
        }
        self.catalog.drop_sink(name)?;
        if let Some(handle) = self.sinks.remove(name) {
            handle.queue.close();
        }
        self.catalog.prune_streams();
        self.undefined(name, format!("DROP SINK \"{}\"", name.replace('"', "\"\"")))?;
        Ok(Output::Command("DROP SINK".into()))
    }

    fn sink_connector(&self, name: &str) -> Result<Arc<dyn SinkConnector>> {
        self.registry.sink(name).ok_or_else(|| {
            changeflow_sql::SqlError::Catalog(format!(
                "unknown sink system \"{name}\"; available: {}",
                self.registry.sink_names().join(", ")
            ))
            .into()
        })
    }

    /// Queues an epoch's changes for the sinks of the changed relations.
    pub(crate) fn deliver_to_sinks(&mut self, epoch: &EpochChanges) {
        if self.sinks.is_empty() || self.sinks_muted {
            return;
        }
        for handle in self.sinks.values() {
            if let Some(change) = epoch.get(&handle.target.relation) {
                handle.queue.push(SinkItem::Epoch(SinkEpoch {
                    epoch: self.epoch,
                    change: change.clone(),
                    snapshot: self.epoch_is_snapshot,
                    origin: self.epoch_origin.clone(),
                    errors: None,
                }));
            }
        }
    }

    /// Asks every sink to flush at this point of the epoch order; each answers with its
    /// position once everything before is delivered.
    pub(crate) fn sink_barriers(&self) -> SinkBarriers {
        self.sinks
            .iter()
            .map(|(name, handle)| {
                let (reply, receiver) = oneshot::channel();
                handle.queue.push(SinkItem::Barrier(reply));
                (name.clone(), receiver)
            })
            .collect()
    }

    /// The tasks of sinks not yet started.
    pub(crate) fn sink_tasks(&mut self, only: Option<&str>) -> Result<Vec<SinkTask>> {
        let mut tasks = Vec::new();
        let names: Vec<String> = self
            .sinks
            .keys()
            .filter(|n| only.is_none_or(|o| o == n.as_str()) && !self.started_sinks.contains(*n))
            .cloned()
            .collect();
        for name in names {
            let Some(handle) = self.sinks.get(&name) else { continue };
            let dead_letter = match &handle.create.on_error {
                OnError::DeadLetter { connector, .. } => Some(self.sink_connector(connector)?),
                _ => None,
            };
            tasks.push(SinkTask {
                name: name.clone(),
                connector: self.sink_connector(&handle.create.connector)?,
                dead_letter,
                create: handle.create.clone(),
                target: handle.target.clone(),
                queue: Arc::clone(&handle.queue),
                report: Arc::clone(&handle.report),
                resume: handle.resume.clone(),
            });
            self.started_sinks.insert(name);
        }
        Ok(tasks)
    }

    /// Each sink's state, in name order.
    pub fn sink_reports(&self) -> Vec<(String, String, String, SinkReport)> {
        self.sinks
            .iter()
            .map(|(name, handle)| {
                let mut report = handle.report.lock().map(|r| r.clone()).unwrap_or_default();
                let waiting = handle.queue.items.lock().map(|items| !items.is_empty()).unwrap_or(false);
                let working = report.state != "running" || waiting;
                report.lag_epochs = if working { self.epoch.saturating_sub(report.delivered_epoch) } else { 0 };
                (name.clone(), handle.target.relation.clone(), handle.create.connector.clone(), report)
            })
            .collect()
    }
}

/// The options a sink's connector sees: all but `key`, which the engine reads.
fn writer_options(create: &CreateSink) -> BTreeMap<String, String> {
    let mut options = create.options.clone();
    options.remove("key");
    options
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

impl SinkTask {
    /// Opens the writers, then delivers until the sink is dropped or fails.
    pub(crate) async fn run(self) {
        let (main_position, dead_position) = parse_position(&self.resume);
        let options = writer_options(&self.create);
        let Some(mut writer) = self.open(&self.connector, &options, main_position).await else { return };
        let mut dead_letter = None;
        if let (Some(connector), OnError::DeadLetter { options, .. }) = (&self.dead_letter, &self.create.on_error) {
            match self.open(connector, options, dead_position).await {
                Some(dead) => dead_letter = Some(dead),
                None => return,
            }
        }
        update(&self.report, |r| r.state = "running".into());
        while let Some(item) = self.queue.pop().await {
            let delivered = match item {
                SinkItem::Barrier(reply) => {
                    let main = self.flush(&mut *writer).await;
                    let dead = match dead_letter.as_mut() {
                        Some(dead) => self.flush(&mut **dead).await,
                        None => Ok(None),
                    };
                    match (main, dead) {
                        (Ok(main), Ok(dead)) => {
                            let _ = reply.send(position_text(main, dead));
                            true
                        }
                        (Err(error), _) | (_, Err(error)) => self.fail(&error),
                    }
                }
                SinkItem::Epoch(epoch) => {
                    let dead = dead_letter.as_mut().map(|d| &mut **d as &mut dyn SinkWriter);
                    self.deliver(&mut *writer, dead, &epoch).await
                }
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
                    if self.queue.closed.load(Ordering::Relaxed) {
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
                    if self.queue.closed.load(Ordering::Relaxed) {
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
    async fn deliver(
        &self,
        writer: &mut dyn SinkWriter,
        dead_letter: Option<&mut dyn SinkWriter>,
        epoch: &SinkEpoch,
    ) -> bool {
        let skip_rejected = self.create.on_error != OnError::Fail;
        let rejected = match self.write(writer, epoch, skip_rejected).await {
            Ok(rejected) => rejected,
            Err(error) => return self.fail(&error),
        };
        if !rejected.is_empty() {
            for r in &rejected {
                tracing::warn!(sink = %self.name, epoch = epoch.epoch, error = %r.error, "a change was refused");
            }
            match dead_letter {
                None => update(&self.report, |r| r.skipped += rejected.len() as u64),
                Some(dead) => {
                    let letters = match dead_letters(epoch, &rejected) {
                        Ok(letters) => letters,
                        Err(error) => return self.fail(&SinkFailure::Fatal(error.to_string())),
                    };
                    if let Err(error) = self.write(dead, &letters, false).await {
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

    /// Stops the sink: SHOW SINKS says why; nothing after is delivered.
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
