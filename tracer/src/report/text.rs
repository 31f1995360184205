//! The report for people: the site table, sampled mode's header, finalizers, and the retained
//! rows with what holds them.

use std::io::{self, Write};

use super::{hop_offset, ChainSearch, Report};
use crate::heap::{EntryPart, HeldBy, WalkStats};
use crate::lifecycle::sites::SiteRow;
use crate::units::human_bytes;

impl Report {
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
            let type_width = type_width(self.retained.iter().map(|r| r.type_name.as_str()));
            writeln!(
                w,
                "{:<6} {:>20} {:>20} {:>20}  {:>9}  {:<9}  {:<type_width$}  SITE",
                "KIND", "RETAINED", "LIVE", "ALLOCATED", "CYCLES", "TREND", "TYPE"
            )?;
            for r in &self.retained {
                write_retained_row(w, r, type_width)?;
            }
            writeln!(w, "(CYCLES: cycles survived by the live objects, median/most)")?;
        }
        if let Some(c) = &self.chains {
            writeln!(w, "{}", chains_line(c))?;
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

/// One retained row: its counts and site, its live objects cycle by cycle, and what holds them.
fn write_retained_row(
    w: &mut dyn Write,
    r: &crate::lifecycle::retention::RetainedRow,
    type_width: usize,
) -> io::Result<()> {
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
    Ok(())
}

/// How the chains were searched, in one parenthesised line.
fn chains_line(c: &ChainSearch) -> String {
    let Some(why) = &c.unavailable else {
        return format!(
            "(held by: chains from {} ({} searched), {} objects ({} typed, {} by the runtime's bitmaps, the rest conservatively or pointer-free) / {} scanned in {:.3} s{}{}, {})",
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
            unreadable_text(&c.walk),
            pause_text(c)
        );
    };
    format!("(no reference chains: {why})")
}

/// What the target's memory made unreadable, if anything: `, unreadable: 2 objects, 1 root`.
fn unreadable_text(w: &WalkStats) -> String {
    let parts: Vec<String> = [
        (w.unreadable_objects, "object"),
        (w.unreadable_spans, "span"),
        (w.unreadable_roots, "root"),
    ]
    .iter()
    .filter(|(n, _)| *n > 0)
    .map(|(n, what)| format!("{n} {what}{}", if *n == 1 { "" } else { "s" }))
    .collect();
    match parts.is_empty() {
        true => String::new(),
        false => format!(", unreadable: {}", parts.join(", ")),
    }
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
fn held_by_text(h: &HeldBy) -> String {
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

fn count_bytes(count: u64, bytes: u64) -> String {
    format!("{count} ({})", human_bytes(bytes))
}

/// The width of a TYPE column: its longest name, between 4 and 48 characters.
fn type_width<'a>(names: impl Iterator<Item = &'a str>) -> usize {
    names.map(|n| n.chars().count()).max().unwrap_or(4).clamp(4, 48)
}

/// The site table: one line per site, then its callers indented.
pub fn write_table(w: &mut dyn Write, rows: &[SiteRow], caller_lines: usize) -> io::Result<()> {
    let type_width = type_width(rows.iter().map(|r| r.type_name.as_str()));
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
