//! Applying a whole change to a key index with one probe per key: the probe that finds what a
//! key holds also changes it. A table's write is all or nothing, so a strict batch keeps an
//! undo log and, when a key refuses its change, puts back every key it already changed.

use crate::prefetch::prefetch;
use crate::same_bytes::same_bytes;

use super::{DEAD, HEADER, KeyIndex, Slot, append, body_size, entry_at, key_in_row, row_start, tag, word, write_entry};

/// New keys ahead whose dead entries (space to reuse) are prefetched.
const REUSE_AHEAD: usize = 16;

/// What a change does to one key: the row it holds before (`None`: no row) and after.
#[derive(Debug, Clone, Copy)]
pub struct KeyChange<'a> {
    pub hash: u64,
    pub key: &'a [u8],
    pub before: Option<&'a [u8]>,
    pub after: Option<&'a [u8]>,
}

/// Why a key refused its change in a strict batch, with the change's position in the batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The key does not hold the row the change retracts.
    NotHeld(usize),
    /// The key already holds a row, and the change inserts one without retracting it.
    Taken(usize),
}

/// How to put back one key a strict batch changed.
enum Undo {
    /// The key's slot was emptied; its entry (killed) starts at `at`.
    Removed { hash: u64, at: usize },
    /// The key was added (its entry lies past the arena's old end).
    Added { change: usize },
    /// The key was added into the dead entry at `at`, of `size` bytes, taken from the free
    /// ones.
    Reused { change: usize, at: usize, size: usize },
    /// The key's entry moved; the old one (killed) starts at `at`.
    Moved { change: usize, at: usize },
    /// The key's row was overwritten in place at `at`; its old bytes are `saved[from..from + len]`.
    Overwritten { at: usize, from: usize, len: usize },
}

/// A strict batch's undo log.
#[derive(Default)]
struct UndoLog {
    entries: Vec<Undo>,
    saved: Vec<u8>,
}

impl KeyIndex {
    /// Applies one change per key (no key twice), probing each key once. Strict: a key must
    /// hold exactly the row its change retracts (`before`), or no row when `before` is `None`;
    /// the first key that does not refuses the batch and the index is left as it was. Not
    /// strict (a change known to be consistent): a retraction of a row the key does not hold
    /// is skipped and an insertion replaces whatever the key holds.
    pub fn apply_changes(&mut self, changes: &[KeyChange], strict: bool) -> Result<(), Refusal> {
        // Room for the keys the batch adds (an update replaces its key's entry in place).
        self.reserve(changes.iter().filter(|c| c.before.is_none() && c.after.is_some()).count());
        let hashes: Vec<u64> = changes.iter().map(|c| c.hash).collect();
        let (arena_len, dead_bytes) = (self.arena.len(), self.dead_bytes);
        let mut log = strict.then(UndoLog::default);
        self.freed.clear();
        for (position, change) in changes.iter().enumerate() {
            self.prefetch_ahead(&hashes, position);
            if let Err(refusal) = self.apply_change(position, change, log.as_mut()) {
                if let Some(log) = log {
                    self.undo(changes, log);
                }
                // Entries appended by the batch are unreachable now; dead ones are live again
                // (those it killed, so none of them is free).
                self.arena.truncate(arena_len);
                self.dead_bytes = dead_bytes;
                self.freed.clear();
                return Err(refusal);
            }
        }
        // The space of entries the batch killed is free for later batches (not for this one,
        // whose undo revives them).
        if let Some(free) = &mut self.free {
            for (size, at) in self.freed.drain(..) {
                free.entry(size).or_default().push(at);
            }
        }
        self.compact_if_sparse();
        Ok(())
    }

    /// Kills the entry at `at`, which the batch removed or moved; its space is free after
    /// the batch in an index reusing space.
    fn kill_in_batch(&mut self, at: usize) {
        self.kill(at);
        if self.free.is_some() {
            self.freed.push((entry_at(&self.arena, at).0, at));
        }
    }

    /// Stores a new key's entry in the space of a dead one of its size, when the index reuses
    /// space and has one free; returns its offset.
    fn store_in_free(&mut self, key: &[u8], row: &[u8], key_in_row: bool) -> Option<usize> {
        let size = HEADER + body_size(key, row, key_in_row);
        let free = self.free.as_mut()?.get_mut(&size)?;
        let at = free.pop()?;
        // The dead entry that a later new key of this size takes is written then: its line
        // is prefetched now, so that write does not wait for it.
        if let Some(&later) = free.len().checked_sub(REUSE_AHEAD).and_then(|ahead| free.get(ahead)) {
            prefetch(&self.arena[later]);
        }
        write_entry(&mut self.arena, at, key, row, key_in_row);
        self.dead_bytes -= size;
        Some(at)
    }

    fn apply_change(&mut self, position: usize, change: &KeyChange, log: Option<&mut UndoLog>) -> Result<(), Refusal> {
        let strict = log.is_some();
        match self.probe(change.hash, change.key) {
            Ok(index) => {
                let at = self.slots[index].at();
                // Not strict, an insertion replaces whatever the key holds: the row held
                // need not be read.
                if strict || change.after.is_none() {
                    let held = entry_at(&self.arena, at).3;
                    match change.before {
                        Some(before) if same_bytes(before, held) => {}
                        Some(_) if strict => return Err(Refusal::NotHeld(position)),
                        None if strict => return Err(Refusal::Taken(position)),
                        // Not strict: a retraction of another row leaves the key alone.
                        Some(_) => return Ok(()),
                        None => {}
                    }
                }
                match change.after {
                    Some(after) => self.replace(index, position, change.key, after, log),
                    None => {
                        if let Some(log) = log {
                            log.entries.push(Undo::Removed { hash: change.hash, at });
                        }
                        self.vacate(index);
                        self.kill_in_batch(at);
                    }
                }
            }
            Err(index) => {
                if change.before.is_some() && strict {
                    return Err(Refusal::NotHeld(position));
                }
                if let Some(after) = change.after {
                    let mut index = index;
                    if (self.len + 1) * 4 > self.slots.len() * 3 {
                        // Only a lenient batch gets here: a key whose retracted row was
                        // not there is added (room for the others was reserved).
                        self.resize(self.slots.len() * 2);
                        index = self.probe(change.hash, change.key).err().unwrap_or(index);
                    }
                    // A row that starts with its key keeps the key there only.
                    let shares_key = starts_with(after, change.key);
                    let (at, undo) = match self.store_in_free(change.key, after, shares_key) {
                        Some(at) => {
                            let size = HEADER + body_size(change.key, after, shares_key);
                            (at, Undo::Reused { change: position, at, size })
                        }
                        None => {
                            (append(&mut self.arena, change.key, after, shares_key), Undo::Added { change: position })
                        }
                    };
                    self.slots[index] = Slot::new(tag(change.hash), at);
                    self.len += 1;
                    if let Some(log) = log {
                        log.entries.push(undo);
                    }
                }
            }
        }
        Ok(())
    }

    /// Stores `row` in the occupied slot `index`, which holds `key` (in place when the size
    /// is the same and the key stays where it is: apart, or as the first bytes of the new
    /// row too).
    fn replace(&mut self, index: usize, position: usize, key: &[u8], row: &[u8], log: Option<&mut UndoLog>) {
        let at = self.slots[index].at();
        let held = entry_at(&self.arena, at).3;
        let shares_key = starts_with(row, key);
        if held.len() == row.len() && (shares_key || !key_in_row(&self.arena, at)) {
            let start = row_start(&self.arena, at);
            if let Some(log) = log {
                log.entries.push(Undo::Overwritten { at: start, from: log.saved.len(), len: row.len() });
                log.saved.extend_from_slice(held);
            }
            self.arena[start..start + row.len()].copy_from_slice(row);
        } else {
            self.slots[index] = self.slots[index].moved_to(append(&mut self.arena, key, row, shares_key));
            self.kill_in_batch(at);
            if let Some(log) = log {
                log.entries.push(Undo::Moved { change: position, at });
            }
        }
    }

    /// Puts back every key the log records, latest first. The caller then truncates the arena
    /// to its length before the batch and restores the dead byte count.
    fn undo(&mut self, changes: &[KeyChange], log: UndoLog) {
        for entry in log.entries.into_iter().rev() {
            match entry {
                Undo::Overwritten { at, from, len } => {
                    self.arena[at..at + len].copy_from_slice(&log.saved[from..from + len]);
                }
                Undo::Moved { change, at } => {
                    if let Ok(index) = self.probe(changes[change].hash, changes[change].key) {
                        self.slots[index] = self.slots[index].moved_to(at);
                        self.revive(at);
                    }
                }
                Undo::Added { change } => {
                    if let Ok(index) = self.probe(changes[change].hash, changes[change].key) {
                        self.vacate(index);
                    }
                }
                Undo::Reused { change, at, size } => {
                    if let Ok(index) = self.probe(changes[change].hash, changes[change].key) {
                        self.vacate(index);
                    }
                    // Dead and free again (latest first, so the free list is as it was).
                    self.kill(at);
                    if let Some(free) = &mut self.free {
                        free.entry(size).or_default().push(at);
                    }
                }
                Undo::Removed { hash, at } => {
                    let key = entry_at(&self.arena, at).2.to_vec();
                    if let Err(index) = self.probe(hash, &key) {
                        self.slots[index] = Slot::new(tag(hash), at);
                        self.len += 1;
                        self.revive(at);
                    }
                }
            }
        }
    }

    /// Clears the dead mark of the entry at `at` (the caller restores the dead byte count).
    fn revive(&mut self, at: usize) {
        let length = word(&self.arena, at) & !DEAD;
        self.arena[at..at + 4].copy_from_slice(&length.to_le_bytes());
    }
}

/// Whether `row` starts with `key`.
#[inline]
fn starts_with(row: &[u8], key: &[u8]) -> bool {
    row.len() >= key.len() && same_bytes(&row[..key.len()], key)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key_index::hash;

    fn change<'a>(key: &'a [u8], before: Option<&'a [u8]>, after: Option<&'a [u8]>) -> KeyChange<'a> {
        KeyChange { hash: hash(key), key, before, after }
    }

    fn contents(index: &KeyIndex) -> Vec<Vec<u8>> {
        let mut rows: Vec<Vec<u8>> = index.values().map(<[u8]>::to_vec).collect();
        rows.sort();
        rows
    }

    #[test]
    fn strict_batch_applies_inserts_updates_and_deletes() {
        let mut index = KeyIndex::default();
        let batch = [change(b"a", None, Some(b"a1")), change(b"b", None, Some(b"b1")), change(b"c", None, Some(b"c1"))];
        index.apply_changes(&batch, true).expect("fresh keys");
        let batch = [
            change(b"a", Some(b"a1"), Some(b"a2")),
            change(b"b", Some(b"b1"), None),
            change(b"c", Some(b"c1"), Some(b"c-longer")),
            change(b"d", None, Some(b"d1")),
        ];
        index.apply_changes(&batch, true).expect("consistent change");
        assert_eq!(contents(&index), [b"a2".to_vec(), b"c-longer".to_vec(), b"d1".to_vec()]);
        assert_eq!(index.len(), 3);
    }

    #[test]
    fn a_refused_key_puts_back_every_key_changed_before_it() {
        let mut index = KeyIndex::default();
        let keys: Vec<[u8; 4]> = (0..1000u32).map(u32::to_le_bytes).collect();
        // Every other row starts with its key (stored once).
        let keyed =
            |i: usize, text: &[u8]| if i.is_multiple_of(2) { [&keys[i][..], text].concat() } else { text.to_vec() };
        let rows: Vec<Vec<u8>> = (0..1000).map(|i| keyed(i, format!("row {i}").as_bytes())).collect();
        let fill: Vec<KeyChange> = keys.iter().zip(&rows).map(|(k, r)| change(k, None, Some(r))).collect();
        index.apply_changes(&fill, true).expect("fill");
        let before = contents(&index);
        let arena = index.arena.len();
        let longer: Vec<Vec<u8>> = (0..1000).map(|i| keyed(i, format!("a longer row {i}").as_bytes())).collect();
        // Rows of the same size that start with the key as the old row did or did not, and
        // (i % 4 of 2 and 3) that change between the two.
        let same_size: Vec<Vec<u8>> = (0..1000)
            .map(|i| match i % 4 {
                0 | 3 => [&keys[i][..], &vec![b'n'; rows[i].len() - 4]].concat(),
                _ => vec![b'n'; rows[i].len()],
            })
            .collect();
        let fresh: Vec<[u8; 4]> = (1000..1300u32).map(u32::to_le_bytes).collect();
        for refused in [7, 8] {
            // Deletes, in-place and moving updates, inserts, then one key that refuses: key 7
            // retracts a row it does not hold, key 8 is inserted again.
            let mut batch: Vec<KeyChange> = Vec::new();
            for i in (0..1000).filter(|&i| i != refused) {
                let after = match i % 3 {
                    0 => None,
                    1 => Some(longer[i].as_slice()),
                    _ => Some(same_size[i].as_slice()),
                };
                batch.push(change(&keys[i], Some(&rows[i]), after));
            }
            batch.extend(fresh.iter().map(|k| change(k, None, Some(b"fresh"))));
            let (refusing, expected) = if refused == 7 {
                (change(&keys[7], Some(b"not this row"), None), Refusal::NotHeld(batch.len()))
            } else {
                (change(&keys[8], None, Some(b"again")), Refusal::Taken(batch.len()))
            };
            batch.push(refusing);
            assert_eq!(index.apply_changes(&batch, true), Err(expected));
            assert_eq!(contents(&index), before);
            assert_eq!(index.len(), 1000);
            assert_eq!(index.arena.len(), arena);
            for (key, row) in keys.iter().zip(&rows) {
                assert_eq!(index.get(key), Some(row.as_slice()));
            }
            assert_eq!(index.get(&fresh[0]), None);
        }
        // Without the refusing key the batch applies.
        let mut batch: Vec<KeyChange> = Vec::new();
        let mut expected = Vec::new();
        for i in 0..1000 {
            let after = match i % 3 {
                0 => None,
                1 => Some(longer[i].as_slice()),
                _ => Some(same_size[i].as_slice()),
            };
            batch.push(change(&keys[i], Some(&rows[i]), after));
            expected.push(after);
        }
        index.apply_changes(&batch, true).expect("consistent");
        for (key, row) in keys.iter().zip(expected) {
            assert_eq!(index.get(key), row);
        }
        assert_eq!(index.values().count(), index.len());
    }

    #[test]
    fn removed_entries_make_room_for_later_keys_of_their_size() {
        let mut index = KeyIndex::reusing_space();
        let keys: Vec<[u8; 4]> = (0..100u32).map(u32::to_le_bytes).collect();
        let fill: Vec<KeyChange> = keys.iter().map(|k| change(k, None, Some(b"row"))).collect();
        index.apply_changes(&fill, true).expect("fill");
        let arena = index.arena.len();
        // Keys 0..10 go; in the same batch new keys are appended (the space is not free yet).
        let fresh: Vec<[u8; 4]> = (100..140u32).map(u32::to_le_bytes).collect();
        let mut batch: Vec<KeyChange> = keys[..10].iter().map(|k| change(k, Some(b"row"), None)).collect();
        batch.extend(fresh[..5].iter().map(|k| change(k, None, Some(b"new"))));
        index.apply_changes(&batch, true).expect("consistent");
        let grown = index.arena.len();
        assert!(grown > arena);
        // Ten keys of the same size fit where the removed ones were; a longer row does not.
        let batch: Vec<KeyChange> = fresh[5..15].iter().map(|k| change(k, None, Some(b"abc"))).collect();
        index.apply_changes(&batch, true).expect("fresh keys");
        assert_eq!(index.arena.len(), grown, "stored in the removed entries' space");
        index.apply_changes(&[change(&fresh[15], None, Some(b"longer"))], true).expect("fresh key");
        assert!(index.arena.len() > grown);
        // A refused batch that took free space gives it back.
        index
            .apply_changes(&keys[10..15].iter().map(|k| change(k, Some(b"row"), None)).collect::<Vec<_>>(), true)
            .expect("removed");
        let (arena, before) = (index.arena.len(), contents(&index));
        let mut batch: Vec<KeyChange> = fresh[16..21].iter().map(|k| change(k, None, Some(b"xyz"))).collect();
        batch.push(change(&keys[20], None, Some(b"taken")));
        assert_eq!(index.apply_changes(&batch, true), Err(Refusal::Taken(5)));
        assert_eq!((index.arena.len(), contents(&index)), (arena, before));
        assert!(fresh[16..21].iter().all(|k| index.get(k).is_none()));
        let batch: Vec<KeyChange> = fresh[16..21].iter().map(|k| change(k, None, Some(b"xyz"))).collect();
        index.apply_changes(&batch, true).expect("fresh keys");
        assert_eq!(index.arena.len(), arena, "the space is free again after the refusal");
        for key in &keys[15..] {
            assert_eq!(index.get(key), Some(&b"row"[..]));
        }
        assert!(fresh[16..21].iter().all(|k| index.get(k) == Some(&b"xyz"[..])));
        assert_eq!(index.len(), 100 - 15 + 21);
        assert_eq!(index.values().count(), index.len());
    }

    #[test]
    fn a_lenient_batch_skips_retractions_of_rows_not_held() {
        let mut index = KeyIndex::default();
        index.apply_changes(&[change(b"a", None, Some(b"a1"))], true).expect("fill");
        let batch =
            [change(b"a", Some(b"other"), None), change(b"b", Some(b"gone"), None), change(b"c", None, Some(b"c1"))];
        index.apply_changes(&batch, false).expect("lenient");
        assert_eq!(contents(&index), [b"a1".to_vec(), b"c1".to_vec()]);
        // An insertion replaces whatever the key holds.
        index.apply_changes(&[change(b"a", None, Some(b"a2"))], false).expect("lenient");
        assert_eq!(index.get(b"a"), Some(&b"a2"[..]));
        // Updates of keys that are not there add them, growing the table as they go (no
        // room was reserved for them).
        let keys: Vec<[u8; 4]> = (0..100u32).map(u32::to_le_bytes).collect();
        let batch: Vec<KeyChange> = keys.iter().map(|k| change(k, Some(b"old"), Some(k))).collect();
        index.apply_changes(&batch, false).expect("lenient");
        assert_eq!(index.len(), 102);
        assert!(keys.iter().all(|k| index.get(k) == Some(&k[..])));
    }
}
