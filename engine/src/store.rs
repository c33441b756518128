//! Stored relation contents: a multiset of encoded rows (tables, materialized views, source
//! relations), with primary-key and NOT NULL checks for writes to tables, and a cached Arrow
//! snapshot for queries.

use std::sync::Mutex;

use datafusion::arrow::array::{Array, RecordBatch, RecordBatchOptions};
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::util::display::array_value_to_string;
use rustc_hash::FxHashMap;

use crate::change::ChangeBatch;
use crate::error::{EngineError, Result};
use crate::key_index::{self, EntryTooLarge, KeyIndex};
use crate::rows::{Encoded, RowCodec, encode_owned, encode_rows};

pub struct RelationStore {
    name: String,
    schema: SchemaRef,
    codec: RowCodec,
    /// Row -> multiplicity, for relations without a primary key.
    rows: FxHashMap<Box<[u8]>, i64>,
    primary_key: Vec<usize>,
    key_codec: Option<RowCodec>,
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
        Ok(Self {
            name: name.to_string(),
            codec: RowCodec::for_schema(&schema)?,
            schema,
            rows: FxHashMap::default(),
            primary_key: primary_key.to_vec(),
            key_codec,
            keys: KeyIndex::default(),
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
    /// as applied (consolidated when it had to be).
    pub fn check_and_apply(&mut self, change: &ChangeBatch) -> Result<ChangeBatch> {
        if change.is_empty() {
            return Ok(change.clone());
        }
        let (change, encoded) = self.consolidated_and_encoded(change)?;
        self.check_encoded(&change, &encoded)?;
        self.apply_encoded(&change, &encoded)?;
        Ok(change)
    }

    fn encode(&self, change: &ChangeBatch) -> Result<EncodedChange> {
        let rows = encode_rows(&self.codec, change.data.columns())?;
        Ok(EncodedChange { rows, keys: self.encode_keys(change)? })
    }

    fn encode_keys(&self, change: &ChangeBatch) -> Result<Option<Keys>> {
        let Some(key_codec) = &self.key_codec else { return Ok(None) };
        let key_columns: Vec<_> = self.primary_key.iter().map(|&i| change.data.column(i).clone()).collect();
        let encoded = encode_rows(key_codec, &key_columns)?;
        let hashes = (0..change.len()).map(|i| key_index::hash(encoded.get(i))).collect();
        Ok(Some(Keys { encoded, hashes }))
    }

    fn check_encoded(&self, change: &ChangeBatch, encoded: &EncodedChange) -> Result<()> {
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
        let rows = &encoded.rows;
        // Each row's net change and where it first occurs (a consolidated change has each
        // row once; one without retractions has none to check).
        let retracted: Vec<(&[u8], i64, usize)> = if change.is_consolidated() || change.weights.iter().all(|w| *w > 0) {
            (0..change.len()).filter(|&i| change.weights[i] < 0).map(|i| (rows.get(i), change.weights[i], i)).collect()
        } else {
            let mut row_changes: FxHashMap<&[u8], (i64, usize)> =
                FxHashMap::with_capacity_and_hasher(change.len(), Default::default());
            for (index, weight) in change.weights.iter().enumerate() {
                row_changes.entry(rows.get(index)).or_insert((0, index)).0 += weight;
            }
            row_changes.into_iter().filter(|(_, (delta, _))| *delta < 0).map(|(row, (d, i))| (row, d, i)).collect()
        };
        let hashes: Vec<u64> = match &encoded.keys {
            Some(keys) => retracted.iter().map(|(_, _, index)| keys.hashes[*index]).collect(),
            None => Vec::new(),
        };
        for (position, &(row, delta, index)) in retracted.iter().enumerate() {
            let stored = match &encoded.keys {
                Some(keys) => {
                    self.keys.prefetch_ahead(&hashes, position);
                    (self.keys.get_hashed(hashes[position], keys.get(index)) == Some(row)) as i64
                }
                None => self.rows.get(row).copied().unwrap_or(0),
            };
            if stored + delta < 0 {
                return Err(EngineError::Internal(format!(
                    "a row of \"{}\" was deleted that does not exist",
                    self.name
                )));
            }
        }
        if let Some(keys) = &encoded.keys {
            let key_columns: Vec<_> = self.primary_key.iter().map(|&i| change.data.column(i).clone()).collect();
            let mut key_changes: FxHashMap<&[u8], (i64, usize)> =
                FxHashMap::with_capacity_and_hasher(change.len(), Default::default());
            for (row, weight) in change.weights.iter().enumerate() {
                let entry = key_changes.entry(keys.get(row)).or_insert((0, row));
                entry.0 += weight;
                if *weight > 0 {
                    entry.1 = row;
                }
            }
            let inserted: Vec<(&[u8], i64, usize)> =
                key_changes.into_iter().filter(|(_, (delta, _))| *delta > 0).map(|(k, (d, r))| (k, d, r)).collect();
            let hashes: Vec<u64> = inserted.iter().map(|(_, _, row)| keys.hashes[*row]).collect();
            for (position, &(key, delta, row)) in inserted.iter().enumerate() {
                self.keys.prefetch_ahead(&hashes, position);
                if self.keys.get_hashed(hashes[position], key).is_some() as i64 + delta > 1 {
                    let columns: Vec<String> =
                        self.primary_key.iter().map(|&i| self.schema.field(i).name().clone()).collect();
                    let values: Vec<String> = key_columns
                        .iter()
                        .map(|c| array_value_to_string(c, row).unwrap_or_else(|_| "?".into()))
                        .collect();
                    return Err(EngineError::Constraint(format!(
                        "duplicate key value violates unique constraint \"{}_pkey\": key ({})=({}) already exists",
                        self.name,
                        columns.join(", "),
                        values.join(", ")
                    )));
                }
            }
        }
        Ok(())
    }

    /// Applies a change without checks (the change is known to be valid). Returns the change
    /// as applied (consolidated when it had to be).
    pub fn apply(&mut self, change: &ChangeBatch) -> Result<ChangeBatch> {
        if change.is_empty() {
            return Ok(change.clone());
        }
        let (change, encoded) = self.consolidated_and_encoded(change)?;
        self.apply_encoded(&change, &encoded)?;
        Ok(change)
    }

    /// The change ready to apply, and its rows and keys encoded. The key index applies
    /// retractions before insertions, which is right only when no row is both inserted and
    /// retracted in the same change: such a change is consolidated first (encoding its rows
    /// once for both).
    fn consolidated_and_encoded(&self, change: &ChangeBatch) -> Result<(ChangeBatch, EncodedChange)> {
        let needs_consolidation = self.key_codec.is_some()
            && self.codec.width() > 0
            && !change.is_consolidated()
            && change.weights.iter().any(|w| *w < 0);
        if !needs_consolidation {
            return Ok((change.clone(), self.encode(change)?));
        }
        let (change, rows) = change.consolidate_encoded(&self.codec)?;
        let keys = self.encode_keys(&change)?;
        Ok((change, EncodedChange { rows: Encoded::Rows(rows), keys }))
    }

    fn apply_encoded(&mut self, change: &ChangeBatch, encoded: &EncodedChange) -> Result<()> {
        let rows = &encoded.rows;
        let insertions = change.weights.iter().filter(|w| **w > 0).count();
        // A relation with a primary key keeps its rows in the key index only.
        if let Some(keys) = &encoded.keys {
            // Checked before anything changes, so a refused change leaves the store whole.
            for (index, weight) in change.weights.iter().enumerate() {
                let size = keys.get(index).len() + rows.get(index).len();
                if *weight > 0 && !KeyIndex::fits(size) {
                    return Err(EngineError::Constraint(format!(
                        "relation \"{}\": {}",
                        self.name,
                        EntryTooLarge(size)
                    )));
                }
            }
            self.keys.reserve(insertions);
            // Insertions first, replacing the row stored under their key (in place when the
            // size is the same), then retractions of rows still stored: an update's retraction
            // finds its key holding the new row and leaves it. (A consolidated change never
            // retracts and inserts the same row.)
            let (retracted, inserted): (Vec<usize>, Vec<usize>) =
                (0..change.len()).partition(|&index| change.weights[index] < 0);
            let hashes: Vec<u64> = inserted.iter().map(|&index| keys.hashes[index]).collect();
            for (position, &index) in inserted.iter().enumerate() {
                self.keys.prefetch_ahead(&hashes, position);
                self.keys
                    .insert_hashed(hashes[position], keys.get(index), rows.get(index))
                    .map_err(|e| EngineError::Internal(format!("relation \"{}\": {e}", self.name)))?;
            }
            let hashes: Vec<u64> = retracted.iter().map(|&index| keys.hashes[index]).collect();
            for (position, &index) in retracted.iter().enumerate() {
                self.keys.prefetch_ahead(&hashes, position);
                self.keys.remove_row_hashed(hashes[position], keys.get(index), rows.get(index));
            }
        } else {
            self.rows.reserve(insertions);
            for (index, weight) in change.weights.iter().enumerate() {
                add_count(&mut self.rows, rows.get(index), *weight);
            }
        }
        self.total += change.weights.iter().sum::<i64>();
        if let Ok(mut cached) = self.snapshot.lock() {
            *cached = None;
        }
        Ok(())
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

/// A change's rows and primary keys, encoded.
struct EncodedChange {
    rows: Encoded,
    keys: Option<Keys>,
}

/// A change's primary keys, encoded, with their hashes in the key index.
struct Keys {
    encoded: Encoded,
    hashes: Vec<u64>,
}

impl Keys {
    fn get(&self, index: usize) -> &[u8] {
        self.encoded.get(index)
    }
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
