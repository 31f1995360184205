//! Per-site aggregates: what one allocation site allocated, what of it is still alive, retained, freed or
//! evicted, how long its objects lived, and where its live population is heading.

use std::collections::VecDeque;

use hdrhistogram::Histogram;

/// How many `(cycle, live_count, live_bytes)` samples a site keeps.
pub const LIVE_HISTORY: usize = 16;
/// How many of the newest samples [`SiteLifecycle::trend`] looks at.
pub const TREND_WINDOW: usize = 8;
/// Fewer samples than this: [`Trend::Unknown`].
pub const TREND_MIN_SAMPLES: usize = 3;

/// Where a site's live population is heading, from [`SiteLifecycle::live_by_cycle`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Trend {
    Growing,
    Stable,
    Shrinking,
    /// Fewer than [`TREND_MIN_SAMPLES`] cycle samples.
    Unknown,
}

impl Trend {
    pub fn as_str(self) -> &'static str {
        match self {
            Trend::Growing => "growing",
            Trend::Stable => "stable",
            Trend::Shrinking => "shrinking",
            Trend::Unknown => "unknown",
        }
    }
}

/// Everything the engine knows about one allocation site.
///
/// Invariant: `allocated_count == live_count + freed_count + evicted_count` (and the same for bytes).
/// `live_*` and `retained_*` are lower bounds as soon as `evicted_count > 0`.
#[derive(Clone, Debug)]
pub struct SiteLifecycle {
    /// Every allocation seen (pprof's `alloc_space` view).
    pub allocated_count: u64,
    pub allocated_bytes: u64,
    /// Tracked and not yet seen dead (the in-use view).
    pub live_count: u64,
    pub live_bytes: u64,
    /// Seen dead: `freed_by_sweep + freed_by_reuse + freed_exact`.
    pub freed_count: u64,
    pub freed_bytes: u64,
    /// Freed by a span sweep (mark bit clear).
    pub freed_by_sweep: u64,
    /// Retired because a new allocation took its address (its sweep event was not seen).
    pub freed_by_reuse: u64,
    /// Reported dead by an exact event ([`super::Lifecycle::on_free`], e.g. `freeSpecial`).
    pub freed_exact: u64,
    /// Live objects that survived at least K completed cycles (see [`super::Lifecycle`] for "survived").
    pub retained_count: u64,
    pub retained_bytes: u64,
    /// Dropped from the table by the `max_tracked` bound while still alive: their later death is not seen.
    pub evicted_count: u64,
    pub evicted_bytes: u64,
    /// Of `evicted_count`, those that were retained when evicted.
    pub evicted_retained_count: u64,
    /// Cycles survived, recorded **at death** only (sweep, reuse, exact free; not eviction). The live
    /// objects' current values are a separate, on-demand snapshot: [`super::Lifecycle::live_survival`].
    /// Two significant digits (exact up to 255 cycles).
    pub survival_cycles: Histogram<u64>,
    /// Death time minus allocation time of dead objects (the death time is the sweep, reuse or free event's
    /// time, so for a reuse it is an upper bound). One significant digit (about 6%), 1 µs resolution:
    /// each site carries one, so it is kept small.
    pub lifetime_ns: Histogram<u64>,
    /// Requested sizes of the site's allocations, one significant digit.
    pub size_bytes: Histogram<u64>,
    /// `(cycle, live_count, live_bytes)` sampled at each [`super::Lifecycle::on_cycle_end`], oldest first,
    /// at most [`LIVE_HISTORY`]. Sampled at mark termination: the survivors of the previous sweep plus
    /// everything allocated since.
    pub live_by_cycle: VecDeque<(u64, u64, u64)>,
}

impl Default for SiteLifecycle {
    fn default() -> Self {
        SiteLifecycle {
            allocated_count: 0,
            allocated_bytes: 0,
            live_count: 0,
            live_bytes: 0,
            freed_count: 0,
            freed_bytes: 0,
            freed_by_sweep: 0,
            freed_by_reuse: 0,
            freed_exact: 0,
            retained_count: 0,
            retained_bytes: 0,
            evicted_count: 0,
            evicted_bytes: 0,
            evicted_retained_count: 0,
            survival_cycles: survival_histogram(),
            lifetime_ns: lifetime_histogram(),
            size_bytes: size_histogram(),
            live_by_cycle: VecDeque::with_capacity(LIVE_HISTORY),
        }
    }
}

impl SiteLifecycle {
    /// Where the live count is heading, over the newest [`TREND_WINDOW`] samples of `live_by_cycle`
    /// (at least [`TREND_MIN_SAMPLES`], else `Unknown`). With `first`/`last` the window's ends, `steps`
    /// the n-1 differences between consecutive samples, `ups`/`downs` how many of them rise/fall:
    /// - **Growing**: `last > first`, `last >= first * 1.1`, `ups > steps / 2` (a strict majority of the
    ///   steps rise: growth spread over the window, not a single jump followed by a plateau) and
    ///   `downs <= steps / 4` (one dip in a full window of 8 is tolerated: the sample is taken at mark
    ///   termination, before the sweep, so churn adds noise; with 3 to 4 samples no dip is).
    ///   So three strictly increasing samples that grow by 10% are the shortest growing series.
    /// - **Shrinking**: the mirror image (`last <= first * 0.9`, `downs > steps / 2`, `ups <= steps / 4`).
    /// - **Stable**: anything else (flat, churning, or a single step followed by a plateau).
    pub fn trend(&self) -> Trend {
        let counts: Vec<u64> = self
            .live_by_cycle
            .iter()
            .rev()
            .take(TREND_WINDOW)
            .rev()
            .map(|s| s.1)
            .collect();
        trend_of(&counts)
    }
}

/// The rule of [`SiteLifecycle::trend`] over live counts, oldest first.
pub fn trend_of(counts: &[u64]) -> Trend {
    let counts = &counts[counts.len().saturating_sub(TREND_WINDOW)..];
    if counts.len() < TREND_MIN_SAMPLES {
        return Trend::Unknown;
    }
    let (first, last) = (u128::from(counts[0]), u128::from(counts[counts.len() - 1]));
    let steps = counts.len() - 1;
    let ups = counts.windows(2).filter(|w| w[1] > w[0]).count();
    let downs = counts.windows(2).filter(|w| w[1] < w[0]).count();
    // Integer percentages: no rounding surprises at the boundary.
    if last > first && last * 10 >= first * 11 && 2 * ups > steps && 4 * downs <= steps {
        Trend::Growing
    } else if last < first && last * 10 <= first * 9 && 2 * downs > steps && 4 * ups <= steps {
        Trend::Shrinking
    } else {
        Trend::Stable
    }
}

fn survival_histogram() -> Histogram<u64> {
    Histogram::new(2).expect("valid histogram bounds")
}

fn size_histogram() -> Histogram<u64> {
    let mut h = Histogram::new(1).expect("valid histogram bounds");
    h.auto(true);
    h
}

fn lifetime_histogram() -> Histogram<u64> {
    let mut h = Histogram::new_with_bounds(1_000, 2_000, 1).expect("valid histogram bounds");
    h.auto(true);
    h
}

/// Records `value`, growing the histogram as needed; beyond what it can ever hold, clamps.
pub(super) fn record(h: &mut Histogram<u64>, value: u64) {
    if h.record(value).is_err() {
        h.saturating_record(value);
    }
}

/// A fresh, empty histogram with the same settings as [`SiteLifecycle::survival_cycles`].
pub fn new_survival_histogram() -> Histogram<u64> {
    survival_histogram()
}
