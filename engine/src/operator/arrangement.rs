//! A join side's arrangement: each distinct row with its multiplicity and match count, found
//! by the row (to count it) and listed by join key (to probe it). Rows live in a
//! [`KeyIndex`] keyed by the encoded row, so a change's rows are counted with the index's
//! batched lookahead and no allocation per row; each join key's bucket lists the offsets of
//! its rows' entries. A removed row's offset stays in its bucket's list, marked dead in the
//! arena, until the list is pruned (dead offsets outnumber live ones) or the arena is
//! compacted (every list is rebuilt): removing a row touches only its own entry.

use smallvec::SmallVec;

use super::group_index::{GroupIndex, Probe};
use crate::error::{EngineError, Result};
use crate::heap_bytes::HeapBytes;
use crate::key_index::{self, Entry, KeyIndex};

/// A row's counts: how many copies the side holds, and how many rows of the other side it
/// matches (kept only where the join reads it, see `Join::unmatched_of`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub multiplicity: i64,
    pub matches: i64,
}

/// A row's value in the index: its counts, then its bucket.
const VALUE: usize = 20;
/// The bucket of rows whose join key is NULL: stored, never probed, in no list.
const UNPROBED: u32 = u32::MAX;
/// Dead offsets a list may hold before it is pruned, beyond as many as it has live ones.
const PRUNE_AFTER: u32 = 16;

fn encode(counts: Counts, bucket: u32) -> [u8; VALUE] {
    let mut value = [0u8; VALUE];
    value[..8].copy_from_slice(&counts.multiplicity.to_le_bytes());
    value[8..16].copy_from_slice(&counts.matches.to_le_bytes());
    value[16..].copy_from_slice(&bucket.to_le_bytes());
    value
}

fn decode(value: &[u8]) -> (Counts, u32) {
    let word = |range: std::ops::Range<usize>| -> [u8; 8] {
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(&value[range]);
        bytes
    };
    let mut bucket = [0u8; 4];
    bucket.copy_from_slice(&value[16..VALUE]);
    (
        Counts { multiplicity: i64::from_le_bytes(word(0..8)), matches: i64::from_le_bytes(word(8..16)) },
        u32::from_le_bytes(bucket),
    )
}

/// Offsets of a bucket's rows' entries, the first two in place: a join on a table's primary
/// key (a fact table's rows joined to their dimension row) has one row per key on that side,
/// and probing it then reads no list apart from the bucket.
type Offsets = SmallVec<[usize; 2]>;

/// The rows of one join key.
struct Bucket {
    key: Box<[u8]>,
    /// Offsets of the rows' entries, some of them dead.
    offsets: Offsets,
    live: u32,
    dead: u32,
}

/// One change to a row of the side.
pub struct RowChange<'a> {
    pub hash: u64,
    /// The join key, `None` when the row is never probed.
    pub key: Option<&'a [u8]>,
    pub row: &'a [u8],
    pub weight: i64,
    /// The match count of the row when it is new to the side.
    pub matches: i64,
}

/// The buckets, numbered; a row's value names its bucket.
#[derive(Default)]
struct Buckets {
    /// Bucket numbers by join key: packed keys (most: a few integers) are found without
    /// comparing byte strings.
    of_key: GroupIndex,
    list: Vec<Bucket>,
    /// Buckets emptied, for reuse.
    free: Vec<u32>,
}

impl Buckets {
    fn get(&self, bucket: u32) -> Option<&Bucket> {
        self.list.get(bucket as usize)
    }

    fn get_mut(&mut self, bucket: u32) -> Option<&mut Bucket> {
        self.list.get_mut(bucket as usize)
    }

    /// The bucket of `key`, made when there is none.
    fn bucket_for(&mut self, key: &[u8]) -> u32 {
        let probe = Probe::of(key);
        if let Some(bucket) = self.of_key.get(probe, key) {
            return bucket as u32;
        }
        let fresh = Bucket { key: key.into(), offsets: Offsets::new(), live: 0, dead: 0 };
        let bucket = match self.free.pop() {
            Some(bucket) => {
                self.list[bucket as usize] = fresh;
                bucket
            }
            None => {
                self.list.push(fresh);
                (self.list.len() - 1) as u32
            }
        };
        self.of_key.insert(probe, key, bucket as usize);
        bucket
    }
}

#[derive(Default)]
pub struct Arrangement {
    rows: KeyIndex,
    buckets: Buckets,
    /// Buckets whose last row the change being applied removed: freed once it is applied,
    /// unless a row of their key came back in it (an update of a row of a side keyed by its
    /// join key, as an aggregate's output is, retracts the row and inserts its new one).
    emptied: Vec<u32>,
    #[cfg(test)]
    rebuilds: usize,
}

impl Arrangement {
    /// The hash a row is found by.
    pub fn hash(row: &[u8]) -> u64 {
        key_index::hash(row)
    }

    /// The counts of a row (zero when the side does not hold it).
    pub fn counts(&self, row: &[u8]) -> Counts {
        self.rows.get_hashed(Self::hash(row), row).map(|value| decode(value).0).unwrap_or_default()
    }

    /// The rows with join key `key` as (offset, row, counts).
    #[cfg(test)]
    pub fn probe<'a>(&'a self, key: &[u8]) -> impl Iterator<Item = (usize, &'a [u8], Counts)> + 'a {
        self.probe_prepared(Probe::of(key), key)
    }

    /// Called before the lookup of `probes[position]` in a batch of
    /// [`Arrangement::probe_prepared`] lookups: prefetches the buckets' slots a few ahead.
    pub fn load_ahead(&self, probes: &[Probe], position: usize) {
        self.buckets.of_key.load_ahead(probes, position);
    }

    /// The rows with join key `key` (prepared: `Probe::of(key)`) as (offset, row, counts).
    pub fn probe_prepared<'a>(
        &'a self,
        probe: Probe,
        key: &[u8],
    ) -> impl Iterator<Item = (usize, &'a [u8], Counts)> + 'a {
        let bucket = self.buckets.of_key.get(probe, key);
        let offsets = bucket.and_then(|b| self.buckets.get(b as u32)).map_or(&[][..], |b| &b.offsets[..]);
        offsets.iter().filter_map(|&at| self.rows.live_at(at).map(|(row, value)| (at, row, decode(value).0)))
    }

    /// The row stored at `offset` (given out by [`Arrangement::probe`] since the last change).
    pub fn row_at(&self, offset: usize) -> Option<&[u8]> {
        self.rows.live_at(offset).map(|(row, _)| row)
    }

    /// Adds `weight` to the match count of the row at `offset` (given out by
    /// [`Arrangement::probe`] since the last change).
    pub fn add_matches(&mut self, offset: usize, weight: i64) -> Result<()> {
        let value = self
            .rows
            .live_row_mut(offset)
            .ok_or_else(|| EngineError::Internal("a matched join row vanished".into()))?;
        let (mut counts, bucket) = decode(value);
        counts.matches += weight;
        value.copy_from_slice(&encode(counts, bucket));
        Ok(())
    }

    /// Applies a change's rows (in the order given), looking rows up a group ahead.
    pub fn apply(&mut self, changes: &[RowChange]) -> Result<()> {
        // Checked before anything changes (the rows a change adds are at most its insertions).
        let (added, bytes) = changes
            .iter()
            .filter(|c| c.weight > 0)
            .fold((0, 0), |(added, bytes), c| (added + 1, bytes + key_index::entry_size(c.row.len(), VALUE)));
        self.rows
            .room_for(added, bytes)
            .map_err(|full| EngineError::Constraint(format!("a join's arrangement: {full}")))?;
        self.rows.reserve(added);
        let hashes: Vec<u64> = changes.iter().map(|c| c.hash).collect();
        let applied = changes.iter().enumerate().try_for_each(|(position, change)| {
            self.rows.prefetch_ahead(&hashes, position);
            self.apply_one(change)
        });
        self.free_emptied();
        applied?;
        if self.rows.compact_if_sparse() {
            self.rebuild_lists();
        }
        Ok(())
    }

    fn apply_one(&mut self, change: &RowChange) -> Result<()> {
        let retracted_too_often =
            || EngineError::Internal("a join input row was retracted more often than inserted".into());
        match self.rows.entry(change.hash, change.row) {
            Entry::Occupied(mut held) => {
                let (mut counts, bucket) = decode(held.row());
                counts.multiplicity += change.weight;
                if counts.multiplicity < 0 {
                    return Err(retracted_too_often());
                }
                if counts.multiplicity > 0 {
                    held.row_mut().copy_from_slice(&encode(counts, bucket));
                    return Ok(());
                }
                held.remove();
                self.removed_from(bucket);
            }
            Entry::Vacant(vacant) if change.weight > 0 => {
                let bucket = match change.key {
                    Some(key) => self.buckets.bucket_for(key),
                    None => UNPROBED,
                };
                let counts = Counts { multiplicity: change.weight, matches: change.matches };
                let at = vacant.insert(&encode(counts, bucket)).map_err(|e| EngineError::Internal(e.to_string()))?;
                if let Some(bucket) = self.buckets.get_mut(bucket) {
                    bucket.offsets.push(at);
                    bucket.live += 1;
                }
            }
            Entry::Vacant(_) => return Err(retracted_too_often()),
        }
        Ok(())
    }

    /// A row of `bucket` was removed: when it was its last, the bucket's list is emptied and
    /// the bucket freed once the change is applied (see `emptied`); its list is pruned when
    /// dead offsets outnumber live ones.
    fn removed_from(&mut self, bucket: u32) {
        let Some(entry) = self.buckets.list.get_mut(bucket as usize) else { return };
        entry.live -= 1;
        entry.dead += 1;
        if entry.live == 0 {
            entry.offsets.clear();
            entry.dead = 0;
            self.emptied.push(bucket);
        } else if entry.dead > entry.live + PRUNE_AFTER {
            let rows = &self.rows;
            entry.offsets.retain(|at| rows.live_at(*at).is_some());
            entry.dead = 0;
        }
    }

    /// Frees the buckets emptied by the change just applied that are still empty.
    fn free_emptied(&mut self) {
        // A bucket emptied, refilled and emptied again is listed twice; freed once.
        self.emptied.sort_unstable();
        self.emptied.dedup();
        for &bucket in &self.emptied {
            let Some(entry) = self.buckets.list.get_mut(bucket as usize) else { continue };
            if entry.live == 0 {
                self.buckets.of_key.remove(&entry.key);
                *entry = Bucket { key: Box::default(), offsets: Offsets::new(), live: 0, dead: 0 };
                self.buckets.free.push(bucket);
            }
        }
        self.emptied.clear();
    }

    /// Lists every live row's current offset in its bucket (after a compaction).
    fn rebuild_lists(&mut self) {
        #[cfg(test)]
        {
            self.rebuilds += 1;
        }
        for bucket in &mut self.buckets.list {
            bucket.offsets.clear();
            bucket.dead = 0;
        }
        for (at, _, value) in self.rows.entries() {
            if let Some(bucket) = self.buckets.get_mut(decode(value).1) {
                bucket.offsets.push(at);
            }
        }
    }

    /// Heap bytes of the rows, the buckets and their lists.
    pub fn heap_bytes(&self) -> usize {
        let lists: usize = self.buckets.list.iter().map(|b| b.key.heap_bytes() + b.offsets.heap_bytes()).sum();
        self.rows.heap_bytes()
            + self.buckets.of_key.heap_bytes()
            + self.buckets.list.capacity() * std::mem::size_of::<Bucket>()
            + lists
            + self.buckets.free.heap_bytes()
            + self.emptied.heap_bytes()
    }

    /// Every row as (join key, row, counts), the key `None` for rows never probed.
    pub fn rows(&self) -> impl Iterator<Item = (Option<&[u8]>, &[u8], Counts)> {
        self.rows.entries().map(|(_, row, value)| {
            let (counts, bucket) = decode(value);
            let key = self.buckets.get(bucket).map(|b| b.key.as_ref());
            (key, row, counts)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change<'a>(key: Option<&'a [u8]>, row: &'a [u8], weight: i64) -> RowChange<'a> {
        RowChange { hash: Arrangement::hash(row), key, row, weight, matches: 0 }
    }

    fn probed(arrangement: &Arrangement, key: &[u8]) -> Vec<(Vec<u8>, i64)> {
        let mut rows: Vec<_> = arrangement.probe(key).map(|(_, row, c)| (row.to_vec(), c.multiplicity)).collect();
        rows.sort();
        rows
    }

    #[test]
    fn rows_are_counted_and_listed_by_key() {
        let mut side = Arrangement::default();
        side.apply(&[change(Some(b"k"), b"r1", 2), change(Some(b"k"), b"r2", 1), change(None, b"n", 1)])
            .expect("a consistent change");
        assert_eq!(probed(&side, b"k"), [(b"r1".to_vec(), 2), (b"r2".to_vec(), 1)]);
        side.apply(&[change(Some(b"k"), b"r1", -2), change(Some(b"k"), b"r1", 1)]).expect("a consistent change");
        assert_eq!(probed(&side, b"k"), [(b"r1".to_vec(), 1), (b"r2".to_vec(), 1)]);
        assert_eq!(side.counts(b"n").multiplicity, 1, "a row with a NULL key is held");
        let mut rows: Vec<_> =
            side.rows().map(|(k, r, c)| (k.map(<[u8]>::to_vec), r.to_vec(), c.multiplicity)).collect();
        rows.sort();
        assert_eq!(
            rows,
            [
                (None, b"n".to_vec(), 1),
                (Some(b"k".to_vec()), b"r1".to_vec(), 1),
                (Some(b"k".to_vec()), b"r2".to_vec(), 1)
            ]
        );
        assert!(side.apply(&[change(Some(b"k"), b"r3", -1)]).is_err(), "a row never inserted cannot be retracted");
    }

    #[test]
    fn a_bucket_emptied_and_refilled_by_one_change_is_kept_and_one_left_empty_is_freed() {
        let mut side = Arrangement::default();
        side.apply(&[change(Some(b"a"), b"a1", 1), change(Some(b"b"), b"b1", 1)]).expect("a consistent change");
        // Key a's row is updated (retracted, its new row inserted); key b's row goes.
        side.apply(&[change(Some(b"a"), b"a1", -1), change(Some(b"a"), b"a2", 1), change(Some(b"b"), b"b1", -1)])
            .expect("a consistent change");
        assert_eq!(probed(&side, b"a"), [(b"a2".to_vec(), 1)]);
        assert_eq!(probed(&side, b"b"), []);
        assert_eq!(side.buckets.free, [1], "b's bucket is freed, a's kept");
        let a = side.buckets.get(0).expect("a's bucket");
        assert_eq!((a.key.as_ref(), a.offsets.len(), a.live, a.dead), (&b"a"[..], 1, 1, 0), "no dead offset listed");
        // Emptied, refilled and emptied again in one change: freed once.
        side.apply(&[change(Some(b"a"), b"a2", -1), change(Some(b"a"), b"a3", 1), change(Some(b"a"), b"a3", -1)])
            .expect("a consistent change");
        assert_eq!(side.buckets.free, [1, 0]);
        assert_eq!(probed(&side, b"a"), []);
        side.apply(&[change(Some(b"c"), b"c1", 1), change(Some(b"d"), b"d1", 1)]).expect("a consistent change");
        assert_eq!(side.buckets.list.len(), 2, "freed buckets are reused");
        assert_eq!((probed(&side, b"c").len(), probed(&side, b"d").len()), (1, 1));
    }

    #[test]
    fn matches_are_added_at_a_probed_offset() {
        let mut side = Arrangement::default();
        side.apply(&[change(Some(b"k"), b"r", 1)]).expect("a consistent change");
        let (at, _, _) = side.probe(b"k").next().expect("the row is listed");
        side.add_matches(at, 3).expect("a consistent change");
        assert_eq!(side.counts(b"r"), Counts { multiplicity: 1, matches: 3 });
    }

    /// Thousands of random changes, first over three rows per key (buckets emptied and
    /// reused), then over hundreds (lists pruned, the arena compacted): probing agrees with
    /// a map.
    #[test]
    fn agrees_with_a_model_through_pruning_reuse_and_compaction() {
        let mut side = Arrangement::default();
        let mut model: std::collections::BTreeMap<(u8, u32), i64> = Default::default();
        let mut next = crate::test_random::xorshift(0x9e37_79b9_7f4a_7c15);
        for step in 0..3_000 {
            let mut rows = Vec::new();
            for _ in 0..(next() % 200) {
                let key = (next() % 7) as u8;
                let row = (next() % if step < 1_000 { 3 } else { 300 }) as u32;
                let held = model.get(&(key, row)).copied().unwrap_or(0);
                let weight = if held > 0 && next().is_multiple_of(2) { -held.min(1 + (next() % 2) as i64) } else { 1 };
                *model.entry((key, row)).or_default() += weight;
                rows.push(([key], [&[key][..], &row.to_le_bytes()].concat(), weight));
            }
            model.retain(|_, m| *m != 0);
            let changes: Vec<RowChange> = rows.iter().map(|(k, r, w)| change(Some(&k[..]), r, *w)).collect();
            side.apply(&changes).expect("a consistent change");
            if step >= 1_000 && step % 10 != 0 {
                continue;
            }
            for key in 0..7u8 {
                let expected: Vec<(Vec<u8>, i64)> = model
                    .range((key, 0)..=(key, u32::MAX))
                    .map(|((k, r), m)| ([&[*k][..], &r.to_le_bytes()].concat(), *m))
                    .collect();
                let mut expected = expected;
                expected.sort();
                assert_eq!(probed(&side, &[key]), expected, "key {key} at step {step}");
            }
        }
        assert!(side.buckets.list.len() <= 7, "emptied buckets are reused");
        assert!(side.rebuilds > 0, "the arena was compacted and the lists rebuilt");
    }
}
