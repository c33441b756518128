//! One key at a time: find a key, then read, change in place, remove or insert what it holds,
//! like a map's entry API, with each entry's place in the arena (its offset) for callers that
//! keep their own lists of entries (a join's arrangement lists the rows of each join key).
//! An offset stays valid while its entry lives and until the next compaction, which the
//! caller runs ([`KeyIndex::compact_if_sparse`]) and is told about.

use super::{DEAD, EntryTooLarge, HEADER, KeyIndex, NoRoom, Slot, append, entry_at, row_start, tag};

/// A key's place in the index: held or not.
pub enum Entry<'a, 'k> {
    Occupied(OccupiedEntry<'a>),
    Vacant(VacantEntry<'a, 'k>),
}

/// A key the index holds.
pub struct OccupiedEntry<'a> {
    index: &'a mut KeyIndex,
    slot: usize,
}

/// A key the index does not hold, with the empty slot its probe ended at.
pub struct VacantEntry<'a, 'k> {
    index: &'a mut KeyIndex,
    slot: usize,
    hash: u64,
    key: &'k [u8],
}

impl KeyIndex {
    /// The entry of `key` (hashing to `hash`, see [`super::hash`]).
    pub fn entry<'a, 'k>(&'a mut self, hash: u64, key: &'k [u8]) -> Entry<'a, 'k> {
        debug_assert!(self.free.is_none(), "offsets are only stable in an index that does not reuse space");
        match self.probe(hash, key) {
            Ok(slot) => Entry::Occupied(OccupiedEntry { index: self, slot }),
            Err(slot) => Entry::Vacant(VacantEntry { index: self, slot, hash, key }),
        }
    }

    /// The key and row of the entry at `offset`, or `None` when it is dead. The offset must
    /// be one the index gave out since its last compaction.
    pub fn live_at(&self, offset: usize) -> Option<(&[u8], &[u8])> {
        let (_, dead, key, row) = entry_at(&self.arena, offset);
        (!dead).then_some((key, row))
    }

    /// The row of the live entry at `offset`, to change in place (its length is fixed).
    pub fn live_row_mut(&mut self, offset: usize) -> Option<&mut [u8]> {
        let (size, dead, _, _) = entry_at(&self.arena, offset);
        let start = row_start(&self.arena, offset);
        (!dead).then(|| &mut self.arena[start..offset + size])
    }

    /// Every live entry as (offset, key, row), in arena order.
    pub fn entries(&self) -> impl Iterator<Item = (usize, &[u8], &[u8])> {
        let arena = &self.arena;
        let mut at = 0;
        std::iter::from_fn(move || {
            while at < arena.len() {
                let offset = at;
                let (size, dead, key, row) = entry_at(arena, at);
                at += size;
                if !dead {
                    return Some((offset, key, row));
                }
            }
            None
        })
    }
}

impl OccupiedEntry<'_> {
    /// Where the entry starts in the arena.
    pub fn offset(&self) -> usize {
        self.index.slots[self.slot].at()
    }

    pub fn row(&self) -> &[u8] {
        entry_at(&self.index.arena, self.offset()).3
    }

    /// The row, to change in place (its length is fixed).
    pub fn row_mut(&mut self) -> &mut [u8] {
        let at = self.offset();
        let size = entry_at(&self.index.arena, at).0;
        let start = row_start(&self.index.arena, at);
        &mut self.index.arena[start..at + size]
    }

    /// Removes the key: its slot is emptied and its entry marked dead.
    pub fn remove(self) {
        let at = self.offset();
        self.index.vacate(self.slot);
        self.index.kill(at);
    }
}

impl VacantEntry<'_, '_> {
    /// Stores `row` under the key and returns where its entry starts, growing the table
    /// when it is full. The key is stored apart even when the row starts with it, so that
    /// changing the row in place never changes the key.
    pub fn insert(self, row: &[u8]) -> Result<usize, NoRoom> {
        let size = self.key.len() + row.len();
        if size >= DEAD as usize {
            return Err(EntryTooLarge(size).into());
        }
        let index = self.index;
        index.room_for(1, HEADER + size)?;
        let mut slot = self.slot;
        if (index.len + 1) * 4 > index.slots.len() * 3 {
            index.resize(index.slots.len() * 2);
            slot = index.probe(self.hash, self.key).err().unwrap_or(slot);
        }
        let at = append(&mut index.arena, self.key, row, false);
        index.slots[slot] = Slot::new(tag(self.hash), at);
        index.len += 1;
        Ok(at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key_index::hash;

    fn insert(index: &mut KeyIndex, key: &[u8], row: &[u8]) -> usize {
        match index.entry(hash(key), key) {
            Entry::Vacant(vacant) => vacant.insert(row).expect("a small entry fits"),
            Entry::Occupied(_) => panic!("{key:?} is held already"),
        }
    }

    #[test]
    fn entries_are_found_changed_in_place_and_removed_by_key() {
        let mut index = KeyIndex::default();
        let first = insert(&mut index, b"a", b"1111");
        let second = insert(&mut index, b"b", b"2222");
        let Entry::Occupied(mut held) = index.entry(hash(b"a"), b"a") else { panic!("a is held") };
        assert_eq!((held.offset(), held.row()), (first, &b"1111"[..]));
        held.row_mut().copy_from_slice(b"9999");
        assert_eq!(index.live_at(first), Some((&b"a"[..], &b"9999"[..])));
        let Entry::Occupied(held) = index.entry(hash(b"b"), b"b") else { panic!("b is held") };
        held.remove();
        assert_eq!(index.live_at(second), None, "a removed entry's offset reads as dead");
        assert_eq!(index.get(b"b"), None);
        assert_eq!(index.len(), 1);
        let entries: Vec<_> = index.entries().collect();
        assert_eq!(entries, [(first, &b"a"[..], &b"9999"[..])]);
        // A row that starts with its key keeps the key apart here: changing the row in place
        // leaves the key as it was.
        let third = insert(&mut index, b"c", b"c333");
        let Entry::Occupied(mut held) = index.entry(hash(b"c"), b"c") else { panic!("c is held") };
        held.row_mut().copy_from_slice(b"3333");
        assert_eq!(index.live_at(third), Some((&b"c"[..], &b"3333"[..])));
        assert_eq!(index.get(b"c"), Some(&b"3333"[..]));
    }

    #[test]
    fn inserts_grow_the_table_and_compaction_is_reported() {
        let mut index = KeyIndex::default();
        let key = |i: u32| i.to_le_bytes();
        let mut offsets = Vec::new();
        for i in 0..200_000u32 {
            offsets.push(insert(&mut index, &key(i), &[7u8; 8]));
        }
        assert_eq!(index.len(), 200_000);
        for (i, &at) in offsets.iter().enumerate() {
            assert_eq!(index.live_at(at), Some((&key(i as u32)[..], &[7u8; 8][..])));
        }
        assert!(!index.compact_if_sparse(), "nothing is dead yet");
        for i in (0..200_000u32).filter(|i| i % 4 != 0) {
            let Entry::Occupied(held) = index.entry(hash(&key(i)), &key(i)) else { panic!("{i} is held") };
            held.remove();
        }
        assert!(index.compact_if_sparse(), "three quarters of the arena is dead");
        let live: Vec<u32> =
            index.entries().map(|(_, k, _)| u32::from_le_bytes(k.try_into().expect("four-byte keys"))).collect();
        assert_eq!(live, (0..200_000).step_by(4).collect::<Vec<_>>());
        for (at, key, _) in index.entries().collect::<Vec<_>>() {
            assert_eq!(index.get(key).map(|_| index.live_at(at).is_some()), Some(true));
        }
    }
}
