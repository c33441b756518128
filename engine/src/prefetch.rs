//! A hint to the processor to start bringing a value's cache line in without waiting for it:
//! the prefetch instruction on x86-64 (through `safe_arch`, as the workspace forbids unsafe
//! code of its own), nothing elsewhere. A lookup into a table of millions of entries misses
//! the cache; hinting the lines of the next lookups while this one runs overlaps the misses.

/// Starts loading the cache line that holds `value` into every cache level.
#[inline(always)]
pub fn prefetch<T>(value: &T) {
    #[cfg(all(target_arch = "x86_64", target_feature = "sse"))]
    safe_arch::prefetch_t0(value);
    #[cfg(not(all(target_arch = "x86_64", target_feature = "sse")))]
    let _ = value;
}
