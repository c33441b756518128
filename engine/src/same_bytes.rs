//! Equality of short byte strings (keys and rows of a few dozen bytes) compared in line, eight
//! bytes at a time: a call to the C library's `memcmp` for each costs more than the compare
//! itself, and the key index and net change compare one or two per change.

use crate::rows::first_bytes;

/// Whether `a` and `b` hold the same bytes.
#[inline]
pub(crate) fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    let len = a.len();
    if len != b.len() {
        return false;
    }
    if len < 8 {
        return short_same(a, b);
    }
    let mut at = 0;
    while at + 8 < len {
        if word(a, at) != word(b, at) {
            return false;
        }
        at += 8;
    }
    // The last eight bytes, overlapping the words compared before when `len` is not a
    // multiple of eight.
    word(a, len - 8) == word(b, len - 8)
}

/// [`same_bytes`] of fewer than eight bytes each (the lengths are equal).
#[inline]
fn short_same(a: &[u8], b: &[u8]) -> bool {
    let len = a.len();
    if len >= 4 {
        let half = |bytes: &[u8], at: usize| u32::from_ne_bytes(first_bytes(&bytes[at..]));
        return half(a, 0) == half(b, 0) && half(a, len - 4) == half(b, len - 4);
    }
    a.iter().zip(b).all(|(x, y)| x == y)
}

/// The eight bytes at `at` as a word.
#[inline]
fn word(bytes: &[u8], at: usize) -> u64 {
    u64::from_ne_bytes(first_bytes(&bytes[at..]))
}

#[cfg(test)]
mod tests {
    use super::same_bytes;

    #[test]
    fn agrees_with_slice_equality_at_every_length_and_difference() {
        for len in 0..40usize {
            let a: Vec<u8> = (0..len as u8).map(|i| i.wrapping_mul(37)).collect();
            assert!(same_bytes(&a, &a.clone()), "length {len}");
            for at in 0..len {
                let mut b = a.clone();
                b[at] ^= 0x80;
                assert!(!same_bytes(&a, &b), "length {len}, byte {at} differs");
            }
            let longer = [&a[..], &[0]].concat();
            assert!(!same_bytes(&a, &longer) && !same_bytes(&longer, &a), "lengths {len} and {}", len + 1);
        }
    }
}
