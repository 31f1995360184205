//! Any file as a Go executable: `GoBinary::parse` on the input's bytes, then every question maptrace asks of a
//! parsed binary. Seeds are whole go-target binaries; most mutations land in their code, so this harness is the
//! one for the ELF container (headers, section and program tables) and for small hand-made files.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = maptrace_fuzz::with_memory_limit(|| maptrace_fuzz::replay::gobin_file(data));
});
