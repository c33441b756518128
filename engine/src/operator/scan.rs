//! Scan: the changes of one stored relation in this epoch, under the node's schema.

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;

use super::{EpochChanges, Operator, StateReader};
use crate::change::ChangeBatch;
use crate::error::Result;

pub struct Scan {
    relation: String,
    schema: SchemaRef,
}

impl Scan {
    pub fn new(relation: String, schema: SchemaRef) -> Self {
        Self { relation, schema }
    }
}

impl Operator for Scan {
    fn step(&mut self, changes: &EpochChanges) -> Result<ChangeBatch> {
        match changes.get(&self.relation) {
            Some(change) => change.clone().with_schema(self.schema.clone()),
            None => Ok(ChangeBatch::empty(self.schema.clone())),
        }
    }

    fn save_state(&self, _out: &mut Vec<RecordBatch>) -> Result<()> {
        Ok(())
    }

    fn load_state(&mut self, _state: &mut StateReader) -> Result<()> {
        Ok(())
    }

    fn state_bytes(&self) -> usize {
        0
    }
}
