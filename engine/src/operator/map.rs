//! Filter and Project: stateless, weights pass through unchanged.

use std::sync::Arc;

use datafusion::arrow::array::{Array, AsArray, RecordBatch, RecordBatchOptions};
use datafusion::arrow::compute::filter_record_batch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_expr::expressions::Column;

use super::{EpochChanges, Operator, StateReader, evaluate};
use crate::change::ChangeBatch;
use crate::error::{EngineError, Result};

pub struct Filter {
    input: Box<dyn Operator>,
    predicate: Arc<dyn PhysicalExpr>,
    schema: SchemaRef,
}

impl Filter {
    pub fn new(input: Box<dyn Operator>, predicate: Arc<dyn PhysicalExpr>, schema: SchemaRef) -> Self {
        Self { input, predicate, schema }
    }
}

/// Keeps the rows (and weights) where `mask` is true; NULL counts as false, as in SQL. A part
/// of a consolidated change is consolidated.
pub fn filter_changes(change: ChangeBatch, mask: &datafusion::arrow::array::BooleanArray) -> Result<ChangeBatch> {
    let mask =
        if mask.null_count() > 0 { datafusion::arrow::compute::prep_null_mask_filter(mask) } else { mask.clone() };
    if mask.true_count() == change.len() {
        return Ok(change);
    }
    let data = filter_record_batch(&change.data, &mask)?;
    let weights =
        change.weights.iter().zip(mask.iter()).filter(|(_, keep)| keep == &Some(true)).map(|(w, _)| *w).collect();
    Ok(ChangeBatch::new(data, weights)?.consolidated_if(change.is_consolidated()))
}

impl Operator for Filter {
    fn step(&mut self, changes: &EpochChanges) -> Result<ChangeBatch> {
        let change = self.input.step(changes)?;
        if change.is_empty() {
            return change.with_schema(self.schema.clone());
        }
        let mask = evaluate(&self.predicate, &change.data)?;
        let mask = mask
            .as_boolean_opt()
            .ok_or_else(|| EngineError::Internal(format!("filter predicate returned {}", mask.data_type())))?
            .clone();
        filter_changes(change, &mask)?.with_schema(self.schema.clone())
    }

    fn save_state(&self, out: &mut Vec<RecordBatch>) -> Result<()> {
        self.input.save_state(out)
    }

    fn load_state(&mut self, state: &mut StateReader) -> Result<()> {
        self.input.load_state(state)
    }

    fn state_bytes(&self) -> usize {
        self.input.state_bytes()
    }
}

pub struct Project {
    input: Box<dyn Operator>,
    exprs: Vec<Arc<dyn PhysicalExpr>>,
    /// Every input column is among the outputs as it is: distinct input rows give distinct
    /// output rows, so a consolidated change stays consolidated.
    injective: bool,
    schema: SchemaRef,
}

impl Project {
    pub fn new(
        input: Box<dyn Operator>,
        input_width: usize,
        exprs: Vec<Arc<dyn PhysicalExpr>>,
        schema: SchemaRef,
    ) -> Self {
        let mut kept = vec![false; input_width];
        for expr in &exprs {
            if let Some(column) = expr.downcast_ref::<Column>()
                && let Some(flag) = kept.get_mut(column.index())
            {
                *flag = true;
            }
        }
        Self { input, exprs, injective: kept.iter().all(|k| *k), schema }
    }
}

impl Operator for Project {
    fn step(&mut self, changes: &EpochChanges) -> Result<ChangeBatch> {
        let change = self.input.step(changes)?;
        if change.is_empty() {
            return Ok(ChangeBatch::empty(self.schema.clone()));
        }
        let columns = self.exprs.iter().map(|e| evaluate(e, &change.data)).collect::<Result<Vec<_>>>()?;
        let data = RecordBatch::try_new_with_options(
            self.schema.clone(),
            columns,
            &RecordBatchOptions::new().with_row_count(Some(change.len())),
        )?;
        let consolidated = self.injective && change.is_consolidated();
        Ok(ChangeBatch::new(data, change.weights)?.consolidated_if(consolidated))
    }

    fn save_state(&self, out: &mut Vec<RecordBatch>) -> Result<()> {
        self.input.save_state(out)
    }

    fn load_state(&mut self, state: &mut StateReader) -> Result<()> {
        self.input.load_state(state)
    }

    fn state_bytes(&self) -> usize {
        self.input.state_bytes()
    }
}
