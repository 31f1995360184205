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
mod held_by;
mod index;
mod pause;
mod roots;
pub mod search;
mod typed;
mod walk;

use std::time::Duration;

use serde::Serialize;

use crate::gobin::{HeapModel, TypeGraph, TypeId};
use crate::memory::Memory;
pub use held_by::{held_by, Diagnosis, HeldBy, HopRow, MapEntry};
use pause::Pause;
use roots::{closure_roots, data_roots, global_roots, goroutine_roots, Goroutine, RootRegion};
pub use typed::EntryPart;
use walk::find_chains;

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
    /// Objects reached whose memory could not be read (all or part): what only they lead to was not searched. Here
    /// and below, a value read from the target that its runtime could not have written loses the object, span or
    /// root it describes, never the walk.
    pub unreadable_objects: u64,
    /// Span records (each a run of heap objects) that could not be read or contradict the runtime's layout: no
    /// object in them is reached.
    pub unreadable_spans: u64,
    /// Roots not searched, or only in part: a variable's or a frame's memory that could not be read, a goroutine
    /// whose stack bounds or frame pointers are not ones its runtime could have written, a goroutine list whose
    /// length its memory does not hold, data and bss pointer words past the walk's cap.
    pub unreadable_roots: u64,
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
        self.unreadable_objects += other.unreadable_objects;
        self.unreadable_spans += other.unreadable_spans;
        self.unreadable_roots += other.unreadable_roots;
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

/// The DWARF type of an object maptrace saw allocated as `recorded` (a report's type name): a slice's backing
/// array holds its elements; the runtime names a Swiss map's groups without the `noalg.` DWARF gives them.
pub fn type_named(types: &TypeGraph, recorded: &str) -> Option<TypeId> {
    let name = recorded.strip_prefix("[]").unwrap_or(recorded);
    types.by_name(name).or_else(|| types.by_name(&format!("noalg.{name}")))
}
