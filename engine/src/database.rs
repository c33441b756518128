//! A shareable engine: statements from any number of callers, and source tasks that read
//! their upstream system and apply each transaction to the engine as an epoch.

use std::collections::HashMap;
use std::sync::Arc;

use changeflow_sql::parser::{CreateSource, ParsedStatement, Statement};
use tokio::sync::{Mutex, MutexGuard};
use tokio::task::JoinHandle;

use crate::connector::{ConnectorRegistry, SourceEvent};
use crate::engine::{Engine, Mode, Output};
use crate::error::{EngineError, Result};

pub struct Database {
    engine: Arc<Mutex<Engine>>,
    registry: ConnectorRegistry,
    source_tasks: std::sync::Mutex<HashMap<String, JoinHandle<()>>>,
}

impl Database {
    pub fn new(registry: ConnectorRegistry) -> Self {
        Self::with_mode(registry, Mode::Execute)
    }

    pub fn with_mode(registry: ConnectorRegistry, mode: Mode) -> Self {
        Self {
            engine: Arc::new(Mutex::new(Engine::with_mode(registry.clone(), mode))),
            registry,
            source_tasks: std::sync::Mutex::new(HashMap::new()),
        }
    }

    /// Exclusive access to the engine (one statement or one epoch at a time).
    pub async fn engine(&self) -> MutexGuard<'_, Engine> {
        self.engine.lock().await
    }

    /// Executes a statement; `CREATE SOURCE` also starts reading the source.
    pub async fn execute(&self, statement: &ParsedStatement) -> Result<Output> {
        let (output, mode) = {
            let mut engine = self.engine.lock().await;
            (engine.execute(statement).await?, engine.mode)
        };
        match &statement.statement {
            Statement::CreateSource(create) if mode == Mode::Execute => {
                let running = self.tasks()?.contains_key(&create.name);
                if !running && let Err(error) = self.start_source(create).await {
                    // Leave nothing half made: the source goes away with its error.
                    let _ = self.engine.lock().await.drop_source(&create.name, true);
                    return Err(error);
                }
            }
            Statement::DropSource { name, .. } => {
                if let Some(task) = self.tasks()?.remove(name) {
                    task.abort();
                }
            }
            _ => {}
        }
        Ok(output)
    }

    fn tasks(&self) -> Result<std::sync::MutexGuard<'_, HashMap<String, JoinHandle<()>>>> {
        self.source_tasks.lock().map_err(|_| EngineError::Internal("source task table poisoned".into()))
    }

    async fn start_source(&self, create: &CreateSource) -> Result<()> {
        let connector = self
            .registry
            .source(&create.connector)
            .ok_or_else(|| EngineError::Connector(format!("unknown connector {}", create.connector)))?;
        let mut reader = connector.open(&create.name, &create.options, None).await?;
        let engine = Arc::clone(&self.engine);
        let name = create.name.clone();
        set_state(&engine, &name, "running").await;
        let task = tokio::spawn(async move {
            loop {
                let event = reader.next().await;
                let mut guard = engine.lock().await;
                match event {
                    Ok(Some(SourceEvent::Transaction { changes, progress })) => {
                        let count: usize = changes.iter().map(|(_, c)| c.len()).sum();
                        if let Err(error) = guard.apply_source_changes(changes) {
                            guard.source_failed(&name, &error.to_string());
                            break;
                        }
                        guard.source_progress(&name, 1, count as u64, &progress.0);
                        drop(guard);
                        if let Err(error) = reader.commit(&progress).await {
                            engine.lock().await.source_failed(&name, &error.to_string());
                            break;
                        }
                    }
                    Ok(Some(SourceEvent::Progress(progress))) => {
                        guard.source_progress(&name, 0, 0, &progress.0);
                        drop(guard);
                        let _ = reader.commit(&progress).await;
                    }
                    Ok(None) => {
                        guard.source_finished(&name);
                        break;
                    }
                    Err(error) => {
                        tracing::error!(source = %name, %error, "source failed");
                        guard.source_failed(&name, &error.to_string());
                        break;
                    }
                }
            }
        });
        self.tasks()?.insert(create.name.clone(), task);
        Ok(())
    }
}

impl Drop for Database {
    fn drop(&mut self) {
        if let Ok(tasks) = self.source_tasks.lock() {
            for task in tasks.values() {
                task.abort();
            }
        }
    }
}

async fn set_state(engine: &Mutex<Engine>, source: &str, state: &str) {
    if let Some(status) = engine.lock().await.sources.get_mut(source) {
        status.state = state.to_string();
    }
}

impl Engine {
    pub(crate) fn source_progress(&mut self, source: &str, transactions: u64, changes: u64, progress: &str) {
        if let Some(status) = self.sources.get_mut(source) {
            status.transactions += transactions;
            status.changes += changes;
            status.progress = Some(progress.to_string());
        }
    }

    pub(crate) fn source_failed(&mut self, source: &str, error: &str) {
        if let Some(status) = self.sources.get_mut(source) {
            status.state = format!("failed: {error}");
        }
    }

    pub(crate) fn source_finished(&mut self, source: &str) {
        if let Some(status) = self.sources.get_mut(source) {
            status.state = "finished".to_string();
        }
    }
}
