//! Finalizers and cleanups: registered, removed, queued, started — and for each one that never
//! ran after K GC cycles, why:
//! (a) the object is still reachable; (b) it is reachable from its own finalizer or cleanup (a
//! cycle: it can never run); (c) it was queued but the goroutine that runs it is stuck in an
//! earlier one; (d) it shares a tiny-allocator block with other live values.
//!
//! Facts come from events (addfinalizer, removefinalizer, queuefinalizer at sweep, reflectcall
//! from the finalizer goroutine's loop; addCleanup, freeSpecial at sweep, the cleanup runner's
//! call), the lifecycle engine (object sizes and liveness) and, for (b) and the runners' states,
//! the target's memory at report time.

use std::collections::{hash_map::Entry, HashMap};

use crate::events::{Finalization, Step};
use serde::Serialize;

/// `runtime.SetFinalizer` or `runtime.AddCleanup`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Mechanism {
    #[default]
    Finalizer,
    Cleanup,
}

impl Mechanism {
    pub fn as_str(self) -> &'static str {
        match self {
            Mechanism::Finalizer => "finalizer",
            Mechanism::Cleanup => "cleanup",
        }
    }
}

/// Why a finalizer or cleanup never ran.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum NeverRan {
    /// (a) The object is still reachable from the program.
    StillReachable,
    /// (b) The object is reachable from its own finalizer or cleanup: it can never be collected.
    ReachableFromOwnFinalizer,
    /// (c) Queued, but the goroutine that runs it is blocked in an earlier one.
    QueuedBehindBlockedFinalizer,
    /// (d) The object shares a tiny-allocator block with other live values.
    TinyBlockShared,
}

impl NeverRan {
    pub fn describe(self) -> &'static str {
        match self {
            NeverRan::StillReachable => "still reachable",
            NeverRan::ReachableFromOwnFinalizer => {
                "reachable from its own finalizer or cleanup (a cycle: it can never run)"
            }
            NeverRan::QueuedBehindBlockedFinalizer => "queued behind a blocked finalizer or cleanup",
            NeverRan::TinyBlockShared => "in a tiny-allocator block shared with live values",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Registered,
    Queued { at_ns: u64 },
}

/// A registration: a finalizer is known by its object (one per object), a cleanup by its handle
/// (an object can have many).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Key {
    Finalizer(u64),
    Cleanup(u64),
}

/// What a finalizer or cleanup is: the function, and the object it is for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Subject {
    pub mechanism: Mechanism,
    pub object: u64,
    /// The finalizer's or cleanup's `*funcval` (its first word is the code pointer); for a cleanup
    /// whose record has only the handle (Go 1.24–1.25), what the correlator read through it.
    pub function: u64,
    /// A cleanup's handle (see `target::CleanupLayout`); 0 for a finalizer.
    pub handle: u64,
    /// `*T` of the object (`addfinalizer`'s `ot`); 0 for a cleanup.
    pub ptr_type: u64,
    /// `T` as the object was allocated, if that was traced.
    pub alloc_type: u64,
}

impl Subject {
    fn finalizer(object: u64, function: u64, ptr_type: u64) -> Self {
        Self {
            mechanism: Mechanism::Finalizer,
            object,
            function,
            ptr_type,
            ..Self::default()
        }
    }

    fn cleanup(object: u64, handle: u64, function: u64) -> Self {
        Self {
            mechanism: Mechanism::Cleanup,
            object,
            function,
            handle,
            ..Self::default()
        }
    }
}

/// One registered finalizer or cleanup.
#[derive(Clone, Debug)]
pub struct Registration {
    pub what: Subject,
    pub time_ns: u64,
    pub cycle: u64,
    pub stack: Vec<u64>,
    state: State,
}

/// What a runner goroutine (the finalizer goroutine, a cleanup goroutine) started last.
#[derive(Clone, Debug)]
pub struct Running {
    /// From its registration when that was seen (types 0 otherwise).
    pub what: Subject,
    /// The runner goroutine (to read its state).
    pub g: u64,
    pub goid: u64,
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
    pub cleanups_queued: u64,
    pub cleanups_started: u64,
}

#[derive(Default)]
pub struct Finalizers {
    pending: HashMap<Key, Registration>,
    pub counts: FinalizerCounts,
    /// By runner goroutine (`g`).
    pub running: HashMap<u64, Running>,
    /// Go 1.24 runs cleanups on the finalizer goroutine; later releases on goroutines of their own.
    pub cleanups_on_finalizer_goroutine: bool,
}

impl Finalizers {
    pub fn new(cleanups_on_finalizer_goroutine: bool) -> Self {
        Self {
            cleanups_on_finalizer_goroutine,
            ..Self::default()
        }
    }

    /// `alloc_type`: for a registration, the object's type as allocated (0 if unknown).
    pub fn record(&mut self, ev: &Finalization, alloc_type: u64) {
        let at_ns = ev.origin.ktime_ns;
        match ev.step {
            Step::FinalizerSet { .. } | Step::CleanupSet { .. } => self.registered(ev, alloc_type),
            Step::FinalizerRemoved { object } => {
                if self.pending.remove(&Key::Finalizer(object)).is_some() {
                    self.counts.removed += 1;
                }
            }
            // Go 1.24 queues cleanups through the same function, without an object (counted from
            // freeSpecial instead).
            Step::FinalizerQueued { object: 0, .. } => {}
            Step::FinalizerQueued { object, .. } => {
                if self.queued(Key::Finalizer(object), at_ns) {
                    self.counts.queued += 1;
                }
            }
            Step::CleanupQueued { handle, .. } => {
                if self.queued(Key::Cleanup(handle), at_ns) {
                    self.counts.cleanups_queued += 1;
                }
            }
            Step::FinalizerStarted { .. } | Step::CleanupStarted { .. } => self.started(ev),
        }
    }

    /// A `SetFinalizer` or `AddCleanup`. An entry probe fires twice for one call when the
    /// function's prologue grows the stack and restarts it: a registration seen again for the
    /// same key is not counted again.
    fn registered(&mut self, ev: &Finalization, alloc_type: u64) {
        let (key, what) = match ev.step {
            Step::FinalizerSet {
                object,
                funcval,
                ptr_type,
            } => (Key::Finalizer(object), Subject::finalizer(object, funcval, ptr_type)),
            Step::CleanupSet {
                object,
                handle,
                funcval,
            } => (Key::Cleanup(handle), Subject::cleanup(object, handle, funcval)),
            _ => return,
        };
        let Entry::Vacant(e) = self.pending.entry(key) else {
            return;
        };
        e.insert(Registration {
            what: Subject { alloc_type, ..what },
            time_ns: ev.origin.ktime_ns,
            cycle: ev.origin.gc_cycle,
            stack: ev.origin.stack.clone(),
            state: State::Registered,
        });
        match key {
            Key::Finalizer(_) => self.counts.registered += 1,
            Key::Cleanup(_) => self.counts.cleanups_registered += 1,
        }
    }

    /// Whether this is news: false when the registration was already queued.
    fn queued(&mut self, key: Key, at_ns: u64) -> bool {
        match self.pending.get_mut(&key) {
            Some(r) if r.state != State::Registered => false,
            Some(r) => {
                r.state = State::Queued { at_ns };
                true
            }
            None => true,
        }
    }

    /// Started, and the one before it on the same goroutine has returned (a runner runs one at a time).
    fn started(&mut self, ev: &Finalization) {
        // A finalizer start names its object and function; a cleanup's only its handle.
        let (key, unseen) = match ev.step {
            Step::FinalizerStarted { object, funcval } => {
                self.counts.started += 1;
                (Key::Finalizer(object), Subject::finalizer(object, funcval, 0))
            }
            Step::CleanupStarted { handle } => {
                self.counts.cleanups_started += 1;
                (Key::Cleanup(handle), Subject::cleanup(0, handle, 0))
            }
            _ => return,
        };
        let on = &ev.origin;
        let run = Running {
            what: self.pending.remove(&key).map_or(unseen, |r| r.what),
            g: on.g,
            goid: on.goid,
            since_ns: on.ktime_ns,
        };
        self.running.insert(on.g, run);
    }

    /// Registered (or queued) and not started, oldest first.
    pub fn not_run(&self) -> Vec<&Registration> {
        let mut v: Vec<&Registration> = self.pending.values().collect();
        v.sort_by_key(|r| (r.time_ns, r.what.object, r.what.handle));
        v
    }

    /// Whether the goroutine that ran `run` also runs registrations of `mechanism`.
    pub fn serves(&self, run: &Running, mechanism: Mechanism) -> bool {
        run.what.mechanism == mechanism || self.cleanups_on_finalizer_goroutine
    }

    /// Queued and waiting for a runner that `run`'s goroutine stands for.
    pub fn queue_depth(&self, run: &Running) -> u64 {
        self.pending
            .values()
            .filter(|r| r.queued_at().is_some() && self.serves(run, r.what.mechanism))
            .count() as u64
    }
}

/// What the diagnosis needs to know about an object and the target, beyond the events.
pub trait Evidence {
    /// The object's size if it was allocated while traced and is still alive.
    fn live_size(&self, object: u64) -> Option<u64>;
    /// Whether the tiny allocator made the object: it is under 16 bytes and its type has no
    /// pointers (from its allocation when it was traced, else from the registration's `*T`).
    fn tiny(&self, what: &Subject) -> bool;
    /// Other live tracked objects in the 16-byte block at `block`.
    fn others_in_block(&self, block: u64, object: u64) -> bool;
    /// Whether `[object, object + size)` is reachable, within a few pointer hops, from `roots`
    /// (the finalizer's closure; a cleanup's closure and argument).
    fn reachable_from(&self, roots: &[u64], object: u64, size: u64) -> bool;
}

/// Go's tiny allocator: pointer-free allocations under 16 bytes share 16-byte blocks.
const TINY_BLOCK: u64 = 16;

/// Why `r` has not run, given `cycles_since` completed cycles since it was registered and
/// whether the goroutine that would run it is stuck (`blocked`). None: not (yet) a finding.
pub fn diagnose(
    r: &Registration,
    cycles_since: u64,
    k: u64,
    blocked: bool,
    evidence: &dyn Evidence,
) -> Option<NeverRan> {
    match r.state {
        State::Queued { .. } => blocked.then_some(NeverRan::QueuedBehindBlockedFinalizer),
        State::Registered if cycles_since < k => None,
        State::Registered => {
            let w = &r.what;
            let size = evidence.live_size(w.object);
            if evidence.tiny(w) {
                // The tiny allocator fills a block from its start, so an object past the start has
                // an earlier neighbour even when that one was allocated before tracing began. One
                // at the start that was not traced (before attach, or not sampled) may have later
                // neighbours nobody saw: the tiny block is then the likelier explanation.
                let block = w.object & !(TINY_BLOCK - 1);
                if w.object != block || size.is_none() || evidence.others_in_block(block, w.object) {
                    return Some(NeverRan::TinyBlockShared);
                }
            }
            if evidence.reachable_from(&[w.function, w.handle], w.object, size.unwrap_or(1)) {
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
            State::Registered => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::{tests::record, TraceEvent};
    use tracer_common::{ContainerKind, RecordKind};

    /// A record of `kind` decoded, with `ptr` and `size` set (`type_ptr` stays 0x4a0000).
    fn ev(kind: RecordKind, ptr: u64, aux: u64, t: u64) -> Finalization {
        let mut r = record(kind, ContainerKind::None, &[0x1000, 0x2010], 0);
        r.ptr = ptr;
        r.size = aux;
        r.ktime_ns = t;
        match TraceEvent::from_record(&r) {
            Ok(TraceEvent::Finalization(f)) => f,
            other => panic!("{kind:?} decoded as {other:?}"),
        }
    }

    impl Finalizers {
        fn record0(&mut self, e: &Finalization) {
            self.record(e, 0);
        }
    }

    fn on(g: u64, mut e: Finalization) -> Finalization {
        e.origin.g = g;
        e
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
        fn tiny(&self, what: &Subject) -> bool {
            self.sizes.get(&what.object).is_some_and(|&s| s < 16) && !self.with_pointers.contains(&what.object)
        }
        fn others_in_block(&self, block: u64, _object: u64) -> bool {
            self.shared_blocks.contains(&block)
        }
        fn reachable_from(&self, roots: &[u64], _object: u64, _size: u64) -> bool {
            roots.iter().any(|r| self.cyclic.contains(r))
        }
    }

    #[test]
    fn lifecycle_of_registrations() {
        let mut f = Finalizers::new(false);
        for (i, p) in [0x100u64, 0x200, 0x300, 0x400].iter().enumerate() {
            f.record0(&ev(RecordKind::FinalizerSet, *p, 0xf00 + i as u64, 1));
        }
        f.record0(&ev(RecordKind::FinalizerRemoved, 0x400, 0, 2));
        f.record0(&ev(RecordKind::FinalizerQueued, 0x100, 0xf00, 3));
        f.record0(&ev(RecordKind::FinalizerQueued, 0, 0xabc, 3)); // a 1.24 cleanup: no object
        f.record0(&ev(RecordKind::FinalizerQueued, 0x200, 0xf01, 3));
        f.record0(&on(7, ev(RecordKind::FinalizerStarted, 0x100, 0xf00, 4)));
        // Two cleanups on one object, told apart by their handles; one is queued and run on
        // another goroutine.
        f.record0(&ev(RecordKind::CleanupSet, 0x900, 0xc1, 5));
        f.record0(&ev(RecordKind::CleanupSet, 0x900, 0xc2, 5));
        f.record0(&ev(RecordKind::CleanupQueued, 0x900, 0xc1, 6));
        f.record0(&ev(RecordKind::CleanupQueued, 0x900, 0xc2, 6));
        f.record0(&on(8, ev(RecordKind::CleanupStarted, 0xc1, 0, 7)));
        // An entry probe that fired twice for one call (the prologue grew the stack).
        f.record0(&ev(RecordKind::CleanupSet, 0x900, 0xc2, 5));
        f.record0(&ev(RecordKind::CleanupQueued, 0x900, 0xc2, 6));
        f.record0(&ev(RecordKind::FinalizerSet, 0x300, 0xf02, 1));
        let c = f.counts;
        assert_eq!((c.registered, c.removed, c.queued, c.started), (4, 1, 2, 1));
        assert_eq!(
            (c.cleanups_registered, c.cleanups_queued, c.cleanups_started),
            (2, 2, 1)
        );
        let waiting: Vec<(u64, u64)> = f.not_run().iter().map(|r| (r.what.object, r.what.handle)).collect();
        assert_eq!(waiting, vec![(0x200, 0), (0x300, 0), (0x900, 0xc2)]);
        let fing = &f.running[&7];
        assert_eq!(
            (fing.what.mechanism, fing.what.object, fing.what.function, fing.since_ns),
            (Mechanism::Finalizer, 0x100, 0xf00, 4)
        );
        let cleaner = &f.running[&8];
        assert_eq!(
            (cleaner.what.mechanism, cleaner.what.object, cleaner.what.handle),
            (Mechanism::Cleanup, 0x900, 0xc1)
        );
        assert_eq!(f.queue_depth(fing), 1, "the finalizer goroutine's queue");
        assert_eq!(f.queue_depth(cleaner), 1, "the cleanup goroutine's queue");
        // Go 1.24: one goroutine runs both.
        let mut shared = Finalizers::new(true);
        shared.record0(&ev(RecordKind::FinalizerSet, 0x100, 0xf00, 1));
        shared.record0(&ev(RecordKind::CleanupSet, 0x200, 0xc1, 1));
        shared.record0(&ev(RecordKind::FinalizerQueued, 0x100, 0xf00, 2));
        shared.record0(&ev(RecordKind::CleanupQueued, 0x200, 0xc1, 2));
        shared.record0(&on(7, ev(RecordKind::FinalizerSet, 0x300, 0xf00, 3)));
        shared.record0(&on(7, ev(RecordKind::FinalizerQueued, 0x300, 0xf00, 3)));
        shared.record0(&on(7, ev(RecordKind::FinalizerStarted, 0x300, 0xf00, 4)));
        assert_eq!(shared.queue_depth(&shared.running[&7]), 2);
    }

    #[test]
    fn diagnoses() {
        let mut f = Finalizers::new(false);
        let mut set = |object: u64, funcval: u64| f.record0(&ev(RecordKind::FinalizerSet, object, funcval, 1));
        set(0x1000, 0xa0); // held
        set(0x2000, 0xb0); // cycle
        set(0x3008, 0xc0); // tiny, second in its block: an earlier value shares it, tracked or not
        set(0x5000, 0xc0); // tiny, first in block 0x5000, a tracked value after it
        set(0x6000, 0xc0); // tiny, alone in its block
        set(0x7008, 0xe0); // 8 bytes with a pointer: not tiny
        set(0x4000, 0xd0); // queued
        f.record0(&ev(RecordKind::FinalizerQueued, 0x4000, 0xd0, 2));
        f.record0(&ev(RecordKind::CleanupSet, 0x8000, 0xcc, 1)); // a cleanup whose handle reaches its object
        let world = World {
            sizes: HashMap::from([
                (0x1000, 32),
                (0x2000, 32),
                (0x3008, 8),
                (0x5000, 8),
                (0x6000, 8),
                (0x7008, 8),
                (0x8000, 32),
            ]),
            shared_blocks: vec![0x5000, 0x7000],
            cyclic: vec![0xb0, 0xcc],
            with_pointers: vec![0x7008],
        };
        let why = |k: Key, cycles_since: u64, blocked: bool| {
            let r = &f.pending[&k];
            diagnose(r, cycles_since, 2, blocked, &world)
        };
        let fin = Key::Finalizer;
        assert_eq!(why(fin(0x1000), 2, false), Some(NeverRan::StillReachable));
        assert_eq!(why(fin(0x1000), 1, false), None, "too young");
        assert_eq!(why(fin(0x2000), 3, false), Some(NeverRan::ReachableFromOwnFinalizer));
        assert_eq!(why(fin(0x3008), 3, false), Some(NeverRan::TinyBlockShared));
        assert_eq!(why(fin(0x5000), 3, false), Some(NeverRan::TinyBlockShared));
        assert_eq!(why(fin(0x6000), 3, false), Some(NeverRan::StillReachable));
        assert_eq!(
            why(fin(0x7008), 3, false),
            Some(NeverRan::StillReachable),
            "size class 8, not tiny"
        );
        assert_eq!(why(fin(0x4000), 3, true), Some(NeverRan::QueuedBehindBlockedFinalizer));
        assert_eq!(
            why(fin(0x4000), 3, false),
            None,
            "queued and the goroutine is not stuck"
        );
        assert_eq!(
            why(Key::Cleanup(0xcc), 3, false),
            Some(NeverRan::ReachableFromOwnFinalizer)
        );
    }
}

/// One group of finalizers or cleanups that never ran: same kind, reason, registering site and function.
#[derive(Clone, Debug, Serialize)]
pub struct NeverRanRow {
    pub kind: Mechanism,
    pub reason: NeverRan,
    pub count: u64,
    pub object_type: String,
    /// The finalizer or cleanup function.
    pub function: String,
    /// Completed GC cycles since the oldest of them was registered, and its age.
    pub age_cycles: u64,
    pub age_seconds: f64,
    /// Where `SetFinalizer` or `AddCleanup` was called, site first.
    pub registered_at: Vec<crate::lifecycle::sites::FrameRow>,
    /// What keeps the objects reachable (reasons still_reachable and reachable_from_own_finalizer), when the
    /// heap walk found it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub held_by: Option<crate::heap::HeldBy>,
    /// Some of the objects, for the heap walk.
    #[serde(skip)]
    pub objects: Vec<u64>,
}

/// Objects per never-ran group whose chains are searched.
const OBJECTS_PER_GROUP: usize = 64;

impl NeverRanRow {
    /// Counts one more registration of the group, `object` its object.
    pub fn add(&mut self, object: u64) {
        self.count += 1;
        if self.objects.len() < OBJECTS_PER_GROUP {
            self.objects.push(object);
        }
    }

    /// Whether what holds the objects explains the finding: they are reachable, from the program or from
    /// their own finalizer.
    pub fn wants_chain(&self) -> bool {
        matches!(
            self.reason,
            NeverRan::StillReachable | NeverRan::ReachableFromOwnFinalizer
        )
    }
}

/// A goroutine that runs finalizers or cleanups, as of the last one it was seen starting.
#[derive(Clone, Debug, Serialize)]
pub struct RunnerGoroutine {
    pub goid: u64,
    /// "finalizers", "cleanups", or "finalizers and cleanups" (Go 1.24's finalizer goroutine).
    pub runs: &'static str,
    /// "finalizer wait" or "cleanup wait" when idle, another wait reason, "running" or "runnable".
    pub state: String,
    /// The function it started last, its kind, and how long ago.
    pub last_started: String,
    pub last_started_kind: Mechanism,
    pub last_started_seconds_ago: f64,
    /// Set when it is stuck in that function while others wait behind it.
    pub blocked: Option<Blocked>,
}

/// What a stuck runner holds up.
#[derive(Clone, Debug, Serialize)]
pub struct Blocked {
    /// The type of the object whose finalizer or cleanup is stuck.
    pub object_type: String,
    pub blocked_seconds: f64,
    /// Finalizers or cleanups queued for this runner and not started.
    pub queue_depth: u64,
}

/// The report's Finalizers section (finalizers and cleanups).
#[derive(Clone, Debug, Default, Serialize)]
pub struct FinalizerSection {
    pub counts: FinalizerCounts,
    /// Registered and not started (yet).
    pub pending: u64,
    pub never_ran: Vec<NeverRanRow>,
    /// Ordered by goroutine id.
    pub runners: Vec<RunnerGoroutine>,
}
