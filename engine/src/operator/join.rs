//! Joins over arrangements (`arrangement.rs`): each side's rows indexed by join key, each
//! distinct row with its multiplicity and the number of rows of the other side it matches (key
//! equal and residual filter true). One epoch computes ΔL⋈R (against the old right side), applies ΔL, then
//! L'⋈ΔR, then applies ΔR: the classic delta rule, costing work proportional to the change
//! and the matching rows. Match counts give outer-join padding, semi and anti joins: a row's
//! padded output changes only when its multiplicity or its match count moves to or from zero.
//! NULL join keys never match (unless the join says NULLs are equal).

use std::sync::Arc;

use changeflow_sql::plan::JoinKind;
use datafusion::arrow::array::{ArrayRef, AsArray, RecordBatch, RecordBatchOptions, UInt32Array, new_null_array};
use datafusion::arrow::compute::{cast, take};
use datafusion::arrow::datatypes::{DataType, SchemaRef};
use datafusion::common::DFSchema;
use datafusion::logical_expr::{Expr, ExprSchemable};
use datafusion::physical_expr::PhysicalExpr;
use hashbrown::HashTable;
use rustc_hash::FxHashMap;

use super::arrangement::{Arrangement, Counts, RowChange};
use super::group_index::Probe;
use super::state::{BYTES, StateReader, bytes_column, int64_column, state_batch};
use super::{EpochChanges, Operator, evaluate, physical};
use crate::change::ChangeBatch;
use crate::error::{EngineError, Result};
use crate::rows::{Encoded, RowCodec, encode_rows};

/// Distinct rows a delta's consolidation table is first sized for (it grows beyond).
const CONSOLIDATION_CAPACITY: usize = 4096;

struct Side {
    input: Box<dyn Operator>,
    key_exprs: Vec<Arc<dyn PhysicalExpr>>,
    key_types: Vec<DataType>,
    row_codec: RowCodec,
    schema: SchemaRef,
    rows: Arrangement,
}

/// One consolidated change of a side: its columns, its keys and rows encoded, and each
/// distinct row with a nonzero weight as (row index, whether its key is probed (not NULL),
/// weight).
struct Delta {
    columns: Vec<ArrayRef>,
    keys: Encoded,
    rows: Encoded,
    /// Each row's hash (as the arrangement hashes rows), by row of the change.
    hashes: Vec<u64>,
    changes: Vec<(u32, bool, i64)>,
}

impl Delta {
    fn empty() -> Self {
        Self {
            columns: Vec::new(),
            keys: Encoded::Empty,
            rows: Encoded::Empty,
            hashes: Vec::new(),
            changes: Vec::new(),
        }
    }

    fn len(&self) -> usize {
        self.changes.len()
    }

    fn is_empty(&self) -> bool {
        self.changes.is_empty()
    }

    /// The join key of a changed row, `None` when it is never probed.
    fn key(&self, index: usize) -> Option<&[u8]> {
        let (row, probed, _) = self.changes[index];
        probed.then(|| self.keys.get(row as usize))
    }

    fn row(&self, index: usize) -> &[u8] {
        self.rows.get(self.changes[index].0 as usize)
    }

    /// The columns of the changed rows `indices` (one may come several times) of `side`'s
    /// change, taken from the change rather than decoded from the rows (decoded when a column
    /// is not of the side's type).
    fn columns_of(&self, indices: &[usize], side: &Side) -> Result<Vec<ArrayRef>> {
        let types = side.schema.fields().iter().map(|field| field.data_type());
        if self.columns.len() != side.schema.fields().len()
            || self.columns.iter().zip(types).any(|(column, data_type)| column.data_type() != data_type)
        {
            return side.row_codec.decode(indices.iter().map(|&i| self.row(i)));
        }
        let rows = UInt32Array::from_iter_values(indices.iter().map(|&i| self.changes[i].0));
        Ok(self.columns.iter().map(|column| take(column.as_ref(), &rows, None)).collect::<Result<_, _>>()?)
    }

    fn weight(&self, index: usize) -> i64 {
        self.changes[index].2
    }

    fn hash(&self, index: usize) -> u64 {
        self.hashes[self.changes[index].0 as usize]
    }
}

impl Side {
    fn new(input: Box<dyn Operator>, schema: &DFSchema, keys: Vec<&Expr>, key_types: &[DataType]) -> Result<Self> {
        let arrow_schema: SchemaRef = Arc::new(schema.as_arrow().clone());
        Ok(Self {
            input,
            key_exprs: keys.iter().map(|k| physical(k, schema)).collect::<Result<_>>()?,
            key_types: key_types.to_vec(),
            row_codec: RowCodec::for_schema(&arrow_schema)?,
            schema: arrow_schema,
            rows: Arrangement::default(),
        })
    }

    fn delta(&self, change: &ChangeBatch, key_codec: &RowCodec, nulls_equal: bool) -> Result<Delta> {
        if change.is_empty() {
            return Ok(Delta::empty());
        }
        let mut key_columns = Vec::with_capacity(self.key_exprs.len());
        for (expr, key_type) in self.key_exprs.iter().zip(&self.key_types) {
            let column = evaluate(expr, &change.data)?;
            key_columns.push(if column.data_type() != key_type { cast(&column, key_type)? } else { column });
        }
        let keys = encode_rows(key_codec, &key_columns)?;
        let rows = encode_rows(&self.row_codec, change.data.columns())?;
        let hashes: Vec<u64> = (0..change.len()).map(|i| Arrangement::hash(rows.get(i))).collect();
        let mut changes: Vec<(u32, bool, i64)> = Vec::with_capacity(change.len());
        let probed = |i: usize| nulls_equal || !key_columns.iter().any(|c| c.is_null(i));
        if change.is_consolidated() {
            changes.extend(change.weights.iter().enumerate().map(|(i, &w)| (i as u32, probed(i), w)));
        } else {
            // Equal rows added up (a projection may make rows equal): positions in `changes`
            // by the rows' hashes, which the arrangement reuses. The table grows with the
            // distinct rows (often far fewer than the rows), and a row is compared with a
            // copy of the distinct row beside the others, not with that row's first place in
            // a batch of millions: both stay in the cache.
            let mut positions: HashTable<u32> = HashTable::with_capacity(change.len().min(CONSOLIDATION_CAPACITY));
            // Sized as if every row were distinct and as long as the first (grown past that).
            let mut distinct: Vec<u8> = Vec::with_capacity(rows.get(0).len() * change.len());
            let mut distinct_starts: Vec<usize> = Vec::with_capacity(change.len() + 1);
            distinct_starts.push(0);
            for (i, &weight) in change.weights.iter().enumerate() {
                let row = rows.get(i);
                let same_row =
                    |&at: &u32| &distinct[distinct_starts[at as usize]..distinct_starts[at as usize + 1]] == row;
                if let Some(&at) = positions.find(hashes[i], same_row) {
                    changes[at as usize].2 += weight;
                    continue;
                }
                let at = changes.len() as u32;
                positions.insert_unique(hashes[i], at, |&at| hashes[changes[at as usize].0 as usize]);
                changes.push((i as u32, probed(i), weight));
                distinct.extend_from_slice(row);
                distinct_starts.push(distinct.len());
            }
            changes.retain(|(_, _, w)| *w != 0);
        }
        Ok(Delta { columns: change.data.columns().to_vec(), keys, rows, hashes, changes })
    }

    /// The arrangement: (key, NULL for rows never probed; row; multiplicity; matches).
    fn save(&self, out: &mut Vec<RecordBatch>) -> Result<()> {
        let entries: Vec<_> = self.rows.rows().collect();
        out.push(state_batch(vec![
            ("key", bytes_column(entries.iter().map(|e| e.0))),
            ("row", bytes_column(entries.iter().map(|e| Some(e.1)))),
            ("multiplicity", int64_column(entries.iter().map(|e| e.2.multiplicity))),
            ("matches", int64_column(entries.iter().map(|e| e.2.matches))),
        ])?);
        Ok(())
    }

    fn load(&mut self, state: &mut StateReader) -> Result<()> {
        let batch = state.next("a join side's rows", &[BYTES, BYTES, DataType::Int64, DataType::Int64])?;
        let rows = batch.binary(1);
        let changes: Vec<RowChange> = (0..batch.len())
            .map(|i| RowChange {
                hash: Arrangement::hash(rows.value(i)),
                key: batch.optional_bytes(0, i),
                row: rows.value(i),
                weight: batch.int64(2).value(i),
                matches: batch.int64(3).value(i),
            })
            .collect();
        self.rows = Arrangement::default();
        self.rows.apply(&changes)
    }
}

pub struct Join {
    left: Side,
    right: Side,
    key_codec: RowCodec,
    filter: Option<Arc<dyn PhysicalExpr>>,
    /// Left columns then right columns: what the residual filter and pair output read.
    pair_schema: SchemaRef,
    join_type: JoinKind,
    nulls_equal: bool,
    schema: SchemaRef,
}

impl Join {
    pub fn new(
        left: (Box<dyn Operator>, &DFSchema),
        right: (Box<dyn Operator>, &DFSchema),
        on: &[(Expr, Expr)],
        filter: Option<&Expr>,
        join_type: JoinKind,
        nulls_equal: bool,
        schema: SchemaRef,
    ) -> Result<Self> {
        let key_types = on.iter().map(|(l, _)| l.get_type(left.1)).collect::<Result<Vec<_>, _>>()?;
        let pair_df_schema = left.1.join(right.1)?;
        let filter = filter.map(|f| physical(f, &pair_df_schema)).transpose()?;
        Ok(Self {
            left: Side::new(left.0, left.1, on.iter().map(|(l, _)| l).collect(), &key_types)?,
            right: Side::new(right.0, right.1, on.iter().map(|(_, r)| r).collect(), &key_types)?,
            key_codec: RowCodec::new(&key_types)?,
            filter,
            pair_schema: Arc::new(pair_df_schema.as_arrow().clone()),
            join_type,
            nulls_equal,
            schema,
        })
    }

    /// Joins a side's delta with the other side's stored rows: emits the passing pairs and
    /// returns them as hits (with the stored row's offset when `stored_rows_wanted`).
    fn join_delta(
        &self,
        delta: &Delta,
        delta_is_left: bool,
        stored_rows_wanted: bool,
        out: &mut Vec<ChangeBatch>,
    ) -> Result<Vec<Hit>> {
        let stored = if delta_is_left { &self.right } else { &self.left };
        // (delta row, stored row's offset, stored row, its multiplicity)
        // Sized for one match per row (a join on the other side's key, the common case): grown
        // one probe at a time, the vector was reallocated over and over.
        let mut candidates: Vec<(usize, usize, &[u8], i64)> = Vec::with_capacity(delta.len());
        // Rows never probed (a NULL key) get a placeholder that prefetches nothing.
        let probes: Vec<Probe> = (0..delta.len()).map(|i| delta.key(i).map_or(Probe::Bytes, Probe::of)).collect();
        for (index, &probe) in probes.iter().enumerate() {
            stored.rows.load_ahead(&probes, index);
            if let Some(key) = delta.key(index) {
                let matches = stored.rows.probe_prepared(probe, key);
                candidates.extend(matches.map(|(at, row, counts)| (index, at, row, counts.multiplicity)));
            }
        }
        if candidates.is_empty() {
            return Ok(Vec::new());
        }
        let delta_rows: Vec<usize> = candidates.iter().map(|(i, _, _, _)| *i).collect();
        let stored_rows = candidates.iter().map(|(_, _, row, _)| *row);
        let (left_columns, right_columns) = if delta_is_left {
            (delta.columns_of(&delta_rows, &self.left)?, self.right.row_codec.decode(stored_rows)?)
        } else {
            (self.left.row_codec.decode(stored_rows)?, delta.columns_of(&delta_rows, &self.right)?)
        };
        let batch = RecordBatch::try_new_with_options(
            self.pair_schema.clone(),
            left_columns.into_iter().chain(right_columns).collect(),
            &RecordBatchOptions::new().with_row_count(Some(candidates.len())),
        )?;
        let passes: Vec<bool> = match &self.filter {
            None => vec![true; candidates.len()],
            Some(filter) => {
                let mask = evaluate(filter, &batch)?;
                let mask = mask
                    .as_boolean_opt()
                    .ok_or_else(|| EngineError::Internal(format!("join filter returned {}", mask.data_type())))?;
                mask.iter().map(|v| v == Some(true)).collect()
            }
        };
        if self.join_type.emits_pairs() && passes.iter().any(|p| *p) {
            let weights = candidates.iter().map(|(i, _, _, m)| delta.weight(*i) * m).collect();
            let mask = datafusion::arrow::array::BooleanArray::from(passes.clone());
            let change = super::map::filter_changes(ChangeBatch::new(batch, weights)?, &mask)?;
            out.push(change.with_schema(self.schema.clone())?);
        }
        Ok(candidates
            .into_iter()
            .zip(passes)
            .filter(|(_, pass)| *pass)
            .map(|((index, at, _, multiplicity), _)| Hit {
                index,
                stored_at: stored_rows_wanted.then_some(at),
                multiplicity,
            })
            .collect())
    }
}

/// A pair a side's delta row formed with a stored row of the other side that passed the
/// residual filter.
struct Hit {
    /// The delta row's index.
    index: usize,
    /// Where the stored row's entry is, when the caller keeps the other side's match counts.
    stored_at: Option<usize>,
    /// The stored row's multiplicity.
    multiplicity: i64,
}

/// Before-epoch counts of rows the epoch touched, in first-touch order: kept only for a
/// side whose unmatched rows the join emits (outer-join padding, semi and anti joins).
#[derive(Default)]
struct Touched {
    tracking: bool,
    order: Vec<Box<[u8]>>,
    before: FxHashMap<Box<[u8]>, Counts>,
}

impl Touched {
    fn tracking(tracking: bool) -> Self {
        Self { tracking, ..Self::default() }
    }

    fn note(&mut self, side: &Side, row: &[u8]) {
        if !self.tracking || self.before.contains_key(row) {
            return;
        }
        self.before.insert(row.into(), side.rows.counts(row));
        self.order.push(row.into());
    }
}

/// Applies one side's delta after it was joined with the other side: the other side's
/// matched rows gain the delta's weight as matches (when that side's match counts are kept:
/// it is tracked), new rows of this side start with the matches found, then the delta is
/// added to this side.
fn absorb(
    this: &mut Side,
    other: &mut Side,
    delta: &Delta,
    hits: Vec<Hit>,
    touched_this: &mut Touched,
    touched_other: &mut Touched,
) -> Result<()> {
    let mut found = vec![0i64; delta.len()];
    for Hit { index, stored_at, multiplicity } in hits {
        found[index] += multiplicity;
        // Without the offset, the other side's match counts are never read (an inner join's).
        let Some(at) = stored_at else { continue };
        if let Some(row) = other.rows.row_at(at) {
            touched_other.note(other, row);
        }
        other.rows.add_matches(at, delta.weight(index))?;
    }
    let mut changes = Vec::with_capacity(delta.len());
    for (index, &matches) in found.iter().enumerate() {
        let row = delta.row(index);
        touched_this.note(this, row);
        changes.push(RowChange {
            hash: delta.hash(index),
            key: delta.key(index),
            row,
            weight: delta.weight(index),
            matches,
        });
    }
    this.rows.apply(&changes)
}

impl Operator for Join {
    fn step(&mut self, changes: &EpochChanges) -> Result<ChangeBatch> {
        let left_change = self.left.input.step(changes)?;
        let right_change = self.right.input.step(changes)?;
        let left_delta = self.left.delta(&left_change, &self.key_codec, self.nulls_equal)?;
        let right_delta = self.right.delta(&right_change, &self.key_codec, self.nulls_equal)?;
        if left_delta.is_empty() && right_delta.is_empty() {
            return Ok(ChangeBatch::empty(self.schema.clone()));
        }
        let mut out: Vec<ChangeBatch> = Vec::new();
        let mut touched_left = Touched::tracking(self.unmatched_of(true).is_some());
        let mut touched_right = Touched::tracking(self.unmatched_of(false).is_some());
        // ΔL ⋈ R (right side as before the epoch), then L += ΔL.
        let hits = self.join_delta(&left_delta, true, touched_right.tracking, &mut out)?;
        absorb(&mut self.left, &mut self.right, &left_delta, hits, &mut touched_left, &mut touched_right)?;
        // L' ⋈ ΔR (left side including ΔL), then R += ΔR.
        let hits = self.join_delta(&right_delta, false, touched_left.tracking, &mut out)?;
        absorb(&mut self.right, &mut self.left, &right_delta, hits, &mut touched_right, &mut touched_left)?;
        self.emit_unmatched(&touched_left, true, &mut out)?;
        self.emit_unmatched(&touched_right, false, &mut out)?;
        ChangeBatch::concat(&self.schema, &out)
    }

    /// Both arrangements, then both inputs' state.
    fn save_state(&self, out: &mut Vec<RecordBatch>) -> Result<()> {
        self.left.save(out)?;
        self.right.save(out)?;
        self.left.input.save_state(out)?;
        self.right.input.save_state(out)
    }

    fn state_bytes(&self) -> usize {
        self.left.rows.heap_bytes()
            + self.right.rows.heap_bytes()
            + self.left.input.state_bytes()
            + self.right.input.state_bytes()
    }

    fn load_state(&mut self, state: &mut StateReader) -> Result<()> {
        self.left.load(state)?;
        self.right.load(state)?;
        self.left.input.load_state(state)?;
        self.right.input.load_state(state)
    }
}

impl Join {
    /// Whether the join emits rows of a side by their match counts, and how: (padded with
    /// NULLs, kept while matched). Outer-join padding and anti joins keep rows without
    /// matches; semi joins rows with.
    fn unmatched_of(&self, is_left: bool) -> Option<(bool, bool)> {
        match (self.join_type, is_left) {
            (kind, true) if kind.pads_left() => Some((true, false)),
            (kind, false) if kind.pads_right() => Some((true, false)),
            (JoinKind::LeftSemi, true) | (JoinKind::RightSemi, false) => Some((false, true)),
            (JoinKind::LeftAnti, true) | (JoinKind::RightAnti, false) => Some((false, false)),
            _ => None,
        }
    }

    /// Padded rows (outer joins), or the rows themselves (semi and anti joins), for rows whose
    /// multiplicity or match count changed.
    fn emit_unmatched(&self, touched: &Touched, is_left: bool, out: &mut Vec<ChangeBatch>) -> Result<()> {
        let Some((pads, semi)) = self.unmatched_of(is_left) else { return Ok(()) };
        let side = if is_left { &self.left } else { &self.right };
        let visible = |counts: Counts| -> i64 {
            let keep = if semi { counts.matches > 0 } else { counts.matches == 0 };
            if keep { counts.multiplicity } else { 0 }
        };
        let mut rows: Vec<&[u8]> = Vec::new();
        let mut weights: Vec<i64> = Vec::new();
        for row in &touched.order {
            let before = touched.before.get(row).copied().unwrap_or_default();
            let change = visible(side.rows.counts(row)) - visible(before);
            if change != 0 {
                rows.push(row);
                weights.push(change);
            }
        }
        if rows.is_empty() {
            return Ok(());
        }
        let own = side.row_codec.decode(rows.iter().copied())?;
        let columns: Vec<ArrayRef> = if pads {
            let other = if is_left { &self.right.schema } else { &self.left.schema };
            let nulls = other.fields().iter().map(|f| new_null_array(f.data_type(), rows.len()));
            if is_left { own.into_iter().chain(nulls).collect() } else { nulls.chain(own).collect() }
        } else {
            own
        };
        let data = RecordBatch::try_new_with_options(
            self.schema.clone(),
            columns,
            &RecordBatchOptions::new().with_row_count(Some(rows.len())),
        )?;
        out.push(ChangeBatch::new(data, weights)?);
        Ok(())
    }
}
