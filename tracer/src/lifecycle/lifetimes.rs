//! The lifecycle engine: which tracked objects are alive, which are retained, and per-site aggregates.
//!
//! Pure logic: it is fed decoded events in ring-buffer order and does no I/O.
//!
//! # What the Go runtime tells us, and how it is read
//!
//! - **Cycles.** `born_cycle` is the target's `work.cycles` at allocation, which `gcStart` increments
//!   (with the world stopped, before marking starts). [`Lifecycle::on_cycle_end`]`(N)` is cycle N's mark
//!   termination. Spans are swept between the mark termination of N and the start of N+1 (`gcStart`
//!   finishes every sweep first), so a sweep observed while the counter reads N is cycle N's sweep.
//! - **Death.** A sweep of cycle S frees every object of its span whose mark bit is clear. An object born
//!   in cycle N either was allocated during N's mark (allocated black: marked, survives N's sweep) or
//!   after N's mark termination, in a span that had already been swept for N (Go sweeps a span before
//!   allocating from it). So a sweep of cycle S judges only objects with `born < S`; one born in S is left
//!   alone whatever its bit says (counted in [`LifecycleStats::sweep_too_young`]). That is what keeps an
//!   object allocated in a span after the span's sweep from being killed by stale mark bits: its first
//!   verdict is the span's sweep after cycle `born + 1`.
//! - **Other deaths.** A new allocation over a tracked object's start (same address, or an address inside
//!   the new object) retires it: its slot was freed by a sweep we did not see. [`Lifecycle::on_free`] is
//!   an exact death (e.g. `freeSpecial`). Nothing dies because of time.
//! - **Survival.** An object survived cycle c when a sweep of c found it marked, or when c's sweep phase is
//!   over without seeing it die (cycle c+1 ended). With L the last completed cycle:
//!   `cycles_survived = L - born` if the sweep for L confirmed it, else `L - 1 - born` (L's verdict is
//!   pending until its span is swept), never below 0. This is the brief's `last_completed - born`
//!   with the newest cycle counted only once its sweep proves it; an object allocated during cycle N's
//!   mark (`born = N`) therefore never counts cycle N.
//! - **Retained** = live with `cycles_survived >= K` ([`LifecycleConfig::retain_cycles`]). Per site,
//!   `retained_*` is recomputed at each cycle end and kept up to date at sweeps (a confirmation can
//!   make an object retained) and deaths. The "creating frame returned" half of the report definition
//!   is decided by the caller: [`Lifecycle::retained_matching`] takes a per-object predicate.
//!
//! # Bounded memory
//!
//! At most [`LifecycleConfig::max_tracked`] objects are tracked. When an allocation would exceed it, the
//! oldest objects (by birth cycle, then allocation time) are evicted in a batch of `max_tracked / 16`
//! (at least 1): they leave the live table and their site's `live_*`/`retained_*`, and are counted in
//! [`Lifecycle::evicted`] and per site in `evicted_count`/`evicted_bytes`/`evicted_retained_count`.
//! Allocation counts stay exact; live and retained counts become lower bounds (reports should say so
//! when `evicted() > 0`). Batching makes the cost amortised O(1) per allocation and needs no age index.
//! Trade-off: the oldest objects are exactly the long-lived ones, so on a heap with more than
//! `max_tracked` allocations per K cycles retention is under-reported; `evicted_retained_count` shows by
//! how much.

mod site;
mod table;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::ops::Range;

use hdrhistogram::Histogram;

pub use site::{new_survival_histogram, trend_of, SiteLifecycle, Trend, LIVE_HISTORY, TREND_MIN_SAMPLES, TREND_WINDOW};
use table::{cycle32, Entry, Table, MAX_SITES};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LifecycleConfig {
    /// K: cycles an object must survive to be retained.
    pub retain_cycles: u32,
    /// Most objects tracked at once (at least 1); see the module docs for what happens beyond.
    pub max_tracked: usize,
}

impl Default for LifecycleConfig {
    fn default() -> Self {
        LifecycleConfig {
            retain_cycles: 2,
            max_tracked: 1_000_000,
        }
    }
}

/// One heap allocation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Alloc {
    /// The address the allocator returned (may be inside a slot: tiny blocks, malloc headers).
    pub addr: u64,
    /// The requested size (`mallocgc`'s `size`), not the size class: tiny objects share 16-byte blocks
    /// and a rounded size would overlap the neighbour's start.
    pub size: u64,
    /// Opaque allocation-site id.
    pub site: u64,
    /// The target's `work.cycles` at allocation.
    pub born_cycle: u64,
    pub time_ns: u64,
}

/// A span being swept, with the mark bits its objects got from the last cycle.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SweptSpan<'a> {
    pub base: u64,
    pub elemsize: u64,
    pub nelems: u64,
    /// Bit i (byte i/8, LSB first) set: object i survived. Shorter than `nelems` bits when the capture
    /// was truncated: objects past the end are left untouched.
    pub marks: &'a [u8],
}

/// What the engine knows about one tracked object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TrackedObject {
    pub addr: u64,
    pub size: u64,
    pub site: u64,
    pub born_cycle: u64,
    pub time_ns: u64,
    pub cycles_survived: u64,
    pub retained: bool,
}

/// Objects and bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Totals {
    pub count: u64,
    pub bytes: u64,
}

/// Counters about the event stream itself, for diagnostics and "lower bound" notes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LifecycleStats {
    pub allocs: u64,
    /// Of `allocs`, those of size 0 (all at `runtime.zerobase`): not tracked, not counted per site.
    pub zero_size_allocs: u64,
    pub cycles: u64,
    /// `on_cycle_end` for a cycle not newer than the last one: ignored.
    pub stale_cycle_ends: u64,
    /// Cycle numbers skipped between consecutive cycle ends (lost events).
    pub missed_cycles: u64,
    pub sweeps: u64,
    /// Sweeps with `elemsize == 0` or `nelems == 0`, or before any cycle number is known: ignored.
    pub ignored_sweeps: u64,
    pub freed_by_sweep: u64,
    pub freed_by_reuse: u64,
    pub freed_exact: u64,
    /// `on_free` for an address no tracked object contains.
    pub untracked_frees: u64,
    /// Objects a sweep left untouched because their mark bit was past a truncated bitmap.
    pub unknown_mark_bits: u64,
    /// Objects a sweep left untouched because they were born in (or after) the sweep's cycle.
    pub sweep_too_young: u64,
    /// Unmarked objects a sweep kept alive because they had a finalizer (the runtime resurrects
    /// them and queues the finalizer).
    pub resurrected: u64,
}

impl Default for Lifecycle {
    fn default() -> Self {
        Lifecycle::new(LifecycleConfig::default())
    }
}

/// The engine. See the module docs for the semantics.
pub struct Lifecycle {
    cfg: LifecycleConfig,
    table: Table,
    sites: Vec<(u64, SiteLifecycle)>,
    site_index: HashMap<u64, u32, BuildHasherDefault<IdHasher>>,
    /// The last site looked up: allocations come in bursts from one site.
    last_site: Option<(u64, u32)>,
    last_cycle: Option<u64>,
    last_cycle_time_ns: Option<u64>,
    max_born: Option<u64>,
    evicted: u64,
    stats: LifecycleStats,
    /// Reused buffer for the addresses a sweep frees.
    scratch: Vec<u64>,
}

/// How an object left the table (other than eviction).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Death {
    /// By the sweep of this cycle.
    Sweep(u64),
    Reuse,
    Exact,
}

/// `cycles_survived` of `e` with `last` the last completed cycle (see the module docs).
fn survived(e: &Entry, last: Option<u64>) -> u64 {
    let Some(last) = last else { return 0 };
    let through = if e.confirmed() { last } else { last.saturating_sub(1) };
    through.saturating_sub(u64::from(e.born))
}

impl Lifecycle {
    pub fn new(cfg: LifecycleConfig) -> Self {
        let cfg = LifecycleConfig {
            max_tracked: cfg.max_tracked.max(1),
            ..cfg
        };
        Lifecycle {
            cfg,
            table: Table::default(),
            sites: Vec::new(),
            site_index: HashMap::default(),
            last_site: None,
            last_cycle: None,
            last_cycle_time_ns: None,
            max_born: None,
            evicted: 0,
            stats: LifecycleStats::default(),
            scratch: Vec::new(),
        }
    }

    pub fn config(&self) -> &LifecycleConfig {
        &self.cfg
    }

    pub fn stats(&self) -> &LifecycleStats {
        &self.stats
    }

    /// The last completed cycle (mark termination seen).
    pub fn last_cycle(&self) -> Option<u64> {
        self.last_cycle
    }

    pub fn last_cycle_time_ns(&self) -> Option<u64> {
        self.last_cycle_time_ns
    }

    /// Objects currently tracked.
    pub fn tracked(&self) -> usize {
        self.table.len()
    }

    /// Objects dropped by the `max_tracked` bound while alive, in total.
    pub fn evicted(&self) -> u64 {
        self.evicted
    }

    /// Every site seen, in order of first allocation.
    pub fn sites(&self) -> impl Iterator<Item = (u64, &SiteLifecycle)> + '_ {
        self.sites.iter().map(|(id, s)| (*id, s))
    }

    pub fn site(&self, id: u64) -> Option<&SiteLifecycle> {
        let &i = self.site_index.get(&id)?;
        Some(&self.sites[i as usize].1)
    }

    fn is_retained(&self, e: &Entry) -> bool {
        survived(e, self.last_cycle) >= u64::from(self.cfg.retain_cycles)
    }

    fn object_of(&self, addr: u64, e: &Entry) -> TrackedObject {
        let cycles_survived = survived(e, self.last_cycle);
        TrackedObject {
            addr,
            size: e.size,
            site: self.sites[e.site()].0,
            born_cycle: u64::from(e.born),
            time_ns: e.time_ns,
            cycles_survived,
            retained: cycles_survived >= u64::from(self.cfg.retain_cycles),
        }
    }

    /// The tracked object starting exactly at `addr`.
    pub fn object(&self, addr: u64) -> Option<TrackedObject> {
        self.table.objects.get(&addr).map(|e| self.object_of(addr, e))
    }

    /// The tracked object whose bytes contain `addr`.
    pub fn object_containing(&self, addr: u64) -> Option<TrackedObject> {
        let start = self.table.containing(addr)?;
        self.object(start)
    }

    /// Every tracked object, by address.
    pub fn objects(&self) -> impl Iterator<Item = TrackedObject> + '_ {
        self.table.objects.iter().map(|(&a, e)| self.object_of(a, e))
    }

    /// Tracked objects starting in `range`, by address.
    pub fn objects_in(&self, range: Range<u64>) -> impl Iterator<Item = TrackedObject> + '_ {
        let range = if range.start <= range.end {
            range
        } else {
            range.start..range.start
        };
        self.table.objects.range(range).map(|(&a, e)| self.object_of(a, e))
    }

    /// Live objects with at least K cycles survived.
    pub fn retained_objects(&self) -> impl Iterator<Item = TrackedObject> + '_ {
        self.objects().filter(|o| o.retained)
    }

    /// Retained objects per site, counting only those `keep` accepts (e.g. "its creating frame has
    /// returned"). Sites without any are absent.
    pub fn retained_matching(&self, mut keep: impl FnMut(&TrackedObject) -> bool) -> HashMap<u64, Totals> {
        let mut out: HashMap<u64, Totals> = HashMap::new();
        for o in self.retained_objects() {
            if keep(&o) {
                let t = out.entry(o.site).or_default();
                t.count += 1;
                t.bytes += o.size;
            }
        }
        out
    }

    /// Cycles survived so far by every live object, per site (a snapshot; deaths are in each site's
    /// `survival_cycles`). One pass over the table.
    pub fn live_survival(&self) -> HashMap<u64, Histogram<u64>> {
        let mut out: HashMap<u64, Histogram<u64>> = HashMap::new();
        for e in self.table.objects.values() {
            let h = out.entry(self.sites[e.site()].0).or_insert_with(new_survival_histogram);
            site::record(h, survived(e, self.last_cycle));
        }
        out
    }

    fn site_slot(&mut self, id: u64) -> u32 {
        if let Some((last, i)) = self.last_site {
            if last == id {
                return i;
            }
        }
        let i = match self.site_index.get(&id) {
            Some(&i) => i,
            None => {
                // More than 2^31 distinct sites cannot fit in memory anyway; share the last slot.
                let i = self.sites.len().min(MAX_SITES - 1) as u32;
                if (i as usize) == self.sites.len() {
                    self.sites.push((id, SiteLifecycle::default()));
                    self.site_index.insert(id, i);
                }
                i
            }
        };
        self.last_site = Some((id, i));
        i
    }

    /// A new object. Zero-size allocations are counted in [`LifecycleStats::zero_size_allocs`] and
    /// otherwise ignored: Go returns `&runtime.zerobase` for all of them, not a heap object.
    pub fn on_alloc(&mut self, a: Alloc) {
        self.stats.allocs += 1;
        if a.size == 0 {
            self.stats.zero_size_allocs += 1;
            return;
        }
        self.max_born = Some(self.max_born.map_or(a.born_cycle, |m| m.max(a.born_cycle)));
        // Address reuse: whatever tracked object starts where the new one lies is dead.
        let end = a.addr.saturating_add(a.size.max(1));
        while let Some(old) = self.table.objects.range(a.addr..end).next().map(|(&k, _)| k) {
            let e = self.table.remove(old).expect("just found");
            self.retire(&e, Death::Reuse, a.time_ns);
        }
        if self.table.len() >= self.cfg.max_tracked {
            let excess = self.table.len() + 1 - self.cfg.max_tracked;
            self.evict_oldest(excess.max(self.cfg.max_tracked / 16));
        }
        let si = self.site_slot(a.site);
        let e = Entry::new(a.size, a.time_ns, si, cycle32(a.born_cycle));
        let retained = self.is_retained(&e);
        let s = &mut self.sites[si as usize].1;
        site::record(&mut s.size_bytes, a.size);
        s.allocated_count += 1;
        s.allocated_bytes += a.size;
        s.live_count += 1;
        s.live_bytes += a.size;
        if retained {
            // Only for events that arrive long after their allocation.
            s.retained_count += 1;
            s.retained_bytes += a.size;
        }
        self.table.insert(a.addr, e);
    }

    fn evict_oldest(&mut self, n: usize) {
        let (last, k) = (self.last_cycle, u64::from(self.cfg.retain_cycles));
        let sites = &mut self.sites;
        let n = self.table.evict_oldest(n, |_, e| {
            let s = &mut sites[e.site()].1;
            s.live_count -= 1;
            s.live_bytes -= e.size;
            s.evicted_count += 1;
            s.evicted_bytes += e.size;
            if survived(e, last) >= k {
                s.retained_count -= 1;
                s.retained_bytes -= e.size;
                s.evicted_retained_count += 1;
            }
        });
        self.evicted += n as u64;
    }

    /// Books the death of `e` (already removed from the table).
    fn retire(&mut self, e: &Entry, how: Death, time_ns: u64) {
        let now = survived(e, self.last_cycle);
        let was_retained = now >= u64::from(self.cfg.retain_cycles);
        let at_death = match how {
            // Marked in every cycle from born+1 to S-1, not in S.
            Death::Sweep(cycle) => cycle.saturating_sub(1).saturating_sub(u64::from(e.born)),
            Death::Reuse | Death::Exact => now,
        };
        match how {
            Death::Sweep(_) => self.stats.freed_by_sweep += 1,
            Death::Reuse => self.stats.freed_by_reuse += 1,
            Death::Exact => self.stats.freed_exact += 1,
        }
        let s = &mut self.sites[e.site()].1;
        s.live_count -= 1;
        s.live_bytes -= e.size;
        s.freed_count += 1;
        s.freed_bytes += e.size;
        match how {
            Death::Sweep(_) => s.freed_by_sweep += 1,
            Death::Reuse => s.freed_by_reuse += 1,
            Death::Exact => s.freed_exact += 1,
        }
        if was_retained {
            s.retained_count -= 1;
            s.retained_bytes -= e.size;
        }
        site::record(&mut s.survival_cycles, at_death);
        site::record(&mut s.lifetime_ns, time_ns.saturating_sub(e.time_ns));
    }

    /// Mark termination of `cycle`. Cycles must increase; an older or repeated one is ignored.
    pub fn on_cycle_end(&mut self, cycle: u64, time_ns: u64) {
        if let Some(last) = self.last_cycle {
            if cycle <= last {
                self.stats.stale_cycle_ends += 1;
                return;
            }
            self.stats.missed_cycles += cycle - last - 1;
        }
        self.stats.cycles += 1;
        self.last_cycle = Some(cycle);
        self.last_cycle_time_ns = Some(time_ns);
        // The new cycle's verdicts are pending until its sweeps: clear the confirmations and recount.
        for (_, s) in &mut self.sites {
            s.retained_count = 0;
            s.retained_bytes = 0;
        }
        let k = u64::from(self.cfg.retain_cycles);
        for e in self.table.objects.values_mut() {
            e.set_confirmed(false);
            if survived(e, Some(cycle)) >= k {
                let s = &mut self.sites[e.site()].1;
                s.retained_count += 1;
                s.retained_bytes += e.size;
            }
        }
        for (_, s) in &mut self.sites {
            if s.live_by_cycle.len() == LIVE_HISTORY {
                s.live_by_cycle.pop_front();
            }
            s.live_by_cycle.push_back((cycle, s.live_count, s.live_bytes));
        }
    }

    /// The cycle a sweep observed now belongs to: the newest cycle number seen, from cycle ends or from
    /// allocations (sweeps happen while `work.cycles` reads the cycle being swept for, so this is a lower
    /// bound that is exact unless events were lost).
    pub fn sweep_cycle(&self) -> Option<u64> {
        match (self.last_cycle, self.max_born) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        }
    }

    /// A span swept after the last cycle's mark termination (its cycle is [`Lifecycle::sweep_cycle`]).
    pub fn on_span_swept(&mut self, s: &SweptSpan<'_>, time_ns: u64) {
        match self.sweep_cycle() {
            Some(cycle) => self.on_span_swept_in(s, cycle, time_ns),
            None => {
                self.stats.sweeps += 1;
                self.stats.ignored_sweeps += 1;
            }
        }
    }

    /// A span swept for `cycle`'s mark bits, when the probe read the cycle number itself.
    pub fn on_span_swept_in(&mut self, s: &SweptSpan<'_>, cycle: u64, time_ns: u64) {
        self.stats.sweeps += 1;
        if s.elemsize == 0 || s.nelems == 0 {
            self.stats.ignored_sweeps += 1;
            return;
        }
        self.max_born = Some(self.max_born.map_or(cycle, |m| m.max(cycle)));
        let end = s
            .nelems
            .checked_mul(s.elemsize)
            .and_then(|len| s.base.checked_add(len))
            .unwrap_or(u64::MAX);
        let last = self.last_cycle;
        // Marks of `cycle` prove survival of the last completed cycle only if they are that recent.
        let confirms = last.is_some_and(|l| cycle >= l);
        let k = u64::from(self.cfg.retain_cycles);
        let mut dead = std::mem::take(&mut self.scratch);
        dead.clear();
        for (&addr, e) in self.table.objects.range_mut(s.base..end) {
            let idx = (addr - s.base) / s.elemsize;
            let Some(&byte) = usize::try_from(idx / 8).ok().and_then(|i| s.marks.get(i)) else {
                self.stats.unknown_mark_bits += 1;
                continue;
            };
            if u64::from(e.born) >= cycle {
                self.stats.sweep_too_young += 1;
                continue;
            }
            if byte >> (idx % 8) & 1 == 0 {
                // The sweep resurrects an object with a finalizer, and frees the finalizer's special
                // (`mgcsweep.go@go1.27.3:554-612`): it dies at a later sweep, once the finalizer has run.
                if e.has_finalizer() {
                    e.set_finalizer(false);
                    self.stats.resurrected += 1;
                } else {
                    dead.push(addr);
                }
            } else if confirms && !e.confirmed() {
                let before = survived(e, last) >= k;
                e.set_confirmed(true);
                if !before && survived(e, last) >= k {
                    let site = &mut self.sites[e.site()].1;
                    site.retained_count += 1;
                    site.retained_bytes += e.size;
                }
            }
        }
        for &addr in &dead {
            if let Some(e) = self.table.remove(addr) {
                self.retire(&e, Death::Sweep(cycle), time_ns);
            }
        }
        self.scratch = dead;
    }

    /// Lifetimes of the objects that died (seconds) and sizes of every allocation (bytes), over all
    /// sites, in buckets with the given upper bounds (a last, unbounded bucket is added).
    pub fn distributions(&self, lifetime_bounds_s: &[f64], size_bounds: &[f64]) -> Distributions {
        let mut lifetime = Buckets::new(lifetime_bounds_s);
        let mut size = Buckets::new(size_bounds);
        for (_, s) in &self.sites {
            for v in s.lifetime_ns.iter_recorded() {
                lifetime.add(v.value_iterated_to() as f64 / 1e9, v.count_at_value());
            }
            for v in s.size_bytes.iter_recorded() {
                size.add(v.value_iterated_to() as f64, v.count_at_value());
            }
        }
        Distributions {
            lifetime_seconds: lifetime,
            size_bytes: size,
        }
    }

    /// `SetFinalizer` gave the object at `addr` a finalizer (`on`), or removed it.
    pub fn on_finalizer(&mut self, addr: u64, on: bool) {
        if let Some(e) = self.table.objects.get_mut(&addr) {
            e.set_finalizer(on);
        }
    }

    /// The object containing `addr` is dead (an exact event such as `freeSpecial`).
    pub fn on_free(&mut self, addr: u64, time_ns: u64) {
        match self.table.containing(addr).and_then(|start| self.table.remove(start)) {
            Some(e) => self.retire(&e, Death::Exact, time_ns),
            None => self.stats.untracked_frees += 1,
        }
    }
}

/// Object lifetimes and allocation sizes, bucketed as Prometheus histograms are.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Distributions {
    /// Of objects whose death was seen.
    pub lifetime_seconds: Buckets,
    pub size_bytes: Buckets,
}

/// Counts per bucket (not cumulative), with each bucket's upper bound; the last bound is infinite
/// (serialized as null). Values are hdrhistogram's (one significant digit), so the sum is close.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Buckets {
    pub upper_bounds: Vec<f64>,
    pub counts: Vec<u64>,
    pub sum: f64,
    pub count: u64,
}

impl Buckets {
    fn new(bounds: &[f64]) -> Self {
        let mut upper_bounds = bounds.to_vec();
        upper_bounds.push(f64::INFINITY);
        Buckets {
            counts: vec![0; upper_bounds.len()],
            upper_bounds,
            sum: 0.0,
            count: 0,
        }
    }

    fn add(&mut self, value: f64, n: u64) {
        let i = self
            .upper_bounds
            .iter()
            .position(|&b| value <= b)
            .unwrap_or(self.upper_bounds.len() - 1);
        self.counts[i] += n;
        self.sum += value * n as f64;
        self.count += n;
    }
}

/// A hasher for `u64` ids (site ids may be raw PCs or hashes): one multiply-xorshift round, no SipHash.
#[derive(Default)]
struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        let x = self.0.wrapping_mul(0x9e37_79b9_7f4a_7c15);
        x ^ (x >> 29)
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 ^= n;
    }
}
