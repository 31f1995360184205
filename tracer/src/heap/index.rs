//! Address → heap object, the way the runtime's `spanOf` and `(*mspan).isFree` answer it
//! (`runtime/mheap.go@go1.27.3:606,687-713`, `mbitmap.go@go1.27.3:1174`), reading the target's memory and caching
//! what it read for the length of one walk.

use std::collections::HashMap;

use crate::gotype::Memory;
use crate::target::HeapLayout;

/// `heapArenaBytes`: 64 MiB on 64-bit linux.
const ARENA_SHIFT: u32 = 26;
/// Arena index entries (`1 << arenaL2Bits`, with arenaL1Bits 0).
const ARENA_L2_ENTRIES: u64 = 1 << 22;
/// The runtime's page (`pageSize`) and pages per arena.
const PAGE_SHIFT: u32 = 13;
const PAGES_PER_ARENA: u64 = 1 << (ARENA_SHIFT - PAGE_SHIFT);
/// `mSpanInUse`: a span of allocated (or allocatable) objects.
const SPAN_IN_USE: u8 = 1;
/// Bytes of `mspan` read at once: every field the index uses lies within them.
const SPAN_READ: usize = 192;

/// An allocated heap slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HeapObject {
    pub base: u64,
    pub size: u64,
}

/// What the index keeps of an in-use span.
struct Span {
    start: u64,
    limit: u64,
    elemsize: u64,
    nelems: u64,
    freeindex: u64,
    alloc_bits: u64,
    /// Read on first use.
    bits: Option<Vec<u8>>,
}

pub struct HeapIndex<'m> {
    memory: &'m dyn Memory,
    layout: &'m HeapLayout,
    load_bias: u64,
    /// The L2 arena map (`mheap_.arenas[0]`), read once.
    l2: Option<Option<u64>>,
    /// Arena index → `*heapArena` (None: not heap).
    arenas: HashMap<u64, Option<u64>>,
    /// Page number → `*mspan`.
    pages: HashMap<u64, u64>,
    /// `*mspan` → the span, if in use.
    spans: HashMap<u64, Option<Span>>,
}

impl<'m> HeapIndex<'m> {
    pub fn new(memory: &'m dyn Memory, layout: &'m HeapLayout, load_bias: u64) -> Self {
        HeapIndex { memory, layout, load_bias, l2: None, arenas: HashMap::new(), pages: HashMap::new(), spans: HashMap::new() }
    }

    fn word(&self, addr: u64) -> Option<u64> {
        let mut b = [0u8; 8];
        self.memory.read(addr, &mut b).ok()?;
        Some(u64::from_le_bytes(b))
    }

    /// The allocated heap object `addr` points into, if any.
    pub fn object_containing(&mut self, addr: u64) -> Option<HeapObject> {
        let ri = addr.wrapping_sub(self.layout.arena_base_offset) >> ARENA_SHIFT;
        if addr == 0 || ri >= ARENA_L2_ENTRIES {
            return None;
        }
        let l2 = match self.l2 {
            Some(l2) => l2,
            None => {
                let l2 = self.word(self.layout.arenas + self.load_bias).filter(|&p| p != 0);
                *self.l2.insert(l2)
            }
        }?;
        let arena = match self.arenas.get(&ri) {
            Some(&a) => a,
            None => {
                let a = self.word(l2 + 8 * ri).filter(|&p| p != 0);
                *self.arenas.entry(ri).or_insert(a)
            }
        }?;
        let page = addr >> PAGE_SHIFT;
        let span_ptr = match self.pages.get(&page) {
            Some(&s) => s,
            None => {
                let s = self.word(arena + self.layout.arena_spans + 8 * (page % PAGES_PER_ARENA)).unwrap_or(0);
                self.pages.insert(page, s);
                s
            }
        };
        if span_ptr == 0 {
            return None;
        }
        if !self.spans.contains_key(&span_ptr) {
            let span = self.read_span(span_ptr);
            self.spans.insert(span_ptr, span);
        }
        let span = self.spans.get_mut(&span_ptr)?.as_mut()?;
        if addr < span.start || addr >= span.limit || span.elemsize == 0 {
            return None;
        }
        let idx = (addr - span.start) / span.elemsize;
        if idx >= span.nelems {
            return None;
        }
        // Below freeindex every slot is allocated; above it, allocBits says (as of the span's last sweep).
        if idx >= span.freeindex {
            if span.bits.is_none() {
                let mut bits = vec![0u8; span.nelems.div_ceil(8) as usize];
                if self.memory.read(span.alloc_bits, &mut bits).is_err() {
                    bits.clear();
                }
                span.bits = Some(bits);
            }
            let bits = span.bits.as_deref().unwrap_or_default();
            if bits.get((idx / 8) as usize).is_none_or(|b| b >> (idx % 8) & 1 == 0) {
                return None;
            }
        }
        Some(HeapObject { base: span.start + idx * span.elemsize, size: span.elemsize })
    }

    fn read_span(&self, ptr: u64) -> Option<Span> {
        let mut b = [0u8; SPAN_READ];
        self.memory.read(ptr, &mut b).ok()?;
        let l = self.layout;
        let uint = |off: u64, size: u8| -> Option<u64> {
            let off = off as usize;
            let bytes = b.get(off..off + size as usize)?;
            Some(match size {
                1 => u64::from(bytes[0]),
                2 => u64::from(u16::from_le_bytes(bytes.try_into().ok()?)),
                4 => u64::from(u32::from_le_bytes(bytes.try_into().ok()?)),
                _ => u64::from_le_bytes(bytes.try_into().ok()?),
            })
        };
        if uint(l.span_state, 1)? != u64::from(SPAN_IN_USE) {
            return None;
        }
        let start = uint(l.span.start_addr, 8)?;
        Some(Span {
            start,
            limit: start + (uint(l.span.npages, 8)? << PAGE_SHIFT),
            elemsize: uint(l.span.elemsize, 8)?,
            nelems: uint(l.span.nelems, l.span.nelems_size)?,
            freeindex: uint(l.span_freeindex.0, l.span_freeindex.1)?,
            alloc_bits: uint(l.span_alloc_bits, 8)?,
            bits: None,
        })
    }
}
