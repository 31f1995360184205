//! The regions of the target's memory a walk starts from, each named as a report shows it.

use crate::gotype::Memory;
use crate::target::{DataRegion, GlobalVar, HeapModel, TypeId};

use super::typed::Slots;
use super::Root;

/// A root: its name, and the bytes to scan for pointers (runtime addresses).
#[derive(Clone, Debug)]
pub struct RootRegion {
    pub root: Root,
    pub addr: u64,
    /// 0: the rest of the heap object at `addr` (a closure, whose size the heap knows).
    pub len: u64,
    /// The region's type (a global's, from DWARF): scanned precisely; None: word by word.
    pub type_id: Option<TypeId>,
    /// Words of an untyped region that DWARF names (a frame's variables), followed first.
    pub named: Vec<NamedWord>,
    /// Every word of the region is a pointer (a word the GC's data/bss bitmap marks).
    pub pointer_words: bool,
}

/// A pointer word in a stack frame that a variable holds (runtime address), named as the variable and the path
/// inside it (`batch.ptr`, `s.buf`), with the type it points to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NamedWord {
    pub addr: u64,
    pub name: String,
    pub to: Option<TypeId>,
}

/// Frames followed per goroutine before the rest of its stack is scanned as one region.
const MAX_FRAMES: usize = 256;
/// A stack larger than this is taken as a misread `g`.
const MAX_STACK: u64 = 1 << 30;

/// Package-level variables; `load_bias` turns their link-time addresses into runtime ones.
pub fn global_roots(globals: &[GlobalVar], load_bias: u64) -> Vec<RootRegion> {
    globals
        .iter()
        .map(|g| RootRegion {
            root: Root { kind: "global", name: g.name.clone(), type_name: g.type_name.clone(), goroutine: None, blocked_ms: None },
            addr: g.addr + load_bias,
            len: g.size,
            type_id: g.type_id,
            named: Vec::new(),
            pointer_words: false,
        })
        .collect()
}

/// Without DWARF (a stripped binary): every word of the data and bss sections that the GC's bitmaps mark as a
/// pointer, named by its section and link-time address (`bss 0x5a1230`: `go tool nm` on an unstripped build
/// of the same source names the variable near it).
pub fn data_roots(regions: &[DataRegion], load_bias: u64) -> Vec<RootRegion> {
    let mut out = Vec::new();
    for r in regions {
        for word in (0..r.len / 8).map(|i| r.addr + 8 * i).filter(|&a| r.is_pointer(a)) {
            let root = Root { kind: "global", name: format!("{} {word:#x}", r.name), type_name: None, goroutine: None, blocked_ms: None };
            out.push(RootRegion { root, addr: word + load_bias, len: 8, type_id: None, named: Vec::new(), pointer_words: true });
        }
    }
    out
}

/// The closures of finalizers and cleanups that have not run, each with its function's name and its mechanism
/// (`finalizer`, `cleanup`): the runtime keeps them (in special records, off the heap), and with them whatever
/// they captured.
pub fn closure_roots(closures: impl IntoIterator<Item = (&'static str, String, u64)>) -> Vec<RootRegion> {
    closures
        .into_iter()
        .map(|(kind, name, funcval)| {
            let root = Root { kind, name, type_name: None, goroutine: None, blocked_ms: None };
            RootRegion { root, addr: funcval, len: 0, type_id: None, named: Vec::new(), pointer_words: false }
        })
        .collect()
}

fn word(memory: &dyn Memory, addr: u64) -> Option<u64> {
    let mut b = [0u8; 8];
    memory.read(addr, &mut b).ok()?;
    Some(u64::from_le_bytes(b))
}

/// The pointer words of the variables DWARF places in the frame of the function at `pc` (link-time; a return
/// address, so the call is at `pc - 1`) whose CFA is `cfa`.
fn frame_words(model: &HeapModel, slots: &mut Slots, pc: u64, cfa: u64) -> Vec<NamedWord> {
    let mut out = Vec::new();
    for (var, pieces) in model.locals.at(pc.wrapping_sub(1)) {
        let Some(value) = slots.of(var.ty) else { continue };
        for s in &value.slots {
            let Some(p) = pieces.iter().find(|p| s.offset >= p.start && s.offset - p.start < p.len) else { continue };
            let addr = cfa.wrapping_add_signed(p.cfa_offset).wrapping_add(s.offset - p.start);
            out.push(NamedWord { addr, name: format!("{}{}", var.name, s.path), to: s.to });
        }
    }
    // Go 1.25+ also describes a split variable's parts as variables of their own (`batch.ptr` beside `batch`):
    // one name per word, the variable's own.
    out.sort_by_key(|w| (w.addr, w.name.len()));
    out.dedup_by_key(|w| w.addr);
    out
}

/// A live goroutine, as its frames' roots name it.
pub struct Goroutine {
    pub id: u64,
    /// `chan receive`, `running`.
    pub state: String,
    /// Running: its saved registers are stale, so its whole stack is one region.
    pub running: bool,
    /// Waiting: blocked at least this long (see [`Root::blocked_ms`]).
    pub blocked_ms: Option<u64>,
}

/// One region per frame of every live goroutine's stack, found by following the frame pointers from the registers
/// the goroutine saved when it stopped (`g.sched`); the variables DWARF places in a frame name its pointer words.
/// `describe` tells what a goroutine is doing, None for a dead one; `function_at` names the function of a PC.
pub fn goroutine_roots(
    memory: &dyn Memory,
    model: &HeapModel,
    load_bias: u64,
    mut describe: impl FnMut(u64) -> Option<Goroutine>,
    mut function_at: impl FnMut(u64) -> Option<String>,
) -> Vec<RootRegion> {
    let layout = &model.goroutines;
    let mut slots = Slots::new(&model.types);
    let mut out = Vec::new();
    let (Some(ptr), Some(len)) = (word(memory, layout.allgs + load_bias), word(memory, layout.allgs + load_bias + 8)) else {
        return out;
    };
    let mut gs = vec![0u8; 8 * len.min(1 << 20) as usize];
    if memory.read(ptr, &mut gs).is_err() {
        return out;
    }
    for g in gs.chunks_exact(8).map(|w| u64::from_le_bytes(w.try_into().unwrap_or_default())) {
        let Some(Goroutine { id, state, running, blocked_ms }) = describe(g) else { continue };
        let field = |off: u64| word(memory, g + off);
        let (Some(lo), Some(hi)) = (field(layout.stack_lo), field(layout.stack_lo + 8)) else { continue };
        if hi <= lo || hi - lo > MAX_STACK {
            continue;
        }
        let mut region = |from: u64, to: u64, function: Option<String>, named: Vec<NamedWord>| {
            let name = function.unwrap_or_default();
            let root = Root { kind: "goroutine", name, type_name: None, goroutine: Some((id, state.clone())), blocked_ms };
            out.push(RootRegion { root, addr: from, len: to - from, type_id: None, named, pointer_words: false });
        };
        let sp = field(layout.sched_sp).filter(|sp| (lo..hi).contains(sp) && !running);
        let Some(mut start) = sp else {
            region(lo, hi, None, Vec::new());
            continue;
        };
        let mut pc = field(layout.sched_pc).unwrap_or(0);
        let mut bp = field(layout.sched_bp).unwrap_or(0);
        for _ in 0..MAX_FRAMES {
            // The frame of `pc` runs from `start` up to its saved BP and return PC; the caller's starts above.
            if bp < start || bp + 16 > hi || bp % 8 != 0 {
                break;
            }
            // With frame pointers (amd64), the CFA is just above the saved BP and the return address.
            let named = frame_words(model, &mut slots, pc.wrapping_sub(load_bias), bp + 16);
            region(start, bp + 16, function_at(pc), named);
            (start, pc, bp) = (bp + 16, word(memory, bp + 8).unwrap_or(0), word(memory, bp).unwrap_or(0));
        }
        if start < hi {
            region(start, hi, function_at(pc), Vec::new());
        }
    }
    out
}
