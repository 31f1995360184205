//! One search for what holds a set of objects: the roots of the live target (package-level
//! variables or, without DWARF, the data and bss words the GC marks; every goroutine's frames;
//! the closures of finalizers and cleanups not run), walked with the target stopped for at most
//! its pause budget.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use serde::Serialize;

use super::goroutines::{goroutine_status, gstatus, status_text};
use super::RootRegion;
use super::{
    closure_roots, data_roots, find_chains, global_roots, goroutine_roots, type_named, Chain, Goroutine, HeapAccess,
    Pause, WalkLimits, WalkStats,
};
use crate::{
    gobin::{GoBinary, HeapModel},
    memory::Memory,
};

const ROOTS: &str = "package-level variables, goroutine stacks, and the closures of finalizers and cleanups not run";
const TYPED: &str = "typed where DWARF describes the value, by the runtime's heap bitmaps for other heap objects and its stack maps for goroutine stacks, conservative elsewhere (frames without maps)";
const UNTYPED: &str = "untyped: no DWARF (a stripped binary): the words of data and bss the GC's bitmaps mark as pointers, then the pointer words the runtime's heap bitmaps give in what they reach, and stack frames by the GC's stack maps";

/// The heap walk behind the retained rows' `held_by`.
#[derive(Clone, Debug, Serialize)]
pub struct ChainSearch {
    /// What the walk starts from.
    pub roots: &'static str,
    /// How objects were scanned: "typed" where DWARF gives the value's type (a global's, and what typed pointers
    /// lead to: only pointer words followed, each named by its Go path), the runtime's heap bitmaps for other
    /// objects and the GC's stack maps for stack frames (pointer words only), "conservative" elsewhere (frames
    /// without maps: any word that points into an allocated heap slot). `typed_objects` and `bitmap_objects` in
    /// the walk count the first two kinds of objects; each `held_by` says whether its chain is `precise` (no
    /// conservative step).
    pub precision: &'static str,
    /// The budget the target could be stopped for (`--max-pause`; 0: never stopped), how long it was stopped,
    /// and whether the walk ended within it (else the rest of the walk ran against the running program, and
    /// chains may be stale where it moved pointers meanwhile).
    pub max_pause_seconds: f64,
    /// `--max-depth`: objects this many steps from a root are not scanned (`depth_limited` counts them).
    pub max_depth: u32,
    pub paused_seconds: f64,
    pub walk_within_pause: bool,
    /// Why the target could not be stopped (another tracer holds it), when it could not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pause_failed: Option<String>,
    /// Why there are no chains, when there are none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unavailable: Option<String>,
    #[serde(flatten)]
    pub walk: WalkStats,
}

/// What to search for, in which live target.
pub struct ChainQuery<'a> {
    pub binary: &'a GoBinary,
    pub memory: &'a dyn Memory,
    pub pid: u32,
    pub load_bias: u64,
    pub max_pause: Duration,
    pub max_depth: u32,
    /// Objects to find a chain to from the program's roots.
    pub targets: HashSet<u64>,
    /// Objects to find a chain to from the closures (`closures`) alone.
    pub closure_targets: HashSet<u64>,
    /// The closures of finalizers and cleanups not run: (mechanism, `*funcval`).
    pub closures: Vec<(&'static str, u64)>,
    /// The current CLOCK_MONOTONIC time, to say how long a goroutine has been blocked.
    pub now_ns: u64,
}

/// The chains found from the program's roots and from the closures, and how the search went.
pub struct ChainsFound {
    pub from_roots: HashMap<u64, Chain>,
    pub from_closures: HashMap<u64, Chain>,
    pub search: ChainSearch,
}

/// Runs the search. `allocation_in(base, size)` gives the address and recorded type name of an object
/// maptrace saw allocated in `[base, base + size)`: it types objects DWARF does not.
pub fn search_chains(q: &ChainQuery, allocation_in: &mut dyn FnMut(u64, u64) -> Option<(u64, String)>) -> ChainsFound {
    match q.binary.heap_model() {
        Ok(model) => search_chains_in(q, &model, allocation_in),
        Err(why) => {
            // Without symbols maptrace finds the heap from code patterns; a build that keeps them needs none.
            let hint = if q.binary.has_symtab() {
                ""
            } else {
                "; a build without -ldflags=-s -w has the symbols this needs"
            };
            let mut search = new_search(q);
            search.unavailable = Some(format!("{why}{hint}"));
            ChainsFound {
                from_roots: HashMap::new(),
                from_closures: HashMap::new(),
                search,
            }
        }
    }
}

/// The search's record before the walk.
fn new_search(q: &ChainQuery) -> ChainSearch {
    ChainSearch {
        roots: ROOTS,
        precision: TYPED,
        max_pause_seconds: q.max_pause.as_secs_f64(),
        max_depth: q.max_depth,
        paused_seconds: 0.0,
        walk_within_pause: false,
        pause_failed: None,
        unavailable: None,
        walk: WalkStats::default(),
    }
}

/// [`search_chains`] with the binary's heap model already read (reading it scans the DWARF): for a caller that
/// walks one binary's heap many times.
pub fn search_chains_in(
    q: &ChainQuery,
    model: &HeapModel,
    allocation_in: &mut dyn FnMut(u64, u64) -> Option<(u64, String)>,
) -> ChainsFound {
    let mut search = new_search(q);
    let (memory, bias) = (q.memory, q.load_bias);
    // Stopped before the goroutines' stacks are read: their frames then match the heap the walk sees.
    let mut pause = Pause::new(q.pid, q.max_pause);
    pause.stop();
    let closures = closure_roots_of(q);
    let (roots, typed, unreadable_roots) = program_roots(q, model, &mut pause);
    if !typed {
        search.precision = UNTYPED;
    }
    let mut hint = |base, size| {
        let (addr, name) = allocation_in(base, size)?;
        Some((type_named(&model.types, &name)?, addr.saturating_sub(base)))
    };
    let access = HeapAccess {
        memory,
        model,
        load_bias: bias,
    };
    let limits = WalkLimits::with_depth(q.max_depth);
    let (from_roots, mut walk) = find_chains(access, &roots, &q.targets, &mut hint, limits, &mut pause);
    let (from_closures, closure_walk) =
        find_chains(access, &closures, &q.closure_targets, &mut hint, limits, &mut pause);
    walk.add(&closure_walk);
    walk.unreadable_roots += unreadable_roots;
    search.walk_within_pause = pause.is_stopped();
    pause.resume();
    search.paused_seconds = pause.paused.as_secs_f64();
    search.pause_failed = pause.failed.take();
    search.walk = walk;
    ChainsFound {
        from_roots,
        from_closures,
        search,
    }
}

/// The closures of finalizers and cleanups not run, as roots walked on their own: one that captures its own
/// object is the whole story of a finalizer that cannot run, while a walk from every root would credit its object
/// to whichever root came first (conservatively scanned memory keeps stale pointers).
fn closure_roots_of(q: &ChainQuery) -> Vec<RootRegion> {
    closure_roots(q.closures.iter().map(|&(mechanism, funcval)| {
        let code = q.memory.word(funcval).unwrap_or(0);
        let name = q
            .binary
            .function_at(code.wrapping_sub(q.load_bias))
            .map_or_else(|| format!("{code:#x}"), |f| f.name.clone());
        (mechanism, name, funcval)
    }))
}

/// The program's roots, package-level variables first, then every goroutine's frames; whether the variables
/// are typed (DWARF), rather than the data and bss words the GC's bitmaps mark; and how many roots were unreadable
/// or left out (see [`WalkStats::unreadable_roots`]).
/// The program's roots. Reading a hundred thousand goroutines' frames takes seconds: the pause's budget is
/// checked at each goroutine, so that the target is not stopped past it while they are read.
fn program_roots(q: &ChainQuery, model: &HeapModel, pause: &mut Pause) -> (Vec<RootRegion>, bool, u64) {
    let bias = q.load_bias;
    let typed = !model.globals.is_empty();
    let (mut roots, skipped) = if typed {
        (global_roots(&model.globals, bias), 0)
    } else {
        data_roots(&model.data_regions, bias)
    };
    let (stacks, unreadable) = goroutine_roots(
        q.memory,
        model,
        bias,
        |g| {
            pause.check();
            goroutine(q, g)
        },
        |pc| q.binary.function_at(pc.wrapping_sub(bias)).map(|f| f.name.clone()),
        |pc| q.binary.frame_pointers(pc),
    );
    roots.extend(stacks);
    (roots, typed, skipped + unreadable)
}

/// A goroutine as a root: None for a `g` kept for reuse (no stack to speak of).
fn goroutine(q: &ChainQuery, g: u64) -> Option<Goroutine> {
    let (memory, runtime) = (q.memory, q.binary.layout());
    let status = goroutine_status(memory, runtime, g)?;
    if status == gstatus::IDLE || status == gstatus::DEAD {
        return None;
    }
    let id = memory.word(g.checked_add(runtime.goid_offset)?)?;
    // waitsince is nanotime(), CLOCK_MONOTONIC like ours; 0 until a GC cycle saw the goroutine waiting.
    let since = memory
        .word(g.checked_add(runtime.g_waitsince)?)
        .filter(|&t| t != 0 && status == gstatus::WAITING);
    Some(Goroutine {
        id,
        state: status_text(memory, runtime, g, status),
        running: status == gstatus::RUNNING,
        blocked_ms: since.map(|t| q.now_ns.saturating_sub(t) / 1_000_000),
    })
}
