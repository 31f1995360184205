//! Program counters → function, file:line, from the binary's pclntab (works on stripped binaries).

use std::sync::Arc;

use super::memo::{Memo, MEMO_ENTRIES};
use crate::gobin::{GoBinary, SourcePosition};

/// Memoizing symbolizer for one process image.
pub struct Symbolizer {
    binary: Arc<GoBinary>,
    /// Runtime address minus link-time address (non-zero for PIE builds).
    load_bias: u64,
    cache: Memo<u64, Option<Arc<SourcePosition>>>,
}

impl Symbolizer {
    pub fn new(binary: Arc<GoBinary>, load_bias: u64) -> Self {
        Self {
            binary,
            load_bias,
            cache: Memo::new(MEMO_ENTRIES),
        }
    }

    /// The frame executing `pc`. Pass a return address minus one so the call's own line is found.
    pub fn position(&mut self, pc: u64) -> Option<Arc<SourcePosition>> {
        let (binary, bias) = (&self.binary, self.load_bias);
        self.cache
            .get_or(pc, || binary.symbolize(pc.wrapping_sub(bias)).map(Arc::new))
    }

    /// Frames of a captured stack (`stack[0]` is the probed instruction, the rest return addresses).
    pub fn stack(&mut self, stack: &[u64]) -> Vec<(u64, Option<Arc<SourcePosition>>)> {
        stack
            .iter()
            .enumerate()
            .map(|(i, &pc)| (pc, self.position(if i == 0 { pc } else { pc.wrapping_sub(1) })))
            .collect()
    }
}

/// Functions of the Go runtime itself: they are never the "site" of an allocation.
pub fn is_runtime_function(name: &str) -> bool {
    name.starts_with("runtime.") || name.starts_with("internal/runtime/") || name.starts_with("runtime/internal/")
}

/// The runtime's allocator entry points (mallocgc and the size-specialized functions beside it).
pub fn is_allocator(name: &str) -> bool {
    // The heap profiler's sampling path (sampled mode's probe) is part of the allocation.
    name.starts_with("runtime.mallocgc") || name == "runtime.profilealloc" || name == "runtime.mProf_Malloc"
}

/// The garbage collector's functions (`runtime.gcStart`, `runtime.gcBgMarkStartWorkers`, …).
pub fn is_gc_function(name: &str) -> bool {
    name.starts_with("runtime.gc")
}

/// Go type names of the runtime's own data structures (type names carry the package name).
pub fn is_runtime_type(type_name: &str) -> bool {
    type_name.starts_with("runtime.")
}

/// Runtime functions that work on maps: an allocation below one is map storage.
pub fn is_map_function(name: &str) -> bool {
    name.starts_with("internal/runtime/maps.")
        || [
            "runtime.map",
            "runtime.hashGrow",
            "runtime.growWork",
            "runtime.makeBucketArray",
            "runtime.newoverflow",
        ]
        .iter()
        .any(|p| name.starts_with(p))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runtime_and_map_functions() {
        assert!(is_runtime_function("runtime.mallocgc"));
        assert!(is_runtime_function("internal/runtime/maps.newarray"));
        assert!(!is_runtime_function("runtime/pprof.StartCPUProfile"));
        assert!(!is_runtime_function("main.main"));
        assert!(is_map_function("runtime.mapassign_faststr"));
        assert!(is_map_function("internal/runtime/maps.(*Map).growToTable"));
        assert!(is_map_function("runtime.hashGrow"));
        assert!(!is_map_function("runtime.makeslice"));
    }
}
