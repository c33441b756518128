//! An aggregate's group keys (and a join side's join keys) to numbers. A key of at most 15
//! bytes (most: a few integers or dates) is packed into a `u128` (see `packed_values::pack`) and kept in an
//! open-addressing table of its own: no allocation and no `memcmp` per lookup, and a batch's
//! lookups can load the slots of the next few keys together, so that their cache misses
//! overlap. Longer keys are kept as byte strings in a hash map. [`GroupKeys`] keeps each
//! group's key by group number, packed in place when it fits.

use rustc_hash::FxHashMap;

use super::packed_values::{PACKED_BYTES, pack};

use crate::heap_bytes::HeapBytes;
use crate::prefetch::prefetch;

/// Lookups whose slots are loaded together (see [`GroupIndex::load_ahead`]).
const AHEAD: usize = 8;

/// A key prepared for lookups: packed with its hash, or too long to pack.
#[derive(Clone, Copy)]
pub enum Probe {
    Packed { key: u128, hash: u64 },
    Bytes,
}

impl Probe {
    /// A key already packed (see `packed_values::pack_integer_rows`).
    pub fn packed(key: u128) -> Self {
        Probe::Packed { key, hash: hash(key) }
    }

    pub fn of(key: &[u8]) -> Self {
        // Checked first: `pack` refuses a long key with an error, built per call.
        if key.len() > PACKED_BYTES {
            return Probe::Bytes;
        }
        match pack(key) {
            Ok(key) => Probe::packed(key),
            Err(_) => Probe::Bytes,
        }
    }
}

/// Mixes all 128 bits into 64 (a folded multiply), so that the low bits that pick a slot
/// depend on every byte of the key.
fn hash(key: u128) -> u64 {
    let folded = (key as u64) ^ ((key >> 64) as u64).rotate_left(29);
    let product = u128::from(folded) * 0x9e37_79b9_7f4a_7c15;
    (product as u64) ^ ((product >> 64) as u64)
}

/// A value no packed key takes (a packed key's last byte is its length, at most
/// [`PACKED_BYTES`]): the key of a vacant slot in [`GroupIndex`], and in [`GroupKeys`] the
/// mark of a group whose key is too long to pack.
const NOT_PACKED: u128 = u128::MAX;
/// The key of a vacant slot.
const VACANT: u128 = NOT_PACKED;

#[derive(Default)]
pub struct GroupIndex {
    /// Linear probing over `keys`, at most 3/4 full; a power of two long (or empty). The
    /// groups of the keys lie apart, at the same places: a probe compares keys four a cache
    /// line and reads one group when it finds its key.
    keys: Vec<u128>,
    groups: Vec<u32>,
    len: usize,
    bytes: FxHashMap<Box<[u8]>, usize>,
}

impl GroupIndex {
    /// Heap bytes of the table and the long keys' map.
    pub fn heap_bytes(&self) -> usize {
        self.keys.heap_bytes() + self.groups.heap_bytes() + self.bytes.heap_bytes()
    }

    fn mask(&self) -> usize {
        self.keys.len() - 1
    }

    /// The group of a key, if it has one.
    pub fn get(&self, probe: Probe, key: &[u8]) -> Option<usize> {
        match probe {
            Probe::Packed { key, hash } => self.find(key, hash).map(|at| self.groups[at] as usize),
            Probe::Bytes => self.bytes.get(key).copied(),
        }
    }

    fn find(&self, key: u128, hash: u64) -> Option<usize> {
        if self.keys.is_empty() {
            return None;
        }
        let mask = self.mask();
        let mut at = hash as usize & mask;
        loop {
            let held = self.keys[at];
            if held == key {
                return Some(at);
            }
            if held == VACANT {
                return None;
            }
            at = (at + 1) & mask;
        }
    }

    /// Gives a key (not yet in the index) its group.
    pub fn insert(&mut self, probe: Probe, key: &[u8], group: usize) {
        match probe {
            Probe::Packed { key, hash } => {
                if (self.len + 1) * 4 > self.keys.len() * 3 {
                    self.grow();
                }
                let at = self.vacant_from(hash);
                self.keys[at] = key;
                self.groups[at] = group as u32;
                self.len += 1;
            }
            Probe::Bytes => {
                self.bytes.insert(key.into(), group);
            }
        }
    }

    /// The first vacant slot from a hash's home on.
    fn vacant_from(&self, hash: u64) -> usize {
        let mask = self.mask();
        let mut at = hash as usize & mask;
        while self.keys[at] != VACANT {
            at = (at + 1) & mask;
        }
        at
    }

    fn grow(&mut self) {
        let capacity = (self.keys.len() * 2).max(16);
        let keys = std::mem::replace(&mut self.keys, vec![VACANT; capacity]);
        let groups = std::mem::replace(&mut self.groups, vec![0; capacity]);
        for (key, group) in keys.into_iter().zip(groups).filter(|(key, _)| *key != VACANT) {
            let at = self.vacant_from(hash(key));
            self.keys[at] = key;
            self.groups[at] = group;
        }
    }

    /// Removes a key; the slots after it move back so that no lookup stops early.
    pub fn remove(&mut self, key: &[u8]) {
        match Probe::of(key) {
            Probe::Packed { key, .. } => self.remove_packed(key),
            Probe::Bytes => {
                self.bytes.remove(key);
            }
        }
    }

    /// Removes a packed key (as [`GroupKeys::packed_key`] gives it).
    pub fn remove_packed(&mut self, key: u128) {
        let Some(mut hole) = self.find(key, hash(key)) else { return };
        let mask = self.mask();
        let mut at = hole;
        loop {
            at = (at + 1) & mask;
            let key = self.keys[at];
            if key == VACANT {
                break;
            }
            // The slot may fill the hole if its home is not between the hole and it.
            let home = hash(key) as usize & mask;
            if (at.wrapping_sub(home) & mask) >= (at.wrapping_sub(hole) & mask) {
                self.keys[hole] = key;
                self.groups[hole] = self.groups[at];
                hole = at;
            }
        }
        self.keys[hole] = VACANT;
        self.len -= 1;
    }

    /// Called before the lookup of `probes[position]`: every [`AHEAD`] lookups it prefetches
    /// the home slots of the next [`AHEAD`] (and at the start of this one's too), and their
    /// groups, so their cache misses overlap with this group's lookups.
    pub fn load_ahead(&self, probes: &[Probe], position: usize) {
        if !position.is_multiple_of(AHEAD) || self.keys.is_empty() {
            return;
        }
        let start = if position == 0 { 0 } else { position + AHEAD };
        for probe in probes.iter().skip(start).take(position + 2 * AHEAD - start) {
            if let Probe::Packed { hash, .. } = probe {
                let home = *hash as usize & self.mask();
                prefetch(&self.keys[home]);
                prefetch(&self.groups[home]);
            }
        }
    }
}

/// Each group's key by group number: packed in place when it fits (most keys), so that reading
/// the keys of many groups in group order streams through one vector of 16 bytes a group
/// instead of following a pointer per group. Longer keys are kept apart by group number.
#[derive(Default)]
pub struct GroupKeys {
    /// Packed keys; [`LONG`] where the key is in `long`.
    packed: Vec<u128>,
    long: FxHashMap<usize, Box<[u8]>>,
}

/// Marks a group whose key is too long to pack.
const LONG: u128 = NOT_PACKED;

/// A group's key bytes, borrowed or unpacked.
pub enum KeyBytes<'a> {
    Packed([u8; 16]),
    Bytes(&'a [u8]),
}

impl KeyBytes<'_> {
    pub fn as_slice(&self) -> &[u8] {
        match self {
            KeyBytes::Packed(bytes) => &bytes[..usize::from(bytes[PACKED_BYTES]).min(PACKED_BYTES)],
            KeyBytes::Bytes(bytes) => bytes,
        }
    }
}

impl GroupKeys {
    /// Number of group numbers given out (groups that vanished keep their key until reused).
    pub fn len(&self) -> usize {
        self.packed.len()
    }

    /// Sets the key of `group`, a group number given out before or the next one.
    pub fn set(&mut self, group: usize, probe: Probe, key: &[u8]) {
        let packed = match probe {
            Probe::Packed { key, .. } => key,
            Probe::Bytes => {
                self.long.insert(group, key.into());
                LONG
            }
        };
        match self.packed.get_mut(group) {
            Some(slot) => {
                if *slot == LONG && packed != LONG {
                    self.long.remove(&group);
                }
                *slot = packed;
            }
            None => self.packed.push(packed),
        }
    }

    pub fn get(&self, group: usize) -> KeyBytes<'_> {
        match self.packed[group] {
            LONG => KeyBytes::Bytes(&self.long[&group]),
            key => KeyBytes::Packed(key.to_be_bytes()),
        }
    }

    /// The packed key of `group`, `None` when it is too long to pack.
    pub fn packed_key(&self, group: usize) -> Option<u128> {
        Some(self.packed[group]).filter(|&key| key != LONG)
    }

    /// The packed keys of `groups`, in this order; `None` when one of them is too long to
    /// pack.
    pub fn packed(&self, groups: &[usize]) -> Option<Vec<u128>> {
        groups.iter().map(|&group| self.packed_key(group)).collect()
    }

    pub fn heap_bytes(&self) -> usize {
        self.packed.heap_bytes() + self.long.heap_bytes()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    #[test]
    fn agrees_with_a_map_through_inserts_and_removals() {
        let mut next = crate::test_random::xorshift(0x2545_f491_4f6c_dd1d);
        let mut index = GroupIndex::default();
        let mut model: HashMap<Vec<u8>, usize> = HashMap::new();
        for step in 0..50_000 {
            // Short keys (packed) over a small range so that removals hit, and some long ones.
            let length = if next().is_multiple_of(10) { 20 } else { 1 + (next() % 14) as usize };
            let seed = next() % 3_000;
            let key: Vec<u8> = (0..length).map(|i| (seed >> (i % 8)) as u8 ^ i as u8).collect();
            let probe = Probe::of(&key);
            assert_eq!(index.get(probe, &key), model.get(&key).copied(), "lookup at step {step}");
            if model.remove(&key).is_some() {
                index.remove(&key);
            } else {
                index.insert(probe, &key, step);
                model.insert(key, step);
            }
        }
        for (key, group) in &model {
            assert_eq!(index.get(Probe::of(key), key), Some(*group));
        }
        assert!(index.len + index.bytes.len() == model.len());
    }

    #[test]
    fn group_keys_come_back_as_they_were_set() {
        let mut keys = GroupKeys::default();
        let short: &[u8] = b"\x01abc";
        let long: &[u8] = b"a key of more than fifteen bytes";
        let empty: &[u8] = b"";
        for (group, key) in [short, long, empty].into_iter().enumerate() {
            keys.set(group, Probe::of(key), key);
        }
        keys.set(0, Probe::of(long), long);
        keys.set(1, Probe::of(short), short);
        assert_eq!(keys.len(), 3);
        assert_eq!([0, 1, 2].map(|g| keys.get(g).as_slice().to_vec()), [long.to_vec(), short.to_vec(), empty.to_vec()]);
        assert!(keys.heap_bytes() >= long.len());
        // Group 1's long key went when it was given a short one.
        assert_eq!(keys.long.len(), 1);
        assert!(keys.packed(&[1, 2]).is_some());
        assert_eq!(keys.packed(&[2, 0]), None);
    }
}
