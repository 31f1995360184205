//! What reading the Go heap from outside the process needs from the binary: the way from an address to its span
//! (`spanOf`, `runtime/mheap.go@go1.27.3:687-713`) and the GC roots: package-level variables in data and bss, and
//! the goroutines' stacks.
//! Read on demand (at report time), not at attach: the DWARF scan for every global costs a tenth of a second on a
//! large binary.

use super::dwarf::{self, GlobalVar, StructMembers};
use super::typegraph::TypeGraph;
use super::{elf, Arch, GoBinary, SpanLayout};

/// Offsets and addresses for [`crate::heap`]. Resolved from DWARF and the symbol table only: there is no version
/// table for these yet, so stripped binaries get no chains (the report says why).
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
    pub globals: Vec<GlobalVar>,
    /// The program's types, for a typed walk from the globals.
    pub types: TypeGraph,
    pub goroutines: GoroutineLayout,
}

/// Packages whose variables are roots worth naming: not the runtime's own bookkeeping (`runtime.mheap_`,
/// `runtime.allgs` reach everything, and say nothing about who holds the program's data).
fn is_program_variable(name: &str) -> bool {
    !["runtime.", "internal/", "runtime/", "sync.", "sync/", "go:", "type:"].iter().any(|p| name.starts_with(p))
}

impl GoBinary {
    /// Reads the heap layout and the program's package-level variables.
    pub fn heap_model(&self) -> Result<HeapModel, String> {
        if !self.image.has_symtab || !self.image.has_dwarf {
            return Err("needs the symbol table and DWARF (a binary built without -ldflags=-s -w)".into());
        }
        let file = elf::open(&self.bytes).map_err(|e| e.to_string())?;
        let mheap = elf::symbol_address(&file, "runtime.mheap_").ok_or("no runtime.mheap_ in the symbol table")?;
        let allgs = elf::symbol_address(&file, "runtime.allgs").ok_or("no runtime.allgs in the symbol table")?;
        let members = dwarf::struct_members(
            &file,
            &["runtime.mheap", "runtime.heapArena", "runtime.mspan", "runtime.g", "runtime.gobuf", "runtime.stack"],
        )?;
        let layout = layout(&members, mheap, self.layout.span, self.image.arch)?;
        let goroutines = goroutine_layout(&members, allgs)?;
        let (globals, types) = dwarf::program(&file, is_program_variable)?;
        Ok(HeapModel { layout, globals, types, goroutines })
    }
}

fn member(members: &StructMembers, s: &str, m: &str) -> Result<dwarf::Member, String> {
    members.get(s).and_then(|ms| ms.get(m)).copied().ok_or_else(|| format!("DWARF does not describe {s}.{m}"))
}

fn goroutine_layout(members: &StructMembers, allgs: u64) -> Result<GoroutineLayout, String> {
    let member = |s: &str, m: &str| member(members, s, m).map(|m| m.offset);
    let sched = member("runtime.g", "sched")?;
    Ok(GoroutineLayout {
        allgs,
        stack_lo: member("runtime.g", "stack")? + member("runtime.stack", "lo")?,
        sched_sp: sched + member("runtime.gobuf", "sp")?,
        sched_pc: sched + member("runtime.gobuf", "pc")?,
        sched_bp: sched + member("runtime.gobuf", "bp")?,
    })
}

fn layout(members: &StructMembers, mheap: u64, span: SpanLayout, arch: Arch) -> Result<HeapLayout, String> {
    let member = |s: &str, m: &str| member(members, s, m);
    let freeindex = member("runtime.mspan", "freeindex")?;
    let freeindex_size = freeindex.size.and_then(|s| u8::try_from(s).ok()).filter(|s| [2, 8].contains(s)).ok_or("mspan.freeindex: unexpected size")?;
    Ok(HeapLayout {
        arenas: mheap + member("runtime.mheap", "arenas")?.offset,
        arena_spans: member("runtime.heapArena", "spans")?.offset,
        span,
        span_state: member("runtime.mspan", "state")?.offset,
        span_alloc_bits: member("runtime.mspan", "allocBits")?.offset,
        span_freeindex: (freeindex.offset, freeindex_size),
        arena_base_offset: match arch {
            Arch::Amd64 => 0xffff_8000_0000_0000,
            Arch::Arm64 => 0,
        },
    })
}
