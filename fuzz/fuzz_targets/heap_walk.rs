//! The heap walk over a target memory made of fuzz bytes, with the heap model of a real go-target binary (the
//! input's first byte picks which): fuzzed words are the arena index, spans, `allgs`, the goroutines and their
//! stacks, package-level variables, type descriptors and the objects the walk reads.
#![no_main]

use libfuzzer_sys::fuzz_target;
use maptrace_fuzz::replay;

// Reading the binaries' heap models before the first input keeps it out of the time limit.
fuzz_target!(init: { replay::models(); }, |data: &[u8]| {
    maptrace_fuzz::with_memory_limit(|| replay::heap_walk(data));
});
