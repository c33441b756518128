//! The multisets of every group's values for a min or max over a fixed-width type: each
//! value's row encoding (at most 15 bytes) packed into a `u128` that orders the same way, kept
//! in a small sorted array inside the group's slot while the group holds few distinct values
//! (most do), in one sorted vector up to a few hundred, and in a B-tree beyond that. A change
//! then touches the group's slot or one contiguous array, not scattered tree nodes, and
//! compares integers, not byte strings. The multisets store only the 8 bytes after a value's
//! validity byte (a `u64`): a type of at most 8 bytes encodes as a validity byte of 1 and its
//! bytes, so the rest of the packed value is the same for every value and is put back when a
//! value is read. Each group's current smallest and largest values are also kept side by side
//! in one dense array, which is all that reading the aggregate's output touches.

use std::collections::BTreeMap;
use std::collections::btree_map::Entry;

use datafusion::arrow::array::{Array, ArrayData, ArrayRef};
use datafusion::arrow::datatypes::DataType;

use crate::error::{EngineError, Result};
use crate::heap_bytes::HeapBytes;
use crate::prefetch::prefetch;
use crate::rows::{IntegerColumn, IntegerLayout, first_bytes, integer_layout, integer_row_width};

/// The bytes of an encoding in its packed form: its length goes in the byte after them.
pub const PACKED_BYTES: usize = 15;
/// Distinct values a group keeps inline before it moves to a sorted vector.
const INLINE: usize = 3;
/// Distinct values a sorted vector holds before the group moves to a B-tree (inserting into
/// the vector moves up to this many entries of 32 bytes).
const SORTED: usize = 256;

/// Packs an encoding of at most 15 bytes so that packed values order as the byte strings do:
/// the bytes first, zero padding, the length last (a shorter string that is a prefix of a
/// longer one then still comes first).
pub fn pack(bytes: &[u8]) -> Result<u128> {
    if bytes.len() > PACKED_BYTES {
        return Err(EngineError::Internal(format!("a {}-byte value where at most 15 were expected", bytes.len())));
    }
    Ok(packed_bytes(bytes) | bytes.len() as u128)
}

/// The bytes (at most 15) as the top bytes of a big-endian `u128`, the rest 0. Read as two
/// overlapping loads (the bytes they share are the same): copying a variable number of bytes
/// into a buffer and loading it whole stalls the load until the copy's stores retire.
#[inline]
fn packed_bytes(bytes: &[u8]) -> u128 {
    let len = bytes.len();
    // The last `W` bytes' place below the first `W`: byte `len - 1` ends at bit 8 * (16 - len).
    let tail_shift = 8 * (16 - len as u32);
    if len >= 8 {
        let (head, tail) = (u64::from_be_bytes(first_bytes(bytes)), u64::from_be_bytes(first_bytes(&bytes[len - 8..])));
        (u128::from(head) << 64) | (u128::from(tail) << tail_shift)
    } else if len >= 4 {
        let (head, tail) = (u32::from_be_bytes(first_bytes(bytes)), u32::from_be_bytes(first_bytes(&bytes[len - 4..])));
        (u128::from(head) << 96) | (u128::from(tail) << tail_shift)
    } else {
        bytes.iter().enumerate().fold(0, |packed, (i, &byte)| packed | u128::from(byte) << (120 - 8 * i))
    }
}

/// The encoding a packed value was made from.
pub fn unpack(value: u128) -> Vec<u8> {
    let packed = value.to_be_bytes();
    packed[..(packed[PACKED_BYTES] as usize).min(PACKED_BYTES)].to_vec()
}

/// Decodes packed values of an integer-backed type (integers, dates, times, timestamps,
/// durations) straight into an array of that type, 0 (no value) as NULL. `None` for any
/// other type or a value not encoded so (see [`decode_packed_rows`]).
pub fn decode_integers(values: &[u128], data_type: &DataType) -> Option<Result<ArrayRef>> {
    let layout = integer_layout(data_type)?;
    let columns = decode_packed_rows(values, &[(data_type.clone(), layout)])?;
    Some(columns.and_then(|mut columns| columns.pop().ok_or_else(|| EngineError::Internal("no column decoded".into()))))
}

/// Decodes packed row encodings of integer-backed columns (an aggregate's group keys, a
/// min/max's values) straight into arrays: each value sits at a fixed place in the packed
/// `u128` (its validity byte, then its bytes big-endian with the sign bit flipped when
/// signed), read off it without going through the bytes. 0 decodes as NULL in every column.
/// `None` when the columns' rows do not fit 15 bytes or a value is not laid out so.
pub fn decode_packed_rows(values: &[u128], columns: &[(DataType, IntegerLayout)]) -> Option<Result<Vec<ArrayRef>>> {
    let width = integer_row_width(columns);
    if width > PACKED_BYTES {
        return None;
    }
    // The bits a value laid out so never sets: those of every validity byte but its lowest
    // (a validity byte is 0 or 1); its length byte is the rows' width. Checked in one pass
    // without a branch per value.
    let mut not_validity = 0u128;
    let mut at = 0;
    for (_, layout) in columns {
        not_validity |= 0xfe << (120 - 8 * at as u32);
        at += 1 + layout.width;
    }
    let misfits = values.iter().fold(0u128, |misfits, &packed| {
        let laid_out = (packed & not_validity == 0) && packed as u8 as usize == width;
        misfits | u128::from(packed != 0 && !laid_out)
    });
    if misfits != 0 {
        return None;
    }
    let mut decoded = Vec::with_capacity(columns.len());
    let mut at = 0;
    for (data_type, layout) in columns {
        // The validity byte is byte `at` of the big-endian u128, the value's bytes follow it.
        let validity_shift = 120 - 8 * at as u32;
        let value_shift = validity_shift - 8 * layout.width as u32;
        let mask = u64::MAX >> (64 - 8 * layout.width as u32);
        let validity = |packed: u128| (packed >> validity_shift) as u8;
        let mut column = IntegerColumn::new(*layout, values.len());
        column.extend_encoded(
            values.iter().map(|&packed| (validity(packed) == 1, (packed >> value_shift) as u64 & mask)),
        );
        decoded.push(column.finish(data_type, |i| validity(values[i]) == 1));
        at += 1 + layout.width;
    }
    Some(decoded.into_iter().collect())
}

/// Packs the values of an integer-backed array (integers, dates, times, timestamps,
/// durations) as [`pack`] would pack their row encodings, straight from the array's buffer:
/// a validity byte of 1, the value big-endian with the sign bit flipped when signed, the
/// length last. NULL packs as 0. `None` for any other type.
pub fn pack_integers(array: &ArrayRef) -> Option<Vec<u128>> {
    let layout = integer_layout(array.data_type())?;
    let mut packed = pack_integer_rows(std::slice::from_ref(array), &[(array.data_type().clone(), layout)])?;
    if let Some(nulls) = array.nulls() {
        nulls.iter().zip(&mut packed).filter(|(valid, _)| !valid).for_each(|(_, packed)| *packed = 0);
    }
    Some(packed)
}

/// Packs rows of integer-backed columns laid out as `layouts` (an aggregate's group keys) as
/// [`pack`] would pack their row encodings, straight from the columns' buffers, without
/// encoding the rows: per column a validity byte (NULL: 0, and its value's bytes 0, as the
/// row format writes it), then the value big-endian with the sign bit flipped when signed;
/// the rows' width last. `None` when the rows are wider than [`PACKED_BYTES`], there are no
/// columns, or a column is not of its layout's type.
pub fn pack_integer_rows(columns: &[ArrayRef], layouts: &[(DataType, IntegerLayout)]) -> Option<Vec<u128>> {
    let width = integer_row_width(layouts);
    if width > PACKED_BYTES || columns.len() != layouts.len() {
        return None;
    }
    let mut packed = vec![width as u128; columns.first()?.len()];
    let mut at = 0;
    for (column, (data_type, layout)) in columns.iter().zip(layouts) {
        if column.data_type() != data_type {
            return None;
        }
        let data = column.to_data();
        let start = data.offset() * layout.width;
        let bytes = data.buffers().first()?.as_slice().get(start..start + data.len() * layout.width)?;
        let sign = layout.sign_bit();
        match layout.width {
            1 => or_fixed(&mut packed, &data, bytes, at, sign, |[byte]: [u8; 1]| u64::from(byte)),
            2 => or_fixed(&mut packed, &data, bytes, at, sign, |value: [u8; 2]| u64::from(u16::from_ne_bytes(value))),
            4 => or_fixed(&mut packed, &data, bytes, at, sign, |value: [u8; 4]| u64::from(u32::from_ne_bytes(value))),
            8 => or_fixed(&mut packed, &data, bytes, at, sign, u64::from_ne_bytes),
            _ => return None,
        }
        at += 1 + layout.width;
    }
    Some(packed)
}

/// Sets, in each of `packed`, the validity byte at byte `at` and the `W` value bytes after
/// it of a column's values (each read by `raw`, `sign` flipped); a NULL's bytes stay 0.
fn or_fixed<const W: usize>(
    packed: &mut [u128],
    data: &ArrayData,
    bytes: &[u8],
    at: usize,
    sign: u64,
    raw: impl Fn([u8; W]) -> u64,
) {
    let validity_shift = 120 - 8 * at as u32;
    let (valid, value_shift) = (1u128 << validity_shift, validity_shift - 8 * W as u32);
    let values = packed.iter_mut().zip(bytes.as_chunks::<W>().0);
    match data.nulls() {
        None => values.for_each(|(packed, &value)| *packed |= valid | (u128::from(raw(value) ^ sign) << value_shift)),
        Some(nulls) => values
            .zip(nulls.iter())
            .filter(|(_, is_valid)| *is_valid)
            .for_each(|((packed, &value), _)| *packed |= valid | (u128::from(raw(value) ^ sign) << value_shift)),
    }
}

/// Rows adjusted per group of lookahead loads (see [`PackedMultisets::adjust_rows`]).
const AHEAD: usize = 8;

/// Rows from which a batch is worth ordering by group before it is applied.
const BY_GROUP_FROM: usize = 65_536;

/// The rows `(groups[i], values[i], weights[i])` ordered by group (a counting sort over
/// `group_count` groups: stable, linear).
fn ordered_by_group(groups: &[usize], values: &[u128], weights: &[i64], group_count: usize) -> Vec<(usize, u128, i64)> {
    let mut starts = vec![0usize; group_count + 1];
    for &group in groups {
        starts[group + 1] += 1;
    }
    for group in 0..group_count {
        starts[group + 1] += starts[group];
    }
    let mut ordered = vec![(0, 0, 0); groups.len()];
    for ((&group, &value), &weight) in groups.iter().zip(values).zip(weights) {
        let at = &mut starts[group];
        ordered[*at] = (group, value, weight);
        *at += 1;
    }
    ordered
}

/// The rows `(group, value, weight)` without those whose value is 0 (NULL), each run of the
/// same group and value netted into one row, and rows netted to a weight of 0 dropped: an
/// update that keeps a row's group and value (its retraction and insertion side by side, as
/// changes from a primary key or a source come) leaves the multiset alone.
fn netted(rows: impl Iterator<Item = (usize, u128, i64)>) -> impl Iterator<Item = (usize, u128, i64)> {
    let mut rows = rows.filter(|row| row.1 != 0).peekable();
    std::iter::from_fn(move || {
        loop {
            let (group, value, mut weight) = rows.next()?;
            while let Some((_, _, more)) = rows.next_if(|row| row.0 == group && row.1 == value) {
                weight += more;
            }
            if weight != 0 {
                return Some((group, value, weight));
            }
        }
    })
}

/// The widest fixed-width type whose values the multisets keep (its encoding is a validity
/// byte and these bytes).
pub const NARROW_BYTES: usize = 8;

/// The stored part of a packed value: the 8 bytes after its validity byte.
fn narrow(value: u128, encoded: u8) -> Result<u64> {
    let narrow = (value >> 56) as u64;
    if widen(narrow, encoded) != value {
        return Err(EngineError::Internal(format!(
            "a min/max value that is not a {encoded}-byte encoding of a value that is not NULL"
        )));
    }
    Ok(narrow)
}

/// The packed value whose stored part is `narrow`: a validity byte of 1, the bytes, the
/// encoding's length last.
fn widen(narrow: u64, encoded: u8) -> u128 {
    (1u128 << 120) | (u128::from(narrow) << 56) | u128::from(encoded)
}

/// Every group's packed values, and each group's smallest and largest value.
pub struct PackedMultisets {
    /// The length of every value's encoding: a validity byte and the type's bytes.
    encoded: u8,
    groups: Vec<PackedValues>,
    /// `[smallest, largest]` per group; 0 (no packed value is 0: its length byte is not) when
    /// the group has no values.
    bounds: Vec<[u128; 2]>,
}

impl PackedMultisets {
    /// Multisets of values of a fixed-width type of `width` bytes; `None` when the type is
    /// wider than [`NARROW_BYTES`].
    pub fn new(width: usize) -> Option<Self> {
        (width <= NARROW_BYTES).then(|| Self { encoded: 1 + width as u8, groups: Vec::new(), bounds: Vec::new() })
    }

    /// Makes room for group `group` (a new or reused slot) with no values.
    pub fn reset(&mut self, group: usize) {
        if self.groups.len() <= group {
            self.groups.resize_with(group + 1, PackedValues::default);
            self.bounds.resize(group + 1, [0; 2]);
        } else {
            self.groups[group] = PackedValues::default();
            self.bounds[group] = [0; 2];
        }
    }

    /// Drops every group and makes room for `groups` empty ones.
    pub fn clear(&mut self, groups: usize) {
        self.groups.clear();
        self.bounds.clear();
        self.groups.resize_with(groups, PackedValues::default);
        self.bounds.resize(groups, [0; 2]);
    }

    /// Adds `weight` to the multiplicity of `value` in `group`.
    pub fn adjust(&mut self, group: usize, value: u128, weight: i64) -> Result<()> {
        let encoded = self.encoded;
        let values = &mut self.groups[group];
        values.adjust(narrow(value, encoded)?, weight)?;
        let bound = |max| values.extreme(max).map_or(0, |value| widen(value, encoded));
        self.bounds[group] = [bound(false), bound(true)];
        Ok(())
    }

    /// Adjusts `(groups[i], values[i], weights[i])` for each row `i`, skipping values of 0
    /// (NULL). Groups are scattered over memory, so every [`AHEAD`] rows it prefetches the
    /// slots of the rows' groups two steps ahead and the sorted vectors of the groups one step
    /// ahead (whose slots were prefetched a step earlier): their cache misses overlap with
    /// this step's changes instead of coming one after another.
    ///
    /// A large batch with several rows per group (an initial load) is first ordered by group,
    /// keeping each group's rows in their order, so that a group's slot and vector stay in
    /// the cache while all its values go in.
    pub fn adjust_rows(&mut self, groups: &[usize], values: &[u128], weights: &[i64]) -> Result<()> {
        if groups.len() >= BY_GROUP_FROM && groups.len() >= self.groups.len() {
            let ordered = ordered_by_group(groups, values, weights, self.groups.len());
            return netted(ordered.into_iter())
                .try_for_each(|(group, value, weight)| self.adjust(group, value, weight));
        }
        let rows = groups.iter().zip(values).zip(weights).map(|((&group, &value), &weight)| (group, value, weight));
        // Sized up front: the netting iterator cannot tell its length, and growing the vector
        // step by step reallocates it.
        let mut netted_rows: Vec<(usize, u128, i64)> = Vec::with_capacity(groups.len());
        netted_rows.extend(netted(rows));
        let rows = netted_rows;
        for (position, &(group, value, weight)) in rows.iter().enumerate() {
            if position.is_multiple_of(AHEAD) {
                if position == 0 {
                    rows.iter().take(2 * AHEAD).for_each(|&(ahead, _, _)| self.prefetch_slot(ahead));
                    rows.iter().take(AHEAD).for_each(|&(ahead, _, _)| self.groups[ahead].prefetch_stored());
                }
                let slots = rows.iter().skip(position + 2 * AHEAD).take(AHEAD);
                slots.for_each(|&(ahead, _, _)| self.prefetch_slot(ahead));
                let stored = rows.iter().skip(position + AHEAD).take(AHEAD);
                stored.for_each(|&(ahead, _, _)| self.groups[ahead].prefetch_stored());
            }
            self.adjust(group, value, weight)?;
        }
        Ok(())
    }

    /// Prefetches a group's slot and bounds.
    fn prefetch_slot(&self, group: usize) {
        prefetch(&self.groups[group]);
        prefetch(&self.bounds[group]);
    }

    /// The smallest value of a group, or with `max` the largest.
    pub fn extreme(&self, group: usize, max: bool) -> Option<u128> {
        let bound = self.bounds[group][max as usize];
        (bound != 0).then_some(bound)
    }

    /// Heap bytes of every group's slot, values and bounds.
    pub fn heap_bytes(&self) -> usize {
        let stored: usize = self
            .groups
            .iter()
            .map(|values| match values {
                PackedValues::Inline { .. } => 0,
                PackedValues::Sorted(sorted) => sorted.capacity() * std::mem::size_of::<(u64, i64)>(),
                PackedValues::Tree(tree) => tree.heap_bytes(),
            })
            .sum();
        self.groups.capacity() * std::mem::size_of::<PackedValues>() + stored + self.bounds.heap_bytes()
    }

    /// Every value of a group with its multiplicity, in order.
    pub fn entries(&self, group: usize) -> impl Iterator<Item = (u128, i64)> + '_ {
        let encoded = self.encoded;
        self.groups[group].entries().map(move |(value, count)| (widen(value, encoded), count))
    }
}

/// One group's values (their stored parts) with their multiplicities.
pub enum PackedValues {
    /// Up to [`INLINE`] distinct values, sorted, the first `len` slots in use.
    Inline {
        len: u8,
        items: [(u64, i64); INLINE],
    },
    Sorted(Vec<(u64, i64)>),
    Tree(BTreeMap<u64, i64>),
}

impl Default for PackedValues {
    fn default() -> Self {
        PackedValues::Inline { len: 0, items: [(0, 0); INLINE] }
    }
}

fn retracted_too_often() -> EngineError {
    EngineError::Internal("a value was retracted more often than inserted".into())
}

fn never_inserted() -> EngineError {
    EngineError::Internal("a value was retracted that was never inserted".into())
}

impl PackedValues {
    /// Adds `weight` to the multiplicity of `value`, removing it at zero.
    pub fn adjust(&mut self, value: u64, weight: i64) -> Result<()> {
        match self {
            PackedValues::Inline { len, items } => {
                let used = *len as usize;
                let at = items[..used].partition_point(|(v, _)| *v < value);
                if at < used && items[at].0 == value {
                    items[at].1 += weight;
                    if items[at].1 == 0 {
                        items.copy_within(at + 1..used, at);
                        *len -= 1;
                    } else if items[at].1 < 0 {
                        return Err(retracted_too_often());
                    }
                } else if weight <= 0 {
                    return Err(never_inserted());
                } else if used < INLINE {
                    items.copy_within(at..used, at + 1);
                    items[at] = (value, weight);
                    *len += 1;
                } else {
                    let mut sorted = Vec::with_capacity(2 * INLINE);
                    sorted.extend_from_slice(&items[..at]);
                    sorted.push((value, weight));
                    sorted.extend_from_slice(&items[at..]);
                    *self = PackedValues::Sorted(sorted);
                }
            }
            PackedValues::Sorted(sorted) => {
                let at = sorted.partition_point(|(v, _)| *v < value);
                if at < sorted.len() && sorted[at].0 == value {
                    sorted[at].1 += weight;
                    if sorted[at].1 == 0 {
                        sorted.remove(at);
                    } else if sorted[at].1 < 0 {
                        return Err(retracted_too_often());
                    }
                } else if weight <= 0 {
                    return Err(never_inserted());
                } else if sorted.len() < SORTED {
                    sorted.insert(at, (value, weight));
                } else {
                    let mut tree: BTreeMap<u64, i64> = sorted.drain(..).collect();
                    tree.insert(value, weight);
                    *self = PackedValues::Tree(tree);
                }
            }
            PackedValues::Tree(tree) => match tree.entry(value) {
                Entry::Occupied(mut entry) => {
                    let count = entry.get_mut();
                    *count += weight;
                    if *count == 0 {
                        entry.remove();
                    } else if *count < 0 {
                        return Err(retracted_too_often());
                    }
                }
                Entry::Vacant(entry) if weight > 0 => {
                    entry.insert(weight);
                }
                Entry::Vacant(_) => return Err(never_inserted()),
            },
        }
        Ok(())
    }

    /// Every value with its multiplicity, in order.
    pub fn entries(&self) -> Box<dyn Iterator<Item = (u64, i64)> + '_> {
        match self {
            PackedValues::Inline { len, items } => Box::new(items[..*len as usize].iter().copied()),
            PackedValues::Sorted(sorted) => Box::new(sorted.iter().copied()),
            PackedValues::Tree(tree) => Box::new(tree.iter().map(|(v, c)| (*v, *c))),
        }
    }

    /// Prefetches the values stored outside the slot: the cache lines of a sorted vector, up
    /// to the four a binary search over a small one reads.
    fn prefetch_stored(&self) {
        if let PackedValues::Sorted(sorted) = self {
            let per_line = 64 / std::mem::size_of::<(u64, i64)>();
            sorted.iter().step_by(per_line).take(4).for_each(prefetch);
        }
    }

    /// The smallest value, or with `max` the largest.
    pub fn extreme(&self, max: bool) -> Option<u64> {
        match self {
            PackedValues::Inline { len: 0, .. } => None,
            PackedValues::Inline { len, items } => Some(if max { items[*len as usize - 1].0 } else { items[0].0 }),
            PackedValues::Sorted(sorted) => if max { sorted.last() } else { sorted.first() }.map(|(v, _)| *v),
            PackedValues::Tree(tree) => if max { tree.keys().next_back() } else { tree.keys().next() }.copied(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_random::xorshift;

    #[test]
    fn packed_values_order_as_their_bytes() {
        let mut next = xorshift(0x2545_f491_4f6c_dd1d);
        // Short strings over a tiny alphabet, so prefixes and zero bytes are common.
        let strings: Vec<Vec<u8>> =
            (0..2_000).map(|_| (0..next() % 16).map(|_| (next() % 3) as u8).collect()).collect();
        for a in &strings {
            for b in strings.iter().take(200) {
                let packed = pack(a).expect("fits").cmp(&pack(b).expect("fits"));
                assert_eq!(packed, a.cmp(b), "{a:?} vs {b:?}");
            }
        }
        assert!(pack(&[0; 16]).is_err());
        // Every length, against the bytes copied into a buffer.
        for len in 0..=PACKED_BYTES {
            let bytes: Vec<u8> = (1..=len as u8).map(|i| i.wrapping_mul(0x9d)).collect();
            let mut buffer = [0u8; 16];
            buffer[..len].copy_from_slice(&bytes);
            buffer[PACKED_BYTES] = len as u8;
            assert_eq!(pack(&bytes).expect("fits"), u128::from_be_bytes(buffer), "{len} bytes");
        }
        for a in strings.iter().take(200) {
            assert_eq!(&unpack(pack(a).expect("fits")), a);
        }
    }

    #[test]
    fn inline_and_tree_agree_with_a_model() {
        let mut next = xorshift(0x9e37_79b9_7f4a_7c15);
        let mut values = PackedValues::default();
        let mut model: BTreeMap<u64, i64> = BTreeMap::new();
        for step in 0..40_000 {
            // Few values at first, then many: inline, sorted vector and tree all take turns.
            let value = next() % if step < 10_000 { 8 } else { 600 };
            let present = model.get(&value).copied().unwrap_or(0);
            // Retract only what is there, so every step is valid.
            let weight = if present > 0 && next().is_multiple_of(2) { -1 } else { 1 };
            values.adjust(value, weight).expect("valid change");
            *model.entry(value).or_default() += weight;
            model.retain(|_, count| *count != 0);
            assert_eq!(values.extreme(false), model.keys().next().copied());
            assert_eq!(values.extreme(true), model.keys().next_back().copied());
            if step % 997 == 0 {
                assert!(values.entries().eq(model.iter().map(|(v, c)| (*v, *c))), "entries at step {step}");
            }
        }
        assert!(values.adjust(1_000, -1).is_err(), "retracting an absent value is refused");
    }

    /// `groups` empty groups, and their model.
    fn empty_groups(groups: usize) -> (PackedMultisets, Vec<BTreeMap<u128, i64>>) {
        let mut multisets = PackedMultisets::new(8).expect("8 bytes are kept");
        for group in 0..groups {
            multisets.reset(group);
        }
        (multisets, vec![BTreeMap::new(); groups])
    }

    /// A random row over `values` distinct values, valid after the model's rows (a value is
    /// retracted, about one time in `retract_one_in`, only when present), applied to the model.
    fn random_row(
        next: &mut impl FnMut() -> u64,
        model: &mut [BTreeMap<u128, i64>],
        values: u64,
        retract_one_in: u64,
    ) -> (usize, u128, i64) {
        let group = (next() % model.len() as u64) as usize;
        // Values spread over all 8 bytes, as an 8-byte type's encodings are packed.
        let value = widen((next() % values).wrapping_mul(0x9e37_79b9_7f4a_7c15), 9);
        let present = model[group].get(&value).copied().unwrap_or(0);
        let weight = if present > 0 && next().is_multiple_of(retract_one_in) { -1 } else { 1 };
        *model[group].entry(value).or_default() += weight;
        model[group].retain(|_, count| *count != 0);
        (group, value, weight)
    }

    fn adjust_all(multisets: &mut PackedMultisets, rows: &[(usize, u128, i64)]) -> Result<()> {
        let groups: Vec<usize> = rows.iter().map(|row| row.0).collect();
        let values: Vec<u128> = rows.iter().map(|row| row.1).collect();
        let weights: Vec<i64> = rows.iter().map(|row| row.2).collect();
        multisets.adjust_rows(&groups, &values, &weights)
    }

    fn assert_bounds(multisets: &PackedMultisets, model: &[BTreeMap<u128, i64>]) {
        for (group, values) in model.iter().enumerate() {
            assert_eq!(multisets.extreme(group, false), values.keys().next().copied(), "group {group}");
            assert_eq!(multisets.extreme(group, true), values.keys().next_back().copied(), "group {group}");
        }
    }

    #[test]
    fn multisets_keep_each_groups_bounds() {
        let mut next = xorshift(0x51_7cc1_b727_220a);
        let (mut multisets, mut model) = empty_groups(50);
        for _ in 0..200 {
            // A batch of rows over random groups, applied with the lookahead loads.
            let rows: Vec<_> = (0..next() % 40).map(|_| random_row(&mut next, &mut model, 30, 2)).collect();
            adjust_all(&mut multisets, &rows).expect("valid rows");
            assert_bounds(&multisets, &model);
        }
        multisets.reset(7);
        assert_eq!(multisets.extreme(7, false), None, "a reset group has no values");
    }

    #[test]
    fn a_large_batch_keeps_each_groups_order() {
        let mut next = xorshift(0x2f6b_8c1d_a3e5_4097);
        let (mut multisets, mut model) = empty_groups(1_000);
        // Enough rows to be ordered by group; values inserted and retracted again within the
        // batch, which is valid only if each group's rows keep their order.
        let rows: Vec<_> = (0..100_000).map(|_| random_row(&mut next, &mut model, 50, 3)).collect();
        adjust_all(&mut multisets, &rows).expect("valid in order");
        for (group, values) in model.iter().enumerate() {
            assert!(multisets.entries(group).eq(values.iter().map(|(v, c)| (*v, *c))), "group {group}");
        }
        assert_bounds(&multisets, &model);
    }

    #[test]
    fn multisets_keep_only_the_bytes_after_the_validity_byte_of_every_integer_type() {
        use datafusion::arrow::array::Array;
        use datafusion::arrow::compute::{SortOptions, sort};

        use crate::test_random::integer_columns;

        for column in integer_columns() {
            let data_type = column.data_type().clone();
            let width = data_type.primitive_width().expect("fixed width");
            let mut multisets = PackedMultisets::new(width).expect("at most 8 bytes");
            multisets.reset(0);
            let packed = pack_integers(&column).expect("an integer type");
            let mut model: BTreeMap<u128, i64> = BTreeMap::new();
            for &value in packed.iter().filter(|&&value| value != 0) {
                multisets.adjust(0, value, 1).expect("a value of the type");
                *model.entry(value).or_default() += 1;
            }
            // The limits (an 8-byte minimum is stored as 0) come back as they went in.
            assert!(multisets.entries(0).eq(model.iter().map(|(v, c)| (*v, *c))), "{data_type}");
            assert_eq!(multisets.extreme(0, false), model.keys().next().copied(), "{data_type}");
            assert_eq!(multisets.extreme(0, true), model.keys().next_back().copied(), "{data_type}");
            // And decode to the column's smallest and largest values.
            let sorted = sort(&column, Some(SortOptions { descending: false, nulls_first: true })).expect("sorts");
            let (smallest, largest) = (sorted.slice(column.null_count(), 1), sorted.slice(column.len() - 1, 1));
            for (max, expected) in [(false, smallest), (true, largest)] {
                let bound = multisets.extreme(0, max).expect("a bound");
                let decoded = decode_integers(&[bound], &data_type).expect("an integer type").expect("decodes");
                assert_eq!(decoded.to_data(), expected.to_data(), "{data_type}");
            }
        }
        // A value of another width, or a NULL, is refused rather than stored wrongly.
        let mut multisets = PackedMultisets::new(4).expect("at most 8 bytes");
        multisets.reset(0);
        assert!(multisets.adjust(0, pack(&[1, 0, 0, 0, 0, 0, 0, 0, 7]).expect("fits"), 1).is_err());
        assert!(multisets.adjust(0, 0, 1).is_err());
        assert!(PackedMultisets::new(16).is_none(), "16-byte values are kept as bytes");
    }

    #[test]
    fn integer_values_pack_and_decode_as_the_row_format_would() {
        use std::sync::Arc;

        use datafusion::arrow::array::{Array, Float64Array};

        use crate::rows::RowCodec;
        use crate::test_random::integer_columns;

        for expected in integer_columns() {
            let data_type = expected.data_type().clone();
            let codec = RowCodec::new(std::slice::from_ref(&data_type)).expect("codec");
            let rows = codec.encode(std::slice::from_ref(&expected)).expect("encode");
            let packed: Vec<u128> = (0..expected.len())
                .map(|i| if expected.is_valid(i) { pack(rows.row(i).as_ref()).expect("packs") } else { 0 })
                .collect();
            let decoded = decode_integers(&packed, &data_type).expect("an integer type").expect("decodes");
            assert_eq!(decoded.to_data(), expected.to_data(), "{data_type}");
            // Packed straight from the array, also from a slice of it.
            assert_eq!(pack_integers(&expected).expect("an integer type"), packed, "{data_type}");
            let (offset, len) = (expected.len() / 3, expected.len() / 2);
            let slice = expected.slice(offset, len);
            assert_eq!(
                pack_integers(&slice).expect("an integer type"),
                packed[offset..offset + len],
                "{data_type} slice"
            );
        }
        // Other types go through the row format's decoder.
        assert!(pack_integers(&(Arc::new(Float64Array::from(vec![1.0])) as ArrayRef)).is_none());
        assert!(decode_integers(&[0], &DataType::Float64).is_none());
        assert!(decode_integers(&[0], &DataType::Boolean).is_none());
    }

    #[test]
    fn packed_keys_of_several_integer_columns_decode_as_the_row_format_would() {
        use datafusion::arrow::array::Array;

        use crate::rows::RowCodec;
        use crate::test_random::integer_columns;

        let columns = integer_columns();
        let mut decoded_keys = 0;
        for first in &columns {
            for second in &columns {
                // Rows of the two columns, the second reversed so NULLs meet values.
                let second = datafusion::arrow::compute::take(
                    second.as_ref(),
                    &datafusion::arrow::array::UInt32Array::from_iter_values((0..second.len() as u32).rev()),
                    None,
                )
                .expect("take");
                let expected = [first.clone(), second];
                let types: Vec<DataType> = expected.iter().map(|c| c.data_type().clone()).collect();
                let codec = RowCodec::new(&types).expect("codec");
                let rows = codec.encode(&expected).expect("encode");
                let integers = codec.integer_columns().expect("integer columns");
                if rows.row(0).as_ref().len() > PACKED_BYTES {
                    let packed = vec![1u128; first.len()];
                    assert!(decode_packed_rows(&packed, integers).is_none(), "{types:?} do not pack");
                    assert!(pack_integer_rows(&expected, integers).is_none(), "{types:?} do not pack");
                    continue;
                }
                let packed: Vec<u128> = (0..first.len()).map(|i| pack(rows.row(i).as_ref()).expect("packs")).collect();
                // Packed straight from the columns, also from slices of them.
                assert_eq!(pack_integer_rows(&expected, integers).as_deref(), Some(&packed[..]), "{types:?}");
                let (offset, len) = (first.len() / 3, first.len() / 2);
                let slices: Vec<ArrayRef> = expected.iter().map(|column| column.slice(offset, len)).collect();
                let sliced = pack_integer_rows(&slices, integers);
                assert_eq!(sliced.as_deref(), Some(&packed[offset..offset + len]), "{types:?} sliced");
                let decoded = decode_packed_rows(&packed, integers).expect("integer rows").expect("decodes");
                for (decoded, expected) in decoded.iter().zip(&expected) {
                    assert_eq!(decoded.to_data(), expected.to_data(), "{types:?}");
                }
                // A value not laid out as these columns' rows is refused: a validity byte of
                // 2 in either column, or another length.
                let second_validity = 120 - 8 * (1 + integers[0].1.width) as u32;
                for misfit in [packed[0] | 2 << 120, packed[0] | 2 << second_validity, packed[0] + 1] {
                    let mut bad = packed.clone();
                    bad[first.len() / 2] = misfit;
                    assert!(decode_packed_rows(&bad, integers).is_none(), "{types:?}: {misfit:#x} is refused");
                }
                decoded_keys += 1;
            }
        }
        assert!(decoded_keys > 50, "most pairs of integer columns pack");
        // A column of another type than its layout's is not packed as that type.
        let (int32, int64) = (&columns[2], &columns[3]);
        let codec = RowCodec::new(&[DataType::Int64]).expect("codec");
        let integers = codec.integer_columns().expect("integer columns");
        assert!(pack_integer_rows(std::slice::from_ref(int64), integers).is_some());
        assert!(pack_integer_rows(std::slice::from_ref(int32), integers).is_none(), "an INT column as BIGINT");
        assert!(pack_integer_rows(&[], &[]).is_none(), "no columns: no rows to count");
    }
}
