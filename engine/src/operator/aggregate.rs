//! GROUP BY: per-group row counts and retractable accumulators. For each epoch it emits, per
//! group the epoch touched, a retraction of the group's previous output row and an insertion
//! of the new one (nothing when the row did not change). A group whose row count reaches zero
//! disappears; an aggregate without GROUP BY always has its one row, as in SQL.

use std::sync::Arc;

use changeflow_sql::plan::{AggregateCall, AggregateKind};
use datafusion::arrow::array::{ArrayRef, RecordBatch, RecordBatchOptions, UInt32Array};
use datafusion::arrow::compute::take_record_batch;
use datafusion::arrow::datatypes::{DataType, SchemaRef};
use datafusion::common::DFSchema;
use datafusion::logical_expr::{Expr, ExprSchemable};
use datafusion::physical_expr::PhysicalExpr;
use rustc_hash::{FxHashMap, FxHashSet};

use super::accumulator::Accumulator;
use super::packed_values::{PACKED_BYTES, pack};
use super::state::{BYTES, bytes_column, int64_column, state_batch};
use super::{EpochChanges, Operator, StateReader, evaluate, physical};
use crate::change::ChangeBatch;
use crate::error::{EngineError, Result};
use crate::rows::{RowCodec, encode_rows};

/// Group keys to group numbers. A key of at most 15 bytes (most: a few integers or dates)
/// is packed into a `u128` (see `packed_values::pack`): no allocation and no `memcmp` per
/// lookup; longer keys are kept as byte strings.
#[derive(Default)]
struct GroupIndex {
    packed: FxHashMap<u128, usize>,
    bytes: FxHashMap<Box<[u8]>, usize>,
}

/// A key packed, when it is short enough.
fn packed(key: &[u8]) -> Option<u128> {
    if key.len() > PACKED_BYTES {
        return None;
    }
    pack(key).ok()
}

impl GroupIndex {
    fn get(&self, key: &[u8]) -> Option<usize> {
        match packed(key) {
            Some(packed) => self.packed.get(&packed).copied(),
            None => self.bytes.get(key).copied(),
        }
    }

    fn insert(&mut self, key: &[u8], group: usize) {
        match packed(key) {
            Some(packed) => self.packed.insert(packed, group),
            None => self.bytes.insert(key.into(), group),
        };
    }

    fn remove(&mut self, key: &[u8]) {
        match packed(key) {
            Some(packed) => self.packed.remove(&packed),
            None => self.bytes.remove(key),
        };
    }
}

pub struct Aggregate {
    input: Box<dyn Operator>,
    group_exprs: Vec<Arc<dyn PhysicalExpr>>,
    arg_exprs: Vec<Option<Arc<dyn PhysicalExpr>>>,
    key_codec: RowCodec,
    groups: GroupIndex,
    keys: Vec<Box<[u8]>>,
    row_counts: Vec<i64>,
    free: Vec<usize>,
    accumulators: Vec<Accumulator>,
    /// Each group's current output row, encoded (None: the group emits nothing).
    outputs: Vec<Option<Box<[u8]>>>,
    output_codec: RowCodec,
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
        let mut accumulators = Vec::with_capacity(calls.len());
        let mut arg_exprs = Vec::with_capacity(calls.len());
        for (index, call) in calls.iter().enumerate() {
            // min(x) beside max(x): the second reads the first's values.
            let extremum = |c: &AggregateCall| matches!(c.kind, AggregateKind::Min | AggregateKind::Max);
            let owner = calls[..index].iter().position(|other| {
                extremum(call) && extremum(other) && other.arg == call.arg && other.arg_type == call.arg_type
            });
            match owner {
                Some(of) => {
                    let max = call.kind == AggregateKind::Max;
                    accumulators.push(Accumulator::Mirror { of, max, output: call.output_type.clone() });
                    arg_exprs.push(None);
                }
                None => {
                    accumulators.push(Accumulator::new(call)?);
                    arg_exprs.push(call.arg.as_ref().map(|a| physical(a, input_schema)).transpose()?);
                }
            }
        }
        let mut aggregate = Self {
            input,
            group_exprs: group_exprs.iter().map(|e| physical(e, input_schema)).collect::<Result<_>>()?,
            arg_exprs,
            key_codec: RowCodec::new(&key_types)?,
            groups: GroupIndex::default(),
            keys: Vec::new(),
            row_counts: Vec::new(),
            free: Vec::new(),
            accumulators,
            outputs: Vec::new(),
            output_codec: RowCodec::for_schema(&schema)?,
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
        if let Some(group) = self.groups.get(key) {
            return Ok(group);
        }
        let group = match self.free.pop() {
            Some(group) => {
                self.keys[group] = key.into();
                self.row_counts[group] = 0;
                self.outputs[group] = None;
                group
            }
            None => {
                self.keys.push(key.into());
                self.row_counts.push(0);
                self.outputs.push(None);
                self.keys.len() - 1
            }
        };
        for accumulator in &mut self.accumulators {
            accumulator.reset(group);
        }
        self.groups.insert(key, group);
        Ok(group)
    }

    /// The output rows of `groups` from their current state (all of them, including groups
    /// that are now empty; the caller drops those).
    fn output_batch(&self, groups: &[usize]) -> Result<RecordBatch> {
        let mut columns: Vec<ArrayRef> = if self.key_codec.width() == 0 {
            Vec::new()
        } else {
            self.key_codec.decode(groups.iter().map(|&g| self.keys[g].as_ref()))?
        };
        let rows: Vec<i64> = groups.iter().map(|&g| self.row_counts[g]).collect();
        for accumulator in &self.accumulators {
            columns.push(match accumulator {
                Accumulator::Mirror { of, max, output } => self.accumulators[*of].extremes(groups, *max, output)?,
                other => other.values(groups, &rows)?,
            });
        }
        Ok(RecordBatch::try_new_with_options(
            self.schema.clone(),
            columns,
            &RecordBatchOptions::new().with_row_count(Some(groups.len())),
        )?)
    }
}

impl Operator for Aggregate {
    fn step(&mut self, changes: &EpochChanges) -> Result<ChangeBatch> {
        let change = self.input.step(changes)?;
        // Groups this epoch touched, in first-touch order.
        let mut touched: Vec<usize> = Vec::new();
        let mut seen: FxHashSet<usize> = FxHashSet::with_capacity_and_hasher(change.len(), Default::default());
        if !self.started && self.global {
            touched.push(0);
            seen.insert(0);
        }
        self.started = true;
        if !change.is_empty() {
            let key_columns = self.group_exprs.iter().map(|e| evaluate(e, &change.data)).collect::<Result<Vec<_>>>()?;
            let keys = encode_rows(&self.key_codec, &key_columns)?;
            let mut prepared = Vec::with_capacity(self.accumulators.len());
            for (accumulator, arg) in self.accumulators.iter().zip(&self.arg_exprs) {
                let arg = arg.as_ref().map(|a| evaluate(a, &change.data)).transpose()?;
                prepared.push(accumulator.prepare(arg.as_ref())?);
            }
            let mut row_groups = Vec::with_capacity(change.len());
            for row in 0..change.len() {
                let group = self.group_for(keys.get(row))?;
                if seen.insert(group) {
                    touched.push(group);
                }
                self.row_counts[group] += change.weights[row];
                row_groups.push(group);
            }
            for (accumulator, prepared) in self.accumulators.iter_mut().zip(&prepared) {
                accumulator.update_batch(&row_groups, prepared, &change.weights)?;
            }
        }
        if touched.is_empty() {
            return Ok(ChangeBatch::empty(self.schema.clone()));
        }
        let groups = touched;
        let current = self.output_batch(&groups)?;
        let encoded = self.output_codec.encode(current.columns())?;
        let mut retracted: Vec<Box<[u8]>> = Vec::new();
        let mut inserted: Vec<u32> = Vec::new();
        for (i, &group) in groups.iter().enumerate() {
            if self.row_counts[group] < 0 {
                return Err(EngineError::Internal("a group has a negative row count".into()));
            }
            let exists = self.global || self.row_counts[group] > 0;
            let after = exists.then(|| encoded.row(i).data());
            if self.outputs[group].as_deref() == after {
                if !exists {
                    self.vanish(group);
                }
                continue;
            }
            if let Some(before) = self.outputs[group].take() {
                retracted.push(before);
            }
            match after {
                Some(row) => {
                    self.outputs[group] = Some(row.into());
                    inserted.push(i as u32);
                }
                None => self.vanish(group),
            }
        }
        let mut parts = Vec::with_capacity(2);
        if !retracted.is_empty() {
            let columns = self.output_codec.decode(retracted.iter().map(|r| r.as_ref()))?;
            let data = RecordBatch::try_new_with_options(
                self.schema.clone(),
                columns,
                &RecordBatchOptions::new().with_row_count(Some(retracted.len())),
            )?;
            parts.push(ChangeBatch::retractions(data));
        }
        if !inserted.is_empty() {
            let data = take_record_batch(&current, &UInt32Array::from(inserted))?;
            parts.push(ChangeBatch::inserts(data));
        }
        ChangeBatch::concat(&self.schema, &parts)
    }

    /// The live groups (key, row count, current output row), then each accumulator's state.
    fn save_state(&self, out: &mut Vec<RecordBatch>) -> Result<()> {
        let mut live = vec![true; self.keys.len()];
        for &group in &self.free {
            live[group] = false;
        }
        let groups: Vec<usize> = (0..self.keys.len()).filter(|&g| live[g]).collect();
        out.push(state_batch(vec![
            ("key", bytes_column(groups.iter().map(|&g| Some(self.keys[g].as_ref())))),
            ("rows", int64_column(groups.iter().map(|&g| self.row_counts[g]))),
            ("output", bytes_column(groups.iter().map(|&g| self.outputs[g].as_deref()))),
        ])?);
        for accumulator in &self.accumulators {
            out.extend(accumulator.save(&groups)?);
        }
        self.input.save_state(out)
    }

    fn load_state(&mut self, state: &mut StateReader) -> Result<()> {
        let batch = state.next("an aggregate's groups", &[BYTES, DataType::Int64, BYTES])?;
        let count = batch.len();
        let (keys, rows) = (batch.binary(0), batch.int64(1));
        self.groups = GroupIndex::default();
        self.keys = (0..count).map(|g| Box::<[u8]>::from(keys.value(g))).collect();
        for (group, key) in self.keys.iter().enumerate() {
            self.groups.insert(key, group);
        }
        self.row_counts = rows.values().to_vec();
        self.outputs = (0..count).map(|g| batch.optional_bytes(2, g).map(Box::<[u8]>::from)).collect();
        self.free.clear();
        for accumulator in &mut self.accumulators {
            accumulator.load(count, state)?;
        }
        if self.global && count != 1 {
            return Err(EngineError::Durability(format!(
                "checkpointed operator state does not fit the view: an aggregate without GROUP BY has {count} groups"
            )));
        }
        self.started = true;
        self.input.load_state(state)
    }
}

impl Aggregate {
    fn vanish(&mut self, group: usize) {
        self.groups.remove(&self.keys[group]);
        self.outputs[group] = None;
        self.free.push(group);
    }
}
