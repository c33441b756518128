//! INSERT, UPDATE and DELETE on local tables. DataFusion plans each statement (names, type
//! coercion, casts to the column types); the engine runs the plan over the table's current
//! contents, turns the result into a change (old rows retracted, new rows inserted), checks
//! constraints, and applies it whole or not at all.

use std::sync::Arc;

use changeflow_sql::{PlanContext, RelationKind, SqlError};
use datafusion::arrow::array::{ArrayRef, RecordBatch, RecordBatchOptions};
use datafusion::arrow::compute::{cast, concat_batches};
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::common::Column;
use datafusion::logical_expr::{DmlStatement, Expr, LogicalPlan, LogicalPlanBuilder, WriteOp};
use datafusion::sql::sqlparser::ast;

use crate::change::ChangeBatch;
use crate::engine::{Engine, Mode, Output};
use crate::error::{EngineError, Result};

impl Engine {
    pub(crate) async fn dml(&mut self, statement: &ast::Statement) -> Result<Output> {
        let plan = {
            let context = PlanContext::for_execution(&self.catalog, &self.state, self);
            context.plan_statement(statement)?
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
                let rows = conform(&schema, self.run_plan(&plan).await?)?;
                let count = rows.num_rows();
                (ChangeBatch::inserts(rows), format!("INSERT 0 {count}"))
            }
            WriteOp::Delete => {
                let plan = changeflow_sql::context::optimize(&self.state, input)?;
                if self.mode == Mode::PlanOnly {
                    return Ok(Output::Command("DELETE 0".into()));
                }
                let rows = conform(&schema, self.run_plan(&plan).await?)?;
                let count = rows.num_rows();
                (ChangeBatch::retractions(rows), format!("DELETE {count}"))
            }
            WriteOp::Update => {
                let plan =
                    changeflow_sql::context::optimize(&self.state, &old_and_new_rows(input, schema.fields().len())?)?;
                if self.mode == Mode::PlanOnly {
                    return Ok(Output::Command("UPDATE 0".into()));
                }
                let both = self.run_plan(&plan).await?;
                let width = schema.fields().len();
                let old = conform(&schema, both.project(&(0..width).collect::<Vec<_>>())?)?;
                let new = conform(&schema, both.project(&(width..2 * width).collect::<Vec<_>>())?)?;
                let count = old.num_rows();
                let change = ChangeBatch::concat(&schema, &[ChangeBatch::retractions(old), ChangeBatch::inserts(new)])?;
                (change, format!("UPDATE {count}"))
            }
            other => return Err(SqlError::Unsupported(format!("{other} is not supported")).into()),
        };
        let store = self.stores.get_mut(&name).ok_or_else(|| EngineError::Internal(format!("no store for {name}")))?;
        store.check(&change)?;
        store.apply(&change)?;
        self.submit(vec![(name, change)])?;
        Ok(Output::Command(tag))
    }

    pub(crate) async fn run_plan(&self, plan: &LogicalPlan) -> Result<RecordBatch> {
        let physical = self.state.create_physical_plan(plan).await?;
        let batches = datafusion::physical_plan::collect(physical, self.state.task_ctx()).await?;
        let schema: SchemaRef = Arc::new(plan.schema().as_arrow().clone());
        Ok(concat_batches(&schema, &batches)?)
    }
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

/// Gives a batch the table's schema, casting columns whose type differs.
fn conform(schema: &SchemaRef, batch: RecordBatch) -> Result<RecordBatch> {
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
    // Nullability is checked by the store with a proper message; build without it here.
    let relaxed = Arc::new(datafusion::arrow::datatypes::Schema::new(
        schema.fields().iter().map(|f| f.as_ref().clone().with_nullable(true)).collect::<Vec<_>>(),
    ));
    let relaxed_batch = RecordBatch::try_new_with_options(
        relaxed,
        columns.clone(),
        &RecordBatchOptions::new().with_row_count(Some(batch.num_rows())),
    )?;
    match RecordBatch::try_new_with_options(
        Arc::clone(schema),
        columns,
        &RecordBatchOptions::new().with_row_count(Some(batch.num_rows())),
    ) {
        Ok(batch) => Ok(batch),
        Err(_) => Ok(relaxed_batch),
    }
}
