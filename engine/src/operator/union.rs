//! UNION ALL: the changes of all inputs, under the union's schema.

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;

use super::{EpochChanges, Operator, StateReader};
use crate::change::ChangeBatch;
use crate::error::Result;

pub struct Union {
    inputs: Vec<Box<dyn Operator>>,
    schema: SchemaRef,
}

impl Union {
    pub fn new(inputs: Vec<Box<dyn Operator>>, schema: SchemaRef) -> Self {
        Self { inputs, schema }
    }
}

impl Operator for Union {
    fn step(&mut self, changes: &EpochChanges) -> Result<ChangeBatch> {
        let mut outputs = Vec::with_capacity(self.inputs.len());
        for input in &mut self.inputs {
            outputs.push(input.step(changes)?.with_schema(self.schema.clone())?);
        }
        ChangeBatch::concat(&self.schema, &outputs)
    }

    fn save_state(&self, out: &mut Vec<RecordBatch>) -> Result<()> {
        self.inputs.iter().try_for_each(|input| input.save_state(out))
    }

    fn load_state(&mut self, state: &mut StateReader) -> Result<()> {
        self.inputs.iter_mut().try_for_each(|input| input.load_state(state))
    }

    fn state_bytes(&self) -> usize {
        self.inputs.iter().map(|input| input.state_bytes()).sum()
    }
}
