//! UNION ALL: the changes of all inputs, under the union's schema.

use datafusion::arrow::datatypes::SchemaRef;

use super::{EpochChanges, Operator};
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
}
