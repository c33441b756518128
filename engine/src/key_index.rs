//! A primary-key index whose entries live in one byte arena: each entry is appended as
//! `[length: u32][key length: u32][key][row]` (or `[..][row]` alone when the row starts with
//! the key, as a table's row does when its primary key leads its columns), and the hash table
//! holds only a tag of the key's hash and the entry's offset, in 8 bytes. Storing a row costs
//! no allocation of its own, growing the table never touches the entries, and reading every
//! row walks the arena in insertion order. A replaced or removed entry is marked dead (the top bit of its length) and
//! the arena is compacted once dead entries take more than half of it; in a store's index
//! ([`KeyIndex::reusing_space`]) a later batch stores a new key's entry of the same size in a
//! dead entry's place first, so a table whose rows come and go keeps its size. Changes arrive
//! as a batch, one per key (`batch.rs`: the probe that finds a key also changes it), with the
//! keys' hashes, so the index prefetches the slots and entries of the keys a few lookups
//! ahead and their cache misses overlap. `entry.rs` changes one key at a time through an
//! entry and tells callers where entries live (a join's arrangement lists its rows by offset).

mod batch;
mod entry;

use std::hash::BuildHasher;

use rustc_hash::{FxBuildHasher, FxHashMap};

use crate::heap_bytes::HeapBytes;
use crate::prefetch::prefetch;
use crate::same_bytes::same_bytes;

pub use batch::{KeyChange, Refusal};
pub use entry::Entry;

/// Bytes before an entry's key: its length and its key's length.
const HEADER: usize = 8;
/// Marks a dead entry in its length word.
const DEAD: u32 = 1 << 31;
/// Marks, in an entry's key length word, a key that is its row's first bytes and is not
/// stored apart (a table whose primary key leads its columns: most do).
const KEY_IN_ROW: u32 = 1 << 31;
/// Dead bytes tolerated before a compaction is considered at all.
const COMPACT_AFTER: usize = 1 << 20;
/// Bits of a slot's tag: the top bits of its key's mixed hash (see [`tag`]).
const TAG_BITS: u32 = 28;
/// Bits of a slot's entry offset.
const OFFSET_BITS: u32 = 64 - TAG_BITS;
/// Bytes an index's arena may hold (64 GiB, less a line: the last offset marks empty slots).
const MAX_ARENA: usize = (1 << OFFSET_BITS) - CACHE_LINE;
/// Keys an index may hold: 3/4 of the most slots a tag gives a home in (about 201 million).
const MAX_KEYS: usize = (1 << TAG_BITS) / 4 * 3;
/// Bytes of a cache line.
const CACHE_LINE: usize = 64;

/// A key and row too large for an entry (2 GiB together).
#[derive(Debug, thiserror::Error)]
#[error("a row of {0} bytes with its key is too large to store (at most 2 GiB)")]
pub struct EntryTooLarge(pub usize);

/// A change that would take an index past what its slots can address.
#[derive(Debug, thiserror::Error)]
#[error(
    "storing {keys} more keys and {bytes} more bytes would pass what one index holds \
     ({MAX_KEYS} keys, {} GiB of keys and rows)",
    MAX_ARENA.div_ceil(1 << 30)
)]
pub struct IndexFull {
    pub keys: usize,
    pub bytes: usize,
}

/// Why the entry API could not store a row.
#[derive(Debug, thiserror::Error)]
pub enum NoRoom {
    #[error(transparent)]
    TooLarge(#[from] EntryTooLarge),
    #[error(transparent)]
    Full(#[from] IndexFull),
}

/// The index: an open-addressing table of slots (linear probing, at most 3/4 full, removal
/// by backward shift, so there are no tombstones) over the arena. Its own table, rather than
/// a library's, so that a batch of lookups can prefetch the slots and entries it will touch
/// (see [`KeyIndex::prefetch_ahead`]): in a table of millions of rows each lookup is
/// otherwise two cache misses in a row.
pub struct KeyIndex {
    slots: Vec<Slot>,
    len: usize,
    arena: Vec<u8>,
    /// Bytes of dead entries, headers included.
    dead_bytes: usize,
    /// In an index made [`KeyIndex::reusing_space`]: dead entries by size (header included),
    /// where a batch stores a new key's entry of that size instead of appending it.
    free: Option<FxHashMap<usize, Vec<usize>>>,
    /// Entries the current batch killed, as (size, offset): free once the batch applies.
    freed: Vec<(usize, usize)>,
}

impl Default for KeyIndex {
    fn default() -> Self {
        Self { slots: vec![Slot::EMPTY; 8], len: 0, arena: Vec::new(), dead_bytes: 0, free: None, freed: Vec::new() }
    }
}

/// A table slot in 8 bytes, so that a table of millions of keys has half the slots' cache
/// footprint of a (hash, offset) pair: the key's tag (the top [`TAG_BITS`] bits of its
/// mixed hash, whose top bits are also the slot's home) above where its entry starts in the
/// arena. All ones: empty.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Slot(u64);

impl Slot {
    const EMPTY: Slot = Slot(u64::MAX);
    const OFFSET_MASK: u64 = (1 << OFFSET_BITS) - 1;

    /// The slot of a key tagged `tag` whose entry starts at `at` (below [`MAX_ARENA`]).
    #[inline]
    fn new(tag: u32, at: usize) -> Self {
        Slot(u64::from(tag) << OFFSET_BITS | at as u64)
    }

    #[inline]
    fn is_empty(self) -> bool {
        self == Slot::EMPTY
    }

    #[inline]
    fn tag(self) -> u32 {
        (self.0 >> OFFSET_BITS) as u32
    }

    /// Where the entry starts.
    #[inline]
    fn at(self) -> usize {
        (self.0 & Self::OFFSET_MASK) as usize
    }

    /// The same key's slot with its entry at `at`.
    #[inline]
    fn moved_to(self, at: usize) -> Self {
        Slot::new(self.tag(), at)
    }
}

/// Where the probe of a key tagged `tag` starts in a table of `slots` slots (a power of two,
/// at most `1 << TAG_BITS`): the tag's top bits.
#[inline]
fn home_in(tag: u32, slots: usize) -> usize {
    let bits = slots.trailing_zeros();
    debug_assert!(bits <= TAG_BITS, "{slots} slots, more than a tag gives a home in");
    (tag >> (TAG_BITS - bits)) as usize
}

/// A key's tag: the top bits of its hash mixed by a Fibonacci product (FxHash's low bits are
/// weak). A slot keeps it, to skip other keys' entries without reading them and to find its
/// home again when the table grows or a removal shifts it back.
#[inline]
fn tag(hash: u64) -> u32 {
    (hash.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> OFFSET_BITS) as u32
}

/// Bytes of an entry of a key and row of these lengths stored apart (at most: a row that
/// starts with its key stores it once).
pub fn entry_size(key_length: usize, row_length: usize) -> usize {
    HEADER + key_length + row_length
}

/// The hash of a key, for the `_hashed` methods.
pub fn hash(key: &[u8]) -> u64 {
    FxBuildHasher.hash_one(key)
}

#[inline]
fn word(arena: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([arena[at], arena[at + 1], arena[at + 2], arena[at + 3]])
}

/// The entry at `at`: its total size (header included), whether it is dead, its key and row.
#[inline]
fn entry_at(arena: &[u8], at: usize) -> (usize, bool, &[u8], &[u8]) {
    let length = word(arena, at);
    let body = (length & !DEAD) as usize;
    let key_start = at + HEADER;
    let (key_length, row_start) = key_and_row_start(arena, at);
    let key = &arena[key_start..key_start + key_length];
    let row = &arena[row_start..key_start + body];
    (HEADER + body, length & DEAD != 0, key, row)
}

/// The length of the key of the entry at `at`, and where its row starts (right after the
/// header when the key is the row's first bytes), from one read of the key length word.
#[inline]
fn key_and_row_start(arena: &[u8], at: usize) -> (usize, usize) {
    let key_word = word(arena, at + 4);
    let key_length = (key_word & !KEY_IN_ROW) as usize;
    let key_start = at + HEADER;
    (key_length, if key_word & KEY_IN_ROW != 0 { key_start } else { key_start + key_length })
}

/// Whether the entry at `at` keeps its key as its row's first bytes.
fn key_in_row(arena: &[u8], at: usize) -> bool {
    word(arena, at + 4) & KEY_IN_ROW != 0
}

/// Where the row of the entry at `at` starts.
fn row_start(arena: &[u8], at: usize) -> usize {
    key_and_row_start(arena, at).1
}

fn key_at(arena: &[u8], at: usize) -> &[u8] {
    entry_at(arena, at).2
}

/// Lookups whose cache lines a batch prefetches together (see [`KeyIndex::prefetch_ahead`]).
const GROUP: usize = 8;

impl KeyIndex {
    /// An index whose batches store new keys in the space of entries that earlier batches
    /// removed, when the sizes match (rows of fixed-width columns always do): a table whose
    /// rows come and go then keeps its arena's size, instead of growing it into fresh memory
    /// and compacting it. Its entries' offsets are not stable (an offset may come to hold
    /// another key), so it is for stores, never for the entry API's callers, and it no
    /// longer reads its rows in the order they were stored.
    pub fn reusing_space() -> Self {
        Self { free: Some(FxHashMap::default()), ..Self::default() }
    }

    /// Whether a key and row of `size` bytes together can be stored.
    pub fn fits(size: usize) -> bool {
        size < DEAD as usize
    }

    /// Makes room for `additional` more keys without growing the table.
    pub fn reserve(&mut self, additional: usize) {
        let needed = self.len + additional;
        if needed * 4 > self.slots.len() * 3 {
            // At most the slots a tag gives a home in, which hold MAX_KEYS (callers check
            // [`KeyIndex::room_for`] first).
            self.resize((needed * 4 / 3 + 1).next_power_of_two().min(1 << TAG_BITS));
        }
    }

    /// Heap bytes of the table and the arena.
    pub fn heap_bytes(&self) -> usize {
        let free = self.free.iter().flat_map(|free| free.values()).map(|offsets| offsets.heap_bytes()).sum::<usize>();
        self.slots.capacity() * std::mem::size_of::<Slot>() + self.arena.capacity() + free
    }

    /// Number of stored rows.
    pub fn len(&self) -> usize {
        self.len
    }

    fn mask(&self) -> usize {
        self.slots.len() - 1
    }

    /// Where the probe of a key tagged `tag` starts (see [`home_in`]).
    #[inline]
    fn home(&self, tag: u32) -> usize {
        home_in(tag, self.slots.len())
    }

    /// Whether `keys` more keys and `bytes` more bytes of entries fit what the slots can
    /// address (a store checks a change before applying it; dead entries count until a
    /// compaction drops them).
    pub fn room_for(&self, keys: usize, bytes: usize) -> Result<(), IndexFull> {
        let fits = self.len.saturating_add(keys) <= MAX_KEYS && self.arena.len().saturating_add(bytes) <= MAX_ARENA;
        if fits { Ok(()) } else { Err(IndexFull { keys, bytes }) }
    }

    /// The slot holding `key`, or the empty slot ending its probe.
    fn probe(&self, hash: u64, key: &[u8]) -> Result<usize, usize> {
        let mask = self.mask();
        let tag = tag(hash);
        let mut index = self.home(tag);
        loop {
            let slot = self.slots[index];
            if slot.is_empty() {
                return Err(index);
            }
            if slot.tag() == tag && same_bytes(key_at(&self.arena, slot.at()), key) {
                return Ok(index);
            }
            index = (index + 1) & mask;
        }
    }

    /// Hints the cache lines that the lookups after `position` of a batch (keys hashing to
    /// `hashes`) will read, a group of [`GROUP`] lookups at a time: at the start of each group
    /// it prefetches the first slot of every lookup two groups ahead, and the entry of every
    /// lookup one group ahead (whose slot was prefetched a group earlier and is read now). A
    /// lookup then finds its slot and entry in the cache, and the misses of many lookups
    /// overlap instead of coming one after another.
    pub fn prefetch_ahead(&self, hashes: &[u64], position: usize) {
        if !position.is_multiple_of(GROUP) {
            return;
        }
        if position == 0 {
            for &hash in hashes.iter().take(2 * GROUP) {
                prefetch(&self.slots[self.home(tag(hash))]);
            }
            self.prefetch_entries(hashes.iter().take(GROUP));
        }
        for &hash in hashes.iter().skip(position + 2 * GROUP).take(GROUP) {
            prefetch(&self.slots[self.home(tag(hash))]);
        }
        self.prefetch_entries(hashes.iter().skip(position + GROUP).take(GROUP));
    }

    /// Prefetches the entry of each hash's first slot that holds it (keys not compared): its
    /// first cache line and the next one, which holds the rest of an entry of up to 64 bytes
    /// that does not start at a line's start (the size is in the entry, not yet loaded).
    fn prefetch_entries<'h>(&self, hashes: impl Iterator<Item = &'h u64>) {
        let last = self.arena.len().saturating_sub(1);
        for &hash in hashes {
            if let Some(at) = self.first_match(hash) {
                prefetch(&self.arena[at]);
                prefetch(&self.arena[(at + CACHE_LINE - 1).min(last)]);
            }
        }
    }

    /// Where the first entry whose tag is the hash's starts (keys not compared).
    fn first_match(&self, hash: u64) -> Option<usize> {
        let mask = self.mask();
        let tag = tag(hash);
        let mut index = self.home(tag);
        loop {
            let slot = self.slots[index];
            if slot.is_empty() {
                return None;
            }
            if slot.tag() == tag {
                return Some(slot.at());
            }
            index = (index + 1) & mask;
        }
    }

    pub fn get(&self, key: &[u8]) -> Option<&[u8]> {
        self.get_hashed(hash(key), key)
    }

    pub fn get_hashed(&self, hash: u64, key: &[u8]) -> Option<&[u8]> {
        self.probe(hash, key).ok().map(|index| entry_at(&self.arena, self.slots[index].at()).3)
    }

    #[cfg(test)]
    fn contains_key(&self, key: &[u8]) -> bool {
        self.get(key).is_some()
    }

    /// Removes `key` (one key's batch).
    #[cfg(test)]
    fn remove(&mut self, key: &[u8]) {
        let held = self.get(key).map(<[u8]>::to_vec);
        let change = KeyChange { hash: hash(key), key, before: held.as_deref(), after: None };
        let _ = self.apply_changes(&[change], false);
    }

    /// Empties a slot, shifting later slots of its run back so every probe still finds its
    /// key before an empty slot.
    fn vacate(&mut self, index: usize) {
        let mask = self.mask();
        let mut hole = index;
        let mut next = (index + 1) & mask;
        loop {
            let slot = self.slots[next];
            if slot.is_empty() {
                break;
            }
            let home = self.home(slot.tag());
            // The slot may move back into the hole when the hole lies between its home and it.
            if next.wrapping_sub(home) & mask >= next.wrapping_sub(hole) & mask {
                self.slots[hole] = slot;
                hole = next;
            }
            next = (next + 1) & mask;
        }
        self.slots[hole] = Slot::EMPTY;
        self.len -= 1;
    }

    /// Stores `row` under `key`, replacing what was there (one key's batch).
    #[cfg(test)]
    fn insert(&mut self, key: &[u8], row: &[u8]) -> Result<(), Refusal> {
        self.apply_changes(&[KeyChange { hash: hash(key), key, before: None, after: Some(row) }], false)
    }

    /// Moves every slot into a table of `capacity` slots (a power of two).
    fn resize(&mut self, capacity: usize) {
        let old = std::mem::replace(&mut self.slots, vec![Slot::EMPTY; capacity]);
        let mask = self.mask();
        for slot in old.into_iter().filter(|s| !s.is_empty()) {
            let mut index = self.home(slot.tag());
            while !self.slots[index].is_empty() {
                index = (index + 1) & mask;
            }
            self.slots[index] = slot;
        }
    }

    /// Every stored row, in the order they were stored (in an index reusing space: in the
    /// order of their places in the arena).
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

    /// Moves the live entries down over the dead ones, in place, once dead entries take more
    /// than half of the arena; says whether it did (every offset given out before is then
    /// stale). The arena keeps its allocation (unless most of it is now unused): the entries
    /// appended next fill the pages it already has instead of a fresh arena's, each page
    /// faulted in and cleared again.
    pub fn compact_if_sparse(&mut self) -> bool {
        if self.dead_bytes < COMPACT_AFTER || self.dead_bytes * 2 < self.arena.len() {
            return false;
        }
        self.compact();
        true
    }

    /// Moves the live entries down over the dead ones, in place (see
    /// [`KeyIndex::compact_if_sparse`]); every offset given out before is then stale.
    pub fn compact(&mut self) {
        let mask = self.mask();
        let (mut at, mut to) = (0, 0);
        while at < self.arena.len() {
            let (size, dead, key, _) = entry_at(&self.arena, at);
            if !dead {
                let mut index = self.home(tag(hash(key)));
                if to != at {
                    self.arena.copy_within(at..at + size, to);
                }
                // Slots moved before hold offsets below `to`, so only this entry's holds `at`.
                while !self.slots[index].is_empty() {
                    if self.slots[index].at() == at {
                        self.slots[index] = self.slots[index].moved_to(to);
                        break;
                    }
                    index = (index + 1) & mask;
                }
                to += size;
            }
            at += size;
        }
        self.arena.truncate(to);
        // After a mass removal the memory goes back. Steady churn (live entries about as many
        // as before) leaves at least a quarter of the allocation live and keeps it.
        if to * 8 < self.arena.capacity() {
            self.arena.shrink_to(2 * to);
        }
        self.dead_bytes = 0;
        if let Some(free) = &mut self.free {
            free.clear();
        }
    }
}

/// The bytes an entry stores after its header: its key and row, or with `key_in_row` (the
/// row starts with the key) the row alone.
fn body_size(key: &[u8], row: &[u8], key_in_row: bool) -> usize {
    if key_in_row { row.len() } else { key.len() + row.len() }
}

/// Appends an entry to the arena and returns its offset; with `key_in_row` (the row starts
/// with the key) the key is not stored apart. The caller checked its size.
fn append(arena: &mut Vec<u8>, key: &[u8], row: &[u8], key_in_row: bool) -> usize {
    let at = arena.len();
    arena.extend_from_slice(&header(key, row, key_in_row));
    if !key_in_row {
        arena.extend_from_slice(key);
    }
    arena.extend_from_slice(row);
    at
}

/// Writes an entry at `at`, over bytes of exactly its size.
fn write_entry(arena: &mut [u8], at: usize, key: &[u8], row: &[u8], key_in_row: bool) {
    let mut start = at + HEADER;
    arena[at..start].copy_from_slice(&header(key, row, key_in_row));
    if !key_in_row {
        arena[start..start + key.len()].copy_from_slice(key);
        start += key.len();
    }
    arena[start..start + row.len()].copy_from_slice(row);
}

/// An entry's header: the length of its body, then its key's length (marked when the key is
/// the row's first bytes).
fn header(key: &[u8], row: &[u8], key_in_row: bool) -> [u8; HEADER] {
    let mut header = [0u8; HEADER];
    header[..4].copy_from_slice(&(body_size(key, row, key_in_row) as u32).to_le_bytes());
    let key_word = key.len() as u32 | if key_in_row { KEY_IN_ROW } else { 0 };
    header[4..].copy_from_slice(&key_word.to_le_bytes());
    header
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insert_replace_remove() {
        let mut index = KeyIndex::default();
        index.insert(b"k1", b"row one").expect("a lenient insert");
        index.insert(b"k2", b"row two").expect("a lenient insert");
        index.insert(b"k1", b"row uno").expect("a lenient insert");
        assert_eq!(index.get(b"k1"), Some(&b"row uno"[..]));
        assert_eq!(index.values().count(), 2);
        index.remove(b"k2");
        assert!(!index.contains_key(b"k2"));
        assert_eq!(index.values().collect::<Vec<_>>(), [&b"row uno"[..]]);
        // A longer row moves the entry; the old one is skipped.
        index.insert(b"k1", b"a longer row").expect("a lenient insert");
        assert_eq!(index.values().collect::<Vec<_>>(), [&b"a longer row"[..]]);
        // An empty key is a key like any other.
        index.insert(b"", b"").expect("a lenient insert");
        assert_eq!(index.get(b""), Some(&b""[..]));
        assert_eq!(index.len(), 2);
    }

    #[test]
    fn compaction_keeps_every_live_entry() {
        let mut index = KeyIndex::default();
        let key = |i: u32| i.to_le_bytes();
        for i in 0..100_000u32 {
            index.insert(&key(i), format!("row {i}").as_bytes()).expect("a lenient insert");
        }
        let full = index.arena.len();
        // Remove most entries and grow the rest, so dead entries pass half of the arena.
        for i in 0..100_000u32 {
            if i % 10 != 0 {
                index.remove(&key(i));
            } else {
                index.insert(&key(i), format!("a longer row {i}").as_bytes()).expect("a lenient insert");
            }
        }
        assert!(index.arena.len() < full, "the arena was compacted");
        assert_eq!(index.len(), 10_000);
        for i in (0..100_000u32).step_by(10) {
            assert_eq!(index.get(&key(i)), Some(format!("a longer row {i}").as_bytes()));
        }
        assert_eq!(index.values().count(), 10_000);
    }

    #[test]
    fn compaction_under_steady_churn_keeps_the_arena_allocation() {
        let mut index = KeyIndex::default();
        let key = |i: u32| i.to_le_bytes();
        // Rows alternate between two lengths, so every rewrite moves its entry.
        let row = |i: u32, round: usize| format!("row {i} {}", "x".repeat(1 + round % 2));
        for i in 0..50_000u32 {
            index.insert(&key(i), row(i, 0).as_bytes()).expect("a lenient insert");
        }
        let mut capacities = Vec::new();
        for round in 1..=8 {
            for i in 0..50_000u32 {
                index.insert(&key(i), row(i, round).as_bytes()).expect("a lenient insert");
            }
            capacities.push(index.arena.capacity());
        }
        let live: usize = (0..50_000u32).map(|i| HEADER + 4 + row(i, 8).len()).sum();
        assert!(index.arena.len() < 3 * live, "the arena was compacted: {} bytes for {live} live", index.arena.len());
        assert!(capacities[2..].iter().all(|&c| c == capacities[2]), "the allocation stayed: {capacities:?}");
        for i in 0..50_000u32 {
            assert_eq!(index.get(&key(i)), Some(row(i, 8).as_bytes()));
        }
        // A mass removal gives the memory back.
        for i in (0..50_000u32).filter(|i| i % 20 != 0) {
            match index.entry(hash(&key(i)), &key(i)) {
                Entry::Occupied(held) => held.remove(),
                Entry::Vacant(_) => panic!("key {i} is held"),
            }
        }
        assert!(index.compact_if_sparse(), "most of the arena is dead");
        assert!(index.arena.capacity() <= capacities[7] / 4, "{} bytes kept", index.arena.capacity());
        assert_eq!(index.values().count(), 2_500);
    }

    #[test]
    fn a_slot_keeps_any_tag_beside_any_offset_an_arena_can_have() {
        for tag in [0, 1, 0x0abc_def0 >> 4, (1 << TAG_BITS) - 1] {
            for at in [0, 1, 0x0001_2345_6789, MAX_ARENA - 1] {
                let slot = Slot::new(tag, at);
                assert_eq!((slot.tag(), slot.at()), (tag, at));
                assert!(!slot.is_empty(), "tag {tag:#x} at {at:#x}");
                assert_eq!(slot.moved_to(7).at(), 7);
                assert_eq!(slot.moved_to(7).tag(), tag);
            }
        }
        // The home is the tag's top bits at every table size a tag serves.
        for bits in [3, 20, TAG_BITS] {
            assert_eq!(home_in((1 << TAG_BITS) - 1, 1 << bits), (1 << bits) - 1);
            assert_eq!(home_in(1 << (TAG_BITS - bits), 1 << bits), 1);
            assert_eq!(home_in(0, 1 << bits), 0);
        }
    }

    #[test]
    fn an_index_refuses_what_its_slots_cannot_address() {
        let mut index = KeyIndex::default();
        index.insert(b"key", b"row").expect("a lenient insert");
        assert!(index.room_for(MAX_KEYS - 1, MAX_ARENA - index.arena.len()).is_ok());
        let full = index.room_for(MAX_KEYS, 0).expect_err("one key too many");
        assert_eq!(
            full.to_string(),
            format!(
                "storing {MAX_KEYS} more keys and 0 more bytes would pass what one index holds ({MAX_KEYS} keys, 64 GiB of keys and rows)"
            )
        );
        assert!(index.room_for(0, MAX_ARENA).is_err(), "one byte too many");
        assert!(index.room_for(usize::MAX, usize::MAX).is_err());
    }

    #[test]
    fn a_row_that_starts_with_its_key_stores_the_key_once() {
        let mut index = KeyIndex::default();
        index.insert(b"key", b"key and more").expect("a lenient insert");
        assert_eq!(index.arena.len(), HEADER + b"key and more".len());
        assert_eq!(index.get(b"key"), Some(&b"key and more"[..]));
        // The same key with a row of the same length that does not start with it moves.
        index.insert(b"key", b"other row!!!").expect("a lenient insert");
        assert_eq!(index.get(b"key"), Some(&b"other row!!!"[..]));
        assert_eq!(index.values().collect::<Vec<_>>(), [&b"other row!!!"[..]]);
    }

    #[test]
    fn agrees_with_a_model_through_growth_and_removals() {
        for mut index in [KeyIndex::default(), KeyIndex::reusing_space()] {
            agrees_with_a_model(&mut index);
        }
    }

    fn agrees_with_a_model(index: &mut KeyIndex) {
        let mut model = std::collections::HashMap::new();
        let mut next = crate::test_random::xorshift(0x2545_f491_4f6c_dd1d);
        for step in 0..200_000u64 {
            // Few distinct keys at first (long runs of removals), then many (growth).
            let key = (next() % if step < 50_000 { 64 } else { 20_000 }).to_le_bytes();
            match next() % 3 {
                0 => {
                    index.remove(&key);
                    model.remove(&key);
                }
                _ => {
                    // Short rows, rows that start with their key (stored once) and rows of
                    // the same lengths that do not, so a key's entry changes between both.
                    let fill = (step % 251) as u8;
                    let row = match next() % 3 {
                        0 => vec![fill; (next() % 4) as usize],
                        1 => [&key[..], &vec![fill; (next() % 4) as usize]].concat(),
                        _ => vec![!key[0]; 8 + (next() % 4) as usize],
                    };
                    index.insert(&key, &row).expect("a lenient insert");
                    model.insert(key, row);
                }
            }
            if step % 1_000 == 0 {
                assert_eq!(index.len(), model.len(), "at step {step}");
                for (key, row) in &model {
                    assert_eq!(index.get(key), Some(row.as_slice()), "at step {step}");
                }
            }
        }
        for probe in 20_000u64..20_100 {
            assert_eq!(index.get(&probe.to_le_bytes()), None);
        }
    }
}
