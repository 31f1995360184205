//! The evidence behind a finalizer's diagnosis: object sizes, types and tiny blocks from the
//! lifecycle engine and the site table; whether a closure reaches its own object, from a short
//! walk of the target's memory over the objects the engine tracks.

use std::collections::HashSet;

use crate::{
    gobin::runtime_types,
    lifecycle::{
        finalizers::{Evidence, Subject},
        sites::{site_id, SiteTable},
        Lifecycle,
    },
    memory::Memory,
};

/// Words scanned per block on the way from a finalizer's or cleanup's closure (and argument) to
/// its object: captured variables are few.
const SCAN_WORDS: u64 = 16;
/// Pointer hops followed from those roots: a cleanup's own closure sits inside AddCleanup's
/// wrapper (1.24–1.25), and an argument may point at a struct that points at the object.
const SCAN_DEPTH: usize = 3;
/// Blocks read per scan at most.
const SCAN_BLOCKS: usize = 256;

/// Object sizes, types and tiny blocks from the lifecycle engine and the site table; closures
/// from the target's memory.
pub(super) struct MemoryEvidence<'a> {
    pub lifecycle: &'a Lifecycle,
    pub sites: &'a SiteTable,
    pub memory: &'a dyn Memory,
}

impl Evidence for MemoryEvidence<'_> {
    fn live_size(&self, object: u64) -> Option<u64> {
        self.lifecycle.object_containing(object).map(|o| o.size)
    }

    fn tiny(&self, what: &Subject) -> bool {
        let pointer_free = |t: u64| runtime_types::pointer_free(self.memory, t) == Some(true);
        match self.lifecycle.object_containing(what.object) {
            Some(o) => {
                let type_ptr = (site_id::is_head(o.site))
                    .then(|| self.sites.object_type(o.site))
                    .flatten();
                o.size < 16 && type_ptr.is_some_and(pointer_free)
            }
            // Not traced (allocated before attach, or not sampled): the registration's `*T` says.
            None => runtime_types::pointer_elem(self.memory, what.ptr_type).is_some_and(|t| {
                runtime_types::size(self.memory, t).is_some_and(|s| (1..16).contains(&s)) && pointer_free(t)
            }),
        }
    }

    fn others_in_block(&self, block: u64, object: u64) -> bool {
        self.lifecycle
            .objects_in(block..block.saturating_add(16))
            .any(|o| o.addr != object)
    }

    fn reachable_from(&self, roots: &[u64], object: u64, size: u64) -> bool {
        let target = object..object.saturating_add(size.max(1));
        let mut seen = HashSet::new();
        let mut frontier: Vec<u64> = roots.iter().copied().filter(|&r| r != 0).collect();
        for _ in 0..SCAN_DEPTH {
            let mut next = Vec::new();
            for block in frontier {
                if seen.len() >= SCAN_BLOCKS || !seen.insert(block) {
                    continue;
                }
                // Within the block's own allocation when it is known.
                let words = self.lifecycle.object_containing(block).map_or(SCAN_WORDS, |o| {
                    (o.addr.saturating_add(o.size).saturating_sub(block) / 8).min(SCAN_WORDS)
                });
                for w in read_words(self.memory, block, words) {
                    if target.contains(&w) {
                        return true;
                    }
                    // Hop only to tracked heap objects: integers and code pointers stay behind.
                    // (Hopping to any heap-looking word instead, for sampled mode, which tracks
                    // few objects, named held cleanups as cycles through their neighbours.)
                    if self.lifecycle.object_containing(w).is_some() {
                        next.push(w);
                    }
                }
            }
            frontier = next;
        }
        false
    }
}

/// Up to `n` words ([`SCAN_WORDS`] at most) from `addr`: in one read, or word by word up to the first unreadable
/// one.
fn read_words(memory: &dyn Memory, addr: u64, n: u64) -> Vec<u64> {
    let n = n.min(SCAN_WORDS);
    let mut buf = vec![0u8; 8 * n as usize];
    if memory.read(addr, &mut buf).is_ok() {
        return buf
            .chunks_exact(8)
            .map(|c| u64::from_le_bytes(c.try_into().unwrap()))
            .collect();
    }
    (0..n).map_while(|i| memory.word(addr.checked_add(8 * i)?)).collect()
}
