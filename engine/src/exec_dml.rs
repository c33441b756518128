//! INSERT, UPDATE and DELETE on local tables. DataFusion plans each statement (names, type
//! coercion, casts to the column types); the engine runs the plan over the table's current
//! contents, turns the result into a change (old rows retracted, new rows inserted), checks
//! constraints, and applies it whole or not at all.

use std::sync::Arc;

use changeflow_sql::RelationData;
use changeflow_sql::{PlanContext, RelationKind, SqlError};
use datafusion::arrow::array::{Array, ArrayRef, RecordBatch, RecordBatchOptions};
use datafusion::arrow::compute::{cast, concat_batches};
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::TableProvider;
use datafusion::catalog::default_table_source::provider_as_source;
use datafusion::common::Column;
use datafusion::common::ScalarValue;
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::datasource::MemTable;
use datafusion::error::DataFusionError;
use datafusion::logical_expr::Operator;
use datafusion::logical_expr::utils::split_conjunction;
use datafusion::logical_expr::{DmlStatement, Expr, LogicalPlan, LogicalPlanBuilder, WriteOp};
use datafusion::sql::sqlparser::ast;

use crate::change::ChangeBatch;
use crate::engine::{Engine, Mode, Output};
use crate::error::{EngineError, Result};

impl Engine {
    pub(crate) async fn dml(&mut self, statement: &ast::Statement) -> Result<Output> {
        self.fix_statement_time(true);
        let result = self.dml_now(statement).await;
        self.fix_statement_time(false);
        result
    }

    async fn dml_now(&mut self, statement: &ast::Statement) -> Result<Output> {
        // UPDATE and DELETE bind their data after planning (see `bind_data`); INSERT ... SELECT
        // reads its sources while planning.
        let plan = if matches!(statement, ast::Statement::Insert(_)) {
            PlanContext::for_execution(&self.catalog, &self.state, self).plan_statement(statement)?
        } else {
            PlanContext::for_planning(&self.catalog, &self.state).plan_statement(statement)?
        };
        let LogicalPlan::Dml(DmlStatement { table_name, op, input, .. }) = &plan else {
            return Err(EngineError::Internal(format!("DML planned as {}", plan.display())));
        };
        let name = table_name.table().to_string();
        let relation = self.catalog.require_relation(&name)?;
        if relation.kind != RelationKind::Table {
            return Err(SqlError::Catalog(format!(
                "cannot change \"{name}\": it is a {} (read-only); only tables accept INSERT, UPDATE and DELETE",
                relation.kind.describe()
            ))
            .into());
        }
        let schema = Arc::clone(&relation.schema);
        let (change, tag) = match op {
            WriteOp::Insert(_) => {
                let plan = changeflow_sql::context::optimize(&self.state, input)?;
                if self.mode == Mode::PlanOnly {
                    return Ok(Output::Command("INSERT 0 0".into()));
                }
                // The columns VALUES fill, in order: those listed, or the table's.
                let filled: Vec<String> = match statement {
                    ast::Statement::Insert(insert) if !insert.columns.is_empty() => insert
                        .columns
                        .iter()
                        .map(|c| changeflow_sql::ddl::object_name(c).unwrap_or_else(|_| c.to_string()))
                        .collect(),
                    _ => schema.fields().iter().map(|f| f.name().clone()).collect(),
                };
                let rows = self.run_plan(&plan).await.map_err(|e| not_null_violation(e, &name, &filled))?;
                let rows = conform(&name, &schema, rows)?;
                let count = rows.num_rows();
                (ChangeBatch::inserts(rows), format!("INSERT 0 {count}"))
            }
            WriteOp::Delete => {
                let plan = changeflow_sql::context::optimize(&self.state, input)?;
                if self.mode == Mode::PlanOnly {
                    return Ok(Output::Command("DELETE 0".into()));
                }
                let plan = self.bind_data(plan, &name)?;
                let rows = conform(&name, &schema, self.run_plan(&plan).await?)?;
                let count = rows.num_rows();
                (ChangeBatch::retractions(rows), format!("DELETE {count}"))
            }
            WriteOp::Update => {
                let plan =
                    changeflow_sql::context::optimize(&self.state, &old_and_new_rows(input, schema.fields().len())?)?;
                if self.mode == Mode::PlanOnly {
                    return Ok(Output::Command("UPDATE 0".into()));
                }
                let plan = self.bind_data(plan, &name)?;
                let both = self.run_plan(&plan).await?;
                let width = schema.fields().len();
                let old = conform(&name, &schema, both.project(&(0..width).collect::<Vec<_>>())?)?;
                let new = conform(&name, &schema, both.project(&(width..2 * width).collect::<Vec<_>>())?)?;
                let count = old.num_rows();
                let change = ChangeBatch::updates(&schema, old, new)?;
                (change, format!("UPDATE {count}"))
            }
            other => return Err(SqlError::Unsupported(format!("{other} is not supported")).into()),
        };
        let store = self.stores.get_mut(&name).ok_or_else(|| EngineError::Internal(format!("no store for {name}")))?;
        let change = store.check_and_apply(&change)?;
        self.submit(vec![(name, change)])?;
        Ok(Output::Command(tag))
    }

    /// Points every table scan of a planned UPDATE or DELETE at current data. When the
    /// statement filters the target table on its primary key (`WHERE id = 5`, `id IN (...)`),
    /// only the matching rows are read, through the key index: a point update costs the
    /// same at a thousand rows and at a million.
    fn bind_data(&self, plan: LogicalPlan, target: &str) -> Result<LogicalPlan> {
        let target_rows = match primary_key_literals(&plan, target, &self.catalog) {
            Some(keys) => self.stores.get(target).map(|s| s.lookup(&[keys])).transpose()?.flatten(),
            None => None,
        };
        let bound = plan.transform_up_with_subqueries(|node| {
            let LogicalPlan::TableScan(scan) = &node else { return Ok(Transformed::no(node)) };
            let name = scan.table_name.table();
            let relation = self.catalog.require_relation(name).map_err(|e| DataFusionError::Plan(e.to_string()))?;
            let provider: Arc<dyn TableProvider> = match (&target_rows, name == target) {
                (Some(rows), true) => Arc::new(MemTable::try_new(rows.schema(), vec![vec![rows.clone()]])?),
                _ => self.provider(relation)?,
            };
            let mut scan = scan.clone();
            scan.source = provider_as_source(provider);
            Ok(Transformed::yes(LogicalPlan::TableScan(scan)))
        })?;
        Ok(bound.data)
    }

    pub(crate) async fn run_plan(&self, plan: &LogicalPlan) -> Result<RecordBatch> {
        let physical = self.state.create_physical_plan(plan).await?;
        let batches = datafusion::physical_plan::collect(physical, self.state.task_ctx()).await?;
        // Nullability is the store's to check (with a message naming the column), not Arrow's.
        let fields: Vec<_> = plan.schema().fields().iter().map(|f| f.as_ref().clone().with_nullable(true)).collect();
        let schema: SchemaRef = Arc::new(datafusion::arrow::datatypes::Schema::new(fields));
        let batches = batches
            .into_iter()
            .map(|b| {
                RecordBatch::try_new_with_options(
                    Arc::clone(&schema),
                    b.columns().to_vec(),
                    &RecordBatchOptions::new().with_row_count(Some(b.num_rows())),
                )
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(concat_batches(&schema, &batches)?)
    }
}

/// Arrow's refusal of a NULL in a non-nullable column of VALUES (`Column 'column2' is
/// declared as non-nullable`) in PostgreSQL's words (23502), naming the table's column:
/// VALUES' n-th column fills the n-th of `filled`.
fn not_null_violation(error: EngineError, table: &str, filled: &[String]) -> EngineError {
    let text = error.to_string();
    let Some(column) = text
        .split_once("Column '")
        .and_then(|(_, rest)| rest.split_once("' is declared as non-nullable"))
        .map(|(column, _)| column)
    else {
        return error;
    };
    let by_position = column
        .strip_prefix("column")
        .and_then(|n| n.parse::<usize>().ok())
        .and_then(|n| filled.get(n.checked_sub(1)?))
        .map(String::as_str);
    let column = by_position.unwrap_or(column);
    EngineError::Constraint(format!(
        "null value in column \"{column}\" of relation \"{table}\" violates not-null constraint"
    ))
}

/// An UPDATE's plan projects the new row over the filtered table; project the old row too.
fn old_and_new_rows(input: &LogicalPlan, width: usize) -> Result<LogicalPlan> {
    let LogicalPlan::Projection(projection) = input else {
        return Err(SqlError::Unsupported("this form of UPDATE is not supported".into()).into());
    };
    let scanned = projection.input.schema();
    if scanned.fields().len() != width {
        return Err(SqlError::Unsupported("UPDATE ... FROM is not supported".into()).into());
    }
    let old = (0..width).map(|i| {
        let (qualifier, field) = scanned.qualified_field(i);
        Expr::Column(Column::new(qualifier.cloned(), field.name())).alias(format!("__old_{i}"))
    });
    let new = projection.expr.iter().enumerate().map(|(i, e)| e.clone().alias(format!("__new_{i}")));
    Ok(LogicalPlanBuilder::from(Arc::clone(&projection.input)).project(old.chain(new).collect::<Vec<_>>())?.build()?)
}

/// Gives a batch the table's schema, casting columns whose type differs; refuses NULLs in
/// NOT NULL columns.
fn conform(table: &str, schema: &SchemaRef, batch: RecordBatch) -> Result<RecordBatch> {
    let columns = batch
        .columns()
        .iter()
        .zip(schema.fields())
        .map(|(column, field)| {
            if column.data_type() == field.data_type() {
                Ok(Arc::clone(column))
            } else {
                cast(column, field.data_type()).map_err(|e| {
                    EngineError::Constraint(format!(
                        "column \"{}\" is of type {}: {e}",
                        field.name(),
                        changeflow_sql::ddl::sql_type_name(field.data_type())
                    ))
                })
            }
        })
        .collect::<Result<Vec<ArrayRef>>>()?;
    for (field, column) in schema.fields().iter().zip(&columns) {
        if !field.is_nullable() && column.null_count() > 0 {
            return Err(EngineError::Constraint(format!(
                "null value in column \"{}\" of relation \"{table}\" violates not-null constraint",
                field.name()
            )));
        }
    }
    Ok(RecordBatch::try_new_with_options(
        Arc::clone(schema),
        columns,
        &RecordBatchOptions::new().with_row_count(Some(batch.num_rows())),
    )?)
}

/// The primary-key values a plan's filter on `table` pins down, as one array of the key's type.
fn primary_key_literals(plan: &LogicalPlan, table: &str, catalog: &changeflow_sql::Catalog) -> Option<ArrayRef> {
    let relation = catalog.relation(table)?;
    let [key_index] = relation.primary_key.as_slice() else { return None };
    let key = relation.schema.field(*key_index);
    let mut values: Option<Vec<ScalarValue>> = None;
    let _ = plan.apply(|node| {
        if let LogicalPlan::Filter(filter) = node
            && matches!(filter.input.as_ref(), LogicalPlan::TableScan(scan) if scan.table_name.table() == table)
        {
            values = split_conjunction(&filter.predicate).into_iter().find_map(|e| key_values(e, key.name()));
            return Ok(TreeNodeRecursion::Stop);
        }
        Ok(TreeNodeRecursion::Continue)
    });
    let values = values?;
    let array = ScalarValue::iter_to_array(values).ok()?;
    cast(&array, key.data_type()).ok().filter(|a| a.null_count() == 0)
}

fn key_values(expr: &Expr, key: &str) -> Option<Vec<ScalarValue>> {
    let is_key = |e: &Expr| match e {
        Expr::Column(c) => c.name == key,
        Expr::Cast(c) => matches!(c.expr.as_ref(), Expr::Column(col) if col.name == key),
        _ => false,
    };
    match expr {
        Expr::BinaryExpr(b) if b.op == Operator::Eq => match (b.left.as_ref(), b.right.as_ref()) {
            (l, Expr::Literal(v, _)) if is_key(l) => Some(vec![v.clone()]),
            (Expr::Literal(v, _), r) if is_key(r) => Some(vec![v.clone()]),
            _ => None,
        },
        Expr::InList(list) if !list.negated && is_key(&list.expr) => list
            .list
            .iter()
            .map(|e| match e {
                Expr::Literal(v, _) => Some(v.clone()),
                _ => None,
            })
            .collect(),
        _ => None,
    }
}
