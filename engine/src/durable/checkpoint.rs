//! Checkpoints: one file holding everything needed to rebuild the engine without the journal
//! before it: the live objects' definitions, the contents of every base relation (local
//! tables and source relations, as Arrow IPC), every materialized view's contents and
//! operator state (groups and accumulators, join arrangements, top-k rows: see
//! `operator::state`), each source's progress and what it created upstream, each sink's last
//! flushed position with every epoch after it that it had not made durable (or why it
//! failed), the epoch, and the journal segment that continues after it.
//!
//! Layout: `CFCKPT01`, manifest length (u64 LE), manifest (JSON), then per relation of the
//! manifest its IPC stream, then per view its contents and each of its state batches, then
//! per sink each epoch of its backlog (every stream preceded by its u64 LE length), and a
//! CRC-32 of all the bytes before it.
//! Written to a temporary file, fsynced, renamed into place, directory fsynced: a crash
//! leaves the old checkpoint or the new one, never half of one. The two newest are kept, so
//! a damaged newest one falls back to the one before.
//!
//! A restart loads views from their state, without recomputing them. A checkpoint without a
//! view's state (written by an older version, or while the view had failed) rebuilds the
//! views from the restored inputs instead, as the initial load of CREATE MATERIALIZED VIEW
//! does, which gives the same contents.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use datafusion::arrow::array::RecordBatch;
use serde_json::{Value, json};

use super::definitions::Definition;
use super::ipc::{decode_batches, decode_change_as_stored, encode_batches, encode_change};
use super::journal::sync_dir;
use crate::connector::{Origin, Progress, SinkEpoch, SourceResume, UpstreamTransaction};
use crate::error::{EngineError, Result};
use crate::sink::{Flushed, SavedSink};

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
    /// Each sink's last flushed position, and what it had not made durable.
    pub sinks: BTreeMap<String, SavedSink>,
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
            "sinks": self.sinks.iter().map(|(name, sink)| (name.clone(), sink_json(sink))).collect::<serde_json::Map<_, _>>(),
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
        for epoch in self.sinks.values().flat_map(|sink| &sink.backlog) {
            let bytes = encode_change(&epoch.change)?;
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
            let len = u64::from_le_bytes(len_bytes.try_into().map_err(|_| corrupt("bad length"))?);
            let end = usize::try_from(len).ok().and_then(|len| (at + 8).checked_add(len));
            let slice = end.and_then(|end| body.get(at + 8..end)).ok_or_else(|| corrupt("a section is cut short"))?;
            let len = slice.len();
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
        let epoch = number("epoch")?;
        let sinks_json: Vec<(String, Value)> = manifest
            .get("sinks")
            .and_then(Value::as_object)
            .into_iter()
            .flatten()
            .map(|(name, sink)| (name.clone(), sink.clone()))
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
            let mut operators = Vec::new();
            for _ in 0..count {
                operators.push(next_batch()?);
            }
            views.push(ViewState { name: name.to_string(), contents, operators });
        }
        let mut sinks = BTreeMap::new();
        for (name, sink) in sinks_json {
            let saved = saved_sink(&sink, epoch, &mut || decode_change_as_stored(section()?))
                .map_err(|e| corrupt(&format!("sink \"{name}\": {e}")))?;
            sinks.insert(name, saved);
        }
        Ok(Self {
            epoch,
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

fn origin_json(origin: &Origin) -> Value {
    json!({
        "source": origin.source,
        "progress": origin.progress.0,
        "transaction": origin.transaction.map(|t| json!({ "id": t.id, "commit_micros": t.commit_micros })),
    })
}

fn origin_from_json(value: &Value) -> Option<Origin> {
    let transaction = value.get("transaction").filter(|t| !t.is_null()).map(|t| {
        Some(UpstreamTransaction { id: t.get("id")?.as_i64()?, commit_micros: t.get("commit_micros")?.as_i64()? })
    });
    Some(Origin {
        source: value.get("source")?.as_str()?.to_string(),
        progress: Progress(value.get("progress")?.as_str()?.to_string()),
        transaction: match transaction {
            Some(parsed) => Some(parsed?),
            None => None,
        },
    })
}

fn sink_json(sink: &SavedSink) -> Value {
    let backlog: Vec<Value> = sink
        .backlog
        .iter()
        .map(|e| json!({ "epoch": e.epoch, "snapshot": e.snapshot, "origin": e.origin.as_ref().map(origin_json) }))
        .collect();
    json!({
        "position": sink.flushed.position,
        "flushed_epoch": sink.flushed.epoch,
        "failed": sink.failed,
        "backlog": backlog,
    })
}

/// A sink of the manifest; its backlog's changes come from `next_change`, in order. A
/// position alone (checkpoints before backlogs were kept) was flushed at the checkpoint.
fn saved_sink(
    value: &Value,
    checkpoint_epoch: u64,
    next_change: &mut dyn FnMut() -> Result<crate::change::ChangeBatch>,
) -> Result<SavedSink> {
    if let Some(position) = value.as_str() {
        let flushed = Flushed { position: Some(position.to_string()), epoch: checkpoint_epoch };
        return Ok(SavedSink { flushed, failed: None, backlog: Vec::new() });
    }
    let bad = |what: &str| EngineError::Durability(format!("its {what} is not readable"));
    let flushed = Flushed {
        position: value.get("position").and_then(Value::as_str).map(str::to_string),
        epoch: value.get("flushed_epoch").and_then(Value::as_u64).ok_or_else(|| bad("flushed epoch"))?,
    };
    let failed = value.get("failed").and_then(Value::as_str).map(str::to_string);
    let mut backlog = Vec::new();
    for entry in value.get("backlog").and_then(Value::as_array).into_iter().flatten() {
        let origin = match entry.get("origin").filter(|o| !o.is_null()) {
            Some(origin) => Some(origin_from_json(origin).ok_or_else(|| bad("backlog's origin"))?),
            None => None,
        };
        backlog.push(SinkEpoch {
            epoch: entry.get("epoch").and_then(Value::as_u64).ok_or_else(|| bad("backlog's epoch"))?,
            change: next_change()?,
            snapshot: entry.get("snapshot").and_then(Value::as_bool).unwrap_or(false),
            origin,
            errors: None,
        });
    }
    Ok(SavedSink { flushed, failed, backlog })
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
    super::create_private_dir(dir).map_err(|e| durability("creating", dir, e))?;
    let number = list(dir)?.last().map_or(1, |f| f.number + 1);
    let path = dir.join(format!("checkpoint-{number:010}.cfck"));
    let temp = dir.join(format!("checkpoint-{number:010}.tmp"));
    let bytes = checkpoint.encode()?;
    let mut file = super::private_file()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&temp)
        .map_err(|e| durability("creating", &temp, e))?;
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

    fn with_sink(mut checkpoint: Checkpoint) -> Checkpoint {
        let batch = checkpoint.relations[0].1.clone();
        let origin = Origin {
            source: "core".into(),
            progress: Progress("0/1".into()),
            transaction: Some(UpstreamTransaction { id: 7, commit_micros: 9 }),
        };
        let epoch = |n: u64, origin: Option<Origin>| SinkEpoch {
            epoch: n,
            change: crate::change::ChangeBatch::inserts(batch.clone()),
            snapshot: n == 5,
            origin,
            errors: None,
        };
        checkpoint.sinks.insert(
            "out".into(),
            SavedSink {
                flushed: Flushed { position: Some("{\"main\":\"12\"}".into()), epoch: 4 },
                failed: None,
                backlog: vec![epoch(5, None), epoch(6, Some(origin))],
            },
        );
        checkpoint.sinks.insert(
            "broken".into(),
            SavedSink { flushed: Flushed::default(), failed: Some("failed: no".into()), backlog: Vec::new() },
        );
        checkpoint
    }

    #[test]
    fn sinks_come_back_with_their_position_backlog_and_failure() {
        let checkpoint = with_sink(sample(vec![1, 2]));
        let bytes = checkpoint.encode().expect("encode");
        let loaded = Checkpoint::decode(&bytes, Path::new("test")).expect("decode");
        let out = &loaded.sinks["out"];
        assert_eq!(out.flushed, Flushed { position: Some("{\"main\":\"12\"}".into()), epoch: 4 });
        let epochs: Vec<(u64, bool, Option<Origin>, usize)> =
            out.backlog.iter().map(|e| (e.epoch, e.snapshot, e.origin.clone(), e.change.len())).collect();
        assert_eq!(epochs, vec![(5, true, None, 2), (6, false, checkpoint.sinks["out"].backlog[1].origin.clone(), 2)]);
        assert_eq!(loaded.sinks["broken"].failed.as_deref(), Some("failed: no"));
        assert_eq!(loaded.relations[0].1.num_rows(), 2, "the sections after the sinks' still line up");
    }

    #[test]
    fn damaged_checkpoint_bytes_are_errors_never_panics() {
        use rand::SeedableRng;
        let bytes = with_sink(sample(vec![1, 2, 3])).encode().expect("encode");
        let mut rng = rand::rngs::StdRng::seed_from_u64(25);
        for round in 0..3_000 {
            let mut damaged = crate::durable::randomly_damaged(&bytes, &mut rng, round);
            // With its checksum made to match, the damage reaches the sections' parsers.
            if round % 2 == 0 && damaged.len() > 4 {
                let body = damaged.len() - 4;
                let crc = crc32fast::hash(&damaged[..body]);
                damaged[body..].copy_from_slice(&crc.to_le_bytes());
            }
            let _ = Checkpoint::decode(&damaged, Path::new("fuzz"));
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
