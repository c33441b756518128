//! A seeded pseudo-random sequence for the model tests (xorshift64: fixed seeds, no
//! dependency, the same sequence on every machine).

/// The sequence from `state` (not zero).
pub fn xorshift(mut state: u64) -> impl FnMut() -> u64 {
    move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    }
}
