//! Which runtime functions to probe in a given Go binary, and attaching the eBPF programs there.
//!
//! Every probed function gets an entry uprobe (placed past the stack-bound check, see
//! `target::rets`) plus one uprobe per RET instruction (Go moves goroutine stacks, so uretprobes
//! would corrupt them). Per-version calling conventions are
//! resolved here, once, into a [`ProbePlan`].

pub mod sampling;

use std::{num::NonZeroU32, time::Instant};

use aya::{
    maps::{MapData, PerCpuArray, RingBuf},
    programs::{
        uprobe::{UProbeAttachLocation, UProbeAttachPoint, UProbeScope},
        UProbe,
    },
    Ebpf, EbpfLoader,
};
use tracer_common::{
    ConstructorCookie, ContainerKind, ObjectEventCookie, ProbeConfig, RecordKind, SampleBudget, RING_BUFFER_BYTES,
    SAMPLED_RING_BUFFER_BYTES,
};

use crate::{
    error::Failure,
    gobin::{self, CleanupFunction, Function, GoBinary, GoVersion, RuntimeLayout},
    probes::sampling::Mode,
    process::Process,
};

/// What a probed function's registers mean to the eBPF programs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// The `mallocgc` family: (size, typ, …) → ptr.
    Alloc,
    /// A slice or map constructor; its heap allocations belong to the value it returns.
    Constructor(ConstructorCookie),
    /// `gcMarkTermination`: a GC cycle's marking is complete (entry only).
    CycleEnd,
    /// `(*sweepLocked).sweep`: a span is about to be swept (entry only).
    SpanSweep,
    /// A finalizer or cleanup function (entry only), or the call of a cleanup.
    ObjectEvent(ObjectEventCookie),
    /// `freeSpecial`: a sweep releases an object's special record (entry only).
    SpecialFreed,
    /// `mProf_Malloc`: the runtime's sampler picked an allocation (entry only; sampled mode).
    SampledAlloc(ObjectEventCookie),
}

#[derive(Clone, Debug)]
pub struct ProbePoint {
    pub function: Function,
    /// Where the first probe goes: past the function's stack-bound check (once per call, where
    /// the entry runs again after each trip to `morestack`), or an instruction inside it.
    pub at: u64,
    pub role: Role,
    pub rets: Vec<u64>,
}

/// The functions to probe in one binary.
#[derive(Debug)]
pub struct ProbePlan {
    pub mode: Mode,
    pub points: Vec<ProbePoint>,
}

/// Refuses a runtime the layout table does not describe, saying why in the user's terms.
fn check_supported(v: &GoVersion) -> Result<(), Failure> {
    if gobin::is_supported(v) {
        return Ok(());
    }
    let oldest = gobin::supported_minors().next().unwrap_or(0);
    let newest = gobin::supported_minors().last().unwrap_or(0);
    let why = if v.major != 1 || v.minor < oldest {
        format!("too old (maptrace needs the register ABI and runtime of go1.{oldest}+)")
    } else if v.minor > newest {
        "newer than this maptrace knows; upgrade maptrace".to_string()
    } else {
        "a release maptrace has no runtime layout for".to_string()
    };
    Err(Failure::UnsupportedGo {
        version: v.raw.clone(),
        why,
    })
}

/// Size-specialized malloc entry points (Go 1.27 default, 1.26 with an experiment) are called
/// directly by compiled code, bypassing `mallocgc`; their names follow one pattern.
fn is_size_specialized_malloc(name: &str) -> bool {
    let Some(rest) = name.strip_prefix("runtime.mallocgc") else {
        return false;
    };
    let Some(rest) = ["TinySize", "TinySC", "SmallNoScanSC", "SmallScanNoHeaderSC"]
        .iter()
        .find_map(|p| rest.strip_prefix(p))
    else {
        return false;
    };
    !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_digit())
}

impl ProbePlan {
    /// Full mode probes every allocation; sampled mode only the runtime's sampler, and the rare
    /// events both share (GC cycles, finalizers, cleanups).
    pub fn for_binary(bin: &GoBinary, mode: Mode) -> Result<Self, Failure> {
        let version = bin.version();
        let full = mode == Mode::Full;
        let sampling = bin.layout().sampling;
        check_supported(version)?;
        let slice = |arg| {
            Role::Constructor(ConstructorCookie {
                kind: ContainerKind::Slice,
                type_arg: Some(arg),
            })
        };
        let map = |arg| {
            Role::Constructor(ConstructorCookie {
                kind: ContainerKind::Map,
                type_arg: arg,
            })
        };
        let growslice = slice(bin.layout().growslice_type_arg);
        let object = |kind, ptr_arg, aux_arg, type_arg| {
            Role::ObjectEvent(ObjectEventCookie {
                kind,
                ptr_arg,
                aux_arg,
                deref_ptr: false,
                from_finalizer_loop: false,
                type_arg,
                stack_args: false,
            })
        };

        let mut wanted: Vec<(&Function, Role)> = Vec::new();
        for f in bin.functions() {
            // A name can stand for an assembly body and its register-ABI wrapper: probe the one
            // Go code calls, whose arguments are in registers.
            if bin
                .function(&f.name)
                .is_some_and(|canonical| canonical.entry != f.entry)
            {
                continue;
            }
            let role = match f.name.as_str() {
                "runtime.mallocgc" if full => Role::Alloc,
                n if full && is_size_specialized_malloc(n) => Role::Alloc,
                "runtime.makeslice" | "runtime.makeslice64" | "runtime.makeslicecopy" if full => slice(0),
                "runtime.growslice"
                | "runtime.growsliceNoAlias"
                | "runtime.growsliceBuf"
                | "runtime.growsliceBufNoAlias"
                    if full =>
                {
                    growslice
                }
                "runtime.makemap" | "runtime.makemap64" if full => map(Some(0)),
                "runtime.makemap_small" if full => map(None),
                "runtime.mProf_Malloc" if !full => Role::SampledAlloc(ObjectEventCookie {
                    kind: RecordKind::Sampled,
                    ptr_arg: sampling.malloc_ptr_arg,
                    aux_arg: Some(sampling.malloc_size_arg),
                    deref_ptr: false,
                    from_finalizer_loop: false,
                    type_arg: None,
                    stack_args: false,
                }),
                "runtime.gcMarkTermination" => Role::CycleEnd,
                "runtime.(*sweepLocked).sweep" if full => Role::SpanSweep,
                // addfinalizer(p, f *funcval, nret, fint, ot *ptrtype)
                "runtime.addfinalizer" => object(RecordKind::FinalizerSet, 0, Some(1), Some(4)),
                "runtime.removefinalizer" => object(RecordKind::FinalizerRemoved, 0, None, None),
                // queuefinalizer(p, fn *funcval, nret, fint, ot), called from a sweep
                "runtime.queuefinalizer" => object(RecordKind::FinalizerQueued, 0, Some(1), None),
                // addCleanup(p, handle…) → id; freeSpecial(s *special, p, size) queues a dead object's cleanup.
                "runtime.addCleanup" => match bin.layout().cleanups {
                    Some(c) => {
                        let function = match c.function {
                            CleanupFunction::Register(r) => Some(r),
                            CleanupFunction::CapturedByHandle { .. } => None,
                        };
                        object(RecordKind::CleanupSet, 0, Some(c.handle_at_register), function)
                    }
                    None => continue,
                },
                // Sampled objects die there too (their profile special).
                "runtime.freeSpecial" if !full || bin.layout().cleanups.is_some() => Role::SpecialFreed,
                _ => continue,
            };
            wanted.push((f, role));
        }
        let allocator = if full {
            "runtime.mallocgc"
        } else {
            "runtime.mProf_Malloc"
        };
        if !wanted.iter().any(|(f, _)| f.name == allocator) {
            return Err(Failure::UnsupportedGo {
                version: version.raw.clone(),
                why: format!("{allocator} not found in the symbol table or pclntab"),
            });
        }
        // The finalizer goroutine calls the assembly body of reflectcall directly (ABI0, arguments
        // on the stack: stackArgsType, fn, stackArgs, three uint32 sizes, regArgs at words 1..6 from
        // SP): fn at word 2, regArgs at word 6, whose first word is the finalized object.
        let canonical = bin.function("runtime.reflectcall").map(|f| f.entry);
        if let Some(body) = bin
            .functions()
            .find(|f| f.name == "runtime.reflectcall" && Some(f.entry) != canonical)
        {
            let started = ObjectEventCookie {
                kind: RecordKind::FinalizerStarted,
                ptr_arg: 6,
                aux_arg: Some(2),
                deref_ptr: true,
                from_finalizer_loop: true,
                type_arg: None,
                stack_args: true,
            };
            wanted.push((body, Role::ObjectEvent(started)));
        }
        // A cleanup starts at the one call through a register in the function that runs them.
        let mut inside = Vec::new();
        if let Some(c) = bin.layout().cleanups {
            if let Some(runner) = bin.function(c.runner) {
                let calls = bin
                    .indirect_call_sites(runner)
                    .map_err(|e| Failure::Other(anyhow::anyhow!("finding the cleanup call in {}: {e}", runner.name)))?;
                if let [call] = calls[..] {
                    inside.push((
                        runner,
                        call,
                        object(RecordKind::CleanupStarted, c.handle_at_call, None, None),
                    ));
                }
            }
        }
        let needed: &[&str] = if full {
            &["runtime.gcMarkTermination", "runtime.(*sweepLocked).sweep"]
        } else {
            &["runtime.gcMarkTermination"]
        };
        for &needed in needed {
            if !wanted.iter().any(|(f, _)| f.name == needed) {
                return Err(Failure::UnsupportedGo {
                    version: version.raw.clone(),
                    why: format!("{needed} not found in the symbol table or pclntab"),
                });
            }
        }
        let mut points = Vec::with_capacity(wanted.len() + inside.len());
        for (f, role) in wanted {
            let rets = if matches!(role, Role::Alloc | Role::Constructor(_)) {
                bin.ret_sites(f)
                    .map_err(|e| Failure::Other(anyhow::anyhow!("finding RET instructions of {}: {e}", f.name)))?
            } else {
                Vec::new()
            };
            points.push(ProbePoint {
                function: f.clone(),
                at: bin.past_stack_check(f),
                role,
                rets,
            });
        }
        for (f, at, role) in inside {
            points.push(ProbePoint {
                function: f.clone(),
                at,
                role,
                rets: Vec::new(),
            });
        }
        Ok(Self { mode, points })
    }

    pub fn uprobe_count(&self) -> usize {
        self.points.iter().map(|p| 1 + p.rets.len()).sum()
    }
}

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
        let mut config = probe_config(bin.layout(), load_bias);
        if plan.mode == Mode::Sampled {
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
        let ring_bytes = if plan.mode == Mode::Sampled {
            SAMPLED_RING_BUFFER_BYTES
        } else {
            RING_BUFFER_BYTES
        };
        let mut ebpf = EbpfLoader::new()
            .override_global("CONFIG", &config, true)
            .map_max_entries("RECORDS", ring_bytes)
            .load(EBPF_OBJECT)
            .map_err(|e| load_failure(&e))?;
        for name in [
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
        ] {
            let prog: &mut UProbe = program(&mut ebpf, name)?;
            prog.load().map_err(|e| load_failure(&e))?;
        }
        let pid = NonZeroU32::new(process.pid).ok_or(Failure::NoSuchProcess { pid: 0 })?;
        let mut attached = 0;
        for point in &plan.points {
            let (entry_prog, ret_prog, cookie) = match point.role {
                Role::Alloc => ("alloc_entry", "alloc_ret", None),
                Role::Constructor(c) => ("constructor_entry", "constructor_ret", Some(c.encode())),
                Role::CycleEnd => ("gc_cycle_end", "", None),
                Role::SpanSweep => ("span_sweep", "", None),
                Role::ObjectEvent(c) => ("object_event", "", Some(c.encode())),
                Role::SpecialFreed => ("special_freed", "", None),
                Role::SampledAlloc(c) => ("sampled_alloc", "", Some(c.encode())),
            };
            let sites =
                std::iter::once((entry_prog, point.at, cookie)).chain(point.rets.iter().map(|&r| (ret_prog, r, None)));
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
                let prog: &mut UProbe = program(&mut ebpf, prog_name)?;
                let at = UProbeAttachPoint {
                    location: UProbeAttachLocation::AbsoluteOffset(offset),
                    cookie,
                };
                prog.attach(at, &process.exe_path, UProbeScope::OneProcess(pid))
                    .map_err(|e| {
                        if !process.is_alive() {
                            Failure::NoSuchProcess { pid: process.pid }
                        } else {
                            attach_failure(&point.function.name, &e)
                        }
                    })?;
                attached += 1;
            }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn size_specialized_names() {
        for yes in [
            "runtime.mallocgcTinySC2",
            "runtime.mallocgcSmallNoScanSC7",
            "runtime.mallocgcSmallScanNoHeaderSC1",
            "runtime.mallocgcTinySize15",
            "runtime.mallocgcSmallNoScanSC26",
        ] {
            assert!(is_size_specialized_malloc(yes), "{yes}");
        }
        for no in [
            "runtime.mallocgc",
            "runtime.mallocgcTiny",
            "runtime.mallocgcSmallNoScan",
            "runtime.mallocgcSmallNoScanSC",
            "runtime.mallocgcTinySlowPath",
            "runtime.mallocgcSmallScanHeader",
            "main.mallocgcSmallNoScanSC2",
        ] {
            assert!(!is_size_specialized_malloc(no), "{no}");
        }
    }
}
