//! The engine's side of durability: recording definitions and local commits in the journal,
//! capturing a checkpoint, and rebuilding the engine on start (the newest readable
//! checkpoint, then the journal after it).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use changeflow_sql::RelationKind;
use rustc_hash::FxHashMap;
use serde_json::{Value, json};

use super::checkpoint::{self, Checkpoint, ViewState};
use super::definitions::{Definition, created_object};
use super::ipc::{decode_change, encode_change};
use super::journal::{self, Journal, Record};
use super::{DataDir, in_parallel};
use crate::change::ChangeBatch;
use crate::connector::{Progress, SourceRelationDef, SourceResume};
use crate::engine::Engine;
use crate::error::{EngineError, Result};
use crate::operator::{self, StateReader};
use crate::store::RelationStore;

/// What a restart restored, for the log and for `SHOW`.
#[derive(Debug, Clone, Default)]
pub struct RestoreReport {
    /// The checkpoint loaded, if any.
    pub checkpoint: Option<String>,
    /// Rows of base relations loaded from it.
    pub rows: u64,
    /// Journal records replayed after it.
    pub journal_records: usize,
    /// Materialized views loaded from their checkpointed state.
    pub views_loaded: usize,
    /// Materialized views rebuilt from their restored inputs instead (the checkpoint held no
    /// usable state for them; `views_warning` says why).
    pub views_rebuilt: usize,
    pub views_warning: Option<String>,
    pub elapsed: Duration,
    /// The loaded checkpoint's first journal segment and source progress.
    pub(crate) loaded: Option<(u64, BTreeMap<String, Progress>)>,
}

/// A view loaded from a checkpoint, before it takes the place of the one replayed.
struct LoadedView {
    /// Its position among the engine's views.
    index: usize,
    dataflow: Box<dyn operator::Operator>,
    store: RelationStore,
    contents: ChangeBatch,
}

/// How the materialized views came back.
#[derive(Debug, Default)]
struct ViewsRestored {
    loaded: usize,
    rebuilt: usize,
    warning: Option<String>,
}

fn json_bytes(value: &Value) -> Result<Vec<u8>> {
    serde_json::to_vec(value).map_err(|e| EngineError::Internal(format!("encoding JSON: {e}")))
}

fn parse_json(bytes: &[u8]) -> Result<Value> {
    serde_json::from_slice(bytes).map_err(|e| EngineError::Durability(format!("a journal record is not JSON: {e}")))
}

impl Engine {
    /// Records that the statement being executed created `name` (in the journal too, unless
    /// this is a replay). A journal failure undoes the creation.
    pub(crate) fn defined(&mut self, name: &str, relations: Vec<SourceRelationDef>) -> Result<()> {
        self.generation += 1;
        let definition = Definition { name: name.to_string(), sql: self.statement_text.clone(), relations };
        if !self.replaying
            && let Some(journal) = self.journal.as_mut()
        {
            let appended = definition.to_json().and_then(|json| journal.append(&Record::Ddl(json_bytes(&json)?)));
            if let Err(error) = appended {
                self.forget_object(name);
                return Err(error);
            }
        }
        self.definitions.push(definition);
        Ok(())
    }

    /// Records that the statement being executed gave `name` a new definition, in the place
    /// of its old one (in the journal too, unless this is a replay).
    pub(crate) fn redefined(&mut self, name: &str) -> Result<()> {
        let Some(index) = self.definitions.iter().position(|d| d.name == name) else {
            return Err(EngineError::Internal(format!("no definition of {name} to replace")));
        };
        let definition = Definition { name: name.to_string(), sql: self.statement_text.clone(), relations: Vec::new() };
        if !self.replaying
            && let Some(journal) = self.journal.as_mut()
        {
            journal.append(&Record::Ddl(json_bytes(&definition.to_json()?)?))?;
        }
        self.generation += 1;
        self.definitions[index] = definition;
        Ok(())
    }

    /// Records that `name` was dropped, by the statement `sql`.
    pub(crate) fn undefined(&mut self, name: &str, sql: String) -> Result<()> {
        self.generation += 1;
        self.definitions.retain(|d| d.name != name);
        self.restored.remove(name);
        if !self.replaying
            && let Some(journal) = self.journal.as_mut()
        {
            journal.append(&Record::Ddl(json_bytes(&json!({ "name": name, "sql": sql }))?))?;
        }
        Ok(())
    }

    /// Removes an object that was just created (its definition could not be recorded).
    fn forget_object(&mut self, name: &str) {
        if self.catalog.source(name).is_some() {
            let _ = self.catalog.drop_source(name).map(|source| {
                for relation in &source.relations {
                    self.stores.remove(relation);
                }
            });
            self.sources.remove(name);
        } else if let Some(kind) = self.catalog.relation(name).map(|r| r.kind) {
            let _ = self.catalog.drop_relation(name, kind);
            self.stores.remove(name);
            self.views.retain(|v| v.name != name);
        }
    }

    /// Records what a source created upstream, to hand back when it is reopened.
    pub(crate) fn source_opened(&mut self, source: &str, upstream: Option<String>) -> Result<()> {
        self.generation += 1;
        if let Some(status) = self.sources.get_mut(source) {
            status.upstream = upstream.clone();
        }
        if !self.replaying
            && let Some(journal) = self.journal.as_mut()
        {
            journal.append(&Record::SourceOpened(json_bytes(&json!({ "source": source, "upstream": upstream }))?))?;
        }
        Ok(())
    }

    /// Records statements of startup files as applied (journaled with a data directory).
    pub(crate) fn record_startup(&mut self, keys: Vec<String>) -> Result<()> {
        if keys.is_empty() {
            return Ok(());
        }
        if let Some(journal) = self.journal.as_mut() {
            journal.append(&Record::Startup(json_bytes(&json!(keys))?))?;
            self.generation += 1;
        }
        self.startup_applied.extend(keys);
        Ok(())
    }

    /// Where a source resumes after a restart.
    pub(crate) fn source_resume(&self, source: &str) -> SourceResume {
        self.sources
            .get(source)
            .map(|s| SourceResume { progress: s.progress.clone().map(Progress), upstream: s.upstream.clone() })
            .unwrap_or_default()
    }

    /// Applies committed changes to local tables as one epoch, after writing them to the
    /// journal (the stores hold them already; a journal failure takes them back out).
    pub(crate) fn commit_local(&mut self, changes: Vec<(String, ChangeBatch)>) -> Result<()> {
        if !self.replaying
            && let Some(journal) = self.journal.as_mut()
        {
            let appended = changes
                .iter()
                .filter(|(_, change)| !change.is_empty())
                .map(|(name, change)| Ok((name.clone(), encode_change(change)?)))
                .collect::<Result<Vec<_>>>()
                .and_then(|tables| if tables.is_empty() { Ok(()) } else { journal.append(&Record::Commit(tables)) });
            if let Err(error) = appended {
                for (relation, change) in changes.into_iter().rev() {
                    if let Some(store) = self.stores.get_mut(&relation) {
                        store.apply(&change.negate())?;
                    }
                }
                return Err(error);
            }
        }
        self.run_epoch(changes)
    }

    /// The state to checkpoint, taken at one epoch: the journal continues in a new segment,
    /// which the checkpoint names as where replay starts. Each sink is kept as it is (its last
    /// flushed position and every epoch after it), without waiting for it, and asked to
    /// flush so that the next checkpoint finds it further on.
    pub(crate) fn capture_checkpoint(&mut self) -> Result<Checkpoint> {
        let journal_from = match self.journal.as_mut() {
            Some(journal) => journal.rotate()?,
            None => 0,
        };
        let bases: Vec<String> = self
            .catalog
            .relations()
            .filter(|r| matches!(r.kind, RelationKind::Table | RelationKind::SourceRelation))
            .map(|r| r.name.clone())
            .collect();
        // A failed view is left out: a restart then rebuilds the views.
        let saved: Vec<(&str, &dyn operator::Operator)> = self
            .views
            .iter()
            .filter(|view| view.error.is_none())
            .filter_map(|view| Some((view.name.as_str(), view.dataflow.as_deref()?)))
            .collect();
        // Contents and operator state are taken on all cores (the engine waits meanwhile).
        let stores = bases
            .iter()
            .map(String::as_str)
            .chain(saved.iter().map(|(name, _)| *name))
            .map(|name| self.stores.get(name).ok_or_else(|| EngineError::Internal(format!("no store for {name}"))))
            .collect::<Result<Vec<_>>>()?;
        let mut snapshots = in_parallel(stores, RelationStore::snapshot).into_iter();
        let states = in_parallel(saved.iter().map(|(_, dataflow)| *dataflow).collect(), |dataflow| {
            let mut operators = Vec::new();
            dataflow.save_state(&mut operators).map(|_| operators)
        });
        let mut relations = Vec::with_capacity(bases.len());
        for name in bases {
            let rows = snapshots.next().ok_or_else(|| EngineError::Internal("a snapshot went missing".into()))??;
            relations.push((name.clone(), self.without_pending(&name, rows, None)?));
        }
        let mut views = Vec::with_capacity(saved.len());
        for ((name, _), (contents, operators)) in saved.iter().zip(snapshots.zip(states)) {
            views.push(ViewState { name: name.to_string(), contents: contents?, operators: operators? });
        }
        let sources = self.sources.keys().map(|name| (name.clone(), self.source_resume(name))).collect();
        let checkpoint = Checkpoint {
            epoch: self.epoch,
            journal_from,
            definitions: self.definitions.clone(),
            sources,
            sinks: self.saved_sinks(),
            startup: self.startup_applied.iter().cloned().collect(),
            relations,
            views,
        };
        Ok(checkpoint)
    }

    /// Rebuilds the engine from a data directory, then journals into a new segment.
    pub(crate) async fn restore(&mut self, dir: &DataDir) -> Result<RestoreReport> {
        let started = Instant::now();
        let loaded = checkpoint::load_newest(&dir.checkpoint_dir())?;
        let journal_dir = dir.journal_dir();
        let journal_from = match &loaded {
            Some((_, checkpoint)) => checkpoint.journal_from,
            None => match journal::segments(&journal_dir)?.first() {
                Some(first) if *first != 1 => {
                    return Err(EngineError::Durability(format!(
                        "{} has no checkpoint, and its journal starts at segment {first}: the state before it is \
                         gone. Restore the data directory from a backup, or move it away to start empty",
                        dir.root().display()
                    )));
                }
                _ => 1,
            },
        };
        let records = journal::read_from(&journal_dir, journal_from)?;
        self.replaying = true;
        let result = self.replay(loaded.as_ref().map(|(_, c)| c), &records).await;
        self.replaying = false;
        let (rows, views) = result?;
        self.restored = self
            .definitions
            .iter()
            .filter_map(|d| {
                let statement = changeflow_sql::parse_sql(&d.sql).ok()?.into_iter().next()?;
                created_object(&statement.statement)
            })
            .collect::<FxHashMap<_, _>>();
        self.restored_secrets = self.secrets.keys().cloned().collect();
        self.journal = Some(Journal::create(&journal_dir)?);
        let loaded_progress = loaded.as_ref().map(|(_, checkpoint)| {
            let progress = checkpoint
                .sources
                .iter()
                .filter_map(|(name, resume)| Some((name.clone(), resume.progress.clone()?)))
                .collect();
            (checkpoint.journal_from, progress)
        });
        Ok(RestoreReport {
            loaded: loaded_progress,
            checkpoint: loaded.map(|(file, _)| file.path.display().to_string()),
            rows,
            journal_records: records.len(),
            views_loaded: views.loaded,
            views_rebuilt: views.rebuilt,
            views_warning: views.warning,
            elapsed: started.elapsed(),
        })
    }

    async fn replay(&mut self, checkpoint: Option<&Checkpoint>, records: &[Record]) -> Result<(u64, ViewsRestored)> {
        let mut rows = 0;
        let mut views = ViewsRestored::default();
        if let Some(checkpoint) = checkpoint {
            // Sinks in the checkpoint resume from their positions there (no new snapshot),
            // with what they had not made durable queued again.
            self.replay_sinks = checkpoint.sinks.clone();
            for definition in &checkpoint.definitions {
                self.replay_definition(definition).await?;
            }
            self.replay_sinks.clear();
            let mut changes = Vec::with_capacity(checkpoint.relations.len());
            for (name, batch) in &checkpoint.relations {
                let store = self.stores.get(name).ok_or_else(|| {
                    EngineError::Durability(format!(
                        "the checkpoint holds rows of \"{name}\", which it does not define"
                    ))
                })?;
                let change = ChangeBatch::inserts(batch.clone()).with_schema(Arc::clone(store.schema()))?;
                rows += change.len() as u64;
                changes.push((name.clone(), change));
            }
            self.startup_applied.extend(checkpoint.startup.iter().cloned());
            self.epoch = checkpoint.epoch;
            let mut loaded = self.prepare_views(&checkpoint.views);
            // Base relations and view contents fill their stores on all cores.
            let filled = {
                let by_name: FxHashMap<&str, &ChangeBatch> = changes.iter().map(|(n, c)| (n.as_str(), c)).collect();
                let mut jobs: Vec<(bool, &mut RelationStore, &ChangeBatch)> = self
                    .stores
                    .iter_mut()
                    .filter_map(|(name, store)| Some((false, store, *by_name.get(name.as_str())?)))
                    .collect();
                if let Ok(prepared) = loaded.as_mut() {
                    jobs.extend(prepared.iter_mut().map(|view| (true, &mut view.store, &view.contents)));
                }
                jobs.sort_by_key(|(_, _, change)| std::cmp::Reverse(change.len()));
                in_parallel(jobs, |(is_view, store, change)| {
                    store.reserve(change.len() as u64);
                    (is_view, store.apply(change).map(|_| ()))
                })
            };
            for (is_view, result) in filled {
                match result {
                    Err(error) if is_view => loaded = Err(error),
                    other => other?,
                }
            }
            match loaded.map(|prepared| self.install_views(prepared)) {
                Ok(count) => views.loaded = count,
                Err(error) => {
                    tracing::warn!(%error, "rebuilding the materialized views from their restored inputs");
                    views = ViewsRestored { loaded: 0, rebuilt: self.views.len(), warning: Some(error.to_string()) };
                    // What the checkpoint holds was delivered to the sinks before it was taken.
                    self.sinks_muted = true;
                    let rebuilt = self.run_epoch(changes);
                    self.sinks_muted = false;
                    rebuilt?;
                }
            }
            for (name, resume) in &checkpoint.sources {
                if let Some(status) = self.sources.get_mut(name) {
                    status.progress = resume.progress.as_ref().map(|p| p.0.clone());
                    status.upstream = resume.upstream.clone();
                }
            }
        }
        for record in records {
            match record {
                Record::Ddl(json) => self.replay_definition(&Definition::from_json(&parse_json(json)?)?).await?,
                Record::Commit(tables) => {
                    let mut changes = Vec::with_capacity(tables.len());
                    for (name, bytes) in tables {
                        let store = self.stores.get_mut(name).ok_or_else(|| {
                            EngineError::Durability(format!(
                                "the journal writes to \"{name}\", which it does not define"
                            ))
                        })?;
                        let change = decode_change(bytes, &Arc::clone(store.schema()))?;
                        store.apply(&change)?;
                        changes.push((name.clone(), change));
                    }
                    self.commit_local(changes)?;
                }
                Record::Startup(json) => {
                    let keys: Vec<String> = serde_json::from_slice(json)
                        .map_err(|e| EngineError::Durability(format!("a journal record is not JSON: {e}")))?;
                    self.startup_applied.extend(keys);
                }
                Record::SourceOpened(json) => {
                    let value = parse_json(json)?;
                    let source = value.get("source").and_then(Value::as_str).unwrap_or_default().to_string();
                    let upstream = value.get("upstream").and_then(Value::as_str).map(str::to_string);
                    self.source_opened(&source, upstream)?;
                }
            }
        }
        Ok((rows, views))
    }

    /// Loads every materialized view's operator state from the checkpoint into a freshly
    /// built dataflow, with an empty store for its contents (filled by the caller). An error
    /// when any view has no usable state: the views are then rebuilt.
    fn prepare_views(&self, states: &[ViewState]) -> Result<Vec<LoadedView>> {
        let by_name: FxHashMap<&str, &ViewState> = states.iter().map(|s| (s.name.as_str(), s)).collect();
        let mut loaded = Vec::with_capacity(self.views.len());
        for (index, view) in self.views.iter().enumerate() {
            let failed = |error: EngineError| {
                EngineError::Durability(format!("materialized view \"{}\" cannot be loaded: {error}", view.name))
            };
            let state = by_name.get(view.name.as_str()).ok_or_else(|| {
                EngineError::Durability(format!("the checkpoint holds no state of materialized view \"{}\"", view.name))
            })?;
            let mut dataflow = operator::build(&view.plan)?;
            let mut reader = StateReader::new(state.operators.clone());
            dataflow.load_state(&mut reader).and_then(|_| reader.finish()).map_err(failed)?;
            let current = self
                .stores
                .get(&view.name)
                .ok_or_else(|| EngineError::Internal(format!("no store for view {}", view.name)))?;
            let schema = Arc::clone(current.schema());
            let store = RelationStore::new(&view.name, Arc::clone(&schema), current.primary_key())?;
            let contents = ChangeBatch::inserts(state.contents.clone()).with_schema(schema).map_err(failed)?;
            loaded.push(LoadedView { index, dataflow, store, contents });
        }
        Ok(loaded)
    }

    /// Puts loaded views in place of the ones the definitions created; returns how many.
    fn install_views(&mut self, loaded: Vec<LoadedView>) -> usize {
        let count = loaded.len();
        for LoadedView { index, dataflow, store, .. } in loaded {
            let view = &mut self.views[index];
            view.dataflow = Some(dataflow);
            self.stores.insert(view.name.clone(), store);
        }
        count
    }

    /// Executes a stored definition again (a source's relations come from it, not upstream).
    async fn replay_definition(&mut self, definition: &Definition) -> Result<()> {
        let failed = |error: EngineError| {
            EngineError::Durability(format!("replaying `{}` from the data directory: {error}", definition.sql))
        };
        let statements = changeflow_sql::parse_sql(&definition.sql).map_err(|e| failed(e.into()))?;
        self.replay_relations = Some(definition.relations.clone());
        for statement in &statements {
            let result = self.execute(statement).await;
            if let Err(error) = result {
                self.replay_relations = None;
                return Err(failed(error));
            }
        }
        self.replay_relations = None;
        Ok(())
    }

    /// The CREATE SOURCE statements of the live sources, in creation order.
    pub(crate) fn stored_sources(&self) -> Result<Vec<changeflow_sql::parser::CreateSource>> {
        let mut sources = Vec::new();
        for definition in &self.definitions {
            for statement in changeflow_sql::parse_sql(&definition.sql)? {
                if let changeflow_sql::parser::Statement::CreateSource(create) = statement.statement {
                    sources.push(create);
                }
            }
        }
        Ok(sources)
    }
}
