//! The journal: an append-only log of what the engine must replay after the newest checkpoint
//! (DDL, committed writes to local tables, sources opened upstream). Each record is framed
//! as `length, crc32, kind, payload` and made durable (fdatasync) before the statement that
//! wrote it is acknowledged. The journal is split into numbered segments; a checkpoint starts
//! a new one, and segments older than every kept checkpoint are removed.
//!
//! A crash can leave the last record of a segment half written: reading stops there (that
//! record was never acknowledged). A complete record whose checksum does not match is
//! corruption, reported with the segment and offset.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::{EngineError, Result};

const MAGIC: &[u8; 8] = b"CFJRNL01";
const HEADER: usize = 9;

/// What one journal record says.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Record {
    /// A DDL statement that succeeded (its definition, as JSON: see `definitions`).
    Ddl(Vec<u8>),
    /// A committed write to local tables: per table, its change as Arrow IPC.
    Commit(Vec<(String, Vec<u8>)>),
    /// A source was opened upstream; what it created there (JSON).
    SourceOpened(Vec<u8>),
    /// Statements of startup files that took effect (JSON list of their keys).
    Startup(Vec<u8>),
}

impl Record {
    fn kind(&self) -> u8 {
        match self {
            Record::Ddl(_) => 1,
            Record::Commit(_) => 2,
            Record::SourceOpened(_) => 3,
            Record::Startup(_) => 4,
        }
    }

    fn payload(&self) -> Vec<u8> {
        match self {
            Record::Ddl(json) | Record::SourceOpened(json) | Record::Startup(json) => json.clone(),
            Record::Commit(tables) => {
                let size: usize = tables.iter().map(|(n, c)| 12 + n.len() + c.len()).sum();
                let mut out = Vec::with_capacity(4 + size);
                out.extend_from_slice(&(tables.len() as u32).to_le_bytes());
                for (name, change) in tables {
                    out.extend_from_slice(&(name.len() as u32).to_le_bytes());
                    out.extend_from_slice(name.as_bytes());
                    out.extend_from_slice(&(change.len() as u64).to_le_bytes());
                    out.extend_from_slice(change);
                }
                out
            }
        }
    }

    fn decode(kind: u8, payload: &[u8]) -> Option<Record> {
        match kind {
            1 => Some(Record::Ddl(payload.to_vec())),
            3 => Some(Record::SourceOpened(payload.to_vec())),
            4 => Some(Record::Startup(payload.to_vec())),
            2 => {
                let mut cursor = Cursor { bytes: payload, at: 0 };
                let count = cursor.u32()?;
                let mut tables = Vec::with_capacity(count as usize);
                for _ in 0..count {
                    let name_len = cursor.u32()? as usize;
                    let name = String::from_utf8(cursor.take(name_len)?.to_vec()).ok()?;
                    let len = cursor.u64()? as usize;
                    tables.push((name, cursor.take(len)?.to_vec()));
                }
                Some(Record::Commit(tables))
            }
            _ => None,
        }
    }

    /// The framed bytes of the record.
    fn frame(&self) -> Vec<u8> {
        let payload = self.payload();
        let mut hasher = crc32fast::Hasher::new();
        hasher.update(&[self.kind()]);
        hasher.update(&payload);
        let mut out = Vec::with_capacity(HEADER + payload.len());
        out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        out.extend_from_slice(&hasher.finalize().to_le_bytes());
        out.push(self.kind());
        out.extend_from_slice(&payload);
        out
    }
}

struct Cursor<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let slice = self.bytes.get(self.at..self.at.checked_add(n)?)?;
        self.at += n;
        Some(slice)
    }

    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }

    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
}

/// The segment being appended to.
pub(crate) struct Journal {
    dir: PathBuf,
    segment: u64,
    file: File,
}

fn segment_path(dir: &Path, segment: u64) -> PathBuf {
    dir.join(format!("{segment:010}.log"))
}

fn io_error(what: &str, path: &Path, error: std::io::Error) -> EngineError {
    EngineError::Durability(format!("{what} {}: {error}", path.display()))
}

/// Makes a directory's entries (a created or renamed file) durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(|e| io_error("syncing directory", dir, e))
}

impl Journal {
    /// Starts a new, empty segment after every existing one.
    pub(crate) fn create(dir: &Path) -> Result<Self> {
        fs::create_dir_all(dir).map_err(|e| io_error("creating", dir, e))?;
        let segment = segments(dir)?.last().map_or(1, |last| last + 1);
        Self::create_segment(dir, segment)
    }

    fn create_segment(dir: &Path, segment: u64) -> Result<Self> {
        let path = segment_path(dir, segment);
        let mut file = OpenOptions::new()
            .create_new(true)
            .append(true)
            .open(&path)
            .map_err(|e| io_error("creating journal segment", &path, e))?;
        file.write_all(MAGIC).and_then(|_| file.sync_all()).map_err(|e| io_error("writing", &path, e))?;
        sync_dir(dir)?;
        Ok(Self { dir: dir.to_path_buf(), segment, file })
    }

    /// Appends a record and makes it durable.
    pub(crate) fn append(&mut self, record: &Record) -> Result<()> {
        let path = segment_path(&self.dir, self.segment);
        self.file
            .write_all(&record.frame())
            .and_then(|_| self.file.sync_data())
            .map_err(|e| io_error("appending to journal segment", &path, e))
    }

    /// Continues in a new segment; returns its number.
    pub(crate) fn rotate(&mut self) -> Result<u64> {
        *self = Self::create_segment(&self.dir, self.segment + 1)?;
        Ok(self.segment)
    }
}

/// The numbers of the segments in `dir`, ascending.
pub(crate) fn segments(dir: &Path) -> Result<Vec<u64>> {
    let mut found = Vec::new();
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(found),
        Err(error) => return Err(io_error("reading", dir, error)),
    };
    for entry in entries {
        let entry = entry.map_err(|e| io_error("reading", dir, e))?;
        let name = entry.file_name();
        if let Some(number) = name.to_str().and_then(|n| n.strip_suffix(".log")).and_then(|n| n.parse().ok()) {
            found.push(number);
        }
    }
    found.sort_unstable();
    Ok(found)
}

/// Every record of the segments numbered `from` and later, in order.
pub(crate) fn read_from(dir: &Path, from: u64) -> Result<Vec<Record>> {
    let mut records = Vec::new();
    for segment in segments(dir)?.into_iter().filter(|s| *s >= from) {
        read_segment(&segment_path(dir, segment), &mut records)?;
    }
    Ok(records)
}

fn read_segment(path: &Path, records: &mut Vec<Record>) -> Result<()> {
    let bytes = fs::read(path).map_err(|e| io_error("reading journal segment", path, e))?;
    if bytes.len() < MAGIC.len() {
        // Created, but the crash came before its header was written: empty.
        return Ok(());
    }
    if &bytes[..MAGIC.len()] != MAGIC {
        return Err(EngineError::Durability(format!("{} is not a changeflow journal segment", path.display())));
    }
    let mut at = MAGIC.len();
    while at < bytes.len() {
        let rest = &bytes[at..];
        let torn = || {
            tracing::warn!(segment = %path.display(), offset = at, "journal ends with a partly written record (never acknowledged); ignoring it");
        };
        if rest.len() < HEADER {
            torn();
            break;
        }
        let len = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        let crc = u32::from_le_bytes([rest[4], rest[5], rest[6], rest[7]]);
        let kind = rest[8];
        if rest.len() < HEADER + len || (len == 0 && crc == 0 && kind == 0) {
            torn();
            break;
        }
        let payload = &rest[HEADER..HEADER + len];
        let mut hasher = crc32fast::Hasher::new();
        hasher.update(&[kind]);
        hasher.update(payload);
        let record = (hasher.finalize() == crc).then(|| Record::decode(kind, payload)).flatten();
        let Some(record) = record else {
            return Err(EngineError::Durability(format!(
                "journal segment {} is corrupt at byte {at} (checksum mismatch); the records after it cannot be \
                 trusted. Restore the data directory from a backup, or move it away to start empty",
                path.display()
            )));
        };
        records.push(record);
        at += HEADER + len;
    }
    Ok(())
}

/// Removes the segments numbered below `keep_from`.
pub(crate) fn remove_before(dir: &Path, keep_from: u64) -> Result<()> {
    for segment in segments(dir)?.into_iter().filter(|s| *s < keep_from) {
        let path = segment_path(dir, segment);
        fs::remove_file(&path).map_err(|e| io_error("removing", &path, e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("changeflow-journal-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn records_come_back_in_order_across_segments() {
        let dir = temp_dir("order");
        let mut journal = Journal::create(&dir).expect("create");
        let first = Record::Ddl(b"{\"sql\":\"CREATE TABLE t (a INT)\"}".to_vec());
        let second = Record::Commit(vec![("t".into(), vec![1, 2, 3]), ("u".into(), vec![])]);
        let third = Record::SourceOpened(b"{}".to_vec());
        journal.append(&first).expect("append");
        assert_eq!(journal.rotate().expect("rotate"), 2);
        journal.append(&second).expect("append");
        journal.append(&third).expect("append");
        assert_eq!(read_from(&dir, 1).expect("read"), vec![first, second.clone(), third.clone()]);
        assert_eq!(read_from(&dir, 2).expect("read"), vec![second, third]);
        remove_before(&dir, 2).expect("remove");
        assert_eq!(segments(&dir).expect("segments"), vec![2]);
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_torn_tail_is_ignored_and_a_bad_checksum_is_an_error() {
        let dir = temp_dir("torn");
        let mut journal = Journal::create(&dir).expect("create");
        let record = Record::Ddl(b"{\"sql\":\"x\"}".to_vec());
        journal.append(&record).expect("append");
        journal.append(&record).expect("append");
        let path = segment_path(&dir, 1);
        let bytes = fs::read(&path).expect("read");
        fs::write(&path, &bytes[..bytes.len() - 3]).expect("truncate");
        assert_eq!(read_from(&dir, 1).expect("read"), vec![record.clone()]);
        let mut flipped = bytes.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 0xff;
        fs::write(&path, &flipped).expect("flip");
        let error = read_from(&dir, 1).expect_err("corrupt");
        assert!(error.to_string().contains("corrupt at byte"), "{error}");
        let _ = fs::remove_dir_all(&dir);
    }
}
