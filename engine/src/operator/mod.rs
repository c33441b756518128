//! Incremental operators. Each consumes the change batches of its inputs for one epoch and
//! emits the change of its output, keeping whatever state that needs (none for filters and
//! projections; per-group accumulators for aggregates; arrangements for joins).

mod accumulator;
mod aggregate;
mod arrangement;
mod byte_values;
mod constant;
mod group_index;
mod group_results;
mod join;
mod map;
mod packed_values;
mod scan;
pub mod state;
mod topk;
mod union;

use std::sync::Arc;

use changeflow_sql::plan::{NodeKind, PlanNode};
use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::common::DFSchema;
use datafusion::execution::context::ExecutionProps;
use datafusion::logical_expr::Expr;
use datafusion::logical_expr::physical_planning_context::PhysicalPlanningContext;
use datafusion::physical_expr::{PhysicalExpr, create_physical_expr};
use rustc_hash::FxHashMap;

pub use self::state::StateReader;
use crate::change::ChangeBatch;
use crate::error::Result;

/// The changes of every stored relation in one epoch, consolidated.
pub type EpochChanges = FxHashMap<String, ChangeBatch>;

/// One node of a view's dataflow.
pub trait Operator: Send + Sync {
    /// Processes one epoch: reads the input relations' changes (through the node's inputs)
    /// and returns this node's output change. Called once per epoch, epochs in order.
    fn step(&mut self, changes: &EpochChanges) -> Result<ChangeBatch>;

    /// Appends this node's state, then its inputs', as record batches (for checkpoints).
    fn save_state(&self, out: &mut Vec<RecordBatch>) -> Result<()>;

    /// Replaces this node's state, then its inputs', with what [`Operator::save_state`] of a
    /// dataflow of the same plan wrote.
    fn load_state(&mut self, state: &mut StateReader) -> Result<()>;

    /// Heap bytes of this node's state and its inputs' (see [`crate::heap_bytes`]).
    fn state_bytes(&self) -> usize;
}

/// Builds the operator tree of a dataflow plan.
pub fn build(node: &PlanNode) -> Result<Box<dyn Operator>> {
    let schema: SchemaRef = Arc::new(node.schema.as_arrow().clone());
    Ok(match &node.kind {
        NodeKind::Scan { relation, .. } => Box::new(scan::Scan::new(relation.clone(), schema)),
        NodeKind::Filter { input, predicate } => {
            let predicate = physical(predicate, &input.schema)?;
            Box::new(map::Filter::new(build(input)?, predicate, schema))
        }
        NodeKind::Project { input, exprs } => {
            let exprs = exprs.iter().map(|e| physical(e, &input.schema)).collect::<Result<Vec<_>>>()?;
            Box::new(map::Project::new(build(input)?, input.schema.fields().len(), exprs, schema))
        }
        NodeKind::Aggregate { input, group_exprs, aggregates } => {
            Box::new(aggregate::Aggregate::new(build(input)?, &input.schema, group_exprs, aggregates, schema)?)
        }
        NodeKind::Join { left, right, on, filter, join_type, nulls_equal } => Box::new(join::Join::new(
            (build(left)?, &left.schema),
            (build(right)?, &right.schema),
            on,
            filter.as_ref(),
            *join_type,
            *nulls_equal,
            schema,
        )?),
        NodeKind::Union { inputs } => {
            Box::new(union::Union::new(inputs.iter().map(build).collect::<Result<Vec<_>>>()?, schema))
        }
        NodeKind::TopK { input, order, skip, fetch } => {
            Box::new(topk::TopK::new(build(input)?, &input.schema, order, *skip, *fetch, schema)?)
        }
        NodeKind::Constant { rows } => Box::new(constant::Constant::new(rows, schema)?),
    })
}

/// A DataFusion physical expression over batches of the given schema.
pub fn physical(expr: &Expr, schema: &DFSchema) -> Result<Arc<dyn PhysicalExpr>> {
    Ok(create_physical_expr(expr, schema, &ExecutionProps::new(), &PhysicalPlanningContext::default())?)
}

/// Evaluates an expression over a batch into an array of the batch's length.
pub fn evaluate(expr: &Arc<dyn PhysicalExpr>, batch: &RecordBatch) -> Result<datafusion::arrow::array::ArrayRef> {
    Ok(expr.evaluate(batch)?.into_array(batch.num_rows())?)
}
