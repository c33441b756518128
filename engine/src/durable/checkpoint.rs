//! Checkpoints: one file holding everything needed to rebuild the engine without the journal
//! before it: the live objects' definitions, the contents of every base relation (local
//! tables and source relations, as Arrow IPC), every materialized view's contents and
//! operator state (groups and accumulators, join arrangements, top-k rows: see
//! `operator::state`), each source's progress and what it created upstream, the epoch, and
//! the journal segment that continues after it.
//!
//! Layout: `CFCKPT01`, manifest length (u64 LE), manifest (JSON), then per relation of the
//! manifest its IPC stream, then per view its contents and each of its state batches (every
//! stream preceded by its u64 LE length), and a CRC-32 of all the bytes before it.
//! Written to a temporary file, fsynced, renamed into place, directory fsynced: a crash
//! leaves the old checkpoint or the new one, never half of one. The two newest are kept, so
//! a damaged newest one falls back to the one before.
//!
//! A restart loads views from their state, without recomputing them. A checkpoint without a
//! view's state (written by an older version, or while the view had failed) rebuilds the
//! views from the restored inputs instead, as the initial load of CREATE MATERIALIZED VIEW
//! does, which gives the same contents.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use datafusion::arrow::array::RecordBatch;
use serde_json::{Value, json};

use super::definitions::Definition;
use super::ipc::{decode_batches, encode_batches};
use super::journal::sync_dir;
use crate::connector::{Progress, SourceResume};
use crate::error::{EngineError, Result};

const MAGIC: &[u8; 8] = b"CFCKPT01";
const KEEP: usize = 2;

/// What a checkpoint holds.
#[derive(Debug, Clone, Default)]
pub(crate) struct Checkpoint {
    pub epoch: u64,
    /// The first journal segment written after this checkpoint was taken.
    pub journal_from: u64,
    pub definitions: Vec<Definition>,
    pub sources: BTreeMap<String, SourceResume>,
    /// Each sink's position when everything up to this checkpoint was delivered.
    pub sinks: BTreeMap<String, String>,
    /// Statements of startup files that took effect (see `Database::run_startup`).
    pub startup: Vec<String>,
    /// Contents of the base relations.
    pub relations: Vec<(String, RecordBatch)>,
    /// Contents and operator state of the materialized views.
    pub views: Vec<ViewState>,
}

/// A materialized view's contents and its dataflow's operator state, at the checkpoint.
#[derive(Debug, Clone)]
pub(crate) struct ViewState {
    pub name: String,
    pub contents: RecordBatch,
    /// The batches of `Operator::save_state`, in its order.
    pub operators: Vec<RecordBatch>,
}

/// A checkpoint file on disk.
#[derive(Debug, Clone)]
pub(crate) struct CheckpointFile {
    pub number: u64,
    pub path: PathBuf,
}

fn durability(what: &str, path: &Path, error: impl std::fmt::Display) -> EngineError {
    EngineError::Durability(format!("{what} {}: {error}", path.display()))
}

impl Checkpoint {
    fn manifest(&self) -> Result<Value> {
        let sources: serde_json::Map<String, Value> = self
            .sources
            .iter()
            .map(|(name, resume)| {
                let progress = resume.progress.as_ref().map(|p| p.0.clone());
                (name.clone(), json!({ "progress": progress, "upstream": resume.upstream }))
            })
            .collect();
        Ok(json!({
            "version": 2,
            "epoch": self.epoch,
            "journal_from": self.journal_from,
            "definitions": self.definitions.iter().map(Definition::to_json).collect::<Result<Vec<_>>>()?,
            "sources": sources,
            "sinks": self.sinks,
            "startup": self.startup,
            "relations": self.relations.iter().map(|(name, _)| name.clone()).collect::<Vec<_>>(),
            "views": self.views.iter().map(|v| json!({ "name": v.name, "operators": v.operators.len() })).collect::<Vec<_>>(),
        }))
    }

    /// The file's bytes.
    pub(crate) fn encode(&self) -> Result<Vec<u8>> {
        let manifest = serde_json::to_vec(&self.manifest()?)
            .map_err(|e| EngineError::Internal(format!("encoding a checkpoint manifest: {e}")))?;
        let mut out = Vec::new();
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&(manifest.len() as u64).to_le_bytes());
        out.extend_from_slice(&manifest);
        let batches = self
            .relations
            .iter()
            .map(|(_, batch)| batch)
            .chain(self.views.iter().flat_map(|view| std::iter::once(&view.contents).chain(view.operators.iter())));
        for batch in batches {
            let bytes = encode_batches(&batch.schema(), std::slice::from_ref(batch))?;
            out.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
            out.extend_from_slice(&bytes);
        }
        let crc = crc32fast::hash(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        Ok(out)
    }

    pub(crate) fn decode(bytes: &[u8], path: &Path) -> Result<Self> {
        let corrupt = |why: &str| EngineError::Durability(format!("checkpoint {} is damaged: {why}", path.display()));
        if bytes.len() < MAGIC.len() + 12 || &bytes[..MAGIC.len()] != MAGIC {
            return Err(corrupt("it does not start like a changeflow checkpoint"));
        }
        let (body, crc) = bytes.split_at(bytes.len() - 4);
        let expected = u32::from_le_bytes([crc[0], crc[1], crc[2], crc[3]]);
        if crc32fast::hash(body) != expected {
            return Err(corrupt("its checksum does not match its contents"));
        }
        let mut at = MAGIC.len();
        let mut section = || -> Result<&[u8]> {
            let len_bytes = body.get(at..at + 8).ok_or_else(|| corrupt("a section is cut short"))?;
            let len = u64::from_le_bytes(len_bytes.try_into().map_err(|_| corrupt("bad length"))?) as usize;
            let slice = body.get(at + 8..at + 8 + len).ok_or_else(|| corrupt("a section is cut short"))?;
            at += 8 + len;
            Ok(slice)
        };
        let manifest: Value =
            serde_json::from_slice(section()?).map_err(|e| corrupt(&format!("its manifest is not JSON: {e}")))?;
        let number = |key: &str| manifest.get(key).and_then(Value::as_u64).ok_or_else(|| corrupt(key));
        let definitions = manifest
            .get("definitions")
            .and_then(Value::as_array)
            .ok_or_else(|| corrupt("no definitions"))?
            .iter()
            .map(Definition::from_json)
            .collect::<Result<Vec<_>>>()?;
        let mut sources = BTreeMap::new();
        for (name, source) in manifest.get("sources").and_then(Value::as_object).into_iter().flatten() {
            let text = |key: &str| source.get(key).and_then(Value::as_str).map(str::to_string);
            sources.insert(
                name.clone(),
                SourceResume { progress: text("progress").map(Progress), upstream: text("upstream") },
            );
        }
        let sinks = manifest
            .get("sinks")
            .and_then(Value::as_object)
            .into_iter()
            .flatten()
            .filter_map(|(name, position)| Some((name.clone(), position.as_str()?.to_string())))
            .collect();
        let startup = manifest
            .get("startup")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|k| k.as_str().map(str::to_string))
            .collect();
        let names: Vec<String> = manifest
            .get("relations")
            .and_then(Value::as_array)
            .ok_or_else(|| corrupt("no relations"))?
            .iter()
            .filter_map(|n| n.as_str().map(str::to_string))
            .collect();
        let mut next_batch = || -> Result<RecordBatch> {
            let (schema, batches) = decode_batches(section()?)?;
            Ok(datafusion::arrow::compute::concat_batches(&schema, &batches)?)
        };
        let mut relations = Vec::with_capacity(names.len());
        for name in names {
            relations.push((name, next_batch()?));
        }
        // Version 1 checkpoints hold no view state.
        let mut views = Vec::new();
        for view in manifest.get("views").and_then(Value::as_array).into_iter().flatten() {
            let name = view.get("name").and_then(Value::as_str).ok_or_else(|| corrupt("a view without a name"))?;
            let count = view.get("operators").and_then(Value::as_u64).ok_or_else(|| corrupt("a view's state"))?;
            let contents = next_batch()?;
            let operators = (0..count).map(|_| next_batch()).collect::<Result<Vec<_>>>()?;
            views.push(ViewState { name: name.to_string(), contents, operators });
        }
        Ok(Self {
            epoch: number("epoch")?,
            journal_from: number("journal_from")?,
            definitions,
            sources,
            sinks,
            startup,
            relations,
            views,
        })
    }
}

/// The checkpoint files in `dir`, oldest first.
pub(crate) fn list(dir: &Path) -> Result<Vec<CheckpointFile>> {
    let mut found = Vec::new();
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(found),
        Err(error) => return Err(durability("reading", dir, error)),
    };
    for entry in entries {
        let entry = entry.map_err(|e| durability("reading", dir, e))?;
        let name = entry.file_name();
        let number = name
            .to_str()
            .and_then(|n| n.strip_prefix("checkpoint-"))
            .and_then(|n| n.strip_suffix(".cfck"))
            .and_then(|n| n.parse().ok());
        if let Some(number) = number {
            found.push(CheckpointFile { number, path: entry.path() });
        }
    }
    found.sort_by_key(|f| f.number);
    Ok(found)
}

/// Writes a checkpoint atomically as the newest one; returns its file and size in bytes.
pub(crate) fn write(dir: &Path, checkpoint: &Checkpoint) -> Result<(CheckpointFile, u64)> {
    fs::create_dir_all(dir).map_err(|e| durability("creating", dir, e))?;
    let number = list(dir)?.last().map_or(1, |f| f.number + 1);
    let path = dir.join(format!("checkpoint-{number:010}.cfck"));
    let temp = dir.join(format!("checkpoint-{number:010}.tmp"));
    let bytes = checkpoint.encode()?;
    let mut file = File::create(&temp).map_err(|e| durability("creating", &temp, e))?;
    file.write_all(&bytes).and_then(|_| file.sync_all()).map_err(|e| durability("writing", &temp, e))?;
    drop(file);
    fs::rename(&temp, &path).map_err(|e| durability("renaming", &temp, e))?;
    sync_dir(dir)?;
    Ok((CheckpointFile { number, path }, bytes.len() as u64))
}

/// Removes all but the two newest checkpoints (and leftover temporary files); returns the
/// kept ones, oldest first.
pub(crate) fn prune(dir: &Path) -> Result<Vec<CheckpointFile>> {
    let mut files = list(dir)?;
    let removed = files.len().saturating_sub(KEEP);
    for file in files.drain(..removed) {
        fs::remove_file(&file.path).map_err(|e| durability("removing", &file.path, e))?;
    }
    if let Ok(entries) = fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.path().extension().is_some_and(|e| e == "tmp") {
                let _ = fs::remove_file(entry.path());
            }
        }
    }
    Ok(files)
}

/// Reads a checkpoint file.
pub(crate) fn read(file: &CheckpointFile) -> Result<Checkpoint> {
    let bytes = fs::read(&file.path).map_err(|e| durability("reading", &file.path, e))?;
    Checkpoint::decode(&bytes, &file.path)
}

/// The newest readable checkpoint: a damaged newer one is skipped with a warning. An error
/// when checkpoints exist and none can be read (nothing is silently reset).
pub(crate) fn load_newest(dir: &Path) -> Result<Option<(CheckpointFile, Checkpoint)>> {
    let files = list(dir)?;
    let mut problems = Vec::new();
    for file in files.iter().rev() {
        match read(file) {
            Ok(checkpoint) => {
                if !problems.is_empty() {
                    tracing::warn!(checkpoint = %file.path.display(), skipped = %problems.join("; "), "the newest checkpoint is damaged; falling back to an older one");
                    // Set the damaged ones aside (kept for inspection): they must not count
                    // as the newest again.
                    for newer in files.iter().filter(|f| f.number > file.number) {
                        let _ = fs::rename(&newer.path, newer.path.with_extension("damaged"));
                    }
                }
                return Ok(Some((file.clone(), checkpoint)));
            }
            Err(error) => problems.push(error.to_string()),
        }
    }
    if problems.is_empty() {
        return Ok(None);
    }
    Err(EngineError::Durability(format!(
        "no checkpoint in {} can be read ({}). Restore the data directory from a backup, or move it away to \
         start empty (sources then take a new snapshot)",
        dir.display(),
        problems.join("; ")
    )))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use datafusion::arrow::array::Int32Array;
    use datafusion::arrow::datatypes::{DataType, Field, Schema};

    use super::*;

    fn sample(rows: Vec<i32>) -> Checkpoint {
        let schema = Arc::new(Schema::new(vec![Field::new("id", DataType::Int32, false)]));
        let batch = RecordBatch::try_new(schema, vec![Arc::new(Int32Array::from(rows))]).expect("batch");
        let mut sources = BTreeMap::new();
        sources.insert(
            "core".to_string(),
            SourceResume { progress: Some(Progress("0/16B3748".into())), upstream: Some("slot".into()) },
        );
        Checkpoint {
            epoch: 7,
            journal_from: 3,
            definitions: vec![Definition {
                name: "t".into(),
                sql: "CREATE TABLE t (id INT)".into(),
                relations: vec![],
            }],
            sources,
            sinks: BTreeMap::new(),
            startup: Vec::new(),
            relations: vec![("t".into(), batch.clone())],
            views: vec![ViewState { name: "v".into(), contents: batch.clone(), operators: vec![batch.clone(), batch] }],
        }
    }

    #[test]
    fn a_damaged_newest_checkpoint_falls_back_to_the_one_before() {
        let dir = std::env::temp_dir().join(format!("changeflow-ckpt-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        write(&dir, &sample(vec![1, 2])).expect("first");
        let (newest, _) = write(&dir, &sample(vec![1, 2, 3])).expect("second");
        write(&dir, &sample(vec![1, 2, 3, 4])).expect("third");
        assert_eq!(prune(&dir).expect("prune").len(), 2);
        let (file, loaded) = load_newest(&dir).expect("load").expect("some");
        assert_eq!(loaded.relations[0].1.num_rows(), 4);
        assert_eq!(loaded.sources["core"].progress, Some(Progress("0/16B3748".into())));
        assert_eq!(loaded.definitions[0].sql, "CREATE TABLE t (id INT)");
        assert_eq!(loaded.views.len(), 1);
        assert_eq!((loaded.views[0].contents.num_rows(), loaded.views[0].operators.len()), (4, 2));
        let mut bytes = fs::read(&file.path).expect("read");
        let middle = bytes.len() / 2;
        bytes[middle] ^= 0x55;
        fs::write(&file.path, &bytes).expect("corrupt");
        let (fallback, loaded) = load_newest(&dir).expect("load").expect("some");
        assert_eq!(fallback.number, newest.number);
        assert_eq!(loaded.relations[0].1.num_rows(), 3);
        fs::write(&fallback.path, b"garbage").expect("corrupt");
        let error = load_newest(&dir).expect_err("none readable");
        assert!(error.to_string().contains("no checkpoint in"), "{error}");
        let _ = fs::remove_dir_all(&dir);
    }
}
