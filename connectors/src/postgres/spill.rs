//! Large transactions spilled to disk: while a transaction is gathered, every
//! `spill_operations` operations are written as a part (Arrow IPC files: the tuples, the
//! operations, the TOAST-unchanged cells) to a temp directory, so memory holds one part at a
//! time. At commit the parts are read back in order and the engine applies them within one
//! epoch. The directory is removed when the parts are dropped.

use std::fs::File;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use changeflow_engine::connector::{SourceChanges, TransactionParts};
use changeflow_engine::keyed::{KeyedChanges, RowOp};
use datafusion::arrow::array::{Array, RecordBatch, UInt8Array, UInt32Array};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::arrow::ipc::reader::FileReader;
use datafusion::arrow::ipc::writer::FileWriter;

use super::error::PgError;

static SPILLS: AtomicU64 = AtomicU64::new(0);

/// A transaction's parts on disk, plus the last part still in memory.
pub struct Spill {
    dir: PathBuf,
    /// Relations of each written part, in order.
    parts: Vec<Vec<String>>,
    last: Option<Vec<(String, SourceChanges)>>,
    next: usize,
    operations: usize,
}

impl Spill {
    pub fn new(source: &str) -> Result<Self, PgError> {
        let dir = std::env::temp_dir().join(format!(
            "changeflow-spill-{}-{source}-{}",
            std::process::id(),
            SPILLS.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir)
            .map_err(|e| PgError::Value(format!("cannot create spill directory {}: {e}", dir.display())))?;
        Ok(Self { dir, parts: Vec::new(), last: None, next: 0, operations: 0 })
    }

    pub fn operations(&self) -> usize {
        self.operations
    }

    /// Writes one part to disk.
    pub fn write_part(&mut self, changes: Vec<(String, SourceChanges)>) -> Result<(), PgError> {
        let part = self.parts.len();
        let mut relations = Vec::with_capacity(changes.len());
        for (index, (relation, change)) in changes.into_iter().enumerate() {
            let SourceChanges::Keyed(keyed) = change else {
                return Err(PgError::protocol("only keyed changes are spilled"));
            };
            self.operations += keyed.ops.len();
            write_batch(&self.path(part, index, "rows"), &keyed.rows)?;
            write_batch(&self.path(part, index, "ops"), &encode_ops(&keyed.ops)?)?;
            write_batch(&self.path(part, index, "unchanged"), &encode_unchanged(&keyed.unchanged)?)?;
            relations.push(relation);
        }
        self.parts.push(relations);
        Ok(())
    }

    /// Keeps the final part in memory; the spill is then read back as the transaction.
    pub fn finish(mut self, last: Vec<(String, SourceChanges)>) -> Self {
        self.operations += last.iter().map(|(_, c)| c.len()).sum::<usize>();
        self.last = Some(last);
        self
    }

    fn path(&self, part: usize, index: usize, kind: &str) -> PathBuf {
        self.dir.join(format!("part-{part:06}-{index:03}-{kind}.arrow"))
    }

    fn read_part(&self, part: usize) -> Result<Vec<(String, SourceChanges)>, PgError> {
        let mut changes = Vec::new();
        for (index, relation) in self.parts[part].iter().enumerate() {
            let rows = read_batch(&self.path(part, index, "rows"))?;
            let ops = decode_ops(&read_batch(&self.path(part, index, "ops"))?)?;
            let unchanged = decode_unchanged(&read_batch(&self.path(part, index, "unchanged"))?)?;
            changes.push((relation.clone(), SourceChanges::Keyed(KeyedChanges { rows, ops, unchanged })));
            for kind in ["rows", "ops", "unchanged"] {
                let _ = std::fs::remove_file(self.path(part, index, kind));
            }
        }
        Ok(changes)
    }
}

#[async_trait]
impl TransactionParts for Spill {
    async fn next_part(&mut self) -> changeflow_engine::Result<Option<Vec<(String, SourceChanges)>>> {
        if self.next < self.parts.len() {
            self.next += 1;
            return Ok(Some(self.read_part(self.next - 1)?));
        }
        Ok(self.last.take())
    }
}

impl Drop for Spill {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn write_batch(path: &PathBuf, batch: &RecordBatch) -> Result<(), PgError> {
    let failed = |e: &dyn std::fmt::Display| PgError::Value(format!("cannot spill to {}: {e}", path.display()));
    let file = File::create(path).map_err(|e| failed(&e))?;
    let mut writer = FileWriter::try_new(file, &batch.schema()).map_err(|e| failed(&e))?;
    writer.write(batch).map_err(|e| failed(&e))?;
    writer.finish().map_err(|e| failed(&e))
}

fn read_batch(path: &PathBuf) -> Result<RecordBatch, PgError> {
    let failed = |e: &dyn std::fmt::Display| PgError::Value(format!("cannot read spilled {}: {e}", path.display()));
    let file = File::open(path).map_err(|e| failed(&e))?;
    let mut reader = FileReader::try_new(file, None).map_err(|e| failed(&e))?;
    let schema = reader.schema();
    match reader.next() {
        Some(batch) => batch.map_err(|e| failed(&e)),
        None => Ok(RecordBatch::new_empty(schema)),
    }
}

fn ops_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("kind", DataType::UInt8, false),
        Field::new("row", DataType::UInt32, false),
        Field::new("old", DataType::UInt32, true),
    ]))
}

fn encode_ops(ops: &[RowOp]) -> Result<RecordBatch, PgError> {
    let (mut kinds, mut rows, mut olds) = (Vec::new(), Vec::new(), Vec::new());
    for op in ops {
        let (kind, row, old) = match *op {
            RowOp::Insert(row) => (0u8, row, None),
            RowOp::Update { old, new } => (1, new, old),
            RowOp::Delete(row) => (2, row, None),
            RowOp::Truncate => (3, 0, None),
        };
        kinds.push(kind);
        rows.push(row);
        olds.push(old);
    }
    Ok(RecordBatch::try_new(
        ops_schema(),
        vec![Arc::new(UInt8Array::from(kinds)), Arc::new(UInt32Array::from(rows)), Arc::new(UInt32Array::from(olds))],
    )?)
}

fn decode_ops(batch: &RecordBatch) -> Result<Vec<RowOp>, PgError> {
    let column = |i: usize| batch.column(i).as_any();
    let (Some(kinds), Some(rows), Some(olds)) = (
        column(0).downcast_ref::<UInt8Array>(),
        column(1).downcast_ref::<UInt32Array>(),
        column(2).downcast_ref::<UInt32Array>(),
    ) else {
        return Err(PgError::protocol("spilled operations have the wrong types"));
    };
    (0..batch.num_rows())
        .map(|i| {
            let old = olds.is_valid(i).then(|| olds.value(i));
            Ok(match kinds.value(i) {
                0 => RowOp::Insert(rows.value(i)),
                1 => RowOp::Update { old, new: rows.value(i) },
                2 => RowOp::Delete(rows.value(i)),
                3 => RowOp::Truncate,
                other => return Err(PgError::protocol(format!("spilled operation kind {other}"))),
            })
        })
        .collect()
}

fn encode_unchanged(cells: &[(u32, u32)]) -> Result<RecordBatch, PgError> {
    let schema = Arc::new(Schema::new(vec![
        Field::new("row", DataType::UInt32, false),
        Field::new("column", DataType::UInt32, false),
    ]));
    Ok(RecordBatch::try_new(
        schema,
        vec![
            Arc::new(UInt32Array::from(cells.iter().map(|c| c.0).collect::<Vec<_>>())),
            Arc::new(UInt32Array::from(cells.iter().map(|c| c.1).collect::<Vec<_>>())),
        ],
    )?)
}

fn decode_unchanged(batch: &RecordBatch) -> Result<Vec<(u32, u32)>, PgError> {
    let (Some(rows), Some(columns)) = (
        batch.column(0).as_any().downcast_ref::<UInt32Array>(),
        batch.column(1).as_any().downcast_ref::<UInt32Array>(),
    ) else {
        return Err(PgError::protocol("spilled cells have the wrong types"));
    };
    Ok(rows.values().iter().copied().zip(columns.values().iter().copied()).collect())
}
