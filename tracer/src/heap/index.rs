//! Address → heap object, the way the runtime's `spanOf` and `(*mspan).isFree` answer it
//! (`runtime/mheap.go@go1.27.3:606,687-713`, `mbitmap.go@go1.27.3:1174`), reading the target's memory and caching
//! what it read for the length of one walk.

use std::collections::HashMap;

use crate::gobin::runtime_types::{self as gotype, GcMask};
use crate::gobin::{HeapLayout, PointerBits};
use crate::memory::Memory;

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
/// Words of an arena (`heapArenaWords`).
const ARENA_WORDS: u64 = 1 << (ARENA_SHIFT - 3);
/// Objects up to this size have their pointer bits in their span from 1.22 (`gc.MinSizeForMallocHeader`); larger
/// ones a type, and a malloc header of this size in a small span (`gc.MallocHeaderSize`).
const MAX_SIZE_BITS_IN_SPAN: u64 = 512;
const MALLOC_HEADER: u64 = 8;
/// Green Tea's inline mark bits (`spanInlineMarkBits`) close a span of their element sizes.
const INLINE_MARKS: u64 = 128;
/// Larger masks than this (a type of more than 64 MiB of pointer words) are not read.
const MAX_MASK_BYTES: u64 = 1 << 20;
/// Objects in a span of small objects at most: a page of the smallest size class (`pageSize / 8`), the most any
/// size class's span holds (`runtime/sizeclasses.go`, 1.19 to 1.27).
const MAX_SMALL_ELEMS: u64 = (1 << PAGE_SHIFT) / 8;
/// Pointer bits kept for one object at most (16 MiB, for a 1 GiB object: the walk's default byte budget): a larger
/// object is scanned conservatively, within the walk's budget, rather than given a bitmap its span's words size.
const MAX_OBJECT_WORDS: u64 = 1 << 27;

/// An allocated heap slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HeapObject {
    pub base: u64,
    pub size: u64,
}

/// Which words of an object hold pointers, as the runtime's GC sees them.
#[derive(Debug, PartialEq, Eq)]
pub enum PointerWords {
    /// None: its span holds pointer-free objects (`noscan`), or it is a large object not typed yet.
    None,
    /// Bit i (byte i/8, bit i%8) set: the object's word i is a pointer.
    Bits(Vec<u8>),
    /// The runtime's record could not be read: every word may be.
    Unknown,
}

/// What the index keeps of an in-use span.
struct Span {
    /// Its arena's `heapArena` record.
    arena: u64,
    /// `spanclass`: size class << 1 | noscan.
    class: u8,
    /// `largeType` (1.22+), for a span of one large object.
    large_type: u64,
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
    /// Span records that could not be read or contradict the runtime's layout: no object in them is reached.
    corrupt_spans: u64,
}

impl<'m> HeapIndex<'m> {
    pub fn new(memory: &'m dyn Memory, layout: &'m HeapLayout, load_bias: u64) -> Self {
        HeapIndex {
            memory,
            layout,
            load_bias,
            l2: None,
            arenas: HashMap::new(),
            pages: HashMap::new(),
            spans: HashMap::new(),
            corrupt_spans: 0,
        }
    }

    /// Span records found unreadable or inconsistent so far (see [`Span::check`]).
    pub fn corrupt_spans(&self) -> u64 {
        self.corrupt_spans
    }

    fn word(&self, addr: u64) -> Option<u64> {
        let mut b = [0u8; 8];
        self.memory.read(addr, &mut b).ok()?;
        Some(u64::from_le_bytes(b))
    }

    /// The in-use span `addr` lies in, if any.
    fn span_of(&mut self, addr: u64) -> Option<&mut Span> {
        let ri = addr.wrapping_sub(self.layout.arena_base_offset) >> ARENA_SHIFT;
        if addr == 0 || ri >= ARENA_L2_ENTRIES {
            return None;
        }
        let l2 = match self.l2 {
            Some(l2) => l2,
            None => {
                let l2 = self
                    .word(self.layout.arenas.wrapping_add(self.load_bias))
                    .filter(|&p| p != 0);
                *self.l2.insert(l2)
            }
        }?;
        let arena = match self.arenas.get(&ri) {
            Some(&a) => a,
            None => {
                let a = l2.checked_add(8 * ri).and_then(|at| self.word(at)).filter(|&p| p != 0);
                *self.arenas.entry(ri).or_insert(a)
            }
        }?;
        let page = addr >> PAGE_SHIFT;
        let span_ptr = match self.pages.get(&page) {
            Some(&s) => s,
            None => {
                let s = arena
                    .checked_add(self.layout.arena_spans + 8 * (page % PAGES_PER_ARENA))
                    .and_then(|at| self.word(at))
                    .unwrap_or(0);
                self.pages.insert(page, s);
                s
            }
        };
        if span_ptr == 0 {
            return None;
        }
        if !self.spans.contains_key(&span_ptr) {
            let span = self.read_span(span_ptr, arena);
            self.spans.insert(span_ptr, span);
        }
        let span = self.spans.get_mut(&span_ptr)?.as_mut()?;
        (addr >= span.start && addr < span.limit).then_some(span)
    }

    /// The allocated heap object `addr` points into, if any.
    pub fn object_containing(&mut self, addr: u64) -> Option<HeapObject> {
        let memory = self.memory;
        let span = self.span_of(addr)?;
        let idx = (addr - span.start) / span.elemsize;
        if idx >= span.nelems {
            return None;
        }
        // Below freeindex every slot is allocated; above it, allocBits says (as of the span's last sweep).
        if idx >= span.freeindex {
            if span.bits.is_none() {
                // At most MAX_SMALL_ELEMS bits: `Span::check` bounds nelems.
                let mut bits = vec![0u8; span.nelems.div_ceil(8) as usize];
                if memory.read(span.alloc_bits, &mut bits).is_err() {
                    bits.clear();
                }
                span.bits = Some(bits);
            }
            let bits = span.bits.as_deref().unwrap_or_default();
            if !bit(bits, idx) {
                return None;
            }
        }
        Some(HeapObject {
            base: span.start + idx * span.elemsize,
            size: span.elemsize,
        })
    }

    /// Which words of `obj` (an object [`Self::object_containing`] returned) hold pointers, read where the
    /// runtime's GC reads it (`scanobject`, `typePointersOfUnchecked`).
    pub fn pointer_words(&mut self, obj: HeapObject) -> PointerWords {
        let bits = self.layout.pointer_bits;
        let inline_marks = self.layout.inline_mark_sizes;
        let Some(span) = self.span_of(obj.base) else {
            return PointerWords::Unknown;
        };
        if span.class & 1 == 1 {
            return PointerWords::None;
        }
        let (arena, start, limit, small, large_type) = (
            span.arena,
            span.start,
            span.limit,
            span.class >> 1 != 0,
            span.large_type,
        );
        let words = obj.size / 8;
        if words > MAX_OBJECT_WORDS {
            return PointerWords::Unknown;
        }
        let read = |addr: Option<u64>, len: u64| -> Option<Vec<u8>> {
            let mut b = vec![0u8; usize::try_from(len).ok()?];
            self.memory.read(addr?, &mut b).ok()?;
            Some(b)
        };
        let found = match bits {
            PointerBits::ArenaOneBit => {
                let first = obj.base / 8 % ARENA_WORDS;
                read(arena.checked_add(first / 8), (first % 8 + words).div_ceil(8))
                    .map(|b| bit_range(&b, first % 8, words))
            }
            PointerBits::ArenaTwoBits => {
                let first = obj.base / 8 % ARENA_WORDS;
                read(arena.checked_add(first / 4), (first % 4 + words).div_ceil(4))
                    .map(|b| two_bit_range(&b, first % 4, words))
            }
            PointerBits::InSpan { .. } if obj.size <= MAX_SIZE_BITS_IN_SPAN => {
                let len = (limit - start) / 64;
                let marks = if (inline_marks.0..=inline_marks.1).contains(&obj.size) {
                    INLINE_MARKS
                } else {
                    0
                };
                let first = (obj.base - start) / 8;
                let bits_at = (limit - len).checked_sub(marks).filter(|&at| at >= start);
                read(bits_at.map(|at| at + first / 8), (first % 8 + words).div_ceil(8))
                    .map(|b| bit_range(&b, first % 8, words))
            }
            PointerBits::InSpan { mask_on_demand, .. } => {
                let (typ, data) = if small {
                    (self.word(obj.base), obj.base + MALLOC_HEADER)
                } else {
                    (Some(large_type), obj.base)
                };
                match typ {
                    Some(0) if !small => return PointerWords::None,
                    Some(t) => self.type_bits(t, mask_on_demand, (data - obj.base) / 8, words),
                    None => None,
                }
            }
        };
        found.map_or(PointerWords::Unknown, PointerWords::Bits)
    }

    /// The type the runtime keeps for `obj` (1.22+), and where in the object its values start: a scan object
    /// larger than 512 bytes has it in its malloc header (values after it), or its span's `largeType` if it is a
    /// large object; None for the others.
    pub fn runtime_type(&mut self, obj: HeapObject) -> Option<(u64, u64)> {
        let PointerBits::InSpan { .. } = self.layout.pointer_bits else {
            return None;
        };
        let span = self.span_of(obj.base)?;
        if span.class & 1 == 1 || obj.size <= MAX_SIZE_BITS_IN_SPAN {
            return None;
        }
        let (small, large_type) = (span.class >> 1 != 0, span.large_type);
        let typ = if small { self.word(obj.base)? } else { large_type };
        (typ != 0).then_some((typ, if small { MALLOC_HEADER } else { 0 }))
    }

    /// An object's pointer bits from its type at `typ`, whose values repeat from word `first` to word `words`.
    fn type_bits(&self, typ: u64, mask_on_demand: bool, first: u64, words: u64) -> Option<Vec<u8>> {
        // A mask not built yet: nothing scanned an object of the type, the GC included.
        let GcMask { size, ptr_bytes, mask } = gotype::gc_mask(self.memory, typ, mask_on_demand)?;
        let (elem_words, ptr_words) = (size / 8, ptr_bytes.div_ceil(8));
        if elem_words == 0 || ptr_words > elem_words || ptr_words.div_ceil(8) > MAX_MASK_BYTES {
            return None;
        }
        let mut m = vec![0u8; ptr_words.div_ceil(8) as usize];
        self.memory.read(mask, &mut m).ok()?;
        let mut out = vec![0u8; words.div_ceil(8) as usize];
        for w in first..words {
            let i = (w - first) % elem_words;
            if i < ptr_words && bit(&m, i) {
                out[(w / 8) as usize] |= 1 << (w % 8);
            }
        }
        Some(out)
    }

    /// The span record at `ptr` if it is in use; a record that cannot be read or contradicts the runtime's
    /// layout is counted in `corrupt_spans`.
    fn read_span(&mut self, ptr: u64, arena: u64) -> Option<Span> {
        let mut b = [0u8; SPAN_READ];
        if self.memory.read(ptr, &mut b).is_err() {
            self.corrupt_spans += 1;
            return None;
        }
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
        let npages = uint(l.span.npages, 8)?;
        let span = Span {
            arena,
            class: uint(l.span_class, 1)? as u8,
            large_type: match l.pointer_bits {
                PointerBits::InSpan { large_type, .. } => uint(large_type, 8)?,
                _ => 0,
            },
            start,
            limit: npages
                .checked_mul(1 << PAGE_SHIFT)
                .and_then(|bytes| start.checked_add(bytes))
                .unwrap_or(0),
            elemsize: uint(l.span.elemsize, 8)?,
            nelems: uint(l.span.nelems, l.span.nelems_size)?,
            freeindex: uint(l.span_freeindex.0, l.span_freeindex.1)?,
            alloc_bits: uint(l.span_alloc_bits, 8)?,
            bits: None,
        };
        if !span.check() {
            self.corrupt_spans += 1;
            return None;
        }
        Some(span)
    }
}

impl Span {
    /// Whether the record is one the runtime could have written (`(*mheap).initSpan`): page-aligned pages, objects
    /// of at least a word that fit in them, one object in a large span (size class 0) and at most
    /// [`MAX_SMALL_ELEMS`] in another, `freeindex` within them. Everything the index computes from a span (object
    /// addresses, the size of its allocation bitmap, where its pointer bits are) relies on it.
    fn check(&self) -> bool {
        let bytes = self.limit.saturating_sub(self.start);
        let max_elems = if self.class >> 1 == 0 { 1 } else { MAX_SMALL_ELEMS };
        self.start.is_multiple_of(1 << PAGE_SHIFT)
            && bytes > 0
            && self.elemsize >= 8
            && self.nelems <= max_elems
            && self.nelems.checked_mul(self.elemsize).is_some_and(|b| b <= bytes)
            && self.freeindex <= self.nelems
    }
}

/// Bit `i` of a bitmap (byte i/8, bit i%8): the heap's, the stack maps' and the walk's bitmaps all read so.
pub(super) fn bit(bits: &[u8], i: u64) -> bool {
    bits.get((i / 8) as usize).is_some_and(|b| b >> (i % 8) & 1 == 1)
}

/// `words` bits of `bytes` from bit `skip`, as a bitmap from bit 0 (bits past `bytes` read as 0). A byte at a
/// time: a goroutine's stack map spans up to 2^27 words.
pub(super) fn bit_range(bytes: &[u8], skip: u64, words: u64) -> Vec<u8> {
    let mut out = vec![0u8; words.div_ceil(8) as usize];
    let (first, shift) = ((skip / 8) as usize, (skip % 8) as u32);
    let at = |i: usize| first.checked_add(i).and_then(|i| bytes.get(i)).copied().unwrap_or(0);
    for (i, o) in out.iter_mut().enumerate() {
        *o = match shift {
            0 => at(i),
            s => (at(i) >> s) | (at(i + 1) << (8 - s)),
        };
    }
    // The last byte holds only the bits asked for.
    if !words.is_multiple_of(8) {
        if let Some(last) = out.last_mut() {
            *last &= (1u8 << (words % 8)) - 1;
        }
    }
    out
}

/// The pointer words of the 1.19 bitmap's entries from `skip` (a byte for four words: pointer bits low, "more
/// pointers follow" bits high), up to the first word whose scan bit is clear, as `scanobject` reads them.
fn two_bit_range(bytes: &[u8], skip: u64, words: u64) -> Vec<u8> {
    let mut out = vec![0u8; words.div_ceil(8) as usize];
    for w in 0..words {
        let i = skip + w;
        let Some(b) = bytes.get((i / 4) as usize).map(|b| b >> (i % 4)) else {
            break;
        };
        if b & 0x10 == 0 {
            break;
        }
        if b & 1 == 1 {
            out[(w / 8) as usize] |= 1 << (w % 8);
        }
    }
    out
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::gobin::SpanLayout;
    use crate::memory::fake::FakeMemory;

    /// The arm64 layout of 1.22+ (arenaBaseOffset 0), with `bits` for the pointer bits.
    pub(in crate::heap) fn layout(bits: PointerBits, arena_spans: u64, inline_mark_sizes: (u64, u64)) -> HeapLayout {
        HeapLayout {
            arenas: 0x1000,
            arena_spans,
            span: SpanLayout {
                start_addr: 24,
                npages: 32,
                nelems: 50,
                nelems_size: 2,
                elemsize: 104,
                gcmark_bits: 72,
            },
            span_state: 99,
            span_alloc_bits: 64,
            span_freeindex: (48, 2),
            span_class: 98,
            pointer_bits: bits,
            inline_mark_sizes,
            arena_base_offset: 0,
        }
    }

    pub(in crate::heap) const HEAP: u64 = 0x4000_0000;
    const ARENA: u64 = 0x10_0000;
    const SPAN: u64 = 0x2000;
    pub(in crate::heap) const IN_SPAN: PointerBits = PointerBits::InSpan {
        large_type: 152,
        mask_on_demand: true,
    };

    /// One in-use span of `npages` at HEAP, every slot allocated, of `elemsize` and size class `class`.
    pub(in crate::heap) fn heap(l: &HeapLayout, npages: u64, elemsize: u64, class: u8) -> FakeMemory {
        let m = FakeMemory::default();
        m.word(0x1000, 0x8000); // the L2 arena map
        m.word(0x8000 + 8 * (HEAP >> ARENA_SHIFT), ARENA);
        for p in 0..npages {
            m.word(
                ARENA + l.arena_spans + 8 * ((HEAP >> PAGE_SHIFT) % PAGES_PER_ARENA + p),
                SPAN,
            );
        }
        let nelems = npages * 8192 / elemsize;
        m.word(SPAN + 24, HEAP);
        m.word(SPAN + 32, npages);
        m.put(SPAN + 48, &(nelems as u16).to_le_bytes());
        m.put(SPAN + 50, &(nelems as u16).to_le_bytes());
        m.put(SPAN + 98, &[class, 1]); // spanclass, then state mSpanInUse
        m.word(SPAN + 104, elemsize);
        m
    }

    fn words(l: &HeapLayout, m: &FakeMemory, base: u64) -> PointerWords {
        let mut index = HeapIndex::new(m, l, 0);
        let obj = index.object_containing(base + 8).expect("an allocated object");
        assert_eq!(obj.base, base);
        index.pointer_words(obj)
    }

    /// A type at 0x3000 of `size` bytes whose first `ptr_bytes` the mask at `mask` describes.
    fn type_at(m: &FakeMemory, size: u64, ptr_bytes: u64, tflag: u8, gcdata: u64) {
        m.word(0x3000, size);
        m.word(0x3008, ptr_bytes);
        m.put(0x3014, &[tflag]);
        m.word(0x3020, gcdata);
    }

    #[test]
    fn bit_ranges_read_a_byte_at_a_time_as_bit_by_bit() {
        let bytes: Vec<u8> = (0u32..40).map(|i| (i.wrapping_mul(0x9e37_79b9) >> 13) as u8).collect();
        for skip in [0, 1, 7, 8, 13, 300, 319, 330] {
            for words in [0, 1, 5, 8, 9, 64, 100] {
                let mut slow = vec![0u8; (words as usize).div_ceil(8)];
                for w in (0..words).filter(|&w| bit(&bytes, skip + w)) {
                    slow[(w / 8) as usize] |= 1 << (w % 8);
                }
                assert_eq!(bit_range(&bytes, skip, words), slow, "skip {skip}, {words} words");
            }
        }
    }

    #[test]
    fn small_objects_have_their_bits_at_the_end_of_the_span() {
        for (marks, bits_at) in [((0, 0), HEAP + 8192 - 128), ((16, 512), HEAP + 8192 - 128 - 128)] {
            let l = layout(IN_SPAN, 0, marks);
            let m = heap(&l, 1, 48, 5 << 1);
            // The third object (words 12..18 of the span): its first and third words are pointers.
            m.put(bits_at + 1, &[0b0101_0000]);
            assert_eq!(words(&l, &m, HEAP + 96), PointerWords::Bits(vec![0b101]), "{marks:?}");
            assert_eq!(words(&l, &m, HEAP + 48), PointerWords::Bits(vec![0]), "{marks:?}");
        }
    }

    #[test]
    fn noscan_spans_have_no_pointers() {
        let l = layout(IN_SPAN, 0, (0, 0));
        assert_eq!(words(&l, &heap(&l, 1, 48, 5 << 1 | 1), HEAP + 48), PointerWords::None);
    }

    #[test]
    fn larger_objects_repeat_the_type_in_their_malloc_header_after_it() {
        let l = layout(IN_SPAN, 0, (0, 0));
        let m = heap(&l, 1, 1024, 40 << 1);
        m.word(HEAP + 1024, 0x3000); // the second object's header
        type_at(&m, 16, 8, 0, 0x3100); // {*T; int}
        m.put(0x3100, &[1]);
        let PointerWords::Bits(bits) = words(&l, &m, HEAP + 1024) else {
            panic!()
        };
        // Word 0 is the header; the values start at word 1, one pointer every two words.
        assert_eq!((bits.len(), bits[0], bits[15]), (16, 0b1010_1010, 0b1010_1010));
        // The header also names the object's type, for a chain: values after the header.
        let mut index = HeapIndex::new(&m, &l, 0);
        assert_eq!(
            index.runtime_type(HeapObject {
                base: HEAP + 1024,
                size: 1024
            }),
            Some((0x3000, 8))
        );
        let small = heap(&l, 1, 48, 5 << 1);
        assert_eq!(
            HeapIndex::new(&small, &l, 0).runtime_type(HeapObject { base: HEAP, size: 48 }),
            None,
            "no header at 512 B or less"
        );
    }

    #[test]
    fn large_objects_have_their_type_in_the_span_and_its_mask_may_be_built_on_demand() {
        let l = layout(IN_SPAN, 0, (0, 0));
        let m = heap(&l, 2, 16384, 0);
        m.word(SPAN + 152, 0x3000);
        type_at(&m, 24, 24, 1 << 4, 0x3200); // {int; *T; *T}, its mask built on demand
        assert_eq!(words(&l, &m, HEAP), PointerWords::Unknown, "a mask not built yet");
        m.word(0x3200, 0x3300);
        m.put(0x3300, &[0b110]);
        let PointerWords::Bits(bits) = words(&l, &m, HEAP) else {
            panic!()
        };
        assert_eq!(
            (bits.len(), bits[0], bits[1], bits[2]),
            (256, 0b1011_0110, 0b0110_1101, 0b1101_1011)
        );
        assert_eq!(
            HeapIndex::new(&m, &l, 0).runtime_type(HeapObject {
                base: HEAP,
                size: 16384
            }),
            Some((0x3000, 0)),
            "no header"
        );
        // 1.22–1.23: the same flag bit means the mask is GCData itself.
        let l = layout(
            PointerBits::InSpan {
                large_type: 152,
                mask_on_demand: false,
            },
            0,
            (0, 0),
        );
        m.put(0x3200, &[0b10]);
        let PointerWords::Bits(bits) = words(&l, &m, HEAP) else {
            panic!()
        };
        assert_eq!(bits[0], 0b1001_0010);
        // No type yet (a large object being zeroed): nothing to scan, as for the GC.
        m.word(SPAN + 152, 0);
        assert_eq!(words(&l, &m, HEAP), PointerWords::None);
    }

    #[test]
    fn before_1_22_the_arena_has_the_bits() {
        // 1.20–1.21: a bit a word of the arena, the object at word 6 of the heap's first arena.
        let l = layout(PointerBits::ArenaOneBit, 1_064_960, (0, 0));
        let m = heap(&l, 1, 48, 5 << 1);
        m.put(ARENA, &[0b1100_0000, 0b0000_0010]);
        assert_eq!(words(&l, &m, HEAP + 48), PointerWords::Bits(vec![0b1011]));
        // 1.19: a byte for four words, pointer bits low, scan bits high; the first clear scan bit ends the object.
        let l = layout(PointerBits::ArenaTwoBits, 2_097_152, (0, 0));
        let m = heap(&l, 1, 48, 5 << 1);
        m.put(ARENA + 1, &[0b1111_0101]); // words 4–7: scan; 4 and 6 pointers
        m.put(ARENA + 2, &[0b0001_1110]); // word 8: scan, not a pointer; 9–11: pointer bits past the end
        assert_eq!(words(&l, &m, HEAP + 48), PointerWords::Bits(vec![0b1]));
    }

    #[test]
    fn span_records_the_runtime_could_not_have_written_hold_no_objects() {
        let l = layout(IN_SPAN, 0, (0, 0));
        let reached = |m: &FakeMemory| {
            let mut index = HeapIndex::new(m, &l, 0);
            let found = index.object_containing(HEAP + 8);
            (found, index.corrupt_spans())
        };
        let good = heap(&l, 1, 48, 5 << 1);
        assert_eq!(reached(&good), (Some(HeapObject { base: HEAP, size: 48 }), 0));
        type Lie<'a> = (&'a str, &'a dyn Fn(&FakeMemory));
        let lies: [Lie; 7] = [
            // 65535 objects of 8 bytes in one page (at most 1024 fit; the old reader sized a bitmap from it).
            ("nelems", &|m| {
                m.put(SPAN + 50, &u16::MAX.to_le_bytes());
                m.word(SPAN + 104, 8);
            }),
            ("nelems × elemsize past the span", &|m| m.word(SPAN + 104, 4096)),
            ("elemsize 0", &|m| m.word(SPAN + 104, 0)),
            ("npages wrapping the address space", &|m| m.word(SPAN + 32, 1 << 52)),
            ("npages 0", &|m| m.word(SPAN + 32, 0)),
            ("freeindex past nelems", &|m| m.put(SPAN + 48, &2000u16.to_le_bytes())),
            ("a misaligned start", &|m| m.word(SPAN + 24, HEAP + 8)),
        ];
        for (what, lie) in lies {
            let m = heap(&l, 1, 48, 5 << 1);
            lie(&m);
            assert_eq!(reached(&m), (None, 1), "{what}");
        }
        // An unreadable record.
        let m = heap(&l, 1, 48, 5 << 1);
        m.unmap(SPAN..SPAN + 1);
        assert_eq!(reached(&m), (None, 1), "unreadable");
        // Before 1.22, nelems is a word: 2^60 objects would have asked for a bitmap of 2^57 bytes.
        let mut wide = l.clone();
        wide.span.nelems = 112;
        wide.span.nelems_size = 8;
        let m = heap(&wide, 1, 48, 5 << 1);
        m.word(SPAN + 112, 1 << 60);
        let mut index = HeapIndex::new(&m, &wide, 0);
        assert_eq!((index.object_containing(HEAP + 8), index.corrupt_spans()), (None, 1));
    }

    #[test]
    fn a_huge_large_object_is_scanned_without_a_bitmap_of_its_size() {
        // One large object of 2^40 bytes (2^27 pages): its bitmap would be 16 GiB.
        let l = layout(PointerBits::ArenaOneBit, 0, (0, 0));
        let m = heap(&l, 1, 8192, 0);
        m.word(SPAN + 32, 1 << 27);
        m.word(SPAN + 104, 1 << 40);
        let mut index = HeapIndex::new(&m, &l, 0);
        let obj = index.object_containing(HEAP + 8).unwrap();
        assert_eq!(
            obj,
            HeapObject {
                base: HEAP,
                size: 1 << 40
            }
        );
        assert_eq!(index.pointer_words(obj), PointerWords::Unknown);
    }
}
