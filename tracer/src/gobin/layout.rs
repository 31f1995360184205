//! Runtime struct layouts: the one place where Go-version differences in struct offsets live. DWARF is used when
//! the binary has it; otherwise [`TABLE`], measured from the DWARF of each toolchain's unstripped build. A version
//! with neither gets an error naming it, never a guessed offset.

use super::dwarf::StructMembers;
use super::{Arch, GoVersion, TargetError};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LayoutSource {
    Dwarf,
    VersionTable,
}

/// `runtime.mspan` field offsets: what a sweep probe copies out of the span it is handed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SpanLayout {
    /// `startAddr` (uintptr): the span base, where object 0 starts.
    pub start_addr: u64,
    /// `npages` (uintptr): span length in 8 KiB runtime pages.
    pub npages: u64,
    /// `nelems`: number of object slots.
    pub nelems: u64,
    /// Byte size of `nelems`: uintptr (8) up to 1.21, uint16 (2) from 1.22.
    pub nelems_size: u8,
    /// `elemsize` (uintptr): object slot size.
    pub elemsize: u64,
    /// `gcmarkBits` (`*gcBits`): this cycle's mark bitmap, bit i (byte i/8, bit i%8) for object i. Under Green Tea
    /// it holds no marks for inline-mark spans until sweep (see [`RuntimeLayout::inline_mark_bits`]).
    pub gcmark_bits: u64,
}

/// Per-version facts about the runtime that the probes need: struct offsets, the one calling-convention change
/// among the probed functions, the GC's mark-bit placement and the GC cycle counter. Resolved once per binary:
/// offsets from DWARF when the binary has it, else from the version table; Green Tea and the cycle counter's
/// address from the binary itself (see the fields).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuntimeLayout {
    /// `runtime.g.goid`: moved 152 → 160 (1.23) → 152 (1.25).
    pub goid_offset: u64,
    /// `runtime.g.atomicstatus` (uint32; `atomic.Uint32` since 1.20): the `_G*` state, `_Gwaiting` = 4. 144, 152 in
    /// 1.23–1.24 (always `goid_offset - 8`).
    pub g_atomicstatus: u64,
    /// `runtime.g.waitreason` (`waitReason`, a uint8): why a `_Gwaiting` goroutine is parked; [`Self::wait_reason`]
    /// names it. 176, 184 in 1.23–1.24.
    pub g_waitreason: u64,
    /// `runtime.g.waitsince` (int64, `nanotime()`): when a GC cycle first saw the goroutine waiting (the start of
    /// its mark phase, `markroot`), 0 until then and again once it runs. The word before `waitreason`.
    pub g_waitsince: u64,
    /// Where `goid_offset` (and the other `runtime.g` offsets, all or none) came from. The other struct offsets
    /// (`span`, `workType.cycles`) likewise come from DWARF whenever it describes their struct, else from the table.
    pub source: LayoutSource,
    /// The integer argument register of `growslice`'s element type: `growslice(et, old, cap)`
    /// until Go 1.19, `growslice(oldPtr, newLen, oldCap, num, et)` since 1.20 (runtime/slice.go).
    pub growslice_type_arg: u8,
    /// `runtime.mspan` field offsets.
    pub span: SpanLayout,
    /// Green Tea GC: spans whose objects are 16..=512 bytes (`gcUsesSpanInlineMarkBits(size)`:
    /// `heapBitsInSpan(size) && size >= 16`) keep their mark bits inline, at the end of the span's first 8 KiB
    /// page, until sweep merges them into `gcmarkBits` (`moveInlineMarks`). True for 1.26+ by default, for 1.25
    /// with `GOEXPERIMENT=greenteagc`, false with `nogreenteagc` (or `none`). Decided from the version and
    /// experiments, and checked against the code: a binary whose `runtime.(*mspan).moveInlineMarks` contradicts the
    /// decision is refused rather than guessed at.
    ///
    /// Where the marks are (`runtime/mgcmark_greenteagc.go@go1.27.3:66-71,180-182,228-236`; identical in 1.25.5
    /// and 1.26.6): `spanInlineMarkBitsFromBase(base)` is `base + gc.PageSize - sizeof(spanInlineMarkBits)` =
    /// `base + 8192 - 128`, with `base = s.startAddr` (size classes up to 512 bytes have one-page spans, which
    /// `mallocinit` checks: `malloc.go@go1.27.3:466-480`), laid out as
    /// `{scans [63]uint8 @0, owned uint8 @63, marks [63]uint8 @64, class spanClass (uint8) @127}`. So the marks
    /// are the 63 bytes at **`base + 8192 - 64`** ([`INLINE_MARKS_OFFSET`], [`INLINE_MARKS_LEN`]), and object i
    /// (at `base + i * elemsize`) is marked iff `marks[i / 8] >> (i % 8) & 1` (`markBitsForIndex`): the same bit
    /// order as `gcmarkBits`. 63 bytes cover the 504 objects of the 16-byte class, since these spans reserve the
    /// last 128 bytes: `nelems = (8192 - 128 [- 128 heap bits if scan]) / elemsize` (`mheap.go@go1.27.3:1458-1468`).
    /// The byte after the marks is the span class, not marks. Sweep ORs the inline marks into `gcmarkBits`
    /// (`mgcsweep.go@go1.27.3:655-656`, after the specials loop, which already reads the inline marks) and
    /// clears them, so before that point (at `(*sweepLocked).sweep` entry) "marked" is the inline bit (OR the
    /// `gcmarkBits` bit, which the mark phase leaves clear for these spans); a tracer reading only `gcmarkBits`
    /// would take every live small object for dead.
    pub inline_mark_bits: bool,
    /// Inclusive element-size range of spans using inline mark bits: (16, 512) when `inline_mark_bits`, 512 being
    /// `gc.MinSizeForMallocHeader` = `PtrSize * PtrBits` (`internal/runtime/gc/malloc.go@go1.27.3:47`; the same on
    /// amd64 and arm64); the empty range (0, 0) otherwise, so that a range check alone is enough.
    pub inline_mark_sizes: (u64, u64),
    /// Link-time virtual address of `runtime.work.cycles`, the count of completed GC cycles (the number gctrace
    /// prints; bumped in `gcStart`). Add the load bias for a PIE. From the symbol table (`runtime.work` + the
    /// `runtime.workType.cycles` offset) when there is one, else from the code of `runtime.gcTrigger.test`
    /// (see `gc.rs`).
    pub gc_cycles_addr: u64,
    /// Byte size of `runtime.work.cycles`: 4 (uint32 in 1.19, atomic.Uint32 since).
    pub gc_cycles_size: u8,
    /// `runtime.waitReasonStrings` of this release: the string `waitReason(v).String()` gives, at index v. Taken from
    /// the version (the strings are not in DWARF); empty for a release without a table (1.20, or newer than 1.27),
    /// so that [`Self::wait_reason`] answers `None` rather than a guess. The enum was reordered in 1.26
    /// (`waitReasonFinalizerWait` 16 → 10).
    pub wait_reasons: &'static [&'static str],
    /// How cleanups are registered, queued and run; `None` before Go 1.24.
    pub cleanups: Option<CleanupLayout>,
    /// `runtime.special.kind` (uint8): after `next *special` and `offset`, a uint16 until 1.23
    /// (kind @10), a uintptr since 1.24 (kind @16) (`mheap.go@go1.23.9:1829`, `@go1.24.11:1842`).
    pub special_kind_offset: u64,
    /// Where the runtime's own allocation sampler hands maptrace's sampled mode its samples.
    pub sampling: SamplingLayout,
}

/// The runtime's memory-profile sampler: every `MemProfileRate` bytes allocated (on average),
/// `profilealloc` calls `mProf_Malloc`, which attaches a profile special to the object; a sweep
/// that frees the object releases it through `freeSpecial`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SamplingLayout {
    /// `mProf_Malloc`'s argument registers holding the object and its size: `(p, size)` until
    /// 1.22, `(mp, p, size)` since 1.23 (`mprof.go@go1.22.10:425`, `@go1.23.9:437`).
    pub malloc_ptr_arg: u8,
    pub malloc_size_arg: u8,
    /// `_KindSpecialProfile`: 2 until 1.22, 3 in 1.23–1.24 (weak handles came first), 4 since
    /// 1.25 (`_KindSpecialTinyBlock`) (`mheap.go@go1.22.10:1797`, `@go1.24.11:1831`, `@go1.27.3:1946`).
    pub profile_special_kind: u8,
    /// Link-time address of `runtime.MemProfileRate` (an int), when the symbol table or the
    /// code of `runtime.profilealloc` tells it (see `sampling.rs`); add the load bias for a PIE.
    pub rate_addr: Option<u64>,
}

fn sampling_layout(version: &GoVersion, rate_addr: Option<u64>) -> SamplingLayout {
    let minor = version.minor;
    SamplingLayout {
        malloc_ptr_arg: if minor <= 22 { 0 } else { 1 },
        malloc_size_arg: if minor <= 22 { 1 } else { 2 },
        profile_special_kind: match minor {
            ..=22 => 2,
            23 | 24 => 3,
            _ => 4,
        },
        rate_addr,
    }
}

/// How a release carries a cleanup (`runtime.AddCleanup`) from registration to its call. Its
/// *handle* is the word unique to one registration that the runtime passes along the way: the
/// closure `AddCleanup` wraps `cleanup(arg)` in (1.24–1.25, `mcleanup.go@go1.24.11:95-100`), or the
/// boxed argument `cleanupFn.arg` (1.26+, `mcleanup.go@go1.26.6:122-127,177-186`; the user's
/// `cleanup` funcval is shared by every registration of a function without captures).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CleanupLayout {
    /// `addCleanup`'s argument register holding the handle: `f *funcval` (1) in 1.24–1.25; in
    /// 1.26+ `c cleanupFn{call, fn, arg}` spreads over registers 1–3 and `arg` is 3.
    pub handle_at_register: u8,
    /// Where the user's cleanup `*funcval` is.
    pub function: CleanupFunction,
    /// `_KindSpecialCleanup`: 6 in 1.24, 7 since 1.25 added `_KindSpecialTinyBlock`
    /// (`mheap.go@go1.27.3:1940-1962`).
    pub special_kind: u8,
    /// The handle in `runtime.specialCleanup`: `fn` @24 (1.24–1.25), `cleanup.arg` @24+16 (1.26+).
    pub special_handle_offset: u64,
    /// The function that calls queued cleanups: `runtime.runfinq`, on the finalizer goroutine, in
    /// 1.24 (`mfinal.go@go1.24.11:208-214`); `runtime.runCleanups` goroutines since 1.25. Each has
    /// exactly one register-indirect call, the cleanup's.
    pub runner: &'static str,
    /// The handle at that call: the closure context in 1.24–1.25 (`fn()`); in 1.26+ the second
    /// argument of `c.call(c.fn, c.arg)`.
    pub handle_at_call: u8,
    /// The runner's wait reason when it has nothing to run.
    pub runner_idle: &'static str,
}

impl CleanupLayout {
    /// Go 1.24: the finalizer goroutine runs cleanups too, so a stuck finalizer holds them up.
    pub fn runs_on_finalizer_goroutine(&self) -> bool {
        self.runner == "runtime.runfinq"
    }
}

/// Where the user's cleanup function is, given a registration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CleanupFunction {
    /// The handle is `AddCleanup`'s wrapper closure, whose first capture is `cleanup`: by value
    /// in 1.24 (`mcleanup.go@go1.24.11:96`); by reference since 1.25 takes `&cleanup` for
    /// `GODEBUG=checkfinalizers` (`mcleanup.go@go1.25.5:101,125`), so the word points at it.
    CapturedByHandle { by_reference: bool },
    /// In this `addCleanup` argument register (recorded as [`tracer_common::Record::type_ptr`]).
    Register(u8),
}

fn cleanup_layout(version: &GoVersion) -> Option<CleanupLayout> {
    let minor = (version.major == 1).then_some(version.minor)?;
    let wrapped = minor < 26;
    (minor >= 24).then_some(CleanupLayout {
        handle_at_register: if wrapped { 1 } else { 3 },
        function: if wrapped {
            CleanupFunction::CapturedByHandle {
                by_reference: minor == 25,
            }
        } else {
            CleanupFunction::Register(2)
        },
        special_kind: if minor == 24 { 6 } else { 7 },
        special_handle_offset: if wrapped { 24 } else { 24 + 16 },
        runner: if minor == 24 {
            "runtime.runfinq"
        } else {
            "runtime.runCleanups"
        },
        handle_at_call: if wrapped { tracer_common::CLOSURE_CONTEXT } else { 1 },
        runner_idle: if minor == 24 { "finalizer wait" } else { "cleanup wait" },
    })
}

impl RuntimeLayout {
    /// The runtime's string for a `g.waitreason` value (`""` for `waitReasonZero`), or `None` if it is out of
    /// range or the release has no table.
    pub fn wait_reason(&self, v: u8) -> Option<&'static str> {
        self.wait_reasons.get(usize::from(v)).copied()
    }

    /// True if a span of objects of `elemsize` bytes keeps its mark bits inline (Green Tea).
    pub fn span_uses_inline_marks(&self, elemsize: u64) -> bool {
        let (lo, hi) = self.inline_mark_sizes;
        self.inline_mark_bits && (lo..=hi).contains(&elemsize)
    }
}

/// Green Tea inline marks start this many bytes after the span base: `8192 - 64`.
pub const INLINE_MARKS_OFFSET: u64 = GC_PAGE_SIZE - 64;
/// Bytes of Green Tea inline marks (`spanInlineMarkBits.marks [63]uint8`).
pub const INLINE_MARKS_LEN: u64 = 63;
/// `gc.PageSize`, the runtime page: 8 KiB in every version.
const GC_PAGE_SIZE: u64 = 8192;
/// Element sizes with inline marks: `gcUsesSpanInlineMarkBits` = `size >= 16 && heapBitsInSpan(size)`, the latter
/// `size <= gc.MinSizeForMallocHeader` (= 8 * 64 on 64-bit; `mbitmap.go@go1.27.3:76-80`). The same in 1.25.5,
/// 1.26.6 and 1.27.3 (`mgcmark_greenteagc.go:258`).
const INLINE_MARK_SIZES: (u64, u64) = (16, 512);
/// `runtime.work.cycles`: uint32 in 1.19, atomic.Uint32 from 1.20; 4 bytes either way.
const WORK_CYCLES_SIZE: u8 = 4;

/// Green Tea GC per version and experiments: no such GC before 1.25, opt-in (`greenteagc`) in 1.25, default from
/// 1.26 (`internal/buildcfg/exp.go@go1.26.6:88`) with `nogreenteagc` to opt out. Experiments apply in order as
/// `buildcfg` parses them: `none` clears every flag, `noX` clears X.
pub(crate) fn green_tea_by_version(version: &GoVersion, experiments: &[String]) -> bool {
    if version.major != 1 || version.minor < 25 {
        return false;
    }
    let mut on = version.minor >= 26;
    for e in experiments {
        match e.as_str() {
            "greenteagc" => on = true,
            "nogreenteagc" | "none" => on = false,
            _ => {}
        }
    }
    on
}

/// The newest release whose Green Tea code was checked (the function names and files `gc.rs` looks for).
pub(crate) const LAST_CHECKED_MINOR: u32 = 27;

/// Offsets of the `runtime.moduledata` fields we read. The pclntab slices before them (at 0..128) have not moved
/// since Go 1.18, which is how [`super::moduledata`] recognises the struct in the first place.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ModuledataOffsets {
    pub text: u64,
    pub types: u64,
    pub etypes: u64,
    /// `gofunc` (`go:func.*`, functions' funcdata), after `rodata` in every release; 1.27 put `itaboffset,
    /// itabsize` before them.
    pub gofunc: u64,
}

/// Struct offsets, resolved before the code is read; [`runtime_layout`] completes them into a [`RuntimeLayout`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Structs {
    pub goid_offset: u64,
    /// `runtime.g` (atomicstatus, waitsince, waitreason).
    pub g_status: (u64, u64, u64),
    pub source: LayoutSource,
    pub span: SpanLayout,
    /// `runtime.workType.cycles`: (offset in `runtime.work`, byte size).
    pub work_cycles: (u64, u8),
}

pub(crate) struct Resolved {
    pub structs: Structs,
    pub moduledata: ModuledataOffsets,
}

/// The DWARF structs that [`resolve`] reads.
pub(crate) const DWARF_STRUCTS: &[&str] = &["runtime.g", "runtime.moduledata", "runtime.mspan", "runtime.workType"];

struct Row {
    minor: u32,
    arches: &'static [Arch],
    goid: u64,
    /// `runtime.g` (atomicstatus, waitsince, waitreason): waitsince is the word before waitreason in every release.
    g_status: (u64, u64, u64),
    moduledata: ModuledataOffsets,
    span: SpanLayout,
    /// `runtime.workType.cycles` on (amd64, arm64): workType pads fields to the cache line, 64 bytes on amd64 and
    /// 128 on arm64 (`internal/cpu`), so the offset differs by architecture from 1.21 on.
    cycles: (u64, u64),
}

const BOTH: &[Arch] = &[Arch::Amd64, Arch::Arm64];

const fn md(text: u64, types: u64, etypes: u64, gofunc: u64) -> ModuledataOffsets {
    ModuledataOffsets {
        text,
        types,
        etypes,
        gofunc,
    }
}

const fn span(
    start_addr: u64,
    npages: u64,
    (nelems, nelems_size): (u64, u8),
    elemsize: u64,
    gcmark_bits: u64,
) -> SpanLayout {
    SpanLayout {
        start_addr,
        npages,
        nelems,
        nelems_size,
        elemsize,
        gcmark_bits,
    }
}

/// Go 1.x layouts, measured from DWARF of go1.19.8 and go1.21.13 … go1.27.3 builds for amd64 and arm64 (identical
/// except `workType.cycles`). 1.20 is absent: no toolchain was available to measure it. `runtime.g`: goid,
/// atomicstatus and waitreason all moved by 8 in 1.23–1.24. moduledata gained `covctrs/ecovctrs` after 1.19
/// (types 280 → 296) and `typedesclen` before `etypes` in 1.27. mspan: `elemsize` 104 → 112 in 1.21
/// (`isUserArenaChunk` and friends), and in 1.22 `freeindex`/`nelems` shrank from uintptr to uint16, moving
/// nelems 56 → 50, allocBits/gcmarkBits 72/80 → 64/72 and elemsize back to 104.
#[rustfmt::skip]
const TABLE: &[Row] = &[
    Row { minor: 19, arches: BOTH, goid: 152, g_status: (144, 168, 176), moduledata: md(176, 280, 288, 304), span: span(24, 32, (56, 8), 104, 80), cycles: (344, 344) },
    Row { minor: 21, arches: BOTH, goid: 152, g_status: (144, 168, 176), moduledata: md(176, 296, 304, 320), span: span(24, 32, (56, 8), 112, 80), cycles: (400, 528) },
    Row { minor: 22, arches: BOTH, goid: 152, g_status: (144, 168, 176), moduledata: md(176, 296, 304, 320), span: span(24, 32, (50, 2), 104, 72), cycles: (400, 528) },
    Row { minor: 23, arches: BOTH, goid: 160, g_status: (152, 176, 184), moduledata: md(176, 296, 304, 320), span: span(24, 32, (50, 2), 104, 72), cycles: (424, 552) },
    Row { minor: 24, arches: BOTH, goid: 160, g_status: (152, 176, 184), moduledata: md(176, 296, 304, 320), span: span(24, 32, (50, 2), 104, 72), cycles: (424, 552) },
    Row { minor: 25, arches: BOTH, goid: 152, g_status: (144, 168, 176), moduledata: md(176, 296, 304, 320), span: span(24, 32, (50, 2), 104, 72), cycles: (512, 704) },
    Row { minor: 26, arches: BOTH, goid: 152, g_status: (144, 168, 176), moduledata: md(176, 296, 304, 320), span: span(24, 32, (50, 2), 104, 72), cycles: (648, 904) },
    Row { minor: 27, arches: BOTH, goid: 152, g_status: (144, 168, 176), moduledata: md(176, 296, 312, 344), span: span(24, 32, (50, 2), 104, 72), cycles: (648, 904) },
];

impl Row {
    fn cycles(&self, arch: Arch) -> u64 {
        match arch {
            Arch::Amd64 => self.cycles.0,
            Arch::Arm64 => self.cycles.1,
        }
    }
}

/// The Go release lines (1.N) maptrace supports, oldest first: exactly the rows of the layout table.
/// Everything else that needs the supported set (the error message, `check_supported`, the tests
/// that hold the test toolchains and the heap table to it) derives it from here.
pub fn supported_minors() -> impl Iterator<Item = u32> {
    TABLE.iter().map(|r| r.minor)
}

/// Whether a runtime is one of [`supported_minors`].
pub fn is_supported(version: &GoVersion) -> bool {
    version.major == 1 && supported_minors().any(|m| m == version.minor)
}

/// The supported set for people: `go1.19, go1.21–go1.27` (runs of consecutive releases joined).
pub fn supported_text() -> String {
    releases_text(supported_minors())
}

fn releases_text(minors: impl Iterator<Item = u32>) -> String {
    let mut runs: Vec<(u32, u32)> = Vec::new();
    for m in minors {
        match runs.last_mut() {
            Some((_, last)) if *last + 1 == m => *last = m,
            _ => runs.push((m, m)),
        }
    }
    runs.iter()
        .map(|&(a, b)| {
            if a == b {
                format!("go1.{a}")
            } else {
                format!("go1.{a}–go1.{b}")
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn table_row(version: &GoVersion, arch: Arch) -> Option<&'static Row> {
    if version.major != 1 {
        return None;
    }
    TABLE
        .iter()
        .find(|r| r.minor == version.minor && r.arches.contains(&arch))
}

fn no_table(version: &GoVersion, arch: Arch) -> TargetError {
    TargetError::UnsupportedVersion {
        version: version.raw.clone(),
        reason: format!(
            "the binary has no usable DWARF and maptrace has no built-in {arch} layout for it \
             (built in: {}); rebuild it without -ldflags=-w",
            supported_text()
        ),
    }
}

pub(crate) fn resolve(version: &GoVersion, arch: Arch, dwarf: Option<&StructMembers>) -> Result<Resolved, TargetError> {
    let member = |s: &str, m: &str| dwarf.and_then(|d| d.get(s)?.get(m).copied());
    let offset = |s: &str, m: &str| member(s, m).map(|m| m.offset);
    let row = table_row(version, arch);
    // Each struct comes whole from DWARF or whole from the table, never a mix.
    fn pick<T>(dwarf: Option<T>, row: Option<&Row>, table: impl Fn(&Row) -> T) -> Option<T> {
        dwarf.or_else(|| row.map(table))
    }
    // A member that DWARF gives with an unexpected size is taken as undescribed.
    let sized = |s: &str, m: &str, size: u64| {
        member(s, m)
            .filter(|m| m.size.is_none_or(|s| s == size))
            .map(|m| m.offset)
    };
    let g_from_dwarf = || {
        Some((
            offset("runtime.g", "goid")?,
            (
                sized("runtime.g", "atomicstatus", 4)?,
                sized("runtime.g", "waitsince", 8)?,
                sized("runtime.g", "waitreason", 1)?,
            ),
        ))
    };
    let ((goid_offset, g_status), source) = match (g_from_dwarf(), row) {
        (Some(g), _) => (g, LayoutSource::Dwarf),
        (None, Some(r)) => ((r.goid, r.g_status), LayoutSource::VersionTable),
        (None, None) => return Err(no_table(version, arch)),
    };
    let span_from_dwarf = || {
        let m = |f| offset("runtime.mspan", f);
        let nelems = member("runtime.mspan", "nelems")?;
        let nelems_size = u8::try_from(nelems.size?).ok().filter(|s| [1, 2, 4, 8].contains(s))?;
        Some(span(
            m("startAddr")?,
            m("npages")?,
            (nelems.offset, nelems_size),
            m("elemsize")?,
            m("gcmarkBits")?,
        ))
    };
    let span = pick(span_from_dwarf(), row, |r| r.span).ok_or_else(|| no_table(version, arch))?;
    let cycles_from_dwarf = member("runtime.workType", "cycles").and_then(|c| {
        let size = u8::try_from(c.size?).ok().filter(|&s| s == 4 || s == 8)?;
        Some((c.offset, size))
    });
    let work_cycles =
        pick(cycles_from_dwarf, row, |r| (r.cycles(arch), WORK_CYCLES_SIZE)).ok_or_else(|| no_table(version, arch))?;
    let from_dwarf = || {
        let m = |f| offset("runtime.moduledata", f);
        Some(md(m("text")?, m("types")?, m("etypes")?, m("gofunc")?))
    };
    let moduledata = pick(from_dwarf(), row, |r| r.moduledata).ok_or_else(|| no_table(version, arch))?;
    Ok(Resolved {
        structs: Structs {
            goid_offset,
            g_status,
            source,
            span,
            work_cycles,
        },
        moduledata,
    })
}

/// Offsets in `runtime.moduledata` of one section of package-level variables that may hold pointers (`data,
/// edata`, `gcdata`, `gcdatamask`, or the same for bss: `symtab.go@go1.27.3:417-418,445`): its bounds, the GC
/// program the linker wrote for it, and the bitmap the runtime builds from that program at start-up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct RootSectionFields {
    pub start: u64,
    pub end: u64,
    pub gcprog: u64,
    pub mask: u64,
}

/// The struct offsets a heap walk needs beyond [`Structs`] (see [`super::HeapLayout`], [`super::GoroutineLayout`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct HeapOffsets {
    pub mheap_arenas: u64,
    pub arena_spans: u64,
    pub span_state: u64,
    pub span_alloc_bits: u64,
    /// `mspan.freeindex`: (offset, byte size).
    pub span_freeindex: (u64, u8),
    /// `mspan.spanclass` (one byte): its low bit is `noscan`.
    pub span_class: u64,
    pub pointer_bits: PointerBits,
    pub g_stack_lo: u64,
    /// `g.sched.sp`, `g.sched.pc`, `g.sched.bp`.
    pub g_sched: (u64, u64, u64),
    pub data: RootSectionFields,
    pub bss: RootSectionFields,
}

/// Where the runtime records which words of a heap object are pointers (what its GC scans), by release.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PointerBits {
    /// Up to 1.19: `heapArena.bitmap` opens the arena's record, a byte for four words: bit i the word's pointer
    /// bit, bit 4+i its "more pointers follow" bit (`mbitmap.go@go1.19:56-57`, `scanobject`).
    ArenaTwoBits,
    /// 1.20–1.21: `heapArena.bitmap` opens it, a bit per word; the words past an object's last pointer are zero
    /// (`mheap.go@go1.21.13:240-256`).
    ArenaOneBit,
    /// 1.22+: an object of at most 512 bytes has its bits at the end of its span (`spanHeapBitsRange`), a larger
    /// one its type: in a malloc header (its first word) in a small span, in `mspan.largeType` (this offset) in
    /// a large one (`typePointersOfUnchecked`, `mbitmap.go@go1.27.3`). From 1.24 a type whose `TFlag` has
    /// `TFlagGCMaskOnDemand` (1 << 4) keeps in `GCData` where the runtime stores its mask once built
    /// (`getGCMask`, `type.go@go1.27.3:87-93`); in 1.22–1.23 that bit meant an unrolled bitmap, read directly.
    InSpan { large_type: u64, mask_on_demand: bool },
}

/// The DWARF structs that [`heap_offsets`] reads.
pub(crate) const HEAP_DWARF_STRUCTS: &[&str] = &[
    "runtime.mheap",
    "runtime.heapArena",
    "runtime.mspan",
    "runtime.g",
    "runtime.gobuf",
    "runtime.stack",
    "runtime.moduledata",
];

struct HeapRow {
    minor: u32,
    /// `mheap.arenas` on (amd64, arm64).
    arenas: (u64, u64),
    arena_spans: u64,
    span_state: u64,
    span_alloc_bits: u64,
    span_freeindex: (u64, u8),
    span_class: u64,
    pointer_bits: PointerBits,
    gobuf_bp: u64,
    /// `moduledata.gcdata` and `moduledata.gcdatamask`; `gcbss` and `gcbssmask` follow them.
    gcdata: (u64, u64),
}

/// Offsets that no measured release moved: `runtime.g` opens with `stack` (lo, hi), and `sched` follows five more
/// words (`runtime2.go@go1.27.3:471-486`); `gobuf` opens with `{sp, pc}`; `moduledata.data` is followed by
/// `edata, bss, ebss`.
const G_SCHED: u64 = 56;
const MODULEDATA_DATA: u64 = 208;

/// Measured from DWARF like [`TABLE`], amd64 and arm64. `mheap.arenas` follows a cache-line pad from 1.22
/// (`mheap.go@go1.22.10:126`), 64 bytes on amd64 and 128 on arm64. `heapArena.spans` follows the heap bitmap until
/// 1.22 moved the bitmap into the spans (2 bits a word in 1.19, 1 in 1.21). `mspan.state` is 107 in 1.21, where
/// `pinnerBits` came before it, and 99 again once 1.22 made `freeindex` and `nelems` uint16 (moving `allocBits`
/// 72 → 64). `gobuf.ret` went in 1.25 (`runtime2.go@go1.25.5:297-316`), moving `bp` 48 → 40. moduledata's GC
/// fields follow fields that come and go (`covctrs` from 1.20, others in 1.26 and 1.27).
#[rustfmt::skip]
const HEAP_TABLE: &[HeapRow] = &[
    HeapRow { minor: 19, arenas: (65936, 65936), arena_spans: 2_097_152, span_state: 99, span_alloc_bits: 72, span_freeindex: (48, 8), span_class: 98, pointer_bits: PointerBits::ArenaTwoBits, gobuf_bp: 48, gcdata: (264, 496) },
    HeapRow { minor: 21, arenas: (65944, 65944), arena_spans: 1_064_960, span_state: 107, span_alloc_bits: 72, span_freeindex: (48, 8), span_class: 106, pointer_bits: PointerBits::ArenaOneBit, gobuf_bp: 48, gcdata: (280, 536) },
    HeapRow { minor: 22, arenas: (66008, 66072), arena_spans: 0, span_state: 99, span_alloc_bits: 64, span_freeindex: (48, 2), span_class: 98, pointer_bits: PointerBits::InSpan { large_type: 152, mask_on_demand: false }, gobuf_bp: 48, gcdata: (280, 536) },
    HeapRow { minor: 23, arenas: (66008, 66072), arena_spans: 0, span_state: 99, span_alloc_bits: 64, span_freeindex: (48, 2), span_class: 98, pointer_bits: PointerBits::InSpan { large_type: 152, mask_on_demand: false }, gobuf_bp: 48, gcdata: (280, 536) },
    HeapRow { minor: 24, arenas: (66008, 66072), arena_spans: 0, span_state: 99, span_alloc_bits: 64, span_freeindex: (48, 2), span_class: 98, pointer_bits: PointerBits::InSpan { large_type: 152, mask_on_demand: true }, gobuf_bp: 48, gcdata: (280, 536) },
    HeapRow { minor: 25, arenas: (66008, 66072), arena_spans: 0, span_state: 99, span_alloc_bits: 64, span_freeindex: (48, 2), span_class: 98, pointer_bits: PointerBits::InSpan { large_type: 152, mask_on_demand: true }, gobuf_bp: 40, gcdata: (280, 536) },
    HeapRow { minor: 26, arenas: (66008, 66072), arena_spans: 0, span_state: 99, span_alloc_bits: 64, span_freeindex: (48, 2), span_class: 98, pointer_bits: PointerBits::InSpan { large_type: 152, mask_on_demand: true }, gobuf_bp: 40, gcdata: (280, 544) },
    HeapRow { minor: 27, arenas: (66008, 66072), arena_spans: 0, span_state: 99, span_alloc_bits: 64, span_freeindex: (48, 2), span_class: 98, pointer_bits: PointerBits::InSpan { large_type: 152, mask_on_demand: true }, gobuf_bp: 40, gcdata: (280, 520) },
];

impl HeapRow {
    fn offsets(&self, arch: Arch) -> HeapOffsets {
        let (gcdata, mask) = self.gcdata;
        HeapOffsets {
            mheap_arenas: match arch {
                Arch::Amd64 => self.arenas.0,
                Arch::Arm64 => self.arenas.1,
            },
            arena_spans: self.arena_spans,
            span_state: self.span_state,
            span_alloc_bits: self.span_alloc_bits,
            span_freeindex: self.span_freeindex,
            span_class: self.span_class,
            pointer_bits: self.pointer_bits,
            g_stack_lo: 0,
            g_sched: (G_SCHED, G_SCHED + 8, G_SCHED + self.gobuf_bp),
            data: RootSectionFields {
                start: MODULEDATA_DATA,
                end: MODULEDATA_DATA + 8,
                gcprog: gcdata,
                mask,
            },
            bss: RootSectionFields {
                start: MODULEDATA_DATA + 16,
                end: MODULEDATA_DATA + 24,
                gcprog: gcdata + 8,
                mask: mask + 16,
            },
        }
    }
}

fn heap_offsets_from_dwarf(d: &StructMembers, version: &GoVersion) -> Option<HeapOffsets> {
    let member = |s: &str, m: &str| d.get(s)?.get(m).copied();
    let offset = |s: &str, m: &str| member(s, m).map(|m| m.offset);
    let freeindex = member("runtime.mspan", "freeindex")?;
    let freeindex_size = u8::try_from(freeindex.size?).ok().filter(|s| [2, 8].contains(s))?;
    let sched = offset("runtime.g", "sched")?;
    let gobuf = |m| Some(sched + offset("runtime.gobuf", m)?);
    let md = |m| offset("runtime.moduledata", m);
    let section = |start, end, gcprog, mask| {
        Some(RootSectionFields {
            start: md(start)?,
            end: md(end)?,
            gcprog: md(gcprog)?,
            mask: md(mask)?,
        })
    };
    Some(HeapOffsets {
        mheap_arenas: offset("runtime.mheap", "arenas")?,
        arena_spans: offset("runtime.heapArena", "spans")?,
        span_state: offset("runtime.mspan", "state")?,
        span_alloc_bits: offset("runtime.mspan", "allocBits")?,
        span_freeindex: (freeindex.offset, freeindex_size),
        span_class: offset("runtime.mspan", "spanclass")?,
        // Which scheme the runtime uses shows in its structs: the span's large-object type since 1.22, the
        // arena's bitmap before, with `noMorePtrs` beside it when it is one bit a word.
        pointer_bits: match (
            offset("runtime.mspan", "largeType"),
            offset("runtime.heapArena", "noMorePtrs"),
        ) {
            (Some(large_type), _) => PointerBits::InSpan {
                large_type,
                mask_on_demand: (version.major, version.minor) >= (1, 24),
            },
            (None, Some(_)) => PointerBits::ArenaOneBit,
            (None, None) => PointerBits::ArenaTwoBits,
        },
        g_stack_lo: offset("runtime.g", "stack")? + offset("runtime.stack", "lo")?,
        g_sched: (gobuf("sp")?, gobuf("pc")?, gobuf("bp")?),
        data: section("data", "edata", "gcdata", "gcdatamask")?,
        bss: section("bss", "ebss", "gcbss", "gcbssmask")?,
    })
}

/// The heap walk's struct offsets: from DWARF when it describes every one of them, else from [`HEAP_TABLE`].
pub(crate) fn heap_offsets(
    version: &GoVersion,
    arch: Arch,
    dwarf: Option<&StructMembers>,
) -> Result<HeapOffsets, TargetError> {
    dwarf
        .and_then(|d| heap_offsets_from_dwarf(d, version))
        .or_else(|| heap_table(version, arch))
        .ok_or_else(|| no_table(version, arch))
}

fn heap_table(version: &GoVersion, arch: Arch) -> Option<HeapOffsets> {
    let row = HEAP_TABLE
        .iter()
        .find(|r| version.major == 1 && r.minor == version.minor)?;
    Some(row.offsets(arch))
}

/// The complete layout, once the code has told where `runtime.work.cycles` is and whether Green Tea is on.
pub(crate) fn runtime_layout(
    version: &GoVersion,
    structs: &Structs,
    gc_cycles_addr: u64,
    inline_mark_bits: bool,
    memprofilerate_addr: Option<u64>,
) -> RuntimeLayout {
    RuntimeLayout {
        goid_offset: structs.goid_offset,
        g_atomicstatus: structs.g_status.0,
        g_waitsince: structs.g_status.1,
        g_waitreason: structs.g_status.2,
        source: structs.source,
        growslice_type_arg: if (version.major, version.minor) <= (1, 19) {
            0
        } else {
            4
        },
        span: structs.span,
        inline_mark_bits,
        inline_mark_sizes: if inline_mark_bits { INLINE_MARK_SIZES } else { (0, 0) },
        gc_cycles_addr,
        gc_cycles_size: structs.work_cycles.1,
        wait_reasons: wait_reasons(version),
        cleanups: cleanup_layout(version),
        special_kind_offset: if (version.major, version.minor) <= (1, 23) {
            10
        } else {
            16
        },
        sampling: sampling_layout(version, memprofilerate_addr),
    }
}

/// `runtime.waitReasonStrings` by release (empty when there is no table for it).
fn wait_reasons(version: &GoVersion) -> &'static [&'static str] {
    match (version.major, version.minor) {
        (1, 19) => WAIT_REASONS_1_19,
        (1, 21) => WAIT_REASONS_1_21,
        (1, 22) => WAIT_REASONS_1_22,
        (1, 23) => WAIT_REASONS_1_23,
        (1, 24) => WAIT_REASONS_1_24,
        (1, 25) => WAIT_REASONS_1_25,
        (1, 26) | (1, 27) => WAIT_REASONS_1_26,
        _ => &[],
    }
}

// `waitReasonStrings`, indexed by `waitReason` value (the order of the `iota` const block before it), from
// `runtime2.go`: `@go1.19.8:1039-1096`, `@go1.21.13:1058-1125`, `@go1.22.10:1095-1172`, `@go1.23.9:1062-1141`,
// `@go1.24.11:1045-1136`, `@go1.25.5:1056-1153`, `@go1.26.6:1223-1320`, `@go1.27.3:1224-1321` (same as 1.26).
// Checked against each toolchain's source and the binaries' DWARF constants by the tests.
#[rustfmt::skip]
const WAIT_REASONS_1_19: &[&str] = &[
    "", "GC assist marking", "IO wait", "chan receive (nil chan)", "chan send (nil chan)", "dumping heap",
    "garbage collection", "garbage collection scan", "panicwait", "select", "select (no cases)", "GC assist wait",
    "GC sweep wait", "GC scavenge wait", "chan receive", "chan send", "finalizer wait", "force gc (idle)",
    "semacquire", "sleep", "sync.Cond.Wait", "timer goroutine (idle)", "trace reader (blocked)",
    "wait for GC cycle", "GC worker (idle)", "preempted", "debug call",
];
#[rustfmt::skip]
const WAIT_REASONS_1_21: &[&str] = &[
    "", "GC assist marking", "IO wait", "chan receive (nil chan)", "chan send (nil chan)", "dumping heap",
    "garbage collection", "garbage collection scan", "panicwait", "select", "select (no cases)", "GC assist wait",
    "GC sweep wait", "GC scavenge wait", "chan receive", "chan send", "finalizer wait", "force gc (idle)",
    "semacquire", "sleep", "sync.Cond.Wait", "sync.Mutex.Lock", "sync.RWMutex.RLock", "sync.RWMutex.Lock",
    "trace reader (blocked)", "wait for GC cycle", "GC worker (idle)", "GC worker (active)", "preempted",
    "debug call", "GC mark termination", "stopping the world",
];
#[rustfmt::skip]
const WAIT_REASONS_1_22: &[&str] = &[
    "", "GC assist marking", "IO wait", "chan receive (nil chan)", "chan send (nil chan)", "dumping heap",
    "garbage collection", "garbage collection scan", "panicwait", "select", "select (no cases)", "GC assist wait",
    "GC sweep wait", "GC scavenge wait", "chan receive", "chan send", "finalizer wait", "force gc (idle)",
    "semacquire", "sleep", "sync.Cond.Wait", "sync.Mutex.Lock", "sync.RWMutex.RLock", "sync.RWMutex.Lock",
    "trace reader (blocked)", "wait for GC cycle", "GC worker (idle)", "GC worker (active)", "preempted",
    "debug call", "GC mark termination", "stopping the world", "flushing proc caches", "trace goroutine status",
    "trace proc status", "page trace flush", "coroutine",
];
#[rustfmt::skip]
const WAIT_REASONS_1_23: &[&str] = &[
    "", "GC assist marking", "IO wait", "chan receive (nil chan)", "chan send (nil chan)", "dumping heap",
    "garbage collection", "garbage collection scan", "panicwait", "select", "select (no cases)", "GC assist wait",
    "GC sweep wait", "GC scavenge wait", "chan receive", "chan send", "finalizer wait", "force gc (idle)",
    "semacquire", "sleep", "sync.Cond.Wait", "sync.Mutex.Lock", "sync.RWMutex.RLock", "sync.RWMutex.Lock",
    "trace reader (blocked)", "wait for GC cycle", "GC worker (idle)", "GC worker (active)", "preempted",
    "debug call", "GC mark termination", "stopping the world", "flushing proc caches", "trace goroutine status",
    "trace proc status", "page trace flush", "coroutine", "GC weak to strong wait",
];
#[rustfmt::skip]
const WAIT_REASONS_1_24: &[&str] = &[
    "", "GC assist marking", "IO wait", "chan receive (nil chan)", "chan send (nil chan)", "dumping heap",
    "garbage collection", "garbage collection scan", "panicwait", "select", "select (no cases)", "GC assist wait",
    "GC sweep wait", "GC scavenge wait", "chan receive", "chan send", "finalizer wait", "force gc (idle)",
    "semacquire", "sleep", "sync.Cond.Wait", "sync.Mutex.Lock", "sync.RWMutex.RLock", "sync.RWMutex.Lock",
    "sync.WaitGroup.Wait", "trace reader (blocked)", "wait for GC cycle", "GC worker (idle)", "GC worker (active)",
    "preempted", "debug call", "GC mark termination", "stopping the world", "flushing proc caches",
    "trace goroutine status", "trace proc status", "page trace flush", "coroutine", "GC weak to strong wait",
    "synctest.Run", "synctest.Wait", "chan receive (synctest)", "chan send (synctest)", "select (synctest)",
];
#[rustfmt::skip]
const WAIT_REASONS_1_25: &[&str] = &[
    "", "GC assist marking", "IO wait", "chan receive (nil chan)", "chan send (nil chan)", "dumping heap",
    "garbage collection", "garbage collection scan", "panicwait", "select", "select (no cases)", "GC assist wait",
    "GC sweep wait", "GC scavenge wait", "chan receive", "chan send", "finalizer wait", "force gc (idle)",
    "GOMAXPROCS updater (idle)", "semacquire", "sleep", "sync.Cond.Wait", "sync.Mutex.Lock", "sync.RWMutex.RLock",
    "sync.RWMutex.Lock", "sync.WaitGroup.Wait", "trace reader (blocked)", "wait for GC cycle", "GC worker (idle)",
    "GC worker (active)", "preempted", "debug call", "GC mark termination", "stopping the world",
    "flushing proc caches", "trace goroutine status", "trace proc status", "page trace flush", "coroutine",
    "GC weak to strong wait", "synctest.Run", "synctest.Wait", "chan receive (durable)", "chan send (durable)",
    "select (durable)", "sync.WaitGroup.Wait (durable)", "cleanup wait",
];
#[rustfmt::skip]
const WAIT_REASONS_1_26: &[&str] = &[
    "", "GC assist marking", "IO wait", "dumping heap", "garbage collection", "garbage collection scan",
    "panicwait", "GC assist wait", "GC sweep wait", "GC scavenge wait", "finalizer wait", "force gc (idle)",
    "GOMAXPROCS updater (idle)", "semacquire", "sleep", "chan receive (nil chan)", "chan send (nil chan)",
    "select (no cases)", "select", "chan receive", "chan send", "sync.Cond.Wait", "sync.Mutex.Lock",
    "sync.RWMutex.RLock", "sync.RWMutex.Lock", "sync.WaitGroup.Wait", "trace reader (blocked)", "wait for GC cycle",
    "GC worker (idle)", "GC worker (active)", "preempted", "debug call", "GC mark termination",
    "stopping the world", "flushing proc caches", "trace goroutine status", "trace proc status", "page trace flush",
    "coroutine", "GC weak to strong wait", "synctest.Run", "synctest.Wait", "chan receive (durable)",
    "chan send (durable)", "select (durable)", "sync.WaitGroup.Wait (durable)", "cleanup wait",
];

/// The table's answer alone, to check it against DWARF.
#[cfg(test)]
pub(crate) fn table(version: &GoVersion, arch: Arch) -> Option<(u64, ModuledataOffsets)> {
    table_row(version, arch).map(|r| (r.goid, r.moduledata))
}

/// The table's `runtime.g` (atomicstatus, waitsince, waitreason) offsets, to check them against DWARF.
#[cfg(test)]
pub(crate) fn table_g_status(version: &GoVersion, arch: Arch) -> Option<(u64, u64, u64)> {
    table_row(version, arch).map(|r| r.g_status)
}

/// The table's mspan layout and `workType.cycles` offset, to check them against DWARF.
#[cfg(test)]
pub(crate) fn table_span_cycles(version: &GoVersion, arch: Arch) -> Option<(SpanLayout, u64)> {
    table_row(version, arch).map(|r| (r.span, r.cycles(arch)))
}

/// The heap table's answer alone, to check it against DWARF.
#[cfg(test)]
pub(crate) fn table_heap_offsets(version: &GoVersion, arch: Arch) -> Option<HeapOffsets> {
    heap_table(version, arch)
}

/// [`heap_offsets`] from DWARF alone, to check the table against.
#[cfg(test)]
pub(crate) fn dwarf_heap_offsets(dwarf: &StructMembers, version: &GoVersion) -> Option<HeapOffsets> {
    heap_offsets_from_dwarf(dwarf, version)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn version(raw: &str) -> GoVersion {
        GoVersion::parse(raw).unwrap()
    }

    #[test]
    fn the_heap_table_covers_the_supported_releases() {
        let heap: Vec<u32> = HEAP_TABLE.iter().map(|r| r.minor).collect();
        assert_eq!(heap, supported_minors().collect::<Vec<_>>());
    }

    #[test]
    fn only_releases_with_a_table_row_are_supported() {
        assert!(is_supported(&version("go1.19.8")));
        assert!(is_supported(&version("go1.24.11 X:nogreenteagc")));
        for raw in ["go1.18", "go1.20.14", "go1.28", "go2.0"] {
            assert!(!is_supported(&version(raw)), "{raw}");
        }
    }

    #[test]
    fn runs_of_releases_are_joined() {
        assert_eq!(releases_text([19, 21, 22, 23].into_iter()), "go1.19, go1.21–go1.23");
        assert_eq!(releases_text([19].into_iter()), "go1.19");
        assert_eq!(releases_text([].into_iter()), "");
    }
}
