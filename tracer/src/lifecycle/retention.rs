//! The Retained section: sites whose objects are alive after K completed GC cycles *and* after
//! their creating frame returned, from the lifecycle engine, the
//! creating-frame tracker and the site table.

use std::collections::HashMap;

use serde::Serialize;

use crate::{
    lifecycle::creating_frames::CreatingFrames,
    lifecycle::sites::{site_id, FrameRow, Resolve, SiteTable, ValueKind},
    lifecycle::{Lifecycle, SiteLifecycle, Totals},
};

/// One retained site.
#[derive(Clone, Debug, Serialize)]
pub struct RetainedRow {
    pub kind: ValueKind,
    #[serde(rename = "type")]
    pub type_name: String,
    /// Alive after ≥ K cycles, creating frame returned.
    pub retained_count: u64,
    pub retained_bytes: u64,
    /// In use: allocated and not seen freed (pprof's inuse view).
    pub live_count: u64,
    pub live_bytes: u64,
    /// Everything this site allocated while traced (pprof's alloc view).
    pub allocated_count: u64,
    pub allocated_bytes: u64,
    pub freed_count: u64,
    /// Sampled mode: the retained samples the estimates above are scaled from.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub samples: Option<u64>,
    /// Cycles survived by the live objects so far: median and most.
    pub survived_cycles_p50: u64,
    pub survived_cycles_max: u64,
    /// Seconds since the oldest live object of the site was allocated.
    pub oldest_age_seconds: f64,
    /// Lifetime of the site's objects that died, median, in seconds (None: none died).
    pub dead_lifetime_p50_seconds: Option<f64>,
    /// "growing", "stable", "shrinking" or "unknown": the live count, cycle over cycle.
    pub trend: &'static str,
    /// (cycle, live count, live bytes) at the last cycles' mark terminations.
    pub live_by_cycle: Vec<(u64, u64, u64)>,
    /// Objects dropped from tracking by the memory bound: counts above are lower bounds.
    pub evicted_count: u64,
    /// The most common reference chain from a root to the site's retained objects (None: not searched, or the
    /// target had exited).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub held_by: Option<crate::heap::HeldBy>,
    /// The next most common chains, by the objects they hold (at most [`crate::heap::MAX_SHAPES`] in all).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub also_held_by: Vec<crate::heap::HeldBy>,
    /// The site, for finding its objects again.
    #[serde(skip)]
    pub site: u64,
    pub stack: Vec<FrameRow>,
}

/// Retained rows, most retained bytes first.
pub fn retained_rows(
    lifecycle: &Lifecycle,
    sites: &SiteTable,
    frames: &CreatingFrames,
    names: &mut dyn Resolve,
    target_exited: bool,
    now_ns: u64,
) -> Vec<RetainedRow> {
    // A value's parts add bytes to its site, not numbers.
    let mut retained: HashMap<u64, Totals> = HashMap::new();
    for (site, t) in lifecycle.retained_matching(|o| frames.returned(site_id::site(o.site), o.time_ns, target_exited)) {
        let v = retained.entry(site_id::site(site)).or_default();
        v.bytes += t.bytes;
        if site_id::is_head(site) {
            v.count += t.count;
        }
    }
    let survival = lifecycle.live_survival();
    let mut oldest: HashMap<u64, u64> = HashMap::new();
    for o in lifecycle.objects() {
        let t = oldest.entry(site_id::site(o.site)).or_insert(o.time_ns);
        *t = (*t).min(o.time_ns);
    }
    let mut rows: Vec<RetainedRow> = retained
        .into_iter()
        .filter(|(_, totals)| totals.count > 0)
        .filter_map(|(site, totals)| {
            let s = lifecycle.site(site)?;
            let parts = lifecycle.site(site_id::parts(site));
            let part_bytes = |f: fn(&SiteLifecycle) -> u64| parts.map_or(0, f);
            let row = sites.row(site, names)?;
            // No user frame: the runtime's own bookkeeping, nothing the program can act on.
            if row.stack.is_empty() {
                return None;
            }
            let live = survival.get(&site);
            // Samples stand for more allocations (sampled mode); 1 in full mode.
            let (per_record, per_byte) = sites.scale(site);
            let est = |n: u64| (n as f64 * per_record).round() as u64;
            let est_bytes = |n: u64| (n as f64 * per_byte).round() as u64;
            Some(RetainedRow {
                kind: row.kind,
                type_name: row.type_name,
                retained_count: est(totals.count),
                retained_bytes: est_bytes(totals.bytes),
                live_count: est(s.live_count),
                live_bytes: est_bytes(s.live_bytes + part_bytes(|p| p.live_bytes)),
                allocated_count: est(s.allocated_count),
                allocated_bytes: est_bytes(s.allocated_bytes + part_bytes(|p| p.allocated_bytes)),
                freed_count: est(s.freed_count),
                samples: sites.sampled(site).then_some(totals.count),
                survived_cycles_p50: live.map_or(0, |h| h.value_at_quantile(0.5)),
                survived_cycles_max: live.map_or(0, |h| h.max()),
                oldest_age_seconds: oldest
                    .get(&site)
                    .map_or(0.0, |&t| now_ns.saturating_sub(t) as f64 / 1e9),
                dead_lifetime_p50_seconds: (!s.lifetime_ns.is_empty())
                    .then(|| s.lifetime_ns.value_at_quantile(0.5) as f64 / 1e9),
                trend: s.trend().as_str(),
                live_by_cycle: s
                    .live_by_cycle
                    .iter()
                    .map(|&(c, n, b)| (c, est(n), est_bytes(b)))
                    .collect(),
                evicted_count: s.evicted_count,
                held_by: None,
                also_held_by: Vec::new(),
                site,
                stack: row.stack,
            })
        })
        .collect();
    rows.sort_by_key(|r| std::cmp::Reverse((r.retained_bytes, r.retained_count)));
    rows
}
