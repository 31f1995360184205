//! Sampled mode: instead of trapping on every allocation, maptrace takes the samples the Go
//! runtime's own heap profiler picks (`runtime.MemProfileRate`: on average one per that many bytes
//! allocated) at `mProf_Malloc`, and their deaths when a sweep releases their profile special.
//! Counts become estimates, scaled the way `go tool pprof` scales heap profiles.
//!
//! The rate is the target's. Programs that never refer to `runtime.MemProfile` (no
//! `runtime/pprof`, no `net/http/pprof`) run with it at 0, and then nothing is sampled: maptrace
//! says so, and writes it only when allowed (`--write-memprofilerate`), restoring the old value at
//! detach if nobody changed it meanwhile. Writing the rate is safe for the target: the allocator
//! reads it afresh on every allocation (since 1.24 each P also notices the change by comparing it
//! with its cached copy), and a nonzero rate only adds profile records.
//!
//! Each sample costs two traps (its allocation, its death). The kernel's budget thins what it
//! sends, but the trap has happened by then; only a higher rate means fewer traps. So when
//! allowed to write, a [`RateGovernor`] raises the rate while samples exceed the budget and lowers
//! it back (never below the rate the target had or `--sample-rate` asked for) when they fall well
//! under it.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use clap::ValueEnum;
use serde::Serialize;

use crate::{error::Failure, gobin::SamplingLayout, process::Process};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// The runtime's allocation samples, GC cycles and finalizers: cheap enough to leave on.
    Sampled,
    /// Every allocation (the mallocgc family and the slice/map constructors): exact, costly.
    Full,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Sampled => "sampled",
            Mode::Full => "full",
        }
    }
}

/// Sampled allocations per second the kernel passes on in full before thinning them, and the
/// governor's target. About twice as many traps: ~1 ms of CPU per second on bare metal, ~2 % of
/// two vCPUs on the nested-virtualisation VMs maptrace is developed on (~18 µs a trap).
pub const DEFAULT_BUDGET: u64 = 500;

/// The governor's highest rate, 64 MiB: the runtime draws the distance to the next sample with a
/// mean of at most 0x7000000 bytes (`fastexprand`, every release), so a higher rate would sample
/// no less and only make the scaling wrong.
const MAX_GOVERNED_RATE: u64 = 64 << 20;
const _: () = assert!(MAX_GOVERNED_RATE <= 0x7000000);

/// The governor's shortest measuring window.
const GOVERNOR_PERIOD: Duration = Duration::from_millis(250);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SamplingOptions {
    /// Set the target's `MemProfileRate` to this many bytes (needs `write_rate`).
    pub rate: Option<u64>,
    /// The user allowed maptrace to write the target's `MemProfileRate`: to `rate`, and to keep
    /// the samples within the budget.
    pub write_rate: bool,
    /// The trap budget: sampled allocations per second, for the whole target.
    pub budget: u64,
}

impl Default for SamplingOptions {
    fn default() -> Self {
        SamplingOptions {
            rate: None,
            write_rate: false,
            budget: DEFAULT_BUDGET,
        }
    }
}

/// The target's `runtime.MemProfileRate` as maptrace found it and left it.
pub struct SampleRate {
    process: Arc<Process>,
    /// Runtime address (load bias applied); None when the binary does not tell where it is.
    addr: Option<u64>,
    /// The value before maptrace first wrote it, if it did.
    original: Option<u64>,
    /// maptrace's last write.
    written: Option<u64>,
    /// As read at attach (after any write): what reports say once the target is gone, unless
    /// maptrace wrote it since.
    at_attach: Option<u64>,
    /// Present when maptrace may write the rate and knows where it is.
    governor: Option<RateGovernor>,
}

impl SampleRate {
    /// Reads the rate and, if asked to, sets it. Fails only when a requested write cannot be made.
    pub fn attach(
        process: Arc<Process>,
        layout: &SamplingLayout,
        load_bias: u64,
        opts: &SamplingOptions,
    ) -> Result<Self, Failure> {
        let mut rate = SampleRate {
            process,
            addr: layout.rate_addr.map(|a| a + load_bias),
            original: None,
            written: None,
            at_attach: None,
            governor: None,
        };
        if let Some(want) = opts.rate {
            if !opts.write_rate {
                return Err(Failure::Other(anyhow::anyhow!(
                    "--sample-rate writes the target's memory: add --write-memprofilerate"
                )));
            }
            if rate.addr.is_none() {
                return Err(Failure::Other(anyhow::anyhow!(
                    "--sample-rate: cannot find runtime.MemProfileRate in this binary (stripped arm64?); use --mode full"
                )));
            }
            rate.write(want).map_err(|e| match rate.process.has_exited() {
                true => Failure::NoSuchProcess { pid: rate.process.pid },
                false => Failure::Other(anyhow::anyhow!("--sample-rate: {e}")),
            })?;
        }
        rate.at_attach = rate.current();
        if let (true, Some(floor)) = (opts.write_rate, rate.at_attach) {
            rate.governor = Some(RateGovernor::new(floor, opts.budget));
        }
        Ok(rate)
    }

    /// The rate in effect now (None: unknown).
    pub fn current(&self) -> Option<u64> {
        self.process.read_u64(self.addr?).ok()
    }

    fn write(&mut self, value: u64) -> Result<(), String> {
        let addr = self.addr.ok_or("the address of runtime.MemProfileRate is unknown")?;
        let before = self.current().unwrap_or(0);
        self.process
            .write(addr, &value.to_le_bytes())
            .map_err(|e| format!("writing runtime.MemProfileRate at {addr:#x}: {e}"))?;
        self.original.get_or_insert(before);
        self.written = Some(value);
        Ok(())
    }

    /// The governor's step, given the sampled allocations counted since attach: the change it
    /// made, if any. It stops for good once the rate is not what it last saw (the target set it
    /// itself).
    /// `samples_seen` is asked (a map read) only when a step is due.
    pub fn govern(&mut self, samples_seen: impl FnOnce() -> u64, now: Instant) -> Option<RateChange> {
        if !self.governor.as_ref()?.due(now) {
            return None;
        }
        let rate = self.current()?;
        let governor = self.governor.as_mut()?;
        if rate != governor.last_rate {
            self.governor = None;
            return None;
        }
        let change = governor.step(rate, samples_seen(), now)?;
        if self.write(change.to).is_err() {
            self.governor = None;
            return None;
        }
        Some(change)
    }

    /// What the report says about it.
    pub fn info(&self) -> RateInfo {
        RateInfo {
            memprofilerate: self.current().or(self.written).or(self.at_attach),
            set_by_maptrace_from: self.original,
            governor: self.governor.as_ref().map(RateGovernor::info),
        }
    }

    /// Puts the old value back if the rate is still the one maptrace wrote (the target may have set its own
    /// since), once.
    fn restore(&mut self) {
        if let (Some(addr), Some(old), Some(ours)) = (self.addr, self.original, self.written.take()) {
            if self.current() == Some(ours) {
                let _ = self.process.write(addr, &old.to_le_bytes());
            }
        }
    }
}

/// The undo guard: whatever ends a trace after the rate was written (the end, an error, a signal handled, a
/// panic unwinding, the agent dropping a target), dropping the rate puts the target's own back. Only a death
/// that runs no code (SIGKILL) leaves it; `maptrace --pid P --restore-memprofilerate N` undoes that.
impl Drop for SampleRate {
    fn drop(&mut self) {
        self.restore();
    }
}

/// Keeps the target's sampled allocations per second near the budget by moving `MemProfileRate`
/// in powers of two: up at once by the factor the budget was exceeded by, down by halves when
/// under a quarter of it, never below `floor`. One step per [`GOVERNOR_PERIOD`] at most, so a
/// burst costs the target at most that long at the old rate.
pub struct RateGovernor {
    floor: u64,
    budget: u64,
    last_rate: u64,
    last_samples: u64,
    last_at: Option<Instant>,
    highest: u64,
    changes: u64,
}

impl RateGovernor {
    pub fn new(floor: u64, budget: u64) -> Self {
        RateGovernor {
            floor,
            budget,
            last_rate: floor,
            last_samples: 0,
            last_at: None,
            highest: floor,
            changes: 0,
        }
    }

    /// Whether a [`Self::step`] would measure now (the first call starts the clock).
    fn due(&self, now: Instant) -> bool {
        self.last_at
            .is_none_or(|since| now.duration_since(since) >= GOVERNOR_PERIOD)
    }

    /// Called with the running count of sampled allocations; the change to make, if any.
    fn step(&mut self, rate: u64, samples_seen: u64, now: Instant) -> Option<RateChange> {
        let Some(since) = self.last_at else {
            (self.last_at, self.last_samples) = (Some(now), samples_seen);
            return None;
        };
        let elapsed = now.duration_since(since);
        if elapsed < GOVERNOR_PERIOD {
            return None;
        }
        let seconds = elapsed.as_secs_f64();
        let per_second = samples_seen.saturating_sub(self.last_samples) as f64 / seconds;
        (self.last_at, self.last_samples) = (Some(now), samples_seen);
        let next = governed_rate(rate, self.floor, self.budget, per_second);
        if next == rate {
            return None;
        }
        self.last_rate = next;
        self.highest = self.highest.max(next);
        self.changes += 1;
        Some(RateChange {
            from: rate,
            to: next,
            grace: countdown_grace(per_second),
        })
    }

    fn info(&self) -> GovernorInfo {
        GovernorInfo {
            floor: self.floor,
            highest: self.highest,
            changes: self.changes,
        }
    }
}

/// How long samples still come from countdowns drawn at the old rate after a change: on Go up to
/// 1.23 each P finishes the distance to its next sample it drew before; since 1.24 each P samples
/// its next allocation at once (it notices the change). Three mean intervals between one P's
/// samples, taking one P per CPU, between 1 ms and the governor's period.
fn countdown_grace(per_second: f64) -> Duration {
    let cpus = aya::util::nr_cpus().map_or(1, |n| n.max(1)) as f64;
    Duration::from_secs_f64(3.0 * cpus / per_second.max(1.0)).clamp(Duration::from_millis(1), GOVERNOR_PERIOD)
}

/// The governor changed `MemProfileRate`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RateChange {
    pub from: u64,
    pub to: u64,
    /// Samples taken this long after the change are scaled at `from` (see [`countdown_grace`]).
    pub grace: Duration,
}

/// The rates samples were taken at, by kernel timestamp: the rate now, and the one before the
/// last change for the samples that close countdowns drawn before it. Scaling those at the new
/// rate would count each as up to new/old times too many allocations.
#[derive(Clone, Copy, Debug, Default)]
pub struct SampleRates {
    current: u64,
    previous: u64,
    /// CLOCK_MONOTONIC nanoseconds: samples before `until_ns` were taken at `previous`.
    until_ns: u64,
}

impl SampleRates {
    pub fn fixed(rate: u64) -> Self {
        SampleRates {
            current: rate,
            previous: rate,
            until_ns: 0,
        }
    }

    /// The governor made `change` at `at_ns`.
    pub fn change(&mut self, change: &RateChange, at_ns: u64) {
        *self = SampleRates {
            current: change.to,
            previous: change.from,
            until_ns: at_ns + change.grace.as_nanos() as u64,
        };
    }

    /// The rate a sample taken at `ktime_ns` is scaled at.
    pub fn at(&self, ktime_ns: u64) -> u64 {
        if ktime_ns < self.until_ns {
            self.previous
        } else {
            self.current
        }
    }
}

/// The rate that brings `per_second` samples at `rate` within `budget` (see [`RateGovernor`]).
fn governed_rate(rate: u64, floor: u64, budget: u64, per_second: f64) -> u64 {
    if rate == 0 {
        return 0; // the profiler is off: nothing to govern
    }
    let budget = budget.max(1) as f64;
    if per_second > budget {
        let factor = ((per_second / budget).ceil() as u64).next_power_of_two();
        rate.saturating_mul(factor).min(MAX_GOVERNED_RATE).max(rate)
    } else if per_second * 4.0 < budget && rate > floor {
        (rate / 2).max(floor)
    } else {
        rate
    }
}

/// What the governor did, for the report.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct GovernorInfo {
    /// The rate it never goes below (the target's, or `--sample-rate`).
    pub floor: u64,
    /// The highest rate it set.
    pub highest: u64,
    /// How many times it changed the rate.
    pub changes: u64,
}

#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct RateInfo {
    /// `runtime.MemProfileRate` now: bytes per sample on average (None: unknown; 0: the
    /// runtime samples nothing).
    pub memprofilerate: Option<u64>,
    /// maptrace set the rate (`--sample-rate` or the governor); it was this before, and is put
    /// back at detach.
    pub set_by_maptrace_from: Option<u64>,
    /// With `--write-memprofilerate`: the governor keeping samples within the budget.
    pub governor: Option<GovernorInfo>,
}

/// How many allocations one sample of `size` bytes stands for at `rate`, as `go tool pprof`
/// scales heap profiles: a block of s bytes is sampled with probability 1 - e^(-s/rate).
pub fn allocations_per_sample(size: u64, rate: u64) -> f64 {
    if rate <= 1 || size == 0 {
        return 1.0;
    }
    1.0 / (1.0 - (-(size as f64) / rate as f64).exp())
}

/// Sampled mode's part of a report.
#[derive(Clone, Debug, Serialize)]
pub struct SamplingInfo {
    #[serde(flatten)]
    pub rate: RateInfo,
    /// The trap budget: sampled allocations per second the kernel sends in full (and the
    /// governor aims at).
    pub budget_per_second: u64,
    /// Sampled allocations the runtime made while traced, and those the budget thinned out (the
    /// ones sent are weighted for them).
    pub samples_seen: u64,
    pub samples_thinned: u64,
    /// How counts were scaled.
    pub scaling: &'static str,
}

pub const SCALING: &str =
    "estimates: each sample of s bytes counts 1/(1-exp(-s/MemProfileRate)) allocations (as go tool pprof \
                           scales heap profiles), times 2^k when the kernel's trap budget kept one sample in 2^k";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scale_like_pprof() {
        assert_eq!(allocations_per_sample(100, 1), 1.0, "rate 1 samples everything");
        assert_eq!(allocations_per_sample(100, 0), 1.0);
        // A block as large as the rate is sampled with probability 1 - 1/e.
        let w = allocations_per_sample(4096, 4096);
        assert!((w - 1.0 / (1.0 - (-1f64).exp())).abs() < 1e-12, "{w}");
        // Small blocks stand for about rate/size allocations; huge ones for one.
        assert!((allocations_per_sample(16, 512 * 1024) - 32768.5).abs() < 1.0);
        assert!((allocations_per_sample(1 << 30, 512 * 1024) - 1.0).abs() < 1e-9);
    }

    #[test]
    fn governed_rate_moves_in_powers_of_two_within_bounds() {
        const K: u64 = 512 * 1024;
        assert_eq!(governed_rate(0, 0, 500, 1e6), 0, "a profiler that is off stays off");
        assert_eq!(governed_rate(K, K, 500, 500.0), K, "at the budget: unchanged");
        assert_eq!(governed_rate(K, K, 500, 501.0), 2 * K);
        assert_eq!(governed_rate(K, K, 500, 2250.0), 8 * K, "4.5x over: 8x the rate");
        assert_eq!(
            governed_rate(1, 1, 500, 3e6),
            8192,
            "rate 1 (every allocation) goes up too"
        );
        assert_eq!(governed_rate(MAX_GOVERNED_RATE, K, 500, 1e9), MAX_GOVERNED_RATE);
        assert_eq!(governed_rate(8 * K, K, 500, 124.0), 4 * K, "under a quarter: halve");
        assert_eq!(
            governed_rate(8 * K, K, 500, 126.0),
            8 * K,
            "between a quarter and the budget: hold"
        );
        assert_eq!(governed_rate(K, K, 500, 0.0), K, "never below the floor");
        assert_eq!(governed_rate(3 * K, 2 * K, 500, 0.0), 2 * K);
    }

    #[test]
    fn governor_steps_at_most_once_a_period() {
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        let mut g = RateGovernor::new(1024, 100);
        assert!(g.due(t0));
        assert_eq!(g.step(1024, 0, t0), None, "the first call starts the clock");
        assert!(!g.due(t0 + GOVERNOR_PERIOD / 2));
        assert_eq!(g.step(1024, 5000, t0 + GOVERNOR_PERIOD / 2), None, "too early");
        assert!(g.due(t0 + GOVERNOR_PERIOD));
        let to = |c: Option<RateChange>| c.map(|c| (c.from, c.to));
        assert_eq!(
            to(g.step(1024, 1000, t0 + s)),
            Some((1024, 16384)),
            "1000/s against 100: x10 -> x16"
        );
        assert_eq!(to(g.step(16384, 1010, t0 + 2 * s)), Some((16384, 8192)), "10/s: halve");
        assert_eq!(g.step(8192, 1060, t0 + 3 * s), None, "50/s: hold");
        let info = g.info();
        assert_eq!((info.floor, info.highest, info.changes), (1024, 16384, 2));
    }

    #[test]
    fn samples_closing_old_countdowns_keep_the_old_rate() {
        let mut rates = SampleRates::fixed(4096);
        assert_eq!((rates.at(0), rates.at(u64::MAX)), (4096, 4096));
        rates.change(
            &RateChange {
                from: 4096,
                to: 65536,
                grace: Duration::from_millis(2),
            },
            10_000_000,
        );
        assert_eq!(rates.at(9_000_000), 4096, "taken before the change");
        assert_eq!(rates.at(11_999_999), 4096, "within the grace");
        assert_eq!(rates.at(12_000_000), 65536);
        assert!(countdown_grace(1e9) >= Duration::from_millis(1) && countdown_grace(0.0) <= GOVERNOR_PERIOD);
    }
}
