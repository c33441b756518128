//! One group's values for a min or max over a variable-width type (text, numeric, ...), as
//! encoded byte strings with their multiplicities, in order: a sorted vector while the group
//! holds few distinct values (most groups: a B-tree's first node alone takes ~300 bytes and an
//! allocation), a B-tree beyond.

use std::collections::BTreeMap;

use crate::heap_bytes::HeapBytes;

/// Distinct values kept in a sorted vector before the group moves to a B-tree.
const SORTED: usize = 32;

pub enum ByteValues {
    Sorted(Vec<(Box<[u8]>, i64)>),
    Tree(BTreeMap<Box<[u8]>, i64>),
}

impl Default for ByteValues {
    fn default() -> Self {
        ByteValues::Sorted(Vec::new())
    }
}

impl ByteValues {
    pub fn count_mut(&mut self, value: &[u8]) -> Option<&mut i64> {
        match self {
            ByteValues::Sorted(sorted) => match sorted.binary_search_by(|(v, _)| v.as_ref().cmp(value)) {
                Ok(at) => Some(&mut sorted[at].1),
                Err(_) => None,
            },
            ByteValues::Tree(tree) => tree.get_mut(value),
        }
    }

    /// Adds a value the group does not hold.
    pub fn put(&mut self, value: Box<[u8]>, count: i64) {
        match self {
            ByteValues::Sorted(sorted) if sorted.len() < SORTED => {
                if sorted.is_empty() {
                    // Room for just this one (the vector would make room for four): groups
                    // with a single value are the most common.
                    sorted.reserve_exact(1);
                }
                let at = sorted.partition_point(|(v, _)| *v < value);
                sorted.insert(at, (value, count));
            }
            ByteValues::Sorted(sorted) => {
                let mut tree: BTreeMap<Box<[u8]>, i64> = std::mem::take(sorted).into_iter().collect();
                tree.insert(value, count);
                *self = ByteValues::Tree(tree);
            }
            ByteValues::Tree(tree) => {
                tree.insert(value, count);
            }
        }
    }

    pub fn delete(&mut self, value: &[u8]) {
        match self {
            ByteValues::Sorted(sorted) => {
                if let Ok(at) = sorted.binary_search_by(|(v, _)| v.as_ref().cmp(value)) {
                    sorted.remove(at);
                }
            }
            ByteValues::Tree(tree) => {
                tree.remove(value);
            }
        }
    }

    /// The smallest value, or with `max` the largest.
    pub fn extreme(&self, max: bool) -> Option<&[u8]> {
        match self {
            ByteValues::Sorted(sorted) => if max { sorted.last() } else { sorted.first() }.map(|(v, _)| v.as_ref()),
            ByteValues::Tree(tree) => {
                if max { tree.keys().next_back() } else { tree.keys().next() }.map(|v| v.as_ref())
            }
        }
    }

    /// Every value with its multiplicity, in order.
    pub fn entries(&self) -> Box<dyn Iterator<Item = (&[u8], i64)> + '_> {
        match self {
            ByteValues::Sorted(sorted) => Box::new(sorted.iter().map(|(v, c)| (v.as_ref(), *c))),
            ByteValues::Tree(tree) => Box::new(tree.iter().map(|(v, c)| (v.as_ref(), *c))),
        }
    }
}

impl HeapBytes for ByteValues {
    fn heap_bytes(&self) -> usize {
        match self {
            ByteValues::Sorted(sorted) => {
                sorted.capacity() * std::mem::size_of::<(Box<[u8]>, i64)>()
                    + sorted.iter().map(|(v, _)| v.len()).sum::<usize>()
            }
            ByteValues::Tree(tree) => tree.heap_bytes(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Random puts and deletes, through the move to a B-tree: the same values, order and
    /// extremes as a B-tree.
    #[test]
    fn agrees_with_a_btree_through_growth() {
        let mut values = ByteValues::default();
        let mut model: BTreeMap<Box<[u8]>, i64> = BTreeMap::new();
        let mut next = crate::test_random::xorshift(0x5851_f42d_4c95_7f2d);
        for step in 0..20_000 {
            let value: Box<[u8]> = format!("v{}", next() % if step < 10_000 { 100 } else { 10 }).into_bytes().into();
            match (values.count_mut(&value), model.get_mut(&value)) {
                (Some(count), Some(expected)) => {
                    assert_eq!(count, expected);
                    if next().is_multiple_of(2) {
                        values.delete(&value);
                        model.remove(&value);
                    } else {
                        *count += 1;
                        *expected += 1;
                    }
                }
                (None, None) => {
                    values.put(value.clone(), 1);
                    model.insert(value, 1);
                }
                (held, expected) => panic!("step {step}: {held:?} against {expected:?}"),
            }
            assert_eq!(values.extreme(false), model.keys().next().map(|v| v.as_ref()));
            assert_eq!(values.extreme(true), model.keys().next_back().map(|v| v.as_ref()));
        }
        let entries: Vec<(&[u8], i64)> = values.entries().collect();
        let expected: Vec<(&[u8], i64)> = model.iter().map(|(v, c)| (v.as_ref(), *c)).collect();
        assert_eq!(entries, expected);
    }
}
