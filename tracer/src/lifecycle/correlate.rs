//! Correlating the event stream: allocations go to their site and into the lifecycle engine,
//! GC cycle ends and span sweeps age and free them, and every goroutine's stack tells whether
//! creating frames have returned.

use std::collections::HashMap;

use serde::Serialize;

use crate::{
    events::{Finalization, Made, Step, TraceEvent},
    gobin::symbolize::is_runtime_function,
    gobin::{CleanupFunction, CleanupLayout, RuntimeLayout},
    heap::goroutines::goroutine_state,
    lifecycle::creating_frames::CreatingFrames,
    lifecycle::evidence::MemoryEvidence,
    lifecycle::finalizers::{
        diagnose, Blocked, FinalizerSection, Finalizers, Mechanism, NeverRan, NeverRanRow, RunnerGoroutine,
    },
    lifecycle::retention::{retained_rows, RetainedRow},
    lifecycle::sites::{frame_row, site_id, Resolve, SiteTable},
    lifecycle::{Alloc, Distributions, Lifecycle, LifecycleConfig, SweptSpan},
    memory::Memory,
    probes::sampling::{allocations_per_sample, RateChange, SampleRates},
};

/// A finalizer or cleanup counts as blocked once others queued after it started have waited this long.
const BLOCKED_AFTER_NS: u64 = 50_000_000;
/// The finalizer goroutine's wait reason when it is idle.
const FINALIZER_IDLE: &str = "finalizer wait";
/// Histogram buckets: lifetimes from a millisecond to an hour, sizes from a tiny object to 1 MiB.
const LIFETIME_BOUNDS_S: &[f64] = &[0.001, 0.01, 0.1, 1.0, 10.0, 60.0, 600.0, 3600.0];
const SIZE_BOUNDS: &[f64] = &[16.0, 64.0, 256.0, 1024.0, 4096.0, 16384.0, 65536.0, 262144.0, 1048576.0];

/// The registering stack from its first non-runtime frame (the caller of SetFinalizer) outwards.
fn registration_site(stack: &[u64], names: &mut dyn Resolve) -> Vec<u64> {
    let from = stack
        .iter()
        .skip(1)
        .position(|&pc| {
            names
                .position(pc.wrapping_sub(1))
                .is_some_and(|f| !is_runtime_function(&f.function))
        })
        .map_or(stack.len(), |i| i + 1);
    stack[from..].iter().take(6).copied().collect()
}

/// How a finalizer section names functions and times events.
struct Naming<'a> {
    memory: &'a dyn Memory,
    now_ns: u64,
}

impl Naming<'_> {
    fn seconds_since(&self, t: u64) -> f64 {
        self.now_ns.saturating_sub(t) as f64 / 1e9
    }

    /// The function a `*funcval` calls.
    fn function(&self, funcval: u64, names: &mut dyn Resolve) -> String {
        self.memory
            .word(funcval)
            .and_then(|code| names.position(code))
            .map_or_else(|| format!("? (funcval {funcval:#x})"), |p| p.function.clone())
    }
}

/// A finalized object's type: from the registration's `*T`, else the object's type as allocated.
fn object_type(ptr_type: u64, alloc_type: u64, names: &mut dyn Resolve) -> String {
    let name = if ptr_type != 0 {
        names
            .go_type(ptr_type)
            .map(|t| t.name.trim_start_matches('*').to_string())
    } else {
        names.go_type(alloc_type).map(|t| t.name.clone())
    };
    name.unwrap_or_else(|| "?".to_string())
}

/// Storage allocated under a constructor that has not returned yet, per goroutine (at most this
/// many; beyond it the constructor's record was lost and the oldest are dropped).
const MAX_PENDING: usize = 4096;

/// What the lifecycle engine saw of the target's GC cycles, for the report.
#[derive(Clone, Debug, Default, Serialize)]
pub struct GcInfo {
    /// K: completed GC cycles an object must survive to count as retained.
    pub retain_cycles: u32,
    /// Mark terminations seen while tracing, and the target's own numbers of the first and last.
    pub cycles_seen: u64,
    pub first_cycle: Option<u64>,
    pub last_cycle: Option<u64>,
    /// Spans whose sweep was seen (how freed objects are found).
    pub spans_swept: u64,
    /// Objects tracked for lifetimes at the end (alive as far as the sweeps tell), their bytes,
    /// and objects dropped by the memory bound.
    pub objects_tracked: usize,
    pub tracked_bytes: u64,
    pub objects_evicted: u64,
    /// Sites with objects alive after K cycles whose creating frame was still on its goroutine's
    /// stack at its last record: not retained by definition.
    pub sites_with_active_frames: usize,
}

pub struct Correlator {
    pub sites: SiteTable,
    lifecycle: Lifecycle,
    frames: CreatingFrames,
    /// Heap blocks of a slice or map under construction: they join the constructor's site when
    /// its record (which follows them on the same goroutine) arrives.
    pending: HashMap<u64, Vec<Alloc>>,
    finalizers: Finalizers,
    cleanups: Option<CleanupLayout>,
    cycles_seen: u64,
    first_cycle: Option<u64>,
    spans_swept: u64,
    /// Sampled mode: the target's `MemProfileRate` its records were taken at.
    sample_rates: SampleRates,
}

impl Correlator {
    pub fn new(cfg: LifecycleConfig, cleanups: Option<CleanupLayout>) -> Self {
        Self {
            sites: SiteTable::default(),
            lifecycle: Lifecycle::new(cfg),
            frames: CreatingFrames::default(),
            pending: HashMap::new(),
            finalizers: Finalizers::new(cleanups.is_some_and(|c| c.runs_on_finalizer_goroutine())),
            cleanups,
            cycles_seen: 0,
            first_cycle: None,
            spans_swept: 0,
            sample_rates: SampleRates::default(),
        }
    }

    /// Sampled mode: the rates the runtime samples at, which scale samples into estimates.
    pub fn set_sample_rates(&mut self, rates: SampleRates) {
        self.sample_rates = rates;
    }

    /// Sampled mode: the governor changed the rate at `at_ns` (CLOCK_MONOTONIC).
    pub fn sample_rate_changed(&mut self, change: &RateChange, at_ns: u64) {
        self.sample_rates.change(change, at_ns);
    }

    pub fn record(&mut self, ev: &TraceEvent, names: &mut dyn Resolve) {
        match ev {
            TraceEvent::Alloc(a) => self.allocation(Made::Allocation(a), names),
            TraceEvent::Constructor(c) => self.allocation(Made::Constructor(c), names),
            TraceEvent::Sampled(s) => self.allocation(Made::Sample(s), names),
            TraceEvent::Finalization(f) => self.finalization(f, names),
            TraceEvent::CycleEnd { cycle, ktime_ns } => {
                // The entry probe fires again when the function's stack check grows the stack.
                if self.lifecycle.last_cycle().is_some_and(|last| *cycle <= last) {
                    return;
                }
                self.lifecycle.on_cycle_end(*cycle, *ktime_ns);
                self.cycles_seen += 1;
                self.first_cycle.get_or_insert(*cycle);
            }
            TraceEvent::SampleFreed { object, ktime_ns } => self.lifecycle.on_free(*object, *ktime_ns),
            TraceEvent::SpanSwept(s) => {
                let span = SweptSpan {
                    base: s.base,
                    elemsize: s.elemsize,
                    nelems: s.nelems,
                    marks: &s.marks,
                };
                self.lifecycle.on_span_swept(&span, s.ktime_ns);
                self.spans_swept += 1;
            }
        }
    }

    /// A finalizer or cleanup event: the lifecycle engine learns which objects have finalizers,
    /// the finalizer state machine the rest.
    fn finalization(&mut self, ev: &Finalization, names: &mut dyn Resolve) {
        if let Step::FinalizerSet { ptr_type, .. } = ev.step {
            names.go_type(ptr_type);
        }
        self.frames.observe(ev.origin.goid, &ev.origin.stack);
        // The object's type as allocated, while it is alive (cleanups get no type).
        let alloc_type = ev
            .step
            .object()
            .and_then(|object| self.lifecycle.object_containing(object))
            .filter(|o| site_id::is_head(o.site))
            .and_then(|o| self.sites.object_type(o.site));
        match ev.step {
            Step::FinalizerSet { object, .. } => self.lifecycle.on_finalizer(object, true),
            Step::FinalizerRemoved { object } => self.lifecycle.on_finalizer(object, false),
            _ => {}
        }
        let alloc_type = alloc_type.unwrap_or(0);
        match self.with_cleanup_function(ev.step, names.memory()) {
            Some(step) => self.finalizers.record(&Finalization { step, ..ev.clone() }, alloc_type),
            None => self.finalizers.record(ev, alloc_type),
        }
    }

    /// A cleanup registration whose record has only its handle, with the cleanup's `*funcval`
    /// read now, while the handle (AddCleanup's wrapper closure) is surely alive.
    fn with_cleanup_function(&self, step: Step, memory: &dyn Memory) -> Option<Step> {
        let CleanupFunction::CapturedByHandle { by_reference } = self.cleanups?.function else {
            return None;
        };
        let Step::CleanupSet { object, handle, .. } = step else {
            return None;
        };
        let capture = memory.word(handle.checked_add(8)?)?;
        let funcval = if by_reference { memory.word(capture)? } else { capture };
        Some(Step::CleanupSet {
            object,
            handle,
            funcval,
        })
    }

    fn allocation(&mut self, ev: Made<'_>, names: &mut dyn Resolve) {
        // Resolve the type now, while the process (and any type the runtime made) still exists.
        names.go_type(ev.type_ptr());
        let origin = ev.origin();
        self.frames.observe(origin.goid, &origin.stack);
        let alloc = Alloc {
            addr: ev.address(),
            size: ev.bytes(),
            site: 0,
            born_cycle: origin.gc_cycle,
            time_ns: origin.ktime_ns,
        };
        let weight = match ev {
            Made::Sample(s) => {
                s.samples.max(1) as f64 * allocations_per_sample(s.size, self.sample_rates.at(origin.ktime_ns))
            }
            _ => 1.0,
        };
        let hit = self.sites.add_weighted(ev, weight, names);
        let Some(hit) = hit else {
            let pending = self.pending.entry(origin.goid).or_default();
            if pending.len() >= MAX_PENDING {
                pending.remove(0);
            }
            pending.push(alloc);
            return;
        };
        if let Made::Constructor(c) = ev {
            let blocks = self.pending.remove(&origin.goid).unwrap_or_default();
            // The head is the block the constructor returned (a slice's array, a map's header);
            // a map whose header lives on the caller's stack has none, so its first block stands in.
            let head = blocks.iter().position(|a| a.addr == c.result).unwrap_or(0);
            for (i, a) in blocks.into_iter().enumerate() {
                let site = if i == head { hit.site } else { site_id::parts(hit.site) };
                self.lifecycle.on_alloc(Alloc { site, ..a });
            }
        } else {
            self.lifecycle.on_alloc(Alloc {
                site: hit.site,
                ..alloc
            });
        }
        if let Some(i) = hit.frame_index {
            self.frames
                .created(hit.site, origin.goid, &origin.stack, i, origin.ktime_ns);
        }
    }

    /// Lifetimes of freed objects and sizes of allocations, over the session.
    pub fn distributions(&self) -> Distributions {
        self.lifecycle.distributions(LIFETIME_BOUNDS_S, SIZE_BOUNDS)
    }

    pub fn gc_info(&self, target_exited: bool) -> GcInfo {
        let frame_running: std::collections::HashSet<u64> = self
            .lifecycle
            .retained_objects()
            .filter(|o| site_id::is_head(o.site) && !self.frames.returned(o.site, o.time_ns, target_exited))
            .map(|o| o.site)
            .collect();
        GcInfo {
            retain_cycles: self.lifecycle.config().retain_cycles,
            cycles_seen: self.cycles_seen,
            first_cycle: self.first_cycle,
            last_cycle: self.lifecycle.last_cycle(),
            spans_swept: self.spans_swept,
            objects_tracked: self.lifecycle.tracked(),
            tracked_bytes: self.lifecycle.sites().map(|(_, s)| s.live_bytes).sum(),
            objects_evicted: self.lifecycle.evicted(),
            sites_with_active_frames: frame_running.len(),
        }
    }

    /// The Finalizers section; reads the target's memory (closures, the runner goroutines).
    pub fn finalizer_section(
        &self,
        names: &mut dyn Resolve,
        memory: &dyn Memory,
        layout: &RuntimeLayout,
        now_ns: u64,
    ) -> FinalizerSection {
        let naming = Naming { memory, now_ns };
        let runners = self.runners(names, &naming, layout);
        let never_ran = self.never_ran_rows(names, &naming, &runners);
        let f = &self.finalizers;
        FinalizerSection {
            counts: f.counts,
            pending: f.not_run().len() as u64,
            never_ran,
            runners,
        }
    }

    /// The goroutines that run finalizers and cleanups, each blocked or not.
    fn runners(&self, names: &mut dyn Resolve, naming: &Naming, layout: &RuntimeLayout) -> Vec<RunnerGoroutine> {
        let f = &self.finalizers;
        let idle = |m: Mechanism| match (m, layout.cleanups) {
            (Mechanism::Cleanup, Some(c)) => c.runner_idle,
            _ => FINALIZER_IDLE,
        };
        let mut runners: Vec<RunnerGoroutine> = Vec::new();
        for run in f.running.values() {
            let state = goroutine_state(naming.memory, layout, run.g);
            // Stuck: others were queued for it after it started the current one, and still wait.
            let waiting_since = f
                .not_run()
                .iter()
                .filter(|r| f.serves(run, r.what.mechanism))
                .filter_map(|r| r.queued_at())
                .filter(|&q| q >= run.since_ns)
                .min();
            let stuck = waiting_since.is_some_and(|q| naming.now_ns.saturating_sub(q) >= BLOCKED_AFTER_NS)
                && state.as_deref() != Some(idle(run.what.mechanism));
            runners.push(RunnerGoroutine {
                goid: run.goid,
                runs: match (f.cleanups_on_finalizer_goroutine, run.what.mechanism) {
                    (true, _) => "finalizers and cleanups",
                    (false, Mechanism::Finalizer) => "finalizers",
                    (false, Mechanism::Cleanup) => "cleanups",
                },
                state: state.unwrap_or_else(|| "unknown".into()),
                last_started: naming.function(run.what.function, names),
                last_started_kind: run.what.mechanism,
                last_started_seconds_ago: naming.seconds_since(run.since_ns),
                blocked: stuck.then(|| Blocked {
                    object_type: object_type(run.what.ptr_type, run.what.alloc_type, names),
                    blocked_seconds: naming.seconds_since(run.since_ns),
                    queue_depth: f.queue_depth(run),
                }),
            });
        }
        runners.sort_by_key(|r| r.goid);
        runners
    }

    /// The finalizers and cleanups that never ran after K cycles, grouped by mechanism, reason, registering site
    /// and function.
    fn never_ran_rows(
        &self,
        names: &mut dyn Resolve,
        naming: &Naming,
        runners: &[RunnerGoroutine],
    ) -> Vec<NeverRanRow> {
        let f = &self.finalizers;
        let k = u64::from(self.lifecycle.config().retain_cycles);
        let last = self.lifecycle.last_cycle().unwrap_or(0);
        let evidence = MemoryEvidence {
            lifecycle: &self.lifecycle,
            sites: &self.sites,
            memory: naming.memory,
        };
        let blocked = |m: Mechanism| {
            f.running
                .values()
                .any(|run| f.serves(run, m) && runners.iter().any(|r| r.goid == run.goid && r.blocked.is_some()))
        };
        let mut groups: HashMap<(Mechanism, NeverRan, u64, u64), NeverRanRow> = HashMap::new();
        for r in f.not_run() {
            let Some(reason) = diagnose(r, last.saturating_sub(r.cycle), k, blocked(r.what.mechanism), &evidence)
            else {
                continue;
            };
            let site = registration_site(&r.stack, names);
            let code = naming.memory.word(r.what.function).unwrap_or(r.what.function);
            let key = (r.what.mechanism, reason, site.first().copied().unwrap_or(0), code);
            let row = groups.entry(key).or_insert_with(|| NeverRanRow {
                kind: r.what.mechanism,
                reason,
                count: 0,
                object_type: object_type(r.what.ptr_type, r.what.alloc_type, names),
                function: naming.function(r.what.function, names),
                age_cycles: last.saturating_sub(r.cycle),
                age_seconds: naming.seconds_since(r.time_ns),
                registered_at: site.iter().map(|&pc| frame_row(pc, names)).collect(),
                held_by: None,
                objects: Vec::new(),
            });
            row.add(r.what.object);
        }
        let mut never_ran: Vec<NeverRanRow> = groups.into_values().collect();
        never_ran.sort_by_key(|r| (r.kind, r.reason, std::cmp::Reverse(r.count)));
        never_ran
    }

    /// The closures of the finalizers and cleanups registered and not started: (mechanism, `*funcval`).
    pub fn unrun_closures(&self) -> Vec<(Mechanism, u64)> {
        self.finalizers
            .not_run()
            .iter()
            .map(|r| (r.what.mechanism, r.what.function))
            .filter(|&(_, f)| f != 0)
            .collect()
    }

    /// Up to `per_site` retained objects of each site (their main block: a map's header, not its storage).
    pub fn retained_objects(&self, per_site: usize) -> HashMap<u64, Vec<u64>> {
        let mut out: HashMap<u64, Vec<u64>> = HashMap::new();
        for o in self.lifecycle.retained_objects().filter(|o| site_id::is_head(o.site)) {
            let v = out.entry(o.site).or_default();
            if v.len() < per_site {
                v.push(o.addr);
            }
        }
        out
    }

    /// The tracked allocation in a heap slot (`base`, `size` bytes), as its site names its type, and its address:
    /// past the slot's start when the runtime put a malloc header there (Go 1.22+, objects over 512 B with
    /// pointers), or when a tiny block holds several.
    pub fn allocation_in(&self, base: u64, size: u64, names: &mut dyn Resolve) -> Option<(u64, String)> {
        let o = self
            .lifecycle
            .object_containing(base)
            .or_else(|| self.lifecycle.objects_in(base..base.saturating_add(size)).next())?;
        self.sites
            .row(site_id::site(o.site), names)
            .map(|r| (o.addr, r.type_name))
    }

    pub fn retained(&self, names: &mut dyn Resolve, target_exited: bool, now_ns: u64) -> Vec<RetainedRow> {
        retained_rows(&self.lifecycle, &self.sites, &self.frames, names, target_exited, now_ns)
    }
}
