//! Finalizers and cleanups: registered, removed, queued, started — and for each one that never
//! ran after K GC cycles, why (design.md, "Finalizer never ran"):
//! (a) the object is still reachable; (b) it is reachable from its own finalizer (a cycle: it can
//! never run); (c) it was queued but the finalizer goroutine is stuck in an earlier finalizer;
//! (d) it shares a tiny-allocator block with other live values.
//!
//! Facts come from events (addfinalizer, removefinalizer, queuefinalizer at sweep, reflectcall
//! from the finalizer goroutine's loop, addCleanup), the lifecycle engine (object sizes and
//! liveness) and, for (b) and the blocked goroutine's state, the target's memory at report time.

use std::collections::HashMap;

use serde::Serialize;
use tracer_common::RecordKind;

use crate::events::Event;

/// Why a finalizer never ran.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum NeverRan {
    /// (a) The object is still reachable from the program.
    StillReachable,
    /// (b) The object is reachable from its own finalizer's closure: it can never be collected.
    ReachableFromOwnFinalizer,
    /// (c) Queued, but the finalizer goroutine is blocked in an earlier finalizer.
    QueuedBehindBlockedFinalizer,
    /// (d) The object shares a tiny-allocator block with other live values.
    TinyBlockShared,
}

impl NeverRan {
    pub fn describe(self) -> &'static str {
        match self {
            NeverRan::StillReachable => "still reachable",
            NeverRan::ReachableFromOwnFinalizer => "reachable from its own finalizer (a cycle: it can never run)",
            NeverRan::QueuedBehindBlockedFinalizer => "queued behind a blocked finalizer",
            NeverRan::TinyBlockShared => "in a tiny-allocator block shared with live values",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Registered,
    Queued { at_ns: u64 },
    Started,
}

/// One registered finalizer.
#[derive(Clone, Debug)]
pub struct Registration {
    pub object: u64,
    /// `*funcval` of the finalizer (its first word is the code pointer).
    pub funcval: u64,
    /// `*T` of the object (`addfinalizer`'s `ot`).
    pub ptr_type: u64,
    pub time_ns: u64,
    pub cycle: u64,
    pub stack: Vec<u64>,
    state: State,
}

/// The finalizer the finalizer goroutine started last.
#[derive(Clone, Debug)]
pub struct Running {
    pub object: u64,
    pub funcval: u64,
    /// `*T` of the object, from its registration (0 if registered before tracing began).
    pub ptr_type: u64,
    /// The finalizer goroutine (to read its state).
    pub g: u64,
    pub since_ns: u64,
}

/// Counts over the session.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct FinalizerCounts {
    pub registered: u64,
    pub removed: u64,
    pub queued: u64,
    pub started: u64,
    pub cleanups_registered: u64,
}

#[derive(Default)]
pub struct Finalizers {
    pending: HashMap<u64, Registration>,
    pub counts: FinalizerCounts,
    pub running: Option<Running>,
}

impl Finalizers {
    pub fn record(&mut self, ev: &Event) {
        match ev.kind {
            RecordKind::FinalizerSet => {
                self.counts.registered += 1;
                self.pending.insert(
                    ev.ptr,
                    Registration {
                        object: ev.ptr,
                        funcval: ev.size,
                        ptr_type: ev.type_ptr,
                        time_ns: ev.ktime_ns,
                        cycle: ev.gc_cycle,
                        stack: ev.stack.clone(),
                        state: State::Registered,
                    },
                );
            }
            RecordKind::FinalizerRemoved => {
                if self.pending.remove(&ev.ptr).is_some() {
                    self.counts.removed += 1;
                }
            }
            // Go 1.24 queues cleanups through the same function, without an object.
            RecordKind::FinalizerQueued if ev.ptr != 0 => {
                self.counts.queued += 1;
                if let Some(r) = self.pending.get_mut(&ev.ptr) {
                    r.state = State::Queued { at_ns: ev.ktime_ns };
                }
            }
            RecordKind::FinalizerStarted => {
                self.counts.started += 1;
                // Started, and the one before it has returned (the goroutine runs one at a time).
                let ptr_type = self.pending.remove(&ev.ptr).map_or(0, |r| r.ptr_type);
                self.running = Some(Running { object: ev.ptr, funcval: ev.size, ptr_type, g: ev.g, since_ns: ev.ktime_ns });
            }
            RecordKind::CleanupSet => self.counts.cleanups_registered += 1,
            _ => {}
        }
    }

    /// Finalizers registered (or queued) and not started, oldest first.
    pub fn not_run(&self) -> Vec<&Registration> {
        let mut v: Vec<&Registration> = self.pending.values().filter(|r| r.state != State::Started).collect();
        v.sort_by_key(|r| (r.time_ns, r.object));
        v
    }

    /// Queued and waiting.
    pub fn queue_depth(&self) -> u64 {
        self.pending.values().filter(|r| matches!(r.state, State::Queued { .. })).count() as u64
    }
}

/// What the diagnosis needs to know about an object and the target, beyond the events.
pub trait Evidence {
    /// The object's size if it was allocated while traced and is still alive.
    fn live_size(&self, object: u64) -> Option<u64>;
    /// Other live tracked objects in the 16-byte block at `block`.
    fn others_in_block(&self, block: u64, object: u64) -> bool;
    /// Whether the objects `ptr_type` (a `*T`) points to hold no pointers: only those are tiny.
    fn points_to_pointer_free(&self, ptr_type: u64) -> bool;
    /// Whether the finalizer closure `funcval` holds a pointer into `[object, object + size)`.
    fn closure_refers_to(&self, funcval: u64, object: u64, size: u64) -> bool;
}

/// Go's tiny allocator: pointer-free allocations under 16 bytes share 16-byte blocks.
const TINY_BLOCK: u64 = 16;

/// Why `r` has not run, given `cycles_since` completed cycles since it was registered and
/// whether the finalizer goroutine is stuck (`blocked`). None: not (yet) a finding.
pub fn diagnose(r: &Registration, cycles_since: u64, k: u64, blocked: bool, evidence: &dyn Evidence) -> Option<NeverRan> {
    match r.state {
        State::Started => None,
        State::Queued { .. } => blocked.then_some(NeverRan::QueuedBehindBlockedFinalizer),
        State::Registered if cycles_since < k => None,
        State::Registered => {
            let size = evidence.live_size(r.object);
            if size.is_some_and(|s| s < TINY_BLOCK) && evidence.points_to_pointer_free(r.ptr_type) {
                // The tiny allocator fills a block from its start, so an object past the start has
                // an earlier neighbour even when that one was allocated before tracing began.
                let block = r.object & !(TINY_BLOCK - 1);
                if r.object != block || evidence.others_in_block(block, r.object) {
                    return Some(NeverRan::TinyBlockShared);
                }
            }
            if evidence.closure_refers_to(r.funcval, r.object, size.unwrap_or(1)) {
                return Some(NeverRan::ReachableFromOwnFinalizer);
            }
            Some(NeverRan::StillReachable)
        }
    }
}

impl Registration {
    pub fn queued_at(&self) -> Option<u64> {
        match self.state {
            State::Queued { at_ns } => Some(at_ns),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::tests::record;
    use tracer_common::ContainerKind;

    fn ev(kind: RecordKind, ptr: u64, aux: u64, t: u64) -> Event {
        let mut r = record(kind, ContainerKind::None, &[0x1000, 0x2010], 0);
        r.ptr = ptr;
        r.size = aux;
        r.ktime_ns = t;
        Event::from_record(&r).unwrap()
    }

    struct World {
        sizes: HashMap<u64, u64>,
        shared_blocks: Vec<u64>,
        cyclic: Vec<u64>,
        with_pointers: Vec<u64>,
    }

    impl Evidence for World {
        fn live_size(&self, object: u64) -> Option<u64> {
            self.sizes.get(&object).copied()
        }
        fn others_in_block(&self, block: u64, _object: u64) -> bool {
            self.shared_blocks.contains(&block)
        }
        fn closure_refers_to(&self, funcval: u64, _object: u64, _size: u64) -> bool {
            self.cyclic.contains(&funcval)
        }
        fn points_to_pointer_free(&self, ptr_type: u64) -> bool {
            !self.with_pointers.contains(&ptr_type)
        }
    }

    #[test]
    fn lifecycle_of_registrations() {
        let mut f = Finalizers::default();
        for (i, p) in [0x100u64, 0x200, 0x300, 0x400].iter().enumerate() {
            f.record(&ev(RecordKind::FinalizerSet, *p, 0xf00 + i as u64, 1));
        }
        f.record(&ev(RecordKind::FinalizerRemoved, 0x400, 0, 2));
        f.record(&ev(RecordKind::FinalizerQueued, 0x100, 0xf00, 3));
        f.record(&ev(RecordKind::FinalizerQueued, 0, 0xabc, 3)); // a 1.24 cleanup: no object
        f.record(&ev(RecordKind::FinalizerQueued, 0x200, 0xf01, 3));
        f.record(&ev(RecordKind::FinalizerStarted, 0x100, 0xf00, 4));
        f.record(&ev(RecordKind::CleanupSet, 0x900, 0, 5));
        assert_eq!((f.counts.registered, f.counts.removed, f.counts.queued, f.counts.started, f.counts.cleanups_registered), (4, 1, 2, 1, 1));
        let waiting: Vec<u64> = f.not_run().iter().map(|r| r.object).collect();
        assert_eq!(waiting, vec![0x200, 0x300]);
        assert_eq!(f.queue_depth(), 1);
        assert_eq!(f.running.as_ref().map(|r| (r.object, r.funcval, r.since_ns)), Some((0x100, 0xf00, 4)));
    }

    #[test]
    fn diagnoses() {
        const PTR_TO_STRUCT_WITH_POINTERS: u64 = 0x77;
        let mut f = Finalizers::default();
        let mut set = |object: u64, funcval: u64, ptr_type: u64| {
            let mut e = ev(RecordKind::FinalizerSet, object, funcval, 1);
            e.type_ptr = ptr_type;
            f.record(&e);
        };
        set(0x1000, 0xa0, 0); // held
        set(0x2000, 0xb0, 0); // cycle
        set(0x3008, 0xc0, 0); // tiny, second in its block: an earlier value shares it, tracked or not
        set(0x5000, 0xc0, 0); // tiny, first in block 0x5000, a tracked value after it
        set(0x6000, 0xc0, 0); // tiny, alone in its block
        set(0x7008, 0xe0, PTR_TO_STRUCT_WITH_POINTERS); // 8 bytes with a pointer: not tiny
        set(0x4000, 0xd0, 0); // queued
        f.record(&ev(RecordKind::FinalizerQueued, 0x4000, 0xd0, 2));
        let world = World {
            sizes: HashMap::from([(0x1000, 32), (0x2000, 32), (0x3008, 8), (0x5000, 8), (0x6000, 8), (0x7008, 8)]),
            shared_blocks: vec![0x5000, 0x7000],
            cyclic: vec![0xb0],
            with_pointers: vec![PTR_TO_STRUCT_WITH_POINTERS],
        };
        let get = |p: u64| f.pending[&p].clone();
        assert_eq!(diagnose(&get(0x1000), 2, 2, false, &world), Some(NeverRan::StillReachable));
        assert_eq!(diagnose(&get(0x1000), 1, 2, false, &world), None, "too young");
        assert_eq!(diagnose(&get(0x2000), 3, 2, false, &world), Some(NeverRan::ReachableFromOwnFinalizer));
        assert_eq!(diagnose(&get(0x3008), 3, 2, false, &world), Some(NeverRan::TinyBlockShared));
        assert_eq!(diagnose(&get(0x5000), 3, 2, false, &world), Some(NeverRan::TinyBlockShared));
        assert_eq!(diagnose(&get(0x6000), 3, 2, false, &world), Some(NeverRan::StillReachable));
        assert_eq!(diagnose(&get(0x7008), 3, 2, false, &world), Some(NeverRan::StillReachable), "size class 8, not tiny");
        assert_eq!(diagnose(&get(0x4000), 3, 2, true, &world), Some(NeverRan::QueuedBehindBlockedFinalizer));
        assert_eq!(diagnose(&get(0x4000), 3, 2, false, &world), None, "queued and the goroutine is not stuck");
    }
}

/// One group of finalizers that never ran: same reason, registering site and finalizer.
#[derive(Clone, Debug, Serialize)]
pub struct NeverRanRow {
    pub reason: NeverRan,
    pub count: u64,
    pub object_type: String,
    pub finalizer: String,
    /// Completed GC cycles since the oldest of them was registered, and its age.
    pub age_cycles: u64,
    pub age_seconds: f64,
    /// Where `SetFinalizer` was called, site first.
    pub registered_at: Vec<crate::sites::FrameRow>,
}

/// The finalizer the finalizer goroutine is stuck in, when finalizers wait behind it.
#[derive(Clone, Debug, Serialize)]
pub struct BlockedFinalizer {
    pub finalizer: String,
    pub object_type: String,
    /// The goroutine's state: a wait reason ("chan receive"), or "running"/"runnable".
    pub state: String,
    pub blocked_seconds: f64,
    pub queue_depth: u64,
}

/// The finalizer goroutine, once it has been seen running a finalizer.
#[derive(Clone, Debug, Serialize)]
pub struct FinalizerGoroutine {
    /// "finalizer wait" when idle, another wait reason, "running" or "runnable".
    pub state: String,
    /// The finalizer it started last, and how long ago.
    pub last_started: String,
    pub last_started_seconds_ago: f64,
}

/// The report's Finalizers section.
#[derive(Clone, Debug, Default, Serialize)]
pub struct FinalizerSection {
    pub counts: FinalizerCounts,
    /// Registered and not started (yet).
    pub pending: u64,
    pub never_ran: Vec<NeverRanRow>,
    pub blocked: Option<BlockedFinalizer>,
    pub goroutine: Option<FinalizerGoroutine>,
}
