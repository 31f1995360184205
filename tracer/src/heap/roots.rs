//! The regions of the target's memory a walk starts from, each named as a report shows it.

use crate::gotype::Memory;
use crate::target::{GlobalVar, GoroutineLayout, TypeId};

use super::Root;

/// A root: its name, and the bytes to scan for pointers (runtime addresses).
#[derive(Clone, Debug)]
pub struct RootRegion {
    pub root: Root,
    pub addr: u64,
    pub len: u64,
    /// The region's type (a global's, from DWARF): scanned precisely; None: word by word.
    pub type_id: Option<TypeId>,
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
            root: Root { kind: "global", name: g.name.clone(), type_name: g.type_name.clone(), goroutine: None },
            addr: g.addr + load_bias,
            len: g.size,
            type_id: g.type_id,
        })
        .collect()
}

fn word(memory: &dyn Memory, addr: u64) -> Option<u64> {
    let mut b = [0u8; 8];
    memory.read(addr, &mut b).ok()?;
    Some(u64::from_le_bytes(b))
}

/// One region per frame of every live goroutine's stack, found by following the frame pointers from the registers
/// the goroutine saved when it stopped (`g.sched`). `describe` gives a goroutine's id, state (`chan receive`) and
/// whether it is running (its saved registers are stale then: its whole stack is one region), None for a dead
/// one; `function_at` names the function of a PC.
pub fn goroutine_roots(
    memory: &dyn Memory,
    layout: &GoroutineLayout,
    load_bias: u64,
    mut describe: impl FnMut(u64) -> Option<(u64, String, bool)>,
    mut function_at: impl FnMut(u64) -> Option<String>,
) -> Vec<RootRegion> {
    let mut out = Vec::new();
    let (Some(ptr), Some(len)) = (word(memory, layout.allgs + load_bias), word(memory, layout.allgs + load_bias + 8)) else {
        return out;
    };
    let mut gs = vec![0u8; 8 * len.min(1 << 20) as usize];
    if memory.read(ptr, &mut gs).is_err() {
        return out;
    }
    for g in gs.chunks_exact(8).map(|w| u64::from_le_bytes(w.try_into().unwrap_or_default())) {
        let Some((goid, state, running)) = describe(g) else { continue };
        let field = |off: u64| word(memory, g + off);
        let (Some(lo), Some(hi)) = (field(layout.stack_lo), field(layout.stack_lo + 8)) else { continue };
        if hi <= lo || hi - lo > MAX_STACK {
            continue;
        }
        let mut region = |from: u64, to: u64, function: Option<String>| {
            let root = Root { kind: "goroutine", name: function.unwrap_or_default(), type_name: None, goroutine: Some((goid, state.clone())) };
            out.push(RootRegion { root, addr: from, len: to - from, type_id: None });
        };
        let sp = field(layout.sched_sp).filter(|sp| (lo..hi).contains(sp) && !running);
        let Some(mut start) = sp else {
            region(lo, hi, None);
            continue;
        };
        let mut pc = field(layout.sched_pc).unwrap_or(0);
        let mut bp = field(layout.sched_bp).unwrap_or(0);
        for _ in 0..MAX_FRAMES {
            // The frame of `pc` runs from `start` up to its saved BP and return PC; the caller's starts above.
            if bp < start || bp + 16 > hi || bp % 8 != 0 {
                break;
            }
            region(start, bp + 16, function_at(pc));
            (start, pc, bp) = (bp + 16, word(memory, bp + 8).unwrap_or(0), word(memory, bp).unwrap_or(0));
        }
        if start < hi {
            region(start, hi, function_at(pc));
        }
    }
    out
}
