//! A real go-target binary (the input's first byte picks which) with the rest of the input applied as patches
//! inside its pclntab, build info, moduledata, type data, symbol table and (decompressed) DWARF: each mutation
//! reaches the readers of those tables, where a byte fuzzer of a 2 MB file would mostly mutate code.
#![no_main]

use libfuzzer_sys::fuzz_target;
use maptrace_fuzz::replay;

// Decompressing the go-targets before the first input keeps it out of the time limit.
fuzz_target!(init: { replay::bases(); }, |data: &[u8]| {
    let _ = maptrace_fuzz::with_memory_limit(|| replay::gobin_patch(data));
});
