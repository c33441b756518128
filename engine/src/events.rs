//! Row events from an epoch's consolidated change: with a key, a retraction and an
//! insertion of the same key pair into one update (`u`); otherwise retractions are deletes
//! (`d`) and insertions creates (`c`), or reads (`r`) in a sink's initial snapshot. Events of
//! one key keep together, keys in the order the change first names them.

use crate::change::ChangeBatch;
use crate::connector::SinkEpoch;
use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::row::{RowConverter, SortField};

/// One change of one row: indexes into the epoch's change batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Event {
    pub op: char,
    pub before: Option<usize>,
    pub after: Option<usize>,
}

impl Event {
    /// The row that identifies the event (the new one, or the old one for a delete).
    pub fn row(&self) -> usize {
        self.after.or(self.before).unwrap_or(0)
    }
}

/// The events of a sink's epoch, given the key columns (possibly none).
pub fn events(epoch: &SinkEpoch, key: &[usize]) -> Vec<Event> {
    events_of(&epoch.change, key, epoch.snapshot)
}

/// The events of a change, given the key columns (possibly none); `snapshot` makes the
/// insertions reads.
pub fn events_of(change: &ChangeBatch, key: &[usize], snapshot: bool) -> Vec<Event> {
    let mut out = Vec::with_capacity(change.len());
    let simple = |out: &mut Vec<Event>, row: usize, weight: i64| {
        for _ in 0..weight.unsigned_abs() {
            out.push(if weight < 0 {
                Event { op: 'd', before: Some(row), after: None }
            } else if snapshot {
                Event { op: 'r', before: None, after: Some(row) }
            } else {
                Event { op: 'c', before: None, after: Some(row) }
            });
        }
    };
    let keys = if key.is_empty() || snapshot { None } else { key_rows(&change.data, key) };
    let Some(keys) = keys else {
        for (row, weight) in change.weights.iter().enumerate() {
            simple(&mut out, row, *weight);
        }
        return out;
    };
    let mut groups = OrderedGroups::default();
    for (row, key) in keys.iter().enumerate() {
        groups.push(key.as_ref(), row);
    }
    for rows in groups.into_groups() {
        let removed: Vec<usize> = rows.iter().copied().filter(|&r| change.weights[r] < 0).collect();
        let added: Vec<usize> = rows.iter().copied().filter(|&r| change.weights[r] > 0).collect();
        if removed.len() == 1 && added.len() == 1 && change.weights[removed[0]] == -1 && change.weights[added[0]] == 1 {
            out.push(Event { op: 'u', before: Some(removed[0]), after: Some(added[0]) });
            continue;
        }
        for row in removed.into_iter().chain(added) {
            simple(&mut out, row, change.weights[row]);
        }
    }
    out
}

/// The key of each row, encoded so that equal keys have equal bytes.
fn key_rows(data: &RecordBatch, key: &[usize]) -> Option<Vec<Box<[u8]>>> {
    let fields = key.iter().map(|&i| SortField::new(data.schema().field(i).data_type().clone())).collect();
    let converter = RowConverter::new(fields).ok()?;
    let columns: Vec<_> = key.iter().map(|&i| data.column(i).clone()).collect();
    let rows = converter.convert_columns(&columns).ok()?;
    Some(rows.iter().map(|r| r.as_ref().into()).collect())
}

/// Rows grouped by key, groups in order of first appearance.
#[derive(Default)]
struct OrderedGroups {
    index: std::collections::HashMap<Box<[u8]>, usize>,
    groups: Vec<Vec<usize>>,
}

impl OrderedGroups {
    fn push(&mut self, key: &[u8], row: usize) {
        match self.index.get(key) {
            Some(&group) => self.groups[group].push(row),
            None => {
                self.index.insert(key.into(), self.groups.len());
                self.groups.push(vec![row]);
            }
        }
    }

    fn into_groups(self) -> Vec<Vec<usize>> {
        self.groups
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use datafusion::arrow::array::{Int32Array, StringArray};
    use datafusion::arrow::datatypes::{DataType, Field, Schema};

    use super::*;

    #[test]
    fn a_retraction_and_an_insertion_of_one_key_are_an_update() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int32, false),
            Field::new("status", DataType::Utf8, true),
        ]));
        let data = RecordBatch::try_new(
            schema,
            vec![
                Arc::new(Int32Array::from(vec![1, 2, 1, 3])),
                Arc::new(StringArray::from(vec!["new", "gone", "paid", "fresh"])),
            ],
        )
        .expect("batch");
        let change = ChangeBatch::new(data, vec![-1, -1, 1, 1]).expect("change");
        let epoch = SinkEpoch { epoch: 1, change, snapshot: false, origin: None, errors: None };
        assert_eq!(
            events(&epoch, &[0]),
            vec![
                Event { op: 'u', before: Some(0), after: Some(2) },
                Event { op: 'd', before: Some(1), after: None },
                Event { op: 'c', before: None, after: Some(3) },
            ]
        );
        // Without a key nothing pairs.
        let ops: String = events(&epoch, &[]).iter().map(|e| e.op).collect();
        assert_eq!(ops, "ddcc");
    }
}
