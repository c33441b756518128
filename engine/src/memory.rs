//! Keeping freed memory in the process. Epochs allocate and free buffers of megabytes (encoded
//! rows, key changes, columns). glibc's allocator returns memory at the top of its heap to the
//! kernel once more than its trim threshold (128 KiB at start) is free there, so each epoch's
//! buffers went back to the kernel when freed and were faulted in and cleared again by the
//! next epoch: up to a tenth of an epoch's time in the benchmarks. glibc raises the threshold
//! by itself (to twice the size of the block, and its limit for serving blocks from the heap
//! to the size) when a large block it had mapped apart is freed; [`keep_freed_memory`] frees
//! one of the largest such blocks it adjusts for, once, at start.

/// The largest block glibc adjusts its thresholds for (its ceiling is 32 MiB), less room for
/// the block's header.
const LARGE_BLOCK: usize = 31 << 20;

/// Allocates and frees one large block, so that glibc keeps up to twice its size free in the
/// heap instead of returning it after every epoch. The block is never written (its pages are
/// never touched); with another allocator this is one allocation and nothing else.
pub fn keep_freed_memory() {
    drop(std::hint::black_box(Vec::<u8>::with_capacity(LARGE_BLOCK)));
}
