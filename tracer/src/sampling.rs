//! Sampled mode: instead of trapping on every allocation, maptrace takes the samples the Go
//! runtime's own heap profiler picks (`runtime.MemProfileRate`: on average one per that many bytes
//! allocated) at `mProf_Malloc`, and their deaths when a sweep releases their profile special.
//! Counts become estimates, scaled the way `go tool pprof` scales heap profiles.
//!
//! The rate is the target's. Programs that never refer to `runtime.MemProfile` (no
//! `runtime/pprof`, no `net/http/pprof`) run with it at 0, and then nothing is sampled: maptrace
//! says so, and sets it only when asked (`--sample-rate N --write-memprofilerate`), restoring the
//! old value at detach if nobody changed it meanwhile. Writing the rate is safe for the target:
//! the allocator reads it afresh on every allocation (since 1.24 each P also notices the change
//! by comparing it with its cached copy), and a nonzero rate only adds profile records.

use std::sync::Arc;

use clap::ValueEnum;
use serde::Serialize;

use crate::{error::Failure, process::Process, target::SamplingLayout};

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

/// Sampled allocations per second the kernel passes on in full before thinning them.
pub const DEFAULT_BUDGET: u64 = 2000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SamplingOptions {
    /// Set the target's `MemProfileRate` to this many bytes (needs `write_rate`).
    pub rate: Option<u64>,
    /// The user allowed maptrace to write the target's memory for it.
    pub write_rate: bool,
    /// The trap budget: sampled allocations per second, for the whole target.
    pub budget: u64,
}

impl Default for SamplingOptions {
    fn default() -> Self {
        SamplingOptions { rate: None, write_rate: false, budget: DEFAULT_BUDGET }
    }
}

/// The target's `runtime.MemProfileRate` as maptrace found it and left it.
pub struct SampleRate {
    process: Arc<Process>,
    /// Runtime address (load bias applied); None when the binary does not tell where it is.
    addr: Option<u64>,
    /// The value before maptrace wrote it, if it did.
    original: Option<u64>,
    written: Option<u64>,
    /// As read at attach (after any write): what reports say once the target is gone.
    at_attach: Option<u64>,
}

impl SampleRate {
    /// Reads the rate and, if asked to, sets it. Fails only when a requested write cannot be made.
    pub fn attach(process: Arc<Process>, layout: &SamplingLayout, load_bias: u64, opts: &SamplingOptions) -> Result<Self, Failure> {
        let mut rate =
            SampleRate { process, addr: layout.rate_addr.map(|a| a + load_bias), original: None, written: None, at_attach: None };
        if let Some(want) = opts.rate {
            if !opts.write_rate {
                return Err(Failure::Other(anyhow::anyhow!("--sample-rate writes the target's memory: add --write-memprofilerate")));
            }
            let addr = rate.addr.ok_or_else(|| {
                Failure::Other(anyhow::anyhow!(
                    "--sample-rate: cannot find runtime.MemProfileRate in this binary (stripped arm64?); use --mode full"
                ))
            })?;
            let before = rate.current().unwrap_or(0);
            rate.process
                .write(addr, &want.to_le_bytes())
                .map_err(|e| Failure::Other(anyhow::anyhow!("--sample-rate: writing runtime.MemProfileRate at {addr:#x}: {e}")))?;
            rate.original = Some(before);
            rate.written = Some(want);
        }
        rate.at_attach = rate.current();
        Ok(rate)
    }

    /// The rate in effect now (None: unknown).
    pub fn current(&self) -> Option<u64> {
        self.process.read_u64(self.addr?).ok()
    }

    /// What the report says about it.
    pub fn info(&self) -> RateInfo {
        RateInfo { memprofilerate: self.current().or(self.at_attach), set_by_maptrace_from: self.original }
    }

    /// Puts the old value back if the rate is still the one maptrace wrote.
    pub fn restore(&self) {
        if let (Some(addr), Some(old), Some(ours)) = (self.addr, self.original, self.written) {
            if self.current() == Some(ours) {
                let _ = self.process.write(addr, &old.to_le_bytes());
            }
        }
    }
}

#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct RateInfo {
    /// `runtime.MemProfileRate` now: bytes per sample on average (None: unknown; 0: the
    /// runtime samples nothing).
    pub memprofilerate: Option<u64>,
    /// maptrace set the rate (`--sample-rate`); it was this before, and is put back at detach.
    pub set_by_maptrace_from: Option<u64>,
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
    /// The kernel's trap budget: sampled allocations per second sent in full.
    pub budget_per_second: u64,
    /// Sampled allocations the runtime made while traced; of them, those the budget thinned out
    /// (and weighted the rest for) and those it dropped in bursts (not compensated: estimates are
    /// low by about that many samples).
    pub samples_seen: u64,
    pub samples_thinned: u64,
    pub samples_dropped_over_budget: u64,
    /// How counts were scaled.
    pub scaling: &'static str,
}

pub const SCALING: &str = "estimates: each sample of s bytes counts 1/(1-exp(-s/MemProfileRate)) allocations (as go tool pprof \
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
}
