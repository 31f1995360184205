//! maptrace's fuzz harnesses: the code they share is [`replay`], which tracer's regression tests compile too;
//! and the memory limit each input runs under.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

pub use tracer::{gobin, heap, memory};

pub mod replay;

/// Heap bytes one input may hold at once, above what was held when it started.
pub const INPUT_MEMORY_LIMIT: usize = 256 << 20;

/// libFuzzer's own per-allocation limit (`-malloc_limit_mb`) needs a sanitizer's allocator hooks, and its
/// `-rss_limit_mb` counts the whole process (its in-memory corpus of whole binaries too) once a second: this
/// allocator counts the heap bytes live, and aborts (a crash libFuzzer reports with the input) when an input
/// holds more than [`INPUT_MEMORY_LIMIT`].
struct CountingAllocator;

#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;

static LIVE: AtomicUsize = AtomicUsize::new(0);
/// What was live when the running input started; `usize::MAX` between inputs.
static BASELINE: AtomicUsize = AtomicUsize::new(usize::MAX);

fn grew(by: usize) {
    let live = LIVE.fetch_add(by, Relaxed).saturating_add(by);
    let base = BASELINE.load(Relaxed);
    if base != usize::MAX && live.saturating_sub(base) > INPUT_MEMORY_LIMIT {
        // Out of the count first: printing may allocate.
        BASELINE.store(usize::MAX, Relaxed);
        eprintln!(
            "maptrace-fuzz: the input holds more than {} MiB",
            INPUT_MEMORY_LIMIT >> 20
        );
        std::process::abort();
    }
}

// SAFETY: every call is passed on to the system allocator unchanged; the count is only bookkeeping.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        grew(layout.size());
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        grew(layout.size());
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        match new_size.checked_sub(layout.size()) {
            Some(more) => grew(more),
            None => drop(LIVE.fetch_sub(layout.size() - new_size, Relaxed)),
        }
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

/// Runs one input under [`INPUT_MEMORY_LIMIT`].
pub fn with_memory_limit<T>(input: impl FnOnce() -> T) -> T {
    BASELINE.store(LIVE.load(Relaxed), Relaxed);
    let result = input();
    BASELINE.store(usize::MAX, Relaxed);
    result
}
