//! `changes(relation)` in the engine: the streams views and sinks read are registered in the
//! catalog when they are first named, and each epoch turns a relation's change into event
//! rows (`op`, `before`, `after`, `source`), all insertions: the stream only grows. Nothing
//! of a stream is stored.

use std::sync::Arc;

use changeflow_sql::change_stream::{self, source_fields};
use datafusion::arrow::array::{
    ArrayRef, BooleanArray, Int64Array, RecordBatch, StringArray, StructArray, TimestampMicrosecondArray, UInt32Array,
    new_null_array,
};
use datafusion::arrow::buffer::NullBuffer;
use datafusion::arrow::compute::take;
use datafusion::arrow::datatypes::{DataType, SchemaRef};
use datafusion::sql::sqlparser::ast;

use crate::change::ChangeBatch;
use crate::connector::Origin;
use crate::engine::Engine;
use crate::error::Result;
use crate::events::events_of;
use crate::operator::EpochChanges;

impl Engine {
    /// Registers the `changes(...)` streams a statement reads; returns their names.
    pub(crate) fn ensure_change_streams(&mut self, statement: &ast::Statement) -> Result<Vec<String>> {
        let mut names = Vec::new();
        for base in change_stream::streams_in(statement)? {
            let stream = change_stream::stream_relation(&self.catalog, &base)?;
            names.push(stream.name.clone());
            self.catalog.add_stream(stream);
        }
        Ok(names)
    }

    /// Adds to an epoch the events of every registered stream over `relation`, when the
    /// epoch changed it.
    pub(crate) fn add_stream_events(&self, epoch: &mut EpochChanges, relation: &str) -> Result<()> {
        let stream = change_stream::stream_name(relation);
        let Some(definition) = self.catalog.relation(&stream) else { return Ok(()) };
        let Some(change) = epoch.get(relation) else { return Ok(()) };
        let key = match self.stores.get(relation) {
            Some(store) if !store.primary_key().is_empty() => store.primary_key().to_vec(),
            _ => self.catalog.relation(relation).map(|r| r.primary_key.clone()).unwrap_or_default(),
        };
        let origin = self.epoch_origin.as_ref();
        let events = stream_rows(&definition.schema, relation, change, &key, origin, self.epoch_is_snapshot)?;
        if !events.is_empty() {
            epoch.insert(stream, events);
        }
        Ok(())
    }
}

/// A struct column of the given rows of `data` (NULL where a row is absent).
fn rows_as_struct(data: &RecordBatch, rows: &[Option<usize>], data_type: &DataType) -> Result<ArrayRef> {
    let DataType::Struct(fields) = data_type else {
        return Ok(new_null_array(data_type, rows.len()));
    };
    let indices = UInt32Array::from(rows.iter().map(|r| r.map(|r| r as u32)).collect::<Vec<_>>());
    let columns = data.columns().iter().map(|c| take(c.as_ref(), &indices, None)).collect::<Result<Vec<_>, _>>()?;
    let nulls = NullBuffer::from(rows.iter().map(Option::is_some).collect::<Vec<_>>());
    Ok(Arc::new(StructArray::try_new(fields.clone(), columns, Some(nulls))?))
}

/// The event rows of one relation's change, under the stream's schema.
fn stream_rows(
    schema: &SchemaRef,
    relation: &str,
    change: &ChangeBatch,
    key: &[usize],
    origin: Option<&Origin>,
    snapshot: bool,
) -> Result<ChangeBatch> {
    let lsn = origin.map(|o| o.progress.0.as_str());
    let transaction = origin.and_then(|o| o.transaction);
    let events = events_of(change, key, snapshot);
    let n = events.len();
    let ops: Vec<String> = events.iter().map(|e| e.op.to_string()).collect();
    let before: Vec<Option<usize>> = events.iter().map(|e| e.before).collect();
    let after: Vec<Option<usize>> = events.iter().map(|e| e.after).collect();
    let source_columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from(vec![lsn; n])),
        Arc::new(Int64Array::from(vec![transaction.map(|t| t.id); n])),
        Arc::new(TimestampMicrosecondArray::from(vec![transaction.map(|t| t.commit_micros); n]).with_timezone("UTC")),
        Arc::new(StringArray::from(vec![relation; n])),
        Arc::new(BooleanArray::from(vec![snapshot; n])),
    ];
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from(ops)),
        rows_as_struct(&change.data, &before, schema.field(1).data_type())?,
        rows_as_struct(&change.data, &after, schema.field(2).data_type())?,
        Arc::new(StructArray::try_new(source_fields(), source_columns, None)?),
    ];
    Ok(ChangeBatch::inserts(RecordBatch::try_new(Arc::clone(schema), columns)?))
}
