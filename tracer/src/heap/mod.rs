//! Reference chains: who holds a retained object. A breadth-first walk of the target's heap from its GC roots, read
//! from `/proc/PID/mem` while the target runs (it is never stopped, so a chain can be stale or missing where the
//! program moved a pointer during the walk: the report says the walk is fuzzy).
//!
//! Roots, so far: package-level variables (DWARF names and types) and the goroutines' stacks, frame by frame (by
//! frame pointer; named by function). The finalizer queue is not walked yet. Edges are conservative: every aligned
//! word of a reachable object that points into an allocated slot of an in-use span is followed (no pointer bitmaps
//! yet), so a chain may pass through a word that only looks like a pointer; breadth-first order makes each chain a
//! shortest one from the first kind of root that reaches the object (globals before stacks).

mod index;
mod roots;

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::gotype::Memory;
use crate::target::HeapLayout;
use index::HeapIndex;
pub use roots::{global_roots, goroutine_roots, RootRegion};

/// How far one walk may go. Beyond it the walk stops and says it was cut short.
#[derive(Clone, Copy, Debug)]
pub struct WalkLimits {
    pub max_bytes: u64,
    pub max_time: Duration,
}

impl Default for WalkLimits {
    fn default() -> Self {
        WalkLimits { max_bytes: 1 << 30, max_time: Duration::from_secs(10) }
    }
}

/// Objects larger than this are scanned in pieces of this size.
const READ_CHUNK: u64 = 1 << 20;

/// Where a chain starts.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct Root {
    /// "global": a package-level variable; "goroutine": a frame of a goroutine's stack.
    pub kind: &'static str,
    /// The variable (`main.cache`) or the frame's function (`main.worker.func1`; empty when the frame pointers
    /// could not be followed).
    pub name: String,
    #[serde(rename = "type")]
    pub type_name: Option<String>,
    /// For a stack: which goroutine, and what it is doing (`chan receive`, `running`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub goroutine: Option<(u64, String)>,
}

impl Root {
    /// As reports print it: `main.cache ([]T)`, `goroutine 18 (chan receive) main.worker.func1`.
    pub fn describe(&self) -> String {
        let mut s = match &self.goroutine {
            Some((goid, state)) => format!("goroutine {goid} ({state}) {}", self.name),
            None => self.name.clone(),
        };
        if let Some(t) = &self.type_name {
            s += &format!(" ({t})");
        }
        s
    }
}

/// One hop: the word at `offset` of the previous object (or root) points into this heap object.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct Hop {
    pub offset: u64,
    /// The object's size class slot, in bytes.
    pub size: u64,
    #[serde(skip)]
    pub base: u64,
}

/// A root and the hops from it to a target object (the last hop's object).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Chain {
    pub root: Root,
    pub hops: Vec<Hop>,
}

/// What one walk found and what it cost.
#[derive(Clone, Debug, Default, Serialize)]
pub struct WalkStats {
    pub roots: usize,
    pub objects_scanned: u64,
    pub bytes_scanned: u64,
    pub seconds: f64,
    /// The limits stopped the walk before every target was found or the heap was exhausted.
    pub cut_short: bool,
}

/// How an object was reached: from a root, or from another object, at a byte offset.
#[derive(Clone, Copy)]
enum Parent {
    Root(usize),
    Object(u64),
}

/// The walk's state: each object reached (how, at which offset of its parent, its size) and those to scan.
struct Walk<'m> {
    heap: HeapIndex<'m>,
    reached: HashMap<u64, (Parent, u64, u64)>,
    queue: VecDeque<(u64, u64)>,
    /// Targets not reached yet.
    remaining: HashSet<u64>,
}

impl Walk<'_> {
    /// Follows every word of `bytes` (at `offset` in `parent`) that points into a heap object not reached yet.
    fn scan(&mut self, parent: Parent, bytes: &[u8], offset: u64) {
        for (i, w) in bytes.chunks_exact(8).enumerate() {
            let word = u64::from_le_bytes(w.try_into().unwrap_or_default());
            let Some(obj) = self.heap.object_containing(word) else { continue };
            if self.reached.contains_key(&obj.base) {
                continue;
            }
            self.reached.insert(obj.base, (parent, offset + 8 * i as u64, obj.size));
            self.remaining.remove(&obj.base);
            self.queue.push_back((obj.base, obj.size));
        }
    }

    /// Scans the queued objects, breadth first, until every target is reached, the heap is exhausted or the
    /// limits stop it.
    fn drain(&mut self, memory: &dyn Memory, buf: &mut Vec<u8>, stats: &mut WalkStats, limits: &WalkLimits, started: Instant) {
        while let Some((base, size)) = self.queue.pop_front() {
            if self.remaining.is_empty() {
                return;
            }
            let mut offset = 0;
            while offset < size {
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
                self.scan(Parent::Object(base), buf, offset);
                offset += len;
            }
            stats.objects_scanned += 1;
        }
    }

    /// The hops from a root to `base`, and the root's index.
    fn chain_to(&self, base: u64) -> Option<(usize, Vec<Hop>)> {
        let mut hops = Vec::new();
        let mut at = base;
        loop {
            let &(parent, offset, size) = self.reached.get(&at)?;
            hops.push(Hop { offset, size, base: at });
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

/// Finds a chain from the roots to each of `targets` (heap object addresses; an address inside an object counts
/// for the object): the shortest from the first kind of root in `roots` that reaches it. `load_bias` applies to
/// the heap layout's addresses.
pub fn find_chains(
    memory: &dyn Memory,
    layout: &HeapLayout,
    roots: &[RootRegion],
    load_bias: u64,
    targets: &HashSet<u64>,
    limits: WalkLimits,
) -> (HashMap<u64, Chain>, WalkStats) {
    let started = Instant::now();
    let mut heap = HeapIndex::new(memory, layout, load_bias);
    let bases: HashMap<u64, u64> = targets.iter().filter_map(|&t| Some((t, heap.object_containing(t)?.base))).collect();
    let mut walk = Walk { heap, reached: HashMap::new(), queue: VecDeque::new(), remaining: bases.values().copied().collect() };
    let mut stats = WalkStats { roots: roots.len(), ..WalkStats::default() };
    let mut buf = Vec::new();
    // Roots of one kind at a time, each kind's reach walked out before the next kind starts: an object a global
    // reaches is reported held by the global, however short a path from some stack slot (conservatively scanned
    // stacks keep stale pointers, as a parked GC worker does).
    let mut from = 0;
    while from < roots.len() && !walk.remaining.is_empty() && !stats.cut_short {
        let kind = roots[from].root.kind;
        let to = roots[from..].iter().position(|r| r.root.kind != kind).map_or(roots.len(), |n| from + n);
        for (i, r) in roots.iter().enumerate().take(to).skip(from) {
            buf.resize(r.len as usize, 0);
            if memory.read(r.addr, &mut buf).is_ok() {
                stats.bytes_scanned += r.len;
                walk.scan(Parent::Root(i), &buf, 0);
            }
        }
        walk.drain(memory, &mut buf, &mut stats, &limits, started);
        from = to;
    }
    let chains = bases
        .into_iter()
        .filter_map(|(target, base)| {
            let (i, hops) = walk.chain_to(base)?;
            Some((target, Chain { root: roots[i].root.clone(), hops }))
        })
        .collect();
    stats.seconds = started.elapsed().as_secs_f64();
    (chains, stats)
}

/// One hop of a [`HeldBy`], for reports.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct HopRow {
    /// Byte offset, in the previous object (or the root variable), of the pointer followed; `offset_varies`:
    /// other objects of the site take the same path at other offsets (elements of one array or map).
    pub offset: u64,
    pub offset_varies: bool,
    /// Size of the object reached (its size-class slot).
    pub size: u64,
    /// Its Go type when maptrace saw it allocated (None: allocated before tracing, or type unknown).
    #[serde(rename = "type")]
    pub type_name: Option<String>,
}

/// What holds a retained site's objects: the most common chain shape (the same root variable, or the same
/// function's frame on any goroutine; then objects of the same sizes) among the objects searched. The root shown
/// is one of them (one goroutine of several running the same function).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct HeldBy {
    pub root: Root,
    pub hops: Vec<HopRow>,
    /// Objects of the site with this chain, of those searched; `unreached`: searched, no chain found (held by a
    /// goroutine stack or the runtime, not walked yet, or freed during the walk).
    pub objects: u64,
    pub searched: u64,
    pub unreached: u64,
}

/// Groups the chains of one site's objects by shape and keeps the most common; `type_of` names hop objects.
pub fn held_by(objects: &[u64], chains: &HashMap<u64, Chain>, mut type_of: impl FnMut(u64) -> Option<String>) -> Option<HeldBy> {
    type Shape<'c> = (&'static str, &'c str, Option<&'c str>, Vec<u64>);
    let mut shapes: HashMap<Shape, Vec<&Chain>> = HashMap::new();
    for chain in objects.iter().filter_map(|o| chains.get(o)) {
        let r = &chain.root;
        let shape = (r.kind, r.name.as_str(), r.type_name.as_deref(), chain.hops.iter().map(|h| h.size).collect());
        shapes.entry(shape).or_default().push(chain);
    }
    let found: usize = shapes.values().map(Vec::len).sum();
    // Most objects first; among equals, the shorter chain, then the root name, so the choice is stable.
    let group = shapes.into_values().max_by(|a, b| {
        a.len().cmp(&b.len()).then(b[0].hops.len().cmp(&a[0].hops.len())).then(b[0].root.name.cmp(&a[0].root.name))
    })?;
    let first = group[0];
    let hops = first
        .hops
        .iter()
        .enumerate()
        .map(|(i, h)| HopRow {
            offset: h.offset,
            offset_varies: group.iter().any(|c| c.hops[i].offset != h.offset),
            size: h.size,
            type_name: type_of(h.base),
        })
        .collect();
    Some(HeldBy {
        root: first.root.clone(),
        hops,
        objects: group.len() as u64,
        searched: objects.len() as u64,
        unreached: (objects.len() - found) as u64,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(root: &str, hops: &[(u64, u64, u64)]) -> Chain {
        Chain {
            root: Root { kind: "global", name: root.into(), type_name: None, goroutine: None },
            hops: hops.iter().map(|&(offset, size, base)| Hop { offset, size, base }).collect(),
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
        let held = held_by(&[0x100, 0x200, 0x300, 0x400, 0x500], &chains, |b| (b == 0x9000).then(|| "[]map[string]int".into())).unwrap();
        assert_eq!((held.root.name.as_str(), held.objects, held.searched, held.unreached), ("main.cache", 3, 5, 1));
        assert_eq!(held.hops[0].type_name.as_deref(), Some("[]map[string]int"));
        assert_eq!((held.hops[0].offset_varies, held.hops[1].offset_varies), (false, true));
        assert_eq!(held.hops.iter().map(|h| h.size).collect::<Vec<_>>(), [4096, 48]);
        assert_eq!(held_by(&[0x1], &chains, |_| None), None, "no chain, no answer");
    }
}
