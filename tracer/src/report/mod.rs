//! The final report: what was traced, and the allocation-site table, as text or one JSON document.

mod dot;
mod flamegraph;
mod pprof;

pub use crate::heap::search::ChainSearch;
pub use crate::lifecycle::GcInfo;
use crate::units::human_bytes;
use std::io::{self, Write};

use serde::Serialize;

use crate::{
    heap::EntryPart,
    lifecycle::finalizers::FinalizerSection,
    lifecycle::retention::RetainedRow,
    lifecycle::sites::{SiteRow, Totals},
};

#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub maptrace_version: &'static str,
    pub target: TargetInfo,
    /// "full": every allocation is trapped, counts are exact; "sampled": the runtime's samples,
    /// counts are estimates (see `sampling`).
    pub mode: crate::probes::sampling::Mode,
    /// Sampled mode: the rate, the trap budget and how counts were scaled.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sampling: Option<crate::probes::sampling::SamplingInfo>,
    pub duration_seconds: f64,
    pub ended_by: EndReason,
    pub probes: ProbeInfo,
    pub totals: Totals,
    /// Records the kernel could not queue (ring buffer full): counts above are short by these.
    pub lost_records: u64,
    pub sites: Vec<SiteRow>,
    pub gc: GcInfo,
    /// Sites whose objects outlive their creating frame by ≥ K GC cycles.
    pub retained: Vec<RetainedRow>,
    /// How the retained rows' `held_by` chains were searched (None: not searched).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub chains: Option<ChainSearch>,
    pub finalizers: FinalizerSection,
    /// Lifetimes of the objects seen dying, and allocation sizes, as histogram buckets.
    pub distributions: crate::lifecycle::Distributions,
}

/// Why tracing stopped, or that it has not.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum EndReason {
    /// `--duration` ran out.
    #[serde(rename = "duration")]
    Duration,
    /// SIGINT or SIGTERM.
    #[serde(rename = "interrupted")]
    Interrupted,
    /// The target exited: every creating frame of the remaining objects is gone.
    #[serde(rename = "target exited")]
    TargetExited,
    /// The agent's report of a target it still traces.
    #[serde(rename = "running")]
    Running,
}

impl EndReason {
    pub fn as_str(self) -> &'static str {
        match self {
            EndReason::Duration => "duration",
            EndReason::Interrupted => "interrupted",
            EndReason::TargetExited => "target exited",
            EndReason::Running => "running",
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct TargetInfo {
    pub pid: u32,
    pub binary: String,
    pub go_version: String,
    pub experiments: Vec<String>,
    /// No symbol table: names come from pclntab, struct offsets from the version table.
    pub stripped: bool,
}

#[derive(Clone, Debug, Serialize)]
pub struct ProbeInfo {
    pub functions: Vec<String>,
    pub uprobes: usize,
    pub attach_seconds: f64,
}

impl Report {
    pub fn write_json(&self, w: &mut dyn Write) -> io::Result<()> {
        serde_json::to_writer_pretty(&mut *w, self)?;
        writeln!(w)
    }

    /// Sampled mode's header: the rate, what the budget did, and that counts are estimates.
    fn write_sampling(&self, w: &mut dyn Write, sm: &crate::probes::sampling::SamplingInfo) -> io::Result<()> {
        let rate = match (sm.rate.memprofilerate, sm.rate.set_by_maptrace_from) {
            (Some(0), _) => {
                return writeln!(
                    w,
                    "sampled mode: the target's runtime.MemProfileRate is 0 (it never uses runtime.MemProfile), so its runtime \
                     samples no allocations: only GC cycles and finalizers are traced. Set a rate with \
                     --sample-rate BYTES --write-memprofilerate, or use --mode full"
                );
            }
            (Some(r), Some(was)) => {
                format!("MemProfileRate {r} bytes (set by maptrace, was {was}; restored at detach)")
            }
            (Some(r), None) => format!("MemProfileRate {r} bytes (the target's own)"),
            (None, _) => "MemProfileRate unknown (counts are samples, unscaled)".into(),
        };
        let rate = match sm.rate.governor {
            Some(g) if g.changes > 0 => format!(
                "{rate}, governed to the trap budget: {} changes, at most {} bytes, never below {}",
                g.changes, g.highest, g.floor
            ),
            _ => rate,
        };
        writeln!(
            w,
            "sampled mode: {rate}; {} samples, {} thinned by the trap budget ({}/s); counts are {}",
            sm.samples_seen, sm.samples_thinned, sm.budget_per_second, sm.scaling,
        )
    }

    pub fn write_text(&self, w: &mut dyn Write) -> io::Result<()> {
        let t = &self.target;
        writeln!(
            w,
            "maptrace {}: PID {} {} ({}{}), {} mode, {:.1} s ({}), {} probes on {} functions",
            self.maptrace_version,
            t.pid,
            t.binary,
            t.go_version,
            if t.stripped { ", stripped" } else { "" },
            self.mode.as_str(),
            self.duration_seconds,
            self.ended_by.as_str(),
            self.probes.uprobes,
            self.probes.functions.len(),
        )?;
        writeln!(
            w,
            "{} heap allocations, {} in all; {} records, {} lost{}",
            self.totals.heap_allocations,
            human_bytes(self.totals.heap_bytes),
            self.totals.records,
            self.lost_records,
            if self.lost_records > 0 {
                " (ring buffer full: counts are short by that much)"
            } else {
                ""
            },
        )?;
        if let Some(sm) = &self.sampling {
            self.write_sampling(w, sm)?;
        }
        if self.sites.is_empty() {
            writeln!(w, "\nno allocations seen")?;
        } else {
            writeln!(w, "\nAllocation sites")?;
            write_table(w, &self.sites, usize::MAX)?;
        }
        self.write_retained(w)?;
        self.write_finalizers(w)
    }

    fn write_finalizers(&self, w: &mut dyn Write) -> io::Result<()> {
        let f = &self.finalizers;
        let c = &f.counts;
        writeln!(
            w,
            "\nFinalizers: {} registered, {} removed, {} queued, {} started; cleanups: {} registered, {} queued, {} started; {} pending",
            c.registered, c.removed, c.queued, c.started, c.cleanups_registered, c.cleanups_queued, c.cleanups_started, f.pending
        )?;
        for g in &f.runners {
            let state = if g.state.ends_with(" wait") && g.blocked.is_none() {
                format!("idle ({})", g.state)
            } else {
                g.state.clone()
            };
            writeln!(
                w,
                "goroutine {} (runs {}): {}; last started {} {} {:.1} s ago",
                g.goid,
                g.runs,
                state,
                g.last_started_kind.as_str(),
                g.last_started,
                g.last_started_seconds_ago
            )?;
            if let Some(b) = &g.blocked {
                writeln!(
                    w,
                    "  blocked for {:.1} s in {} {} (object {}, state: {}), {} queued behind it",
                    b.blocked_seconds,
                    g.last_started_kind.as_str(),
                    g.last_started,
                    b.object_type,
                    g.state,
                    b.queue_depth
                )?;
            }
        }
        if f.never_ran.is_empty() {
            return writeln!(
                w,
                "no finalizer or cleanup left unrun after ≥ {} GC cycles",
                self.gc.retain_cycles
            );
        }
        for r in &f.never_ran {
            let site = r.registered_at.first().map_or("(runtime)".to_string(), |s| {
                format!("{} {}:{}", s.function, s.file, s.line)
            });
            writeln!(
                w,
                "{:>6} {} never ran: {} — {} with {} {}, {} cycles ({:.1} s) after {} at {}",
                r.count,
                r.kind.as_str(),
                r.reason.describe(),
                r.object_type,
                r.kind.as_str(),
                r.function,
                r.age_cycles,
                r.age_seconds,
                match r.kind {
                    crate::lifecycle::finalizers::Mechanism::Finalizer => "SetFinalizer",
                    crate::lifecycle::finalizers::Mechanism::Cleanup => "AddCleanup",
                },
                site
            )?;
            if let Some(h) = &r.held_by {
                writeln!(w, "{:>8}held by {}", "", held_by_text(h))?;
            }
        }
        Ok(())
    }

    fn write_retained(&self, w: &mut dyn Write) -> io::Result<()> {
        let g = &self.gc;
        let cycles = match (g.first_cycle, g.last_cycle) {
            (Some(a), Some(b)) => format!(
                "GC cycles {a}–{b} seen ({} mark terminations, {} spans swept)",
                g.cycles_seen, g.spans_swept
            ),
            _ => "no GC cycle completed while tracing".to_string(),
        };
        writeln!(
            w,
            "\nRetained: alive after ≥ {} GC cycles and after the creating frame returned; {cycles}",
            g.retain_cycles
        )?;
        if g.objects_evicted > 0 {
            writeln!(
                w,
                "({} objects dropped by the tracking bound: retained counts are lower bounds)",
                g.objects_evicted
            )?;
        }
        if self.retained.is_empty() {
            writeln!(w, "nothing retained")?;
        } else {
            let type_width = self
                .retained
                .iter()
                .map(|r| r.type_name.chars().count())
                .max()
                .unwrap_or(4)
                .clamp(4, 48);
            writeln!(
                w,
                "{:<6} {:>20} {:>20} {:>20}  {:>9}  {:<9}  {:<type_width$}  SITE",
                "KIND", "RETAINED", "LIVE", "ALLOCATED", "CYCLES", "TREND", "TYPE"
            )?;
            for r in &self.retained {
                let site = r.stack.first().map_or("(runtime)".to_string(), |s| {
                    format!("{} {}:{}", s.function, s.file, s.line)
                });
                writeln!(
                    w,
                    "{:<6} {:>20} {:>20} {:>20}  {:>9}  {:<9}  {:<type_width$}  {}",
                    r.kind.as_str(),
                    count_bytes(r.retained_count, r.retained_bytes),
                    count_bytes(r.live_count, r.live_bytes),
                    count_bytes(r.allocated_count, r.allocated_bytes),
                    format!("{}/{}", r.survived_cycles_p50, r.survived_cycles_max),
                    r.trend,
                    r.type_name,
                    site
                )?;
                let live: Vec<String> = r.live_by_cycle.iter().map(|(c, n, _)| format!("gc{c}:{n}")).collect();
                let samples = r
                    .samples
                    .map_or(String::new(), |n| format!("; estimated from {n} retained samples"));
                writeln!(
                    w,
                    "{:>8}live by cycle {}; oldest {:.1} s{samples}",
                    "",
                    live.join(" "),
                    r.oldest_age_seconds
                )?;
                for (i, h) in r.held_by.iter().chain(&r.also_held_by).enumerate() {
                    writeln!(
                        w,
                        "{:>8}{} {}",
                        "",
                        if i == 0 { "held by" } else { "also held by" },
                        held_by_text(h)
                    )?;
                    if let Some(d) = &h.diagnosis {
                        writeln!(w, "{:>8}diagnosis: {}", "", d.text)?;
                    }
                }
            }
            writeln!(w, "(CYCLES: cycles survived by the live objects, median/most)")?;
        }
        if let Some(c) = &self.chains {
            match &c.unavailable {
                Some(why) => writeln!(w, "(no reference chains: {why})")?,
                None => writeln!(
                    w,
                    "(held by: chains from {} ({} searched), {} objects ({} typed, {} by the runtime's bitmaps, the rest conservatively or pointer-free) / {} scanned in {:.3} s{}, {})",
                    c.roots,
                    c.walk.roots_searched,
                    c.walk.objects_scanned,
                    c.walk.typed_objects,
                    c.walk.bitmap_objects,
                    human_bytes(c.walk.bytes_scanned),
                    c.walk.seconds,
                    match (c.walk.cut_short, c.walk.depth_limited) {
                        (true, _) => ", cut short by the walk's limits".to_string(),
                        (false, 0) => String::new(),
                        (false, n) => format!(", {n} objects at --max-depth {} not scanned", c.max_depth),
                    },
                    pause_text(c)
                )?,
            }
        }
        if g.sites_with_active_frames > 0 {
            writeln!(
                w,
                "{} more site(s) have objects alive after ≥ {} cycles whose creating frame is still running",
                g.sites_with_active_frames, g.retain_cycles
            )?;
        }
        Ok(())
    }
}

/// A frame of a retained row's "stack" as the profile outputs draw it.
struct HolderFrame<'r> {
    name: String,
    file: &'r str,
    line: u32,
}

/// A retained row's objects held one way, as the profile outputs draw it: the frames, outermost first, and the
/// share of the row's count and bytes that goes to it.
struct HolderTower<'r> {
    frames: Vec<HolderFrame<'r>>,
    count: u64,
    bytes: u64,
}

/// What holds a retained row: a tower per chain shape the walk found, outermost first (the chain's root, then
/// each hop's object: `32 B main.Session (at .Buf)`), with the share of the row its objects are of those the
/// walk found a chain for; else its allocation stack, outermost caller first, with the whole row.
fn holder_towers(r: &RetainedRow) -> Vec<HolderTower<'_>> {
    let shapes = chain_shares(r);
    if shapes.is_empty() {
        let frames = r
            .stack
            .iter()
            .rev()
            .map(|f| HolderFrame {
                name: f.function.clone(),
                file: &f.file,
                line: f.line,
            })
            .collect();
        return vec![HolderTower {
            frames,
            count: r.retained_count,
            bytes: r.retained_bytes,
        }];
    }
    shapes
        .into_iter()
        .map(|(h, count, bytes)| HolderTower {
            frames: std::iter::once(HolderFrame {
                name: h.root.describe(),
                file: "",
                line: 0,
            })
            .chain(h.hops.iter().map(|hop| {
                let (object, at) = (hop_object(hop), hop_offset(hop));
                let name = if at.is_empty() {
                    object
                } else {
                    format!("{object} (at {at})")
                };
                HolderFrame {
                    name,
                    file: "",
                    line: 0,
                }
            }))
            .collect(),
            count,
            bytes,
        })
        .collect()
}

/// A retained row's chain shapes, each with its share of the row's count and bytes: the share its objects are of
/// those the walk found a chain for (rounded so that the shares add up to the row).
fn chain_shares(r: &RetainedRow) -> Vec<(&crate::heap::HeldBy, u64, u64)> {
    let shapes: Vec<&crate::heap::HeldBy> = r.held_by.iter().chain(&r.also_held_by).collect();
    let found = u128::from(shapes.iter().map(|h| h.objects).sum::<u64>().max(1));
    let upto = |total: u64, objects: u64| (u128::from(total) * u128::from(objects) / found) as u64;
    let mut before = 0;
    shapes
        .into_iter()
        .map(|h| {
            let after = before + h.objects;
            let share = |total| upto(total, after) - upto(total, before);
            let row = (h, share(r.retained_count), share(r.retained_bytes));
            before = after;
            row
        })
        .collect()
}

/// How long the walk stopped the target: `target stopped 1.2 ms`, `target not stopped (--max-pause 0)`.
fn pause_text(c: &ChainSearch) -> String {
    let ms = c.paused_seconds * 1e3;
    match &c.pause_failed {
        Some(why) => format!("target not stopped: {why}"),
        None if c.max_pause_seconds == 0.0 => "target not stopped (--max-pause 0)".into(),
        None if c.walk_within_pause => format!("target stopped {ms:.1} ms"),
        None => format!("target stopped {ms:.1} ms (all of --max-pause), then walked running"),
    }
}

/// `main.sessions (map[int]*main.Session) → 48 B map<int,*main.Session> → … → […].slots[…].elem (value for key
/// 17, 1 of 20 keys) → 32 B main.Session → .Buf → 4.0 KiB []uint8 (20 of 20 objects searched, precise)`: each
/// object reached, after the path (or offset) of the pointer to it and the map key it is the value of.
fn held_by_text(h: &crate::heap::HeldBy) -> String {
    let mut s = h.root.describe();
    for hop in &h.hops {
        let at = hop_offset(hop);
        if !at.is_empty() {
            s += &format!(" → {at}");
        }
        if let Some(e) = &hop.map_entry {
            let part = match e.part {
                EntryPart::Key => "key",
                EntryPart::Value => "value for key",
            };
            let of = if e.keys > 1 {
                format!(", 1 of {} keys", e.keys)
            } else {
                String::new()
            };
            s += &format!(" ({part} {}{of})", e.key);
        }
        s += &format!(" → {}", human_bytes(hop.size));
        if let Some(t) = &hop.type_name {
            s += &format!(" {t}");
        }
    }
    let unreached = if h.unreached > 0 {
        format!(", {} not reached", h.unreached)
    } else {
        String::new()
    };
    let precision = if h.precise { "precise" } else { "conservative" };
    s + &format!(
        "  ({} of {} objects searched ({}){unreached}, {precision})",
        h.objects,
        h.searched,
        human_bytes(h.bytes)
    )
}

/// A hop's object as the graph outputs name it: `2.0 KiB map[string]*main.Session`, `48 B ?`.
fn hop_object(hop: &crate::heap::HopRow) -> String {
    format!("{} {}", human_bytes(hop.size), hop.type_name.as_deref().unwrap_or("?"))
}

/// Where a hop's pointer sits in the previous value: its Go path (`.Buf`, `[…].elem`; empty when the value is
/// the pointer), or else its offset: `+0x28`, or `an element` when that differs between the objects grouped (so
/// that the graph outputs draw one node for them whichever object's offset a group shows).
fn hop_offset(hop: &crate::heap::HopRow) -> String {
    match &hop.via {
        Some(path) => path.clone(),
        None if hop.offset_varies => "an element".into(),
        None => format!("+{:#x}", hop.offset),
    }
}

fn count_bytes(count: u64, bytes: u64) -> String {
    format!("{count} ({})", human_bytes(bytes))
}

/// The site table: one line per site, then its callers indented.
pub fn write_table(w: &mut dyn Write, rows: &[SiteRow], caller_lines: usize) -> io::Result<()> {
    let type_width = rows
        .iter()
        .map(|r| r.type_name.chars().count())
        .max()
        .unwrap_or(4)
        .clamp(4, 48);
    writeln!(
        w,
        "{:<6} {:>9} {:>10}  {:<type_width$}  SITE",
        "KIND", "COUNT", "BYTES", "TYPE"
    )?;
    for r in rows {
        let (site, callers) = match r.stack.split_first() {
            Some((s, rest)) => (format!("{} {}:{}", s.function, s.file, s.line), rest),
            None => ("(runtime)".to_string(), &r.stack[..0]),
        };
        writeln!(
            w,
            "{:<6} {:>9} {:>10}  {:<type_width$}  {}",
            r.kind.as_str(),
            r.count,
            human_bytes(r.bytes),
            r.type_name,
            site
        )?;
        for c in callers.iter().take(caller_lines) {
            writeln!(
                w,
                "{:>width$}← {} {}:{}",
                "",
                c.function,
                c.file,
                c.line,
                width = 30 + type_width
            )?;
        }
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::lifecycle::finalizers::{Blocked, FinalizerCounts, Mechanism, NeverRan, NeverRanRow, RunnerGoroutine};
    use crate::lifecycle::retention::RetainedRow;
    use crate::lifecycle::sites::{FrameRow, ValueKind};

    pub(crate) fn report() -> Report {
        Report {
            maptrace_version: "0.1.0",
            target: TargetInfo {
                pid: 42,
                binary: "/bin/demo".into(),
                go_version: "go1.24.11".into(),
                experiments: vec![],
                stripped: true,
            },
            mode: crate::probes::sampling::Mode::Full,
            sampling: None,
            duration_seconds: 1.5,
            ended_by: EndReason::TargetExited,
            probes: ProbeInfo {
                functions: vec!["runtime.mallocgc".into()],
                uprobes: 4,
                attach_seconds: 0.2,
            },
            totals: Totals {
                heap_allocations: 3,
                heap_bytes: 5000,
                records: 4,
                samples: 0,
            },
            lost_records: 0,
            sites: vec![SiteRow {
                kind: ValueKind::Map,
                type_name: "map[string]*main.Session".into(),
                count: 3,
                bytes: 5000,
                stack: vec![
                    FrameRow {
                        function: "main.put".into(),
                        file: "/src/main.go".into(),
                        line: 12,
                        pc: "0x1".into(),
                    },
                    FrameRow {
                        function: "main.main".into(),
                        file: "/src/main.go".into(),
                        line: 30,
                        pc: "0x2".into(),
                    },
                ],
            }],
            gc: GcInfo {
                retain_cycles: 2,
                cycles_seen: 5,
                first_cycle: Some(3),
                last_cycle: Some(7),
                ..GcInfo::default()
            },
            retained: vec![RetainedRow {
                kind: ValueKind::Map,
                type_name: "map[string]*main.Session".into(),
                retained_count: 2,
                retained_bytes: 4000,
                live_count: 3,
                live_bytes: 5000,
                allocated_count: 3,
                allocated_bytes: 5000,
                freed_count: 0,
                samples: None,
                survived_cycles_p50: 3,
                survived_cycles_max: 4,
                oldest_age_seconds: 1.5,
                dead_lifetime_p50_seconds: None,
                trend: "growing",
                live_by_cycle: vec![(5, 1, 1000), (6, 2, 3000), (7, 3, 5000)],
                evicted_count: 0,
                held_by: None,
                also_held_by: Vec::new(),
                site: 1,
                stack: vec![FrameRow {
                    function: "main.put".into(),
                    file: "/src/main.go".into(),
                    line: 12,
                    pc: "0x1".into(),
                }],
            }],
            chains: None,
            distributions: Default::default(),
            finalizers: FinalizerSection {
                counts: FinalizerCounts {
                    registered: 3,
                    ..FinalizerCounts::default()
                },
                pending: 3,
                never_ran: vec![
                    NeverRanRow {
                        kind: Mechanism::Finalizer,
                        reason: NeverRan::ReachableFromOwnFinalizer,
                        count: 3,
                        object_type: "main.Resource".into(),
                        function: "main.open.func1".into(),
                        age_cycles: 4,
                        age_seconds: 0.5,
                        registered_at: vec![FrameRow {
                            function: "main.open".into(),
                            file: "/src/main.go".into(),
                            line: 40,
                            pc: "0x3".into(),
                        }],
                        held_by: None,
                        objects: Vec::new(),
                    },
                    NeverRanRow {
                        kind: Mechanism::Cleanup,
                        reason: NeverRan::QueuedBehindBlockedFinalizer,
                        count: 5,
                        object_type: "main.File".into(),
                        function: "main.closeFile".into(),
                        age_cycles: 2,
                        age_seconds: 0.2,
                        registered_at: vec![FrameRow {
                            function: "main.openFile".into(),
                            file: "/src/main.go".into(),
                            line: 50,
                            pc: "0x4".into(),
                        }],
                        held_by: None,
                        objects: Vec::new(),
                    },
                ],
                runners: vec![RunnerGoroutine {
                    goid: 18,
                    runs: "cleanups",
                    state: "chan receive".into(),
                    last_started: "main.stuckCleanup".into(),
                    last_started_kind: Mechanism::Cleanup,
                    last_started_seconds_ago: 1.25,
                    blocked: Some(Blocked {
                        object_type: "main.File".into(),
                        blocked_seconds: 1.25,
                        queue_depth: 5,
                    }),
                }],
            },
        }
    }

    #[test]
    fn text_names_everything_a_reader_needs() {
        let mut out = Vec::new();
        report().write_text(&mut out).unwrap();
        let s = String::from_utf8(out).unwrap();
        assert!(s.contains("PID 42 /bin/demo (go1.24.11, stripped), full mode"), "{s}");
        assert!(s.contains("map[string]*main.Session"), "{s}");
        assert!(s.contains("4.9 KiB"), "{s}");
        assert!(s.contains("main.put /src/main.go:12"), "{s}");
        assert!(s.contains("← main.main /src/main.go:30"), "{s}");
        assert!(s.contains("Retained: alive after ≥ 2 GC cycles"), "{s}");
        assert!(s.contains("GC cycles 3–7 seen"), "{s}");
        assert!(s.contains("2 (3.9 KiB)"), "{s}");
        assert!(s.contains("growing"), "{s}");
        assert!(s.contains("gc5:1 gc6:2 gc7:3"), "{s}");
        assert!(s.contains("3 finalizer never ran: reachable from its own finalizer or cleanup (a cycle: it can never run) — main.Resource with finalizer main.open.func1, 4 cycles (0.5 s) after SetFinalizer at main.open /src/main.go:40"), "{s}");
        assert!(s.contains("5 cleanup never ran: queued behind a blocked finalizer or cleanup — main.File with cleanup main.closeFile"), "{s}");
        assert!(
            s.contains("goroutine 18 (runs cleanups): chan receive; last started cleanup main.stuckCleanup 1.2 s ago"),
            "{s}"
        );
        assert!(s.contains("blocked for 1.2 s in cleanup main.stuckCleanup (object main.File, state: chan receive), 5 queued behind it"), "{s}");
    }

    /// The report with a chain on its retained row.
    pub(crate) fn held_report() -> Report {
        let mut r = report();
        r.retained[0].held_by = Some(crate::heap::HeldBy {
            root: crate::heap::Root {
                kind: "global",
                name: "main.cache".into(),
                type_name: Some("map[string]*main.Session".into()),
                goroutine: None,
                blocked_ms: None,
            },
            hops: vec![
                crate::heap::HopRow {
                    offset: 0,
                    offset_varies: false,
                    via: None,
                    size: 48,
                    type_name: None,
                    slice: None,
                    map_len: Some(2),
                    map_entry: None,
                },
                crate::heap::HopRow {
                    offset: 0x28,
                    offset_varies: true,
                    via: Some("[…].elem".into()),
                    size: 2000,
                    type_name: Some("map[string]*main.Session".into()),
                    slice: None,
                    map_len: None,
                    map_entry: Some(crate::heap::MapEntry {
                        key: "\"u-17\"".into(),
                        part: crate::heap::EntryPart::Value,
                        keys: 2,
                    }),
                },
            ],
            objects: 2,
            bytes: 4000,
            searched: 3,
            unreached: 1,
            precise: false,
            goroutines: 0,
            diagnosis: Some(crate::heap::Diagnosis {
                kind: "map_kept_storage",
                text: "the map has 2 entries but keeps 3.9 KiB".into(),
            }),
        });
        // A second shape: the third object, from a goroutine blocked for 3.2 s.
        let mut other = r.retained[0].held_by.clone().unwrap();
        other.root = crate::heap::Root {
            kind: "goroutine",
            name: "main.worker".into(),
            type_name: None,
            goroutine: Some((18, "chan receive".into())),
            blocked_ms: Some(3200),
        };
        (other.objects, other.bytes, other.diagnosis) = (1, 2000, None);
        other.hops.truncate(1);
        r.retained[0].also_held_by = vec![other];
        r
    }

    #[test]
    fn text_says_what_holds_a_retained_row() {
        let mut out = Vec::new();
        held_report().write_text(&mut out).unwrap();
        let s = String::from_utf8(out).unwrap();
        assert!(
            s.contains("held by main.cache (map[string]*main.Session) → +0x0 → 48 B → […].elem (value for key \"u-17\", 1 of 2 keys) → 2.0 KiB map[string]*main.Session  (2 of 3 objects searched (3.9 KiB), 1 not reached, conservative)"),
            "{s}"
        );
        assert!(s.contains("also held by goroutine 18 (chan receive, ≥ 3.2 s) main.worker → +0x0 → 48 B  (1 of 3 objects searched (2.0 KiB), 1 not reached, conservative)"), "{s}");
    }

    #[test]
    fn json_is_one_document_with_the_rows() {
        let mut out = Vec::new();
        report().write_json(&mut out).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["sites"][0]["kind"], "map");
        assert_eq!(v["sites"][0]["type"], "map[string]*main.Session");
        assert_eq!(v["sites"][0]["stack"][0]["function"], "main.put");
        assert_eq!(v["target"]["go_version"], "go1.24.11");
        assert_eq!(v["lost_records"], 0);
        assert_eq!(v["retained"][0]["retained_count"], 2);
        assert_eq!(v["retained"][0]["trend"], "growing");
        assert_eq!(v["gc"]["last_cycle"], 7);
        assert_eq!(
            v["finalizers"]["never_ran"][0]["reason"],
            "reachable_from_own_finalizer"
        );
        assert_eq!(v["finalizers"]["never_ran"][1]["kind"], "cleanup");
        assert_eq!(v["finalizers"]["runners"][0]["blocked"]["queue_depth"], 5);
    }

    /// docs/report.schema.json, compiled (checked against the 2020-12 meta-schema on the way).
    fn schema() -> (serde_json::Value, jsonschema::Validator) {
        let schema: serde_json::Value =
            serde_json::from_str(include_str!("../../../docs/report.schema.json")).expect("the schema is JSON");
        let validator = jsonschema::draft202012::new(&schema)
            .unwrap_or_else(|e| panic!("docs/report.schema.json is not a 2020-12 schema: {e}"));
        (schema, validator)
    }

    fn json(r: &Report) -> serde_json::Value {
        let mut out = Vec::new();
        r.write_json(&mut out).unwrap();
        serde_json::from_slice(&out).unwrap()
    }

    /// Every way `v` breaks the schema, one per line with where.
    fn schema_errors(validator: &jsonschema::Validator, v: &serde_json::Value) -> Vec<String> {
        validator
            .iter_errors(v)
            .map(|e| format!("{}: {e}", e.instance_path()))
            .collect()
    }

    /// The held report with every optional key present: sampled mode with a governor, a chain search that
    /// says why it paused and what it lacked, a goroutine root, a slice hop, a finalizer group's chain.
    fn every_key_report() -> Report {
        let mut r = held_report();
        r.mode = crate::probes::sampling::Mode::Sampled;
        r.sampling = Some(crate::probes::sampling::SamplingInfo {
            rate: crate::probes::sampling::RateInfo {
                memprofilerate: Some(4096),
                set_by_maptrace_from: Some(524288),
                governor: Some(crate::probes::sampling::GovernorInfo {
                    floor: 4096,
                    highest: 65536,
                    changes: 3,
                }),
            },
            budget_per_second: 500,
            samples_seen: 1200,
            samples_thinned: 200,
            scaling: crate::probes::sampling::SCALING,
        });
        r.totals.samples = 1000;
        r.chains = Some(ChainSearch {
            roots: "package-level variables and goroutine stacks",
            precision: "typed where DWARF describes the value, by the runtime's heap bitmaps for other heap objects and its stack maps for goroutine stacks, conservative elsewhere (frames without maps)",
            max_pause_seconds: 0.01,
            max_depth: 100,
            paused_seconds: 0.0,
            walk_within_pause: false,
            pause_failed: Some("another tracer holds it".into()),
            unavailable: Some("no DWARF".into()),
            walk: crate::heap::WalkStats::default(),
        });
        let row = &mut r.retained[0];
        row.samples = Some(2);
        row.dead_lifetime_p50_seconds = Some(0.25);
        let held = row.held_by.as_mut().unwrap();
        held.root.goroutine = Some((18, "chan receive".into()));
        held.hops[1].slice = Some(crate::heap::SliceView {
            len_bytes: 16,
            cap_bytes: 2000,
        });
        r.finalizers.never_ran[0].held_by = r.retained[0].held_by.clone();
        r.distributions.size_bytes = crate::lifecycle::Buckets {
            upper_bounds: vec![16.0, f64::INFINITY],
            counts: vec![2, 1],
            sum: 5000.0,
            count: 3,
        };
        r
    }

    #[test]
    fn json_matches_the_schema() {
        let (_, validator) = schema();
        for (name, r) in [
            ("report", report()),
            ("held_report", held_report()),
            ("every_key_report", every_key_report()),
        ] {
            let v = json(&r);
            let errors = schema_errors(&validator, &v);
            assert!(
                errors.is_empty(),
                "{name} breaks docs/report.schema.json:\n{}\n{v:#}",
                errors.join("\n")
            );
        }
    }

    #[test]
    fn schema_rejects_unknown_keys() {
        let (_, validator) = schema();
        let v = json(&held_report());
        let places: [&dyn Fn(&mut serde_json::Value) -> &mut serde_json::Value; 4] = [
            &|v| v,
            &|v| &mut v["sites"][0]["stack"][0],
            &|v| &mut v["retained"][0]["held_by"]["hops"][0],
            &|v| &mut v["finalizers"]["runners"][0]["blocked"],
        ];
        for place in places {
            let mut bad = v.clone();
            place(&mut bad)
                .as_object_mut()
                .unwrap()
                .insert("unexpected".into(), 1.into());
            let errors = schema_errors(&validator, &bad);
            assert!(
                errors.iter().any(|e| e.contains("unexpected")),
                "an unknown key passed: {errors:?}\n{bad:#}"
            );
        }
        let mut bad = v.clone();
        bad["retained"][0]["trend"] = "sideways".into();
        assert!(!validator.is_valid(&bad), "an unknown trend passed");
        let mut bad = v;
        bad.as_object_mut().unwrap().remove("gc");
        assert!(!validator.is_valid(&bad), "a report without gc passed");
    }

    /// The schema documents what reports hold: every object closed to other keys, every property described, and
    /// no property name the fullest report never writes.
    #[test]
    fn schema_describes_every_key_and_only_those() {
        fn walk(
            s: &serde_json::Value,
            at: &str,
            names: &mut std::collections::BTreeSet<String>,
            faults: &mut Vec<String>,
        ) {
            match s {
                serde_json::Value::Object(m) => {
                    if let Some(props) = m.get("properties").and_then(|p| p.as_object()) {
                        if m.get("additionalProperties") != Some(&serde_json::Value::Bool(false)) {
                            faults.push(format!("{at}: additionalProperties is not false"));
                        }
                        for (k, p) in props {
                            names.insert(k.clone());
                            if p.get("description").and_then(|d| d.as_str()).is_none_or(str::is_empty) {
                                faults.push(format!("{at}.{k}: no description"));
                            }
                        }
                    }
                    for (k, v) in m {
                        walk(v, &format!("{at}/{k}"), names, faults);
                    }
                }
                serde_json::Value::Array(a) => a
                    .iter()
                    .enumerate()
                    .for_each(|(i, v)| walk(v, &format!("{at}/{i}"), names, faults)),
                _ => {}
            }
        }
        fn keys(v: &serde_json::Value, names: &mut std::collections::BTreeSet<String>) {
            match v {
                serde_json::Value::Object(m) => m.iter().for_each(|(k, v)| {
                    names.insert(k.clone());
                    keys(v, names);
                }),
                serde_json::Value::Array(a) => a.iter().for_each(|v| keys(v, names)),
                _ => {}
            }
        }
        let (schema, _) = schema();
        let (mut documented, mut faults, mut written) = Default::default();
        walk(&schema, "#", &mut documented, &mut faults);
        assert!(faults.is_empty(), "{}", faults.join("\n"));
        keys(&json(&every_key_report()), &mut written);
        let stale: Vec<_> = documented.difference(&written).collect();
        assert!(
            stale.is_empty(),
            "the schema documents keys no report writes: {stale:?}"
        );
    }

    #[test]
    fn human_sizes() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(4096), "4.0 KiB");
        assert_eq!(human_bytes(3 << 20), "3.0 MiB");
    }
}
