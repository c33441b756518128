//! A shareable engine: statements from any number of callers, and source tasks that read
//! their upstream system and apply each transaction to the engine as an epoch. With a data
//! directory ([`Database::open`]) it restores its state on start, takes checkpoints in the
//! background, and lets sources confirm upstream only what a checkpoint holds.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use changeflow_sql::parser::{CreateSource, ParsedStatement, Statement};
use tokio::sync::{Mutex, MutexGuard, oneshot, watch};
use tokio::task::JoinHandle;

use crate::connector::{ConnectorRegistry, OPENING, Origin, Progress, SourceEvent, SourceReader, SourceResume};
use crate::durable::{Checkpointer, DurabilityOptions, RestoreReport};
use crate::engine::{Engine, Mode, Output};
use crate::error::{EngineError, Result};

/// How long a shutdown waits for sinks to deliver what they have waiting.
const SHUTDOWN_SINK_WAIT: Duration = Duration::from_secs(5);

pub struct Database {
    engine: Arc<Mutex<Engine>>,
    /// The writer lease: held by a session from its block's first write to COMMIT /
    /// ROLLBACK, and by any write outside a block for its duration (see `Session`).
    pub(crate) writer: Arc<Mutex<()>>,
    registry: ConnectorRegistry,
    source_tasks: Arc<std::sync::Mutex<HashMap<String, SourceTask>>>,
    /// With a data directory: checkpoints, and the progress sources may confirm upstream.
    checkpointer: Option<Arc<Checkpointer>>,
    background: std::sync::Mutex<Option<JoinHandle<()>>>,
    /// Delivery tasks of the sinks.
    sink_tasks: std::sync::Mutex<Vec<JoinHandle<()>>>,
    /// How long a local write waits for sinks that are too far behind (see `wait_for_sinks`).
    write_wait: Duration,
}

/// A running source: its task, and the signal that stops it (true: drop upstream state).
struct SourceTask {
    handle: JoinHandle<()>,
    stop: Option<oneshot::Sender<bool>>,
}

impl Database {
    pub fn new(registry: ConnectorRegistry) -> Self {
        Self::with_mode(registry, Mode::Execute)
    }

    pub fn with_mode(registry: ConnectorRegistry, mode: Mode) -> Self {
        Self {
            engine: Arc::new(Mutex::new(Engine::with_mode(registry.clone(), mode))),
            writer: Arc::new(Mutex::new(())),
            registry,
            source_tasks: Arc::new(std::sync::Mutex::new(HashMap::new())),
            checkpointer: None,
            background: std::sync::Mutex::new(None),
            sink_tasks: std::sync::Mutex::new(Vec::new()),
            write_wait: Duration::from_secs(30),
        }
    }

    /// Most bytes one ad-hoc query's operators may hold; past it the query fails with
    /// 53200. None (the default) sets no limit.
    pub async fn set_query_memory_limit(&self, bytes: Option<usize>) {
        self.engine.lock().await.query_memory_limit = bytes;
    }

    /// How long a local write waits for sinks that are too far behind before it fails.
    pub fn set_write_wait(&mut self, wait: Duration) {
        self.write_wait = wait;
    }

    /// Opens a database kept in a data directory: restores the catalog, local tables and
    /// source relations (newest checkpoint, then the journal), resumes every source after
    /// its checkpointed progress, and takes checkpoints in the background.
    pub async fn open(registry: ConnectorRegistry, options: DurabilityOptions) -> Result<(Self, RestoreReport)> {
        let mut engine = Engine::new(registry.clone());
        let (checkpointer, report) = Checkpointer::open(&mut engine, options).await?;
        let checkpointer = Arc::new(checkpointer);
        let mut database = Self::new(registry);
        database.engine = Arc::new(Mutex::new(engine));
        database.checkpointer = Some(Arc::clone(&checkpointer));
        let sources = database.engine.lock().await.stored_sources()?;
        for create in sources {
            if let Err(error) = database.start_source(&create).await {
                // The source stays defined (its data and progress are kept) and is tried
                // again with backoff (the upstream may be down while this process starts);
                // SHOW SOURCES says why it is not running.
                tracing::warn!(source = %create.name, %error, "resuming a source failed; retrying");
                database.engine.lock().await.source_retrying(&create.name, &error.to_string());
                let retry = tokio::spawn(database.starter().retry(create));
                if let Ok(mut handles) = database.sink_tasks.lock() {
                    handles.push(retry);
                }
            }
        }
        database.start_sinks(None).await?;
        let handle = tokio::spawn(Arc::clone(&checkpointer).run(Arc::clone(&database.engine)));
        if let Ok(mut background) = database.background.lock() {
            *background = Some(handle);
        }
        Ok((database, report))
    }

    /// Whether a write of a startup file (see [`Database::startup_key`]) took effect in this
    /// data directory at an earlier start (always false without a data directory).
    pub async fn startup_applied(&self, key: &str) -> bool {
        self.checkpointer.is_some() && self.engine.lock().await.startup_applied.contains(key)
    }

    /// Records writes of startup files as applied (nothing without a data directory).
    pub async fn record_startup(&self, keys: Vec<String>) -> Result<()> {
        if self.checkpointer.is_none() {
            return Ok(());
        }
        self.engine.lock().await.record_startup(keys)
    }

    /// Identifies a write in a startup file: the file, the statement's text and how many
    /// identical statements precede it there. Restarting with the same files skips what
    /// already took effect, so seed data is inserted once.
    pub fn startup_key(file: &str, text: &str, occurrence: usize) -> String {
        format!("{file}#{occurrence}:{}", text.split_whitespace().collect::<Vec<_>>().join(" "))
    }

    /// Counts and sizes of checkpoints taken (none without a data directory).
    pub fn checkpoint_stats(&self) -> Option<crate::durable::CheckpointStats> {
        self.checkpointer.as_ref().map(|c| c.stats())
    }

    /// Takes a checkpoint now (with a data directory; otherwise nothing happens).
    pub async fn checkpoint(&self) -> Result<()> {
        match &self.checkpointer {
            Some(checkpointer) => checkpointer.checkpoint(&self.engine).await,
            None => Ok(()),
        }
    }

    /// Takes the writer lease (see `Session`) for a session's statement. The wait ends with
    /// an error when the statement is canceled, its client goes away, its statement timeout
    /// passes (57014) or its `lock_timeout` does (55P03), so a writer behind another
    /// session's idle transaction never waits forever, and one whose client left never
    /// writes. A transaction the engine still holds once the lease is taken has no session:
    /// the one that opened it ended without COMMIT or ROLLBACK. It is rolled back before the
    /// new holder writes, so no write of the new holder joins it.
    pub(crate) async fn writer_lease_for(
        &self,
        interrupt: &crate::interrupt::Interrupt,
    ) -> Result<tokio::sync::OwnedMutexGuard<()>> {
        let acquire = Arc::clone(&self.writer).lock_owned();
        tokio::pin!(acquire);
        let give_up = interrupt.lock_timeout().map(|t| tokio::time::Instant::now() + t);
        let lease = loop {
            tokio::select! {
                lease = &mut acquire => break lease,
                () = tokio::time::sleep(Duration::from_millis(20)) => {
                    interrupt.check()?;
                    if give_up.is_some_and(|at| tokio::time::Instant::now() >= at) {
                        return Err(EngineError::Canceled(
                            "canceling statement due to lock timeout: another session's transaction holds the \
                             write lease"
                                .into(),
                        ));
                    }
                }
            }
        };
        Ok(self.after_lease(lease).await)
    }

    async fn after_lease(&self, lease: tokio::sync::OwnedMutexGuard<()>) -> tokio::sync::OwnedMutexGuard<()> {
        if self.roll_back_open_transaction().await {
            tracing::warn!("rolled back a transaction left open by a session that is gone");
        }
        lease
    }

    /// Rolls back the engine's open transaction; true when there was one. The caller holds
    /// the writer lease.
    pub(crate) async fn roll_back_open_transaction(&self) -> bool {
        let mut engine = self.engine.lock().await;
        if !engine.in_transaction() {
            return false;
        }
        if let Err(error) = engine.execute_sql_text("ROLLBACK").await {
            tracing::error!(%error, "rolling back an open transaction failed");
        }
        true
    }

    /// Exclusive access to the engine (one statement or one epoch at a time).
    pub async fn engine(&self) -> MutexGuard<'_, Engine> {
        self.engine.lock().await
    }

    /// Executes a statement; `CREATE SOURCE` also starts reading the source, and `DROP
    /// SOURCE` stops it and removes what it created upstream. Concurrent callers should each
    /// use a [`crate::Session`], which keeps their transactions apart.
    pub async fn execute(&self, statement: &ParsedStatement) -> Result<Output> {
        self.execute_as(statement, true, None).await
    }

    /// Executes a statement; a query sees an open transaction's changes only when
    /// `owns_transaction` (the session that opened it asks). Queries are planned and their
    /// snapshots taken under the engine lock, then run without it.
    pub(crate) async fn execute_as(
        &self,
        statement: &ParsedStatement,
        owns_transaction: bool,
        interrupt: Option<&Arc<crate::interrupt::Interrupt>>,
    ) -> Result<Output> {
        if let Statement::Sql(sql) = &statement.statement
            && let datafusion::sql::sqlparser::ast::Statement::Query(query) = sql.as_ref()
        {
            let prepared = self.engine.lock().await.prepare_query(query, !owns_transaction)?;
            return prepared.run(interrupt).await;
        }
        // Connectors are handed the values of the secrets that options name.
        let resolved = self.engine.lock().await.with_secrets(statement)?;
        let statement = &*resolved;
        if let Statement::CreateSink(create) = &statement.statement {
            // The target is reached before anything is created (without holding the engine).
            let checks = self.engine.lock().await.sink_checks(create)?;
            for (connector, options, target) in checks {
                connector.check(&options, &target).await?;
            }
        }
        if is_local_write(statement) {
            self.wait_for_sinks().await?;
        }
        let (output, mode, restored_source) = {
            let mut engine = self.engine.lock().await;
            // A CREATE SOURCE of a startup file, restarted with the same files: the source
            // came back from the data directory and was started (or is being retried) then.
            let restored_source = matches!(&statement.statement,
                Statement::CreateSource(create) if engine.catalog.source(&create.name).is_some());
            (engine.execute(statement).await?, engine.mode, restored_source)
        };
        if let Statement::DropSource { name, .. } = &statement.statement {
            let task = self.tasks()?.remove(name);
            if let Some(task) = task {
                task.stop(true).await;
            }
        }
        if let Statement::CreateSink(create) = &statement.statement
            && mode == Mode::Execute
        {
            self.start_sinks(Some(&create.name)).await?;
        }
        if let Statement::CreateSource(create) = &statement.statement
            && mode == Mode::Execute
            && !restored_source
        {
            let running = self.tasks()?.contains_key(&create.name);
            if !running && let Err(error) = self.start_source(create).await {
                // Leave nothing half made: the source goes away with its error.
                let _ = self.engine.lock().await.drop_source(&create.name, true, false);
                return Err(error);
            }
        }
        Ok(output)
    }

    /// Backpressure on local writes: while the sinks have more than [`BACKLOG_LIMIT`] epochs
    /// waiting, a write waits for them to catch up, up to `write_wait`; then it fails (53000),
    /// naming the sinks behind, and nothing is applied.
    ///
    /// [`BACKLOG_LIMIT`]: crate::sink::BACKLOG_LIMIT
    async fn wait_for_sinks(&self) -> Result<()> {
        let backlog = Arc::clone(&self.engine.lock().await.sink_backlog);
        let behind = || backlog.load(std::sync::atomic::Ordering::Relaxed) > crate::sink::BACKLOG_LIMIT;
        if !behind() {
            return Ok(());
        }
        let deadline = tokio::time::Instant::now() + self.write_wait;
        while behind() {
            if tokio::time::Instant::now() >= deadline {
                let lagging = self.engine.lock().await.lagging_sinks();
                return Err(EngineError::Backpressure(format!(
                    "the write waited {} s for sinks that are too far behind and was not applied: {}",
                    self.write_wait.as_secs(),
                    lagging.join(", ")
                )));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok(())
    }

    /// Starts a query and streams its rows (see [`crate::RowStream`]); planned over a
    /// snapshot under the engine lock, then run without it.
    pub(crate) async fn stream_query(
        &self,
        query: &datafusion::sql::sqlparser::ast::Query,
        owns_transaction: bool,
        interrupt: Option<&Arc<crate::interrupt::Interrupt>>,
    ) -> Result<(datafusion::arrow::datatypes::SchemaRef, crate::RowStream)> {
        let prepared = self.engine.lock().await.prepare_query(query, !owns_transaction)?;
        prepared.stream(interrupt).await
    }

    /// What a statement returns and takes, without running it (nothing changes).
    pub async fn describe(&self, statement: &ParsedStatement) -> Result<crate::Description> {
        use datafusion::sql::sqlparser::ast;
        let mut engine = self.engine.lock().await;
        match &statement.statement {
            Statement::Sql(sql) => match sql.as_ref() {
                ast::Statement::Query(query) => engine.describe_query(query),
                ast::Statement::Explain { .. } => describe_output(engine.execute(statement).await?),
                _ => Ok(crate::Description::default()),
            },
            Statement::Show(_) | Statement::ShowCreate { .. } | Statement::ExplainView(_) => {
                describe_output(engine.execute(statement).await?)
            }
            Statement::Subscribe { relation, .. } => {
                let schema = engine.subscription_schema(relation)?;
                Ok(crate::Description { columns: Some(schema), parameters: Vec::new() })
            }
            Statement::CreateSource(_)
            | Statement::DropSource { .. }
            | Statement::CreateSink(_)
            | Statement::DropSink { .. }
            | Statement::CreateSecret(_)
            | Statement::DropSecret { .. } => Ok(crate::Description::default()),
        }
    }

    /// Starts a SUBSCRIBE to a relation (see [`crate::subscribe`]).
    pub async fn subscribe(&self, relation: &str, snapshot: bool) -> Result<crate::Subscription> {
        self.engine.lock().await.subscribe(relation, snapshot)
    }

    /// Stops every source reader (without dropping upstream state), waiting for each, and
    /// with a data directory takes a last checkpoint.
    pub async fn shutdown(&self) {
        if let Some(handle) = self.background.lock().ok().and_then(|mut b| b.take()) {
            handle.abort();
        }
        let tasks: Vec<SourceTask> = match self.tasks() {
            Ok(mut tasks) => tasks.drain().map(|(_, t)| t).collect(),
            Err(_) => return,
        };
        for task in tasks {
            task.stop(false).await;
        }
        // Sinks deliver what they have waiting, for a bounded time: what a sink has not
        // delivered by then stays in the last checkpoint (with a data directory) and is
        // delivered after the restart.
        let backlog = Arc::clone(&self.engine.lock().await.sink_backlog);
        let deadline = tokio::time::Instant::now() + SHUTDOWN_SINK_WAIT;
        while backlog.load(std::sync::atomic::Ordering::Relaxed) > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let behind = self.engine.lock().await.lagging_sinks();
        if !behind.is_empty() {
            let kept = if self.checkpointer.is_some() {
                "the checkpoint keeps what they did not deliver"
            } else {
                "without a data directory, what they did not deliver is lost"
            };
            tracing::warn!(sinks = %behind.join(", "), "stopping with sinks that have not delivered everything; {kept}");
        }
        if let Err(error) = self.checkpoint().await {
            tracing::error!(%error, "the checkpoint at shutdown failed");
        }
        if let Ok(mut handles) = self.sink_tasks.lock() {
            for handle in handles.drain(..) {
                handle.abort();
            }
        }
    }

    /// Starts the delivery tasks of sinks not yet running (one, or all).
    async fn start_sinks(&self, only: Option<&str>) -> Result<()> {
        let tasks = self.engine.lock().await.sink_tasks(only)?;
        let mut handles = self.sink_tasks.lock().map_err(|_| EngineError::Internal("sink tasks poisoned".into()))?;
        handles.retain(|h| !h.is_finished());
        for task in tasks {
            handles.push(tokio::spawn(task.run_contained()));
        }
        Ok(())
    }

    fn tasks(&self) -> Result<std::sync::MutexGuard<'_, HashMap<String, SourceTask>>> {
        self.source_tasks.lock().map_err(|_| EngineError::Internal("source task table poisoned".into()))
    }

    async fn start_source(&self, create: &CreateSource) -> Result<()> {
        self.starter().start(create).await
    }

    fn starter(&self) -> SourceStarter {
        SourceStarter {
            engine: Arc::clone(&self.engine),
            registry: self.registry.clone(),
            checkpointer: self.checkpointer.clone(),
            tasks: Arc::clone(&self.source_tasks),
        }
    }
}

/// What starting a source's reader needs, shareable with a task that retries it.
#[derive(Clone)]
struct SourceStarter {
    engine: Arc<Mutex<Engine>>,
    registry: ConnectorRegistry,
    checkpointer: Option<Arc<Checkpointer>>,
    tasks: Arc<std::sync::Mutex<HashMap<String, SourceTask>>>,
}

impl SourceStarter {
    /// Opens the source's reader (resuming from its checkpointed position) and starts the
    /// task that applies what it reads.
    async fn start(&self, create: &CreateSource) -> Result<()> {
        let connector = self
            .registry
            .source(&create.connector)
            .ok_or_else(|| EngineError::Connector(format!("unknown connector {}", create.connector)))?;
        let (create, monitor, resume, relations) = {
            let engine = self.engine.lock().await;
            // The secrets' values as they are now: a retry uses a secret created anew since.
            let create = engine.source_with_secrets(create)?;
            let monitor = engine.sources.get(&create.name).map(|s| s.monitor.clone()).unwrap_or_default();
            let resume = engine.source_resume(&create.name);
            (create.clone(), monitor, resume, engine.source_relations(&create.name))
        };
        let create = &create;
        if resume == SourceResume::default() && self.checkpointer.is_some() {
            // Recorded before anything is created upstream: a crash inside `open` leaves
            // the reader, on restart, knowing it may have created what it finds.
            self.engine.lock().await.source_opened(&create.name, Some(OPENING.into()))?;
        }
        let reader = connector.open(create, resume, &relations, monitor.clone()).await?;
        self.engine.lock().await.source_opened(&create.name, reader.upstream_state())?;
        let state = monitor.report().state;
        if state == "starting" || state.starts_with("retrying") {
            monitor.set_state("running");
        }
        let (stop, stopped) = oneshot::channel();
        let confirm = self.checkpointer.as_ref().map(|c| c.confirmable());
        let backlog = Arc::clone(&self.engine.lock().await.sink_backlog);
        let run = run_source(Arc::clone(&self.engine), create.name.clone(), reader, stopped, confirm, backlog);
        let handle = tokio::spawn(contain_source_panic(Arc::clone(&self.engine), create.name.clone(), run));
        self.tasks
            .lock()
            .map_err(|_| EngineError::Internal("source task table poisoned".into()))?
            .insert(create.name.clone(), SourceTask { handle, stop: Some(stop) });
        Ok(())
    }

    /// Tries to start a source until it starts or is dropped, backing off up to 30 s.
    async fn retry(self, create: CreateSource) {
        let mut backoff = Duration::from_secs(1);
        loop {
            tokio::time::sleep(backoff).await;
            if self.engine.lock().await.catalog.source(&create.name).is_none() {
                return;
            }
            match self.start(&create).await {
                Ok(()) => {
                    tracing::info!(source = %create.name, "source resumed");
                    return;
                }
                Err(error) => {
                    tracing::warn!(source = %create.name, %error, "resuming a source failed; retrying");
                    self.engine.lock().await.source_retrying(&create.name, &error.to_string());
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                }
            }
        }
    }
}

/// INSERT, UPDATE, DELETE and COMMIT: statements that make epochs of local tables.
fn is_local_write(statement: &ParsedStatement) -> bool {
    use datafusion::sql::sqlparser::ast;
    matches!(&statement.statement, Statement::Sql(sql) if matches!(
        sql.as_ref(),
        ast::Statement::Insert(_) | ast::Statement::Update(_) | ast::Statement::Delete(_) | ast::Statement::Commit { .. }
    ))
}

fn describe_output(output: Output) -> Result<crate::Description> {
    Ok(crate::Description {
        columns: match output.into_parts().1 {
            Output::Rows { schema, .. } => Some(schema),
            Output::Command(_) | Output::Noticed { .. } => None,
        },
        parameters: Vec::new(),
    })
}

impl SourceTask {
    async fn stop(mut self, drop_upstream: bool) {
        if let Some(stop) = self.stop.take()
            && stop.send(drop_upstream).is_ok()
        {
            // The task closes its reader; give it a bounded time to do so.
            if tokio::time::timeout(Duration::from_secs(10), &mut self.handle).await.is_ok() {
                return;
            }
        }
        self.handle.abort();
    }
}

/// A source's task: reads events and applies each transaction as an epoch until the source
/// ends, fails, or is stopped.
/// Without a data directory, what is applied is confirmed upstream at once; with one
/// (`confirm`), only what the checkpointer publishes as held by a kept checkpoint.
async fn run_source(
    engine: Arc<Mutex<Engine>>,
    name: String,
    mut reader: Box<dyn SourceReader>,
    mut stopped: oneshot::Receiver<bool>,
    mut confirm: Option<watch::Receiver<BTreeMap<String, Progress>>>,
    sink_backlog: Arc<std::sync::atomic::AtomicUsize>,
) {
    let drop_upstream = loop {
        // Backpressure: while sinks have much waiting, read nothing more.
        while sink_backlog.load(std::sync::atomic::Ordering::Relaxed) > crate::sink::BACKLOG_LIMIT {
            if stopped.is_terminated() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if let Some(confirmable) = confirm.as_mut()
            && confirmable.has_changed().unwrap_or(false)
        {
            let upto = confirmable.borrow_and_update().get(&name).cloned();
            if let Some(upto) = upto
                && let Err(error) = reader.commit(&upto).await
            {
                engine.lock().await.source_failed(&name, &error.to_string());
                break false;
            }
        }
        let event = tokio::select! {
            stop = &mut stopped => break stop.unwrap_or(false),
            event = reader.next() => event,
        };
        let mut guard = engine.lock().await;
        let (applied, count, progress) = match event {
            Ok(Some(SourceEvent::Transaction { changes, progress, transaction })) => {
                let count: usize = changes.iter().map(|(_, c)| c.len()).sum();
                guard.epoch_origin = Some(Origin { source: name.clone(), progress: progress.clone(), transaction });
                let applied = guard.apply_source_changes(changes);
                guard.epoch_origin = None;
                (applied, count, progress)
            }
            Ok(Some(SourceEvent::LargeTransaction { mut parts, progress, snapshot, transaction })) => {
                // The engine stays locked across the parts: no query sees part of it.
                guard.open_epoch();
                guard.epoch_origin = Some(Origin { source: name.clone(), progress: progress.clone(), transaction });
                guard.epoch_is_snapshot = snapshot;
                let mut count = 0;
                let applied = loop {
                    match parts.next_part().await {
                        Ok(Some(changes)) => {
                            count += changes.iter().map(|(_, c)| c.len()).sum::<usize>();
                            if let Err(error) = guard.apply_source_part(changes) {
                                break Err(error);
                            }
                        }
                        Ok(None) => break Ok(()),
                        Err(error) => break Err(error),
                    }
                };
                guard.epoch_origin = None;
                guard.epoch_is_snapshot = false;
                (applied, count, progress)
            }
            Ok(Some(SourceEvent::ColumnsDropped { relation, columns })) => {
                tracing::warn!(source = %name, %relation, ?columns, "columns dropped upstream");
                guard.columns_dropped(&relation, &columns);
                continue;
            }
            Ok(Some(SourceEvent::Progress(progress))) => {
                guard.source_progress(&name, 0, 0, &progress.0);
                drop(guard);
                if confirm.is_none()
                    && let Err(error) = reader.commit(&progress).await
                {
                    engine.lock().await.source_failed(&name, &error.to_string());
                    break false;
                }
                continue;
            }
            Ok(None) => {
                guard.source_finished(&name);
                break false;
            }
            Err(error) => {
                tracing::error!(source = %name, %error, "source failed");
                guard.source_failed(&name, &error.to_string());
                break false;
            }
        };
        if !finish_transaction(&mut guard, &name, applied, count, &progress) {
            break false;
        }
        drop(guard);
        if confirm.is_none()
            && let Err(error) = reader.commit(&progress).await
        {
            engine.lock().await.source_failed(&name, &error.to_string());
            break false;
        }
    };
    // A failed or finished reader still waits for DROP SOURCE to clean up upstream.
    let drop_upstream = if stopped.is_terminated() { drop_upstream } else { stopped.await.unwrap_or(false) };
    if let Err(error) = reader.close(drop_upstream).await {
        tracing::warn!(source = %name, %error, "closing the source failed");
    }
}

/// Runs a source's task; a panic in it (a bug) fails the source with the panic's message,
/// so SHOW SOURCES and `/health` report it instead of a source that looks alive.
async fn contain_source_panic(engine: Arc<Mutex<Engine>>, name: String, run: impl Future<Output = ()>) {
    use futures_util::FutureExt;
    if let Err(panic) = std::panic::AssertUnwindSafe(run).catch_unwind().await {
        let message = crate::error::panic_message(&*panic);
        tracing::error!(source = %name, panic = %message, "the source's task panicked");
        engine.lock().await.source_failed(&name, &format!("panicked: {message}"));
    }
}

/// Records an applied transaction, or the failure that stops the source; false on failure.
fn finish_transaction(engine: &mut Engine, name: &str, applied: Result<()>, count: usize, progress: &Progress) -> bool {
    match applied {
        Ok(()) => {
            engine.source_progress(name, 1, count as u64, &progress.0);
            true
        }
        Err(error) => {
            tracing::error!(source = %name, %error, "applying a source transaction failed");
            engine.source_failed(name, &error.to_string());
            false
        }
    }
}

impl Drop for Database {
    fn drop(&mut self) {
        if let Ok(mut handles) = self.sink_tasks.lock() {
            for handle in handles.drain(..) {
                handle.abort();
            }
        }
        if let Some(handle) = self.background.lock().ok().and_then(|mut b| b.take()) {
            handle.abort();
        }
        if let Ok(tasks) = self.source_tasks.lock() {
            for task in tasks.values() {
                task.handle.abort();
            }
        }
    }
}

impl Engine {
    /// The relations a source feeds, as the catalog holds them (declared at CREATE SOURCE).
    pub(crate) fn source_relations(&self, source: &str) -> Vec<crate::connector::SourceRelationDef> {
        let Some(definition) = self.catalog.source(source) else { return Vec::new() };
        definition
            .relations
            .iter()
            .filter_map(|name| self.catalog.relation(name))
            .map(|relation| crate::connector::SourceRelationDef {
                name: relation.name.clone(),
                schema: Arc::clone(&relation.schema),
                primary_key: relation.primary_key.clone(),
                expected_rows: 0,
                upstream: self.upstream_of(&relation.name),
            })
            .collect()
    }

    /// The upstream table a source relation mirrors, as its source described it.
    pub(crate) fn upstream_of(&self, relation: &str) -> Option<crate::connector::UpstreamTable> {
        self.definitions.iter().flat_map(|d| &d.relations).find(|r| r.name == relation)?.upstream.clone()
    }

    pub(crate) fn source_progress(&mut self, source: &str, transactions: u64, changes: u64, progress: &str) {
        if let Some(status) = self.sources.get_mut(source) {
            status.transactions += transactions;
            status.changes += changes;
            status.progress = Some(progress.to_string());
        }
    }

    pub(crate) fn source_retrying(&mut self, source: &str, error: &str) {
        if let Some(status) = self.sources.get_mut(source) {
            status.monitor.set_state(format!("retrying: {error}"));
        }
    }

    pub(crate) fn source_failed(&mut self, source: &str, error: &str) {
        if let Some(status) = self.sources.get_mut(source) {
            status.monitor.set_state(format!("failed: {error}"));
        }
    }

    pub(crate) fn source_finished(&mut self, source: &str) {
        if let Some(status) = self.sources.get_mut(source) {
            status.monitor.set_state("finished");
        }
    }
}
