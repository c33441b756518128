//! The engine: executes statements against the catalog, the stored relations and the
//! materialized views' dataflows. Changes from DML (or a source transaction) form one epoch:
//! every view is stepped with the epoch's changes in creation order (views over views see
//! their inputs' changes of the same epoch), so a reader never sees part of a transaction.

use std::collections::BTreeMap;
use std::sync::Arc;

use changeflow_sql::parser::{ParsedStatement, Statement};
use changeflow_sql::{Catalog, SqlError};
use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::execution::SessionState;
use datafusion::sql::sqlparser::ast;
use rustc_hash::FxHashMap;

use crate::change::ChangeBatch;
use crate::connector::{ConnectorRegistry, SourceChanges};
use crate::durable::{Definition, Journal, created_object, difference};
use crate::error::{EngineError, Result};
use crate::operator::{EpochChanges, Operator};
use crate::store::RelationStore;

/// What a statement returns.
#[derive(Debug, Clone)]
pub enum Output {
    /// A query's rows (SELECT, SHOW, EXPLAIN).
    Rows { schema: SchemaRef, batches: Vec<RecordBatch> },
    /// The command tag of anything else, as PostgreSQL prints it (`INSERT 0 3`).
    Command(String),
    /// An answer with PostgreSQL's notices before it (`drop cascades to view v`).
    Noticed { notices: Vec<String>, output: Box<Output> },
}

impl Output {
    /// `output` with `notices` (itself when there are none).
    pub fn with_notices(output: Output, notices: Vec<String>) -> Output {
        if notices.is_empty() { output } else { Output::Noticed { notices, output: Box::new(output) } }
    }

    /// The notices and the answer.
    pub fn into_parts(self) -> (Vec<String>, Output) {
        match self {
            Output::Noticed { notices, output } => {
                let (mut more, output) = output.into_parts();
                let mut all = notices;
                all.append(&mut more);
                (all, output)
            }
            other => (Vec::new(), other),
        }
    }
}

/// Whether statements run, or are only parsed and planned (`changeflow check`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Execute,
    PlanOnly,
}

/// A materialized view's dataflow and health.
pub(crate) struct MaterializedView {
    pub name: String,
    pub dataflow: Option<Box<dyn Operator>>,
    /// The plan the dataflow was built from (a restore builds it again to load its state).
    pub plan: changeflow_sql::plan::PlanNode,
    pub inputs: Vec<String>,
    /// The columns it reads of each input.
    pub reads: Vec<(String, Vec<String>)>,
    /// Set when maintaining the view failed; the view then stops changing.
    pub error: Option<String>,
    /// Epochs that changed its inputs, and how long the last one took to apply.
    pub epochs: u64,
    pub last_apply: std::time::Duration,
}

/// The state of a running source, as `SHOW SOURCES` reports it.
#[derive(Debug, Clone, Default)]
pub struct SourceStatus {
    /// The reader's own report (state, detail), shared with its task.
    pub monitor: crate::connector::SourceMonitor,
    pub transactions: u64,
    pub changes: u64,
    pub progress: Option<String>,
    /// What the source created upstream, as its reader reported it (handed back on restart).
    pub upstream: Option<String>,
}

pub struct Engine {
    pub(crate) mode: Mode,
    pub(crate) catalog: Catalog,
    pub(crate) state: SessionState,
    /// Most bytes one ad-hoc query's operators may hold (None: no limit).
    pub(crate) query_memory_limit: Option<usize>,
    pub(crate) stores: FxHashMap<String, RelationStore>,
    pub(crate) views: Vec<MaterializedView>,
    /// Changes of the open transaction, applied to tables already and to views at COMMIT.
    pub(crate) transaction: Option<Vec<(String, ChangeBatch)>>,
    pub(crate) epoch: u64,
    pub(crate) registry: ConnectorRegistry,
    pub(crate) sources: BTreeMap<String, SourceStatus>,
    /// Live SUBSCRIBEs, per relation.
    pub(crate) subscribers: FxHashMap<String, Vec<crate::subscribe::Subscriber>>,
    /// Bytes a subscription may have waiting for its client (see `subscribe`).
    pub(crate) subscription_buffer_bytes: usize,
    /// Set while planning a query for a session that must not see an open transaction.
    pub(crate) reads_committed: bool,
    /// Set while planning a point query: the one relation it reads, and the keys to read.
    pub(crate) point_lookup: Option<(String, Vec<datafusion::arrow::array::ArrayRef>)>,
    /// The statement that created each live object, in creation order.
    pub(crate) definitions: Vec<Definition>,
    /// Where DDL and local commits are journaled, with a data directory.
    pub(crate) journal: Option<Journal>,
    /// Objects restored from the data directory, with their canonical definitions: creating
    /// one again the same way is a no-op.
    pub(crate) restored: FxHashMap<String, String>,
    /// Set while the data directory is replayed (nothing is journaled again).
    pub(crate) replaying: bool,
    /// The relations of the CREATE SOURCE being replayed (instead of asking upstream).
    pub(crate) replay_relations: Option<Vec<crate::connector::SourceRelationDef>>,
    /// The text of the statement being executed, recorded as a definition.
    pub(crate) statement_text: String,
    /// Counts changes to definitions and sources' upstream state (for checkpoints).
    pub(crate) generation: u64,
    /// Sinks by name, with their queues.
    pub(crate) sinks: BTreeMap<String, crate::sink::SinkHandle>,
    /// Sinks whose task runs.
    pub(crate) started_sinks: rustc_hash::FxHashSet<String>,
    /// Epochs waiting in every sink's queue (sources pause when it is high).
    pub(crate) sink_backlog: Arc<std::sync::atomic::AtomicUsize>,
    /// Set while a restore loads a checkpoint's contents: already delivered, not sent again.
    pub(crate) sinks_muted: bool,
    /// Sink positions of the checkpoint being restored.
    pub(crate) replay_sinks: BTreeMap<String, crate::sink::SavedSink>,
    /// The source transaction being applied: source, position, upstream transaction (sinks
    /// and `changes(...)` report it).
    pub(crate) epoch_origin: Option<crate::connector::Origin>,
    /// Set while a source's initial snapshot is applied (its rows are reads, op `r`).
    pub(crate) epoch_is_snapshot: bool,
    /// Statements of startup files already applied to the data directory.
    pub(crate) startup_applied: std::collections::BTreeSet<String>,
    /// Secrets by name (see [`crate::secrets`]).
    pub(crate) secrets: BTreeMap<String, String>,
    /// Secrets restored from the data directory that no statement created again yet.
    pub(crate) restored_secrets: std::collections::BTreeSet<String>,
}

impl Engine {
    pub fn new(registry: ConnectorRegistry) -> Self {
        Self::with_mode(registry, Mode::Execute)
    }

    pub fn with_mode(registry: ConnectorRegistry, mode: Mode) -> Self {
        Self {
            mode,
            catalog: Catalog::default(),
            state: changeflow_sql::new_session_state(),
            query_memory_limit: None,
            stores: FxHashMap::default(),
            views: Vec::new(),
            transaction: None,
            epoch: 0,
            registry,
            sources: BTreeMap::new(),
            subscribers: FxHashMap::default(),
            subscription_buffer_bytes: crate::subscribe::DEFAULT_SUBSCRIPTION_BUFFER_BYTES,
            reads_committed: false,
            point_lookup: None,
            definitions: Vec::new(),
            journal: None,
            restored: FxHashMap::default(),
            replaying: false,
            replay_relations: None,
            statement_text: String::new(),
            generation: 0,
            sinks: BTreeMap::new(),
            started_sinks: rustc_hash::FxHashSet::default(),
            sink_backlog: Arc::new(std::sync::atomic::AtomicUsize::new(0)),
            sinks_muted: false,
            replay_sinks: BTreeMap::new(),
            epoch_origin: None,
            epoch_is_snapshot: false,
            startup_applied: std::collections::BTreeSet::new(),
            secrets: BTreeMap::new(),
            restored_secrets: std::collections::BTreeSet::new(),
        }
    }

    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    /// Number of epochs applied so far.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    pub fn in_transaction(&self) -> bool {
        self.transaction.is_some()
    }

    /// Fixes `now()` (and `current_date`, `current_time`) to this instant while a query or
    /// a write is planned, as PostgreSQL fixes it for a statement; cleared afterwards, so a
    /// view, whose answer must not depend on when it is computed, never gets a frozen one
    /// (the planner refuses such functions in views).
    pub(crate) fn fix_statement_time(&mut self, fixed: bool) {
        self.state.execution_props_mut().query_execution_start_time = fixed.then(chrono::Utc::now);
    }

    /// Executes one parsed statement.
    pub async fn execute(&mut self, statement: &ParsedStatement) -> Result<Output> {
        if let Some((name, canonical)) = created_object(&statement.statement)
            && let Some(stored) = self.restored.get(&name)
        {
            // Restarting with the same statements: the object is already there.
            if *stored == canonical {
                return Ok(Output::Command(create_tag(&statement.statement).into()));
            }
            return Err(SqlError::Catalog(format!(
                "\"{name}\" already exists in the data directory with a different definition ({}); DROP it first \
                 to define it anew",
                difference(stored, &canonical)
            ))
            .into());
        }
        self.statement_text = statement.text.clone();
        let generation = self.generation;
        let statement = self.with_secrets(statement)?;
        let output = self.dispatch(&statement).await;
        if self.generation != generation {
            self.refresh_transaction_epochs();
        }
        output
    }

    async fn dispatch(&mut self, statement: &ParsedStatement) -> Result<Output> {
        match &statement.statement {
            Statement::Sql(sql) => self.execute_sql(sql).await,
            Statement::CreateSource(create) => self.create_source(create).await,
            Statement::DropSource { name, if_exists, cascade } => self.drop_source(name, *if_exists, *cascade),
            Statement::CreateSink(create) => self.create_sink(create),
            Statement::DropSink { name, if_exists } => self.drop_sink(name, *if_exists),
            Statement::CreateSecret(create) => self.create_secret(create),
            Statement::DropSecret { name, if_exists } => self.drop_secret(name, *if_exists),
            Statement::Show(kind) => self.show(*kind),
            Statement::ShowCreate { kind, name } => self.show_create(kind, name),
            Statement::ExplainView(create) => self.explain_view(create),
            Statement::Subscribe { relation, .. } => {
                self.subscription_schema(relation)?;
                match self.mode {
                    Mode::PlanOnly => Ok(Output::Command("SUBSCRIBE".into())),
                    Mode::Execute => Err(EngineError::State(
                        "SUBSCRIBE streams changes to a client of `changeflow serve` (psql, a Postgres driver); it cannot run here".into(),
                    )),
                }
            }
        }
    }

    /// Sources whose relations feed a `changes(...)` stream or a sink (directly or through
    /// views) emit each upstream transaction as an epoch of its own, so events name their
    /// transaction; the others keep coalescing small transactions.
    pub(crate) fn refresh_transaction_epochs(&self) {
        let roots =
            self.catalog.streams().map(|s| s.name.clone()).chain(self.catalog.sinks().map(|s| s.relation.clone()));
        let watched = self.catalog.inputs_of(roots);
        for (name, status) in &self.sources {
            let per_transaction =
                self.catalog.source(name).is_some_and(|source| source.relations.iter().any(|r| watched.contains(r)));
            status.monitor.set_per_transaction(per_transaction);
        }
    }

    /// Parses and executes every statement of a text, returning each output.
    pub async fn execute_sql_text(&mut self, sql: &str) -> Result<Vec<Output>> {
        let mut outputs = Vec::new();
        for statement in changeflow_sql::parse_sql(sql)? {
            outputs.push(self.execute(&statement).await?);
        }
        Ok(outputs)
    }

    async fn execute_sql(&mut self, statement: &ast::Statement) -> Result<Output> {
        use ast::Statement as S;
        match statement {
            S::Query(query) => self.query(query).await,
            S::CreateTable(create) => self.create_table(create),
            S::CreateView(view) => self.create_view(statement, view).await,
            S::Drop { object_type, if_exists, names, cascade, .. } => {
                self.drop(*object_type, *if_exists, names, *cascade)
            }
            S::Insert(_) | S::Update(_) | S::Delete(_) => self.dml(statement).await,
            S::StartTransaction { .. } => {
                if self.transaction.is_some() {
                    return Err(EngineError::State("there is already a transaction in progress".into()));
                }
                self.transaction = Some(Vec::new());
                Ok(Output::Command("BEGIN".into()))
            }
            S::Commit { .. } => match self.transaction.take() {
                Some(changes) => {
                    if self.mode == Mode::Execute {
                        self.commit_local(changes)?;
                    }
                    Ok(Output::Command("COMMIT".into()))
                }
                None => Err(EngineError::State("there is no transaction in progress".into())),
            },
            S::Rollback { .. } => match self.transaction.take() {
                Some(changes) => {
                    for (relation, change) in changes.into_iter().rev() {
                        if let Some(store) = self.stores.get_mut(&relation) {
                            store.apply(&change.negate())?;
                        }
                    }
                    Ok(Output::Command("ROLLBACK".into()))
                }
                None => Err(EngineError::State("there is no transaction in progress".into())),
            },
            S::Explain { statement: inner, .. } => self.explain_query(inner),
            other => {
                let text = other.to_string();
                let head: String = text.split_whitespace().take(2).collect::<Vec<_>>().join(" ");
                Err(SqlError::Unsupported(format!("{head} ... is not supported by changeflow")).into())
            }
        }
    }

    /// Refuses DDL inside a transaction block, as changes to views must be whole epochs.
    pub(crate) fn refuse_in_transaction(&self, what: &str) -> Result<()> {
        if self.transaction.is_some() {
            return Err(EngineError::State(format!(
                "{what} cannot run inside a transaction block; COMMIT or ROLLBACK first"
            )));
        }
        Ok(())
    }

    /// Records changes to stored relations: now when autocommitting, at COMMIT otherwise.
    pub(crate) fn submit(&mut self, changes: Vec<(String, ChangeBatch)>) -> Result<()> {
        match &mut self.transaction {
            Some(pending) => {
                pending.extend(changes);
                Ok(())
            }
            None => self.commit_local(changes),
        }
    }

    /// Writes a change to a local table as DML does (constraints checked, whole or nothing),
    /// then applies it to the views (now, or at COMMIT inside a transaction).
    pub fn write_table(&mut self, table: &str, change: ChangeBatch) -> Result<()> {
        let relation = self.catalog.require_relation(table)?;
        if relation.kind != changeflow_sql::RelationKind::Table {
            return Err(EngineError::Constraint(format!("\"{table}\" is not a table")));
        }
        let change = change.with_schema(Arc::clone(&relation.schema))?;
        let store = self.stores.get_mut(table).ok_or_else(|| EngineError::Internal(format!("no store for {table}")))?;
        let change = store.check_and_apply(&change)?;
        self.submit(vec![(table.to_string(), change)])
    }

    /// Applies a source transaction (or several) as one epoch: the relations' stores, then
    /// every affected view.
    pub fn apply_source_changes(&mut self, changes: Vec<(String, SourceChanges)>) -> Result<()> {
        self.open_epoch();
        self.apply_source_part(changes)
    }

    /// Starts an epoch whose changes arrive in parts ([`Self::apply_source_part`]): a
    /// transaction too large to hold at once. The caller keeps the engine locked until the
    /// last part, so no query sees part of it.
    pub fn open_epoch(&mut self) {
        self.epoch += 1;
    }

    /// Applies one part of the open epoch's source changes: the relations' stores, then every
    /// affected view.
    pub fn apply_source_part(&mut self, changes: Vec<(String, SourceChanges)>) -> Result<()> {
        // Resolve everything before applying anything: a failure leaves the stores as they
        // were. Keyed changes come one entry per relation (the contract of SourceChanges).
        let mut resolved = Vec::with_capacity(changes.len());
        for (relation, change) in changes {
            let store = self
                .stores
                .get(&relation)
                .ok_or_else(|| EngineError::Internal(format!("no store for source relation {relation}")))?;
            let change = match change {
                SourceChanges::Weighted(batch) => batch.with_schema(Arc::clone(store.schema()))?,
                SourceChanges::Keyed(keyed) => store
                    .resolve(&keyed)
                    .map_err(|e| EngineError::Connector(format!("relation \"{relation}\": {e}")))?,
            };
            resolved.push((relation, change));
        }
        for (relation, change) in &mut resolved {
            if let Some(store) = self.stores.get_mut(relation.as_str()) {
                *change = store.apply(change)?;
            }
        }
        self.step_views(resolved)
    }

    /// Runs one epoch through the views. Stores of the changed relations are up to date.
    pub fn run_epoch(&mut self, changes: Vec<(String, ChangeBatch)>) -> Result<()> {
        self.epoch += 1;
        self.step_views(changes)
    }

    /// Steps every view affected by the changes (part of the current epoch).
    fn step_views(&mut self, changes: Vec<(String, ChangeBatch)>) -> Result<()> {
        let mut grouped: BTreeMap<String, Vec<ChangeBatch>> = BTreeMap::new();
        for (relation, change) in changes {
            grouped.entry(relation).or_default().push(change);
        }
        let mut epoch: EpochChanges = FxHashMap::default();
        for (relation, batches) in grouped {
            let schema = Arc::clone(batches[0].data.schema_ref());
            let change = ChangeBatch::concat(&schema, &batches)?.consolidate()?;
            if !change.is_empty() {
                epoch.insert(relation, change);
            }
        }
        if epoch.is_empty() {
            return Ok(());
        }
        if self.catalog.streams().next().is_some() {
            let changed: Vec<String> = epoch.keys().cloned().collect();
            for relation in changed {
                self.add_stream_events(&mut epoch, &relation)?;
            }
        }
        let mut failed: Vec<String> = Vec::new();
        let mut streams_of_views: Vec<String> = Vec::new();
        let has_streams = self.catalog.streams().next().is_some();
        for index in 0..self.views.len() {
            // A view's stream is computed before the views after it step.
            if has_streams {
                for name in streams_of_views.drain(..) {
                    self.add_stream_events(&mut epoch, &name)?;
                }
            }
            let view = &mut self.views[index];
            if view.error.is_some() {
                continue;
            }
            if let Some(input) = view.inputs.iter().find(|i| failed.contains(i)) {
                view.error = Some(format!("its input \"{input}\" failed"));
                failed.push(view.name.clone());
                continue;
            }
            if !view.inputs.iter().any(|i| epoch.contains_key(i)) {
                continue;
            }
            let Some(dataflow) = view.dataflow.as_mut() else { continue };
            let started = std::time::Instant::now();
            view.epochs += 1;
            // A panic in an operator (a bug) fails this view alone, as an error would.
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                dataflow.step(&epoch).and_then(|out| out.consolidate())
            }))
            .unwrap_or_else(|panic| {
                Err(EngineError::Internal(format!("panicked: {}", crate::error::panic_message(&*panic))))
            });
            match result {
                Ok(out) => {
                    if out.is_empty() {
                        view.last_apply = started.elapsed();
                        continue;
                    }
                    let store = self
                        .stores
                        .get_mut(&view.name)
                        .ok_or_else(|| EngineError::Internal(format!("no store for view {}", view.name)))?;
                    store.apply(&out)?;
                    view.last_apply = started.elapsed();
                    epoch.insert(view.name.clone(), out);
                    streams_of_views.push(view.name.clone());
                }
                Err(error) => {
                    tracing::error!(view = %view.name, %error, "maintaining a materialized view failed");
                    view.error = Some(format!("failed at epoch {}: {error}", self.epoch));
                    failed.push(view.name.clone());
                }
            }
        }
        for name in streams_of_views {
            self.add_stream_events(&mut epoch, &name)?;
        }
        self.deliver_to_sinks(&epoch);
        if !self.subscribers.is_empty() {
            for (relation, change) in &epoch {
                self.publish(relation, change);
            }
            for name in failed {
                let reason = format!("materialized view \"{name}\" {}", self.view_error(&name).unwrap_or_default());
                self.end_subscriptions(&name, &reason);
            }
        }
        Ok(())
    }

    /// Columns of a source relation went away upstream: every view reading one of them
    /// fails with an error naming it (and views over those fail with them); the others go on.
    pub fn columns_dropped(&mut self, relation: &str, columns: &[String]) {
        let mut failed: Vec<String> = Vec::new();
        for view in &mut self.views {
            if view.error.is_some() {
                continue;
            }
            let dropped = view
                .reads
                .iter()
                .filter(|(input, _)| input == relation)
                .flat_map(|(_, read)| read.iter().filter(|c| columns.contains(c)))
                .next();
            if let Some(column) = dropped {
                view.error = Some(format!(
                    "failed at epoch {}: it reads column \"{column}\" of \"{relation}\", which was dropped upstream",
                    self.epoch
                ));
                failed.push(view.name.clone());
            } else if let Some(input) = view.inputs.iter().find(|i| failed.contains(i)) {
                view.error = Some(format!("its input \"{input}\" failed"));
                failed.push(view.name.clone());
            }
        }
    }

    /// A view's error, if maintaining it failed.
    pub(crate) fn view_error(&self, name: &str) -> Option<String> {
        self.views.iter().find(|v| v.name == name).and_then(|v| v.error.clone())
    }
}

/// The command tag of a CREATE statement.
fn create_tag(statement: &Statement) -> &'static str {
    match statement {
        Statement::CreateSource(_) => "CREATE SOURCE",
        Statement::CreateSink(_) => "CREATE SINK",
        Statement::CreateSecret(_) => "CREATE SECRET",
        Statement::Sql(sql) => match sql.as_ref() {
            ast::Statement::CreateView(view) if view.materialized => "CREATE MATERIALIZED VIEW",
            ast::Statement::CreateView(_) => "CREATE VIEW",
            _ => "CREATE TABLE",
        },
        _ => "CREATE",
    }
}
