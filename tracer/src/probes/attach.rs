//! Loading the eBPF programs and attaching them at a [`ProbePlan`]'s points of one process.

use std::{num::NonZeroU32, time::Instant};

use aya::{
    maps::{MapData, PerCpuArray, RingBuf},
    programs::{
        uprobe::{UProbeAttachLocation, UProbeAttachPoint, UProbeScope},
        UProbe,
    },
    Ebpf, EbpfLoader,
};
use tracer_common::{ProbeConfig, SampleBudget, RING_BUFFER_BYTES, SAMPLED_RING_BUFFER_BYTES};

use super::plan::{ProbePlan, ProbePoint};
use crate::{
    error::Failure,
    gobin::{GoBinary, RuntimeLayout},
    probes::sampling::Mode,
    process::Process,
};

/// What runs at the probe points.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Programs {
    Tracing,
    Empty,
}

/// The loaded eBPF programs, attached to one process. Dropping it detaches every probe (the
/// kernel also removes them if maptrace is killed: they live as long as its descriptors).
pub struct Tracer {
    ebpf: Ebpf,
    /// Sampled mode's budget, for the whole target (samples per second).
    pub budget: u64,
    pub attached: usize,
    pub attach_time: std::time::Duration,
}

static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(env!("MAPTRACE_EBPF_OBJECT"));

impl Tracer {
    /// `budget`: sampled mode's trap budget, sampled allocations per second for the target.
    pub fn attach(
        bin: &GoBinary,
        process: &Process,
        plan: &ProbePlan,
        load_bias: u64,
        budget: u64,
    ) -> Result<Self, Failure> {
        Self::attach_programs(bin, process, plan, load_bias, Programs::Tracing, budget)
    }

    /// Attaches an empty program at every place `attach` would put one: what the kernel's uprobe
    /// traps cost by themselves (the benchmark's floor). No records come.
    pub fn attach_empty(bin: &GoBinary, process: &Process, plan: &ProbePlan, load_bias: u64) -> Result<Self, Failure> {
        Self::attach_programs(bin, process, plan, load_bias, Programs::Empty, 0)
    }

    fn attach_programs(
        bin: &GoBinary,
        process: &Process,
        plan: &ProbePlan,
        load_bias: u64,
        programs: Programs,
        budget: u64,
    ) -> Result<Self, Failure> {
        let start = Instant::now();
        let mut ebpf = load(&runtime_config(bin, plan.mode, load_bias, budget), plan.mode)?;
        let pid = NonZeroU32::new(process.pid).ok_or(Failure::NoSuchProcess { pid: 0 })?;
        let mut attached = 0;
        for point in &plan.points {
            attached += attach_point(&mut ebpf, bin, process, pid, point, programs)?;
        }
        Ok(Self {
            ebpf,
            budget,
            attached,
            attach_time: start.elapsed(),
        })
    }

    /// Removes every probe. The kernel unregisters uprobes one at a time with a grace period
    /// each (~0.11 s here, also when closed from several threads: 68 probes take 7.5 s), which is
    /// why callers print their report before detaching.
    pub fn detach(self) {
        drop(self);
    }

    /// The ring buffer of [`tracer_common::Record`]s (can be taken once).
    pub fn take_records(&mut self) -> anyhow::Result<RingBuf<MapData>> {
        let map = self
            .ebpf
            .take_map("RECORDS")
            .ok_or_else(|| anyhow::anyhow!("RECORDS map missing"))?;
        Ok(RingBuf::try_from(map)?)
    }

    /// Records the kernel dropped because the ring buffer was full.
    pub fn lost_records(&self) -> u64 {
        self.ebpf
            .map("LOST")
            .and_then(|m| PerCpuArray::<_, u64>::try_from(m).ok())
            .and_then(|a| a.get(&0, 0).ok())
            .map(|per_cpu| per_cpu.iter().sum())
            .unwrap_or(0)
    }
}

impl Tracer {
    /// Sampled mode's budget counters, summed over CPUs (k is the largest of them).
    pub fn sample_budget(&self) -> SampleBudget {
        let per_cpu = self
            .ebpf
            .map("BUDGET")
            .and_then(|m| PerCpuArray::<_, SampleBudget>::try_from(m).ok())
            .and_then(|a| a.get(&0, 0).ok());
        let mut sum = SampleBudget::default();
        for b in per_cpu.iter().flat_map(|v| v.iter()) {
            sum.total_hits += b.total_hits;
            sum.thinned += b.thinned;
            sum.shift = sum.shift.max(b.shift);
        }
        sum
    }
}

/// What the eBPF programs are told about this target's runtime, and sampled mode's budget per CPU.
fn runtime_config(bin: &GoBinary, mode: Mode, load_bias: u64, budget: u64) -> ProbeConfig {
    let mut config = probe_config(bin.layout(), load_bias);
    if mode == Mode::Sampled {
        config.special_kind_profile = u64::from(bin.layout().sampling.profile_special_kind);
        let cpus = aya::util::nr_cpus().map_or(1, |n| n.max(1)) as u64;
        config.samples_per_cpu_second = budget.div_ceil(cpus).max(1);
    }
    // The finalizer goroutine's loop: runfinq until Go 1.24, runFinalizers since.
    if let Some(f) = bin
        .function("runtime.runfinq")
        .or_else(|| bin.function("runtime.runFinalizers"))
    {
        config.finalizer_loop_start = f.entry + load_bias;
        config.finalizer_loop_end = f.end + load_bias;
    }
    config
}

/// Every program the object holds, loaded into the kernel with this target's config and ring buffer size.
fn load(config: &ProbeConfig, mode: Mode) -> Result<Ebpf, Failure> {
    let ring_bytes = if mode == Mode::Sampled {
        SAMPLED_RING_BUFFER_BYTES
    } else {
        RING_BUFFER_BYTES
    };
    // No kernel BTF: the programs read only user memory and registers, so there is nothing to relocate against
    // it, and parsing the kernel's (megabytes) at every attach left each target's share of the agent's heap
    // tens of MiB larger.
    let mut ebpf = EbpfLoader::new()
        .btf(None)
        .override_global("CONFIG", config, true)
        .map_max_entries("RECORDS", ring_bytes)
        .load(EBPF_OBJECT)
        .map_err(|e| load_failure(&e))?;
    for name in PROGRAMS {
        let prog: &mut UProbe = program(&mut ebpf, name)?;
        prog.load().map_err(|e| load_failure(&e))?;
    }
    Ok(ebpf)
}

/// The programs of the eBPF object (`empty` is the benchmark's floor: a probe that does nothing).
const PROGRAMS: [&str; 10] = [
    "alloc_entry",
    "alloc_ret",
    "constructor_entry",
    "constructor_ret",
    "gc_cycle_end",
    "span_sweep",
    "object_event",
    "special_freed",
    "sampled_alloc",
    "empty",
];

/// Attaches one probe point: its entry program and, where its role reads a result, the return program at each
/// RET. Returns the uprobes attached.
fn attach_point(
    ebpf: &mut Ebpf,
    bin: &GoBinary,
    process: &Process,
    pid: NonZeroU32,
    point: &ProbePoint,
    programs: Programs,
) -> Result<usize, Failure> {
    let (entry_prog, ret_prog, cookie) = point.role.programs();
    let sites = std::iter::once((entry_prog, point.at, cookie)).chain(point.rets.iter().map(|&r| (ret_prog, r, None)));
    let mut attached = 0;
    for (prog_name, vaddr, cookie) in sites {
        let prog_name = if programs == Programs::Empty {
            "empty"
        } else {
            prog_name
        };
        let offset = bin.file_offset(vaddr).ok_or_else(|| {
            Failure::Other(anyhow::anyhow!(
                "{}: address {vaddr:#x} is not in the file",
                point.function.name
            ))
        })?;
        let prog: &mut UProbe = program(ebpf, prog_name)?;
        let at = UProbeAttachPoint {
            location: UProbeAttachLocation::AbsoluteOffset(offset),
            cookie,
        };
        prog.attach(at, &process.exe_path, UProbeScope::OneProcess(pid))
            .map_err(|e| {
                if process.has_exited() {
                    Failure::NoSuchProcess { pid: process.pid }
                } else {
                    attach_failure(&point.function.name, &e)
                }
            })?;
        attached += 1;
    }
    Ok(attached)
}

/// The eBPF side's view of the runtime layout, with addresses moved by the load bias.
fn probe_config(layout: &RuntimeLayout, load_bias: u64) -> ProbeConfig {
    let span = &layout.span;
    let (inline_min, inline_max) = if layout.inline_mark_bits {
        layout.inline_mark_sizes
    } else {
        (0, 0)
    };
    ProbeConfig {
        goid_offset: layout.goid_offset,
        gc_cycles_addr: layout.gc_cycles_addr + load_bias,
        span_start_addr: span.start_addr,
        span_npages: span.npages,
        span_nelems: span.nelems,
        span_nelems_size: u64::from(span.nelems_size),
        span_elemsize: span.elemsize,
        span_gcmark_bits: span.gcmark_bits,
        inline_marks_min: inline_min,
        inline_marks_max: inline_max,
        finalizer_loop_start: 0,
        finalizer_loop_end: 0,
        special_kind: layout.special_kind_offset,
        special_kind_cleanup: layout.cleanups.map_or(0, |c| u64::from(c.special_kind)),
        special_cleanup_handle: layout.cleanups.map_or(0, |c| c.special_handle_offset),
        special_kind_profile: 0,
        samples_per_cpu_second: 0,
    }
}

fn program<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut UProbe, Failure> {
    ebpf.program_mut(name)
        .ok_or_else(|| Failure::Other(anyhow::anyhow!("eBPF program {name} missing from the object")))?
        .try_into()
        .map_err(|e| Failure::Other(anyhow::anyhow!("eBPF program {name}: {e}")))
}

fn load_failure(e: &dyn std::error::Error) -> Failure {
    let text = error_chain(e);
    if text.contains("Operation not permitted") {
        // With every capability present, EPERM means a lockdown or a seccomp filter refused BPF.
        let missing = crate::process::missing_capabilities();
        Failure::Privileges {
            missing: if missing.is_empty() { vec!["CAP_BPF"] } else { missing },
        }
    } else {
        Failure::KernelSupport {
            what: format!("loading the eBPF programs failed: {text}"),
        }
    }
}

fn attach_failure(function: &str, e: &dyn std::error::Error) -> Failure {
    let text = error_chain(e);
    if text.contains("Operation not permitted") {
        Failure::Privileges {
            missing: vec!["CAP_PERFMON"],
        }
    } else if text.contains("No such file") && text.contains("uprobe") {
        Failure::KernelSupport {
            what: format!("uprobes unavailable: {text}"),
        }
    } else {
        Failure::Other(anyhow::anyhow!("attaching to {function}: {text}"))
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}
