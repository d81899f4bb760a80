//! The allocator of Shale's processes, split by size.
//!
//! A put of a small value allocates a few dozen short-lived buffers on its way through
//! a store (the request, the proposal, the Raft entry, each message carrying it, the
//! batches they travel in), and with many ranges each put is an entry of its own, so
//! these are most of a store's allocations. Many are just past a kibibyte, beyond
//! glibc's per-thread cache (1,032 bytes), where every `malloc` and `free` goes to a
//! locked arena. mimalloc serves them from thread-local free lists.
//!
//! Large buffers (object chunks of a few MiB, bulk frames) stay with the system
//! allocator, which maps them fresh and unmaps them when freed: a gateway moving large
//! objects then holds only the chunks in flight. mimalloc kept freed large pages for
//! reuse, which raised the gateway's peak memory past its bound and slowed large GETs
//! when it served every size.

use std::alloc::{GlobalAlloc, Layout, System};

use mimalloc::MiMalloc;

/// Largest allocation, in bytes, served by mimalloc; larger ones go to the system.
pub const SMALL_BYTES_MAX: usize = 64 << 10;

/// Routes each allocation by its size: up to [`SMALL_BYTES_MAX`] to mimalloc, beyond to
/// the system allocator. A block is always freed by the allocator that made it, since
/// `dealloc` and `realloc` are given the layout it was allocated with.
pub struct SplitAlloc;

fn is_small(size: usize) -> bool {
    size <= SMALL_BYTES_MAX
}

// SAFETY: every method forwards to an allocator that upholds `GlobalAlloc`'s contract,
// choosing it by the layout's size, which the caller passes unchanged from allocation to
// deallocation; `realloc` across the boundary allocates, copies and frees explicitly.
unsafe impl GlobalAlloc for SplitAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if is_small(layout.size()) {
            // SAFETY: the caller's layout has a non-zero size, as `alloc` requires.
            unsafe { MiMalloc.alloc(layout) }
        } else {
            // SAFETY: as above.
            unsafe { System.alloc(layout) }
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if is_small(layout.size()) {
            // SAFETY: the caller's layout has a non-zero size.
            unsafe { MiMalloc.alloc_zeroed(layout) }
        } else {
            // SAFETY: as above.
            unsafe { System.alloc_zeroed(layout) }
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if is_small(layout.size()) {
            // SAFETY: a block of this size came from mimalloc (see `alloc`).
            unsafe { MiMalloc.dealloc(ptr, layout) }
        } else {
            // SAFETY: a block of this size came from the system allocator.
            unsafe { System.dealloc(ptr, layout) }
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        match (is_small(layout.size()), is_small(new_size)) {
            // SAFETY: the block came from mimalloc and stays there.
            (true, true) => unsafe { MiMalloc.realloc(ptr, layout, new_size) },
            // SAFETY: the block came from the system allocator and stays there.
            (false, false) => unsafe { System.realloc(ptr, layout, new_size) },
            // SAFETY: the caller guarantees `ptr` is live with `layout`, and `new_size`
            // with its alignment forms a valid layout (`realloc`'s contract).
            _ => unsafe { move_block(self, ptr, layout, new_size) },
        }
    }
}

/// Moves a block to the other allocator when a `realloc` crosses the size boundary.
///
/// # Safety
/// `ptr` must be live, allocated by `alloc` with `layout`; `new_size` must be non-zero
/// and, rounded up to `layout.align()`, not overflow `isize`.
unsafe fn move_block(alloc: &SplitAlloc, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
    // SAFETY: the caller guarantees the size and alignment form a valid layout.
    let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
    // SAFETY: `new_layout` has a non-zero size.
    let new_ptr = unsafe { alloc.alloc(new_layout) };
    if !new_ptr.is_null() {
        // SAFETY: both blocks are live, distinct, and at least this long.
        unsafe {
            std::ptr::copy_nonoverlapping(ptr, new_ptr, layout.size().min(new_size));
            alloc.dealloc(ptr, layout);
        }
    }
    new_ptr
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Grows a block through every boundary case and checks its bytes survive each move.
    #[test]
    fn realloc_keeps_the_bytes_across_the_size_boundary() {
        let a = SplitAlloc;
        let sizes = [
            16,
            SMALL_BYTES_MAX - 1,
            SMALL_BYTES_MAX,
            SMALL_BYTES_MAX + 1,
            4 << 20,
            SMALL_BYTES_MAX,
            100,
        ];
        let mut layout = Layout::from_size_align(sizes[0], 8).unwrap();
        // SAFETY: non-zero layout; each step reallocates the live block with its layout.
        unsafe {
            let mut ptr = a.alloc(layout);
            assert!(!ptr.is_null());
            for i in 0..layout.size() {
                *ptr.add(i) = (i % 251) as u8;
            }
            let mut filled = layout.size();
            for &size in &sizes[1..] {
                ptr = a.realloc(ptr, layout, size);
                assert!(!ptr.is_null());
                layout = Layout::from_size_align(size, 8).unwrap();
                let kept = filled.min(size);
                for i in 0..kept {
                    assert_eq!(
                        *ptr.add(i),
                        (i % 251) as u8,
                        "byte {i} after realloc to {size}"
                    );
                }
                for i in kept..size {
                    *ptr.add(i) = (i % 251) as u8;
                }
                filled = size;
            }
            a.dealloc(ptr, layout);
        }
    }

    #[test]
    fn zeroed_blocks_are_zero_on_both_sides() {
        let a = SplitAlloc;
        for size in [64, SMALL_BYTES_MAX, SMALL_BYTES_MAX + 1, 1 << 20] {
            let layout = Layout::from_size_align(size, 64).unwrap();
            // SAFETY: non-zero layout; the block is read within its size, then freed.
            unsafe {
                let ptr = a.alloc_zeroed(layout);
                assert!(!ptr.is_null());
                assert_eq!(ptr as usize % 64, 0, "alignment kept");
                assert!((0..size).all(|i| *ptr.add(i) == 0));
                a.dealloc(ptr, layout);
            }
        }
    }
}
