//! The regions of the target's memory a walk starts from, each named as a report shows it.

use crate::gobin::{DataRegion, FramePointers, GlobalVar, HeapModel, TypeId, WordBits};
use crate::memory::Memory;

use super::index::{bit, bit_range};
use super::typed::Slots;
use super::Root;

/// A root: its name, and the bytes to scan for pointers (runtime addresses).
#[derive(Clone, Debug)]
pub struct RootRegion {
    pub root: Root,
    pub addr: u64,
    /// 0: the rest of the heap object at `addr` (a closure, whose size the heap knows).
    pub len: u64,
    /// The region's type (a global's, from DWARF): scanned precisely; None: word by word, as `words` says.
    pub type_id: Option<TypeId>,
    /// Words of an untyped region that DWARF names (a frame's variables), followed first.
    pub named: Vec<NamedWord>,
    pub words: RootWords,
}

/// Which words of an untyped root region the walk follows, and which of those are known to be pointers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RootWords {
    /// Every word that points into the heap, none known to be a pointer: a closure, or a stack frame the GC's
    /// stack maps do not describe.
    Conservative,
    /// Every word is a pointer: a word the GC's data/bss bitmap marks.
    Pointers,
    /// Bit i of `follow`: the region's word i is followed; of `known`: it is a pointer. A stack frame as the GC's
    /// stack maps describe it: its live pointer words, and its stack objects' pointer words (or all their words
    /// when their types do not say).
    Map { follow: Vec<u8>, known: Vec<u8> },
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
            root: Root {
                kind: "global",
                name: g.name.clone(),
                type_name: g.type_name.clone(),
                goroutine: None,
                blocked_ms: None,
            },
            addr: g.addr + load_bias,
            len: g.size,
            type_id: g.type_id,
            named: Vec::new(),
            words: RootWords::Conservative,
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
            let root = Root {
                kind: "global",
                name: format!("{} {word:#x}", r.name),
                type_name: None,
                goroutine: None,
                blocked_ms: None,
            };
            out.push(RootRegion {
                root,
                addr: word + load_bias,
                len: 8,
                type_id: None,
                named: Vec::new(),
                words: RootWords::Pointers,
            });
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
            let root = Root {
                kind,
                name,
                type_name: None,
                goroutine: None,
                blocked_ms: None,
            };
            RootRegion {
                root,
                addr: funcval,
                len: 0,
                type_id: None,
                named: Vec::new(),
                words: RootWords::Conservative,
            }
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
            let Some(p) = pieces
                .iter()
                .find(|p| s.offset >= p.start && s.offset - p.start < p.len)
            else {
                continue;
            };
            let addr = cfa.wrapping_add_signed(p.cfa_offset).wrapping_add(s.offset - p.start);
            out.push(NamedWord {
                addr,
                name: format!("{}{}", var.name, s.path),
                to: s.to,
            });
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
/// `describe` tells what a goroutine is doing, None for a dead one; `function_at` names the function of a PC;
/// `frame_pointers` gives the GC's stack maps of a frame stopped at a (link-time) PC: where it does, only the
/// frame's live pointers are followed, as the GC scans it.
pub fn goroutine_roots(
    memory: &dyn Memory,
    model: &HeapModel,
    load_bias: u64,
    mut describe: impl FnMut(u64) -> Option<Goroutine>,
    mut function_at: impl FnMut(u64) -> Option<String>,
    mut frame_pointers: impl FnMut(u64) -> Option<FramePointers>,
) -> Vec<RootRegion> {
    let layout = &model.goroutines;
    let mut slots = Slots::new(&model.types);
    let mut out = Vec::new();
    for g in all_gs(memory, layout.allgs + load_bias) {
        let Some(goroutine) = describe(g) else {
            continue;
        };
        let field = |off: u64| word(memory, g + off);
        let (Some(lo), Some(hi)) = (field(layout.stack_lo), field(layout.stack_lo + 8)) else {
            continue;
        };
        if hi <= lo || hi - lo > MAX_STACK {
            continue;
        }
        let Goroutine {
            id,
            state,
            running,
            blocked_ms,
        } = goroutine;
        let root = |function: Option<String>| Root {
            kind: "goroutine",
            name: function.unwrap_or_default(),
            type_name: None,
            goroutine: Some((id, state.clone())),
            blocked_ms,
        };
        let region = |root, addr, len, named, words| RootRegion {
            root,
            addr,
            len,
            type_id: None,
            named,
            words,
        };
        let Some(sp) = field(layout.sched_sp).filter(|sp| (lo..hi).contains(sp) && !running) else {
            // Running: its saved registers are stale, so its whole stack is one region.
            out.push(region(root(None), lo, hi - lo, Vec::new(), RootWords::Conservative));
            continue;
        };
        let pc = field(layout.sched_pc).unwrap_or(0);
        let bp = field(layout.sched_bp).unwrap_or(0);
        let (frames, top) = walk_frames(memory, (sp, pc, bp), hi, |pc| {
            frame_pointers(pc.wrapping_sub(load_bias))
        });
        let stack = StackWords::new(lo, hi, &frames);
        for f in &frames {
            let named = frame_words(model, &mut slots, f.pc.wrapping_sub(load_bias), f.fp);
            out.push(region(
                root(function_at(f.pc)),
                f.start,
                f.fp - f.start,
                named,
                stack.words(f.start, f.fp),
            ));
        }
        // What lies above the last frame found (the frames frame pointers did not reach), read as one region.
        let (start, pc) = top;
        if start < hi {
            out.push(region(
                root(function_at(pc)),
                start,
                hi - start,
                Vec::new(),
                stack.words(start, hi),
            ));
        }
    }
    out
}

/// The `g` pointers of `runtime.allgs` (a slice header at `allgs`), at most a million.
fn all_gs(memory: &dyn Memory, allgs: u64) -> Vec<u64> {
    let (Some(ptr), Some(len)) = (word(memory, allgs), word(memory, allgs + 8)) else {
        return Vec::new();
    };
    let mut gs = vec![0u8; 8 * len.min(1 << 20) as usize];
    if memory.read(ptr, &mut gs).is_err() {
        return Vec::new();
    }
    gs.chunks_exact(8)
        .map(|w| u64::from_le_bytes(w.try_into().unwrap_or_default()))
        .collect()
}

/// The frames of a stopped goroutine from its saved (SP, PC, BP) up its stack (which ends at `hi`), by frame
/// pointer, at most [`MAX_FRAMES`]; and where the stack above them starts, with the PC running there.
fn walk_frames(
    memory: &dyn Memory,
    (sp, pc, bp): (u64, u64, u64),
    hi: u64,
    mut frame_pointers: impl FnMut(u64) -> Option<FramePointers>,
) -> (Vec<Frame>, (u64, u64)) {
    let (mut start, mut pc, mut bp) = (sp, pc, bp);
    let mut frames = Vec::new();
    for _ in 0..MAX_FRAMES {
        // The frame of `pc` runs from `start` up to its saved BP and return PC; the caller's starts above.
        if bp < start || bp + 16 > hi || bp % 8 != 0 {
            break;
        }
        // With frame pointers (amd64), the CFA (the runtime's `fp`) is just above the saved BP and the return
        // address, so `varp` is the saved BP's address.
        frames.push(Frame {
            start,
            fp: bp + 16,
            pc,
            maps: frame_pointers(pc),
        });
        (start, pc, bp) = (
            bp + 16,
            word(memory, bp + 8).unwrap_or(0),
            word(memory, bp).unwrap_or(0),
        );
    }
    (frames, (start, pc))
}

/// A frame found by frame pointers, with its stack maps if the binary has them.
struct Frame {
    start: u64,
    fp: u64,
    pc: u64,
    maps: Option<FramePointers>,
}

/// A goroutine stack's words as its GC would scan them: `follow` and `known` bits (see [`RootWords::Map`]) for
/// each word from `lo`.
struct StackWords {
    lo: u64,
    follow: Vec<u8>,
    known: Vec<u8>,
}

impl StackWords {
    /// Every word followed, none known; then, for each frame with stack maps, its own words followed only where
    /// its maps (or a callee's argument map: arguments live in the caller's frame) say.
    fn new(lo: u64, hi: u64, frames: &[Frame]) -> Self {
        let n = ((hi - lo) / 8).div_ceil(8) as usize;
        let mut s = StackWords {
            lo,
            follow: vec![0xff; n],
            known: vec![0; n],
        };
        for f in frames.iter().filter(|f| f.maps.is_some()) {
            (f.start..f.fp).step_by(8).for_each(|a| s.set(a, false, false));
        }
        for f in frames {
            let Some(m) = &f.maps else { continue };
            let (varp, argp) = (f.fp - 16, f.fp);
            let below = varp.saturating_sub(8 * u64::from(m.locals.words));
            s.mark(below, &m.locals);
            s.mark(argp, &m.args);
            for o in &m.objects {
                let at = if o.offset < 0 { varp } else { argp }.wrapping_add_signed(o.offset);
                match &o.pointers {
                    Some(p) => s.mark(at, p),
                    None => (at..at.saturating_add(o.size))
                        .step_by(8)
                        .for_each(|a| s.set(a, true, false)),
                }
            }
        }
        s
    }

    /// The words `bits` marks, from `at`: followed, known pointers.
    fn mark(&mut self, at: u64, bits: &WordBits) {
        for i in (0..u64::from(bits.words)).filter(|&i| bit(&bits.bits, i)) {
            self.set(at + 8 * i, true, true);
        }
    }

    fn set(&mut self, addr: u64, follow: bool, known: bool) {
        let Some(w) = addr
            .checked_sub(self.lo)
            .map(|o| o / 8)
            .filter(|&w| w / 8 < self.follow.len() as u64)
        else {
            return;
        };
        let (byte, bit) = ((w / 8) as usize, 1u8 << (w % 8));
        for (v, on) in [(&mut self.follow[byte], follow), (&mut self.known[byte], known)] {
            *v = if on { *v | bit } else { *v & !bit };
        }
    }

    /// The words of `[from, to)`.
    fn words(&self, from: u64, to: u64) -> RootWords {
        let (skip, n) = ((from - self.lo) / 8, (to - from) / 8);
        RootWords::Map {
            follow: bit_range(&self.follow, skip, n),
            known: bit_range(&self.known, skip, n),
        }
    }
}
