//! What reading the Go heap from outside the process needs from the binary: the way from an address to its span
//! (`spanOf`, `runtime/mheap.go@go1.27.3:687-713`) and the GC roots: package-level variables in data and bss, and
//! the goroutines' stacks.
//! Read on demand (at report time), not at attach: the DWARF scan for every global costs a tenth of a second on a
//! large binary.

use super::dwarf::{self, GlobalVar};
use super::layout::{self, HeapOffsets};
use super::locals::FrameLocals;
use super::runtime_globals::DataRegion;
use super::typegraph::TypeGraph;
use super::{elf, runtime_globals, Arch, GoBinary, PointerBits, RuntimeLayout, SpanLayout};

/// Offsets and addresses for [`crate::heap`]. Offsets come from DWARF, else from the version table
/// (`layout.rs`); addresses from the symbol table, else from the code (`roots.rs`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeapLayout {
    /// Link-time address of `mheap_.arenas[0]`, the pointer to the arena index (arenaL1Bits is 0 on linux
    /// amd64 and arm64, so the L1 array has one entry).
    pub arenas: u64,
    /// `heapArena.spans`: 2097152 in 1.19, 1064960 in 1.21 (the heap bitmap came first), 0 since 1.22.
    pub arena_spans: u64,
    pub span: SpanLayout,
    /// `mspan.state` (`mSpanStateBox`, one byte): 1 is `mSpanInUse`.
    pub span_state: u64,
    /// `mspan.allocBits` (`*gcBits`) and `mspan.freeindex` (offset, byte size: uintptr up to 1.21, uint16 since).
    pub span_alloc_bits: u64,
    pub span_freeindex: (u64, u8),
    /// `mspan.spanclass` (one byte; the low bit: noscan, no pointers in the span's objects).
    pub span_class: u64,
    /// Where the runtime keeps each object's pointer words.
    pub pointer_bits: PointerBits,
    /// Element sizes of the spans whose last 128 bytes hold Green Tea's inline mark bits, which the span's pointer
    /// bits come before; (0, 0) without Green Tea.
    pub inline_mark_sizes: (u64, u64),
    /// `arenaBaseOffset` (`malloc.go@go1.27.3:314`): arena indices count from it.
    pub arena_base_offset: u64,
}

/// Where the goroutines and their stacks are: `runtime.allgs` (a `[]*g`), and in each `g` its stack bounds and
/// the registers it saved when it last stopped running (`g.sched`, a `gobuf`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GoroutineLayout {
    /// Link-time address of the `allgs` slice header.
    pub allgs: u64,
    /// `g.stack.lo`; `g.stack.hi` is the word after it.
    pub stack_lo: u64,
    /// `g.sched.sp`, `g.sched.pc` and `g.sched.bp`.
    pub sched_sp: u64,
    pub sched_pc: u64,
    pub sched_bp: u64,
}

/// The heap layout and the roots of one binary.
pub struct HeapModel {
    pub layout: HeapLayout,
    /// The program's package-level variables, named and typed: empty without DWARF.
    pub globals: Vec<GlobalVar>,
    /// The program's types, for a typed walk from the globals: empty without DWARF.
    pub types: TypeGraph,
    /// Where each function keeps its variables, to name stack slots: empty without DWARF.
    pub locals: FrameLocals,
    pub goroutines: GoroutineLayout,
    /// The data and bss sections, with their pointer bitmaps: every root among the package-level variables,
    /// unnamed, with or without DWARF.
    pub data_regions: Vec<DataRegion>,
    /// Link-time `moduledata.types`, the base of type names: names the types the runtime keeps for heap objects.
    pub types_base: Option<u64>,
}

/// Packages whose variables are roots worth naming: not the runtime's own bookkeeping (`runtime.mheap_`,
/// `runtime.allgs` reach everything, and say nothing about who holds the program's data).
fn is_program_variable(name: &str) -> bool {
    !["runtime.", "internal/", "runtime/", "sync.", "sync/", "go:", "type:"]
        .iter()
        .any(|p| name.starts_with(p))
}

impl GoBinary {
    /// Reads the heap layout, the roots and (given DWARF) the program's package-level variables.
    pub fn heap_model(&self) -> Result<HeapModel, String> {
        let file = elf::open(&self.bytes).map_err(|e| e.to_string())?;
        let members = self
            .image
            .has_dwarf
            .then(|| dwarf::struct_members(&file, layout::HEAP_DWARF_STRUCTS).ok())
            .flatten();
        let offsets = layout::heap_offsets(self.version(), self.arch(), members.as_ref()).map_err(|e| e.to_string())?;
        let (mheap, allgs) = if self.image.has_symtab {
            (
                elf::symbol_address(&file, "runtime.mheap_").ok_or("no runtime.mheap_ in the symbol table")?,
                elf::symbol_address(&file, "runtime.allgs").ok_or("no runtime.allgs in the symbol table")?,
            )
        } else {
            let code = |name: &str| self.code_by_name(name);
            (
                runtime_globals::mheap_from_code(&self.image, code, offsets.mheap_arenas + 8)?,
                runtime_globals::allgs_from_code(&self.image, code)?,
            )
        };
        let module = self.module.ok_or("runtime.firstmoduledata not found")?;
        let data_regions = runtime_globals::data_regions(&self.image, &self.bytes, module.addr, &offsets)?;
        let program = match self.image.has_dwarf {
            true => Some(dwarf::program(&file, is_program_variable)?),
            false => None,
        };
        let (globals, types, locals) = program.map(|p| (p.globals, p.types, p.locals)).unwrap_or_default();
        Ok(HeapModel {
            layout: layout(&offsets, mheap, &self.layout, self.image.arch),
            globals,
            types,
            locals,
            goroutines: GoroutineLayout {
                allgs,
                stack_lo: offsets.g_stack_lo,
                sched_sp: offsets.g_sched.0,
                sched_pc: offsets.g_sched.1,
                sched_bp: offsets.g_sched.2,
            },
            data_regions,
            types_base: Some(module.types),
        })
    }
}

fn layout(offsets: &HeapOffsets, mheap: u64, runtime: &RuntimeLayout, arch: Arch) -> HeapLayout {
    HeapLayout {
        arenas: mheap.wrapping_add(offsets.mheap_arenas),
        arena_spans: offsets.arena_spans,
        span: runtime.span,
        span_state: offsets.span_state,
        span_alloc_bits: offsets.span_alloc_bits,
        span_freeindex: offsets.span_freeindex,
        span_class: offsets.span_class,
        pointer_bits: offsets.pointer_bits,
        inline_mark_sizes: runtime.inline_mark_sizes,
        arena_base_offset: match arch {
            Arch::Amd64 => 0xffff_8000_0000_0000,
            Arch::Arm64 => 0,
        },
    }
}
