//! Sinks in the engine: CREATE / DROP SINK, each sink's queue of epochs ([`queue`]: filled
//! as epochs are applied, in order, never dropped while the sink runs), the task that
//! delivers them through the connector's writer ([`task`]), what a checkpoint keeps of each
//! sink (its last flushed position and every epoch after it: a checkpoint never waits for a
//! sink), and what SHOW SINKS and /metrics report.

mod queue;
mod task;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use changeflow_sql::SinkDef;
use changeflow_sql::sink_statement::{CreateSink, OnError};

pub(crate) use self::queue::{Flushed, SavedSink, SinkItem, SinkQueue};
pub(crate) use self::task::SinkTask;
use crate::change::ChangeBatch;
use crate::connector::{SinkConnector, SinkEpoch, SinkTarget};
use crate::engine::{Engine, Output};
use crate::error::{EngineError, Result};
use crate::operator::EpochChanges;

/// Epochs sinks may have waiting before sources pause and local writes wait (backpressure).
pub(crate) const BACKLOG_LIMIT: usize = 1_000;

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

pub(crate) fn update(report: &Mutex<SinkReport>, change: impl FnOnce(&mut SinkReport)) {
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
        if let Some(base) = changeflow_sql::change_stream::base_of(&create.relation) {
            let stream = changeflow_sql::change_stream::stream_relation(&self.catalog, base)?;
            self.catalog.add_stream(stream);
        }
        let relation = self.catalog.require_relation(&create.relation)?.clone();
        let target = self.sink_target(create, &relation)?;
        self.catalog.add_sink(SinkDef {
            name: create.name.clone(),
            relation: relation.name.clone(),
            connector: create.connector.clone(),
        })?;
        let is_stream = relation.kind == changeflow_sql::RelationKind::ChangeStream;
        // Restored from a checkpoint: the writer resumes after its flushed position, with
        // what it had not made durable queued again (the epochs replayed since follow). A
        // sink that had failed stays failed. Otherwise the sink starts with the relation's
        // contents.
        let saved = self.replay_sinks.remove(&create.name);
        let flushed = saved.as_ref().map(|s| s.flushed.clone()).unwrap_or_default();
        // With a data directory (a restore runs before the journal is opened), taken epochs
        // are kept until flushed, so checkpoints hold them.
        let durable = self.journal.is_some() || self.replaying;
        let queue = Arc::new(SinkQueue::new(Arc::clone(&self.sink_backlog), durable, flushed.clone()));
        let mut report = SinkReport { state: "starting".into(), delivered_epoch: self.epoch, ..Default::default() };
        match saved {
            Some(saved) => {
                report.delivered_epoch = flushed.epoch;
                if let Some(failed) = saved.failed {
                    report.state = failed;
                    queue.close();
                }
                for mut epoch in saved.backlog {
                    epoch.change = epoch.change.with_schema(Arc::clone(&target.schema))?;
                    queue.push(SinkItem::Epoch(epoch));
                }
            }
            None if self.mode == crate::Mode::Execute && !is_stream => {
                let contents = self.committed_snapshot(&relation.name)?;
                queue.push(SinkItem::Epoch(SinkEpoch {
                    epoch: self.epoch,
                    change: ChangeBatch::inserts(contents),
                    snapshot: true,
                    origin: None,
                    errors: None,
                }));
            }
            None => {}
        }
        let resume = flushed.position;
        self.sinks.insert(
            create.name.clone(),
            SinkHandle { create: create.clone(), target, queue, report: Arc::new(Mutex::new(report)), resume },
        );
        self.defined(&create.name, Vec::new())?;
        Ok(Output::Command("CREATE SINK".into()))
    }

    /// The targets CREATE SINK reaches before it runs (see [`SinkConnector::check`]): the
    /// sink's and its dead-letter sink's connector, options and target. None with
    /// `validate = 'false'`, when only checking statements, or for a sink that exists (a
    /// restart running its startup files again, or a name in use: CREATE says which).
    pub(crate) fn sink_checks(&self, create: &CreateSink) -> Result<Vec<SinkCheck>> {
        if !validate_option(create)? || self.mode != crate::Mode::Execute || self.catalog.sink(&create.name).is_some() {
            return Ok(Vec::new());
        }
        let relation = match changeflow_sql::change_stream::base_of(&create.relation) {
            Some(base) => changeflow_sql::change_stream::stream_relation(&self.catalog, base)?,
            None => self.catalog.require_relation(&create.relation)?.clone(),
        };
        let target = self.sink_target(create, &relation)?;
        let mut checks = vec![(self.sink_connector(&create.connector)?, writer_options(create), target.clone())];
        if let OnError::DeadLetter { connector, options, .. } = &create.on_error {
            checks.push((self.sink_connector(connector)?, options.clone(), target));
        }
        Ok(checks)
    }

    /// What a sink's writer is told about the relation it delivers, with its options checked
    /// (nothing outside is touched).
    pub(crate) fn sink_target(
        &self,
        create: &CreateSink,
        relation: &changeflow_sql::catalog::Relation,
    ) -> Result<SinkTarget> {
        validate_option(create)?;
        let connector = self.sink_connector(&create.connector)?;
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
            upstream: self
                .upstream_of(changeflow_sql::change_stream::base_of(&relation.name).unwrap_or(&relation.name)),
        };
        connector.validate(&writer_options(create), &target)?;
        if let OnError::DeadLetter { connector: name, options, .. } = &create.on_error {
            self.sink_connector(name)?.validate(options, &target)?;
        }
        Ok(target)
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
        // A sink created again under this name gets a task of its own.
        self.started_sinks.remove(name);
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

    /// Every sink as a checkpoint keeps it (see [`SinkQueue::saved`]); each is then asked to
    /// flush, without being waited for.
    pub(crate) fn saved_sinks(&self) -> BTreeMap<String, SavedSink> {
        self.sinks
            .iter()
            .map(|(name, handle)| {
                let state = handle.report.lock().map(|r| r.state.clone()).unwrap_or_default();
                let saved = handle.queue.saved(state.starts_with("failed").then_some(state));
                handle.queue.push(SinkItem::Flush);
                (name.clone(), saved)
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
            if handle.queue.is_closed() {
                // Failed before a restart: nothing runs until it is dropped and created again.
                continue;
            }
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

    /// The sinks with epochs not yet delivered, as `"name" (state, N epochs behind)`.
    pub(crate) fn lagging_sinks(&self) -> Vec<String> {
        self.sink_reports()
            .into_iter()
            .filter(|(_, _, _, report)| report.lag_epochs > 0)
            .map(|(name, _, _, report)| format!("\"{name}\" ({}, {} epochs behind)", report.state, report.lag_epochs))
            .collect()
    }

    /// Each sink's state, in name order.
    pub fn sink_reports(&self) -> Vec<(String, String, String, SinkReport)> {
        self.sinks
            .iter()
            .map(|(name, handle)| {
                let mut report = handle.report.lock().map(|r| r.clone()).unwrap_or_default();
                // A sink of a failed view receives nothing more: say so.
                if report.state == "running"
                    && let Some(error) = self.view_error(&handle.target.relation)
                {
                    report.state = format!("failed: its relation \"{}\" {error}", handle.target.relation);
                }
                let working = report.state != "running" || handle.queue.has_waiting_epochs();
                report.lag_epochs = if working { self.epoch.saturating_sub(report.delivered_epoch) } else { 0 };
                (name.clone(), handle.target.relation.clone(), handle.create.connector.clone(), report)
            })
            .collect()
    }
}

/// A target CREATE SINK reaches before it runs: connector, options, target.
pub(crate) type SinkCheck = (Arc<dyn SinkConnector>, BTreeMap<String, String>, SinkTarget);

/// `validate = 'true' | 'false'`: whether CREATE SINK reaches the target first (default true).
fn validate_option(create: &CreateSink) -> Result<bool> {
    match create.options.get("validate").map(|v| v.trim().to_ascii_lowercase()).as_deref() {
        None | Some("true") => Ok(true),
        Some("false") => Ok(false),
        Some(other) => Err(EngineError::Sql(changeflow_sql::SqlError::Catalog(format!(
            "sink \"{}\": validate = '{other}' is neither 'true' nor 'false'",
            create.name
        )))),
    }
}

/// The options a sink's connector sees: all but those the engine reads (`key`, `validate`).
fn writer_options(create: &CreateSink) -> BTreeMap<String, String> {
    let mut options = create.options.clone();
    options.remove("key");
    options.remove("validate");
    options
}
