//! Correlating the event stream: allocations go to their site and into the lifecycle engine,
//! GC cycle ends and span sweeps age and free them, and every goroutine's stack tells whether
//! creating frames have returned.

use std::collections::HashMap;

use tracer_common::RecordKind;

use crate::{
    events::{Event, TraceEvent},
    frames::CreatingFrames,
    lifecycle::{Alloc, Lifecycle, LifecycleConfig, SweptSpan},
    report::GcInfo,
    retention::{retained_rows, RetainedRow},
    sites::{Resolve, SiteTable},
};

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
            cycles_seen: 0,
            first_cycle: None,
            spans_swept: 0,
        }
    }

    pub fn record(&mut self, ev: &TraceEvent, names: &mut dyn Resolve) {
        match ev {
            TraceEvent::Alloc(ev) => self.allocation(ev, names),
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
            self.frames.created(hit.site, ev.goid, &ev.stack, i);
        }
    }

    pub fn gc_info(&self, target_exited: bool) -> GcInfo {
        let returned_state = |site| self.frames.state(site, target_exited) == crate::frames::FrameState::Returned;
        GcInfo {
            retain_cycles: self.lifecycle.config().retain_cycles,
            cycles_seen: self.cycles_seen,
            first_cycle: self.first_cycle,
            last_cycle: self.lifecycle.last_cycle(),
            spans_swept: self.spans_swept,
            objects_tracked: self.lifecycle.tracked(),
            objects_evicted: self.lifecycle.evicted(),
            sites_with_active_frames: self
                .lifecycle
                .sites()
                .filter(|(site, s)| site & PARTS == 0 && s.retained_count > 0 && !returned_state(*site))
                .count(),
        }
    }

    pub fn retained(&self, names: &mut dyn Resolve, target_exited: bool, now_ns: u64) -> Vec<RetainedRow> {
        retained_rows(&self.lifecycle, &self.sites, &self.frames, names, target_exited, now_ns)
    }
}
