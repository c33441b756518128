//! Change batches: an Arrow `RecordBatch` of rows plus one weight per row (+1 inserts the row,
//! -1 retracts it; an update is a retraction and an insertion). Every batch belongs to one
//! epoch. Consolidation sums the weights of equal rows and drops rows whose weight is zero
//! (a batch of insertions only is already consolidated: equal rows may stay apart).

use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, RecordBatch, UInt32Array};
use datafusion::arrow::compute::{concat_batches, take_record_batch};
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::row::Rows;
use rustc_hash::FxHashMap;

use crate::error::{EngineError, Result};
use crate::rows::RowCodec;

#[derive(Debug, Clone)]
pub struct ChangeBatch {
    pub data: RecordBatch,
    pub weights: Vec<i64>,
    /// Known to be consolidated (no two equal rows, no zero weight): consolidating it again
    /// is free.
    consolidated: bool,
}

impl ChangeBatch {
    pub fn new(data: RecordBatch, weights: Vec<i64>) -> Result<Self> {
        if data.num_rows() != weights.len() {
            return Err(EngineError::Internal(format!(
                "change batch has {} rows but {} weights",
                data.num_rows(),
                weights.len()
            )));
        }
        Ok(Self { data, weights, consolidated: false })
    }

    pub fn empty(schema: SchemaRef) -> Self {
        Self { data: RecordBatch::new_empty(schema), weights: Vec::new(), consolidated: true }
    }

    /// Every row of `data` inserted once.
    pub fn inserts(data: RecordBatch) -> Self {
        let weights = vec![1; data.num_rows()];
        Self { data, weights, consolidated: false }
    }

    /// Every row of `data` retracted once.
    pub fn retractions(data: RecordBatch) -> Self {
        let weights = vec![-1; data.num_rows()];
        Self { data, weights, consolidated: false }
    }

    /// An update of each row of `old` to the row of `new` at the same position: each row's
    /// retraction beside its insertion, the order a source sends updates in (operators that
    /// net a row's two halves, such as min/max, find them side by side).
    pub fn updates(schema: &SchemaRef, old: RecordBatch, new: RecordBatch) -> Result<Self> {
        let count = old.num_rows();
        if new.num_rows() != count {
            return Err(EngineError::Internal(format!("an update of {count} rows into {} rows", new.num_rows())));
        }
        let both = concat_batches(schema, [&old, &new])?;
        let order = UInt32Array::from_iter_values((0..count as u32).flat_map(|row| [row, row + count as u32]));
        let weights = std::iter::repeat_n([-1, 1], count).flatten().collect();
        Ok(Self { data: take_record_batch(&both, &order)?, weights, consolidated: false })
    }

    /// Marks the batch consolidated when `known` (the caller derived it from a consolidated
    /// batch in a way that keeps distinct rows distinct: a subset, an injective projection).
    pub fn consolidated_if(mut self, known: bool) -> Self {
        self.consolidated |= known;
        self
    }

    pub fn len(&self) -> usize {
        self.weights.len()
    }

    pub fn is_empty(&self) -> bool {
        self.weights.is_empty()
    }

    pub fn schema(&self) -> SchemaRef {
        self.data.schema()
    }

    pub fn negate(mut self) -> Self {
        for w in &mut self.weights {
            *w = -*w;
        }
        self
    }

    /// The same columns under another schema with the same types (renames, qualifiers).
    pub fn with_schema(self, schema: SchemaRef) -> Result<Self> {
        if Arc::ptr_eq(&self.data.schema(), &schema) {
            return Ok(self);
        }
        let columns: Vec<ArrayRef> = self.data.columns().to_vec();
        let data = RecordBatch::try_new_with_options(
            schema,
            columns,
            &datafusion::arrow::array::RecordBatchOptions::new().with_row_count(Some(self.data.num_rows())),
        )?;
        Ok(Self { data, weights: self.weights, consolidated: self.consolidated })
    }

    /// Concatenates batches of one schema.
    pub fn concat(schema: &SchemaRef, batches: &[ChangeBatch]) -> Result<Self> {
        let non_empty: Vec<&ChangeBatch> = batches.iter().filter(|b| !b.is_empty()).collect();
        match non_empty.as_slice() {
            [] => Ok(Self::empty(Arc::clone(schema))),
            [one] => Ok((*one).clone().with_schema(Arc::clone(schema))?),
            many => {
                let data = concat_batches(schema, many.iter().map(|b| &b.data))?;
                let weights = many.iter().flat_map(|b| b.weights.iter().copied()).collect();
                Ok(Self { data, weights, consolidated: false })
            }
        }
    }

    /// Sums the weights of equal rows and drops rows whose total is zero. Keeps the first
    /// occurrence's position, so the result is deterministic.
    pub fn consolidate(&self) -> Result<Self> {
        // Without retractions nothing cancels: equal rows may stay apart (the multiset is
        // the same), which saves encoding and hashing large inserts such as snapshots.
        if self.consolidated || self.weights.iter().all(|w| *w > 0) {
            return Ok(self.clone());
        }
        Ok(self.consolidate_encoded(&RowCodec::for_schema(&self.data.schema())?)?.0)
    }

    /// Whether the batch is known to be consolidated.
    pub fn is_consolidated(&self) -> bool {
        self.consolidated
    }

    /// Consolidates (whatever the weights) with `codec`, a codec of this batch's columns, and
    /// returns the result's rows encoded with it: a caller that needs the encoding anyway
    /// encodes once.
    pub fn consolidate_encoded(&self, codec: &RowCodec) -> Result<(Self, Rows)> {
        let rows = codec.encode(self.data.columns())?;
        let mut positions: FxHashMap<&[u8], usize> =
            FxHashMap::with_capacity_and_hasher(self.len(), Default::default());
        let mut order: Vec<(u32, i64)> = Vec::with_capacity(self.len());
        for (i, weight) in self.weights.iter().enumerate() {
            let row = rows.row(i);
            match positions.get(row.as_ref()) {
                Some(&slot) => order[slot].1 += weight,
                None => {
                    positions.insert(row.data(), order.len());
                    order.push((i as u32, *weight));
                }
            }
        }
        order.retain(|(_, w)| *w != 0);
        if order.len() == self.len() {
            drop(positions);
            return Ok((Self { consolidated: true, ..self.clone() }, rows));
        }
        let mut kept = codec.empty_rows(order.len(), rows.size());
        for (index, _) in &order {
            kept.push(rows.row(*index as usize));
        }
        let indices = UInt32Array::from_iter_values(order.iter().map(|(i, _)| *i));
        let data = take_record_batch(&self.data, &indices)?;
        Ok((Self { data, weights: order.into_iter().map(|(_, w)| w).collect(), consolidated: true }, kept))
    }
}

#[cfg(test)]
mod tests {
    use datafusion::arrow::array::{AsArray, Int64Array};
    use datafusion::arrow::datatypes::{DataType, Field, Int64Type, Schema};

    use super::*;

    #[test]
    fn an_update_puts_each_rows_retraction_beside_its_insertion() {
        let schema: SchemaRef = Arc::new(Schema::new(vec![Field::new("v", DataType::Int64, false)]));
        let batch = |values: Vec<i64>| {
            RecordBatch::try_new(Arc::clone(&schema), vec![Arc::new(Int64Array::from(values))]).expect("a valid batch")
        };
        let change =
            ChangeBatch::updates(&schema, batch(vec![1, 2, 3]), batch(vec![10, 20, 30])).expect("a valid batch");
        let values: Vec<i64> = change.data.column(0).as_primitive::<Int64Type>().values().to_vec();
        assert_eq!(values, [1, 10, 2, 20, 3, 30]);
        assert_eq!(change.weights, [-1, 1, -1, 1, -1, 1]);
        assert!(ChangeBatch::updates(&schema, batch(vec![1]), batch(vec![])).is_err());
    }
}
