//! Arrow IPC encoding of what the data directory stores: record batches (relation contents),
//! change batches (a weight column appended), and schemas (an IPC stream with no batches).

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, Int64Array, RecordBatch};
use datafusion::arrow::buffer::Buffer;
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::arrow::ipc::reader::StreamDecoder;
use datafusion::arrow::ipc::writer::StreamWriter;

use crate::change::ChangeBatch;
use crate::error::{EngineError, Result};

const WEIGHT_COLUMN: &str = "__changeflow_weight";

/// One IPC stream holding the batches (possibly none) of a schema.
pub(crate) fn encode_batches(schema: &SchemaRef, batches: &[RecordBatch]) -> Result<Vec<u8>> {
    let mut writer = StreamWriter::try_new(Vec::new(), schema)?;
    for batch in batches {
        if batch.num_rows() > 0 {
            writer.write(batch)?;
        }
    }
    writer.finish()?;
    Ok(writer.into_inner()?)
}

/// The schema and batches of one IPC stream. Bytes that are not a well-formed stream are an
/// error (a panic inside the IPC reader on malformed input included).
pub(crate) fn decode_batches(bytes: &[u8]) -> Result<(SchemaRef, Vec<RecordBatch>)> {
    // The push decoder never allocates more than the bytes it is given, so a damaged length
    // field cannot ask for a buffer of exabytes (the pull reader allocates what it reads).
    let decode = || -> Result<(SchemaRef, Vec<RecordBatch>)> {
        let mut decoder = StreamDecoder::new();
        let mut buffer = Buffer::from(bytes.to_vec());
        let mut batches = Vec::new();
        while !buffer.is_empty() {
            match decoder.decode(&mut buffer)? {
                Some(batch) => batches.push(batch),
                None => break,
            }
        }
        decoder.finish()?;
        let schema =
            decoder.schema().ok_or_else(|| EngineError::Durability("stored Arrow data has no schema".into()))?;
        Ok((schema, batches))
    };
    std::panic::catch_unwind(decode).unwrap_or_else(|panic| {
        Err(EngineError::Durability(format!(
            "stored Arrow data is malformed ({})",
            crate::error::panic_message(&*panic)
        )))
    })
}

pub(crate) fn encode_schema(schema: &SchemaRef) -> Result<Vec<u8>> {
    encode_batches(schema, &[])
}

pub(crate) fn decode_schema(bytes: &[u8]) -> Result<SchemaRef> {
    Ok(decode_batches(bytes)?.0)
}

/// A change batch as one IPC stream: its columns plus the weights as a last column.
pub(crate) fn encode_change(change: &ChangeBatch) -> Result<Vec<u8>> {
    let schema = change.data.schema();
    let mut fields: Vec<Field> = schema.fields().iter().map(|f| f.as_ref().clone()).collect();
    fields.push(Field::new(WEIGHT_COLUMN, DataType::Int64, false));
    let with_weights = Arc::new(Schema::new(fields));
    let mut columns: Vec<ArrayRef> = change.data.columns().to_vec();
    columns.push(Arc::new(Int64Array::from(change.weights.clone())));
    let batch = RecordBatch::try_new(Arc::clone(&with_weights), columns)?;
    encode_batches(&with_weights, &[batch])
}

/// The change batch of [`encode_change`], with the columns it was stored with.
pub(crate) fn decode_change_as_stored(bytes: &[u8]) -> Result<ChangeBatch> {
    let (stored, _) = decode_batches(bytes)?;
    let fields = stored.fields();
    let data_fields: Vec<Field> =
        fields.iter().take(fields.len().saturating_sub(1)).map(|f| f.as_ref().clone()).collect();
    decode_change(bytes, &Arc::new(Schema::new(data_fields)))
}

/// The change batch of [`encode_change`], with the given schema (the relation's).
pub(crate) fn decode_change(bytes: &[u8], schema: &SchemaRef) -> Result<ChangeBatch> {
    let (stored, batches) = decode_batches(bytes)?;
    let width = stored.fields().len();
    if width != schema.fields().len() + 1 || stored.field(width - 1).name() != WEIGHT_COLUMN {
        return Err(EngineError::Durability(format!(
            "a journaled change has {} columns, but its relation has {}",
            width.saturating_sub(1),
            schema.fields().len()
        )));
    }
    let mut changes = Vec::with_capacity(batches.len());
    for batch in batches {
        let weights = batch
            .column(width - 1)
            .as_any()
            .downcast_ref::<Int64Array>()
            .ok_or_else(|| EngineError::Durability("a journaled change has no weight column".into()))?;
        let weights: Vec<i64> = weights.values().to_vec();
        let data = RecordBatch::try_new(Arc::clone(schema), batch.columns()[..width - 1].to_vec())?;
        changes.push(ChangeBatch::new(data, weights)?);
    }
    ChangeBatch::concat(schema, &changes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{Int32Array, StringArray};

    #[test]
    fn change_batches_round_trip_with_weights() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int32, false),
            Field::new("name", DataType::Utf8, true),
        ]));
        let data = RecordBatch::try_new(
            Arc::clone(&schema),
            vec![Arc::new(Int32Array::from(vec![1, 2])), Arc::new(StringArray::from(vec![Some("a"), None]))],
        )
        .expect("batch");
        let change = ChangeBatch::new(data.clone(), vec![1, -1]).expect("change");
        let decoded = decode_change(&encode_change(&change).expect("encode"), &schema).expect("decode");
        assert_eq!(decoded.weights, vec![1, -1]);
        assert_eq!(decoded.data, data);
        let schema_back = decode_schema(&encode_schema(&schema).expect("encode")).expect("decode");
        assert_eq!(schema_back, schema);
    }

    #[test]
    fn a_change_of_another_shape_is_refused() {
        let schema = Arc::new(Schema::new(vec![Field::new("id", DataType::Int32, false)]));
        let data = RecordBatch::try_new(Arc::clone(&schema), vec![Arc::new(Int32Array::from(vec![1]))]).expect("b");
        let bytes = encode_change(&ChangeBatch::inserts(data)).expect("encode");
        let wider = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int32, false),
            Field::new("x", DataType::Int32, true),
        ]));
        let error = decode_change(&bytes, &wider).expect_err("refused");
        assert!(error.to_string().contains("has 1 columns, but its relation has 2"), "{error}");
    }
}
