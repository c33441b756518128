//! Changes as change-data-capture sources deliver them: inserts, updates and deletes named by
//! primary key, in upstream order, where a delete may carry only the key (PostgreSQL's
//! REPLICA IDENTITY DEFAULT), an update may leave out values that did not change (TOAST), and
//! a TRUNCATE empties the relation. The engine resolves them against the relation's stored
//! rows (its own arrangement of the upstream table) into an ordinary weighted [`ChangeBatch`].

use datafusion::arrow::array::{Array, ArrayRef, RecordBatch, RecordBatchOptions};
use datafusion::arrow::compute::interleave;
use rustc_hash::FxHashMap;

use crate::change::ChangeBatch;
use crate::error::{EngineError, Result};
use crate::rows::{Encoded, encode_rows};
use crate::store::RelationStore;

/// One upstream operation; the numbers are rows of [`KeyedChanges::rows`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RowOp {
    /// A new row (an existing row with the same key is replaced).
    Insert(u32),
    /// The row named by `old` (its key, or the whole old row) becomes `new`; without `old`,
    /// the row with `new`'s key is replaced.
    Update { old: Option<u32>, new: u32 },
    /// The row named by this key (or whole old row) goes away.
    Delete(u32),
    /// Every row goes away.
    Truncate,
}

/// Operations on one relation in upstream order, with the tuples they name.
#[derive(Debug, Clone)]
pub struct KeyedChanges {
    /// Every tuple the operations name, in the relation's schema. Key-only tuples carry NULL
    /// in their other columns.
    pub rows: RecordBatch,
    pub ops: Vec<RowOp>,
    /// Cells `(row, column)` of `rows` that were not sent because they did not change: they
    /// take the value of the row being replaced.
    pub unchanged: Vec<(u32, u32)>,
}

impl KeyedChanges {
    pub fn len(&self) -> usize {
        self.ops.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }
}

/// Where the current row for a key lives while resolving.
#[derive(Debug, Clone, Copy)]
enum Current {
    Absent,
    /// A stored row, by its index in the stored rows looked up.
    Stored(usize),
    /// A row inserted earlier in this batch, by its output index.
    Emitted(usize),
    /// A whole old row sent with the change (relations without a primary key).
    Sent(usize),
}

/// The output being built: for every output row and column, which array and row its value
/// comes from (0 = the incoming rows, 1 = the stored rows looked up), and its weight.
struct Output {
    sources: Vec<Vec<(usize, usize)>>,
    weights: Vec<i64>,
}

impl Output {
    /// The source of `column` in the row `current` points at.
    fn source_of(&self, current: Current, column: usize) -> Option<(usize, usize)> {
        match current {
            Current::Absent => None,
            Current::Stored(old) => Some((1, old)),
            Current::Emitted(index) => Some(self.sources[column][index]),
            Current::Sent(row) => Some((0, row)),
        }
    }

    /// Appends a copy of the row `current` points at with `weight` (nothing when absent).
    fn push_copy(&mut self, current: Current, weight: i64) {
        if matches!(current, Current::Absent) {
            return;
        }
        for column in 0..self.sources.len() {
            let source = self.source_of(current, column).unwrap_or((0, 0));
            self.sources[column].push(source);
        }
        self.weights.push(weight);
    }

    /// Inserts incoming row `new`; its unchanged cells take their values from `previous`.
    fn insert(&mut self, new: usize, unchanged: Option<&Vec<u32>>, previous: Current) -> Result<usize> {
        for column in 0..self.sources.len() {
            let source = match unchanged {
                Some(columns) if columns.contains(&(column as u32)) => {
                    self.source_of(previous, column).ok_or_else(|| {
                        EngineError::Connector(format!(
                            "an update left column {} unchanged, but there is no previous row to take it from",
                            column + 1
                        ))
                    })?
                }
                _ => (0, new),
            };
            self.sources[column].push(source);
        }
        self.weights.push(1);
        Ok(self.weights.len() - 1)
    }
}

impl RelationStore {
    /// Resolves keyed operations against the stored rows into a weighted change (not yet
    /// applied to the store). Relations without a primary key resolve by whole rows: their
    /// deletes and updates must carry the whole old row.
    pub fn resolve<'s>(&'s self, changes: &KeyedChanges) -> Result<ChangeBatch> {
        let rows = &changes.rows;
        if rows.num_columns() != self.schema().fields().len() {
            return Err(EngineError::Internal(format!(
                "the source sent rows of {} columns, and the relation has {}",
                rows.num_columns(),
                self.schema().fields().len()
            )));
        }
        let keyed = self.key_codec().is_some();
        let keys: Encoded = match self.key_codec() {
            Some(codec) => {
                let key_columns: Vec<ArrayRef> = self.primary_key().iter().map(|&i| rows.column(i).clone()).collect();
                encode_rows(codec, &key_columns)?
            }
            None => Encoded::Empty,
        };
        let mut unchanged: FxHashMap<u32, Vec<u32>> = FxHashMap::default();
        for &(row, column) in &changes.unchanged {
            unchanged.entry(row).or_default().push(column);
        }
        let width = rows.num_columns();
        let mut out = Output { sources: vec![Vec::new(); width], weights: Vec::new() };
        let mut olds: Vec<&[u8]> = Vec::new();
        let mut overlay: FxHashMap<&[u8], Current> = FxHashMap::default();
        let mut truncated = false;
        let row_of = |index: u32| -> Result<usize> {
            if (index as usize) < rows.num_rows() {
                Ok(index as usize)
            } else {
                Err(EngineError::Internal(format!("a change names row {index} of {}", rows.num_rows())))
            }
        };
        let current = |key: &[u8], overlay: &FxHashMap<&[u8], Current>, olds: &mut Vec<&'s [u8]>, truncated: bool| {
            current_row(self, key, overlay, olds, truncated)
        };
        for op in &changes.ops {
            match *op {
                RowOp::Truncate => {
                    // Undo this batch so far, then retract every stored row once.
                    for index in 0..out.weights.len() {
                        let weight = -out.weights[index];
                        out.push_copy(Current::Emitted(index), weight);
                    }
                    if !truncated {
                        for row in self.stored_rows() {
                            olds.push(row);
                            out.push_copy(Current::Stored(olds.len() - 1), -1);
                        }
                    }
                    overlay.clear();
                    truncated = true;
                }
                RowOp::Insert(new) | RowOp::Update { old: None, new } => {
                    let new = row_of(new)?;
                    let previous =
                        if keyed { current(keys.get(new), &overlay, &mut olds, truncated) } else { Current::Absent };
                    out.push_copy(previous, -1);
                    let index = out.insert(new, unchanged.get(&(new as u32)), previous)?;
                    if keyed {
                        overlay.insert(keys.get(new), Current::Emitted(index));
                    }
                }
                RowOp::Update { old: Some(old), new } => {
                    let (old, new) = (row_of(old)?, row_of(new)?);
                    if !keyed {
                        out.push_copy(Current::Sent(old), -1);
                        out.insert(new, unchanged.get(&(new as u32)), Current::Sent(old))?;
                        continue;
                    }
                    let (old_key, new_key) = (keys.get(old), keys.get(new));
                    let previous = current(old_key, &overlay, &mut olds, truncated);
                    out.push_copy(previous, -1);
                    if new_key != old_key {
                        // The key changed: whatever held the new key is replaced too.
                        overlay.insert(old_key, Current::Absent);
                        let displaced = current(new_key, &overlay, &mut olds, truncated);
                        out.push_copy(displaced, -1);
                    }
                    let index = out.insert(new, unchanged.get(&(new as u32)), previous)?;
                    overlay.insert(new_key, Current::Emitted(index));
                }
                RowOp::Delete(old) => {
                    let old = row_of(old)?;
                    if keyed {
                        let key = keys.get(old);
                        let previous = current(key, &overlay, &mut olds, truncated);
                        out.push_copy(previous, -1);
                        overlay.insert(key, Current::Absent);
                    } else {
                        out.push_copy(Current::Sent(old), -1);
                    }
                }
            }
        }

        let stored = self.decode_rows(&olds)?;
        let mut columns = Vec::with_capacity(width);
        for (column, sources) in out.sources.iter().enumerate() {
            let arrays: [&dyn Array; 2] = [rows.column(column).as_ref(), stored[column].as_ref()];
            columns.push(interleave(&arrays, sources)?);
        }
        let data = RecordBatch::try_new_with_options(
            self.schema().clone(),
            columns,
            &RecordBatchOptions::new().with_row_count(Some(out.weights.len())),
        )?;
        ChangeBatch::new(data, out.weights)
    }
}

/// The current row for a key: this batch's overlay first, then the store (unless the batch
/// truncated the relation). A stored row is queued in `olds` for decoding.
fn current_row<'s>(
    store: &'s RelationStore,
    key: &[u8],
    overlay: &FxHashMap<&[u8], Current>,
    olds: &mut Vec<&'s [u8]>,
    truncated: bool,
) -> Current {
    if let Some(found) = overlay.get(key) {
        return *found;
    }
    if truncated {
        return Current::Absent;
    }
    match store.row_for_key(key) {
        Some(row) => {
            olds.push(row);
            Current::Stored(olds.len() - 1)
        }
        None => Current::Absent,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use datafusion::arrow::array::{Int64Array, StringArray};
    use datafusion::arrow::datatypes::{DataType, Field, Schema};
    use datafusion::arrow::util::pretty::pretty_format_batches;

    use super::*;

    fn schema() -> Arc<Schema> {
        Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("label", DataType::Utf8, true),
            Field::new("body", DataType::Utf8, true),
        ]))
    }

    fn batch(rows: &[(i64, Option<&str>, Option<&str>)]) -> RecordBatch {
        RecordBatch::try_new(
            schema(),
            vec![
                Arc::new(Int64Array::from(rows.iter().map(|r| r.0).collect::<Vec<_>>())),
                Arc::new(StringArray::from(rows.iter().map(|r| r.1).collect::<Vec<_>>())),
                Arc::new(StringArray::from(rows.iter().map(|r| r.2).collect::<Vec<_>>())),
            ],
        )
        .expect("batch")
    }

    /// Applies keyed changes to the store and returns its sorted contents.
    fn apply(store: &mut RelationStore, changes: KeyedChanges) -> String {
        let change = store.resolve(&changes).and_then(|c| c.consolidate()).expect("resolves");
        store.apply(&change).expect("applies");
        let snapshot = store.snapshot().expect("snapshot");
        let sorted = datafusion::arrow::compute::sort_to_indices(snapshot.column(0), None, None).expect("sort");
        let sorted = datafusion::arrow::compute::take_record_batch(&snapshot, &sorted).expect("take");
        pretty_format_batches(&[sorted]).expect("format").to_string()
    }

    #[test]
    fn resolves_operations_in_order_against_stored_rows() {
        let mut store = RelationStore::new("t", schema(), &[0]).expect("store");
        let first = KeyedChanges {
            rows: batch(&[(1, Some("a"), Some("big")), (2, Some("b"), Some("x")), (2, Some("b2"), None)]),
            ops: vec![RowOp::Insert(0), RowOp::Insert(1), RowOp::Update { old: None, new: 2 }],
            unchanged: vec![(2, 2)],
        };
        let contents = apply(&mut store, first);
        assert!(contents.contains("| 2  | b2    | x    |"), "{contents}");
        // A key-only delete, an update leaving the TOASTed body out, a key change.
        let second = KeyedChanges {
            rows: batch(&[(2, None, None), (1, Some("a2"), None), (1, None, None), (5, Some("five"), None)]),
            ops: vec![RowOp::Delete(0), RowOp::Update { old: None, new: 1 }, RowOp::Update { old: Some(2), new: 3 }],
            unchanged: vec![(1, 2), (3, 2)],
        };
        let contents = apply(&mut store, second);
        assert!(contents.contains("| 5  | five  | big  |"), "{contents}");
        assert_eq!(store.len(), 1, "{contents}");
    }

    #[test]
    fn truncate_retracts_stored_and_earlier_rows() {
        let mut store = RelationStore::new("t", schema(), &[0]).expect("store");
        let rows = batch(&[(1, Some("a"), None), (2, Some("b"), None)]);
        apply(&mut store, KeyedChanges { rows, ops: vec![RowOp::Insert(0), RowOp::Insert(1)], unchanged: vec![] });
        let rows = batch(&[(3, Some("c"), None), (4, Some("d"), None)]);
        let ops = vec![RowOp::Insert(0), RowOp::Truncate, RowOp::Insert(1)];
        let contents = apply(&mut store, KeyedChanges { rows, ops, unchanged: vec![] });
        assert_eq!(store.len(), 1, "{contents}");
        assert!(contents.contains("| 4  | d "), "{contents}");
    }

    #[test]
    fn a_row_inserted_and_retracted_in_one_change_leaves_no_key_behind() {
        let mut store = RelationStore::new("t", schema(), &[0]).expect("store");
        let rows = batch(&[(1, Some("a"), None), (1, Some("a"), None), (2, Some("b"), None)]);
        store.apply(&ChangeBatch::new(rows, vec![1, -1, 1]).expect("change")).expect("applies");
        assert_eq!(store.len(), 1);
        assert_eq!(store.snapshot().expect("snapshot").num_rows(), 1);
        let key: ArrayRef = Arc::new(Int64Array::from(vec![1]));
        assert_eq!(store.lookup(&[key]).expect("lookup").expect("keyed").num_rows(), 0);
    }

    #[test]
    fn unchanged_value_without_a_previous_row_is_an_error() {
        let store = RelationStore::new("t", schema(), &[0]).expect("store");
        let rows = batch(&[(1, Some("a"), None)]);
        let changes = KeyedChanges { rows, ops: vec![RowOp::Update { old: None, new: 0 }], unchanged: vec![(0, 2)] };
        let error = store.resolve(&changes).expect_err("nothing to take the value from");
        assert!(error.to_string().contains("column 3 unchanged"), "{error}");
    }

    #[test]
    fn relations_without_a_key_resolve_by_whole_rows() {
        let mut store = RelationStore::new("t", schema(), &[]).expect("store");
        let rows = batch(&[(1, Some("a"), None), (1, Some("a"), None)]);
        apply(&mut store, KeyedChanges { rows, ops: vec![RowOp::Insert(0), RowOp::Insert(1)], unchanged: vec![] });
        let rows = batch(&[(1, Some("a"), None), (1, Some("z"), None)]);
        let ops = vec![RowOp::Update { old: Some(0), new: 1 }];
        let contents = apply(&mut store, KeyedChanges { rows, ops, unchanged: vec![] });
        assert_eq!(store.len(), 2, "{contents}");
        assert!(contents.contains("| 1  | z "), "{contents}");
        assert!(contents.contains("| 1  | a "), "{contents}");
    }
}
