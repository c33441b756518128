//! ORDER BY ... LIMIT: keeps every input row ordered by the sort key (ties broken by the whole
//! row, so the choice is deterministic) and emits the change of the first `skip + fetch`
//! rows' last `fetch`. An epoch costs its change plus `skip + fetch`, not the input size.

use std::collections::BTreeMap;
use std::sync::Arc;

use changeflow_sql::plan::SortKey;
use datafusion::arrow::array::{RecordBatch, RecordBatchOptions};
use datafusion::arrow::compute::SortOptions;
use datafusion::arrow::datatypes::{DataType, SchemaRef};
use datafusion::common::DFSchema;
use datafusion::logical_expr::ExprSchemable;
use datafusion::physical_expr::PhysicalExpr;
use rustc_hash::FxHashMap;

use super::state::{BYTES, bytes_column, int64_column, state_batch};
use super::{EpochChanges, Operator, StateReader, evaluate, physical};
use crate::change::ChangeBatch;
use crate::error::{EngineError, Result};
use crate::heap_bytes::HeapBytes;
use crate::rows::{RowCodec, encode_owned};

/// A row's sort key and row, both encoded: the order the rows are kept in.
type SortedRow = (Box<[u8]>, Box<[u8]>);

pub struct TopK {
    input: Box<dyn Operator>,
    sort_exprs: Vec<Arc<dyn PhysicalExpr>>,
    sort_codec: RowCodec,
    row_codec: RowCodec,
    /// Every input row with its multiplicity, in sort order.
    rows: BTreeMap<SortedRow, i64>,
    emitted: FxHashMap<Box<[u8]>, i64>,
    skip: usize,
    fetch: usize,
    schema: SchemaRef,
}

impl TopK {
    pub fn new(
        input: Box<dyn Operator>,
        input_schema: &DFSchema,
        order: &[SortKey],
        skip: usize,
        fetch: usize,
        schema: SchemaRef,
    ) -> Result<Self> {
        let fields = order
            .iter()
            .map(|k| {
                Ok((
                    k.expr.get_type(input_schema)?,
                    SortOptions { descending: k.descending, nulls_first: k.nulls_first },
                ))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            input,
            sort_exprs: order.iter().map(|k| physical(&k.expr, input_schema)).collect::<Result<_>>()?,
            sort_codec: RowCodec::sorted(fields)?,
            row_codec: RowCodec::for_schema(&schema)?,
            rows: BTreeMap::new(),
            emitted: FxHashMap::default(),
            skip,
            fetch,
            schema,
        })
    }
}

impl Operator for TopK {
    fn step(&mut self, changes: &EpochChanges) -> Result<ChangeBatch> {
        let change = self.input.step(changes)?;
        if change.is_empty() {
            return Ok(ChangeBatch::empty(self.schema.clone()));
        }
        let sort_columns = self.sort_exprs.iter().map(|e| evaluate(e, &change.data)).collect::<Result<Vec<_>>>()?;
        let sort_keys = encode_owned(&self.sort_codec, &sort_columns, change.len())?;
        let rows = encode_owned(&self.row_codec, change.data.columns(), change.len())?;
        for ((sort_key, row), weight) in sort_keys.into_iter().zip(rows).zip(&change.weights) {
            let id = (sort_key, row);
            let count = self.rows.entry(id.clone()).or_insert(0);
            *count += weight;
            if *count == 0 {
                self.rows.remove(&id);
            } else if *count < 0 {
                return Err(EngineError::Internal(
                    "a row was retracted from ORDER BY ... LIMIT more often than inserted".into(),
                ));
            }
        }
        // The new window: rows at positions skip .. skip + fetch, counting multiplicities.
        let mut window: FxHashMap<Box<[u8]>, i64> = FxHashMap::default();
        let mut position = 0usize;
        let end = self.skip + self.fetch;
        for ((_, row), count) in &self.rows {
            if position >= end {
                break;
            }
            let first = position.max(self.skip);
            let last = (position + *count as usize).min(end);
            if last > first {
                *window.entry(row.clone()).or_default() += (last - first) as i64;
            }
            position += *count as usize;
        }
        let mut out_rows: Vec<&[u8]> = Vec::new();
        let mut weights = Vec::new();
        for (row, count) in &window {
            let change = count - self.emitted.get(row).copied().unwrap_or(0);
            if change != 0 {
                out_rows.push(row);
                weights.push(change);
            }
        }
        for (row, count) in &self.emitted {
            if !window.contains_key(row) {
                out_rows.push(row);
                weights.push(-count);
            }
        }
        if out_rows.is_empty() {
            self.emitted = window;
            return Ok(ChangeBatch::empty(self.schema.clone()));
        }
        let columns = self.row_codec.decode(out_rows.iter().copied())?;
        let data = RecordBatch::try_new_with_options(
            self.schema.clone(),
            columns,
            &RecordBatchOptions::new().with_row_count(Some(out_rows.len())),
        )?;
        let result = ChangeBatch::new(data, weights);
        self.emitted = window;
        result
    }

    /// Every input row (sort key, row, count), then the rows currently emitted.
    fn save_state(&self, out: &mut Vec<RecordBatch>) -> Result<()> {
        out.push(state_batch(vec![
            ("sort_key", bytes_column(self.rows.keys().map(|(key, _)| Some(key.as_ref())))),
            ("row", bytes_column(self.rows.keys().map(|(_, row)| Some(row.as_ref())))),
            ("count", int64_column(self.rows.values().copied())),
        ])?);
        out.push(state_batch(vec![
            ("row", bytes_column(self.emitted.keys().map(|row| Some(row.as_ref())))),
            ("count", int64_column(self.emitted.values().copied())),
        ])?);
        self.input.save_state(out)
    }

    fn load_state(&mut self, state: &mut StateReader) -> Result<()> {
        let rows = state.next("ORDER BY ... LIMIT's rows", &[BYTES, BYTES, DataType::Int64])?;
        self.rows = (0..rows.len())
            .map(|i| ((rows.binary(0).value(i).into(), rows.binary(1).value(i).into()), rows.int64(2).value(i)))
            .collect();
        let emitted = state.next("ORDER BY ... LIMIT's output", &[BYTES, DataType::Int64])?;
        self.emitted =
            (0..emitted.len()).map(|i| (emitted.binary(0).value(i).into(), emitted.int64(1).value(i))).collect();
        self.input.load_state(state)
    }

    fn state_bytes(&self) -> usize {
        self.rows.heap_bytes() + self.emitted.heap_bytes() + self.input.state_bytes()
    }
}
