//! Records and map values shared by the eBPF programs (`tracer-ebpf`) and userspace (`tracer`).
//!
//! Everything here is `#[repr(C)]` plain data: the kernel side writes it into maps and the ring
//! buffer, userspace reads the same bytes back. Keep the kernel side small and dumb: it copies
//! registers and a stack, userspace decides what they mean.
#![no_std]

/// Frames captured per record (the innermost ones; Go's runtime frames come first).
pub const MAX_STACK_DEPTH: usize = 32;

/// Ring buffer size in bytes (a power of two, multiple of the page size): ~0.6 s of full mode's
/// records at the ~80 k/s two vCPUs can trap (`./x bench`, where loss starts).
pub const RING_BUFFER_BYTES: u32 = 16 << 20;

/// Sampled mode's ring buffer: its records come at about twice the trap budget (~1 k/s by
/// default, a few hundred bytes each), so 1 MiB holds seconds of them between drains, which come
/// every 100 ms. It is resident in the agent (twice over: the kernel maps a ring's data pages
/// twice), so every MiB here costs two per traced process.
pub const SAMPLED_RING_BUFFER_BYTES: u32 = 1 << 20;

/// Frequent records (allocations, samples, sweeps) wake userspace only once this many bytes are
/// waiting; userspace also drains on a short timer. A wakeup per record costs the target a
/// context switch each: batching took full mode from 1.37x to 1.08x the empty-probe floor, and
/// sampled mode from 16 % to 11 % slower, on a 2-vCPU VM (`./x bench`).
pub const WAKE_AFTER_BYTES: u64 = 64 << 10;

/// Goroutines with an allocation in flight that the kernel tracks at once (LRU beyond that).
pub const MAX_IN_FLIGHT: u32 = 16384;

/// What a record describes.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecordKind {
    /// One heap allocation returned by the `mallocgc` family: `ptr`, `size`, `type_ptr`.
    Alloc = 1,
    /// A slice or map constructor (`makeslice`, `growslice`, `makemap`, …) returned after
    /// allocating `alloc_count` heap blocks of `size` bytes in all; `ptr` is its result.
    Container = 2,
    /// A GC cycle reached mark termination ([`CycleRecord`]).
    CycleEnd = 3,
    /// A span is about to be swept: which of its objects the last cycle marked ([`SpanRecord`]).
    SpanSwept = 4,
    /// `SetFinalizer` registered a finalizer: `ptr` the object, `size` the `*funcval`,
    /// `type_ptr` the `*T` type it was called with.
    FinalizerSet = 5,
    /// `SetFinalizer(x, nil)`: `ptr` the object.
    FinalizerRemoved = 6,
    /// A sweep found the object unreachable and queued its finalizer: `ptr` the object, `size`
    /// the `*funcval`.
    FinalizerQueued = 7,
    /// The finalizer goroutine starts a finalizer: `ptr` the object, `size` the `*funcval`.
    FinalizerStarted = 8,
    /// `AddCleanup` (Go 1.24+): `ptr` the object, `size` the cleanup's handle (the word that
    /// names this registration when it is queued and run), `type_ptr` the cleanup `*funcval` when
    /// the runtime passes it apart from the handle (1.26+).
    CleanupSet = 9,
    /// A sweep freed an object's cleanup special and queued the cleanup: `ptr` the object,
    /// `size` the handle.
    CleanupQueued = 10,
    /// A cleanup is called: `ptr` the handle.
    CleanupStarted = 11,
    /// Sampled mode: the runtime's allocation sampler picked this allocation (`mProf_Malloc`):
    /// `ptr`, `size`; `alloc_count` is how many sampled allocations it stands for (more than one
    /// when the trap budget thinned the samples in the kernel).
    Sampled = 12,
    /// Sampled mode: a sweep freed a sampled object (its profile special): `ptr` the object.
    SampleFreed = 13,
}

impl RecordKind {
    /// The kind of the record in `bytes` (every record starts with its kind).
    pub fn of(bytes: &[u8]) -> Option<Self> {
        let k = u32::from_ne_bytes([*bytes.first()?, *bytes.get(1)?, *bytes.get(2)?, *bytes.get(3)?]);
        Some(match k {
            1 => Self::Alloc,
            2 => Self::Container,
            3 => Self::CycleEnd,
            4 => Self::SpanSwept,
            5 => Self::FinalizerSet,
            6 => Self::FinalizerRemoved,
            7 => Self::FinalizerQueued,
            8 => Self::FinalizerStarted,
            9 => Self::CleanupSet,
            10 => Self::CleanupQueued,
            11 => Self::CleanupStarted,
            12 => Self::Sampled,
            13 => Self::SampleFreed,
            _ => return None,
        })
    }
}

/// What the eBPF programs need to know about this target's runtime, set once at load time from
/// the binary's per-version layout (`tracer::target::RuntimeLayout`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct ProbeConfig {
    /// `runtime.g.goid`.
    pub goid_offset: u64,
    /// Runtime address of the GC cycle counter (`runtime.work.cycles`, a uint32), 0 if unknown.
    pub gc_cycles_addr: u64,
    /// `runtime.mspan` fields.
    pub span_start_addr: u64,
    pub span_npages: u64,
    pub span_nelems: u64,
    /// 8 (uintptr, Go ≤ 1.21) or 2 (uint16).
    pub span_nelems_size: u64,
    pub span_elemsize: u64,
    pub span_gcmark_bits: u64,
    /// Green Tea GC keeps the marks of spans with objects in this size range (inclusive) inside
    /// the span's page until sweep merges them; both 0 when the runtime does not.
    pub inline_marks_min: u64,
    pub inline_marks_max: u64,
    /// Runtime address range of the finalizer goroutine's loop (`runfinq`/`runFinalizers`): a
    /// `reflectcall` returning there is a finalizer starting.
    pub finalizer_loop_start: u64,
    pub finalizer_loop_end: u64,
    /// `runtime.special`: where its kind byte is, the kind of a cleanup special (0: the runtime
    /// has no cleanups) and where a cleanup special keeps the handle ([`RecordKind::CleanupSet`]).
    pub special_kind: u64,
    pub special_kind_cleanup: u64,
    pub special_cleanup_handle: u64,
    /// The kind of a memory-profile special, whose release is a sampled object's death (0: not
    /// in sampled mode).
    pub special_kind_profile: u64,
    /// Sampled mode's trap budget: sampled allocations per second one CPU passes on in full;
    /// beyond it the kernel keeps one in 2^k (see [`SampleBudget`]).
    pub samples_per_cpu_second: u64,
}

/// The kernel's closed loop on sampled allocations, per CPU: it sends one in 2^k, weighted 2^k,
/// and moves k so that about the budget is sent per second. At the end of each second: more than
/// the budget sent, k + 1; under a quarter of it, k - 1. Within a second, each time twice the
/// budget has been sent, k + 1 at once, so a burst cannot flood the ring before the second ends.
/// Nothing is dropped unweighted.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct SampleBudget {
    pub window_start_ns: u64,
    /// Sampled allocations sent in this window.
    pub sent: u64,
    /// k: one sampled allocation in 2^k is sent, weighted 2^k.
    pub shift: u64,
    /// Since attach: sampled allocations seen, and those thinned out by k.
    pub total_hits: u64,
    pub thinned: u64,
}

/// Largest k of [`SampleBudget`]: one sample in 2^16 at worst.
pub const MAX_SAMPLE_SHIFT: u64 = 16;

/// An argument "register" number meaning the closure context register (RDX on amd64, R26 on
/// arm64), which holds the `*funcval` at an indirect call.
pub const CLOSURE_CONTEXT: u8 = 0x40;

/// Mark bits captured per swept span: 1024 objects, the most an 8 KiB span of 8-byte objects holds.
pub const MAX_MARK_BYTES: usize = 128;

/// Green Tea's inline marks: the last 64 bytes of the span's 8 KiB page (63 mark bytes, then the
/// size class), read before `moveInlineMarks` copies them to `gcmarkBits` at sweep.
pub const INLINE_MARKS_OFFSET: u64 = 8192 - 64;
pub const INLINE_MARK_BYTES: usize = 63;

/// [`RecordKind::CycleEnd`].
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct CycleRecord {
    pub kind: u32,
    pub _pad: u32,
    /// The target's own cycle number (what `GODEBUG=gctrace=1` prints as `gc N`).
    pub cycle: u64,
    pub ktime_ns: u64,
}

/// [`RecordKind::SpanSwept`]: objects whose bit is clear in `marks` are freed by this sweep.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct SpanRecord {
    pub kind: u32,
    /// Valid bytes in `marks` (0 if they could not be read).
    pub marks_len: u32,
    pub base: u64,
    pub npages: u64,
    pub elemsize: u64,
    pub nelems: u64,
    pub ktime_ns: u64,
    /// Bit i (LSB first in byte i/8) set: object i survived the cycle.
    pub marks: [u8; MAX_MARK_BYTES],
}

/// The kind of Go value a constructor makes, as set by the constructor's entry probe.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ContainerKind {
    None = 0,
    Slice = 1,
    Map = 2,
}

impl ContainerKind {
    pub fn from_u32(v: u32) -> Self {
        match v {
            1 => Self::Slice,
            2 => Self::Map,
            _ => Self::None,
        }
    }
}

/// Key of an allocation in flight: the goroutine and the depth of the allocator's frame below
/// the top of its stack. The depth separates an allocation that the runtime makes while serving
/// another (a GC starting inside mallocgc allocates too) and survives the stack being moved; an
/// entry that fires again after stack growth lands on the same key.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AllocKey {
    pub g: u64,
    pub depth: u64,
}

/// State saved at a `mallocgc`-family entry and read back at each of the function's RET
/// instructions (never a uretprobe: Go moves stacks).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct AllocEntry {
    pub size: u64,
    pub type_ptr: u64,
}

/// State saved at a slice/map constructor's entry, keyed by the goroutine. Allocations made
/// while it is set belong to that constructor's value.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct ContainerEntry {
    /// A [`ContainerKind`].
    pub kind: u32,
    pub _pad: u32,
    /// Bytes from the top of the goroutine's stack to SP at the constructor's entry (the same at
    /// its RET). Depth from the top survives stack copying; it tells a nested constructor
    /// (deeper) from a stale entry left by one that panicked (not deeper).
    pub depth: u64,
    /// Element type (`*abi.Type`) for slices, map type for maps, 0 when the runtime passes none
    /// (`makemap_small`).
    pub type_ptr: u64,
    pub alloc_count: u64,
    pub bytes: u64,
}

/// One ring-buffer record. Fixed size so the kernel side stays branch-free.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Record {
    /// A [`RecordKind`].
    pub kind: u32,
    /// For `Alloc`: the [`ContainerKind`] of the enclosing constructor, if any.
    /// For `Container`: its own kind.
    pub container: u32,
    pub goid: u64,
    /// The goroutine's `g` pointer (to read its state later, e.g. the finalizer goroutine's).
    pub g: u64,
    pub ptr: u64,
    /// Bytes requested (`Alloc`, `Sampled`) or allocated in all (`Container`); for finalizer and
    /// cleanup events, the auxiliary value each [`RecordKind`] names (a `*funcval`, a handle).
    pub size: u64,
    /// `*abi.Type` in the target: the allocated type (`Alloc`, 0 for untyped memory), the
    /// constructor's element/map type (`Container`) or `SetFinalizer`'s `*T`; for `CleanupSet`,
    /// the cleanup's `*funcval`.
    pub type_ptr: u64,
    pub alloc_count: u64,
    pub ktime_ns: u64,
    /// The target's GC cycle counter when the record was made (0 if unknown): an allocation
    /// made during cycle N (or after it) can first be freed by cycle N+1.
    pub gc_cycle: u64,
    /// The return address in the probed function's caller, read at the probe (frame-pointer
    /// unwinding starts one frame above it and would miss it).
    pub caller_pc: u64,
    /// Number of valid entries in `stack`.
    pub stack_len: u32,
    pub _pad: u32,
    /// User stack by frame pointer: `stack[0]` is the probed instruction.
    pub stack: [u64; MAX_STACK_DEPTH],
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain `repr(C)` integers, valid for any bit pattern.
    unsafe impl aya::Pod for super::AllocKey {}
    unsafe impl aya::Pod for super::AllocEntry {}
    unsafe impl aya::Pod for super::ContainerEntry {}
    unsafe impl aya::Pod for super::Record {}
    unsafe impl aya::Pod for super::ProbeConfig {}
    unsafe impl aya::Pod for super::CycleRecord {}
    unsafe impl aya::Pod for super::SpanRecord {}
    unsafe impl aya::Pod for super::SampleBudget {}
}

/// The attach cookie of an object event probe (finalizers, cleanups): which record to make and
/// which Go ABI argument registers hold the object and the auxiliary value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ObjectEventCookie {
    pub kind: RecordKind,
    pub ptr_arg: u8,
    pub aux_arg: Option<u8>,
    /// The object pointer is the first word of what `ptr_arg` points to (`reflectcall`'s
    /// register-argument block).
    pub deref_ptr: bool,
    /// Only when called from the finalizer goroutine's loop ([`ProbeConfig::finalizer_loop_start`]).
    pub from_finalizer_loop: bool,
    /// The register holding a type (`addfinalizer`'s `ot *ptrtype`), if any.
    pub type_arg: Option<u8>,
    /// Arguments are on the stack (an assembly function's ABI0): `ptr_arg`/`aux_arg` then
    /// count 8-byte words from SP at entry (the return address is word 0).
    pub stack_args: bool,
}

impl ObjectEventCookie {
    pub const fn encode(self) -> u64 {
        let aux = match self.aux_arg {
            Some(a) => a as u64 + 1,
            None => 0,
        };
        (self.kind as u64)
            | ((self.ptr_arg as u64) << 8)
            | (aux << 16)
            | ((self.deref_ptr as u64) << 24)
            | ((self.from_finalizer_loop as u64) << 25)
            | ((self.stack_args as u64) << 26)
            | (match self.type_arg {
                Some(a) => a as u64 + 1,
                None => 0,
            } << 32)
    }

    pub fn decode(cookie: u64) -> Option<Self> {
        let kind = (cookie & 0xff) as u32;
        let kind = RecordKind::of(&kind.to_ne_bytes())?;
        let aux = (cookie >> 16) & 0xff;
        Some(Self {
            kind,
            ptr_arg: ((cookie >> 8) & 0xff) as u8,
            aux_arg: if aux == 0 { None } else { Some((aux - 1) as u8) },
            deref_ptr: cookie & (1 << 24) != 0,
            from_finalizer_loop: cookie & (1 << 25) != 0,
            stack_args: cookie & (1 << 26) != 0,
            type_arg: match (cookie >> 32) & 0xff {
                0 => None,
                t => Some((t - 1) as u8),
            },
        })
    }
}

/// The attach cookie of a constructor entry probe: which [`ContainerKind`] the function makes and
/// which integer argument register (Go ABIInternal order) holds its `*abi.Type`, if any. One eBPF
/// program serves every constructor; userspace says per attach point what the registers mean.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConstructorCookie {
    pub kind: ContainerKind,
    pub type_arg: Option<u8>,
}

impl ConstructorCookie {
    pub const fn encode(self) -> u64 {
        let arg = match self.type_arg {
            Some(a) => a as u64 + 1,
            None => 0,
        };
        (self.kind as u64) | (arg << 8)
    }

    pub fn decode(cookie: u64) -> Self {
        let arg = (cookie >> 8) & 0xff;
        Self {
            kind: ContainerKind::from_u32((cookie & 0xff) as u32),
            type_arg: if arg == 0 { None } else { Some((arg - 1) as u8) },
        }
    }
}
