//! GROUP BY: per-group row counts and retractable accumulators. For each epoch it emits, per
//! group the epoch touched, a retraction of the group's previous output row and an insertion
//! of the new one side by side (nothing when the row did not change). The previous row is
//! computed from the state before the epoch's changes, not stored: both rows' results come out
//! of the accumulators as plain per-group values (`group_results.rs`), are compared value by
//! value, and only the rows emitted are built into columns. A group whose row count
//! reaches zero disappears; an aggregate without GROUP BY always has its one row, as in SQL.

use std::sync::Arc;

use changeflow_sql::plan::{AggregateCall, AggregateKind};
use datafusion::arrow::array::{ArrayRef, RecordBatch, RecordBatchOptions, UInt32Array};
use datafusion::arrow::compute::take;
use datafusion::arrow::datatypes::{DataType, SchemaRef};
use datafusion::common::DFSchema;
use datafusion::logical_expr::{Expr, ExprSchemable};
use datafusion::physical_expr::PhysicalExpr;

use super::accumulator::Accumulator;
use super::group_index::{GroupIndex, GroupKeys, KeyBytes, Probe};
use super::group_results::GroupResults;
use super::packed_values::{decode_packed_rows, pack_integer_rows};
use super::state::{BYTES, bytes_column, int64_column, state_batch};
use super::{EpochChanges, Operator, StateReader, evaluate, physical};
use crate::change::ChangeBatch;
use crate::error::{EngineError, Result};
use crate::heap_bytes::HeapBytes;
use crate::rows::{Encoded, RowCodec, encode_rows};

pub struct Aggregate {
    input: Box<dyn Operator>,
    group_exprs: Vec<Arc<dyn PhysicalExpr>>,
    arg_exprs: Vec<Option<Arc<dyn PhysicalExpr>>>,
    key_codec: RowCodec,
    groups: GroupIndex,
    keys: GroupKeys,
    row_counts: Vec<i64>,
    free: Vec<usize>,
    /// The current epoch's touched groups (none between epochs).
    touched: GroupSet,
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
            keys: GroupKeys::default(),
            row_counts: Vec::new(),
            free: Vec::new(),
            touched: GroupSet::default(),
            accumulators,
            global: group_exprs.is_empty(),
            started: false,
            schema,
        };
        if aggregate.global {
            aggregate.group_for(Probe::of(&[]), &[]);
        }
        Ok(aggregate)
    }

    /// The group of a key, made (empty) when the key has none (`key`: its encoding, read
    /// only when it is too long to pack).
    fn group_for(&mut self, probe: Probe, key: &[u8]) -> usize {
        if let Some(group) = self.groups.get(probe, key) {
            return group;
        }
        let group = match self.free.pop() {
            Some(group) => {
                self.row_counts[group] = 0;
                group
            }
            None => {
                self.row_counts.push(0);
                self.touched.make_room(self.row_counts.len());
                self.keys.len()
            }
        };
        self.keys.set(group, probe, key);
        for accumulator in &mut self.accumulators {
            accumulator.reset(group);
        }
        self.groups.insert(probe, key, group);
        group
    }

    /// The aggregates' results for `groups` from their current state (results of groups
    /// that are empty come out too; the caller leaves them out).
    fn group_results(&self, groups: &[usize]) -> Result<Vec<GroupResults>> {
        let rows: Vec<i64> = groups.iter().map(|&g| self.row_counts[g]).collect();
        self.accumulators
            .iter()
            .map(|accumulator| match accumulator {
                Accumulator::Mirror { of, max, output } => self.accumulators[*of].extreme_results(groups, *max, output),
                other => other.results(groups, &rows),
            })
            .collect()
    }

    /// The group key columns of `groups` (vanished groups keep their keys until their
    /// number is reused): packed keys of integer columns are read off their packed form.
    fn key_columns(&self, groups: &[usize]) -> Result<Vec<ArrayRef>> {
        if self.key_codec.width() == 0 {
            return Ok(Vec::new());
        }
        if let Some(columns) = self.key_codec.integer_columns()
            && let Some(packed) = self.keys.packed(groups)
            && let Some(decoded) = decode_packed_rows(&packed, columns)
        {
            return decoded;
        }
        let keys: Vec<KeyBytes> = groups.iter().map(|&g| self.keys.get(g)).collect();
        self.key_codec.decode(keys.iter().map(KeyBytes::as_slice))
    }

    /// Whether a group's row is in the output (an aggregate without GROUP BY always has its
    /// one row once started).
    fn exists(&self, group: usize) -> bool {
        if self.global { self.started } else { self.row_counts[group] > 0 }
    }
}

impl Operator for Aggregate {
    fn step(&mut self, changes: &EpochChanges) -> Result<ChangeBatch> {
        let change = self.input.step(changes)?;
        // Groups this epoch touched.
        let mut touched: Vec<usize> = Vec::with_capacity(change.len() + 1);
        let first_step = !self.started;
        if first_step && self.global {
            touched.push(0);
            self.touched.insert(0);
        }
        let mut row_groups = Vec::with_capacity(change.len());
        let mut prepared = Vec::with_capacity(self.accumulators.len());
        if !change.is_empty() {
            let key_columns = self.group_exprs.iter().map(|e| evaluate(e, &change.data)).collect::<Result<Vec<_>>>()?;
            // Keys of integer columns that pack (most) are packed straight from the columns:
            // a packed probe needs no encoded key.
            let packed = self.key_codec.integer_columns().and_then(|layouts| pack_integer_rows(&key_columns, layouts));
            let (keys, probes): (Option<Encoded>, Vec<Probe>) = match packed {
                Some(packed) => (None, packed.into_iter().map(Probe::packed).collect()),
                None => {
                    let keys = encode_rows(&self.key_codec, &key_columns)?;
                    let probes = (0..change.len()).map(|row| Probe::of(keys.get(row))).collect();
                    (Some(keys), probes)
                }
            };
            for (accumulator, arg) in self.accumulators.iter().zip(&self.arg_exprs) {
                let arg = arg.as_ref().map(|a| evaluate(a, &change.data)).transpose()?;
                prepared.push(accumulator.prepare(arg.as_ref())?);
            }
            for (row, &probe) in probes.iter().enumerate() {
                self.groups.load_ahead(&probes, row);
                let group = self.group_for(probe, keys.as_ref().map_or(&[], |keys| keys.get(row)));
                if self.touched.insert(group) {
                    touched.push(group);
                }
                row_groups.push(group);
            }
        }
        // In ascending order: the passes below read each touched group's state in every
        // accumulator's per-group arrays, and in address order those reads stream instead of
        // missing the cache one group at a time. Read off the set when the epoch touched
        // many groups, sorted otherwise.
        if touched.len() * 4 >= self.touched.words.len() {
            touched.clear();
            self.touched.drain_into(&mut touched);
        } else {
            touched.sort_unstable();
            self.touched.remove_all(&touched);
        }
        if touched.is_empty() {
            self.started = true;
            return Ok(ChangeBatch::empty(self.schema.clone()));
        }
        // The touched groups' rows before and after the epoch's changes.
        let existed: Vec<bool> = touched.iter().map(|&g| self.exists(g)).collect();
        let before = self.group_results(&touched)?;
        self.started = true;
        for (row, &group) in row_groups.iter().enumerate() {
            self.row_counts[group] += change.weights[row];
        }
        for (accumulator, prepared) in self.accumulators.iter_mut().zip(&prepared) {
            accumulator.update_batch(&row_groups, prepared, &change.weights)?;
        }
        if touched.iter().any(|&g| self.row_counts[g] < 0) {
            return Err(EngineError::Internal("a group has a negative row count".into()));
        }
        let exists: Vec<bool> = touched.iter().map(|&g| self.exists(g)).collect();
        let after = self.group_results(&touched)?;
        let mut same = vec![true; touched.len()];
        for (before, after) in before.iter().zip(&after) {
            before.mark_changed(after, &mut same)?;
        }
        // Per group, the retraction of its row before and then the insertion of its row
        // after, side by side (a downstream store pairs them in one pass, as an update): as
        // (0: before, 1: after; touched group).
        let mut picked: Vec<(usize, usize)> = Vec::with_capacity(2 * touched.len());
        let mut weights: Vec<i64> = Vec::with_capacity(2 * touched.len());
        for (i, &group) in touched.iter().enumerate() {
            let unchanged = existed[i] && exists[i] && same[i];
            if existed[i] && !unchanged {
                picked.push((0, i));
                weights.push(-1);
            }
            if exists[i] && !unchanged {
                picked.push((1, i));
                weights.push(1);
            }
            if !exists[i] {
                self.vanish(group);
            }
        }
        if picked.is_empty() {
            return Ok(ChangeBatch::empty(self.schema.clone()));
        }
        let keys = self.key_columns(&touched)?;
        let key_rows = UInt32Array::from_iter_values(picked.iter().map(|&(_, i)| i as u32));
        let mut columns = Vec::with_capacity(keys.len() + before.len());
        for key in &keys {
            columns.push(take(key.as_ref(), &key_rows, None)?);
        }
        for (before, after) in before.iter().zip(&after) {
            columns.push(GroupResults::column(before, after, &picked)?);
        }
        let data = RecordBatch::try_new_with_options(
            self.schema.clone(),
            columns,
            &RecordBatchOptions::new().with_row_count(Some(picked.len())),
        )?;
        // Rows of distinct groups differ in their keys, and a group's two rows are both
        // emitted only when they differ: the change is consolidated as built.
        Ok(ChangeBatch::new(data, weights)?.consolidated_if(true))
    }

    /// The live groups (key, row count), then each accumulator's state.
    fn save_state(&self, out: &mut Vec<RecordBatch>) -> Result<()> {
        let mut live = vec![true; self.keys.len()];
        for &group in &self.free {
            live[group] = false;
        }
        let groups: Vec<usize> = (0..self.keys.len()).filter(|&g| live[g]).collect();
        let keys: Vec<KeyBytes> = groups.iter().map(|&g| self.keys.get(g)).collect();
        out.push(state_batch(vec![
            ("key", bytes_column(keys.iter().map(|key| Some(key.as_slice())))),
            ("rows", int64_column(groups.iter().map(|&g| self.row_counts[g]))),
        ])?);
        for accumulator in &self.accumulators {
            out.extend(accumulator.save(&groups)?);
        }
        self.input.save_state(out)
    }

    fn state_bytes(&self) -> usize {
        self.groups.heap_bytes()
            + self.keys.heap_bytes()
            + self.row_counts.heap_bytes()
            + self.free.heap_bytes()
            + self.touched.heap_bytes()
            + self.accumulators.iter().map(Accumulator::heap_bytes).sum::<usize>()
            + self.input.state_bytes()
    }

    fn load_state(&mut self, state: &mut StateReader) -> Result<()> {
        let batch = state.next("an aggregate's groups", &[BYTES, DataType::Int64])?;
        let count = batch.len();
        let (keys, rows) = (batch.binary(0), batch.int64(1));
        self.groups = GroupIndex::default();
        self.keys = GroupKeys::default();
        for group in 0..count {
            let key = keys.value(group);
            let probe = Probe::of(key);
            self.keys.set(group, probe, key);
            self.groups.insert(probe, key, group);
        }
        self.row_counts = rows.values().to_vec();
        self.touched = GroupSet::default();
        self.touched.make_room(count);
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
        // A packed key is removed as it is kept, without unpacking and packing it again.
        match self.keys.packed_key(group) {
            Some(key) => self.groups.remove_packed(key),
            None => self.groups.remove(self.keys.get(group).as_slice()),
        }
        self.free.push(group);
    }
}

/// A set of group numbers as one bit per group: an epoch's touched groups come out of it in
/// ascending order in one pass over its words.
#[derive(Default)]
struct GroupSet {
    words: Vec<u64>,
}

impl GroupSet {
    /// Makes room for groups numbered below `groups`.
    fn make_room(&mut self, groups: usize) {
        let words = groups.div_ceil(64);
        if self.words.len() < words {
            self.words.resize(words, 0);
        }
    }

    /// Adds a group; whether it was not in the set.
    fn insert(&mut self, group: usize) -> bool {
        let (word, bit) = (&mut self.words[group / 64], 1u64 << (group % 64));
        let added = *word & bit == 0;
        *word |= bit;
        added
    }

    /// Moves every group into `out`, in ascending order, leaving the set empty.
    fn drain_into(&mut self, out: &mut Vec<usize>) {
        for (index, word) in self.words.iter_mut().enumerate() {
            let mut bits = std::mem::take(word);
            while bits != 0 {
                out.push(index * 64 + bits.trailing_zeros() as usize);
                bits &= bits - 1;
            }
        }
    }

    /// Removes `groups`, all of which are in the set.
    fn remove_all(&mut self, groups: &[usize]) {
        for &group in groups {
            self.words[group / 64] &= !(1u64 << (group % 64));
        }
    }

    fn heap_bytes(&self) -> usize {
        self.words.heap_bytes()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::GroupSet;

    #[test]
    fn a_group_set_gives_its_groups_back_in_ascending_order_and_empties() {
        let mut next = crate::test_random::xorshift(0x51f1_5eed_0bad_cafe);
        let mut set = GroupSet::default();
        set.make_room(1_000);
        for round in 0..50 {
            let mut model = BTreeSet::new();
            for _ in 0..(next() % 400) {
                let group = (next() % 1_000) as usize;
                assert_eq!(set.insert(group), model.insert(group), "round {round}: group {group}");
            }
            let mut out = Vec::new();
            if round % 2 == 0 {
                set.drain_into(&mut out);
                assert!(out.iter().eq(model.iter()), "round {round}");
            } else {
                out.extend(model.iter().copied());
                set.remove_all(&out);
            }
            let mut left = Vec::new();
            set.drain_into(&mut left);
            assert!(left.is_empty(), "round {round}: {left:?} left in the set");
        }
    }
}
