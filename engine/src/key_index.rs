//! A primary-key index that stores each entry (key and row together) in one allocation:
//! `[key length: u32][key][row]`, beside the key's hash (so growing the table and probing
//! it rarely touch the entries themselves). Half the allocations of a map from boxed keys to
//! boxed rows.

use std::hash::BuildHasher;

use hashbrown::HashTable;
use hashbrown::hash_table::Entry;
use rustc_hash::FxBuildHasher;

#[derive(Default)]
pub struct KeyIndex {
    table: HashTable<(u64, Box<[u8]>)>,
}

fn hash(key: &[u8]) -> u64 {
    FxBuildHasher.hash_one(key)
}

/// An entry's key and row.
fn split(entry: &[u8]) -> (&[u8], &[u8]) {
    let length = u32::from_le_bytes([entry[0], entry[1], entry[2], entry[3]]) as usize;
    entry[4..].split_at(length)
}

fn key_of(entry: &[u8]) -> &[u8] {
    split(entry).0
}

impl KeyIndex {
    pub fn reserve(&mut self, additional: usize) {
        self.table.reserve(additional, |(hash, _)| *hash);
    }

    pub fn get(&self, key: &[u8]) -> Option<&[u8]> {
        let hash = hash(key);
        self.table.find(hash, |(h, entry)| *h == hash && key_of(entry) == key).map(|(_, entry)| split(entry).1)
    }

    pub fn contains_key(&self, key: &[u8]) -> bool {
        self.get(key).is_some()
    }

    pub fn remove(&mut self, key: &[u8]) {
        let hash = hash(key);
        if let Ok(entry) = self.table.find_entry(hash, |(h, entry)| *h == hash && key_of(entry) == key) {
            entry.remove();
        }
    }

    /// Stores `row` under `key`, replacing what was there.
    pub fn insert(&mut self, key: &[u8], row: &[u8]) {
        let mut bytes = Vec::with_capacity(4 + key.len() + row.len());
        bytes.extend_from_slice(&(key.len() as u32).to_le_bytes());
        bytes.extend_from_slice(key);
        bytes.extend_from_slice(row);
        let bytes = bytes.into_boxed_slice();
        let hash = hash(key);
        match self.table.entry(hash, |(h, entry)| *h == hash && key_of(entry) == key, |(h, _)| *h) {
            Entry::Occupied(mut occupied) => occupied.get_mut().1 = bytes,
            Entry::Vacant(vacant) => {
                vacant.insert((hash, bytes));
            }
        }
    }

    /// Every stored row.
    pub fn values(&self) -> impl Iterator<Item = &[u8]> {
        self.table.iter().map(|(_, entry)| split(entry).1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insert_replace_remove() {
        let mut index = KeyIndex::default();
        index.insert(b"k1", b"row one");
        index.insert(b"k2", b"row two");
        index.insert(b"k1", b"row uno");
        assert_eq!(index.get(b"k1"), Some(&b"row uno"[..]));
        assert_eq!(index.values().count(), 2);
        index.remove(b"k2");
        assert!(!index.contains_key(b"k2"));
        assert_eq!(index.values().collect::<Vec<_>>(), [&b"row uno"[..]]);
        // An empty key is a key like any other.
        index.insert(b"", b"");
        assert_eq!(index.get(b""), Some(&b""[..]));
    }
}
