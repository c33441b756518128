//! Heap bytes of the engine's state (operator state, stored rows), for monitoring and the
//! benchmarks: what each structure asked the allocator for (capacities, not lengths), without
//! the allocator's own overhead. Resident memory cannot tell one view's state from another's
//! or from memory the allocator keeps after a large load; these counts can.

use std::collections::{BTreeMap, HashMap};
use std::mem::size_of;

/// Bytes a value owns on the heap (its inline size not counted).
pub trait HeapBytes {
    fn heap_bytes(&self) -> usize;
}

/// A vector's buffer, plus what its elements own.
impl<T: HeapBytes> HeapBytes for Vec<T> {
    fn heap_bytes(&self) -> usize {
        self.capacity() * size_of::<T>() + self.iter().map(HeapBytes::heap_bytes).sum::<usize>()
    }
}

/// A small vector's buffer when it spilled out of place, plus what its elements own.
impl<A: smallvec::Array> HeapBytes for smallvec::SmallVec<A>
where
    A::Item: HeapBytes,
{
    fn heap_bytes(&self) -> usize {
        let buffer = if self.spilled() { self.capacity() * size_of::<A::Item>() } else { 0 };
        buffer + self.iter().map(HeapBytes::heap_bytes).sum::<usize>()
    }
}

impl HeapBytes for Box<[u8]> {
    fn heap_bytes(&self) -> usize {
        self.len()
    }
}

impl<T: HeapBytes> HeapBytes for Option<T> {
    fn heap_bytes(&self) -> usize {
        self.as_ref().map_or(0, HeapBytes::heap_bytes)
    }
}

macro_rules! owns_nothing {
    ($($t:ty),*) => { $(impl HeapBytes for $t { fn heap_bytes(&self) -> usize { 0 } })* };
}
owns_nothing!(bool, u8, u32, u64, usize, i64, i128, u128, f64, [u128; 2]);

/// A hash table's buckets (one control byte each, plus the entry), plus what the entries own.
impl<K: HeapBytes, V: HeapBytes, S> HeapBytes for HashMap<K, V, S> {
    fn heap_bytes(&self) -> usize {
        let buckets = if self.capacity() == 0 { 0 } else { (self.capacity() * 8 / 7).next_power_of_two() };
        buckets * (size_of::<(K, V)>() + 1) + self.iter().map(|(k, v)| k.heap_bytes() + v.heap_bytes()).sum::<usize>()
    }
}

/// A B-tree's nodes (room for 11 entries each, about two thirds used once it has more than
/// one; a small tree is one whole node), plus what the entries own.
impl<K: HeapBytes, V: HeapBytes> HeapBytes for BTreeMap<K, V> {
    fn heap_bytes(&self) -> usize {
        let nodes = self.len().div_ceil(7);
        nodes * (11 * size_of::<(K, V)>() + 16)
            + self.iter().map(|(k, v)| k.heap_bytes() + v.heap_bytes()).sum::<usize>()
    }
}

impl<A: HeapBytes, B: HeapBytes> HeapBytes for (A, B) {
    fn heap_bytes(&self) -> usize {
        self.0.heap_bytes() + self.1.heap_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_buffers_and_what_elements_own() {
        let keys: Vec<Box<[u8]>> = vec![Box::from(&b"abc"[..]), Box::from(&b"de"[..])];
        assert_eq!(keys.heap_bytes(), keys.capacity() * size_of::<Box<[u8]>>() + 5);
        let mut map: HashMap<Box<[u8]>, i64> = HashMap::new();
        assert_eq!(map.heap_bytes(), 0);
        map.insert(Box::from(&b"key"[..]), 1);
        assert!(map.heap_bytes() >= size_of::<(Box<[u8]>, i64)>() + 3);
        let tree: BTreeMap<Box<[u8]>, i64> = (0..100u8).map(|i| (Box::from(&[i][..]), 1)).collect();
        assert!(tree.heap_bytes() >= 100 * (size_of::<(Box<[u8]>, i64)>() + 1));
        // One entry still takes a whole node.
        let one: BTreeMap<Box<[u8]>, i64> = [(Box::from(&b"k"[..]), 1)].into_iter().collect();
        assert!(one.heap_bytes() > 11 * size_of::<(Box<[u8]>, i64)>());
    }

    #[test]
    fn a_small_vector_owns_a_buffer_only_once_it_spills() {
        let mut offsets: smallvec::SmallVec<[usize; 2]> = smallvec::SmallVec::new();
        offsets.extend([1, 2]);
        assert_eq!(offsets.heap_bytes(), 0);
        offsets.push(3);
        assert_eq!(offsets.heap_bytes(), offsets.capacity() * size_of::<usize>());
        assert!(offsets.heap_bytes() >= 3 * size_of::<usize>());
    }
}
