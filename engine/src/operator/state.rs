//! Operator state as Arrow record batches, for checkpoints. Every stateful operator writes
//! its state (groups and accumulators, join arrangements, top-k rows) as a few batches of
//! encoded rows and counts, then its inputs' state, in a fixed order; loading reads them back
//! in the same order into a freshly built dataflow of the same plan. A batch whose columns
//! are not what the operator expects is an error naming the operator (the engine then
//! rebuilds the view from its inputs instead).

use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, FixedSizeBinaryArray, Float64Array, Int64Array, LargeBinaryArray,
    RecordBatch, UInt32Array,
};
use datafusion::arrow::datatypes::{DataType, Field, Float64Type, Int64Type, Schema, UInt32Type};

use crate::error::{EngineError, Result};

/// The state batches of one dataflow, read front to back.
pub struct StateReader {
    batches: std::vec::IntoIter<RecordBatch>,
}

impl StateReader {
    pub fn new(batches: Vec<RecordBatch>) -> Self {
        Self { batches: batches.into_iter() }
    }

    /// The next batch, which must have columns of exactly these types (`what` names the
    /// operator's state in the error).
    pub fn next(&mut self, what: &str, types: &[DataType]) -> Result<StateBatch> {
        let batch = self.batches.next().ok_or_else(|| {
            mismatch(format!("{what} is missing (the checkpoint holds less state than the view has)"))
        })?;
        let found: Vec<&DataType> = batch.schema_ref().fields().iter().map(|f| f.data_type()).collect();
        if found.len() != types.len() || found.iter().zip(types).any(|(a, b)| *a != b) {
            return Err(mismatch(format!(
                "{what} has columns ({}) where ({}) were expected",
                found.iter().map(|t| t.to_string()).collect::<Vec<_>>().join(", "),
                types.iter().map(|t| t.to_string()).collect::<Vec<_>>().join(", ")
            )));
        }
        Ok(StateBatch { batch })
    }

    /// Fails when batches are left over (the checkpoint holds state of another dataflow).
    pub fn finish(mut self) -> Result<()> {
        match self.batches.next() {
            None => Ok(()),
            Some(_) => Err(mismatch("the checkpoint holds more state than the view has".into())),
        }
    }
}

fn mismatch(why: String) -> EngineError {
    EngineError::Durability(format!("checkpointed operator state does not fit the view: {why}"))
}

/// One state batch whose column types were checked.
pub struct StateBatch {
    batch: RecordBatch,
}

impl StateBatch {
    pub fn len(&self) -> usize {
        self.batch.num_rows()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn binary(&self, column: usize) -> &LargeBinaryArray {
        self.batch.column(column).as_binary::<i64>()
    }

    /// An encoded row of a nullable column (None for NULL).
    pub fn optional_bytes(&self, column: usize, row: usize) -> Option<&[u8]> {
        let values = self.binary(column);
        values.is_valid(row).then(|| values.value(row))
    }

    pub fn int64(&self, column: usize) -> &Int64Array {
        self.batch.column(column).as_primitive::<Int64Type>()
    }

    pub fn float64(&self, column: usize) -> &Float64Array {
        self.batch.column(column).as_primitive::<Float64Type>()
    }

    pub fn uint32(&self, column: usize) -> &UInt32Array {
        self.batch.column(column).as_primitive::<UInt32Type>()
    }

    pub fn boolean(&self, column: usize) -> &BooleanArray {
        self.batch.column(column).as_boolean()
    }

    /// Exact sums stored as 16 little-endian bytes.
    pub fn int128(&self, column: usize, row: usize) -> Result<i128> {
        let bytes = self.batch.column(column).as_fixed_size_binary().value(row);
        Ok(i128::from_le_bytes(bytes.try_into().map_err(|_| mismatch("an exact sum is not 16 bytes".into()))?))
    }

    /// A group ordinal of a multiset row, checked against the number of groups.
    pub fn ordinal(&self, column: usize, row: usize, groups: usize) -> Result<usize> {
        let ordinal = self.uint32(column).value(row) as usize;
        if ordinal >= groups {
            return Err(mismatch(format!("a value belongs to group {ordinal} of {groups}")));
        }
        Ok(ordinal)
    }
}

/// The type of an encoded-row column.
pub const BYTES: DataType = DataType::LargeBinary;
/// The type of an exact (i128) sum column.
pub const INT128: DataType = DataType::FixedSizeBinary(16);

/// A state batch of named columns (all nullable).
pub fn state_batch(columns: Vec<(&str, ArrayRef)>) -> Result<RecordBatch> {
    let fields: Vec<Field> =
        columns.iter().map(|(name, array)| Field::new(*name, array.data_type().clone(), true)).collect();
    let rows = columns.first().map_or(0, |(_, a)| a.len());
    Ok(RecordBatch::try_new_with_options(
        Arc::new(Schema::new(fields)),
        columns.into_iter().map(|(_, a)| a).collect(),
        &datafusion::arrow::array::RecordBatchOptions::new().with_row_count(Some(rows)),
    )?)
}

/// A column of encoded rows.
pub fn bytes_column<'a>(values: impl IntoIterator<Item = Option<&'a [u8]>>) -> ArrayRef {
    Arc::new(LargeBinaryArray::from_iter(values))
}

pub fn int64_column(values: impl IntoIterator<Item = i64>) -> ArrayRef {
    Arc::new(Int64Array::from_iter_values(values))
}

pub fn int128_column(values: impl IntoIterator<Item = i128>) -> Result<ArrayRef> {
    let values: Vec<[u8; 16]> = values.into_iter().map(i128::to_le_bytes).collect();
    // Arrow refuses to build a fixed-size binary array from no values (it could not tell
    // their width): an aggregate with no groups saves an empty column of the state's type.
    if values.is_empty() {
        return Ok(datafusion::arrow::array::new_empty_array(&INT128));
    }
    Ok(Arc::new(FixedSizeBinaryArray::try_from_iter(values.into_iter())?))
}

/// Multiset rows: (group ordinal, encoded value, multiplicity).
pub fn multiset_batch(rows: &[(u32, Vec<u8>, i64)]) -> Result<RecordBatch> {
    state_batch(vec![
        ("group", Arc::new(UInt32Array::from_iter_values(rows.iter().map(|r| r.0)))),
        ("value", bytes_column(rows.iter().map(|r| Some(r.1.as_slice())))),
        ("count", int64_column(rows.iter().map(|r| r.2))),
    ])
}

/// The column types of [`multiset_batch`].
pub fn multiset_types() -> [DataType; 3] {
    [DataType::UInt32, BYTES, DataType::Int64]
}
