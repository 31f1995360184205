//! Reference chains: who holds a retained object. A breadth-first walk of the target's heap from its GC roots, read
//! from `/proc/PID/mem`, the target stopped for at most a pause budget (past it, the rest of the walk reads the
//! running program, and a chain can be stale where the program moved a pointer meanwhile: the report says so).
//!
//! Roots: package-level variables (DWARF names and types, else the data and bss words the GC's bitmaps mark),
//! the goroutines' stacks frame by frame (by frame pointer; variables named by DWARF), and the closures of
//! finalizers and cleanups not run. An object's pointer words come from its DWARF type where the walk knows it,
//! else from the runtime's own record of them (the heap bitmap, or the type in a malloc header), and a frame's
//! from the GC's stack maps, as the GC scans them; what has no such record (a frame without maps) is scanned
//! conservatively (every aligned word that points into an allocated slot), so a chain may pass through a word
//! that only looks like a pointer, and says so. Breadth-first order makes each chain a shortest one from the first
//! kind of root that reaches the object (globals before stacks).

pub mod goroutines;
mod index;
mod pause;
mod roots;
pub mod search;
mod typed;

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::gobin::runtime_types::TypeNames;
use crate::gobin::{HeapModel, TypeGraph, TypeId, KINDS_SIGNED, KINDS_UNSIGNED, KIND_STRING};
use crate::memory::Memory;
use index::{bit, HeapIndex, HeapObject, PointerWords};
pub use pause::Pause;
pub use roots::{
    closure_roots, data_roots, global_roots, goroutine_roots, Goroutine, NamedWord, RootRegion, RootWords,
};
pub use typed::EntryPart;
use typed::Slots;

/// How far one walk may go. Past `max_bytes` or `max_time` the walk stops and says it was cut short; objects
/// `max_depth` steps from a root are not scanned (counted in [`WalkStats::depth_limited`]).
#[derive(Clone, Copy, Debug)]
pub struct WalkLimits {
    pub max_bytes: u64,
    pub max_time: Duration,
    pub max_depth: u32,
}

impl WalkLimits {
    /// The default bounds on bytes and time, with `max_depth`.
    pub fn with_depth(max_depth: u32) -> Self {
        WalkLimits {
            max_bytes: 1 << 30,
            max_time: Duration::from_secs(10),
            max_depth,
        }
    }
}

/// A string key's bytes shown at most.
const MAX_KEY_TEXT: u64 = 64;
/// Objects larger than this are scanned in pieces of this size, the pause budget checked between them: a piece
/// of pointers takes about a millisecond to follow (a map's bucket array of megabytes is one object).
const READ_CHUNK: u64 = 64 << 10;

/// Where a chain starts.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct Root {
    /// "global": a package-level variable; "goroutine": a frame of a goroutine's stack; "finalizer",
    /// "cleanup": a finalizer's or cleanup's closure (the runtime keeps it, with what it captured, until it runs).
    pub kind: &'static str,
    /// The variable (`main.cache`) or the frame's function (`main.worker.func1`; empty when the frame pointers
    /// could not be followed).
    pub name: String,
    #[serde(rename = "type")]
    pub type_name: Option<String>,
    /// For a stack: which goroutine, and what it is doing (`chan receive`, `running`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub goroutine: Option<(u64, String)>,
    /// For a waiting goroutine: blocked at least this long, in milliseconds (since the start of the first GC
    /// cycle that saw it waiting: the runtime's `g.waitsince`, what `goroutine 5 [chan receive, 3 minutes]`
    /// in a Go traceback counts from).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub blocked_ms: Option<u64>,
}

impl Root {
    /// As reports print it: `main.cache ([]T)`, `goroutine 18 (chan receive) main.worker.func1`, `finalizer
    /// main.open.func1`.
    pub fn describe(&self) -> String {
        let mut s = match (&self.goroutine, self.kind) {
            (Some((goid, state)), _) => match self.blocked_ms {
                Some(ms) => format!("goroutine {goid} ({state}, ≥ {:.1} s) {}", ms as f64 / 1e3, self.name),
                None => format!("goroutine {goid} ({state}) {}", self.name),
            },
            (None, kind @ ("finalizer" | "cleanup")) => format!("{kind} {}", self.name),
            (None, _) => self.name.clone(),
        };
        if let Some(t) = &self.type_name {
            s += &format!(" ({t})");
        }
        s
    }
}

/// One hop: the word at `offset` of the previous object (or root) points into this heap object.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Hop {
    pub offset: u64,
    /// The object's size class slot, in bytes.
    pub size: u64,
    pub base: u64,
    /// The Go path of the pointer in the previous value (`.Buf`, `[3].slots[5].elem`; empty when the value is the
    /// pointer), when that value's type was known; None: a word that points into the heap, followed conservatively.
    pub via: Option<String>,
    /// The object's type as the walk read it (`main.Session`, `[8]map.group[int]*main.Session`).
    pub type_name: Option<String>,
    /// Reached through a slice: how much of the object the slice covers.
    pub slice: Option<SliceView>,
    /// A map header: its entries.
    pub map_len: Option<u64>,
    /// The word followed is a pointer by the previous value's type or the runtime's bitmaps; else it merely
    /// looked like one (a conservatively scanned frame or object).
    pub known: bool,
    /// The word is in a map entry (of a typed group or bucket): the entry's key as Go prints it, and whether the
    /// word is in the key or the value.
    pub key: Option<(String, EntryPart)>,
}

/// The part of an array a slice covers: `len × element size` and `cap × element size`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct SliceView {
    pub len_bytes: u64,
    pub cap_bytes: u64,
}

/// A root and the hops from it to a target object (the last hop's object).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chain {
    pub root: Root,
    pub hops: Vec<Hop>,
    /// Every step followed a word known to be a pointer (by DWARF, or the runtime's bitmaps).
    pub precise: bool,
}

/// What one walk found and what it cost.
#[derive(Clone, Debug, Default, Serialize)]
pub struct WalkStats {
    /// Root regions: variables, and goroutine stack frames.
    pub roots_searched: usize,
    pub objects_scanned: u64,
    pub bytes_scanned: u64,
    /// Objects read as values of a known type (only their pointer words followed, each named by its Go path).
    pub typed_objects: u64,
    /// Objects of no known type whose pointer words the runtime's heap bitmaps (or malloc header types) gave;
    /// the rest of the objects scanned were read conservatively, word by word, or had no pointers.
    pub bitmap_objects: u64,
    pub seconds: f64,
    /// The limits stopped the walk before every target was found or the heap was exhausted.
    pub cut_short: bool,
    /// Objects reached at the depth limit, and so not scanned: what they point to was not searched.
    pub depth_limited: u64,
}

impl WalkStats {
    /// Adds another walk's (of the same search).
    pub fn add(&mut self, other: &WalkStats) {
        self.roots_searched += other.roots_searched;
        self.objects_scanned += other.objects_scanned;
        self.bytes_scanned += other.bytes_scanned;
        self.typed_objects += other.typed_objects;
        self.bitmap_objects += other.bitmap_objects;
        self.seconds += other.seconds;
        self.cut_short |= other.cut_short;
        self.depth_limited += other.depth_limited;
    }
}

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
        if self.reached.contains_key(&obj.base) {
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
        let word = |at: u64| -> Option<u64> {
            let i = usize::try_from(at.checked_sub(offset)?).ok()?;
            Some(u64::from_le_bytes(bytes.get(i..i + 8)?.try_into().ok()?))
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
        // The elements overlapping these bytes (an element may straddle two reads of a large object).
        let first = offset.saturating_sub(t.phase) / value.size;
        let mut start = t.phase + first * value.size;
        let mut elem = first;
        while start < end {
            for (i, s) in value.slots.iter().enumerate() {
                let Some(w) = word(start + s.offset) else { continue };
                let to = match s.small_map {
                    Some((dir_len, group)) if word(start + dir_len) == Some(0) => Some(group),
                    _ => s.to,
                };
                let at = start + s.offset;
                let slice = if s.slice_data {
                    word(at + 8).zip(word(at + 16))
                } else {
                    None
                };
                self.reach(parent, at, w, Some(SlotRef { index: i, elem, slice }), to, true);
            }
            start += value.size;
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
                if stats.bytes_scanned >= limits.max_bytes || started.elapsed() >= limits.max_time {
                    stats.cut_short = true;
                    return;
                }
                let len = (size - offset).min(READ_CHUNK);
                buf.resize(len as usize, 0);
                if memory.read(base + offset, buf).is_err() {
                    break;
                }
                stats.bytes_scanned += len;
                let mask = pointers.as_deref().map(|p| Mask { follow: p, known: p });
                self.scan(Parent::Object(base), buf, offset, typing, mask);
                offset += len;
            }
        }
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
        let mut b = [0u8; 8];
        self.memory.read(base + t.phase + field.offset, &mut b).ok()?;
        Some(u64::from_le_bytes(b))
    }

    /// The key of the map entry that holds the pointer word `slot` of the typed object at `base`, if any (see
    /// [`typed::map_key`]), and which part of the entry holds the word.
    fn map_key(&mut self, base: u64, t: Typing, slot: SlotRef) -> Option<(String, EntryPart)> {
        let value = self.slots.of(t.elem)?;
        let graph = self.slots.graph();
        let (offset, ty, part) = typed::map_key(graph, t.elem, &value.slots.get(slot.index)?.path)?;
        let at = base + t.phase + slot.elem * value.size + offset;
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

impl RootWindow {
    fn read(&mut self, memory: &dyn Memory, addr: u64, len: u64) -> Option<Vec<u8>> {
        let cached = |w: &Self| {
            let at = usize::try_from(addr.checked_sub(w.start)?).ok()?;
            w.bytes.get(at..at + usize::try_from(len).ok()?).map(<[u8]>::to_vec)
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

/// The target's heap as a walk reads it: its memory, and the binary's heap model (whose addresses are link-time:
/// `load_bias` turns them into the process's).
#[derive(Clone, Copy)]
pub struct HeapAccess<'a> {
    pub memory: &'a dyn Memory,
    pub model: &'a HeapModel,
    pub load_bias: u64,
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
    let types = &model.types;
    let mut heap = HeapIndex::new(memory, &model.layout, load_bias);
    let bases: HashMap<u64, u64> = targets
        .iter()
        .filter_map(|&t| Some((t, heap.object_containing(t)?.base)))
        .collect();
    let mut walk = Walk {
        memory,
        heap,
        slots: Slots::new(types),
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
            // A region's words to follow and known pointers: a heap object's (a closure's) from the runtime's
            // bitmaps, like any object's; a stack frame's from its stack maps; every one of a word the GC's
            // data/bss bitmaps mark.
            let owned: Vec<u8>;
            let (len, mask) = match (r.len, &r.words) {
                (0, _) => match walk.heap.object_containing(r.addr) {
                    Some(o) if o.base == r.addr => match walk.heap.pointer_words(o) {
                        PointerWords::None => (0, None),
                        PointerWords::Bits(bits) => {
                            owned = bits;
                            (
                                o.size,
                                Some(Mask {
                                    follow: &owned,
                                    known: &owned,
                                }),
                            )
                        }
                        PointerWords::Unknown => (o.size, None),
                    },
                    Some(o) => (o.base + o.size - r.addr, None),
                    None => (0, None),
                },
                (len, RootWords::Pointers) => {
                    owned = vec![0xff; len.div_ceil(64) as usize];
                    (
                        len,
                        Some(Mask {
                            follow: &owned,
                            known: &owned,
                        }),
                    )
                }
                (len, RootWords::Map { follow, known }) => (len, Some(Mask { follow, known })),
                (len, RootWords::Conservative) => (len, None),
            };
            if let Some(bytes) = window.read(memory, r.addr, len) {
                stats.bytes_scanned += len;
                // The words variables hold first, so that they name what they reach; then the rest. DWARF says
                // where a variable lives, not whether it is live there (a register argument's spill slot may never
                // have been written): the stack maps say, where the binary has them.
                for (k, w) in r.named.iter().enumerate() {
                    let Some(at) = w.addr.checked_sub(r.addr).filter(|&a| a + 8 <= len) else {
                        continue;
                    };
                    if mask.is_some_and(|m| !bit(m.follow, at / 8)) {
                        continue;
                    }
                    let word = u64::from_le_bytes(bytes[at as usize..at as usize + 8].try_into().unwrap_or_default());
                    let known = mask.is_some_and(|m| bit(m.known, at / 8));
                    walk.reach(
                        Parent::Root(i),
                        at,
                        word,
                        Some(SlotRef {
                            index: k,
                            elem: 0,
                            slice: None,
                        }),
                        w.to,
                        known,
                    );
                }
                let typing = r.type_id.map(|t| Typing {
                    elem: types.resolve(t),
                    phase: 0,
                });
                walk.scan(Parent::Root(i), &bytes, 0, typing, mask);
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
    stats.seconds = started.elapsed().as_secs_f64();
    (chains, stats)
}

/// The DWARF type of an object maptrace saw allocated as `recorded` (a report's type name): a slice's backing
/// array holds its elements; the runtime names a Swiss map's groups without the `noalg.` DWARF gives them.
pub fn type_named(types: &TypeGraph, recorded: &str) -> Option<TypeId> {
    let name = recorded.strip_prefix("[]").unwrap_or(recorded);
    types.by_name(name).or_else(|| types.by_name(&format!("noalg.{name}")))
}

/// One hop of a [`HeldBy`], for reports.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct HopRow {
    /// Byte offset, in the previous object (or the root variable), of the pointer followed; `offset_varies`:
    /// other objects of the site take the same path at other offsets (elements of one array or map).
    pub offset: u64,
    pub offset_varies: bool,
    /// The pointer's Go path in the previous value (`.Buf`; `[…]` for an index that varies between the objects);
    /// null where that value was scanned conservatively.
    pub via: Option<String>,
    /// Size of the object reached (its size-class slot).
    pub size: u64,
    /// Its Go type: as maptrace saw it allocated, or else as the walk typed it (None: neither knows).
    #[serde(rename = "type")]
    pub type_name: Option<String>,
    /// Reached through a slice (of the chain shown): the bytes its length and capacity cover.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub slice: Option<SliceView>,
    /// A map header (of the chain shown): its number of entries.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub map_len: Option<u64>,
    /// The map entry the pointer is in, and its key (of the chain shown).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub map_entry: Option<MapEntry>,
}

/// The map entry a hop's pointer is in.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct MapEntry {
    /// The key as Go prints it: an integer, or a quoted string (its first 64 bytes).
    pub key: String,
    /// The pointer is in the entry's key or its value.
    pub part: EntryPart,
    /// Distinct keys among the group's chains at this hop (one per object, for a map of them).
    pub keys: u64,
}

/// What holds some of a retained site's objects: one chain shape (the same root variable, or the same function's
/// frame on any goroutine; then objects of the same sizes) among the objects searched. The root shown is one of
/// them (one goroutine of several running the same function).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct HeldBy {
    pub root: Root,
    pub hops: Vec<HopRow>,
    /// Objects of the site with this chain, of those searched, and their bytes (size-class slots); `unreached`:
    /// searched, no chain found (held by a goroutine stack or the runtime, not walked yet, or freed during the
    /// walk).
    pub objects: u64,
    pub bytes: u64,
    pub searched: u64,
    pub unreached: u64,
    /// Every chain of the group followed only words known to be pointers (DWARF types, the runtime's bitmaps and
    /// stack maps); else some step was a word that merely looks like one (a stack frame without maps, or an
    /// object whose bitmap could not be read).
    pub precise: bool,
    /// Distinct goroutines among the group's roots (0 for a variable).
    pub goroutines: u64,
    /// A known pattern behind the chain, when one applies.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub diagnosis: Option<Diagnosis>,
}

/// A named reason a chain retains memory, and what to do about it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Diagnosis {
    /// `sub_slice`, `map_kept_storage` or `goroutine_leak`.
    pub kind: &'static str,
    pub text: String,
}

/// Objects smaller than this are not worth a diagnosis.
const DIAGNOSE_FROM_BYTES: u64 = 16 << 10;

impl HeldBy {
    /// Names the pattern behind the chain, given the bytes its row retains and whether they are a map's own
    /// storage: a slice that covers a small part of the large array it keeps; a map whose storage is far larger
    /// than its entries need (maps never shrink after deletes); goroutines parked for good in the same function,
    /// each holding its share.
    pub fn diagnose(&mut self, retained_bytes: u64, map_storage: bool) {
        let kb = crate::units::human_bytes;
        let sub_slice = self.hops.last().and_then(|h| Some((h.size, h.slice?)));
        let map_len = self.hops.iter().find_map(|h| h.map_len).filter(|_| map_storage);
        let parked = self
            .root
            .goroutine
            .as_ref()
            .map(|(_, state)| state.as_str())
            .filter(|s| !["running", "runnable"].contains(s));
        let diagnosis = match (sub_slice, map_len, parked) {
            (Some((size, v)), _, _) if size >= DIAGNOSE_FROM_BYTES && v.len_bytes * 16 <= size => Diagnosis {
                kind: "sub_slice",
                text: format!(
                    "a slice of {} (capacity {}) keeps the whole {} array alive: copy what is kept (bytes.Clone, slices.Clone) instead of re-slicing",
                    kb(v.len_bytes),
                    kb(v.cap_bytes),
                    kb(size)
                ),
            },
            (_, Some(n), _) if retained_bytes >= DIAGNOSE_FROM_BYTES && retained_bytes / n.max(1) >= 1024 => Diagnosis {
                kind: "map_kept_storage",
                text: format!(
                    "the map has {n} entries but keeps {} of storage: a Go map never shrinks after deletes; copy the live entries into a new map to release it",
                    kb(retained_bytes)
                ),
            },
            (_, _, Some(state)) if self.goroutines >= 2 => Diagnosis {
                kind: "goroutine_leak",
                text: format!(
                    "{} goroutines of {} are parked ({state}), each holding its share: a goroutine leak if nothing will wake them",
                    self.goroutines, self.root.name
                ),
            },
            _ => return,
        };
        self.diagnosis = Some(diagnosis);
    }
}

/// Chain shapes listed per site at most: the most common ones.
pub const MAX_SHAPES: usize = 4;

/// Groups the chains of one site's objects by shape (the same root variable, or the same function's frame on any
/// goroutine; then objects of the same sizes), most common first, at most [`MAX_SHAPES`]; `type_of` names hop
/// objects. Empty when no object has a chain.
pub fn held_by(
    objects: &[u64],
    chains: &HashMap<u64, Chain>,
    mut type_of: impl FnMut(u64, u64) -> Option<String>,
) -> Vec<HeldBy> {
    type Shape<'c> = (&'static str, &'c str, Option<&'c str>, Vec<u64>);
    let mut shapes: HashMap<Shape, Vec<&Chain>> = HashMap::new();
    for chain in objects.iter().filter_map(|o| chains.get(o)) {
        let r = &chain.root;
        let shape = (
            r.kind,
            r.name.as_str(),
            r.type_name.as_deref(),
            chain.hops.iter().map(|h| h.size).collect(),
        );
        shapes.entry(shape).or_default().push(chain);
    }
    let found: usize = shapes.values().map(Vec::len).sum();
    let mut groups: Vec<Vec<&Chain>> = shapes.into_values().collect();
    // Most objects first; among equals, the shorter chain, then the root name, so the order is stable.
    groups.sort_by(|a, b| {
        b.len()
            .cmp(&a.len())
            .then(a[0].hops.len().cmp(&b[0].hops.len()))
            .then(a[0].root.name.cmp(&b[0].root.name))
    });
    groups.truncate(MAX_SHAPES);
    groups
        .iter()
        .map(|group| shape_row(group, objects.len(), found, &mut type_of))
        .collect()
}

/// One shape's row: its first chain, with what varies among the group generalized.
fn shape_row(
    group: &[&Chain],
    searched: usize,
    found: usize,
    type_of: &mut impl FnMut(u64, u64) -> Option<String>,
) -> HeldBy {
    let first = group[0];
    let hops = first
        .hops
        .iter()
        .enumerate()
        .map(|(i, h)| HopRow {
            offset: h.offset,
            offset_varies: group.iter().any(|c| c.hops[i].offset != h.offset),
            via: h.via.as_ref().map(|v| {
                if group.iter().all(|c| c.hops[i].via.as_ref() == Some(v)) {
                    v.clone()
                } else {
                    any_index(v)
                }
            }),
            size: h.size,
            type_name: type_of(h.base, h.size).or_else(|| h.type_name.clone()),
            slice: h.slice,
            map_len: h.map_len,
            map_entry: h.key.clone().map(|(key, part)| MapEntry {
                key,
                part,
                keys: group
                    .iter()
                    .filter_map(|c| c.hops[i].key.as_ref())
                    .collect::<HashSet<_>>()
                    .len() as u64,
            }),
        })
        .collect();
    HeldBy {
        root: first.root.clone(),
        hops,
        objects: group.len() as u64,
        bytes: group.iter().filter_map(|c| c.hops.last()).map(|h| h.size).sum(),
        searched: searched as u64,
        unreached: (searched - found) as u64,
        precise: group.iter().all(|c| c.precise),
        goroutines: group
            .iter()
            .filter_map(|c| c.root.goroutine.as_ref().map(|g| g.0))
            .collect::<HashSet<_>>()
            .len() as u64,
        diagnosis: None,
    }
}

/// A Go path with every index generalized: `[3].slots[5].elem` → `[…].slots[…].elem`.
fn any_index(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    let mut in_index = false;
    for c in path.chars() {
        match c {
            '[' => {
                in_index = true;
                out.push_str("[…");
            }
            ']' => {
                in_index = false;
                out.push(']');
            }
            _ if in_index => {}
            _ => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(root: &str, hops: &[(u64, u64, u64)]) -> Chain {
        Chain {
            root: Root {
                kind: "global",
                name: root.into(),
                type_name: None,
                goroutine: None,
                blocked_ms: None,
            },
            hops: hops
                .iter()
                .map(|&(offset, size, base)| Hop {
                    offset,
                    size,
                    base,
                    via: Some(format!("[{}]", offset / 8)),
                    type_name: None,
                    slice: None,
                    map_len: None,
                    known: true,
                    key: None,
                })
                .collect(),
            precise: true,
        }
    }

    #[test]
    fn the_most_common_shape_wins_and_unreached_objects_are_counted() {
        let mut chains = HashMap::new();
        // Three maps held through element slots of one backing array; one through another global.
        for (i, obj) in [0x100u64, 0x200, 0x300].into_iter().enumerate() {
            chains.insert(obj, chain("main.cache", &[(0, 4096, 0x9000), (8 * i as u64, 48, obj)]));
        }
        chains.insert(0x400, chain("main.other", &[(0, 48, 0x400)]));
        let shapes = held_by(&[0x100, 0x200, 0x300, 0x400, 0x500], &chains, |b, _| {
            (b == 0x9000).then(|| "[]map[string]int".into())
        });
        let held = &shapes[0];
        assert_eq!(
            (
                held.root.name.as_str(),
                held.objects,
                held.bytes,
                held.searched,
                held.unreached
            ),
            ("main.cache", 3, 3 * 48, 5, 1)
        );
        // The other shape comes next, with its own count.
        assert_eq!(
            (
                shapes.len(),
                shapes[1].root.name.as_str(),
                shapes[1].objects,
                shapes[1].hops.len()
            ),
            (2, "main.other", 1, 1)
        );
        assert_eq!(held.hops[0].type_name.as_deref(), Some("[]map[string]int"));
        assert_eq!((held.hops[0].offset_varies, held.hops[1].offset_varies), (false, true));
        assert_eq!(
            (held.hops[0].via.as_deref(), held.hops[1].via.as_deref()),
            (Some("[0]"), Some("[…]")),
            "an index that varies is generalized"
        );
        assert!(held.precise);
        assert_eq!(any_index("[3].slots[15].elem"), "[…].slots[…].elem");
        assert_eq!(held.hops.iter().map(|h| h.size).collect::<Vec<_>>(), [4096, 48]);
        assert_eq!(held_by(&[0x1], &chains, |_, _| None), [], "no chain, no answer");
    }

    fn held(hops: Vec<HopRow>, goroutine: Option<(u64, String)>, goroutines: u64) -> HeldBy {
        let kind = if goroutine.is_some() { "goroutine" } else { "global" };
        HeldBy {
            root: Root {
                kind,
                name: "main.x".into(),
                type_name: None,
                goroutine,
                blocked_ms: None,
            },
            hops,
            objects: 1,
            bytes: 0,
            searched: 1,
            unreached: 0,
            precise: true,
            goroutines,
            diagnosis: None,
        }
    }

    fn hop(size: u64, slice: Option<(u64, u64)>, map_len: Option<u64>) -> HopRow {
        let slice = slice.map(|(len_bytes, cap_bytes)| SliceView { len_bytes, cap_bytes });
        HopRow {
            offset: 0,
            offset_varies: false,
            via: Some(String::new()),
            size,
            type_name: None,
            slice,
            map_len,
            map_entry: None,
        }
    }

    fn diagnosis(mut h: HeldBy, bytes: u64, map_storage: bool) -> Option<&'static str> {
        h.diagnose(bytes, map_storage);
        h.diagnosis.map(|d| d.kind)
    }

    #[test]
    fn diagnoses_name_the_pattern_only_where_it_applies() {
        let sub = |len| held(vec![hop(1 << 20, Some((len, 1 << 20)), None)], None, 0);
        assert_eq!(diagnosis(sub(16), 5 << 20, false), Some("sub_slice"));
        assert_eq!(diagnosis(sub(1 << 19), 5 << 20, false), None, "half the array in use");
        let small = held(vec![hop(4096, Some((16, 4096)), None)], None, 0);
        assert_eq!(diagnosis(small, 4096, false), None, "too small to matter");

        let map = || held(vec![hop(48, None, Some(10)), hop(18 << 10, None, None)], None, 0);
        assert_eq!(diagnosis(map(), 272 << 10, true), Some("map_kept_storage"));
        assert_eq!(
            diagnosis(map(), 272 << 10, false),
            None,
            "the values a map holds are not its storage"
        );
        assert_eq!(diagnosis(map(), 8 << 10, true), None);

        let parked = |state: &str, n| held(vec![hop(1024, None, None)], Some((7, state.into())), n);
        assert_eq!(
            diagnosis(parked("chan receive", 5), 5 << 10, false),
            Some("goroutine_leak")
        );
        assert_eq!(
            diagnosis(parked("chan receive", 1), 1 << 10, false),
            None,
            "one goroutine is not a pattern"
        );
        assert_eq!(diagnosis(parked("running", 5), 5 << 10, false), None);
    }
}
