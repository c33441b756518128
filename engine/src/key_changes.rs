//! A change to a relation with a primary key as one net change per key: the change's rows are
//! brought together by key, equal rows under a key add up (an update that changes nothing
//! cancels out), and what remains says which row the key holds before and after. The key index
//! applies these with one probe per key ([`crate::key_index::KeyIndex::apply_changes`]). Most
//! changes need no grouping: each key's rows are one row, or an update's two halves side by
//! side, which one pass pairs; only keys that occur again are grouped.

use hashbrown::hash_table::{Entry, HashTable};

use crate::key_index::KeyChange;
use crate::rows::Encoded;
use crate::same_bytes::same_bytes;

/// A change's net effect on each key it touches.
pub(crate) struct NetChange<'a> {
    /// One change per key whose row changes, in the order the keys first occur.
    pub keys: Vec<KeyChange<'a>>,
    /// For each of `keys`, the change's row behind it: its insertion, else its retraction.
    pub rows: Vec<u32>,
    /// The change's rows with their net weights, in order, when equal rows added up or
    /// cancelled (`None`: every row stays as it is).
    pub remaining: Option<Vec<(u32, i64)>>,
    /// Whether the remaining rows are known to differ from each other (the change is then
    /// consolidated): rows grouped by key and added up, or one row per key, which the index
    /// verifies when strict (it refuses a key named twice).
    pub distinct: bool,
}

/// Why a change cannot apply to a relation with a primary key, by row of the change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Conflict {
    /// The row is retracted, but its key does not hold it.
    Missing(u32),
    /// The row is inserted, but its key already holds another row.
    Duplicate(u32),
}

const END: u32 = u32::MAX;

/// The net change per key of a change with `weights`, whose rows, keys and key hashes are
/// given. Strict (a write to a table): a key may lose at most one row and gain at most one,
/// anything else is a conflict. Not strict (a change known to be consistent, which never has
/// two): one of the rows retracted and one of those inserted under a key count.
/// `consolidated`: the change is known to be consolidated.
pub(crate) fn net_change<'a>(
    weights: &[i64],
    rows: &'a Encoded,
    keys: &'a Encoded,
    hashes: &[u64],
    strict: bool,
    consolidated: bool,
) -> Result<NetChange<'a>, Conflict> {
    let inserts_only = weights.iter().all(|w| *w > 0);
    if inserts_only || weights.iter().all(|w| *w < 0) {
        return one_sign(weights, rows, keys, hashes, strict, inserts_only);
    }
    // Not strict, a consolidated change to a relation whose key is unique (one consistent
    // with it) names a key at most once per sign, and when an update's two halves lie apart
    // the index applies them one after the other to the same end: its keys need no check.
    let check_keys = strict || !consolidated;
    let Some((mut net, repeated)) = adjacent_updates(weights, rows, keys, hashes, check_keys) else {
        return grouped(weights, rows, keys, hashes, strict, None);
    };
    let Some(repeated) = repeated else { return Ok(net) };
    // A few keys occur more than once (an epoch that inserts a row and updates it, say): only
    // their rows (those of every key that may repeat) are grouped, in ascending order as
    // the keys came; the paired keys stay, moved down in place over the others.
    let mut order: Vec<u32> = Vec::new();
    let mut kept = 0;
    for index in 0..net.keys.len() {
        if repeated.marked[index] {
            let first = repeated.first_rows[index];
            let change = &net.keys[index];
            let span = if change.before.is_some() && change.after.is_some() { 2 } else { 1 };
            order.extend(first..first + span);
        } else {
            net.keys[kept] = net.keys[index];
            net.rows[kept] = net.rows[index];
            kept += 1;
        }
    }
    net.keys.truncate(kept);
    net.rows.truncate(kept);
    let rest = grouped(weights, rows, keys, hashes, strict, Some(&order))?;
    net.keys.extend(rest.keys);
    net.rows.extend(rest.rows);
    net.remaining = rest.remaining;
    Ok(net)
}

/// The keys of a paired change that may occur more than once.
struct RepeatedKeys {
    /// Per key change (in order), whether another key change may have its key (see
    /// [`maybe_repeated`]).
    marked: Vec<bool>,
    /// Per key change, its first row (an update's two rows are this one and the next).
    first_rows: Vec<u32>,
}

/// The net change of any change: each key's rows brought together through a hash table of
/// keys, equal rows under a key added up. With `order`, only the rows it lists (in ascending
/// order, every row of each key among them) are grouped, and the other rows stay as they are.
fn grouped<'a>(
    weights: &[i64],
    rows: &'a Encoded,
    keys: &'a Encoded,
    hashes: &[u64],
    strict: bool,
    order: Option<&[u32]>,
) -> Result<NetChange<'a>, Conflict> {
    let count = weights.len();
    let every_row: Vec<u32>;
    let grouped_rows = match order {
        Some(order) => order,
        None => {
            every_row = (0..count as u32).collect();
            &every_row
        }
    };
    // Each key's rows, chained in order through `next` from its group's head.
    let mut groups: HashTable<u32> = HashTable::with_capacity(grouped_rows.len());
    let mut heads: Vec<u32> = Vec::with_capacity(grouped_rows.len());
    let mut tails: Vec<u32> = Vec::with_capacity(grouped_rows.len());
    let mut next = vec![END; count];
    for &row in grouped_rows {
        let row = row as usize;
        let key = keys.get(row);
        let entry = groups.entry(
            hashes[row],
            |&group| keys.get(heads[group as usize] as usize) == key,
            |&group| hashes[heads[group as usize] as usize],
        );
        match entry {
            Entry::Occupied(found) => {
                let group = *found.get() as usize;
                next[tails[group] as usize] = row as u32;
                tails[group] = row as u32;
            }
            Entry::Vacant(vacant) => {
                vacant.insert(heads.len() as u32);
                heads.push(row as u32);
                tails.push(row as u32);
            }
        }
    }
    drop(groups);

    let mut net = NetChange {
        keys: Vec::with_capacity(heads.len()),
        rows: Vec::with_capacity(heads.len()),
        remaining: None,
        distinct: true,
    };
    let mut kept: Vec<(u32, i64)> = Vec::with_capacity(count);
    let mut merged = false;
    let mut group: Vec<(u32, i64)> = Vec::new();
    let mut pair = [(0u32, 0i64); 2];
    for &head in &heads {
        let second = next[head as usize];
        // The key's rows with their net weights, none zero. Most keys have one row (an
        // insertion or a deletion) or two (an update): those skip the general path.
        let members: &[(u32, i64)] = if second == END {
            pair[0] = (head, weights[head as usize]);
            &pair[..1]
        } else if next[second as usize] == END && rows.get(head as usize) != rows.get(second as usize) {
            pair = [(head, weights[head as usize]), (second, weights[second as usize])];
            &pair[..]
        } else {
            group.clear();
            let mut row = head;
            while row != END {
                group.push((row, weights[row as usize]));
                row = next[row as usize];
            }
            let rows_of_key = group.len();
            // Equal rows side by side (the sort is stable: the first of them stays), added up.
            group.sort_by(|a, b| rows.get(a.0 as usize).cmp(rows.get(b.0 as usize)));
            group.dedup_by(|later, earlier| {
                let equal = rows.get(later.0 as usize) == rows.get(earlier.0 as usize);
                if equal {
                    earlier.1 += later.1;
                }
                equal
            });
            merged |= group.len() != rows_of_key;
            &group
        };
        let size = members.len();
        let members: &[(u32, i64)] = if members.iter().any(|(_, weight)| *weight == 0) {
            group = members.iter().copied().filter(|(_, weight)| *weight != 0).collect();
            merged |= group.len() != size;
            &group
        } else {
            members
        };
        let (mut before, mut after) = (None, None);
        for &(row, weight) in members {
            if weight < 0 {
                if strict && (weight < -1 || before.is_some()) {
                    return Err(Conflict::Missing(row));
                }
                before = Some(row);
            } else {
                if strict && (weight > 1 || after.is_some()) {
                    return Err(Conflict::Duplicate(row));
                }
                after = Some(row);
            }
        }
        let Some(behind) = after.or(before) else { continue };
        kept.extend_from_slice(members);
        net.keys.push(KeyChange {
            hash: hashes[head as usize],
            key: keys.get(head as usize),
            before: before.map(|row| rows.get(row as usize)),
            after: after.map(|row| rows.get(row as usize)),
        });
        net.rows.push(behind);
    }
    if merged {
        // Back in the change's order: each kept row's weight at its place (the rows not
        // grouped keep theirs), then a pass.
        let mut net_weights = vec![0i64; count];
        if order.is_some() {
            net_weights.copy_from_slice(weights);
            for &row in grouped_rows {
                net_weights[row as usize] = 0;
            }
        }
        for (row, weight) in kept {
            net_weights[row as usize] = weight;
        }
        let remaining = net_weights.iter().enumerate().filter(|(_, w)| **w != 0);
        net.remaining = Some(remaining.map(|(row, &weight)| (row as u32, weight)).collect());
    }
    Ok(net)
}

/// The net change of a change in which every key occurs once, or twice side by side as an
/// update (one row retracted and another inserted), each row with weight 1 or -1: the order
/// sources and SQL UPDATE send changes in, and that of an aggregate's output. One pass pairs
/// each update's halves, and when `check_keys` a filter of the keys' hashes marks the key
/// changes whose key another one may have (returned beside the result, which is the general
/// path's for every key change not marked; `None`: none). `None` when a row does not fit the
/// shape: the general path then brings each key's rows together.
fn adjacent_updates<'a>(
    weights: &[i64],
    rows: &'a Encoded,
    keys: &'a Encoded,
    hashes: &[u64],
    check_keys: bool,
) -> Option<(NetChange<'a>, Option<RepeatedKeys>)> {
    let count = weights.len();
    let mut net =
        NetChange { keys: Vec::with_capacity(count), rows: Vec::with_capacity(count), remaining: None, distinct: true };
    let mut first_rows: Vec<u32> = Vec::with_capacity(if check_keys { count } else { 0 });
    let mut row = 0;
    while row < count {
        let (hash, key, weight) = (hashes[row], keys.get(row), weights[row]);
        if weight.abs() != 1 {
            return None;
        }
        let pair = row + 1 < count && hashes[row + 1] == hash && same_bytes(keys.get(row + 1), key);
        if pair && (weights[row + 1] != -weight || same_bytes(rows.get(row), rows.get(row + 1))) {
            return None;
        }
        if check_keys {
            first_rows.push(row as u32);
        }
        let (before, after, behind) = match (pair, weight > 0) {
            (false, true) => (None, Some(rows.get(row)), row),
            (false, false) => (Some(rows.get(row)), None, row),
            (true, true) => (Some(rows.get(row + 1)), Some(rows.get(row)), row),
            (true, false) => (Some(rows.get(row)), Some(rows.get(row + 1)), row + 1),
        };
        net.keys.push(KeyChange { hash, key, before, after });
        net.rows.push(behind as u32);
        row += if pair { 2 } else { 1 };
    }
    let repeated = if check_keys { maybe_repeated(&net.keys) } else { None };
    Some((net, repeated.map(|marked| RepeatedKeys { marked, first_rows })))
}

/// Bits per key change of [`maybe_repeated`]'s filter.
const FILTER_BITS_PER_KEY: usize = 64;

/// Marks the key changes whose key may be another's: each hash sets one bit of a filter of
/// [`FILTER_BITS_PER_KEY`] bits a key change (small enough to stay in the cache, zeroed in
/// one pass: cheaper than a hash table of the hashes); a bit set twice is a suspect, and
/// every key change whose bit is a suspect is marked. Every change of a key named more than
/// once is among them, with a few others whose bits collide (about one in
/// `2 * FILTER_BITS_PER_KEY`), which the general path handles as well. `None`: no key repeats.
fn maybe_repeated(keys: &[KeyChange]) -> Option<Vec<bool>> {
    let bits = (keys.len() * FILTER_BITS_PER_KEY).next_power_of_two().max(64);
    // The top bits of a multiplicative mix of the hash (its own low bits pick index slots).
    let bit_of = |hash: u64| (hash.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> (64 - bits.trailing_zeros())) as usize;
    let (mut seen, mut twice) = (vec![0u64; bits / 64], vec![0u64; bits / 64]);
    let mut any_twice = false;
    for key in keys {
        let bit = bit_of(key.hash);
        let (word, mask) = (bit / 64, 1u64 << (bit % 64));
        let again = seen[word] & mask != 0;
        seen[word] |= mask;
        twice[word] |= mask & u64::from(again).wrapping_neg();
        any_twice |= again;
    }
    any_twice.then(|| {
        keys.iter()
            .map(|key| {
                let bit = bit_of(key.hash);
                twice[bit / 64] & (1u64 << (bit % 64)) != 0
            })
            .collect()
    })
}

/// The net change of a change that only inserts or only retracts: one key change per row,
/// without grouping rows by key. A key that appears twice conflicts in the index itself
/// (its second insertion finds it taken, its second retraction finds the row gone).
fn one_sign<'a>(
    weights: &[i64],
    rows: &'a Encoded,
    keys: &'a Encoded,
    hashes: &[u64],
    strict: bool,
    inserts: bool,
) -> Result<NetChange<'a>, Conflict> {
    let mut net = NetChange {
        keys: Vec::with_capacity(weights.len()),
        rows: Vec::with_capacity(weights.len()),
        remaining: None,
        // Not strict, two equal rows (or two rows of one key) would both stay.
        distinct: strict,
    };
    for (row, &weight) in weights.iter().enumerate() {
        if strict && weight.abs() > 1 {
            return Err(if inserts { Conflict::Duplicate(row as u32) } else { Conflict::Missing(row as u32) });
        }
        let bytes = Some(rows.get(row));
        let (before, after) = if inserts { (None, bytes) } else { (bytes, None) };
        net.keys.push(KeyChange { hash: hashes[row], key: keys.get(row), before, after });
        net.rows.push(row as u32);
    }
    Ok(net)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use datafusion::arrow::array::{ArrayRef, Int64Array, StringArray};
    use datafusion::arrow::datatypes::DataType;

    use super::*;
    use crate::key_index::hash;
    use crate::rows::{RowCodec, encode_rows};

    /// Rows `(key, value)` encoded as whole rows and as keys, with the keys' hashes.
    fn encoded(rows: &[(i64, &str)]) -> (Encoded, Encoded, Vec<u64>) {
        let keys: ArrayRef = Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.0)));
        let values: ArrayRef = Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.1)));
        let row_codec = RowCodec::new(&[DataType::Int64, DataType::Utf8]).expect("codec");
        let key_codec = RowCodec::new(&[DataType::Int64]).expect("codec");
        let whole = encode_rows(&row_codec, &[Arc::clone(&keys), values]).expect("rows");
        let keys = encode_rows(&key_codec, &[keys]).expect("keys");
        let hashes = (0..rows.len()).map(|i| hash(keys.get(i))).collect();
        (whole, keys, hashes)
    }

    #[test]
    fn rows_of_a_key_come_together_and_equal_rows_cancel() {
        let rows = [(1, "old"), (2, "x"), (1, "new"), (3, "same"), (3, "same"), (1, "new"), (1, "newer")];
        let weights = [-1, 1, 1, -1, 1, -1, 1];
        let (whole, keys, hashes) = encoded(&rows);
        let net = net_change(&weights, &whole, &keys, &hashes, true, false).expect("consistent");
        // Key 1: "old" becomes "newer" ("new" came and went); key 2 gains "x"; key 3 is unchanged.
        assert_eq!(net.keys.len(), 2);
        assert_eq!(net.keys[0].before, Some(whole.get(0)));
        assert_eq!(net.keys[0].after, Some(whole.get(6)));
        assert_eq!((net.keys[1].before, net.keys[1].after), (None, Some(whole.get(1))));
        assert_eq!(net.rows, [6, 1]);
        assert_eq!(net.remaining, Some(vec![(0, -1), (1, 1), (6, 1)]));
    }

    #[test]
    fn a_change_whose_rows_all_stay_is_left_as_it_is() {
        let (whole, keys, hashes) = encoded(&[(1, "a"), (1, "b"), (2, "c")]);
        let net = net_change(&[-1, 1, -1], &whole, &keys, &hashes, true, false).expect("consistent");
        assert_eq!(net.keys.len(), 2);
        assert_eq!(net.remaining, None);
    }

    /// A key change as plain values, with the change's row behind it.
    type Plain<'a> = (&'a [u8], Option<&'a [u8]>, Option<&'a [u8]>, u64, u32);
    /// A net change as plain values, to compare two paths' results: its key changes in key
    /// order (the order they are applied in does not matter), remaining rows and distinctness.
    type PlainNet<'a> = (Vec<Plain<'a>>, Option<Vec<(u32, i64)>>, bool);

    fn plain<'a>(net: &NetChange<'a>) -> PlainNet<'a> {
        let mut keys: Vec<Plain> =
            net.keys.iter().zip(&net.rows).map(|(c, &row)| (c.key, c.before, c.after, c.hash, row)).collect();
        keys.sort();
        (keys, net.remaining.clone(), net.distinct)
    }

    #[test]
    fn updates_side_by_side_take_one_pass_and_repeated_keys_are_grouped_with_the_grouped_result() {
        let mut next = crate::test_random::xorshift(0x5eed_0fad_ace7);
        let (mut whole_pass, mut partly, mut general) = (0, 0, 0);
        for _ in 0..2000 {
            // Inserts, deletes and updates (their halves side by side, in either order) of
            // keys from a small range, so that some batches name a key twice.
            let mut rows: Vec<(i64, String)> = Vec::new();
            let mut weights = Vec::new();
            for _ in 0..1 + next() % 6 {
                let key = (next() % 8) as i64;
                match next() % 4 {
                    0 => {
                        rows.push((key, "new".into()));
                        weights.push(1);
                    }
                    1 => {
                        rows.push((key, "old".into()));
                        weights.push(-1);
                    }
                    order => {
                        let value = if next().is_multiple_of(8) { "old" } else { "new" };
                        let mut halves = [((key, "old".to_string()), -1), ((key, value.to_string()), 1)];
                        if order == 3 {
                            halves.reverse();
                        }
                        for (row, weight) in halves {
                            rows.push(row);
                            weights.push(weight);
                        }
                    }
                }
            }
            let named: Vec<(i64, &str)> = rows.iter().map(|(k, v)| (*k, v.as_str())).collect();
            let (whole, keys, hashes) = encoded(&named);
            if weights.iter().all(|w| *w > 0) || weights.iter().all(|w| *w < 0) {
                continue; // One sign: a path of its own.
            }
            // One pass fits the whole change when each key has one row, or two side by side
            // that differ and have opposite weights; otherwise the keys that occur again are
            // grouped, or the whole change when two rows side by side cannot be an update.
            let fits = (0..8).all(|key| {
                let at: Vec<usize> = (0..rows.len()).filter(|&i| rows[i].0 == key).collect();
                match at[..] {
                    [] | [_] => true,
                    [a, b] => b == a + 1 && rows[a] != rows[b] && weights[a] == -weights[b],
                    _ => false,
                }
            });
            match adjacent_updates(&weights, &whole, &keys, &hashes, true) {
                Some((_, None)) => {
                    assert!(fits, "{rows:?} {weights:?}");
                    whole_pass += 1;
                }
                Some((net, Some(repeated))) => {
                    // Every change of a key named twice is marked; a key named once may be
                    // too (its filter bit collides), which only sends it the general way.
                    for (index, change) in net.keys.iter().enumerate() {
                        let named = net.keys.iter().filter(|other| other.key == change.key).count();
                        assert!(named == 1 || repeated.marked[index], "{rows:?} {weights:?}: change {index}");
                    }
                    partly += usize::from(!fits);
                }
                None => general += 1,
            }
            let lenient = net_change(&weights, &whole, &keys, &hashes, false, false).expect("lenient");
            let all_grouped = grouped(&weights, &whole, &keys, &hashes, false, None).expect("lenient");
            assert_eq!(plain(&lenient), plain(&all_grouped), "{rows:?} {weights:?}");
            let strict = net_change(&weights, &whole, &keys, &hashes, true, false);
            match (strict, grouped(&weights, &whole, &keys, &hashes, true, None)) {
                (Ok(strict), Ok(all_grouped)) => {
                    assert_eq!(plain(&strict), plain(&all_grouped), "{rows:?} {weights:?}")
                }
                (Err(conflict), Err(expected)) => assert_eq!(conflict, expected, "{rows:?} {weights:?}"),
                (strict, expected) => {
                    panic!("{rows:?} {weights:?}: {:?} vs {:?}", strict.map(|n| plain(&n)), expected.map(|n| plain(&n)))
                }
            }
        }
        assert!(
            whole_pass > 100 && partly > 100 && general > 100,
            "every path taken: {whole_pass} in one pass, {partly} partly grouped, {general} grouped"
        );
    }

    #[test]
    fn the_repeated_key_filter_marks_every_repeated_key_and_few_others() {
        let mut next = crate::test_random::xorshift(0xf1_17e5);
        let (mut marked_once, mut named_once) = (0, 0);
        for round in 0..200 {
            // Distinct keys, some of them named again further on.
            let distinct: Vec<u64> = (0..1 + next() % 3000).map(|_| next()).collect();
            let mut named: Vec<u64> = distinct.clone();
            named.extend(distinct.iter().filter(|_| next().is_multiple_of(500)));
            let changes: Vec<KeyChange> =
                named.iter().map(|&hash| KeyChange { hash, key: &[], before: None, after: None }).collect();
            let twice = |hash: u64| named.iter().filter(|&&other| other == hash).count() > 1;
            match maybe_repeated(&changes) {
                None => assert!(named.len() == distinct.len(), "round {round}: a repeated key went unseen"),
                Some(marked) => {
                    for (index, &hash) in named.iter().enumerate() {
                        if twice(hash) {
                            assert!(marked[index], "round {round}: change {index} of a repeated key");
                        } else {
                            marked_once += usize::from(marked[index]);
                            named_once += 1;
                        }
                    }
                }
            }
        }
        // A key named once shares its bit with another key's at a chance of at most one in
        // FILTER_BITS_PER_KEY: allow twice that.
        assert!(named_once > 10_000, "{named_once} keys named once among batches with repeats");
        assert!(marked_once * FILTER_BITS_PER_KEY <= 2 * named_once, "{marked_once} of {named_once} marked");
        assert!(marked_once > 0, "collisions happen, and are marked");
    }

    #[test]
    fn a_consistent_consolidated_change_applies_leniently_wherever_its_halves_lie() {
        let mut next = crate::test_random::xorshift(0xc0_11_5e_ed);
        for _ in 0..500 {
            // Even keys hold "old" and are deleted, updated or left; odd keys are inserted or
            // left. The rows then come in a random order.
            let mut rows: Vec<(i64, &str, i64)> = Vec::new();
            let mut expected: Vec<(i64, &str)> = Vec::new();
            for key in 0..8 {
                match (key % 2, next() % 3) {
                    (0, 0) => rows.push((key, "old", -1)),
                    (0, 1) => rows.extend([(key, "old", -1), (key, "new", 1)]),
                    (0, _) => expected.push((key, "old")),
                    (_, 0) => {
                        rows.push((key, "new", 1));
                        expected.push((key, "new"));
                    }
                    _ => {}
                }
                if key % 2 == 0 && rows.last().is_some_and(|r| r.0 == key && r.1 == "new") {
                    expected.push((key, "new"));
                }
            }
            for i in (1..rows.len()).rev() {
                rows.swap(i, (next() % (i as u64 + 1)) as usize);
            }
            let held: Vec<(i64, &str)> = (0..8).step_by(2).map(|key| (key, "old")).collect();
            let (held_rows, held_keys, held_hashes) = encoded(&held);
            let mut index = crate::key_index::KeyIndex::default();
            let inserts = net_change(&[1; 4], &held_rows, &held_keys, &held_hashes, true, false).expect("inserts");
            index.apply_changes(&inserts.keys, true).expect("fresh keys");

            let named: Vec<(i64, &str)> = rows.iter().map(|r| (r.0, r.1)).collect();
            let weights: Vec<i64> = rows.iter().map(|r| r.2).collect();
            let (whole, keys, hashes) = encoded(&named);
            let net = net_change(&weights, &whole, &keys, &hashes, false, true).expect("lenient");
            index.apply_changes(&net.keys, false).expect("lenient");
            let (expected_rows, _, _) = encoded(&expected);
            let mut want: Vec<&[u8]> = (0..expected.len()).map(|i| expected_rows.get(i)).collect();
            let mut got: Vec<&[u8]> = index.values().collect();
            want.sort();
            got.sort();
            assert_eq!(got, want, "{rows:?}");
        }
    }

    #[test]
    fn two_rows_for_one_key_conflict_when_strict() {
        let (whole, keys, hashes) = encoded(&[(1, "a"), (2, "b"), (1, "c")]);
        assert_eq!(net_change(&[-1, 1, -1], &whole, &keys, &hashes, true, false).err(), Some(Conflict::Missing(2)));
        assert_eq!(net_change(&[2, 1, 0], &whole, &keys, &hashes, true, false).err(), Some(Conflict::Duplicate(0)));
        assert_eq!(net_change(&[1, 1, 2], &whole, &keys, &hashes, true, false).err(), Some(Conflict::Duplicate(2)));
        // Not strict: one of them counts.
        let net = net_change(&[-1, 1, 1], &whole, &keys, &hashes, false, false).expect("lenient");
        assert_eq!(net.keys.len(), 2);
        // Insertions only are not grouped: the index finds the key taken the second time.
        let net = net_change(&[1, 1, 1], &whole, &keys, &hashes, true, false).expect("one change per row");
        assert_eq!(net.keys.len(), 3);
        let mut index = crate::key_index::KeyIndex::default();
        assert_eq!(index.apply_changes(&net.keys, true), Err(crate::key_index::Refusal::Taken(2)));
        assert_eq!(index.len(), 0, "a refused change leaves nothing behind");
    }
}
