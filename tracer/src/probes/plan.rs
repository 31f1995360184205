//! Which runtime functions to probe in a given Go binary, and with what meaning: per-version calling conventions
//! are resolved here, once, into a [`ProbePlan`].

use tracer_common::{ConstructorCookie, ContainerKind, ObjectEventCookie, RecordKind};

use crate::{
    error::Failure,
    gobin::{self, CleanupFunction, Function, GoBinary, GoVersion, RuntimeLayout},
    probes::sampling::Mode,
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

impl Role {
    /// The eBPF programs a point of this role runs: at entry, at each RET (empty: none), and the entry's
    /// attach cookie, which tells the shared programs what the registers mean here.
    pub fn programs(self) -> (&'static str, &'static str, Option<u64>) {
        match self {
            Role::Alloc => ("alloc_entry", "alloc_ret", None),
            Role::Constructor(c) => ("constructor_entry", "constructor_ret", Some(c.encode())),
            Role::CycleEnd => ("gc_cycle_end", "", None),
            Role::SpanSweep => ("span_sweep", "", None),
            Role::ObjectEvent(c) => ("object_event", "", Some(c.encode())),
            Role::SpecialFreed => ("special_freed", "", None),
            Role::SampledAlloc(c) => ("sampled_alloc", "", Some(c.encode())),
        }
    }
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
        check_supported(bin.version())?;
        let mut wanted = named(bin, mode);
        // Refused before any function is disassembled.
        check_required(bin, mode, &wanted)?;
        wanted.extend(finalizer_start(bin));
        let cleanup = cleanup_start(bin)?;
        let mut points = wanted
            .into_iter()
            .map(|w| w.point(bin))
            .collect::<Result<Vec<_>, _>>()?;
        points.extend(cleanup);
        Ok(Self { mode, points })
    }

    pub fn uprobe_count(&self) -> usize {
        self.points.iter().map(|p| 1 + p.rets.len()).sum()
    }
}

/// The modes a probe is wanted in.
#[derive(Clone, Copy)]
enum Modes {
    Full,
    Sampled,
    Both,
}

impl Modes {
    fn include(self, mode: Mode) -> bool {
        match self {
            Modes::Full => mode == Mode::Full,
            Modes::Sampled => mode == Mode::Sampled,
            Modes::Both => true,
        }
    }
}

/// The functions a row of [`PROBES`] stands for.
enum Names {
    Any(&'static [&'static str]),
    /// Those a predicate accepts, with how to say which.
    Matching(&'static str, fn(&str) -> bool),
}

impl Names {
    fn matches(&self, name: &str) -> bool {
        match self {
            Names::Any(names) => names.contains(&name),
            Names::Matching(_, accepts) => accepts(name),
        }
    }
}

impl std::fmt::Display for Names {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Names::Any(names) => f.write_str(&names.join(" or ")),
            Names::Matching(what, _) => f.write_str(what),
        }
    }
}

/// Runtime functions probed at their entry, in the modes that want them.
struct Probe {
    names: Names,
    modes: Modes,
    /// What the registers mean, given the release's layout; None where the release has nothing to probe there.
    role: fn(&RuntimeLayout) -> Option<Role>,
    /// Its RETs are probed too: the record is about the value the function returns.
    rets: bool,
    /// A binary without it is refused: the allocator is what the mode traces, and without GC cycle ends (and,
    /// in full mode, sweeps) objects could be neither aged nor seen dying.
    required: bool,
}

/// Every runtime function probed by name; a function takes the first row that wants it in the mode.
const PROBES: &[Probe] = &[
    Probe {
        names: Names::Any(&["runtime.mallocgc"]),
        modes: Modes::Full,
        role: |_| Some(Role::Alloc),
        rets: true,
        required: true,
    },
    Probe {
        names: Names::Matching("runtime.mallocgc<class><N>", is_size_specialized_malloc),
        modes: Modes::Full,
        role: |_| Some(Role::Alloc),
        rets: true,
        required: false,
    },
    Probe {
        names: Names::Any(&["runtime.makeslice", "runtime.makeslice64", "runtime.makeslicecopy"]),
        modes: Modes::Full,
        role: |_| Some(slice(0)),
        rets: true,
        required: false,
    },
    Probe {
        names: Names::Any(&[
            "runtime.growslice",
            "runtime.growsliceNoAlias",
            "runtime.growsliceBuf",
            "runtime.growsliceBufNoAlias",
        ]),
        modes: Modes::Full,
        role: |l| Some(slice(l.growslice_type_arg)),
        rets: true,
        required: false,
    },
    Probe {
        names: Names::Any(&["runtime.makemap", "runtime.makemap64"]),
        modes: Modes::Full,
        role: |_| Some(map(Some(0))),
        rets: true,
        required: false,
    },
    Probe {
        names: Names::Any(&["runtime.makemap_small"]),
        modes: Modes::Full,
        role: |_| Some(map(None)),
        rets: true,
        required: false,
    },
    Probe {
        names: Names::Any(&["runtime.mProf_Malloc"]),
        modes: Modes::Sampled,
        role: |l| Some(sampled_alloc(l)),
        rets: false,
        required: true,
    },
    Probe {
        names: Names::Any(&["runtime.gcMarkTermination"]),
        modes: Modes::Both,
        role: |_| Some(Role::CycleEnd),
        rets: false,
        required: true,
    },
    Probe {
        names: Names::Any(&["runtime.(*sweepLocked).sweep"]),
        modes: Modes::Full,
        role: |_| Some(Role::SpanSweep),
        rets: false,
        required: true,
    },
    // addfinalizer(p, f *funcval, nret, fint, ot *ptrtype)
    Probe {
        names: Names::Any(&["runtime.addfinalizer"]),
        modes: Modes::Both,
        role: |_| Some(object(RecordKind::FinalizerSet, 0, Some(1), Some(4))),
        rets: false,
        required: false,
    },
    Probe {
        names: Names::Any(&["runtime.removefinalizer"]),
        modes: Modes::Both,
        role: |_| Some(object(RecordKind::FinalizerRemoved, 0, None, None)),
        rets: false,
        required: false,
    },
    // queuefinalizer(p, fn *funcval, nret, fint, ot), called from a sweep
    Probe {
        names: Names::Any(&["runtime.queuefinalizer"]),
        modes: Modes::Both,
        role: |_| Some(object(RecordKind::FinalizerQueued, 0, Some(1), None)),
        rets: false,
        required: false,
    },
    // addCleanup(p, handle…) → id; freeSpecial(s *special, p, size) queues a dead object's cleanup.
    Probe {
        names: Names::Any(&["runtime.addCleanup"]),
        modes: Modes::Both,
        role: cleanup_set,
        rets: false,
        required: false,
    },
    // Sampled objects die there too (their profile special).
    Probe {
        names: Names::Any(&["runtime.freeSpecial"]),
        modes: Modes::Sampled,
        role: |_| Some(Role::SpecialFreed),
        rets: false,
        required: false,
    },
    Probe {
        names: Names::Any(&["runtime.freeSpecial"]),
        modes: Modes::Full,
        role: |l| l.cleanups.map(|_| Role::SpecialFreed),
        rets: false,
        required: false,
    },
];

fn slice(type_arg: u8) -> Role {
    Role::Constructor(ConstructorCookie {
        kind: ContainerKind::Slice,
        type_arg: Some(type_arg),
    })
}

fn map(type_arg: Option<u8>) -> Role {
    Role::Constructor(ConstructorCookie {
        kind: ContainerKind::Map,
        type_arg,
    })
}

/// An object event whose arguments are in registers.
fn object(kind: RecordKind, ptr_arg: u8, aux_arg: Option<u8>, type_arg: Option<u8>) -> Role {
    Role::ObjectEvent(ObjectEventCookie {
        kind,
        ptr_arg,
        aux_arg,
        deref_ptr: false,
        from_finalizer_loop: false,
        type_arg,
        stack_args: false,
    })
}

fn sampled_alloc(layout: &RuntimeLayout) -> Role {
    let sampling = layout.sampling;
    Role::SampledAlloc(ObjectEventCookie {
        kind: RecordKind::Sampled,
        ptr_arg: sampling.malloc_ptr_arg,
        aux_arg: Some(sampling.malloc_size_arg),
        deref_ptr: false,
        from_finalizer_loop: false,
        type_arg: None,
        stack_args: false,
    })
}

/// Releases without cleanups have no `addCleanup` to probe.
fn cleanup_set(layout: &RuntimeLayout) -> Option<Role> {
    let c = layout.cleanups?;
    let function = match c.function {
        CleanupFunction::Register(r) => Some(r),
        CleanupFunction::CapturedByHandle { .. } => None,
    };
    Some(object(RecordKind::CleanupSet, 0, Some(c.handle_at_register), function))
}

/// A function to probe at its entry.
struct Wanted<'b> {
    function: &'b Function,
    role: Role,
    rets: bool,
}

impl Wanted<'_> {
    /// Its probe point: past the stack-bound check, with the RETs where the role needs them.
    fn point(self, bin: &GoBinary) -> Result<ProbePoint, Failure> {
        let f = self.function;
        let rets = if self.rets {
            bin.ret_sites(f)
                .map_err(|e| Failure::Other(anyhow::anyhow!("finding RET instructions of {}: {e}", f.name)))?
        } else {
            Vec::new()
        };
        Ok(ProbePoint {
            function: f.clone(),
            at: bin.past_stack_check(f),
            role: self.role,
            rets,
        })
    }
}

/// The functions of [`PROBES`] the binary has, in its order.
fn named<'b>(bin: &'b GoBinary, mode: Mode) -> Vec<Wanted<'b>> {
    let layout = bin.layout();
    let wanted = |f: &'b Function| {
        let (role, rets) = PROBES
            .iter()
            .filter(|p| p.modes.include(mode) && p.names.matches(&f.name))
            .find_map(|p| Some(((p.role)(layout)?, p.rets)))?;
        // A name can stand for an assembly body and its register-ABI wrapper: probe the one
        // Go code calls, whose arguments are in registers.
        let called = bin.function(&f.name).is_none_or(|canonical| canonical.entry == f.entry);
        called.then_some(Wanted {
            function: f,
            role,
            rets,
        })
    };
    bin.functions().filter_map(wanted).collect()
}

/// Refuses a binary without a function the mode cannot do without, naming the first missing.
fn check_required(bin: &GoBinary, mode: Mode, wanted: &[Wanted]) -> Result<(), Failure> {
    let missing = PROBES
        .iter()
        .filter(|p| p.required && p.modes.include(mode))
        .find(|p| !wanted.iter().any(|w| p.names.matches(&w.function.name)));
    match missing {
        None => Ok(()),
        Some(p) => Err(Failure::UnsupportedGo {
            version: bin.version().raw.clone(),
            why: format!("{} not found in the symbol table or pclntab", p.names),
        }),
    }
}

/// The finalizer goroutine calls the assembly body of reflectcall directly (ABI0, arguments
/// on the stack: stackArgsType, fn, stackArgs, three uint32 sizes, regArgs at words 1..6 from
/// SP): fn at word 2, regArgs at word 6, whose first word is the finalized object.
fn finalizer_start(bin: &GoBinary) -> Option<Wanted<'_>> {
    let canonical = bin.function("runtime.reflectcall").map(|f| f.entry);
    let body = bin
        .functions()
        .find(|f| f.name == "runtime.reflectcall" && Some(f.entry) != canonical)?;
    let started = ObjectEventCookie {
        kind: RecordKind::FinalizerStarted,
        ptr_arg: 6,
        aux_arg: Some(2),
        deref_ptr: true,
        from_finalizer_loop: true,
        type_arg: None,
        stack_args: true,
    };
    Some(Wanted {
        function: body,
        role: Role::ObjectEvent(started),
        rets: false,
    })
}

/// A cleanup starts at the one call through a register in the function that runs them.
fn cleanup_start(bin: &GoBinary) -> Result<Option<ProbePoint>, Failure> {
    let Some(c) = bin.layout().cleanups else {
        return Ok(None);
    };
    let Some(runner) = bin.function(c.runner) else {
        return Ok(None);
    };
    let calls = bin
        .indirect_call_sites(runner)
        .map_err(|e| Failure::Other(anyhow::anyhow!("finding the cleanup call in {}: {e}", runner.name)))?;
    let [call] = calls[..] else {
        return Ok(None);
    };
    Ok(Some(ProbePoint {
        function: runner.clone(),
        at: call,
        role: object(RecordKind::CleanupStarted, c.handle_at_call, None, None),
        rets: Vec::new(),
    }))
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
