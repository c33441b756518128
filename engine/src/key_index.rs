//! A primary-key index whose entries live in one byte arena: each entry (key and row together)
//! is appended as `[length: u32][key length: u32][key][row]`, and the hash table holds only
//! the key's hash and the entry's offset. Storing a row costs no allocation of its own, growing
//! the table never touches the entries, and reading every row walks the arena in insertion
//! order. A replaced or removed entry is marked dead (the top bit of its length) and the arena
//! is compacted once dead entries take more than half of it.

use std::hash::BuildHasher;

use hashbrown::HashTable;
use hashbrown::hash_table::Entry;
use rustc_hash::FxBuildHasher;

/// Bytes before an entry's key: its length and its key's length.
const HEADER: usize = 8;
/// Marks a dead entry in its length word.
const DEAD: u32 = 1 << 31;
/// Dead bytes tolerated before a compaction is considered at all.
const COMPACT_AFTER: usize = 1 << 20;

/// A key and row too large for an entry (2 GiB together).
#[derive(Debug, thiserror::Error)]
#[error("a row of {0} bytes with its key is too large to store (at most 2 GiB)")]
pub struct EntryTooLarge(pub usize);

#[derive(Default)]
pub struct KeyIndex {
    table: HashTable<Slot>,
    arena: Vec<u8>,
    /// Bytes of dead entries, headers included.
    dead_bytes: usize,
}

/// A hash table entry: the key's hash and where its entry starts in the arena.
#[derive(Clone, Copy)]
struct Slot {
    hash: u64,
    at: usize,
}

fn hash(key: &[u8]) -> u64 {
    FxBuildHasher.hash_one(key)
}

fn word(arena: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([arena[at], arena[at + 1], arena[at + 2], arena[at + 3]])
}

/// The entry at `at`: its total size (header included), whether it is dead, its key and row.
fn entry_at(arena: &[u8], at: usize) -> (usize, bool, &[u8], &[u8]) {
    let length = word(arena, at);
    let key_length = word(arena, at + 4) as usize;
    let body = (length & !DEAD) as usize;
    let key_start = at + HEADER;
    let key = &arena[key_start..key_start + key_length];
    let row = &arena[key_start + key_length..key_start + body];
    (HEADER + body, length & DEAD != 0, key, row)
}

fn key_at(arena: &[u8], at: usize) -> &[u8] {
    entry_at(arena, at).2
}

impl KeyIndex {
    /// Whether a key and row of `size` bytes together can be stored.
    pub fn fits(size: usize) -> bool {
        size < DEAD as usize
    }

    pub fn reserve(&mut self, additional: usize) {
        self.table.reserve(additional, |slot| slot.hash);
    }

    /// Number of stored rows.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.table.len()
    }

    pub fn get(&self, key: &[u8]) -> Option<&[u8]> {
        let hash = hash(key);
        let arena = &self.arena;
        self.table
            .find(hash, |slot| slot.hash == hash && key_at(arena, slot.at) == key)
            .map(|slot| entry_at(arena, slot.at).3)
    }

    pub fn contains_key(&self, key: &[u8]) -> bool {
        self.get(key).is_some()
    }

    pub fn remove(&mut self, key: &[u8]) {
        let hash = hash(key);
        let arena = &self.arena;
        if let Ok(found) = self.table.find_entry(hash, |slot| slot.hash == hash && key_at(arena, slot.at) == key) {
            let (slot, _) = found.remove();
            self.kill(slot.at);
            self.maybe_compact();
        }
    }

    /// Stores `row` under `key`, replacing what was there.
    pub fn insert(&mut self, key: &[u8], row: &[u8]) -> Result<(), EntryTooLarge> {
        let body = key.len() + row.len();
        if !Self::fits(body) {
            return Err(EntryTooLarge(body));
        }
        let hash = hash(key);
        let arena = &self.arena;
        match self.table.entry(hash, |slot| slot.hash == hash && key_at(arena, slot.at) == key, |slot| slot.hash) {
            Entry::Occupied(mut occupied) => {
                let at = occupied.get().at;
                let (_, _, stored_key, stored_row) = entry_at(&self.arena, at);
                if stored_row.len() == row.len() {
                    // Same size (most updates of fixed-width rows): overwrite in place.
                    let row_start = at + HEADER + stored_key.len();
                    self.arena[row_start..row_start + row.len()].copy_from_slice(row);
                } else {
                    let fresh = append(&mut self.arena, key, row);
                    occupied.get_mut().at = fresh;
                    self.kill(at);
                    self.maybe_compact();
                }
            }
            Entry::Vacant(vacant) => {
                let at = append(&mut self.arena, key, row);
                vacant.insert(Slot { hash, at });
            }
        }
        Ok(())
    }

    /// Every stored row, in the order they were stored.
    pub fn values(&self) -> impl Iterator<Item = &[u8]> {
        let arena = &self.arena;
        let mut at = 0;
        std::iter::from_fn(move || {
            while at < arena.len() {
                let (size, dead, _, row) = entry_at(arena, at);
                at += size;
                if !dead {
                    return Some(row);
                }
            }
            None
        })
    }

    fn kill(&mut self, at: usize) {
        let length = word(&self.arena, at);
        self.arena[at..at + 4].copy_from_slice(&(length | DEAD).to_le_bytes());
        self.dead_bytes += HEADER + length as usize;
    }

    /// Copies the live entries into a fresh arena once dead ones take more than half of it.
    fn maybe_compact(&mut self) {
        if self.dead_bytes < COMPACT_AFTER || self.dead_bytes * 2 < self.arena.len() {
            return;
        }
        let old = std::mem::take(&mut self.arena);
        self.arena.reserve(old.len() - self.dead_bytes);
        let mut at = 0;
        while at < old.len() {
            let (size, dead, key, row) = entry_at(&old, at);
            if !dead {
                let fresh = append(&mut self.arena, key, row);
                let hash = hash(key);
                if let Some(slot) = self.table.find_mut(hash, |slot| slot.at == at) {
                    slot.at = fresh;
                }
            }
            at += size;
        }
        self.dead_bytes = 0;
    }
}

/// Appends an entry to the arena and returns its offset. The caller checked its size.
fn append(arena: &mut Vec<u8>, key: &[u8], row: &[u8]) -> usize {
    let at = arena.len();
    arena.extend_from_slice(&((key.len() + row.len()) as u32).to_le_bytes());
    arena.extend_from_slice(&(key.len() as u32).to_le_bytes());
    arena.extend_from_slice(key);
    arena.extend_from_slice(row);
    at
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insert_replace_remove() {
        let mut index = KeyIndex::default();
        index.insert(b"k1", b"row one").unwrap();
        index.insert(b"k2", b"row two").unwrap();
        index.insert(b"k1", b"row uno").unwrap();
        assert_eq!(index.get(b"k1"), Some(&b"row uno"[..]));
        assert_eq!(index.values().count(), 2);
        index.remove(b"k2");
        assert!(!index.contains_key(b"k2"));
        assert_eq!(index.values().collect::<Vec<_>>(), [&b"row uno"[..]]);
        // A longer row moves the entry; the old one is skipped.
        index.insert(b"k1", b"a longer row").unwrap();
        assert_eq!(index.values().collect::<Vec<_>>(), [&b"a longer row"[..]]);
        // An empty key is a key like any other.
        index.insert(b"", b"").unwrap();
        assert_eq!(index.get(b""), Some(&b""[..]));
        assert_eq!(index.len(), 2);
    }

    #[test]
    fn compaction_keeps_every_live_entry() {
        let mut index = KeyIndex::default();
        let key = |i: u32| i.to_le_bytes();
        for i in 0..100_000u32 {
            index.insert(&key(i), format!("row {i}").as_bytes()).unwrap();
        }
        let full = index.arena.len();
        // Remove most entries and grow the rest, so dead entries pass half of the arena.
        for i in 0..100_000u32 {
            if i % 10 != 0 {
                index.remove(&key(i));
            } else {
                index.insert(&key(i), format!("a longer row {i}").as_bytes()).unwrap();
            }
        }
        assert!(index.arena.len() < full, "the arena was compacted");
        assert_eq!(index.len(), 10_000);
        for i in (0..100_000u32).step_by(10) {
            assert_eq!(index.get(&key(i)), Some(format!("a longer row {i}").as_bytes()));
        }
        assert_eq!(index.values().count(), 10_000);
    }
}
