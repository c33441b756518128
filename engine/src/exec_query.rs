//! Ad-hoc queries (DataFusion over a consistent snapshot of the stored relations), SHOW and
//! EXPLAIN of queries.

use std::sync::Arc;

use changeflow_sql::ddl::sql_type_name;

use crate::interrupt::Interrupt;
use crate::query_runtime::RowStream;
use changeflow_sql::{PlanContext, Relation, RelationData, RelationKind, ShowKind};
use datafusion::arrow::array::{ArrayRef, Int64Array, RecordBatch, StringArray, UInt32Array};
use datafusion::arrow::array::{BooleanArray, Scalar};
use datafusion::arrow::compute::kernels::boolean::and;
use datafusion::arrow::compute::kernels::cmp::eq;
use datafusion::arrow::compute::{filter_record_batch, take_record_batch};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::catalog::TableProvider;
use datafusion::datasource::MemTable;
use datafusion::error::{DataFusionError, Result as DFResult};
use datafusion::execution::SessionState;
use datafusion::logical_expr::LogicalPlan;
use datafusion::scalar::ScalarValue;
use datafusion::sql::sqlparser::ast;

use crate::change::ChangeBatch;
use crate::engine::{Engine, Mode, Output};
use crate::error::{EngineError, Result};

impl RelationData for Engine {
    fn provider(&self, relation: &Relation) -> DFResult<Arc<dyn TableProvider>> {
        if let Some(error) = self.view_error(&relation.name) {
            return Err(DataFusionError::Execution(format!(
                "materialized view \"{}\" {error}; drop and recreate it",
                relation.name
            )));
        }
        let lookup = self.point_lookup.as_ref().filter(|(name, _)| *name == relation.name);
        let batch = if let Some((_, keys)) = lookup {
            self.committed_lookup(&relation.name, keys).map_err(|e| DataFusionError::External(Box::new(e)))?
        } else if self.reads_committed {
            self.committed_snapshot(&relation.name).map_err(|e| DataFusionError::External(Box::new(e)))?
        } else {
            self.stores
                .get(&relation.name)
                .ok_or_else(|| EngineError::Internal(format!("no store for {}", relation.name)))
                .and_then(|store| store.snapshot())
                .map_err(|e| DataFusionError::External(Box::new(e)))?
        };
        Ok(Arc::new(MemTable::try_new(batch.schema(), vec![vec![batch]])?))
    }
}

/// A planned ad-hoc query over snapshots of the relations it reads: running it needs no
/// access to the engine, so it runs while the engine goes on applying epochs.
pub struct PreparedQuery {
    plan: Option<LogicalPlan>,
    /// The answer itself, when the query was a plain point query (see `direct_point_query`).
    rows: Option<RecordBatch>,
    schema: SchemaRef,
    /// DataFusion's session, to run the plan (absent when there is no plan to run).
    state: Option<SessionState>,
}

impl PreparedQuery {
    pub fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    /// Runs the query; with an `interrupt`, a cancel or timeout stops it between batches.
    pub async fn run(self, interrupt: Option<&Arc<Interrupt>>) -> Result<Output> {
        if let Some(rows) = self.rows {
            return Ok(Output::Rows { schema: self.schema, batches: vec![rows] });
        }
        let (Some(plan), Some(state)) = (self.plan, self.state) else {
            return Ok(Output::Rows { schema: self.schema, batches: Vec::new() });
        };
        let mut physical = state.create_physical_plan(&plan).await?;
        if let Some(interrupt) = interrupt {
            physical = crate::interrupt::interruptible(physical, interrupt)?;
        }
        let batches = match crate::query_runtime::collect(physical, state.task_ctx()).await {
            Ok(batches) => batches,
            // Stopped on purpose: say why (57014), not how DataFusion wraps it.
            Err(error) => {
                interrupt.map_or(Ok(()), |i| i.check())?;
                return Err(error.into());
            }
        };
        let batches =
            batches.into_iter().map(|b| with_schema(&self.schema, &b)).collect::<std::result::Result<Vec<_>, _>>()?;
        Ok(Output::Rows { schema: self.schema, batches })
    }

    /// Starts the query and hands its rows over batch by batch as they are computed (see
    /// [`RowStream`]); with an `interrupt`, a cancel or timeout stops it between batches.
    pub async fn stream(self, interrupt: Option<&Arc<Interrupt>>) -> Result<(SchemaRef, RowStream)> {
        let schema = Arc::clone(&self.schema);
        if let Some(rows) = self.rows {
            return Ok((schema, RowStream::ready(vec![rows])));
        }
        let (Some(plan), Some(state)) = (self.plan, self.state) else {
            return Ok((schema, RowStream::ready(Vec::new())));
        };
        let mut physical = state.create_physical_plan(&plan).await?;
        if let Some(interrupt) = interrupt {
            physical = crate::interrupt::interruptible(physical, interrupt)?;
        }
        let rows = RowStream::start(physical, state.task_ctx(), Arc::clone(&schema), interrupt.cloned());
        Ok((schema, rows))
    }
}

/// The session with a memory pool of its own for one query: its operators (joins, sorts,
/// aggregates) may hold at most `limit` bytes, past which it fails with 53200 (out of
/// memory) instead of taking the server's memory.
fn with_memory_limit(state: &SessionState, limit: Option<usize>) -> Result<SessionState> {
    let Some(limit) = limit else { return Ok(state.clone()) };
    let shared = state.runtime_env();
    let runtime = datafusion::execution::runtime_env::RuntimeEnv {
        memory_pool: Arc::new(datafusion::execution::memory_pool::GreedyMemoryPool::new(limit)),
        disk_manager: Arc::clone(&shared.disk_manager),
        cache_manager: Arc::clone(&shared.cache_manager),
        object_store_registry: Arc::clone(&shared.object_store_registry),
    };
    Ok(datafusion::execution::session_state::SessionStateBuilder::new_from_existing(state.clone())
        .with_runtime_env(Arc::new(runtime))
        .build())
}

/// A batch of the plan's output with the query's own schema (its column names and types).
pub(crate) fn with_schema(schema: &SchemaRef, batch: &RecordBatch) -> datafusion::arrow::error::Result<RecordBatch> {
    RecordBatch::try_new_with_options(
        Arc::clone(schema),
        batch.columns().to_vec(),
        &datafusion::arrow::array::RecordBatchOptions::new().with_row_count(Some(batch.num_rows())),
    )
}

/// What a statement takes and returns, known without running it (the extended query
/// protocol's Describe): result columns, if it returns rows, and its parameters' types
/// where planning can tell them.
#[derive(Debug, Clone, Default)]
pub struct Description {
    pub columns: Option<SchemaRef>,
    pub parameters: Vec<Option<DataType>>,
}

impl Engine {
    pub(crate) async fn query(&mut self, query: &ast::Query) -> Result<Output> {
        self.prepare_query(query, false)?.run(None).await
    }

    /// Plans a query and takes snapshots of what it reads. With `committed`, an open
    /// transaction's changes (another session's) are left out of the snapshots.
    pub fn prepare_query(&mut self, query: &ast::Query, committed: bool) -> Result<PreparedQuery> {
        self.fix_statement_time(true);
        let prepared = self.prepare_query_now(query, committed);
        self.fix_statement_time(false);
        prepared
    }

    fn prepare_query_now(&mut self, query: &ast::Query, committed: bool) -> Result<PreparedQuery> {
        self.reads_committed = committed && self.transaction.is_some();
        self.point_lookup = self.point_lookup_of(query);
        if self.mode == Mode::Execute
            && let Some(direct) = self.direct_point_query(query)
        {
            self.reads_committed = false;
            self.point_lookup = None;
            return direct;
        }
        let planned = PlanContext::for_execution(&self.catalog, &self.state, self).plan_query(query);
        self.reads_committed = false;
        self.point_lookup = None;
        let plan = changeflow_sql::context::optimize(&self.state, &planned?)?;
        let schema: SchemaRef = Arc::new(changeflow_sql::names::apply_postgres_names(plan.schema().as_arrow(), query));
        let plan = if self.mode == Mode::PlanOnly { None } else { Some(plan) };
        let state = match &plan {
            Some(_) => Some(with_memory_limit(&self.state, self.query_memory_limit)?),
            None => None,
        };
        Ok(PreparedQuery { plan, rows: None, schema, state })
    }

    /// A query of one stored relation whose WHERE fixes every column of the relation's key
    /// to a constant (`WHERE id = 42`): the key values, so only those rows are read. The
    /// WHERE clause is still applied to them, so this only narrows what is read.
    fn point_lookup_of(&self, query: &ast::Query) -> Option<(String, Vec<ArrayRef>)> {
        let ast::SetExpr::Select(select) = query.body.as_ref() else { return None };
        if query.with.is_some() || select.from.len() != 1 || !select.from[0].joins.is_empty() {
            return None;
        }
        let ast::TableFactor::Table { name, args: None, .. } = &select.from[0].relation else { return None };
        let relation = self.catalog.relation(&name.to_string().to_ascii_lowercase())?;
        let store = self.stores.get(&relation.name)?;
        if store.primary_key().is_empty() {
            return None;
        }
        let mut equalities = Vec::new();
        collect_equalities(select.selection.as_ref()?, &mut equalities);
        let keys = store
            .primary_key()
            .iter()
            .map(|&column| {
                let field = relation.schema.field(column);
                let text = equalities.iter().find(|(name, _)| name == field.name()).map(|(_, text)| text)?;
                ScalarValue::try_from_string(text.clone(), field.data_type()).ok()?.to_array().ok()
            })
            .collect::<Option<Vec<ArrayRef>>>()?;
        Some((relation.name.clone(), keys))
    }

    /// `SELECT columns FROM relation WHERE key = constant [AND ...]`, with nothing else: the
    /// answer is the looked-up rows' columns, so it skips DataFusion's planning altogether
    /// (the common query of an application reading a view by key).
    fn direct_point_query(&self, query: &ast::Query) -> Option<Result<PreparedQuery>> {
        let (relation_name, keys) = self.point_lookup.as_ref()?;
        let ast::SetExpr::Select(select) = query.body.as_ref() else { return None };
        let plain_group_by = matches!(&select.group_by, ast::GroupByExpr::Expressions(exprs, modifiers) if exprs.is_empty() && modifiers.is_empty());
        if select.distinct.is_some()
            || !plain_group_by
            || select.having.is_some()
            || select.qualify.is_some()
            || select.into.is_some()
            || !select.named_window.is_empty()
            || query.order_by.is_some()
            || query.limit_clause.is_some()
            || query.fetch.is_some()
            || self.view_error(relation_name).is_some()
        {
            return None;
        }
        let relation = self.catalog.relation(relation_name)?;
        let store = self.stores.get(relation_name)?;
        // Every conjunct of the WHERE must be one of the key's equalities.
        let mut terms = Vec::new();
        if !only_equalities(select.selection.as_ref()?, &mut terms) {
            return None;
        }
        let key_names: Vec<&String> = store.primary_key().iter().map(|&i| relation.schema.field(i).name()).collect();
        let mut seen = Vec::new();
        for (column, _) in &terms {
            if !key_names.contains(&column) || seen.contains(column) {
                return None;
            }
            seen.push(column.clone());
        }
        let mut columns = Vec::new();
        for item in &select.projection {
            match item {
                ast::SelectItem::Wildcard(options) if *options == ast::WildcardAdditionalOptions::default() => {
                    columns.extend(relation.schema.fields().iter().enumerate().map(|(i, f)| (i, f.name().clone())));
                }
                ast::SelectItem::UnnamedExpr(expr) => {
                    let name = column_of(expr)?;
                    columns.push((relation.schema.index_of(&name).ok()?, name));
                }
                ast::SelectItem::ExprWithAlias { expr, alias } => {
                    let name = column_of(expr)?;
                    let alias = if alias.quote_style.is_some() {
                        alias.value.clone()
                    } else {
                        alias.value.to_ascii_lowercase()
                    };
                    columns.push((relation.schema.index_of(&name).ok()?, alias));
                }
                _ => return None,
            }
        }
        let rows = match self.committed_lookup(relation_name, keys) {
            Ok(rows) => rows,
            Err(error) => return Some(Err(error)),
        };
        let fields: Vec<_> =
            columns.iter().map(|(i, name)| relation.schema.field(*i).clone().with_name(name.clone())).collect();
        let schema: SchemaRef = Arc::new(Schema::new(fields));
        let arrays: Vec<ArrayRef> = columns.iter().map(|(i, _)| Arc::clone(rows.column(*i))).collect();
        let batch = RecordBatch::try_new_with_options(
            Arc::clone(&schema),
            arrays,
            &datafusion::arrow::array::RecordBatchOptions::new().with_row_count(Some(rows.num_rows())),
        );
        Some(batch.map_err(Into::into).map(|rows| PreparedQuery { plan: None, rows: Some(rows), schema, state: None }))
    }

    /// Describes a query without reading any data: its columns and its parameters' types.
    pub fn describe_query(&self, query: &ast::Query) -> Result<Description> {
        let context = PlanContext::for_planning(&self.catalog, &self.state);
        let plan = context.plan_query(query)?;
        let schema = changeflow_sql::names::apply_postgres_names(plan.schema().as_arrow(), query);
        let types = plan.get_parameter_types()?;
        let count =
            types.keys().filter_map(|name| name.trim_start_matches('$').parse::<usize>().ok()).max().unwrap_or(0);
        let parameters = (1..=count).map(|i| types.get(&format!("${i}")).cloned().flatten()).collect::<Vec<_>>();
        Ok(Description { columns: Some(Arc::new(schema)), parameters })
    }

    /// A relation's rows as committed: its store, less the changes of an open transaction.
    pub(crate) fn committed_snapshot(&self, relation: &str) -> Result<RecordBatch> {
        let store =
            self.stores.get(relation).ok_or_else(|| EngineError::Internal(format!("no store for {relation}")))?;
        self.without_pending(relation, store.snapshot()?, None)
    }

    /// The rows of a relation with the given key (one value per key column), as the query's
    /// session may see them: without an open transaction's changes unless it is its own.
    fn committed_lookup(&self, relation: &str, keys: &[ArrayRef]) -> Result<RecordBatch> {
        let store =
            self.stores.get(relation).ok_or_else(|| EngineError::Internal(format!("no store for {relation}")))?;
        let rows = match store.lookup(keys)? {
            Some(rows) => rows,
            None => return self.committed_snapshot(relation),
        };
        if !self.reads_committed {
            return Ok(rows);
        }
        let key_columns: Vec<(usize, &ArrayRef)> = store.primary_key().iter().copied().zip(keys).collect();
        self.without_pending(relation, rows, Some(&key_columns))
    }

    /// `rows` less the open transaction's changes to `relation` (only those whose key
    /// columns equal the given values, when `key` is given): what was there before it.
    pub(crate) fn without_pending(
        &self,
        relation: &str,
        rows: RecordBatch,
        key: Option<&[(usize, &ArrayRef)]>,
    ) -> Result<RecordBatch> {
        if !self.reads_committed && key.is_some() {
            return Ok(rows);
        }
        let mut pending = Vec::new();
        for (name, change) in self.transaction.iter().flatten() {
            if name != relation {
                continue;
            }
            let change = match key {
                None => change.clone(),
                Some(key) => {
                    let mut mask: Option<BooleanArray> = None;
                    for (column, value) in key {
                        let equal = eq(change.data.column(*column), &Scalar::new(Arc::clone(value)))?;
                        mask = Some(match mask {
                            Some(mask) => and(&mask, &equal)?,
                            None => equal,
                        });
                    }
                    let Some(mask) = mask else { continue };
                    let data = filter_record_batch(&change.data, &mask)?;
                    let weights = change
                        .weights
                        .iter()
                        .zip(mask.iter())
                        .filter(|(_, m)| *m == Some(true))
                        .map(|(w, _)| *w)
                        .collect();
                    ChangeBatch::new(data, weights)?
                }
            };
            if !change.is_empty() {
                pending.push(change.negate());
            }
        }
        if pending.is_empty() {
            return Ok(rows);
        }
        let schema = rows.schema();
        let mut all = vec![ChangeBatch::inserts(rows)];
        all.extend(pending);
        let merged = ChangeBatch::concat(&schema, &all)?.consolidate()?;
        let indices: Vec<u32> = merged
            .weights
            .iter()
            .enumerate()
            .flat_map(|(i, &w)| std::iter::repeat_n(i as u32, w.max(0) as usize))
            .collect();
        Ok(take_record_batch(&merged.data, &UInt32Array::from(indices))?)
    }

    pub(crate) fn explain_query(&mut self, statement: &ast::Statement) -> Result<Output> {
        let ast::Statement::Query(query) = statement else {
            return Err(changeflow_sql::SqlError::Unsupported(
                "EXPLAIN works on SELECT queries and on CREATE MATERIALIZED VIEW".into(),
            )
            .into());
        };
        let context = PlanContext::for_planning(&self.catalog, &self.state);
        let plan = context.optimize(&context.plan_query(query)?)?;
        let text = plan.display_indent().to_string();
        let lines: Vec<String> = text.lines().map(changeflow_sql::explain::sql_literals).collect();
        text_rows("plan", lines.iter().map(String::as_str))
    }

    /// `SHOW CREATE kind name`: the statement that defined the object, as it was written
    /// (credentials masked), once the object is of the kind named.
    pub(crate) fn show_create(&self, kind: &str, name: &str) -> Result<Output> {
        let actual = match self.catalog.relation(name) {
            Some(relation) => match relation.kind {
                RelationKind::Table => "TABLE",
                RelationKind::View => "VIEW",
                RelationKind::MaterializedView => "MATERIALIZED VIEW",
                RelationKind::SourceRelation => "SOURCE",
                RelationKind::ChangeStream => "CHANGES",
            },
            None if self.catalog.source(name).is_some() => "SOURCE",
            None if self.sinks.contains_key(name) => "SINK",
            None => {
                return Err(changeflow_sql::SqlError::Catalog(format!(
                    "{} \"{name}\" does not exist",
                    kind.to_lowercase()
                ))
                .into());
            }
        };
        let defined_by = match self.catalog.relation(name).and_then(|r| r.source.as_deref()) {
            // A source relation is defined by its source's statement.
            Some(source) if actual == "SOURCE" => source,
            _ => name,
        };
        if actual != kind {
            return Err(changeflow_sql::SqlError::Catalog(format!(
                "\"{name}\" is not a {}; it is a {}",
                kind.to_lowercase(),
                actual.to_lowercase()
            ))
            .into());
        }
        let sql = self
            .definitions
            .iter()
            .find(|d| d.name == defined_by)
            .map(|d| d.sql.clone())
            .ok_or_else(|| EngineError::Internal(format!("no definition of \"{name}\"")))?;
        table_output(
            &["name", "create_sql"],
            vec![vec![Some(name.to_string()), Some(crate::redact::redact_credentials(&sql))]],
        )
    }

    pub(crate) fn show(&self, kind: ShowKind) -> Result<Output> {
        match kind {
            ShowKind::Tables => {
                // Source relations are tables too, written by their source.
                let tables: Vec<&Relation> = self
                    .catalog
                    .relations()
                    .filter(|r| matches!(r.kind, RelationKind::Table | RelationKind::SourceRelation))
                    .collect();
                table_output(
                    &["name", "columns", "rows"],
                    tables
                        .iter()
                        .map(|t| {
                            vec![
                                Some(t.name.clone()),
                                Some(describe_columns(t)),
                                Some(self.row_count(&t.name).to_string()),
                            ]
                        })
                        .collect(),
                )
            }
            ShowKind::Views => {
                let views: Vec<&Relation> = self
                    .catalog
                    .relations()
                    .filter(|r| matches!(r.kind, RelationKind::View | RelationKind::MaterializedView))
                    .collect();
                table_output(
                    &["name", "kind", "columns"],
                    views
                        .iter()
                        .map(|v| {
                            vec![Some(v.name.clone()), Some(v.kind.describe().to_string()), Some(describe_columns(v))]
                        })
                        .collect(),
                )
            }
            ShowKind::MaterializedViews => {
                let views: Vec<&Relation> =
                    self.catalog.relations().filter(|r| r.kind == RelationKind::MaterializedView).collect();
                table_output(
                    &["name", "rows", "status"],
                    views
                        .iter()
                        .map(|v| {
                            let status = match self.view_error(&v.name) {
                                Some(error) => format!("failed: {error}"),
                                None => "running".to_string(),
                            };
                            vec![Some(v.name.clone()), Some(self.row_count(&v.name).to_string()), Some(status)]
                        })
                        .collect(),
                )
            }
            ShowKind::Sources => {
                let rows = self
                    .catalog
                    .sources()
                    .map(|s| {
                        let status = self.sources.get(&s.name).cloned().unwrap_or_default();
                        let report = status.monitor.report();
                        vec![
                            Some(s.name.clone()),
                            Some(s.connector.clone()),
                            Some(s.relations.join(", ")),
                            Some(report.state),
                            Some(status.transactions.to_string()),
                            Some(status.changes.to_string()),
                            status.progress.clone(),
                            Some(report.detail).filter(|d| !d.is_empty()),
                        ]
                    })
                    .collect();
                table_output(
                    &["name", "connector", "relations", "state", "transactions", "changes", "progress", "detail"],
                    rows,
                )
            }
            ShowKind::Secrets => {
                // Names only: a secret's value is never shown.
                table_output(&["name"], self.secret_names().into_iter().map(|name| vec![Some(name)]).collect())
            }
            ShowKind::Sinks => {
                let rows = self
                    .sink_reports()
                    .into_iter()
                    .map(|(name, relation, connector, report)| {
                        vec![
                            Some(name),
                            Some(relation),
                            Some(connector),
                            Some(report.state),
                            Some(report.delivered_epoch.to_string()),
                            Some(report.lag_epochs.to_string()),
                            Some(report.rows.to_string()),
                            Some(report.retries.to_string()),
                            Some(report.skipped.to_string()),
                            Some(report.dead_letters.to_string()),
                        ]
                    })
                    .collect();
                table_output(
                    &[
                        "name",
                        "relation",
                        "connector",
                        "state",
                        "delivered_epoch",
                        "lag_epochs",
                        "rows",
                        "retries",
                        "skipped",
                        "dead_letters",
                    ],
                    rows,
                )
            }
        }
    }

    fn row_count(&self, relation: &str) -> i64 {
        self.stores.get(relation).map(|s| s.len()).unwrap_or(0)
    }

    /// Rows of a stored relation, as a batch (tests and tools compare views with this).
    pub fn contents(&self, relation: &str) -> Result<RecordBatch> {
        let store = self.stores.get(relation).ok_or_else(|| {
            EngineError::Sql(changeflow_sql::SqlError::Catalog(format!("relation \"{relation}\" does not exist")))
        })?;
        if let Some(error) = self.view_error(relation) {
            return Err(EngineError::State(format!("materialized view \"{relation}\" {error}")));
        }
        store.snapshot()
    }
}

/// `column = constant` terms of a conjunction, as (column name, constant text).
fn collect_equalities(expr: &ast::Expr, found: &mut Vec<(String, String)>) {
    use ast::{BinaryOperator, Expr};
    match expr {
        Expr::BinaryOp { left, op: BinaryOperator::And, right } => {
            collect_equalities(left, found);
            collect_equalities(right, found);
        }
        Expr::Nested(inner) => collect_equalities(inner, found),
        Expr::BinaryOp { left, op: BinaryOperator::Eq, right } => {
            let (column, constant) = match (column_of(left), constant_of(right)) {
                (Some(column), Some(constant)) => (column, constant),
                _ => match (column_of(right), constant_of(left)) {
                    (Some(column), Some(constant)) => (column, constant),
                    _ => return,
                },
            };
            found.push((column, constant));
        }
        _ => {}
    }
}

/// Whether a conjunction is made of `column = constant` terms only (collected).
fn only_equalities(expr: &ast::Expr, found: &mut Vec<(String, String)>) -> bool {
    use ast::{BinaryOperator, Expr};
    match expr {
        Expr::BinaryOp { left, op: BinaryOperator::And, right } => {
            only_equalities(left, found) && only_equalities(right, found)
        }
        Expr::Nested(inner) => only_equalities(inner, found),
        Expr::BinaryOp { op: BinaryOperator::Eq, .. } => {
            let before = found.len();
            collect_equalities(expr, found);
            found.len() > before
        }
        _ => false,
    }
}

fn column_of(expr: &ast::Expr) -> Option<String> {
    match expr {
        ast::Expr::Identifier(ident) => Some(ident.value.to_ascii_lowercase()),
        ast::Expr::CompoundIdentifier(parts) if parts.len() == 2 => parts.last().map(|i| i.value.to_ascii_lowercase()),
        _ => None,
    }
}

fn constant_of(expr: &ast::Expr) -> Option<String> {
    match expr {
        ast::Expr::Value(value) => match &value.value {
            ast::Value::Number(number, _) => Some(number.clone()),
            ast::Value::SingleQuotedString(text) => Some(text.clone()),
            _ => None,
        },
        ast::Expr::Cast { expr, .. } | ast::Expr::Nested(expr) => constant_of(expr),
        _ => None,
    }
}

fn describe_columns(relation: &Relation) -> String {
    relation
        .schema
        .fields()
        .iter()
        .enumerate()
        .map(|(i, f)| {
            let mut text = format!("{} {}", f.name(), sql_type_name(f.data_type()));
            if relation.primary_key.contains(&i) {
                text.push_str(" primary key");
            } else if !f.is_nullable() && relation.kind == RelationKind::Table {
                text.push_str(" not null");
            }
            text
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn text_rows<'a>(column: &str, lines: impl Iterator<Item = &'a str>) -> Result<Output> {
    let schema = Arc::new(Schema::new(vec![Field::new(column, DataType::Utf8, false)]));
    let array = StringArray::from(lines.collect::<Vec<_>>());
    let batch = RecordBatch::try_new(Arc::clone(&schema), vec![Arc::new(array)])?;
    Ok(Output::Rows { schema, batches: vec![batch] })
}

/// A text table for SHOW; a column named "rows" or "transactions"/"changes" is numeric.
fn table_output(columns: &[&str], rows: Vec<Vec<Option<String>>>) -> Result<Output> {
    let numeric = |name: &str| matches!(name, "rows" | "transactions" | "changes");
    let schema = Arc::new(Schema::new(
        columns
            .iter()
            .map(|c| Field::new(*c, if numeric(c) { DataType::Int64 } else { DataType::Utf8 }, true))
            .collect::<Vec<_>>(),
    ));
    let arrays: Vec<ArrayRef> = columns
        .iter()
        .enumerate()
        .map(|(i, c)| -> ArrayRef {
            if numeric(c) {
                Arc::new(Int64Array::from_iter(
                    rows.iter().map(|r| r[i].as_deref().and_then(|v| v.parse::<i64>().ok())),
                ))
            } else {
                Arc::new(StringArray::from_iter(rows.iter().map(|r| r[i].clone())))
            }
        })
        .collect();
    let batch = RecordBatch::try_new(Arc::clone(&schema), arrays)?;
    Ok(Output::Rows { schema, batches: vec![batch] })
}
