//! GROUP BY: per-group row counts and retractable accumulators. For each epoch it emits, per
//! group the epoch touched, a retraction of the group's previous output row and an insertion
//! of the new one (nothing when the row did not change). A group whose row count reaches zero
//! disappears; an aggregate without GROUP BY always has its one row, as in SQL.

use std::sync::Arc;

use changeflow_sql::plan::AggregateCall;
use datafusion::arrow::array::{ArrayRef, RecordBatch, RecordBatchOptions};
use datafusion::arrow::datatypes::{DataType, SchemaRef};
use datafusion::common::{DFSchema, ScalarValue};
use datafusion::logical_expr::{Expr, ExprSchemable};
use datafusion::physical_expr::PhysicalExpr;
use rustc_hash::FxHashMap;

use super::accumulator::Accumulator;
use super::{EpochChanges, Operator, evaluate, physical};
use crate::change::ChangeBatch;
use crate::error::{EngineError, Result};
use crate::rows::{RowCodec, encode_owned};

pub struct Aggregate {
    input: Box<dyn Operator>,
    group_exprs: Vec<Arc<dyn PhysicalExpr>>,
    arg_exprs: Vec<Option<Arc<dyn PhysicalExpr>>>,
    key_codec: RowCodec,
    groups: FxHashMap<Box<[u8]>, usize>,
    keys: Vec<Box<[u8]>>,
    row_counts: Vec<i64>,
    free: Vec<usize>,
    accumulators: Vec<Accumulator>,
    /// No GROUP BY: exactly one group, present even when empty.
    global: bool,
    started: bool,
    schema: SchemaRef,
}

impl Aggregate {
    pub fn new(
        input: Box<dyn Operator>,
        input_schema: &DFSchema,
        group_exprs: &[Expr],
        calls: &[AggregateCall],
        schema: SchemaRef,
    ) -> Result<Self> {
        let key_types = group_exprs.iter().map(|e| e.get_type(input_schema)).collect::<Result<Vec<DataType>, _>>()?;
        let mut aggregate = Self {
            input,
            group_exprs: group_exprs.iter().map(|e| physical(e, input_schema)).collect::<Result<_>>()?,
            arg_exprs: calls
                .iter()
                .map(|c| c.arg.as_ref().map(|a| physical(a, input_schema)).transpose())
                .collect::<Result<_>>()?,
            key_codec: RowCodec::new(&key_types)?,
            groups: FxHashMap::default(),
            keys: Vec::new(),
            row_counts: Vec::new(),
            free: Vec::new(),
            accumulators: calls.iter().map(Accumulator::new).collect::<Result<_>>()?,
            global: group_exprs.is_empty(),
            started: false,
            schema,
        };
        if aggregate.global {
            aggregate.group_for(&[])?;
        }
        Ok(aggregate)
    }

    fn group_for(&mut self, key: &[u8]) -> Result<usize> {
        if let Some(&group) = self.groups.get(key) {
            return Ok(group);
        }
        let group = match self.free.pop() {
            Some(group) => {
                self.keys[group] = key.into();
                self.row_counts[group] = 0;
                group
            }
            None => {
                self.keys.push(key.into());
                self.row_counts.push(0);
                self.keys.len() - 1
            }
        };
        for accumulator in &mut self.accumulators {
            accumulator.reset(group);
        }
        self.groups.insert(key.into(), group);
        Ok(group)
    }

    /// The group's output values after the key columns, or None if the group has no rows.
    fn output(&self, group: usize) -> Result<Option<Vec<ScalarValue>>> {
        let rows = self.row_counts[group];
        if rows == 0 && !self.global {
            return Ok(None);
        }
        self.accumulators.iter().map(|a| a.value(group, rows)).collect::<Result<Vec<_>>>().map(Some)
    }

    fn emit(&self, rows: Vec<(Box<[u8]>, Vec<ScalarValue>, i64)>) -> Result<ChangeBatch> {
        if rows.is_empty() {
            return Ok(ChangeBatch::empty(self.schema.clone()));
        }
        let mut columns: Vec<ArrayRef> = if self.key_codec.width() == 0 {
            Vec::new()
        } else {
            self.key_codec.decode(rows.iter().map(|(k, _, _)| k.as_ref()))?
        };
        for i in 0..self.accumulators.len() {
            columns.push(ScalarValue::iter_to_array(rows.iter().map(|(_, v, _)| v[i].clone()))?);
        }
        let data = RecordBatch::try_new_with_options(
            self.schema.clone(),
            columns,
            &RecordBatchOptions::new().with_row_count(Some(rows.len())),
        )?;
        ChangeBatch::new(data, rows.into_iter().map(|(_, _, w)| w).collect())
    }
}

impl Operator for Aggregate {
    fn step(&mut self, changes: &EpochChanges) -> Result<ChangeBatch> {
        let change = self.input.step(changes)?;
        // Group id -> its output before this epoch (None: the group did not exist).
        let mut touched: Vec<(usize, Option<Vec<ScalarValue>>)> = Vec::new();
        let mut seen: FxHashMap<usize, ()> = FxHashMap::default();
        if !self.started && self.global {
            touched.push((0, None));
            seen.insert(0, ());
        }
        self.started = true;
        if !change.is_empty() {
            let key_columns = self.group_exprs.iter().map(|e| evaluate(e, &change.data)).collect::<Result<Vec<_>>>()?;
            let keys = encode_owned(&self.key_codec, &key_columns, change.len())?;
            let mut prepared = Vec::with_capacity(self.accumulators.len());
            for (accumulator, arg) in self.accumulators.iter().zip(&self.arg_exprs) {
                let arg = arg.as_ref().map(|a| evaluate(a, &change.data)).transpose()?;
                prepared.push(accumulator.prepare(arg.as_ref())?);
            }
            for (row, key) in keys.iter().enumerate() {
                let weight = change.weights[row];
                let group = self.group_for(key)?;
                if seen.insert(group, ()).is_none() {
                    touched.push((group, self.output(group)?));
                }
                self.row_counts[group] += weight;
                for (accumulator, prepared) in self.accumulators.iter_mut().zip(&prepared) {
                    accumulator.update(group, prepared, row, weight)?;
                }
            }
        }
        let mut out = Vec::new();
        for (group, before) in touched {
            if self.row_counts[group] < 0 {
                return Err(EngineError::Internal("a group has a negative row count".into()));
            }
            let after = self.output(group)?;
            let vanished = after.is_none();
            if before != after {
                let key = self.keys[group].clone();
                if let Some(before) = before {
                    out.push((key.clone(), before, -1));
                }
                if let Some(after) = after {
                    out.push((key, after, 1));
                }
            }
            if vanished {
                self.groups.remove(&self.keys[group]);
                self.free.push(group);
            }
        }
        self.emit(out)
    }
}
