//! Executing DDL: tables, views, materialized views (planned, then loaded from the current
//! contents of their inputs), sources, and DROP with dependency checks.

use std::sync::Arc;

use changeflow_sql::ddl::{normalize_ident, object_name, table_from_create};
use changeflow_sql::parser::CreateSource;
use changeflow_sql::planner::plan_view;
use changeflow_sql::{PlanContext, Relation, RelationKind, SourceDef, SqlError};
use datafusion::arrow::array::{RecordBatch, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::sql::sqlparser::ast;
use rustc_hash::FxHashMap;

use crate::change::ChangeBatch;
use crate::engine::{Engine, MaterializedView, Mode, Output, SourceStatus};
use crate::error::{EngineError, Result};
use crate::operator::{self, EpochChanges};
use crate::store::RelationStore;

impl Engine {
    pub(crate) fn create_table(&mut self, create: &ast::CreateTable) -> Result<Output> {
        self.refuse_in_transaction("CREATE TABLE")?;
        let relation = table_from_create(create)?;
        if create.if_not_exists && self.catalog.relation(&relation.name).is_some() {
            return Ok(Output::Command("CREATE TABLE".into()));
        }
        let store = RelationStore::new(&relation.name, Arc::clone(&relation.schema), &relation.primary_key)?;
        let name = relation.name.clone();
        self.catalog.add_relation(relation)?;
        self.stores.insert(name.clone(), store);
        self.defined(&name, Vec::new())?;
        Ok(Output::Command("CREATE TABLE".into()))
    }

    pub(crate) async fn create_view(&mut self, statement: &ast::Statement, view: &ast::CreateView) -> Result<Output> {
        self.refuse_in_transaction("CREATE VIEW")?;
        let name = object_name(&view.name)?;
        let tag = if view.materialized { "CREATE MATERIALIZED VIEW" } else { "CREATE VIEW" };
        if view.or_replace {
            return Err(SqlError::Unsupported(
                "CREATE OR REPLACE VIEW is not supported; DROP the view and create it again".into(),
            )
            .into());
        }
        if self.catalog.relation(&name).is_some() && view.if_not_exists {
            return Ok(Output::Command(tag.into()));
        }
        self.catalog.check_name_free(&name)?;
        let streams = self.ensure_change_streams(statement)?;
        let mut dependencies = self.dependencies(statement)?;
        dependencies.extend(streams);
        let context = PlanContext::for_planning(&self.catalog, &self.state);
        let (schema, dataflow) = if view.materialized {
            let planned = plan_view(&context, &view.query)?;
            (planned.logical.schema().as_arrow().clone(), Some(planned.dataflow))
        } else {
            let plan = context.plan_query(&view.query)?;
            (plan.schema().as_arrow().clone(), None)
        };
        let schema = changeflow_sql::names::apply_postgres_names(&schema, &view.query);
        let schema = rename_columns(&name, schema, &view.columns)?;
        let relation = Relation {
            name: name.clone(),
            kind: if view.materialized { RelationKind::MaterializedView } else { RelationKind::View },
            schema: Arc::new(schema),
            primary_key: Vec::new(),
            dependencies,
            query: Some(view.query.clone()),
            source: None,
        };
        if let Some(plan) = dataflow {
            let mut operators = operator::build(&plan)?;
            let inputs = plan.scanned_relations();
            // A view whose rows have a key (group columns, an input's primary key) is stored
            // by it, so point queries on the key look rows up instead of scanning.
            let key = plan
                .unique_key(&|input| {
                    let relation = self.catalog.relation(input)?;
                    let key = match self.stores.get(input) {
                        Some(store) if !store.primary_key().is_empty() => store.primary_key().to_vec(),
                        _ => relation.primary_key.clone(),
                    };
                    Some(key.iter().map(|&i| relation.schema.field(i).name().clone()).collect())
                })
                .unwrap_or_default();
            let mut store = RelationStore::new(&name, Arc::clone(&relation.schema), &key)?;
            if self.mode == Mode::Execute {
                // Initial load: the inputs' current contents, inserted.
                let mut changes: EpochChanges = FxHashMap::default();
                for input in &inputs {
                    if changeflow_sql::change_stream::base_of(input).is_some() {
                        // A change stream has no past: the view starts empty on that side.
                        continue;
                    }
                    let source =
                        self.stores.get(input).ok_or_else(|| EngineError::Internal(format!("no store for {input}")))?;
                    if let Some(error) = self.view_error(input) {
                        return Err(EngineError::State(format!("materialized view \"{input}\" {error}")));
                    }
                    changes.insert(input.clone(), ChangeBatch::inserts(source.snapshot()?));
                }
                let initial = operators.step(&changes)?.consolidate()?.with_schema(Arc::clone(&relation.schema))?;
                store.apply(&initial)?;
            }
            self.catalog.add_relation(relation)?;
            self.stores.insert(name.clone(), store);
            let reads = plan.scanned_columns();
            self.views.push(MaterializedView {
                name: name.clone(),
                dataflow: Some(operators),
                plan,
                inputs,
                reads,
                error: None,
                epochs: 0,
                last_apply: std::time::Duration::ZERO,
            });
        } else {
            self.catalog.add_relation(relation)?;
        }
        self.defined(&name, Vec::new())?;
        Ok(Output::Command(tag.into()))
    }

    /// The relations a statement reads, by name (views included, CTE names excluded).
    fn dependencies(&self, statement: &ast::Statement) -> Result<Vec<String>> {
        let wrapped = datafusion::sql::parser::Statement::Statement(Box::new(statement.clone()));
        let (tables, _ctes) = datafusion::sql::resolve::resolve_table_references(&wrapped, true)?;
        let mut names: Vec<String> = Vec::new();
        for table in tables {
            let name = table.table().to_string();
            if matches!(name.as_str(), "changes" | "generate_series") && self.catalog.relation(&name).is_none() {
                // Table functions: changes(...), whose streams are counted apart, and
                // generate_series(...), which reads no relation.
                continue;
            }
            self.catalog.require_relation(&name)?;
            if !names.contains(&name) {
                names.push(name);
            }
        }
        Ok(names)
    }

    pub(crate) fn drop(
        &mut self,
        object_type: ast::ObjectType,
        if_exists: bool,
        names: &[ast::ObjectName],
        cascade: bool,
    ) -> Result<Output> {
        self.refuse_in_transaction("DROP")?;
        let (kind, tag) = match object_type {
            ast::ObjectType::Table => (RelationKind::Table, "DROP TABLE"),
            ast::ObjectType::View => (RelationKind::View, "DROP VIEW"),
            ast::ObjectType::MaterializedView => (RelationKind::MaterializedView, "DROP MATERIALIZED VIEW"),
            other => return Err(SqlError::Unsupported(format!("DROP {other} is not supported")).into()),
        };
        let mut notices = Vec::new();
        for name in names {
            let name = object_name(name)?;
            if self.catalog.relation(&name).is_none() {
                if if_exists {
                    notices.push(format!("{} \"{name}\" does not exist, skipping", kind.describe()));
                    continue;
                }
                return Err(SqlError::Catalog(format!("{} \"{name}\" does not exist", kind.describe())).into());
            }
            self.catalog.require_kind(&name, kind)?;
            if cascade {
                notices.extend(self.drop_dependents(std::slice::from_ref(&name))?);
            }
            self.drop_relation(&name, kind)?;
        }
        self.catalog.prune_streams();
        Ok(Output::with_notices(Output::Command(tag.into()), notices))
    }

    /// Drops one relation that nothing depends on any more.
    fn drop_relation(&mut self, name: &str, kind: RelationKind) -> Result<()> {
        self.catalog.drop_relation(name, kind)?;
        self.stores.remove(name);
        self.views.retain(|v| v.name != name);
        self.end_subscriptions(name, &format!("\"{name}\" was dropped"));
        let tag = match kind {
            RelationKind::View => "DROP VIEW",
            RelationKind::MaterializedView => "DROP MATERIALIZED VIEW",
            _ => "DROP TABLE",
        };
        self.undefined(name, format!("{tag} {}", quote_name(name)))
    }

    /// `CASCADE`: drops the sinks and views that depend on `names`, readers first; answers
    /// PostgreSQL's notices naming each.
    fn drop_dependents(&mut self, names: &[String]) -> Result<Vec<String>> {
        let cascade = self.catalog.cascade_of(names);
        let mut notices = Vec::new();
        for sink in &cascade.sinks {
            self.drop_sink(sink, true)?;
            notices.push(format!("drop cascades to sink {sink}"));
        }
        for view in &cascade.views {
            let Some(kind) = self.catalog.relation(view).map(|r| r.kind) else { continue };
            self.drop_relation(view, kind)?;
            notices.push(format!("drop cascades to {} {view}", kind.describe()));
        }
        Ok(notices)
    }

    pub(crate) async fn create_source(&mut self, create: &CreateSource) -> Result<Output> {
        self.refuse_in_transaction("CREATE SOURCE")?;
        if create.if_not_exists && self.catalog.source(&create.name).is_some() {
            return Ok(Output::Command("CREATE SOURCE".into()));
        }
        let connector = self.registry.source(&create.connector).ok_or_else(|| {
            SqlError::Catalog(format!(
                "unknown connector \"{}\"; available: {}",
                create.connector,
                self.registry.source_names().join(", ")
            ))
        })?;
        // Replaying the data directory: the relations as they were declared at creation.
        let definitions = match self.replay_relations.take() {
            Some(relations) if self.replaying => relations,
            _ => connector.describe(create).await?,
        };
        let relations: Vec<Relation> = definitions
            .iter()
            .map(|d| Relation {
                name: d.name.clone(),
                kind: RelationKind::SourceRelation,
                schema: Arc::clone(&d.schema),
                primary_key: d.primary_key.clone(),
                dependencies: Vec::new(),
                query: None,
                source: Some(create.name.clone()),
            })
            .collect();
        let source = SourceDef {
            name: create.name.clone(),
            connector: create.connector.clone(),
            options: create.options.clone(),
            secrets: create.secrets.clone(),
            relations: relations.iter().map(|r| r.name.clone()).collect(),
        };
        let stores = relations
            .iter()
            .zip(&definitions)
            .map(|(r, d)| {
                let mut store = RelationStore::new(&r.name, Arc::clone(&r.schema), &r.primary_key)?;
                store.reserve(d.expected_rows);
                Ok((r.name.clone(), store))
            })
            .collect::<Result<Vec<_>>>()?;
        self.catalog.add_source(source, relations)?;
        self.stores.extend(stores);
        let status = SourceStatus::default();
        status.monitor.set_state("starting");
        self.sources.insert(create.name.clone(), status);
        self.defined(&create.name, definitions)?;
        Ok(Output::Command("CREATE SOURCE".into()))
    }

    pub(crate) fn drop_source(&mut self, name: &str, if_exists: bool, cascade: bool) -> Result<Output> {
        self.refuse_in_transaction("DROP SOURCE")?;
        let Some(source) = self.catalog.source(name) else {
            if if_exists {
                let notice = format!("source \"{name}\" does not exist, skipping");
                return Ok(Output::with_notices(Output::Command("DROP SOURCE".into()), vec![notice]));
            }
            return Err(SqlError::Catalog(format!("source \"{name}\" does not exist")).into());
        };
        let relations = source.relations.clone();
        let notices = if cascade { self.drop_dependents(&relations)? } else { Vec::new() };
        let source = self.catalog.drop_source(name)?;
        for relation in &source.relations {
            self.stores.remove(relation);
            self.end_subscriptions(relation, &format!("source \"{name}\" was dropped"));
        }
        self.sources.remove(name);
        self.catalog.prune_streams();
        self.undefined(name, format!("DROP SOURCE {}", quote_name(name)))?;
        Ok(Output::with_notices(Output::Command("DROP SOURCE".into()), notices))
    }

    pub(crate) fn explain_view(&mut self, statement: &ast::Statement) -> Result<Output> {
        let ast::Statement::CreateView(view) = statement else {
            return Err(EngineError::Internal("EXPLAIN of a non-view".into()));
        };
        let name = object_name(&view.name)?;
        self.ensure_change_streams(statement)?;
        let context = PlanContext::for_planning(&self.catalog, &self.state);
        let planned = plan_view(&context, &view.query)?;
        // Building the operators checks what only the engine knows (e.g. aggregate types).
        operator::build(&planned.dataflow)?;
        let text = changeflow_sql::explain::explain(&name, &planned.dataflow);
        let schema = Arc::new(Schema::new(vec![Field::new("dataflow", DataType::Utf8, false)]));
        let lines = StringArray::from(text.lines().collect::<Vec<_>>());
        let batch = RecordBatch::try_new(Arc::clone(&schema), vec![Arc::new(lines)])?;
        Ok(Output::Rows { schema, batches: vec![batch] })
    }
}

/// Applies a view's column list, and refuses duplicate column names.
fn rename_columns(view: &str, schema: Schema, columns: &[ast::ViewColumnDef]) -> Result<Schema> {
    if !columns.is_empty() && columns.len() != schema.fields().len() {
        return Err(SqlError::Catalog(format!(
            "view \"{view}\" names {} columns but its query has {}",
            columns.len(),
            schema.fields().len()
        ))
        .into());
    }
    let fields: Vec<Field> = schema
        .fields()
        .iter()
        .enumerate()
        .map(|(i, f)| match columns.get(i) {
            Some(column) => f.as_ref().clone().with_name(normalize_ident(&column.name)),
            None => f.as_ref().clone(),
        })
        .collect();
    for (i, field) in fields.iter().enumerate() {
        if fields[..i].iter().any(|f| f.name() == field.name()) {
            return Err(SqlError::Catalog(format!(
                "column \"{}\" appears twice in view \"{view}\"; give one of them an alias (AS other_name)",
                field.name()
            ))
            .into());
        }
    }
    Ok(Schema::new(fields))
}

/// A name as a quoted SQL identifier (it reads back exactly, keywords included).
fn quote_name(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}
