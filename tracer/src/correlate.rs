//! Correlating the event stream: allocations go to their site and into the lifecycle engine,
//! GC cycle ends and span sweeps age and free them, and every goroutine's stack tells whether
//! creating frames have returned.

use std::collections::HashMap;

use tracer_common::RecordKind;

use crate::{
    events::{Event, TraceEvent},
    finalizers::{
        diagnose, BlockedFinalizer, Evidence, FinalizerGoroutine, FinalizerSection, Finalizers, NeverRan, NeverRanRow,
    },
    frames::CreatingFrames,
    gotype::Memory,
    symbolize::is_runtime_function,
    target::RuntimeLayout,
    lifecycle::{Alloc, Lifecycle, LifecycleConfig, SweptSpan},
    report::GcInfo,
    retention::{retained_rows, RetainedRow},
    sites::{frame_row, Resolve, SiteTable},
};

/// A finalizer counts as blocked once finalizers queued after it started have waited this long.
const BLOCKED_AFTER_NS: u64 = 50_000_000;
/// The finalizer goroutine's wait reason when it is idle.
const IDLE: &str = "finalizer wait";
/// Closure words scanned for a pointer back to the object (captured variables are few).
const CLOSURE_WORDS: u64 = 16;

fn read_word(memory: &dyn Memory, addr: u64) -> Option<u64> {
    let mut b = [0u8; 8];
    memory.read(addr, &mut b).ok()?;
    Some(u64::from_le_bytes(b))
}

/// A goroutine's wait reason while it waits, else "running" or "runnable".
fn goroutine_state(memory: &dyn Memory, layout: &RuntimeLayout, g: u64) -> Option<String> {
    const RUNNABLE: u32 = 1;
    const RUNNING: u32 = 2;
    const WAITING: u32 = 4;
    let mut status = [0u8; 4];
    memory.read(g + layout.g_atomicstatus, &mut status).ok()?;
    // _Gscan (0x1000) may be set while the GC scans the stack.
    match u32::from_le_bytes(status) & !0x1000 {
        RUNNABLE => Some("runnable".into()),
        RUNNING => Some("running".into()),
        WAITING => {
            let mut reason = [0u8; 1];
            memory.read(g + layout.g_waitreason, &mut reason).ok()?;
            Some(layout.wait_reason(reason[0]).map_or_else(|| format!("waiting ({})", reason[0]), str::to_string))
        }
        other => Some(format!("status {other}")),
    }
}

/// The registering stack from its first non-runtime frame (the caller of SetFinalizer) outwards.
fn registration_site(stack: &[u64], names: &mut dyn Resolve) -> Vec<u64> {
    let from = stack
        .iter()
        .skip(1)
        .position(|&pc| names.frame(pc.wrapping_sub(1)).is_some_and(|f| !is_runtime_function(&f.function)))
        .map_or(stack.len(), |i| i + 1);
    stack[from..].iter().take(6).copied().collect()
}

/// Object sizes and tiny blocks from the lifecycle engine, closures from the target's memory.
struct MemoryEvidence<'a> {
    lifecycle: &'a Lifecycle,
    memory: &'a dyn Memory,
}

impl Evidence for MemoryEvidence<'_> {
    fn live_size(&self, object: u64) -> Option<u64> {
        self.lifecycle.object_containing(object).map(|o| o.size)
    }

    fn others_in_block(&self, block: u64, object: u64) -> bool {
        self.lifecycle.objects_in(block..block + 16).any(|o| o.addr != object)
    }

    fn points_to_pointer_free(&self, ptr_type: u64) -> bool {
        crate::gotype::points_to_pointer_free(self.memory, ptr_type).unwrap_or(false)
    }

    fn closure_refers_to(&self, funcval: u64, object: u64, size: u64) -> bool {
        // A funcval is the code pointer, then the captured variables.
        let words = self.lifecycle.object_containing(funcval).map_or(CLOSURE_WORDS, |o| (o.size / 8).min(CLOSURE_WORDS));
        (1..words).filter_map(|i| read_word(self.memory, funcval + 8 * i)).any(|w| (object..object + size.max(1)).contains(&w))
    }
}

/// Storage allocated under a constructor that has not returned yet, per goroutine (at most this
/// many; beyond it the constructor's record was lost and the oldest are dropped).
const MAX_PENDING: usize = 4096;

/// Lifecycle site id of the blocks a slice or map value owns besides its head (a map's buckets or
/// groups, its directory): their bytes count for the value's site, their number does not, so a
/// site counts values, as the allocation table does.
pub const PARTS: u64 = 1 << 63;

pub struct Correlator {
    pub sites: SiteTable,
    lifecycle: Lifecycle,
    frames: CreatingFrames,
    /// Heap blocks of a slice or map under construction: they join the constructor's site when
    /// its record (which follows them on the same goroutine) arrives.
    pending: HashMap<u64, Vec<Alloc>>,
    finalizers: Finalizers,
    cycles_seen: u64,
    first_cycle: Option<u64>,
    spans_swept: u64,
}

impl Correlator {
    pub fn new(cfg: LifecycleConfig) -> Self {
        Self {
            sites: SiteTable::default(),
            lifecycle: Lifecycle::new(cfg),
            frames: CreatingFrames::default(),
            pending: HashMap::new(),
            finalizers: Finalizers::default(),
            cycles_seen: 0,
            first_cycle: None,
            spans_swept: 0,
        }
    }

    pub fn record(&mut self, ev: &TraceEvent, names: &mut dyn Resolve) {
        match ev {
            TraceEvent::Alloc(ev) => self.allocation(ev, names),
            TraceEvent::Object(ev) => {
                names.go_type(ev.type_ptr);
                self.frames.observe(ev.goid, &ev.stack);
                self.finalizers.record(ev);
            }
            TraceEvent::CycleEnd { cycle, ktime_ns } => {
                // The entry probe fires again when the function's stack check grows the stack.
                if self.lifecycle.last_cycle().is_some_and(|last| *cycle <= last) {
                    return;
                }
                self.lifecycle.on_cycle_end(*cycle, *ktime_ns);
                self.cycles_seen += 1;
                self.first_cycle.get_or_insert(*cycle);
            }
            TraceEvent::SpanSwept(s) => {
                let span = SweptSpan { base: s.base, elemsize: s.elemsize, nelems: s.nelems, marks: &s.marks };
                self.lifecycle.on_span_swept(&span, s.ktime_ns);
                self.spans_swept += 1;
            }
        }
    }

    fn allocation(&mut self, ev: &Event, names: &mut dyn Resolve) {
        // Resolve the type now, while the process (and any type the runtime made) still exists.
        names.go_type(ev.type_ptr);
        self.frames.observe(ev.goid, &ev.stack);
        let alloc = Alloc { addr: ev.ptr, size: ev.size, site: 0, born_cycle: ev.gc_cycle, time_ns: ev.ktime_ns };
        let hit = self.sites.add(ev, names);
        let Some(hit) = hit else {
            let pending = self.pending.entry(ev.goid).or_default();
            if pending.len() >= MAX_PENDING {
                pending.remove(0);
            }
            pending.push(alloc);
            return;
        };
        if ev.kind == RecordKind::Container {
            let blocks = self.pending.remove(&ev.goid).unwrap_or_default();
            // The head is the block the constructor returned (a slice's array, a map's header);
            // a map whose header lives on the caller's stack has none, so its first block stands in.
            let head = blocks.iter().position(|a| a.addr == ev.ptr).unwrap_or(0);
            for (i, a) in blocks.into_iter().enumerate() {
                let site = if i == head { hit.site } else { hit.site | PARTS };
                self.lifecycle.on_alloc(Alloc { site, ..a });
            }
        } else {
            self.lifecycle.on_alloc(Alloc { site: hit.site, ..alloc });
        }
        if let Some(i) = hit.frame_index {
            self.frames.created(hit.site, ev.goid, &ev.stack, i, ev.ktime_ns);
        }
    }

    pub fn gc_info(&self, target_exited: bool) -> GcInfo {
        let frame_running: std::collections::HashSet<u64> = self
            .lifecycle
            .retained_objects()
            .filter(|o| o.site & PARTS == 0 && !self.frames.returned(o.site, o.time_ns, target_exited))
            .map(|o| o.site)
            .collect();
        GcInfo {
            retain_cycles: self.lifecycle.config().retain_cycles,
            cycles_seen: self.cycles_seen,
            first_cycle: self.first_cycle,
            last_cycle: self.lifecycle.last_cycle(),
            spans_swept: self.spans_swept,
            objects_tracked: self.lifecycle.tracked(),
            objects_evicted: self.lifecycle.evicted(),
            sites_with_active_frames: frame_running.len(),
        }
    }

    /// The Finalizers section; reads the target's memory (closures, the finalizer goroutine).
    pub fn finalizer_section(
        &self,
        names: &mut dyn Resolve,
        memory: &dyn Memory,
        layout: &RuntimeLayout,
        now_ns: u64,
    ) -> FinalizerSection {
        let f = &self.finalizers;
        let k = u64::from(self.lifecycle.config().retain_cycles);
        let last = self.lifecycle.last_cycle().unwrap_or(0);
        let evidence = MemoryEvidence { lifecycle: &self.lifecycle, memory };
        let function_of = |funcval: u64, names: &mut dyn Resolve| {
            read_word(memory, funcval)
                .and_then(|code| names.frame(code))
                .map_or_else(|| format!("? (funcval {funcval:#x})"), |fr| fr.function.clone())
        };
        let object_type = |ptr_type: u64, names: &mut dyn Resolve| {
            names.go_type(ptr_type).map_or_else(|| "?".to_string(), |t| t.name.trim_start_matches('*').to_string())
        };

        // Stuck: a finalizer started, and others were queued after it began and still wait.
        let blocked = f.running.as_ref().filter(|run| {
            let waiting_since = f.not_run().iter().filter_map(|r| r.queued_at()).filter(|&q| q >= run.since_ns).min();
            let state = goroutine_state(memory, layout, run.g);
            waiting_since.is_some_and(|q| now_ns.saturating_sub(q) >= BLOCKED_AFTER_NS) && state.as_deref() != Some(IDLE)
        });
        let blocked = blocked.map(|run| BlockedFinalizer {
            finalizer: function_of(run.funcval, names),
            object_type: object_type(run.ptr_type, names),
            state: goroutine_state(memory, layout, run.g).unwrap_or_else(|| "unknown".into()),
            blocked_seconds: now_ns.saturating_sub(run.since_ns) as f64 / 1e9,
            queue_depth: f.queue_depth(),
        });

        let goroutine = f.running.as_ref().map(|run| FinalizerGoroutine {
            state: goroutine_state(memory, layout, run.g).unwrap_or_else(|| "unknown".into()),
            last_started: function_of(run.funcval, names),
            last_started_seconds_ago: now_ns.saturating_sub(run.since_ns) as f64 / 1e9,
        });

        let mut groups: HashMap<(NeverRan, u64, u64), NeverRanRow> = HashMap::new();
        for r in f.not_run() {
            let Some(reason) = diagnose(r, last.saturating_sub(r.cycle), k, blocked.is_some(), &evidence) else { continue };
            let site = registration_site(&r.stack, names);
            let code = read_word(memory, r.funcval).unwrap_or(r.funcval);
            let row = groups.entry((reason, site.first().copied().unwrap_or(0), code)).or_insert_with(|| NeverRanRow {
                reason,
                count: 0,
                object_type: object_type(r.ptr_type, names),
                finalizer: function_of(r.funcval, names),
                age_cycles: last.saturating_sub(r.cycle),
                age_seconds: now_ns.saturating_sub(r.time_ns) as f64 / 1e9,
                registered_at: site.iter().map(|&pc| frame_row(pc, names)).collect(),
            });
            row.count += 1;
        }
        let mut never_ran: Vec<NeverRanRow> = groups.into_values().collect();
        never_ran.sort_by(|a, b| (a.reason, std::cmp::Reverse(a.count)).cmp(&(b.reason, std::cmp::Reverse(b.count))));
        FinalizerSection { counts: f.counts, pending: f.not_run().len() as u64, never_ran, blocked, goroutine }
    }

    pub fn retained(&self, names: &mut dyn Resolve, target_exited: bool, now_ns: u64) -> Vec<RetainedRow> {
        retained_rows(&self.lifecycle, &self.sites, &self.frames, names, target_exited, now_ns)
    }
}
