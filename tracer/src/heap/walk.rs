//! The walk itself: breadth-first from the roots, one kind of root at a time, scanning each object's
//! pointer words (typed, by the runtime's bitmaps, or conservatively) until every target is reached or a
//! limit is.

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::Instant;

use super::index::{bit, HeapIndex, HeapObject, PointerWords};
use super::roots::RootWords;
use super::typed::{self, EntryPart, Slots};
use super::*;
use crate::gobin::runtime_types::TypeNames;
use crate::gobin::{TypeId, KINDS_SIGNED, KINDS_UNSIGNED, KIND_STRING};
use crate::memory::Memory;

/// A string key's bytes shown at most.
const MAX_KEY_TEXT: u64 = 64;
/// Objects larger than this are scanned in pieces of this size, the pause budget checked between them: a piece
/// of pointers takes about a millisecond to follow (a map's bucket array of megabytes is one object).
const READ_CHUNK: u64 = 64 << 10;
/// Objects one walk records at most (about 130 bytes each, so half a GiB): what it keeps grows with the objects it
/// reaches, and the byte budget alone would let a heap of small objects pointing at one another (128 Mi words in a
/// GiB) cost tens of GiB. Past it the walk stops, cut short.
const MAX_REACHED: usize = 1 << 22;

/// Which words of an untyped value a walk follows (bit i: word i), and which of those are known to be pointers.
#[derive(Clone, Copy)]
struct Mask<'a> {
    follow: &'a [u8],
    known: &'a [u8],
}

/// How an object was reached: from a root, or from another object, at a byte offset.
#[derive(Clone, Copy)]
enum Parent {
    Root(usize),
    Object(u64),
}

/// How a walk reads an object: as values of a type, the first starting `phase` bytes into it (an interior
/// pointer, or a sub-slice, points past the object's base).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Typing {
    elem: TypeId,
    phase: u64,
}

/// The typed pointer word an object was reached through: its index in the parent's [`typed::ValueSlots`], the
/// element of the parent it is in, and for a slice's data pointer the slice's length and capacity (elements).
#[derive(Clone, Copy)]
struct SlotRef {
    index: usize,
    elem: u64,
    slice: Option<(u64, u64)>,
}

/// An object the walk reached: from where, at which offset of its parent, through which pointer word of the
/// parent's type if the parent was typed.
struct Reached {
    parent: Parent,
    offset: u64,
    /// The word at `offset` is known to be a pointer (see [`Hop::known`]).
    known: bool,
    /// Steps from the root: 1 for an object a root points to.
    depth: u32,
    size: u64,
    typing: Option<Typing>,
    slot: Option<SlotRef>,
}

/// The walk's state: each object reached and those to scan.
struct Walk<'m, 'g, 'h> {
    memory: &'m dyn Memory,
    heap: HeapIndex<'m>,
    slots: Slots<'g>,
    /// The type maptrace saw an untyped object (base, size) allocated with, if any, and where in the slot the
    /// value starts.
    hint: &'h mut dyn FnMut(u64, u64) -> Option<(TypeId, u64)>,
    reached: HashMap<u64, Reached>,
    queue: VecDeque<u64>,
    /// Targets not reached yet.
    remaining: HashSet<u64>,
    /// Names the types the runtime keeps for heap objects.
    type_names: TypeNames,
}

impl Walk<'_, '_, '_> {
    /// Records that the word at `offset` of `parent` points to `word`, if that is a heap object not reached yet.
    /// `to`: the pointee type the parent's type gives the word; `known`: the word is a pointer (else it only
    /// looks like one).
    fn reach(
        &mut self,
        parent: Parent,
        offset: u64,
        word: u64,
        slot: Option<SlotRef>,
        to: Option<TypeId>,
        known: bool,
    ) {
        let Some(obj) = self.heap.object_containing(word) else {
            return;
        };
        if self.reached.contains_key(&obj.base) || self.reached.len() >= MAX_REACHED {
            return;
        }
        let graph = self.slots.graph();
        let typing = to
            .map(|t| graph.resolve(t))
            .and_then(|elem| {
                Some(Typing {
                    elem,
                    phase: (word - obj.base) % graph.get(elem).map(|t| t.size).filter(|&s| s > 0)?,
                })
            })
            .or_else(|| {
                (self.hint)(obj.base, obj.size).map(|(elem, phase)| Typing {
                    elem: graph.resolve(elem),
                    phase,
                })
            });
        let depth = match parent {
            Parent::Root(_) => 1,
            Parent::Object(p) => self.reached.get(&p).map_or(1, |p| p.depth + 1),
        };
        self.reached.insert(
            obj.base,
            Reached {
                parent,
                offset,
                known,
                depth,
                size: obj.size,
                typing,
                slot,
            },
        );
        self.remaining.remove(&obj.base);
        self.queue.push_back(obj.base);
    }

    /// Follows the pointers of `bytes`, found at `offset` in `parent`: the typed pointer words, or (untyped) the
    /// words `mask` says, or without it every word that points into a heap object.
    fn scan(&mut self, parent: Parent, bytes: &[u8], offset: u64, typing: Option<Typing>, mask: Option<Mask>) {
        let word = |at: Option<u64>| -> Option<u64> {
            let i = usize::try_from(at?.checked_sub(offset)?).ok()?;
            Some(u64::from_le_bytes(bytes.get(i..i.checked_add(8)?)?.try_into().ok()?))
        };
        let Some((t, value)) = typing.and_then(|t| Some((t, self.slots.of(t.elem)?))) else {
            for (i, w) in bytes.chunks_exact(8).enumerate() {
                let at = offset + 8 * i as u64;
                if mask.is_some_and(|m| !bit(m.follow, at / 8)) {
                    continue;
                }
                let w = u64::from_le_bytes(w.try_into().unwrap_or_default());
                self.reach(parent, at, w, None, None, mask.is_some_and(|m| bit(m.known, at / 8)));
            }
            return;
        };
        let end = offset + bytes.len() as u64;
        // The elements overlapping these bytes (an element may straddle two reads of a large object). Every pointer
        // word lies within its element (see `Slots::of`), so the work is bounded by the bytes' words.
        let first = offset.saturating_sub(t.phase) / value.size;
        let mut start = t.phase.checked_add(first * value.size);
        let mut elem = first;
        while let Some(at_elem) = start.filter(|&s| s < end) {
            for (i, s) in value.slots.iter().enumerate() {
                let at = at_elem.checked_add(s.offset);
                let Some(w) = word(at) else { continue };
                let to = match s.small_map {
                    Some((dir_len, group)) if word(at_elem.checked_add(dir_len)) == Some(0) => Some(group),
                    _ => s.to,
                };
                let slice = if s.slice_data {
                    word(at.and_then(|a| a.checked_add(8))).zip(word(at.and_then(|a| a.checked_add(16))))
                } else {
                    None
                };
                let at = at_elem + s.offset; // read above, so within the bytes
                self.reach(parent, at, w, Some(SlotRef { index: i, elem, slice }), to, true);
            }
            start = at_elem.checked_add(value.size);
            elem += 1;
        }
    }

    /// Scans the queued objects, breadth first, until every target is reached, the heap is exhausted or the
    /// limits stop it.
    fn drain(
        &mut self,
        buf: &mut Vec<u8>,
        stats: &mut WalkStats,
        limits: &WalkLimits,
        pause: &mut Pause,
        started: Instant,
    ) {
        let memory = self.memory;
        while let Some(base) = self.queue.pop_front() {
            if self.remaining.is_empty() {
                return;
            }
            pause.check();
            let Some(r) = self.reached.get(&base) else { continue };
            let (size, typing) = (r.size, r.typing);
            if r.depth >= limits.max_depth {
                stats.depth_limited += 1;
                continue;
            }
            stats.objects_scanned += 1;
            // A typed object's pointer words come from its DWARF type, an untyped one's from the runtime's bitmaps.
            let pointers = match typing {
                Some(t) => {
                    stats.typed_objects += 1;
                    if self.slots.of(t.elem).is_some_and(|v| v.slots.is_empty()) {
                        continue; // no pointers to read
                    }
                    None
                }
                None => match self.heap.pointer_words(HeapObject { base, size }) {
                    PointerWords::None => continue,
                    PointerWords::Bits(bits) => {
                        stats.bitmap_objects += 1;
                        Some(bits)
                    }
                    PointerWords::Unknown => None,
                },
            };
            let mut offset = 0;
            while offset < size {
                if offset > 0 {
                    pause.check();
                }
                if self.over(limits, stats, started) {
                    stats.cut_short = true;
                    return;
                }
                let len = (size - offset).min(READ_CHUNK);
                buf.resize(len as usize, 0);
                if memory.read(base + offset, buf).is_err() {
                    stats.unreadable_objects += 1;
                    break;
                }
                stats.bytes_scanned += len;
                let mask = pointers.as_deref().map(|p| Mask { follow: p, known: p });
                self.scan(Parent::Object(base), buf, offset, typing, mask);
                offset += len;
            }
        }
    }

    /// Whether the walk has spent its budget (bytes, time) or recorded [`MAX_REACHED`] objects.
    fn over(&self, limits: &WalkLimits, stats: &WalkStats, started: Instant) -> bool {
        stats.bytes_scanned >= limits.max_bytes
            || started.elapsed() >= limits.max_time
            || self.reached.len() >= MAX_REACHED
    }

    /// The Go path of the pointer followed into `r` within its parent (typed as `parent`): `.Buf`, `[3].elem`;
    /// the element index only when the parent holds more than one value.
    fn path(&mut self, slot: Option<SlotRef>, parent: Option<Typing>, parent_size: u64) -> Option<String> {
        let slot = slot?;
        let t = parent?;
        let value = self.slots.of(t.elem)?;
        let s = value.slots.get(slot.index)?;
        let many = parent_size.saturating_sub(t.phase) >= 2 * value.size;
        Some(if many {
            format!("[{}]{}", slot.elem, s.path)
        } else {
            s.path.clone()
        })
    }

    /// The number of entries of a typed map header (`used` of a Swiss `map<K,V>`, `count` of a `hash<K,V>`).
    fn map_len(&self, base: u64, typing: Option<Typing>) -> Option<u64> {
        let t = typing?;
        let graph = self.slots.graph();
        let name = &graph.get(t.elem)?.name;
        if !(name.starts_with("map<") || name.starts_with("hash<")) {
            return None;
        }
        let field = graph.field(t.elem, "used").or_else(|| graph.field(t.elem, "count"))?;
        self.memory.word(base.checked_add(t.phase)?.checked_add(field.offset)?)
    }

    /// The key of the map entry that holds the pointer word `slot` of the typed object at `base`, if any (see
    /// [`typed::map_key`]), and which part of the entry holds the word.
    fn map_key(&mut self, base: u64, t: Typing, slot: SlotRef) -> Option<(String, EntryPart)> {
        let value = self.slots.of(t.elem)?;
        let graph = self.slots.graph();
        let (offset, ty, part) = typed::map_key(graph, t.elem, &value.slots.get(slot.index)?.path)?;
        let at = base
            .checked_add(t.phase)?
            .checked_add(slot.elem.checked_mul(value.size)?)?
            .checked_add(offset)?;
        let key = graph.get(graph.resolve(ty))?;
        let mut b = [0u8; 16];
        let n = usize::try_from(key.size).ok().filter(|&n| n <= b.len())?;
        self.memory.read(at, &mut b[..n]).ok()?;
        let word = u64::from_le_bytes(b[..8].try_into().unwrap_or_default());
        let text = match key.kind {
            // int, int8 … int64: sign-extended from the key's size.
            k if KINDS_SIGNED.contains(&k) && n <= 8 => ((word << (64 - 8 * n)) as i64 >> (64 - 8 * n)).to_string(),
            k if KINDS_UNSIGNED.contains(&k) && n <= 8 => word.to_string(),
            KIND_STRING => {
                let len = u64::from_le_bytes(b[8..16].try_into().unwrap_or_default());
                let mut text = vec![0u8; len.min(MAX_KEY_TEXT) as usize];
                self.memory.read(word, &mut text).ok()?;
                let more = if len > MAX_KEY_TEXT { "…" } else { "" };
                format!("{:?}{more}", String::from_utf8_lossy(&text))
            }
            _ => return None,
        };
        Some((text, part))
    }

    /// The name of the type the runtime keeps for an object (see [`HeapIndex::runtime_type`]), `[N]T` when it holds
    /// N values of T past its malloc header.
    fn runtime_type_name(&mut self, obj: HeapObject) -> Option<String> {
        let (typ, start) = self.heap.runtime_type(obj)?;
        let t = self.type_names.resolve(self.memory, typ)?;
        let n = obj.size.saturating_sub(start) / t.size.max(1);
        Some(if n >= 2 {
            format!("[{n}]{}", t.name)
        } else {
            t.name.clone()
        })
    }

    /// The type name of a typed object: its type, or `[N]T` when it holds N values of T (without the `noalg.`
    /// the linker gives the map internals it synthesizes: the runtime does not write it).
    fn typed_name(&self, typing: Option<Typing>, size: u64) -> Option<String> {
        let t = self.slots.graph().get(typing?.elem)?;
        let name = t.name.strip_prefix("noalg.").unwrap_or(&t.name);
        let n = size.saturating_sub(typing?.phase) / t.size.max(1);
        Some(if n >= 2 {
            format!("[{n}]{name}")
        } else {
            name.to_string()
        })
    }

    /// The hops from a root to `base`, and the root's index. `roots` types the first hop's parent.
    fn chain_to(&mut self, base: u64, roots: &[RootRegion]) -> Option<(usize, Vec<Hop>)> {
        let mut hops = Vec::new();
        let mut at = base;
        loop {
            let r = self.reached.get(&at)?;
            let (parent_typing, parent_size) = match r.parent {
                Parent::Root(i) => (
                    roots[i].type_id.map(|t| Typing {
                        elem: self.slots.graph().resolve(t),
                        phase: 0,
                    }),
                    roots[i].len,
                ),
                Parent::Object(p) => self.reached.get(&p).map_or((None, 0), |p| (p.typing, p.size)),
            };
            let (parent, offset, size, typing, slot, known) = (r.parent, r.offset, r.size, r.typing, r.slot, r.known);
            let via = match (parent, slot) {
                // An untyped root's slots are its named words.
                (Parent::Root(i), Some(s)) if roots[i].type_id.is_none() => {
                    roots[i].named.get(s.index).map(|w| w.name.clone())
                }
                _ => self.path(slot, parent_typing, parent_size),
            };
            let type_name = self
                .typed_name(typing, size)
                .or_else(|| self.runtime_type_name(HeapObject { base: at, size }));
            let elem_size = typing
                .and_then(|t| self.slots.graph().get(t.elem))
                .map_or(1, |t| t.size);
            let slice = slot.and_then(|s| s.slice).map(|(len, cap)| SliceView {
                len_bytes: len.saturating_mul(elem_size),
                cap_bytes: cap.saturating_mul(elem_size),
            });
            let map_len = self.map_len(at, typing);
            let key = match (parent, slot, parent_typing) {
                (Parent::Object(p), Some(s), Some(t)) => self.map_key(p, t, s),
                _ => None,
            };
            hops.push(Hop {
                offset,
                size,
                base: at,
                via,
                type_name,
                slice,
                map_len,
                known,
                key,
            });
            match parent {
                Parent::Root(i) => {
                    hops.reverse();
                    return Some((i, hops));
                }
                Parent::Object(p) => at = p,
            }
        }
    }
}

/// Reads of root regions, through a window of the target's memory: a stripped binary's roots are thousands of
/// single words of data and bss, one read each otherwise.
#[derive(Default)]
struct RootWindow {
    start: u64,
    bytes: Vec<u8>,
}

/// The window's size; larger roots are read on their own.
const ROOT_WINDOW: u64 = 64 << 10;
/// Bytes of a root region read at once: larger regions (a stack or a variable whose size the target or its DWARF
/// states) are scanned in pieces of this size, so that what is allocated for them stays bounded.
const ROOT_CHUNK: u64 = 16 << 20;

impl RootWindow {
    fn read(&mut self, memory: &dyn Memory, addr: u64, len: u64) -> Option<Vec<u8>> {
        let cached = |w: &Self| {
            let at = usize::try_from(addr.checked_sub(w.start)?).ok()?;
            w.bytes
                .get(at..at.checked_add(usize::try_from(len).ok()?)?)
                .map(<[u8]>::to_vec)
        };
        if let Some(b) = cached(self) {
            return Some(b);
        }
        if len <= ROOT_WINDOW / 2 {
            // The window may run past the mapping's end: shrink it until it reads.
            let mut size = ROOT_WINDOW;
            while size >= len.max(8) {
                self.bytes.resize(size as usize, 0);
                if memory.read(addr, &mut self.bytes).is_ok() {
                    self.start = addr;
                    return cached(self);
                }
                size /= 2;
            }
        }
        let mut b = vec![0u8; len as usize];
        memory.read(addr, &mut b).ok()?;
        Some(b)
    }
}

/// Finds a chain from the roots to each of `targets` (heap object addresses; an address inside an object counts
/// for the object): the shortest from the first kind of root in `roots` that reaches it. The model's types type
/// the roots' values and the objects they point to, and `hint` the objects reached untyped (from the type
/// maptrace saw them allocated with). `pause` resumes the target, if stopped, once its budget is spent.
pub fn find_chains(
    heap: HeapAccess,
    roots: &[RootRegion],
    targets: &HashSet<u64>,
    mut hint: impl FnMut(u64, u64) -> Option<(TypeId, u64)>,
    limits: WalkLimits,
    pause: &mut Pause,
) -> (HashMap<u64, Chain>, WalkStats) {
    let started = Instant::now();
    let HeapAccess {
        memory,
        model,
        load_bias,
    } = heap;
    let mut heap = HeapIndex::new(memory, &model.layout, load_bias);
    let bases: HashMap<u64, u64> = targets
        .iter()
        .filter_map(|&t| Some((t, heap.object_containing(t)?.base)))
        .collect();
    let mut walk = Walk {
        memory,
        heap,
        slots: Slots::new(&model.types),
        hint: &mut hint,
        reached: HashMap::new(),
        queue: VecDeque::new(),
        remaining: bases.values().copied().collect(),
        type_names: TypeNames::new(model.types_base.map(|b| b.wrapping_add(load_bias))),
    };
    let mut stats = WalkStats {
        roots_searched: roots.len(),
        ..WalkStats::default()
    };
    let mut buf = Vec::new();
    // Roots of one kind at a time, each kind's reach walked out before the next kind starts: an object a global
    // reaches is reported held by the global, however short a path from some stack slot (conservatively scanned
    // stacks keep stale pointers, as a parked GC worker does).
    let mut from = 0;
    while from < roots.len() && !walk.remaining.is_empty() && !stats.cut_short {
        let kind = roots[from].root.kind;
        let to = roots[from..]
            .iter()
            .position(|r| r.root.kind != kind)
            .map_or(roots.len(), |n| from + n);
        let mut window = RootWindow::default();
        for (i, r) in roots.iter().enumerate().take(to).skip(from) {
            pause.check();
            if !walk.scan_root(i, r, &mut window, &mut stats, (&limits, started)) {
                stats.cut_short = true;
                break;
            }
        }
        walk.drain(&mut buf, &mut stats, &limits, pause, started);
        from = to;
    }
    let chains = bases
        .into_iter()
        .filter_map(|(target, base)| {
            let (i, hops) = walk.chain_to(base, roots)?;
            let precise = hops.iter().all(|h| h.known);
            Some((
                target,
                Chain {
                    root: roots[i].root.clone(),
                    hops,
                    precise,
                },
            ))
        })
        .collect();
    stats.unreadable_spans = walk.heap.corrupt_spans();
    stats.seconds = started.elapsed().as_secs_f64();
    (chains, stats)
}

/// Which words of a root region a walk follows and which are known pointers, owned or borrowed from the region.
enum RootMask<'r> {
    /// Every word that looks like a pointer.
    Conservative,
    /// One bitmap for both: a heap object's (a closure's) from the runtime's bitmaps, or every word of a word
    /// the GC's data/bss bitmaps mark.
    Owned(Vec<u8>),
    /// A stack frame's, from its stack maps.
    Borrowed { follow: &'r [u8], known: &'r [u8] },
}

impl RootMask<'_> {
    fn as_mask(&self) -> Option<Mask<'_>> {
        match self {
            RootMask::Conservative => None,
            RootMask::Owned(bits) => Some(Mask {
                follow: bits,
                known: bits,
            }),
            RootMask::Borrowed { follow, known } => Some(Mask { follow, known }),
        }
    }
}

impl Walk<'_, '_, '_> {
    /// The bytes of root region `r` to scan, and how.
    fn root_extent<'r>(&mut self, r: &'r RootRegion) -> (u64, RootMask<'r>) {
        match (r.len, &r.words) {
            (0, _) => match self.heap.object_containing(r.addr) {
                Some(o) if o.base == r.addr => match self.heap.pointer_words(o) {
                    PointerWords::None => (0, RootMask::Conservative),
                    PointerWords::Bits(bits) => (o.size, RootMask::Owned(bits)),
                    PointerWords::Unknown => (o.size, RootMask::Conservative),
                },
                Some(o) => (o.base + o.size - r.addr, RootMask::Conservative),
                None => (0, RootMask::Conservative),
            },
            (len, RootWords::Pointers) => (len, RootMask::Owned(vec![0xff; len.div_ceil(64) as usize])),
            (len, RootWords::Map { follow, known }) => (len, RootMask::Borrowed { follow, known }),
            (len, RootWords::Conservative) => (len, RootMask::Conservative),
        }
    }

    /// Reaches what root region `i` points to: the words its variables hold first, so that they name what they
    /// reach, then the rest, [`ROOT_CHUNK`] bytes at a time. False when the walk's `limits` (and its start) stop it
    /// first; a region that cannot be read (all or part of it) is counted in `stats.unreadable_roots`.
    fn scan_root(
        &mut self,
        i: usize,
        r: &RootRegion,
        window: &mut RootWindow,
        stats: &mut WalkStats,
        (limits, started): (&WalkLimits, Instant),
    ) -> bool {
        let (len, owned) = self.root_extent(r);
        let mask = owned.as_mask();
        if r.addr.checked_add(len).is_none() {
            stats.unreadable_roots += 1;
            return true;
        }
        // DWARF says where a variable lives, not whether it is live there (a register argument's spill slot may
        // never have been written): the stack maps say, where the binary has them.
        for (k, w) in r.named.iter().enumerate() {
            let Some(at) = w
                .addr
                .checked_sub(r.addr)
                .filter(|&a| a.checked_add(8).is_some_and(|end| end <= len))
            else {
                continue;
            };
            if mask.is_some_and(|m| !bit(m.follow, at / 8)) {
                continue;
            }
            let Some(bytes) = window.read(self.memory, w.addr, 8) else {
                continue;
            };
            let word = u64::from_le_bytes(bytes.try_into().unwrap_or_default());
            let known = mask.is_some_and(|m| bit(m.known, at / 8));
            let slot = SlotRef {
                index: k,
                elem: 0,
                slice: None,
            };
            self.reach(Parent::Root(i), at, word, Some(slot), w.to, known);
        }
        let typing = r.type_id.map(|t| Typing {
            elem: self.slots.types().resolve(t),
            phase: 0,
        });
        let mut offset = 0;
        while offset < len {
            if self.over(limits, stats, started) {
                return false;
            }
            let n = (len - offset).min(ROOT_CHUNK);
            let Some(bytes) = window.read(self.memory, r.addr + offset, n) else {
                stats.unreadable_roots += 1;
                return true;
            };
            stats.bytes_scanned += n;
            self.scan(Parent::Root(i), &bytes, offset, typing, mask);
            offset += n;
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::gobin::{Field, GoTypeDef, Shape, TypeGraph, KIND_SLICE};
    use crate::heap::index::tests::{heap, HEAP};
    use crate::heap::roots::tests::model;
    use crate::memory::fake::FakeMemory;

    /// `main.Node{next *Node; data []uint8; _ [2]int}`, 48 bytes: a slot of the test heap's size class.
    fn types() -> TypeGraph {
        let def = |name: &str, size, kind, shape| GoTypeDef {
            name: String::from(name),
            size,
            kind,
            shape,
        };
        let field = |name: &str, offset, ty| Field {
            name: name.into(),
            offset,
            ty,
        };
        TypeGraph::new(vec![
            /* 0 */ def("uint8", 1, 8, Shape::Plain),
            /* 1 */ def("*uint8", 8, 22, Shape::Pointer { to: Some(0) }),
            /* 2 */ def("int", 8, 2, Shape::Plain),
            /* 3 */
            def(
                "[]uint8",
                24,
                KIND_SLICE,
                Shape::Struct {
                    fields: vec![field("array", 0, 1), field("len", 8, 2), field("cap", 16, 2)],
                },
            ),
            /* 4 */
            def(
                "main.Node",
                48,
                25,
                Shape::Struct {
                    fields: vec![field("next", 0, 5), field("data", 8, 3)],
                },
            ),
            /* 5 */ def("*main.Node", 8, 22, Shape::Pointer { to: Some(4) }),
        ])
    }

    /// A global `*main.Node` at `at`.
    fn root(at: u64) -> RootRegion {
        RootRegion {
            root: Root {
                kind: "global",
                name: "main.head".into(),
                type_name: Some("*main.Node".into()),
                goroutine: None,
                blocked_ms: None,
            },
            addr: at,
            len: 8,
            type_id: Some(5),
            named: Vec::new(),
            words: RootWords::Conservative,
        }
    }

    fn walk(m: &FakeMemory, roots: &[RootRegion], targets: &[u64]) -> (HashMap<u64, Chain>, WalkStats) {
        let mut model = model(0);
        model.types = types();
        let access = HeapAccess {
            memory: m,
            model: &model,
            load_bias: 0,
        };
        let targets = targets.iter().copied().collect();
        let limits = WalkLimits::with_depth(16);
        find_chains(
            access,
            roots,
            &targets,
            |_, _| None,
            limits,
            &mut Pause::new(0, Duration::ZERO),
        )
    }

    #[test]
    fn a_cyclic_chain_with_a_huge_slice_is_walked_once() {
        let (a, b, c, d) = (HEAP, HEAP + 48, HEAP + 96, HEAP + 144);
        let m = heap(&model(0).layout, 1, 48, 5 << 1);
        m.word(0x7000, a); // main.head = a
        m.word(a, b); // a.next = b, b.next = a
        m.word(b, a);
        // a.data: c, with a length and capacity no slice has.
        m.word(a + 8, c);
        m.word(a + 16, u64::MAX);
        m.word(a + 24, u64::MAX);
        let (chains, stats) = walk(&m, &[root(0x7000)], &[c, d]);
        let hops = &chains[&c].hops;
        assert_eq!(
            hops.iter()
                .map(|h| (h.base, h.via.as_deref(), h.type_name.as_deref()))
                .collect::<Vec<_>>(),
            [(a, Some(""), Some("main.Node")), (c, Some(".data"), Some("[48]uint8"))]
        );
        assert_eq!(
            hops[1].slice,
            Some(SliceView {
                len_bytes: u64::MAX,
                cap_bytes: u64::MAX
            })
        );
        assert!(!chains.contains_key(&d), "not reachable");
        // a, b and c, each once however often the cycle leads back.
        assert_eq!((stats.objects_scanned, stats.cut_short), (3, false));
        assert_eq!(
            (stats.unreadable_objects, stats.unreadable_spans, stats.unreadable_roots),
            (0, 0, 0)
        );
    }

    #[test]
    fn unreadable_objects_and_roots_are_counted() {
        let (a, b) = (HEAP, HEAP + 48);
        let m = heap(&model(0).layout, 1, 48, 5 << 1);
        m.word(0x7000, a);
        m.word(a, b);
        m.unmap(b..b + 48);
        m.unmap(0x9000..0x9008);
        let (chains, stats) = walk(&m, &[root(0x9000), root(0x7000)], &[b, HEAP + 96]);
        assert_eq!(chains[&b].hops.len(), 2, "reached, though unreadable");
        assert_eq!((stats.unreadable_objects, stats.unreadable_roots), (1, 1));
    }
}
