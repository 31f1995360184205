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
/// A stack larger than this is taken as a misread `g`: Go doubles a stack until it would pass `maxstacksize` (1 GB
/// on 64-bit, at most twice that by `debug.SetMaxStack`), so no stack reaches 2 GiB.
const MAX_STACK: u64 = 1 << 30;
/// All goroutines' stacks together, past which the rest count as unreadable: a walk reads at most this much
/// in all ([`super::WalkLimits`]), so stacks past it could not be scanned anyway, and each costs maptrace a map of
/// its words before the walk.
const MAX_STACKS: u64 = 1 << 30;
/// Goroutines read from `allgs` at most: a million goroutines is gigabytes of stacks.
const MAX_GOROUTINES: u64 = 1 << 20;
/// `g` pointers read from `allgs` at once.
const ALLGS_CHUNK: u64 = 4096;
/// Pointer words of data and bss made roots at most (2 MiB of pointer-holding package-level variables; a program's
/// own are thousands): the bitmap comes from the executable's GC programs, and each root is a record of its own.
const MAX_DATA_ROOTS: usize = 1 << 18;

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
            addr: g.addr.wrapping_add(load_bias),
            len: g.size,
            type_id: g.type_id,
            named: Vec::new(),
            words: RootWords::Conservative,
        })
        .collect()
}

/// Without DWARF (a stripped binary): every word of the data and bss sections that the GC's bitmaps mark as a
/// pointer, named by its section and link-time address (`bss 0x5a1230`: `go tool nm` on an unstripped build
/// of the same source names the variable near it); at most [`MAX_DATA_ROOTS`], and how many words past them.
pub fn data_roots(regions: &[DataRegion], load_bias: u64) -> (Vec<RootRegion>, u64) {
    let mut out = Vec::new();
    let mut skipped = 0;
    for r in regions {
        for word in (0..r.len / 8).map(|i| r.addr + 8 * i).filter(|&a| r.is_pointer(a)) {
            if out.len() >= MAX_DATA_ROOTS {
                skipped += 1;
                continue;
            }
            let root = Root {
                kind: "global",
                name: format!("{} {word:#x}", r.name),
                type_name: None,
                goroutine: None,
                blocked_ms: None,
            };
            out.push(RootRegion {
                root,
                addr: word.wrapping_add(load_bias),
                len: 8,
                type_id: None,
                named: Vec::new(),
                words: RootWords::Pointers,
            });
        }
    }
    (out, skipped)
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
/// frame's live pointers are followed, as the GC scans it. With the regions, how many roots were unreadable: a
/// goroutine list longer than its memory, a live goroutine whose stack bounds cannot be read or are not ones its
/// runtime could have written, a frame pointer that leaves the stack.
pub fn goroutine_roots(
    memory: &dyn Memory,
    model: &HeapModel,
    load_bias: u64,
    mut describe: impl FnMut(u64) -> Option<Goroutine>,
    mut function_at: impl FnMut(u64) -> Option<String>,
    mut frame_pointers: impl FnMut(u64) -> Option<FramePointers>,
) -> (Vec<RootRegion>, u64) {
    let layout = &model.goroutines;
    let mut slots = Slots::new(&model.types);
    let mut out = Vec::new();
    let (gs, mut unreadable) = all_gs(memory, layout.allgs.wrapping_add(load_bias));
    let mut stack_bytes = 0u64;
    for g in gs {
        let Some(goroutine) = describe(g) else {
            continue;
        };
        let field = |off: u64| g.checked_add(off).and_then(|at| word(memory, at));
        let (Some(lo), Some(hi)) = (field(layout.stack_lo), field(layout.stack_lo + 8)) else {
            unreadable += 1;
            continue;
        };
        if hi <= lo || hi - lo > MAX_STACK || stack_bytes.saturating_add(hi - lo) > MAX_STACKS {
            unreadable += 1;
            continue;
        }
        stack_bytes += hi - lo;
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
        let (frames, top, lost) = walk_frames(memory, (sp, pc, bp), hi, |pc| {
            frame_pointers(pc.wrapping_sub(load_bias))
        });
        unreadable += u64::from(lost);
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
    (out, unreadable)
}

/// The `g` pointers of `runtime.allgs` (a slice header at `allgs`), at most [`MAX_GOROUTINES`], read a chunk at a
/// time up to the first word that cannot be; and 1 if the header's length cannot be believed (more than its
/// capacity, or than [`MAX_GOROUTINES`], or than can be read), else 0.
fn all_gs(memory: &dyn Memory, allgs: u64) -> (Vec<u64>, u64) {
    let header = |k: u64| allgs.checked_add(8 * k).and_then(|at| word(memory, at));
    let (Some(ptr), Some(len), Some(cap)) = (header(0), header(1), header(2)) else {
        return (Vec::new(), 1);
    };
    let mut lies = len > cap || len > MAX_GOROUTINES;
    let len = len.min(cap).min(MAX_GOROUTINES);
    let mut gs = Vec::new();
    let mut chunk = Vec::new();
    while (gs.len() as u64) < len {
        let n = (len - gs.len() as u64).min(ALLGS_CHUNK);
        chunk.resize(8 * n as usize, 0);
        let at = ptr.checked_add(8 * gs.len() as u64);
        if at.is_none_or(|at| memory.read(at, &mut chunk).is_err()) {
            // The list ends inside this chunk: the words up to its end.
            let words = (0..n).map_while(|i| word(memory, at?.checked_add(8 * i)?));
            gs.extend(words);
            lies = true;
            break;
        }
        gs.extend(
            chunk
                .chunks_exact(8)
                .map(|w| u64::from_le_bytes(w.try_into().unwrap_or_default())),
        );
    }
    (gs, u64::from(lies))
}

/// The frames of a stopped goroutine from its saved (SP, PC, BP) up its stack (which ends at `hi`), by frame
/// pointer, at most [`MAX_FRAMES`]; where the stack above them starts, with the PC running there; and whether
/// the frame pointers ended on one that is not 0 (the outermost frame's, where Go's own unwinder stops) and not
/// an aligned address higher up the stack.
fn walk_frames(
    memory: &dyn Memory,
    (sp, pc, bp): (u64, u64, u64),
    hi: u64,
    mut frame_pointers: impl FnMut(u64) -> Option<FramePointers>,
) -> (Vec<Frame>, (u64, u64), bool) {
    let (mut start, mut pc, mut bp) = (sp, pc, bp);
    let mut frames = Vec::new();
    for _ in 0..MAX_FRAMES {
        // The frame of `pc` runs from `start` up to its saved BP and return PC; the caller's starts above.
        let Some(fp) = bp.checked_add(16).filter(|&fp| bp >= start && fp <= hi && bp % 8 == 0) else {
            return (frames, (start, pc), bp != 0);
        };
        // With frame pointers (amd64), the CFA (the runtime's `fp`) is just above the saved BP and the return
        // address, so `varp` is the saved BP's address.
        frames.push(Frame {
            start,
            fp,
            pc,
            maps: frame_pointers(pc),
        });
        (start, pc, bp) = (fp, word(memory, bp + 8).unwrap_or(0), word(memory, bp).unwrap_or(0));
    }
    (frames, (start, pc), false)
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
                    // Only the object's words on this stack: its size comes from the binary.
                    None => (at.max(lo)..at.saturating_add(o.size).min(hi))
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
            let Some(addr) = at.checked_add(8 * i) else { break };
            self.set(addr, true, true);
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

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::gobin::{GoroutineLayout, TypeGraph};
    use crate::heap::index::tests::{layout, IN_SPAN};
    use crate::memory::fake::FakeMemory;

    /// A stack at 0x10000..0x20000.
    const LO: u64 = 0x10000;
    const HI: u64 = 0x20000;

    fn frames(m: &FakeMemory, sp: u64, bp: u64) -> (Vec<(u64, u64)>, u64, bool) {
        let (frames, (top, _), lost) = walk_frames(m, (sp, 0x401000, bp), HI, |_| None);
        (frames.iter().map(|f| (f.start, f.fp)).collect(), top, lost)
    }

    #[test]
    fn frame_pointers_that_leave_the_stack_end_the_frames() {
        let m = FakeMemory::default();
        // Two frames, the outer one's saved BP 0: where Go's unwinder stops too.
        m.word(0x10100, 0x10200);
        m.word(0x10200, 0);
        assert_eq!(
            frames(&m, 0x10010, 0x10100),
            (vec![(0x10010, 0x10110), (0x10110, 0x10210)], 0x10210, false)
        );
        // A BP that wraps the address space past `bp + 16` (the old check let it through, with a frame ending below
        // its start and a length of nearly 2^64 bytes).
        assert_eq!(frames(&m, 0x10010, u64::MAX - 7), (vec![], 0x10010, true));
        // A cycle: the saved BP points back at itself, then below the frame.
        m.word(0x10300, 0x10300);
        assert_eq!(frames(&m, 0x10010, 0x10300), (vec![(0x10010, 0x10310)], 0x10310, true));
        // Past the stack's end, misaligned.
        assert!(frames(&m, 0x10010, HI - 8).2, "past the end");
        assert!(frames(&m, 0x10010, 0x10104).2, "misaligned");
    }

    /// A heap model of the test heap's layout whose `g`s keep `stack.lo` at 0, `stack.hi` at 8, and `sched` sp, pc
    /// and bp at 16, 24, 32.
    pub(in crate::heap) fn model(allgs: u64) -> HeapModel {
        HeapModel {
            layout: layout(IN_SPAN, 0, (0, 0)),
            globals: Vec::new(),
            types: TypeGraph::default(),
            locals: Default::default(),
            goroutines: GoroutineLayout {
                allgs,
                stack_lo: 0,
                sched_sp: 16,
                sched_pc: 24,
                sched_bp: 32,
            },
            data_regions: Vec::new(),
            types_base: None,
        }
    }

    /// The stack regions of the goroutines in `m`, and how many roots were unreadable.
    fn stacks(m: &FakeMemory, allgs: u64) -> (Vec<(u64, u64)>, u64) {
        let live = |_| {
            Some(Goroutine {
                id: 1,
                state: "chan receive".into(),
                running: false,
                blocked_ms: None,
            })
        };
        let (roots, unreadable) = goroutine_roots(m, &model(allgs), 0, live, |_| None, |_| None);
        (roots.iter().map(|r| (r.addr, r.len)).collect(), unreadable)
    }

    #[test]
    fn a_goroutine_list_whose_length_lies_gives_the_goroutines_it_holds() {
        let m = FakeMemory::default();
        // Three gs at 0x5000, 0x5100, 0x5200; the third's stack bounds impossible (3 GiB).
        for (i, (lo, hi)) in [(LO, HI), (LO, HI), (LO, LO + (3 << 30))].into_iter().enumerate() {
            let g = 0x5000 + 0x100 * i as u64;
            m.word(0x4000 + 8 * i as u64, g);
            m.word(g, lo);
            m.word(g + 8, hi);
            m.word(g + 16, LO + 0x10);
        }
        m.unmap(0x4018..0x4100);
        let header = |len: u64, cap: u64| {
            m.word(0x3000, 0x4000);
            m.word(0x3008, len);
            m.word(0x3010, cap);
        };
        let whole = (vec![(LO + 0x10, HI - LO - 0x10); 2], 1);
        header(3, 3);
        assert_eq!(
            stacks(&m, 0x3000),
            whole,
            "the third g's stack is not one Go could have"
        );
        header(1 << 40, 1 << 40);
        assert_eq!(
            stacks(&m, 0x3000),
            (whole.0.clone(), 2),
            "a length past what its memory holds"
        );
        header(3, 2);
        assert_eq!(stacks(&m, 0x3000), (whole.0.clone(), 1), "a length past its capacity");
        m.unmap(0x3000..0x3018);
        assert_eq!(stacks(&m, 0x3000), (vec![], 1), "no list");
    }

    #[test]
    fn data_roots_stop_at_their_cap() {
        let words = MAX_DATA_ROOTS as u64 + 10;
        let region = DataRegion {
            name: "bss",
            addr: 0x10_0000,
            len: 8 * words,
            pointers: vec![0xff; words.div_ceil(8) as usize],
            runtime_mask: 0,
        };
        let (roots, skipped) = data_roots(&[region], 0);
        assert_eq!((roots.len(), skipped), (MAX_DATA_ROOTS, 10));
        assert_eq!(roots[1].root.name, "bss 0x100008");
    }
}
