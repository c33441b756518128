//! The journal: an append-only log of what the engine must replay after the newest checkpoint
//! (DDL, committed writes to local tables, sources opened upstream). Each record is framed
//! as `length, kind, payload crc32, header crc32, payload` (the header checksum covers the
//! length, the kind and the payload's checksum, so every byte of a frame is checked) and made
//! durable (fdatasync) before the statement that wrote it is acknowledged. The journal is
//! split into numbered segments; a checkpoint starts a new one, and segments older than every
//! kept checkpoint are removed.
//!
//! An append that fails (a full disk, an I/O error) is cut back off the segment before
//! anything else is appended, so nothing acknowledged ever follows a partial record. A crash
//! can still leave the last record of a segment half written: a header cut short, a payload
//! shorter than its (checked) length, or a zero-filled tail. Reading stops there (that record
//! was never acknowledged). Anything else that does not check out (a header or payload
//! checksum mismatch) is corruption, reported with the segment and offset: the records after
//! it cannot be trusted. Segments of the first format (`CFJRNL01`, whose checksum did not
//! cover the length) are still read.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::{EngineError, Result};

const MAGIC: &[u8; 8] = b"CFJRNL02";
/// The first format: `length, crc32 (kind and payload), kind, payload`.
const MAGIC_V1: &[u8; 8] = b"CFJRNL01";
const HEADER_V1: usize = 9;
/// `length (4), kind (1), payload crc32 (4), header crc32 (4)`.
const HEADER: usize = 13;

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
                // Each table takes at least 12 bytes: a count no payload can hold is refused
                // by reading, not by allocating for it.
                let mut tables = Vec::with_capacity((count as usize).min(payload.len() / 12));
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
        let mut out = Vec::with_capacity(HEADER + payload.len());
        out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        out.push(self.kind());
        out.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
        let header_crc = crc32fast::hash(&out);
        out.extend_from_slice(&header_crc.to_le_bytes());
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
    /// Bytes of the segment that hold whole, durable records (and its header).
    len: u64,
    /// Set when an append failed: the segment must be cut back to `len` before anything
    /// else is appended.
    damaged: bool,
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
        super::create_private_dir(dir).map_err(|e| io_error("creating", dir, e))?;
        let segment = segments(dir)?.last().map_or(1, |last| last + 1);
        Self::create_segment(dir, segment)
    }

    fn create_segment(dir: &Path, segment: u64) -> Result<Self> {
        let path = segment_path(dir, segment);
        let open = || super::private_file().create_new(true).append(true).open(&path);
        let mut file = match open() {
            // Left by an attempt that failed before its header was durable (a full disk):
            // it holds no record, so it is made again.
            Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists && holds_no_record(&path) => {
                fs::remove_file(&path).and_then(|_| open())
            }
            other => other,
        }
        .map_err(|e| io_error("creating journal segment", &path, e))?;
        let written = file.write_all(MAGIC).and_then(|_| file.sync_all()).map_err(|e| io_error("writing", &path, e));
        if let Err(error) = written.and_then(|_| sync_dir(dir)) {
            // Nothing is in it: remove it so that the next attempt starts clean.
            drop(file);
            let _ = fs::remove_file(&path);
            return Err(error);
        }
        Ok(Self { dir: dir.to_path_buf(), segment, file, len: MAGIC.len() as u64, damaged: false })
    }

    /// Appends a record and makes it durable. When that fails, what was written of it is cut
    /// off again (now, or before the next append if that fails too), so a later record is
    /// never acknowledged behind a partial one.
    pub(crate) fn append(&mut self, record: &Record) -> Result<()> {
        let path = segment_path(&self.dir, self.segment);
        self.cut_back_damage()?;
        let frame = record.frame();
        match self.file.write_all(&frame).and_then(|_| self.file.sync_data()) {
            Ok(()) => {
                self.len += frame.len() as u64;
                Ok(())
            }
            Err(error) => {
                self.damaged = true;
                let error = io_error("appending to journal segment", &path, error);
                if let Err(cut) = self.cut_back_damage() {
                    tracing::error!(%cut, "the partly written journal record is cut off before the next append");
                }
                Err(error)
            }
        }
    }

    /// Cuts a failed append's bytes off the segment.
    fn cut_back_damage(&mut self) -> Result<()> {
        if !self.damaged {
            return Ok(());
        }
        let path = segment_path(&self.dir, self.segment);
        self.file.set_len(self.len).and_then(|_| self.file.sync_all()).map_err(|e| {
            io_error(
                &format!("cutting a failed append off (at byte {}; nothing is journaled until it is)", self.len),
                &path,
                e,
            )
        })?;
        self.damaged = false;
        Ok(())
    }

    /// Continues in a new segment; returns its number.
    pub(crate) fn rotate(&mut self) -> Result<u64> {
        *self = Self::create_segment(&self.dir, self.segment + 1)?;
        Ok(self.segment)
    }
}

/// Whether a segment file holds no record (at most its header), so it may be made again.
fn holds_no_record(path: &Path) -> bool {
    fs::metadata(path).is_ok_and(|m| m.len() <= MAGIC.len() as u64)
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
    let frames = match &bytes[..MAGIC.len()] {
        magic if magic == MAGIC => read_frames(&bytes, records),
        magic if magic == MAGIC_V1 => read_frames_v1(&bytes, records),
        _ => return Err(EngineError::Durability(format!("{} is not a changeflow journal segment", path.display()))),
    };
    match frames {
        Ok(None) => Ok(()),
        Ok(Some(at)) => {
            tracing::warn!(segment = %path.display(), offset = at, "journal ends with a partly written record (never acknowledged); ignoring it");
            Ok(())
        }
        Err((at, what)) => Err(EngineError::Durability(format!(
            "journal segment {} is corrupt at byte {at} ({what}); the records after it cannot be trusted. Restore \
             the data directory from a backup, or move it away to start empty",
            path.display()
        ))),
    }
}

/// A segment's records: `Ok(Some(offset))` when it ends with a partly written record there,
/// `Err((offset, what))` at the first record that is damaged.
type Frames = std::result::Result<Option<usize>, (usize, &'static str)>;

fn read_frames(bytes: &[u8], records: &mut Vec<Record>) -> Frames {
    let mut at = MAGIC.len();
    while at < bytes.len() {
        let rest = &bytes[at..];
        if rest.len() < HEADER {
            // The header itself was cut short: the end of the segment.
            return Ok(Some(at));
        }
        let header_crc = u32::from_le_bytes([rest[9], rest[10], rest[11], rest[12]]);
        if crc32fast::hash(&rest[..9]) != header_crc {
            // Zeros to the end are a tail the crash left unwritten; anything else is damage
            // (a bit flipped in a length would otherwise hide every record after it).
            if rest.iter().all(|b| *b == 0) {
                return Ok(Some(at));
            }
            return Err((at, "record header checksum mismatch"));
        }
        let len = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        let kind = rest[4];
        let payload_crc = u32::from_le_bytes([rest[5], rest[6], rest[7], rest[8]]);
        let Some(payload) = rest.get(HEADER..HEADER + len) else {
            // A checked length that runs past the end: the payload was cut short.
            return Ok(Some(at));
        };
        if crc32fast::hash(payload) != payload_crc {
            return Err((at, "record checksum mismatch"));
        }
        let Some(record) = Record::decode(kind, payload) else {
            return Err((at, "a record of an unknown kind or layout"));
        };
        records.push(record);
        at += HEADER + len;
    }
    Ok(None)
}

/// Records of a segment of the first format.
fn read_frames_v1(bytes: &[u8], records: &mut Vec<Record>) -> Frames {
    let mut at = MAGIC_V1.len();
    while at < bytes.len() {
        let rest = &bytes[at..];
        if rest.len() < HEADER_V1 {
            return Ok(Some(at));
        }
        let len = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        let crc = u32::from_le_bytes([rest[4], rest[5], rest[6], rest[7]]);
        let kind = rest[8];
        if rest.len() < HEADER_V1 + len || (len == 0 && crc == 0 && kind == 0) {
            return Ok(Some(at));
        }
        let payload = &rest[HEADER_V1..HEADER_V1 + len];
        let mut hasher = crc32fast::Hasher::new();
        hasher.update(&[kind]);
        hasher.update(payload);
        let record = (hasher.finalize() == crc).then(|| Record::decode(kind, payload)).flatten();
        let Some(record) = record else { return Err((at, "checksum mismatch")) };
        records.push(record);
        at += HEADER_V1 + len;
    }
    Ok(None)
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

    fn two_records(name: &str) -> (PathBuf, Record, Vec<u8>) {
        let dir = temp_dir(name);
        let mut journal = Journal::create(&dir).expect("create");
        let record = Record::Ddl(b"{\"sql\":\"x\"}".to_vec());
        journal.append(&record).expect("append");
        journal.append(&record).expect("append");
        let bytes = fs::read(segment_path(&dir, 1)).expect("read");
        (dir, record, bytes)
    }

    #[test]
    fn a_torn_tail_is_ignored_and_a_bad_checksum_is_an_error() {
        let (dir, record, bytes) = two_records("torn");
        let path = segment_path(&dir, 1);
        let frame = (bytes.len() - MAGIC.len()) / 2;
        // Cut anywhere inside the last record: its header, its payload.
        for cut in [1, HEADER - 1, HEADER, frame - 1] {
            fs::write(&path, &bytes[..bytes.len() - frame + cut]).expect("truncate");
            assert_eq!(read_from(&dir, 1).expect("read"), vec![record.clone()], "cut at {cut}");
        }
        // A zero-filled tail (the file grew, its data never reached the disk).
        let mut zeroed_tail = bytes.clone();
        zeroed_tail[bytes.len() - frame..].fill(0);
        fs::write(&path, &zeroed_tail).expect("zero");
        assert_eq!(read_from(&dir, 1).expect("read"), vec![record.clone()]);
        let mut flipped = bytes.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 0xff;
        fs::write(&path, &flipped).expect("flip");
        let error = read_from(&dir, 1).expect_err("corrupt");
        assert!(error.to_string().contains("corrupt at byte"), "{error}");
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn damage_before_an_acknowledged_record_is_never_taken_for_a_torn_tail() {
        let (dir, _, bytes) = two_records("damaged-header");
        let path = segment_path(&dir, 1);
        let first = MAGIC.len();
        // One bit of the first record's length, of its kind, of either checksum; a header of
        // zeros: each with a whole record after it.
        for (what, at) in [
            ("length", first),
            ("length's high byte", first + 3),
            ("kind", first + 4),
            ("crc", first + 6),
            ("header crc", first + 12),
        ] {
            let mut damaged = bytes.clone();
            damaged[at] ^= 0x10;
            fs::write(&path, &damaged).expect("write");
            let error = read_from(&dir, 1).expect_err(what);
            assert!(error.to_string().contains(&format!("corrupt at byte {first}")), "{what}: {error}");
        }
        let mut zeroed = bytes.clone();
        zeroed[first..first + HEADER].fill(0);
        fs::write(&path, &zeroed).expect("write");
        let error = read_from(&dir, 1).expect_err("a zeroed header");
        assert!(error.to_string().contains(&format!("corrupt at byte {first}")), "{error}");
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn segments_of_the_first_format_are_still_read() {
        let dir = temp_dir("v1");
        fs::create_dir_all(&dir).expect("dir");
        let record = Record::Startup(b"[\"k\"]".to_vec());
        let payload = record.payload();
        let mut hasher = crc32fast::Hasher::new();
        hasher.update(&[record.kind()]);
        hasher.update(&payload);
        let mut bytes = MAGIC_V1.to_vec();
        bytes.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        bytes.extend_from_slice(&hasher.finalize().to_le_bytes());
        bytes.push(record.kind());
        bytes.extend_from_slice(&payload);
        fs::write(segment_path(&dir, 1), &bytes).expect("write");
        assert_eq!(read_from(&dir, 1).expect("read"), vec![record.clone()]);
        let mut journal = Journal::create(&dir).expect("a new segment after it");
        journal.append(&record).expect("append");
        assert_eq!(read_from(&dir, 1).expect("read"), vec![record.clone(), record]);
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_segment_left_empty_by_a_failed_rotation_is_made_again() {
        let dir = temp_dir("rotate");
        let mut journal = Journal::create(&dir).expect("create");
        // What a rotation that failed on a full disk leaves: the next segment, without a header.
        fs::write(segment_path(&dir, 2), b"CFJ").expect("leftover");
        assert_eq!(journal.rotate().expect("rotate over the leftover"), 2);
        let record = Record::Ddl(b"{}".to_vec());
        journal.append(&record).expect("append");
        assert_eq!(read_from(&dir, 2).expect("read"), vec![record]);
        // A segment that holds records is never made again.
        fs::write(segment_path(&dir, 3), fs::read(segment_path(&dir, 2)).expect("read")).expect("copy");
        assert!(journal.rotate().is_err(), "a segment with records was overwritten");
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn damaged_segments_are_errors_or_torn_tails_never_panics() {
        use rand::SeedableRng;
        let dir = temp_dir("fuzz");
        let mut journal = Journal::create(&dir).expect("create");
        journal.append(&Record::Commit(vec![("t".into(), vec![1, 2, 3]), ("u".into(), vec![9; 40])])).expect("append");
        journal.append(&Record::Ddl(b"{}".to_vec())).expect("append");
        let path = segment_path(&dir, 1);
        let bytes = fs::read(&path).expect("read");
        let mut rng = rand::rngs::StdRng::seed_from_u64(25);
        for round in 0..2_000 {
            let damaged = crate::durable::randomly_damaged(&bytes, &mut rng, round);
            fs::write(&path, &damaged).expect("write");
            let _ = read_from(&dir, 1);
        }
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_failed_append_is_cut_off_before_the_next_one() {
        let dir = temp_dir("failed-append");
        let mut journal = Journal::create(&dir).expect("create");
        let record = Record::Ddl(b"{\"sql\":\"y\"}".to_vec());
        journal.append(&record).expect("append");
        let path = segment_path(&dir, 1);
        // A partial frame the failed append left, and a handle that cannot write (the disk
        // still full): nothing is appended until the partial frame is cut off.
        let writable = std::mem::replace(&mut journal.file, File::open(&path).expect("read-only handle"));
        {
            let mut raw = fs::OpenOptions::new().append(true).open(&path).expect("open");
            raw.write_all(&record.frame()[..7]).expect("partial frame");
        }
        assert!(journal.append(&record).is_err(), "the read-only handle cannot append");
        assert!(journal.damaged, "the failed append is remembered");
        journal.file = writable;
        journal.append(&record).expect("append once writable again");
        assert_eq!(read_from(&dir, 1).expect("read"), vec![record.clone(), record]);
        let _ = fs::remove_dir_all(&dir);
    }
}
