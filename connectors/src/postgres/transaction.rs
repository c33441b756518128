//! Gathering the changes of upstream transactions between Begin and Commit: pgoutput
//! tuples mapped onto the relation's declared columns (by name, so columns added upstream
//! are ignored and dropped ones read as NULL), with key-only old tuples and TOAST-unchanged
//! values kept as such for the engine to resolve against the relation's stored rows.

use changeflow_engine::connector::SourceChanges;
use changeflow_engine::keyed::{KeyedChanges, RowOp};
use datafusion::arrow::datatypes::SchemaRef;

use super::decode::{TextColumns, declared_schema, tuple_schema};
use super::error::PgError;
use super::pgoutput::{RelationMessage, TupleValue};
use super::upstream::UpstreamTable;

/// A captured table and how the upstream's current columns map onto its relation.
pub struct CapturedTable {
    pub upstream: UpstreamTable,
    pub declared: SchemaRef,
    pub tuple_schema: SchemaRef,
    /// For each declared column, its position in the upstream's tuples (None: dropped).
    pub upstream_position: Vec<Option<usize>>,
}

impl CapturedTable {
    pub fn new(upstream: UpstreamTable) -> Self {
        // Positions until the first Relation message says where the upstream has them.
        let upstream_position = upstream.columns.iter().enumerate().map(|(i, c)| (!c.missing).then_some(i)).collect();
        Self {
            declared: declared_schema(&upstream),
            tuple_schema: tuple_schema(&upstream),
            upstream,
            upstream_position,
        }
    }

    /// Takes the upstream's current column list from a Relation message; returns the
    /// declared columns that went away since the last one.
    pub fn apply_relation(&mut self, message: &RelationMessage) -> Vec<String> {
        let mut dropped = Vec::new();
        for (index, column) in self.upstream.columns.iter().enumerate() {
            let position = message.columns.iter().position(|c| c.name == column.name);
            if position.is_none() && self.upstream_position[index].is_some() {
                dropped.push(column.name.clone());
            }
            self.upstream_position[index] = position;
        }
        dropped
    }
}

/// One table's part of the pending transactions.
struct PendingTable {
    text: TextColumns,
    ops: Vec<RowOp>,
    unchanged: Vec<(u32, u32)>,
}

/// Changes gathered since the last emitted event (one or more whole transactions, and the
/// one in progress).
pub struct PendingChanges {
    tables: Vec<Option<PendingTable>>,
    pub operations: usize,
}

impl PendingChanges {
    pub fn new(tables: usize) -> Self {
        Self { tables: (0..tables).map(|_| None).collect(), operations: 0 }
    }

    pub fn clear(&mut self) {
        self.tables.iter_mut().for_each(|t| *t = None);
        self.operations = 0;
    }

    fn table(&mut self, index: usize, width: usize) -> &mut PendingTable {
        self.tables[index].get_or_insert_with(|| PendingTable {
            text: TextColumns::new(width),
            ops: Vec::new(),
            unchanged: Vec::new(),
        })
    }

    /// Appends a tuple of `table`; returns its row number.
    pub fn push_tuple(&mut self, index: usize, table: &CapturedTable, values: &[TupleValue]) -> Result<u32, PgError> {
        let pending = self.table(index, table.declared.fields().len());
        let row = pending.text.rows() as u32;
        for (column, position) in table.upstream_position.iter().enumerate() {
            let builder = pending.text.column(column);
            match position.and_then(|p| values.get(p)) {
                Some(TupleValue::Text(bytes)) => {
                    let text = std::str::from_utf8(bytes).map_err(|_| {
                        PgError::Value(format!(
                            "table {}, column \"{}\": value is not UTF-8",
                            table.upstream.display(),
                            table.upstream.columns[column].name
                        ))
                    })?;
                    builder.append_value(text);
                }
                Some(TupleValue::Unchanged) => {
                    builder.append_null();
                    pending.unchanged.push((row, column as u32));
                }
                Some(TupleValue::Null) | None => builder.append_null(),
            }
        }
        pending.text.end_row();
        Ok(row)
    }

    pub fn push_op(&mut self, index: usize, table: &CapturedTable, op: RowOp) {
        self.table(index, table.declared.fields().len()).ops.push(op);
        self.operations += 1;
    }

    /// The gathered changes per relation, leaving nothing pending.
    pub fn take(&mut self, tables: &[CapturedTable]) -> Result<Vec<(String, SourceChanges)>, PgError> {
        let mut changes = Vec::new();
        for (pending, table) in self.tables.iter_mut().zip(tables) {
            let Some(mut pending) = pending.take() else { continue };
            let rows = pending.text.finish(&table.upstream, &table.tuple_schema)?;
            changes.push((
                table.upstream.relation.clone(),
                SourceChanges::Keyed(KeyedChanges { rows, ops: pending.ops, unchanged: pending.unchanged }),
            ));
        }
        self.operations = 0;
        Ok(changes)
    }
}
