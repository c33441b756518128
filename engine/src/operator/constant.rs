//! Constant rows (VALUES, or a SELECT without FROM): inserted in the first epoch, then never
//! changing.

use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, BooleanArray, RecordBatch, RecordBatchOptions};
use datafusion::arrow::compute::{cast, concat};
use datafusion::arrow::datatypes::{DataType, Schema, SchemaRef};
use datafusion::common::DFSchema;
use datafusion::logical_expr::Expr;

use super::state::state_batch;
use super::{EpochChanges, Operator, StateReader, evaluate, physical};
use crate::change::ChangeBatch;
use crate::error::Result;

pub struct Constant {
    pending: Option<ChangeBatch>,
    schema: SchemaRef,
}

impl Constant {
    pub fn new(rows: &[Vec<Expr>], schema: SchemaRef) -> Result<Self> {
        let one_row = RecordBatch::try_new_with_options(
            Arc::new(Schema::empty()),
            vec![],
            &RecordBatchOptions::new().with_row_count(Some(1)),
        )?;
        let empty = DFSchema::empty();
        let mut columns: Vec<Vec<ArrayRef>> = vec![Vec::new(); schema.fields().len()];
        for row in rows {
            for (i, expr) in row.iter().enumerate() {
                let value = evaluate(&physical(expr, &empty)?, &one_row)?;
                columns[i].push(cast(&value, schema.field(i).data_type())?);
            }
        }
        let arrays = columns
            .iter()
            .zip(schema.fields())
            .map(|(parts, field)| match parts.is_empty() {
                true => Ok(datafusion::arrow::array::new_empty_array(field.data_type())),
                false => concat(&parts.iter().map(|a| a.as_ref()).collect::<Vec<_>>()),
            })
            .collect::<Result<Vec<_>, _>>()?;
        let data = RecordBatch::try_new_with_options(
            schema.clone(),
            arrays,
            &RecordBatchOptions::new().with_row_count(Some(rows.len())),
        )?;
        Ok(Self { pending: Some(ChangeBatch::inserts(data)), schema })
    }
}

impl Operator for Constant {
    fn step(&mut self, _changes: &EpochChanges) -> Result<ChangeBatch> {
        Ok(self.pending.take().unwrap_or_else(|| ChangeBatch::empty(self.schema.clone())))
    }

    /// Whether the rows were emitted already.
    fn save_state(&self, out: &mut Vec<RecordBatch>) -> Result<()> {
        let emitted: ArrayRef = Arc::new(BooleanArray::from(vec![self.pending.is_none()]));
        out.push(state_batch(vec![("emitted", emitted)])?);
        Ok(())
    }

    fn load_state(&mut self, state: &mut StateReader) -> Result<()> {
        let batch = state.next("constant rows' state", &[DataType::Boolean])?;
        if batch.len() == 1 && batch.boolean(0).value(0) {
            self.pending = None;
        }
        Ok(())
    }

    /// The rows until they are emitted.
    fn state_bytes(&self) -> usize {
        self.pending.as_ref().map_or(0, |rows| rows.data.get_array_memory_size())
    }
}
