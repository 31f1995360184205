//! Records and map values shared by the eBPF programs (`tracer-ebpf`) and userspace (`tracer`).
//!
//! Everything here is `#[repr(C)]` plain data: the kernel side writes it into maps and the ring
//! buffer, userspace reads the same bytes back. Keep the kernel side small and dumb: it copies
//! registers and a stack, userspace decides what they mean.
#![no_std]

/// Frames captured per record (the innermost ones; Go's runtime frames come first).
pub const MAX_STACK_DEPTH: usize = 32;

/// Ring buffer size in bytes (a power of two, multiple of the page size).
pub const RING_BUFFER_BYTES: u32 = 16 << 20;

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
}

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
    pub ptr: u64,
    /// Bytes requested (`Alloc`) or allocated in all (`Container`).
    pub size: u64,
    /// `*abi.Type` in the target: the allocated type (`Alloc`, 0 for untyped memory) or the
    /// constructor's element/map type (`Container`).
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
