//! Stored relation contents: a multiset of encoded rows (tables, materialized views, source
//! relations), with primary-key and NOT NULL checks for writes to tables, and a cached Arrow
//! snapshot for queries.

use std::sync::Mutex;

use datafusion::arrow::array::{Array, RecordBatch, RecordBatchOptions, UInt32Array};
use datafusion::arrow::compute::take_record_batch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::util::display::array_value_to_string;
use rustc_hash::FxHashMap;

use crate::change::ChangeBatch;
use crate::error::{EngineError, Result};
use crate::heap_bytes::HeapBytes;
use crate::key_changes::{Conflict, net_change};
use crate::key_index::{self, EntryTooLarge, KeyIndex, Refusal};
use crate::rows::{Encoded, RowCodec, encode_owned, encode_rows, fixed_width};

pub struct RelationStore {
    name: String,
    schema: SchemaRef,
    codec: RowCodec,
    /// Row -> multiplicity, for relations without a primary key.
    rows: FxHashMap<Box<[u8]>, i64>,
    primary_key: Vec<usize>,
    key_codec: Option<RowCodec>,
    /// The encoded width of the primary key when its columns come first in the row, in
    /// order, and encode to a fixed width: a row's key is then its first bytes.
    key_prefix: Option<usize>,
    /// Primary key -> row, for relations with a primary key (their only copy of the rows).
    keys: KeyIndex,
    total: i64,
    snapshot: Mutex<Option<RecordBatch>>,
}

impl RelationStore {
    pub fn new(name: &str, schema: SchemaRef, primary_key: &[usize]) -> Result<Self> {
        let key_codec = if primary_key.is_empty() {
            None
        } else {
            let types: Vec<_> = primary_key.iter().map(|&i| schema.field(i).data_type().clone()).collect();
            Some(RowCodec::new(&types)?)
        };
        let leads = primary_key.iter().enumerate().all(|(position, &column)| position == column);
        let key_prefix = key_codec.as_ref().filter(|_| leads).and_then(fixed_width);
        Ok(Self {
            name: name.to_string(),
            codec: RowCodec::for_schema(&schema)?,
            schema,
            rows: FxHashMap::default(),
            primary_key: primary_key.to_vec(),
            key_codec,
            key_prefix,
            keys: KeyIndex::reusing_space(),
            total: 0,
            snapshot: Mutex::new(None),
        })
    }

    /// Makes room for `rows` more rows (at most 100M: an estimate is no promise).
    pub fn reserve(&mut self, rows: u64) {
        let rows = rows.min(100_000_000) as usize;
        if self.key_codec.is_some() {
            self.keys.reserve(rows);
        } else {
            self.rows.reserve(rows);
        }
    }

    pub fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    /// Number of rows, counting duplicates.
    pub fn len(&self) -> i64 {
        self.total
    }

    pub fn is_empty(&self) -> bool {
        self.total == 0
    }

    /// The current contents as one batch (cached until the next change).
    pub fn snapshot(&self) -> Result<RecordBatch> {
        let mut cached = self.snapshot.lock().map_err(|_| EngineError::Internal("snapshot cache poisoned".into()))?;
        if let Some(batch) = cached.as_ref() {
            return Ok(batch.clone());
        }
        let batch = if self.total == 0 {
            RecordBatch::new_empty(self.schema.clone())
        } else {
            RecordBatch::try_new_with_options(
                self.schema.clone(),
                self.codec.decode(self.stored_rows())?,
                &RecordBatchOptions::new().with_row_count(Some(self.total as usize)),
            )?
        };
        *cached = Some(batch.clone());
        Ok(batch)
    }

    /// Checks a write to a table (NOT NULL columns, existing rows for retractions, primary
    /// key uniqueness) and applies it only if it passes, encoding its rows once. A refused
    /// write changes nothing; the error names the violated constraint. Returns the change
    /// as applied (consolidated for a relation with a primary key).
    pub fn check_and_apply(&mut self, change: &ChangeBatch) -> Result<ChangeBatch> {
        if change.is_empty() {
            return Ok(change.clone());
        }
        self.check_not_null(change)?;
        if self.key_codec.is_some() {
            return self.apply_keyed(change, true);
        }
        let rows = encode_rows(&self.codec, change.data.columns())?;
        self.check_retracted_rows(change, &rows)?;
        self.apply_rows(change, &rows);
        Ok(change.clone())
    }

    /// Applies a change without checks (the change is known to be valid). Returns the change
    /// as applied (consolidated for a relation with a primary key).
    pub fn apply(&mut self, change: &ChangeBatch) -> Result<ChangeBatch> {
        if change.is_empty() {
            return Ok(change.clone());
        }
        if self.key_codec.is_some() {
            return self.apply_keyed(change, false);
        }
        let rows = encode_rows(&self.codec, change.data.columns())?;
        self.apply_rows(change, &rows);
        Ok(change.clone())
    }

    fn check_not_null(&self, change: &ChangeBatch) -> Result<()> {
        for (i, field) in self.schema.fields().iter().enumerate() {
            if field.is_nullable() {
                continue;
            }
            let column = change.data.column(i);
            if column.null_count() == 0 {
                continue;
            }
            if (0..change.len()).any(|row| column.is_null(row) && change.weights[row] > 0) {
                return Err(EngineError::Constraint(format!(
                    "null value in column \"{}\" of relation \"{}\" violates not-null constraint",
                    field.name(),
                    self.name
                )));
            }
        }
        Ok(())
    }

    /// Checks that a relation without a primary key holds every row a change retracts.
    fn check_retracted_rows(&self, change: &ChangeBatch, rows: &Encoded) -> Result<()> {
        // Each row's net change, with the first place of the row in the change (a
        // consolidated change has each row once; one without retractions has none to check).
        let retracted: Vec<(&[u8], u32, i64)> = if change.is_consolidated() || change.weights.iter().all(|w| *w > 0) {
            let retractions = (0..change.len()).filter(|&i| change.weights[i] < 0);
            retractions.map(|i| (rows.get(i), i as u32, change.weights[i])).collect()
        } else {
            let mut row_changes: FxHashMap<&[u8], (u32, i64)> =
                FxHashMap::with_capacity_and_hasher(change.len(), Default::default());
            for (index, weight) in change.weights.iter().enumerate() {
                row_changes.entry(rows.get(index)).or_insert((index as u32, 0)).1 += weight;
            }
            let retractions = row_changes.into_iter().filter(|(_, (_, delta))| *delta < 0);
            retractions.map(|(row, (index, delta))| (row, index, delta)).collect()
        };
        for (row, index, delta) in retracted {
            if self.rows.get(row).copied().unwrap_or(0) + delta < 0 {
                return Err(self.conflict_error(change, Conflict::Missing(index)));
            }
        }
        Ok(())
    }

    /// Applies a change to a relation without a primary key.
    fn apply_rows(&mut self, change: &ChangeBatch, rows: &Encoded) {
        self.rows.reserve(change.weights.iter().filter(|w| **w > 0).count());
        for (index, weight) in change.weights.iter().enumerate() {
            add_count(&mut self.rows, rows.get(index), *weight);
        }
        self.total += change.weights.iter().sum::<i64>();
        self.forget_snapshot();
    }

    /// Applies a change to a relation with a primary key, one probe per key: strictly (a
    /// write to a table: a key must hold the row the change retracts, and no row when it
    /// inserts one without retracting, or nothing changes) or not. Returns the change
    /// consolidated.
    fn apply_keyed(&mut self, change: &ChangeBatch, strict: bool) -> Result<ChangeBatch> {
        let rows = encode_rows(&self.codec, change.data.columns())?;
        let keys = &self.keys_of(change, &rows)?;
        let net = net_change(&change.weights, &rows, &keys.encoded, &keys.hashes, strict, change.is_consolidated())
            .map_err(|conflict| self.conflict_error(change, conflict))?;
        // Checked before anything changes, so a refused change leaves the store whole.
        let (mut added, mut bytes) = (0, 0);
        for key_change in &net.keys {
            if let Some(after) = key_change.after {
                let size = key_change.key.len() + after.len();
                if !KeyIndex::fits(size) {
                    return Err(EngineError::Constraint(format!(
                        "relation \"{}\": {}",
                        self.name,
                        EntryTooLarge(size)
                    )));
                }
                // A strict change adds a key only where it retracts none.
                added += usize::from(key_change.before.is_none() || !strict);
                bytes += key_index::entry_size(key_change.key.len(), after.len());
            }
        }
        if self.keys.room_for(added, bytes).is_err() {
            // Dead entries count until a compaction drops them.
            self.keys.compact();
            self.keys
                .room_for(added, bytes)
                .map_err(|full| EngineError::Constraint(format!("relation \"{}\": {full}", self.name)))?;
        }
        let applied = self.keys.apply_changes(&net.keys, strict);
        if let Err(refusal) = applied {
            let conflict = match refusal {
                Refusal::NotHeld(position) => Conflict::Missing(net.rows[position]),
                Refusal::Taken(position) => Conflict::Duplicate(net.rows[position]),
            };
            return Err(self.conflict_error(change, conflict));
        }
        self.total = self.keys.len() as i64;
        self.forget_snapshot();
        let Some(remaining) = net.remaining else { return Ok(change.clone().consolidated_if(net.distinct)) };
        let indices = UInt32Array::from_iter_values(remaining.iter().map(|(row, _)| *row));
        let data = take_record_batch(&change.data, &indices)?;
        Ok(ChangeBatch::new(data, remaining.into_iter().map(|(_, weight)| weight).collect())?.consolidated_if(true))
    }

    /// The primary keys of a change whose rows are `rows`: their first bytes when the key
    /// leads the row at a fixed width, encoded apart otherwise.
    fn keys_of(&self, change: &ChangeBatch, rows: &Encoded) -> Result<Keys> {
        let encoded = match (self.key_prefix, rows) {
            (Some(width), Encoded::Bytes(rows)) => Encoded::Prefixes(rows.clone(), width),
            _ => {
                let key_codec = self
                    .key_codec
                    .as_ref()
                    .ok_or_else(|| EngineError::Internal("keys of a relation without a key".into()))?;
                let key_columns: Vec<_> = self.primary_key.iter().map(|&i| change.data.column(i).clone()).collect();
                encode_rows(key_codec, &key_columns)?
            }
        };
        let hashes = (0..change.len()).map(|i| key_index::hash(encoded.get(i))).collect();
        Ok(Keys { encoded, hashes })
    }

    /// The error for a change that does not fit the stored rows, naming the row by its key
    /// (or by all its columns without a key).
    fn conflict_error(&self, change: &ChangeBatch, conflict: Conflict) -> EngineError {
        let named = |row: u32, columns: &[usize]| {
            let names: Vec<&str> = columns.iter().map(|&i| self.schema.field(i).name().as_str()).collect();
            let values: Vec<String> = columns
                .iter()
                .map(|&i| array_value_to_string(change.data.column(i), row as usize).unwrap_or_else(|_| "?".into()))
                .collect();
            format!("({})=({})", names.join(", "), values.join(", "))
        };
        match conflict {
            Conflict::Missing(row) => {
                let all: Vec<usize> = (0..self.schema.fields().len()).collect();
                let (what, columns) =
                    if self.primary_key.is_empty() { ("row", &all[..]) } else { ("key", &self.primary_key[..]) };
                EngineError::Constraint(format!(
                    "a change to \"{}\" retracts a row it does not hold: {what} {}",
                    self.name,
                    named(row, columns)
                ))
            }
            Conflict::Duplicate(row) => EngineError::Constraint(format!(
                "duplicate key value violates unique constraint \"{}_pkey\": key {} already exists",
                self.name,
                named(row, &self.primary_key)
            )),
        }
    }

    fn forget_snapshot(&self) {
        if let Ok(mut cached) = self.snapshot.lock() {
            *cached = None;
        }
    }

    /// Heap bytes of the stored rows (the key index, or the row counts without a key).
    pub fn heap_bytes(&self) -> usize {
        self.keys.heap_bytes() + self.rows.heap_bytes()
    }

    pub fn primary_key(&self) -> &[usize] {
        &self.primary_key
    }

    pub(crate) fn key_codec(&self) -> Option<&RowCodec> {
        self.key_codec.as_ref()
    }

    /// The encoded row stored under an encoded primary key.
    pub(crate) fn row_for_key(&self, key: &[u8]) -> Option<&[u8]> {
        self.keys.get(key)
    }

    /// Every stored encoded row, repeated by its multiplicity.
    pub(crate) fn stored_rows(&self) -> Box<dyn Iterator<Item = &[u8]> + '_> {
        if self.key_codec.is_some() {
            Box::new(self.keys.values())
        } else {
            Box::new(
                self.rows.iter().flat_map(|(row, count)| std::iter::repeat_n(row.as_ref(), (*count).max(0) as usize)),
            )
        }
    }

    /// Decodes encoded rows of this relation into columns.
    pub(crate) fn decode_rows(&self, rows: &[&[u8]]) -> Result<Vec<datafusion::arrow::array::ArrayRef>> {
        if rows.is_empty() {
            return Ok(self
                .schema
                .fields()
                .iter()
                .map(|f| datafusion::arrow::array::new_empty_array(f.data_type()))
                .collect());
        }
        self.codec.decode(rows.iter().copied())
    }

    /// The rows whose primary key is one of `keys` (one column per key column), found through
    /// the key index without reading the rest of the table. None without a primary key.
    pub fn lookup(&self, keys: &[datafusion::arrow::array::ArrayRef]) -> Result<Option<RecordBatch>> {
        let Some(key_codec) = &self.key_codec else { return Ok(None) };
        let len = keys.first().map(|k| k.len()).unwrap_or(0);
        let encoded = encode_owned(key_codec, keys, len)?;
        let mut found: Vec<&[u8]> = encoded.iter().filter_map(|k| self.keys.get(k)).collect();
        found.sort();
        found.dedup();
        if found.is_empty() {
            return Ok(Some(RecordBatch::new_empty(self.schema.clone())));
        }
        let count = found.len();
        Ok(Some(RecordBatch::try_new_with_options(
            self.schema.clone(),
            self.codec.decode(found)?,
            &RecordBatchOptions::new().with_row_count(Some(count)),
        )?))
    }
}

/// A change's primary keys, encoded, with their hashes in the key index.
struct Keys {
    encoded: Encoded,
    hashes: Vec<u64>,
}

/// Adds `weight` to a multiplicity, dropping the entry at zero.
fn add_count(map: &mut FxHashMap<Box<[u8]>, i64>, key: &[u8], weight: i64) {
    match map.get_mut(key) {
        Some(count) => {
            *count += weight;
            if *count == 0 {
                map.remove(key);
            }
        }
        None => {
            map.insert(key.into(), weight);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Arc;

    use datafusion::arrow::array::{AsArray, Int64Array, StringArray};
    use datafusion::arrow::datatypes::{DataType, Field, Int64Type, Schema};

    use super::*;
    use crate::test_random::xorshift;

    /// A store keyed by `id BIGINT`, with a nullable `v TEXT`, and its schema.
    fn keyed_store() -> (SchemaRef, RelationStore) {
        let schema: SchemaRef = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("v", DataType::Utf8, true),
        ]));
        let store = RelationStore::new("t", Arc::clone(&schema), &[0]).expect("store");
        (schema, store)
    }

    /// A change of rows `(id, v, weight)` to a relation of `schema`.
    fn change_of(schema: &SchemaRef, rows: &[(i64, &str, i64)]) -> ChangeBatch {
        let data = RecordBatch::try_new(
            Arc::clone(schema),
            vec![
                Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.0))),
                Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.1))),
            ],
        )
        .expect("batch");
        ChangeBatch::new(data, rows.iter().map(|r| r.2).collect()).expect("change")
    }

    #[test]
    fn keys_read_off_the_rows_are_the_keys_lookups_encode() {
        use datafusion::arrow::array::{ArrayRef, Int32Array};

        // Keyed by (a INT, b BIGINT), NULLs allowed (a view's group key may be NULL): first in
        // the row (keys read off the rows) and last (keys encoded apart).
        let field = |name: &str, data_type: DataType| Field::new(name, data_type, true);
        let (a, b, v) = (field("a", DataType::Int32), field("b", DataType::Int64), field("v", DataType::Utf8));
        let leading: SchemaRef = Arc::new(Schema::new(vec![a.clone(), b.clone(), v.clone()]));
        let trailing: SchemaRef = Arc::new(Schema::new(vec![v, a, b]));
        let mut first = RelationStore::new("first", Arc::clone(&leading), &[0, 1]).expect("store");
        let mut last = RelationStore::new("last", Arc::clone(&trailing), &[1, 2]).expect("store");
        assert_eq!((first.key_prefix, last.key_prefix), (Some(5 + 9), None));
        let a: ArrayRef = Arc::new(Int32Array::from(vec![Some(1), None, Some(-3), Some(1)]));
        let b: ArrayRef = Arc::new(Int64Array::from(vec![Some(10), Some(20), None, Some(11)]));
        let v: ArrayRef = Arc::new(StringArray::from(vec!["x", "y", "z", "w"]));
        let insert = |schema: &SchemaRef, columns: Vec<ArrayRef>| {
            let data = RecordBatch::try_new(Arc::clone(schema), columns).expect("batch");
            ChangeBatch::new(data, vec![1; 4]).expect("change")
        };
        first.apply(&insert(&leading, vec![a.clone(), b.clone(), v.clone()])).expect("applies");
        last.apply(&insert(&trailing, vec![v.clone(), a.clone(), b.clone()])).expect("applies");
        for row in 0..4 {
            let key = [a.slice(row, 1), b.slice(row, 1)];
            let found_first = first.lookup(&key).expect("lookup").expect("keyed");
            let found_last = last.lookup(&key).expect("lookup").expect("keyed");
            assert_eq!(found_first.num_rows(), 1, "row {row} by its key");
            assert_eq!(found_first.column(2).as_ref(), v.slice(row, 1).as_ref(), "row {row}");
            assert_eq!(found_last.column(0).as_ref(), v.slice(row, 1).as_ref(), "row {row}");
        }
        // A retraction is matched by its key too.
        let retract = RecordBatch::try_new(Arc::clone(&leading), vec![a.slice(1, 1), b.slice(1, 1), v.slice(1, 1)]);
        first.apply(&ChangeBatch::new(retract.expect("batch"), vec![-1]).expect("change")).expect("applies");
        assert_eq!(first.len(), 3);
        assert_eq!(first.lookup(&[a.slice(1, 1), b.slice(1, 1)]).expect("lookup").expect("keyed").num_rows(), 0);
    }

    #[test]
    fn a_refused_write_names_the_row_by_its_key_or_its_columns() {
        let (schema, mut keyed) = keyed_store();
        keyed.check_and_apply(&change_of(&schema, &[(1, "a", 1)])).expect("insert");
        let error = keyed.check_and_apply(&change_of(&schema, &[(2, "b", -1)])).expect_err("not held").to_string();
        assert_eq!(error, "a change to \"t\" retracts a row it does not hold: key (id)=(2)");
        let error = keyed.check_and_apply(&change_of(&schema, &[(1, "c", 1)])).expect_err("taken").to_string();
        assert!(error.ends_with("key (id)=(1) already exists"), "{error}");
        let mut keyless = RelationStore::new("u", Arc::clone(&schema), &[]).expect("store");
        keyless.check_and_apply(&change_of(&schema, &[(1, "a", 1)])).expect("insert");
        // The second retraction of (1, a) in one change is the one that is not held.
        let change = change_of(&schema, &[(7, "x", 1), (1, "a", -1), (1, "a", -1)]);
        let error = keyless.check_and_apply(&change).expect_err("not held").to_string();
        assert_eq!(error, "a change to \"u\" retracts a row it does not hold: row (id, v)=(1, a)");
        assert_eq!(keyless.len(), 1, "a refused write changes nothing");
    }

    fn contents(store: &RelationStore) -> BTreeMap<i64, String> {
        let snapshot = store.snapshot().expect("snapshot");
        let ids = snapshot.column(0).as_primitive::<Int64Type>();
        let values = snapshot.column(1).as_string::<i32>();
        (0..snapshot.num_rows()).map(|i| (ids.value(i), values.value(i).to_string())).collect()
    }

    /// Random writes to a table with a primary key, some of them invalid (a key inserted
    /// twice, a row retracted that is not there): valid writes change the table as they change
    /// a map, refused ones change nothing.
    #[test]
    fn writes_agree_with_a_model_and_refused_writes_change_nothing() {
        let (schema, mut store) = keyed_store();
        let mut model: BTreeMap<i64, String> = BTreeMap::new();
        let mut next = xorshift(0x0bad_5eed_1234_5678);
        let (mut accepted, mut refused) = (0, 0);
        for step in 0..3_000 {
            // Mostly consistent operations (tracked in `planned`), some not.
            let mut rows: Vec<(i64, String, i64)> = Vec::new();
            let mut planned = model.clone();
            for _ in 0..(next() % 12) {
                let key = (next() % 40) as i64;
                // Values of several lengths: updates both overwrite in place and move entries.
                let value = "x".repeat((next() % 4) as usize) + &(next() % 5).to_string();
                match (next() % 10, planned.get(&key).cloned()) {
                    // A retraction of a row that is probably not there.
                    (0, _) => rows.push((key, value, -1)),
                    // An insertion under a key that is there.
                    (1, Some(_)) => rows.push((key, value, 1)),
                    // An update that changes nothing: the same row out and in.
                    (2, Some(held)) => rows.extend([(key, held.clone(), -1), (key, held, 1)]),
                    (3..=5, Some(held)) => {
                        rows.extend([(key, held, -1), (key, value.clone(), 1)]);
                        planned.insert(key, value);
                    }
                    (_, Some(held)) => {
                        rows.push((key, held, -1));
                        planned.remove(&key);
                    }
                    (_, None) => {
                        rows.push((key, value.clone(), 1));
                        planned.insert(key, value);
                    }
                }
            }
            // What the write means, whatever the order of its rows: each key's rows after it
            // (the row it held plus the net change) must be at most one row, each once.
            let mut counts: BTreeMap<(i64, String), i64> = BTreeMap::new();
            for (key, value) in &model {
                *counts.entry((*key, value.clone())).or_default() += 1;
            }
            for (key, value, weight) in &rows {
                *counts.entry((*key, value.clone())).or_default() += weight;
            }
            let mut after: BTreeMap<i64, String> = BTreeMap::new();
            let mut valid = true;
            for ((key, value), count) in counts {
                match count {
                    0 => {}
                    1 => valid &= after.insert(key, value).is_none(),
                    _ => valid = false,
                }
            }
            let data = RecordBatch::try_new(
                Arc::clone(&schema),
                vec![
                    Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.0))),
                    Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.1.as_str()))),
                ],
            )
            .expect("batch");
            let change = ChangeBatch::new(data, rows.iter().map(|r| r.2).collect()).expect("change");
            match store.check_and_apply(&change) {
                Ok(applied) => {
                    assert!(valid, "step {step}: an invalid write was accepted: {rows:?}");
                    assert!(applied.is_consolidated() || applied.is_empty(), "step {step}");
                    model = after;
                    accepted += 1;
                }
                Err(error) => {
                    assert!(!valid, "step {step}: a valid write was refused ({error}): {rows:?}");
                    refused += 1;
                }
            }
            assert_eq!(contents(&store), model, "step {step}");
            assert_eq!(store.len(), model.len() as i64, "step {step}");
        }
        assert!(accepted > 1_000 && refused > 300, "both kinds of write occurred: {accepted} / {refused}");
    }

    /// An unchecked change that names a row twice (not consistent, but not refused either)
    /// comes back without the consolidated flag: the flag promises distinct rows.
    #[test]
    fn an_unchecked_change_with_a_row_twice_is_not_called_consolidated() {
        let (schema, mut store) = keyed_store();
        let data = RecordBatch::try_new(
            Arc::clone(&schema),
            vec![Arc::new(Int64Array::from(vec![1, 1])), Arc::new(StringArray::from(vec!["a", "a"]))],
        )
        .expect("batch");
        let applied = store.apply(&ChangeBatch::inserts(data.clone())).expect("applies");
        assert!(!applied.is_consolidated());
        assert_eq!(store.len(), 1);
        // Checked, the same change is refused; a change with one row per key is consolidated.
        let error = store.check_and_apply(&ChangeBatch::inserts(data)).expect_err("duplicate key");
        assert!(error.to_string().contains("duplicate key"), "{error}");
        let fresh = RecordBatch::try_new(
            Arc::clone(&schema),
            vec![Arc::new(Int64Array::from(vec![2, 3])), Arc::new(StringArray::from(vec!["b", "c"]))],
        )
        .expect("batch");
        assert!(store.check_and_apply(&ChangeBatch::inserts(fresh)).expect("fresh keys").is_consolidated());
    }
}
