//! Which runtime functions to probe in a given Go binary, and with what meaning: per-version calling conventions
//! are resolved here, once, into a [`ProbePlan`].

use tracer_common::{ConstructorCookie, ContainerKind, ObjectEventCookie, RecordKind};

use crate::{
    error::Failure,
    gobin::{self, CleanupFunction, Function, GoBinary, GoVersion},
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
